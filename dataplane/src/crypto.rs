//! The five transport encryption modes as packet transforms (DESIGN.md,
//! "Encryption modes").
//!
//! [`open`] authenticates and decrypts a received packet in place and leaves
//! the whole plaintext RTP/RTCP packet (clear header followed by the
//! decrypted rest) at the front of the buffer, whatever the mode, so that
//! [`seal`] can re-encrypt it for a member using any other mode. Neither
//! allocates.
//!
//! | mode | wire after the clear header | nonce |
//! | --- | --- | --- |
//! | AES-GCM rtpsize | ct ‖ tag ‖ counter | counter ‖ 8 zeros |
//! | XChaCha rtpsize | ct ‖ tag ‖ counter | counter ‖ 20 zeros |
//! | lite | mac ‖ ct ‖ counter | counter ‖ 20 zeros |
//! | suffix | mac ‖ ct ‖ nonce | 24 bytes on the wire |
//! | plain | mac ‖ ct | clear header ‖ zeros |
//!
//! The clear header is 12 + 4·CC bytes (+4 with the X bit: the extension
//! preamble, not its body) in the rtpsize modes and 12 bytes in the legacy
//! ones; for RTCP it is the first 8 bytes in every mode
//! ([`Mode::clear_len`]).

use protocol::rtp;
use shared::Mode;

use crate::packet::Kind;
use crate::sys::sodium::{self, Aes256Gcm, SecretBox, SodiumError, XChaCha20Poly1305, TAG_BYTES};

/// Bytes of the counter suffix in the rtpsize and lite modes.
pub const COUNTER_BYTES: usize = 4;
/// Bytes of the nonce suffix in the suffix mode.
pub const SUFFIX_NONCE_BYTES: usize = 24;
/// The most bytes any mode adds to a plaintext packet.
pub const MAX_OVERHEAD: usize = TAG_BYTES + SUFFIX_NONCE_BYTES;

/// Why a packet could not be opened or sealed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    /// Too short for the mode, or its header lengths do not add up.
    #[error("malformed packet for this mode")]
    Malformed,
    /// The tag or MAC did not verify.
    #[error("authentication failed")]
    Auth,
    /// The output buffer cannot hold the sealed packet.
    #[error("output buffer too small")]
    BufferTooSmall,
    /// The CPU cannot do AES-256-GCM.
    #[error("AES-256-GCM unavailable on this CPU")]
    AesUnavailable,
    /// libsodium failed to initialise.
    #[error("libsodium initialisation failed")]
    Init,
    /// Sealing this would reuse a nonce: RTCP in `xsalsa20_poly1305`,
    /// whose nonce is the 8-byte RTCP header (the same for every report of
    /// one sender).
    #[error("the mode would reuse a nonce for this packet")]
    NonceReuse,
}

impl From<SodiumError> for CryptoError {
    fn from(e: SodiumError) -> Self {
        match e {
            SodiumError::Init => CryptoError::Init,
            SodiumError::AesUnavailable => CryptoError::AesUnavailable,
            SodiumError::Auth => CryptoError::Auth,
            SodiumError::Length => CryptoError::BufferTooSmall,
        }
    }
}

#[derive(Debug)]
enum Cipher {
    Aes(Aes256Gcm),
    XChaCha(XChaCha20Poly1305),
    SecretBox(SecretBox),
}

/// A session's mode and expanded key, built once at session upsert.
#[derive(Debug)]
pub struct KeyState {
    mode: Mode,
    cipher: Cipher,
    /// Random first 20 bytes of the suffix-mode nonces we send; the last 4
    /// are the member's outgoing counter, so nonces never repeat under one
    /// key before 2^32 packets.
    suffix_prefix: [u8; 20],
}

impl KeyState {
    /// Expands `key` for `mode`.
    pub fn new(mode: Mode, key: &[u8; 32]) -> Result<Self, CryptoError> {
        let cipher = match mode {
            Mode::Aes256GcmRtpSize => Cipher::Aes(Aes256Gcm::new(key)?),
            Mode::XChaCha20Poly1305RtpSize => Cipher::XChaCha(XChaCha20Poly1305::new(key)?),
            Mode::XSalsa20Poly1305Lite | Mode::XSalsa20Poly1305Suffix | Mode::XSalsa20Poly1305 => {
                Cipher::SecretBox(SecretBox::new(key)?)
            }
        };
        let mut suffix_prefix = [0; 20];
        sodium::random_bytes(&mut suffix_prefix);
        Ok(KeyState {
            mode,
            cipher,
            suffix_prefix,
        })
    }

