//! The Discord voice gateway, server side, as a sans-IO state machine
//! (seeds/004 "Voice Connections", DESIGN.md "Voice gateway"). The wire
//! itself (opcodes, close codes, message shapes) is `protocol::gateway`.
//!
//! One [`Connection`] per websocket. A text frame goes in two steps:
//! [`Protocol::handle_text`] checks the connection's budget and decodes
//! it into an [`Incoming`] without touching shared state (the server calls
//! it outside the registry lock, so parsing costs nobody else anything);
//! [`Protocol::handle_incoming`] then acts on it with the registry.
//! Other inputs: messages from the registry for this connection
//! ([`Protocol::handle_push`]) and deadlines
//! ([`Protocol::handle_timeout`]); outputs through
//! [`Protocol::poll_output`]. Call [`Protocol::closed`] once when the
//! socket is gone so the registry parks or releases the session.
//!
//! Before Identify or Resume a connection is cheap to refuse: frames over
//! [`PRE_AUTH_MAX_MESSAGE`] are closed unparsed, and only Identify, Resume
//! and Heartbeat are accepted (a heartbeat then never takes the registry
//! lock). Once identified, every message is also charged to the voice
//! session's budget in the registry, which survives reconnects.
//!
//! The registry speaks in typed [`Notice`]s (a member joined, left, spoke;
//! the session's SSRC and keys), numbered (v8 `seq`) in the session's
//! [`Stream`](crate::stream::Stream), which it keeps across connections;
//! this module alone turns them into messages ([`Connection::message`]) and
//! the registry's [`Kick`]s into close codes.

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use protocol::gateway::frame::Frame;
use protocol::gateway::{
    self as wire, ClientDisconnect, ClientMessage, ClientsConnect, CloseCode, DavePrepareEpoch,
    DavePrepareTransition, DaveTransition, DecodeError, HeartbeatAck, Hello, Identify,
    MemberSpeaking, Millis, Opcode, Ready, Resume, ServerMessage, SessionDescription, Video,
    NUMBERED,
};
use protocol::{Envelope, Snowflake};
use shared::Mode;

use crate::connection::{grace, refuse, Context, Protocol, Refusal, Result, PRE_AUTH_MAX_MESSAGE};
use crate::dave::DaveNotice;
use crate::limit::{Bucket, RateLimit};
use crate::registry::{ConnId, Departure, IdentifyError, Kick, Notice, Push, Registry, Sequenced};
use crate::video::VideoError;
use crate::Output;

/// Gateway settings shared by every connection.
#[derive(Debug, Clone)]
pub struct Config {
    /// Heartbeat interval sent in Hello. Default 13.75 s.
    pub heartbeat_interval: Duration,
    /// The IPv4 address announced in Ready (where clients send UDP).
    pub udp_ip: Ipv4Addr,
    /// The UDP port announced in Ready.
    pub udp_port: u16,
    /// Message budget (past it: 4021), both per connection and per voice
    /// session (the latter kept in the registry across reconnects).
    /// Default 10/s, burst 60.
    pub rate: RateLimit,
    /// The encryption modes offered in Ready, in order; Select Protocol with
    /// any other is 4016. Default: all five, in [`Mode::ALL`]'s order.
    pub modes: Vec<Mode>,
    /// How long a connection may stay without Identify or Resume (4003
    /// after). Default 15 s.
    pub identify_timeout: Duration,
}

/// Gateway versions served: 4-8 as Discord does, 1-3 as well (served like
/// 4: Hello is sent at every version, heartbeats echo a bare value).
pub const VERSIONS: std::ops::RangeInclusive<u8> = 1..=8;

/// The version of a connection whose URL has no `v`: Discord's default, 1.
pub const DEFAULT_VERSION: u8 = 1;

/// Select Protocol op 1's data, checked against the offered modes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelectProtocol {
    /// The chosen mode (one of those offered).
    pub mode: Mode,
    /// The address the client says it has (advisory).
    pub declared: Option<SocketAddr>,
    /// The video codec it prefers among those it offered.
    pub video_codec: Option<String>,
}

