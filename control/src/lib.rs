//! Control plane of the voice server.
//!
//! Serves LVSP to Litecord ([`lvsp`]) and the Discord voice gateway to
//! clients ([`gateway`]), keeps the [`registry`] of channels, voice states and
//! sessions, and drives the data plane through the shared-memory rings of the
//! `shared` crate ([`link`]).
//!
//! # Layout
//!
//! - [`lvsp`], [`gateway`]: sans-IO protocol state machines. They parse
//!   frames into the `protocol` crate's types, take `now`, and return
//!   [`Output`]s; they never touch a socket or a clock.
//! - [`registry`]: the state both protocols change, emitting effects
//!   (data-plane commands, typed messages and closes for gateway
//!   connections); [`stream`] numbers a gateway session's messages for
//!   Resume.
//! - [`server`]: the thin tokio/tungstenite layer: listeners, one task per
//!   websocket, effect dispatch, the dataplane child process.
//! - [`link`]: the control side of the rings, with back-pressure.
//! - [`dave`]: DAVE end-to-end encryption, the server's part (the MLS
//!   delivery service and external sender) as a per-channel state machine.
//! - [`config`]: typed configuration with documented defaults.
//! - [`persist`]: the state a new control takes over from (`--state-dir`).
//!
//! Drive it with [`server::Server::start`] and a shutdown future.
#![forbid(unsafe_code)]

pub mod config;
pub mod connection;
pub mod dave;
pub mod gateway;
pub mod limit;
pub mod link;
pub mod lvsp;
pub mod persist;
pub mod registry;
pub mod replay;
pub mod server;
pub mod settings;
pub mod stream;
pub mod video;

pub use connection::{Refusal, PRE_AUTH_MAX_MESSAGE};

/// What a protocol state machine wants done on its socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Send a text frame.
    Text(String),
    /// Send a binary frame (DAVE's MLS ops).
    Binary(Vec<u8>),
    /// Send a close frame with this code and reason, then stop reading.
    Close {
        /// Websocket close code (4000-4999).
        code: u16,
        /// Human-readable reason.
        reason: String,
    },
}
