//! The shared-memory region: a header both sides validate, then per core a
//! command ring and an event ring.
//!
//! ```text
//! offset 0    Header (128 bytes)
//! then        core 0 command ring, core 0 event ring, core 1 command ring, ...
//! then        the counter table: 16 bytes per session slot
//! ```
//!
//! Every ring starts on a 128-byte boundary (header size, ring header size and
//! slot size are all multiples of 128).
//!
//! The region carries session keys in flight, so no other user may read it:
//! by default it is an anonymous memfd (gone with the last process that maps
//! it, never a file anybody could find after a crash), reached by the child
//! through `/proc/<control pid>/fd/<n>`; a named file (for a dataplane the
//! operator starts) is created with mode 0600.
//!
//! The header names the control process that holds the control side
//! ([`Region::control_pid`]). A dataplane watches that process, and when it
//! is gone keeps forwarding for a bounded window in which a new control
//! may take the region over ([`Region::adopt`], [`Region::claim_control`]):
//! a control restart does not drop a call.

use std::fs::OpenOptions;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::message::{Command, Event, SLOT_SIZE};
use crate::ring::{ring_bytes, Consumer, Corrupt, Producer};

/// First 8 bytes of a region: "VOICESHM" in ASCII.
pub const MAGIC: u64 = u64::from_le_bytes(*b"VOICESHM");
/// Bumped whenever the header, ring or message layout changes.
pub const LAYOUT_VERSION: u32 = 5;

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
    /// A ring's indices are corrupt (a stale or damaged region).
    #[error("core {core}: {source}")]
    Ring {
        /// The core whose ring is corrupt.
        core: u32,
        /// What the indices said.
        source: Corrupt,
    },
    /// A region file other users could read.
    #[error("shared memory {path}: mode {mode:o} lets other users read session keys (want 0600)")]
    Permissions {
        /// The region's file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
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
    /// Entries of the counter table (1..=1 << 20, 16 bytes each): how many
    /// sessions can be keyed at once on the whole data plane. Default 65536.
    pub counter_slots: u32,
}

impl RegionConfig {
    /// The default ring sizes for `cores` cores.
    pub fn new(cores: u32) -> Self {
        RegionConfig {
            cores,
            command_slots: 1024,
            event_slots: 1024,
            counter_slots: 65536,
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
        if !(1..=1 << 20).contains(&self.counter_slots) {
            return Err(format!(
                "counter_slots must be 1..=1048576, got {}",
                self.counter_slots
            ));
        }
        Ok(())
    }

    fn counters_offset(&self) -> usize {
        HEADER_BYTES
            + self.cores as usize * (ring_bytes(self.command_slots) + ring_bytes(self.event_slots))
    }

    fn len(&self) -> usize {
        self.counters_offset() + self.counter_slots as usize * COUNTER_ENTRY_BYTES
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
    counter_slots: u32,
    /// The process id of the control holding the control side: written
    /// by the creator, replaced (compare-and-swap) by a control that takes
    /// the region over. SeqCst: two controls racing for it must agree.
    control_pid: AtomicU32,
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
    /// Device and inode of the region's file when it was mapped.
    identity: (u64, u64),
    /// The open file: for a memfd, what keeps [`Region::path`] valid.
    _file: std::fs::File,
    /// An anonymous memfd (reached through `/proc`), not a named file.
    anonymous: bool,
}

/// A `/proc/<pid>/fd/<n>` path: how an anonymous memfd is reached.
fn path_is_proc(path: &Path) -> bool {
    path.starts_with("/proc")
}

/// Device and inode of an open file.
fn identity(file: &std::fs::File) -> std::io::Result<(u64, u64)> {
    let m = file.metadata()?;
    Ok((m.dev(), m.ino()))
}

/// A table in shared memory with one entry per session slot (control hands
/// a slot to each keyed session):
///
/// - the **nonce mark**: the high-water mark of the nonce counters a core
///   has reserved for the session, so a restarted core (same region)
///   continues above it and never seals twice with one nonce under one key;
/// - the **alive mark**: when a keepalive last came from the session's
///   proven address (monotonic milliseconds), written by whichever core the
///   kernel handed the keepalive to, read by the owner core when it decides
///   whether the address went idle.
///
/// Indices out of range read as 0 and ignore stores; control validates
/// slots when it hands them out.
pub struct Counters {
    base: *const [AtomicU64; 2],
    len: usize,
    _memory: Arc<dyn Send + Sync>,
}

impl Clone for Counters {
    /// Another handle to the same table.
    fn clone(&self) -> Counters {
        Counters {
            base: self.base,
            len: self.len,
            _memory: self._memory.clone(),
        }
    }
}

impl std::fmt::Debug for Counters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Counters").field("len", &self.len).finish()
    }
}

