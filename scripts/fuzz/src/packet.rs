//! The datagram classifier and the IP discovery reply.
//!
//! Holds for every datagram: classifying never panics and gives the same
//! answer twice; a discovery request is 74 bytes and names the SSRC at
//! bytes 4..8; media is RTP version 2 with its SSRC where its kind puts it
//! (bytes 8..12 for RTP, 4..8 for RTCP). The discovery reply to any
//! address is 74 bytes, type 2, length 70, the SSRC, the address as
//! NUL-terminated text that parses back to it, and the port.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use dataplane::packet::{self, Datagram, Kind, DISCOVERY_LEN};

/// One input: a received datagram.
pub fn run(data: &[u8]) {
    let class = packet::classify(data);
    assert_eq!(class, packet::classify(data), "deterministic");
    match class {
        Datagram::Discovery { ssrc } => {
            assert_eq!(data.len(), DISCOVERY_LEN);
            assert_eq!(ssrc, be32(&data[4..8]));
            // The request's own bytes make up an address to answer.
            let port = u16::from_be_bytes([data[72], data[73]]);
            let v6: [u8; 16] = data[8..24].try_into().expect("16 bytes");
            let v4 = Ipv4Addr::new(data[8], data[9], data[10], data[11]);
            for ip in [IpAddr::V4(v4), IpAddr::V6(Ipv6Addr::from(v6))] {
                check_reply(ssrc, SocketAddr::new(ip, port));
            }
        }
        Datagram::Media { kind, ssrc } => {
            assert_eq!(data[0] >> 6, 2, "RTP version 2");
            let at = match kind {
                Kind::Rtp => 8,
                Kind::Rtcp => 4,
            };
            assert_eq!(ssrc, be32(&data[at..at + 4]));
        }
        // Keepalive, Malformed and whatever the classifier learns next.
        _ => {}
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
