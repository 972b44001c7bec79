//! The forwarding decision: one received datagram and the core's session
//! table in, datagrams to send (in a caller-owned [`Outbox`]) and events
//! out. No I/O, no clock (time comes in as monotonic milliseconds), no
//! allocation per packet once the outbox and the tables have grown to the
//! core's working size.
//!
//! # What a stranger can do
//!
//! Anyone can send any datagram from any (spoofed) source. Here is what it
//! earns them:
//!
//! - **IP discovery** for an announced SSRC is answered with a reply of the
//!   same size, within a budget per SSRC and per source address. It is
//!   remembered as an *observation* ([`Event::AddressObserved`]) and never
//!   makes the address trusted, never moves one in use.
//! - **Keepalives** (the documented 8-byte format only) are echoed, same
//!   size, only to an address some session *proved*, within the source's
//!   budget. Anything else gets no answer at all.
//! - **Media** changes nothing unless it authenticates with the sender's
//!   key and passes replay protection ([`crate::crypto::ReplayId`]).
//!
//! An address is *proven* ([`Event::AddressProven`]) by an authenticated,
//! ordered packet from it, or by the address the client declared in Select
//! Protocol matching a discovery observation (so listen-only members hear
//! the call from the start). Media goes only to proven addresses, and stops
//! ([`Event::AddressExpired`]) when nothing came from one for
//! [`ForwardConfig::idle_ms`]: neither authenticated media nor keepalives.

use std::collections::{HashSet, VecDeque};
use std::hash::BuildHasher;
use std::net::SocketAddr;

use rustc_hash::FxHashMap;
use shared::{
    Command, CoreStats, Counters, DropReason, Drops, Event, Mode, SessionSpec, VideoSpec,
};

use crate::crypto::{self, CryptoError, KeyState, ReplayId, MAX_OVERHEAD};
use crate::packet::{self, Datagram, Kind, DISCOVERY_LEN};

/// Bytes of one outbox slot (and the receive buffer the glue uses).
pub const SLOT_BYTES: usize = 2048;
/// The largest datagram accepted; anything longer is malformed (it could
/// not be re-sealed into a slot in every mode).
pub const MAX_DATAGRAM: usize = SLOT_BYTES - MAX_OVERHEAD;

/// Nonce counters a core reserves for a receiver at a time: one store to
/// the shared counter table per this many packets sealed, and the most a
/// restarted core skips ahead.
pub const COUNTER_BLOCK: u64 = 1024;

/// Discovery observations kept per SSRC: a stranger's spoofed discovery
/// cannot push the member's own out before its Select Protocol arrives
/// (the per-SSRC budget bounds how many a stranger gets in).
const OBSERVATIONS: usize = 4;

/// Entries of the per-source answer budget table (a power of two).
const SOURCE_BUCKETS: usize = 4096;

/// Events kept for the ring at most; past it, observations (the only
/// events strangers can cause) are not queued.
const MAX_QUEUED_EVENTS: usize = 4096;

/// How often idle addresses are looked for, milliseconds.
const SWEEP_MS: u64 = 1000;
/// Sessions one [`Forwarder::tick`] looks at for idleness.
const SWEEP_CHUNK: usize = 256;

/// A token budget: `burst` at once, refilled at `per_second`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Answers allowed at once.
    pub burst: u32,
    /// Answers per second, sustained.
    pub per_second: u32,
}

/// How a core treats its peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForwardConfig {
    /// A proven address that nothing came from (authenticated media,
    /// keepalives) for this long stops receiving, milliseconds. Default
    /// 60 000 (twelve missed 5-second keepalives).
    pub idle_ms: u64,
    /// IP discovery replies per SSRC. Default burst 8, 2 per second.
    pub per_ssrc: Budget,
    /// Discovery replies and keepalive echoes per source address. Default
    /// burst 8, 4 per second.
    pub per_source: Budget,
}

impl Default for ForwardConfig {
    fn default() -> Self {
        ForwardConfig {
            idle_ms: 60_000,
            per_ssrc: Budget {
                burst: 8,
                per_second: 2,
            },
            per_source: Budget {
                burst: 8,
                per_second: 4,
            },
        }
    }
}

/// Datagrams to send, in reusable fixed-size slots. Clearing keeps the
/// slots, so a core that has seen its largest channel never allocates here
/// again.
#[derive(Debug)]
pub struct Outbox {
    slots: Vec<[u8; SLOT_BYTES]>,
    entries: Vec<(SocketAddr, usize)>,
}

impl Outbox {
    /// An outbox with `capacity` slots allocated up front.
    pub fn with_capacity(capacity: usize) -> Self {
        Outbox {
            slots: vec![[0; SLOT_BYTES]; capacity],
            entries: Vec::with_capacity(capacity),
        }
    }

    /// Forgets every queued datagram (keeps the slots).
    pub fn clear(&mut self) {
        self.entries.clear();
    }

    /// Number of queued datagrams.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The queued datagram at `i`: destination and bytes.
    pub fn get(&self, i: usize) -> Option<(SocketAddr, &[u8])> {
        let (addr, len) = *self.entries.get(i)?;
        Some((addr, &self.slots[i][..len]))
    }

    /// Every queued datagram, in order.
    pub fn iter(&self) -> impl Iterator<Item = (SocketAddr, &[u8])> + '_ {
        self.entries
            .iter()
            .zip(&self.slots)
            .map(|(&(addr, len), slot)| (addr, &slot[..len]))
    }

    /// Fills the next slot with `fill` (which returns the length written)
    /// and queues it for `to`; nothing is queued if `fill` fails.
    fn push<E>(
        &mut self,
        to: SocketAddr,
        fill: impl FnOnce(&mut [u8; SLOT_BYTES]) -> Result<usize, E>,
    ) -> Result<(), E> {
        let i = self.entries.len();
        if i == self.slots.len() {
            self.slots.push([0; SLOT_BYTES]);
        }
        let len = fill(&mut self.slots[i])?;
        self.entries.push((to, len));
        Ok(())
    }

    /// Queues an answer that is a copy of (at most) the datagram it
    /// answers.
    fn push_copy(&mut self, to: SocketAddr, bytes: &[u8]) {
        let _ = self.push::<()>(to, |slot| {
            slot[..bytes.len()].copy_from_slice(bytes);
            Ok(bytes.len())
        });
    }
}

/// A 64-entry sliding window over the 32-bit nonce counter.
#[derive(Debug, Clone, Default)]
pub struct ReplayWindow {
    /// Highest value accepted so far.
    top: u32,
    /// Bit `i` set: `top - i` was accepted.
    seen: u64,
    started: bool,
}

impl ReplayWindow {
    /// Accepts `counter` once; rejects repeats and values 64 or more
    /// behind the highest seen. Any starting value is accepted. A value up
    /// to 2^31 ahead is new (only the key holder can make one).
    pub fn accept(&mut self, counter: u32) -> bool {
        let delta = i64::from(counter.wrapping_sub(self.top) as i32);
        if !self.started {
            self.started = true;
            self.top = counter;
            self.seen = 1;
            return true;
        }
        if delta > 0 {
            self.seen = if delta >= 64 { 0 } else { self.seen << delta };
            self.seen |= 1;
            self.top = counter;
            return true;
        }
        let age = -delta;
        if age >= 64 || self.seen & (1 << age) != 0 {
            return false;
        }
        self.seen |= 1 << age;
        true
    }
}

/// Replay protection for `xsalsa20_poly1305`, whose nonce is the RTP
/// header: the sequence number orders packets within a 64-packet window,
/// and the timestamp (which only grows with the sequence number) tells a
/// new packet from one replayed after the 16-bit sequence number wrapped.
/// A packet ahead in sequence but behind in time, or behind in sequence
/// but outside the times of its accepted neighbours, is a replay.
#[derive(Debug, Clone)]
pub struct HeaderWindow {
    top: u16,
    top_time: u32,
    /// Bit `i` set: sequence `top - i` was accepted.
    seen: u64,
    /// Timestamps of the accepted packets, by sequence number mod 64.
    times: [u32; 64],
    started: bool,
}

impl Default for HeaderWindow {
    fn default() -> Self {
        HeaderWindow {
            top: 0,
            top_time: 0,
            seen: 0,
            times: [0; 64],
            started: false,
        }
    }
}

/// `a` is before `b` on the wrapping 32-bit RTP clock.
fn time_before(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

impl HeaderWindow {
    /// Accepts (`seq`, `time`) once, or rejects it as a replay.
    pub fn accept(&mut self, seq: u16, time: u32) -> bool {
        if !self.started {
            self.started = true;
            self.top = seq;
            self.top_time = time;
            self.seen = 1;
            self.times[usize::from(seq) % 64] = time;
            return true;
        }
        let delta = i32::from(seq.wrapping_sub(self.top) as i16);
        if delta > 0 {
            if time_before(time, self.top_time) {
                return false; // an old packet seen again past the wrap
            }
            self.seen = if delta >= 64 { 0 } else { self.seen << delta };
            self.seen |= 1;
            self.top = seq;
            self.top_time = time;
            self.times[usize::from(seq) % 64] = time;
            return true;
        }
        let age = (-delta) as u32;
        if age >= 64 || self.seen & (1 << age) != 0 {
            return false;
        }
        // Between its accepted neighbours in time, or it is not what the
        // sender sent at that sequence number.
        let at = |a: u32| self.times[usize::from(self.top.wrapping_sub(a as u16)) % 64];
        if let Some(older) = (age + 1..64).find(|a| self.seen & (1 << a) != 0) {
            if time_before(time, at(older)) {
                return false;
            }
        }
        if let Some(newer) = (0..age).rev().find(|a| self.seen & (1 << a) != 0) {
            if time_before(at(newer), time) {
                return false;
            }
        }
        self.seen |= 1 << age;
        self.times[usize::from(seq) % 64] = time;
        true
    }
}

/// The last [`RecentSet::LEN`] unordered replay digests of a sender
/// (suffix-mode nonces, plain-mode RTCP MACs): a replay within them is
/// caught, an older one is not (README "Security" says so).
#[derive(Debug, Clone)]
pub struct RecentSet {
    digests: [u64; RecentSet::LEN],
    next: usize,
}

impl Default for RecentSet {
    fn default() -> Self {
        RecentSet {
            digests: [0; RecentSet::LEN],
            next: 0,
        }
    }
}

impl RecentSet {
    /// Digests remembered (about 5 s of one sender's audio).
    pub const LEN: usize = 256;

    /// Accepts `digest` once among the last [`RecentSet::LEN`].
    pub fn accept(&mut self, digest: u64) -> bool {
        if self.digests.contains(&digest) {
            return false;
        }
        self.digests[self.next] = digest;
        self.next = (self.next + 1) % Self::LEN;
        true
    }
}

/// A token bucket in milli-tokens, time in milliseconds.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    milli: u64,
    at: u64,
}

