//! Control supervises its dataplane: killed in the middle of a call, it is
//! started again on the same port, gets every session pushed again, and the
//! call goes on without any client doing anything.

mod support;

use std::time::Duration;

use scripts::LvspClient;
use support::{assert_talkers_heard, join_call, ServerProcess};

const GUILD: &str = "41771983423143936";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_dataplane_is_restarted_and_the_call_goes_on() {
    let server = ServerProcess::start(2, &[]);
    let (mut lvsp, _) = LvspClient::connect(&server.lvsp_url, &server.secret)
        .await
        .expect("LVSP");
    // Two talkers and a member who never sends.
    let mut call = join_call(&server, &mut lvsp, GUILD, "1500", &["9001", "9002", "9003"]).await;
    assert_talkers_heard(&mut call, 2, 5, "before").await;

    let pid = server.metric("voice_dataplane_pid") as i32;
    assert!(pid > 0, "the dataplane's pid is published");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the dataplane");
    server.wait_metrics(Duration::from_secs(20), "the dataplane restarted", |s| {
        s.metric("voice_dataplane_restarts_total") == 1.0 && s.metric("voice_dataplane_pid") > 0.0
    });
    assert_ne!(server.metric("voice_dataplane_pid") as i32, pid);

    // Same port, same SSRCs and keys: the silent member hears the talkers
    // without having sent anything to the new dataplane.
    assert_talkers_heard(&mut call, 2, 5, "after").await;
    assert_eq!(server.metric("voice_sessions"), 3.0);
    assert!(lvsp.heartbeat().await.is_ok(), "control never went away");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dataplane_whose_control_dies_stops_and_removes_the_region() {
    let server = ServerProcess::start(1, &[]);
    let pid = nix::unistd::Pid::from_raw(server.metric("voice_dataplane_pid") as i32);
    let (shm, udp) = (server.shm.clone(), server.udp);
    assert!(shm.exists());
    server.kill();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    // Running means: /proc has one of its threads that is not a zombie
    // (the main thread can be a zombie waiting for a reaper, whoever
    // adopted it, while its other threads still exit and hold its sockets).
    let running = || {
        std::fs::read_dir(format!("/proc/{pid}/task")).is_ok_and(|tasks| {
            tasks.flatten().any(|task| {
                std::fs::read_to_string(task.path().join("stat")).is_ok_and(|stat| {
                    stat.rsplit(')')
                        .next()
                        .is_some_and(|rest| !rest.trim_start().starts_with('Z'))
                })
            })
        })
    };
    // Both, within the deadline: the process gone and its region removed.
    while running() || shm.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "after control died: dataplane running {}, {} exists {}",
            running(),
            shm.display(),
            shm.exists()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // And the port free: the kernel lets go of a socket an exited
    // process's io_uring still referenced when it tears the ring down,
    // asynchronously, a few milliseconds after the exit.
    while let Err(e) = std::net::UdpSocket::bind(udp) {
        assert!(
            std::time::Instant::now() < deadline,
            "the port is not free: {e}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A panic in one core must not leave that core's socket dead in the
/// reuseport group while the others run on: the dataplane aborts, and
/// supervision starts a fresh one with the whole state (fault injected
/// through the dataplane's test hook, a datagram that makes core 1 panic).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_core_ends_the_dataplane_and_supervision_restarts_it() {
    // An RTP-looking datagram for SSRC 3: steered to core 1 of 2.
    const FAULT: &str = "8078000100000000000000036661756c74";
    let server = ServerProcess::start_with(support::control_bin(), 2, &[], |c| {
        c.env(dataplane::core::FAULT_ENV, FAULT);
    });
    let (mut lvsp, _) = LvspClient::connect(&server.lvsp_url, &server.secret)
        .await
        .expect("LVSP");
    let mut call = join_call(&server, &mut lvsp, GUILD, "1600", &["9101", "9102"]).await;
    assert_talkers_heard(&mut call, 2, 3, "before").await;
    let pid = server.metric("voice_dataplane_pid");
    let bytes: Vec<u8> = (0..FAULT.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&FAULT[i..i + 2], 16).unwrap())
        .collect();
    let probe = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    probe.send_to(&bytes, server.udp).unwrap();
    server.wait_metrics(Duration::from_secs(20), "the dataplane restarted", |s| {
        s.metric("voice_dataplane_restarts_total") == 1.0
            && s.metric("voice_dataplane_pid") > 0.0
            && s.metric("voice_dataplane_pid") != pid
    });
    assert_talkers_heard(&mut call, 2, 3, "after").await;
}
