//! The baseline: an in-process plain relay (`recvmmsg` → SSRC lookup →
//! `sendmmsg`, no crypto) that the same load is offered to, to tell the
//! server's cost from the machine's.

use std::collections::HashMap;
use std::io::{IoSlice, IoSliceMut};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket as StdUdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::socket::{recvmmsg, sendmmsg, ControlMessage, MsgFlags, MultiHeaders, SockaddrIn};
use tokio::net::UdpSocket;

use super::config::Config;
use super::packet::{Sealer, MAX_DATAGRAM};
use super::report::{RelayStats, TargetReport};
use super::traffic::{blast, Endpoint, Sock};
use super::{BlasterError, Result};
use crate::rtp::FIXED_HEADER_LEN;

/// Datagrams one `recvmmsg` of the baseline relay reads at most.
pub const RELAY_BATCH: usize = 32;
/// Datagrams one `sendmmsg` of the baseline relay sends at most.
pub const RELAY_SEND_BATCH: usize = 64;
/// How long the relay blocks in `recvmmsg` before it looks at its stop
/// flag and deadline.
const RELAY_READ_TIMEOUT: Duration = Duration::from_millis(20);

pub(super) async fn run_baseline(config: &Config, epoch: Instant) -> Result<TargetReport> {
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
