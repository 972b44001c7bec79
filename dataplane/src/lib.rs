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
//! Unauthenticated datagrams change no trusted state and earn no answer
//! larger than themselves (see [`forward`] "What a stranger can do").
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
//! use dataplane::forward::{ForwardConfig, Forwarder, Outbox};
//! use shared::{Command, Counters};
//! let mut core = Forwarder::new(0, ForwardConfig::default(), Counters::in_memory(64));
//! let mut out = Outbox::with_capacity(8);
//! let now = 1_000; // monotonic milliseconds, passed in
//! let from = "127.0.0.1:5000".parse().unwrap();
//! // A keepalive from an address no session proved gets nothing.
//! core.handle(now, from, &mut [1, 0, 0, 0, 0, 0, 0, 0], &mut out);
//! assert!(out.is_empty());
//! // IP discovery for an SSRC control announced gets its reply.
//! core.apply(now, Command::AnnounceSsrc { ssrc: 7, channel: 1, user: 1 }).unwrap();
//! let mut discovery = [0u8; 74];
//! discovery[1] = 1;
//! discovery[3] = 70;
//! discovery[7] = 7;
//! core.handle(now, from, &mut discovery, &mut out);
//! assert_eq!(out.get(0).map(|(to, reply)| (to, reply.len())), Some((from, 74)));
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
