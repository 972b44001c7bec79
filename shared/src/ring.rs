//! A lock-free single-producer single-consumer ring of fixed slots that lives
//! in memory shared by two processes.
//!
//! Layout (all `#[repr(C)]`, see [`RingHeader`]): the consumer index `head`
//! and the producer index `tail` each on their own 128-byte line (so the two
//! sides never write the same cache line, including the adjacent-line
//! prefetcher's pair), followed by `slots` slots of [`SLOT_SIZE`] bytes.
//! Both indices only grow (`u64`, never wrap in practice); a slot's position
//! is `index & (slots - 1)`.

use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::message::{DecodeError, SLOT_SIZE};
use crate::region::Mapping;

/// A message that fits one slot.
pub trait Wire: Sized {
    /// Writes the message into a slot (the slot may hold stale bytes).
    fn encode(&self, slot: &mut [u8; SLOT_SIZE]);
    /// Reads a message back, rejecting anything malformed.
    fn decode(slot: &[u8; SLOT_SIZE]) -> Result<Self, DecodeError>;
}

/// The ring had no free slot; nothing was written. Retry later.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("ring full")]
pub struct RingFull;

/// One index on its own pair of cache lines.
#[repr(C, align(128))]
pub(crate) struct PaddedIndex(pub(crate) AtomicU64);

/// The control block at the start of each ring in the region.
#[repr(C)]
pub(crate) struct RingHeader {
    /// Next slot the consumer will read. Written only by the consumer.
    pub(crate) head: PaddedIndex,
    /// Next slot the producer will write. Written only by the producer.
    pub(crate) tail: PaddedIndex,
}

/// Bytes a ring of `slots` slots takes in the region.
pub(crate) fn ring_bytes(slots: u32) -> usize {
    std::mem::size_of::<RingHeader>() + slots as usize * SLOT_SIZE
}

/// What producer and consumer share: a pointer into the mapping and the
/// mapping itself, kept alive for as long as either end exists.
struct RingPtr {
    header: *const RingHeader,
    slots: *mut [u8; SLOT_SIZE],
    mask: u64,
    _map: Arc<Mapping>,
}

// SAFETY: the pointers stay valid while `_map` is alive (it is owned here),
// and every access through them follows the SPSC protocol below, so moving
// one end to another thread is sound. Neither end is `Sync` or `Clone`.
unsafe impl Send for RingPtr {}

impl RingPtr {
    /// # Safety
    ///
    /// `offset` must be the start of a ring of `slots` slots (a power of two)
    /// inside `map`, 128-byte aligned, and at most one [`Producer`] and one
    /// [`Consumer`] may exist for it across all processes.
    unsafe fn new(map: Arc<Mapping>, offset: usize, slots: u32) -> RingPtr {
        debug_assert!(slots.is_power_of_two());
        debug_assert!(offset + ring_bytes(slots) <= map.len());
        debug_assert_eq!(offset % 128, 0);
        // SAFETY: the caller guarantees the ring lies inside the mapping.
        let base = unsafe { map.as_ptr().add(offset) };
        RingPtr {
            header: base as *const RingHeader,
            // SAFETY: the slots follow the header inside the same ring.
            slots: unsafe { base.add(std::mem::size_of::<RingHeader>()) } as *mut [u8; SLOT_SIZE],
            mask: u64::from(slots) - 1,
            _map: map,
        }
    }

    fn head(&self) -> &AtomicU64 {
        // SAFETY: `header` points into the live mapping (see `new`); atomics
        // are valid for any bit pattern and address-free across processes.
        unsafe { &(*self.header).head.0 }
    }

    fn tail(&self) -> &AtomicU64 {
        // SAFETY: as in `head`.
        unsafe { &(*self.header).tail.0 }
    }

    fn slot(&self, index: u64) -> *mut [u8; SLOT_SIZE] {
        // SAFETY: `index & mask` < slots, so the slot is inside the ring.
        unsafe { self.slots.add((index & self.mask) as usize) }
    }
}

/// The writing end of a ring.
pub struct Producer<T> {
    ring: RingPtr,
    /// Our own copy of `tail` (only we write it).
    tail: u64,
    /// The last `head` we read; refreshed only when the ring looks full.
    head_cache: u64,
    _msg: PhantomData<fn(T)>,
}