/// The longest codec name taken from a client (`H264`, `AV1`, `VP9`).
const MAX_CODEC_NAME: usize = 16;

/// A client message, decoded by [`Protocol::handle_text`].
#[derive(Debug, Clone)]
pub enum Incoming {
    /// Heartbeat op 3 of an identified connection, with its ACK.
    Heartbeat(HeartbeatAck),
    /// Identify op 0.
    Identify(Identify),
    /// Resume op 7.
    Resume(Resume),
    /// Select Protocol op 1.
    SelectProtocol(SelectProtocol),
    /// Speaking op 5 with its flags.
    Speaking(u32),
    /// Video op 12.
    Video(Video),
    /// DAVE op 26 (binary): an MLS key package.
    DaveKeyPackage(Vec<u8>),
    /// DAVE op 28 (binary): a commit and maybe a welcome.
    DaveCommitWelcome(Vec<u8>),
    /// DAVE op 23: ready for a transition.
    DaveReady(u16),
    /// DAVE op 31: a commit or welcome could not be processed.
    DaveInvalid,
    /// An op accepted and ignored (client flags, media sink wants).
    Ignored,
}

/// One voice gateway connection.
#[derive(Debug)]
pub struct Connection {
    config: Arc<Config>,
    conn: ConnId,
    version: u8,
    /// The voice state's session id, once identified or resumed.
    session: Option<String>,
    ssrc: Option<u32>,
    /// The member and its channel, once identified or resumed.
    member: Option<(Snowflake, Snowflake)>,
    /// The close code this side sent, once it closed.
    closing: Option<u16>,
    /// The client's close frame, once it sent one: its code (None: no
    /// code, which the websocket protocol shows as 1005).
    peer_close: Option<Option<u16>>,
    deadline: Instant,
    /// Until when Identify or Resume must arrive (None once they did).
    identify_by: Option<Instant>,
    /// This socket's budget; once identified the session's budget in the
    /// registry is charged as well.
    bucket: Bucket,
    out: VecDeque<Output>,
}

impl Connection {
    /// A new connection at gateway version `version` (1..=8); queues Hello.
    pub fn new(config: Arc<Config>, conn: ConnId, version: u8, now: Instant) -> Connection {
        let mut c = Connection {
            deadline: now + grace(config.heartbeat_interval),
            identify_by: Some(now + config.identify_timeout),
            bucket: Bucket::new(config.rate, now),
            config,
            conn,
            version,
            session: None,
            ssrc: None,
            member: None,
            closing: None,
            peer_close: None,
            out: VecDeque::new(),
        };
        c.send_unsequenced(ServerMessage::Hello(Hello {
            v: Some(version),
            heartbeat_interval: Millis::from(c.config.heartbeat_interval),
        }));
        c
    }

    /// A connection for a version this server does not serve: closed with
    /// 4020 right after the handshake.
    pub fn unsupported(config: Arc<Config>, conn: ConnId, now: Instant) -> Connection {
        let mut c = Connection::new(config, conn, *VERSIONS.end(), now);
        c.out.clear();
        c.close(refuse(CloseCode::BadRequest, "unsupported gateway version"));
        c
    }

    /// Whether a close was queued.
    pub fn is_closed(&self) -> bool {
        self.closing.is_some()
    }

    /// The SSRC, once identified.
    pub fn ssrc(&self) -> Option<u32> {
        self.ssrc
    }

