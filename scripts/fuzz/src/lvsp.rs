//! The LVSP state machine with a registry that already has channel 100 in
//! guild 1 with users 7 and 8, user 7 in the call over the gateway; the
//! replay buffer keeps 8 INFOs. Two connection slots, spec dialect at
//! first.
//!
//! Script ([`crate::script`]): text frames go to the current connection,
//! with `$0` = the valid IDENTIFY/RESUME token for its HELLO nonce.
//! Directives: `!c<n>` current slot n, `!x` its socket closes and a new
//! connection (spec dialect) opens, `!l` the same in the Litecord dialect,
//! `!t<ms>` time passes (every timeout is handled), `!b` a binary frame,
//! `!o` an oversized one.
//!
//! Holds after every step: every message sent is a JSON object with an
//! integer op; closes use LVSP's codes (4000-4002) and nothing follows
//! them; INFOs go out with increasing `s` on a connection (re-delivered
//! ones included); before its READY a connection changes nothing in the
//! registry (no channel, no voice state, no effect).

use std::sync::Arc;
use std::time::{Duration, Instant};

use control::limit::RateLimit;
use control::lvsp::{Config, Connection, Dialect, Replay};
use control::registry::Registry;
use control::Output;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::script::{self, Line};

const SECRET: &str = "s3cret";

/// One input: a script.
pub fn run(data: &[u8]) {
    let mut server = Server::new();
    for line in script::lines(data) {
        server.step(line);
    }
}

struct Slot {
    conn: Connection,
    /// `$0` for this connection.
    vars: Vec<String>,
    closed: bool,
    ready: bool,
    last_s: u64,
}

struct Server {
    registry: Registry,
    replay: Replay,
    spec: Arc<Config>,
    litecord: Arc<Config>,
    now: Instant,
    slots: Vec<Slot>,
    current: usize,
}

impl Server {
    fn new() -> Server {
        let mut registry = Registry::new(2);
        let token = registry
            .channel_req("100", Some("1"))
            .expect("channel")
            .token;
        let sid = registry.voice_state_create("7", "100").expect("state");
        registry.voice_state_create("8", "100").expect("state");
        registry
            .identify(1, 8, "1", "7", &sid, &token)
            .expect("identify");
        registry.drain_effects().for_each(drop);
        let config = |dialect| {
            Arc::new(Config {
                secret: SECRET.to_owned(),
                heartbeat_interval: Duration::from_millis(1000),
                dialect,
                rate: RateLimit {
                    per_second: 10.0,
                    burst: 20.0,
                },
            })
        };
        let mut server = Server {
            registry,
            replay: Replay::new(8),
            spec: config(Dialect::Spec),
            litecord: config(Dialect::Litecord),
            now: Instant::now(),
            slots: Vec::new(),
            current: 0,
        };
        for _ in 0..2 {
            let slot = server.open(Dialect::Spec);
            server.slots.push(slot);
        }
        server.check_outputs();
        server
    }

    fn open(&self, dialect: Dialect) -> Slot {
        let config = match dialect {
            Dialect::Spec => &self.spec,
            Dialect::Litecord => &self.litecord,
        };
        let conn = Connection::new(config.clone(), self.now);
        let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).expect("any key");
        mac.update(conn.nonce().as_bytes());
        Slot {
            vars: vec![hex::encode(mac.finalize().into_bytes())],
            conn,
            closed: false,
            ready: false,
            last_s: 0,
        }
    }

    fn reopen(&mut self, dialect: Dialect) {
        let slot = &mut self.slots[self.current];
        slot.conn.closed(self.now, &mut self.registry);
        self.slots[self.current] = self.open(dialect);
        self.check_outputs();
    }

    fn step(&mut self, line: Line<'_>) {
        let counts = (
            self.registry.channel_count(),
            self.registry.voice_state_count(),
        );
        let now = self.now;
        let slot = &mut self.slots[self.current];
        let was_ready = slot.ready;
        let mut from_client = true;
        match line {
            Line::Text(text) => {
                let text = script::fill(&text, &slot.vars);
                // The call under test.
                slot.conn
                    .handle_text(now, &text, &mut self.registry, &mut self.replay);
            }
            Line::Directive(b'b', _) => slot.conn.handle_binary(),
            Line::Directive(b'o', _) => slot.conn.handle_oversized(),
            Line::Directive(letter, n) => {
                from_client = false;
                self.directive(letter, n);
            }
        }
        self.check_outputs();
        let effects = self.registry.drain_effects().count();
        if from_client && !was_ready && !self.slots[self.current].ready {
            let after = (
                self.registry.channel_count(),
                self.registry.voice_state_count(),
            );
            assert_eq!(
                counts, after,
                "a frame before IDENTIFY changed the registry"
            );
            assert_eq!(effects, 0, "a frame before IDENTIFY had effects");
        }
    }

    fn directive(&mut self, letter: u8, n: u64) {
        match letter {
            b'c' => self.current = (n % self.slots.len() as u64) as usize,
            b'x' => self.reopen(Dialect::Spec),
            b'l' => self.reopen(Dialect::Litecord),
            b't' => {
                self.now += Duration::from_millis(n.min(3_600_000));
                for slot in &mut self.slots {
                    slot.conn.handle_timeout(self.now);
                }
                self.registry.handle_timeout(self.now);
            }
            _ => {}
        }
    }

    fn check_outputs(&mut self) {
        for slot in &mut self.slots {
            while let Some(output) = slot.conn.poll_output() {
                assert!(!slot.closed, "{output:?} after the close");
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
                    Output::Close { code, .. } => {
                        assert!((4000..=4002).contains(&code), "close code {code}");
                        slot.closed = true;
                    }
                }
            }
            assert_eq!(slot.conn.is_closed(), slot.closed);
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
        assert_eq!(s.registry.channel_count(), 1, "100 destroyed, 555 left");

        let s = play(include_bytes!("../seeds/lvsp/resume"));
        assert!(s.slots[0].ready && s.slots[1].ready);
        assert_eq!(s.replay.seq(), 3);

        let s = play(include_bytes!("../seeds/lvsp/litecord"));
        assert!(s.slots[0].ready && !s.slots[0].closed);
        assert_eq!(s.registry.channel_count(), 0);

        let s = play(include_bytes!("../seeds/lvsp/timeouts"));
        assert!(
            s.slots[0].closed && !s.slots[0].ready,
            "4001 on a bad token"
        );
        assert_eq!(s.registry.channel_count(), 0, "expired without Litecord");
    }
}
