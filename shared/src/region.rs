//! The shared-memory region: a header both sides validate, then per core a
//! command ring and an event ring.
//!
//! ```text
//! offset 0    Header (128 bytes)
//! then        core 0 command ring, core 0 event ring, core 1 command ring, ...
//! ```
//!
//! Every ring starts on a 128-byte boundary (header size, ring header size and
//! slot size are all multiples of 128).

use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::message::{Command, Event, SLOT_SIZE};
use crate::ring::{ring_bytes, Consumer, Producer};

/// First 8 bytes of a region: "VOICESHM" in ASCII.
pub const MAGIC: u64 = u64::from_le_bytes(*b"VOICESHM");
/// Bumped whenever the header, ring or message layout changes.
pub const LAYOUT_VERSION: u32 = 2;

const HEADER_BYTES: usize = 128;

/// Errors creating or attaching a region.
#[derive(Debug, thiserror::Error)]
pub enum RegionError {
    /// Creating, opening, sizing or mapping the file failed.
    #[error("shared memory {path}: {source}")]
    Io {
        /// The region's file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file does not start with [`MAGIC`] (not a region, or not yet
    /// initialised).
    #[error("shared memory {0}: bad magic (not a voice region)")]
    BadMagic(PathBuf),
    /// The region was written by a build with another layout.
    #[error("shared memory {path}: layout version {found}, this build speaks {LAYOUT_VERSION}")]
    Version {
        /// The region's file.
        path: PathBuf,
        /// The version in the header.
        found: u32,
    },
    /// Header fields are inconsistent with each other or the file size.
    #[error("shared memory {path}: {what}")]
    Layout {
        /// The region's file.
        path: PathBuf,
        /// What did not add up.
        what: String,
    },
    /// A configuration was asked for that no region can have.
    #[error("invalid region config: {0}")]
    Config(String),
    /// A core index at or beyond the region's core count.
    #[error("core {core} out of range (region has {cores})")]
    NoSuchCore {
        /// The index asked for.
        core: u32,
        /// The region's core count.
        cores: u32,
    },
    /// This process already holds that end of that ring.
    #[error("core {0}: this side of its rings is already taken")]
    Taken(u32),
}

/// The shape of a region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegionConfig {
    /// Number of data-plane cores (1..=256).
    pub cores: u32,
    /// Slots per command ring (power of two, 2..=65536). Default 1024.
    pub command_slots: u32,
    /// Slots per event ring (power of two, 2..=65536). Default 1024.
    pub event_slots: u32,
}

impl RegionConfig {
    /// The default ring sizes for `cores` cores.
    pub fn new(cores: u32) -> Self {
        RegionConfig {
            cores,
            command_slots: 1024,
            event_slots: 1024,
        }
    }

    fn validate(&self) -> Result<(), String> {
        if !(1..=256).contains(&self.cores) {
            return Err(format!("cores must be 1..=256, got {}", self.cores));
        }
        for (name, n) in [
            ("command_slots", self.command_slots),
            ("event_slots", self.event_slots),
        ] {
            if !n.is_power_of_two() || !(2..=65536).contains(&n) {
                return Err(format!(
                    "{name} must be a power of two in 2..=65536, got {n}"
                ));
            }
        }
        Ok(())
    }

    fn len(&self) -> usize {
        HEADER_BYTES
            + self.cores as usize * (ring_bytes(self.command_slots) + ring_bytes(self.event_slots))
    }
}

#[repr(C)]
struct Header {
    /// Written last (Release) by the creator, read first (Acquire) on attach.
    magic: AtomicU64,
    version: u32,
    cores: u32,
    command_slots: u32,
    event_slots: u32,
    slot_size: u32,
    /// The UDP port the dataplane bound, published by it once its sockets
    /// are up (0 until then). Release on store, Acquire on load.
    udp_port: AtomicU32,
    region_len: u64,
}

const _: () = assert!(std::mem::size_of::<Header>() <= HEADER_BYTES);
const _: () = assert!(SLOT_SIZE % 128 == 0);

