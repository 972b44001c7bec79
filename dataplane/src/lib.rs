//! The voice server's data plane: a thread-per-core RTP forwarder.
//!
//! Each core (one pinned glommio executor) owns one UDP socket of a
//! SO_REUSEPORT group, the sessions of the channels control assigned to it,
//! and its pair of shared-memory rings (see the `shared` crate). A datagram
//! reaches the core that owns its SSRC thanks to a classic-BPF program
//! ([`sys::socket::steering_program`]); there the core answers IP discovery
//! for announced SSRCs, echoes keepalives, and for RTP/RTCP authenticates
//! and decrypts with the sender's key, rejects replays, and re-encrypts for
//! every other member of the channel with that member's key and mode.
//!
//! # Layout
//!
//! - [`packet`]: classifying datagrams, IP discovery replies (sans-IO).
//! - [`crypto`]: the five transport encryption modes as packet transforms.
//! - [`forward`]: [`forward::Forwarder`], the forwarding decision as a plain
//!   function over bytes and a session table, writing into an
//!   [`forward::Outbox`].
//! - [`core`]: the glommio glue (receive loop, command/event ring tick).
//! - [`cli`]: the command line (shared by the `dataplane` binary and
//!   `control dataplane`).
//! - [`sys`]: the only `unsafe` code: sockets and BPF, libsodium, rlimits,
//!   signals.
//!
//! # Driving it
//!
//! Control creates a [`shared::Region`] with the core count and starts
//! `dataplane --shm <path> --bind <ip:port>`. The dataplane binds one socket
//! per core, publishes the UDP port in the region header, then takes
//! commands from the rings. Tests drive [`forward::Forwarder`] directly:
//!
//! ```
//! use dataplane::forward::{Forwarder, Outbox};
//! let mut core = Forwarder::new(0);
//! let mut out = Outbox::with_capacity(8);
//! let mut keepalive = [1, 0, 0, 0, 0, 0, 0, 0];
//! core.handle("127.0.0.1:5000".parse().unwrap(), &mut keepalive, &mut out);
//! assert_eq!(out.len(), 1);
//! ```
//!
//! # Kernel features
//!
//! io_uring (glommio; `kernel.io_uring_disabled` must be 0), SO_REUSEPORT,
//! SO_ATTACH_REUSEPORT_CBPF (Linux 4.5+) and enough RLIMIT_MEMLOCK for the
//! io_uring rings (the binary raises it when privileged; roughly 4 MiB per
//! core with the default settings).

#![deny(unsafe_code)]

pub mod cli;
pub mod core;
pub mod crypto;
pub mod forward;
pub mod packet;
#[allow(unsafe_code)]
pub mod sys;
