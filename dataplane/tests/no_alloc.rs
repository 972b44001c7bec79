//! Zero heap allocations per forwarded packet (DESIGN.md, "Performance
//! targets"): once a core's outbox and tables have grown to its working
//! size, [`Forwarder::handle`] must not touch the allocator.
//!
//! A counting global allocator counts the calls made on this thread while
//! a thread-local flag is set, so the test harness's other threads do not
//! interfere. (libsodium's own `malloc`s would not be seen, but its AEAD
//! and secretbox calls make none.)

#![deny(unsafe_code)]

use std::net::SocketAddr;

use dataplane::crypto::{self, KeyState};
use dataplane::forward::{ForwardConfig, Forwarder, Outbox};
use dataplane::packet::Kind;
use shared::{Command, Counters, Mode, SessionSpec};

/// The counting allocator: `std::alloc::System` plus per-thread counters.
#[allow(unsafe_code)]
mod counting {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    thread_local! {
        // `const` initialisers and types without `Drop`: reading these
        // never allocates nor registers a destructor, so the allocator can
        // use them without recursing.
        static COUNTING: Cell<bool> = const { Cell::new(false) };
        static ALLOCS: Cell<u64> = const { Cell::new(0) };
        static FREES: Cell<u64> = const { Cell::new(0) };
    }

    fn note(counter: &'static std::thread::LocalKey<Cell<u64>>) {
        // `try_with`: the thread may be tearing down its locals.
        let _ = COUNTING.try_with(|on| {
            if on.get() {
                let _ = counter.try_with(|c| c.set(c.get() + 1));
            }
        });
    }

    /// Wraps [`System`], counting on threads that asked for it.
    pub struct Counting;

    // SAFETY: every method forwards to `System` with the caller's
    // arguments unchanged, so `System`'s guarantees (a block of the layout's
    // size and alignment, or null) carry over; the counting only touches
    // thread-locals that never allocate.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            note(&ALLOCS);
            // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract
            // (non-zero size), which is `System::alloc`'s.
            unsafe { System.alloc(layout) }
        }

        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            note(&ALLOCS);
            // SAFETY: as for `alloc`.
            unsafe { System.alloc_zeroed(layout) }
        }

        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            note(&ALLOCS);
            // SAFETY: the caller guarantees `ptr` came from this allocator
            // (hence from `System`) with `layout`, and a valid `new_size`.
            unsafe { System.realloc(ptr, layout, new_size) }
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            note(&FREES);
            // SAFETY: the caller guarantees `ptr` came from this allocator
            // (hence from `System`) with `layout`.
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    /// Runs `f` with counting on for this thread; returns its result and
    /// the (allocations incl. reallocations, deallocations) it made.
    pub fn count<T>(f: impl FnOnce() -> T) -> (T, u64, u64) {
        ALLOCS.with(|c| c.set(0));
        FREES.with(|c| c.set(0));
        COUNTING.with(|on| on.set(true));
        let r = f();
        COUNTING.with(|on| on.set(false));
        (r, ALLOCS.with(Cell::get), FREES.with(Cell::get))
    }
}

#[global_allocator]
static ALLOCATOR: counting::Counting = counting::Counting;

const CHANNEL: u64 = 9;
const MEMBERS: u32 = 5;
/// More than a counter block, so reserving nonce counters is measured too.
const MEASURED: usize = 3000;
/// Test time, milliseconds.
const NOW: u64 = 1_000_000;

/// A 160-byte RTP packet (12-byte header, 148-byte payload) from `ssrc`.
fn opus_packet(ssrc: u32, seq: u16) -> [u8; 160] {
    let mut p = [0x5a; 160];
    p[..12].fill(0);
    p[0] = 0x80;
    p[1] = 0x78;
    p[2..4].copy_from_slice(&seq.to_be_bytes());
    p[8..12].copy_from_slice(&ssrc.to_be_bytes());
    p
}

fn discovery_request(ssrc: u32) -> [u8; 74] {
    let mut p = [0u8; 74];
    p[1] = 1;
    p[3] = 70;
    p[4..8].copy_from_slice(&ssrc.to_be_bytes());
    p
}

