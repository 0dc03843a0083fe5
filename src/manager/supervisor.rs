//! The main loop: one task owns every pool's state and acts; worker monitors and signal
//! streams only report to it (the nginx master cycle / gunicorn arbiter model).
//!
//! Each iteration: start the replacements owed and what the [`planner`] asks for, then
//! wait for the next thing to happen — a worker event (ready, retire, slow-log entry,
//! exited), a connection waiting on an ondemand pool's socket, a signal, the 1 s
//! maintenance tick, or a deadline (a back-off ending, a stop escalating). Stopping:
//! TERM/INT send SIGTERM to every worker and SIGKILL after [`FAST_STOP_GRACE`]; QUIT sends
//! SIGQUIT (workers finish their request) and SIGKILL after `process_control_timeout`. A
//! TERM during a graceful stop upgrades it; nothing downgrades a fast stop.
//!
//! Replacing a worker (recycling, `pm.max_lifetime`, emergency restart) is one
//! mechanism: mark it [`Retire`], start its replacement, and SIGQUIT it once the
//! replacement is ready, so capacity never dips. [`PoolState::replace_all`] applies it to
//! a whole pool and starts a new generation. A reload (SIGUSR2/SIGHUP, see [`reload`])
//! retires a whole generation at once instead (`Retire::batch`): the new generation
//! may differ in size, and the old workers get SIGQUIT together once enough new ones
//! are ready.
//!
//! Maintenance tick: the planner's dynamic/ondemand rules, `pm.max_lifetime`, the
//! `request_terminate_timeout` backstop (a worker whose request outlived the timeout by
//! [`TERMINATE_BACKSTOP`] is SIGKILLed: it is stuck where its own watchdog cannot help),
//! and SIGKILL for workers that ignored SIGQUIT for `process_control_timeout`.

use super::listeners::Listener;
use super::output;
use super::parking::Parking;
use super::planner::{self, Action, RetireWhy, Trigger, Waiting};
use super::pool::{Exit, PoolState, Retire, Verdict, Worker, WorkerState, describe_exit, judge};
use super::spawn::{Identity, PoolSpawner, jittered_max_requests};
use super::zygote::{ForkError, Reports, Zygote};
use crate::exit_code;
use crate::logging::LogSink;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use pyfpm_config::values::{format_duration, format_size};
use pyfpm_config::{Config, ListenAddr, PmMode, PoolConfig};
use scoreboard::{Scoreboard, SlotState};
use std::collections::VecDeque;
use std::io::Write;
use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tokio::time::Instant;

pub mod reload;

/// How long a fast stop (SIGTERM/SIGINT) waits before SIGKILL.
pub const FAST_STOP_GRACE: Duration = Duration::from_secs(2);
/// How long to wait for workers after SIGKILL before giving up on them (a process stuck
/// in uninterruptible sleep cannot be reaped; the manager still exits).
const AFTER_KILL_GRACE: Duration = Duration::from_secs(5);
/// How long a dead worker's pipes may take to drain, so its last lines (a traceback) are
/// logged before its exit. Bounded: a grandchild may hold the pipes open forever.
const DRAIN_GRACE: Duration = Duration::from_millis(500);
/// The maintenance tick (PHP-FPM's `FPM_IDLE_SERVER_MAINTENANCE_HEARTBEAT`).
pub const TICK: Duration = Duration::from_secs(1);
/// How long after `request_terminate_timeout` the manager kills a worker whose request
/// is still running: the worker's own watchdog had that long to stop it.
pub const TERMINATE_BACKSTOP: Duration = Duration::from_secs(5);
/// Largest slow-log entry accepted from a worker; a larger announcement means a broken
/// worker, whose control socket is then no longer read.
const MAX_SLOWLOG_ENTRY: usize = 1 << 20;
/// Longest control line read (a line without a newline within it is a broken worker).
const MAX_CONTROL_LINE: u64 = 4096;

/// What a worker monitor or a socket watcher reports.
#[derive(Debug)]
enum Event {
    /// The worker wrote "ready" on its control socket.
    Ready { pool: usize, slot: usize, pid: i32 },
    /// The worker reached a recycling limit (`retire REASON`).
    Retire {
        pool: usize,
        slot: usize,
        pid: i32,
        reason: String,
    },
    /// A slow-log entry to append to the pool's slow log.
    Slowlog { pool: usize, entry: Vec<u8> },
    /// A connection is waiting on one of an ondemand pool's sockets.
    Pending,
    /// The worker exited.
    Exited {
        pool: usize,
        slot: usize,
        pid: i32,
        exit: Exit,
    },
    /// A `preload` pool's zygote has imported the app and forks on request.
    ZygoteReady { pool: usize, pid: i32 },
    /// A zygote exited.
    ZygoteExited { pool: usize, pid: i32, exit: Exit },
}

/// How the manager is stopping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StopKind {
    /// SIGQUIT: let workers finish in-flight requests.
    Graceful,
    /// SIGTERM/SIGINT, or a fatal condition: stop now.
    Fast,
}

/// The manager's phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Serving; exited workers are replaced.
    Running,
    /// Stopping; `deadline` is when the next escalation happens, `killed` once SIGKILL
    /// has been sent.
    Stopping {
        kind: StopKind,
        deadline: Instant,
        killed: bool,
    },
}

/// One pool at run time.
struct PoolRuntime {
    /// The pool's configuration.
    config: PoolConfig,
    /// Its listening sockets (kept open here for the whole run, so connections queue
    /// in the backlog even while no worker accepts).
    listeners: Vec<Listener>,
    /// Who its workers run as.
    identity: Option<Identity>,
    /// Its slots.
    state: PoolState,
    /// Its scoreboard (one slot per [`PoolState::slots`] entry); `None` when it could
    /// not be created (then every ready worker looks idle).
    scoreboard: Option<Scoreboard>,
    /// Its slow log, open for appending.
    slowlog: Option<std::fs::File>,
    /// Removed from the config by a reload: its workers are finishing, nothing is
    /// started for it any more. The entry stays (empty) so that pool indices held by
    /// worker monitors stay valid.
    removed: bool,
    /// Scoreboards of earlier generations still used by their workers, oldest first:
    /// `(g, board)` serves the workers of generations below `g` (see
    /// [`PoolRuntime::board_for`]). A reload that needs more slots creates a new board
    /// for its generation; the old workers keep theirs.
    old_boards: Vec<(u64, Option<Scoreboard>)>,
    /// A reload's hand-over from the old generation to the new one, while it runs.
    handover: Option<reload::Handover>,
    /// Its idle kept-alive connections and the socketpairs every generation of its
    /// workers shares; made at the first spawn (inside the runtime), kept by reloads,
    /// dropped (closing the parked connections) once a removed pool's workers are gone.
    parking: Option<Parking>,
    /// Creating `parking` failed (logged once): workers run without it.
    parking_failed: bool,
    /// `preload`: the zygote of the current generation, once started.
    zygote: Option<Zygote>,
    /// Zygotes of earlier generations, kept while workers they forked run (only the
    /// zygote can collect their exit statuses); dropping one tells it to exit.
    old_zygotes: Vec<Zygote>,
}

