//! The Discord voice gateway from the client side (DESIGN.md "Voice
//! gateway"): versions 4 to 8, Identify / Select Protocol / Speaking /
//! Heartbeat, with close codes observable as [`GatewayEvent::Closed`] or
//! [`ClientError::Closed`]. The messages are the `protocol` crate's
//! ([`protocol::gateway`]); the protocol state is a sans-IO
//! [`GatewaySession`] ([`session`]), which [`GatewayClient`] drives over a
//! websocket.

pub mod session;

use std::net::IpAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use protocol::gateway::{ClientMessage, HeartbeatAck};
pub use protocol::gateway::{
    Codec, Identify, MemberSsrcs, Ready, SelectProtocol, SelectProtocolData, ServerMessage,
    SessionDescription, StreamRequest, Video, VideoStream, SPEAKING_MICROPHONE, UDP,
};
use protocol::Snowflake;

use crate::crypto::Mode;
use crate::error::{ClientError, Result};
use crate::ws::Link;
pub use session::{decode, GatewayEvent, GatewaySession};

/// Default time to wait for a reply.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// `base` with `?v=version` (a base that already has a `v=` is kept).
pub fn gateway_url(base: &str, version: u8) -> String {
    if base.contains("?v=") || base.contains("&v=") {
        base.to_owned()
    } else if base.contains('?') {
        format!("{base}&v={version}")
    } else {
        format!("{}/?v={version}", base.trim_end_matches('/'))
    }
}

/// A snowflake given as a string.
fn snowflake(id: &str) -> Result<Snowflake> {
    id.parse()
        .map_err(|_| ClientError::Protocol(format!("{id:?} is not a snowflake")))
}

/// Identify for `[server_id, user_id, session_id, token]`, saying the
/// client supports DAVE up to `max_dave`, without video.
pub fn identify(
    [server_id, user_id, session_id, token]: [&str; 4],
    max_dave: u16,
) -> Result<Identify> {
    Ok(Identify {
        server_id: snowflake(server_id)?,
        user_id: snowflake(user_id)?,
        session_id: session_id.to_owned(),
        token: token.to_owned(),
        max_dave_protocol_version: Some(max_dave),
        video: false,
        streams: Vec::new(),
    })
}

/// A voice gateway connection.
///
/// Helpers that wait for a reply ([`identify`](Self::identify),
/// [`select_protocol`](Self::select_protocol)) record Hello and Heartbeat
/// ACKs in the session and queue every other event they skip for
/// [`next_event`](Self::next_event).
#[derive(Debug)]
pub struct GatewayClient {
    link: Link<GatewaySession>,
}

impl std::ops::Deref for GatewayClient {
    type Target = Link<GatewaySession>;

    fn deref(&self) -> &Self::Target {
        &self.link
    }
}

impl std::ops::DerefMut for GatewayClient {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.link
    }
}

impl GatewayClient {
    /// Connects to `url` (with `?v=version` added, see [`gateway_url`]).
    pub async fn connect(url: &str, version: u8) -> Result<Self> {
        // Heartbeat nonces are wall-clock milliseconds, like real clients'.
        let clock_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let session = GatewaySession::new(version, Instant::now(), clock_ms);
        let url = gateway_url(url, version);
        let link = Link::connect(&url, session, DEFAULT_TIMEOUT).await?;
        Ok(GatewayClient { link })
    }

    /// The gateway version.
    pub fn version(&self) -> u8 {
        self.link.with(|s| s.version())
    }

    /// The highest `seq` seen (at v8), or -1.
    pub fn seq_ack(&self) -> i64 {
        self.link.with(|s| s.seq_ack())
    }

    /// The heartbeat interval from Hello (or Ready), once known.
    pub fn heartbeat_interval(&self) -> Option<Duration> {
        self.link.with(|s| s.heartbeat_interval())
    }

    /// Our SSRC, once Ready arrived.
    pub fn ssrc(&self) -> Option<u32> {
        self.link.with(|s| s.ssrc())
    }

