//! The error of the networked layer (websockets and UDP sockets).
//!
//! Pure parsing and crypto have their own enums ([`PacketError`],
//! [`CryptoError`]); this one wraps them together with I/O, websocket and
//! protocol failures.

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

impl From<tokio_tungstenite::tungstenite::Error> for ClientError {
    fn from(e: tokio_tungstenite::tungstenite::Error) -> Self {
        ClientError::WebSocket(Box::new(e))
    }
}

/// Shorthand for results of this crate's networked operations.
pub type Result<T, E = ClientError> = std::result::Result<T, E>;
