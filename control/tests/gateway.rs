//! The voice gateway over real sockets against the real binaries: every
//! encryption mode at v4 and v8, Resume with media flowing throughout, the
//! resume grace period, and close codes only a live socket can provoke.

mod support;

use std::time::Duration;

use protocol::Snowflake;
use scripts::gateway::{GatewayClient, GatewayEvent, ServerMessage};
use scripts::{ClientError, LvspClient, Mode, VoiceClient};
use serde_json::json;
use support::{assert_call_flows, join_call, ServerProcess};

const GUILD: &str = "41771983423143936";

async fn identified(server: &ServerProcess) -> LvspClient {
    LvspClient::connect(&server.lvsp_url, &server.secret)
        .await
        .expect("LVSP identify")
        .0
}

/// The next close code, skipping other events.
async fn close_code(gateway: &mut GatewayClient) -> Option<u16> {
    loop {
        match gateway.next_event_timeout(Duration::from_secs(10)).await {
            Ok(GatewayEvent::Closed(code)) | Err(ClientError::Closed(code)) => return code,
            Ok(_) => continue,
            Err(e) => panic!("expected a close: {e}"),
        }
    }
}

/// The next event that `pick` accepts, skipping the others.
async fn next_matching<T>(
    gateway: &mut GatewayClient,
    what: &str,
    mut pick: impl FnMut(&GatewayEvent) -> Option<T>,
) -> T {
    loop {
        match gateway.next_event_timeout(Duration::from_secs(5)).await {
            Ok(e) => {
                if let Some(t) = pick(&e) {
                    return t;
                }
            }
            Err(e) => panic!("waiting for {what}: {e}"),
        }
    }
}

