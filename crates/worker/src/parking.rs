//! Idle kept-alive connections: the ones a request thread holds, and handing them to
//! the manager and taking back the ones whose next request has arrived.
//!
//! A web server's cached connection (nginx `keepalive` + `fastcgi_keep_conn on`) is
//! idle between its requests. A request thread that served one keeps it in its
//! [`Held`] set and watches it, with the listeners, in the epoll set of its main loop:
//! the connection's next request is served where its previous one was, with no system
//! call beyond that wait (shared by whatever it finds ready), the read and the write. A
//! thread holds any number of idle connections (up to [`MAX_HELD`]); none of them pins
//! it, since it waits on all of them and on new connections at once.
//!
//! A held connection is registered edge-triggered, once: the registration stays while
//! the connection goes out to be served and comes back, so holding it again costs no
//! system call. It leaves the set only when the connection closes (parking closes
//! this worker's copy), when another thread holds it (see [`Conn::register_with`]), or
//! when its thread leaves it to the threads serving its other requests
//! ([`Conn::leave`]). An edge that comes while the connection is out (its request
//! being served) is reported by the next wait and ignored: [`Held::take`] finds
//! nothing. The bytes behind an edge are read when the connection is next taken, and a
//! connection whose last read filled its buffer is read again before it is held
//! ([`Conn::may_have_unread`]), so no bytes wait in a held socket without an edge to
//! come.
//!
//! What a held connection could still wait for is its thread, busy with another
//! request. The connection watcher ([`crate::watcher`]) looks at the held sets every
//! tick: a connection found readable at two ticks in a row (its request has waited
//! 2 ms or more) is *parked* when another thread or worker of the pool is idle, and
//! after 100 ms otherwise (see [`crate::watcher::OVERDUE_TICKS`]). So is the oldest one
//! beyond [`MAX_HELD`], and every one when the worker stops. Parking is one message on
//! the pool's PARK socket (see [`pyfpm_ipc::WorkerSpec::park_fd`]) carrying the
//! connection as SCM_RIGHTS; the manager watches parked connections and, when one
//! becomes readable, passes it on DISPATCH, where any idle worker of the pool takes it.
//!
//! The message format (both directions) is [`pyfpm_ipc::handoff`]'s.

#[cfg(doc)]
use crate::conn::Conn;
use crate::conn::{Shared, lock};
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use pyfpm_ipc::handoff::{self, Received};
use std::collections::VecDeque;
use std::io;
use std::os::fd::BorrowedFd;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

/// Idle connections one request thread holds at most; beyond, the one idle longest is
/// parked.
pub const MAX_HELD: usize = 64;

/// Marks an epoll event's data as one of the thread's fixed fds (see [`Held::watch`]);
/// a held connection's data is its fd.
const FIXED: u64 = 1 << 32;

/// The worker's ends of its pool's PARK and DISPATCH socketpairs.
#[derive(Debug)]
pub struct Parking {
    /// Send end of PARK (blocking; the manager drains it at once).
    park: Option<OwnedFd>,
    /// Receive end of DISPATCH (shared with the other workers; read with MSG_DONTWAIT
    /// since the open file's flags are the pool's, not ours).
    dispatch: Option<OwnedFd>,
    /// False once DISPATCH reported end of file (the manager is gone): then it is no
    /// longer polled, or it would stay readable forever.
    dispatch_open: AtomicBool,
}

impl Parking {
    /// No parking: idle kept connections pin their worker (protocol 2 behaviour).
    pub fn disabled() -> Parking {
        Parking {
            park: None,
            dispatch: None,
            dispatch_open: AtomicBool::new(false),
        }
    }

