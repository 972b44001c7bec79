//! What a run measured: per-phase counters and latency histogram, and the
//! report they become (a table and one JSON line).

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::config::{Config, Pacing};

/// Latency percentiles, microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Latency {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest.
    pub max: f64,
    /// Mean.
    pub mean: f64,
}

impl Latency {
    pub(super) fn from_histogram(h: &Histogram<u64>) -> Self {
        let us = |ns: u64| ns as f64 / 1000.0;
        Latency {
            p50: us(h.value_at_quantile(0.50)),
            p90: us(h.value_at_quantile(0.90)),
            p99: us(h.value_at_quantile(0.99)),
            p999: us(h.value_at_quantile(0.999)),
            max: us(h.max()),
            mean: h.mean() / 1000.0,
        }
    }
}

/// What the baseline relay thread counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RelayStats {
    /// Datagrams read.
    pub received: u64,
    /// Datagrams handed to `sendmmsg` successfully.
    pub sent: u64,
    /// Datagrams from an unknown SSRC or too short.
    pub dropped: u64,
    /// Failed `recvmmsg` / `sendmmsg` calls (timeouts not counted).
    pub errors: u64,
    /// `recvmmsg` calls that returned datagrams.
    pub batches: u64,
}

/// One target's results.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TargetReport {
    /// `server` or `baseline`.
    pub target: String,
    /// The mode in use (`plain` for the baseline).
    pub mode: String,
    /// Packets the talkers sent.
    pub sent: u64,
    /// Sends that failed (not counted in `sent`).
    pub send_errors: u64,
    /// Deliveries expected: sent × (members − 1).
    pub expected: u64,
    /// Valid packets received, duplicates included.
    pub delivered: u64,
    /// expected − delivered, when positive.
    pub lost: u64,
    /// lost / expected, percent.
    pub loss_pct: f64,
    /// delivered − expected, when positive (duplicates).
    pub extra: u64,
    /// Datagrams that failed to decrypt, parse or match their payload.
    pub invalid: u64,
    /// Bytes of the valid datagrams received.
    pub delivered_bytes: u64,
    /// sent / sending window.
    pub offered_pps: f64,
    /// delivered / (last − first receive), the egress rate seen by the
    /// receivers.
    pub delivered_pps: f64,
    /// delivered_bytes over the same window.
    pub bytes_per_sec: f64,
    /// The receive window, seconds.
    pub receive_window_s: f64,
    /// Receive time − send time.
    pub latency_us: Latency,
    /// The baseline relay's counters.
    pub relay: Option<RelayStats>,
}

/// server / baseline.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Ratio {
    /// Of delivered packets per second.
    pub delivered_pps: f64,
    /// Of p99 latency.
    pub p99_latency: f64,
}

/// The configuration as reported.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConfigSummary {
    /// Channels.
    pub channels: usize,
    /// Members per channel.
    pub members: usize,
    /// Talkers per channel.
    pub talkers: usize,
    /// Packets per second per talker (paced).
    pub pps: u32,
    /// Sending window, seconds.
    pub duration_s: f64,
    /// Datagram size.
    pub packet_size: usize,
    /// Paced or max.
    pub pacing: Pacing,
}

/// A whole run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// What was offered.
    pub config: ConfigSummary,
    /// The voice server, when it ran.
    pub server: Option<TargetReport>,
    /// The plain relay, when it ran.
    pub baseline: Option<TargetReport>,
    /// server / baseline, when both ran.
    pub ratio: Option<Ratio>,
}