    /// The session's mode.
    pub fn mode(&self) -> Mode {
        self.mode
    }
}

/// What identifies a received packet for replay protection. Only
/// authenticated fields serve (DESIGN.md "Encryption modes").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayId {
    /// The 4-byte nonce counter of the rtpsize and lite modes: ordered.
    Counter(u32),
    /// Sequence number and timestamp of the RTP header, which is the nonce
    /// in `xsalsa20_poly1305`: ordered (the timestamp tells a packet from
    /// one replayed 2^16 sequence numbers later).
    Header {
        /// RTP sequence number.
        seq: u16,
        /// RTP timestamp.
        timestamp: u32,
    },
    /// A digest of an authenticated but unordered value: the random nonce
    /// of `xsalsa20_poly1305_suffix`, or the MAC of RTCP in
    /// `xsalsa20_poly1305`. Only a bounded memory of recent ones can catch
    /// replays, so such packets never move an address.
    Recent(u64),
}

impl ReplayId {
    /// Whether the identifier is ordered, so that a window rejects every
    /// replay and an accepted packet may move its sender's address.
    pub fn is_ordered(self) -> bool {
        !matches!(self, ReplayId::Recent(_))
    }
}

/// Folds up to 24 authenticated bytes (a nonce, a MAC) into a digest for
/// [`ReplayId::Recent`]: every byte counts, so nonces that differ anywhere
/// differ here with overwhelming probability.
fn digest(bytes: &[u8]) -> u64 {
    bytes.chunks(8).enumerate().fold(0u64, |acc, (i, chunk)| {
        let mut word = [0u8; 8];
        word[..chunk.len()].copy_from_slice(chunk);
        acc ^ u64::from_le_bytes(word).rotate_left(21 * i as u32)
    })
}

/// A successfully opened packet: `packet[..len]` is the plaintext packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Opened {
    /// Length of the plaintext packet at the front of the buffer.
    pub len: usize,
    /// The value the replay window checks.
    pub replay: ReplayId,
}

fn counter_nonce<const N: usize>(counter: [u8; 4]) -> [u8; N] {
    let mut n = [0; N];
    n[..4].copy_from_slice(&counter);
    n
}

fn tag_at(p: &[u8], at: usize) -> [u8; TAG_BYTES] {
    let mut t = [0; TAG_BYTES];
    t.copy_from_slice(&p[at..at + TAG_BYTES]);
    t
}

