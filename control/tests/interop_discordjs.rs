//! Interoperability with a real third-party client: @discordjs/voice (the
//! version pinned in `control/tests/interop/package-lock.json`) joins a call
//! through its public `joinVoiceChannel` API, fed by a custom adapter with
//! the session and token this test obtained over LVSP. It sends Opus frames
//! and receives the other member's frames through `VoiceReceiver`; the other
//! member is this project's own client. Both directions are compared byte
//! for byte. Its `connection.destroy()` at the end must be a leave the
//! other member sees at once; a second test has it lose its UDP socket, so
//! that it resumes on a new websocket after closing the old one with 1000.
//!
//! Needs Node.js and npm; the first run installs the pinned packages with
//! `npm ci --prefix control/tests/interop` (CI's `.ci/run` does it too).
//! Without node the test fails and says so.

#[path = "support/interop.rs"]
mod interop;
mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use interop::{
    check_node, hex_frames, litecord, opus_frame, Script, CHANNEL, DJS_USER, FRAMES, GUILD,
    RUST_USER, SILENCE_FRAME,
};
use scripts::gateway::ServerMessage;
use scripts::{GatewayEvent, HeartbeatTask, LvspClient, Mode, VoiceClient};
use serde_json::json;
use support::ServerProcess;

/// `AudioResource.silencePaddingFrames` (default 5; the script reports the
/// value it used and the test checks it).
const SILENCE_PADDING: usize = 5;
/// How many silence frames actually go on the wire: one fewer. The audio
/// cycle (`audioCycleStep`) dispatches the frame prepared in the previous
/// cycle only if the player is still playable, and the resource stops being
/// readable as soon as the last padding frame was prepared, so that last one
/// is never sent. Deterministic in the pinned version.
const SILENCE_SENT: usize = SILENCE_PADDING - 1;

/// The default offer: discord.js takes AES-GCM, the first mode it supports;
/// this project's client uses AES-GCM too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discordjs_voice_sends_and_receives_through_the_server() {
    interop(&[], "aead_aes256_gcm_rtpsize", Mode::Aes256GcmRtpSize).await;
}

/// Only XChaCha20 and the legacy secretbox offered: discord.js must take
/// XChaCha20-Poly1305 while this project's client speaks plain
/// xsalsa20_poly1305, so the server converts between the two.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discordjs_voice_in_xchacha_beside_a_legacy_client() {
    interop(
        &[
            "--modes",
            "aead_xchacha20_poly1305_rtpsize,xsalsa20_poly1305",
        ],
        "aead_xchacha20_poly1305_rtpsize",
        Mode::XSalsa20Poly1305,
    )
    .await;
}

/// Litecord's link (heartbeating), the channel's token, discord.js's
/// session id, and this project's client in the call.
struct Setup {
    _lvsp: (LvspClient, HeartbeatTask),
    token: String,
    djs_session: String,
    rust: VoiceClient,
}

/// Litecord's side (the channel and both voice states), then this
/// project's client joins first and announces its SSRC (op 5): the server
/// must repeat that to discord.js when it joins later, or discord.js cannot
/// map the SSRC to the user it subscribes to.
async fn setup(server: &ServerProcess, rust_mode: Mode) -> Setup {
    let (mut lvsp, _) = LvspClient::connect(&server.lvsp_url, &server.secret)
        .await
        .expect("LVSP identify");
    let heartbeat = lvsp.spawn_heartbeat(lvsp.heartbeat_interval());
    let assign = lvsp
        .channel_req(CHANNEL, Some(GUILD))
        .await
        .expect("CHANNEL_ASSIGN");
    let rust_state = lvsp
        .voice_state_create(RUST_USER, CHANNEL, Some(GUILD))
        .await
        .expect("VOICE_STATE_DONE (rust)");
    let djs_state = lvsp
        .voice_state_create(DJS_USER, CHANNEL, Some(GUILD))
        .await
        .expect("VOICE_STATE_DONE (discord.js)");
    let rust = VoiceClient::join(
        &server.gateway_url,
        8,
        GUILD,
        RUST_USER,
        &rust_state.session_id,
        &assign.token,
        rust_mode,
    )
    .await
    .expect("rust client joins");
    rust.gateway.speaking(1).await.expect("speaking");
    Setup {
        _lvsp: (lvsp, heartbeat),
        token: assign.token,
        djs_session: djs_state.session_id,
        rust,
    }
}

