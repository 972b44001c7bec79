//! `dataplane --shm <PATH> --bind <IP:PORT> [--stats-interval-ms 250]`: see
//! [`dataplane::cli`].

#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    dataplane::cli::main(std::env::args_os())
}
