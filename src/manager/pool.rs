//! The state of each pool's worker slots, and the pure decisions made on it: how many
//! workers may be started now (back-off after start-up failures), what a worker's exit
//! means, and which workers count towards the pool's size.
//!
//! Nothing here touches processes, clocks or logs: the supervisor passes `now` in and
//! acts on the answers, so every rule is unit-tested. The scaling rules themselves are in
//! [`super::planner`]. A slot index is also the worker's scoreboard slot; a pool has more
//! slots than `pm.max_children` so that replacements can overlap the workers they replace.

use super::planner::{self, Status};
use nix::sys::signal::Signal;
use scoreboard::SlotState;
use std::time::{Duration, Instant};

/// First back-off after a start-up failure; doubles with each further failure.
pub const BACKOFF_FIRST: Duration = Duration::from_secs(1);
/// Longest back-off between start-up attempts.
pub const BACKOFF_MAX: Duration = Duration::from_secs(60);

/// The back-off before the next attempt after `streak` consecutive start-up failures
/// (`streak >= 1`): 1 s, 2 s, 4 s, ... capped at [`BACKOFF_MAX`].
pub fn backoff(streak: u32) -> Duration {
    let doublings = streak.saturating_sub(1).min(16);
    (BACKOFF_FIRST * (1u32 << doublings)).min(BACKOFF_MAX)
}

/// Where a live worker is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkerState {
    /// Spawned; has not said "ready" on its control socket yet (interpreter start-up,
    /// app import).
    Starting,
    /// Accepting connections.
    Ready,
    /// Told to stop with `signal`; waiting for it to exit.
    Stopping {
        /// The last signal sent.
        signal: Signal,
        /// Whether it had become ready before (decides how its exit is judged).
        was_ready: bool,
    },
}

/// A worker that must be replaced: it keeps serving until its replacement is ready,
/// then gets SIGQUIT (so the pool's capacity never dips).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Retire {
    /// Why, for log lines (`pm.max_requests (500)`, `emergency restart`).
    pub reason: String,
    /// The replacement once spawned: its slot and pid.
    pub replacement: Option<(usize, i32)>,
    /// Replaced by the pool's next generation as a whole (a reload), not one for one:
    /// it gets SIGQUIT once enough of that generation is ready, and no replacement of
    /// its own.
    pub batch: bool,
}

/// A live worker process in a slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Worker {
    /// Its process id.
    pub pid: i32,
    /// When it was spawned, for "exited after 2.211s" and `pm.max_lifetime`.
    pub started: Instant,
    /// Its state.
    pub state: WorkerState,
    /// The pool generation it belongs to (see [`PoolState::generation`]).
    pub generation: u64,
    /// Set once it is to be replaced.
    pub retire: Option<Retire>,
    /// When a worker stopped on its own (retired, idle) gets SIGKILL if still alive.
    pub kill_at: Option<Instant>,
    /// Since when it has been seen idle (none while busy or starting).
    pub idle_since: Option<Instant>,
    /// Its request count when last looked at (a change means it served in between).
    pub seen_requests: u64,
    /// Its `pm.max_requests` after jitter (0 = none), for log lines.
    pub max_requests: u64,
}

impl Worker {
    /// A worker just spawned.
    pub fn new(pid: i32, started: Instant, generation: u64, max_requests: u64) -> Worker {
        Worker {
            pid,
            started,
            state: WorkerState::Starting,
            generation,
            retire: None,
            kill_at: None,
            idle_since: None,
            seen_requests: 0,
            max_requests,
        }
    }

    /// Whether the worker reached "ready" at some point.
    pub fn was_ready(&self) -> bool {
        match self.state {
            WorkerState::Starting => false,
            WorkerState::Ready => true,
            WorkerState::Stopping { was_ready, .. } => was_ready,
        }
    }

    /// Whether it counts towards the pool's size: not stopping, not being replaced.
    pub fn counted(&self) -> bool {
        self.retire.is_none() && !matches!(self.state, WorkerState::Stopping { .. })
    }

