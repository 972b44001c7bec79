//! What the two websocket protocols share: the contract the server drives
//! both state machines through ([`Protocol`]), the state their messages
//! change ([`Context`]), refusals that become close frames, the
//! pre-authentication frame limit, and the heartbeat grace.

use std::time::{Duration, Instant};

use crate::lvsp::{AuthGuard, Replay};
use crate::registry::{Push, Registry};
use crate::Output;

/// What every connection's messages may change, held under the server's
/// one lock: the registry, LVSP's numbered INFOs (shared by every LVSP
/// connection, so a RESUME on a new one re-delivers them) and the failed
/// LVSP authentications per address.
#[derive(Debug)]
pub struct Context {
    /// Channels, voice states and sessions.
    pub registry: Registry,
    /// LVSP's numbered INFOs.
    pub replay: Replay,
    /// LVSP's per-address backoff after failed IDENTIFYs.
    pub guard: AuthGuard,
}

/// A websocket protocol's server side as a sans-IO state machine: what
/// the server feeds it (frames, pushes from the registry, time) and what it
/// takes out (frames to send, a close, the next deadline). Both the voice
/// gateway and LVSP connections are one.
///
/// A text frame goes in two steps: [`Protocol::handle_text`] charges the
/// connection's budget and decodes it without shared state (outside the
/// lock, so parsing costs nobody else anything), then
/// [`Protocol::handle_incoming`] acts on it with the [`Context`].
pub trait Protocol {
    /// The protocol's name in logs and metrics.
    const NAME: &'static str;
    /// The close code for a connection that did not identify in time.
    const IDENTIFY_TIMEOUT_CODE: u16;
    /// The close code when the server stops and a new control takes over
    /// (the peer should resume).
    const RESTART_CODE: u16;
    /// A decoded message, handled under the lock.
    type Incoming;

    /// Whether Identify (or Resume) succeeded: the connection leaves the
    /// server's pending budget.
    fn is_identified(&self) -> bool;
    /// Who is on the other end once identified, for the connection's log
    /// span: (user, channel, SSRC); never a token or session id.
    fn identity(&self) -> Option<(u64, u64, u32)> {
        None
    }
    /// When the server may read this connection's next frame: None for
    /// now. A connection whose peer is trusted (an identified LVSP link)
    /// waits out a spent message budget here (back-pressure: the server
    /// reads more slowly) instead of being closed for it.
    fn read_after(&self, now: Instant) -> Option<Instant> {
        let _ = now;
        None
    }
    /// A websocket Ping or Pong: it spends a message of the budget like any
    /// other frame.
    fn handle_ping(&mut self, now: Instant);
    /// A text frame, step one: budget and decoding, no shared state.
    /// Returns what [`Protocol::handle_incoming`] must handle, or None
    /// (answered, or refused with a close queued).
    fn handle_text(&mut self, now: Instant, text: &str) -> Option<Self::Incoming>;
    /// A decoded message, step two, with the shared state.
    fn handle_incoming(&mut self, now: Instant, incoming: Self::Incoming, cx: &mut Context);
    /// A binary frame, step one like [`Protocol::handle_text`].
    fn handle_binary(&mut self, now: Instant, bytes: &[u8]) -> Option<Self::Incoming>;
    /// A frame over the size limit (the socket layer discarded it).
    fn handle_oversized(&mut self);
    /// Something the registry wants done with this connection.
    fn handle_push(&mut self, push: Push) {
        let _ = push;
    }
    /// The peer sent a close frame with `code` (None: a frame without a
    /// code, 1005); [`Protocol::closed`] follows.
    fn handle_close(&mut self, code: Option<u16>) {
        let _ = code;
    }
    /// Time passes: deadlines that ran out close the connection.
    fn handle_timeout(&mut self, now: Instant);
    /// The socket is gone; called once.
    fn closed(&mut self, now: Instant, cx: &mut Context);
    /// The next thing to send, if any.
    fn poll_output(&mut self) -> Option<Output>;
    /// When [`Protocol::handle_timeout`] must next be called.
    fn poll_timeout(&self) -> Option<Instant>;
}

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
