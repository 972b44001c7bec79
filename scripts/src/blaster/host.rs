//! What the machine says about a run: pinning threads to CPUs, a CPU's
//! busy time (`/proc/stat`), a thread's own CPU time, and a UDP socket's
//! drop count (`/proc/net/udp`). A load generator that is itself saturated
//! measures itself; these tell the two apart.

use std::io;
use std::time::{Duration, Instant};

use nix::sched::{sched_setaffinity, CpuSet};
use nix::time::{clock_gettime, ClockId};
use nix::unistd::Pid;

/// Pins the calling thread (and threads it starts later) to `cpu`.
pub fn pin_to(cpu: usize) -> io::Result<()> {
    let mut set = CpuSet::new();
    set.set(cpu).map_err(io::Error::from)?;
    sched_setaffinity(Pid::from_raw(0), &set).map_err(io::Error::from)
}

/// CPUs of this machine (online, whatever this thread is pinned to).
pub fn cpus() -> usize {
    std::fs::read_to_string("/proc/stat")
        .map(|s| {
            s.lines()
                .filter(|l| {
                    l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit)
                })
                .count()
        })
        .unwrap_or(1)
        .max(1)
}

/// The calling thread's CPU time so far.
pub fn thread_cpu() -> Duration {
    clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID)
        .map(Duration::from)
        .unwrap_or_default()
}

/// A CPU's busy and total time from `/proc/stat`, in clock ticks.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuTicks {
    busy: u64,
    total: u64,
}

impl CpuTicks {
    /// `cpu`'s counters now (zeros when they cannot be read).
    pub fn read(cpu: usize) -> Self {
        let name = format!("cpu{cpu} ");
        let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
            return CpuTicks::default();
        };
        let Some(line) = stat.lines().find(|l| l.starts_with(&name)) else {
            return CpuTicks::default();
        };
        // user nice system idle iowait irq softirq steal ...
        let v: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .take(8)
            .filter_map(|f| f.parse().ok())
            .collect();
        let total: u64 = v.iter().sum();
        let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
        CpuTicks {
            busy: total - idle,
            total,
        }
    }

    /// The busy fraction between `earlier` and `self`.
    pub fn busy_since(&self, earlier: &CpuTicks) -> f64 {
        let total = self.total.saturating_sub(earlier.total);
        if total == 0 {
            return 0.0;
        }
        self.busy.saturating_sub(earlier.busy) as f64 / total as f64
    }
}

/// Datagrams the kernel dropped for the IPv4 UDP socket(s) bound to
/// `port` (any address), from `/proc/net/udp`: a full receive buffer.
pub fn udp_drops(port: u16) -> u64 {
    let Ok(table) = std::fs::read_to_string("/proc/net/udp") else {
        return 0;
    };
    let want = format!(":{port:04X}");
    table
        .lines()
        .skip(1)
        .filter(|l| {
            l.split_whitespace()
                .nth(1)
                .is_some_and(|local| local.ends_with(&want))
        })
        .filter_map(|l| l.split_whitespace().last()?.parse::<u64>().ok())
        .sum()
}

/// A thread's and a CPU's use over a window.
#[derive(Debug, Clone, Copy)]
pub struct Usage {
    started: Instant,
    thread: Duration,
    target: CpuTicks,
    target_cpu: usize,
}

impl Usage {
    /// Starts measuring the calling thread and `target_cpu`.
    pub fn start(target_cpu: usize) -> Self {
        Usage {
            started: Instant::now(),
            thread: thread_cpu(),
            target: CpuTicks::read(target_cpu),
            target_cpu,
        }
    }

    /// (the calling thread's busy fraction, the target CPU's) since
    /// [`start`](Self::start).
    pub fn finish(&self) -> (f64, f64) {
        let wall = self.started.elapsed().as_secs_f64();
        let thread = (thread_cpu() - self.thread).as_secs_f64();
        let own = if wall > 0.0 { thread / wall } else { 0.0 };
        (
            own,
            CpuTicks::read(self.target_cpu).busy_since(&self.target),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A thread's CPU time grows while it spins and not while it sleeps
    /// (bounded in wall time, whatever else the machine runs).
    #[test]
    fn a_thread_is_charged_for_spinning_not_for_sleeping() {
        let before = thread_cpu();
        std::thread::sleep(Duration::from_millis(100));
        let slept = thread_cpu() - before;
        assert!(slept < Duration::from_millis(20), "{slept:?} while asleep");
        let usage = Usage::start(0);
        let (start, deadline) = (thread_cpu(), Instant::now() + Duration::from_secs(10));
        let mut x = 0u64;
        while thread_cpu() - start < Duration::from_millis(50) && Instant::now() < deadline {
            x = x.wrapping_mul(31).wrapping_add(1);
        }
        std::hint::black_box(x);
        assert!(
            thread_cpu() - start >= Duration::from_millis(50),
            "spun 50 ms of CPU"
        );
        let (own, cpu0) = usage.finish();
        assert!(own > 0.0 && own <= 1.05, "{own}");
        assert!((0.0..=1.0).contains(&cpu0), "{cpu0}");
        assert!(cpus() >= 1);
    }

    #[test]
    fn udp_drops_are_read_per_port() {
        let s = std::net::UdpSocket::bind(("127.0.0.1", 0)).unwrap();
        let port = s.local_addr().unwrap().port();
        assert_eq!(udp_drops(port), 0);
        assert!(std::fs::read_to_string("/proc/net/udp")
            .unwrap()
            .contains(&format!(":{port:04X}")));
    }
}
