use serde_json::{json, Value};

use super::*;

fn value(text: &str) -> Value {
    serde_json::from_str(text).expect("json")
}

fn decode(text: &str, version: u8) -> Result<ClientMessage, DecodeError> {
    ClientMessage::decode(text, version)
}

#[test]
fn opcodes_and_close_codes_are_numbered_as_documented() {
    for (i, op) in Opcode::ALL.iter().copied().enumerate() {
        assert_eq!(op as usize, i);
        assert_eq!(Opcode::from_code(i as u64), Some(op));
    }
    assert_eq!(Opcode::ALL.len(), 32);
    assert_eq!(Opcode::from_code(32), None);
    assert_eq!(Opcode::from_code(u64::MAX), None);
    let codes: Vec<u16> = CloseCode::ALL.iter().copied().map(u16::from).collect();
    assert_eq!(
        codes,
        [
            4001, 4002, 4003, 4004, 4005, 4006, 4009, 4011, 4012, 4014, 4015, 4016, 4017, 4020,
            4021, 4022
        ]
    );
    for c in CloseCode::ALL.iter().copied() {
        assert_eq!(CloseCode::from_code(c as u64), Some(c));
    }
    assert_eq!(CloseCode::from_code(4000), None);
}

#[test]
fn identify_accepts_snowflakes_as_strings_or_integers() {
    let m = decode(
        r#"{"op":0,"d":{"server_id":"41771983423143936","user_id":104694319306248192,
            "session_id":"s","token":"t","max_dave_protocol_version":1,"video":true}}"#,
        8,
    );
    assert_eq!(
        m,
        Ok(ClientMessage::Identify(Identify {
            server_id: Snowflake(41771983423143936),
            user_id: Snowflake(104694319306248192),
            session_id: "s".into(),
            token: "t".into(),
            max_dave_protocol_version: Some(1),
            video: true,
            streams: Vec::new(),
        }))
    );
    for bad in [
        r#"{"op":0,"d":{"server_id":"1"}}"#,
        r#"{"op":0,"d":{"server_id":"x","user_id":"7","session_id":"s","token":"t"}}"#,
        r#"{"op":0,"d":{"server_id":"1","user_id":7,"session_id":1,"token":"t"}}"#,
        r#"{"op":0,"d":{"server_id":"1","user_id":"7","session_id":"s","token":"t",
            "max_dave_protocol_version":"1"}}"#,
        r#"{"op":0,"d":["1","7","s","t"]}"#,
        r#"{"op":0}"#,
    ] {
        let e = decode(bad, 8).unwrap_err();
        assert_eq!(e.close_code(), CloseCode::DecodeError, "{bad}");
    }
}

