//! The thin I/O layer: listeners, one task per websocket driving a protocol
//! state machine, effect dispatch, the dataplane child and the ring poller.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use rand::rngs::StdRng;
use rand::SeedableRng;
use shared::{Event, Region, RegionConfig, RegionError};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;
use tracing::Instrument;

use crate::config::{Config, DataplaneMode, DescriptorShortage, Tls};
use crate::connection::{Context, Protocol};
use crate::link::{self, Events, Link, Load};
use crate::persist::{self, SavedDataplane, Snapshot, StateError, Store};
use crate::registry::{ConnId, Effect, Push, Registry, RestoreCounts};
use crate::{gateway, lvsp, Output};
use budget::{Budget, Pending};
use dataplane::sys::Process;
use supervisor::Supervisor;

mod budget;
mod descriptors;
mod metrics;
mod reload;
mod supervisor;
pub mod tls;

pub use reload::{ReloadError, Reloaded, Reloader};

/// Errors starting or running the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The configuration does not validate.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The shared-memory region could not be set up.
    #[error(transparent)]
    Region(#[from] RegionError),
    /// A listener could not be bound.
    #[error("listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// TLS could not be set up.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// The open-file limit could not be read.
    #[error("reading the open-file limit: {0}")]
    OpenFileLimit(std::io::Error),
    /// The connection caps do not fit in the open-file limit.
    #[error(transparent)]
    OpenFiles(#[from] DescriptorShortage),
    /// The dataplane failed to start or died.
    #[error("dataplane: {0}")]
    Dataplane(String),
    /// The state directory cannot be used.
    #[error(transparent)]
    State(#[from] StateError),
    /// DAVE's external sender key could not be made.
    #[error("DAVE: {0}")]
    Dave(String),
}

/// Which close codes the server sent, per protocol (for metrics).
pub type CloseCounts = BTreeMap<(&'static str, u16), u64>;

/// State shared by every task; one lock so that registry changes and the
/// effects they cause are applied in the same order they happened.
#[derive(Debug)]
struct Hub {
    /// What the connections' messages change.
    cx: Context,
    link: Link,
    events: Events,
    gateways: HashMap<ConnId, mpsc::UnboundedSender<Push>>,
    load: Load,
    closes: CloseCounts,
    /// Times reading paused, per protocol: the connection's budget was
    /// spent and its peer is trusted to wait (back-pressure).
    throttled: BTreeMap<&'static str, u64>,
    /// Times the dataplane was restarted after dying.
    dataplane_restarts: u64,
    /// The dataplane child's process id, while it runs.
    dataplane_pid: Option<u32>,
    /// Which data plane serves the sessions, as saved for a restart.
    dataplane: Option<SavedDataplane>,
    /// Bumped when the data plane serving changes (see [`Hub::changes`]).
    dataplane_changes: u64,
}

#[derive(Debug)]
struct Shared {
    hub: Mutex<Hub>,
    /// What LVSP connections start with (replaced by a reload).
    lvsp: std::sync::RwLock<Arc<lvsp::Config>>,
    /// What gateway connections start with (replaced by a reload).
    gateway: std::sync::RwLock<Arc<gateway::Config>>,
    ws: WebSocketConfig,
    next_conn: AtomicU64,
    /// Pending and identified connection budgets per listener, indexed by
    /// [`Kind`].
    budgets: [Arc<Budget>; 2],
    /// From accept to the end of the websocket upgrade, TLS included.
    handshake_timeout: Duration,
    /// From the upgrade to Identify (or RESUME), indexed by [`Kind`].
    identify_timeouts: [Duration; 2],
    /// Concurrent `/metrics` connections.
    metrics_slots: Arc<tokio::sync::Semaphore>,
    /// `/metrics` connections refused at that cap.
    metrics_refused: AtomicU64,
    /// How long a drain waits for calls to end.
    drain_deadline: Duration,
    /// Whether a restart follows a drain, unless the request says.
    drain_restart: bool,
    /// Where the state a new control takes over from is saved.
    store: Option<Store>,
    /// What SIGHUP reloads did.
    reloads: Mutex<reload::Reloads>,
}

impl Shared {
    /// The LVSP settings a new connection starts with.
    fn lvsp_config(&self) -> Arc<lvsp::Config> {
        self.lvsp.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The gateway settings a new connection starts with.
    fn gateway_config(&self) -> Arc<gateway::Config> {
        self.gateway
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn hub(&self) -> MutexGuard<'_, Hub> {
        // A panic while holding the lock must not take the server down.
        self.hub.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on the registry, then carries out its effects under the same
    /// lock (ring pushes and channel sends never block).
    fn with<R>(&self, f: impl FnOnce(&mut Context) -> R) -> R {
        let mut hub = self.hub();
        let r = f(&mut hub.cx);
        hub.dispatch();
        r
    }

    /// Saves the state if it changed since `saved` (the change count of
    /// the last save); returns the change count now.
    async fn save(&self, saved: u64) -> u64 {
        let Some(store) = self.store.clone() else {
            return saved;
        };
        let (snapshot, changes) = {
            let hub = self.hub();
            let changes = hub.changes();
            if changes == saved {
                return saved;
            }
            (hub.snapshot(), changes)
        };
        let written = tokio::task::spawn_blocking(move || store.save(&snapshot))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()));
        match written {
            Ok(()) => changes,
            Err(error) => {
                tracing::error!(%error, "saving the state failed");
                saved
            }
        }
    }

    /// Starts draining (or, draining already, takes the latest word on a
    /// restart); `restart` None: as configured. Returns whether a restart
    /// follows and whether this call started the drain.
    fn drain(&self, restart: Option<bool>) -> (bool, bool) {
        let restart = restart.unwrap_or(self.drain_restart);
        let deadline = Instant::now() + self.drain_deadline;
        let started = self.with(|cx| cx.registry.drain(deadline, restart));
        if started {
            tracing::info!(
                deadline_secs = self.drain_deadline.as_secs(),
                restart,
                "draining: health 0, exiting when the last call ends"
            );
        } else {
            tracing::info!(restart, "draining already");
        }
        (restart, started)
    }
}

/// Starts a drain from outside the server (a signal handler): health 0
/// from then on, calls go on, and the server stops when the last call
/// ends or at the drain deadline.
#[derive(Debug, Clone)]
pub struct Drainer(Arc<Shared>);

impl Drainer {
    /// Starts draining; `restart` says whether a restart follows (members
    /// closed at the deadline get 4015 instead of 4014), None: as
    /// configured. Draining again keeps the first deadline.
    pub fn drain(&self, restart: Option<bool>) {
        self.0.drain(restart);
    }
}

impl Hub {
    /// What a new control needs to take over.
    fn snapshot(&self) -> Snapshot {
        Snapshot {
            format: persist::FORMAT,
            saved_at_ms: persist::unix_ms(std::time::SystemTime::now()),
            registry: self.cx.registry.save(Instant::now()),
            lvsp: self.cx.replay.clone(),
            dataplane: self.dataplane.clone(),
        }
    }

    /// A count that moves whenever what [`Hub::snapshot`] saves may have
    /// changed: the registry, LVSP's numbered INFOs, the data plane.
    fn changes(&self) -> u64 {
        self.cx.registry.changes() + self.cx.replay.seq() + self.dataplane_changes
    }

    /// Records the dataplane now serving (None: none outlives control).
    fn serving(&mut self, pid: Option<u32>, udp_port: u16, outlives: bool) {
        self.dataplane_pid = pid;
        self.dataplane = pid.filter(|_| outlives).and_then(|pid| {
            Some(SavedDataplane {
                pid,
                started: persist::process_start(pid)?,
                udp_port,
            })
        });
        self.dataplane_changes += 1;
    }

    /// Carries out the registry's queued effects.
    fn dispatch(&mut self) {
        for effect in self.cx.registry.drain_effects() {
            match effect {
                Effect::Dataplane { core, command } => self.link.send(core, command),
                Effect::Gateway { conn, push } => {
                    if let Some(tx) = self.gateways.get(&conn) {
                        let _ = tx.send(push);
                    }
                }
            }
        }
    }
}

/// A started server: listeners bound, dataplane up.
pub struct Server {
    /// Where LVSP listens.
    pub lvsp_addr: SocketAddr,
    /// Where the voice gateway listens.
    pub gateway_addr: SocketAddr,
    /// Where the data plane receives UDP.
    pub udp_addr: SocketAddr,
    /// Where `/metrics` and `/health` are served, if enabled.
    pub metrics_addr: Option<SocketAddr>,
    /// The generated self-signed certificate clients should trust, if any.
    pub self_signed_cert: Option<PathBuf>,
    lvsp_tls: Option<TlsAcceptor>,
    gateway_tls: Option<TlsAcceptor>,
    /// The listeners' certificates, for reloads.
    certificates: [Option<Arc<tls::Certificate>>; 2],
    /// The configuration in effect, for reloads.
    config: Arc<Mutex<Config>>,
    /// Data-plane cores.
    pub cores: u32,
    /// Where the dataplane finds the shared-memory region (a file, or
    /// `/proc/<pid>/fd/<n>` for the default anonymous memfd).
    pub shm_path: PathBuf,
    /// What came back from the state directory, and whether the running
    /// data plane was taken over (its calls go on).
    pub restored: Option<(RestoreCounts, bool)>,
    shared: Arc<Shared>,
    region: Region,
    supervisor: Supervisor,
    lvsp: TcpListener,
    gateway: TcpListener,
    metrics: Option<TcpListener>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("lvsp", &self.lvsp_url())
            .field("gateway", &self.gateway_url())
            .field("udp", &self.udp_addr)
            .field("cores", &self.cores)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Creates the region, starts (or waits for) the dataplane and binds the
    /// listeners.
    pub async fn start(config: Config) -> Result<Server, ServerError> {
        config.validate()?;
        // Every connection cap must fit in the descriptors the process may
        // open: a flood must meet a cap, never EMFILE (which would stop
        // the LVSP and metrics listeners too).
        let files = descriptors::raise_open_file_limit().map_err(ServerError::OpenFileLimit)?;
        config.check_open_files(files.now)?;
        tracing::info!(
            was = files.was,
            now = files.now,
            needed = config.descriptors_needed(),
            "open-file limit"
        );
        let lvsp_tls = tls::acceptor(&config.lvsp_tls)?;
        // One generated certificate serves both listeners.
        let gateway_tls = match (&config.lvsp_tls, &config.gateway_tls) {
            (a, b) if a == b => lvsp_tls.clone(),
            (_, b) => tls::acceptor(b)?,
        };
        let certificates = [&lvsp_tls, &gateway_tls].map(|t| t.as_ref().map(|(_, c)| c.clone()));
        let (lvsp_tls, gateway_tls) = (lvsp_tls.map(|(a, _)| a), gateway_tls.map(|(a, _)| a));
        let self_signed_cert = [&config.lvsp_tls, &config.gateway_tls]
            .into_iter()
            .find_map(|t| match t {
                Tls::SelfSigned { cert_out, .. } => Some(cert_out.clone()),
                _ => None,
            });
        let store = config.state_dir.as_ref().map(Store::open).transpose()?;
        let saved = match &store {
            Some(store) => store.load()?,
            None => None,
        };
        // The data plane the save names, if it still runs and can be
        // taken over: its calls go on.
        let adopted = match (&saved, &config.dataplane) {
            (
                Some(Snapshot {
                    dataplane: Some(d), ..
                }),
                DataplaneMode::Embedded | DataplaneMode::Spawn(_),
            ) => take_over(d, config.cores).await,
            _ => None,
        };
        let region_config = RegionConfig::new(config.cores);
        let (region, adopted) = match adopted {
            Some((region, process, port)) => (region, Some((process, port))),
            None => match &config.shm_path {
                Some(path) => (Region::create(path, region_config)?, None),
                None => (Region::create_anonymous(region_config)?, None),
            },
        };
        let taken_over = adopted.is_some();
        let (link, events) = link::attach(&region)?;
        let mut supervisor = Supervisor::new(&config, region.path(), adopted)?;
        let udp_port = match supervisor.pid() {
            Some(_) => region.udp_port().ok_or_else(|| {
                ServerError::Dataplane("the adopted dataplane published no port".into())
            })?,
            None => supervisor.start(&region).await?,
        };
        let udp_addr = SocketAddr::new(config.udp_bind.ip(), udp_port);
        let bind = |addr: SocketAddr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| ServerError::Listen { addr, source })
        };
        let lvsp_listener = bind(config.lvsp_listen).await?;
        let gateway_listener = bind(config.gateway_listen).await?;
        let metrics = match config.metrics_listen {
            Some(addr) => Some(bind(addr).await?),
            None => None,
        };
        let local = |l: &TcpListener, addr| l.local_addr().unwrap_or(addr);
        let ws = WebSocketConfig {
            max_message_size: Some(config.max_message_size),
            max_frame_size: Some(config.max_message_size),
            ..WebSocketConfig::default()
        };
        // Keys, tokens and SSRCs: ChaCha seeded from the operating system.
        let mut registry = Registry::new(config.cores, StdRng::from_entropy());
        registry.set_counter_slots(region_config.counter_slots);
        registry.set_orphan_grace(config.lvsp_grace);
        registry.set_resume(config.gateway_resume_grace, config.gateway_replay);
        registry.set_leave_grace(config.gateway_leave_grace);
        registry.set_idle(config.voice_state_idle, config.channel_idle);
        if config.dave != crate::dave::DaveMode::Off {
            // One external sender key for every call of this process.
            let sender = crate::dave::mls::ExternalSender::generate()
                .map_err(|e| ServerError::Dave(e.to_string()))?;
            registry.set_dave(config.dave, Some(Arc::new(sender)));
        }
        let mut replay = lvsp::Replay::new(config.lvsp_replay);
        let restored = saved.map(|saved| {
            let age = saved.age(std::time::SystemTime::now());
            let counts = registry.restore(saved.registry, Instant::now(), age, taken_over);
            replay = saved.lvsp;
            if taken_over {
                registry.take_over();
            }
            tracing::info!(
                channels = counts.channels,
                voice_states = counts.voice_states,
                sessions = counts.sessions,
                taken_over,
                age_ms = age.as_millis() as u64,
                "state restored"
            );
            (counts, taken_over)
        });
        let shared = Arc::new(Shared {
            hub: Mutex::new(Hub {
                cx: Context {
                    registry,
                    replay,
                    guard: lvsp::AuthGuard::new(config.lvsp_auth_backoff),
                },
                link,
                events,
                gateways: HashMap::new(),
                load: Load::new(config.cores, config.capacity_per_core),
                closes: CloseCounts::new(),
                throttled: BTreeMap::new(),
                dataplane_restarts: 0,
                dataplane_pid: None,
                dataplane: None,
                dataplane_changes: 0,
            }),
            lvsp: std::sync::RwLock::new(Arc::new(lvsp::Config {
                secret: config.secret.clone(),
                heartbeat_interval: config.lvsp_heartbeat,
                dialect: config.lvsp_dialect,
                rate: config.lvsp_rate,
            })),
            gateway: std::sync::RwLock::new(Arc::new(gateway::Config {
                heartbeat_interval: config.gateway_heartbeat,
                udp_ip: config.public_ip,
                udp_port,
                rate: config.gateway_rate,
                modes: config.modes.clone(),
                identify_timeout: config.identify_timeout,
            })),
            ws,
            next_conn: AtomicU64::new(1),
            budgets: [
                (config.lvsp_max_pending, config.lvsp_max_connections),
                (config.gateway_max_pending, config.max_connections),
            ]
            .map(|(pending, identified)| {
                Arc::new(Budget::new(budget::Limits {
                    pending,
                    per_address: config.max_pending_per_address,
                    per_prefix: config.max_pending_per_prefix,
                    identified,
                }))
            }),
            handshake_timeout: config.handshake_timeout,
            identify_timeouts: [config.lvsp_identify_timeout, config.identify_timeout],
            metrics_slots: Arc::new(tokio::sync::Semaphore::new(config.metrics_max_connections)),
            metrics_refused: AtomicU64::new(0),
            drain_deadline: config.drain_deadline,
            drain_restart: config.drain_restart,
            store,
            reloads: Mutex::default(),
        });
        {
            let mut hub = shared.hub();
            // The take-over's resync goes into the rings now.
            hub.dispatch();
            hub.serving(supervisor.pid(), udp_port, supervisor.outlives());
        }
        Ok(Server {
            lvsp_addr: local(&lvsp_listener, config.lvsp_listen),
            gateway_addr: local(&gateway_listener, config.gateway_listen),
            udp_addr,
            metrics_addr: metrics.as_ref().and_then(|l| l.local_addr().ok()),
            self_signed_cert,
            lvsp_tls,
            gateway_tls,
            certificates,
            cores: config.cores,
            shm_path: region.path().to_path_buf(),
            restored,
            shared,
            region,
            supervisor,
            lvsp: lvsp_listener,
            gateway: gateway_listener,
            metrics,
            config: Arc::new(Mutex::new(config)),
        })
    }

    /// A handle that applies a new configuration while [`Server::run`]
    /// serves (SIGHUP).
    pub fn reloader(&self) -> Reloader {
        Reloader {
            shared: self.shared.clone(),
            certificates: self.certificates.clone(),
            current: self.config.clone(),
        }
    }

    /// A handle that starts a drain while [`Server::run`] serves.
    pub fn drainer(&self) -> Drainer {
        Drainer(self.shared.clone())
    }

    /// Serves until `shutdown` completes, a drain ends (no call left, or its
    /// deadline), or the dataplane dies for good; then closes every
    /// connection (1001) and stops the dataplane.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), ServerError> {
        let Server {
            shared,
            region,
            mut supervisor,
            lvsp,
            gateway,
            metrics,
            lvsp_tls,
            gateway_tls,
            self_signed_cert,
            ..
        } = self;
        let udp_port = shared.gateway_config().udp_port;
        let (stop_tx, stop_rx) = watch::channel(false);
        let accept_lvsp = tokio::spawn(accept_loop(
            lvsp,
            lvsp_tls,
            shared.clone(),
            stop_rx.clone(),
            Kind::Lvsp,
        ));
        let accept_gw = tokio::spawn(accept_loop(
            gateway,
            gateway_tls,
            shared.clone(),
            stop_rx.clone(),
            Kind::Gateway,
        ));
        let metrics =
            metrics.map(|l| tokio::spawn(metrics::serve(l, shared.clone(), stop_rx.clone())));
        let poller = {
            let shared = shared.clone();
            let mut stop = stop_rx.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(1));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                loop {
                    tokio::select! {
                        _ = tick.tick() => poll_rings(&shared),
                        _ = stop.changed() => break,
                    }
                }
            })
        };
        // Saves within `SAVE_EVERY` of a change; the last save follows
        // the shutdown below.
        let saver = {
            let shared = shared.clone();
            let mut stop = stop_rx.clone();
            tokio::spawn(async move {
                let mut saved = u64::MAX;
                let mut wait = persist::SAVE_EVERY;
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {
                            // A save that takes long (a large registry) is
                            // made less often: at most a tenth of the time
                            // goes to saving, most of it under the lock.
                            let started = Instant::now();
                            saved = shared.save(saved).await;
                            wait = persist::SAVE_EVERY.max(started.elapsed() * 10);
                        }
                        _ = stop.changed() => break,
                    }
                }
            })
        };
        tokio::pin!(shutdown);
        let mut drained = tokio::time::interval(DRAIN_CHECK);
        drained.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // A planned stop (the shutdown future) leaves a data plane that
        // outlives us running for the next control; a drain that ended
        // the calls, or a failure, stops it.
        let mut planned = false;
        let result = loop {
            tokio::select! {
                _ = &mut shutdown => {
                    planned = true;
                    break Ok(());
                }
                _ = drained.tick() => {
                    if shared.hub().cx.registry.drained() {
                        tracing::info!("drained: no call left");
                        break Ok(());
                    }
                }
                status = supervisor.exited() => {
                    tracing::error!(%status, "dataplane died; restarting it");
                    {
                        // Take what the dead one reported last, then repair
                        // the indices it owned (it may have died writing
                        // them) and drop the commands it never took: the
                        // new one gets the whole state pushed again.
                        poll_rings(&shared);
                        let mut hub = shared.hub();
                        hub.serving(None, udp_port, false);
                        hub.events.reset();
                        hub.link.reset();
                    }
                    if let Err(e) = supervisor.restart(&region).await {
                        break Err(e);
                    }
                    // It starts empty: push every session into it again.
                    let sessions = shared.with(|cx| cx.registry.resync());
                    let mut hub = shared.hub();
                    hub.dataplane_restarts += 1;
                    hub.serving(supervisor.pid(), udp_port, supervisor.outlives());
                    tracing::info!(sessions, "dataplane restarted, state pushed again");
                }
            }
        };
        let _ = stop_tx.send(true);
        for task in [accept_lvsp, accept_gw, poller, saver]
            .into_iter()
            .chain(metrics)
        {
            let _ = task.await;
        }
        // Every identified websocket is closing (1001, or the code a drain
        // deadline gave it): let the close frames out before the process
        // ends, within what a close may take.
        let closing = tokio::time::Instant::now() + CLOSE_LINGER * 2 + Duration::from_secs(1);
        while shared.budgets.iter().any(|b| b.identified_open() > 0)
            && tokio::time::Instant::now() < closing
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let keep = planned && result.is_ok() && supervisor.outlives() && shared.store.is_some();
        if keep {
            // Every session is parked now: the last save is what the next
            // control takes over, with the data plane forwarding meanwhile.
            supervisor.leave_running();
            tracing::info!("leaving the data plane running for the next control");
        } else {
            supervisor.stop().await;
            shared.hub().serving(None, udp_port, false);
        }
        shared.save(u64::MAX).await;
        let closes = shared.hub().closes.clone();
        tracing::info!(?closes, "stopped");
        drop(region);
        if let Some(cert) = self_signed_cert {
            // Generated per run; it is worthless once the key is gone.
            let _ = std::fs::remove_file(&cert);
            if let Some(dir) = cert.parent() {
                let _ = std::fs::remove_dir(dir);
            }
        }
        result
    }

    /// `ws://` or `wss://` and the LVSP address.
    pub fn lvsp_url(&self) -> String {
        url(self.lvsp_tls.is_some(), self.lvsp_addr)
    }

    /// `ws://` or `wss://` and the gateway address.
    pub fn gateway_url(&self) -> String {
        url(self.gateway_tls.is_some(), self.gateway_addr)
    }

    /// Close codes sent so far, by protocol.
    pub fn close_counts(&self) -> CloseCounts {
        self.shared.hub().closes.clone()
    }
}

