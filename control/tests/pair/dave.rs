//! DAVE end to end in one process: the server's gateway connections and
//! registry with DAVE on, each client a [`GatewaySession`] with a
//! [`DaveClient`] driven the way @discordjs/voice drives davey (key
//! package on Session Description and on op 24 epoch 1, op 25 to the
//! member, op 27 committed at once, op 23 after op 29/30, op 31 when they
//! fail).

use std::collections::BTreeSet;
use std::time::Duration;

use control::dave::mls::parse_commit_welcome;
use control::dave::{DaveMode, TRANSITION_TIMEOUT};
use protocol::gateway::frame::Frame;
use protocol::gateway::{ClientMessage, DaveTransition, Opcode, ServerMessage};
use protocol::Snowflake;
use scripts::{DaveClient, GatewayEvent, Session};

use super::harness::*;

/// What a member saw, in order.
#[derive(Debug, Clone, PartialEq)]
enum Seen {
    Json(ServerMessage),
    /// A binary op and its payload (after seq and op).
    Binary(u8, Vec<u8>),
    Closed(Option<u16>),
}

impl Seen {
    fn op(&self) -> u8 {
        match self {
            Seen::Json(m) => m.opcode() as u8,
            Seen::Binary(op, _) => *op,
            Seen::Closed(_) => 0xff,
        }
    }
}

/// One voice client: its link in the world, its MLS member and what it
/// saw.
struct Member {
    link: usize,
    user: u64,
    /// Its Identify's `max_dave_protocol_version`.
    max_dave: u16,
    dave: DaveClient,
    /// The other users in the call (ops 11 and 13): who may be added.
    others: BTreeSet<u64>,
    seen: Vec<Seen>,
    /// The transition op 21 announced: (id, version).
    prepared: Option<(u16, u16)>,
    /// Transitions it said ready for (op 23).
    readied: Vec<u16>,
    /// Commits it made (op 28 payloads), sent or held.
    commits: Vec<Vec<u8>>,
    /// Keep op 28 payloads instead of sending them.
    hold: bool,
    /// Never send op 23.
    silent: bool,
    /// What its DAVE member refused.
    failures: Vec<String>,
}

impl Member {
    fn ops(&self) -> Vec<u8> {
        self.seen.iter().map(Seen::op).collect()
    }

    fn dave_ops(&self) -> Vec<u8> {
        self.ops()
            .into_iter()
            .filter(|op| (21..=31).contains(op))
            .collect()
    }

    /// Forgets what it saw so far.
    fn clear(&mut self) {
        self.seen.clear();
        self.readied.clear();
    }

    fn send_key_package(&mut self, w: &mut World) {
        match self.dave.key_package() {
            Ok(kp) => w.send_binary(
                self.link,
                &[&[Opcode::DaveMlsKeyPackage as u8][..], &kp].concat(),
            ),
            Err(e) => self.failures.push(format!("key package: {e}")),
        }
    }

    fn ready(&mut self, w: &mut World, transition_id: u16) {
        self.readied.push(transition_id);
        if self.silent {
            return;
        }
        let ready = ClientMessage::DaveTransitionReady(DaveTransition { transition_id });
        w.client(self.link).send(ready);
        w.run();
    }

    fn invalid(&mut self, w: &mut World, transition_id: u16, what: String) {
        self.failures.push(what);
        let invalid = ClientMessage::DaveInvalidCommitWelcome(DaveTransition { transition_id });
        w.client(self.link).send(invalid);
        w.run();
    }

