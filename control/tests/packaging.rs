//! The packaging in `packaging/`: the systemd unit passes `systemd-analyze
//! verify` without a warning, the container file copies what exists and
//! exposes the ports the example configuration uses, and `several.sh`
//! runs several servers side by side that all answer.

mod support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn the_systemd_unit_verifies_cleanly() {
    let unit = std::fs::read_to_string(repo().join("packaging/voice-server.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/local/bin/control"));
    // Verified against this build (systemd checks that the binary exists).
    let dir = std::env::temp_dir().join(format!("voice-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("voice-server.service");
    let bin = env!("CARGO_BIN_EXE_control");
    std::fs::write(&path, unit.replace("/usr/local/bin/control", bin)).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap_or_else(|e| panic!("systemd-analyze is needed (apt-get install -y systemd): {e}"));
    std::fs::remove_dir_all(&dir).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.trim().is_empty(), "warnings: {stderr}");
}

#[test]
fn the_container_file_matches_the_repository() {
    let file = std::fs::read_to_string(repo().join("packaging/Containerfile")).unwrap();
    for line in file
        .lines()
        .filter(|l| l.starts_with("COPY ") && !l.contains("--from"))
    {
        let source = line.split_whitespace().nth(1).unwrap();
        assert!(
            repo().join(source).exists(),
            "{line}: {source} is not in the repository"
        );
    }
    assert!(file.contains("--bin control") && file.contains("/usr/local/bin/control"));
    assert!(file.contains("USER 65534"), "runs unprivileged");
    // The ports it exposes are the example configuration's.
    let example = std::fs::read_to_string(repo().join("config/voice.example.toml")).unwrap();
    for (key, port) in [
        ("lvsp_listen", "5470/tcp"),
        ("gateway_listen", "5480/tcp"),
        ("udp_bind", "5490/udp"),
        ("metrics_listen", "5491/tcp"),
    ] {
        let number = port.split('/').next().unwrap();
        assert!(
            example
                .lines()
                .any(|l| l.starts_with(key) && l.contains(number)),
            "{key} is not on {number}"
        );
        assert!(file.contains(port), "EXPOSE {port}");
    }
}

#[test]
fn several_servers_run_side_by_side() {
    let dir = std::env::temp_dir().join(format!(
        "voice-several-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let first = 20_000 + (rand::random::<u16>() % 20_000);
    let mut script = Command::new("bash")
        .arg(repo().join("packaging/several.sh"))
        .arg("2")
        .arg(&dir)
        .env("CONTROL_BIN", env!("CARGO_BIN_EXE_control"))
        .env("VOICE_BASE_PORT", first.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(script.stdout.take().unwrap()).lines();
    let mut metrics = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(url) = line.trim().strip_prefix("metrics: http://") {
            metrics.push(url.trim_end_matches("/metrics").to_owned());
        }
        if line.starts_with("secret in VOICE_SECRET") || Instant::now() > deadline {
            break;
        }
    }
    let answers: Vec<String> = metrics
        .iter()
        .map(|m| support::http_get(m, "/health"))
        .collect();
    // Stopping the script stops the servers.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(script.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = script.wait().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(
        metrics,
        [first + 21, first + 121].map(|p| format!("127.0.0.1:{p}")),
        "status {status}"
    );
    for answer in answers {
        assert!(answer.contains("\"health\""), "{answer}");
    }
    for m in &metrics {
        assert!(
            std::net::TcpStream::connect(m).is_err(),
            "{m} still answers"
        );
    }
}
