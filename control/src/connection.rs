//! What the two websocket protocols share: refusals that become close
//! frames, the pre-authentication frame limit, and the heartbeat grace.

use std::time::Duration;

/// Why a message was refused: becomes a close frame.
///
/// The reason is a fixed string on purpose: a close frame never echoes
/// what the client sent (names, numbers, parser messages).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    /// The websocket close code.
    pub code: u16,
    /// A fixed, human-readable reason.
    pub reason: &'static str,
}

pub(crate) fn refuse(code: impl Into<u16>, reason: &'static str) -> Refusal {
    Refusal {
        code: code.into(),
        reason,
    }
}

pub(crate) type Result<T> = std::result::Result<T, Refusal>;

/// Largest text frame accepted before a connection has identified
/// (gateway Identify/Resume, LVSP IDENTIFY/RESUME), bytes. Those messages
/// are a few hundred bytes; a larger frame is closed with the decode-error
/// code without being parsed.
pub const PRE_AUTH_MAX_MESSAGE: usize = 4096;

/// How long past its interval a heartbeat may be late: half an interval
/// and a second more.
pub(crate) fn grace(interval: Duration) -> Duration {
    interval + interval / 2 + Duration::from_secs(1)
}