    /// Handles one gateway event as a DAVE client does.
    fn handle(&mut self, w: &mut World, event: GatewayEvent) {
        let seen = match event {
            GatewayEvent::Message(ServerMessage::HeartbeatAck(_)) => return,
            GatewayEvent::Message(m) => Seen::Json(m),
            GatewayEvent::Binary(bytes) => {
                let f = Frame::from_server(&bytes).expect("a server binary frame");
                Seen::Binary(f.op as u8, f.payload.to_vec())
            }
            GatewayEvent::Closed(code) => Seen::Closed(code),
            GatewayEvent::Other { op, message } => panic!("op {op}: {message}"),
        };
        self.seen.push(seen.clone());
        if self.max_dave == 0 {
            return; // no DAVE: it reads nothing of it
        }
        match seen {
            Seen::Json(ServerMessage::ClientsConnect(c)) => {
                self.others.extend(c.user_ids.iter().map(|u| u.0));
            }
            Seen::Json(ServerMessage::ClientDisconnect(d)) => {
                self.others.remove(&d.user_id.0);
            }
            Seen::Json(ServerMessage::SessionDescription(sd)) if sd.dave_protocol_version > 0 => {
                self.send_key_package(w);
            }
            Seen::Json(ServerMessage::DavePrepareTransition(t)) => {
                self.prepared = Some((t.transition_id, t.protocol_version));
                if t.transition_id != 0 {
                    self.ready(w, t.transition_id);
                } else {
                    self.execute(t.transition_id);
                }
            }
            Seen::Json(ServerMessage::DaveExecuteTransition(t)) => self.execute(t.transition_id),
            Seen::Json(ServerMessage::DavePrepareEpoch(e)) if e.epoch == 1 => {
                if let Err(e) = self.dave.reset() {
                    self.failures.push(format!("reset: {e}"));
                }
                self.send_key_package(w);
            }
            Seen::Binary(25, payload) => {
                if let Err(e) = self.dave.set_external_sender(&payload) {
                    self.failures.push(format!("op 25: {e}"));
                }
            }
            Seen::Binary(27, payload) => {
                let expected: Vec<u64> = self.others.iter().copied().collect();
                match self.dave.process_proposals(&payload, &expected) {
                    Ok(Some(op28)) => {
                        self.commits.push(op28.clone());
                        if !self.hold {
                            let frame = [&[Opcode::DaveMlsCommitWelcome as u8][..], &op28].concat();
                            w.send_binary(self.link, &frame);
                        }
                    }
                    Ok(None) => {}
                    Err(e) => self.failures.push(format!("op 27: {e}")),
                }
            }
            Seen::Binary(op @ (29 | 30), payload) => {
                let t = u16::from_be_bytes([payload[0], payload[1]]);
                let r = if op == 29 {
                    self.dave.process_commit(&payload[2..])
                } else {
                    self.dave.process_welcome(&payload[2..])
                };
                match r {
                    Ok(()) if t != 0 => self.ready(w, t),
                    Ok(()) => {}
                    Err(e) => self.invalid(w, t, format!("op {op}: {e}")),
                }
            }
            _ => {}
        }
    }

    /// Op 22 (or op 21 with id 0): a move to version 0 drops the group.
    fn execute(&mut self, transition_id: u16) {
        if let Some((id, 0)) = self.prepared {
            if id == transition_id {
                if let Err(e) = self.dave.reset() {
                    self.failures.push(format!("reset: {e}"));
                }
            }
        }
    }
}

/// The call's members and the world.
struct Call {
    w: World,
    token: String,
    sessions: Vec<String>,
    members: Vec<Member>,
}

impl Call {
    fn new(seed: u64, users: &[u64], mode: DaveMode) -> Call {
        let (w, token, sessions) = dave_call(seed, users, mode);
        Call {
            w,
            token,
            sessions,
            members: Vec::new(),
        }
    }

