//! The voice gateway's flows against [`GatewaySession`].

use std::sync::Arc;
use std::time::Duration;

use control::connection::Protocol;
use protocol::gateway::{ClientDisconnect, ClientsConnect, ServerMessage, SPEAKING_MICROPHONE};
use protocol::lvsp::{Request, VoiceState};
use protocol::Snowflake;
use scripts::Session;
use serde_json::{json, Value};
use shared::Command;

use super::harness::*;

#[test]
fn identify_select_protocol_and_speaking() {
    let (mut w, token, s) = call(1, &[7, 8]);
    let a = member(&mut w, 8, 7, &s[0], &token);
    assert!(matches!(
        &w.messages(a)[..],
        [ServerMessage::Hello(_), ServerMessage::Ready(_)]
    ));
    let ssrc_a = w.client(a).ssrc().expect("Ready");
    assert_eq!(w.client(a).seq_ack(), 1, "Ready is seq 1 at v8");
    assert_eq!(ssrc_a % 2, 0, "channel 100 lives on core 0");

    w.client(a)
        .select_protocol(Some([127, 0, 0, 1].into()), 4000, "aead_aes256_gcm_rtpsize");
    w.run();
    let description = w.client(a).session_description().expect("SD").clone();
    assert_eq!(description.dave_protocol_version, 0);
    let upsert = w.commands.iter().find_map(|c| match c {
        Command::UpsertSession(spec) => Some(spec.clone()),
        _ => None,
    });
    let spec = upsert.expect("the keyed session went to the data plane");
    assert_eq!(
        w.commands[0],
        Command::AnnounceSsrc {
            ssrc: ssrc_a,
            channel: 1,
            user: 7
        },
        "the SSRC is announced first, at Identify"
    );
    assert_eq!(spec.declared, Some("127.0.0.1:4000".parse().unwrap()));
    assert_eq!(
        (spec.ssrc, spec.key),
        (ssrc_a, description.secret_key),
        "the key the client got is the one the data plane uses"
    );

    // A v4 member joins: each learns of the other, and its Speaking
    // reaches the first with its SSRC.
    let b = member(&mut w, 4, 8, &s[1], &token);
    let ssrc_b = w.client(b).ssrc().expect("Ready");
    w.messages(a);
    let joined = ServerMessage::ClientsConnect(ClientsConnect {
        user_ids: vec![Snowflake(7)],
    });
    assert!(w.messages(b).contains(&joined));
    w.client(b).speaking(SPEAKING_MICROPHONE).unwrap();
    w.run();
    assert_eq!(w.messages(a), [speaking(8, ssrc_b, SPEAKING_MICROPHONE)]);
    assert_eq!(w.client(b).seq_ack(), -1, "nothing is numbered at v4");

    // Ten minutes of heartbeats, in no time.
    w.advance(Duration::from_secs(600));
    assert_eq!(w.closed(a), None);
    assert_eq!(w.closed(b), None);
    assert!(w.client(a).last_heartbeat_ack().is_some());
    assert_eq!(w.cx.registry.session_count(), 2);
}

#[test]
fn resume_redelivers_what_was_missed() {
    let (mut w, token, s) = call(2, &[7, 8, 9]);
    let a = member(&mut w, 8, 7, &s[0], &token);
    let b = member(&mut w, 8, 8, &s[1], &token);
    let ssrc_b = w.client(b).ssrc().unwrap();
    w.messages(a);
    let acked = w.client(a).seq_ack();

    w.drop_socket(a);
    assert_eq!(w.cx.registry.parked_count(), 1);
    // While A is away: B speaks three times (only the last is kept for A)
    // and C joins.
    for flags in [1, 0, 1] {
        w.client(b).speaking(flags).unwrap();
        w.run();
    }
    let c = member(&mut w, 8, 9, &s[2], &token);
    w.advance(Duration::from_secs(5));

    let a2 = w.reconnect(a);
    w.client(a2).resume(GUILD, &s[0], &token);
    w.run();
    let now = w.now;
    w.client(a2).start_heartbeat(now, HEARTBEAT);
    let got = w.messages(a2);
    assert_eq!(
        got,
        [
            ServerMessage::Hello(protocol::gateway::Hello {
                v: Some(8),
                heartbeat_interval: HEARTBEAT.into(),
            }),
            ServerMessage::Resumed,
            speaking(8, ssrc_b, 1),
            ServerMessage::ClientsConnect(ClientsConnect {
                user_ids: vec![Snowflake(9)],
            }),
            ssrcs(9, w.gateways[c].1.client.ssrc().unwrap()),
        ]
    );
    assert_eq!(w.client(a2).seq_ack(), acked + 5, "three kept of five sent");
    assert_eq!(w.client(a2).ssrc(), w.gateways[a].1.client.ssrc());
    assert_eq!(w.cx.registry.parked_count(), 0);

    // A second drop, past the grace: A leaves and the others are told.
    w.drop_socket(a2);
    w.messages(c);
    w.advance(RESUME_GRACE - Duration::from_millis(1));
    assert_eq!(w.messages(c), [], "parked until the grace ends");
    w.advance(Duration::from_millis(1));
    let left = ServerMessage::ClientDisconnect(ClientDisconnect {
        user_id: Snowflake(7),
    });
    assert_eq!(w.messages(c), std::slice::from_ref(&left));
    assert!(w.messages(b).ends_with(&[left]));
    let ssrc_a = w.gateways[a].1.client.ssrc().unwrap();
    assert!(w
        .commands
        .contains(&Command::RemoveSession { ssrc: ssrc_a }));
    let a3 = w.reconnect(a2);
    w.client(a3).resume(GUILD, &s[0], &token);
    w.run();
    assert_eq!(w.closed(a3), Some(Some(4006)), "too late to resume");
}

