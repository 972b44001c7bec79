//! The soak, short: the `soak` tool (scripts::soak) starts this build's
//! control, runs two staggered groups of 4 channels × 5 members through
//! 5-second rounds of paced Opus-sized media with every member joining and
//! leaving each round, for 25 seconds, and must pass: no invalid packet,
//! loss within 0.1%, resident memory flat within 50% once warm. The
//! 10-minute run is by hand (`scripts/README.md`, "Soak").

use clap::Parser;

#[test]
fn a_short_soak_passes() {
    let args = scripts::soak::Args::try_parse_from([
        "soak",
        "--control",
        env!("CARGO_BIN_EXE_control"),
        "--duration-secs",
        "25",
        "--round-secs",
        "5",
        "--channels",
        "4",
        "--sample-secs",
        "1",
        "--max-growth-pct",
        "50",
    ])
    .unwrap();
    assert!(
        scripts::soak::soak(&args).expect("the soak ran"),
        "the soak failed (see its summary)"
    );
}
