//! Floods against the session layer, on the real binaries over real
//! sockets (issue 9, items 3-5): unidentified connections flooding JSON
//! before Identify, a member re-identifying on new sockets and speaking in
//! a loop, and LVSP IDENTIFY guessing. In each, a legitimate member keeps a
//! heartbeat round trip under 10 ms at the median, joins succeed and
//! Litecord's LVSP link keeps working.
//!
//! Each test prints one `FLOOD ...` line with its figures (run with
//! `--nocapture` to see them); `CONTROL_BIN=<path>` runs the same floods
//! against another build of control, e.g. the one before a change.
//! Bounded: every flood lasts [`FLOOD`] and caps its counts; the tests run
//! one at a time so their figures do not mix.

#[path = "support/flood_sessions.rs"]
mod flood;
mod support;

use std::time::{Duration, Instant};

use protocol::Snowflake;
use scripts::gateway::{GatewayClient, GatewayEvent, ServerMessage};
use scripts::{ClientError, LvspClient};
use serde_json::json;
use support::{assert_call_flows, join_call, ServerProcess, SECRET};

const GUILD: &str = "41771983423143936";

/// How long each flood lasts.
const FLOOD: Duration = Duration::from_secs(4);

/// The median heartbeat round trip a member must keep under a flood.
const RTT_BOUND_MS: f64 = 10.0;

/// One flood at a time: they share two cores.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn litecord(server: &ServerProcess) -> LvspClient {
    LvspClient::connect(&server.lvsp_url, SECRET)
        .await
        .expect("LVSP identify")
        .0
}

/// Litecord's link works: a heartbeat, a new channel, a voice state.
async fn litecord_works(lvsp: &mut LvspClient, channel: &str) {
    lvsp.heartbeat().await.expect("LVSP heartbeat");
    lvsp.channel_req(channel, Some(GUILD))
        .await
        .expect("CHANNEL_ASSIGN");
    lvsp.voice_state_create("99", channel, Some(GUILD))
        .await
        .expect("VOICE_STATE_DONE");
}

/// 20 unidentified connections (20 source addresses) send three small
/// heartbeats and one 60 KiB heartbeat whose payload is an array of
/// numbers, over and over, reconnecting 100 ms after each close. Before
/// the fix every message was parsed under the registry lock (60 per
/// connection before the rate limit closed it) and its payload echoed
/// back; now a large frame before Identify is closed unparsed and
/// heartbeats before Identify never take the lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preauth_json_flood_leaves_calls_and_litecord_alone() {
    let _serial = SERIAL.lock().await;
    let server = ServerProcess::start(1, &[]);
    let tls = flood::tls(server.cert.as_deref());
    let mut lvsp = litecord(&server).await;
    let mut call = join_call(&server, &mut lvsp, GUILD, "10100", &["10101", "10102"]).await;
    let quiet = Instant::now() + Duration::from_secs(1);
    let baseline =
        flood::heartbeat_rtts(&mut call[0].gateway, Duration::from_millis(50), 20, quiet).await;
    let cpu_before = flood::cpu_time(server.pid());
    let until = Instant::now() + FLOOD;
    let gateway_url = server.gateway_url.clone();
    let attack = flood::attack(move || async move {
        let pause = Duration::from_millis(100);
        flood::preauth_json_flood(&gateway_url, tls, 20, 3, 60 << 10, pause, until).await
    });
    let (rtts, late) = tokio::join!(
        async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            flood::heartbeat_rtts(&mut call[0].gateway, Duration::from_millis(100), 100, until)
                .await
        },
        async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let late = join_call(&server, &mut lvsp, GUILD, "10100", &["10103"]).await;
            litecord_works(&mut lvsp, "10110").await;
            late
        }
    );
    let stats = attack.await.expect("the flood ran");
    let cpu = flood::cpu_time(server.pid()).saturating_sub(cpu_before);
    let (base_median, _) = flood::median_max_ms(&baseline);
    let (median, max) = flood::median_max_ms(&rtts);
    eprintln!(
        "FLOOD pre-auth JSON: baseline rtt median {base_median:.2} ms; under flood rtt median \
         {median:.2} ms max {max:.2} ms ({} samples); control cpu {:.2} s in {:.0} s; \
         attackers: {} connections ({} refused), {} messages, {} MB, closes {:?}",
        rtts.len(),
        cpu.as_secs_f64(),
        FLOOD.as_secs_f64(),
        stats.connections,
        stats.refused,
        stats.messages,
        stats.bytes >> 20,
        stats.closes
    );
    assert!(stats.connections >= 20, "the flood ran: {stats:?}");
    assert!(rtts.len() >= 10, "{} samples", rtts.len());
    assert!(
        median < RTT_BOUND_MS,
        "median heartbeat round trip {median:.2} ms under the flood"
    );
    call.extend(late);
    assert_call_flows(&mut call, 3, "after the pre-auth flood").await;
    litecord_works(&mut lvsp, "10111").await;
}