    /// The `n`th voice state's user identifies with `max_dave` and
    /// selects a protocol; returns its index in `members`.
    fn join(&mut self, n: usize, user: u64, max_dave: u16) -> usize {
        let link = self.w.connect(8);
        let (session, token) = (self.sessions[n].clone(), self.token.clone());
        self.w
            .identify_dave(link, Snowflake(user), &session, &token, max_dave);
        let now = self.w.now;
        self.w.client(link).start_heartbeat(now, HEARTBEAT);
        self.w
            .client(link)
            .select_protocol(None, 4000, "aead_aes256_gcm_rtpsize");
        self.w.run();
        self.members.push(Member {
            link,
            user,
            max_dave,
            dave: DaveClient::new(user, CHANNEL.0).expect("a DAVE member"),
            others: BTreeSet::new(),
            seen: Vec::new(),
            prepared: None,
            readied: Vec::new(),
            commits: Vec::new(),
            hold: false,
            silent: false,
            failures: Vec::new(),
        });
        self.settle();
        self.members.len() - 1
    }

    /// Every member reads what arrived (and answers) until nothing does.
    fn settle(&mut self) {
        for _ in 0..1000 {
            let mut busy = false;
            for m in &mut self.members {
                while let Some(event) = self.w.client(m.link).poll_event() {
                    busy = true;
                    m.handle(&mut self.w, event);
                }
            }
            if !busy {
                return;
            }
        }
        panic!("DAVE kept going");
    }

    /// Member `i` closes its socket normally; once the leave grace has
    /// passed it is out of the call.
    fn leave(&mut self, i: usize) {
        self.w.close_socket(self.members[i].link, 1000);
        self.settle();
        self.w.advance(LEAVE_GRACE + Duration::from_millis(1));
        self.settle();
    }

    fn refused(&self) -> u64 {
        self.w.cx.registry.dave_refused()
    }

    /// Members `ids` are all in one group at `epoch` with exactly them,
    /// nothing failed, nobody was closed.
    fn assert_group(&self, ids: &[usize], epoch: u64) {
        let mut users: Vec<u64> = ids.iter().map(|i| self.members[*i].user).collect();
        users.sort();
        for &i in ids {
            let m = &self.members[i];
            assert!(m.failures.is_empty(), "{}: {:?}", m.user, m.failures);
            assert!(m.dave.is_ready(), "{} ready", m.user);
            assert_eq!(m.dave.epoch(), Some(epoch), "{}'s epoch", m.user);
            let mut members = m.dave.members();
            members.sort();
            assert_eq!(members, users, "{}'s group", m.user);
            assert_eq!(self.w.closed(m.link), None, "{} open", m.user);
        }
    }

    fn binaries(&self, i: usize, op: u8) -> Vec<Vec<u8>> {
        self.members[i]
            .seen
            .iter()
            .filter_map(|s| match s {
                Seen::Binary(o, p) if *o == op => Some(p.clone()),
                _ => None,
            })
            .collect()
    }

    fn transition_of(&self, i: usize, op: u8) -> Option<u16> {
        let p = self.binaries(i, op).pop()?;
        Some(u16::from_be_bytes([p[0], p[1]]))
    }

    fn executed(&self, i: usize) -> Vec<u16> {
        self.members[i]
            .seen
            .iter()
            .filter_map(|s| match s {
                Seen::Json(ServerMessage::DaveExecuteTransition(t)) => Some(t.transition_id),
                _ => None,
            })
            .collect()
    }

    fn clear(&mut self) {
        for m in &mut self.members {
            m.clear();
        }
    }
}

const A: u64 = 7;
const B: u64 = 8;
const C: u64 = 9;
const D: u64 = 10;