#[test]
fn envelope_errors_and_opcode_refusals() {
    for (text, code) in [
        ("nope", CloseCode::DecodeError),
        ("[0]", CloseCode::DecodeError),
        (r#"{"d":1}"#, CloseCode::DecodeError),
        (r#"{"op":"0","d":{}}"#, CloseCode::DecodeError),
        (r#"{"op":99,"d":{}}"#, CloseCode::UnknownOpcode),
        (r#"{"op":2,"d":{}}"#, CloseCode::UnknownOpcode),
        (r#"{"op":8,"d":{}}"#, CloseCode::UnknownOpcode),
        (
            r#"{"op":1,"d":{"protocol":"webrtc","data":"sdp"}}"#,
            CloseCode::UnknownProtocol,
        ),
        (r#"{"op":1,"d":{"protocol":"udp"}}"#, CloseCode::DecodeError),
        (
            r#"{"op":1,"d":{"protocol":"udp","data":{}}}"#,
            CloseCode::DecodeError,
        ),
        (
            r#"{"op":1,"d":{"data":{"mode":"x"}}}"#,
            CloseCode::DecodeError,
        ),
        (
            r#"{"op":5,"d":{"speaking":"loud"}}"#,
            CloseCode::DecodeError,
        ),
        (r#"{"op":5,"d":{}}"#, CloseCode::DecodeError),
        (
            r#"{"op":7,"d":{"server_id":"1","session_id":"s","token":"t","seq_ack":"1"}}"#,
            CloseCode::DecodeError,
        ),
    ] {
        let e = decode(text, 8).unwrap_err();
        assert_eq!(e.close_code(), code, "{text}");
        assert!(!e.reason().contains("webrtc") && !e.reason().contains("loud"));
    }
    // Ops the server accepts without reading them: video, client flags,
    // DAVE ops only the server sends (and 26, binary only).
    for op in [10, 14, 15, 18, 20, 21, 26] {
        let m = decode(&format!(r#"{{"op":{op},"d":[1,2,3]}}"#), 8).unwrap();
        assert_eq!(m, ClientMessage::Ignored(Opcode::from_code(op).unwrap()));
    }
    // DAVE's client JSON ops are read.
    let ready = decode(r#"{"op":23,"d":{"transition_id":7}}"#, 8).unwrap();
    let t = DaveTransition { transition_id: 7 };
    assert_eq!(ready, ClientMessage::DaveTransitionReady(t));
    let invalid = decode(r#"{"op":31,"d":{"transition_id":7}}"#, 8).unwrap();
    assert_eq!(invalid, ClientMessage::DaveInvalidCommitWelcome(t));
    assert_eq!(invalid.encode(), r#"{"op":31,"d":{"transition_id":7}}"#);
    for bad in [
        r#"{"op":23,"d":[1]}"#,
        r#"{"op":31,"d":{"transition_id":70000}}"#,
    ] {
        assert_eq!(
            decode(bad, 8).unwrap_err().close_code(),
            CloseCode::DecodeError,
            "{bad}"
        );
    }
}

#[test]
fn video_identify_and_op_12_are_read_leniently() {
    // Discord-video-stream's Identify.
    let m = decode(
        r#"{"op":0,"d":{"server_id":"1","user_id":"7","session_id":"s","token":"t",
            "video":true,"streams":[{"type":"screen","rid":"100","quality":100},
            {"type":7,"rid":null}]}}"#,
        8,
    )
    .unwrap();
    let ClientMessage::Identify(id) = m else {
        panic!("{m:?}")
    };
    assert!(id.wants_video());
    assert_eq!(id.streams.len(), 2);
    assert_eq!(id.streams[0].kind.as_deref(), Some("screen"));
    assert_eq!(id.streams[0].rid.as_deref(), Some("100"));
    assert_eq!(id.streams[0].quality, Some(100));
    assert_eq!((&id.streams[1].kind, &id.streams[1].rid), (&None, &None));
    // `streams` that is no list is no streams.
    let m = decode(
        r#"{"op":0,"d":{"server_id":"1","user_id":"7","session_id":"s","token":"t",
            "streams":null}}"#,
        8,
    )
    .unwrap();
    let ClientMessage::Identify(id) = m else {
        panic!("{m:?}")
    };
    assert!(!id.wants_video());

    // Its op 12 when it starts streaming.
    let m = decode(
        r#"{"op":12,"d":{"audio_ssrc":5,"video_ssrc":6,"rtx_ssrc":7,"streams":[{"type":"screen",
            "rid":"100","ssrc":6,"active":true,"quality":100,"rtx_ssrc":7,"max_bitrate":10000,
            "max_framerate":30,"max_resolution":{"type":"fixed","width":1280,"height":720}}]}}"#,
        8,
    )
    .unwrap();
    let ClientMessage::Video(v) = m else {
        panic!("{m:?}")
    };
    assert_eq!((v.audio_ssrc, v.video_ssrc, v.rtx_ssrc), (5, 6, 7));
    let s = &v.streams[0];
    assert!(s.active);
    assert_eq!((s.ssrc, s.rtx_ssrc, s.max_framerate), (6, 7, Some(30)));
    assert_eq!(s.max_resolution.as_ref().map(|r| r.width), Some(1280));
    // Stopping: video_ssrc 0, the rest absent.
    let m = decode(r#"{"op":12,"d":{"video_ssrc":0}}"#, 8).unwrap();
    assert_eq!(
        m,
        ClientMessage::Video(Video {
            audio_ssrc: 0,
            video_ssrc: 0,
            rtx_ssrc: 0,
            streams: Vec::new()
        })
    );
    for bad in [r#"{"op":12,"d":[1]}"#, r#"{"op":12,"d":{"video_ssrc":-1}}"#] {
        assert_eq!(
            decode(bad, 8).unwrap_err().close_code(),
            CloseCode::DecodeError
        );
    }
}

#[test]
fn the_preferred_video_codec_is_the_lowest_priority() {
    let m = decode(
        r#"{"op":1,"d":{"protocol":"udp","data":{"mode":"aead_aes256_gcm_rtpsize"},
            "codecs":[{"name":"opus","type":"audio","priority":1000,"payload_type":120},
            {"name":"VP8","type":"video","priority":3000,"payload_type":105},
            {"name":"H264","type":"video","priority":2000,"payload_type":101,
             "rtx_payload_type":102},
            {"name":"VP9","type":"video","priority":2000,"payload_type":103}]}}"#,
        8,
    )
    .unwrap();
    let ClientMessage::SelectProtocol(s) = m else {
        panic!("{m:?}")
    };
    assert_eq!(s.video_codec(), Some("H264"));
    let audio_only = decode(
        r#"{"op":1,"d":{"protocol":"udp","data":{"mode":"aead_aes256_gcm_rtpsize"}}}"#,
        8,
    )
    .unwrap();
    let ClientMessage::SelectProtocol(s) = audio_only else {
        panic!()
    };
    assert_eq!(s.video_codec(), None);
}

#[test]
fn select_protocol_reads_mode_and_advisory_address() {
    let m = decode(
        r#"{"op":1,"d":{"protocol":"udp","data":{"address":"203.0.113.7","port":40000,
            "mode":"aead_aes256_gcm_rtpsize"},"codecs":[{"name":"opus","type":"audio",
            "priority":1000,"payload_type":120}],"rtc_connection_id":"x"}}"#,
        4,
    )
    .unwrap();
    let ClientMessage::SelectProtocol(s) = m else {
        panic!("{m:?}")
    };
    assert_eq!(s.data.address, Some("203.0.113.7".parse().unwrap()));
    assert_eq!(s.data.port, Some(40000));
    assert_eq!(s.data.mode(), Some(Mode::Aes256GcmRtpSize));
    assert_eq!(s.codecs.unwrap()[0].payload_type, Some(120));
    // An unknown mode is the server's refusal (4016), not a decode error;
    // an unusable address or port is simply not declared.
    let m = decode(
        r#"{"op":1,"d":{"protocol":"udp","data":{"address":"here","port":70000,"mode":"plain"}}}"#,
        4,
    )
    .unwrap();
    let ClientMessage::SelectProtocol(s) = m else {
        panic!("{m:?}")
    };
    assert_eq!(
        (s.data.address, s.data.port, s.data.mode()),
        (None, None, None)
    );
}

