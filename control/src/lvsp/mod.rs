//! The LVSP server side as a sans-IO state machine (seeds/001, DESIGN.md
//! "LVSP").
//!
//! Feed it decoded websocket frames with [`Connection::handle_text`] and
//! deadlines with [`Connection::handle_timeout`]; take what it wants sent
//! with [`Connection::poll_output`]. Registry changes happen through the
//! `&mut Registry` passed in, whose effects the caller carries out.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use rand::distributions::{Alphanumeric, DistString};
use serde_json::{json, Map, Value};
use sha2::Sha256;

use crate::registry::{Registry, RequestError};
use crate::Output;

/// Close code: general error, reconnect.
pub const CLOSE_GENERAL: u16 = 4000;
/// Close code: authentication failure.
pub const CLOSE_AUTH: u16 = 4001;
/// Close code: the message failed to decode.
pub const CLOSE_DECODE: u16 = 4002;

/// Opcodes.
mod op {
    pub const HELLO: u64 = 0;
    pub const IDENTIFY: u64 = 1;
    pub const RESUME: u64 = 2;
    pub const READY: u64 = 3;
    pub const HEARTBEAT: u64 = 4;
    pub const HEARTBEAT_ACK: u64 = 5;
    pub const INFO: u64 = 6;
}

/// INFO types (spec dialect).
mod info {
    pub const CHANNEL_REQ: u64 = 0;
    pub const CHANNEL_ASSIGN: u64 = 1;
    pub const CHANNEL_DESTROY: u64 = 2;
    pub const VOICE_STATE_CREATE: u64 = 3;
    pub const VOICE_STATE_DONE: u64 = 4;
    pub const VOICE_STATE_DESTROY: u64 = 5;
    pub const VOICE_STATE_UPDATE: u64 = 6;
}

/// LVSP settings shared by every connection.
#[derive(Debug, Clone)]
pub struct Config {
    /// The secret shared with Litecord (key of the IDENTIFY HMAC).
    pub secret: String,
    /// How often the client must heartbeat. Default 10 s.
    pub heartbeat_interval: Duration,
}

/// Why a message was refused: becomes a close frame.
#[derive(Debug)]
struct Refusal {
    code: u16,
    reason: String,
}

fn refuse(code: u16, reason: impl Into<String>) -> Refusal {
    Refusal {
        code,
        reason: reason.into(),
    }
}

type Result<T> = std::result::Result<T, Refusal>;

#[derive(Debug, PartialEq, Eq)]
enum State {
    /// HELLO sent; waiting for IDENTIFY.
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
    nonce: String,
    state: State,
    /// When the connection must next hear from the client.
    deadline: Instant,
    /// Sequence of the last INFO sent.
    seq: u64,
    out: VecDeque<Output>,
}

impl Connection {
    /// A new connection; queues HELLO with a fresh nonce.
    pub fn new(config: Arc<Config>, now: Instant) -> Connection {
        let nonce = Alphanumeric.sample_string(&mut rand::thread_rng(), 10);
        let mut c = Connection {
            deadline: now + grace(config.heartbeat_interval),
            nonce,
            config,
            state: State::Hello,
            seq: 0,
            out: VecDeque::new(),
        };
        let hello = json!({"op": op::HELLO, "d": {
            "heartbeat_interval": c.config.heartbeat_interval.as_millis() as u64,
            "nonce": c.nonce,
        }});
        c.out.push_back(Output::Text(hello.to_string()));
        c
    }

    /// The nonce sent in HELLO.
    pub fn nonce(&self) -> &str {
        &self.nonce
    }

