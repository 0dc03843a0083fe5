//! The serve loop: wait on the listening sockets, the control socket and the signal
//! self-pipe; accept one connection; serve its requests one at a time; repeat.
//!
//! Kept-alive connections: between two requests the worker waits on the connection and
//! also on the listeners and the pool's DISPATCH socket (see [`crate::parking`]). The
//! connection's next request is served directly; when other work is waiting instead, the
//! idle connection is parked with the manager and the worker goes back to the main loop,
//! which takes connections from the listeners and, already carrying their next request,
//! from DISPATCH. An idle connection never pins a worker.
//!
//! Stopping: SIGQUIT (graceful) and end of file on the control socket (the manager is
//! gone) both mean "finish the request in progress, then exit 0"; a worker that is idle
//! exits at once, and one waiting for the next request on a kept-alive connection parks
//! it first (the web server believes it alive; closing it would fail its next
//! request). SIGTERM is left at its default action: it is the manager's fast stop. A
//! SIGINT (Python's KeyboardInterrupt) is treated like SIGQUIT. Every blocking call
//! (poll, accept, read, write) runs with the GIL released.

use crate::conn::{Capacity, Conn, ConnError, Shared, Socket, lock};
use crate::log::{Level, log};
use crate::parking::Parking;
use crate::wsgi::{self, Outcome};
use fastcgi::{Role, ServerConfig};
use pyfpm_ipc::{ListenerFd, WorkerSpec, exit};
use pyo3::prelude::*;
use pyo3::types::PyType;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Everything the serve loop needs, made once at start-up.
pub struct Worker {
    /// The spec the manager sent.
    pub spec: WorkerSpec,
    /// The WSGI application.
    pub app: Py<PyAny>,
    /// The `wsgi.file_wrapper` class.
    pub file_wrapper: Py<PyType>,
    /// The listening sockets, owned (closed when the worker exits), non-blocking.
    pub listeners: Vec<(OwnedFd, ListenerFd)>,
    /// Stop requests.
    pub stop: Stop,
    /// Scoreboard slot, watchdog, recycling.
    pub monitor: crate::monitor::Monitor,
}

/// Result of waiting on some fds plus the stop sources.
#[derive(Debug)]
pub struct Polled {
    /// Per fd given: readable (or hung up / in error, which the next call reports).
    pub readable: Vec<bool>,
    /// A stop was requested (now or before).
    pub stop: bool,
    /// poll(2) was interrupted by a signal: the caller should let Python run its signal
    /// handlers (`py.check_signals()`).
    pub interrupted: bool,
    /// The timeout given to [`Stop::poll_timeout`] expired with nothing readable.
    pub timed_out: bool,
}

/// The ways a worker is asked to stop, and the fds that announce them.
pub struct Stop {
    /// Set by the SIGQUIT handler, a KeyboardInterrupt, or an app's `sys.exit()`.
    quit: Arc<AtomicBool>,
    /// End of file on the control socket: the manager is gone.
    manager_gone: AtomicBool,
    /// Read end of the SIGQUIT self-pipe (non-blocking); wakes poll(2).
    sig_pipe: UnixStream,
    /// The worker's end of the control socketpair (non-blocking).
    control: UnixStream,
    /// Write end of the self-pipe handed to Python's `signal.set_wakeup_fd`, so a signal
    /// with a Python handler (SIGINT) also wakes poll(2); kept open here.
    _python_wakeup: UnixStream,
}

