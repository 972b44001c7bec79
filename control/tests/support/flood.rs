//! Attack tools for the connection flood tests, played from chosen loopback
//! source addresses (all of 127.0.0.0/8 is local): sockets that stall at
//! each stage of a websocket handshake and reconnect when the server drops
//! them, websocket Ping flooders, and the figures a legitimate client sees.
//!
//! Attacks run on their own runtime (one worker thread), so that busy
//! attacker tasks never delay the legitimate client's tasks in the test's
//! runtime: only the operating system shares the CPUs between them, as it
//! would between machines' worth of processes.
//!
//! Every loop is bounded by a deadline and a count and stops by itself.

#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use protocol::gateway::Nonce;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use scripts::gateway::{GatewayClient, GatewayEvent, ServerMessage};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;

/// `127.1.{net}.{host}`: attacker sources, away from the legitimate
/// clients' 127.0.0.1 (another /24).
pub fn attacker(net: u8, host: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 1, net, host))
}

/// `hosts` addresses in each of `nets` /24s, starting at 127.1.`first`.0.
pub fn sources(first: u8, nets: u8, hosts: u8) -> Vec<IpAddr> {
    (0..nets)
        .flat_map(|n| (1..=hosts).map(move |h| attacker(first + n, h)))
        .collect()
}

/// A listener to attack.
#[derive(Clone)]
pub struct Target {
    /// Its address.
    pub addr: SocketAddr,
    /// TLS trusting the server's certificate (None: plain ws).
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// The request path (and query) of the upgrade.
    pub path: &'static str,
}

impl Target {
    /// From a `ws://` or `wss://` URL, trusting `cert` for TLS.
    pub fn new(url: &str, cert: Option<&std::path::Path>, path: &'static str) -> Target {
        let (scheme, rest) = url.split_once("://").expect("a websocket url");
        let addr = rest.trim_end_matches('/').parse().expect("an ip:port url");
        let tls = (scheme == "wss").then(|| tls_config(cert.expect("wss needs the certificate")));
        Target { addr, tls, path }
    }
}

/// A client TLS configuration trusting the PEM certificate at `cert`.
pub fn tls_config(cert: &std::path::Path) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(cert).expect("read the certificate") {
        roots.add(c.expect("a certificate")).expect("trust it");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// Where a slowloris connection stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// TCP connected, nothing sent.
    Tcp,
    /// The start of a TLS ClientHello, then nothing.
    MidTls,
    /// TLS done, half an HTTP upgrade request, then nothing.
    BeforeUpgrade,
    /// Websocket open, no Identify.
    AfterUpgrade,
}

impl Stage {
    /// All four.
    pub const ALL: [Stage; 4] = [
        Stage::Tcp,
        Stage::MidTls,
        Stage::BeforeUpgrade,
        Stage::AfterUpgrade,
    ];
}

/// What the attack's workers did.
#[derive(Debug, Default)]
pub struct AttackStats {
    /// Connection attempts.
    pub attempts: AtomicU64,
    /// Attempts whose TCP connect failed.
    pub connect_errors: AtomicU64,
    /// Connections that reached their stage and were held there.
    pub stalled: AtomicU64,
    /// Connections the server dropped within 100 ms of the connect
    /// (refused at accept, or failed at once).
    pub dropped_fast: AtomicU64,
}

/// A runtime of its own for attacker tasks; shut down in the background
/// when dropped (dropping a runtime inside another one would panic).
pub struct AttackRuntime(Option<tokio::runtime::Runtime>);

impl AttackRuntime {
    /// A one-thread multi-thread runtime.
    pub fn new() -> AttackRuntime {
        AttackRuntime(Some(
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("the attack runtime"),
        ))
    }

    fn handle(&self) -> &tokio::runtime::Handle {
        self.0.as_ref().expect("running").handle()
    }
}

impl Drop for AttackRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// A running attack; [`Attack::stop`] ends it.
pub struct Attack {
    rt: AttackRuntime,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Shared counters.
    pub stats: Arc<AttackStats>,
    until: Instant,
    max_attempts: u64,
}

