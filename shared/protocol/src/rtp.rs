//! The RTP and RTCP header facts both ends need (RFC 3550, RFC 5761): which
//! of the two a datagram is and how long its header is. Read straight from
//! the bytes, without allocating, so the data plane's hot path and the
//! client library share one definition.

use std::ops::RangeInclusive;

/// Length of the fixed RTP header (version, flags, sequence, timestamp,
/// SSRC).
pub const FIXED_HEADER_LEN: usize = 12;
/// Length of the RTCP header every encryption mode leaves in clear:
/// version, count, packet type, length and the sender's SSRC.
pub const RTCP_HEADER_LEN: usize = 8;
/// Second bytes of RTCP packets (RFC 5761 section 4: packet types 192-223,
/// which RTP payload types 64-95 with the marker bit would collide with, so
/// RTP never uses them). Covers SR/RR/SDES/BYE/APP (200-204), the
/// feedback messages NACK (205) and PLI/FIR (206), and the rest.
pub const RTCP_TYPES: RangeInclusive<u8> = 192..=223;
/// The "one-byte header" extension profile (RFC 8285) Discord clients use.
pub const ONE_BYTE_PROFILE: u16 = 0xBEDE;

/// RTP or RTCP: which clear header and replay window a packet uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// An RTP media packet (SSRC at bytes 8..12).
    Rtp,
    /// An RTCP packet ([`RTCP_TYPES`], sender SSRC at bytes 4..8).
    Rtcp,
}

impl Kind {
    /// What `packet` is by its second byte, as RFC 5761 demultiplexes one
    /// port. Too short to tell is RTP, which then fails its length check.
    #[inline]
    pub fn of(packet: &[u8]) -> Kind {
        match packet.get(1) {
            Some(b) if RTCP_TYPES.contains(b) => Kind::Rtcp,
            _ => Kind::Rtp,
        }
    }
}

/// A packet shorter than its header says it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("packet truncated: need {need} bytes, have {have}")]
pub struct Truncated {
    /// Bytes the header requires so far.
    pub need: usize,
    /// Bytes present.
    pub have: usize,
}

/// The RTP header up to and including the 4-byte extension preamble (not
/// its body): 12 + 4·CC, +4 with the X bit. This is what the `_rtpsize`
/// modes leave in clear.
#[inline]
pub fn rtpsize_header_len(packet: &[u8]) -> Result<usize, Truncated> {
    let b0 = fits(packet, FIXED_HEADER_LEN)?[0];
    let mut len = FIXED_HEADER_LEN + 4 * usize::from(b0 & 0x0f);
    if b0 & 0x10 != 0 {
        len += 4;
    }
    fits(packet, len)?;
    Ok(len)
}

/// The whole RTP header: fixed part, CSRCs, and the extension preamble and
/// body. The payload starts here.
#[inline]
pub fn header_len(packet: &[u8]) -> Result<usize, Truncated> {
    let len = rtpsize_header_len(packet)?;
    if packet[0] & 0x10 == 0 {
        return Ok(len);
    }
    let words = u16::from_be_bytes([packet[len - 2], packet[len - 1]]);
    let len = len + 4 * usize::from(words);
    fits(packet, len)?;
    Ok(len)
}

#[inline]
fn fits(packet: &[u8], need: usize) -> Result<&[u8], Truncated> {
    if packet.len() < need {
        Err(Truncated {
            need,
            have: packet.len(),
        })
    } else {
        Ok(packet)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_lengths() {
        let plain = hex::decode("8078010203040506deadbeeff8fffe").unwrap();
        assert_eq!(rtpsize_header_len(&plain), Ok(12));
        assert_eq!(header_len(&plain), Ok(12));
        // Two CSRCs, X with a two-word body: the rtpsize clear part stops
        // after the preamble, the header after the body.
        let full =
            hex::decode("92f80001000003c0000000070000001100000022bede000210aa000020bb0000010203")
                .unwrap();
        assert_eq!(rtpsize_header_len(&full), Ok(24));
        assert_eq!(header_len(&full), Ok(32));
    }

    #[test]
    fn truncations_say_what_is_missing() {
        assert_eq!(
            rtpsize_header_len(&[0x80; 5]),
            Err(Truncated { need: 12, have: 5 })
        );
        let no_csrcs = hex::decode("8f7800000000000000000000").unwrap();
        assert_eq!(header_len(&no_csrcs), Err(Truncated { need: 72, have: 12 }));
        let long_ext = hex::decode("907800000000000000000000bede00ff").unwrap();
        assert_eq!(rtpsize_header_len(&long_ext), Ok(16));
        assert_eq!(
            header_len(&long_ext),
            Err(Truncated {
                need: 16 + 4 * 255,
                have: 16
            })
        );
        let full =
            hex::decode("92f80001000003c0000000070000001100000022bede000210aa000020bb0000010203")
                .unwrap();
        for n in 0..32 {
            assert!(header_len(&full[..n]).is_err(), "{n}");
        }
    }

    #[test]
    fn rtcp_is_every_type_from_192_to_223() {
        for b1 in 0..=255u8 {
            let kind = Kind::of(&[0x81, b1]);
            assert_eq!(kind == Kind::Rtcp, (192..=223).contains(&b1), "{b1}");
        }
        // Opus with the marker bit (0xF8) is RTP; so is too short to tell.
        assert_eq!(Kind::of(&[0x80, 0xf8]), Kind::Rtp);
        assert_eq!(Kind::of(&[0x80]), Kind::Rtp);
    }
}
