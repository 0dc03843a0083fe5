//! The main loop: one task owns every pool's state and acts; worker monitors and signal
//! streams only report to it (the nginx master cycle / gunicorn arbiter model).
//!
//! Each iteration: spawn what the planner asks for, then wait for the next thing to
//! happen — a worker event (ready, exited), a signal, or a deadline (a back-off ending, a
//! stop escalating). Stopping: TERM/INT send SIGTERM to every worker and SIGKILL after
//! [`FAST_STOP_GRACE`]; QUIT sends SIGQUIT (workers finish their request) and SIGKILL after
//! `process_control_timeout`. A TERM during a graceful stop upgrades it; nothing
//! downgrades a fast stop.

use super::listeners::Listener;
use super::output;
use super::pool::{Exit, PoolState, Verdict, Worker, WorkerState, describe_exit, judge};
use super::spawn::{Identity, PoolSpawner};
use crate::exit_code;
use crate::logging::LogSink;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use pyfpm_config::{Config, PoolConfig};
use std::path::PathBuf;
use std::time::Duration;
use tokio::io::AsyncBufReadExt;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// How long a fast stop (SIGTERM/SIGINT) waits before SIGKILL.
pub const FAST_STOP_GRACE: Duration = Duration::from_secs(2);
/// How long to wait for workers after SIGKILL before giving up on them (a process stuck
/// in uninterruptible sleep cannot be reaped; the manager still exits).
const AFTER_KILL_GRACE: Duration = Duration::from_secs(5);
/// How long a dead worker's pipes may take to drain, so its last lines (a traceback) are
/// logged before its exit. Bounded: a grandchild may hold the pipes open forever.
const DRAIN_GRACE: Duration = Duration::from_millis(500);

/// What a worker monitor reports.
#[derive(Debug)]
enum Event {
    /// The worker wrote "ready" on its control socket.
    Ready { pool: usize, slot: usize, pid: i32 },
    /// The worker exited.
    Exited {
        pool: usize,
        slot: usize,
        pid: i32,
        exit: Exit,
    },
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
    ) -> Supervisor {
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let pools = config
            .pools
            .iter()
            .zip(listeners)
            .zip(identities)
            .map(|((pool, listeners), identity)| PoolRuntime {
                state: PoolState::new(&pool.name, pool.max_children as usize),
                config: pool.clone(),
                listeners,
                identity,
            })
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
        }
    }

    /// Remove the Unix socket files this manager created.
    pub fn remove_socket_files(&self) {
        for pool in &self.pools {
            for l in &pool.listeners {
                l.remove_socket_file();
            }
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
            ))
        })();
        let (mut sigterm, mut sigint, mut sigquit, mut sigusr1, mut sigusr2) = match handlers {
            Ok(h) => h,
            Err(e) => {
                self.remove_socket_files();
                return Err(e);
            }
        };
        self.spawn_planned();
        started();
        loop {
            self.spawn_planned();
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
                // PHP-FPM users send USR2 to reload; until reload exists it must not
                // kill the manager (the default action) and with it every worker.
                _ = sigusr2.recv() => tracing::warn!(
                    "reload (SIGUSR2) is not supported yet; ignoring it"
                ),
                _ = sleep_until(wake) => self.on_deadline(),
            }
        }
        self.remove_socket_files();
        Ok(self.exit_status)
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

    fn spawn_planned(&mut self) {
        let now = std::time::Instant::now();
        let accepting = self.phase == Phase::Running;
        for index in 0..self.pools.len() {
            for slot in self.pools[index].state.slots_to_spawn(now, accepting) {
                self.spawn_one(index, slot);
            }
        }
    }

    fn spawn_one(&mut self, index: usize, slot: usize) {
        let pool = &mut self.pools[index];
        let spawner = PoolSpawner {
            pool: &pool.config,
            listeners: &pool.listeners,
            module: &self.module,
            identity: pool.identity.as_ref(),
            manager_pid: self.manager_pid,
        };
        let started = std::time::Instant::now();
        match spawner.spawn(slot as u32) {
            Ok(spawned) => {
                let pid = spawned.child.id().map(|p| p as i32).unwrap_or(-1);
                tracing::info!("[pool {}] child {pid} started", pool.config.name);
                pool.state.slots[slot] = Some(Worker {
                    pid,
                    started,
                    state: WorkerState::Starting,
                });
                tokio::spawn(monitor(
                    spawned,
                    pool.config.name.clone(),
                    index,
                    slot,
                    pid,
                    self.events_tx.clone(),
                ));
            }
            Err(e) => {
                let wait = pool.state.record_start_failure(started);
                tracing::error!(
                    "[pool {}] cannot start a worker: {e}; next attempt in {}",
                    pool.config.name,
                    human(wait)
                );
            }
        }
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Ready { pool, slot, pid } => {
                if self.pools[pool].state.mark_ready(slot, pid) {
                    tracing::debug!(
                        "[pool {}] child {pid} is ready",
                        self.pools[pool].config.name
                    );
                }
                if !self.announced_ready && self.pools.iter().all(|p| p.state.has_ready_worker()) {
                    self.announced_ready = true;
                    tracing::info!("ready to handle connections");
                }
            }
            Event::Exited {
                pool,
                slot,
                pid,
                exit,
            } => self.on_exit(pool, slot, pid, exit),
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
                tracing::error!(
                    "[pool {name}] child {pid}: the worker module {} is from another pyfpm \
                     build than this manager; rebuild both with `cargo build --workspace`",
                    self.module.display()
                );
                self.exit_status = exit_code::SOFTWARE;
                self.begin_stop(StopKind::Fast, "Terminating ...");
            }
        }
    }

    fn begin_stop(&mut self, kind: StopKind, message: &str) {
        if let Phase::Stopping { kind: current, .. } = self.phase {
            if current == StopKind::Fast || kind == StopKind::Graceful {
                return; // nothing downgrades a stop, and a repeat changes nothing
            }
        }
        tracing::info!("{message}");
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
    }
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

/// Watch one worker until it exits: log its output, report "ready", then its exit.
async fn monitor(
    mut spawned: super::spawn::Spawned,
    pool_name: String,
    pool: usize,
    slot: usize,
    pid: i32,
    events: mpsc::UnboundedSender<Event>,
) {
    let stdout = spawned.child.stdout.take();
    let stderr = spawned.child.stderr.take();
    let out = stdout.map(|s| tokio::spawn(output::pump(s, pool_name.clone(), pid, "stdout")));
    let err = stderr.map(|s| tokio::spawn(output::pump(s, pool_name.clone(), pid, "stderr")));
    let ready_tx = events.clone();
    let name = pool_name.clone();
    let control = tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(spawned.control).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if line.trim() == pyfpm_ipc::control::READY {
                let _ = ready_tx.send(Event::Ready { pool, slot, pid });
            } else {
                tracing::debug!("[pool {name}] child {pid}: unknown control message {line:?}");
            }
        }
    });
    let exit = match spawned.child.wait().await {
        Ok(status) => Exit::from_status(status),
        // wait() fails only if the child was already reaped: report it as vanished.
        Err(_) => Exit::Code(-1),
    };
    let drain = async {
        for task in [out, err].into_iter().flatten() {
            let _ = task.await;
        }
    };
    let _ = tokio::time::timeout(DRAIN_GRACE, drain).await;
    // The control task ends at EOF (the worker's end closed with it); a "ready" it read
    // must reach the loop before the exit does.
    let _ = tokio::time::timeout(DRAIN_GRACE, control).await;
    let _ = events.send(Event::Exited {
        pool,
        slot,
        pid,
        exit,
    });
}
