//! `sendmmsg`/`recvmmsg` on one shared socket for many loopback clients:
//! each datagram names its own source address (`IP_PKTINFO`), so one
//! syscall sends for up to [`BATCH`] clients and one receives for all of
//! them. The only module of the crate allowed `unsafe`.
//!
//! The socket is bound to `0.0.0.0:port` with `IP_PKTINFO` on
//! ([`enable_pktinfo`]); client `i` is `127.x.y.z:port`. A datagram sent
//! with source `127.x.y.z` leaves from that address and the socket's port;
//! one addressed to any `127.x.y.z:port` arrives on the socket with its
//! destination in the control message.

#![allow(unsafe_code)]

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, BorrowedFd};

/// Datagrams one call sends or receives at most.
pub const BATCH: usize = 64;
/// Bytes of one receive buffer: a whole loopback datagram of this load.
pub const SLOT: usize = 2048;

/// Control-message room for one `in_pktinfo` (`CMSG_SPACE`), in `u64`s
/// so that it is aligned for `cmsghdr`.
const CONTROL_WORDS: usize = 4;
const _: () = assert!(CONTROL_WORDS * 8 >= size_of::<libc::cmsghdr>() + 16);

/// One datagram to send: from `src` (a loopback address of this host; the
/// port is the socket's) to `dst`.
#[derive(Debug, Clone, Copy)]
pub struct Out<'a> {
    /// Source address of the datagram.
    pub src: Ipv4Addr,
    /// Destination.
    pub dst: SocketAddrV4,
    /// The datagram.
    pub bytes: &'a [u8],
}

/// One datagram received into the slot of the same index.
#[derive(Debug, Clone, Copy)]
pub struct In {
    /// The address it was sent to (which client it is for).
    pub dst: Ipv4Addr,
    /// Who sent it.
    pub src: SocketAddrV4,
    /// Its length (at most [`SLOT`]; longer ones are truncated).
    pub len: usize,
}

impl Default for In {
    fn default() -> Self {
        In {
            dst: Ipv4Addr::UNSPECIFIED,
            src: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0),
            len: 0,
        }
    }
}

/// Turns on `IP_PKTINFO`, which [`recv`] needs to tell clients apart.
pub fn enable_pktinfo(socket: BorrowedFd<'_>) -> io::Result<()> {
    set_ip_option(socket, libc::IP_PKTINFO, 1)
}

/// Sends with the don't-fragment bit and no per-datagram IP ID
/// (`IP_PMTUDISC_PROBE`), as the data plane's sockets do: the baseline
/// relay gets the server's socket options, so that the comparison is of
/// the work done, not of the kernel's options.
pub fn dont_fragment(socket: BorrowedFd<'_>) -> io::Result<()> {
    set_ip_option(socket, libc::IP_MTU_DISCOVER, libc::IP_PMTUDISC_PROBE)
}

fn set_ip_option(
    socket: BorrowedFd<'_>,
    option: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: a valid socket and a c_int option value of the right size.
    let r = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            option,
            (&value as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn sockaddr(a: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*a.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

/// One call's message headers, addresses, control buffers and iovecs, on
/// the stack; the caller points them at each other just before the call.
struct Headers {
    hdrs: [libc::mmsghdr; BATCH],
    names: [libc::sockaddr_in; BATCH],
    control: [[u64; CONTROL_WORDS]; BATCH],
    iov: [libc::iovec; BATCH],
}

impl Headers {
    /// Points header `i` at its own address and iovec and at
    /// `control_len` bytes of its control buffer, and the iovec at `len`
    /// bytes from `base`; returns the header.
    fn link(
        &mut self,
        i: usize,
        base: *mut libc::c_void,
        len: usize,
        control_len: usize,
    ) -> &mut libc::msghdr {
        self.iov[i] = libc::iovec {
            iov_base: base,
            iov_len: len,
        };
        let h = &mut self.hdrs[i].msg_hdr;
        h.msg_name = (&mut self.names[i] as *mut libc::sockaddr_in).cast();
        h.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
        h.msg_iov = &mut self.iov[i];
        h.msg_iovlen = 1;
        h.msg_control = self.control[i].as_mut_ptr().cast();
        h.msg_controllen = control_len as _;
        h
    }

    fn new() -> Self {
        Headers {
            // SAFETY: all-zero is a valid value of these plain C structs.
            hdrs: unsafe { zeroed() },
            names: [sockaddr(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)); BATCH],
            control: [[0u64; CONTROL_WORDS]; BATCH],
            iov: [libc::iovec {
                iov_base: std::ptr::null_mut(),
                iov_len: 0,
            }; BATCH],
        }
    }
}

/// Sends up to [`BATCH`] of `msgs` in one `sendmmsg` without blocking.
/// Returns how many went (0 when the socket buffer is full).
pub fn send(socket: BorrowedFd<'_>, msgs: &[Out<'_>]) -> io::Result<usize> {
    let n = msgs.len().min(BATCH);
    if n == 0 {
        return Ok(0);
    }
    let mut headers = Headers::new();
    // SAFETY: CMSG_SPACE only computes a size.
    let control_len = unsafe { libc::CMSG_SPACE(size_of::<libc::in_pktinfo>() as u32) } as usize;
    for (i, m) in msgs[..n].iter().enumerate() {
        headers.names[i] = sockaddr(m.dst);
        // The kernel only reads through this pointer (sendmmsg).
        let bytes = m.bytes.as_ptr() as *mut libc::c_void;
        let h = headers.link(i, bytes, m.bytes.len(), control_len);
        // SAFETY: msg_control points at CONTROL_WORDS aligned words, room
        // for one cmsghdr and an in_pktinfo (checked above), so the first
        // header is inside it and its data fits.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(h);
            (*c).cmsg_level = libc::IPPROTO_IP;
            (*c).cmsg_type = libc::IP_PKTINFO;
            (*c).cmsg_len = libc::CMSG_LEN(size_of::<libc::in_pktinfo>() as u32) as _;
            let info = libc::in_pktinfo {
                ipi_ifindex: 0,
                ipi_spec_dst: libc::in_addr {
                    s_addr: u32::from(m.src).to_be(),
                },
                ipi_addr: libc::in_addr { s_addr: 0 },
            };
            std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<libc::in_pktinfo>(), info);
        }
    }
    // SAFETY: `headers.hdrs[..n]` point at names, iovecs and control
    // buffers in `headers`, which lives (unmoved) until the call returns,
    // and at datagrams borrowed from `msgs`.
    let r = unsafe {
        libc::sendmmsg(
            socket.as_raw_fd(),
            headers.hdrs.as_mut_ptr(),
            n as libc::c_uint,
            libc::MSG_DONTWAIT,
        )
    };
    if r >= 0 {
        return Ok(r as usize);
    }
    let e = io::Error::last_os_error();
    if e.kind() == io::ErrorKind::WouldBlock {
        Ok(0)
    } else {
        Err(e)
    }
}

