//! `flood`: joins a two-member call on a running voice server, floods its
//! UDP port with junk from loopback for a bounded time while one member
//! talks at 50 packets a second, and prints the call's loss, the flood's
//! rate and the server's health before and during. See `scripts/README.md`,
//! "Garbage flood".

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use scripts::flood::{call_under_flood, CallUnderFlood, FloodConfig};

/// A call's loss under a garbage flood (loopback only, bounded).
#[derive(Debug, Parser)]
#[command(name = "flood", version)]
struct Args {
    /// LVSP URL of the server (as control prints it).
    #[arg(long, env = "FLOOD_LVSP")]
    lvsp: String,
    /// LVSP shared secret.
    #[arg(long, env = "FLOOD_SECRET", hide_env_values = true)]
    secret: String,
    /// Voice gateway URL (a trailing `/?v=N` is removed).
    #[arg(long, env = "FLOOD_GATEWAY")]
    gateway: String,
    /// The server's self-signed certificate (PEM) to trust for wss://.
    #[arg(long, env = "FLOOD_CERT")]
    cert: Option<PathBuf>,
    /// Flood duration, seconds (1..=600).
    #[arg(long, short = 'd', default_value_t = 10)]
    duration: u64,
    /// Most junk datagrams to send.
    #[arg(long, default_value_t = 100_000_000)]
    max_packets: u64,
    /// Source sockets of the flood.
    #[arg(long, default_value_t = 16)]
    sources: usize,
    /// Seed of the junk generator.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if !(1..=600).contains(&args.duration) {
        anyhow::bail!("--duration {} not in 1..=600 s", args.duration);
    }
    if let Some(cert) = &args.cert {
        scripts::trust_certificate_file(cert).context("trusting --cert")?;
    }
    let config = CallUnderFlood {
        lvsp: args.lvsp,
        secret: args.secret,
        gateway: args.gateway.split("/?").next().unwrap_or("").to_owned(),
        flood: FloodConfig {
            // Replaced by the address Ready gives.
            target: "127.0.0.1:9".parse().expect("literal"),
            duration: Duration::from_secs(args.duration),
            max_packets: args.max_packets,
            sources: args.sources,
            seed: args.seed,
        },
        guild: "900000000000000001".into(),
        channel: format!("9000000000{:08}", std::process::id() % 100_000_000),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let out = runtime
        .block_on(call_under_flood(&config))
        .context("call under flood")?;
    println!(
        "flood: {} datagrams in {:.1} s ({:.0}/s)",
        out.flood.sent,
        out.flood.elapsed.as_secs_f64(),
        out.flood.rate()
    );
    println!(
        "call: {} sent, {} received, loss {:.3}%",
        out.sent,
        out.received,
        out.loss() * 100.0
    );
    println!(
        "health: {:.3} before, {:.3} lowest during",
        out.health_before, out.health_during
    );
    Ok(())
}
