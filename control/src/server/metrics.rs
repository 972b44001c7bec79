//! The operator's HTTP endpoint: `GET /metrics` (Prometheus text format),
//! `GET /health` (JSON) and `POST /drain` (from loopback only). Requests are
//! parsed with `httparse`; anything else gets 404 or 400.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use shared::DropReason;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::budget::{Refusal, SUMMARY_EVERY};
use super::{Hub, Shared};

/// Renders every counter the server keeps.
pub(super) fn render(shared: &Shared, hub: &Hub) -> String {
    let mut out = String::new();
    let metric = |out: &mut String, name: &str, help: &str, kind: &str| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    };
    metric(
        &mut out,
        "voice_health",
        "Server health in [0, 1].",
        "gauge",
    );
    let _ = writeln!(out, "voice_health {}", hub.cx.registry.health());
    metric(
        &mut out,
        "voice_draining",
        "1 once the server was told to drain (health reads 0; it exits when the last call ends or at the drain deadline).",
        "gauge",
    );
    let _ = writeln!(
        out,
        "voice_draining {}",
        u8::from(hub.cx.registry.draining())
    );
    metric(
        &mut out,
        "voice_channels",
        "Voice channels assigned.",
        "gauge",
    );
    let _ = writeln!(out, "voice_channels {}", hub.cx.registry.channel_count());
    metric(
        &mut out,
        "voice_states",
        "Voice states created over LVSP.",
        "gauge",
    );
    let _ = writeln!(out, "voice_states {}", hub.cx.registry.voice_state_count());
    metric(
        &mut out,
        "voice_sessions",
        "Identified gateway sessions.",
        "gauge",
    );
    let _ = writeln!(out, "voice_sessions {}", hub.cx.registry.session_count());
    metric(
        &mut out,
        "voice_sessions_parked",
        "Gateway sessions whose websocket is gone, waiting for a Resume.",
        "gauge",
    );
    let _ = writeln!(
        out,
        "voice_sessions_parked {}",
        hub.cx.registry.parked_count()
    );
    metric(
        &mut out,
        "voice_reclaimed_total",
        "State the server reclaimed by itself, by what (session: a parked or left gateway session past its grace; voice_state, channel: idle past their idle time).",
        "counter",
    );
    for what in crate::registry::Reclaim::ALL {
        let n = hub.cx.registry.reclaimed(what);
        let _ = writeln!(out, "voice_reclaimed_total{{what=\"{}\"}} {n}", what.name());
    }
    let listeners = [
        ("lvsp", &shared.budgets[0]),
        ("gateway", &shared.budgets[1]),
    ];
    metric(
        &mut out,
        "voice_connections",
        "Open connections (pending and identified), by protocol.",
        "gauge",
    );
    for (proto, budget) in listeners {
        let open = budget.pending_open() + budget.identified_open();
        let _ = writeln!(out, "voice_connections{{protocol=\"{proto}\"}} {open}");
    }
    metric(
        &mut out,
        "voice_connections_pending",
        "Open connections not yet identified (TCP, TLS, upgrade, waiting for Identify), by protocol.",
        "gauge",
    );
    for (proto, budget) in listeners {
        let n = budget.pending_open();
        let _ = writeln!(out, "voice_connections_pending{{protocol=\"{proto}\"}} {n}");
    }
    metric(
        &mut out,
        "voice_connections_refused_total",
        "Connections refused, by protocol and reason (pending_full, per_address, per_prefix, identified_full; full for metrics).",
        "counter",
    );
    for (proto, budget) in listeners {
        for (reason, n) in Refusal::ALL.iter().zip(budget.refused()) {
            let _ = writeln!(
                out,
                "voice_connections_refused_total{{protocol=\"{proto}\",reason=\"{}\"}} {n}",
                reason.name()
            );
        }
    }
    let _ = writeln!(
        out,
        "voice_connections_refused_total{{protocol=\"metrics\",reason=\"full\"}} {}",
        shared.metrics_refused.load(Ordering::Relaxed)
    );
    metric(
        &mut out,
        "voice_connections_evicted_total",
        "Pending connections dropped to make room for a newer one when the pending budget was full, by protocol.",
        "counter",
    );
    for (proto, budget) in listeners {
        let n = budget.evicted();
        let _ = writeln!(
            out,
            "voice_connections_evicted_total{{protocol=\"{proto}\"}} {n}"
        );
    }
    metric(
        &mut out,
        "voice_lvsp_auth_failures_total",
        "LVSP IDENTIFY/RESUME with a wrong token.",
        "counter",
    );
    let guard = &hub.cx.guard;
    let _ = writeln!(
        out,
        "voice_lvsp_auth_failures_total {}",
        guard.failures_total()
    );
    metric(
        &mut out,
        "voice_lvsp_auth_refused_total",
        "LVSP IDENTIFY/RESUME refused unchecked: the address is backing off.",
        "counter",
    );
    let _ = writeln!(
        out,
        "voice_lvsp_auth_refused_total {}",
        guard.refused_total()
    );
    metric(
        &mut out,
        "voice_lvsp_request_errors_total",
        "LVSP requests refused without closing the connection, by reason (unknown_channel).",
        "counter",
    );
    for reason in crate::registry::RequestError::REASONS {
        let n = hub.cx.registry.request_errors(reason);
        let _ = writeln!(
            out,
            "voice_lvsp_request_errors_total{{reason=\"{reason}\"}} {n}"
        );
    }
    metric(
        &mut out,
        "voice_dave_refused_total",
        "DAVE key packages and commits refused (invalid, wrong epoch, not the proposals sent).",
        "counter",
    );
    let _ = writeln!(
        out,
        "voice_dave_refused_total {}",
        hub.cx.registry.dave_refused()
    );
    metric(
        &mut out,
        "voice_dave_calls",
        "Calls end-to-end encrypted (DAVE protocol version 1) now.",
        "gauge",
    );
    let _ = writeln!(out, "voice_dave_calls {}", hub.cx.registry.dave_calls());
    metric(
        &mut out,
        "voice_throttled_total",
        "Times reading a connection paused until its message budget refilled (identified LVSP links are slowed down past it, not closed), by protocol.",
        "counter",
    );
    for proto in ["lvsp", "gateway"] {
        let n = hub.throttled.get(proto).copied().unwrap_or(0);
        let _ = writeln!(out, "voice_throttled_total{{protocol=\"{proto}\"}} {n}");
    }
    metric(
        &mut out,
        "voice_reloads_total",
        "SIGHUP reloads, applied or refused (nothing changed).",
        "counter",
    );
    let reloads = shared.reloads.lock().unwrap_or_else(|e| e.into_inner());
    let _ = writeln!(
        out,
        "voice_reloads_total{{result=\"applied\"}} {}",
        reloads.applied
    );
    let _ = writeln!(
        out,
        "voice_reloads_total{{result=\"refused\"}} {}",
        reloads.refused
    );
    metric(
        &mut out,
        "voice_restart_pending",
        "Settings changed by a reload that wait for a restart (1 each).",
        "gauge",
    );
    for setting in &reloads.restart_pending {
        let _ = writeln!(out, "voice_restart_pending{{setting=\"{setting}\"}} 1");
    }
    drop(reloads);
    metric(
        &mut out,
        "voice_dataplane_restarts_total",
        "Times the dataplane died and was started again.",
        "counter",
    );
    let _ = writeln!(
        out,
        "voice_dataplane_restarts_total {}",
        hub.dataplane_restarts
    );
    if let Some(pid) = hub.dataplane_pid {
        metric(
            &mut out,
            "voice_dataplane_pid",
            "Process id of the running dataplane child.",
            "gauge",
        );
        let _ = writeln!(out, "voice_dataplane_pid {pid}");
    }
    metric(
        &mut out,
        "voice_closes_total",
        "Websocket close codes sent, by protocol.",
        "counter",
    );
    for ((proto, code), n) in &hub.closes {
        let _ = writeln!(
            out,
            "voice_closes_total{{protocol=\"{proto}\",code=\"{code}\"}} {n}"
        );
    }
    let cores = hub.load.cores();
    for (name, help, get) in [
        (
            "voice_packets_in_total",
            "Datagrams received.",
            (|s| s.packets_in) as fn(&shared::CoreStats) -> u64,
        ),
        ("voice_bytes_in_total", "Bytes received.", |s| s.bytes_in),
        ("voice_packets_out_total", "Datagrams sent.", |s| {
            s.packets_out
        }),
        ("voice_bytes_out_total", "Bytes sent.", |s| s.bytes_out),
        (
            "voice_busy_nanoseconds_total",
            "Nanoseconds cores spent handling packets.",
            |s| s.busy_ns,
        ),
    ] {
        metric(&mut out, name, help, "counter");
        for core in 0..cores {
            if let Some(s) = hub.load.stats(core) {
                let _ = writeln!(out, "{name}{{core=\"{core}\"}} {}", get(s));
            }
        }
    }
    metric(
        &mut out,
        "voice_dataplane_sessions",
        "Sessions (announced or keyed SSRCs) each data-plane core holds, as it last reported.",
        "gauge",
    );
    for core in 0..cores {
        if let Some(s) = hub.load.stats(core) {
            let _ = writeln!(
                out,
                "voice_dataplane_sessions{{core=\"{core}\"}} {}",
                s.sessions
            );
        }
    }
    metric(
        &mut out,
        "voice_drops_total",
        "Datagrams dropped, by core and reason.",
        "counter",
    );
    for core in 0..cores {
        if let (Some(_), Some(d)) = (hub.load.stats(core), hub.load.drops(core)) {
            for r in DropReason::ALL {
                let _ = writeln!(
                    out,
                    "voice_drops_total{{core=\"{core}\",reason=\"{}\"}} {}",
                    r.name(),
                    d.get(r)
                );
            }
        }
    }
    out
}

