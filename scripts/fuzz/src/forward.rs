//! The whole per-datagram decision of one data-plane core.
//!
//! A [`Forwarder`] (default [`ForwardConfig`], a counter table of 16 slots)
//! gets eight sessions in two channels through [`Forwarder::apply`], in
//! every mode and state: proven by control (TrustAddress), proven by a
//! declared address that IP discovery saw, declared but never seen,
//! announced without a key. Then a script of [`Step`]s: arbitrary datagrams
//! from eight members' and three strangers' addresses (one of them the
//! IPv4-mapped form of member 0's), well-formed discovery requests and
//! keepalives, packets sealed with a member's own key as its client would,
//! re-sends of those (as they were, or with a byte flipped), control
//! binding and unbinding an address for a session of another core,
//! removals, time passing (with the idle sweep).
//!
//! Every datagram is judged by what it is, not by the step that made it:
//! it is *authenticated* when the key of the member whose SSRC it names
//! opens it (the client keys are the server's), which gives its replay
//! identifier too. The harness keeps the identifiers the core accepted.
//! Checked after every datagram (issue 8):
//!
//! - **Unauthenticated** (arbitrary bytes, discovery, keepalives, forgeries,
//!   flipped bytes): at most one answer, to the source, never larger than
//!   the datagram, and only the IP discovery reply for an announced SSRC or
//!   the keepalive itself echoed to an address some session bound. No
//!   address moves and no event says proven, with one exception DESIGN.md
//!   makes (listen-only members): a keyed member without an address adopts
//!   the one it declared when discovery for its SSRC comes from there.
//!   Discovery may report [`Event::AddressObserved`] for its SSRC, nothing
//!   else.
//! - **Authenticated**: an identifier the core accepted before is refused
//!   (nothing sent, nothing moved): in every mode, for as long as the mode
//!   can promise it (ordered identifiers always; the unordered
//!   [`ReplayId::Recent`] ones while among the sender's last
//!   [`RecentSet::LEN`]). Media goes only to other members of the sender's
//!   channel, at their proven addresses, sealed so that their key opens it
//!   to the plaintext the sender sealed; RTCP never to a
//!   `xsalsa20_poly1305` receiver (its nonce would repeat). Only the
//!   sender's address may move, only to the source, only on an accepted
//!   packet with an ordered identifier (an unordered one never moves it),
//!   reported as [`Event::AddressProven`].
//! - Always: a datagram that is not work is counted as exactly one drop,
//!   and no drop counts as overload (junk never lowers health).
//! - Time: the idle sweep only expires addresses, each reported once.
//!
//! Clients behave as clients do: each sender's nonce counter, RTP sequence
//! number and timestamp move by at most 2^15 per packet (forwards or back)
//! from a start near a wrap, so an input (at most a few thousand packets)
//! never moves them 2^31: no window can tell that from a replay and no
//! client does it. The input format is [`steps`]'s (not derived with `arbitrary`), so
//! the seeds are written by [`encode`] and read back by the tests.

use std::cell::RefCell;
use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;

use dataplane::crypto::{self, ReplayId};
use dataplane::forward::{ForwardConfig, Forwarder, Outbox, RecentSet, MAX_DATAGRAM};
use dataplane::packet::{self, Datagram, Kind, DISCOVERY_LEN};
use shared::{Command, Counters, Event, Mode, SessionSpec};

use crate::crypto::ClientKey;

/// One thing that happens to the core.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Arbitrary bytes from one of the addresses.
    Raw {
        /// Index into the address table.
        from: u8,
        /// The datagram.
        bytes: Vec<u8>,
    },
    /// A packet built from `plain` with a session's SSRC, sealed with its
    /// own key: authenticated media, as its client sends it.
    Sealed {
        /// Index into the address table.
        from: u8,
        /// Index into the sessions.
        sender: u8,
        /// RTCP rather than RTP.
        rtcp: bool,
        /// How far the sender's nonce counter (and RTP sequence number,
        /// and timestamp 20 times as far) moves first.
        advance: i16,
        /// The packet (its header is fixed up to be the sender's).
        plain: Vec<u8>,
    },
    /// A sealed packet from earlier, sent again.
    Resend {
        /// Index into the address table.
        from: u8,
        /// Which earlier sealed packet.
        which: u8,
        /// XOR `mask` into byte `at` (modulo the length) first; 0: as it was.
        at: u16,
        /// See `at`.
        mask: u8,
    },
    /// A well-formed IP discovery request for a member's SSRC (even
    /// `what`), or a keepalive in the documented format (odd `what`).
    Probe {
        /// Index into the address table.
        from: u8,
        /// Which member (even), or the keepalive's counter (odd).
        what: u8,
    },
    /// Control binds (or unbinds) an address for a session of another core.
    Bind {
        /// Index into the address table.
        addr: u8,
        /// Unbind instead.
        unbind: bool,
    },
    /// Control removes a session.
    Remove {
        /// Index into the sessions.
        session: u8,
    },
    /// Time passes, then the idle sweep runs.
    Wait {
        /// Milliseconds.
        ms: u16,
    },
}

