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
//! ```no_run
//! # async fn demo() -> Result<(), scripts::blaster::BlasterError> {
//! use scripts::blaster::{run, Config};
//! let report = run(&Config::default()).await?; // baseline only
//! println!("{}", report.table());
//! println!("{}", report.json());
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::io::{IoSlice, IoSliceMut};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket as StdUdpSocket};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce, Tag};
use futures_util::{StreamExt, TryStreamExt};
use hdrhistogram::Histogram;
use nix::errno::Errno;
use nix::sys::socket::{recvmmsg, sendmmsg, ControlMessage, MsgFlags, MultiHeaders, SockaddrIn};
use serde::Serialize;
use tokio::net::UdpSocket;

use crate::crypto::{Cipher, CryptoError, Mode, TAG_LEN};
use crate::error::ClientError;
use crate::lvsp::LvspClient;
use crate::rtp::{
    rtpsize_header_len, RtpPacket, FIXED_HEADER_LEN, OPUS_PAYLOAD_TYPE, SAMPLES_PER_FRAME,
};
use crate::voice::VoiceClient;
use crate::ws::HeartbeatTask;

/// Datagrams one `recvmmsg` of the baseline relay reads at most.
pub const RELAY_BATCH: usize = 32;
/// Datagrams one `sendmmsg` of the baseline relay sends at most.
pub const RELAY_SEND_BATCH: usize = 64;
/// Bytes at the start of every payload: send time (u64), packet number
/// (u64) and SSRC (u32), big-endian.
pub const STAMP_LEN: usize = 20;
/// Largest datagram handled.
pub const MAX_DATAGRAM: usize = 2048;
/// How long the relay blocks in `recvmmsg` before it looks at its stop
/// flag and deadline.
const RELAY_READ_TIMEOUT: Duration = Duration::from_millis(20);
/// Voice clients joining at the same time.
const JOIN_CONCURRENCY: usize = 8;
/// Receive errors a member tolerates before it gives up.
const MAX_RECV_ERRORS: u64 = 1000;

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
    fn mode(&self) -> Mode {
        self.server
            .as_ref()
            .map_or(Mode::Aes256GcmRtpSize, |s| s.mode)
    }

    /// Payload bytes (after the 12-byte header) so the datagram is
    /// `packet_size` long in `mode`.
    fn payload_len(&self) -> usize {
        self.packet_size - FIXED_HEADER_LEN - self.mode().overhead()
    }
}

// ---------------------------------------------------------------------------
// Report

/// Latency percentiles, microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Latency {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest.
    pub max: f64,
    /// Mean.
    pub mean: f64,
}

impl Latency {
    fn from_histogram(h: &Histogram<u64>) -> Self {
        let us = |ns: u64| ns as f64 / 1000.0;
        Latency {
            p50: us(h.value_at_quantile(0.50)),
            p90: us(h.value_at_quantile(0.90)),
            p99: us(h.value_at_quantile(0.99)),
            p999: us(h.value_at_quantile(0.999)),
            max: us(h.max()),
            mean: h.mean() / 1000.0,
        }
    }
}

/// What the baseline relay thread counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RelayStats {
    /// Datagrams read.
    pub received: u64,
    /// Datagrams handed to `sendmmsg` successfully.
    pub sent: u64,
    /// Datagrams from an unknown SSRC or too short.
    pub dropped: u64,
    /// Failed `recvmmsg` / `sendmmsg` calls (timeouts not counted).
    pub errors: u64,
    /// `recvmmsg` calls that returned datagrams.
    pub batches: u64,
}

/// One target's results.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TargetReport {
    /// `server` or `baseline`.
    pub target: String,
    /// The mode in use (`plain` for the baseline).
    pub mode: String,
    /// Packets the talkers sent.
    pub sent: u64,
    /// Sends that failed (not counted in `sent`).
    pub send_errors: u64,
    /// Deliveries expected: sent × (members − 1).
    pub expected: u64,
    /// Valid packets received, duplicates included.
    pub delivered: u64,
    /// expected − delivered, when positive.
    pub lost: u64,
    /// lost / expected, percent.
    pub loss_pct: f64,
    /// delivered − expected, when positive (duplicates).
    pub extra: u64,
    /// Datagrams that failed to decrypt, parse or match their payload.
    pub invalid: u64,
    /// Bytes of the valid datagrams received.
    pub delivered_bytes: u64,
    /// sent / sending window.
    pub offered_pps: f64,
    /// delivered / (last − first receive), the egress rate seen by the
    /// receivers.
    pub delivered_pps: f64,
    /// delivered_bytes over the same window.
    pub bytes_per_sec: f64,
    /// The receive window, seconds.
    pub receive_window_s: f64,
    /// Receive time − send time.
    pub latency_us: Latency,
    /// The baseline relay's counters.
    pub relay: Option<RelayStats>,
}

