//! A control restart does not drop a call (real processes, real sockets):
//! control is SIGKILLed mid-call while a member sends a packet every 2 ms;
//! the data plane forwards on; a new control started on the same state
//! directory takes the data plane over; every member resumes with its SSRC
//! and Litecord reconnects. Then a planned stop (SIGTERM) closes the
//! gateways with 4015 and a third control takes over again. The test
//! measures the media gap across the kill.

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use scripts::gateway::{GatewayClient, GatewayEvent, ServerMessage};
use scripts::lvsp::LvspClient;
use scripts::udp::VoiceUdp;
use scripts::{ClientError, Mode, VoiceClient};
use serde_json::json;
use support::{join_call, ServerProcess};

const GUILD: &str = "41771983423143936";
const CHANNEL: &str = "1900";
const USERS: [&str; 3] = ["7001", "7002", "7003"];
/// Packets the talker sends across the kill, one every [`PACE`].
const PACKETS: usize = 1000;
const PACE: Duration = Duration::from_millis(2);

fn state_dir() -> PathBuf {
    std::env::temp_dir().join(format!(
        "voice-restart-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ))
}

/// A successor's command line: the same addresses, state and window.
fn successor_args(first: &ServerProcess, dir: &Path) -> Vec<String> {
    let host = |url: &str| url.rsplit("://").next().unwrap_or(url).to_owned();
    [
        "--lvsp-listen",
        &host(&first.lvsp_url),
        "--gateway-listen",
        &host(&first.gateway_url),
        "--metrics-listen",
        &first.metrics,
        "--udp-bind",
        &first.udp.to_string(),
        "--cores",
        "1",
        "--state-dir",
        &dir.to_string_lossy(),
        "--reattach-window-secs",
        "20",
    ]
    .map(str::to_owned)
    .to_vec()
}

/// A member whose gateway socket died with a control: the UDP half, the
/// credentials to resume, and the last `seq` it heard.
struct Member {
    user: &'static str,
    udp: VoiceUdp,
    session_id: String,
    seq_ack: i64,
    gateway: Option<GatewayClient>,
}

/// Resumes every member on `server` (a new socket, Resume with its
/// `seq_ack`): each gets Resumed.
async fn resume_all(server: &ServerProcess, token: &str, members: &mut [Member]) {
    for m in members.iter_mut() {
        let mut gateway = GatewayClient::connect(&server.gateway_url, 8)
            .await
            .expect("connect");
        gateway
            .send_json(&json!({"op": 7, "d": {"server_id": GUILD,
                "session_id": m.session_id, "token": token, "seq_ack": m.seq_ack}}))
            .await
            .expect("Resume");
        loop {
            match gateway.next_event_timeout(Duration::from_secs(5)).await {
                Ok(GatewayEvent::Message(ServerMessage::Resumed)) => break,
                Ok(_) => continue,
                Err(e) => panic!("{} resumes: {e}", m.user),
            }
        }
        m.gateway = Some(gateway);
    }
}

/// Every member says it speaks; every other member hears it with the SSRC
/// it had before the restart.
async fn speaking_names_the_same_ssrcs(members: &mut [Member]) {
    for m in members.iter() {
        let gateway = m.gateway.as_ref().unwrap();
        gateway
            .speaking_as(1, 0, m.udp.ssrc())
            .await
            .expect("Speaking");
    }
    for i in 0..members.len() {
        let mut heard = std::collections::BTreeMap::new();
        while heard.len() < members.len() - 1 {
            let gateway = members[i].gateway.as_mut().unwrap();
            match gateway.next_event_timeout(Duration::from_secs(5)).await {
                Ok(GatewayEvent::Message(ServerMessage::Speaking(s))) => {
                    heard.insert(s.user_id.to_string(), s.ssrc);
                }
                Ok(_) => continue,
                Err(e) => panic!("{} waits for Speaking: {e}", members[i].user),
            }
        }
        for (j, other) in members.iter().enumerate().filter(|(j, _)| *j != i) {
            assert_eq!(
                heard.get(other.user),
                Some(&other.udp.ssrc()),
                "{i} hears {j}"
            );
        }
    }
}

/// Member 0 sends `n` packets; the others receive each one.
async fn media_flows(members: &mut [Member], n: usize, tag: &str) {
    for k in 0..n {
        let payload = format!("{tag} {k}");
        members[0]
            .udp
            .send_opus(payload.as_bytes())
            .await
            .expect("send");
    }
    let talker = members[0].udp.ssrc();
    for m in &mut members[1..] {
        for k in 0..n {
            let p = m.udp.recv_timeout(Duration::from_secs(5)).await;
            let p = p.unwrap_or_else(|e| panic!("{tag}: {} got {k} of {n}: {e}", m.user));
            assert_eq!(
                (p.ssrc, p.payload),
                (talker, format!("{tag} {k}").into_bytes())
            );
        }
    }
}

/// The gateway's close code, skipping other events.
async fn closed_with(gateway: &mut GatewayClient) -> Option<u16> {
    loop {
        match gateway.next_event_timeout(Duration::from_secs(10)).await {
            Ok(GatewayEvent::Closed(code)) | Err(ClientError::Closed(code)) => return code,
            Ok(_) => continue,
            Err(e) => panic!("expected a close: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_control_is_taken_over_without_losing_a_packet() {
    let dir = state_dir();
    let args = [
        "--state-dir",
        &dir.to_string_lossy(),
        "--reattach-window-secs",
        "20",
    ];
    let first = ServerProcess::start_anonymous(1, &args);
    let mut lvsp = LvspClient::connect(&first.lvsp_url, &first.secret)
        .await
        .expect("LVSP")
        .0;
    let call = join_call(&first, &mut lvsp, GUILD, CHANNEL, &USERS).await;
    let token = lvsp.channel_req(CHANNEL, Some(GUILD)).await.unwrap().token;
    let dataplane = first.metric("voice_dataplane_pid") as u32;
    let mut members = Vec::new();
    for (user, client) in USERS.into_iter().zip(call) {
        // VOICE_STATE_CREATE again: the same session id.
        let session_id = lvsp
            .voice_state_create(user, CHANNEL, Some(GUILD))
            .await
            .unwrap()
            .session_id;
        let (gateway, udp, heartbeat) = client.into_parts();
        members.push(Member {
            user,
            udp,
            session_id,
            seq_ack: 0,
            gateway: Some(gateway),
        });
        drop(heartbeat);
    }
    media_flows(&mut members, 5, "before").await;
    // Let the save catch up with the last Select Protocol.
    tokio::time::sleep(Duration::from_millis(200)).await;

    // The listeners count what arrives and when, while the talker sends
    // across the kill and the successor's start.
    let mut listeners = Vec::new();
    for m in members.drain(1..) {
        listeners.push(tokio::spawn(async move {
            let mut m = m;
            let mut arrivals = Vec::new();
            while arrivals.len() < PACKETS {
                match m.udp.recv_timeout(Duration::from_secs(5)).await {
                    Ok(p) => arrivals.push((Instant::now(), p.payload)),
                    Err(_) => break,
                }
            }
            (m, arrivals)
        }));
    }
    let started = Instant::now();
    let send = |k: usize| format!("across {k}");
    for k in 0..PACKETS / 4 {
        members[0].udp.send_opus(send(k).as_bytes()).await.unwrap();
        tokio::time::sleep_until((started + PACE * (k as u32 + 1)).into()).await;
    }
    // SIGKILL control mid-call: its websockets die, the data plane lives;
    // the successor starts while the talker goes on.
    let second_args = successor_args(&first, &dir);
    first.kill();
    let starting = tokio::task::spawn_blocking(move || ServerProcess::start_exact(&second_args));
    let mut started_meanwhile = false;
    for k in PACKETS / 4..PACKETS {
        started_meanwhile |= starting.is_finished();
        members[0].udp.send_opus(send(k).as_bytes()).await.unwrap();
        tokio::time::sleep_until((started + PACE * (k as u32 + 1)).into()).await;
    }
    let second = starting.await.expect("the successor starts");
    assert!(
        started_meanwhile,
        "the successor started while media flowed"
    );
    assert_eq!(
        second.printed.get("restored").map(String::as_str),
        Some("channels=1 voice_states=3 sessions=3 dataplane=taken-over")
    );
    assert_eq!(
        second.metric("voice_dataplane_pid") as u32,
        dataplane,
        "the same data plane"
    );

    let mut worst_gap = Duration::ZERO;
    for listener in listeners {
        let (m, arrivals) = listener.await.unwrap();
        let expected: Vec<Vec<u8>> = (0..PACKETS).map(|k| send(k).into_bytes()).collect();
        let got: Vec<Vec<u8>> = arrivals.iter().map(|(_, p)| p.clone()).collect();
        assert_eq!(
            got.len(),
            PACKETS,
            "{} lost packets across the restart",
            m.user
        );
        assert_eq!(got, expected, "{}: every packet, in order", m.user);
        let gap = arrivals
            .windows(2)
            .map(|w| w[1].0 - w[0].0)
            .max()
            .unwrap_or_default();
        eprintln!(
            "restart: {} received {}/{PACKETS}, largest gap between packets {gap:?} (sent every {PACE:?})",
            m.user,
            got.len()
        );
        worst_gap = worst_gap.max(gap);
        members.push(m);
    }
    assert!(
        worst_gap < Duration::from_millis(500),
        "media paused {worst_gap:?}"
    );

    // Every member resumes on the new control, with its SSRC.
    for m in &mut members {
        let gateway = m.gateway.take().unwrap();
        m.seq_ack = gateway.seq_ack();
    }
    resume_all(&second, &token, &mut members).await;
    speaking_names_the_same_ssrcs(&mut members).await;
    media_flows(&mut members, 5, "after").await;

    // Litecord reconnects: the channel and voice states are there, the
    // same token and session ids; a newcomer joins the call.
    let mut lvsp = LvspClient::connect(&second.lvsp_url, &second.secret)
        .await
        .expect("LVSP on the successor")
        .0;
    assert_eq!(
        lvsp.channel_req(CHANNEL, Some(GUILD)).await.unwrap().token,
        token
    );
    for m in &members {
        let again = lvsp.voice_state_create(m.user, CHANNEL, Some(GUILD)).await;
        assert_eq!(again.unwrap().session_id, m.session_id);
    }
    let done = lvsp
        .voice_state_create("7004", CHANNEL, Some(GUILD))
        .await
        .unwrap();
    let mut newcomer = VoiceClient::join(
        &second.gateway_url,
        8,
        GUILD,
        "7004",
        &done.session_id,
        &token,
        Mode::Aes256GcmRtpSize,
    )
    .await
    .expect("a newcomer joins on the successor");
    tokio::time::sleep(Duration::from_millis(50)).await;
    members[0].udp.send_opus(b"to the newcomer").await.unwrap();
    let p = newcomer
        .udp
        .recv_timeout(Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(
        (p.ssrc, p.payload),
        (members[0].udp.ssrc(), b"to the newcomer".to_vec())
    );
    for m in &mut members[1..] {
        let p = m.udp.recv_timeout(Duration::from_secs(5)).await.unwrap();
        assert_eq!(p.payload, b"to the newcomer");
    }
    drop(newcomer);

    // A planned stop: the gateways are told to resume (4015), and a third
    // control takes over again.
    let third_args = successor_args(&second, &dir);
    let status = second.stop();
    assert!(status.success(), "{status}");
    for m in &mut members {
        let gateway = m.gateway.as_mut().unwrap();
        assert_eq!(closed_with(gateway).await, Some(4015), "{}", m.user);
        m.seq_ack = gateway.seq_ack();
    }
    let third = ServerProcess::start_exact(&third_args);
    assert_eq!(third.metric("voice_dataplane_pid") as u32, dataplane);
    resume_all(&third, &token, &mut members).await;
    media_flows(&mut members, 5, "third").await;

    // The adopted data plane dies: the control that took it over starts
    // its own on the same port and region, and pushes the calls into it.
    let pid = nix::unistd::Pid::from_raw(dataplane as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
    third.wait_metrics(Duration::from_secs(10), "a new data plane", |s| {
        s.metric("voice_dataplane_restarts_total") == 1.0
    });
    let replacement = third.metric("voice_dataplane_pid") as u32;
    assert_ne!(replacement, dataplane);
    tokio::time::sleep(Duration::from_millis(100)).await;
    media_flows(&mut members, 5, "replaced").await;

    // Cleanup: the data plane was started to outlive its control.
    drop(third);
    let pid = nix::unistd::Pid::from_raw(replacement as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Whether `pid` runs (not gone, not a zombie nobody reaped yet).
fn runs(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| Some(s[s.rfind(')')? + 2..].starts_with('Z')))
        .is_some_and(|zombie| !zombie)
}

/// How long after `since` the process `pid` stopped (up to `wait`).
fn stopped_after(pid: u32, since: Instant, wait: Duration) -> Option<Duration> {
    while since.elapsed() < wait {
        if !runs(pid) {
            return Some(since.elapsed());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

/// With nobody to take over, the data plane stops by itself once its
/// window ends (and at once without a state directory), leaving its port.
#[test]
fn without_a_successor_the_data_plane_stops_after_its_window() {
    let dir = state_dir();
    let args = [
        "--state-dir",
        &dir.to_string_lossy(),
        "--reattach-window-secs",
        "1",
    ];
    let server = ServerProcess::start_anonymous(1, &args);
    let (dataplane, udp) = (server.metric("voice_dataplane_pid") as u32, server.udp);
    let killed = Instant::now();
    server.kill();
    let stopped = stopped_after(dataplane, killed, Duration::from_secs(10))
        .expect("the data plane stops after its window");
    assert!(
        stopped >= Duration::from_secs(1),
        "it waited its window: {stopped:?}"
    );
    // Its port is free again (unless another test's server took it in the
    // meantime: tests run in parallel and bind any free port).
    if let Err(e) = std::net::UdpSocket::bind(udp) {
        eprintln!("port {udp} after the data plane stopped: {e}");
    }
    let _ = std::fs::remove_dir_all(&dir);

    let server = ServerProcess::start_anonymous(1, &[]);
    let dataplane = server.metric("voice_dataplane_pid") as u32;
    let killed = Instant::now();
    server.kill();
    let stopped = stopped_after(dataplane, killed, Duration::from_secs(5))
        .expect("without a state directory it stops with control");
    assert!(stopped < Duration::from_secs(1), "{stopped:?}");
}
