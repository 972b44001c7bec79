//! The LVSP server side as a sans-IO state machine (seeds/001, DESIGN.md
//! "LVSP"). The wire itself (opcodes, close codes, INFO types per dialect,
//! message shapes, the IDENTIFY token) is `protocol::lvsp`.
//!
//! A text frame goes in two steps: [`Protocol::handle_text`] checks the
//! connection's budget and decodes it into an [`Incoming`] without
//! touching shared state (the server calls it outside the registry lock);
//! [`Protocol::handle_incoming`] then acts on it with the registry, the
//! [`Replay`] buffer and the [`AuthGuard`]. Deadlines go in with
//! [`Protocol::handle_timeout`]; take what it wants sent with
//! [`Protocol::poll_output`]. Registry changes queue effects the caller
//! carries out; the INFOs the server sends are numbered and kept in the
//! [`Replay`] buffer shared by every connection, so a RESUME on a new
//! connection re-delivers what the old one may have lost.
//!
//! Before IDENTIFY only small frames ([`PRE_AUTH_MAX_MESSAGE`]) and only
//! IDENTIFY and RESUME are accepted. A wrong token is recorded per peer
//! address in the [`AuthGuard`]: after a few, that address's attempts are
//! refused unchecked for a growing window.
//!
//! Messages of one connection are handled strictly in order, so a
//! CHANNEL_REQ is processed before any later message for that channel
//! (VOICE_STATE_CREATE right behind it included) and its CHANNEL_ASSIGN is
//! sent first.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use protocol::lvsp::{
    token_valid, CloseCode, DecodeError, Health, Hello, Opcode, Reply, Request, ServerMessage,
    VoiceStateDone,
};
use protocol::Envelope;
use rand::distributions::{Alphanumeric, DistString};
use rand::RngCore;

mod backoff;

pub use backoff::{AuthBackoff, AuthGuard, Failure};
pub use protocol::lvsp::ClientMessage as Incoming;
pub use protocol::lvsp::Dialect;

use crate::connection::{grace, refuse, Context, Protocol, Refusal, Result, PRE_AUTH_MAX_MESSAGE};
use crate::limit::Bucket;
pub use crate::limit::RateLimit;
use crate::registry::{Registry, RequestError};
use crate::replay::Numbered;
use crate::Output;

/// The shortest secret the server starts with, in characters: 32 random
/// hex digits (128 bits) is the floor. The generated default is 64.
pub const MIN_SECRET_LEN: usize = 32;

/// LVSP settings shared by every connection.
#[derive(Debug, Clone)]
pub struct Config {
    /// The secret shared with Litecord (key of the IDENTIFY HMAC), at
    /// least [`MIN_SECRET_LEN`] characters.
    pub secret: String,
    /// How often the client must heartbeat. Default 10 s.
    pub heartbeat_interval: Duration,
    /// INFO numbering and heartbeat unit. Default spec.
    pub dialect: Dialect,
    /// Per-connection message budget.
    pub rate: RateLimit,
}

/// The server's numbered INFOs, kept for RESUME. One per server: it
/// outlives connections. Default capacity 4096.
pub type Replay = crate::replay::Replay<Reply>;

#[derive(Debug, PartialEq, Eq)]
enum State {
    /// HELLO sent; waiting for IDENTIFY or RESUME.
    Hello,
    /// Identified; INFOs flow.
    Ready,
    /// A close was queued; everything else is ignored.
    Closed,
}

/// One LVSP connection.
#[derive(Debug)]
pub struct Connection {
    config: Arc<Config>,
    /// Where the connection comes from (failed IDENTIFYs are counted per
    /// address).
    peer: SocketAddr,
    nonce: String,
    state: State,
    /// Whether this connection counts as Litecord being connected.
    up: bool,
    /// When the connection must next hear from the client.
    deadline: Instant,
    bucket: Bucket,
    /// Log lines for refused requests: a burst, then one per second.
    log_budget: Bucket,
    /// Refused requests not logged since the last line.
    unlogged: u64,
    out: VecDeque<Output>,
}

/// How many refused-request lines one connection logs: a burst of ten,
/// then one per second.
const REQUEST_LOG: RateLimit = RateLimit {
    per_second: 1.0,
    burst: 10.0,
};