/// Two members found the group: the first valid commit wins, the other
/// is welcomed, the loser's commit is dropped.
fn founded(seed: u64, users: &[u64], mode: DaveMode) -> Call {
    let mut call = Call::new(seed, users, mode);
    let a = call.join(0, A, 1);
    let b = call.join(1, B, 1);
    for i in [a, b] {
        let m = &call.members[i];
        let description = call.w.gateways[m.link].1.client.session_description();
        assert_eq!(description.expect("SD").dave_protocol_version, 1);
        let ops = m.ops();
        let sd = ops.iter().position(|op| *op == 4).expect("op 4");
        assert_eq!(
            ops[sd + 1],
            25,
            "{}: op 25 right after op 4: {ops:?}",
            m.user
        );
        assert_eq!(
            ops.iter().filter(|op| **op == 27).count(),
            1,
            "{}: one op 27: {ops:?}",
            m.user
        );
        assert!(!ops.contains(&24), "{}: no op 24 in a new call", m.user);
    }
    let winner = (0..2).find(|i| !call.binaries(*i, 29).is_empty());
    let winner = winner.expect("someone's commit was announced");
    let loser = 1 - winner;
    assert!(
        call.binaries(loser, 29).is_empty(),
        "op 29 to the committer only"
    );
    assert_eq!(call.binaries(loser, 30).len(), 1, "op 30 to the other");
    assert!(call.binaries(winner, 30).is_empty());
    let t = call.transition_of(winner, 29).unwrap();
    assert_ne!(t, 0);
    assert_eq!(call.transition_of(loser, 30), Some(t));
    for i in [a, b] {
        assert_eq!(call.members[i].readied, vec![t], "op 23");
        assert_eq!(call.executed(i), vec![t], "op 22 once both were ready");
        assert_eq!(call.members[i].commits.len(), 1, "both committed");
    }
    assert_eq!(call.refused(), 1, "the loser's commit was dropped");
    call.assert_group(&[a, b], 1);
    call.clear();
    call
}

#[test]
fn two_members_found_the_group() {
    founded(40, &[A, B], DaveMode::On);
}

#[test]
fn members_join_leave_and_the_last_one_starts_over() {
    let mut call = founded(41, &[A, B, C, D], DaveMode::On);
    let (a, b) = (0, 1);

    // b. C joins: its Add (epoch 1) goes to the members only.
    let c = call.join(2, C, 1);
    assert!(!call.members[c].ops().contains(&27), "no op 27 to C");
    for i in [a, b] {
        assert_eq!(call.members[i].commits.len(), 2, "both committed C's Add");
    }
    let t = call.transition_of(a, 29).expect("op 29 to A");
    assert_eq!(call.transition_of(b, 29), Some(t), "op 29 to B");
    assert_eq!(call.transition_of(c, 30), Some(t), "op 30 to C");
    for i in [a, b, c] {
        assert_eq!(call.members[i].readied, vec![t]);
        assert_eq!(call.executed(i), vec![t], "op 22 after all op 23");
    }
    assert_eq!(call.refused(), 2, "the other member's commit was dropped");
    call.assert_group(&[a, b, c], 2);
    call.clear();

    // c. C leaves: op 13, then a Remove (epoch 2) to A and B.
    call.leave(c);
    for i in [a, b] {
        let ops = call.members[i].ops();
        let left = ops.iter().position(|op| *op == 13).expect("op 13");
        let removal = ops.iter().position(|op| *op == 27).expect("op 27");
        assert!(left < removal, "{ops:?}");
        assert!(!call.executed(i).is_empty(), "op 22");
    }
    call.assert_group(&[a, b], 3);
    assert_eq!(call.refused(), 3);
    call.clear();

    // d. B leaves: A alone starts over (op 24 epoch 1, op 25), and D then
    // founds a new group with it.
    call.leave(b);
    let ops = call.members[a].dave_ops();
    assert_eq!(&ops[..2], &[24, 25], "{ops:?}");
    assert!(call.members[a]
        .seen
        .contains(&Seen::Json(ServerMessage::DavePrepareEpoch(
            protocol::gateway::DavePrepareEpoch {
                protocol_version: 1,
                epoch: 1
            }
        ))));
    assert!(!call.members[a].dave.is_ready());
    let d = call.join(3, D, 1);
    call.assert_group(&[a, d], 1);
    let t = call.executed(a);
    assert_eq!(t.len(), 1);
    assert_eq!(call.executed(d), t);
}