/// Receives up to `min(BATCH, slots.len())` datagrams without blocking:
/// datagram `i` into `slots[i]`, described by `got[i]`. Returns how many
/// (0 when none is waiting).
pub fn recv(socket: BorrowedFd<'_>, slots: &mut [[u8; SLOT]], got: &mut [In]) -> io::Result<usize> {
    let n = slots.len().min(got.len()).min(BATCH);
    if n == 0 {
        return Ok(0);
    }
    let mut headers = Headers::new();
    for (i, slot) in slots[..n].iter_mut().enumerate() {
        headers.link(i, slot.as_mut_ptr().cast(), SLOT, CONTROL_WORDS * 8);
    }
    // SAFETY: `headers.hdrs[..n]` point at buffers in `headers` (unmoved)
    // and in `slots`, which live until the call returns, each as long as
    // it says.
    let r = unsafe {
        libc::recvmmsg(
            socket.as_raw_fd(),
            headers.hdrs.as_mut_ptr(),
            n as libc::c_uint,
            libc::MSG_DONTWAIT,
            std::ptr::null_mut(),
        )
    };
    if r < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::WouldBlock {
            Ok(0)
        } else {
            Err(e)
        };
    }
    let r = r as usize;
    for (i, (hdr, got)) in headers.hdrs.iter().zip(got.iter_mut()).take(r).enumerate() {
        let h = &hdr.msg_hdr;
        let mut dst = Ipv4Addr::UNSPECIFIED;
        // SAFETY: the kernel filled msg_control with msg_controllen bytes
        // of well-formed control messages; CMSG_FIRSTHDR/NXTHDR stay
        // inside them and an IP_PKTINFO message carries an in_pktinfo.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(h);
            while !c.is_null() {
                if (*c).cmsg_level == libc::IPPROTO_IP && (*c).cmsg_type == libc::IP_PKTINFO {
                    let info: libc::in_pktinfo =
                        std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                    dst = Ipv4Addr::from(u32::from_be(info.ipi_addr.s_addr));
                }
                c = libc::CMSG_NXTHDR(h, c);
            }
        }
        let name = &headers.names[i];
        *got = In {
            dst,
            src: SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(name.sin_addr.s_addr)),
                u16::from_be(name.sin_port),
            ),
            len: (hdr.msg_len as usize).min(SLOT),
        };
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use std::net::UdpSocket;
    use std::os::fd::AsFd;
    use std::time::{Duration, Instant};

    use super::*;

    /// Two "clients" on one shared socket talk to a plain socket: each
    /// datagram leaves from its own source address, and the answers come
    /// back told apart by their destination.
    #[test]
    fn one_socket_sends_and_receives_for_many_addresses() {
        let shared = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
        enable_pktinfo(shared.as_fd()).unwrap();
        let port = shared.local_addr().unwrap().port();
        let peer = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        peer.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let std::net::SocketAddr::V4(to) = peer.local_addr().unwrap() else {
            panic!("v4")
        };
        let a = Ipv4Addr::new(127, 1, 0, 1);
        let b = Ipv4Addr::new(127, 1, 0, 2);
        let msgs = [
            Out {
                src: a,
                dst: to,
                bytes: b"from a",
            },
            Out {
                src: b,
                dst: to,
                bytes: b"from b",
            },
        ];
        assert_eq!(send(shared.as_fd(), &msgs).unwrap(), 2);
        let mut buf = [0u8; 64];
        for (want, from) in [(&b"from a"[..], a), (&b"from b"[..], b)] {
            let (n, src) = peer.recv_from(&mut buf).unwrap();
            assert_eq!(&buf[..n], want);
            assert_eq!(src, std::net::SocketAddr::from((from, port)));
            peer.send_to(&buf[..n], src).unwrap();
        }
        let mut slots = vec![[0u8; SLOT]; 4];
        let mut got = [In::default(); 4];
        let mut seen = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(2);
        while seen.len() < 2 && Instant::now() < deadline {
            let n = recv(shared.as_fd(), &mut slots, &mut got).unwrap();
            for i in 0..n {
                assert_eq!(got[i].src, to);
                seen.push((got[i].dst, slots[i][..got[i].len].to_vec()));
            }
        }
        seen.sort();
        assert_eq!(seen, vec![(a, b"from a".to_vec()), (b, b"from b".to_vec())]);
        assert_eq!(recv(shared.as_fd(), &mut slots, &mut got).unwrap(), 0);
    }
}
