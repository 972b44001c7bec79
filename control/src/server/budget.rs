//! Connection budgets of one listener.
//!
//! A connection is *pending* from accept until its protocol state machine
//! says it identified (gateway Identify or Resume, LVSP IDENTIFY or RESUME
//! accepted): TCP, TLS, the websocket upgrade and the wait for Identify all
//! happen in a small pending budget, capped per source address and per
//! source prefix (/24 for IPv4, /64 for IPv6; IPv4-mapped IPv6 counts as
//! IPv4). Once identified it moves to the identified budget
//! (`--max-connections`), which pending connections never consume: nobody
//! without credentials can take a slot from an identified client or from
//! Litecord's link.
//!
//! When the pending budget is full, a new connection (within its source's
//! caps) takes the slot of the oldest pending connection of the prefix
//! that holds the most, which is dropped. Simply refusing newcomers would
//! let an attacker spread over enough networks keep every slot by
//! reconnecting; this way its connections push out each other, and a
//! client from a network with few pending connections is dropped only when
//! no network holds more (an attacker would need about as many /24s as
//! there are pending slots), or when it is the oldest there and still
//! has not identified. At most [`EVICTING_MAX`] dropped connections may
//! still be closing at once (beyond that newcomers are refused), which
//! keeps the descriptors bounded.
//!
//! Refusals are counted by reason (for `/metrics`) and summed up in one
//! WARN line per [`SUMMARY_EVERY`] at most, never one line per refusal.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

/// How often a listener logs its refusals (when there were any).
pub(super) const SUMMARY_EVERY: Duration = Duration::from_secs(10);

/// Pending connections dropped to make room that may still be closing
/// (their descriptors not yet released), per listener.
pub(super) const EVICTING_MAX: usize = 16;

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refusal {
    /// Every pending slot of the listener is taken and too many evicted
    /// connections are still closing.
    PendingFull,
    /// The source address has its share of pending slots.
    Address,
    /// The source's /24 (IPv4) or /64 (IPv6) has its share of pending slots.
    Prefix,
    /// The connection identified but every identified slot is taken.
    IdentifiedFull,
}

impl Refusal {
    /// Every reason, in metrics order.
    pub(super) const ALL: [Refusal; 4] = [
        Refusal::PendingFull,
        Refusal::Address,
        Refusal::Prefix,
        Refusal::IdentifiedFull,
    ];

    /// The `reason` label in metrics and logs.
    pub(super) fn name(self) -> &'static str {
        match self {
            Refusal::PendingFull => "pending_full",
            Refusal::Address => "per_address",
            Refusal::Prefix => "per_prefix",
            Refusal::IdentifiedFull => "identified_full",
        }
    }
}

/// The limits of one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Limits {
    /// Pending (not yet identified) connections.
    pub pending: usize,
    /// Pending connections from one source address.
    pub per_address: usize,
    /// Pending connections from one /24 or /64.
    pub per_prefix: usize,
    /// Identified connections.
    pub identified: usize,
}

/// A source's network: the first three octets of an IPv4 address or the
/// first four segments of an IPv6 one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Prefix {
    V4([u8; 3]),
    V6([u16; 4]),
}

/// The address a connection is counted under (IPv4-mapped IPv6 as IPv4)
/// and its prefix.
fn source(ip: IpAddr) -> (IpAddr, Prefix) {
    let ip = ip.to_canonical();
    let prefix = match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            Prefix::V4([a, b, c])
        }
        IpAddr::V6(v6) => {
            let [a, b, c, d, ..] = v6.segments();
            Prefix::V6([a, b, c, d])
        }
    };
    (ip, prefix)
}

/// A pending connection's slot, and the signal that drops it.
#[derive(Debug)]
struct Slot {
    permit: OwnedSemaphorePermit,
    evict: Arc<Notify>,
}

/// The pending connections of a listener. Entries exist only while their
/// count is above zero, so no map holds more entries than open pending
/// connections.
#[derive(Debug, Default)]
struct Ledger {
    /// Open pending connections per address and per prefix (evicted ones
    /// still closing included): what the caps apply to.
    by_address: HashMap<IpAddr, usize>,
    by_prefix: HashMap<Prefix, usize>,
    /// Pending connections that may be evicted, per prefix, oldest first.
    queues: HashMap<Prefix, BTreeMap<u64, Slot>>,
    /// Every non-empty queue by (length, age of its oldest entry): the
    /// last one is where evictions come from (the longest; of equally long
    /// ones, the one holding the oldest connection).
    longest: BTreeSet<(usize, Reverse<u64>, Prefix)>,
    next_id: u64,
}