#[test]
fn a_member_without_dave_downgrades_the_call_until_it_leaves() {
    let mut call = founded(42, &[A, B, C], DaveMode::On);
    let (a, b) = (0, 1);
    let p = call.join(2, C, 0);
    let description = call.w.gateways[call.members[p].link]
        .1
        .client
        .session_description();
    assert_eq!(description.unwrap().dave_protocol_version, 0);
    let mut t = None;
    for i in [a, b, p] {
        let prepare = call.members[i].seen.iter().find_map(|s| match s {
            Seen::Json(ServerMessage::DavePrepareTransition(t)) => Some(*t),
            _ => None,
        });
        let prepare = prepare.unwrap_or_else(|| panic!("op 21 to {i}"));
        assert_eq!(prepare.protocol_version, 0);
        assert_ne!(prepare.transition_id, 0);
        t = Some(prepare.transition_id);
    }
    let t = t.unwrap();
    for i in [a, b] {
        assert_eq!(call.members[i].readied, vec![t], "op 23 from DAVE members");
        assert!(!call.members[i].dave.is_ready(), "out of the group");
    }
    for i in [a, b, p] {
        assert_eq!(call.executed(i), vec![t], "op 22 to everyone");
    }
    assert_eq!(call.w.cx.registry.dave_calls(), 0);
    call.clear();

    // It leaves: the others start a new group.
    call.leave(p);
    for i in [a, b] {
        let ops = call.members[i].dave_ops();
        assert_eq!(&ops[..2], &[24, 25], "{ops:?}");
    }
    call.assert_group(&[a, b], 1);
    assert_eq!(call.w.cx.registry.dave_calls(), 1);
}

#[test]
fn required_closes_a_client_without_dave() {
    let mut call = Call::new(43, &[A, B], DaveMode::Required);
    let link = call.w.connect(8);
    let (session, token) = (call.sessions[0].clone(), call.token.clone());
    call.w
        .identify_dave(link, Snowflake(A), &session, &token, 0);
    assert_eq!(call.w.closed(link), Some(Some(4017)));
    // A DAVE client is served.
    let b = call.join(1, B, 1);
    assert_eq!(call.w.closed(call.members[b].link), None);
    let link = call.members[b].link;
    let description = call.w.gateways[link].1.client.session_description();
    assert_eq!(description.unwrap().dave_protocol_version, 1);
}

