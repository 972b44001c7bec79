//! The server target: joins every member through LVSP and the voice
//! gateway, then runs the phase over the joined clients' sockets.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{StreamExt, TryStreamExt};

use super::config::{Config, ServerTarget};
use super::packet::Sealer;
use super::report::TargetReport;
use super::traffic::{blast, Endpoint, Sock};
use super::Result;
use crate::error::ClientError;
use crate::lvsp::LvspClient;
use crate::rtp::FIXED_HEADER_LEN;
use crate::voice::VoiceClient;
use crate::ws::HeartbeatTask;

/// Voice clients joining at the same time.
const JOIN_CONCURRENCY: usize = 8;

/// What a member keeps alive on the server while the run lasts.
struct Session {
    _gateway: crate::gateway::GatewayClient,
    _heartbeat: Option<HeartbeatTask>,
}

pub(super) async fn run_server(
    config: &Config,
    target: &ServerTarget,
    epoch: Instant,
) -> Result<TargetReport> {
    if let Some(cert) = &target.cert {
        crate::ws::trust_certificate_file(cert)?;
    }
    let (mut lvsp, _ready) = LvspClient::connect(&target.lvsp_url, &target.secret).await?;
    let _lvsp_heartbeat = lvsp.spawn_heartbeat(lvsp.heartbeat_interval());
    // Ids unique to this run, so a server can be reused.
    let base = 100_000_000_000_000_000u64 + u64::from(rand::random::<u32>()) * 100_000;
    let guild = base.to_string();
    let mut jobs = Vec::with_capacity(config.channels * config.members);
    let mut channel_ids = Vec::with_capacity(config.channels);
    for c in 0..config.channels {
        let channel = (base + 1 + c as u64).to_string();
        let assign = lvsp.channel_req(&channel, Some(&guild)).await?;
        for m in 0..config.members {
            let user = (base + 10_000 + (c * config.members + m) as u64).to_string();
            let done = lvsp
                .voice_state_create(&user, &channel, Some(&guild))
                .await?;
            jobs.push((user, done.session_id, assign.token.clone()));
        }
        channel_ids.push(channel);
    }
    let clients: Vec<VoiceClient> = futures_util::stream::iter(jobs)
        .map(|(user, session, token)| {
            let guild = guild.clone();
            async move {
                VoiceClient::join(
                    &target.gateway_url,
                    target.gateway_version,
                    &guild,
                    &user,
                    &session,
                    &token,
                    target.mode,
                )
                .await
            }
        })
        .buffered(JOIN_CONCURRENCY)
        .try_collect()
        .await?;
    // Let the last Select Protocol reach its core (design target: 5 ms).
    tokio::time::sleep(Duration::from_millis(100)).await;

    let mut sessions = Vec::with_capacity(clients.len());
    let mut channels: Vec<Vec<Endpoint>> = Vec::with_capacity(config.channels);
    let mut mode = target.mode;
    for (i, client) in clients.into_iter().enumerate() {
        let ssrc = client.ssrc();
        let (gateway, udp, heartbeat) = client.into_parts();
        let cipher = udp
            .cipher()
            .ok_or_else(|| ClientError::Protocol("joined without a session key".into()))?;
        mode = cipher.mode();
        let key = *cipher.key();
        let (sealer, opener) = (Sealer::new(mode, &key)?, Sealer::new(mode, &key)?);
        let socket = Sock::Voice(Arc::new(udp));
        if i % config.members == 0 {
            channels.push(Vec::with_capacity(config.members));
        }
        if let Some(ch) = channels.last_mut() {
            ch.push(Endpoint {
                socket,
                ssrc,
                sealer,
                opener,
            });
        }
        sessions.push(Session {
            _gateway: gateway,
            _heartbeat: heartbeat,
        });
    }
    let payload_len = config.packet_size - FIXED_HEADER_LEN - mode.overhead();
    let phase = blast(config, channels, payload_len, epoch).await?;
    for channel in &channel_ids {
        // Best effort: the server also cleans up when the sessions close.
        let _ = lvsp.channel_destroy(channel, Some(&guild)).await;
    }
    drop(sessions);
    Ok(phase.report("server", mode.name(), config, None))
}
