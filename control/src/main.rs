//! `control`: runs the voice server (LVSP + voice gateway) and, unless told
//! otherwise, the data plane as a child process: itself, re-executed as
//! `control dataplane --shm <path> --bind <addr>` (the same entry point as
//! the standalone `dataplane` binary).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{CommandFactory, FromArgMatches, Parser};
use control::config::{Config, DataplaneMode, Tls};
use control::server::Server;
use control::settings;
use tokio::signal::unix::{signal, Signal, SignalKind};

/// Voice server control plane. Every flag has an embedded default: with none
/// it serves on loopback with a generated secret. Every flag is also a key
/// of the --config file (`udp_bind = ...` for --udp-bind) and an
/// environment variable (VOICE_UDP_BIND); flags win over the environment,
/// which wins over the file.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// A TOML configuration file (see config/voice.example.toml).
    #[arg(long, env = "VOICE_CONFIG")]
    config: Option<PathBuf>,
    /// Print the effective configuration (secrets masked), each setting
    /// with where it came from, and exit.
    #[arg(long)]
    print_config: bool,
    /// LVSP listen address.
    #[arg(long, default_value = "127.0.0.1:5470")]
    lvsp_listen: SocketAddr,
    /// Voice gateway listen address.
    #[arg(long, default_value = "127.0.0.1:5480")]
    gateway_listen: SocketAddr,
    /// HTTP address for /metrics and /health ("off" disables it).
    #[arg(long, default_value = "127.0.0.1:5491")]
    metrics_listen: String,
    /// UDP address the data plane binds (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:5490")]
    udp_bind: SocketAddr,
    /// IPv4 address clients are told to send UDP to (default: the UDP bind
    /// address, or 127.0.0.1 when that is unspecified).
    #[arg(long)]
    public_ip: Option<std::net::Ipv4Addr>,
    /// Secret shared with Litecord (also read from VOICE_SECRET), at least
    /// 32 characters. Default: 64 hex digits, generated and printed (a
    /// secret given here is never printed).
    #[arg(long, env = "VOICE_SECRET", hide_env_values = true)]
    secret: Option<String>,
    /// Data-plane cores (default: all CPUs).
    #[arg(long)]
    cores: Option<u32>,
    /// Run this `dataplane` binary as the child instead of this executable's
    /// own `dataplane` subcommand.
    #[arg(long)]
    dataplane_bin: Option<PathBuf>,
    /// TLS certificate chain (PEM) for both listeners; with --tls-key.
    /// Default: a generated self-signed certificate (printed as `cert:`).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM) for --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Where the generated self-signed certificate is written.
    #[arg(long)]
    self_signed_cert: Option<PathBuf>,
    /// Extra names (DNS or IP) for the self-signed certificate, besides
    /// localhost, 127.0.0.1 and the public IP.
    #[arg(long)]
    self_signed_name: Vec<String>,
    /// Serve LVSP as plain ws:// (behind a TLS-terminating proxy only).
    #[arg(long)]
    lvsp_plain: bool,
    /// Serve the voice gateway as plain ws:// (behind a TLS-terminating
    /// proxy only).
    #[arg(long)]
    gateway_plain: bool,
    /// Do not spawn the dataplane: wait for one started by hand.
    #[arg(long)]
    external_dataplane: bool,
    /// Shared-memory file, created 0600 (for --external-dataplane). Default:
    /// an anonymous memfd only this user can reach, gone with the
    /// processes.
    #[arg(long)]
    shm: Option<PathBuf>,
    /// Seconds a proven client address may stay silent (no authenticated
    /// media, no keepalive) before the data plane stops sending to it.
    #[arg(long, default_value_t = 60)]
    udp_idle_secs: u64,
    /// How the data plane's cores move datagrams: `mmsg`
    /// (recvmmsg/sendmmsg) or `uring` (their own io_uring: multishot
    /// receive into provided buffers, batched sends; Linux 6.0). See
    /// BENCHMARKS.md for how they compare.
    #[arg(long, value_enum, default_value_t = dataplane::core::PacketIo::default())]
    packet_io: dataplane::core::PacketIo,
    /// LVSP heartbeat interval in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    lvsp_heartbeat_ms: u64,
    /// LVSP dialect: `spec` (seeds/001) or `litecord` (Litecord's shipped
    /// client: heartbeat in seconds, its INFO numbering).
    #[arg(long, default_value = "spec")]
    lvsp_dialect: control::lvsp::Dialect,
    /// Seconds channels and voice states survive with no LVSP connection.
    #[arg(long, default_value_t = 300)]
    lvsp_grace_secs: u64,
    /// INFOs kept for LVSP RESUME.
    #[arg(long, default_value_t = 4096)]
    lvsp_replay: usize,
    /// Sustained LVSP messages per second per connection (burst: twice).
    #[arg(long, default_value_t = 1000.0)]
    lvsp_rate: f64,
    /// Sessions one data-plane core is sized for (health falls as they
    /// fill).
    #[arg(long, default_value_t = 1000)]
    capacity_per_core: u64,
    /// Milliseconds a gateway session whose websocket went away keeps its
    /// SSRC, key and address waiting for a Resume.
    #[arg(long, default_value_t = 30_000)]
    gateway_resume_grace_ms: u64,
    /// Milliseconds a gateway session whose client closed with 1000 or
    /// 1001 may still resume; the other members are told it left at once.
    #[arg(long, default_value_t = 5_000)]
    gateway_leave_grace_ms: u64,
    /// Seconds a voice state with no gateway session in the call (never
    /// identified, or left it) is kept before it is removed.
    #[arg(long, default_value_t = 300)]
    voice_state_idle_secs: u64,
    /// Seconds a channel with no voice states is kept before it is
    /// destroyed.
    #[arg(long, default_value_t = 300)]
    channel_idle_secs: u64,
    /// Sustained gateway messages per second per connection (past the
    /// budget: close 4021).
    #[arg(long, default_value_t = 10.0)]
    gateway_rate: f64,
    /// Gateway messages a connection may send at once.
    #[arg(long, default_value_t = 60.0)]
    gateway_burst: f64,
    /// Encryption modes offered in Ready, in order of preference
    /// (comma-separated gateway names; default the two AEAD modes,
    /// AES-GCM first; the legacy xsalsa20_poly1305 modes only when listed).
    #[arg(long, value_delimiter = ',', value_parser = parse_mode)]
    modes: Vec<shared::Mode>,
    /// Identified gateway connections (Identify or Resume accepted); past
    /// it an identifying connection is closed with 1013.
    #[arg(long, default_value_t = 10_000)]
    max_connections: usize,
    /// Identified LVSP connections (Litecord's links).
    #[arg(long, default_value_t = 64)]
    lvsp_max_connections: usize,
    /// Gateway connections not yet identified (TCP, TLS, upgrade, waiting
    /// for Identify); when full, a newcomer takes the slot of the oldest
    /// one of the /24 or /64 holding the most.
    #[arg(long, default_value_t = 512)]
    gateway_max_pending: usize,
    /// LVSP connections not yet identified (as --gateway-max-pending).
    #[arg(long, default_value_t = 64)]
    lvsp_max_pending: usize,
    /// Pending connections per listener from one source address.
    #[arg(long, default_value_t = 8)]
    max_pending_per_address: usize,
    /// Pending connections per listener from one /24 (IPv4) or /64 (IPv6).
    #[arg(long, default_value_t = 32)]
    max_pending_per_prefix: usize,
    /// Concurrent /metrics and /health connections; more are refused.
    #[arg(long, default_value_t = 32)]
    metrics_max_connections: usize,
    /// Seconds from accept to the end of the websocket upgrade (TLS
    /// included) before a connection is dropped.
    #[arg(long, default_value_t = 5)]
    handshake_timeout_secs: u64,
    /// Seconds a gateway connection may stay without Identify or Resume
    /// (closed with 4003 after).
    #[arg(long, default_value_t = 10)]
    identify_timeout_secs: u64,
    /// Seconds an LVSP connection may stay without IDENTIFY or RESUME
    /// (closed with 4000 after).
    #[arg(long, default_value_t = 10)]
    lvsp_identify_timeout_secs: u64,
    /// Gateway heartbeat interval in milliseconds.
    #[arg(long, default_value_t = 13_750)]
    gateway_heartbeat_ms: u64,
    /// Failed LVSP IDENTIFY/RESUME allowed from one address (IPv6: one
    /// /64) before its attempts are refused unchecked (close 4001) for a
    /// window of 1 s, doubling per further failure.
    #[arg(long, default_value_t = 3)]
    lvsp_auth_failures: u32,
    /// Longest such refusal window, in seconds (an address is forgotten
    /// after twice this, at least 600 s, without failures).
    #[arg(long, default_value_t = 300)]
    lvsp_auth_backoff_max_secs: u64,
    /// Seconds a drain (SIGUSR1, or POST /drain on the metrics listener)
    /// waits for the calls to end; then the members still in one are
    /// closed (4014, or 4015 with --drain-restart) and the process exits.
    #[arg(long, default_value_t = 600)]
    drain_deadline_secs: u64,
    /// A restart follows a drain: members closed at its deadline get 4015
    /// (resume) instead of 4014.
    #[arg(long)]
    drain_restart: bool,
    /// Directory (this user's, 0700; created if missing) where control
    /// saves channels, voice states and sessions (with their keys) so that
    /// a control started on the same directory takes the running data plane
    /// over without dropping a call. Without it nothing is saved and the
    /// data plane stops with control.
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// DAVE end-to-end encryption: on (while every member of a call
    /// supports it), off, or required (4017 for clients without it).
    #[arg(long, default_value = "on")]
    dave: control::dave::DaveMode,
    /// With --state-dir: seconds the data plane forwards on after control
    /// went away, waiting for a new control to take it over.
    #[arg(long, default_value_t = 60)]
    reattach_window_secs: u64,
    /// What to log: tracing filter directives (`info`, `warn`,
    /// `info,control::gateway=debug`). Default: RUST_LOG, else info.
    /// Reloaded on SIGHUP. The websocket and TLS libraries never log below
    /// info (they would print frames, with tokens and keys).
    #[arg(long)]
    log_level: Option<String>,
    /// Log lines for people (`human`) or one JSON object per line
    /// (`json`), on stderr.
    #[arg(long, default_value = "human", value_parser = ["human", "json"])]
    log_format: String,
}

