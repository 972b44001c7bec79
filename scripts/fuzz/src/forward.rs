//! The whole per-datagram decision of one data-plane core.
//!
//! A [`Forwarder`] gets eight sessions in two channels through
//! [`Forwarder::apply`], in every mode and state: proven by control
//! (TrustAddress), proven by a declared address that IP discovery saw,
//! declared but never seen, announced without a key. Then a script of
//! [`Step`]s: arbitrary datagrams from eight members' and three strangers'
//! addresses, packets sealed with a member's own key, re-sends of those
//! (as they were, or with a byte flipped), removals, time passing.
//!
//! Holds after every step:
//!
//! - a datagram that is not authenticated media (arbitrary bytes) gets
//!   answers only to its source, none larger than itself, and moves no
//!   member's proven address (the one change allowed: a member without one
//!   adopts the address it declared when that is where discovery came from);
//! - media goes only to the proven address of another member of the
//!   sender's channel, sealed so that member's key opens it to the same
//!   plaintext the sender sealed.
//!
//! With `--features strict`, issue 8's promises too: a re-sent packet is
//! never forwarded again nor moves an address, and nothing is echoed to an
//! address no session is bound to (IP discovery replies excepted).

use std::cell::RefCell;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use dataplane::crypto::{self, KeyState, MAX_OVERHEAD};
use dataplane::forward::{Forwarder, Outbox};
use dataplane::packet::{Kind, DISCOVERY_LEN};
use shared::{Command, Mode, SessionSpec};

/// One thing that happens to the core.
#[derive(Debug, Clone, Arbitrary)]
pub enum Step {
    /// Arbitrary bytes from one of the addresses.
    Raw {
        /// Index into the address table.
        from: u8,
        /// The datagram.
        bytes: Vec<u8>,
    },
    /// A packet built from `plain` with a session's SSRC, sealed with its
    /// own key and counter: authenticated media.
    Sealed {
        /// Index into the address table.
        from: u8,
        /// Index into the sessions.
        sender: u8,
        /// RTCP rather than RTP.
        rtcp: bool,
        /// The nonce counter (the rtpsize and lite modes).
        counter: u32,
        /// The packet (its header is fixed up to be the sender's).
        plain: Vec<u8>,
    },
    /// A sealed packet from earlier, sent again.
    Resend {
        /// Index into the address table.
        from: u8,
        /// Which earlier sealed packet.
        which: u8,
        /// XOR `mask` into byte `at` (modulo the length) first.
        flip: Option<(u16, u8)>,
    },
    /// Control removes a session.
    Remove {
        /// Index into the sessions.
        session: u8,
    },
    /// Time passes.
    Wait {
        /// Milliseconds.
        ms: u16,
    },
}

/// A member: SSRC, mode (None: announced only), channel, how its address
/// is set up.
struct Member {
    ssrc: u32,
    mode: Option<Mode>,
    channel: u64,
    setup: Setup,
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
    member(1, Some(Mode::Aes256GcmRtpSize), 1, Setup::Trusted),
    member(
        2,
        Some(Mode::XChaCha20Poly1305RtpSize),
        1,
        Setup::DeclaredAndSeen,
    ),
    member(3, Some(Mode::XSalsa20Poly1305Lite), 1, Setup::Trusted),
    member(4, Some(Mode::XSalsa20Poly1305Suffix), 1, Setup::Trusted),
    member(5, Some(Mode::XSalsa20Poly1305), 1, Setup::DeclaredAndSeen),
    member(6, None, 1, Setup::Announced),
    member(7, Some(Mode::Aes256GcmRtpSize), 2, Setup::DeclaredOnly),
    member(8, Some(Mode::XSalsa20Poly1305), 2, Setup::Trusted),
];

const fn member(ssrc: u32, mode: Option<Mode>, channel: u64, setup: Setup) -> Member {
    Member {
        ssrc,
        mode,
        channel,
        setup,
    }
}

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
    /// Each member's key, as a client holds it, expanded once per process.
    static CLIENT_KEYS: RefCell<Vec<Option<KeyState>>> = RefCell::new(
        MEMBERS
            .iter()
            .map(|m| m.mode.map(|mode| KeyState::new(mode, &key_bytes(m.ssrc)).expect("key")))
            .collect(),
    );
}

/// The call under test.
fn handle(f: &mut Forwarder, now: Instant, from: SocketAddr, packet: &mut [u8], out: &mut Outbox) {
    // The core takes no clock yet; `now` is here for when it does.
    let _ = now;
    out.clear();
    f.handle(from, packet, out);
}

/// One input: a script of steps.
pub fn run(steps: Vec<Step>) {
    CLIENT_KEYS.with(|keys| Core::new().run(&keys.borrow(), steps));
}

struct Core {
    f: Forwarder,
    out: Outbox,
    now: Instant,
    /// Sealed packets sent so far: sender's index, plaintext, datagram.
    sealed: Vec<(usize, Vec<u8>, Vec<u8>)>,
    removed: [bool; MEMBERS.len()],
}

