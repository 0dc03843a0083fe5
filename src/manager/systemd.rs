//! systemd integration: the `sd_notify` protocol (`Type=notify`) and socket activation.
//!
//! Owns: reading systemd's variables once at start-up and removing them from the
//! environment (`NOTIFY_SOCKET`, `WATCHDOG_USEC`/`WATCHDOG_PID`, `LISTEN_PID`/`LISTEN_FDS`/
//! `LISTEN_FDNAMES`), taking the inherited listening sockets (fds 3..), and sending the
//! notifications: `READY=1` once every pool has a ready worker, a `STATUS=` line every
//! `systemd_interval`, `WATCHDOG=1` at half of `WATCHDOG_USEC`, `STOPPING=1`, and
//! `RELOADING=1`/`READY=1` around a reload. Which pool gets which inherited socket is
//! decided in [`super::listeners::bind_all_activated`].
//!
//! Not the `sd-notify` crate: it reads `NOTIFY_SOCKET` from the environment on every
//! call, so the variable would either stay set — and leak into every worker of a pool
//! with `clear_env: false`, where an app or library calling `sd_notify` would speak for
//! the manager — or be gone after the first message, silencing the STATUS lines and a
//! later reload's READY. Capturing the address once is the fix, and the protocol is one
//! datagram per message (absolute path or `@abstract` address), a few lines over
//! [`UnixDatagram`].
//!
//! The state is process-wide, like the environment it comes from: the supervisor's loop
//! calls the free functions below without threading a handle through it.

use super::listeners::ActivatedSocket;
use super::pool::{PoolState, WorkerState};
use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr as UnixSocketAddr, UnixDatagram};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The first descriptor systemd passes (`SD_LISTEN_FDS_START`).
pub const LISTEN_FDS_START: RawFd = 3;
/// More inherited sockets than this is a broken environment, not a configuration.
pub const LISTEN_FDS_MAX: u32 = 4096;

/// A problem with systemd's variables; each is logged and that feature is skipped.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnvError {
    /// `NOTIFY_SOCKET` is set to something we cannot send to.
    #[error(
        "NOTIFY_SOCKET={0:?} is neither an absolute socket path nor an abstract address \
         (@name); not sending readiness notifications to systemd"
    )]
    NotifySocket(String),
    /// `WATCHDOG_USEC` is not a positive number.
    #[error(
        "WATCHDOG_USEC={0:?} is not a positive number of microseconds; not sending \
         watchdog keep-alives (check WatchdogSec= in the unit)"
    )]
    WatchdogUsec(String),
    /// `LISTEN_PID` is not a process id.
    #[error("LISTEN_PID={0:?} is not a process id; ignoring the sockets systemd passed")]
    ListenPid(String),
    /// `LISTEN_FDS` is not a usable count.
    #[error(
        "LISTEN_FDS={0:?} is not a number of sockets between 0 and {max}; ignoring the \
         sockets systemd passed",
        max = LISTEN_FDS_MAX
    )]
    ListenFds(String),
    /// `LISTEN_FDNAMES` does not name every socket.
    #[error(
        "LISTEN_FDNAMES has {names} names for {fds} sockets; the sockets are used \
         without their names"
    )]
    FdNames {
        /// How many names were given.
        names: usize,
        /// How many sockets were passed.
        fds: usize,
    },
    /// A descriptor in the LISTEN_FDS range is not open.
    #[error("fd {0} is in the LISTEN_FDS range but is not open; skipping it")]
    FdNotOpen(RawFd),
}

/// What `LISTEN_PID`/`LISTEN_FDS`/`LISTEN_FDNAMES` say.
#[derive(Debug, PartialEq, Eq)]
pub enum ListenEnv {
    /// No socket activation (no `LISTEN_PID`/`LISTEN_FDS`, or zero sockets).
    None,
    /// The variables were meant for another process (a parent that did not clear them).
    OtherProcess(u32),
    /// Sockets passed to us: `(fd, name)` from [`LISTEN_FDS_START`] on.
    Fds(Vec<(RawFd, Option<String>)>),
}

