//! Prints the steps a `forward` input decodes to, then runs it (panics
//! as the target would): `cargo run --release --example forward_steps FILE`
//! (without run.sh's RUSTFLAGS).

use arbitrary::{Arbitrary, Unstructured};
use voice_fuzz::forward::{self, Step};

fn main() {
    let path = std::env::args().nth(1).expect("usage: forward_steps FILE");
    let data = std::fs::read(path).expect("readable input");
    let steps = Vec::<Step>::arbitrary_take_rest(Unstructured::new(&data)).expect("decodes");
    for step in &steps {
        println!("{step:?}");
    }
    forward::run(steps);
    println!("ok");
}