impl Connection {
    /// A new connection from `peer`; queues HELLO with a nonce drawn from
    /// `rng`.
    pub fn new(
        config: Arc<Config>,
        peer: SocketAddr,
        now: Instant,
        rng: &mut impl RngCore,
    ) -> Connection {
        let nonce = Alphanumeric.sample_string(rng, 10);
        let hello = ServerMessage::Hello(Hello {
            heartbeat_interval: config.dialect.encode_interval(config.heartbeat_interval),
            nonce: nonce.clone(),
        });
        Connection {
            deadline: now + grace(config.heartbeat_interval),
            bucket: Bucket::new(config.rate, now),
            log_budget: Bucket::new(REQUEST_LOG, now),
            unlogged: 0,
            nonce,
            config,
            peer,
            state: State::Hello,
            up: false,
            out: VecDeque::from([Output::Text(hello.encode())]),
        }
    }

    /// The nonce sent in HELLO.
    pub fn nonce(&self) -> &str {
        &self.nonce
    }

    /// Whether the connection has queued its close.
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// Decodes a text frame for this connection's state, without side
    /// effects: the size limit before IDENTIFY, then which ops the state
    /// allows (before `d` is read), then the message's shape.
    pub fn decode(&self, text: &str) -> Result<Incoming> {
        let hello = self.state == State::Hello;
        if hello && text.len() > PRE_AUTH_MAX_MESSAGE {
            return Err(refuse(CloseCode::DecodeError, "message too large"));
        }
        let envelope = Envelope::parse(text).map_err(|e| decode_refusal(e.into()))?;
        match (hello, Opcode::from_code(envelope.op())) {
            (true, Some(Opcode::Heartbeat | Opcode::Info)) => {
                return Err(refuse(CloseCode::General, "not identified"));
            }
            (false, Some(Opcode::Identify | Opcode::Resume)) => {
                return Err(refuse(CloseCode::General, "already identified"));
            }
            _ => {}
        }
        Incoming::from_envelope(&envelope, self.config.dialect).map_err(decode_refusal)
    }

    /// Charges a frame to the budget. Before IDENTIFY a frame past it
    /// closes the connection (4000); once identified the server reads
    /// no faster than the budget ([`Protocol::read_after`]), so the frame
    /// is taken whatever the bucket says. An identified peer that sends
    /// is alive: the heartbeat deadline moves on with every frame (a
    /// heartbeat may wait behind a long burst the server reads slowly).
    /// False when the connection is closed.
    fn charge(&mut self, now: Instant) -> bool {
        let within = self.bucket.take(now);
        match self.state {
            State::Closed => false,
            State::Hello if !within => {
                self.close(refuse(CloseCode::General, "rate limit exceeded"));
                false
            }
            State::Hello => true,
            State::Ready => {
                self.deadline = now + grace(self.config.heartbeat_interval);
                true
            }
        }
    }

    fn close(&mut self, r: Refusal) {
        if self.state != State::Closed {
            self.state = State::Closed;
            self.out.push_back(Output::Close {
                code: r.code,
                reason: r.reason.to_owned(),
            });
        }
    }

    fn send(&mut self, message: ServerMessage) {
        self.out.push_back(Output::Text(message.encode()));
    }

    fn send_info(&mut self, replay: &mut Replay, reply: Reply) {
        let info = replay.push(reply, None);
        self.send_numbered(info);
    }

    fn send_numbered(&mut self, info: Numbered<Reply>) {
        self.send(ServerMessage::Info {
            s: info.seq,
            reply: info.item,
        });
    }

    fn dispatch(
        &mut self,
        now: Instant,
        incoming: Incoming,
        registry: &mut Registry,
        replay: &mut Replay,
        guard: &mut AuthGuard,
    ) -> Result<()> {
        match incoming {
            Incoming::Identify(identify) => {
                self.authenticate(now, &identify.token, guard)?;
                self.ready(now, registry);
            }
            Incoming::Resume(resume) => {
                self.authenticate(now, &resume.token, guard)?;
                let missed = replay
                    .after(resume.seq)
                    .ok_or_else(|| refuse(CloseCode::General, "cannot resume from that seq"))?;
                for info in missed {
                    self.send_numbered(info);
                }
                self.ready(now, registry);
            }
            Incoming::Heartbeat(_) => {
                self.deadline = now + grace(self.config.heartbeat_interval);
                let health = registry.health();
                self.send(ServerMessage::HeartbeatAck(Health { health }));
            }
            Incoming::Info(request) => self.handle_request(now, request, registry, replay),
        }
        Ok(())
    }

