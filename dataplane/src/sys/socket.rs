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
/// steering program when `cores > 1`.
///
/// The address must be free: Linux lets a SO_REUSEPORT socket join any
/// group of the same user on its port, and even hands a reuseport bind to
/// port 0 a port such a group already uses, so two servers (or a restart
/// racing another process) would silently share each other's traffic. A
/// plain bind first (which conflicts with every socket on the port) finds
/// a free port for port 0 and refuses a port in use (`AddrInUse`); the
/// group is bound to that port right after.
pub fn bind_group(addr: SocketAddr, cores: u32) -> io::Result<Vec<UdpSocket>> {
    if cores == 0 {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "zero cores"));
    }
    let addr = UdpSocket::bind(addr)?.local_addr()?;
    let mut sockets = Vec::with_capacity(cores as usize);
    for _ in 0..cores {
        let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        socket.set_reuse_port(true)?;
        socket.set_nonblocking(true)?;
        raise_buffers(&socket);
        dont_fragment(socket.as_raw_fd(), addr.is_ipv6());
        socket.bind(&addr.into())?;
        sockets.push(UdpSocket::from(socket));
    }
    if cores > 1 {
        attach_steering(&sockets[0], cores)?;
    }
    Ok(sockets)
}

/// Takes over the reuseport group control bound and handed down as the
/// inherited descriptors `fds` (socket `i` for core `i`), so that a
/// restarted dataplane serves the very sockets (and port) the last one did:
/// the port is never free for another process to take between two
/// dataplanes, and datagrams that arrived meanwhile wait in the sockets.
/// Each descriptor must be an open datagram socket, all bound to one
/// address, none given twice.
pub fn adopt_group(fds: &[std::os::fd::RawFd], cores: u32) -> io::Result<Vec<UdpSocket>> {
    use std::os::fd::FromRawFd;
    let invalid = |what: String| io::Error::new(io::ErrorKind::InvalidInput, what);
    if fds.len() != cores as usize {
        return Err(invalid(format!("{} sockets for {cores} cores", fds.len())));
    }
    for (i, fd) in fds.iter().enumerate() {
        if fds[..i].contains(fd) {
            return Err(invalid(format!("descriptor {fd} given twice")));
        }
        let mut kind: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: `kind` is a writable c_int of the size passed; an fd
        // that is not open or not a socket makes the call fail, nothing
        // else.
        let rc = unsafe {
            libc::getsockopt(
                *fd,
                libc::SOL_SOCKET,
                libc::SO_TYPE,
                (&mut kind as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        if rc != 0 || kind != libc::SOCK_DGRAM {
            return Err(invalid(format!("descriptor {fd} is not a datagram socket")));
        }
    }
    let sockets: Vec<UdpSocket> = fds
        .iter()
        // SAFETY: each descriptor is open and a datagram socket (checked
        // above), given once, and inherited for this process alone to own:
        // nothing else in the process knows these numbers.
        .map(|fd| unsafe { UdpSocket::from_raw_fd(*fd) })
        .collect();
    let local = sockets[0].local_addr()?;
    for s in &sockets {
        s.set_nonblocking(true)?;
        dont_fragment(s.as_raw_fd(), local.is_ipv6());
        if s.local_addr()? != local {
            return Err(invalid(
                "the sockets are bound to different addresses".into(),
            ));
        }
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

/// Sends every datagram with the don't-fragment bit, sized by the
/// interface MTU rather than a path MTU learnt from ICMP
/// (`IP_PMTUDISC_PROBE`): media is never fragmented (a lost fragment loses
/// the packet; reassembly is a resource others can exhaust), a forged
/// "fragmentation needed" cannot shrink what we send, and the kernel
/// skips choosing an IP ID for each datagram (RFC 6864: atomic datagrams
/// need none), a few percent of a core under load. Failures are ignored:
/// it is only a tuning.
fn dont_fragment(fd: libc::c_int, v6: bool) {
    let _ = setsockopt_int(
        fd,
        libc::IPPROTO_IP,
        libc::IP_MTU_DISCOVER,
        libc::IP_PMTUDISC_PROBE,
    );
    if v6 {
        let _ = setsockopt_int(
            fd,
            libc::IPPROTO_IPV6,
            libc::IPV6_MTU_DISCOVER,
            libc::IPV6_PMTUDISC_PROBE,
        );
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
const BPF_LD_W_LEN: u16 = 0x80; // BPF_LD | BPF_W | BPF_LEN
const BPF_LD_B_ABS: u16 = 0x30; // BPF_LD | BPF_B | BPF_ABS
const BPF_LD_H_ABS: u16 = 0x28; // BPF_LD | BPF_H | BPF_ABS
const BPF_LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
const BPF_JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
const BPF_JSET_K: u16 = 0x45; // BPF_JMP | BPF_JSET | BPF_K
const BPF_JGE_K: u16 = 0x35; // BPF_JMP | BPF_JGE | BPF_K
const BPF_JGT_K: u16 = 0x25; // BPF_JMP | BPF_JGT | BPF_K
const BPF_JA: u16 = 0x05; // BPF_JMP | BPF_JA
const BPF_MOD_K: u16 = 0x94; // BPF_ALU | BPF_MOD | BPF_K
const BPF_RET_A: u16 = 0x16; // BPF_RET | BPF_A
const BPF_RET_K: u16 = 0x06; // BPF_RET | BPF_K

/// What the program returns for datagrams without an SSRC: an index past
/// the group, which makes the kernel fall back to its 4-tuple hash, so
/// such datagrams spread over the cores (each source still lands on one
/// core) instead of all landing on core 0.
pub const STEER_BY_HASH: u32 = u32::MAX;

fn insn(code: u16, jt: u8, jf: u8, k: u32) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// The steering program. Offset 0 is the first byte of the UDP payload.
/// It reads only bytes the length check before it guarantees, and picks
/// the core from the SSRC exactly where `packet::classify` finds it:
///
/// ```text
///  0: ld len
///  1: jgt #8, 2, 18           8 bytes or fewer (keepalives, junk) → hash
///  2: ldb [0]
///  3: jset #0x80, 8, 4        RTP version bit set → 8, else discovery?
///  4: ld len
///  5: jeq #74, 6, 18          discovery is exactly 74 bytes
///  6: ldh [0]
///  7: jeq #1, 15, 18          type 0x0001 → SSRC at [4], else hash
///  8: ldb [1]
///  9: jge #192, 10, 11
/// 10: jgt #223, 11, 15        192..=223: RTCP (RFC 5761) → SSRC at [4]
/// 11: ld len
/// 12: jge #12, 13, 18         RTP shorter than its header → hash
/// 13: ld [8]                  RTP SSRC
/// 14: ja 16
/// 15: ld [4]                  RTCP / discovery SSRC
/// 16: mod #cores
/// 17: ret a
/// 18: ret #STEER_BY_HASH
/// ```
pub fn steering_program(cores: u32) -> [libc::sock_filter; 19] {
    [
        insn(BPF_LD_W_LEN, 0, 0, 0),
        insn(BPF_JGT_K, 0, 16, 8),
        insn(BPF_LD_B_ABS, 0, 0, 0),
        insn(BPF_JSET_K, 4, 0, 0x80),
        insn(BPF_LD_W_LEN, 0, 0, 0),
        insn(BPF_JEQ_K, 0, 12, 74),
        insn(BPF_LD_H_ABS, 0, 0, 0),
        insn(BPF_JEQ_K, 7, 10, 1),
        insn(BPF_LD_B_ABS, 0, 0, 1),
        insn(
            BPF_JGE_K,
            0,
            1,
            u32::from(*crate::packet::RTCP_TYPES.start()),
        ),
        insn(BPF_JGT_K, 0, 4, u32::from(*crate::packet::RTCP_TYPES.end())),
        insn(BPF_LD_W_LEN, 0, 0, 0),
        insn(BPF_JGE_K, 0, 5, 12),
        insn(BPF_LD_W_ABS, 0, 0, 8),
        insn(BPF_JA, 0, 0, 1),
        insn(BPF_LD_W_ABS, 0, 0, 4),
        insn(BPF_MOD_K, 0, 0, cores),
        insn(BPF_RET_A, 0, 0, 0),
        insn(BPF_RET_K, 0, 0, STEER_BY_HASH),
    ]
}

/// `SO_MEMINFO` (asm-generic/socket.h) and the index of the drop count in
/// its answer (linux/sock_diag.h `SK_MEMINFO_DROPS`).
const SO_MEMINFO: libc::c_int = 55;
const SK_MEMINFO_VARS: usize = 9;

/// Makes the socket `fd` blocking, with receives that give up after
/// `timeout` (`SO_RCVTIMEO`): a receive that is asked to wait then sleeps
/// in the socket itself, one system call per wake-up. Every other call on
/// it passes `MSG_DONTWAIT`. (The flag belongs to the open file, which
/// control keeps a copy of only to hand to the next data plane, after
/// this one is gone.)
pub fn block_for(fd: std::os::fd::RawFd, timeout: std::time::Duration) -> io::Result<()> {
    let tv = libc::timeval {
        tv_sec: libc::time_t::try_from(timeout.as_secs()).unwrap_or(libc::time_t::MAX),
        // At least a microsecond: zero would mean "never time out".
        tv_usec: libc::suseconds_t::from(timeout.subsec_micros().max(1)),
    };
    // SAFETY: `fd` is an open socket borrowed for the calls; `tv` is a
    // valid timeval whose size we pass.
    unsafe {
        if libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        ) != 0
        {
            return Err(io::Error::last_os_error());
        }
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Datagrams the kernel dropped on this socket because its receive buffer
/// was full (a wrapping 32-bit count since the socket was created).
pub fn receive_drops(fd: std::os::fd::RawFd) -> io::Result<u32> {
    let mut info = [0u32; SK_MEMINFO_VARS];
    let mut len = std::mem::size_of_val(&info) as libc::socklen_t;
    // SAFETY: `fd` is an open socket borrowed for the call; `info` is
    // writable for `len` bytes and the kernel writes at most that.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            SO_MEMINFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    if (len as usize) < std::mem::size_of_val(&info) {
        return Err(io::Error::other("SO_MEMINFO: no drop count"));
    }
    Ok(info[libc::SK_MEMINFO_DROPS as usize])
}

/// `to` in the form a socket of this family sends to: an IPv6 socket
/// reaches IPv4 peers at their IPv4-mapped address (the data plane stores
/// the plain IPv4 form, see `packet::canonical`).
pub fn for_family(to: SocketAddr, v6_socket: bool) -> SocketAddr {
    match to {
        SocketAddr::V4(v4) if v6_socket => {
            SocketAddr::new(v4.ip().to_ipv6_mapped().into(), v4.port())
        }
        other => other,
    }
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
    /// socket `fd` (an IPv6 socket when `v6_socket`) without waiting.
    /// Returns how many (a prefix) the kernel took; an error means the
    /// first one was not sent (`WouldBlock`: the send buffer is full,
    /// anything else: that datagram failed).
    pub fn send<'a>(
        &mut self,
        fd: std::os::fd::RawFd,
        packets: impl Iterator<Item = (SocketAddr, &'a [u8])>,
        v6_socket: bool,
    ) -> io::Result<usize> {
        let n = self.prepare(packets, v6_socket);
        if n == 0 {
            return Ok(0);
        }
        // SAFETY: `prepare` made the first `n` headers point at live
        // addresses in `self.addrs` and iovecs in `self.iovs`, whose buffers
        // are borrowed from `packets` for the whole call ('a outlives it);
        // the kernel only reads them (and writes msg_len inside
        // `self.msgs`).
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

    /// Fills the first headers (at most [`BATCH`]) for `packets`; how many.
    /// Header `i` then points at `packets`' `i`th buffer: it may be handed
    /// to the kernel only while that buffer lives.
    pub(super) fn prepare<'a>(
        &mut self,
        packets: impl Iterator<Item = (SocketAddr, &'a [u8])>,
        v6_socket: bool,
    ) -> usize {
        let mut n = 0;
        for (to, bytes) in packets.take(BATCH) {
            let addr = socket2::SockAddr::from(for_family(to, v6_socket));
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
        n
    }

    /// Datagram `i` as [`prepare`](Self::prepare) left it: its bytes,
    /// and its destination address and that address's length.
    pub(super) fn datagram(
        &self,
        i: usize,
    ) -> (libc::iovec, *const libc::sockaddr, libc::socklen_t) {
        let hdr = &self.msgs[i].msg_hdr;
        (
            self.iovs[i],
            hdr.msg_name.cast_const().cast(),
            hdr.msg_namelen,
        )
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

    /// Takes up to [`RX_BATCH`] waiting datagrams from the socket `fd`;
    /// `WouldBlock` when none is there. With `wait`, on a socket made
    /// blocking by [`block_for`], it first waits up to that timeout for
    /// one (and then takes what else is waiting without waiting again).
    pub fn recv(&mut self, fd: std::os::fd::RawFd, wait: bool) -> io::Result<usize> {
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
                if wait {
                    libc::MSG_WAITFORONE
                } else {
                    libc::MSG_DONTWAIT
                },
                std::ptr::null_mut(),
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        self.count = rc as usize;
        Ok(self.count)
    }

    /// Datagrams the last call received.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether the last call received nothing.
    pub fn is_empty(&self) -> bool {
        self.count == 0
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
    /// its logic without the kernel. Like the kernel, a load past the end
    /// ends the program with 0 (which the program must never rely on).
    fn run(prog: &[libc::sock_filter], pkt: &[u8]) -> u32 {
        let mut a: u32 = 0;
        let mut pc = 0;
        loop {
            let i = prog[pc];
            pc += 1;
            match i.code {
                BPF_LD_W_LEN => a = pkt.len() as u32,
                BPF_LD_B_ABS => match pkt.get(i.k as usize) {
                    Some(b) => a = u32::from(*b),
                    None => panic!("out-of-bounds load [{}] of {}", i.k, pkt.len()),
                },
                BPF_LD_H_ABS => match pkt.get(i.k as usize..i.k as usize + 2) {
                    Some(w) => a = u32::from(u16::from_be_bytes(w.try_into().unwrap())),
                    None => panic!("out-of-bounds load [{}] of {}", i.k, pkt.len()),
                },
                BPF_LD_W_ABS => match pkt.get(i.k as usize..i.k as usize + 4) {
                    Some(w) => a = u32::from_be_bytes(w.try_into().unwrap()),
                    None => panic!("out-of-bounds load [{}] of {}", i.k, pkt.len()),
                },
                BPF_JEQ_K => pc += usize::from(if a == i.k { i.jt } else { i.jf }),
                BPF_JSET_K => pc += usize::from(if a & i.k != 0 { i.jt } else { i.jf }),
                BPF_JGE_K => pc += usize::from(if a >= i.k { i.jt } else { i.jf }),
                BPF_JGT_K => pc += usize::from(if a > i.k { i.jt } else { i.jf }),
                BPF_JA => pc += i.k as usize,
                BPF_MOD_K => a %= i.k,
                BPF_RET_A => return a,
                BPF_RET_K => return i.k,
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
        let mut rtcp = [0u8; 28];
        rtcp[0] = 0x81;
        rtcp[4..8].copy_from_slice(&5u32.to_be_bytes());
        for pt in [192, 200, 204, 205, 206, 223] {
            rtcp[1] = pt;
            assert_eq!(run(&p, &rtcp), 2, "RTCP type {pt}");
        }
        let mut disc = [0u8; 74];
        disc[1] = 1;
        disc[3] = 70;
        disc[4..8].copy_from_slice(&0xFFFF_FFFFu32.to_be_bytes());
        assert_eq!(run(&p, &disc), 0xFFFF_FFFF % 3);
        // Nothing with an SSRC where the classifier would look: hashed.
        for junk in [
            &[][..],
            &[0x80, 0x78][..],
            &[1, 0, 0, 0, 0, 0, 0, 0][..],             // keepalive
            &[0x81, 200, 0, 0, 0, 0, 0, 5][..],        // 8 bytes, looks RTCP
            &[0x80, 0x78, 0, 1, 0, 0, 0, 2, 0, 0][..], // RTP cut short
            &[0u8; 74][..],                            // 74 bytes, not discovery
            &[0u8; 20][..],
        ] {
            assert_eq!(run(&p, junk), STEER_BY_HASH, "{junk:?}");
        }
        // Every length from 0 to 100 of every first-two-byte pattern that
        // matters: never an out-of-bounds load.
        for len in 0..100 {
            for (b0, b1) in [(0, 1), (0x80, 0x78), (0x81, 200), (0x80, 230), (0xFF, 0xFF)] {
                let mut d = vec![0u8; len];
                if len > 0 {
                    d[0] = b0;
                }
                if len > 1 {
                    d[1] = b1;
                }
                let _ = run(&p, &d);
            }
        }
    }

    #[test]
    fn addresses_take_the_socket_family() {
        let v4: SocketAddr = "10.0.0.1:5".parse().unwrap();
        assert_eq!(for_family(v4, false), v4);
        assert_eq!(
            for_family(v4, true),
            "[::ffff:10.0.0.1]:5".parse::<SocketAddr>().unwrap()
        );
        let v6: SocketAddr = "[2001:db8::2]:5".parse().unwrap();
        assert_eq!(for_family(v6, true), v6);
    }

    #[test]
    fn receive_drops_counts_what_a_full_buffer_loses() {
        let rx = socket2::Socket::new(Domain::IPV4, Type::DGRAM, None).unwrap();
        rx.set_recv_buffer_size(4096).unwrap();
        rx.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
            .unwrap();
        let to = rx.local_addr().unwrap().as_socket().unwrap();
        assert_eq!(receive_drops(rx.as_raw_fd()).unwrap(), 0);
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        for _ in 0..200 {
            tx.send_to(&[0u8; 1000], to).unwrap();
        }
        assert!(receive_drops(rx.as_raw_fd()).unwrap() > 0);
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
            .send(tx.as_raw_fd(), packets.iter().map(|p| (to, &p[..])), false)
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
            batch.recv(rx.as_raw_fd(), false).unwrap_err().kind(),
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
        while let Ok(n) = batch.recv(rx.as_raw_fd(), false) {
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
    fn an_adopted_group_is_the_same_sockets() {
        let group = bind_group("127.0.0.1:0".parse().unwrap(), 2).unwrap();
        let addr = group[0].local_addr().unwrap();
        let fds: Vec<_> = group.into_iter().map(IntoRawFd::into_raw_fd).collect();
        let adopted = adopt_group(&fds, 2).unwrap();
        assert_eq!(adopted[1].local_addr().unwrap(), addr);
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut rtp = [0u8; 20];
        rtp[0] = 0x80;
        rtp[8..12].copy_from_slice(&3u32.to_be_bytes()); // core 1
        tx.send_to(&rtp, addr).unwrap();
        adopted[1]
            .set_read_timeout(Some(std::time::Duration::from_secs(2)))
            .unwrap();
        adopted[1].set_nonblocking(false).unwrap();
        let mut buf = [0u8; 64];
        assert_eq!(adopted[1].recv(&mut buf).unwrap(), 20, "steered to core 1");
        let not_a_socket = std::fs::File::open("/dev/null").unwrap();
        let err = adopt_group(&[not_a_socket.as_raw_fd()], 1).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(adopt_group(&[fds[0], fds[0]], 2).is_err());
        assert!(adopt_group(&[fds[0]], 2).is_err());
        // The adopted sockets own their descriptors and close them.
        drop(adopted);
    }

    #[test]
    fn group_binds_one_port() {
        let group = bind_group("127.0.0.1:0".parse().unwrap(), 2).unwrap();
        let a = group[0].local_addr().unwrap();
        let b = group[1].local_addr().unwrap();
        assert_ne!(a.port(), 0);
        assert_eq!(a, b);
    }

    #[test]
    fn a_port_in_use_is_refused_not_shared() {
        let first = bind_group("127.0.0.1:0".parse().unwrap(), 2).unwrap();
        let taken = first[0].local_addr().unwrap();
        // Another group on the same port would join the first one.
        let err = bind_group(taken, 2).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
        // Many groups on port 0 never share a port.
        let groups: Vec<_> = (0..50)
            .map(|_| bind_group("127.0.0.1:0".parse().unwrap(), 2).unwrap())
            .collect();
        let mut ports: Vec<u16> = groups
            .iter()
            .map(|g| g[0].local_addr().unwrap().port())
            .chain([taken.port()])
            .collect();
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), 51);
    }
}
