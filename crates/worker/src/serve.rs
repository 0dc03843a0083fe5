//! The serve loop: wait on the listening sockets, the held idle connections, the
//! control socket and the signal self-pipe; serve what is ready; repeat.
//!
//! Threads: with `threads` = N > 1, N request threads run this loop side by side (the
//! main thread is one of them), each attached to the interpreter for its whole life and
//! detached around every blocking call. Each accepts and drives connections on its
//! own. A connection has at most one *driver* (the thread waiting for its next
//! request); the thread that takes a request stops driving while the app runs, and the
//! [`crate::watcher`] reads the connection meanwhile, queueing requests multiplexed on
//! it for the other threads. When a request ends, its thread becomes the driver if the
//! connection has none, else goes back to the loop. Each thread holds its own idle
//! connections.
//!
//! Kept-alive connections: between two requests a connection goes back to the thread's
//! main loop, which waits on the listeners, the pool's DISPATCH socket, the ready queue,
//! the stop sources and every idle connection the thread holds
//! ([`crate::parking::Held`]) in one epoll set, then serves everything found ready,
//! each once (a *sweep*). The fixed fds are registered once per thread, a held
//! connection the first time it is held (edge-triggered). A connection's next request
//! is thus served by the thread that served the previous one, with a share of one
//! `epoll_wait`, a read and a write; the watcher parks one whose request
//! waits for a busy thread, and a stopping thread parks them all. An idle connection
//! never pins a worker.
//!
//! Stopping: SIGQUIT (graceful) and end of file on the control socket (the manager is
//! gone) both mean "finish the request in progress, then exit 0"; a worker that is idle
//! exits at once, after parking the kept-alive connections it holds (the web server
//! believes them alive; closing one would fail its next request). SIGTERM is left at
//! its default action: it is the manager's fast stop. A SIGINT (Python's
//! KeyboardInterrupt) is treated like SIGQUIT. Every blocking call (poll, accept, read,
//! write) runs with the GIL released.

use crate::conn::{Capacity, Conn, ConnError, Shared, Socket, fill, lock, share, try_lock};
use crate::log::{Level, log};
use crate::parking::{Held, Parking, Ready, readable_now};
use crate::watcher::{ReadyQueue, Watcher};
use crate::wsgi::{self, Outcome};
use fastcgi::{Role, ServerConfig};
use nix::sys::epoll::EpollEvent;
use pyfpm_ipc::{ListenerFd, WorkerSpec, exit};
use pyo3::prelude::*;
use pyo3::types::PyType;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
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
    /// Reads connections whose requests are in the app.
    pub watcher: Arc<Watcher>,
    /// The pool's PARK and DISPATCH sockets (idle kept-alive connections).
    pub parking: Arc<Parking>,
    /// Multiplexed requests waiting for a free thread (`threads` > 1).
    pub ready: Option<Arc<ReadyQueue>>,
    /// The codec settings of every connection (limits, roles, multiplexing).
    pub server_config: ServerConfig,
    /// What GET_VALUES answers.
    pub capacity: Capacity,
}

impl Worker {
    /// The codec settings and GET_VALUES answers for `spec`, made once at start-up.
    pub fn connection_settings(spec: &WorkerSpec) -> (ServerConfig, Capacity) {
        let threads = spec.threads.max(1);
        let config = ServerConfig {
            max_params_len: spec.request_params_max,
            max_active_requests: threads as usize,
            roles: spec.roles.iter().map(|&n| Role::from(n)).collect(),
        };
        let capacity = Capacity {
            max_conns: spec.fcgi_max_conns,
            max_reqs: spec.fcgi_max_reqs,
            mpxs_conns: threads > 1,
        };
        (config, capacity)
    }
}

/// Connections accepted from one listener in a row, without polling in between.
const ACCEPT_BURST: usize = 4;

/// Tags of a thread's fixed fds in its epoll set (see [`Held::watch`]).
const TAG_STOP: u32 = 0;
const TAG_SIGNAL: u32 = 1;
const TAG_CONTROL: u32 = 2;
const TAG_READY: u32 = 3;
const TAG_DISPATCH: u32 = 4;
/// Listener `i` is `TAG_LISTENER + i`.
const TAG_LISTENER: u32 = 16;