/// Authenticates and decrypts `packet` (a whole datagram of `kind`) with
/// `key`. On success the plaintext packet is `packet[..Opened::len]`. On
/// failure the buffer's contents are unspecified but no state changes.
pub fn open(key: &KeyState, kind: Kind, packet: &mut [u8]) -> Result<Opened, CryptoError> {
    let len = packet.len();
    let h = key
        .mode
        .clear_len(kind, packet)
        .map_err(|_| CryptoError::Malformed)?;
    let opened = match (key.mode, &key.cipher) {
        (Mode::Aes256GcmRtpSize | Mode::XChaCha20Poly1305RtpSize, cipher) => {
            let body = len
                .checked_sub(h + TAG_BYTES + COUNTER_BYTES)
                .ok_or(CryptoError::Malformed)?;
            let counter: [u8; 4] = packet[len - 4..]
                .try_into()
                .map_err(|_| CryptoError::Malformed)?;
            let tag = tag_at(packet, h + body);
            let (aad, rest) = packet.split_at_mut(h);
            let ct = &mut rest[..body];
            match cipher {
                Cipher::Aes(c) => c.open_in_place(&counter_nonce(counter), aad, ct, &tag)?,
                Cipher::XChaCha(c) => c.open_in_place(&counter_nonce(counter), aad, ct, &tag)?,
                Cipher::SecretBox(_) => return Err(CryptoError::Malformed),
            }
            Opened {
                len: h + body,
                replay: ReplayId::Counter(u32::from_be_bytes(counter)),
            }
        }
        (mode, Cipher::SecretBox(sb)) => {
            let (nonce, suffix, replay) = match mode {
                Mode::XSalsa20Poly1305Lite => {
                    let c: [u8; 4] = packet
                        .get(len.saturating_sub(4)..)
                        .and_then(|s| s.try_into().ok())
                        .ok_or(CryptoError::Malformed)?;
                    (
                        counter_nonce(c),
                        COUNTER_BYTES,
                        ReplayId::Counter(u32::from_be_bytes(c)),
                    )
                }
                Mode::XSalsa20Poly1305Suffix => {
                    let n: [u8; 24] = packet
                        .get(len.saturating_sub(SUFFIX_NONCE_BYTES)..)
                        .and_then(|s| s.try_into().ok())
                        .ok_or(CryptoError::Malformed)?;
                    (n, SUFFIX_NONCE_BYTES, ReplayId::Recent(digest(&n)))
                }
                _ => {
                    let mut n = [0; 24];
                    n[..h].copy_from_slice(&packet[..h]);
                    let replay = match kind {
                        Kind::Rtp => ReplayId::Header {
                            seq: u16::from_be_bytes([packet[2], packet[3]]),
                            timestamp: u32::from_be_bytes([
                                packet[4], packet[5], packet[6], packet[7],
                            ]),
                        },
                        // The nonce (the RTCP header) repeats; the MAC is
                        // what tells one report from another.
                        Kind::Rtcp => ReplayId::Recent(digest(
                            packet.get(h..h + TAG_BYTES).ok_or(CryptoError::Malformed)?,
                        )),
                    };
                    (n, 0, replay)
                }
            };
            let body = len
                .checked_sub(h + TAG_BYTES + suffix)
                .ok_or(CryptoError::Malformed)?;
            let mac = tag_at(packet, h);
            let ct_at = h + TAG_BYTES;
            sb.open_in_place(&nonce, &mut packet[ct_at..ct_at + body], &mac)?;
            packet.copy_within(ct_at..ct_at + body, h);
            Opened {
                len: h + body,
                replay,
            }
        }
        _ => return Err(CryptoError::Malformed),
    };
    // The CSRC list and header extension of what came out must fit.
    if kind == Kind::Rtp && rtp::header_len(&packet[..opened.len]).is_err() {
        return Err(CryptoError::Malformed);
    }
    Ok(opened)
}

