//! Interop proof of the MLS layer (`control::dave::mls`): the server's
//! primitives acting as the DAVE delivery service and external sender
//! against the real `@snazzah/davey` client library (the one
//! @discordjs/voice 0.19.2 uses), run in Node through
//! `tests/interop/davey_driver.cjs`, without sockets.
//!
//! Flow (DAVE.md §3): A and B form the group at epoch 0, C is added at
//! epoch 1 (after a revoked first attempt), C is removed at epoch 2. Media
//! frames are exchanged after every step.
//!
//! Needs `node` and the interop packages (`npm ci --prefix
//! control/tests/interop`, which .ci/run does); `DAVEY_PATH` may point at
//! another davey install.

use control::dave::mls::*;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

const CHANNEL: u64 = 424242;
const A: u64 = 1001;
const B: u64 = 1002;
const C: u64 = 1003;

/// The Node process hosting the davey sessions.
struct Davey {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Davey {
    fn spawn() -> Self {
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/interop/davey_driver.cjs"
        );
        let installed = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/interop/node_modules/@snazzah/davey"
        );
        assert!(
            std::env::var_os("DAVEY_PATH").is_some() || std::path::Path::new(installed).exists(),
            "{installed} is missing: run `npm ci --prefix control/tests/interop` (.ci/run does)"
        );
        let mut child = Command::new("node")
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("failed to start node");
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Davey {
            child,
            stdin,
            stdout,
        }
    }

    /// Send one request; Err(message) if davey threw.
    fn try_call(&mut self, req: Value) -> Result<Value, String> {
        writeln!(self.stdin, "{req}").unwrap();
        self.stdin.flush().unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        let v: Value = serde_json::from_str(&line).expect("bad reply from node");
        if v["ok"] == json!(true) {
            Ok(v)
        } else {
            Err(v["error"].as_str().unwrap_or("?").to_string())
        }
    }

    fn call(&mut self, req: Value) -> Value {
        let what = req.to_string();
        self.try_call(req)
            .unwrap_or_else(|e| panic!("davey call {what:.200} failed: {e}"))
    }

    fn create(&mut self, name: &str, user: u64) -> Vec<u8> {
        let r = self.call(json!({"cmd":"create","name":name,"userId":user.to_string(),"channelId":CHANNEL.to_string()}));
        unhex(&r["keyPackage"])
    }

    fn set_external_sender(&mut self, name: &str, payload: &[u8]) {
        self.call(json!({"cmd":"setExternalSender","name":name,"payload":hex::encode(payload)}));
    }

    /// Returns the op 28 payload the client would send (commit ‖ welcome), if any.
    fn process_proposals(&mut self, name: &str, op27: &[u8], ids: &[u64]) -> Option<Vec<u8>> {
        let ids: Vec<String> = ids.iter().map(|u| u.to_string()).collect();
        let r = self.call(
            json!({"cmd":"processProposals","name":name,"payload":hex::encode(op27),"userIds":ids}),
        );
        if r["commit"].is_null() {
            assert!(r["welcome"].is_null());
            return None;
        }
        // Exactly what @discordjs/voice sends as op 28.
        let mut out = unhex(&r["commit"]);
        if !r["welcome"].is_null() {
            out.extend(unhex(&r["welcome"]));
        }
        Some(out)
    }

    fn process_commit(&mut self, name: &str, commit: &[u8]) {
        self.call(json!({"cmd":"processCommit","name":name,"commit":hex::encode(commit)}));
    }

    fn process_welcome(&mut self, name: &str, welcome: &[u8]) {
        self.call(json!({"cmd":"processWelcome","name":name,"welcome":hex::encode(welcome)}));
    }

    fn state(&mut self, name: &str) -> Value {
        self.call(json!({"cmd":"state","name":name}))
    }

    /// `from` encrypts an Opus frame, `to` decrypts it as coming from `from_user`.
    fn exchange(&mut self, from: &str, from_user: u64, to: &str, payload: &[u8]) {
        let enc = self.call(json!({"cmd":"encryptOpus","name":from,"frame":hex::encode(payload)}));
        let enc = unhex(&enc["frame"]);
        assert_ne!(enc, payload, "{from} did not encrypt");
        let dec = self.call(json!({"cmd":"decrypt","name":to,"userId":from_user.to_string(),"frame":hex::encode(&enc)}));
        assert_eq!(
            unhex(&dec["frame"]),
            payload,
            "{to} failed to decrypt {from}'s frame"
        );
        println!(
            "  media {from} -> {to}: {} plain bytes, {} encrypted bytes, decrypted OK",
            payload.len(),
            enc.len()
        );
    }
}

