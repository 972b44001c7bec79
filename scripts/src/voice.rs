//! [`VoiceClient`]: a whole voice client (gateway + UDP) joined in one call.

use std::net::SocketAddr;
use std::time::Duration;

use crate::crypto::{Mode, KEY_LEN};
use crate::error::Result;
use crate::gateway::{
    Codec, GatewayClient, Identify, Ready, SelectProtocol, SelectProtocolData, SessionDescription,
    UDP,
};
use crate::udp::VoiceUdp;
use crate::ws::HeartbeatTask;

/// A joined voice client: the gateway connection (heartbeating in the
/// background), the UDP socket with the session key installed, and what the
/// handshake returned.
#[derive(Debug)]
pub struct VoiceClient {
    /// The gateway connection, for Speaking and events.
    pub gateway: GatewayClient,
    /// The UDP socket, for audio.
    pub udp: VoiceUdp,
    /// The gateway's Ready.
    pub ready: Ready,
    /// The gateway's Session Description.
    pub session: SessionDescription,
    heartbeat: Option<HeartbeatTask>,
}

impl VoiceClient {
    /// Connects to `gateway_url` at `version`, identifies, binds UDP on
    /// 127.0.0.1 towards Ready's address, runs IP discovery, selects
    /// `mode` with the discovered address, installs the session key
    /// (counter starting at 0) and starts heartbeating at Hello's interval.
    pub async fn join(
        gateway_url: &str,
        version: u8,
        server_id: &str,
        user_id: &str,
        session_id: &str,
        token: &str,
        mode: Mode,
    ) -> Result<Self> {
        let ids = [server_id, user_id, session_id, token];
        Self::join_dave(gateway_url, version, ids, mode, 0).await
    }

    /// [`join`](Self::join) with `[server_id, user_id, session_id, token]`,
    /// identifying with DAVE support up to `max_dave`.
    pub async fn join_dave(
        gateway_url: &str,
        version: u8,
        [server_id, user_id, session_id, token]: [&str; 4],
        mode: Mode,
        max_dave: u16,
    ) -> Result<Self> {
        let identify = crate::gateway::identify([server_id, user_id, session_id, token], max_dave)?;
        Self::join_as(gateway_url, version, identify, mode, None).await
    }

    /// [`join`](Self::join) with any Identify (video streams, say) and
    /// the `codecs` Select Protocol offers.
    pub async fn join_as(
        gateway_url: &str,
        version: u8,
        identify: Identify,
        mode: Mode,
        codecs: Option<Vec<Codec>>,
    ) -> Result<Self> {
        Self::join_with(gateway_url, version, identify, mode, codecs, None).await
    }

    /// [`join`](Self::join) with UDP bound to `local` with `SO_REUSEADDR`
    /// (a load generator's clients share one port on many loopback
    /// addresses, and its shared socket already holds the port).
    pub async fn join_from(
        local: SocketAddr,
        gateway_url: &str,
        version: u8,
        ids: [&str; 4],
        mode: Mode,
    ) -> Result<Self> {
        let identify = crate::gateway::identify(ids, 0)?;
        Self::join_with(gateway_url, version, identify, mode, None, Some(local)).await
    }

    async fn join_with(
        gateway_url: &str,
        version: u8,
        identify: Identify,
        mode: Mode,
        codecs: Option<Vec<Codec>>,
        local: Option<SocketAddr>,
    ) -> Result<Self> {
        let mut gateway = GatewayClient::connect(gateway_url, version).await?;
        let ready = gateway.identify_as(identify).await?;
        let mut udp = match local {
            Some(local) => VoiceUdp::bind_reusing(local, ready.addr(), ready.ssrc).await?,
            None => VoiceUdp::bind(ready.addr(), ready.ssrc).await?,
        };
        let seen = udp.discover().await?;
        let select = SelectProtocol {
            protocol: UDP.into(),
            data: SelectProtocolData {
                address: Some(seen.ip()),
                port: Some(seen.port()),
                mode: mode.name().into(),
            },
            codecs,
        };
        let session = gateway.select_protocol_as(select).await?;
        udp.set_session(session.mode, &session.secret_key, 0)?;
        let interval = gateway.wait_hello().await?;
        let heartbeat = Some(gateway.spawn_heartbeat(interval));
        Ok(VoiceClient {
            gateway,
            udp,
            ready,
            session,
            heartbeat,
        })
    }

