//! The voice gateway state machine with a registry that has two channels
//! (guild channel 100 in guild 1 with users 7 and 8, DM channel 200 with
//! user 9) on a data plane of two cores, and three connection slots
//! (versions 8, 4, 1 at first). A frame goes in as the server takes it:
//! decoded by `handle_text` (no shared state), then `handle_incoming` with
//! the registry.
//!
//! Script ([`crate::script`]): text frames go to the current slot, with
//! `$0` = channel 100's token, `$1` = channel 200's, `$2` `$3` `$4` = the
//! session ids of users 7, 8, 9. Directives:
//! `!c<n>` current slot n, `!v<n>` a new connection at version n in it
//! (the old one's socket closes), `!x` its socket closes (and a new one at
//! the same version opens), `!q<n>` the same after the client's close frame
//! with code n (1000 and 1001: a leave that may still resume), `!m` connections opened from now on offer the
//! other set of modes (all five, or only the two current ones: legacy
//! modes are offered only when configured), `!t<ms>` time passes (every
//! timeout is handled), `!b` a binary frame, `!o` an oversized one, `!g` a
//! websocket ping, `!p<n>` the next text frame gets n spaces appended,
//! `!d<n>` LVSP destroys user n's voice state, `!n<n>` LVSP creates it
//! again (new session id), `!D` destroys channel 100, `!r` the data plane
//! restarts (resync), `!a<n>` slot n's SSRC proves an address (a core's
//! event), `!s<n>` IP discovery for slot n's SSRC was observed from a
//! stranger's address, `!e<n>` slot n's proven address expired.
//!
//! Holds after every step: every message sent is a JSON object with an
//! integer op, at v8 with increasing `seq`; closes use documented codes
//! and nothing follows them; Ready offers exactly the configured modes and
//! Session Description names one of them. Before Identify or Resume, a
//! frame without a channel's token changes nothing in the registry (its
//! whole state) and has no effect at all, and one over
//! [`PRE_AUTH_MAX_MESSAGE`] is refused with 4002 unparsed. Data-plane
//! commands about an SSRC go to the core that owns it (bindings to every
//! other core, never the owner); no two live sessions share a counter
//! slot; a session's video SSRCs are on its core and are no session's
//! own SSRC; an observed address is never proven, trusted or bound (issue 8:
//! only proven addresses are pushed back after a restart). The registry's
//! counts are consistent, and once every socket is gone and the grace
//! periods pass, every session has ended.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use control::connection::{Context, Protocol};
use control::gateway::{Config, Connection, Incoming};
use control::limit::RateLimit;
use control::lvsp::{AuthBackoff, AuthGuard, Replay};
use control::registry::{ConnId, Effect, Registry};
use control::{Output, PRE_AUTH_MAX_MESSAGE};
use rand::rngs::StdRng;
use rand::SeedableRng;
use shared::{Command, Mode};

use crate::script::{self, sf, Line};

const CORES: u32 = 2;
const USERS: [(&str, &str); 3] = [("7", "100"), ("8", "100"), ("9", "200")];
const CLOSE_CODES: [u16; 13] = [
    4001, 4002, 4003, 4004, 4005, 4006, 4009, 4011, 4012, 4014, 4016, 4020, 4021,
];

/// One input: a script.
pub fn run(data: &[u8]) {
    let mut call = Call::new();
    for line in script::lines(data) {
        call.step(line);
    }
    call.finish();
}

/// One websocket and what the harness saw of it.
struct Slot {
    id: ConnId,
    conn: Connection,
    version: u8,
    modes: Vec<Mode>,
    /// The close code sent.
    closed: Option<u16>,
    /// Ready or Resumed was sent.
    authenticated: bool,
    /// Resumed was sent: what follows is re-delivered, made for the
    /// connection the session had before (a Ready among it lists that
    /// connection's modes).
    resumed: bool,
    last_seq: u64,
}

/// A session the data plane was told about with its key.
struct Live {
    slot: u32,
    channel: u64,
}

struct Call {
    cx: Context,
    /// All five modes; the two current ones.
    configs: [Arc<Config>; 2],
    legacy: bool,
    now: Instant,
    /// `$0`..`$4`.
    vars: Vec<String>,
    slots: Vec<Slot>,
    current: usize,
    next_id: ConnId,
    /// Spaces to append to the next text frame.
    pad: usize,
    /// The data plane's keyed sessions, by SSRC.
    live: HashMap<u32, Live>,
}

