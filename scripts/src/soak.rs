//! The soak (`soak` binary): a long, bounded run of realistic load with churn against a
//! voice server this tool starts itself (the `control` binary, loopback,
//! free ports), reporting loss, latency percentiles and both processes'
//! memory over time. See `scripts/README.md`, "Soak".
//!
//! Load: `cohorts` independent groups of `channels` × `members` voice
//! clients, each group going through rounds back to back: join every
//! member (LVSP, gateway, IP discovery, Select Protocol), send paced Opus-
//! sized RTP from `talkers` members per channel for `round` seconds,
//! receive and check every byte, then leave (channels destroyed, sockets
//! closed) and start over with new users. The groups start a fraction of a
//! round apart, so while one joins or leaves the others carry media: the
//! server always has calls, and always has members coming and going.
//!
//! Every `sample` seconds it records control's and the data plane's
//! resident memory. At the end it prints a table per round and a summary,
//! and one JSON line; it exits non-zero when loss passed `--max-loss-pct`
//! or memory grew more than `--max-growth-pct` between the first and the
//! last quarter of the run (counted from the end of the first round:
//! warming up is not growth).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;

use crate::blaster::{run, Config, Pacing, ServerTarget, TargetReport};
use crate::local_server::{metric, rss_kib, LocalServer};
use crate::Mode;

/// Realistic load with churn for a bounded time; loss, latency, memory.
#[derive(Debug, Clone, Parser)]
#[command(name = "soak", version)]
pub struct Args {
    /// The `control` binary to start (default: this build's release one).
    #[arg(long, default_value = "target/release/control")]
    pub control: PathBuf,
    /// Data-plane cores of the server.
    #[arg(long, default_value_t = 1)]
    pub cores: u32,
    /// How long the whole soak runs, seconds (at most a day).
    #[arg(long, default_value_t = 600)]
    pub duration_secs: u64,
    /// One round's sending window, seconds.
    #[arg(long, default_value_t = 30)]
    pub round_secs: u64,
    /// Groups going through rounds side by side, staggered.
    #[arg(long, default_value_t = 2)]
    pub cohorts: usize,
    /// Channels per group.
    #[arg(long, short = 'c', default_value_t = 20)]
    pub channels: usize,
    /// Members per channel.
    #[arg(long, short = 'm', default_value_t = 5)]
    pub members: usize,
    /// Talkers per channel.
    #[arg(long, short = 't', default_value_t = 1)]
    pub talkers: usize,
    /// Packets per second per talker.
    #[arg(long, default_value_t = 50)]
    pub pps: u32,
    /// Encryption mode.
    #[arg(long, default_value = "aead_aes256_gcm_rtpsize")]
    pub mode: Mode,
    /// Seconds between memory samples.
    #[arg(long, default_value_t = 10)]
    pub sample_secs: u64,
    /// Fail when the loss over the whole run passes this (percent).
    #[arg(long, default_value_t = 0.1)]
    pub max_loss_pct: f64,
    /// Fail when resident memory in the last quarter of the run is more
    /// than this much above the first quarter's (percent).
    #[arg(long, default_value_t = 25.0)]
    pub max_growth_pct: f64,
}

/// One finished round of one group.
#[derive(Debug, Clone, serde::Serialize)]
struct Round {
    cohort: usize,
    round: usize,
    /// Seconds since the soak started, when the round ended.
    at_s: f64,
    expected: u64,
    delivered: u64,
    lost: u64,
    invalid: u64,
    p50_us: f64,
    p99_us: f64,
    p999_us: f64,
    max_us: f64,
}

/// Resident memory at one time, KiB.
#[derive(Debug, Clone, Copy, serde::Serialize)]
struct Sample {
    at_s: f64,
    control_kib: u64,
    dataplane_kib: u64,
}