/// Interpret the socket-activation variables as `sd_listen_fds_with_names` does.
/// Returns the parsed value and a non-fatal problem with the names, if any.
pub fn parse_listen_env(
    listen_pid: Option<&str>,
    listen_fds: Option<&str>,
    listen_fdnames: Option<&str>,
    our_pid: u32,
) -> Result<(ListenEnv, Option<EnvError>), EnvError> {
    let (Some(pid), Some(count)) = (listen_pid, listen_fds) else {
        return Ok((ListenEnv::None, None));
    };
    let pid: u32 = pid
        .trim()
        .parse()
        .ok()
        .filter(|&p| p > 0)
        .ok_or_else(|| EnvError::ListenPid(pid.to_string()))?;
    if pid != our_pid {
        return Ok((ListenEnv::OtherProcess(pid), None));
    }
    let n: u32 = count
        .trim()
        .parse()
        .ok()
        .filter(|&n| n <= LISTEN_FDS_MAX)
        .ok_or_else(|| EnvError::ListenFds(count.to_string()))?;
    if n == 0 {
        return Ok((ListenEnv::None, None));
    }
    let mut names: Vec<Option<String>> = vec![None; n as usize];
    let mut problem = None;
    if let Some(given) = listen_fdnames {
        let split: Vec<&str> = given.split(':').collect();
        if split.len() == names.len() {
            for (slot, name) in names.iter_mut().zip(split) {
                *slot = Some(name.to_string()).filter(|s| !s.is_empty());
            }
        } else {
            problem = Some(EnvError::FdNames {
                names: split.len(),
                fds: names.len(),
            });
        }
    }
    let fds = names
        .into_iter()
        .enumerate()
        .map(|(i, name)| (LISTEN_FDS_START + i as RawFd, name))
        .collect();
    Ok((ListenEnv::Fds(fds), problem))
}

/// Where `NOTIFY_SOCKET` points: `None` when it is unset or empty.
pub fn parse_notify_socket(value: Option<&str>) -> Result<Option<UnixSocketAddr>, EnvError> {
    let Some(value) = value.filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    let bad = || EnvError::NotifySocket(value.to_string());
    if let Some(name) = value.strip_prefix('@') {
        // systemd writes the abstract namespace's leading NUL as '@'.
        return UnixSocketAddr::from_abstract_name(name.as_bytes())
            .map(Some)
            .map_err(|_| bad());
    }
    if value.starts_with('/') {
        return UnixSocketAddr::from_pathname(value)
            .map(Some)
            .map_err(|_| bad());
    }
    Err(bad())
}

/// The watchdog period from `WATCHDOG_USEC`, when it is meant for `our_pid`
/// (`WATCHDOG_PID`, if set, names the process systemd watches).
pub fn parse_watchdog(
    usec: Option<&str>,
    watchdog_pid: Option<&str>,
    our_pid: u32,
) -> Result<Option<Duration>, EnvError> {
    let Some(usec) = usec else {
        return Ok(None);
    };
    if let Some(pid) = watchdog_pid {
        if pid.trim().parse::<u32>().ok() != Some(our_pid) {
            return Ok(None);
        }
    }
    let micros: u64 = usec
        .trim()
        .parse()
        .ok()
        .filter(|&n| n > 0)
        .ok_or_else(|| EnvError::WatchdogUsec(usec.to_string()))?;
    Ok(Some(Duration::from_micros(micros)))
}

/// Worker counts for a STATUS line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Workers that cannot take a new connection: in a request, starting or stopping.
    pub active: usize,
    /// Workers waiting for a connection.
    pub idle: usize,
    /// Requests served since start-up.
    pub requests: u64,
}

impl Counts {
    /// The `STATUS=` text, worded like PHP-FPM's so existing dashboards parse it.
    pub fn status_line(&self) -> String {
        format!(
            "Processes active: {}, idle: {}, Requests: {}",
            self.active, self.idle, self.requests
        )
    }

    /// Count the live workers of `pools`: a ready worker last seen idle on its
    /// scoreboard is idle; every other live process (busy, starting, stopping) is
    /// active, as it cannot take a new connection. Also returns each worker's
    /// `(pid, requests served)` for [`RequestTotals`].
    pub fn of_pools<'a>(
        pools: impl IntoIterator<Item = &'a PoolState>,
    ) -> (Counts, Vec<(i32, u64)>) {
        let mut counts = Counts::default();
        let mut served = Vec::new();
        for worker in pools.into_iter().flat_map(|p| p.slots.iter().flatten()) {
            if worker.state == WorkerState::Ready && worker.idle_since.is_some() {
                counts.idle += 1;
            } else {
                counts.active += 1;
            }
            served.push((worker.pid, worker.seen_requests));
        }
        (counts, served)
    }
}

