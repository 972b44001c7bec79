//! Control's side of the shared-memory rings.
//!
//! [`Link`] writes commands; when a core's ring is full the command waits in
//! a per-core queue (back-pressure, never a silent loss) that
//! [`Link::flush`] retries, in order. [`Events`] reads what the cores report;
//! [`Load`] turns their statistics into the health figure.

use std::collections::VecDeque;
use std::time::Instant;

use shared::{
    Command, Consumer, CoreStats, Drops, Event, PopError, Producer, PushError, Region, RegionError,
};

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

    /// Sends a command to every core but `except`.
    pub fn send_others(&mut self, except: u32, command: &Command) {
        for core in (0..self.rings.len() as u32).filter(|c| *c != except) {
            self.send(core, command.clone());
        }
    }

    /// Retries queued commands in order; returns how many still wait. A
    /// corrupt ring keeps its commands queued (the dataplane that corrupted
    /// it is stopping; [`Link::reset`] repairs it before the next one).
    pub fn flush(&mut self) -> usize {
        let mut left = 0;
        for (ring, queue) in self.rings.iter_mut().zip(&mut self.waiting) {
            while let Some(c) = queue.front() {
                match ring.push(c) {
                    Ok(()) => {
                        queue.pop_front();
                    }
                    Err(PushError::Full) => break,
                    Err(PushError::Corrupt(e)) => {
                        tracing::error!(error = %e, "command ring corrupt");
                        break;
                    }
                }
            }
            left += queue.len();
        }
        left
    }

    /// Before a new dataplane starts on the region: forgets every command
    /// the dead one did not take (queued or in the rings; the state is
    /// pushed again whole), and repairs the consumer indices it may have
    /// left corrupt.
    pub fn reset(&mut self) {
        for (ring, queue) in self.rings.iter_mut().zip(&mut self.waiting) {
            ring.reset_consumer();
            queue.clear();
        }
    }
}

impl Events {
    /// Hands every waiting event to `f` with its core index. Undecodable
    /// slots are counted and skipped; a ring whose indices are corrupt is
    /// left alone (counted once per call) until [`Events::reset`].
    pub fn drain(&mut self, mut f: impl FnMut(u32, Event)) -> u64 {
        let mut corrupt = 0;
        for (core, ring) in self.rings.iter_mut().enumerate() {
            loop {
                match ring.pop() {
                    Ok(Some(ev)) => f(core as u32, ev),
                    Ok(None) => break,
                    Err(PopError::Slot(_)) => corrupt += 1,
                    Err(PopError::Corrupt(_)) => {
                        corrupt += 1;
                        break;
                    }
                }
            }
        }
        corrupt
    }

    /// Before a new dataplane starts on the region (after [`Events::drain`]
    /// took what the dead one left): repairs the producer indices it may
    /// have left corrupt.
    pub fn reset(&mut self) {
        for ring in &mut self.rings {
            ring.reset_producer();
        }
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
/// - **loss**: the worst core's share of datagrams lost to overload (the
///   socket buffer overflowed, a send was refused) against those it
///   received over its last interval (ignored below
///   [`MIN_PACKETS_FOR_LOSS`] datagrams, so a stray packet does not swing
///   it). Junk the cores refuse (malformed, unknown SSRC, failed
///   authentication, replays, over budget) is counted but is not load: a
///   flood of it must not make Litecord move calls away.
///
/// `health = 1 − max(busy, occupancy, loss)`, clamped to [0, 1].
#[derive(Debug, Clone)]
pub struct Load {
    latest: Vec<Option<(Instant, CoreStats)>>,
    /// Latest drop counters per core, and the overload count at that
    /// core's last statistics report.
    drops: Vec<(Drops, u64)>,
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
            drops: vec![(Drops::default(), 0); cores as usize],
            busy: vec![0.0; cores as usize],
            loss: vec![0.0; cores as usize],
            capacity: (capacity_per_core * u64::from(cores)).max(1),
        }
    }

    /// Records a core's drop counters (cores send them just before each
    /// statistics report).
    pub fn record_drops(&mut self, core: u32, drops: Drops) {
        if let Some(d) = self.drops.get_mut(core as usize) {
            d.0 = drops;
        }
    }

    /// The latest drop counters of a core.
    pub fn drops(&self, core: u32) -> Option<&Drops> {
        self.drops.get(core as usize).map(|(d, _)| d)
    }