impl Stop {
    /// Install the SIGQUIT handler (flag + self-pipe), make Python's signal handlers
    /// wake the same pipe, and watch `control`.
    pub fn install(py: Python<'_>, control: UnixStream) -> PyResult<Stop> {
        let quit = Arc::new(AtomicBool::new(false));
        let (sig_pipe, sig_write) = UnixStream::pair()?;
        sig_pipe.set_nonblocking(true)?;
        sig_write.set_nonblocking(true)?;
        let python_wakeup = sig_write.try_clone()?;
        signal_hook::flag::register(signal_hook::consts::SIGQUIT, Arc::clone(&quit))?;
        signal_hook::low_level::pipe::register(signal_hook::consts::SIGQUIT, sig_write)?;
        // Without this a SIGINT arriving just before poll(2) would only be noticed at the
        // next wake-up: Python's C handler merely sets a flag.
        py.import("signal")?
            .call_method1("set_wakeup_fd", (python_wakeup.as_raw_fd(),))?;
        control.set_nonblocking(true)?;
        Ok(Stop {
            quit,
            manager_gone: AtomicBool::new(false),
            sig_pipe,
            control,
            _python_wakeup: python_wakeup,
        })
    }

    /// The control socket, for writing messages to the manager.
    pub fn control_socket(&self) -> &UnixStream {
        &self.control
    }

    /// True once the worker should exit after the current request.
    pub fn requested(&self) -> bool {
        self.quit.load(Ordering::SeqCst) || self.manager_gone.load(Ordering::SeqCst)
    }

    /// Ask the worker to exit after the current request.
    pub fn request(&self) {
        self.quit.store(true, Ordering::SeqCst);
    }

    /// Wait (no timeout) until one of `fds` is readable or a stop is requested.
    pub fn poll(&self, fds: &[RawFd]) -> io::Result<Polled> {
        self.poll_timeout(fds, None)
    }

    /// [`Stop::poll`], giving up after `timeout` (`None` = never).
    pub fn poll_timeout(&self, fds: &[RawFd], timeout: Option<Duration>) -> io::Result<Polled> {
        let watch_control = !self.manager_gone.load(Ordering::SeqCst);
        let mut pollfds: Vec<libc::pollfd> = fds
            .iter()
            .chain([self.sig_pipe.as_raw_fd()].iter())
            .chain(watch_control.then(|| self.control.as_raw_fd()).iter())
            .map(|&fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        let mut polled = Polled {
            readable: vec![false; fds.len()],
            stop: self.requested(),
            interrupted: false,
            timed_out: false,
        };
        if polled.stop {
            return Ok(polled);
        }
        let timeout_ms = timeout.map_or(-1, |t| {
            i32::try_from(t.as_millis().max(1)).unwrap_or(i32::MAX)
        });
        // SAFETY: `pollfds` is a valid array of `pollfds.len()` pollfd structs.
        let n = unsafe {
            libc::poll(
                pollfds.as_mut_ptr(),
                pollfds.len() as libc::nfds_t,
                timeout_ms,
            )
        };
        if n == 0 {
            polled.timed_out = true;
            return Ok(polled);
        }
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                polled.interrupted = true;
                polled.stop = self.requested();
                return Ok(polled);
            }
            return Err(err);
        }
        for (i, pfd) in pollfds[..fds.len()].iter().enumerate() {
            polled.readable[i] = pfd.revents != 0;
        }
        if pollfds[fds.len()].revents != 0 {
            // Drain the self-pipe. The SIGQUIT flag says whether that was the signal; for
            // any other the caller lets Python run its handlers.
            let mut buf = [0u8; 64];
            while matches!((&self.sig_pipe).read(&mut buf), Ok(n) if n > 0) {}
            polled.interrupted = true;
        }
        if watch_control && pollfds[fds.len() + 1].revents != 0 {
            self.read_control();
        }
        polled.stop = self.requested();
        Ok(polled)
    }

    /// Read what the manager sent. No messages to the worker are defined yet, so data is
    /// ignored; end of file or an error means the manager is gone.
    fn read_control(&self) {
        let mut buf = [0u8; 256];
        loop {
            match (&self.control).read(&mut buf) {
                Ok(0) => {
                    self.manager_gone.store(true, Ordering::SeqCst);
                    return;
                }
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => {
                    self.manager_gone.store(true, Ordering::SeqCst);
                    return;
                }
            }
        }
    }

    /// Why the worker is stopping, for the exit log line.
    fn reason(&self) -> &'static str {
        if self.manager_gone.load(Ordering::SeqCst) {
            "the manager is gone (control socket closed)"
        } else {
            "graceful stop requested"
        }
    }
}

