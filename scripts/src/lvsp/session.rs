//! LVSP from the Litecord side as a sans-IO state machine: what Litecord
//! knows about its connection (HELLO, health, the last INFO `s` for
//! RESUME, INFOs set aside while waiting for another, close code) and the
//! frames it has to send, with time passed in and no socket.
//!
//! Drive it like the gateway's [`GatewaySession`]: message methods and
//! `handle_*` in, [`poll_transmit`](LvspSession::poll_transmit),
//! [`poll_event`](LvspSession::poll_event) and
//! [`poll_timeout`](LvspSession::poll_timeout) out. [`LvspClient`] does it
//! over a websocket.
//!
//! [`GatewaySession`]: crate::gateway::session::GatewaySession
//! [`LvspClient`]: super::LvspClient

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use protocol::lvsp::{
    identify_token, ClientMessage, Dialect, Heartbeat, Hello, Identify, Reply, Request, Resume,
    ServerMessage,
};
use serde_json::Value;

use crate::error::SessionError;
use crate::heartbeat::Schedule;
use crate::ws::{Frame, Session};

/// The dialect this client speaks: seeds/001's.
pub const DIALECT: Dialect = Dialect::Spec;

/// An INFO from the server, as the client queues it.
#[derive(Debug, Clone, PartialEq)]
pub struct Info {
    /// Its top-level `s`.
    pub seq: u64,
    /// What it says.
    pub reply: Reply,
}

/// Something the server sent.
#[derive(Debug, Clone, PartialEq)]
pub enum LvspEvent {
    /// A message.
    Message(ServerMessage),
    /// A JSON message that is none of [`ServerMessage`]'s (an unknown op,
    /// or a known one whose data did not decode), whole.
    Other {
        /// The op.
        op: u64,
        /// The whole message.
        message: Value,
    },
    /// The server closed the websocket (close code, if any).
    Closed(Option<u16>),
}

/// Decodes a server text frame. Text that is not JSON, or JSON without an
/// integer `op`, is an error.
pub fn decode(text: &str) -> Result<LvspEvent, SessionError> {
    if let Ok(message) = ServerMessage::decode(text) {
        return Ok(LvspEvent::Message(message));
    }
    let message: Value = serde_json::from_str(text)?;
    let op = message
        .get("op")
        .and_then(Value::as_u64)
        .ok_or_else(|| SessionError::Protocol(format!("no op in {text}")))?;
    Ok(LvspEvent::Other { op, message })
}

/// One LVSP connection, Litecord side, without the connection.
#[derive(Debug, Clone, Default)]
pub struct LvspSession {
    hello: Option<Hello>,
    ready: bool,
    health: Option<f64>,
    /// The highest INFO `s` seen (carried over by
    /// [`reconnect`](Self::reconnect)).
    last_seq: Option<u64>,
    /// The `seq` of the RESUME sent on this connection: once READY says
    /// it worked, the numbering goes on from there even if nothing was
    /// replayed.
    resuming: Option<u64>,
    heartbeat: Schedule,
    /// Arrived and not read yet.
    events: VecDeque<LvspEvent>,
    /// INFOs read by [`poll_reply`](Self::poll_reply) and declined.
    infos: VecDeque<Info>,
    transmits: VecDeque<String>,
    closed: Option<Option<u16>>,
}

impl LvspSession {
    /// A session before HELLO.
    pub fn new() -> Self {
        LvspSession::default()
    }

    /// The session for a new websocket after this one's went away: the
    /// last INFO `s`, for [`resume`](Self::resume), and nothing of the old
    /// connection.
    pub fn reconnect(&self) -> Self {
        LvspSession {
            last_seq: self.last_seq,
            ..LvspSession::default()
        }
    }

    /// The HELLO of this connection, once it arrived.
    pub fn hello(&self) -> Option<&Hello> {
        self.hello.as_ref()
    }

    /// HELLO's heartbeat interval, read as milliseconds (the spec
    /// dialect's unit).
    pub fn heartbeat_interval(&self) -> Option<Duration> {
        let hello = self.hello.as_ref()?;
        Some(DIALECT.decode_interval(hello.heartbeat_interval))
    }

