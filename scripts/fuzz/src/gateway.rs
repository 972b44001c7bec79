//! The voice gateway state machine with a registry that has two channels
//! (guild channel 100 in guild 1 with users 7 and 8, DM channel 200 with
//! user 9) and three connection slots (versions 8, 4, 1 at first).
//!
//! Script ([`crate::script`]): text frames go to the current slot, with
//! `$0` = channel 100's token, `$1` = channel 200's, `$2` `$3` `$4` = the
//! session ids of users 7, 8, 9. Directives:
//! `!c<n>` current slot n, `!v<n>` a new connection at version n in it
//! (the old one's socket closes), `!x` its socket closes (and a new one at
//! the same version opens), `!t<ms>` time passes (every timeout is
//! handled), `!b` a binary frame, `!o` an oversized one, `!d<n>` LVSP
//! destroys user n's voice state, `!n<n>` LVSP creates it again (new
//! session id), `!D` destroys channel 100, `!r` the data plane restarts
//! (resync), `!a<n>` slot n's SSRC proves an address.
//!
//! Holds after every step: every message sent is a JSON object with an
//! integer op, at v8 with increasing `seq`; closes use documented codes
//! and nothing follows them; a connection that has not identified or
//! resumed changes nothing (no effect at all from its frames); data-plane
//! commands go to the core that owns the SSRC; the registry's counts are
//! consistent.

use std::sync::Arc;
use std::time::{Duration, Instant};

use control::gateway::{Config, Connection};
use control::limit::RateLimit;
use control::registry::{ConnId, Effect, Registry};
use control::Output;
use shared::{Command, Mode};

use crate::script::{self, Line};

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
    for slot in 0..call.slots.len() {
        call.current = slot;
        call.reopen(8);
    }
    call.now += Duration::from_secs(3600);
    call.registry.handle_timeout(call.now);
    call.route();
    assert_eq!(call.registry.session_count(), 0, "every session ended");
}

/// One websocket and what the harness saw of it.
struct Slot {
    id: ConnId,
    conn: Connection,
    version: u8,
    /// A close was sent.
    closed: bool,
    /// Ready or Resumed was sent.
    authenticated: bool,
    last_seq: u64,
}

struct Call {
    registry: Registry,
    config: Arc<Config>,
    now: Instant,
    /// `$0`..`$4`.
    vars: Vec<String>,
    slots: Vec<Slot>,
    current: usize,
    next_id: ConnId,
}

