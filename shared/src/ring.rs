//! A lock-free single-producer single-consumer ring of fixed slots that lives
//! in memory shared by two processes.
//!
//! Layout (all `#[repr(C)]`, see [`RingHeader`]): the consumer index `head`
//! and the producer index `tail` each on their own 128-byte line (so the two
//! sides never write the same cache line, including the adjacent-line
//! prefetcher's pair), followed by `slots` slots of [`SLOT_SIZE`] bytes.
//! Both indices only grow (`u64`, never wrap in practice); a slot's position
//! is `index & (slots - 1)`.
//!
//! The other side is another process, so its index is input like any
//! other: each end checks `head <= tail <= head + slots` when it attaches
//! and every time it reloads the other side's index, and reports
//! [`Corrupt`] instead of hanging or underflowing. The consumer copies a
//! slot out before decoding it and wipes the slot before releasing it
//! (commands carry session keys: none stays behind in shared memory).

use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use zeroize::Zeroize;

use crate::message::{DecodeError, SLOT_SIZE};
use crate::region::Mapping;

/// A message that fits one slot.
pub trait Wire: Sized {
    /// Writes the message into a slot (the slot may hold stale bytes).
    fn encode(&self, slot: &mut [u8; SLOT_SIZE]);
    /// Reads a message back, rejecting anything malformed.
    fn decode(slot: &[u8; SLOT_SIZE]) -> Result<Self, DecodeError>;
}

/// The ring's indices do not describe a ring of its size: the tail is
/// behind the head or further ahead than the ring holds. A peer wrote
/// garbage (or the region is stale); nothing more can be read or written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("corrupt ring: head {head}, tail {tail}, {slots} slots")]
pub struct Corrupt {
    /// The consumer index seen.
    pub head: u64,
    /// The producer index seen.
    pub tail: u64,
    /// The ring's size.
    pub slots: u64,
}

/// A message could not be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PushError {
    /// The ring had no free slot; nothing was written. Retry later.
    #[error("ring full")]
    Full,
    /// The ring is corrupt; nothing was written.
    #[error(transparent)]
    Corrupt(#[from] Corrupt),
}