impl PoolRuntime {
    /// A pool about to start, with its sockets and identity.
    fn new(pool: &PoolConfig, listeners: Vec<Listener>, identity: Option<Identity>) -> Self {
        let capacity = pool_capacity(pool);
        PoolRuntime {
            state: PoolState::new(&pool.name, capacity, pool.max_children),
            config: pool.clone(),
            listeners,
            identity,
            scoreboard: create_scoreboard(&pool.name, capacity),
            slowlog: pool
                .limits
                .slowlog
                .as_deref()
                .and_then(|path| open_slowlog_logged(&pool.name, path)),
            removed: false,
            old_boards: Vec::new(),
            handover: None,
            parking: None,
            parking_failed: false,
            zygote: None,
            old_zygotes: Vec::new(),
        }
    }

    /// A current zygote of an earlier generation (a reload or an emergency restart, which
    /// must import anew, or a reload that turned `preload` off) becomes an old one.
    fn retire_stale_zygote(&mut self) {
        if self
            .zygote
            .as_ref()
            .is_some_and(|z| z.generation != self.state.generation)
        {
            self.old_zygotes.extend(self.zygote.take());
        }
    }

    /// Let go of the zygotes no running worker came from (they exit at end of file on
    /// their fork channel); a removed pool's current one too, once its workers are
    /// gone.
    fn drop_unused_zygotes(&mut self) {
        self.retire_stale_zygote();
        let slots = &self.state.slots;
        self.old_zygotes
            .retain(|z| slots.iter().flatten().any(|w| w.generation == z.generation));
        if self.removed && self.state.live() == 0 {
            self.zygote = None;
        }
    }

    /// The scoreboard a worker of `generation` writes to.
    fn board_for(&self, generation: u64) -> Option<&Scoreboard> {
        match self
            .old_boards
            .iter()
            .find(|(until, _)| generation < *until)
        {
            Some((_, board)) => board.as_ref(),
            None => self.scoreboard.as_ref(),
        }
    }

    /// Forget the boards no live worker uses any more, and the empty slots beyond the
    /// capacity.
    fn drop_unused_boards(&mut self) {
        let slots = &self.state.slots;
        self.old_boards
            .retain(|(until, _)| slots.iter().flatten().any(|w| w.generation < *until));
        self.state.trim();
    }
}

/// A pool's scoreboard with `slots` slots; `None` (logged) when it cannot be created.
fn create_scoreboard(pool: &str, slots: usize) -> Option<Scoreboard> {
    match Scoreboard::create(slots) {
        Ok(sb) => Some(sb),
        Err(e) => {
            tracing::error!(
                "[pool {pool}] cannot create the scoreboard: {e}; idle and busy workers \
                 cannot be told apart"
            );
            None
        }
    }
}

/// Open a pool's slow log, logging a failure.
fn open_slowlog_logged(pool: &str, path: &std::path::Path) -> Option<std::fs::File> {
    open_slowlog(path)
        .map_err(|e| {
            tracing::error!(
                "[pool {pool}] cannot open the slow log {}: {e}",
                path.display()
            )
        })
        .ok()
}

/// The most processes a pool may have at once: `process.max`, or `pm.max_children`
/// twice over so that every worker can be replaced with overlap.
pub fn pool_capacity(pool: &PoolConfig) -> usize {
    if pool.limits.process_max > 0 {
        pool.limits.process_max as usize
    } else {
        pool.max_children as usize * 2
    }
}

/// Open a slow log for appending (created 0640 if missing).
fn open_slowlog(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
}

/// Crashes counted for `emergency_restart_threshold`.
struct Emergency {
    threshold: u32,
    interval: Duration,
    /// When recent SIGSEGV/SIGBUS deaths happened, oldest first.
    deaths: VecDeque<std::time::Instant>,
}

impl Emergency {
    /// Record a crash at `now`; true when the threshold is reached (the count restarts).
    fn record(&mut self, now: std::time::Instant) -> bool {
        if self.threshold == 0 || self.interval.is_zero() {
            return false;
        }
        self.deaths.push_back(now);
        while self
            .deaths
            .front()
            .is_some_and(|&t| now.duration_since(t) > self.interval)
        {
            self.deaths.pop_front();
        }
        if self.deaths.len() >= self.threshold as usize {
            self.deaths.clear();
            return true;
        }
        false
    }
}

/// How a spawn attempt ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Spawn {
    /// Started, with this pid in this slot.
    Started(usize, i32),
    /// `process.max` (the pool's or the global one) leaves no room.
    AtCap,
    /// The process could not be started (logged; the pool backs off).
    Failed,
    /// The pool's zygote is still importing the app (`preload`); its "ready" triggers
    /// the next attempt.
    Waiting,
}

/// Everything the supervisor needs to run.
pub struct Supervisor {
    pools: Vec<PoolRuntime>,
    /// The worker module every pool loads.
    module: PathBuf,
    /// For SIGUSR1.
    log: LogSink,
    /// Graceful-stop timeout.
    process_control_timeout: Duration,
    phase: Phase,
    /// Set when "ready to handle connections" has been logged.
    announced_ready: bool,
    /// The manager's exit status once stopped.
    exit_status: i32,
    events_tx: mpsc::UnboundedSender<Event>,
    events_rx: mpsc::UnboundedReceiver<Event>,
    manager_pid: i32,
    /// Global `process.max` (0 = unlimited).
    process_max: u32,
    /// The global `process.max` was reached and logged; cleared by the next spawn.
    warned_process_max: bool,
    /// `emergency_restart_threshold` bookkeeping.
    emergency: Emergency,
    /// The main configuration file, read again by a reload.
    config_path: PathBuf,
    /// The pid file written at start-up (moved by a reload that changes `pid`).
    pid_file: Option<PathBuf>,
    /// `--pid` was given: it wins over the config's `pid`, also after a reload.
    pid_from_cli: bool,
    /// Reload bookkeeping (see [`reload`]).
    reload: reload::Progress,
    /// Sockets no pool listens on any more, kept open until the last worker accepting
    /// on them has been told to finish.
    retired_listeners: Vec<reload::Retired>,
    /// Sockets systemd passed that the current config does not use: kept (never
    /// closed or unlinked) so a later reload that names them again serves them.
    spare_inherited: Vec<Listener>,
    /// The tasks watching ondemand pools' sockets, stopped and redone by a reload.
    watchers: Vec<tokio::task::AbortHandle>,
}

/// Where the pid file is, and whether `--pid` named it.
#[derive(Clone, Debug, Default)]
pub struct PidFile {
    /// The path, if any.
    pub path: Option<PathBuf>,
    /// It came from `--pid` (a reload keeps it whatever the config says).
    pub from_cli: bool,
}

impl Supervisor {
    /// Prepare a supervisor for `config` with the sockets bound for each pool (indexed
    /// like `config.pools`) and each pool's identity.
    pub fn new(
        config: &Config,
        listeners: Vec<Vec<Listener>>,
        identities: Vec<Option<Identity>>,
        module: PathBuf,
        log: LogSink,
        pid_file: PidFile,
    ) -> Supervisor {
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let pools = config
            .pools
            .iter()
            .zip(listeners)
            .zip(identities)
            .map(|((pool, listeners), identity)| PoolRuntime::new(pool, listeners, identity))
            .collect();
        Supervisor {
            pools,
            module,
            log,
            process_control_timeout: config.global.process_control_timeout,
            phase: Phase::Running,
            announced_ready: false,
            exit_status: exit_code::OK,
            events_tx,
            events_rx,
            manager_pid: std::process::id() as i32,
            process_max: config.global.process_max,
            warned_process_max: false,
            emergency: Emergency {
                threshold: config.global.emergency_restart_threshold,
                interval: config.global.emergency_restart_interval,
                deaths: VecDeque::new(),
            },
            config_path: config.main_file.clone(),
            pid_file: pid_file.path,
            pid_from_cli: pid_file.from_cli,
            reload: reload::Progress::default(),
            retired_listeners: Vec::new(),
            spare_inherited: Vec::new(),
            watchers: Vec::new(),
        }
    }

