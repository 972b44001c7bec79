//! Pinned capacity measurements: the server's one data-plane core against
//! the plain relay on the same CPU, offered the same load by the same
//! generator ([`Fleet`]) on another CPU.
//!
//! - [`compare`]: saturation at a fan-out: talkers send as fast as the
//!   generator can, and what comes back per second (egress) is compared.
//! - [`search`]: realistic clients (paced Opus) added room by room until
//!   loss passes the limit or the p99 latency passes a multiple of the
//!   relay's at the same load; then the largest load that passed is run
//!   again at half.
//!
//! Every phase reports both CPUs' busy time: a target CPU that is not
//! saturated while the generator's is means the generator was the
//! bottleneck, and the report says so.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{StreamExt, TryStreamExt};
use serde::Serialize;

use super::engine::{client_ip, Fleet, Measured, Offer};
use super::host::pin_to;
use super::packet::Sealer;
use super::relay::{relay_loop, relay_table};
use super::report::Latency;
use super::{BlasterError, Result, ServerTarget};
use crate::crypto::Mode;
use crate::error::ClientError;
use crate::lvsp::LvspClient;
use crate::rtp::FIXED_HEADER_LEN;
use crate::voice::VoiceClient;
use crate::ws::HeartbeatTask;

/// Voice clients joining at the same time.
const JOIN_CONCURRENCY: usize = 16;
/// A target CPU less busy than this while saturated was not the
/// bottleneck.
const SATURATED: f64 = 0.90;
/// The data plane's socket buffers (`dataplane::sys::socket`), given to
/// the relay too.
const RELAY_BUFFER: usize = 4 << 20;
/// Loss below this at saturation: the target kept up with the generator.
const KEPT_UP: f64 = 0.001;

/// What every measurement shares.
#[derive(Debug, Clone)]
pub struct Bench {
    /// The CPU of the server's data-plane core and of the relay.
    pub target_cpu: usize,
    /// The encryption mode the clients select.
    pub mode: Mode,
    /// Datagram size on the wire, bytes.
    pub packet_size: usize,
    /// Open and check one received datagram in this many.
    pub verify_every: u64,
}

impl Bench {
    fn offer(&self, pps: Option<u32>, duration: Duration, rooms: Option<usize>) -> Offer {
        Offer {
            pps,
            duration,
            drain: Duration::from_millis(300),
            payload_len: self.packet_size - FIXED_HEADER_LEN - self.mode.overhead(),
            verify_every: self.verify_every,
            target_cpu: self.target_cpu,
            rooms,
        }
    }
}

/// One phase, summarised.
#[derive(Debug, Clone, Serialize)]
pub struct Phase {
    /// "server" or "relay".
    pub target: &'static str,
    /// Clients taking part.
    pub clients: usize,
    /// Datagrams the talkers sent per second.
    pub ingress_pps: f64,
    /// Datagrams the receivers got per second.
    pub egress_pps: f64,
    /// Egress per second of the target CPU's busy time: the rate one
    /// whole CPU would carry, comparable when the target is not
    /// saturated.
    pub egress_per_cpu_second: f64,
    /// Fraction that should have arrived and did not.
    pub loss: f64,
    /// Datagrams that were not what a receiver should get.
    pub invalid: u64,
    /// Sampled datagrams opened and checked, and those that failed.
    pub verified: u64,
    /// See `verified`.
    pub verify_failed: u64,
    /// Send to receive, microseconds.
    pub latency_us: Latency,
    /// The target CPU's busy fraction.
    pub target_busy: f64,
    /// The generator thread's busy fraction.
    pub generator_busy: f64,
    /// Datagrams the kernel dropped at the generator's socket.
    pub generator_drops: u64,
}

impl Phase {
    fn new(target: &'static str, clients: usize, m: &Measured) -> Self {
        let window = m.window.as_secs_f64().max(1e-9);
        Phase {
            target,
            clients,
            ingress_pps: m.sent as f64 / window,
            egress_pps: m.egress_pps(),
            egress_per_cpu_second: m.egress_pps() / m.target_busy.max(1e-9),
            loss: m.loss(),
            invalid: m.invalid,
            verified: m.verified,
            verify_failed: m.verify_failed,
            latency_us: Latency::from_histogram(&m.latency),
            target_busy: m.target_busy,
            generator_busy: m.generator_busy,
            generator_drops: m.generator_drops,
        }
    }

