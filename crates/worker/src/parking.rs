//! Handing idle kept-alive connections to the manager and taking back the ones whose
//! next request has arrived.
//!
//! A worker serves one connection at a time, so a web server's idle cached connection
//! (nginx `keepalive` + `fastcgi_keep_conn on`) would otherwise pin a whole worker. The
//! pool shares two SOCK_SEQPACKET socketpairs with the manager (see
//! [`pyfpm_ipc::WorkerSpec::park_fd`]): a worker idle on a kept connection that sees
//! other work waiting (or is asked to stop) *parks* it: one message on PARK carrying the
//! connection as SCM_RIGHTS. The manager watches parked connections and, when one
//! becomes readable, passes it on DISPATCH, where any idle worker of the pool takes it.
//!
//! The message format (both directions) is [`pyfpm_ipc::handoff`]'s.

use pyfpm_ipc::handoff::{self, Received};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

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
    pub fn park(&self, conn: RawFd, buffered: &[u8]) -> io::Result<()> {
        let park = self
            .park
            .as_ref()
            .ok_or_else(|| io::Error::other("parking is disabled"))?;
        handoff::send(park.as_raw_fd(), conn, buffered, false).map_err(io::Error::from)
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
