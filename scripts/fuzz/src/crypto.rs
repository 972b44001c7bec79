//! `open` in one transport mode (one target per mode, so each gets its own
//! count of inputs).
//!
//! The first byte chooses RTP or RTCP (bit 0) and what the rest is (bit 1):
//!
//! - **a received datagram**: opening never panics, and arbitrary bytes
//!   never authenticate (a forgery would need the key);
//! - **a plaintext packet** (after a 4-byte counter and a 3-byte flip:
//!   position and mask): sealed with the key as a client seals it (the
//!   client library's implementation, independent of the server's), it
//!   opens to exactly the same plaintext, and with any byte past the clear
//!   header flipped it does not open at all; what the server seals the
//!   client opens to the same plaintext. RTCP in `xsalsa20_poly1305` is
//!   sealed the way clients do (the RTCP header is the nonce); the
//!   server's own `seal` refuses it, since its nonces would repeat.

use std::cell::RefCell;

use dataplane::crypto::{self, CryptoError, KeyState, MAX_OVERHEAD};
use dataplane::packet::Kind;
use protocol::rtp;
use scripts::crypto::Cipher;
use shared::Mode;

/// What a client holds: the client library's cipher for its mode and key,
/// and the same key expanded as the server's `open` takes it.
#[derive(Debug)]
pub struct ClientKey {
    state: KeyState,
    cipher: Cipher,
}

impl ClientKey {
    /// `key` for `mode`.
    pub fn new(mode: Mode, key: &[u8; 32]) -> ClientKey {
        ClientKey {
            state: KeyState::new(mode, key).expect("key for every mode (AES-NI?)"),
            cipher: Cipher::new(mode, key).expect("32-byte key"),
        }
    }

    /// The key as the server's `open` takes it.
    pub fn state(&self) -> &KeyState {
        &self.state
    }

    /// `plain` (a packet of `kind`, which its second byte must agree with)
    /// sealed as a client sends it, with nonce counter `counter` where the
    /// mode has one (and in the suffix mode's nonce); None when its CSRCs
    /// or extension overrun it.
    pub fn seal(&self, kind: Kind, counter: u32, plain: &[u8]) -> Option<Vec<u8>> {
        assert_eq!(rtp::Kind::of(plain), kind, "the harness built the kind");
        if kind == Kind::Rtp && rtp::header_len(plain).is_err() {
            return None;
        }
        let mut suffix = [0u8; 24];
        suffix[20..].copy_from_slice(&counter.to_be_bytes());
        self.cipher.encrypt_with(plain, counter, suffix).ok()
    }

    /// A datagram opened as the client does: the plaintext packet.
    pub fn open(&self, wire: &[u8]) -> Option<Vec<u8>> {
        self.cipher.decrypt(wire).ok()
    }
}

thread_local! {
    /// One key per mode, expanded once per process.
    static KEYS: RefCell<Vec<(Mode, ClientKey)>> = RefCell::new(
        Mode::ALL
            .into_iter()
            .map(|m| (m, ClientKey::new(m, &[0x42; 32])))
            .collect(),
    );
}

/// One input for `mode`.
pub fn run(mode: Mode, data: &[u8]) {
    let Some((&how, rest)) = data.split_first() else {
        return;
    };
    let kind = if how & 1 == 0 { Kind::Rtp } else { Kind::Rtcp };
    KEYS.with(|keys| {
        let keys = keys.borrow();
        let (_, key) = keys.iter().find(|(m, _)| *m == mode).expect("every mode");
        if how & 2 == 0 {
            let mut packet = rest.to_vec();
            let opened = open(key.state(), kind, &mut packet);
            assert!(opened.is_none(), "{mode:?}: arbitrary bytes authenticated");
        } else {
            seal_then_open(key, kind, rest);
        }
    });
}

/// The call under test: the plaintext length, if it authenticates.
fn open(key: &KeyState, kind: Kind, packet: &mut [u8]) -> Option<usize> {
    let opened = crypto::open(key, kind, packet).ok()?;
    assert!(opened.len <= packet.len());
    Some(opened.len)
}

fn seal_then_open(key: &ClientKey, kind: Kind, data: &[u8]) {
    if data.len() < 7 {
        return;
    }
    let (head, body) = data.split_at(7);
    let counter = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
    let flip_at = usize::from(u16::from_be_bytes([head[4], head[5]]));
    let mask = head[6];
    let plain = plaintext(kind, body);
    if kind == Kind::Rtcp && key.state().mode() == Mode::XSalsa20Poly1305 {
        let mut out = vec![0u8; plain.len() + MAX_OVERHEAD];
        let refused = crypto::seal(key.state(), kind, counter, &plain, &mut out);
        assert_eq!(
            refused,
            Err(CryptoError::NonceReuse),
            "the server seals no plain-mode RTCP"
        );
    }
    // A plaintext whose CSRCs or extension overrun it cannot be sealed.
    let Some(mut sealed) = key.seal(kind, counter, &plain) else {
        return;
    };
    let n = sealed.len();
    let mut copy = sealed.clone();
    let len = open(key.state(), kind, &mut copy).expect("what we sealed opens");
    assert_eq!(&copy[..len], &plain[..], "round trip");
    // What the server seals for this client opens to the same plaintext.
    let mut out = vec![0u8; plain.len() + MAX_OVERHEAD];
    if let Ok(m) = crypto::seal(key.state(), kind, counter, &plain, &mut out) {
        assert_eq!(key.open(&out[..m]), Some(plain.clone()), "server to client");
    }
    // Everything past the clear header is authenticated in every mode.
    let clear = key
        .state()
        .mode()
        .clear_len(kind, &plain)
        .expect("a sealed packet has its clear header");
    if mask != 0 && n > clear {
        let at = clear + flip_at % (n - clear);
        sealed[at] ^= mask;
        assert!(
            open(key.state(), kind, &mut sealed).is_none(),
            "flipped byte {at}"
        );
    }
}

/// An RTP or RTCP version-2 packet from `bytes`, at least a header long,
/// whose second byte says `kind`.
pub fn plaintext(kind: Kind, bytes: &[u8]) -> Vec<u8> {
    let min = match kind {
        Kind::Rtp => 12,
        Kind::Rtcp => 8,
    };
    let mut p = bytes.to_vec();
    if p.len() < min {
        p.resize(min, 0);
    }
    p[0] = 0x80 | (p[0] & 0x3F);
    match kind {
        // A payload type below 64, which never reads as RTCP.
        Kind::Rtp => p[1] &= 0xBF,
        Kind::Rtcp => p[1] = 192 + p[1] % 32,
    }
    p
}
