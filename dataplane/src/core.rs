//! The glue: one pinned glommio executor per core around a [`Forwarder`].
//!
//! Each core runs one task, [`serve`], that does two things:
//!
//! - **forwarding**: a batch of every waiting datagram (up to 32) is
//!   received into buffers allocated once, [`Forwarder::handle`] decides
//!   each in place into one [`Outbox`], and the whole batch's fan-out is
//!   sent. By default ([`PacketIo::Mmsg`]) one `recvmmsg` receives and
//!   `sendmmsg` sends (falling back to glommio's `send_to` when the socket
//!   buffer is full); once a batch has emptied the socket, the next
//!   `recvmmsg` sleeps in the socket until a datagram arrives or the tick
//!   interval passes, so a wake-up costs one system call in and one out.
//!   [`PacketIo::Uring`] does the same through the core's own io_uring.
//!   Busy time counts the batch's work, not the junk in it;
//! - the **control tick** (every millisecond, between batches): apply
//!   commands from the command ring, let the forwarder expire idle
//!   addresses, queue [`Event::Drops`] and [`Event::Stats`] every
//!   `stats_interval` (with the kernel's count of datagrams the socket
//!   buffer dropped), move queued events into the event ring (keeping what
//!   does not fit for the next tick), and notice shutdown.
//!
//! The calling thread watches over the cores: it stops them when a signal
//! arrives, when control goes away and no new control takes the region
//! over within the reattach window, or when a region file stops being the
//! current one (removed or replaced: a newer dataplane owns the port now,
//! so this one must leave the reuseport group). A core that
//! finds its ring corrupt stops the whole data plane with an error; a
//! panicking core aborts the process (see `cli`), so supervision restarts
//! it whole rather than leaving a core's socket dead in the group.

use std::io::ErrorKind;
use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use glommio::{LocalExecutorBuilder, Placement};
use shared::{
    Command, Consumer, Corrupt, Event, PopError, Producer, PushError, Region, RegionError,
};

use crate::forward::{ForwardConfig, Forwarder, Outbox};
use crate::sys;

/// Environment variable naming a datagram (hex) that makes the core
/// receiving it panic: fault injection for supervision tests. Unset in
/// production; only the operator's environment can set it.
pub const FAULT_ENV: &str = "VOICE_FAULT_PANIC_DATAGRAM";

/// How the cores run.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// How often each core reports [`Event::Stats`]. Default 250 ms.
    pub stats_interval: Duration,
    /// How often each core polls its command ring. Default 1 ms (the
    /// design requires new commands within 5 ms).
    pub command_poll: Duration,
    /// glommio's per-executor registered I/O memory, bytes. Default 1 MiB
    /// (it is locked memory; UDP does not use it).
    pub io_memory: usize,
    /// io_uring submission queue depth per ring. Default 64.
    pub ring_depth: usize,
    /// How datagrams move between the socket and the forwarder.
    pub packet_io: PacketIo,
    /// Idle timeout and answer budgets of the forwarder.
    pub forward: ForwardConfig,
}

/// How a core moves datagrams (`--packet-io`). Both were measured side by
/// side (BENCHMARKS.md, "Packet I/O"); the default is the faster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum PacketIo {
    /// `recvmmsg`/`sendmmsg` on the socket, sleeping in `recvmmsg` when
    /// idle.
    #[default]
    Mmsg,
    /// The core's own io_uring: a multishot receive into provided
    /// buffers and batched `send` submissions ([`sys::uring`]). Needs
    /// Linux 6.0.
    Uring,
}

impl PacketIo {
    /// The value's name, as `--packet-io` takes it.
    pub fn name(self) -> &'static str {
        match self {
            PacketIo::Mmsg => "mmsg",
            PacketIo::Uring => "uring",
        }
    }
}

impl Default for CoreConfig {
    fn default() -> Self {
        CoreConfig {
            stats_interval: Duration::from_millis(250),
            command_poll: Duration::from_millis(1),
            io_memory: 1 << 20,
            ring_depth: 64,
            packet_io: PacketIo::default(),
            forward: ForwardConfig::default(),
        }
    }
}