/// The steps an input holds. Each starts with a byte whose value modulo 7
/// picks the step; then its fields, little-endian, in declaration order
/// (`rtcp` and `unbind`: bit 0 of a byte); `bytes` and `plain` are
/// preceded by a 2-byte length (cut to what is left). Missing bytes read
/// as zero.
pub fn steps(mut data: &[u8]) -> Vec<Step> {
    let mut steps = Vec::new();
    while let Some((&tag, rest)) = data.split_first() {
        data = rest;
        let mut r = Reader(&mut data);
        steps.push(match tag % 7 {
            0 => Step::Raw {
                from: r.u8(),
                bytes: r.bytes(),
            },
            1 => Step::Sealed {
                from: r.u8(),
                sender: r.u8(),
                rtcp: r.u8() & 1 == 1,
                advance: r.u16() as i16,
                plain: r.bytes(),
            },
            2 => Step::Resend {
                from: r.u8(),
                which: r.u8(),
                at: r.u16(),
                mask: r.u8(),
            },
            3 => Step::Probe {
                from: r.u8(),
                what: r.u8(),
            },
            4 => Step::Bind {
                addr: r.u8(),
                unbind: r.u8() & 1 == 1,
            },
            5 => Step::Remove { session: r.u8() },
            _ => Step::Wait { ms: r.u16() },
        });
    }
    steps
}

/// The input that [`steps`] reads as `steps` (for seeds and tests).
pub fn encode(steps: &[Step]) -> Vec<u8> {
    let mut out = Vec::new();
    let bytes = |out: &mut Vec<u8>, b: &[u8]| {
        let len = u16::try_from(b.len()).expect("under 64 KiB");
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(b);
    };
    for step in steps {
        match step {
            Step::Raw { from, bytes: b } => {
                out.extend_from_slice(&[0, *from]);
                bytes(&mut out, b);
            }
            Step::Sealed {
                from,
                sender,
                rtcp,
                advance,
                plain,
            } => {
                out.extend_from_slice(&[1, *from, *sender, u8::from(*rtcp)]);
                out.extend_from_slice(&advance.to_le_bytes());
                bytes(&mut out, plain);
            }
            Step::Resend {
                from,
                which,
                at,
                mask,
            } => {
                out.extend_from_slice(&[2, *from, *which]);
                out.extend_from_slice(&at.to_le_bytes());
                out.push(*mask);
            }
            Step::Probe { from, what } => out.extend_from_slice(&[3, *from, *what]),
            Step::Bind { addr, unbind } => out.extend_from_slice(&[4, *addr, u8::from(*unbind)]),
            Step::Remove { session } => out.extend_from_slice(&[5, *session]),
            Step::Wait { ms } => {
                out.push(6);
                out.extend_from_slice(&ms.to_le_bytes());
            }
        }
    }
    out
}

struct Reader<'a, 'b>(&'a mut &'b [u8]);

impl Reader<'_, '_> {
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                *self.0 = rest;
                b
            }
            None => 0,
        }
    }

    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    fn bytes(&mut self) -> Vec<u8> {
        let len = usize::from(self.u16()).min(self.0.len());
        let (b, rest) = self.0.split_at(len);
        *self.0 = rest;
        b.to_vec()
    }
}

/// A member: SSRC, mode (None: announced only), channel, how its address
/// is set up, where its client's counter, sequence number and timestamp
/// start.
struct Member {
    ssrc: u32,
    mode: Option<Mode>,
    channel: u64,
    setup: Setup,
    start: (u32, u16, u32),
}

enum Setup {
    /// Control vouches for the home address.
    Trusted,
    /// Declares its home address and sends IP discovery from it.
    DeclaredAndSeen,
    /// Declares its home address but never sends discovery.
    DeclaredOnly,
    /// No key: only announced.
    Announced,
}

const MEMBERS: [Member; 8] = [
    member(1, Some(Mode::Aes256GcmRtpSize), 1, Setup::Trusted, 0),
    member(
        2,
        Some(Mode::XChaCha20Poly1305RtpSize),
        1,
        Setup::DeclaredAndSeen,
        u32::MAX - 40,
    ),
    member(3, Some(Mode::XSalsa20Poly1305Lite), 1, Setup::Trusted, 1),
    member(4, Some(Mode::XSalsa20Poly1305Suffix), 1, Setup::Trusted, 7),
    member(
        5,
        Some(Mode::XSalsa20Poly1305),
        1,
        Setup::DeclaredAndSeen,
        u32::MAX - 40,
    ),
    member(6, None, 1, Setup::Announced, 0),
    member(
        7,
        Some(Mode::Aes256GcmRtpSize),
        2,
        Setup::DeclaredOnly,
        1 << 31,
    ),
    member(
        8,
        Some(Mode::XSalsa20Poly1305),
        2,
        Setup::Trusted,
        0x8000_0000,
    ),
];

