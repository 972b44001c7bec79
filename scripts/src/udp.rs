//! The voice UDP socket: IP discovery, keepalives, and sending and
//! receiving encrypted Opus over RTP.
//!
//! The packet formats are pure functions ([`discovery_request`],
//! [`parse_discovery_response`], [`keepalive`], [`parse_keepalive`]);
//! [`VoiceUdp`] is the thin tokio socket around them.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use tokio::net::UdpSocket;

use crate::crypto::{Cipher, Mode};
use crate::error::{ClientError, Result};
use crate::rtp::{looks_like_rtp, Kind, PacketError, RtpHeader, RtpPacket, SAMPLES_PER_FRAME};

/// Length of an IP discovery request or response.
pub const DISCOVERY_LEN: usize = 74;
/// Type field of an IP discovery request.
pub const DISCOVERY_REQUEST: u16 = 0x0001;
/// Type field of an IP discovery response.
pub const DISCOVERY_RESPONSE: u16 = 0x0002;
/// Length of a keepalive datagram.
pub const KEEPALIVE_LEN: usize = 8;
/// Largest datagram [`VoiceUdp`] reads.
pub const MAX_DATAGRAM: usize = 2048;

/// The 74-byte IP discovery request for `ssrc`.
pub fn discovery_request(ssrc: u32) -> [u8; DISCOVERY_LEN] {
    discovery_packet(DISCOVERY_REQUEST, ssrc, "", 0)
}

/// The 74-byte IP discovery response the server sends (for test servers).
/// An address longer than 64 bytes is cut.
pub fn discovery_response(ssrc: u32, addr: SocketAddr) -> [u8; DISCOVERY_LEN] {
    discovery_packet(
        DISCOVERY_RESPONSE,
        ssrc,
        &addr.ip().to_string(),
        addr.port(),
    )
}

fn discovery_packet(kind: u16, ssrc: u32, ip: &str, port: u16) -> [u8; DISCOVERY_LEN] {
    let mut out = [0u8; DISCOVERY_LEN];
    out[0..2].copy_from_slice(&kind.to_be_bytes());
    out[2..4].copy_from_slice(&70u16.to_be_bytes());
    out[4..8].copy_from_slice(&ssrc.to_be_bytes());
    let ip = ip.as_bytes();
    let n = ip.len().min(64);
    out[8..8 + n].copy_from_slice(&ip[..n]);
    out[72..74].copy_from_slice(&port.to_be_bytes());
    out
}

/// An IP discovery response: the SSRC it answers and the address seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Discovered {
    /// The SSRC echoed back.
    pub ssrc: u32,
    /// Our address as the server sees it.
    pub addr: SocketAddr,
}

/// Parses an IP discovery response (type 2, length 70, NUL-padded ASCII IP).
pub fn parse_discovery_response(buf: &[u8]) -> Result<Discovered, PacketError> {
    if buf.len() < DISCOVERY_LEN {
        return Err(PacketError::Truncated {
            need: DISCOVERY_LEN,
            have: buf.len(),
        });
    }
    let kind = u16::from_be_bytes([buf[0], buf[1]]);
    let length = u16::from_be_bytes([buf[2], buf[3]]);
    if kind != DISCOVERY_RESPONSE || length != 70 {
        return Err(PacketError::NotDiscovery { kind, length });
    }
    let ssrc = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]);
    let field = &buf[8..72];
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    let ip: IpAddr = std::str::from_utf8(&field[..end])
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or(PacketError::BadAddress)?;
    let port = u16::from_be_bytes([buf[72], buf[73]]);
    Ok(Discovered {
        ssrc,
        addr: SocketAddr::new(ip, port),
    })
}

/// The 8-byte keepalive: `counter` little-endian, then 4 zero bytes.
pub fn keepalive(counter: u32) -> [u8; KEEPALIVE_LEN] {
    let mut out = [0u8; KEEPALIVE_LEN];
    out[..4].copy_from_slice(&counter.to_le_bytes());
    out
}

/// The counter of an 8-byte keepalive (or its echo), if `buf` is one.
pub fn parse_keepalive(buf: &[u8]) -> Option<u32> {
    if buf.len() == KEEPALIVE_LEN && buf[4..] == [0; 4] {
        Some(u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]))
    } else {
        None
    }
}

