//! Hostile traffic against the real processes on loopback, as an attacker
//! without credentials would send it (issue 8): a stranger who knows a
//! member's SSRC, a reflector probe, a replayed capture, someone reading
//! the shared memory, and a garbage flood during a call.

mod support;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use scripts::flood::{call_under_flood, CallUnderFlood, FloodConfig};
use scripts::rtp::RtpHeader;
use scripts::udp::{discovery_request, keepalive, parse_discovery_response};
use scripts::{LvspClient, VoiceClient};
use support::{join_call, ServerProcess};
use tokio::net::UdpSocket;

const GUILD: &str = "41771983423143936";

/// A socket of someone with no session, aimed at the voice port.
async fn stranger(server: SocketAddr) -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    s.connect(server).await.unwrap();
    s
}

/// Datagrams `socket` receives within `wait`.
async fn drain(socket: &UdpSocket, wait: Duration) -> Vec<Vec<u8>> {
    let mut got = Vec::new();
    let mut buf = [0u8; 2048];
    while let Ok(Ok(n)) = tokio::time::timeout(wait, socket.recv(&mut buf)).await {
        got.push(buf[..n].to_vec());
    }
    got
}

/// The talker sends `n` packets tagged `tag`; returns how many the
/// listener got.
async fn heard(talker: &mut VoiceClient, listener: &mut VoiceClient, n: usize, tag: &str) -> usize {
    for k in 0..n {
        talker
            .udp
            .send_opus(format!("{tag} {k}").as_bytes())
            .await
            .unwrap();
    }
    let mut got = std::collections::BTreeSet::new();
    while got.len() < n {
        match listener.udp.recv_timeout(Duration::from_secs(2)).await {
            Ok(p) if p.ssrc == talker.ssrc() && p.payload.starts_with(tag.as_bytes()) => {
                got.insert(p.payload);
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    got.len()
}

/// The stream hijack: IP discovery for the member's SSRC from a stranger's
/// address, then the dataplane dies and control pushes its state again.
/// Only a proven address is pushed: the member keeps every packet and the
/// stranger gets none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoofed_discovery_then_a_dataplane_restart_redirects_nothing() {
    let server = ServerProcess::start(2, &[]);
    let (mut lvsp, _) = LvspClient::connect(&server.lvsp_url, &server.secret)
        .await
        .unwrap();
    let mut call = join_call(&server, &mut lvsp, GUILD, "2100", &["8001", "8002"]).await;
    let evil = stranger(server.udp).await;
    let member_ssrc = call[1].ssrc();
    evil.send(&discovery_request(member_ssrc)).await.unwrap();
    let replies = drain(&evil, Duration::from_millis(300)).await;
    assert_eq!(replies.len(), 1, "discovery is answered, once");
    assert_eq!(replies[0].len(), 74, "never larger than the request");
    assert_eq!(
        parse_discovery_response(&replies[0]).unwrap().addr,
        evil.local_addr().unwrap()
    );
    // Let the observation reach control, then kill the dataplane.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let pid = server.metric("voice_dataplane_pid") as i32;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    server.wait_metrics(Duration::from_secs(20), "the dataplane restarted", |s| {
        s.metric("voice_dataplane_restarts_total") == 1.0 && s.metric("voice_dataplane_pid") > 0.0
    });
    let (talker, member) = call.split_at_mut(1);
    let (talker, member) = (&mut talker[0], &mut member[0]);
    // The restarted dataplane has the state once the member hears again.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while heard(talker, member, 1, "probe").await == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the call never came back:\n{}",
            support::http_get(&server.metrics, "/metrics")
                .lines()
                .filter(|l| !l.starts_with('#') && !l.ends_with(" 0"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    assert_eq!(heard(talker, member, 50, "after").await, 50);
    let stolen = drain(&evil, Duration::from_millis(300)).await;
    assert!(
        stolen.is_empty(),
        "the stranger got {} packets",
        stolen.len()
    );
}

/// The reflector probe and the replayed capture.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_echo_for_strangers_and_replays_move_nothing() {
    let server = ServerProcess::start(2, &[]);
    let (mut lvsp, _) = LvspClient::connect(&server.lvsp_url, &server.secret)
        .await
        .unwrap();
    let mut call = join_call(&server, &mut lvsp, GUILD, "2200", &["8101", "8102"]).await;
    let evil = stranger(server.udp).await;

    // Keepalives and any 8 bytes from a socket that belongs to no session:
    // nothing comes back.
    for i in 0..20u32 {
        evil.send(&keepalive(i)).await.unwrap();
        evil.send(&[0xAB; 8]).await.unwrap();
    }
    assert!(drain(&evil, Duration::from_millis(300)).await.is_empty());
    // A member's keepalive is echoed (whichever core the kernel picks).
    call[1].udp.keepalive().await.unwrap();
    call[1]
        .udp
        .keepalive_echo(Duration::from_secs(2))
        .await
        .expect("a member's keepalive comes back");

    // A captured packet replayed from another address: not forwarded, and
    // the talker's address stays (if it moved to the stranger, the
    // listener's packets to the talker would go to the stranger).
    let (talker, listener) = call.split_at_mut(1);
    let (talker, listener) = (&mut talker[0], &mut listener[0]);
    let header = RtpHeader::opus(4000, 96_000, talker.ssrc());
    let captured = talker.udp.seal(&header, b"captured").unwrap();
    talker.udp.send_raw(&captured).await.unwrap();
    let first = listener
        .udp
        .recv_timeout(Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!(first.payload, b"captured");
    for _ in 0..5 {
        evil.send(&captured).await.unwrap();
        talker.udp.send_raw(&captured).await.unwrap();
    }
    let extra = listener.udp.recv_timeout(Duration::from_millis(500)).await;
    assert!(extra.is_err(), "a replay was forwarded: {extra:?}");
    talker.udp.set_rtp_state(4001, 96_960);
    assert_eq!(heard(listener, talker, 10, "back").await, 10);
    assert!(drain(&evil, Duration::from_millis(300)).await.is_empty());
    server.wait_metrics(Duration::from_secs(5), "refusals counted", |s| {
        s.metric_sum("voice_drops_total", "reason=\"unbound\"") >= 20.0
            && s.metric_sum("voice_drops_total", "reason=\"replay\"") >= 10.0
    });
}

/// The region is private and never holds a session key after the core
/// took it: not while the session lives, not after it left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_region_is_private_and_holds_no_keys() {
    let server = ServerProcess::start(2, &[]);
    let mode = std::fs::metadata(&server.shm).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{}", server.shm.display());
    let (mut lvsp, _) = LvspClient::connect(&server.lvsp_url, &server.secret)
        .await
        .unwrap();
    let call = join_call(&server, &mut lvsp, GUILD, "2300", &["8201", "8202"]).await;
    let keys: Vec<[u8; 32]> = call.iter().map(|c| c.key()).collect();
    let scan = |what: &str| {
        let region = std::fs::read(&server.shm).unwrap();
        for key in &keys {
            assert!(
                !region.windows(32).any(|w| w == key),
                "{what}: a session key is in the region"
            );
        }
    };
    // The keys crossed the region in the upserts, and were wiped when the
    // cores took them.
    tokio::time::sleep(Duration::from_millis(100)).await;
    scan("live");
    // The member leaves: its key is gone from everywhere in the region.
    lvsp.voice_state_destroy("8202", "2300", Some(GUILD))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    scan("after leaving");
}

/// As the README runs it: the region is an anonymous memfd, no file; after
/// SIGKILL of both processes nothing is left to read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_processes_leave_no_region_behind() {
    let server = ServerProcess::start_anonymous(1, &[]);
    assert!(server.shm.starts_with("/proc"), "{}", server.shm.display());
    let dataplane = server.metric("voice_dataplane_pid") as i32;
    let region = server.shm.clone();
    let target = std::fs::read_link(&region).unwrap();
    assert!(
        target.to_string_lossy().starts_with("/memfd:"),
        "{}",
        target.display()
    );
    // Neither process has any file under /dev/shm open.
    for pid in [server.pid() as i32, dataplane] {
        for fd in std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap() {
            let link = std::fs::read_link(fd.unwrap().path()).unwrap_or_default();
            assert!(!link.starts_with("/dev/shm"), "{pid}: {}", link.display());
        }
    }
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(dataplane),
        nix::sys::signal::Signal::SIGKILL,
    );
    server.kill();
    assert!(!region.exists());
}