    /// Update what is known from its scoreboard slot (`None`: no scoreboard) at `now`
    /// and return what the planner sees.
    pub fn observe(&mut self, slot: Option<(SlotState, u64)>, now: Instant) -> Status {
        if self.state == WorkerState::Starting {
            self.idle_since = None;
            return Status::Starting;
        }
        let (state, requests) = slot.unwrap_or((SlotState::Idle, self.seen_requests));
        let busy = matches!(
            state,
            SlotState::Reading | SlotState::Running | SlotState::Writing | SlotState::Finishing
        );
        if busy {
            self.idle_since = None;
            self.seen_requests = requests;
            return Status::Busy;
        }
        // Idle now; a request served since the last look restarts the idle clock.
        if self.idle_since.is_none() || requests != self.seen_requests {
            self.idle_since = Some(now);
        }
        self.seen_requests = requests;
        Status::Idle {
            since: self.idle_since.unwrap_or(now),
        }
    }
}

/// A pool's slots and its start-up failure bookkeeping.
#[derive(Clone, Debug)]
pub struct PoolState {
    /// Pool name, for logs.
    pub name: String,
    /// One entry per slot; `None` = no process. A slot index is the worker's `slot` in
    /// its spec and its scoreboard slot.
    pub slots: Vec<Option<Worker>>,
    /// static: how many workers to keep (`pm.max_children`, moved by SIGTTIN/SIGTTOU).
    pub target: u32,
    /// dynamic: `pm.start_servers` have been spawned.
    pub started: bool,
    /// The planner's memory (spawn rate, max_children warning).
    pub memory: planner::Memory,
    /// The current generation: a worker of an older one is being replaced. Bumped by
    /// [`PoolState::replace_all`] (emergency restart; reload reuses it).
    pub generation: u64,
    /// `process.max` was reached and logged; cleared by the next spawn.
    pub warned_process_max: bool,
    /// Consecutive start-up failures since a worker last became ready. While it is
    /// non-zero only one worker is started at a time (a probe), so a broken app costs
    /// one interpreter start per back-off period, never `max_children` of them.
    pub failures: u32,
    /// No worker is started before this instant (the back-off deadline).
    pub not_before: Option<Instant>,
    /// The most processes the pool may have at once (see `pool_capacity`). Equal to
    /// `slots.len()` except just after a reload lowered it while old workers still
    /// hold slots beyond it.
    pub capacity: usize,
}

impl PoolState {
    /// A pool with `slots` empty slots keeping `target` workers (static).
    pub fn new(name: &str, slots: usize, target: u32) -> PoolState {
        PoolState {
            name: name.to_string(),
            slots: vec![None; slots],
            target,
            started: false,
            memory: planner::Memory::default(),
            generation: 0,
            warned_process_max: false,
            failures: 0,
            not_before: None,
            capacity: slots,
        }
    }

    /// Allow `capacity` processes from now on (a reload). The slots in use stay where
    /// they are, so the slot list only shrinks once the workers beyond it are gone
    /// ([`PoolState::trim`]).
    pub fn resize(&mut self, capacity: usize) {
        self.capacity = capacity;
        let used = self
            .slots
            .iter()
            .rposition(Option::is_some)
            .map_or(0, |i| i + 1);
        self.slots.resize(capacity.max(used), None);
    }

    /// Drop the empty slots beyond the capacity.
    pub fn trim(&mut self) {
        while self.slots.len() > self.capacity && self.slots.last().is_some_and(Option::is_none) {
            self.slots.pop();
        }
    }

    /// How many workers may be started now: none during a back-off, one probe at a
    /// time while the pool has a failure streak, otherwise any number.
    pub fn spawn_allowance(&self, now: Instant) -> u32 {
        if self.not_before.is_some_and(|t| t > now) {
            return 0;
        }
        if self.failures > 0 {
            let probing = self
                .slots
                .iter()
                .flatten()
                .any(|w| w.state == WorkerState::Starting);
            return u32::from(!probing);
        }
        u32::MAX
    }