/// A client that closes with 1000 or 1001 left: the others are told at
/// once and the data plane holds its session (nothing to or from it). A
/// Resume within the leave grace brings it back with the same SSRC and
/// key, and the others learn it is back (Clients Connect, its last
/// Speaking). Past the grace it is gone, and told only once. Any other
/// close still parks the session quietly.
#[test]
fn a_normal_close_is_a_leave_that_can_still_resume() {
    let (mut w, token, s) = call(5, &[7, 8]);
    let a = member(&mut w, 8, 7, &s[0], &token);
    let b = member(&mut w, 8, 8, &s[1], &token);
    let ssrc_a = w.client(a).ssrc().unwrap();
    w.client(a)
        .select_protocol(Some([127, 0, 0, 1].into()), 4000, "aead_aes256_gcm_rtpsize");
    w.client(a).speaking(1).unwrap();
    w.run();
    let key = w.client(a).session_description().unwrap().secret_key;
    w.messages(a);
    w.messages(b);
    w.commands.clear();
    let left = ServerMessage::ClientDisconnect(ClientDisconnect {
        user_id: Snowflake(7),
    });

    w.close_socket(a, 1000);
    assert_eq!(w.messages(b), std::slice::from_ref(&left), "at once");
    assert_eq!(
        w.commands,
        [Command::HoldSession {
            ssrc: ssrc_a,
            held: true
        }]
    );
    assert_eq!(w.cx.registry.parked_count(), 1);
    // B speaks while A is away: kept for A's resume.
    w.client(b).speaking(1).unwrap();
    w.run();
    w.advance(LEAVE_GRACE - Duration::from_secs(1));
    let a2 = w.reconnect(a);
    w.client(a2).resume(GUILD, &s[0], &token);
    w.run();
    assert!(w.client(a2).resumed());
    assert_eq!(w.client(a2).ssrc(), Some(ssrc_a), "the same SSRC");
    let ssrc_b = w.client(b).ssrc().unwrap();
    assert!(w.messages(a2).contains(&speaking(8, ssrc_b, 1)));
    assert_eq!(
        w.messages(b),
        [
            ServerMessage::ClientsConnect(ClientsConnect {
                user_ids: vec![Snowflake(7)],
            }),
            ssrcs(7, ssrc_a),
            speaking(7, ssrc_a, 1),
        ],
        "A is back, and whose SSRC is whose"
    );
    assert_eq!(
        w.commands[1..],
        [Command::HoldSession {
            ssrc: ssrc_a,
            held: false
        }],
        "the same key: the data plane only lets it back in"
    );
    assert!(!w
        .commands
        .iter()
        .any(|c| matches!(c, Command::UpsertSession(s) if s.key != key)));
    assert_eq!(w.cx.registry.parked_count(), 0);
    // The first leave's grace ends without effect.
    w.advance(Duration::from_secs(2));
    assert!(w.messages(b).is_empty());
    assert_eq!(w.cx.registry.session_count(), 2);

    // 1001, and no resume: gone after the grace, told once.
    w.commands.clear();
    w.close_socket(a2, 1001);
    assert_eq!(w.messages(b), std::slice::from_ref(&left));
    w.advance(LEAVE_GRACE + Duration::from_millis(1));
    assert!(w.messages(b).is_empty(), "told once");
    assert!(w
        .commands
        .contains(&Command::RemoveSession { ssrc: ssrc_a }));
    assert_eq!(w.cx.registry.session_count(), 1);
    let a3 = w.reconnect(a2);
    w.client(a3).resume(GUILD, &s[0], &token);
    w.run();
    assert_eq!(w.closed(a3), Some(Some(4006)), "too late to resume");

    // Identify again after a leave: a join like any other.
    let a4 = member(&mut w, 8, 7, &s[0], &token);
    let ssrc_a4 = w.client(a4).ssrc().expect("Ready");
    assert_eq!(
        w.messages(b),
        [
            ServerMessage::ClientsConnect(ClientsConnect {
                user_ids: vec![Snowflake(7)],
            }),
            ssrcs(7, ssrc_a4)
        ]
    );
    // Abnormal ends park quietly, whatever the client's code.
    for code in [1005, 1006, 4009, 4000] {
        let a5 = w.gateways.len() - 1;
        w.close_socket(a5, code);
        assert!(w.messages(b).is_empty(), "{code}: parked, not left");
        assert_eq!(w.cx.registry.parked_count(), 1);
        let again = w.reconnect(a5);
        w.client(again).resume(GUILD, &s[0], &token);
        w.run();
        assert!(w.client(again).resumed(), "{code}");
        assert!(w.messages(b).is_empty(), "{code}: nobody saw it go");
    }
}

