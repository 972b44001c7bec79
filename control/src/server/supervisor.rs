//! The dataplane child: started, awaited until its sockets are up,
//! restarted when it dies (with a budget), stopped on shutdown.
//!
//! Control binds the UDP reuseport group itself, once, and hands the
//! sockets to every dataplane it starts (inherited descriptors,
//! `--udp-fds`): between a dataplane's death and its successor's start the
//! port is never free for another process to bind into (which would join
//! its reuseport group and take the traffic), and datagrams that arrive
//! meanwhile wait in the sockets. A dataplane the operator starts
//! (`--external-dataplane`) binds for itself.
//!
//! With a state directory the dataplane outlives control: it is started
//! with a reattach window, not killed when control exits, and a new control
//! *adopts* it ([`Supervisor::adopt`]): watched through a pidfd (it is not
//! this process's child), and should it die later, replaced by a child on
//! the same port (bound afresh: the sockets left with the old control).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use dataplane::sys::Process;
use shared::Region;
use tokio::process::{Child, Command};

use super::ServerError;
use crate::config::{Config, DataplaneMode};

/// Sets or clears FD_CLOEXEC on the sockets' descriptors.
fn inheritable(sockets: &[std::net::UdpSocket], yes: bool) -> Result<(), ServerError> {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    let flags = if yes {
        FdFlag::empty()
    } else {
        FdFlag::FD_CLOEXEC
    };
    for s in sockets {
        fcntl(s.as_raw_fd(), FcntlArg::F_SETFD(flags))
            .map_err(|e| ServerError::Dataplane(format!("fcntl(FD_CLOEXEC): {e}")))?;
    }
    Ok(())
}

/// Restarts allowed within [`RESTART_WINDOW`] before control gives up.
pub const MAX_RESTARTS: usize = 5;
/// The window [`MAX_RESTARTS`] counts in.
pub const RESTART_WINDOW: Duration = Duration::from_secs(60);
/// How often an adopted dataplane (not a child: no wait) is looked at.
const ADOPTED_POLL: Duration = Duration::from_millis(20);

/// How to start the dataplane, and the child while it runs.
#[derive(Debug)]
pub(super) struct Supervisor {
    /// Program and optional subcommand; None when it runs on its own.
    launcher: Option<(PathBuf, Option<&'static str>)>,
    shm: PathBuf,
    /// Seconds a proven address may stay silent (the dataplane's
    /// `--udp-idle-secs`).
    udp_idle_secs: u64,
    /// The dataplane's `--packet-io`.
    packet_io: dataplane::core::PacketIo,
    /// Where it binds; after the first start, with the port it got, so a
    /// restarted dataplane serves the port clients were told.
    bind: SocketAddr,
    start_timeout: Duration,
    child: Option<Child>,
    /// A dataplane an earlier control started, taken over.
    adopted: Option<Process>,
    restarts: VecDeque<Instant>,
    /// The reuseport group handed to each child (empty when the dataplane
    /// runs on its own, or was adopted: bound when a child is next needed).
    sockets: Vec<std::net::UdpSocket>,
    cores: u32,
    /// Seconds a child forwards on once control is gone (0: it stops with
    /// control; killed with it too).
    reattach_secs: u64,
    /// The child logs JSON lines.
    log_json: bool,
    /// The child's log filter (None: RUST_LOG as inherited).
    log_level: Option<String>,
}

impl Supervisor {
    /// Binds the UDP group (unless the dataplane runs on its own, or
    /// `adopted` serves it already) and says how children are started.
    pub(super) fn new(
        config: &Config,
        shm: &Path,
        adopted: Option<(Process, u16)>,
    ) -> Result<Supervisor, ServerError> {
        let mut bind = config.udp_bind;
        let sockets = match (&config.dataplane, &adopted) {
            (DataplaneMode::External, _) => Vec::new(),
            (_, Some((_, port))) => {
                bind.set_port(*port);
                Vec::new()
            }
            _ => {
                let sockets = dataplane::sys::socket::bind_group(bind, config.cores)
                    .map_err(|e| ServerError::Dataplane(format!("binding UDP {bind}: {e}")))?;
                if let Some(Ok(local)) = sockets.first().map(|s| s.local_addr()) {
                    bind = local;
                }
                sockets
            }
        };
        let launcher = match &config.dataplane {
            DataplaneMode::Embedded => {
                let exe = std::env::current_exe().map_err(|e| {
                    ServerError::Dataplane(format!("locating this executable: {e}"))
                })?;
                Some((exe, Some("dataplane")))
            }
            DataplaneMode::Spawn(bin) => Some((bin.clone(), None)),
            DataplaneMode::External => None,
        };
        Ok(Supervisor {
            launcher,
            shm: shm.to_path_buf(),
            udp_idle_secs: config.udp_idle.as_secs().max(1),
            packet_io: config.packet_io,
            bind,
            start_timeout: config.dataplane_start_timeout,
            child: None,
            adopted: adopted.map(|(process, _)| process),
            restarts: VecDeque::new(),
            sockets,
            cores: config.cores,
            reattach_secs: if config.state_dir.is_some() {
                config.reattach_window.as_secs()
            } else {
                0
            },
            log_json: config.log_json,
            log_level: config.log_level.clone(),
        })
    }

    /// The dataplane's process id, while it runs.
    pub(super) fn pid(&self) -> Option<u32> {
        match &self.adopted {
            Some(process) => Some(process.pid()),
            None => self.child.as_ref().and_then(Child::id),
        }
    }

