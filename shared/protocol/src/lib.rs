//! The voice server's wire protocols, each fact defined once and used by
//! the server (`control`) and the client library (`scripts`) alike.
//!
//! # Layout
//!
//! - [`lvsp`]: LVSP, the Litecord Voice Server Protocol (seeds/001):
//!   opcodes, close codes 4000-4002, INFO types in both dialects, every
//!   message both ways, the IDENTIFY token.
//! - [`gateway`]: the Discord voice gateway (seeds/004, DESIGN.md): opcodes
//!   0-31, close codes 4001-4022, every message both ways with v8's `seq`,
//!   and [`gateway::frame`], the binary framing DAVE uses.
//! - [`Mode`]: the five transport encryption modes, their names and what
//!   each leaves in clear.
//! - [`rtp`]: RTP or RTCP (RFC 5761) and RTP header lengths.
//! - [`Snowflake`]: Discord ids.
//!
//! # Use
//!
//! Messages are plain serde types. Each protocol has a `ClientMessage` and
//! a `ServerMessage` enum with `encode` (to a text frame) and `decode`. A
//! server decodes in two steps, so it can refuse by its own state before
//! it reads `d`:
//!
//! ```
//! use protocol::gateway::{ClientMessage, Opcode};
//! use protocol::Envelope;
//!
//! let text = r#"{"op":3,"d":{"t":1501184119561,"seq_ack":10}}"#;
//! let env = Envelope::parse(text).expect("an object with an integer op");
//! assert_eq!(Opcode::from_code(env.op()), Some(Opcode::Heartbeat));
//! let message = ClientMessage::from_envelope(&env, 8).expect("a v8 heartbeat");
//! let ClientMessage::Heartbeat(heartbeat) = message else { unreachable!() };
//! let ack = protocol::gateway::ServerMessage::HeartbeatAck(heartbeat.ack());
//! assert_eq!(ack.encode(None), r#"{"op":6,"d":{"t":1501184119561}}"#);
//! ```
//!
//! Decoding never panics; a refusal is a `DecodeError` that names the
//! documented close code (`close_code()`) and a fixed reason that never
//! repeats what the peer sent. Unknown fields are ignored.
#![forbid(unsafe_code)]

mod code;
pub mod gateway;
mod json;
pub mod lvsp;
mod mode;
pub mod rtp;
mod snowflake;

pub use json::{Envelope, Malformed};
pub use mode::{Mode, UnknownMode, TAG_LEN};
pub use snowflake::{ParseSnowflakeError, Snowflake};

/// Websocket close code 1013, "try again later" (RFC 6455 registry): both
/// protocols send it to a connection that identified when every identified
/// slot is taken.
pub const TRY_AGAIN_LATER: u16 = 1013;

/// Websocket close code 1000, normal closure (RFC 6455): a voice client
/// that closes with it (or [`GOING_AWAY`]) left the call.
pub const NORMAL_CLOSURE: u16 = 1000;

/// Websocket close code 1001, going away (RFC 6455): a browser tab closed,
/// a client shutting down.
pub const GOING_AWAY: u16 = 1001;
