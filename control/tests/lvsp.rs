//! LVSP over real sockets against the real binaries: bad input next to a
//! live call, RESUME after a dropped connection, the grace period, health,
//! and Litecord's shipped client behaviour (litecord dialect).

mod support;

use std::time::Duration;

use protocol::Snowflake;
use scripts::lvsp::{
    encode_info, identify_token, Health, LvspClient, LvspEvent, Reply, ServerMessage,
};
use scripts::ClientError;
use serde_json::{json, Value};
use support::{assert_call_flows, join_call, ServerProcess};

const GUILD: &str = "41771983423143936";

/// What the server did with a connection that misbehaved.
async fn close_code(client: &mut LvspClient) -> Option<u16> {
    loop {
        match client.recv_timeout(Duration::from_secs(10)).await {
            Ok(LvspEvent::Closed(code)) | Err(ClientError::Closed(code)) => return code,
            Ok(_) => continue,
            Err(e) => panic!("expected a close, got {e}"),
        }
    }
}

async fn identified(server: &ServerProcess) -> LvspClient {
    LvspClient::connect(&server.lvsp_url, &server.secret)
        .await
        .expect("LVSP identify")
        .0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_closed_counted_and_never_disturbs_a_call() {
    let server = ServerProcess::start(2, &["--lvsp-rate", "50"]);
    let mut lvsp = identified(&server).await;
    let mut call = join_call(&server, &mut lvsp, GUILD, "500", &["1001", "1002"]).await;
    assert_call_flows(&mut call, 5, "before").await;

    let info = |t: u64, data: Value| encode_info(t, data);
    let cases: Vec<(&str, String, u16)> = vec![
        ("not JSON", "{not json".into(), 4002),
        ("no op", r#"{"d":{}}"#.into(), 4002),
        ("op not an integer", r#"{"op":"6","d":{}}"#.into(), 4002),
        ("unknown op", r#"{"op":77,"d":{}}"#.into(), 4000),
        ("server op HELLO", r#"{"op":0,"d":{}}"#.into(), 4000),
        ("server op READY", r#"{"op":3,"d":{}}"#.into(), 4000),
        ("server op HEARTBEAT_ACK", r#"{"op":5,"d":{}}"#.into(), 4000),
        (
            "INFO without data",
            r#"{"op":6,"d":{"type":0}}"#.into(),
            4002,
        ),
        (
            "INFO missing channel_id",
            info(0, json!({"guild_id": GUILD})),
            4002,
        ),
        (
            "snowflake as number",
            info(0, json!({"channel_id": 500})),
            4002,
        ),
        (
            "user_id wrong type",
            info(3, json!({"user_id": [1], "channel_id": "500"})),
            4002,
        ),
        ("unknown INFO type", info(9, json!({})), 4000),
        ("server INFO CHANNEL_ASSIGN", info(1, json!({})), 4000),
        (
            "second IDENTIFY",
            r#"{"op":1,"d":{"token":"00"}}"#.into(),
            4000,
        ),
    ];
    for (what, msg, code) in &cases {
        let mut bad = identified(&server).await;
        bad.send_text(msg.clone()).await.expect("send");
        assert_eq!(close_code(&mut bad).await, Some(*code), "{what}");
    }

    // Before IDENTIFY.
    let mut early = LvspClient::open(&server.lvsp_url).await.expect("hello");
    early
        .send_text(info(0, json!({"channel_id": "1"})))
        .await
        .unwrap();
    assert_eq!(
        close_code(&mut early).await,
        Some(4000),
        "INFO before IDENTIFY"
    );
    // A binary frame.
    let mut binary = identified(&server).await;
    binary.writer().send_binary(vec![1, 2, 3]).await.unwrap();
    assert_eq!(close_code(&mut binary).await, Some(4002), "binary frame");
    // An oversized frame (the limit is 64 KiB).
    let mut big = identified(&server).await;
    let huge = format!(r#"{{"op":4,"d":{{"pad":"{}"}}}}"#, "x".repeat(100 << 10));
    let _ = big.send_text(huge).await;
    assert_eq!(close_code(&mut big).await, Some(4002), "oversized frame");
    // A VOICE_STATE_CREATE for a channel never requested concerns that
    // request alone: nothing is answered, it is counted, the link stays.
    lvsp.send_text(info(3, json!({"user_id": "1003", "channel_id": "404"})))
        .await
        .unwrap();
    assert!(lvsp.heartbeat().await.is_ok(), "the link stays");
    assert!(lvsp.queued().is_empty(), "{:?}", lvsp.queued());
    assert_eq!(
        server.metric("voice_lvsp_request_errors_total{reason=\"unknown_channel\"}"),
        1.0
    );

    // The call went on untouched, and so did Litecord's connection.
    assert_call_flows(&mut call, 5, "after").await;
    assert!(lvsp.heartbeat().await.is_ok(), "the good connection lives");
    assert_eq!(server.metric("voice_channels"), 1.0);
    assert_eq!(server.metric("voice_sessions"), 2.0);
    let closes = |code| {
        server.metric(&format!(
            "voice_closes_total{{protocol=\"lvsp\",code=\"{code}\"}}"
        ))
    };
    let listed = |code| cases.iter().filter(|(_, _, c)| *c == code).count() as f64;
    // Plus binary and oversized (4002), before IDENTIFY (4000).
    assert_eq!(closes(4002), listed(4002) + 2.0);
    assert_eq!(closes(4000), listed(4000) + 1.0);
}

/// Litecord's link is authenticated and every call depends on it: a burst
/// far past the message budget (a load test creating 2,000 channels of 5
/// voice states at once) is read more slowly, never closed. Every request
/// is answered, in order, and the link stays up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_ten_thousand_voice_states_is_answered_and_the_link_stays() {
    const CHANNELS: u64 = 2_000;
    const MEMBERS: u64 = 5;
    // 2,500 messages a second with a burst of 5,000: 12,000 messages take
    // about 2.8 s, most of them read late.
    let server = ServerProcess::start(1, &["--lvsp-rate", "2500"]);
    let mut lvsp = identified(&server).await;
    let started = std::time::Instant::now();
    // One task writes the whole burst while this one reads the answers:
    // the server stops reading when the budget is spent, and TCP holds
    // the writer back.
    let writer = lvsp.writer();
    let burst = tokio::spawn(async move {
        for channel in 0..CHANNELS {
            let channel_id = (100_000 + channel).to_string();
            let req = encode_info(0, json!({"channel_id": channel_id, "guild_id": GUILD}));
            writer.send_text(req).await?;
        }
        for channel in 0..CHANNELS {
            let channel_id = (100_000 + channel).to_string();
            for member in 0..MEMBERS {
                let user_id = (1_000_000 + channel * MEMBERS + member).to_string();
                let create = encode_info(
                    3,
                    json!({"user_id": user_id, "channel_id": channel_id, "guild_id": GUILD}),
                );
                writer.send_text(create).await?;
            }
        }
        Ok::<_, ClientError>(())
    });
    let (mut assigned, mut done) = (0u64, 0u64);
    let mut last_seq = 0;
    while assigned + done < CHANNELS * (MEMBERS + 1) {
        let info = lvsp.next_info().await.expect("every request is answered");
        assert_eq!(info.seq, last_seq + 1, "in order, none lost");
        last_seq = info.seq;
        match info.reply {
            Reply::ChannelAssign(_) => assigned += 1,
            Reply::VoiceStateDone(d) => {
                assert!(d.state.user_id.0 >= 1_000_000);
                done += 1;
            }
        }
    }
    let took = started.elapsed();
    burst.await.unwrap().expect("the whole burst was written");
    assert_eq!((assigned, done), (CHANNELS, CHANNELS * MEMBERS));
    assert!(lvsp.heartbeat().await.is_ok(), "the link is up");
    assert_eq!(server.metric("voice_states"), (CHANNELS * MEMBERS) as f64);
    let throttled = server.metric("voice_throttled_total{protocol=\"lvsp\"}");
    assert!(throttled > 100.0, "reading paused {throttled} times");
    let closes = server.metric_sum("voice_closes_total", "protocol=\"lvsp\"");
    assert_eq!(closes, 0.0, "no LVSP connection was closed");
    // The budget is the only brake: 7,000 messages past the burst at
    // 2,500/s.
    assert!(took > Duration::from_millis(2_500), "{took:?}");
    assert!(took < Duration::from_secs(20), "{took:?}");
    eprintln!(
        "burst of {} messages answered in {took:?}; reading paused {throttled} times",
        CHANNELS * (MEMBERS + 1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_outlive_the_connection_and_resume_replays_what_was_missed() {
    let server = ServerProcess::start(1, &[]);
    let mut lvsp = identified(&server).await;
    let mut call = join_call(&server, &mut lvsp, GUILD, "600", &["2001", "2002"]).await;
    let seen = lvsp.last_seq().expect("INFOs are numbered");
    assert_eq!(seen, 3, "CHANNEL_ASSIGN and two VOICE_STATE_DONE");
    // Litecord sends one more request and drops before reading the reply.
    lvsp.send_text(encode_info(
        3,
        json!({"user_id": "2003", "channel_id": "600", "guild_id": GUILD}),
    ))
    .await
    .unwrap();
    lvsp.close(4000).await.ok();
    drop(lvsp);

    // Calls go on while Litecord is away.
    assert_call_flows(&mut call, 5, "while away").await;

    // RESUME: the missed VOICE_STATE_DONE, then READY.
    let (mut back, _ready) = LvspClient::resume(&server.lvsp_url, &server.secret, seen)
        .await
        .expect("RESUME");
    let missed = back.next_info().await.expect("replayed INFO");
    assert_eq!(missed.seq, 4);
    let Reply::VoiceStateDone(done) = missed.reply else {
        panic!("replayed {missed:?}")
    };
    assert_eq!(done.state.user_id, Snowflake(2003));
    assert_eq!(done.session_id.len(), 32);
    assert!(back.heartbeat().await.is_ok());
    // A seq the server never sent cannot be resumed.
    let mut bogus = LvspClient::open(&server.lvsp_url).await.unwrap();
    let token = identify_token(&server.secret, &bogus.hello().nonce);
    bogus.send_resume(&token, 99).await.unwrap();
    assert_eq!(close_code(&mut bogus).await, Some(4000));
    assert_call_flows(&mut call, 3, "after resume").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreclaimed_state_expires_after_the_grace_period() {
    let server = ServerProcess::start(1, &["--lvsp-grace-secs", "1"]);
    let mut lvsp = identified(&server).await;
    let mut call = join_call(&server, &mut lvsp, GUILD, "700", &["3001", "3002"]).await;
    drop(lvsp);
    for member in &mut call {
        loop {
            match member
                .gateway
                .next_event_timeout(Duration::from_secs(10))
                .await
            {
                Ok(scripts::GatewayEvent::Closed(code)) | Err(ClientError::Closed(code)) => {
                    assert_eq!(code, Some(4014));
                    break;
                }
                Ok(_) => continue,
                Err(e) => panic!("expected 4014 after the grace period: {e}"),
            }
        }
    }
    assert_eq!(server.metric("voice_channels"), 0.0);
    assert_eq!(server.metric("voice_states"), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_falls_as_sessions_fill_the_capacity() {
    let server = ServerProcess::start(1, &["--capacity-per-core", "4"]);
    let mut lvsp = identified(&server).await;
    let idle = lvsp.heartbeat().await.unwrap();
    assert_eq!(idle, 1.0);
    let _call = join_call(&server, &mut lvsp, GUILD, "800", &["4001", "4002", "4003"]).await;
    // Stats reach control every 250 ms.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let h = lvsp.heartbeat().await.unwrap();
        if h <= 0.25 + 1e-9 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "health stayed at {h}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Litecord's shipped client (litecord/voice/lvsp_conn.py): HELLO's interval
/// taken as seconds, IDENTIFY, heartbeats `{"s": 0}` after READY, INFO
/// CHANNEL_REQ then VST_CREATE (type 4) without waiting, and it closes with
/// 4000 on any op it has no handler for (1, 2, 4) or an INFO type outside
/// 0-6. Against the litecord dialect it must never see one of those.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn litecord_client_behaviour_against_the_litecord_dialect() {
    let server = ServerProcess::start(
        1,
        &["--lvsp-dialect", "litecord", "--lvsp-heartbeat-ms", "1000"],
    );
    let mut litecord = LvspClient::open(&server.lvsp_url).await.expect("HELLO");
    let interval = litecord.hello().heartbeat_interval;
    assert_eq!(interval, 1, "seconds in the litecord dialect");
    let token = identify_token(&server.secret, &litecord.hello().nonce);
    litecord.send_identify(&token).await.unwrap();
    litecord.wait_ready().await.expect("READY");
    // Its heartbeater: sleep `interval` seconds, send {"s": 0}, repeat.
    let writer = litecord.writer();
    let heartbeater = tokio::spawn(async move {
        for _ in 0..4 {
            tokio::time::sleep(Duration::from_secs(interval)).await;
            if writer
                .send_text(r#"{"op":4,"d":{"s":0}}"#.into())
                .await
                .is_err()
            {
                return;
            }
        }
    });
    let (channel, user_a, user_b) = ("900", "5001", "5002");
    for msg in [
        encode_info(0, json!({"guild_id": GUILD, "channel_id": channel})),
        encode_info(
            4,
            json!({"user_id": user_a, "guild_id": GUILD, "channel_id": channel}),
        ),
        encode_info(
            4,
            json!({"user_id": user_b, "guild_id": GUILD, "channel_id": channel}),
        ),
    ] {
        litecord.send_text(msg).await.unwrap();
    }
    // Read for three heartbeat intervals, as its loop would.
    let (mut token, mut sessions, mut acks) = (None, Vec::new(), 0);
    let until = tokio::time::Instant::now() + Duration::from_millis(3500);
    loop {
        let left = until.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            break;
        }
        match litecord.recv_timeout(left).await {
            Ok(LvspEvent::Message(ServerMessage::HeartbeatAck(Health { health }))) => {
                assert!((0.0..=1.0).contains(&health));
                acks += 1;
            }
            // Only CHANNEL_ASSIGN (1) and VOICE_STATE_DONE (4) decode as
            // INFOs; any other type (Litecord closes on those above 6)
            // arrives as `Other` and fails below.
            Ok(LvspEvent::Message(ServerMessage::Info { reply, .. })) => match reply {
                Reply::ChannelAssign(assign) => token = Some(assign.token),
                Reply::VoiceStateDone(done) => sessions.push(done.session_id),
            },
            Ok(other) => panic!("Litecord has no handler for {other:?}"),
            Err(ClientError::Timeout(_)) => break,
            Err(e) => panic!("connection failed: {e}"),
        }
    }
    assert!(acks >= 2, "{acks} heartbeats acknowledged");
    let token = token.expect("CHANNEL_ASSIGN");
    assert_eq!(sessions.len(), 2);

    // The channel works for voice clients.
    let mut call = Vec::new();
    for (user, session) in [user_a, user_b].iter().zip(&sessions) {
        call.push(
            scripts::VoiceClient::join(
                &server.gateway_url,
                4,
                GUILD,
                user,
                session,
                &token,
                scripts::Mode::Aes256GcmRtpSize,
            )
            .await
            .expect("join"),
        );
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_call_flows(&mut call, 5, "litecord").await;

    // CHANNEL_UPDATE (2) and VST_UPDATE (5): accepted, no reply; VST_LEAVE
    // (6) closes that member with 4014; CHANNEL_DESTROY (3) ends the rest.
    litecord
        .send_text(encode_info(
            2,
            json!({"guild_id": GUILD, "channel_id": channel}),
        ))
        .await
        .unwrap();
    litecord
        .send_text(encode_info(
            5,
            json!({"user_id": user_a, "guild_id": GUILD, "channel_id": channel}),
        ))
        .await
        .unwrap();
    litecord
        .send_text(encode_info(
            6,
            json!({"user_id": user_a, "guild_id": GUILD, "channel_id": channel}),
        ))
        .await
        .unwrap();
    server.wait_metrics(Duration::from_secs(5), "VST_LEAVE", |s| {
        s.metric("voice_states") == 1.0
    });
    litecord
        .send_text(encode_info(
            3,
            json!({"guild_id": GUILD, "channel_id": channel}),
        ))
        .await
        .unwrap();
    server.wait_metrics(Duration::from_secs(5), "CHANNEL_DESTROY", |s| {
        s.metric("voice_channels") == 0.0
    });
    heartbeater.abort();
    assert_eq!(
        server.metric("voice_closes_total{protocol=\"gateway\",code=\"4014\"}"),
        2.0
    );
}