    /// The lowest free slot, if the pool has room for one more process.
    pub fn free_slot(&self) -> Option<usize> {
        if self.live() >= self.capacity {
            return None;
        }
        self.slots.iter().position(Option::is_none)
    }

    /// The live worker with `pid` in `slot`, if the event is not stale.
    pub fn worker_mut(&mut self, slot: usize, pid: i32) -> Option<&mut Worker> {
        self.slots.get_mut(slot)?.as_mut().filter(|w| w.pid == pid)
    }

    /// The live worker with `pid`, wherever it is.
    pub fn find_mut(&mut self, pid: i32) -> Option<&mut Worker> {
        self.slots.iter_mut().flatten().find(|w| w.pid == pid)
    }

    /// A worker said "ready": the failure streak is over. Returns false for a stale event.
    pub fn mark_ready(&mut self, slot: usize, pid: i32, now: Instant) -> bool {
        let Some(w) = self.worker_mut(slot, pid) else {
            return false;
        };
        match w.state {
            WorkerState::Starting => {
                w.state = WorkerState::Ready;
                w.idle_since = Some(now);
            }
            // Became ready after being told to stop: remember it for the exit verdict.
            WorkerState::Stopping { signal, .. } => {
                w.state = WorkerState::Stopping {
                    signal,
                    was_ready: true,
                }
            }
            WorkerState::Ready => {}
        }
        self.failures = 0;
        self.not_before = None;
        true
    }

    /// The worker that `pid` (a replacement) replaces, if any.
    pub fn predecessor_of(&self, pid: i32) -> Option<i32> {
        self.slots.iter().flatten().find_map(|w| {
            w.retire
                .as_ref()
                .filter(|r| r.replacement.is_some_and(|(_, p)| p == pid))
                .map(|_| w.pid)
        })
    }

    /// Forget a replacement that died before it was ready, so another is started.
    pub fn unlink_replacement(&mut self, pid: i32) {
        for w in self.slots.iter_mut().flatten() {
            if let Some(r) = &mut w.retire {
                if r.replacement.is_some_and(|(_, p)| p == pid) {
                    r.replacement = None;
                }
            }
        }
    }

    /// Mark every counted worker for replacement (`reason` for the logs) and start a new
    /// generation. Returns how many were marked.
    pub fn replace_all(&mut self, reason: &str) -> usize {
        self.generation += 1;
        let mut n = 0;
        for w in self.slots.iter_mut().flatten() {
            if w.counted() {
                w.retire = Some(Retire {
                    reason: reason.to_string(),
                    replacement: None,
                    batch: false,
                });
                n += 1;
            }
        }
        n
    }

    /// Record a start-up failure at `now` and return the wait before the next attempt.
    /// Failures of workers started in the same wave (all failing within one back-off
    /// period) count once, so the delay doubles per attempt, not per worker.
    pub fn record_start_failure(&mut self, now: Instant) -> Duration {
        match self.not_before {
            Some(t) if t > now => t - now,
            _ => {
                self.failures = self.failures.saturating_add(1);
                let wait = backoff(self.failures);
                self.not_before = Some(now + wait);
                wait
            }
        }
    }

    /// Whether at least one worker is ready.
    pub fn has_ready_worker(&self) -> bool {
        self.slots
            .iter()
            .flatten()
            .any(|w| w.state == WorkerState::Ready)
    }

    /// Number of live processes (stopping ones included: they are still processes).
    pub fn live(&self) -> usize {
        self.slots.iter().flatten().count()
    }

    /// Number of workers counting towards the pool's size.
    pub fn counted(&self) -> u32 {
        self.slots.iter().flatten().filter(|w| w.counted()).count() as u32
    }
}

/// How a process ended, independent of `std::process::ExitStatus` so it is testable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// `exit(code)`.
    Code(i32),
    /// Killed by a signal.
    Signal {
        /// The signal number.
        signal: i32,
        /// Whether a core file was written.
        core_dumped: bool,
    },
    /// Gone, status unknown: a `preload` worker whose zygote (its parent, the only
    /// process that could collect the status) died before it.
    Unknown,
}

