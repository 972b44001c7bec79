//! The five transport encryption modes of Discord voice (DESIGN.md,
//! "Encryption modes"): sealing a plaintext RTP or RTCP packet into its
//! wire form and opening it again.
//!
//! This is the client side's own implementation (RustCrypto), independent
//! of the server's libsodium one: every test, the load generator and the
//! fuzz targets seal and open with it, so the two check each other.
//!
//! A [`Cipher`] holds a mode, the 32-byte session key and the outgoing
//! nonce counter. [`Cipher::seal`] and [`Cipher::open`] work in place in a
//! caller's buffer without allocating; [`Cipher::encrypt`] and
//! [`Cipher::decrypt`] take and return whole packets. Whether a packet is
//! RTP or RTCP, and so how much of it stays in clear, is read from its
//! second byte as the server reads it ([`Kind::of`]).

use std::fmt;

use aes_gcm::aead::generic_array::GenericArray;
use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::Aes256Gcm;
use chacha20poly1305::XChaCha20Poly1305;
use crypto_secretbox::XSalsa20Poly1305;
use rand::RngCore;

pub use protocol::{Mode, TAG_LEN};

use crate::rtp::{Kind, PacketError};

/// Length of the session key.
pub const KEY_LEN: usize = 32;

/// Why a packet could not be sealed or opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    /// The key is not 32 bytes long.
    #[error("session key must be 32 bytes, got {0}")]
    KeyLength(usize),
    /// The packet is too short for its headers, tag and nonce.
    #[error(transparent)]
    Packet(#[from] PacketError),
    /// Authentication failed (wrong key, tampered packet, wrong mode).
    #[error("decryption failed")]
    Decrypt,
    /// The buffer has no room for the sealed packet, or the cipher refused
    /// (only on absurd lengths).
    #[error("encryption failed")]
    Encrypt,
}

impl From<protocol::rtp::Truncated> for CryptoError {
    fn from(t: protocol::rtp::Truncated) -> Self {
        CryptoError::Packet(t.into())
    }
}

/// The primitive of a mode, keyed.
enum Aead {
    Aes(Box<Aes256Gcm>),
    XChaCha(Box<XChaCha20Poly1305>),
    XSalsa(Box<XSalsa20Poly1305>),
}

impl Aead {
    /// Encrypts `body` in place under `nonce` (its first 12 bytes for
    /// AES-GCM), authenticating `aad` (empty for secretbox); returns the tag.
    fn seal(
        &self,
        nonce: &[u8; 24],
        aad: &[u8],
        body: &mut [u8],
    ) -> Result<[u8; TAG_LEN], CryptoError> {
        let tag = match self {
            Aead::Aes(c) => {
                c.encrypt_in_place_detached(GenericArray::from_slice(&nonce[..12]), aad, body)
            }
            Aead::XChaCha(c) => c.encrypt_in_place_detached(nonce.into(), aad, body),
            Aead::XSalsa(c) => c.encrypt_in_place_detached(nonce.into(), aad, body),
        }
        .map_err(|_| CryptoError::Encrypt)?;
        Ok(tag.into())
    }

    /// Decrypts `body` in place if `tag` authenticates it and `aad`.
    fn open(
        &self,
        nonce: &[u8; 24],
        aad: &[u8],
        body: &mut [u8],
        tag: &[u8],
    ) -> Result<(), CryptoError> {
        let tag = GenericArray::from_slice(tag);
        match self {
            Aead::Aes(c) => {
                c.decrypt_in_place_detached(GenericArray::from_slice(&nonce[..12]), aad, body, tag)
            }
            Aead::XChaCha(c) => c.decrypt_in_place_detached(nonce.into(), aad, body, tag),
            Aead::XSalsa(c) => c.decrypt_in_place_detached(nonce.into(), aad, body, tag),
        }
        .map_err(|_| CryptoError::Decrypt)
    }
}

/// A mode, a session key and the outgoing nonce counter.
pub struct Cipher {
    mode: Mode,
    key: [u8; KEY_LEN],
    aead: Aead,
    counter: u32,
}

impl fmt::Debug for Cipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cipher")
            .field("mode", &self.mode)
            .field("counter", &self.counter)
            .finish_non_exhaustive()
    }
}

