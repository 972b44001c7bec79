//! The garbage flood: a call's loss while a stranger floods the voice port.
//!
//! [`garbage`] sends junk from several loopback sockets as fast as one
//! thread can for a bounded time and count: random bytes, RTP and RTCP
//! for SSRCs nobody has, keepalives from addresses nobody proved, IP
//! discovery for random SSRCs, 8-byte datagrams that are not keepalives.
//! It stops by itself and may only target loopback.
//!
//! [`call_under_flood`] joins a two-member call over LVSP and the gateway,
//! measures health, floods while the talker sends 50 packets a second, and
//! reports what the listener heard and the health during the flood. The
//! `flood` binary prints it; the hostile-traffic test asserts on it.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};

use crate::error::{ClientError, Result};
use crate::lvsp::LvspClient;
use crate::{Mode, VoiceClient};

/// How to flood.
#[derive(Debug, Clone)]
pub struct FloodConfig {
    /// Where to send (loopback only).
    pub target: SocketAddr,
    /// How long at most.
    pub duration: Duration,
    /// How many datagrams at most.
    pub max_packets: u64,
    /// Source sockets (the kernel spreads junk over the data plane's cores
    /// by source).
    pub sources: usize,
    /// Seed of the junk generator (a run can be replayed).
    pub seed: u64,
}

/// What a flood sent.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FloodReport {
    /// Datagrams sent.
    pub sent: u64,
    /// How long it took.
    pub elapsed: Duration,
}

impl FloodReport {
    /// Datagrams per second.
    pub fn rate(&self) -> f64 {
        self.sent as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// One junk datagram into `buf`; returns its length.
fn junk(rng: &mut impl Rng, buf: &mut [u8; 256]) -> usize {
    match rng.gen_range(0..6) {
        // Random bytes of a random length.
        0 => {
            let n = rng.gen_range(1..buf.len());
            rng.fill(&mut buf[..n]);
            n
        }
        // RTP for an SSRC nobody has (or, rarely, one somebody has: it
        // fails authentication).
        1 => {
            let n = rng.gen_range(28..200);
            rng.fill(&mut buf[..n]);
            buf[0] = 0x80;
            buf[1] = 0x78;
            n
        }
        // RTCP (any type of RFC 5761's range) for a random SSRC.
        2 => {
            let n = rng.gen_range(28..120);
            rng.fill(&mut buf[..n]);
            buf[0] = 0x81;
            buf[1] = rng.gen_range(192..=223);
            n
        }
        // A keepalive from an address nobody proved.
        3 => {
            buf[..8].fill(0);
            buf[..4].copy_from_slice(&rng.gen::<u32>().to_le_bytes());
            8
        }
        // IP discovery for a random SSRC.
        4 => {
            buf[..74].fill(0);
            buf[1] = 1;
            buf[3] = 70;
            buf[4..8].copy_from_slice(&rng.gen::<u32>().to_be_bytes());
            74
        }
        // Eight bytes that are not a keepalive.
        _ => {
            rng.fill(&mut buf[..8]);
            buf[7] |= 1;
            8
        }
    }
}

/// Floods `config.target` with junk until the time or count runs out.
/// Blocking: run it on its own thread.
pub fn garbage(config: &FloodConfig) -> std::io::Result<FloodReport> {
    if !config.target.ip().is_loopback() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the flood only targets loopback",
        ));
    }
    let local: SocketAddr = match config.target {
        SocketAddr::V4(_) => "127.0.0.1:0".parse().expect("literal"),
        SocketAddr::V6(_) => "[::1]:0".parse().expect("literal"),
    };
    let sockets = (0..config.sources.max(1))
        .map(|_| UdpSocket::bind(local))
        .collect::<std::io::Result<Vec<_>>>()?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(config.seed);
    let mut buf = [0u8; 256];
    let start = Instant::now();
    let mut sent = 0u64;
    while sent < config.max_packets {
        // Check the clock every 256 datagrams: cheap, and bounded anyway.
        if sent % 256 == 0 && start.elapsed() >= config.duration {
            break;
        }
        let n = junk(&mut rng, &mut buf);
        let socket = &sockets[sent as usize % sockets.len()];
        // A full send buffer (ENOBUFS) is part of flooding: carry on.
        let _ = socket.send_to(&buf[..n], config.target);
        sent += 1;
    }
    Ok(FloodReport {
        sent,
        elapsed: start.elapsed(),
    })
}