pub(super) async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let mut summary = tokio::time::interval(SUMMARY_EVERY);
    summary.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut logged = 0;
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    // A few scrapers at a time; a flood of slow requests
                    // must not run the process out of descriptors.
                    let Ok(slot) = shared.metrics_slots.clone().try_acquire_owned() else {
                        shared.metrics_refused.fetch_add(1, Ordering::Relaxed);
                        continue;
                    };
                    let shared = shared.clone();
                    tokio::spawn(async move {
                        let _slot = slot;
                        let _ = tokio::time::timeout(REQUEST_TIMEOUT, respond(stream, &shared)).await;
                    });
                }
                Err(e) => {
                    tracing::debug!(%e, "metrics accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = summary.tick() => {
                let refused = shared.metrics_refused.load(Ordering::Relaxed);
                if refused > logged {
                    tracing::warn!(
                        refused = refused - logged,
                        seconds = SUMMARY_EVERY.as_secs(),
                        "metrics connections refused at the cap"
                    );
                }
                logged = refused;
            }
            _ = stop.changed() => break,
        }
    }
}

/// How long one metrics request may take, reading and answering.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// `POST /drain[?restart=true|false]`: starts a drain (see
/// [`crate::registry::Registry::drain`]); `restart` overrides
/// `--drain-restart`. Unauthenticated, so only a loopback peer may ask: the
/// listener is loopback by default, and an operator who opens it to a
/// network for scraping does not open this with it.
fn drain(
    shared: &Shared,
    stream: &TcpStream,
    query: Option<&str>,
) -> (&'static str, &'static str, String) {
    let local = stream.peer_addr().is_ok_and(|peer| {
        let ip = peer.ip();
        ip.is_loopback() || ip.to_canonical().is_loopback()
    });
    if !local {
        return (
            "403 Forbidden",
            "text/plain",
            "drain only from loopback\n".to_owned(),
        );
    }
    let mut restart = None;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        restart = match pair {
            "restart=true" | "restart=1" => Some(true),
            "restart=false" | "restart=0" => Some(false),
            _ => {
                return (
                    "400 Bad Request",
                    "text/plain",
                    "the only parameter is restart=true|false\n".to_owned(),
                )
            }
        };
    }
    let (restart, started) = shared.drain(restart);
    (
        "202 Accepted",
        "application/json",
        format!("{{\"draining\":true,\"started\":{started},\"restart\":{restart}}}\n"),
    )
}

