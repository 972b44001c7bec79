//! The voice gateway client as a sans-IO state machine: what a client
//! knows about its connection (version, `seq_ack`, heartbeat interval and
//! nonces, SSRC, Ready and Session Description, unread events, close code)
//! and the frames it has to send, with time passed in and no socket.
//!
//! Drive it like quinn-proto's `Connection`: call the message methods
//! ([`identify`](GatewaySession::identify), ...) and the `handle_*` methods
//! as things happen, then drain [`poll_transmit`](GatewaySession::poll_transmit)
//! (text frames to send) and [`poll_event`](GatewaySession::poll_event),
//! and call [`handle_timeout`](GatewaySession::handle_timeout) at
//! [`poll_timeout`](GatewaySession::poll_timeout). [`GatewayClient`]
//! does exactly that over a websocket; a test can do it against the
//! server's state machine with simulated time.
//!
//! [`GatewayClient`]: super::GatewayClient

use std::collections::VecDeque;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use protocol::gateway::{
    ClientMessage, Heartbeat, HeartbeatAck, Identify, Millis, Nonce, Ready, Resume, SelectProtocol,
    SelectProtocolData, ServerMessage, SessionDescription, Speaking, NUMBERED, UDP,
};
use protocol::Snowflake;
use serde_json::Value;

use crate::error::SessionError;
use crate::heartbeat::Schedule;
use crate::ws::{Frame, Session};

/// Something the gateway sent.
#[derive(Debug, Clone, PartialEq)]
pub enum GatewayEvent {
    /// A message.
    Message(ServerMessage),
    /// A JSON message that is none of [`ServerMessage`]'s (an op this
    /// library does not read, or a known one whose data did not decode),
    /// whole.
    Other {
        /// The op.
        op: u64,
        /// The whole message.
        message: Value,
    },
    /// A binary frame (DAVE at v8; see `protocol::gateway::frame`).
    Binary(Vec<u8>),
    /// The server closed the websocket (close code, if any).
    Closed(Option<u16>),
}

/// Decodes a server text frame into the event and its top-level `seq`.
/// Text that is not JSON, or JSON without an integer `op`, is an error.
pub fn decode(text: &str) -> Result<(GatewayEvent, Option<u64>), SessionError> {
    if let Ok((message, seq)) = ServerMessage::decode(text) {
        return Ok((GatewayEvent::Message(message), seq));
    }
    let message: Value = serde_json::from_str(text)?;
    let op = message
        .get("op")
        .and_then(Value::as_u64)
        .ok_or_else(|| SessionError::Protocol(format!("no op in {text}")))?;
    let seq = message.get("seq").and_then(Value::as_u64);
    Ok((GatewayEvent::Other { op, message }, seq))
}

/// A heartbeat interval to run a timer with: between 1 ms and a day.
fn interval(ms: Millis) -> Duration {
    ms.duration()
        .clamp(Duration::from_millis(1), Duration::from_secs(86_400))
}

/// One voice gateway connection, client side, without the connection.
#[derive(Debug, Clone)]
pub struct GatewaySession {
    version: u8,
    /// The highest `seq` seen at v8 (carried over by
    /// [`reconnect`](Self::reconnect)), or -1.
    seq_ack: i64,
    heartbeat_interval: Option<Duration>,
    ready: Option<Ready>,
    session_description: Option<SessionDescription>,
    resumed: bool,
    last_ack: Option<HeartbeatAck>,
    /// Nonces are a wall clock in milliseconds: its reading at this
    /// instant, advanced with `now`.
    clock: (Instant, u64),
    last_nonce: Option<u64>,
    heartbeat: Schedule,
    /// Arrived and not read yet.
    events: VecDeque<GatewayEvent>,
    /// Read by [`poll_reply`](Self::poll_reply) and declined: handed out
    /// by [`poll_event`](Self::poll_event) before anything newer.
    set_aside: VecDeque<GatewayEvent>,
    transmits: VecDeque<String>,
    closed: Option<Option<u16>>,
}