    /// Remove the Unix socket files this manager created.
    pub fn remove_socket_files(&self) {
        for pool in &self.pools {
            for l in &pool.listeners {
                l.remove_socket_file();
            }
        }
        for r in &self.retired_listeners {
            r.listener.remove_socket_file();
        }
    }

    /// The end of the run: socket files and the pid file go.
    fn clean_up(&self) {
        self.remove_socket_files();
        if let Some(path) = &self.pid_file {
            super::daemon::remove_pid_file(path);
        }
    }

    /// Run until stopped; returns the manager's exit status. `started` is called once
    /// the signal handlers are in place and the first workers are spawned. Call inside a
    /// current-thread runtime on the main thread (spawning must happen on the thread
    /// that outlives the workers: see `spawn`).
    pub async fn run(mut self, started: impl FnOnce()) -> std::io::Result<i32> {
        // Handlers first: a SIGTERM right after start-up must stop the workers, not kill
        // the manager and orphan them.
        let handlers = (|| {
            Ok::<_, std::io::Error>((
                signal(SignalKind::terminate())?,
                signal(SignalKind::interrupt())?,
                signal(SignalKind::quit())?,
                signal(SignalKind::user_defined1())?,
                signal(SignalKind::user_defined2())?,
                signal(SignalKind::hangup())?,
                signal(SignalKind::from_raw(libc::SIGTTIN))?,
                signal(SignalKind::from_raw(libc::SIGTTOU))?,
            ))
        })();
        let (
            mut sigterm,
            mut sigint,
            mut sigquit,
            mut sigusr1,
            mut sigusr2,
            mut sighup,
            mut sigttin,
            mut sigttou,
        ) = match handlers {
            Ok(h) => h,
            Err(e) => {
                self.clean_up();
                return Err(e);
            }
        };
        self.watch_ondemand_sockets();
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.reset(); // the first tick one second from now, not at once
        self.maintain(Trigger::Event);
        self.announce_ready(); // a config of ondemand pools only is ready at once
        started();
        loop {
            self.maintain(Trigger::Event);
            self.settle_reload();
            if matches!(self.phase, Phase::Stopping { .. }) && self.live() == 0 {
                break;
            }
            let wake = self.next_deadline();
            tokio::select! {
                Some(event) = self.events_rx.recv() => self.handle(event),
                _ = sigterm.recv() => self.begin_stop(StopKind::Fast, "Terminating ..."),
                _ = sigint.recv() => self.begin_stop(StopKind::Fast, "Terminating ..."),
                _ = sigquit.recv() => self.begin_stop(StopKind::Graceful, "Finishing ..."),
                _ = sigusr1.recv() => self.reopen_log(),
                _ = sigusr2.recv() => self.request_reload("SIGUSR2"),
                _ = sighup.recv() => self.request_reload("SIGHUP"),
                _ = sigttin.recv() => self.add_worker(),
                _ = sigttou.recv() => self.remove_worker(),
                _ = tick.tick() => self.on_tick(),
                _ = sleep_until(wake) => self.on_deadline(),
                // systemd: periodic STATUS line and watchdog keep-alive (systemd.rs).
                _ = super::systemd::tick_due() => {
                    super::systemd::tick(self.pools.iter().filter(|p| !p.removed).map(|p| &p.state))
                }
            }
        }
        // The workers are gone: parked connections have nobody left to serve them,
        // and the zygotes (told by end of file on their fork channels) nothing to fork.
        for pool in &mut self.pools {
            pool.parking = None;
            pool.zygote = None;
            pool.old_zygotes.clear();
        }
        self.clean_up();
        Ok(self.exit_status)
    }

    /// Wake the loop when a connection arrives on an ondemand pool's socket. Readiness
    /// only: the sockets are shared with the workers, so their flags (O_NONBLOCK) are
    /// left alone and nothing is accepted here; edge-triggered, so a connection that
    /// stays queued is seen again by the next tick's poll, not by a busy loop.
    fn watch_ondemand_sockets(&mut self) {
        for watcher in self.watchers.drain(..) {
            watcher.abort(); // drops its duplicate of the socket
        }
        for pool in &self.pools {
            if pool.removed || !matches!(pool.config.pm, PmMode::Ondemand { .. }) {
                continue;
            }
            for l in &pool.listeners {
                // A duplicate the watcher owns: same socket, and its lifetime is the
                // watcher's, whatever happens to the listener.
                let registered = l.fd.try_clone().and_then(|dup| {
                    // SAFETY: `dup` is owned by the AsyncFd and closed only when it is.
                    unsafe {
                        tokio::io::unix::AsyncFd::register_with_interest(
                            dup,
                            tokio::io::Interest::READABLE,
                        )
                    }
                    .map_err(std::io::Error::from)
                });
                let afd = match registered {
                    Ok(afd) => afd,
                    Err(e) => {
                        tracing::error!(
                            "[pool {}] cannot watch {} for connections: {e}; workers are \
                             started on the maintenance tick only",
                            pool.config.name,
                            l.addr
                        );
                        continue;
                    }
                };
                let tx = self.events_tx.clone();
                let task = tokio::spawn(async move {
                    while let Ok(mut guard) = afd.readable().await {
                        guard.clear_ready();
                        if tx.send(Event::Pending).is_err() {
                            break;
                        }
                    }
                });
                self.watchers.push(task.abort_handle());
            }
        }
    }

    fn live(&self) -> usize {
        self.pools.iter().map(|p| p.state.live()).sum()
    }

    fn next_deadline(&self) -> Option<Instant> {
        let now = std::time::Instant::now();
        let backoffs = self
            .pools
            .iter()
            .filter_map(|p| p.state.not_before)
            .filter(|&t| t > now)
            .map(Instant::from_std);
        let stop = match self.phase {
            Phase::Stopping { deadline, .. } => Some(deadline),
            Phase::Running => None,
        };
        backoffs.chain(stop).min()
    }

    /// Log "ready to handle connections" once every pool can serve: a ready worker in
    /// each, except ondemand pools, which start workers only when a connection waits.
    fn announce_ready(&mut self) {
        if !self.announced_ready
            && self.pools.iter().all(|p| {
                p.removed
                    || p.state.has_ready_worker()
                    || matches!(p.config.pm, PmMode::Ondemand { .. })
            })
        {
            self.announced_ready = true;
            tracing::info!("ready to handle connections");
            super::systemd::ready(); // systemd Type=notify: READY=1
        }
    }

    /// Start the replacements owed, then apply the planner's decisions, for every pool.
    /// Does nothing once stopping.
    fn maintain(&mut self, trigger: Trigger) {
        if self.phase != Phase::Running {
            return;
        }
        for index in 0..self.pools.len() {
            if self.pools[index].removed {
                continue;
            }
            self.spawn_replacements(index);
            self.plan_pool(index, trigger);
            self.spawn_for_handover(index);
        }
    }

