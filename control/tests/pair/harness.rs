//! The pair harness: a server's shared state and connections, each paired
//! with a client library session, moved frame by frame under simulated
//! time.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use control::connection::{Context, Protocol};
use control::dave::mls::ExternalSender;
use control::dave::DaveMode;
use control::gateway;
use control::limit::RateLimit;
use control::lvsp::{self, AuthBackoff, AuthGuard, Dialect, Replay};
use control::registry::{ConnId, Effect, Registry};
use control::Output;
use protocol::gateway::{Identify, MemberSpeaking, ServerMessage};
use protocol::lvsp::{Channel, Reply, Request, VoiceState};
use protocol::Snowflake;
use rand::rngs::StdRng;
use rand::SeedableRng;
use scripts::{Frame, GatewayEvent, GatewaySession, LvspSession, Session};
use serde_json::{json, Value};
use shared::Command;

pub(crate) const SECRET: &str = "pair-secret-pair-secret-pair-secret";
pub(crate) const GUILD: Snowflake = Snowflake(1);
pub(crate) const CHANNEL: Snowflake = Snowflake(100);
/// The clients' wall clock at the start (heartbeat nonces).
pub(crate) const CLOCK_MS: u64 = 1_700_000_000_000;
pub(crate) const HEARTBEAT: Duration = Duration::from_millis(1000);
pub(crate) const RESUME_GRACE: Duration = Duration::from_secs(30);
pub(crate) const LEAVE_GRACE: Duration = Duration::from_secs(5);

/// One websocket: a client session and the server's connection.
pub(crate) struct Link<C, S> {
    pub(crate) client: C,
    pub(crate) server: S,
    pub(crate) open: bool,
    /// What the server sent on this socket, text and closes (`{"close":
    /// code, "reason": ..}`), for tests that read the wire.
    pub(crate) frames: Vec<Value>,
}

impl<C: Session, S: Protocol> Link<C, S> {
    pub(crate) fn new(client: C, server: S) -> Self {
        Link {
            client,
            server,
            open: true,
            frames: Vec::new(),
        }
    }

    /// Hands every queued frame to the other side; true if there was any.
    pub(crate) fn pump(
        &mut self,
        now: Instant,
        cx: &mut Context,
        transcript: &mut Vec<String>,
    ) -> bool {
        let mut busy = false;
        while let Some(text) = self.client.poll_transmit() {
            busy = true;
            if self.open {
                transcript.push(format!("> {text}"));
                self.server_text(now, &text, cx);
            }
        }
        while let Some(out) = self.server.poll_output() {
            busy = true;
            match out {
                Output::Text(text) => {
                    transcript.push(format!("< {text}"));
                    self.frames.push(serde_json::from_str(&text).expect("JSON"));
                    let read = self.client.handle_frame(now, Frame::Text(text));
                    read.expect("the server sends JSON with an op");
                }
                Output::Binary(bytes) => {
                    transcript.push(format!("< binary {}", hex::encode(&bytes)));
                    self.frames.push(json!({"binary": hex::encode(&bytes)}));
                    let read = self.client.handle_frame(now, Frame::Binary(bytes));
                    read.expect("a binary frame the client reads");
                }
                Output::Close { code, reason } => {
                    transcript.push(format!("< close {code}"));
                    self.frames.push(json!({"close": code, "reason": reason}));
                    self.client
                        .handle_frame(now, Frame::Closed(Some(code)))
                        .unwrap();
                    self.gone(now, cx);
                }
            }
        }
        busy
    }

    /// A frame reaches the server, as `drive` in the server feeds it.
    pub(crate) fn server_text(&mut self, now: Instant, text: &str, cx: &mut Context) {
        if let Some(incoming) = self.server.handle_text(now, text) {
            self.server.handle_incoming(now, incoming, cx);
        }
    }

    /// The socket is gone (after a close, or dropped).
    pub(crate) fn gone(&mut self, now: Instant, cx: &mut Context) {
        if std::mem::take(&mut self.open) {
            self.server.closed(now, cx);
        }
    }

