//! The registry of channels, voice states and gateway sessions: control's
//! source of truth.
//!
//! Sans-IO: the protocol state machines call into it, and it queues
//! [`Effect`]s (data-plane commands, messages for gateway connections) that
//! the server layer drains with [`Registry::drain_effects`] and carries out.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::RngCore;
use shared::{Command, Mode, SessionSpec};

/// Identifies one gateway websocket connection.
pub type ConnId = u64;

/// A message the registry wants delivered to one gateway connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Push {
    /// Another member's speaking state (op 5).
    Speaking {
        /// The member's user id.
        user_id: String,
        /// The member's SSRC.
        ssrc: u32,
        /// Speaking flags.
        speaking: u32,
    },
    /// Members that joined (op 11).
    ClientsConnect {
        /// Their user ids.
        user_ids: Vec<String>,
    },
    /// A member that left (op 13).
    ClientDisconnect {
        /// Its user id.
        user_id: String,
    },
    /// Close the connection with this code (e.g. 4014 channel destroyed).
    Close {
        /// Websocket close code.
        code: u16,
        /// Human-readable reason.
        reason: &'static str,
    },
}

/// Something the server layer must do after a registry call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Write a command into a core's ring.
    Dataplane {
        /// The owning core.
        core: u32,
        /// The command.
        command: Command,
    },
    /// Deliver a message to one gateway connection.
    Gateway {
        /// The connection.
        conn: ConnId,
        /// The message.
        push: Push,
    },
}

/// A voice channel assigned over LVSP.
#[derive(Debug, Clone)]
pub struct Channel {
    /// The channel's snowflake.
    pub channel_id: String,
    /// The guild's snowflake (None for DMs).
    pub guild_id: Option<String>,
    /// The token clients present at Identify.
    pub token: String,
    /// Numeric id used on the data plane.
    pub num: u64,
    /// The data-plane core that owns the channel.
    pub core: u32,
    /// Voice states in the channel, by session id.
    pub members: HashSet<String>,
}

/// A user's voice state in a channel, created over LVSP.
#[derive(Debug, Clone)]
struct VoiceState {
    user_id: String,
    user: u64,
    channel_id: String,
    /// Set while a gateway connection is identified for it.
    conn: Option<ConnId>,
    /// The SSRC handed out at Identify.
    ssrc: Option<u32>,
    /// Last speaking flags the client sent (0 = never / silent).
    speaking: u32,
}

/// Why a gateway Identify was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IdentifyError {
    /// No voice state with that session id, user, channel and token.
    #[error("authentication failed")]
    AuthenticationFailed,
    /// An id that should be a snowflake is not one.
    #[error("bad snowflake")]
    BadSnowflake,
}

/// What a successful Identify hands the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identified {
    /// The session's SSRC.
    pub ssrc: u32,
    /// The channel's snowflake.
    pub channel_id: String,
}

/// What an LVSP CHANNEL_REQ returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelAssign {
    /// The channel's snowflake.
    pub channel_id: String,
    /// The guild's snowflake.
    pub guild_id: Option<String>,
    /// The gateway token for the channel.
    pub token: String,
}

/// Why an LVSP request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// VOICE_STATE_CREATE for a channel that was never requested.
    #[error("unknown channel {0}")]
    UnknownChannel(String),
    /// An id that should be a snowflake is not one.
    #[error("bad snowflake {0:?}")]
    BadSnowflake(String),
}

/// The registry.
#[derive(Debug)]
pub struct Registry {
    cores: u32,
    channels: HashMap<String, Channel>,
    states: HashMap<String, VoiceState>,
    /// Live voice state per (channel, user): Litecord re-sends creates.
    by_user: HashMap<(String, String), String>,
    ssrcs: HashSet<u32>,
    next_channel: u64,
    /// Sessions per core, for placement.
    load: Vec<u64>,
    effects: VecDeque<Effect>,
    health: f64,
    /// Identified LVSP connections.
    lvsp_connections: usize,
    /// Since when no LVSP connection is identified (None while one is).
    orphaned_since: Option<Instant>,
    /// How long state survives without Litecord.
    orphan_grace: Duration,
}

