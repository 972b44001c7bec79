//! The reuseport group: one UDP socket per core on the same address, and
//! the classic-BPF program that steers each datagram to the core owning its
//! SSRC.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, IntoRawFd};

use socket2::{Domain, Protocol, Socket, Type};

/// Socket buffer size asked for (best effort).
const BUFFER_BYTES: usize = 4 << 20;

/// Binds `cores` non-blocking UDP sockets to `addr` with SO_REUSEPORT, in
/// core order (socket `i` is reuseport index `i`), and attaches the SSRC
/// steering program when `cores > 1`. A port of 0 is resolved by the first
/// bind and reused for the rest.
pub fn bind_group(addr: SocketAddr, cores: u32) -> io::Result<Vec<UdpSocket>> {
    if cores == 0 {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "zero cores"));
    }
    let mut addr = addr;
    let mut sockets = Vec::with_capacity(cores as usize);
    for _ in 0..cores {
        let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        socket.set_reuse_port(true)?;
        socket.set_nonblocking(true)?;
        raise_buffers(&socket);
        socket.bind(&addr.into())?;
        if addr.port() == 0 {
            let bound = socket
                .local_addr()?
                .as_socket()
                .ok_or_else(|| io::Error::other("bound address is not an IP address"))?;
            addr.set_port(bound.port());
        }
        sockets.push(UdpSocket::from(socket));
    }
    if cores > 1 {
        attach_steering(&sockets[0], cores)?;
    }
    Ok(sockets)
}

/// Asks for bigger kernel buffers, first with the privileged *FORCE
/// options (we normally run as root), then the ordinary ones (capped by
/// `net.core.[rw]mem_max`). Failures are ignored: it is only a tuning.
fn raise_buffers(socket: &Socket) {
    let fd = socket.as_raw_fd();
    let val = BUFFER_BYTES as libc::c_int;
    for (force, plain) in [
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
    ] {
        if setsockopt_int(fd, libc::SOL_SOCKET, force, val).is_err() {
            let _ = setsockopt_int(fd, libc::SOL_SOCKET, plain, val);
        }
    }
}

fn setsockopt_int(
    fd: libc::c_int,
    level: libc::c_int,
    name: libc::c_int,
    val: libc::c_int,
) -> io::Result<()> {
    // SAFETY: `fd` is an open socket borrowed from its owner for the call;
    // the option value is a live c_int whose size we pass.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&val as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Classic BPF opcodes (linux/filter.h).
const BPF_LD_B_ABS: u16 = 0x30; // BPF_LD | BPF_B | BPF_ABS
const BPF_LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
const BPF_JSET_K: u16 = 0x45; // BPF_JMP | BPF_JSET | BPF_K
const BPF_JGE_K: u16 = 0x35; // BPF_JMP | BPF_JGE | BPF_K
const BPF_JGT_K: u16 = 0x25; // BPF_JMP | BPF_JGT | BPF_K
const BPF_JA: u16 = 0x05; // BPF_JMP | BPF_JA
const BPF_MOD_K: u16 = 0x94; // BPF_ALU | BPF_MOD | BPF_K
const BPF_RET_A: u16 = 0x16; // BPF_RET | BPF_A

fn insn(code: u16, jt: u8, jf: u8, k: u32) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// The steering program. Offset 0 is the first byte of the UDP payload.
///
/// ```text
/// 0: ldb [0]                  first byte
/// 1: jset #0x80, 2, 7         RTP version bit? else discovery (0x00..) → [4]
/// 2: ldb [1]                  payload type byte
/// 3: jge #200, 4, 5           below 200 → RTP
/// 4: jgt #204, 5, 7           200..=204 → RTCP → [4]
/// 5: ld [8]                   RTP SSRC
/// 6: ja 8
/// 7: ld [4]                   RTCP / discovery SSRC
/// 8: mod #cores
/// 9: ret a
/// ```
///
/// A load beyond the datagram ends the program with 0 (core 0), which is
/// fine: such a datagram is malformed and core 0 counts it.
pub fn steering_program(cores: u32) -> [libc::sock_filter; 10] {
    [
        insn(BPF_LD_B_ABS, 0, 0, 0),
        insn(BPF_JSET_K, 0, 5, 0x80),
        insn(BPF_LD_B_ABS, 0, 0, 1),
        insn(BPF_JGE_K, 0, 1, 200),
        insn(BPF_JGT_K, 0, 2, 204),
        insn(BPF_LD_W_ABS, 0, 0, 8),
        insn(BPF_JA, 0, 0, 1),
        insn(BPF_LD_W_ABS, 0, 0, 4),
        insn(BPF_MOD_K, 0, 0, cores),
        insn(BPF_RET_A, 0, 0, 0),
    ]
}

fn attach_steering(socket: &UdpSocket, cores: u32) -> io::Result<()> {
    let mut program = steering_program(cores);
    let fprog = libc::sock_fprog {
        len: program.len() as u16,
        filter: program.as_mut_ptr(),
    };
    // SAFETY: `fprog` points at `program`, which outlives the call (the
    // kernel copies the program); the option length is the struct's size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_REUSEPORT_CBPF,
            (&fprog as *const libc::sock_fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        let e = io::Error::last_os_error();
        Err(io::Error::new(
            e.kind(),
            format!("SO_ATTACH_REUSEPORT_CBPF: {e}"),
        ))
    }
}

/// Datagrams per `sendmmsg` call.
pub const BATCH: usize = 64;

/// Sends many datagrams with one `sendmmsg(2)`, from arrays allocated once.
pub struct BatchSender {
    addrs: Box<[libc::sockaddr_storage; BATCH]>,
    iovs: Box<[libc::iovec; BATCH]>,
    msgs: Box<[libc::mmsghdr; BATCH]>,
}

impl std::fmt::Debug for BatchSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BatchSender")
    }
}