    /// Decodes a text frame for this connection's state, without side
    /// effects: the size and op limits before Identify (and a second
    /// Identify or Resume) are checked before `d` is read; then the
    /// message's shape, and what needs no registry (the mode in Select
    /// Protocol).
    pub fn decode(&self, text: &str) -> Result<Incoming> {
        let identified = self.session.is_some();
        if !identified && text.len() > PRE_AUTH_MAX_MESSAGE {
            return Err(refuse(CloseCode::DecodeError, "message too large"));
        }
        let envelope = Envelope::parse(text).map_err(|e| decode_refusal(e.into()))?;
        let op = Opcode::from_code(envelope.op());
        if !identified
            && !matches!(
                op,
                Some(Opcode::Identify | Opcode::Resume | Opcode::Heartbeat)
            )
        {
            return Err(not_authenticated());
        }
        if identified && matches!(op, Some(Opcode::Identify | Opcode::Resume)) {
            return Err(refuse(
                CloseCode::AlreadyAuthenticated,
                "already authenticated",
            ));
        }
        let message =
            ClientMessage::from_envelope(&envelope, self.version).map_err(decode_refusal)?;
        Ok(match message {
            ClientMessage::Heartbeat(heartbeat) => Incoming::Heartbeat(heartbeat.ack()),
            ClientMessage::Identify(identify) => Incoming::Identify(identify),
            ClientMessage::Resume(resume) => Incoming::Resume(resume),
            ClientMessage::SelectProtocol(select) => {
                Incoming::SelectProtocol(self.check_select(&select)?)
            }
            ClientMessage::Speaking(speaking) => Incoming::Speaking(speaking.speaking),
            ClientMessage::DaveTransitionReady(t) => Incoming::DaveReady(t.transition_id),
            ClientMessage::DaveInvalidCommitWelcome(_) => Incoming::DaveInvalid,
            ClientMessage::Video(video) => Incoming::Video(video),
            // Client flags, platform, media sink wants (14-20): accepted
            // and ignored.
            ClientMessage::Ignored(_) => Incoming::Ignored,
        })
    }

    fn close(&mut self, r: Refusal) {
        if self.closing.is_none() {
            self.closing = Some(r.code);
            self.out.push_back(Output::Close {
                code: r.code,
                reason: r.reason.to_owned(),
            });
        }
    }

    fn send_unsequenced(&mut self, message: ServerMessage) {
        self.out.push_back(Output::Text(message.encode(None)));
    }

    /// Sends a notice of the session's stream, as its frame.
    fn send(&mut self, n: &Sequenced) {
        let output = self.output(n);
        self.out.push_back(output);
    }

    /// The frame that tells a client a numbered notice: a text message, or
    /// for DAVE's MLS ops a binary frame whose `u16` seq is the same
    /// counter.
    pub fn output(&self, n: &Sequenced) -> Output {
        use DaveNotice::{AnnounceCommit, ExternalSender, Proposals, Welcome};
        let (op, transition, body): (Opcode, Option<u16>, &[u8]) = match &n.notice {
            Notice::Dave(ExternalSender(p)) => (Opcode::DaveMlsExternalSender, None, p),
            Notice::Dave(Proposals(p)) => (Opcode::DaveMlsProposals, None, p),
            Notice::Dave(AnnounceCommit {
                transition_id,
                commit,
            }) => (
                Opcode::DaveMlsAnnounceCommitTransition,
                Some(*transition_id),
                commit,
            ),
            Notice::Dave(Welcome {
                transition_id,
                welcome,
            }) => (Opcode::DaveMlsWelcome, Some(*transition_id), welcome),
            notice => return Output::Text(self.message(notice).encode(n.seq)),
        };
        // Ops 29 and 30 start with the transition id.
        let mut payload = Vec::with_capacity(2 + body.len());
        payload.extend(transition.map(u16::to_be_bytes).into_iter().flatten());
        payload.extend_from_slice(body);
        let frame = Frame {
            seq: Some(n.seq.unwrap_or(0) as u16),
            op,
            payload: &payload,
        };
        Output::Binary(frame.encode())
    }