/// A 128-bit random value as 32 lowercase hex digits.
fn random_token() -> String {
    let mut b = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut b);
    hex::encode(b)
}

fn snowflake(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

impl Registry {
    /// An empty registry for a data plane of `cores` cores.
    pub fn new(cores: u32) -> Registry {
        assert!(cores > 0, "at least one core");
        Registry {
            cores,
            channels: HashMap::new(),
            states: HashMap::new(),
            by_user: HashMap::new(),
            ssrcs: HashSet::new(),
            next_channel: 1,
            load: vec![0; cores as usize],
            effects: VecDeque::new(),
            health: 1.0,
            lvsp_connections: 0,
            orphaned_since: None,
            orphan_grace: Duration::from_secs(300),
        }
    }

    /// Takes every queued effect, in order.
    pub fn drain_effects(&mut self) -> impl Iterator<Item = Effect> + '_ {
        self.effects.drain(..)
    }

    /// How long channels and voice states survive while no LVSP connection
    /// is identified (default 5 minutes).
    pub fn set_orphan_grace(&mut self, grace: Duration) {
        self.orphan_grace = grace;
    }

    /// An LVSP connection identified or resumed: Litecord reclaims all
    /// state.
    pub fn lvsp_up(&mut self) {
        self.lvsp_connections += 1;
        self.orphaned_since = None;
    }

    /// An identified LVSP connection went away; with none left, the grace
    /// period starts.
    pub fn lvsp_down(&mut self, now: Instant) {
        self.lvsp_connections = self.lvsp_connections.saturating_sub(1);
        if self.lvsp_connections == 0 {
            self.orphaned_since = Some(now);
        }
    }

    /// When [`Registry::handle_timeout`] must next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.orphaned_since
            .filter(|_| !self.channels.is_empty())
            .map(|t| t + self.orphan_grace)
    }

    /// Time passes: state Litecord did not reclaim within the grace period
    /// expires (every channel destroyed, members closed with 4014).
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.poll_timeout().is_some_and(|t| now >= t) {
            let channels: Vec<String> = self.channels.keys().cloned().collect();
            tracing::info!(channels = channels.len(), "LVSP state expired");
            for channel_id in channels {
                self.channel_destroy(&channel_id);
            }
        }
    }

    /// Server health in [0, 1] as last computed from measured load.
    pub fn health(&self) -> f64 {
        self.health
    }

    /// Records a new health figure (clamped to [0, 1]).
    pub fn set_health(&mut self, health: f64) {
        self.health = if health.is_nan() {
            0.0
        } else {
            health.clamp(0.0, 1.0)
        };
    }

    /// Number of channels.
    pub fn channel_count(&self) -> usize {
        self.channels.len()
    }

    /// Number of voice states.
    pub fn voice_state_count(&self) -> usize {
        self.states.len()
    }

    /// Number of identified gateway sessions.
    pub fn session_count(&self) -> usize {
        self.states.values().filter(|s| s.conn.is_some()).count()
    }

    /// A channel by snowflake.
    pub fn channel(&self, channel_id: &str) -> Option<&Channel> {
        self.channels.get(channel_id)
    }

    /// CHANNEL_REQ: creates the channel, or returns the existing assignment.
    pub fn channel_req(
        &mut self,
        channel_id: &str,
        guild_id: Option<&str>,
    ) -> Result<ChannelAssign, RequestError> {
        for id in std::iter::once(channel_id).chain(guild_id) {
            snowflake(id).ok_or_else(|| RequestError::BadSnowflake(id.to_owned()))?;
        }
        if !self.channels.contains_key(channel_id) {
            // Least-loaded core; ties go to the lowest index.
            let core = (0..self.cores)
                .min_by_key(|c| self.load[*c as usize])
                .unwrap_or(0);
            let num = self.next_channel;
            self.next_channel += 1;
            self.channels.insert(
                channel_id.to_owned(),
                Channel {
                    channel_id: channel_id.to_owned(),
                    guild_id: guild_id.map(str::to_owned),
                    token: random_token(),
                    num,
                    core,
                    members: HashSet::new(),
                },
            );
        }
        let ch = &self.channels[channel_id];
        Ok(ChannelAssign {
            channel_id: ch.channel_id.clone(),
            guild_id: ch.guild_id.clone(),
            token: ch.token.clone(),
        })
    }

    /// CHANNEL_DESTROY: closes every member's gateway with 4014 and removes
    /// the channel from its core. Unknown channels are ignored (idempotent).
    pub fn channel_destroy(&mut self, channel_id: &str) {
        let Some(ch) = self.channels.remove(channel_id) else {
            return;
        };
        // The data plane forgets the channel before anyone is told: a member
        // closed with 4014 can no longer send into the call.
        self.effects.push_back(Effect::Dataplane {
            core: ch.core,
            command: Command::RemoveChannel { channel: ch.num },
        });
        for session_id in &ch.members {
            let Some(state) = self.states.remove(session_id) else {
                continue;
            };
            self.by_user.remove(&(state.channel_id, state.user_id));
            if let Some(ssrc) = state.ssrc {
                self.ssrcs.remove(&ssrc);
                self.load[ch.core as usize] = self.load[ch.core as usize].saturating_sub(1);
            }
            if let Some(conn) = state.conn {
                self.effects.push_back(Effect::Gateway {
                    conn,
                    push: Push::Close {
                        code: 4014,
                        reason: "disconnected",
                    },
                });
            }
        }
    }

    /// VOICE_STATE_CREATE: returns the session id (the same one on repeats).
    pub fn voice_state_create(
        &mut self,
        user_id: &str,
        channel_id: &str,
    ) -> Result<String, RequestError> {
        let user =
            snowflake(user_id).ok_or_else(|| RequestError::BadSnowflake(user_id.to_owned()))?;
        let key = (channel_id.to_owned(), user_id.to_owned());
        if let Some(sid) = self.by_user.get(&key) {
            return Ok(sid.clone());
        }
        let ch = self
            .channels
            .get_mut(channel_id)
            .ok_or_else(|| RequestError::UnknownChannel(channel_id.to_owned()))?;
        let session_id = random_token();
        ch.members.insert(session_id.clone());
        self.states.insert(
            session_id.clone(),
            VoiceState {
                user_id: user_id.to_owned(),
                user,
                channel_id: channel_id.to_owned(),
                conn: None,
                ssrc: None,
                speaking: 0,
            },
        );
        self.by_user.insert(key, session_id.clone());
        Ok(session_id)
    }

    /// VOICE_STATE_DESTROY: removes the user's state in that channel,
    /// closing its gateway with 4014. Unknown states are ignored.
    pub fn voice_state_destroy(&mut self, user_id: &str, channel_id: &str) {
        let Some(sid) = self
            .by_user
            .remove(&(channel_id.to_owned(), user_id.to_owned()))
        else {
            return;
        };
        let Some(state) = self.states.remove(&sid) else {
            return;
        };
        if let Some(ch) = self.channels.get_mut(channel_id) {
            ch.members.remove(&sid);
            let core = ch.core;
            self.release(core, &state);
        }
    }

    /// Frees a removed state's SSRC and session, closes its gateway and
    /// tells the other members it left.
    fn release(&mut self, core: u32, state: &VoiceState) {
        if let Some(ssrc) = state.ssrc {
            self.ssrcs.remove(&ssrc);
            self.load[core as usize] = self.load[core as usize].saturating_sub(1);
            self.effects.push_back(Effect::Dataplane {
                core,
                command: Command::RemoveSession { ssrc },
            });
        }
        if let Some(conn) = state.conn {
            self.effects.push_back(Effect::Gateway {
                conn,
                push: Push::Close {
                    code: 4014,
                    reason: "disconnected",
                },
            });
            self.broadcast(&state.channel_id, conn, |_| Push::ClientDisconnect {
                user_id: state.user_id.clone(),
            });
        }
    }

    /// Queues a push for every other identified member of a channel.
    fn broadcast(&mut self, channel_id: &str, except: ConnId, push: impl Fn(&str) -> Push) {
        let Some(ch) = self.channels.get(channel_id) else {
            return;
        };
        let mut targets: BTreeMap<ConnId, ()> = BTreeMap::new();
        for sid in &ch.members {
            if let Some(conn) = self.states.get(sid).and_then(|s| s.conn) {
                if conn != except {
                    targets.insert(conn, ());
                }
            }
        }
        for conn in targets.into_keys() {
            let push = push(channel_id);
            self.effects.push_back(Effect::Gateway { conn, push });
        }
    }

    /// Gateway Identify: checks the credentials, allocates the SSRC on the
    /// channel's core and announces it to that core.
    pub fn identify(
        &mut self,
        conn: ConnId,
        server_id: &str,
        user_id: &str,
        session_id: &str,
        token: &str,
    ) -> Result<Identified, IdentifyError> {
        let state = self
            .states
            .get(session_id)
            .ok_or(IdentifyError::AuthenticationFailed)?;
        let ch = &self.channels[&state.channel_id];
        let expected_server = ch.guild_id.as_deref().unwrap_or(&ch.channel_id);
        let token_ok = constant_time_eq(token.as_bytes(), ch.token.as_bytes());
        if !token_ok || state.user_id != user_id || server_id != expected_server {
            return Err(IdentifyError::AuthenticationFailed);
        }
        let (core, num, channel_id) = (ch.core, ch.num, ch.channel_id.clone());
        let user = state.user;
        let previous = (state.conn, state.ssrc);
        // A second Identify for the same voice state replaces the first
        // connection (the client reconnected without resuming).
        if let (Some(old), _) = previous {
            self.effects.push_back(Effect::Gateway {
                conn: old,
                push: Push::Close {
                    code: 4006,
                    reason: "session replaced",
                },
            });
        }
        let ssrc = match previous.1 {
            Some(ssrc) => ssrc,
            None => {
                let ssrc = self.allocate_ssrc(core);
                self.load[core as usize] += 1;
                ssrc
            }
        };
        let state = self.states.get_mut(session_id).expect("checked above");
        state.conn = Some(conn);
        state.ssrc = Some(ssrc);
        self.effects.push_back(Effect::Dataplane {
            core,
            command: Command::AnnounceSsrc {
                ssrc,
                channel: num,
                user,
            },
        });
        // Tell the others someone joined, and tell the newcomer who is here
        // and which SSRC is whose.
        let user_id = user_id.to_owned();
        self.broadcast(&channel_id, conn, |_| Push::ClientsConnect {
            user_ids: vec![user_id.clone()],
        });
        let mut present = Vec::new();
        let mut speakers = Vec::new();
        for sid in &self.channels[&channel_id].members {
            let s = &self.states[sid];
            if s.conn.is_some() && s.conn != Some(conn) {
                present.push(s.user_id.clone());
                if let (Some(ssrc), true) = (s.ssrc, s.speaking != 0) {
                    speakers.push(Push::Speaking {
                        user_id: s.user_id.clone(),
                        ssrc,
                        speaking: s.speaking,
                    });
                }
            }
        }
        if !present.is_empty() {
            present.sort();
            self.effects.push_back(Effect::Gateway {
                conn,
                push: Push::ClientsConnect { user_ids: present },
            });
        }
        for push in speakers {
            self.effects.push_back(Effect::Gateway { conn, push });
        }
        Ok(Identified { ssrc, channel_id })
    }

    /// A random SSRC, never 0, unique, with `ssrc % cores == core`.
    fn allocate_ssrc(&mut self, core: u32) -> u32 {
        let mut rng = rand::thread_rng();
        loop {
            let r = rng.next_u32();
            let Some(ssrc) = (r - r % self.cores).checked_add(core) else {
                continue; // the top few values of u32 have no room for `core`
            };
            if ssrc != 0 && self.ssrcs.insert(ssrc) {
                return ssrc;
            }
        }
    }

    /// Select Protocol: pushes the keyed session to the channel's core.
    pub fn select_protocol(
        &mut self,
        session_id: &str,
        mode: Mode,
        key: [u8; 32],
        declared: Option<SocketAddr>,
    ) {
        let Some(state) = self.states.get(session_id) else {
            return;
        };
        let (Some(ssrc), Some(ch)) = (state.ssrc, self.channels.get(&state.channel_id)) else {
            return;
        };
        self.effects.push_back(Effect::Dataplane {
            core: ch.core,
            command: Command::UpsertSession(SessionSpec {
                ssrc,
                channel: ch.num,
                user: state.user,
                mode,
                key,
                declared,
            }),
        });
    }

    /// Speaking op 5 from a client: relayed to the other members.
    pub fn speaking(&mut self, session_id: &str, conn: ConnId, speaking: u32) {
        let Some(state) = self.states.get_mut(session_id) else {
            return;
        };
        let Some(ssrc) = state.ssrc else { return };
        state.speaking = speaking;
        let (user_id, channel_id) = (state.user_id.clone(), state.channel_id.clone());
        self.broadcast(&channel_id, conn, |_| Push::Speaking {
            user_id: user_id.clone(),
            ssrc,
            speaking,
        });
    }

    /// The gateway connection went away: its session leaves the data plane
    /// and the others get Client Disconnect. The voice state stays.
    pub fn gateway_closed(&mut self, session_id: &str, conn: ConnId) {
        let Some(state) = self.states.get_mut(session_id) else {
            return;
        };
        if state.conn != Some(conn) {
            return; // replaced by a newer connection
        }
        state.conn = None;
        state.speaking = 0;
        let ssrc = state.ssrc.take();
        let (user_id, channel_id) = (state.user_id.clone(), state.channel_id.clone());
        let core = self.channels[&channel_id].core;
        if let Some(ssrc) = ssrc {
            self.ssrcs.remove(&ssrc);
            self.load[core as usize] = self.load[core as usize].saturating_sub(1);
            self.effects.push_back(Effect::Dataplane {
                core,
                command: Command::RemoveSession { ssrc },
            });
        }
        self.broadcast(&channel_id, conn, |_| Push::ClientDisconnect {
            user_id: user_id.clone(),
        });
    }
}