/// A request target's path, without the query.
fn path(target: &str) -> &str {
    target.split_once('?').map_or(target, |(p, _)| p)
}

/// A request target's query, if any.
fn query(target: &str) -> Option<&str> {
    target.split_once('?').map(|(_, q)| q)
}

async fn respond(mut stream: TcpStream, shared: &Shared) -> std::io::Result<()> {
    let mut buf = vec![0u8; 8192];
    let mut len = 0;
    let (status, content_type, body) = loop {
        let n = stream.read(&mut buf[len..]).await?;
        if n == 0 {
            return Ok(());
        }
        len += n;
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf[..len]) {
            Ok(httparse::Status::Complete(_)) => {
                break match (req.method, req.path) {
                    (Some("GET"), Some("/metrics")) => (
                        "200 OK",
                        "text/plain; version=0.0.4",
                        render(shared, &shared.hub()),
                    ),
                    (Some("GET"), Some("/health")) => {
                        let hub = shared.hub();
                        let registry = &hub.cx.registry;
                        (
                            "200 OK",
                            "application/json",
                            format!(
                                "{{\"health\":{},\"draining\":{}}}\n",
                                registry.health(),
                                registry.draining()
                            ),
                        )
                    }
                    (Some("POST"), Some(target)) if path(target) == "/drain" => {
                        drain(shared, &stream, query(target))
                    }
                    _ => ("404 Not Found", "text/plain", "not found\n".to_owned()),
                };
            }
            Ok(httparse::Status::Partial) if len < buf.len() => continue,
            _ => break ("400 Bad Request", "text/plain", "bad request\n".to_owned()),
        }
    };
    let head = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}