/// A member who left and has not resumed is not in the call for one who
/// joins meanwhile.
#[test]
fn a_member_who_left_is_not_announced_to_newcomers() {
    let (mut w, token, s) = call(6, &[7, 8]);
    let a = member(&mut w, 8, 7, &s[0], &token);
    w.close_socket(a, 1000);
    let b = member(&mut w, 8, 8, &s[1], &token);
    assert!(
        !w.messages(b)
            .iter()
            .any(|m| matches!(m, ServerMessage::ClientsConnect(_))),
        "A left"
    );
    let a2 = w.reconnect(a);
    w.client(a2).resume(GUILD, &s[0], &token);
    w.run();
    let ssrc_a = w.client(a2).ssrc().unwrap();
    assert_eq!(
        w.messages(b),
        [
            ServerMessage::ClientsConnect(ClientsConnect {
                user_ids: vec![Snowflake(7)],
            }),
            ssrcs(7, ssrc_a)
        ]
    );
}

#[test]
fn silence_is_4009_and_the_session_can_still_resume() {
    let (mut w, token, s) = call(3, &[7]);
    let a = w.connect(8);
    w.identify(a, Snowflake(7), &s[0], &token);
    // No heartbeats: closed after the interval and a half and a second.
    w.advance(Duration::from_millis(2400));
    assert_eq!(w.closed(a), None);
    w.advance(Duration::from_millis(200));
    assert_eq!(w.closed(a), Some(Some(4009)));
    assert_eq!(w.cx.registry.parked_count(), 1, "4009 is resumable");
    let a2 = w.reconnect(a);
    w.client(a2).resume(GUILD, &s[0], &token);
    w.run();
    assert!(w.client(a2).resumed());
}