    /// The message that tells a client `notice` (DAVE's binary notices
    /// have none: see [`Connection::output`]).
    pub fn message(&self, notice: &Notice) -> ServerMessage {
        match notice {
            Notice::Ready { ssrc, streams } => ServerMessage::Ready(Ready {
                ssrc: *ssrc,
                ip: IpAddr::V4(self.config.udp_ip),
                port: self.config.udp_port,
                modes: self.config.modes.iter().map(|m| m.name().into()).collect(),
                heartbeat_interval: Some(Millis::from(self.config.heartbeat_interval)),
                streams: streams.clone(),
            }),
            Notice::Keyed {
                mode,
                key,
                dave,
                video_codec,
            } => ServerMessage::SessionDescription(SessionDescription {
                mode: *mode,
                secret_key: key.0,
                dave_protocol_version: *dave,
                audio_codec: Some("opus".into()),
                video_codec: video_codec.clone(),
            }),
            Notice::Dave(DaveNotice::PrepareTransition {
                protocol_version,
                transition_id,
            }) => ServerMessage::DavePrepareTransition(DavePrepareTransition {
                protocol_version: *protocol_version,
                transition_id: *transition_id,
            }),
            Notice::Dave(DaveNotice::ExecuteTransition { transition_id }) => {
                ServerMessage::DaveExecuteTransition(DaveTransition {
                    transition_id: *transition_id,
                })
            }
            Notice::Dave(DaveNotice::PrepareEpoch {
                protocol_version,
                epoch,
            }) => ServerMessage::DavePrepareEpoch(DavePrepareEpoch {
                protocol_version: *protocol_version,
                epoch: *epoch,
            }),
            Notice::Dave(binary) => unreachable!("{binary:?} is a binary frame"),
            Notice::Joined(user_ids) => ServerMessage::ClientsConnect(ClientsConnect {
                user_ids: user_ids.clone(),
            }),
            Notice::Ssrcs(ssrcs) => ServerMessage::MemberSsrcs(ssrcs.clone()),
            Notice::Left(user_id) => {
                ServerMessage::ClientDisconnect(ClientDisconnect { user_id: *user_id })
            }
            Notice::Speaking {
                user_id,
                ssrc,
                speaking,
            } => ServerMessage::Speaking(MemberSpeaking {
                user_id: *user_id,
                ssrc: *ssrc,
                speaking: *speaking,
            }),
        }
    }

    /// The ACK carries back only the nonce, so it is never larger than
    /// what earned it.
    fn heartbeat(&mut self, now: Instant, ack: HeartbeatAck) {
        self.deadline = now + grace(self.config.heartbeat_interval);
        self.send_unsequenced(ServerMessage::HeartbeatAck(ack));
    }

    /// The mode must be one of those offered; the declared address is
    /// advisory (the data plane uses it only when it matches what IP
    /// discovery observed).
    fn check_select(&self, select: &wire::SelectProtocol) -> Result<SelectProtocol> {
        let mode = select
            .data
            .mode()
            .filter(|m| self.config.modes.contains(m))
            .ok_or_else(|| refuse(CloseCode::UnknownEncryptionMode, "unknown encryption mode"))?;
        let declared = select
            .data
            .address
            .zip(select.data.port)
            .map(|(ip, port)| SocketAddr::new(ip, port));
        let video_codec = select
            .video_codec()
            .filter(|name| {
                name.len() <= MAX_CODEC_NAME && name.bytes().all(|b| b.is_ascii_alphanumeric())
            })
            .map(str::to_owned);
        Ok(SelectProtocol {
            mode,
            declared,
            video_codec,
        })
    }

    fn identify(&mut self, now: Instant, id: &Identify, registry: &mut Registry) -> Result<()> {
        let numbered = self.version >= NUMBERED;
        let identified = registry
            .identify(self.conn, numbered, id, now, self.config.rate)
            .map_err(identify_refusal)?;
        self.session = Some(id.session_id.clone());
        self.ssrc = Some(identified.ssrc);
        self.member = Some((id.user_id, identified.channel_id));
        self.identify_by = None;
        self.deadline = now + grace(self.config.heartbeat_interval);
        // Who is here and which SSRC is whose come as pushes after it.
        self.send(&identified.ready);
        Ok(())
    }