// SAFETY: the pointer targets atomics kept alive by `_memory` (a shared
// mapping or an owned slice); atomics may be used from any thread.
unsafe impl Send for Counters {}
// SAFETY: as above; every access is an atomic operation.
unsafe impl Sync for Counters {}

/// Bytes of one [`Counters`] entry.
const COUNTER_ENTRY_BYTES: usize = 16;

impl Counters {
    /// A table of `len` entries in private memory (tests, benchmarks).
    pub fn in_memory(len: usize) -> Counters {
        let memory: Arc<[[AtomicU64; 2]]> = (0..len)
            .map(|_| [AtomicU64::new(0), AtomicU64::new(0)])
            .collect();
        Counters {
            base: memory.as_ptr(),
            len,
            _memory: Arc::new(memory),
        }
    }

    /// Number of slots.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the table has no slot.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn get(&self, slot: u32) -> Option<&[AtomicU64; 2]> {
        let i = slot as usize;
        // SAFETY: `i < len` and the table of `len` entries is alive while
        // `_memory` is (it is owned by self); 8-byte alignment holds for
        // the region's 128-byte aligned table and for the owned slice.
        (i < self.len).then(|| unsafe { &*self.base.add(i) })
    }

    /// The nonce mark of `slot`.
    pub fn nonce_mark(&self, slot: u32) -> u64 {
        // Acquire pairs with `raise_nonce_mark`'s Release (a restarted core
        // reads what the previous one reserved).
        self.get(slot).map_or(0, |c| c[0].load(Ordering::Acquire))
    }

    /// Raises the nonce mark of `slot` to `value` (never lowers it).
    pub fn raise_nonce_mark(&self, slot: u32, value: u64) {
        if let Some(c) = self.get(slot) {
            c[0].fetch_max(value, Ordering::Release);
        }
    }

    /// When a keepalive last came from the slot's address (0: never).
    pub fn alive(&self, slot: u32) -> u64 {
        // Relaxed: a hint about time, ordered with nothing else.
        self.get(slot).map_or(0, |c| c[1].load(Ordering::Relaxed))
    }

    /// Records a keepalive from the slot's address at `now`.
    pub fn mark_alive(&self, slot: u32, now: u64) {
        if let Some(c) = self.get(slot) {
            c[1].fetch_max(now, Ordering::Relaxed);
        }
    }
}

impl Region {
    /// Creates (or replaces) the region file at `path`, mode 0600, and
    /// initialises it. The file is removed when this handle is dropped;
    /// attached processes keep their mapping.
    pub fn create(path: impl AsRef<Path>, config: RegionConfig) -> Result<Region, RegionError> {
        let path = path.as_ref().to_path_buf();
        config.validate().map_err(RegionError::Config)?;
        let io = |source| RegionError::Io {
            path: path.clone(),
            source,
        };
        let _ = std::fs::remove_file(&path);
        // Created 0600 in the open call itself: there is no moment at which
        // another user could open it.
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(io)?;
        Region::init(file, config, path, true)
    }