impl Bucket {
    fn full(budget: Budget, now: u64) -> Bucket {
        Bucket {
            milli: u64::from(budget.burst) * 1000,
            at: now,
        }
    }

    fn take(&mut self, budget: Budget, now: u64) -> bool {
        let elapsed = now.saturating_sub(self.at);
        self.at = self.at.max(now);
        self.milli = (self.milli + elapsed * u64::from(budget.per_second))
            .min(u64::from(budget.burst) * 1000);
        if self.milli >= 1000 {
            self.milli -= 1000;
            true
        } else {
            false
        }
    }
}

/// Answer budgets per source address in a fixed table: a source hashes to
/// one entry (with a per-core random key, so nobody can aim at another's
/// entry); a new source taking an entry starts with a full bucket. Bounded
/// memory whatever the number of sources; a flood of distinct sources is
/// bounded by the per-SSRC budgets instead.
struct SourceBudgets {
    hasher: std::collections::hash_map::RandomState,
    entries: Box<[(u64, Bucket); SOURCE_BUCKETS]>,
}

impl std::fmt::Debug for SourceBudgets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SourceBudgets")
    }
}

impl SourceBudgets {
    fn new() -> Self {
        SourceBudgets {
            hasher: Default::default(),
            entries: Box::new([(0, Bucket { milli: 0, at: 0 }); SOURCE_BUCKETS]),
        }
    }

    fn take(&mut self, source: SocketAddr, budget: Budget, now: u64) -> bool {
        let tag = self.hasher.hash_one(source) | 1; // never 0: 0 marks a free entry
        let entry = &mut self.entries[tag as usize % SOURCE_BUCKETS];
        if entry.0 != tag {
            *entry = (tag, Bucket::full(budget, now));
        }
        entry.1.take(budget, now)
    }
}

/// Where an address is bound: the session that proved it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Binding {
    ssrc: u32,
    slot: u32,
}

/// One session (an audio SSRC) on this core. The fields fan-out reads for every receiver of every
/// packet (whether it is held or takes video, where it is, its key, its
/// outgoing counters) come first, in declared order from a cache-line
/// boundary, so that a receiver costs two lines rather than a line per
/// field across the kilobyte; the rest (the sender's replay windows, what
/// discovery saw) follows.
#[derive(Debug)]
#[repr(C, align(64))]
struct Session {
    /// The member left the call but may resume ([`Command::HoldSession`]):
    /// nothing is forwarded to or from it.
    held: bool,
    /// The session's counter slot.
    slot: u32,
    /// Proven address: media is sent here.
    addr: Option<SocketAddr>,
    /// Next nonce counter to seal with for this member, and the counter
    /// up to which the shared table reserves them.
    out_next: u64,
    out_reserved: u64,
    /// `out_next` when the key was set: 2^32 counters later the nonce
    /// space of the key is spent and nothing more is sealed to it.
    out_first: u64,
    /// Its video SSRCs, and whether it receives the others' video.
    video: VideoSpec,
    /// Key and mode (after Select Protocol); `None` while only announced.
    key: Option<KeyState>,
    channel: u64,
    /// When authenticated media last came from `addr` (or it was proven).
    heard: u64,
    user: u64,
    /// Mode and a keyed digest of the key, to tell a re-push of the same
    /// session from a new key without keeping another copy of the key.
    key_id: Option<(Mode, u64)>,
    /// What the client declared in Select Protocol.
    declared: Option<SocketAddr>,
    /// Where its last IP discovery requests came from (unauthenticated).
    observed: [Option<SocketAddr>; OBSERVATIONS],
    rtp_counters: ReplayWindow,
    rtcp_counters: ReplayWindow,
    headers: HeaderWindow,
    /// Unordered replay digests, for the modes that have them.
    recent: Option<Box<RecentSet>>,
    /// The SSRC's discovery-reply budget.
    answers: Bucket,
}

/// A video or RTX SSRC of a session (its owner): media on it is the
/// owner's, opened with the owner's key and counted in the owner's
/// replay windows, except for the RTP-header window of
/// `xsalsa20_poly1305`, whose nonce is the header itself and so names the
/// SSRC: each stream has its own sequence numbers and clock.
#[derive(Debug, Default)]
struct Alias {
    owner: u32,
    headers: HeaderWindow,
}

impl Session {
    fn new(channel: u64, user: u64, budget: Budget, now: u64) -> Self {
        Session {
            channel,
            user,
            key: None,
            key_id: None,
            slot: 0,
            declared: None,
            observed: [None; OBSERVATIONS],
            addr: None,
            heard: now,
            rtp_counters: ReplayWindow::default(),
            rtcp_counters: ReplayWindow::default(),
            headers: HeaderWindow::default(),
            recent: None,
            held: false,
            video: VideoSpec::default(),
            out_next: 0,
            out_reserved: 0,
            out_first: 0,
            answers: Bucket::full(budget, now),
        }
    }

    /// Whether discovery saw the declared address.
    fn declared_observed(&self) -> bool {
        self.declared
            .is_some_and(|d| self.observed.contains(&Some(d)))
    }

    /// Checks and records a replay identifier.
    fn accept(&mut self, kind: Kind, id: ReplayId) -> bool {
        match (id, kind) {
            (ReplayId::Counter(c), Kind::Rtp) => self.rtp_counters.accept(c),
            (ReplayId::Counter(c), Kind::Rtcp) => self.rtcp_counters.accept(c),
            (ReplayId::Header { seq, timestamp }, _) => self.headers.accept(seq, timestamp),
            (ReplayId::Recent(d), _) => self.recent.get_or_insert_with(Default::default).accept(d),
        }
    }
}

/// A command could not be applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    /// The session's key could not be set up (e.g. AES-GCM without AES-NI);
    /// the session stays without a key.
    #[error("session {ssrc}: {source}")]
    Key {
        /// The session's SSRC.
        ssrc: u32,
        /// What went wrong.
        source: CryptoError,
    },
    /// The session's counter slot is outside the region's table; the
    /// session stays without a key (nonces could not be kept unique).
    #[error("session {ssrc}: counter slot {slot} out of range")]
    Slot {
        /// The session's SSRC.
        ssrc: u32,
        /// The slot given.
        slot: u32,
    },
}

/// One core's sessions, channels, counters and pending events.
#[derive(Debug)]
pub struct Forwarder {
    core: u32,
    config: ForwardConfig,
    /// By SSRC. Fx hashing: the keys are control's random SSRCs and
    /// channel numbers (packets only look them up, never insert), so a
    /// keyed hash buys nothing on the per-packet path.
    ///
    /// Boxed: a session is about a kilobyte (its cipher state and replay
    /// windows), so the table itself stays small enough to stay in cache
    /// (a lookup then costs one miss, on the session, not one on a
    /// kilobyte-wide bucket) and growing it moves pointers, not sessions.
    sessions: FxHashMap<u32, Box<Session>>,
    /// Video and RTX SSRCs, to the session that sends on them.
    aliases: FxHashMap<u32, Alias>,
    channels: FxHashMap<u64, Vec<u32>>,
    /// Every proven address on the server (this core's sessions and, told
    /// by control, other cores'): who may get a keepalive echo. Inserted
    /// only by control or an authenticated packet, never by a stranger.
    bound: FxHashMap<SocketAddr, Binding>,
    counters: Counters,
    sources: SourceBudgets,
    /// Keys the digests that tell one session key from another.
    key_hasher: std::collections::hash_map::RandomState,
    stats: CoreStats,
    drops: Drops,
    events: VecDeque<Event>,
    /// When idle addresses are next looked for.
    next_sweep: u64,
    /// The sessions of the sweep under way, and how far it got.
    sweep: Vec<u32>,
    sweep_at: usize,
    /// Between [`Command::ResyncBegin`] and [`Command::ResyncEnd`]: the
    /// sessions and bindings the new control has not named again yet.
    unconfirmed: Option<Unconfirmed>,
}

/// What a resync has not confirmed yet.
#[derive(Debug, Default)]
struct Unconfirmed {
    sessions: HashSet<u32>,
    bound: HashSet<SocketAddr>,
}

impl Forwarder {
    /// An empty forwarder for core `core`, keeping nonce marks in
    /// `counters` (the region's table, or [`Counters::in_memory`]).
    pub fn new(core: u32, config: ForwardConfig, counters: Counters) -> Self {
        Forwarder {
            core,
            config,
            sessions: FxHashMap::with_capacity_and_hasher(1024, Default::default()),
            aliases: FxHashMap::with_capacity_and_hasher(64, Default::default()),
            channels: FxHashMap::with_capacity_and_hasher(256, Default::default()),
            bound: FxHashMap::with_capacity_and_hasher(1024, Default::default()),
            counters,
            sources: SourceBudgets::new(),
            key_hasher: Default::default(),
            stats: CoreStats {
                core,
                ..CoreStats::default()
            },
            drops: Drops::default(),
            events: VecDeque::with_capacity(256),
            next_sweep: 0,
            sweep: Vec::new(),
            sweep_at: 0,
            unconfirmed: None,
        }
    }

    /// The core index.
    pub fn core(&self) -> u32 {
        self.core
    }

    /// Cumulative statistics, with the current session count.
    pub fn stats(&self) -> CoreStats {
        CoreStats {
            sessions: self.sessions.len() as u32,
            ..self.stats.clone()
        }
    }

    /// Cumulative drops by reason.
    pub fn drops(&self) -> Drops {
        self.drops
    }

    /// Events waiting for the event ring; the glue pops from the front and
    /// leaves what the ring would not take.
    pub fn events(&mut self) -> &mut VecDeque<Event> {
        &mut self.events
    }

    /// Counts a datagram the glue sent.
    pub fn note_sent(&mut self, bytes: usize) {
        self.stats.packets_out += 1;
        self.stats.bytes_out += bytes as u64;
    }

    /// Counts a datagram the kernel refused.
    pub fn note_send_failed(&mut self) {
        self.drop(DropReason::SendFailed);
    }

    /// Records the kernel's count of datagrams dropped because the
    /// socket's receive buffer was full (cumulative, from the socket).
    pub fn note_overflow(&mut self, total: u64) {
        let i = DropReason::Overflow as usize;
        self.drops.0[i] = self.drops.0[i].max(total);
    }

    /// Adds time spent handling packets.
    pub fn note_busy(&mut self, ns: u64) {
        self.stats.busy_ns += ns;
    }

    /// The proven address of `ssrc`, if any.
    pub fn address(&self, ssrc: u32) -> Option<SocketAddr> {
        self.sessions.get(&ssrc)?.addr
    }

    /// Whether `ssrc` is announced or keyed on this core.
    pub fn has_session(&self, ssrc: u32) -> bool {
        self.sessions.contains_key(&ssrc)
    }

    /// Whether keepalives from `addr` are echoed (some session proved it).
    pub fn is_bound(&self, addr: SocketAddr) -> bool {
        self.bound.contains_key(&packet::canonical(addr))
    }