    fn resume(&mut self, now: Instant, resume: &Resume, registry: &mut Registry) -> Result<()> {
        let seq_ack = resume.seq_ack_at(self.version);
        let resumed = registry
            .resume(
                self.conn,
                self.version >= NUMBERED,
                resume,
                seq_ack,
                now,
                self.config.rate,
            )
            .map_err(identify_refusal)?;
        self.session = Some(resume.session_id.clone());
        self.ssrc = Some(resumed.ssrc);
        self.member = Some((resumed.user_id, resumed.channel_id));
        self.identify_by = None;
        self.deadline = now + grace(self.config.heartbeat_interval);
        self.send_unsequenced(ServerMessage::Resumed);
        for missed in &resumed.missed {
            self.send(missed);
        }
        Ok(())
    }

    fn select_protocol(
        &mut self,
        now: Instant,
        select: &SelectProtocol,
        registry: &mut Registry,
    ) -> Result<()> {
        let Some(session_id) = self.session.clone() else {
            return Err(not_authenticated());
        };
        let keyed = registry
            .select_protocol(
                &session_id,
                select.mode,
                select.declared,
                select.video_codec.clone(),
                now,
            )
            .map_err(|_| refuse(CloseCode::BadRequest, "server full"))?;
        if let Some(keyed) = keyed {
            self.send(&keyed);
        }
        Ok(())
    }
}

impl Protocol for Connection {
    const NAME: &'static str = "gateway";
    const IDENTIFY_TIMEOUT_CODE: u16 = CloseCode::NotAuthenticated as u16;
    const RESTART_CODE: u16 = CloseCode::ServerCrashed as u16;
    type Incoming = Incoming;

    /// Whether Identify or Resume succeeded.
    fn is_identified(&self) -> bool {
        self.identify_by.is_none()
    }

    fn identity(&self) -> Option<(u64, u64, u32)> {
        let (user, channel) = self.member?;
        Some((user.0, channel.0, self.ssrc?))
    }

    fn handle_ping(&mut self, now: Instant) {
        if self.closing.is_none() && !self.bucket.take(now) {
            self.close(rate_limited());
        }
    }

    /// A text frame from the client, step one (no shared state): charges
    /// this connection's budget and decodes the frame. A heartbeat before
    /// Identify is answered here. Returns what
    /// [`Protocol::handle_incoming`] must handle, or None (answered, or
    /// refused with a close queued).
    fn handle_text(&mut self, now: Instant, text: &str) -> Option<Incoming> {
        if self.closing.is_some() {
            return None;
        }
        if !self.bucket.take(now) {
            self.close(rate_limited());
            return None;
        }
        match self.decode(text) {
            Ok(Incoming::Heartbeat(ack)) if self.session.is_none() => {
                self.heartbeat(now, ack);
                None
            }
            Ok(incoming) => Some(incoming),
            Err(r) => {
                self.close(r);
                None
            }
        }
    }