/// A shared mapping of the region's file; unmapped on drop.
#[derive(Debug)]
pub(crate) struct Mapping {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the mapping is plain shared memory; all concurrent access to it goes
// through the rings' atomics (see ring.rs), so sharing the pointer is sound.
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

impl Mapping {
    fn map(file: &std::fs::File, len: usize) -> std::io::Result<Mapping> {
        // SAFETY: a fresh shared read-write mapping of an open file of at
        // least `len` bytes; the kernel picks the address.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Mapping {
            ptr: ptr.cast(),
            len,
        })
    }

    pub(crate) fn as_ptr(&self) -> *mut u8 {
        self.ptr
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    fn header(&self) -> &Header {
        // SAFETY: every mapping is at least HEADER_BYTES long (checked before
        // mapping) and page-aligned; Header is plain data and an atomic.
        unsafe { &*(self.ptr as *const Header) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `map` mapped; no references into it
        // outlive the last Arc<Mapping>.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// A mapped region, on either side.
#[derive(Debug)]
pub struct Region {
    map: Arc<Mapping>,
    config: RegionConfig,
    path: PathBuf,
    /// Whether this handle created (and so removes) the file.
    owner: bool,
    /// Per core: control side taken, core side taken (in this process).
    taken: Mutex<Vec<[bool; 2]>>,
}

impl Region {
    /// Creates (or replaces) the region file at `path` and initialises it.
    /// The file is removed when this handle is dropped; attached processes
    /// keep their mapping.
    pub fn create(path: impl AsRef<Path>, config: RegionConfig) -> Result<Region, RegionError> {
        let path = path.as_ref().to_path_buf();
        config.validate().map_err(RegionError::Config)?;
        let io = |source| RegionError::Io {
            path: path.clone(),
            source,
        };
        let _ = std::fs::remove_file(&path);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io)?;
        let len = config.len();
        file.set_len(len as u64).map_err(io)?;
        let map = Mapping::map(&file, len).map_err(io)?;
        // The file is fresh and zero-filled, so every ring index starts at 0.
        // SAFETY: we are the only user of the fresh mapping; the header
        // fields other than `magic` are written before `magic` is published.
        unsafe {
            let h = map.as_ptr() as *mut Header;
            (*h).version = LAYOUT_VERSION;
            (*h).cores = config.cores;
            (*h).command_slots = config.command_slots;
            (*h).event_slots = config.event_slots;
            (*h).slot_size = SLOT_SIZE as u32;
            (*h).region_len = len as u64;
        }
        // Release: an attacher that Acquire-loads MAGIC sees the fields above.
        map.header().magic.store(MAGIC, Ordering::Release);
        Ok(Region::new(map, config, path, true))
    }

    /// Maps an existing region and checks its header against this build.
    pub fn attach(path: impl AsRef<Path>) -> Result<Region, RegionError> {
        let path = path.as_ref().to_path_buf();
        let io = |source| RegionError::Io {
            path: path.clone(),
            source,
        };
        let layout = |what: String| RegionError::Layout {
            path: path.clone(),
            what,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io)?;
        let file_len = file.metadata().map_err(io)?.len() as usize;
        if file_len < HEADER_BYTES {
            return Err(layout(format!(
                "file is {file_len} bytes, smaller than the header"
            )));
        }
        let map = Mapping::map(&file, file_len).map_err(io)?;
        let h = map.header();
        // Acquire pairs with the creator's Release store of the magic.
        if h.magic.load(Ordering::Acquire) != MAGIC {
            return Err(RegionError::BadMagic(path));
        }
        if h.version != LAYOUT_VERSION {
            return Err(RegionError::Version {
                path,
                found: h.version,
            });
        }
        if h.slot_size as usize != SLOT_SIZE {
            return Err(layout(format!(
                "slot size {} but this build uses {SLOT_SIZE}",
                h.slot_size
            )));
        }
        let config = RegionConfig {
            cores: h.cores,
            command_slots: h.command_slots,
            event_slots: h.event_slots,
        };
        config.validate().map_err(layout)?;
        if h.region_len as usize != config.len() || file_len < config.len() {
            return Err(layout(format!(
                "header says {} bytes, layout needs {}, file has {file_len}",
                h.region_len,
                config.len()
            )));
        }
        Ok(Region::new(map, config, path, false))
    }

    fn new(map: Mapping, config: RegionConfig, path: PathBuf, owner: bool) -> Region {
        Region {
            map: Arc::new(map),
            taken: Mutex::new(vec![[false; 2]; config.cores as usize]),
            config,
            path,
            owner,
        }
    }

    /// The region's shape, as read from (or written to) its header.
    pub fn config(&self) -> RegionConfig {
        self.config
    }

    /// The region's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Publishes the UDP port the dataplane's sockets are bound to (called
    /// by the dataplane once every core's socket is up).
    pub fn publish_udp_port(&self, port: u16) {
        // Release: control, on seeing the port, may rely on the sockets.
        self.map
            .header()
            .udp_port
            .store(u32::from(port), Ordering::Release);
    }

    /// Forgets the published port (control, before it starts a new
    /// dataplane on this region).
    pub fn clear_udp_port(&self) {
        self.map.header().udp_port.store(0, Ordering::Release);
    }

    /// The UDP port the dataplane published, once it has.
    pub fn udp_port(&self) -> Option<u16> {
        match self.map.header().udp_port.load(Ordering::Acquire) {
            0 => None,
            p => u16::try_from(p).ok(),
        }
    }

    fn command_ring_offset(&self, core: u32) -> usize {
        let per_core = ring_bytes(self.config.command_slots) + ring_bytes(self.config.event_slots);
        HEADER_BYTES + core as usize * per_core
    }

    pub(crate) fn event_ring_offset(&self, core: u32) -> usize {
        self.command_ring_offset(core) + ring_bytes(self.config.command_slots)
    }

    #[cfg(test)]
    pub(crate) fn mapping(&self) -> &Mapping {
        &self.map
    }

    fn take(&self, core: u32, side: usize) -> Result<(), RegionError> {
        if core >= self.config.cores {
            return Err(RegionError::NoSuchCore {
                core,
                cores: self.config.cores,
            });
        }
        let mut taken = self.taken.lock().unwrap_or_else(|e| e.into_inner());
        if std::mem::replace(&mut taken[core as usize][side], true) {
            return Err(RegionError::Taken(core));
        }
        Ok(())
    }

    /// Control's ends for one core: the command producer and event consumer.
    /// Once per core per process; the other process must take the other side.
    pub fn control_side(
        &self,
        core: u32,
    ) -> Result<(Producer<Command>, Consumer<Event>), RegionError> {
        self.take(core, 0)?;
        let (c, e) = (self.command_ring_offset(core), self.event_ring_offset(core));
        // SAFETY: offsets and sizes come from the validated config; `take`
        // guarantees this process holds this side once, and by protocol the
        // other process holds only the core side.
        unsafe {
            Ok((
                Producer::new(self.map.clone(), c, self.config.command_slots),
                Consumer::new(self.map.clone(), e, self.config.event_slots),
            ))
        }
    }

    /// A core's ends: the command consumer and event producer.
    pub fn core_side(
        &self,
        core: u32,
    ) -> Result<(Consumer<Command>, Producer<Event>), RegionError> {
        self.take(core, 1)?;
        let (c, e) = (self.command_ring_offset(core), self.event_ring_offset(core));
        // SAFETY: as in `control_side`, for the opposite ends.
        unsafe {
            Ok((
                Consumer::new(self.map.clone(), c, self.config.command_slots),
                Producer::new(self.map.clone(), e, self.config.event_slots),
            ))
        }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        if self.owner {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CoreStats;

    fn temp_path(tag: &str) -> PathBuf {
        std::env::temp_dir().join(format!(
            "voice-region-{tag}-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ))
    }

    #[test]
    fn attach_sees_creator_config() {
        let p = temp_path("cfg");
        let cfg = RegionConfig {
            cores: 3,
            command_slots: 64,
            event_slots: 32,
        };
        let created = Region::create(&p, cfg).unwrap();
        let attached = Region::attach(&p).unwrap();
        assert_eq!(attached.config(), cfg);
        assert_eq!(created.udp_port(), None);
        attached.publish_udp_port(50_000);
        assert_eq!(created.udp_port(), Some(50_000));
        created.clear_udp_port();
        assert_eq!(attached.udp_port(), None);
        drop(created);
        assert!(!p.exists(), "creator removes the file");
    }

    #[test]
    fn attach_rejects_garbage_and_mismatches() {
        let p = temp_path("bad");
        std::fs::write(&p, [0u8; 10]).unwrap();
        assert!(matches!(
            Region::attach(&p),
            Err(RegionError::Layout { .. })
        ));
        std::fs::write(&p, vec![0u8; 4096]).unwrap();
        assert!(matches!(Region::attach(&p), Err(RegionError::BadMagic(_))));
        std::fs::remove_file(&p).unwrap();

        let region = Region::create(&p, RegionConfig::new(1)).unwrap();
        let patch = |offset: usize, bytes: &[u8]| {
            use std::os::unix::fs::FileExt;
            let f = OpenOptions::new().write(true).open(&p).unwrap();
            f.write_all_at(bytes, offset as u64).unwrap();
        };
        patch(8, &99u32.to_le_bytes());
        let err = Region::attach(&p).unwrap_err();
        assert!(
            matches!(err, RegionError::Version { found: 99, .. }),
            "{err}"
        );
        patch(8, &LAYOUT_VERSION.to_le_bytes());
        patch(12, &7u32.to_le_bytes()); // cores: the length no longer adds up
        assert!(matches!(
            Region::attach(&p),
            Err(RegionError::Layout { .. })
        ));
        patch(12, &1u32.to_le_bytes());
        patch(16, &3u32.to_le_bytes()); // command_slots not a power of two
        assert!(matches!(
            Region::attach(&p),
            Err(RegionError::Layout { .. })
        ));
        patch(16, &1024u32.to_le_bytes());
        Region::attach(&p).unwrap();
        drop(region);
        assert!(matches!(Region::attach(&p), Err(RegionError::Io { .. })));
    }

    #[test]
    fn sides_are_taken_once() {
        let p = temp_path("take");
        let r = Region::create(&p, RegionConfig::new(2)).unwrap();
        let _a = r.control_side(1).unwrap();
        assert!(matches!(r.control_side(1), Err(RegionError::Taken(1))));
        assert!(matches!(
            r.core_side(2),
            Err(RegionError::NoSuchCore { .. })
        ));
        let _b = r.core_side(1).unwrap();
    }

    #[test]
    fn invalid_configs_are_refused() {
        for cfg in [
            RegionConfig::new(0),
            RegionConfig {
                cores: 1,
                command_slots: 100,
                event_slots: 8,
            },
        ] {
            assert!(matches!(
                Region::create(temp_path("inv"), cfg),
                Err(RegionError::Config(_))
            ));
        }
    }

    /// Two real processes: this test re-runs its own binary as the child,
    /// which attaches to the region, echoes every command back as an event
    /// and exits.
    #[test]
    fn across_two_processes() {
        let p = temp_path("proc");
        let region = Region::create(&p, RegionConfig::new(2)).unwrap();
        let (mut commands, mut events) = region.control_side(1).unwrap();
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "region::tests::child_process",
                "--ignored",
                "--nocapture",
            ])
            .env("VOICE_REGION_CHILD", &p)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        const N: u32 = 5000;
        let (mut sent, mut got) = (0u32, 0u32);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while got < N {
            assert!(std::time::Instant::now() < deadline, "child too slow");
            if sent < N
                && commands
                    .push(&Command::RemoveSession { ssrc: sent })
                    .is_ok()
            {
                sent += 1;
            }
            match events.pop() {
                Some(Ok(Event::Stats(s))) => {
                    assert_eq!(s.packets_in, u64::from(got));
                    assert_eq!(s.core, 1);
                    got += 1;
                }
                Some(other) => panic!("unexpected {other:?}"),
                None => std::thread::yield_now(),
            }
        }
        assert!(child.wait().unwrap().success());
    }

    /// The child half of `across_two_processes`; does nothing on its own.
    #[test]
    #[ignore = "run as a child process by across_two_processes"]
    fn child_process() {
        let path = std::env::var_os("VOICE_REGION_CHILD").expect("run by across_two_processes");
        let region = Region::attach(path).unwrap();
        assert_eq!(region.config().cores, 2);
        let (mut commands, mut events) = region.core_side(1).unwrap();
        let mut seen = 0u32;
        while seen < 5000 {
            match commands.pop() {
                Some(Ok(Command::RemoveSession { ssrc })) => {
                    assert_eq!(ssrc, seen);
                    let ev = Event::Stats(CoreStats {
                        core: 1,
                        packets_in: u64::from(ssrc),
                        ..CoreStats::default()
                    });
                    while events.push(&ev).is_err() {
                        std::thread::yield_now();
                    }
                    seen += 1;
                }
                Some(other) => panic!("unexpected {other:?}"),
                None => std::thread::yield_now(),
            }
        }
    }
}
