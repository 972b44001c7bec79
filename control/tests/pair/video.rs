//! Video and screen share pass-through (issue 13): Ready's streams, Select
//! Protocol's codecs, op 12 relayed to the others and replayed to those
//! who join later, and what the data plane is told.

use protocol::gateway::{
    ClientMessage, Codec, MemberSsrcs, Resolution, SelectProtocol, SelectProtocolData,
    StreamRequest, Video, VideoStream, UDP,
};
use protocol::Snowflake;
use scripts::gateway::ServerMessage;
use shared::Command;

use crate::harness::*;

/// Cores of the harness's registry.
const CORES: u32 = 2;

/// A screen share client's Identify (Discord-video-stream's).
fn screen_share(user: u64, session: &str, token: &str) -> protocol::gateway::Identify {
    protocol::gateway::Identify {
        video: true,
        streams: vec![StreamRequest {
            kind: Some("screen".into()),
            rid: Some("100".into()),
            quality: Some(100),
        }],
        ..identify(Snowflake(user), session, token, 0)
    }
}

fn select_with_codecs() -> ClientMessage {
    let codec = |name: &str, kind: &str, priority, pt| Codec {
        name: name.into(),
        kind: kind.into(),
        priority: Some(priority),
        payload_type: Some(pt),
        rtx_payload_type: (kind == "video").then_some(pt + 1),
    };
    ClientMessage::SelectProtocol(SelectProtocol {
        protocol: UDP.into(),
        data: SelectProtocolData {
            address: Some([127, 0, 0, 1].into()),
            port: Some(4000),
            mode: "aead_aes256_gcm_rtpsize".into(),
        },
        codecs: Some(vec![
            codec("opus", "audio", 1000, 120),
            codec("VP8", "video", 3000, 105),
            codec("H264", "video", 2000, 101),
        ]),
    })
}

/// The op 12 a streaming client sends for its first stream.
fn streaming(audio_ssrc: u32, stream: &VideoStream) -> Video {
    Video {
        audio_ssrc,
        video_ssrc: stream.ssrc,
        rtx_ssrc: stream.rtx_ssrc,
        streams: vec![VideoStream {
            active: true,
            max_bitrate: Some(2_500_000),
            max_framerate: Some(30),
            max_resolution: Some(Resolution {
                kind: "fixed".into(),
                width: 1280,
                height: 720,
            }),
            ..stream.clone()
        }],
    }
}

/// The first message `i` got since the last look that `pick` takes.
fn first<T>(w: &mut World, i: usize, pick: impl Fn(ServerMessage) -> Option<T>) -> T {
    w.messages(i)
        .into_iter()
        .find_map(pick)
        .expect("the message was sent")
}

