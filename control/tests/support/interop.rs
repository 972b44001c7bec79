//! What the interoperability tests with real third-party clients share
//! (`interop_discordjs.rs`, `interop_python.rs`): the call's ids, the Opus
//! frames each side sends, the client scripts as children speaking JSON
//! lines, the server with a certificate of the test's own, and Litecord's
//! side of the call.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use scripts::{HeartbeatTask, LvspClient};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use crate::support::ServerProcess;

pub const GUILD: &str = "41771983423143936";
pub const CHANNEL: &str = "41771983423143937";
/// This project's client.
pub const RUST_USER: &str = "80351110224678912";
/// The (first) @discordjs/voice client.
pub const DJS_USER: &str = "80351110224678913";
/// Frames each side sends.
pub const FRAMES: usize = 25;
/// The Opus silence frame both libraries send after their audio ends.
pub const SILENCE_FRAME: [u8; 3] = [0xF8, 0xFF, 0xFE];

/// The `n`th frame of sender `tag`: a CELT-only fullband 20 ms TOC byte
/// (0xF8, one frame) and a distinct body, so every frame is a well-formed
/// Opus packet and differs from every other and from the silence frame.
pub fn opus_frame(tag: u8, n: usize) -> Vec<u8> {
    let mut f = vec![0xF8, tag, n as u8];
    f.extend((0..37).map(|i| (i * 11 + n * 3 + tag as usize) as u8));
    f
}

pub fn hex_frames(frames: &[Vec<u8>]) -> Vec<String> {
    frames.iter().map(hex::encode).collect()
}

pub fn interop_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop")
}

/// Node and the pinned npm project, installed on a first run (`cargo
/// test` alone must run the whole suite; the lockfile fixes every
/// version). Fails, never skips, when node is missing.
pub fn check_node() {
    let setup = "install Node.js and npm (`apt-get install -y nodejs npm` when \
                 missing) and run `npm ci --prefix control/tests/interop` from the \
                 repository root (.ci/run does both)";
    match std::process::Command::new("node").arg("--version").output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!("`node --version` failed ({}): {setup}", out.status),
        Err(e) => panic!("node is not available ({e}): {setup}"),
    }
    let installed = interop_dir().join("node_modules/@discordjs/voice/package.json");
    if !installed.exists() {
        let status = std::process::Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--prefix"])
            .arg(interop_dir())
            .status();
        assert!(
            matches!(status, Ok(s) if s.success()),
            "npm ci failed ({status:?}): {setup}"
        );
    }
    assert!(
        installed.exists(),
        "{} is missing: {setup}",
        installed.display()
    );
}

/// A client script (node or Python) as a child: its stdin (commands of
/// the scripts' "session" scenario), its JSON lines on stdout and a task
/// collecting its stderr.
pub struct Script {
    pub name: &'static str,
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Lines<BufReader<ChildStdout>>,
    stderr: tokio::task::JoinHandle<String>,
}

impl Script {
    /// @discordjs/voice (`discordjs_client.mjs`) with `params`, trusting
    /// `cert`.
    pub fn node(cert: &Path, params: &Value) -> Script {
        let mut command = Command::new("node");
        command
            .arg(interop_dir().join("discordjs_client.mjs"))
            .env("DISCORDJS_PARAMS", params.to_string())
            .env("NODE_EXTRA_CA_CERTS", cert);
        Script::spawn("discordjs_client.mjs", command)
    }

    /// `command` (run in the interop directory), killed when dropped.
    pub fn spawn(name: &'static str, mut command: Command) -> Script {
        let mut child = command
            .current_dir(interop_dir())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let mut err = child.stderr.take().expect("stderr");
        let stderr = tokio::spawn(async move {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s).await;
            s
        });
        Script {
            name,
            child,
            stdin,
            stdout,
            stderr,
        }
    }

    /// Sends a command of the "session" scenario and waits for the event
    /// that answers it.
    pub async fn ask(
        &mut self,
        command: Value,
        answer: &str,
        wait: Duration,
    ) -> Result<Value, String> {
        let stdin = self.stdin.as_mut().ok_or("stdin closed")?;
        stdin
            .write_all(format!("{command}\n").as_bytes())
            .await
            .map_err(|e| format!("writing to {}: {e}", self.name))?;
        self.event(answer, wait).await
    }

    /// The next JSON line on stdout whose `event` is `event`.
    pub async fn event(&mut self, event: &str, wait: Duration) -> Result<Value, String> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let line = tokio::time::timeout_at(deadline, self.stdout.next_line())
                .await
                .map_err(|_| format!("no {event:?} line within {wait:?}"))?
                .map_err(|e| format!("reading {}'s stdout: {e}", self.name))?
                .ok_or_else(|| format!("{}'s stdout ended before a {event:?} line", self.name))?;
            let Ok(v) = serde_json::from_str::<Value>(&line) else {
                continue; // not one of ours
            };
            if v["event"] == event {
                return Ok(v);
            }
        }
    }

    /// Waits (bounded) for a successful exit.
    pub async fn exited(&mut self, wait: Duration) -> Result<(), String> {
        match tokio::time::timeout(wait, self.child.wait()).await {
            Ok(Ok(status)) if status.success() => Ok(()),
            Ok(Ok(status)) => Err(format!("exited with {status}")),
            Ok(Err(e)) => Err(format!("wait: {e}")),
            Err(_) => Err(format!("still running after {wait:?}")),
        }
    }

    /// Kills the child and returns what it printed on stderr.
    pub async fn stderr(mut self) -> String {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
        tokio::time::timeout(Duration::from_secs(5), self.stderr)
            .await
            .map(|r| r.unwrap_or_default())
            .unwrap_or_default()
    }

    /// Panics with the script's stderr attached.
    pub async fn failed(self, what: String) -> ! {
        let name = self.name;
        let stderr = self.stderr().await;
        panic!("{what}\n--- {name} stderr ---\n{stderr}");
    }
}

