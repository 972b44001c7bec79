//! The LVSP state machine with a registry that already has channel 100 in
//! guild 1 with users 7 and 8, user 7 in the call over the gateway; the
//! replay buffer keeps 8 INFOs; one authentication guard with the default
//! backoff. Two connection slots, spec dialect at first, slot n's peer at
//! address n. A frame goes in as the server takes it: decoded by
//! `handle_text` (no shared state), then `handle_incoming` with the
//! registry, the replay buffer and the guard.
//!
//! Script ([`crate::script`]): text frames go to the current connection,
//! with `$0` = the valid IDENTIFY/RESUME token for its HELLO nonce.
//! Directives: `!c<n>` current slot n, `!x<n>` its socket closes and a new
//! connection (spec dialect) opens from peer address (slot + n) mod 3,
//! `!l<n>` the same in the Litecord dialect, `!t<ms>` time passes (every
//! timeout is handled), `!b` a binary frame, `!o` an oversized one, `!g` a
//! websocket ping, `!p<n>` the next text frame gets n spaces appended (so
//! it can exceed the pre-IDENTIFY size limit).
//!
//! Holds after every step: every message sent is a JSON object with an
//! integer op; closes use LVSP's codes (4000-4002) and nothing follows
//! them; INFOs go out with increasing `s` on a connection (re-delivered
//! ones included). Before its READY, a connection's frames change nothing
//! in the registry (its whole state, not only counts) and have no effect;
//! a frame over [`PRE_AUTH_MAX_MESSAGE`] is refused with 4002 unparsed; a
//! wrong token never gets READY (4001); the right one gets READY (or 4000
//! for a RESUME from a `seq` no longer kept) unless its address is backing
//! off, as a model of the documented backoff says: [`AuthBackoff`]'s
//! defaults, counted per peer address.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use control::connection::{Context, Protocol};
use control::limit::RateLimit;
use control::lvsp::{AuthBackoff, AuthGuard, Config, Connection, Dialect, Incoming, Replay};
use control::registry::Registry;
use control::{Output, PRE_AUTH_MAX_MESSAGE};
use hmac::{Hmac, Mac};
use protocol::gateway::Identify;
use rand::rngs::StdRng;
use rand::SeedableRng;
use sha2::Sha256;

use crate::script::{self, sf, Line};

/// At least `control::lvsp::MIN_SECRET_LEN` characters, as the server
/// requires.
const SECRET: &str = "0123456789abcdef0123456789abcdef-fuzz";

/// One input: a script.
pub fn run(data: &[u8]) {
    let mut server = Server::new();
    for line in script::lines(data) {
        server.step(line);
    }
}

struct Slot {
    conn: Connection,
    peer: IpAddr,
    /// `$0` for this connection.
    vars: Vec<String>,
    closed: Option<u16>,
    ready: bool,
    last_s: u64,
}

/// The harness's model of one address in the guard.
#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
    blocked_until: Option<Instant>,
}

struct Server {
    cx: Context,
    /// Where HELLO nonces come from.
    rng: StdRng,
    backoff: AuthBackoff,
    /// What the guard should know.
    failures: HashMap<IpAddr, Failures>,
    spec: Arc<Config>,
    litecord: Arc<Config>,
    now: Instant,
    slots: Vec<Slot>,
    current: usize,
    /// Spaces to append to the next text frame.
    pad: usize,
}

impl Server {
    fn new() -> Server {
        let now = Instant::now();
        let mut registry = Registry::new(2, StdRng::seed_from_u64(0));
        let token = registry.channel_req(sf("100"), Some(sf("1")), now).token;
        let sid = registry
            .voice_state_create(sf("7"), sf("100"), now)
            .expect("state");
        registry
            .voice_state_create(sf("8"), sf("100"), now)
            .expect("state");
        let rate = RateLimit {
            per_second: 10.0,
            burst: 20.0,
        };
        let identify = Identify {
            server_id: sf("1"),
            user_id: sf("7"),
            session_id: sid,
            token,
            max_dave_protocol_version: None,
            video: true,
            streams: Vec::new(),
        };
        registry
            .identify(1, true, &identify, now, rate)
            .expect("identify");
        registry.drain_effects().for_each(drop);
        let config = |dialect| {
            Arc::new(Config {
                secret: SECRET.to_owned(),
                heartbeat_interval: Duration::from_millis(1000),
                dialect,
                rate,
            })
        };
        let backoff = AuthBackoff::default();
        let mut server = Server {
            cx: Context {
                registry,
                replay: Replay::new(8),
                guard: AuthGuard::new(backoff),
            },
            rng: StdRng::seed_from_u64(1),
            backoff,
            failures: HashMap::new(),
            spec: config(Dialect::Spec),
            litecord: config(Dialect::Litecord),
            now,
            slots: Vec::new(),
            current: 0,
            pad: 0,
        };
        for i in 0..2 {
            let slot = server.open(Dialect::Spec, i);
            server.slots.push(slot);
        }
        server.check_outputs();
        server
    }