impl Attack {
    /// An attack with no workers yet: every worker stops at `duration`,
    /// when the attack is stopped, or once all of them together made
    /// `max_attempts` connection attempts.
    pub fn new(duration: Duration, max_attempts: u64) -> Attack {
        Attack {
            rt: AttackRuntime::new(),
            stop: Arc::new(AtomicBool::new(false)),
            tasks: Vec::new(),
            stats: Arc::new(AttackStats::default()),
            until: Instant::now() + duration,
            max_attempts,
        }
    }

    /// Starts `per_source` workers per source address, each one looping
    /// connect → stall at `stage` → wait until the server drops it →
    /// `pause` → again.
    pub fn add(
        &mut self,
        target: &Target,
        stage: Stage,
        sources: &[IpAddr],
        per_source: usize,
        pause: Duration,
    ) {
        let (until, max_attempts) = (self.until, self.max_attempts);
        for source in sources {
            for _ in 0..per_source {
                let (target, source) = (target.clone(), *source);
                let (stop, stats) = (self.stop.clone(), self.stats.clone());
                self.tasks.push(self.rt.handle().spawn(async move {
                    while !stop.load(Ordering::Relaxed)
                        && Instant::now() < until
                        && stats.attempts.fetch_add(1, Ordering::Relaxed) < max_attempts
                    {
                        let left = until.saturating_duration_since(Instant::now());
                        let stopped = tokio::time::timeout(
                            left,
                            stall(&target, stage, source, &stats, &stop),
                        )
                        .await;
                        if stopped.is_err() {
                            break;
                        }
                        tokio::time::sleep(pause).await;
                    }
                }));
            }
        }
    }

    /// Stops every worker and waits for them (their sockets close).
    pub async fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.abort();
            let _ = t.await;
        }
    }
}

/// A TCP connection from `source` to `target`.
pub async fn connect_from(source: IpAddr, target: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = match source {
        IpAddr::V4(_) => TcpSocket::new_v4()?,
        IpAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.bind(SocketAddr::new(source, 0))?;
    socket.connect(target).await
}

/// One slowloris connection: connect, stall at `stage`, wait for the
/// server to drop it.
async fn stall(
    target: &Target,
    stage: Stage,
    source: IpAddr,
    stats: &AttackStats,
    stop: &AtomicBool,
) {
    let started = Instant::now();
    let Ok(mut tcp) = connect_from(source, target.addr).await else {
        stats.connect_errors.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let fast = |stats: &AttackStats| {
        if started.elapsed() < Duration::from_millis(100) {
            stats.dropped_fast.fetch_add(1, Ordering::Relaxed);
        }
    };
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\n",
        target.path, target.addr
    );
    match (stage, &target.tls) {
        (Stage::Tcp, _) => {}
        (Stage::MidTls, Some(_)) => {
            // A handshake record announcing 512 bytes, 6 of them sent.
            if tcp
                .write_all(&[
                    0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
                ])
                .await
                .is_err()
            {
                return fast(stats);
            }
        }
        (Stage::MidTls, None) | (Stage::BeforeUpgrade, None) => {
            if tcp.write_all(request.as_bytes()).await.is_err() {
                return fast(stats);
            }
        }
        (Stage::BeforeUpgrade, Some(tls)) => {
            let Ok(mut s) = tls_connect(tls, tcp).await else {
                return fast(stats);
            };
            if s.write_all(request.as_bytes()).await.is_err() {
                return fast(stats);
            }
            stats.stalled.fetch_add(1, Ordering::Relaxed);
            return hold(&mut s, stop).await;
        }
        (Stage::AfterUpgrade, tls) => {
            let url = format!("ws://{}{}", target.addr, target.path);
            let ok = match tls {
                Some(tls) => match tls_connect(tls, tcp).await {
                    Ok(s) => upgraded(&url, s, stats, stop).await,
                    Err(_) => false,
                },
                None => upgraded(&url, tcp, stats, stop).await,
            };
            if !ok {
                fast(stats);
            }
            return;
        }
    }
    stats.stalled.fetch_add(1, Ordering::Relaxed);
    hold(&mut tcp, stop).await;
    fast(stats);
}

async fn tls_connect(
    tls: &Arc<rustls::ClientConfig>,
    tcp: TcpStream,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let name = ServerName::try_from("127.0.0.1").expect("an IP server name");
    tokio_rustls::TlsConnector::from(tls.clone())
        .connect(name, tcp)
        .await
}

/// Upgrades, then reads (and ignores) whatever comes until the server
/// closes; false when the upgrade failed.
async fn upgraded<S: AsyncRead + AsyncWrite + Unpin>(
    url: &str,
    stream: S,
    stats: &AttackStats,
    stop: &AtomicBool,
) -> bool {
    let Ok((mut ws, _)) = tokio_tungstenite::client_async(url, stream).await else {
        return false;
    };
    stats.stalled.fetch_add(1, Ordering::Relaxed);
    while !stop.load(Ordering::Relaxed) {
        match tokio::time::timeout(Duration::from_millis(500), ws.next()).await {
            Ok(Some(Ok(_))) | Err(_) => continue,
            Ok(_) => break,
        }
    }
    true
}

/// Reads until the peer closes (or the attack stops).
async fn hold<S: AsyncRead + Unpin>(stream: &mut S, stop: &AtomicBool) {
    let mut buf = [0u8; 4096];
    while !stop.load(Ordering::Relaxed) {
        match tokio::time::timeout(Duration::from_millis(500), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(_)) | Err(_) => continue,
        }
    }
}

