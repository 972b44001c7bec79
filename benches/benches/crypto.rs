//! Per-packet crypto against the raw primitive (DESIGN.md, "Performance
//! targets": within 1.2x of the raw primitive measured in the same bench).
//!
//! One group per transport mode. Each iteration seals a 160-byte RTP
//! packet (12-byte header, 148-byte Opus-sized payload) and opens the
//! result again:
//!
//! - `raw`: the libsodium primitive alone (`dataplane::sys::sodium`), the
//!   header as AAD where the mode has AAD, the nonce built from a counter;
//! - `product`: [`crypto::seal`] + [`crypto::open`] through a [`KeyState`],
//!   i.e. header parsing, nonce and suffix handling and the wire layout on
//!   top of the same primitive calls.

#![forbid(unsafe_code)]

use std::hint::black_box;

use benches::{opus_packet, HEADER_BYTES, PACKET_BYTES, SEALED_BYTES};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use dataplane::crypto::{self, KeyState, Opened};
use dataplane::packet::Kind;
use dataplane::sys::sodium::{self, Aes256Gcm, SecretBox, XChaCha20Poly1305, TAG_BYTES};
use shared::Mode;

const KEY: [u8; 32] = [0x42; 32];
const BODY_BYTES: usize = PACKET_BYTES - HEADER_BYTES;

/// The raw primitive of a mode, keyed once like a session's [`KeyState`].
enum Raw {
    Aes(Aes256Gcm),
    XChaCha(XChaCha20Poly1305),
    SecretBox(SecretBox),
}

impl Raw {
    fn new(mode: Mode) -> Raw {
        match mode {
            Mode::Aes256GcmRtpSize => Raw::Aes(Aes256Gcm::new(&KEY).expect("AES-256-GCM")),
            Mode::XChaCha20Poly1305RtpSize => {
                Raw::XChaCha(XChaCha20Poly1305::new(&KEY).expect("XChaCha20-Poly1305"))
            }
            Mode::XSalsa20Poly1305Lite | Mode::XSalsa20Poly1305Suffix | Mode::XSalsa20Poly1305 => {
                Raw::SecretBox(SecretBox::new(&KEY).expect("secretbox"))
            }
        }
    }

    /// Seals the body of `plain` under a nonce made from `counter`, then
    /// opens it in place: the same primitive work as one product round trip.
    fn round_trip(&self, counter: u32, plain: &[u8; PACKET_BYTES]) {
        let (header, body) = plain.split_at(HEADER_BYTES);
        let mut ct = [0u8; BODY_BYTES];
        let mut tag = [0u8; TAG_BYTES];
        let ctr = counter.to_be_bytes();
        match self {
            Raw::Aes(c) => {
                let mut nonce = [0u8; 12];
                nonce[..4].copy_from_slice(&ctr);
                c.seal(&nonce, header, body, &mut ct, &mut tag)
                    .expect("seal");
                c.open_in_place(&nonce, header, black_box(&mut ct), &tag)
                    .expect("open");
            }
            Raw::XChaCha(c) => {
                let mut nonce = [0u8; 24];
                nonce[..4].copy_from_slice(&ctr);
                c.seal(&nonce, header, body, &mut ct, &mut tag)
                    .expect("seal");
                c.open_in_place(&nonce, header, black_box(&mut ct), &tag)
                    .expect("open");
            }
            Raw::SecretBox(c) => {
                let mut nonce = [0u8; 24];
                nonce[..4].copy_from_slice(&ctr);
                c.seal(&nonce, body, &mut ct, &mut tag).expect("seal");
                c.open_in_place(&nonce, black_box(&mut ct), &tag)
                    .expect("open");
            }
        }
        black_box(&ct);
    }
}

/// One product round trip: seal for a member, open as that member would.
fn product_round_trip(key: &KeyState, counter: u32, plain: &[u8; PACKET_BYTES]) -> Opened {
    let mut wire = [0u8; SEALED_BYTES];
    let n = crypto::seal(key, Kind::Rtp, counter, plain, &mut wire).expect("seal");
    let opened = crypto::open(key, Kind::Rtp, black_box(&mut wire[..n])).expect("open");
    black_box(&wire);
    opened
}

fn crypto(c: &mut Criterion) {
    sodium::init().expect("libsodium");
    let plain = opus_packet(0x1122_3344, 1);
    for mode in Mode::ALL {
        let raw = Raw::new(mode);
        let key = KeyState::new(mode, &KEY).expect("key");
        // Both paths must really round-trip before they are timed.
        raw.round_trip(1, &plain);
        let opened = product_round_trip(&key, 1, &plain);
        assert_eq!(opened.len, PACKET_BYTES, "{}", mode.name());

        let mut group = c.benchmark_group(format!("crypto_{}", mode.name()));
        group.throughput(Throughput::Elements(1));
        let mut counter = 0u32;
        group.bench_function("raw", |b| {
            b.iter(|| {
                counter = counter.wrapping_add(1);
                raw.round_trip(counter, black_box(&plain));
            })
        });
        let mut counter = 0u32;
        group.bench_function("product", |b| {
            b.iter(|| {
                counter = counter.wrapping_add(1);
                product_round_trip(&key, counter, black_box(&plain))
            })
        });
        group.finish();
    }
}

criterion_group! {
    name = benches;
    config = benches::criterion_config();
    targets = crypto
}
criterion_main!(benches);