    /// Whether READY arrived (IDENTIFY or RESUME worked).
    pub fn ready(&self) -> bool {
        self.ready
    }

    /// The latest health from READY or HEARTBEAT_ACK.
    pub fn health(&self) -> Option<f64> {
        self.health
    }

    /// The highest INFO `s` seen (what RESUME sends).
    pub fn last_seq(&self) -> Option<u64> {
        self.last_seq
    }

    /// The INFOs set aside and not taken yet.
    pub fn queued(&self) -> &VecDeque<Info> {
        &self.infos
    }

    /// How long the last heartbeat that got its ACK waited for it.
    pub fn rtt(&self) -> Option<Duration> {
        self.heartbeat.rtt()
    }

    /// The close code, once the server closed.
    pub fn closed(&self) -> Option<Option<u16>> {
        self.closed
    }

    /// Queues any message.
    pub fn send(&mut self, message: ClientMessage) {
        if let ClientMessage::Resume(Resume { seq, .. }) = message {
            self.resuming = Some(seq);
        }
        self.transmits.push_back(message.encode(DIALECT));
    }

    /// The IDENTIFY / RESUME token for `secret` over this connection's
    /// HELLO nonce; before HELLO there is none.
    pub fn token(&self, secret: &str) -> Result<String, SessionError> {
        let hello = self
            .hello
            .as_ref()
            .ok_or_else(|| SessionError::Protocol("no HELLO yet".into()))?;
        Ok(identify_token(secret, &hello.nonce))
    }

    /// Queues IDENTIFY signed with `secret`.
    pub fn identify(&mut self, secret: &str) -> Result<(), SessionError> {
        let token = self.token(secret)?;
        self.send(ClientMessage::Identify(Identify { token }));
        Ok(())
    }

    /// Queues RESUME signed with `secret`, from the last INFO `s` seen (0
    /// if none); returns that `s`.
    pub fn resume(&mut self, secret: &str) -> Result<u64, SessionError> {
        let token = self.token(secret)?;
        let seq = self.last_seq.unwrap_or(0);
        self.send(ClientMessage::Resume(Resume { token, seq }));
        Ok(seq)
    }

    /// Queues an INFO request.
    pub fn request(&mut self, request: Request) {
        self.send(ClientMessage::Info(request));
    }

    /// Queues HEARTBEAT: `d` null, or `{"s": s}`.
    pub fn heartbeat(&mut self, now: Instant, s: Option<u64>) {
        self.send(ClientMessage::Heartbeat(
            s.map(|s| Heartbeat { s: Some(s) }),
        ));
        self.heartbeat.sent(now);
    }

    /// No more heartbeats from [`handle_timeout`](Self::handle_timeout).
    pub fn stop_heartbeat(&mut self) {
        self.heartbeat.stop();
    }

    /// Reads a text frame from the server: records HELLO, READY, health and
    /// INFO `s`, and queues the event. Text that is not JSON, or JSON
    /// without an integer `op`, is an error and changes nothing.
    pub fn handle_text(&mut self, now: Instant, text: &str) -> Result<(), SessionError> {
        let event = decode(text)?;
        if let LvspEvent::Message(message) = &event {
            match message {
                ServerMessage::Hello(h) => self.hello = Some(h.clone()),
                ServerMessage::Ready(h) => {
                    self.ready = true;
                    self.health = Some(h.health);
                    self.saw(self.resuming);
                }
                ServerMessage::HeartbeatAck(h) => {
                    self.health = Some(h.health);
                    self.heartbeat.acked(now);
                }
                ServerMessage::Info { s, .. } => self.saw(Some(*s)),
            }
        }
        self.events.push_back(event);
        Ok(())
    }

    /// The server closed the websocket with `code` (None: no close frame,
    /// or the stream ended). Heartbeats stop; a second close is ignored.
    pub fn handle_close(&mut self, code: Option<u16>) {
        if self.closed.is_none() {
            self.closed = Some(code);
            self.heartbeat.stop();
            self.events.push_back(LvspEvent::Closed(code));
        }
    }

