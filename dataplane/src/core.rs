//! The glue: one pinned glommio executor per core around a [`Forwarder`].
//!
//! Each core runs two tasks:
//!
//! - the **receive loop**: one non-blocking `recvmmsg` takes every waiting
//!   datagram (up to 32) into buffers allocated once, [`Forwarder::handle`]
//!   decides each in place into one [`Outbox`], and `sendmmsg` sends the
//!   whole batch's fan-out (falling back to glommio's `send_to` when the
//!   socket buffer is full). With nothing waiting, the loop sleeps in
//!   io_uring on a peek of the next datagram;
//! - the **control tick** (every millisecond): apply commands from the
//!   command ring, queue a [`Event::Stats`] every `stats_interval`, move
//!   queued events into the event ring (keeping what does not fit for the
//!   next tick), and notice shutdown.

use std::cell::RefCell;
use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::{Duration, Instant};

use glommio::{LocalExecutorBuilder, Placement};
use shared::{Command, Consumer, Event, Producer, Region, RegionError};

use crate::forward::{Forwarder, Outbox};
use crate::sys;

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
}

impl Default for CoreConfig {
    fn default() -> Self {
        CoreConfig {
            stats_interval: Duration::from_millis(250),
            command_poll: Duration::from_millis(1),
            io_memory: 1 << 20,
            ring_depth: 64,
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
}

/// Runs one executor per core of `region`, each with its socket (socket
/// `i` for core `i`), until shutdown is requested ([`sys::request_shutdown`],
/// a signal, or the parent process going away).
pub fn run(region: &Region, sockets: Vec<UdpSocket>, config: &CoreConfig) -> Result<(), CoreError> {
    let cores = region.config().cores;
    if sockets.len() != cores as usize {
        return Err(CoreError::SocketCount {
            sockets: sockets.len(),
            cores,
        });
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let parent = std::os::unix::process::parent_id();
    let mut handles = Vec::with_capacity(cores as usize);
    for (core, socket) in (0..cores).zip(sockets) {
        let (commands, events) = region.core_side(core)?;
        let config = config.clone();
        let handle = LocalExecutorBuilder::new(Placement::Fixed(core as usize % cpus))
            .name(&format!("dp-core-{core}"))
            .io_memory(config.io_memory)
            .ring_depth(config.ring_depth)
            .spawn(move || run_core(core, socket, commands, events, config, parent))
            .map_err(|e| CoreError::Executor {
                core,
                message: e.to_string(),
            })?;
        handles.push((core, handle));
    }
    let mut result = Ok(());
    for (core, handle) in handles {
        if let Err(e) = handle.join() {
            // Make the other cores stop too.
            sys::request_shutdown();
            if result.is_ok() {
                result = Err(CoreError::Join {
                    core,
                    message: e.to_string(),
                });
            }
        }
    }
    result
}

fn stop_requested(parent: u32) -> bool {
    sys::shutdown_requested() || std::os::unix::process::parent_id() != parent
}

async fn run_core(
    core: u32,
    socket: UdpSocket,
    commands: Consumer<Command>,
    mut events: Producer<Event>,
    config: CoreConfig,
    parent: u32,
) {
    let socket = Rc::new(sys::socket::into_glommio(socket));
    let forwarder = Rc::new(RefCell::new(Forwarder::new(core)));
    tracing::info!(core, "core running");

    let commands = Rc::new(RefCell::new(commands));
    let receive = glommio::spawn_local(receive_loop(
        socket.clone(),
        forwarder.clone(),
        commands.clone(),
    ));

    let mut next_stats = Instant::now() + config.stats_interval;
    loop {
        {
            let mut f = forwarder.borrow_mut();
            apply_commands(&mut f, &mut commands.borrow_mut());
            let now = Instant::now();
            if now >= next_stats {
                next_stats = now + config.stats_interval;
                let stats = Event::Stats(f.stats());
                // Statistics are cumulative: a newer report replaces one
                // still waiting for room in the ring.
                let queue = f.events();
                match queue.iter_mut().find(|e| matches!(e, Event::Stats(_))) {
                    Some(pending) => *pending = stats,
                    None => queue.push_back(stats),
                }
            }
            let queue = f.events();
            while let Some(event) = queue.front() {
                if events.push(event).is_err() {
                    break; // ring full: keep it for the next tick
                }
                queue.pop_front();
            }
        }
        if stop_requested(parent) {
            break;
        }
        glommio::timer::sleep(config.command_poll).await;
    }
    receive.cancel().await;
    // Last report so control sees the final counters.
    let mut f = forwarder.borrow_mut();
    let _ = events.push(&Event::Stats(f.stats()));
    f.events().clear();
    tracing::info!(core, "core stopped");
}

/// Applies every command waiting in the ring.
fn apply_commands(f: &mut Forwarder, commands: &mut Consumer<Command>) {
    while let Some(command) = commands.pop() {
        match command {
            Ok(command) => {
                if let Err(e) = f.apply(command) {
                    tracing::warn!(core = f.core(), error = %e, "command not applied");
                }
            }
            Err(e) => tracing::warn!(core = f.core(), error = %e, "corrupt command slot skipped"),
        }
    }
}

async fn receive_loop(
    socket: Rc<glommio::net::UdpSocket>,
    forwarder: Rc<RefCell<Forwarder>>,
    commands: Rc<RefCell<Consumer<Command>>>,
) {
    let fd = socket.as_raw_fd();
    let mut rx = sys::socket::BatchReceiver::new();
    let mut out = Outbox::with_capacity(64);
    let mut tx = sys::socket::BatchSender::new();
    let mut peek = [0u8; 1];
    loop {
        // Everything already waiting, in one recvmmsg. When nothing is,
        // sleep in io_uring until a datagram arrives (a peek, which leaves
        // it for the next recvmmsg): under load no wait happens at all.
        let n = match rx.recv(fd) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => 0,
            Err(e) => {
                tracing::debug!(error = %e, "recvmmsg failed");
                // Do not spin on a persistent error.
                glommio::timer::sleep(Duration::from_millis(1)).await;
                continue;
            }
        };
        if n == 0 {
            if let Err(e) = socket.peek_from(&mut peek).await {
                tracing::debug!(error = %e, "waiting for datagrams failed");
                glommio::timer::sleep(Duration::from_millis(1)).await;
            }
            continue;
        }
        let start = Instant::now();
        out.clear();
        {
            let mut f = forwarder.borrow_mut();
            // Commands first (one atomic load when the ring is empty): a
            // client that just got Ready or Session Description is known to
            // the core before its first datagram is judged, without waiting
            // for the next tick.
            apply_commands(&mut f, &mut commands.borrow_mut());
            for i in 0..n {
                if let Some((from, packet)) = rx.datagram(i) {
                    f.handle(from, packet, &mut out);
                }
            }
        }
        send_all(&socket, &forwarder, &mut tx, &out).await;
        let busy = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        forwarder.borrow_mut().note_busy(busy);
        // Let the command tick run between batches under sustained load.
        glommio::yield_if_needed().await;
    }
}

/// Sends everything in `out`: sendmmsg batches without waiting, and
/// glommio's `send_to` (which waits for room) when the socket buffer is
/// full.
async fn send_all(
    socket: &glommio::net::UdpSocket,
    forwarder: &RefCell<Forwarder>,
    tx: &mut sys::socket::BatchSender,
    out: &Outbox,
) {
    let fd = socket.as_raw_fd();
    let mut next = 0;
    while next < out.len() {
        match tx.send(fd, out.iter().skip(next)) {
            Ok(sent) => {
                let mut f = forwarder.borrow_mut();
                for (_, bytes) in out.iter().skip(next).take(sent) {
                    f.note_sent(bytes.len());
                }
                next += sent;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                let Some((to, bytes)) = out.get(next) else {
                    break;
                };
                let sent = socket.send_to(bytes, to).await;
                let mut f = forwarder.borrow_mut();
                match sent {
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
                forwarder.borrow_mut().note_send_failed();
                next += 1;
            }
        }
    }
}