/// A message could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PopError {
    /// The next slot did not decode; it was consumed (one bad slot cannot
    /// wedge the ring).
    #[error(transparent)]
    Slot(#[from] DecodeError),
    /// The ring is corrupt; nothing was consumed.
    #[error(transparent)]
    Corrupt(#[from] Corrupt),
}

/// Checks that `head..tail` can be the used part of a ring of `slots`.
fn check(head: u64, tail: u64, slots: u64) -> Result<(), Corrupt> {
    if head <= tail && tail - head <= slots {
        Ok(())
    } else {
        Err(Corrupt { head, tail, slots })
    }
}

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

    fn size(&self) -> u64 {
        self.mask + 1
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
    pub(crate) unsafe fn new(
        map: Arc<Mapping>,
        offset: usize,
        slots: u32,
    ) -> Result<Self, Corrupt> {
        // SAFETY: forwarded from the caller.
        let ring = unsafe { RingPtr::new(map, offset, slots) };
        // Relaxed: we are the only writer of `tail`; `head` is re-read with
        // Acquire before any slot is reused.
        let tail = ring.tail().load(Ordering::Relaxed);
        let head_cache = ring.head().load(Ordering::Acquire);
        check(head_cache, tail, ring.size())?;
        Ok(Producer {
            ring,
            tail,
            head_cache,
            _msg: PhantomData,
        })
    }

    /// Appends a message, or reports why nothing was written.
    pub fn push(&mut self, msg: &T) -> Result<(), PushError> {
        let capacity = self.ring.size();
        if self.tail - self.head_cache >= capacity {
            // Acquire pairs with the consumer's Release store of `head`: once
            // we see the new head, the consumer has finished reading every
            // slot before it, so overwriting them cannot race its reads.
            let head = self.ring.head().load(Ordering::Acquire);
            check(head, self.tail, capacity)?;
            self.head_cache = head;
            if self.tail - self.head_cache >= capacity {
                return Err(PushError::Full);
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

    /// Messages written and not yet consumed (as last observed; 0 when the
    /// consumer's index is corrupt).
    pub fn pending(&self) -> u64 {
        self.tail
            .saturating_sub(self.ring.head().load(Ordering::Acquire))
    }

    /// Discards every message not consumed yet by moving the consumer's
    /// index to our tail. Only while no consumer is attached (control,
    /// before it starts a new dataplane on the region): it writes the other
    /// side's index, and repairs a corrupt one.
    pub fn reset_consumer(&mut self) {
        // Release: a consumer attaching later sees the index with Acquire.
        self.ring.head().store(self.tail, Ordering::Release);
        self.head_cache = self.tail;
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
    pub(crate) unsafe fn new(
        map: Arc<Mapping>,
        offset: usize,
        slots: u32,
    ) -> Result<Self, Corrupt> {
        // SAFETY: forwarded from the caller.
        let ring = unsafe { RingPtr::new(map, offset, slots) };
        // Relaxed: we are the only writer of `head`.
        let head = ring.head().load(Ordering::Relaxed);
        let tail_cache = ring.tail().load(Ordering::Acquire);
        check(head, tail_cache, ring.size())?;
        Ok(Consumer {
            ring,
            head,
            tail_cache,
            _msg: PhantomData,
        })
    }

    /// Takes the next message: `Ok(None)` when the ring is empty. A slot
    /// that does not decode is consumed and returned as
    /// [`PopError::Slot`].
    pub fn pop(&mut self) -> Result<Option<T>, PopError> {
        if self.head == self.tail_cache {
            // Acquire pairs with the producer's Release store of `tail`: the
            // slots below the tail we see are fully written.
            let tail = self.ring.tail().load(Ordering::Acquire);
            check(self.head, tail, self.ring.size())?;
            self.tail_cache = tail;
            if self.head == self.tail_cache {
                return Ok(None);
            }
        }
        let slot = self.ring.slot(self.head);
        let mut copy = [0u8; SLOT_SIZE];
        // SAFETY: head < published tail, so the producer finished this slot
        // and will not touch it until we advance `head` past it: we have
        // exclusive access to it until the Release store below. The copy
        // is decoded, so nothing the producer does afterwards can change
        // what we read; the slot is wiped so no key stays in shared memory.
        unsafe {
            std::ptr::copy_nonoverlapping(slot.cast_const(), &mut copy, 1);
            std::ptr::write_bytes(slot, 0, 1);
        }
        self.head += 1;
        // Release: our reads and the wipe of the slot happen before the
        // producer can see the slot as free and overwrite it.
        self.ring.head().store(self.head, Ordering::Release);
        let msg = T::decode(&copy);
        copy.zeroize();
        Ok(Some(msg?))
    }

    /// Discards every message the producer published and we did not read,
    /// by moving the producer's index back to our head. Only while no
    /// producer is attached (control, before it starts a new dataplane on
    /// the region): it writes the other side's index, and repairs a
    /// corrupt one.
    pub fn reset_producer(&mut self) {
        // Release: a producer attaching later sees the index with Acquire.
        self.ring.tail().store(self.head, Ordering::Release);
        self.tail_cache = self.head;
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
            counter_slots: 1,
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
        assert_eq!(rx.pop(), Ok(None));
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
            assert_eq!(rx.pop(), Ok(None));
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
        assert_eq!(tx.push(&remove(8)), Err(PushError::Full));
        assert_eq!(tx.pending(), 8);
        // One slot freed: exactly one more fits.
        assert_eq!(rx.pop().unwrap().unwrap(), remove(0));
        tx.push(&remove(8)).unwrap();
        assert_eq!(tx.push(&remove(9)), Err(PushError::Full));
        for i in 1..=8 {
            assert_eq!(rx.pop().unwrap().unwrap(), remove(i));
        }
        assert_eq!(rx.pop(), Ok(None));
    }

    #[test]
    fn corrupt_slot_is_consumed_as_error() {
        let (r, _p) = region(4);
        let (_, mut events_rx) = r.control_side(0).unwrap();
        let (_, mut events_tx) = r.core_side(0).unwrap();
        events_tx
            .push(&Event::AddressObserved {
                ssrc: 1,
                addr: "127.0.0.1:9".parse().unwrap(),
            })
            .unwrap();
        // Scribble over the published slot as a buggy peer might.
        let offset = r.event_ring_offset(0) + std::mem::size_of::<RingHeader>();
        // SAFETY: the offset is inside the mapping and the slot is published
        // but not yet consumed; nothing else touches it in this test.
        unsafe { *r.mapping().as_ptr().add(offset) = 0xEE };
        assert!(matches!(events_rx.pop(), Err(PopError::Slot(_))));
        assert_eq!(events_rx.pop(), Ok(None));
    }

    /// The index words of a ring, to play a buggy or hostile peer.
    fn indices(r: &Region, ring_offset: usize) -> (&AtomicU64, &AtomicU64) {
        // SAFETY: the ring header lies inside the live mapping at this
        // offset; atomics are valid for any bit pattern.
        let h = unsafe { &*(r.mapping().as_ptr().add(ring_offset) as *const RingHeader) };
        (&h.head.0, &h.tail.0)
    }

    #[test]
    fn corrupt_indices_are_errors_not_hangs() {
        let (r, _p) = region(4);
        let (mut tx, mut events) = r.control_side(0).unwrap();
        let (mut rx, _) = r.core_side(0).unwrap();
        let (head, tail) = indices(&r, r.command_ring_offset(0));
        tx.push(&remove(1)).unwrap();
        // A tail far beyond the head: the consumer refuses to read.
        tail.store(1000, Ordering::Release);
        assert!(matches!(rx.pop(), Err(PopError::Corrupt(_))));
        tail.store(1, Ordering::Release);
        assert_eq!(rx.pop().unwrap(), Some(remove(1)));
        // A head beyond the tail: the producer refuses to write once it
        // looks (the ring seems full to it first).
        head.store(u64::MAX, Ordering::Release);
        for i in 0..3 {
            tx.push(&remove(i)).unwrap();
        }
        assert!(matches!(tx.push(&remove(9)), Err(PushError::Corrupt(_))));
        // Attaching to a corrupt ring is an error too.
        drop(rx);
        let fresh = Region::attach(r.path()).unwrap();
        assert!(matches!(
            fresh.core_side(0),
            Err(crate::RegionError::Ring { core: 0, .. })
        ));
        // Control repairs it (no dataplane attached): both sides agree.
        tx.reset_consumer();
        events.reset_producer();
        let (mut rx, _) = fresh.core_side(0).unwrap();
        assert_eq!(rx.pop(), Ok(None));
        tx.push(&remove(7)).unwrap();
        assert_eq!(rx.pop().unwrap(), Some(remove(7)));
    }

    #[test]
    fn consumed_slots_are_wiped() {
        let (r, _p) = region(4);
        let (mut tx, _) = r.control_side(0).unwrap();
        let (mut rx, _) = r.core_side(0).unwrap();
        let key = [0xC3u8; 32];
        tx.push(&Command::UpsertSession(SessionSpec {
            ssrc: 1,
            channel: 1,
            user: 1,
            mode: Mode::Aes256GcmRtpSize,
            key,
            declared: None,
            slot: 0,
            video: Default::default(),
        }))
        .unwrap();
        let slots_at = r.command_ring_offset(0) + std::mem::size_of::<RingHeader>();
        // SAFETY: the ring's slots lie inside the live mapping; the test is
        // the only user of the region and reads between operations.
        let slots = unsafe {
            std::slice::from_raw_parts(r.mapping().as_ptr().add(slots_at), 4 * SLOT_SIZE)
        };
        let has_key = |b: &[u8]| b.windows(32).any(|w| w == key);
        assert!(has_key(slots), "the key is in the slot until consumed");
        assert!(matches!(rx.pop(), Ok(Some(Command::UpsertSession(_)))));
        assert!(!has_key(slots), "no key bytes stay in the ring");
        assert!(slots.iter().all(|&b| b == 0));
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
                    slot: i as u32,
                    video: Default::default(),
                });
                match tx.push(&msg) {
                    Ok(()) => i += 1,
                    Err(PushError::Full) => std::thread::yield_now(),
                    Err(e) => panic!("{e}"),
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
                Ok(Some(Command::UpsertSession(s))) => {
                    assert_eq!(u64::from(s.ssrc), next & 0xFFFF_FFFF);
                    assert_eq!(s.channel, next);
                    assert_eq!(s.user, !next);
                    assert_eq!(s.key, [next as u8; 32]);
                    next += 1;
                }
                Ok(None) => std::thread::yield_now(),
                other => panic!("unexpected {other:?}"),
            }
            if rng.gen_ratio(1, 64) {
                std::thread::yield_now();
            }
        }
        producer.join().unwrap();
        assert_eq!(rx.pop(), Ok(None));
    }
}