    /// The next unread event (INFOs set aside are in
    /// [`queued`](Self::queued), not here).
    pub fn poll_event(&mut self) -> Option<LvspEvent> {
        self.events.pop_front()
    }

    /// What `pick` takes from the first unread message it accepts, for a
    /// helper that waits for one reply; `Ok(None)` when nothing unread is
    /// accepted yet. INFOs it declines are set aside
    /// ([`queued`](Self::queued)), anything else it declines is dropped. A
    /// close is [`SessionError::Closed`], now and on every call after.
    pub fn poll_reply<T>(
        &mut self,
        mut pick: impl FnMut(&ServerMessage) -> Option<T>,
    ) -> Result<Option<T>, SessionError> {
        while let Some(event) = self.events.pop_front() {
            match event {
                LvspEvent::Closed(code) => return Err(SessionError::Closed(code)),
                LvspEvent::Message(m) => {
                    if let Some(t) = pick(&m) {
                        return Ok(Some(t));
                    }
                    if let ServerMessage::Info { s, reply } = m {
                        self.infos.push_back(Info { seq: s, reply });
                    }
                }
                LvspEvent::Other { .. } => {}
            }
        }
        match self.closed {
            Some(code) => Err(SessionError::Closed(code)),
            None => Ok(None),
        }
    }

    /// What `pick` takes from the first INFO it accepts, set aside or
    /// unread (removing it); the others stay or are set aside, as with
    /// [`poll_reply`](Self::poll_reply).
    pub fn poll_info<T>(
        &mut self,
        mut pick: impl FnMut(&Info) -> Option<T>,
    ) -> Result<Option<T>, SessionError> {
        let set_aside = self.infos.iter().enumerate();
        if let Some((i, t)) = set_aside
            .filter_map(|(i, info)| Some((i, pick(info)?)))
            .next()
        {
            self.infos.remove(i);
            return Ok(Some(t));
        }
        self.poll_reply(|m| match m {
            ServerMessage::Info { s, reply } => pick(&Info {
                seq: *s,
                reply: reply.clone(),
            }),
            _ => None,
        })
    }

    /// Records an INFO numbered `s` as seen.
    fn saw(&mut self, s: Option<u64>) {
        self.last_seq = self.last_seq.max(s);
    }
}

impl Session for LvspSession {
    fn handle_frame(&mut self, now: Instant, frame: Frame) -> Result<(), SessionError> {
        match frame {
            Frame::Text(text) => return self.handle_text(now, &text),
            // The server never sends binary; nothing to read in it.
            Frame::Binary(_) => {}
            Frame::Closed(code) => self.handle_close(code),
        }
        Ok(())
    }

    /// The next text frame to send.
    fn poll_transmit(&mut self) -> Option<String> {
        self.transmits.pop_front()
    }

    /// Heartbeats (`d` null) every `interval` from now on, the first one an
    /// interval after `now`, through [`handle_timeout`](Self::handle_timeout).
    fn start_heartbeat(&mut self, now: Instant, interval: Duration) {
        self.heartbeat.start(now, interval);
    }

    /// When [`handle_timeout`](Self::handle_timeout) has something to do:
    /// the next heartbeat, while heartbeating and not closed.
    fn poll_timeout(&self) -> Option<Instant> {
        self.heartbeat.deadline()
    }

    /// Queues a heartbeat if one is due at `now`.
    fn handle_timeout(&mut self, now: Instant) {
        if self.heartbeat.due(now) {
            self.heartbeat(now, None);
        }
    }
}

#[cfg(test)]
mod tests {
    use protocol::lvsp::{Channel, ChannelAssign, Health};
    use protocol::Snowflake;
    use serde_json::json;

    use super::*;

    const HELLO: &str = r#"{"op":0,"d":{"heartbeat_interval":45000,"nonce":"abcdefghij"}}"#;

    fn sent(s: &mut LvspSession) -> Vec<Value> {
        std::iter::from_fn(|| s.poll_transmit())
            .map(|t| serde_json::from_str(&t).expect("json"))
            .collect()
    }

    fn assign(s: u64, channel: &str) -> String {
        json!({"op": 6, "s": s, "d": {"type": 1, "data":
            {"channel_id": channel, "guild_id": null, "token": format!("tok{channel}")}}})
        .to_string()
    }