    /// Start a replacement for each retiring worker that has none.
    fn spawn_replacements(&mut self, index: usize) {
        let owed: Vec<i32> = self.pools[index]
            .state
            .slots
            .iter()
            .flatten()
            .filter(|w| {
                !matches!(w.state, WorkerState::Stopping { .. })
                    && w.retire
                        .as_ref()
                        .is_some_and(|r| r.replacement.is_none() && !r.batch)
            })
            .map(|w| w.pid)
            .collect();
        for old in owed {
            if self.pools[index]
                .state
                .spawn_allowance(std::time::Instant::now())
                == 0
            {
                return;
            }
            match self.spawn_one(index) {
                Spawn::Started(slot, pid) => {
                    if let Some(r) = self.pools[index]
                        .state
                        .find_mut(old)
                        .and_then(|w| w.retire.as_mut())
                    {
                        r.replacement = Some((slot, pid));
                    }
                }
                // No room for an overlapping replacement: stop the old worker first
                // and let the planner refill once it is gone.
                Spawn::AtCap => {
                    tracing::info!(
                        "[pool {}] no room for a replacement of child {old} under \
                         process.max; stopping it first",
                        self.pools[index].config.name
                    );
                    self.stop_worker(index, old, Signal::SIGQUIT);
                }
                Spawn::Failed | Spawn::Waiting => return,
            }
        }
    }

    /// What ondemand's planner needs: connections waiting on the pool's sockets.
    fn waiting(&self, index: usize) -> Waiting {
        let mut count: u32 = 0;
        let mut unknown = false;
        for l in &self.pools[index].listeners {
            let fd = l.raw_fd();
            if !readable_now(fd) {
                continue;
            }
            match l.addr {
                ListenAddr::Tcp(_) => count += accept_queue_len(fd).unwrap_or(1).max(1),
                ListenAddr::Unix(_) => unknown = true,
            }
        }
        // A parked connection whose next request has arrived waits for a worker just
        // like a queued one; how many is not known.
        if self.pools[index]
            .parking
            .as_ref()
            .is_some_and(Parking::has_waiting)
        {
            unknown = true;
        }
        match (count, unknown) {
            (0, false) => Waiting::No,
            (n, false) => Waiting::Count(n),
            _ => Waiting::Some,
        }
    }

    fn plan_pool(&mut self, index: usize, trigger: Trigger) {
        let now = std::time::Instant::now();
        let waiting = if matches!(self.pools[index].config.pm, PmMode::Ondemand { .. }) {
            self.waiting(index)
        } else {
            Waiting::No
        };
        let pool = &mut self.pools[index];
        let mut views = Vec::new();
        for slot in 0..pool.state.slots.len() {
            let Some(generation) = pool.state.slots[slot]
                .as_ref()
                .filter(|w| w.counted())
                .map(|w| w.generation)
            else {
                continue;
            };
            let scoreboard = pool.board_for(generation);
            let seen = scoreboard.and_then(|sb| sb.try_slot(slot)).map(|s| {
                let snap = s.snapshot();
                (snap.state, snap.requests)
            });
            let Some(w) = pool.state.slots[slot].as_mut() else {
                continue;
            };
            views.push(planner::View {
                pid: w.pid,
                status: w.observe(seen, now),
            });
        }
        let input = planner::Input {
            pm: pool.config.pm,
            max_children: pool.config.max_children,
            target: pool.state.target,
            started: pool.state.started,
            workers: &views,
            waiting,
            trigger,
            now,
        };
        let actions = planner::plan(&input, &mut pool.state.memory);
        pool.state.started = true;
        for action in actions {
            self.apply(index, action);
        }
    }

    fn apply(&mut self, index: usize, action: Action) {
        let pool = &self.pools[index];
        let name = pool.config.name.clone();
        match action {
            Action::Spawn(n) => {
                let mut started = 0;
                for _ in 0..n {
                    if self.pools[index]
                        .state
                        .spawn_allowance(std::time::Instant::now())
                        == 0
                    {
                        break;
                    }
                    match self.spawn_one(index) {
                        Spawn::Started(..) => started += 1,
                        Spawn::AtCap | Spawn::Failed | Spawn::Waiting => break,
                    }
                }
                if started > 0 && !matches!(self.pools[index].config.pm, PmMode::Static) {
                    tracing::debug!(
                        "[pool {name}] {started} child(ren) have been created dynamically"
                    );
                }
            }
            Action::Retire { pid, why } => {
                let text = match why {
                    RetireWhy::TooManyIdle(idle) => {
                        let max = match pool.config.pm {
                            PmMode::Dynamic {
                                max_spare_servers, ..
                            } => max_spare_servers,
                            _ => 0,
                        };
                        format!("{idle} idle workers, more than pm.max_spare_servers ({max})")
                    }
                    RetireWhy::IdleTimeout(d) => {
                        let limit = match pool.config.pm {
                            PmMode::Ondemand {
                                process_idle_timeout,
                                ..
                            } => format_duration(process_idle_timeout),
                            _ => String::new(),
                        };
                        format!(
                            "idle for {:.1}s, longer than pm.process_idle_timeout ({limit})",
                            d.as_secs_f64()
                        )
                    }
                    RetireWhy::AboveTarget => {
                        format!("the pool keeps {} workers (SIGTTOU)", pool.state.target)
                    }
                };
                tracing::info!("[pool {name}] child {pid} retired: {text}");
                self.stop_worker(index, pid, Signal::SIGQUIT);
            }
            Action::MaxChildrenReached => {
                let setting = match pool.config.pm {
                    PmMode::Ondemand { .. } => "max_children",
                    _ => "pm.max_children",
                };
                tracing::warn!(
                    "[pool {name}] server reached {setting} setting ({}), consider raising it",
                    pool.config.max_children
                );
            }
            Action::SeemsBusy { rate, idle, total } => tracing::warn!(
                "[pool {name}] seems busy (you may need to increase pm.start_servers, or \
                 pm.min/max_spare_servers), spawning {rate} children, there are {idle} idle, \
                 and {total} total children"
            ),
        }
    }

    /// Whether `process.max` (the pool's, then the global one) leaves room for one more
    /// process; logs once per episode when it does not.
    fn room_for_one(&mut self, index: usize) -> bool {
        let total = self.live();
        let pool = &mut self.pools[index];
        if pool.state.free_slot().is_none() {
            if !pool.state.warned_process_max {
                pool.state.warned_process_max = true;
                tracing::warn!(
                    "[pool {}] The maximum number of processes has been reached ({}). Please \
                     review your configuration and consider raising 'process.max'",
                    pool.config.name,
                    pool.state.slots.len()
                );
            }
            return false;
        }
        if self.process_max > 0 && total >= self.process_max as usize {
            if !self.warned_process_max {
                self.warned_process_max = true;
                tracing::warn!(
                    "The maximum number of processes has been reached. Please review your \
                     configuration and consider raising 'process.max'"
                );
            }
            return false;
        }
        true
    }

