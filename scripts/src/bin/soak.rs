//! `soak`: a long, bounded run of realistic load with churn against a
//! voice server it starts itself; see [`scripts::soak`] and
//! `scripts/README.md`, "Soak".

#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use scripts::soak::{soak, Args};

fn main() -> ExitCode {
    match soak(&Args::parse()) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("soak: {e:#}");
            ExitCode::from(2)
        }
    }
}