impl GatewaySession {
    /// A session at gateway `version`. `clock_ms` is the wall clock at
    /// `now` in milliseconds since the Unix epoch: heartbeat nonces are
    /// that clock advanced with the `now` they are sent at (timestamps,
    /// like real clients'; the server only echoes them).
    pub fn new(version: u8, now: Instant, clock_ms: u64) -> Self {
        GatewaySession {
            version,
            seq_ack: -1,
            heartbeat_interval: None,
            ready: None,
            session_description: None,
            resumed: false,
            last_ack: None,
            clock: (now, clock_ms),
            last_nonce: None,
            heartbeat: Schedule::default(),
            events: VecDeque::new(),
            set_aside: VecDeque::new(),
            transmits: VecDeque::new(),
            closed: None,
        }
    }

    /// The session for a new websocket after this one's went away: same
    /// version, `seq_ack`, Ready (so the SSRC), Session Description and
    /// nonce clock, for [`resume`](Self::resume); nothing of the old
    /// connection (events, frames not sent, heartbeat schedule, close).
    pub fn reconnect(&self) -> Self {
        GatewaySession {
            seq_ack: self.seq_ack,
            ready: self.ready.clone(),
            session_description: self.session_description.clone(),
            last_nonce: self.last_nonce,
            ..GatewaySession::new(self.version, self.clock.0, self.clock.1)
        }
    }

    /// The gateway version.
    pub fn version(&self) -> u8 {
        self.version
    }

    /// The highest `seq` seen (at v8; below, nothing is numbered), or -1.
    pub fn seq_ack(&self) -> i64 {
        self.seq_ack
    }

    /// The heartbeat interval from Hello (or Ready), once known.
    pub fn heartbeat_interval(&self) -> Option<Duration> {
        self.heartbeat_interval
    }

    /// Ready, once it arrived (on this connection or, after
    /// [`reconnect`](Self::reconnect), the one resumed).
    pub fn ready(&self) -> Option<&Ready> {
        self.ready.as_ref()
    }

    /// Our SSRC, once Ready arrived.
    pub fn ssrc(&self) -> Option<u32> {
        self.ready.as_ref().map(|r| r.ssrc)
    }

    /// Session Description, once it arrived.
    pub fn session_description(&self) -> Option<&SessionDescription> {
        self.session_description.as_ref()
    }

    /// Whether Resumed arrived on this connection.
    pub fn resumed(&self) -> bool {
        self.resumed
    }

    /// The `d` of the last Heartbeat ACK seen.
    pub fn last_heartbeat_ack(&self) -> Option<HeartbeatAck> {
        self.last_ack
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
        self.transmits.push_back(message.encode());
    }

    /// Queues Identify.
    pub fn identify(&mut self, identify: Identify) {
        self.send(ClientMessage::Identify(identify));
    }

    /// Queues Select Protocol over UDP with any mode name (and no address,
    /// if None).
    pub fn select_protocol(&mut self, address: Option<IpAddr>, port: u16, mode: &str) {
        self.send(ClientMessage::SelectProtocol(SelectProtocol {
            protocol: UDP.into(),
            data: SelectProtocolData {
                address,
                port: Some(port),
                mode: mode.into(),
            },
            codecs: None,
        }));
    }

    /// Queues Speaking `{speaking: flags, delay: 0, ssrc}` with our SSRC;
    /// before Ready there is none, which is an error.
    pub fn speaking(&mut self, flags: u32) -> Result<(), SessionError> {
        let ssrc = self
            .ssrc()
            .ok_or_else(|| SessionError::Protocol("Speaking before Ready".into()))?;
        self.speaking_as(flags, 0, ssrc);
        Ok(())
    }

    /// Queues Speaking with any delay and SSRC.
    pub fn speaking_as(&mut self, flags: u32, delay: u32, ssrc: u32) {
        self.send(ClientMessage::Speaking(Speaking {
            speaking: flags,
            delay: Some(delay),
            ssrc: Some(ssrc),
        }));
    }

    /// Queues Resume: at v8 with our `seq_ack`, so the server re-delivers
    /// what came after it; below v8 nothing is numbered and there is none.
    pub fn resume(&mut self, server_id: Snowflake, session_id: &str, token: &str) {
        self.send(ClientMessage::Resume(Resume {
            server_id,
            session_id: session_id.to_owned(),
            token: token.to_owned(),
            seq_ack: (self.version >= NUMBERED).then_some(self.seq_ack),
        }));
    }