    /// Why this phase measured the generator rather than the target, if
    /// it did: drops at the generator's own socket, or (when `saturating`)
    /// a target CPU with time to spare.
    fn generator_bound(&self, saturating: bool) -> Option<String> {
        if self.generator_drops > 0 {
            return Some(format!(
                "{}: the generator's socket dropped {} datagrams",
                self.target, self.generator_drops
            ));
        }
        if !saturating {
            return None;
        }
        if self.loss < KEPT_UP {
            return Some(format!(
                "{}: it delivered all the generator offered ({:.0} pps in)",
                self.target, self.ingress_pps
            ));
        }
        (self.target_busy < SATURATED).then(|| {
            format!(
                "{}: the target CPU was only {:.0}% busy (generator {:.0}%)",
                self.target,
                100.0 * self.target_busy,
                100.0 * self.generator_busy
            )
        })
    }

    fn line(&self) -> String {
        format!(
            "{:<6} {:>6} clients  in {:>9.0} pps  out {:>9.0} pps  loss {:>7.4}%  \
             p50 {:>6.0} p99 {:>6.0} p99.9 {:>6.0} µs  target CPU {:>3.0}%  generator {:>3.0}%  \
             checked {}/{}",
            self.target,
            self.clients,
            self.ingress_pps,
            self.egress_pps,
            100.0 * self.loss,
            self.latency_us.p50,
            self.latency_us.p99,
            self.latency_us.p999,
            100.0 * self.target_busy,
            100.0 * self.generator_busy,
            self.verified,
            self.verified + self.verify_failed
        )
    }
}

/// Joins voice clients to a server, room by room, into a fleet.
pub struct Joiner {
    target: ServerTarget,
    lvsp: LvspClient,
    _lvsp_heartbeat: HeartbeatTask,
    guild: String,
    base: u64,
    rooms: usize,
    /// What keeps each member's session alive.
    sessions: Vec<(crate::gateway::GatewayClient, Option<HeartbeatTask>)>,
}

impl std::fmt::Debug for Joiner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Joiner")
            .field("rooms", &self.rooms)
            .field("sessions", &self.sessions.len())
            .finish_non_exhaustive()
    }
}

impl Joiner {
    /// Connects to the server's LVSP.
    pub async fn connect(target: ServerTarget) -> Result<Self> {
        if let Some(cert) = &target.cert {
            crate::ws::trust_certificate_file(cert)?;
        }
        let (lvsp, _ready) = LvspClient::connect(&target.lvsp_url, &target.secret).await?;
        let heartbeat = lvsp.spawn_heartbeat(lvsp.heartbeat_interval());
        let base = 100_000_000_000_000_000u64 + u64::from(rand::random::<u32>()) * 1_000_000;
        Ok(Joiner {
            target,
            lvsp,
            _lvsp_heartbeat: heartbeat,
            guild: base.to_string(),
            base,
            rooms: 0,
            sessions: Vec::new(),
        })
    }

    /// Joins rooms of `fleet`'s size until it has `rooms` of them.
    async fn grow(&mut self, fleet: &mut Fleet, rooms: usize, room_size: usize) -> Result<()> {
        while self.rooms < rooms {
            let channel = (self.base + 1 + self.rooms as u64).to_string();
            let assign = self.lvsp.channel_req(&channel, Some(&self.guild)).await?;
            let mut jobs = Vec::with_capacity(room_size);
            for m in 0..room_size {
                let n = fleet.len() + m;
                let user = (self.base + 100_000 + n as u64).to_string();
                let done = self
                    .lvsp
                    .voice_state_create(&user, &channel, Some(&self.guild))
                    .await?;
                let local = SocketAddr::V4(SocketAddrV4::new(client_ip(n), fleet.port()));
                jobs.push((local, user, done.session_id, assign.token.clone()));
            }
            let target = &self.target;
            let guild = &self.guild;
            let clients: Vec<VoiceClient> = futures_util::stream::iter(jobs)
                .map(|(local, user, session, token)| async move {
                    let ids = [guild.as_str(), &user, &session, &token];
                    VoiceClient::join_from(local, &target.gateway_url, 8, ids, target.mode).await
                })
                .buffered(JOIN_CONCURRENCY)
                .try_collect()
                .await?;
            for client in clients {
                let ssrc = client.ssrc();
                let (gateway, udp, heartbeat) = client.into_parts();
                let cipher = udp
                    .cipher()
                    .ok_or_else(|| ClientError::Protocol("joined without a session key".into()))?;
                let (mode, key) = (cipher.mode(), *cipher.key());
                if let SocketAddr::V4(server) = udp.server_addr() {
                    fleet.set_target(server);
                }
                // The handshake's socket closes; the shared one takes over
                // its address.
                drop(udp);
                fleet.push(ssrc, Sealer::new(mode, &key)?, Sealer::new(mode, &key)?);
                self.sessions.push((gateway, heartbeat));
            }
            self.rooms += 1;
        }
        // Let the last Select Protocol reach its core.
        tokio::time::sleep(Duration::from_millis(100)).await;
        Ok(())
    }
}