/// Addresses `!a` proves: 192.0.2.0/24. Addresses `!s` observes:
/// 198.51.100.0/24, never to be trusted.
fn proven_addr(n: u64) -> SocketAddr {
    ([192, 0, 2, 1], 5000 + (n % 7) as u16).into()
}

fn observed_addr(n: u64) -> SocketAddr {
    ([198, 51, 100, 1 + (n % 7) as u8], 6000).into()
}

fn is_observed(addr: SocketAddr) -> bool {
    matches!(addr, SocketAddr::V4(a) if a.ip().octets()[..3] == [198, 51, 100])
}

impl Call {
    fn new() -> Call {
        let now = Instant::now();
        let mut registry = Registry::new(CORES, StdRng::seed_from_u64(0));
        registry.set_resume(Duration::from_secs(10), 8);
        let t100 = registry.channel_req(sf("100"), Some(sf("1")), now).token;
        let t200 = registry.channel_req(sf("200"), None, now).token;
        let mut vars = vec![t100, t200];
        for (user, channel) in USERS {
            vars.push(
                registry
                    .voice_state_create(sf(user), sf(channel), now)
                    .expect("state"),
            );
        }
        let config = |modes: &[Mode]| {
            Arc::new(Config {
                heartbeat_interval: Duration::from_millis(1000),
                udp_ip: "127.0.0.1".parse().expect("literal"),
                udp_port: 5000,
                rate: RateLimit {
                    per_second: 10.0,
                    burst: 60.0,
                },
                modes: modes.to_vec(),
                identify_timeout: Duration::from_secs(5),
            })
        };
        let mut call = Call {
            cx: Context {
                registry,
                replay: Replay::new(1),
                guard: AuthGuard::new(AuthBackoff::default()),
            },
            configs: [config(&Mode::ALL), config(&Mode::DEFAULT)],
            legacy: true,
            now,
            vars,
            slots: Vec::new(),
            current: 0,
            next_id: 1,
            pad: 0,
            live: HashMap::new(),
        };
        for version in [8, 4, 1] {
            let slot = call.open(version);
            call.slots.push(slot);
        }
        call.check_outputs();
        call
    }

    fn open(&mut self, version: u64) -> Slot {
        let id = self.next_id;
        self.next_id += 1;
        let version = u8::try_from(version).unwrap_or(0);
        let config = self.configs[usize::from(!self.legacy)].clone();
        let modes = config.modes.clone();
        let conn = if control::gateway::VERSIONS.contains(&version) {
            Connection::new(config, id, version, self.now)
        } else {
            Connection::unsupported(config, id, self.now)
        };
        Slot {
            id,
            conn,
            version,
            modes,
            closed: None,
            authenticated: false,
            resumed: false,
            last_seq: 0,
        }
    }

    /// The current slot's socket goes away; a new connection takes it.
    fn reopen(&mut self, version: u64) {
        self.reopen_after(version, None);
    }

    /// [`Call::reopen`], the client having sent a close frame with `code`
    /// (1000 and 1001 are a leave that may still resume).
    fn reopen_after(&mut self, version: u64, code: Option<u16>) {
        let slot = &mut self.slots[self.current];
        if code.is_some() {
            slot.conn.handle_close(code);
        }
        slot.conn.closed(self.now, &mut self.cx);
        self.route(false);
        self.slots[self.current] = self.open(version);
        self.check_outputs();
    }

    /// Every socket goes away and every grace period passes: every session
    /// ends.
    fn finish(&mut self) {
        for slot in 0..self.slots.len() {
            self.current = slot;
            self.reopen(8);
        }
        self.now += Duration::from_secs(3600);
        self.cx.registry.handle_timeout(self.now);
        self.route(false);
        assert_eq!(self.cx.registry.session_count(), 0, "every session ended");
    }

