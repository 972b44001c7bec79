//! The forwarding decision: one received datagram and the core's session
//! table in, datagrams to send (in a caller-owned [`Outbox`]) and events
//! out. No I/O, no clock, no allocation per packet once the outbox and the
//! tables have grown to the core's working size.

use std::collections::VecDeque;
use std::net::SocketAddr;

use rustc_hash::FxHashMap;
use shared::{Command, CoreStats, DropReason, Event, Mode, SessionSpec};

use crate::crypto::{self, CryptoError, KeyState, ReplayId, MAX_OVERHEAD};
use crate::packet::{self, Datagram, Kind, DISCOVERY_LEN};
use crate::sys::sodium;

/// Bytes of one outbox slot (and the receive buffer the glue uses).
pub const SLOT_BYTES: usize = 2048;
/// The largest datagram accepted; anything longer is malformed (it could
/// not be re-sealed into a slot in every mode).
pub const MAX_DATAGRAM: usize = SLOT_BYTES - MAX_OVERHEAD;

/// Datagrams to send, in reusable fixed-size slots. Clearing keeps the
/// slots, so a core that has seen its largest channel never allocates here
/// again.
#[derive(Debug)]
pub struct Outbox {
    slots: Vec<[u8; SLOT_BYTES]>,
    entries: Vec<(SocketAddr, usize)>,
}

impl Outbox {
    /// An outbox with `capacity` slots allocated up front.
    pub fn with_capacity(capacity: usize) -> Self {
        Outbox {
            slots: vec![[0; SLOT_BYTES]; capacity],
            entries: Vec::with_capacity(capacity),
        }
    }

    /// Forgets every queued datagram (keeps the slots).
    pub fn clear(&mut self) {
        self.entries.clear();
    }

    /// Number of queued datagrams.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The queued datagram at `i`: destination and bytes.
    pub fn get(&self, i: usize) -> Option<(SocketAddr, &[u8])> {
        let (addr, len) = *self.entries.get(i)?;
        Some((addr, &self.slots[i][..len]))
    }

    /// Every queued datagram, in order.
    pub fn iter(&self) -> impl Iterator<Item = (SocketAddr, &[u8])> + '_ {
        self.entries
            .iter()
            .zip(&self.slots)
            .map(|(&(addr, len), slot)| (addr, &slot[..len]))
    }

    /// Fills the next slot with `fill` (which returns the length written)
    /// and queues it for `to`; nothing is queued if `fill` fails.
    fn push<E>(
        &mut self,
        to: SocketAddr,
        fill: impl FnOnce(&mut [u8; SLOT_BYTES]) -> Result<usize, E>,
    ) -> Result<(), E> {
        let i = self.entries.len();
        if i == self.slots.len() {
            self.slots.push([0; SLOT_BYTES]);
        }
        let len = fill(&mut self.slots[i])?;
        self.entries.push((to, len));
        Ok(())
    }
}

/// A 64-entry sliding window over a wrapping counter (32-bit) or RTP
/// sequence number (16-bit).
#[derive(Debug, Clone, Default)]
pub struct ReplayWindow {
    /// Highest value accepted so far.
    top: u32,
    /// Bit `i` set: `top - i` was accepted.
    seen: u64,
    started: bool,
}

impl ReplayWindow {
    /// Accepts `id` once; rejects repeats and values 64 or more behind the
    /// highest seen. Any starting value is accepted.
    pub fn accept(&mut self, id: ReplayId) -> bool {
        let (value, delta) = match id {
            ReplayId::None => return true,
            ReplayId::Counter(c) => (c, i64::from(c.wrapping_sub(self.top) as i32)),
            ReplayId::Sequence(s) => (
                u32::from(s),
                i64::from(s.wrapping_sub(self.top as u16) as i16),
            ),
        };
        if !self.started {
            self.started = true;
            self.top = value;
            self.seen = 1;
            return true;
        }
        if delta > 0 {
            self.seen = if delta >= 64 { 0 } else { self.seen << delta };
            self.seen |= 1;
            self.top = value;
            return true;
        }
        let age = -delta;
        if age >= 64 || self.seen & (1 << age) != 0 {
            return false;
        }
        self.seen |= 1 << age;
        true
    }
}