/// server / baseline.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Ratio {
    /// Of delivered packets per second.
    pub delivered_pps: f64,
    /// Of p99 latency.
    pub p99_latency: f64,
}

/// The configuration as reported.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConfigSummary {
    /// Channels.
    pub channels: usize,
    /// Members per channel.
    pub members: usize,
    /// Talkers per channel.
    pub talkers: usize,
    /// Packets per second per talker (paced).
    pub pps: u32,
    /// Sending window, seconds.
    pub duration_s: f64,
    /// Datagram size.
    pub packet_size: usize,
    /// Paced or max.
    pub pacing: Pacing,
}

/// A whole run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// What was offered.
    pub config: ConfigSummary,
    /// The voice server, when it ran.
    pub server: Option<TargetReport>,
    /// The plain relay, when it ran.
    pub baseline: Option<TargetReport>,
    /// server / baseline, when both ran.
    pub ratio: Option<Ratio>,
}

impl Report {
    /// One JSON line.
    pub fn json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// A human-readable table.
    pub fn table(&self) -> String {
        let c = &self.config;
        let mut out = format!(
            "{} channels x {} members, {} talker(s), {:?} {} pps, {:.1} s, {} B packets\n",
            c.channels, c.members, c.talkers, c.pacing, c.pps, c.duration_s, c.packet_size
        );
        out.push_str(&format!(
            "{:<9} {:>10} {:>10} {:>10} {:>8} {:>7} {:>10} {:>11} {:>8} {:>8} {:>8} {:>8} {:>8}\n",
            "target",
            "sent",
            "expected",
            "delivered",
            "lost",
            "loss%",
            "pps",
            "bytes/s",
            "p50us",
            "p90us",
            "p99us",
            "p999us",
            "maxus"
        ));
        for t in [&self.server, &self.baseline].into_iter().flatten() {
            let l = &t.latency_us;
            out.push_str(&format!(
                "{:<9} {:>10} {:>10} {:>10} {:>8} {:>7.3} {:>10.0} {:>11.0} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>8.1}\n",
                t.target,
                t.sent,
                t.expected,
                t.delivered,
                t.lost,
                t.loss_pct,
                t.delivered_pps,
                t.bytes_per_sec,
                l.p50,
                l.p90,
                l.p99,
                l.p999,
                l.max
            ));
            if t.invalid > 0 || t.extra > 0 || t.send_errors > 0 {
                out.push_str(&format!(
                    "          invalid {}, extra {}, send errors {}\n",
                    t.invalid, t.extra, t.send_errors
                ));
            }
        }
        if let Some(r) = &self.ratio {
            out.push_str(&format!(
                "server/baseline: delivered pps {:.3}, p99 latency {:.2}\n",
                r.delivered_pps, r.p99_latency
            ));
        }
        out
    }
}

// ---------------------------------------------------------------------------
// Run