/// The server with TLS and a certificate of the test's own (the clients
/// trust exactly it), and a short heartbeat interval, so that the clients
/// heartbeat (v8 shape, with seq_ack) several times in a call (discord.js
/// drops a connection whose heartbeats go unacknowledged three times in a
/// row).
pub fn start(extra: &[&str]) -> (ServerProcess, PathBuf) {
    let cert = std::env::temp_dir().join(format!(
        "voice-interop-cert-{}-{}.pem",
        std::process::id(),
        rand::random::<u32>()
    ));
    let cert_arg = cert.to_string_lossy().into_owned();
    let mut args = vec![
        "--self-signed-cert",
        &cert_arg,
        "--gateway-heartbeat-ms",
        "250",
    ];
    args.extend_from_slice(extra);
    let server = ServerProcess::start(1, &args);
    assert!(
        server.gateway_url.starts_with("wss://"),
        "{}",
        server.gateway_url
    );
    let cert = server
        .cert
        .clone()
        .expect("the server printed its certificate");
    (server, cert)
}

/// Litecord's side: its link (heartbeating), the channel's token, and a
/// voice state per user (its session id).
pub struct Litecord {
    _link: (LvspClient, HeartbeatTask),
    pub token: String,
    pub sessions: HashMap<&'static str, String>,
}

pub async fn litecord(server: &ServerProcess, users: &[&'static str]) -> Litecord {
    let (mut lvsp, _) = LvspClient::connect(&server.lvsp_url, &server.secret)
        .await
        .expect("LVSP identify");
    let heartbeat = lvsp.spawn_heartbeat(lvsp.heartbeat_interval());
    let assign = lvsp.channel_req(CHANNEL, Some(GUILD)).await;
    let token = assign.expect("CHANNEL_ASSIGN").token;
    let mut sessions = HashMap::new();
    for user in users {
        let done = lvsp.voice_state_create(user, CHANNEL, Some(GUILD)).await;
        sessions.insert(*user, done.expect("VOICE_STATE_DONE").session_id);
    }
    Litecord {
        _link: (lvsp, heartbeat),
        token,
        sessions,
    }
}

/// Both directions at once: `rust` sends `frames` every 20 ms while
/// receiving what the client with `peer_ssrc` sends, until it sent them
/// all and received `expected` packets, then for 300 ms more to catch any
/// extra. Err (what was missing) after 20 s.
pub async fn exchange(
    rust: &mut scripts::VoiceClient,
    frames: &[Vec<u8>],
    peer_ssrc: u32,
    expected: usize,
) -> Result<Vec<scripts::ReceivedPacket>, String> {
    use std::time::Instant;
    let mut got: Vec<scripts::ReceivedPacket> = Vec::new();
    let mut sent = 0;
    let mut next_send = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(20);
    while sent < frames.len() || got.len() < expected {
        let now = Instant::now();
        if now > deadline {
            let heads: Vec<_> = got
                .iter()
                .map(|p| (p.seq, hex::encode(&p.payload[..p.payload.len().min(3)])))
                .collect();
            return Err(format!(
                "sent {sent} of {}; received {} of {expected} frames: {heads:?}",
                frames.len(),
                got.len(),
            ));
        }
        if sent < frames.len() && now >= next_send {
            rust.udp.send_opus(&frames[sent]).await.expect("send opus");
            sent += 1;
            next_send += Duration::from_millis(20);
            continue;
        }
        let wait = if sent < frames.len() {
            next_send.saturating_duration_since(now)
        } else {
            deadline.saturating_duration_since(now)
        };
        match rust
            .udp
            .recv_timeout(wait.max(Duration::from_millis(1)))
            .await
        {
            Ok(p) => {
                assert_eq!(p.ssrc, peer_ssrc, "a packet from an unknown SSRC");
                got.push(p);
            }
            Err(scripts::ClientError::Timeout(_)) => {}
            Err(e) => panic!("receiving: {e}"),
        }
    }
    while let Ok(p) = rust.udp.recv_timeout(Duration::from_millis(300)).await {
        got.push(p);
    }
    Ok(got)
}

/// Waits for the Client Disconnect (op 13) of `user` at `rust`: how long
/// after `since` it came, and every event before it. Err after 3 s
/// without an event.
pub async fn left(
    rust: &mut scripts::VoiceClient,
    user: &str,
    since: std::time::Instant,
) -> Result<(Duration, Vec<scripts::GatewayEvent>), String> {
    use scripts::gateway::ServerMessage;
    let mut events = Vec::new();
    loop {
        match rust
            .gateway
            .next_event_timeout(Duration::from_secs(3))
            .await
        {
            Ok(scripts::GatewayEvent::Message(ServerMessage::ClientDisconnect(c)))
                if c.user_id.to_string() == user =>
            {
                return Ok((since.elapsed(), events));
            }
            Ok(event) => events.push(event),
            Err(e) => return Err(format!("no Client Disconnect: {e}")),
        }
    }
}
