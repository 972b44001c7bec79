//! The dataplane's command line: parsing, start-up and the run.
//!
//! `dataplane --shm <PATH> (--bind <IP:PORT> | --udp-fds <FD,...>)
//! [--stats-interval-ms 250] [--udp-idle-secs 60] [--reattach-secs 0]`
//! attaches the shared-memory region control created, binds one UDP socket
//! per core (the region's core count) or takes over the ones control handed
//! down, publishes the port, and runs until SIGTERM/SIGINT, or until the
//! control holding the region is gone and no other took it over within the
//! reattach window. The `dataplane`
//! binary and `control dataplane ...` (how control starts its child) both
//! call [`main`].

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use crate::core::{self, CoreConfig, PacketIo};
use crate::sys;
use anyhow::Context;
use clap::Parser;
use shared::Region;

/// Locked memory asked for (io_uring rings and registered buffers).
const MEMLOCK_WANTED: u64 = 256 << 20;
/// Locked memory one core needs with the default [`CoreConfig`] (1 MiB of
/// registered buffers plus three small rings), with headroom.
const MEMLOCK_PER_CORE: u64 = 3 << 20;

#[derive(Debug, Parser)]
#[command(name = "dataplane", about = "glommio thread-per-core RTP forwarder")]
struct Args {
    /// The shared-memory region created by control.
    #[arg(long)]
    shm: PathBuf,
    /// UDP address to bind (port 0 picks one and publishes it).
    #[arg(long, required_unless_present = "udp_fds", conflicts_with = "udp_fds")]
    bind: Option<SocketAddr>,
    /// Inherited descriptors of a reuseport group to serve instead of
    /// binding one (comma-separated, one per core, in core order): how
    /// control hands its sockets to each dataplane it starts, so the port
    /// stays the same and never falls free between two of them.
    #[arg(long, value_delimiter = ',')]
    udp_fds: Vec<std::os::fd::RawFd>,
    /// Interval between statistics reports, milliseconds.
    #[arg(long, default_value_t = 250)]
    stats_interval_ms: u64,
    /// Seconds a proven client address may stay silent (no authenticated
    /// media, no keepalive) before the data plane stops sending to it.
    #[arg(long, default_value_t = 60)]
    udp_idle_secs: u64,
    /// Seconds the data plane forwards on after control went away, waiting
    /// for a new control to take the region over (0: stop at once).
    #[arg(long, default_value_t = 0)]
    reattach_secs: u64,
    /// How each core moves datagrams: `mmsg` (recvmmsg/sendmmsg) or
    /// `uring` (its own io_uring: multishot receive into provided buffers,
    /// batched sends; Linux 6.0).
    #[arg(long, value_enum, default_value_t = PacketIo::default())]
    packet_io: PacketIo,
    /// Log lines for people (`human`) or as JSON objects (`json`), on
    /// stderr; the filter is RUST_LOG's (default info).
    #[arg(long, env = "VOICE_LOG_FORMAT", default_value = "human",
          value_parser = ["human", "json"])]
    log_format: String,
}

/// Parses `args` (the first one is the program name), runs the data plane
/// until shutdown, and returns the process exit code.
pub fn main(args: impl IntoIterator<Item = OsString>) -> ExitCode {
    let args = match Args::try_parse_from(args) {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let logs = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        );
    let _ = match args.log_format.as_str() {
        "json" => logs.json().try_init(),
        _ => logs.try_init(),
    };
    // A panicking core must not leave its socket dead in the reuseport
    // group (its share of the traffic would vanish) while the other cores
    // run on: the whole process goes, and control's supervision starts a
    // fresh one and pushes the state into it again.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default_hook(info);
        tracing::error!("panic: {info}; aborting the data plane");
        std::process::abort();
    }));
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("dataplane: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    if args.stats_interval_ms == 0 {
        anyhow::bail!("--stats-interval-ms must be at least 1");
    }
    if args.udp_idle_secs == 0 {
        anyhow::bail!("--udp-idle-secs must be at least 1");
    }
    sys::install_shutdown_signals().context("installing signal handlers")?;
    sys::sodium::init().context("initialising libsodium")?;
    if !sys::sodium::aes256gcm_available() {
        tracing::warn!(
            "AES-256-GCM unavailable on this CPU: aead_aes256_gcm_rtpsize sessions will be refused"
        );
    }
    let region = Region::attach(&args.shm)
        .with_context(|| format!("cannot attach shared memory region {}", args.shm.display()))?;
    let cores = region.config().cores;
    let needed = MEMLOCK_PER_CORE * u64::from(cores);
    match sys::raise_memlock(MEMLOCK_WANTED) {
        Ok(limit) if limit < needed => tracing::warn!(
            limit,
            needed,
            "RLIMIT_MEMLOCK is low and could not be raised; glommio may fail to start \
             (run privileged or raise `ulimit -l`)"
        ),
        Ok(limit) => tracing::debug!(limit, "RLIMIT_MEMLOCK"),
        Err(e) => tracing::warn!(error = %e, "reading RLIMIT_MEMLOCK failed"),
    }
    let sockets = match args.bind {
        Some(bind) => sys::socket::bind_group(bind, cores)
            .with_context(|| format!("binding {cores} UDP sockets to {bind}"))?,
        None => sys::socket::adopt_group(&args.udp_fds, cores)
            .with_context(|| format!("taking over the UDP sockets {:?}", args.udp_fds))?,
    };
    let local = sockets[0]
        .local_addr()
        .context("reading the bound address")?;
    region.publish_udp_port(local.port());
    tracing::info!(%local, cores, packet_io = args.packet_io.name(), "sockets bound, port published");
    // Everything privileged is done (the sockets are bound, the memlock
    // limit raised): no capability is kept, before any executor thread
    // starts (threads inherit the calling thread's sets).
    match sys::drop_capabilities() {
        Ok(0) => {}
        Ok(had) => tracing::info!(had = format_args!("{had:#x}"), "capabilities dropped"),
        Err(e) => anyhow::bail!("dropping capabilities: {e}"),
    }
    let mut config = CoreConfig {
        stats_interval: Duration::from_millis(args.stats_interval_ms),
        packet_io: args.packet_io,
        ..CoreConfig::default()
    };
    config.forward.idle_ms = args.udp_idle_secs.saturating_mul(1000);
    core::run(
        &region,
        sockets,
        &config,
        Duration::from_secs(args.reattach_secs),
    )?;
    if !region.is_anonymous() && !sys::Process::alive(region.control_pid()) && region.is_current() {
        // The control that created the region file died without cleaning
        // up (it removes the file on a normal shutdown): nobody else will.
        // (A file that is no longer ours belongs to a newer control.)
        tracing::warn!("control went away; removing {}", args.shm.display());
        let _ = std::fs::remove_file(&args.shm);
    }
    tracing::info!("dataplane stopped");
    Ok(())
}