    /// Own the fds the spec names (`-1`: none). An fd that is not an open socket
    /// disables parking, logged, rather than failing the worker: serving still works.
    pub fn from_spec(park_fd: RawFd, dispatch_fd: RawFd) -> Parking {
        if park_fd < 0 || dispatch_fd < 0 || park_fd == dispatch_fd {
            return Parking::disabled();
        }
        for fd in [park_fd, dispatch_fd] {
            // SAFETY: fcntl with integer arguments on a number that may not be open.
            // Close-on-exec: subprocesses the app starts must not hold the pool's pairs.
            if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } < 0 {
                crate::log::log(
                    crate::log::Level::Warning,
                    format!(
                        "parking fd {fd} is not open ({}); idle kept-alive connections \
                         will pin this worker",
                        io::Error::last_os_error()
                    ),
                );
                return Parking::disabled();
            }
        }
        // SAFETY: both fds are open, were inherited for the worker alone and are
        // distinct (checked above); nothing else in the worker takes them.
        let (park, dispatch) = unsafe {
            (
                OwnedFd::from_raw_fd(park_fd),
                OwnedFd::from_raw_fd(dispatch_fd),
            )
        };
        Parking {
            park: Some(park),
            dispatch: Some(dispatch),
            dispatch_open: AtomicBool::new(true),
        }
    }

    /// Whether an idle connection can be parked.
    pub fn enabled(&self) -> bool {
        self.park.is_some()
    }

    /// The DISPATCH fd to poll, while it is usable.
    pub fn dispatch_fd(&self) -> Option<RawFd> {
        self.dispatch
            .as_ref()
            .filter(|_| self.dispatch_open.load(Ordering::Relaxed))
            .map(|fd| fd.as_raw_fd())
    }

    /// Hand `conn` (and the bytes read from it but not decoded) to the manager. The
    /// caller closes its own copy afterwards.
    fn park(&self, conn: RawFd, buffered: &[u8]) -> io::Result<()> {
        let park = self
            .park
            .as_ref()
            .ok_or_else(|| io::Error::other("parking is disabled"))?;
        handoff::send(park.as_raw_fd(), conn, buffered, false).map_err(io::Error::from)
    }

    /// Park a held connection (idle between requests, driven by nobody) and close this
    /// worker's copy. `Some(message)` when that failed: the connection is closed all
    /// the same, and the web server opens a new one for its next request.
    pub fn park_conn(&self, shared: &Shared) -> Option<String> {
        let mut conn = lock(shared);
        let buffered = conn.take_buffered();
        let failed = conn.raw_fd().and_then(|fd| {
            let e = self.park(fd, &buffered).err()?;
            Some(format!(
                "{}: cannot park the idle connection: {e}; closed",
                conn.peer
            ))
        });
        conn.close();
        failed
    }

    /// Take one dispatched connection, without waiting: `None` when another worker got
    /// it first (or nothing is queued).
    pub fn take(&self) -> Option<(OwnedFd, Vec<u8>)> {
        let dispatch = self.dispatch.as_ref()?;
        loop {
            match handoff::receive(dispatch.as_raw_fd()) {
                Ok(Received::Conn(conn, bytes)) => return Some((conn, bytes)),
                Ok(Received::WouldBlock) => return None,
                Ok(Received::Closed) => {
                    // The manager closed its end.
                    self.dispatch_open.store(false, Ordering::Relaxed);
                    return None;
                }
                Ok(Received::Malformed) => crate::log::log(
                    crate::log::Level::Warning,
                    "malformed message on the dispatch socket ignored".to_string(),
                ),
                Err(e) => {
                    crate::log::log(
                        crate::log::Level::Warning,
                        format!("receiving a dispatched connection failed: {e}"),
                    );
                    return None;
                }
            }
        }
    }
}

/// One request thread's idle kept-alive connections and the epoll set its main loop
/// waits on (see the module documentation). Only the thread adds to it; the thread
/// takes connections out to serve them, the watcher to park them. Whoever removes a
/// connection owns it.
#[derive(Debug)]
pub struct Held {
    conns: Mutex<VecDeque<HeldConn>>,
    /// The thread is in its main loop's wait, watching these connections.
    polling: AtomicBool,
    /// The thread's fixed fds (level-triggered) and the connections it held
    /// (edge-triggered, registered until they close or another thread holds them).
    epoll: Epoll,
}

/// What the thread's wait found: one of its fixed fds (by the tag it was watched
/// with), or a held connection's fd.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ready {
    /// A fixed fd, by tag.
    Fixed(u32),
    /// A held connection (take it with [`Held::take`]; the watcher may have first).
    Conn(RawFd),
}

/// `fd` as the borrowed fd nix's epoll calls take.
fn borrow(fd: RawFd) -> BorrowedFd<'static> {
    // SAFETY: used only for the duration of one epoll_ctl call, on an fd the caller
    // keeps open for that call.
    unsafe { BorrowedFd::borrow_raw(fd) }
}

#[derive(Debug)]
struct HeldConn {
    conn: Shared,
    fd: RawFd,
    /// Looks in a row at which the watcher found it readable.
    seen: u32,
}

impl Held {
    /// An empty set with its epoll instance.
    pub fn new() -> io::Result<Held> {
        Ok(Held {
            conns: Mutex::new(VecDeque::new()),
            polling: AtomicBool::new(false),
            epoll: Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?,
        })
    }

    fn list(&self) -> std::sync::MutexGuard<'_, VecDeque<HeldConn>> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wait on `fd` for good (a listener, DISPATCH, the stop pipes), reported as
    /// [`Ready::Fixed`]`(tag)` while readable.
    pub fn watch(&self, fd: RawFd, tag: u32) -> io::Result<()> {
        let event = EpollEvent::new(EpollFlags::EPOLLIN, FIXED | u64::from(tag));
        Ok(self.epoll.add(borrow(fd), event)?)
    }

