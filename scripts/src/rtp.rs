//! RTP packets (RFC 3550) as Discord voice uses them: building and parsing.
//! Header lengths and the RTP/RTCP split are `protocol::rtp`'s, shared with
//! the server.
//!
//! Everything here is pure: bytes in, bytes or values out.

pub use protocol::rtp::{header_len, Kind, FIXED_HEADER_LEN, ONE_BYTE_PROFILE};

/// Payload type of Opus audio on Discord voice.
pub const OPUS_PAYLOAD_TYPE: u8 = 0x78;
/// Samples per 20 ms Opus frame at 48 kHz: the timestamp step.
pub const SAMPLES_PER_FRAME: u32 = 960;

/// A datagram that is not a well-formed packet of the kind expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    /// Fewer bytes than the headers announce.
    #[error("packet truncated: need {need} bytes, have {have}")]
    Truncated {
        /// Bytes the headers require.
        need: usize,
        /// Bytes present.
        have: usize,
    },
    /// The RTP version bits are not 2.
    #[error("not RTP version 2 (first byte {0:#04x})")]
    BadVersion(u8),
    /// The padding count is zero or larger than the payload.
    #[error("bad RTP padding length {0}")]
    BadPadding(u8),
    /// An IP discovery packet with the wrong type or length field.
    #[error("not an IP discovery response (type {kind:#06x}, length {length})")]
    NotDiscovery {
        /// The type field.
        kind: u16,
        /// The length field.
        length: u16,
    },
    /// The address in an IP discovery response is not an IP literal.
    #[error("bad address in IP discovery response")]
    BadAddress,
}

impl From<protocol::rtp::Truncated> for PacketError {
    fn from(t: protocol::rtp::Truncated) -> Self {
        PacketError::Truncated {
            need: t.need,
            have: t.have,
        }
    }
}

/// An RTP header extension: its profile and body (a multiple of 4 bytes on
/// the wire; [`RtpHeader::write`] zero-pads a shorter body).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extension {
    /// The 16-bit profile, usually [`ONE_BYTE_PROFILE`].
    pub profile: u16,
    /// The extension body, without the 4-byte preamble.
    pub data: Vec<u8>,
}

/// An RTP header with everything Discord voice can put in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtpHeader {
    /// The M bit.
    pub marker: bool,
    /// Payload type (7 bits); [`OPUS_PAYLOAD_TYPE`] for audio.
    pub payload_type: u8,
    /// Sequence number.
    pub sequence: u16,
    /// Timestamp, in 48 kHz samples.
    pub timestamp: u32,
    /// Synchronisation source.
    pub ssrc: u32,
    /// Contributing sources (at most 15).
    pub csrcs: Vec<u32>,
    /// Header extension (sets the X bit).
    pub extension: Option<Extension>,
}

impl RtpHeader {
    /// A plain Opus header: no marker, CSRC or extension.
    pub fn opus(sequence: u16, timestamp: u32, ssrc: u32) -> Self {
        RtpHeader {
            marker: false,
            payload_type: OPUS_PAYLOAD_TYPE,
            sequence,
            timestamp,
            ssrc,
            csrcs: Vec::new(),
            extension: None,
        }
    }

    /// Bytes [`write`](Self::write) produces.
    pub fn len(&self) -> usize {
        FIXED_HEADER_LEN
            + 4 * self.csrcs.len().min(15)
            + self
                .extension
                .as_ref()
                .map_or(0, |e| 4 + e.data.len().div_ceil(4) * 4)
    }

    /// Always false: a header has at least 12 bytes (for clippy's `len`
    /// convention).
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Appends the header to `out`: fixed part, CSRCs (the first 15), the
    /// extension preamble and its zero-padded body.
    pub fn write(&self, out: &mut Vec<u8>) {
        let cc = self.csrcs.len().min(15);
        let x = if self.extension.is_some() { 0x10 } else { 0 };
        out.push(0x80 | x | cc as u8);
        out.push(((self.marker as u8) << 7) | (self.payload_type & 0x7f));
        out.extend_from_slice(&self.sequence.to_be_bytes());
        out.extend_from_slice(&self.timestamp.to_be_bytes());
        out.extend_from_slice(&self.ssrc.to_be_bytes());
        for csrc in &self.csrcs[..cc] {
            out.extend_from_slice(&csrc.to_be_bytes());
        }
        if let Some(ext) = &self.extension {
            let words = ext.data.len().div_ceil(4);
            out.extend_from_slice(&ext.profile.to_be_bytes());
            // A body over 256 KiB cannot be described; truncate the count.
            out.extend_from_slice(&(words.min(u16::MAX as usize) as u16).to_be_bytes());
            out.extend_from_slice(&ext.data);
            out.resize(out.len() + words * 4 - ext.data.len(), 0);
        }
    }
}

/// A whole (decrypted) RTP packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtpPacket {
    /// The header.
    pub header: RtpHeader,
    /// The payload, without padding.
    pub payload: Vec<u8>,
}

