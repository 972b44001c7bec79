//! End to end over real processes and sockets on loopback: the `control`
//! binary (which spawns the `dataplane` binary), an LVSP client playing
//! Litecord and four voice clients.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use scripts::gateway::{GatewayClient, GatewayEvent, ServerMessage};
use scripts::lvsp::{LvspClient, LvspEvent};
use scripts::{ClientError, Mode, VoiceClient};
use support::ServerProcess;

const PACKETS: usize = 50;
const GUILD: &str = "41771983423143936";
const CHANNEL: &str = "41771983423143937";

/// The payload talker `talker` sends as its `n`th packet: distinct per
/// packet, sized like an Opus frame.
fn payload(talker: usize, n: usize) -> Vec<u8> {
    let mut p = format!("talker {talker} packet {n} ").into_bytes();
    p.extend((0..120).map(|i| (i * 7 + talker * 31 + n) as u8));
    p
}

/// Receives until `expected` packets arrived, then for a little longer to
/// catch any extra; returns (sender ssrc, payload) pairs.
async fn receive(client: &mut VoiceClient, expected: usize) -> Vec<(u32, Vec<u8>)> {
    let mut got = Vec::new();
    while got.len() < expected {
        match client.udp.recv_timeout(Duration::from_secs(10)).await {
            Ok(p) => got.push((p.ssrc, p.payload)),
            Err(e) => panic!(
                "client {} got {} of {expected} packets: {e}",
                client.ssrc(),
                got.len()
            ),
        }
    }
    while let Ok(p) = client.udp.recv_timeout(Duration::from_millis(300)).await {
        got.push((p.ssrc, p.payload));
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_through_control_rings_and_dataplane() {
    let server = ServerProcess::start(2, &[]);
    // The defaults: TLS on both websockets with the generated certificate.
    assert!(server.lvsp_url.starts_with("wss://"), "{}", server.lvsp_url);
    assert!(
        server.gateway_url.starts_with("wss://"),
        "{}",
        server.gateway_url
    );
    tokio::time::timeout(Duration::from_secs(120), call(&server))
        .await
        .expect("the call finished in time");
    let (udp, shm) = (server.udp, server.shm.clone());
    let status = server.stop();
    assert!(status.success(), "control exited with {status}");
    // Both processes are gone: the region is removed and the data plane's
    // UDP port is free again.
    assert!(!shm.exists(), "{} left behind", shm.display());
    // (The kernel lets go of a socket an exited process's io_uring still
    // referenced when it tears the ring down, a few milliseconds later.)
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while let Err(e) = std::net::UdpSocket::bind(udp) {
        assert!(
            std::time::Instant::now() < deadline,
            "the data plane did not release its port: {e}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The same call with the data plane's cores on the io_uring packet path
/// (multishot receive into provided buffers, batched sendmsg).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_call_on_the_io_uring_packet_path() {
    let server = ServerProcess::start(2, &["--packet-io", "uring"]);
    let pid = server.metric("voice_dataplane_pid") as u32;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).expect("the data plane runs");
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    assert!(
        args.windows(2)
            .any(|w| w[0] == b"--packet-io" && w[1] == b"uring"),
        "the data plane was started with {:?}",
        String::from_utf8_lossy(&cmdline)
    );
    tokio::time::timeout(Duration::from_secs(120), call(&server))
        .await
        .expect("the call finished in time");
    assert!(server.stop().success());
}

async fn call(server: &ServerProcess) {
    // Litecord's side: a channel and four voice states.
    let (mut lvsp, ready) = LvspClient::connect(&server.lvsp_url, &server.secret)
        .await
        .expect("LVSP identify");
    assert!((0.0..=1.0).contains(&ready.health));
    let assign = lvsp
        .channel_req(CHANNEL, Some(GUILD))
        .await
        .expect("CHANNEL_ASSIGN");
    assert_eq!(assign.channel.channel_id.to_string(), CHANNEL);
    assert_eq!(
        assign.channel.guild_id.map(|g| g.to_string()).as_deref(),
        Some(GUILD)
    );
    let users = [
        "80351110224678912",
        "80351110224678913",
        "80351110224678914",
        "80351110224678915",
    ];
    let mut states = Vec::new();
    for user in users {
        let done = lvsp
            .voice_state_create(user, CHANNEL, Some(GUILD))
            .await
            .expect("VOICE_STATE_DONE");
        assert_eq!(done.state.user_id.to_string(), user);
        states.push(done);
    }

    // Four voice clients, gateway v8 and v4 mixed; the fourth never sends.
    let mut clients = Vec::new();
    for (i, state) in states.iter().enumerate() {
        let version = if i % 2 == 0 { 8 } else { 4 };
        let client = VoiceClient::join(
            &server.gateway_url,
            version,
            GUILD,
            &state.state.user_id.to_string(),
            &state.session_id,
            &assign.token,
            Mode::Aes256GcmRtpSize,
        )
        .await
        .unwrap_or_else(|e| panic!("client {i} join: {e}"));
        assert_eq!(client.ready.ip.to_string(), "127.0.0.1");
        assert_eq!(client.ready.port, server.udp.port());
        assert_eq!(client.ready.modes[0], "aead_aes256_gcm_rtpsize");
        assert_eq!(client.session.dave_protocol_version, 0);
        clients.push(client);
    }
    let ssrcs: Vec<u32> = clients.iter().map(|c| c.ssrc()).collect();
    let ssrcs = &ssrcs;
    assert_eq!(
        ssrcs.iter().collect::<BTreeSet<_>>().len(),
        4,
        "unique SSRCs"
    );
    assert!(
        ssrcs.iter().all(|s| *s != 0 && s % 2 == ssrcs[0] % 2),
        "every SSRC of the channel on one core: {ssrcs:?}"
    );

    // Speaking reaches the others with the sender's user id and SSRC.
    clients[0].gateway.speaking(1).await.expect("speaking");
    for other in &mut clients[1..] {
        loop {
            match other
                .gateway
                .next_event_timeout(Duration::from_secs(5))
                .await
                .expect("speaking relayed")
            {
                GatewayEvent::Message(ServerMessage::Speaking(s)) => {
                    assert_eq!(s.user_id.to_string(), users[0]);
                    assert_eq!(s.ssrc, ssrcs[0]);
                    break;
                }
                _ => continue, // Clients Connect, heartbeat ACKs
            }
        }
    }

    // Let the last Select Protocol reach its core (design target: 5 ms).
    tokio::time::sleep(Duration::from_millis(100)).await;

    for n in 0..PACKETS {
        for (talker, client) in clients.iter_mut().enumerate().take(3) {
            client
                .udp
                .send_opus(&payload(talker, n))
                .await
                .expect("send");
        }
    }

    for (i, client) in clients.iter_mut().enumerate() {
        let talkers: Vec<usize> = (0..3).filter(|t| *t != i).collect();
        let got = receive(client, talkers.len() * PACKETS).await;
        assert_eq!(
            got.len(),
            talkers.len() * PACKETS,
            "client {i}: exactly the others' packets"
        );
        assert!(
            got.iter().all(|(ssrc, _)| *ssrc != ssrcs[i]),
            "client {i} got its own packets back"
        );
        let expected: BTreeSet<(u32, Vec<u8>)> = talkers
            .iter()
            .flat_map(|&t| (0..PACKETS).map(move |n| (ssrcs[t], payload(t, n))))
            .collect();
        let got: BTreeSet<(u32, Vec<u8>)> = got.into_iter().collect();
        assert_eq!(got, expected, "client {i}: byte-identical, right SSRCs");
    }

    bad_input(server, &mut clients, &assign.token, &states[0].session_id).await;

    // Destroying the channel over LVSP closes every member's gateway with
    // 4014 and takes the sessions off the data plane.
    lvsp.channel_destroy(CHANNEL, Some(GUILD))
        .await
        .expect("CHANNEL_DESTROY");
    for client in &mut clients {
        loop {
            match client
                .gateway
                .next_event_timeout(Duration::from_secs(5))
                .await
            {
                Ok(GatewayEvent::Closed(code)) | Err(ClientError::Closed(code)) => {
                    assert_eq!(code, Some(4014));
                    break;
                }
                Ok(_) => continue,
                Err(e) => panic!("expected close 4014, got {e}"),
            }
        }
    }
    let unknown_before = server.metric_sum("voice_drops_total", "reason=\"unknown_ssrc\"");
    clients[0]
        .udp
        .send_opus(&payload(0, 999))
        .await
        .expect("send");
    server.wait_metrics(Duration::from_secs(5), "a removed SSRC dropped", |s| {
        s.metric_sum("voice_drops_total", "reason=\"unknown_ssrc\"") > unknown_before
    });
    assert!(clients[1]
        .udp
        .recv_timeout(Duration::from_millis(300))
        .await
        .is_err());
    assert_eq!(server.metric("voice_channels"), 0.0);
}

/// Wrong credentials and garbage datagrams: refused, counted, and the call's
/// members receive nothing from them.
async fn bad_input(
    server: &ServerProcess,
    clients: &mut [VoiceClient],
    token: &str,
    session: &str,
) {
    // LVSP with a wrong token: 4001.
    let mut bad = LvspClient::open(&server.lvsp_url)
        .await
        .expect("LVSP hello");
    bad.send_identify(&"00".repeat(32)).await.expect("send");
    match bad.recv_timeout(Duration::from_secs(5)).await {
        Ok(LvspEvent::Closed(code)) | Err(ClientError::Closed(code)) => {
            assert_eq!(code, Some(4001))
        }
        other => panic!("expected close 4001, got {other:?}"),
    }

    // Gateway Identify with a wrong token: 4004.
    let mut gw = GatewayClient::connect(&server.gateway_url, 8)
        .await
        .expect("gateway connect");
    let refused = gw
        .identify(GUILD, "80351110224678912", session, &format!("{token}x"))
        .await;
    match refused {
        Err(ClientError::Closed(code)) => assert_eq!(code, Some(4004)),
        other => panic!("expected close 4004, got {other:?}"),
    }

    // Every client's first IP discovery was answered: the core applies
    // pending commands before judging a datagram.
    assert_eq!(
        server.metric_sum("voice_drops_total", "reason=\"discovery_unknown\""),
        0.0
    );

    // Garbage and an RTP packet with an SSRC nobody was given.
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    udp.connect(server.udp).await.unwrap();
    let garbage = [0xFFu8; 40];
    let mut unknown = vec![0x80, 0x78, 0, 1, 0, 0, 0, 1, 0x12, 0x34, 0x56, 0x78];
    unknown.extend([0u8; 40]);
    for _ in 0..5 {
        udp.send(&garbage).await.unwrap();
        udp.send(&unknown).await.unwrap();
    }
    server.wait_metrics(Duration::from_secs(5), "drops counted", |s| {
        s.metric_sum("voice_drops_total", "reason=\"malformed\"") >= 5.0
            && s.metric_sum("voice_drops_total", "reason=\"unknown_ssrc\"") >= 5.0
    });
    for client in clients.iter_mut() {
        assert!(
            client
                .udp
                .recv_timeout(Duration::from_millis(100))
                .await
                .is_err(),
            "nothing forwarded from bad input"
        );
    }
    assert_eq!(
        server.metric("voice_closes_total{protocol=\"lvsp\",code=\"4001\"}"),
        1.0
    );
    assert_eq!(
        server.metric("voice_closes_total{protocol=\"gateway\",code=\"4004\"}"),
        1.0
    );
    assert!(server.metric_sum("voice_packets_in_total", "core") >= 160.0);
}