impl Cipher {
    /// A cipher for `mode` with a 32-byte `key`; the counter starts at 0.
    pub fn new(mode: Mode, key: &[u8]) -> Result<Self, CryptoError> {
        let key: [u8; KEY_LEN] = key
            .try_into()
            .map_err(|_| CryptoError::KeyLength(key.len()))?;
        let aead = match mode {
            Mode::Aes256GcmRtpSize => Aead::Aes(Box::new(Aes256Gcm::new(&key.into()))),
            Mode::XChaCha20Poly1305RtpSize => {
                Aead::XChaCha(Box::new(XChaCha20Poly1305::new(&key.into())))
            }
            Mode::XSalsa20Poly1305Lite | Mode::XSalsa20Poly1305Suffix | Mode::XSalsa20Poly1305 => {
                Aead::XSalsa(Box::new(XSalsa20Poly1305::new(&key.into())))
            }
        };
        Ok(Cipher {
            mode,
            key,
            aead,
            counter: 0,
        })
    }

    /// Sets the next outgoing counter (clients start at 0, 1 or anywhere).
    pub fn with_counter(mut self, start: u32) -> Self {
        self.counter = start;
        self
    }

    /// The mode.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The session key.
    pub fn key(&self) -> &[u8; KEY_LEN] {
        &self.key
    }

    /// The counter the next [`seal`](Self::seal) will use.
    pub fn counter(&self) -> u32 {
        self.counter
    }

    /// Seals the plaintext packet `buf[..plain_len]` in place with the next
    /// counter (wrapping at 2^32) or, in the suffix mode, a random nonce.
    /// `buf` needs [`Mode::overhead`] bytes of room after the packet;
    /// returns the datagram's length.
    pub fn seal(&mut self, buf: &mut [u8], plain_len: usize) -> Result<usize, CryptoError> {
        let mut suffix = [0u8; 24];
        if self.mode == Mode::XSalsa20Poly1305Suffix {
            rand::thread_rng().fill_bytes(&mut suffix);
        }
        let len = self.seal_with(buf, plain_len, self.counter, suffix)?;
        if matches!(
            self.mode,
            Mode::Aes256GcmRtpSize | Mode::XChaCha20Poly1305RtpSize | Mode::XSalsa20Poly1305Lite
        ) {
            self.counter = self.counter.wrapping_add(1);
        }
        Ok(len)
    }

    /// Seals deterministically, in place like [`seal`](Self::seal):
    /// `counter` for the rtpsize and lite modes, `suffix_nonce` for the
    /// suffix mode (the other modes ignore them).
    ///
    /// | mode | wire after the clear header | nonce |
    /// | --- | --- | --- |
    /// | rtpsize | ct ‖ tag ‖ counter | counter ‖ zeros |
    /// | lite | mac ‖ ct ‖ counter | counter ‖ zeros |
    /// | suffix | mac ‖ ct ‖ nonce | 24 bytes on the wire |
    /// | plain | mac ‖ ct | clear header ‖ zeros |
    pub fn seal_with(
        &self,
        buf: &mut [u8],
        plain_len: usize,
        counter: u32,
        suffix_nonce: [u8; 24],
    ) -> Result<usize, CryptoError> {
        let plain = buf.get(..plain_len).ok_or(CryptoError::Encrypt)?;
        let clear = self.mode.clear_len(Kind::of(plain), plain)?;
        let len = plain_len + self.mode.overhead();
        let buf = buf.get_mut(..len).ok_or(CryptoError::Encrypt)?;
        let mut nonce = [0u8; 24];
        match self.mode {
            Mode::XSalsa20Poly1305Suffix => nonce = suffix_nonce,
            Mode::XSalsa20Poly1305 => nonce[..clear].copy_from_slice(&buf[..clear]),
            _ => nonce[..4].copy_from_slice(&counter.to_be_bytes()),
        }
        if self.mode.is_rtpsize() {
            let (head, rest) = buf.split_at_mut(clear);
            let tag = self
                .aead
                .seal(&nonce, head, &mut rest[..plain_len - clear])?;
            buf[plain_len..plain_len + TAG_LEN].copy_from_slice(&tag);
        } else {
            // secretbox: the MAC goes before the ciphertext.
            buf.copy_within(clear..plain_len, clear + TAG_LEN);
            let body = &mut buf[clear + TAG_LEN..plain_len + TAG_LEN];
            let mac = self.aead.seal(&nonce, &[], body)?;
            buf[clear..clear + TAG_LEN].copy_from_slice(&mac);
        }
        let trailer = &mut buf[plain_len + TAG_LEN..];
        match self.mode {
            Mode::XSalsa20Poly1305Suffix => trailer.copy_from_slice(&nonce),
            Mode::XSalsa20Poly1305 => {}
            _ => trailer.copy_from_slice(&counter.to_be_bytes()),
        }
        Ok(len)
    }