    fn drop(&mut self, reason: DropReason) {
        self.drops.add(reason, 1);
    }

    fn event(&mut self, event: Event) {
        if matches!(event, Event::AddressObserved { .. }) && self.events.len() >= MAX_QUEUED_EVENTS
        {
            return; // informational, and strangers can cause them
        }
        self.events.push_back(event);
    }

    /// Applies one command from control at time `now`.
    pub fn apply(&mut self, now: u64, command: Command) -> Result<(), ApplyError> {
        match command {
            Command::AnnounceSsrc {
                ssrc,
                channel,
                user,
            } => {
                self.join(ssrc, channel, now).user = user;
                Ok(())
            }
            Command::UpsertSession(spec) => self.upsert(now, &spec),
            Command::RemoveSession { ssrc } => {
                self.remove(ssrc);
                Ok(())
            }
            Command::HoldSession { ssrc, held } => {
                if let Some(s) = self.sessions.get_mut(&ssrc) {
                    s.held = held;
                }
                Ok(())
            }
            Command::RemoveChannel { channel } => {
                for ssrc in self.channels.get(&channel).cloned().unwrap_or_default() {
                    self.remove(ssrc);
                }
                Ok(())
            }
            Command::TrustAddress { ssrc, addr } => {
                // Control vouches for an address a core proved before (this
                // data plane restarted, or a new control resyncs it); an
                // unknown SSRC is ignored.
                // An address the core holds already wins: it is at least
                // as recent as control's (the client may have moved since
                // the new control's state was saved), and is confirmed.
                let addr = packet::canonical(addr);
                match self.sessions.get(&ssrc).map(|s| (s.addr, s.slot)) {
                    Some((None, _)) => {
                        self.set_address(ssrc, addr, now);
                    }
                    Some((Some(current), slot)) => self.bind(current, Binding { ssrc, slot }),
                    None => {}
                }
                Ok(())
            }
            Command::BindAddress { addr, ssrc, slot } => {
                self.bind(packet::canonical(addr), Binding { ssrc, slot });
                Ok(())
            }
            Command::UnbindAddress { addr, ssrc } => {
                self.unbind(Some(packet::canonical(addr)), ssrc);
                Ok(())
            }
            Command::ResyncBegin => {
                self.unconfirmed = Some(Unconfirmed {
                    sessions: self.sessions.keys().copied().collect(),
                    bound: self.bound.keys().copied().collect(),
                });
                Ok(())
            }
            Command::ResyncEnd => {
                let Some(left) = self.unconfirmed.take() else {
                    return Ok(());
                };
                for ssrc in left.sessions {
                    self.remove(ssrc);
                }
                for addr in left.bound {
                    self.bound.remove(&addr);
                }
                // Tell the new control where each session's media goes
                // now: a client that moved after its state was saved is
                // bound anew on the other cores.
                for (&ssrc, s) in &self.sessions {
                    if let Some(addr) = s.addr {
                        self.events.push_back(Event::AddressProven { ssrc, addr });
                    }
                }
                Ok(())
            }
        }
    }

    /// Binds `addr` (a resync confirms it).
    fn bind(&mut self, addr: SocketAddr, binding: Binding) {
        if let Some(u) = &mut self.unconfirmed {
            u.bound.remove(&addr);
        }
        self.bound.insert(addr, binding);
    }

    /// The session for `ssrc`, created if new, as a member of `channel`
    /// (a resync confirms it).
    fn join(&mut self, ssrc: u32, channel: u64, now: u64) -> &mut Session {
        if let Some(u) = &mut self.unconfirmed {
            u.sessions.remove(&ssrc);
        }
        let old_channel = self.sessions.get(&ssrc).map(|s| s.channel);
        if old_channel != Some(channel) {
            if let Some(old) = old_channel {
                self.leave(ssrc, old);
            }
            self.channels.entry(channel).or_default().push(ssrc);
        }
        let budget = self.config.per_ssrc;
        let session = self
            .sessions
            .entry(ssrc)
            .or_insert_with(|| Box::new(Session::new(channel, 0, budget, now)));
        session.channel = channel;
        session
    }

    fn leave(&mut self, ssrc: u32, channel: u64) {
        if let Some(members) = self.channels.get_mut(&channel) {
            members.retain(|&m| m != ssrc);
            if members.is_empty() {
                self.channels.remove(&channel);
            }
        }
    }

    fn remove(&mut self, ssrc: u32) {
        if let Some(s) = self.sessions.remove(&ssrc) {
            self.leave(ssrc, s.channel);
            self.unbind(s.addr, ssrc);
            for alias in s.video.ssrcs() {
                self.aliases.remove(&alias);
            }
        }
    }

    /// Sets `ssrc`'s video; `fresh`: under a new key, so the aliases'
    /// replay windows start over. An alias that is some session's own
    /// SSRC is ignored (control never hands one out twice).
    fn set_video(&mut self, ssrc: u32, video: VideoSpec, fresh: bool) {
        let Some(s) = self.sessions.get_mut(&ssrc) else {
            return;
        };
        let old = std::mem::replace(&mut s.video, video);
        for alias in old.ssrcs().filter(|a| !video.aliases.contains(a)) {
            if self.aliases.get(&alias).is_some_and(|a| a.owner == ssrc) {
                self.aliases.remove(&alias);
            }
        }
        for alias in video.ssrcs() {
            if self.sessions.contains_key(&alias) {
                continue;
            }
            let entry = self.aliases.entry(alias).or_default();
            if fresh || entry.owner != ssrc {
                *entry = Alias {
                    owner: ssrc,
                    headers: HeaderWindow::default(),
                };
            }
        }
    }

    /// Forgets that `addr` is bound, if it is bound to `ssrc`.
    fn unbind(&mut self, addr: Option<SocketAddr>, ssrc: u32) {
        if let Some(addr) = addr {
            if self.bound.get(&addr).is_some_and(|b| b.ssrc == ssrc) {
                self.bound.remove(&addr);
            }
        }
    }

    /// Sends `ssrc`'s media to `addr` from now on (and echoes keepalives
    /// from it). Returns whether the address changed.
    fn set_address(&mut self, ssrc: u32, addr: SocketAddr, now: u64) -> bool {
        let Some(s) = self.sessions.get_mut(&ssrc) else {
            return false;
        };
        s.heard = now;
        let old = s.addr.replace(addr);
        let slot = s.slot;
        if old == Some(addr) {
            return false;
        }
        self.unbind(old, ssrc);
        self.bind(addr, Binding { ssrc, slot });
        true
    }

    /// Proves `addr` for `ssrc` and tells control.
    fn prove(&mut self, ssrc: u32, addr: SocketAddr, now: u64) {
        if self.set_address(ssrc, addr, now) {
            self.event(Event::AddressProven { ssrc, addr });
        }
    }

    fn upsert(&mut self, now: u64, spec: &SessionSpec) -> Result<(), ApplyError> {
        let key = KeyState::new(spec.mode, &spec.key);
        let key_id = (spec.mode, self.key_hasher.hash_one(spec.key.as_slice()));
        let slot_ok = (spec.slot as usize) < self.counters.len();
        let start = self.counters.nonce_mark(spec.slot);
        let declared = spec.declared.map(packet::canonical);
        let session = self.join(spec.ssrc, spec.channel, now);
        session.user = spec.user;
        session.declared = declared;
        let failure = match key {
            Err(source) => Some(ApplyError::Key {
                ssrc: spec.ssrc,
                source,
            }),
            Ok(_) if !slot_ok => Some(ApplyError::Slot {
                ssrc: spec.ssrc,
                slot: spec.slot,
            }),
            Ok(_) => None,
        };
        let key = match (key, failure) {
            (Ok(k), None) => k,
            (_, failure) => {
                session.key = None;
                session.key_id = None;
                return Err(failure.expect("a failure unless the key is usable"));
            }
        };
        let fresh = session.key_id != Some(key_id);
        if fresh {
            // A new key (or this core has never sealed with it since it
            // started): fresh replay windows, and outgoing counters from
            // the slot's high-water mark, above every nonce any earlier
            // run of this data plane may have used under this key.
            session.rtp_counters = ReplayWindow::default();
            session.rtcp_counters = ReplayWindow::default();
            session.headers = HeaderWindow::default();
            session.recent = None;
            session.slot = spec.slot;
            session.out_next = start;
            session.out_reserved = start;
            session.out_first = start;
            session.key_id = Some(key_id);
        }
        session.key = Some(key);
        self.set_video(spec.ssrc, spec.video, fresh);
        let session = self.sessions.get_mut(&spec.ssrc).expect("joined above");
        // Listen-only members: the declared address counts once discovery
        // saw it come from there.
        if session.addr.is_none() && session.declared_observed() {
            let addr = session.declared.expect("declared_observed checked it");
            self.prove(spec.ssrc, addr, now);
        } else if let Some(addr) = session.addr {
            // The slot may be new: keep the binding's slot in step.
            let slot = session.slot;
            let ssrc = spec.ssrc;
            self.bind(addr, Binding { ssrc, slot });
        }
        Ok(())
    }

    /// Time passes: proven addresses nothing came from for
    /// [`ForwardConfig::idle_ms`] stop receiving. Cheap to call often:
    /// every [`SWEEP_MS`] a sweep over the sessions starts, and each call
    /// looks at [`SWEEP_CHUNK`] of them, so that a core with thousands of
    /// sessions never stops forwarding for the whole sweep at once.
    pub fn tick(&mut self, now: u64) {
        if self.sweep_at >= self.sweep.len() {
            if now < self.next_sweep {
                return;
            }
            self.next_sweep = now + SWEEP_MS;
            self.sweep.clear();
            self.sweep.extend(self.sessions.keys());
            self.sweep_at = 0;
        }
        let end = (self.sweep_at + SWEEP_CHUNK).min(self.sweep.len());
        let idle = self.config.idle_ms;
        for i in self.sweep_at..end {
            let ssrc = self.sweep[i];
            // Gone since the sweep started, or never proven.
            let Some(s) = self.sessions.get_mut(&ssrc) else {
                continue;
            };
            let Some(addr) = s.addr else { continue };
            let last = s.heard.max(self.counters.alive(s.slot));
            if now.saturating_sub(last) >= idle {
                s.addr = None;
                self.unbind(Some(addr), ssrc);
                self.event(Event::AddressExpired { ssrc, addr });
            }
        }
        self.sweep_at = end;
    }

