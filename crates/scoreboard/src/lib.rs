//! The scoreboard: one fixed-size slot per worker in a shared-memory region (a memfd the
//! manager creates per pool and passes to each worker as an inherited fd).
//!
//! Workers write only their own slot; the manager (and later the status page) reads any
//! slot. Numbers are atomics; the text fields (method, URI, client) are guarded by a
//! per-slot sequence counter (a seqlock), so a reader never sees a torn request and a
//! writer never waits. No Python and no async runtime here: both the manager and the
//! worker core link this crate.

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};

/// Where a worker is in its life and in its current request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum SlotState {
    /// No worker uses the slot.
    Free = 0,
    /// Spawned; importing the app.
    Starting = 1,
    /// Waiting for a connection or for the next request on a kept connection.
    Idle = 2,
    /// Reading a request's params and body.
    Reading = 3,
    /// Inside the app.
    Running = 4,
    /// Sending the response.
    Writing = 5,
    /// Response sent; closing the result, draining the body, end-of-request bookkeeping.
    Finishing = 6,
}

/// A consistent copy of one slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotSnapshot {
    /// State.
    pub state: SlotState,
    /// Worker pid (0 when free).
    pub pid: u32,
    /// When the worker was spawned, milliseconds since the Unix epoch.
    pub started_unix_ms: u64,
    /// Requests served so far.
    pub requests: u64,
    /// When the current request began, microseconds since the Unix epoch; 0 when idle.
    pub request_start_unix_us: u64,
    /// Current (or last) request's method.
    pub method: String,
    /// Current (or last) request's URI (REQUEST_URI), truncated to the slot's capacity.
    pub uri: String,
    /// Current (or last) request's client (REMOTE_ADDR).
    pub client: String,
    /// Duration of the last finished request, microseconds.
    pub last_duration_us: u64,
    /// Resident set size measured after the last request, bytes.
    pub rss_bytes: u64,
}

/// A mapped scoreboard.
pub struct Scoreboard {
    _private: (),
}

impl Scoreboard {
    /// Create a scoreboard with `slots` free slots in a new memfd (close-on-exec; the
    /// spawner clears that flag for the worker's copy).
    pub fn create(slots: usize) -> io::Result<Self> {
        let _ = slots;
        todo!()
    }

    /// Map the scoreboard a manager created (the worker side). Checks the header (magic,
    /// layout version, size) and fails with a clear error on a mismatch.
    pub fn open(fd: OwnedFd) -> io::Result<Self> {
        let _ = fd;
        todo!()
    }

    /// The memfd, to pass to workers.
    pub fn fd(&self) -> BorrowedFd<'_> {
        todo!()
    }

    /// Number of slots.
    pub fn slots(&self) -> usize {
        todo!()
    }

    /// Handle on slot `index` (panics when out of range).
    pub fn slot(&self, index: usize) -> Slot<'_> {
        let _ = index;
        todo!()
    }
}

/// Handle on one slot: the writer side (the worker owning it, or the manager when it
/// assigns or frees it) and the reader side.
pub struct Slot<'a> {
    _board: &'a Scoreboard,
}

impl Slot<'_> {
    /// Manager, at spawn: mark the slot `Starting` for `pid`, zero the counters.
    pub fn assign(&self, pid: u32, started_unix_ms: u64) {
        let _ = (pid, started_unix_ms);
        todo!()
    }

    /// Manager, after the worker exited: mark the slot `Free`.
    pub fn release(&self) {
        todo!()
    }

    /// Worker: change state (e.g. `Idle` when waiting, `Running` around the app call).
    pub fn set_state(&self, state: SlotState) {
        let _ = state;
        todo!()
    }

    /// Worker: a request began (state `Reading`, start time, method, URI, client).
    pub fn begin_request(&self, method: &[u8], uri: &[u8], client: &[u8], now_unix_us: u64) {
        let _ = (method, uri, client, now_unix_us);
        todo!()
    }

    /// Worker: the request ended (state `Idle`, requests + 1, last duration, RSS).
    pub fn end_request(&self, duration_us: u64, rss_bytes: u64) {
        let _ = (duration_us, rss_bytes);
        todo!()
    }

    /// A consistent copy of the slot (retries while a writer is mid-update).
    pub fn snapshot(&self) -> SlotSnapshot {
        todo!()
    }
}