/// Runs the soak `args` describe, printing as it goes and at the end;
/// whether it passed (no invalid packet, loss and memory growth within
/// their limits).
pub fn soak(args: &Args) -> anyhow::Result<bool> {
    anyhow::ensure!(
        (1..=86_400).contains(&args.duration_secs),
        "--duration-secs {} not in 1..=86400",
        args.duration_secs
    );
    anyhow::ensure!(args.cohorts >= 1 && args.round_secs >= 1 && args.sample_secs >= 1);
    let server = LocalServer::start(&args.control, args.cores, None, &[])?;
    let control_pid = server.child.id();
    let dataplane_pid = metric(&server.metrics, "voice_dataplane_pid")
        .context("the server reports no data plane pid")? as u32;
    let mut target = ServerTarget::new(&server.lvsp, &server.secret, &server.gateway);
    target.cert = server.cert.clone();
    target.mode = args.mode;
    let config = Config {
        server: Some(target),
        baseline: false,
        channels: args.channels,
        members: args.members,
        talkers: args.talkers,
        pps: args.pps,
        duration: Duration::from_secs(args.round_secs),
        pacing: Pacing::Paced,
        ..Config::default()
    };
    config.validate()?;
    let started = Instant::now();
    let end = started + Duration::from_secs(args.duration_secs);
    let rounds = Arc::new(Mutex::new(Vec::<Round>::new()));
    let samples = Arc::new(Mutex::new(Vec::<Sample>::new()));

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let sampler = {
            let samples = samples.clone();
            let every = Duration::from_secs(args.sample_secs);
            tokio::spawn(async move {
                loop {
                    let sample = Sample {
                        at_s: started.elapsed().as_secs_f64(),
                        control_kib: rss_kib(control_pid),
                        dataplane_kib: rss_kib(dataplane_pid),
                    };
                    samples
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(sample);
                    tokio::time::sleep(every).await;
                }
            })
        };
        let mut groups = Vec::new();
        for cohort in 0..args.cohorts {
            let (config, rounds) = (config.clone(), rounds.clone());
            // Staggered starts: the groups' joins and leaves never line up.
            let offset = Duration::from_secs(args.round_secs) * cohort as u32 / args.cohorts as u32;
            groups.push(tokio::spawn(async move {
                tokio::time::sleep(offset).await;
                let mut round = 0;
                // A round starts only if it can end before the soak does.
                while Instant::now() + config.duration + Duration::from_secs(5) < end {
                    let report = run(&config).await?;
                    let s: TargetReport = report.server.context("the server phase ran")?;
                    let done = Round {
                        cohort,
                        round,
                        at_s: started.elapsed().as_secs_f64(),
                        expected: s.expected,
                        delivered: s.delivered,
                        lost: s.lost,
                        invalid: s.invalid,
                        p50_us: s.latency_us.p50,
                        p99_us: s.latency_us.p99,
                        p999_us: s.latency_us.p999,
                        max_us: s.latency_us.max,
                    };
                    eprintln!(
                        "{:>7.1} s  group {cohort} round {round}: {}/{} delivered, p99 {:.0} µs",
                        done.at_s, done.delivered, done.expected, done.p99_us
                    );
                    rounds.lock().unwrap_or_else(|e| e.into_inner()).push(done);
                    round += 1;
                }
                anyhow::Ok(())
            }));
        }
        for g in groups {
            g.await??;
        }
        sampler.abort();
        anyhow::Ok(())
    })?;
    let rounds = rounds.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let mut samples = samples.lock().unwrap_or_else(|e| e.into_inner()).clone();
    samples.push(Sample {
        at_s: started.elapsed().as_secs_f64(),
        control_kib: rss_kib(control_pid),
        dataplane_kib: rss_kib(dataplane_pid),
    });
    drop(server);
    Ok(report(args, &rounds, &samples))
}