const fn member(ssrc: u32, mode: Option<Mode>, channel: u64, setup: Setup, start: u32) -> Member {
    Member {
        ssrc,
        mode,
        channel,
        setup,
        start: (start, start as u16, start),
    }
}

/// A session of another core that control binds addresses for.
const OTHER_SSRC: u32 = 1001;
/// Its counter slot (members use slots 0-7).
const OTHER_SLOT: u32 = 9;

/// Member `i`'s home address for `i < 8`, then three strangers (one IPv6,
/// one the IPv4-mapped form of member 0's address).
fn address(i: u8) -> SocketAddr {
    let i = i % 11;
    match i {
        0..=7 => SocketAddr::from(([192, 0, 2, 1 + i], 5000 + u16::from(i))),
        8 => "203.0.113.5:1".parse().expect("literal"),
        9 => "[2001:db8::1]:9".parse().expect("literal"),
        _ => "[::ffff:192.0.2.1]:5000".parse().expect("literal"),
    }
}

fn key_bytes(ssrc: u32) -> [u8; 32] {
    [ssrc as u8; 32]
}

thread_local! {
    /// Each member's client key, expanded once per process.
    static CLIENT_KEYS: RefCell<Vec<Option<ClientKey>>> = RefCell::new(
        MEMBERS
            .iter()
            .map(|m| {
                let key = key_bytes(m.ssrc);
                m.mode.map(|mode| ClientKey::new(mode, &key))
            })
            .collect(),
    );
}

/// Test time starts here (milliseconds).
const T0: u64 = 1_000_000;

/// One input.
pub fn run(data: &[u8]) {
    run_steps(steps(data));
}

/// One script of steps.
pub fn run_steps(steps: Vec<Step>) -> Reached {
    CLIENT_KEYS.with(|keys| {
        let mut core = Core::new();
        core.run(&keys.borrow(), steps);
        core.reached
    })
}

/// What a script reached (so tests can tell the seeds do what they are
/// for).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reached {
    /// Media datagrams sent to members.
    pub forwarded: usize,
    /// Answers to unauthenticated datagrams (discovery, keepalives).
    pub answered: usize,
    /// Authenticated packets refused as replays.
    pub replays: usize,
    /// Addresses proven by a packet.
    pub proven: usize,
    /// Addresses expired by the sweep.
    pub expired: usize,
}

/// A member's client: where its counter, sequence number and timestamp
/// are.
#[derive(Clone, Copy)]
struct Client {
    counter: u32,
    seq: u16,
    time: u32,
}

/// The replay identifiers the core accepted from one member.
#[derive(Default)]
struct Accepted {
    /// Ordered ones, by kind: they must never be accepted again.
    ordered: HashSet<(bool, u64)>,
    /// Unordered digests, the last [`RecentSet::LEN`]: refused while here.
    recent: VecDeque<u64>,
}

impl Accepted {
    fn key(kind: Kind, id: ReplayId) -> Option<(bool, u64)> {
        let rtcp = kind == Kind::Rtcp;
        match id {
            ReplayId::Counter(c) => Some((rtcp, u64::from(c))),
            ReplayId::Header { seq, timestamp } => {
                Some((rtcp, u64::from(seq) << 32 | u64::from(timestamp)))
            }
            ReplayId::Recent(_) => None,
        }
    }

    fn contains(&self, kind: Kind, id: ReplayId) -> bool {
        match (id, Self::key(kind, id)) {
            (ReplayId::Recent(d), _) => self.recent.contains(&d),
            (_, Some(key)) => self.ordered.contains(&key),
            (_, None) => false,
        }
    }

    fn insert(&mut self, kind: Kind, id: ReplayId) {
        match (id, Self::key(kind, id)) {
            (ReplayId::Recent(d), _) => {
                self.recent.push_back(d);
                if self.recent.len() > RecentSet::LEN {
                    self.recent.pop_front();
                }
            }
            (_, Some(key)) => {
                self.ordered.insert(key);
            }
            (_, None) => {}
        }
    }
}

/// An authenticated datagram: who sent it, its kind, identifier and
/// plaintext.
struct Authentic {
    sender: usize,
    kind: Kind,
    id: ReplayId,
    plain: Vec<u8>,
}

/// What came of one datagram: what was sent, the members' addresses
/// before and after, the events.
#[derive(Clone, Copy)]
struct Seen<'a> {
    sent: &'a [(SocketAddr, Vec<u8>)],
    before: &'a [Option<SocketAddr>],
    after: &'a [Option<SocketAddr>],
    events: &'a [Event],
}