impl Ledger {
    fn count(&self, ip: IpAddr) -> (usize, usize) {
        let (ip, prefix) = source(ip);
        (
            self.by_address.get(&ip).copied().unwrap_or(0),
            self.by_prefix.get(&prefix).copied().unwrap_or(0),
        )
    }

    fn add(&mut self, ip: IpAddr) {
        let (ip, prefix) = source(ip);
        *self.by_address.entry(ip).or_default() += 1;
        *self.by_prefix.entry(prefix).or_default() += 1;
    }

    fn remove(&mut self, ip: IpAddr) {
        let (ip, prefix) = source(ip);
        fn dec<K: std::hash::Hash + Eq>(map: &mut HashMap<K, usize>, key: K) {
            if let std::collections::hash_map::Entry::Occupied(mut e) = map.entry(key) {
                *e.get_mut() -= 1;
                if *e.get() == 0 {
                    e.remove();
                }
            }
        }
        dec(&mut self.by_address, ip);
        dec(&mut self.by_prefix, prefix);
    }

    /// Changes `prefix`'s queue, keeping `longest` in step.
    fn with_queue<R>(
        &mut self,
        prefix: Prefix,
        f: impl FnOnce(&mut BTreeMap<u64, Slot>) -> R,
    ) -> R {
        let key = |q: &BTreeMap<u64, Slot>| {
            q.keys()
                .next()
                .map(|oldest| (q.len(), Reverse(*oldest), prefix))
        };
        let queue = self.queues.entry(prefix).or_default();
        if let Some(k) = key(queue) {
            self.longest.remove(&k);
        }
        let r = f(queue);
        match key(queue) {
            Some(k) => {
                self.longest.insert(k);
            }
            None => {
                self.queues.remove(&prefix);
            }
        }
        r
    }

    fn enqueue(&mut self, ip: IpAddr, id: u64, slot: Slot) {
        self.with_queue(source(ip).1, |q| q.insert(id, slot));
    }

    /// Takes a connection off its queue (promoted or gone); None when it
    /// was evicted.
    fn dequeue(&mut self, ip: IpAddr, id: u64) -> Option<Slot> {
        let prefix = source(ip).1;
        if !self.queues.contains_key(&prefix) {
            return None;
        }
        self.with_queue(prefix, |q| q.remove(&id))
    }

    fn is_queued(&self, ip: IpAddr, id: u64) -> bool {
        self.queues
            .get(&source(ip).1)
            .is_some_and(|q| q.contains_key(&id))
    }

    /// The oldest connection of the prefix with the most queued ones.
    fn evict(&mut self) -> Option<Slot> {
        let &(_, _, prefix) = self.longest.last()?;
        self.with_queue(prefix, |q| q.pop_first().map(|(_, slot)| slot))
    }
}

/// The budgets of one listener, shared by its accept loop and connections.
#[derive(Debug)]
pub(super) struct Budget {
    limits: Limits,
    pending: Arc<Semaphore>,
    identified: Arc<Semaphore>,
    ledger: Mutex<Ledger>,
    /// Evicted connections not yet dropped.
    evicting: AtomicUsize,
    refused: [AtomicU64; Refusal::ALL.len()],
    evicted: AtomicU64,
}

/// A pending slot, held from accept until the connection identifies or
/// ends; dropping it frees the slot and the source's share.
#[derive(Debug)]
pub(super) struct Pending {
    budget: Arc<Budget>,
    ip: IpAddr,
    id: u64,
    evict: Arc<Notify>,
    promoted: bool,
}