    /// The `d` of the last Heartbeat ACK seen.
    pub fn last_heartbeat_ack(&self) -> Option<HeartbeatAck> {
        self.link.with(|s| s.last_heartbeat_ack())
    }

    /// Sends Identify and waits for Ready.
    pub async fn identify(
        &mut self,
        server_id: &str,
        user_id: &str,
        session_id: &str,
        token: &str,
    ) -> Result<Ready> {
        self.identify_dave(server_id, user_id, session_id, token, 0)
            .await
    }

    /// [`identify`](Self::identify), saying the client supports DAVE up to
    /// `max_dave` (a client that says 1 and does no MLS stays out of the
    /// call's MLS group: it gets the media the others encrypt end to end
    /// as opaque bytes, as the server does).
    pub async fn identify_dave(
        &mut self,
        server_id: &str,
        user_id: &str,
        session_id: &str,
        token: &str,
        max_dave: u16,
    ) -> Result<Ready> {
        let ids = [server_id, user_id, session_id, token];
        self.identify_as(identify(ids, max_dave)?).await
    }

    /// Sends `identify` (any fields: video streams, say) and waits for
    /// Ready.
    pub async fn identify_as(&mut self, identify: Identify) -> Result<Ready> {
        self.send_identify(&identify).await?;
        self.wait("gateway Ready", |e| match e {
            GatewayEvent::Message(ServerMessage::Ready(r)) => Ok(r),
            e => Err(e),
        })
        .await
    }

    /// Sends Identify.
    pub async fn send_identify(&self, identify: &Identify) -> Result<()> {
        self.link.act(|s| s.identify(identify.clone())).await
    }

    /// Sends Select Protocol and waits for Session Description.
    pub async fn select_protocol(
        &mut self,
        address: IpAddr,
        port: u16,
        mode: Mode,
    ) -> Result<SessionDescription> {
        self.send_select_protocol(Some(address), port, mode.name())
            .await?;
        self.wait("gateway Session Description", |e| match e {
            GatewayEvent::Message(ServerMessage::SessionDescription(s)) => Ok(s),
            e => Err(e),
        })
        .await
    }

    /// Sends Select Protocol with any mode name (and no address, if None).
    pub async fn send_select_protocol(
        &self,
        address: Option<IpAddr>,
        port: u16,
        mode: &str,
    ) -> Result<()> {
        let select = |s: &mut GatewaySession| s.select_protocol(address, port, mode);
        self.link.act(select).await
    }

    /// Sends `select` (codecs, say) and waits for Session Description.
    pub async fn select_protocol_as(
        &mut self,
        select: SelectProtocol,
    ) -> Result<SessionDescription> {
        self.send(ClientMessage::SelectProtocol(select)).await?;
        self.wait("gateway Session Description", |e| match e {
            GatewayEvent::Message(ServerMessage::SessionDescription(s)) => Ok(s),
            e => Err(e),
        })
        .await
    }

    /// Sends Speaking `{speaking: flags, delay: 0, ssrc}` with our SSRC.
    pub async fn speaking(&self, flags: u32) -> Result<()> {
        Ok(self.link.act(|s| s.speaking(flags)).await??)
    }

    /// Sends Speaking with any delay and SSRC.
    pub async fn speaking_as(&self, flags: u32, delay: u32, ssrc: u32) -> Result<()> {
        self.link.act(|s| s.speaking_as(flags, delay, ssrc)).await
    }

    /// Sends one Heartbeat in this version's shape; returns its nonce
    /// (milliseconds since the epoch), which the ACK echoes.
    pub async fn heartbeat(&self) -> Result<u64> {
        self.link.act(|s| s.heartbeat(Instant::now())).await
    }

    /// Sends Resume op 7 with the current `seq_ack` (at v8).
    pub async fn send_resume(&self, server_id: &str, session_id: &str, token: &str) -> Result<()> {
        let server_id = snowflake(server_id)?;
        let resume = |s: &mut GatewaySession| s.resume(server_id, session_id, token);
        self.link.act(resume).await
    }