fn url(tls: bool, addr: SocketAddr) -> String {
    format!("{}://{addr}", if tls { "wss" } else { "ws" })
}

/// The data plane a save names, if it still runs and can be taken over:
/// its region (found among its descriptors), claimed for this process, the
/// process to watch, and its UDP port. One that runs but cannot be taken
/// over is stopped (it holds the port a new one needs).
async fn take_over(saved: &SavedDataplane, cores: u32) -> Option<(Region, Process, u16)> {
    match adopt(saved, cores) {
        Ok(taken) => {
            tracing::info!(
                pid = saved.pid,
                port = taken.2,
                "took the running data plane over"
            );
            Some(taken)
        }
        Err(why) => {
            tracing::warn!(
                pid = saved.pid,
                %why,
                "cannot take the saved data plane over; starting a new one"
            );
            let Ok(process) = Process::watch(saved.pid) else {
                return None;
            };
            if persist::process_start(saved.pid) != Some(saved.started) || process.exited() {
                return None; // gone, or another process has that pid now
            }
            // Signalled through the pidfd: only ever that process.
            let _ = process.signal(nix::sys::signal::Signal::SIGTERM as i32);
            let by = Instant::now() + Duration::from_secs(5);
            while !process.exited() && Instant::now() < by {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            if !process.exited() {
                let _ = process.signal(nix::sys::signal::Signal::SIGKILL as i32);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            None
        }
    }
}

fn adopt(saved: &SavedDataplane, cores: u32) -> Result<(Region, Process, u16), String> {
    let process = Process::watch(saved.pid).map_err(|e| format!("not running ({e})"))?;
    // The start time names the process the save meant; the pidfd then
    // watches (and signals) that one only, whatever reuses its pid later.
    if persist::process_start(saved.pid) != Some(saved.started) || process.exited() {
        return Err("not running (its pid is another process's now)".into());
    }
    let fds = std::fs::read_dir(format!("/proc/{}/fd", saved.pid))
        .map_err(|e| format!("reading its descriptors: {e}"))?;
    for entry in fds.flatten() {
        let memfd = std::fs::read_link(entry.path())
            .is_ok_and(|t| t.to_string_lossy().starts_with("/memfd:voice-region"));
        if !memfd {
            continue;
        }
        let region = Region::adopt(entry.path()).map_err(|e| e.to_string())?;
        let found = region.config().cores;
        if found != cores {
            return Err(format!("it runs {found} cores, {cores} configured"));
        }
        let port = region.udp_port().ok_or("it published no UDP port")?;
        if port != saved.udp_port {
            return Err(format!(
                "it serves port {port}, the save says {}",
                saved.udp_port
            ));
        }
        let (holder, me) = (region.control_pid(), std::process::id());
        if holder != me && Process::alive(holder) {
            return Err(format!("control {holder} still holds it"));
        }
        region
            .claim_control(holder, me)
            .map_err(|other| format!("control {other} took it first"))?;
        return Ok((region, process, port));
    }
    Err("no voice region among its descriptors".into())
}

fn poll_rings(shared: &Shared) {
    let now = Instant::now();
    let mut hub = shared.hub();
    let hub = &mut *hub;
    hub.link.flush();
    let corrupt = hub.events.drain(|core, ev| match ev {
        Event::Stats(s) => hub.load.record(now, s),
        Event::Drops { core, drops } => hub.load.record_drops(core, drops),
        Event::AddressObserved { ssrc, addr } => {
            tracing::debug!(core, ssrc, %addr, "address observed (discovery)");
            hub.cx.registry.address_observed(ssrc, addr);
        }
        Event::AddressProven { ssrc, addr } => {
            tracing::debug!(core, ssrc, %addr, "address proven");
            hub.cx.registry.address_proven(ssrc, addr);
        }
        Event::AddressExpired { ssrc, addr } => {
            tracing::debug!(core, ssrc, %addr, "address went idle");
            hub.cx.registry.address_expired(ssrc, addr);
        }
    });
    if corrupt > 0 {
        tracing::warn!(corrupt, "undecodable event slots");
    }
    let health = hub.load.health();
    hub.cx.registry.set_health(health);
    hub.cx.registry.handle_timeout(now);
    hub.dispatch();
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Lvsp = 0,
    Gateway = 1,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Lvsp => "lvsp",
            Kind::Gateway => "gateway",
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    kind: Kind,
) {
    let budget = shared.budgets[kind as usize].clone();
    let mut summary = tokio::time::interval(budget::SUMMARY_EVERY);
    summary.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut logged = [0; 5];
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    // A pending slot from accept to Identify; refusals are
                    // counted, and logged only in the periodic summary.
                    let Ok(pending) = budget.admit(peer.ip()) else {
                        continue; // dropping the stream closes it
                    };
                    let _ = stream.set_nodelay(true);
                    let deadline = tokio::time::Instant::now() + shared.handshake_timeout;
                    let (shared, stop, tls) = (shared.clone(), stop.clone(), tls.clone());
                    tokio::spawn(async move {
                        match tls {
                            None => connection(stream, peer, shared, stop, kind, pending, deadline).await,
                            Some(tls) => {
                                let evicted = pending.evicted();
                                let accepted = tokio::select! {
                                    accepted = tokio::time::timeout_at(deadline, tls.accept(stream)) => accepted,
                                    _ = evicted => return,
                                };
                                match accepted {
                                    Ok(Ok(stream)) => {
                                        connection(stream, peer, shared, stop, kind, pending, deadline).await
                                    }
                                    Ok(Err(e)) => tracing::debug!(%peer, %e, "TLS handshake failed"),
                                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                                }
                            }
                        }
                    });
                }
                Err(e) if is_per_connection(&e) => {
                    tracing::debug!(%e, "accept failed for one connection");
                }
                Err(e) => {
                    // Out of descriptors or memory: give it a moment.
                    tracing::warn!(%e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = summary.tick() => budget.log_refusals(kind.name(), &mut logged),
            _ = stop.changed() => break,
        }
    }
}

/// Accept errors that concern only the connection being accepted (the peer
/// gave up before accept): no reason to slow the loop down.
fn is_per_connection(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | ConnectionRefused | Interrupted
    )
}

