//! Typed configuration, every field with its default and unit.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use crate::lvsp;

/// How the data plane runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataplaneMode {
    /// Default: control starts its own executable as `<exe> dataplane ...`
    /// (the `control` binary carries the data plane) and stops it on
    /// shutdown. Only meaningful when the running executable is `control`.
    Embedded,
    /// Control starts this `dataplane` binary as its child.
    Spawn(PathBuf),
    /// The operator runs the dataplane; control only creates the region
    /// and waits for it to attach.
    External,
}

/// TLS for the websocket listeners.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tls {
    /// Plain `ws://` (only behind a TLS-terminating proxy, or in tests).
    Off,
    /// A certificate chain and private key, both PEM files.
    Files {
        /// Certificate chain (PEM).
        cert: PathBuf,
        /// Private key (PEM: PKCS#8, PKCS#1 or SEC1).
        key: PathBuf,
    },
    /// Default: a self-signed certificate generated at start-up for
    /// `names`, its PEM written to `cert_out` for clients to trust.
    SelfSigned {
        /// Where the certificate is written.
        cert_out: PathBuf,
        /// Subject alternative names (DNS names or IP literals).
        names: Vec<String>,
    },
}

/// Everything the server needs to start.
#[derive(Debug, Clone)]
pub struct Config {
    /// LVSP websocket listener. Default `127.0.0.1:5470`.
    pub lvsp_listen: SocketAddr,
    /// Voice gateway websocket listener. Default `127.0.0.1:5480`.
    pub gateway_listen: SocketAddr,
    /// HTTP listener for `/metrics` and `/health`; None disables it.
    /// Default `127.0.0.1:5491`.
    pub metrics_listen: Option<SocketAddr>,
    /// UDP address every data-plane core binds. Default `127.0.0.1:5490`.
    pub udp_bind: SocketAddr,
    /// IPv4 address clients are told to send UDP to (Ready `ip`).
    /// Default: the UDP bind address when it is IPv4 and not unspecified,
    /// else 127.0.0.1.
    pub public_ip: Ipv4Addr,
    /// TLS of the LVSP listener. Default: self-signed.
    pub lvsp_tls: Tls,
    /// TLS of the voice gateway listener. Default: self-signed (the same
    /// certificate as LVSP).
    pub gateway_tls: Tls,
    /// Secret shared with Litecord, at least [`lvsp::MIN_SECRET_LEN`] (32)
    /// characters. Default: 64 random hex digits (256 bits), printed at
    /// start-up (a secret the operator supplies is never printed).
    pub secret: String,
    /// Data-plane cores (executors). Default: all available CPUs.
    pub cores: u32,
    /// How the data plane runs. Default: embedded (a child process running
    /// this executable's `dataplane` subcommand).
    pub dataplane: DataplaneMode,
    /// Shared-memory file (created 0600), for a dataplane the operator
    /// starts. Default None: an anonymous memfd the child reaches through
    /// `/proc/<pid>/fd/<n>`, which no other user can open and which leaves
    /// nothing behind (no session key in any file) whatever happens.
    pub shm_path: Option<PathBuf>,
    /// A proven client address nothing came from (no authenticated media,
    /// no keepalive) for this long stops receiving. Default 60 s.
    pub udp_idle: Duration,
    /// How the data plane's cores move datagrams. Default mmsg.
    pub packet_io: dataplane::core::PacketIo,
    /// LVSP heartbeat interval (milliseconds on the wire, seconds in the
    /// litecord dialect). Default 10 s.
    pub lvsp_heartbeat: Duration,
    /// LVSP dialect. Default spec.
    pub lvsp_dialect: lvsp::Dialect,
    /// How long channels and voice states survive with no LVSP connection.
    /// Default 300 s.
    pub lvsp_grace: Duration,
    /// INFOs kept for RESUME. Default 4096.
    pub lvsp_replay: usize,
    /// Per-connection LVSP message budget. Default 1000/s, burst 2000.
    pub lvsp_rate: lvsp::RateLimit,
    /// Gateway heartbeat interval (milliseconds on the wire). Default 13.75 s.
    pub gateway_heartbeat: Duration,
    /// Encryption modes offered to clients, in order of preference.
    /// Default: the two AEAD modes, AES-GCM first; the legacy
    /// `xsalsa20_poly1305` modes only when listed.
    pub modes: Vec<shared::Mode>,
    /// How long a gateway websocket may stay without Identify or Resume
    /// (closed with 4003 after). Default 10 s.
    pub identify_timeout: Duration,
    /// How long an LVSP websocket may stay without IDENTIFY or RESUME
    /// (closed with 4000 after). Default 10 s.
    pub lvsp_identify_timeout: Duration,
    /// How long a new connection may take from accept to the end of the
    /// websocket upgrade, TLS included (closed after). Default 5 s.
    pub handshake_timeout: Duration,
    /// Identified gateway connections (Identify or Resume accepted); past
    /// it an identifying connection is closed with 1013. Default 10 000.
    pub max_connections: usize,
    /// Identified LVSP connections (Litecord's links). Default 64.
    pub lvsp_max_connections: usize,
    /// Gateway connections not yet identified (TCP, TLS, upgrade, waiting
    /// for Identify); when full, a newcomer takes the slot of the oldest
    /// one of the prefix holding the most.
    /// Default 512.
    pub gateway_max_pending: usize,
    /// LVSP connections not yet identified. Default 64.
    pub lvsp_max_pending: usize,
    /// Pending connections of one listener from one source address
    /// (IPv4-mapped IPv6 counts as IPv4). Default 8.
    pub max_pending_per_address: usize,
    /// Pending connections of one listener from one /24 (IPv4) or /64
    /// (IPv6). Default 32.
    pub max_pending_per_prefix: usize,
    /// Concurrent `/metrics` and `/health` connections. Default 32.
    pub metrics_max_connections: usize,
    /// Per-connection gateway message budget. Default 10/s, burst 60.
    pub gateway_rate: crate::limit::RateLimit,
    /// How long a gateway session whose websocket went away waits for a
    /// Resume, keeping its SSRC, key and address. Default 30 s.
    pub gateway_resume_grace: Duration,
    /// How long a gateway session whose client closed with 1000 or 1001
    /// may still resume (the others are told it left at once; discord.js
    /// closes that way when it resumes after losing UDP). Default 5 s.
    pub gateway_leave_grace: Duration,
    /// Numbered gateway messages kept per session for Resume. Default 256.
    pub gateway_replay: usize,
    /// How long a voice state with no gateway session in the call (never
    /// identified, or left it) is kept before it is removed, while
    /// Litecord is connected too (Litecord never sends
    /// VOICE_STATE_DESTROY). Default 300 s.
    pub voice_state_idle: Duration,
    /// How long a channel with no voice states is kept before it is
    /// destroyed (Litecord never sends CHANNEL_DESTROY). Default 300 s.
    pub channel_idle: Duration,
    /// Sessions one data-plane core is sized for (health's occupancy).
    /// Default 1000.
    pub capacity_per_core: u64,
    /// Largest websocket message accepted, bytes. Default 64 KiB.
    pub max_message_size: usize,
    /// How long to wait for the dataplane to come up. Default 20 s.
    pub dataplane_start_timeout: Duration,
    /// Backoff after failed LVSP IDENTIFY/RESUME, per peer address (IPv6
    /// per /64): `free_failures` failures (default 3), then attempts are
    /// refused unchecked with 4001 for a window that starts at `base`
    /// (default 1 s) and doubles per further failure up to `max` (default
    /// 300 s); an address quiet for `forget_after` (default 600 s) is
    /// forgotten; at most `max_addresses` (default 4096) are remembered.
    pub lvsp_auth_backoff: lvsp::AuthBackoff,
    /// Longest a drain (SIGUSR1, or `POST /drain` on the metrics listener)
    /// waits for calls to end before it closes the members still in one
    /// and the process exits. Default 600 s.
    pub drain_deadline: Duration,
    /// Whether a restart follows a drain: members closed at the drain
    /// deadline get 4015 (resume) instead of 4014 (disconnected). A
    /// `POST /drain?restart=...` says it for itself. Default false.
    pub drain_restart: bool,
    /// Where control saves what a new control needs to take over without
    /// dropping a call (`crate::persist`): a directory of this user's,
    /// 0700 (created so if missing). None (the default): nothing is saved,
    /// the data plane stops with control, and a restart starts empty.
    pub state_dir: Option<PathBuf>,
    /// DAVE end-to-end encryption: on (default: calls are end-to-end
    /// encrypted while every member supports it), off, or required
    /// (clients without it are closed with 4017).
    pub dave: crate::dave::DaveMode,
    /// With a state directory: how long the data plane forwards on after
    /// control went away, waiting for a new control to take it over, before
    /// it stops. Default 60 s.
    pub reattach_window: Duration,
    /// Logs are JSON lines (control's and the data plane child's).
    /// Default false: lines for people.
    pub log_json: bool,
    /// The data plane child's log filter (RUST_LOG directives). Default
    /// None: RUST_LOG as the child inherits it.
    pub log_level: Option<String>,
}

