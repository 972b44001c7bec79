//! Drain on real sockets: a signal or `POST /drain` makes health read 0
//! while the calls go on; the process exits by itself (status 0) when the
//! last member leaves, or at the drain deadline after closing the members
//! left with 4015 (a restart follows) or 4014.

mod support;

use std::time::{Duration, Instant};

use scripts::gateway::GatewayEvent;
use scripts::lvsp::LvspClient;
use scripts::{ClientError, VoiceClient};
use support::{http_post, join_call, ServerProcess};

const GUILD: &str = "41771983423143936";

/// SIGUSR1 to control.
fn sigusr1(server: &ServerProcess) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(server.pid() as i32),
        nix::sys::signal::Signal::SIGUSR1,
    )
    .expect("SIGUSR1");
}

/// Reads `client`'s gateway until the server closes it; the close code.
async fn close_code(client: &mut VoiceClient, wait: Duration) -> Option<u16> {
    let until = tokio::time::Instant::now() + wait;
    loop {
        let left = until.saturating_duration_since(tokio::time::Instant::now());
        match client.gateway.next_event_timeout(left).await {
            Ok(GatewayEvent::Closed(code)) | Err(ClientError::Closed(code)) => return code,
            Ok(_) => continue,
            Err(e) => panic!("expected a close, got {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_server_exits_when_the_last_member_leaves() {
    // A member who closes with 1000 may resume within the leave grace:
    // short here, so that the exit follows the leave closely.
    let mut server = ServerProcess::start(1, &["--gateway-leave-grace-ms", "300"]);
    let (mut lvsp, ready) = LvspClient::connect(&server.lvsp_url, &server.secret)
        .await
        .expect("LVSP");
    assert!(ready.health > 0.0, "a fresh server reports health");
    let call = join_call(&server, &mut lvsp, GUILD, "1600", &["9101", "9102"]).await;
    assert_eq!(server.metric("voice_draining"), 0.0);

    sigusr1(&server);
    server.wait_metrics(Duration::from_secs(5), "draining", |s| {
        s.metric("voice_draining") == 1.0
    });
    assert_eq!(server.metric("voice_health"), 0.0);
    assert_eq!(lvsp.heartbeat().await.expect("HEARTBEAT_ACK"), 0.0);
    let (_second, ready) = LvspClient::connect(&server.lvsp_url, &server.secret)
        .await
        .expect("a new LVSP link");
    assert_eq!(ready.health, 0.0, "READY");
    // Litecord may still insist on a new channel here.
    let assign = lvsp
        .channel_req("1601", Some(GUILD))
        .await
        .expect("CHANNEL_ASSIGN while draining");
    assert_eq!(assign.token.len(), 32);
    // The call goes on: both members still in it a while later.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(server.running(), "members are still in a call");
    assert_eq!(server.metric("voice_sessions"), 2.0);

    call[0].gateway.close(1000).await.expect("close");
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(server.running(), "one member is left");
    let left = Instant::now();
    call[1].gateway.close(1000).await.expect("close");
    let status = server
        .wait_exit(Duration::from_secs(10))
        .expect("control exits by itself once the last member left");
    assert!(status.success(), "{status}");
    assert!(
        left.elapsed() < Duration::from_secs(5),
        "{:?}",
        left.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_deadline_closes_members_with_4015_when_a_restart_follows() {
    let mut server = ServerProcess::start(1, &["--drain-deadline-secs", "2"]);
    let (mut lvsp, _) = LvspClient::connect(&server.lvsp_url, &server.secret)
        .await
        .expect("LVSP");
    let mut call = join_call(&server, &mut lvsp, GUILD, "1700", &["9201", "9202"]).await;

    let (status, body) = http_post(&server.metrics, "/drain?restart=maybe");
    assert!(status.contains("400"), "{status}");
    assert_eq!(
        server.metric("voice_draining"),
        0.0,
        "a bad request drains nothing"
    );
    let asked = Instant::now();
    let (status, body2) = http_post(&server.metrics, "/drain?restart=true");
    assert!(status.contains("202"), "{status} {body}");
    assert!(body2.contains("\"restart\":true"), "{body2}");
    assert_eq!(lvsp.heartbeat().await.expect("HEARTBEAT_ACK"), 0.0);

    for client in &mut call {
        assert_eq!(
            close_code(client, Duration::from_secs(10)).await,
            Some(4015)
        );
    }
    let waited = asked.elapsed();
    assert!(
        waited >= Duration::from_millis(1900),
        "not before the deadline: {waited:?}"
    );
    let status = server
        .wait_exit(Duration::from_secs(10))
        .expect("control exits after the deadline");
    assert!(status.success(), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_deadline_closes_members_with_4014_when_nothing_follows() {
    let mut server = ServerProcess::start(1, &["--drain-deadline-secs", "1"]);
    let (mut lvsp, _) = LvspClient::connect(&server.lvsp_url, &server.secret)
        .await
        .expect("LVSP");
    let mut call = join_call(&server, &mut lvsp, GUILD, "1800", &["9301"]).await;
    sigusr1(&server);
    assert_eq!(
        close_code(&mut call[0], Duration::from_secs(10)).await,
        Some(4014)
    );
    let status = server
        .wait_exit(Duration::from_secs(10))
        .expect("control exits after the deadline");
    assert!(status.success(), "{status}");
}
