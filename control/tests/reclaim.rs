//! Reclaim over real sockets: Litecord stays connected and never sends
//! CHANNEL_DESTROY or VOICE_STATE_DESTROY, yet thousands of join, identify
//! and leave cycles (and voice states abandoned Litecord-style, a move
//! being a create elsewhere) leave the registry and the data plane with
//! the entries they started with once the idle times have passed.

mod support;

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use scripts::gateway::GatewayClient;
use scripts::{LvspClient, Mode};
use support::ServerProcess;

const GUILD: &str = "41771983423143936";
/// Litecord links working at once, each running its share of the cycles.
const LINKS: u64 = 4;
/// Join, identify, Select Protocol and leave cycles in all.
const CYCLES: u64 = 2_000;

/// `VmRSS` of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// The entries that must come back: the registry's channels, voice states
/// and sessions, and the sessions every data-plane core reports.
fn entries(server: &ServerProcess) -> [f64; 4] {
    [
        server.metric("voice_channels"),
        server.metric("voice_states"),
        server.metric("voice_sessions"),
        server.metric_sum("voice_dataplane_sessions", "core="),
    ]
}

/// One Litecord link's share: per cycle a fresh channel and voice state,
/// a member who identifies, selects a protocol and closes with 1000, and
/// the same user "moved" into another channel where it never identifies.
async fn churn(server: &ServerProcess, link: u64) {
    let (mut lvsp, _) = LvspClient::connect(&server.lvsp_url, &server.secret)
        .await
        .expect("LVSP identify");
    for i in (link..CYCLES).step_by(LINKS as usize) {
        let (channel, moved) = (format!("{}", 100_000 + i), format!("{}", 200_000 + i));
        let user = format!("{}", 300_000 + i);
        let token = lvsp.channel_req(&channel, Some(GUILD)).await.unwrap().token;
        let session = lvsp
            .voice_state_create(&user, &channel, Some(GUILD))
            .await
            .unwrap()
            .session_id;
        let mut gateway = GatewayClient::connect(&server.gateway_url, 8)
            .await
            .unwrap();
        gateway
            .identify(GUILD, &user, &session, &token)
            .await
            .unwrap_or_else(|e| panic!("cycle {i}: {e}"));
        let local = IpAddr::V4(Ipv4Addr::LOCALHOST);
        gateway
            .select_protocol(local, 9, Mode::Aes256GcmRtpSize)
            .await
            .unwrap();
        gateway.close(1000).await.unwrap();
        lvsp.channel_req(&moved, Some(GUILD)).await.unwrap();
        lvsp.voice_state_create(&user, &moved, Some(GUILD))
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_returns_every_entry_while_litecord_stays() {
    let server = ServerProcess::start(
        2,
        &[
            "--voice-state-idle-secs",
            "1",
            "--channel-idle-secs",
            "1",
            "--gateway-leave-grace-ms",
            "100",
        ],
    );
    server.wait_metrics(Duration::from_secs(10), "the cores' reports", |s| {
        s.metrics()
            .contains_key("voice_dataplane_sessions{core=\"1\"}")
    });
    let dataplane = server.metric("voice_dataplane_pid") as u32;
    let start = entries(&server);
    let rss_before = (rss_kib(server.pid()), rss_kib(dataplane));
    // Litecord stays connected throughout: the orphan expiry never runs.
    let (_litecord, _) = LvspClient::connect(&server.lvsp_url, &server.secret)
        .await
        .unwrap();

    let began = Instant::now();
    let server = std::sync::Arc::new(server);
    let tasks: Vec<_> = (0..LINKS)
        .map(|link| {
            let server = server.clone();
            tokio::spawn(async move { churn(&server, link).await })
        })
        .collect();
    for task in tasks {
        task.await.expect("churn");
    }
    let churned = began.elapsed();
    let server = std::sync::Arc::into_inner(server).expect("tasks done");
    let peak = entries(&server);

    server.wait_metrics(Duration::from_secs(20), "every entry reclaimed", |s| {
        entries(s) == start && s.metric("voice_connections{protocol=\"lvsp\"}") == 1.0
    });
    let reclaimed =
        |what: &str| server.metric(&format!("voice_reclaimed_total{{what=\"{what}\"}}"));
    assert_eq!(
        reclaimed("session"),
        CYCLES as f64,
        "every leave, past its grace"
    );
    assert_eq!(reclaimed("voice_state"), 2.0 * CYCLES as f64);
    assert_eq!(reclaimed("channel"), 2.0 * CYCLES as f64);
    assert_eq!(
        server.metric("voice_connections{protocol=\"lvsp\"}"),
        1.0,
        "Litecord never left"
    );
    let rss_after = (rss_kib(server.pid()), rss_kib(dataplane));
    println!(
        "churn: {CYCLES} cycles in {churned:?}; entries (channels, voice states, sessions, \
         data-plane sessions) {start:?} at start, {peak:?} right after, {:?} at the end; \
         RSS control {} KiB -> {} KiB, dataplane {} KiB -> {} KiB",
        entries(&server),
        rss_before.0,
        rss_after.0,
        rss_before.1,
        rss_after.1,
    );
}
