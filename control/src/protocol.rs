//! What the two websocket protocols share: refusals that become close
//! frames, and the heartbeat grace.

use std::time::Duration;

/// Why a message was refused: becomes a close frame.
#[derive(Debug)]
pub(crate) struct Refusal {
    pub(crate) code: u16,
    pub(crate) reason: String,
}

pub(crate) fn refuse(code: u16, reason: impl Into<String>) -> Refusal {
    Refusal {
        code,
        reason: reason.into(),
    }
}

pub(crate) type Result<T> = std::result::Result<T, Refusal>;

/// How long past its interval a heartbeat may be late: half an interval
/// and a second more.
pub(crate) fn grace(interval: Duration) -> Duration {
    interval + interval / 2 + Duration::from_secs(1)
}
