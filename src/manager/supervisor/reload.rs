//! Graceful reload (SIGUSR2, SIGHUP) of the configuration and the application code.
//!
//! PHP-FPM's reload stops every worker, then re-executes itself: new connections wait
//! in the backlog until every old request is done, and a broken config leaves no
//! daemon at all (reference php-fpm.md §5, §9). Here nothing changes until the new
//! configuration is fully validated (interpreters included), its identities resolved
//! and its new sockets bound; any failure keeps the running generation, logged.
//!
//! Then, per pool (matched by name): an added pool starts; a removed one gets SIGQUIT
//! (its requests finish, bounded by `process_control_timeout`); every other pool,
//! changed or not, starts a new generation from the new config (new interpreters import
//! the app again: that is the code reload) while the old workers keep serving, and the
//! old ones get SIGQUIT only once as many new workers are ready as old ones were (at
//! most the new `pm.max_children`). Listening sockets whose address stays in the config
//! are handed over as they are (same fd, never re-bound, even across pools); a socket no
//! longer named is closed, and its file removed, once no worker accepts on it.
//!
//! A reload signal during a reload sets a pending flag; exactly one more reload runs
//! when the current one has handed over everywhere, so a storm of signals ends with one
//! generation.

use super::*;
use crate::logging;
use crate::manager::listeners::serves;
use pyfpm_config::{CheckLevel, GlobalConfig};

/// Reload bookkeeping.
#[derive(Debug, Default)]
pub(super) struct Progress {
    /// A reload has started and not every pool has handed over yet.
    active: bool,
    /// Another reload signal came during the active reload.
    pending: bool,
}

/// One pool's hand-over from its old generation to the new one.
#[derive(Debug)]
pub(super) struct Handover {
    /// New workers that must be ready before the old ones are told to finish.
    needed: u32,
    /// The new workers failed to start (the old ones keep serving); logged once.
    stuck: bool,
}

/// A socket no pool listens on any more.
#[derive(Debug)]
pub(super) struct Retired {
    /// The socket.
    pub listener: Listener,
    /// The workers that were accepting on it; it is closed when none of them still is.
    pids: Vec<i32>,
}

/// Where a listen address of the new configuration comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The socket already open at this index of the existing sockets.
    Kept(usize),
    /// A new address: bind it.
    Bind,
}

/// For each new pool's addresses, the existing socket that serves it (each used once)
/// or [`Source::Bind`].
pub fn match_listeners(existing: &[ListenAddr], new: &[Vec<ListenAddr>]) -> Vec<Vec<Source>> {
    let mut used = vec![false; existing.len()];
    new.iter()
        .map(|addrs| {
            addrs
                .iter()
                .map(|addr| {
                    let found = existing
                        .iter()
                        .enumerate()
                        .position(|(i, have)| !used[i] && serves(addr, have));
                    match found {
                        Some(i) => {
                            used[i] = true;
                            Source::Kept(i)
                        }
                        None => Source::Bind,
                    }
                })
                .collect()
        })
        .collect()
}

/// Whether two configurations of a pool differ in anything but where they are written.
pub fn pool_changed(old: &PoolConfig, new: &PoolConfig) -> bool {
    let mut a = old.clone();
    a.location = new.location.clone();
    a != *new
}

/// Whether `path` can be opened for appending, without creating it (a reload that is
/// then cancelled must leave no file behind): an existing file is opened, a missing one
/// needs a writable directory.
fn can_append(path: &std::path::Path) -> std::io::Result<()> {
    match std::fs::OpenOptions::new().append(true).open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let dir = path
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(std::path::Path::new("."));
            nix::unistd::access(dir, nix::unistd::AccessFlags::W_OK)
                .map_err(|e| std::io::Error::from_raw_os_error(e as i32))
        }
        Err(e) => Err(e),
    }
}

/// The pids of a pool's workers not yet told to stop: the ones still accepting on its
/// sockets, and the ones a removal has yet to stop.
fn unstopped_pids(state: &PoolState) -> Vec<i32> {
    state
        .slots
        .iter()
        .flatten()
        .filter(|w| !matches!(w.state, WorkerState::Stopping { .. }))
        .map(|w| w.pid)
        .collect()
}