/// A configuration that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Out-of-range or inconsistent settings.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Config {
    /// The embedded defaults: everything on loopback, a fresh secret.
    pub fn new() -> Config {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
        let self_signed = Tls::SelfSigned {
            cert_out: std::env::temp_dir()
                .join(format!("voice-server-{}", std::process::id()))
                .join("cert.pem"),
            names: vec!["localhost".into(), "127.0.0.1".into()],
        };
        Config {
            lvsp_tls: self_signed.clone(),
            gateway_tls: self_signed,
            lvsp_listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 5470)),
            gateway_listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 5480)),
            metrics_listen: Some(SocketAddr::from((Ipv4Addr::LOCALHOST, 5491))),
            udp_bind: SocketAddr::from((Ipv4Addr::LOCALHOST, 5490)),
            public_ip: Ipv4Addr::LOCALHOST,
            secret: hex::encode(rand::random::<[u8; 32]>()),
            cores,
            dataplane: DataplaneMode::Embedded,
            shm_path: None,
            udp_idle: Duration::from_secs(60),
            packet_io: dataplane::core::PacketIo::default(),
            lvsp_heartbeat: Duration::from_millis(10_000),
            lvsp_dialect: lvsp::Dialect::Spec,
            lvsp_grace: Duration::from_secs(300),
            lvsp_replay: 4096,
            lvsp_rate: lvsp::RateLimit {
                per_second: 1000.0,
                burst: 2000.0,
            },
            gateway_heartbeat: Duration::from_millis(13_750),
            modes: shared::Mode::DEFAULT.to_vec(),
            identify_timeout: Duration::from_secs(10),
            lvsp_identify_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(5),
            max_connections: 10_000,
            lvsp_max_connections: 64,
            gateway_max_pending: 512,
            lvsp_max_pending: 64,
            max_pending_per_address: 8,
            max_pending_per_prefix: 32,
            metrics_max_connections: 32,
            gateway_rate: crate::limit::RateLimit {
                per_second: 10.0,
                burst: 60.0,
            },
            gateway_resume_grace: Duration::from_secs(30),
            gateway_leave_grace: Duration::from_secs(5),
            gateway_replay: 256,
            voice_state_idle: Duration::from_secs(300),
            channel_idle: Duration::from_secs(300),
            capacity_per_core: 1000,
            max_message_size: 64 << 10,
            dataplane_start_timeout: Duration::from_secs(20),
            lvsp_auth_backoff: lvsp::AuthBackoff::default(),
            drain_deadline: Duration::from_secs(600),
            drain_restart: false,
            state_dir: None,
            dave: crate::dave::DaveMode::On,
            reattach_window: Duration::from_secs(60),
            log_json: false,
            log_level: None,
        }
    }

    /// The Ready IP that follows from a UDP bind address.
    pub fn public_ip_for(udp_bind: SocketAddr) -> Ipv4Addr {
        match udp_bind.ip() {
            IpAddr::V4(v4) if !v4.is_unspecified() => v4,
            _ => Ipv4Addr::LOCALHOST,
        }
    }

    /// Checks the settings, with a message saying what is wrong.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.state_dir.is_some() && self.shm_path.is_some() {
            return bad(
                "--state-dir needs the default anonymous region: a new control takes a \
                 running data plane over through it (drop --shm)"
                    .into(),
            );
        }
        if !(1..=256).contains(&self.cores) {
            return bad(format!("cores must be 1..=256, got {}", self.cores));
        }
        let secret_len = self.secret.chars().count();
        if secret_len < lvsp::MIN_SECRET_LEN {
            return bad(format!(
                "the LVSP secret must be at least {} characters, got {secret_len} \
                 (generate one with `openssl rand -hex 32`, or omit --secret to \
                 have one generated)",
                lvsp::MIN_SECRET_LEN
            ));
        }
        let backoff = &self.lvsp_auth_backoff;
        if backoff.base.is_zero() || backoff.max < backoff.base || backoff.max_addresses == 0 {
            return bad(format!(
                "LVSP authentication backoff needs 0 < base <= max and room for \
                 one address, got {backoff:?}"
            ));
        }
        for (name, d) in [
            ("lvsp heartbeat", self.lvsp_heartbeat),
            ("gateway heartbeat", self.gateway_heartbeat),
        ] {
            if d < Duration::from_millis(100) || d > Duration::from_secs(600) {
                return bad(format!("{name} must be 100 ms..600 s, got {d:?}"));
            }
        }
        if self.capacity_per_core == 0 {
            return bad("capacity per core must be at least 1 session".into());
        }
        if self.lvsp_replay == 0 {
            return bad("the LVSP replay buffer needs at least one slot".into());
        }
        for (name, rate) in [("LVSP", self.lvsp_rate), ("gateway", self.gateway_rate)] {
            if !(rate.per_second > 0.0 && rate.burst >= 1.0) {
                return bad(format!("{name} rate limit must be positive, got {rate:?}"));
            }
        }
        for (name, n) in [
            ("max connections", self.max_connections),
            ("LVSP max connections", self.lvsp_max_connections),
            ("gateway max pending", self.gateway_max_pending),
            ("LVSP max pending", self.lvsp_max_pending),
            ("max pending per address", self.max_pending_per_address),
            ("max pending per prefix", self.max_pending_per_prefix),
            ("metrics max connections", self.metrics_max_connections),
        ] {
            if n == 0 {
                return bad(format!("{name} must be at least 1"));
            }
        }
        for (name, d) in [
            ("identify timeout", self.identify_timeout),
            ("LVSP identify timeout", self.lvsp_identify_timeout),
            ("handshake timeout", self.handshake_timeout),
            ("voice state idle time", self.voice_state_idle),
            ("channel idle time", self.channel_idle),
        ] {
            if d.is_zero() {
                return bad(format!("{name} must be above zero"));
            }
        }
        if self.modes.is_empty() {
            return bad("at least one encryption mode must be offered".into());
        }
        if self.gateway_replay == 0 {
            return bad("the gateway replay buffer needs at least one slot".into());
        }
        if self.udp_idle < Duration::from_secs(1) {
            return bad(format!(
                "udp idle timeout must be at least 1 s, got {:?}",
                self.udp_idle
            ));
        }
        if self.max_message_size < 1024 {
            return bad("max message size must be at least 1024 bytes".into());
        }
        if let DataplaneMode::Spawn(p) = &self.dataplane {
            if !p.is_file() {
                return bad(format!(
                    "dataplane binary {} not found (build it, or pass --dataplane-bin)",
                    p.display()
                ));
            }
        }
        Ok(())
    }
}