/// Where a connection stands in its listener's budgets.
#[derive(Debug)]
struct Admission {
    budget: Arc<Budget>,
    /// Held until the connection identifies (or, when refused, ends).
    pending: Option<Pending>,
    /// Held once identified, until the connection ends.
    identified: Option<budget::Identified>,
    /// It identified with every identified slot taken: it must close.
    refused: bool,
    /// When a connection that has not identified is closed.
    identify_by: Instant,
}

/// What [`Admission::promote`] found.
#[derive(Debug, PartialEq, Eq)]
enum Promotion {
    /// Pending or identified: carry on.
    Fine,
    /// Identified with every identified slot taken: close with 1013.
    Full,
    /// A newer connection took the pending slot: drop the socket.
    Evicted,
}

impl Admission {
    /// Moves the connection to the identified budget once the machine says
    /// it identified.
    fn promote(&mut self, identified: bool) -> Promotion {
        if identified && self.identified.is_none() && !self.refused {
            if let Some(slot) = self.pending.take() {
                match self.budget.promote(slot) {
                    Ok(slot) => self.identified = Some(slot),
                    Err((slot, why)) => {
                        self.pending = Some(slot);
                        self.refused = true;
                        if why != budget::Refusal::IdentifiedFull {
                            return Promotion::Evicted;
                        }
                    }
                }
            }
        }
        if self.refused {
            Promotion::Full
        } else {
            Promotion::Fine
        }
    }