/// Every close code the gateway sends, each from the state that earns it.
#[test]
fn every_gateway_close_code() {
    let (mut w, token, s) = call(4, &[7, 8, 9]);
    let identify = |user: &str, session: &str, server: &str, token: &str| {
        format!(
            r#"{{"op":0,"d":{{"server_id":"{server}","user_id":"{user}","session_id":"{session}","token":"{token}"}}}}"#
        )
    };
    let fresh = |w: &mut World, raw: &str| {
        let i = w.connect(8);
        w.send_raw(i, raw);
        w.closed(i)
    };
    assert_eq!(fresh(&mut w, r#"{"op":0,"d":5}"#), Some(Some(4002)));
    assert_eq!(
        fresh(&mut w, r#"{"op":5,"d":{"speaking":1}}"#),
        Some(Some(4003))
    );
    let wrong = identify("7", &s[0], "1", "not-the-token");
    assert_eq!(fresh(&mut w, &wrong), Some(Some(4004)));
    let resume = format!(
        r#"{{"op":7,"d":{{"server_id":"1","session_id":"gone","token":"{token}","seq_ack":0}}}}"#
    );
    assert_eq!(fresh(&mut w, &resume), Some(Some(4006)));
    let unknown_server = identify("7", &s[0], "555", &token);
    assert_eq!(fresh(&mut w, &unknown_server), Some(Some(4011)));
    let v9 = w.connect(9);
    assert_eq!(w.closed(v9), Some(Some(4020)));

    let a = member(&mut w, 8, 7, &s[0], &token);
    w.send_raw(a, r#"{"op":99,"d":{}}"#);
    assert_eq!(w.closed(a), Some(Some(4001)));
    let a = member(&mut w, 8, 7, &s[0], &token);
    w.send_raw(a, &identify("7", &s[0], "1", &token));
    assert_eq!(w.closed(a), Some(Some(4005)));

    let b = member(&mut w, 8, 8, &s[1], &token);
    w.send_raw(
        b,
        r#"{"op":1,"d":{"protocol":"tcp","data":{"address":"127.0.0.1","port":1,"mode":"aead_aes256_gcm_rtpsize"}}}"#,
    );
    assert_eq!(w.closed(b), Some(Some(4012)));
    let b = member(&mut w, 8, 8, &s[1], &token);
    w.client(b).select_protocol(None, 1, "xsalsa20_poly1305");
    w.run();
    assert_eq!(
        w.closed(b),
        Some(Some(4016)),
        "legacy modes are off by default"
    );
    let b = member(&mut w, 8, 8, &s[1], &token);
    for _ in 0..40 {
        w.client(b).speaking(1).unwrap();
    }
    w.run();
    assert_eq!(w.closed(b), Some(Some(4021)));
    assert_eq!(w.cx.registry.session_count(), 0, "a flood is not resumable");

    let c = member(&mut w, 8, 9, &s[2], &token);
    let second = member(&mut w, 8, 9, &s[2], &token);
    assert_eq!(
        w.closed(c),
        Some(Some(4006)),
        "replaced by a second Identify"
    );
    w.litecord[0]
        .client
        .request(Request::VoiceStateDestroy(VoiceState {
            user_id: Snowflake(9),
            channel_id: CHANNEL,
            guild_id: Some(GUILD),
        }));
    w.run();
    assert_eq!(w.closed(second), Some(Some(4014)));

    // Heartbeats alone do not hold a connection open; silence ends one
    // sooner.
    let quiet = w.connect(8);
    let heartbeating = w.connect(8);
    let now = w.now;
    w.client(heartbeating).start_heartbeat(now, HEARTBEAT);
    w.advance(Duration::from_secs(6));
    assert_eq!(w.closed(quiet), Some(Some(4009)));
    assert_eq!(
        w.closed(heartbeating),
        Some(Some(4003)),
        "no Identify in time"
    );
}

/// What each refused frame (after those before it) closes with: decoding,
/// the ops allowed before Identify, credentials, Resume's refusals, Select
/// Protocol's checks. `CLOSE` drops the socket; the next frames go on a
/// new one.
#[test]
fn refused_frames_close_with_the_documented_code() {
    let cases: &[(&[&str], u16)] = &[
        (&["nope"], 4002),
        (&[r#"{"d":1}"#], 4002),
        // Before Identify only Identify, Resume and Heartbeat: any other
        // op, known or not, is 4003.
        (&[r#"{"op":99,"d":{}}"#], 4003),
        (&[r#"{"op":2,"d":{}}"#], 4003),
        (&[r#"{"op":12,"d":{}}"#], 4003),
        (&["IDENTIFY", r#"{"op":99,"d":{}}"#], 4001),
        (&["IDENTIFY", r#"{"op":2,"d":{}}"#], 4001),
        (&[r#"{"op":3,"d":"nonce"}"#], 4002),
        (&[r#"{"op":3,"d":{"t":"1"}}"#], 4002),
        (&[r#"{"op":5,"d":{"speaking":1}}"#], 4003),
        (&[r#"{"op":1,"d":{"protocol":"udp"}}"#], 4003),
        (&[r#"{"op":0,"d":{"server_id":"1"}}"#], 4002),
        (
            &[r#"{"op":0,"d":{"server_id":"1","user_id":"7","session_id":"x","token":"y"}}"#],
            4004,
        ),
        (
            &[r#"{"op":0,"d":{"server_id":"2","user_id":"7","session_id":"x","token":"y"}}"#],
            4011,
        ),
        (
            &[r#"{"op":7,"d":{"server_id":"1","session_id":"x","token":"y"}}"#],
            4006,
        ),
        (&["IDENTIFY", "CLOSE", "RESUME-BADTOKEN"], 4004),
        (&["IDENTIFY", "IDENTIFY"], 4005),
        (&["IDENTIFY", "RESUME"], 4005),
        (&["RESUME"], 4006), // never identified
        (
            &[
                "IDENTIFY",
                r#"{"op":1,"d":{"protocol":"webrtc","data":{}}}"#,
            ],
            4012,
        ),
        (
            &[
                "IDENTIFY",
                r#"{"op":1,"d":{"protocol":"udp","data":{"mode":"plain"}}}"#,
            ],
            4016,
        ),
        (&["IDENTIFY", r#"{"op":5,"d":{"speaking":"loud"}}"#], 4002),
    ];
    for (frames, code) in cases {
        let (mut w, token, s) = call(10, &[7]);
        let mut i = w.connect(8);
        for frame in *frames {
            let text = match *frame {
                "CLOSE" => {
                    w.drop_socket(i);
                    i = w.connect(8);
                    continue;
                }
                "IDENTIFY" => identify_json("7", &s[0], "1", &token),
                "RESUME-BADTOKEN" => resume_json(&s[0], "nope", 0),
                "RESUME" => resume_json(&s[0], &token, 0),
                other => other.to_owned(),
            };
            w.send_raw(i, &text);
        }
        assert_eq!(w.closed(i), Some(Some(*code)), "{frames:?}");
        let r = &w.cx.registry;
        assert_eq!(
            r.session_count() - r.parked_count(),
            0,
            "{frames:?}: nothing attached"
        );
    }
}

/// Speaking reaches every other member but not the speaker, and a member
/// who joins later learns who is there and which SSRC is whose.
#[test]
fn speaking_reaches_the_others_and_later_joiners() {
    let (mut w, token, s) = call(11, &[7, 8, 9]);
    let a = member(&mut w, 4, 7, &s[0], &token);
    let b = member(&mut w, 4, 8, &s[1], &token);
    let ssrc_a = w.client(a).ssrc().unwrap();
    w.messages(a);
    w.messages(b);
    w.client(a).speaking(SPEAKING_MICROPHONE).unwrap();
    w.run();
    assert_eq!(w.messages(a), [], "not echoed to the speaker");
    assert_eq!(w.messages(b), [speaking(7, ssrc_a, SPEAKING_MICROPHONE)]);
    let c = member(&mut w, 4, 9, &s[2], &token);
    let joined = ServerMessage::ClientsConnect(ClientsConnect {
        user_ids: vec![Snowflake(7), Snowflake(8)],
    });
    let ssrc_b = w.client(b).ssrc().unwrap();
    assert_eq!(
        w.messages(c)[2..],
        [
            joined,
            ssrcs(7, ssrc_a),
            ssrcs(8, ssrc_b),
            speaking(7, ssrc_a, SPEAKING_MICROPHONE)
        ],
        "after Hello and Ready"
    );
    // A boolean `speaking` (old clients) is accepted too.
    w.send_raw(b, r#"{"op":5,"d":{"speaking":true,"delay":0}}"#);
    assert_eq!(w.closed(b), None);
}

/// Ops accepted and ignored (video, client flags, DAVE) and binary frames
/// after Identify are not fatal.
#[test]
fn ignored_ops_and_binary_frames_are_not_fatal() {
    let (mut w, token, s) = call(12, &[7]);
    let a = member(&mut w, 8, 7, &s[0], &token);
    for frame in [
        r#"{"op":12,"d":{}}"#,
        r#"{"op":16,"d":{}}"#,
        r#"{"op":24,"d":{}}"#,
    ] {
        w.send_raw(a, frame);
    }
    let now = w.now;
    // A server-to-client binary op from a client: ignored, like op 24.
    let ignored = w.gateways[a].1.server.handle_binary(now, &[25, 0]);
    assert!(ignored.is_none());
    w.run();
    w.advance(Duration::from_secs(10));
    assert_eq!(w.closed(a), None);
    assert_eq!(w.frames(a).iter().filter(|f| f["op"] != 6).count(), 2);
}

/// The websocket of a v8 member dies with its Session Description in
/// flight; meanwhile another member speaks and a third joins. The member
/// resumes on a new socket and gets every numbered message after its
/// `seq_ack` (the Session Description included), with the same SSRC and
/// nothing removed from the data plane; numbering goes on from there. With
/// the resume buffer at 4, an older `seq_ack` is refused.
#[test]
fn resume_redelivers_replies_lost_with_the_socket() {
    let (mut w, token, s) = call(13, &[7, 8, 9]);
    w.cx.registry.set_resume(RESUME_GRACE, 4);
    let a = member(&mut w, 8, 7, &s[0], &token);
    let b = member(&mut w, 8, 8, &s[1], &token);
    assert_eq!(w.client(a).seq_ack(), 3, "Ready, then ops 11 and 12");
    w.client(a)
        .select_protocol(Some([127, 0, 0, 1].into()), 4000, "aead_aes256_gcm_rtpsize");
    w.lose_replies(a);
    assert_eq!(w.cx.registry.parked_count(), 1);
    let pushed = w.commands.iter().rev().find_map(|c| match c {
        Command::UpsertSession(spec) => Some(spec.key),
        _ => None,
    });
    w.commands.clear();
    w.messages(b);
    w.run();
    assert_eq!(
        w.messages(b),
        [],
        "no Client Disconnect for a parked session"
    );
    w.client(b).speaking(1).unwrap();
    member(&mut w, 8, 9, &s[2], &token);

    let a2 = w.reconnect(a);
    w.frames(a2);
    w.client(a2).resume(GUILD, &s[0], &token);
    w.run();
    let frames = w.frames(a2);
    assert_eq!(frames[0], json!({"op": 9, "d": null}));
    let numbered: Vec<(u64, u64)> = frames[1..]
        .iter()
        .map(|f| (f["op"].as_u64().unwrap(), f["seq"].as_u64().unwrap()))
        .collect();
    assert_eq!(numbered, [(4, 4), (5, 5), (11, 6), (12, 7)], "{frames:?}");
    let key = w
        .client(a2)
        .session_description()
        .expect("re-delivered")
        .secret_key;
    assert_eq!(Some(key), pushed, "the key the data plane has");
    assert!(
        !w.commands
            .iter()
            .any(|c| matches!(c, Command::RemoveSession { .. })),
        "media never left the data plane: {:?}",
        w.commands
    );
    assert_eq!(w.client(a2).ssrc(), w.gateways[a].1.client.ssrc());
    w.client(a2)
        .select_protocol(None, 4000, "aead_aes256_gcm_rtpsize");
    w.run();
    assert_eq!(w.frames(a2)[0]["seq"], 8, "numbering goes on");

    w.drop_socket(a2);
    let a3 = w.connect(8);
    w.send_raw(a3, &resume_json(&s[0], &token, 1));
    assert_eq!(w.closed(a3), Some(Some(4006)), "seq 2 is no longer kept");
}

/// A session identified at v8 cannot resume at a version that numbers
/// nothing, nor the other way round (found by the gateway fuzz target);
/// versions that number alike may resume each other.
#[test]
fn resume_at_a_version_with_other_numbering_is_4006() {
    for (identified_at, resumed_at) in [(8, 1), (8, 4), (4, 8)] {
        let (mut w, token, s) = call(14, &[7]);
        let a = member(&mut w, identified_at, 7, &s[0], &token);
        let b = w.connect(resumed_at);
        w.send_raw(b, &resume_json(&s[0], &token, -1));
        assert_eq!(
            w.closed(b),
            Some(Some(4006)),
            "v{identified_at} resumed at v{resumed_at}"
        );
        assert_eq!(w.closed(a), None, "the first connection keeps it");
    }
    let (mut w, token, s) = call(14, &[7]);
    let a = member(&mut w, 4, 7, &s[0], &token);
    w.drop_socket(a);
    let b = w.connect(1);
    w.client(b).resume(GUILD, &s[0], &token);
    w.run();
    assert!(w.client(b).resumed());
}

/// A Resume on a new socket takes the session from an old socket the
/// server has not seen die; that socket closing later changes nothing.
#[test]
fn a_resume_takes_over_a_socket_not_yet_seen_dead() {
    let (mut w, token, s) = call(15, &[7]);
    let a = member(&mut w, 8, 7, &s[0], &token);
    let a2 = w.reconnect(a);
    w.client(a2).resume(GUILD, &s[0], &token);
    w.run();
    assert_eq!(w.closed(a), Some(Some(4006)));
    assert!(w.client(a2).resumed());
    w.drop_socket(a);
    assert_eq!(w.cx.registry.parked_count(), 0);
    assert_eq!(w.cx.registry.session_count(), 1);
}

/// Litecord moves a member (VOICE_STATE_DESTROY, then a create in another
/// channel): 4014 at once, the others are told, its SSRC leaves the data
/// plane, and the new voice state is a new session with a new SSRC.
#[test]
fn an_lvsp_move_closes_4014_and_gets_a_new_session() {
    let (mut w, token, s) = call(16, &[7, 8]);
    let a = member(&mut w, 4, 7, &s[0], &token);
    let b = member(&mut w, 4, 8, &s[1], &token);
    let ssrc = w.client(a).ssrc().unwrap();
    w.messages(b);
    let (moved_to, user) = (Snowflake(200), Snowflake(7));
    w.litecord[0]
        .client
        .request(Request::VoiceStateDestroy(VoiceState {
            user_id: user,
            channel_id: CHANNEL,
            guild_id: Some(GUILD),
        }));
    w.run();
    assert_eq!(w.closed(a), Some(Some(4014)));
    let left = ServerMessage::ClientDisconnect(ClientDisconnect { user_id: user });
    assert_eq!(w.messages(b), [left]);
    assert!(w.commands.contains(&Command::RemoveSession { ssrc }));
    let token2 = w.channel(0, moved_to);
    let moved = w.voice_state_in(0, user, moved_to);
    assert_ne!(moved, s[0]);
    let a2 = member(&mut w, 4, 7, &moved, &token2);
    assert!(w.client(a2).ssrc().is_some_and(|s| s != ssrc));
}

/// Ready offers exactly the configured modes; Select Protocol with another
/// is 4016.
#[test]
fn only_the_configured_modes_are_offered() {
    let (mut w, token, s) = call(30, &[7]);
    Arc::make_mut(&mut w.gateway).modes = vec![shared::Mode::XSalsa20Poly1305];
    let a = w.connect(4);
    w.identify(a, Snowflake(7), &s[0], &token);
    assert_eq!(
        w.client(a).ready().expect("Ready").modes,
        ["xsalsa20_poly1305"]
    );
    w.client(a)
        .select_protocol(None, 4000, "aead_aes256_gcm_rtpsize");
    w.run();
    assert_eq!(w.closed(a), Some(Some(4016)));
}

/// A Heartbeat ACK has the version's shape and carries back only the
/// nonce (never larger than what earned it); a nonce of another shape is
/// 4002.
#[test]
fn heartbeat_acks_by_version_carry_only_the_nonce() {
    let (mut w, token, s) = call(31, &[7, 8]);
    let v4 = w.connect(4);
    w.identify(v4, Snowflake(7), &s[0], &token);
    let v8 = w.connect(8);
    w.identify(v8, Snowflake(8), &s[1], &token);
    w.frames(v4);
    w.frames(v8);
    let blob = "y".repeat(1000);
    for (i, sent, ack) in [
        (v4, json!(1501184119561u64), json!(1501184119561u64)),
        (v4, json!(u64::MAX), json!(u64::MAX)),
        (v8, json!({"t": 99, "seq_ack": 1}), json!({"t": 99})),
        (
            v8,
            json!({"t": -5, "seq_ack": 2, "extra": blob}),
            json!({"t": -5}),
        ),
    ] {
        w.send_raw(i, &json!({"op": 3, "d": sent}).to_string());
        assert_eq!(w.frames(i), [json!({"op": 6, "d": ack})], "{sent}");
    }
    for (version, d) in [
        (4, json!({"t": 1})),
        (4, json!(blob)),
        (4, json!(1.5)),
        (4, Value::Null),
        (8, json!(5)),
        (8, json!({"t": [1, 2]})),
        (8, json!({"t": 1.5})),
    ] {
        let c = w.connect(version);
        w.send_raw(c, &json!({"op": 3, "d": d}).to_string());
        assert_eq!(w.closed(c), Some(Some(4002)), "v{version} {d}");
    }
}

/// At v8 every message but Hello, Heartbeat ACK and Resumed is numbered,
/// in order per session; below v8 nothing is.
#[test]
fn v8_messages_carry_seq_in_order() {
    let (mut w, token, s) = call(32, &[7, 8, 9]);
    let a = member(&mut w, 8, 7, &s[0], &token);
    let b = member(&mut w, 8, 8, &s[1], &token);
    let seqs = |frames: Vec<Value>| -> Vec<(Value, Value)> {
        frames
            .into_iter()
            .filter(|f| f["op"] != 6)
            .map(|f| (f["op"].clone(), f["seq"].clone()))
            .collect()
    };
    let none = Value::Null;
    // A: Hello, Ready, then B's join (ops 11 and 12); B: Hello, Ready,
    // then who was there (ops 11 and 12).
    for i in [a, b] {
        assert_eq!(
            seqs(w.frames(i)),
            [
                (json!(8), none.clone()),
                (json!(2), json!(1)),
                (json!(11), json!(2)),
                (json!(12), json!(3))
            ]
        );
    }
    w.client(a)
        .select_protocol(None, 4000, "aead_aes256_gcm_rtpsize");
    w.run();
    assert_eq!(seqs(w.frames(a)), [(json!(4), json!(4))]);
    let c = member(&mut w, 4, 9, &s[2], &token);
    let frames = w.frames(c);
    assert!(frames.len() >= 3);
    assert!(frames.iter().all(|f| f.get("seq").is_none()), "{frames:?}");
}

/// Before Identify a connection is cheap to refuse: frames over 4 KiB are
/// closed unparsed, a heartbeat is answered without the registry, a binary
/// frame is 4003. Once identified, large frames are the socket layer's
/// business.
#[test]
fn before_identify_only_small_frames_and_three_ops() {
    let (mut w, token, s) = call(33, &[7]);
    let pad = "x".repeat(control::PRE_AUTH_MAX_MESSAGE);
    let big = json!({"op": 3, "d": {"t": 1}, "pad": pad}).to_string();
    let c = w.connect(8);
    w.send_raw(c, &big);
    assert_eq!(w.closed(c), Some(Some(4002)));
    let c = w.connect(8);
    w.frames(c);
    let now = w.now;
    let server = &mut w.gateways[c].1.server;
    assert!(
        server.handle_text(now, r#"{"op":3,"d":{"t":7}}"#).is_none(),
        "answered without the registry"
    );
    w.run();
    assert_eq!(w.frames(c), [json!({"op": 6, "d": {"t": 7}})]);
    w.gateways[c].1.server.handle_binary(now, &[26, 0]);
    w.run();
    assert_eq!(w.closed(c), Some(Some(4003)));
    let a = w.connect(8);
    w.identify(a, Snowflake(7), &s[0], &token);
    w.frames(a);
    w.send_raw(a, &big);
    assert_eq!(w.frames(a), [json!({"op": 6, "d": {"t": 1}})]);
}

/// A close frame's reason is a fixed text: it never repeats what the
/// client sent.
#[test]
fn close_reasons_never_echo_client_text() {
    let (mut w, token, s) = call(34, &[7]);
    let evil = "EVIL<script>";
    let cases = [
        format!("{{\"op\":1,\"d\":{{\"protocol\":\"{evil}\",\"data\":{{}}}}}}"),
        format!("{{\"op\":1,\"d\":{{\"protocol\":\"udp\",\"data\":{{\"mode\":\"{evil}\"}}}}}}"),
        format!("{{\"op\":\"{evil}\"}}"),
        format!("{{\"op\":99,\"d\":\"{evil}\"}}"),
        format!("{evil} not json"),
        format!("{{\"op\":5,\"d\":{{\"speaking\":\"{evil}\"}}}}"),
    ];
    let reason = |frames: Vec<Value>| frames.last().expect("closed")["reason"].clone();
    for m in &cases {
        let c = w.connect(8);
        w.identify(c, Snowflake(7), &s[0], &token);
        w.send_raw(c, m);
        assert!(w.closed(c).is_some(), "{m}");
        let why = reason(w.frames(c));
        assert!(!why.to_string().contains("EVIL"), "{why} for {m}");
    }
    let c = w.connect(8);
    w.send_raw(
        c,
        &format!("{{\"op\":0,\"d\":{{\"server_id\":\"{evil}\"}}}}"),
    );
    assert!(!reason(w.frames(c)).to_string().contains("EVIL"));
}

/// Identifying again on new sockets does not refill the message budget:
/// it is the voice session's, kept in the registry. It refills with time,
/// and an unidentified socket has its own.
#[test]
fn the_budget_belongs_to_the_session_not_the_socket() {
    let (mut w, token, s) = call(35, &[7]);
    let hb = r#"{"op":3,"d":{"t":1,"seq_ack":0}}"#;
    let acked = |frames: &[Value]| frames.iter().filter(|f| f["op"] == 6).count();
    let identify = identify_json("7", &s[0], "1", &token);
    let mut c = w.connect(8);
    w.send_raw(c, &identify); // 1 of the burst of 20
    let mut accepted = 1;
    for _ in 0..10 {
        // 5 messages per socket, then a new socket identifies again.
        for _ in 0..5 {
            w.send_raw(c, hb);
        }
        accepted += acked(&w.frames(c));
        w.drop_socket(c);
        c = w.connect(8);
        w.frames(c);
        w.send_raw(c, &identify);
        let frames = w.frames(c);
        if frames[0]["op"] == 2 {
            accepted += 1;
        } else {
            assert_eq!(frames[0]["close"], 4021, "refused only for the budget");
            break;
        }
    }
    assert_eq!(accepted, 20, "one burst across every socket");
    w.advance(Duration::from_secs(1));
    let c = w.connect(8);
    w.send_raw(c, &identify);
    assert!(w.client(c).ready().is_some(), "refilled with time");
    let idle = w.connect(8);
    for _ in 0..25 {
        w.send_raw(idle, hb);
    }
    assert_eq!(acked(&w.frames(idle)), 20);
    assert_eq!(w.closed(idle), Some(Some(4021)));
}

/// A member who speaks and rejoins in a loop cannot push a parked
/// member's missed messages out of its resume buffer (4 here): only its
/// latest Speaking and its latest join or leave are kept, while live
/// members get everything.
#[test]
fn a_flooding_member_cannot_evict_a_parked_members_messages() {
    let (mut w, token, s) = call(36, &[7, 8, 9]);
    w.cx.registry.set_resume(Duration::from_secs(600), 4);
    let parked = member(&mut w, 8, 7, &s[0], &token);
    let mut flooder = member(&mut w, 8, 8, &s[1], &token);
    let witness = member(&mut w, 8, 9, &s[2], &token);
    w.messages(witness);
    w.drop_socket(parked);
    let (mut seen_by_witness, mut spoke_as) = (0, 0);
    for round in 0..50u32 {
        w.advance(Duration::from_secs(1)); // the budget refills
        for flags in 1..=3 {
            w.client(flooder).speaking(flags + round).unwrap();
        }
        w.run();
        spoke_as = w.client(flooder).ssrc().unwrap();
        // Leave for good (4002 is not resumable), then join again.
        w.send_raw(flooder, "garbage");
        assert_eq!(w.closed(flooder), Some(Some(4002)));
        flooder = member(&mut w, 8, 8, &s[1], &token);
        seen_by_witness += w.messages(witness).len();
    }
    assert!(seen_by_witness >= 250, "live members get everything");
    let back = w.reconnect(parked);
    w.client(back).resume(GUILD, &s[0], &token);
    w.run();
    let got = w.messages(back);
    assert_eq!(
        got[1..],
        [
            ServerMessage::Resumed,
            speaking(8, spoke_as, 3 + 49),
            ServerMessage::ClientsConnect(ClientsConnect {
                user_ids: vec![Snowflake(8)],
            }),
            ssrcs(8, w.client(flooder).ssrc().unwrap()),
        ],
        "after Hello: the latest Speaking, then the latest join and SSRCs"
    );
}

/// Below v8 nothing is numbered or kept, so a Resume there re-sends the
/// map instead: who is in the call (op 11) and each speaker's SSRC and
/// latest flags (op 5), after Resumed. A v4 client that resumes can
/// attribute the audio of members who spoke or joined while it was away.
#[test]
fn a_resume_below_v8_hears_who_is_in_the_call_again() {
    let (mut w, token, s) = call(21, &[7, 8, 9]);
    let a = member(&mut w, 4, 7, &s[0], &token);
    let b = member(&mut w, 8, 8, &s[1], &token);
    w.client(b).speaking(1).unwrap();
    w.run();
    let ssrc_b = w.client(b).ssrc().unwrap();
    w.drop_socket(a);
    // While A is away: B speaks with other flags, C joins and speaks.
    w.client(b).speaking(5).unwrap();
    let c = member(&mut w, 8, 9, &s[2], &token);
    w.client(c).speaking(1).unwrap();
    w.run();
    let ssrc_c = w.client(c).ssrc().unwrap();

    let a2 = w.reconnect(a);
    w.client(a2).resume(GUILD, &s[0], &token);
    w.run();
    let got: Vec<ServerMessage> = w
        .messages(a2)
        .into_iter()
        .filter(|m| !matches!(m, ServerMessage::Hello(_)))
        .collect();
    assert_eq!(
        got,
        [
            ServerMessage::Resumed,
            ServerMessage::ClientsConnect(protocol::gateway::ClientsConnect {
                user_ids: vec![Snowflake(8), Snowflake(9)],
            }),
            ssrcs(8, ssrc_b),
            ssrcs(9, ssrc_c),
            speaking(8, ssrc_b, 5),
            speaking(9, ssrc_c, 1),
        ]
    );
    assert_eq!(w.closed(a2), None);
}

/// A member that told its SSRC with `speaking: 0` (discord.py does, right
/// after Session Description) is named to members who join later too:
/// discord.js maps SSRCs from op 5 alone, and would drop its audio until
/// it next spoke.
#[test]
fn a_silent_op_5_is_replayed_to_joiners() {
    let (mut w, token, s) = call(22, &[7, 8]);
    let a = member(&mut w, 8, 7, &s[0], &token);
    w.client(a).speaking(0).unwrap();
    w.run();
    let ssrc_a = w.client(a).ssrc().unwrap();
    let b = member(&mut w, 8, 8, &s[1], &token);
    let got = w.messages(b);
    assert!(got.contains(&speaking(7, ssrc_a, 0)), "{got:?}");
}