struct Core {
    f: Forwarder,
    out: Outbox,
    now: u64,
    /// Datagrams made by `Sealed` steps, for `Resend`.
    sealed: Vec<Vec<u8>>,
    removed: [bool; MEMBERS.len()],
    clients: Vec<Client>,
    accepted: Vec<Accepted>,
    reached: Reached,
}

impl Core {
    fn new() -> Core {
        let mut core = Core {
            f: Forwarder::new(0, ForwardConfig::default(), Counters::in_memory(16)),
            out: Outbox::with_capacity(8),
            now: T0,
            sealed: Vec::new(),
            removed: [false; MEMBERS.len()],
            clients: MEMBERS
                .iter()
                .map(|m| Client {
                    counter: m.start.0,
                    seq: m.start.1,
                    time: m.start.2,
                })
                .collect(),
            accepted: MEMBERS.iter().map(|_| Accepted::default()).collect(),
            reached: Reached::default(),
        };
        for (i, m) in MEMBERS.iter().enumerate() {
            let home = address(i as u8);
            core.apply(Command::AnnounceSsrc {
                ssrc: m.ssrc,
                channel: m.channel,
                user: u64::from(m.ssrc) * 10,
            });
            if matches!(m.setup, Setup::DeclaredAndSeen) {
                let mut d = discovery(m.ssrc);
                core.out.clear();
                core.f.handle(core.now, home, &mut d, &mut core.out);
                assert_eq!(core.out.len(), 1, "discovery answered");
            }
            let Some(mode) = m.mode else { continue };
            let declared = match m.setup {
                Setup::DeclaredAndSeen | Setup::DeclaredOnly => Some(home),
                _ => None,
            };
            core.apply(Command::UpsertSession(SessionSpec {
                ssrc: m.ssrc,
                channel: m.channel,
                user: u64::from(m.ssrc) * 10,
                mode,
                key: key_bytes(m.ssrc),
                declared,
                slot: i as u32,
                video: Default::default(),
            }));
            if matches!(m.setup, Setup::Trusted) {
                core.apply(Command::TrustAddress {
                    ssrc: m.ssrc,
                    addr: home,
                });
            }
        }
        for (i, m) in MEMBERS.iter().enumerate() {
            let proven = matches!(m.setup, Setup::Trusted | Setup::DeclaredAndSeen);
            let home = address(i as u8);
            assert_eq!(core.f.address(m.ssrc), proven.then_some(home), "member {i}");
            assert_eq!(core.f.is_bound(home), proven, "member {i}");
        }
        core.f.events().clear();
        core
    }

    fn apply(&mut self, c: Command) {
        self.f.apply(self.now, c).expect("valid command");
    }

    fn run(&mut self, keys: &[Option<ClientKey>], steps: Vec<Step>) {
        for step in steps {
            match step {
                Step::Raw { from, bytes } => self.send(keys, address(from), bytes),
                Step::Sealed {
                    from,
                    sender,
                    rtcp,
                    advance,
                    plain,
                } => {
                    let i = usize::from(sender) % MEMBERS.len();
                    let Some(key) = &keys[i] else { continue };
                    let kind = if rtcp { Kind::Rtcp } else { Kind::Rtp };
                    let c = &mut self.clients[i];
                    c.counter = c.counter.wrapping_add(i32::from(advance) as u32);
                    c.seq = c.seq.wrapping_add(advance as u16);
                    c.time = c.time.wrapping_add((i32::from(advance) * 20) as u32);
                    let plain = packet_of(MEMBERS[i].ssrc, kind, *c, plain);
                    let Some(wire) = key.seal(kind, c.counter, &plain) else {
                        continue; // CSRCs or extension overrun the packet
                    };
                    self.sealed.push(wire.clone());
                    self.send(keys, address(from), wire);
                }
                Step::Resend {
                    from,
                    which,
                    at,
                    mask,
                } => {
                    if self.sealed.is_empty() {
                        continue;
                    }
                    let mut wire = self.sealed[usize::from(which) % self.sealed.len()].clone();
                    let at = usize::from(at) % wire.len();
                    wire[at] ^= mask;
                    self.send(keys, address(from), wire);
                }
                Step::Probe { from, what } => {
                    let bytes = if what % 2 == 0 {
                        discovery(MEMBERS[usize::from(what / 2) % MEMBERS.len()].ssrc).to_vec()
                    } else {
                        vec![what, 0, 0, 0, 0, 0, 0, 0]
                    };
                    self.send(keys, address(from), bytes);
                }
                Step::Bind { addr, unbind } => {
                    let addr = packet::canonical(address(addr));
                    self.apply(if unbind {
                        Command::UnbindAddress {
                            addr,
                            ssrc: OTHER_SSRC,
                        }
                    } else {
                        Command::BindAddress {
                            addr,
                            ssrc: OTHER_SSRC,
                            slot: OTHER_SLOT,
                        }
                    });
                    assert!(self.f.events().is_empty());
                }
                Step::Remove { session } => {
                    let i = usize::from(session) % MEMBERS.len();
                    self.removed[i] = true;
                    self.apply(Command::RemoveSession {
                        ssrc: MEMBERS[i].ssrc,
                    });
                    assert_eq!(self.f.address(MEMBERS[i].ssrc), None);
                    assert!(!self.f.has_session(MEMBERS[i].ssrc));
                    assert!(self.f.events().is_empty());
                }
                Step::Wait { ms } => self.wait(u64::from(ms)),
            }
        }
    }

