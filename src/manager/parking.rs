//! Parked connections: the manager holds a pool's idle kept-alive connections, so that
//! none of them pins a worker.
//!
//! Per pool two SOCK_SEQPACKET socketpairs (made once, kept across reloads, so every
//! generation of the pool's workers shares them):
//! - PARK: workers send an idle kept connection (one message: a marker byte, the bytes
//!   they had read from it but not decoded, and the connection as SCM_RIGHTS); the
//!   manager receives.
//! - DISPATCH: the manager sends a parked connection whose next request has arrived, in
//!   the same format; whichever idle worker of the pool reads it first serves it.
//!
//! The manager watches each parked connection for readability. End of file (the web
//! server dropped its cached connection) closes it; data moves it to DISPATCH and the
//! manager closes its copy. When DISPATCH is full (every worker busy and the socket
//! buffer full) connections wait here, in order, until it drains. At most
//! [`MAX_PARKED`] idle connections are held per pool; beyond that the oldest is closed.
//!
//! The cost per request is paid only when a connection actually changes worker: one
//! sendmsg and one recvmsg each way plus the epoll registration of the connection; a
//! worker that gets the next request of its own kept connection serves it directly.

use nix::sys::socket::{AddressFamily, MsgFlags, SockFlag, SockType, recv, socketpair};
use pyfpm_ipc::handoff::{self, Received};
use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::task::{AbortHandle, JoinSet};

/// Most idle connections parked per pool; reported in FCGI_MAX_CONNS.
pub const MAX_PARKED: u32 = 4096;

/// A connection and the bytes already read from it.
#[derive(Debug)]
struct Held {
    fd: OwnedFd,
    payload: Vec<u8>,
}

/// One pool's parking: the worker-side ends (inherited by every worker) and the task
/// that owns the manager-side ends. Dropping it closes every parked connection.
#[derive(Debug)]
pub struct Parking {
    /// PARK's send end, for the workers.
    park_worker: OwnedFd,
    /// DISPATCH's receive end, for the workers.
    dispatch_worker: OwnedFd,
    /// The task owning PARK's receive end, DISPATCH's send end and the parked
    /// connections.
    task: AbortHandle,
}

impl Drop for Parking {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Parking {
    /// Create the pool's pairs and start its task (inside the runtime). `wake` is
    /// called whenever a connection is put on DISPATCH (ondemand pools start a worker
    /// for it when none is idle).
    pub fn start(pool: &str, wake: impl Fn() + Send + 'static) -> io::Result<Parking> {
        let pair = || {
            socketpair(
                AddressFamily::Unix,
                SockType::SeqPacket,
                None,
                SockFlag::SOCK_CLOEXEC,
            )
            .map_err(io::Error::from)
        };
        let (park_worker, park_manager) = pair()?;
        let (dispatch_manager, dispatch_worker) = pair()?;
        // Only the manager's ends become non-blocking: they are separate sockets from
        // the workers' ends, whose blocking mode stays the workers' business.
        for fd in [&park_manager, &dispatch_manager] {
            set_nonblocking(fd.as_raw_fd())?;
        }
        let park = register(park_manager, Interest::READABLE)?;
        let dispatch = register(dispatch_manager, Interest::WRITABLE)?;
        let task = tokio::spawn(run(pool.to_string(), park, dispatch, wake));
        Ok(Parking {
            park_worker,
            dispatch_worker,
            task: task.abort_handle(),
        })
    }

    /// The fds a worker inherits: (PARK send end, DISPATCH receive end).
    pub fn worker_fds(&self) -> (RawFd, RawFd) {
        (
            self.park_worker.as_raw_fd(),
            self.dispatch_worker.as_raw_fd(),
        )
    }

