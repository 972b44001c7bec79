//! The heartbeat schedule both client sessions keep: when the next
//! heartbeat is due, and how long the last one waited for its ACK. Time is
//! passed in, like everywhere in the sessions.

use std::time::{Duration, Instant};

/// A heartbeat timer and round-trip measurement.
#[derive(Debug, Clone, Default)]
pub(crate) struct Schedule {
    /// The period, while heartbeating.
    every: Option<Duration>,
    /// When the next heartbeat is due, while heartbeating.
    next: Option<Instant>,
    /// When the heartbeat still waiting for its ACK went out.
    sent: Option<Instant>,
    /// The last measured round trip.
    rtt: Option<Duration>,
}

impl Schedule {
    /// Heartbeats every `interval` (at least 1 ms, so a zero from the
    /// server cannot spin a driver), the first one interval after `now`.
    pub(crate) fn start(&mut self, now: Instant, interval: Duration) {
        let every = interval.max(Duration::from_millis(1));
        self.every = Some(every);
        self.next = Some(now + every);
    }

    /// No more heartbeats until [`start`](Self::start).
    pub(crate) fn stop(&mut self) {
        self.every = None;
        self.next = None;
    }

    /// When the next heartbeat is due.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.next
    }

    /// Whether a heartbeat is due at `now`; if it is, the one after is
    /// scheduled an interval from `now` (a late driver gets one heartbeat,
    /// not a burst).
    pub(crate) fn due(&mut self, now: Instant) -> bool {
        match (self.next, self.every) {
            (Some(next), Some(every)) if now >= next => {
                self.next = Some(now + every);
                true
            }
            _ => false,
        }
    }

    /// A heartbeat went out at `now`.
    pub(crate) fn sent(&mut self, now: Instant) {
        self.sent = Some(now);
    }

    /// The last heartbeat's ACK arrived at `now`.
    pub(crate) fn acked(&mut self, now: Instant) {
        if let Some(sent) = self.sent.take() {
            self.rtt = Some(now.saturating_duration_since(sent));
        }
    }

    /// The round trip of the last acknowledged heartbeat.
    pub(crate) fn rtt(&self) -> Option<Duration> {
        self.rtt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_once_per_interval_and_measures_round_trips() {
        let t0 = Instant::now();
        let mut s = Schedule::default();
        assert_eq!(s.deadline(), None);
        assert!(!s.due(t0 + Duration::from_secs(100)));
        s.start(t0, Duration::from_secs(5));
        assert_eq!(s.deadline(), Some(t0 + Duration::from_secs(5)));
        assert!(!s.due(t0 + Duration::from_secs(4)));
        // Late by 3 s: one heartbeat, the next a whole interval later.
        assert!(s.due(t0 + Duration::from_secs(8)));
        assert!(!s.due(t0 + Duration::from_secs(8)));
        assert_eq!(s.deadline(), Some(t0 + Duration::from_secs(13)));
        s.sent(t0 + Duration::from_secs(8));
        s.acked(t0 + Duration::from_millis(8_040));
        assert_eq!(s.rtt(), Some(Duration::from_millis(40)));
        // An ACK with nothing outstanding measures nothing.
        s.acked(t0 + Duration::from_secs(9));
        assert_eq!(s.rtt(), Some(Duration::from_millis(40)));
        s.stop();
        assert_eq!(s.deadline(), None);
        s.start(t0, Duration::ZERO);
        assert_eq!(s.deadline(), Some(t0 + Duration::from_millis(1)));
    }
}