/// Prints the rounds, the memory over time and the verdict.
fn report(args: &Args, rounds: &[Round], samples: &[Sample]) -> bool {
    println!("round  group    ends at    expected   delivered   lost  invalid   p50 µs   p99 µs  p99.9 µs   max µs");
    for r in rounds {
        println!(
            "{:>5}  {:>5}  {:>7.1} s  {:>10}  {:>10}  {:>5}  {:>7}  {:>7.0}  {:>7.0}  {:>8.0}  {:>7.0}",
            r.round, r.cohort, r.at_s, r.expected, r.delivered, r.lost, r.invalid,
            r.p50_us, r.p99_us, r.p999_us, r.max_us
        );
    }
    println!("\n   time   control RSS   dataplane RSS");
    for s in samples {
        println!(
            "{:>5.0} s  {:>8} KiB  {:>10} KiB",
            s.at_s, s.control_kib, s.dataplane_kib
        );
    }
    let expected: u64 = rounds.iter().map(|r| r.expected).sum();
    let delivered: u64 = rounds.iter().map(|r| r.delivered).sum();
    let lost: u64 = rounds.iter().map(|r| r.lost).sum();
    let invalid: u64 = rounds.iter().map(|r| r.invalid).sum();
    let loss_pct = if expected > 0 {
        100.0 * lost as f64 / expected as f64
    } else {
        100.0
    };
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(0.0)
    };
    let worst = |f: fn(&Round) -> f64| rounds.iter().map(f).fold(0.0, f64::max);
    // Memory: the mean of the first quarter's samples against the last's,
    // once warm (from the end of the first round: the allocators and
    // tables have reached the working size by then).
    let warm_from = rounds.iter().map(|r| r.at_s).fold(f64::INFINITY, f64::min);
    let warm: Vec<Sample> = samples
        .iter()
        .copied()
        .filter(|s| s.at_s >= warm_from)
        .collect();
    let steady = if warm.len() >= 2 { &warm[..] } else { samples };
    let quarter = (steady.len() / 4).max(1);
    let mean = |s: &[Sample], f: fn(&Sample) -> u64| {
        s.iter().map(|x| f(x) as f64).sum::<f64>() / s.len().max(1) as f64
    };
    let growth = |f: fn(&Sample) -> u64| {
        let (first, last) = (
            mean(&steady[..quarter.min(steady.len())], f),
            mean(&steady[steady.len().saturating_sub(quarter)..], f),
        );
        if first > 0.0 {
            100.0 * (last - first) / first
        } else {
            0.0
        }
    };
    let (control_growth, dataplane_growth) =
        (growth(|s| s.control_kib), growth(|s| s.dataplane_kib));
    let passed = !rounds.is_empty()
        && invalid == 0
        && loss_pct <= args.max_loss_pct
        && control_growth <= args.max_growth_pct
        && dataplane_growth <= args.max_growth_pct;
    println!(
        "\nsummary: {} rounds, {} members joined and left, {delivered}/{expected} packets \
         delivered, loss {loss_pct:.4}%, invalid {invalid}; latency median p50 {:.0} µs, \
         median p99 {:.0} µs, worst p99 {:.0} µs, worst p99.9 {:.0} µs; memory growth \
         control {control_growth:+.1}%, dataplane {dataplane_growth:+.1}% -> {}",
        rounds.len(),
        rounds.len() * args.channels * args.members,
        median(rounds.iter().map(|r| r.p50_us).collect()),
        median(rounds.iter().map(|r| r.p99_us).collect()),
        worst(|r| r.p99_us),
        worst(|r| r.p999_us),
        if passed { "PASS" } else { "FAIL" }
    );
    let json = serde_json::json!({
        "duration_s": args.duration_secs, "rounds": rounds.len(), "expected": expected,
        "delivered": delivered, "lost": lost, "loss_pct": loss_pct, "invalid": invalid,
        "control_growth_pct": control_growth, "dataplane_growth_pct": dataplane_growth,
        "samples": samples, "per_round": rounds, "passed": passed,
    });
    println!("{json}");
    passed
}