/// The plain relay on its own pinned thread for one phase.
struct Relay {
    socket: UdpSocket,
    addr: SocketAddrV4,
}

impl Relay {
    /// The relay's socket, with the data plane's options: 4 MiB kernel
    /// buffers each way and don't-fragment.
    fn bind() -> Result<Self> {
        use nix::sys::socket::{setsockopt, sockopt};
        let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
        if setsockopt(&socket, sockopt::RcvBufForce, &RELAY_BUFFER).is_err() {
            setsockopt(&socket, sockopt::RcvBuf, &RELAY_BUFFER).map_err(std::io::Error::from)?;
        }
        if setsockopt(&socket, sockopt::SndBufForce, &RELAY_BUFFER).is_err() {
            setsockopt(&socket, sockopt::SndBuf, &RELAY_BUFFER).map_err(std::io::Error::from)?;
        }
        super::mmsg::dont_fragment(std::os::fd::AsFd::as_fd(&socket))?;
        let SocketAddr::V4(addr) = socket.local_addr()? else {
            return Err(BlasterError::Config(
                "relay bound a non-IPv4 address".into(),
            ));
        };
        Ok(Relay { socket, addr })
    }

    /// Runs `offer` on `fleet` (whose clients are numbered 1.. as SSRCs)
    /// through the relay, pinned to `cpu`.
    async fn phase(&self, fleet: Fleet, offer: Offer, cpu: usize) -> Result<(Fleet, Measured)> {
        let rooms = fleet.rooms();
        let port = fleet.port();
        let table = relay_table(
            &rooms
                .iter()
                .map(|room| {
                    room.iter()
                        .map(|&(i, ssrc)| (ssrc, SocketAddrV4::new(client_ip(i), port)))
                        .collect()
                })
                .collect::<Vec<_>>(),
        );
        let socket = self.socket.try_clone()?;
        let stop = Arc::new(AtomicBool::new(false));
        let deadline = Instant::now() + offer.duration + offer.drain + Duration::from_secs(10);
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("relay".into())
                .spawn(move || {
                    pin_to(cpu)?;
                    relay_loop(&socket, &table, &stop, deadline)
                })?
        };
        let result = run_fleet(fleet, offer).await;
        stop.store(true, Ordering::Relaxed);
        thread
            .join()
            .map_err(|_| BlasterError::Worker("relay thread panicked".into()))??;
        result
    }
}

/// Runs one phase on a blocking thread (inheriting the process's CPU).
async fn run_fleet(mut fleet: Fleet, offer: Offer) -> Result<(Fleet, Measured)> {
    tokio::task::spawn_blocking(move || {
        let m = fleet.run(&offer);
        m.map(|m| (fleet, m))
    })
    .await
    .map_err(|e| BlasterError::Worker(e.to_string()))?
    .map_err(BlasterError::Io)
}

/// A relay fleet of `rooms` rooms of `room_size` with `talkers` each.
/// Its clients seal with the bench's mode and a key of their own, as the
/// server's do, so the generator does the same work for both targets;
/// the relay forwards the sealed datagrams as they are.
fn relay_fleet(
    relay: &Relay,
    bench: &Bench,
    room_size: usize,
    talkers: usize,
    rooms: usize,
) -> Result<Fleet> {
    let mut fleet = Fleet::new(0, relay.addr, room_size, talkers, false)?.opening_as_sender();
    for i in 0..rooms * room_size {
        let ssrc = 1 + i as u32;
        let mut key = [0x5a; 32];
        key[..4].copy_from_slice(&ssrc.to_be_bytes());
        fleet.push(
            ssrc,
            Sealer::new(bench.mode, &key)?,
            Sealer::new(bench.mode, &key)?,
        );
    }
    Ok(fleet)
}