/// A validated new configuration with everything that could fail already done.
struct Prepared {
    config: Config,
    identities: Vec<Option<Identity>>,
    /// Per new pool, per address: where its socket comes from.
    sources: Vec<Vec<Source>>,
    /// Per new pool, per address: the socket bound for a [`Source::Bind`].
    bound: Vec<Vec<Option<Listener>>>,
}

impl Supervisor {
    /// A reload signal arrived.
    pub(super) fn request_reload(&mut self, signal: &str) {
        if self.phase != Phase::Running {
            tracing::info!("{signal} ignored: the manager is stopping");
            return;
        }
        if self.reload.active {
            if self.reload.pending {
                tracing::debug!("{signal}: a reload is already pending");
            } else {
                tracing::info!(
                    "{signal} received while a reload is in progress; one more reload will \
                     run when it completes"
                );
            }
            self.reload.pending = true;
            return;
        }
        self.reload_now(signal);
    }

    fn reload_now(&mut self, why: &str) {
        // Type=notify-reload wants RELOADING=1 for every reload signal, even one whose
        // config turns out to be broken (READY=1 follows at once then).
        super::super::systemd::reloading();
        tracing::info!(
            "{why}: reading the configuration {}",
            self.config_path.display()
        );
        let Some(prepared) = self.prepare() else {
            super::super::systemd::ready();
            return;
        };
        tracing::info!("Reloading in progress ...");
        self.apply_reload(prepared);
        self.reload.active = true;
    }

    /// Every address in use or kept, in the order [`Supervisor::take_sockets`] takes
    /// them: the pools' sockets, then the spare inherited ones, then the retired ones.
    fn existing_addresses(&self) -> Vec<ListenAddr> {
        self.pools
            .iter()
            .filter(|p| !p.removed)
            .flat_map(|p| p.listeners.iter())
            .chain(self.spare_inherited.iter())
            .chain(self.retired_listeners.iter().map(|r| &r.listener))
            .map(|l| l.addr.clone())
            .collect()
    }

    /// Every socket with the pids of the workers accepting on it, in the order of
    /// [`Supervisor::existing_addresses`]. Leaves the pools without sockets.
    fn take_sockets(&mut self) -> Vec<Option<(Vec<i32>, Listener)>> {
        let mut all = Vec::new();
        for pool in self.pools.iter_mut().filter(|p| !p.removed) {
            let pids = unstopped_pids(&pool.state);
            for l in pool.listeners.drain(..) {
                all.push(Some((pids.clone(), l)));
            }
        }
        for l in self.spare_inherited.drain(..) {
            all.push(Some((Vec::new(), l)));
        }
        for r in self.retired_listeners.drain(..) {
            all.push(Some((r.pids, r.listener)));
        }
        all
    }

    /// Read and check the new configuration and bind its new addresses. `None` (every
    /// problem logged) leaves everything as it was.
    fn prepare(&self) -> Option<Prepared> {
        let keep = "still serving with the previous configuration";
        let config = match pyfpm_config::load(&self.config_path, CheckLevel::Interpreters) {
            Ok(c) => c,
            Err(errors) => {
                for d in &errors.0 {
                    tracing::error!("{d}");
                }
                let n = errors.0.len();
                tracing::error!(
                    "reload failed: the configuration file {} has {n} error{}; {keep}",
                    self.config_path.display(),
                    if n == 1 { "" } else { "s" }
                );
                return None;
            }
        };
        for w in &config.warnings {
            match &w.location {
                Some(loc) => tracing::warn!("{loc}: warning: {}", w.message),
                None => tracing::warn!("warning: {}", w.message),
            }
        }
        let mut identities = Vec::with_capacity(config.pools.len());
        for pool in &config.pools {
            match super::super::spawn::identity(pool) {
                Ok(id) => identities.push(id),
                Err(e) => {
                    tracing::error!("reload failed: {e}; {keep}");
                    return None;
                }
            }
        }
        if let Some(path) = config.global.error_log.as_deref() {
            if self.log.path().as_deref() != Some(path) {
                if let Err(e) = can_append(path) {
                    tracing::error!(
                        "reload failed: cannot open the new error_log {} for appending: {e}; \
                         {keep}",
                        path.display()
                    );
                    return None;
                }
            }
        }
        let wanted: Vec<Vec<ListenAddr>> = config.pools.iter().map(|p| p.listen.clone()).collect();
        let sources = match_listeners(&self.existing_addresses(), &wanted);
        let mut bound: Vec<Vec<Option<Listener>>> = Vec::with_capacity(config.pools.len());
        for (pool, srcs) in config.pools.iter().zip(&sources) {
            let mut mine = Vec::with_capacity(srcs.len());
            for (addr, src) in pool.listen.iter().zip(srcs) {
                if *src != Source::Bind {
                    mine.push(None);
                    continue;
                }
                match super::super::listeners::bind(pool, addr) {
                    Ok(l) => {
                        tracing::info!("[pool {}] listening on {addr} (new)", pool.name);
                        mine.push(Some(l));
                    }
                    Err(e) => {
                        for l in bound.iter().chain([&mine]).flatten().flatten() {
                            l.remove_socket_file();
                        }
                        tracing::error!("reload failed: {e}; {keep}");
                        return None;
                    }
                }
            }
            bound.push(mine);
        }
        Some(Prepared {
            config,
            identities,
            sources,
            bound,
        })
    }

