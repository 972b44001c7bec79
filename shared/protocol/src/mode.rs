//! The transport encryption modes (DESIGN.md "Encryption modes").

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::rtp::{self, Kind, Truncated, FIXED_HEADER_LEN, RTCP_HEADER_LEN};

/// Length of the Poly1305 / GCM tag every mode appends.
pub const TAG_LEN: usize = 16;

/// A transport encryption mode, named on the voice gateway as
/// [`Mode::name`] says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// `aead_aes256_gcm_rtpsize`: AES-256-GCM, 4-byte counter nonce suffix.
    Aes256GcmRtpSize,
    /// `aead_xchacha20_poly1305_rtpsize`: IETF XChaCha20-Poly1305.
    XChaCha20Poly1305RtpSize,
    /// `xsalsa20_poly1305_lite`: secretbox, 4-byte counter nonce suffix.
    XSalsa20Poly1305Lite,
    /// `xsalsa20_poly1305_suffix`: secretbox, 24 random nonce bytes appended.
    XSalsa20Poly1305Suffix,
    /// `xsalsa20_poly1305`: secretbox, nonce is the RTP header.
    XSalsa20Poly1305,
}

/// A name that is none of the five modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("unknown encryption mode")]
pub struct UnknownMode;

impl Mode {
    /// Every mode, in the order Ready lists them when all are offered.
    pub const ALL: [Mode; 5] = [
        Mode::Aes256GcmRtpSize,
        Mode::XChaCha20Poly1305RtpSize,
        Mode::XSalsa20Poly1305Lite,
        Mode::XSalsa20Poly1305Suffix,
        Mode::XSalsa20Poly1305,
    ];

    /// The modes offered unless the operator lists others: the two AEAD
    /// modes Discord still serves. The three `xsalsa20_poly1305` modes were
    /// removed by Discord in 2024 and protect weaker (the suffix mode
    /// authenticates nothing it could order replays by; see README
    /// "Security"), so they are offered only when configured.
    pub const DEFAULT: [Mode; 2] = [Mode::Aes256GcmRtpSize, Mode::XChaCha20Poly1305RtpSize];

    /// Whether the mode is one of the legacy `xsalsa20_poly1305` family.
    pub fn is_legacy(self) -> bool {
        !Mode::DEFAULT.contains(&self)
    }

    /// The mode's name on the voice gateway.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Aes256GcmRtpSize => "aead_aes256_gcm_rtpsize",
            Mode::XChaCha20Poly1305RtpSize => "aead_xchacha20_poly1305_rtpsize",
            Mode::XSalsa20Poly1305Lite => "xsalsa20_poly1305_lite",
            Mode::XSalsa20Poly1305Suffix => "xsalsa20_poly1305_suffix",
            Mode::XSalsa20Poly1305 => "xsalsa20_poly1305",
        }
    }

    /// The mode with this exact gateway name.
    pub fn from_name(name: &str) -> Option<Mode> {
        Mode::ALL.into_iter().find(|m| m.name() == name)
    }

    /// True for the `_rtpsize` modes: CSRCs and the extension preamble
    /// stay in the clear (and in the AAD).
    pub fn is_rtpsize(self) -> bool {
        matches!(
            self,
            Mode::Aes256GcmRtpSize | Mode::XChaCha20Poly1305RtpSize
        )
    }

    /// Bytes the mode adds to a plaintext packet: the tag and the nonce
    /// trailer.
    pub fn overhead(self) -> usize {
        TAG_LEN
            + match self {
                Mode::Aes256GcmRtpSize
                | Mode::XChaCha20Poly1305RtpSize
                | Mode::XSalsa20Poly1305Lite => 4,
                Mode::XSalsa20Poly1305Suffix => 24,
                Mode::XSalsa20Poly1305 => 0,
            }
    }

    /// Bytes at the front of a packet of `kind` that the mode leaves in
    /// clear (the AAD of the AEAD modes, the nonce of `xsalsa20_poly1305`):
    /// for RTCP its 8-byte header in every mode; for RTP the fixed header,
    /// plus the CSRCs and extension preamble in the `_rtpsize` modes.
    #[inline]
    pub fn clear_len(self, kind: Kind, packet: &[u8]) -> Result<usize, Truncated> {
        let len = match kind {
            Kind::Rtcp => RTCP_HEADER_LEN,
            Kind::Rtp if self.is_rtpsize() => return rtp::rtpsize_header_len(packet),
            Kind::Rtp => FIXED_HEADER_LEN,
        };
        if packet.len() < len {
            return Err(Truncated {
                need: len,
                have: packet.len(),
            });
        }
        Ok(len)
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Mode {
    type Err = UnknownMode;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Mode::from_name(s).ok_or(UnknownMode)
    }
}

impl Serialize for Mode {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for Mode {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Mode, D::Error> {
        let name = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Mode::from_name(&name).ok_or_else(|| serde::de::Error::custom(UnknownMode))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for m in Mode::ALL {
            assert_eq!(Mode::from_name(m.name()), Some(m));
            assert_eq!(m.name().parse::<Mode>(), Ok(m));
            let json = serde_json::to_string(&m).unwrap();
            assert_eq!(json, format!("\"{m}\""));
            assert_eq!(serde_json::from_str::<Mode>(&json).unwrap(), m);
        }
        assert_eq!(Mode::ALL[0].name(), "aead_aes256_gcm_rtpsize");
        assert_eq!(Mode::from_name("aead_aes256_gcm"), None);
        assert_eq!("plain".parse::<Mode>(), Err(UnknownMode));
        assert!(serde_json::from_str::<Mode>(r#""plain""#).is_err());
        assert!(serde_json::from_str::<Mode>("1").is_err());
        assert!(Mode::DEFAULT
            .iter()
            .all(|m| !m.is_legacy() && m.is_rtpsize()));
        assert_eq!(Mode::XSalsa20Poly1305Suffix.overhead(), 40);
    }

    #[test]
    fn clear_part_per_mode_and_kind() {
        // One CSRC and an extension: 12 + 4 + 4 in clear in the rtpsize
        // modes, the fixed 12 in the legacy ones, 8 for RTCP in all.
        let rtp = hex::decode("91780001000003c0000000010000000bbede0001aabbccdd").unwrap();
        for m in Mode::ALL {
            let expect = if m.is_rtpsize() { 20 } else { 12 };
            assert_eq!(m.clear_len(Kind::Rtp, &rtp), Ok(expect), "{m}");
            assert_eq!(m.clear_len(Kind::Rtcp, &rtp), Ok(8), "{m}");
            assert_eq!(
                m.clear_len(Kind::Rtcp, &rtp[..7]),
                Err(Truncated { need: 8, have: 7 })
            );
            assert!(m.clear_len(Kind::Rtp, &rtp[..11]).is_err(), "{m}");
        }
    }
}