/// A decrypted audio packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedPacket {
    /// Sender's SSRC.
    pub ssrc: u32,
    /// RTP sequence number.
    pub seq: u16,
    /// RTP timestamp.
    pub timestamp: u32,
    /// The Opus payload (extension body and padding removed).
    pub payload: Vec<u8>,
    /// The full header (marker, CSRCs, extension).
    pub header: RtpHeader,
}

/// Retry policy of [`VoiceUdp::discover`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiscoveryConfig {
    /// Requests sent before giving up. Default 5.
    pub attempts: u32,
    /// Wait for a response after each request. Default 1 s.
    pub wait: Duration,
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        DiscoveryConfig {
            attempts: 5,
            wait: Duration::from_secs(1),
        }
    }
}

/// A UDP socket connected to the server's voice port, with the RTP state of
/// one sender (SSRC, sequence, timestamp) and, once the session description
/// arrived, its cipher.
#[derive(Debug)]
pub struct VoiceUdp {
    socket: UdpSocket,
    server: SocketAddr,
    ssrc: u32,
    sequence: u16,
    timestamp: u32,
    cipher: Option<Cipher>,
    keepalive_counter: u32,
    last_keepalive_echo: Option<u32>,
}

impl VoiceUdp {
    /// Binds `127.0.0.1:0` (or `[::1]:0` for an IPv6 server) and connects
    /// to `server`.
    pub async fn bind(server: SocketAddr, ssrc: u32) -> Result<Self> {
        let local = match server {
            SocketAddr::V4(_) => SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            SocketAddr::V6(_) => SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, 0)),
        };
        Self::bind_from(local, server, ssrc).await
    }

    /// Binds `local` and connects to `server` (a load generator spreads
    /// clients over addresses this way).
    pub async fn bind_from(local: SocketAddr, server: SocketAddr, ssrc: u32) -> Result<Self> {
        let socket = UdpSocket::bind(local).await?;
        Self::connected(socket, server, ssrc).await
    }

    /// [`bind_from`](Self::bind_from) with `SO_REUSEADDR`, so that `local`
    /// can share its port with a socket bound to the wildcard address.
    pub async fn bind_reusing(local: SocketAddr, server: SocketAddr, ssrc: u32) -> Result<Self> {
        use nix::sys::socket::{self as sock, sockopt, AddressFamily, SockFlag, SockType};
        let family = match local {
            SocketAddr::V4(_) => AddressFamily::Inet,
            SocketAddr::V6(_) => AddressFamily::Inet6,
        };
        let flags = SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC;
        let fd = sock::socket(family, SockType::Datagram, flags, None).map_err(io::Error::from)?;
        sock::setsockopt(&fd, sockopt::ReuseAddr, &true).map_err(io::Error::from)?;
        let std_socket = std::net::UdpSocket::from(fd);
        let addr = sock::SockaddrStorage::from(local);
        sock::bind(std::os::fd::AsRawFd::as_raw_fd(&std_socket), &addr).map_err(io::Error::from)?;
        Self::connected(UdpSocket::from_std(std_socket)?, server, ssrc).await
    }

    async fn connected(socket: UdpSocket, server: SocketAddr, ssrc: u32) -> Result<Self> {
        socket.connect(server).await?;
        Ok(VoiceUdp {
            socket,
            server,
            ssrc,
            sequence: 0,
            timestamp: 0,
            cipher: None,
            keepalive_counter: 0,
            last_keepalive_echo: None,
        })
    }

    /// Our local address.
    pub fn local_addr(&self) -> Result<SocketAddr> {
        Ok(self.socket.local_addr()?)
    }

    /// The server address this socket is connected to.
    pub fn server_addr(&self) -> SocketAddr {
        self.server
    }

    /// Our SSRC.
    pub fn ssrc(&self) -> u32 {
        self.ssrc
    }

    /// The underlying socket, for callers that want to drive it directly.
    pub fn socket(&self) -> &UdpSocket {
        &self.socket
    }

    /// Installs the session's mode and key (from Session Description); the
    /// outgoing counter starts at `counter_start`.
    pub fn set_session(&mut self, mode: Mode, key: &[u8], counter_start: u32) -> Result<()> {
        self.cipher = Some(Cipher::new(mode, key)?.with_counter(counter_start));
        Ok(())
    }

    /// The cipher, once [`set_session`](Self::set_session) ran.
    pub fn cipher(&self) -> Option<&Cipher> {
        self.cipher.as_ref()
    }

    /// Sets the sequence number and timestamp of the next packet.
    pub fn set_rtp_state(&mut self, sequence: u16, timestamp: u32) {
        self.sequence = sequence;
        self.timestamp = timestamp;
    }

    /// IP discovery with the default retry policy.
    pub async fn discover(&self) -> Result<SocketAddr> {
        self.discover_with(DiscoveryConfig::default()).await
    }

    /// IP discovery: sends the request up to `config.attempts` times and
    /// returns the address from the first response for our SSRC. Other
    /// datagrams arriving meanwhile are dropped.
    pub async fn discover_with(&self, config: DiscoveryConfig) -> Result<SocketAddr> {
        let request = discovery_request(self.ssrc);
        let mut buf = [0u8; MAX_DATAGRAM];
        for _ in 0..config.attempts {
            self.socket.send(&request).await?;
            let deadline = tokio::time::Instant::now() + config.wait;
            loop {
                let n = match tokio::time::timeout_at(deadline, self.socket.recv(&mut buf)).await {
                    Err(_) => break,
                    Ok(r) => r?,
                };
                if let Ok(d) = parse_discovery_response(&buf[..n]) {
                    if d.ssrc == self.ssrc {
                        return Ok(d.addr);
                    }
                }
            }
        }
        Err(ClientError::Timeout("IP discovery response"))
    }

    /// Sends the next keepalive and returns its counter.
    pub async fn keepalive(&mut self) -> Result<u32> {
        let counter = self.keepalive_counter;
        self.keepalive_counter = self.keepalive_counter.wrapping_add(1);
        self.socket.send(&keepalive(counter)).await?;
        Ok(counter)
    }

    /// The counter of the last keepalive echo [`recv`](Self::recv) (or
    /// [`keepalive_echo`](Self::keepalive_echo)) saw.
    pub fn last_keepalive_echo(&self) -> Option<u32> {
        self.last_keepalive_echo
    }

    /// Waits up to `wait` for a keepalive echo and returns its counter;
    /// other datagrams are dropped.
    pub async fn keepalive_echo(&mut self, wait: Duration) -> Result<u32> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut buf = [0u8; MAX_DATAGRAM];
        loop {
            let n = tokio::time::timeout_at(deadline, self.socket.recv(&mut buf))
                .await
                .map_err(|_| ClientError::Timeout("keepalive echo"))??;
            if let Some(c) = parse_keepalive(&buf[..n]) {
                self.last_keepalive_echo = Some(c);
                return Ok(c);
            }
        }
    }

    /// Encrypts and sends one Opus frame, then advances the sequence by 1
    /// and the timestamp by 960.
    pub async fn send_opus(&mut self, payload: &[u8]) -> Result<()> {
        let header = RtpHeader::opus(self.sequence, self.timestamp, self.ssrc);
        self.send_rtp(&header, payload).await?;
        self.sequence = self.sequence.wrapping_add(1);
        self.timestamp = self.timestamp.wrapping_add(SAMPLES_PER_FRAME);
        Ok(())
    }

    /// Encrypts and sends a packet with a caller-built header (CSRCs,
    /// extension, another SSRC...). Does not touch the RTP state.
    pub async fn send_rtp(&mut self, header: &RtpHeader, payload: &[u8]) -> Result<()> {
        let wire = self.seal(header, payload)?;
        self.socket.send(&wire).await?;
        Ok(())
    }

    /// The datagram [`send_rtp`](Self::send_rtp) would send (advances the
    /// cipher counter).
    pub fn seal(&mut self, header: &RtpHeader, payload: &[u8]) -> Result<Vec<u8>> {
        let cipher = self
            .cipher
            .as_mut()
            .ok_or_else(|| ClientError::Protocol("no session key yet".into()))?;
        let mut plain = Vec::with_capacity(header.len() + payload.len());
        header.write(&mut plain);
        plain.extend_from_slice(payload);
        Ok(cipher.encrypt(&plain)?)
    }

    /// Sends `bytes` as they are.
    pub async fn send_raw(&self, bytes: &[u8]) -> Result<()> {
        self.socket.send(bytes).await?;
        Ok(())
    }

    /// Reads one datagram as it is.
    pub async fn recv_raw(&self) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        let n = self.socket.recv(&mut buf).await?;
        buf.truncate(n);
        Ok(buf)
    }

    /// Waits for the next audio packet and decrypts it with the session
    /// key. Keepalive echoes are recorded, discovery responses and RTCP
    /// skipped; a packet that fails to decrypt or parse is an error.
    pub async fn recv(&mut self) -> Result<ReceivedPacket> {
        let mut buf = [0u8; MAX_DATAGRAM];
        loop {
            let n = self.socket.recv(&mut buf).await?;
            let datagram = &buf[..n];
            if let Some(c) = parse_keepalive(datagram) {
                self.last_keepalive_echo = Some(c);
                continue;
            }
            if !looks_like_rtp(datagram) || Kind::of(datagram) == Kind::Rtcp {
                continue;
            }
            return self.open(datagram);
        }
    }

    /// [`recv`](Self::recv) with a time limit.
    pub async fn recv_timeout(&mut self, wait: Duration) -> Result<ReceivedPacket> {
        tokio::time::timeout(wait, self.recv())
            .await
            .map_err(|_| ClientError::Timeout("voice packet"))?
    }

    /// Decrypts and parses one audio datagram.
    pub fn open(&self, datagram: &[u8]) -> Result<ReceivedPacket> {
        let cipher = self
            .cipher
            .as_ref()
            .ok_or_else(|| ClientError::Protocol("no session key yet".into()))?;
        let plain = cipher.decrypt(datagram)?;
        let packet = RtpPacket::parse(&plain)?;
        Ok(ReceivedPacket {
            ssrc: packet.header.ssrc,
            seq: packet.header.sequence,
            timestamp: packet.header.timestamp,
            payload: packet.payload,
            header: packet.header,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REQUEST_HEX: &str = concat!(
        "00010046",
        "00abcdef",
        "0000000000000000000000000000000000000000000000000000000000000000",
        "0000000000000000000000000000000000000000000000000000000000000000",
        "0000"
    );
    // "127.0.0.1" NUL-padded, port 50004 (0xc354).
    const RESPONSE_HEX: &str = concat!(
        "00020046",
        "00abcdef",
        "3132372e302e302e310000000000000000000000000000000000000000000000",
        "0000000000000000000000000000000000000000000000000000000000000000",
        "c354"
    );

    #[test]
    fn discovery_wire_format() {
        assert_eq!(hex::encode(discovery_request(0xabcdef)), REQUEST_HEX);
        let addr: SocketAddr = "127.0.0.1:50004".parse().expect("addr");
        assert_eq!(
            hex::encode(discovery_response(0xabcdef, addr)),
            RESPONSE_HEX
        );
        let bytes = hex::decode(RESPONSE_HEX).expect("hex");
        assert_eq!(
            parse_discovery_response(&bytes),
            Ok(Discovered {
                ssrc: 0xabcdef,
                addr
            })
        );
    }

    #[test]
    fn discovery_malformed() {
        let good = hex::decode(RESPONSE_HEX).expect("hex");
        for n in 0..good.len() {
            assert!(parse_discovery_response(&good[..n]).is_err());
        }
        // A request is not a response.
        assert!(matches!(
            parse_discovery_response(&discovery_request(1)),
            Err(PacketError::NotDiscovery { kind: 1, .. })
        ));
        let mut bad_ip = good.clone();
        bad_ip[8] = b'x';
        assert_eq!(
            parse_discovery_response(&bad_ip),
            Err(PacketError::BadAddress)
        );
        let mut no_nul = good;
        no_nul[8..72].fill(b'1');
        assert_eq!(
            parse_discovery_response(&no_nul),
            Err(PacketError::BadAddress)
        );
        let v6: SocketAddr = "[::1]:9".parse().expect("addr");
        assert_eq!(
            parse_discovery_response(&discovery_response(3, v6)).map(|d| d.addr),
            Ok(v6)
        );
    }

    #[test]
    fn keepalive_wire_format() {
        assert_eq!(hex::encode(keepalive(0x0102_0304)), "0403020100000000");
        assert_eq!(parse_keepalive(&keepalive(77)), Some(77));
        assert_eq!(parse_keepalive(&[1, 0, 0, 0, 0, 0, 0, 1]), None);
        assert_eq!(parse_keepalive(&[0; 7]), None);
    }

    /// A UDP peer on 127.0.0.1 playing the server: answers discovery
    /// (after dropping the first request), echoes keepalives, and echoes
    /// audio back after re-sealing it from a different SSRC.
    async fn responder(key: [u8; 32]) -> (SocketAddr, tokio::task::JoinHandle<()>) {
        let sock = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let addr = sock.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            let mut dropped_first = false;
            let mut buf = [0u8; 2048];
            let mut cipher = Cipher::new(Mode::Aes256GcmRtpSize, &key)
                .expect("key")
                .with_counter(9);
            while let Ok((n, from)) = sock.recv_from(&mut buf).await {
                let d = &buf[..n];
                if n == DISCOVERY_LEN && d[..2] == [0, 1] {
                    if !dropped_first {
                        dropped_first = true;
                        continue;
                    }
                    let ssrc = u32::from_be_bytes([d[4], d[5], d[6], d[7]]);
                    let _ = sock.send_to(&discovery_response(ssrc, from), from).await;
                } else if parse_keepalive(d).is_some() {
                    let _ = sock.send_to(d, from).await;
                } else if let Ok(plain) = cipher.decrypt(d) {
                    let mut p = RtpPacket::parse(&plain).expect("rtp");
                    p.header.ssrc = 4242;
                    let wire = cipher.encrypt(&p.to_bytes()).expect("seal");
                    let _ = sock.send_to(&[0x81, 0xc9, 0, 1], from).await; // RTCP: skipped
                    let _ = sock.send_to(&wire, from).await;
                }
            }
        });
        (addr, task)
    }

    #[tokio::test]
    async fn discovery_keepalive_and_audio_over_real_sockets() {
        let key = [3u8; 32];
        let (server, task) = responder(key).await;
        let mut udp = VoiceUdp::bind(server, 0xabcdef).await.expect("bind");
        let found = udp
            .discover_with(DiscoveryConfig {
                attempts: 3,
                wait: Duration::from_millis(200),
            })
            .await
            .expect("discovery");
        assert_eq!(found, udp.local_addr().expect("local"));

        assert_eq!(udp.keepalive().await.expect("send"), 0);
        assert_eq!(
            udp.keepalive_echo(Duration::from_secs(2))
                .await
                .expect("echo"),
            0
        );

        assert!(udp.send_opus(b"x").await.is_err(), "no key yet");
        udp.set_session(Mode::Aes256GcmRtpSize, &key, 0)
            .expect("key");
        udp.set_rtp_state(10, 9600);
        udp.send_opus(b"hello").await.expect("send");
        udp.send_opus(b"world").await.expect("send");
        let a = udp.recv_timeout(Duration::from_secs(2)).await.expect("a");
        let b = udp.recv_timeout(Duration::from_secs(2)).await.expect("b");
        assert_eq!((a.ssrc, a.seq, a.timestamp), (4242, 10, 9600));
        assert_eq!(a.payload, b"hello");
        assert_eq!(
            (b.seq, b.timestamp, &b.payload[..]),
            (11, 10560, &b"world"[..])
        );

        // A keepalive echo arriving while waiting for audio is recorded.
        udp.keepalive().await.expect("send");
        udp.send_opus(b"!").await.expect("send");
        udp.recv_timeout(Duration::from_secs(2)).await.expect("c");
        assert_eq!(udp.last_keepalive_echo(), Some(1));
        assert!(matches!(
            udp.recv_timeout(Duration::from_millis(50)).await,
            Err(ClientError::Timeout(_))
        ));
        task.abort();
    }

    #[tokio::test]
    async fn discovery_times_out() {
        let silent = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let udp = VoiceUdp::bind(silent.local_addr().expect("addr"), 1)
            .await
            .expect("bind");
        let r = udp
            .discover_with(DiscoveryConfig {
                attempts: 2,
                wait: Duration::from_millis(30),
            })
            .await;
        assert!(matches!(r, Err(ClientError::Timeout(_))));
        let mut buf = [0u8; 100];
        let (n, _) = silent.recv_from(&mut buf).await.expect("request");
        assert_eq!(&buf[..n], &discovery_request(1)[..]);
    }
}