/// A member identifies on a new socket, sends 40 Speaking messages, makes
/// the server close it (so it leaves and joins again: Client Disconnect
/// and Clients Connect for everyone), and repeats for the whole flood, at
/// a budget of 100 messages/s. Meanwhile another member is parked. Before
/// the fix the flood filled the parked member's resume buffer (256) and
/// its Resume failed with 4006; now only the flooder's latest Speaking and
/// latest join are kept for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnecting_speaking_flood_cannot_evict_a_parked_members_messages() {
    let _serial = SERIAL.lock().await;
    let server = ServerProcess::start(1, &["--gateway-rate", "100", "--gateway-burst", "100"]);
    let mut lvsp = litecord(&server).await;
    let channel = "10200";
    let mut call = join_call(&server, &mut lvsp, GUILD, channel, &["10201", "10202"]).await;
    let token = lvsp.channel_req(channel, Some(GUILD)).await.unwrap().token;
    let parked_session = lvsp
        .voice_state_create("10201", channel, Some(GUILD))
        .await
        .unwrap()
        .session_id;
    let flooder_session = lvsp
        .voice_state_create("10203", channel, Some(GUILD))
        .await
        .unwrap()
        .session_id;
    // 10201's websocket goes away: parked, its messages kept for a Resume.
    call[0].stop_heartbeat();
    let seq_ack = call[0].gateway.seq_ack();
    call[0].gateway.close(1001).await.unwrap();
    server.wait_metrics(Duration::from_secs(5), "the session parked", |s| {
        s.metric("voice_sessions_parked") == 1.0
    });
    let cpu_before = flood::cpu_time(server.pid());
    let until = Instant::now() + FLOOD;
    let gateway_url = server.gateway_url.clone();
    let attack = flood::attack({
        let (token, session) = (token.clone(), flooder_session.clone());
        move || async move {
            flood::reconnecting_speaking_flood(
                &gateway_url,
                GUILD,
                "10203",
                &session,
                &token,
                40,
                500,
                until,
            )
            .await
        }
    });
    let witness = &mut call[1];
    let (rtts, late) = tokio::join!(
        flood::heartbeat_rtts(&mut witness.gateway, Duration::from_millis(100), 100, until),
        async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let late = join_call(&server, &mut lvsp, GUILD, channel, &["10204"]).await;
            litecord_works(&mut lvsp, "10210").await;
            late
        }
    );
    let stats = attack.await.expect("the flood ran");
    let cpu = flood::cpu_time(server.pid()).saturating_sub(cpu_before);

    // The parked member comes back.
    let mut back = GatewayClient::connect(&server.gateway_url, 8)
        .await
        .unwrap();
    back.send_json(
        &json!({"op": 7, "d": {"server_id": GUILD, "session_id": parked_session,
        "token": token, "seq_ack": seq_ack}}),
    )
    .await
    .unwrap();
    let mut events = Vec::new();
    let resumed = loop {
        match back.next_event_timeout(Duration::from_secs(5)).await {
            Ok(GatewayEvent::Message(ServerMessage::Resumed)) => break Ok(()),
            Ok(GatewayEvent::Closed(code)) | Err(ClientError::Closed(code)) => break Err(code),
            Ok(_) => continue,
            Err(e) => panic!("no answer to Resume: {e}"),
        }
    };
    while resumed.is_ok() {
        match back.next_event_timeout(Duration::from_millis(500)).await {
            Ok(GatewayEvent::Closed(_)) | Err(_) => break,
            Ok(e) => events.push(e),
        }
    }
    let (median, max) = flood::median_max_ms(&rtts);
    eprintln!(
        "FLOOD reconnecting Speaking: {} identifies ({} ready), {} Speaking sent, closes {:?}; \
         witness rtt median {median:.2} ms max {max:.2} ms ({} samples); control cpu {:.2} s; \
         parked member's Resume: {}, {} messages re-delivered",
        stats.identifies,
        stats.ready,
        stats.speaking,
        stats.closes,
        rtts.len(),
        cpu.as_secs_f64(),
        match resumed {
            Ok(()) => "Resumed".to_string(),
            Err(code) => format!("closed {code:?}"),
        },
        events.len()
    );
    assert!(stats.speaking >= 300, "the flood ran: {stats:?}");
    assert_eq!(resumed, Ok(()), "the parked member resumes");
    assert!(
        events.iter().any(|e| matches!(e,
            GatewayEvent::Message(ServerMessage::Speaking(s)) if s.user_id == Snowflake(10203))),
        "it learns the flooder's latest Speaking: {events:?}"
    );
    assert!(
        events.iter().any(|e| matches!(e,
            GatewayEvent::Message(ServerMessage::ClientsConnect(c))
                if c.user_ids.contains(&Snowflake(10204)))),
        "it learns who joined while it was away: {events:?}"
    );
    assert!(
        events.len() <= 16,
        "one member's flood takes a bounded share: {events:?}"
    );
    assert!(median < RTT_BOUND_MS, "witness median {median:.2} ms");
    let _ = late;
}