    fn spawn_one(&mut self, index: usize) -> Spawn {
        if !self.room_for_one(index) {
            return Spawn::AtCap;
        }
        let pool = &mut self.pools[index];
        let Some(slot) = pool.state.free_slot() else {
            return Spawn::AtCap;
        };
        let max_requests = jittered_max_requests(
            pool.config.limits.max_requests,
            pool.config.limits.max_requests_jitter,
        );
        if pool.parking.is_none() && !pool.parking_failed {
            let tx = self.events_tx.clone();
            // A dispatched connection is load for ondemand's planner (see `waiting`).
            match Parking::start(&pool.config.name, move || {
                let _ = tx.send(Event::Pending);
            }) {
                Ok(p) => pool.parking = Some(p),
                Err(e) => {
                    pool.parking_failed = true;
                    tracing::error!(
                        "[pool {}] cannot create the parking sockets: {e}; each idle \
                         kept-alive connection will hold a worker",
                        pool.config.name
                    );
                }
            }
        }
        pool.retire_stale_zygote();
        let spawner = PoolSpawner {
            pool: &pool.config,
            listeners: &pool.listeners,
            module: &self.module,
            identity: pool.identity.as_ref(),
            manager_pid: self.manager_pid,
            scoreboard_fd: pool.scoreboard.as_ref().map(|sb| sb.fd().as_raw_fd()),
            max_requests,
            parking: pool.parking.as_ref().map(Parking::worker_fds),
        };
        let started = std::time::Instant::now();
        let spawned = if pool.config.preload {
            let generation = pool.state.generation;
            match &pool.zygote {
                Some(z) if z.ready => {
                    let forked = z.fork(slot as u32, max_requests);
                    if let Err(ForkError::Broken(_)) = &forked {
                        // Stuck or gone: a new one starts after the back-off; its own
                        // exit is reported as usual.
                        let _ = kill(Pid::from_raw(z.pid), Signal::SIGKILL);
                        pool.old_zygotes.extend(pool.zygote.take());
                    }
                    forked.map_err(|e| std::io::Error::other(e.to_string()))
                }
                Some(_) => return Spawn::Waiting,
                None => match Zygote::start(&spawner, generation) {
                    Ok((z, spawned)) => {
                        tracing::info!(
                            "[pool {}] zygote {} started: importing the app (preload)",
                            pool.config.name,
                            z.pid
                        );
                        tokio::spawn(monitor(
                            spawned,
                            pool.config.name.clone(),
                            index,
                            Role::Zygote(z.reports()),
                            self.events_tx.clone(),
                        ));
                        pool.zygote = Some(z);
                        return Spawn::Waiting;
                    }
                    Err(e) => Err(e),
                },
            }
        } else {
            spawner.spawn(slot as u32)
        };
        match spawned {
            Ok(spawned) => {
                let pid = spawned.pid;
                if let Some(s) = pool.scoreboard.as_ref().and_then(|sb| sb.try_slot(slot)) {
                    s.assign(pid.max(0) as u32, unix_ms());
                }
                tracing::info!("[pool {}] child {pid} started", pool.config.name);
                pool.state.slots[slot] = Some(Worker::new(
                    pid,
                    started,
                    pool.state.generation,
                    max_requests,
                ));
                pool.state.warned_process_max = false;
                self.warned_process_max = false;
                tokio::spawn(monitor(
                    spawned,
                    pool.config.name.clone(),
                    index,
                    Role::Worker { slot },
                    self.events_tx.clone(),
                ));
                Spawn::Started(slot, pid)
            }
            Err(e) => {
                let wait = pool.state.record_start_failure(started);
                tracing::error!(
                    "[pool {}] cannot start a worker: {e}; next attempt in {}",
                    pool.config.name,
                    human(wait)
                );
                Spawn::Failed
            }
        }
    }

    /// Send `signal` to one worker and remember it is stopping; after SIGQUIT the tick
    /// escalates to SIGKILL once `process_control_timeout` has passed.
    fn stop_worker(&mut self, index: usize, pid: i32, signal: Signal) {
        let timeout = self.process_control_timeout;
        let Some(w) = self.pools[index].state.find_mut(pid) else {
            return;
        };
        let was_ready = w.was_ready();
        w.state = WorkerState::Stopping { signal, was_ready };
        w.kill_at = (signal != Signal::SIGKILL).then(|| std::time::Instant::now() + timeout);
        // ESRCH: it already exited and its Exited event is on the way.
        let _ = kill(Pid::from_raw(pid), signal);
    }

    /// Mark one worker for replacement, logging why.
    fn retire(&mut self, index: usize, pid: i32, reason: String) {
        let name = self.pools[index].config.name.clone();
        let Some(w) = self.pools[index].state.find_mut(pid) else {
            return;
        };
        if !w.counted() {
            return;
        }
        tracing::info!("[pool {name}] child {pid} reached {reason}, replacing it");
        w.retire = Some(Retire {
            reason,
            replacement: None,
            batch: false,
        });
    }

    /// The maintenance tick.
    fn on_tick(&mut self) {
        let now = std::time::Instant::now();
        let now_us = unix_us();
        for index in 0..self.pools.len() {
            self.escalate_stops(index, now);
            if self.phase == Phase::Running {
                self.check_lifetimes(index, now);
            }
            self.check_request_timeouts(index, now_us);
            let pool = &mut self.pools[index];
            pool.drop_unused_zygotes();
            if pool.removed && pool.state.live() == 0 && pool.parking.is_some() {
                // Its workers parked their kept connections on the way out; no worker
                // of this pool will ever take them.
                pool.parking = None;
            }
        }
        self.maintain(Trigger::Tick);
    }

    /// SIGKILL for workers that ignored SIGQUIT for `process_control_timeout`.
    fn escalate_stops(&mut self, index: usize, now: std::time::Instant) {
        let late: Vec<i32> = self.pools[index]
            .state
            .slots
            .iter()
            .flatten()
            .filter(|w| {
                w.kill_at.is_some_and(|t| t <= now)
                    && !matches!(
                        w.state,
                        WorkerState::Stopping {
                            signal: Signal::SIGKILL,
                            ..
                        }
                    )
            })
            .map(|w| w.pid)
            .collect();
        for pid in late {
            tracing::warn!(
                "[pool {}] child {pid} did not exit within process_control_timeout ({}) \
                 after SIGQUIT, sending SIGKILL",
                self.pools[index].config.name,
                format_duration(self.process_control_timeout)
            );
            self.stop_worker(index, pid, Signal::SIGKILL);
        }
    }

    fn check_lifetimes(&mut self, index: usize, now: std::time::Instant) {
        let limit = self.pools[index].config.limits.max_lifetime;
        if limit.is_zero() {
            return;
        }
        let old: Vec<i32> = self.pools[index]
            .state
            .slots
            .iter()
            .flatten()
            .filter(|w| w.counted() && now.duration_since(w.started) > limit)
            .map(|w| w.pid)
            .collect();
        for pid in old {
            self.retire(
                index,
                pid,
                format!("pm.max_lifetime ({})", format_duration(limit)),
            );
        }
    }