    fn addresses(&self) -> Vec<Option<SocketAddr>> {
        MEMBERS.iter().map(|m| self.f.address(m.ssrc)).collect()
    }

    /// Time passes: the sweep may expire addresses, and does nothing else.
    fn wait(&mut self, ms: u64) {
        let before = self.addresses();
        self.now += ms;
        self.f.tick(self.now);
        let after = self.addresses();
        let events: Vec<Event> = self.f.events().drain(..).collect();
        let mut expired = Vec::new();
        for event in &events {
            let Event::AddressExpired { ssrc, addr } = *event else {
                panic!("the sweep reported {event:?}");
            };
            let j = index_of(ssrc).expect("a member");
            assert_eq!((before[j], after[j]), (Some(addr), None), "{event:?}");
            assert!(!expired.contains(&j), "expired twice: {event:?}");
            expired.push(j);
        }
        for (j, (was, now)) in before.iter().zip(&after).enumerate() {
            assert!(was == now || expired.contains(&j), "member {j} moved");
        }
        self.reached.expired += expired.len();
    }

    /// Hands one datagram to the core and checks what came of it.
    fn send(&mut self, keys: &[Option<ClientKey>], from: SocketAddr, mut bytes: Vec<u8>) {
        let source = packet::canonical(from);
        let request = bytes.clone();
        let class = packet::classify(&request);
        let authentic = self.authenticate(keys, class, &request);
        let before = self.addresses();
        let bound = self.f.is_bound(source);
        let drops = self.f.drops();
        let packets_in = self.f.stats().packets_in;

        // The call under test.
        self.out.clear();
        let work = self.f.handle(self.now, from, &mut bytes, &mut self.out);

        let after = self.addresses();
        let events: Vec<Event> = self.f.events().drain(..).collect();
        let sent: Vec<(SocketAddr, Vec<u8>)> =
            self.out.iter().map(|(to, b)| (to, b.to_vec())).collect();
        assert_eq!(self.f.stats().packets_in, packets_in + 1);
        let drops_now = self.f.drops();
        assert_eq!(
            drops_now.overload(),
            drops.overload(),
            "junk counted as load"
        );
        if !work {
            assert_eq!(drops_now.total(), drops.total() + 1, "one drop counted");
        }
        match authentic {
            None => {
                let seen = Seen {
                    sent: &sent,
                    before: &before,
                    after: &after,
                    events: &events,
                };
                self.check_unauthenticated(class, &request, source, bound, seen);
                self.reached.answered += sent.len();
                let proven = |e: &&Event| matches!(e, Event::AddressProven { .. });
                self.reached.proven += events.iter().filter(proven).count();
            }
            Some(a) => {
                let seen = Seen {
                    sent: &sent,
                    before: &before,
                    after: &after,
                    events: &events,
                };
                let replay = self.accepted[a.sender].contains(a.kind, a.id);
                self.check_authentic(keys, &a, source, work, seen);
                if work {
                    self.accepted[a.sender].insert(a.kind, a.id);
                }
                self.reached.forwarded += sent.len();
                self.reached.replays += usize::from(replay);
                self.reached.proven += usize::from(!events.is_empty());
            }
        }
    }

    /// Whether the member whose SSRC `bytes` names sent it: its key opens
    /// it (and the core would look at it: not over the size limit).
    fn authenticate(
        &self,
        keys: &[Option<ClientKey>],
        class: Datagram,
        bytes: &[u8],
    ) -> Option<Authentic> {
        let Datagram::Media { kind, ssrc } = class else {
            return None;
        };
        let sender = index_of(ssrc).filter(|&i| !self.removed[i])?;
        let key = keys[sender].as_ref()?;
        if bytes.len() > MAX_DATAGRAM {
            return None;
        }
        let mut copy = bytes.to_vec();
        let opened = crypto::open(key.state(), kind, &mut copy).ok()?;
        Some(Authentic {
            sender,
            kind,
            id: opened.replay,
            plain: copy[..opened.len].to_vec(),
        })
    }

