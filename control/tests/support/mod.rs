//! Runs the real `control` binary (which starts the data plane as its child
//! process) on
//! random loopback ports and reads what it prints.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// The LVSP secret the tests pass (`--secret`): long enough for the
/// server's 32-character floor. The server does not print a secret it was
/// given, so the tests use this one.
pub const SECRET: &str = "e2e-secret-e2e-secret-e2e-secret-e2e";

/// A running server: control plus its dataplane child.
pub struct ServerProcess {
    child: Child,
    /// `ws://127.0.0.1:port`
    pub lvsp_url: String,
    /// The LVSP shared secret.
    pub secret: String,
    /// `ws://127.0.0.1:port` (no path or query).
    pub gateway_url: String,
    /// The data plane's UDP address.
    pub udp: SocketAddr,
    /// `127.0.0.1:port` of the metrics endpoint.
    pub metrics: String,
    /// The shared-memory region's path (a 0600 file, or
    /// `/proc/<pid>/fd/<n>` for the default memfd).
    pub shm: std::path::PathBuf,
    /// The generated self-signed certificate (PEM), when serving TLS with one.
    pub cert: Option<std::path::PathBuf>,
    /// Every `key: value` line control printed at start-up.
    pub printed: HashMap<String, String>,
}

impl ServerProcess {
    /// Starts control on random ports with `cores` data-plane cores and
    /// its region in a file under /dev/shm (so tests can look at it).
    pub fn start(cores: u32, extra: &[&str]) -> ServerProcess {
        Self::start_with(control_bin(), cores, extra, |_| {})
    }

    /// [`ServerProcess::start`] with another `control` executable and a
    /// last say over the command (environment, stderr).
    pub fn start_with(
        program: std::path::PathBuf,
        cores: u32,
        extra: &[&str],
        customize: impl FnOnce(&mut Command),
    ) -> ServerProcess {
        Self::launch(Command::new(program), cores, extra, true, customize)
    }

    /// Like [`ServerProcess::start`], with the open-file limit of control
    /// (and its dataplane) set to `soft` and `hard`.
    pub fn start_with_open_files(
        cores: u32,
        extra: &[&str],
        soft: u64,
        hard: u64,
    ) -> ServerProcess {
        Self::launch(open_files_command(soft, hard), cores, extra, true, |_| {})
    }

    /// Starts control as the README does, with its region in the default
    /// anonymous memfd.
    pub fn start_anonymous(cores: u32, extra: &[&str]) -> ServerProcess {
        Self::launch(Command::new(control_bin()), cores, extra, false, |_| {})
    }

    /// Starts control (default anonymous region) with exactly `args` besides
    /// the secret: the caller picks every address (a successor on its
    /// predecessor's ports).
    pub fn start_exact(args: &[String]) -> ServerProcess {
        let mut command = Command::new(control_bin());
        command.args(args);
        Self::launch(command, 0, &[], false, |_| {})
    }

    /// Starts `command` (which runs control, say through `setpriv`) with
    /// exactly `args` besides the secret, region in the default memfd.
    pub fn start_command(mut command: Command, args: &[String]) -> ServerProcess {
        command.args(args);
        Self::launch(command, 0, &[], false, |_| {})
    }