    /// The `request_terminate_timeout` backstop: SIGKILL a worker whose request has run
    /// [`TERMINATE_BACKSTOP`] past the timeout.
    fn check_request_timeouts(&mut self, index: usize, now_us: u64) {
        let timeout = self.pools[index].config.limits.request_terminate_timeout;
        if timeout.is_zero() {
            return;
        }
        let pool = &self.pools[index];
        let limit_us = (timeout + TERMINATE_BACKSTOP).as_micros() as u64;
        let mut stuck = Vec::new();
        for (slot, w) in pool.state.slots.iter().enumerate() {
            let Some(w) = w else { continue };
            if matches!(
                w.state,
                WorkerState::Stopping {
                    signal: Signal::SIGKILL,
                    ..
                }
            ) {
                continue;
            }
            let Some(snap) = pool
                .board_for(w.generation)
                .and_then(|sb| sb.try_slot(slot))
                .map(|s| s.snapshot())
            else {
                continue;
            };
            let busy = matches!(
                snap.state,
                SlotState::Reading | SlotState::Running | SlotState::Writing | SlotState::Finishing
            );
            let ran_us = now_us.saturating_sub(snap.request_start_unix_us);
            if busy && snap.request_start_unix_us > 0 && ran_us > limit_us {
                stuck.push((w.pid, ran_us, snap.method, snap.uri));
            }
        }
        for (pid, ran_us, method, uri) in stuck {
            tracing::warn!(
                "[pool {}] child {pid} (request: \"{method} {uri}\") execution timed out \
                 ({:.1} sec), terminating",
                self.pools[index].config.name,
                ran_us as f64 / 1e6
            );
            self.stop_worker(index, pid, Signal::SIGKILL);
        }
    }

    /// The pools SIGTTIN and SIGTTOU resize: none while stopping (the workers are on
    /// their way out), and never one a reload removed (its workers are finishing).
    fn resizable_pools(&self) -> Vec<usize> {
        if self.phase != Phase::Running {
            return Vec::new();
        }
        (0..self.pools.len())
            .filter(|&index| !self.pools[index].removed)
            .collect()
    }

    /// SIGTTIN: one more worker in every pool, within its limits.
    fn add_worker(&mut self) {
        for index in self.resizable_pools() {
            let pool = &mut self.pools[index];
            let name = pool.config.name.clone();
            let counted = pool.state.counted();
            match pool.config.pm {
                PmMode::Static => {
                    let cap = pool.state.slots.len() as u32;
                    if pool.state.target < cap {
                        pool.state.target += 1;
                        tracing::info!(
                            "[pool {name}] SIGTTIN: keeping {} workers (was {})",
                            pool.state.target,
                            pool.state.target - 1
                        );
                    } else {
                        tracing::warn!(
                            "[pool {name}] SIGTTIN ignored: the pool already keeps {} workers, \
                             its process.max",
                            pool.state.target
                        );
                    }
                }
                _ => {
                    let max = pool.config.max_children;
                    if counted < max {
                        if let Spawn::Started(..) = self.spawn_one(index) {
                            tracing::info!(
                                "[pool {name}] SIGTTIN: added a worker ({} of pm.max_children {max})",
                                counted + 1
                            );
                        }
                    } else {
                        tracing::warn!(
                            "[pool {name}] SIGTTIN ignored: pm.max_children ({max}) reached"
                        );
                    }
                }
            }
        }
    }