    /// Unauthenticated: one answer at most, to the source, no larger, and
    /// only a discovery reply or a keepalive echo to a bound address; no
    /// address moved but a listen-only member's declared one.
    fn check_unauthenticated(
        &self,
        class: Datagram,
        request: &[u8],
        source: SocketAddr,
        bound: bool,
        seen: Seen<'_>,
    ) {
        let Seen {
            sent,
            before,
            after,
            events,
        } = seen;
        let len = request.len();
        assert!(sent.len() <= 1, "{len} bytes earned {} answers", sent.len());
        for (to, reply) in sent {
            let (to, reply) = (*to, &reply[..]);
            assert_eq!(to, source, "{class:?} from {source} answered to {to}");
            assert!(reply.len() <= len, "{len} bytes earned {}", reply.len());
            match class {
                Datagram::Discovery { ssrc } => {
                    let j = index_of(ssrc).expect("discovery answered for a member only");
                    assert!(!self.removed[j], "discovery answered for a removed SSRC");
                    let mut expected = [0; DISCOVERY_LEN];
                    packet::discovery_response(ssrc, source, &mut expected);
                    assert_eq!(reply, expected, "the discovery reply");
                }
                Datagram::Keepalive => {
                    assert!(bound, "keepalive echoed to {source}, bound to no session");
                    assert_eq!(reply, request, "a keepalive is echoed as it came");
                }
                other => panic!("{other:?} from {source} answered with {reply:?}"),
            }
        }
        // The one address an unauthenticated datagram may set.
        let adopted = |j: usize| {
            let m = &MEMBERS[j];
            class == (Datagram::Discovery { ssrc: m.ssrc })
                && before[j].is_none()
                && after[j] == Some(source)
                && m.mode.is_some()
                && declares(j, source)
        };
        for (j, (was, now)) in before.iter().zip(after).enumerate() {
            assert!(
                was == now || adopted(j),
                "member {j}: {was:?} -> {now:?} by {class:?} from {source}"
            );
        }
        for event in events {
            match *event {
                Event::AddressObserved { ssrc, addr } => {
                    assert_eq!(class, Datagram::Discovery { ssrc }, "{event:?}");
                    assert_eq!(addr, source, "{event:?}");
                }
                Event::AddressProven { ssrc, addr } => {
                    let j = index_of(ssrc).expect("a member");
                    assert!(adopted(j) && addr == source, "{event:?} by {class:?}");
                }
                ref other => panic!("{other:?} from an unauthenticated {class:?}"),
            }
        }
    }

    /// Authenticated media: a replay is refused; the rest goes only to
    /// other members' proven addresses, opening to the sender's plaintext,
    /// and moves at most the sender's address, when ordered.
    fn check_authentic(
        &self,
        keys: &[Option<ClientKey>],
        a: &Authentic,
        source: SocketAddr,
        work: bool,
        seen: Seen<'_>,
    ) {
        let Seen {
            sent,
            before,
            after,
            events,
        } = seen;
        let i = a.sender;
        if self.accepted[i].contains(a.kind, a.id) {
            assert!(!work, "member {i}'s {:?} {:?} accepted twice", a.kind, a.id);
            assert!(sent.is_empty(), "a replay was forwarded");
        }
        if !work {
            assert!(sent.is_empty(), "refused media was forwarded");
        }
        let mut receivers = Vec::new();
        for (to, bytes) in sent {
            let to = *to;
            let r = (0..MEMBERS.len()).find(|&r| {
                r != i
                    && !receivers.contains(&r)
                    && MEMBERS[r].channel == MEMBERS[i].channel
                    && !self.removed[r]
                    && after[r] == Some(to)
                    && keys[r]
                        .as_ref()
                        .is_some_and(|key| key.open(bytes).as_deref() == Some(&a.plain[..]))
            });
            let Some(r) = r else {
                panic!("member {i}'s {:?} went to {to}", a.kind);
            };
            if a.kind == Kind::Rtcp {
                assert_ne!(
                    MEMBERS[r].mode,
                    Some(Mode::XSalsa20Poly1305),
                    "RTCP sealed to a plain-mode receiver"
                );
            }
            receivers.push(r);
        }
        let moved = before[i] != after[i];
        for (j, (was, now)) in before.iter().zip(after).enumerate() {
            assert!(j == i || was == now, "member {i}'s packet moved member {j}");
        }
        if moved {
            assert!(work, "a refused packet moved member {i}");
            assert!(
                a.id.is_ordered(),
                "an unordered {:?} moved member {i}",
                a.id
            );
            assert_eq!(after[i], Some(source), "member {i} moved elsewhere");
        }
        let proven = Event::AddressProven {
            ssrc: MEMBERS[i].ssrc,
            addr: source,
        };
        let expected: &[Event] = if moved {
            std::slice::from_ref(&proven)
        } else {
            &[]
        };
        assert_eq!(events, expected, "events of member {i}'s packet");
    }
}

fn index_of(ssrc: u32) -> Option<usize> {
    MEMBERS.iter().position(|m| m.ssrc == ssrc)
}

