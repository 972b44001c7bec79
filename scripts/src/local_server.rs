//! A voice server this process starts itself for a measurement: the
//! `control` binary on loopback and free ports with a fresh secret,
//! optionally under a wrapper (`taskset -c 1`, to pin it), read back from
//! what it prints, and killed when dropped.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context;

/// A running `control` and where it listens.
#[derive(Debug)]
pub struct LocalServer {
    /// The process (killed on drop).
    pub child: Child,
    /// LVSP URL.
    pub lvsp: String,
    /// Voice gateway URL, without `/?v=`.
    pub gateway: String,
    /// `host:port` of `/metrics`.
    pub metrics: String,
    /// The generated certificate to trust for wss://, if any.
    pub cert: Option<PathBuf>,
    /// The LVSP secret it was given.
    pub secret: String,
}

impl Drop for LocalServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl LocalServer {
    /// Starts `control` with `cores` data-plane cores and `extra`
    /// arguments, run through `wrapper` (a command and its arguments) when
    /// given.
    pub fn start(
        control: &Path,
        cores: u32,
        wrapper: Option<&[&str]>,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        let secret: String = (0..32)
            .map(|_| format!("{:02x}", rand::random::<u8>()))
            .collect();
        let mut command = match wrapper {
            Some([program, args @ ..]) => {
                let mut c = Command::new(program);
                c.args(args).arg(control);
                c
            }
            _ => Command::new(control),
        };
        let mut child = command
            .args([
                "--lvsp-listen",
                "127.0.0.1:0",
                "--gateway-listen",
                "127.0.0.1:0",
            ])
            .args([
                "--udp-bind",
                "127.0.0.1:0",
                "--metrics-listen",
                "127.0.0.1:0",
            ])
            .args(["--cores", &cores.to_string(), "--log-level", "warn"])
            .args(extra)
            .env("VOICE_SECRET", &secret)
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", control.display()))?;
        let stdout = child.stdout.take().context("control's stdout")?;
        let mut fields = std::collections::HashMap::new();
        for line in BufReader::new(stdout).lines() {
            let line = line?;
            if let Some((k, v)) = line.split_once(": ") {
                fields.insert(k.to_owned(), v.to_owned());
            }
            if line.starts_with("shm: ") {
                break;
            }
        }
        let field = |k: &str| {
            fields
                .get(k)
                .cloned()
                .with_context(|| format!("control printed no {k}"))
        };
        Ok(LocalServer {
            lvsp: field("lvsp")?,
            gateway: field("gateway")?.trim_end_matches("/?v=8").to_owned(),
            metrics: field("metrics")?
                .trim_start_matches("http://")
                .trim_end_matches("/metrics")
                .to_owned(),
            cert: fields.get("cert").map(PathBuf::from),
            secret,
            child,
        })
    }
}

/// A metric's value from the server's `/metrics` at `addr`.
pub fn metric(addr: &str, name: &str) -> Option<f64> {
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// A process's resident memory, KiB (0 when it is gone).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}