fn member_ssrcs(messages: &[ServerMessage], user: u64) -> Vec<MemberSsrcs> {
    messages
        .iter()
        .filter_map(|m| match m {
            ServerMessage::MemberSsrcs(s) if s.user_id == Snowflake(user) => Some(s.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn a_screen_share_is_announced_now_and_to_those_who_join_later() {
    let (mut w, token, s) = call(41, &[7, 8, 9]);
    let b = member(&mut w, 8, 8, &s[1], &token);
    let a = w.connect(8);
    w.identify_as(a, screen_share(7, &s[0], &token));
    let ready = first(&mut w, a, |m| match m {
        ServerMessage::Ready(r) => Some(r),
        _ => None,
    });
    // One stream as asked, its two SSRCs on the audio SSRC's core.
    assert_eq!(ready.streams.len(), 1);
    let stream = ready.streams[0].clone();
    assert_eq!(
        (stream.kind.as_str(), stream.rid.as_str()),
        ("screen", "100")
    );
    let all = [ready.ssrc, stream.ssrc, stream.rtx_ssrc];
    assert!(
        all.iter().all(|x| x % CORES == ready.ssrc % CORES),
        "{all:?}"
    );
    assert!(all[0] != all[1] && all[1] != all[2] && all[0] != all[2]);
    // B hears A's SSRCs with the stream, not yet sending.
    let heard = member_ssrcs(&w.messages(b), 7);
    assert_eq!(heard.len(), 1);
    assert_eq!((heard[0].audio_ssrc, heard[0].video_ssrc), (ready.ssrc, 0));
    assert_eq!(heard[0].streams, std::slice::from_ref(&stream));

    // Codecs: Session Description names opus and A's preferred video codec;
    // the data plane gets A's video SSRCs, and A receives video, B not.
    w.client(a).send(select_with_codecs());
    w.client(b)
        .select_protocol(Some([127, 0, 0, 1].into()), 4001, "aead_aes256_gcm_rtpsize");
    w.run();
    let sd = first(&mut w, a, |m| match m {
        ServerMessage::SessionDescription(sd) => Some(sd),
        _ => None,
    });
    assert_eq!(sd.audio_codec.as_deref(), Some("opus"));
    assert_eq!(sd.video_codec.as_deref(), Some("H264"));
    let specs: Vec<_> = w
        .commands
        .iter()
        .filter_map(|c| match c {
            Command::UpsertSession(spec) => Some((spec.ssrc, spec.video)),
            _ => None,
        })
        .collect();
    let a_video = specs.iter().find(|(s, _)| *s == ready.ssrc).unwrap().1;
    assert_eq!(
        a_video.ssrcs().collect::<Vec<_>>(),
        [stream.ssrc, stream.rtx_ssrc]
    );
    assert!(a_video.receive);
    let b_ssrc = w.client(b).ssrc().unwrap();
    let b_video = specs.iter().find(|(s, _)| *s == b_ssrc).unwrap().1;
    assert_eq!((b_video.ssrcs().count(), b_video.receive), (0, false));

    // A starts streaming: B hears it, once; saying the same again is news
    // to nobody.
    w.client(a)
        .send(ClientMessage::Video(streaming(ready.ssrc, &stream)));
    w.client(a)
        .send(ClientMessage::Video(streaming(ready.ssrc, &stream)));
    w.run();
    let heard = member_ssrcs(&w.messages(b), 7);
    assert_eq!(heard.len(), 1, "{heard:?}");
    let live = heard[0].clone();
    assert_eq!(
        (live.video_ssrc, live.rtx_ssrc),
        (stream.ssrc, stream.rtx_ssrc)
    );
    assert!(live.streams[0].active);
    assert_eq!(live.streams[0].max_framerate, Some(30));

    // C joins later (at v4: nothing numbered) and learns it all.
    let c = member(&mut w, 4, 9, &s[2], &token);
    assert_eq!(member_ssrcs(&w.messages(c), 7), std::slice::from_ref(&live));

    // B drops and resumes (v8): what it missed is what it gets.
    w.drop_socket(b);
    let b2 = w.reconnect(b);
    w.client(b2).resume(GUILD, &s[1], &token);
    w.run();
    assert_eq!(w.closed(b2), None);
    // C (v4) resumes too: the map comes again with A's live video.
    w.drop_socket(c);
    let c2 = w.reconnect(c);
    w.client(c2).resume(GUILD, &s[2], &token);
    w.run();
    assert_eq!(
        member_ssrcs(&w.messages(c2), 7),
        std::slice::from_ref(&live)
    );

    // Claiming another member's SSRC closes A with 4002 and tells
    // nobody anything.
    let mut forged = streaming(ready.ssrc, &stream);
    forged.video_ssrc = b_ssrc;
    w.client(a).send(ClientMessage::Video(forged));
    w.run();
    assert_eq!(w.closed(a), Some(Some(4002)));
    assert!(member_ssrcs(&w.messages(b2), 7).is_empty());
    assert_eq!(w.closed(b2), None);
}

#[test]
fn audio_only_clients_get_no_streams_and_may_say_they_send_no_video() {
    let (mut w, token, s) = call(42, &[7, 8]);
    let a = member(&mut w, 8, 7, &s[0], &token);
    let b = member(&mut w, 8, 8, &s[1], &token);
    let ready = first(&mut w, a, |m| match m {
        ServerMessage::Ready(r) => Some(r),
        _ => None,
    });
    assert!(ready.streams.is_empty());
    let ssrc = ready.ssrc;
    assert_eq!(
        member_ssrcs(&w.messages(b), 7).len(),
        1,
        "A's SSRCs at B's join"
    );
    // Discord's clients send op 12 with zeros when they have no video.
    let none = Video {
        audio_ssrc: ssrc,
        video_ssrc: 0,
        rtx_ssrc: 0,
        streams: Vec::new(),
    };
    w.client(a).send(ClientMessage::Video(none.clone()));
    w.run();
    assert_eq!(w.closed(a), None);
    assert!(
        member_ssrcs(&w.messages(b), 7).is_empty(),
        "nothing changed"
    );
    // A video SSRC it was never given is refused.
    w.client(a).send(ClientMessage::Video(Video {
        video_ssrc: ssrc + CORES,
        ..none
    }));
    w.run();
    assert_eq!(w.closed(a), Some(Some(4002)));
}