/// A garbage flood at the highest rate one loopback sender reaches, during
/// a call: the call loses under 1% and health does not move.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_garbage_flood_does_not_hurt_the_call_or_health() {
    let server = ServerProcess::start(2, &[]);
    let outcome = call_under_flood(&CallUnderFlood {
        lvsp: server.lvsp_url.clone(),
        secret: server.secret.clone(),
        gateway: server.gateway_url.clone(),
        flood: FloodConfig {
            target: server.udp,
            duration: Duration::from_secs(3),
            max_packets: 10_000_000,
            sources: 8,
            seed: 8,
        },
        guild: GUILD.into(),
        channel: "2400".into(),
    })
    .await
    .unwrap();
    eprintln!(
        "flood {} datagrams at {:.0}/s; call {} of {} (loss {:.2}%); health {} -> {}",
        outcome.flood.sent,
        outcome.flood.rate(),
        outcome.received,
        outcome.sent,
        outcome.loss() * 100.0,
        outcome.health_before,
        outcome.health_during
    );
    assert!(outcome.flood.sent > 10_000, "{outcome:?}");
    assert!(outcome.loss() < 0.01, "{outcome:?}");
    assert!(
        outcome.health_during >= outcome.health_before - 0.05,
        "{outcome:?}"
    );
    let junk = server.metric_sum("voice_drops_total", "");
    assert!(junk > 10_000.0, "the junk is counted: {junk}");
}
