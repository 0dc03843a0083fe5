//! Recycling inputs: the worker's resident set size (from `/proc/self/statm`) and the
//! rule that decides when a worker asks to be replaced. Pure Rust, unit-tested alone.

use std::fs::File;
use std::os::unix::fs::FileExt;

/// The resident set size of this process, read from `/proc/self/statm`.
#[derive(Debug)]
pub struct Rss {
    /// `/proc/self/statm`, open for the process's life (one pread per reading).
    statm: Option<File>,
    /// Page size in bytes.
    page: u64,
}

impl Rss {
    /// Open `/proc/self/statm`; without /proc every reading is `None`.
    pub fn open() -> Rss {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        Rss {
            statm: File::open("/proc/self/statm").ok(),
            page: u64::try_from(page).unwrap_or(4096),
        }
    }

    /// Current RSS in bytes.
    pub fn read(&self) -> Option<u64> {
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