    /// Switch to a prepared configuration: nothing here can fail the reload.
    fn apply_reload(&mut self, prepared: Prepared) {
        let Prepared {
            config,
            identities,
            sources,
            mut bound,
        } = prepared;
        self.apply_global(&config.global);
        let mut sockets = self.take_sockets();
        let old_count = self.pools.len();
        let mut kept = vec![false; old_count];
        for (j, (new, identity)) in config.pools.iter().zip(identities).enumerate() {
            let listeners: Vec<Listener> = sources[j]
                .iter()
                .enumerate()
                .filter_map(|(k, src)| match src {
                    Source::Kept(x) => sockets[*x].take().map(|(_, l)| l),
                    Source::Bind => bound[j][k].take(),
                })
                .collect();
            let existing = self.pools[..old_count]
                .iter()
                .position(|p| !p.removed && p.config.name == new.name);
            match existing {
                Some(i) => {
                    kept[i] = true;
                    self.renew_pool(i, new, listeners, identity);
                }
                None => {
                    tracing::info!("[pool {}] added", new.name);
                    self.pools.push(PoolRuntime::new(new, listeners, identity));
                }
            }
        }
        for (i, kept) in kept.into_iter().enumerate() {
            if !kept && !self.pools[i].removed {
                self.remove_pool(i);
            }
        }
        for (pids, listener) in sockets.into_iter().flatten() {
            if listener.is_inherited() {
                tracing::info!(
                    "{} (from systemd) is no longer in the configuration; kept open, unused",
                    listener.addr
                );
                self.spare_inherited.push(listener);
            } else {
                self.retired_listeners.push(Retired { listener, pids });
            }
        }
        self.watch_ondemand_sockets();
    }

    /// The global settings of the new configuration.
    fn apply_global(&mut self, g: &GlobalConfig) {
        logging::set_level(g.log_level);
        let current = self.log.path();
        if current.as_deref() != g.error_log.as_deref() {
            let to = g
                .error_log
                .as_deref()
                .map_or_else(|| "stderr".to_string(), |p| p.display().to_string());
            tracing::info!("error_log changed: logging to {to} from now on");
            if let Err(e) = self.log.retarget(g.error_log.as_deref()) {
                tracing::error!("{e}; still logging to the old place");
            }
        }
        if !self.pid_from_cli && self.pid_file != g.pid {
            let written = match &g.pid {
                Some(new) => super::super::daemon::write_pid_file(new)
                    .map_err(|e| tracing::error!("{e}; the pid file stays where it was")),
                None => Ok(()),
            };
            if written.is_ok() {
                if let Some(old) = &self.pid_file {
                    super::super::daemon::remove_pid_file(old);
                }
                self.pid_file = g.pid.clone();
            }
        }
        self.process_max = g.process_max;
        self.process_control_timeout = g.process_control_timeout;
        self.emergency.threshold = g.emergency_restart_threshold;
        self.emergency.interval = g.emergency_restart_interval;
        super::super::systemd::configure(g.systemd_interval);
    }

