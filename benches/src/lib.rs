//! Benchmarks for the "Performance targets" of DESIGN.md, each measured as
//! a ratio against a baseline in the same run:
//!
//! - `benches/crypto.rs`: per-packet seal + open through
//!   [`dataplane::crypto`] against the raw libsodium primitive doing the
//!   same work on the same bytes, one group per transport mode.
//! - `benches/forward.rs`: [`dataplane::forward::Forwarder::handle`] on a
//!   5-member (fan-out 4) and a 2-member (fan-out 1) AES-GCM channel
//!   against a plain relay that copies the same datagram to the same
//!   number of destinations without crypto.
//!
//! Run them with `cargo bench -p benches`; `README.md` beside this crate
//! holds the figures last measured. This library only holds the fixtures
//! both benches share: Opus-sized RTP packets and a channel of members with
//! proven addresses on one forwarder.

#![forbid(unsafe_code)]

use std::net::SocketAddr;

use dataplane::crypto::{self, CryptoError, KeyState};
use dataplane::forward::{Forwarder, Outbox};
use dataplane::packet::{Kind, DISCOVERY_LEN};
use shared::{Command, Mode, SessionSpec};

/// Bytes of a plaintext Opus-sized RTP packet: header and payload.
pub const PACKET_BYTES: usize = 160;
/// Bytes of the RTP header (no CSRCs, no extension).
pub const HEADER_BYTES: usize = 12;
/// Room for any sealed packet of [`PACKET_BYTES`].
pub const SEALED_BYTES: usize = PACKET_BYTES + crypto::MAX_OVERHEAD;

/// The voice channel every fixture member joins.
pub const CHANNEL: u64 = 7;

/// A plaintext RTP packet of [`PACKET_BYTES`] from `ssrc`: version 2,
/// payload type 120 (Opus), sequence `seq`, and a payload of filler bytes.
pub fn opus_packet(ssrc: u32, seq: u16) -> [u8; PACKET_BYTES] {
    let mut p = [0u8; PACKET_BYTES];
    p[0] = 0x80;
    p[1] = 0x78;
    p[2..4].copy_from_slice(&seq.to_be_bytes());
    p[4..8].copy_from_slice(&(u32::from(seq) * 960).to_be_bytes());
    p[8..12].copy_from_slice(&ssrc.to_be_bytes());
    for (i, b) in p[HEADER_BYTES..].iter_mut().enumerate() {
        *b = i as u8;
    }
    p
}

/// An IP discovery request for `ssrc` (type 1, length 70, zero address).
pub fn discovery_request(ssrc: u32) -> [u8; DISCOVERY_LEN] {
    let mut p = [0u8; DISCOVERY_LEN];
    p[0..2].copy_from_slice(&1u16.to_be_bytes());
    p[2..4].copy_from_slice(&70u16.to_be_bytes());
    p[4..8].copy_from_slice(&ssrc.to_be_bytes());
    p
}

/// One member of the fixture channel, as its client sees it.
#[derive(Debug)]
pub struct Member {
    /// The member's SSRC.
    pub ssrc: u32,
    /// The address it sends from and receives at.
    pub addr: SocketAddr,
    /// Its key, to seal packets the forwarder will accept from it.
    pub key: KeyState,
}

/// The benches' clock (milliseconds): time does not pass while timing, so
/// no address goes idle.
pub const NOW: u64 = 1_000_000;

/// A channel of members on one forwarder, every member with a proven
/// address (IP discovery from the address it then declares), so member 0's
/// packets reach all the others.
#[derive(Debug)]
pub struct Channel {
    /// The forwarder owning the channel.
    pub forwarder: Forwarder,
    /// The members; member 0 is the sender in the benches.
    pub members: Vec<Member>,
}

impl Channel {
    /// `members` members speaking `mode`, announced, discovered and keyed.
    pub fn new(members: usize, mode: Mode) -> Result<Channel, CryptoError> {
        let mut forwarder = Forwarder::new(
            0,
            dataplane::forward::ForwardConfig::default(),
            shared::Counters::in_memory(members),
        );
        let mut out = Outbox::with_capacity(members);
        let mut list = Vec::with_capacity(members);
        for i in 0..members {
            let ssrc = 1000 + i as u32;
            let addr = SocketAddr::from(([192, 0, 2, 1], 5000 + i as u16));
            let key = [ssrc as u8; 32];
            let _ = forwarder.apply(
                NOW,
                Command::AnnounceSsrc {
                    ssrc,
                    channel: CHANNEL,
                    user: u64::from(ssrc),
                },
            );
            out.clear();
            forwarder.handle(NOW, addr, &mut discovery_request(ssrc), &mut out);
            forwarder
                .apply(
                    NOW,
                    Command::UpsertSession(SessionSpec {
                        ssrc,
                        channel: CHANNEL,
                        user: u64::from(ssrc),
                        mode,
                        key,
                        declared: Some(addr),
                        slot: i as u32,
                        video: Default::default(),
                    }),
                )
                .map_err(|e| match e {
                    dataplane::forward::ApplyError::Key { source, .. } => source,
                    dataplane::forward::ApplyError::Slot { .. } => CryptoError::Malformed,
                })?;
            list.push(Member {
                ssrc,
                addr,
                key: KeyState::new(mode, &key)?,
            });
        }
        forwarder.events().clear();
        Ok(Channel {
            forwarder,
            members: list,
        })
    }

    /// Seals the `counter`-th RTP packet of member 0 (the sender) into
    /// `out`; see [`Member::packet`].
    pub fn sender_packet(&self, counter: u32, out: &mut [u8]) -> Result<usize, CryptoError> {
        self.members[0].packet(counter, out)
    }
}

impl Member {
    /// Seals this member's `counter`-th RTP packet into `out`, as its client
    /// would send it; returns the datagram's length. Counters must increase
    /// from call to call or the forwarder's replay window drops the packet.
    pub fn packet(&self, counter: u32, out: &mut [u8]) -> Result<usize, CryptoError> {
        let plain = opus_packet(self.ssrc, counter as u16);
        crypto::seal(&self.key, Kind::Rtp, counter, &plain, out)
    }
}

/// The settings every bench here uses: short enough that the whole suite
/// runs in about a minute on a 2-core machine.
pub fn criterion_config() -> criterion::Criterion {
    criterion::Criterion::default()
        .warm_up_time(std::time::Duration::from_secs(1))
        .measurement_time(std::time::Duration::from_secs(3))
        .sample_size(50)
}
