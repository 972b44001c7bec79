//! Classifying datagrams and building IP discovery replies. Sans-IO, no
//! allocation, and no input can make it panic.

use std::io::Write;
use std::net::SocketAddr;

use protocol::rtp;
/// RTP or RTCP, defined with the other wire facts in `protocol`.
pub use protocol::rtp::{Kind, RTCP_TYPES};

/// Length of an IP discovery request and response.
pub const DISCOVERY_LEN: usize = 74;
/// Length of the keepalive datagram clients send.
pub const KEEPALIVE_LEN: usize = 8;
const DISCOVERY_REQUEST: u16 = 0x0001;
const DISCOVERY_RESPONSE: u16 = 0x0002;
const DISCOVERY_BODY_LEN: u16 = 70;

/// What a datagram is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Datagram {
    /// An IP discovery request for `ssrc`.
    Discovery {
        /// The SSRC the client was given in Ready.
        ssrc: u32,
    },
    /// A keepalive in the documented format (8 bytes: a little-endian
    /// u32 counter, then 4 zero bytes), to echo back unchanged to a bound
    /// address.
    Keepalive,
    /// Encrypted RTP or RTCP from `ssrc`.
    Media {
        /// RTP or RTCP.
        kind: Kind,
        /// The sender's SSRC.
        ssrc: u32,
    },
    /// Nothing we speak.
    Malformed,
}

fn be16(p: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(p.get(at..at + 2)?.try_into().ok()?))
}

fn be32(p: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(p.get(at..at + 4)?.try_into().ok()?))
}

/// Classifies one received datagram.
pub fn classify(p: &[u8]) -> Datagram {
    classify_inner(p).unwrap_or(Datagram::Malformed)
}

fn classify_inner(p: &[u8]) -> Option<Datagram> {
    if p.len() == DISCOVERY_LEN && be16(p, 0)? == DISCOVERY_REQUEST {
        if be16(p, 2)? != DISCOVERY_BODY_LEN {
            return None;
        }
        return Some(Datagram::Discovery { ssrc: be32(p, 4)? });
    }
    if p.len() == KEEPALIVE_LEN {
        // Nothing else is 8 bytes long (sealed RTCP has at least a header
        // and a tag), and anything else 8 bytes long is not echoed.
        return (p[4..] == [0; 4]).then_some(Datagram::Keepalive);
    }
    let b0 = *p.first()?;
    if b0 >> 6 != 2 {
        return None;
    }
    match Kind::of(p) {
        Kind::Rtcp => Some(Datagram::Media {
            kind: Kind::Rtcp,
            ssrc: be32(p, 4)?,
        }),
        // Short of its CSRCs or extension preamble it cannot be opened.
        Kind::Rtp => {
            rtp::rtpsize_header_len(p).ok()?;
            Some(Datagram::Media {
                kind: Kind::Rtp,
                ssrc: be32(p, 8)?,
            })
        }
    }
}