impl Report {
    /// One JSON line.
    pub fn json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// A human-readable table.
    pub fn table(&self) -> String {
        let c = &self.config;
        let mut out = format!(
            "{} channels x {} members, {} talker(s), {:?} {} pps, {:.1} s, {} B packets\n",
            c.channels, c.members, c.talkers, c.pacing, c.pps, c.duration_s, c.packet_size
        );
        out.push_str(&format!(
            "{:<9} {:>10} {:>10} {:>10} {:>8} {:>7} {:>10} {:>11} {:>8} {:>8} {:>8} {:>8} {:>8}\n",
            "target",
            "sent",
            "expected",
            "delivered",
            "lost",
            "loss%",
            "pps",
            "bytes/s",
            "p50us",
            "p90us",
            "p99us",
            "p999us",
            "maxus"
        ));
        for t in [&self.server, &self.baseline].into_iter().flatten() {
            let l = &t.latency_us;
            out.push_str(&format!(
                "{:<9} {:>10} {:>10} {:>10} {:>8} {:>7.3} {:>10.0} {:>11.0} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>8.1}\n",
                t.target,
                t.sent,
                t.expected,
                t.delivered,
                t.lost,
                t.loss_pct,
                t.delivered_pps,
                t.bytes_per_sec,
                l.p50,
                l.p90,
                l.p99,
                l.p999,
                l.max
            ));
            if t.invalid > 0 || t.extra > 0 || t.send_errors > 0 {
                out.push_str(&format!(
                    "          invalid {}, extra {}, send errors {}\n",
                    t.invalid, t.extra, t.send_errors
                ));
            }
        }
        if let Some(r) = &self.ratio {
            out.push_str(&format!(
                "server/baseline: delivered pps {:.3}, p99 latency {:.2}\n",
                r.delivered_pps, r.p99_latency
            ));
        }
        out
    }
}

/// Counters and histogram of one phase (or one task, before merging).
#[derive(Debug, Clone)]
pub(super) struct PhaseStats {
    pub(super) sent: u64,
    pub(super) send_errors: u64,
    pub(super) expected: u64,
    pub(super) delivered: u64,
    pub(super) invalid: u64,
    pub(super) bytes: u64,
    pub(super) first_rx_ns: u64,
    pub(super) last_rx_ns: u64,
    pub(super) window: Duration,
    pub(super) latency: Histogram<u64>,
}

impl PhaseStats {
    pub(super) fn new() -> Self {
        PhaseStats {
            sent: 0,
            send_errors: 0,
            expected: 0,
            delivered: 0,
            invalid: 0,
            bytes: 0,
            first_rx_ns: u64::MAX,
            last_rx_ns: 0,
            window: Duration::ZERO,
            // 1 ns .. 60 s at 3 significant figures.
            latency: Histogram::new_with_bounds(1, 60_000_000_000, 3)
                .unwrap_or_else(|_| unreachable!("constant bounds are valid")),
        }
    }

    pub(super) fn merge(&mut self, o: &PhaseStats) {
        self.sent += o.sent;
        self.send_errors += o.send_errors;
        self.expected += o.expected;
        self.delivered += o.delivered;
        self.invalid += o.invalid;
        self.bytes += o.bytes;
        self.first_rx_ns = self.first_rx_ns.min(o.first_rx_ns);
        self.last_rx_ns = self.last_rx_ns.max(o.last_rx_ns);
        // Same bounds on both sides, so adding cannot fail.
        let _ = self.latency.add(&o.latency);
    }

    pub(super) fn report(
        &self,
        target: &str,
        mode: &str,
        config: &Config,
        relay: Option<RelayStats>,
    ) -> TargetReport {
        let rx_window = if self.last_rx_ns > self.first_rx_ns {
            Duration::from_nanos(self.last_rx_ns - self.first_rx_ns)
        } else {
            Duration::ZERO
        };
        // A window under 1 ms (a handful of packets) says nothing: use
        // the sending window instead.
        let rx_window = if rx_window < Duration::from_millis(1) {
            config.duration
        } else {
            rx_window
        };
        let secs = rx_window.as_secs_f64();
        let lost = self.expected.saturating_sub(self.delivered);
        TargetReport {
            target: target.to_owned(),
            mode: mode.to_owned(),
            sent: self.sent,
            send_errors: self.send_errors,
            expected: self.expected,
            delivered: self.delivered,
            lost,
            loss_pct: if self.expected > 0 {
                lost as f64 * 100.0 / self.expected as f64
            } else {
                0.0
            },
            extra: self.delivered.saturating_sub(self.expected),
            invalid: self.invalid,
            delivered_bytes: self.bytes,
            offered_pps: self.sent as f64 / self.window.as_secs_f64().max(1e-9),
            delivered_pps: self.delivered as f64 / secs,
            bytes_per_sec: self.bytes as f64 / secs,
            receive_window_s: secs,
            latency_us: Latency::from_histogram(&self.latency),
            relay,
        }
    }
}
