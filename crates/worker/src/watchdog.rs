//! The request watchdog: `request_slowlog_timeout` and `request_terminate_timeout`.
//!
//! A plain Rust thread (it never touches Python, so it runs while the app holds the GIL)
//! knows when the current request started. The main thread tells it about each request
//! with a few uncontended mutex operations and no system call; the watchdog sleeps until
//! the next deadline (at most the shortest timeout when idle: a request that starts
//! during that sleep has its first deadline no earlier than the wake-up).
//!
//! # Getting the Python stack without the GIL and without ptrace
//!
//! At boot, `faulthandler.register(SIG, file=<pipe write end>)` is installed for two
//! real-time signals that neither CPython nor common apps use:
//!
//! - [`terminate_signal`] = SIGRTMIN+2 (36 with glibc): `all_threads=True, chain=True`.
//!   Before registering it, a Python-level handler (`on_terminate_signal`) is set with
//!   `signal.signal`, so faulthandler's C handler first writes the stack into the pipe
//!   (async-signal-safe, immediately, even if the thread is stuck in C code), then chains
//!   to Python's C handler, which makes the main thread run `on_terminate_signal` at
//!   its next check: it raises [`RequestTimeout`]. Chaining also means no SA_RESTART, so
//!   a blocking call (`time.sleep`, `select`, a socket read) returns EINTR, Python runs
//!   the handler and the exception propagates.
//! - [`slowlog_signal`] = SIGRTMIN+3 (37 with glibc): `all_threads=False, chain=False`:
//!   only the dump. CPython retries interrupted calls (PEP 475), so the request is not
//!   stopped; the dump costs the main thread microseconds.
//!
//! The watchdog sends the signal to the request's thread with `pthread_kill`, reads the
//! dump from the pipe (both ends non-blocking: a full pipe truncates a huge dump rather than
//! blocking the app inside a signal handler), and writes the slow-log entry (a control
//! message) or the error-log record.
//!
//! # Stopping a request
//!
//! At `request_terminate_timeout` the stack is logged and the request is interrupted as
//! above; the request driver then answers 504 (see `wsgi::run_request`).
//!
//! With `threads` > 1 each request thread has its own timers. Python runs signal
//! handlers only in the main thread, so for a request on another thread the watchdog
//! raises [`RequestTimeout`] with `PyThreadState_SetAsyncExc`, from a short-lived thread
//! that attaches to the interpreter (the watchdog itself never waits for the GIL). That
//! exception surfaces at the thread's next Python instruction: a thread blocked in a
//! C call (a `time.sleep`, a socket read) sees it when the call returns, and if that is
//! later than [`KILL_GRACE`] the worker ends as below, with its other requests. If the app has
//! still not returned [`KILL_GRACE`] after the deadline (C code that holds the GIL and
//! never checks for signals, or an app that swallowed the exception and carried on), the
//! watchdog logs a last line and ends the process with
//! [`pyfpm_ipc::exit::REQUEST_TIMEOUT_KILLED`] via `_exit`: nothing else can stop a
//! thread that holds the GIL.

use crate::conn::Shared;
use crate::control::{Control, frame_slowlog};
use crate::log::{Level, log};
use crate::report::{self, Label};
use pyo3::prelude::*;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pyo3::create_exception!(
    pyfpm_worker,
    RequestTimeout,
    pyo3::exceptions::PyBaseException,
    "Raised in the app's thread when a request outlives request_terminate_timeout. A \
     BaseException (like KeyboardInterrupt) so that `except Exception:` in the app does \
     not swallow it; the worker answers 504 Gateway Timeout."
);

/// After `request_terminate_timeout` fired, how long the app may take to return before
/// the watchdog ends the worker.
pub const KILL_GRACE: Duration = Duration::from_secs(2);

/// Longest wait for the first bytes of a stack dump after the signal.
const DUMP_FIRST_BYTE: Duration = Duration::from_millis(500);
/// The dump is complete once the pipe stays quiet this long (faulthandler writes it in
/// one go from the signal handler; there is no end marker).
const DUMP_QUIET: Duration = Duration::from_millis(20);
/// Largest dump kept (faulthandler stops at 100 frames per thread and 100 threads).
const DUMP_MAX: usize = 1 << 20;

/// The signal that dumps all threads' stacks and stops the request.
pub fn terminate_signal() -> i32 {
    libc::SIGRTMIN() + 2
}