impl Call {
    fn new() -> Call {
        let mut registry = Registry::new(CORES);
        registry.set_resume(Duration::from_secs(10), 8);
        let t100 = registry
            .channel_req("100", Some("1"))
            .expect("channel")
            .token;
        let t200 = registry.channel_req("200", None).expect("DM").token;
        let mut vars = vec![t100, t200];
        for (user, channel) in USERS {
            vars.push(registry.voice_state_create(user, channel).expect("state"));
        }
        let config = Arc::new(Config {
            heartbeat_interval: Duration::from_millis(1000),
            udp_ip: "127.0.0.1".parse().expect("literal"),
            udp_port: 5000,
            rate: RateLimit {
                per_second: 10.0,
                burst: 60.0,
            },
            modes: Mode::ALL.to_vec(),
            identify_timeout: Duration::from_secs(5),
        });
        let mut call = Call {
            registry,
            config,
            now: Instant::now(),
            vars,
            slots: Vec::new(),
            current: 0,
            next_id: 1,
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
        let conn = if control::gateway::VERSIONS.contains(&version) {
            Connection::new(self.config.clone(), id, version, self.now)
        } else {
            Connection::unsupported(self.config.clone(), id, self.now)
        };
        Slot {
            id,
            conn,
            version,
            closed: false,
            authenticated: false,
            last_seq: 0,
        }
    }

    /// The current slot's socket goes away; a new connection takes it.
    fn reopen(&mut self, version: u64) {
        let slot = &mut self.slots[self.current];
        slot.conn.closed(self.now, &mut self.registry);
        self.route();
        self.slots[self.current] = self.open(version);
        self.check_outputs();
    }

    fn step(&mut self, line: Line<'_>) {
        let now = self.now;
        let slot = &mut self.slots[self.current];
        let was_authenticated = slot.authenticated;
        let mut from_client = true;
        match line {
            Line::Text(text) => {
                let text = script::fill(&text, &self.vars);
                // The call under test.
                slot.conn.handle_text(now, &text, &mut self.registry);
            }
            Line::Directive(b'b', _) => slot.conn.handle_binary(now),
            Line::Directive(b'o', _) => slot.conn.handle_oversized(),
            Line::Directive(letter, n) => {
                from_client = false;
                self.directive(letter, n);
            }
        }
        let unauthenticated = from_client && !was_authenticated;
        // Pushes reach their connections first: Ready is how the harness
        // knows a connection authenticated.
        let effects = self.route();
        self.check_outputs();
        if unauthenticated && !self.slots[self.current].authenticated {
            assert_eq!(effects, 0, "frames before Identify changed something");
        }
        let r = &self.registry;
        assert!(r.parked_count() <= r.session_count());
        assert!(r.session_count() <= r.voice_state_count());
    }

    fn directive(&mut self, letter: u8, n: u64) {
        let user = USERS[(n % 3) as usize];
        match letter {
            b'c' => self.current = (n % self.slots.len() as u64) as usize,
            b'v' => self.reopen(n),
            b'x' => self.reopen(u64::from(self.slots[self.current].version)),
            b't' => {
                self.now += Duration::from_millis(n.min(3_600_000));
                for slot in &mut self.slots {
                    slot.conn.handle_timeout(self.now);
                }
                self.registry.handle_timeout(self.now);
            }
            b'd' => self.registry.voice_state_destroy(user.0, user.1),
            b'n' => {
                if let Ok(sid) = self.registry.voice_state_create(user.0, user.1) {
                    self.vars[2 + (n % 3) as usize] = sid;
                }
            }
            b'D' => self.registry.channel_destroy("100"),
            b'r' => {
                self.registry.resync();
            }
            b'a' => {
                let slot = &self.slots[(n % self.slots.len() as u64) as usize];
                if let Some(ssrc) = slot.conn.ssrc() {
                    let addr = ([192, 0, 2, 1], 5000 + (n % 7) as u16).into();
                    self.registry.address_learned(ssrc, addr);
                }
            }
            _ => {}
        }
    }

    /// Carries out the registry's effects; returns how many there were.
    fn route(&mut self) -> usize {
        let effects: Vec<Effect> = self.registry.drain_effects().collect();
        for effect in &effects {
            match effect {
                Effect::Dataplane { core, command } => {
                    if let Some(ssrc) = ssrc_of(command) {
                        assert_eq!(ssrc % CORES, *core, "{command:?} on core {core}");
                        assert_ne!(ssrc, 0);
                    }
                }
                Effect::Gateway { conn, push } => {
                    if let Some(slot) = self.slots.iter_mut().find(|s| s.id == *conn) {
                        slot.conn.handle_push(push.clone());
                    }
                }
            }
        }
        effects.len()
    }

    fn check_outputs(&mut self) {
        for slot in &mut self.slots {
            while let Some(output) = slot.conn.poll_output() {
                assert!(!slot.closed, "{output:?} after the close");
                match output {
                    Output::Text(text) => {
                        let (op, v) = script::op_of(&text);
                        if op == 2 || op == 9 {
                            slot.authenticated = true;
                        }
                        if let Some(seq) = v.get("seq") {
                            assert!(slot.version >= 8, "seq below v8: {text}");
                            let seq = seq.as_u64().expect("integer seq");
                            assert!(seq > slot.last_seq, "seq {seq} after {}", slot.last_seq);
                            slot.last_seq = seq;
                        }
                    }
                    Output::Close { code, .. } => {
                        assert!(CLOSE_CODES.contains(&code), "close code {code}");
                        slot.closed = true;
                    }
                }
            }
            // Closed by the server exactly when it sent a close (a socket
            // the harness closed is replaced at once).
            assert_eq!(slot.conn.is_closed(), slot.closed);
        }
    }
}

fn ssrc_of(command: &Command) -> Option<u32> {
    match command {
        Command::AnnounceSsrc { ssrc, .. }
        | Command::RemoveSession { ssrc }
        | Command::TrustAddress { ssrc, .. } => Some(*ssrc),
        Command::UpsertSession(spec) => Some(spec.ssrc),
        _ => None,
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
        assert!(call.slots.iter().all(|s| s.authenticated && !s.closed));
        assert_eq!(call.registry.session_count(), 3);

        let call = play(include_bytes!("../seeds/gateway/resume"));
        // Resumed on slot 0, taken over by slot 1 (a new v8 connection,
        // which then missed its heartbeats: 4009), resumed again on a new
        // slot 0.
        assert!(call.slots[0].authenticated && !call.slots[0].closed);
        assert!(call.slots[1].authenticated && call.slots[1].closed);

        let call = play(include_bytes!("../seeds/gateway/lvsp-changes"));
        assert_eq!(call.slots[0].version, 9, "unsupported: closed at once");
        assert!(call.slots[0].closed);
        assert_eq!(call.registry.channel_count(), 1, "channel 100 destroyed");
    }

    #[test]
    fn frames_before_identify_change_nothing() {
        let call = play(b"{\"op\":1,\"d\":{}}\n!c1\n{\"op\":7,\"d\":{\"server_id\":\"1\",\"session_id\":\"$2\",\"token\":\"$0\"}}");
        assert!(call.slots[0].closed && call.slots[1].closed);
        assert_eq!(call.registry.session_count(), 0);
    }
}