    /// A decoded message, step two, with the registry (under its lock).
    /// Once identified, every message is charged to the session's budget.
    fn handle_incoming(&mut self, now: Instant, incoming: Incoming, cx: &mut Context) {
        if self.closing.is_some() {
            return;
        }
        let registry = &mut cx.registry;
        if let Some(session_id) = &self.session {
            if !registry.spend(session_id, now, self.config.rate) {
                return self.close(rate_limited());
            }
        }
        let handled = match incoming {
            Incoming::Heartbeat(ack) => {
                self.heartbeat(now, ack);
                Ok(())
            }
            Incoming::Identify(identify) => self.identify(now, &identify, registry),
            Incoming::Resume(resume) => self.resume(now, &resume, registry),
            Incoming::SelectProtocol(select) => self.select_protocol(now, &select, registry),
            Incoming::Speaking(flags) => {
                if let Some(session_id) = &self.session {
                    registry.speaking(session_id, flags);
                }
                Ok(())
            }
            Incoming::Video(video) => match &self.session {
                Some(session_id) => {
                    registry
                        .video(session_id, &video)
                        .map_err(|VideoError::ForeignSsrc| {
                            refuse(CloseCode::DecodeError, "video ssrc not the session's")
                        })
                }
                None => Ok(()),
            },
            // DAVE: what the call refuses is counted, never a close.
            Incoming::DaveKeyPackage(bytes) => {
                if let Some(session_id) = &self.session {
                    registry.dave_key_package(session_id, &bytes);
                }
                Ok(())
            }
            Incoming::DaveCommitWelcome(bytes) => {
                if let Some(session_id) = &self.session {
                    registry.dave_commit(session_id, &bytes, now);
                }
                Ok(())
            }
            Incoming::DaveReady(transition_id) => {
                if let Some(session_id) = &self.session {
                    registry.dave_ready(session_id, transition_id);
                }
                Ok(())
            }
            Incoming::DaveInvalid => {
                if let Some(session_id) = &self.session {
                    registry.dave_invalid(session_id, now);
                }
                Ok(())
            }
            Incoming::Ignored => Ok(()),
        };
        if let Err(r) = handled {
            self.close(r);
        }
    }

    /// A binary frame: DAVE's key package (op 26) or commit and welcome
    /// (op 28), handled under the lock; other binary ops are the server's
    /// (ignored); a frame that is no binary op, 4001 or 4002; before
    /// Identify, 4003.
    fn handle_binary(&mut self, now: Instant, bytes: &[u8]) -> Option<Incoming> {
        if self.closing.is_some() {
            return None;
        }
        if self.session.is_none() {
            self.close(not_authenticated());
            return None;
        }
        if !self.bucket.take(now) {
            self.close(rate_limited());
            return None;
        }
        match Frame::from_client(bytes) {
            Ok(f) if f.op == Opcode::DaveMlsKeyPackage => {
                Some(Incoming::DaveKeyPackage(f.payload.to_vec()))
            }
            Ok(f) if f.op == Opcode::DaveMlsCommitWelcome => {
                Some(Incoming::DaveCommitWelcome(f.payload.to_vec()))
            }
            Ok(_) => None,
            Err(e) => {
                self.close(refuse(e.close_code(), "not a binary op"));
                None
            }
        }
    }

    fn handle_oversized(&mut self) {
        self.close(refuse(CloseCode::DecodeError, "message too large"));
    }

    /// A message from the registry for this connection.
    fn handle_push(&mut self, push: Push) {
        if self.closing.is_some() {
            return;
        }
        match push {
            Push::Notice(n) => self.send(&n),
            Push::Close(kick) => {
                // The registry already released (or handed over) the
                // session: closing must not release it again.
                self.session = None;
                self.close(kick_refusal(kick))
            }
        }
    }

    /// Time passes: 4009 if the client stopped heartbeating, 4003 if it
    /// never identified (heartbeats alone do not hold a connection open).
    fn handle_timeout(&mut self, now: Instant) {
        if self.closing.is_some() {
            return;
        }
        if self.identify_by.is_some_and(|by| now >= by) {
            self.close(refuse(CloseCode::NotAuthenticated, "no identify in time"));
        } else if now >= self.deadline {
            self.close(refuse(CloseCode::SessionTimeout, "session timeout"));
        }
    }

    /// The client's close frame: 1000 and 1001 are a leave.
    fn handle_close(&mut self, code: Option<u16>) {
        self.peer_close.get_or_insert(code);
    }

