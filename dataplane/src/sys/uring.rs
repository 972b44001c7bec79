//! The io_uring-native packet path (`--packet-io uring`): a core's own
//! ring with one multishot `recvmsg` that the kernel keeps filling into a
//! ring of provided buffers, and batched `send` submissions.
//!
//! - **Receive**: the kernel picks a free buffer from the provided-buffer
//!   ring for each datagram and posts one completion naming it; the core
//!   decides the datagram in place and gives the buffer back (one store
//!   of the ring's tail per batch). When every buffer is taken, the
//!   receive ends (`ENOBUFS`) and is armed again once buffers are back;
//!   datagrams wait in the socket meanwhile, as with `recvmmsg`.
//! - **Send**: up to [`BATCH`] `send` entries per submission, each with
//!   its destination address (as `sendmmsg`'s [`BatchSender`] prepares
//!   them), on the socket registered with the ring: no header to copy in
//!   and no descriptor to look up per datagram (`sendmsg` entries measured
//!   5 points slower at fan-out 4). The outbox they point into is reused
//!   for the next batch, so the core waits for their completions; the
//!   kernel usually completes them during the submission itself. Receive
//!   completions that arrive meanwhile are kept (their buffers stay the
//!   core's) for the next batch.
//! - **Task work**: `COOP_TASKRUN`. With `DEFER_TASKRUN` (no faster here)
//!   a receive that ran out of buffers stayed parked until the next
//!   datagram arrived (Linux 6.18), stranding those already waiting.
//! - **Wait**: one `io_uring_enter` that submits what is queued and
//!   sleeps until a completion or the tick's deadline.
//!
//! Nothing is allocated after [`UringIo::new`].

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use io_uring::{cqueue, opcode, types, IoUring};

use super::socket::{BatchSender, BATCH, RX_BUF};

/// Provided buffers (a power of two, as the kernel requires).
const BUFFERS: u16 = 256;
/// The buffer group the receive takes from.
const GROUP: u16 = 0;
/// `struct io_uring_recvmsg_out` (four u32: namelen, controllen,
/// payloadlen, flags), at the start of every received buffer.
const HEADER: usize = 16;
/// Room for the sender's address: a sockaddr_in6 holds either family.
const NAME: usize = std::mem::size_of::<libc::sockaddr_in6>();
/// Where the datagram starts in a buffer (no control data is asked for).
const PAYLOAD_AT: usize = HEADER + NAME;
/// One provided buffer: header, address, then [`RX_BUF`] bytes, so a
/// datagram longer than the forwarder accepts is seen as such.
const BUF_BYTES: usize = (PAYLOAD_AT + RX_BUF).next_multiple_of(64);
/// The socket, registered with the ring (saves looking the descriptor up
/// for every operation).
const SOCKET: types::Fixed = types::Fixed(0);
/// `user_data` of the multishot receive (sends use their batch index).
const RECEIVE: u64 = u64::MAX;
/// `user_data` of the cancellation at drop.
const CANCEL: u64 = u64::MAX - 1;

/// A receive completion that carries a buffer.
#[derive(Debug, Clone, Copy)]
struct Received {
    buffer: u16,
    /// Bytes the kernel wrote into the buffer.
    len: usize,
}

/// What one completion was.
enum Completion {
    Received(Received),
    /// The receive failed (no buffer was used).
    ReceiveFailed(i32),
    /// A send finished: bytes sent, or the negated errno.
    Sent(i32),
    Other,
}

/// Memory the kernel reads or writes while the ring lives: the provided
/// buffers and their ring of descriptors, at fixed addresses.
struct Pinned {
    ptr: NonNull<u8>,
    layout: Layout,
}

