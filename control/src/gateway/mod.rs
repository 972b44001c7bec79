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

use protocol::gateway::{
    self as wire, ClientDisconnect, ClientMessage, ClientsConnect, CloseCode, DecodeError,
    HeartbeatAck, Hello, Identify, MemberSpeaking, Millis, Opcode, Ready, Resume, ServerMessage,
    SessionDescription, NUMBERED,
};
use protocol::Envelope;
use shared::Mode;

use crate::connection::{grace, refuse, Context, Protocol, Refusal, Result, PRE_AUTH_MAX_MESSAGE};
use crate::limit::{Bucket, RateLimit};
use crate::registry::{ConnId, Departure, IdentifyError, Kick, Notice, Push, Registry, Sequenced};
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
}

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
    /// An op accepted and ignored (video, client flags, DAVE).
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
            // Video (12), client flags/platform (14-20) and DAVE (21-31):
            // accepted and ignored while video and DAVE are off.
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

    /// Sends a notice of the session's stream, as its message.
    fn send(&mut self, n: &Sequenced) {
        let text = self.message(&n.notice).encode(n.seq);
        self.out.push_back(Output::Text(text));
    }

    /// The message that tells a client `notice`.
    pub fn message(&self, notice: &Notice) -> ServerMessage {
        match notice {
            Notice::Ready { ssrc } => ServerMessage::Ready(Ready {
                ssrc: *ssrc,
                ip: IpAddr::V4(self.config.udp_ip),
                port: self.config.udp_port,
                modes: self.config.modes.iter().map(|m| m.name().into()).collect(),
                heartbeat_interval: Some(Millis::from(self.config.heartbeat_interval)),
            }),
            Notice::Keyed { mode, key } => ServerMessage::SessionDescription(SessionDescription {
                mode: *mode,
                secret_key: key.0,
                dave_protocol_version: 0,
            }),
            Notice::Joined(user_ids) => ServerMessage::ClientsConnect(ClientsConnect {
                user_ids: user_ids.clone(),
            }),
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
        Ok(SelectProtocol { mode, declared })
    }

    fn identify(&mut self, now: Instant, id: &Identify, registry: &mut Registry) -> Result<()> {
        let numbered = self.version >= NUMBERED;
        let identified = registry
            .identify(self.conn, numbered, id, now, self.config.rate)
            .map_err(identify_refusal)?;
        self.session = Some(id.session_id.clone());
        self.ssrc = Some(identified.ssrc);
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
        self.identify_by = None;
        self.deadline = now + grace(self.config.heartbeat_interval);
        self.send_unsequenced(ServerMessage::Resumed);
        for missed in &resumed.missed {
            self.send(missed);
        }
        Ok(())
    }

    fn select_protocol(&mut self, select: &SelectProtocol, registry: &mut Registry) -> Result<()> {
        let Some(session_id) = self.session.clone() else {
            return Err(not_authenticated());
        };
        let keyed = registry
            .select_protocol(&session_id, select.mode, select.declared)
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
    type Incoming = Incoming;

    /// Whether Identify or Resume succeeded.
    fn is_identified(&self) -> bool {
        self.identify_by.is_none()
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
            Incoming::SelectProtocol(select) => self.select_protocol(&select, registry),
            Incoming::Speaking(flags) => {
                if let Some(session_id) = &self.session {
                    registry.speaking(session_id, flags);
                }
                Ok(())
            }
            Incoming::Ignored => Ok(()),
        };
        if let Err(r) = handled {
            self.close(r);
        }
    }

    /// A binary frame. DAVE is negotiated off (`dave_protocol_version: 0`),
    /// so a client has no reason to send one: after Identify it is
    /// ignored (within the connection's budget), before it 4003.
    fn handle_binary(&mut self, now: Instant) {
        if self.closing.is_some() {
            return;
        }
        if self.session.is_none() {
            self.close(not_authenticated());
        } else if !self.bucket.take(now) {
            self.close(rate_limited());
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

#[cfg(test)]
mod tests {
    use protocol::Snowflake;
    use serde_json::{json, Value};
    use shared::Command;

    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    use crate::registry::Effect;

    fn sf(id: u64) -> Snowflake {
        Snowflake(id)
    }

    /// A channel "100" in guild "1" with voice states for users 7, 8, 9,
    /// and the connections of a test: the registry's pushes are routed to
    /// them as the server layer would.
    struct Call {
        cx: Context,
        token: String,
        sessions: Vec<String>,
        now: Instant,
        commands: Vec<Command>,
        /// Pushes for connections not routed yet.
        undelivered: Vec<(ConnId, Push)>,
    }

    fn call() -> Call {
        let mut registry = Registry::new(2, StdRng::seed_from_u64(2));
        registry.set_resume(Duration::from_secs(10), 4);
        let token = registry.channel_req(sf(100), Some(sf(1))).token;
        let sessions = [7, 8, 9]
            .into_iter()
            .map(|u| registry.voice_state_create(sf(u), sf(100)).unwrap())
            .collect();
        Call {
            cx: Context {
                registry,
                replay: crate::lvsp::Replay::new(4),
                guard: crate::lvsp::AuthGuard::new(Default::default()),
            },
            token,
            sessions,
            now: Instant::now(),
            commands: Vec::new(),
            undelivered: Vec::new(),
        }
    }

    impl Call {
        /// Routes effects: pushes to the connections given (the others wait
        /// for a later call naming theirs), commands kept.
        fn route(&mut self, conns: &mut [&mut Connection]) {
            for e in self.cx.registry.drain_effects() {
                match e {
                    Effect::Gateway { conn, push } => self.undelivered.push((conn, push)),
                    Effect::Dataplane { command, .. } => self.commands.push(command),
                }
            }
            let mut waiting = Vec::new();
            for (conn, push) in self.undelivered.drain(..) {
                match conns.iter_mut().find(|c| c.conn == conn) {
                    Some(c) => c.handle_push(push),
                    None => waiting.push((conn, push)),
                }
            }
            self.undelivered = waiting;
        }

        fn send(&mut self, c: &mut Connection, msg: &str) -> Vec<Value> {
            feed(c, self.now, msg, &mut self.cx);
            self.route(&mut [&mut *c]);
            out(c)
        }

        fn identify_msg(&self, user: &str, i: usize) -> String {
            json!({"op": 0, "d": {"server_id": "1", "user_id": user,
                "session_id": self.sessions[i], "token": self.token,
                "max_dave_protocol_version": 0}})
            .to_string()
        }

        fn join(&mut self, conn: ConnId, version: u8, user: &str, i: usize) -> Connection {
            let mut c = Connection::new(config(), conn, version, self.now);
            let hello = out(&mut c);
            assert_eq!(hello[0]["op"], 8);
            assert_eq!(hello[0]["d"]["heartbeat_interval"], 1000);
            let m = self.identify_msg(user, i);
            let ready = self.send(&mut c, &m);
            assert_eq!(ready[0]["op"], 2, "{ready:?}");
            assert_eq!(ready[0]["d"]["ip"], "127.0.0.1");
            assert_eq!(ready[0]["d"]["port"], 5000);
            assert_eq!(ready[0]["d"]["modes"][0], "aead_aes256_gcm_rtpsize");
            assert_eq!(ready[0]["d"]["modes"].as_array().unwrap().len(), 5);
            // What came after Ready stays for the test to read.
            c.out
                .extend(ready[1..].iter().map(|m| Output::Text(m.to_string())));
            c
        }

        fn select(&mut self, c: &mut Connection) -> Vec<Value> {
            self.send(
                c,
                r#"{"op":1,"d":{"protocol":"udp","data":{"address":"127.0.0.1","port":4000,"mode":"aead_aes256_gcm_rtpsize"}}}"#,
            )
        }
    }

    fn config() -> Arc<Config> {
        Arc::new(Config {
            heartbeat_interval: Duration::from_millis(1000),
            udp_ip: Ipv4Addr::LOCALHOST,
            udp_port: 5000,
            rate: RateLimit {
                per_second: 5.0,
                burst: 20.0,
            },
            modes: Mode::ALL.to_vec(),
            identify_timeout: Duration::from_secs(5),
        })
    }

    /// A text frame through both steps, as the server feeds it.
    fn feed(c: &mut Connection, now: Instant, text: &str, cx: &mut Context) {
        if let Some(incoming) = c.handle_text(now, text) {
            c.handle_incoming(now, incoming, cx);
        }
    }

    fn out(c: &mut Connection) -> Vec<Value> {
        let mut v = Vec::new();
        while let Some(o) = c.poll_output() {
            match o {
                Output::Text(t) => v.push(serde_json::from_str(&t).unwrap()),
                Output::Close { code, .. } => v.push(json!({"close": code})),
            }
        }
        v
    }

    #[test]
    fn only_the_configured_modes_are_offered() {
        let mut call = call();
        let mut config = (*config()).clone();
        config.modes = vec![Mode::XSalsa20Poly1305];
        let mut c = Connection::new(Arc::new(config), 1, 4, call.now);
        out(&mut c);
        let ready = call.send(&mut c, &call.identify_msg("7", 0));
        assert_eq!(ready[0]["d"]["modes"], json!(["xsalsa20_poly1305"]));
        let sd = call.select(&mut c); // asks for AES-GCM
        assert_eq!(sd.last().unwrap(), &json!({"close": 4016}));
    }

    #[test]
    fn heartbeat_shapes_by_version() {
        let mut call = call();
        let mut v4 = call.join(1, 4, "7", 0);
        let ack = call.send(&mut v4, r#"{"op":3,"d":1501184119561}"#);
        assert_eq!(ack, vec![json!({"op": 6, "d": 1501184119561u64})]);
        let mut v8 = call.join(2, 8, "8", 1);
        out(&mut v8);
        let ack = call.send(&mut v8, r#"{"op":3,"d":{"t":99,"seq_ack":1}}"#);
        assert_eq!(ack, vec![json!({"op": 6, "d": {"t": 99}})]);
    }

    #[test]
    fn v8_messages_carry_seq_in_order() {
        let mut call = call();
        let mut a = call.join(1, 8, "7", 0);
        let mut b = call.join(2, 8, "8", 1);
        call.route(&mut [&mut a, &mut b]);
        // a: Ready (1, already read), then Clients Connect for 8 (2).
        let o = out(&mut a);
        assert_eq!(
            (o[0]["op"].clone(), o[0]["seq"].clone()),
            (json!(11), json!(2))
        );
        // b: Ready (1), then Clients Connect listing 7 (2).
        let o = out(&mut b);
        assert_eq!(o[0]["d"]["user_ids"], json!(["7"]));
        assert_eq!(o[0]["seq"], 2);
        let sd = call.select(&mut a);
        assert_eq!(sd[0]["seq"], 3);
        // Below v8 nothing is numbered.
        let mut c = call.join(3, 4, "9", 2);
        call.route(&mut [&mut c]);
        assert!(out(&mut c).iter().all(|m| m.get("seq").is_none()));
    }

    #[test]
    fn unsupported_version_is_4020_and_versions_parse() {
        let mut c = Connection::unsupported(config(), 1, Instant::now());
        assert_eq!(out(&mut c), vec![json!({"close": 4020})]);
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

    /// The close frame (code and reason) a connection queued.
    fn close_of(c: &mut Connection) -> Option<(u16, String)> {
        std::iter::from_fn(|| c.poll_output()).find_map(|o| match o {
            Output::Close { code, reason } => Some((code, reason)),
            Output::Text(_) => None,
        })
    }

    #[test]
    fn before_identify_only_small_frames_and_three_ops() {
        let mut call = call();
        // A large frame is refused unparsed: even valid JSON.
        let pad = "x".repeat(PRE_AUTH_MAX_MESSAGE);
        let big = json!({"op": 3, "d": {"t": 1}, "pad": pad}).to_string();
        let mut c = Connection::new(config(), 1, 8, call.now);
        out(&mut c);
        assert!(c.handle_text(call.now, &big).is_none());
        assert_eq!(out(&mut c), vec![json!({"close": 4002})]);
        // A heartbeat is answered without the registry (no Incoming).
        let mut c = Connection::new(config(), 2, 8, call.now);
        out(&mut c);
        assert!(c.handle_text(call.now, r#"{"op":3,"d":{"t":7}}"#).is_none());
        assert_eq!(out(&mut c), vec![json!({"op": 6, "d": {"t": 7}})]);
        // A binary frame before Identify is 4003.
        c.handle_binary(call.now);
        assert_eq!(out(&mut c), vec![json!({"close": 4003})]);
        // Once identified, large frames are the socket layer's business.
        let mut a = call.join(3, 8, "7", 0);
        out(&mut a);
        let o = call.send(&mut a, &big);
        assert_eq!(o, vec![json!({"op": 6, "d": {"t": 1}})]);
    }

    #[test]
    fn heartbeat_acks_carry_only_the_nonce() {
        let mut call = call();
        let mut v4 = call.join(1, 4, "7", 0);
        let mut v8 = call.join(2, 8, "8", 1);
        call.route(&mut [&mut v4, &mut v8]);
        out(&mut v4);
        out(&mut v8);
        let blob = "y".repeat(1000);
        let ack = call.send(
            &mut v8,
            &json!({"op": 3, "d": {"t": -5, "seq_ack": 2, "extra": blob}}).to_string(),
        );
        assert_eq!(ack, vec![json!({"op": 6, "d": {"t": -5}})]);
        assert_eq!(
            call.send(&mut v4, r#"{"op":3,"d":18446744073709551615}"#),
            vec![json!({"op": 6, "d": 18446744073709551615u64})]
        );
        for (version, d) in [
            (4, json!({"t": 1})),
            (4, json!(blob)),
            (4, json!(1.5)),
            (4, Value::Null),
            (8, json!(5)),
            (8, json!({"t": [1, 2]})),
            (8, json!({"t": 1.5})),
        ] {
            let mut c = Connection::new(config(), 9, version, call.now);
            out(&mut c);
            let m = json!({"op": 3, "d": d}).to_string();
            assert!(c.handle_text(call.now, &m).is_none());
            assert_eq!(out(&mut c), vec![json!({"close": 4002})], "v{version} {d}");
        }
    }

    #[test]
    fn close_reasons_never_echo_client_text() {
        let mut call = call();
        let evil = "EVIL<script>";
        let cases = [
            format!("{{\"op\":1,\"d\":{{\"protocol\":\"{evil}\",\"data\":{{}}}}}}"),
            format!("{{\"op\":1,\"d\":{{\"protocol\":\"udp\",\"data\":{{\"mode\":\"{evil}\"}}}}}}"),
            format!("{{\"op\":\"{evil}\"}}"),
            format!("{{\"op\":99,\"d\":\"{evil}\"}}"),
            format!("{evil} not json"),
            format!("{{\"op\":5,\"d\":{{\"speaking\":\"{evil}\"}}}}"),
        ];
        for (i, m) in cases.iter().enumerate() {
            let mut c = call.join(10 + i as u64, 8, "7", 0);
            out(&mut c);
            feed(&mut c, call.now, m, &mut call.cx);
            let (code, reason) = close_of(&mut c).expect("closed");
            assert!(!reason.contains("EVIL"), "{code} {reason:?} for {m}");
            c.closed(call.now, &mut call.cx);
        }
        // Before Identify, too.
        let mut c = Connection::new(config(), 30, 8, call.now);
        out(&mut c);
        c.handle_text(
            call.now,
            &format!("{{\"op\":0,\"d\":{{\"server_id\":\"{evil}\"}}}}"),
        );
        let (_, reason) = close_of(&mut c).expect("closed");
        assert!(!reason.contains("EVIL"));
    }

    /// Identifying again on new sockets does not refill the budget: it is
    /// the voice session's, kept in the registry.
    #[test]
    fn the_budget_belongs_to_the_session_not_the_socket() {
        let mut call = call();
        let hb = r#"{"op":3,"d":{"t":1,"seq_ack":0}}"#;
        let mut accepted = 0;
        let mut conn = 1;
        let mut c = call.join(conn, 8, "7", 0); // 1 of the burst of 20
        accepted += 1;
        for _ in 0..10 {
            // 5 messages per socket, then a new socket identifies again.
            for _ in 0..5 {
                if call.send(&mut c, hb).first() == Some(&json!({"op": 6, "d": {"t": 1}})) {
                    accepted += 1;
                }
            }
            c.closed(call.now, &mut call.cx);
            conn += 1;
            c = Connection::new(config(), conn, 8, call.now);
            out(&mut c);
            let o = call.send(&mut c, &call.identify_msg("7", 0));
            match o.first() {
                Some(m) if m["op"] == 2 => accepted += 1,
                Some(m) => {
                    assert_eq!(m, &json!({"close": 4021}), "refused only for the budget");
                    break;
                }
                None => panic!("no answer to Identify"),
            }
        }
        assert_eq!(accepted, 20, "one burst across every socket");
        // The budget refills with time (5/s): one second later, 5 more.
        call.now += Duration::from_secs(1);
        let mut c = Connection::new(config(), 99, 8, call.now);
        out(&mut c);
        assert_eq!(call.send(&mut c, &call.identify_msg("7", 0))[0]["op"], 2);
        // An unidentified socket still has its own budget (20 here).
        let mut idle = Connection::new(config(), 100, 8, call.now);
        out(&mut idle);
        let acks = (0..25)
            .filter(|_| {
                call.send(&mut idle, hb)
                    .first()
                    .is_some_and(|m| m["op"] == 6)
            })
            .count();
        assert_eq!(acks, 20);
    }

    /// A member who speaks and rejoins in a loop cannot push a parked
    /// member's missed messages out of its resume buffer (4 here): only its
    /// latest Speaking and its latest connect or disconnect are kept.
    #[test]
    fn a_flooding_member_cannot_evict_a_parked_members_messages() {
        let mut call = call();
        let mut parked = call.join(1, 8, "7", 0);
        let mut flooder = call.join(2, 8, "8", 1);
        let mut witness = call.join(3, 8, "9", 2);
        call.route(&mut [&mut parked, &mut flooder, &mut witness]);
        let seq_ack = out(&mut parked).last().unwrap()["seq"].as_u64().unwrap();
        out(&mut witness);
        parked.closed(call.now, &mut call.cx); // the socket died
        let mut conn = 10;
        let mut seen_by_witness = 0;
        for round in 0..50u32 {
            call.now += Duration::from_secs(1); // the budget refills
            for flags in 1..=3 {
                let m = json!({"op": 5, "d": {"speaking": flags + round, "delay": 0}});
                call.send(&mut flooder, &m.to_string());
            }
            // Leave for good (4002 is not resumable), then join again.
            call.send(&mut flooder, "garbage");
            flooder.closed(call.now, &mut call.cx);
            conn += 1;
            flooder = Connection::new(config(), conn, 8, call.now);
            out(&mut flooder);
            assert_eq!(
                call.send(&mut flooder, &call.identify_msg("8", 1))[0]["op"],
                2
            );
            call.route(&mut [&mut witness]);
            seen_by_witness += out(&mut witness).len();
        }
        assert!(seen_by_witness >= 250, "live members get everything");
        let mut back = Connection::new(config(), 99, 8, call.now);
        out(&mut back);
        let resume = json!({"op": 7, "d": {"server_id": "1", "session_id": call.sessions[0],
            "token": call.token, "seq_ack": seq_ack}});
        let o = call.send(&mut back, &resume.to_string());
        assert_eq!(o[0], json!({"op": 9, "d": null}), "{o:?}");
        let ops: Vec<u64> = o[1..].iter().map(|m| m["op"].as_u64().unwrap()).collect();
        assert_eq!(
            ops,
            vec![5, 11],
            "the latest Speaking, then the latest join"
        );
        assert_eq!(o[1]["d"]["speaking"], 3 + 49);
        assert_eq!(o[1]["d"]["user_id"], "8");
        assert_eq!(o[2]["d"]["user_ids"], json!(["8"]));
    }
}