    /// Whether the dataplane outlives this control (a state directory is
    /// set and a new control may take it over).
    pub(super) fn outlives(&self) -> bool {
        self.reattach_secs > 0 && self.launcher.is_some()
    }

    /// Starts the dataplane (or waits for an external one) and returns the
    /// UDP port it bound.
    pub(super) async fn start(&mut self, region: &Region) -> Result<u16, ServerError> {
        region.clear_udp_port();
        if self.launcher.is_some() && self.sockets.is_empty() {
            // The adopted dataplane died with the group: bind it afresh on
            // the port the clients know.
            self.sockets = dataplane::sys::socket::bind_group(self.bind, self.cores)
                .map_err(|e| ServerError::Dataplane(format!("binding UDP {}: {e}", self.bind)))?;
        }
        match &self.launcher {
            Some((program, subcommand)) => {
                let fds: Vec<String> = self
                    .sockets
                    .iter()
                    .map(|s| s.as_raw_fd().to_string())
                    .collect();
                // The child inherits exactly these descriptors: they are
                // inheritable only while it is spawned.
                inheritable(&self.sockets, true)?;
                let spawned = Command::new(program)
                    .args(*subcommand)
                    .arg("--shm")
                    .arg(&self.shm)
                    .arg("--udp-fds")
                    .arg(fds.join(","))
                    .arg("--udp-idle-secs")
                    .arg(self.udp_idle_secs.to_string())
                    .arg("--packet-io")
                    .arg(self.packet_io.name())
                    .arg("--reattach-secs")
                    .arg(self.reattach_secs.to_string())
                    .arg("--log-format")
                    .arg(if self.log_json { "json" } else { "human" })
                    .envs(self.log_level.iter().map(|l| ("RUST_LOG", l)))
                    // One that may outlive us is left running when we go.
                    .kill_on_drop(self.reattach_secs == 0)
                    .spawn();
                inheritable(&self.sockets, false)?;
                let child = spawned.map_err(|e| {
                    ServerError::Dataplane(format!("spawn {}: {e}", program.display()))
                })?;
                self.child = Some(child);
            }
            None => tracing::info!(
                "waiting for an external dataplane: dataplane --shm {} --bind {}",
                self.shm.display(),
                self.bind
            ),
        }
        let started = Instant::now();
        loop {
            if let Some(port) = region.udp_port() {
                self.bind.set_port(port);
                return Ok(port);
            }
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    self.child = None;
                    return Err(ServerError::Dataplane(format!(
                        "exited at start-up: {status}"
                    )));
                }
            }
            if started.elapsed() > self.start_timeout {
                return Err(ServerError::Dataplane(format!(
                    "did not bind its sockets within {:?}",
                    self.start_timeout
                )));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Completes when the child exits, with how it ended; never when the
    /// dataplane runs on its own.
    pub(super) async fn exited(&mut self) -> String {
        if let Some(process) = &self.adopted {
            // Not our child: no wait(2); its pidfd tells.
            while !process.exited() {
                tokio::time::sleep(ADOPTED_POLL).await;
            }
            self.adopted = None;
            return "the adopted dataplane exited".into();
        }
        match self.child.as_mut() {
            Some(c) => {
                let status = c.wait().await;
                self.child = None;
                status.map_or_else(|e| e.to_string(), |s| s.to_string())
            }
            None => std::future::pending().await,
        }
    }

    /// Starts a new dataplane after the last one died, unless it died too
    /// often lately; waits a little longer after each recent restart.
    pub(super) async fn restart(&mut self, region: &Region) -> Result<u16, ServerError> {
        let now = Instant::now();
        while self
            .restarts
            .front()
            .is_some_and(|t| now.duration_since(*t) > RESTART_WINDOW)
        {
            self.restarts.pop_front();
        }
        if self.restarts.len() >= MAX_RESTARTS {
            return Err(ServerError::Dataplane(format!(
                "died {} times within {RESTART_WINDOW:?}; giving up",
                self.restarts.len() + 1
            )));
        }
        let backoff = Duration::from_millis(50 << self.restarts.len());
        self.restarts.push_back(now);
        tokio::time::sleep(backoff).await;
        self.start(region).await
    }

    /// Leaves the dataplane running for a new control to take over.
    pub(super) fn leave_running(&mut self) {
        self.adopted = None;
        // Not killed on drop (it was started to outlive us); it is
        // reaped by whoever inherits it.
        self.child = None;
    }

    /// SIGTERM, then SIGKILL if it lingers.
    pub(super) async fn stop(&mut self) {
        if let Some(process) = self.adopted.take() {
            // Through the pidfd: never a process that reused its pid.
            let _ = process.signal(nix::sys::signal::Signal::SIGTERM as i32);
            let by = Instant::now() + Duration::from_secs(5);
            while !process.exited() && Instant::now() < by {
                tokio::time::sleep(ADOPTED_POLL).await;
            }
            if !process.exited() {
                tracing::warn!("dataplane ignored SIGTERM, killing it");
                let _ = process.signal(nix::sys::signal::Signal::SIGKILL as i32);
            }
            return;
        }
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Some(pid) = child.id() {
            let pid = nix::unistd::Pid::from_raw(pid as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        }
        if tokio::time::timeout(Duration::from_secs(5), child.wait())
            .await
            .is_err()
        {
            tracing::warn!("dataplane ignored SIGTERM, killing it");
            let _ = child.kill().await;
        }
    }
}