impl Pinned {
    fn zeroed(bytes: usize, align: usize) -> io::Result<Pinned> {
        let layout = Layout::from_size_align(bytes, align).map_err(io::Error::other)?;
        // SAFETY: the layout has a non-zero size (both uses are constants
        // times BUFFERS).
        let ptr = unsafe { alloc_zeroed(layout) };
        let ptr = NonNull::new(ptr).ok_or_else(|| io::Error::from(io::ErrorKind::OutOfMemory))?;
        Ok(Pinned { ptr, layout })
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        // SAFETY: allocated in `zeroed` with this layout, freed once.
        unsafe { dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

/// A core's io_uring packet path on one socket.
pub struct UringIo {
    // Declared first: dropped (the ring closed) before the memory below.
    ring: IoUring,
    fd: RawFd,
    v6: bool,
    /// The descriptors of the provided buffers ([`BUFFERS`] entries,
    /// page-aligned), shared with the kernel.
    descriptors: Pinned,
    /// [`BUFFERS`] buffers of [`BUF_BYTES`].
    buffers: Pinned,
    /// The next tail of the descriptor ring, and whether it moved since it
    /// was last published.
    tail: u16,
    unpublished: bool,
    /// The multishot receive's header (only its name and control lengths
    /// count); the kernel reads it when the receive is armed.
    template: Box<libc::msghdr>,
    armed: bool,
    /// Times the receive ended (buffers ran out, or an error) and was
    /// armed again.
    rearmed: u64,
    /// Receives completed while the core waited for its sends.
    kept: VecDeque<Received>,
    sender: BatchSender,
}

impl std::fmt::Debug for UringIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UringIo")
            .field("fd", &self.fd)
            .field("armed", &self.armed)
            .field("kept", &self.kept.len())
            .finish()
    }
}

impl UringIo {
    /// A ring for the non-blocking UDP socket `fd` (IPv6 when `v6`), its
    /// buffers registered and the receive armed. Must be called on the
    /// thread that will use it (the ring is single-issuer).
    pub fn new(fd: RawFd, v6: bool) -> io::Result<UringIo> {
        let ring = IoUring::builder()
            .setup_cqsize(4 * u32::from(BUFFERS))
            .setup_single_issuer()
            .setup_coop_taskrun()
            .build(2 * BATCH as u32)?;
        let descriptors = Pinned::zeroed(
            usize::from(BUFFERS) * std::mem::size_of::<types::BufRingEntry>(),
            4096,
        )?;
        let buffers = Pinned::zeroed(usize::from(BUFFERS) * BUF_BYTES, 64)?;
        // SAFETY: an all-zero msghdr (null pointers, zero lengths) is valid.
        let mut template: Box<libc::msghdr> = Box::new(unsafe { std::mem::zeroed() });
        template.msg_namelen = NAME as libc::socklen_t;
        ring.submitter().register_files(&[fd])?;
        let mut io = UringIo {
            ring,
            fd,
            v6,
            descriptors,
            buffers,
            tail: 0,
            unpublished: false,
            template,
            armed: false,
            rearmed: 0,
            kept: VecDeque::with_capacity(usize::from(BUFFERS)),
            sender: BatchSender::new(),
        };
        for b in 0..BUFFERS {
            io.give_back(b);
        }
        io.publish();
        // SAFETY: the descriptor ring is page-aligned memory of BUFFERS
        // entries that lives as long as `io` (and the ring closes first);
        // it is unregistered in `drop` before it is freed.
        unsafe {
            io.ring.submitter().register_buf_ring_with_flags(
                io.descriptors.ptr.as_ptr() as u64,
                BUFFERS,
                GROUP,
                0,
            )?;
        }
        io.arm();
        io.ring.submit()?;
        Ok(io)
    }

    /// Hands up to `max` received datagrams (kept ones first, then the
    /// completion queue's) to `each`, in place, and gives their buffers
    /// back; how many. An error only when none was received and the
    /// receive failed (the caller should not spin on it).
    pub fn receive(
        &mut self,
        max: usize,
        mut each: impl FnMut(SocketAddr, &mut [u8]),
    ) -> io::Result<usize> {
        let mut n = 0;
        let mut failed = None;
        while n < max {
            let received = match self.kept.pop_front() {
                Some(r) => r,
                None => match self.next_completion() {
                    Some(Completion::Received(r)) => r,
                    Some(Completion::ReceiveFailed(errno)) => {
                        failed = Some(errno);
                        continue;
                    }
                    // No send is outstanding outside `send`.
                    Some(Completion::Sent(_) | Completion::Other) => continue,
                    None => break,
                },
            };
            self.deliver(received, &mut each);
            n += 1;
        }
        self.publish();
        if !self.armed {
            self.rearmed += 1;
            self.arm();
        }
        match failed {
            Some(errno) if n == 0 && errno != libc::ENOBUFS => {
                Err(io::Error::from_raw_os_error(errno))
            }
            _ => Ok(n),
        }
    }