    fn step(&mut self, line: Line<'_>) {
        let before = format!("{:?}", self.cx.registry);
        let now = self.now;
        let was_authenticated = self.slots[self.current].authenticated;
        let was_open = self.slots[self.current].closed.is_none();
        let mut from_client = true;
        let mut credentials = false;
        let mut oversized = false;
        let mut resync = false;
        match line {
            Line::Text(text) => {
                let slot = &mut self.slots[self.current];
                let mut text = script::fill(&text, &self.vars).into_owned();
                text.extend(std::iter::repeat_n(' ', std::mem::take(&mut self.pad)));
                oversized = text.len() > PRE_AUTH_MAX_MESSAGE;
                // The calls under test: decoding, then the shared state.
                if let Some(incoming) = slot.conn.handle_text(now, &text) {
                    credentials = match &incoming {
                        Incoming::Identify(id) => self.vars[..2].contains(&id.token),
                        Incoming::Resume(r) => self.vars[..2].contains(&r.token),
                        _ => false,
                    };
                    slot.conn.handle_incoming(now, incoming, &mut self.cx);
                }
            }
            Line::Directive(b'b', arg) => {
                // A binary frame with op `arg` (26: key package, 28:
                // commit) and a few payload bytes.
                let frame = [arg as u8, 0, 1, 2];
                let slot = &mut self.slots[self.current];
                if let Some(incoming) = slot.conn.handle_binary(now, &frame) {
                    slot.conn.handle_incoming(now, incoming, &mut self.cx);
                }
            }
            Line::Directive(b'o', _) => self.slots[self.current].conn.handle_oversized(),
            Line::Directive(b'g', _) => self.slots[self.current].conn.handle_ping(now),
            Line::Directive(letter, n) => {
                from_client = false;
                resync = letter == b'r';
                self.directive(letter, n);
            }
        }
        let unauthenticated = from_client && !was_authenticated;
        // Pushes reach their connections first: Ready is how the harness
        // knows a connection authenticated.
        let effects = self.route(resync);
        self.check_outputs();
        let slot = &self.slots[self.current];
        if unauthenticated && !slot.authenticated {
            assert_eq!(effects, 0, "frames before Identify changed something");
        }
        if unauthenticated && !credentials {
            let after = format!("{:?}", self.cx.registry);
            assert!(
                before == after,
                "a frame without a token changed the registry"
            );
        }
        if unauthenticated && was_open && oversized {
            assert_eq!(
                slot.closed,
                Some(4002),
                "an oversized frame before Identify"
            );
        }
        let r = &self.cx.registry;
        assert!(r.parked_count() <= r.session_count());
        assert!(r.session_count() <= r.voice_state_count());
        for slot in &self.slots {
            let Some(ssrc) = slot.conn.ssrc() else {
                continue;
            };
            if let Some((Some(proven), _)) = r.addresses(ssrc) {
                assert!(!is_observed(proven), "observed address {proven} proven");
            }
        }
    }

    fn directive(&mut self, letter: u8, n: u64) {
        let user = USERS[(n % 3) as usize];
        let ssrc_of_slot = |call: &Call| {
            let slot = &call.slots[(n % call.slots.len() as u64) as usize];
            slot.conn.ssrc()
        };
        match letter {
            b'c' => self.current = (n % self.slots.len() as u64) as usize,
            b'v' => self.reopen(n),
            b'x' => self.reopen(u64::from(self.slots[self.current].version)),
            b'q' => {
                let version = u64::from(self.slots[self.current].version);
                self.reopen_after(version, Some(u16::try_from(n).unwrap_or(u16::MAX)));
            }
            b'm' => self.legacy = !self.legacy,
            b'p' => self.pad = n.min(65_536) as usize,
            b't' => {
                self.now += Duration::from_millis(n.min(3_600_000));
                for slot in &mut self.slots {
                    slot.conn.handle_timeout(self.now);
                }
                self.cx.registry.handle_timeout(self.now);
            }
            b'd' => {
                let now = self.now;
                self.cx
                    .registry
                    .voice_state_destroy(sf(user.0), sf(user.1), now)
            }
            b'n' => {
                let now = self.now;
                if let Ok(sid) = self
                    .cx
                    .registry
                    .voice_state_create(sf(user.0), sf(user.1), now)
                {
                    self.vars[2 + (n % 3) as usize] = sid;
                }
            }
            b'D' => self.cx.registry.channel_destroy(sf("100")),
            b'r' => {
                // A fresh data plane: it knows nothing until pushed.
                self.live.clear();
                self.cx.registry.resync();
            }
            b'a' => {
                if let Some(ssrc) = ssrc_of_slot(self) {
                    self.cx.registry.address_proven(ssrc, proven_addr(n));
                }
            }
            b's' => {
                if let Some(ssrc) = ssrc_of_slot(self) {
                    self.cx.registry.address_observed(ssrc, observed_addr(n));
                    let effects = self.cx.registry.drain_effects().count();
                    assert_eq!(effects, 0, "an observation had effects");
                }
            }
            b'e' => {
                if let Some(ssrc) = ssrc_of_slot(self) {
                    if let Some((Some(addr), _)) = self.cx.registry.addresses(ssrc) {
                        self.cx.registry.address_expired(ssrc, addr);
                    }
                }
            }
            _ => {}
        }
    }