/// One SSRC on this core.
#[derive(Debug)]
struct Session {
    channel: u64,
    user: u64,
    /// Key and mode (after Select Protocol); `None` while only announced.
    key: Option<KeyState>,
    /// The raw key and mode, to tell a re-push of the same session from a
    /// new key.
    key_id: Option<(Mode, [u8; 32])>,
    /// What the client declared in Select Protocol.
    declared: Option<SocketAddr>,
    /// Where its last IP discovery request came from.
    observed: Option<SocketAddr>,
    /// Proven address: media is sent here. Set only by declared ==
    /// observed, or by an authenticated packet.
    addr: Option<SocketAddr>,
    rtp_window: ReplayWindow,
    rtcp_window: ReplayWindow,
    /// Counter for the next packet sealed to this member.
    out_counter: u32,
}

impl Session {
    fn new(channel: u64, user: u64) -> Self {
        Session {
            channel,
            user,
            key: None,
            key_id: None,
            declared: None,
            observed: None,
            addr: None,
            rtp_window: ReplayWindow::default(),
            rtcp_window: ReplayWindow::default(),
            out_counter: 0,
        }
    }

    /// Adopts the declared address if IP discovery saw the same one.
    fn adopt_declared(&mut self) {
        if self.addr.is_none()
            && self.key.is_some()
            && self.declared.is_some()
            && self.declared == self.observed
        {
            self.addr = self.declared;
        }
    }
}

/// A command could not be applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    /// The session's key could not be set up (e.g. AES-GCM without AES-NI);
    /// the session stays without a key.
    #[error("session {ssrc}: {source}")]
    Key {
        /// The session's SSRC.
        ssrc: u32,
        /// What went wrong.
        source: CryptoError,
    },
}

/// One core's sessions, channels, counters and pending events.
#[derive(Debug)]
pub struct Forwarder {
    core: u32,
    /// By SSRC. Fx hashing: the keys are control's random SSRCs and
    /// channel numbers (packets only look them up, never insert), so a
    /// keyed hash buys nothing on the per-packet path.
    sessions: FxHashMap<u32, Session>,
    channels: FxHashMap<u64, Vec<u32>>,
    stats: CoreStats,
    events: VecDeque<Event>,
}

impl Forwarder {
    /// An empty forwarder for core `core`.
    pub fn new(core: u32) -> Self {
        Forwarder {
            core,
            sessions: FxHashMap::with_capacity_and_hasher(1024, Default::default()),
            channels: FxHashMap::with_capacity_and_hasher(256, Default::default()),
            stats: CoreStats {
                core,
                ..CoreStats::default()
            },
            events: VecDeque::with_capacity(256),
        }
    }

    /// The core index.
    pub fn core(&self) -> u32 {
        self.core
    }

    /// Cumulative statistics, with the current session count.
    pub fn stats(&self) -> CoreStats {
        CoreStats {
            sessions: self.sessions.len() as u32,
            ..self.stats.clone()
        }
    }

    /// Events waiting for the event ring; the glue pops from the front and
    /// leaves what the ring would not take.
    pub fn events(&mut self) -> &mut VecDeque<Event> {
        &mut self.events
    }

    /// Counts a datagram the glue sent.
    pub fn note_sent(&mut self, bytes: usize) {
        self.stats.packets_out += 1;
        self.stats.bytes_out += bytes as u64;
    }

    /// Counts a datagram the kernel refused.
    pub fn note_send_failed(&mut self) {
        self.drop(DropReason::SendFailed);
    }

    /// Adds time spent handling packets.
    pub fn note_busy(&mut self, ns: u64) {
        self.stats.busy_ns += ns;
    }

    /// The proven address of `ssrc`, if any.
    pub fn address(&self, ssrc: u32) -> Option<SocketAddr> {
        self.sessions.get(&ssrc)?.addr
    }

    /// Whether `ssrc` is announced or keyed on this core.
    pub fn has_session(&self, ssrc: u32) -> bool {
        self.sessions.contains_key(&ssrc)
    }

    fn drop(&mut self, reason: DropReason) {
        self.stats.drops[reason as usize] += 1;
    }