impl Default for BatchSender {
    fn default() -> Self {
        Self::new()
    }
}

impl BatchSender {
    /// Allocates the message arrays.
    pub fn new() -> Self {
        // SAFETY: sockaddr_storage, iovec and mmsghdr are plain C structs
        // for which all-zero bytes (null pointers, zero lengths) are valid.
        let (addrs, iovs, msgs) = unsafe {
            (
                Box::new(std::mem::zeroed::<[libc::sockaddr_storage; BATCH]>()),
                Box::new(std::mem::zeroed::<[libc::iovec; BATCH]>()),
                Box::new(std::mem::zeroed::<[libc::mmsghdr; BATCH]>()),
            )
        };
        BatchSender { addrs, iovs, msgs }
    }

    /// Sends up to [`BATCH`] datagrams from `packets` on the non-blocking
    /// socket `fd` without waiting. Returns how many (a prefix) the kernel
    /// took; an error means the first one was not sent (`WouldBlock`: the
    /// send buffer is full, anything else: that datagram failed).
    pub fn send<'a>(
        &mut self,
        fd: std::os::fd::RawFd,
        packets: impl Iterator<Item = (SocketAddr, &'a [u8])>,
    ) -> io::Result<usize> {
        let mut n = 0;
        for (to, bytes) in packets.take(BATCH) {
            let addr = socket2::SockAddr::from(to);
            // SAFETY: `addr` holds `addr.len()` initialised bytes of a
            // sockaddr no larger than sockaddr_storage, and the target slot
            // is a distinct, writable sockaddr_storage.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    addr.as_ptr().cast::<u8>(),
                    (&mut self.addrs[n] as *mut libc::sockaddr_storage).cast::<u8>(),
                    addr.len() as usize,
                );
            }
            self.iovs[n] = libc::iovec {
                iov_base: bytes.as_ptr() as *mut libc::c_void,
                iov_len: bytes.len(),
            };
            let hdr = &mut self.msgs[n].msg_hdr;
            hdr.msg_name = (&mut self.addrs[n] as *mut libc::sockaddr_storage).cast();
            hdr.msg_namelen = addr.len();
            hdr.msg_iov = &mut self.iovs[n];
            hdr.msg_iovlen = 1;
            hdr.msg_control = std::ptr::null_mut();
            hdr.msg_controllen = 0;
            hdr.msg_flags = 0;
            n += 1;
        }
        if n == 0 {
            return Ok(0);
        }
        // SAFETY: the first `n` headers point at live addresses in
        // `self.addrs` and iovecs in `self.iovs`, whose buffers are borrowed
        // from `packets` for the whole call ('a outlives it); the kernel only
        // reads them (and writes msg_len inside `self.msgs`).
        let rc = unsafe {
            libc::sendmmsg(
                fd,
                self.msgs.as_mut_ptr(),
                n as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(rc as usize)
        }
    }
}

/// Datagrams per `recvmmsg` call.
pub const RX_BATCH: usize = 32;
/// Bytes of one receive buffer: one more than the largest datagram the
/// forwarder accepts, so a longer one is seen as such (not silently cut).
pub const RX_BUF: usize = crate::forward::SLOT_BYTES + 1;

