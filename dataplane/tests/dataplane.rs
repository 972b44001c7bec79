//! Runs the real `dataplane` binary against a region this test creates
//! (2 cores, 127.0.0.1, port 0) and talks to it over loopback UDP.

use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command as Process, Stdio};
use std::time::{Duration, Instant};

use scripts::crypto::Cipher;
use shared::{
    Command, Consumer, CoreStats, DropReason, Drops, Event, Mode, Producer, Region, RegionConfig,
    SessionSpec,
};

const TIMEOUT: Duration = Duration::from_secs(5);

/// Kills the child if the test fails half-way.
struct Dataplane(Child);

impl Dataplane {
    /// Waits for the port the dataplane publishes in `region`.
    fn published_port(&mut self, region: &Region) -> u16 {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(p) = region.udp_port() {
                return p;
            }
            if let Some(status) = self.0.try_wait().unwrap() {
                panic!("dataplane exited early: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "dataplane never published its port"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for the dataplane to exit; `what` says what it means if not.
    fn exit_status(&mut self, what: &str) -> std::process::ExitStatus {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "{what}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Dataplane {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Plays control: reads events, and tells every other core about an
/// address a core proved (as control does), so any core can echo
/// keepalives from it.
struct Control {
    rings: Vec<(Producer<Command>, Consumer<Event>)>,
    observed: Vec<(u32, SocketAddr)>,
    proven: Vec<(u32, SocketAddr)>,
    stats: Vec<CoreStats>,
    drops: Vec<Drops>,
}

impl Control {
    fn send(&mut self, core: u32, command: Command) {
        self.rings[core as usize]
            .0
            .push(&command)
            .expect("command ring has room");
    }

    fn poll(&mut self) {
        let mut binds = Vec::new();
        for (core, (_, events)) in self.rings.iter_mut().enumerate() {
            while let Some(e) = events.pop().expect("event ring intact") {
                match e {
                    Event::AddressObserved { ssrc, addr } => self.observed.push((ssrc, addr)),
                    Event::AddressProven { ssrc, addr } => {
                        self.proven.push((ssrc, addr));
                        binds.push((core, ssrc, addr));
                    }
                    Event::AddressExpired { .. } => {}
                    Event::Stats(s) => {
                        let core = s.core as usize;
                        self.stats[core] = s;
                    }
                    Event::Drops { core, drops } => self.drops[core as usize] = drops,
                }
            }
        }
        for (owner, ssrc, addr) in binds {
            for core in (0..self.rings.len()).filter(|c| *c != owner) {
                // This test gives every session the slot = its SSRC.
                self.send(
                    core as u32,
                    Command::BindAddress {
                        addr,
                        ssrc,
                        slot: ssrc,
                    },
                );
            }
        }
    }

    fn wait_for(&mut self, what: &str, mut done: impl FnMut(&Control) -> bool) {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            self.poll();
            if done(self) {
                return;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn drops(&self, reason: DropReason) -> u64 {
        self.drops.iter().map(|d| d.get(reason)).sum()
    }
}

struct Client {
    ssrc: u32,
    key: [u8; 32],
    socket: UdpSocket,
    counter: u32,
    seq: u16,
}

impl Client {
    fn new(ssrc: u32) -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        Client {
            ssrc,
            key: [ssrc as u8 ^ 0x5A; 32],
            socket,
            counter: 7,
            seq: 100,
        }
    }

    fn addr(&self) -> SocketAddr {
        self.socket.local_addr().unwrap()
    }

    fn recv(&self) -> Option<Vec<u8>> {
        let mut buf = [0u8; 2048];
        match self.socket.recv_from(&mut buf) {
            Ok((n, _)) => Some(buf[..n].to_vec()),
            Err(_) => None,
        }
    }

    /// IP discovery, retried while the announcement may still be in flight.
    fn discover(&self, server: SocketAddr) -> Vec<u8> {
        let mut req = [0u8; 74];
        req[1] = 1;
        req[3] = 70;
        req[4..8].copy_from_slice(&self.ssrc.to_be_bytes());
        let deadline = Instant::now() + TIMEOUT;
        loop {
            self.socket.send_to(&req, server).unwrap();
            if let Some(reply) = self.recv() {
                return reply;
            }
            assert!(
                Instant::now() < deadline,
                "no discovery reply for {}",
                self.ssrc
            );
        }
    }

    fn rtp(&mut self, payload: &[u8]) -> Vec<u8> {
        self.seq = self.seq.wrapping_add(1);
        let mut p = vec![0x80, 0x78];
        p.extend_from_slice(&self.seq.to_be_bytes());
        p.extend_from_slice(&[0, 0, 2, 0]);
        p.extend_from_slice(&self.ssrc.to_be_bytes());
        self.seal(p, payload)
    }

    /// An RTCP packet of type `pt` (206: PLI), sealed with its 8-byte
    /// header as the AAD.
    fn rtcp(&mut self, pt: u8, body: &[u8]) -> Vec<u8> {
        let mut p = vec![0x81, pt, 0, 2];
        p.extend_from_slice(&self.ssrc.to_be_bytes());
        self.seal(p, body)
    }

    /// Seals header ‖ payload as a client does, with the client
    /// library's AES-GCM (independent of the server's libsodium).
    fn seal(&mut self, mut p: Vec<u8>, payload: &[u8]) -> Vec<u8> {
        p.extend_from_slice(payload);
        let wire = self
            .cipher()
            .encrypt_with(&p, self.counter, [0; 24])
            .unwrap();
        self.counter += 1;
        wire
    }

    /// Decrypts a forwarded packet: (SSRC in its header, payload).
    fn open(&self, p: &[u8]) -> (u32, Vec<u8>) {
        let plain = self
            .cipher()
            .decrypt(p)
            .expect("forwarded packet decrypts with the receiver's key");
        (
            u32::from_be_bytes(plain[8..12].try_into().unwrap()),
            plain[12..].to_vec(),
        )
    }

    fn cipher(&self) -> Cipher {
        Cipher::new(Mode::Aes256GcmRtpSize, &self.key).unwrap()
    }

    fn upsert(&self, channel: u64, declared: Option<SocketAddr>) -> Command {
        Command::UpsertSession(SessionSpec {
            ssrc: self.ssrc,
            channel,
            user: u64::from(self.ssrc),
            mode: Mode::Aes256GcmRtpSize,
            key: self.key,
            declared,
            slot: self.ssrc,
            video: Default::default(),
        })
    }
}

#[test]
fn real_binary_forwards_between_members() {
    let path = std::env::temp_dir().join(format!(
        "dataplane-it-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let region = Region::create(&path, RegionConfig::new(2)).unwrap();
    let child = Process::new(env!("CARGO_BIN_EXE_dataplane"))
        .args([
            "--shm",
            path.to_str().unwrap(),
            "--bind",
            "127.0.0.1:0",
            "--stats-interval-ms",
            "20",
        ])
        .stdin(Stdio::null())
        .spawn()
        .expect("starts the dataplane");
    let mut dp = Dataplane(child);
    let port = dp.published_port(&region);
    let server = SocketAddr::from(([127, 0, 0, 1], port));
    let mut control = Control {
        rings: (0..2).map(|c| region.control_side(c).unwrap()).collect(),
        observed: Vec::new(),
        proven: Vec::new(),
        stats: vec![CoreStats::default(); 2],
        drops: vec![Drops::default(); 2],
    };

    // IP discovery on each core: 1000 belongs to core 0, 1001 to core 1.
    let lone = Client::new(1000);
    let mut a = Client::new(1001);
    let b = Client::new(1003);
    let mut c = Client::new(1005);
    control.send(
        0,
        Command::AnnounceSsrc {
            ssrc: 1000,
            channel: 8,
            user: 1,
        },
    );
    for x in [&a, &b, &c] {
        control.send(
            1,
            Command::AnnounceSsrc {
                ssrc: x.ssrc,
                channel: 9,
                user: 2,
            },
        );
    }
    for x in [&lone, &a, &b] {
        let reply = x.discover(server);
        assert_eq!(reply.len(), 74);
        assert_eq!(
            &reply[..8],
            &[&[0, 2, 0, 70][..], &x.ssrc.to_be_bytes()].concat()[..]
        );
        assert_eq!(&reply[8..18], b"127.0.0.1\0");
        assert_eq!(u16::from_be_bytes([reply[72], reply[73]]), x.addr().port());
    }
    control.wait_for("three AddressObserved events", |c| c.observed.len() >= 3);
    for x in [&lone, &a, &b] {
        assert!(control.observed.contains(&(x.ssrc, x.addr())));
    }
    assert!(control.proven.is_empty(), "discovery proves nothing");

    // Keys: a and b declared what discovery saw; c never did discovery.
    control.send(1, a.upsert(9, Some(a.addr())));
    control.send(1, b.upsert(9, Some(b.addr())));
    control.send(1, c.upsert(9, None));
    control.wait_for("a and b proven", |c| c.proven.len() >= 2);
    std::thread::sleep(Duration::from_millis(20));

    // c's first packet reaches a and b (listen-only members hear it).
    let p = c.rtp(b"from c");
    c.socket.send_to(&p, server).unwrap();
    for r in [&a, &b] {
        let got = r.recv().expect("forwarded packet");
        assert_eq!(r.open(&got), (1005, b"from c".to_vec()));
    }
    assert!(c.recv().is_none(), "the sender does not hear itself");

    // a's packet reaches b and c (c proved its address by its packet).
    let p = a.rtp(b"from a");
    a.socket.send_to(&p, server).unwrap();
    for r in [&b, &c] {
        let got = r.recv().expect("forwarded packet");
        assert_eq!(r.open(&got), (1001, b"from a".to_vec()));
    }
    // A replay of it goes nowhere.
    a.socket.send_to(&p, server).unwrap();
    assert!(b.recv().is_none());

    // RTCP feedback (PLI, type 206) reaches the sender's core and the
    // others (RFC 5761 steering and classification).
    let p = a.rtcp(206, &1001u32.to_be_bytes());
    a.socket.send_to(&p, server).unwrap();
    for r in [&b, &c] {
        let got = r.recv().expect("forwarded PLI");
        assert_eq!(got[1], 206);
    }

    // Keepalives from a proven address are echoed as they are, whichever
    // core the kernel hashes them to; a stranger's are not.
    let ka = [9, 0, 0, 0, 0, 0, 0, 0];
    b.socket.send_to(&ka, server).unwrap();
    assert_eq!(b.recv().as_deref(), Some(&ka[..]));
    lone.socket.send_to(&ka, server).unwrap();
    assert!(lone.recv().is_none(), "never proven: no echo");

    // Garbage and an unknown SSRC are counted.
    lone.socket
        .send_to(b"this is not a voice packet", server)
        .unwrap();
    let mut stranger = Client::new(4242);
    let p = stranger.rtp(b"?");
    stranger.socket.send_to(&p, server).unwrap();
    control.wait_for("drop statistics", |c| {
        c.drops(DropReason::Malformed) >= 1
            && c.drops(DropReason::UnknownSsrc) >= 1
            && c.drops(DropReason::Replay) >= 1
    });
    let s = &control.stats[1];
    assert_eq!(s.sessions, 3);
    assert!(s.packets_in >= 5 && s.packets_out >= 6, "{s:?}");
    control.wait_for("the stranger's keepalive counted", |c| {
        c.drops(DropReason::Unbound) >= 1
    });

    // Commands are applied without traffic: removing b stops its feed.
    control.send(1, Command::RemoveSession { ssrc: b.ssrc });
    control.wait_for("session removed", |c| c.stats[1].sessions == 2);
    let p = a.rtp(b"after");
    a.socket.send_to(&p, server).unwrap();
    assert_eq!(c.open(&c.recv().expect("c still hears a")).1, b"after");
    assert!(b.recv().is_none());

    // SIGTERM stops it cleanly.
    let pid = dp.0.id().to_string();
    let killed = Process::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(killed.success());
    let status = dp.exit_status("dataplane ignored SIGTERM");
    assert!(status.success(), "{status}");
}

#[test]
fn missing_region_is_a_clear_error() {
    let out = Process::new(env!("CARGO_BIN_EXE_dataplane"))
        .args(["--shm", "/nonexistent/region", "--bind", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot attach shared memory region"),
        "{stderr}"
    );
}

/// A dataplane whose region is removed (its control is gone and a new one
/// may come) stops and leaves the port's reuseport group.
#[test]
fn a_dataplane_whose_region_is_removed_leaves_the_port() {
    let path = std::env::temp_dir().join(format!(
        "dataplane-stale-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let region = Region::create(&path, RegionConfig::new(1)).unwrap();
    let child = Process::new(env!("CARGO_BIN_EXE_dataplane"))
        .args(["--shm", path.to_str().unwrap(), "--bind", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .spawn()
        .expect("starts the dataplane");
    let mut dp = Dataplane(child);
    let port = dp.published_port(&region);
    drop(region); // removes the file
    let status = dp.exit_status("a stale dataplane kept running");
    assert!(status.success(), "{status}");
    // Exited, so its sockets are closed and it left the port's group. (A
    // bind of the port here would race the other tests' ephemeral binds.)
    assert_ne!(port, 0);
}