impl Core {
    fn new() -> Core {
        let mut core = Core {
            f: Forwarder::new(0),
            out: Outbox::with_capacity(8),
            now: Instant::now(),
            sealed: Vec::new(),
            removed: [false; MEMBERS.len()],
        };
        for (i, m) in MEMBERS.iter().enumerate() {
            let home = address(i as u8);
            core.apply(Command::AnnounceSsrc {
                ssrc: m.ssrc,
                channel: m.channel,
                user: u64::from(m.ssrc) * 10,
            });
            if matches!(m.setup, Setup::DeclaredAndSeen) {
                let mut d = [0u8; DISCOVERY_LEN];
                d[..4].copy_from_slice(&[0, 1, 0, 70]);
                d[4..8].copy_from_slice(&m.ssrc.to_be_bytes());
                handle(&mut core.f, core.now, home, &mut d, &mut core.out);
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
            }));
            if matches!(m.setup, Setup::Trusted) {
                core.apply(Command::TrustAddress {
                    ssrc: m.ssrc,
                    addr: home,
                });
            }
        }
        core.f.events().clear();
        core
    }

    fn apply(&mut self, c: Command) {
        self.f.apply(c).expect("valid command");
    }

    fn run(&mut self, keys: &[Option<KeyState>], steps: Vec<Step>) {
        for step in steps {
            match step {
                Step::Raw { from, bytes } => {
                    self.send_unauthenticated(address(from), bytes);
                }
                Step::Sealed {
                    from,
                    sender,
                    rtcp,
                    counter,
                    plain,
                } => {
                    let i = usize::from(sender) % MEMBERS.len();
                    let Some(key) = &keys[i] else { continue };
                    let kind = if rtcp { Kind::Rtcp } else { Kind::Rtp };
                    let plain = packet_of(MEMBERS[i].ssrc, kind, plain);
                    let mut wire = vec![0u8; plain.len() + MAX_OVERHEAD];
                    let Ok(n) = crypto::seal(key, kind, counter, &plain, &mut wire) else {
                        continue; // CSRCs or extension overrun the packet
                    };
                    wire.truncate(n);
                    self.sealed.push((i, plain.clone(), wire.clone()));
                    self.send_media(keys, address(from), i, &plain, wire);
                }
                Step::Resend { from, which, flip } => {
                    if self.sealed.is_empty() {
                        continue;
                    }
                    let (i, mut plain, mut wire) =
                        self.sealed[usize::from(which) % self.sealed.len()].clone();
                    if let Some((at, mask)) = flip {
                        let at = usize::from(at) % wire.len();
                        wire[at] ^= mask;
                    }
                    if cfg!(feature = "strict") {
                        self.send_unauthenticated(address(from), wire);
                    } else {
                        // The legacy modes leave the fixed header (12 bytes,
                        // 8 for RTCP) unauthenticated: a flip there may
                        // still open, to that header and the sealed body.
                        let clear = if kind_of(&plain) == Kind::Rtp { 12 } else { 8 };
                        plain[..clear].copy_from_slice(&wire[..clear]);
                        self.send_media(keys, address(from), i, &plain, wire);
                    }
                }
                Step::Remove { session } => {
                    let i = usize::from(session) % MEMBERS.len();
                    self.removed[i] = true;
                    self.apply(Command::RemoveSession {
                        ssrc: MEMBERS[i].ssrc,
                    });
                    assert_eq!(self.f.address(MEMBERS[i].ssrc), None);
                }
                Step::Wait { ms } => self.now += Duration::from_millis(u64::from(ms)),
            }
            self.f.events().clear();
        }
    }

    fn addresses(&self) -> Vec<Option<SocketAddr>> {
        MEMBERS.iter().map(|m| self.f.address(m.ssrc)).collect()
    }

    /// Arbitrary bytes: answers only to the source and no larger, no
    /// proven address moved (a declared one adopted at most).
    fn send_unauthenticated(&mut self, from: SocketAddr, mut bytes: Vec<u8>) {
        let before = self.addresses();
        let len = bytes.len();
        handle(&mut self.f, self.now, from, &mut bytes, &mut self.out);
        for (to, reply) in self.out.iter() {
            assert_eq!(to, from, "answered {len} bytes from {from} to {to}");
            assert!(reply.len() <= len, "{len} bytes earned {}", reply.len());
            if cfg!(feature = "strict") {
                let discovery = reply.len() == DISCOVERY_LEN && reply[..2] == [0, 2];
                assert!(
                    discovery || before.contains(&Some(from)),
                    "echo to {from}, bound to no session"
                );
            }
        }
        for (i, (was, now)) in before.iter().zip(self.addresses()).enumerate() {
            let adopted = was.is_none() && now == Some(from) && declares(i, from);
            assert!(
                *was == now || adopted,
                "member {i}: {was:?} -> {now:?} by {from}"
            );
        }
    }

    /// Authenticated media from member `i`: only to other members of its
    /// channel, at their proven addresses, opening to `plain`.
    fn send_media(
        &mut self,
        keys: &[Option<KeyState>],
        from: SocketAddr,
        i: usize,
        plain: &[u8],
        mut wire: Vec<u8>,
    ) {
        let kind = kind_of(plain);
        handle(&mut self.f, self.now, from, &mut wire, &mut self.out);
        for (to, bytes) in self.out.iter() {
            let opened_by = (0..MEMBERS.len()).find(|&r| {
                r != i
                    && MEMBERS[r].channel == MEMBERS[i].channel
                    && !self.removed[r]
                    && self.f.address(MEMBERS[r].ssrc) == Some(to)
                    && keys[r].as_ref().is_some_and(|key| {
                        let mut copy = bytes.to_vec();
                        crypto::open(key, kind, &mut copy).is_ok_and(|o| copy[..o.len] == *plain)
                    })
            });
            assert!(opened_by.is_some(), "member {i}'s packet went to {to}");
        }
    }
}

