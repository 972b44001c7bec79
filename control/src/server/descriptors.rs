//! The process's open-file limit: raised to the hard limit at start-up so
//! the connection caps, not the kernel, decide when to refuse.

use nix::sys::resource::{getrlimit, setrlimit, Resource};

/// The soft `RLIMIT_NOFILE` before and after raising it to the hard limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct OpenFiles {
    /// The soft limit found at start-up.
    pub was: u64,
    /// The soft limit now (the hard limit, unless raising failed).
    pub now: u64,
}

/// Raises the soft open-file limit to the hard limit. When the hard limit
/// is unlimited (or raising fails) the soft limit is left as it is.
pub(super) fn raise_open_file_limit() -> std::io::Result<OpenFiles> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft >= hard || hard == nix::sys::resource::RLIM_INFINITY {
        return Ok(OpenFiles {
            was: soft,
            now: soft,
        });
    }
    match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
        Ok(()) => Ok(OpenFiles {
            was: soft,
            now: hard,
        }),
        Err(e) => {
            tracing::warn!(soft, hard, %e, "cannot raise the open-file limit");
            Ok(OpenFiles {
                was: soft,
                now: soft,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_limit_ends_at_the_hard_limit() {
        let files = raise_open_file_limit().unwrap();
        let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        assert_eq!(files.now, soft);
        assert!(files.now >= files.was);
        if hard != nix::sys::resource::RLIM_INFINITY {
            assert_eq!(soft, hard);
        }
    }
}