    /// Carries out the registry's effects and checks the data-plane
    /// commands (`resync`: the data plane was just restarted); returns how
    /// many effects there were.
    fn route(&mut self, resync: bool) -> usize {
        let effects: Vec<Effect> = self.cx.registry.drain_effects().collect();
        for effect in &effects {
            match effect {
                Effect::Dataplane { core, command } => self.dataplane(*core, command, resync),
                Effect::Gateway { conn, push } => {
                    if let Some(slot) = self.slots.iter_mut().find(|s| s.id == *conn) {
                        slot.conn.handle_push(push.clone());
                    }
                }
            }
        }
        effects.len()
    }

    fn dataplane(&mut self, core: u32, command: &Command, resync: bool) {
        match command {
            Command::AnnounceSsrc { ssrc, .. }
            | Command::RemoveSession { ssrc }
            | Command::HoldSession { ssrc, .. } => {
                assert_eq!(ssrc % CORES, core, "{command:?} on core {core}");
                assert_ne!(*ssrc, 0);
                if matches!(command, Command::RemoveSession { .. }) {
                    self.live.remove(ssrc);
                }
            }
            Command::UpsertSession(spec) => {
                assert_eq!(spec.ssrc % CORES, core, "{command:?} on core {core}");
                assert_ne!(spec.ssrc, 0);
                for alias in spec.video.ssrcs() {
                    assert_eq!(alias % CORES, core, "video {alias} of {command:?}");
                    assert!(alias != spec.ssrc && !self.live.contains_key(&alias));
                }
                let shared = self
                    .live
                    .iter()
                    .find(|(ssrc, live)| **ssrc != spec.ssrc && live.slot == spec.slot);
                assert!(shared.is_none(), "slot {} given to two sessions", spec.slot);
                self.live.insert(
                    spec.ssrc,
                    Live {
                        slot: spec.slot,
                        channel: spec.channel,
                    },
                );
            }
            Command::RemoveChannel { channel } => self.live.retain(|_, l| l.channel != *channel),
            Command::TrustAddress { ssrc, addr } => {
                assert!(resync, "{command:?} outside a resync");
                assert_eq!(ssrc % CORES, core, "{command:?} on core {core}");
                assert!(!is_observed(*addr), "an observed address trusted");
            }
            Command::BindAddress { ssrc, addr, .. } | Command::UnbindAddress { ssrc, addr } => {
                assert_ne!(ssrc % CORES, core, "{command:?} on the owner core");
                assert!(!is_observed(*addr), "{command:?}: an observed address");
            }
            // Only a new control taking over a running data plane resyncs.
            Command::ResyncBegin | Command::ResyncEnd => panic!("{command:?} without a take-over"),
        }
    }

