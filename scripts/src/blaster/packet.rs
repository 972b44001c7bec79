//! The blaster's packets: a plain Opus RTP header, a payload stamped with
//! its send time and filled with a pattern every byte of which is checked,
//! and their sealing with the client library's [`Cipher`].

use crate::crypto::{Cipher, CryptoError, Mode};
use crate::rtp::{self, PacketError, FIXED_HEADER_LEN, OPUS_PAYLOAD_TYPE};

/// Bytes at the start of every payload: send time (u64), packet number
/// (u64) and SSRC (u32), big-endian.
pub const STAMP_LEN: usize = 20;
/// Largest datagram handled.
pub const MAX_DATAGRAM: usize = 2048;

/// Writes a plain 12-byte Opus RTP header (version 2, no CSRC, no
/// extension) into `buf[..12]`.
pub fn write_header(buf: &mut [u8], sequence: u16, timestamp: u32, ssrc: u32) {
    buf[0] = 0x80;
    buf[1] = OPUS_PAYLOAD_TYPE;
    buf[2..4].copy_from_slice(&sequence.to_be_bytes());
    buf[4..8].copy_from_slice(&timestamp.to_be_bytes());
    buf[8..12].copy_from_slice(&ssrc.to_be_bytes());
}

/// The stamp at the start of a payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// Send time, ns since the run's epoch.
    pub send_ns: u64,
    /// The talker's packet number.
    pub seq: u64,
    /// The talker's SSRC.
    pub ssrc: u32,
}

/// Fills `out` (at least [`STAMP_LEN`] bytes): the stamp, then
/// [`fill_byte`]s.
pub fn write_payload(out: &mut [u8], send_ns: u64, seq: u64, ssrc: u32) {
    out[0..8].copy_from_slice(&send_ns.to_be_bytes());
    out[8..16].copy_from_slice(&seq.to_be_bytes());
    out[16..20].copy_from_slice(&ssrc.to_be_bytes());
    for (i, b) in out.iter_mut().enumerate().skip(STAMP_LEN) {
        *b = fill_byte(i, seq, ssrc);
    }
}

/// Byte `i` of the fill pattern of packet `seq` from `ssrc`.
pub fn fill_byte(i: usize, seq: u64, ssrc: u32) -> u8 {
    (i as u8).wrapping_mul(31) ^ (seq as u8).wrapping_mul(7) ^ (ssrc as u8) ^ (seq >> 8) as u8
}

/// The stamp of a payload of exactly `len` bytes whose every fill byte is
/// what [`write_payload`] wrote; `None` otherwise.
pub fn check_payload(payload: &[u8], len: usize) -> Option<Stamp> {
    if payload.len() != len || len < STAMP_LEN {
        return None;
    }
    let u64_at = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&payload[at..at + 8]);
        u64::from_be_bytes(b)
    };
    let stamp = Stamp {
        send_ns: u64_at(0),
        seq: u64_at(8),
        ssrc: u32::from_be_bytes([payload[16], payload[17], payload[18], payload[19]]),
    };
    payload
        .iter()
        .enumerate()
        .skip(STAMP_LEN)
        .all(|(i, b)| *b == fill_byte(i, stamp.seq, stamp.ssrc))
        .then_some(stamp)
}

/// An opened datagram: header fields and where the payload sits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Opened {
    pub(super) ssrc: u32,
    pub(super) seq: u16,
    payload: std::ops::Range<usize>,
}

impl Opened {
    pub(super) fn payload_of<'b>(&self, buf: &'b [u8]) -> &'b [u8] {
        &buf[self.payload.clone()]
    }
}

/// Seals and opens in place in a caller's buffer, without allocating.
pub(super) enum Sealer {
    /// A session's mode and key.
    Cipher(Box<Cipher>),
    /// The baseline: no crypto, `trailer` zero bytes after the payload.
    Plain { trailer: usize },
}

impl Sealer {
    pub(super) fn new(mode: Mode, key: &[u8; 32]) -> Result<Self, CryptoError> {
        Ok(Sealer::Cipher(Box::new(Cipher::new(mode, key)?)))
    }

    /// Seals the plaintext packet `buf[..plain_len]` in place with the
    /// next nonce; returns the datagram length.
    pub(super) fn seal(&mut self, buf: &mut [u8], plain_len: usize) -> Result<usize, CryptoError> {
        match self {
            Sealer::Cipher(cipher) => cipher.seal(buf, plain_len),
            Sealer::Plain { trailer } => {
                let len = plain_len + *trailer;
                if len > buf.len() {
                    return Err(CryptoError::Encrypt);
                }
                buf[plain_len..len].fill(0);
                Ok(len)
            }
        }
    }