/// Most events taken from a thread's epoll set per wait; more wait for the next.
const MAX_EVENTS: usize = 64;

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
    /// Read end of the SIGQUIT self-pipe (non-blocking); wakes the waits. Drained by the
    /// main thread only, which runs Python's signal handlers.
    sig_pipe: UnixStream,
    /// Read end of the stop broadcast: written on SIGQUIT and whenever a stop is
    /// requested, never read, so it stays readable and wakes every thread's wait.
    broadcast: UnixStream,
    /// Its write end.
    broadcast_write: UnixStream,
    /// The worker's end of the control socketpair (non-blocking).
    control: UnixStream,
    /// Write end of the self-pipe handed to Python's `signal.set_wakeup_fd`, so a signal
    /// with a Python handler (SIGINT) also wakes the waits; kept open here.
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
        let (broadcast, broadcast_write) = UnixStream::pair()?;
        broadcast.set_nonblocking(true)?;
        broadcast_write.set_nonblocking(true)?;
        signal_hook::flag::register(signal_hook::consts::SIGQUIT, Arc::clone(&quit))?;
        signal_hook::low_level::pipe::register(signal_hook::consts::SIGQUIT, sig_write)?;
        signal_hook::low_level::pipe::register(
            signal_hook::consts::SIGQUIT,
            broadcast_write.try_clone()?,
        )?;
        // Without this a SIGINT arriving just before poll(2) would only be noticed at the
        // next wake-up: Python's C handler merely sets a flag.
        py.import("signal")?
            .call_method1("set_wakeup_fd", (python_wakeup.as_raw_fd(),))?;
        control.set_nonblocking(true)?;
        Ok(Stop {
            quit,
            manager_gone: AtomicBool::new(false),
            sig_pipe,
            broadcast,
            broadcast_write,
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

    /// Ask the worker to exit after the current request(s).
    pub fn request(&self) {
        self.quit.store(true, Ordering::SeqCst);
        self.wake_all();
    }

    /// Make every thread's wait return (a stop was requested).
    fn wake_all(&self) {
        let _ = (&self.broadcast_write).write(&[1]);
    }

    /// Add the stop sources to a thread's epoll set: the broadcast, the control socket
    /// and (`signals`: the main thread, which runs Python's signal handlers) the signal
    /// pipe. Their readiness goes to [`Stop::on_ready`].
    pub fn watch_from(&self, held: &Held, signals: bool) -> io::Result<()> {
        held.watch(self.broadcast.as_raw_fd(), TAG_STOP)?;
        held.watch(self.control.as_raw_fd(), TAG_CONTROL)?;
        if signals {
            held.watch(self.sig_pipe.as_raw_fd(), TAG_SIGNAL)?;
        }
        Ok(())
    }

    /// One of the sources [`Stop::watch_from`] added is ready. `true` when a signal
    /// came, for which the caller lets Python run its handlers.
    pub fn on_ready(&self, tag: u32) -> bool {
        match tag {
            TAG_SIGNAL => {
                self.drain_signal_pipe();
                true
            }
            TAG_CONTROL => {
                self.read_control();
                false
            }
            _ => false,
        }
    }

    /// Empty the signal self-pipe. The SIGQUIT flag says whether that was the signal;
    /// for any other the caller lets Python run its handlers.
    fn drain_signal_pipe(&self) {
        let mut buf = [0u8; 64];
        while matches!((&self.sig_pipe).read(&mut buf), Ok(n) if n > 0) {}
    }

    /// Wait until one of `fds` is readable or a stop is requested, giving up after
    /// `timeout` (`None` = never). `signals`: this is the main thread, which also wakes
    /// for Python's signals.
    pub fn poll_timeout(
        &self,
        fds: &[RawFd],
        timeout: Option<Duration>,
        signals: bool,
    ) -> io::Result<Polled> {
        let watch_control = !self.manager_gone.load(Ordering::SeqCst);
        // After the caller's fds: the broadcast, then (main thread only) the signal
        // pipe, then the control socket.
        let sig_at = signals.then_some(fds.len() + 1);
        let control_at = watch_control.then_some(fds.len() + 1 + usize::from(signals));
        let mut pollfds: Vec<libc::pollfd> = fds
            .iter()
            .copied()
            .chain([self.broadcast.as_raw_fd()])
            .chain(signals.then(|| self.sig_pipe.as_raw_fd()))
            .chain(watch_control.then(|| self.control.as_raw_fd()))
            .map(|fd| libc::pollfd {
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
        if sig_at.is_some_and(|i| pollfds[i].revents != 0) {
            self.drain_signal_pipe();
            polled.interrupted = true;
        }
        if control_at.is_some_and(|i| pollfds[i].revents != 0) {
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
                    self.wake_all();
                    return;
                }
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => {
                    self.manager_gone.store(true, Ordering::SeqCst);
                    self.wake_all();
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

/// Serve until asked to stop; returns the process exit code. With `threads` > 1 the
/// other request threads start here and are joined before the worker exits.
pub fn serve_forever(py: Python<'_>, worker: &Worker) -> i32 {
    let threads = worker.spec.threads.max(1) as usize;
    if threads == 1 {
        return serve_loop(py, worker, 0);
    }
    std::thread::scope(|scope| {
        let mut handles = Vec::with_capacity(threads - 1);
        for index in 1..threads {
            let spawned = std::thread::Builder::new()
                .name(format!("pyfpm-req-{index}"))
                .spawn_scoped(scope, move || {
                    Python::attach(|py| serve_loop(py, worker, index))
                });
            match spawned {
                Ok(handle) => handles.push(handle),
                Err(e) => {
                    log(
                        Level::Error,
                        format!("cannot start request thread {index}: {e}; serving with {index}"),
                    );
                    break;
                }
            }
        }
        let code = serve_loop(py, worker, 0);
        // The others finish their requests; they need the GIL to do so.
        worker.stop.request();
        let codes: Vec<i32> =
            py.detach(|| handles.into_iter().map(|h| h.join().unwrap_or(1)).collect());
        codes.into_iter().find(|&c| c != exit::OK).unwrap_or(code)
    })
}

/// One request thread's loop: wait on the listeners, DISPATCH, the ready queue and the
/// thread's held idle connections; serve everything found ready, each once; repeat
/// until a stop. `index` names the thread (0 = main).
fn serve_loop(py: Python<'_>, worker: &Worker, index: usize) -> i32 {
    if let Some(dog) = &worker.monitor.watchdog {
        dog.register_thread(index);
    }
    let main = index == 0;
    let parking = &*worker.parking;
    let held = worker.watcher.held(index);
    let n = worker.listeners.len();
    let mut dispatch = parking.dispatch_fd();
    let watched = (|| {
        for (i, (fd, _)) in worker.listeners.iter().enumerate() {
            held.watch(fd.as_raw_fd(), TAG_LISTENER + i as u32)?;
        }
        if let Some(ready) = &worker.ready {
            held.watch(ready.fd(), TAG_READY)?;
        }
        if let Some(fd) = dispatch {
            held.watch(fd, TAG_DISPATCH)?;
        }
        worker.stop.watch_from(held, main)
    })();
    if let Err(e) = watched {
        log(
            Level::Error,
            format!("cannot set up the thread's epoll set: {e}; worker exiting"),
        );
        worker.stop.request();
        return 1;
    }
    // Start the accept attempts at a rotating listener so that one busy listener cannot
    // starve the others.
    let mut first = 0usize;
    let mut events = vec![EpollEvent::empty(); MAX_EVENTS];
    let mut found: Vec<Ready> = Vec::with_capacity(MAX_EVENTS);
    let mut listener_ready = vec![false; n];
    let mut code = exit::OK;
    loop {
        if worker.stop.requested() {
            break;
        }
        if let Some(fd) = dispatch.filter(|_| parking.dispatch_fd().is_none()) {
            // End of file: it would stay readable for good.
            held.unwatch(fd);
            dispatch = None;
        }
        held.set_polling(true);
        let waited = py.detach(|| held.wait(&mut events, &mut found));
        held.set_polling(false);
        let mut interrupted = false;
        match waited {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                found.clear();
                interrupted = true;
            }
            Err(e) => {
                log(
                    Level::Error,
                    format!("epoll_wait() failed: {e}; worker exiting"),
                );
                code = 1;
                break;
            }
        }
        let (mut ready_queue, mut dispatched) = (false, false);
        listener_ready.fill(false);
        for &what in &found {
            match what {
                Ready::Fixed(TAG_READY) => ready_queue = true,
                Ready::Fixed(TAG_DISPATCH) => dispatched = true,
                Ready::Fixed(tag) if tag >= TAG_LISTENER => {
                    if let Some(r) = listener_ready.get_mut((tag - TAG_LISTENER) as usize) {
                        *r = true;
                    }
                }
                Ready::Fixed(tag) => interrupted |= worker.stop.on_ready(tag),
                Ready::Conn(_) => {}
            }
        }
        if interrupted && !check_signals(py, worker) {
            break;
        }
        if worker.stop.requested() {
            break;
        }
        if !held.is_empty() {
            // Whatever this sweep does, the held connections are not watched meanwhile.
            worker.watcher.wake();
        }
        // One sweep: everything found ready is served once, in this order, before the
        // next wait; what becomes ready meanwhile waits for the next sweep, so no
        // source starves another.
        if ready_queue {
            // A request multiplexed on a connection whose driver is busy.
            if let Some((shared, token)) = worker.ready.as_ref().and_then(|r| r.pop()) {
                drive(py, worker, index, &shared, false, false, Some(token));
            }
        }
        if dispatched {
            // A parked connection whose next request has arrived.
            if let Some((fd, payload)) = py.detach(|| parking.take()) {
                let peer = dispatched_peer(&fd);
                serve_connection(py, worker, index, Socket::new(fd), peer, &payload, false);
            }
        }
        for &what in &found {
            // The next request of a connection this thread served before (or its end).
            if let Ready::Conn(fd) = what
                && let Some(shared) = held.take(fd)
            {
                drive(py, worker, index, &shared, false, true, None);
            }
        }
        for k in 0..n {
            let i = (first + k) % n;
            if !listener_ready[i] {
                continue;
            }
            let (listener, info) = (&worker.listeners[i].0, &worker.listeners[i].1);
            let accepted = py.detach(|| accept(listener.as_raw_fd(), info));
            match accepted {
                Ok(Some((sock, peer))) => {
                    first = (i + 1) % n;
                    serve_connection(py, worker, index, sock, peer, &[], true);
                    // A busy listener (a connection per request): take its next
                    // connections without a poll before each, a few at most, while this
                    // thread holds no idle connection that would wait meanwhile.
                    for _ in 1..ACCEPT_BURST {
                        if !held.is_empty() || worker.stop.requested() {
                            break;
                        }
                        match py.detach(|| accept(listener.as_raw_fd(), info)) {
                            Ok(Some((sock, peer))) => {
                                serve_connection(py, worker, index, sock, peer, &[], true)
                            }
                            _ => break,
                        }
                    }
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
    // Stopping: each held connection is parked (or, when its next request is already
    // arriving, that request is served first). A failed poll stops the worker too.
    if !worker.stop.requested() {
        worker.stop.request();
    }
    for shared in held.drain() {
        drive(py, worker, index, &shared, false, false, None);
    }
    if main {
        log(
            Level::Debug,
            format!(
                "worker {} exiting: {}",
                worker.spec.slot,
                worker.stop.reason()
            ),
        );
    }
    code
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
    /// A request's params are complete; this thread claimed it (its token).
    Ready(u64),
    /// The peer closed the connection between requests.
    Closed,
    /// Stop requested while no request was in progress.
    Stop,
    /// Stop requested between requests: hand the connection to the manager.
    Park,
    /// Idle between requests: the thread holds the connection (its socket is the fd)
    /// and watches it in its main loop, with everything else.
    Hold(RawFd),
    /// Other requests of the connection are in service on other threads: stop driving;
    /// the watcher reads the connection, and the thread that finishes the last request
    /// drives it again.
    Leave,
    /// poll(2) was interrupted by a signal; Python's handlers must run.
    Interrupted,
}

/// Wait (GIL released) for the next request on a connection this thread drives,
/// answering management records meanwhile. Only a request already arriving is waited
/// for, within `request_read_timeout`; between two requests the connection is handed
/// back to the thread's main loop ([`Wait::Hold`]). `first`: a new connection, whose
/// first request is awaited like an arriving one, even after a stop, as PHP-FPM's
/// worker does -- the web server connected and is about to send it, and dropping the
/// connection would fail it (bounded: the manager SIGKILLs a worker still there after
/// `process_control_timeout`). `read_now`: the connection was seen readable, read it
/// before deciding. After a stop, `finish_pending` still serves a next request that is
/// already arriving.
///
/// The connection's lock is not held while waiting: the connection's other requests
/// keep writing their responses.
fn wait_for_request(
    shared: &Shared,
    stop: &Stop,
    main: bool,
    first: bool,
    read_now: bool,
    finish_pending: bool,
    can_park: bool,
) -> Result<Wait, ConnError> {
    let park_or_stop = if !can_park { Wait::Stop } else { Wait::Park };
    let mut conn = lock(shared);
    // A new connection's first request is normally there already (the web server sends
    // it with the connect), as is a held connection's when it polled readable: one read
    // without blocking saves a poll(2).
    let mut read_at_once = first || read_now;
    loop {
        conn.process_events()?;
        if let Some(token) = conn.claim_ready() {
            return Ok(Wait::Ready(token));
        }
        if std::mem::take(&mut read_at_once) && !stop.requested() {
            let (guard, filled) = fill(shared, conn, true);
            conn = guard;
            if !filled? {
                return Ok(Wait::Closed);
            }
            continue;
        }
        let fd = conn.raw_fd().ok_or(ConnError::Closed)?;
        // Between requests: no request is arriving on the connection (those in service
        // elsewhere are complete already). Otherwise the one arriving is read to its end
        // first, within request_read_timeout.
        let between = !conn.receiving() && !conn.has_buffered_input();
        let idle = conn.is_idle();
        if between {
            // A stop wins -- unless the next request is already arriving: closing then
            // would reset a request the web server has sent (nginx retries that only
            // for idempotent methods on a cached connection), so it is served first.
            if stop.requested() {
                if !idle {
                    conn.leave();
                    return Ok(Wait::Leave);
                }
                if first {
                    drop(conn);
                    wait_readable(fd).map_err(|e| ConnError::Io {
                        op: "waiting for the web server's first request",
                        source: Arc::new(e),
                    })?;
                    conn = lock(shared);
                } else if !finish_pending || !readable_now(&[fd])[0] {
                    return Ok(park_or_stop);
                }
                let (guard, filled) = fill(shared, conn, true);
                conn = guard;
                if !filled? {
                    return Ok(Wait::Closed);
                }
                continue;
            }
            if !first {
                if idle && conn.may_have_unread() {
                    // Held, it would wait for an edge that came already.
                    read_at_once = true;
                    continue;
                }
                if idle {
                    return Ok(Wait::Hold(fd));
                }
                conn.leave();
                return Ok(Wait::Leave);
            }
        }
        // A new connection must bring its first request, and an arriving request its
        // next bytes, within request_read_timeout: one that sends nothing would
        // otherwise hold the thread forever.
        let limit = (!conn.read_timeout().is_zero()).then(|| conn.read_timeout());
        drop(conn);
        let polled = stop
            .poll_timeout(&[fd], limit, main)
            .map_err(|e| ConnError::Io {
                op: "waiting for the web server",
                source: Arc::new(e),
            })?;
        conn = lock(shared);
        if polled.timed_out {
            return Err(ConnError::ReadTimeout(conn.read_timeout()));
        }
        if polled.interrupted {
            return Ok(Wait::Interrupted);
        }
        if !polled.readable[0] {
            continue; // the stop branch above handles a stop
        }
        let (guard, filled) = fill(shared, conn, true);
        conn = guard;
        if !filled? {
            return Ok(Wait::Closed);
        }
    }
}

/// [`wait_for_request`]'s usual cases, none of which blocks, decided with the GIL kept
/// (releasing and taking it again costs more than the rest of the decision): a
/// request that arrived whole (`read_now`: read it first, without waiting, and clear
/// the flag), the end of the connection, or (not `first`) nothing left to read,
/// decode or serve, so the connection is held. `None`: anything else, for
/// [`wait_for_request`] to handle: a stop, a request arriving in pieces, requests of
/// the connection in service elsewhere, or its mutex taken (it is only waited for with
/// the GIL released, see [`crate::conn`]).
fn without_blocking(
    shared: &Shared,
    stop: &Stop,
    first: bool,
    read_now: &mut bool,
) -> Option<Result<Wait, ConnError>> {
    if stop.requested() {
        return None;
    }
    let mut conn = try_lock(shared)?;
    if conn.reading() || !conn.is_idle() {
        return None;
    }
    if let Err(e) = conn.process_events() {
        return Some(Err(e));
    }
    if let Some(token) = conn.claim_ready() {
        return Some(Ok(Wait::Ready(token)));
    }
    if std::mem::take(read_now) {
        let (mut conn, filled) = fill(shared, conn, true);
        return match filled {
            Err(e) => Some(Err(e)),
            Ok(false) => Some(Ok(Wait::Closed)),
            Ok(true) => conn.claim_ready().map(|token| Ok(Wait::Ready(token))),
        };
    }
    let idle =
        !first && conn.failure().is_none() && !conn.has_buffered_input() && !conn.may_have_unread();
    idle.then(|| conn.raw_fd().map(|fd| Ok(Wait::Hold(fd))))
        .flatten()
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

/// Serve every request of one newly accepted or dispatched connection; `preload`:
/// bytes already read from it (by the manager, for a dispatched connection). `first`: a
/// newly accepted connection, whose first request is awaited even after a stop. A
/// dispatched one is a kept connection whose next request is arriving.
fn serve_connection(
    py: Python<'_>,
    worker: &Worker,
    index: usize,
    sock: Socket,
    peer: String,
    preload: &[u8],
    first: bool,
) {
    let mut conn = Conn::new(sock, peer, worker.server_config.clone(), worker.capacity);
    conn.set_limits(
        worker.spec.request_body_max,
        Duration::from_millis(worker.spec.request_read_timeout_ms),
    );
    conn.preload(preload);
    let shared = share(conn);
    worker.watcher.register(&shared);
    drive(py, worker, index, &shared, first, true, None);
}

/// Drive a connection: serve its requests as they arrive, starting with request
/// `start` when given (one taken from the ready queue). Returns when the connection is
/// closed, parked or held (idle between requests), or when this thread leaves it to
/// others (see [`Wait::Leave`]). `first`, `read_now`: see [`wait_for_request`].
fn drive(
    py: Python<'_>,
    worker: &Worker,
    index: usize,
    shared: &Shared,
    mut first: bool,
    mut read_now: bool,
    mut start: Option<u64>,
) {
    let main = index == 0;
    let parking = &*worker.parking;
    // After a stop, at most one more already-arriving request is served (a web server
    // that keeps the connection busy must not keep the worker forever).
    let mut finish_pending = true;
    loop {
        let token = match start.take() {
            Some(token) => token,
            None => {
                let stopping = worker.stop.requested();
                let waited = match without_blocking(shared, &worker.stop, first, &mut read_now) {
                    Some(waited) => waited,
                    None => py.detach(|| {
                        wait_for_request(
                            shared,
                            &worker.stop,
                            main,
                            first,
                            std::mem::take(&mut read_now),
                            finish_pending,
                            parking.enabled(),
                        )
                    }),
                };
                if stopping && !first {
                    finish_pending = false;
                }
                match waited {
                    Ok(Wait::Ready(token)) => {
                        first = false;
                        token
                    }
                    Ok(Wait::Closed) | Ok(Wait::Stop) => break,
                    Ok(Wait::Leave) => return,
                    Ok(Wait::Hold(fd)) => {
                        let held = worker.watcher.held(index);
                        if let Some(oldest) = held.push(Arc::clone(shared), fd, parking.enabled())
                            && let Some(message) = py.detach(|| parking.park_conn(&oldest))
                        {
                            log(Level::Warning, message);
                        }
                        return;
                    }
                    Ok(Wait::Park) => {
                        // One detach for lock and send: the mutex is never held across
                        // attaching.
                        if let Some(message) = py.detach(|| parking.park_conn(shared)) {
                            log(Level::Warning, message);
                        }
                        return;
                    }
                    Ok(Wait::Interrupted) => {
                        if !check_signals(py, worker) {
                            break;
                        }
                        continue;
                    }
                    Err(e) => {
                        let conn = lock(shared);
                        log(e.level(), format!("{}: {e}; connection closed", conn.peer));
                        break;
                    }
                }
            }
        };
        {
            // While the app runs the watcher reads the connection; with several threads,
            // requests already complete behind this one go to the others now.
            let mut conn = lock(shared);
            conn.driver = false;
            if let Some(ready) = &worker.ready {
                while let Some(more) = conn.claim_ready() {
                    ready.push(Arc::clone(shared), more);
                }
            }
        }
        worker.watcher.wake();
        if wsgi::run_request(py, worker, index, shared, token) == Outcome::Close {
            break;
        }
        let mut conn = lock(shared);
        if conn.is_closed() || conn.driver {
            // Closed by another request's failure, or another thread drives it now.
            return;
        }
        conn.driver = true;
    }
    lock(shared).close();
}