    /// Applies one command from control.
    pub fn apply(&mut self, command: Command) -> Result<(), ApplyError> {
        match command {
            Command::AnnounceSsrc {
                ssrc,
                channel,
                user,
            } => {
                self.join(ssrc, channel).user = user;
                Ok(())
            }
            Command::UpsertSession(spec) => self.upsert(spec),
            Command::RemoveSession { ssrc } => {
                self.remove(ssrc);
                Ok(())
            }
            Command::RemoveChannel { channel } => {
                for ssrc in self.channels.remove(&channel).unwrap_or_default() {
                    self.sessions.remove(&ssrc);
                }
                Ok(())
            }
            Command::TrustAddress { ssrc, addr } => {
                // Control vouches for an address a core proved before (this
                // data plane restarted); an unknown SSRC is ignored.
                if let Some(session) = self.sessions.get_mut(&ssrc) {
                    session.addr = Some(addr);
                }
                Ok(())
            }
        }
    }

    /// The session for `ssrc`, created if new, as a member of `channel`.
    fn join(&mut self, ssrc: u32, channel: u64) -> &mut Session {
        let old_channel = self.sessions.get(&ssrc).map(|s| s.channel);
        if old_channel != Some(channel) {
            if let Some(old) = old_channel {
                self.leave(ssrc, old);
            }
            self.channels.entry(channel).or_default().push(ssrc);
        }
        let session = self
            .sessions
            .entry(ssrc)
            .or_insert_with(|| Session::new(channel, 0));
        session.channel = channel;
        session
    }

    fn leave(&mut self, ssrc: u32, channel: u64) {
        if let Some(members) = self.channels.get_mut(&channel) {
            members.retain(|&m| m != ssrc);
            if members.is_empty() {
                self.channels.remove(&channel);
            }
        }
    }

    fn remove(&mut self, ssrc: u32) {
        if let Some(s) = self.sessions.remove(&ssrc) {
            self.leave(ssrc, s.channel);
        }
    }

    fn upsert(&mut self, spec: SessionSpec) -> Result<(), ApplyError> {
        let key = KeyState::new(spec.mode, &spec.key);
        let session = self.join(spec.ssrc, spec.channel);
        session.user = spec.user;
        session.declared = spec.declared;
        let key = match key {
            Ok(k) => k,
            Err(source) => {
                session.key = None;
                session.key_id = None;
                return Err(ApplyError::Key {
                    ssrc: spec.ssrc,
                    source,
                });
            }
        };
        if session.key_id != Some((spec.mode, spec.key)) {
            // A new key: fresh replay windows, and a random first outgoing
            // counter so a restarted core never reuses a nonce under a key
            // it may have used before.
            session.rtp_window = ReplayWindow::default();
            session.rtcp_window = ReplayWindow::default();
            let mut c = [0; 4];
            sodium::random_bytes(&mut c);
            session.out_counter = u32::from_be_bytes(c);
            session.key_id = Some((spec.mode, spec.key));
        }
        session.key = Some(key);
        session.adopt_declared();
        Ok(())
    }

    /// Handles one datagram received from `from`, queuing what to send in
    /// `out` (which the caller has cleared) and events in [`Self::events`].
    pub fn handle(&mut self, from: SocketAddr, packet: &mut [u8], out: &mut Outbox) {
        self.stats.packets_in += 1;
        self.stats.bytes_in += packet.len() as u64;
        if packet.len() > MAX_DATAGRAM {
            self.drop(DropReason::Malformed);
            return;
        }
        match packet::classify(packet) {
            Datagram::Malformed => self.drop(DropReason::Malformed),
            Datagram::Keepalive => {
                let _ = out.push::<()>(from, |slot| {
                    slot[..packet.len()].copy_from_slice(packet);
                    Ok(packet.len())
                });
            }
            Datagram::Discovery { ssrc } => self.discovery(from, ssrc, out),
            Datagram::Media { kind, ssrc } => self.media(from, kind, ssrc, packet, out),
        }
    }

    fn discovery(&mut self, from: SocketAddr, ssrc: u32, out: &mut Outbox) {
        let Some(session) = self.sessions.get_mut(&ssrc) else {
            self.drop(DropReason::DiscoveryUnknown);
            return;
        };
        session.observed = Some(from);
        session.adopt_declared();
        let _ = out.push::<()>(from, |slot| {
            let reply: &mut [u8; DISCOVERY_LEN] =
                (&mut slot[..DISCOVERY_LEN]).try_into().map_err(|_| ())?;
            packet::discovery_response(ssrc, from, reply);
            Ok(DISCOVERY_LEN)
        });
        self.events
            .push_back(Event::AddressLearned { ssrc, addr: from });
    }