impl Drop for Davey {
    fn drop(&mut self) {
        // Only our own child.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn unhex(v: &Value) -> Vec<u8> {
    hex::decode(v.as_str().expect("hex string")).expect("valid hex")
}

fn frame(tag: u8) -> Vec<u8> {
    // Arbitrary non-silence "Opus" frame.
    let mut f = vec![0x78, tag];
    f.extend((0..40u8).map(|i| i.wrapping_mul(tag).wrapping_add(7)));
    f
}

/// The server's checks on an op 28 (DAVE.md §3 step 6).
fn check_commit(
    c: &Commit,
    epoch: u64,
    sender_leaf: u32,
    expected_refs: &[Vec<u8>],
    added: &[&ValidKeyPackage],
) {
    assert_eq!(c.epoch, epoch, "commit epoch");
    assert_eq!(c.sender_leaf, sender_leaf, "committer leaf");
    assert!(!c.inline_proposals, "commit has inline proposals");
    let mut got = c.proposal_refs.clone();
    let mut want = expected_refs.to_vec();
    got.sort();
    want.sort();
    assert_eq!(got, want, "commit references exactly the proposals sent");
    assert_eq!(c.welcome.is_some(), !added.is_empty(), "welcome iff adds");
    let mut kps: Vec<Vec<u8>> = added.iter().map(|k| k.reference().to_vec()).collect();
    let mut wk = c.welcome_key_packages.clone();
    kps.sort();
    wk.sort();
    assert_eq!(wk, kps, "welcome covers exactly the added key packages");
}

fn print_commit(label: &str, op28_len: usize, c: &Commit) {
    println!(
        "  {label}: op28 {op28_len} B = commit {} B + welcome {} B; epoch {}, sender leaf {}, {} proposal ref(s), welcome for {} key package(s)",
        c.commit.len(),
        c.welcome.as_ref().map_or(0, |w| w.len()),
        c.epoch,
        c.sender_leaf,
        c.proposal_refs.len(),
        c.welcome_key_packages.len()
    );
}

/// Flip bits / truncate real messages: every variant must be an error or a
/// value, never a panic.
fn mutate_everything(op28: &[u8], kp: &[u8], user: u64) {
    let mut n = 0;
    for i in 0..op28.len() {
        for mask in [0x01u8, 0x80, 0xff] {
            let mut m = op28.to_vec();
            m[i] ^= mask;
            let _ = parse_commit_welcome(&m, CHANNEL);
            n += 1;
        }
        let _ = parse_commit_welcome(&op28[..i], CHANNEL);
        n += 1;
    }
    for i in 0..kp.len() {
        let mut m = kp.to_vec();
        m[i] ^= 0x40;
        assert!(
            validate_key_package(&m, user).is_err(),
            "flip at {i} accepted"
        );
        let _ = validate_key_package(&kp[..i], user);
        n += 2;
    }
    println!("  mutation check: {n} mutated/truncated inputs handled without panic");
}

#[test]
fn davey_interop() {
    let mut d = Davey::spawn();
    let info = d.call(json!({"cmd":"info"}));
    println!("davey {} (DAVE protocol {})", info["version"], info["dave"]);

    let server = ExternalSender::generate().unwrap();
    let op25 = server.payload();
    println!("op25 external sender payload: {} B", op25.len());

    // Roster kept by the server: leaf -> user.
    let mut roster: Vec<Option<u64>> = Vec::new();

    // ---- 1. key packages (op 26) ------------------------------------------
    println!("step 1: key packages");
    let kp_a_bytes = d.create("A", A);
    let kp_b_bytes = d.create("B", B);
    let kp_a = validate_key_package(&kp_a_bytes, A).expect("A's key package");
    let kp_b = validate_key_package(&kp_b_bytes, B).expect("B's key package");
    println!(
        "  A op26 {} B, B op26 {} B: valid",
        kp_a_bytes.len(),
        kp_b_bytes.len()
    );
    assert!(matches!(
        validate_key_package(&kp_a_bytes, B),
        Err(MlsError::WrongIdentity)
    ));
    let mut trailing = kp_a_bytes.clone();
    trailing.push(0);
    assert!(matches!(
        validate_key_package(&trailing, A),
        Err(MlsError::TrailingBytes(_))
    ));
    let mut bad_sig = kp_a_bytes.clone();
    *bad_sig.last_mut().unwrap() ^= 1;
    assert!(matches!(
        validate_key_package(&bad_sig, A),
        Err(MlsError::InvalidKeyPackage(_))
    ));
    println!("  wrong identity / trailing byte / bad signature: rejected");

    // ---- 2. external sender (op 25) ---------------------------------------
    println!("step 2: op25 to A and B");
    d.set_external_sender("A", &op25);
    d.set_external_sender("B", &op25);

    // ---- 3. initial group, epoch 0 ----------------------------------------
    println!("step 3: epoch 0 proposals (A gets Add(B), B gets Add(A))");
    let to_a = add_proposals(&server, CHANNEL, 0, &[&kp_b]).unwrap();
    let to_b = add_proposals(&server, CHANNEL, 0, &[&kp_a]).unwrap();
    println!(
        "  op27 to A {} B, to B {} B",
        to_a.payload.len(),
        to_b.payload.len()
    );
    // Both clients commit; the server takes the first (A's).
    let op28_a = d
        .process_proposals("A", &to_a.payload, &[B])
        .expect("A commits");
    let op28_b = d
        .process_proposals("B", &to_b.payload, &[A])
        .expect("B commits");
    let commit_a = parse_commit_welcome(&op28_a, CHANNEL).unwrap();
    let commit_b = parse_commit_welcome(&op28_b, CHANNEL).unwrap();
    print_commit("A's commit", op28_a.len(), &commit_a);
    print_commit(
        "B's commit (dropped, loses the race)",
        op28_b.len(),
        &commit_b,
    );
    check_commit(&commit_a, 0, 0, &to_a.refs, &[&kp_b]);
    check_commit(&commit_b, 0, 0, &to_b.refs, &[&kp_a]);
    assert_eq!(commit_a.commit, op28_a[..commit_a.commit.len()]);
    assert!(matches!(
        parse_commit_welcome(&op28_a, CHANNEL + 1),
        Err(MlsError::WrongGroup)
    ));
    let mut junk = op28_a.clone();
    junk.push(0);
    assert!(
        parse_commit_welcome(&junk, CHANNEL).is_err(),
        "trailing byte after welcome"
    );

    // ---- 4. announce -------------------------------------------------------
    println!("step 4: op29 commit to A, op30 welcome to B");
    d.process_commit("A", &commit_a.commit);
    d.process_welcome("B", commit_a.welcome.as_ref().unwrap());
    roster.push(Some(A)); // the first committer is leaf 0
    let leaves = apply_to_roster(&mut roster, &[], &[B]);
    assert_eq!(leaves, vec![1]);

    // ---- 5. media ----------------------------------------------------------
    println!("step 5: media at epoch 1");
    for (n, u) in [("A", A), ("B", B)] {
        let s = d.state(n);
        println!("  {n}: {s}");
        assert_eq!(s["ready"], json!(true), "{n} ready");
        assert_eq!(s["epoch"], json!(1));
        assert_eq!(
            s["leaf"],
            json!(roster.iter().position(|x| *x == Some(u)).unwrap())
        );
    }
    d.exchange("A", A, "B", &frame(1));
    d.exchange("B", B, "A", &frame(2));

    // ---- 6. C joins at epoch 1 --------------------------------------------
    println!("step 6: C joins at epoch 1");
    let kp_c1_bytes = d.create("C", C);
    let kp_c1 = validate_key_package(&kp_c1_bytes, C).unwrap();
    d.set_external_sender("C", &op25);
    // First attempt is revoked (as if C left while pending).
    let add_c1 = add_proposals(&server, CHANNEL, 1, &[&kp_c1]).unwrap();
    assert!(d.process_proposals("A", &add_c1.payload, &[B, C]).is_some());
    assert!(d.process_proposals("B", &add_c1.payload, &[A, C]).is_some());
    let revoke = revoke_payload(&add_c1.refs);
    println!(
        "  op27 add {} B, then op27 revoke {} B",
        add_c1.payload.len(),
        revoke.len()
    );
    assert!(
        d.process_proposals("A", &revoke, &[B, C]).is_none(),
        "revoke leaves nothing"
    );
    assert!(
        d.process_proposals("B", &revoke, &[A, C]).is_none(),
        "revoke leaves nothing"
    );
    // C comes back with a fresh key package (new op 26).
    let reply = d.call(
        json!({"cmd":"create","name":"C","userId":C.to_string(),"channelId":CHANNEL.to_string()}),
    );
    let kp_c_bytes = unhex(&reply["keyPackage"]);
    let kp_c = validate_key_package(&kp_c_bytes, C).unwrap();
    d.set_external_sender("C", &op25);
    let add_c = add_proposals(&server, CHANNEL, 1, &[&kp_c]).unwrap();
    // Both members commit; B's arrives first this time.
    let op28_b = d
        .process_proposals("B", &add_c.payload, &[A, C])
        .expect("B commits");
    let op28_a = d
        .process_proposals("A", &add_c.payload, &[B, C])
        .expect("A commits");
    let commit_b = parse_commit_welcome(&op28_b, CHANNEL).unwrap();
    let commit_a = parse_commit_welcome(&op28_a, CHANNEL).unwrap();
    print_commit("B's commit", op28_b.len(), &commit_b);
    check_commit(&commit_b, 1, 1, &add_c.refs, &[&kp_c]);
    check_commit(&commit_a, 1, 0, &add_c.refs, &[&kp_c]);
    d.process_commit("B", &commit_b.commit);
    d.process_commit("A", &commit_b.commit); // A drops its own pending commit
    d.process_welcome("C", commit_b.welcome.as_ref().unwrap());
    let leaves = apply_to_roster(&mut roster, &[], &[C]);
    assert_eq!(leaves, vec![2]);
    for (n, u) in [("A", A), ("B", B), ("C", C)] {
        let s = d.state(n);
        println!("  {n}: {s}");
        assert_eq!(s["ready"], json!(true));
        assert_eq!(s["epoch"], json!(2));
        assert_eq!(
            s["leaf"],
            json!(roster.iter().position(|x| *x == Some(u)).unwrap())
        );
    }
    let all = [("A", A), ("B", B), ("C", C)];
    for (i, &(from, fu)) in all.iter().enumerate() {
        for &(to, _) in &all {
            if to != from {
                d.exchange(from, fu, to, &frame(10 + i as u8));
            }
        }
    }

    // ---- 7. C leaves at epoch 2 -------------------------------------------
    println!("step 7: C leaves (Remove leaf 2 at epoch 2)");
    let c_leaf = roster.iter().position(|x| *x == Some(C)).unwrap() as u32;
    // Negative checks first: davey really verifies the external sender's
    // signature and the epoch (and a rejected batch leaves no state behind).
    let impostor = ExternalSender::generate().unwrap();
    let forged = remove_proposals(&impostor, CHANNEL, 2, &[c_leaf]).unwrap();
    let e = d
        .try_call(json!({"cmd":"processProposals","name":"A","payload":hex::encode(&forged.payload),"userIds":[]}))
        .expect_err("davey accepted a proposal from another external sender");
    println!("  proposal signed by another key: rejected by davey ({e})");
    let stale = remove_proposals(&server, CHANNEL, 1, &[c_leaf]).unwrap();
    let e = d
        .try_call(json!({"cmd":"processProposals","name":"A","payload":hex::encode(&stale.payload),"userIds":[]}))
        .expect_err("davey accepted a proposal for the wrong epoch");
    println!("  proposal for epoch 1 at epoch 2: rejected by davey ({e})");

    let rm = remove_proposals(&server, CHANNEL, 2, &[c_leaf]).unwrap();
    println!("  op27 remove {} B", rm.payload.len());
    let op28_a = d
        .process_proposals("A", &rm.payload, &[B])
        .expect("A commits");
    let op28_b = d
        .process_proposals("B", &rm.payload, &[A])
        .expect("B commits");
    let commit_a = parse_commit_welcome(&op28_a, CHANNEL).unwrap();
    let commit_b = parse_commit_welcome(&op28_b, CHANNEL).unwrap();
    print_commit("A's commit", op28_a.len(), &commit_a);
    check_commit(&commit_a, 2, 0, &rm.refs, &[]);
    check_commit(&commit_b, 2, 1, &rm.refs, &[]);
    d.process_commit("A", &commit_a.commit);
    d.process_commit("B", &commit_a.commit);
    apply_to_roster(&mut roster, &[c_leaf], &[]);
    assert_eq!(roster, vec![Some(A), Some(B)]);
    for n in ["A", "B"] {
        let s = d.state(n);
        println!("  {n}: {s}");
        assert_eq!(s["ready"], json!(true));
        assert_eq!(s["epoch"], json!(3));
        assert_eq!(s["userIds"].as_array().unwrap().len(), 2);
    }
    d.exchange("A", A, "B", &frame(20));
    d.exchange("B", B, "A", &frame(21));

    // ---- robustness on real bytes -----------------------------------------
    println!("robustness:");
    mutate_everything(&op28_b, &kp_c_bytes, C);
    println!("ALL STEPS PASSED");
}
