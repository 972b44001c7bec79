//! One phase over a set of channels: a paced sender per talker and a
//! receiver per member, each on its own task, their counts merged.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;

use super::config::{Config, Pacing};
use super::packet::{check_payload, write_header, write_payload, Sealer, MAX_DATAGRAM};
use super::report::PhaseStats;
use super::{BlasterError, Result};
use crate::rtp::{FIXED_HEADER_LEN, SAMPLES_PER_FRAME};

/// Receive errors a member tolerates before it gives up.
const MAX_RECV_ERRORS: u64 = 1000;

/// One member's socket and keys, as the phase runner sees it.
pub(super) struct Endpoint {
    pub(super) socket: Sock,
    pub(super) ssrc: u32,
    /// Seals what this member sends.
    pub(super) sealer: Sealer,
    /// Opens what this member receives.
    pub(super) opener: Sealer,
}

/// A member's socket, shared by its sender and receiver tasks.
#[derive(Clone)]
pub(super) enum Sock {
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

/// Starts one receiver per member and one sender per talker, waits for
/// all of them and merges their counts.
pub(super) async fn blast(
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
            let len = match self.sealer.seal(&mut buf, plain_len) {
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
