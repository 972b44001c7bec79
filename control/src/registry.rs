//! The registry of channels, voice states and gateway sessions: control's
//! source of truth.
//!
//! Sans-IO: the protocol state machines call into it, and it queues
//! [`Effect`]s (data-plane commands, messages for gateway connections) that
//! the server layer drains with [`Registry::drain_effects`] and carries out.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use protocol::gateway::{Identify, Resume, Video};
use protocol::lvsp::ChannelAssign;
use protocol::Snowflake;
use rand::rngs::StdRng;
use rand::RngCore;
use shared::{Command, Mode, SessionSpec};

use crate::dave::{self, DaveMode, DaveNotice};
use crate::limit::{Bucket, RateLimit};
use crate::stream::Stream;
pub use crate::stream::{Notice, Sequenced, SessionKey};
use crate::video::{member_ssrcs, MemberVideo, VideoError};

/// Identifies one gateway websocket connection.
pub type ConnId = u64;

/// What the registry wants done with one gateway connection. It stays
/// typed: the connection turns it into a message or a close code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Push {
    /// A notice, already numbered in the session's stream.
    Notice(Sequenced),
    /// The session was taken from the connection: close it.
    Close(Kick),
}

/// Why the registry took a session from its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kick {
    /// Another connection identified for the same voice state.
    Replaced,
    /// Another connection resumed the session.
    ResumedElsewhere,
    /// The voice state or its channel was destroyed (over LVSP, or expired).
    Disconnected,
    /// The server drained and its deadline came with the member still in
    /// the call: the process is about to exit. `restart`: another one takes
    /// its place (the client should resume), else it is gone for good.
    Drained {
        /// A restart follows the exit.
        restart: bool,
    },
}

/// How a gateway connection ended, as far as its session is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Departure {
    /// The socket died, or the server closed it with 4009: the session is
    /// parked for a Resume within the resume grace, still in the call.
    Parked,
    /// The client closed with 1000 or 1001: shown as a leave at once, but
    /// resumable within the leave grace (discord.js closes that way when
    /// it resumes after losing UDP).
    Left,
    /// The server ended the session (a refusal): it leaves the call now.
    Gone,
}

/// Something the server layer must do after a registry call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Write a command into a core's ring.
    Dataplane {
        /// The owning core.
        core: u32,
        /// The command.
        command: Command,
    },
    /// Deliver a message to one gateway connection.
    Gateway {
        /// The connection.
        conn: ConnId,
        /// The message.
        push: Push,
    },
}

/// A voice channel assigned over LVSP.
#[derive(Debug, Clone)]
pub struct Channel {
    /// The channel.
    pub channel_id: Snowflake,
    /// The guild (None for DMs).
    pub guild_id: Option<Snowflake>,
    /// The token clients present at Identify.
    pub token: String,
    /// Numeric id used on the data plane.
    pub num: u64,
    /// The data-plane core that owns the channel.
    pub core: u32,
    /// Voice states in the channel, by session id.
    pub members: HashSet<String>,
    /// Since when the channel has no voice states (None while it has).
    pub empty_since: Option<Instant>,
}

/// A user's voice state in a channel, created over LVSP.
#[derive(Debug)]
struct VoiceState {
    user_id: Snowflake,
    channel_id: Snowflake,
    /// The gateway connection attached to it, if any.
    conn: Option<ConnId>,
    /// The SSRC handed out at the first Identify.
    ssrc: Option<u32>,
    /// Last speaking flags the client sent since it joined the call
    /// (None: none yet). Replayed to joiners even when 0: clients such as
    /// discord.py announce their SSRC with `speaking: 0`, and discord.js
    /// learns SSRCs from op 5 alone.
    speaking: Option<u32>,
    /// The gateway session's numbered messages (from Identify on): what a
    /// Resume re-delivers.
    stream: Option<Stream>,
    /// Since when the websocket is gone with the session kept for a Resume.
    parked_since: Option<Instant>,
    /// The client closed normally (1000/1001): the others were told it
    /// left and the data plane holds its session, but a Resume within
    /// the leave grace brings it back.
    left: bool,
    /// What Select Protocol pushed to the data plane (kept to push it again
    /// into a restarted data plane; its key is wiped when it is dropped).
    media: Option<SessionSpec>,
    /// Where IP discovery for the SSRC last came from, as a core reported
    /// it. Unauthenticated: shown to operators, never pushed anywhere.
    observed: Option<SocketAddr>,
    /// The address a core proved for the SSRC (an authenticated packet, or
    /// the declared address matching an observation): the only address
    /// pushed into a restarted data plane, and bound on every other core.
    proven: Option<SocketAddr>,
    /// The session's entry in the region's counter table, from the first
    /// Select Protocol until it leaves the call.
    slot: Option<u32>,
    /// The member's gateway message budget. It belongs to the voice state,
    /// not to a socket: identifying or resuming on a new connection does
    /// not refill it. Created at the first charge.
    budget: Option<Bucket>,
    /// Since when no gateway session is in the call for it (created and
    /// never identified, or left the call); None while one is.
    idle_since: Option<Instant>,
    /// The highest DAVE protocol version its client supports (Identify's
    /// `max_dave_protocol_version`).
    dave: u16,
    /// Its session came back from a saved state (a control restart): the
    /// client may have heard more than the save kept, so a Resume that
    /// acknowledges more catches the stream up instead of failing.
    restored: bool,
    /// Its video streams, when its Identify asked for video (allocated
    /// with the SSRC, released with it).
    video: Option<MemberVideo>,
}

impl VoiceState {
    /// A voice state no session has identified for yet.
    fn new(user_id: Snowflake, channel_id: Snowflake) -> VoiceState {
        VoiceState {
            user_id,
            channel_id,
            conn: None,
            ssrc: None,
            speaking: None,
            stream: None,
            parked_since: None,
            left: false,
            media: None,
            observed: None,
            proven: None,
            slot: None,
            budget: None,
            idle_since: None,
            dave: 0,
            restored: false,
            video: None,
        }
    }

    /// Identified, attached or parked: the member is in the call.
    fn in_call(&self) -> bool {
        self.stream.is_some()
    }

    /// Op 12 for the others, once it has an SSRC.
    fn ssrcs(&self) -> Option<Notice> {
        let ssrc = self.ssrc?;
        Some(Notice::Ssrcs(member_ssrcs(
            self.user_id,
            ssrc,
            self.video.as_ref(),
        )))
    }

    /// Its video on the data plane (none: it neither sends nor receives).
    fn video_spec(&self) -> shared::VideoSpec {
        self.video
            .as_ref()
            .map(MemberVideo::spec)
            .unwrap_or_default()
    }
}

/// Why a gateway Identify or Resume was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IdentifyError {
    /// No voice state with that session id, user, channel and token.
    #[error("authentication failed")]
    AuthenticationFailed,
    /// `server_id` names no guild or DM channel of this server.
    #[error("server not found")]
    ServerNotFound,
    /// Resume: the session is gone (expired, removed, never identified) or
    /// the messages after `seq_ack` are no longer kept.
    #[error("session no longer valid")]
    SessionInvalid,
    /// The session's message budget is spent (it survives reconnects).
    #[error("rate limited")]
    RateLimited,
    /// DAVE is required and the client does not support it.
    #[error("end-to-end encryption required")]
    E2eeRequired,
}

/// Why Select Protocol could not key a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SelectError {
    /// Every slot of the counter table is in use: the data plane keys no
    /// more sessions at once.
    #[error("server full")]
    Full,
}

/// What a successful Identify hands the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identified {
    /// The session's SSRC.
    pub ssrc: u32,
    /// The channel.
    pub channel_id: Snowflake,
    /// [`Notice::Ready`], numbered first in the session's new stream. Who
    /// is in the call follows as pushes.
    pub ready: Sequenced,
}

/// What a successful Resume hands the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resumed {
    /// The session's SSRC (unchanged).
    pub ssrc: u32,
    /// The member.
    pub user_id: Snowflake,
    /// Its channel.
    pub channel_id: Snowflake,
    /// The numbered notices after the client's `seq_ack`, in order.
    pub missed: Vec<Sequenced>,
}

/// Why an LVSP request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// VOICE_STATE_CREATE for a channel that was never requested.
    #[error("unknown channel {0}")]
    UnknownChannel(Snowflake),
}

impl RequestError {
    /// Every reason's name in metrics, in the order of the variants.
    pub const REASONS: [&'static str; 1] = ["unknown_channel"];

    /// The reason's name in metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            RequestError::UnknownChannel(_) => Self::REASONS[0],
        }
    }
}

/// A drain in progress: health reads 0 so Litecord places new channels
/// elsewhere; calls go on until they end or the deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Drain {
    /// When members still in a call are closed.
    deadline: Instant,
    /// A restart follows the exit: members closed at the deadline are told
    /// to resume (4015) instead of leaving for good (4014).
    restart: bool,
    /// The deadline came and every member was closed.
    expired: bool,
}

/// What the registry reclaimed by itself (Litecord never destroys).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reclaim {
    /// A gateway session nobody resumed within its grace left the call.
    Session = 0,
    /// A voice state with no session in the call for the idle time.
    VoiceState = 1,
    /// A channel with no voice states for the idle time.
    Channel = 2,
}

impl Reclaim {
    /// Every kind, in the order of the variants.
    pub const ALL: [Reclaim; 3] = [Reclaim::Session, Reclaim::VoiceState, Reclaim::Channel];

    /// The kind's name in metrics.
    pub fn name(self) -> &'static str {
        match self {
            Reclaim::Session => "session",
            Reclaim::VoiceState => "voice_state",
            Reclaim::Channel => "channel",
        }
    }
}

/// The registry.
#[derive(Debug)]
pub struct Registry {
    cores: u32,
    channels: HashMap<Snowflake, Channel>,
    states: HashMap<String, VoiceState>,
    /// Live voice state per (channel, user): Litecord re-sends creates.
    by_user: HashMap<(Snowflake, Snowflake), String>,
    /// Allocated SSRCs and whose voice state holds each.
    ssrcs: HashMap<u32, String>,
    next_channel: u64,
    /// Sessions per core, for placement.
    load: Vec<u64>,
    effects: VecDeque<Effect>,
    health: f64,
    /// Identified LVSP connections.
    lvsp_connections: usize,
    /// Since when no LVSP connection is identified (None while one is).
    orphaned_since: Option<Instant>,
    /// How long state survives without Litecord.
    orphan_grace: Duration,
    /// Parked gateway sessions in parking order (the grace is the same for
    /// all, so deadlines are in order too). Entries whose state was resumed
    /// or removed since are skipped when they come up.
    parked: VecDeque<(Instant, String)>,
    /// How long a session whose websocket went away waits for a Resume.
    resume_grace: Duration,
    /// Sessions whose client closed normally, in order (like `parked`,
    /// with the leave grace).
    leaving: VecDeque<(Instant, String)>,
    /// How long such a session may still resume.
    leave_grace: Duration,
    /// Voice states that went idle, in order (like `parked`, with the
    /// voice-state idle time); stale entries are skipped.
    idle_states: VecDeque<(Instant, String)>,
    /// How long a voice state with no session in the call is kept.
    voice_state_idle: Duration,
    /// Channels that went empty, in order (with the channel idle time).
    empty_channels: VecDeque<(Instant, Snowflake)>,
    /// How long a channel with no voice states is kept.
    channel_idle: Duration,
    /// What was reclaimed, by [`Reclaim`].
    reclaimed: [u64; 3],
    /// Numbered messages kept per gateway session for Resume.
    stream_capacity: usize,
    /// Counter-table slots never handed out yet start here...
    next_slot: u32,
    /// ...up to this many in all; freed ones are reused first.
    slot_count: u32,
    free_slots: Vec<u32>,
    /// Tokens, session ids, SSRCs and session keys come from here.
    rng: StdRng,
    /// LVSP requests refused, by [`RequestError::reason`].
    request_errors: BTreeMap<&'static str, u64>,
    /// Set once the server was told to drain; never cleared.
    drain: Option<Drain>,
    /// Bumped by every call that may change what [`Registry::save`]
    /// returns: the server saves only when it moved.
    changes: u64,
    /// Whether calls are end-to-end encrypted, and the external sender
    /// of every channel's MLS group (None while DAVE is off).
    dave: (DaveMode, Option<Arc<dave::mls::ExternalSender>>),
    /// Each channel's DAVE state, while it has keyed members.
    calls: HashMap<Snowflake, dave::Call>,
    /// DAVE messages refused since start.
    dave_refused: u64,
}

/// Takes what a deadline queue holds whose deadline is past, in order.
fn take_due<K>(queue: &mut VecDeque<(Instant, K)>, now: Instant) -> Vec<K> {
    let due = queue
        .iter()
        .take_while(|(deadline, _)| *deadline <= now)
        .count();
    queue.drain(..due).map(|(_, key)| key).collect()
}

