//! Control supervises its dataplane: killed in the middle of a call, it is
//! started again on the same port, gets every session pushed again, and the
//! call goes on without any client doing anything.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use scripts::{LvspClient, VoiceClient};
use support::{join_call, ServerProcess};

const GUILD: &str = "41771983423143936";

/// Talkers send `n` packets each; every other member, the silent listener
/// included, receives exactly those.
async fn talk(members: &mut [VoiceClient], talkers: usize, n: usize, tag: &str) {
    for (i, m) in members.iter_mut().enumerate().take(talkers) {
        for k in 0..n {
            m.udp
                .send_opus(format!("{tag} {i} {k}").as_bytes())
                .await
                .expect("send");
        }
    }
    let ssrcs: Vec<u32> = members.iter().map(|m| m.ssrc()).collect();
    for (i, m) in members.iter_mut().enumerate() {
        let expected: BTreeSet<(u32, Vec<u8>)> = (0..talkers)
            .filter(|t| *t != i)
            .flat_map(|t| (0..n).map(move |k| (t, k)))
            .map(|(t, k)| (ssrcs[t], format!("{tag} {t} {k}").into_bytes()))
            .collect();
        let mut got = BTreeSet::new();
        while got.len() < expected.len() {
            match m.udp.recv_timeout(Duration::from_secs(5)).await {
                Ok(p) => {
                    got.insert((p.ssrc, p.payload));
                }
                Err(e) => panic!(
                    "{tag}: member {i} got {} of {}: {e}",
                    got.len(),
                    expected.len()
                ),
            }
        }
        assert_eq!(got, expected, "{tag}: member {i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_dataplane_is_restarted_and_the_call_goes_on() {
    let server = ServerProcess::start(2, &[]);
    let (mut lvsp, _) = LvspClient::connect(&server.lvsp_url, &server.secret)
        .await
        .expect("LVSP");
    // Two talkers and a member who never sends.
    let mut call = join_call(&server, &mut lvsp, GUILD, "1500", &["9001", "9002", "9003"]).await;
    talk(&mut call, 2, 5, "before").await;

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
    talk(&mut call, 2, 5, "after").await;
    assert_eq!(server.metric("voice_sessions"), 3.0);
    assert!(lvsp.heartbeat().await.is_ok(), "control never went away");
}