    pub(crate) fn deadline(&self) -> Option<Instant> {
        let client = self.client.poll_timeout().filter(|_| self.open);
        let server = self.server.poll_timeout().filter(|_| self.open);
        client.into_iter().chain(server).min()
    }

    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        if self.open {
            self.client.handle_timeout(now);
            self.server.handle_timeout(now);
        }
    }
}

pub(crate) type GatewayLink = Link<GatewaySession, gateway::Connection>;
pub(crate) type LvspLink = Link<LvspSession, lvsp::Connection>;

/// A server's shared state, its connections and their clients.
pub(crate) struct World {
    pub(crate) cx: Context,
    pub(crate) now: Instant,
    pub(crate) rng: StdRng,
    pub(crate) gateway: Arc<gateway::Config>,
    pub(crate) lvsp: Arc<lvsp::Config>,
    pub(crate) gateways: Vec<(ConnId, GatewayLink)>,
    pub(crate) litecord: Vec<LvspLink>,
    /// What the registry told the data plane, in order.
    pub(crate) commands: Vec<Command>,
    /// Every frame both ways, in order.
    pub(crate) transcript: Vec<String>,
}

impl World {
    pub(crate) fn new(seed: u64) -> World {
        let mut registry = Registry::new(2, StdRng::seed_from_u64(seed));
        registry.set_resume(RESUME_GRACE, 16);
        registry.set_leave_grace(LEAVE_GRACE);
        World {
            cx: Context {
                registry,
                replay: Replay::new(16),
                guard: AuthGuard::new(AuthBackoff::default()),
            },
            now: Instant::now(),
            rng: StdRng::seed_from_u64(seed.wrapping_add(1)),
            gateway: Arc::new(gateway::Config {
                heartbeat_interval: HEARTBEAT,
                udp_ip: Ipv4Addr::LOCALHOST,
                udp_port: 5000,
                rate: RateLimit {
                    per_second: 10.0,
                    burst: 20.0,
                },
                modes: shared::Mode::DEFAULT.to_vec(),
                identify_timeout: Duration::from_secs(5),
            }),
            lvsp: Arc::new(lvsp::Config {
                secret: SECRET.into(),
                heartbeat_interval: Duration::from_secs(10),
                dialect: Dialect::Spec,
                rate: RateLimit {
                    per_second: 100.0,
                    burst: 100.0,
                },
            }),
            gateways: Vec::new(),
            litecord: Vec::new(),
            commands: Vec::new(),
            transcript: Vec::new(),
        }
    }

    /// A world whose registry runs DAVE in `mode`, with a fresh external
    /// sender.
    pub(crate) fn with_dave(seed: u64, mode: DaveMode) -> World {
        let mut w = World::new(seed);
        let sender = ExternalSender::generate().expect("an external sender key");
        w.cx.registry.set_dave(mode, Some(Arc::new(sender)));
        w
    }

    /// Moves frames and pushes until nothing is left to move.
    pub(crate) fn run(&mut self) {
        for _ in 0..10_000 {
            let mut busy = false;
            let (now, cx, transcript) = (self.now, &mut self.cx, &mut self.transcript);
            for (_, link) in &mut self.gateways {
                busy |= link.pump(now, cx, transcript);
            }
            for link in &mut self.litecord {
                busy |= link.pump(now, cx, transcript);
            }
            let effects: Vec<Effect> = self.cx.registry.drain_effects().collect();
            for effect in effects {
                busy = true;
                match effect {
                    Effect::Dataplane { command, .. } => self.commands.push(command),
                    Effect::Gateway { conn, push } => {
                        let link = self.gateways.iter_mut().find(|(c, _)| *c == conn);
                        if let Some((_, link)) = link.filter(|(_, l)| l.open) {
                            link.server.handle_push(push);
                        }
                    }
                }
            }
            if !busy {
                return;
            }
        }
        panic!("frames kept flowing");
    }