/// Serve until asked to stop; returns the process exit code.
pub fn serve_forever(py: Python<'_>, worker: &Worker) -> i32 {
    let parking = Parking::from_spec(worker.spec.park_fd, worker.spec.dispatch_fd);
    let listener_fds: Vec<RawFd> = worker
        .listeners
        .iter()
        .map(|(fd, _)| fd.as_raw_fd())
        .collect();
    // Start the accept attempts at a rotating listener so that one busy listener cannot
    // starve the others.
    let mut first = 0usize;
    loop {
        if worker.stop.requested() {
            break;
        }
        let dispatch = parking.dispatch_fd();
        let mut fds = listener_fds.clone();
        fds.extend(dispatch);
        let polled = match py.detach(|| worker.stop.poll(&fds)) {
            Ok(p) => p,
            Err(e) => {
                log(Level::Error, format!("poll() failed: {e}; worker exiting"));
                return 1;
            }
        };
        if polled.interrupted && !check_signals(py, worker) {
            break;
        }
        if polled.stop {
            break;
        }
        if dispatch.is_some() && polled.readable[listener_fds.len()] {
            // A parked connection whose next request has arrived: it waited longer than
            // anything in the listen queues.
            if let Some((fd, payload)) = py.detach(|| parking.take()) {
                let peer = dispatched_peer(&fd);
                serve_connection(py, worker, &parking, Socket::new(fd), peer, &payload, false);
                continue;
            }
        }
        let fds = &listener_fds;
        for k in 0..fds.len() {
            let i = (first + k) % fds.len();
            if !polled.readable[i] {
                continue;
            }
            let (listener, info) = (&worker.listeners[i].0, &worker.listeners[i].1);
            let accepted = py.detach(|| accept(listener.as_raw_fd(), info));
            match accepted {
                Ok(Some((sock, peer))) => {
                    first = (i + 1) % fds.len();
                    serve_connection(py, worker, &parking, sock, peer, &[], true);
                    break;
                }
                Ok(None) => {}
                Err(e) => {
                    log(
                        Level::Error,
                        format!("accept() on {} failed: {e}", info.address),
                    );
                    // Out of fds or memory: do not spin on a listener that stays readable.
                    py.detach(|| std::thread::sleep(Duration::from_millis(100)));
                }
            }
        }
    }
    log(
        Level::Debug,
        format!(
            "worker {} exiting: {}",
            worker.spec.slot,
            worker.stop.reason()
        ),
    );
    exit::OK
}

/// Let Python run its signal handlers. `false` when one raised (KeyboardInterrupt): the
/// worker then stops like on SIGQUIT.
fn check_signals(py: Python<'_>, worker: &Worker) -> bool {
    match py.check_signals() {
        Ok(()) => true,
        Err(err) => {
            log(
                Level::Notice,
                format!(
                    "{} while idle; worker stopping",
                    err.get_type(py)
                        .name()
                        .map_or_else(|_| "signal".to_string(), |n| n.to_string())
                ),
            );
            worker.stop.request();
            false
        }
    }
}

/// Accept one connection: `None` when another worker took it first.
fn accept(listener: RawFd, info: &ListenerFd) -> io::Result<Option<(Socket, String)>> {
    loop {
        // SAFETY: plain accept4 on a listening fd we own; no address buffer.
        let fd = unsafe {
            libc::accept4(
                listener,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC,
            )
        };
        if fd >= 0 {
            // SAFETY: accept4 returned a new fd that nothing else owns.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            let peer = peer_name(&fd, info);
            return Ok(Some((Socket::new(fd), peer)));
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EAGAIN) | Some(libc::ECONNABORTED) | Some(libc::EPROTO) => {
                return Ok(None);
            }
            _ => return Err(err),
        }
    }
}

