//! Everything that talks to the OS below std: sockets and BPF, libsodium,
//! io_uring, resource limits, signals. The only module of the crate allowed `unsafe`.

pub mod socket;
pub mod sodium;
pub mod uring;

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};

/// Raises RLIMIT_MEMLOCK (io_uring rings and glommio's registered buffers
/// are locked memory) to at least `bytes`, up to unlimited when privileged.
/// Returns the soft limit in effect afterwards.
pub fn raise_memlock(bytes: u64) -> io::Result<u64> {
    let mut cur = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `cur` is a valid, writable rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut cur) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if cur.rlim_cur == libc::RLIM_INFINITY || cur.rlim_cur >= bytes {
        return Ok(cur.rlim_cur);
    }
    for want in [
        libc::rlimit {
            rlim_cur: libc::RLIM_INFINITY,
            rlim_max: libc::RLIM_INFINITY,
        },
        libc::rlimit {
            rlim_cur: bytes.max(cur.rlim_cur),
            rlim_max: bytes.max(cur.rlim_max),
        },
        libc::rlimit {
            rlim_cur: cur.rlim_max,
            rlim_max: cur.rlim_max,
        },
    ] {
        // SAFETY: `want` is a valid rlimit; the call has no other effect
        // than changing this process's limit.
        if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &want) } == 0 {
            return Ok(want.rlim_cur);
        }
    }
    Ok(cur.rlim_cur)
}

/// `capget`/`capset`'s header (`struct __user_cap_header_struct`).
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

/// One half of `capget`/`capset`'s data (`struct __user_cap_data_struct`):
/// capabilities 0-31, then 32-63.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// `_LINUX_CAPABILITY_VERSION_3`: two [`CapData`], 64 capabilities.
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// This process's permitted capabilities, as a bit mask.
pub fn permitted_capabilities() -> io::Result<u64> {
    let mut header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: the header and two data structs are the layout the version-3
    // call reads and writes; both outlive it.
    let rc = unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(u64::from(data[0].permitted) | u64::from(data[1].permitted) << 32)
}

/// Drops every capability the calling thread holds, for good (Linux keeps
/// capabilities per thread: call it before starting threads, or on each;
/// threads started afterwards inherit the empty sets): the bounding set
/// (where it may: that takes CAP_SETPCAP), the ambient set, then
/// effective, permitted and inheritable; and sets no_new_privs, so nothing
/// it executes gains one either (not even as root: execve grants root
/// nothing beyond the old permitted set then). The server needs a
/// privilege only to bind a port below 1024 and to raise its locked-memory
/// limit, both before it serves. Returns the permitted set it had.
pub fn drop_capabilities() -> io::Result<u64> {
    let had = permitted_capabilities()?;
    let last = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .unwrap_or(63)
        .min(63);
    for cap in 0..=last {
        // SAFETY: prctl with integer arguments; EPERM (no CAP_SETPCAP) and
        // EINVAL (no such capability) leave the set as it was.
        unsafe { libc::prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(cap), 0, 0, 0) };
    }
    // SAFETY: prctl with integer arguments. EINVAL on kernels before 4.3
    // (no ambient set, nothing to clear).
    unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    let header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let none = [CapData::default(); 2];
    // SAFETY: as in `permitted_capabilities`; capset only reads them.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &header, none.as_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(had)
}

/// Milliseconds of CLOCK_MONOTONIC: the same clock in every process on
/// the machine, so times kept in the shared region stay comparable across
/// dataplane restarts.
pub fn monotonic_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always
    // exists on Linux, so the call cannot fail.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1000 + (ts.tv_nsec as u64) / 1_000_000
}

/// Set by the SIGTERM/SIGINT handler.
static SHUTDOWN: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    SHUTDOWN.store(true, Ordering::Release);
}

/// Installs handlers so SIGTERM and SIGINT set [`shutdown_requested`].
///
/// Parent death is detected by the cores polling the parent pid, not with
/// PR_SET_PDEATHSIG: that signal fires when the *thread* that spawned us
/// exits, which in a tokio parent can be any idle worker going away.
pub fn install_shutdown_signals() -> io::Result<()> {
    for sig in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: a zeroed sigaction is a valid starting point; the handler
        // is an `extern "C" fn(c_int)` that only does an atomic store, which
        // is async-signal-safe.
        let rc = unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            libc::sigemptyset(&mut sa.sa_mask);
            sa.sa_flags = libc::SA_RESTART;
            libc::sigaction(sig, &sa, std::ptr::null_mut())
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Whether a shutdown signal arrived.
pub fn shutdown_requested() -> bool {
    SHUTDOWN.load(Ordering::Acquire)
}

/// Requests shutdown as if a signal had arrived (tests, parent death).
pub fn request_shutdown() {
    SHUTDOWN.store(true, Ordering::Release);
}

/// A process watched through a pidfd (Linux 5.3): unlike a pid, it can
/// never come to name another process once the watched one is gone.
#[derive(Debug)]
pub struct Process {
    pid: u32,
    fd: OwnedFd,
}

impl Process {
    /// Watches `pid`; fails (ESRCH) when no such process exists.
    pub fn watch(pid: u32) -> io::Result<Process> {
        let raw = i32::try_from(pid).map_err(|_| io::Error::from_raw_os_error(libc::ESRCH))?;
        if raw <= 0 {
            return Err(io::Error::from_raw_os_error(libc::ESRCH));
        }
        // SAFETY: pidfd_open takes a pid and flags (0) and returns a new
        // descriptor or -1; no memory is passed.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, raw, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = i32::try_from(fd).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
        // SAFETY: `fd` was just returned by the kernel and is owned by
        // nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Process { pid, fd })
    }

    /// The watched process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Whether the process has exited (a zombie counts as exited). Never
    /// blocks.
    pub fn exited(&self) -> bool {
        let mut poll = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, timeout 0: the call only reads and
        // writes `poll`.
        let n = unsafe { libc::poll(&mut poll, 1, 0) };
        n > 0 && poll.revents & (libc::POLLIN | libc::POLLHUP) != 0
    }

    /// Sends `signal` to the watched process through its pidfd: never to
    /// another process that got its pid after it was gone.
    pub fn signal(&self, signal: libc::c_int) -> io::Result<()> {
        // SAFETY: pidfd_send_signal takes our open pidfd, a signal number,
        // a null siginfo and flags 0; no memory is passed.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.fd.as_raw_fd(),
                signal,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Whether `pid` names a live process (not exited, not a zombie).
    pub fn alive(pid: u32) -> bool {
        Process::watch(pid).is_ok_and(|p| !p.exited())
    }
}

impl AsFd for Process {
    /// Readable once the process has exited (for an async wait).
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for Process {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::Process;

    #[test]
    fn a_process_is_seen_alive_then_exited() {
        assert!(Process::alive(std::process::id()));
        let mut child = std::process::Command::new("sleep")
            .arg("0.2")
            .spawn()
            .unwrap();
        let watched = Process::watch(child.id()).unwrap();
        assert!(!watched.exited());
        child.wait().unwrap();
        assert!(watched.exited());
        assert!(
            watched.signal(libc::SIGTERM).is_err(),
            "gone: nothing to signal"
        );
        assert!(!Process::alive(child.id()));
        assert!(Process::watch(0).is_err());
    }
}
