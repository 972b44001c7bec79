//! What a run offers: the server to join, the topology and the load.

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use super::{BlasterError, Result};
use crate::crypto::Mode;
use crate::rtp::FIXED_HEADER_LEN;

/// Where the voice server is and how to join it.
#[derive(Debug, Clone)]
pub struct ServerTarget {
    /// LVSP websocket URL (`wss://127.0.0.1:port`).
    pub lvsp_url: String,
    /// LVSP shared secret.
    pub secret: String,
    /// Voice gateway URL without the `?v=` query (`wss://127.0.0.1:port`).
    pub gateway_url: String,
    /// A PEM certificate to trust (the server's self-signed one); `None`
    /// when already trusted or for `ws://`.
    pub cert: Option<PathBuf>,
    /// Encryption mode to select. Default `aead_aes256_gcm_rtpsize`.
    pub mode: Mode,
    /// Voice gateway version. Default 8.
    pub gateway_version: u8,
}

impl ServerTarget {
    /// A target with the default mode and gateway version.
    pub fn new(lvsp_url: &str, secret: &str, gateway_url: &str) -> Self {
        ServerTarget {
            lvsp_url: lvsp_url.to_owned(),
            secret: secret.to_owned(),
            gateway_url: gateway_url.to_owned(),
            cert: None,
            mode: Mode::Aes256GcmRtpSize,
            gateway_version: 8,
        }
    }
}

/// How talkers pace their packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Pacing {
    /// Open loop at [`Config::pps`]: packet k leaves at start + k / pps,
    /// late packets go out at once (no skipping).
    Paced,
    /// Each talker sends back to back until the duration is over (or
    /// [`Config::max_packets_per_talker`]), to compare saturation rates.
    Max,
}

/// A load test. Every field is validated by [`Config::validate`].
#[derive(Debug, Clone)]
pub struct Config {
    /// The voice server, or `None` for a baseline-only run.
    pub server: Option<ServerTarget>,
    /// Also run the plain relay baseline. Default true.
    pub baseline: bool,
    /// Channels (1..=1000). Default 20.
    pub channels: usize,
    /// Members per channel (2..=100). Default 5.
    pub members: usize,
    /// Talkers per channel, the first members (1..=members). Default 1.
    pub talkers: usize,
    /// Packets per second per talker in [`Pacing::Paced`] (1..=100 000).
    /// Default 50 (Opus, 20 ms frames).
    pub pps: u32,
    /// Sending window (1 ms..=600 s). Default 10 s.
    pub duration: Duration,
    /// Bytes per datagram on the wire, headers, tag and nonce included
    /// (64..=1200). Default 160.
    pub packet_size: usize,
    /// Paced (default) or as fast as possible.
    pub pacing: Pacing,
    /// How long receivers keep reading after the sending window
    /// (0..=60 s). Default 500 ms.
    pub drain: Duration,
    /// Hard cap on one talker's packets in [`Pacing::Max`]. Default
    /// 10 000 000.
    pub max_packets_per_talker: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            server: None,
            baseline: true,
            channels: 20,
            members: 5,
            talkers: 1,
            pps: 50,
            duration: Duration::from_secs(10),
            packet_size: 160,
            pacing: Pacing::Paced,
            drain: Duration::from_millis(500),
            max_packets_per_talker: 10_000_000,
        }
    }
}

impl Config {
    /// Checks every field's range; the error names the field.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(BlasterError::Config(m));
        if self.server.is_none() && !self.baseline {
            return bad("nothing to run: no server and no baseline".into());
        }
        if !(1..=1000).contains(&self.channels) {
            return bad(format!("channels {} not in 1..=1000", self.channels));
        }
        if !(2..=100).contains(&self.members) {
            return bad(format!("members {} not in 2..=100", self.members));
        }
        if !(1..=self.members).contains(&self.talkers) {
            return bad(format!(
                "talkers {} not in 1..={}",
                self.talkers, self.members
            ));
        }
        if self.channels * self.members > 10_000 {
            return bad("more than 10 000 members in all".into());
        }
        if !(1..=100_000).contains(&self.pps) {
            return bad(format!("pps {} not in 1..=100000", self.pps));
        }
        if self.duration < Duration::from_millis(1) || self.duration > Duration::from_secs(600) {
            return bad(format!("duration {:?} not in 1 ms..=600 s", self.duration));
        }
        if !(64..=1200).contains(&self.packet_size) {
            return bad(format!("packet size {} not in 64..=1200", self.packet_size));
        }
        if self.drain > Duration::from_secs(60) {
            return bad(format!("drain {:?} above 60 s", self.drain));
        }
        if self.max_packets_per_talker == 0 {
            return bad("max packets per talker is 0".into());
        }
        Ok(())
    }

    /// Packets one talker sends in [`Pacing::Paced`]: duration × pps,
    /// rounded, at least 1.
    pub fn paced_packets(&self) -> u64 {
        ((self.duration.as_secs_f64() * f64::from(self.pps)).round() as u64).max(1)
    }

    /// The mode the server target asks for (also sizes the baseline's
    /// packets), AES-GCM without a server.
    pub(super) fn mode(&self) -> Mode {
        self.server
            .as_ref()
            .map_or(Mode::Aes256GcmRtpSize, |s| s.mode)
    }

    /// Payload bytes (after the 12-byte header) so the datagram is
    /// `packet_size` long in `mode`.
    pub(super) fn payload_len(&self) -> usize {
        self.packet_size - FIXED_HEADER_LEN - self.mode().overhead()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_validation() {
        assert!(Config::default().validate().is_ok());
        let bad = [
            Config {
                members: 1,
                ..Config::default()
            },
            Config {
                talkers: 6,
                ..Config::default()
            },
            Config {
                duration: Duration::from_secs(601),
                ..Config::default()
            },
            Config {
                baseline: false,
                ..Config::default()
            },
            Config {
                packet_size: 40,
                ..Config::default()
            },
        ];
        for c in bad {
            assert!(
                matches!(c.validate(), Err(BlasterError::Config(_))),
                "{c:?}"
            );
        }
        let c = Config {
            duration: Duration::from_millis(1500),
            pps: 50,
            ..Config::default()
        };
        assert_eq!(c.paced_packets(), 75);
    }
}
