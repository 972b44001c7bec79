//! The messages that cross the rings and their fixed-slot encoding.
//!
//! Every message is encoded into one [`SLOT_SIZE`]-byte slot: byte 0 is the
//! tag, the rest little-endian fields at fixed offsets. Decoding validates the
//! tag and every enumerated field, so a corrupt slot is an error, not UB.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use zeroize::Zeroize;

use crate::ring::Wire;

/// Size of one ring slot in bytes.
pub const SLOT_SIZE: usize = 128;

/// A slot's bytes could not be decoded into a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The tag byte names no message of this ring.
    #[error("unknown message tag {0}")]
    UnknownTag(u8),
    /// The encryption mode byte names no mode.
    #[error("unknown encryption mode {0}")]
    UnknownMode(u8),
    /// The address family byte is neither 0 (none), 4 nor 6.
    #[error("unknown address family {0}")]
    UnknownFamily(u8),
}

/// The transport encryption mode (defined with the gateway's names in the
/// protocol crate). In a slot it is one byte: these values are the ring
/// layout, independent of [`Mode::ALL`]'s order.
pub use protocol::Mode;

fn mode_to_u8(mode: Mode) -> u8 {
    match mode {
        Mode::Aes256GcmRtpSize => 1,
        Mode::XChaCha20Poly1305RtpSize => 2,
        Mode::XSalsa20Poly1305Lite => 3,
        Mode::XSalsa20Poly1305Suffix => 4,
        Mode::XSalsa20Poly1305 => 5,
    }
}

fn mode_from_u8(b: u8) -> Result<Mode, DecodeError> {
    Mode::ALL
        .into_iter()
        .find(|m| mode_to_u8(*m) == b)
        .ok_or(DecodeError::UnknownMode(b))
}

/// Everything a core needs to forward one sender's media.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionSpec {
    /// The session's SSRC (`ssrc % cores` is the owning core).
    pub ssrc: u32,
    /// Control's numeric id of the voice channel.
    pub channel: u64,
    /// The user's snowflake.
    pub user: u64,
    /// The transport encryption mode chosen at Select Protocol.
    pub mode: Mode,
    /// The 32-byte secret key sent in Session Description.
    pub key: [u8; 32],
    /// The address the client declared in Select Protocol, if it parsed.
    pub declared: Option<SocketAddr>,
    /// The session's slot in the region's counter table (see
    /// [`Counters`](crate::Counters)): where the core keeps the high-water
    /// mark of the nonce counters it sealed with, so a restarted core never
    /// reuses one under this key. Unique among live sessions.
    pub slot: u32,
    /// Its video: the SSRCs it sends video on, and whether it receives
    /// the others'.
    pub video: VideoSpec,
}

/// The most video and RTX SSRCs one session sends on (two per stream,
/// three streams).
pub const MAX_ALIASES: usize = 6;

/// A session's video on the data plane. Media on an alias is the
/// session's own (same key, same replay counters, same address) and goes
/// only to members that receive video.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VideoSpec {
    /// Its video and RTX SSRCs; 0 is unused. Each one unique on the
    /// server, and on the session's core (`alias % cores`).
    pub aliases: [u32; MAX_ALIASES],
    /// Media on the other members' aliases is forwarded to it.
    pub receive: bool,
}

impl VideoSpec {
    /// The aliases in use.
    pub fn ssrcs(&self) -> impl Iterator<Item = u32> + '_ {
        self.aliases.iter().copied().filter(|&a| a != 0)
    }
}

impl Drop for SessionSpec {
    /// Every copy of a session key is wiped when it goes away.
    fn drop(&mut self) {
        self.key.zeroize();
    }
}