    /// Lets `d` of simulated time pass, stopping at every deadline on the
    /// way (heartbeats, their timeouts, the registry's grace periods).
    pub(crate) fn advance(&mut self, d: Duration) {
        let until = self.now + d;
        for _ in 0..100_000 {
            let next = self
                .gateways
                .iter()
                .filter_map(|(_, l)| l.deadline())
                .chain(self.litecord.iter().filter_map(Link::deadline))
                .chain(self.cx.registry.poll_timeout())
                .min();
            let Some(next) = next.filter(|t| *t <= until) else {
                self.now = until;
                self.run();
                return;
            };
            self.now = self.now.max(next);
            for (_, link) in &mut self.gateways {
                link.handle_timeout(self.now);
            }
            for link in &mut self.litecord {
                link.handle_timeout(self.now);
            }
            self.cx.registry.handle_timeout(self.now);
            self.run();
        }
        panic!("time stood still");
    }

    /// An LVSP websocket for `client`; returns its index once HELLO
    /// arrived.
    pub(crate) fn lvsp_connect(&mut self, client: LvspSession) -> usize {
        let peer = SocketAddr::from(([192, 0, 2, 1], 40000 + self.litecord.len() as u16));
        let server = lvsp::Connection::new(self.lvsp.clone(), peer, self.now, &mut self.rng);
        self.litecord.push(Link::new(client, server));
        self.run();
        self.litecord.len() - 1
    }

    /// Litecord connects and identifies; returns its link.
    pub(crate) fn litecord(&mut self) -> usize {
        let i = self.lvsp_connect(LvspSession::new());
        let client = &mut self.litecord[i].client;
        client.identify(SECRET).expect("HELLO");
        let interval = client.heartbeat_interval().expect("HELLO");
        client.start_heartbeat(self.now, interval);
        self.run();
        assert!(self.litecord[i].client.ready(), "READY");
        i
    }

    /// Sends `request` over link `lv`; returns what `pick` takes from the
    /// INFO that answers it.
    fn ask<T>(
        &mut self,
        lv: usize,
        request: Request,
        mut pick: impl FnMut(&Reply) -> Option<T>,
    ) -> T {
        self.litecord[lv].client.request(request);
        self.run();
        let answer = self.litecord[lv].client.poll_info(|info| pick(&info.reply));
        answer.expect("open").expect("an answering INFO")
    }

    /// CHANNEL_REQ over link `lv`; returns the channel's token.
    pub(crate) fn channel(&mut self, lv: usize, channel_id: Snowflake) -> String {
        let channel = Channel {
            channel_id,
            guild_id: Some(GUILD),
        };
        self.ask(lv, Request::ChannelReq(channel), |reply| match reply {
            Reply::ChannelAssign(a) if a.channel.channel_id == channel_id => Some(a.token.clone()),
            _ => None,
        })
    }

    /// VOICE_STATE_CREATE in channel 100 over link `lv`; returns the
    /// session id.
    pub(crate) fn voice_state(&mut self, lv: usize, user_id: Snowflake) -> String {
        self.voice_state_in(lv, user_id, CHANNEL)
    }

    /// VOICE_STATE_CREATE in `channel_id` over link `lv`; returns the
    /// session id.
    pub(crate) fn voice_state_in(
        &mut self,
        lv: usize,
        user_id: Snowflake,
        channel_id: Snowflake,
    ) -> String {
        let state = VoiceState {
            user_id,
            channel_id,
            guild_id: Some(GUILD),
        };
        self.ask(lv, Request::VoiceStateCreate(state), |reply| match reply {
            Reply::VoiceStateDone(d) if d.state == state => Some(d.session_id.clone()),
            _ => None,
        })
    }

    /// A gateway websocket at `version` (9: one this server does not
    /// serve); returns its index once Hello (or the close) arrived.
    pub(crate) fn connect(&mut self, version: u8) -> usize {
        let client = GatewaySession::new(version, self.now, CLOCK_MS);
        self.open(client)
    }