impl Exit {
    /// From a wait status.
    pub fn from_status(status: std::process::ExitStatus) -> Exit {
        use std::os::unix::process::ExitStatusExt;
        match (status.code(), status.signal()) {
            (Some(code), _) => Exit::Code(code),
            (None, Some(signal)) => Exit::Signal {
                signal,
                core_dumped: status.core_dumped(),
            },
            // Stopped/continued statuses are never reported by wait() without WUNTRACED.
            (None, None) => Exit::Code(-1),
        }
    }
}

impl From<pyfpm_ipc::zygote::ExitStatus> for Exit {
    /// A status a zygote reported for one of its workers.
    fn from(status: pyfpm_ipc::zygote::ExitStatus) -> Exit {
        match status {
            pyfpm_ipc::zygote::ExitStatus::Code(code) => Exit::Code(code),
            pyfpm_ipc::zygote::ExitStatus::Signal {
                signal,
                core_dumped,
            } => Exit::Signal {
                signal,
                core_dumped,
            },
        }
    }
}

/// Name of a signal number, `SIGKILL` style, or `SIG?` when unknown.
pub fn signal_name(signal: i32) -> &'static str {
    Signal::try_from(signal)
        .map(|s| s.as_str())
        .unwrap_or("SIG?")
}

/// PHP-FPM's wording for an exit: `exited with code 0 after 2.211s`,
/// `exited on signal 11 (SIGSEGV) after 0.500s - core dumped`. A SIGKILL the manager
/// did not send adds `; possibly out of memory` (the kernel's OOM killer sends it).
pub fn describe_exit(exit: Exit, lifetime: Duration, killed_by_us: bool) -> String {
    let after = format!("after {:.3}s", lifetime.as_secs_f64());
    match exit {
        Exit::Code(pyfpm_ipc::exit::REQUEST_TIMEOUT_KILLED) => format!(
            "exited with code {} {after}: a request outlived request_terminate_timeout and \
             could not be stopped, so the worker ended itself",
            pyfpm_ipc::exit::REQUEST_TIMEOUT_KILLED
        ),
        Exit::Code(code) => format!("exited with code {code} {after}"),
        Exit::Unknown => format!(
            "exited {after}; its status is unknown (the zygote that forked it, which \
             alone could collect it, is gone)"
        ),
        Exit::Signal {
            signal,
            core_dumped,
        } => {
            let mut s = format!(
                "exited on signal {signal} ({}) {after}",
                signal_name(signal)
            );
            if core_dumped {
                s.push_str(" - core dumped");
            }
            if signal == libc::SIGKILL && !killed_by_us {
                s.push_str("; possibly out of memory");
            }
            s
        }
    }
}

/// What an exit means for the supervisor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// An ordinary exit (after serving, or one we asked for): respawn at once if running.
    Normal,
    /// The worker never became ready, or said it cannot boot: back off. The text says why,
    /// for "failed to start: ...".
    StartFailure(String),
    /// The worker module is from another build: nothing will ever work, stop.
    VersionMismatch,
}