    /// Queues one Heartbeat in this version's shape with our `seq_ack`;
    /// returns its nonce, which the ACK echoes. Nonces strictly increase,
    /// so two heartbeats in one millisecond still tell their ACKs apart.
    pub fn heartbeat(&mut self, now: Instant) -> u64 {
        let (origin, clock_ms) = self.clock;
        let elapsed = now.saturating_duration_since(origin).as_millis();
        let clock = clock_ms.saturating_add(u64::try_from(elapsed).unwrap_or(u64::MAX));
        let nonce = clock.max(self.last_nonce.map_or(0, |n| n.saturating_add(1)));
        self.last_nonce = Some(nonce);
        let heartbeat = Heartbeat::new(self.version, Nonce(nonce.into()), self.seq_ack);
        self.send(ClientMessage::Heartbeat(heartbeat));
        self.heartbeat.sent(now);
        nonce
    }

    /// No more heartbeats from [`handle_timeout`](Self::handle_timeout).
    pub fn stop_heartbeat(&mut self) {
        self.heartbeat.stop();
    }

    /// Reads a text frame from the server: records `seq` (at v8), Hello's
    /// interval, Ready, Session Description, Resumed and ACKs, and queues
    /// the event. Text that is not JSON, or JSON without an integer `op`,
    /// is an error and changes nothing.
    pub fn handle_text(&mut self, now: Instant, text: &str) -> Result<(), SessionError> {
        let (event, seq) = decode(text)?;
        if let Some(seq) = seq.and_then(|s| i64::try_from(s).ok()) {
            if self.version >= NUMBERED {
                self.seq_ack = self.seq_ack.max(seq);
            }
        }
        if let GatewayEvent::Message(message) = &event {
            match message {
                ServerMessage::Hello(h) => {
                    self.heartbeat_interval = Some(interval(h.heartbeat_interval));
                }
                ServerMessage::Ready(r) => {
                    if let (None, Some(i)) = (self.heartbeat_interval, r.heartbeat_interval) {
                        self.heartbeat_interval = Some(interval(i));
                    }
                    self.ready = Some(r.clone());
                }
                ServerMessage::SessionDescription(s) => {
                    self.session_description = Some(s.clone());
                }
                ServerMessage::Resumed => self.resumed = true,
                ServerMessage::HeartbeatAck(a) => {
                    self.last_ack = Some(*a);
                    if self.last_nonce.map(|n| Nonce(n.into())) == Some(a.nonce()) {
                        self.heartbeat.acked(now);
                    }
                }
                _ => {}
            }
        }
        self.events.push_back(event);
        Ok(())
    }

    /// Reads a binary frame (DAVE) from the server.
    pub fn handle_binary(&mut self, data: Vec<u8>) {
        self.events.push_back(GatewayEvent::Binary(data));
    }

    /// The server closed the websocket with `code` (None: no close frame,
    /// or the stream ended). Heartbeats stop; a second close is ignored.
    pub fn handle_close(&mut self, code: Option<u16>) {
        if self.closed.is_none() {
            self.closed = Some(code);
            self.heartbeat.stop();
            self.events.push_back(GatewayEvent::Closed(code));
        }
    }

    /// The next event: those a [`poll_reply`](Self::poll_reply) set aside
    /// first, then the unread ones, in order.
    pub fn poll_event(&mut self) -> Option<GatewayEvent> {
        self.set_aside
            .pop_front()
            .or_else(|| self.events.pop_front())
    }

    /// What `pick` takes from the first unread event it accepts (`Ok`), for
    /// a helper that waits for one reply; `Ok(None)` when nothing unread
    /// is accepted yet. Events it declines are set aside for
    /// [`poll_event`](Self::poll_event), except Hello and Heartbeat ACKs,
    /// which the session has recorded already. A close is
    /// [`SessionError::Closed`], now and on every call after.
    pub fn poll_reply<T>(
        &mut self,
        mut pick: impl FnMut(GatewayEvent) -> Result<T, GatewayEvent>,
    ) -> Result<Option<T>, SessionError> {
        while let Some(event) = self.events.pop_front() {
            match pick(event) {
                Ok(t) => return Ok(Some(t)),
                Err(GatewayEvent::Closed(code)) => return Err(SessionError::Closed(code)),
                Err(GatewayEvent::Message(
                    ServerMessage::Hello(_) | ServerMessage::HeartbeatAck(_),
                )) => {}
                Err(event) => self.set_aside.push_back(event),
            }
        }
        match self.closed {
            Some(code) => Err(SessionError::Closed(code)),
            None => Ok(None),
        }
    }
}

