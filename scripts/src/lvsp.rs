//! LVSP, the Litecord Voice Server Protocol, from the Litecord side
//! (seeds/001 and DESIGN.md "LVSP", spec dialect).
//!
//! The message shapes and encoders are plain functions and types; the
//! [`LvspClient`] drives them over a websocket.
//!
//! ```no_run
//! # async fn demo() -> Result<(), scripts::ClientError> {
//! use scripts::lvsp::LvspClient;
//! let (mut lvsp, ready) = LvspClient::connect("ws://127.0.0.1:5001", "secret").await?;
//! let assign = lvsp.channel_req("100", Some("200")).await?;
//! let state = lvsp.voice_state_create("300", "100", Some("200")).await?;
//! # let _ = (ready, assign, state); Ok(()) }
//! ```

use std::collections::VecDeque;
use std::time::Duration;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::Sha256;

use crate::error::{ClientError, Result};
use crate::ws::{Frame, HeartbeatTask, WsConn, WsWriter};

/// LVSP opcodes.
pub mod op {
    /// server → client: heartbeat interval and nonce.
    pub const HELLO: u64 = 0;
    /// client → server: HMAC token.
    pub const IDENTIFY: u64 = 1;
    /// client → server: token and last seen sequence.
    pub const RESUME: u64 = 2;
    /// server → client: identified, with health.
    pub const READY: u64 = 3;
    /// client → server.
    pub const HEARTBEAT: u64 = 4;
    /// server → client, with health.
    pub const HEARTBEAT_ACK: u64 = 5;
    /// both ways: typed request / reply.
    pub const INFO: u64 = 6;
}

/// INFO types of the spec dialect.
pub mod info_type {
    /// client → server `{channel_id, guild_id}`.
    pub const CHANNEL_REQ: u64 = 0;
    /// server → client `{channel_id, guild_id, token}`.
    pub const CHANNEL_ASSIGN: u64 = 1;
    /// client → server `{channel_id, guild_id}`.
    pub const CHANNEL_DESTROY: u64 = 2;
    /// client → server `{user_id, channel_id, guild_id}`.
    pub const VOICE_STATE_CREATE: u64 = 3;
    /// server → client `{user_id, channel_id, guild_id, session_id}`.
    pub const VOICE_STATE_DONE: u64 = 4;
    /// client → server `{user_id, channel_id, guild_id}`.
    pub const VOICE_STATE_DESTROY: u64 = 5;
    /// `{session_id}`.
    pub const VOICE_STATE_UPDATE: u64 = 6;
}

/// Default time to wait for a reply.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// HELLO data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    /// Heartbeat interval (milliseconds in the spec dialect).
    pub heartbeat_interval: u64,
    /// The nonce IDENTIFY and RESUME sign.
    pub nonce: String,
}

/// READY data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ready {
    /// Server health in [0, 1].
    pub health: f64,
}

/// An INFO message.
#[derive(Debug, Clone, PartialEq)]
pub struct Info {
    /// The INFO type (see [`info_type`]).
    pub kind: u64,
    /// The INFO data.
    pub data: Value,
    /// The top-level `s` of a server INFO.
    pub seq: Option<u64>,
}

/// CHANNEL_ASSIGN data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelAssign {
    /// Channel id.
    pub channel_id: String,
    /// Guild id, `None` for DMs.
    #[serde(default)]
    pub guild_id: Option<String>,
    /// The token voice clients identify with.
    pub token: String,
}

/// VOICE_STATE_DONE data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VoiceStateDone {
    /// User id.
    pub user_id: String,
    /// Channel id.
    pub channel_id: String,
    /// Guild id, `None` for DMs.
    #[serde(default)]
    pub guild_id: Option<String>,
    /// The session id voice clients identify with.
    pub session_id: String,
}