    #[test]
    fn identify_needs_hello_and_signs_its_nonce() {
        let t0 = Instant::now();
        let mut s = LvspSession::new();
        assert!(matches!(s.identify("k"), Err(SessionError::Protocol(_))));
        assert!(sent(&mut s).is_empty());
        s.handle_text(t0, HELLO).expect("hello");
        assert_eq!(s.heartbeat_interval(), Some(Duration::from_secs(45)));
        s.identify("k").expect("hello came");
        assert_eq!(
            sent(&mut s),
            [json!({"op": 1, "d": {"token": identify_token("k", "abcdefghij")}})]
        );
        assert!(!s.ready());
        s.handle_text(t0, r#"{"op":3,"d":{"health":0.75}}"#)
            .expect("ready");
        assert!(s.ready());
        assert_eq!(s.health(), Some(0.75));
    }

    #[test]
    fn tracks_s_and_resumes_from_it() {
        let t0 = Instant::now();
        let mut s = LvspSession::new();
        s.handle_text(t0, HELLO).expect("hello");
        s.handle_text(t0, &assign(2, "10")).expect("info");
        s.handle_text(t0, &assign(1, "11")).expect("older info");
        assert_eq!(s.last_seq(), Some(2));
        s.handle_close(Some(4000));

        let mut back = s.reconnect();
        assert_eq!(back.last_seq(), Some(2));
        assert!(matches!(back.resume("k"), Err(SessionError::Protocol(_))));
        back.handle_text(
            t0,
            r#"{"op":0,"d":{"heartbeat_interval":1000,"nonce":"0123456789"}}"#,
        )
        .expect("hello");
        assert_eq!(back.resume("k").expect("resume"), 2);
        assert_eq!(
            sent(&mut back),
            [json!({"op": 2, "d": {"token": identify_token("k", "0123456789"), "seq": 2}})]
        );
        // The replay before READY moves it on.
        back.handle_text(t0, &assign(3, "12")).expect("replay");
        back.handle_text(t0, r#"{"op":3,"d":{"health":1.0}}"#)
            .expect("ready");
        assert_eq!(back.last_seq(), Some(3));
    }

    #[test]
    fn a_resume_with_nothing_to_replay_keeps_its_seq() {
        let t0 = Instant::now();
        let mut s = LvspSession::new();
        s.handle_text(t0, HELLO).expect("hello");
        let token = s.token("k").expect("token");
        s.send(ClientMessage::Resume(Resume { token, seq: 9 }));
        assert_eq!(s.last_seq(), None, "not before READY says it worked");
        s.handle_text(t0, r#"{"op":3,"d":{"health":1.0}}"#)
            .expect("ready");
        assert_eq!(s.last_seq(), Some(9));
        assert_eq!(s.reconnect().last_seq(), Some(9));
    }

    #[test]
    fn replies_set_infos_aside() {
        let t0 = Instant::now();
        let mut s = LvspSession::new();
        s.request(Request::ChannelReq(Channel {
            channel_id: Snowflake(10),
            guild_id: None,
        }));
        assert_eq!(
            sent(&mut s),
            [json!({"op": 6, "d": {"type": 0, "data": {"channel_id": "10", "guild_id": null}}})]
        );
        s.handle_text(t0, &assign(1, "99")).expect("info");
        s.handle_text(t0, r#"{"op":42}"#).expect("other");
        s.handle_text(t0, &assign(2, "10")).expect("info");
        let token = |info: &Info| match &info.reply {
            Reply::ChannelAssign(a) if a.channel.channel_id == Snowflake(10) => {
                Some(a.token.clone())
            }
            _ => None,
        };
        assert_eq!(s.poll_info(token).expect("open"), Some("tok10".into()));
        assert_eq!(s.queued().len(), 1);
        assert_eq!(s.poll_info(token).expect("open"), None);
        // A set-aside INFO is found before anything newer.
        s.handle_text(t0, &assign(3, "99")).expect("info");
        let first = s.poll_info(|i| Some(i.seq)).expect("open");
        assert_eq!(first, Some(1));
        assert_eq!(
            s.poll_event(),
            Some(LvspEvent::Message(ServerMessage::Info {
                s: 3,
                reply: Reply::ChannelAssign(ChannelAssign {
                    channel: Channel {
                        channel_id: Snowflake(99),
                        guild_id: None
                    },
                    token: "tok99".into()
                })
            }))
        );
        assert!(matches!(s.handle_text(t0, "{"), Err(SessionError::Json(_))));
        s.handle_close(Some(4002));
        s.handle_close(None);
        assert_eq!(s.poll_event(), Some(LvspEvent::Closed(Some(4002))));
        assert_eq!(s.poll_event(), None);
        assert!(matches!(
            s.poll_reply(|_| Some(())),
            Err(SessionError::Closed(Some(4002)))
        ));
    }

    #[test]
    fn heartbeats_health_and_schedule() {
        let t0 = Instant::now();
        let mut s = LvspSession::new();
        s.heartbeat(t0, None);
        s.heartbeat(t0, Some(0));
        assert_eq!(
            sent(&mut s),
            [json!({"op": 4, "d": null}), json!({"op": 4, "d": {"s": 0}})]
        );
        s.handle_text(
            t0 + Duration::from_millis(12),
            r#"{"op":5,"d":{"health":0.25}}"#,
        )
        .expect("ack");
        assert_eq!(s.health(), Some(0.25));
        assert_eq!(s.rtt(), Some(Duration::from_millis(12)));
        assert_eq!(
            s.poll_reply(|m| match m {
                ServerMessage::HeartbeatAck(Health { health }) => Some(*health),
                _ => None,
            })
            .expect("open"),
            Some(0.25)
        );

        assert_eq!(s.poll_timeout(), None);
        s.start_heartbeat(t0, Duration::from_secs(45));
        let due = s.poll_timeout().expect("armed");
        s.handle_timeout(due);
        assert_eq!(sent(&mut s), [json!({"op": 4, "d": null})]);
        assert_eq!(s.poll_timeout(), Some(due + Duration::from_secs(45)));
        s.stop_heartbeat();
        assert_eq!(s.poll_timeout(), None);
    }

    #[test]
    fn decode_shapes() {
        assert_eq!(
            decode(r#"{"op":0,"d":{"heartbeat_interval":5000,"nonce":"0123456789"}}"#)
                .expect("hello"),
            LvspEvent::Message(ServerMessage::Hello(Hello {
                heartbeat_interval: 5000,
                nonce: "0123456789".into()
            }))
        );
        assert_eq!(
            decode(r#"{"op":5,"d":{"health":0.5}}"#).expect("ack"),
            LvspEvent::Message(ServerMessage::HeartbeatAck(Health { health: 0.5 }))
        );
        assert_eq!(
            decode(r#"{"op":6,"s":7,"d":{"type":1,"data":{"channel_id":"1","token":"t"}}}"#)
                .expect("info"),
            LvspEvent::Message(ServerMessage::Info {
                s: 7,
                reply: Reply::ChannelAssign(ChannelAssign {
                    channel: Channel {
                        channel_id: Snowflake(1),
                        guild_id: None
                    },
                    token: "t".into()
                })
            })
        );
        // An INFO the server does not send, or one missing fields: whole.
        for other in [
            r#"{"op":6,"s":7,"d":{"type":1,"data":{"channel_id":"1"}}}"#,
            r#"{"op":6,"s":7,"d":{"type":3,"data":{}}}"#,
        ] {
            assert!(
                matches!(decode(other), Ok(LvspEvent::Other { op: 6, .. })),
                "{other}"
            );
        }
        assert!(matches!(
            decode(r#"{"op":0,"d":{"heartbeat_interval":"x"}}"#),
            Ok(LvspEvent::Other { op: 0, .. })
        ));
        assert!(matches!(
            decode(r#"{"op":42}"#),
            Ok(LvspEvent::Other { op: 42, .. })
        ));
        assert!(decode("not json").is_err());
        assert!(decode(r#"{"d":1}"#).is_err());
        assert!(decode(r#"[1]"#).is_err());
    }
}
