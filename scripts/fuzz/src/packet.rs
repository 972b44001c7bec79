//! The datagram classifier and the IP discovery reply.
//!
//! Holds for every datagram: classifying never panics and gives the same
//! answer twice; a discovery request is 74 bytes, type 1, length 70, and
//! names the SSRC at bytes 4..8; a keepalive is exactly the documented
//! format (8 bytes, the last 4 zero) and every datagram of that format is
//! one; media is RTP version 2 with its SSRC where its kind puts it
//! (bytes 8..12 for RTP, 4..8 for RTCP), RTCP exactly when the second
//! byte is an RTCP type (192-223, RFC 5761), RTP long enough for its CSRCs
//! and extension preamble. The discovery reply to any address is 74
//! bytes, type 2, length 70, the SSRC, the address (IPv4-mapped ones as
//! IPv4) as NUL-terminated text that parses back to it, and the port.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use dataplane::packet::{self, Datagram, Kind, DISCOVERY_LEN, KEEPALIVE_LEN, RTCP_TYPES};
use protocol::rtp;

/// One input: a received datagram.
pub fn run(data: &[u8]) {
    let class = packet::classify(data);
    assert_eq!(class, packet::classify(data), "deterministic");
    let keepalive = data.len() == KEEPALIVE_LEN && data[4..] == [0; 4];
    assert_eq!(class == Datagram::Keepalive, keepalive, "keepalive format");
    match class {
        Datagram::Discovery { ssrc } => {
            assert_eq!(data.len(), DISCOVERY_LEN);
            assert_eq!(&data[..4], &[0, 1, 0, 70]);
            assert_eq!(ssrc, be32(&data[4..8]));
            // The request's own bytes make up an address to answer.
            let port = u16::from_be_bytes([data[72], data[73]]);
            let v6: [u8; 16] = data[8..24].try_into().expect("16 bytes");
            let v4 = Ipv4Addr::new(data[8], data[9], data[10], data[11]);
            let mapped = IpAddr::V6(v4.to_ipv6_mapped());
            for ip in [IpAddr::V4(v4), IpAddr::V6(Ipv6Addr::from(v6)), mapped] {
                check_reply(ssrc, SocketAddr::new(ip, port));
            }
        }
        Datagram::Media { kind, ssrc } => {
            assert_eq!(data[0] >> 6, 2, "RTP version 2");
            assert_eq!(kind == Kind::Rtcp, RTCP_TYPES.contains(&data[1]));
            let at = match kind {
                Kind::Rtp => {
                    assert!(rtp::rtpsize_header_len(data).is_ok(), "RTP header fits");
                    8
                }
                Kind::Rtcp => 4,
            };
            assert_eq!(ssrc, be32(&data[at..at + 4]));
        }
        Datagram::Keepalive | Datagram::Malformed => {}
    }
}

fn check_reply(ssrc: u32, addr: SocketAddr) {
    let mut out = [0xAA; DISCOVERY_LEN];
    packet::discovery_response(ssrc, addr, &mut out);
    assert_eq!(&out[..4], &[0, 2, 0, 70]);
    assert_eq!(be32(&out[4..8]), ssrc);
    let field = &out[8..72];
    let end = field.iter().position(|&b| b == 0).expect("NUL-terminated");
    assert!(field[end..].iter().all(|&b| b == 0), "zero-padded");
    let text = std::str::from_utf8(&field[..end]).expect("ASCII address");
    let ip: IpAddr = text.parse().expect("parses back");
    assert_eq!(ip, addr.ip().to_canonical());
    assert_eq!(u16::from_be_bytes([out[72], out[73]]), addr.port());
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes(b.try_into().expect("4 bytes"))
}