/// How one websocket Ping flooder ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PingFlood {
    /// Pings written (the server reads them later: many may still be
    /// in flight when it closes).
    pub pings: u64,
    /// The server's close code, if it closed with one.
    pub close: Option<u16>,
    /// From the upgrade to the close (or the end of the flood).
    pub lasted: Duration,
    /// The flood's time was up before the server closed the connection.
    pub cut: bool,
}

/// Pings a flooder sends per second: far beyond any budget, yet leaving
/// the CPUs this test shares with the server some room (a real attacker's
/// CPU is elsewhere).
pub const PINGS_PER_SECOND: u64 = 5000;

/// Opens a websocket from `source` and sends [`PINGS_PER_SECOND`] Pings
/// until the server closes it, `duration` passes or `max_pings` went out.
pub async fn ping_flood(
    target: &Target,
    source: IpAddr,
    duration: Duration,
    max_pings: u64,
) -> Option<PingFlood> {
    let tcp = connect_from(source, target.addr).await.ok()?;
    let url = format!("ws://{}{}", target.addr, target.path);
    match &target.tls {
        Some(tls) => {
            flood_pings(&url, tls_connect(tls, tcp).await.ok()?, duration, max_pings).await
        }
        None => flood_pings(&url, tcp, duration, max_pings).await,
    }
}

async fn flood_pings<S: AsyncRead + AsyncWrite + Unpin>(
    url: &str,
    stream: S,
    duration: Duration,
    max_pings: u64,
) -> Option<PingFlood> {
    let (ws, _) = tokio_tungstenite::client_async(url, stream).await.ok()?;
    let (mut sink, mut read) = ws.split();
    let started = Instant::now();
    let until = tokio::time::Instant::now() + duration;
    let pings = AtomicU64::new(0);
    let send = async {
        // Batches of 50 every 10 ms, each batch in one write.
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        'flood: while pings.load(Ordering::Relaxed) < max_pings {
            tick.tick().await;
            for _ in 0..PINGS_PER_SECOND / 100 {
                let ping = Message::Ping(b"12345678".to_vec());
                if sink.feed(ping).await.is_err() {
                    break 'flood;
                }
                pings.fetch_add(1, Ordering::Relaxed);
            }
            if sink.flush().await.is_err() {
                break;
            }
        }
        // Out of pings: wait for the reader.
        std::future::pending::<()>().await
    };
    let recv = async {
        loop {
            match read.next().await {
                Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
                Some(Ok(_)) => continue,
                _ => return None,
            }
        }
    };
    let (close, cut) = tokio::select! {
        close = recv => (close, false),
        _ = send => (None, false),
        _ = tokio::time::sleep_until(until) => (None, true),
    };
    Some(PingFlood {
        pings: pings.load(Ordering::Relaxed),
        close,
        lasted: started.elapsed(),
        cut,
    })
}

