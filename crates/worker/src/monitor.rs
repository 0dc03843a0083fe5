//! Per-request bookkeeping: the worker's scoreboard slot, the request watchdog, the
//! request count and RSS, and the recycling decision (`retire max_requests` /
//! `retire max_memory`, sent once, after which the worker keeps serving until the
//! manager, having started its replacement, sends SIGQUIT).
//!
//! Cost per request with everything on (measured in the closing report): no system call
//! besides a `pread` of `/proc/self/statm` (kept open): after every request when
//! `max_memory` is set, otherwise at most once a second for the scoreboard's RSS. Clocks
//! are vDSO reads.
//!
//! With `threads` > 1 the worker's one scoreboard slot shows its oldest request in
//! service (so the manager's last-resort kill at `request_terminate_timeout` sees the
//! request that has run longest), and the worker counts as busy while any thread serves
//! a request. The slot has one writer at a time: every slot write happens under the
//! `threads` lock.

use crate::control::{Control, frame_retire};
use crate::log::{Level, log};
use crate::recycle::{Rss, retire_reason};
use crate::watchdog::Watchdog;
use scoreboard::{Scoreboard, Slot, SlotState};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Microseconds since the Unix epoch.
fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// A request in service on one request thread.
#[derive(Debug, Default)]
struct Active {
    start: Option<Instant>,
    start_unix_us: u64,
    /// Method, URI and client, kept (buffers reused) only with several threads, to show
    /// this request again when an older one ends.
    method: Vec<u8>,
    uri: Vec<u8>,
    client: Vec<u8>,
}

/// The worker's monitoring state, shared by its request threads (each names itself by
/// its index) and read by the watchdog thread.
pub struct Monitor {
    /// The pool's scoreboard and this worker's slot index in it.
    board: Option<(Arc<Scoreboard>, usize)>,
    /// The request watchdog, when a timeout is configured.
    pub watchdog: Option<Arc<Watchdog>>,
    /// RSS reader.
    rss: Rss,
    /// Where `retire` goes.
    control: Arc<Control>,
    /// `pm.max_requests` (with jitter), 0 = off.
    max_requests: u64,
    /// `pm.max_memory` in bytes, 0 = off.
    max_memory: u64,
    /// Requests finished so far.
    served: AtomicU64,
    /// `retire` was sent (it is sent once).
    retire_sent: AtomicBool,
    /// Per request thread, its request in service.
    threads: Mutex<Vec<Active>>,
    /// More than one request thread (otherwise the slot simply follows the only one).
    several: bool,
}

/// Per-request limits and the control channel for [`Monitor::new`].
pub struct Limits {
    /// `max_requests` from the spec.
    pub max_requests: u64,
    /// `max_memory` from the spec.
    pub max_memory: u64,
}

