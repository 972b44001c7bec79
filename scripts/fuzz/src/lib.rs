//! Fuzz targets for the voice server (issue 8, item 9), one module per
//! target; the files in `fuzz_targets/` only hand libFuzzer's input to them.
//!
//! - [`packet`]: the datagram classifier and the IP discovery reply.
//! - [`forward`]: the whole per-datagram decision of a data-plane core.
//! - [`crypto`]: `open` (and `seal` then `open`) in each transport mode.
//! - [`ring`]: the command and event decoders of the shared-memory rings.
//! - [`lvsp`], [`gateway`]: both websocket protocol state machines, fed
//!   scripts of messages, timeouts and closes ([`script`]).
//!
//! Each target asserts what must hold for every input, beyond "no panic":
//! see the module docs. A failed assertion is a crash like a panic.
//!
//! The APIs under test are called in one place per target (`handle`,
//! `classify`, `open`, ...), so a change of signature is a one-line change.
#![forbid(unsafe_code)]

pub mod crypto;
pub mod forward;
pub mod gateway;
pub mod lvsp;
pub mod packet;
pub mod ring;
pub mod script;