    fn check_outputs(&mut self) {
        for slot in &mut self.slots {
            while let Some(output) = slot.conn.poll_output() {
                assert!(slot.closed.is_none(), "{output:?} after the close");
                match output {
                    Output::Text(text) => {
                        let (op, v) = script::op_of(&text);
                        if op == 2 || op == 9 {
                            slot.authenticated = true;
                        }
                        if op == 9 {
                            slot.resumed = true;
                        }
                        let names = |modes: &[Mode]| -> Vec<String> {
                            modes.iter().map(|m| m.name().to_owned()).collect()
                        };
                        if op == 2 && !slot.resumed {
                            let offered: Vec<String> =
                                serde_json::from_value(v["d"]["modes"].clone()).expect("modes");
                            assert_eq!(offered, names(&slot.modes), "Ready's modes");
                        }
                        if op == 4 {
                            let mode = v["d"]["mode"].as_str().expect("mode");
                            assert!(names(&slot.modes).iter().any(|m| m == mode), "{mode}");
                        }
                        if let Some(seq) = v.get("seq") {
                            assert!(slot.version >= 8, "seq below v8: {text}");
                            let seq = seq.as_u64().expect("integer seq");
                            assert!(seq > slot.last_seq, "seq {seq} after {}", slot.last_seq);
                            slot.last_seq = seq;
                        }
                    }
                    // DAVE is off in this harness: no MLS op is ever sent.
                    Output::Binary(bytes) => panic!("a binary frame with DAVE off: {bytes:?}"),
                    Output::Close { code, .. } => {
                        assert!(CLOSE_CODES.contains(&code), "close code {code}");
                        slot.closed = Some(code);
                    }
                }
            }
            // Closed by the server exactly when it sent a close (a socket
            // the harness closed is replaced at once).
            assert_eq!(slot.conn.is_closed(), slot.closed.is_some());
            assert_eq!(
                slot.conn.is_identified(),
                slot.authenticated,
                "identified exactly when Ready or Resumed went out"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn play(script: &[u8]) -> Call {
        let mut call = Call::new();
        for line in script::lines(script) {
            call.step(line);
        }
        call
    }

    /// The seeds reach what they are for, so the fuzzer starts from there.
    #[test]
    fn seeds_identify_resume_and_close() {
        let call = play(include_bytes!("../seeds/gateway/identify-select-speak"));
        assert!(call
            .slots
            .iter()
            .all(|s| s.authenticated && s.closed.is_none()));
        assert_eq!(call.cx.registry.session_count(), 3);
        assert_eq!(call.live.len(), 2, "two sessions keyed");

        let call = play(include_bytes!("../seeds/gateway/resume"));
        // Resumed on slot 0, taken over by slot 1 (a new v8 connection,
        // which then missed its heartbeats: 4009), resumed again on a new
        // slot 0.
        assert!(call.slots[0].authenticated && call.slots[0].closed.is_none());
        assert!(call.slots[1].authenticated && call.slots[1].closed == Some(4009));

        let call = play(include_bytes!("../seeds/gateway/lvsp-changes"));
        assert_eq!(call.slots[0].version, 9, "unsupported: closed at once");
        assert_eq!(call.slots[0].closed, Some(4020));
        assert_eq!(call.cx.registry.channel_count(), 1, "channel 100 destroyed");

        let call = play(include_bytes!("../seeds/gateway/resume-at-another-version"));
        assert_eq!(call.slots[2].closed, Some(4006), "v8 session resumed at v1");

        let call = play(include_bytes!("../seeds/gateway/addresses"));
        let ssrc = call.slots[0].conn.ssrc().expect("identified");
        assert_eq!(
            call.cx.registry.addresses(ssrc),
            Some((Some(proven_addr(0)), Some(observed_addr(3))))
        );

        let call = play(include_bytes!("../seeds/gateway/modes-and-limits"));
        assert_eq!(call.slots[0].closed, Some(4016), "legacy mode not offered");
        assert_eq!(
            call.slots[1].closed,
            Some(4002),
            "oversized before Identify"
        );
        assert!(call.slots[2].authenticated && call.slots[2].closed.is_none());

        let call = play(include_bytes!("../seeds/gateway/leave-and-come-back"));
        // 7 left (1000) and resumed in time, left again (1001) and came
        // back too late; 8 closed abnormally (4000) and is parked.
        assert_eq!(call.slots[0].closed, Some(4006), "past the leave grace");
        assert_eq!(call.cx.registry.session_count(), 1);
        assert_eq!(call.cx.registry.parked_count(), 1);
    }

    #[test]
    fn frames_before_identify_change_nothing() {
        let call = play(b"{\"op\":1,\"d\":{}}\n!c1\n{\"op\":7,\"d\":{\"server_id\":\"1\",\"session_id\":\"$2\",\"token\":\"$0\"}}");
        assert!(call.slots[0].closed.is_some() && call.slots[1].closed.is_some());
        assert_eq!(call.cx.registry.session_count(), 0);
    }

    /// The checks can fail: an observed address bound, or a binding sent
    /// to the owner core, is caught.
    #[test]
    fn the_checks_catch_what_they_are_for() {
        let mut call = play(b"");
        let bad = [
            (
                1,
                Command::BindAddress {
                    addr: observed_addr(0),
                    ssrc: 2,
                    slot: 0,
                },
            ),
            (
                1,
                Command::BindAddress {
                    addr: proven_addr(0),
                    ssrc: 3,
                    slot: 0,
                },
            ),
            (
                0,
                Command::TrustAddress {
                    ssrc: 2,
                    addr: proven_addr(0),
                },
            ),
        ];
        for (core, command) in bad {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                call.dataplane(core, &command, false)
            }));
            assert!(r.is_err(), "{command:?} on core {core} is caught");
        }
    }
}