    /// The socket is gone. A client that closed with 1000 or 1001 left
    /// the call: the others are told now, and it may still resume for a
    /// short grace (discord.js closes that way when it resumes after
    /// losing UDP). A session whose socket ended otherwise (no close
    /// frame, any other code, or the server's 4009) is parked for a
    /// Resume; after any other close by the server it leaves the call.
    fn closed(&mut self, now: Instant, cx: &mut Context) {
        if let Some(session_id) = self.session.take() {
            let departure = departure(self.closing, self.peer_close);
            cx.registry
                .gateway_closed(&session_id, self.conn, now, departure);
        }
        self.closing.get_or_insert(1000);
    }

    fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        let next = match self.identify_by {
            Some(by) => by.min(self.deadline),
            None => self.deadline,
        };
        self.closing.is_none().then_some(next)
    }
}

/// What a connection's end means for its session: `closing` is the code
/// the server sent, `peer` the client's close frame (if it sent one).
fn departure(closing: Option<u16>, peer: Option<Option<u16>>) -> Departure {
    match (closing, peer) {
        (Some(code), _) if code == u16::from(CloseCode::SessionTimeout) => Departure::Parked,
        (Some(_), _) => Departure::Gone,
        (None, Some(Some(protocol::NORMAL_CLOSURE | protocol::GOING_AWAY))) => Departure::Left,
        (None, _) => Departure::Parked,
    }
}

fn decode_refusal(e: DecodeError) -> Refusal {
    refuse(e.close_code(), e.reason())
}

fn kick_refusal(kick: Kick) -> Refusal {
    match kick {
        Kick::Replaced => refuse(CloseCode::SessionInvalid, "session replaced"),
        Kick::ResumedElsewhere => refuse(CloseCode::SessionInvalid, "session resumed elsewhere"),
        Kick::Disconnected => refuse(CloseCode::Disconnected, "disconnected"),
        Kick::Drained { restart: true } => refuse(CloseCode::ServerCrashed, "server restarting"),
        Kick::Drained { restart: false } => refuse(CloseCode::Disconnected, "server shutting down"),
    }
}

fn not_authenticated() -> Refusal {
    refuse(CloseCode::NotAuthenticated, "not authenticated")
}

fn rate_limited() -> Refusal {
    refuse(CloseCode::RateLimited, "rate limit exceeded")
}

fn identify_refusal(e: IdentifyError) -> Refusal {
    match e {
        IdentifyError::AuthenticationFailed => {
            refuse(CloseCode::AuthenticationFailed, "authentication failed")
        }
        IdentifyError::ServerNotFound => refuse(CloseCode::ServerNotFound, "server not found"),
        IdentifyError::SessionInvalid => {
            refuse(CloseCode::SessionInvalid, "session no longer valid")
        }
        IdentifyError::RateLimited => rate_limited(),
        IdentifyError::E2eeRequired => refuse(
            CloseCode::E2eeRequired,
            "end-to-end encryption (DAVE) required",
        ),
    }
}

/// The gateway version a request URI's query asks for: its `v`
/// parameter, [`DEFAULT_VERSION`] without one, None when `v` is not a
/// version this server serves.
pub fn version_from_query(query: Option<&str>) -> Option<u8> {
    let v = query
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == "v");
    match v {
        None => Some(DEFAULT_VERSION),
        Some((_, v)) => v.parse().ok().filter(|v| VERSIONS.contains(v)),
    }
}

/// The connection's flows (every close code, resume, budgets, message
/// shapes) are tested against the client library's session in one process
/// in `control/tests/pair/`.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_from_the_query() {
        assert_eq!(version_from_query(Some("v=4")), Some(4));
        assert_eq!(version_from_query(Some("encoding=json&v=8")), Some(8));
        assert_eq!(version_from_query(Some("v=2")), Some(2));
        assert_eq!(version_from_query(None), Some(DEFAULT_VERSION));
        assert_eq!(
            version_from_query(Some("encoding=json")),
            Some(DEFAULT_VERSION)
        );
        for bad in ["v=x", "v=9", "v=0", "v=-1", "v="] {
            assert_eq!(version_from_query(Some(bad)), None, "{bad}");
        }
    }
}
