//! LVSP's flows against [`LvspSession`], Litecord's side.

use std::time::Duration;

use control::connection::Protocol;
use control::lvsp::Replay;
use protocol::lvsp::{ClientMessage, Reply, Resume};
use protocol::Snowflake;
use scripts::LvspSession;
use serde_json::{json, Value};

use super::harness::*;

/// LVSP's close codes, and a RESUME that re-delivers INFOs.
#[test]
fn lvsp_close_codes_and_resume() {
    let (mut w, _, _) = call(5, &[7]);
    let raw = |w: &mut World, text: &str| {
        let i = w.lvsp_connect(LvspSession::new());
        let (now, link) = (w.now, &mut w.litecord[i]);
        link.server_text(now, text, &mut w.cx);
        w.run();
        w.litecord[i].client.closed()
    };
    assert_eq!(raw(&mut w, "{"), Some(Some(4002)));
    assert_eq!(
        raw(&mut w, r#"{"op":1,"d":{"token":"x"}}"#),
        Some(Some(4001))
    );
    assert_eq!(raw(&mut w, r#"{"op":4,"d":null}"#), Some(Some(4000)));

    // Litecord's link drops after one more INFO; a RESUME from the `s`
    // before it gets it again, then READY.
    let first = w.litecord[0].client.last_seq().expect("INFOs so far");
    w.voice_state(0, Snowflake(8));
    let (now, link) = (w.now, &mut w.litecord[0]);
    link.client.handle_close(None);
    link.gone(now, &mut w.cx);
    let again = w.litecord[0].client.reconnect();
    assert_eq!(again.last_seq(), Some(first + 1));
    let lv = w.lvsp_connect(again);
    let token = w.litecord[lv].client.token(SECRET).expect("HELLO");
    w.litecord[lv]
        .client
        .send(ClientMessage::Resume(Resume { token, seq: first }));
    w.run();
    assert!(w.litecord[lv].client.ready());
    let redelivered = w.litecord[lv].client.poll_info(|info| match &info.reply {
        Reply::VoiceStateDone(d) => Some((info.seq, d.state.user_id)),
        _ => None,
    });
    assert_eq!(redelivered.unwrap(), Some((first + 1, Snowflake(8))));
}

/// Litecord's requests on one link: heartbeats in both shapes, CHANNEL_REQ
/// right before VOICE_STATE_CREATE (handled in order, CHANNEL_ASSIGN
/// first), repeats answered alike, a DM (`guild_id` null), updates and
/// destroys without a reply.
#[test]
fn lvsp_requests_in_order_and_idempotent() {
    let mut w = World::new(20);
    let lv = w.litecord();
    w.litecord[lv].frames.clear();
    assert_eq!(w.lvsp_raw(lv, r#"{"op":4,"d":null}"#)[0]["op"], 5);
    assert_eq!(w.lvsp_raw(lv, r#"{"op":4}"#)[0]["op"], 5);
    let channel = json!({"channel_id": "100", "guild_id": "1"});
    let state = json!({"user_id": "7", "channel_id": "100", "guild_id": "1"});
    let mut o = w.lvsp_raw(lv, &info(0, channel.clone()));
    o.extend(w.lvsp_raw(lv, &info(3, state.clone())));
    assert_eq!(
        (o[0]["d"]["type"].clone(), o[0]["s"].clone()),
        (json!(1), json!(1))
    );
    assert_eq!(o[0]["d"]["data"]["channel_id"], "100");
    assert_eq!(o[0]["d"]["data"]["guild_id"], "1");
    assert_eq!(o[0]["d"]["data"]["token"].as_str().unwrap().len(), 32);
    assert_eq!(
        (o[1]["d"]["type"].clone(), o[1]["s"].clone()),
        (json!(4), json!(2))
    );
    assert_eq!(o[1]["d"]["data"]["user_id"], "7");
    assert_eq!(o[1]["d"]["data"]["session_id"].as_str().unwrap().len(), 32);
    let again = w.lvsp_raw(lv, &info(0, channel.clone()));
    assert_eq!(again[0]["d"]["data"], o[0]["d"]["data"]);
    let again = w.lvsp_raw(lv, &info(3, state.clone()));
    assert_eq!(again[0]["d"]["data"], o[1]["d"]["data"]);
    let dm = w.lvsp_raw(lv, &info(0, json!({"channel_id": "555", "guild_id": null})));
    assert_eq!(dm[0]["d"]["data"]["guild_id"], Value::Null);
    for m in [
        info(6, json!({"session_id": "x"})),
        info(5, state),
        info(2, channel.clone()),
        info(2, channel),
    ] {
        assert_eq!(w.lvsp_raw(lv, &m), Vec::<Value>::new(), "{m}");
    }
    assert_eq!(w.cx.registry.channel_count(), 1, "only the DM is left");
}

/// RESUME on a new link re-delivers every INFO after its `seq`, then
/// READY, and numbering goes on; the buffer (4 here) refuses a `seq` whose
/// successors are gone, or one never sent; a RESUME needs the new HELLO's
/// nonce and a `seq`.
#[test]
fn lvsp_resume_replays_after_seq_or_refuses() {
    let mut w = World::new(21);
    w.cx.replay = Replay::new(4);
    let lv = w.litecord();
    for n in 0..6 {
        w.lvsp_raw(lv, &info(0, json!({"channel_id": format!("10{n}")})));
    }
    w.drop_lvsp(lv);
    let resume = |w: &mut World, seq: Option<u64>, nonce_of: Option<usize>| {
        let r = w.lvsp_connect(LvspSession::new());
        let signer = nonce_of.unwrap_or(r);
        let token = w.litecord[signer].client.token(SECRET).unwrap();
        let d = match seq {
            Some(seq) => json!({"token": token, "seq": seq}),
            None => json!({"token": token}),
        };
        w.litecord[r].frames.clear();
        w.lvsp_raw(r, &json!({"op": 2, "d": d}).to_string())
    };
    // s = 3..6 are kept: from 2, four INFOs then READY.
    let o = resume(&mut w, Some(2), None);
    let s: Vec<Value> = o.iter().map(|f| f["s"].clone()).collect();
    assert_eq!(s, [json!(3), json!(4), json!(5), json!(6), Value::Null]);
    assert_eq!(o[0]["d"]["data"]["channel_id"], "102");
    assert_eq!(o[4]["op"], 3);
    let r = w.litecord.len() - 1;
    let next = w.lvsp_raw(r, &info(0, json!({"channel_id": "107"})));
    assert_eq!(next[0]["s"], 7, "numbering goes on");
    let o = resume(&mut w, Some(7), None);
    assert_eq!(o.len(), 1, "nothing missed: READY alone");
    for (seq, code) in [(Some(1), 4000), (Some(8), 4000), (None, 4002)] {
        let o = resume(&mut w, seq, None);
        assert_eq!(o.last().unwrap()["close"], code, "{seq:?}");
    }
    let o = resume(&mut w, Some(7), Some(0));
    assert_eq!(o.last().unwrap()["close"], 4001, "another link's nonce");
}

/// Before IDENTIFY only IDENTIFY and RESUME (4000), no binary or
/// oversized frames (4002); a wrong token is 4001.
#[test]
fn lvsp_before_identify() {
    let mut w = World::new(22);
    for (msg, code) in [
        (r#"{"op":6,"d":{"type":0,"data":{}}}"#, 4000),
        (r#"{"op":4,"d":null}"#, 4000),
        (r#"{"op":1,"d":{"token":"nothex"}}"#, 4001),
        (r#"{"op":1,"d":{"token":"00ff"}}"#, 4001),
    ] {
        let lv = w.lvsp_connect(LvspSession::new());
        assert_eq!(w.lvsp_raw(lv, msg).last().unwrap()["close"], code, "{msg}");
        assert_eq!(w.litecord[lv].client.closed(), Some(Some(code)));
    }
    for oversized in [false, true] {
        let lv = w.lvsp_connect(LvspSession::new());
        let server = &mut w.litecord[lv].server;
        if oversized {
            server.handle_oversized();
        } else {
            assert!(server.handle_binary(w.now, &[1]).is_none());
        }
        w.run();
        assert_eq!(w.litecord[lv].client.closed(), Some(Some(4002)));
    }
}

/// Litecord's link closes (4000) a heartbeat interval and a half and a
/// second after the last heartbeat; while no link is identified, channels
/// and voice states live for the orphan grace, and a Litecord back in time
/// keeps them.
#[test]
fn lvsp_heartbeat_timeout_and_the_orphan_grace() {
    let mut w = World::new(23);
    w.cx.registry.set_orphan_grace(Duration::from_secs(60));
    let hour = Duration::from_secs(3600);
    w.cx.registry.set_idle(hour, hour);
    let lv = w.litecord();
    w.channel(lv, CHANNEL);
    w.litecord[lv].client.stop_heartbeat();
    assert_eq!(
        w.cx.registry.poll_timeout(),
        Some(w.now + hour),
        "Litecord is connected: only the empty channel's idle time runs"
    );
    w.advance(Duration::from_millis(15_999));
    assert_eq!(w.litecord[lv].client.closed(), None);
    w.advance(Duration::from_millis(2));
    assert_eq!(w.litecord[lv].client.closed(), Some(Some(4000)));
    w.advance(Duration::from_secs(59));
    assert_eq!(w.cx.registry.channel_count(), 1, "calls go on meanwhile");
    let back = w.litecord();
    w.advance(Duration::from_secs(120));
    assert_eq!(
        w.cx.registry.channel_count(),
        1,
        "Litecord came back in time"
    );
    w.drop_lvsp(back);
    w.advance(Duration::from_secs(60));
    assert_eq!(w.cx.registry.channel_count(), 0, "gone for good: expired");
}

/// A drain: READY on a new link and every HEARTBEAT_ACK read health 0,
/// CHANNEL_REQ is still answered and members still identify, the call
/// goes on, and at the deadline the members still in it are closed with
/// 4015 (a restart follows) or 4014 (it does not).
#[test]
fn lvsp_drain_reads_health_zero_and_its_deadline_closes_members() {
    for (seed, restart, code) in [(40, true, 4015), (41, false, 4014)] {
        let (mut w, token, sessions) = call(seed, &[7, 8]);
        let a = member(&mut w, 8, 7, &sessions[0], &token);
        let b = member(&mut w, 8, 8, &sessions[1], &token);
        w.cx.registry.set_health(1.0);
        w.advance(Duration::from_secs(10));
        assert_eq!(w.litecord[0].client.health(), Some(1.0), "before");

        let deadline = w.now + Duration::from_secs(60);
        assert!(w.cx.registry.drain(deadline, restart));
        w.advance(Duration::from_secs(10));
        assert_eq!(w.litecord[0].client.health(), Some(0.0), "HEARTBEAT_ACK");
        let lv = w.litecord();
        assert_eq!(w.litecord[lv].client.health(), Some(0.0), "READY");
        // Litecord insists: a new channel is served and its member joins.
        let other = w.channel(lv, Snowflake(200));
        assert_eq!(other.len(), 32);
        let c = member(&mut w, 8, 7, &sessions[0], &token);
        assert_eq!(w.closed(a), Some(Some(4006)), "replaced, as ever");
        assert_eq!(w.closed(b), None, "the call goes on");
        assert!(!w.cx.registry.drained());

        w.advance(Duration::from_secs(49));
        assert_eq!(
            (w.closed(b), w.closed(c)),
            (None, None),
            "before the deadline"
        );
        w.advance(Duration::from_secs(2));
        assert_eq!(w.closed(b), Some(Some(code)), "restart {restart}");
        assert_eq!(w.closed(c), Some(Some(code)), "restart {restart}");
        assert!(w.cx.registry.drained());
        assert_eq!(w.cx.registry.session_count(), 0);
    }
}

/// Litecord stays connected and never destroys anything: a member who
/// left has its voice state removed after the idle time, then the empty
/// channel is destroyed on its core; Litecord's next CHANNEL_REQ and
/// VOICE_STATE_CREATE create both afresh and the member identifies again.
#[test]
fn lvsp_idle_state_is_reclaimed_while_litecord_stays() {
    let mut w = World::new(31);
    let (state_idle, channel_idle) = (Duration::from_secs(60), Duration::from_secs(120));
    w.cx.registry.set_idle(state_idle, channel_idle);
    let lv = w.litecord();
    let token = w.channel(lv, CHANNEL);
    let session = w.voice_state(lv, Snowflake(7));
    let i = member(&mut w, 8, 7, &session, &token);
    assert!(w.client(i).ssrc().is_some(), "Ready");
    w.close_socket(i, 1000);
    // In the call until the leave grace ends, idle from then.
    w.advance(LEAVE_GRACE + state_idle - Duration::from_secs(1));
    assert_eq!(w.cx.registry.voice_state_count(), 1);
    w.advance(Duration::from_secs(1));
    assert_eq!(w.cx.registry.voice_state_count(), 0);
    assert_eq!(w.cx.registry.channel_count(), 1);
    w.commands.clear();
    w.advance(channel_idle);
    assert_eq!(w.cx.registry.channel_count(), 0);
    assert_eq!(
        w.commands,
        vec![shared::Command::RemoveChannel { channel: 1 }]
    );
    assert!(w.litecord[lv].client.ready(), "Litecord stayed throughout");

    let again = w.channel(lv, CHANNEL);
    assert_ne!(again, token);
    let fresh = w.voice_state(lv, Snowflake(7));
    assert_ne!(fresh, session);
    let j = member(&mut w, 8, 7, &fresh, &again);
    assert!(w.client(j).ssrc().is_some(), "Ready afresh");
    assert_eq!(w.closed(j), None);
}