    fn open(&mut self, dialect: Dialect, peer: usize) -> Slot {
        let config = match dialect {
            Dialect::Spec => &self.spec,
            Dialect::Litecord => &self.litecord,
        };
        let addr = SocketAddr::from(([198, 51, 100, 1 + peer as u8], 40000));
        let conn = Connection::new(config.clone(), addr, self.now, &mut self.rng);
        let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).expect("any key");
        mac.update(conn.nonce().as_bytes());
        Slot {
            vars: vec![hex::encode(mac.finalize().into_bytes())],
            conn,
            peer: addr.ip(),
            closed: None,
            ready: false,
            last_s: 0,
        }
    }

    fn reopen(&mut self, dialect: Dialect, n: u64) {
        let slot = &mut self.slots[self.current];
        slot.conn.closed(self.now, &mut self.cx);
        let peer = (self.current + (n % 3) as usize) % 3;
        self.slots[self.current] = self.open(dialect, peer);
        self.check_outputs();
    }

    fn step(&mut self, line: Line<'_>) {
        let before = format!("{:?}", self.cx.registry);
        let was_ready = self.slots[self.current].ready;
        let mut from_client = true;
        let mut attempt = None;
        let mut oversized = false;
        match line {
            Line::Text(text) => {
                let now = self.now;
                let admitted = self.admitted(self.slots[self.current].peer);
                let slot = &mut self.slots[self.current];
                let mut text = script::fill(&text, &slot.vars).into_owned();
                text.extend(std::iter::repeat_n(' ', std::mem::take(&mut self.pad)));
                oversized = text.len() > PRE_AUTH_MAX_MESSAGE;
                // The calls under test: decoding, then the shared state.
                if let Some(incoming) = slot.conn.handle_text(now, &text) {
                    attempt = match &incoming {
                        Incoming::Identify(protocol::lvsp::Identify { token })
                        | Incoming::Resume(protocol::lvsp::Resume { token, .. }) => {
                            Some((*token == slot.vars[0], admitted))
                        }
                        _ => None,
                    };
                    slot.conn.handle_incoming(now, incoming, &mut self.cx);
                }
            }
            Line::Directive(b'b', _) => {
                let now = self.now;
                let _ = self.slots[self.current].conn.handle_binary(now, &[0]);
            }
            Line::Directive(b'o', _) => self.slots[self.current].conn.handle_oversized(),
            Line::Directive(b'g', _) => {
                let now = self.now;
                self.slots[self.current].conn.handle_ping(now);
            }
            Line::Directive(letter, n) => {
                from_client = false;
                self.directive(letter, n);
            }
        }
        let was_open = self.slots[self.current].closed.is_none();
        self.check_outputs();
        let effects = self.cx.registry.drain_effects().count();
        let slot = &self.slots[self.current];
        if from_client && !was_ready && !slot.ready {
            let after = format!("{:?}", self.cx.registry);
            assert!(
                before == after,
                "a frame before IDENTIFY changed the registry"
            );
            assert_eq!(effects, 0, "a frame before IDENTIFY had effects");
        }
        if from_client && !was_ready && was_open && oversized {
            assert_eq!(
                slot.closed,
                Some(4002),
                "an oversized frame before IDENTIFY"
            );
        }
        if let Some((right, admitted)) = attempt {
            self.attempted(right, admitted);
        }
    }

    /// Whether the model lets the current slot's peer try a token now.
    fn admitted(&mut self, peer: IpAddr) -> bool {
        let Some(f) = self.failures.get(&peer).copied() else {
            return true;
        };
        if self.now.saturating_duration_since(f.last) >= self.backoff.forget_after {
            self.failures.remove(&peer);
            return true;
        }
        f.blocked_until.is_none_or(|until| self.now >= until)
    }

    /// An IDENTIFY or RESUME with the `right` token or not, `admitted` by
    /// the model: READY exactly when both (a RESUME may still find its
    /// `seq` gone: 4000), 4001 otherwise; the model learns the outcome.
    fn attempted(&mut self, right: bool, admitted: bool) {
        let slot = &self.slots[self.current];
        let peer = slot.peer;
        if right && admitted {
            assert!(
                slot.ready || slot.closed == Some(4000),
                "the right token refused: {:?}",
                slot.closed
            );
            self.failures.remove(&peer);
            return;
        }
        assert!(!slot.ready, "READY for a wrong token or during a backoff");
        assert_eq!(slot.closed, Some(4001), "a refused token");
        if !admitted {
            return; // refused unchecked: not a failure
        }
        let now = self.now;
        let b = self.backoff;
        let f = self.failures.entry(peer).or_insert(Failures {
            count: 0,
            last: now,
            blocked_until: None,
        });
        f.count += 1;
        f.last = now;
        f.blocked_until = f
            .count
            .checked_sub(b.free_failures)
            .filter(|n| *n > 0)
            .map(|n| now + b.base.saturating_mul(1 << (n - 1).min(20)).min(b.max));
    }

    fn directive(&mut self, letter: u8, n: u64) {
        match letter {
            b'c' => self.current = (n % self.slots.len() as u64) as usize,
            b'x' => self.reopen(Dialect::Spec, n),
            b'l' => self.reopen(Dialect::Litecord, n),
            b't' => {
                self.now += Duration::from_millis(n.min(3_600_000));
                for slot in &mut self.slots {
                    slot.conn.handle_timeout(self.now);
                }
                self.cx.registry.handle_timeout(self.now);
            }
            b'p' => self.pad = n.min(65_536) as usize,
            _ => {}
        }
    }

    fn check_outputs(&mut self) {
        for slot in &mut self.slots {
            while let Some(output) = slot.conn.poll_output() {
                assert!(slot.closed.is_none(), "{output:?} after the close");
                match output {
                    Output::Text(text) => {
                        let (op, v) = script::op_of(&text);
                        slot.ready |= op == 3;
                        if op == 6 {
                            let s = v.get("s").and_then(|s| s.as_u64()).expect("INFO s");
                            assert!(s > slot.last_s, "INFO s {s} after {}", slot.last_s);
                            slot.last_s = s;
                        }
                    }
                    Output::Binary(bytes) => panic!("LVSP sent a binary frame: {bytes:?}"),
                    Output::Close { code, .. } => {
                        assert!((4000..=4002).contains(&code), "close code {code}");
                        slot.closed = Some(code);
                    }
                }
            }
            assert_eq!(slot.conn.is_closed(), slot.closed.is_some());
            assert_eq!(
                slot.conn.is_identified(),
                slot.ready && slot.closed.is_none()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn play(script: &[u8]) -> Server {
        let mut server = Server::new();
        for line in script::lines(script) {
            server.step(line);
        }
        server
    }

    /// The seeds reach what they are for, so the fuzzer starts from there.
    #[test]
    fn seeds_identify_resume_and_time_out() {
        let s = play(include_bytes!("../seeds/lvsp/identify-and-infos"));
        assert!(s.slots[0].ready);
        assert_eq!(
            s.slots[0].last_s, 3,
            "two CHANNEL_ASSIGNs, a VOICE_STATE_DONE"
        );
        assert_eq!(s.cx.registry.channel_count(), 1, "100 destroyed, 555 left");

        let s = play(include_bytes!("../seeds/lvsp/resume"));
        assert!(s.slots[0].ready && s.slots[1].ready);
        assert_eq!(s.cx.replay.seq(), 3);

        let s = play(include_bytes!("../seeds/lvsp/litecord"));
        assert!(s.slots[0].ready && s.slots[0].closed.is_none());
        assert_eq!(s.cx.registry.channel_count(), 0);

        let s = play(include_bytes!("../seeds/lvsp/timeouts"));
        assert_eq!(s.slots[0].closed, Some(4001), "a bad token");
        assert!(!s.slots[0].ready);
        assert_eq!(s.cx.registry.channel_count(), 0, "expired without Litecord");

        let s = play(include_bytes!("../seeds/lvsp/backoff"));
        assert_eq!(
            s.slots[0].closed,
            Some(4001),
            "the right token, backing off"
        );
        assert!(s.slots[1].ready, "another address is not held back");
        let peer = s.slots[0].peer;
        assert_eq!(s.failures[&peer].count, 4);

        let s = play(include_bytes!("../seeds/lvsp/oversized"));
        assert_eq!(s.slots[0].closed, Some(4002));
        assert!(s.slots[1].ready, "the same frame after IDENTIFY is fine");
    }

    /// The checks can fail: READY for a wrong token, or a right one
    /// refused outside a backoff, is caught.
    #[test]
    fn the_checks_catch_what_they_are_for() {
        let mut s = play(b"{\"op\":1,\"d\":{\"token\":\"$0\"}}");
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| s.attempted(false, true)));
        assert!(r.is_err(), "READY after a wrong token is caught");
        let mut s = play(b"{\"op\":1,\"d\":{\"token\":\"00\"}}");
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| s.attempted(true, true)));
        assert!(r.is_err(), "the right token refused is caught");
    }
}
