//! The configuration file on the real binary: the example file starts the
//! server, flags win over the environment, which wins over the file, which
//! wins over the defaults (`--print-config` shows each setting and where
//! it came from, the secret masked), and a bad file is refused with its
//! line and key, never its values.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::{control_bin, ServerProcess};

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/voice.example.toml")
}

fn temp_file(name: &str, text: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!(
        "voice-config-{}-{}-{name}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::write(&path, text).unwrap();
    path
}

/// `control` with `args` and `env`, nothing else from this process's
/// VOICE_ variables.
fn control(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut command = Command::new(control_bin());
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("VOICE_")) {
        command.env_remove(k);
    }
    command.args(args).envs(env.iter().copied());
    command.output().expect("run control")
}

#[test]
fn the_server_starts_from_the_example_file() {
    let example = example();
    let server = ServerProcess::start(1, &["--config", example.to_str().unwrap()]);
    let health = support::http_get(&server.metrics, "/health");
    assert!(health.contains("\"health\""), "{health}");
    let status = server.stop();
    assert!(status.success(), "{status}");
}

#[test]
fn flags_beat_the_environment_which_beats_the_file() {
    let secret = "file-secret-0123456789abcdef0123456789abcdef";
    let file = temp_file(
        "layers.toml",
        &format!(
            "gateway_rate = 4.0\nudp_idle_secs = 9\nlvsp_rate = 50\nsecret = \"{secret}\"\n\
             modes = [\"aead_xchacha20_poly1305_rtpsize\"]\ndrain_restart = true\n"
        ),
    );
    let out = control(
        &[
            "--config",
            file.to_str().unwrap(),
            "--udp-idle-secs",
            "7",
            "--print-config",
        ],
        &[("VOICE_GATEWAY_RATE", "3"), ("VOICE_UDP_IDLE_SECS", "8")],
    );
    std::fs::remove_file(&file).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shown = String::from_utf8(out.stdout).unwrap();
    for line in [
        "udp_idle_secs = 7  # flag",
        "gateway_rate = 3  # environment",
        "lvsp_rate = 50  # file",
        "modes = [\"aead_xchacha20_poly1305_rtpsize\"]  # file",
        "drain_restart = true  # file",
        "secret = \"********\"  # file",
        "gateway_burst = 60  # default",
        "# cores = (none)  # unset",
    ] {
        assert!(
            shown.lines().any(|l| l == line),
            "{line:?} not in:\n{shown}"
        );
    }
    assert!(!shown.contains(secret), "the secret is masked");
    // The secret from the environment is masked too, and --config itself
    // may come from the environment.
    let file = temp_file("env.toml", "lvsp_rate = 51\n");
    let out = control(
        &["--print-config"],
        &[
            ("VOICE_SECRET", secret),
            ("VOICE_CONFIG", file.to_str().unwrap()),
        ],
    );
    std::fs::remove_file(&file).unwrap();
    let shown = String::from_utf8(out.stdout).unwrap();
    assert!(
        shown.contains("secret = \"********\"  # environment"),
        "{shown}"
    );
    assert!(shown.contains("lvsp_rate = 51  # file"), "{shown}");
    assert!(!shown.contains(secret));
}

#[test]
fn a_bad_file_is_refused_with_its_line_and_key() {
    let cases = [
        (
            "rate.toml",
            "lvsp_rate = 5\n\nbogus = 1\n",
            ":3: bogus: unknown setting",
        ),
        (
            "addr.toml",
            "udp_bind = \"hunter2-secret\"\n",
            ":1: udp_bind: invalid value",
        ),
        (
            "dave.toml",
            "dave = \"sometimes\"\n",
            ":1: dave: invalid value",
        ),
        (
            "flag.toml",
            "drain_restart = 1\n",
            ":1: drain_restart: expected true or false",
        ),
        ("syntax.toml", "\nsecret = \"hunter2 \n", ": line 2: "),
    ];
    for (name, text, expected) in cases {
        let file = temp_file(name, text);
        let out = control(&["--config", file.to_str().unwrap(), "--print-config"], &[]);
        std::fs::remove_file(&file).unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name} accepted");
        assert!(
            stderr.contains(&format!("{name}{expected}")),
            "{name}: {stderr}"
        );
        assert!(
            !stderr.contains("hunter2") && !stderr.contains("sometimes"),
            "{stderr}"
        );
    }
    let out = control(&["--config", "/nonexistent/voice.toml"], &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/voice.toml"));
}