    /// Handles one datagram received from `from` at time `now`, queuing
    /// what to send in `out` (which the caller has cleared) and events in
    /// [`Self::events`]. Returns whether it was work (media that passed
    /// authentication and replay protection, or a datagram answered)
    /// rather than refused junk: only work counts as load (health must not
    /// fall because strangers send garbage).
    pub fn handle(
        &mut self,
        now: u64,
        from: SocketAddr,
        packet: &mut [u8],
        out: &mut Outbox,
    ) -> bool {
        self.stats.packets_in += 1;
        self.stats.bytes_in += packet.len() as u64;
        if packet.len() > MAX_DATAGRAM {
            self.drop(DropReason::Malformed);
            return false;
        }
        let from = packet::canonical(from);
        let outcome = match packet::classify(packet) {
            Datagram::Malformed => Err(DropReason::Malformed),
            Datagram::Keepalive => self.keepalive(now, from, packet, out),
            Datagram::Discovery { ssrc } => self.discovery(now, from, ssrc, out),
            Datagram::Media { kind, ssrc } => self.media(now, from, kind, ssrc, packet, out),
        };
        match outcome {
            Ok(()) => true,
            Err(reason) => {
                self.drop(reason);
                false
            }
        }
    }

    fn keepalive(
        &mut self,
        now: u64,
        from: SocketAddr,
        packet: &[u8],
        out: &mut Outbox,
    ) -> Result<(), DropReason> {
        let binding = *self.bound.get(&from).ok_or(DropReason::Unbound)?;
        if !self.sources.take(from, self.config.per_source, now) {
            return Err(DropReason::RateLimited);
        }
        self.counters.mark_alive(binding.slot, now);
        out.push_copy(from, packet);
        Ok(())
    }

    fn discovery(
        &mut self,
        now: u64,
        from: SocketAddr,
        ssrc: u32,
        out: &mut Outbox,
    ) -> Result<(), DropReason> {
        let per_ssrc = self.config.per_ssrc;
        let session = self
            .sessions
            .get_mut(&ssrc)
            .ok_or(DropReason::DiscoveryUnknown)?;
        if !session.answers.take(per_ssrc, now)
            || !self.sources.take(from, self.config.per_source, now)
        {
            return Err(DropReason::RateLimited);
        }
        let session = self.sessions.get_mut(&ssrc).expect("looked up above");
        let new = !session.observed.contains(&Some(from));
        if new {
            session.observed.rotate_right(1);
            session.observed[0] = Some(from);
        }
        let adopt =
            session.addr.is_none() && session.key.is_some() && session.declared == Some(from);
        let _ = out.push::<()>(from, |slot| {
            let reply: &mut [u8; DISCOVERY_LEN] =
                (&mut slot[..DISCOVERY_LEN]).try_into().map_err(|_| ())?;
            packet::discovery_response(ssrc, from, reply);
            Ok(DISCOVERY_LEN)
        });
        if new {
            self.event(Event::AddressObserved { ssrc, addr: from });
        }
        if adopt {
            self.prove(ssrc, from, now);
        }
        Ok(())
    }

