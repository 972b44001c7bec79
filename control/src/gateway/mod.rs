//! The Discord voice gateway, server side, as a sans-IO state machine
//! (seeds/004 "Voice Connections", DESIGN.md "Voice gateway").
//!
//! One [`Connection`] per websocket. Inputs: text frames
//! ([`Connection::handle_text`]), messages from the registry for this
//! connection ([`Connection::handle_push`]) and deadlines
//! ([`Connection::handle_timeout`]); outputs through
//! [`Connection::poll_output`]. Call [`Connection::closed`] once when the
//! socket is gone so the registry forgets the session.

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::RngCore;
use serde_json::{json, Value};
use shared::Mode;

use crate::registry::{ConnId, IdentifyError, Push, Registry};
use crate::Output;

/// Close codes (DESIGN.md "Voice gateway").
pub mod close {
    /// Unknown opcode.
    pub const UNKNOWN_OPCODE: u16 = 4001;
    /// Failed to decode payload.
    pub const DECODE_ERROR: u16 = 4002;
    /// A payload before Identify.
    pub const NOT_AUTHENTICATED: u16 = 4003;
    /// Wrong token, session or ids in Identify.
    pub const AUTHENTICATION_FAILED: u16 = 4004;
    /// A second Identify.
    pub const ALREADY_AUTHENTICATED: u16 = 4005;
    /// Session no longer valid (resume impossible).
    pub const SESSION_INVALID: u16 = 4006;
    /// No heartbeat in time.
    pub const SESSION_TIMEOUT: u16 = 4009;
    /// Unknown protocol in Select Protocol.
    pub const UNKNOWN_PROTOCOL: u16 = 4012;
    /// Channel destroyed or voice state removed.
    pub const DISCONNECTED: u16 = 4014;
    /// Unknown encryption mode.
    pub const UNKNOWN_MODE: u16 = 4016;
}

/// Opcodes.
mod op {
    pub const IDENTIFY: u64 = 0;
    pub const SELECT_PROTOCOL: u64 = 1;
    pub const READY: u64 = 2;
    pub const HEARTBEAT: u64 = 3;
    pub const SESSION_DESCRIPTION: u64 = 4;
    pub const SPEAKING: u64 = 5;
    pub const HEARTBEAT_ACK: u64 = 6;
    pub const RESUME: u64 = 7;
    pub const HELLO: u64 = 8;
    pub const CLIENTS_CONNECT: u64 = 11;
    pub const CLIENT_DISCONNECT: u64 = 13;
}

/// Gateway settings shared by every connection.
#[derive(Debug, Clone)]
pub struct Config {
    /// Heartbeat interval sent in Hello. Default 13.75 s.
    pub heartbeat_interval: Duration,
    /// The IPv4 address announced in Ready (where clients send UDP).
    pub udp_ip: Ipv4Addr,
    /// The UDP port announced in Ready.
    pub udp_port: u16,
}

/// Lowest and highest gateway versions served.
pub const VERSIONS: std::ops::RangeInclusive<u8> = 1..=8;

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

/// The voice state this connection identified as.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Session {
    session_id: String,
    ssrc: u32,
}

/// One voice gateway connection.
#[derive(Debug)]
pub struct Connection {
    config: Arc<Config>,
    conn: ConnId,
    version: u8,
    /// Set by a successful Identify.
    session: Option<Session>,
    /// A close was queued; input is ignored from then on.
    closing: bool,
    deadline: Instant,
    /// Sequence of the last sequenced message sent (v8).
    seq: u64,
    out: VecDeque<Output>,
}

impl Connection {
    /// A new connection at gateway version `version` (1..=8); queues Hello.
    pub fn new(config: Arc<Config>, conn: ConnId, version: u8, now: Instant) -> Connection {
        let mut c = Connection {
            deadline: now + grace(config.heartbeat_interval),
            config,
            conn,
            version,
            session: None,
            closing: false,
            seq: 0,
            out: VecDeque::new(),
        };
        let interval = c.config.heartbeat_interval.as_millis() as u64;
        c.send_unsequenced(
            op::HELLO,
            json!({"v": version, "heartbeat_interval": interval}),
        );
        c
    }

    /// The next thing to send, if any.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// Whether a close was queued.
    pub fn is_closed(&self) -> bool {
        self.closing
    }

    /// The SSRC, once identified.
    pub fn ssrc(&self) -> Option<u32> {
        self.session.as_ref().map(|s| s.ssrc)
    }

