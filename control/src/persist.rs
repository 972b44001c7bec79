//! What control saves so that a new control can take over without dropping
//! a call: the registry ([`registry::Saved`]), LVSP's numbered INFOs, and
//! which data plane serves them.
//!
//! The state lives in one file, `state.json`, in the state directory
//! (`--state-dir`). It holds session keys and tokens, so the directory must
//! be the server user's own and closed to everybody else (0700; one that
//! group or others can enter is refused), and the file is created 0600. A
//! save writes a temporary file and renames it over the old one: a control
//! killed in the middle leaves the previous save whole.
//!
//! The server saves within [`SAVE_EVERY`] of a change (longer when saves
//! are slow: at most a tenth of its time goes to them), so a control killed
//! without warning loses at most that much: a session identified in that
//! window is unknown to its successor (the client identifies afresh), and a
//! client that heard more than the save kept resumes with nothing missed
//! re-delivered (`Registry::resume` catches its stream up).

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use zeroize::Zeroize;

use crate::{lvsp, registry};

/// How often the server looks for changes to save (at most: a save that
/// took `t` waits `10 t` before the next one).
pub const SAVE_EVERY: Duration = Duration::from_millis(20);

/// Bumped when [`Snapshot`] changes shape; a save of another format is not
/// read (the new control starts empty, as without a save).
pub const FORMAT: u32 = 1;

const FILE: &str = "state.json";
const TEMPORARY: &str = "state.json.tmp";

/// Why the state directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Creating, reading or writing failed.
    #[error("state directory {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Other users could enter it or read what is in it.
    #[error(
        "state directory {path}: mode {mode:o} lets other users reach session keys (want 0700)"
    )]
    Permissions {
        /// The directory.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// Another user owns it.
    #[error("state directory {path}: owned by uid {owner}, not by this user")]
    Owner {
        /// The directory.
        path: PathBuf,
        /// Its owner.
        owner: u32,
    },
    /// Another control runs on it.
    #[error("state directory {0}: another control is using it")]
    Busy(PathBuf),
}

/// The data plane the saved sessions run on: a new control takes it over
/// if it still runs (same process, same start) and holds the region.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedDataplane {
    /// Its process id.
    pub pid: u32,
    /// Its start time (`/proc/<pid>/stat` field 22, clock ticks since
    /// boot): a pid reused by another process does not match.
    pub started: u64,
    /// The UDP port it serves.
    pub udp_port: u16,
}

/// Everything saved.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Snapshot {
    /// [`FORMAT`].
    pub format: u32,
    /// Wall-clock time of the save, milliseconds since the Unix epoch: a
    /// new control ages what it restores by the time since.
    pub saved_at_ms: u64,
    /// The registry.
    pub registry: registry::Saved,
    /// LVSP's numbered INFOs (a RESUME from Litecord re-delivers them).
    pub lvsp: lvsp::Replay,
    /// The data plane, when control started one that outlives it.
    pub dataplane: Option<SavedDataplane>,
}