/// Control → core.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// The SSRC was handed out at Identify: answer IP discovery for it and
    /// remember the observed address. No key yet, nothing is forwarded.
    AnnounceSsrc {
        /// The SSRC from Ready.
        ssrc: u32,
        /// Control's numeric id of the voice channel.
        channel: u64,
        /// The user's snowflake.
        user: u64,
    },
    /// Create or replace a session with its key (Select Protocol).
    UpsertSession(SessionSpec),
    /// Forget one SSRC (disconnect, voice state destroyed).
    RemoveSession {
        /// The SSRC to forget.
        ssrc: u32,
    },
    /// The member left the call but may still resume (it closed its
    /// gateway websocket normally): while held, nothing is forwarded to
    /// or from the SSRC, but its key, counters, replay windows and address
    /// stay, so a resume continues where it stopped. `held: false` puts it
    /// back in the call.
    HoldSession {
        /// The SSRC.
        ssrc: u32,
        /// Whether it is held.
        held: bool,
    },
    /// Forget every session of a channel (channel destroyed).
    RemoveChannel {
        /// Control's numeric id of the voice channel.
        channel: u64,
    },
    /// The SSRC's address was proven on this server before (a core reported
    /// [`Event::AddressProven`]): send to it right away. Control sends this
    /// when it pushes its state into a restarted data plane, after the
    /// session's upsert, so members who never send keep hearing the call.
    TrustAddress {
        /// The SSRC.
        ssrc: u32,
        /// Its proven address.
        addr: SocketAddr,
    },
    /// A session on another core proved this address. Keepalives carry no
    /// SSRC, so the kernel cannot steer them to the owner core: every core
    /// knows every proven address, echoes keepalives from it and marks the
    /// session's slot alive.
    BindAddress {
        /// The proven address.
        addr: SocketAddr,
        /// The session that proved it.
        ssrc: u32,
        /// The session's counter slot (its liveness mark).
        slot: u32,
    },
    /// The address is no longer bound to `ssrc` (it moved, expired, or the
    /// session left). Ignored if the address is bound to another SSRC by
    /// now.
    UnbindAddress {
        /// The address.
        addr: SocketAddr,
        /// The session it was bound to.
        ssrc: u32,
    },
    /// A new control took the data plane over and is about to push its
    /// whole state again: every session and address binding is marked
    /// unconfirmed. What the push names again (announced, upserted, bound)
    /// is confirmed and keeps its keys, counters, windows and address, so
    /// the calls go on untouched.
    ResyncBegin,
    /// The push is complete: sessions and bindings still unconfirmed (the
    /// new control does not know them: the old one made them after it last
    /// saved its state) are removed.
    ResyncEnd,
}

/// Why a core dropped a datagram. The discriminant indexes [`CoreStats::drops`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum DropReason {
    /// Too short, wrong RTP version, bad lengths: not a packet we speak.
    Malformed = 0,
    /// An SSRC this core has no session or announcement for.
    UnknownSsrc = 1,
    /// The SSRC is announced but has no key yet (before Select Protocol).
    NoKey = 2,
    /// Authentication (AEAD tag / MAC) failed.
    AuthFailed = 3,
    /// A nonce or counter already seen (replay window).
    Replay = 4,
    /// The kernel refused a send.
    SendFailed = 5,
    /// A packet type we do not forward (e.g. an unknown RTCP type).
    Unsupported = 6,
    /// A discovery request for an SSRC that is not announced.
    DiscoveryUnknown = 7,
    /// An unauthenticated packet (IP discovery, keepalive) over the answer
    /// budget of its SSRC or of its source address.
    RateLimited = 8,
    /// A keepalive from an address no session has proven: never echoed.
    Unbound = 9,
    /// The socket's receive buffer was full: the kernel dropped datagrams
    /// before the core could read them (overload).
    Overflow = 10,
}

impl DropReason {
    /// Number of reasons (length of a [`Event::Drops`] array).
    pub const COUNT: usize = 11;
    /// Every reason, by index.
    pub const ALL: [DropReason; DropReason::COUNT] = [
        DropReason::Malformed,
        DropReason::UnknownSsrc,
        DropReason::NoKey,
        DropReason::AuthFailed,
        DropReason::Replay,
        DropReason::SendFailed,
        DropReason::Unsupported,
        DropReason::DiscoveryUnknown,
        DropReason::RateLimited,
        DropReason::Unbound,
        DropReason::Overflow,
    ];

    /// A stable snake_case name for metrics.
    pub fn name(self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed",
            DropReason::UnknownSsrc => "unknown_ssrc",
            DropReason::NoKey => "no_key",
            DropReason::AuthFailed => "auth_failed",
            DropReason::Replay => "replay",
            DropReason::SendFailed => "send_failed",
            DropReason::Unsupported => "unsupported",
            DropReason::DiscoveryUnknown => "discovery_unknown",
            DropReason::RateLimited => "rate_limited",
            DropReason::Unbound => "unbound",
            DropReason::Overflow => "overflow",
        }
    }

    /// Whether the drop means the server could not keep up (the socket
    /// buffer overflowed, a send was refused), as opposed to junk being
    /// refused. Only these lower health: junk is counted, not load.
    pub fn is_overload(self) -> bool {
        matches!(self, DropReason::SendFailed | DropReason::Overflow)
    }
}

