//! The UDP load generator ("blaster"): offers the same voice topology and
//! load to the voice server and to an in-process plain relay, in one run,
//! and reports delivery, rates and hdrhistogram latency percentiles for
//! both (DESIGN.md "Performance targets").
//!
//! # What one run does
//!
//! For each target (the server when [`Config::server`] is set, then the
//! baseline when [`Config::baseline`] is set):
//!
//! 1. Builds `channels` channels of `members` members. Against the server:
//!    CHANNEL_REQ and VOICE_STATE_CREATE over LVSP, then
//!    [`VoiceClient::join`] for every member. Against the baseline: one
//!    loopback socket per member, connected to the relay.
//! 2. The first `talkers` members of each channel send Opus-sized RTP
//!    ([`Config::packet_size`] bytes on the wire) for
//!    [`Config::duration`], paced open loop at [`Config::pps`] (or as fast
//!    as they can with [`Pacing::Max`]). The payload starts with the send
//!    time (ns since the run's epoch), the talker's packet number and its
//!    SSRC, then a fill pattern derived from those ([`write_payload`]).
//! 3. Every member receives on its own task until the sending window plus
//!    [`Config::drain`] is over: decrypts (server) or parses (baseline),
//!    checks the header and every payload byte ([`check_payload`]),
//!    records receive time − send time in an hdrhistogram and counts
//!    packets and bytes.
//!
//! The baseline ([`relay_loop`]) is one std UDP socket on a dedicated
//! thread: `recvmmsg` (batch [`RELAY_BATCH`], read timeout so it stops by
//! itself) → SSRC at bytes 8..12 → `sendmmsg` of the same bytes to the
//! other members of the channel; no crypto. Baseline packets carry the same
//! header and payload as the server's, followed by zero bytes where the
//! tag and nonce would be, so both targets move datagrams of the same size.
//!
//! # Layout
//!
//! - `config`: [`Config`], [`ServerTarget`], [`Pacing`] and their ranges.
//! - `server`: the server target: LVSP, joining every member, the phase.
//! - `relay`: the baseline target: [`relay_table`], [`relay_loop`].
//! - `traffic`: one phase: the paced senders and the receivers.
//! - `packet`: the stamped payload ([`write_payload`], [`check_payload`])
//!   and its sealing with the client library's
//!   [`Cipher`](crate::crypto::Cipher), in place.
//! - `report`: per-phase counters and latency, [`Report`].
//!
//! ```no_run
//! # async fn demo() -> Result<(), scripts::blaster::BlasterError> {
//! use scripts::blaster::{run, Config};
//! let report = run(&Config::default()).await?; // baseline only
//! println!("{}", report.table());
//! println!("{}", report.json());
//! # Ok(()) }
//! ```

pub mod capacity;
mod config;
mod engine;
pub mod host;
mod mmsg;
mod packet;
pub mod plot;
mod relay;
mod report;
mod server;
mod traffic;

use std::time::Instant;

pub use config::{Config, Pacing, ServerTarget};
pub use packet::{
    check_payload, fill_byte, write_header, write_payload, Stamp, MAX_DATAGRAM, STAMP_LEN,
};
pub use relay::{relay_loop, relay_table, RELAY_BATCH, RELAY_SEND_BATCH};
pub use report::{ConfigSummary, Latency, Ratio, RelayStats, Report, TargetReport};

use crate::crypto::CryptoError;
use crate::error::ClientError;

/// Why a run could not be carried out.
#[derive(Debug, thiserror::Error)]
pub enum BlasterError {
    /// A configuration value is out of range.
    #[error("invalid config: {0}")]
    Config(String),
    /// Talking to the server (LVSP, gateway, IP discovery) failed.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// A local socket or thread could not be set up.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// A session key could not be installed.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    /// A sender, receiver or the relay thread panicked.
    #[error("worker failed: {0}")]
    Worker(String),
}

/// Shorthand for this module's results.
pub type Result<T, E = BlasterError> = std::result::Result<T, E>;

/// Runs the configured targets one after the other (server first) and
/// reports. Needs a tokio runtime with time and I/O; the baseline relay
/// takes its own thread.
pub async fn run(config: &Config) -> Result<Report> {
    config.validate()?;
    let epoch = Instant::now();
    let server = match &config.server {
        Some(target) => Some(server::run_server(config, target, epoch).await?),
        None => None,
    };
    let baseline = if config.baseline {
        Some(relay::run_baseline(config, epoch).await?)
    } else {
        None
    };
    let ratio = match (&server, &baseline) {
        (Some(s), Some(b)) => Some(Ratio {
            delivered_pps: ratio(s.delivered_pps, b.delivered_pps),
            p99_latency: ratio(s.latency_us.p99, b.latency_us.p99),
        }),
        _ => None,
    };
    Ok(Report {
        config: ConfigSummary {
            channels: config.channels,
            members: config.members,
            talkers: config.talkers,
            pps: config.pps,
            duration_s: config.duration.as_secs_f64(),
            packet_size: config.packet_size,
            pacing: config.pacing,
        },
        server,
        baseline,
        ratio,
    })
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// A small baseline-only run over real loopback sockets: every packet
    /// reaches every other member through the recvmmsg/sendmmsg relay.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn baseline_run_delivers_everything() {
        let config = Config {
            channels: 2,
            members: 3,
            talkers: 2,
            pps: 100,
            duration: Duration::from_millis(300),
            drain: Duration::from_millis(300),
            ..Config::default()
        };
        let report = run(&config).await.expect("run");
        assert!(report.server.is_none() && report.ratio.is_none());
        let b = report.baseline.clone().expect("baseline");
        assert_eq!(b.sent, 2 * 2 * 30);
        assert_eq!(b.expected, b.sent * 2);
        assert_eq!((b.delivered, b.lost, b.invalid), (b.expected, 0, 0));
        assert_eq!(b.delivered_bytes, b.delivered * 160);
        let relay = b.relay.expect("relay stats");
        assert_eq!((relay.received, relay.sent), (b.sent, b.expected));
        let l = b.latency_us;
        assert!(l.p50 > 0.0 && l.p50 <= l.p99 && l.p99 <= l.max, "{l:?}");
        let v: serde_json::Value = serde_json::from_str(&report.json()).expect("json");
        assert_eq!(v["baseline"]["delivered"], b.delivered);
        assert!(report.table().contains("baseline"));
    }
}