impl<T> std::fmt::Debug for Producer<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer")
            .field("tail", &self.tail)
            .finish()
    }
}

impl<T: Wire> Producer<T> {
    /// # Safety
    ///
    /// As [`RingPtr::new`]; in addition no other producer of this ring may
    /// exist in any process.
    pub(crate) unsafe fn new(map: Arc<Mapping>, offset: usize, slots: u32) -> Self {
        // SAFETY: forwarded from the caller.
        let ring = unsafe { RingPtr::new(map, offset, slots) };
        // Relaxed: we are the only writer of `tail`; `head` is re-read with
        // Acquire before any slot is reused.
        let tail = ring.tail().load(Ordering::Relaxed);
        let head_cache = ring.head().load(Ordering::Acquire);
        Producer {
            ring,
            tail,
            head_cache,
            _msg: PhantomData,
        }
    }

    /// Appends a message, or reports [`RingFull`] and writes nothing.
    pub fn push(&mut self, msg: &T) -> Result<(), RingFull> {
        let capacity = self.ring.mask + 1;
        if self.tail - self.head_cache >= capacity {
            // Acquire pairs with the consumer's Release store of `head`: once
            // we see the new head, the consumer has finished reading every
            // slot before it, so overwriting them cannot race its reads.
            self.head_cache = self.ring.head().load(Ordering::Acquire);
            if self.tail - self.head_cache >= capacity {
                return Err(RingFull);
            }
        }
        // SAFETY: the slot at `tail` is not visible to the consumer (it reads
        // only below the published tail) and was released by it (checked
        // above), so we have exclusive access.
        msg.encode(unsafe { &mut *self.ring.slot(self.tail) });
        self.tail += 1;
        // Release publishes the slot contents written above together with the
        // new tail: a consumer that Acquire-loads this tail sees the bytes.
        self.ring.tail().store(self.tail, Ordering::Release);
        Ok(())
    }

    /// Messages written and not yet consumed (as last observed).
    pub fn pending(&self) -> u64 {
        self.tail - self.ring.head().load(Ordering::Acquire)
    }
}

/// The reading end of a ring.
pub struct Consumer<T> {
    ring: RingPtr,
    /// Our own copy of `head` (only we write it).
    head: u64,
    /// The last `tail` we read; refreshed only when the ring looks empty.
    tail_cache: u64,
    _msg: PhantomData<fn() -> T>,
}

impl<T> std::fmt::Debug for Consumer<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("head", &self.head)
            .finish()
    }
}

impl<T: Wire> Consumer<T> {
    /// # Safety
    ///
    /// As [`RingPtr::new`]; in addition no other consumer of this ring may
    /// exist in any process.
    pub(crate) unsafe fn new(map: Arc<Mapping>, offset: usize, slots: u32) -> Self {
        // SAFETY: forwarded from the caller.
        let ring = unsafe { RingPtr::new(map, offset, slots) };
        // Relaxed: we are the only writer of `head`.
        let head = ring.head().load(Ordering::Relaxed);
        let tail_cache = ring.tail().load(Ordering::Acquire);
        Consumer {
            ring,
            head,
            tail_cache,
            _msg: PhantomData,
        }
    }

