//! The cheap generator: every client of a run on one shared UDP socket,
//! driven by one thread that can be pinned to its own CPU.
//!
//! Client `i` is `127.1.0.1 + i` on the shared socket's port
//! ([`client_ip`]); [`mmsg`](super::mmsg) sends up to 64 clients'
//! datagrams in one `sendmmsg` and receives everyone's in one `recvmmsg`.
//! Talkers are paced open loop, each at its own phase of the period (or
//! sent round robin as fast as the socket takes them, to saturate).
//!
//! Receivers count every datagram and take its latency from the clear RTP
//! header (the talker's SSRC and sequence number index the send time this
//! thread recorded); every [`Offer::verify_every`]-th datagram is also
//! opened with the receiver's key and its payload checked byte for byte.

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use nix::poll::{poll, PollFd, PollFlags};

use super::host::{udp_drops, Usage};
use super::mmsg::{self, In, Out, BATCH, SLOT};
use super::packet::{check_payload, write_header, write_payload, Sealer};
use crate::rtp::{FIXED_HEADER_LEN, SAMPLES_PER_FRAME};
use crate::udp::{keepalive, KEEPALIVE_LEN};

/// The first client's address; client `i` is this plus `i`.
const FIRST_CLIENT: u32 = u32::from_be_bytes([127, 1, 0, 1]);
/// Clients one fleet holds at most (all inside 127.1.0.0/16).
pub const MAX_CLIENTS: usize = 65_000;
/// Send times remembered per talker (by sequence number) when paced: 20 s
/// at 50 pps. Saturating, the whole sequence space is (a few talkers send
/// tens of thousands of packets a second, and queues are long).
const SENT_RING_PACED: usize = 1024;
const SENT_RING_SATURATING: usize = 1 << 16;
/// How often every client sends a UDP keepalive to the server.
const KEEPALIVE_EVERY: Duration = Duration::from_secs(5);
/// Receive buffer asked for the shared socket (`SO_RCVBUF`).
const RECEIVE_BUFFER: usize = 32 << 20;

/// Client `i`'s address.
pub fn client_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(FIRST_CLIENT + i as u32)
}

fn client_index(ip: Ipv4Addr) -> Option<usize> {
    u32::from(ip)
        .checked_sub(FIRST_CLIENT)
        .map(|i| i as usize)
        .filter(|&i| i < MAX_CLIENTS)
}

/// One client of the fleet.
pub(super) struct Member {
    pub(super) ssrc: u32,
    pub(super) room: usize,
    /// Seals what this client sends.
    pub(super) sealer: Sealer,
    /// Opens what it receives (the sampled verification).
    pub(super) opener: Sealer,
}

/// Every client of a run on one socket, in rooms of the same size whose
/// first `talkers` members talk.
pub(super) struct Fleet {
    socket: UdpSocket,
    port: u16,
    target: SocketAddrV4,
    members: Vec<Member>,
    by_ssrc: HashMap<u32, usize>,
    room_size: usize,
    talkers_per_room: usize,
    /// Whether clients send keepalives (the server expires silent
    /// addresses; the plain relay has no use for them).
    keepalives: bool,
    /// Whether a receiver opens what it gets with the sender's key (the
    /// plain relay forwards datagrams as they were sealed) rather than its
    /// own (the server seals again for each receiver).
    open_as_sender: bool,
}