/// A 128-bit random value as 32 lowercase hex digits.
fn random_token(rng: &mut StdRng) -> String {
    let mut b = [0u8; 16];
    rng.fill_bytes(&mut b);
    hex::encode(b)
}

impl Registry {
    /// An empty registry for a data plane of `cores` cores, drawing its
    /// tokens, session ids, SSRCs and keys from `rng` (seeded from the
    /// operating system in the server, from a constant in tests).
    pub fn new(cores: u32, rng: StdRng) -> Registry {
        assert!(cores > 0, "at least one core");
        Registry {
            rng,
            cores,
            channels: HashMap::new(),
            states: HashMap::new(),
            by_user: HashMap::new(),
            ssrcs: HashMap::new(),
            next_channel: 1,
            load: vec![0; cores as usize],
            effects: VecDeque::new(),
            health: 1.0,
            lvsp_connections: 0,
            orphaned_since: None,
            orphan_grace: Duration::from_secs(300),
            parked: VecDeque::new(),
            resume_grace: Duration::from_secs(30),
            leaving: VecDeque::new(),
            leave_grace: Duration::from_secs(5),
            idle_states: VecDeque::new(),
            voice_state_idle: Duration::from_secs(300),
            empty_channels: VecDeque::new(),
            channel_idle: Duration::from_secs(300),
            reclaimed: [0; 3],
            stream_capacity: 256,
            next_slot: 0,
            slot_count: 65_536,
            free_slots: Vec::new(),
            request_errors: BTreeMap::new(),
            drain: None,
            changes: 0,
            dave: (DaveMode::Off, None),
            calls: HashMap::new(),
            dave_refused: 0,
        }
    }

    /// How many sessions the region's counter table holds (default 65536,
    /// `shared::RegionConfig::counter_slots`): at most this many sessions
    /// can be keyed at once.
    pub fn set_counter_slots(&mut self, slots: u32) {
        self.slot_count = slots;
    }

    fn take_slot(&mut self) -> Option<u32> {
        self.free_slots.pop().or_else(|| {
            (self.next_slot < self.slot_count).then(|| {
                self.next_slot += 1;
                self.next_slot - 1
            })
        })
    }

