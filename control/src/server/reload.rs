//! Reloading a running server (SIGHUP): what a new configuration can
//! change without dropping a call, and what waits for a restart.
//!
//! Applied at once: the TLS certificates and keys (read again from their
//! files, renewed in place or at new paths: handshakes from then on present
//! them, connections already up keep theirs); the LVSP secret, heartbeat,
//! dialect and message budget, and the gateway's heartbeat, budget, modes,
//! announced IP and identify timeout (for connections accepted from then
//! on: a connection keeps the settings it started with); the registry's
//! grace periods (for sessions, voice states and channels that start
//! waiting from then on). Everything else (listen addresses, cores, the
//! data plane, connection caps, DAVE, the state directory, ...) is
//! reported as needing a restart and keeps its old value.

use std::sync::{Arc, Mutex};

use super::tls::{Certificate, TlsError};
use super::Shared;
use crate::config::{Config, ConfigError, Tls};
use crate::{gateway, lvsp};

/// What a reload did, by [`Config`] field.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Reloaded {
    /// Changed, and in effect now.
    pub applied: Vec<&'static str>,
    /// Changed, but kept at their old values until a restart.
    pub restart: Vec<&'static str>,
}

/// What reloads did, for the metrics.
#[derive(Debug, Default)]
pub(super) struct Reloads {
    pub(super) applied: u64,
    pub(super) refused: u64,
    /// Settings changed and waiting for a restart.
    pub(super) restart_pending: Vec<&'static str>,
}

/// Why a reload changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The new configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A certificate or key could not be read or does not fit.
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// The names of the fields that differ between `$old` and `$new`.
macro_rules! changed {
    ($old:expr, $new:expr, [$($field:ident),* $(,)?]) => {{
        let mut names: Vec<&'static str> = Vec::new();
        $(
            if $old.$field != $new.$field {
                names.push(stringify!($field));
            }
        )*
        names
    }};
}

/// Like [`changed!`], and puts the old value back into `$new` for each:
/// what needs a restart keeps its old value, so the next reload reports it
/// again.
macro_rules! kept {
    ($old:expr, $new:expr, [$($field:ident),* $(,)?]) => {{
        let mut names: Vec<&'static str> = Vec::new();
        $(
            if $old.$field != $new.$field {
                names.push(stringify!($field));
                $new.$field = $old.$field.clone();
            }
        )*
        names
    }};
}

/// Applies new configurations to a running server ([`super::Server::reloader`]).
#[derive(Debug)]
pub struct Reloader {
    pub(super) shared: Arc<Shared>,
    /// The LVSP and gateway listeners' certificates (None: plain).
    pub(super) certificates: [Option<Arc<Certificate>>; 2],
    /// The configuration in effect.
    pub(super) current: Arc<Mutex<Config>>,
}

impl Reloader {
    /// Applies what `new` changes and can change at run time. Nothing at
    /// all is applied when `new` is invalid or a certificate cannot be
    /// read.
    pub fn reload(&self, new: Config) -> Result<Reloaded, ReloadError> {
        let done = self.apply(new);
        let mut reloads = self
            .shared
            .reloads
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        match &done {
            Ok(report) => {
                reloads.applied += 1;
                for setting in &report.restart {
                    if !reloads.restart_pending.contains(setting) {
                        reloads.restart_pending.push(setting);
                    }
                }
            }
            Err(_) => reloads.refused += 1,
        }
        done
    }

    /// Counts a reload refused before it got here (the file did not parse).
    pub fn refused(&self) {
        self.shared
            .reloads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .refused += 1;
    }

    fn apply(&self, mut new: Config) -> Result<Reloaded, ReloadError> {
        new.validate()?;
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        let old = &*current;
        let mut report = Reloaded::default();
        // TLS: the same kind of setting on each listener, read again (a
        // renewed certificate is usually written over the old files).
        let tls = [
            (&old.lvsp_tls, &new.lvsp_tls),
            (&old.gateway_tls, &new.gateway_tls),
        ];
        let names = ["lvsp_tls", "gateway_tls"];
        // Every file is read before any is swapped in: all or nothing.
        let mut loaded = Vec::new();
        for (i, (was, now)) in tls.into_iter().enumerate() {
            if let (Tls::Files { .. }, Tls::Files { .. }, Some(cert)) =
                (was, now, &self.certificates[i])
            {
                if let Some(key) = Certificate::load(now)? {
                    loaded.push((names[i], cert, key));
                }
            }
        }
        for (name, cert, key) in loaded {
            cert.set(key);
            report.applied.push(name);
        }
        // Another kind of TLS (plain, self-signed, files) needs a restart.
        let files = |t: &Tls| matches!(t, Tls::Files { .. });
        if !(files(&old.lvsp_tls) && files(&new.lvsp_tls)) {
            report.restart.extend(kept!(old, new, [lvsp_tls]));
        }
        if !(files(&old.gateway_tls) && files(&new.gateway_tls)) {
            report.restart.extend(kept!(old, new, [gateway_tls]));
        }

        let lvsp = changed!(old, new, [secret, lvsp_heartbeat, lvsp_dialect, lvsp_rate]);
        if !lvsp.is_empty() {
            *self.shared.lvsp.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(lvsp::Config {
                secret: new.secret.clone(),
                heartbeat_interval: new.lvsp_heartbeat,
                dialect: new.lvsp_dialect,
                rate: new.lvsp_rate,
            });
            report.applied.extend(lvsp);
        }
        let gw = changed!(
            old,
            new,
            [
                gateway_heartbeat,
                public_ip,
                gateway_rate,
                modes,
                identify_timeout
            ]
        );
        if !gw.is_empty() {
            let mut config = self
                .shared
                .gateway
                .write()
                .unwrap_or_else(|e| e.into_inner());
            *config = Arc::new(gateway::Config {
                heartbeat_interval: new.gateway_heartbeat,
                udp_ip: new.public_ip,
                udp_port: config.udp_port,
                rate: new.gateway_rate,
                modes: new.modes.clone(),
                identify_timeout: new.identify_timeout,
            });
            report.applied.extend(gw);
        }
        let graces = changed!(
            old,
            new,
            [
                lvsp_grace,
                gateway_resume_grace,
                gateway_leave_grace,
                voice_state_idle,
                channel_idle
            ]
        );
        if !graces.is_empty() {
            self.shared.with(|cx| {
                let r = &mut cx.registry;
                r.set_orphan_grace(new.lvsp_grace);
                r.set_resume(new.gateway_resume_grace, new.gateway_replay);
                r.set_leave_grace(new.gateway_leave_grace);
                r.set_idle(new.voice_state_idle, new.channel_idle);
            });
            report.applied.extend(graces);
        }
        report.restart.extend(kept!(
            old,
            new,
            [
                lvsp_listen,
                gateway_listen,
                metrics_listen,
                udp_bind,
                cores,
                dataplane,
                shm_path,
                udp_idle,
                packet_io,
                lvsp_replay,
                lvsp_identify_timeout,
                handshake_timeout,
                max_connections,
                lvsp_max_connections,
                gateway_max_pending,
                lvsp_max_pending,
                max_pending_per_address,
                max_pending_per_prefix,
                metrics_max_connections,
                gateway_replay,
                capacity_per_core,
                max_message_size,
                dataplane_start_timeout,
                lvsp_auth_backoff,
                drain_deadline,
                drain_restart,
                state_dir,
                dave,
                reattach_window,
                log_json,
            ]
        ));
        *current = new;
        Ok(report)
    }
}