impl Args {
    fn into_config(self) -> anyhow::Result<Config> {
        let mut c = Config::new();
        c.metrics_listen = match self.metrics_listen.as_str() {
            "off" => None,
            addr => Some(addr.parse().context("--metrics-listen")?),
        };
        c.lvsp_listen = self.lvsp_listen;
        c.gateway_listen = self.gateway_listen;
        c.udp_bind = self.udp_bind;
        c.public_ip = self
            .public_ip
            .unwrap_or_else(|| Config::public_ip_for(self.udp_bind));
        let tls = match (self.tls_cert, self.tls_key) {
            (Some(cert), Some(key)) => Tls::Files { cert, key },
            _ => {
                let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
                let public = c.public_ip.to_string();
                if !names.contains(&public) {
                    names.push(public);
                }
                names.extend(self.self_signed_name);
                let cert_out = match (self.self_signed_cert, &c.lvsp_tls) {
                    (Some(p), _) => p,
                    (None, Tls::SelfSigned { cert_out, .. }) => cert_out.clone(),
                    (None, _) => std::env::temp_dir().join("voice-server-cert.pem"),
                };
                Tls::SelfSigned { cert_out, names }
            }
        };
        c.lvsp_tls = if self.lvsp_plain {
            Tls::Off
        } else {
            tls.clone()
        };
        c.gateway_tls = if self.gateway_plain { Tls::Off } else { tls };
        if let Some(s) = self.secret {
            c.secret = s;
        }
        if let Some(n) = self.cores {
            c.cores = n;
        }
        if self.external_dataplane {
            c.dataplane = DataplaneMode::External;
        } else if let Some(bin) = self.dataplane_bin {
            c.dataplane = DataplaneMode::Spawn(bin);
        }
        c.shm_path = self.shm;
        c.udp_idle = Duration::from_secs(self.udp_idle_secs);
        c.packet_io = self.packet_io;
        c.lvsp_heartbeat = Duration::from_millis(self.lvsp_heartbeat_ms);
        c.gateway_heartbeat = Duration::from_millis(self.gateway_heartbeat_ms);
        c.lvsp_dialect = self.lvsp_dialect;
        c.max_connections = self.max_connections;
        c.lvsp_max_connections = self.lvsp_max_connections;
        c.gateway_max_pending = self.gateway_max_pending;
        c.lvsp_max_pending = self.lvsp_max_pending;
        c.max_pending_per_address = self.max_pending_per_address;
        c.max_pending_per_prefix = self.max_pending_per_prefix;
        c.metrics_max_connections = self.metrics_max_connections;
        c.handshake_timeout = Duration::from_secs(self.handshake_timeout_secs);
        c.identify_timeout = Duration::from_secs(self.identify_timeout_secs);
        c.lvsp_identify_timeout = Duration::from_secs(self.lvsp_identify_timeout_secs);
        if !self.modes.is_empty() {
            c.modes = self.modes;
        }
        c.gateway_resume_grace = Duration::from_millis(self.gateway_resume_grace_ms);
        c.gateway_leave_grace = Duration::from_millis(self.gateway_leave_grace_ms);
        c.voice_state_idle = Duration::from_secs(self.voice_state_idle_secs);
        c.channel_idle = Duration::from_secs(self.channel_idle_secs);
        c.gateway_rate = control::limit::RateLimit {
            per_second: self.gateway_rate,
            burst: self.gateway_burst,
        };
        c.capacity_per_core = self.capacity_per_core;
        c.lvsp_grace = Duration::from_secs(self.lvsp_grace_secs);
        c.lvsp_replay = self.lvsp_replay;
        c.lvsp_rate = control::lvsp::RateLimit {
            per_second: self.lvsp_rate,
            burst: self.lvsp_rate * 2.0,
        };
        let backoff_max = Duration::from_secs(self.lvsp_auth_backoff_max_secs);
        c.lvsp_auth_backoff = control::lvsp::AuthBackoff {
            free_failures: self.lvsp_auth_failures,
            max: backoff_max,
            forget_after: (backoff_max * 2).max(Duration::from_secs(600)),
            ..control::lvsp::AuthBackoff::default()
        };
        c.drain_deadline = Duration::from_secs(self.drain_deadline_secs);
        c.drain_restart = self.drain_restart;
        c.state_dir = self.state_dir;
        c.dave = self.dave;
        c.reattach_window = Duration::from_secs(self.reattach_window_secs);
        c.log_json = self.log_format == "json";
        c.log_level = self.log_level;
        Ok(c)
    }
}