/// Cumulative counters of one core since it started.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CoreStats {
    /// Core index.
    pub core: u32,
    /// Live sessions (announced or keyed) on the core.
    pub sessions: u32,
    /// Datagrams received.
    pub packets_in: u64,
    /// Bytes received.
    pub bytes_in: u64,
    /// Datagrams sent (forwarded media, discovery replies, keepalive echoes).
    pub packets_out: u64,
    /// Bytes sent.
    pub bytes_out: u64,
    /// Nanoseconds the core spent handling packets (not waiting).
    pub busy_ns: u64,
}

/// Cumulative dropped datagrams of one core by [`DropReason`] index.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Drops(pub [u64; DropReason::COUNT]);

impl Drops {
    /// Count of drops for one reason.
    pub fn get(&self, reason: DropReason) -> u64 {
        self.0[reason as usize]
    }

    /// Counts one more drop.
    pub fn add(&mut self, reason: DropReason, n: u64) {
        self.0[reason as usize] += n;
    }

    /// Drops that mean overload ([`DropReason::is_overload`]).
    pub fn overload(&self) -> u64 {
        DropReason::ALL
            .iter()
            .filter(|r| r.is_overload())
            .map(|r| self.get(*r))
            .sum()
    }

    /// Every drop, whatever the reason.
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }
}

/// Core → control.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// IP discovery for this SSRC came from this address. Unauthenticated:
    /// anyone who knows the SSRC can cause it. Control keeps it for
    /// operators and never trusts it.
    AddressObserved {
        /// The SSRC.
        ssrc: u32,
        /// Where the discovery request came from.
        addr: SocketAddr,
    },
    /// Media is now sent to this address: an authenticated packet came
    /// from it, or the address declared in Select Protocol matched an
    /// observation. Control persists it and re-pushes it after a restart.
    AddressProven {
        /// The SSRC.
        ssrc: u32,
        /// The proven address.
        addr: SocketAddr,
    },
    /// Nothing came from the proven address for the idle timeout: the core
    /// stopped sending to it.
    AddressExpired {
        /// The SSRC.
        ssrc: u32,
        /// The address given up.
        addr: SocketAddr,
    },
    /// Periodic statistics.
    Stats(CoreStats),
    /// Periodic drop counters (sent with every [`Event::Stats`]).
    Drops {
        /// Core index.
        core: u32,
        /// The counters.
        drops: Drops,
    },
}

const TAG_ANNOUNCE: u8 = 1;
const TAG_UPSERT: u8 = 2;
const TAG_REMOVE_SESSION: u8 = 3;
const TAG_REMOVE_CHANNEL: u8 = 4;
const TAG_TRUST_ADDRESS: u8 = 5;
const TAG_BIND_ADDRESS: u8 = 6;
const TAG_UNBIND_ADDRESS: u8 = 7;
const TAG_HOLD_SESSION: u8 = 8;
const TAG_RESYNC_BEGIN: u8 = 9;
const TAG_RESYNC_END: u8 = 10;
const TAG_OBSERVED: u8 = 1;
const TAG_STATS: u8 = 2;
const TAG_PROVEN: u8 = 3;
const TAG_EXPIRED: u8 = 4;
const TAG_DROPS: u8 = 5;

/// Bytes of an encoded address: family, 16 address bytes, port.
const ADDR_BYTES: usize = 19;

/// Little-endian field writer over one slot.
struct Put<'a> {
    buf: &'a mut [u8; SLOT_SIZE],
    at: usize,
}

