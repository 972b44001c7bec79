//! LVSP, the Litecord Voice Server Protocol, from the Litecord side
//! (seeds/001 and DESIGN.md "LVSP", spec dialect).
//!
//! The messages are the `protocol` crate's ([`protocol::lvsp`]); the
//! protocol state is a sans-IO [`LvspSession`] ([`session`]), which
//! [`LvspClient`] drives over a websocket; [`encode_info`] builds any INFO
//! for tests that send what a well-behaved Litecord would not.
//!
//! ```no_run
//! # async fn demo() -> Result<(), scripts::ClientError> {
//! use scripts::lvsp::LvspClient;
//! let (mut lvsp, ready) = LvspClient::connect("ws://127.0.0.1:5001", "secret").await?;
//! let assign = lvsp.channel_req("100", Some("200")).await?;
//! let state = lvsp.voice_state_create("300", "100", Some("200")).await?;
//! # let _ = (ready, assign, state); Ok(()) }
//! ```

pub mod session;

use std::collections::VecDeque;
use std::time::{Duration, Instant};

pub use protocol::lvsp::{
    identify_token, ChannelAssign, Dialect, Health, Hello, Reply, ServerMessage, VoiceStateDone,
};
use protocol::lvsp::{Channel, ClientMessage, Identify, Opcode, Request, Resume, VoiceState};
use protocol::Snowflake;
use serde_json::{json, Value};

use crate::error::{ClientError, Result};
use crate::ws::Link;
pub use session::{decode, Info, LvspEvent, LvspSession};

/// Default time to wait for a reply.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// An INFO of any type number with any data, for tests that send what a
/// well-behaved client would not (or another dialect's numbers).
pub fn encode_info(kind: u64, data: Value) -> String {
    json!({ "op": Opcode::Info as u8, "d": { "type": kind, "data": data } }).to_string()
}

/// A snowflake given as a string.
fn snowflake(id: &str) -> Result<Snowflake> {
    id.parse()
        .map_err(|_| ClientError::Protocol(format!("{id:?} is not a snowflake")))
}

fn channel(channel_id: &str, guild_id: Option<&str>) -> Result<Channel> {
    Ok(Channel {
        channel_id: snowflake(channel_id)?,
        guild_id: guild_id.map(snowflake).transpose()?,
    })
}

fn voice_state(user_id: &str, channel_id: &str, guild_id: Option<&str>) -> Result<VoiceState> {
    Ok(VoiceState {
        user_id: snowflake(user_id)?,
        channel_id: snowflake(channel_id)?,
        guild_id: guild_id.map(snowflake).transpose()?,
    })
}

/// A Litecord-side LVSP connection.
///
/// Server INFOs that arrive while a call waits for something else are kept
/// in a queue ([`next_info`](Self::next_info), [`queued`](Self::queued)).
#[derive(Debug)]
pub struct LvspClient {
    link: Link<LvspSession>,
    hello: Hello,
}

impl std::ops::Deref for LvspClient {
    type Target = Link<LvspSession>;

    fn deref(&self) -> &Self::Target {
        &self.link
    }
}

impl std::ops::DerefMut for LvspClient {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.link
    }
}

impl LvspClient {
    /// Connects and waits for HELLO; does not identify.
    pub async fn open(url: &str) -> Result<Self> {
        let mut link = Link::connect(url, LvspSession::new(), DEFAULT_TIMEOUT).await?;
        let hello = link
            .wait("LVSP HELLO", |s| {
                s.poll_reply(|m| match m {
                    ServerMessage::Hello(h) => Some(h.clone()),
                    _ => None,
                })
            })
            .await?;
        Ok(LvspClient { link, hello })
    }

    /// Connects, identifies with `secret` and waits for READY.
    pub async fn connect(url: &str, secret: &str) -> Result<(Self, Health)> {
        let mut client = Self::open(url).await?;
        let ready = client.identify(secret).await?;
        Ok((client, ready))
    }