    /// When [`Connection::handle_timeout`] must next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        (!self.closing).then_some(self.deadline)
    }

    /// Time passes: 4009 if the client stopped heartbeating.
    pub fn handle_timeout(&mut self, now: Instant) {
        if !self.closing && now >= self.deadline {
            self.close(refuse(close::SESSION_TIMEOUT, "session timeout"));
        }
    }

    /// The socket is gone: the registry forgets this connection's session.
    pub fn closed(&mut self, registry: &mut Registry) {
        if let Some(s) = self.session.take() {
            registry.gateway_closed(&s.session_id, self.conn);
        }
        self.closing = true;
    }

    /// A binary frame. DAVE is negotiated off (`dave_protocol_version: 0`),
    /// so a client has no reason to send one; it is ignored, not fatal.
    pub fn handle_binary(&mut self) {}

    /// A frame over the size limit (the socket layer discarded it).
    pub fn handle_oversized(&mut self) {
        self.close(refuse(close::DECODE_ERROR, "message too large"));
    }

    /// A message from the registry for this connection.
    pub fn handle_push(&mut self, push: Push) {
        if self.closing {
            return;
        }
        match push {
            Push::Speaking {
                user_id,
                ssrc,
                speaking,
            } => self.send(
                op::SPEAKING,
                json!({"user_id": user_id, "ssrc": ssrc, "speaking": speaking}),
            ),
            Push::ClientsConnect { user_ids } => {
                self.send(op::CLIENTS_CONNECT, json!({"user_ids": user_ids}))
            }
            Push::ClientDisconnect { user_id } => {
                self.send(op::CLIENT_DISCONNECT, json!({"user_id": user_id}))
            }
            Push::Close { code, reason } => {
                if code == close::DISCONNECTED || code == close::SESSION_INVALID {
                    // The registry already released (or replaced) the
                    // session: closing must not release it again.
                    self.session = None;
                }
                self.close(refuse(code, reason))
            }
        }
    }

    /// A text frame from the client.
    pub fn handle_text(&mut self, now: Instant, text: &str, registry: &mut Registry) {
        if self.closing {
            return;
        }
        if let Err(r) = self.dispatch(now, text, registry) {
            self.close(r);
        }
    }

    fn close(&mut self, r: Refusal) {
        if !self.closing {
            self.closing = true;
            self.out.push_back(Output::Close {
                code: r.code,
                reason: r.reason,
            });
        }
    }

    /// A message that carries `seq` at v8.
    fn send(&mut self, op: u64, d: Value) {
        let msg = if self.version >= 8 {
            self.seq += 1;
            json!({"op": op, "d": d, "seq": self.seq})
        } else {
            json!({"op": op, "d": d})
        };
        self.out.push_back(Output::Text(msg.to_string()));
    }

    fn send_unsequenced(&mut self, op: u64, d: Value) {
        self.out
            .push_back(Output::Text(json!({"op": op, "d": d}).to_string()));
    }

    fn dispatch(&mut self, now: Instant, text: &str, registry: &mut Registry) -> Result<()> {
        let msg: Value = serde_json::from_str(text)
            .map_err(|e| refuse(close::DECODE_ERROR, format!("invalid json: {e}")))?;
        let op = msg
            .get("op")
            .and_then(Value::as_u64)
            .ok_or_else(|| refuse(close::DECODE_ERROR, "missing integer op"))?;
        let d = msg.get("d").unwrap_or(&Value::Null);
        match op {
            op::HEARTBEAT => self.heartbeat(now, d)?,
            op::IDENTIFY => self.identify(now, d, registry)?,
            op::RESUME => {
                return Err(refuse(close::SESSION_INVALID, "session no longer valid"));
            }
            op::SELECT_PROTOCOL => self.select_protocol(d, registry)?,
            op::SPEAKING => {
                let Some(session) = &self.session else {
                    return Err(refuse(close::NOT_AUTHENTICATED, "not authenticated"));
                };
                let speaking = match d.get("speaking") {
                    Some(Value::Bool(b)) => u32::from(*b),
                    Some(v) => v
                        .as_u64()
                        .and_then(|n| u32::try_from(n).ok())
                        .ok_or_else(|| refuse(close::DECODE_ERROR, "speaking must be flags"))?,
                    None => return Err(refuse(close::DECODE_ERROR, "speaking missing")),
                };
                let session_id = session.session_id.clone();
                registry.speaking(&session_id, self.conn, speaking);
            }
            // Video (12), client flags/platform (14-20) and DAVE (21-31):
            // accepted and ignored while video and DAVE are off.
            10 | 12 | 14..=31 => {}
            other => {
                return Err(refuse(
                    close::UNKNOWN_OPCODE,
                    format!("unknown opcode {other}"),
                ))
            }
        }
        Ok(())
    }

    fn heartbeat(&mut self, now: Instant, d: &Value) -> Result<()> {
        self.deadline = now + grace(self.config.heartbeat_interval);
        let ack = if self.version >= 8 {
            match d.get("t") {
                Some(t) => json!({"t": t}),
                None => d.clone(),
            }
        } else {
            d.clone()
        };
        self.send_unsequenced(op::HEARTBEAT_ACK, ack);
        Ok(())
    }

    fn identify(&mut self, now: Instant, d: &Value, registry: &mut Registry) -> Result<()> {
        if self.session.is_some() {
            return Err(refuse(
                close::ALREADY_AUTHENTICATED,
                "already authenticated",
            ));
        }
        let field = |name: &str| {
            d.get(name)
                .and_then(Value::as_str)
                .ok_or_else(|| refuse(close::DECODE_ERROR, format!("{name} must be a string")))
        };
        let (server_id, user_id) = (field("server_id")?, field("user_id")?);
        let (session_id, token) = (field("session_id")?, field("token")?);
        let identified = registry
            .identify(self.conn, server_id, user_id, session_id, token)
            .map_err(|e| match e {
                IdentifyError::AuthenticationFailed | IdentifyError::BadSnowflake => {
                    refuse(close::AUTHENTICATION_FAILED, "authentication failed")
                }
            })?;
        self.session = Some(Session {
            session_id: session_id.to_owned(),
            ssrc: identified.ssrc,
        });
        self.deadline = now + grace(self.config.heartbeat_interval);
        let modes: Vec<&str> = Mode::ALL.iter().map(|m| m.name()).collect();
        let interval = self.config.heartbeat_interval.as_millis() as u64;
        // Ready goes out before anything the registry queued for us
        // (Clients Connect, Speaking): the caller drains effects after this.
        self.send(
            op::READY,
            json!({
                "ssrc": identified.ssrc,
                "ip": self.config.udp_ip.to_string(),
                "port": self.config.udp_port,
                "modes": modes,
                "heartbeat_interval": interval,
            }),
        );
        Ok(())
    }

    fn select_protocol(&mut self, d: &Value, registry: &mut Registry) -> Result<()> {
        let Some(session) = &self.session else {
            return Err(refuse(close::NOT_AUTHENTICATED, "not authenticated"));
        };
        let protocol = d
            .get("protocol")
            .and_then(Value::as_str)
            .ok_or_else(|| refuse(close::DECODE_ERROR, "protocol must be a string"))?;
        if protocol != "udp" {
            return Err(refuse(
                close::UNKNOWN_PROTOCOL,
                format!("unknown protocol {protocol}"),
            ));
        }
        let data = d
            .get("data")
            .filter(|v| v.is_object())
            .ok_or_else(|| refuse(close::DECODE_ERROR, "data must be an object"))?;
        let mode_name = data
            .get("mode")
            .and_then(Value::as_str)
            .ok_or_else(|| refuse(close::DECODE_ERROR, "mode must be a string"))?;
        let mode = Mode::from_name(mode_name)
            .ok_or_else(|| refuse(close::UNKNOWN_MODE, format!("unknown mode {mode_name}")))?;
        // The declared address is advisory: the data plane uses it only when
        // it matches what IP discovery observed.
        let declared = match (
            data.get("address").and_then(Value::as_str),
            data.get("port").and_then(Value::as_u64),
        ) {
            (Some(a), Some(p)) => a
                .parse::<IpAddr>()
                .ok()
                .zip(u16::try_from(p).ok())
                .map(|(ip, port)| SocketAddr::new(ip, port)),
            _ => None,
        };
        let mut key = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut key);
        let session_id = session.session_id.clone();
        registry.select_protocol(&session_id, mode, key, declared);
        self.send(
            op::SESSION_DESCRIPTION,
            json!({
                "mode": mode.name(),
                "secret_key": key.to_vec(),
                "dave_protocol_version": 0,
            }),
        );
        Ok(())
    }
}