impl Put<'_> {
    fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.buf[self.at..self.at + b.len()].copy_from_slice(b);
        self.at += b.len();
        self
    }
    fn u8(&mut self, v: u8) -> &mut Self {
        self.bytes(&[v])
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.bytes(&v.to_le_bytes())
    }
    fn u64(&mut self, v: u64) -> &mut Self {
        self.bytes(&v.to_le_bytes())
    }
    /// [`ADDR_BYTES`] bytes: family (0, 4, 6), 16 address bytes, port.
    fn addr(&mut self, a: Option<SocketAddr>) -> &mut Self {
        let (family, ip) = match a.map(|a| a.ip()) {
            None => (0, [0; 16]),
            Some(IpAddr::V4(v4)) => {
                let mut ip = [0; 16];
                ip[..4].copy_from_slice(&v4.octets());
                (4, ip)
            }
            Some(IpAddr::V6(v6)) => (6, v6.octets()),
        };
        self.u8(family).bytes(&ip);
        self.bytes(&a.map_or(0, |a| a.port()).to_le_bytes())
    }
}

/// Little-endian field reader over one slot.
struct Get<'a> {
    buf: &'a [u8; SLOT_SIZE],
    at: usize,
}

impl Get<'_> {
    fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0; N];
        out.copy_from_slice(&self.buf[self.at..self.at + N]);
        self.at += N;
        out
    }
    fn u8(&mut self) -> u8 {
        self.array::<1>()[0]
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.array())
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.array())
    }
    fn addr(&mut self) -> Result<Option<SocketAddr>, DecodeError> {
        let family = self.u8();
        let ip: [u8; 16] = self.array();
        let port = u16::from_le_bytes(self.array());
        match family {
            0 => Ok(None),
            4 => Ok(Some(SocketAddr::new(
                Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3]).into(),
                port,
            ))),
            6 => Ok(Some(SocketAddr::new(Ipv6Addr::from(ip).into(), port))),
            f => Err(DecodeError::UnknownFamily(f)),
        }
    }
    /// An address that must be present.
    fn some_addr(&mut self) -> Result<SocketAddr, DecodeError> {
        self.addr()?.ok_or(DecodeError::UnknownFamily(0))
    }
}

impl Wire for Command {
    fn encode(&self, slot: &mut [u8; SLOT_SIZE]) {
        let mut p = Put { buf: slot, at: 0 };
        match self {
            Command::AnnounceSsrc {
                ssrc,
                channel,
                user,
            } => {
                p.u8(TAG_ANNOUNCE).u32(*ssrc).u64(*channel).u64(*user);
            }
            Command::UpsertSession(s) => {
                p.u8(TAG_UPSERT)
                    .u32(s.ssrc)
                    .u64(s.channel)
                    .u64(s.user)
                    .u8(mode_to_u8(s.mode))
                    .bytes(&s.key)
                    .addr(s.declared)
                    .u32(s.slot);
                for alias in s.video.aliases {
                    p.u32(alias);
                }
                p.u8(u8::from(s.video.receive));
            }
            Command::RemoveSession { ssrc } => {
                p.u8(TAG_REMOVE_SESSION).u32(*ssrc);
            }
            Command::HoldSession { ssrc, held } => {
                p.u8(TAG_HOLD_SESSION).u32(*ssrc).u8(u8::from(*held));
            }
            Command::RemoveChannel { channel } => {
                p.u8(TAG_REMOVE_CHANNEL).u64(*channel);
            }
            Command::TrustAddress { ssrc, addr } => {
                p.u8(TAG_TRUST_ADDRESS).u32(*ssrc).addr(Some(*addr));
            }
            Command::BindAddress { addr, ssrc, slot } => {
                p.u8(TAG_BIND_ADDRESS)
                    .u32(*ssrc)
                    .addr(Some(*addr))
                    .u32(*slot);
            }
            Command::UnbindAddress { addr, ssrc } => {
                p.u8(TAG_UNBIND_ADDRESS).u32(*ssrc).addr(Some(*addr));
            }
            Command::ResyncBegin => {
                p.u8(TAG_RESYNC_BEGIN);
            }
            Command::ResyncEnd => {
                p.u8(TAG_RESYNC_END);
            }
        }
    }