impl Fleet {
    /// A fleet whose rooms have `room_size` members, the first
    /// `talkers_per_room` of them talking, sending to `target`. Its socket
    /// is bound to `0.0.0.0` on `port` (0: any) with `SO_REUSEADDR`, so a
    /// client joining can bind its own address on the same port for the
    /// handshake.
    pub(super) fn new(
        port: u16,
        target: SocketAddrV4,
        room_size: usize,
        talkers_per_room: usize,
        keepalives: bool,
    ) -> io::Result<Self> {
        use nix::sys::socket::{setsockopt, sockopt};
        let socket = nix::sys::socket::socket(
            nix::sys::socket::AddressFamily::Inet,
            nix::sys::socket::SockType::Datagram,
            nix::sys::socket::SockFlag::SOCK_NONBLOCK | nix::sys::socket::SockFlag::SOCK_CLOEXEC,
            None,
        )?;
        setsockopt(&socket, sockopt::ReuseAddr, &true)?;
        // As root the larger limit applies; otherwise what rmem_max allows.
        if setsockopt(&socket, sockopt::RcvBufForce, &RECEIVE_BUFFER).is_err() {
            setsockopt(&socket, sockopt::RcvBuf, &RECEIVE_BUFFER)?;
        }
        let _ = setsockopt(&socket, sockopt::SndBuf, &RECEIVE_BUFFER);
        let addr =
            nix::sys::socket::SockaddrIn::from(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port));
        nix::sys::socket::bind(std::os::fd::AsRawFd::as_raw_fd(&socket), &addr)?;
        let socket = UdpSocket::from(socket);
        mmsg::enable_pktinfo(socket.as_fd())?;
        let port = socket.local_addr()?.port();
        Ok(Fleet {
            socket,
            port,
            target,
            members: Vec::new(),
            by_ssrc: HashMap::new(),
            room_size,
            talkers_per_room,
            keepalives,
            open_as_sender: false,
        })
    }

    /// Receivers open with the sender's key: the target forwards datagrams
    /// as they were sealed.
    pub(super) fn opening_as_sender(mut self) -> Self {
        self.open_as_sender = true;
        self
    }

    /// The shared socket's port: every client's.
    pub(super) fn port(&self) -> u16 {
        self.port
    }

    /// Clients so far.
    pub(super) fn len(&self) -> usize {
        self.members.len()
    }

    /// Adds the next client (of the room being filled).
    pub(super) fn push(&mut self, ssrc: u32, sealer: Sealer, opener: Sealer) {
        let i = self.members.len();
        self.by_ssrc.insert(ssrc, i);
        self.members.push(Member {
            ssrc,
            room: i / self.room_size,
            sealer,
            opener,
        });
    }

    /// Sends to `target` from now on (a server's UDP address is known
    /// once the first client joined).
    pub(super) fn set_target(&mut self, target: SocketAddrV4) {
        self.target = target;
    }

    /// (client index, SSRC) of each member, room by room (whole rooms).
    pub(super) fn rooms(&self) -> Vec<Vec<(usize, u32)>> {
        let whole = self.members.len() / self.room_size * self.room_size;
        self.members[..whole]
            .chunks(self.room_size)
            .enumerate()
            .map(|(r, room)| {
                room.iter()
                    .enumerate()
                    .map(|(j, m)| (r * self.room_size + j, m.ssrc))
                    .collect()
            })
            .collect()
    }

    fn is_talker(&self, i: usize) -> bool {
        i % self.room_size < self.talkers_per_room
    }

    /// Runs one phase of `offer` on the calling thread (pin it first) and
    /// returns what it measured. Only whole rooms take part, the first
    /// [`Offer::rooms`] of them when it is set.
    pub(super) fn run(&mut self, offer: &Offer) -> io::Result<Measured> {
        let whole = self.members.len() / self.room_size;
        let clients = offer.rooms.unwrap_or(whole).min(whole) * self.room_size;
        let talkers: Vec<usize> = (0..clients).filter(|&i| self.is_talker(i)).collect();
        let mut talker_of = vec![usize::MAX; clients];
        for (k, &i) in talkers.iter().enumerate() {
            talker_of[i] = k;
        }
        let mut m = Measured::new();
        let mut in_slots = vec![[0u8; SLOT]; BATCH];
        let mut got = [In::default(); BATCH];
        // What an overloaded target delivered after the last phase's drain
        // is still waiting: it belongs to no packet of this phase.
        while mmsg::recv(self.socket.as_fd(), &mut in_slots, &mut got)? > 0 {}
        let drops_before = udp_drops(self.port);
        let mut usage = Some(Usage::start(offer.target_cpu));
        let ring = if offer.pps.is_some() {
            SENT_RING_PACED
        } else {
            SENT_RING_SATURATING
        };
        let mut sent_at = vec![0u64; talkers.len() * ring];
        let mut seqs = vec![0u16; talkers.len()];
        let mut out_slots = vec![[0u8; SLOT]; BATCH];
        let mut out_meta = [(Ipv4Addr::UNSPECIFIED, 0usize); BATCH];
        let epoch = Instant::now();
        let start = epoch + Duration::from_millis(5);
        let send_end = start + offer.duration;
        let recv_end = send_end + offer.drain;
        let period_ns = offer.pps.map(|pps| 1_000_000_000 / u64::from(pps.max(1)));
        // Packets per talker in the window, paced: duration × rate.
        let paced_total = offer.pps.map(|pps| {
            let each = (offer.duration.as_secs_f64() * f64::from(pps)).round() as u64;
            each.max(1) * talkers.len() as u64
        });
        let mut cursor = 0u64; // packets sent or skipped so far, all talkers
        let mut next_keepalive = start;
        let mut keepalive_counter = 0u32;
        let fanout = (self.room_size - 1) as u64;
        let ns = |t: Instant| t.saturating_duration_since(epoch).as_nanos() as u64;
        loop {
            let now = Instant::now();
            if now >= recv_end {
                break;
            }
            if now >= send_end {
                // CPU use over the sending window only.
                if let Some(u) = usage.take() {
                    (m.generator_busy, m.target_busy) = u.finish();
                }
            }
            let mut busy = false;
            // Send what is due (paced) or a batch (saturating).
            // Paced: every packet of the window is sent, late ones as soon
            // as this thread runs again (a descheduled generator must not
            // read as loss). Saturating: batches until the window ends.
            let sending = match paced_total {
                Some(total) => now >= start && cursor < total,
                None => now >= start && now < send_end,
            };
            if sending && !talkers.is_empty() {
                let due = match (period_ns, paced_total) {
                    // Talker k's n-th packet is due at n·period + k·period/T.
                    (Some(period), Some(total)) => {
                        let elapsed = ns(now.min(send_end)) - ns(start);
                        let t = talkers.len() as u64;
                        let done_periods = elapsed / period;
                        let within = elapsed % period;
                        (done_periods * t + (within * t / period + 1).min(t)).min(total)
                    }
                    _ => cursor + BATCH as u64,
                };
                while cursor < due {
                    let n = ((due - cursor) as usize).min(BATCH);
                    let send_ns = ns(Instant::now());
                    for b in 0..n {
                        let k = ((cursor + b as u64) % talkers.len() as u64) as usize;
                        let i = talkers[k];
                        let member = &mut self.members[i];
                        let seq = seqs[k];
                        seqs[k] = seq.wrapping_add(1);
                        let slot = &mut out_slots[b];
                        write_header(
                            slot,
                            seq,
                            u32::from(seq).wrapping_mul(SAMPLES_PER_FRAME),
                            member.ssrc,
                        );
                        let plain = FIXED_HEADER_LEN + offer.payload_len;
                        write_payload(
                            &mut slot[FIXED_HEADER_LEN..plain],
                            send_ns,
                            u64::from(seq),
                            member.ssrc,
                        );
                        let len = member.sealer.seal(slot, plain).unwrap_or(0);
                        sent_at[k * ring + usize::from(seq) % ring] = send_ns;
                        out_meta[b] = (client_ip(i), len);
                    }
                    let outs: Vec<Out<'_>> = (0..n)
                        .filter(|&b| out_meta[b].1 > 0)
                        .map(|b| Out {
                            src: out_meta[b].0,
                            dst: self.target,
                            bytes: &out_slots[b][..out_meta[b].1],
                        })
                        .collect();
                    let went = send_all(&self.socket, &outs)?;
                    m.sent += went as u64;
                    m.expected += went as u64 * fanout;
                    m.send_errors += (n - went) as u64;
                    cursor += n as u64;
                    busy = true;
                    if period_ns.is_none() {
                        break; // receive between batches
                    }
                }
            }
            if self.keepalives && now >= next_keepalive && now < send_end {
                next_keepalive = now + KEEPALIVE_EVERY;
                keepalive_counter = keepalive_counter.wrapping_add(1);
                let ka = keepalive(keepalive_counter);
                for first in (0..clients).step_by(BATCH) {
                    let outs: Vec<Out<'_>> = (first..clients.min(first + BATCH))
                        .map(|i| Out {
                            src: client_ip(i),
                            dst: self.target,
                            bytes: &ka,
                        })
                        .collect();
                    send_all(&self.socket, &outs)?;
                }
            }
            // Receive everything waiting.
            for _ in 0..64 {
                let n = mmsg::recv(self.socket.as_fd(), &mut in_slots, &mut got)?;
                if n == 0 {
                    break;
                }
                busy = true;
                let rx_ns = ns(Instant::now());
                for b in 0..n {
                    let g = got[b];
                    let verify = offer.verify_every > 0 && m.delivered % offer.verify_every == 0;
                    match self.accept((&talker_of, &sent_at, ring), g, &mut in_slots[b], verify) {
                        Accepted::Keepalive => m.keepalive_echoes += 1,
                        Accepted::Invalid => m.invalid += 1,
                        Accepted::Packet { sent_ns, verified } => {
                            m.delivered += 1;
                            m.delivered_bytes += g.len as u64;
                            match verified {
                                Some(true) => m.verified += 1,
                                Some(false) => m.verify_failed += 1,
                                None => {}
                            }
                            m.latency
                                .saturating_record(rx_ns.saturating_sub(sent_ns).max(1));
                        }
                    }
                }
                if n < BATCH {
                    break;
                }
            }
            if !busy {
                // Until data comes, or 1 ms (the next packet due).
                let mut fds = [PollFd::new(&self.socket, PollFlags::POLLIN)];
                let _ = poll(&mut fds, 1);
            }
        }
        m.window = offer.duration;
        if let Some(u) = usage {
            (m.generator_busy, m.target_busy) = u.finish();
        }
        m.generator_drops = udp_drops(self.port).saturating_sub(drops_before);
        Ok(m)
    }

    /// One received datagram: whose it is, its send time, and (when
    /// `verify`) whether it opens and checks.
    fn accept(
        &self,
        (talker_of, sent_at, ring): (&[usize], &[u64], usize),
        g: In,
        buf: &mut [u8; SLOT],
        verify: bool,
    ) -> Accepted {
        if g.src != self.target {
            return Accepted::Invalid;
        }
        if g.len == KEEPALIVE_LEN {
            return Accepted::Keepalive;
        }
        let Some(rx) = client_index(g.dst).filter(|&i| i < talker_of.len()) else {
            return Accepted::Invalid;
        };
        if g.len < FIXED_HEADER_LEN || buf[0] >> 6 != 2 {
            return Accepted::Invalid;
        }
        let ssrc = u32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]]);
        let seq = u16::from_be_bytes([buf[2], buf[3]]);
        let Some(&tx) = self.by_ssrc.get(&ssrc) else {
            return Accepted::Invalid;
        };
        let k = talker_of.get(tx).copied().unwrap_or(usize::MAX);
        if k == usize::MAX || tx == rx || self.members[tx].room != self.members[rx].room {
            return Accepted::Invalid;
        }
        let sent_ns = sent_at[k * ring + usize::from(seq) % ring];
        let verified = verify.then(|| {
            let opener = if self.open_as_sender {
                &self.members[tx].opener
            } else {
                &self.members[rx].opener
            };
            let payload_len = match opener.open(buf, g.len) {
                Ok(opened) if opened.ssrc == ssrc && opened.seq == seq => Some(opened),
                _ => None,
            };
            payload_len.is_some_and(|opened| {
                let payload = opened.payload_of(buf);
                check_payload(payload, payload.len())
                    .is_some_and(|s| s.ssrc == ssrc && s.seq as u16 == seq && s.send_ns == sent_ns)
            })
        });
        Accepted::Packet { sent_ns, verified }
    }
}

