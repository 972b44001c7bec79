//! Client library for testing and loading the voice server: it plays
//! Litecord (speaking LVSP to the control plane) and Discord voice clients
//! (voice gateway websocket, UDP IP discovery, encrypted RTP).
//!
//! Used by the end-to-end tests and by the UDP load generator.
//!
//! # Layout
//!
//! - [`lvsp`]: [`LvspClient`] — HELLO / IDENTIFY / READY, CHANNEL_REQ →
//!   CHANNEL_ASSIGN, VOICE_STATE_CREATE → VOICE_STATE_DONE, heartbeats,
//!   RESUME, raw frames (for bad input) and close codes; its protocol state
//!   is the sans-IO [`LvspSession`].
//! - [`gateway`]: [`GatewayClient`] — voice gateway v4-v8: Identify →
//!   Ready, Select Protocol → Session Description, Speaking, Heartbeat
//!   (both shapes), Resume, events and close codes; its protocol state is
//!   the sans-IO [`GatewaySession`].
//! - [`dave`]: [`DaveClient`] — a DAVE member's MLS side (ops 25-30:
//!   key package, proposals → commit and welcome, commits, welcomes),
//!   sans-IO, on openmls as @snazzah/davey is.
//! - [`udp`]: [`VoiceUdp`] — IP discovery, keepalives, sending and
//!   receiving encrypted Opus.
//! - [`rtp`]: RTP header build / parse (CSRCs, extensions, padding).
//! - [`crypto`]: [`Cipher`], sealing and opening in each of the five
//!   [`Mode`]s.
//! - [`voice`]: [`VoiceClient::join`], the whole client handshake in one
//!   call.
//! - [`blaster`]: the UDP load generator (server vs an in-process
//!   recvmmsg/sendmmsg relay, hdrhistogram latency); CLI in `src/bin/blaster.rs`.
//! - [`flood`]: the garbage flood and a call's loss under it; CLI in
//!   `src/bin/flood.rs`.
//! - [`error`]: [`ClientError`] for the networked layer; pure layers have
//!   [`SessionError`], [`PacketError`](rtp::PacketError) and
//!   [`CryptoError`](crypto::CryptoError).
//!
//! Message shapes, opcodes, close codes and [`Mode`] are the `protocol`
//! crate's, shared with the server; packet formats are plain functions
//! (`discovery_request`, ...) that tests can use without sockets.
//!
//! The sessions follow quinn-proto's sans-IO shape: time is passed in,
//! frames to send come out of `poll_transmit`, events out of `poll_event`,
//! the heartbeat deadline out of `poll_timeout`. The async clients are thin
//! drivers over them, and a test can drive them against the server's
//! state machines in one process under simulated time.
//!
//! # Use
//!
//! ```no_run
//! # async fn demo() -> Result<(), scripts::ClientError> {
//! use scripts::{LvspClient, Mode, VoiceClient};
//!
//! let (mut lvsp, _ready) = LvspClient::connect("ws://127.0.0.1:5001", "secret").await?;
//! let assign = lvsp.channel_req("100", Some("200")).await?;
//! let state = lvsp.voice_state_create("300", "100", Some("200")).await?;
//!
//! let mut voice = VoiceClient::join(
//!     "ws://127.0.0.1:5002", 8,
//!     "200", "300", &state.session_id, &assign.token,
//!     Mode::Aes256GcmRtpSize,
//! ).await?;
//! voice.gateway.speaking(1).await?;
//! voice.udp.send_opus(&[0xf8, 0xff, 0xfe]).await?;
//! # Ok(()) }
//! ```
//!
//! Websockets use `ws://`; `wss://` needs a TLS feature of
//! tokio-tungstenite enabled, with no change to this API.

// Only `blaster::mmsg` is allowed `unsafe` (sendmmsg/recvmmsg with
// per-datagram source addresses, which nix cannot express).
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod blaster;
pub mod capacity;
pub mod crypto;
pub mod dave;
pub mod error;
pub mod flood;
pub mod gateway;
mod heartbeat;
pub mod local_server;
pub mod lvsp;
pub mod rtp;
pub mod soak;
pub mod udp;
pub mod voice;
pub mod ws;

#[cfg(test)]
mod testutil;

pub use crypto::{Cipher, Mode};
pub use dave::DaveClient;
pub use error::{ClientError, SessionError};
pub use gateway::{GatewayClient, GatewayEvent, GatewaySession};
pub use lvsp::{LvspClient, LvspEvent, LvspSession};
pub use udp::{ReceivedPacket, VoiceUdp};
pub use voice::VoiceClient;
pub use ws::{trust_certificate_file, Frame, HeartbeatTask, Link, Session, WsWriter};
