//! No secret in any output: the LVSP secret is printed only when the
//! server generated it, a short one is refused at start-up without being
//! shown, and a whole call at RUST_LOG=trace leaves no secret, token,
//! session id or key in the log.

mod support;

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use scripts::lvsp::{identify_token, LvspClient};
use scripts::{Mode, VoiceClient};
use support::{control_bin, ServerProcess, SECRET};

const GUILD: &str = "41771983423143936";

/// The arguments of a control on free loopback ports, without `--secret`.
fn base_args(shm: &str) -> Vec<String> {
    let mut args = support::loopback_args(1);
    args.extend(["--shm", shm].map(str::to_owned));
    args
}

/// A control started by hand, killed (with its region removed) if the test
/// fails before stopping it.
struct Spawned(std::process::Child, String);

impl Drop for Spawned {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
        let _ = std::fs::remove_file(&self.1);
    }
}

fn shm_path() -> String {
    format!(
        "/dev/shm/voice-secrets-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    )
}

#[test]
fn an_operator_secret_is_never_printed() {
    let server = ServerProcess::start(1, &[]);
    assert!(server.printed.contains_key("lvsp"));
    assert!(
        !server.printed.contains_key("secret"),
        "printed: {:?}",
        server.printed
    );
    assert!(server.printed.values().all(|v| !v.contains(SECRET)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generated_secret_is_printed_long_and_works() {
    let shm = shm_path();
    let child = Command::new(control_bin())
        .args(base_args(&shm))
        .env("RUST_LOG", "warn")
        .env_remove("VOICE_SECRET")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn control");
    let mut child = Spawned(child, shm);
    let stdout = child.0.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut printed = std::collections::HashMap::new();
    while !printed.contains_key("shm") {
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("control printed its addresses");
        if let Some((k, v)) = line.split_once(": ") {
            printed.insert(k.to_owned(), v.to_owned());
        }
    }
    let secret = printed
        .get("secret")
        .expect("a generated secret is printed");
    assert_eq!(secret.len(), 64, "{secret}");
    assert!(secret.bytes().all(|b| b.is_ascii_hexdigit()));
    scripts::trust_certificate_file(&printed["cert"]).unwrap();
    let (mut lvsp, _) = LvspClient::connect(&printed["lvsp"], secret)
        .await
        .expect("the printed secret identifies");
    assert!(lvsp.heartbeat().await.is_ok());
    let pid = nix::unistd::Pid::from_raw(child.0.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = child.0.wait().unwrap();
    assert!(status.success(), "{status}");
}

#[test]
fn a_short_secret_is_refused_without_being_shown() {
    let shm = shm_path();
    let short = "short-but-not-empty-XYZ";
    let mut args = base_args(&shm);
    args.extend(["--secret".into(), short.into()]);
    let child = Command::new(control_bin())
        .args(args)
        .env("RUST_LOG", "trace")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn control");
    let mut child = Spawned(child, shm.clone());
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "control started with a short secret"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut out = String::new();
    let mut err = String::new();
    child
        .0
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    child
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(!status.success());
    assert!(err.contains("at least 32 characters"), "{err}");
    assert!(!err.contains(short) && !out.contains(short), "{out}\n{err}");
    assert!(!out.contains("ready"), "{out}");
    assert!(!std::path::Path::new(&shm).exists());
}

/// A whole call (LVSP identify and requests, two members identifying,
/// selecting a mode, speaking, heartbeating, sending media) at
/// RUST_LOG=trace: nothing secret reaches the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_logs_carry_no_secrets() {
    let text = logged_call("human").await;
    assert!(
        text.contains("gateway{peer="),
        "gateway lines carry their span"
    );
}

/// The same call logged as JSON: every line is one JSON object, the
/// gateway's lines name the member, its channel and SSRC, and nothing
/// secret is in any of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_no_secrets_and_name_the_member() {
    let text = logged_call("json").await;
    let mut members = std::collections::BTreeSet::new();
    for line in text.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(
            v["level"].is_string() && v["timestamp"].is_string(),
            "{line}"
        );
        if v["span"]["name"] == "gateway" && v["fields"]["message"] == "identified" {
            let span = &v["span"];
            assert!(span["ssrc"].as_u64().is_some_and(|s| s != 0), "{line}");
            assert_eq!(span["channel"].as_u64(), Some(9100), "{line}");
            members.insert(span["user"].as_u64().unwrap());
        }
    }
    assert_eq!(members.into_iter().collect::<Vec<_>>(), [9101, 9102]);
}

/// Runs the call with control logging at trace in `format`; checks that
/// no secret reached the log and returns it.
async fn logged_call(format: &str) -> String {
    let log = std::env::temp_dir().join(format!(
        "voice-trace-{}-{}.log",
        std::process::id(),
        rand::random::<u32>()
    ));
    let file = std::fs::File::create(&log).unwrap();
    let server = ServerProcess::start_with(control_bin(), 1, &["--log-format", format], |c| {
        c.env("RUST_LOG", "trace").stderr(file);
    });
    let (mut lvsp, _) = LvspClient::connect(&server.lvsp_url, SECRET)
        .await
        .expect("LVSP");
    let mut secrets = vec![SECRET.to_owned()];
    // The IDENTIFY token of another connection (this one's is gone).
    let probe = LvspClient::open(&server.lvsp_url).await.unwrap();
    let token = identify_token(SECRET, &probe.hello().nonce);
    probe.send_identify(&token).await.unwrap();
    secrets.push(token);
    let channel = "9100";
    let assign = lvsp.channel_req(channel, Some(GUILD)).await.unwrap();
    secrets.push(assign.token.clone());
    let mut members = Vec::new();
    for user in ["9101", "9102"] {
        let done = lvsp
            .voice_state_create(user, channel, Some(GUILD))
            .await
            .unwrap();
        secrets.push(done.session_id.clone());
        let member = VoiceClient::join(
            &server.gateway_url,
            8,
            GUILD,
            user,
            &done.session_id,
            &assign.token,
            Mode::Aes256GcmRtpSize,
        )
        .await
        .unwrap();
        let key = member.key();
        secrets.push(hex::encode(key));
        // How the key appears in Session Description's JSON.
        let list: Vec<String> = key.iter().map(u8::to_string).collect();
        secrets.push(list.join(","));
        members.push(member);
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    members[0].gateway.speaking(1).await.unwrap();
    members[1].gateway.heartbeat().await.unwrap();
    support::assert_call_flows(&mut members, 3, "trace").await;
    lvsp.heartbeat().await.unwrap();
    drop(members);
    drop(lvsp);
    assert!(server.stop().success());
    let text = std::fs::read_to_string(&log).unwrap();
    let _ = std::fs::remove_file(&log);
    assert!(!text.is_empty(), "control logged something at trace");
    for secret in &secrets {
        if let Some(at) = text.find(secret.as_str()) {
            let line = text[..at].rfind('\n').map_or(0, |i| i + 1);
            let end = text[at..].find('\n').map_or(text.len(), |i| at + i);
            panic!("a secret reached the log:\n{}", &text[line..end]);
        }
    }
    text
}