    /// Connects and resumes from `seq` with `secret`; the INFOs the server
    /// replays before READY are queued.
    pub async fn resume(url: &str, secret: &str, seq: u64) -> Result<(Self, Health)> {
        let mut client = Self::open(url).await?;
        let token = identify_token(secret, &client.hello.nonce);
        client.send_resume(&token, seq).await?;
        let ready = client.wait_ready().await?;
        Ok((client, ready))
    }

    /// Sends IDENTIFY with the token for `secret` and waits for READY.
    pub async fn identify(&mut self, secret: &str) -> Result<Health> {
        self.link.act(|s| s.identify(secret)).await??;
        self.wait_ready().await
    }

    /// Sends IDENTIFY with any token.
    pub async fn send_identify(&self, token: &str) -> Result<()> {
        let token = token.to_owned();
        self.send(ClientMessage::Identify(Identify { token })).await
    }

    /// Sends RESUME.
    pub async fn send_resume(&self, token: &str, seq: u64) -> Result<()> {
        let token = token.to_owned();
        self.send(ClientMessage::Resume(Resume { token, seq }))
            .await
    }

    /// Waits for READY, queueing INFOs (replays) on the way.
    pub async fn wait_ready(&mut self) -> Result<Health> {
        self.wait("LVSP READY", |e| match e {
            ServerMessage::Ready(r) => Some(*r),
            _ => None,
        })
        .await
    }

    /// The HELLO of this connection.
    pub fn hello(&self) -> &Hello {
        &self.hello
    }

    /// The heartbeat interval from HELLO, read as milliseconds (the spec
    /// dialect's unit).
    pub fn heartbeat_interval(&self) -> Duration {
        session::DIALECT.decode_interval(self.hello.heartbeat_interval)
    }

    /// The highest INFO `s` seen (what RESUME sends).
    pub fn last_seq(&self) -> Option<u64> {
        self.link.with(|s| s.last_seq())
    }

    /// The latest health from READY or HEARTBEAT_ACK.
    pub fn health(&self) -> Option<f64> {
        self.link.with(|s| s.health())
    }

    /// The server INFOs not consumed yet (a copy).
    pub fn queued(&self) -> VecDeque<Info> {
        self.link.with(|s| s.queued().clone())
    }

    /// CHANNEL_REQ, then waits for the CHANNEL_ASSIGN of that channel.
    pub async fn channel_req(
        &mut self,
        channel_id: &str,
        guild_id: Option<&str>,
    ) -> Result<ChannelAssign> {
        let req = channel(channel_id, guild_id)?;
        self.send_request(Request::ChannelReq(req)).await?;
        self.wait_reply(|r| match r {
            Reply::ChannelAssign(a) if a.channel.channel_id == req.channel_id => Some(a.clone()),
            _ => None,
        })
        .await
    }

    /// VOICE_STATE_CREATE, then waits for the VOICE_STATE_DONE of that user
    /// and channel.
    pub async fn voice_state_create(
        &mut self,
        user_id: &str,
        channel_id: &str,
        guild_id: Option<&str>,
    ) -> Result<VoiceStateDone> {
        let state = voice_state(user_id, channel_id, guild_id)?;
        self.send_request(Request::VoiceStateCreate(state)).await?;
        let (user, channel) = (state.user_id, state.channel_id);
        self.wait_reply(|r| match r {
            Reply::VoiceStateDone(d)
                if (d.state.user_id, d.state.channel_id) == (user, channel) =>
            {
                Some(d.clone())
            }
            _ => None,
        })
        .await
    }

    /// VOICE_STATE_DESTROY (no reply).
    pub async fn voice_state_destroy(
        &self,
        user_id: &str,
        channel_id: &str,
        guild_id: Option<&str>,
    ) -> Result<()> {
        let state = voice_state(user_id, channel_id, guild_id)?;
        self.send_request(Request::VoiceStateDestroy(state)).await
    }