    /// The identify deadline, while it applies.
    fn deadline(&self) -> Option<Instant> {
        (self.identified.is_none() && !self.refused).then_some(self.identify_by)
    }

    /// Completes when the pending slot is taken by a newer connection;
    /// never once identified.
    fn evicted(&self) -> impl Future<Output = ()> + Send + 'static {
        let evicted = self
            .pending
            .as_ref()
            .filter(|_| !self.refused)
            .map(Pending::evicted);
        async move {
            match evicted {
                Some(evicted) => evicted.await,
                None => std::future::pending().await,
            }
        }
    }
}

async fn connection<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    peer: SocketAddr,
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
    kind: Kind,
    pending: Pending,
    deadline: tokio::time::Instant,
) {
    let mut query: Option<String> = None;
    // The error type is tungstenite's; it is never built here.
    #[allow(clippy::result_large_err)]
    let callback = |req: &Request, resp: Response| {
        query = req.uri().query().map(str::to_owned);
        Ok(resp)
    };
    let handshake =
        tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(shared.ws));
    let evicted = pending.evicted();
    let handshake = async {
        tokio::select! {
            ws = tokio::time::timeout_at(deadline, handshake) => Some(ws),
            _ = evicted => None,
        }
    };
    let ws = match handshake.await {
        // A newer connection took the slot.
        None => return,
        Some(ws) => ws,
    };
    let ws = match ws {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => {
            tracing::debug!(%peer, %e, "websocket handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "websocket handshake timed out");
            return;
        }
    };
    let now = Instant::now();
    let admission = Admission {
        budget: shared.budgets[kind as usize].clone(),
        pending: Some(pending),
        identified: None,
        refused: false,
        identify_by: now + shared.identify_timeouts[kind as usize],
    };
    match kind {
        Kind::Lvsp => {
            let machine =
                lvsp::Connection::new(shared.lvsp_config(), peer, now, &mut rand::thread_rng());
            let span = tracing::info_span!("lvsp", %peer);
            drive(ws, machine, &shared, None, stop, admission)
                .instrument(span)
                .await;
        }
        Kind::Gateway => {
            let conn = shared.next_conn.fetch_add(1, Ordering::Relaxed);
            let (tx, rx) = mpsc::unbounded_channel();
            shared.hub().gateways.insert(conn, tx);
            let config = shared.gateway_config();
            let machine = match gateway::version_from_query(query.as_deref()) {
                Some(version) => gateway::Connection::new(config, conn, version, now),
                None => gateway::Connection::unsupported(config, conn, now),
            };
            // Who it is, once identified (never its token or session id).
            let span = tracing::info_span!(
                "gateway",
                %peer,
                conn,
                user = tracing::field::Empty,
                channel = tracing::field::Empty,
                ssrc = tracing::field::Empty,
            );
            drive(ws, machine, &shared, Some(rx), stop, admission)
                .instrument(span)
                .await;
            shared.hub().gateways.remove(&conn);
        }
    }
}

