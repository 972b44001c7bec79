//! Per-address backoff after failed LVSP authentication (IDENTIFY or
//! RESUME with a wrong token), time passed in.
//!
//! An address gets [`AuthBackoff::free_failures`] failures for free; after
//! each further failure its attempts are refused without checking the token
//! for a window that doubles from [`AuthBackoff::base`] up to
//! [`AuthBackoff::max`]. An address that stays quiet for
//! [`AuthBackoff::forget_after`] is forgotten, a success forgets it at once,
//! and at most [`AuthBackoff::max_addresses`] are remembered (the stalest
//! goes first), so memory stays bounded whatever an attacker does. IPv6
//! peers are grouped by /64, the block one subscriber usually holds.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::time::{Duration, Instant};

use crate::limit::{Bucket, RateLimit};

/// Backoff settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthBackoff {
    /// Failures an address may have before its attempts are refused.
    /// Default 3.
    pub free_failures: u32,
    /// The first refusal window; each further failure doubles it. Default
    /// 1 s.
    pub base: Duration,
    /// The longest refusal window. Default 300 s.
    pub max: Duration,
    /// An address with no failure for this long is forgotten. Default 600 s.
    pub forget_after: Duration,
    /// Addresses remembered at most. Default 4096.
    pub max_addresses: usize,
}

impl Default for AuthBackoff {
    fn default() -> Self {
        AuthBackoff {
            free_failures: 3,
            base: Duration::from_secs(1),
            max: Duration::from_secs(300),
            forget_after: Duration::from_secs(600),
            max_addresses: 4096,
        }
    }
}

/// What the guard knows about one address.
#[derive(Debug, Clone, Copy)]
struct Entry {
    failures: u32,
    last_failure: Instant,
    /// Attempts before this instant are refused unchecked.
    blocked_until: Option<Instant>,
}

/// What a recorded failure means for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failure {
    /// Failures from this address so far (within the memory window).
    pub failures: u32,
    /// How long its attempts will now be refused, if at all.
    pub blocked_for: Option<Duration>,
    /// Whether to log this failure (failure logs are rate-limited).
    pub log: bool,
    /// Failure log lines skipped since the last one logged.
    pub unlogged: u64,
}

/// The per-address failure table shared by every LVSP connection.
#[derive(Debug)]
pub struct AuthGuard {
    config: AuthBackoff,
    entries: HashMap<IpAddr, Entry>,
    /// Failed authentications, all addresses.
    failures_total: u64,
    /// Attempts refused unchecked during a backoff window.
    refused_total: u64,
    /// Failure log lines: 1 per second, bursts of 10.
    log_budget: Option<Bucket>,
    unlogged: u64,
}

/// How many failure lines the log takes: a burst, then one per second.
const LOG_RATE: RateLimit = RateLimit {
    per_second: 1.0,
    burst: 10.0,
};

impl AuthGuard {
    /// An empty table.
    pub fn new(config: AuthBackoff) -> AuthGuard {
        AuthGuard {
            config,
            entries: HashMap::new(),
            failures_total: 0,
            refused_total: 0,
            log_budget: None,
            unlogged: 0,
        }
    }

    /// Whether `peer` may attempt to authenticate now. A refusal is counted.
    pub fn admit(&mut self, peer: IpAddr, now: Instant) -> bool {
        let key = key(peer);
        let Some(entry) = self.entries.get(&key).copied() else {
            return true;
        };
        if now.saturating_duration_since(entry.last_failure) >= self.config.forget_after {
            self.entries.remove(&key);
            return true;
        }
        if entry.blocked_until.is_some_and(|until| now < until) {
            self.refused_total += 1;
            return false;
        }
        true
    }

    /// `peer` presented a wrong token: counts it and, past the free
    /// failures, starts its refusal window.
    pub fn failed(&mut self, peer: IpAddr, now: Instant) -> Failure {
        self.failures_total += 1;
        let key = key(peer);
        if !self.entries.contains_key(&key) {
            self.make_room(now);
        }
        let forget_after = self.config.forget_after;
        let entry = self.entries.entry(key).or_insert(Entry {
            failures: 0,
            last_failure: now,
            blocked_until: None,
        });
        if now.saturating_duration_since(entry.last_failure) >= forget_after {
            entry.failures = 0;
        }
        entry.failures = entry.failures.saturating_add(1);
        entry.last_failure = now;
        let blocked_for = entry
            .failures
            .checked_sub(self.config.free_failures)
            .filter(|n| *n > 0)
            .map(|n| {
                // base · 2^(n-1), capped (the shift is capped first so it
                // cannot overflow).
                let doubled = self.config.base.saturating_mul(1u32 << (n - 1).min(20));
                doubled.min(self.config.max)
            });
        entry.blocked_until = blocked_for.map(|d| now + d);
        let failures = entry.failures;
        let log = self
            .log_budget
            .get_or_insert_with(|| Bucket::new(LOG_RATE, now))
            .take(now);
        let unlogged = if log {
            std::mem::take(&mut self.unlogged)
        } else {
            self.unlogged += 1;
            0
        };
        Failure {
            failures,
            blocked_for,
            log,
            unlogged,
        }
    }