    fn media(
        &mut self,
        from: SocketAddr,
        kind: Kind,
        ssrc: u32,
        packet: &mut [u8],
        out: &mut Outbox,
    ) {
        let Some(sender) = self.sessions.get_mut(&ssrc) else {
            self.drop(DropReason::UnknownSsrc);
            return;
        };
        let Some(key) = &sender.key else {
            self.drop(DropReason::NoKey);
            return;
        };
        let opened = match crypto::open(key, kind, packet) {
            Ok(o) => o,
            Err(CryptoError::Auth) => return self.drop(DropReason::AuthFailed),
            Err(_) => return self.drop(DropReason::Malformed),
        };
        let window = match kind {
            Kind::Rtp => &mut sender.rtp_window,
            Kind::Rtcp => &mut sender.rtcp_window,
        };
        if !window.accept(opened.replay) {
            return self.drop(DropReason::Replay);
        }
        if sender.addr != Some(from) {
            sender.addr = Some(from);
            self.events
                .push_back(Event::AddressLearned { ssrc, addr: from });
        }
        let channel = sender.channel;
        let plain = &packet[..opened.len];
        let Some(members) = self.channels.get(&channel) else {
            return;
        };
        let mut failed = 0;
        for &member in members {
            if member == ssrc {
                continue;
            }
            let Some(m) = self.sessions.get_mut(&member) else {
                continue;
            };
            let (Some(addr), Some(key)) = (m.addr, &m.key) else {
                continue;
            };
            let counter = m.out_counter;
            match out.push(addr, |slot| crypto::seal(key, kind, counter, plain, slot)) {
                Ok(()) => m.out_counter = counter.wrapping_add(1),
                Err(_) => failed += 1,
            }
        }
        self.stats.drops[DropReason::Malformed as usize] += failed;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aes_gcm::aead::{Aead, KeyInit, Payload};

    /// A simulated client speaking aead_aes256_gcm_rtpsize with the
    /// reference AES-GCM implementation.
    struct Client {
        ssrc: u32,
        key: [u8; 32],
        addr: SocketAddr,
        counter: u32,
        seq: u16,
    }

    impl Client {
        fn new(ssrc: u32, port: u16) -> Self {
            Client {
                ssrc,
                key: [ssrc as u8; 32],
                addr: SocketAddr::from(([192, 0, 2, 1], port)),
                counter: 0,
                seq: 0,
            }
        }

        fn spec(&self, channel: u64, declared: Option<SocketAddr>) -> Command {
            Command::UpsertSession(SessionSpec {
                ssrc: self.ssrc,
                channel,
                user: u64::from(self.ssrc) * 10,
                mode: Mode::Aes256GcmRtpSize,
                key: self.key,
                declared,
            })
        }

        fn rtp(&mut self, payload: &[u8]) -> Vec<u8> {
            self.seq = self.seq.wrapping_add(1);
            let mut h = vec![0x80, 0x78];
            h.extend_from_slice(&self.seq.to_be_bytes());
            h.extend_from_slice(&[0, 0, 1, 0]);
            h.extend_from_slice(&self.ssrc.to_be_bytes());
            let c = aes_gcm::Aes256Gcm::new_from_slice(&self.key).unwrap();
            let mut nonce = [0u8; 12];
            nonce[..4].copy_from_slice(&self.counter.to_be_bytes());
            let ct = c
                .encrypt(
                    (&nonce).into(),
                    Payload {
                        msg: payload,
                        aad: &h,
                    },
                )
                .unwrap();
            let mut p = h;
            p.extend_from_slice(&ct);
            p.extend_from_slice(&self.counter.to_be_bytes());
            self.counter = self.counter.wrapping_add(1);
            p
        }

        /// Opens a datagram addressed to this client: (sender SSRC, payload).
        fn open(&self, p: &[u8]) -> Option<(u32, Vec<u8>)> {
            let c = aes_gcm::Aes256Gcm::new_from_slice(&self.key).unwrap();
            let n = p.len();
            let mut nonce = [0u8; 12];
            nonce[..4].copy_from_slice(&p[n - 4..]);
            let pt = c
                .decrypt(
                    (&nonce).into(),
                    Payload {
                        msg: &p[12..n - 4],
                        aad: &p[..12],
                    },
                )
                .ok()?;
            Some((u32::from_be_bytes(p[8..12].try_into().unwrap()), pt))
        }

        fn discovery(&self) -> Vec<u8> {
            let mut p = vec![0u8; 74];
            p[1] = 1;
            p[3] = 70;
            p[4..8].copy_from_slice(&self.ssrc.to_be_bytes());
            p
        }
    }

    fn send(
        f: &mut Forwarder,
        from: SocketAddr,
        bytes: &[u8],
        out: &mut Outbox,
    ) -> Vec<(SocketAddr, Vec<u8>)> {
        out.clear();
        let mut buf = bytes.to_vec();
        f.handle(from, &mut buf, out);
        out.iter().map(|(a, b)| (a, b.to_vec())).collect()
    }

    fn announce(f: &mut Forwarder, c: &Client, channel: u64) {
        f.apply(Command::AnnounceSsrc {
            ssrc: c.ssrc,
            channel,
            user: 1,
        })
        .unwrap();
    }

    #[test]
    #[allow(clippy::needless_range_loop)]
    fn three_members_hear_each_other_not_themselves() {
        let mut f = Forwarder::new(0);
        let mut out = Outbox::with_capacity(4);
        let mut clients: Vec<Client> = (0..3)
            .map(|i| Client::new(10 + i, 5000 + i as u16))
            .collect();
        for c in &clients {
            announce(&mut f, c, 7);
            f.apply(c.spec(7, None)).unwrap();
        }
        // Nobody has a proven address yet: the first packets go nowhere.
        for i in 0..3 {
            let from = clients[i].addr;
            let p = clients[i].rtp(b"hello");
            let got = send(&mut f, from, &p, &mut out);
            assert_eq!(got.len(), i, "only members proven so far receive");
        }
        assert_eq!(f.events().len(), 3);
        for i in 0..3 {
            let payload = format!("from {i}");
            let from = clients[i].addr;
            let p = clients[i].rtp(payload.as_bytes());
            let got = send(&mut f, from, &p, &mut out);
            assert_eq!(got.len(), 2);
            for (addr, bytes) in got {
                assert_ne!(addr, clients[i].addr, "never echoed to the sender");
                let r = clients.iter().find(|c| c.addr == addr).unwrap();
                let (ssrc, pt) = r.open(&bytes).expect("decrypts with the receiver's key");
                assert_eq!(ssrc, clients[i].ssrc);
                assert_eq!(pt, payload.as_bytes());
                assert!(clients[i].open(&bytes).is_none());
            }
        }
        let s = f.stats();
        assert_eq!(s.packets_in, 6);
        assert_eq!(s.sessions, 3);
        assert_eq!(s.drops, [0; DropReason::COUNT]);
    }

    #[test]
    fn listen_only_member_with_matching_declaration_hears_from_start() {
        let mut f = Forwarder::new(0);
        let mut out = Outbox::with_capacity(1);
        let mut speaker = Client::new(20, 6000);
        let listener = Client::new(21, 6001);
        let liar = Client::new(22, 6002);
        for c in [&speaker, &listener, &liar] {
            announce(&mut f, c, 1);
        }
        // IP discovery before the key: answered, address observed.
        let got = send(&mut f, listener.addr, &listener.discovery(), &mut out);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, listener.addr);
        assert_eq!(&got[0].1[..4], &[0, 2, 0, 70]);
        assert_eq!(&got[0].1[8..17], b"192.0.2.1");
        assert_eq!(
            f.events().pop_front(),
            Some(Event::AddressLearned {
                ssrc: 21,
                addr: listener.addr
            })
        );
        assert_eq!(f.address(21), None, "no key yet, nothing proven");
        f.apply(listener.spec(1, Some(listener.addr))).unwrap();
        assert_eq!(f.address(21), Some(listener.addr));
        // The liar declares an address discovery never saw.
        send(&mut f, liar.addr, &liar.discovery(), &mut out);
        f.apply(liar.spec(1, Some("198.51.100.9:1".parse().unwrap())))
            .unwrap();
        assert_eq!(f.address(22), None);
        f.apply(speaker.spec(1, None)).unwrap();
        let p = speaker.rtp(b"first words");
        let got = send(&mut f, speaker.addr, &p, &mut out);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, listener.addr);
        assert_eq!(listener.open(&got[0].1).unwrap().1, b"first words");
    }

    #[test]
    fn drops_are_counted_and_change_nothing() {
        let mut f = Forwarder::new(1);
        let mut out = Outbox::with_capacity(2);
        let mut a = Client::new(31, 7000);
        let mut b = Client::new(33, 7001);
        let stranger = Client::new(35, 7002);
        f.apply(a.spec(2, None)).unwrap();
        announce(&mut f, &b, 2);

        assert!(send(&mut f, a.addr, b"\x01garbage-not-rtp", &mut out).is_empty());
        let p = stranger.discovery();
        assert!(send(&mut f, stranger.addr, &p, &mut out).is_empty());
        let mut s = Client::new(35, 7002);
        assert!(send(&mut f, s.addr, &s.rtp(b"x"), &mut out).is_empty());
        assert!(send(&mut f, b.addr, &b.rtp(b"x"), &mut out).is_empty());
        let mut forged = a.rtp(b"x");
        let n = forged.len();
        forged[n - 6] ^= 1;
        let evil: SocketAddr = "203.0.113.5:1".parse().unwrap();
        assert!(send(&mut f, evil, &forged, &mut out).is_empty());
        assert_eq!(f.address(31), None, "a forgery proves nothing");

        let st = f.stats();
        assert_eq!(st.dropped(DropReason::Malformed), 1);
        assert_eq!(st.dropped(DropReason::DiscoveryUnknown), 1);
        assert_eq!(st.dropped(DropReason::UnknownSsrc), 1);
        assert_eq!(st.dropped(DropReason::NoKey), 1);
        assert_eq!(st.dropped(DropReason::AuthFailed), 1);
        assert!(f.events().is_empty());

        // Keepalives come back as they are.
        let ka = [1, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(send(&mut f, evil, &ka, &mut out), vec![(evil, ka.to_vec())]);
    }

    #[test]
    fn replays_are_rejected_and_nat_rebinding_moves_address() {
        let mut f = Forwarder::new(0);
        let mut out = Outbox::with_capacity(2);
        let mut a = Client::new(40, 8000);
        let b = Client::new(42, 8001);
        f.apply(a.spec(3, None)).unwrap();
        f.apply(b.spec(3, None)).unwrap();
        let mut bb = Client::new(42, 8001);
        send(&mut f, b.addr, &bb.rtp(b"prove"), &mut out);
        let p = a.rtp(b"once");
        assert_eq!(send(&mut f, a.addr, &p, &mut out).len(), 1);
        assert!(send(&mut f, a.addr, &p, &mut out).is_empty());
        assert_eq!(f.stats().dropped(DropReason::Replay), 1);
        // Out of order but inside the window is fine.
        let p1 = a.rtp(b"1");
        let p2 = a.rtp(b"2");
        assert_eq!(send(&mut f, a.addr, &p2, &mut out).len(), 1);
        assert_eq!(send(&mut f, a.addr, &p1, &mut out).len(), 1);
        // An authenticated packet from a new port moves the address.
        let moved: SocketAddr = "192.0.2.1:9999".parse().unwrap();
        f.events().clear();
        assert_eq!(send(&mut f, moved, &a.rtp(b"3"), &mut out).len(), 1);
        assert_eq!(f.address(40), Some(moved));
        assert_eq!(
            f.events().pop_front(),
            Some(Event::AddressLearned {
                ssrc: 40,
                addr: moved
            })
        );
    }

    #[test]
    fn removal_stops_forwarding() {
        let mut f = Forwarder::new(0);
        let mut out = Outbox::with_capacity(2);
        let mut a = Client::new(50, 9000);
        let mut b = Client::new(52, 9001);
        let mut c = Client::new(54, 9002);
        for x in [&a, &b, &c] {
            f.apply(x.spec(4, None)).unwrap();
        }
        send(&mut f, b.addr, &b.rtp(b"."), &mut out);
        send(&mut f, c.addr, &c.rtp(b"."), &mut out);
        assert_eq!(send(&mut f, a.addr, &a.rtp(b"."), &mut out).len(), 2);
        f.apply(Command::RemoveSession { ssrc: 52 }).unwrap();
        assert_eq!(send(&mut f, a.addr, &a.rtp(b"."), &mut out).len(), 1);
        assert!(send(&mut f, b.addr, &b.rtp(b"."), &mut out).is_empty());
        f.apply(Command::RemoveChannel { channel: 4 }).unwrap();
        assert!(send(&mut f, a.addr, &a.rtp(b"."), &mut out).is_empty());
        assert_eq!(f.stats().sessions, 0);
        assert_eq!(f.stats().dropped(DropReason::UnknownSsrc), 2);
    }

    #[test]
    fn a_trusted_address_receives_without_discovery() {
        let mut f = Forwarder::new(0);
        let mut out = Outbox::with_capacity(8);
        let mut talker = Client::new(70, 2000);
        let listener = Client::new(71, 2001);
        f.apply(talker.spec(9, None)).unwrap();
        f.apply(listener.spec(9, Some(listener.addr))).unwrap();
        // No discovery from the listener: its declared address is not
        // taken on its own word...
        assert!(send(&mut f, talker.addr, &talker.rtp(b"a"), &mut out).is_empty());
        // ...but control vouches for it (learned before a restart).
        f.apply(Command::TrustAddress {
            ssrc: listener.ssrc,
            addr: listener.addr,
        })
        .unwrap();
        let sent = send(&mut f, talker.addr, &talker.rtp(b"b"), &mut out);
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].0, listener.addr);
        f.apply(Command::TrustAddress {
            ssrc: 4242,
            addr: listener.addr,
        })
        .unwrap();
        assert!(!f.has_session(4242), "unknown SSRCs are not created");
    }

    #[test]
    fn mixed_modes_are_converted() {
        let mut f = Forwarder::new(0);
        let mut out = Outbox::with_capacity(8);
        let mut speaker = Client::new(60, 1000);
        f.apply(speaker.spec(5, None)).unwrap();
        let mut keys = Vec::new();
        for (i, mode) in Mode::ALL.into_iter().enumerate() {
            let ssrc = 100 + i as u32;
            let key = [ssrc as u8; 32];
            let addr = SocketAddr::from(([192, 0, 2, 9], 2000 + i as u16));
            f.apply(Command::AnnounceSsrc {
                ssrc,
                channel: 5,
                user: 0,
            })
            .unwrap();
            let mut d = vec![0u8; 74];
            d[1] = 1;
            d[3] = 70;
            d[4..8].copy_from_slice(&ssrc.to_be_bytes());
            send(&mut f, addr, &d, &mut out);
            f.apply(Command::UpsertSession(SessionSpec {
                ssrc,
                channel: 5,
                user: 0,
                mode,
                key,
                declared: Some(addr),
            }))
            .unwrap();
            keys.push((addr, KeyState::new(mode, &key).unwrap()));
        }
        let got = send(&mut f, speaker.addr, &speaker.rtp(b"opus!"), &mut out);
        assert_eq!(got.len(), Mode::ALL.len());
        for (addr, mut bytes) in got {
            let (_, key) = keys.iter().find(|(a, _)| *a == addr).unwrap();
            let o = crypto::open(key, Kind::Rtp, &mut bytes).unwrap();
            assert_eq!(&bytes[12..o.len], b"opus!", "{:?}", key.mode());
            assert_eq!(&bytes[8..12], &60u32.to_be_bytes());
        }
    }

    #[test]
    fn replay_window_wraps() {
        let mut w = ReplayWindow::default();
        assert!(w.accept(ReplayId::Counter(u32::MAX - 1)));
        assert!(w.accept(ReplayId::Counter(u32::MAX)));
        assert!(w.accept(ReplayId::Counter(0)));
        assert!(w.accept(ReplayId::Counter(1)));
        assert!(!w.accept(ReplayId::Counter(u32::MAX)));
        assert!(!w.accept(ReplayId::Counter(1)));
        assert!(w.accept(ReplayId::Counter(200)));
        assert!(!w.accept(ReplayId::Counter(100)), "too old");
        assert!(w.accept(ReplayId::Counter(150)));
        let mut s = ReplayWindow::default();
        assert!(s.accept(ReplayId::Sequence(65535)));
        assert!(s.accept(ReplayId::Sequence(0)));
        assert!(!s.accept(ReplayId::Sequence(65535)));
        assert!(s.accept(ReplayId::None));
        assert!(s.accept(ReplayId::None));
    }
}
