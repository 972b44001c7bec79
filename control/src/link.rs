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
///
/// Health (LVSP READY and HEARTBEAT_ACK) is the headroom left by the
/// tightest of three measured limits, each a fraction of its maximum:
///
/// - **busy**: the busiest core's share of wall time spent handling
///   packets over its last report interval;
/// - **occupancy**: live sessions on the data plane against the configured
///   capacity (`capacity_per_core × cores`);
/// - **loss**: the worst core's dropped share of the datagrams it received
///   over its last interval (ignored below [`MIN_PACKETS_FOR_LOSS`]
///   datagrams, so a stray packet does not swing it).
///
/// `health = 1 − max(busy, occupancy, loss)`, clamped to [0, 1].
#[derive(Debug, Clone)]
pub struct Load {
    latest: Vec<Option<(Instant, CoreStats)>>,
    /// Busy share of each core over its last reporting interval.
    busy: Vec<f64>,
    /// Dropped share of each core's datagrams over its last interval.
    loss: Vec<f64>,
    /// Sessions the data plane is sized for.
    capacity: u64,
}

/// Datagrams a core must receive in an interval before its loss counts.
pub const MIN_PACKETS_FOR_LOSS: u64 = 100;

impl Load {
    /// No reports yet for `cores` cores sized for `capacity_per_core`
    /// sessions each.
    pub fn new(cores: u32, capacity_per_core: u64) -> Load {
        Load {
            latest: vec![None; cores as usize],
            busy: vec![0.0; cores as usize],
            loss: vec![0.0; cores as usize],
            capacity: (capacity_per_core * u64::from(cores)).max(1),
        }
    }

    /// Records a core's report received at `now`.
    pub fn record(&mut self, now: Instant, stats: CoreStats) {
        let core = stats.core as usize;
        let Some(slot) = self.latest.get_mut(core) else {
            return;
        };
        if let Some((then, prev)) = slot {
            let wall = now.saturating_duration_since(*then).as_nanos() as f64;
            if wall > 0.0 {
                let busy = stats.busy_ns.saturating_sub(prev.busy_ns) as f64;
                self.busy[core] = (busy / wall).clamp(0.0, 1.0);
            }
            let received = stats.packets_in.saturating_sub(prev.packets_in);
            let dropped = stats
                .drops
                .iter()
                .sum::<u64>()
                .saturating_sub(prev.drops.iter().sum());
            self.loss[core] = if received >= MIN_PACKETS_FOR_LOSS {
                (dropped as f64 / received as f64).clamp(0.0, 1.0)
            } else {
                0.0
            };
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

    /// Sessions on the data plane, by the latest reports.
    pub fn sessions(&self) -> u64 {
        self.latest
            .iter()
            .flatten()
            .map(|(_, s)| u64::from(s.sessions))
            .sum()
    }

    /// Health in [0, 1] (see the type's documentation).
    pub fn health(&self) -> f64 {
        let max = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
        let occupancy = self.sessions() as f64 / self.capacity as f64;
        let worst = max(&self.busy).max(max(&self.loss)).max(occupancy);
        (1.0 - worst).clamp(0.0, 1.0)
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

    fn report(core: u32, busy_ns: u64, sessions: u32, packets_in: u64, dropped: u64) -> CoreStats {
        let mut s = CoreStats {
            core,
            busy_ns,
            sessions,
            packets_in,
            ..CoreStats::default()
        };
        s.drops[shared::DropReason::AuthFailed as usize] = dropped;
        s
    }

    #[test]
    fn health_falls_as_cores_get_busy() {
        let mut load = Load::new(2, 1000);
        let t0 = Instant::now();
        load.record(t0, report(0, 0, 0, 0, 0));
        load.record(t0, report(1, 0, 0, 0, 0));
        assert_eq!(load.health(), 1.0);
        let t1 = t0 + Duration::from_millis(100);
        load.record(t1, report(0, 10_000_000, 0, 0, 0)); // 10% busy
        load.record(t1, report(1, 80_000_000, 0, 0, 0)); // 80% busy
        assert!((load.health() - 0.2).abs() < 1e-9, "{}", load.health());
        assert_eq!(load.stats(1).unwrap().busy_ns, 80_000_000);
    }

    #[test]
    fn health_falls_as_sessions_fill_capacity() {
        let mut load = Load::new(2, 10); // 20 sessions in all
        let t0 = Instant::now();
        let mut previous = 1.1;
        for sessions in [0, 5, 10, 15, 20] {
            load.record(t0, report(0, 0, sessions, 0, 0));
            let h = load.health();
            assert!(
                h < previous,
                "{sessions} sessions: {h} not below {previous}"
            );
            previous = h;
        }
        load.record(t0, report(0, 0, 30, 0, 0));
        assert_eq!(load.health(), 0.0, "over capacity");
    }

    #[test]
    fn health_falls_with_losses_but_not_for_a_stray_packet() {
        let mut load = Load::new(1, 1000);
        let t0 = Instant::now();
        load.record(t0, report(0, 0, 0, 0, 0));
        let t1 = t0 + Duration::from_millis(250);
        load.record(t1, report(0, 0, 0, 10, 10)); // few packets: ignored
        assert_eq!(load.health(), 1.0);
        let t2 = t1 + Duration::from_millis(250);
        load.record(t2, report(0, 0, 0, 1010, 260)); // 250 of 1000 dropped
        assert!((load.health() - 0.75).abs() < 1e-9, "{}", load.health());
    }
}