/// A 5-member AES-GCM channel, each member's address proven by IP
/// discovery from the address it declares. Returns the forwarder, the
/// sender's address and key.
fn channel() -> (Forwarder, SocketAddr, KeyState) {
    let mut f = Forwarder::new(0, ForwardConfig::default(), Counters::in_memory(256));
    let mut out = Outbox::with_capacity(1);
    let mut sender = None;
    for i in 0..MEMBERS {
        let ssrc = 100 + i;
        let addr = SocketAddr::from(([192, 0, 2, 1], 4000 + i as u16));
        let key = [ssrc as u8; 32];
        f.apply(
            NOW,
            Command::AnnounceSsrc {
                ssrc,
                channel: CHANNEL,
                user: u64::from(ssrc),
            },
        )
        .unwrap();
        out.clear();
        f.handle(NOW, addr, &mut discovery_request(ssrc), &mut out);
        assert_eq!(out.len(), 1, "discovery answered");
        f.apply(
            NOW,
            Command::UpsertSession(SessionSpec {
                ssrc,
                channel: CHANNEL,
                user: u64::from(ssrc),
                mode: Mode::Aes256GcmRtpSize,
                key,
                declared: Some(addr),
                slot: i,
                video: Default::default(),
            }),
        )
        .unwrap();
        assert_eq!(f.address(ssrc), Some(addr));
        if i == 0 {
            sender = Some((addr, KeyState::new(Mode::Aes256GcmRtpSize, &key).unwrap()));
        }
    }
    f.events().clear();
    let (addr, key) = sender.unwrap();
    (f, addr, key)
}

/// `n` datagrams from the sender with counters `first..first + n`.
fn sealed(key: &KeyState, first: u32, n: usize) -> Vec<(Vec<u8>, usize)> {
    (first..first + n as u32)
        .map(|counter| {
            let plain = opus_packet(100, counter as u16);
            let mut wire = vec![0u8; 256];
            let len = crypto::seal(key, Kind::Rtp, counter, &plain, &mut wire).unwrap();
            (wire, len)
        })
        .collect()
}

#[test]
fn the_counter_sees_allocations() {
    // Without this the test below could pass by counting nothing.
    let (v, allocs, frees) = counting::count(|| std::hint::black_box(vec![1u8; 64]).len());
    assert_eq!(v, 64);
    assert_eq!((allocs, frees), (1, 1));
    // And it sees them inside `handle`: a cold outbox grows on the first
    // forwarded packet.
    let (mut f, from, key) = channel();
    let mut out = Outbox::with_capacity(0);
    let (mut wire, len) = sealed(&key, 0, 1).pop().unwrap();
    let (outputs, allocs, _) = counting::count(|| {
        f.handle(NOW, from, &mut wire[..len], &mut out);
        out.len()
    });
    assert_eq!(outputs, MEMBERS as usize - 1);
    assert!(allocs > 0, "the outbox's growth is counted");
}

#[test]
fn forwarding_does_not_allocate() {
    let (mut f, from, key) = channel();
    // An outbox with no slots: the warm-up grows it to the channel's size.
    let mut out = Outbox::with_capacity(0);
    for (mut wire, len) in sealed(&key, 0, 10) {
        out.clear();
        f.handle(NOW, from, &mut wire[..len], &mut out);
        assert_eq!(out.len(), MEMBERS as usize - 1);
    }

    let mut packets = sealed(&key, 10, MEASURED);
    let (outputs, allocs, frees) = counting::count(|| {
        let mut outputs = 0;
        for (wire, len) in &mut packets {
            out.clear();
            f.handle(NOW, from, &mut wire[..*len], &mut out);
            outputs += out.len();
        }
        outputs
    });
    assert_eq!(outputs, MEASURED * (MEMBERS as usize - 1), "all forwarded");
    assert_eq!(f.drops().total(), 0);
    assert_eq!(
        (allocs, frees),
        (0, 0),
        "heap allocations / frees while forwarding {MEASURED} packets"
    );
}