/// One fan-out's saturation comparison.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    /// Receivers per packet.
    pub fanout: usize,
    /// The first server against the relay.
    #[serde(flatten)]
    pub first: Contender,
    /// Other servers (another packet I/O path) against the same relay
    /// phases, in the same run.
    pub alternatives: Vec<Contender>,
}

/// One server against the relay, at one fan-out.
#[derive(Debug, Clone, Serialize)]
pub struct Contender {
    /// The server's name (its data plane's packet I/O path).
    pub packet_io: String,
    /// The server's phase.
    pub server: Phase,
    /// The relay's phase, same load, same CPU.
    pub relay: Phase,
    /// Server egress pps / relay egress pps (the median pair).
    pub ratio: f64,
    /// That ratio in every pair, in the order they ran.
    pub ratios: Vec<f64>,
    /// The same per second of target CPU time.
    pub cpu_ratio: f64,
    /// Set when a phase measured the generator rather than the target.
    pub generator_bound: Option<String>,
}

impl Contender {
    /// The pair (server, relay) with the median ratio of `pairs`, with
    /// every pair's ratio beside it.
    fn median(packet_io: String, mut pairs: Vec<(Phase, Phase)>) -> Contender {
        let ratio = |(s, r): &(Phase, Phase)| s.egress_pps / r.egress_pps.max(1e-9);
        let ratios: Vec<f64> = pairs.iter().map(ratio).collect();
        pairs.sort_by(|a, b| ratio(a).total_cmp(&ratio(b)));
        let (server, relay) = pairs.swap_remove(pairs.len() / 2);
        let generator_bound = server
            .generator_bound(true)
            .into_iter()
            .chain(relay.generator_bound(true))
            .reduce(|a, b| format!("{a}; {b}"));
        Contender {
            packet_io,
            ratio: server.egress_pps / relay.egress_pps.max(1e-9),
            cpu_ratio: server.egress_per_cpu_second / relay.egress_per_cpu_second.max(1e-9),
            ratios,
            server,
            relay,
            generator_bound,
        }
    }
}

/// Saturates each server of `servers` (named, in order) and then the
/// relay at each fan-out in `fanouts` (`rooms` rooms of fan-out + 1
/// members, one talker each) for `duration`, `repeats` times in turn, and
/// compares each server's egress with the relay's.
pub async fn compare(
    bench: &Bench,
    servers: &mut [(String, Joiner)],
    fanouts: &[usize],
    rooms: usize,
    duration: Duration,
    repeats: usize,
) -> Result<Vec<Comparison>> {
    let relay = Relay::bind()?;
    let mut out = Vec::new();
    for &fanout in fanouts {
        let room_size = fanout + 1;
        let mut fleets = Vec::with_capacity(servers.len());
        for (_, joiner) in servers.iter_mut() {
            let mut fleet = Fleet::new(
                0,
                SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0),
                room_size,
                1,
                true,
            )?;
            // A fresh set of rooms per fan-out: the joiner counts rooms
            // across fleets.
            let have = joiner.rooms;
            joiner.grow(&mut fleet, have + rooms, room_size).await?;
            fleets.push(fleet);
        }
        let offer = bench.offer(None, duration, None);
        let clients = rooms * room_size;
        let mut plain = relay_fleet(&relay, bench, room_size, 1, rooms)?;
        // The servers and the relay take turns; each server's pairs
        // (server, relay of the same turn).
        let mut pairs: Vec<Vec<(Phase, Phase)>> = vec![Vec::new(); servers.len()];
        for _ in 0..repeats.max(1) {
            let mut phases = Vec::with_capacity(servers.len());
            let mut back = Vec::with_capacity(servers.len());
            for (fleet, (name, _)) in fleets.into_iter().zip(servers.iter()) {
                let (fleet, m) = run_fleet(fleet, offer.clone()).await?;
                back.push(fleet);
                let server = Phase::new("server", clients, &m);
                eprintln!("fan-out {fanout} ({name}): {}", server.line());
                phases.push(server);
            }
            fleets = back;
            let (back, m) = relay.phase(plain, offer.clone(), bench.target_cpu).await?;
            plain = back;
            let relay_phase = Phase::new("relay", clients, &m);
            eprintln!("fan-out {fanout}: {}", relay_phase.line());
            for (server, pairs) in phases.into_iter().zip(&mut pairs) {
                pairs.push((server, relay_phase.clone()));
            }
        }
        let mut contenders = servers
            .iter()
            .zip(pairs)
            .map(|((name, _), pairs)| Contender::median(name.clone(), pairs));
        let Some(first) = contenders.next() else {
            return Err(BlasterError::Config("no server to compare".into()));
        };
        out.push(Comparison {
            fanout,
            first,
            alternatives: contenders.collect(),
        });
    }
    Ok(out)
}