#[test]
fn hostile_dave_input_is_refused_and_counted() {
    let mut call = founded(44, &[A, B, C], DaveMode::On);
    let (a, b) = (0, 1);
    let founding_commit = call.members[a].commits[0].clone();
    let mut refused = call.refused();
    for i in [a, b] {
        call.members[i].hold = true;
    }
    let c = call.join(2, C, 1);
    let c_link = call.members[c].link;
    let op = |op: Opcode, payload: &[u8]| [&[op as u8][..], payload].concat();

    // A key package with someone else's identity.
    let mut impostor = DaveClient::new(A, CHANNEL.0).unwrap();
    let kp = impostor.key_package().unwrap();
    call.w
        .send_binary(c_link, &op(Opcode::DaveMlsKeyPackage, &kp));
    refused += 1;
    assert_eq!(call.refused(), refused, "wrong identity");
    // Garbage key package and commit.
    for (o, garbage) in [
        (Opcode::DaveMlsKeyPackage, &[0, 1, 0, 2, 0xff][..]),
        (Opcode::DaveMlsKeyPackage, &[][..]),
        (Opcode::DaveMlsCommitWelcome, &[0xde, 0xad, 0xbe, 0xef][..]),
        (
            Opcode::DaveMlsCommitWelcome,
            &[0, 1, 0, 1, 0xbf, 0xff, 0xff, 0xff][..],
        ),
    ] {
        call.w.send_binary(c_link, &op(o, garbage));
        refused += 1;
        assert_eq!(call.refused(), refused, "{garbage:?}");
    }
    // A commit for the wrong epoch (A's founding commit, epoch 0).
    call.w.send_binary(
        call.members[a].link,
        &op(Opcode::DaveMlsCommitWelcome, &founding_commit),
    );
    refused += 1;
    assert_eq!(call.refused(), refused, "wrong epoch");
    // A commit from C, in the call but not in the group: A's valid commit
    // for this epoch sent over C's socket.
    let held = call.members[a].commits.last().unwrap().clone();
    assert_eq!(call.members[a].commits.len(), 2, "A committed C's Add");
    call.w
        .send_binary(c_link, &op(Opcode::DaveMlsCommitWelcome, &held));
    refused += 1;
    assert_eq!(call.refused(), refused, "not a member");
    // A's commit with the welcome of the founding commit (for B's key
    // package, not C's).
    let parse = |bytes: &[u8]| parse_commit_welcome(bytes, CHANNEL.0).unwrap();
    let wrong_welcome = [
        parse(&held).commit,
        parse(&founding_commit).welcome.unwrap(),
    ]
    .concat();
    call.w.send_binary(
        call.members[a].link,
        &op(Opcode::DaveMlsCommitWelcome, &wrong_welcome),
    );
    refused += 1;
    assert_eq!(call.refused(), refused, "welcome for another key package");
    // The same commit without its welcome.
    call.w.send_binary(
        call.members[a].link,
        &op(Opcode::DaveMlsCommitWelcome, &parse(&held).commit),
    );
    refused += 1;
    assert_eq!(call.refused(), refused, "adds without a welcome");
    call.settle();
    for m in &call.members {
        assert_eq!(call.w.closed(m.link), None, "{} open", m.user);
        assert!(!m.ops().contains(&29) && !m.ops().contains(&30));
    }

    // The call goes on: A's commit, from A, wins.
    for i in [a, b] {
        call.members[i].hold = false;
    }
    call.w.send_binary(
        call.members[a].link,
        &op(Opcode::DaveMlsCommitWelcome, &held),
    );
    call.settle();
    assert_eq!(call.refused(), refused);
    call.assert_group(&[a, b, c], 2);
}

#[test]
fn a_member_that_could_not_process_is_removed_and_added_again() {
    let mut call = founded(45, &[A, B, C], DaveMode::On);
    let (a, b) = (0, 1);
    let c = call.join(2, C, 1);
    call.assert_group(&[a, b, c], 2);
    call.clear();

    // C says it could not process the last commit (op 31) and starts
    // over with a new key package, as a client does.
    let link = call.members[c].link;
    let invalid = ClientMessage::DaveInvalidCommitWelcome(DaveTransition { transition_id: 1 });
    call.w.client(link).send(invalid);
    call.w.run();
    call.members[c].dave.reset().unwrap();
    call.members[c].send_key_package(&mut call.w);
    call.settle();
    for i in [a, b] {
        let proposals = call.binaries(i, 27);
        assert!(!proposals.is_empty(), "a Remove and an Add for C");
    }
    assert!(!call.binaries(c, 30).is_empty(), "C is welcomed again");
    let epoch = call.members[a].dave.epoch().unwrap();
    assert!(epoch >= 3, "{epoch}");
    call.assert_group(&[a, b, c], epoch);
}

#[test]
fn a_transition_is_executed_after_its_timeout() {
    let mut call = founded(46, &[A, B, C], DaveMode::On);
    let (a, b) = (0, 1);
    call.members[b].silent = true;
    let p = call.join(2, C, 0);
    assert_eq!(call.members[a].readied.len(), 1, "A said ready");
    for i in [a, b, p] {
        assert!(call.executed(i).is_empty(), "B owes op 23");
    }
    call.w
        .advance(TRANSITION_TIMEOUT - Duration::from_millis(1));
    call.settle();
    assert!(call.executed(a).is_empty(), "not before the timeout");
    call.w.advance(Duration::from_millis(1));
    call.settle();
    let t = call.members[a].readied[0];
    for i in [a, b, p] {
        assert_eq!(call.executed(i), vec![t], "op 22 at the timeout");
    }
}