    /// Takes every queued effect, in order.
    pub fn drain_effects(&mut self) -> impl Iterator<Item = Effect> + '_ {
        self.effects.drain(..)
    }

    /// How long channels and voice states survive while no LVSP connection
    /// is identified (default 5 minutes).
    pub fn set_orphan_grace(&mut self, grace: Duration) {
        self.orphan_grace = grace;
    }

    /// How long a gateway session whose websocket went away keeps its SSRC,
    /// key and address for a Resume (default 30 s), and how many numbered
    /// messages it keeps for re-delivery (default 256).
    pub fn set_resume(&mut self, grace: Duration, capacity: usize) {
        self.resume_grace = grace;
        self.stream_capacity = capacity.max(1);
    }

    /// How long a session whose client closed normally (1000/1001) may
    /// still resume (default 5 s); the others are told it left at once.
    pub fn set_leave_grace(&mut self, grace: Duration) {
        self.leave_grace = grace;
    }

    /// How long a voice state with no gateway session in the call (never
    /// identified, or left) is kept (default 5 minutes), and how long a
    /// channel with no voice states is (default 5 minutes). Litecord never
    /// destroys either; one it asks for again is created afresh.
    pub fn set_idle(&mut self, voice_state: Duration, channel: Duration) {
        self.voice_state_idle = voice_state;
        self.channel_idle = channel;
    }

    /// Turns end-to-end encryption on (or requires it), with `sender` as
    /// the external sender of every call's MLS group.
    pub fn set_dave(&mut self, mode: DaveMode, sender: Option<Arc<dave::mls::ExternalSender>>) {
        self.dave = match sender {
            Some(sender) if mode != DaveMode::Off => (mode, Some(sender)),
            _ => (DaveMode::Off, None),
        };
    }

    /// DAVE messages refused since start (a bad key package or commit).
    pub fn dave_refused(&self) -> u64 {
        self.dave_refused
    }

    /// Calls end-to-end encrypted now (DAVE version 1).
    pub fn dave_calls(&self) -> usize {
        self.calls
            .values()
            .filter(|c| c.version() == dave::PROTOCOL_VERSION)
            .count()
    }

    /// How many of `what` were reclaimed since start.
    pub fn reclaimed(&self, what: Reclaim) -> u64 {
        self.reclaimed[what as usize]
    }

    /// An LVSP connection identified or resumed: Litecord reclaims all
    /// state.
    pub fn lvsp_up(&mut self) {
        self.lvsp_connections += 1;
        self.orphaned_since = None;
    }

    /// An identified LVSP connection went away; with none left, the grace
    /// period starts.
    pub fn lvsp_down(&mut self, now: Instant) {
        self.lvsp_connections = self.lvsp_connections.saturating_sub(1);
        if self.lvsp_connections == 0 {
            self.orphaned_since = Some(now);
        }
    }

    /// When [`Registry::handle_timeout`] must next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let orphan = self
            .orphaned_since
            .filter(|_| !self.channels.is_empty())
            .map(|t| t + self.orphan_grace);
        let parked = self.parked.front().map(|(t, _)| *t);
        let leaving = self.leaving.front().map(|(t, _)| *t);
        let drain = self.drain.filter(|d| !d.expired).map(|d| d.deadline);
        let idle = self.idle_states.front().map(|(t, _)| *t);
        let empty = self.empty_channels.front().map(|(t, _)| *t);
        let dave = self
            .calls
            .values()
            .filter_map(dave::Call::poll_timeout)
            .min();
        orphan
            .into_iter()
            .chain(dave)
            .chain(parked)
            .chain(leaving)
            .chain(drain)
            .chain(idle)
            .chain(empty)
            .min()
    }

    /// Time passes: parked gateway sessions nobody resumed leave the call;
    /// voice states idle for the voice-state idle time are removed, then
    /// channels empty for the channel idle time are destroyed; state
    /// Litecord did not reclaim within its grace period expires (every
    /// channel destroyed, members closed with 4014); at a drain's deadline
    /// every member still in a call is closed ([`Kick::Drained`]).
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.poll_timeout().is_some_and(|t| t <= now) {
            self.changes += 1;
        }
        let due: Vec<Snowflake> = self
            .calls
            .iter()
            .filter(|(_, c)| c.poll_timeout().is_some_and(|t| t <= now))
            .map(|(ch, _)| *ch)
            .collect();
        for channel_id in due {
            if let Some(call) = self.calls.get_mut(&channel_id) {
                call.handle_timeout(now);
            }
            self.dave_deliver(channel_id);
        }
        for session_id in take_due(&mut self.parked, now) {
            let expired = self.states.get(&session_id).and_then(|s| s.parked_since);
            if expired.is_some_and(|since| since + self.resume_grace <= now) {
                self.reclaimed[Reclaim::Session as usize] += 1;
                self.leave_call(&session_id, now);
            }
        }
        for session_id in take_due(&mut self.leaving, now) {
            let state = self.states.get(&session_id);
            let expired = state
                .filter(|s| s.left)
                .and_then(|s| s.parked_since)
                .is_some_and(|since| since + self.leave_grace <= now);
            if expired {
                self.reclaimed[Reclaim::Session as usize] += 1;
                self.leave_call(&session_id, now);
            }
        }
        // Each queue holds every idle state (empty channel) once per time
        // it went idle (empty), in deadline order: the front is the only
        // one to look at, and an entry whose state identified (channel
        // got a member) since is dropped when it comes up.
        for session_id in take_due(&mut self.idle_states, now) {
            let state = self.states.get(&session_id);
            let expired = state
                .filter(|s| !s.in_call())
                .and_then(|s| s.idle_since)
                .is_some_and(|since| since + self.voice_state_idle <= now);
            if expired {
                self.reclaimed[Reclaim::VoiceState as usize] += 1;
                self.remove_state(&session_id, now);
            }
        }
        for channel_id in take_due(&mut self.empty_channels, now) {
            let ch = self.channels.get(&channel_id);
            let expired = ch
                .filter(|c| c.members.is_empty())
                .and_then(|c| c.empty_since)
                .is_some_and(|since| since + self.channel_idle <= now);
            if expired {
                self.reclaimed[Reclaim::Channel as usize] += 1;
                self.channel_destroy(channel_id);
            }
        }
        let orphan = self.orphaned_since.map(|t| t + self.orphan_grace);
        if !self.channels.is_empty() && orphan.is_some_and(|t| now >= t) {
            let channels: Vec<Snowflake> = self.channels.keys().copied().collect();
            tracing::info!(channels = channels.len(), "LVSP state expired");
            for channel_id in channels {
                self.channel_destroy(channel_id);
            }
        }
        if let Some(drain) = self.drain.filter(|d| !d.expired && now >= d.deadline) {
            let mut members: Vec<String> = self
                .states
                .iter()
                .filter(|(_, s)| s.in_call())
                .map(|(sid, _)| sid.clone())
                .collect();
            members.sort();
            tracing::info!(members = members.len(), "drain deadline: closing calls");
            let kick = Kick::Drained {
                restart: drain.restart,
            };
            for sid in members {
                if let Some(conn) = self.leave_call(&sid, now) {
                    let push = Push::Close(kick);
                    self.effects.push_back(Effect::Gateway { conn, push });
                }
            }
            self.drain = Some(Drain {
                expired: true,
                ..drain
            });
        }
    }

    /// Starts draining: [`Registry::health`] reads 0 from now on, calls go
    /// on, and members still in a call at `deadline` are closed with
    /// [`Kick::Drained`] (`restart` says whether a restart follows).
    /// Channels are still assigned and members still identify: Litecord
    /// decides. Draining again keeps the earlier deadline and takes the
    /// latest `restart`. Returns false if the server was draining already.
    pub fn drain(&mut self, deadline: Instant, restart: bool) -> bool {
        self.changes += 1;
        match &mut self.drain {
            Some(d) => {
                d.restart = restart;
                if !d.expired {
                    d.deadline = d.deadline.min(deadline);
                }
                false
            }
            None => {
                self.drain = Some(Drain {
                    deadline,
                    restart,
                    expired: false,
                });
                true
            }
        }
    }

    /// The server was told to drain.
    pub fn draining(&self) -> bool {
        self.drain.is_some()
    }

    /// Draining and done: no member is in any call (parked sessions and
    /// those still within the leave grace count as members: they may
    /// resume), or the deadline closed them all. The server exits then.
    pub fn drained(&self) -> bool {
        self.drain
            .is_some_and(|d| d.expired || !self.states.values().any(VoiceState::in_call))
    }

    /// Server health in [0, 1] as last computed from measured load; 0
    /// while draining, so that Litecord places new channels elsewhere.
    pub fn health(&self) -> f64 {
        if self.drain.is_some() {
            0.0
        } else {
            self.health
        }
    }

    /// Records a new health figure (clamped to [0, 1]).
    pub fn set_health(&mut self, health: f64) {
        self.health = if health.is_nan() {
            0.0
        } else {
            health.clamp(0.0, 1.0)
        };
    }

    /// Number of channels.
    pub fn channel_count(&self) -> usize {
        self.channels.len()
    }

    /// Number of voice states.
    pub fn voice_state_count(&self) -> usize {
        self.states.len()
    }

    /// Number of gateway sessions in calls (attached or parked).
    pub fn session_count(&self) -> usize {
        self.states.values().filter(|s| s.in_call()).count()
    }

    /// Number of gateway sessions waiting for a Resume.
    pub fn parked_count(&self) -> usize {
        self.states
            .values()
            .filter(|s| s.parked_since.is_some())
            .count()
    }

    /// A channel.
    pub fn channel(&self, channel_id: Snowflake) -> Option<&Channel> {
        self.channels.get(&channel_id)
    }

    /// CHANNEL_REQ: creates the channel, or returns the existing assignment.
    /// A channel asked for again while empty waits the channel idle time
    /// afresh (a VOICE_STATE_CREATE usually follows).
    pub fn channel_req(
        &mut self,
        channel_id: Snowflake,
        guild_id: Option<Snowflake>,
        now: Instant,
    ) -> ChannelAssign {
        self.changes += 1;
        let (cores, load, next, rng) = (
            self.cores,
            &self.load,
            &mut self.next_channel,
            &mut self.rng,
        );
        let ch = self.channels.entry(channel_id).or_insert_with(|| {
            // Least-loaded core; ties go to the lowest index.
            let core = (0..cores).min_by_key(|c| load[*c as usize]).unwrap_or(0);
            *next += 1;
            Channel {
                channel_id,
                guild_id,
                token: random_token(rng),
                num: *next - 1,
                core,
                members: HashSet::new(),
                empty_since: None,
            }
        });
        if ch.members.is_empty() {
            ch.empty_since = Some(now);
            self.empty_channels
                .push_back((now + self.channel_idle, channel_id));
        }
        ChannelAssign {
            channel: protocol::lvsp::Channel {
                channel_id: ch.channel_id,
                guild_id: ch.guild_id,
            },
            token: ch.token.clone(),
        }
    }

    /// CHANNEL_DESTROY: closes every member's gateway with 4014 and removes
    /// the channel from its core. Unknown channels are ignored (idempotent).
    pub fn channel_destroy(&mut self, channel_id: Snowflake) {
        self.changes += 1;
        let Some(ch) = self.channels.remove(&channel_id) else {
            return;
        };
        self.calls.remove(&channel_id);
        // The data plane forgets the channel before anyone is told: a member
        // closed with 4014 can no longer send into the call.
        self.effects.push_back(Effect::Dataplane {
            core: ch.core,
            command: Command::RemoveChannel { channel: ch.num },
        });
        for session_id in &ch.members {
            let Some(state) = self.states.remove(session_id) else {
                continue;
            };
            self.by_user.remove(&(state.channel_id, state.user_id));
            for video in state.video.iter().flat_map(MemberVideo::ssrcs) {
                self.ssrcs.remove(&video);
            }
            if let Some(ssrc) = state.ssrc {
                self.ssrcs.remove(&ssrc);
                self.load[ch.core as usize] = self.load[ch.core as usize].saturating_sub(1);
                if let Some(addr) = state.proven {
                    self.others(ch.core, Command::UnbindAddress { addr, ssrc });
                }
            }
            self.free_slots.extend(state.slot);
            if let Some(conn) = state.conn {
                self.effects.push_back(Effect::Gateway {
                    conn,
                    push: Push::Close(Kick::Disconnected),
                });
            }
        }
    }

    /// VOICE_STATE_CREATE: returns the session id (the same one on
    /// repeats). Until a gateway session identifies for it, the state is
    /// idle: a repeat waits the voice-state idle time afresh.
    pub fn voice_state_create(
        &mut self,
        user_id: Snowflake,
        channel_id: Snowflake,
        now: Instant,
    ) -> Result<String, RequestError> {
        self.changes += 1;
        let key = (channel_id, user_id);
        if let Some(sid) = self.by_user.get(&key) {
            let sid = sid.clone();
            self.went_idle(&sid, now);
            return Ok(sid);
        }
        let Some(ch) = self.channels.get_mut(&channel_id) else {
            return Err(self.refused(RequestError::UnknownChannel(channel_id)));
        };
        let session_id = random_token(&mut self.rng);
        ch.members.insert(session_id.clone());
        ch.empty_since = None;
        self.states
            .insert(session_id.clone(), VoiceState::new(user_id, channel_id));
        self.by_user.insert(key, session_id.clone());
        self.went_idle(&session_id, now);
        Ok(session_id)
    }

    /// Starts (or restarts) the idle time of a voice state with no session
    /// in the call.
    fn went_idle(&mut self, session_id: &str, now: Instant) {
        let Some(state) = self.states.get_mut(session_id) else {
            return;
        };
        if state.in_call() {
            return;
        }
        state.idle_since = Some(now);
        self.idle_states
            .push_back((now + self.voice_state_idle, session_id.to_owned()));
    }

    /// Forgets a voice state no session is in the call for; a channel
    /// left with no voice states starts its idle time.
    fn remove_state(&mut self, session_id: &str, now: Instant) {
        let Some(state) = self.states.remove(session_id) else {
            return;
        };
        let key = (state.channel_id, state.user_id);
        if self.by_user.get(&key).is_some_and(|sid| sid == session_id) {
            self.by_user.remove(&key);
        }
        let Some(ch) = self.channels.get_mut(&state.channel_id) else {
            return;
        };
        ch.members.remove(session_id);
        if ch.members.is_empty() {
            ch.empty_since = Some(now);
            self.empty_channels
                .push_back((now + self.channel_idle, state.channel_id));
        }
    }

    /// Counts a refused request by reason.
    fn refused(&mut self, e: RequestError) -> RequestError {
        *self.request_errors.entry(e.reason()).or_default() += 1;
        e
    }

    /// How many LVSP requests were refused with `reason` (a
    /// [`RequestError::REASONS`] name).
    pub fn request_errors(&self, reason: &str) -> u64 {
        self.request_errors.get(reason).copied().unwrap_or(0)
    }

    /// VOICE_STATE_DESTROY: removes the user's state in that channel,
    /// closing its gateway with 4014. Unknown states are ignored.
    pub fn voice_state_destroy(&mut self, user_id: Snowflake, channel_id: Snowflake, now: Instant) {
        self.changes += 1;
        let Some(sid) = self.by_user.get(&(channel_id, user_id)).cloned() else {
            return;
        };
        if let Some(conn) = self.leave_call(&sid, now) {
            self.effects.push_back(Effect::Gateway {
                conn,
                push: Push::Close(Kick::Disconnected),
            });
        }
        self.remove_state(&sid, now);
    }

    /// Takes a session out of the call: its SSRC leaves the data plane, the
    /// others get Client Disconnect. The voice state stays (it may
    /// identify again), idle from `now`. Returns the connection that was
    /// attached, if any.
    fn leave_call(&mut self, session_id: &str, now: Instant) -> Option<ConnId> {
        let state = self.states.get_mut(session_id)?;
        let conn = state.conn.take();
        let had_session = state.stream.take().is_some();
        // A member who closed normally was shown leaving already.
        let in_call = had_session && !std::mem::take(&mut state.left);
        state.parked_since = None;
        state.media = None; // wipes the key
        state.observed = None;
        let proven = state.proven.take();
        let slot = state.slot.take();
        state.speaking = None;
        let ssrc = state.ssrc.take();
        let video = state.video.take();
        let (user_id, channel_id) = (state.user_id, state.channel_id);
        self.free_slots.extend(slot);
        for video in video.iter().flat_map(MemberVideo::ssrcs) {
            self.ssrcs.remove(&video);
        }
        if had_session {
            self.went_idle(session_id, now);
        }
        let core = self.channels.get(&channel_id)?.core;
        if let Some(ssrc) = ssrc {
            self.ssrcs.remove(&ssrc);
            self.load[core as usize] = self.load[core as usize].saturating_sub(1);
            self.effects.push_back(Effect::Dataplane {
                core,
                command: Command::RemoveSession { ssrc },
            });
            if let Some(addr) = proven {
                self.others(core, Command::UnbindAddress { addr, ssrc });
            }
        }
        if in_call {
            self.broadcast(channel_id, session_id, || Notice::Left(user_id));
        }
        if let Some(call) = self.calls.get_mut(&channel_id) {
            call.leave(session_id, now);
            self.dave_deliver(channel_id);
        }
        conn
    }

    /// Numbers a notice in `session_id`'s stream and delivers it if a
    /// connection is attached; a parked session keeps it for its Resume
    /// (in place of the kept notice it supersedes).
    fn deliver(&mut self, session_id: &str, notice: Notice) {
        let Some(state) = self.states.get_mut(session_id) else {
            return;
        };
        let Some(stream) = state.stream.as_mut() else {
            return;
        };
        let notice = stream.notice(notice);
        if let Some(conn) = state.conn {
            self.effects.push_back(Effect::Gateway {
                conn,
                push: Push::Notice(notice),
            });
        }
    }

    /// Delivers a notice to every other member in the call.
    fn broadcast(&mut self, channel_id: Snowflake, except: &str, make: impl Fn() -> Notice) {
        let Some(ch) = self.channels.get(&channel_id) else {
            return;
        };
        let mut targets: Vec<String> = ch
            .members
            .iter()
            .filter(|sid| *sid != except && self.states.get(*sid).is_some_and(VoiceState::in_call))
            .cloned()
            .collect();
        targets.sort();
        for sid in targets {
            self.deliver(&sid, make());
        }
    }

    /// Checks Identify/Resume credentials: the state, its channel's token
    /// and server id (and the user, when given).
    fn authenticate(
        &self,
        server_id: Snowflake,
        user_id: Option<Snowflake>,
        session_id: &str,
        token: &str,
    ) -> Result<&VoiceState, IdentifyError> {
        let known_server = self
            .channels
            .values()
            .any(|c| c.guild_id.unwrap_or(c.channel_id) == server_id);
        if !known_server {
            return Err(IdentifyError::ServerNotFound);
        }
        let state = self
            .states
            .get(session_id)
            .ok_or(IdentifyError::AuthenticationFailed)?;
        let ch = &self.channels[&state.channel_id];
        let expected_server = ch.guild_id.unwrap_or(ch.channel_id);
        let token_ok = constant_time_eq(token.as_bytes(), ch.token.as_bytes());
        if !token_ok || user_id.is_some_and(|u| u != state.user_id) || server_id != expected_server
        {
            return Err(IdentifyError::AuthenticationFailed);
        }
        Ok(state)
    }

    /// Charges one message to `session_id`'s budget (created from `limit`
    /// at the first charge); false when it is spent. A session that no
    /// longer exists has nothing to charge.
    pub fn spend(&mut self, session_id: &str, now: Instant, limit: RateLimit) -> bool {
        match self.states.get_mut(session_id) {
            Some(state) => state
                .budget
                .get_or_insert_with(|| Bucket::new(limit, now))
                .take(now),
            None => true,
        }
    }

    /// Gateway Identify: checks the credentials, charges the session's
    /// budget (`limit`: it is not refilled by identifying again), allocates
    /// the SSRC on the channel's core and announces it to that core. The
    /// session's new stream is `numbered` as the connection's gateway
    /// version is; Ready comes back numbered first, and who is in the call
    /// (and which SSRC is whose) is pushed right after it.
    pub fn identify(
        &mut self,
        conn: ConnId,
        numbered: bool,
        id: &Identify,
        now: Instant,
        limit: RateLimit,
    ) -> Result<Identified, IdentifyError> {
        let session_id = id.session_id.as_str();
        self.authenticate(id.server_id, Some(id.user_id), session_id, &id.token)?;
        // Counted once authenticated: a stranger's guess changes nothing.
        self.changes += 1;
        let max_dave = id.max_dave_protocol_version.unwrap_or(0);
        if self.dave.0 == DaveMode::Required && max_dave < dave::PROTOCOL_VERSION {
            return Err(IdentifyError::E2eeRequired);
        }
        if !self.spend(session_id, now, limit) {
            return Err(IdentifyError::RateLimited);
        }
        if let Some(state) = self.states.get_mut(session_id) {
            state.dave = max_dave;
        }
        let state = &self.states[session_id];
        let ch = &self.channels[&state.channel_id];
        let (core, num, channel_id) = (ch.core, ch.num, ch.channel_id);
        let (user_id, previous, ssrc) = (state.user_id, state.conn, state.ssrc);
        // A second Identify for the same voice state replaces the first
        // connection (the client reconnected without resuming).
        if let Some(old) = previous {
            self.effects.push_back(Effect::Gateway {
                conn: old,
                push: Push::Close(Kick::Replaced),
            });
        }
        let ssrc = match ssrc {
            Some(ssrc) => ssrc,
            None => {
                let ssrc = self.allocate_ssrc(core, session_id);
                self.load[core as usize] += 1;
                ssrc
            }
        };
        // Video streams, on the channel's core like the audio SSRC; kept
        // (like it) when the client identifies again.
        let new_video = (self.states[session_id].video.is_none() && id.wants_video())
            .then(|| MemberVideo::allocate(&id.streams, || self.allocate_ssrc(core, session_id)));
        let capacity = self.stream_capacity;
        let state = self
            .states
            .get_mut(session_id)
            .expect("authenticated above");
        // A member shown leaving (it closed normally) joins again.
        let rejoined = std::mem::take(&mut state.left);
        let joined = !state.in_call() || rejoined;
        state.conn = Some(conn);
        state.ssrc = Some(ssrc);
        state.parked_since = None;
        state.idle_since = None;
        if new_video.is_some() {
            state.video = new_video;
        }
        let streams = state
            .video
            .as_ref()
            .map(|v| v.streams.clone())
            .unwrap_or_default();
        let stream = state.stream.insert(Stream::new(numbered, capacity));
        let ready = stream.notice(Notice::Ready { ssrc, streams });
        self.effects.push_back(Effect::Dataplane {
            core,
            command: Command::AnnounceSsrc {
                ssrc,
                channel: num,
                user: user_id.0,
            },
        });
        if rejoined {
            let command = Command::HoldSession { ssrc, held: false };
            self.effects.push_back(Effect::Dataplane { core, command });
        }
        if joined {
            self.announce(channel_id, session_id, user_id);
        }
        self.welcome(session_id);
        Ok(Identified {
            ssrc,
            channel_id,
            ready,
        })
    }

    /// Tells the other members that `user_id` joined: Clients Connect
    /// (op 11), then its SSRCs and video streams (op 12), which koe-based
    /// clients (Lavalink) learn members from.
    fn announce(&mut self, channel_id: Snowflake, session_id: &str, user_id: Snowflake) {
        self.broadcast(channel_id, session_id, || Notice::Joined(vec![user_id]));
        if let Some(ssrcs) = self.states.get(session_id).and_then(VoiceState::ssrcs) {
            self.broadcast(channel_id, session_id, || ssrcs.clone());
        }
    }

    /// Tells a newly identified member who is in the call (op 11), each
    /// one's SSRCs (op 12) and the speakers' flags (op 5).
    fn welcome(&mut self, session_id: &str) {
        let Some(channel_id) = self.states.get(session_id).map(|s| s.channel_id) else {
            return;
        };
        let mut present = Vec::new();
        let mut ssrcs = Vec::new();
        let mut speakers = Vec::new();
        for sid in &self.channels[&channel_id].members {
            let s = &self.states[sid];
            if sid == session_id || !s.in_call() || s.left {
                continue;
            }
            present.push(s.user_id);
            ssrcs.extend(s.ssrcs().map(|notice| (s.user_id, notice)));
            if let (Some(ssrc), Some(speaking)) = (s.ssrc, s.speaking) {
                speakers.push((s.user_id, ssrc, speaking));
            }
        }
        if !present.is_empty() {
            present.sort();
            self.deliver(session_id, Notice::Joined(present));
        }
        ssrcs.sort_by_key(|(user_id, _)| *user_id);
        for (_, notice) in ssrcs {
            self.deliver(session_id, notice);
        }
        speakers.sort();
        for (user_id, ssrc, speaking) in speakers {
            let speaking = Notice::Speaking {
                user_id,
                ssrc,
                speaking,
            };
            self.deliver(session_id, speaking);
        }
    }

    /// Gateway Resume on a new connection whose messages are `numbered`
    /// (v8) or not: the same session, SSRC, key and address; the notices
    /// after `seq_ack` (None: nothing is numbered) to re-deliver. Charges
    /// the session's budget like [`Registry::identify`]. Refused when the
    /// session identified at a version with the other numbering.
    pub fn resume(
        &mut self,
        conn: ConnId,
        numbered: bool,
        resume: &Resume,
        seq_ack: Option<u64>,
        now: Instant,
        limit: RateLimit,
    ) -> Result<Resumed, IdentifyError> {
        let session_id = resume.session_id.as_str();
        let authenticated = self.authenticate(resume.server_id, None, session_id, &resume.token);
        let state = match authenticated {
            // A session that no longer exists cannot be resumed (the client
            // should identify afresh); a wrong token for a live one is an
            // authentication failure.
            Err(IdentifyError::AuthenticationFailed) if !self.states.contains_key(session_id) => {
                return Err(IdentifyError::SessionInvalid)
            }
            other => other?,
        };
        let (Some(stream), Some(ssrc)) = (&state.stream, state.ssrc) else {
            return Err(IdentifyError::SessionInvalid);
        };
        // The session's messages are numbered (v8) or not as it identified:
        // a connection at the other kind of version could not read them.
        if !stream.serves(numbered) {
            return Err(IdentifyError::SessionInvalid);
        }
        let catch_up = seq_ack.filter(|seq| state.restored && *seq > stream.seq());
        let missed = match seq_ack {
            Some(_) if catch_up.is_some() => Vec::new(),
            Some(seq) => stream.after(seq).ok_or(IdentifyError::SessionInvalid)?,
            None => Vec::new(),
        };
        let previous = state.conn;
        if !self.spend(session_id, now, limit) {
            return Err(IdentifyError::RateLimited);
        }
        if let Some(old) = previous.filter(|old| *old != conn) {
            // The old socket is not dead yet as far as we know: this
            // connection takes over.
            self.effects.push_back(Effect::Gateway {
                conn: old,
                push: Push::Close(Kick::ResumedElsewhere),
            });
        }
        self.changes += 1;
        let state = self
            .states
            .get_mut(session_id)
            .expect("authenticated above");
        state.conn = Some(conn);
        state.parked_since = None;
        // One Resume only may skip ahead of a restored stream.
        state.restored = false;
        let channel_id = state.channel_id;
        let caught_up = match (catch_up, &mut state.stream) {
            (Some(seq), Some(stream)) => {
                stream.catch_up(seq);
                true
            }
            _ => false,
        };
        if caught_up {
            // What the restore queued for it (a new DAVE group) was
            // skipped with the rest: queued again, after its seq_ack.
            if let Some(call) = self.calls.get_mut(&channel_id) {
                call.restart_member(session_id);
            }
            self.dave_deliver(channel_id);
        }
        let state = self
            .states
            .get_mut(session_id)
            .expect("authenticated above");
        if std::mem::take(&mut state.left) {
            self.rejoin(session_id, ssrc);
        }
        if !numbered {
            // Below v8 nothing was kept for it: it hears who is in the call
            // and which SSRC is whose again (v8 gets exactly what it
            // missed instead).
            self.welcome(session_id);
        }
        let user_id = self
            .states
            .get(session_id)
            .map_or(Snowflake(0), |s| s.user_id);
        Ok(Resumed {
            ssrc,
            user_id,
            channel_id,
            missed,
        })
    }

    /// A member shown leaving resumed within the leave grace: the data
    /// plane forwards to and from it again, and the others learn it is
    /// back (Clients Connect, then its last Speaking, which tells them
    /// whose SSRC it is).
    fn rejoin(&mut self, session_id: &str, ssrc: u32) {
        let Some(state) = self.states.get(session_id) else {
            return;
        };
        let (user_id, channel_id, speaking) = (state.user_id, state.channel_id, state.speaking);
        let Some(core) = self.channels.get(&channel_id).map(|c| c.core) else {
            return;
        };
        let command = Command::HoldSession { ssrc, held: false };
        self.effects.push_back(Effect::Dataplane { core, command });
        self.announce(channel_id, session_id, user_id);
        if let Some(speaking) = speaking {
            self.broadcast(channel_id, session_id, || Notice::Speaking {
                user_id,
                ssrc,
                speaking,
            });
        }
    }

    /// A random SSRC for `session_id`: never 0, unique, with
    /// `ssrc % cores == core`.
    fn allocate_ssrc(&mut self, core: u32, session_id: &str) -> u32 {
        loop {
            let r = self.rng.next_u32();
            let Some(ssrc) = (r - r % self.cores).checked_add(core) else {
                continue; // the top few values of u32 have no room for `core`
            };
            if ssrc != 0 {
                if let std::collections::hash_map::Entry::Vacant(e) = self.ssrcs.entry(ssrc) {
                    e.insert(session_id.to_owned());
                    return ssrc;
                }
            }
        }
    }

    /// Select Protocol: draws a fresh key, pushes the keyed session to the
    /// channel's core and numbers [`Notice::Keyed`] for the connection to
    /// send. Fails when the counter table has no free slot (every session
    /// the data plane can key at once is keyed). None when the session is
    /// not in a call.
    pub fn select_protocol(
        &mut self,
        session_id: &str,
        mode: Mode,
        declared: Option<SocketAddr>,
        video_codec: Option<String>,
        now: Instant,
    ) -> Result<Option<Sequenced>, SelectError> {
        self.changes += 1;
        let Some(state) = self.states.get(session_id) else {
            return Ok(None);
        };
        let (Some(ssrc), Some(ch)) = (state.ssrc, self.channels.get(&state.channel_id)) else {
            return Ok(None);
        };
        let (core, num, user) = (ch.core, ch.num, state.user_id.0);
        let slot = match state.slot {
            Some(slot) => slot,
            None => self.take_slot().ok_or(SelectError::Full)?,
        };
        let mut key = SessionKey([0; 32]);
        self.rng.fill_bytes(&mut key.0);
        let state = self.states.get_mut(session_id).expect("looked up above");
        state.slot = Some(slot);
        let spec = SessionSpec {
            ssrc,
            channel: num,
            user,
            mode,
            key: key.0,
            declared,
            slot,
            video: state.video_spec(),
        };
        state.media = Some(spec.clone());
        // A video client that named no codec gets Discord's default.
        let video_codec = video_codec.or_else(|| state.video.as_ref().map(|_| "H264".into()));
        let (channel_id, max_dave) = (state.channel_id, state.dave);
        // The call's DAVE version as it stands with this member in it
        // (its external sender follows Session Description).
        let dave = match &self.dave {
            (DaveMode::Off, _) | (_, None) => 0,
            (mode, Some(sender)) => {
                let (mode, sender) = (*mode, sender.clone());
                self.calls
                    .entry(channel_id)
                    .or_insert_with(|| dave::Call::new(channel_id.0, sender, mode))
                    .join(session_id, user, max_dave, now)
            }
        };
        let state = self.states.get_mut(session_id).expect("looked up above");
        let keyed = state.stream.as_mut().map(|stream| {
            stream.notice(Notice::Keyed {
                mode,
                key,
                dave,
                video_codec,
            })
        });
        self.effects.push_back(Effect::Dataplane {
            core,
            command: Command::UpsertSession(spec),
        });
        self.dave_deliver(channel_id);
        Ok(keyed)
    }

    /// Delivers what a channel's DAVE call has for its members.
    fn dave_deliver(&mut self, channel_id: Snowflake) {
        let Some(call) = self.calls.get_mut(&channel_id) else {
            return;
        };
        let notices: Vec<(String, DaveNotice)> = call.drain().collect();
        for (sid, notice) in notices {
            self.deliver(&sid, Notice::Dave(notice));
        }
    }

    /// Runs `f` on the DAVE call of `session_id`'s channel and delivers
    /// what it says; None when the session is in no DAVE call.
    fn with_call<R>(
        &mut self,
        session_id: &str,
        f: impl FnOnce(&mut dave::Call, u64) -> R,
    ) -> Option<R> {
        let state = self.states.get(session_id).filter(|s| s.in_call())?;
        let (channel_id, user) = (state.channel_id, state.user_id.0);
        self.changes += 1;
        let r = f(self.calls.get_mut(&channel_id)?, user);
        self.dave_deliver(channel_id);
        Some(r)
    }

    /// DAVE op 26: the member's MLS key package. Refusals are counted
    /// ([`Registry::dave_refused`]) and logged, never a close.
    pub fn dave_key_package(&mut self, session_id: &str, bytes: &[u8]) {
        let r = self.with_call(session_id, |call, _| call.key_package(session_id, bytes));
        if let Some(Err(e)) = r {
            self.dave_refused += 1;
            tracing::debug!(error = %e, "DAVE key package refused");
        }
    }

    /// DAVE op 28: the member's commit (and welcome).
    pub fn dave_commit(&mut self, session_id: &str, bytes: &[u8], now: Instant) {
        let r = self.with_call(session_id, |call, _| call.commit(session_id, bytes, now));
        if let Some(Err(e)) = r {
            self.dave_refused += 1;
            tracing::debug!(error = %e, "DAVE commit refused");
        }
    }

    /// DAVE op 23: the member is ready for a transition.
    pub fn dave_ready(&mut self, session_id: &str, transition_id: u16) {
        self.with_call(session_id, |call, _| call.ready(session_id, transition_id));
    }

    /// DAVE op 31: the member could not process a commit or welcome.
    pub fn dave_invalid(&mut self, session_id: &str, now: Instant) {
        self.with_call(session_id, |call, user| call.invalid(session_id, user, now));
    }

    /// Queues `command` for every core but `owner`.
    fn others(&mut self, owner: u32, command: Command) {
        for core in (0..self.cores).filter(|c| *c != owner) {
            self.effects.push_back(Effect::Dataplane {
                core,
                command: command.clone(),
            });
        }
    }

    /// The state holding `ssrc`, with its channel's core.
    fn by_ssrc(&mut self, ssrc: u32) -> Option<(&mut VoiceState, u32)> {
        let state = self.states.get_mut(self.ssrcs.get(&ssrc)?)?;
        let core = self.channels.get(&state.channel_id)?.core;
        Some((state, core))
    }

    /// A core saw IP discovery for `ssrc` from `addr` (event ring). Kept
    /// for operators; it proves nothing.
    pub fn address_observed(&mut self, ssrc: u32, addr: SocketAddr) {
        // Not a change worth saving: anyone who knows an SSRC can cause it.
        if let Some((state, _)) = self.by_ssrc(ssrc) {
            state.observed = Some(addr);
        }
    }

    /// A core proved `addr` for `ssrc` (event ring): remembered for a
    /// restart, and bound on every other core so whichever core the kernel
    /// hands the client's keepalives to can answer them.
    pub fn address_proven(&mut self, ssrc: u32, addr: SocketAddr) {
        self.changes += 1;
        let Some((state, core)) = self.by_ssrc(ssrc) else {
            return;
        };
        let Some(slot) = state.slot else { return };
        let old = state.proven.replace(addr);
        if old == Some(addr) {
            return;
        }
        if let Some(old) = old {
            self.others(core, Command::UnbindAddress { addr: old, ssrc });
        }
        self.others(core, Command::BindAddress { addr, ssrc, slot });
    }

    /// A core stopped sending to `addr`, silent too long (event ring).
    pub fn address_expired(&mut self, ssrc: u32, addr: SocketAddr) {
        self.changes += 1;
        let Some((state, core)) = self.by_ssrc(ssrc) else {
            return;
        };
        if state.proven == Some(addr) {
            state.proven = None;
            self.others(core, Command::UnbindAddress { addr, ssrc });
        }
    }

    /// The proven and observed addresses of `ssrc`.
    pub fn addresses(&self, ssrc: u32) -> Option<(Option<SocketAddr>, Option<SocketAddr>)> {
        let state = self.states.get(self.ssrcs.get(&ssrc)?)?;
        Some((state.proven, state.observed))
    }

    /// Pushes every session in a call into a data plane that starts empty
    /// (it was restarted): the SSRC announcement, the keyed session, and
    /// the address a core had *proven* (never a mere observation), so
    /// members who never send keep hearing the call; the other cores learn
    /// it is bound. Returns how many sessions were pushed.
    pub fn resync(&mut self) -> usize {
        let mut pushed = 0;
        let cores = self.cores;
        for state in self.states.values() {
            let (Some(ssrc), true) = (state.ssrc, state.in_call()) else {
                continue;
            };
            let Some(ch) = self.channels.get(&state.channel_id) else {
                continue;
            };
            let owner = ch.core;
            let mut send =
                |core, command| self.effects.push_back(Effect::Dataplane { core, command });
            send(
                owner,
                Command::AnnounceSsrc {
                    ssrc,
                    channel: ch.num,
                    user: state.user_id.0,
                },
            );
            if state.left {
                send(owner, Command::HoldSession { ssrc, held: true });
            }
            if let Some(spec) = &state.media {
                send(owner, Command::UpsertSession(spec.clone()));
                if let Some(addr) = state.proven {
                    send(owner, Command::TrustAddress { ssrc, addr });
                    for core in (0..cores).filter(|c| *c != owner) {
                        let slot = spec.slot;
                        send(core, Command::BindAddress { addr, ssrc, slot });
                    }
                }
            }
            pushed += 1;
        }
        pushed
    }

    /// A new control took over a data plane that kept running (its state
    /// was [`Registry::restore`]d): every core marks what it has as
    /// unconfirmed, gets the whole state again as [`Registry::resync`]
    /// pushes it (same keys: counters, windows and addresses stay), with
    /// each session's hold as the save says, and then drops what nobody
    /// named (made after the save). Returns how many sessions were pushed.
    pub fn take_over(&mut self) -> usize {
        self.changes += 1;
        for core in 0..self.cores {
            let command = Command::ResyncBegin;
            self.effects.push_back(Effect::Dataplane { core, command });
        }
        let pushed = self.resync();
        let mut in_call: Vec<(u32, u32)> = self
            .states
            .values()
            .filter(|s| s.in_call() && !s.left)
            .filter_map(|s| Some((self.channels.get(&s.channel_id)?.core, s.ssrc?)))
            .collect();
        in_call.sort_unstable();
        for (core, ssrc) in in_call {
            let command = Command::HoldSession { ssrc, held: false };
            self.effects.push_back(Effect::Dataplane { core, command });
        }
        for core in 0..self.cores {
            let command = Command::ResyncEnd;
            self.effects.push_back(Effect::Dataplane { core, command });
        }
        pushed
    }

    /// Speaking op 5 from a client: relayed to the other members.
    pub fn speaking(&mut self, session_id: &str, speaking: u32) {
        self.changes += 1;
        let Some(state) = self.states.get_mut(session_id) else {
            return;
        };
        let Some(ssrc) = state.ssrc else { return };
        state.speaking = Some(speaking);
        let (user_id, channel_id) = (state.user_id, state.channel_id);
        // A newer Speaking of this member replaces its older one in every
        // receiver's resume buffer (`Notice::supersedes`): a member who
        // speaks (or rejoins) in a loop never pushes another member's
        // missed notices out.
        self.broadcast(channel_id, session_id, || Notice::Speaking {
            user_id,
            ssrc,
            speaking,
        });
    }

    /// Op 12 from a member: the state of its video streams, relayed to the
    /// others (and kept for those who join later) when it changed. Every
    /// SSRC it names must be its own.
    pub fn video(&mut self, session_id: &str, op: &Video) -> Result<(), VideoError> {
        let Some(state) = self.states.get_mut(session_id).filter(|s| s.in_call()) else {
            return Ok(());
        };
        let Some(ssrc) = state.ssrc else {
            return Ok(());
        };
        let changed = match &mut state.video {
            Some(video) => video.update(ssrc, op)?,
            // A client without video streams may still say so (all 0).
            None if [op.video_ssrc, op.rtx_ssrc].iter().all(|s| *s == 0) => false,
            None => return Err(VideoError::ForeignSsrc),
        };
        if changed {
            self.changes += 1;
            let channel_id = state.channel_id;
            if let Some(ssrcs) = state.ssrcs() {
                self.broadcast(channel_id, session_id, || ssrcs.clone());
            }
        }
        Ok(())
    }

    /// The gateway connection went away ([`Departure`]). Parked: the
    /// session waits for a Resume until the resume grace ends (SSRC, key
    /// and address stay on the data plane, media keeps flowing). Left: the
    /// others get Client Disconnect now and the data plane holds the
    /// session (nothing to or from it), resumable until the leave grace
    /// ends. Gone: it leaves the call now. The voice state stays anyway.
    pub fn gateway_closed(
        &mut self,
        session_id: &str,
        conn: ConnId,
        now: Instant,
        departure: Departure,
    ) {
        self.changes += 1;
        let Some(state) = self.states.get_mut(session_id) else {
            return;
        };
        if state.conn != Some(conn) {
            return; // replaced or resumed by a newer connection
        }
        match departure {
            Departure::Parked => {
                state.conn = None;
                state.parked_since = Some(now);
                self.parked
                    .push_back((now + self.resume_grace, session_id.to_owned()));
            }
            Departure::Left if state.in_call() => {
                state.conn = None;
                state.parked_since = Some(now);
                state.left = true;
                let (user_id, channel_id, ssrc) = (state.user_id, state.channel_id, state.ssrc);
                self.leaving
                    .push_back((now + self.leave_grace, session_id.to_owned()));
                // The data plane first: once the others hear the member
                // left, nothing of it reaches them, and nothing more is
                // sent to it.
                let core = self.channels.get(&channel_id).map(|c| c.core);
                if let (Some(core), Some(ssrc)) = (core, ssrc) {
                    let command = Command::HoldSession { ssrc, held: true };
                    self.effects.push_back(Effect::Dataplane { core, command });
                }
                self.broadcast(channel_id, session_id, || Notice::Left(user_id));
            }
            Departure::Left | Departure::Gone => {
                self.leave_call(session_id, now);
            }
        }
    }
}