impl Monitor {
    /// Build the monitor. `board` is the opened scoreboard and this worker's slot
    /// (already checked to be in range).
    pub fn new(
        board: Option<(Arc<Scoreboard>, usize)>,
        watchdog: Option<Arc<Watchdog>>,
        control: Arc<Control>,
        limits: Limits,
        threads: usize,
    ) -> Monitor {
        Monitor {
            board,
            watchdog,
            rss: Rss::open(),
            control,
            max_requests: limits.max_requests,
            max_memory: limits.max_memory,
            served: AtomicU64::new(0),
            retire_sent: AtomicBool::new(false),
            threads: Mutex::new((0..threads.max(1)).map(|_| Active::default()).collect()),
            several: threads > 1,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Active>> {
        self.threads.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The thread whose request began first, among those with one.
    fn oldest(threads: &[Active]) -> Option<usize> {
        threads
            .iter()
            .enumerate()
            .filter_map(|(i, a)| Some((i, a.start?)))
            .min_by_key(|&(_, start)| start)
            .map(|(i, _)| i)
    }

    fn slot(&self) -> Option<Slot<'_>> {
        self.board.as_ref().and_then(|(b, i)| b.try_slot(*i))
    }

    /// Set the slot's state for `thread`'s request (shown only when that is the oldest
    /// request in service; no-op without a scoreboard).
    pub fn state(&self, thread: usize, state: SlotState) {
        let Some(slot) = self.slot() else {
            return;
        };
        // Several times per request: with one thread, no lock to take.
        if !self.several || Self::oldest(&self.lock()) == Some(thread) {
            slot.set_state(state);
        }
    }

    /// A request's params are complete, on request thread `thread`.
    /// `shared`/`seq` name the connection and request, for the watchdog's last-resort
    /// 504 (see [`Watchdog::begin`]).
    pub fn begin(
        &self,
        thread: usize,
        method: &[u8],
        uri: &[u8],
        client: &[u8],
        shared: &crate::conn::Shared,
        seq: u64,
    ) {
        let start = Instant::now();
        let now_us = unix_us();
        {
            let mut threads = self.lock();
            let several = self.several;
            let first = threads.iter().all(|a| a.start.is_none());
            let active = &mut threads[thread];
            active.start = Some(start);
            active.start_unix_us = now_us;
            if several {
                for (dst, src) in [
                    (&mut active.method, method),
                    (&mut active.uri, uri),
                    (&mut active.client, client),
                ] {
                    dst.clear();
                    dst.extend_from_slice(src);
                }
            }
            if first {
                if let Some(slot) = self.slot() {
                    slot.begin_request(method, uri, client, now_us);
                }
            }
        }
        if let Some(dog) = &self.watchdog {
            dog.begin(thread, start, method, uri, client, shared, seq);
        }
    }

    /// The app is about to be called; `false` when the request already timed out.
    pub fn enter_app(&self, thread: usize) -> bool {
        self.state(thread, SlotState::Running);
        self.watchdog.as_ref().is_none_or(|d| d.enter_app(thread))
    }

    /// The app returned control for good (after close()).
    pub fn leave_app(&self, thread: usize) {
        self.state(thread, SlotState::Finishing);
        if let Some(dog) = &self.watchdog {
            dog.leave_app(thread);
        }
    }

    /// request_terminate_timeout fired for `thread`'s request: its length, else `None`.
    pub fn timed_out(&self, thread: usize) -> Option<std::time::Duration> {
        let dog = self.watchdog.as_ref()?;
        if dog.timed_out(thread) {
            dog.terminate_timeout()
        } else {
            None
        }
    }

    /// Wait briefly until the watchdog has logged the stack of a timed-out request.
    pub fn wait_timeout_report(&self, thread: usize) {
        if let Some(dog) = &self.watchdog {
            dog.wait_terminate_report(thread, std::time::Duration::from_secs(1));
        }
    }

    /// `thread`'s request ended (response sent or abandoned): update the slot, count
    /// it, and ask to retire if a limit is reached.
    pub fn end(&self, thread: usize) {
        if let Some(dog) = &self.watchdog {
            dog.end(thread);
        }
        let mut threads = self.lock();
        let Some(start) = threads[thread].start.take() else {
            return;
        };
        let served = self.served.fetch_add(1, Ordering::Relaxed) + 1;
        // pm.max_memory judges the request that just ended, so it needs a fresh reading;
        // the scoreboard's figure may be up to a second old (a system call saved).
        let rss = if self.max_memory > 0 {
            self.rss.read()
        } else if self.board.is_some() {
            self.rss.read_recent()
        } else {
            None
        };
        if let Some(slot) = self.slot() {
            slot.end_request(start.elapsed().as_micros() as u64, rss.unwrap_or(0));
            // Another request is still in service: show it (the oldest) again.
            if let Some(i) = Self::oldest(&threads) {
                let a = &threads[i];
                slot.begin_request(&a.method, &a.uri, &a.client, a.start_unix_us);
                slot.set_state(SlotState::Running);
            }
        }
        drop(threads);
        if self.retire_sent.load(Ordering::Relaxed) {
            return;
        }
        if let Some(reason) = retire_reason(served, self.max_requests, rss, self.max_memory) {
            self.retire_sent.store(true, Ordering::Relaxed);
            let detail = match reason {
                "max_requests" => format!("served {served} requests (pm.max_requests)"),
                _ => format!(
                    "RSS {} KiB exceeds pm.max_memory ({} KiB)",
                    rss.unwrap_or(0) / 1024,
                    self.max_memory / 1024
                ),
            };
            match self.control.send(&frame_retire(reason)) {
                Ok(()) => log(
                    Level::Info,
                    format!("{detail}: asked the manager for a replacement"),
                ),
                Err(e) => log(
                    Level::Warning,
                    format!("{detail}, but cannot tell the manager: {e}"),
                ),
            }
        }
    }
}
