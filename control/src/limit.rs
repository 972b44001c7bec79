//! Per-connection message budgets (token buckets), time passed in.

use std::time::{Duration, Instant};

/// A per-connection message budget: `burst` messages at once, refilled at
/// `per_second`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    /// Sustained messages per second.
    pub per_second: f64,
    /// Messages allowed at once.
    pub burst: f64,
}

/// A token bucket over [`RateLimit`], time passed in.
#[derive(Debug, Clone)]
pub struct Bucket {
    limit: RateLimit,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    /// A full bucket at `now`.
    pub fn new(limit: RateLimit, now: Instant) -> Bucket {
        Bucket {
            limit,
            tokens: limit.burst,
            at: now,
        }
    }

    /// Takes one token; false when the budget is spent.
    pub fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = now.max(self.at);
        self.tokens = (self.tokens + elapsed * self.limit.per_second).min(self.limit.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// When the next token is there: None when one is there at `now`.
    /// A caller that trusts its peer waits until then instead of refusing
    /// (back-pressure).
    pub fn ready_at(&self, now: Instant) -> Option<Instant> {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        let tokens = (self.tokens + elapsed * self.limit.per_second).min(self.limit.burst);
        if tokens >= 1.0 {
            return None;
        }
        let wait = (1.0 - tokens) / self.limit.per_second;
        // Rounded up to the microsecond, so that a wake-up at the instant
        // finds the token.
        let wait = Duration::from_micros((wait * 1e6).ceil() as u64 + 1);
        Some(now.max(self.at) + wait)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_sustained_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::new(
            RateLimit {
                per_second: 2.0,
                burst: 3.0,
            },
            t0,
        );
        assert!((0..3).all(|_| b.take(t0)));
        assert!(!b.take(t0));
        assert!(b.take(t0 + Duration::from_millis(500)));
        assert!(!b.take(t0 + Duration::from_millis(600)));
        // A long quiet spell refills only up to the burst.
        let later = t0 + Duration::from_secs(60);
        assert!((0..3).all(|_| b.take(later)));
        assert!(!b.take(later));
    }

    #[test]
    fn ready_at_is_when_the_next_token_is_there() {
        let t0 = Instant::now();
        let mut b = Bucket::new(
            RateLimit {
                per_second: 4.0,
                burst: 2.0,
            },
            t0,
        );
        assert_eq!(b.ready_at(t0), None);
        assert!(b.take(t0) && b.take(t0));
        let at = b.ready_at(t0).expect("spent");
        assert!(at > t0 + Duration::from_millis(249), "{:?}", at - t0);
        assert!(at < t0 + Duration::from_millis(251), "{:?}", at - t0);
        assert!(!b.take(at - Duration::from_millis(2)));
        assert!(b.take(at), "a wake-up at the instant finds the token");
        assert!(b.ready_at(at).is_some());
    }
}