/// The peer for log lines: `ip:port` for TCP, the listener's address for a Unix socket
/// (its clients are normally unnamed).
fn peer_name(fd: &OwnedFd, info: &ListenerFd) -> String {
    if info.unix {
        return format!("client of {}", info.address);
    }
    match nix::sys::socket::getpeername::<nix::sys::socket::SockaddrStorage>(fd.as_raw_fd()) {
        Ok(addr) => addr.to_string(),
        Err(_) => format!("client of {}", info.address),
    }
}

/// The peer of a connection handed over by the manager, for log lines.
fn dispatched_peer(fd: &OwnedFd) -> String {
    use nix::sys::socket::{AddressFamily, SockaddrLike, SockaddrStorage, getpeername};
    match getpeername::<SockaddrStorage>(fd.as_raw_fd()) {
        Ok(addr)
            if matches!(
                addr.family(),
                Some(AddressFamily::Inet | AddressFamily::Inet6)
            ) =>
        {
            addr.to_string()
        }
        _ => "kept-alive client (via the manager)".to_string(),
    }
}

/// How waiting for the next request on a connection ended.
enum Wait {
    /// A request's params are complete.
    Ready,
    /// The peer closed the connection between requests.
    Closed,
    /// Stop requested while no request was in progress.
    Stop,
    /// Idle between requests while other work waits, or stop requested then: hand the
    /// connection to the manager.
    Park,
    /// poll(2) was interrupted by a signal; Python's handlers must run.
    Interrupted,
}

/// Wait (GIL released) for the next request on a connection, answering management
/// records meanwhile. After a stop: `first` (no request came on this connection yet)
/// still waits for that request, as PHP-FPM's worker does -- the web server connected
/// and is about to send it, and dropping the connection would fail it (bounded: the
/// manager SIGKILLs a worker still there after `process_control_timeout`);
/// `finish_pending` still serves a next request that is already arriving. `others` (the
/// listeners and DISPATCH; empty when parking is disabled) are watched between requests
/// on a kept connection: one readable means another connection needs this worker.
fn wait_for_request(
    shared: &Shared,
    stop: &Stop,
    first: bool,
    finish_pending: bool,
    others: &[RawFd],
) -> Result<Wait, ConnError> {
    let park_or_stop = if others.is_empty() {
        Wait::Stop
    } else {
        Wait::Park
    };
    let mut conn = lock(shared);
    loop {
        conn.process_events()?;
        if conn.request_ready() {
            return Ok(Wait::Ready);
        }
        let idle = conn.req.is_none();
        if idle && !conn.has_buffered_input() {
            // Between requests: a stop wins, and poll also watches the stop sources --
            // unless the next request is already arriving: closing then would reset a
            // request the web server has sent (nginx retries that only for idempotent
            // methods on a cached connection), so it is served first.
            let fd = conn.raw_fd().ok_or(ConnError::Closed)?;
            if stop.requested() {
                if first {
                    wait_readable(fd).map_err(|e| ConnError::Io {
                        op: "waiting for the web server's first request",
                        source: Arc::new(e),
                    })?;
                } else if !finish_pending || !readable_now(fd) {
                    return Ok(park_or_stop);
                }
                if !conn.fill()? {
                    return Ok(Wait::Closed);
                }
                continue;
            }
            // Before the first request the web server is about to send it: nothing
            // else is watched (a readable listener would wake this loop for nothing).
            let watched: Vec<RawFd> = if first {
                vec![fd]
            } else {
                [fd].iter().chain(others).copied().collect()
            };
            // A new connection must bring its first request within request_read_timeout:
            // one that sends nothing would otherwise hold the worker forever.
            let limit = (first && !conn.read_timeout().is_zero()).then(|| conn.read_timeout());
            let polled = stop
                .poll_timeout(&watched, limit)
                .map_err(|e| ConnError::Io {
                    op: "waiting for the web server",
                    source: Arc::new(e),
                })?;
            if polled.timed_out {
                return Err(ConnError::ReadTimeout(conn.read_timeout()));
            }
            if polled.interrupted {
                return Ok(Wait::Interrupted);
            }
            if !polled.readable[0] {
                if first {
                    continue; // the branch above waits for the first request
                }
                if polled.stop || polled.readable[1..].iter().any(|&r| r) {
                    return Ok(park_or_stop);
                }
                continue; // control-socket data that was not a stop
            }
        }
        if !conn.fill()? {
            return Ok(Wait::Closed);
        }
    }
}