    /// Opens the datagram `buf` in place; the plaintext packet (clear
    /// header followed by the decrypted rest) is then `buf[..len]`, `len`
    /// being what this returns. On failure the contents are unspecified.
    pub fn open(&self, buf: &mut [u8]) -> Result<usize, CryptoError> {
        let clear = self.mode.clear_len(Kind::of(buf), buf)?;
        let trailer = self.mode.overhead() - TAG_LEN;
        let need = clear + TAG_LEN + trailer;
        let body = buf.len().checked_sub(need).ok_or(PacketError::Truncated {
            need,
            have: buf.len(),
        })?;
        let mut nonce = [0u8; 24];
        match self.mode {
            Mode::XSalsa20Poly1305 => nonce[..clear].copy_from_slice(&buf[..clear]),
            _ => nonce[..trailer].copy_from_slice(&buf[buf.len() - trailer..]),
        }
        if self.mode.is_rtpsize() {
            let (head, rest) = buf.split_at_mut(clear);
            let (body, tag) = rest.split_at_mut(body);
            self.aead.open(&nonce, head, body, &tag[..TAG_LEN])?;
        } else {
            let (mac, rest) = buf[clear..].split_at_mut(TAG_LEN);
            self.aead.open(&nonce, &[], &mut rest[..body], mac)?;
            buf.copy_within(clear + TAG_LEN..clear + TAG_LEN + body, clear);
        }
        Ok(clear + body)
    }

    /// [`seal`](Self::seal) on a copy of `packet`: the datagram.
    pub fn encrypt(&mut self, packet: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let mut buf = self.room_for(packet);
        let len = self.seal(&mut buf, packet.len())?;
        buf.truncate(len);
        Ok(buf)
    }

    /// [`seal_with`](Self::seal_with) on a copy of `packet`: the datagram.
    pub fn encrypt_with(
        &self,
        packet: &[u8],
        counter: u32,
        suffix_nonce: [u8; 24],
    ) -> Result<Vec<u8>, CryptoError> {
        let mut buf = self.room_for(packet);
        let len = self.seal_with(&mut buf, packet.len(), counter, suffix_nonce)?;
        buf.truncate(len);
        Ok(buf)
    }

    /// [`open`](Self::open) on a copy of `wire`: the plaintext packet.
    pub fn decrypt(&self, wire: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let mut buf = wire.to_vec();
        let len = self.open(&mut buf)?;
        buf.truncate(len);
        Ok(buf)
    }

