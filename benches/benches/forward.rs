//! Forwarding against a plain relay (DESIGN.md, "Performance targets": at
//! least 90% of a plain relay's egress packet rate with
//! aead_aes256_gcm_rtpsize and 5-member channels).
//!
//! One group per fan-out, throughput in output packets:
//!
//! - `forward_fanout4`: a 5-member channel, one sender, 4 outputs;
//! - `forward_fanout1`: a 2-member channel, 1 output.
//!
//! In each, `forwarder` is [`Forwarder::handle`] on a freshly sealed packet
//! from the sender (classify, look up, open, replay check, re-seal for every
//! other member into an [`Outbox`]), and `plain_relay` copies the same
//! datagram to the same destinations into fixed slots of the same size,
//! with no crypto and no session table: the CPU part of a recvmmsg →
//! sendmmsg relay. Socket I/O is outside both.
//!
//! Every iteration gets a packet with a new counter (sealed in the untimed
//! setup of `iter_batched_ref`), or the replay window would drop it.

#![forbid(unsafe_code)]

use std::hint::black_box;
use std::net::SocketAddr;

use benches::{Channel, NOW, SEALED_BYTES};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use dataplane::forward::{Outbox, SLOT_BYTES};
use shared::Mode;

/// A received datagram: the bytes a recvmmsg slot would hold.
struct Datagram {
    buf: [u8; SEALED_BYTES],
    len: usize,
}

/// The relay baseline: a member list and fixed send slots, like the
/// [`Outbox`] but without a session table or crypto.
struct PlainRelay {
    members: Vec<(u32, SocketAddr)>,
    slots: Vec<[u8; SLOT_BYTES]>,
    entries: Vec<(SocketAddr, usize)>,
}

impl PlainRelay {
    fn new(channel: &Channel) -> PlainRelay {
        let n = channel.members.len();
        PlainRelay {
            members: channel.members.iter().map(|m| (m.ssrc, m.addr)).collect(),
            slots: vec![[0; SLOT_BYTES]; n],
            entries: Vec::with_capacity(n),
        }
    }

    /// Queues `packet` for every member but its sender (SSRC at 8..12).
    fn relay(&mut self, packet: &[u8]) {
        self.entries.clear();
        let Some(ssrc) = packet.get(8..12) else {
            return;
        };
        let ssrc = u32::from_be_bytes([ssrc[0], ssrc[1], ssrc[2], ssrc[3]]);
        for &(member, addr) in &self.members {
            if member == ssrc {
                continue;
            }
            let i = self.entries.len();
            self.slots[i][..packet.len()].copy_from_slice(packet);
            self.entries.push((addr, packet.len()));
        }
    }
}

fn fan_out(c: &mut Criterion, members: usize) {
    let mut channel = Channel::new(members, Mode::Aes256GcmRtpSize).expect("channel");
    let outputs = members - 1;
    let from = channel.members[0].addr;
    let mut out = Outbox::with_capacity(members);
    let mut relay = PlainRelay::new(&channel);

    // Check the fixture forwards before timing it.
    let mut counter = 0u32;
    let mut first = Datagram {
        buf: [0; SEALED_BYTES],
        len: 0,
    };
    first.len = channel
        .sender_packet(counter, &mut first.buf)
        .expect("seal");
    channel
        .forwarder
        .handle(NOW, from, &mut first.buf[..first.len], &mut out);
    assert_eq!(out.len(), outputs, "every other member receives");
    relay.relay(&first.buf[..first.len]);
    assert_eq!(relay.entries.len(), outputs);

    let mut group = c.benchmark_group(format!("forward_fanout{outputs}"));
    group.throughput(Throughput::Elements(outputs as u64));
    // The relay copies the same (sealed) bytes; their freshness does not
    // matter to it, but it gets them the same way so both pay the same
    // batching overhead.
    group.bench_function("plain_relay", |b| {
        b.iter_batched_ref(
            || Datagram {
                buf: first.buf,
                len: first.len,
            },
            |p| {
                relay.relay(black_box(&p.buf[..p.len]));
                black_box(relay.entries.len())
            },
            BatchSize::SmallInput,
        )
    });
    let Channel { forwarder, members } = &mut channel;
    let sender = &members[0];
    group.bench_function("forwarder", |b| {
        b.iter_batched_ref(
            || {
                counter = counter.wrapping_add(1);
                let mut p = Datagram {
                    buf: [0; SEALED_BYTES],
                    len: 0,
                };
                p.len = sender.packet(counter, &mut p.buf).expect("seal");
                p
            },
            |p| {
                out.clear();
                forwarder.handle(NOW, from, black_box(&mut p.buf[..p.len]), &mut out);
                black_box(out.len())
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
    assert_eq!(
        forwarder.drops().total(),
        0,
        "nothing was dropped while timing"
    );
}

fn forward(c: &mut Criterion) {
    fan_out(c, 5);
    fan_out(c, 2);
}

criterion_group! {
    name = benches;
    config = benches::criterion_config();
    targets = forward
}
criterion_main!(benches);