/// The server of [`interop::start`], once node is there.
fn start(extra: &[&str]) -> (ServerProcess, PathBuf) {
    check_node();
    interop::start(extra)
}

async fn interop(extra: &[&str], djs_mode: &str, rust_mode: Mode) {
    let (server, cert) = start(extra);
    tokio::time::timeout(
        Duration::from_secs(90),
        call(&server, &cert, djs_mode, rust_mode),
    )
    .await
    .expect("the call finished in time");
    let status = server.stop();
    assert!(status.success(), "control exited with {status}");
}

/// discord.js loses its UDP socket: it resumes on a new websocket and
/// closes the old one with 1000, which the server takes for a leave, and
/// the Resume within the leave grace brings it back with its SSRC; the
/// other member is told it left and is back (or, if the Resume came first,
/// nothing at all).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discordjs_voice_resumes_after_losing_udp() {
    let (server, cert) = start(&[]);
    tokio::time::timeout(Duration::from_secs(60), udp_loss(&server, &cert))
        .await
        .expect("done in time");
    let status = server.stop();
    assert!(status.success(), "control exited with {status}");
}

async fn udp_loss(server: &ServerProcess, cert: &Path) {
    let Setup {
        _lvsp,
        token,
        djs_session,
        mut rust,
    } = setup(server, Mode::Aes256GcmRtpSize).await;
    let params = json!({
        "endpoint": server.gateway_url.strip_prefix("wss://").unwrap().trim_end_matches('/'),
        "guild_id": GUILD,
        "channel_id": CHANNEL,
        "user_id": DJS_USER,
        "session_id": djs_session,
        "token": token,
        "peer_user_id": RUST_USER,
        "scenario": "udp_loss",
        "timeout_ms": 30_000,
    });
    let mut node = Script::node(cert, &params);
    let ready = match node.event("ready", Duration::from_secs(20)).await {
        Ok(v) => v,
        Err(e) => {
            node.failed(format!("discord.js never got ready: {e}"))
                .await
        }
    };
    let resumed = match node.event("resumed", Duration::from_secs(15)).await {
        Ok(v) => v,
        Err(e) => node.failed(format!("discord.js did not resume: {e}")).await,
    };
    assert_eq!(
        resumed["ssrc"], ready["ssrc"],
        "the same SSRC after the resume"
    );
    if let Err(e) = node.exited(Duration::from_secs(10)).await {
        node.failed(format!("node after the resume: {e}")).await;
    }
    // What the other member was told about discord.js, in order, through
    // its final leave (destroy(): 1000 after the resume).
    let mut told = Vec::new();
    let quiet = Instant::now() + Duration::from_millis(500);
    while let Ok(event) = rust
        .gateway
        .next_event_timeout(quiet.saturating_duration_since(Instant::now()))
        .await
    {
        match event {
            GatewayEvent::Message(ServerMessage::ClientsConnect(c))
                if c.user_ids.iter().any(|u| u.to_string() == DJS_USER) =>
            {
                told.push(11)
            }
            GatewayEvent::Message(ServerMessage::ClientDisconnect(c))
                if c.user_id.to_string() == DJS_USER =>
            {
                told.push(13)
            }
            _ => {}
        }
    }
    eprintln!("discord.js after losing UDP; the other member was told {told:?}");
    // Joined (11), then either left and back (13, 11) or nothing, then the
    // final leave (13).
    assert!(
        told == [11, 13] || told == [11, 13, 11, 13],
        "the other member was told {told:?}"
    );
}