/// Requests served since start-up. The scoreboard counts per worker, and a worker's count
/// leaves with it; this keeps the last count seen of every worker that has gone. (A
/// worker's requests after the last look before it exits are missed: at most one
/// maintenance tick's worth.)
#[derive(Debug, Default)]
pub struct RequestTotals {
    /// Requests of workers that have exited.
    gone: u64,
    /// `(pid, requests)` of the workers seen last time.
    last: Vec<(i32, u64)>,
}

impl RequestTotals {
    /// Fold in the live workers' counts; returns the total.
    pub fn update(&mut self, live: Vec<(i32, u64)>) -> u64 {
        for &(pid, requests) in &self.last {
            if !live.iter().any(|&(p, _)| p == pid) {
                self.gone += requests;
            }
        }
        self.last = live;
        self.gone + self.last.iter().map(|&(_, n)| n).sum::<u64>()
    }
}

/// A connection to systemd's notification socket.
#[derive(Debug)]
pub struct Notifier {
    addr: UnixSocketAddr,
    socket: UnixDatagram,
}

impl Notifier {
    /// A notifier sending to `addr`. The socket is non-blocking: a systemd that stopped
    /// reading must never stall the supervisor loop; a message that cannot be queued is
    /// reported and dropped.
    pub fn new(addr: UnixSocketAddr) -> io::Result<Notifier> {
        let socket = UnixDatagram::unbound()?;
        socket.set_nonblocking(true)?;
        Ok(Notifier { addr, socket })
    }

    /// Send one notification (newline-separated `KEY=value` assignments).
    pub fn send(&self, message: &str) -> io::Result<()> {
        let sent = self.socket.send_to_addr(message.as_bytes(), &self.addr)?;
        if sent != message.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "the notification was truncated",
            ));
        }
        Ok(())
    }
}

/// The process-wide state, filled by [`capture_environment`].
struct State {
    notifier: Option<Notifier>,
    watchdog: Option<Duration>,
    /// Problems found while reading the environment, logged at warning by [`configure`]
    /// (logging does not exist yet when the environment is read).
    problems: Vec<String>,
    /// Informational notes for the same moment.
    notes: Vec<String>,
    activated: Vec<ActivatedSocket>,
    status_interval: Duration,
    /// Cadence of [`tick`]: the shorter of the status interval and half the watchdog.
    period: Option<Duration>,
    next_tick: Option<Instant>,
    /// A failed send is logged at warning once, then at debug (no log flood every tick).
    send_failed: bool,
    requests: RequestTotals,
}

static STATE: Mutex<State> = Mutex::new(State {
    notifier: None,
    watchdog: None,
    problems: Vec::new(),
    notes: Vec::new(),
    activated: Vec::new(),
    status_interval: Duration::ZERO,
    period: None,
    next_tick: None,
    send_failed: false,
    requests: RequestTotals {
        gone: 0,
        last: Vec::new(),
    },
});

fn state() -> std::sync::MutexGuard<'static, State> {
    // A panic while holding the lock cannot leave the state inconsistent (plain fields).
    STATE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

const VARIABLES: [&str; 6] = [
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "LISTEN_PID",
    "LISTEN_FDS",
    "LISTEN_FDNAMES",
];

/// Read systemd's variables, take the inherited sockets, and remove the variables from
/// the environment so no worker or interpreter check sees them.
///
/// Call once, first thing in the manager, while the process is single-threaded
/// (removing environment variables is unsound with other threads around) and before
/// daemonizing (`LISTEN_PID` names the process systemd started).
pub fn capture_environment() {
    let var = |name: &str| std::env::var(name).ok();
    let pid = std::process::id();
    let mut st = state();
    match parse_notify_socket(var("NOTIFY_SOCKET").as_deref()) {
        Ok(Some(addr)) => match Notifier::new(addr) {
            Ok(n) => st.notifier = Some(n),
            Err(e) => st.problems.push(format!(
                "cannot create a socket to notify systemd: {e}; not sending readiness \
                 notifications"
            )),
        },
        Ok(None) => {}
        Err(e) => st.problems.push(e.to_string()),
    }
    match parse_watchdog(
        var("WATCHDOG_USEC").as_deref(),
        var("WATCHDOG_PID").as_deref(),
        pid,
    ) {
        Ok(w) => st.watchdog = w,
        Err(e) => st.problems.push(e.to_string()),
    }
    match parse_listen_env(
        var("LISTEN_PID").as_deref(),
        var("LISTEN_FDS").as_deref(),
        var("LISTEN_FDNAMES").as_deref(),
        pid,
    ) {
        Ok((env, names_problem)) => {
            st.problems.extend(names_problem.map(|e| e.to_string()));
            match env {
                ListenEnv::None => {}
                ListenEnv::OtherProcess(other) => st.notes.push(format!(
                    "LISTEN_FDS is meant for process {other}, not this one ({pid}); \
                     binding every socket as configured"
                )),
                ListenEnv::Fds(fds) => {
                    for (fd, name) in fds {
                        match adopt(fd) {
                            Some(fd) => st.activated.push(ActivatedSocket { fd, name }),
                            None => st.problems.push(EnvError::FdNotOpen(fd).to_string()),
                        }
                    }
                }
            }
        }
        Err(e) => st.problems.push(e.to_string()),
    }
    drop(st);
    for name in VARIABLES {
        // SAFETY: called at start-up on the main thread before any other thread exists
        // (see the function's contract), so nothing reads the environment concurrently.
        unsafe { std::env::remove_var(name) };
    }
}