    /// Takes the next message, if any. A slot that does not decode is
    /// consumed and returned as the error, so one bad slot cannot wedge the
    /// ring.
    pub fn pop(&mut self) -> Option<Result<T, DecodeError>> {
        if self.head == self.tail_cache {
            // Acquire pairs with the producer's Release store of `tail`: the
            // slots below the tail we see are fully written.
            self.tail_cache = self.ring.tail().load(Ordering::Acquire);
            if self.head == self.tail_cache {
                return None;
            }
        }
        // SAFETY: head < published tail, so the producer finished this slot
        // and will not touch it until we advance `head` past it.
        let msg = T::decode(unsafe { &*self.ring.slot(self.head) });
        self.head += 1;
        // Release: our reads of the slot happen before the producer can see
        // the slot as free and overwrite it.
        self.ring.head().store(self.head, Ordering::Release);
        Some(msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{Command, Event, SessionSpec};
    use crate::{Mode, Region, RegionConfig};

    fn region(slots: u32) -> (Region, std::path::PathBuf) {
        let path = std::env::temp_dir().join(format!(
            "voice-ring-test-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        let cfg = RegionConfig {
            cores: 1,
            command_slots: slots,
            event_slots: slots,
        };
        (Region::create(&path, cfg).unwrap(), path)
    }

    fn remove(ssrc: u32) -> Command {
        Command::RemoveSession { ssrc }
    }

    #[test]
    fn empty_ring_pops_nothing() {
        let (r, _p) = region(4);
        let (_tx, _rx) = r.control_side(0).unwrap();
        let (mut rx, _tx2) = r.core_side(0).unwrap();
        assert!(rx.pop().is_none());
    }

    #[test]
    fn wraps_around_many_times() {
        let (r, _p) = region(4);
        let (mut tx, _) = r.control_side(0).unwrap();
        let (mut rx, _) = r.core_side(0).unwrap();
        for round in 0..100u32 {
            for i in 0..3 {
                tx.push(&remove(round * 3 + i)).unwrap();
            }
            for i in 0..3 {
                assert_eq!(rx.pop().unwrap().unwrap(), remove(round * 3 + i));
            }
            assert!(rx.pop().is_none());
        }
    }

    #[test]
    fn full_ring_is_back_pressure_and_loses_nothing() {
        let (r, _p) = region(8);
        let (mut tx, _) = r.control_side(0).unwrap();
        let (mut rx, _) = r.core_side(0).unwrap();
        for i in 0..8 {
            tx.push(&remove(i)).unwrap();
        }
        assert_eq!(tx.push(&remove(8)), Err(RingFull));
        assert_eq!(tx.pending(), 8);
        // One slot freed: exactly one more fits.
        assert_eq!(rx.pop().unwrap().unwrap(), remove(0));
        tx.push(&remove(8)).unwrap();
        assert_eq!(tx.push(&remove(9)), Err(RingFull));
        for i in 1..=8 {
            assert_eq!(rx.pop().unwrap().unwrap(), remove(i));
        }
        assert!(rx.pop().is_none());
    }

    #[test]
    fn corrupt_slot_is_consumed_as_error() {
        let (r, _p) = region(4);
        let (_, mut events_rx) = r.control_side(0).unwrap();
        let (_, mut events_tx) = r.core_side(0).unwrap();
        events_tx
            .push(&Event::AddressLearned {
                ssrc: 1,
                addr: "127.0.0.1:9".parse().unwrap(),
            })
            .unwrap();
        // Scribble over the published slot as a buggy peer might.
        let offset = r.event_ring_offset(0) + std::mem::size_of::<RingHeader>();
        // SAFETY: the offset is inside the mapping and the slot is published
        // but not yet consumed; nothing else touches it in this test.
        unsafe { *r.mapping().as_ptr().add(offset) = 0xEE };
        assert!(events_rx.pop().unwrap().is_err());
        assert!(events_rx.pop().is_none());
    }

    #[test]
    fn randomized_two_threads() {
        use rand::{Rng, SeedableRng};
        let (r, _p) = region(16);
        let (mut tx, _) = r.control_side(0).unwrap();
        let (mut rx, _) = r.core_side(0).unwrap();
        const N: u64 = 200_000;
        let producer = std::thread::spawn(move || {
            let mut rng = rand::rngs::StdRng::seed_from_u64(1);
            let mut i = 0u64;
            while i < N {
                let msg = Command::UpsertSession(SessionSpec {
                    ssrc: i as u32,
                    channel: i,
                    user: !i,
                    mode: Mode::Aes256GcmRtpSize,
                    key: [i as u8; 32],
                    declared: None,
                });
                match tx.push(&msg) {
                    Ok(()) => i += 1,
                    Err(RingFull) => std::thread::yield_now(),
                }
                if rng.gen_ratio(1, 64) {
                    std::thread::yield_now();
                }
            }
        });
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        let mut next = 0u64;
        while next < N {
            match rx.pop() {
                Some(Ok(Command::UpsertSession(s))) => {
                    assert_eq!(u64::from(s.ssrc), next & 0xFFFF_FFFF);
                    assert_eq!(s.channel, next);
                    assert_eq!(s.user, !next);
                    assert_eq!(s.key, [next as u8; 32]);
                    next += 1;
                }
                Some(other) => panic!("unexpected {other:?}"),
                None => std::thread::yield_now(),
            }
            if rng.gen_ratio(1, 64) {
                std::thread::yield_now();
            }
        }
        producer.join().unwrap();
        assert!(rx.pop().is_none());
    }
}