    /// Whether a dispatched connection waits for a worker (DISPATCH readable).
    pub fn has_waiting(&self) -> bool {
        let mut p = libc::pollfd {
            fd: self.dispatch_worker.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, zero timeout.
        let n = unsafe { libc::poll(&mut p, 1, 0) };
        n > 0 && p.revents & libc::POLLIN != 0
    }

    /// A duplicate of DISPATCH's receive end, for a readiness watcher.
    pub fn dispatch_dup(&self) -> io::Result<OwnedFd> {
        self.dispatch_worker.try_clone()
    }
}

/// Register an fd the AsyncFd will own with the runtime.
fn register(fd: OwnedFd, interest: Interest) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: the AsyncFd owns `fd` and closes it only when it is dropped (or hands it
    // back with `into_inner`, which deregisters first).
    unsafe { AsyncFd::register_with_interest(fd, interest) }.map_err(io::Error::from)
}

fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl with integer arguments on an fd we own.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The pool's parking task.
async fn run(
    pool: String,
    park: AsyncFd<OwnedFd>,
    dispatch: AsyncFd<OwnedFd>,
    wake: impl Fn() + Send + 'static,
) {
    // Watchers of idle connections, by arrival order (oldest first, for the cap).
    let mut watchers: JoinSet<(u64, Option<Held>)> = JoinSet::new();
    let mut idle: BTreeMap<u64, AbortHandle> = BTreeMap::new();
    let mut next_id: u64 = 0;
    // Readable connections waiting for room on DISPATCH, oldest first.
    let mut queue: VecDeque<Held> = VecDeque::new();
    loop {
        tokio::select! {
            guard = park.readable() => {
                let Ok(mut guard) = guard else { return };
                loop {
                    match receive(park.get_ref().as_raw_fd()) {
                        Ok(Some(held)) => {
                            let id = next_id;
                            next_id += 1;
                            let handle = watchers.spawn(watch(id, held));
                            idle.insert(id, handle);
                            if idle.len() + queue.len() > MAX_PARKED as usize {
                                if let Some((_, oldest)) = idle.pop_first() {
                                    tracing::debug!(
                                        "[pool {pool}] more than {MAX_PARKED} parked \
                                         connections: the oldest idle one is closed"
                                    );
                                    oldest.abort();
                                }
                            }
                        }
                        Ok(None) => continue, // malformed message (logged)
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            guard.clear_ready();
                            break;
                        }
                        Err(e) => {
                            tracing::error!(
                                "[pool {pool}] receiving a parked connection failed: {e}"
                            );
                            guard.clear_ready();
                            break;
                        }
                    }
                }
            }
            Some(done) = watchers.join_next(), if !watchers.is_empty() => {
                // A cancelled watcher was evicted and already removed from `idle`.
                if let Ok((id, held)) = done {
                    idle.remove(&id);
                    if let Some(held) = held {
                        queue.push_back(held);
                        flush(&pool, &dispatch, &mut queue, &wake);
                    }
                }
            }
            guard = dispatch.writable(), if !queue.is_empty() => {
                let Ok(mut guard) = guard else { return };
                guard.clear_ready();
                flush(&pool, &dispatch, &mut queue, &wake);
            }
        }
    }
}

/// Send queued connections on DISPATCH until it is full or the queue is empty.
fn flush(pool: &str, dispatch: &AsyncFd<OwnedFd>, queue: &mut VecDeque<Held>, wake: &impl Fn()) {
    let mut sent = false;
    while let Some(held) = queue.front() {
        match handoff::send(
            dispatch.get_ref().as_raw_fd(),
            held.fd.as_raw_fd(),
            &held.payload,
            true,
        ) {
            Ok(()) => {
                queue.pop_front(); // the manager's copy closes here
                sent = true;
            }
            // Full: the `writable` branch retries once workers have taken some.
            Err(nix::errno::Errno::EAGAIN) => break,
            Err(e) => {
                tracing::error!("[pool {pool}] dispatching a kept connection failed: {e}");
                queue.pop_front();
            }
        }
    }
    if sent {
        wake();
    }
}

/// Receive one parked connection (non-blocking; `WouldBlock` when none is queued).
/// `Ok(None)`: a malformed message, dropped.
fn receive(fd: RawFd) -> io::Result<Option<Held>> {
    match handoff::receive(fd)? {
        Received::Conn(fd, payload) => Ok(Some(Held { fd, payload })),
        Received::WouldBlock => Err(io::ErrorKind::WouldBlock.into()),
        Received::Closed | Received::Malformed => {
            tracing::warn!("malformed message on a pool's park socket ignored");
            Ok(None)
        }
    }
}

/// Wait until a parked connection is readable: `Some` when its next request has
/// arrived (to dispatch), `None` when it is closed (end of file or error).
async fn watch(id: u64, held: Held) -> (u64, Option<Held>) {
    let Held { fd, payload } = held;
    if !payload.is_empty() {
        // Bytes of the next request are already here.
        return (id, Some(Held { fd, payload }));
    }
    let afd = match register(fd, Interest::READABLE) {
        Ok(afd) => afd,
        Err(e) => {
            tracing::warn!("cannot watch a parked connection: {e}; closed");
            return (id, None);
        }
    };
    loop {
        let Ok(mut guard) = afd.readable().await else {
            return (id, None);
        };
        let mut byte = [0u8; 1];
        match recv(
            afd.get_ref().as_raw_fd(),
            &mut byte,
            MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT,
        ) {
            Ok(0) => return (id, None),
            Ok(_) => break,
            Err(nix::errno::Errno::EAGAIN) | Err(nix::errno::Errno::EINTR) => {
                guard.clear_ready();
            }
            Err(_) => return (id, None),
        }
    }
    (
        id,
        Some(Held {
            fd: afd.into_inner(),
            payload,
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;

    /// What a worker does to park a connection.
    fn park(park_fd: RawFd, conn: RawFd) {
        handoff::send(park_fd, conn, b"", false).unwrap();
    }

    #[test]
    fn a_parked_connection_is_dispatched_once_readable_and_closed_on_eof() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            use std::sync::atomic::{AtomicUsize, Ordering};
            let woken = std::sync::Arc::new(AtomicUsize::new(0));
            let w = woken.clone();
            let parking = Parking::start("t", move || {
                w.fetch_add(1, Ordering::SeqCst);
            })
            .unwrap();
            let (park_fd, dispatch_fd) = parking.worker_fds();
            let (mut client, server) = UnixStream::pair().unwrap();
            park(park_fd, server.as_raw_fd());
            drop(server);
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            assert!(!parking.has_waiting(), "idle: not dispatched");
            client.write_all(b"next").unwrap();
            for _ in 0..100 {
                if parking.has_waiting() {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            assert!(parking.has_waiting());
            assert_eq!(woken.load(Ordering::SeqCst), 1);
            let held = receive(dispatch_fd).unwrap().unwrap();
            assert!(held.payload.is_empty());
            let mut got = [0u8; 4];
            let mut stream = UnixStream::from(held.fd);
            stream.read_exact(&mut got).unwrap();
            assert_eq!(&got, b"next");
            stream.write_all(b"ok").unwrap();
            let mut back = [0u8; 2];
            client.read_exact(&mut back).unwrap();
            assert_eq!(&back, b"ok");

            // Parked again, then the client goes away: closed, never dispatched.
            park(park_fd, stream.as_raw_fd());
            drop(stream);
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            drop(client);
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            assert!(!parking.has_waiting());
            assert_eq!(woken.load(Ordering::SeqCst), 1);
        });
    }
}