    /// Whether the connection has queued its close.
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// The next thing to send, if any.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// When [`Connection::handle_timeout`] must next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        (self.state != State::Closed).then_some(self.deadline)
    }

    /// Time passes: closes the connection if the client went quiet.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.state != State::Closed && now >= self.deadline {
            self.close(refuse(CLOSE_GENERAL, "heartbeat timeout"));
        }
    }

    /// A binary frame: LVSP is JSON text only.
    pub fn handle_binary(&mut self) {
        self.close(refuse(CLOSE_DECODE, "binary frames are not LVSP"));
    }

    /// A text frame from the client.
    pub fn handle_text(&mut self, now: Instant, text: &str, registry: &mut Registry) {
        if self.state == State::Closed {
            return;
        }
        if let Err(r) = self.dispatch(now, text, registry) {
            self.close(r);
        }
    }

    fn close(&mut self, r: Refusal) {
        if self.state != State::Closed {
            self.state = State::Closed;
            self.out.push_back(Output::Close {
                code: r.code,
                reason: r.reason,
            });
        }
    }

    fn send(&mut self, op: u64, d: Value) {
        self.out
            .push_back(Output::Text(json!({"op": op, "d": d}).to_string()));
    }

    fn send_info(&mut self, kind: u64, data: Value) {
        self.seq += 1;
        let msg = json!({"op": op::INFO, "s": self.seq, "d": {"type": kind, "data": data}});
        self.out.push_back(Output::Text(msg.to_string()));
    }

    fn dispatch(&mut self, now: Instant, text: &str, registry: &mut Registry) -> Result<()> {
        let msg: Value = serde_json::from_str(text)
            .map_err(|e| refuse(CLOSE_DECODE, format!("invalid json: {e}")))?;
        let op = msg
            .get("op")
            .and_then(Value::as_u64)
            .ok_or_else(|| refuse(CLOSE_DECODE, "missing integer op"))?;
        let d = msg.get("d").unwrap_or(&Value::Null);
        match (&self.state, op) {
            (State::Hello, op::IDENTIFY) => {
                let token = field_str(d, "token")?;
                if !self.token_valid(token) {
                    return Err(refuse(CLOSE_AUTH, "authentication failed"));
                }
                self.state = State::Ready;
                self.deadline = now + grace(self.config.heartbeat_interval);
                self.send(op::READY, json!({"health": registry.health()}));
            }
            (State::Hello, op::RESUME) => {
                return Err(refuse(CLOSE_GENERAL, "nothing to resume, identify"));
            }
            (State::Hello, op::HEARTBEAT | op::INFO) => {
                return Err(refuse(CLOSE_GENERAL, "not identified"));
            }
            (State::Ready, op::IDENTIFY | op::RESUME) => {
                return Err(refuse(CLOSE_GENERAL, "already identified"));
            }
            (State::Ready, op::HEARTBEAT) => {
                self.deadline = now + grace(self.config.heartbeat_interval);
                self.send(op::HEARTBEAT_ACK, json!({"health": registry.health()}));
            }
            (State::Ready, op::INFO) => self.handle_info(d, registry)?,
            (_, op::HELLO | op::READY | op::HEARTBEAT_ACK) => {
                return Err(refuse(
                    CLOSE_GENERAL,
                    format!("op {op} is sent by the server"),
                ));
            }
            (_, op) => return Err(refuse(CLOSE_GENERAL, format!("unknown op {op}"))),
        }
        Ok(())
    }

    fn token_valid(&self, token: &str) -> bool {
        let Ok(given) = hex::decode(token) else {
            return false;
        };
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(self.config.secret.as_bytes()) else {
            return false;
        };
        mac.update(self.nonce.as_bytes());
        // verify_slice compares in constant time.
        mac.verify_slice(&given).is_ok()
    }

    fn handle_info(&mut self, d: &Value, registry: &mut Registry) -> Result<()> {
        let kind = d
            .get("type")
            .and_then(Value::as_u64)
            .ok_or_else(|| refuse(CLOSE_DECODE, "INFO without integer type"))?;
        let data = d
            .get("data")
            .filter(|v| v.is_object())
            .ok_or_else(|| refuse(CLOSE_DECODE, "INFO without data object"))?;
        let request = |e: RequestError| match e {
            RequestError::BadSnowflake(_) => refuse(CLOSE_DECODE, e.to_string()),
            RequestError::UnknownChannel(_) => refuse(CLOSE_GENERAL, e.to_string()),
        };
        match kind {
            info::CHANNEL_REQ => {
                let channel_id = field_str(data, "channel_id")?;
                let guild_id = field_opt_str(data, "guild_id")?;
                let a = registry
                    .channel_req(channel_id, guild_id)
                    .map_err(request)?;
                self.send_info(
                    info::CHANNEL_ASSIGN,
                    json!({"channel_id": a.channel_id, "guild_id": a.guild_id, "token": a.token}),
                );
            }
            info::CHANNEL_DESTROY => {
                let channel_id = field_str(data, "channel_id")?;
                field_opt_str(data, "guild_id")?;
                registry.channel_destroy(channel_id);
            }
            info::VOICE_STATE_CREATE => {
                let user_id = field_str(data, "user_id")?;
                let channel_id = field_str(data, "channel_id")?;
                let guild_id = field_opt_str(data, "guild_id")?;
                let session_id = registry
                    .voice_state_create(user_id, channel_id)
                    .map_err(request)?;
                self.send_info(
                    info::VOICE_STATE_DONE,
                    json!({
                        "user_id": user_id,
                        "channel_id": channel_id,
                        "guild_id": guild_id,
                        "session_id": session_id,
                    }),
                );
            }
            info::VOICE_STATE_DESTROY => {
                let user_id = field_str(data, "user_id")?;
                let channel_id = field_str(data, "channel_id")?;
                field_opt_str(data, "guild_id")?;
                registry.voice_state_destroy(user_id, channel_id);
            }
            info::VOICE_STATE_UPDATE => {
                field_str(data, "session_id")?;
            }
            info::CHANNEL_ASSIGN | info::VOICE_STATE_DONE => {
                return Err(refuse(
                    CLOSE_GENERAL,
                    format!("INFO type {kind} is sent by the server"),
                ));
            }
            other => return Err(refuse(CLOSE_GENERAL, format!("unknown INFO type {other}"))),
        }
        Ok(())
    }
}