/// A member whose socket drops while the group changes resumes (v8) and
/// gets the binary ops it missed (the Add proposal, the winning commit)
/// re-delivered in the one `seq` the JSON messages use; it catches up with
/// the group.
#[test]
fn a_resume_redelivers_the_binary_ops_it_missed() {
    let mut call = founded(45, &[A, B, C], DaveMode::On);
    let (a, b) = (0, 1);
    let old = call.members[b].link;
    let seq_before = call.w.client(old).seq_ack();
    call.w.drop_socket(old);
    call.settle();
    // C joins while B is away: its Add goes to A and (kept for it) B; A's
    // commit is announced to both.
    let c = call.join(2, C, 1);
    assert_eq!(call.members[a].commits.len(), 2, "A committed C's Add");
    let t = call.transition_of(a, 29).expect("op 29 to A");
    assert_eq!(call.transition_of(c, 30), Some(t));
    let away = call.members[b].dave_ops();
    assert!(away.is_empty(), "B's socket is gone: {away:?}");
    call.members[b].clear();

    let back = call.w.reconnect(old);
    let session = call.sessions[1].clone();
    let token = call.token.clone();
    call.w.client(back).resume(GUILD, &session, &token);
    let now = call.w.now;
    call.w.client(back).start_heartbeat(now, HEARTBEAT);
    call.w.run();
    call.members[b].link = back;
    call.settle();
    // Hello, Resumed, then what it missed: ops 11 and 12 (C), op 27,
    // op 29; its op 23 then executes the transition (op 22).
    let ops = call.members[b].ops();
    assert_eq!(ops, [8, 9, 11, 12, 27, 29, 22], "{ops:?}");
    // Re-delivered: op 27 and op 29, binary, numbered after B's seq_ack.
    assert!(
        call.binaries(b, 27).len() == 1,
        "{:?}",
        call.members[b].ops()
    );
    assert_eq!(call.transition_of(b, 29), Some(t));
    assert!(call.w.client(back).seq_ack() > seq_before);
    // B's own late commit of the same Add is refused (wrong epoch); it
    // took A's and said ready: the transition executed for everyone.
    call.assert_group(&[a, b, c], 2);
    assert_eq!(call.executed(a), [t]);
}

/// A member has one key package in play at a time: a second one while the
/// first is pending is refused and counted (its Adds would otherwise stay
/// in flight where no commit could match them), and the call goes on.
#[test]
fn a_second_key_package_is_refused_while_the_first_is_pending() {
    let mut call = Call::new(47, &[A, B], DaveMode::On);
    let a = call.join(0, A, 1);
    let refused = call.refused();
    call.members[a].send_key_package(&mut call.w);
    call.settle();
    assert_eq!(call.refused(), refused + 1);
    assert_eq!(call.w.closed(call.members[a].link), None);
}

/// A downgrade still waiting for its Transition Readys when the member
/// without DAVE is gone again is executed (op 22) before the upgrade
/// (op 24): no member is left holding a transition to version 0 that
/// would switch its encryption off later.
#[test]
fn a_pending_downgrade_is_executed_before_the_upgrade_that_follows() {
    let mut call = founded(48, &[A, B, C], DaveMode::On);
    let (a, b) = (0, 1);
    for i in [a, b] {
        call.members[i].silent = true;
    }
    let p = call.join(2, C, 0);
    let t = call.members[a].seen.iter().find_map(|s| match s {
        Seen::Json(ServerMessage::DavePrepareTransition(t)) => Some(t.transition_id),
        _ => None,
    });
    let t = t.expect("op 21");
    assert!(call.executed(a).is_empty(), "nobody said ready");
    call.clear();
    // The member without DAVE goes at once (a refused frame closes it).
    let link = call.members[p].link;
    call.w.send_raw(link, "garbage");
    call.settle();
    for i in [a, b] {
        let ops = call.members[i].dave_ops();
        assert_eq!(&ops[..3], &[22, 24, 25], "{ops:?}");
        assert_eq!(call.executed(i), [t]);
    }
}
