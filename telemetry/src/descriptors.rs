//! Running out of file descriptors without leaving clients hanging.
//!
//! At the per-process limit (EMFILE) or the system's (ENFILE) `accept` fails and leaves the
//! connection in the listener's backlog: retrying only spins, and the client waits until it
//! times out. The classic way out is to hold one descriptor in reserve: release it, accept
//! the waiting connection with the descriptor that frees, answer it, close it, and take the
//! reserve back. [`DescriptorReserve`] is that reserve.

use std::fs::File;
use std::io;

use rustix::io::Errno;
use rustix::process::{Resource, getrlimit};

/// Whether `error` says the process or the system has no descriptor left.
pub fn is_exhaustion(error: &io::Error) -> bool {
    matches!(
        Errno::from_io_error(error),
        Some(Errno::MFILE | Errno::NFILE)
    )
}

/// One descriptor held back so that a listener can still answer at the descriptor limit.
#[derive(Debug)]
pub struct DescriptorReserve {
    spare: Option<File>,
}

impl DescriptorReserve {
    /// Takes the reserve now, while descriptors are plentiful.
    pub fn new() -> Self {
        Self {
            spare: open_spare().ok(),
        }
    }

    /// Runs `work` with the reserve's descriptor free for it to use, and takes the reserve
    /// back afterwards. `None` without running `work` when there is no reserve to release:
    /// another thread took the descriptor the last time, and none has freed since.
    pub fn with_released<T>(&mut self, work: impl FnOnce() -> T) -> Option<T> {
        if self.spare.is_none() {
            self.spare = open_spare().ok();
        }
        drop(self.spare.take()?);
        let done = work();
        // Another thread may win the freed descriptor; the next call tries again.
        self.spare = open_spare().ok();
        Some(done)
    }

    /// Whether the reserve is held.
    pub fn is_held(&self) -> bool {
        self.spare.is_some()
    }
}

impl Default for DescriptorReserve {
    fn default() -> Self {
        Self::new()
    }
}

/// The process's descriptor limit (the soft RLIMIT_NOFILE); `None` for unlimited.
pub fn limit() -> Option<u64> {
    getrlimit(Resource::Nofile).current
}

/// Whether the process can open one more descriptor right now: opens one and closes it.
pub fn can_open_one() -> bool {
    open_spare().is_ok()
}

fn open_spare() -> io::Result<File> {
    File::open("/dev/null")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_two_limits_count_as_exhaustion() {
        let error = |errno: Errno| io::Error::from_raw_os_error(errno.raw_os_error());
        assert!(is_exhaustion(&error(Errno::MFILE)));
        assert!(is_exhaustion(&error(Errno::NFILE)));
        assert!(!is_exhaustion(&error(Errno::AGAIN)));
        assert!(!is_exhaustion(&error(Errno::CONNABORTED)));
        assert!(!is_exhaustion(&io::Error::other("not an OS error")));
    }

    #[test]
    fn the_reserve_is_free_while_the_work_runs_and_held_again_after() {
        let mut reserve = DescriptorReserve::new();
        assert!(reserve.is_held());
        let held_during = reserve.with_released(can_open_one);
        assert_eq!(held_during, Some(true));
        assert!(reserve.is_held());
    }
}