/// Descriptors control needs besides its connections: the listeners,
/// the runtime's epoll and wake-up descriptors, the shared-memory region,
/// the dataplane child's pipes, standard streams, TLS files read at
/// start-up, the one socket each accept loop holds while refusing it, and
/// the (at most 16 per listener) pending connections dropped for newer
/// ones that are still closing.
pub const DESCRIPTOR_MARGIN: u64 = 128;

/// The open-file limit is below what the connection caps need.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the connection caps need {needed} open files but the limit is {limit}: \
     gateway --max-connections {gateway} + --gateway-max-pending {gateway_pending}, \
     LVSP --lvsp-max-connections {lvsp} + --lvsp-max-pending {lvsp_pending}, \
     --metrics-max-connections {metrics}, and {margin} for listeners, the dataplane \
     link and files; lower those flags or raise the hard limit \
     (`ulimit -Hn`, systemd `LimitNOFILE=`)"
)]
pub struct DescriptorShortage {
    /// Descriptors the caps need, margin included.
    pub needed: u64,
    /// The soft limit after raising it to the hard limit.
    pub limit: u64,
    /// Identified gateway connections.
    pub gateway: u64,
    /// Pending gateway connections.
    pub gateway_pending: u64,
    /// Identified LVSP connections.
    pub lvsp: u64,
    /// Pending LVSP connections.
    pub lvsp_pending: u64,
    /// `/metrics` connections (0 when the endpoint is off).
    pub metrics: u64,
    /// [`DESCRIPTOR_MARGIN`].
    pub margin: u64,
}