/// Runs the configured targets one after the other (server first) and
/// reports. Needs a tokio runtime with time and I/O; the baseline relay
/// takes its own thread.
pub async fn run(config: &Config) -> Result<Report> {
    config.validate()?;
    let epoch = Instant::now();
    let server = match &config.server {
        Some(target) => Some(run_server(config, target, epoch).await?),
        None => None,
    };
    let baseline = if config.baseline {
        Some(run_baseline(config, epoch).await?)
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

/// One member's socket and keys, as the phase runner sees it.
struct Endpoint {
    socket: Sock,
    ssrc: u32,
    /// Seals what this member sends.
    sealer: Sealer,
    /// Opens what this member receives.
    opener: Sealer,
}

/// A member's socket, shared by its sender and receiver tasks.
#[derive(Clone)]
enum Sock {
    /// A joined client's socket (connected to the server).
    Voice(Arc<crate::udp::VoiceUdp>),
    /// A baseline socket (connected to the relay).
    Plain(Arc<UdpSocket>),
}

impl Sock {
    fn get(&self) -> &UdpSocket {
        match self {
            Sock::Voice(v) => v.socket(),
            Sock::Plain(s) => s,
        }
    }
}

/// What a member keeps alive on the server while the run lasts.
struct Session {
    _gateway: crate::gateway::GatewayClient,
    _heartbeat: Option<HeartbeatTask>,
}

async fn run_server(
    config: &Config,
    target: &ServerTarget,
    epoch: Instant,
) -> Result<TargetReport> {
    if let Some(cert) = &target.cert {
        crate::ws::trust_certificate_file(cert)?;
    }
    let (mut lvsp, _ready) = LvspClient::connect(&target.lvsp_url, &target.secret).await?;
    let _lvsp_heartbeat = lvsp.spawn_heartbeat(lvsp.heartbeat_interval());
    // Ids unique to this run, so a server can be reused.
    let base = 100_000_000_000_000_000u64 + u64::from(rand::random::<u32>()) * 100_000;
    let guild = base.to_string();
    let mut jobs = Vec::with_capacity(config.channels * config.members);
    let mut channel_ids = Vec::with_capacity(config.channels);
    for c in 0..config.channels {
        let channel = (base + 1 + c as u64).to_string();
        let assign = lvsp.channel_req(&channel, Some(&guild)).await?;
        for m in 0..config.members {
            let user = (base + 10_000 + (c * config.members + m) as u64).to_string();
            let done = lvsp
                .voice_state_create(&user, &channel, Some(&guild))
                .await?;
            jobs.push((user, done.session_id, assign.token.clone()));
        }
        channel_ids.push(channel);
    }
    let clients: Vec<VoiceClient> = futures_util::stream::iter(jobs)
        .map(|(user, session, token)| {
            let guild = guild.clone();
            async move {
                VoiceClient::join(
                    &target.gateway_url,
                    target.gateway_version,
                    &guild,
                    &user,
                    &session,
                    &token,
                    target.mode,
                )
                .await
            }
        })
        .buffered(JOIN_CONCURRENCY)
        .try_collect()
        .await?;
    // Let the last Select Protocol reach its core (design target: 5 ms).
    tokio::time::sleep(Duration::from_millis(100)).await;

    let mut sessions = Vec::with_capacity(clients.len());
    let mut channels: Vec<Vec<Endpoint>> = Vec::with_capacity(config.channels);
    let mut mode = target.mode;
    for (i, client) in clients.into_iter().enumerate() {
        let ssrc = client.ssrc();
        let (gateway, udp, heartbeat) = client.into_parts();
        let cipher = udp
            .cipher()
            .ok_or_else(|| ClientError::Protocol("joined without a session key".into()))?;
        mode = cipher.mode();
        let key = *cipher.key();
        let (sealer, opener) = (Sealer::new(mode, &key)?, Sealer::new(mode, &key)?);
        let socket = Sock::Voice(Arc::new(udp));
        if i % config.members == 0 {
            channels.push(Vec::with_capacity(config.members));
        }
        if let Some(ch) = channels.last_mut() {
            ch.push(Endpoint {
                socket,
                ssrc,
                sealer,
                opener,
            });
        }
        sessions.push(Session {
            _gateway: gateway,
            _heartbeat: heartbeat,
        });
    }
    let payload_len = config.packet_size - FIXED_HEADER_LEN - mode.overhead();
    let phase = blast(config, channels, payload_len, epoch).await?;
    for channel in &channel_ids {
        // Best effort: the server also cleans up when the sessions close.
        let _ = lvsp.channel_destroy(channel, Some(&guild)).await;
    }
    drop(sessions);
    Ok(phase.report("server", mode.name(), config, None))
}

async fn run_baseline(config: &Config, epoch: Instant) -> Result<TargetReport> {
    let relay_socket = StdUdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
    let relay_addr = relay_socket.local_addr()?;
    let trailer = config.mode().overhead();
    let mut channels: Vec<Vec<Endpoint>> = Vec::with_capacity(config.channels);
    let mut addrs: Vec<Vec<(u32, SocketAddrV4)>> = Vec::with_capacity(config.channels);
    for c in 0..config.channels {
        let mut members = Vec::with_capacity(config.members);
        let mut channel_addrs = Vec::with_capacity(config.members);
        for m in 0..config.members {
            let ssrc = 1 + (c * config.members + m) as u32;
            let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await?;
            socket.connect(relay_addr).await?;
            match socket.local_addr()? {
                SocketAddr::V4(a) => channel_addrs.push((ssrc, a)),
                SocketAddr::V6(a) => {
                    return Err(BlasterError::Config(format!("bound {a}, not IPv4")))
                }
            }
            members.push(Endpoint {
                socket: Sock::Plain(Arc::new(socket)),
                ssrc,
                sealer: Sealer::Plain { trailer },
                opener: Sealer::Plain { trailer },
            });
        }
        channels.push(members);
        addrs.push(channel_addrs);
    }
    let table = relay_table(&addrs);
    let stop = Arc::new(AtomicBool::new(false));
    // The relay stops by itself at the latest 5 s after the receivers.
    let deadline = Instant::now() + config.duration + config.drain + Duration::from_secs(5);
    let relay = {
        let stop = Arc::clone(&stop);
        std::thread::Builder::new()
            .name("blaster-relay".into())
            .spawn(move || relay_loop(&relay_socket, &table, &stop, deadline))?
    };
    let payload_len = config.payload_len();
    let phase = blast(config, channels, payload_len, epoch).await;
    stop.store(true, Ordering::Relaxed);
    let stats = relay
        .join()
        .map_err(|_| BlasterError::Worker("relay thread panicked".into()))??;
    Ok(phase?.report("baseline", "plain", config, Some(stats)))
}

/// The relay's forwarding table: for each member's SSRC, the other members
/// of its channel. `channels` lists (SSRC, address) per channel.
pub fn relay_table(channels: &[Vec<(u32, SocketAddrV4)>]) -> HashMap<u32, Vec<SockaddrIn>> {
    let mut table = HashMap::new();
    for channel in channels {
        for (ssrc, _) in channel {
            let others = channel
                .iter()
                .filter(|(other, _)| other != ssrc)
                .map(|(_, addr)| SockaddrIn::from(*addr))
                .collect();
            table.insert(*ssrc, others);
        }
    }
    table
}

/// The plain baseline relay: until `stop` is set or `deadline` passes,
/// reads up to [`RELAY_BATCH`] datagrams with one `recvmmsg`, looks up the
/// SSRC at bytes 8..12 in `table` and sends the same bytes to each
/// address there with `sendmmsg` (batches of [`RELAY_SEND_BATCH`]). No
/// crypto, no allocation per packet. Sets a short read timeout on
/// `socket` so it notices `stop`.
pub fn relay_loop(
    socket: &StdUdpSocket,
    table: &HashMap<u32, Vec<SockaddrIn>>,
    stop: &AtomicBool,
    deadline: Instant,
) -> std::io::Result<RelayStats> {
    socket.set_read_timeout(Some(RELAY_READ_TIMEOUT))?;
    socket.set_write_timeout(Some(Duration::from_millis(100)))?;
    let fd = socket.as_raw_fd();
    let mut bufs = Box::new([[0u8; MAX_DATAGRAM]; RELAY_BATCH]);
    let mut lens = [0usize; RELAY_BATCH];
    let mut rx = MultiHeaders::<SockaddrIn>::preallocate(RELAY_BATCH, None);
    let mut tx = MultiHeaders::<SockaddrIn>::preallocate(RELAY_SEND_BATCH, None);
    let mut out: Vec<(usize, SockaddrIn)> = Vec::with_capacity(RELAY_SEND_BATCH);
    let mut stats = RelayStats::default();
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        let n = {
            let iovs = bufs.each_mut().map(|b| [IoSliceMut::new(&mut b[..])]);
            match recvmmsg(fd, &mut rx, iovs.iter(), MsgFlags::MSG_WAITFORONE, None) {
                Ok(msgs) => {
                    let mut n = 0;
                    for (msg, len) in msgs.zip(lens.iter_mut()) {
                        *len = msg.bytes;
                        n += 1;
                    }
                    n
                }
                Err(Errno::EAGAIN | Errno::EINTR) => 0,
                Err(_) => {
                    stats.errors += 1;
                    0
                }
            }
        };
        if n == 0 {
            continue;
        }
        stats.batches += 1;
        stats.received += n as u64;
        for (i, &len) in lens.iter().enumerate().take(n) {
            let dests = (len >= FIXED_HEADER_LEN)
                .then(|| {
                    let b = &bufs[i];
                    u32::from_be_bytes([b[8], b[9], b[10], b[11]])
                })
                .and_then(|ssrc| table.get(&ssrc));
            let Some(dests) = dests else {
                stats.dropped += 1;
                continue;
            };
            for d in dests {
                out.push((i, *d));
                if out.len() == RELAY_SEND_BATCH {
                    relay_flush(fd, &mut tx, &bufs, &lens, &mut out, &mut stats);
                }
            }
        }
        relay_flush(fd, &mut tx, &bufs, &lens, &mut out, &mut stats);
    }
    Ok(stats)
}

/// Sends every (buffer index, destination) of `out` with one `sendmmsg`
/// (retried once after an error such as a queued ICMP), then clears it.
fn relay_flush(
    fd: std::os::fd::RawFd,
    tx: &mut MultiHeaders<SockaddrIn>,
    bufs: &[[u8; MAX_DATAGRAM]; RELAY_BATCH],
    lens: &[usize; RELAY_BATCH],
    out: &mut Vec<(usize, SockaddrIn)>,
    stats: &mut RelayStats,
) {
    if out.is_empty() {
        return;
    }
    let m = out.len().min(RELAY_SEND_BATCH);
    let mut iovs = [[IoSlice::new(&[])]; RELAY_SEND_BATCH];
    let mut addrs: [Option<SockaddrIn>; RELAY_SEND_BATCH] = [None; RELAY_SEND_BATCH];
    for (k, (i, dest)) in out.iter().take(m).enumerate() {
        iovs[k] = [IoSlice::new(&bufs[*i][..lens[*i]])];
        addrs[k] = Some(*dest);
    }
    let cmsgs: [ControlMessage<'_>; 0] = [];
    for _attempt in 0..2 {
        // The results are not iterated: nix would read the unset source
        // addresses of a send. On a blocking socket, success means the
        // whole batch went out (a mid-batch error surfaces next call).
        match sendmmsg(fd, tx, &iovs[..m], &addrs[..m], cmsgs, MsgFlags::empty()) {
            Ok(_) => {
                stats.sent += m as u64;
                break;
            }
            Err(_) => stats.errors += 1,
        }
    }
    out.clear();
}

// ---------------------------------------------------------------------------
// One phase: senders and receivers over a set of channels

/// Counters and histogram of one phase (or one task, before merging).
#[derive(Debug, Clone)]
struct PhaseStats {
    sent: u64,
    send_errors: u64,
    expected: u64,
    delivered: u64,
    invalid: u64,
    bytes: u64,
    first_rx_ns: u64,
    last_rx_ns: u64,
    window: Duration,
    latency: Histogram<u64>,
}

impl PhaseStats {
    fn new() -> Self {
        PhaseStats {
            sent: 0,
            send_errors: 0,
            expected: 0,
            delivered: 0,
            invalid: 0,
            bytes: 0,
            first_rx_ns: u64::MAX,
            last_rx_ns: 0,
            window: Duration::ZERO,
            // 1 ns .. 60 s at 3 significant figures.
            latency: Histogram::new_with_bounds(1, 60_000_000_000, 3)
                .unwrap_or_else(|_| unreachable!("constant bounds are valid")),
        }
    }

    fn merge(&mut self, o: &PhaseStats) {
        self.sent += o.sent;
        self.send_errors += o.send_errors;
        self.expected += o.expected;
        self.delivered += o.delivered;
        self.invalid += o.invalid;
        self.bytes += o.bytes;
        self.first_rx_ns = self.first_rx_ns.min(o.first_rx_ns);
        self.last_rx_ns = self.last_rx_ns.max(o.last_rx_ns);
        // Same bounds on both sides, so adding cannot fail.
        let _ = self.latency.add(&o.latency);
    }

    fn report(
        &self,
        target: &str,
        mode: &str,
        config: &Config,
        relay: Option<RelayStats>,
    ) -> TargetReport {
        let rx_window = if self.last_rx_ns > self.first_rx_ns {
            Duration::from_nanos(self.last_rx_ns - self.first_rx_ns)
        } else {
            Duration::ZERO
        };
        // A window under 1 ms (a handful of packets) says nothing: use
        // the sending window instead.
        let rx_window = if rx_window < Duration::from_millis(1) {
            config.duration
        } else {
            rx_window
        };
        let secs = rx_window.as_secs_f64();
        let lost = self.expected.saturating_sub(self.delivered);
        TargetReport {
            target: target.to_owned(),
            mode: mode.to_owned(),
            sent: self.sent,
            send_errors: self.send_errors,
            expected: self.expected,
            delivered: self.delivered,
            lost,
            loss_pct: if self.expected > 0 {
                lost as f64 * 100.0 / self.expected as f64
            } else {
                0.0
            },
            extra: self.delivered.saturating_sub(self.expected),
            invalid: self.invalid,
            delivered_bytes: self.bytes,
            offered_pps: self.sent as f64 / self.window.as_secs_f64().max(1e-9),
            delivered_pps: self.delivered as f64 / secs,
            bytes_per_sec: self.bytes as f64 / secs,
            receive_window_s: secs,
            latency_us: Latency::from_histogram(&self.latency),
            relay,
        }
    }
}

/// Starts one receiver per member and one sender per talker, waits for
/// all of them and merges their counts.
async fn blast(
    config: &Config,
    channels: Vec<Vec<Endpoint>>,
    payload_len: usize,
    epoch: Instant,
) -> Result<PhaseStats> {
    // A short lead so every task is spawned before the first send.
    let start = Instant::now() + Duration::from_millis(20);
    let send_end = start + config.duration;
    let recv_end = send_end + config.drain;
    let mut receivers = Vec::new();
    let mut senders = Vec::new();
    for channel in channels {
        let talkers: Vec<u32> = channel
            .iter()
            .take(config.talkers)
            .map(|e| e.ssrc)
            .collect();
        for (m, member) in channel.into_iter().enumerate() {
            let allowed: Vec<u32> = talkers
                .iter()
                .copied()
                .filter(|s| *s != member.ssrc)
                .collect();
            let rx = Receiver {
                socket: member.socket.clone(),
                opener: member.opener,
                allowed,
                payload_len,
                epoch,
                end: recv_end,
            };
            receivers.push(tokio::spawn(rx.run()));
            if m < config.talkers {
                let tx = Sender {
                    socket: member.socket,
                    sealer: member.sealer,
                    ssrc: member.ssrc,
                    payload_len,
                    epoch,
                    start,
                    end: send_end,
                    pacing: config.pacing,
                    pps: config.pps,
                    packets: match config.pacing {
                        Pacing::Paced => config.paced_packets(),
                        Pacing::Max => config.max_packets_per_talker,
                    },
                    fanout: config.members as u64 - 1,
                };
                senders.push(tokio::spawn(tx.run()));
            }
        }
    }
    let mut total = PhaseStats::new();
    total.window = config.duration;
    for task in senders.into_iter().chain(receivers) {
        let stats = task
            .await
            .map_err(|e| BlasterError::Worker(e.to_string()))?;
        total.merge(&stats);
    }
    Ok(total)
}

struct Sender {
    socket: Sock,
    sealer: Sealer,
    ssrc: u32,
    payload_len: usize,
    epoch: Instant,
    start: Instant,
    end: Instant,
    pacing: Pacing,
    pps: u32,
    /// At most this many packets.
    packets: u64,
    /// Members who should get each packet.
    fanout: u64,
}

impl Sender {
    async fn run(mut self) -> PhaseStats {
        let mut stats = PhaseStats::new();
        let mut buf = [0u8; MAX_DATAGRAM];
        let interval_ns = 1_000_000_000 / u64::from(self.pps);
        tokio::time::sleep_until(self.start.into()).await;
        for k in 0..self.packets {
            let now = match self.pacing {
                Pacing::Paced => {
                    let at = self.start + Duration::from_nanos(k * interval_ns);
                    tokio::time::sleep_until(at.into()).await;
                    Instant::now()
                }
                Pacing::Max => {
                    let now = Instant::now();
                    if now >= self.end {
                        break;
                    }
                    now
                }
            };
            let send_ns = nanos_since(self.epoch, now);
            let plain_len = FIXED_HEADER_LEN + self.payload_len;
            write_header(
                &mut buf,
                k as u16,
                (k as u32).wrapping_mul(SAMPLES_PER_FRAME),
                self.ssrc,
            );
            write_payload(&mut buf[FIXED_HEADER_LEN..plain_len], send_ns, k, self.ssrc);
            let len = match self.sealer.seal(&mut buf, plain_len, k as u32) {
                Ok(len) => len,
                Err(_) => {
                    stats.send_errors += 1;
                    continue;
                }
            };
            match self.socket.get().send(&buf[..len]).await {
                Ok(_) => {
                    stats.sent += 1;
                    stats.expected += self.fanout;
                }
                Err(_) => stats.send_errors += 1,
            }
        }
        stats
    }
}

struct Receiver {
    socket: Sock,
    opener: Sealer,
    /// The SSRCs this member should hear (its channel's other talkers).
    allowed: Vec<u32>,
    payload_len: usize,
    epoch: Instant,
    end: Instant,
}

impl Receiver {
    async fn run(self) -> PhaseStats {
        let mut stats = PhaseStats::new();
        let mut buf = [0u8; MAX_DATAGRAM];
        let mut errors = 0u64;
        loop {
            let n = match tokio::time::timeout_at(self.end.into(), self.socket.get().recv(&mut buf))
                .await
            {
                Err(_) => break,
                Ok(Ok(n)) => n,
                Ok(Err(_)) => {
                    errors += 1;
                    if errors >= MAX_RECV_ERRORS {
                        break;
                    }
                    continue;
                }
            };
            let rx_ns = nanos_since(self.epoch, Instant::now());
            match self.accept(&mut buf, n) {
                Some(send_ns) => {
                    stats.delivered += 1;
                    stats.bytes += n as u64;
                    stats.first_rx_ns = stats.first_rx_ns.min(rx_ns);
                    stats.last_rx_ns = stats.last_rx_ns.max(rx_ns);
                    stats
                        .latency
                        .saturating_record(rx_ns.saturating_sub(send_ns).max(1));
                }
                None => stats.invalid += 1,
            }
        }
        stats
    }

    /// Opens and checks one datagram; its send time when it is valid.
    fn accept(&self, buf: &mut [u8], n: usize) -> Option<u64> {
        let opened = self.opener.open(buf, n).ok()?;
        if !self.allowed.contains(&opened.ssrc) {
            return None;
        }
        let stamp = check_payload(opened.payload_of(buf), self.payload_len)?;
        (stamp.ssrc == opened.ssrc && stamp.seq as u16 == opened.seq).then_some(stamp.send_ns)
    }
}

fn nanos_since(epoch: Instant, now: Instant) -> u64 {
    u64::try_from(now.saturating_duration_since(epoch).as_nanos()).unwrap_or(u64::MAX)
}

// ---------------------------------------------------------------------------
// Packets

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
struct Opened {
    ssrc: u32,
    seq: u16,
    payload: std::ops::Range<usize>,
}

impl Opened {
    fn payload_of<'b>(&self, buf: &'b [u8]) -> &'b [u8] {
        &buf[self.payload.clone()]
    }
}