    /// `peer` authenticated: its failures are forgotten.
    pub fn succeeded(&mut self, peer: IpAddr) {
        self.entries.remove(&key(peer));
    }

    /// Failed authentications so far.
    pub fn failures_total(&self) -> u64 {
        self.failures_total
    }

    /// Attempts refused unchecked so far.
    pub fn refused_total(&self) -> u64 {
        self.refused_total
    }

    /// Addresses remembered now.
    pub fn tracked(&self) -> usize {
        self.entries.len()
    }

    /// Frees a slot when the table is full: the forgotten first, else the
    /// address whose last failure is oldest.
    fn make_room(&mut self, now: Instant) {
        if self.entries.len() < self.config.max_addresses.max(1) {
            return;
        }
        let forget_after = self.config.forget_after;
        self.entries
            .retain(|_, e| now.saturating_duration_since(e.last_failure) < forget_after);
        if self.entries.len() >= self.config.max_addresses.max(1) {
            if let Some(stalest) = self
                .entries
                .iter()
                .min_by_key(|(_, e)| e.last_failure)
                .map(|(k, _)| *k)
            {
                self.entries.remove(&stalest);
            }
        }
    }
}

/// The table key of a peer: IPv4 (also when mapped into IPv6) as is, IPv6
/// by its /64.
fn key(peer: IpAddr) -> IpAddr {
    match peer.to_canonical() {
        IpAddr::V6(v6) => {
            let mut s = v6.segments();
            s[4..].fill(0);
            IpAddr::V6(Ipv6Addr::from(s))
        }
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard() -> AuthGuard {
        AuthGuard::new(AuthBackoff {
            max_addresses: 3,
            ..AuthBackoff::default()
        })
    }

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 2));

    #[test]
    fn three_free_failures_then_doubling_windows_up_to_the_cap() {
        let mut g = guard();
        let mut now = Instant::now();
        for n in 1..=3 {
            assert!(g.admit(A, now));
            assert_eq!(g.failed(A, now).blocked_for, None, "failure {n} is free");
        }
        assert!(g.admit(A, now));
        let f = g.failed(A, now);
        assert_eq!(
            (f.failures, f.blocked_for),
            (4, Some(Duration::from_secs(1)))
        );
        assert!(!g.admit(A, now + Duration::from_millis(999)));
        assert!(g.admit(B, now), "other addresses are not affected");
        now += Duration::from_secs(1);
        assert!(g.admit(A, now));
        assert_eq!(g.failed(A, now).blocked_for, Some(Duration::from_secs(2)));
        assert!(!g.admit(A, now + Duration::from_millis(1999)));
        assert_eq!(g.refused_total(), 2);
        // Many more failures: the window stops at the cap.
        for _ in 0..40 {
            now += Duration::from_secs(300);
            g.failed(A, now);
        }
        assert_eq!(g.failed(A, now).blocked_for, Some(Duration::from_secs(300)));
        assert_eq!(g.failures_total(), 3 + 2 + 41);
    }

    #[test]
    fn success_and_quiet_periods_forget() {
        let mut g = guard();
        let now = Instant::now();
        for _ in 0..5 {
            g.failed(A, now);
        }
        assert!(!g.admit(A, now));
        g.succeeded(A);
        assert!(g.admit(A, now));
        for _ in 0..5 {
            g.failed(A, now);
        }
        let later = now + Duration::from_secs(600);
        assert!(g.admit(A, later), "quiet for the forget period");
        assert_eq!(g.tracked(), 0);
        assert_eq!(g.failed(A, later).failures, 1, "counted afresh");
    }

    #[test]
    fn memory_is_bounded_and_the_stalest_goes_first() {
        let mut g = guard();
        let t0 = Instant::now();
        for i in 0..1000u32 {
            let peer = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            g.failed(peer, t0 + Duration::from_millis(u64::from(i)));
            assert!(g.tracked() <= 3);
        }
        // The three most recent remain.
        let last = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + 999));
        assert!(g.entries.contains_key(&last));
        assert!(!g
            .entries
            .contains_key(&IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000))));
    }

    #[test]
    fn ipv6_is_grouped_by_64_and_mapped_v4_is_v4() {
        let mut g = guard();
        let now = Instant::now();
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        for _ in 0..4 {
            g.failed(a, now);
        }
        assert!(!g.admit(b, now), "same /64");
        assert!(g.admit(other, now));
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        for _ in 0..4 {
            g.failed(mapped, now);
        }
        assert!(!g.admit(A, now));
    }

    #[test]
    fn failure_logs_are_rate_limited() {
        let mut g = guard();
        let now = Instant::now();
        let logged = (0..100).filter(|_| g.failed(A, now).log).count();
        assert_eq!(logged, 10, "a burst of 10");
        let f = g.failed(A, now + Duration::from_secs(1));
        assert!(f.log);
        assert_eq!(f.unlogged, 90, "the skipped lines are reported");
    }
}