async fn call(server: &ServerProcess, cert: &Path, djs_mode: &str, rust_mode: Mode) {
    let Setup {
        _lvsp,
        token,
        djs_session,
        mut rust,
    } = setup(server, rust_mode).await;

    let rust_frames: Vec<Vec<u8>> = (0..FRAMES).map(|n| opus_frame(0x52, n)).collect();
    let djs_frames: Vec<Vec<u8>> = (0..FRAMES).map(|n| opus_frame(0x44, n)).collect();
    let endpoint = server
        .gateway_url
        .strip_prefix("wss://")
        .expect("wss gateway")
        .trim_end_matches('/');
    let params = json!({
        "endpoint": endpoint,
        "guild_id": GUILD,
        "channel_id": CHANNEL,
        "user_id": DJS_USER,
        "session_id": djs_session,
        "token": token,
        "frames": hex_frames(&djs_frames),
        "peer_user_id": RUST_USER,
        "silence_ms": 1000,
        "timeout_ms": 30_000,
    });
    let mut node = Script::node(cert, &params);

    let ready = match node.event("ready", Duration::from_secs(20)).await {
        Ok(v) => v,
        Err(e) => {
            node.failed(format!("discord.js never got ready: {e}"))
                .await
        }
    };
    // discord.js takes the first offered mode it supports.
    assert_eq!(ready["mode"], djs_mode, "{ready}");
    assert_eq!(
        ready["peer_ssrc"],
        rust.ssrc(),
        "discord.js mapped {RUST_USER} to the wrong SSRC: {ready}"
    );
    let djs_ssrc = ready["ssrc"].as_u64().expect("discord.js's ssrc") as u32;

    // Both directions at once: our frames every 20 ms while discord.js
    // plays its own; collect what it sends until its frames and the
    // trailing silence padding arrived.
    let expected_from_djs: Vec<Vec<u8>> = djs_frames
        .iter()
        .cloned()
        .chain(std::iter::repeat_n(SILENCE_FRAME.to_vec(), SILENCE_SENT))
        .collect();
    let from_djs =
        match interop::exchange(&mut rust, &rust_frames, djs_ssrc, expected_from_djs.len()).await {
            Ok(got) => got,
            Err(e) => node.failed(format!("with discord.js: {e}")).await,
        };

    let result = match node.event("result", Duration::from_secs(15)).await {
        Ok(v) => v,
        Err(e) => node.failed(format!("discord.js gave no result: {e}")).await,
    };
    // Right after its result discord.js calls `connection.destroy()`,
    // which closes its websocket with 1000: a leave the others see at
    // once, not after the resume grace.
    let destroyed = Instant::now();
    let (left, mut events) = match interop::left(&mut rust, DJS_USER, destroyed).await {
        Ok(left) => left,
        Err(e) => node.failed(format!("after its leave: {e}")).await,
    };
    eprintln!("discord.js destroy() → op 13 at the other member: {left:?}");
    assert!(left < Duration::from_secs(1), "the leave took {left:?}");
    if let Err(e) = node.exited(Duration::from_secs(10)).await {
        node.failed(format!("node after its result: {e}")).await;
    }
    let stderr = node.stderr().await;
    eprintln!("discord.js result: {result}\n{stderr}");

    // discord.js → server → us: its frames, in order, then exactly the
    // silence padding it puts on the wire when a resource ends.
    assert_eq!(result["silence_padding_frames"], SILENCE_PADDING);
    assert_eq!(result["dave_protocol_version"], 0, "{result}");
    assert_eq!(result["mode"], djs_mode, "{result}");
    assert!(
        result["ws_ping"].is_number(),
        "discord.js saw no heartbeat ACK: {result}"
    );
    let payloads: Vec<Vec<u8>> = from_djs.iter().map(|p| p.payload.clone()).collect();
    assert_eq!(
        payloads.iter().map(hex::encode).collect::<Vec<_>>(),
        hex_frames(&expected_from_djs),
        "what we received from discord.js"
    );
    for pair in from_djs.windows(2) {
        assert_eq!(pair[1].seq, pair[0].seq.wrapping_add(1), "RTP sequence");
        assert_eq!(
            pair[1].timestamp,
            pair[0].timestamp.wrapping_add(960),
            "RTP timestamp"
        );
    }

    // Us → server → discord.js: exactly our frames, byte for byte.
    let received: Vec<String> = result["received"]
        .as_array()
        .expect("received frames")
        .iter()
        .map(|v| v.as_str().expect("hex").to_owned())
        .collect();
    assert_eq!(
        received,
        hex_frames(&rust_frames),
        "what discord.js received"
    );

    // The gateway told us who discord.js is: Clients Connect with its user
    // id, and its Speaking (op 5) with the SSRC its packets carry.
    let mut connected = false;
    let mut speaking = Vec::new();
    while let Ok(event) = rust
        .gateway
        .next_event_timeout(Duration::from_millis(200))
        .await
    {
        events.push(event);
    }
    for event in events {
        match event {
            GatewayEvent::Message(ServerMessage::ClientsConnect(c)) => {
                connected |= c.user_ids.iter().any(|u| u.to_string() == DJS_USER)
            }
            GatewayEvent::Message(ServerMessage::Speaking(s)) => speaking.push(s),
            _ => {}
        }
    }
    assert!(connected, "no Clients Connect (op 11) for {DJS_USER}");
    assert!(
        speaking.iter().any(|s| s.user_id.to_string() == DJS_USER
            && s.ssrc == djs_ssrc
            && s.speaking & 1 == 1),
        "no Speaking (op 5) from {DJS_USER} with SSRC {djs_ssrc}: {speaking:?}"
    );
}