/// Runs one websocket until either side closes, feeding the state machine.
async fn drive<M: Protocol, S: AsyncRead + AsyncWrite + Unpin>(
    mut ws: WebSocketStream<S>,
    mut machine: M,
    shared: &Shared,
    mut pushes: Option<mpsc::UnboundedReceiver<Push>>,
    mut stop: watch::Receiver<bool>,
    mut admission: Admission,
) {
    let mut named = false;
    'run: loop {
        if let (false, Some((user, channel, ssrc))) = (named, machine.identity()) {
            let span = tracing::Span::current();
            span.record("user", user);
            span.record("channel", channel);
            span.record("ssrc", ssrc);
            named = true;
            tracing::debug!("identified");
        }
        match admission.promote(machine.is_identified()) {
            Promotion::Fine => {}
            Promotion::Evicted => break 'run,
            Promotion::Full => {
                // Identified, but every identified slot is taken: what it
                // queued (Ready) is never sent.
                while machine.poll_output().is_some() {}
                let code = protocol::TRY_AGAIN_LATER;
                *shared.hub().closes.entry((M::NAME, code)).or_default() += 1;
                send_close(&mut ws, code, "server full".into()).await;
                break 'run;
            }
        }
        while let Some(out) = machine.poll_output() {
            let message = match out {
                Output::Text(text) => Message::Text(text),
                Output::Binary(bytes) => Message::Binary(bytes),
                Output::Close { code, reason } => {
                    *shared.hub().closes.entry((M::NAME, code)).or_default() += 1;
                    send_close(&mut ws, code, reason).await;
                    break 'run;
                }
            };
            // A peer that stops reading must not hold this task (and the
            // messages queued for it) forever.
            let sent = tokio::time::timeout(SEND_TIMEOUT, ws.send(message));
            if !matches!(sent.await, Ok(Ok(()))) {
                break 'run;
            }
        }
        let identify_by = admission.deadline();
        // A trusted peer past its budget: its next frame waits (it stays
        // in the socket's buffers, and TCP slows the peer down).
        let read_at = machine.read_after(Instant::now());
        if read_at.is_some() {
            *shared.hub().throttled.entry(M::NAME).or_default() += 1;
        }
        let deadline = machine
            .poll_timeout()
            .into_iter()
            .chain(identify_by)
            .chain(read_at)
            .min()
            .map(tokio::time::Instant::from_std)
            .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            msg = ws.next(), if read_at.is_none() => match msg {
                Some(Ok(Message::Text(text))) => {
                    // Decoded before the lock: parsing costs no one else.
                    let now = Instant::now();
                    if let Some(incoming) = machine.handle_text(now, &text) {
                        shared.with(|cx| machine.handle_incoming(now, incoming, cx));
                    }
                }
                Some(Ok(Message::Binary(bytes))) => {
                    let now = Instant::now();
                    if let Some(incoming) = machine.handle_binary(now, &bytes) {
                        shared.with(|cx| machine.handle_incoming(now, incoming, cx));
                    }
                }
                // Control frames cost a message too (tungstenite answers
                // each Ping with a Pong).
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => machine.handle_ping(Instant::now()),
                Some(Ok(Message::Frame(_))) => {}
                Some(Ok(Message::Close(frame))) => {
                    machine.handle_close(frame.map(|f| u16::from(f.code)));
                    break 'run;
                }
                None => break 'run,
                Some(Err(tungstenite::Error::Capacity(_))) => machine.handle_oversized(),
                Some(Err(_)) => break 'run,
            },
            Some(push) = async {
                match pushes.as_mut() {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            } => machine.handle_push(push),
            _ = tokio::time::sleep_until(deadline) => {
                let now = Instant::now();
                if identify_by.is_some_and(|by| now >= by) {
                    // Out of the pending budget: no Identify in time.
                    let code = M::IDENTIFY_TIMEOUT_CODE;
                    *shared.hub().closes.entry((M::NAME, code)).or_default() += 1;
                    send_close(&mut ws, code, "no identify in time".into()).await;
                    break 'run;
                }
                machine.handle_timeout(now)
            }
            // A newer connection took the pending slot: drop the socket.
            _ = admission.evicted() => break 'run,
            _ = stop.changed() => {
                // With a state directory the next control resumes the
                // session: the client is told to resume (4015 on the
                // gateway), else that the server is going away.
                let (code, reason) = match shared.store {
                    Some(_) => (M::RESTART_CODE, "server restarting"),
                    None => (1001, "server shutting down"),
                };
                send_close(&mut ws, code, reason.into()).await;
                break 'run;
            }
        }
    }
    shared.with(|cx| machine.closed(Instant::now(), cx));
}

