//! Recycling inputs: the worker's resident set size (from `/proc/self/statm`; exact, or
//! at most [`RSS_MAX_AGE`] old where that is enough) and the rule that decides when a
//! worker asks to be replaced. Pure Rust, unit-tested alone.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How old a reading [`Rss::read_recent`] may return. Reading `/proc/self/statm` is a
/// system call costing about a microsecond, an eighth of a small request's whole
/// budget; where a slightly stale value does (the scoreboard's RSS column), reusing a
/// reading for up to a second makes that negligible under load, while a worker serving
/// less than a request a second still reads after every request.
pub const RSS_MAX_AGE: Duration = Duration::from_secs(1);

/// The resident set size of this process, read from `/proc/self/statm`.
#[derive(Debug)]
pub struct Rss {
    /// `/proc/self/statm`, open for the process's life (one pread per reading).
    statm: Option<File>,
    /// Page size in bytes.
    page: u64,
    /// The time base of `read_at_ns`.
    epoch: Instant,
    /// When the last reading was taken (see [`Rss::now_ns`]; 0: never). Atomics rather
    /// than `Cell`s: the monitor holding this must be `Sync`.
    read_at_ns: AtomicU64,
    /// The last reading in bytes, `u64::MAX` for "could not read".
    last: AtomicU64,
}

impl Rss {
    /// Open `/proc/self/statm`; without /proc every reading is `None`.
    pub fn open() -> Rss {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        Rss {
            statm: File::open("/proc/self/statm").ok(),
            page: u64::try_from(page).unwrap_or(4096),
            epoch: Instant::now(),
            read_at_ns: AtomicU64::new(0),
            last: AtomicU64::new(u64::MAX),
        }
    }

    /// Current RSS in bytes, read now. `pm.max_memory` needs this: its contract is a
    /// measurement after each request.
    pub fn read(&self) -> Option<u64> {
        let rss = self.read_statm();
        self.remember(rss, self.now_ns());
        rss
    }

    /// RSS in bytes as of at most [`RSS_MAX_AGE`] ago: the last reading (by this or by
    /// [`Rss::read`]) is reused until it is that old, so calling this after every
    /// request costs a system call at most once a second. For display (the scoreboard),
    /// not for `pm.max_memory`. The first call always reads.
    pub fn read_recent(&self) -> Option<u64> {
        self.read_recent_as_of(self.now_ns())
    }

    /// Nanoseconds since `epoch`, plus one so that 0 stays "never read" (saturates after
    /// 584 years).
    fn now_ns(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).map_or(u64::MAX, |n| n.saturating_add(1))
    }

    /// [`Rss::read_recent`] at `now` (see [`Rss::now_ns`]).
    fn read_recent_as_of(&self, now: u64) -> Option<u64> {
        let read_at = self.read_at_ns.load(Ordering::Relaxed);
        if read_at != 0 && now.saturating_sub(read_at) < RSS_MAX_AGE.as_nanos() as u64 {
            let last = self.last.load(Ordering::Relaxed);
            return (last != u64::MAX).then_some(last);
        }
        let rss = self.read_statm();
        self.remember(rss, now);
        rss
    }

    fn remember(&self, rss: Option<u64>, now: u64) {
        self.last.store(rss.unwrap_or(u64::MAX), Ordering::Relaxed);
        self.read_at_ns.store(now, Ordering::Relaxed);
    }

    /// One pread of `/proc/self/statm`.
    fn read_statm(&self) -> Option<u64> {
        let mut buf = [0u8; 128];
        let n = self.statm.as_ref()?.read_at(&mut buf, 0).ok()?;
        parse_statm_resident(&buf[..n]).map(|pages| pages * self.page)
    }
}

/// The second field of `/proc/<pid>/statm` (resident pages).
pub fn parse_statm_resident(text: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(text).ok()?;
    text.split_ascii_whitespace().nth(1)?.parse().ok()
}

/// Why a worker asks to be replaced, if it should: checked after each request.
pub fn retire_reason(
    served: u64,
    max_requests: u64,
    rss: Option<u64>,
    max_memory: u64,
) -> Option<&'static str> {
    if max_requests > 0 && served >= max_requests {
        Some("max_requests")
    } else if max_memory > 0 && rss.is_some_and(|r| r > max_memory) {
        Some("max_memory")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statm_parsing() {
        assert_eq!(parse_statm_resident(b"12345 678 90 1 0 2 0\n"), Some(678));
        assert_eq!(parse_statm_resident(b"12345"), None);
        assert_eq!(parse_statm_resident(b""), None);
        assert_eq!(parse_statm_resident(b"1 x"), None);
        let rss = Rss::open().read().expect("RSS of the test process");
        assert!(rss > 100 * 1024, "{rss}");
    }

    #[test]
    fn recent_readings_are_reused_for_up_to_max_age() {
        let rss = Rss::open();
        let max_age = RSS_MAX_AGE.as_nanos() as u64;
        let first = rss.read_recent_as_of(5).expect("RSS of the test process");
        // Touch 16 MiB so that a fresh reading differs.
        let grown = vec![1u8; 16 << 20];
        assert!(grown.iter().map(|&b| u64::from(b)).sum::<u64>() > 0);
        assert_eq!(
            rss.read_recent_as_of(5 + max_age - 1),
            Some(first),
            "reused"
        );
        assert!(
            rss.read_recent_as_of(5 + max_age).expect("RSS") > first,
            "read again"
        );
        // `read` always reads, and its reading is then the recent one.
        let exact = rss.read().expect("RSS");
        assert_eq!(rss.read_recent(), Some(exact));
        drop(grown);
    }

    #[test]
    fn retire_rules() {
        assert_eq!(retire_reason(5, 0, Some(1 << 30), 0), None);
        assert_eq!(retire_reason(4, 5, None, 0), None);
        assert_eq!(retire_reason(5, 5, None, 0), Some("max_requests"));
        assert_eq!(retire_reason(1, 5, Some(200), 100), Some("max_memory"));
        assert_eq!(retire_reason(1, 5, Some(100), 100), None);
        assert_eq!(retire_reason(1, 0, None, 100), None);
        // Both: max_requests is named.
        assert_eq!(retire_reason(5, 5, Some(200), 100), Some("max_requests"));
    }
}