/// Receives many datagrams with one `recvmmsg(2)` into buffers allocated
/// once.
pub struct BatchReceiver {
    bufs: Box<[[u8; RX_BUF]; RX_BATCH]>,
    addrs: Box<[libc::sockaddr_storage; RX_BATCH]>,
    iovs: Box<[libc::iovec; RX_BATCH]>,
    msgs: Box<[libc::mmsghdr; RX_BATCH]>,
    /// Datagrams the last call received.
    count: usize,
}

impl std::fmt::Debug for BatchReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchReceiver")
            .field("count", &self.count)
            .finish()
    }
}

impl Default for BatchReceiver {
    fn default() -> Self {
        Self::new()
    }
}

impl BatchReceiver {
    /// Allocates the buffers and message arrays.
    pub fn new() -> Self {
        // SAFETY: byte arrays, sockaddr_storage, iovec and mmsghdr are plain
        // C data for which all-zero bytes (null pointers, zero lengths) are
        // valid.
        let (bufs, addrs, iovs, msgs) = unsafe {
            (
                Box::new(std::mem::zeroed::<[[u8; RX_BUF]; RX_BATCH]>()),
                Box::new(std::mem::zeroed::<[libc::sockaddr_storage; RX_BATCH]>()),
                Box::new(std::mem::zeroed::<[libc::iovec; RX_BATCH]>()),
                Box::new(std::mem::zeroed::<[libc::mmsghdr; RX_BATCH]>()),
            )
        };
        BatchReceiver {
            bufs,
            addrs,
            iovs,
            msgs,
            count: 0,
        }
    }