/// What a control restart needs of the registry, as saved in control's
/// private state file (`crate::persist`): channels, voice states and the
/// gateway sessions in calls with their SSRC, mode, key, proven address,
/// counter slot and numbered notices. Times are ages at the save.
/// Connections, budgets and timers are not saved: every session comes back
/// parked, waiting for its client to resume.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Saved {
    cores: u32,
    next_channel: u64,
    next_slot: u32,
    free_slots: Vec<u32>,
    channels: Vec<SavedChannel>,
    states: Vec<SavedState>,
    reclaimed: [u64; 3],
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct SavedChannel {
    channel_id: Snowflake,
    guild_id: Option<Snowflake>,
    token: String,
    num: u64,
    core: u32,
    members: Vec<String>,
    /// Milliseconds it had been empty.
    empty_ms: Option<u64>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct SavedState {
    session_id: String,
    user_id: Snowflake,
    channel_id: Snowflake,
    /// Milliseconds it had been idle (no session in the call).
    idle_ms: Option<u64>,
    session: Option<SavedSession>,
}

/// A gateway session in a call.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct SavedSession {
    ssrc: u32,
    /// Identify's `max_dave_protocol_version`.
    #[serde(default)]
    dave: u16,
    /// Saved as a number before it could be None (0 then meant none).
    speaking: Option<u32>,
    stream: Stream,
    left: bool,
    media: Option<SavedMedia>,
    observed: Option<SocketAddr>,
    proven: Option<SocketAddr>,
    slot: Option<u32>,
    #[serde(default)]
    video: Option<MemberVideo>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct SavedMedia {
    mode: Mode,
    key: SessionKey,
    declared: Option<SocketAddr>,
}

/// What [`Registry::restore`] brought back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RestoreCounts {
    /// Channels.
    pub channels: usize,
    /// Voice states.
    pub voice_states: usize,
    /// Gateway sessions in calls (parked, waiting for a Resume).
    pub sessions: usize,
}

