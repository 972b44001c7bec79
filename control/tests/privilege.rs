//! Least privilege on the real processes: started as an unprivileged user
//! (nobody) with only CAP_NET_BIND_SERVICE, control binds a port below
//! 1024, and once serving neither it nor its data plane holds any
//! capability in any thread (and no_new_privs is set), while a call goes
//! through. Run by someone other than root, the same checks hold on its
//! own unprivileged processes.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use scripts::LvspClient;
use support::{control_bin, ServerProcess};

/// Every thread of `pid`: (Uid line, CapInh, CapPrm, CapEff, CapAmb,
/// NoNewPrivs).
fn threads(pid: u32) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let status =
            std::fs::read_to_string(task.unwrap().path().join("status")).unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.split_whitespace().next().unwrap_or("").to_owned())
                .unwrap_or_default()
        };
        out.push(
            [
                "Uid:",
                "CapInh:",
                "CapPrm:",
                "CapEff:",
                "CapAmb:",
                "NoNewPrivs:",
            ]
            .map(field)
            .to_vec(),
        );
    }
    out
}

/// Waits until every thread of `pid` runs as `uid` with no capability and
/// no_new_privs (threads drop theirs as they next wake).
fn assert_unprivileged(pid: u32, uid: u32, what: &str) {
    let zero = "0000000000000000";
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let all = threads(pid);
        let bad: Vec<&Vec<String>> = all
            .iter()
            .filter(|t| t[0] != uid.to_string() || t[1..5].iter().any(|c| c != zero) || t[5] != "1")
            .collect();
        if bad.is_empty() && !all.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: threads still privileged: {bad:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A free TCP port below 1024 on loopback (root only).
fn low_port() -> u16 {
    (900..1024)
        .find(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .expect("a free port below 1024")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn it_serves_without_any_capability() {
    let root = nix::unistd::geteuid().is_root();
    let gateway = if root {
        format!("127.0.0.1:{}", low_port())
    } else {
        "127.0.0.1:0".to_owned()
    };
    let mut args: Vec<String> = support::loopback_args(1);
    let at = args.iter().position(|a| a == "--gateway-listen").unwrap();
    args[at + 1] = gateway.clone();
    let (command, uid) = if root {
        // nobody, with CAP_NET_BIND_SERVICE only (ambient: kept across
        // exec, as systemd's AmbientCapabilities= gives it).
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
            "--inh-caps=-all,+net_bind_service",
            "--ambient-caps=-all,+net_bind_service",
            "--",
        ])
        .arg(control_bin());
        (c, 65534)
    } else {
        (Command::new(control_bin()), nix::unistd::geteuid().as_raw())
    };
    let server = ServerProcess::start_command(command, &args);
    if root {
        assert!(
            server.gateway_url.ends_with(&gateway),
            "{}",
            server.gateway_url
        );
    }
    assert_unprivileged(server.pid(), uid, "control");
    let dataplane = server.metric("voice_dataplane_pid") as u32;
    assert!(dataplane > 0);
    assert_unprivileged(dataplane, uid, "data plane");

    let (mut lvsp, _) = LvspClient::connect(&server.lvsp_url, &server.secret)
        .await
        .expect("LVSP");
    let users = ["80351110224678912", "80351110224678913"];
    let mut members = support::join_call(&server, &mut lvsp, "1", "2", &users).await;
    support::assert_call_flows(&mut members, 3, "unprivileged").await;
    drop(members);
    assert!(server.stop().success());
}