    /// Takes up to [`RX_BATCH`] waiting datagrams from the socket `fd`
    /// without waiting; `WouldBlock` when none is there.
    pub fn recv(&mut self, fd: std::os::fd::RawFd) -> io::Result<usize> {
        self.count = 0;
        for i in 0..RX_BATCH {
            self.iovs[i] = libc::iovec {
                iov_base: self.bufs[i].as_mut_ptr().cast(),
                iov_len: RX_BUF,
            };
            let hdr = &mut self.msgs[i].msg_hdr;
            hdr.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_storage).cast();
            hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            hdr.msg_iov = &mut self.iovs[i];
            hdr.msg_iovlen = 1;
            hdr.msg_control = std::ptr::null_mut();
            hdr.msg_controllen = 0;
            hdr.msg_flags = 0;
            self.msgs[i].msg_len = 0;
        }
        // SAFETY: every header points at its own live sockaddr_storage (with
        // its full size as msg_namelen) and iovec, each iovec at its own
        // RX_BUF-byte buffer; all are owned by `self`, which the kernel
        // writes only during the call. No timeout pointer.
        let rc = unsafe {
            libc::recvmmsg(
                fd,
                self.msgs.as_mut_ptr(),
                RX_BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        self.count = rc as usize;
        Ok(self.count)
    }

    /// Datagram `i` of the last call: where it came from and its bytes
    /// (in place, to be decrypted there). None past the count or for an
    /// address family other than IPv4/IPv6.
    pub fn datagram(&mut self, i: usize) -> Option<(SocketAddr, &mut [u8])> {
        if i >= self.count {
            return None;
        }
        let len = (self.msgs[i].msg_len as usize).min(RX_BUF);
        let namelen = self.msgs[i].msg_hdr.msg_namelen;
        // SAFETY: the kernel wrote `namelen` bytes of a socket address into
        // this sockaddr_storage during the last call.
        let from = unsafe { socket2::SockAddr::new(self.addrs[i], namelen) }.as_socket()?;
        Some((from, &mut self.bufs[i][..len]))
    }
}

/// Hands a bound std socket to glommio (which links its own socket2).
pub fn into_glommio(socket: UdpSocket) -> glommio::net::UdpSocket {
    use std::os::fd::FromRawFd;
    let fd = socket.into_raw_fd();
    // SAFETY: `into_raw_fd` transfers sole ownership of an open UDP socket
    // descriptor; glommio takes it over and closes it on drop.
    unsafe { glommio::net::UdpSocket::from_raw_fd(fd) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny interpreter for the instructions the program uses, to check
    /// its logic without the kernel.
    fn run(prog: &[libc::sock_filter], pkt: &[u8]) -> u32 {
        let mut a: u32 = 0;
        let mut pc = 0;
        loop {
            let i = prog[pc];
            pc += 1;
            match i.code {
                BPF_LD_B_ABS => match pkt.get(i.k as usize) {
                    Some(b) => a = u32::from(*b),
                    None => return 0,
                },
                BPF_LD_W_ABS => match pkt.get(i.k as usize..i.k as usize + 4) {
                    Some(w) => a = u32::from_be_bytes(w.try_into().unwrap()),
                    None => return 0,
                },
                BPF_JSET_K => pc += usize::from(if a & i.k != 0 { i.jt } else { i.jf }),
                BPF_JGE_K => pc += usize::from(if a >= i.k { i.jt } else { i.jf }),
                BPF_JGT_K => pc += usize::from(if a > i.k { i.jt } else { i.jf }),
                BPF_JA => pc += i.k as usize,
                BPF_MOD_K => a %= i.k,
                BPF_RET_A => return a,
                c => panic!("unexpected opcode {c:#x}"),
            }
        }
    }

    #[test]
    fn program_reads_the_ssrc() {
        let p = steering_program(3);
        let mut rtp = [0u8; 20];
        rtp[0] = 0x80;
        rtp[1] = 0x78;
        rtp[8..12].copy_from_slice(&7u32.to_be_bytes());
        assert_eq!(run(&p, &rtp), 1);
        rtp[1] = 0xF8; // marker + PT 120 = 248, still RTP
        assert_eq!(run(&p, &rtp), 1);
        let mut rtcp = [0u8; 8];
        rtcp[0] = 0x81;
        rtcp[1] = 200;
        rtcp[4..8].copy_from_slice(&5u32.to_be_bytes());
        assert_eq!(run(&p, &rtcp), 2);
        rtcp[1] = 204;
        assert_eq!(run(&p, &rtcp), 2);
        let mut disc = [0u8; 74];
        disc[1] = 1;
        disc[3] = 70;
        disc[4..8].copy_from_slice(&0xFFFF_FFFFu32.to_be_bytes());
        assert_eq!(run(&p, &disc), 0xFFFF_FFFF % 3);
        assert_eq!(run(&p, &[0x80, 0x78]), 0, "short RTP goes to core 0");
    }

    #[test]
    fn batch_sender_sends_in_order() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_read_timeout(Some(std::time::Duration::from_secs(2)))
            .unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        tx.set_nonblocking(true).unwrap();
        let to = rx.local_addr().unwrap();
        let packets: Vec<Vec<u8>> = (0..3u8).map(|i| vec![i; 10 + usize::from(i)]).collect();
        let mut batch = BatchSender::new();
        let sent = batch
            .send(tx.as_raw_fd(), packets.iter().map(|p| (to, &p[..])))
            .unwrap();
        assert_eq!(sent, 3);
        let mut buf = [0u8; 64];
        for p in &packets {
            let (n, from) = rx.recv_from(&mut buf).unwrap();
            assert_eq!(&buf[..n], &p[..]);
            assert_eq!(from, tx.local_addr().unwrap());
        }
    }

    #[test]
    fn batch_receiver_takes_what_is_waiting() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = rx.local_addr().unwrap();
        let mut batch = BatchReceiver::new();
        assert_eq!(
            batch.recv(rx.as_raw_fd()).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        // More than one batch waiting, one of them longer than a buffer.
        let mut sent: Vec<Vec<u8>> = (0..RX_BATCH + 3).map(|i| vec![i as u8; 1 + i]).collect();
        sent[1] = vec![7; RX_BUF + 100];
        for p in &sent {
            tx.send_to(p, to).unwrap();
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
        let mut got = Vec::new();
        while let Ok(n) = batch.recv(rx.as_raw_fd()) {
            for i in 0..n {
                let (from, bytes) = batch.datagram(i).unwrap();
                assert_eq!(from, tx.local_addr().unwrap());
                got.push(bytes.to_vec());
            }
            assert!(batch.datagram(n).is_none());
        }
        assert_eq!(got.len(), sent.len());
        assert_eq!(got[1].len(), RX_BUF, "cut at the buffer, seen as too long");
        for (i, (g, s)) in got.iter().zip(&sent).enumerate() {
            if i != 1 {
                assert_eq!(g, s);
            }
        }
    }

    #[test]
    fn group_binds_one_port() {
        let group = bind_group("127.0.0.1:0".parse().unwrap(), 2).unwrap();
        let a = group[0].local_addr().unwrap();
        let b = group[1].local_addr().unwrap();
        assert_ne!(a.port(), 0);
        assert_eq!(a, b);
    }
}