/// The one form of an address the data plane compares and stores: an
/// IPv4-mapped IPv6 address (what a dual-stack socket reports for an IPv4
/// peer) becomes the IPv4 address it maps.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// Writes the IP discovery response for `ssrc` seen from `addr` into `out`.
pub fn discovery_response(ssrc: u32, addr: SocketAddr, out: &mut [u8; DISCOVERY_LEN]) {
    out.fill(0);
    out[0..2].copy_from_slice(&DISCOVERY_RESPONSE.to_be_bytes());
    out[2..4].copy_from_slice(&DISCOVERY_BODY_LEN.to_be_bytes());
    out[4..8].copy_from_slice(&ssrc.to_be_bytes());
    let ip = addr.ip().to_canonical();
    // The longest textual IPv6 address is 45 bytes, so it always fits the
    // 64-byte field with a NUL left over; a failed write would only
    // truncate it.
    let mut field = &mut out[8..8 + 63];
    let _ = write!(field, "{ip}");
    out[72..74].copy_from_slice(&addr.port().to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn discovery_request_and_response() {
        let mut req = vec![0u8; 74];
        req[..8].copy_from_slice(&hex("0001 0046 0000 0457"));
        assert_eq!(classify(&req), Datagram::Discovery { ssrc: 0x457 });
        let mut bad = req.clone();
        bad[3] = 71;
        assert_eq!(classify(&bad), Datagram::Malformed);
        assert_eq!(classify(&req[..73]), Datagram::Malformed);

        let mut out = [0xFFu8; DISCOVERY_LEN];
        discovery_response(0x457, "127.0.0.1:50004".parse().unwrap(), &mut out);
        assert_eq!(&out[..8], &hex("0002 0046 0000 0457")[..]);
        assert_eq!(&out[8..17], b"127.0.0.1");
        assert!(out[17..72].iter().all(|&b| b == 0));
        assert_eq!(&out[72..], &50004u16.to_be_bytes());

        discovery_response(1, "[::ffff:10.1.2.3]:9".parse().unwrap(), &mut out);
        assert_eq!(&out[8..16], b"10.1.2.3");
        discovery_response(1, "[2001:db8::1]:9".parse().unwrap(), &mut out);
        assert_eq!(&out[8..19], b"2001:db8::1");
    }

    #[test]
    fn rtp_rtcp_keepalive() {
        let rtp = hex("8078 0001 0000 03c0 0000 0457 aabb");
        assert_eq!(
            classify(&rtp),
            Datagram::Media {
                kind: Kind::Rtp,
                ssrc: 0x457
            }
        );
        // Exactly 8 bytes with 4 zero bytes last is a keepalive (sealed
        // RTCP is longer); other 8-byte datagrams are nothing.
        assert_eq!(classify(&hex("81c8 0006 0000 0000")), Datagram::Keepalive);
        assert_eq!(classify(&hex("81c8 0006 0000 0457")), Datagram::Malformed);
        assert_eq!(classify(&hex("ffff ffff 0000 0000")), Datagram::Keepalive);
        let rtcp = hex("81c8 0006 0000 0457 0000 0000");
        assert_eq!(
            classify(&rtcp),
            Datagram::Media {
                kind: Kind::Rtcp,
                ssrc: 0x457
            }
        );
        let rtcp_long = hex("81c9 0007 0000 0458 0102 0304");
        assert_eq!(
            classify(&rtcp_long),
            Datagram::Media {
                kind: Kind::Rtcp,
                ssrc: 0x458
            }
        );
        assert_eq!(classify(&hex("0100 0000 0000 0000")), Datagram::Keepalive);
        // RFC 5761: every RTCP type 192-223 is RTCP, NACK and PLI included,
        // with the sender SSRC at bytes 4..8.
        for pt in [192, 200, 204, 205, 206, 223] {
            let mut p = hex("8100 0003 0000 0459 0000 0001 0000 0002");
            p[1] = pt;
            assert_eq!(
                classify(&p),
                Datagram::Media {
                    kind: Kind::Rtcp,
                    ssrc: 0x459
                },
                "type {pt}"
            );
        }
        // 224 and up, and below 192: RTP (marker bit + payload type).
        for pt in [0x78, 191, 224, 0xF8] {
            let mut p = hex("8000 0001 0000 03c0 0000 0457 aabb");
            p[1] = pt;
            assert!(
                matches!(
                    classify(&p),
                    Datagram::Media {
                        kind: Kind::Rtp,
                        ssrc: 0x457
                    }
                ),
                "type {pt}"
            );
        }
        // two CSRCs claimed, none present
        assert_eq!(
            classify(&hex("8278 0001 0000 03c0 0000 0457 aabb")),
            Datagram::Malformed
        );
        // version 1
        assert_eq!(
            classify(&hex("4078 0001 0000 03c0 0000 0457 aabb")),
            Datagram::Malformed
        );
        assert_eq!(classify(&[]), Datagram::Malformed);
        assert_eq!(classify(&hex("80")), Datagram::Malformed);
    }

    #[test]
    fn mapped_addresses_compare_equal() {
        let v4: SocketAddr = "10.1.2.3:9".parse().unwrap();
        let mapped: SocketAddr = "[::ffff:10.1.2.3]:9".parse().unwrap();
        assert_ne!(v4, mapped);
        assert_eq!(canonical(mapped), v4);
        assert_eq!(canonical(v4), v4);
        let v6: SocketAddr = "[2001:db8::1]:9".parse().unwrap();
        assert_eq!(canonical(v6), v6);
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x5EED);
        let mut buf = [0u8; 200];
        for round in 0..20_000 {
            let len = round % 200;
            rng.fill(&mut buf[..len]);
            if round % 3 == 0 && len > 0 {
                buf[0] = 0x80 | (buf[0] & 0x3F); // bias towards RTP/RTCP
            }
            let _ = classify(&buf[..len]);
        }
    }
}
