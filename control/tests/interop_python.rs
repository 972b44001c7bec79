//! Interoperability with a second real third-party client: discord.py (the
//! version pinned in `control/tests/interop/requirements.txt`) joins a call
//! with its own `VoiceClient` (voice websocket, IP discovery, UDP,
//! transport encryption, `AudioPlayer`, and DAVE through davey when the
//! call negotiates it), driven by `control/tests/interop/python_client.py`,
//! which stands in for the main gateway only (the op 4 it is asked to send
//! is answered with the VOICE_STATE_UPDATE and VOICE_SERVER_UPDATE carrying
//! what this test obtained over LVSP). discord.py cannot receive voice: the
//! script reads the library's own UDP socket through its socket-listener
//! hook and opens the packets with the library's key and mode (and its
//! davey session for DAVE); see the script's header.
//!
//! In a call with this project's client, each side sends distinct Opus
//! frames and receives exactly the other's, byte for byte; discord.py learns
//! the other member's SSRC from the Speaking (op 5) the server repeats to
//! it, and its disconnect is a leave the other member sees at once. In a
//! DAVE call with @discordjs/voice, the two libraries (both on davey, in two
//! languages) form the MLS group through the server and decrypt each
//! other's audio, while a member outside the group gets only DAVE frames.
//!
//! Needs Python 3 with venv; the first run creates
//! `control/tests/interop/.venv` and installs the pinned, hashed packages
//! into it (CI's `.ci/run` does it too). The DAVE test needs Node.js and the
//! npm project of `interop_discordjs.rs` as well. Without them the tests
//! fail and say so.

#[path = "support/interop.rs"]
mod interop;
mod support;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use interop::{
    check_node, hex_frames, interop_dir, litecord, opus_frame, start, Script, CHANNEL, DJS_USER,
    FRAMES, GUILD, RUST_USER, SILENCE_FRAME,
};
use scripts::gateway::ServerMessage;
use scripts::{GatewayEvent, Mode, VoiceClient};
use serde_json::{json, Value};
use support::ServerProcess;
use tokio::process::Command;

/// The discord.py client.
const PY_USER: &str = "80351110224678916";
/// discord.py's `AudioPlayer`, once its source is exhausted, calls
/// `send_silence()`: 5 silence frames, back to back, all on the wire (it
/// checks only that it is still connected). Deterministic in the pinned
/// version.
const PY_SILENCE_SENT: usize = 5;
/// What @discordjs/voice 0.19.2 puts on the wire after a resource ends
/// (`interop_discordjs.rs` explains the one fewer than its padding of 5).
const DJS_SILENCE_SENT: usize = 4;

/// discord.py (`python_client.py`) with `params` (the server's
/// certificate among them).
fn discord_py(params: &Value) -> Script {
    let mut command = Command::new(python());
    command
        .arg(interop_dir().join("python_client.py"))
        .env("PYTHON_CLIENT_PARAMS", params.to_string())
        .env("PYTHONDONTWRITEBYTECODE", "1");
    Script::spawn("python_client.py", command)
}

fn frames(tag: u8) -> Vec<Vec<u8>> {
    (0..FRAMES).map(|n| opus_frame(tag, n)).collect()
}

/// The virtual environment's interpreter, the pinned packages installed
/// (once per process: the tests run in parallel). Fails, never skips, when
/// Python or its venv module is missing.
fn python() -> PathBuf {
    static PYTHON: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    PYTHON
        .get_or_init(install_python_packages)
        .clone()
        .unwrap_or_else(|e| panic!("{e}"))
}