    /// Waits for Hello unless it already came; returns the interval.
    pub async fn wait_hello(&mut self) -> Result<Duration> {
        if let Some(interval) = self.heartbeat_interval() {
            return Ok(interval);
        }
        self.link
            .wait("gateway Hello", |s| {
                s.poll_reply(|e| match e {
                    GatewayEvent::Message(ServerMessage::Hello(_)) => Ok(()),
                    e => Err(e),
                })?;
                Ok(s.heartbeat_interval())
            })
            .await
    }

    /// The next queued event, or the next one to arrive.
    pub async fn next_event(&mut self) -> Result<GatewayEvent> {
        self.link
            .poll_until(|s| {
                Ok(s.poll_event()
                    .or_else(|| s.closed().map(GatewayEvent::Closed)))
            })
            .await
    }

    /// [`next_event`](Self::next_event) with a time limit.
    pub async fn next_event_timeout(&mut self, wait: Duration) -> Result<GatewayEvent> {
        tokio::time::timeout(wait, self.next_event())
            .await
            .map_err(|_| ClientError::Timeout("gateway event"))?
    }

    /// Sends a message.
    pub async fn send(&self, message: ClientMessage) -> Result<()> {
        self.link.act(|s| s.send(message)).await
    }

    /// The close code, once the server closed.
    pub fn closed(&self) -> Option<Option<u16>> {
        self.link.with(|s| s.closed())
    }

    /// Reads until `pick` accepts an event (see
    /// [`GatewaySession::poll_reply`]); a close is an error.
    async fn wait<T>(
        &mut self,
        what: &'static str,
        mut pick: impl FnMut(GatewayEvent) -> Result<T, GatewayEvent>,
    ) -> Result<T> {
        self.link.wait(what, |s| s.poll_reply(&mut pick)).await
    }
}

#[cfg(test)]
mod tests {
    use protocol::gateway::{ClientDisconnect, ClientsConnect, Nonce};
    use serde_json::json;

    use super::*;
    use crate::testutil::serve;

    #[test]
    fn urls() {
        assert_eq!(gateway_url("ws://h:1", 8), "ws://h:1/?v=8");
        assert_eq!(gateway_url("ws://h:1/", 4), "ws://h:1/?v=4");
        assert_eq!(gateway_url("ws://h:1/?v=5", 8), "ws://h:1/?v=5");
        assert_eq!(gateway_url("ws://h:1/?x=1", 6), "ws://h:1/?x=1&v=6");
    }