/// Whether member `i` declared `addr` in Select Protocol.
fn declares(i: usize, addr: SocketAddr) -> bool {
    let m = &MEMBERS[i];
    matches!(m.setup, Setup::DeclaredAndSeen | Setup::DeclaredOnly) && address(i as u8) == addr
}

/// `bytes` made into a version-2 packet of `kind` from `ssrc`: at least a
/// header long, an RTCP type for RTCP, a non-RTCP payload type for RTP.
fn packet_of(ssrc: u32, kind: Kind, mut p: Vec<u8>) -> Vec<u8> {
    let (min, ssrc_at) = match kind {
        Kind::Rtp => (12, 8),
        Kind::Rtcp => (8, 4),
    };
    if p.len() < min {
        p.resize(min, 0);
    }
    p[0] = 0x80 | (p[0] & 0x3F);
    p[1] = match kind {
        Kind::Rtp => p[1] & 0xBF, // payload type below 64
        Kind::Rtcp => 200 + p[1] % 5,
    };
    p[ssrc_at..ssrc_at + 4].copy_from_slice(&ssrc.to_be_bytes());
    p
}

fn kind_of(plain: &[u8]) -> Kind {
    if (200..=204).contains(&plain[1]) {
        Kind::Rtcp
    } else {
        Kind::Rtp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An RTP packet with sequence number `seq` (SSRC filled in later).
    fn rtp(seq: u16) -> Vec<u8> {
        let mut p = vec![0x80, 0x78];
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&[0, 0, 3, 0xC0, 0, 0, 0, 0]);
        p.extend_from_slice(b"opus");
        p
    }

    fn sealed(sender: u8, rtcp: bool, counter: u32, plain: Vec<u8>) -> Step {
        Step::Sealed {
            from: sender,
            sender,
            rtcp,
            counter,
            plain,
        }
    }

    /// Sequence numbers 0, 20000, 40000 (each ahead of the last), then 0
    /// again: 40000 behind reads as 25536 ahead.
    fn seq_wrap(sender: u8) -> Vec<Step> {
        vec![
            sealed(sender, false, 0, rtp(0)),
            sealed(sender, false, 1, rtp(20000)),
            sealed(sender, false, 2, rtp(40000)),
            Step::Resend {
                from: sender,
                which: 0,
                flip: None,
            },
        ]
    }

    /// What the strict checks found on the packet path (the minimised
    /// inputs are `seeds/forward/strict-*`), as scripts. They pass the
    /// default checks; with `--features strict` each fails until issue 8's
    /// fixes land, and must pass after.
    fn findings() -> Vec<(&'static str, Vec<Step>)> {
        let (suffix, xsalsa) = (3, 4);
        vec![
            (
                "a stranger's keepalive is echoed",
                vec![Step::Raw {
                    from: 8,
                    bytes: vec![0xFF, 0x2D, 0x2D, 0xFF, 0x2D, 0xFF, 0xFF, 0],
                }],
            ),
            (
                "suffix-mode RTCP (no replay id) replayed from another address is forwarded again and moves the sender",
                vec![
                    sealed(suffix, true, 7, vec![]),
                    Step::Resend { from: 0, which: 0, flip: None },
                ],
            ),
            (
                "xsalsa20_poly1305 RTCP replayed from another address is forwarded again and moves the sender",
                vec![
                    sealed(xsalsa, true, 7, vec![]),
                    Step::Resend { from: 0, which: 0, flip: None },
                ],
            ),
            (
                "suffix-mode RTP with its (unauthenticated) sequence number changed is forwarded again",
                vec![
                    sealed(suffix, false, 7, rtp(1)),
                    Step::Resend { from: suffix, which: 0, flip: Some((3, 0x67)) },
                ],
            ),
            (
                "suffix-mode RTP replayed once the 16-bit sequence moved 40000 ahead is forwarded again",
                seq_wrap(suffix),
            ),
            (
                "xsalsa20_poly1305 RTP replayed once the 16-bit sequence moved 40000 ahead is forwarded again",
                seq_wrap(xsalsa),
            ),
        ]
    }

    #[test]
    fn findings_are_refused() {
        let failed: Vec<&str> = findings()
            .into_iter()
            .filter(|(_, steps)| std::panic::catch_unwind(|| run(steps.clone())).is_err())
            .map(|(what, _)| what)
            .collect();
        assert!(failed.is_empty(), "{failed:#?}");
    }
}