    /// SIGTTOU: one worker fewer in every pool, within its limits.
    fn remove_worker(&mut self) {
        for index in self.resizable_pools() {
            let pool = &mut self.pools[index];
            let name = pool.config.name.clone();
            let counted = pool.state.counted();
            let floor = match pool.config.pm {
                PmMode::Static => {
                    if pool.state.target > 1 {
                        pool.state.target -= 1;
                        tracing::info!(
                            "[pool {name}] SIGTTOU: keeping {} workers (was {})",
                            pool.state.target,
                            pool.state.target + 1
                        );
                    } else {
                        tracing::warn!("[pool {name}] SIGTTOU ignored: the pool keeps 1 worker");
                    }
                    continue; // the tick retires the extra worker
                }
                PmMode::Dynamic {
                    min_spare_servers, ..
                } => min_spare_servers,
                PmMode::Ondemand { .. } => 0,
            };
            if counted <= floor {
                tracing::warn!(
                    "[pool {name}] SIGTTOU ignored: the pool has {counted} workers, its minimum"
                );
                continue;
            }
            // The worker idle longest, else the newest.
            let pick = pool
                .state
                .slots
                .iter()
                .flatten()
                .filter(|w| w.counted())
                .min_by_key(|w| {
                    (
                        w.idle_since.is_none(),
                        w.idle_since,
                        std::cmp::Reverse(w.started),
                    )
                })
                .map(|w| w.pid);
            if let Some(pid) = pick {
                tracing::info!(
                    "[pool {name}] SIGTTOU: retiring child {pid} ({} workers left)",
                    counted - 1
                );
                self.stop_worker(index, pid, Signal::SIGQUIT);
            }
        }
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Ready { pool, slot, pid } => {
                let now = std::time::Instant::now();
                if self.pools[pool].state.mark_ready(slot, pid, now) {
                    tracing::debug!(
                        "[pool {}] child {pid} is ready",
                        self.pools[pool].config.name
                    );
                    if let Some(old) = self.pools[pool].state.predecessor_of(pid) {
                        tracing::info!(
                            "[pool {}] child {pid} is ready; sending SIGQUIT to child {old}, \
                             which it replaces",
                            self.pools[pool].config.name
                        );
                        self.stop_worker(pool, old, Signal::SIGQUIT);
                    }
                }
                self.announce_ready();
            }
            Event::Retire {
                pool,
                slot,
                pid,
                reason,
            } => {
                let p = &self.pools[pool];
                let Some(w) = p.state.slots.get(slot).and_then(Option::as_ref) else {
                    return;
                };
                if w.pid != pid {
                    return;
                }
                let reason = match reason.as_str() {
                    "max_requests" => format!("pm.max_requests ({})", w.max_requests),
                    "max_memory" => format!(
                        "pm.max_memory ({})",
                        format_size(p.config.limits.max_memory)
                    ),
                    other => other.to_string(),
                };
                self.retire(pool, pid, reason);
            }
            Event::Slowlog { pool, entry } => {
                let p = &mut self.pools[pool];
                if let Some(file) = &mut p.slowlog {
                    if let Err(e) = file.write_all(&entry) {
                        tracing::error!(
                            "[pool {}] cannot write to the slow log: {e}",
                            p.config.name
                        );
                    }
                }
            }
            Event::Pending => {} // the loop's maintain() looks at the sockets
            Event::Exited {
                pool,
                slot,
                pid,
                exit,
            } => self.on_exit(pool, slot, pid, exit),
            Event::ZygoteReady { pool, pid } => {
                let p = &mut self.pools[pool];
                if let Some(z) = p.zygote.as_mut().filter(|z| z.pid == pid) {
                    z.ready = true;
                    tracing::info!(
                        "[pool {}] zygote {pid} is ready: the app is imported, workers are \
                         forked from it",
                        p.config.name
                    );
                }
            }
            Event::ZygoteExited { pool, pid, exit } => self.on_zygote_exit(pool, pid, exit),
        }
    }

    /// A zygote ended. The current one ending before "ready" is a start failure (the
    /// app did not import: the pool backs off); after, the next worker needs a new one.
    /// Its workers keep serving either way.
    fn on_zygote_exit(&mut self, index: usize, pid: i32, exit: Exit) {
        let stopping = matches!(self.phase, Phase::Stopping { .. });
        let pool = &mut self.pools[index];
        let name = pool.config.name.clone();
        let Some(z) = pool.zygote.take_if(|z| z.pid == pid) else {
            // An older generation's, told to exit (or killed after a failed fork).
            if let Some(i) = pool.old_zygotes.iter().position(|z| z.pid == pid) {
                let z = pool.old_zygotes.remove(i);
                let text = describe_exit(exit, z.started.elapsed(), true);
                tracing::debug!("[pool {name}] zygote {pid} {text}");
            }
            return;
        };
        let text = describe_exit(exit, z.started.elapsed(), false);
        match judge(exit, z.ready, stopping) {
            Verdict::Normal if stopping => tracing::info!("[pool {name}] zygote {pid} {text}"),
            Verdict::Normal => tracing::warn!(
                "[pool {name}] zygote {pid} {text}; its workers keep serving, and a new \
                 zygote starts for the next worker"
            ),
            Verdict::StartFailure(why) if stopping => {
                tracing::error!("[pool {name}] zygote {pid} failed to start: {why}")
            }
            Verdict::StartFailure(why) => {
                let wait = pool.state.record_start_failure(std::time::Instant::now());
                tracing::error!(
                    "[pool {name}] zygote {pid} failed to start: {why}; next attempt in {}",
                    human(wait)
                );
            }
            Verdict::VersionMismatch => self.version_mismatch(name, pid),
        }
    }

    fn on_exit(&mut self, index: usize, slot: usize, pid: i32, exit: Exit) {
        let stopping = matches!(self.phase, Phase::Stopping { .. });
        let pool = &mut self.pools[index];
        let Some(worker) = pool.state.worker_mut(slot, pid).cloned() else {
            return;
        };
        let killed_by_us = matches!(
            worker.state,
            WorkerState::Stopping {
                signal: Signal::SIGKILL,
                ..
            }
        );
        pool.state.slots[slot] = None;
        if let Some(s) = pool
            .board_for(worker.generation)
            .and_then(|sb| sb.try_slot(slot))
        {
            s.release();
        }
        pool.drop_unused_boards();
        pool.drop_unused_zygotes();
        if !worker.was_ready() {
            // A replacement that never became ready: its predecessor needs another.
            pool.state.unlink_replacement(pid);
        }
        let name = &pool.config.name;
        let lifetime = worker.started.elapsed();
        let text = describe_exit(exit, lifetime, killed_by_us);
        let requested = matches!(worker.state, WorkerState::Stopping { .. });
        let routine = match exit {
            Exit::Code(0) => true,
            Exit::Signal { signal, .. } => {
                requested && [libc::SIGQUIT, libc::SIGTERM, libc::SIGKILL].contains(&signal)
            }
            Exit::Code(_) => false,
            Exit::Unknown => requested,
        };
        if routine {
            tracing::info!("[pool {name}] child {pid} {text}");
        } else {
            tracing::warn!("[pool {name}] child {pid} {text}");
        }
        match judge(exit, worker.was_ready(), stopping) {
            Verdict::Normal => {}
            Verdict::StartFailure(why) => {
                if stopping {
                    tracing::error!("[pool {name}] child {pid} failed to start: {why}");
                } else {
                    let wait = pool.state.record_start_failure(std::time::Instant::now());
                    tracing::error!(
                        "[pool {name}] child {pid} failed to start: {why}; next attempt in {}",
                        human(wait)
                    );
                }
            }
            Verdict::VersionMismatch => {
                let name = name.clone();
                self.version_mismatch(name, pid);
                return;
            }
        }
        let crashed = matches!(
            exit,
            Exit::Signal { signal, .. } if signal == libc::SIGSEGV || signal == libc::SIGBUS
        );
        if crashed && !stopping && self.emergency.record(std::time::Instant::now()) {
            tracing::warn!(
                "failed processes threshold ({} in {} sec) is reached, initiating reload",
                self.emergency.threshold,
                self.emergency.interval.as_secs()
            );
            self.replace_everything("emergency restart");
        }
    }

    /// Replace every worker of every pool, new ones first.
    fn replace_everything(&mut self, reason: &str) {
        for pool in &mut self.pools {
            let n = pool.state.replace_all(reason);
            if n > 0 {
                tracing::info!(
                    "[pool {}] replacing {n} workers ({reason})",
                    pool.config.name
                );
            }
        }
    }

    fn version_mismatch(&mut self, name: String, pid: i32) {
        tracing::error!(
            "[pool {name}] child {pid}: the worker module {} is from another pyfpm build \
             than this manager; rebuild both with `cargo build --workspace`",
            self.module.display()
        );
        self.exit_status = exit_code::SOFTWARE;
        self.begin_stop(StopKind::Fast, "Terminating ...");
    }

    fn begin_stop(&mut self, kind: StopKind, message: &str) {
        if let Phase::Stopping { kind: current, .. } = self.phase {
            if current == StopKind::Fast || kind == StopKind::Graceful {
                return; // nothing downgrades a stop, and a repeat changes nothing
            }
        }
        tracing::info!("{message}");
        super::systemd::stopping(); // systemd Type=notify: STOPPING=1
        let (signal, wait) = match kind {
            StopKind::Fast => (Signal::SIGTERM, FAST_STOP_GRACE),
            StopKind::Graceful => (Signal::SIGQUIT, self.process_control_timeout),
        };
        self.phase = Phase::Stopping {
            kind,
            deadline: Instant::now() + wait,
            killed: false,
        };
        self.signal_all(signal);
    }

    fn signal_all(&mut self, signal: Signal) {
        for pool in &mut self.pools {
            for worker in pool.state.slots.iter_mut().flatten() {
                let was_ready = worker.was_ready();
                worker.state = WorkerState::Stopping { signal, was_ready };
                // ESRCH: it already exited and its Exited event is on the way.
                let _ = kill(Pid::from_raw(worker.pid), signal);
            }
        }
    }

    fn on_deadline(&mut self) {
        match self.phase {
            Phase::Running => {} // a back-off ended: the loop spawns
            Phase::Stopping {
                kind,
                killed: false,
                ..
            } => {
                for pool in &self.pools {
                    for w in pool.state.slots.iter().flatten() {
                        tracing::warn!(
                            "[pool {}] child {} is still running, sending SIGKILL",
                            pool.config.name,
                            w.pid
                        );
                    }
                }
                self.phase = Phase::Stopping {
                    kind,
                    deadline: Instant::now() + AFTER_KILL_GRACE,
                    killed: true,
                };
                self.signal_all(Signal::SIGKILL);
            }
            Phase::Stopping { killed: true, .. } => {
                for pool in &mut self.pools {
                    for w in pool.state.slots.iter_mut() {
                        if let Some(worker) = w.take() {
                            tracing::error!(
                                "[pool {}] child {} did not exit after SIGKILL; giving up on it",
                                pool.config.name,
                                worker.pid
                            );
                        }
                    }
                }
            }
        }
    }

    fn reopen_log(&mut self) {
        match self.log.reopen() {
            Ok(()) => tracing::info!("error log file re-opened"),
            Err(e) => tracing::error!("{e}; still writing to the old file"),
        }
        for pool in &mut self.pools {
            let Some(path) = pool.config.limits.slowlog.as_deref() else {
                continue;
            };
            match open_slowlog(path) {
                Ok(file) => {
                    pool.slowlog = Some(file);
                    tracing::info!("[pool {}] slow log file re-opened", pool.config.name);
                }
                Err(e) => tracing::error!(
                    "[pool {}] cannot reopen the slow log {}: {e}; still writing to the old file",
                    pool.config.name,
                    path.display()
                ),
            }
        }
    }
}