/// A Resume at v8 on a new socket, up to Resumed.
async fn resume(server: &ServerProcess, session: &str, token: &str, seq_ack: i64) -> GatewayClient {
    let mut back = GatewayClient::connect(&server.gateway_url, 8)
        .await
        .unwrap();
    back.send_json(
        &json!({"op": 7, "d": {"server_id": GUILD, "session_id": session,
        "token": token, "seq_ack": seq_ack}}),
    )
    .await
    .unwrap();
    next_matching(&mut back, "Resumed", |e| {
        matches!(e, GatewayEvent::Message(ServerMessage::Resumed)).then_some(())
    })
    .await;
    back
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_mode_at_v4_and_v8_in_one_channel() {
    let all: Vec<&str> = Mode::ALL.iter().map(|m| m.name()).collect();
    let server = ServerProcess::start(2, &["--modes", &all.join(",")]);
    let mut lvsp = identified(&server).await;
    for (version, channel) in [(4u8, "1100"), (8, "1108")] {
        let assign = lvsp.channel_req(channel, Some(GUILD)).await.unwrap();
        let mut members = Vec::new();
        for (i, mode) in Mode::ALL.into_iter().enumerate() {
            let user = format!("{version}00{i}");
            let done = lvsp
                .voice_state_create(&user, channel, Some(GUILD))
                .await
                .unwrap();
            let member = VoiceClient::join(
                &server.gateway_url,
                version,
                GUILD,
                &user,
                &done.session_id,
                &assign.token,
                mode,
            )
            .await
            .unwrap_or_else(|e| panic!("v{version} {}: {e}", mode.name()));
            assert_eq!(member.session.mode, mode);
            members.push(member);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        // Every member hears every other, each in its own mode.
        assert_call_flows(&mut members, 4, &format!("v{version}")).await;
    }
    assert_eq!(
        server.metric_sum("voice_drops_total", "reason=\"auth_failed\""),
        0.0
    );
}

/// A member's websocket goes away; media keeps flowing both ways while it
/// is gone; someone joins meanwhile; it resumes on a new socket with the
/// same SSRC and receives what it missed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_keeps_media_flowing_and_redelivers_what_was_missed() {
    let server = ServerProcess::start(1, &[]);
    let mut lvsp = identified(&server).await;
    let channel = "1200";
    let mut call = join_call(&server, &mut lvsp, GUILD, channel, &["6001", "6002"]).await;
    let token = lvsp.channel_req(channel, Some(GUILD)).await.unwrap().token;
    let session = lvsp
        .voice_state_create("6001", channel, Some(GUILD))
        .await
        .unwrap()
        .session_id;
    assert_call_flows(&mut call, 3, "before").await;

    // Member 0 loses its websocket (the client closes it with a code
    // that is no leave; UDP goes on).
    let ssrc = call[0].ssrc();
    call[0].stop_heartbeat();
    let seq_ack = call[0].gateway.seq_ack();
    assert!(seq_ack >= 2, "Ready and Session Description were numbered");
    call[0].gateway.close(4000).await.unwrap();
    server.wait_metrics(Duration::from_secs(5), "the session parked", |s| {
        s.metric("voice_sessions_parked") == 1.0
    });
    assert_call_flows(&mut call, 3, "while away").await;

    // 6003 joins while 6001 is away.
    let mut late = join_call(&server, &mut lvsp, GUILD, channel, &["6003"]).await;

    let mut back = resume(&server, &session, &token, seq_ack).await;
    // Everything numbered after seq_ack comes again: 6003's arrival, and
    // anything else the old socket had not read yet (6002's, say).
    loop {
        let joined = next_matching(&mut back, "the missed Clients Connect", |e| match e {
            GatewayEvent::Message(ServerMessage::ClientsConnect(c)) => Some(c.user_ids.clone()),
            _ => None,
        })
        .await;
        assert!(
            joined.iter().all(|u| [6002, 6003].contains(&u.0)),
            "{joined:?}"
        );
        if joined == [Snowflake(6003)] {
            break;
        }
    }
    assert!(back.seq_ack() > seq_ack, "re-delivered with its seq");
    call[0].gateway = back;
    call[0].restart_heartbeat(Duration::from_secs(5));
    assert_eq!(call[0].ssrc(), ssrc, "same SSRC");
    call.append(&mut late);
    assert_call_flows(&mut call, 3, "after resume").await;
    assert_eq!(server.metric("voice_sessions_parked"), 0.0);
    assert_eq!(
        server.metric_sum("voice_drops_total", "reason=\"unknown_ssrc\""),
        0.0,
        "the session never left the data plane"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unresumed_session_leaves_after_the_grace_period() {
    let server = ServerProcess::start(1, &["--gateway-resume-grace-ms", "300"]);
    let mut lvsp = identified(&server).await;
    let mut call = join_call(&server, &mut lvsp, GUILD, "1300", &["7001", "7002"]).await;
    call[0].stop_heartbeat();
    call[0].gateway.close(4000).await.unwrap();
    let left = next_matching(&mut call[1].gateway, "Client Disconnect", |e| match e {
        GatewayEvent::Message(ServerMessage::ClientDisconnect(c)) => Some(c.user_id),
        _ => None,
    })
    .await;
    assert_eq!(left, Snowflake(7001));
    // Its SSRC is off the data plane: its packets are dropped.
    call[0].udp.send_opus(b"too late").await.unwrap();
    server.wait_metrics(Duration::from_secs(5), "an unknown SSRC", |s| {
        s.metric_sum("voice_drops_total", "reason=\"unknown_ssrc\"") >= 1.0
    });
    assert!(call[1]
        .udp
        .recv_timeout(Duration::from_millis(200))
        .await
        .is_err());
}

/// A client that closes with 1000 left the call: the others get Client
/// Disconnect at once and nothing more is forwarded to or from it. It may
/// still resume within the leave grace (discord.js closes with 1000 when
/// it resumes after losing UDP): same SSRC and key, the others learn it is
/// back, the call flows again. Past the grace it is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_normal_close_is_a_prompt_leave_that_can_still_resume() {
    let server = ServerProcess::start(1, &["--gateway-leave-grace-ms", "2000"]);
    let mut lvsp = identified(&server).await;
    let channel = "1400";
    let users = ["8001", "8002", "8003"];
    let mut call = join_call(&server, &mut lvsp, GUILD, channel, &users).await;
    let token = lvsp.channel_req(channel, Some(GUILD)).await.unwrap().token;
    let session = lvsp
        .voice_state_create("8001", channel, Some(GUILD))
        .await
        .unwrap()
        .session_id;
    assert_call_flows(&mut call, 3, "before").await;
    let ssrc = call[0].ssrc();
    call[0].stop_heartbeat();
    let seq_ack = call[0].gateway.seq_ack();

    let closed_at = std::time::Instant::now();
    call[0].gateway.close(1000).await.unwrap();
    let left = next_matching(&mut call[1].gateway, "Client Disconnect", |e| match e {
        GatewayEvent::Message(ServerMessage::ClientDisconnect(c)) => Some(c.user_id),
        _ => None,
    })
    .await;
    let latency = closed_at.elapsed();
    assert_eq!(left, Snowflake(8001));
    // Loopback on a shared machine: the design's 5 ms with a margin.
    assert!(latency < Duration::from_millis(250), "{latency:?}");
    // The data plane holds it within 5 ms: nothing to it, nothing from it.
    tokio::time::sleep(Duration::from_millis(5).saturating_sub(latency)).await;
    let held_at = closed_at.elapsed();
    call[1].udp.send_opus(b"after the leave").await.unwrap();
    call[0].udp.send_opus(b"from the departed").await.unwrap();
    let heard = call[2]
        .udp
        .recv_timeout(Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!(heard.payload, b"after the leave");
    assert!(call[2]
        .udp
        .recv_timeout(Duration::from_millis(200))
        .await
        .is_err());
    assert!(call[1]
        .udp
        .recv_timeout(Duration::from_millis(50))
        .await
        .is_err());
    assert!(
        call[0]
            .udp
            .recv_timeout(Duration::from_millis(50))
            .await
            .is_err(),
        "nothing is sent to a member who left"
    );
    assert_eq!(server.metric("voice_sessions_parked"), 1.0);
    eprintln!("leave: Client Disconnect after {latency:?}; held within {held_at:?}");

    // It resumes within the grace: the others learn it is back.
    let back = resume(&server, &session, &token, seq_ack).await;
    for other in &mut call[1..] {
        // (The welcome of the last member to join may still be unread.)
        next_matching(&mut other.gateway, "Clients Connect of 8001", |e| match e {
            GatewayEvent::Message(ServerMessage::ClientsConnect(c)) => {
                (c.user_ids == [Snowflake(8001)]).then_some(())
            }
            _ => None,
        })
        .await;
    }
    call[0].gateway = back;
    call[0].restart_heartbeat(Duration::from_secs(5));
    assert_eq!(call[0].ssrc(), ssrc, "same SSRC");
    assert_call_flows(&mut call, 3, "after resume").await;
    assert_eq!(server.metric("voice_sessions_parked"), 0.0);

    // 1001, and no resume: gone after the grace.
    call[0].stop_heartbeat();
    call[0].gateway.close(1001).await.unwrap();
    let left = next_matching(&mut call[2].gateway, "Client Disconnect", |e| match e {
        GatewayEvent::Message(ServerMessage::ClientDisconnect(c)) => Some(c.user_id),
        _ => None,
    })
    .await;
    assert_eq!(left, Snowflake(8001));
    server.wait_metrics(Duration::from_secs(5), "the leave grace ended", |s| {
        s.metric("voice_sessions_parked") == 0.0 && s.metric("voice_sessions") == 2.0
    });
    call[0].udp.send_opus(b"too late").await.unwrap();
    server.wait_metrics(Duration::from_secs(5), "an unknown SSRC", |s| {
        s.metric_sum("voice_drops_total", "reason=\"unknown_ssrc\"") >= 1.0
    });
    let mut late = GatewayClient::connect(&server.gateway_url, 8)
        .await
        .unwrap();
    late.send_json(
        &json!({"op": 7, "d": {"server_id": GUILD, "session_id": session,
        "token": token, "seq_ack": 0}}),
    )
    .await
    .unwrap();
    assert_eq!(close_code(&mut late).await, Some(4006));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_codes_on_live_sockets() {
    let server = ServerProcess::start(
        1,
        &[
            "--gateway-rate",
            "5",
            "--gateway-burst",
            "10",
            "--gateway-heartbeat-ms",
            "200",
        ],
    );
    let mut lvsp = identified(&server).await;
    let assign = lvsp.channel_req("1400", Some(GUILD)).await.unwrap();
    let session = lvsp
        .voice_state_create("8001", "1400", Some(GUILD))
        .await
        .unwrap()
        .session_id;

    // 4021: a flood.
    let mut flood = GatewayClient::connect(&server.gateway_url, 8)
        .await
        .unwrap();
    for t in 0..50 {
        if flood
            .send_json(&json!({"op": 3, "d": {"t": t, "seq_ack": -1}}))
            .await
            .is_err()
        {
            break;
        }
    }
    assert_eq!(close_code(&mut flood).await, Some(4021));

    // 4020: a version this server does not serve.
    let mut v9 = GatewayClient::connect(&format!("{}/?v=9", server.gateway_url), 9)
        .await
        .unwrap();
    assert_eq!(close_code(&mut v9).await, Some(4020));

    // 4009: identified, then silent past the heartbeat interval.
    let mut quiet = GatewayClient::connect(&server.gateway_url, 4)
        .await
        .unwrap();
    quiet
        .identify(GUILD, "8001", &session, &assign.token)
        .await
        .expect("identify");
    assert_eq!(close_code(&mut quiet).await, Some(4009));

    // 4016: the legacy xsalsa20_poly1305 modes are offered only when
    // configured (`--modes`).
    let legacy_session = lvsp
        .voice_state_create("8002", "1400", Some(GUILD))
        .await
        .unwrap()
        .session_id;
    let mut legacy = GatewayClient::connect(&server.gateway_url, 8)
        .await
        .unwrap();
    let ready = legacy
        .identify(GUILD, "8002", &legacy_session, &assign.token)
        .await
        .expect("identify");
    assert_eq!(
        ready.modes,
        ["aead_aes256_gcm_rtpsize", "aead_xchacha20_poly1305_rtpsize"]
    );
    let _ = legacy
        .select_protocol([127, 0, 0, 1].into(), 4000, Mode::XSalsa20Poly1305)
        .await;
    assert_eq!(close_code(&mut legacy).await, Some(4016));

    // 4006: resuming a session that was removed over LVSP.
    lvsp.voice_state_destroy("8001", "1400", Some(GUILD))
        .await
        .unwrap();
    server.wait_metrics(Duration::from_secs(5), "the state removed", |s| {
        s.metric("voice_states") == 1.0 // 8002's stays
    });
    let mut stale = GatewayClient::connect(&server.gateway_url, 8)
        .await
        .unwrap();
    stale
        .send_json(
            &json!({"op": 7, "d": {"server_id": GUILD, "session_id": session,
            "token": assign.token, "seq_ack": 1}}),
        )
        .await
        .unwrap();
    assert_eq!(close_code(&mut stale).await, Some(4006));

    // No `v`: Discord's default version 1, served.
    let mut plain = GatewayClient::connect(&format!("{}/", server.gateway_url), 1)
        .await
        .unwrap();
    let hello = plain.wait_hello().await.expect("Hello without ?v");
    assert_eq!(hello, Duration::from_millis(200));

    for code in [4021, 4020, 4009, 4016, 4006] {
        assert_eq!(
            server.metric(&format!(
                "voice_closes_total{{protocol=\"gateway\",code=\"{code}\"}}"
            )),
            1.0,
            "{code}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limit_and_identify_timeout() {
    let server = ServerProcess::start(
        1,
        &[
            "--max-pending-per-address",
            "2",
            "--identify-timeout-secs",
            "1",
        ],
    );
    let mut first = GatewayClient::connect(&server.gateway_url, 8)
        .await
        .unwrap();
    let mut second = GatewayClient::connect(&server.gateway_url, 8)
        .await
        .unwrap();
    server.wait_metrics(Duration::from_secs(5), "two open connections", |s| {
        s.metric("voice_connections{protocol=\"gateway\"}") == 2.0
    });
    // A third from the same address is refused at accept (the address has
    // its share of pending slots): no handshake completes.
    assert!(GatewayClient::connect(&server.gateway_url, 8)
        .await
        .is_err());
    assert_eq!(
        server
            .metric("voice_connections_refused_total{protocol=\"gateway\",reason=\"per_address\"}"),
        1.0
    );
    // Heartbeats alone do not hold a connection: no Identify within 1 s is
    // 4003, and the slots are free again.
    first
        .send_json(&json!({"op": 3, "d": {"t": 1, "seq_ack": -1}}))
        .await
        .unwrap();
    assert_eq!(close_code(&mut first).await, Some(4003));
    assert_eq!(close_code(&mut second).await, Some(4003));
    server.wait_metrics(Duration::from_secs(5), "the slots released", |s| {
        s.metric("voice_connections{protocol=\"gateway\"}") == 0.0
    });
    let mut again = GatewayClient::connect(&server.gateway_url, 8)
        .await
        .unwrap();
    again.wait_hello().await.expect("Hello");
    // LVSP has its own budget.
    assert_eq!(server.metric("voice_connections{protocol=\"lvsp\"}"), 0.0);
}

/// `--dave required`: a client that does not support DAVE is closed with
/// 4017 at Identify; one that does is served, and told so in Session
/// Description.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dave_required_refuses_clients_without_it() {
    let server = ServerProcess::start(1, &["--dave", "required"]);
    let mut lvsp = identified(&server).await;
    let assign = lvsp.channel_req("1500", Some(GUILD)).await.unwrap();
    let mut session = Vec::new();
    for user in ["8101", "8102"] {
        let done = lvsp.voice_state_create(user, "1500", Some(GUILD)).await;
        session.push(done.unwrap().session_id);
    }
    let plain_session = &session[0];
    let mut plain = GatewayClient::connect(&server.gateway_url, 8)
        .await
        .unwrap();
    let refused = plain
        .identify(GUILD, "8101", plain_session, &assign.token)
        .await;
    assert!(refused.is_err(), "{refused:?}");
    assert_eq!(close_code(&mut plain).await, Some(4017));
    let ids = [GUILD, "8102", session[1].as_str(), assign.token.as_str()];
    let member = VoiceClient::join_dave(&server.gateway_url, 8, ids, Mode::Aes256GcmRtpSize, 1)
        .await
        .expect("a DAVE client is served");
    assert_eq!(member.session.dave_protocol_version, 1);
    assert_eq!(
        server.metric_sum("voice_closes_total", "code=\"4017\""),
        1.0
    );
}

/// DSharpPlus VoiceNext sends `server_id` and `user_id` as JSON numbers:
/// Identify and Resume are accepted that way (with an unknown extra field
/// ignored), Speaking too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn numeric_snowflakes_identify_and_resume() {
    let server = ServerProcess::start(1, &[]);
    let mut lvsp = identified(&server).await;
    let assign = lvsp.channel_req("1600", Some(GUILD)).await.unwrap();
    let session = lvsp
        .voice_state_create("8201", "1600", Some(GUILD))
        .await
        .unwrap()
        .session_id;
    let guild: u64 = GUILD.parse().unwrap();
    let mut first = GatewayClient::connect(&server.gateway_url, 8)
        .await
        .unwrap();
    first
        .send_json(
            &json!({"op": 0, "d": {"server_id": guild, "user_id": 8201u64,
            "session_id": session, "token": assign.token, "video": true, "streams": []}}),
        )
        .await
        .unwrap();
    let ssrc = next_matching(&mut first, "Ready", |e| match e {
        GatewayEvent::Message(ServerMessage::Ready(r)) => Some(r.ssrc),
        _ => None,
    })
    .await;
    first
        .send_json(&json!({"op": 5, "d": {"speaking": 1, "delay": 0, "ssrc": ssrc}}))
        .await
        .unwrap();
    let seq_ack = first.seq_ack();
    drop(first);
    let mut back = GatewayClient::connect(&server.gateway_url, 8)
        .await
        .unwrap();
    back.send_json(&json!({"op": 7, "d": {"server_id": guild,
        "session_id": session, "token": assign.token, "seq_ack": seq_ack}}))
        .await
        .unwrap();
    next_matching(&mut back, "Resumed", |e| {
        matches!(e, GatewayEvent::Message(ServerMessage::Resumed)).then_some(())
    })
    .await;
    assert_eq!(back.closed(), None);
}
