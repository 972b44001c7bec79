//! Video and screen share pass-through over real processes and sockets on
//! loopback (issue 13): a client that asked for a screen-share stream
//! sends video-sized RTP on its video SSRC and retransmissions on its RTX
//! SSRC, with its own session key; a member that asked for video gets
//! every packet byte for byte, re-encrypted with its key; an audio-only
//! member (discord.js-like) gets the audio and none of the video.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use protocol::gateway::ClientMessage;
use scripts::gateway::{
    identify, Codec, GatewayEvent, MemberSsrcs, ServerMessage, StreamRequest, Video,
};
use scripts::rtp::RtpHeader;
use scripts::{LvspClient, Mode, VoiceClient};
use support::ServerProcess;

const GUILD: &str = "41771983423143936";
const CHANNEL: &str = "41771983423143937";
const SENDER: &str = "80351110224678912";
const VIEWER: &str = "80351110224678913";
const LISTENER: &str = "80351110224678914";
/// H264 and its RTX payload types, as Discord's clients number them.
const H264: u8 = 101;
const H264_RTX: u8 = 102;
const VIDEO_PACKETS: usize = 40;
const RTX_PACKETS: usize = 5;
const AUDIO_PACKETS: usize = 10;

/// Video packet `n`: sizes from 200 to 1,400 bytes of payload (a full
/// Ethernet MTU once sealed), distinct contents.
fn video_payload(n: usize) -> Vec<u8> {
    let len = 200 + (n * 97) % 1201;
    (0..len).map(|i| (i * 13 + n * 7) as u8).collect()
}

