//! The errors of the client sessions and of the networked layer
//! (websockets and UDP sockets).
//!
//! Pure parsing and crypto have their own enums ([`PacketError`],
//! [`CryptoError`]), and so do the sans-IO sessions ([`SessionError`]);
//! [`ClientError`] wraps them together with I/O and websocket failures.

use crate::crypto::CryptoError;
use crate::rtp::PacketError;

/// Anything that can go wrong while talking to the server.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// A socket operation failed.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// The websocket library reported an error (bad URL, handshake refused,
    /// broken stream, ...).
    #[error("websocket error: {0}")]
    WebSocket(#[from] Box<tokio_tungstenite::tungstenite::Error>),
    /// A text frame was not the JSON we expected, or a value did not
    /// serialize.
    #[error("json error: {0}")]
    Json(#[from] serde_json::Error),
    /// The peer closed the websocket; the close frame's code, if it sent one.
    #[error("connection closed (close code {0:?})")]
    Closed(Option<u16>),
    /// Nothing arrived in time; names what we were waiting for.
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    /// The server sent something well-formed that breaks the protocol
    /// (a missing field, an unexpected message, a binary frame on LVSP...).
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// A datagram could not be encrypted or decrypted.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    /// A datagram could not be parsed.
    #[error(transparent)]
    Packet(#[from] PacketError),
}

/// What a sans-IO session ([`GatewaySession`](crate::gateway::session::GatewaySession),
/// [`LvspSession`](crate::lvsp::session::LvspSession)) refuses or cannot read.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// A text frame was not JSON.
    #[error("json error: {0}")]
    Json(#[from] serde_json::Error),
    /// JSON without an integer `op`, an id that is not a snowflake, or a
    /// call the session's state does not allow yet (Speaking before Ready,
    /// IDENTIFY before HELLO).
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// The server closed the websocket; the close frame's code, if it sent
    /// one.
    #[error("connection closed (close code {0:?})")]
    Closed(Option<u16>),
}

impl From<SessionError> for ClientError {
    fn from(e: SessionError) -> Self {
        match e {
            SessionError::Json(e) => ClientError::Json(e),
            SessionError::Protocol(why) => ClientError::Protocol(why),
            SessionError::Closed(code) => ClientError::Closed(code),
        }
    }
}

impl From<tokio_tungstenite::tungstenite::Error> for ClientError {
    fn from(e: tokio_tungstenite::tungstenite::Error) -> Self {
        ClientError::WebSocket(Box::new(e))
    }
}

/// Shorthand for results of this crate's networked operations.
pub type Result<T, E = ClientError> = std::result::Result<T, E>;
