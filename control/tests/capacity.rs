//! The capacity tool, short: `capacity compare` and `capacity search`
//! (scripts::capacity) start this build's control pinned to CPU 0, load it
//! from CPU 1 through the shared-socket generator, and compare it with the
//! plain relay pinned to CPU 0. Small and short here (a few rooms, half a
//! second per phase): the figures are BENCHMARKS.md's, by hand. What this
//! checks is that every part runs end to end and measures what it says:
//! each target delivers, the sampled datagrams open and check, nothing
//! invalid arrives, and the JSON carries the figures.

use clap::Parser;
use serde_json::Value;

fn capacity(args: &[&str]) -> Value {
    let mut argv = vec!["capacity", "--control", env!("CARGO_BIN_EXE_control")];
    argv.extend_from_slice(args);
    let args = scripts::capacity::Args::try_parse_from(argv).unwrap();
    scripts::capacity::run(&args).expect("the measurement ran")
}

fn check_phase(p: &Value, what: &str) {
    assert!(p["egress_pps"].as_f64().unwrap() > 0.0, "{what}: {p}");
    assert!(p["verified"].as_u64().unwrap() > 0, "{what}: {p}");
    assert_eq!(p["verify_failed"], 0, "{what}: {p}");
    assert_eq!(p["invalid"], 0, "{what}: {p}");
    let l = &p["latency_us"];
    assert!(
        l["p50"].as_f64().unwrap() <= l["p99"].as_f64().unwrap(),
        "{what}: {p}"
    );
    let busy = p["target_busy"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&busy), "{what}: {p}");
}

#[test]
fn compare_and_search_run_end_to_end() {
    // Both packet I/O paths, one server each, beside the same relay phases.
    let json = capacity(&[
        "--packet-io",
        "mmsg,uring",
        "compare",
        "--rooms",
        "4",
        "--duration",
        "0.5",
        "--repeats",
        "2",
    ]);
    let compare = json["compare"].as_array().expect("compare results");
    assert_eq!(compare.len(), 2, "{json}");
    for (c, fanout) in compare.iter().zip([1, 4]) {
        assert_eq!(c["fanout"], fanout);
        let alternatives = c["alternatives"].as_array().expect("alternatives");
        assert_eq!(alternatives.len(), 1, "{c}");
        for (k, io) in [(c, "mmsg"), (&alternatives[0], "uring")] {
            assert_eq!(k["packet_io"], io, "{c}");
            check_phase(&k["server"], io);
            check_phase(&k["relay"], "relay");
            let ratio = k["ratio"].as_f64().unwrap();
            assert!(ratio > 0.0, "{k}");
            let ratios = k["ratios"].as_array().unwrap();
            assert_eq!(ratios.len(), 2, "{k}");
            assert!(ratios.iter().any(|r| r.as_f64() == Some(ratio)), "{k}");
            // At fan-out 4 every packet a talker sends reaches four.
            for p in [&k["server"], &k["relay"]] {
                assert!(
                    p["egress_pps"].as_f64().unwrap()
                        <= p["ingress_pps"].as_f64().unwrap() * fanout as f64 + 1.0,
                    "{k}"
                );
            }
        }
    }

    let json = capacity(&[
        "search",
        "--start",
        "20",
        "--growth",
        "2",
        "--max-clients",
        "40",
        "--duration",
        "0.5",
        "--repeats",
        "1",
        "--max-p99-ratio",
        "1000",
    ]);
    let s = &json["search"];
    let steps = s["steps"].as_array().expect("steps");
    assert_eq!(steps.len(), 2, "20 then 40 clients: {json}");
    for step in steps {
        check_phase(&step["server"], "server");
        check_phase(&step["relay"], "relay");
        assert_eq!(step["passed"], true, "a light load passes: {step}");
        // Paced: 50 packets a second per talker, one talker per room of 5.
        let clients = step["server"]["clients"].as_f64().unwrap();
        let ingress = step["server"]["ingress_pps"].as_f64().unwrap();
        assert!(
            (ingress - clients / 5.0 * 50.0).abs() <= clients / 5.0 * 50.0 * 0.1,
            "{step}"
        );
    }
    assert_eq!(s["capacity"], 40, "{json}");
    check_phase(&s["at_half"]["server"], "server at half");
    assert_eq!(s["at_half"]["server"]["clients"], 20);
}
