//! The five transport encryption modes of Discord voice (DESIGN.md,
//! "Encryption modes"): sealing a plaintext RTP packet into its wire form
//! and opening it again.
//!
//! A [`Cipher`] holds a mode, the 32-byte session key and the outgoing
//! nonce counter. [`Cipher::encrypt`] takes a whole plaintext RTP packet
//! (header, CSRCs, extension, payload) and returns the datagram;
//! [`Cipher::decrypt`] takes a datagram and returns the plaintext packet,
//! ready for [`RtpPacket::parse`](crate::rtp::RtpPacket::parse).

use std::fmt;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::Aes256Gcm;
use chacha20poly1305::XChaCha20Poly1305;
use crypto_secretbox::XSalsa20Poly1305;
use rand::RngCore;

pub use protocol::{Mode, TAG_LEN};

use crate::rtp::{rtpsize_header_len, PacketError, FIXED_HEADER_LEN};

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
    /// The cipher refused to encrypt (only on absurd lengths).
    #[error("encryption failed")]
    Encrypt,
}

enum Sealer {
    Aes(Box<Aes256Gcm>),
    XChaCha(Box<XChaCha20Poly1305>),
    XSalsa(Box<XSalsa20Poly1305>),
}

/// A mode, a session key and the outgoing nonce counter.
pub struct Cipher {
    mode: Mode,
    key: [u8; KEY_LEN],
    aead: Sealer,
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
            Mode::Aes256GcmRtpSize => Sealer::Aes(Box::new(Aes256Gcm::new(&key.into()))),
            Mode::XChaCha20Poly1305RtpSize => {
                Sealer::XChaCha(Box::new(XChaCha20Poly1305::new(&key.into())))
            }
            _ => Sealer::XSalsa(Box::new(XSalsa20Poly1305::new(&key.into()))),
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

    /// The counter the next [`encrypt`](Self::encrypt) will use.
    pub fn counter(&self) -> u32 {
        self.counter
    }

    /// Seals a plaintext RTP packet with the next counter (wrapping at
    /// 2^32) or, in the suffix mode, a random nonce.
    pub fn encrypt(&mut self, packet: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let mut suffix = [0u8; 24];
        if self.mode == Mode::XSalsa20Poly1305Suffix {
            rand::thread_rng().fill_bytes(&mut suffix);
        }
        let out = self.encrypt_with(packet, self.counter, suffix)?;
        if matches!(
            self.mode,
            Mode::Aes256GcmRtpSize | Mode::XChaCha20Poly1305RtpSize | Mode::XSalsa20Poly1305Lite
        ) {
            self.counter = self.counter.wrapping_add(1);
        }
        Ok(out)
    }

    /// Seals deterministically: `counter` for the rtpsize and lite modes,
    /// `suffix_nonce` for the suffix mode (the other modes ignore them).
    pub fn encrypt_with(
        &self,
        packet: &[u8],
        counter: u32,
        suffix_nonce: [u8; 24],
    ) -> Result<Vec<u8>, CryptoError> {
        let clear_len = self.clear_header_len(packet)?;
        let (clear, body) = packet.split_at(clear_len);
        let mut nonce = [0u8; 24];
        match self.mode {
            Mode::XSalsa20Poly1305Suffix => nonce = suffix_nonce,
            Mode::XSalsa20Poly1305 => nonce[..FIXED_HEADER_LEN].copy_from_slice(clear),
            _ => nonce[..4].copy_from_slice(&counter.to_be_bytes()),
        }
        let sealed = match &self.aead {
            Sealer::Aes(c) => c.encrypt(
                nonce[..12].into(),
                Payload {
                    msg: body,
                    aad: clear,
                },
            ),
            Sealer::XChaCha(c) => c.encrypt(
                (&nonce).into(),
                Payload {
                    msg: body,
                    aad: clear,
                },
            ),
            Sealer::XSalsa(c) => c.encrypt((&nonce).into(), body),
        }
        .map_err(|_| CryptoError::Encrypt)?;
        let mut out = Vec::with_capacity(packet.len() + self.mode.overhead());
        out.extend_from_slice(clear);
        out.extend_from_slice(&sealed);
        match self.mode {
            Mode::XSalsa20Poly1305Suffix => out.extend_from_slice(&nonce),
            Mode::XSalsa20Poly1305 => {}
            _ => out.extend_from_slice(&counter.to_be_bytes()),
        }
        Ok(out)
    }

    /// Opens a datagram; returns the plaintext RTP packet (clear header
    /// followed by the decrypted rest).
    pub fn decrypt(&self, wire: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let clear_len = self.clear_header_len(wire)?;
        let trailer = self.mode.overhead() - TAG_LEN;
        let need = clear_len + TAG_LEN + trailer;
        if wire.len() < need {
            return Err(PacketError::Truncated {
                need,
                have: wire.len(),
            }
            .into());
        }
        let (clear, rest) = wire.split_at(clear_len);
        let (sealed, tail) = rest.split_at(rest.len() - trailer);
        let mut nonce = [0u8; 24];
        match self.mode {
            Mode::XSalsa20Poly1305 => nonce[..FIXED_HEADER_LEN].copy_from_slice(clear),
            _ => nonce[..trailer].copy_from_slice(tail),
        }
        let opened = match &self.aead {
            Sealer::Aes(c) => c.decrypt(
                nonce[..12].into(),
                Payload {
                    msg: sealed,
                    aad: clear,
                },
            ),
            Sealer::XChaCha(c) => c.decrypt(
                (&nonce).into(),
                Payload {
                    msg: sealed,
                    aad: clear,
                },
            ),
            Sealer::XSalsa(c) => c.decrypt((&nonce).into(), sealed),
        }
        .map_err(|_| CryptoError::Decrypt)?;
        let mut out = Vec::with_capacity(clear.len() + opened.len());
        out.extend_from_slice(clear);
        out.extend_from_slice(&opened);
        Ok(out)
    }

    fn clear_header_len(&self, packet: &[u8]) -> Result<usize, PacketError> {
        if self.mode.is_rtpsize() {
            rtpsize_header_len(packet)
        } else if packet.len() < FIXED_HEADER_LEN {
            Err(PacketError::Truncated {
                need: FIXED_HEADER_LEN,
                have: packet.len(),
            })
        } else {
            Ok(FIXED_HEADER_LEN)
        }
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

    const KAT_AES: &str = "80780001000003c000000001cfa5431d0399480de99b382ad00febcf15d62000000000";
    const KAT_XCHACHA: &str =
        "80780001000003c000000001799c95d9cbd66c8036cc21554a7929e980b1da00000000";
    const KAT_LITE: &str = "80780001000003c0000000017e4fc4f13875de029238b6f5f2861603c73cb800000000";
    const KAT_SUFFIX: &str = "80780001000003c0000000017e4fc4f13875de029238b6f5f2861603c73cb8000000000000000000000000000000000000000000000000";
    const KAT_PLAIN: &str = "80780001000003c00000000107c7b66e5debf8ad846636a39b44de9ef507a7";
}