/// Encrypts the plaintext packet `plain` of `kind` for a member using `key`
/// and that member's outgoing `counter`, writing the datagram into `out`.
/// Returns its length.
pub fn seal(
    key: &KeyState,
    kind: Kind,
    counter: u32,
    plain: &[u8],
    out: &mut [u8],
) -> Result<usize, CryptoError> {
    if kind == Kind::Rtp && rtp::header_len(plain).is_err() {
        return Err(CryptoError::Malformed);
    }
    if kind == Kind::Rtcp && key.mode == Mode::XSalsa20Poly1305 {
        return Err(CryptoError::NonceReuse);
    }
    let h = key
        .mode
        .clear_len(kind, plain)
        .map_err(|_| CryptoError::Malformed)?;
    let body = plain.len() - h;
    let (head, src) = plain.split_at(h);
    let ctr = counter.to_be_bytes();
    match (key.mode, &key.cipher) {
        (Mode::Aes256GcmRtpSize | Mode::XChaCha20Poly1305RtpSize, cipher) => {
            let total = h + body + TAG_BYTES + COUNTER_BYTES;
            let out = out.get_mut(..total).ok_or(CryptoError::BufferTooSmall)?;
            out[..h].copy_from_slice(head);
            let (dst, tail) = out[h..].split_at_mut(body);
            let (tag, ctr_out) = tail.split_at_mut(TAG_BYTES);
            let tag: &mut [u8; TAG_BYTES] =
                tag.try_into().map_err(|_| CryptoError::BufferTooSmall)?;
            match cipher {
                Cipher::Aes(c) => c.seal(&counter_nonce(ctr), head, src, dst, tag)?,
                Cipher::XChaCha(c) => c.seal(&counter_nonce(ctr), head, src, dst, tag)?,
                Cipher::SecretBox(_) => return Err(CryptoError::Malformed),
            }
            ctr_out.copy_from_slice(&ctr);
            Ok(total)
        }
        (mode, Cipher::SecretBox(sb)) => {
            let mut nonce = [0u8; 24];
            let suffix = match mode {
                Mode::XSalsa20Poly1305Lite => {
                    nonce[..4].copy_from_slice(&ctr);
                    COUNTER_BYTES
                }
                Mode::XSalsa20Poly1305Suffix => {
                    nonce[..20].copy_from_slice(&key.suffix_prefix);
                    nonce[20..].copy_from_slice(&ctr);
                    SUFFIX_NONCE_BYTES
                }
                _ => {
                    nonce[..h].copy_from_slice(head);
                    0
                }
            };
            let total = h + TAG_BYTES + body + suffix;
            let out = out.get_mut(..total).ok_or(CryptoError::BufferTooSmall)?;
            out[..h].copy_from_slice(head);
            let (mac, rest) = out[h..].split_at_mut(TAG_BYTES);
            let (dst, suffix_out) = rest.split_at_mut(body);
            let mac: &mut [u8; TAG_BYTES] =
                mac.try_into().map_err(|_| CryptoError::BufferTooSmall)?;
            sb.seal(&nonce, src, dst, mac)?;
            match mode {
                Mode::XSalsa20Poly1305Lite => suffix_out.copy_from_slice(&ctr),
                Mode::XSalsa20Poly1305Suffix => suffix_out.copy_from_slice(&nonce),
                _ => {}
            }
            Ok(total)
        }
        _ => Err(CryptoError::Malformed),
    }
}

/// Whether an RTP datagram `sealed` in an rtpsize mode would be misread as
/// carrying a header extension it does not have. @discordjs/voice (0.19)
/// takes bytes 12-13 equal to 0xBEDE for a one-byte-header extension
/// without looking at the X bit, and cuts the opened payload by the length
/// it reads next, mostly to nothing. With no CSRC and no extension those
/// bytes are the first two of the ciphertext: one datagram in 65,536.
/// Sealed again under the next counter, it reads right.
pub fn misread_as_extended(mode: Mode, kind: Kind, sealed: &[u8]) -> bool {
    const EXTENSION_OR_CSRC: u8 = 0x1f;
    matches!(
        mode,
        Mode::Aes256GcmRtpSize | Mode::XChaCha20Poly1305RtpSize
    ) && kind == Kind::Rtp
        && sealed.first().is_some_and(|b| b & EXTENSION_OR_CSRC == 0)
        && sealed.get(12..14) == Some(&rtp::ONE_BYTE_PROFILE.to_be_bytes()[..])
}

#[cfg(test)]
mod tests {
    use super::*;
    use scripts::crypto::Cipher;

    const KEY: [u8; 32] = [0x42; 32];

    fn rtp(cc: u8, ext_words: Option<u16>, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![
            0x80 | cc | if ext_words.is_some() { 0x10 } else { 0 },
            0x78,
            0x12,
            0x34,
        ];
        p.extend_from_slice(&[0, 0, 0x03, 0xC0]); // timestamp
        p.extend_from_slice(&0x1122_3344u32.to_be_bytes());
        for i in 0..cc {
            p.extend_from_slice(&[i; 4]);
        }
        if let Some(w) = ext_words {
            p.extend_from_slice(&[0xBE, 0xDE]);
            p.extend_from_slice(&w.to_be_bytes());
            for i in 0..w {
                p.extend_from_slice(&[0x10 + i as u8; 4]);
            }
        }
        p.extend_from_slice(payload);
        p
    }

    /// The client side: the client library's independent implementation.
    fn client(mode: Mode) -> Cipher {
        Cipher::new(mode, &KEY).unwrap()
    }