    /// Stop waiting on a fixed fd (one that would stay readable for good: DISPATCH
    /// once the manager is gone).
    pub fn unwatch(&self, fd: RawFd) {
        let _ = self.epoll.delete(borrow(fd));
    }

    /// Wait until something is ready; fills `events` and returns what, in order.
    /// `Err(EINTR)` when a signal came.
    pub fn wait(&self, events: &mut [EpollEvent], out: &mut Vec<Ready>) -> io::Result<()> {
        let n = self.epoll.wait(events, EpollTimeout::NONE)?;
        out.clear();
        out.extend(events[..n].iter().map(|e| {
            let data = e.data();
            if data & FIXED != 0 {
                Ready::Fixed(data as u32)
            } else {
                Ready::Conn(data as RawFd)
            }
        }));
        Ok(())
    }

    /// Hold `conn` (its socket is `fd`). Returns the connections the caller must park
    /// instead: the one idle longest when this makes more than [`MAX_HELD`] (with
    /// `bounded`), or `conn` itself if it cannot be watched.
    pub fn push(&self, conn: Shared, fd: RawFd, bounded: bool) -> Option<Shared> {
        let registered = lock(&conn).register_with(self.epoll.0.as_raw_fd(), fd as u64);
        if let Err(e) = registered {
            crate::log::log(
                crate::log::Level::Warning,
                format!("cannot watch an idle kept-alive connection: {e}"),
            );
            return Some(conn);
        }
        let mut list = self.list();
        list.push_back(HeldConn { conn, fd, seen: 0 });
        if !bounded || list.len() <= MAX_HELD {
            return None;
        }
        list.pop_front().map(|oldest| oldest.conn)
    }

    /// Take the connection whose socket is `fd` (reported ready), unless the watcher
    /// parked it since or it is out being served (an edge that came meanwhile).
    pub fn take(&self, fd: RawFd) -> Option<Shared> {
        let mut list = self.list();
        let i = list.iter().position(|h| h.fd == fd)?;
        list.remove(i).map(|h| h.conn)
    }

    /// Take every held connection (the thread is leaving).
    pub fn drain(&self) -> Vec<Shared> {
        self.list().drain(..).map(|h| h.conn).collect()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.list().is_empty()
    }

    /// The thread enters (`true`) or leaves its main loop's wait.
    pub fn set_polling(&self, polling: bool) {
        self.polling.store(polling, Ordering::SeqCst);
    }

    /// Whether the thread is in its main loop's wait (idle).
    pub fn is_polling(&self) -> bool {
        self.polling.load(Ordering::SeqCst)
    }

    /// Held connections that nobody watches: the thread is elsewhere (serving, or
    /// waiting for one connection's request).
    pub fn unwatched(&self) -> bool {
        !self.is_polling() && !self.is_empty()
    }

    /// For the watcher: take the connections readable now that were readable at the
    /// previous `ticks - 1` looks too (their next request waits for this thread).
    pub fn overdue(&self, ticks: u32) -> Vec<Shared> {
        let fds: Vec<RawFd> = {
            let list = self.list();
            if list.is_empty() {
                return Vec::new();
            }
            list.iter().map(|h| h.fd).collect()
        };
        let readable = readable_now(&fds);
        let mut out = Vec::new();
        self.list().retain_mut(|h| {
            // The list may have changed meanwhile: match by fd (a connection taken and
            // held again counts as seen; it is then parked a tick early, no harm).
            let Some(i) = fds.iter().position(|&fd| fd == h.fd) else {
                return true;
            };
            if !readable[i] {
                h.seen = 0;
                return true;
            }
            h.seen += 1;
            if h.seen >= ticks {
                out.push(std::sync::Arc::clone(&h.conn));
                return false;
            }
            true
        });
        out
    }
}

/// Which of `fds` have data (or end of file, or an error) to read right now.
pub fn readable_now(fds: &[RawFd]) -> Vec<bool> {
    poll_readable(fds, 0).unwrap_or_else(|_| vec![false; fds.len()])
}

/// `poll(2)` `fds` for reading, waiting up to `timeout_ms` (-1: no limit): which of
/// them are readable (or at end of file, or in error).
pub fn poll_readable(fds: &[RawFd], timeout_ms: i32) -> io::Result<Vec<bool>> {
    let mut pollfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // SAFETY: `pollfds` is a valid array of `pollfds.len()` pollfd structs.
    let n = unsafe {
        libc::poll(
            pollfds.as_mut_ptr(),
            pollfds.len() as libc::nfds_t,
            timeout_ms,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(pollfds.iter().map(|p| p.revents != 0).collect())
}