/// How long past the interval a heartbeat may be late.
fn grace(interval: Duration) -> Duration {
    interval + interval / 2 + Duration::from_secs(1)
}

fn obj(v: &Value) -> Result<&Map<String, Value>> {
    v.as_object()
        .ok_or_else(|| refuse(CLOSE_DECODE, "d must be an object"))
}

/// A required string field (snowflakes are strings: a number is an error).
fn field_str<'a>(v: &'a Value, name: &str) -> Result<&'a str> {
    obj(v)?
        .get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| refuse(CLOSE_DECODE, format!("field {name} must be a string")))
}

/// An optional string field: absent or null is None, anything else an error.
fn field_opt_str<'a>(v: &'a Value, name: &str) -> Result<Option<&'a str>> {
    match obj(v)?.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(refuse(
            CLOSE_DECODE,
            format!("field {name} must be a string or null"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "s3cret";

    fn conn(now: Instant) -> Connection {
        Connection::new(
            Arc::new(Config {
                secret: SECRET.into(),
                heartbeat_interval: Duration::from_millis(1000),
            }),
            now,
        )
    }

    fn texts(c: &mut Connection) -> Vec<Value> {
        let mut v = Vec::new();
        while let Some(o) = c.poll_output() {
            match o {
                Output::Text(t) => v.push(serde_json::from_str(&t).unwrap()),
                Output::Close { code, .. } => v.push(json!({"close": code})),
            }
        }
        v
    }

    fn token(nonce: &str) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
        mac.update(nonce.as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }

    fn identified(now: Instant, r: &mut Registry) -> Connection {
        let mut c = conn(now);
        let hello = texts(&mut c);
        assert_eq!(hello[0]["op"], 0);
        assert_eq!(hello[0]["d"]["heartbeat_interval"], 1000);
        let nonce = hello[0]["d"]["nonce"].as_str().unwrap().to_owned();
        assert_eq!(nonce.len(), 10);
        let id = json!({"op": 1, "d": {"token": token(&nonce)}});
        c.handle_text(now, &id.to_string(), r);
        let ready = texts(&mut c);
        assert_eq!(ready[0]["op"], 3);
        assert!(ready[0]["d"]["health"].as_f64().unwrap() <= 1.0);
        c
    }

    #[test]
    fn nonces_are_fresh() {
        let now = Instant::now();
        assert_ne!(conn(now).nonce(), conn(now).nonce());
    }

    #[test]
    fn identify_heartbeat_and_channel_flow() {
        let now = Instant::now();
        let mut r = Registry::new(2);
        let mut c = identified(now, &mut r);
        c.handle_text(now, r#"{"op":4,"d":null}"#, &mut r);
        assert_eq!(texts(&mut c)[0]["op"], 5);
        // CHANNEL_REQ immediately followed by VOICE_STATE_CREATE.
        c.handle_text(
            now,
            r#"{"op":6,"d":{"type":0,"data":{"channel_id":"100","guild_id":"1"}}}"#,
            &mut r,
        );
        c.handle_text(
            now,
            r#"{"op":6,"d":{"type":3,"data":{"user_id":"7","channel_id":"100","guild_id":"1"}}}"#,
            &mut r,
        );
        let out = texts(&mut c);
        assert_eq!(out[0]["d"]["type"], 1);
        assert_eq!(out[0]["s"], 1);
        assert_eq!(out[0]["d"]["data"]["channel_id"], "100");
        assert_eq!(out[0]["d"]["data"]["token"].as_str().unwrap().len(), 32);
        assert_eq!(out[1]["d"]["type"], 4);
        assert_eq!(out[1]["s"], 2);
        assert_eq!(out[1]["d"]["data"]["user_id"], "7");
        assert_eq!(
            out[1]["d"]["data"]["session_id"].as_str().unwrap().len(),
            32
        );
        // VOICE_STATE_UPDATE: accepted, no reply. Destroys: no reply.
        for m in [
            r#"{"op":6,"d":{"type":6,"data":{"session_id":"x"}}}"#,
            r#"{"op":6,"d":{"type":5,"data":{"user_id":"7","channel_id":"100","guild_id":"1"}}}"#,
            r#"{"op":6,"d":{"type":2,"data":{"channel_id":"100","guild_id":"1"}}}"#,
        ] {
            c.handle_text(now, m, &mut r);
        }
        assert!(texts(&mut c).is_empty());
        assert_eq!(r.channel_count(), 0);
    }

    #[test]
    fn wrong_token_is_4001() {
        let now = Instant::now();
        let mut r = Registry::new(1);
        for bad in ["nothex", "00ff", &token("othernonce")] {
            let mut c = conn(now);
            texts(&mut c);
            let m = json!({"op": 1, "d": {"token": bad}}).to_string();
            c.handle_text(now, &m, &mut r);
            assert_eq!(texts(&mut c), vec![json!({"close": 4001})], "{bad}");
            assert!(c.is_closed());
        }
    }

    #[test]
    fn bad_input_closes_with_documented_codes() {
        let now = Instant::now();
        let cases: &[(&str, u16)] = &[
            ("not json", 4002),
            (r#"{"d":{}}"#, 4002),
            (r#"{"op":"1"}"#, 4002),
            (r#"{"op":99,"d":{}}"#, 4000),
            (r#"{"op":0,"d":{}}"#, 4000),
            (r#"{"op":1,"d":{}}"#, 4000), // second IDENTIFY
            (r#"{"op":6,"d":{"type":42,"data":{}}}"#, 4000),
            (r#"{"op":6,"d":{"type":1,"data":{}}}"#, 4000),
            (r#"{"op":6,"d":{"data":{}}}"#, 4002),
            (r#"{"op":6,"d":{"type":0}}"#, 4002),
            (r#"{"op":6,"d":{"type":0,"data":{"channel_id":100}}}"#, 4002),
            (
                r#"{"op":6,"d":{"type":0,"data":{"channel_id":"x1"}}}"#,
                4002,
            ),
            (
                r#"{"op":6,"d":{"type":3,"data":{"user_id":"1","channel_id":"404"}}}"#,
                4000,
            ),
        ];
        for (msg, code) in cases {
            let mut r = Registry::new(1);
            let mut c = identified(now, &mut r);
            c.handle_text(now, msg, &mut r);
            assert_eq!(texts(&mut c), vec![json!({"close": code})], "{msg}");
            // Closed connections ignore further input.
            c.handle_text(now, r#"{"op":4,"d":null}"#, &mut r);
            assert!(texts(&mut c).is_empty());
        }
    }

    #[test]
    fn messages_before_identify_are_refused() {
        let now = Instant::now();
        let mut r = Registry::new(1);
        let mut c = conn(now);
        texts(&mut c);
        c.handle_text(now, r#"{"op":6,"d":{"type":0,"data":{}}}"#, &mut r);
        assert_eq!(texts(&mut c), vec![json!({"close": 4000})]);
        let mut c = conn(now);
        texts(&mut c);
        c.handle_binary();
        assert_eq!(texts(&mut c), vec![json!({"close": 4002})]);
    }

    #[test]
    fn heartbeat_timeout_closes() {
        let now = Instant::now();
        let mut r = Registry::new(1);
        let mut c = identified(now, &mut r);
        let deadline = c.poll_timeout().unwrap();
        c.handle_timeout(deadline - Duration::from_millis(1));
        assert!(texts(&mut c).is_empty());
        c.handle_text(
            deadline - Duration::from_millis(1),
            r#"{"op":4,"d":{"s":0}}"#,
            &mut r,
        );
        texts(&mut c);
        assert!(c.poll_timeout().unwrap() > deadline);
        let later = c.poll_timeout().unwrap();
        c.handle_timeout(later);
        assert_eq!(texts(&mut c), vec![json!({"close": 4000})]);
        assert_eq!(c.poll_timeout(), None);
    }
}