    #[test]
    fn interoperates_with_the_client_library_in_every_mode() {
        for mode in Mode::ALL {
            let key = KeyState::new(mode, &KEY).unwrap();
            for (cc, ext, rtpsize_header) in [
                (0, None, 12),
                (2, None, 20),
                (0, Some(2), 16),
                (3, Some(1), 28),
            ] {
                let header = if mode.is_rtpsize() {
                    rtpsize_header
                } else {
                    12
                };
                let plain = rtp(cc, ext, b"opus frame bytes");
                // client → us
                let mut wire = client(mode)
                    .encrypt_with(&plain, 0xFFFF_FFFE, [7; 24])
                    .unwrap();
                let opened = open(&key, Kind::Rtp, &mut wire).unwrap();
                assert_eq!(&wire[..opened.len], &plain[..], "{mode}");
                if mode == Mode::Aes256GcmRtpSize {
                    assert_eq!(opened.replay, ReplayId::Counter(0xFFFF_FFFE));
                }
                // us → client
                let mut out = [0u8; 256];
                let n = seal(&key, Kind::Rtp, 9, &plain, &mut out).unwrap();
                assert_eq!(n, plain.len() + mode.overhead(), "{mode}");
                assert_eq!(
                    &out[..header],
                    &plain[..header],
                    "{mode}: clear header length"
                );
                assert_eq!(client(mode).decrypt(&out[..n]).unwrap(), plain, "{mode}");
                // our own seal opens with our open
                let opened = open(&key, Kind::Rtp, &mut out[..n]).unwrap();
                assert_eq!(&out[..opened.len], &plain[..], "{mode}");
            }
        }
    }

    #[test]
    fn aes_gcm_rejects_forgeries() {
        let key = KeyState::new(Mode::Aes256GcmRtpSize, &KEY).unwrap();
        let other = KeyState::new(Mode::Aes256GcmRtpSize, &[1; 32]).unwrap();
        let plain = rtp(1, Some(1), b"payload");
        let wire = client(Mode::Aes256GcmRtpSize)
            .encrypt_with(&plain, 5, [0; 24])
            .unwrap();
        assert_eq!(
            open(&other, Kind::Rtp, &mut wire.clone()),
            Err(CryptoError::Auth)
        );
        for flip in [0, 13, wire.len() - 10, wire.len() - 5, wire.len() - 1] {
            let mut w = wire.clone();
            w[flip] ^= 0x01;
            assert!(open(&key, Kind::Rtp, &mut w).is_err(), "flip at {flip}");
        }
        let mut short = wire[..19].to_vec();
        assert_eq!(
            open(&key, Kind::Rtp, &mut short),
            Err(CryptoError::Malformed)
        );
    }

    #[test]
    fn rtcp_clear_header_is_eight_bytes() {
        let key = KeyState::new(Mode::Aes256GcmRtpSize, &KEY).unwrap();
        let mut plain = vec![0x81, 201, 0, 7];
        plain.extend_from_slice(&77u32.to_be_bytes());
        plain.extend_from_slice(&[9; 24]);
        let reference = client(Mode::Aes256GcmRtpSize);
        let mut wire = reference.encrypt_with(&plain, 3, [0; 24]).unwrap();
        assert_eq!(wire[..8], plain[..8]);
        assert_ne!(wire[8..12], plain[8..12]);
        let opened = open(&key, Kind::Rtcp, &mut wire).unwrap();
        assert_eq!(&wire[..opened.len], &plain[..]);
        let mut out = [0u8; 128];
        let n = seal(&key, Kind::Rtcp, 1, &plain, &mut out).unwrap();
        assert_eq!(reference.decrypt(&out[..n]).unwrap(), plain);
    }

    #[test]
    fn every_mode_roundtrips_and_converts() {
        let plain = rtp(2, Some(1), b"some opus payload");
        for from in Mode::ALL {
            for to in Mode::ALL {
                let a = KeyState::new(from, &KEY).unwrap();
                let b = KeyState::new(to, &[3; 32]).unwrap();
                let mut wire = [0u8; 256];
                let n = seal(&a, Kind::Rtp, 41, &plain, &mut wire).unwrap();
                let opened = open(&a, Kind::Rtp, &mut wire[..n]).unwrap();
                assert_eq!(&wire[..opened.len], &plain[..], "{from:?}");
                let mut out = [0u8; 256];
                let m = seal(&b, Kind::Rtp, 1, &wire[..opened.len], &mut out).unwrap();
                let back = open(&b, Kind::Rtp, &mut out[..m]).unwrap();
                assert_eq!(&out[..back.len], &plain[..], "{from:?} -> {to:?}");
                let mut bad = out;
                bad[m - 1] ^= 0x80;
                bad[m / 2] ^= 0x80;
                assert!(open(&b, Kind::Rtp, &mut bad[..m]).is_err());
            }
        }
    }