    /// A new websocket for the client of `old`, whose socket went away:
    /// same version, `seq_ack`, Ready and Session Description.
    pub(crate) fn reconnect(&mut self, old: usize) -> usize {
        let client = self.gateways[old].1.client.reconnect();
        self.open(client)
    }

    pub(crate) fn open(&mut self, client: GatewaySession) -> usize {
        let version = client.version();
        let conn = self.gateways.len() as ConnId + 1;
        let server = if gateway::VERSIONS.contains(&version) {
            gateway::Connection::new(self.gateway.clone(), conn, version, self.now)
        } else {
            gateway::Connection::unsupported(self.gateway.clone(), conn, self.now)
        };
        self.gateways.push((conn, Link::new(client, server)));
        self.run();
        self.gateways.len() - 1
    }

    pub(crate) fn client(&mut self, i: usize) -> &mut GatewaySession {
        &mut self.gateways[i].1.client
    }

    pub(crate) fn identify(&mut self, i: usize, user_id: Snowflake, session_id: &str, token: &str) {
        self.identify_dave(i, user_id, session_id, token, 0);
    }

    /// Identify with `max_dave_protocol_version` = `max_dave`.
    pub(crate) fn identify_dave(
        &mut self,
        i: usize,
        user_id: Snowflake,
        session_id: &str,
        token: &str,
        max_dave: u16,
    ) {
        self.identify_as(i, identify(user_id, session_id, token, max_dave));
    }

    /// Sends `id` (video streams, say); then everything moves.
    pub(crate) fn identify_as(&mut self, i: usize, id: Identify) {
        self.client(i).identify(id);
        self.run();
    }

    /// A client binary frame (`u8 op ‖ payload`) to the server, as `drive`
    /// feeds it; then everything moves.
    pub(crate) fn send_binary(&mut self, i: usize, bytes: &[u8]) {
        let (now, link) = (self.now, &mut self.gateways[i].1);
        if link.open {
            self.transcript
                .push(format!("> binary {}", hex::encode(bytes)));
            if let Some(incoming) = link.server.handle_binary(now, bytes) {
                link.server.handle_incoming(now, incoming, &mut self.cx);
            }
        }
        self.run();
    }

    /// Text straight to the server, as a client library never would.
    pub(crate) fn send_raw(&mut self, i: usize, text: &str) {
        let (now, link) = (self.now, &mut self.gateways[i].1);
        link.server_text(now, text, &mut self.cx);
        self.run();
    }

    /// What the server sent `i` since the last call, as JSON (a close as
    /// `{"close": code, "reason": ..}`).
    pub(crate) fn frames(&mut self, i: usize) -> Vec<Value> {
        std::mem::take(&mut self.gateways[i].1.frames)
    }

    /// The socket of `i` dies with what the client queued delivered and
    /// the server's answers to it lost on the way.
    pub(crate) fn lose_replies(&mut self, i: usize) {
        let (now, link) = (self.now, &mut self.gateways[i].1);
        while let Some(text) = link.client.poll_transmit() {
            link.server_text(now, &text, &mut self.cx);
        }
        while link.server.poll_output().is_some() {}
        self.drop_socket(i);
    }

    /// Text straight to LVSP link `lv`'s server; what it answered, as JSON.
    pub(crate) fn lvsp_raw(&mut self, lv: usize, text: &str) -> Vec<Value> {
        let (now, link) = (self.now, &mut self.litecord[lv]);
        link.server_text(now, text, &mut self.cx);
        self.run();
        std::mem::take(&mut self.litecord[lv].frames)
    }

    /// Litecord's link `lv` goes away without a close frame.
    pub(crate) fn drop_lvsp(&mut self, lv: usize) {
        let link = &mut self.litecord[lv];
        link.client
            .handle_frame(self.now, Frame::Closed(None))
            .unwrap();
        link.gone(self.now, &mut self.cx);
        self.run();
    }

    /// The socket of `i` dies without a close frame.
    pub(crate) fn drop_socket(&mut self, i: usize) {
        let link = &mut self.gateways[i].1;
        link.client.handle_close(None);
        link.gone(self.now, &mut self.cx);
        self.run();
    }