/// Whether `fd` has data (or end of file) to read right now.
fn readable_now(fd: RawFd) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, zero timeout.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    n > 0 && p.revents != 0
}

/// Block until `fd` has data (or end of file) to read.
fn wait_readable(fd: RawFd) -> io::Result<()> {
    loop {
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd; no timeout.
        let n = unsafe { libc::poll(&mut p, 1, -1) };
        if n > 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if n < 0 && err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Serve every request of one connection; `preload`: bytes already read from it (by
/// the manager, for a dispatched connection). Ends by closing the connection, or by
/// parking it when idle while other work waits or a stop is requested. `first`: a newly
/// accepted connection, whose first request is awaited even after a stop. A dispatched
/// one is a kept connection whose next request is arriving: `finish_pending` serves
/// that, and a connection that turns out idle again (it only sent management records)
/// is parked again rather than pinning the worker.
fn serve_connection(
    py: Python<'_>,
    worker: &Worker,
    parking: &Parking,
    sock: Socket,
    peer: String,
    preload: &[u8],
    mut first: bool,
) {
    let config = ServerConfig {
        max_params_len: worker.spec.request_params_max,
        max_active_requests: 1,
        roles: worker.spec.roles.iter().map(|&n| Role::from(n)).collect(),
    };
    let capacity = Capacity {
        max_conns: worker.spec.fcgi_max_conns,
        max_reqs: worker.spec.fcgi_max_reqs,
    };
    let mut conn = Conn::new(sock, peer, config, capacity);
    conn.set_limits(
        worker.spec.request_body_max,
        Duration::from_millis(worker.spec.request_read_timeout_ms),
    );
    conn.preload(preload);
    let shared: Shared = Arc::new(Mutex::new(conn));
    let others: Vec<RawFd> = if parking.enabled() {
        worker
            .listeners
            .iter()
            .map(|(fd, _)| fd.as_raw_fd())
            .chain(parking.dispatch_fd())
            .collect()
    } else {
        Vec::new()
    };
    // After a stop, at most one more already-arriving request is served (a web server
    // that keeps the connection busy must not keep the worker forever).
    let mut finish_pending = true;
    loop {
        let stopping = worker.stop.requested();
        let waited =
            py.detach(|| wait_for_request(&shared, &worker.stop, first, finish_pending, &others));
        if stopping && !first {
            finish_pending = false;
        }
        match waited {
            Ok(Wait::Ready) => first = false,
            Ok(Wait::Closed) | Ok(Wait::Stop) => break,
            Ok(Wait::Park) => {
                // One detach for lock and send: the mutex is never held across attaching.
                let failed = py.detach(|| {
                    let mut conn = lock(&shared);
                    let buffered = conn.take_buffered();
                    let fd = conn.raw_fd()?;
                    let e = parking.park(fd, &buffered).err()?;
                    Some(format!(
                        "{}: cannot park the idle connection: {e}; closed",
                        conn.peer
                    ))
                });
                if let Some(message) = failed {
                    log(Level::Warning, message);
                }
                break;
            }
            Ok(Wait::Interrupted) => {
                if !check_signals(py, worker) {
                    break;
                }
                continue;
            }
            Err(e) => {
                let conn = lock(&shared);
                log(e.level(), format!("{}: {e}; connection closed", conn.peer));
                break;
            }
        }
        if wsgi::run_request(py, worker, &shared) == Outcome::Close {
            break;
        }
    }
    lock(&shared).close();
}