async fn send_close<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocketStream<S>,
    code: u16,
    reason: String,
) {
    let frame = CloseFrame {
        code: CloseCode::from(code),
        reason: reason.into(),
    };
    let _ = tokio::time::timeout(CLOSE_LINGER, ws.close(Some(frame))).await;
    // Keep reading (and discarding) until the peer answers the close, so
    // that closing the socket with the peer's unread data in our buffer
    // does not reset the connection before the peer has read our close
    // frame (a client still flooding, or the rest of an oversized frame).
    // Bounded in frames and bytes too: a flood that goes on after our
    // close costs a little CPU, not two seconds of it.
    let _ = tokio::time::timeout(CLOSE_LINGER, async {
        let mut frames = 0;
        loop {
            match ws.next().await {
                None | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) if frames < CLOSE_DRAIN_FRAMES => frames += 1,
                Some(Ok(_)) => return,
                Some(Err(_)) => break,
            }
        }
        // The websocket layer gave up on the bytes: drain them raw.
        let mut sink = [0u8; 16 << 10];
        let mut drained = 0;
        while let Ok(n) = ws.get_mut().read(&mut sink).await {
            drained += n;
            if n == 0 || drained > CLOSE_DRAIN_BYTES {
                return;
            }
        }
    })
    .await;
}

/// How often a draining server checks whether any call is left.
const DRAIN_CHECK: Duration = Duration::from_millis(100);

/// How long a send may wait for a peer that does not read.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a closing connection waits for the peer's close reply.
const CLOSE_LINGER: Duration = Duration::from_secs(2);

/// Frames a closing connection reads (and discards) at most while waiting
/// for the peer's close reply.
const CLOSE_DRAIN_FRAMES: usize = 512;

/// Raw bytes a closing connection discards at most once the websocket
/// layer gave up (the rest of an oversized frame, and what followed it).
const CLOSE_DRAIN_BYTES: usize = 1 << 20;