    /// Start a new generation for a pool that stays (changed or not).
    fn renew_pool(
        &mut self,
        index: usize,
        new: &PoolConfig,
        listeners: Vec<Listener>,
        identity: Option<Identity>,
    ) {
        let pool = &mut self.pools[index];
        let changed = pool_changed(&pool.config, new);
        let state = &mut pool.state;
        let ready_old = state
            .slots
            .iter()
            .flatten()
            .filter(|w| w.state == WorkerState::Ready)
            .count() as u32;
        let mut old = 0;
        for w in state.slots.iter_mut().flatten() {
            if !matches!(w.state, WorkerState::Stopping { .. }) {
                w.retire = Some(Retire {
                    reason: "reload".to_string(),
                    replacement: None,
                    batch: true,
                });
                old += 1;
            }
        }
        let needed = ready_old.min(new.max_children);
        state.generation += 1;
        state.started = false;
        state.memory = planner::Memory::default();
        state.target = new.max_children;
        state.failures = 0;
        state.not_before = None;
        state.warned_process_max = false;
        state.resize(pool_capacity(new));
        let slots = state.slots.len();
        if pool.scoreboard.as_ref().is_none_or(|b| b.slots() < slots) {
            // More slots than the board has: the new generation gets a new board; the
            // old workers keep writing to theirs (see `board_for`).
            let board = create_scoreboard(&new.name, slots);
            let previous = std::mem::replace(&mut pool.scoreboard, board);
            pool.old_boards.push((pool.state.generation, previous));
        }
        if pool.config.limits.slowlog != new.limits.slowlog {
            pool.slowlog = new
                .limits
                .slowlog
                .as_deref()
                .and_then(|path| open_slowlog_logged(&new.name, path));
        }
        pool.config = new.clone();
        pool.listeners = listeners;
        pool.identity = identity;
        pool.handover = Some(Handover {
            needed,
            stuck: false,
        });
        tracing::info!(
            "[pool {}] {}: starting new workers; its {old} old workers serve until {needed} \
             new ones are ready",
            new.name,
            if changed { "changed" } else { "unchanged" }
        );
    }

    /// A pool the new configuration no longer has: its workers finish and go.
    fn remove_pool(&mut self, index: usize) {
        let pool = &mut self.pools[index];
        pool.removed = true;
        pool.handover = None;
        let pids = unstopped_pids(&pool.state);
        tracing::info!(
            "[pool {}] removed: its {} workers finish their requests and exit",
            pool.config.name,
            pids.len()
        );
        for pid in pids {
            self.stop_worker(index, pid, Signal::SIGQUIT);
        }
    }

    /// During a hand-over, start new workers until `needed` exist (the planner alone
    /// would not: ondemand starts none without a waiting connection). Without room
    /// under `process.max`, one old worker at a time is told to finish first.
    pub(super) fn spawn_for_handover(&mut self, index: usize) {
        let Some(needed) = self.pools[index].handover.as_ref().map(|h| h.needed) else {
            return;
        };
        while self.pools[index].state.counted() < needed {
            let now = std::time::Instant::now();
            if self.pools[index].state.spawn_allowance(now) == 0 {
                return;
            }
            match self.spawn_one(index) {
                Spawn::Started(..) => {}
                Spawn::Failed | Spawn::Waiting => return,
                Spawn::AtCap => {
                    let slots = &self.pools[index].state.slots;
                    let is_old = |w: &&Worker| w.retire.as_ref().is_some_and(|r| r.batch);
                    let stopping = |w: &&Worker| matches!(w.state, WorkerState::Stopping { .. });
                    if slots.iter().flatten().any(|w| is_old(&w) && stopping(&w)) {
                        return; // wait for that one to leave
                    }
                    let pick = slots
                        .iter()
                        .flatten()
                        .filter(|w| is_old(w) && !stopping(w))
                        .min_by_key(|w| (w.idle_since.is_none(), w.idle_since))
                        .map(|w| w.pid);
                    if let Some(pid) = pick {
                        tracing::info!(
                            "[pool {}] no room for the new generation under process.max; \
                             telling old child {pid} to finish first",
                            self.pools[index].config.name
                        );
                        self.stop_worker(index, pid, Signal::SIGQUIT);
                    }
                    return;
                }
            }
        }
    }

