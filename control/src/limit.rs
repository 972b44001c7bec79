//! Per-connection message budgets (token buckets), time passed in.

use std::time::Instant;

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
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

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
}