    /// `packet` followed by room for the mode's overhead.
    fn room_for(&self, packet: &[u8]) -> Vec<u8> {
        let mut buf = Vec::with_capacity(packet.len() + self.mode.overhead());
        buf.extend_from_slice(packet);
        buf.resize(packet.len() + self.mode.overhead(), 0);
        buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rtp::{Extension, RtpHeader, RtpPacket, ONE_BYTE_PROFILE};

    fn packet_with_ext() -> RtpPacket {
        RtpPacket {
            header: RtpHeader {
                csrcs: vec![0x0101_0101],
                extension: Some(Extension {
                    profile: ONE_BYTE_PROFILE,
                    data: vec![0x10, 0xaa, 0xbb, 0xcc],
                }),
                ..RtpHeader::opus(5, 4800, 0x1234)
            },
            payload: b"opus frame".to_vec(),
        }
    }

    #[test]
    fn key_length_checked() {
        assert_eq!(
            Cipher::new(Mode::Aes256GcmRtpSize, &[0; 16]).map(|_| ()),
            Err(CryptoError::KeyLength(16))
        );
    }

    #[test]
    fn every_mode_round_trips() {
        let key = [7u8; 32];
        let plain = packet_with_ext().to_bytes();
        for m in Mode::ALL {
            let mut c = Cipher::new(m, &key).expect("key").with_counter(u32::MAX);
            let wire = c.encrypt(&plain).expect("seal");
            assert_eq!(wire.len(), plain.len() + m.overhead(), "{m}");
            let opened = c.decrypt(&wire).expect("open");
            assert_eq!(opened, plain, "{m}");
            assert_eq!(RtpPacket::parse(&opened), Ok(packet_with_ext()));
            // The clear part is exactly what the mode promises.
            let clear = if m.is_rtpsize() { 12 + 4 + 4 } else { 12 };
            assert_eq!(wire[..clear], plain[..clear], "{m}");
            assert_ne!(wire[clear..clear + 4], plain[clear..clear + 4], "{m}");
            // Tampering is detected anywhere but in the legacy modes' clear
            // header, which only `xsalsa20_poly1305` authenticates (as nonce).
            let first = match m {
                Mode::XSalsa20Poly1305Lite | Mode::XSalsa20Poly1305Suffix => 12,
                _ => 0,
            };
            for i in first..wire.len() {
                let mut bad = wire.clone();
                bad[i] ^= 1;
                assert!(c.decrypt(&bad).is_err(), "{m} byte {i}");
            }
            // Wrong key fails; truncations never panic.
            let other = Cipher::new(m, &[8u8; 32]).expect("key");
            assert_eq!(other.decrypt(&wire), Err(CryptoError::Decrypt));
            for n in 0..wire.len() {
                assert!(c.decrypt(&wire[..n]).is_err());
            }
        }
    }

    #[test]
    fn counter_advances_and_wraps() {
        let plain = RtpPacket {
            header: RtpHeader::opus(0, 0, 1),
            payload: vec![1],
        }
        .to_bytes();
        let mut c = Cipher::new(Mode::Aes256GcmRtpSize, &[0; 32])
            .expect("key")
            .with_counter(u32::MAX);
        let a = c.encrypt(&plain).expect("seal");
        let b = c.encrypt(&plain).expect("seal");
        assert_eq!(a[a.len() - 4..], [0xff; 4]);
        assert_eq!(b[b.len() - 4..], [0; 4]);
        assert_eq!(c.counter(), 1);
    }

    /// Known answers computed independently in Python (`cryptography`'s
    /// AESGCM and ChaCha20Poly1305 with a hand-written HChaCha20 for
    /// XChaCha; hand-written HSalsa20/Salsa20 with `cryptography`'s Poly1305
    /// for secretbox): all-zero key, counter 0 / all-zero suffix nonce,
    /// header `80780001 000003c0 00000001`, payload `010203`.
    #[test]
    fn known_answers() {
        let plain = RtpPacket {
            header: RtpHeader::opus(1, 960, 1),
            payload: vec![1, 2, 3],
        }
        .to_bytes();
        let cases = [
            (Mode::Aes256GcmRtpSize, KAT_AES),
            (Mode::XChaCha20Poly1305RtpSize, KAT_XCHACHA),
            (Mode::XSalsa20Poly1305Lite, KAT_LITE),
            (Mode::XSalsa20Poly1305Suffix, KAT_SUFFIX),
            (Mode::XSalsa20Poly1305, KAT_PLAIN),
        ];
        for (m, expect) in cases {
            let c = Cipher::new(m, &[0; 32]).expect("key");
            let wire = c.encrypt_with(&plain, 0, [0; 24]).expect("seal");
            assert_eq!(hex::encode(&wire), expect, "{m}");
            assert_eq!(
                c.decrypt(&hex::decode(expect).expect("hex")),
                Ok(plain.clone())
            );
        }
    }

    #[test]
    fn rtcp_keeps_only_its_header_in_clear() {
        let mut report = vec![0x81, 206, 0, 2];
        report.extend_from_slice(&0x1234u32.to_be_bytes());
        report.extend_from_slice(b"feedback");
        for m in Mode::ALL {
            let c = Cipher::new(m, &[5; 32]).expect("key");
            let wire = c.encrypt_with(&report, 9, [3; 24]).expect("seal");
            assert_eq!(wire.len(), report.len() + m.overhead(), "{m}");
            assert_eq!(wire[..8], report[..8], "{m}");
            assert_ne!(wire[8..12], report[8..12], "{m}");
            assert_eq!(c.decrypt(&wire), Ok(report.clone()), "{m}");
        }
    }

    #[test]
    fn in_place_needs_room_for_the_overhead() {
        let plain = packet_with_ext().to_bytes();
        for m in Mode::ALL {
            let mut c = Cipher::new(m, &[6; 32]).expect("key");
            let mut buf = plain.clone();
            buf.resize(plain.len() + m.overhead() - 1, 0);
            assert_eq!(c.seal(&mut buf, plain.len()), Err(CryptoError::Encrypt));
            assert_eq!(c.counter(), 0, "a refused seal uses no counter");
            buf.push(0);
            assert_eq!(c.seal(&mut buf, plain.len()), Ok(buf.len()), "{m}");
            let len = c.open(&mut buf).expect("open");
            assert_eq!(buf[..len], plain[..], "{m}");
        }
    }

    const KAT_AES: &str = "80780001000003c000000001cfa5431d0399480de99b382ad00febcf15d62000000000";
    const KAT_XCHACHA: &str =
        "80780001000003c000000001799c95d9cbd66c8036cc21554a7929e980b1da00000000";
    const KAT_LITE: &str = "80780001000003c0000000017e4fc4f13875de029238b6f5f2861603c73cb800000000";
    const KAT_SUFFIX: &str = "80780001000003c0000000017e4fc4f13875de029238b6f5f2861603c73cb8000000000000000000000000000000000000000000000000";
    const KAT_PLAIN: &str = "80780001000003c00000000107c7b66e5debf8ad846636a39b44de9ef507a7";
}