enum Accepted {
    Keepalive,
    Invalid,
    Packet {
        sent_ns: u64,
        verified: Option<bool>,
    },
}

/// Sends all of `outs`, batch by batch; returns how many went (the rest
/// found the socket buffer full).
fn send_all(socket: &UdpSocket, outs: &[Out<'_>]) -> io::Result<usize> {
    let mut went = 0;
    while went < outs.len() {
        let n = mmsg::send(socket.as_fd(), &outs[went..])?;
        if n == 0 {
            break;
        }
        went += n;
    }
    Ok(went)
}

/// The load one phase offers.
#[derive(Debug, Clone)]
pub(super) struct Offer {
    /// Packets per second per talker; `None`: as fast as possible.
    pub(super) pps: Option<u32>,
    /// Sending window.
    pub(super) duration: Duration,
    /// Receiving goes on this long after it.
    pub(super) drain: Duration,
    /// Bytes of payload after the 12-byte header (before the mode's
    /// overhead).
    pub(super) payload_len: usize,
    /// Open and check every this many received datagrams (0: none).
    pub(super) verify_every: u64,
    /// The CPU whose busy time is the target's.
    pub(super) target_cpu: usize,
    /// Only the first this many rooms take part (`None`: all).
    pub(super) rooms: Option<usize>,
}

/// What one phase measured.
#[derive(Debug, Clone)]
pub(super) struct Measured {
    pub(super) sent: u64,
    pub(super) send_errors: u64,
    pub(super) expected: u64,
    pub(super) delivered: u64,
    pub(super) delivered_bytes: u64,
    pub(super) invalid: u64,
    pub(super) verified: u64,
    pub(super) verify_failed: u64,
    pub(super) keepalive_echoes: u64,
    /// Send to receive, nanoseconds.
    pub(super) latency: Histogram<u64>,
    pub(super) window: Duration,
    /// The generator thread's busy fraction of the window.
    pub(super) generator_busy: f64,
    /// The target CPU's busy fraction.
    pub(super) target_busy: f64,
    /// Datagrams the kernel dropped at the generator's socket.
    pub(super) generator_drops: u64,
}

impl Measured {
    fn new() -> Self {
        Measured {
            sent: 0,
            send_errors: 0,
            expected: 0,
            delivered: 0,
            delivered_bytes: 0,
            invalid: 0,
            verified: 0,
            verify_failed: 0,
            keepalive_echoes: 0,
            latency: Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid bounds"),
            window: Duration::ZERO,
            generator_busy: 0.0,
            target_busy: 0.0,
            generator_drops: 0,
        }
    }

    /// Datagrams delivered per second of the sending window.
    pub(super) fn egress_pps(&self) -> f64 {
        self.delivered as f64 / self.window.as_secs_f64().max(1e-9)
    }

    /// Fraction of what should have arrived that did not.
    pub(super) fn loss(&self) -> f64 {
        if self.expected == 0 {
            return 0.0;
        }
        self.expected.saturating_sub(self.delivered) as f64 / self.expected as f64
    }
}