    fn media(
        &mut self,
        now: u64,
        from: SocketAddr,
        kind: Kind,
        ssrc: u32,
        packet: &mut [u8],
        out: &mut Outbox,
    ) -> Result<(), DropReason> {
        // A session's own SSRC first (audio: one lookup, as before video),
        // then its video and RTX SSRCs.
        let (sender, owner, alias) = match self.sessions.get_mut(&ssrc) {
            Some(sender) => (sender, ssrc, None),
            None => {
                let alias = self.aliases.get_mut(&ssrc).ok_or(DropReason::UnknownSsrc)?;
                let sender = self
                    .sessions
                    .get_mut(&alias.owner)
                    .ok_or(DropReason::UnknownSsrc)?;
                (sender, alias.owner, Some(&mut alias.headers))
            }
        };
        let video = alias.is_some();
        let key = sender.key.as_ref().ok_or(DropReason::NoKey)?;
        let opened = crypto::open(key, kind, packet).map_err(|e| match e {
            CryptoError::Auth => DropReason::AuthFailed,
            _ => DropReason::Malformed,
        })?;
        let fresh = match (alias, opened.replay) {
            (Some(headers), ReplayId::Header { seq, timestamp }) => headers.accept(seq, timestamp),
            _ => sender.accept(kind, opened.replay),
        };
        if !fresh {
            return Err(DropReason::Replay);
        }
        if sender.addr == Some(from) {
            sender.heard = now;
        } else if opened.replay.is_ordered() {
            // First contact, or NAT rebinding: only a fresh packet of an
            // ordered replay identifier may move the address (a replayed
            // one was rejected above).
            self.prove(owner, from, now);
        }
        // A held sender left the call: its packet is authenticated (and
        // its counter taken, so it cannot be replayed after a resume) but
        // goes to no one.
        let Some(channel) = self
            .sessions
            .get(&owner)
            .filter(|s| !s.held)
            .map(|s| s.channel)
        else {
            return Ok(());
        };
        let plain = &packet[..opened.len];
        let Some(members) = self.channels.get(&channel) else {
            return Ok(());
        };
        let mut failed = 0;
        for &member in members {
            if member == owner {
                continue;
            }
            let Some(m) = self
                .sessions
                .get_mut(&member)
                .filter(|m| !m.held && (!video || m.video.receive))
            else {
                continue;
            };
            let (Some(addr), Some(key)) = (m.addr, &m.key) else {
                continue;
            };
            if kind == Kind::Rtcp && key.mode() == Mode::XSalsa20Poly1305 {
                continue; // its nonce would be the RTCP header: reused
            }
            // A datagram may take two counters (see below).
            if m.out_next + 1 - m.out_first >= 1 << 32 {
                continue; // every nonce of this key is spent
            }
            if m.out_next + 1 >= m.out_reserved {
                // Reserve the next block before sealing with any of it:
                // the mark lives in shared memory, so it survives us.
                m.out_reserved = m.out_reserved.max(m.out_next) + COUNTER_BLOCK;
                self.counters.raise_nonce_mark(m.slot, m.out_reserved);
            }
            let counter = m.out_next as u32;
            let mut used = 1;
            let sealed = out.push(addr, |slot| {
                let len = crypto::seal(key, kind, counter, plain, slot)?;
                if !crypto::misread_as_extended(key.mode(), kind, &slot[..len]) {
                    return Ok(len);
                }
                used = 2;
                crypto::seal(key, kind, counter.wrapping_add(1), plain, slot)
            });
            match sealed {
                Ok(()) => m.out_next += used,
                Err(_) => failed += 1,
            }
        }
        self.drops.add(DropReason::Malformed, failed);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use scripts::crypto::Cipher;

    /// Test time starts here (milliseconds).
    const T0: u64 = 1_000_000;

    /// A simulated client: seals and opens with the client library's
    /// implementation of the modes, independent of the server's.
    struct Peer {
        ssrc: u32,
        mode: Mode,
        key: [u8; 32],
        cipher: Cipher,
        addr: SocketAddr,
        counter: u32,
        seq: u16,
        time: u32,
    }

    impl Peer {
        fn new(ssrc: u32, port: u16, mode: Mode) -> Self {
            let key = [ssrc as u8; 32];
            Peer {
                ssrc,
                mode,
                key,
                cipher: Cipher::new(mode, &key).unwrap(),
                addr: SocketAddr::from(([192, 0, 2, 1], port)),
                counter: 0,
                seq: 100,
                time: 5000,
            }
        }

        fn aes(ssrc: u32, port: u16) -> Self {
            Peer::new(ssrc, port, Mode::Aes256GcmRtpSize)
        }

        fn spec(&self, channel: u64, declared: Option<SocketAddr>) -> Command {
            Command::UpsertSession(SessionSpec {
                ssrc: self.ssrc,
                channel,
                user: u64::from(self.ssrc) * 10,
                mode: self.mode,
                key: self.key,
                declared,
                slot: self.ssrc,
                video: Default::default(),
            })
        }

        /// The next RTP packet with `payload`, sealed.
        fn rtp(&mut self, payload: &[u8]) -> Vec<u8> {
            self.seq = self.seq.wrapping_add(1);
            self.time = self.time.wrapping_add(960);
            let (seq, time) = (self.seq, self.time);
            self.rtp_at(seq, time, payload)
        }

        fn rtp_at(&mut self, seq: u16, time: u32, payload: &[u8]) -> Vec<u8> {
            let mut plain = vec![0x80, 0x78];
            plain.extend_from_slice(&seq.to_be_bytes());
            plain.extend_from_slice(&time.to_be_bytes());
            plain.extend_from_slice(&self.ssrc.to_be_bytes());
            plain.extend_from_slice(payload);
            self.seal(&plain)
        }

        /// An RTCP packet of type `pt` (205 NACK, 206 PLI, ...), sealed.
        fn rtcp(&mut self, pt: u8, body: &[u8]) -> Vec<u8> {
            let mut plain = vec![0x81, pt, 0, 2];
            plain.extend_from_slice(&self.ssrc.to_be_bytes());
            plain.extend_from_slice(body);
            self.seal(&plain)
        }

        /// `plain` sealed with the next counter. A client may seal RTCP in
        /// `xsalsa20_poly1305` too (the server never does: its nonce, the
        /// RTCP header, repeats).
        fn seal(&mut self, plain: &[u8]) -> Vec<u8> {
            self.counter = self.counter.wrapping_add(1);
            // Suffix-mode nonces differ in their last bytes, like counters.
            let mut suffix = [0x5A; 24];
            suffix[20..].copy_from_slice(&self.counter.to_be_bytes());
            self.cipher
                .encrypt_with(plain, self.counter, suffix)
                .unwrap()
        }

        /// Opens a datagram addressed to this peer: (sender SSRC, payload
        /// after the header, and its last four bytes: the counter in the
        /// counter modes).
        fn open(&self, kind: Kind, p: &[u8]) -> Option<(u32, Vec<u8>, u32)> {
            let plain = self.cipher.decrypt(p).ok()?;
            let at = if kind == Kind::Rtp { 8 } else { 4 };
            let ssrc = u32::from_be_bytes(plain[at..at + 4].try_into().unwrap());
            let counter = u32::from_be_bytes(p[p.len() - 4..].try_into().unwrap());
            let body = if kind == Kind::Rtp { 12 } else { 8 };
            Some((ssrc, plain[body..].to_vec(), counter))
        }

        fn discovery(&self) -> Vec<u8> {
            let mut p = vec![0u8; 74];
            p[1] = 1;
            p[3] = 70;
            p[4..8].copy_from_slice(&self.ssrc.to_be_bytes());
            p
        }
    }

    fn forwarder() -> Forwarder {
        Forwarder::new(0, ForwardConfig::default(), Counters::in_memory(1024))
    }

    fn send(
        f: &mut Forwarder,
        now: u64,
        from: SocketAddr,
        bytes: &[u8],
        out: &mut Outbox,
    ) -> Vec<(SocketAddr, Vec<u8>)> {
        out.clear();
        let mut buf = bytes.to_vec();
        f.handle(now, from, &mut buf, out);
        out.iter().map(|(a, b)| (a, b.to_vec())).collect()
    }

    fn announce(f: &mut Forwarder, c: &Peer, channel: u64) {
        f.apply(
            T0,
            Command::AnnounceSsrc {
                ssrc: c.ssrc,
                channel,
                user: 1,
            },
        )
        .unwrap();
    }

    /// `c` in `channel` with its key, at the address control vouches for
    /// (as after a resync).
    fn join_trusted(f: &mut Forwarder, c: &Peer, channel: u64) {
        announce(f, c, channel);
        f.apply(T0, c.spec(channel, Some(c.addr))).unwrap();
        f.apply(
            T0,
            Command::TrustAddress {
                ssrc: c.ssrc,
                addr: c.addr,
            },
        )
        .unwrap();
    }

    fn events(f: &mut Forwarder) -> Vec<Event> {
        f.events().drain(..).collect()
    }

    fn stranger() -> SocketAddr {
        "203.0.113.66:4444".parse().unwrap()
    }

    /// Members in one channel, each proven the way clients do it: IP
    /// discovery, then Select Protocol declaring what discovery said.
    fn call(f: &mut Forwarder, out: &mut Outbox, peers: &mut [Peer], channel: u64) {
        for p in peers.iter() {
            announce(f, p, channel);
            send(f, T0, p.addr, &p.discovery(), out);
            f.apply(T0, p.spec(channel, Some(p.addr))).unwrap();
            assert_eq!(f.address(p.ssrc), Some(p.addr));
        }
        events(f);
    }

    #[test]
    #[allow(clippy::needless_range_loop)]
    fn three_members_hear_each_other_not_themselves() {
        let mut f = forwarder();
        let mut out = Outbox::with_capacity(4);
        let mut peers: Vec<Peer> = (0..3).map(|i| Peer::aes(10 + i, 5000 + i as u16)).collect();
        for p in &peers {
            announce(&mut f, p, 7);
            f.apply(T0, p.spec(7, None)).unwrap();
        }
        // Nobody has a proven address yet: the first packets go nowhere.
        for i in 0..3 {
            let from = peers[i].addr;
            let p = peers[i].rtp(b"hello");
            let got = send(&mut f, T0, from, &p, &mut out);
            assert_eq!(got.len(), i, "only members proven so far receive");
        }
        let proven: Vec<Event> = events(&mut f);
        assert_eq!(proven.len(), 3);
        assert!(matches!(proven[0], Event::AddressProven { ssrc: 10, .. }));
        for i in 0..3 {
            let payload = format!("from {i}");
            let from = peers[i].addr;
            let p = peers[i].rtp(payload.as_bytes());
            let got = send(&mut f, T0, from, &p, &mut out);
            assert_eq!(got.len(), 2);
            for (addr, bytes) in got {
                assert_ne!(addr, peers[i].addr, "never echoed to the sender");
                let r = peers.iter().find(|c| c.addr == addr).unwrap();
                let (ssrc, pt, _) = r.open(Kind::Rtp, &bytes).expect("receiver's key");
                assert_eq!(ssrc, peers[i].ssrc);
                assert_eq!(pt, payload.as_bytes());
                assert!(peers[i].open(Kind::Rtp, &bytes).is_none());
            }
        }
        let s = f.stats();
        assert_eq!(s.packets_in, 6);
        assert_eq!(s.sessions, 3);
        assert_eq!(f.drops().total(), 0);
    }

    #[test]
    fn listen_only_member_with_matching_declaration_hears_from_start() {
        let mut f = forwarder();
        let mut out = Outbox::with_capacity(1);
        let mut speaker = Peer::aes(20, 6000);
        let listener = Peer::aes(21, 6001);
        let liar = Peer::aes(22, 6002);
        for c in [&speaker, &listener, &liar] {
            announce(&mut f, c, 1);
        }
        // IP discovery before the key: answered, address only observed.
        let got = send(&mut f, T0, listener.addr, &listener.discovery(), &mut out);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, listener.addr);
        assert_eq!(&got[0].1[..4], &[0, 2, 0, 70]);
        assert_eq!(&got[0].1[8..17], b"192.0.2.1");
        assert_eq!(
            events(&mut f),
            vec![Event::AddressObserved {
                ssrc: 21,
                addr: listener.addr
            }]
        );
        assert_eq!(f.address(21), None, "no key yet, nothing proven");
        f.apply(T0, listener.spec(1, Some(listener.addr))).unwrap();
        assert_eq!(f.address(21), Some(listener.addr));
        assert_eq!(
            events(&mut f),
            vec![Event::AddressProven {
                ssrc: 21,
                addr: listener.addr
            }]
        );
        // The liar declares an address discovery never saw.
        send(&mut f, T0, liar.addr, &liar.discovery(), &mut out);
        f.apply(T0, liar.spec(1, Some("198.51.100.9:1".parse().unwrap())))
            .unwrap();
        assert_eq!(f.address(22), None);
        f.apply(T0, speaker.spec(1, None)).unwrap();
        let p = speaker.rtp(b"first words");
        let got = send(&mut f, T0, speaker.addr, &p, &mut out);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, listener.addr);
        assert_eq!(
            listener.open(Kind::Rtp, &got[0].1).unwrap().1,
            b"first words"
        );
    }

    /// The stream hijack: a stranger who knows a member's SSRC sends IP
    /// discovery for it from its own address. It gets a reply of the same
    /// size and nothing else: no proof, no move, no media.
    #[test]
    fn spoofed_discovery_never_moves_or_proves_an_address() {
        let mut f = forwarder();
        let mut out = Outbox::with_capacity(2);
        let mut peers = [Peer::aes(30, 7000), Peer::aes(32, 7001)];
        call(&mut f, &mut out, &mut peers, 2);
        let [talker, member] = &mut peers;
        let d = member.discovery();
        let got = send(&mut f, T0, stranger(), &d, &mut out);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].1.len(), d.len(), "never larger than the request");
        assert_eq!(
            events(&mut f),
            vec![Event::AddressObserved {
                ssrc: member.ssrc,
                addr: stranger()
            }],
            "observed, not proven"
        );
        assert_eq!(f.address(member.ssrc), Some(member.addr));
        // Even a Select Protocol declaring the stranger's address (it was
        // observed) does not move an address in use.
        f.apply(T0, member.spec(2, Some(stranger()))).unwrap();
        assert_eq!(f.address(member.ssrc), Some(member.addr));
        for _ in 0..50 {
            let p = talker.rtp(b"for the member");
            let got = send(&mut f, T0, talker.addr, &p, &mut out);
            assert_eq!(got.len(), 1);
            assert_eq!(got[0].0, member.addr);
        }
        assert!(!f.is_bound(stranger()));
    }

    #[test]
    fn keepalives_are_echoed_only_to_bound_addresses_in_the_documented_format() {
        let mut f = forwarder();
        let mut out = Outbox::with_capacity(2);
        let mut peers = [Peer::aes(40, 8000), Peer::aes(42, 8001)];
        call(&mut f, &mut out, &mut peers, 3);
        let ka = [7, 0, 0, 0, 0, 0, 0, 0];
        // The reflector: any 8 bytes from anyone used to come back.
        assert!(send(&mut f, T0, stranger(), &ka, &mut out).is_empty());
        assert_eq!(f.drops().get(DropReason::Unbound), 1);
        // A member's keepalive comes back unchanged.
        assert_eq!(
            send(&mut f, T0, peers[0].addr, &ka, &mut out),
            vec![(peers[0].addr, ka.to_vec())]
        );
        // Not the documented format: nothing.
        let odd = [7, 0, 0, 0, 1, 0, 0, 0];
        assert!(send(&mut f, T0, peers[0].addr, &odd, &mut out).is_empty());
        assert_eq!(f.drops().get(DropReason::Malformed), 1);
        // An address another core's session proved (control says so).
        let elsewhere: SocketAddr = "198.51.100.20:3".parse().unwrap();
        f.apply(
            T0,
            Command::BindAddress {
                addr: elsewhere,
                ssrc: 99,
                slot: 9,
            },
        )
        .unwrap();
        assert_eq!(send(&mut f, T0 + 5, elsewhere, &ka, &mut out).len(), 1);
        assert_eq!(f.counters.alive(9), T0 + 5, "the owner core can see it");
        f.apply(
            T0,
            Command::UnbindAddress {
                addr: elsewhere,
                ssrc: 98,
            },
        )
        .unwrap();
        assert!(
            f.is_bound(elsewhere),
            "unbinding another SSRC's address: no"
        );
        f.apply(
            T0,
            Command::UnbindAddress {
                addr: elsewhere,
                ssrc: 99,
            },
        )
        .unwrap();
        assert!(send(&mut f, T0, elsewhere, &ka, &mut out).is_empty());
        // A member who leaves is no longer echoed.
        f.apply(
            T0,
            Command::RemoveSession {
                ssrc: peers[1].ssrc,
            },
        )
        .unwrap();
        assert!(send(&mut f, T0, peers[1].addr, &ka, &mut out).is_empty());
    }

    /// A member who left but may resume: nothing to it or from it; on
    /// its return the same key and counters go on, and a packet it sent
    /// while held cannot be replayed into the call.
    #[test]
    fn held_sessions_get_and_give_nothing_until_released() {
        let mut f = forwarder();
        let mut out = Outbox::with_capacity(4);
        let mut peers: Vec<Peer> = (0..3).map(|i| Peer::aes(30 + i, 6000 + i as u16)).collect();
        call(&mut f, &mut out, &mut peers, 9);
        let hold = |held| Command::HoldSession { ssrc: 31, held };
        f.apply(T0, hold(true)).unwrap();
        let from0 = peers[0].rtp(b"to the others");
        let got = send(&mut f, T0, peers[0].addr, &from0, &mut out);
        assert_eq!(got.len(), 1, "only the member still in the call");
        assert_eq!(got[0].0, peers[2].addr);
        let while_held = peers[1].rtp(b"while held");
        assert!(send(&mut f, T0, peers[1].addr, &while_held, &mut out).is_empty());
        assert_eq!(f.address(31), Some(peers[1].addr), "the address stays");
        f.apply(T0, hold(false)).unwrap();
        let got = send(&mut f, T0, peers[0].addr, &peers[0].rtp(b"again"), &mut out);
        assert_eq!(got.len(), 2, "back in the call");
        let r = got
            .iter()
            .find(|(a, _)| *a == peers[1].addr)
            .expect("to 31");
        assert!(peers[1].open(Kind::Rtp, &r.1).is_some(), "the same key");
        assert!(
            send(&mut f, T0, peers[1].addr, &while_held, &mut out).is_empty(),
            "a packet seen while held is a replay now"
        );
        assert_eq!(f.drops().get(DropReason::Replay), 1);
        let got = send(&mut f, T0, peers[1].addr, &peers[1].rtp(b"hi"), &mut out);
        assert_eq!(got.len(), 2);
        // Holding an SSRC the core does not know is ignored.
        f.apply(
            T0,
            Command::HoldSession {
                ssrc: 999,
                held: true,
            },
        )
        .unwrap();
    }

    #[test]
    fn answers_to_strangers_are_budgeted_per_ssrc_and_per_source() {
        let mut f = forwarder();
        let mut out = Outbox::with_capacity(2);
        let member = Peer::aes(50, 9000);
        announce(&mut f, &member, 4);
        let d = member.discovery();
        // One spoofed source: its budget (burst 8) runs out.
        let answered = (0..100)
            .filter(|_| !send(&mut f, T0, stranger(), &d, &mut out).is_empty())
            .count();
        assert_eq!(answered, 8);
        // Many sources, one SSRC: the SSRC's budget is spent too, so a
        // spoofed flood cannot make us reflect at will.
        let many = (0..100u16)
            .filter(|i| {
                let src = SocketAddr::from(([198, 51, 100, 7], 1000 + i));
                !send(&mut f, T0, src, &d, &mut out).is_empty()
            })
            .count();
        assert_eq!(many, 0);
        assert_eq!(f.drops().get(DropReason::RateLimited), 192);
        // Budgets refill with time: 2 per second for the SSRC.
        let later = T0 + 1000;
        let refilled = (0..10)
            .filter(|_| !send(&mut f, later, member.addr, &d, &mut out).is_empty())
            .count();
        assert_eq!(refilled, 2);
        // Keepalive echoes from a bound address are budgeted per source.
        let mut peers = [Peer::aes(52, 9001), Peer::aes(54, 9002)];
        call(&mut f, &mut out, &mut peers, 5);
        let ka = [1, 0, 0, 0, 0, 0, 0, 0];
        let echoed = (0..50)
            .filter(|_| !send(&mut f, T0, peers[0].addr, &ka, &mut out).is_empty())
            .count();
        assert_eq!(
            echoed, 7,
            "the source's burst of 8, one spent on its discovery"
        );
    }

    /// In every mode, a captured packet replayed (from the sender's or
    /// another address) is not forwarded again and moves nothing.
    #[test]
    fn replays_are_rejected_in_every_mode() {
        for mode in Mode::ALL {
            let mut f = forwarder();
            let mut out = Outbox::with_capacity(2);
            let mut peers = [Peer::new(60, 1000, mode), Peer::aes(62, 1001)];
            call(&mut f, &mut out, &mut peers, 6);
            let [talker, listener] = &mut peers;
            let captured = talker.rtp(b"once");
            assert_eq!(send(&mut f, T0, talker.addr, &captured, &mut out).len(), 1);
            for from in [talker.addr, stranger()] {
                assert!(
                    send(&mut f, T0, from, &captured, &mut out).is_empty(),
                    "{mode:?} from {from}"
                );
            }
            assert_eq!(f.address(talker.ssrc), Some(talker.addr), "{mode:?}");
            assert_eq!(f.drops().get(DropReason::Replay), 2, "{mode:?}");
            // The call goes on.
            let p = talker.rtp(b"twice");
            let got = send(&mut f, T0, talker.addr, &p, &mut out);
            assert_eq!(got.len(), 1, "{mode:?}");
            assert_eq!(listener.open(Kind::Rtp, &got[0].1).unwrap().1, b"twice");
        }
    }

    #[test]
    fn only_ordered_fresh_packets_move_an_address() {
        let mut f = forwarder();
        let mut out = Outbox::with_capacity(2);
        let mut peers = [
            Peer::aes(70, 2000),
            Peer::new(72, 2001, Mode::XSalsa20Poly1305Suffix),
        ];
        call(&mut f, &mut out, &mut peers, 8);
        let [aes, suffix] = &mut peers;
        // NAT rebinding: an authenticated, fresh, ordered packet moves.
        let moved: SocketAddr = "192.0.2.1:9999".parse().unwrap();
        let p = aes.rtp(b"from my new port");
        assert_eq!(send(&mut f, T0, moved, &p, &mut out).len(), 1);
        assert_eq!(f.address(aes.ssrc), Some(moved));
        assert_eq!(
            events(&mut f),
            vec![Event::AddressProven {
                ssrc: aes.ssrc,
                addr: moved
            }]
        );
        // The suffix mode's nonces are unordered: its packets from another
        // address are forwarded but never move it (an old capture replayed
        // past the nonce memory would hijack the stream otherwise).
        let p = suffix.rtp(b"suffix");
        assert_eq!(send(&mut f, T0, stranger(), &p, &mut out).len(), 1);
        assert_eq!(f.address(suffix.ssrc), Some(suffix.addr));
        assert!(events(&mut f).is_empty());
    }

    /// xsalsa20_poly1305's nonce is the RTP header: a packet replayed
    /// 40,000 sequence numbers later looks ahead to a 16-bit window.
    #[test]
    fn plain_mode_tells_wrapped_replays_by_their_timestamp() {
        let mut w = HeaderWindow::default();
        let (seq0, t0) = (1000u16, 50_000u32);
        assert!(w.accept(seq0, t0));
        for k in 1..40_000u32 {
            assert!(w.accept(seq0.wrapping_add(k as u16), t0 + 960 * k));
        }
        assert!(
            !w.accept(seq0, t0),
            "40,000 later: ahead in seq, behind in time"
        );
        assert!(!w.accept(seq0.wrapping_add(10), t0 + 9600));
        // A loss burst and a silence (the timestamp jumps) are fine.
        let top = seq0.wrapping_add(39_999);
        let top_time = t0 + 960 * 39_999;
        assert!(w.accept(top.wrapping_add(500), top_time + 48_000 * 600));
        // Late but plausible: inside the window, between its neighbours.
        let base = top.wrapping_add(500);
        let bt = top_time + 48_000 * 600;
        assert!(w.accept(base.wrapping_add(3), bt + 3 * 960));
        assert!(w.accept(base.wrapping_add(1), bt + 960));
        assert!(!w.accept(base.wrapping_add(1), bt + 960), "seen");
        // In the window's range of sequence numbers but from long ago.
        assert!(!w.accept(base.wrapping_add(2), bt - 1_000_000));
        assert!(w.accept(base.wrapping_add(2), bt + 2 * 960));
        // Far behind: outside the window.
        assert!(!w.accept(base.wrapping_sub(100), bt - 100 * 960));
    }

    #[test]
    fn counter_window_and_recent_set() {
        let mut w = ReplayWindow::default();
        assert!(w.accept(u32::MAX - 1));
        assert!(w.accept(u32::MAX));
        assert!(w.accept(0));
        assert!(w.accept(1));
        assert!(!w.accept(u32::MAX));
        assert!(!w.accept(1));
        assert!(w.accept(200));
        assert!(!w.accept(100), "too old");
        assert!(w.accept(150));
        let mut r = RecentSet::default();
        assert!(r.accept(5));
        assert!(!r.accept(5));
        for d in 6..6 + RecentSet::LEN as u64 {
            assert!(r.accept(d));
        }
        assert!(r.accept(5), "forgotten after LEN others (README says so)");
    }

    #[test]
    fn rtcp_feedback_is_forwarded_but_never_to_plain_mode_receivers() {
        let mut f = forwarder();
        let mut out = Outbox::with_capacity(4);
        let mut peers = [
            Peer::aes(80, 3000),
            Peer::new(82, 3001, Mode::XChaCha20Poly1305RtpSize),
            Peer::new(84, 3002, Mode::XSalsa20Poly1305),
        ];
        call(&mut f, &mut out, &mut peers, 9);
        for pt in [200, 201, 205, 206] {
            let p = peers[0].rtcp(pt, &[1, 2, 3, 4, 5, 6, 7, 8]);
            let got = send(&mut f, T0, peers[0].addr, &p, &mut out);
            assert_eq!(got.len(), 1, "type {pt}: only the XChaCha receiver");
            assert_eq!(got[0].0, peers[1].addr);
            let (ssrc, body, _) = peers[1].open(Kind::Rtcp, &got[0].1).unwrap();
            assert_eq!((ssrc, &body[..]), (80, &[1, 2, 3, 4, 5, 6, 7, 8][..]));
        }
        // RTCP from a plain-mode sender has only its MAC to tell it by: a
        // replay is caught while remembered, and it never moves an address.
        let p = peers[2].rtcp(201, &[9; 8]);
        assert_eq!(send(&mut f, T0, stranger(), &p, &mut out).len(), 2);
        assert!(send(&mut f, T0, peers[2].addr, &p, &mut out).is_empty());
        assert_eq!(f.address(84), Some(peers[2].addr));
    }

    /// Nonces never repeat for a key, across data plane restarts too: a
    /// restarted core (a new forwarder on the same counter table) seals
    /// above every counter the previous one may have used.
    #[test]
    fn outgoing_counters_continue_above_a_restarted_cores_reservations() {
        // Both forwarders see the same table, as with the region.
        let table = Counters::in_memory(256);
        let run = |f: &mut Forwarder, talker: &mut Peer, listener: &Peer, n: usize| {
            let mut out = Outbox::with_capacity(2);
            let mut counters = Vec::new();
            for _ in 0..n {
                let p = talker.rtp(b"x");
                for (_, bytes) in send(f, T0, talker.addr, &p, &mut out) {
                    counters.push(listener.open(Kind::Rtp, &bytes).unwrap().2);
                }
            }
            counters
        };
        let mut talker = Peer::aes(90, 4000);
        let listener = Peer::aes(92, 4001);
        let setup = |f: &mut Forwarder, talker: &mut Peer| {
            for p in [&*talker, &listener] {
                join_trusted(f, p, 10);
            }
        };
        let mut first = Forwarder::new(0, ForwardConfig::default(), table.clone());
        setup(&mut first, &mut talker);
        let before = run(&mut first, &mut talker, &listener, 3000);
        drop(first); // the data plane dies
        let mut second = Forwarder::new(0, ForwardConfig::default(), table.clone());
        setup(&mut second, &mut talker);
        let after = run(&mut second, &mut talker, &listener, 100);
        let used: std::collections::HashSet<u32> = before.iter().copied().collect();
        assert_eq!(used.len(), before.len(), "distinct within a run");
        assert!(
            after.iter().all(|c| !used.contains(c)),
            "no reuse across the restart"
        );
        let max_before = *before.iter().max().unwrap();
        assert!(after[0] > max_before && u64::from(after[0] - max_before) <= COUNTER_BLOCK);
        assert_eq!(table.nonce_mark(listener.ssrc) % COUNTER_BLOCK, 0);
    }

    #[test]
    fn silent_addresses_expire_unless_keepalives_come() {
        let mut f = forwarder();
        let mut out = Outbox::with_capacity(2);
        let mut peers = [
            Peer::aes(100, 5000),
            Peer::aes(102, 5001),
            Peer::aes(104, 5002),
        ];
        call(&mut f, &mut out, &mut peers, 11);
        let idle = ForwardConfig::default().idle_ms;
        let ka = [3, 0, 0, 0, 0, 0, 0, 0];
        // 102 keeps sending keepalives (to this core); 104's land on
        // another core, which marks its slot; 100 talks.
        let mut t = T0;
        while t < T0 + 2 * idle {
            t += 5000;
            send(&mut f, t, peers[1].addr, &ka, &mut out);
            f.counters.mark_alive(peers[2].ssrc, t);
            let p = peers[0].rtp(b".");
            send(&mut f, t, peers[0].addr, &p, &mut out);
            f.tick(t);
        }
        assert!(events(&mut f).is_empty(), "nobody went idle");
        // Now 102 falls silent.
        let mut t2 = t;
        while t2 < t + idle + 2000 {
            t2 += 1000;
            f.counters.mark_alive(peers[2].ssrc, t2);
            let p = peers[0].rtp(b".");
            send(&mut f, t2, peers[0].addr, &p, &mut out);
            f.tick(t2);
        }
        assert_eq!(
            events(&mut f),
            vec![Event::AddressExpired {
                ssrc: 102,
                addr: peers[1].addr
            }]
        );
        assert_eq!(f.address(102), None);
        assert!(!f.is_bound(peers[1].addr), "not echoed any more either");
        let p = peers[0].rtp(b"after");
        let got = send(&mut f, t2, peers[0].addr, &p, &mut out);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, peers[2].addr);
    }

    /// A core with many sessions sweeps them a chunk per tick, so it
    /// never stops forwarding for the whole sweep; every idle address
    /// still expires within the sweep's ticks, and a session that leaves
    /// mid-sweep is skipped.
    #[test]
    fn the_idle_sweep_takes_a_chunk_per_tick() {
        let mut f = forwarder();
        let n = 2 * SWEEP_CHUNK + 10;
        let peers: Vec<Peer> = (0..n)
            .map(|i| Peer::aes(1 + i as u32, 20_000 + i as u16))
            .collect();
        for p in &peers {
            join_trusted(&mut f, p, 30);
        }
        events(&mut f);
        let expired = |f: &mut Forwarder| {
            events(f)
                .iter()
                .filter(|e| matches!(e, Event::AddressExpired { .. }))
                .count()
        };
        let t = T0 + ForwardConfig::default().idle_ms;
        f.tick(t);
        assert_eq!(expired(&mut f), SWEEP_CHUNK);
        // One that the sweep has not reached yet leaves.
        let last = f.sweep[f.sweep.len() - 1];
        f.apply(t, Command::RemoveSession { ssrc: last }).unwrap();
        events(&mut f);
        f.tick(t + 1);
        assert_eq!(expired(&mut f), SWEEP_CHUNK);
        f.tick(t + 2);
        assert_eq!(expired(&mut f), 9);
        // The sweep is over; the next starts a second later.
        f.tick(t + 3);
        assert_eq!(expired(&mut f), 0);
        assert!(peers.iter().all(|p| f.address(p.ssrc).is_none()));
    }

    /// What fan-out reads of each receiver lies in the session's first
    /// two cache lines (the key's mode and cipher pointer included).
    #[test]
    fn a_receivers_hot_fields_share_two_cache_lines() {
        use std::mem::{align_of, offset_of, size_of};
        assert_eq!(align_of::<Session>(), 64);
        let ends = [
            offset_of!(Session, held) + size_of::<bool>(),
            offset_of!(Session, slot) + size_of::<u32>(),
            offset_of!(Session, addr) + size_of::<Option<SocketAddr>>(),
            offset_of!(Session, out_next) + size_of::<u64>(),
            offset_of!(Session, out_reserved) + size_of::<u64>(),
            offset_of!(Session, out_first) + size_of::<u64>(),
            offset_of!(Session, video) + size_of::<VideoSpec>(),
            offset_of!(Session, key) + 32,
        ];
        assert!(ends.iter().all(|&end| end <= 128), "{ends:?}");
    }

    #[test]
    fn mapped_addresses_are_the_same_peer() {
        let mut f = forwarder();
        let mut out = Outbox::with_capacity(2);
        let listener = Peer::aes(110, 6000);
        let mut talker = Peer::aes(112, 6001);
        announce(&mut f, &listener, 12);
        // A dual-stack socket reports the IPv4 client as ::ffff:a.b.c.d.
        let mapped: SocketAddr = "[::ffff:192.0.2.1]:6000".parse().unwrap();
        let got = send(&mut f, T0, mapped, &listener.discovery(), &mut out);
        assert_eq!(got[0].0, listener.addr, "replies go to the canonical form");
        assert_eq!(&got[0].1[8..17], b"192.0.2.1");
        f.apply(T0, listener.spec(12, Some(listener.addr))).unwrap();
        assert_eq!(f.address(110), Some(listener.addr));
        f.apply(T0, talker.spec(12, None)).unwrap();
        let p = talker.rtp(b"hi");
        assert_eq!(send(&mut f, T0, talker.addr, &p, &mut out).len(), 1);
        let ka = [0u8; 8];
        assert_eq!(send(&mut f, T0, mapped, &ka, &mut out).len(), 1);
    }

    #[test]
    fn drops_are_counted_and_change_nothing() {
        let mut f = forwarder();
        let mut out = Outbox::with_capacity(2);
        let mut a = Peer::aes(120, 7000);
        let mut b = Peer::aes(122, 7001);
        f.apply(T0, a.spec(2, None)).unwrap();
        announce(&mut f, &b, 2);

        assert!(send(&mut f, T0, a.addr, b"\x01garbage-not-rtp", &mut out).is_empty());
        let s = Peer::aes(124, 7002);
        assert!(send(&mut f, T0, s.addr, &s.discovery(), &mut out).is_empty());
        let mut s = s;
        let p = s.rtp(b"x");
        assert!(send(&mut f, T0, s.addr, &p, &mut out).is_empty());
        let p = b.rtp(b"x");
        assert!(send(&mut f, T0, b.addr, &p, &mut out).is_empty());
        let mut forged = a.rtp(b"x");
        let n = forged.len();
        forged[n - 6] ^= 1;
        assert!(send(&mut f, T0, stranger(), &forged, &mut out).is_empty());
        assert_eq!(f.address(120), None, "a forgery proves nothing");

        let d = f.drops();
        assert_eq!(d.get(DropReason::Malformed), 1);
        assert_eq!(d.get(DropReason::DiscoveryUnknown), 1);
        assert_eq!(d.get(DropReason::UnknownSsrc), 1);
        assert_eq!(d.get(DropReason::NoKey), 1);
        assert_eq!(d.get(DropReason::AuthFailed), 1);
        assert_eq!(d.overload(), 0, "junk is not load");
        assert!(f.events().is_empty());
    }

    #[test]
    fn removal_stops_forwarding() {
        let mut f = forwarder();
        let mut out = Outbox::with_capacity(2);
        let mut peers = [
            Peer::aes(130, 9000),
            Peer::aes(132, 9001),
            Peer::aes(134, 9002),
        ];
        call(&mut f, &mut out, &mut peers, 4);
        let [a, b, _c] = &mut peers;
        let p = a.rtp(b".");
        assert_eq!(send(&mut f, T0, a.addr, &p, &mut out).len(), 2);
        f.apply(T0, Command::RemoveSession { ssrc: 132 }).unwrap();
        let p = a.rtp(b".");
        assert_eq!(send(&mut f, T0, a.addr, &p, &mut out).len(), 1);
        let p = b.rtp(b".");
        assert!(send(&mut f, T0, b.addr, &p, &mut out).is_empty());
        f.apply(T0, Command::RemoveChannel { channel: 4 }).unwrap();
        let p = a.rtp(b".");
        assert!(send(&mut f, T0, a.addr, &p, &mut out).is_empty());
        assert_eq!(f.stats().sessions, 0);
        assert!(!f.is_bound(a.addr));
        assert_eq!(f.drops().get(DropReason::UnknownSsrc), 2);
    }

    #[test]
    fn a_trusted_address_receives_without_discovery() {
        let mut f = forwarder();
        let mut out = Outbox::with_capacity(8);
        let mut talker = Peer::aes(140, 2000);
        let listener = Peer::aes(141, 2001);
        f.apply(T0, talker.spec(9, None)).unwrap();
        f.apply(T0, listener.spec(9, Some(listener.addr))).unwrap();
        // No discovery from the listener: its declared address is not
        // taken on its own word...
        let p = talker.rtp(b"a");
        assert!(send(&mut f, T0, talker.addr, &p, &mut out).is_empty());
        // ...but control vouches for it (proven before a restart).
        f.apply(
            T0,
            Command::TrustAddress {
                ssrc: listener.ssrc,
                addr: listener.addr,
            },
        )
        .unwrap();
        let p = talker.rtp(b"b");
        let sent = send(&mut f, T0, talker.addr, &p, &mut out);
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].0, listener.addr);
        f.apply(
            T0,
            Command::TrustAddress {
                ssrc: 4242,
                addr: listener.addr,
            },
        )
        .unwrap();
        assert!(!f.has_session(4242), "unknown SSRCs are not created");
    }

    #[test]
    fn a_resync_keeps_what_it_names_untouched_and_removes_the_rest() {
        let mut f = forwarder();
        let mut out = Outbox::with_capacity(8);
        let mut a = Peer::aes(160, 3000);
        let b = Peer::aes(161, 3001);
        let mut gone = Peer::aes(162, 3002);
        for p in [&a, &b, &gone] {
            f.apply(T0, p.spec(9, None)).unwrap();
        }
        let first = a.rtp(b"1");
        send(&mut f, T0, a.addr, &first, &mut out);
        for p in [&mut a, &mut gone] {
            let pkt = p.rtp(b"x");
            send(&mut f, T0, p.addr, &pkt, &mut out);
        }
        // b proves its address too: now a reaches b and gone.
        let pkt = Peer::aes(161, 3001).rtp(b"y");
        send(&mut f, T0, b.addr, &pkt, &mut out);
        f.apply(
            T0,
            Command::BindAddress {
                addr: stranger(),
                ssrc: 7,
                slot: 7,
            },
        )
        .unwrap();
        events(&mut f);
        let sealed_before = send(&mut f, T0, a.addr, &a.rtp(b"2"), &mut out);
        assert_eq!(sealed_before.len(), 2);

        // A new control names a and b again (b with an address it saved
        // before b moved: the core's newer one wins), not `gone`, and not
        // the other core's binding.
        f.apply(T0, Command::ResyncBegin).unwrap();
        f.apply(T0, a.spec(9, None)).unwrap();
        f.apply(T0, b.spec(9, None)).unwrap();
        let stale: SocketAddr = "192.0.2.99:1".parse().unwrap();
        f.apply(
            T0,
            Command::TrustAddress {
                ssrc: b.ssrc,
                addr: stale,
            },
        )
        .unwrap();
        f.apply(T0, Command::ResyncEnd).unwrap();

        assert!(!f.has_session(gone.ssrc), "unknown to the new control");
        assert!(!f.is_bound(gone.addr) && !f.is_bound(stranger()));
        assert_eq!(f.address(b.ssrc), Some(b.addr), "the core's address stays");
        assert!(f.is_bound(a.addr) && f.is_bound(b.addr));
        let mut proven: Vec<_> = events(&mut f)
            .into_iter()
            .filter_map(|e| match e {
                Event::AddressProven { ssrc, addr } => Some((ssrc, addr)),
                _ => None,
            })
            .collect();
        proven.sort();
        assert_eq!(proven, [(a.ssrc, a.addr), (b.ssrc, b.addr)], "re-reported");
        // Same key: replay windows and outgoing counters go on.
        assert!(
            send(&mut f, T0, a.addr, &first, &mut out).is_empty(),
            "still a replay"
        );
        let sealed_after = send(&mut f, T0, a.addr, &a.rtp(b"3"), &mut out);
        assert_eq!(sealed_after.len(), 1, "to b only");
        let counter = |p: &[u8]| u32::from_be_bytes(p[p.len() - 4..].try_into().unwrap());
        let before = sealed_before.iter().find(|(to, _)| *to == b.addr).unwrap();
        assert_eq!(counter(&sealed_after[0].1), counter(&before.1) + 1);
        // A resync end with no beginning changes nothing.
        f.apply(T0, Command::ResyncEnd).unwrap();
        assert!(f.has_session(a.ssrc) && f.has_session(b.ssrc));
    }

    /// `p`'s session with video on `aliases`, receiving video or not.
    fn video_spec(p: &Peer, channel: u64, aliases: &[u32], receive: bool) -> Command {
        let Command::UpsertSession(mut spec) = p.spec(channel, Some(p.addr)) else {
            unreachable!()
        };
        spec.video.aliases[..aliases.len()].copy_from_slice(aliases);
        spec.video.receive = receive;
        Command::UpsertSession(spec)
    }

    /// `p` sends on `ssrc` (one of its aliases) with its key and counter.
    fn rtp_on(p: &mut Peer, ssrc: u32, seq: u16, payload: &[u8]) -> Vec<u8> {
        let own = std::mem::replace(&mut p.ssrc, ssrc);
        let packet = p.rtp_at(seq, u32::from(seq) * 3000, payload);
        p.ssrc = own;
        packet
    }

    #[test]
    fn video_on_an_alias_is_the_senders_and_reaches_only_video_receivers() {
        for mode in Mode::ALL {
            let mut f = forwarder();
            let mut out = Outbox::with_capacity(4);
            let mut peers: Vec<Peer> = (0..3)
                .map(|i| Peer::new(10 + i, 6000 + i as u16, mode))
                .collect();
            call(&mut f, &mut out, &mut peers, 7);
            // A sends video on 100 and 101 (RTX); B receives video, C
            // (an audio-only client) does not.
            f.apply(T0, video_spec(&peers[0], 7, &[100, 101], true))
                .unwrap();
            f.apply(T0, video_spec(&peers[1], 7, &[200, 201], true))
                .unwrap();
            let frame = vec![0x5C; 1100];
            let from = peers[0].addr;
            let packet = rtp_on(&mut peers[0], 100, 7, &frame);
            let sent = send(&mut f, T0 + 1, from, &packet, &mut out);
            assert_eq!(sent.len(), 1, "{mode:?}: only B receives video");
            assert_eq!(sent[0].0, peers[1].addr);
            let (ssrc, body, _) = peers[1].open(Kind::Rtp, &sent[0].1).unwrap();
            assert_eq!((ssrc, body), (100, frame.clone()), "{mode:?}");
            assert!(peers[2].open(Kind::Rtp, &sent[0].1).is_none());
            // RTX on 101, and A's audio still reaches both.
            let rtx = rtp_on(&mut peers[0], 101, 3, b"rtx");
            assert_eq!(send(&mut f, T0 + 2, from, &rtx, &mut out).len(), 1);
            let audio = peers[0].rtp(b"voice");
            let sent = send(&mut f, T0 + 3, from, &audio, &mut out);
            assert_eq!(sent.len(), 2, "{mode:?}");
            // The same video packet again is a replay; a stranger's SSRC
            // is unknown; B's own video does not come back to it.
            assert!(send(&mut f, T0 + 4, from, &packet, &mut out).is_empty());
            assert_eq!(f.drops().get(DropReason::Replay), 1, "{mode:?}");
            let stray = rtp_on(&mut peers[0], 102, 8, b"x");
            assert!(send(&mut f, T0 + 5, from, &stray, &mut out).is_empty());
            assert_eq!(f.drops().get(DropReason::UnknownSsrc), 1);
            let b_from = peers[1].addr;
            let b_video = rtp_on(&mut peers[1], 200, 1, b"b video");
            let sent = send(&mut f, T0 + 6, b_from, &b_video, &mut out);
            assert_eq!(sent.iter().map(|s| s.0).collect::<Vec<_>>(), [from]);
            // A new spec without 101 drops it; leaving drops them all.
            f.apply(T0, video_spec(&peers[0], 7, &[100], true)).unwrap();
            let rtx = rtp_on(&mut peers[0], 101, 4, b"rtx");
            assert!(send(&mut f, T0 + 7, from, &rtx, &mut out).is_empty());
            f.apply(T0, Command::RemoveSession { ssrc: 10 }).unwrap();
            let video = rtp_on(&mut peers[0], 100, 9, b"late");
            assert!(send(&mut f, T0 + 8, from, &video, &mut out).is_empty());
            assert_eq!(f.drops().get(DropReason::UnknownSsrc), 3, "{mode:?}");
        }
    }

    /// A datagram whose ciphertext would begin 0xBEDE (which
    /// @discordjs/voice reads as a header extension) goes out sealed under
    /// the next counter instead, and the counters go on after it.
    #[test]
    fn ciphertext_that_reads_as_an_extension_is_sealed_again() {
        for mode in [Mode::Aes256GcmRtpSize, Mode::XChaCha20Poly1305RtpSize] {
            let mut f = forwarder();
            let mut out = Outbox::with_capacity(1);
            let mut peers = vec![Peer::new(30, 7000, mode), Peer::new(31, 7001, mode)];
            call(&mut f, &mut out, &mut peers, 3);
            let from = peers[0].addr;
            let p = peers[0].rtp(b"first");
            let got = send(&mut f, T0, from, &p, &mut out);
            let (_, _, first) = peers[1].open(Kind::Rtp, &got[0].1).expect("opens");
            // Both modes are stream ciphers whose keystream depends on the
            // key and nonce only: the receiver's under the next counter
            // makes a payload whose ciphertext starts 0xBEDE.
            let next = first + 1;
            let probe = [0x80, 0x78, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
            let keystream = peers[1].cipher.encrypt_with(&probe, next, [0; 24]).unwrap();
            let payload = [keystream[12] ^ 0xBE, keystream[13] ^ 0xDE, b'x', b'y'];
            let p = peers[0].rtp(&payload);
            let got = send(&mut f, T0, from, &p, &mut out);
            assert_eq!(got.len(), 1, "{mode:?}");
            let bytes = &got[0].1;
            let plain = peers[1].cipher.decrypt(bytes).expect("opens");
            let under_next = peers[1].cipher.encrypt_with(&plain, next, [0; 24]).unwrap();
            assert_eq!(
                under_next[12..14],
                [0xBE, 0xDE],
                "{mode:?}: the probe works"
            );
            assert_ne!(bytes[12..14], [0xBE, 0xDE], "{mode:?}");
            let (ssrc, body, counter) = peers[1].open(Kind::Rtp, bytes).expect("opens");
            assert_eq!(
                (ssrc, body.as_slice(), counter),
                (30, &payload[..], next + 1)
            );
            let p = peers[0].rtp(b"after");
            let got = send(&mut f, T0, from, &p, &mut out);
            let (_, _, after) = peers[1].open(Kind::Rtp, &got[0].1).expect("opens");
            assert_eq!(after, next + 2, "{mode:?}");
            assert_eq!(f.drops().total(), 0);
        }
    }

    #[test]
    fn audio_replayed_under_a_video_ssrc_is_refused() {
        // In xsalsa20_poly1305_lite the RTP header is not authenticated:
        // an attacker who rewrites the SSRC of a captured audio packet to
        // the sender's video SSRC must not get it forwarded twice. The
        // counter is the sender's, whatever the SSRC.
        let mut f = forwarder();
        let mut out = Outbox::with_capacity(4);
        let mode = Mode::XSalsa20Poly1305Lite;
        let mut peers: Vec<Peer> = (0..2)
            .map(|i| Peer::new(10 + i, 6100 + i as u16, mode))
            .collect();
        call(&mut f, &mut out, &mut peers, 7);
        f.apply(T0, video_spec(&peers[0], 7, &[100], true)).unwrap();
        f.apply(T0, video_spec(&peers[1], 7, &[], true)).unwrap();
        let from = peers[0].addr;
        let mut audio = peers[0].rtp(b"voice");
        assert_eq!(send(&mut f, T0 + 1, from, &audio, &mut out).len(), 1);
        audio[8..12].copy_from_slice(&100u32.to_be_bytes());
        assert!(send(&mut f, T0 + 2, from, &audio, &mut out).is_empty());
        assert_eq!(f.drops().get(DropReason::Replay), 1);
    }

    #[test]
    fn slots_outside_the_table_are_refused() {
        let mut f = Forwarder::new(0, ForwardConfig::default(), Counters::in_memory(4));
        let p = Peer::aes(150, 1);
        assert_eq!(
            f.apply(T0, p.spec(1, None)),
            Err(ApplyError::Slot {
                ssrc: 150,
                slot: 150
            })
        );
    }

    #[test]
    fn mixed_modes_are_converted() {
        let mut f = forwarder();
        let mut out = Outbox::with_capacity(8);
        let mut speaker = Peer::aes(160, 1000);
        f.apply(T0, speaker.spec(5, None)).unwrap();
        let listeners: Vec<Peer> = Mode::ALL
            .into_iter()
            .enumerate()
            .map(|(i, mode)| Peer::new(170 + i as u32, 2000 + i as u16, mode))
            .collect();
        for l in &listeners {
            announce(&mut f, l, 5);
            send(&mut f, T0, l.addr, &l.discovery(), &mut out);
            f.apply(T0, l.spec(5, Some(l.addr))).unwrap();
        }
        let p = speaker.rtp(b"opus!");
        let got = send(&mut f, T0, speaker.addr, &p, &mut out);
        assert_eq!(got.len(), Mode::ALL.len());
        for (addr, bytes) in got {
            let l = listeners.iter().find(|l| l.addr == addr).unwrap();
            let (ssrc, body, _) = l.open(Kind::Rtp, &bytes).unwrap();
            assert_eq!((ssrc, &body[..]), (160, &b"opus!"[..]), "{:?}", l.mode);
        }
    }
}