/// The same flooder at the default budget (10/s, bursts of 60): identifying
/// again on new sockets does not refill its budget, so the other members
/// receive at most a burst and the sustained rate of its Speaking. Before
/// the fix each new socket brought a fresh burst.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reidentifying_does_not_refill_the_message_budget() {
    let _serial = SERIAL.lock().await;
    let server = ServerProcess::start(1, &[]);
    let mut lvsp = litecord(&server).await;
    let channel = "10300";
    let mut call = join_call(&server, &mut lvsp, GUILD, channel, &["10301"]).await;
    let token = lvsp.channel_req(channel, Some(GUILD)).await.unwrap().token;
    let session = lvsp
        .voice_state_create("10303", channel, Some(GUILD))
        .await
        .unwrap()
        .session_id;
    let start = Instant::now();
    let until = start + Duration::from_secs(3);
    let gateway_url = server.gateway_url.clone();
    let attack = flood::attack(move || async move {
        flood::reconnecting_speaking_flood(
            &gateway_url,
            GUILD,
            "10303",
            &session,
            &token,
            30,
            200,
            until,
        )
        .await
    });
    let mut heard = 0u64;
    let listen_until = until + Duration::from_millis(500);
    while Instant::now() < listen_until {
        match call[0]
            .gateway
            .next_event_timeout(listen_until.saturating_duration_since(Instant::now()))
            .await
        {
            Ok(GatewayEvent::Message(ServerMessage::Speaking(s)))
                if s.user_id == Snowflake(10303) =>
            {
                heard += 1
            }
            Ok(GatewayEvent::Closed(code)) => panic!("the member was closed: {code:?}"),
            _ => continue,
        }
    }
    let stats = attack.await.expect("the flood ran");
    let elapsed = (until - start).as_secs_f64();
    // A burst of 60 and 10/s, less the Identify and the malformed frame
    // of each round, plus a little slack for timing.
    let allowed = 60.0 + 10.0 * elapsed + 10.0;
    eprintln!(
        "FLOOD budget: {} identifies ({} ready), {} Speaking sent in {elapsed:.1} s, {heard} \
         relayed to the other member (allowed {allowed:.0}), closes {:?}",
        stats.identifies, stats.ready, stats.speaking, stats.closes
    );
    assert!(stats.speaking >= 100, "the flood ran: {stats:?}");
    assert!(
        (heard as f64) <= allowed,
        "{heard} Speaking relayed, budget {allowed:.0}"
    );
    litecord_works(&mut lvsp, "10310").await;
}