/// Take ownership of an inherited descriptor and make it close-on-exec (workers get
/// their pool's sockets explicitly; nothing else may inherit them).
fn adopt(fd: RawFd) -> Option<OwnedFd> {
    // SAFETY: fcntl with integer arguments; EBADF when the fd is not open.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if flags < 0 {
        return None;
    }
    // SAFETY: as above, on an open fd.
    unsafe { libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) };
    // SAFETY: by the LISTEN_FDS protocol the descriptor was passed to this process for
    // it to own, nothing else in the process refers to it, and the variables are
    // removed right after, so it is adopted exactly once.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The sockets systemd passed (empty without socket activation). Each is returned once.
pub fn activated_sockets() -> Vec<ActivatedSocket> {
    std::mem::take(&mut state().activated)
}

/// Set the STATUS cadence (`systemd_interval`; zero = no STATUS lines) and log what was
/// found in the environment. Call after logging is set up, before the supervisor runs.
pub fn configure(status_interval: Duration) {
    let mut st = state();
    for problem in std::mem::take(&mut st.problems) {
        tracing::warn!("{problem}");
    }
    for note in std::mem::take(&mut st.notes) {
        tracing::info!("{note}");
    }
    st.status_interval = status_interval;
    let half_watchdog = st.watchdog.map(|w| (w / 2).max(Duration::from_millis(1)));
    st.period = match (
        st.notifier.is_some(),
        status_interval.is_zero(),
        half_watchdog,
    ) {
        (false, _, _) => None,
        (true, true, w) => w,
        (true, false, None) => Some(status_interval),
        (true, false, Some(w)) => Some(w.min(status_interval)),
    };
    st.next_tick = st.period.map(|p| Instant::now() + p);
    if let Some(w) = st.watchdog.filter(|_| st.notifier.is_some()) {
        tracing::debug!(
            "systemd watchdog: {}ms, keep-alive every {}ms",
            w.as_millis(),
            half_watchdog.unwrap_or_default().as_millis()
        );
    }
}

fn send(message: &str) {
    let mut st = state();
    let Some(notifier) = &st.notifier else {
        return;
    };
    if let Err(e) = notifier.send(message) {
        let first = message.lines().next().unwrap_or_default().to_string();
        if st.send_failed {
            tracing::debug!("cannot notify systemd ({first}): {e}");
        } else {
            tracing::warn!(
                "cannot notify systemd ({first}): {e}; is the notification socket gone?"
            );
        }
        st.send_failed = true;
    }
}

/// Every pool can serve: `READY=1` with the main pid (correct even when daemonized).
/// Also the end of a reload.
pub fn ready() {
    send(&format!(
        "READY=1\nSTATUS=Ready to handle connections\nMAINPID={}\n",
        std::process::id()
    ));
}

/// A reload begins: `RELOADING=1` with the monotonic timestamp `Type=notify-reload`
/// requires. Follow with [`ready`] when the new generation serves.
pub fn reloading() {
    send(&format!(
        "RELOADING=1\nSTATUS=Reloading configuration\nMONOTONIC_USEC={}\n",
        monotonic_usec()
    ));
}

/// The manager is stopping.
pub fn stopping() {
    send("STOPPING=1\nSTATUS=Stopping\n");
}