    /// Checks an IDENTIFY or RESUME token, unless the peer's address is
    /// backing off after failures (then it is refused unchecked). Failures
    /// are logged with the peer's address, at a bounded rate.
    fn authenticate(&self, now: Instant, token: &str, guard: &mut AuthGuard) -> Result<()> {
        let ip = self.peer.ip();
        if !guard.admit(ip, now) {
            return Err(refuse(
                CloseCode::AuthenticationFailed,
                "too many failed attempts; retry later",
            ));
        }
        if token_valid(&self.config.secret, &self.nonce, token) {
            guard.succeeded(ip);
            return Ok(());
        }
        let failure = guard.failed(ip, now);
        if failure.log {
            tracing::warn!(
                peer = %self.peer,
                failures = failure.failures,
                backoff = ?failure.blocked_for,
                unlogged = failure.unlogged,
                "LVSP authentication failed"
            );
        }
        Err(refuse(
            CloseCode::AuthenticationFailed,
            "authentication failed",
        ))
    }

    fn ready(&mut self, now: Instant, registry: &mut Registry) {
        self.state = State::Ready;
        self.up = true;
        registry.lvsp_up();
        self.deadline = now + grace(self.config.heartbeat_interval);
        let health = registry.health();
        self.send(ServerMessage::Ready(Health { health }));
    }

    /// An INFO request. One that cannot be served (a VOICE_STATE_CREATE
    /// for a channel never requested) is answered with nothing, counted
    /// by the registry and logged at a bounded rate: it concerns that one
    /// request, and every call depends on this connection.
    fn handle_request(
        &mut self,
        now: Instant,
        request: Request,
        registry: &mut Registry,
        replay: &mut Replay,
    ) {
        match request {
            Request::ChannelReq(channel) => {
                let assign = registry.channel_req(channel.channel_id, channel.guild_id, now);
                self.send_info(replay, Reply::ChannelAssign(assign));
            }
            Request::ChannelDestroy(channel) => registry.channel_destroy(channel.channel_id),
            Request::VoiceStateCreate(state) => {
                match registry.voice_state_create(state.user_id, state.channel_id, now) {
                    Ok(session_id) => {
                        let done = VoiceStateDone { state, session_id };
                        self.send_info(replay, Reply::VoiceStateDone(done));
                    }
                    Err(e) => self.request_refused(now, &e),
                }
            }
            Request::VoiceStateDestroy(state) => {
                registry.voice_state_destroy(state.user_id, state.channel_id, now)
            }
            // Accepted without reply (seeds/001 "Updating a voice
            // channel"); neither changes forwarding.
            Request::ChannelUpdate(_) | Request::VoiceStateUpdate(_) => {}
        }
    }

    /// Logs a refused request: ten lines at once, then one a second, each
    /// saying how many went unlogged before it.
    fn request_refused(&mut self, now: Instant, e: &RequestError) {
        if self.log_budget.take(now) {
            let unlogged = std::mem::take(&mut self.unlogged);
            tracing::warn!(peer = %self.peer, error = %e, unlogged, "LVSP request refused");
        } else {
            self.unlogged += 1;
        }
    }
}

impl Protocol for Connection {
    const NAME: &'static str = "lvsp";
    const IDENTIFY_TIMEOUT_CODE: u16 = CloseCode::General as u16;
    const RESTART_CODE: u16 = protocol::GOING_AWAY;
    type Incoming = Incoming;

    /// Whether IDENTIFY or RESUME succeeded (and the connection is open).
    fn is_identified(&self) -> bool {
        self.state == State::Ready
    }

    /// Identified: the peer is Litecord, authenticated, and every call
    /// depends on its link. A burst past the budget is read more slowly
    /// (until the next message's token is there), never closed.
    fn read_after(&self, now: Instant) -> Option<Instant> {
        match self.state {
            State::Ready => self.bucket.ready_at(now),
            State::Hello | State::Closed => None,
        }
    }

    fn handle_ping(&mut self, now: Instant) {
        self.charge(now);
    }

    /// A text frame from the client, step one (no shared state): charges
    /// the connection's budget and decodes the frame. Returns what
    /// [`Protocol::handle_incoming`] must handle, or None (refused, a
    /// close queued).
    fn handle_text(&mut self, now: Instant, text: &str) -> Option<Incoming> {
        if !self.charge(now) {
            return None;
        }
        match self.decode(text) {
            Ok(incoming) => Some(incoming),
            Err(r) => {
                self.close(r);
                None
            }
        }
    }