    fn launch(
        mut command: Command,
        cores: u32,
        extra: &[&str],
        shm_file: bool,
        customize: impl FnOnce(&mut Command),
    ) -> ServerProcess {
        let shm = format!(
            "/dev/shm/voice-test-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        );
        if shm_file {
            command.args(["--shm", &shm]);
        }
        if cores > 0 {
            command.args(loopback_args(cores));
        }
        command
            .args(["--secret", SECRET])
            .args(extra)
            .env(
                "RUST_LOG",
                std::env::var("TEST_RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        customize(&mut command);
        let mut child = command.spawn().expect("spawn control");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut fields = HashMap::new();
        while !fields.contains_key("shm") {
            let line = match rx.recv_timeout(Duration::from_secs(60)) {
                Ok(line) => line,
                Err(e) => {
                    let _ = child.kill();
                    panic!("control did not print its addresses: {e}");
                }
            };
            if let Some((k, v)) = line.split_once(": ") {
                fields.insert(k.to_owned(), v.to_owned());
            }
        }
        if let Some(cert) = fields.get("cert") {
            scripts::trust_certificate_file(cert).expect("trust the server's certificate");
        }
        let gateway = fields["gateway"].trim_end_matches("/?v=8").to_owned();
        ServerProcess {
            child,
            lvsp_url: fields["lvsp"].clone(),
            secret: SECRET.to_owned(),
            gateway_url: gateway,
            udp: fields["udp"].parse().expect("udp address"),
            metrics: fields["metrics"]
                .trim_start_matches("http://")
                .trim_end_matches("/metrics")
                .to_owned(),
            shm: fields["shm"].clone().into(),
            cert: fields.get("cert").map(Into::into),
            printed: fields,
        }
    }

    /// Control's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `GET /metrics`, parsed into `name{labels}` → value.
    pub fn metrics(&self) -> HashMap<String, f64> {
        let body = http_get(&self.metrics, "/metrics");
        body.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .filter_map(|l| l.rsplit_once(' '))
            .filter_map(|(k, v)| Some((k.to_owned(), v.parse().ok()?)))
            .collect()
    }

    /// One metric, 0 when absent.
    pub fn metric(&self, key: &str) -> f64 {
        self.metrics().get(key).copied().unwrap_or(0.0)
    }

    /// Sum of a metric over all its label sets that contain `labels`.
    pub fn metric_sum(&self, name: &str, labels: &str) -> f64 {
        self.metrics()
            .iter()
            .filter(|(k, _)| k.starts_with(&format!("{name}{{")) && k.contains(labels))
            .map(|(_, v)| v)
            .sum()
    }

    /// Polls until `cond` holds on the metrics, or panics after `wait`.
    pub fn wait_metrics(&self, wait: Duration, what: &str, cond: impl Fn(&Self) -> bool) {
        let deadline = std::time::Instant::now() + wait;
        while !cond(self) {
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for {what}:\n{}",
                http_get(&self.metrics, "/metrics")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL: control dies without cleaning up anything.
    pub fn kill(mut self) {
        self.child.kill().expect("kill control");
        self.child.wait().expect("reap control");
    }

    /// Whether control is still running (it may exit by itself: a drain).
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits up to `wait` for control to exit by itself; its status, or
    /// None if it still runs.
    pub fn wait_exit(&mut self, wait: Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + wait;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, and the exit status.
    pub fn stop(mut self) -> std::process::ExitStatus {
        self.terminate().expect("control did not stop within 15 s")
    }

    /// SIGTERM and up to 15 s for the exit.
    fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for ServerProcess {
    /// A failed test still stops both processes cleanly when it can, so
    /// no region or port is left behind.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            if self.terminate().is_none() {
                let _ = self.child.kill();
                let _ = self.child.wait();
                let _ = std::fs::remove_file(&self.shm);
            }
        }
    }
}

/// The arguments that put every listener of a control on a free loopback
/// port, with `cores` data-plane cores.
pub fn loopback_args(cores: u32) -> Vec<String> {
    let mut args: Vec<String> = [
        "--lvsp-listen",
        "127.0.0.1:0",
        "--gateway-listen",
        "127.0.0.1:0",
        "--udp-bind",
        "127.0.0.1:0",
        "--metrics-listen",
        "127.0.0.1:0",
        "--cores",
    ]
    .map(str::to_owned)
    .to_vec();
    args.push(cores.to_string());
    args
}

/// The `control` executable under test: this build's, or the one named by
/// `CONTROL_BIN` (to run the same tests against another build, e.g. to
/// measure a flood before and after a change).
pub fn control_bin() -> std::path::PathBuf {
    std::env::var_os("CONTROL_BIN")
        .map(Into::into)
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_control").into())
}

/// The `control` binary run through `sh` with its open-file limit set to
/// `soft` and `hard`; `exec` keeps control's pid. Arguments follow.
pub fn open_files_command(soft: u64, hard: u64) -> Command {
    let mut sh = Command::new("sh");
    sh.arg("-c")
        .arg(format!(
            "ulimit -Sn {soft} && ulimit -Hn {hard} && exec \"$0\" \"$@\""
        ))
        .arg(control_bin());
    sh
}

/// A minimal HTTP/1.1 GET for the metrics endpoint.
pub fn http_get(addr: &str, path: &str) -> String {
    let mut s = TcpStream::connect(addr).expect("connect metrics");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nhost: {addr}\r\n\r\n").unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let (head, body) = resp.split_once("\r\n\r\n").expect("http response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_owned()
}

/// `POST path` (no body); the status line and the body.
pub fn http_post(addr: &str, path: &str) -> (String, String) {
    let mut s = TcpStream::connect(addr).expect("connect metrics");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-length: 0\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let (head, body) = resp.split_once("\r\n\r\n").expect("http response");
    let status = head.lines().next().unwrap_or_default().to_owned();
    (status, body.to_owned())
}

/// Creates `channel` (in `guild`) over LVSP with one voice state per user
/// and joins a voice client for each (AES-GCM, gateway v8).
pub async fn join_call(
    server: &ServerProcess,
    lvsp: &mut scripts::LvspClient,
    guild: &str,
    channel: &str,
    users: &[&str],
) -> Vec<scripts::VoiceClient> {
    let assign = lvsp
        .channel_req(channel, Some(guild))
        .await
        .expect("CHANNEL_ASSIGN");
    let mut clients = Vec::new();
    for user in users {
        let done = lvsp
            .voice_state_create(user, channel, Some(guild))
            .await
            .expect("VOICE_STATE_DONE");
        let client = scripts::VoiceClient::join(
            &server.gateway_url,
            8,
            guild,
            user,
            &done.session_id,
            &assign.token,
            scripts::Mode::Aes256GcmRtpSize,
        )
        .await
        .unwrap_or_else(|e| panic!("{user} joins: {e}"));
        clients.push(client);
    }
    // Let the last Select Protocol reach its core (design target: 5 ms).
    tokio::time::sleep(Duration::from_millis(50)).await;
    clients
}

/// Every member sends `n` packets; every member receives exactly the
/// others' packets, byte-identical.
pub async fn assert_call_flows(clients: &mut [scripts::VoiceClient], n: usize, tag: &str) {
    let everyone = clients.len();
    assert_talkers_heard(clients, everyone, n, tag).await;
}

/// The first `talkers` members send `n` packets each; every member (the
/// silent ones included) receives exactly the other talkers' packets,
/// byte-identical, with the right SSRCs.
pub async fn assert_talkers_heard(
    members: &mut [scripts::VoiceClient],
    talkers: usize,
    n: usize,
    tag: &str,
) {
    let payload = |t: usize, k: usize| format!("{tag} from {t} #{k}").into_bytes();
    for (t, m) in members.iter_mut().enumerate().take(talkers) {
        for k in 0..n {
            m.udp.send_opus(&payload(t, k)).await.expect("send");
        }
    }
    let ssrcs: Vec<u32> = members.iter().map(|m| m.ssrc()).collect();
    for (i, m) in members.iter_mut().enumerate() {
        let expected: std::collections::BTreeSet<(u32, Vec<u8>)> = (0..talkers)
            .filter(|t| *t != i)
            .flat_map(|t| (0..n).map(move |k| (t, k)))
            .map(|(t, k)| (ssrcs[t], payload(t, k)))
            .collect();
        let mut got = std::collections::BTreeSet::new();
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