    /// Records a core's report received at `now`.
    pub fn record(&mut self, now: Instant, stats: CoreStats) {
        let core = stats.core as usize;
        let (Some(slot), Some((drops, overload_then))) =
            (self.latest.get_mut(core), self.drops.get_mut(core))
        else {
            return;
        };
        let overload = drops.overload();
        if let Some((then, prev)) = slot {
            let wall = now.saturating_duration_since(*then).as_nanos() as f64;
            if wall > 0.0 {
                let busy = stats.busy_ns.saturating_sub(prev.busy_ns) as f64;
                self.busy[core] = (busy / wall).clamp(0.0, 1.0);
            }
            let received = stats.packets_in.saturating_sub(prev.packets_in);
            // Overflow drops never reached the core: they add to what it
            // was sent.
            let lost = overload.saturating_sub(*overload_then);
            let offered = received + lost;
            self.loss[core] = if offered >= MIN_PACKETS_FOR_LOSS {
                (lost as f64 / offered as f64).clamp(0.0, 1.0)
            } else {
                0.0
            };
        }
        *overload_then = overload;
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
                counter_slots: 1,
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
            while let Ok(Some(Command::RemoveSession { ssrc })) = core_rx.pop() {
                got.push(ssrc);
            }
            link.flush();
        }
        assert_eq!(got, (0..10).collect::<Vec<_>>());
        assert_eq!(link.flush(), 0);
    }

    fn report(core: u32, busy_ns: u64, sessions: u32, packets_in: u64) -> CoreStats {
        CoreStats {
            core,
            busy_ns,
            sessions,
            packets_in,
            ..CoreStats::default()
        }
    }

    fn drops(reason: shared::DropReason, n: u64) -> Drops {
        let mut d = Drops::default();
        d.add(reason, n);
        d
    }

    #[test]
    fn health_falls_as_cores_get_busy() {
        let mut load = Load::new(2, 1000);
        let t0 = Instant::now();
        load.record(t0, report(0, 0, 0, 0));
        load.record(t0, report(1, 0, 0, 0));
        assert_eq!(load.health(), 1.0);
        let t1 = t0 + Duration::from_millis(100);
        load.record(t1, report(0, 10_000_000, 0, 0)); // 10% busy
        load.record(t1, report(1, 80_000_000, 0, 0)); // 80% busy
        assert!((load.health() - 0.2).abs() < 1e-9, "{}", load.health());
        assert_eq!(load.stats(1).unwrap().busy_ns, 80_000_000);
    }

    #[test]
    fn health_falls_as_sessions_fill_capacity() {
        let mut load = Load::new(2, 10); // 20 sessions in all
        let t0 = Instant::now();
        let mut previous = 1.1;
        for sessions in [0, 5, 10, 15, 20] {
            load.record(t0, report(0, 0, sessions, 0));
            let h = load.health();
            assert!(
                h < previous,
                "{sessions} sessions: {h} not below {previous}"
            );
            previous = h;
        }
        load.record(t0, report(0, 0, 30, 0));
        assert_eq!(load.health(), 0.0, "over capacity");
    }

    #[test]
    fn health_falls_with_overload_losses_but_not_for_a_stray_packet() {
        use shared::DropReason::{Overflow, SendFailed};
        let mut load = Load::new(1, 1000);
        let t0 = Instant::now();
        load.record(t0, report(0, 0, 0, 0));
        let t1 = t0 + Duration::from_millis(250);
        load.record_drops(0, drops(SendFailed, 10));
        load.record(t1, report(0, 0, 0, 10)); // few packets: ignored
        assert_eq!(load.health(), 1.0);
        let t2 = t1 + Duration::from_millis(250);
        // 750 read, 250 lost in a full socket buffer: a quarter lost.
        let mut lost = drops(Overflow, 250);
        lost.add(SendFailed, 10);
        load.record_drops(0, lost);
        load.record(t2, report(0, 0, 0, 760));
        assert!((load.health() - 0.75).abs() < 1e-9, "{}", load.health());
    }

    #[test]
    fn junk_is_counted_but_is_not_load() {
        use shared::DropReason::{AuthFailed, Malformed, UnknownSsrc};
        let mut load = Load::new(1, 1000);
        let t0 = Instant::now();
        load.record(t0, report(0, 0, 0, 0));
        let mut junk = drops(AuthFailed, 100_000);
        junk.add(Malformed, 100_000);
        junk.add(UnknownSsrc, 100_000);
        load.record_drops(0, junk);
        load.record(t0 + Duration::from_millis(250), report(0, 0, 0, 300_000));
        assert_eq!(load.health(), 1.0);
        assert_eq!(load.drops(0).unwrap().total(), 300_000);
    }
}