/// Why the cores could not run.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// The region refused this core's ring ends.
    #[error(transparent)]
    Region(#[from] RegionError),
    /// One socket per core is needed.
    #[error("{sockets} sockets for {cores} cores")]
    SocketCount {
        /// Sockets given.
        sockets: usize,
        /// Cores in the region.
        cores: u32,
    },
    /// glommio could not start an executor (often: io_uring unavailable or
    /// RLIMIT_MEMLOCK too low).
    #[error(
        "core {core}: cannot start executor: {message} (io_uring and locked memory are required)"
    )]
    Executor {
        /// The core.
        core: u32,
        /// glommio's error.
        message: String,
    },
    /// A core's thread panicked or its executor failed.
    #[error("core {core} stopped abnormally: {message}")]
    Join {
        /// The core.
        core: u32,
        /// What happened.
        message: String,
    },
    /// The core's packet I/O could not be set up (`--packet-io uring` on
    /// a kernel without multishot receive, or without locked memory).
    #[error("core {core}: cannot set up {packet_io} packet I/O: {source}")]
    PacketIo {
        /// The core.
        core: u32,
        /// The path asked for.
        packet_io: &'static str,
        /// What the kernel said.
        source: std::io::Error,
    },
    /// A core's ring in the region is corrupt: the region cannot be
    /// trusted any more.
    #[error("core {core}: {source}")]
    Ring {
        /// The core.
        core: u32,
        /// What its ring's indices said.
        source: Corrupt,
    },
}

/// Runs one executor per core of `region`, each with its socket (socket
/// `i` for core `i`), until shutdown is requested ([`sys::request_shutdown`],
/// a signal), the control holding the region ([`Region::control_pid`]) is
/// gone and none took over within `reattach`, or a region file stops being
/// current ([`Region::is_current`]).
pub fn run(
    region: &Region,
    sockets: Vec<UdpSocket>,
    config: &CoreConfig,
    reattach: Duration,
) -> Result<(), CoreError> {
    let cores = region.config().cores;
    if sockets.len() != cores as usize {
        return Err(CoreError::SocketCount {
            sockets: sockets.len(),
            cores,
        });
    }
    let fault = std::env::var(FAULT_ENV).ok().and_then(|h| hex_bytes(&h));
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut handles = Vec::with_capacity(cores as usize);
    for (core, socket) in (0..cores).zip(sockets) {
        let (commands, events) = region.core_side(core)?;
        let counters = region.counters();
        let config = config.clone();
        let fault = fault.clone();
        let handle = LocalExecutorBuilder::new(Placement::Fixed(core as usize % cpus))
            .name(&format!("dp-core-{core}"))
            .io_memory(config.io_memory)
            .ring_depth(config.ring_depth)
            .spawn(move || async move {
                let forwarder = Forwarder::new(core, config.forward, counters);
                run_core(core, socket, forwarder, commands, events, config, fault).await
            })
            .map_err(|e| CoreError::Executor {
                core,
                message: e.to_string(),
            })?;
        handles.push((core, handle));
    }
    watch(region, reattach);
    let mut result = Ok(());
    for (core, handle) in handles {
        let outcome = match handle.join() {
            Ok(r) => r,
            Err(e) => Err(CoreError::Join {
                core,
                message: e.to_string(),
            }),
        };
        if let Err(e) = outcome {
            // Make the other cores stop too.
            sys::request_shutdown();
            if result.is_ok() {
                result = Err(e);
            }
        }
    }
    result
}

