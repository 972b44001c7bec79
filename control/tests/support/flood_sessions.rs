//! Attackers and probes for the session-layer flood tests
//! (`tests/flood_sessions.rs`): unidentified gateway connections flooding
//! JSON, a member re-identifying and speaking in a loop, and LVSP IDENTIFY
//! guessing; a heartbeat round-trip probe for a legitimate member; control's
//! CPU time. Every loop is bounded by a deadline and a count.
//!
//! Attackers connect from their own loopback addresses (127.0.x.y, all of
//! 127/8 is loopback on Linux) so that per-address limits elsewhere in the
//! server neither help nor hinder them: what is tested is the session
//! layer's own defence.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use protocol::gateway::Nonce;
use scripts::gateway::{GatewayClient, GatewayEvent, ServerMessage};
use scripts::ClientError;
use serde_json::json;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

/// A client websocket.
pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A TLS client configuration trusting only `cert` (the server's generated
/// certificate), or None for plain `ws://`.
pub fn tls(cert: Option<&Path>) -> Option<Arc<rustls::ClientConfig>> {
    use rustls_pki_types::pem::PemObject;
    let cert = cert?;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_file_iter(cert).expect("read the certificate") {
        roots.add(c.expect("a PEM certificate")).expect("trust it");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Some(Arc::new(config))
}

/// Opens a websocket to `url` (`ws://` or `wss://127.0.0.1:port/...`) from
/// the local address `from`.
pub async fn connect_from(
    from: IpAddr,
    url: &str,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> Result<Ws, String> {
    let authority = url
        .split("://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .ok_or("no authority in the URL")?;
    let server: SocketAddr = authority.parse().map_err(|e| format!("{authority}: {e}"))?;
    let socket = TcpSocket::new_v4().map_err(|e| e.to_string())?;
    socket
        .bind(SocketAddr::new(from, 0))
        .map_err(|e| format!("bind {from}: {e}"))?;
    let stream = socket.connect(server).await.map_err(|e| e.to_string())?;
    let _ = stream.set_nodelay(true);
    let connector = tls.map(Connector::Rustls);
    let handshake = tokio_tungstenite::client_async_tls_with_config(url, stream, None, connector);
    let (ws, _) = tokio::time::timeout(Duration::from_secs(10), handshake)
        .await
        .map_err(|_| "handshake timed out".to_string())?
        .map_err(|e| e.to_string())?;
    Ok(ws)
}

/// Runs an attack on its own thread with its own single-threaded runtime:
/// the attacker gets at most one core's worth of the client side, and the
/// probes in the test's runtime are not queued behind its tasks (their
/// round trips measure the server, not the test).
pub fn attack<F, T>(make: impl FnOnce() -> F + Send + 'static) -> tokio::sync::oneshot::Receiver<T>
where
    F: std::future::Future<Output = T> + 'static,
    T: Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("attacker runtime");
        let _ = tx.send(runtime.block_on(make()));
    });
    rx
}

/// The `n`th attacker address: one per /24, away from 127.0.0.1.
pub fn attacker_addr(n: usize) -> IpAddr {
    IpAddr::from([127, 0, 10 + (n % 200) as u8, 1 + (n / 200) as u8])
}

/// What a flood did.
#[derive(Debug, Default, Clone)]
pub struct FloodStats {
    /// Websockets opened.
    pub connections: u64,
    /// Connections that could not be opened.
    pub refused: u64,
    /// Messages sent.
    pub messages: u64,
    /// Bytes of message text sent.
    pub bytes: u64,
    /// Close codes received, by code (0: closed without a code).
    pub closes: BTreeMap<u16, u64>,
}

impl FloodStats {
    fn add(&mut self, other: &FloodStats) {
        self.connections += other.connections;
        self.refused += other.refused;
        self.messages += other.messages;
        self.bytes += other.bytes;
        for (code, n) in &other.closes {
            *self.closes.entry(*code).or_default() += n;
        }
    }
}

/// The close code a websocket ends with, reading (and discarding) until
/// then, at most `wait`.
async fn close_code(ws: &mut Ws, wait: Duration) -> Option<u16> {
    tokio::time::timeout(wait, async {
        while let Some(msg) = ws.next().await {
            match msg {
                Ok(Message::Close(frame)) => return frame.map(|f| u16::from(f.code)),
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
        None
    })
    .await
    .ok()
    .flatten()
}

/// Unidentified gateway connections, one per attacker address, each
/// sending `small` small heartbeats then one heartbeat of about `big`
/// bytes whose `d` is an array of numbers (costly to parse into a tree,
/// and echoed whole by a server that echoes heartbeat payloads), over and
/// over, without ever identifying; when the server closes one, it
/// reconnects after `pause`. Until `until`, at most 2000 messages per
/// connection and 500 connections per address.
#[allow(clippy::too_many_arguments)]
pub async fn preauth_json_flood(
    gateway_url: &str,
    tls: Option<Arc<rustls::ClientConfig>>,
    attackers: usize,
    small: usize,
    big: usize,
    pause: Duration,
    until: Instant,
) -> FloodStats {
    let max_per_conn = 2_000;
    let max_conns = 500;
    let url = format!("{gateway_url}/?v=8");
    let numbers = vec![0u8; big.saturating_sub(20) / 2];
    let big_msg = json!({"op": 3, "d": numbers}).to_string();
    let tasks: Vec<_> = (0..attackers)
        .map(|i| {
            let (url, tls, big_msg) = (url.clone(), tls.clone(), big_msg.clone());
            tokio::spawn(async move {
                let mut stats = FloodStats::default();
                let from = attacker_addr(i);
                for _ in 0..max_conns {
                    if Instant::now() >= until {
                        break;
                    }
                    let ws = match connect_from(from, &url, tls.clone()).await {
                        Ok(ws) => ws,
                        Err(_) => {
                            stats.refused += 1;
                            tokio::time::sleep(pause).await;
                            continue;
                        }
                    };
                    stats.connections += 1;
                    let (mut tx, mut rx) = ws.split();
                    // The reader notices the close; the writer floods.
                    let reader = tokio::spawn(async move {
                        while let Some(msg) = rx.next().await {
                            match msg {
                                Ok(Message::Close(f)) => return f.map(|f| u16::from(f.code)),
                                Ok(_) => continue,
                                Err(_) => return None,
                            }
                        }
                        None
                    });
                    let mut n = 0u64;
                    while n < max_per_conn && Instant::now() < until && !reader.is_finished() {
                        let text = if n % (small as u64 + 1) == small as u64 {
                            big_msg.clone()
                        } else {
                            json!({"op": 3, "d": {"t": n, "seq_ack": -1}}).to_string()
                        };
                        let len = text.len() as u64;
                        if tx.send(Message::Text(text)).await.is_err() {
                            break;
                        }
                        stats.messages += 1;
                        stats.bytes += len;
                        n += 1;
                    }
                    let _ = tx.close().await;
                    let code = tokio::time::timeout(Duration::from_secs(3), reader)
                        .await
                        .ok()
                        .and_then(Result::ok)
                        .flatten();
                    *stats.closes.entry(code.unwrap_or(0)).or_default() += 1;
                    tokio::time::sleep(pause).await;
                }
                stats
            })
        })
        .collect();
    let mut total = FloodStats::default();
    for t in tasks {
        if let Ok(s) = t.await {
            total.add(&s);
        }
    }
    total
}

/// What the reconnecting Speaking flood did.
#[derive(Debug, Default, Clone)]
pub struct SpeakingFlood {
    /// Identify messages sent.
    pub identifies: u64,
    /// Of those, answered with Ready.
    pub ready: u64,
    /// Speaking messages sent.
    pub speaking: u64,
    /// Close codes received, by code (0: closed without a code).
    pub closes: BTreeMap<u16, u64>,
    /// The last speaking flags sent.
    pub last_flags: u32,
}

/// A member that identifies on a new socket, sends `per_socket` Speaking
/// messages as fast as it can, then a malformed frame (so the server
/// closes it with 4002 and it leaves the call: its next Identify joins
/// again), over and over until `until` or `max_sockets`.
#[allow(clippy::too_many_arguments)]
pub async fn reconnecting_speaking_flood(
    gateway_url: &str,
    server_id: &str,
    user_id: &str,
    session_id: &str,
    token: &str,
    per_socket: u64,
    max_sockets: u64,
    until: Instant,
) -> SpeakingFlood {
    let mut stats = SpeakingFlood::default();
    let mut flags = 0u32;
    for _ in 0..max_sockets {
        if Instant::now() >= until {
            break;
        }
        let Ok(mut g) = GatewayClient::connect(gateway_url, 8).await else {
            continue;
        };
        g.set_timeout(Duration::from_secs(5));
        stats.identifies += 1;
        match g.identify(server_id, user_id, session_id, token).await {
            Ok(_) => stats.ready += 1,
            Err(ClientError::Closed(code)) => {
                *stats.closes.entry(code.unwrap_or(0)).or_default() += 1;
                // Refused (rate limited): try again a little later.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            Err(_) => continue,
        }
        for _ in 0..per_socket {
            flags = flags % 7 + 1;
            if g.speaking_as(flags, 0, 0).await.is_err() {
                break;
            }
            stats.speaking += 1;
            stats.last_flags = flags;
        }
        let _ = g.send_text("not json".into()).await;
        loop {
            match g.next_event_timeout(Duration::from_secs(3)).await {
                Ok(GatewayEvent::Closed(code)) | Err(ClientError::Closed(code)) => {
                    *stats.closes.entry(code.unwrap_or(0)).or_default() += 1;
                    break;
                }
                Ok(_) => continue,
                Err(_) => break,
            }
        }
    }
    stats
}

/// What IDENTIFY guessing got.
#[derive(Debug, Default, Clone)]
pub struct Guessing {
    /// IDENTIFYs sent with a wrong token.
    pub guesses: u64,
    /// Close codes received, by code (0: closed without a code).
    pub closes: BTreeMap<u16, u64>,
    /// Connections that failed before HELLO.
    pub refused: u64,
}

/// LVSP connections from `from`, each reading HELLO, sending IDENTIFY with
/// a random token and reading the close, as fast as they come, until
/// `until` or `max` guesses.
pub async fn identify_guessing(
    lvsp_url: &str,
    tls: Option<Arc<rustls::ClientConfig>>,
    from: IpAddr,
    max: u64,
    until: Instant,
) -> Guessing {
    let mut stats = Guessing::default();
    while stats.guesses < max && Instant::now() < until {
        let Ok(mut ws) = connect_from(from, lvsp_url, tls.clone()).await else {
            stats.refused += 1;
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        // HELLO first.
        let hello = tokio::time::timeout(Duration::from_secs(5), ws.next()).await;
        if !matches!(hello, Ok(Some(Ok(Message::Text(_))))) {
            stats.refused += 1;
            continue;
        }
        let guess = hex::encode(rand::random::<[u8; 32]>());
        let identify = json!({"op": 1, "d": {"token": guess}}).to_string();
        if ws.send(Message::Text(identify)).await.is_err() {
            stats.refused += 1;
            continue;
        }
        stats.guesses += 1;
        let code = close_code(&mut ws, Duration::from_secs(5)).await;
        *stats.closes.entry(code.unwrap_or(0)).or_default() += 1;
    }
    stats
}

/// IDENTIFY with the right token from `from`: the close code, or None when
/// READY came.
pub async fn identify_from(
    lvsp_url: &str,
    tls: Option<Arc<rustls::ClientConfig>>,
    from: IpAddr,
    secret: &str,
) -> Option<u16> {
    let mut ws = connect_from(from, lvsp_url, tls).await.expect("connect");
    let Some(Ok(Message::Text(hello))) = ws.next().await else {
        panic!("no HELLO");
    };
    let hello: serde_json::Value = serde_json::from_str(&hello).unwrap();
    let nonce = hello["d"]["nonce"].as_str().expect("nonce");
    let token = scripts::lvsp::identify_token(secret, nonce);
    let identify = json!({"op": 1, "d": {"token": token}}).to_string();
    ws.send(Message::Text(identify)).await.unwrap();
    match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
        Ok(Some(Ok(Message::Text(t)))) if t.contains("\"op\":3") => None,
        Ok(Some(Ok(Message::Close(f)))) => f.map(|f| u16::from(f.code)),
        other => panic!("unexpected answer to IDENTIFY: {other:?}"),
    }
}

/// Heartbeat round trips of a v8 member: one heartbeat every `every`
/// until `until` (at most `max`), each waiting for its own ACK (other
/// events are skipped). A heartbeat without an ACK within 2 s counts as
/// 2 s.
pub async fn heartbeat_rtts(
    g: &mut GatewayClient,
    every: Duration,
    max: usize,
    until: Instant,
) -> Vec<Duration> {
    let mut rtts = Vec::new();
    while rtts.len() < max && Instant::now() < until {
        let sent = Instant::now();
        let nonce = g.heartbeat().await.expect("send a heartbeat");
        let acked = tokio::time::timeout(Duration::from_secs(2), async {
            loop {
                match g.next_event().await {
                    Ok(GatewayEvent::Message(ServerMessage::HeartbeatAck(d)))
                        if d.nonce() == Nonce(nonce.into()) =>
                    {
                        return
                    }
                    Ok(GatewayEvent::Closed(code)) | Err(ClientError::Closed(code)) => {
                        panic!("the member was closed ({code:?})")
                    }
                    Ok(_) => continue,
                    Err(e) => panic!("member: {e}"),
                }
            }
        })
        .await;
        rtts.push(match acked {
            Ok(()) => sent.elapsed(),
            Err(_) => Duration::from_secs(2),
        });
        tokio::time::sleep(every.saturating_sub(sent.elapsed())).await;
        // Two heartbeats in one millisecond would share a nonce.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    rtts
}

/// Median and maximum of some durations, in milliseconds.
pub fn median_max_ms(samples: &[Duration]) -> (f64, f64) {
    let mut v: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    (v[v.len() / 2], v[v.len() - 1])
}

/// CPU time (user + system) a process has used, from /proc (clock ticks
/// of 1/100 s, Linux's USER_HZ).
pub fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which is in parentheses).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime: fields 14 and 15 of the line, 11 and 12 after the name.
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}
