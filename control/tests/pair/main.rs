//! The client library's state machines against the server's, in one
//! process, under simulated time (quinn-proto's `Pair`): every frame one
//! side queues is handed to the other, the registry's pushes are routed to
//! their connections, and time moves only when a test says so, from one
//! deadline to the next. A test of minutes runs in milliseconds, and with
//! the same seed a run is the same byte for byte.
//!
//! The real-socket tests (gateway.rs, lvsp.rs, e2e.rs) stay as the proof
//! that the binaries, websockets and data plane carry the same flows.

mod dave;
mod gateway;
mod harness;
mod lvsp;
mod video;

use std::time::Duration;

use harness::*;

/// Randomness is passed in: the same seed gives the same run, byte for
/// byte (SSRCs, keys, tokens, session ids, nonces); another seed does not.
#[test]
fn a_seeded_run_replays_exactly() {
    let run = |seed| {
        let (mut w, token, s) = call(seed, &[7, 8]);
        let a = member(&mut w, 8, 7, &s[0], &token);
        let b = member(&mut w, 4, 8, &s[1], &token);
        w.client(a)
            .select_protocol(Some([127, 0, 0, 1].into()), 4000, "aead_aes256_gcm_rtpsize");
        w.client(b).speaking(1).unwrap();
        w.run();
        w.advance(Duration::from_secs(30));
        w.transcript
    };
    let first = run(6);
    assert!(first.len() > 40, "{}", first.len());
    assert_eq!(first, run(6));
    assert_ne!(first, run(7));
}
