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

#[cfg(test)]
mod tests {
    use super::*;
    use shared::{CoreStats, DropReason, Drops, Mode, SessionSpec};

    fn slot(message: &impl Wire) -> Vec<u8> {
        let mut s = [0u8; SLOT_SIZE];
        message.encode(&mut s);
        s.to_vec()
    }

    /// One slot of every kind of message, as the seeds hold them
    /// (`FUZZ_WRITE_SEEDS=1` rewrites them).
    fn messages() -> Vec<(&'static str, Vec<u8>)> {
        let v4 = "192.0.2.7:5004".parse().unwrap();
        let v6 = "[2001:db8::1]:9".parse().unwrap();
        let mut drops = Drops::default();
        drops.add(DropReason::AuthFailed, 3);
        drops.add(DropReason::Overflow, 1);
        vec![
            (
                "announce",
                slot(&Command::AnnounceSsrc {
                    ssrc: 7,
                    channel: 2,
                    user: 99,
                }),
            ),
            (
                "upsert",
                slot(&Command::UpsertSession(SessionSpec {
                    ssrc: 7,
                    channel: 2,
                    user: 99,
                    mode: Mode::XSalsa20Poly1305Suffix,
                    key: [0x42; 32],
                    declared: Some(v6),
                    slot: 65_535,
                    video: Default::default(),
                })),
            ),
            ("remove", slot(&Command::RemoveChannel { channel: 2 })),
            (
                "trust-v6",
                slot(&Command::TrustAddress { ssrc: 7, addr: v6 }),
            ),
            (
                "bind",
                slot(&Command::BindAddress {
                    addr: v4,
                    ssrc: 9,
                    slot: 3,
                }),
            ),
            (
                "unbind",
                slot(&Command::UnbindAddress { addr: v6, ssrc: 9 }),
            ),
            (
                "observed",
                slot(&Event::AddressObserved { ssrc: 7, addr: v4 }),
            ),
            ("proven", slot(&Event::AddressProven { ssrc: 7, addr: v6 })),
            (
                "expired",
                slot(&Event::AddressExpired { ssrc: 7, addr: v4 }),
            ),
            (
                "stats",
                slot(&Event::Stats(CoreStats {
                    core: 1,
                    sessions: 3,
                    packets_in: 1 << 40,
                    bytes_in: 5,
                    packets_out: 6,
                    bytes_out: 7,
                    busy_ns: 8,
                })),
            ),
            ("drops", slot(&Event::Drops { core: 1, drops })),
        ]
    }

    #[test]
    fn seeds_are_every_message() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/seeds/ring");
        for (name, bytes) in messages() {
            let path = format!("{dir}/{name}");
            if std::env::var_os("FUZZ_WRITE_SEEDS").is_some() {
                std::fs::write(&path, &bytes).expect("writable seeds");
            }
            assert_eq!(
                std::fs::read(&path).expect("the seed exists"),
                bytes,
                "{path}"
            );
            let mut s = [0u8; SLOT_SIZE];
            s.copy_from_slice(&bytes);
            assert!(
                Command::decode(&s).is_ok() || Event::decode(&s).is_ok(),
                "{name} decodes"
            );
            run(&bytes);
        }
    }
}