    #[test]
    fn replay_ids_per_mode() {
        let plain = rtp(0, None, b"x");
        let header = ReplayId::Header {
            seq: 0x1234,
            timestamp: 0x3C0,
        };
        for (mode, ordered) in [
            (Mode::Aes256GcmRtpSize, Some(ReplayId::Counter(77))),
            (Mode::XChaCha20Poly1305RtpSize, Some(ReplayId::Counter(77))),
            (Mode::XSalsa20Poly1305Lite, Some(ReplayId::Counter(77))),
            (Mode::XSalsa20Poly1305, Some(header)),
            (Mode::XSalsa20Poly1305Suffix, None),
        ] {
            let k = KeyState::new(mode, &KEY).unwrap();
            let mut ids = Vec::new();
            for counter in [77, 78] {
                let mut wire = [0u8; 128];
                let n = seal(&k, Kind::Rtp, counter, &plain, &mut wire).unwrap();
                ids.push(open(&k, Kind::Rtp, &mut wire[..n]).unwrap().replay);
            }
            match ordered {
                Some(id) => assert_eq!(ids[0], id, "{mode:?}"),
                None => {
                    // Suffix: a digest of each packet's own nonce.
                    assert!(matches!(ids[0], ReplayId::Recent(_)));
                    assert_ne!(ids[0], ids[1], "distinct nonces, distinct ids");
                }
            }
            assert_eq!(ids[0].is_ordered(), ordered.is_some());
        }
    }

    #[test]
    fn plain_mode_rtcp_is_told_apart_by_its_mac_and_never_sealed() {
        let k = KeyState::new(Mode::XSalsa20Poly1305, &KEY).unwrap();
        let lite = KeyState::new(Mode::XSalsa20Poly1305Lite, &KEY).unwrap();
        let mut report = vec![0x81, 201, 0, 7];
        report.extend_from_slice(&77u32.to_be_bytes());
        report.extend_from_slice(&[9; 24]);
        // The server seals RTCP in the other modes, never in this one.
        let mut sealed = [0u8; 128];
        let n = seal(&lite, Kind::Rtcp, 0, &report, &mut sealed).unwrap();
        assert!(n > 0);
        assert_eq!(
            seal(&k, Kind::Rtcp, 0, &report, &mut sealed),
            Err(CryptoError::NonceReuse),
            "never sealed to a plain-mode receiver"
        );
        // A client sealing it as the mode says (nonce = the clear header).
        let reference = client(Mode::XSalsa20Poly1305);
        let mut ids = Vec::new();
        for body in [[9u8; 24], [8u8; 24]] {
            let plain = [&report[..8], &body[..]].concat();
            let mut wire = reference.encrypt_with(&plain, 0, [0; 24]).unwrap();
            let opened = open(&k, Kind::Rtcp, &mut wire).unwrap();
            assert_eq!(&wire[8..opened.len], &body);
            ids.push(opened.replay);
        }
        assert!(matches!(ids[0], ReplayId::Recent(_)));
        assert_ne!(ids[0], ids[1]);
    }

    #[test]
    fn seal_checks_output_room_and_extension_length() {
        let k = KeyState::new(Mode::Aes256GcmRtpSize, &KEY).unwrap();
        let plain = rtp(0, None, &[0; 100]);
        let mut small = [0u8; 100];
        assert_eq!(
            seal(&k, Kind::Rtp, 0, &plain, &mut small),
            Err(CryptoError::BufferTooSmall)
        );
        let mut lying = rtp(0, Some(1), b"");
        lying[15] = 9; // claims 9 extension words, has 1
        let mut out = [0u8; 128];
        assert_eq!(
            seal(&k, Kind::Rtp, 0, &lying, &mut out),
            Err(CryptoError::Malformed)
        );
    }
}