    /// Opens the datagram `buf[..n]` in place.
    pub(super) fn open(&self, buf: &mut [u8], n: usize) -> Result<Opened, CryptoError> {
        let wire = &mut buf[..n];
        if wire.len() < FIXED_HEADER_LEN || wire[0] >> 6 != 2 {
            return Err(PacketError::Truncated {
                need: FIXED_HEADER_LEN,
                have: wire.len(),
            }
            .into());
        }
        let ssrc = u32::from_be_bytes([wire[8], wire[9], wire[10], wire[11]]);
        let seq = u16::from_be_bytes([wire[2], wire[3]]);
        match self {
            Sealer::Cipher(cipher) => {
                let len = cipher.open(wire)?;
                let start = rtp::header_len(&wire[..len])?;
                Ok(Opened {
                    ssrc,
                    seq,
                    payload: start..len,
                })
            }
            Sealer::Plain { trailer } => {
                if wire[0] & 0x1f != 0 || n < FIXED_HEADER_LEN + trailer {
                    return Err(CryptoError::Decrypt);
                }
                if wire[n - trailer..].iter().any(|b| *b != 0) {
                    return Err(CryptoError::Decrypt);
                }
                Ok(Opened {
                    ssrc,
                    seq,
                    payload: FIXED_HEADER_LEN..n - trailer,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rtp::{RtpHeader, RtpPacket};

    #[test]
    fn payload_round_trip_and_tamper() {
        let mut p = [0u8; 128];
        write_payload(&mut p, 123_456, 77, 0xdead_beef);
        assert_eq!(
            check_payload(&p, 128),
            Some(Stamp {
                send_ns: 123_456,
                seq: 77,
                ssrc: 0xdead_beef
            })
        );
        assert_eq!(check_payload(&p, 127), None);
        assert_eq!(check_payload(&p[..19], 19), None);
        for i in STAMP_LEN..p.len() {
            let mut bad = p;
            bad[i] ^= 0x40;
            assert_eq!(check_payload(&bad, 128), None, "byte {i}");
        }
    }

    /// What a member seals is what the client library seals with the same
    /// key and counter, and it opens to the payload; a flipped byte or a
    /// truncation does not open.
    #[test]
    fn sealers_match_the_cipher_and_round_trip() {
        let key = [1u8; 32];
        for mode in Mode::ALL {
            let mut sealer = Sealer::new(mode, &key).expect("key");
            let opener = Sealer::new(mode, &key).expect("key");
            let mut buf = [0u8; MAX_DATAGRAM];
            let payload_len = 160 - 12 - mode.overhead();
            write_header(&mut buf, 9, 0, 7);
            write_payload(&mut buf[12..12 + payload_len], 1, 9, 7);
            let plain = buf[..12 + payload_len].to_vec();
            let len = sealer.seal(&mut buf, 12 + payload_len).expect("seal");
            assert_eq!(len, 160, "{mode}");
            let cipher = Cipher::new(mode, &key).expect("key");
            assert_eq!(cipher.decrypt(&buf[..len]), Ok(plain.clone()), "{mode}");
            if mode != Mode::XSalsa20Poly1305Suffix {
                let wire = cipher.encrypt_with(&plain, 0, [0; 24]).expect("seal");
                assert_eq!(wire, buf[..len], "{mode}");
            }
            let mut bad = buf;
            bad[50] ^= 1;
            assert!(opener.open(&mut bad, len).is_err(), "{mode}");
            assert!(opener.open(&mut buf.clone(), 30).is_err(), "{mode}");
            let opened = opener.open(&mut buf, len).expect("open");
            assert_eq!((opened.ssrc, opened.seq), (7, 9));
            assert_eq!(opened.payload_of(&buf), &plain[12..], "{mode}");
            assert!(check_payload(opened.payload_of(&buf), payload_len).is_some());
        }
        let mut plain = Sealer::Plain { trailer: 20 };
        let mut buf = [0u8; MAX_DATAGRAM];
        let p = RtpPacket {
            header: RtpHeader::opus(1, 960, 3),
            payload: vec![0; 128],
        };
        buf[..140].copy_from_slice(&p.to_bytes());
        write_payload(&mut buf[12..140], 5, 1, 3);
        let len = plain.seal(&mut buf, 140).expect("seal");
        assert_eq!(len, 160);
        let opened = plain.open(&mut buf, len).expect("open");
        assert_eq!(opened.payload, 12..140);
        buf[150] = 1;
        assert!(plain.open(&mut buf, len).is_err());
    }
}