/// Whether member `i` declared `addr` in Select Protocol.
fn declares(i: usize, addr: SocketAddr) -> bool {
    let m = &MEMBERS[i];
    matches!(m.setup, Setup::DeclaredAndSeen | Setup::DeclaredOnly) && address(i as u8) == addr
}

/// A discovery request for `ssrc`.
fn discovery(ssrc: u32) -> [u8; DISCOVERY_LEN] {
    let mut d = [0u8; DISCOVERY_LEN];
    d[..4].copy_from_slice(&[0, 1, 0, 70]);
    d[4..8].copy_from_slice(&ssrc.to_be_bytes());
    d
}

/// `bytes` made into a version-2 packet of `kind` from `ssrc`: at least a
/// header long, an RTCP type for RTCP, a non-RTCP payload type, the
/// client's sequence number and timestamp for RTP.
fn packet_of(ssrc: u32, kind: Kind, client: Client, p: Vec<u8>) -> Vec<u8> {
    let mut p = crate::crypto::plaintext(kind, &p);
    let ssrc_at = match kind {
        Kind::Rtp => {
            p[2..4].copy_from_slice(&client.seq.to_be_bytes());
            p[4..8].copy_from_slice(&client.time.to_be_bytes());
            8
        }
        Kind::Rtcp => 4,
    };
    p[ssrc_at..ssrc_at + 4].copy_from_slice(&ssrc.to_be_bytes());
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealed(sender: u8, rtcp: bool, advance: i16) -> Step {
        Step::Sealed {
            from: sender,
            sender,
            rtcp,
            advance,
            plain: b"\x80\x78payload".to_vec(),
        }
    }

    fn resend(from: u8, which: u8) -> Step {
        Step::Resend {
            from,
            which,
            at: 0,
            mask: 0,
        }
    }

    /// The sequence number moves 40,000 ahead (20,000 twice), then the
    /// first packet comes again: a 16-bit window reads it as 25,536 ahead.
    fn seq_wrap(sender: u8) -> Vec<Step> {
        vec![
            sealed(sender, false, 1),
            sealed(sender, false, 20_000),
            sealed(sender, false, 20_000),
            resend(sender, 0),
        ]
    }

    /// What the strict checks found on the packet path before issue 8's
    /// fixes (the inputs are `seeds/forward/finding-*`), as scripts: each
    /// failed then, and must pass now.
    fn findings() -> Vec<(&'static str, Vec<Step>)> {
        let (suffix, xsalsa, stranger) = (3, 4, 8);
        vec![
            (
                "keepalive-echoed-to-stranger",
                vec![
                    Step::Raw {
                        from: stranger,
                        bytes: vec![0xFF, 0x2D, 0x2D, 0xFF, 0x2D, 0xFF, 0xFF, 0],
                    },
                    Step::Probe {
                        from: stranger,
                        what: 1,
                    },
                ],
            ),
            (
                "suffix-rtcp-replay-forwarded-again",
                vec![sealed(suffix, true, 1), resend(0, 0)],
            ),
            (
                "xsalsa-rtcp-replay-moves-address",
                vec![sealed(xsalsa, true, 1), resend(0, 0)],
            ),
            (
                "suffix-rtp-header-flip-forwarded-again",
                vec![
                    sealed(suffix, false, 1),
                    Step::Resend {
                        from: suffix,
                        which: 0,
                        at: 3,
                        mask: 0x67,
                    },
                ],
            ),
            ("suffix-rtp-seq-wrap-forwarded-again", seq_wrap(suffix)),
            ("xsalsa-rtp-seq-wrap-forwarded-again", seq_wrap(xsalsa)),
        ]
    }

    /// Each finding, run as a fuzz input: refused, as issue 8 promises.
    #[test]
    fn findings_are_refused() {
        let failed: Vec<&str> = findings()
            .into_iter()
            .filter(|(_, steps)| std::panic::catch_unwind(|| run_steps(steps.clone())).is_err())
            .map(|(what, _)| what)
            .collect();
        assert!(failed.is_empty(), "{failed:#?}");
    }

    /// A call that reaches every kind of outcome: discovery proving a
    /// listen-only member, media in every mode (RTP and RTCP), NAT
    /// rebinding, echoed keepalives (also for a binding from control), a
    /// replay, a removal, and the idle sweep.
    fn call() -> Vec<Step> {
        let mut steps = vec![Step::Probe { from: 6, what: 12 }];
        for sender in [0, 1, 2, 3, 4, 6, 7] {
            steps.push(sealed(sender, false, 1));
            steps.push(sealed(sender, true, 1));
        }
        steps.extend([
            Step::Sealed {
                from: 9,
                sender: 0,
                rtcp: false,
                advance: 3,
                plain: b"\x80\x78moved".to_vec(),
            },
            Step::Probe { from: 1, what: 3 },
            Step::Bind {
                addr: 8,
                unbind: false,
            },
            Step::Probe { from: 8, what: 5 },
            Step::Bind {
                addr: 8,
                unbind: true,
            },
            Step::Probe { from: 8, what: 7 },
            resend(0, 0),
            Step::Remove { session: 2 },
            sealed(1, false, 1),
            Step::Wait { ms: 30_000 },
            sealed(1, false, 1),
            Step::Wait { ms: 35_000 },
        ]);
        steps
    }

    /// The seeds in `seeds/forward`, as scripts.
    fn seeds() -> Vec<(String, Vec<Step>)> {
        let findings = findings()
            .into_iter()
            .map(|(name, steps)| (format!("finding-{name}"), steps));
        findings.chain([("call".to_owned(), call())]).collect()
    }

    /// The seeds are these scripts as inputs, so the fuzzer starts from
    /// them (`FUZZ_WRITE_SEEDS=1` rewrites them), and the call reaches
    /// what it is for.
    #[test]
    fn seeds_are_the_scripts() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/seeds/forward");
        for (name, steps) in seeds() {
            let path = format!("{dir}/{name}");
            let input = encode(&steps);
            if std::env::var_os("FUZZ_WRITE_SEEDS").is_some() {
                std::fs::write(&path, &input).expect("writable seeds");
            }
            let seed = std::fs::read(&path).expect("the seed exists");
            assert_eq!(seed, input, "{path}");
            assert_eq!(super::steps(&seed), steps, "{path} decodes back");
        }
        let reached = run_steps(call());
        assert_eq!(reached.answered, 3, "discovery, two keepalive echoes");
        assert!(reached.forwarded >= 20, "{reached:?}");
        assert_eq!(reached.replays, 1);
        assert_eq!(reached.proven, 2, "listen-only by discovery, rebinding");
        assert!(reached.expired >= 3, "{reached:?}");
    }

    /// The checks can fail: a core that answered a stranger's keepalive,
    /// forwarded a replay or moved an address on an unordered packet would
    /// be caught. Here the harness is fed what such a core would do.
    #[test]
    fn the_checks_catch_what_they_are_for() {
        CLIENT_KEYS.with(|keys| {
            let keys = keys.borrow();
            let mut core = Core::new();
            let stranger = address(8);
            // A keepalive echoed to an unbound stranger.
            let ka = vec![1, 0, 0, 0, 0, 0, 0, 0];
            let before = core.addresses();
            let echo = [(stranger, ka.clone())];
            let seen = |sent, after, events| Seen {
                sent,
                before: &before,
                after,
                events,
            };
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                core.check_unauthenticated(
                    Datagram::Keepalive,
                    &ka,
                    stranger,
                    false,
                    seen(&echo, &before, &[]),
                );
            }));
            assert!(r.is_err(), "an echo to a stranger is caught");
            // A replayed packet accepted again.
            let suffix = 3;
            let key = keys[suffix].as_ref().unwrap();
            let c = core.clients[suffix];
            let plain = packet_of(MEMBERS[suffix].ssrc, Kind::Rtcp, c, vec![0x80, 200]);
            let wire = key.seal(Kind::Rtcp, c.counter, &plain).unwrap();
            let a = core
                .authenticate(&keys, packet::classify(&wire), &wire)
                .expect("authentic");
            assert!(!a.id.is_ordered());
            core.accepted[suffix].insert(a.kind, a.id);
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                core.check_authentic(&keys, &a, stranger, true, seen(&[], &before, &[]));
            }));
            assert!(r.is_err(), "a replay accepted twice is caught");
            // An unordered packet that moved its sender.
            core.accepted[suffix] = Accepted::default();
            let mut moved = before.clone();
            moved[suffix] = Some(stranger);
            let proven = [Event::AddressProven {
                ssrc: MEMBERS[suffix].ssrc,
                addr: stranger,
            }];
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                core.check_authentic(&keys, &a, stranger, true, seen(&[], &moved, &proven));
            }));
            assert!(
                r.is_err(),
                "an unordered packet moving an address is caught"
            );
        });
    }

    #[test]
    fn steps_round_trip() {
        let all = vec![
            Step::Raw {
                from: 3,
                bytes: vec![1, 2, 3],
            },
            sealed(1, true, -5),
            Step::Resend {
                from: 2,
                which: 7,
                at: 300,
                mask: 0x80,
            },
            Step::Probe { from: 9, what: 4 },
            Step::Bind {
                addr: 8,
                unbind: true,
            },
            Step::Remove { session: 6 },
            Step::Wait { ms: 61_000 },
        ];
        assert_eq!(steps(&encode(&all)), all);
        // Truncated: missing fields read as zero, lengths are cut.
        assert_eq!(
            steps(&[0, 4, 9, 0, 7]),
            vec![Step::Raw {
                from: 4,
                bytes: vec![7]
            }]
        );
        assert_eq!(steps(&[13]), vec![Step::Wait { ms: 0 }]);
    }
}
