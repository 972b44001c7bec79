//! The load generator against the real server: a tiny paced run through
//! control + dataplane and through the plain relay baseline, where loopback
//! at this rate must deliver every packet to every other member.

mod support;

use std::time::Duration;

use scripts::blaster::{run, Config, Pacing, ServerTarget, TargetReport};
use support::ServerProcess;

const CHANNELS: usize = 2;
const MEMBERS: usize = 3;
const PPS: u32 = 100;

fn check_target(t: &TargetReport, name: &str) {
    let sent = (CHANNELS as u64) * u64::from(PPS); // 1 talker × 1 s
    assert_eq!(t.target, name);
    assert_eq!(t.sent, sent, "{name}: every talker sent its packets");
    assert_eq!(t.send_errors, 0, "{name}");
    assert_eq!(t.expected, sent * (MEMBERS as u64 - 1), "{name}");
    assert_eq!(
        (t.invalid, t.extra, t.lost),
        (0, 0, 0),
        "{name}: no bad, duplicate or lost packet: {t:?}"
    );
    assert_eq!(t.delivered, t.expected, "{name}: every delivery arrived");
    assert_eq!(t.delivered_bytes, t.delivered * 160, "{name}");
    assert!(t.delivered_pps > 0.0 && t.bytes_per_sec > 0.0, "{name}");
    let l = t.latency_us;
    assert!(l.p50 > 0.0, "{name}: {l:?}");
    assert!(
        l.p50 <= l.p90 && l.p90 <= l.p99 && l.p99 <= l.p999 && l.p999 <= l.max,
        "{name}: percentiles ordered: {l:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blaster_delivers_everything_on_both_targets() {
    let server = ServerProcess::start(1, &[]);
    // ServerProcess trusts the certificate already; the blaster's own
    // path (trusting a PEM file) is exercised too.
    let mut target = ServerTarget::new(&server.lvsp_url, &server.secret, &server.gateway_url);
    target.cert = server.cert.clone();
    let config = Config {
        server: Some(target),
        baseline: true,
        channels: CHANNELS,
        members: MEMBERS,
        talkers: 1,
        pps: PPS,
        duration: Duration::from_secs(1),
        pacing: Pacing::Paced,
        drain: Duration::from_millis(700),
        ..Config::default()
    };
    let report = tokio::time::timeout(Duration::from_secs(120), run(&config))
        .await
        .expect("the load test finished in time")
        .expect("the load test ran");
    println!("{}", report.table());

    let s = report.server.as_ref().expect("server report");
    let b = report.baseline.as_ref().expect("baseline report");
    check_target(s, "server");
    assert_eq!(s.mode, "aead_aes256_gcm_rtpsize");
    assert!(s.relay.is_none());
    check_target(b, "baseline");
    let relay = b.relay.expect("relay stats");
    assert_eq!((relay.received, relay.sent), (b.sent, b.expected));
    assert_eq!((relay.dropped, relay.errors), (0, 0));
    let ratio = report.ratio.expect("ratio");
    assert!(ratio.delivered_pps > 0.0 && ratio.p99_latency > 0.0);

    let v: serde_json::Value = serde_json::from_str(&report.json()).expect("one JSON line");
    assert!(!report.json().contains('\n'));
    for t in ["server", "baseline"] {
        for field in [
            "sent",
            "expected",
            "delivered",
            "lost",
            "loss_pct",
            "delivered_pps",
            "bytes_per_sec",
        ] {
            assert!(v[t][field].is_number(), "{t}.{field} in {v}");
        }
        for p in ["p50", "p90", "p99", "p999", "max"] {
            assert!(
                v[t]["latency_us"][p].as_f64().is_some_and(|x| x > 0.0),
                "{t} {p}"
            );
        }
        assert_eq!(v[t]["delivered"], v[t]["expected"]);
    }
    assert!(v["ratio"]["delivered_pps"].is_number());
    assert!(v["ratio"]["p99_latency"].is_number());
    assert_eq!(v["config"]["channels"], CHANNELS);

    let status = server.stop();
    assert!(status.success(), "control exited with {status}");
}