    /// Our SSRC.
    pub fn ssrc(&self) -> u32 {
        self.ready.ssrc
    }

    /// The session key.
    pub fn key(&self) -> [u8; KEY_LEN] {
        let mut key = [0u8; KEY_LEN];
        if let Some(c) = self.udp.cipher() {
            key = *c.key();
        }
        key
    }

    /// The mode in use.
    pub fn mode(&self) -> Option<Mode> {
        self.udp.cipher().map(|c| c.mode())
    }

    /// Stops the background heartbeat (to provoke a session timeout).
    pub fn stop_heartbeat(&mut self) {
        self.heartbeat = None;
    }

    /// Restarts the background heartbeat at `interval`.
    pub fn restart_heartbeat(&mut self, interval: Duration) {
        self.heartbeat = Some(self.gateway.spawn_heartbeat(interval));
    }

    /// Splits into the gateway and UDP halves (the heartbeat task goes with
    /// the gateway half; drop it to stop heartbeating).
    pub fn into_parts(self) -> (GatewayClient, VoiceUdp, Option<HeartbeatTask>) {
        (self.gateway, self.udp, self.heartbeat)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::Cipher;
    use crate::rtp::RtpPacket;
    use crate::testutil::serve;
    use crate::udp::{discovery_response, DISCOVERY_LEN};
    use serde_json::json;
    use tokio::net::UdpSocket;

    /// A scripted gateway plus a UDP responder doing discovery and echoing
    /// audio re-sealed with the same key.
    #[tokio::test]
    async fn join_then_audio_round_trip() {
        let key = [5u8; 32];
        let udp = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let udp_port = udp.local_addr().expect("addr").port();
        let udp_task = tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            let cipher = Cipher::new(Mode::XChaCha20Poly1305RtpSize, &key).expect("key");
            let mut out = Cipher::new(Mode::XChaCha20Poly1305RtpSize, &key).expect("key");
            while let Ok((n, from)) = udp.recv_from(&mut buf).await {
                if n == DISCOVERY_LEN {
                    let _ = udp.send_to(&discovery_response(42, from), from).await;
                } else if let Ok(plain) = cipher.decrypt(&buf[..n]) {
                    let p = RtpPacket::parse(&plain).expect("rtp");
                    let wire = out.encrypt(&p.to_bytes()).expect("seal");
                    let _ = udp.send_to(&wire, from).await;
                }
            }
        });
        let (url, server) = serve(move |mut peer| async move {
            peer.send(json!({"op": 8, "d": {"heartbeat_interval": 30}}))
                .await;
            assert_eq!(peer.recv().await["op"], 0);
            peer.send(
                json!({"op": 2, "d": {"ssrc": 42, "ip": "127.0.0.1", "port": udp_port,
                "modes": ["aead_aes256_gcm_rtpsize", "aead_xchacha20_poly1305_rtpsize"]}}),
            )
            .await;
            let select = peer.recv().await;
            assert_eq!(select["d"]["data"]["address"], "127.0.0.1");
            assert!(select["d"]["data"]["port"].as_u64().is_some_and(|p| p != 0));
            peer.send(
                json!({"op": 4, "d": {"mode": "aead_xchacha20_poly1305_rtpsize",
                "secret_key": key, "dave_protocol_version": 0}}),
            )
            .await;
            // The background heartbeat arrives without the client asking.
            assert_eq!(peer.recv().await["op"], 3);
            peer.close(4022).await;
        })
        .await;
        let mut c = VoiceClient::join(&url, 7, "1", "2", "s", "t", Mode::XChaCha20Poly1305RtpSize)
            .await
            .expect("join");
        assert_eq!(c.ssrc(), 42);
        assert_eq!(c.key(), key);
        assert_eq!(c.mode(), Some(Mode::XChaCha20Poly1305RtpSize));
        c.udp.send_opus(b"frame").await.expect("send");
        let got = c
            .udp
            .recv_timeout(Duration::from_secs(2))
            .await
            .expect("echo");
        assert_eq!(
            (got.ssrc, got.seq, &got.payload[..]),
            (42, 0, &b"frame"[..])
        );
        assert_eq!(
            c.gateway
                .next_event_timeout(Duration::from_secs(5))
                .await
                .expect("close"),
            crate::gateway::GatewayEvent::Closed(Some(4022))
        );
        server.await.expect("server script");
        udp_task.abort();
    }
}