/// Seals and opens in place in a caller's buffer. AES-GCM (the default
/// mode) runs without allocating; the other modes go through [`Cipher`].
enum Sealer {
    /// `aead_aes256_gcm_rtpsize`, in place.
    Aes(Box<Aes256Gcm>),
    /// Any mode through [`Cipher`] (allocates).
    Generic(Box<Cipher>),
    /// The baseline: no crypto, `trailer` zero bytes after the payload.
    Plain { trailer: usize },
}

impl Sealer {
    fn new(mode: Mode, key: &[u8; 32]) -> Result<Self, CryptoError> {
        Ok(match mode {
            Mode::Aes256GcmRtpSize => Sealer::Aes(Box::new(
                Aes256Gcm::new_from_slice(key).map_err(|_| CryptoError::KeyLength(key.len()))?,
            )),
            _ => Sealer::Generic(Box::new(Cipher::new(mode, key)?)),
        })
    }

    /// Seals the plaintext packet `buf[..plain_len]` (12-byte header) in
    /// place with nonce counter `counter`; returns the datagram length.
    fn seal(
        &mut self,
        buf: &mut [u8],
        plain_len: usize,
        counter: u32,
    ) -> Result<usize, CryptoError> {
        match self {
            Sealer::Aes(aes) => {
                let len = plain_len + TAG_LEN + 4;
                if len > buf.len() {
                    return Err(CryptoError::Encrypt);
                }
                let (head, rest) = buf.split_at_mut(FIXED_HEADER_LEN);
                let body_len = plain_len - FIXED_HEADER_LEN;
                let tag = aes
                    .encrypt_in_place_detached(&aes_nonce(counter), head, &mut rest[..body_len])
                    .map_err(|_| CryptoError::Encrypt)?;
                rest[body_len..body_len + TAG_LEN].copy_from_slice(&tag);
                rest[body_len + TAG_LEN..body_len + TAG_LEN + 4]
                    .copy_from_slice(&counter.to_be_bytes());
                Ok(len)
            }
            Sealer::Generic(cipher) => {
                let wire = cipher.encrypt(&buf[..plain_len])?;
                if wire.len() > buf.len() {
                    return Err(CryptoError::Encrypt);
                }
                buf[..wire.len()].copy_from_slice(&wire);
                Ok(wire.len())
            }
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
    fn open(&self, buf: &mut [u8], n: usize) -> Result<Opened, CryptoError> {
        let wire = &mut buf[..n];
        if wire.len() < FIXED_HEADER_LEN || wire[0] >> 6 != 2 {
            return Err(crate::rtp::PacketError::Truncated {
                need: FIXED_HEADER_LEN,
                have: wire.len(),
            }
            .into());
        }
        let ssrc = u32::from_be_bytes([wire[8], wire[9], wire[10], wire[11]]);
        let seq = u16::from_be_bytes([wire[2], wire[3]]);
        match self {
            Sealer::Aes(aes) => {
                let clear = rtpsize_header_len(wire)?;
                // The blaster sends no extension; an extension body would
                // be inside the ciphertext.
                if wire[0] & 0x10 != 0 || wire.len() < clear + TAG_LEN + 4 {
                    return Err(CryptoError::Decrypt);
                }
                let end = n - TAG_LEN - 4;
                let (head, rest) = wire.split_at_mut(clear);
                let (body, trailer) = rest.split_at_mut(end - clear);
                let counter = u32::from_be_bytes([
                    trailer[TAG_LEN],
                    trailer[TAG_LEN + 1],
                    trailer[TAG_LEN + 2],
                    trailer[TAG_LEN + 3],
                ]);
                aes.decrypt_in_place_detached(
                    &aes_nonce(counter),
                    head,
                    body,
                    Tag::from_slice(&trailer[..TAG_LEN]),
                )
                .map_err(|_| CryptoError::Decrypt)?;
                Ok(Opened {
                    ssrc,
                    seq,
                    payload: clear..end,
                })
            }
            Sealer::Generic(cipher) => {
                let plain = cipher.decrypt(wire)?;
                let packet = RtpPacket::parse(&plain)?;
                let len = packet.payload.len();
                buf[..len].copy_from_slice(&packet.payload);
                Ok(Opened {
                    ssrc: packet.header.ssrc,
                    seq: packet.header.sequence,
                    payload: 0..len,
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

/// The 12-byte AES-GCM nonce: the counter big-endian, then zeros.
fn aes_nonce(counter: u32) -> Nonce<aes_gcm::aead::consts::U12> {
    let mut nonce = [0u8; 12];
    nonce[..4].copy_from_slice(&counter.to_be_bytes());
    nonce.into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rtp::RtpHeader;

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

    /// The in-place AES-GCM sealer produces what [`Cipher`] opens, and
    /// opens what [`Cipher`] seals.
    #[test]
    fn aes_in_place_matches_cipher() {
        let key = [9u8; 32];
        let mut sealer = Sealer::new(Mode::Aes256GcmRtpSize, &key).expect("key");
        let mut buf = [0u8; MAX_DATAGRAM];
        write_header(&mut buf, 5, 4800, 42);
        write_payload(&mut buf[12..140], 1, 5, 42);
        let plain = buf[..140].to_vec();
        let len = sealer.seal(&mut buf, 140, 3).expect("seal");
        assert_eq!(len, 160);
        let cipher = Cipher::new(Mode::Aes256GcmRtpSize, &key).expect("key");
        assert_eq!(cipher.decrypt(&buf[..len]).expect("open"), plain);
        let wire = cipher.encrypt_with(&plain, 3, [0; 24]).expect("seal");
        assert_eq!(wire, buf[..len]);

        let opener = Sealer::new(Mode::Aes256GcmRtpSize, &key).expect("key");
        let mut copy = buf;
        let opened = opener.open(&mut copy, len).expect("open");
        assert_eq!((opened.ssrc, opened.seq), (42, 5));
        assert_eq!(opened.payload_of(&copy), &plain[12..]);
        let mut bad = buf;
        bad[50] ^= 1;
        assert!(opener.open(&mut bad, len).is_err());
        assert!(opener.open(&mut buf.clone(), 30).is_err());
    }

    #[test]
    fn generic_and_plain_sealers_round_trip() {
        let key = [1u8; 32];
        for mode in Mode::ALL {
            let mut sealer = Sealer::new(mode, &key).expect("key");
            let opener = Sealer::new(mode, &key).expect("key");
            let mut buf = [0u8; MAX_DATAGRAM];
            let payload_len = 160 - 12 - mode.overhead();
            write_header(&mut buf, 9, 0, 7);
            write_payload(&mut buf[12..12 + payload_len], 1, 9, 7);
            let len = sealer.seal(&mut buf, 12 + payload_len, 0).expect("seal");
            assert_eq!(len, 160, "{mode}");
            let opened = opener.open(&mut buf, len).expect("open");
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
        let len = plain.seal(&mut buf, 140, 0).expect("seal");
        assert_eq!(len, 160);
        let opened = plain.open(&mut buf, len).expect("open");
        assert_eq!(opened.payload, 12..140);
        buf[150] = 1;
        assert!(plain.open(&mut buf, len).is_err());
    }

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