impl Config {
    /// Descriptors every connection cap together may take, plus
    /// [`DESCRIPTOR_MARGIN`].
    pub fn descriptors_needed(&self) -> u64 {
        self.descriptor_shortage(0).needed
    }

    /// Checks that the caps fit in `limit` open files (the process's soft
    /// limit), so that no flood of connections can run control out of
    /// descriptors before a cap applies.
    pub fn check_open_files(&self, limit: u64) -> Result<(), DescriptorShortage> {
        let shortage = self.descriptor_shortage(limit);
        if shortage.needed > limit {
            Err(shortage)
        } else {
            Ok(())
        }
    }

    fn descriptor_shortage(&self, limit: u64) -> DescriptorShortage {
        let n = |v: usize| v as u64;
        let metrics = if self.metrics_listen.is_some() {
            n(self.metrics_max_connections)
        } else {
            0
        };
        let mut s = DescriptorShortage {
            needed: 0,
            limit,
            gateway: n(self.max_connections),
            gateway_pending: n(self.gateway_max_pending),
            lvsp: n(self.lvsp_max_connections),
            lvsp_pending: n(self.lvsp_max_pending),
            metrics,
            margin: DESCRIPTOR_MARGIN,
        };
        s.needed = [
            s.gateway,
            s.gateway_pending,
            s.lvsp,
            s.lvsp_pending,
            s.metrics,
            s.margin,
        ]
        .iter()
        .fold(0u64, |a, b| a.saturating_add(*b));
        s
    }
}