    fn decode(slot: &[u8; SLOT_SIZE]) -> Result<Self, DecodeError> {
        let mut g = Get { buf: slot, at: 0 };
        Ok(match g.u8() {
            TAG_ANNOUNCE => Command::AnnounceSsrc {
                ssrc: g.u32(),
                channel: g.u64(),
                user: g.u64(),
            },
            TAG_UPSERT => Command::UpsertSession(SessionSpec {
                ssrc: g.u32(),
                channel: g.u64(),
                user: g.u64(),
                mode: mode_from_u8(g.u8())?,
                key: g.array(),
                declared: g.addr()?,
                slot: g.u32(),
                video: VideoSpec {
                    aliases: std::array::from_fn(|_| g.u32()),
                    receive: g.u8() != 0,
                },
            }),
            TAG_REMOVE_SESSION => Command::RemoveSession { ssrc: g.u32() },
            TAG_HOLD_SESSION => Command::HoldSession {
                ssrc: g.u32(),
                held: g.u8() != 0,
            },
            TAG_REMOVE_CHANNEL => Command::RemoveChannel { channel: g.u64() },
            TAG_TRUST_ADDRESS => Command::TrustAddress {
                ssrc: g.u32(),
                addr: g.some_addr()?,
            },
            TAG_BIND_ADDRESS => Command::BindAddress {
                ssrc: g.u32(),
                addr: g.some_addr()?,
                slot: g.u32(),
            },
            TAG_UNBIND_ADDRESS => Command::UnbindAddress {
                ssrc: g.u32(),
                addr: g.some_addr()?,
            },
            TAG_RESYNC_BEGIN => Command::ResyncBegin,
            TAG_RESYNC_END => Command::ResyncEnd,
            t => return Err(DecodeError::UnknownTag(t)),
        })
    }
}

impl Wire for Event {
    fn encode(&self, slot: &mut [u8; SLOT_SIZE]) {
        let mut p = Put { buf: slot, at: 0 };
        match self {
            Event::AddressObserved { ssrc, addr } => {
                p.u8(TAG_OBSERVED).u32(*ssrc).addr(Some(*addr));
            }
            Event::AddressProven { ssrc, addr } => {
                p.u8(TAG_PROVEN).u32(*ssrc).addr(Some(*addr));
            }
            Event::AddressExpired { ssrc, addr } => {
                p.u8(TAG_EXPIRED).u32(*ssrc).addr(Some(*addr));
            }
            Event::Stats(s) => {
                p.u8(TAG_STATS)
                    .u32(s.core)
                    .u32(s.sessions)
                    .u64(s.packets_in)
                    .u64(s.bytes_in)
                    .u64(s.packets_out)
                    .u64(s.bytes_out)
                    .u64(s.busy_ns);
            }
            Event::Drops { core, drops } => {
                p.u8(TAG_DROPS).u32(*core);
                for d in drops.0 {
                    p.u64(d);
                }
            }
        }
    }

    fn decode(slot: &[u8; SLOT_SIZE]) -> Result<Self, DecodeError> {
        let mut g = Get { buf: slot, at: 0 };
        Ok(match g.u8() {
            TAG_OBSERVED => Event::AddressObserved {
                ssrc: g.u32(),
                addr: g.some_addr()?,
            },
            TAG_PROVEN => Event::AddressProven {
                ssrc: g.u32(),
                addr: g.some_addr()?,
            },
            TAG_EXPIRED => Event::AddressExpired {
                ssrc: g.u32(),
                addr: g.some_addr()?,
            },
            TAG_STATS => Event::Stats(CoreStats {
                core: g.u32(),
                sessions: g.u32(),
                packets_in: g.u64(),
                bytes_in: g.u64(),
                packets_out: g.u64(),
                bytes_out: g.u64(),
                busy_ns: g.u64(),
            }),
            TAG_DROPS => {
                let core = g.u32();
                let mut drops = Drops::default();
                for d in &mut drops.0 {
                    *d = g.u64();
                }
                Event::Drops { core, drops }
            }
            t => return Err(DecodeError::UnknownTag(t)),
        })
    }
}

