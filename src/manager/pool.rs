//! The state of each pool's worker slots, and the pure decisions made on it: which
//! slots to (re)spawn now, how long to back off after start-up failures, and what a
//! worker's exit means.
//!
//! Nothing here touches processes, clocks or logs: the supervisor passes `now` in and
//! acts on the answers, so every rule is unit-tested. The shape follows the nginx master
//! cycle / gunicorn arbiter: one explicit state per slot; a later issue adds the dynamic
//! and ondemand planners next to [`PoolState::slots_to_spawn`], and reload as one more
//! reason to stop a worker.

use nix::sys::signal::Signal;
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

/// A live worker process in a slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Worker {
    /// Its process id.
    pub pid: i32,
    /// When it was spawned, for "exited after 2.211s".
    pub started: Instant,
    /// Its state.
    pub state: WorkerState,
}

impl Worker {
    /// Whether the worker reached "ready" at some point.
    pub fn was_ready(&self) -> bool {
        match self.state {
            WorkerState::Starting => false,
            WorkerState::Ready => true,
            WorkerState::Stopping { was_ready, .. } => was_ready,
        }
    }
}

/// A pool's slots and its start-up failure bookkeeping.
#[derive(Clone, Debug)]
pub struct PoolState {
    /// Pool name, for logs.
    pub name: String,
    /// One entry per worker slot (`pm.max_children` of them); `None` = no process.
    /// A slot keeps its index across respawns: it is the worker's `slot` in its spec
    /// and, later, its scoreboard entry.
    pub slots: Vec<Option<Worker>>,
    /// Consecutive start-up failures since a worker last became ready. While it is
    /// non-zero only one worker is started at a time (a probe), so a broken app costs
    /// one interpreter start per back-off period, never `max_children` of them.
    pub failures: u32,
    /// No worker is started before this instant (the back-off deadline).
    pub not_before: Option<Instant>,
}

impl PoolState {
    /// A pool with `slots` empty slots.
    pub fn new(name: &str, slots: usize) -> PoolState {
        PoolState {
            name: name.to_string(),
            slots: vec![None; slots],
            failures: 0,
            not_before: None,
        }
    }

    /// Slots to spawn a worker in now. `accepting` is false once the manager is stopping.
    pub fn slots_to_spawn(&self, now: Instant, accepting: bool) -> Vec<usize> {
        if !accepting || self.not_before.is_some_and(|t| t > now) {
            return Vec::new();
        }
        let empty = self
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.is_none())
            .map(|(i, _)| i);
        if self.failures > 0 {
            let probing = self
                .slots
                .iter()
                .flatten()
                .any(|w| w.state == WorkerState::Starting);
            if probing {
                return Vec::new();
            }
            return empty.take(1).collect();
        }
        empty.collect()
    }

    /// The live worker with `pid` in `slot`, if the event is not stale.
    pub fn worker_mut(&mut self, slot: usize, pid: i32) -> Option<&mut Worker> {
        self.slots.get_mut(slot)?.as_mut().filter(|w| w.pid == pid)
    }

    /// A worker said "ready": the failure streak is over. Returns false for a stale event.
    pub fn mark_ready(&mut self, slot: usize, pid: i32) -> bool {
        let Some(w) = self.worker_mut(slot, pid) else {
            return false;
        };
        match w.state {
            WorkerState::Starting => w.state = WorkerState::Ready,
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

    /// Number of live processes.
    pub fn live(&self) -> usize {
        self.slots.iter().flatten().count()
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
        Exit::Code(code) => format!("exited with code {code} {after}"),
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker(pid: i32, state: WorkerState, now: Instant) -> Option<Worker> {
        Some(Worker {
            pid,
            started: now,
            state,
        })
    }

    #[test]
    fn backoff_doubles_and_caps_at_a_minute() {
        let secs: Vec<u64> = (1..=9).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(backoff(u32::MAX), BACKOFF_MAX);
    }

    #[test]
    fn a_healthy_pool_fills_every_empty_slot_and_none_when_stopping() {
        let now = Instant::now();
        let mut p = PoolState::new("www", 4);
        p.slots[1] = worker(10, WorkerState::Ready, now);
        assert_eq!(p.slots_to_spawn(now, true), vec![0, 2, 3]);
        assert!(p.slots_to_spawn(now, false).is_empty());
    }

    #[test]
    fn a_failing_pool_waits_then_probes_with_one_worker() {
        let t0 = Instant::now();
        let mut p = PoolState::new("www", 3);
        // A whole wave fails: counted once.
        assert_eq!(p.record_start_failure(t0), Duration::from_secs(1));
        let t1 = t0 + Duration::from_millis(300);
        assert_eq!(p.record_start_failure(t1), Duration::from_millis(700));
        assert_eq!(p.failures, 1);
        assert!(p.slots_to_spawn(t1, true).is_empty());
        let t2 = t0 + Duration::from_secs(1);
        assert_eq!(p.slots_to_spawn(t2, true), vec![0]);
        // While the probe is starting, nothing else is spawned.
        p.slots[0] = worker(11, WorkerState::Starting, t2);
        assert!(p.slots_to_spawn(t2, true).is_empty());
        // The probe fails too: the delay doubles.
        p.slots[0] = None;
        assert_eq!(p.record_start_failure(t2), Duration::from_secs(2));
        assert!(
            p.slots_to_spawn(t2 + Duration::from_secs(1), true)
                .is_empty()
        );
        let t3 = t2 + Duration::from_secs(2);
        assert_eq!(p.slots_to_spawn(t3, true), vec![0]);
        // The next probe becomes ready: the streak is over and the pool fills up.
        p.slots[0] = worker(12, WorkerState::Starting, t3);
        assert!(!p.mark_ready(0, 999), "a stale pid is ignored");
        assert!(p.mark_ready(0, 12));
        assert_eq!(p.failures, 0);
        assert_eq!(p.slots_to_spawn(t3, true), vec![1, 2]);
        assert!(p.has_ready_worker());
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