impl Default for Config {
    fn default() -> Self {
        Config::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_modes_are_offered_only_when_configured() {
        let c = Config::new();
        assert_eq!(
            c.modes,
            [
                shared::Mode::Aes256GcmRtpSize,
                shared::Mode::XChaCha20Poly1305RtpSize
            ]
        );
        assert!(c.modes.iter().all(|m| !m.is_legacy()));
    }

    #[test]
    fn secrets_shorter_than_the_floor_are_refused() {
        let mut c = Config::new();
        assert_eq!(c.secret.len(), 64, "the generated default");
        assert!(c.validate().is_ok());
        c.secret = "e2e-secret".into();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("at least 32 characters"), "{e}");
        assert!(
            !e.contains("e2e-secret"),
            "the message never shows the secret"
        );
        c.secret = "x".repeat(lvsp::MIN_SECRET_LEN);
        assert!(c.validate().is_ok());
    }

    #[test]
    fn defaults_fit_a_20000_file_limit_and_name_the_flags_when_they_do_not() {
        let c = Config::new();
        c.validate().unwrap();
        assert_eq!(
            c.descriptors_needed(),
            10_000 + 512 + 64 + 64 + 32 + DESCRIPTOR_MARGIN
        );
        assert!(c.check_open_files(20_000).is_ok());
        let err = c.check_open_files(1024).unwrap_err();
        assert_eq!((err.needed, err.limit), (c.descriptors_needed(), 1024));
        let msg = err.to_string();
        for flag in [
            "--max-connections 10000",
            "--gateway-max-pending 512",
            "--lvsp-max-connections 64",
            "--lvsp-max-pending 64",
            "--metrics-max-connections 32",
            "1024",
        ] {
            assert!(msg.contains(flag), "{flag} in {msg}");
        }
    }

    #[test]
    fn caps_sized_to_fit_pass_and_metrics_off_needs_no_slots() {
        let mut c = Config::new();
        c.max_connections = 500;
        c.gateway_max_pending = 200;
        c.lvsp_max_connections = 8;
        c.lvsp_max_pending = 16;
        c.metrics_listen = None;
        assert_eq!(
            c.descriptors_needed(),
            500 + 200 + 8 + 16 + DESCRIPTOR_MARGIN
        );
        assert!(c.check_open_files(1024).is_ok());
        c.max_connections = usize::MAX;
        assert!(c.check_open_files(u64::MAX - 1).is_err(), "no overflow");
    }

    #[test]
    fn zero_caps_and_timeouts_are_refused() {
        let mut c = Config::new();
        c.max_pending_per_address = 0;
        assert!(c.validate().is_err());
        let mut c = Config::new();
        c.handshake_timeout = Duration::ZERO;
        assert!(c.validate().is_err());
    }
}
