//! Control's side of the shared-memory rings.
//!
//! [`Link`] writes commands; when a core's ring is full the command waits in
//! a per-core queue (back-pressure, never a silent loss) that
//! [`Link::flush`] retries, in order. [`Events`] reads what the cores report;
//! [`Load`] turns their statistics into the health figure.

use std::collections::VecDeque;
use std::time::Instant;

use shared::{Command, Consumer, CoreStats, Event, Producer, Region, RegionError};

/// The command-writing half.
#[derive(Debug)]
pub struct Link {
    rings: Vec<Producer<Command>>,
    waiting: Vec<VecDeque<Command>>,
}

/// The event-reading half.
#[derive(Debug)]
pub struct Events {
    rings: Vec<Consumer<Event>>,
}

/// Takes control's side of every core's rings.
pub fn attach(region: &Region) -> Result<(Link, Events), RegionError> {
    let cores = region.config().cores;
    let mut rings = Vec::new();
    let mut events = Vec::new();
    for core in 0..cores {
        let (c, e) = region.control_side(core)?;
        rings.push(c);
        events.push(e);
    }
    Ok((
        Link {
            rings,
            waiting: vec![VecDeque::new(); cores as usize],
        },
        Events { rings: events },
    ))
}

impl Link {
    /// Sends a command to a core now, or queues it behind earlier ones.
    pub fn send(&mut self, core: u32, command: Command) {
        let core = core as usize;
        if self.waiting[core].is_empty() && self.rings[core].push(&command).is_ok() {
            return;
        }
        self.waiting[core].push_back(command);
    }

    /// Retries queued commands in order; returns how many still wait.
    pub fn flush(&mut self) -> usize {
        let mut left = 0;
        for (ring, queue) in self.rings.iter_mut().zip(&mut self.waiting) {
            while let Some(c) = queue.front() {
                if ring.push(c).is_err() {
                    break;
                }
                queue.pop_front();
            }
            left += queue.len();
        }
        left
    }
}

impl Events {
    /// Hands every waiting event to `f` with its core index. Undecodable
    /// slots are counted and skipped.
    pub fn drain(&mut self, mut f: impl FnMut(u32, Event)) -> u64 {
        let mut corrupt = 0;
        for (core, ring) in self.rings.iter_mut().enumerate() {
            while let Some(ev) = ring.pop() {
                match ev {
                    Ok(ev) => f(core as u32, ev),
                    Err(_) => corrupt += 1,
                }
            }
        }
        corrupt
    }
}

/// Latest statistics per core and the load figures derived from them.
#[derive(Debug, Clone)]
pub struct Load {
    latest: Vec<Option<(Instant, CoreStats)>>,
    /// Busy fraction of each core over its last reporting interval.
    busy: Vec<f64>,
}

impl Load {
    /// No reports yet for `cores` cores.
    pub fn new(cores: u32) -> Load {
        Load {
            latest: vec![None; cores as usize],
            busy: vec![0.0; cores as usize],
        }
    }

    /// Records a core's report received at `now`.
    pub fn record(&mut self, now: Instant, stats: CoreStats) {
        let Some(slot) = self.latest.get_mut(stats.core as usize) else {
            return;
        };
        if let Some((then, prev)) = slot {
            let wall = now.saturating_duration_since(*then).as_nanos() as f64;
            if wall > 0.0 {
                let busy = stats.busy_ns.saturating_sub(prev.busy_ns) as f64;
                self.busy[stats.core as usize] = (busy / wall).clamp(0.0, 1.0);
            }
        }
        *slot = Some((now, stats));
    }

    /// Number of cores tracked.
    pub fn cores(&self) -> u32 {
        self.latest.len() as u32
    }

    /// The latest report of a core.
    pub fn stats(&self, core: u32) -> Option<&CoreStats> {
        self.latest.get(core as usize)?.as_ref().map(|(_, s)| s)
    }

    /// Sum of every core's latest report.
    pub fn total(&self) -> CoreStats {
        let mut t = CoreStats::default();
        for (_, s) in self.latest.iter().flatten() {
            t.sessions += s.sessions;
            t.packets_in += s.packets_in;
            t.bytes_in += s.bytes_in;
            t.packets_out += s.packets_out;
            t.bytes_out += s.bytes_out;
            t.busy_ns += s.busy_ns;
            for (a, b) in t.drops.iter_mut().zip(s.drops) {
                *a += b;
            }
        }
        t
    }

    /// Health in [0, 1]: the headroom of the busiest core.
    pub fn health(&self) -> f64 {
        let busiest = self.busy.iter().copied().fold(0.0, f64::max);
        (1.0 - busiest).clamp(0.0, 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::RegionConfig;
    use std::time::Duration;

    #[test]
    fn full_ring_queues_in_order_and_flush_delivers() {
        let path = std::env::temp_dir().join(format!("voice-link-{}", std::process::id()));
        let region = Region::create(
            &path,
            RegionConfig {
                cores: 1,
                command_slots: 4,
                event_slots: 4,
            },
        )
        .unwrap();
        let (mut link, _events) = attach(&region).unwrap();
        let (mut core_rx, _) = region.core_side(0).unwrap();
        for ssrc in 0..10 {
            link.send(0, Command::RemoveSession { ssrc });
        }
        assert_eq!(link.flush(), 6);
        let mut got = Vec::new();
        while got.len() < 10 {
            while let Some(Ok(Command::RemoveSession { ssrc })) = core_rx.pop() {
                got.push(ssrc);
            }
            link.flush();
        }
        assert_eq!(got, (0..10).collect::<Vec<_>>());
        assert_eq!(link.flush(), 0);
    }

    #[test]
    fn health_falls_with_busy_time() {
        let mut load = Load::new(2);
        let t0 = Instant::now();
        let report = |core, busy_ns| CoreStats {
            core,
            busy_ns,
            ..CoreStats::default()
        };
        load.record(t0, report(0, 0));
        load.record(t0, report(1, 0));
        assert_eq!(load.health(), 1.0);
        let t1 = t0 + Duration::from_millis(100);
        load.record(t1, report(0, 10_000_000)); // 10% busy
        load.record(t1, report(1, 80_000_000)); // 80% busy
        assert!((load.health() - 0.2).abs() < 1e-9, "{}", load.health());
        assert_eq!(load.stats(1).unwrap().busy_ns, 80_000_000);
    }
}