/// The signal that dumps the request thread's stack for the slow log.
pub fn slowlog_signal() -> i32 {
    libc::SIGRTMIN() + 3
}

/// The process's watchdog, for [`on_terminate_signal`] (signal handlers get no context).
static WATCHDOG: OnceLock<Arc<Watchdog>> = OnceLock::new();

/// What the watchdog knows about one request thread and its request in progress.
#[derive(Debug, Default)]
struct Current {
    /// The thread (`pthread_self`, which is also Python's thread ident on Linux); set
    /// when the thread starts.
    thread: Option<libc::pthread_t>,
    /// A request is in progress.
    active: bool,
    /// Bumped by every begin and end, so a report can tell it is about the same request.
    generation: u64,
    /// When the request began.
    start: Option<Instant>,
    /// The request, for the reports.
    label: Label,
    /// The request's connection and sequence number: before ending a stuck worker the
    /// watchdog answers 504 on it if it can.
    conn: Option<(Shared, u64)>,
    /// The slow-log entry was sent (one per request).
    slow_sent: bool,
    /// request_terminate_timeout fired.
    term_fired: bool,
    /// The terminate record (with the stack) is in the error log.
    term_reported: bool,
    /// RequestTimeout was raised in the app (once per request).
    raised: bool,
    /// The app (its call, iteration or close()) is running: raising is safe only then.
    in_app: bool,
    /// The app returned control to the worker for good.
    app_done: bool,
}

/// What a watchdog pass decided to do.
enum Action {
    Slowlog,
    Terminate,
    Kill,
}

/// An action that is due, with a copy of what it needs about the request (taken under
/// the lock, used without it).
struct Due {
    action: Action,
    /// The request thread.
    index: usize,
    thread: libc::pthread_t,
    /// The request's generation, to tell later whether it is still the same request.
    generation: u64,
    start: Instant,
    label: Label,
}

/// The watchdog of one worker process.
#[derive(Debug)]
pub struct Watchdog {
    /// Pool name, for the reports.
    pool: String,
    /// This process, for the reports.
    pid: u32,
    /// request_terminate_timeout.
    terminate: Option<Duration>,
    /// request_slowlog_timeout.
    slowlog: Option<Duration>,
    /// Python's main thread, which runs Python-level signal handlers.
    main_thread: libc::pthread_t,
    /// Read end of the stack-dump pipe (non-blocking).
    dump_read: OwnedFd,
    /// Write end, registered with faulthandler; kept open for the process's life.
    _dump_write: OwnedFd,
    /// Where slow-log entries go.
    control: Arc<Control>,
    /// Per request thread, its request in progress.
    current: Mutex<Vec<Current>>,
}

/// Python-level handler of [`terminate_signal`]: raise [`RequestTimeout`] in the app,
/// once, and only while the app runs (the signal may land a moment after the request
/// ended, in the worker's own loop, where it must do nothing).
#[pyfunction]
#[pyo3(name = "_on_request_timeout")]
fn on_terminate_signal(_signum: i32, _frame: Py<PyAny>) -> PyResult<()> {
    let Some(dog) = WATCHDOG.get() else {
        return Ok(());
    };
    // SAFETY: pthread_self has no preconditions.
    let me = unsafe { libc::pthread_self() };
    let mut all = dog.lock();
    // Only this (the main) thread's own request: requests of other threads get the
    // exception from `raise_in_thread`.
    let Some(cur) = all.iter_mut().find(|c| c.thread == Some(me)) else {
        return Ok(());
    };
    if cur.active && cur.term_fired && cur.in_app && !cur.raised {
        cur.raised = true;
        let timeout = dog.terminate.unwrap_or_default();
        return Err(RequestTimeout::new_err(format!(
            "request_terminate_timeout ({}) reached",
            report::timeout_text(timeout)
        )));
    }
    Ok(())
}

/// A non-blocking, close-on-exec pipe: (read, write).
fn dump_pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 writes two fds into the array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: pipe2 returned two new fds that nothing else owns.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // Room for a big all-threads dump; the default 64 KiB is kept if this fails.
    // SAFETY: fcntl with an integer argument on a pipe we own.
    unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETPIPE_SZ, DUMP_MAX as libc::c_int) };
    Ok((r, w))
}