/// Read a worker's control messages until end of file (see [`pyfpm_ipc::control`]).
async fn read_control(
    control: tokio::net::UnixStream,
    name: String,
    pool: usize,
    role: Role,
    pid: i32,
    events: mpsc::UnboundedSender<Event>,
) {
    read_control_lines(control, &name, pool, &role, pid, &events).await;
    if let Role::Zygote(reports) = &role {
        // No more exit reports: its workers' monitors fall back on their pidfds.
        reports.close();
    }
}

/// [`read_control`]'s loop, until end of file or a broken message.
async fn read_control_lines(
    control: tokio::net::UnixStream,
    name: &str,
    pool: usize,
    role: &Role,
    pid: i32,
    events: &mpsc::UnboundedSender<Event>,
) {
    let mut reader = tokio::io::BufReader::new(control);
    let mut line = Vec::new();
    loop {
        line.clear();
        match (&mut reader)
            .take(MAX_CONTROL_LINE)
            .read_until(b'\n', &mut line)
            .await
        {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if line.last() != Some(&b'\n') {
            tracing::warn!(
                "[pool {name}] child {pid}: control message too long or cut short; no \
                 longer reading its control socket"
            );
            return;
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim();
        let (word, arg) = text.split_once(' ').unwrap_or((text, ""));
        let event = match (word, role) {
            (pyfpm_ipc::control::READY, Role::Worker { slot }) => Event::Ready {
                pool,
                slot: *slot,
                pid,
            },
            (pyfpm_ipc::control::READY, Role::Zygote(_)) => Event::ZygoteReady { pool, pid },
            (pyfpm_ipc::control::EXITED, Role::Zygote(reports)) => {
                match pyfpm_ipc::zygote::parse_exit(arg) {
                    Some((child, status)) => reports.deliver(child, status.into()),
                    None => {
                        tracing::warn!("[pool {name}] zygote {pid}: malformed exit report {text:?}")
                    }
                }
                continue;
            }
            (pyfpm_ipc::control::RETIRE, &Role::Worker { slot }) => Event::Retire {
                pool,
                slot,
                pid,
                reason: arg.to_string(),
            },
            (pyfpm_ipc::control::SLOWLOG, Role::Worker { .. }) => {
                let len = match arg.parse::<usize>() {
                    Ok(n) if n <= MAX_SLOWLOG_ENTRY => n,
                    _ => {
                        tracing::warn!(
                            "[pool {name}] child {pid}: bad slow-log entry size {arg:?}; no \
                             longer reading its control socket"
                        );
                        return;
                    }
                };
                let mut entry = vec![0; len];
                if reader.read_exact(&mut entry).await.is_err() {
                    return;
                }
                Event::Slowlog { pool, entry }
            }
            _ => {
                tracing::debug!("[pool {name}] child {pid}: unknown control message {text:?}");
                continue;
            }
        };
        if events.send(event).is_err() {
            return;
        }
    }
}

/// Whether `fd` has a connection waiting (poll with no timeout: a level check, unlike
/// the edge-triggered watcher).
fn readable_now(fd: RawFd) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, zero timeout.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    n > 0 && p.revents & libc::POLLIN != 0
}

/// Connections in a TCP listening socket's accept queue: on Linux, `tcpi_unacked` of a
/// socket in LISTEN state is its current backlog length.
fn accept_queue_len(fd: RawFd) -> Option<u32> {
    // SAFETY: getsockopt into a zeroed tcp_info of the size we pass.
    unsafe {
        let mut info: libc::tcp_info = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        let rc = libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        );
        (rc == 0).then_some(info.tcpi_unacked)
    }
}

/// Now, in milliseconds since the Unix epoch (scoreboard times).
fn unix_ms() -> u64 {
    unix_us() / 1000
}

/// Now, in microseconds since the Unix epoch.
fn unix_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Sleep until `deadline`, or forever.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// A back-off for humans, in whole seconds rounded up (`8s`): the remaining part of a
/// wave's back-off is 0.97 s, not "1.0s".
fn human(d: Duration) -> String {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    format!("{}s", secs.max(1))
}

/// What a monitored process is to its pool.
#[derive(Clone, Debug)]
enum Role {
    /// A worker in this slot.
    Worker { slot: usize },
    /// The pool's zygote, whose exit reports go here.
    Zygote(Reports),
}

/// Watch one worker (or zygote) until it exits: log its output, report "ready", then
/// its exit.
async fn monitor(
    mut spawned: super::spawn::Spawned,
    pool_name: String,
    pool: usize,
    role: Role,
    events: mpsc::UnboundedSender<Event>,
) {
    let pid = spawned.pid;
    let pump = |s, stream| tokio::spawn(output::pump(s, pool_name.clone(), pid, stream));
    let out = spawned.stdout.take().map(|s| pump(s, "stdout"));
    let err = spawned.stderr.take().map(|s| pump(s, "stderr"));
    let control = tokio::spawn(read_control(
        spawned.control,
        pool_name.clone(),
        pool,
        role.clone(),
        pid,
        events.clone(),
    ));
    let exit = spawned.exit.wait().await;
    let drain = async {
        for task in [out, err].into_iter().flatten() {
            let _ = task.await;
        }
    };
    let _ = tokio::time::timeout(DRAIN_GRACE, drain).await;
    // The control task ends at EOF (the worker's end closed with it); a "ready" it read
    // must reach the loop before the exit does.
    let _ = tokio::time::timeout(DRAIN_GRACE, control).await;
    let _ = events.send(match role {
        Role::Worker { slot } => Event::Exited {
            pool,
            slot,
            pid,
            exit,
        },
        Role::Zygote(_) => Event::ZygoteExited { pool, pid, exit },
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manager::test_support::pool_config;

    #[test]
    fn emergency_restart_counts_crashes_within_the_interval() {
        let t0 = std::time::Instant::now();
        let t = |ms| t0 + Duration::from_millis(ms);
        let mut e = Emergency {
            threshold: 3,
            interval: Duration::from_secs(10),
            deaths: VecDeque::new(),
        };
        assert!(!e.record(t(0)));
        assert!(!e.record(t(5_000)));
        // The first crash has left the window: only two count.
        assert!(!e.record(t(10_001)));
        assert!(e.record(t(12_000)), "three within 10 s");
        assert!(
            e.deaths.is_empty(),
            "the count starts again after a restart"
        );
        let mut off = Emergency {
            threshold: 1,
            interval: Duration::ZERO,
            deaths: VecDeque::new(),
        };
        assert!(!off.record(t(0)), "an interval of 0 turns it off");
    }

    #[test]
    fn pool_capacity_leaves_room_for_replacements() {
        let mut pool = PoolConfig {
            max_children: 3,
            ..pool_config("t", vec![])
        };
        assert_eq!(pool_capacity(&pool), 6);
        pool.limits.process_max = 4;
        assert_eq!(pool_capacity(&pool), 4);
    }

    #[test]
    fn a_tcp_listener_reports_its_accept_queue() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let fd = listener.as_raw_fd();
        assert!(!readable_now(fd));
        assert_eq!(accept_queue_len(fd), Some(0));
        let addr = listener.local_addr().unwrap();
        let _a = std::net::TcpStream::connect(addr).unwrap();
        let _b = std::net::TcpStream::connect(addr).unwrap();
        // The handshake completes in the kernel; allow it a moment (bounded).
        for _ in 0..100 {
            if accept_queue_len(fd) == Some(2) {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(readable_now(fd));
        assert_eq!(accept_queue_len(fd), Some(2));
    }
}
