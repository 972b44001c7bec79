//! `capacity`: pinned measurements of one data-plane core against the
//! plain relay (`scripts::capacity`). Prints a line per phase on stderr and
//! one JSON document on stdout. See BENCHMARKS.md.

#![forbid(unsafe_code)]

use clap::Parser;

fn main() -> anyhow::Result<()> {
    let args = scripts::capacity::Args::parse();
    let json = scripts::capacity::run(&args)?;
    println!("{json}");
    Ok(())
}