impl Watchdog {
    /// Set up the signals and start the watchdog thread; `None` when both timeouts are
    /// off. Must run in Python's main thread (the one that will run the app).
    pub fn install(
        py: Python<'_>,
        spec: &pyfpm_ipc::WorkerSpec,
        control: Arc<Control>,
    ) -> PyResult<Option<Arc<Watchdog>>> {
        let ms = |v: u64| (v > 0).then(|| Duration::from_millis(v));
        let terminate = ms(spec.request_terminate_timeout_ms);
        let slowlog = ms(spec.request_slowlog_timeout_ms);
        if terminate.is_none() && slowlog.is_none() {
            return Ok(None);
        }
        let (dump_read, dump_write) = dump_pipe()?;
        let signal = py.import("signal")?;
        let faulthandler = py.import("faulthandler")?;
        let fd = dump_write.as_raw_fd();
        if terminate.is_some() {
            // The Python handler first, so that faulthandler chains to it.
            let handler = wrap_pyfunction!(on_terminate_signal, py)?;
            signal.call_method1("signal", (terminate_signal(), handler))?;
            let kwargs = pyo3::types::PyDict::new(py);
            kwargs.set_item("file", fd)?;
            kwargs.set_item("all_threads", true)?;
            kwargs.set_item("chain", true)?;
            faulthandler.call_method("register", (terminate_signal(),), Some(&kwargs))?;
        }
        if slowlog.is_some() {
            let kwargs = pyo3::types::PyDict::new(py);
            kwargs.set_item("file", fd)?;
            kwargs.set_item("all_threads", false)?;
            kwargs.set_item("chain", false)?;
            faulthandler.call_method("register", (slowlog_signal(),), Some(&kwargs))?;
        }
        let dog = Arc::new(Watchdog {
            pool: spec.pool.clone(),
            pid: std::process::id(),
            terminate,
            slowlog,
            // SAFETY: pthread_self has no preconditions.
            main_thread: unsafe { libc::pthread_self() },
            dump_read,
            _dump_write: dump_write,
            control,
            current: Mutex::new(
                (0..spec.threads.max(1))
                    .map(|_| Current::default())
                    .collect(),
            ),
        });
        let _ = WATCHDOG.set(Arc::clone(&dog));
        let thread_dog = Arc::clone(&dog);
        std::thread::Builder::new()
            .name("pyfpm-watchdog".into())
            .spawn(move || thread_dog.run())?;
        Ok(Some(dog))
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Current>> {
        self.current
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Request thread `index` starts: remember it, to signal it.
    pub fn register_thread(&self, index: usize) {
        // SAFETY: pthread_self has no preconditions.
        let me = unsafe { libc::pthread_self() };
        if let Some(cur) = self.lock().get_mut(index) {
            cur.thread = Some(me);
        }
    }

    /// request_terminate_timeout, if set.
    pub fn terminate_timeout(&self) -> Option<Duration> {
        self.terminate
    }

    /// A request began at `start` on request thread `index`, on connection `shared` as
    /// request `seq`.
    #[allow(clippy::too_many_arguments)]
    pub fn begin(
        &self,
        index: usize,
        start: Instant,
        method: &[u8],
        uri: &[u8],
        client: &[u8],
        shared: &Shared,
        seq: u64,
    ) {
        let mut guard = self.lock();
        let cur = &mut guard[index];
        cur.generation += 1;
        cur.active = true;
        cur.start = Some(start);
        // Reuse the buffers: no allocation per request once they are big enough.
        for (dst, src) in [
            (&mut cur.label.method, method),
            (&mut cur.label.uri, uri),
            (&mut cur.label.client, client),
        ] {
            dst.clear();
            dst.extend_from_slice(src);
        }
        cur.conn = Some((Arc::clone(shared), seq));
        cur.slow_sent = false;
        cur.term_fired = false;
        cur.term_reported = false;
        cur.raised = false;
        cur.in_app = false;
        cur.app_done = false;
    }

    /// The app is about to be called. `false` when the request already timed out (the
    /// caller then answers 504 without calling it).
    pub fn enter_app(&self, index: usize) -> bool {
        let mut all = self.lock();
        let cur = &mut all[index];
        cur.in_app = !cur.term_fired;
        cur.in_app
    }

    /// The app (call, iteration, close()) is done: from here on the request is the
    /// worker's, and no timeout action applies.
    pub fn leave_app(&self, index: usize) {
        let mut all = self.lock();
        let cur = &mut all[index];
        cur.in_app = false;
        cur.app_done = true;
    }

    /// request_terminate_timeout fired for thread `index`'s request.
    pub fn timed_out(&self, index: usize) -> bool {
        self.lock()[index].term_fired
    }

    /// Wait (at most `within`) until the terminate record of the current request is in
    /// the error log, so that the request driver's own line about the 504 follows the
    /// stack instead of preceding it. Call it with the GIL released: it sleeps.
    pub fn wait_terminate_report(&self, index: usize, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            {
                let all = self.lock();
                let cur = &all[index];
                if !cur.term_fired || cur.term_reported {
                    return;
                }
            }
            if Instant::now() >= deadline {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Thread `index`'s request ended.
    pub fn end(&self, index: usize) {
        let mut all = self.lock();
        let cur = &mut all[index];
        cur.active = false;
        cur.generation += 1;
        cur.in_app = false;
        cur.conn = None;
    }

    /// The watchdog thread.
    fn run(&self) {
        let tick = match (self.terminate, self.slowlog) {
            (Some(a), Some(b)) => a.min(b),
            (Some(a), None) | (None, Some(a)) => a,
            (None, None) => return,
        };
        loop {
            let (action, sleep) = self.next_action(tick);
            match action {
                Some(due) => self.act(due),
                None => std::thread::sleep(sleep),
            }
        }
    }

    /// Decide, under the lock, what is due now for some request thread; else how long
    /// to sleep.
    fn next_action(&self, tick: Duration) -> (Option<Due>, Duration) {
        let now = Instant::now();
        let mut sleep = tick;
        let mut all = self.lock();
        for (index, cur) in all.iter_mut().enumerate() {
            if let Some(due) = self.due(index, cur, now, &mut sleep) {
                return (Some(due), sleep);
            }
        }
        (None, sleep)
    }

    /// What is due now for one thread's request (marking it as done), shortening
    /// `sleep` to its next deadline otherwise.
    fn due(
        &self,
        index: usize,
        cur: &mut Current,
        now: Instant,
        sleep: &mut Duration,
    ) -> Option<Due> {
        let start = cur.start.filter(|_| cur.active && !cur.app_done)?;
        let thread = cur.thread.unwrap_or(self.main_thread);
        let elapsed = now.saturating_duration_since(start);
        let due = |at: Duration, sleep: &mut Duration| {
            if elapsed >= at {
                true
            } else {
                *sleep = (*sleep).min(at - elapsed);
                false
            }
        };
        let action = if let Some(t) = self.terminate {
            if cur.term_fired {
                due(t + KILL_GRACE, sleep).then_some(Action::Kill)
            } else if due(t, sleep) {
                cur.term_fired = true;
                Some(Action::Terminate)
            } else {
                None
            }
        } else {
            None
        };
        let action = action.or_else(|| {
            let s = self.slowlog?;
            if cur.slow_sent || cur.term_fired || !due(s, sleep) {
                return None;
            }
            cur.slow_sent = true;
            Some(Action::Slowlog)
        });
        action.map(|action| Due {
            action,
            index,
            thread,
            generation: cur.generation,
            start,
            label: cur.label.clone(),
        })
    }

    /// Carry out `action` for the request `generation` (the lock is not held: the dump
    /// waits for the main thread, which may want the lock in the meantime).
    fn act(&self, due: Due) {
        let Due {
            action,
            index,
            thread,
            generation,
            start,
            ref label,
        } = due;
        match action {
            Action::Slowlog => {
                let elapsed = start.elapsed();
                let stack = self.dump_stack(thread, slowlog_signal());
                if self.lock()[index].generation != generation {
                    // The request ended while the stack was taken: the dump shows the
                    // worker's own loop, not the slow request.
                    return;
                }
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs() as i64);
                let entry =
                    report::slowlog_entry(now, &self.pool, self.pid, label, elapsed, &stack);
                if let Err(e) = self.control.send(&frame_slowlog(entry.as_bytes())) {
                    log(
                        Level::Warning,
                        format!("cannot send a slow-log entry to the manager: {e}"),
                    );
                }
            }
            Action::Terminate => {
                let elapsed = start.elapsed();
                let stack = self.dump_stack(thread, terminate_signal());
                // SAFETY: pthread_equal has no preconditions.
                if unsafe { libc::pthread_equal(thread, self.main_thread) } == 0 {
                    self.raise_in_thread(index, generation);
                }
                log(
                    Level::Error,
                    report::terminate_record(
                        &self.pool,
                        self.pid,
                        label,
                        self.terminate.unwrap_or_default(),
                        elapsed,
                        &stack,
                    ),
                );
                let mut all = self.lock();
                if all[index].generation == generation {
                    all[index].term_reported = true;
                }
            }
            Action::Kill => {
                let answered = self.answer_before_exit(index, generation);
                log(
                    Level::Error,
                    report::killed_record(
                        &self.pool,
                        self.pid,
                        label,
                        self.terminate.unwrap_or_default(),
                        start.elapsed(),
                        answered,
                    ),
                );
                // SAFETY: _exit ends the process at once; nothing in this process can
                // be left half-done in a way that outlives it (the manager owns the
                // logs, the web server sees the connection close).
                unsafe { libc::_exit(pyfpm_ipc::exit::REQUEST_TIMEOUT_KILLED) };
            }
        }
    }

    /// Before ending the worker: answer 504 on the stuck request's connection if nothing
    /// was sent on it yet and nobody holds it (the main thread is in the app, which
    /// never holds the connection's lock). `true` when the answer went out.
    fn answer_before_exit(&self, index: usize, generation: u64) -> bool {
        let conn = {
            let all = self.lock();
            let cur = &all[index];
            if cur.generation != generation {
                return false;
            }
            cur.conn.clone()
        };
        let Some((shared, seq)) = conn else {
            return false;
        };
        let Some(mut conn) = crate::conn::try_lock(&shared) else {
            return false;
        };
        conn.answer_and_end(seq, self.terminate.unwrap_or_default())
    }

    /// Raise [`RequestTimeout`] in request thread `index` (not the main thread, whose
    /// signal handler does it), if its request `generation` is still in the app. From a
    /// thread of its own: attaching waits for the GIL, which the stuck app may hold for
    /// long, and the watchdog must stay free to end the worker after [`KILL_GRACE`].
    fn raise_in_thread(&self, index: usize, generation: u64) {
        let Some(dog) = WATCHDOG.get().cloned() else {
            return;
        };
        let spawned = std::thread::Builder::new()
            .name("pyfpm-timeout".into())
            .spawn(move || {
                Python::attach(|py| {
                    let ident = {
                        let mut all = dog.lock();
                        let cur = &mut all[index];
                        if cur.generation != generation || !cur.in_app || cur.raised {
                            return;
                        }
                        cur.raised = true;
                        cur.thread
                    };
                    let Some(ident) = ident else {
                        return;
                    };
                    let exc = py.get_type::<RequestTimeout>();
                    // SAFETY: attached to the interpreter; `exc` is a live exception
                    // class; the ident is a thread of this interpreter (or matches none,
                    // which is a no-op).
                    unsafe {
                        pyo3::ffi::PyThreadState_SetAsyncExc(ident as _, exc.as_ptr());
                    }
                });
            });
        if let Err(e) = spawned {
            log(
                Level::Error,
                format!("cannot start a thread to stop the timed-out request: {e}"),
            );
        }
    }

    /// Ask faulthandler (in `thread`, the request's) for a stack dump via `signal` and
    /// read it.
    fn dump_stack(&self, thread: libc::pthread_t, signal: i32) -> Vec<u8> {
        let fd = self.dump_read.as_raw_fd();
        let mut scratch = [0u8; 4096];
        // Leftovers of an earlier dump that arrived after its quiet period.
        while read_some(fd, &mut scratch) > 0 {}
        // SAFETY: request threads live as long as the process serves; `signal` has a handler
        // (faulthandler's), so it cannot kill the process.
        if unsafe { libc::pthread_kill(thread, signal) } != 0 {
            return Vec::new();
        }
        let mut out = Vec::new();
        let mut wait = DUMP_FIRST_BYTE;
        while out.len() < DUMP_MAX && wait_readable(fd, wait) {
            let n = read_some(fd, &mut scratch);
            if n == 0 {
                break;
            }
            out.extend_from_slice(&scratch[..n]);
            wait = DUMP_QUIET;
        }
        out
    }
}

/// Non-blocking read; 0 when nothing is there (or on error).
fn read_some(fd: i32, buf: &mut [u8]) -> usize {
    // SAFETY: `buf` is valid for writes of its length.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    usize::try_from(n).unwrap_or(0)
}

/// Wait until `fd` is readable; `false` on timeout.
fn wait_readable(fd: i32, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = i32::try_from(left.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        if n > 0 {
            return true;
        }
        if n == 0 || std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            return false;
        }
    }
}