impl Snapshot {
    /// Wall time since the save (zero if the clock went back).
    pub fn age(&self, now: SystemTime) -> Duration {
        let saved = UNIX_EPOCH + Duration::from_millis(self.saved_at_ms);
        now.duration_since(saved).unwrap_or_default()
    }
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms(now: SystemTime) -> u64 {
    now.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The state directory, locked for this process (an exclusive `flock` on
/// `DIR/lock`): two controls never share one, so the second can neither
/// take the first one's data plane nor write over its save.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
    _lock: std::sync::Arc<std::fs::File>,
}

impl Store {
    /// Opens (creating it 0700 if missing) the state directory, refusing
    /// one another user owns or can enter.
    pub fn open(dir: impl AsRef<Path>) -> Result<Store, StateError> {
        let dir = dir.as_ref().to_path_buf();
        let io = |source| StateError::Io {
            path: dir.clone(),
            source,
        };
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io(e)),
        }
        let meta = std::fs::metadata(&dir).map_err(io)?;
        if !meta.is_dir() {
            return Err(io(std::io::Error::from(std::io::ErrorKind::NotADirectory)));
        }
        let me = nix::unistd::geteuid().as_raw();
        if meta.uid() != me {
            return Err(StateError::Owner {
                path: dir,
                owner: meta.uid(),
            });
        }
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(StateError::Permissions { path: dir, mode });
        }
        let lock = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(dir.join("lock"))
            .map_err(io)?;
        use nix::fcntl::{flock, FlockArg};
        use std::os::fd::AsRawFd;
        // Released when the last clone of the store goes (or the process).
        if flock(lock.as_raw_fd(), FlockArg::LockExclusiveNonblock).is_err() {
            return Err(StateError::Busy(dir));
        }
        Ok(Store {
            dir,
            _lock: std::sync::Arc::new(lock),
        })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The last save, if there is one this build can read. A file that
    /// does not parse is moved aside (`state.json.bad`) and reported.
    pub fn load(&self) -> Result<Option<Snapshot>, StateError> {
        let path = self.dir.join(FILE);
        let mut bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(StateError::Io { path, source }),
        };
        // The format first: a save of another shape is not an error.
        #[derive(Deserialize)]
        struct Format {
            format: u32,
        }
        let parsed = match serde_json::from_slice::<Format>(&bytes) {
            Ok(f) if f.format != FORMAT => {
                bytes.zeroize();
                tracing::warn!(format = f.format, "saved state of another format ignored");
                return Ok(None);
            }
            _ => serde_json::from_slice::<Snapshot>(&bytes),
        };
        bytes.zeroize();
        match parsed {
            Ok(s) => Ok(Some(s)),
            Err(e) => {
                // Where, not what: serde's message may quote a value (a
                // token) from the file.
                let (line, column) = (e.line(), e.column());
                tracing::error!(
                    kind = ?e.classify(),
                    line,
                    column,
                    "saved state unreadable; moved aside, starting empty"
                );
                let _ = std::fs::rename(&path, self.dir.join("state.json.bad"));
                Ok(None)
            }
        }
    }

    /// Replaces the save with `snapshot` (temporary file 0600, then an
    /// atomic rename). The serialized bytes are wiped afterwards.
    pub fn save(&self, snapshot: &Snapshot) -> Result<(), StateError> {
        let mut bytes = serde_json::to_vec(snapshot).unwrap_or_default();
        let result = self.write(&bytes);
        bytes.zeroize();
        result
    }

    fn write(&self, bytes: &[u8]) -> Result<(), StateError> {
        let tmp = self.dir.join(TEMPORARY);
        let io = |path: &Path, source| StateError::Io {
            path: path.to_path_buf(),
            source,
        };
        let _ = std::fs::remove_file(&tmp);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| io(&tmp, e))?;
        file.write_all(bytes).map_err(|e| io(&tmp, e))?;
        drop(file);
        let path = self.dir.join(FILE);
        std::fs::rename(&tmp, &path).map_err(|e| io(&path, e))
    }

    /// Removes the save (a planned stop that ended every call, so nothing
    /// is left to take over).
    pub fn clear(&self) {
        let _ = std::fs::remove_file(self.dir.join(FILE));
    }
}

/// The start time of process `pid` (`/proc/<pid>/stat` field 22), if it
/// exists.
pub fn process_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces:
    // count fields after its closing parenthesis (field 3 is the first).
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(tag: &str) -> PathBuf {
        std::env::temp_dir().join(format!(
            "voice-state-{tag}-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ))
    }

    #[test]
    fn the_directory_is_private_and_the_file_too() {
        let dir = temp_dir("private");
        let store = Store::open(&dir).unwrap();
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        assert!(store.load().unwrap().is_none(), "nothing saved yet");
        let snapshot = Snapshot {
            format: FORMAT,
            saved_at_ms: 5,
            registry: registry::Registry::new(1, rand::SeedableRng::seed_from_u64(1))
                .save(std::time::Instant::now()),
            lvsp: lvsp::Replay::new(4),
            dataplane: Some(SavedDataplane {
                pid: 1,
                started: 2,
                udp_port: 3,
            }),
        };
        store.save(&snapshot).unwrap();
        let file = std::fs::metadata(dir.join(FILE)).unwrap();
        assert_eq!(file.permissions().mode() & 0o777, 0o600);
        let back = store.load().unwrap().unwrap();
        assert_eq!(back.dataplane, snapshot.dataplane);
        // A directory others can enter is refused.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(matches!(
            Store::open(&dir),
            Err(StateError::Permissions { mode: 0o755, .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_directory_is_used_by_one_control_at_a_time() {
        let dir = temp_dir("busy");
        let first = Store::open(&dir).unwrap();
        assert!(matches!(Store::open(&dir), Err(StateError::Busy(_))));
        drop(first);
        Store::open(&dir).expect("free again");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_unreadable_save_is_moved_aside() {
        let dir = temp_dir("bad");
        let store = Store::open(&dir).unwrap();
        std::fs::write(dir.join(FILE), b"{ not json").unwrap();
        assert!(store.load().unwrap().is_none());
        assert!(dir.join("state.json.bad").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_process_start_time_is_read_and_a_missing_process_has_none() {
        let me = process_start(std::process::id());
        assert!(me.is_some());
        assert_eq!(me, process_start(std::process::id()));
        assert_eq!(process_start(u32::MAX), None);
    }
}