fn parse_mode(name: &str) -> Result<shared::Mode, String> {
    shared::Mode::from_name(name).ok_or_else(|| {
        let known: Vec<&str> = shared::Mode::ALL.iter().map(|m| m.name()).collect();
        format!("unknown mode {name:?} (one of {})", known.join(", "))
    })
}

fn main() -> ExitCode {
    // `control dataplane ...`: the child control starts for the data plane.
    if std::env::args_os().nth(1).is_some_and(|a| a == "dataplane") {
        return dataplane::cli::main(std::env::args_os().skip(1));
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_start(drop_capabilities_here)
        .on_thread_park(drop_capabilities_here)
        .on_thread_unpark(drop_capabilities_here)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("control: cannot start the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("control: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Set once everything privileged is done (listeners and UDP sockets bound,
/// the data plane started): from then on each thread of the runtime drops
/// its capabilities the next time it starts, parks or wakes (Linux keeps
/// capabilities per thread), and threads started later inherit none.
static DROP_CAPABILITIES: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

thread_local! {
    static DROPPED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Drops the calling thread's capabilities once [`DROP_CAPABILITIES`] is
/// set. A thread that cannot drop them takes the process down rather than
/// serve with privileges nobody meant it to keep.
fn drop_capabilities_here() {
    if !DROP_CAPABILITIES.load(std::sync::atomic::Ordering::Acquire) || DROPPED.get() {
        return;
    }
    DROPPED.set(true);
    if let Err(e) = dataplane::sys::drop_capabilities() {
        eprintln!("control: dropping capabilities: {e}");
        std::process::abort();
    }
}

/// Gives up every capability (see [`DROP_CAPABILITIES`]) once serving
/// needs none; says so when there were some, and warns about root.
fn drop_privileges() {
    let had = dataplane::sys::permitted_capabilities().unwrap_or(0);
    DROP_CAPABILITIES.store(true, std::sync::atomic::Ordering::Release);
    drop_capabilities_here();
    if had != 0 {
        tracing::info!(had = format_args!("{had:#x}"), "capabilities dropped");
    }
    if nix::unistd::geteuid().is_root() {
        tracing::warn!(
            "running as root (without capabilities now): run as an unprivileged user \
             (docs/DEPLOYMENT.md, packaging/voice-server.service)"
        );
    }
}

/// Where the log filter can be changed while the server runs.
type LogFilter =
    tracing_subscriber::reload::Handle<tracing_subscriber::EnvFilter, tracing_subscriber::Registry>;

/// The log filter `args` ask for: --log-level, else RUST_LOG, else info.
fn log_filter(args: &Args) -> anyhow::Result<tracing_subscriber::EnvFilter> {
    use tracing_subscriber::EnvFilter;
    Ok(match &args.log_level {
        Some(directives) => EnvFilter::try_new(directives).context("--log-level")?,
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    })
}

/// Logs to stderr, for people or as JSON lines (each with the fields of
/// its connection's span: peer, user, channel, SSRC), at --log-level's
/// levels, except that the websocket and TLS libraries never log below
/// info: at debug and trace they print whole frames, and with them tokens,
/// session ids and keys. A second filter rather than extra directives,
/// because a more specific directive (`tungstenite::protocol=trace`) would
/// win over ours.
fn init_logging(args: &Args) -> anyhow::Result<LogFilter> {
    use tracing_subscriber::filter::{LevelFilter, Targets};
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    let (wanted, handle) = tracing_subscriber::reload::Layer::new(log_filter(args)?);
    let never_frames = Targets::new()
        .with_default(LevelFilter::TRACE)
        .with_target("tungstenite", LevelFilter::INFO)
        .with_target("tokio_tungstenite", LevelFilter::INFO)
        .with_target("rustls", LevelFilter::INFO)
        .with_target("tokio_rustls", LevelFilter::INFO);
    let format = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let format = match args.log_format.as_str() {
        "json" => format
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .boxed(),
        _ => format.boxed(),
    };
    tracing_subscriber::registry()
        .with(wanted)
        .with(format.with_filter(never_frames))
        .init();
    Ok(handle)
}

/// The command line: flags, the environment and the --config file (see
/// [`settings`]).
fn command() -> clap::Command {
    settings::with_env(Args::command())
}

/// The command line this process started with, the environment and the
/// configuration file (read now), parsed; with the effective configuration
/// as `--print-config` shows it.
fn arguments() -> Result<(Args, String), clap::Error> {
    let cmd = command();
    let cli = cmd.clone().try_get_matches_from(std::env::args_os())?;
    let file = match cli.get_one::<PathBuf>("config") {
        Some(path) => settings::read(&cmd, path).map_err(|e| {
            clap::Error::raw(clap::error::ErrorKind::ValueValidation, format!("{e}\n"))
        })?,
        None => Vec::new(),
    };
    let mut argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    argv.extend(settings::beneath(&cli, &file));
    let matches = cmd.clone().try_get_matches_from(argv)?;
    let args = Args::from_arg_matches(&matches)?;
    let shown = settings::effective(&cmd, &matches, &cli, &file);
    Ok((args, shown))
}

async fn serve() -> anyhow::Result<()> {
    let (args, shown) = arguments().unwrap_or_else(|e| e.exit());
    if args.print_config {
        print!("{shown}");
        return Ok(());
    }
    let log = init_logging(&args)?;
    // Only a secret the server made up is printed: the operator already
    // has theirs, and stdout may end up in a log others can read.
    let generated = args.secret.is_none();
    let config = args.into_config()?;
    let secret = generated.then(|| config.secret.clone());
    let server = Server::start(config)
        .await
        .context("starting the voice server")?;
    drop_privileges();
    // Watched before "ready": a SIGUSR1 from then on drains, never kills.
    let usr1 = match signal(SignalKind::user_defined1()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::error!(%e, "cannot watch SIGUSR1: drain only through POST /drain");
            None
        }
    };
    // Machine-readable "key: value" lines on stdout (the tests parse them).
    println!("voice server ready");
    println!("lvsp: {}", server.lvsp_url());
    if let Some(secret) = &secret {
        println!("secret: {secret}");
    }
    println!("gateway: {}/?v=8", server.gateway_url());
    if let Some(cert) = &server.self_signed_cert {
        println!("cert: {}", cert.display());
    }
    println!("udp: {}", server.udp_addr);
    if let Some(m) = server.metrics_addr {
        println!("metrics: http://{m}/metrics");
    }
    println!("cores: {}", server.cores);
    if let Some((counts, taken_over)) = server.restored {
        println!(
            "restored: channels={} voice_states={} sessions={} dataplane={}",
            counts.channels,
            counts.voice_states,
            counts.sessions,
            if taken_over { "taken-over" } else { "new" }
        );
    }
    // Last: the tests read up to this line.
    println!("shm: {}", server.shm_path.display());

    let drain = tokio::spawn(drain_signal(usr1, server.drainer()));
    let reload = tokio::spawn(reload_signal(server.reloader(), log, secret));
    server.run(shutdown_signal()).await?;
    drain.abort();
    reload.abort();
    Ok(())
}

/// SIGHUP reads the command line, the environment and the configuration
/// file again and applies what can change while serving (see
/// [`control::server::Reloader`]); a generated secret stays the same.
async fn reload_signal(
    reloader: control::server::Reloader,
    log: LogFilter,
    generated_secret: Option<String>,
) {
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(%e, "cannot watch SIGHUP: no reloads");
            return;
        }
    };
    while hup.recv().await.is_some() {
        match reload(&reloader, &log, generated_secret.as_deref()) {
            Ok(done) => tracing::info!(
                applied = ?done.applied,
                needs_restart = ?done.restart,
                "configuration reloaded"
            ),
            Err(e) => {
                if !e.is::<control::server::ReloadError>() {
                    reloader.refused();
                }
                tracing::error!("reload refused, nothing changed: {e:#}");
            }
        }
    }
}

/// One reload: everything parsed and read before anything changes.
fn reload(
    reloader: &control::server::Reloader,
    log: &LogFilter,
    generated_secret: Option<&str>,
) -> anyhow::Result<control::server::Reloaded> {
    let (args, _) = arguments().map_err(|e| anyhow::anyhow!("{}", e.to_string().trim_end()))?;
    let filter = log_filter(&args)?;
    let keep_secret = args.secret.is_none();
    let mut config = args.into_config()?;
    if let (true, Some(secret)) = (keep_secret, generated_secret) {
        config.secret = secret.to_owned();
    }
    let done = reloader.reload(config)?;
    log.reload(filter).context("log filter")?;
    Ok(done)
}

/// SIGUSR1 starts a drain (with --drain-restart's say on what follows).
async fn drain_signal(usr1: Option<Signal>, drainer: control::server::Drainer) {
    let Some(mut usr1) = usr1 else {
        return;
    };
    while usr1.recv().await.is_some() {
        drainer.drain(None);
    }
}

async fn shutdown_signal() {
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(%e, "cannot watch SIGTERM");
            return std::future::pending().await;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/voice.example.toml");

    /// What the example configuration file starts with.
    const EXAMPLE_HEADER: &str = "\
The voice server's configuration (control --config PATH).

Every setting below is shown with its default; a commented-out one has
none. Each is also a flag (--udp-bind for udp_bind) and an environment
variable (shown): flags win over the environment, which wins over this
file. Durations are in the unit their name ends with (_ms, _secs).
Generated from the flags' help by `control`'s tests: edit the help, not
this file (UPDATE_EXAMPLE_CONFIG=1 cargo test -p control --bin control
rewrites it).";

    /// The example file is what the flags say; it never drifts.
    #[test]
    fn the_example_configuration_is_current() {
        let generated = settings::example(&command(), EXAMPLE_HEADER);
        if std::env::var_os("UPDATE_EXAMPLE_CONFIG").is_some() {
            std::fs::write(EXAMPLE, &generated).unwrap();
        }
        let on_disk = std::fs::read_to_string(EXAMPLE).unwrap_or_default();
        assert!(
            on_disk == generated,
            "{EXAMPLE} is stale: UPDATE_EXAMPLE_CONFIG=1 cargo test -p control --bin control"
        );
    }

    /// Read back, the example is the defaults: the same configuration as
    /// no file at all.
    #[test]
    fn the_example_configuration_is_the_defaults() {
        let cmd = command();
        let file = settings::read(&cmd, std::path::Path::new(EXAMPLE)).unwrap();
        let with_defaults = cmd
            .get_arguments()
            .filter(|a| settings::key(a).is_some())
            .filter(|a| !a.get_default_values().is_empty() || !a.get_action().takes_values())
            .count();
        assert!(with_defaults > 30);
        assert_eq!(file.len(), with_defaults, "every setting with a default");
        let mut argv = vec![std::ffi::OsString::from("control")];
        let cli = cmd.clone().try_get_matches_from(&argv).unwrap();
        argv.extend(settings::beneath(&cli, &file));
        let from_file = cmd.clone().try_get_matches_from(argv).unwrap();
        let with = Args::from_arg_matches(&from_file).unwrap();
        let without = Args::from_arg_matches(&cli).unwrap();
        assert_eq!(format!("{with:?}"), format!("{without:?}"));
    }
}