// Every message must fit its slot; the largest are checked here.
const _: () = assert!(1 + 4 + 8 + 8 + 1 + 32 + ADDR_BYTES + 4 <= SLOT_SIZE);
const _: () = assert!(1 + 4 + 8 * DropReason::COUNT <= SLOT_SIZE);

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip<T: Wire + PartialEq + std::fmt::Debug>(m: T) {
        let mut slot = [0xAA; SLOT_SIZE];
        m.encode(&mut slot);
        assert_eq!(T::decode(&slot).unwrap(), m);
    }

    #[test]
    fn commands_roundtrip() {
        roundtrip(Command::AnnounceSsrc {
            ssrc: 0xDEAD_BEEF,
            channel: u64::MAX,
            user: 42,
        });
        for declared in [
            None,
            Some("127.0.0.1:5000".parse().unwrap()),
            Some("[::1]:65535".parse().unwrap()),
        ] {
            for mode in Mode::ALL {
                roundtrip(Command::UpsertSession(SessionSpec {
                    ssrc: 3,
                    channel: 9,
                    user: 81_234_567_890_123_456,
                    mode,
                    key: std::array::from_fn(|i| i as u8),
                    declared,
                    slot: 65_535,
                    video: VideoSpec {
                        aliases: [7, u32::MAX, 0, 0, 13, 1],
                        receive: declared.is_some(),
                    },
                }));
            }
        }
        roundtrip(Command::RemoveSession { ssrc: 1 });
        roundtrip(Command::HoldSession {
            ssrc: 1,
            held: true,
        });
        roundtrip(Command::HoldSession {
            ssrc: 2,
            held: false,
        });
        roundtrip(Command::RemoveChannel { channel: 2 });
        roundtrip(Command::TrustAddress {
            ssrc: 9,
            addr: "[2001:db8::1]:50000".parse().unwrap(),
        });
        roundtrip(Command::BindAddress {
            addr: "192.0.2.7:9".parse().unwrap(),
            ssrc: 11,
            slot: 3,
        });
        roundtrip(Command::UnbindAddress {
            addr: "[::1]:9".parse().unwrap(),
            ssrc: 11,
        });
        roundtrip(Command::ResyncBegin);
        roundtrip(Command::ResyncEnd);
    }

    #[test]
    fn events_roundtrip() {
        let addr: SocketAddr = "10.0.0.1:1234".parse().unwrap();
        roundtrip(Event::AddressObserved { ssrc: 5, addr });
        roundtrip(Event::AddressProven { ssrc: 5, addr });
        roundtrip(Event::AddressExpired { ssrc: 5, addr });
        roundtrip(Event::Stats(CoreStats {
            core: 1,
            sessions: 4,
            packets_in: 1,
            bytes_in: 2,
            packets_out: 3,
            bytes_out: 4,
            busy_ns: 5,
        }));
        roundtrip(Event::Drops {
            core: 2,
            drops: Drops(std::array::from_fn(|i| u64::MAX - i as u64)),
        });
    }

    #[test]
    fn corrupt_slots_are_errors() {
        let mut slot = [0; SLOT_SIZE];
        slot[0] = 99;
        assert_eq!(Command::decode(&slot), Err(DecodeError::UnknownTag(99)));
        assert_eq!(Event::decode(&slot), Err(DecodeError::UnknownTag(99)));
        Command::UpsertSession(SessionSpec {
            ssrc: 1,
            channel: 1,
            user: 1,
            mode: Mode::XSalsa20Poly1305,
            key: [0; 32],
            declared: None,
            slot: 0,
            video: VideoSpec::default(),
        })
        .encode(&mut slot);
        slot[21] = 77; // the mode byte
        assert_eq!(Command::decode(&slot), Err(DecodeError::UnknownMode(77)));
        slot[21] = 1;
        slot[54] = 5; // the address family byte
        assert_eq!(Command::decode(&slot), Err(DecodeError::UnknownFamily(5)));
    }

    #[test]
    fn only_overload_lowers_health() {
        let overload: Vec<_> = DropReason::ALL
            .into_iter()
            .filter(|r| r.is_overload())
            .collect();
        assert_eq!(overload, [DropReason::SendFailed, DropReason::Overflow]);
        let mut d = Drops::default();
        d.add(DropReason::AuthFailed, 5);
        d.add(DropReason::Overflow, 2);
        assert_eq!((d.overload(), d.total()), (2, 7));
    }

    #[test]
    fn mode_bytes_are_the_ring_layout() {
        let bytes: Vec<u8> = Mode::ALL.into_iter().map(mode_to_u8).collect();
        assert_eq!(bytes, [1, 2, 3, 4, 5]);
        for m in Mode::ALL {
            assert_eq!(mode_from_u8(mode_to_u8(m)), Ok(m));
        }
        assert_eq!(mode_from_u8(0), Err(DecodeError::UnknownMode(0)));
    }
}