fn age_ms(now: Instant, since: Option<Instant>) -> Option<u64> {
    since.map(|t| u64::try_from(now.saturating_duration_since(t).as_millis()).unwrap_or(u64::MAX))
}

impl Registry {
    /// A count that moves whenever what [`Registry::save`] returns may
    /// have changed (a message's budget being charged does not count).
    pub fn changes(&self) -> u64 {
        self.changes
    }

    /// The registry as a control restart needs it ([`Saved`]), with ages
    /// measured at `now`.
    pub fn save(&self, now: Instant) -> Saved {
        let mut channels: Vec<SavedChannel> = self
            .channels
            .values()
            .map(|c| {
                let mut members: Vec<String> = c.members.iter().cloned().collect();
                members.sort();
                SavedChannel {
                    channel_id: c.channel_id,
                    guild_id: c.guild_id,
                    token: c.token.clone(),
                    num: c.num,
                    core: c.core,
                    members,
                    empty_ms: age_ms(now, c.empty_since),
                }
            })
            .collect();
        channels.sort_by_key(|c| c.num);
        let mut states: Vec<SavedState> = self
            .states
            .iter()
            .map(|(sid, st)| SavedState {
                session_id: sid.clone(),
                user_id: st.user_id,
                channel_id: st.channel_id,
                idle_ms: age_ms(now, st.idle_since),
                session: st
                    .stream
                    .as_ref()
                    .zip(st.ssrc)
                    .map(|(stream, ssrc)| SavedSession {
                        ssrc,
                        dave: st.dave,
                        speaking: st.speaking,
                        stream: stream.for_save(),
                        left: st.left,
                        media: st.media.as_ref().map(|m| SavedMedia {
                            mode: m.mode,
                            key: SessionKey(m.key),
                            declared: m.declared,
                        }),
                        observed: st.observed,
                        proven: st.proven,
                        slot: st.slot,
                        video: st.video.clone(),
                    }),
            })
            .collect();
        states.sort_by(|a, b| a.session_id.cmp(&b.session_id));
        Saved {
            cores: self.cores,
            next_channel: self.next_channel,
            next_slot: self.next_slot,
            free_slots: self.free_slots.clone(),
            channels,
            states,
            reclaimed: self.reclaimed,
        }
    }