/// The second @discordjs/voice member.
const DJS_USER_B: &str = "80351110224678914";

/// DAVE: two @discordjs/voice members (DAVE on by default in 0.19.2, through
/// @snazzah/davey) in a call on a server with `--dave on`: the server is
/// their MLS delivery service and external sender, they form the group,
/// negotiate protocol version 1 and send each other audio that their own
/// libraries encrypt and decrypt end to end, byte for byte. A third member
/// (this project's client) says it supports DAVE but does no MLS: it holds
/// the transport keys, as the server does, and what it receives from the
/// two is not their Opus but DAVE frames (ending in the 0xFAFA marker).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discordjs_voice_calls_are_end_to_end_encrypted() {
    let (server, cert) = start(&["--dave", "on"]);
    tokio::time::timeout(Duration::from_secs(90), dave_call(&server, &cert))
        .await
        .expect("the call finished in time");
    let status = server.stop();
    assert!(status.success(), "control exited with {status}");
}

async fn dave_call(server: &ServerProcess, cert: &Path) {
    let litecord = litecord(server, &[RUST_USER, DJS_USER, DJS_USER_B]).await;
    let (assign_token, sessions) = (&litecord.token, &litecord.sessions);
    // The eavesdropper: DAVE-capable on paper, in the call first.
    let ids = [
        GUILD,
        RUST_USER,
        sessions[RUST_USER].as_str(),
        assign_token.as_str(),
    ];
    let mut eavesdropper =
        VoiceClient::join_dave(&server.gateway_url, 8, ids, Mode::Aes256GcmRtpSize, 1)
            .await
            .expect("the eavesdropper joins");
    assert_eq!(
        eavesdropper.session.dave_protocol_version, 1,
        "the call runs DAVE"
    );

    let endpoint = server
        .gateway_url
        .strip_prefix("wss://")
        .expect("wss gateway")
        .trim_end_matches('/');
    let frames = |tag: u8| -> Vec<Vec<u8>> { (0..FRAMES).map(|n| opus_frame(tag, n)).collect() };
    let (frames_a, frames_b) = (frames(0x41), frames(0x42));
    let params = |user: &str, session: &str, peer: &str, frames: &[Vec<u8>]| {
        json!({
            "endpoint": endpoint,
            "guild_id": GUILD,
            "channel_id": CHANNEL,
            "user_id": user,
            "session_id": session,
            "token": assign_token,
            "frames": hex_frames(frames),
            "peer_user_id": peer,
            "announce": true,
            "dave": true,
            "silence_ms": 1500,
            "timeout_ms": 45_000,
        })
    };
    let mut a = Script::node(
        cert,
        &params(DJS_USER, &sessions[DJS_USER], DJS_USER_B, &frames_a),
    );
    let mut b = Script::node(
        cert,
        &params(DJS_USER_B, &sessions[DJS_USER_B], DJS_USER, &frames_b),
    );
    // What the eavesdropper receives meanwhile.
    let listening = tokio::spawn(async move {
        let mut got = Vec::new();
        while let Ok(p) = eavesdropper.udp.recv_timeout(Duration::from_secs(4)).await {
            got.push(p);
        }
        (eavesdropper, got)
    });
    for (node, who) in [(&mut a, "A"), (&mut b, "B")] {
        if let Err(e) = node.event("ready", Duration::from_secs(30)).await {
            let node = std::mem::replace(node, Script::node(cert, &json!(null)));
            node.failed(format!("discord.js {who} never got DAVE-ready: {e}"))
                .await;
        }
    }
    let mut results = Vec::new();
    for (node, who) in [(a, "A"), (b, "B")] {
        let mut node = node;
        let result = match node.event("result", Duration::from_secs(30)).await {
            Ok(v) => v,
            Err(e) => {
                node.failed(format!("discord.js {who} gave no result: {e}"))
                    .await
            }
        };
        let stderr = node.stderr().await;
        eprintln!("discord.js {who}: {result}\n{stderr}");
        results.push(result);
    }
    // Each decrypted the other's frames, byte for byte (then the silence
    // frames that discord.js sends in the clear after a resource ends).
    for (result, sent_by_peer) in [(&results[0], &frames_b), (&results[1], &frames_a)] {
        assert_eq!(result["dave_protocol_version"], 1, "{result}");
        let received: Vec<String> = result["received"]
            .as_array()
            .expect("received frames")
            .iter()
            .map(|v| v.as_str().expect("hex").to_owned())
            .collect();
        assert!(received.len() >= FRAMES, "{result}");
        assert_eq!(received[..FRAMES], hex_frames(sent_by_peer), "{result}");
        assert!(
            received[FRAMES..]
                .iter()
                .all(|f| *f == hex::encode(SILENCE_FRAME)),
            "{result}"
        );
    }
    // The transport payloads the server forwarded were DAVE frames, not
    // the Opus the two encoded.
    let (_eavesdropper, got) = listening.await.expect("the eavesdropper");
    let plain: std::collections::HashSet<Vec<u8>> =
        frames_a.iter().chain(&frames_b).cloned().collect();
    let media: Vec<&scripts::ReceivedPacket> = got
        .iter()
        .filter(|p| p.payload.as_slice() != SILENCE_FRAME)
        .collect();
    assert!(
        media.len() >= 2 * FRAMES,
        "the eavesdropper got {} packets",
        media.len()
    );
    for p in &media {
        assert!(
            !plain.contains(&p.payload),
            "plain Opus reached a non-member"
        );
        assert!(
            p.payload.ends_with(&[0xFA, 0xFA]),
            "not a DAVE frame: {:?}",
            p.payload
        );
    }
    eprintln!(
        "DAVE: {} end-to-end encrypted frames seen by a member outside the MLS group, none readable",
        media.len()
    );
    assert_eq!(server.metric("voice_dave_calls"), 1.0);
}