/// How long past the interval a heartbeat may be late.
fn grace(interval: Duration) -> Duration {
    interval + interval / 2 + Duration::from_secs(1)
}

/// The `v` query parameter of the request URI, if any.
pub fn version_from_query(query: Option<&str>) -> Option<u8> {
    query?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == "v")
        .and_then(|(_, v)| v.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Call {
        registry: Registry,
        token: String,
        sessions: Vec<String>,
        now: Instant,
    }

    /// A channel "100" in guild "1" with voice states for users 7, 8, 9.
    fn call() -> Call {
        let mut registry = Registry::new(2);
        let token = registry.channel_req("100", Some("1")).unwrap().token;
        let sessions = ["7", "8", "9"]
            .iter()
            .map(|u| registry.voice_state_create(u, "100").unwrap())
            .collect();
        Call {
            registry,
            token,
            sessions,
            now: Instant::now(),
        }
    }

    fn config() -> Arc<Config> {
        Arc::new(Config {
            heartbeat_interval: Duration::from_millis(1000),
            udp_ip: Ipv4Addr::LOCALHOST,
            udp_port: 5000,
        })
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

    fn identify_msg(call: &Call, user: &str, i: usize) -> String {
        json!({"op": 0, "d": {"server_id": "1", "user_id": user,
            "session_id": call.sessions[i], "token": call.token,
            "max_dave_protocol_version": 0}})
        .to_string()
    }

    fn joined(call: &mut Call, conn: ConnId, version: u8, user: &str, i: usize) -> Connection {
        let mut c = Connection::new(config(), conn, version, call.now);
        let hello = out(&mut c);
        assert_eq!(hello[0]["op"], 8);
        assert_eq!(hello[0]["d"]["heartbeat_interval"], 1000);
        let m = identify_msg(call, user, i);
        c.handle_text(call.now, &m, &mut call.registry);
        let ready = out(&mut c);
        assert_eq!(ready[0]["op"], 2, "{ready:?}");
        assert_eq!(ready[0]["d"]["ip"], "127.0.0.1");
        assert_eq!(ready[0]["d"]["port"], 5000);
        assert_eq!(ready[0]["d"]["modes"][0], "aead_aes256_gcm_rtpsize");
        assert_eq!(ready[0]["d"]["modes"].as_array().unwrap().len(), 5);
        c
    }

    #[test]
    fn identify_select_and_session_description() {
        let mut call = call();
        let mut c = joined(&mut call, 1, 4, "7", 0);
        let ssrc = c.ssrc().unwrap();
        call.registry.drain_effects().for_each(drop);
        c.handle_text(
            call.now,
            r#"{"op":1,"d":{"protocol":"udp","data":{"address":"127.0.0.1","port":4000,"mode":"aead_aes256_gcm_rtpsize"}}}"#,
            &mut call.registry,
        );
        let sd = out(&mut c);
        assert_eq!(sd[0]["op"], 4);
        assert_eq!(sd[0]["d"]["mode"], "aead_aes256_gcm_rtpsize");
        assert_eq!(sd[0]["d"]["dave_protocol_version"], 0);
        let key: Vec<u8> = serde_json::from_value(sd[0]["d"]["secret_key"].clone()).unwrap();
        assert_eq!(key.len(), 32);
        let effects: Vec<_> = call.registry.drain_effects().collect();
        match &effects[..] {
            [crate::registry::Effect::Dataplane {
                command: shared::Command::UpsertSession(s),
                ..
            }] => {
                assert_eq!(s.ssrc, ssrc);
                assert_eq!(s.key.to_vec(), key);
                assert_eq!(s.declared, Some("127.0.0.1:4000".parse().unwrap()));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn heartbeat_shapes_by_version() {
        let mut call = call();
        let mut v4 = joined(&mut call, 1, 4, "7", 0);
        v4.handle_text(
            call.now,
            r#"{"op":3,"d":1501184119561}"#,
            &mut call.registry,
        );
        assert_eq!(out(&mut v4), vec![json!({"op": 6, "d": 1501184119561u64})]);
        let mut v8 = joined(&mut call, 2, 8, "8", 1);
        v8.handle_text(
            call.now,
            r#"{"op":3,"d":{"t":99,"seq_ack":1}}"#,
            &mut call.registry,
        );
        assert_eq!(out(&mut v8), vec![json!({"op": 6, "d": {"t": 99}})]);
    }

    #[test]
    fn v8_messages_carry_seq() {
        let mut call = call();
        let mut c = Connection::new(config(), 1, 8, call.now);
        out(&mut c);
        let m = identify_msg(&call, "7", 0);
        c.handle_text(call.now, &m, &mut call.registry);
        c.handle_push(Push::ClientDisconnect {
            user_id: "8".into(),
        });
        let o = out(&mut c);
        assert_eq!(o[0]["seq"], 1);
        assert_eq!(o[1]["seq"], 2);
    }

    #[test]
    fn close_codes() {
        let cases: &[(&[&str], u16)] = &[
            (&["nope"], close::DECODE_ERROR),
            (&[r#"{"d":1}"#], close::DECODE_ERROR),
            (&[r#"{"op":99,"d":{}}"#], close::UNKNOWN_OPCODE),
            (&[r#"{"op":2,"d":{}}"#], close::UNKNOWN_OPCODE),
            (
                &[r#"{"op":5,"d":{"speaking":1}}"#],
                close::NOT_AUTHENTICATED,
            ),
            (
                &[r#"{"op":1,"d":{"protocol":"udp"}}"#],
                close::NOT_AUTHENTICATED,
            ),
            (&[r#"{"op":0,"d":{"server_id":"1"}}"#], close::DECODE_ERROR),
            (&[r#"{"op":7,"d":{}}"#], close::SESSION_INVALID),
            (
                &[r#"{"op":0,"d":{"server_id":"1","user_id":"7","session_id":"x","token":"y"}}"#],
                close::AUTHENTICATION_FAILED,
            ),
            (&["IDENTIFY", "IDENTIFY"], close::ALREADY_AUTHENTICATED),
            (
                &[
                    "IDENTIFY",
                    r#"{"op":1,"d":{"protocol":"webrtc","data":{}}}"#,
                ],
                close::UNKNOWN_PROTOCOL,
            ),
            (
                &[
                    "IDENTIFY",
                    r#"{"op":1,"d":{"protocol":"udp","data":{"mode":"plain"}}}"#,
                ],
                close::UNKNOWN_MODE,
            ),
        ];
        for (msgs, code) in cases {
            let mut call = call();
            let mut c = Connection::new(config(), 1, 4, call.now);
            out(&mut c);
            for m in *msgs {
                let m = if *m == "IDENTIFY" {
                    identify_msg(&call, "7", 0)
                } else {
                    m.to_string()
                };
                c.handle_text(call.now, &m, &mut call.registry);
            }
            let o = out(&mut c);
            assert_eq!(o.last().unwrap(), &json!({"close": code}), "{msgs:?}");
            assert!(c.is_closed());
            c.closed(&mut call.registry);
            assert_eq!(call.registry.session_count(), 0);
        }
    }

    #[test]
    fn timeout_is_4009_and_ignored_ops_are_not_fatal() {
        let mut call = call();
        let mut c = joined(&mut call, 1, 4, "7", 0);
        for m in [
            r#"{"op":12,"d":{}}"#,
            r#"{"op":16,"d":{}}"#,
            r#"{"op":24,"d":{}}"#,
        ] {
            c.handle_text(call.now, m, &mut call.registry);
        }
        c.handle_binary();
        assert!(out(&mut c).is_empty());
        let deadline = c.poll_timeout().unwrap();
        c.handle_timeout(deadline);
        assert_eq!(out(&mut c), vec![json!({"close": 4009})]);
    }

    #[test]
    fn speaking_reaches_the_others() {
        let mut call = call();
        let mut a = joined(&mut call, 1, 4, "7", 0);
        let _b = joined(&mut call, 2, 4, "8", 1);
        call.registry.drain_effects().for_each(drop);
        a.handle_text(
            call.now,
            &json!({"op":5,"d":{"speaking":1,"delay":0,"ssrc":a.ssrc()}}).to_string(),
            &mut call.registry,
        );
        let effects: Vec<_> = call.registry.drain_effects().collect();
        assert_eq!(
            effects,
            vec![crate::registry::Effect::Gateway {
                conn: 2,
                push: Push::Speaking {
                    user_id: "7".into(),
                    ssrc: a.ssrc().unwrap(),
                    speaking: 1
                }
            }]
        );
    }

    #[test]
    fn version_query() {
        assert_eq!(version_from_query(Some("v=4")), Some(4));
        assert_eq!(version_from_query(Some("encoding=json&v=8")), Some(8));
        assert_eq!(version_from_query(Some("v=x")), None);
        assert_eq!(version_from_query(None), None);
    }
}