impl Session for GatewaySession {
    fn handle_frame(&mut self, now: Instant, frame: Frame) -> Result<(), SessionError> {
        match frame {
            Frame::Text(text) => return self.handle_text(now, &text),
            Frame::Binary(data) => self.handle_binary(data),
            Frame::Closed(code) => self.handle_close(code),
        }
        Ok(())
    }

    /// The next text frame to send.
    fn poll_transmit(&mut self) -> Option<String> {
        self.transmits.pop_front()
    }

    /// Heartbeats every `interval` from now on (the first one an interval
    /// after `now`), through [`handle_timeout`](Self::handle_timeout).
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
            self.heartbeat(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use protocol::gateway::{ClientDisconnect, ClientsConnect, Hello, MemberSpeaking};
    use serde_json::json;

    use super::*;

    const CLOCK: u64 = 1_700_000_000_000;

    fn sent(s: &mut GatewaySession) -> Vec<Value> {
        std::iter::from_fn(|| s.poll_transmit())
            .map(|t| serde_json::from_str(&t).expect("json"))
            .collect()
    }

    fn events(s: &mut GatewaySession) -> Vec<GatewayEvent> {
        std::iter::from_fn(|| s.poll_event()).collect()
    }

    fn ready(ssrc: u32) -> String {
        json!({"op": 2, "seq": 2, "d": {"ssrc": ssrc, "ip": "127.0.0.1", "port": 5000,
            "modes": ["aead_aes256_gcm_rtpsize"]}})
        .to_string()
    }

    #[test]
    fn v8_tracks_seq_ack_and_resumes_with_it() {
        let t0 = Instant::now();
        let mut s = GatewaySession::new(8, t0, CLOCK);
        assert_eq!(s.seq_ack(), -1);
        s.handle_text(t0, r#"{"op":8,"d":{"heartbeat_interval":5000}}"#)
            .expect("hello");
        assert_eq!(s.seq_ack(), -1, "Hello is not numbered");
        s.handle_text(t0, &ready(7)).expect("ready");
        s.handle_text(t0, r#"{"op":11,"seq":5,"d":{"user_ids":["3"]}}"#)
            .expect("connect");
        // Out of order (re-delivered) numbers never lower it.
        s.handle_text(t0, r#"{"op":13,"seq":4,"d":{"user_id":"3"}}"#)
            .expect("disconnect");
        assert_eq!(s.seq_ack(), 5);
        assert_eq!(s.ssrc(), Some(7));
        assert_eq!(s.heartbeat_interval(), Some(Duration::from_secs(5)));

        s.handle_close(Some(4015));
        let mut back = s.reconnect();
        assert_eq!(back.closed(), None);
        assert_eq!(
            back.heartbeat_interval(),
            None,
            "the new socket says Hello again"
        );
        back.resume(Snowflake(1), "sess", "tok");
        assert_eq!(
            sent(&mut back),
            [
                json!({"op": 7, "d": {"server_id": "1", "session_id": "sess",
                "token": "tok", "seq_ack": 5}})
            ]
        );
        back.handle_text(t0, r#"{"op":9,"d":null}"#)
            .expect("resumed");
        back.handle_text(t0, r#"{"op":11,"seq":6,"d":{"user_ids":["4"]}}"#)
            .expect("re-delivered");
        assert!(back.resumed());
        assert_eq!(back.seq_ack(), 6);
        // Speaking works on the resumed socket: the SSRC came along.
        back.speaking(1).expect("ssrc known");
        assert_eq!(
            sent(&mut back),
            [json!({"op": 5, "d": {"speaking": 1, "delay": 0, "ssrc": 7}})]
        );
    }

    #[test]
    fn below_v8_nothing_is_numbered() {
        let t0 = Instant::now();
        let mut s = GatewaySession::new(7, t0, CLOCK);
        s.handle_text(t0, r#"{"op":11,"seq":5,"d":{"user_ids":["3"]}}"#)
            .expect("connect");
        assert_eq!(s.seq_ack(), -1);
        s.resume(Snowflake(1), "sess", "tok");
        assert_eq!(
            sent(&mut s),
            [json!({"op": 7, "d": {"server_id": "1", "session_id": "sess", "token": "tok"}})]
        );
        let nonce = s.heartbeat(t0);
        assert_eq!(sent(&mut s), [json!({"op": 3, "d": nonce})]);
    }

    #[test]
    fn heartbeat_nonces_acks_and_schedule() {
        let t0 = Instant::now();
        let mut s = GatewaySession::new(8, t0, CLOCK);
        assert_eq!(s.poll_timeout(), None, "no heartbeats until started");
        s.handle_text(
            t0,
            r#"{"op":4,"seq":3,"d":{"mode":"aead_aes256_gcm_rtpsize",
            "secret_key":[1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1],
            "dave_protocol_version":0}}"#,
        )
        .expect("session description");
        assert_eq!(s.session_description().map(|d| d.secret_key), Some([1; 32]));

        // Nonces are the clock, and never repeat within a millisecond.
        let later = t0 + Duration::from_millis(250);
        assert_eq!(s.heartbeat(later), CLOCK + 250);
        assert_eq!(s.heartbeat(later), CLOCK + 251);
        assert_eq!(
            sent(&mut s),
            [
                json!({"op": 3, "d": {"t": CLOCK + 250, "seq_ack": 3}}),
                json!({"op": 3, "d": {"t": CLOCK + 251, "seq_ack": 3}}),
            ]
        );
        // An ACK of an older heartbeat is recorded but measures nothing.
        let ack = |t: u64| json!({"op": 6, "d": {"t": t}}).to_string();
        s.handle_text(later, &ack(CLOCK + 250)).expect("ack");
        assert_eq!(s.rtt(), None);
        s.handle_text(later + Duration::from_millis(30), &ack(CLOCK + 251))
            .expect("ack");
        assert_eq!(s.rtt(), Some(Duration::from_millis(30)));
        assert_eq!(
            s.last_heartbeat_ack(),
            Some(HeartbeatAck::Numbered {
                t: Nonce((CLOCK + 251).into())
            })
        );

        s.start_heartbeat(t0, Duration::from_secs(1));
        let due = s.poll_timeout().expect("armed");
        assert_eq!(due, t0 + Duration::from_secs(1));
        s.handle_timeout(due - Duration::from_millis(1));
        assert!(sent(&mut s).is_empty(), "not due yet");
        s.handle_timeout(due);
        assert_eq!(
            sent(&mut s),
            [json!({"op": 3, "d": {"t": CLOCK + 1000, "seq_ack": 3}})]
        );
        assert_eq!(s.poll_timeout(), Some(due + Duration::from_secs(1)));
        s.handle_close(Some(4009));
        assert_eq!(
            s.poll_timeout(),
            None,
            "a closed session stops heartbeating"
        );
    }

    #[test]
    fn replies_set_aside_what_they_decline() {
        let t0 = Instant::now();
        let mut s = GatewaySession::new(8, t0, CLOCK);
        s.identify(Identify {
            server_id: Snowflake(1),
            user_id: Snowflake(2),
            session_id: "s".into(),
            token: "t".into(),
            max_dave_protocol_version: Some(0),
            video: false,
            streams: Vec::new(),
        });
        assert_eq!(sent(&mut s)[0]["op"], 0);
        assert!(matches!(s.speaking(1), Err(SessionError::Protocol(_))));
        let want_ready = |e| match e {
            GatewayEvent::Message(ServerMessage::Ready(r)) => Ok(r.ssrc),
            e => Err(e),
        };
        assert_eq!(s.poll_reply(want_ready).expect("open"), None);
        s.handle_text(t0, r#"{"op":8,"d":{"heartbeat_interval":100}}"#)
            .expect("hello");
        s.handle_text(t0, r#"{"op":11,"seq":1,"d":{"user_ids":["3"]}}"#)
            .expect("connect");
        s.handle_binary(vec![0, 1, 25]);
        s.handle_text(t0, &ready(9)).expect("ready");
        s.handle_text(t0, r#"{"op":99,"d":null}"#).expect("other");
        assert_eq!(s.poll_reply(want_ready).expect("open"), Some(9));
        // Hello was recorded and dropped; the rest wait, in order.
        assert_eq!(
            s.poll_event(),
            Some(GatewayEvent::Message(ServerMessage::ClientsConnect(
                ClientsConnect {
                    user_ids: vec![Snowflake(3)]
                }
            )))
        );
        assert_eq!(s.poll_event(), Some(GatewayEvent::Binary(vec![0, 1, 25])));
        assert!(matches!(
            s.poll_event(),
            Some(GatewayEvent::Other { op: 99, .. })
        ));
        assert_eq!(s.poll_event(), None);

        // Bad text changes nothing.
        assert!(matches!(
            s.handle_text(t0, "nope"),
            Err(SessionError::Json(_))
        ));
        assert!(matches!(
            s.handle_text(t0, r#"{"op":"x","seq":50}"#),
            Err(SessionError::Protocol(_))
        ));
        assert_eq!(s.seq_ack(), 2);
        assert_eq!(s.poll_event(), None);

        s.handle_close(Some(4014));
        s.handle_close(Some(1000));
        assert!(matches!(
            s.poll_reply(want_ready),
            Err(SessionError::Closed(Some(4014)))
        ));
        assert!(matches!(
            s.poll_reply(want_ready),
            Err(SessionError::Closed(Some(4014)))
        ));
        assert_eq!(s.closed(), Some(Some(4014)));
        assert_eq!(events(&mut s), []);
    }

    #[test]
    fn hello_and_ready_intervals() {
        let t0 = Instant::now();
        let mut s = GatewaySession::new(4, t0, CLOCK);
        // An old server: the interval only in Ready.
        s.handle_text(
            t0,
            r#"{"op":2,"d":{"ssrc":1,"ip":"127.0.0.1","port":1,"modes":[],"heartbeat_interval":0}}"#,
        )
        .expect("ready");
        assert_eq!(s.heartbeat_interval(), Some(Duration::from_millis(1)));
        s.handle_text(t0, r#"{"op":8,"d":{"heartbeat_interval":41250.5}}"#)
            .expect("hello");
        assert_eq!(s.heartbeat_interval(), Some(Duration::from_millis(41251)));
        assert_eq!(
            events(&mut s)[1],
            GatewayEvent::Message(ServerMessage::Hello(Hello {
                v: None,
                heartbeat_interval: Millis(41251)
            }))
        );
    }

    #[test]
    fn decode_shapes() {
        let (e, seq) =
            decode(r#"{"op":8,"d":{"heartbeat_interval":41250.5},"seq":3}"#).expect("hello");
        assert_eq!(
            e,
            GatewayEvent::Message(ServerMessage::Hello(Hello {
                v: None,
                heartbeat_interval: Millis(41251)
            }))
        );
        assert_eq!(seq, Some(3));
        let (e, _) =
            decode(r#"{"op":5,"d":{"user_id":"1","ssrc":2,"speaking":1}}"#).expect("speaking");
        assert_eq!(
            e,
            GatewayEvent::Message(ServerMessage::Speaking(MemberSpeaking {
                user_id: Snowflake(1),
                ssrc: 2,
                speaking: 1
            }))
        );
        let (e, _) = decode(r#"{"op":11,"d":{"user_ids":["1","2"]}}"#).expect("connect");
        assert_eq!(
            e,
            GatewayEvent::Message(ServerMessage::ClientsConnect(ClientsConnect {
                user_ids: vec![Snowflake(1), Snowflake(2)]
            }))
        );
        let (e, _) = decode(r#"{"op":13,"d":{"user_id":"1"}}"#).expect("disconnect");
        assert_eq!(
            e,
            GatewayEvent::Message(ServerMessage::ClientDisconnect(ClientDisconnect {
                user_id: Snowflake(1)
            }))
        );
        for other in [
            r#"{"op":18,"d":{}}"#,
            r#"{"op":2,"d":{"ssrc":-1}}"#,
            r#"{"op":4,"d":{"mode":"x","secret_key":[256]}}"#,
            r#"{"op":11,"d":{"user_ids":[-1]}}"#,
            r#"{"op":5,"d":{"ssrc":2,"speaking":1}}"#,
        ] {
            assert!(
                matches!(decode(other), Ok((GatewayEvent::Other { .. }, _))),
                "{other}"
            );
        }
        assert!(decode("nope").is_err());
        assert!(decode(r#"{"op":"x"}"#).is_err());
    }
}