impl RtpPacket {
    /// Serializes header then payload.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.header.len() + self.payload.len());
        self.header.write(&mut out);
        out.extend_from_slice(&self.payload);
        out
    }

    /// Parses a plaintext packet, honouring CSRCs, the extension and padding.
    pub fn parse(buf: &[u8]) -> Result<Self, PacketError> {
        need(buf, FIXED_HEADER_LEN)?;
        if buf[0] >> 6 != 2 {
            return Err(PacketError::BadVersion(buf[0]));
        }
        let padded = buf[0] & 0x20 != 0;
        let at = protocol::rtp::header_len(buf)?;
        let csrcs_end = FIXED_HEADER_LEN + 4 * usize::from(buf[0] & 0x0f);
        let csrcs = buf[FIXED_HEADER_LEN..csrcs_end]
            .chunks_exact(4)
            .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let extension = (buf[0] & 0x10 != 0).then(|| Extension {
            profile: u16::from_be_bytes([buf[csrcs_end], buf[csrcs_end + 1]]),
            data: buf[csrcs_end + 4..at].to_vec(),
        });
        let mut end = buf.len();
        if padded {
            let pad = buf[end - 1];
            if pad == 0 || usize::from(pad) > end - at {
                return Err(PacketError::BadPadding(pad));
            }
            end -= usize::from(pad);
        }
        Ok(RtpPacket {
            header: RtpHeader {
                marker: buf[1] & 0x80 != 0,
                payload_type: buf[1] & 0x7f,
                sequence: u16::from_be_bytes([buf[2], buf[3]]),
                timestamp: u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]),
                ssrc: u32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]]),
                csrcs,
                extension,
            },
            payload: buf[at..end].to_vec(),
        })
    }
}

/// True for a datagram that looks like RTP audio or RTCP (version 2, at
/// least a fixed header); says nothing about its validity.
pub fn looks_like_rtp(buf: &[u8]) -> bool {
    buf.len() >= FIXED_HEADER_LEN && buf[0] >> 6 == 2
}

fn need(buf: &[u8], need: usize) -> Result<(), PacketError> {
    if buf.len() < need {
        Err(PacketError::Truncated {
            need,
            have: buf.len(),
        })
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex(s: &str) -> Vec<u8> {
        hex::decode(s.replace(' ', "")).expect("test hex")
    }

    #[test]
    fn plain_opus_header() {
        let p = RtpPacket {
            header: RtpHeader::opus(0x0102, 0x0304_0506, 0xdead_beef),
            payload: vec![0xf8, 0xff, 0xfe],
        };
        let bytes = p.to_bytes();
        assert_eq!(bytes, unhex("80780102 03040506 deadbeef f8fffe"));
        assert_eq!(RtpPacket::parse(&bytes), Ok(p));
    }

    #[test]
    fn csrc_and_extension() {
        let p = RtpPacket {
            header: RtpHeader {
                marker: true,
                payload_type: OPUS_PAYLOAD_TYPE,
                sequence: 1,
                timestamp: 960,
                ssrc: 7,
                csrcs: vec![0x11, 0x22],
                extension: Some(Extension {
                    profile: ONE_BYTE_PROFILE,
                    data: vec![0x10, 0xaa, 0, 0, 0x20, 0xbb, 0, 0],
                }),
            },
            payload: vec![1, 2, 3],
        };
        let bytes = p.to_bytes();
        assert_eq!(
            bytes,
            unhex("92f80001 000003c0 00000007 00000011 00000022 bede0002 10aa0000 20bb0000 010203")
        );
        assert_eq!(p.header.len(), 12 + 8 + 4 + 8);
        assert_eq!(RtpPacket::parse(&bytes), Ok(p));
    }

    #[test]
    fn extension_body_is_padded() {
        let h = RtpHeader {
            extension: Some(Extension {
                profile: ONE_BYTE_PROFILE,
                data: vec![0x10, 0xaa],
            }),
            ..RtpHeader::opus(0, 0, 0)
        };
        let mut out = Vec::new();
        h.write(&mut out);
        assert_eq!(out.len(), h.len());
        assert_eq!(&out[12..], &unhex("bede0001 10aa0000")[..]);
    }

    #[test]
    fn padding_is_stripped() {
        let bytes = unhex("a0780000 00000000 00000001 0102 0000 03");
        let p = RtpPacket::parse(&bytes).expect("valid");
        assert_eq!(p.payload, vec![1, 2]);
    }

    #[test]
    fn malformed_never_panics() {
        assert!(matches!(
            RtpPacket::parse(&[0x80; 5]),
            Err(PacketError::Truncated { .. })
        ));
        assert_eq!(RtpPacket::parse(&[0; 12]), Err(PacketError::BadVersion(0)));
        // CC = 15 but no CSRCs.
        assert!(RtpPacket::parse(&unhex("8f780000 00000000 00000000")).is_err());
        // X set, extension longer than the packet.
        assert!(RtpPacket::parse(&unhex("90780000 00000000 00000000 bede00ff")).is_err());
        // Padding longer than the payload, and zero padding.
        assert!(RtpPacket::parse(&unhex("a0780000 00000000 00000000 05")).is_err());
        assert!(RtpPacket::parse(&unhex("a0780000 00000000 00000000 00")).is_err());
        // Every prefix of a valid packet and a few byte flips.
        let good =
            unhex("92f80001 000003c0 00000007 00000011 00000022 bede0002 10aa0000 20bb0000 010203");
        for n in 0..good.len() {
            let _ = RtpPacket::parse(&good[..n]);
            for b in [0x00, 0xff, 0x3f] {
                let mut g = good.clone();
                g[n] = b;
                let _ = RtpPacket::parse(&g);
            }
        }
    }
}