    /// Fills an empty registry from a save `elapsed` ago (the wall time
    /// between the save and `now`). With `sessions`, the gateway sessions
    /// come back too, parked for a Resume (the resume or leave grace
    /// starts now), with their SSRCs, keys, addresses, slots and numbered
    /// notices: only right when the data plane that served them is still
    /// the one (it holds their counters); call [`Registry::resync`] then.
    /// Without, the voice states come back idle and their clients identify
    /// afresh. Channels placed on a core this data plane does not have are
    /// moved (no session of theirs comes back then).
    pub fn restore(
        &mut self,
        saved: Saved,
        now: Instant,
        elapsed: Duration,
        sessions: bool,
    ) -> RestoreCounts {
        self.changes += 1;
        let since = |ms: Option<u64>| {
            ms.map(|ms| {
                now.checked_sub(Duration::from_millis(ms) + elapsed)
                    .unwrap_or(now)
            })
        };
        let sessions = sessions && saved.cores == self.cores;
        let mut counts = RestoreCounts::default();
        for c in saved.channels {
            let core = if c.core < self.cores {
                c.core
            } else {
                (c.num % u64::from(self.cores)) as u32
            };
            let empty_since = since(c.empty_ms).filter(|_| c.members.is_empty());
            if let Some(t) = empty_since {
                self.empty_channels
                    .push_back((t + self.channel_idle, c.channel_id));
            }
            self.next_channel = self.next_channel.max(c.num + 1);
            self.channels.insert(
                c.channel_id,
                Channel {
                    channel_id: c.channel_id,
                    guild_id: c.guild_id,
                    token: c.token,
                    num: c.num,
                    core,
                    members: c.members.into_iter().collect(),
                    empty_since,
                },
            );
            counts.channels += 1;
        }
        self.next_channel = self.next_channel.max(saved.next_channel);
        let mut slots_in_use = HashSet::new();
        for st in saved.states {
            let Some(ch) = self.channels.get(&st.channel_id) else {
                continue;
            };
            let (core, num) = (ch.core, ch.num);
            let mut state = VoiceState::new(st.user_id, st.channel_id);
            let session = st.session.filter(|s| {
                sessions && s.ssrc % self.cores == core && !self.ssrcs.contains_key(&s.ssrc)
            });
            match session {
                Some(s) => {
                    for video in s.video.iter().flat_map(MemberVideo::ssrcs) {
                        self.ssrcs.insert(video, st.session_id.clone());
                    }
                    let video = s.video.as_ref().map(MemberVideo::spec).unwrap_or_default();
                    state.video = s.video;
                    state.ssrc = Some(s.ssrc);
                    state.dave = s.dave;
                    state.speaking = s.speaking;
                    state.stream = Some(s.stream);
                    state.parked_since = Some(now);
                    state.left = s.left;
                    state.media = s.media.zip(s.slot).map(|(m, slot)| SessionSpec {
                        ssrc: s.ssrc,
                        channel: num,
                        user: st.user_id.0,
                        mode: m.mode,
                        key: m.key.0,
                        declared: m.declared,
                        slot,
                        video,
                    });
                    state.observed = s.observed;
                    state.proven = s.proven;
                    state.slot = s.slot;
                    state.restored = true;
                    slots_in_use.extend(s.slot);
                    let (queue, grace) = if s.left {
                        (&mut self.leaving, self.leave_grace)
                    } else {
                        (&mut self.parked, self.resume_grace)
                    };
                    queue.push_back((now + grace, st.session_id.clone()));
                    self.ssrcs.insert(s.ssrc, st.session_id.clone());
                    self.load[core as usize] += 1;
                    counts.sessions += 1;
                }
                None => {
                    let idle = since(st.idle_ms).unwrap_or(now);
                    state.idle_since = Some(idle);
                    self.idle_states
                        .push_back((idle + self.voice_state_idle, st.session_id.clone()));
                }
            }
            self.by_user
                .insert((st.channel_id, st.user_id), st.session_id.clone());
            self.states.insert(st.session_id, state);
            counts.voice_states += 1;
        }
        // Channel members the save named but whose states did not come
        // back are dropped.
        let states = &self.states;
        for ch in self.channels.values_mut() {
            ch.members.retain(|sid| states.contains_key(sid));
        }
        if sessions {
            self.next_slot = saved.next_slot.min(self.slot_count);
            self.free_slots = saved
                .free_slots
                .into_iter()
                .filter(|s| *s < self.next_slot && !slots_in_use.contains(s))
                .collect();
        }
        // DAVE calls start over: the members found new groups as they
        // resume (the old groups' state and external sender are gone).
        if let (true, Some(sender)) = (sessions, self.dave.1.clone()) {
            let mut keyed: BTreeMap<Snowflake, Vec<(String, u64, u16)>> = BTreeMap::new();
            for (sid, st) in &self.states {
                if st.in_call() && st.media.is_some() {
                    let member = (sid.clone(), st.user_id.0, st.dave);
                    keyed.entry(st.channel_id).or_default().push(member);
                }
            }
            for (channel_id, mut members) in keyed {
                members.sort();
                let mut call = dave::Call::new(channel_id.0, sender.clone(), self.dave.0);
                call.restored(&members);
                self.calls.insert(channel_id, call);
                self.dave_deliver(channel_id);
            }
        }
        // The queues are read front first, in deadline order.
        self.idle_states.make_contiguous().sort();
        self.empty_channels.make_contiguous().sort();
        self.reclaimed = saved.reclaimed;
        // Litecord has to connect again; until it does, the orphan grace
        // runs as after a disconnect.
        self.orphaned_since = Some(now);
        counts
    }
}