    #[tokio::test]
    async fn v8_handshake_events_and_heartbeats() {
        let (url, server) = serve(|mut peer| async move {
            assert_eq!(peer.path, "/?v=8");
            let identify = peer.recv().await;
            assert_eq!(
                identify,
                json!({"op": 0, "d": {"server_id": "1", "user_id": "2", "session_id": "s",
                    "token": "t", "max_dave_protocol_version": 0}})
            );
            // Hello after Identify, then an event before Ready.
            peer.send(json!({"op": 8, "d": {"heartbeat_interval": 13750.0}}))
                .await;
            peer.send(json!({"op": 11, "d": {"user_ids": ["3"]}, "seq": 1}))
                .await;
            peer.send(
                json!({"op": 2, "seq": 2, "d": {"ssrc": 77, "ip": "127.0.0.1",
                "port": 5000, "modes": ["aead_aes256_gcm_rtpsize", "future_mode"]}}),
            )
            .await;
            let select = peer.recv().await;
            assert_eq!(
                select,
                json!({"op": 1, "d": {"protocol": "udp", "data":
                    {"address": "127.0.0.1", "port": 40000, "mode": "aead_aes256_gcm_rtpsize"}}})
            );
            peer.send(
                json!({"op": 4, "seq": 3, "d": {"mode": "aead_aes256_gcm_rtpsize",
                "secret_key": vec![9; 32], "dave_protocol_version": 0}}),
            )
            .await;
            assert_eq!(
                peer.recv().await,
                json!({"op": 5, "d": {"speaking": 1, "delay": 0, "ssrc": 77}})
            );
            let hb = peer.recv().await;
            assert_eq!(hb["op"], 3);
            assert_eq!(hb["d"]["seq_ack"], 3);
            peer.send(json!({"op": 6, "d": {"t": hb["d"]["t"]}})).await;
            peer.send(json!({"op": 5, "seq": 4, "d": {"user_id": "3", "ssrc": 78, "speaking": 1}}))
                .await;
            peer.send(json!({"op": 13, "seq": 5, "d": {"user_id": "3"}}))
                .await;
            peer.send(json!({"op": 99, "d": null})).await;
            // Background heartbeat carries the latest seq_ack.
            let hb = peer.recv().await;
            assert_eq!(hb["d"]["seq_ack"], 5);
            peer.close(4014).await;
        })
        .await;
        let mut g = GatewayClient::connect(&url, 8).await.expect("connect");
        let ready = g.identify("1", "2", "s", "t").await.expect("ready");
        assert_eq!(ready.addr(), "127.0.0.1:5000".parse().expect("addr"));
        assert_eq!(ready.known_modes(), vec![Mode::Aes256GcmRtpSize]);
        assert_eq!(g.heartbeat_interval(), Some(Duration::from_millis(13750)));
        let sd = g
            .select_protocol([127, 0, 0, 1].into(), 40000, Mode::Aes256GcmRtpSize)
            .await
            .expect("session");
        assert_eq!(sd.secret_key, [9; 32]);
        assert_eq!(sd.dave_protocol_version, 0);
        g.speaking(SPEAKING_MICROPHONE).await.expect("speaking");
        let nonce = g.heartbeat().await.expect("hb");
        assert_eq!(
            g.next_event().await.expect("queued"),
            GatewayEvent::Message(ServerMessage::ClientsConnect(ClientsConnect {
                user_ids: vec![Snowflake(3)]
            }))
        );
        assert_eq!(
            g.next_event().await.expect("ack"),
            GatewayEvent::Message(ServerMessage::HeartbeatAck(HeartbeatAck::Numbered {
                t: Nonce(nonce.into())
            }))
        );
        assert!(matches!(
            g.next_event().await,
            Ok(GatewayEvent::Message(ServerMessage::Speaking(s))) if s.ssrc == 78
        ));
        assert_eq!(
            g.next_event().await.expect("dc"),
            GatewayEvent::Message(ServerMessage::ClientDisconnect(ClientDisconnect {
                user_id: Snowflake(3)
            }))
        );
        assert!(matches!(
            g.next_event().await,
            Ok(GatewayEvent::Other { op: 99, .. })
        ));
        assert_eq!(g.seq_ack(), 5);
        let _hb = g.spawn_heartbeat(Duration::from_millis(20));
        assert_eq!(
            g.next_event_timeout(Duration::from_secs(5))
                .await
                .expect("close"),
            GatewayEvent::Closed(Some(4014))
        );
        server.await.expect("server script");
    }

    #[tokio::test]
    async fn v4_heartbeat_and_auth_failure() {
        let (url, server) = serve(|mut peer| async move {
            assert_eq!(peer.path, "/?v=4");
            peer.send(json!({"op": 8, "d": {"heartbeat_interval": 5000}}))
                .await;
            let hb = peer.recv().await;
            assert!(hb["d"].is_u64());
            peer.send(json!({"op": 6, "d": hb["d"]})).await;
            assert_eq!(peer.recv().await["op"], 0);
            peer.close(4004).await;
        })
        .await;
        let mut g = GatewayClient::connect(&url, 4).await.expect("connect");
        assert_eq!(g.wait_hello().await.expect("hello"), Duration::from_secs(5));
        let nonce = g.heartbeat().await.expect("hb");
        assert_eq!(
            g.next_event().await.expect("ack"),
            GatewayEvent::Message(ServerMessage::HeartbeatAck(HeartbeatAck::Bare(Nonce(
                nonce.into()
            ))))
        );
        let r = g.identify("1", "2", "s", "bad").await;
        assert!(matches!(r, Err(ClientError::Closed(Some(4004)))), "{r:?}");
        assert_eq!(g.closed(), Some(Some(4004)));
        server.await.expect("server script");
    }
}