#[test]
fn heartbeats_by_version() {
    let hb = |text: &str, version| match decode(text, version) {
        Ok(ClientMessage::Heartbeat(h)) => Ok(h),
        Ok(other) => panic!("{other:?}"),
        Err(e) => Err(e.close_code()),
    };
    assert_eq!(
        hb(r#"{"op":3,"d":1501184119561}"#, 4),
        Ok(Heartbeat::Bare(Nonce(1501184119561)))
    );
    assert_eq!(
        hb(r#"{"op":3,"d":18446744073709551615}"#, 1),
        Ok(Heartbeat::Bare(Nonce(u64::MAX.into())))
    );
    assert_eq!(
        hb(r#"{"op":3,"d":{"t":-5,"seq_ack":2,"extra":"x"}}"#, 8),
        Ok(Heartbeat::Numbered {
            t: Nonce(-5),
            seq_ack: Some(2)
        })
    );
    assert_eq!(
        hb(r#"{"op":3,"d":{"t":7}}"#, 8),
        Ok(Heartbeat::Numbered {
            t: Nonce(7),
            seq_ack: None
        })
    );
    for (text, version) in [
        (r#"{"op":3,"d":{"t":1}}"#, 4),
        (r#"{"op":3,"d":"nonce"}"#, 4),
        (r#"{"op":3,"d":1.5}"#, 4),
        (r#"{"op":3,"d":null}"#, 4),
        (r#"{"op":3}"#, 4),
        (r#"{"op":3,"d":5}"#, 8),
        (r#"{"op":3,"d":{"t":"1"}}"#, 8),
        (r#"{"op":3,"d":{"t":[1,2]}}"#, 8),
        (r#"{"op":3,"d":{"t":1.5}}"#, 8),
        (r#"{"op":3,"d":{"t":1e30}}"#, 8),
    ] {
        assert_eq!(
            hb(text, version),
            Err(CloseCode::DecodeError),
            "v{version} {text}"
        );
    }
    // The ACK carries back the nonce alone, in the heartbeat's shape.
    let ack = |h: Heartbeat| value(&ServerMessage::HeartbeatAck(h.ack()).encode(None));
    assert_eq!(
        ack(Heartbeat::Numbered {
            t: Nonce(-5),
            seq_ack: Some(2)
        }),
        json!({"op": 6, "d": {"t": -5}})
    );
    assert_eq!(
        ack(Heartbeat::Bare(Nonce(u64::MAX.into()))),
        json!({"op": 6, "d": 18446744073709551615u64})
    );
    assert_eq!(
        value(&ClientMessage::Heartbeat(Heartbeat::new(8, Nonce(123), -1)).encode()),
        json!({"op": 3, "d": {"t": 123, "seq_ack": -1}})
    );
    assert_eq!(
        value(&ClientMessage::Heartbeat(Heartbeat::new(4, Nonce(123), 9)).encode()),
        json!({"op": 3, "d": 123})
    );
}

#[test]
fn speaking_and_resume() {
    assert_eq!(
        decode(r#"{"op":5,"d":{"speaking":true,"delay":0}}"#, 4),
        Ok(ClientMessage::Speaking(Speaking {
            speaking: 1,
            delay: Some(0),
            ssrc: None
        }))
    );
    assert_eq!(
        decode(r#"{"op":5,"d":{"speaking":5,"delay":0,"ssrc":77}}"#, 4),
        Ok(ClientMessage::Speaking(Speaking {
            speaking: 5,
            delay: Some(0),
            ssrc: Some(77)
        }))
    );
    let resume = |seq_ack: Value| {
        let text = json!({"op": 7, "d": {"server_id": "1", "session_id": "s", "token": "t",
            "seq_ack": seq_ack}});
        match decode(&text.to_string(), 8) {
            Ok(ClientMessage::Resume(r)) => Some((r.seq_ack_at(8), r.seq_ack_at(4))),
            _ => None,
        }
    };
    assert_eq!(resume(json!(5)), Some((Some(5), None)));
    assert_eq!(resume(json!(-1)), Some((Some(0), None)));
    assert_eq!(resume(Value::Null), Some((Some(0), None)));
    assert_eq!(resume(json!(u64::MAX)), None, "beyond i64: not a seq");
    assert_eq!(resume(json!(1.5)), None);
}

#[test]
fn server_messages_have_the_documented_shapes() {
    let ready = ServerMessage::Ready(Ready {
        ssrc: 77,
        ip: "127.0.0.1".parse().unwrap(),
        port: 5000,
        modes: vec![Mode::Aes256GcmRtpSize.name().into()],
        heartbeat_interval: Some(Millis(13750)),
        streams: vec![VideoStream {
            kind: "video".into(),
            rid: "100".into(),
            ssrc: 78,
            rtx_ssrc: 79,
            active: false,
            quality: 100,
            max_bitrate: None,
            max_framerate: None,
            max_resolution: None,
        }],
    });
    assert_eq!(
        value(&ready.encode(Some(1))),
        json!({"op": 2, "seq": 1, "d": {"ssrc": 77, "ip": "127.0.0.1", "port": 5000,
            "modes": ["aead_aes256_gcm_rtpsize"], "heartbeat_interval": 13750,
            "streams": [{"type": "video", "rid": "100", "ssrc": 78, "rtx_ssrc": 79,
                "active": false, "quality": 100}]}})
    );
    let sd = ServerMessage::SessionDescription(SessionDescription {
        mode: Mode::XChaCha20Poly1305RtpSize,
        secret_key: [9; 32],
        dave_protocol_version: 0,
        audio_codec: Some("opus".into()),
        video_codec: Some("H264".into()),
    });
    assert_eq!(
        value(&sd.encode(None)),
        json!({"op": 4, "d": {"mode": "aead_xchacha20_poly1305_rtpsize",
            "secret_key": vec![9; 32], "dave_protocol_version": 0,
            "audio_codec": "opus", "video_codec": "H264"}})
    );
    assert!(
        !format!("{sd:?}").contains('9'),
        "the key stays out of Debug"
    );
    let cases = [
        (
            ServerMessage::Hello(Hello {
                v: Some(8),
                heartbeat_interval: Millis(1000),
            }),
            json!({"op": 8, "d": {"v": 8, "heartbeat_interval": 1000}}),
        ),
        (
            ServerMessage::Speaking(MemberSpeaking {
                user_id: Snowflake(7),
                ssrc: 3,
                speaking: 1,
            }),
            json!({"op": 5, "d": {"user_id": "7", "ssrc": 3, "speaking": 1}}),
        ),
        (ServerMessage::Resumed, json!({"op": 9, "d": null})),
        (
            ServerMessage::ClientsConnect(ClientsConnect {
                user_ids: vec![Snowflake(7), Snowflake(8)],
            }),
            json!({"op": 11, "d": {"user_ids": ["7", "8"]}}),
        ),
        (
            ServerMessage::ClientDisconnect(ClientDisconnect {
                user_id: Snowflake(7),
            }),
            json!({"op": 13, "d": {"user_id": "7"}}),
        ),
    ];
    for (message, wire) in cases {
        let text = message.encode(None);
        assert_eq!(value(&text), wire);
        assert_eq!(ServerMessage::decode(&text), Ok((message, None)));
    }
    assert_eq!(
        ServerMessage::decode(&ready.encode(Some(3))),
        Ok((ready, Some(3)))
    );
    assert_eq!(
        ServerMessage::decode(&sd.encode(Some(4))),
        Ok((sd, Some(4)))
    );
}

#[test]
fn clients_read_what_discord_sends() {
    let (m, seq) =
        ServerMessage::decode(r#"{"op":8,"d":{"heartbeat_interval":41250.5},"seq":3}"#).unwrap();
    assert_eq!(seq, Some(3));
    let ServerMessage::Hello(h) = m else {
        panic!("{m:?}")
    };
    assert_eq!(
        h.heartbeat_interval.duration(),
        Duration::from_millis(41251)
    );
    let (m, _) = ServerMessage::decode(
        r#"{"op":2,"d":{"ssrc":1,"ip":"10.0.0.1","port":9,"modes":["aead_aes256_gcm_rtpsize","future_mode"],"experiments":[]}}"#,
    )
    .unwrap();
    let ServerMessage::Ready(r) = m else {
        panic!("{m:?}")
    };
    assert_eq!(r.known_modes(), vec![Mode::Aes256GcmRtpSize]);
    assert_eq!(
        ServerMessage::decode(r#"{"op":6,"d":{"t":5}}"#),
        Ok((
            ServerMessage::HeartbeatAck(HeartbeatAck::Numbered { t: Nonce(5) }),
            None
        ))
    );
    for bad in [
        r#"{"op":4,"d":{"mode":"aead_aes256_gcm_rtpsize","secret_key":[1]}}"#,
        r#"{"op":4,"d":{"mode":"x","secret_key":[0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0],"dave_protocol_version":0}}"#,
        r#"{"op":2,"d":{"ssrc":-1,"ip":"10.0.0.1","port":9,"modes":[]}}"#,
        r#"{"op":11,"d":{"user_ids":[-1]}}"#,
        r#"{"op":0,"d":{}}"#,
        r#"{"op":18,"d":{}}"#,
    ] {
        assert!(ServerMessage::decode(bad).is_err(), "{bad}");
    }
}

#[test]
fn client_messages_round_trip() {
    let messages = [
        ClientMessage::Identify(Identify {
            server_id: Snowflake(1),
            user_id: Snowflake(7),
            session_id: "s".into(),
            token: "t".into(),
            max_dave_protocol_version: Some(0),
            video: false,
            streams: Vec::new(),
        }),
        ClientMessage::SelectProtocol(SelectProtocol {
            protocol: UDP.into(),
            data: SelectProtocolData {
                address: Some("127.0.0.1".parse().unwrap()),
                port: Some(4000),
                mode: Mode::Aes256GcmRtpSize.name().into(),
            },
            codecs: None,
        }),
        ClientMessage::Speaking(Speaking {
            speaking: SPEAKING_MICROPHONE,
            delay: Some(0),
            ssrc: Some(77),
        }),
        ClientMessage::Resume(Resume {
            server_id: Snowflake(1),
            session_id: "s".into(),
            token: "t".into(),
            seq_ack: Some(-1),
        }),
        ClientMessage::Video(Video {
            audio_ssrc: 77,
            video_ssrc: 78,
            rtx_ssrc: 79,
            streams: Vec::new(),
        }),
        ClientMessage::Ignored(Opcode::ClientFlags),
    ];
    for m in messages {
        assert_eq!(decode(&m.encode(), 8), Ok(m));
    }
    assert_eq!(
        value(
            &ClientMessage::Identify(Identify {
                server_id: Snowflake(1),
                user_id: Snowflake(7),
                session_id: "s".into(),
                token: "t".into(),
                max_dave_protocol_version: Some(0),
                video: false,
                streams: Vec::new(),
            })
            .encode()
        ),
        json!({"op": 0, "d": {"server_id": "1", "user_id": "7", "session_id": "s",
            "token": "t", "max_dave_protocol_version": 0}})
    );
}