    /// Sends every datagram of `packets` and waits until the kernel is
    /// done with their bytes; `sent(Ok(len))` or `sent(Err(errno))` for
    /// each.
    pub fn send<'a>(
        &mut self,
        packets: impl Iterator<Item = (SocketAddr, &'a [u8])>,
        mut sent: impl FnMut(Result<usize, i32>),
    ) {
        let mut packets = packets.peekable();
        while packets.peek().is_some() {
            let n = self.sender.prepare(packets.by_ref(), self.v6);
            let mut queued = 0;
            for i in 0..n {
                let (bytes, to, to_len) = self.sender.datagram(i);
                let entry = opcode::Send::new(
                    SOCKET,
                    bytes.iov_base.cast_const().cast(),
                    bytes.iov_len as u32,
                )
                .dest_addr(to)
                .dest_addr_len(to_len)
                .build()
                .user_data(i as u64);
                // SAFETY: the entry points at an address inside
                // `self.sender` and at bytes of `packets` ('a), both of
                // which stay untouched until this loop has seen the send's
                // completion below.
                while unsafe { self.ring.submission().push(&entry) }.is_err() {
                    // Full (the receive's re-arm took room): make room.
                    if let Err(e) = self.ring.submit() {
                        tracing::debug!(error = %e, "io_uring submit failed");
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
                queued += 1;
            }
            let mut waiting = queued;
            loop {
                while let Some(c) = self.next_completion() {
                    match c {
                        Completion::Sent(res) => {
                            waiting -= 1;
                            sent(usize::try_from(res).map_err(|_| -res));
                        }
                        Completion::Received(r) => self.kept.push_back(r),
                        Completion::ReceiveFailed(_) | Completion::Other => {}
                    }
                }
                if waiting == 0 {
                    break;
                }
                match self.ring.submit_and_wait(1) {
                    Ok(_) => {}
                    Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                    Err(e) => {
                        // The sends are still the kernel's: waiting is the
                        // only safe thing to do with their buffers.
                        tracing::debug!(error = %e, "io_uring wait failed");
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
            }
        }
    }

    /// Submits what is queued and sleeps until a completion arrives or
    /// `timeout` passes (at once if one is waiting).
    pub fn wait(&mut self, timeout: Duration) {
        if !self.kept.is_empty() || !self.ring.completion().is_empty() {
            return;
        }
        let ts = types::Timespec::from(timeout);
        let args = types::SubmitArgs::new().timespec(&ts);
        match self.ring.submitter().submit_with_args(1, &args) {
            Ok(_) => {}
            Err(e) if matches!(e.raw_os_error(), Some(libc::ETIME | libc::EINTR)) => {}
            Err(e) => tracing::debug!(error = %e, "io_uring wait failed"),
        }
    }

    /// Takes the next completion off the queue.
    fn next_completion(&mut self) -> Option<Completion> {
        let cqe = self.ring.completion().next()?;
        let (data, res, flags) = (cqe.user_data(), cqe.result(), cqe.flags());
        Some(match data {
            RECEIVE => {
                if !cqueue::more(flags) {
                    self.armed = false;
                }
                match cqueue::buffer_select(flags) {
                    Some(buffer) if res >= 0 => Completion::Received(Received {
                        buffer,
                        len: res as usize,
                    }),
                    Some(buffer) => {
                        // A failure that still took a buffer: return it.
                        self.give_back(buffer);
                        Completion::ReceiveFailed(-res)
                    }
                    None => Completion::ReceiveFailed(-res),
                }
            }
            CANCEL => Completion::Other,
            _ => Completion::Sent(res),
        })
    }

    /// Hands the datagram in `r`'s buffer to `each` and gives the buffer
    /// back.
    fn deliver(&mut self, r: Received, each: &mut impl FnMut(SocketAddr, &mut [u8])) {
        let b = usize::from(r.buffer) % usize::from(BUFFERS);
        // SAFETY: buffer `b` lies inside `self.buffers`; the kernel handed
        // it to us with this completion and takes it again only after
        // `give_back` below, so this is the only access meanwhile.
        let buf = unsafe {
            std::slice::from_raw_parts_mut(self.buffers.ptr.as_ptr().add(b * BUF_BYTES), BUF_BYTES)
        };
        let field =
            |at: usize| u32::from_ne_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]);
        let (namelen, payloadlen) = (field(0) as usize, field(8) as usize);
        // A longer datagram was cut: keep RX_BUF bytes, seen as too long.
        let len = payloadlen.min(r.len.saturating_sub(PAYLOAD_AT)).min(RX_BUF);
        // SAFETY: an all-zero sockaddr_storage is valid; at most NAME
        // bytes of the address the kernel wrote are copied into it.
        let from = unsafe {
            let mut storage: libc::sockaddr_storage = std::mem::zeroed();
            let namelen = namelen.min(NAME);
            std::ptr::copy_nonoverlapping(
                buf[HEADER..].as_ptr(),
                (&mut storage as *mut libc::sockaddr_storage).cast::<u8>(),
                namelen,
            );
            socket2::SockAddr::new(storage, namelen as libc::socklen_t)
        };
        if let Some(from) = from.as_socket() {
            each(from, &mut buf[PAYLOAD_AT..PAYLOAD_AT + len]);
        }
        self.give_back(r.buffer);
    }

    /// Puts buffer `b` at the descriptor ring's tail (published by
    /// [`publish`](Self::publish)).
    fn give_back(&mut self, b: u16) {
        // Only ids this ring handed out come back; the modulo keeps even a
        // wrong one inside the buffers.
        let b = b % BUFFERS;
        let slot = usize::from(self.tail % BUFFERS);
        // SAFETY: `slot` is inside the descriptor ring, at or past the
        // tail the kernel knows, so the kernel does not read it until the
        // next publish; buffer `b` lies inside `self.buffers`.
        unsafe {
            let entry = self
                .descriptors
                .ptr
                .as_ptr()
                .cast::<types::BufRingEntry>()
                .add(slot);
            (*entry).set_addr(self.buffers.ptr.as_ptr().add(usize::from(b) * BUF_BYTES) as u64);
            (*entry).set_len(BUF_BYTES as u32);
            (*entry).set_bid(b);
        }
        self.tail = self.tail.wrapping_add(1);
        self.unpublished = true;
    }

    /// Tells the kernel about the buffers given back.
    fn publish(&mut self) {
        if !self.unpublished {
            return;
        }
        self.unpublished = false;
        // SAFETY: the tail is a u16 inside the first descriptor, which the
        // kernel reads with acquire ordering; a release store makes the
        // descriptors written before it visible first.
        unsafe {
            let base = self.descriptors.ptr.as_ptr().cast::<types::BufRingEntry>();
            let tail = types::BufRingEntry::tail(base) as *const AtomicU16;
            (*tail).store(self.tail, Ordering::Release);
        }
    }

    /// Queues the multishot receive (submitted with the next enter).
    fn arm(&mut self) {
        let entry = opcode::RecvMsgMulti::new(SOCKET, &*self.template, GROUP)
            .build()
            .user_data(RECEIVE);
        // SAFETY: the template and the buffer group live as long as the
        // ring (see `drop`).
        self.armed = unsafe { self.ring.submission().push(&entry) }.is_ok();
    }
}

impl Drop for UringIo {
    fn drop(&mut self) {
        // Stop the receive and take the buffers away from the kernel
        // before their memory is freed (the ring itself is closed first,
        // being the first field).
        let cancel = opcode::AsyncCancel::new(RECEIVE).build().user_data(CANCEL);
        // SAFETY: the cancellation refers to no memory.
        if unsafe { self.ring.submission().push(&cancel) }.is_ok() {
            let _ = self.ring.submit();
        }
        let _ = self.ring.submitter().unregister_buf_ring(GROUP);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::os::fd::AsRawFd;

    fn pair() -> (UdpSocket, UdpSocket) {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        server.set_nonblocking(true).unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        (server, client)
    }

    fn receive_all(io: &mut UringIo, want: usize) -> Vec<(SocketAddr, Vec<u8>)> {
        let mut got = Vec::new();
        for _ in 0..200 {
            io.wait(Duration::from_millis(10));
            io.receive(usize::MAX, |from, bytes| got.push((from, bytes.to_vec())))
                .unwrap();
            if got.len() >= want {
                break;
            }
        }
        got
    }

    #[test]
    fn receives_in_place_across_the_buffers_and_sends_back() {
        let (server, client) = pair();
        let mut io = UringIo::new(server.as_raw_fd(), false).unwrap();
        let to = server.local_addr().unwrap();
        // More than the buffers, in several rounds: the kernel takes each
        // chunk into buffers when the core next enters it, runs out of
        // buffers (the receive ends), and gets them back with the receive
        // armed again. Chunks keep the socket's own buffer from
        // overflowing meanwhile.
        let mut sent = Vec::new();
        let mut got = Vec::new();
        for round in 0..3 {
            for chunk in 0..5 {
                for i in 0..64 {
                    let d = vec![(round * 7 + chunk * 64 + i) as u8; 1 + (i * 13) % 500];
                    client.send_to(&d, to).unwrap();
                    sent.push(d);
                }
                std::thread::sleep(Duration::from_millis(5));
                // Enter the kernel, which runs the deferred receive work.
                io.ring
                    .submitter()
                    .submit_with_args(0, &types::SubmitArgs::new())
                    .unwrap();
            }
            got.extend(receive_all(&mut io, sent.len() - got.len()));
        }
        assert!(io.rearmed >= 3, "ran out of buffers each round");
        assert_eq!(got.len(), sent.len());
        for ((from, bytes), d) in got.iter().zip(&sent) {
            assert_eq!(*from, client.local_addr().unwrap());
            assert_eq!(bytes, d);
        }
        // A longer datagram than the forwarder takes arrives cut to
        // RX_BUF, so it is seen as too long.
        client.send_to(&vec![9u8; RX_BUF + 300], to).unwrap();
        let got = receive_all(&mut io, 1);
        assert_eq!(got[0].1.len(), RX_BUF);
        // Batched sends, more than one submission's worth.
        let replies: Vec<Vec<u8>> = (0..BATCH + 10).map(|i| vec![i as u8; 20 + i]).collect();
        let dest = client.local_addr().unwrap();
        let mut results = Vec::new();
        io.send(replies.iter().map(|r| (dest, &r[..])), |r| results.push(r));
        assert_eq!(results.len(), replies.len());
        assert!(results.iter().all(Result::is_ok));
        let mut buf = [0u8; 256];
        for r in &replies {
            let (n, from) = client.recv_from(&mut buf).unwrap();
            assert_eq!((&buf[..n], from), (&r[..], to));
        }
    }

    #[test]
    fn a_datagram_that_arrives_during_sends_is_kept_for_the_next_batch() {
        let (server, client) = pair();
        let mut io = UringIo::new(server.as_raw_fd(), false).unwrap();
        let to = server.local_addr().unwrap();
        client.send_to(b"first", to).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        // Sending enters the kernel, which posts the receive meanwhile.
        let dest = client.local_addr().unwrap();
        let mut n = 0;
        io.send([(dest, &b"reply"[..])].into_iter(), |r| {
            assert_eq!(r, Ok(5));
            n += 1;
        });
        assert_eq!(n, 1);
        let got = receive_all(&mut io, 1);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].1, b"first");
    }

    #[test]
    fn waiting_returns_at_the_deadline_with_nothing_received() {
        let (server, _client) = pair();
        let mut io = UringIo::new(server.as_raw_fd(), false).unwrap();
        let start = std::time::Instant::now();
        io.wait(Duration::from_millis(30));
        assert!(start.elapsed() >= Duration::from_millis(25));
        assert_eq!(
            io.receive(usize::MAX, |_, _| panic!("nothing sent"))
                .unwrap(),
            0
        );
    }
}
