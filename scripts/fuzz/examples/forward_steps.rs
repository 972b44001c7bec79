//! Prints the steps a `forward` input decodes to, then runs it (panics
//! as the target would): `cargo run --release --example forward_steps FILE`
//! (without run.sh's RUSTFLAGS).

use voice_fuzz::forward;

fn main() {
    let path = std::env::args().nth(1).expect("usage: forward_steps FILE");
    let data = std::fs::read(path).expect("readable input");
    let steps = forward::steps(&data);
    for step in &steps {
        println!("{step:?}");
    }
    let reached = forward::run_steps(steps);
    println!("ok: {reached:?}");
}