    /// CHANNEL_DESTROY (no reply).
    pub async fn channel_destroy(&self, channel_id: &str, guild_id: Option<&str>) -> Result<()> {
        let req = channel(channel_id, guild_id)?;
        self.send_request(Request::ChannelDestroy(req)).await
    }

    /// Sends an INFO request.
    pub async fn send_request(&self, request: Request) -> Result<()> {
        self.link.act(|s| s.request(request)).await
    }

    /// What `pick` takes from the first queued or incoming INFO it
    /// accepts; the others are queued.
    pub async fn wait_info<T>(&mut self, mut pick: impl FnMut(&Info) -> Option<T>) -> Result<T> {
        self.link
            .wait("LVSP INFO", |s| s.poll_info(&mut pick))
            .await
    }

    /// [`wait_info`](Self::wait_info) by the INFO's reply alone.
    async fn wait_reply<T>(&mut self, mut pick: impl FnMut(&Reply) -> Option<T>) -> Result<T> {
        self.wait_info(|info| pick(&info.reply)).await
    }

    /// The oldest queued INFO, or the next one to arrive.
    pub async fn next_info(&mut self) -> Result<Info> {
        self.wait_info(|info| Some(info.clone())).await
    }

    /// Sends HEARTBEAT with `d: null` and returns the ACK's health.
    pub async fn heartbeat(&mut self) -> Result<f64> {
        self.link.act(|s| s.heartbeat(Instant::now(), None)).await?;
        self.wait_heartbeat_ack().await
    }

    async fn wait_heartbeat_ack(&mut self) -> Result<f64> {
        self.wait("LVSP HEARTBEAT_ACK", |e| match e {
            ServerMessage::HeartbeatAck(h) => Some(h.health),
            _ => None,
        })
        .await
    }

    /// Sends a message.
    pub async fn send(&self, message: ClientMessage) -> Result<()> {
        self.link.act(|s| s.send(message)).await
    }

    /// The next server message (ignoring the queue), or `Closed` with the
    /// close code. Updates [`last_seq`](Self::last_seq) and
    /// [`health`](Self::health). A frame that is not JSON is an error.
    pub async fn recv(&mut self) -> Result<LvspEvent> {
        self.link
            .poll_until(|s| Ok(s.poll_event().or_else(|| s.closed().map(LvspEvent::Closed))))
            .await
    }

    /// [`recv`](Self::recv) with a time limit.
    pub async fn recv_timeout(&mut self, wait: Duration) -> Result<LvspEvent> {
        tokio::time::timeout(wait, self.recv())
            .await
            .map_err(|_| ClientError::Timeout("LVSP message"))?
    }

    /// Reads until `pick` accepts a message (see
    /// [`LvspSession::poll_reply`]); a close is an error.
    async fn wait<T>(
        &mut self,
        what: &'static str,
        mut pick: impl FnMut(&ServerMessage) -> Option<T>,
    ) -> Result<T> {
        self.link.wait(what, |s| s.poll_reply(&mut pick)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::serve;

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
        assert_eq!(ready, Health { health: 1.0 });
        assert_eq!(c.heartbeat_interval(), Duration::from_secs(45));
        let assign = c.channel_req("10", None).await.expect("assign");
        assert_eq!(
            assign,
            ChannelAssign {
                channel: Channel {
                    channel_id: Snowflake(10),
                    guild_id: None
                },
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
        assert_eq!(c.heartbeat().await.expect("ack"), 0.25);
        assert_eq!(c.health(), Some(0.25));
        c.voice_state_destroy("30", "10", Some("20"))
            .await
            .expect("send");
        c.channel_destroy("10", Some("20")).await.expect("send");
        assert!(matches!(
            c.next_info().await.expect("queued").reply,
            Reply::ChannelAssign(a) if a.token == "other"
        ));
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
            peer.send(
                json!({"op": 6, "s": 5, "d": {"type": 4, "data": {"user_id": "1",
                "channel_id": "2", "guild_id": null, "session_id": "s"}}}),
            )
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
