//! Everything that talks to the OS below std: sockets and BPF, libsodium,
//! resource limits, signals. The only module of the crate allowed `unsafe`.

pub mod socket;
pub mod sodium;

use std::io;
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