/// Something the server sent.
#[derive(Debug, Clone, PartialEq)]
pub enum LvspEvent {
    /// HELLO.
    Hello(Hello),
    /// READY.
    Ready(Ready),
    /// HEARTBEAT_ACK with its health, if it carried one.
    HeartbeatAck(Option<f64>),
    /// INFO.
    Info(Info),
    /// Any other opcode, or a known one whose data did not parse.
    Other {
        /// The op.
        op: u64,
        /// The whole message.
        message: Value,
    },
    /// The server closed the websocket (close code, if any).
    Closed(Option<u16>),
}

/// The IDENTIFY / RESUME token: lowercase hex of HMAC-SHA256 keyed with
/// the secret over the nonce.
pub fn identify_token(secret: &str, nonce: &str) -> String {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    mac.update(nonce.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// Encodes `{"op": op, "d": d}`.
pub fn encode(op: u64, d: Value) -> String {
    json!({ "op": op, "d": d }).to_string()
}

/// Encodes an INFO.
pub fn encode_info(kind: u64, data: Value) -> String {
    encode(op::INFO, json!({ "type": kind, "data": data }))
}

/// Decodes a server text frame.
pub fn decode(text: &str) -> Result<LvspEvent> {
    let message: Value = serde_json::from_str(text)?;
    let op = message
        .get("op")
        .and_then(Value::as_u64)
        .ok_or_else(|| ClientError::Protocol(format!("no op in {text}")))?;
    let d = message.get("d").cloned().unwrap_or(Value::Null);
    let other = |message: Value| LvspEvent::Other { op, message };
    Ok(match op {
        op::HELLO => match serde_json::from_value(d) {
            Ok(h) => LvspEvent::Hello(h),
            Err(_) => other(message),
        },
        op::READY => match serde_json::from_value(d) {
            Ok(r) => LvspEvent::Ready(r),
            Err(_) => other(message),
        },
        op::HEARTBEAT_ACK => LvspEvent::HeartbeatAck(d.get("health").and_then(Value::as_f64)),
        op::INFO => match d.get("type").and_then(Value::as_u64) {
            Some(kind) => LvspEvent::Info(Info {
                kind,
                data: d.get("data").cloned().unwrap_or(Value::Null),
                seq: message.get("s").and_then(Value::as_u64),
            }),
            None => other(message),
        },
        _ => other(message),
    })
}

/// A Litecord-side LVSP connection.
///
/// Server INFOs that arrive while a call waits for something else are kept
/// in a queue ([`next_info`](Self::next_info), [`queued`](Self::queued)).
#[derive(Debug)]
pub struct LvspClient {
    ws: WsConn,
    hello: Hello,
    queue: VecDeque<Info>,
    last_seq: Option<u64>,
    health: Option<f64>,
    timeout: Duration,
}

impl LvspClient {
    /// Connects and waits for HELLO; does not identify.
    pub async fn open(url: &str) -> Result<Self> {
        let mut ws = WsConn::connect(url).await?;
        let hello = tokio::time::timeout(DEFAULT_TIMEOUT, async {
            loop {
                match ws.recv().await? {
                    Frame::Text(t) => {
                        if let LvspEvent::Hello(h) = decode(&t)? {
                            return Ok(h);
                        }
                    }
                    Frame::Binary(_) => {}
                    Frame::Closed(code) => return Err(ClientError::Closed(code)),
                }
            }
        })
        .await
        .map_err(|_| ClientError::Timeout("LVSP HELLO"))??;
        Ok(LvspClient {
            ws,
            hello,
            queue: VecDeque::new(),
            last_seq: None,
            health: None,
            timeout: DEFAULT_TIMEOUT,
        })
    }

    /// Connects, identifies with `secret` and waits for READY.
    pub async fn connect(url: &str, secret: &str) -> Result<(Self, Ready)> {
        let mut client = Self::open(url).await?;
        let ready = client.identify(secret).await?;
        Ok((client, ready))
    }

    /// Connects and resumes from `seq` with `secret`; the INFOs the server
    /// replays before READY are queued.
    pub async fn resume(url: &str, secret: &str, seq: u64) -> Result<(Self, Ready)> {
        let mut client = Self::open(url).await?;
        let token = identify_token(secret, &client.hello.nonce);
        client.send_resume(&token, seq).await?;
        let ready = client.wait_ready().await?;
        Ok((client, ready))
    }

    /// Sends IDENTIFY with the token for `secret` and waits for READY.
    pub async fn identify(&mut self, secret: &str) -> Result<Ready> {
        let token = identify_token(secret, &self.hello.nonce);
        self.send_identify(&token).await?;
        self.wait_ready().await
    }

    /// Sends IDENTIFY with any token.
    pub async fn send_identify(&self, token: &str) -> Result<()> {
        self.send_text(encode(op::IDENTIFY, json!({ "token": token })))
            .await
    }

    /// Sends RESUME.
    pub async fn send_resume(&self, token: &str, seq: u64) -> Result<()> {
        self.send_text(encode(op::RESUME, json!({ "token": token, "seq": seq })))
            .await
    }

    /// Waits for READY, queueing INFOs (replays) on the way.
    pub async fn wait_ready(&mut self) -> Result<Ready> {
        self.wait("LVSP READY", |e| match e {
            LvspEvent::Ready(r) => Some(r),
            _ => None,
        })
        .await
    }

    /// The HELLO of this connection.
    pub fn hello(&self) -> &Hello {
        &self.hello
    }

    /// The heartbeat interval from HELLO, read as milliseconds.
    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.hello.heartbeat_interval)
    }

    /// How long request helpers wait for their reply (default 10 s).
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// The highest INFO `s` seen (what RESUME sends).
    pub fn last_seq(&self) -> Option<u64> {
        self.last_seq
    }

    /// The latest health from READY or HEARTBEAT_ACK.
    pub fn health(&self) -> Option<f64> {
        self.health
    }

    /// The server INFOs not consumed yet.
    pub fn queued(&self) -> &VecDeque<Info> {
        &self.queue
    }

    /// CHANNEL_REQ, then waits for the CHANNEL_ASSIGN of that channel.
    pub async fn channel_req(
        &mut self,
        channel_id: &str,
        guild_id: Option<&str>,
    ) -> Result<ChannelAssign> {
        self.send_info(
            info_type::CHANNEL_REQ,
            json!({ "channel_id": channel_id, "guild_id": guild_id }),
        )
        .await?;
        let info = self
            .wait_info(|i| {
                i.kind == info_type::CHANNEL_ASSIGN && i.data["channel_id"] == channel_id
            })
            .await?;
        Ok(serde_json::from_value(info.data)?)
    }

    /// VOICE_STATE_CREATE, then waits for the VOICE_STATE_DONE of that user
    /// and channel.
    pub async fn voice_state_create(
        &mut self,
        user_id: &str,
        channel_id: &str,
        guild_id: Option<&str>,
    ) -> Result<VoiceStateDone> {
        self.send_info(
            info_type::VOICE_STATE_CREATE,
            json!({ "user_id": user_id, "channel_id": channel_id, "guild_id": guild_id }),
        )
        .await?;
        let info = self
            .wait_info(|i| {
                i.kind == info_type::VOICE_STATE_DONE
                    && i.data["user_id"] == user_id
                    && i.data["channel_id"] == channel_id
            })
            .await?;
        Ok(serde_json::from_value(info.data)?)
    }

    /// VOICE_STATE_DESTROY (no reply).
    pub async fn voice_state_destroy(
        &self,
        user_id: &str,
        channel_id: &str,
        guild_id: Option<&str>,
    ) -> Result<()> {
        self.send_info(
            info_type::VOICE_STATE_DESTROY,
            json!({ "user_id": user_id, "channel_id": channel_id, "guild_id": guild_id }),
        )
        .await
    }

    /// CHANNEL_DESTROY (no reply).
    pub async fn channel_destroy(&self, channel_id: &str, guild_id: Option<&str>) -> Result<()> {
        self.send_info(
            info_type::CHANNEL_DESTROY,
            json!({ "channel_id": channel_id, "guild_id": guild_id }),
        )
        .await
    }

    /// VOICE_STATE_UPDATE (no reply).
    pub async fn voice_state_update(&self, session_id: &str) -> Result<()> {
        self.send_info(
            info_type::VOICE_STATE_UPDATE,
            json!({ "session_id": session_id }),
        )
        .await
    }

    /// Sends an INFO of any type.
    pub async fn send_info(&self, kind: u64, data: Value) -> Result<()> {
        self.send_text(encode_info(kind, data)).await
    }

    /// The first queued or incoming INFO matching `pred`; others are queued.
    pub async fn wait_info(&mut self, mut pred: impl FnMut(&Info) -> bool) -> Result<Info> {
        if let Some(i) = self.queue.iter().position(&mut pred) {
            if let Some(info) = self.queue.remove(i) {
                return Ok(info);
            }
        }
        self.wait("LVSP INFO", |e| match e {
            LvspEvent::Info(i) if pred(&i) => Some(i),
            _ => None,
        })
        .await
    }

    /// The oldest queued INFO, or the next one to arrive.
    pub async fn next_info(&mut self) -> Result<Info> {
        self.wait_info(|_| true).await
    }

    /// Sends HEARTBEAT with `d: null` and returns the ACK's health.
    pub async fn heartbeat(&mut self) -> Result<Option<f64>> {
        self.send_text(encode(op::HEARTBEAT, Value::Null)).await?;
        self.wait_heartbeat_ack().await
    }

    /// Sends HEARTBEAT with `d: {"s": seq}` and returns the ACK's health.
    pub async fn heartbeat_with_seq(&mut self, seq: u64) -> Result<Option<f64>> {
        self.send_text(encode(op::HEARTBEAT, json!({ "s": seq })))
            .await?;
        self.wait_heartbeat_ack().await
    }

    async fn wait_heartbeat_ack(&mut self) -> Result<Option<f64>> {
        self.wait("LVSP HEARTBEAT_ACK", |e| match e {
            LvspEvent::HeartbeatAck(h) => Some(h),
            _ => None,
        })
        .await
    }

    /// Heartbeats with `d: null` every `interval` in the background until
    /// the returned task is dropped; the ACKs are absorbed by later reads.
    pub fn spawn_heartbeat(&self, interval: Duration) -> HeartbeatTask {
        HeartbeatTask::spawn(self.writer(), interval, || {
            encode(op::HEARTBEAT, Value::Null)
        })
    }

    /// A handle that can send on this connection from another task.
    pub fn writer(&self) -> WsWriter {
        self.ws.writer.clone()
    }

    /// Sends a JSON value as a text frame.
    pub async fn send_json(&self, value: &Value) -> Result<()> {
        self.send_text(value.to_string()).await
    }

    /// Sends any text frame.
    pub async fn send_text(&self, text: String) -> Result<()> {
        self.ws.writer.send_text(text).await
    }

    /// Closes the websocket with `code`.
    pub async fn close(&self, code: u16) -> Result<()> {
        self.ws.writer.close(code).await
    }

    /// The next server message (ignoring the queue), or `Closed` with the
    /// close code. Updates [`last_seq`](Self::last_seq) and
    /// [`health`](Self::health). A frame that is not JSON is an error.
    pub async fn recv(&mut self) -> Result<LvspEvent> {
        loop {
            let event = match self.ws.recv().await? {
                Frame::Text(t) => decode(&t)?,
                Frame::Binary(_) => continue,
                Frame::Closed(code) => LvspEvent::Closed(code),
            };
            match &event {
                LvspEvent::Info(Info { seq: Some(s), .. }) => {
                    self.last_seq = Some(self.last_seq.map_or(*s, |l| l.max(*s)));
                }
                LvspEvent::Ready(r) => self.health = Some(r.health),
                LvspEvent::HeartbeatAck(Some(h)) => self.health = Some(*h),
                _ => {}
            }
            return Ok(event);
        }
    }

    /// [`recv`](Self::recv) with a time limit.
    pub async fn recv_timeout(&mut self, wait: Duration) -> Result<LvspEvent> {
        tokio::time::timeout(wait, self.recv())
            .await
            .map_err(|_| ClientError::Timeout("LVSP message"))?
    }

    /// Reads until `pick` accepts an event; INFOs it declines are queued,
    /// anything else it declines is dropped; a close is an error.
    async fn wait<T>(
        &mut self,
        what: &'static str,
        mut pick: impl FnMut(LvspEvent) -> Option<T>,
    ) -> Result<T> {
        let timeout = self.timeout;
        tokio::time::timeout(timeout, async {
            loop {
                let event = self.recv().await?;
                match event {
                    LvspEvent::Closed(code) => return Err(ClientError::Closed(code)),
                    LvspEvent::Info(i) => {
                        if let Some(t) = pick(LvspEvent::Info(i.clone())) {
                            return Ok(t);
                        }
                        self.queue.push_back(i);
                    }
                    e => {
                        if let Some(t) = pick(e) {
                            return Ok(t);
                        }
                    }
                }
            }
        })
        .await
        .map_err(|_| ClientError::Timeout(what))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::serve;

    /// Independently checked with Python: hmac.new(b"secret",
    /// b"abcdefghij", hashlib.sha256).hexdigest().
    #[test]
    fn token_is_hmac_hex() {
        assert_eq!(identify_token("secret", "abcdefghij"), KAT_TOKEN);
    }

    const KAT_TOKEN: &str = "300343b55c9969253872e8b61104ea1f297a5ebde9118ef0335cffd4aeb2c8c5";

    #[test]
    fn decode_shapes() {
        assert_eq!(
            decode(r#"{"op":0,"d":{"heartbeat_interval":5000,"nonce":"0123456789"}}"#)
                .expect("hello"),
            LvspEvent::Hello(Hello {
                heartbeat_interval: 5000,
                nonce: "0123456789".into()
            })
        );
        assert_eq!(
            decode(r#"{"op":5,"d":{"health":0.5}}"#).expect("ack"),
            LvspEvent::HeartbeatAck(Some(0.5))
        );
        assert_eq!(
            decode(r#"{"op":6,"s":7,"d":{"type":1,"data":{"channel_id":"1"}}}"#).expect("info"),
            LvspEvent::Info(Info {
                kind: 1,
                data: json!({"channel_id": "1"}),
                seq: Some(7)
            })
        );
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

    #[test]
    fn encode_shapes() {
        let v: Value =
            serde_json::from_str(&encode_info(0, json!({"channel_id": "1"}))).expect("json");
        assert_eq!(
            v,
            json!({"op": 6, "d": {"type": 0, "data": {"channel_id": "1"}}})
        );
    }

    #[tokio::test]
    async fn handshake_requests_and_queue() {
        let (url, server) = serve(|mut peer| async move {
            peer.send(json!({"op": 0, "d": {"heartbeat_interval": 45000, "nonce": "abcdefghij"}}))
                .await;
            let identify = peer.recv().await;
            assert_eq!(identify["op"], 1);
            assert_eq!(
                identify["d"]["token"],
                identify_token("secret", "abcdefghij")
            );
            peer.send(json!({"op": 3, "d": {"health": 1.0}})).await;

            let req = peer.recv().await;
            assert_eq!(
                req,
                json!({"op": 6, "d": {"type": 0, "data": {"channel_id": "10", "guild_id": null}}})
            );
            // An unrelated INFO first: it must be queued.
            peer.send(json!({"op": 6, "s": 1, "d": {"type": 1, "data":
                {"channel_id": "99", "guild_id": null, "token": "other"}}}))
                .await;
            peer.send(json!({"op": 6, "s": 2, "d": {"type": 1, "data":
                {"channel_id": "10", "guild_id": null, "token": "tok"}}}))
                .await;

            let create = peer.recv().await;
            assert_eq!(create["d"]["type"], 3);
            assert_eq!(create["d"]["data"]["guild_id"], "20");
            peer.send(
                json!({"op": 6, "s": 3, "d": {"type": 4, "data": {"user_id": "30",
                "channel_id": "10", "guild_id": "20", "session_id": "sess"}}}),
            )
            .await;

            let hb = peer.recv().await;
            assert_eq!(hb, json!({"op": 4, "d": null}));
            peer.send(json!({"op": 5, "d": {"health": 0.25}})).await;

            assert_eq!(peer.recv().await["d"]["type"], 5);
            assert_eq!(peer.recv().await["d"]["type"], 2);
            peer.close(4000).await;
        })
        .await;

        let (mut c, ready) = LvspClient::connect(&url, "secret").await.expect("connect");
        assert_eq!(ready, Ready { health: 1.0 });
        assert_eq!(c.heartbeat_interval(), Duration::from_secs(45));
        let assign = c.channel_req("10", None).await.expect("assign");
        assert_eq!(
            assign,
            ChannelAssign {
                channel_id: "10".into(),
                guild_id: None,
                token: "tok".into()
            }
        );
        assert_eq!(c.queued().len(), 1);
        let done = c
            .voice_state_create("30", "10", Some("20"))
            .await
            .expect("done");
        assert_eq!(done.session_id, "sess");
        assert_eq!(c.last_seq(), Some(3));
        assert_eq!(c.heartbeat().await.expect("ack"), Some(0.25));
        assert_eq!(c.health(), Some(0.25));
        c.voice_state_destroy("30", "10", Some("20"))
            .await
            .expect("send");
        c.channel_destroy("10", Some("20")).await.expect("send");
        assert_eq!(c.next_info().await.expect("queued").data["token"], "other");
        assert_eq!(
            c.recv().await.expect("close"),
            LvspEvent::Closed(Some(4000))
        );
        assert_eq!(
            c.recv().await.expect("close"),
            LvspEvent::Closed(Some(4000))
        );
        server.await.expect("server script");
    }

    #[tokio::test]
    async fn wrong_secret_observes_4001() {
        let (url, server) = serve(|mut peer| async move {
            peer.send(json!({"op": 0, "d": {"heartbeat_interval": 1000, "nonce": "0000000000"}}))
                .await;
            let identify = peer.recv().await;
            assert_ne!(
                identify["d"]["token"],
                identify_token("right", "0000000000")
            );
            peer.close(4001).await;
        })
        .await;
        let r = LvspClient::connect(&url, "wrong").await;
        assert!(matches!(r, Err(ClientError::Closed(Some(4001)))), "{r:?}");
        server.await.expect("server script");
    }

    #[tokio::test]
    async fn garbage_and_resume() {
        let (url, server) = serve(|mut peer| async move {
            peer.send(json!({"op": 0, "d": {"heartbeat_interval": 1000, "nonce": "nnnnnnnnnn"}}))
                .await;
            assert_eq!(peer.recv_text().await, "{garbage");
            let resume = peer.recv().await;
            assert_eq!(
                resume,
                json!({"op": 2, "d": {"token": identify_token("k", "nnnnnnnnnn"), "seq": 4}})
            );
            peer.send(json!({"op": 6, "s": 5, "d": {"type": 4, "data": {}}}))
                .await;
            peer.send(json!({"op": 3, "d": {"health": 0.5}})).await;
            peer.send_raw(tokio_tungstenite::tungstenite::Message::text("nope"))
                .await;
            peer.close(4002).await;
        })
        .await;
        let mut c = LvspClient::open(&url).await.expect("open");
        c.send_text("{garbage".into()).await.expect("send");
        let token = identify_token("k", &c.hello().nonce);
        c.send_resume(&token, 4).await.expect("send");
        assert_eq!(c.wait_ready().await.expect("ready").health, 0.5);
        assert_eq!(c.queued().len(), 1);
        assert_eq!(c.last_seq(), Some(5));
        assert!(matches!(c.recv().await, Err(ClientError::Json(_))));
        assert_eq!(
            c.recv().await.expect("close"),
            LvspEvent::Closed(Some(4002))
        );
        assert!(matches!(
            c.channel_req("1", None).await,
            Err(ClientError::Closed(Some(4002))) | Err(ClientError::WebSocket(_))
        ));
        server.await.expect("server script");
    }
}
