//! `blaster`: the UDP load generator. Offers the same channels, members and
//! packet rate to the voice server and to an in-process plain relay
//! (recvmmsg → sendmmsg, no crypto) in one run and prints a table and one
//! JSON line. See `scripts/README.md`, "Load test".

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use scripts::blaster::{run, Config, Pacing, ServerTarget};
use scripts::Mode;

/// UDP load generator: voice server vs plain relay, same load, same run.
#[derive(Debug, Parser)]
#[command(name = "blaster", version)]
struct Args {
    /// LVSP URL of the server (as control prints it); without it only the
    /// baseline runs.
    #[arg(long, env = "BLASTER_LVSP", requires_all = ["secret", "gateway"])]
    lvsp: Option<String>,
    /// LVSP shared secret.
    #[arg(long, env = "BLASTER_SECRET")]
    secret: Option<String>,
    /// Voice gateway URL (a trailing `/?v=N` is removed).
    #[arg(long, env = "BLASTER_GATEWAY")]
    gateway: Option<String>,
    /// The server's self-signed certificate (PEM) to trust for wss://.
    #[arg(long, env = "BLASTER_CERT")]
    cert: Option<PathBuf>,
    /// Encryption mode to select.
    #[arg(long, default_value = "aead_aes256_gcm_rtpsize")]
    mode: Mode,
    /// Voice gateway version.
    #[arg(long, default_value_t = 8)]
    gateway_version: u8,
    /// Channels.
    #[arg(long, short = 'c', default_value_t = 20)]
    channels: usize,
    /// Members per channel.
    #[arg(long, short = 'm', default_value_t = 5)]
    members: usize,
    /// Talkers per channel.
    #[arg(long, short = 't', default_value_t = 1)]
    talkers: usize,
    /// Packets per second per talker (paced mode).
    #[arg(long, default_value_t = 50)]
    pps: u32,
    /// Sending window, seconds.
    #[arg(long, short = 'd', default_value_t = 10.0)]
    duration: f64,
    /// Datagram size on the wire, bytes.
    #[arg(long, default_value_t = 160)]
    packet_size: usize,
    /// Send as fast as possible instead of pacing (saturation).
    #[arg(long)]
    max: bool,
    /// Skip the plain relay baseline.
    #[arg(long)]
    no_baseline: bool,
    /// Receive for this long after the sending window, milliseconds.
    #[arg(long, default_value_t = 500)]
    drain_ms: u64,
    /// Tokio worker threads of the load generator.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Print only the JSON line.
    #[arg(long)]
    json: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if !(0.001..=600.0).contains(&args.duration) {
        anyhow::bail!("--duration {} not in 0.001..=600 s", args.duration);
    }
    let server = match (&args.lvsp, &args.secret, &args.gateway) {
        (Some(lvsp), Some(secret), Some(gateway)) => {
            let gateway = gateway.split("/?").next().unwrap_or(gateway);
            let mut target = ServerTarget::new(lvsp, secret, gateway);
            target.cert = args.cert.clone();
            target.mode = args.mode;
            target.gateway_version = args.gateway_version;
            Some(target)
        }
        _ => None,
    };
    let config = Config {
        server,
        baseline: !args.no_baseline,
        channels: args.channels,
        members: args.members,
        talkers: args.talkers,
        pps: args.pps,
        duration: Duration::from_secs_f64(args.duration),
        packet_size: args.packet_size,
        pacing: if args.max { Pacing::Max } else { Pacing::Paced },
        drain: Duration::from_millis(args.drain_ms),
        ..Config::default()
    };
    config.validate()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.clamp(1, 64))
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let report = runtime.block_on(run(&config)).context("load test")?;
    if !args.json {
        print!("{}", report.table());
    }
    println!("{}", report.json());
    Ok(())
}