/// Compares two byte strings without an early exit on the first difference.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {

    use rand::SeedableRng;

    use super::*;

    fn sf(id: u64) -> Snowflake {
        Snowflake(id)
    }

    const LIMIT: RateLimit = RateLimit {
        per_second: 10.0,
        burst: 60.0,
    };

    fn identify(
        r: &mut Registry,
        conn: ConnId,
        version: u8,
        server_id: &str,
        user_id: &str,
        session_id: &str,
        token: &str,
    ) -> Result<Identified, IdentifyError> {
        let id = Identify {
            server_id: server_id.parse().unwrap(),
            user_id: user_id.parse().unwrap(),
            session_id: session_id.into(),
            token: token.into(),
            max_dave_protocol_version: None,
            video: false,
            streams: Vec::new(),
        };
        r.identify(conn, version >= 8, &id, Instant::now(), LIMIT)
    }

    fn effects(r: &mut Registry) -> Vec<Effect> {
        r.drain_effects().collect()
    }

    /// The notices queued for `conn`.
    fn notices(effects: &[Effect], conn: ConnId) -> Vec<Notice> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::Gateway {
                    conn: c,
                    push: Push::Notice(n),
                } if *c == conn => Some(n.notice.clone()),
                _ => None,
            })
            .collect()
    }

    fn kicks(effects: &[Effect], conn: ConnId) -> Vec<Kick> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::Gateway {
                    conn: c,
                    push: Push::Close(kick),
                } if *c == conn => Some(*kick),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn channel_req_is_idempotent() {
        let mut r = Registry::new(2, StdRng::seed_from_u64(2));
        let a = r.channel_req(sf(100), Some(sf(1)), Instant::now());
        let b = r.channel_req(sf(100), Some(sf(1)), Instant::now());
        assert_eq!(a, b);
        assert_eq!(a.token.len(), 32);
        assert!(matches!(
            r.voice_state_create(sf(7), sf(404), Instant::now()),
            Err(RequestError::UnknownChannel(_))
        ));
        assert_eq!(r.request_errors("unknown_channel"), 1);
        assert_eq!(r.channel_count(), 1);
    }

    #[test]
    fn channels_go_to_the_least_loaded_core() {
        let mut r = Registry::new(2, StdRng::seed_from_u64(2));
        let t = r.channel_req(sf(100), Some(sf(1)), Instant::now()).token;
        let sid = r
            .voice_state_create(sf(7), sf(100), Instant::now())
            .unwrap();
        identify(&mut r, 1, 4, "1", "7", &sid, &t).unwrap();
        assert_eq!(r.channel(sf(100)).unwrap().core, 0);
        r.channel_req(sf(101), Some(sf(1)), Instant::now());
        assert_eq!(r.channel(sf(101)).unwrap().core, 1, "core 0 has a session");
    }

    #[test]
    fn identify_checks_everything_and_ssrc_lands_on_owner_core() {
        let mut r = Registry::new(3, StdRng::seed_from_u64(3));
        let ch = r.channel_req(sf(100), Some(sf(1)), Instant::now());
        let sid = r
            .voice_state_create(sf(7), sf(100), Instant::now())
            .unwrap();
        assert_eq!(
            r.voice_state_create(sf(7), sf(100), Instant::now())
                .unwrap(),
            sid
        );
        let core = r.channel(sf(100)).unwrap().core;
        for (server, user, session, token, err) in [
            (
                "1",
                "7",
                sid.as_str(),
                "wrong",
                IdentifyError::AuthenticationFailed,
            ),
            (
                "1",
                "8",
                sid.as_str(),
                ch.token.as_str(),
                IdentifyError::AuthenticationFailed,
            ),
            (
                "100",
                "7",
                sid.as_str(),
                ch.token.as_str(),
                IdentifyError::ServerNotFound,
            ),
            (
                "1",
                "7",
                "nope",
                ch.token.as_str(),
                IdentifyError::AuthenticationFailed,
            ),
        ] {
            assert_eq!(
                identify(&mut r, 1, 4, server, user, session, token),
                Err(err)
            );
        }
        let id = identify(&mut r, 1, 4, "1", "7", &sid, &ch.token).unwrap();
        assert_eq!(id.ssrc % 3, core);
        assert_ne!(id.ssrc, 0);
        assert_eq!(
            effects(&mut r),
            vec![Effect::Dataplane {
                core,
                command: Command::AnnounceSsrc {
                    ssrc: id.ssrc,
                    channel: 1,
                    user: 7
                }
            }]
        );
    }

    #[test]
    fn dm_channels_use_channel_id_as_server_id() {
        let mut r = Registry::new(1, StdRng::seed_from_u64(1));
        let ch = r.channel_req(sf(555), None, Instant::now());
        let sid = r
            .voice_state_create(sf(7), sf(555), Instant::now())
            .unwrap();
        assert!(identify(&mut r, 1, 4, "555", "7", &sid, &ch.token).is_ok());
    }

    #[test]
    fn ssrcs_are_unique_per_core() {
        let mut r = Registry::new(2, StdRng::seed_from_u64(2));
        let mut seen = HashSet::new();
        for _ in 0..10_000 {
            let s = r.allocate_ssrc(1, "x");
            assert_eq!(s % 2, 1);
            assert!(seen.insert(s));
        }
    }

    #[test]
    fn members_see_each_other_and_destroy_closes_4014() {
        let mut r = Registry::new(1, StdRng::seed_from_u64(1));
        let ch = r.channel_req(sf(100), Some(sf(1)), Instant::now());
        let a = r
            .voice_state_create(sf(7), sf(100), Instant::now())
            .unwrap();
        let b = r
            .voice_state_create(sf(8), sf(100), Instant::now())
            .unwrap();
        let ia = identify(&mut r, 10, 4, "1", "7", &a, &ch.token).unwrap();
        r.speaking(&a, 1);
        effects(&mut r);
        let ib = identify(&mut r, 11, 4, "1", "8", &b, &ch.token).unwrap();
        assert_eq!(
            ib.ready.notice,
            Notice::Ready {
                ssrc: ib.ssrc,
                streams: Vec::new()
            }
        );
        assert_eq!(ib.ready.seq, None, "v4 numbers nothing");
        let e = effects(&mut r);
        assert_eq!(
            notices(&e, 10),
            vec![
                Notice::Joined(vec![sf(8)]),
                Notice::Ssrcs(member_ssrcs(sf(8), ib.ssrc, None))
            ]
        );
        assert_eq!(
            notices(&e, 11),
            vec![
                Notice::Joined(vec![sf(7)]),
                Notice::Ssrcs(member_ssrcs(sf(7), ia.ssrc, None)),
                Notice::Speaking {
                    user_id: sf(7),
                    ssrc: ia.ssrc,
                    speaking: 1
                },
            ]
        );
        r.channel_destroy(sf(100));
        let e = effects(&mut r);
        assert_eq!(
            e[0],
            Effect::Dataplane {
                core: 0,
                command: Command::RemoveChannel { channel: 1 }
            },
            "the data plane forgets the channel before members are closed"
        );
        assert_eq!(kicks(&e, 10), vec![Kick::Disconnected]);
        assert_eq!(kicks(&e, 11), vec![Kick::Disconnected]);
        assert_eq!(r.voice_state_count(), 0);
        assert_eq!(r.channel_count(), 0);
    }

    #[test]
    fn voice_state_destroy_removes_the_session() {
        let mut r = Registry::new(1, StdRng::seed_from_u64(1));
        let ch = r.channel_req(sf(100), Some(sf(1)), Instant::now());
        let a = r
            .voice_state_create(sf(7), sf(100), Instant::now())
            .unwrap();
        let id = identify(&mut r, 10, 4, "1", "7", &a, &ch.token).unwrap();
        effects(&mut r);
        r.voice_state_destroy(sf(7), sf(100), Instant::now());
        let e = effects(&mut r);
        assert!(e.contains(&Effect::Dataplane {
            core: 0,
            command: Command::RemoveSession { ssrc: id.ssrc }
        }));
        assert_eq!(kicks(&e, 10), vec![Kick::Disconnected]);
        assert!(identify(&mut r, 11, 4, "1", "7", &a, &ch.token).is_err());
        // A move: a new state in the same channel gets a new session id.
        let b = r
            .voice_state_create(sf(7), sf(100), Instant::now())
            .unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn a_second_identify_replaces_the_first_connection() {
        let mut r = Registry::new(1, StdRng::seed_from_u64(1));
        let ch = r.channel_req(sf(100), Some(sf(1)), Instant::now());
        let a = r
            .voice_state_create(sf(7), sf(100), Instant::now())
            .unwrap();
        let first = identify(&mut r, 10, 8, "1", "7", &a, &ch.token).unwrap();
        effects(&mut r);
        let second = identify(&mut r, 11, 8, "1", "7", &a, &ch.token).unwrap();
        assert_eq!(first.ssrc, second.ssrc, "same voice state, same SSRC");
        assert_eq!(kicks(&effects(&mut r), 10), vec![Kick::Replaced]);
        r.gateway_closed(&a, 10, Instant::now(), Departure::Parked);
        assert_eq!(r.parked_count(), 0, "the stale close is ignored");
    }

    #[test]
    fn resync_pushes_every_session_with_its_key_and_proven_address() {
        let mut r = Registry::new(1, StdRng::seed_from_u64(1));
        let ch = r.channel_req(sf(100), Some(sf(1)), Instant::now());
        let a = r
            .voice_state_create(sf(7), sf(100), Instant::now())
            .unwrap();
        let b = r
            .voice_state_create(sf(8), sf(100), Instant::now())
            .unwrap();
        let _unjoined = r
            .voice_state_create(sf(9), sf(100), Instant::now())
            .unwrap();
        let ia = identify(&mut r, 10, 8, "1", "7", &a, &ch.token).unwrap();
        let ib = identify(&mut r, 11, 8, "1", "8", &b, &ch.token).unwrap();
        let keyed = r.select_protocol(&a, Mode::Aes256GcmRtpSize, None, None, Instant::now());
        let Ok(Some(Sequenced {
            seq: Some(4),
            notice: Notice::Keyed { key, .. },
        })) = keyed
        else {
            panic!("{keyed:?}: numbered after Ready and b's join (ops 11, 12)");
        };
        let addr: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        // A stranger's discovery for b is observed, never re-pushed.
        r.address_observed(ib.ssrc, "203.0.113.9:9".parse().unwrap());
        r.address_proven(ia.ssrc, addr);
        effects(&mut r);
        assert_eq!(r.resync(), 2);
        let commands: Vec<Command> = effects(&mut r)
            .into_iter()
            .filter_map(|e| match e {
                Effect::Dataplane { command, .. } => Some(command),
                _ => None,
            })
            .collect();
        assert!(commands.contains(&Command::AnnounceSsrc {
            ssrc: ib.ssrc,
            channel: 1,
            user: 8
        }));
        let upsert = commands
            .iter()
            .position(
                |c| matches!(c, Command::UpsertSession(s) if s.ssrc == ia.ssrc && s.key == key.0),
            )
            .expect("a's keyed session");
        let trust = commands
            .iter()
            .position(|c| {
                *c == Command::TrustAddress {
                    ssrc: ia.ssrc,
                    addr,
                }
            })
            .expect("a's proven address");
        assert!(upsert < trust, "the address follows the session");
        assert_eq!(commands.len(), 4, "{commands:?}");
    }

    /// Proven addresses are bound on every other core (keepalives carry no
    /// SSRC, so any core may get them), moved and released with the
    /// session; observations are never pushed anywhere.
    #[test]
    fn proven_addresses_are_bound_on_the_other_cores() {
        let mut r = Registry::new(3, StdRng::seed_from_u64(3));
        let ch = r.channel_req(sf(100), Some(sf(1)), Instant::now());
        let a = r
            .voice_state_create(sf(7), sf(100), Instant::now())
            .unwrap();
        let id = identify(&mut r, 10, 8, "1", "7", &a, &ch.token).unwrap();
        let owner = id.ssrc % 3;
        r.select_protocol(&a, Mode::Aes256GcmRtpSize, None, None, Instant::now())
            .unwrap();
        let slot = match effects(&mut r).last() {
            Some(Effect::Dataplane {
                command: Command::UpsertSession(s),
                ..
            }) => s.slot,
            other => panic!("{other:?}"),
        };
        let others: Vec<u32> = (0..3).filter(|c| *c != owner).collect();
        let (x, y): (SocketAddr, SocketAddr) = (
            "192.0.2.1:1".parse().unwrap(),
            "192.0.2.1:2".parse().unwrap(),
        );
        r.address_observed(id.ssrc, "203.0.113.1:1".parse().unwrap());
        assert!(effects(&mut r).is_empty(), "an observation goes nowhere");
        r.address_proven(id.ssrc, x);
        let bind = |addr| Command::BindAddress {
            addr,
            ssrc: id.ssrc,
            slot,
        };
        let unbind = |addr| Command::UnbindAddress {
            addr,
            ssrc: id.ssrc,
        };
        let on = |cores: &[u32], c: Command| -> Vec<Effect> {
            cores
                .iter()
                .map(|&core| Effect::Dataplane {
                    core,
                    command: c.clone(),
                })
                .collect()
        };
        assert_eq!(effects(&mut r), on(&others, bind(x)));
        r.address_proven(id.ssrc, x);
        assert!(effects(&mut r).is_empty(), "no change, nothing sent");
        r.address_proven(id.ssrc, y); // NAT rebinding
        let mut moved = on(&others, unbind(x));
        moved.extend(on(&others, bind(y)));
        assert_eq!(effects(&mut r), moved);
        assert_eq!(
            r.addresses(id.ssrc),
            Some((Some(y), Some("203.0.113.1:1".parse().unwrap())))
        );
        r.address_expired(id.ssrc, x);
        assert!(effects(&mut r).is_empty(), "not the proven one");
        r.address_expired(id.ssrc, y);
        assert_eq!(effects(&mut r), on(&others, unbind(y)));
        assert_eq!(
            r.addresses(id.ssrc),
            Some((None, Some("203.0.113.1:1".parse().unwrap())))
        );
        // Leaving releases the binding and the slot.
        r.address_proven(id.ssrc, x);
        effects(&mut r);
        r.gateway_closed(&a, 10, Instant::now(), Departure::Gone);
        let e = effects(&mut r);
        assert!(e.contains(&Effect::Dataplane {
            core: owner,
            command: Command::RemoveSession { ssrc: id.ssrc }
        }));
        for c in on(&others, unbind(x)) {
            assert!(e.contains(&c), "{c:?} in {e:?}");
        }
        assert_eq!(r.free_slots, vec![slot]);
    }

    #[test]
    fn select_protocol_fails_when_every_slot_is_taken() {
        let mut r = Registry::new(1, StdRng::seed_from_u64(1));
        r.set_counter_slots(1);
        let ch = r.channel_req(sf(100), Some(sf(1)), Instant::now());
        let a = r
            .voice_state_create(sf(7), sf(100), Instant::now())
            .unwrap();
        let b = r
            .voice_state_create(sf(8), sf(100), Instant::now())
            .unwrap();
        identify(&mut r, 10, 8, "1", "7", &a, &ch.token).unwrap();
        identify(&mut r, 11, 8, "1", "8", &b, &ch.token).unwrap();
        let first = r.select_protocol(&a, Mode::Aes256GcmRtpSize, None, None, Instant::now());
        // A second Select Protocol of the same session keeps its slot,
        // with a fresh key.
        let second = r.select_protocol(&a, Mode::Aes256GcmRtpSize, None, None, Instant::now());
        let key = |k: Result<Option<Sequenced>, _>| match k {
            Ok(Some(Sequenced {
                notice: Notice::Keyed { key, .. },
                ..
            })) => key,
            other => panic!("{other:?}"),
        };
        assert_ne!(key(first), key(second));
        assert_eq!(
            r.select_protocol(&b, Mode::Aes256GcmRtpSize, None, None, Instant::now()),
            Err(SelectError::Full)
        );
    }

    /// Litecord never destroys anything: a voice state with no session in
    /// the call goes after its idle time (one in the call or parked never
    /// does; a repeated create waits afresh), then its empty channel after
    /// the channel's, removed from its core; asked for again, both are
    /// created afresh.
    #[test]
    fn idle_voice_states_and_empty_channels_are_reclaimed() {
        let secs = Duration::from_secs;
        let mut r = Registry::new(1, StdRng::seed_from_u64(1));
        r.set_idle(secs(10), secs(20));
        r.set_resume(secs(30), 16);
        let t0 = Instant::now();
        let ch = r.channel_req(sf(100), Some(sf(1)), t0);
        let a = r.voice_state_create(sf(7), sf(100), t0).unwrap();
        let b = r.voice_state_create(sf(8), sf(100), t0).unwrap();
        let idle = r.voice_state_create(sf(9), sf(100), t0).unwrap();
        let repeated = r.voice_state_create(sf(10), sf(100), t0).unwrap();
        identify(&mut r, 10, 8, "1", "7", &a, &ch.token).unwrap();
        identify(&mut r, 11, 8, "1", "8", &b, &ch.token).unwrap();
        r.gateway_closed(&b, 11, t0, Departure::Parked);
        assert_eq!(
            r.voice_state_create(sf(10), sf(100), t0 + secs(8)),
            Ok(repeated.clone())
        );
        effects(&mut r);
        r.handle_timeout(t0 + secs(10));
        assert_eq!(r.voice_state_count(), 3, "{idle} went, the others stay");
        assert_eq!(r.reclaimed(Reclaim::VoiceState), 1);
        r.handle_timeout(t0 + secs(18));
        assert_eq!(
            r.voice_state_count(),
            2,
            "{repeated} went 10 s after its repeat"
        );
        // b's session leaves at the end of its resume grace; its state is
        // idle from then.
        r.handle_timeout(t0 + secs(30));
        assert_eq!(r.reclaimed(Reclaim::Session), 1);
        assert_eq!(r.voice_state_count(), 2);
        r.handle_timeout(t0 + secs(39));
        assert_eq!(r.voice_state_count(), 2);
        r.handle_timeout(t0 + secs(40));
        assert_eq!(r.voice_state_count(), 1, "only a, in the call");
        // a leaves (the leave grace is 5 s): idle from t0 + 45 s.
        r.gateway_closed(&a, 10, t0 + secs(40), Departure::Left);
        r.handle_timeout(t0 + secs(45));
        assert_eq!(r.reclaimed(Reclaim::Session), 2);
        assert_eq!(r.poll_timeout(), Some(t0 + secs(55)));
        r.handle_timeout(t0 + secs(55));
        assert_eq!(r.voice_state_count(), 0);
        assert_eq!(r.channel_count(), 1);
        effects(&mut r);
        assert_eq!(r.poll_timeout(), Some(t0 + secs(75)));
        r.handle_timeout(t0 + secs(75));
        assert_eq!(r.channel_count(), 0);
        assert_eq!(r.reclaimed(Reclaim::Channel), 1);
        assert_eq!(
            effects(&mut r),
            vec![Effect::Dataplane {
                core: 0,
                command: Command::RemoveChannel { channel: 1 }
            }]
        );
        assert_eq!(r.poll_timeout(), None, "every queue is empty");
        let again = r.channel_req(sf(100), Some(sf(1)), t0 + secs(80));
        assert_ne!(again.token, ch.token, "created afresh");
        let a2 = r.voice_state_create(sf(7), sf(100), t0 + secs(80)).unwrap();
        assert_ne!(a2, a);
        assert!(identify(&mut r, 12, 8, "1", "7", &a2, &again.token).is_ok());
    }

    /// An empty channel asked for again waits its idle time afresh; one
    /// that gets a voice state in the meantime stays.
    #[test]
    fn channel_req_and_members_keep_a_channel() {
        let secs = Duration::from_secs;
        let mut r = Registry::new(1, StdRng::seed_from_u64(1));
        r.set_idle(secs(100), secs(10));
        let t0 = Instant::now();
        r.channel_req(sf(100), Some(sf(1)), t0);
        r.channel_req(sf(101), Some(sf(1)), t0);
        r.channel_req(sf(100), Some(sf(1)), t0 + secs(5));
        r.voice_state_create(sf(7), sf(101), t0 + secs(9)).unwrap();
        r.handle_timeout(t0 + secs(10));
        assert_eq!(r.channel_count(), 2);
        r.handle_timeout(t0 + secs(15));
        assert_eq!(r.channel_count(), 1);
        assert!(r.channel(sf(101)).is_some());
        r.voice_state_destroy(sf(7), sf(101), t0 + secs(20));
        r.handle_timeout(t0 + secs(29));
        assert_eq!(r.channel_count(), 1);
        r.handle_timeout(t0 + secs(30));
        assert_eq!(r.channel_count(), 0);
        assert_eq!(r.reclaimed(Reclaim::Channel), 2);
    }

    #[test]
    fn draining_reads_health_zero_and_ends_with_the_last_member() {
        let t0 = Instant::now();
        let mut r = Registry::new(1, StdRng::seed_from_u64(1));
        r.set_health(0.8);
        let ch = r.channel_req(sf(100), Some(sf(1)), t0);
        let a = r.voice_state_create(sf(7), sf(100), t0).unwrap();
        let b = r.voice_state_create(sf(8), sf(100), t0).unwrap();
        identify(&mut r, 10, 8, "1", "7", &a, &ch.token).unwrap();
        identify(&mut r, 11, 8, "1", "8", &b, &ch.token).unwrap();
        assert!(!r.draining() && !r.drained());
        assert_eq!(r.health(), 0.8);

        assert!(r.drain(t0 + Duration::from_secs(60), false));
        assert_eq!(r.health(), 0.0, "Litecord places new channels elsewhere");
        r.set_health(0.9);
        assert_eq!(r.health(), 0.0, "measured load does not undo the drain");
        assert_eq!(r.poll_timeout(), Some(t0 + Duration::from_secs(60)));
        // Litecord may still insist: channels, states and members are served.
        let other = r.channel_req(sf(200), Some(sf(1)), t0);
        let c = r.voice_state_create(sf(9), sf(200), t0).unwrap();
        identify(&mut r, 12, 8, "1", "9", &c, &other.token).unwrap();
        assert_eq!(r.session_count(), 3);
        assert!(!r.drained());

        // One leaves for good; one closes normally (within the leave grace
        // it may resume: still a member); one's socket dies (parked).
        r.gateway_closed(&a, 10, t0, Departure::Gone);
        r.gateway_closed(&b, 11, t0, Departure::Left);
        r.gateway_closed(&c, 12, t0, Departure::Parked);
        assert!(!r.drained(), "left and parked sessions may still resume");
        r.handle_timeout(t0 + Duration::from_secs(5));
        assert!(!r.drained(), "the parked one waits for its resume grace");
        r.handle_timeout(t0 + Duration::from_secs(30));
        assert_eq!(r.session_count(), 0);
        assert!(r.drained(), "no member in any call: the process may exit");
        assert_eq!(r.channel_count(), 2, "channels stay: Litecord owns them");
        let e = effects(&mut r);
        for conn in [10, 11, 12] {
            assert!(kicks(&e, conn).is_empty(), "nobody was kicked");
        }
    }

    #[test]
    fn the_drain_deadline_closes_every_member_once() {
        let t0 = Instant::now();
        let mut r = Registry::new(1, StdRng::seed_from_u64(1));
        let ch = r.channel_req(sf(100), Some(sf(1)), t0);
        let a = r.voice_state_create(sf(7), sf(100), t0).unwrap();
        let b = r.voice_state_create(sf(8), sf(100), t0).unwrap();
        let ia = identify(&mut r, 10, 8, "1", "7", &a, &ch.token).unwrap();
        identify(&mut r, 11, 8, "1", "8", &b, &ch.token).unwrap();
        r.gateway_closed(&b, 11, t0, Departure::Parked);
        effects(&mut r);

        assert!(r.drain(t0 + Duration::from_secs(10), false));
        // Again, sooner and with a restart: the earlier deadline and the
        // latest word win.
        assert!(!r.drain(t0 + Duration::from_secs(2), true));
        assert!(!r.drain(t0 + Duration::from_secs(5), true));
        assert_eq!(r.poll_timeout(), Some(t0 + Duration::from_secs(2)));
        r.handle_timeout(t0 + Duration::from_secs(1));
        assert!(!r.drained());
        assert!(effects(&mut r).is_empty());

        r.handle_timeout(t0 + Duration::from_secs(2));
        let e = effects(&mut r);
        assert_eq!(kicks(&e, 10), vec![Kick::Drained { restart: true }]);
        assert!(kicks(&e, 11).is_empty(), "the parked one has no socket");
        assert!(e.contains(&Effect::Dataplane {
            core: 0,
            command: Command::RemoveSession { ssrc: ia.ssrc }
        }));
        assert_eq!(r.session_count(), 0);
        assert!(r.drained());
        assert_eq!(
            r.poll_timeout(),
            Some(t0 + Duration::from_secs(30)),
            "the stale parking entry only"
        );
        // Once: a member identifying after the deadline is left to the
        // stop that follows.
        identify(&mut r, 12, 8, "1", "7", &a, &ch.token).unwrap();
        r.handle_timeout(t0 + Duration::from_secs(3));
        assert!(kicks(&effects(&mut r), 12).is_empty());
        assert!(r.drained());
        assert_eq!(r.health(), 0.0);
    }

    #[test]
    fn constant_time_eq_works() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }

    /// What a restart saves comes back (through JSON, as on disk): the
    /// sessions parked with their SSRCs, keys and proven addresses, pushed
    /// to a running data plane between a resync's begin and end; a client
    /// that heard more than the save kept resumes with nothing missing;
    /// without the data plane only the channel and voice states return.
    #[test]
    fn a_video_member_comes_back_with_its_streams() {
        let t0 = Instant::now();
        let mut r = Registry::new(2, StdRng::seed_from_u64(15));
        let ch = r.channel_req(sf(100), Some(sf(1)), t0);
        let a = r.voice_state_create(sf(7), sf(100), t0).unwrap();
        let id = Identify {
            server_id: sf(1),
            user_id: sf(7),
            session_id: a.clone(),
            token: ch.token.clone(),
            max_dave_protocol_version: None,
            video: true,
            streams: Vec::new(),
        };
        let ia = r.identify(10, true, &id, t0, LIMIT).unwrap();
        let Notice::Ready { streams, .. } = &ia.ready.notice else {
            panic!("{:?}", ia.ready.notice)
        };
        let stream = streams[0].clone();
        r.select_protocol(&a, Mode::Aes256GcmRtpSize, None, None, t0)
            .unwrap();
        effects(&mut r);
        let saved: Saved =
            serde_json::from_str(&serde_json::to_string(&r.save(t0)).unwrap()).unwrap();

        let mut back = Registry::new(2, StdRng::seed_from_u64(16));
        back.restore(saved, t0, Duration::ZERO, true);
        back.take_over();
        let spec = effects(&mut back)
            .into_iter()
            .find_map(|e| match e {
                Effect::Dataplane {
                    command: Command::UpsertSession(spec),
                    ..
                } => Some(spec),
                _ => None,
            })
            .expect("the session is pushed again");
        assert_eq!(
            spec.video.ssrcs().collect::<Vec<_>>(),
            [stream.ssrc, stream.rtx_ssrc]
        );
        assert!(spec.video.receive);
        // Its streams are still its own: an op 12 naming them is taken,
        // one naming anything else is not.
        let live = Video {
            audio_ssrc: ia.ssrc,
            video_ssrc: stream.ssrc,
            rtx_ssrc: stream.rtx_ssrc,
            streams: Vec::new(),
        };
        assert_eq!(back.video(&a, &live), Ok(()));
        let forged = Video {
            video_ssrc: stream.ssrc + 2,
            ..live
        };
        assert_eq!(back.video(&a, &forged), Err(VideoError::ForeignSsrc));
        assert_eq!(
            back.ssrcs.get(&stream.rtx_ssrc),
            Some(&a),
            "still allocated"
        );
    }

    #[test]
    fn a_saved_registry_comes_back_parked_with_its_keys() {
        let t0 = Instant::now();
        let mut r = Registry::new(2, StdRng::seed_from_u64(5));
        let ch = r.channel_req(sf(100), Some(sf(1)), t0);
        let a = r.voice_state_create(sf(7), sf(100), t0).unwrap();
        let b = r.voice_state_create(sf(8), sf(100), t0).unwrap();
        r.voice_state_create(sf(9), sf(100), t0).unwrap();
        let ia = identify(&mut r, 10, 8, "1", "7", &a, &ch.token).unwrap();
        identify(&mut r, 11, 8, "1", "8", &b, &ch.token).unwrap();
        let Ok(Some(Sequenced {
            notice: Notice::Keyed { key, .. },
            ..
        })) = r.select_protocol(&a, Mode::Aes256GcmRtpSize, None, None, Instant::now())
        else {
            panic!("keyed");
        };
        let addr: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        r.address_proven(ia.ssrc, addr);
        effects(&mut r);
        // A heartbeat's budget charge is nothing to save; a Speaking is.
        let changes = r.changes();
        assert!(r.spend(&a, t0, LIMIT));
        assert_eq!(r.changes(), changes);
        r.speaking(&a, 0);
        assert!(r.changes() > changes);
        effects(&mut r);
        let json = serde_json::to_string(&r.save(t0)).unwrap();
        let saved: Saved = serde_json::from_str(&json).unwrap();

        let t1 = t0 + Duration::from_secs(2);
        let mut back = Registry::new(2, StdRng::seed_from_u64(6));
        let counts = back.restore(saved.clone(), t1, Duration::from_secs(1), true);
        let expected = RestoreCounts {
            channels: 1,
            voice_states: 3,
            sessions: 2,
        };
        assert_eq!(counts, expected);
        assert_eq!((back.parked_count(), back.session_count()), (2, 2));
        assert_eq!(back.addresses(ia.ssrc), Some((Some(addr), None)));
        assert_eq!(back.channel(sf(100)).unwrap().token, ch.token);
        assert_eq!(back.take_over(), 2);
        let commands: Vec<(u32, Command)> = effects(&mut back)
            .into_iter()
            .filter_map(|e| match e {
                Effect::Dataplane { core, command } => Some((core, command)),
                _ => None,
            })
            .collect();
        assert_eq!(
            commands[..2],
            [(0, Command::ResyncBegin), (1, Command::ResyncBegin)]
        );
        let n = commands.len();
        assert_eq!(
            commands[n - 2..],
            [(0, Command::ResyncEnd), (1, Command::ResyncEnd)]
        );
        assert!(commands.iter().any(
            |(_, c)| matches!(c, Command::UpsertSession(s) if s.ssrc == ia.ssrc && s.key == key.0)
        ));
        // The client heard seq 40 before the old control died; the save
        // kept less. Nothing to re-deliver, numbering goes on from 41.
        let resume = Resume {
            server_id: sf(1),
            session_id: a.clone(),
            token: ch.token.clone(),
            seq_ack: Some(40),
        };
        let resumed = back.resume(20, true, &resume, Some(40), t1, LIMIT).unwrap();
        assert_eq!((resumed.ssrc, resumed.missed), (ia.ssrc, vec![]));
        back.speaking(&b, 1);
        let to_a = notices_numbered(&effects(&mut back), 20);
        assert_eq!(to_a, [41]);
        // A wrong token still fails.
        let wrong = Resume {
            token: "0".repeat(32),
            ..resume
        };
        let refused = back.resume(21, true, &wrong, Some(40), t1, LIMIT);
        assert_eq!(refused, Err(IdentifyError::AuthenticationFailed));

        let mut fresh = Registry::new(2, StdRng::seed_from_u64(7));
        let counts = fresh.restore(saved, t1, Duration::ZERO, false);
        assert_eq!(counts.sessions, 0);
        assert_eq!((fresh.voice_state_count(), fresh.session_count()), (3, 0));
        assert_eq!(fresh.addresses(ia.ssrc), None, "no SSRC came back");
        // The voice states wait for a fresh Identify.
        let again = identify(&mut fresh, 30, 8, "1", "7", &a, &ch.token).unwrap();
        assert_ne!(again.ssrc, 0);
    }

    /// After a restart a DAVE call starts over: each restored DAVE member
    /// finds op 24 (epoch 1) and the new server's external sender after
    /// what it had heard, re-delivered on its Resume.
    #[test]
    fn restored_dave_members_are_told_to_start_a_new_group() {
        let t0 = Instant::now();
        let sender = || Some(Arc::new(dave::mls::ExternalSender::generate().unwrap()));
        let mut r = Registry::new(1, StdRng::seed_from_u64(8));
        r.set_dave(DaveMode::On, sender());
        let ch = r.channel_req(sf(100), Some(sf(1)), t0);
        let mut sessions = Vec::new();
        for user in [7, 8] {
            let sid = r.voice_state_create(sf(user), sf(100), t0).unwrap();
            let id = Identify {
                server_id: sf(1),
                user_id: sf(user),
                session_id: sid.clone(),
                token: ch.token.clone(),
                max_dave_protocol_version: Some(1),
                video: false,
                streams: Vec::new(),
            };
            r.identify(user, true, &id, t0, LIMIT).unwrap();
            r.select_protocol(&sid, Mode::Aes256GcmRtpSize, None, None, t0)
                .unwrap();
            sessions.push(sid);
        }
        effects(&mut r);
        let saved = r.save(t0);
        let mut back = Registry::new(1, StdRng::seed_from_u64(9));
        back.set_dave(DaveMode::On, sender());
        back.restore(saved, t0, Duration::ZERO, true);
        assert_eq!(back.dave_calls(), 1);
        for sid in &sessions {
            let resume = Resume {
                server_id: sf(1),
                session_id: sid.clone(),
                token: ch.token.clone(),
                seq_ack: None,
            };
            let all = back
                .resume(30, true, &resume, Some(0), t0, LIMIT)
                .unwrap()
                .missed;
            let tail: Vec<&Notice> = all.iter().rev().take(2).map(|n| &n.notice).collect();
            assert!(
                matches!(
                    tail[..],
                    [
                        Notice::Dave(DaveNotice::ExternalSender(_)),
                        Notice::Dave(DaveNotice::PrepareEpoch {
                            epoch: 1,
                            protocol_version: 1
                        })
                    ]
                ),
                "{tail:?}"
            );
        }
    }

    fn notices_numbered(effects: &[Effect], conn: ConnId) -> Vec<u64> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::Gateway {
                    conn: c,
                    push: Push::Notice(n),
                } if *c == conn => n.seq,
                _ => None,
            })
            .collect()
    }
}