/// Judge an exit. `was_ready`: the worker had said "ready"; `stopping`: the manager
/// asked it to stop.
pub fn judge(exit: Exit, was_ready: bool, stopping: bool) -> Verdict {
    use pyfpm_ipc::exit as code;
    match exit {
        Exit::Code(code::VERSION_MISMATCH) => Verdict::VersionMismatch,
        Exit::Code(code::APP_LOAD_ERROR) => Verdict::StartFailure(
            "the app could not be imported (see the traceback above)".to_string(),
        ),
        Exit::Code(code::BOOT_ERROR) => {
            Verdict::StartFailure("the worker could not boot (see the messages above)".to_string())
        }
        _ if was_ready || stopping => Verdict::Normal,
        Exit::Code(c) => Verdict::StartFailure(format!(
            "it exited with code {c} before it was ready (see the messages above)"
        )),
        Exit::Signal { signal, .. } => Verdict::StartFailure(format!(
            "it was killed by signal {signal} ({}) before it was ready",
            signal_name(signal)
        )),
        Exit::Unknown => {
            Verdict::StartFailure("it exited before it was ready (status unknown)".to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker(pid: i32, state: WorkerState, now: Instant) -> Option<Worker> {
        let mut w = Worker::new(pid, now, 0, 0);
        w.state = state;
        Some(w)
    }

    #[test]
    fn backoff_doubles_and_caps_at_a_minute() {
        let secs: Vec<u64> = (1..=9).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(backoff(u32::MAX), BACKOFF_MAX);
    }

    #[test]
    fn a_healthy_pool_may_spawn_any_number_into_free_slots() {
        let now = Instant::now();
        let mut p = PoolState::new("www", 4, 2);
        p.slots[0] = worker(10, WorkerState::Ready, now);
        assert_eq!(p.spawn_allowance(now), u32::MAX);
        assert_eq!(p.free_slot(), Some(1));
    }

    #[test]
    fn a_failing_pool_waits_then_probes_with_one_worker() {
        let t0 = Instant::now();
        let mut p = PoolState::new("www", 3, 3);
        // A whole wave fails: counted once.
        assert_eq!(p.record_start_failure(t0), Duration::from_secs(1));
        let t1 = t0 + Duration::from_millis(300);
        assert_eq!(p.record_start_failure(t1), Duration::from_millis(700));
        assert_eq!(p.failures, 1);
        assert_eq!(p.spawn_allowance(t1), 0);
        let t2 = t0 + Duration::from_secs(1);
        assert_eq!(p.spawn_allowance(t2), 1);
        // While the probe is starting, nothing else is spawned.
        p.slots[0] = worker(11, WorkerState::Starting, t2);
        assert_eq!(p.spawn_allowance(t2), 0);
        // The probe fails too: the delay doubles.
        p.slots[0] = None;
        assert_eq!(p.record_start_failure(t2), Duration::from_secs(2));
        assert_eq!(p.spawn_allowance(t2 + Duration::from_secs(1)), 0);
        let t3 = t2 + Duration::from_secs(2);
        assert_eq!(p.spawn_allowance(t3), 1);
        // The next probe becomes ready: the streak is over.
        p.slots[0] = worker(12, WorkerState::Starting, t3);
        assert!(!p.mark_ready(0, 999, t3), "a stale pid is ignored");
        assert!(p.mark_ready(0, 12, t3));
        assert_eq!(p.failures, 0);
        assert_eq!(p.spawn_allowance(t3), u32::MAX);
        assert!(p.has_ready_worker());
    }

    #[test]
    fn idle_time_is_observed_from_the_scoreboard() {
        let t0 = Instant::now();
        let t = |s| t0 + Duration::from_secs(s);
        let mut w = Worker::new(1, t0, 0, 0);
        assert_eq!(w.observe(None, t(0)), Status::Starting);
        w.state = WorkerState::Ready;
        assert_eq!(
            w.observe(Some((SlotState::Idle, 0)), t(1)),
            Status::Idle { since: t(1) }
        );
        assert_eq!(
            w.observe(Some((SlotState::Idle, 0)), t(5)),
            Status::Idle { since: t(1) },
            "still idle: the clock keeps running"
        );
        assert_eq!(
            w.observe(Some((SlotState::Idle, 3)), t(6)),
            Status::Idle { since: t(6) },
            "served requests between two looks: idle from now"
        );
        assert_eq!(w.observe(Some((SlotState::Running, 3)), t(7)), Status::Busy);
        assert_eq!(
            w.observe(Some((SlotState::Idle, 4)), t(8)),
            Status::Idle { since: t(8) }
        );
    }

    #[test]
    fn a_lowered_capacity_keeps_busy_slots_until_they_free_up() {
        let now = Instant::now();
        let mut p = PoolState::new("www", 6, 3);
        p.slots[0] = worker(10, WorkerState::Ready, now);
        p.slots[4] = worker(14, WorkerState::Ready, now);
        // A reload lowers the capacity to 2: slot 4 is still in use.
        p.resize(2);
        assert_eq!(p.slots.len(), 5);
        assert_eq!(p.free_slot(), None, "two processes already: no room");
        p.slots[4] = None;
        assert_eq!(p.free_slot(), Some(1));
        p.trim();
        assert_eq!(p.slots.len(), 2);
        // Raising it adds slots.
        p.resize(4);
        assert_eq!(p.slots.len(), 4);
        assert_eq!(p.free_slot(), Some(1));
    }

    #[test]
    fn replacements_are_linked_and_do_not_count_twice() {
        let now = Instant::now();
        let mut p = PoolState::new("www", 4, 2);
        p.slots[0] = worker(10, WorkerState::Ready, now);
        p.slots[1] = worker(11, WorkerState::Ready, now);
        assert_eq!(p.replace_all("emergency restart"), 2);
        assert_eq!(p.generation, 1);
        assert_eq!(p.counted(), 0, "workers being replaced do not count");
        p.slots[2] = worker(12, WorkerState::Starting, now);
        p.slots[0]
            .as_mut()
            .unwrap()
            .retire
            .as_mut()
            .unwrap()
            .replacement = Some((2, 12));
        assert_eq!(p.counted(), 1);
        assert_eq!(p.predecessor_of(12), Some(10));
        p.unlink_replacement(12);
        assert_eq!(p.predecessor_of(12), None);
        assert_eq!(p.live(), 3);
    }

    #[test]
    fn exits_are_described_like_php_fpm() {
        let d = Duration::from_millis(2211);
        assert_eq!(
            describe_exit(Exit::Code(0), d, false),
            "exited with code 0 after 2.211s"
        );
        assert_eq!(
            describe_exit(
                Exit::Signal {
                    signal: 11,
                    core_dumped: true
                },
                d,
                false
            ),
            "exited on signal 11 (SIGSEGV) after 2.211s - core dumped"
        );
        let kill = Exit::Signal {
            signal: 9,
            core_dumped: false,
        };
        assert_eq!(
            describe_exit(kill, d, false),
            "exited on signal 9 (SIGKILL) after 2.211s; possibly out of memory"
        );
        assert_eq!(
            describe_exit(kill, d, true),
            "exited on signal 9 (SIGKILL) after 2.211s"
        );
    }

    #[test]
    fn exit_codes_decide_the_verdict() {
        use pyfpm_ipc::exit as code;
        assert_eq!(
            judge(Exit::Code(code::VERSION_MISMATCH), true, false),
            Verdict::VersionMismatch
        );
        assert!(matches!(
            judge(Exit::Code(code::APP_LOAD_ERROR), false, false),
            Verdict::StartFailure(s) if s.contains("could not be imported")
        ));
        assert!(matches!(
            judge(Exit::Code(code::BOOT_ERROR), true, false),
            Verdict::StartFailure(_)
        ));
        assert!(matches!(
            judge(Exit::Code(1), false, false),
            Verdict::StartFailure(s) if s.contains("code 1 before it was ready")
        ));
        assert_eq!(judge(Exit::Code(1), true, false), Verdict::Normal);
        assert_eq!(
            judge(
                Exit::Signal {
                    signal: 15,
                    core_dumped: false
                },
                false,
                true
            ),
            Verdict::Normal
        );
    }

    #[test]
    fn real_wait_statuses_convert() {
        let st = std::process::Command::new("sh")
            .args(["-c", "exit 4"])
            .status()
            .unwrap();
        assert_eq!(Exit::from_status(st), Exit::Code(4));
        let st = std::process::Command::new("sh")
            .args(["-c", "kill -9 $$"])
            .status()
            .unwrap();
        assert_eq!(
            Exit::from_status(st),
            Exit::Signal {
                signal: 9,
                core_dumped: false
            }
        );
    }
}