    /// The client of `i` closes its socket with `code`; the server reads
    /// the close frame, as `drive` hands it to the machine.
    pub(crate) fn close_socket(&mut self, i: usize, code: u16) {
        let link = &mut self.gateways[i].1;
        link.server.handle_close(Some(code));
        link.gone(self.now, &mut self.cx);
        self.run();
    }

    /// The messages `i` received and nobody read yet.
    pub(crate) fn messages(&mut self, i: usize) -> Vec<ServerMessage> {
        std::iter::from_fn(|| self.client(i).poll_event())
            .filter_map(|e| match e {
                GatewayEvent::Message(ServerMessage::HeartbeatAck(_)) => None,
                GatewayEvent::Message(m) => Some(m),
                other => panic!("{other:?}"),
            })
            .collect()
    }

    /// The close code `i` got, if it was closed.
    pub(crate) fn closed(&self, i: usize) -> Option<Option<u16>> {
        self.gateways[i].1.client.closed()
    }
}

/// Litecord, channel 100 and voice states for `users`: the world, the
/// channel's token and the session ids.
pub(crate) fn call(seed: u64, users: &[u64]) -> (World, String, Vec<String>) {
    in_world(World::new(seed), users)
}

/// Litecord, channel 100 and voice states for `users`, DAVE in `mode`.
pub(crate) fn dave_call(seed: u64, users: &[u64], mode: DaveMode) -> (World, String, Vec<String>) {
    in_world(World::with_dave(seed, mode), users)
}

fn in_world(mut w: World, users: &[u64]) -> (World, String, Vec<String>) {
    let lv = w.litecord();
    let token = w.channel(lv, CHANNEL);
    let sessions = users
        .iter()
        .map(|u| w.voice_state(lv, Snowflake(*u)))
        .collect();
    (w, token, sessions)
}

/// A member identified (and heartbeating) at `version`.
pub(crate) fn member(w: &mut World, version: u8, user: u64, session: &str, token: &str) -> usize {
    let i = w.connect(version);
    w.identify(i, Snowflake(user), session, token);
    let now = w.now;
    w.client(i).start_heartbeat(now, HEARTBEAT);
    i
}

pub(crate) fn speaking(user: u64, ssrc: u32, flags: u32) -> ServerMessage {
    ServerMessage::Speaking(MemberSpeaking {
        user_id: Snowflake(user),
        ssrc,
        speaking: flags,
    })
}

/// Op 12: a member's SSRCs (audio only).
pub(crate) fn ssrcs(user: u64, audio_ssrc: u32) -> ServerMessage {
    ServerMessage::MemberSsrcs(protocol::gateway::MemberSsrcs {
        user_id: Snowflake(user),
        audio_ssrc,
        video_ssrc: 0,
        rtx_ssrc: 0,
        streams: Vec::new(),
    })
}

/// Identify for `user_id` on the harness's guild.
pub(crate) fn identify(
    user_id: Snowflake,
    session_id: &str,
    token: &str,
    max_dave: u16,
) -> Identify {
    Identify {
        server_id: GUILD,
        user_id,
        session_id: session_id.into(),
        token: token.into(),
        max_dave_protocol_version: Some(max_dave),
        video: false,
        streams: Vec::new(),
    }
}

/// Identify as raw JSON, for tests that send what a client would not.
pub(crate) fn identify_json(user: &str, session: &str, server: &str, token: &str) -> String {
    json!({"op": 0, "d": {"server_id": server, "user_id": user,
        "session_id": session, "token": token, "max_dave_protocol_version": 0}})
    .to_string()
}

pub(crate) fn resume_json(session: &str, token: &str, seq_ack: i64) -> String {
    json!({"op": 7, "d": {"server_id": "1", "session_id": session,
        "token": token, "seq_ack": seq_ack}})
    .to_string()
}

/// An INFO request as raw JSON.
pub(crate) fn info(kind: u64, data: Value) -> String {
    json!({"op": 6, "d": {"type": kind, "data": data}}).to_string()
}