/// Compares two byte strings without an early exit on the first difference.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn effects(r: &mut Registry) -> Vec<Effect> {
        r.drain_effects().collect()
    }

    #[test]
    fn channel_req_is_idempotent_and_validates() {
        let mut r = Registry::new(2);
        let a = r.channel_req("100", Some("1")).unwrap();
        let b = r.channel_req("100", Some("1")).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.token.len(), 32);
        assert!(matches!(
            r.channel_req("abc", None),
            Err(RequestError::BadSnowflake(_))
        ));
        assert_eq!(r.channel_count(), 1);
    }

    #[test]
    fn identify_checks_everything_and_ssrc_lands_on_owner_core() {
        let mut r = Registry::new(3);
        let ch = r.channel_req("100", Some("1")).unwrap();
        let sid = r.voice_state_create("7", "100").unwrap();
        assert_eq!(r.voice_state_create("7", "100").unwrap(), sid);
        let core = r.channel("100").unwrap().core;
        for (server, user, session, token) in [
            ("1", "7", sid.as_str(), "wrong"),
            ("1", "8", sid.as_str(), ch.token.as_str()),
            ("100", "7", sid.as_str(), ch.token.as_str()),
            ("1", "7", "nope", ch.token.as_str()),
        ] {
            assert_eq!(
                r.identify(1, server, user, session, token),
                Err(IdentifyError::AuthenticationFailed)
            );
        }
        let id = r.identify(1, "1", "7", &sid, &ch.token).unwrap();
        assert_eq!(id.ssrc % 3, core);
        assert_ne!(id.ssrc, 0);
        assert_eq!(
            effects(&mut r),
            vec![Effect::Dataplane {
                core,
                command: Command::AnnounceSsrc {
                    ssrc: id.ssrc,
                    channel: 1,
                    user: 7
                }
            }]
        );
    }

    #[test]
    fn dm_channels_use_channel_id_as_server_id() {
        let mut r = Registry::new(1);
        let ch = r.channel_req("555", None).unwrap();
        let sid = r.voice_state_create("7", "555").unwrap();
        assert!(r.identify(1, "555", "7", &sid, &ch.token).is_ok());
    }

    #[test]
    fn ssrcs_are_unique_per_core() {
        let mut r = Registry::new(2);
        let mut seen = HashSet::new();
        for _ in 0..10_000 {
            let s = r.allocate_ssrc(1);
            assert_eq!(s % 2, 1);
            assert!(seen.insert(s));
        }
    }

    #[test]
    fn members_see_each_other_and_destroy_closes_4014() {
        let mut r = Registry::new(1);
        let ch = r.channel_req("100", Some("1")).unwrap();
        let a = r.voice_state_create("7", "100").unwrap();
        let b = r.voice_state_create("8", "100").unwrap();
        let ia = r.identify(10, "1", "7", &a, &ch.token).unwrap();
        r.speaking(&a, 10, 1);
        effects(&mut r);
        r.identify(11, "1", "8", &b, &ch.token).unwrap();
        let e = effects(&mut r);
        assert!(e.contains(&Effect::Gateway {
            conn: 10,
            push: Push::ClientsConnect {
                user_ids: vec!["8".into()]
            }
        }));
        assert!(e.contains(&Effect::Gateway {
            conn: 11,
            push: Push::Speaking {
                user_id: "7".into(),
                ssrc: ia.ssrc,
                speaking: 1
            }
        }));
        r.channel_destroy("100");
        let e = effects(&mut r);
        assert_eq!(
            e[0],
            Effect::Dataplane {
                core: 0,
                command: Command::RemoveChannel { channel: 1 }
            },
            "the data plane forgets the channel before members are closed"
        );
        for conn in [10, 11] {
            assert!(e.contains(&Effect::Gateway {
                conn,
                push: Push::Close {
                    code: 4014,
                    reason: "disconnected"
                }
            }));
        }
        assert!(e.contains(&Effect::Dataplane {
            core: 0,
            command: Command::RemoveChannel { channel: 1 }
        }));
        assert_eq!(r.voice_state_count(), 0);
        assert_eq!(r.channel_count(), 0);
    }

    #[test]
    fn voice_state_destroy_removes_the_session() {
        let mut r = Registry::new(1);
        let ch = r.channel_req("100", Some("1")).unwrap();
        let a = r.voice_state_create("7", "100").unwrap();
        let id = r.identify(10, "1", "7", &a, &ch.token).unwrap();
        effects(&mut r);
        r.voice_state_destroy("7", "100");
        let e = effects(&mut r);
        assert!(e.contains(&Effect::Dataplane {
            core: 0,
            command: Command::RemoveSession { ssrc: id.ssrc }
        }));
        assert!(r.identify(11, "1", "7", &a, &ch.token).is_err());
        // A move: a new state in the same channel gets a new session id.
        let b = r.voice_state_create("7", "100").unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn constant_time_eq_works() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