/// Returns once the cores must stop: a shutdown was requested, control
/// went away and no other took the region over within `reattach` (zero:
/// stop at once), or the region file is no longer the one at its path.
///
/// While no control holds the region the cores forward on: established
/// calls keep their keys, addresses and counters, and a new control that
/// claims the region ([`Region::claim_control`]) resyncs them.
fn watch(region: &Region, reattach: Duration) {
    let mut control: Option<sys::Process> = None;
    let mut orphaned: Option<Instant> = None;
    while !sys::shutdown_requested() {
        // A memfd has no file to remove or replace; its `/proc` path dies
        // with the control that created it, which is the next check's job.
        if !region.is_anonymous() && !region.is_current() {
            tracing::warn!(
                region = %region.path().display(),
                "the region was removed or replaced; stopping"
            );
            break;
        }
        let pid = region.control_pid();
        if control.as_ref().map(sys::Process::pid) != Some(pid) {
            control = sys::Process::watch(pid).ok();
            if control.is_some() && orphaned.is_some() {
                tracing::info!(control = pid, "a new control took over");
            }
        }
        if control.as_ref().is_some_and(|c| !c.exited()) {
            orphaned = None;
        } else {
            let since = *orphaned.get_or_insert_with(|| {
                if !reattach.is_zero() {
                    tracing::warn!(
                        control = pid,
                        window_secs = reattach.as_secs_f64(),
                        "control went away; forwarding on while a new one may take over"
                    );
                }
                Instant::now()
            });
            if since.elapsed() >= reattach {
                tracing::warn!(control = pid, "control went away; stopping");
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    sys::request_shutdown();
}

/// Decodes a hex string (the fault-injection datagram).
fn hex_bytes(s: &str) -> Option<Vec<u8>> {
    let s = s.trim();
    if s.is_empty() || s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

async fn run_core(
    core: u32,
    socket: UdpSocket,
    mut forwarder: Forwarder,
    mut commands: Consumer<Command>,
    events: Producer<Event>,
    config: CoreConfig,
    fault: Option<Vec<u8>>,
) -> Result<(), CoreError> {
    let socket = sys::socket::into_glommio(socket);
    tracing::info!(core, "core running");
    let mut tick = Tick {
        core,
        fd: socket.as_raw_fd(),
        events,
        every: config.command_poll,
        next: Instant::now(),
        stats_interval: config.stats_interval,
        next_stats: Instant::now() + config.stats_interval,
        // The kernel's drop count is a wrapping u32: accumulate its steps
        // from where it stood when this process took the socket (it may
        // have served an earlier dataplane).
        kernel_drops: sys::socket::receive_drops(socket.as_raw_fd()).unwrap_or(0),
        overflow: 0,
    };
    let outcome = serve(
        &socket,
        config.packet_io,
        &mut forwarder,
        &mut commands,
        &mut tick,
        fault,
    )
    .await;
    if let Err(e) = &outcome {
        tracing::error!(core, error = %e, "stopping the data plane");
    }
    // Last report so control sees the final counters.
    let _ = tick.events.push(&Event::Drops {
        core,
        drops: forwarder.drops(),
    });
    let _ = tick.events.push(&Event::Stats(forwarder.stats()));
    tracing::info!(core, "core stopped");
    outcome
}

/// The control tick's state: when it is next due, where the statistics
/// and the kernel's drop count stood, and the event ring.
struct Tick {
    core: u32,
    /// The core's socket (its drop count).
    fd: std::os::fd::RawFd,
    events: Producer<Event>,
    every: Duration,
    next: Instant,
    stats_interval: Duration,
    next_stats: Instant,
    kernel_drops: u32,
    overflow: u64,
}

impl Tick {
    /// How long until the tick is due (zero: now).
    fn wait(&self) -> Duration {
        self.next.saturating_duration_since(Instant::now())
    }

    /// Applies waiting commands, lets the forwarder expire idle
    /// addresses, queues statistics when due and moves queued events into
    /// the event ring (what does not fit waits for the next tick).
    fn run(
        &mut self,
        f: &mut Forwarder,
        commands: &mut Consumer<Command>,
    ) -> Result<(), CoreError> {
        self.next = Instant::now() + self.every;
        let now = sys::monotonic_ms();
        apply_commands(f, commands, now)?;
        f.tick(now);
        let at = Instant::now();
        if at >= self.next_stats {
            self.next_stats = at + self.stats_interval;
            match sys::socket::receive_drops(self.fd) {
                Ok(n) => {
                    self.overflow += u64::from(n.wrapping_sub(self.kernel_drops));
                    self.kernel_drops = n;
                    f.note_overflow(self.overflow);
                }
                Err(e) => tracing::debug!(error = %e, "reading socket drops failed"),
            }
            let (stats, drops) = (Event::Stats(f.stats()), f.drops());
            // Statistics are cumulative: newer reports replace ones still
            // waiting for room in the ring.
            let queue = f.events();
            queue.retain(|e| !matches!(e, Event::Stats(_) | Event::Drops { .. }));
            queue.push_back(Event::Drops {
                core: self.core,
                drops,
            });
            queue.push_back(stats);
        }
        let queue = f.events();
        while let Some(event) = queue.front() {
            match self.events.push(event) {
                Ok(()) => {
                    queue.pop_front();
                }
                Err(PushError::Full) => break, // keep it for the next tick
                Err(PushError::Corrupt(source)) => {
                    return Err(CoreError::Ring {
                        core: self.core,
                        source,
                    })
                }
            }
        }
        Ok(())
    }
}

/// Applies every command waiting in the ring.
fn apply_commands(
    f: &mut Forwarder,
    commands: &mut Consumer<Command>,
    now: u64,
) -> Result<(), CoreError> {
    loop {
        match commands.pop() {
            Ok(Some(command)) => {
                if let Err(e) = f.apply(now, command) {
                    tracing::warn!(core = f.core(), error = %e, "command not applied");
                }
            }
            Ok(None) => return Ok(()),
            Err(PopError::Slot(e)) => {
                tracing::warn!(core = f.core(), error = %e, "corrupt command slot skipped")
            }
            Err(PopError::Corrupt(source)) => {
                return Err(CoreError::Ring {
                    core: f.core(),
                    source,
                })
            }
        }
    }
}

/// The core's one task: forwards what arrives, runs the tick when due,
/// and sleeps when there is nothing to do. Returns at shutdown, or with
/// the error that stops the data plane (a corrupt ring, packet I/O that
/// cannot be set up).
async fn serve(
    socket: &glommio::net::UdpSocket,
    packet_io: PacketIo,
    f: &mut Forwarder,
    commands: &mut Consumer<Command>,
    tick: &mut Tick,
    fault: Option<Vec<u8>>,
) -> Result<(), CoreError> {
    let fd = socket.as_raw_fd();
    let v6 = socket.local_addr().is_ok_and(|a| a.is_ipv6());
    let mut io = match packet_io {
        PacketIo::Mmsg => {
            // Receives that wait sleep in the socket, up to the tick's
            // interval.
            sys::socket::block_for(fd, tick.every).map_err(|source| CoreError::PacketIo {
                core: tick.core,
                packet_io: packet_io.name(),
                source,
            })?;
            Io::Mmsg {
                rx: sys::socket::BatchReceiver::new(),
                tx: sys::socket::BatchSender::new(),
            }
        }
        PacketIo::Uring => {
            let ring = sys::uring::UringIo::new(fd, v6).map_err(|source| CoreError::PacketIo {
                core: tick.core,
                packet_io: packet_io.name(),
                source,
            })?;
            Io::Uring(Box::new(ring))
        }
    };
    let mut out = Outbox::with_capacity(64);
    // Whether the last batch emptied the socket: then the next receive
    // waits (the core has nothing else to do) instead of asking again and
    // being told there is nothing. Under load it never does.
    let mut drained = false;
    loop {
        if tick.wait().is_zero() {
            tick.run(f, commands)?;
            if sys::shutdown_requested() {
                return Ok(());
            }
        }
        match io.receive(fd, drained.then(|| tick.wait())) {
            Ok(()) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {}
            Err(e) => {
                tracing::debug!(error = %e, "receiving failed");
                // Do not spin on a persistent error.
                glommio::timer::sleep(Duration::from_millis(1)).await;
                continue;
            }
        }
        let start = Instant::now();
        let now = sys::monotonic_ms();
        out.clear();
        // Commands first (one atomic load when the ring is empty): a
        // client that just got Ready or Session Description is known to
        // the core before its first datagram is judged, even one that woke
        // the core, without waiting for the next tick. A corrupt ring is
        // left for the tick to report.
        let _ = apply_commands(f, commands, now);
        let mut work = 0u64;
        let received = io.each_received(|from, packet| {
            if fault.as_deref() == Some(&packet[..]) {
                panic!("injected fault ({FAULT_ENV})");
            }
            work += u64::from(f.handle(now, from, packet, &mut out));
        });
        let n = match received {
            Ok(n) => n,
            Err(e) => {
                tracing::debug!(error = %e, "receiving failed");
                glommio::timer::sleep(Duration::from_millis(1)).await;
                continue;
            }
        };
        drained = n < sys::socket::RX_BATCH;
        if n == 0 {
            continue;
        }
        io.send(socket, f, &out, v6).await;
        // Busy time is what real work cost: a batch's time pro rata of the
        // datagrams in it that were work, so a flood of junk (refused in a
        // few tens of nanoseconds each) does not read as load. Junk that
        // does overload a core shows as socket-buffer overflow instead.
        let elapsed = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let busy = elapsed.saturating_mul(work) / (n as u64).max(1);
        f.note_busy(busy);
        glommio::yield_if_needed().await;
    }
}

/// A core's packet I/O ([`PacketIo`]).
enum Io {
    Mmsg {
        rx: sys::socket::BatchReceiver,
        tx: sys::socket::BatchSender,
    },
    /// Boxed: the ring is much larger than the mmsg arrays' pointers.
    Uring(Box<sys::uring::UringIo>),
}

impl Io {
    /// Receives what is waiting (up to one batch), after waiting for it
    /// when `wait` says how long the core may sleep: in the socket (up to
    /// the tick interval it was given) for mmsg, in the ring for uring.
    /// `WouldBlock` or `Interrupted`: nothing came.
    fn receive(&mut self, fd: std::os::fd::RawFd, wait: Option<Duration>) -> std::io::Result<()> {
        match self {
            Io::Mmsg { rx, .. } => rx.recv(fd, wait.is_some_and(|w| !w.is_zero())).map(drop),
            Io::Uring(ring) => {
                if let Some(timeout) = wait {
                    ring.wait(timeout);
                }
                Ok(())
            }
        }
    }

    /// Hands each datagram [`receive`](Self::receive) took (up to one
    /// batch) to `each`, in place; how many. An error only when none came
    /// and the ring's receive failed.
    fn each_received(
        &mut self,
        mut each: impl FnMut(std::net::SocketAddr, &mut [u8]),
    ) -> std::io::Result<usize> {
        match self {
            Io::Mmsg { rx, .. } => {
                for i in 0..rx.len() {
                    if let Some((from, packet)) = rx.datagram(i) {
                        each(from, packet);
                    }
                }
                Ok(rx.len())
            }
            Io::Uring(ring) => ring.receive(sys::socket::RX_BATCH, each),
        }
    }

    /// Sends everything in `out`.
    async fn send(
        &mut self,
        socket: &glommio::net::UdpSocket,
        f: &mut Forwarder,
        out: &Outbox,
        v6: bool,
    ) {
        match self {
            Io::Mmsg { tx, .. } => send_all(socket, f, tx, out, v6).await,
            Io::Uring(ring) => ring.send(out.iter(), |result| match result {
                Ok(len) => f.note_sent(len),
                Err(errno) => {
                    tracing::debug!(
                        error = %std::io::Error::from_raw_os_error(errno),
                        "send failed"
                    );
                    f.note_send_failed();
                }
            }),
        }
    }
}

/// Sends everything in `out`: sendmmsg batches without waiting, and
/// glommio's `send_to` (which waits for room) when the socket buffer is
/// full.
async fn send_all(
    socket: &glommio::net::UdpSocket,
    f: &mut Forwarder,
    tx: &mut sys::socket::BatchSender,
    out: &Outbox,
    v6: bool,
) {
    let fd = socket.as_raw_fd();
    let mut next = 0;
    while next < out.len() {
        match tx.send(fd, out.iter().skip(next), v6) {
            Ok(sent) => {
                for (_, bytes) in out.iter().skip(next).take(sent) {
                    f.note_sent(bytes.len());
                }
                next += sent;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                let Some((to, bytes)) = out.get(next) else {
                    break;
                };
                let to = sys::socket::for_family(to, v6);
                match socket.send_to(bytes, to).await {
                    Ok(len) => f.note_sent(len),
                    Err(e) => {
                        tracing::debug!(%to, error = %e, "send_to failed");
                        f.note_send_failed();
                    }
                }
                next += 1;
            }
            Err(e) => {
                tracing::debug!(error = %e, "sendmmsg failed");
                f.note_send_failed();
                next += 1;
            }
        }
    }
}