/// The clients of a capacity profile.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Profile {
    /// Members per room.
    pub room_size: usize,
    /// Talkers per room.
    pub talkers: usize,
    /// Packets per second per talker.
    pub pps: u32,
}

/// One step of a search: the server and the relay at the same load.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    /// The server's phase.
    pub server: Phase,
    /// The relay's.
    pub relay: Phase,
    /// Server p99 / relay p99.
    pub p99_ratio: f64,
    /// Whether the server met the limits.
    pub passed: bool,
    /// What it missed, if anything.
    pub failed: Option<String>,
}

/// A capacity search's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct Search {
    /// The profile searched.
    pub profile: Profile,
    /// Every step, in order.
    pub steps: Vec<Step>,
    /// The most clients a step passed with.
    pub capacity: usize,
    /// The server and the relay at half of that.
    pub at_half: Option<Step>,
}

/// Limits of a search.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Loss above this fails (0.001 = 0.1%).
    pub max_loss: f64,
    /// A server p99 above this multiple of the relay's fails.
    pub max_p99_ratio: f64,
    /// Clients to start at.
    pub start: usize,
    /// Each step multiplies the clients by this.
    pub growth: f64,
    /// Stop here even if it passes.
    pub max_clients: usize,
    /// Sending window of each phase.
    pub duration: Duration,
    /// Phases per target and step (alternating); the median p99 counts.
    pub repeats: usize,
    /// Stop starting steps after this long.
    pub max_time: Duration,
}

/// Ramps `profile` on the server (and the relay at each load) until a
/// limit is passed; then runs half of the largest load that passed.
pub async fn search(
    bench: &Bench,
    joiner: &mut Joiner,
    profile: Profile,
    limits: Limits,
) -> Result<Search> {
    let relay = Relay::bind()?;
    let began = Instant::now();
    let size = profile.room_size;
    let mut fleet = Fleet::new(
        0,
        SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0),
        size,
        profile.talkers,
        true,
    )?;
    let first_room = joiner.rooms;
    let mut steps: Vec<Step> = Vec::new();
    let mut clients = limits.start.max(size);
    let mut capacity = 0;
    loop {
        let rooms = clients.div_ceil(size);
        joiner.grow(&mut fleet, first_room + rooms, size).await?;
        let (back, step) = run_step(bench, &relay, fleet, profile, rooms, limits).await?;
        fleet = back;
        eprintln!("{}\n{}", step.server.line(), step.relay.line());
        let passed = step.passed;
        if passed {
            capacity = rooms * size;
        }
        steps.push(step);
        let next = ((clients as f64 * limits.growth) as usize).max(clients + size);
        if !passed || next > limits.max_clients || began.elapsed() > limits.max_time {
            break;
        }
        clients = next;
    }
    let at_half = if capacity >= 2 * size {
        let rooms = capacity / 2 / size;
        let (_, s) = run_step(bench, &relay, fleet, profile, rooms, limits).await?;
        eprintln!("half:\n{}\n{}", s.server.line(), s.relay.line());
        Some(s)
    } else {
        None
    };
    Ok(Search {
        profile,
        steps,
        capacity,
        at_half,
    })
}