    /// A decoded message, step two, with the shared state (under its
    /// lock): the registry, the replay buffer and the per-address
    /// authentication guard.
    fn handle_incoming(&mut self, now: Instant, incoming: Incoming, cx: &mut Context) {
        if self.state == State::Closed {
            return;
        }
        let Context {
            registry,
            replay,
            guard,
        } = cx;
        if let Err(r) = self.dispatch(now, incoming, registry, replay, guard) {
            self.close(r);
        }
    }

    /// A binary frame: LVSP is JSON text only.
    fn handle_binary(&mut self, _now: Instant, _bytes: &[u8]) -> Option<Incoming> {
        self.close(refuse(CloseCode::DecodeError, "binary frames are not LVSP"));
        None
    }

    fn handle_oversized(&mut self) {
        self.close(refuse(CloseCode::DecodeError, "message too large"));
    }

    /// Time passes: closes the connection if the client went quiet.
    fn handle_timeout(&mut self, now: Instant) {
        if self.state != State::Closed && now >= self.deadline {
            self.close(refuse(CloseCode::General, "heartbeat timeout"));
        }
    }

    /// The socket is gone: the registry learns Litecord may be away.
    fn closed(&mut self, now: Instant, cx: &mut Context) {
        if std::mem::take(&mut self.up) {
            cx.registry.lvsp_down(now);
        }
        self.state = State::Closed;
    }

    fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        (self.state != State::Closed).then_some(self.deadline)
    }
}