    /// Finish the hand-overs that can finish, close sockets nobody accepts on any more,
    /// and end the reload (then run a pending one) once every pool has handed over.
    pub(super) fn settle_reload(&mut self) {
        self.close_retired_listeners();
        if !self.reload.active || self.phase != Phase::Running {
            return;
        }
        for index in 0..self.pools.len() {
            let pool = &mut self.pools[index];
            let generation = pool.state.generation;
            let Some(handover) = pool.handover.as_mut() else {
                continue;
            };
            let slots = &pool.state.slots;
            let ready_new = slots
                .iter()
                .flatten()
                .filter(|w| {
                    w.generation == generation && w.state == WorkerState::Ready && w.counted()
                })
                .count() as u32;
            let old: Vec<i32> = slots
                .iter()
                .flatten()
                .filter(|w| {
                    w.retire.as_ref().is_some_and(|r| r.batch)
                        && !matches!(w.state, WorkerState::Stopping { .. })
                })
                .map(|w| w.pid)
                .collect();
            if ready_new >= handover.needed {
                pool.handover = None;
                tracing::info!(
                    "[pool {}] reloaded: {ready_new} new workers ready, {} old workers finishing",
                    pool.config.name,
                    old.len()
                );
                for pid in old {
                    self.stop_worker(index, pid, Signal::SIGQUIT);
                }
            } else if pool.state.failures > 0 && !handover.stuck {
                handover.stuck = true;
                tracing::warn!(
                    "[pool {}] the new workers fail to start (see above); its {} old workers \
                     keep serving until new ones are ready",
                    pool.config.name,
                    old.len()
                );
            }
        }
        let settled = self
            .pools
            .iter()
            .all(|p| p.handover.as_ref().is_none_or(|h| h.stuck));
        if settled {
            self.reload.active = false;
            let stuck: Vec<&str> = self
                .pools
                .iter()
                .filter(|p| p.handover.is_some())
                .map(|p| p.config.name.as_str())
                .collect();
            if stuck.is_empty() {
                tracing::info!("configuration reloaded");
            } else {
                tracing::warn!(
                    "configuration reloaded, but the new workers of pool {} do not start; \
                     the old ones keep serving",
                    stuck.join(", ")
                );
            }
            super::super::systemd::ready();
            if std::mem::take(&mut self.reload.pending) {
                self.reload_now("a reload signal came during the last reload");
            }
        }
    }

    /// Close the retired sockets no worker accepts on any more (their Unix socket
    /// files go with them): a connection can no longer reach a socket nobody serves.
    fn close_retired_listeners(&mut self) {
        let pools = &self.pools;
        let accepting = |pid: &i32| {
            pools.iter().any(|p| {
                p.state
                    .slots
                    .iter()
                    .flatten()
                    .any(|w| w.pid == *pid && !matches!(w.state, WorkerState::Stopping { .. }))
            })
        };
        self.retired_listeners.retain(|r| {
            if r.pids.iter().any(accepting) {
                return true;
            }
            r.listener.remove_socket_file();
            tracing::info!("closed {}: no pool listens on it any more", r.listener.addr);
            false
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manager::test_support::pool_config;
    use std::net::SocketAddr;

    fn tcp(port: u16) -> ListenAddr {
        ListenAddr::Tcp(SocketAddr::from(([127, 0, 0, 1], port)))
    }

    #[test]
    fn addresses_are_kept_wherever_they_move_and_new_ones_bound() {
        let existing = vec![
            tcp(9001),
            ListenAddr::Unix("/nonexistent/pyfpm-a.sock".into()),
            tcp(9002),
        ];
        // Pool 0 takes 9002 (it moved from another pool) and a new port; pool 1 keeps
        // the Unix socket.
        let new = vec![
            vec![tcp(9002), tcp(9003)],
            vec![ListenAddr::Unix("/nonexistent/pyfpm-a.sock".into())],
        ];
        assert_eq!(
            match_listeners(&existing, &new),
            vec![vec![Source::Kept(2), Source::Bind], vec![Source::Kept(1)],]
        );
    }

    #[test]
    fn an_existing_socket_is_handed_out_once() {
        let existing = vec![tcp(9001)];
        let new = vec![vec![tcp(9001)], vec![tcp(9001)]];
        assert_eq!(
            match_listeners(&existing, &new),
            vec![vec![Source::Kept(0)], vec![Source::Bind]]
        );
    }

    #[test]
    fn a_pool_moved_in_the_file_is_unchanged() {
        let mut a = PoolConfig {
            max_children: 2,
            ..pool_config("p", vec![tcp(9001)])
        };
        let mut b = a.clone();
        b.location.line = 30;
        assert!(!pool_changed(&a, &b));
        b.max_children = 3;
        assert!(pool_changed(&a, &b));
        a.max_children = 3;
        a.env.insert("X".into(), "1".into());
        assert!(pool_changed(&a, &b));
    }
}