/// Where the server is and how hard to flood.
#[derive(Debug, Clone)]
pub struct CallUnderFlood {
    /// LVSP URL.
    pub lvsp: String,
    /// LVSP secret.
    pub secret: String,
    /// Voice gateway URL (no query).
    pub gateway: String,
    /// The flood (its target is the server's UDP address, from Ready).
    pub flood: FloodConfig,
    /// Guild and channel snowflakes to use.
    pub guild: String,
    /// The channel.
    pub channel: String,
}

/// What the listener heard during the flood.
#[derive(Debug, Clone, PartialEq)]
pub struct FloodOutcome {
    /// Packets the talker sent during the flood.
    pub sent: u64,
    /// Packets the listener received intact (right SSRC and payload).
    pub received: u64,
    /// What the flood sent.
    pub flood: FloodReport,
    /// Health (LVSP heartbeat ACK) before the flood.
    pub health_before: f64,
    /// The lowest health seen while the flood ran.
    pub health_during: f64,
}

impl FloodOutcome {
    /// The call's loss, a fraction.
    pub fn loss(&self) -> f64 {
        1.0 - self.received as f64 / self.sent.max(1) as f64
    }
}

/// Joins a two-member call, then floods while the talker sends 50 packets a
/// second; see the module documentation.
pub async fn call_under_flood(config: &CallUnderFlood) -> Result<FloodOutcome> {
    let (mut lvsp, _) = LvspClient::connect(&config.lvsp, &config.secret).await?;
    let assign = lvsp
        .channel_req(&config.channel, Some(&config.guild))
        .await?;
    let mut members = Vec::new();
    for user in ["4100", "4101"] {
        let done = lvsp
            .voice_state_create(user, &config.channel, Some(&config.guild))
            .await?;
        members.push(
            VoiceClient::join(
                &config.gateway,
                8,
                &config.guild,
                user,
                &done.session_id,
                &assign.token,
                Mode::Aes256GcmRtpSize,
            )
            .await?,
        );
    }
    let mut listener = members.pop().expect("two members");
    let mut talker = members.pop().expect("two members");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let health_before = lvsp.heartbeat().await?;

    let mut flood = config.flood.clone();
    flood.target = talker.udp.server_addr();
    let flooding = std::thread::spawn(move || garbage(&flood));
    let talker_ssrc = talker.ssrc();
    let listening = tokio::spawn(async move {
        let mut got = std::collections::BTreeSet::new();
        // Until the talker is done and a second of silence passed.
        while let Ok(p) = listener.udp.recv_timeout(Duration::from_secs(2)).await {
            if p.ssrc == talker_ssrc && p.payload.starts_with(b"flood-call ") {
                got.insert(p.payload);
            }
        }
        got.len() as u64
    });
    let mut sent = 0u64;
    let mut health_during = health_before;
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    let until = Instant::now() + config.flood.duration;
    while Instant::now() < until {
        tick.tick().await;
        let payload = format!("flood-call {sent:08} {}", "x".repeat(100));
        talker.udp.send_opus(payload.as_bytes()).await?;
        sent += 1;
        if sent % 25 == 0 {
            health_during = health_during.min(lvsp.heartbeat().await?);
        }
    }
    let flood = flooding
        .join()
        .map_err(|_| ClientError::Protocol("the flood thread panicked".into()))??;
    let received = listening
        .await
        .map_err(|e| ClientError::Protocol(format!("listener task: {e}")))?;
    Ok(FloodOutcome {
        sent,
        received,
        flood,
        health_before,
        health_during,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_anything_but_loopback() {
        let config = FloodConfig {
            target: "192.0.2.1:9".parse().unwrap(),
            duration: Duration::from_millis(10),
            max_packets: 10,
            sources: 1,
            seed: 1,
        };
        assert!(garbage(&config).is_err());
    }

    #[test]
    fn stops_at_its_count_and_sends_only_junk_kinds() {
        let sink = UdpSocket::bind("127.0.0.1:0").unwrap();
        sink.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let config = FloodConfig {
            target: sink.local_addr().unwrap(),
            duration: Duration::from_secs(10),
            // Few enough that the sink's default receive buffer holds them.
            max_packets: 120,
            sources: 3,
            seed: 7,
        };
        let report = garbage(&config).unwrap();
        assert_eq!(report.sent, 120);
        let mut buf = [0u8; 512];
        let mut got = 0;
        let mut sources = std::collections::HashSet::new();
        while let Ok((n, from)) = sink.recv_from(&mut buf) {
            assert!((1..256).contains(&n));
            sources.insert(from);
            got += 1;
        }
        assert!(got >= 100, "{got} of 120 arrived on loopback");
        assert_eq!(sources.len(), 3);
    }
}