fn decode_refusal(e: DecodeError) -> Refusal {
    refuse(e.close_code(), e.reason())
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use rand::rngs::StdRng;
    use rand::SeedableRng;

    use super::*;

    const SECRET: &str = "s3cret-s3cret-s3cret-s3cret-s3cret";

    /// Where the test's connections come from.
    const PEER: SocketAddr = SocketAddr::new(
        std::net::IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 7)),
        40000,
    );

    /// One LVSP server: the registry, replay buffer and authentication
    /// guard all connections share.
    struct Server {
        cx: Context,
        config: Arc<Config>,
        now: Instant,
        rng: StdRng,
    }

    impl Server {
        fn new(dialect: Dialect) -> Server {
            Server {
                cx: Context {
                    registry: Registry::new(2, StdRng::seed_from_u64(1)),
                    replay: Replay::new(4),
                    guard: AuthGuard::new(AuthBackoff::default()),
                },
                rng: StdRng::seed_from_u64(2),
                config: Arc::new(Config {
                    secret: SECRET.into(),
                    heartbeat_interval: Duration::from_millis(1500),
                    dialect,
                    rate: RateLimit {
                        per_second: 10.0,
                        burst: 20.0,
                    },
                }),
                now: Instant::now(),
            }
        }

        fn connect(&mut self) -> (Connection, String) {
            self.connect_from(PEER)
        }

        fn connect_from(&mut self, peer: SocketAddr) -> (Connection, String) {
            let mut c = Connection::new(self.config.clone(), peer, self.now, &mut self.rng);
            let hello = out(&mut c);
            assert_eq!(hello[0]["op"], 0);
            let nonce = hello[0]["d"]["nonce"].as_str().unwrap().to_owned();
            assert_eq!(nonce.len(), 10);
            (c, nonce)
        }

        fn send(&mut self, c: &mut Connection, msg: &str) -> Vec<Value> {
            if let Some(incoming) = c.handle_text(self.now, msg) {
                c.handle_incoming(self.now, incoming, &mut self.cx);
            }
            out(c)
        }

        fn identified(&mut self) -> Connection {
            let (mut c, nonce) = self.connect();
            let id = json!({"op": 1, "d": {"token": token(&nonce)}}).to_string();
            let ready = self.send(&mut c, &id);
            assert_eq!(ready[0]["op"], 3);
            assert!(ready[0]["d"]["health"].as_f64().unwrap() <= 1.0);
            c
        }
    }

    fn out(c: &mut Connection) -> Vec<Value> {
        let mut v = Vec::new();
        while let Some(o) = c.poll_output() {
            match o {
                Output::Text(t) => v.push(serde_json::from_str(&t).unwrap()),
                Output::Close { code, .. } => v.push(json!({"close": code})),
                Output::Binary(b) => panic!("LVSP sent a binary frame: {b:?}"),
            }
        }
        v
    }

    fn token(nonce: &str) -> String {
        protocol::lvsp::identify_token(SECRET, nonce)
    }

    fn info(t: u64, data: Value) -> String {
        json!({"op": 6, "d": {"type": t, "data": data}}).to_string()
    }

    #[test]
    fn nonces_are_fresh_and_interval_is_in_the_dialects_unit() {
        let mut spec = Server::new(Dialect::Spec);
        let (mut a, na) = spec.connect();
        let (_, nb) = spec.connect();
        assert_ne!(na, nb);
        assert!(out(&mut a).is_empty());
        let hello = |d| {
            let mut rng = StdRng::seed_from_u64(0);
            let mut c = Connection::new(Server::new(d).config, PEER, Instant::now(), &mut rng);
            out(&mut c)[0]["d"]["heartbeat_interval"].clone()
        };
        assert_eq!(hello(Dialect::Spec), 1500);
        assert_eq!(hello(Dialect::Litecord), 2, "seconds, rounded up");
    }

    #[test]
    fn litecord_dialect_numbers() {
        let mut srv = Server::new(Dialect::Litecord);
        let mut c = srv.identified();
        // Litecord's heartbeat carries {"s": 0}.
        assert_eq!(srv.send(&mut c, r#"{"op":4,"d":{"s":0}}"#)[0]["op"], 5);
        let a = srv.send(&mut c, &info(0, json!({"channel_id":"100","guild_id":"1"})));
        assert_eq!(a[0]["d"]["type"], 1);
        let done = srv.send(
            &mut c,
            &info(4, json!({"user_id":"7","channel_id":"100","guild_id":"1"})),
        );
        assert_eq!(done[0]["d"]["type"], 4);
        assert!(done[0]["d"]["data"]["session_id"].is_string());
        // CHANNEL_UPDATE (2) and VST_UPDATE (5): accepted, no reply.
        assert!(srv
            .send(&mut c, &info(2, json!({"channel_id":"100","guild_id":"1"})))
            .is_empty());
        assert!(srv
            .send(&mut c, &info(5, json!({"user_id":"7","channel_id":"100"})))
            .is_empty());
        assert_eq!(srv.cx.registry.voice_state_count(), 1);
        // VST_LEAVE (6) removes the state, CHANNEL_DESTROY (3) the channel.
        assert!(srv
            .send(
                &mut c,
                &info(6, json!({"user_id":"7","channel_id":"100","guild_id":"1"}))
            )
            .is_empty());
        assert_eq!(srv.cx.registry.voice_state_count(), 0);
        assert!(srv
            .send(&mut c, &info(3, json!({"channel_id":"100","guild_id":"1"})))
            .is_empty());
        assert_eq!(srv.cx.registry.channel_count(), 0);
        // 7 is no INFO type in either dialect.
        assert_eq!(
            srv.send(&mut c, &info(7, json!({}))),
            vec![json!({"close": 4000})]
        );
    }

    #[test]
    fn bad_input_closes_with_documented_codes() {
        let cases: &[(&str, u16)] = &[
            ("not json", 4002),
            ("[1,2]", 4002),
            (r#"{"d":{}}"#, 4002),
            (r#"{"op":"1"}"#, 4002),
            (r#"{"op":-1}"#, 4002),
            (r#"{"op":99,"d":{}}"#, 4000),
            (r#"{"op":0,"d":{}}"#, 4000),
            (r#"{"op":3,"d":{}}"#, 4000),
            (r#"{"op":5,"d":{}}"#, 4000),
            (r#"{"op":1,"d":{}}"#, 4000), // second IDENTIFY
            (r#"{"op":2,"d":{}}"#, 4000), // RESUME when identified
            (r#"{"op":4,"d":5}"#, 4002),
            (r#"{"op":6,"d":{"type":42,"data":{}}}"#, 4000),
            (r#"{"op":6,"d":{"type":1,"data":{}}}"#, 4000),
            (r#"{"op":6,"d":{"type":4,"data":{}}}"#, 4000),
            (r#"{"op":6,"d":{"data":{}}}"#, 4002),
            (r#"{"op":6,"d":{"type":"0","data":{}}}"#, 4002),
            (r#"{"op":6,"d":{"type":0}}"#, 4002),
            (r#"{"op":6,"d":{"type":0,"data":[]}}"#, 4002),
            (r#"{"op":6,"d":null}"#, 4002),
            (r#"{"op":6,"d":{"type":0,"data":{"channel_id":100}}}"#, 4002),
            (
                r#"{"op":6,"d":{"type":0,"data":{"channel_id":"x1"}}}"#,
                4002,
            ),
            (
                r#"{"op":6,"d":{"type":0,"data":{"channel_id":"1","guild_id":1}}}"#,
                4002,
            ),
            (
                r#"{"op":6,"d":{"type":3,"data":{"user_id":1,"channel_id":"1"}}}"#,
                4002,
            ),
            (r#"{"op":6,"d":{"type":3,"data":{"user_id":"1"}}}"#, 4002),
            (r#"{"op":6,"d":{"type":5,"data":{"channel_id":"1"}}}"#, 4002),
            (r#"{"op":6,"d":{"type":6,"data":{}}}"#, 4002),
        ];
        for (msg, code) in cases {
            let mut srv = Server::new(Dialect::Spec);
            let mut c = srv.identified();
            assert_eq!(srv.send(&mut c, msg), vec![json!({"close": code})], "{msg}");
            // Closed connections ignore further input.
            assert!(srv.send(&mut c, r#"{"op":4,"d":null}"#).is_empty());
        }
    }

    #[test]
    fn floods_before_identify_hit_the_rate_limit() {
        let mut srv = Server::new(Dialect::Spec);
        let (mut c, _) = srv.connect();
        for _ in 0..20 {
            c.handle_ping(srv.now);
            assert_eq!(
                c.read_after(srv.now),
                None,
                "unidentified: never waited for"
            );
        }
        assert!(out(&mut c).is_empty(), "a burst of 20");
        c.handle_ping(srv.now);
        assert_eq!(out(&mut c), vec![json!({"close": 4000})]);
        // The budget refills with time: 10 per second.
        let mut srv = Server::new(Dialect::Spec);
        let mut c = srv.identified();
        for i in 0..200 {
            srv.now += Duration::from_millis(100);
            assert_eq!(c.read_after(srv.now), None);
            let o = srv.send(&mut c, r#"{"op":4,"d":null}"#);
            assert_eq!(o[0]["op"], 5, "message {i} at the sustained rate");
        }
    }

    /// Litecord is authenticated and every call depends on its link: past
    /// its budget the server reads more slowly (the caller waits until
    /// `read_after`), and a burst that outlasts the heartbeat grace keeps
    /// the link alive.
    #[test]
    fn identified_bursts_are_read_slowly_never_closed() {
        let mut srv = Server::new(Dialect::Spec);
        let mut c = srv.identified(); // 1 of the burst of 20
        srv.send(&mut c, &info(0, json!({"channel_id":"100","guild_id":"1"})));
        let start = srv.now;
        let mut waits = 0;
        // 400 creates at 10 per second: 40 s, well past the grace of a
        // 1.5 s heartbeat interval, with no heartbeat in between.
        for user in 0..400 {
            if let Some(at) = c.read_after(srv.now) {
                assert!(at > srv.now);
                waits += 1;
                srv.now = at;
                c.handle_timeout(srv.now);
            }
            assert_eq!(c.read_after(srv.now), None);
            let create = info(
                3,
                json!({"user_id": (1000 + user).to_string(), "channel_id":"100"}),
            );
            let o = srv.send(&mut c, &create);
            assert_eq!(o.len(), 1, "{o:?}");
            assert_eq!(o[0]["d"]["type"], 4, "VOICE_STATE_DONE");
        }
        assert!(!c.is_closed());
        assert_eq!(waits, 400 - 18);
        let took = srv.now - start;
        assert!(
            took > Duration::from_secs(38) && took < Duration::from_secs(39),
            "{took:?}"
        );
        assert_eq!(srv.cx.registry.voice_state_count(), 400);
    }

    /// A request that cannot be served is answered with nothing and
    /// counted; the connection stays.
    #[test]
    fn request_errors_keep_the_connection() {
        let mut srv = Server::new(Dialect::Spec);
        let mut c = srv.identified();
        for i in 0..15 {
            let create = info(
                3,
                json!({"user_id": "1", "channel_id": (400 + i).to_string()}),
            );
            assert!(srv.send(&mut c, &create).is_empty());
        }
        assert_eq!(c.unlogged, 5, "ten lines at once, then one a second");
        assert_eq!(srv.cx.registry.request_errors("unknown_channel"), 15);
        assert!(!c.is_closed());
        assert_eq!(srv.send(&mut c, r#"{"op":4,"d":null}"#)[0]["op"], 5);
        let o = srv.send(&mut c, &info(0, json!({"channel_id":"404"})));
        assert_eq!(o[0]["d"]["type"], 1);
        let o = srv.send(
            &mut c,
            &info(3, json!({"user_id": "1", "channel_id": "404"})),
        );
        assert_eq!(o[0]["d"]["type"], 4);
    }

    #[test]
    fn before_identify_only_small_identify_or_resume() {
        let mut srv = Server::new(Dialect::Spec);
        let (mut c, nonce) = srv.connect();
        let pad = "x".repeat(PRE_AUTH_MAX_MESSAGE);
        let big = json!({"op": 1, "d": {"token": token(&nonce), "pad": pad}}).to_string();
        assert_eq!(srv.send(&mut c, &big), vec![json!({"close": 4002})]);
        assert_eq!(srv.cx.guard.failures_total(), 0, "not even looked at");
        // After READY, larger frames are fine (up to the socket's limit).
        let mut c = srv.identified();
        let big_info = info(
            0,
            json!({"channel_id": "100", "guild_id": "1", "pad": "y".repeat(8000)}),
        );
        assert_eq!(srv.send(&mut c, &big_info)[0]["d"]["type"], 1);
    }

    #[test]
    fn failed_identifies_back_off_per_address() {
        let mut srv = Server::new(Dialect::Spec);
        let attacker: SocketAddr = "198.51.100.9:5000".parse().unwrap();
        let wrong = |_: &str| json!({"op": 1, "d": {"token": "00".repeat(32)}}).to_string();
        for _ in 0..4 {
            let (mut c, nonce) = srv.connect_from(attacker);
            assert_eq!(
                srv.send(&mut c, &wrong(&nonce)),
                vec![json!({"close": 4001})]
            );
        }
        assert_eq!(srv.cx.guard.failures_total(), 4);
        // Now even the right token from that address is refused unchecked.
        let (mut c, nonce) = srv.connect_from(attacker);
        let right = json!({"op": 1, "d": {"token": token(&nonce)}}).to_string();
        assert_eq!(srv.send(&mut c, &right), vec![json!({"close": 4001})]);
        assert_eq!(srv.cx.guard.refused_total(), 1);
        let (mut r, nonce) = srv.connect_from(attacker);
        let resume = json!({"op": 2, "d": {"token": token(&nonce), "seq": 0}}).to_string();
        assert_eq!(srv.send(&mut r, &resume), vec![json!({"close": 4001})]);
        assert_eq!(srv.cx.guard.failures_total(), 4, "refusals are not checks");
        // Litecord, elsewhere, is not affected.
        let _litecord = srv.identified();
        // After the window (1 s for the first failure past the free ones)
        // the attacker's address may try again; success forgets it.
        srv.now += Duration::from_secs(1);
        let (mut c, nonce) = srv.connect_from(attacker);
        let right = json!({"op": 1, "d": {"token": token(&nonce)}}).to_string();
        assert_eq!(srv.send(&mut c, &right)[0]["op"], 3);
        assert_eq!(srv.cx.guard.tracked(), 0);
    }

    #[test]
    fn close_reasons_never_echo_client_text() {
        let cases = [
            r#"{"op":6,"d":{"type":0,"data":{"channel_id":"EVIL"}}}"#,
            r#"{"op":6,"d":{"type":3,"data":{"user_id":"1","channel_id":"404EVIL"}}}"#,
            r#"{"op":6,"d":{"type":77,"data":{"EVIL":1}}}"#,
            r#"{"op":"EVIL"}"#,
            r#"EVIL"#,
            r#"{"op":12345,"d":"EVIL"}"#,
        ];
        for m in cases {
            let mut srv = Server::new(Dialect::Spec);
            let mut c = srv.identified();
            if let Some(incoming) = c.handle_text(srv.now, m) {
                c.handle_incoming(srv.now, incoming, &mut srv.cx);
            }
            let close = std::iter::from_fn(|| c.poll_output()).find_map(|o| match o {
                Output::Close { reason, .. } => Some(reason),
                Output::Text(_) | Output::Binary(_) => None,
            });
            let reason = close.expect("closed");
            assert!(
                !reason.contains("EVIL") && !reason.contains("404") && !reason.contains("12345"),
                "{reason:?} for {m}"
            );
        }
    }
}