    /// Creates the region in an anonymous memfd: no file exists, the memory
    /// goes away with the last process mapping it, and another process of
    /// the same user reaches it through [`Region::path`]
    /// (`/proc/<pid>/fd/<n>`) while this handle lives.
    pub fn create_anonymous(config: RegionConfig) -> Result<Region, RegionError> {
        config.validate().map_err(RegionError::Config)?;
        let name = c"voice-region";
        // SAFETY: a NUL-terminated name and valid flags; the call creates a
        // new descriptor or fails.
        let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(RegionError::Io {
                path: PathBuf::from("memfd"),
                source: std::io::Error::last_os_error(),
            });
        }
        // SAFETY: `fd` was just created and is owned by nobody else.
        let file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        let path = PathBuf::from(format!("/proc/{}/fd/{fd}", std::process::id()));
        // memfds start 0777; /proc already limits who may open the path,
        // and the mode says the same to anyone who checks.
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(|source| RegionError::Io {
                path: path.clone(),
                source,
            })?;
        Region::init(file, config, path, false)
    }

    /// Sizes, maps and initialises a fresh, private, zero-filled file.
    fn init(
        file: std::fs::File,
        config: RegionConfig,
        path: PathBuf,
        owner: bool,
    ) -> Result<Region, RegionError> {
        let io = |source| RegionError::Io {
            path: path.clone(),
            source,
        };
        let len = config.len();
        file.set_len(len as u64).map_err(io)?;
        let map = Mapping::map(&file, len).map_err(io)?;
        // The file is fresh and zero-filled, so every ring index and every
        // counter starts at 0.
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
            (*h).counter_slots = config.counter_slots;
            (*h).control_pid = AtomicU32::new(std::process::id());
        }
        // Release: an attacher that Acquire-loads MAGIC sees the fields above.
        map.header().magic.store(MAGIC, Ordering::Release);
        Region::new(map, config, path, owner, file)
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
        let meta = file.metadata().map_err(io)?;
        let mode = meta.permissions().mode() & 0o777;
        if meta.is_file() && mode & 0o077 != 0 {
            return Err(RegionError::Permissions { path, mode });
        }
        let file_len = meta.len() as usize;
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
            counter_slots: h.counter_slots,
        };
        config.validate().map_err(layout)?;
        if h.region_len as usize != config.len() || file_len < config.len() {
            return Err(layout(format!(
                "header says {} bytes, layout needs {}, file has {file_len}",
                h.region_len,
                config.len()
            )));
        }
        Region::new(map, config, path, false, file)
    }

    /// Takes over a region another control created, through a path to an
    /// open descriptor of it (`/proc/<dataplane pid>/fd/<n>` for a memfd),
    /// as [`Region::attach`] does; afterwards [`Region::path`] names this
    /// process's own descriptor, so a dataplane started from here reaches
    /// it even after the process the path came from is gone. The caller
    /// still has to [`Region::claim_control`] it.
    pub fn adopt(path: impl AsRef<Path>) -> Result<Region, RegionError> {
        let mut region = Region::attach(path)?;
        let fd = region._file.as_raw_fd();
        if region.anonymous {
            // Same memfd, same identity: only the way to reach it changes.
            region.path = PathBuf::from(format!("/proc/{}/fd/{fd}", std::process::id()));
        }
        Ok(region)
    }

    /// The process id of the control that holds the control side.
    pub fn control_pid(&self) -> u32 {
        self.map.header().control_pid.load(Ordering::SeqCst)
    }

    /// Makes `pid` the control holding the region if `expected` still
    /// does; returns the holder it found otherwise. Two controls that try
    /// to take over the same region cannot both succeed.
    pub fn claim_control(&self, expected: u32, pid: u32) -> Result<(), u32> {
        self.map
            .header()
            .control_pid
            .compare_exchange(expected, pid, Ordering::SeqCst, Ordering::SeqCst)
            .map(|_| ())
    }

    /// Whether the region is an anonymous memfd (its path is a
    /// `/proc/<pid>/fd/<n>` link that dies with that process), not a file.
    pub fn is_anonymous(&self) -> bool {
        self.anonymous
    }

    fn new(
        map: Mapping,
        config: RegionConfig,
        path: PathBuf,
        owner: bool,
        file: std::fs::File,
    ) -> Result<Region, RegionError> {
        let identity = identity(&file).map_err(|source| RegionError::Io {
            path: path.clone(),
            source,
        })?;
        let anonymous = path_is_proc(&path);
        Ok(Region {
            map: Arc::new(map),
            taken: Mutex::new(vec![[false; 2]; config.cores as usize]),
            config,
            path,
            owner,
            identity,
            anonymous,
            _file: file,
        })
    }

    /// Whether [`Region::path`] still names this region. False once the
    /// file was removed or replaced, or (for a memfd) the process that
    /// created it is gone: a dataplane attached to a stale region must stop
    /// and leave the UDP port's reuseport group to the current one.
    pub fn is_current(&self) -> bool {
        std::fs::File::open(&self.path)
            .and_then(|f| identity(&f))
            .is_ok_and(|id| id == self.identity)
    }

    /// The table of per-session nonce counter high-water marks.
    pub fn counters(&self) -> Counters {
        Counters {
            base: self
                .map
                .as_ptr()
                .wrapping_add(self.config.counters_offset())
                .cast(),
            len: self.config.counter_slots as usize,
            _memory: self.map.clone(),
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

    pub(crate) fn command_ring_offset(&self, core: u32) -> usize {
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
        let ring = |source| RegionError::Ring { core, source };
        // SAFETY: offsets and sizes come from the validated config; `take`
        // guarantees this process holds this side once, and by protocol the
        // other process holds only the core side.
        let ends = unsafe {
            Producer::new(self.map.clone(), c, self.config.command_slots).and_then(|p| {
                Ok((
                    p,
                    Consumer::new(self.map.clone(), e, self.config.event_slots)?,
                ))
            })
        };
        ends.map_err(|source| {
            // Nothing was taken after all.
            self.release(core, 0);
            ring(source)
        })
    }

    /// A core's ends: the command consumer and event producer.
    pub fn core_side(
        &self,
        core: u32,
    ) -> Result<(Consumer<Command>, Producer<Event>), RegionError> {
        self.take(core, 1)?;
        let (c, e) = (self.command_ring_offset(core), self.event_ring_offset(core));
        let ring = |source| RegionError::Ring { core, source };
        // SAFETY: as in `control_side`, for the opposite ends.
        let ends = unsafe {
            Consumer::new(self.map.clone(), c, self.config.command_slots).and_then(|c| {
                Ok((
                    c,
                    Producer::new(self.map.clone(), e, self.config.event_slots)?,
                ))
            })
        };
        ends.map_err(|source| {
            // Nothing was taken after all: a repaired ring can be attached.
            self.release(core, 1);
            ring(source)
        })
    }

    fn release(&self, core: u32, side: usize) {
        let mut taken = self.taken.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = taken.get_mut(core as usize) {
            t[side] = false;
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
            counter_slots: 10,
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
        let private = |bytes: &[u8]| {
            use std::io::Write;
            let _ = std::fs::remove_file(&p);
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&p)
                .unwrap();
            f.write_all(bytes).unwrap();
        };
        private(&[0u8; 10]);
        assert!(matches!(
            Region::attach(&p),
            Err(RegionError::Layout { .. })
        ));
        private(&[0u8; 4096]);
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
    fn region_files_are_private() {
        let p = temp_path("mode");
        let r = Region::create(&p, RegionConfig::new(1)).unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // A region file others can read is refused (keys would leak).
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            Region::attach(&p),
            Err(RegionError::Permissions { mode: 0o644, .. })
        ));
        drop(r);
    }

    #[test]
    fn anonymous_region_is_reached_through_proc_and_leaves_no_file() {
        let r = Region::create_anonymous(RegionConfig::new(2)).unwrap();
        let path = r.path().to_path_buf();
        assert!(path.starts_with("/proc"), "{}", path.display());
        let attached = Region::attach(&path).unwrap();
        assert!(attached.is_current());
        attached.publish_udp_port(4000);
        assert_eq!(r.udp_port(), Some(4000));
        let (mut tx, _) = r.control_side(1).unwrap();
        let (mut rx, _) = attached.core_side(1).unwrap();
        tx.push(&Command::RemoveChannel { channel: 3 }).unwrap();
        assert_eq!(rx.pop(), Ok(Some(Command::RemoveChannel { channel: 3 })));
        drop(r);
        assert!(!attached.is_current(), "the creator's descriptor is gone");
        assert!(!path.exists());
    }

    #[test]
    fn an_adopted_memfd_is_reached_through_the_adopter_and_claimed_once() {
        let region = Region::create_anonymous(RegionConfig::new(1)).unwrap();
        let me = std::process::id();
        assert_eq!(region.control_pid(), me, "the creator holds it");
        region.counters().raise_nonce_mark(3, 4096);
        let adopted = Region::adopt(region.path()).unwrap();
        assert!(adopted.is_anonymous());
        assert_ne!(adopted.path(), region.path(), "its own descriptor");
        assert!(adopted.path().starts_with(format!("/proc/{me}/fd")));
        assert_eq!(adopted.counters().nonce_mark(3), 4096, "the same memory");
        drop(region);
        // Still reachable through the adopter's path once the creator's
        // handle (and its descriptor) is gone.
        assert!(adopted.is_current());
        assert_eq!(
            Region::attach(adopted.path())
                .unwrap()
                .counters()
                .nonce_mark(3),
            4096
        );
        assert_eq!(adopted.claim_control(me, 77), Ok(()));
        assert_eq!(adopted.claim_control(me, 78), Err(77), "77 took it first");
        assert_eq!(adopted.control_pid(), 77);
    }

    #[test]
    fn a_replaced_file_is_not_current() {
        let p = temp_path("stale");
        let first = Region::create(&p, RegionConfig::new(1)).unwrap();
        let attached = Region::attach(&p).unwrap();
        assert!(attached.is_current());
        // A new control replaces the file: the old attachment is stale.
        std::mem::forget(first);
        let second = Region::create(&p, RegionConfig::new(1)).unwrap();
        assert!(!attached.is_current());
        drop(second);
        assert!(!attached.is_current());
    }

    #[test]
    fn counters_outlive_an_attachment() {
        let r = Region::create_anonymous(RegionConfig {
            counter_slots: 4,
            ..RegionConfig::new(1)
        })
        .unwrap();
        {
            let dp = Region::attach(r.path()).unwrap();
            let c = dp.counters();
            assert_eq!(c.len(), 4);
            c.raise_nonce_mark(2, 4096);
            c.raise_nonce_mark(2, 100); // never lowered
            c.raise_nonce_mark(9, 1); // out of range: ignored
            c.mark_alive(3, 55);
        }
        let again = Region::attach(r.path()).unwrap().counters();
        assert_eq!(again.nonce_mark(2), 4096);
        assert_eq!(again.nonce_mark(9), 0);
        assert_eq!((again.alive(3), again.alive(2)), (55, 0));
        let mem = Counters::in_memory(2);
        mem.raise_nonce_mark(1, 7);
        assert_eq!((mem.nonce_mark(0), mem.nonce_mark(1)), (0, 7));
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
                counter_slots: 1,
            },
            RegionConfig {
                counter_slots: 0,
                ..RegionConfig::new(1)
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
                Ok(Some(Event::Stats(s))) => {
                    assert_eq!(s.packets_in, u64::from(got));
                    assert_eq!(s.core, 1);
                    got += 1;
                }
                Ok(None) => std::thread::yield_now(),
                other => panic!("unexpected {other:?}"),
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
                Ok(Some(Command::RemoveSession { ssrc })) => {
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
                Ok(None) => std::thread::yield_now(),
                other => panic!("unexpected {other:?}"),
            }
        }
    }
}