/// Round trips of `n` heartbeats, one every `gap`, on an identified
/// gateway client (its background heartbeat stopped). Heartbeats whose ACK
/// does not come within a second count as a second.
pub async fn heartbeat_rtts(gateway: &mut GatewayClient, n: usize, gap: Duration) -> Vec<Duration> {
    let mut rtts = Vec::with_capacity(n);
    for _ in 0..n {
        let sent = Instant::now();
        let Ok(nonce) = gateway.heartbeat().await else {
            rtts.push(Duration::from_secs(1));
            continue;
        };
        let deadline = sent + Duration::from_secs(1);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match gateway.next_event_timeout(left).await {
                Ok(GatewayEvent::Message(ServerMessage::HeartbeatAck(d)))
                    if d.nonce() == Nonce(nonce.into()) =>
                {
                    rtts.push(sent.elapsed());
                    break;
                }
                Ok(GatewayEvent::Closed(_)) | Err(_) => {
                    rtts.push(Duration::from_secs(1));
                    break;
                }
                Ok(_) => continue,
            }
        }
        tokio::time::sleep(gap).await;
    }
    rtts
}

/// Whether an ACK's `d` answers the heartbeat with `nonce` (a bare integer
/// below v8, `{t}` at v8).
/// Median and maximum.
pub fn median_max(samples: &[Duration]) -> (Duration, Duration) {
    let mut s = samples.to_vec();
    s.sort();
    match s.len() {
        0 => (Duration::MAX, Duration::MAX),
        n => (s[n / 2], s[n - 1]),
    }
}

/// Descriptors a process has open (from /proc).
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// Raises this test process's soft open-file limit to its hard limit (the
/// attacks open a few thousand sockets); returns the new soft limit.
pub fn raise_own_open_files() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        return hard;
    }
    soft
}

/// Websocket Ping flooders: each source opens a websocket and pings until
/// the server closes it, then (after `pause`) opens another, until the
/// deadline or `max_connections` connections per source.
pub struct PingFlooders {
    _rt: AttackRuntime,
    tasks: Vec<tokio::task::JoinHandle<Vec<PingFlood>>>,
}

impl PingFlooders {
    /// Starts one flooder per source.
    pub fn start(
        target: &Target,
        sources: &[IpAddr],
        duration: Duration,
        max_pings: u64,
        max_connections: usize,
        pause: Duration,
    ) -> PingFlooders {
        let until = Instant::now() + duration;
        let rt = AttackRuntime::new();
        let tasks = sources
            .iter()
            .map(|source| {
                let (target, source) = (target.clone(), *source);
                rt.handle().spawn(async move {
                    let mut floods = Vec::new();
                    while floods.len() < max_connections && Instant::now() < until {
                        let left = until.saturating_duration_since(Instant::now());
                        if let Some(f) = ping_flood(&target, source, left, max_pings).await {
                            floods.push(f);
                        }
                        tokio::time::sleep(pause).await;
                    }
                    floods
                })
            })
            .collect();
        PingFlooders { _rt: rt, tasks }
    }

    /// Waits for every flooder (they stop by themselves) and returns every
    /// connection's result.
    pub async fn finish(self) -> Vec<PingFlood> {
        let mut all = Vec::new();
        for t in self.tasks {
            all.extend(t.await.unwrap_or_default());
        }
        all
    }
}

/// `GET /metrics` parsed into `name{labels}` → value, or None when the
/// endpoint does not answer within 2 s (a report must not panic).
pub fn try_metrics(addr: &str) -> Option<std::collections::HashMap<String, f64>> {
    use std::io::{Read, Write};
    let addr: SocketAddr = addr.parse().ok()?;
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET /metrics HTTP/1.1\r\nhost: {addr}\r\n\r\n").ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    let (_, body) = resp.split_once("\r\n\r\n")?;
    Some(
        body.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .filter_map(|l| l.rsplit_once(' '))
            .filter_map(|(k, v)| Some((k.to_owned(), v.parse().ok()?)))
            .collect(),
    )
}