fn install_python_packages() -> Result<PathBuf, String> {
    let setup = "install Python 3 with venv (`apt-get install -y python3 python3-venv` \
                 when missing), then from the repository root: `python3 -m venv \
                 control/tests/interop/.venv && control/tests/interop/.venv/bin/pip \
                 install --require-hashes --only-binary=:all: -r \
                 control/tests/interop/requirements.txt` (.ci/run does both)";
    let dir = interop_dir();
    let venv = dir.join(".venv");
    let python = venv.join("bin/python");
    // `cargo test` alone must run the whole suite: install them here (pip
    // finds them installed after the first time, in about a second).
    if !python.exists() {
        let out = std::process::Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .output()
            .map_err(|e| format!("python3 is not available ({e}): {setup}"))?;
        if !out.status.success() {
            return Err(format!(
                "`python3 -m venv` failed ({}): {}\n{setup}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    let out = std::process::Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--require-hashes",
            "--only-binary=:all:",
            "-r",
        ])
        .arg(dir.join("requirements.txt"))
        .output()
        .map_err(|e| format!("running {}: {e}: {setup}", python.display()))?;
    if !out.status.success() {
        return Err(format!(
            "pip install failed ({}): {}\n{setup}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(python)
}

/// The parameters of `python_client.py` (and, but for `cafile`, of
/// `discordjs_client.mjs`).
fn params(
    server: &ServerProcess,
    cert: &Path,
    (user, session, token): (&str, &str, &str),
    peer: &str,
    frames: &[Vec<u8>],
) -> Value {
    let endpoint = server
        .gateway_url
        .strip_prefix("wss://")
        .expect("wss gateway")
        .trim_end_matches('/');
    json!({
        "endpoint": endpoint,
        "cafile": cert,
        "guild_id": GUILD,
        "channel_id": CHANNEL,
        "user_id": user,
        "session_id": session,
        "token": token,
        "frames": hex_frames(frames),
        "peer_user_id": peer,
        "silence_ms": 1000,
        "timeout_ms": 30_000,
    })
}

/// The default offer (AES-GCM, then XChaCha20): discord.py has no AES-GCM
/// and takes XChaCha20-Poly1305 while this project's client takes AES-GCM,
/// so the server converts between the two.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discordpy_voice_sends_and_receives_through_the_server() {
    interop(
        &[],
        "aead_xchacha20_poly1305_rtpsize",
        Mode::Aes256GcmRtpSize,
    )
    .await;
}

/// Only the legacy modes offered, `_lite` first: discord.py takes it (the
/// first offered it supports) beside a client on plain xsalsa20_poly1305.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discordpy_voice_in_xsalsa20_lite_beside_a_legacy_client() {
    interop(
        &["--modes", "xsalsa20_poly1305_lite,xsalsa20_poly1305"],
        "xsalsa20_poly1305_lite",
        Mode::XSalsa20Poly1305,
    )
    .await;
}

async fn interop(extra: &[&str], py_mode: &str, rust_mode: Mode) {
    python();
    let (server, cert) = start(extra);
    tokio::time::timeout(
        Duration::from_secs(60),
        call(&server, &cert, py_mode, rust_mode),
    )
    .await
    .expect("the call finished in time");
    let status = server.stop();
    assert!(status.success(), "control exited with {status}");
}

/// This project's client joins first and announces its SSRC (op 5): the
/// server must repeat it to discord.py when it joins, or discord.py's side
/// cannot tell whose packets those are. Then both send at once.
async fn call(server: &ServerProcess, cert: &Path, py_mode: &str, rust_mode: Mode) {
    let litecord = litecord(server, &[RUST_USER, PY_USER]).await;
    let (token, sessions) = (&litecord.token, &litecord.sessions);
    let mut rust = VoiceClient::join(
        &server.gateway_url,
        8,
        GUILD,
        RUST_USER,
        &sessions[RUST_USER],
        token,
        rust_mode,
    )
    .await
    .expect("rust client joins");
    rust.gateway.speaking(1).await.expect("speaking");

    let (rust_frames, py_frames) = (frames(0x52), frames(0x50));
    let ids = (PY_USER, sessions[PY_USER].as_str(), token.as_str());
    let mut py = discord_py(&params(server, cert, ids, RUST_USER, &py_frames));
    let ready = match py.event("ready", Duration::from_secs(20)).await {
        Ok(v) => v,
        Err(e) => py.failed(format!("discord.py never got ready: {e}")).await,
    };
    // discord.py takes the first offered mode it supports.
    assert_eq!(ready["mode"], py_mode, "{ready}");
    assert_eq!(ready["dave_protocol_version"], 0, "{ready}");
    assert_eq!(
        ready["peer_ssrc"],
        rust.ssrc(),
        "discord.py mapped {RUST_USER} to the wrong SSRC: {ready}"
    );
    let py_ssrc = ready["ssrc"].as_u64().expect("discord.py's ssrc") as u32;

    // Both directions at once: our frames every 20 ms while discord.py
    // plays its own; collect what it sends until its frames and the
    // silence after them arrived.
    let expected_from_py: Vec<Vec<u8>> = py_frames
        .iter()
        .cloned()
        .chain(std::iter::repeat_n(SILENCE_FRAME.to_vec(), PY_SILENCE_SENT))
        .collect();
    let from_py =
        match interop::exchange(&mut rust, &rust_frames, py_ssrc, expected_from_py.len()).await {
            Ok(got) => got,
            Err(e) => py.failed(format!("with discord.py: {e}")).await,
        };

    let result = match py.event("result", Duration::from_secs(15)).await {
        Ok(v) => v,
        Err(e) => py.failed(format!("discord.py gave no result: {e}")).await,
    };
    // Right after its result the script calls `VoiceClient.disconnect()`,
    // which closes the voice websocket with 1000: a leave the others see at
    // once, not after the resume grace.
    let disconnected = Instant::now();
    let (left, mut events) = match interop::left(&mut rust, PY_USER, disconnected).await {
        Ok(left) => left,
        Err(e) => py.failed(format!("after its leave: {e}")).await,
    };
    eprintln!("discord.py disconnect() → op 13 at the other member: {left:?}");
    assert!(left < Duration::from_secs(1), "the leave took {left:?}");
    if let Err(e) = py.exited(Duration::from_secs(10)).await {
        py.failed(format!("python_client.py after its result: {e}"))
            .await;
    }
    let stderr = py.stderr().await;
    eprintln!("discord.py result: {result}\n{stderr}");

    // discord.py → server → us: its frames, in order, then the silence
    // frames its player ends with.
    assert_eq!(result["dave_protocol_version"], 0, "{result}");
    assert_eq!(result["mode"], py_mode, "{result}");
    assert!(
        result["latency"].is_number(),
        "discord.py saw no heartbeat ACK: {result}"
    );
    let payloads: Vec<Vec<u8>> = from_py.iter().map(|p| p.payload.clone()).collect();
    assert_eq!(
        hex_frames(&payloads),
        hex_frames(&expected_from_py),
        "what we received from discord.py"
    );
    for pair in from_py.windows(2) {
        assert_eq!(pair[1].seq, pair[0].seq.wrapping_add(1), "RTP sequence");
        assert_eq!(
            pair[1].timestamp,
            pair[0].timestamp.wrapping_add(960),
            "RTP timestamp"
        );
    }

    // Us → server → discord.py: exactly our frames, byte for byte, every
    // packet opened and attributed.
    assert_eq!(result["errors"], json!([]), "{result}");
    assert_eq!(result["unknown_ssrcs"], json!([]), "{result}");
    let received: Vec<String> = result["received"]
        .as_array()
        .expect("received frames")
        .iter()
        .map(|v| v.as_str().expect("hex").to_owned())
        .collect();
    assert_eq!(
        received,
        hex_frames(&rust_frames),
        "what discord.py received"
    );
    assert_eq!(
        result["ssrc_users"][rust.ssrc().to_string()],
        RUST_USER,
        "{result}"
    );

    // The gateway told us who discord.py is: Clients Connect with its user
    // id, and its Speaking (op 5) with the SSRC its packets carry.
    while let Ok(event) = rust
        .gateway
        .next_event_timeout(Duration::from_millis(200))
        .await
    {
        events.push(event);
    }
    let mut connected = false;
    let mut speaking = Vec::new();
    for event in events {
        match event {
            GatewayEvent::Message(ServerMessage::ClientsConnect(c)) => {
                connected |= c.user_ids.iter().any(|u| u.to_string() == PY_USER)
            }
            GatewayEvent::Message(ServerMessage::Speaking(s)) => speaking.push(s),
            _ => {}
        }
    }
    assert!(connected, "no Clients Connect (op 11) for {PY_USER}");
    assert!(
        speaking
            .iter()
            .any(|s| s.user_id.to_string() == PY_USER && s.ssrc == py_ssrc && s.speaking & 1 == 1),
        "no Speaking (op 5) from {PY_USER} with SSRC {py_ssrc}: {speaking:?}"
    );
}

/// DAVE across two libraries: discord.py (davey, Python) and
/// @discordjs/voice (@snazzah/davey, node) in a call on a server with
/// `--dave on` form the MLS group through it, negotiate protocol version 1
/// and decrypt each other's audio byte for byte. A third member (this
/// project's client) says it supports DAVE but does no MLS: what it
/// receives from them is DAVE frames (ending in 0xFAFA), never their Opus.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discordpy_and_discordjs_voice_end_to_end_encrypted() {
    python();
    check_node();
    let (server, cert) = start(&["--dave", "on"]);
    tokio::time::timeout(Duration::from_secs(60), dave_call(&server, &cert))
        .await
        .expect("the call finished in time");
    let status = server.stop();
    assert!(status.success(), "control exited with {status}");
}

async fn dave_call(server: &ServerProcess, cert: &Path) {
    let litecord = litecord(server, &[RUST_USER, PY_USER, DJS_USER]).await;
    let (token, sessions) = (&litecord.token, &litecord.sessions);
    // The eavesdropper: DAVE-capable on paper, in the call first.
    let ids = [GUILD, RUST_USER, sessions[RUST_USER].as_str(), token];
    let mut eavesdropper =
        VoiceClient::join_dave(&server.gateway_url, 8, ids, Mode::Aes256GcmRtpSize, 1)
            .await
            .expect("the eavesdropper joins");
    assert_eq!(
        eavesdropper.session.dave_protocol_version, 1,
        "the call runs DAVE"
    );

    let (py_frames, djs_frames) = (frames(0x50), frames(0x44));
    // Each also says Speaking (op 5) once connected, before it waits for
    // the other's: both libraries learn SSRCs from op 5 alone, and an
    // announcement before the first packet means no frame can beat it.
    let dave_params = |me: &str, peer: &str, frames: &[Vec<u8>]| {
        let mut p = params(server, cert, (me, &sessions[me], token), peer, frames);
        p["dave"] = json!(true);
        p["silence_ms"] = json!(1500);
        p["announce"] = json!(true);
        p
    };
    let py_params = dave_params(PY_USER, DJS_USER, &py_frames);
    let djs_params = dave_params(DJS_USER, PY_USER, &djs_frames);
    let mut py = discord_py(&py_params);
    let mut djs = Script::node(cert, &djs_params);
    // What the eavesdropper receives meanwhile: from the first packet
    // until 2 s without one.
    let listening = tokio::spawn(async move {
        let mut got = Vec::new();
        let mut wait = Duration::from_secs(30);
        while let Ok(p) = eavesdropper.udp.recv_timeout(wait).await {
            got.push(p);
            wait = Duration::from_secs(2);
        }
        (eavesdropper, got)
    });
    let py_ready = match py.event("ready", Duration::from_secs(30)).await {
        Ok(v) => v,
        Err(e) => {
            py.failed(format!("discord.py never got DAVE-ready: {e}"))
                .await
        }
    };
    let djs_ready = match djs.event("ready", Duration::from_secs(30)).await {
        Ok(v) => v,
        Err(e) => {
            djs.failed(format!("discord.js never got DAVE-ready: {e}"))
                .await
        }
    };
    // Each knows the other's SSRC.
    assert_eq!(py_ready["peer_ssrc"], djs_ready["ssrc"], "{py_ready}");
    assert_eq!(djs_ready["peer_ssrc"], py_ready["ssrc"], "{djs_ready}");

    let mut results = Vec::new();
    for script in [py, djs] {
        let mut script = script;
        let result = match script.event("result", Duration::from_secs(30)).await {
            Ok(v) => v,
            Err(e) => {
                let what = format!("{} gave no result: {e}", script.name);
                script.failed(what).await
            }
        };
        if let Err(e) = script.exited(Duration::from_secs(10)).await {
            let what = format!("{} after its result: {e}", script.name);
            script.failed(what).await;
        }
        let name = script.name;
        let stderr = script.stderr().await;
        eprintln!("{name}: {result}\n{stderr}");
        results.push(result);
    }
    // The transport payloads the server forwarded were DAVE frames, not the
    // Opus the two encoded.
    let (_eavesdropper, got) = listening.await.expect("the eavesdropper");
    let plain: std::collections::HashSet<Vec<u8>> =
        py_frames.iter().chain(&djs_frames).cloned().collect();
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
            "plain Opus reached a non-member: SSRC {} seq {}: {}",
            p.ssrc,
            p.seq,
            hex::encode(&p.payload)
        );
        assert!(
            p.payload.ends_with(&[0xFA, 0xFA]),
            "not a DAVE frame: SSRC {} seq {}: {}",
            p.ssrc,
            p.seq,
            hex::encode(&p.payload)
        );
    }
    eprintln!(
        "DAVE: {} end-to-end encrypted frames from discord.py and discord.js seen by a member outside the MLS group, none readable",
        media.len()
    );

    let (py_result, djs_result) = (&results[0], &results[1]);
    assert_eq!(py_result["errors"], json!([]), "{py_result}");
    // Each decrypted the other's frames, byte for byte, then the silence
    // frames the other's library sends in the clear after its audio.
    for (result, sent_by_peer, silence) in [
        (py_result, &djs_frames, DJS_SILENCE_SENT),
        (djs_result, &py_frames, PY_SILENCE_SENT),
    ] {
        assert_eq!(result["dave_protocol_version"], 1, "{result}");
        let received: Vec<String> = result["received"]
            .as_array()
            .expect("received frames")
            .iter()
            .map(|v| v.as_str().expect("hex").to_owned())
            .collect();
        let expected: Vec<Vec<u8>> = sent_by_peer
            .iter()
            .cloned()
            .chain(std::iter::repeat_n(SILENCE_FRAME.to_vec(), silence))
            .collect();
        assert_eq!(received, hex_frames(&expected), "{result}");
    }
    assert!(
        py_result["privacy_code"].is_string(),
        "discord.py has no voice privacy code: {py_result}"
    );
    assert_eq!(server.metric("voice_dave_calls"), 1.0);
}
