//! The ring message decoders over arbitrary 128-byte slots: a slot decodes
//! or is an error, never a panic, and whatever decodes re-encodes (over a
//! slot of stale bytes, as in the ring) to a slot that decodes to the same
//! message.

use std::fmt::Debug;

use shared::{Command, Event, Wire, SLOT_SIZE};

/// One input: its first 128 bytes (zero-padded) as a slot of each ring.
pub fn run(data: &[u8]) {
    let mut slot = [0u8; SLOT_SIZE];
    let n = data.len().min(SLOT_SIZE);
    slot[..n].copy_from_slice(&data[..n]);
    roundtrip::<Command>(&slot);
    roundtrip::<Event>(&slot);
}

fn roundtrip<T: Wire + PartialEq + Debug>(slot: &[u8; SLOT_SIZE]) {
    let Ok(message) = T::decode(slot) else {
        return;
    };
    for stale in [0x00, 0xFF] {
        let mut again = [stale; SLOT_SIZE];
        message.encode(&mut again);
        assert_eq!(T::decode(&again).as_ref(), Ok(&message), "re-encoded");
    }
}