impl Pending {
    /// Completes when a newer connection took this one's slot: the
    /// connection must close.
    pub(super) fn evicted(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let evict = self.evict.clone();
        async move { evict.notified().await }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        let mut ledger = self.budget.ledger();
        ledger.remove(self.ip);
        if !self.promoted && ledger.dequeue(self.ip, self.id).is_none() {
            // Evicted: its slot went to a newer connection already.
            self.budget.evicting.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// An identified slot, held until the connection ends.
#[derive(Debug)]
pub(super) struct Identified {
    _permit: OwnedSemaphorePermit,
}

impl Budget {
    pub(super) fn new(limits: Limits) -> Budget {
        Budget {
            limits,
            pending: Arc::new(Semaphore::new(limits.pending)),
            identified: Arc::new(Semaphore::new(limits.identified)),
            ledger: Mutex::default(),
            evicting: AtomicUsize::new(0),
            refused: Default::default(),
            evicted: AtomicU64::new(0),
        }
    }

    fn ledger(&self) -> std::sync::MutexGuard<'_, Ledger> {
        // The ledger stays consistent even if a holder panicked: no code
        // under the lock can panic between two related changes.
        self.ledger.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A pending slot for a connection from `ip` (taking the oldest pending
    /// connection's when the budget is full), or why not (counted).
    pub(super) fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Pending, Refusal> {
        let mut ledger = self.ledger();
        let (address, prefix) = ledger.count(ip);
        let refusal = if address >= self.limits.per_address {
            Refusal::Address
        } else if prefix >= self.limits.per_prefix {
            Refusal::Prefix
        } else {
            let permit = match self.pending.clone().try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(_) if self.evicting.load(Ordering::Relaxed) < EVICTING_MAX => {
                    ledger.evict().map(|Slot { permit, evict }| {
                        self.evicting.fetch_add(1, Ordering::Relaxed);
                        self.evicted.fetch_add(1, Ordering::Relaxed);
                        evict.notify_one();
                        permit
                    })
                }
                Err(_) => None,
            };
            match permit {
                Some(permit) => {
                    let (id, evict) = (ledger.next_id, Arc::new(Notify::new()));
                    ledger.next_id += 1;
                    ledger.enqueue(
                        ip,
                        id,
                        Slot {
                            permit,
                            evict: evict.clone(),
                        },
                    );
                    ledger.add(ip);
                    return Ok(Pending {
                        budget: self.clone(),
                        ip,
                        id,
                        evict,
                        promoted: false,
                    });
                }
                None => Refusal::PendingFull,
            }
        };
        drop(ledger);
        self.count(refusal);
        Err(refusal)
    }

    /// Moves an identified connection from its pending slot to an
    /// identified one. Fails (counted) when every identified slot is taken,
    /// and when the connection was evicted meanwhile; the pending slot is
    /// then kept until the connection closes.
    pub(super) fn promote(&self, mut pending: Pending) -> Result<Identified, (Pending, Refusal)> {
        let mut ledger = self.ledger();
        if !ledger.is_queued(pending.ip, pending.id) {
            drop(ledger);
            return Err((pending, Refusal::PendingFull));
        }
        match self.identified.clone().try_acquire_owned() {
            Ok(permit) => {
                ledger.dequeue(pending.ip, pending.id);
                pending.promoted = true;
                drop(ledger);
                drop(pending);
                Ok(Identified { _permit: permit })
            }
            Err(_) => {
                drop(ledger);
                self.count(Refusal::IdentifiedFull);
                Err((pending, Refusal::IdentifiedFull))
            }
        }
    }

    fn count(&self, refusal: Refusal) {
        let i = Refusal::ALL.iter().position(|r| *r == refusal).unwrap_or(0);
        self.refused[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Connections refused so far, in [`Refusal::ALL`] order.
    pub(super) fn refused(&self) -> [u64; Refusal::ALL.len()] {
        std::array::from_fn(|i| self.refused[i].load(Ordering::Relaxed))
    }

    /// Pending connections dropped so far to make room for newer ones.
    pub(super) fn evicted(&self) -> u64 {
        self.evicted.load(Ordering::Relaxed)
    }

    /// Open pending connections (evicted ones still closing included).
    pub(super) fn pending_open(&self) -> usize {
        self.limits.pending - self.pending.available_permits()
            + self.evicting.load(Ordering::Relaxed)
    }

    /// Open identified connections.
    pub(super) fn identified_open(&self) -> usize {
        self.limits.identified - self.identified.available_permits()
    }

    /// Logs one WARN line with the refusals and evictions since `last` (if
    /// any) and updates `last`.
    pub(super) fn log_refusals(&self, protocol: &str, last: &mut [u64; 5]) {
        let [a, b, c, d] = self.refused();
        let now = [a, b, c, d, self.evicted()];
        let delta: [u64; 5] = std::array::from_fn(|i| now[i].saturating_sub(last[i]));
        *last = now;
        if delta.iter().any(|n| *n > 0) {
            tracing::warn!(
                protocol,
                pending_full = delta[0],
                per_address = delta[1],
                per_prefix = delta[2],
                identified_full = delta[3],
                evicted = delta[4],
                seconds = SUMMARY_EVERY.as_secs(),
                "connections refused (pending: {} open of {}, {} per address, {} per prefix; identified: {} open of {})",
                self.pending_open(),
                self.limits.pending,
                self.limits.per_address,
                self.limits.per_prefix,
                self.identified_open(),
                self.limits.identified,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(
        pending: usize,
        per_address: usize,
        per_prefix: usize,
        identified: usize,
    ) -> Arc<Budget> {
        Arc::new(Budget::new(Limits {
            pending,
            per_address,
            per_prefix,
            identified,
        }))
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// Whether `p` was told to close (without waiting).
    fn is_evicted(p: &Pending) -> bool {
        let fut = p.evicted();
        futures_util::FutureExt::now_or_never(fut).is_some()
    }

    #[test]
    fn per_address_then_per_prefix() {
        let b = budget(6, 2, 3, 10);
        let a1 = [
            b.admit(ip("10.0.0.1")).unwrap(),
            b.admit(ip("10.0.0.1")).unwrap(),
        ];
        assert_eq!(b.admit(ip("10.0.0.1")).unwrap_err(), Refusal::Address);
        let a2 = b.admit(ip("10.0.0.2")).unwrap();
        // 10.0.0.0/24 holds 3: another address in it is refused by prefix.
        assert_eq!(b.admit(ip("10.0.0.3")).unwrap_err(), Refusal::Prefix);
        assert_eq!(b.pending_open(), 3);
        assert_eq!(b.refused(), [0, 1, 1, 0]);
        // Closing frees both the slot and the source's share.
        drop(a1);
        assert_eq!(b.pending_open(), 1);
        let again = b.admit(ip("10.0.0.1")).unwrap();
        drop((a2, again));
        assert_eq!(b.pending_open(), 0);
        let ledger = b.ledger();
        assert!(ledger.by_address.is_empty() && ledger.by_prefix.is_empty());
        assert!(
            ledger.queues.is_empty() && ledger.longest.is_empty(),
            "empty entries are removed"
        );
    }

    #[test]
    fn a_full_budget_drops_its_oldest_pending_connection() {
        let b = budget(3, 8, 8, 10);
        let oldest = b.admit(ip("10.0.1.1")).unwrap();
        let middle = b.admit(ip("10.0.2.1")).unwrap();
        let newest = b.admit(ip("10.0.3.1")).unwrap();
        assert!(!is_evicted(&oldest));
        let newcomer = b.admit(ip("10.0.4.1")).unwrap();
        assert!(is_evicted(&oldest));
        assert!(!is_evicted(&middle) && !is_evicted(&newest) && !is_evicted(&newcomer));
        assert_eq!(b.evicted(), 1);
        // Until it is gone it still counts (its socket is still open).
        assert_eq!(b.pending_open(), 4);
        // An evicted connection that identified meanwhile is not promoted.
        let (oldest, _) = b.promote(oldest).unwrap_err();
        drop(oldest);
        assert_eq!(b.pending_open(), 3);
        // A promoted one can no longer be evicted: the next eviction takes
        // the oldest still pending.
        let _id = b.promote(middle).unwrap();
        let _more = [
            b.admit(ip("10.0.5.1")).unwrap(),
            b.admit(ip("10.0.6.1")).unwrap(),
        ];
        assert!(is_evicted(&newest));
        assert_eq!(b.refused(), [0; 4]);
    }

    #[test]
    fn evictions_come_from_the_prefix_holding_the_most() {
        let b = budget(8, 8, 8, 10);
        let legit = b.admit(ip("192.0.2.10")).unwrap();
        let mut attackers = Vec::new();
        for net in 1..=7 {
            attackers.push(b.admit(ip(&format!("10.0.{}.1", net % 2))).unwrap());
        }
        // Full: 10.0.1.0/24 holds 4, 10.0.0.0/24 3, the client's /24 1.
        // Newcomers from anywhere push out the attackers' oldest, never
        // the client, even though it is the oldest of all.
        let mut newcomers = Vec::new();
        for i in 0..6 {
            newcomers.push(b.admit(ip(&format!("10.0.{}.2", 2 + i % 3))).unwrap());
        }
        assert!(!is_evicted(&legit));
        assert!(
            is_evicted(&attackers[0]),
            "the oldest of the biggest prefix first"
        );
        assert_eq!(b.evicted(), 6);
        assert_eq!(b.pending_open(), 8 + 6);
        drop((attackers, newcomers));
        // With every prefix down to one queued connection, the oldest of
        // them goes: the client that never identified.
        let mut more: Vec<Pending> = (0..7)
            .map(|i| b.admit(ip(&format!("10.1.{i}.1"))).unwrap())
            .collect();
        assert!(!is_evicted(&legit));
        more.push(b.admit(ip("10.1.9.1")).unwrap());
        assert!(is_evicted(&legit));
    }

    #[test]
    fn evictions_still_closing_are_bounded() {
        let b = budget(1, 1000, 1000, 10);
        let mut held = vec![b.admit(ip("10.0.0.1")).unwrap()];
        for i in 0..EVICTING_MAX {
            held.push(b.admit(ip(&format!("10.0.{}.2", i + 1))).unwrap());
        }
        assert_eq!(b.evicted(), EVICTING_MAX as u64);
        assert_eq!(
            b.admit(ip("10.9.9.9")).unwrap_err(),
            Refusal::PendingFull,
            "no more than EVICTING_MAX closing at once"
        );
        assert_eq!(b.pending_open(), 1 + EVICTING_MAX);
        // Once the evicted ones are gone, eviction works again.
        let last = held.pop().unwrap();
        drop(held);
        assert_eq!(b.pending_open(), 1);
        assert!(b.admit(ip("10.9.9.9")).is_ok());
        assert!(is_evicted(&last));
    }

    #[test]
    fn mapped_ipv4_counts_as_ipv4_and_ipv6_by_64() {
        let b = budget(100, 1, 2, 10);
        let _v4 = b.admit(ip("192.0.2.7")).unwrap();
        assert_eq!(
            b.admit(ip("::ffff:192.0.2.7")).unwrap_err(),
            Refusal::Address
        );
        let _near = b.admit(ip("::ffff:192.0.2.8")).unwrap();
        assert_eq!(b.admit(ip("192.0.2.9")).unwrap_err(), Refusal::Prefix);
        let _v6 = b.admit(ip("2001:db8:1:2::1")).unwrap();
        let _v6b = b.admit(ip("2001:db8:1:2:ffff::1")).unwrap();
        assert_eq!(
            b.admit(ip("2001:db8:1:2:abcd::9")).unwrap_err(),
            Refusal::Prefix
        );
        // Another /64 is another prefix.
        assert!(b.admit(ip("2001:db8:1:3::1")).is_ok());
    }

    #[test]
    fn promotion_frees_the_pending_slot_and_never_takes_more_than_the_cap() {
        let b = budget(2, 2, 2, 1);
        let p1 = b.admit(ip("10.0.0.1")).unwrap();
        let p2 = b.admit(ip("10.0.0.1")).unwrap();
        assert_eq!(b.admit(ip("10.0.0.1")).unwrap_err(), Refusal::Address);
        let id1 = b.promote(p1).unwrap();
        assert_eq!((b.pending_open(), b.identified_open()), (1, 1));
        // The source's share is free again once promoted.
        let p3 = b.admit(ip("10.0.0.1")).unwrap();
        let (p2, why) = b.promote(p2).unwrap_err();
        assert_eq!(why, Refusal::IdentifiedFull);
        assert_eq!((b.pending_open(), b.identified_open()), (2, 1));
        drop(id1);
        assert!(b.promote(p3).is_ok());
        drop(p2);
        assert_eq!((b.pending_open(), b.identified_open()), (0, 0));
        assert_eq!(b.refused(), [0, 1, 0, 1]);
    }
}