/// Of repeated phases, the one with the median p99, with the worst loss
/// and the sums of the invalid and checked datagrams of all of them.
fn typical(mut phases: Vec<Phase>) -> Phase {
    let worst_loss = phases.iter().map(|p| p.loss).fold(0.0, f64::max);
    let invalid = phases.iter().map(|p| p.invalid).sum();
    let verified = phases.iter().map(|p| p.verified).sum();
    let verify_failed = phases.iter().map(|p| p.verify_failed).sum();
    let drops = phases.iter().map(|p| p.generator_drops).sum();
    phases.sort_by(|a, b| a.latency_us.p99.total_cmp(&b.latency_us.p99));
    let mut median = phases.swap_remove(phases.len() / 2);
    median.loss = worst_loss;
    median.invalid = invalid;
    median.verified = verified;
    median.verify_failed = verify_failed;
    median.generator_drops = drops;
    median
}

/// The server with the first `rooms` rooms of `fleet`, then the relay
/// with as many.
async fn run_step(
    bench: &Bench,
    relay: &Relay,
    fleet: Fleet,
    profile: Profile,
    rooms: usize,
    limits: Limits,
) -> Result<(Fleet, Step)> {
    let offer = bench.offer(Some(profile.pps), limits.duration, Some(rooms));
    let clients = rooms * profile.room_size;
    let mut plain = relay_fleet(relay, bench, profile.room_size, profile.talkers, rooms)?;
    let mut fleet = fleet;
    let (mut servers, mut relays) = (Vec::new(), Vec::new());
    // Server and relay take turns, so that the machine's slow drifts
    // (other tenants) fall on both.
    for _ in 0..limits.repeats.max(1) {
        let (back, m) = run_fleet(fleet, offer.clone()).await?;
        fleet = back;
        servers.push(Phase::new("server", clients, &m));
        let (back, m) = relay.phase(plain, offer.clone(), bench.target_cpu).await?;
        plain = back;
        relays.push(Phase::new("relay", clients, &m));
    }
    let (server, relay_phase) = (typical(servers), typical(relays));
    let p99_ratio = server.latency_us.p99 / relay_phase.latency_us.p99.max(1e-9);
    let mut failed = Vec::new();
    if server.loss > limits.max_loss {
        failed.push(format!("loss {:.4}%", 100.0 * server.loss));
    }
    if p99_ratio > limits.max_p99_ratio {
        failed.push(format!("p99 {p99_ratio:.2}x the relay's"));
    }
    if server.invalid > 0 || server.verify_failed > 0 {
        failed.push(format!(
            "{} invalid, {} failed the check",
            server.invalid, server.verify_failed
        ));
    }
    failed.extend(server.generator_bound(false));
    failed.extend(relay_phase.generator_bound(false));
    Ok((
        fleet,
        Step {
            passed: failed.is_empty(),
            failed: (!failed.is_empty()).then(|| failed.join("; ")),
            p99_ratio,
            server,
            relay: relay_phase,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The generator and the relay alone, over loopback: a paced fleet's
    /// every datagram arrives, the sampled ones open with the sender's
    /// key and check, datagrams from anyone but the target are counted
    /// invalid rather than delivered, and what was waiting before the
    /// phase is not counted at all.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_relay_carries_a_paced_fleet_and_strangers_count_as_invalid() {
        let bench = Bench {
            target_cpu: 0,
            mode: Mode::Aes256GcmRtpSize,
            packet_size: 160,
            verify_every: 4,
        };
        let relay = Relay::bind().unwrap();
        let fleet = relay_fleet(&relay, &bench, 3, 1, 2).unwrap();
        let port = fleet.port();
        let mut offer = bench.offer(Some(100), Duration::from_millis(300), None);
        offer.drain = Duration::from_millis(200);
        // Left over from an earlier phase: flushed, not counted.
        let stale = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        for _ in 0..3 {
            stale.send_to(&[0x80; 40], (client_ip(1), port)).unwrap();
        }
        let stranger = std::thread::spawn(move || {
            let s = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
            std::thread::sleep(Duration::from_millis(100));
            for _ in 0..5 {
                s.send_to(&[0x80; 40], (client_ip(0), port)).unwrap();
            }
        });
        let (_, m) = relay.phase(fleet, offer, 0).await.unwrap();
        stranger.join().unwrap();
        // 2 talkers × 30 packets, each to 2 others.
        assert_eq!((m.sent, m.expected), (60, 120));
        assert_eq!((m.delivered, m.invalid), (120, 5));
        assert_eq!(m.verify_failed, 0);
        assert_eq!(m.verified, 30, "one in four checked");
        assert_eq!(m.loss(), 0.0);
        assert!(m.latency.len() == 120 && m.latency.max() > 0);
    }
}