/// IDENTIFY guessing from one address, as fast as it goes: after 3
/// failures the address is refused unchecked (4001) for a window that
/// doubles, even with the right secret; every checked failure is logged
/// with its address (at a bounded rate); Litecord, from another address,
/// keeps its link and a member keeps its heartbeat round trip.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identify_guessing_is_backed_off_and_litecord_keeps_working() {
    let _serial = SERIAL.lock().await;
    let log = std::env::temp_dir().join(format!(
        "voice-guessing-{}-{}.log",
        std::process::id(),
        rand::random::<u32>()
    ));
    let file = std::fs::File::create(&log).unwrap();
    let server = ServerProcess::start_with(support::control_bin(), 1, &[], |c| {
        c.stderr(file);
    });
    let tls = flood::tls(server.cert.as_deref());
    let attacker = flood::attacker_addr(100);
    let mut lvsp = litecord(&server).await;
    let mut call = join_call(&server, &mut lvsp, GUILD, "10400", &["10401", "10402"]).await;
    let cpu_before = flood::cpu_time(server.pid());
    let until = Instant::now() + FLOOD;
    let (lvsp_url, attacker_tls) = (server.lvsp_url.clone(), tls.clone());
    let attack = flood::attack(move || async move {
        flood::identify_guessing(&lvsp_url, attacker_tls, attacker, 20_000, until).await
    });
    let (rtts, late) = tokio::join!(
        flood::heartbeat_rtts(&mut call[0].gateway, Duration::from_millis(100), 100, until),
        async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            litecord_works(&mut lvsp, "10410").await;
            // Litecord reconnecting meanwhile identifies at once.
            let (mut again, _) = LvspClient::connect(&server.lvsp_url, SECRET)
                .await
                .expect("Litecord identifies during the guessing");
            again.heartbeat().await.unwrap();
            join_call(&server, &mut again, GUILD, "10400", &["10403"]).await
        }
    );
    let stats = attack.await.expect("the guessing ran");
    let cpu = flood::cpu_time(server.pid()).saturating_sub(cpu_before);
    // The attacker's address is still backing off: the right secret from
    // it is refused unchecked.
    let with_secret = flood::identify_from(&server.lvsp_url, tls, attacker, SECRET).await;
    let failures = server.metric("voice_lvsp_auth_failures_total");
    let refused = server.metric("voice_lvsp_auth_refused_total");
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let logged = text
        .lines()
        .filter(|l| l.contains("LVSP authentication failed") && l.contains(&attacker.to_string()))
        .count();
    let (median, max) = flood::median_max_ms(&rtts);
    eprintln!(
        "FLOOD IDENTIFY guessing: {} guesses in {:.0} s from {attacker}, closes {:?}; \
         {failures} checked, {refused} refused unchecked; {logged} failure lines logged; right \
         secret from that address: {with_secret:?}; member rtt median {median:.2} ms max \
         {max:.2} ms; control cpu {:.2} s",
        stats.guesses,
        FLOOD.as_secs_f64(),
        stats.closes,
        cpu.as_secs_f64()
    );
    let _ = std::fs::remove_file(&log);
    assert!(stats.guesses >= 20, "the guessing ran: {stats:?}");
    assert_eq!(
        stats.closes.keys().copied().collect::<Vec<_>>(),
        vec![4001],
        "every guess is closed with 4001"
    );
    // 3 free failures, then windows of 1, 2, 4 s: at most a handful of
    // guesses are checked in the flood's 4 s.
    assert!(failures <= 7.0, "{failures} guesses checked");
    assert_eq!(failures + refused, stats.guesses as f64 + 1.0);
    assert_eq!(
        with_secret,
        Some(4001),
        "refused unchecked while backing off"
    );
    assert!(
        logged >= 1 && logged as f64 <= failures,
        "{logged} log lines for {failures} failures"
    );
    assert!(median < RTT_BOUND_MS, "member median {median:.2} ms");
    call.extend(late);
    assert_call_flows(&mut call, 3, "after the guessing").await;
}