/// CLOCK_MONOTONIC in microseconds, the clock systemd compares `MONOTONIC_USEC` with.
fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000 + (ts.tv_nsec as u64) / 1_000
}

/// Completes when the next STATUS/watchdog message is due; never without one. Cancel-safe:
/// the deadline lives in the state, so a `select!` may drop and re-create this future.
pub async fn tick_due() {
    let next = state().next_tick;
    match next {
        Some(t) => tokio::time::sleep_until(tokio::time::Instant::from_std(t)).await,
        None => std::future::pending().await,
    }
}

/// Send the periodic message (a STATUS line counting the workers of `pools` and/or
/// `WATCHDOG=1`) and schedule the next one. Called from the supervisor's loop, so a loop
/// that hangs stops the keep-alives and systemd's watchdog acts.
pub fn tick<'a>(pools: impl IntoIterator<Item = &'a PoolState>) {
    let message = {
        let mut st = state();
        let Some(period) = st.period else {
            return;
        };
        let (mut counts, served) = Counts::of_pools(pools);
        counts.requests = st.requests.update(served);
        let now = Instant::now();
        // Behind schedule (a stalled loop): restart the cadence from now, no burst.
        let next = st.next_tick.map_or(now, |t| t + period);
        st.next_tick = Some(if next <= now { now + period } else { next });
        let mut message = String::new();
        if !st.status_interval.is_zero() {
            message.push_str(&format!("STATUS={}\n", counts.status_line()));
        }
        if st.watchdog.is_some() {
            message.push_str("WATCHDOG=1\n");
        }
        message
    };
    if !message.is_empty() {
        send(&message);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manager::pool::Worker;

    #[test]
    fn listen_env_is_ignored_without_both_variables_or_for_another_pid() {
        assert_eq!(
            parse_listen_env(None, Some("2"), None, 10).unwrap(),
            (ListenEnv::None, None)
        );
        assert_eq!(
            parse_listen_env(Some("10"), None, None, 10).unwrap(),
            (ListenEnv::None, None)
        );
        assert_eq!(
            parse_listen_env(Some("11"), Some("2"), None, 10).unwrap(),
            (ListenEnv::OtherProcess(11), None)
        );
        assert_eq!(
            parse_listen_env(Some("10"), Some("0"), None, 10).unwrap(),
            (ListenEnv::None, None)
        );
    }

    #[test]
    fn listen_fds_start_at_three_with_their_names() {
        let (env, problem) =
            parse_listen_env(Some("42"), Some("3"), Some("www.socket::api"), 42).unwrap();
        assert_eq!(problem, None);
        assert_eq!(
            env,
            ListenEnv::Fds(vec![
                (3, Some("www.socket".into())),
                (4, None),
                (5, Some("api".into())),
            ])
        );
    }

    #[test]
    fn mismatched_names_are_dropped_but_the_sockets_kept() {
        let (env, problem) = parse_listen_env(Some("7"), Some("2"), Some("one"), 7).unwrap();
        assert_eq!(env, ListenEnv::Fds(vec![(3, None), (4, None)]));
        assert_eq!(problem, Some(EnvError::FdNames { names: 1, fds: 2 }));
    }

    #[test]
    fn malformed_listen_variables_are_errors_naming_the_value() {
        for (pid, fds) in [("x", "1"), ("0", "1"), ("-3", "1"), ("", "1")] {
            let err = parse_listen_env(Some(pid), Some(fds), None, 5).unwrap_err();
            assert_eq!(err, EnvError::ListenPid(pid.into()));
        }
        for fds in ["two", "-1", "4097", "99999999999"] {
            let err = parse_listen_env(Some("5"), Some(fds), None, 5).unwrap_err();
            assert_eq!(err, EnvError::ListenFds(fds.into()));
            assert!(err.to_string().contains(&format!("{fds:?}")), "{err}");
        }
    }

    #[test]
    fn notify_socket_accepts_paths_and_abstract_names_only() {
        assert!(parse_notify_socket(None).unwrap().is_none());
        assert!(parse_notify_socket(Some("")).unwrap().is_none());
        let path = parse_notify_socket(Some("/run/systemd/notify"))
            .unwrap()
            .unwrap();
        assert_eq!(
            path.as_pathname(),
            Some(std::path::Path::new("/run/systemd/notify"))
        );
        let abs = parse_notify_socket(Some("@pyfpm/notify")).unwrap().unwrap();
        assert_eq!(abs.as_abstract_name(), Some(&b"pyfpm/notify"[..]));
        for bad in ["relative.sock", "vsock:2:1234"] {
            assert_eq!(
                parse_notify_socket(Some(bad)).unwrap_err(),
                EnvError::NotifySocket(bad.into())
            );
        }
        let too_long = format!("/{}", "x".repeat(200));
        assert!(parse_notify_socket(Some(&too_long)).is_err());
    }

    #[test]
    fn watchdog_honours_its_pid() {
        assert_eq!(parse_watchdog(None, None, 9).unwrap(), None);
        assert_eq!(
            parse_watchdog(Some("3000000"), None, 9).unwrap(),
            Some(Duration::from_secs(3))
        );
        assert_eq!(
            parse_watchdog(Some("3000000"), Some("9"), 9).unwrap(),
            Some(Duration::from_secs(3))
        );
        assert_eq!(parse_watchdog(Some("3000000"), Some("8"), 9).unwrap(), None);
        assert_eq!(
            parse_watchdog(Some("0"), None, 9).unwrap_err(),
            EnvError::WatchdogUsec("0".into())
        );
        assert!(parse_watchdog(Some("soon"), None, 9).is_err());
    }

    #[test]
    fn status_line_reads_like_php_fpm() {
        let c = Counts {
            active: 2,
            idle: 3,
            requests: 41,
        };
        assert_eq!(
            c.status_line(),
            "Processes active: 2, idle: 3, Requests: 41"
        );
    }

    #[test]
    fn workers_are_idle_only_when_ready_and_seen_idle() {
        let now = Instant::now();
        let mut pool = PoolState::new("www", 4, 3);
        let mut idle = Worker::new(10, now, 0, 0);
        idle.state = WorkerState::Ready;
        idle.idle_since = Some(now);
        idle.seen_requests = 5;
        let mut busy = Worker::new(11, now, 0, 0);
        busy.state = WorkerState::Ready;
        busy.seen_requests = 2;
        let starting = Worker::new(12, now, 0, 0);
        pool.slots = vec![Some(idle), None, Some(busy), Some(starting)];
        let (counts, served) = Counts::of_pools([&pool]);
        assert_eq!((counts.active, counts.idle), (2, 1));
        assert_eq!(served, vec![(10, 5), (11, 2), (12, 0)]);
    }

    #[test]
    fn request_totals_keep_the_counts_of_workers_that_left() {
        let mut totals = RequestTotals::default();
        assert_eq!(totals.update(vec![(1, 3), (2, 4)]), 7);
        assert_eq!(totals.update(vec![(1, 5), (2, 4)]), 9);
        // Worker 2 retired after 4 requests; worker 3 replaced it.
        assert_eq!(totals.update(vec![(1, 5), (3, 1)]), 10);
        assert_eq!(totals.update(vec![]), 6 + 4);
        assert_eq!(totals.update(vec![]), 10);
    }

    fn roundtrip(addr: UnixSocketAddr, receiver: &UnixDatagram) {
        let n = Notifier::new(addr).unwrap();
        n.send("READY=1\nMAINPID=1\n").unwrap();
        let mut buf = [0u8; 256];
        receiver
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let len = receiver.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1\nMAINPID=1\n");
    }

    #[test]
    fn notifier_reaches_path_and_abstract_sockets() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let rx = UnixDatagram::bind(&path).unwrap();
        let spec = path.to_str().unwrap().to_string();
        roundtrip(parse_notify_socket(Some(&spec)).unwrap().unwrap(), &rx);

        let name = format!("pyfpm-test-notify-{}", std::process::id());
        let abs = UnixSocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let rx = UnixDatagram::bind_addr(&abs).unwrap();
        roundtrip(
            parse_notify_socket(Some(&format!("@{name}")))
                .unwrap()
                .unwrap(),
            &rx,
        );
    }

    #[test]
    fn a_vanished_receiver_is_an_error_not_a_hang() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gone");
        drop(UnixDatagram::bind(&path).unwrap());
        let n = Notifier::new(UnixSocketAddr::from_pathname(&path).unwrap()).unwrap();
        assert!(n.send("STATUS=x\n").is_err());
    }

    #[test]
    fn monotonic_clock_moves_forward() {
        let a = monotonic_usec();
        std::thread::sleep(Duration::from_millis(2));
        assert!(monotonic_usec() > a);
    }
}