fn codecs() -> Vec<Codec> {
    let codec = |name: &str, kind: &str, priority, pt: u8| Codec {
        name: name.into(),
        kind: kind.into(),
        priority: Some(priority),
        payload_type: Some(pt),
        rtx_payload_type: (kind == "video").then_some(pt + 1),
    };
    vec![
        codec("opus", "audio", 1000, 120),
        codec("H264", "video", 1000, H264),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn video_and_rtx_reach_video_members_only() {
    let server = ServerProcess::start(2, &[]);
    tokio::time::timeout(Duration::from_secs(90), call(&server))
        .await
        .expect("the call finished in time");
    let status = server.stop();
    assert!(status.success(), "control exited with {status}");
}

async fn call(server: &ServerProcess) {
    let (mut lvsp, _) = LvspClient::connect(&server.lvsp_url, &server.secret)
        .await
        .expect("LVSP identify");
    let assign = lvsp
        .channel_req(CHANNEL, Some(GUILD))
        .await
        .expect("CHANNEL_ASSIGN");
    let mut sessions = Vec::new();
    for user in [SENDER, VIEWER, LISTENER] {
        let done = lvsp
            .voice_state_create(user, CHANNEL, Some(GUILD))
            .await
            .expect("VOICE_STATE_DONE");
        sessions.push(done.session_id);
    }
    let token = assign.token.as_str();
    let ids = |i: usize, user| [GUILD, user, sessions[i].as_str(), token];

    // The sender asks for a screen share; the viewer for video (no stream
    // named: it gets one anyway); the listener for nothing.
    let mut sender_id = identify(ids(0, SENDER), 0).unwrap();
    sender_id.video = true;
    sender_id.streams = vec![StreamRequest {
        kind: Some("screen".into()),
        rid: Some("100".into()),
        quality: Some(100),
    }];
    let mut viewer_id = identify(ids(1, VIEWER), 0).unwrap();
    viewer_id.video = true;
    let url = &server.gateway_url;
    let aes = Mode::Aes256GcmRtpSize;
    let mut sender = VoiceClient::join_as(url, 8, sender_id, aes, Some(codecs()))
        .await
        .expect("sender joins");
    let mut viewer = VoiceClient::join_as(url, 8, viewer_id, Mode::XChaCha20Poly1305RtpSize, None)
        .await
        .expect("viewer joins");
    let listener_id = identify(ids(2, LISTENER), 0).unwrap();
    let mut listener = VoiceClient::join_as(url, 4, listener_id, aes, None)
        .await
        .expect("listener joins");
    assert!(listener.ready.streams.is_empty());
    assert_eq!(viewer.ready.streams.len(), 1);
    assert_eq!(sender.session.audio_codec.as_deref(), Some("opus"));
    assert_eq!(sender.session.video_codec.as_deref(), Some("H264"));
    assert_eq!(viewer.session.video_codec.as_deref(), Some("H264"));
    let stream = sender.ready.streams[0].clone();
    assert_eq!(stream.kind, "screen");
    let ssrcs = [sender.ssrc(), stream.ssrc, stream.rtx_ssrc];
    assert!(
        ssrcs.iter().all(|s| s % 2 == ssrcs[0] % 2),
        "one core: {ssrcs:?}"
    );

    // It starts streaming: both others hear its op 12.
    let mut live = stream.clone();
    live.active = true;
    let video = Video {
        audio_ssrc: sender.ssrc(),
        video_ssrc: stream.ssrc,
        rtx_ssrc: stream.rtx_ssrc,
        streams: vec![live.clone()],
    };
    sender
        .gateway
        .send(ClientMessage::Video(video))
        .await
        .unwrap();
    for member in [&mut viewer, &mut listener] {
        let told = loop {
            match member
                .gateway
                .next_event_timeout(Duration::from_secs(10))
                .await
            {
                Ok(GatewayEvent::Message(ServerMessage::MemberSsrcs(m))) if m.video_ssrc != 0 => {
                    break m
                }
                Ok(_) => {}
                Err(e) => panic!("no op 12 with the sender's video: {e}"),
            }
        };
        assert_eq!(
            told,
            MemberSsrcs {
                user_id: SENDER.parse().unwrap(),
                audio_ssrc: sender.ssrc(),
                video_ssrc: stream.ssrc,
                rtx_ssrc: stream.rtx_ssrc,
                streams: vec![live.clone()],
            }
        );
    }
    // Let the last Select Protocol reach its core.
    tokio::time::sleep(Duration::from_millis(50)).await;

    // Video frames (the last packet of each of 8 frames marked), RTX, and
    // audio, interleaved as a real sender does, on one key and counter.
    let mut sent = BTreeSet::new();
    for n in 0..VIDEO_PACKETS {
        let mut header =
            RtpHeader::opus(1000 + n as u16, 90_000 + (n as u32 / 5) * 3000, stream.ssrc);
        header.payload_type = H264;
        header.marker = n % 5 == 4;
        let payload = video_payload(n);
        sender.udp.send_rtp(&header, &payload).await.unwrap();
        sent.insert((stream.ssrc, H264, payload));
        if n < RTX_PACKETS {
            let mut rtx = RtpHeader::opus(500 + n as u16, 90_000, stream.rtx_ssrc);
            rtx.payload_type = H264_RTX;
            let payload = format!("rtx {n}").into_bytes();
            sender.udp.send_rtp(&rtx, &payload).await.unwrap();
            sent.insert((stream.rtx_ssrc, H264_RTX, payload));
        }
        if n < AUDIO_PACKETS {
            let payload = format!("audio {n}").into_bytes();
            sender.udp.send_opus(&payload).await.unwrap();
            sent.insert((sender.ssrc(), scripts::rtp::OPUS_PAYLOAD_TYPE, payload));
        }
    }
    let audio: BTreeSet<_> = sent
        .iter()
        .filter(|(ssrc, ..)| *ssrc == sender.ssrc())
        .cloned()
        .collect();
    assert_eq!(
        receive(&mut viewer, sent.len()).await,
        sent,
        "the viewer gets it all"
    );
    assert_eq!(
        receive(&mut listener, audio.len()).await,
        audio,
        "the listener gets the audio only"
    );
}

/// Receives until `expected` packets arrived, then for a little longer to
/// catch any extra.
async fn receive(member: &mut VoiceClient, expected: usize) -> BTreeSet<(u32, u8, Vec<u8>)> {
    let mut got = BTreeSet::new();
    let mut wait = Duration::from_secs(10);
    loop {
        match member.udp.recv_timeout(wait).await {
            Ok(p) => {
                got.insert((p.ssrc, p.header.payload_type, p.payload));
            }
            Err(_) if got.len() >= expected => return got,
            Err(e) => panic!("{} got {} of {expected}: {e}", member.ssrc(), got.len()),
        }
        if got.len() >= expected {
            wait = Duration::from_millis(300);
        }
    }
}