/// The third @discordjs/voice member.
const DJS_USER_C: &str = "80351110224678915";

/// A discord.js member of the "session" scenario, by name.
struct Member {
    name: &'static str,
    user: &'static str,
    node: Script,
}

impl Member {
    async fn join(
        server: &ServerProcess,
        cert: &Path,
        token: &str,
        (name, user, session): (&'static str, &'static str, &str),
        others: &[&str],
    ) -> Member {
        let endpoint = server
            .gateway_url
            .strip_prefix("wss://")
            .unwrap()
            .trim_end_matches('/');
        let params = json!({
            "endpoint": endpoint,
            "guild_id": GUILD,
            "channel_id": CHANNEL,
            "user_id": user,
            "session_id": session,
            "token": token,
            "peer_user_ids": others,
            "announce": true,
            "scenario": "session",
            "timeout_ms": 80_000,
        });
        let mut node = Script::node(cert, &params);
        if let Err(e) = node.event("ready", Duration::from_secs(20)).await {
            node.failed(format!("discord.js {name} never got ready: {e}"))
                .await;
        }
        Member { name, user, node }
    }

    /// Waits until its DAVE session runs `version` at an epoch of at least
    /// `min_epoch`; returns the epoch.
    async fn dave(&mut self, version: u16, min_epoch: u64) -> u64 {
        let started = Instant::now();
        loop {
            let command = json!({"cmd": "dave", "version": version, "timeout_ms": 15_000});
            let state = self
                .node
                .ask(command, "dave", Duration::from_secs(20))
                .await;
            let state = state.unwrap_or_else(|e| panic!("{}: {e}", self.name));
            let epoch: u64 = state["epoch"]
                .as_str()
                .and_then(|e| e.parse().ok())
                .unwrap_or(0);
            if version == 0 || epoch >= min_epoch {
                return epoch;
            }
            assert!(
                started.elapsed() < Duration::from_secs(15),
                "{}: {state}",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn play(&mut self, frames: &[Vec<u8>]) {
        let command = json!({"cmd": "play", "frames": hex_frames(frames)});
        let played = self
            .node
            .ask(command, "played", Duration::from_secs(20))
            .await;
        played.unwrap_or_else(|e| panic!("{} plays: {e}", self.name));
    }

    /// What it received from `from` since the last collect (waiting for
    /// `count` frames at most 5 s).
    async fn collect(&mut self, from: &str, count: usize) -> Vec<String> {
        let command =
            json!({"cmd": "collect", "user_id": from, "count": count, "timeout_ms": 5000});
        let got = self
            .node
            .ask(command, "collected", Duration::from_secs(10))
            .await;
        let got = got.unwrap_or_else(|e| panic!("{} collects: {e}", self.name));
        // Without the silence frames that end each burst: they trail in at
        // their own pace.
        let silence = hex::encode(SILENCE_FRAME);
        got["frames"]
            .as_array()
            .expect("frames")
            .iter()
            .map(|f| f.as_str().expect("hex").to_owned())
            .filter(|f| *f != silence)
            .collect()
    }

    async fn leave(mut self) {
        let _ = self
            .node
            .ask(json!({"cmd": "leave"}), "never", Duration::from_millis(300))
            .await;
        let _ = self.node.exited(Duration::from_secs(5)).await;
    }
}

/// `talker` plays a burst tagged `tag`; every listener receives exactly its
/// frames (decrypted by its own library when DAVE is on), then the silence
/// frames discord.js ends a resource with.
async fn burst(talker: &mut Member, listeners: &mut [&mut Member], tag: u8) {
    let frames: Vec<Vec<u8>> = (0..10).map(|n| opus_frame(tag, n)).collect();
    talker.play(&frames).await;
    for listener in listeners.iter_mut() {
        let got = listener.collect(talker.user, frames.len()).await;
        let (who, from) = (listener.name, talker.name);
        assert_eq!(got, hex_frames(&frames), "{who} from {from}");
    }
}

/// DAVE's transitions with real clients: two @discordjs/voice members found
/// the group; a third joins (a new epoch: an Add committed by a member, a
/// welcome for the joiner) and leaves (a removal, another epoch); a member
/// without DAVE (this project's client) joins, which downgrades the call to
/// protocol version 0 (op 21/22), and leaves, which upgrades it again (op 24,
/// a new group). Audio flows, byte for byte, after every step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discordjs_voice_dave_epochs_and_transitions() {
    let (server, cert) = start(&["--dave", "on"]);
    tokio::time::timeout(Duration::from_secs(150), dave_transitions(&server, &cert))
        .await
        .expect("done in time");
    let status = server.stop();
    assert!(status.success(), "control exited with {status}");
}

async fn dave_transitions(server: &ServerProcess, cert: &Path) {
    let litecord = litecord(server, &[DJS_USER, DJS_USER_B, DJS_USER_C, RUST_USER]).await;
    let (token, sessions) = (&litecord.token, &litecord.sessions);
    let everyone = [DJS_USER, DJS_USER_B, DJS_USER_C, RUST_USER];
    let others =
        |me: &str| -> Vec<&str> { everyone.iter().copied().filter(|u| *u != me).collect() };
    let mut a = Member::join(
        server,
        cert,
        token,
        ("A", DJS_USER, &sessions[DJS_USER]),
        &others(DJS_USER),
    )
    .await;
    let mut b = Member::join(
        server,
        cert,
        token,
        ("B", DJS_USER_B, &sessions[DJS_USER_B]),
        &others(DJS_USER_B),
    )
    .await;
    let founded = a.dave(1, 1).await;
    b.dave(1, founded).await;
    burst(&mut a, &mut [&mut b], 0x10).await;
    burst(&mut b, &mut [&mut a], 0x11).await;
    eprintln!("DAVE: A and B founded the group, epoch {founded}");

    // C joins: a new epoch with three members.
    let mut c = Member::join(
        server,
        cert,
        token,
        ("C", DJS_USER_C, &sessions[DJS_USER_C]),
        &others(DJS_USER_C),
    )
    .await;
    let joined = c.dave(1, founded + 1).await;
    a.dave(1, joined).await;
    b.dave(1, joined).await;
    burst(&mut c, &mut [&mut a, &mut b], 0x20).await;
    burst(&mut a, &mut [&mut b, &mut c], 0x21).await;
    eprintln!("DAVE: C joined, epoch {joined}");

    // C leaves: removed, another epoch.
    c.leave().await;
    let removed = a.dave(1, joined + 1).await;
    b.dave(1, removed).await;
    burst(&mut b, &mut [&mut a], 0x30).await;
    eprintln!("DAVE: C left, epoch {removed}");

    // A member without DAVE: the call goes down to version 0 and on.
    let ids = [
        GUILD,
        RUST_USER,
        sessions[RUST_USER].as_str(),
        token.as_str(),
    ];
    let mut plain = VoiceClient::join(
        &server.gateway_url,
        8,
        ids[0],
        ids[1],
        ids[2],
        ids[3],
        Mode::Aes256GcmRtpSize,
    )
    .await
    .expect("a member without DAVE joins");
    assert_eq!(plain.session.dave_protocol_version, 0);
    plain.gateway.speaking(1).await.expect("speaking");
    a.dave(0, 0).await;
    b.dave(0, 0).await;
    burst(&mut a, &mut [&mut b], 0x40).await;
    let frames: Vec<Vec<u8>> = (0..10).map(|n| opus_frame(0x41, n)).collect();
    for f in &frames {
        plain.udp.send_opus(f).await.expect("send");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for m in [&mut a, &mut b] {
        let got = m.collect(RUST_USER, frames.len()).await;
        assert_eq!(
            got,
            hex_frames(&frames),
            "{} from the member without DAVE",
            m.name
        );
    }
    // What the member without DAVE receives from A is A's Opus itself.
    let heard = (0..10).map(|n| opus_frame(0x42, n)).collect::<Vec<_>>();
    a.play(&heard).await;
    let mut got = Vec::new();
    while let Ok(p) = plain.udp.recv_timeout(Duration::from_secs(2)).await {
        if p.payload.as_slice() != SILENCE_FRAME {
            got.push(p.payload);
        }
    }
    let from_a: Vec<Vec<u8>> = got.into_iter().filter(|p| heard.contains(p)).collect();
    assert_eq!(from_a, heard, "a call at version 0 carries plain Opus");
    assert_eq!(b.collect(DJS_USER, heard.len()).await, hex_frames(&heard));
    eprintln!("DAVE: a member without DAVE joined: version 0");

    // It leaves: back to DAVE, a new group.
    plain.gateway.close(1000).await.expect("close");
    let upgraded = a.dave(1, 1).await;
    b.dave(1, 1).await;
    burst(&mut a, &mut [&mut b], 0x50).await;
    burst(&mut b, &mut [&mut a], 0x51).await;
    eprintln!("DAVE: the member without DAVE left: version 1 again, epoch {upgraded}");
    a.leave().await;
    b.leave().await;
}
