//! One accepted FastCGI connection: the socket, the codec state, the requests being
//! received or served on it and their response state.
//!
//! A [`Conn`] is shared (as [`Shared`]) between the thread driving the connection, the
//! threads serving its requests (one unless the worker multiplexes), the Python objects
//! of each request (`wsgi.input`, `wsgi.errors`, `start_response`, `write`), and the
//! worker's connection watcher ([`crate::watcher`]). Locking rules that keep this
//! deadlock-free: **the mutex is never held while calling into Python or attaching to
//! it**, and a thread attached to Python never *waits* for it: Python-facing code
//! either takes it inside `py.detach`, or (`start_response`, which does no I/O under
//! it) tries it with [`try_lock`] and falls back to `py.detach` when it is busy.
//!
//! Reading is done by one thread at a time, which holds the *read token* (`reading`):
//! it takes the codec's read buffer out, releases the mutex for the blocking `recv`,
//! then decodes under the mutex and wakes the threads waiting for input of their own
//! request. So a thread waiting for its request's body never stops another request of
//! the same connection from writing its response. Writes happen under the mutex, each
//! one whole records, so records of concurrent requests never interleave mid-record.
//!
//! Everything here is plain Rust: blocking socket I/O (the caller releases the GIL),
//! codec events, and the encoding of STDOUT/STDERR/END_REQUEST records.

use crate::log::Level;
use bytes::{Bytes, BytesMut};
use fastcgi::{
    self as fcgi, DecodeError, Event, Params, ProtocolStatus, RecordType, Role, ServerConfig,
    ServerConnection,
};
use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// A connection and the condition variable its readers signal.
#[derive(Debug)]
pub struct ConnCell {
    conn: Mutex<Conn>,
    /// Signalled when the read token is released (new events were decoded, or the
    /// connection failed): threads waiting for input of their own request re-check.
    input: Condvar,
}

/// A connection shared between its driver, its requests' threads and Python objects,
/// and the watcher.
pub type Shared = Arc<ConnCell>;

/// Wrap a connection for sharing.
pub fn share(conn: Conn) -> Shared {
    Arc::new(ConnCell {
        conn: Mutex::new(conn),
        input: Condvar::new(),
    })
}

/// Lock a shared connection. A panic while it was locked cannot leave it in a state
/// worse than "broken", which every operation already handles, so poisoning is ignored.
pub fn lock(shared: &Shared) -> MutexGuard<'_, Conn> {
    shared
        .conn
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Lock a shared connection if nobody holds it (the watcher never waits for a lock).
pub fn try_lock(shared: &Shared) -> Option<MutexGuard<'_, Conn>> {
    match shared.conn.try_lock() {
        Ok(guard) => Some(guard),
        Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner()),
        Err(std::sync::TryLockError::WouldBlock) => None,
    }
}

/// Most iovecs one `sendmsg` takes (Linux's UIO_MAXIOV).
const IOV_MAX: usize = 1024;

/// Bytes read from the socket per `recv` call at most.
const READ_CHUNK: usize = 64 * 1024;

/// Response data is encoded and written in slices of this size, so a huge body chunk
/// from the app does not double its memory in the output buffer.
const WRITE_SLICE: usize = 256 * 1024;

/// FCGI_STDERR text is sent once this much is buffered (or on flush / request end), so
/// a traceback printed line by line reaches the web server's log as one entry.
const STDERR_FLUSH_AT: usize = 8 * 1024;

/// Sent by [`Conn::abort_response`] before it closes the connection: a record header
/// with version 0. Ending the connection inside a record is not enough: nginx 1.22
/// without `fastcgi_keep_conn` takes any end of file as the end of the response (checked
/// by tests/nginx.rs). A header no FastCGI client accepts makes it fail the response
/// ("upstream sent unsupported FastCGI protocol version: 0") instead of completing it.
const ABORT_MARKER: [u8; fcgi::HEADER_LEN] = [0; fcgi::HEADER_LEN];

/// A connected stream socket (TCP or Unix), blocking.
#[derive(Debug)]
pub struct Socket {
    fd: OwnedFd,
    /// The last read filled its whole buffer, so more may wait in the socket: an
    /// edge-triggered wait (see [`Conn::register_with`]) would not report those bytes
    /// again, so the connection is read once more before it is held.
    filled_buffer: AtomicBool,
}

impl Socket {
    /// Take ownership of an accepted connection.
    pub fn new(fd: OwnedFd) -> Self {
        Socket {
            fd,
            filled_buffer: AtomicBool::new(false),
        }
    }

    /// Read once into the spare capacity of `buf`; `Ok(0)` is end of file. With
    /// `nonblocking`, nothing to read is a `WouldBlock` error.
    fn recv_into(&self, buf: &mut BytesMut, nonblocking: bool) -> io::Result<usize> {
        let flags = if nonblocking { libc::MSG_DONTWAIT } else { 0 };
        buf.reserve(READ_CHUNK);
        let spare = buf.spare_capacity_mut();
        let len = spare.len().min(READ_CHUNK);
        loop {
            // SAFETY: `spare` is writable memory of at least `len` bytes owned by `buf`;
            // recv writes at most `len` bytes into it.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), spare.as_mut_ptr().cast(), len, flags) };
            if n >= 0 {
                let n = n as usize;
                self.filled_buffer.store(n == len, Ordering::Relaxed);
                // SAFETY: recv initialised the first `n` bytes of the spare capacity.
                unsafe { buf.set_len(buf.len() + n) };
                return Ok(n);
            }
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::WouldBlock {
                self.filled_buffer.store(false, Ordering::Relaxed);
            }
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
    }

    /// Read what is already waiting, without blocking: `Ok(None)` when nothing is.
    fn recv_now(&self, buf: &mut BytesMut) -> io::Result<Option<usize>> {
        let mut p = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, zero timeout.
        if unsafe { libc::poll(&mut p, 1, 0) } <= 0 || p.revents == 0 {
            return Ok(None);
        }
        match self.recv_into(buf, true) {
            Ok(n) => Ok(Some(n)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Write all of `parts`, in order, with as few `sendmsg` calls as the socket allows
    /// (MSG_NOSIGNAL, as [`Socket::send_all`]).
    fn send_all_vectored(&self, mut parts: &mut [IoSlice<'_>]) -> io::Result<()> {
        IoSlice::advance_slices(&mut parts, 0); // skip leading empty parts
        while !parts.is_empty() {
            // SAFETY: a msghdr naming `parts` (valid IoSlices, which are iovecs), no
            // address and no control data; sendmsg only reads them.
            let n = unsafe {
                let mut msg: libc::msghdr = std::mem::zeroed();
                msg.msg_iov = parts.as_mut_ptr().cast();
                msg.msg_iovlen = parts.len().min(IOV_MAX) as _;
                libc::sendmsg(self.fd.as_raw_fd(), &msg, libc::MSG_NOSIGNAL)
            };
            if n < 0 {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(err);
            }
            IoSlice::advance_slices(&mut parts, n as usize);
        }
        Ok(())
    }

    /// Write what the socket takes of `data` now, without blocking: the bytes written
    /// (0 when its buffer is full). MSG_NOSIGNAL as [`Socket::send_all`].
    fn send_now(&self, data: &[u8]) -> io::Result<usize> {
        loop {
            // SAFETY: `data` is a valid readable slice.
            let n = unsafe {
                libc::send(
                    self.fd.as_raw_fd(),
                    data.as_ptr().cast(),
                    data.len(),
                    libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
                )
            };
            if n >= 0 {
                return Ok(n as usize);
            }
            let err = io::Error::last_os_error();
            match err.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => return Ok(0),
                _ => return Err(err),
            }
        }
    }

    /// Write all of `data`. MSG_NOSIGNAL: a peer that went away is an EPIPE error here,
    /// never a SIGPIPE that would kill the worker.
    fn send_all(&self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            // SAFETY: `data` is a valid readable slice.
            let n = unsafe {
                libc::send(
                    self.fd.as_raw_fd(),
                    data.as_ptr().cast(),
                    data.len(),
                    libc::MSG_NOSIGNAL,
                )
            };
            if n < 0 {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(err);
            }
            data = &data[n as usize..];
        }
        Ok(())
    }
}

/// Why a connection cannot be used any more.
#[derive(Clone, Debug, thiserror::Error)]
pub enum ConnError {
    /// A socket call failed.
    #[error("{op} failed: {source}")]
    Io {
        /// `reading from` / `writing to` the web server.
        op: &'static str,
        /// The OS error.
        source: Arc<io::Error>,
    },
    /// The peer broke the FastCGI protocol.
    #[error("bad FastCGI data: {0}")]
    Decode(#[from] DecodeError),
    /// End of file while a request was still being received.
    #[error("the web server closed the connection in the middle of a request")]
    ClosedMidRequest,
    /// Nothing arrived for `request_read_timeout` while a request was incomplete.
    #[error(
        "the web server sent nothing for {}s while a request was due or incomplete \
         (request_read_timeout)",
        .0.as_secs_f64()
    )]
    ReadTimeout(std::time::Duration),
    /// The driver already closed the socket.
    #[error("the connection is closed")]
    Closed,
}

impl ConnError {
    fn io(op: &'static str, source: io::Error) -> Self {
        ConnError::Io {
            op,
            source: Arc::new(source),
        }
    }

    /// True when the web server (or its client) simply went away: a closed or reset
    /// connection. Those are routine (a browser closed a tab) and logged at info level;
    /// everything else is a warning.
    pub fn is_peer_gone(&self) -> bool {
        match self {
            ConnError::Io { source, .. } => matches!(
                source.kind(),
                io::ErrorKind::BrokenPipe
                    | io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
            ),
            ConnError::ClosedMidRequest | ConnError::Closed => true,
            ConnError::Decode(_) | ConnError::ReadTimeout(_) => false,
        }
    }

    /// The level to log this failure at.
    pub fn level(&self) -> Level {
        if self.is_peer_gone() {
            Level::Info
        } else {
            Level::Warning
        }
    }
}

/// Why an operation of a request's Python object failed.
#[derive(Clone, Debug, thiserror::Error)]
pub enum OpError {
    /// The object belongs to a request that is already finished.
    #[error("this object belongs to a request that has already finished")]
    Finished,
    /// Body bytes before `start_response` was called.
    #[error("the app sent body data before calling start_response()")]
    NotStarted,
    /// The web server sent FCGI_ABORT_REQUEST for this request.
    #[error("the web server aborted the request")]
    Aborted,
    /// The request body grew past `request_body_max` (the limit, in bytes).
    #[error("the request body exceeds request_body_max ({0} bytes)")]
    TooLarge(u64),
    /// The connection failed.
    #[error(transparent)]
    Conn(#[from] ConnError),
}

/// Response state of the current request.
#[derive(Debug, Default)]
pub struct Response {
    /// The header block from the last `start_response`, until it is sent.
    pending_headers: Option<Vec<u8>>,
    /// `start_response` has been called at least once.
    pub started: bool,
    /// The header block is on the wire: the status can no longer change.
    pub headers_sent: bool,
    /// The status code of the last `start_response` (for log lines).
    pub status: u16,
    /// A HEAD request: headers are sent, body bytes are not.
    pub head: bool,
}

/// A request received or served on a connection.
#[derive(Debug)]
pub struct Request {
    /// FastCGI request id.
    pub id: u16,
    /// Unique (per connection) and never reused: the request's Python objects hold it,
    /// and become inert once no request of the connection has it any more.
    pub token: u64,
    /// A thread took it to serve (or queued it for one): nobody else may.
    claimed: bool,
    /// The role from BEGIN_REQUEST.
    pub role: Role,
    /// FCGI_KEEP_CONN: serve more requests on this connection afterwards.
    pub keep_conn: bool,
    /// The params, once the FCGI_PARAMS stream is complete.
    pub params: Option<Params>,
    /// Received FCGI_STDIN chunks the app has not read yet.
    stdin: VecDeque<Bytes>,
    /// The empty STDIN record (end of stream) arrived.
    stdin_done: bool,
    /// How many more body bytes the app may read (CONTENT_LENGTH), `None` = to the end.
    input_remaining: Option<u64>,
    /// Received FCGI_DATA chunks (filter role) the app has not read yet.
    data: VecDeque<Bytes>,
    /// The FCGI_DATA stream ended (or the role has none).
    data_done: bool,
    /// FCGI_ABORT_REQUEST arrived.
    pub aborted: bool,
    /// FCGI_STDIN bytes received so far, for `request_body_max`.
    stdin_received: u64,
    /// The body grew past `request_body_max`: the rest is dropped and reads fail.
    pub too_large: bool,
    /// Response state.
    pub response: Response,
    /// wsgi.errors text not yet sent as FCGI_STDERR.
    stderr_buf: Vec<u8>,
    /// Some FCGI_STDERR was sent (so the stream must be closed at the end).
    stderr_used: bool,
}

impl Request {
    fn new(id: u16, token: u64, role: Role, keep_conn: bool) -> Self {
        Request {
            id,
            token,
            claimed: false,
            role,
            keep_conn,
            params: None,
            stdin: VecDeque::new(),
            // Web servers send an authorizer no FCGI_STDIN at all (the request body
            // belongs to the responder; mod_authnz_fcgi does not even send the empty
            // record), so waiting for its end would hang.
            stdin_done: role == Role::Authorizer,
            input_remaining: None,
            data: VecDeque::new(),
            // Only a filter gets a data stream; any other role has none to wait for.
            data_done: role != Role::Filter,
            aborted: false,
            stdin_received: 0,
            too_large: false,
            response: Response::default(),
            stderr_buf: Vec::new(),
            stderr_used: false,
        }
    }
}

/// The input streams of a request an app reads from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputStream {
    /// FCGI_STDIN, the request body (`wsgi.input`).
    Stdin,
    /// FCGI_DATA, the filter role's file to filter (`fcgi.data`).
    Data,
}

/// What a FastCGI management query may learn about this worker.
#[derive(Clone, Copy, Debug)]
pub struct Capacity {
    /// FCGI_MAX_CONNS: connections the pool holds at once (workers plus parked ones).
    pub max_conns: u32,
    /// FCGI_MAX_REQS: requests the pool serves at once (workers times threads).
    pub max_reqs: u32,
    /// FCGI_MPXS_CONNS: the worker serves several requests of one connection at once.
    pub mpxs_conns: bool,
}

/// One accepted connection.
#[derive(Debug)]
pub struct Conn {
    /// The socket; `None` once closed (Python objects may outlive the connection, and
    /// must not keep the socket open). Shared only with the thread holding the read
    /// token, for the duration of one `recv`.
    sock: Option<Arc<Socket>>,
    /// The peer, for log lines (`127.0.0.1:41234`, or `unix:/run/www.sock`).
    pub peer: String,
    /// Codec state machine.
    codec: ServerConnection,
    /// Encoded records waiting to be written.
    out: BytesMut,
    /// Answers for GET_VALUES.
    capacity: Capacity,
    /// The requests being received or served (at most one unless the worker
    /// multiplexes; the codec refuses more than its `max_active_requests`).
    reqs: Vec<Request>,
    /// The token of the next request.
    next_token: u64,
    /// A thread holds the read token: the codec's read buffer is out with it.
    reading: bool,
    /// Threads waiting on [`ConnCell::input`] for the read token's release.
    waiters: usize,
    /// A thread is driving the connection (waiting for its next request). When none is
    /// and requests are in service, the watcher reads for it.
    pub driver: bool,
    /// A request without FCGI_KEEP_CONN ended while others were still in service: close
    /// once they are done.
    close_when_idle: bool,
    /// The first fatal failure; once set every socket operation fails with it.
    failure: Option<ConnError>,
    /// The peer closed its sending side while a response was being written (seen by
    /// [`Conn::check_incoming`]); nothing more can arrive, so reading stops.
    peer_eof: bool,
    /// `request_body_max` in bytes (0 = no limit).
    body_max: u64,
    /// `request_read_timeout` (zero = none); applied to the socket as SO_RCVTIMEO
    /// before its first blocking read.
    read_timeout: std::time::Duration,
    /// SO_RCVTIMEO is set on the socket. Most connections never need it (their request
    /// arrives whole and is read after poll(2)), so it costs a system call only on a
    /// connection whose body is read as the app asks for it.
    read_timeout_set: bool,
    /// The epoll set (a request thread's, see [`crate::parking::Held`]) the socket is
    /// registered with, edge-triggered. It stays registered between requests, so
    /// holding the connection again costs no system call, and is removed when the
    /// connection closes or another thread's set takes it.
    registered: Option<RawFd>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        // The socket may outlive this connection elsewhere (a child process the app
        // forked): its registration must not.
        self.deregister();
    }
}

/// Unread request input held while a response streams. Past it, the socket is no longer
/// polled for FCGI_ABORT_REQUEST, so an app that ignores a huge body cannot make the
/// worker buffer all of it.
const CHECK_INCOMING_MAX_QUEUED: usize = 1 << 20;

impl Conn {
    /// Wrap an accepted socket.
    pub fn new(sock: Socket, peer: String, config: ServerConfig, capacity: Capacity) -> Self {
        Conn {
            sock: Some(Arc::new(sock)),
            peer,
            codec: ServerConnection::new(config),
            out: BytesMut::with_capacity(16 * 1024),
            capacity,
            reqs: Vec::with_capacity(1),
            next_token: 1,
            reading: false,
            waiters: 0,
            driver: true,
            close_when_idle: false,
            failure: None,
            peer_eof: false,
            body_max: 0,
            read_timeout: std::time::Duration::ZERO,
            read_timeout_set: false,
            registered: None,
        }
    }

    /// Apply the pool's request limits: `body_max` bytes of body at most (0 = none), and
    /// `read_timeout` as the longest wait for bytes of a request in progress (zero =
    /// none). Waiting for the next request on a kept connection is a poll(2), not a
    /// read, so an idle connection is never timed out by it.
    pub fn set_limits(&mut self, body_max: u64, read_timeout: std::time::Duration) {
        self.body_max = body_max;
        self.read_timeout = read_timeout;
    }

    /// Apply `request_read_timeout` to the socket, once, before a blocking read.
    fn apply_read_timeout(&mut self) {
        if self.read_timeout_set || self.read_timeout.is_zero() {
            return;
        }
        self.read_timeout_set = true;
        let read_timeout = self.read_timeout;
        if let Some(sock) = self.sock.as_ref() {
            let tv = libc::timeval {
                tv_sec: read_timeout.as_secs() as libc::time_t,
                tv_usec: read_timeout.subsec_micros() as libc::suseconds_t,
            };
            // SAFETY: a valid timeval of the size given, on a socket we own.
            let rc = unsafe {
                libc::setsockopt(
                    sock.fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_RCVTIMEO,
                    (&raw const tv).cast(),
                    std::mem::size_of::<libc::timeval>() as libc::socklen_t,
                )
            };
            if rc != 0 {
                crate::log::log(
                    Level::Warning,
                    format!(
                        "{}: cannot set request_read_timeout on the connection: {}",
                        self.peer,
                        io::Error::last_os_error()
                    ),
                );
            }
        }
    }

    /// `request_read_timeout` (zero = none).
    pub fn read_timeout(&self) -> std::time::Duration {
        self.read_timeout
    }

    /// `request_body_max` in bytes (0 = no limit).
    pub fn body_max(&self) -> u64 {
        self.body_max
    }

    /// The socket's fd, for poll(2); `None` once closed.
    pub fn raw_fd(&self) -> Option<RawFd> {
        self.sock.as_ref().map(|s| s.fd.as_raw_fd())
    }

    /// The request whose token is `token`, if it is still in service.
    pub fn request(&self, token: u64) -> Option<&Request> {
        self.reqs.iter().find(|r| r.token == token)
    }

    /// A request is arriving: begun, its params not complete yet.
    pub fn receiving(&self) -> bool {
        self.reqs.iter().any(|r| r.params.is_none())
    }

    /// No request is being received or served.
    pub fn is_idle(&self) -> bool {
        self.reqs.is_empty()
    }

    /// A thread holds the read token (it is in `recv` on the socket, or about to be).
    pub fn reading(&self) -> bool {
        self.reading
    }

    /// The connection was closed (or failed for good).
    pub fn is_closed(&self) -> bool {
        self.sock.is_none()
    }

    /// Claim the first request whose params are complete and that no thread took yet;
    /// its token.
    pub fn claim_ready(&mut self) -> Option<u64> {
        let req = self
            .reqs
            .iter_mut()
            .find(|r| !r.claimed && r.params.is_some())?;
        req.claimed = true;
        Some(req.token)
    }

    /// The first fatal failure, if any.
    pub fn failure(&self) -> Option<&ConnError> {
        self.failure.as_ref()
    }

    /// Record `err` as the connection's failure (the first one wins) and return it.
    fn fail(&mut self, err: ConnError) -> ConnError {
        self.failure.get_or_insert(err).clone()
    }

    /// Close the socket now. Later operations fail with [`ConnError::Closed`]; every
    /// request's objects become inert.
    pub fn close(&mut self) {
        self.deregister();
        if let Some(sock) = self.sock.take() {
            if self.reading {
                // Another thread is blocked in recv on it: wake it (end of file) rather
                // than leave it waiting for a peer nobody answers any more.
                // SAFETY: shutdown on a socket that is still open (the reader's Arc).
                unsafe { libc::shutdown(sock.fd.as_raw_fd(), libc::SHUT_RDWR) };
            }
        }
        self.failure.get_or_insert(ConnError::Closed);
        self.reqs.clear();
    }

    /// Register the socket with the epoll set `epfd` (edge-triggered, for reading, the
    /// event's data being `data`), unless it is already. A registration with another
    /// set is removed first. The set keeps it until [`Conn::close`] (or the
    /// connection's drop), so a connection whose socket the manager also holds (after
    /// parking) never fires in a set again.
    pub fn register_with(&mut self, epfd: RawFd, data: u64) -> io::Result<()> {
        if self.registered == Some(epfd) {
            return Ok(());
        }
        self.deregister();
        let fd = self
            .raw_fd()
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))?;
        let mut event = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLET) as u32,
            u64: data,
        };
        // SAFETY: epoll_ctl on an epoll fd and a socket fd, both open, with a valid event.
        let mut rc = unsafe { libc::epoll_ctl(epfd, libc::EPOLL_CTL_ADD, fd, &mut event) };
        if rc < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EEXIST) {
            // SAFETY: as above.
            rc = unsafe { libc::epoll_ctl(epfd, libc::EPOLL_CTL_MOD, fd, &mut event) };
        }
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        self.registered = Some(epfd);
        Ok(())
    }

    /// The driving thread stops driving the connection without holding it (its other
    /// requests are in service elsewhere; see `serve::Wait::Leave`). Its epoll
    /// registration goes too: the thread's set would report the connection's edges
    /// while nobody there watches for them, and the next thread to hold it registers it
    /// anew, which reports bytes that arrived meanwhile. Were the registration kept, the
    /// same thread holding it again later would wait for an edge it had consumed.
    pub fn leave(&mut self) {
        self.driver = false;
        self.deregister();
    }

    /// Remove the socket's epoll registration, if any.
    fn deregister(&mut self) {
        if let (Some(epfd), Some(fd)) = (self.registered.take(), self.raw_fd()) {
            // SAFETY: epoll_ctl DEL on fds that are open; the event argument is unused.
            unsafe { libc::epoll_ctl(epfd, libc::EPOLL_CTL_DEL, fd, std::ptr::null_mut()) };
        }
    }

    /// The last read filled its buffer: more bytes may wait in the socket that an
    /// edge-triggered wait would not report.
    pub fn may_have_unread(&self) -> bool {
        self.sock
            .as_ref()
            .is_some_and(|s| s.filled_buffer.load(Ordering::Relaxed))
    }

    /// True when the read buffer holds bytes not yet turned into events, or a record
    /// was returned in part (its rest is still to come): the connection is then not
    /// between records. Always false while a reader has the buffer.
    pub fn has_buffered_input(&mut self) -> bool {
        self.codec.mid_record()
    }

    /// Put bytes read from the socket by someone else (a connection handed over by the
    /// manager) in front of what the socket will deliver.
    pub fn preload(&mut self, bytes: &[u8]) {
        self.codec.read_buf().extend_from_slice(bytes);
    }

    /// Take the bytes read from the socket but not yet decoded, to hand the connection
    /// over with them.
    pub fn take_buffered(&mut self) -> Vec<u8> {
        self.codec.read_buf().split().to_vec()
    }

    /// Handle what one `recv` returned (`n` bytes, now at the end of the read buffer).
    fn received(&mut self, got: io::Result<usize>) -> Result<bool, ConnError> {
        let n = match got {
            Ok(n) => n,
            // SO_RCVTIMEO expired: request_read_timeout.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return Err(self.fail(ConnError::ReadTimeout(self.read_timeout)));
            }
            Err(e) => return Err(self.fail(ConnError::io("reading from the web server", e))),
        };
        if n == 0 {
            if self.sock.is_none() {
                return Err(self.fail(ConnError::Closed));
            }
            if let Err(e) = self.codec.receive_eof() {
                return Err(self.fail(e.into()));
            }
            if !self.reqs.is_empty() {
                return Err(self.fail(ConnError::ClosedMidRequest));
            }
            return Ok(false);
        }
        self.process_events()?;
        Ok(true)
    }

    /// While a response is written: take in whatever the web server already sent
    /// (FCGI_ABORT_REQUEST, GET_VALUES, more body), without blocking, so an abort stops
    /// a streaming response at its next chunk.
    pub fn check_incoming(&mut self) -> Result<(), ConnError> {
        if self.peer_eof || self.failure.is_some() || self.reading {
            return Ok(());
        }
        let queued: usize = self
            .reqs
            .iter()
            .flat_map(|r| r.stdin.iter().chain(r.data.iter()))
            .map(Bytes::len)
            .sum();
        if queued > CHECK_INCOMING_MAX_QUEUED {
            return Ok(());
        }
        let Some(sock) = self.sock.as_ref() else {
            return Ok(());
        };
        match sock.recv_now(self.codec.read_buf()) {
            Ok(None) => Ok(()),
            // A half-close is not an abort: some clients shut down their sending side
            // once the request is out and still read the whole response.
            Ok(Some(0)) => {
                self.peer_eof = true;
                Ok(())
            }
            Ok(Some(_)) => self.process_events(),
            Err(e) => Err(self.fail(ConnError::io("reading from the web server", e))),
        }
    }

    /// Handle every event the buffered bytes hold, then write any management answers.
    pub fn process_events(&mut self) -> Result<(), ConnError> {
        loop {
            match self.codec.poll_event() {
                Ok(Some(event)) => self.handle_event(event),
                Ok(None) => break,
                Err(e) => {
                    // Answers already encoded (GET_VALUES...) are still worth sending.
                    let _ = self.flush();
                    return Err(self.fail(e.into()));
                }
            }
        }
        self.flush()
    }

    fn handle_event(&mut self, event: Event) {
        match event {
            Event::GetValues { names } => {
                let max = self.capacity.max_conns.to_string();
                let reqs = self.capacity.max_reqs.to_string();
                let mut pairs: Vec<(&[u8], &[u8])> = Vec::new();
                for name in &names {
                    let value: &[u8] = match name.as_ref() {
                        n if n == fcgi::values::FCGI_MAX_CONNS => max.as_bytes(),
                        n if n == fcgi::values::FCGI_MAX_REQS => reqs.as_bytes(),
                        n if n == fcgi::values::FCGI_MPXS_CONNS => {
                            if self.capacity.mpxs_conns {
                                b"1"
                            } else {
                                b"0"
                            }
                        }
                        _ => continue,
                    };
                    pairs.push((name.as_ref(), value));
                }
                fcgi::encode_get_values_result(&mut self.out, pairs);
            }
            Event::UnknownType { record_type } => {
                fcgi::encode_unknown_type(&mut self.out, record_type);
            }
            Event::Reject { request_id, status } => {
                fcgi::encode_end_request(&mut self.out, request_id, 0, status);
                self.codec.end_request(request_id);
            }
            Event::BeginRequest {
                request_id,
                role,
                keep_conn,
            } => {
                // The codec refuses a BEGIN_REQUEST past max_active_requests or for an
                // id in use, so this is a new request the worker has room for.
                let token = self.next_token;
                self.next_token += 1;
                self.reqs
                    .push(Request::new(request_id, token, role, keep_conn));
            }
            Event::Params { request_id, params } => {
                if let Some(req) = self.by_id(request_id) {
                    req.params.get_or_insert(params);
                }
            }
            Event::Stdin { request_id, data } => {
                let body_max = self.body_max;
                if let Some(req) = self.by_id(request_id) {
                    req.stdin_received += data.len() as u64;
                    if body_max != 0 && req.stdin_received > body_max && !req.too_large {
                        // Past the limit nothing is kept: the rest is only drained.
                        req.too_large = true;
                        req.stdin.clear();
                    }
                    if data.is_empty() {
                        req.stdin_done = true;
                    } else if !req.stdin_done && !req.too_large {
                        req.stdin.push_back(data);
                    }
                }
            }
            Event::Data { request_id, data } => {
                if let Some(req) = self.by_id(request_id) {
                    if data.is_empty() {
                        req.data_done = true;
                    } else if !req.data_done {
                        req.data.push_back(data);
                    }
                }
            }
            Event::AbortRequest { request_id } => {
                if let Some(req) = self.by_id(request_id) {
                    req.aborted = true;
                    req.stdin_done = true;
                    req.stdin.clear();
                    req.data_done = true;
                    req.data.clear();
                }
            }
        }
    }

    /// Write the output buffer (blocking); also the rest of a response [`finish_now`]
    /// left buffered.
    pub fn flush(&mut self) -> Result<(), ConnError> {
        if self.out.is_empty() {
            return Ok(());
        }
        self.write_out(|sock, out| sock.send_all(out))
    }

    /// Write what the socket takes of the output buffer now, without blocking; the rest
    /// stays buffered. `Ok(true)` when nothing is left.
    fn flush_now(&mut self) -> Result<bool, ConnError> {
        if self.out.is_empty() {
            return Ok(true);
        }
        self.write_some_out(|sock, out| sock.send_now(out))
    }

    /// Write the output buffer, then `body` as the STDOUT records of request `id`, then
    /// `tail`, in vectored writes: the body goes from the caller's buffer to the socket
    /// with no copy here.
    fn flush_with_body(&mut self, id: u16, body: &[u8], tail: &[u8]) -> Result<(), ConnError> {
        const PADDING: [u8; 8] = [0; 8];
        let headers: Vec<[u8; fcgi::HEADER_LEN]> = body
            .chunks(fcgi::MAX_CONTENT_LEN)
            .map(|c| fcgi::record_header(RecordType::Stdout, id, c.len()).to_bytes())
            .collect();
        self.write_out(|sock, out| {
            let mut parts = Vec::with_capacity(2 + 3 * headers.len());
            parts.push(IoSlice::new(out));
            for (header, chunk) in headers.iter().zip(body.chunks(fcgi::MAX_CONTENT_LEN)) {
                parts.push(IoSlice::new(header));
                parts.push(IoSlice::new(chunk));
                parts.push(IoSlice::new(&PADDING[..fcgi::padding_len(chunk.len())]));
            }
            parts.push(IoSlice::new(tail));
            sock.send_all_vectored(&mut parts)
        })
    }

    /// Send the output buffer with `write` (and whatever else `write` sends after it),
    /// unless the connection already failed or is closed; the buffer is emptied either
    /// way, and a failed write fails the connection.
    fn write_out(
        &mut self,
        write: impl FnOnce(&Socket, &[u8]) -> io::Result<()>,
    ) -> Result<(), ConnError> {
        self.write_some_out(|sock, out| write(sock, out).map(|()| out.len()))
            .map(|_| ())
    }

    /// [`Conn::write_out`] for a `write` that may send only part of the buffer (it
    /// returns how much): the rest stays buffered. `Ok(true)` when nothing is left.
    fn write_some_out(
        &mut self,
        write: impl FnOnce(&Socket, &[u8]) -> io::Result<usize>,
    ) -> Result<bool, ConnError> {
        if let Some(err) = &self.failure {
            self.out.clear();
            return Err(err.clone());
        }
        let Some(sock) = self.sock.as_ref() else {
            self.out.clear();
            return Err(ConnError::Closed);
        };
        match write(sock, &self.out) {
            Ok(n) if n >= self.out.len() => {
                self.out.clear();
                Ok(true)
            }
            Ok(n) => {
                bytes::Buf::advance(&mut self.out, n);
                Ok(false)
            }
            Err(e) => {
                self.out.clear();
                Err(self.fail(ConnError::io("writing to the web server", e)))
            }
        }
    }

    /// The request in service with FastCGI id `id`.
    fn by_id(&mut self, id: u16) -> Option<&mut Request> {
        self.reqs.iter_mut().find(|r| r.id == id)
    }

    fn current(&mut self, token: u64) -> Result<&mut Request, OpError> {
        self.reqs
            .iter_mut()
            .find(|r| r.token == token)
            .ok_or(OpError::Finished)
    }

    /// The app is about to be called for request `token`: set its body limit and the
    /// HEAD flag.
    pub fn start_app(&mut self, token: u64, content_length: Option<u64>, head: bool) {
        if let Ok(req) = self.current(token) {
            req.input_remaining = content_length;
            req.response.head = head;
        }
    }

    /// Record the header block of a `start_response` call (replacing an unsent one).
    pub fn set_headers(&mut self, seq: u64, block: Vec<u8>, status: u16) -> Result<(), OpError> {
        let req = self.current(seq)?;
        req.response.pending_headers = Some(block);
        req.response.started = true;
        req.response.status = status;
        Ok(())
    }

    /// `(started, headers_sent)` of the request `seq`.
    pub fn response_state(&mut self, seq: u64) -> Result<(bool, bool), OpError> {
        let req = self.current(seq)?;
        Ok((req.response.started, req.response.headers_sent))
    }

    /// Send one body chunk; the headers go first, in the same record when they fit, if
    /// they are not out yet. An empty chunk sends nothing: the headers wait for real
    /// data. With `flush_now` false the bytes may stay buffered until the next flush
    /// (the caller knows more output, or END_REQUEST, follows at once).
    pub fn send_body(&mut self, seq: u64, data: &[u8], flush_now: bool) -> Result<(), OpError> {
        self.current(seq)?;
        if flush_now {
            // A streamed response stops at its next chunk after FCGI_ABORT_REQUEST. A
            // whole response in one piece is past that point: no check, no poll(2).
            self.check_incoming()?;
        }
        let req = self.current(seq)?;
        if req.aborted {
            return Err(OpError::Aborted);
        }
        if data.is_empty() {
            return Ok(());
        }
        if !req.response.headers_sent && !req.response.started {
            return Err(OpError::NotStarted);
        }
        let id = req.id;
        let body: &[u8] = if req.response.head { &[] } else { data };
        let mut rest = body;
        if !req.response.headers_sent {
            req.response.headers_sent = true;
            let block = req.response.pending_headers.take().unwrap_or_default();
            if block.len() < fcgi::MAX_CONTENT_LEN {
                // The header block and the start of the body share one record.
                let first = body.len().min(fcgi::MAX_CONTENT_LEN - block.len());
                fcgi::encode_record_parts(
                    &mut self.out,
                    RecordType::Stdout,
                    id,
                    &block,
                    &body[..first],
                );
                rest = &body[first..];
            } else {
                fcgi::encode_stream(&mut self.out, RecordType::Stdout, id, &block);
            }
        }
        for slice in rest.chunks(WRITE_SLICE) {
            if self.out.len() >= WRITE_SLICE {
                self.flush()?;
            }
            fcgi::encode_stream(&mut self.out, RecordType::Stdout, id, slice);
        }
        if flush_now {
            self.flush()?;
        }
        Ok(())
    }

    /// Whether request `seq` may send its body now, as [`Conn::send_body`] would check
    /// it: for a whole body that [`finish_request`] sends later.
    pub fn may_send(&mut self, seq: u64) -> Result<(), OpError> {
        let req = self.current(seq)?;
        if req.aborted {
            return Err(OpError::Aborted);
        }
        if !req.response.headers_sent && !req.response.started {
            return Err(OpError::NotStarted);
        }
        Ok(())
    }

    /// Send the headers if they are not out yet (the app's body was empty).
    pub fn send_headers_if_pending(&mut self, seq: u64) -> Result<(), OpError> {
        let req = self.current(seq)?;
        if req.response.headers_sent || req.aborted {
            return Ok(());
        }
        let Some(block) = req.response.pending_headers.take() else {
            return Err(OpError::NotStarted);
        };
        req.response.headers_sent = true;
        let id = req.id;
        fcgi::encode_stream(&mut self.out, RecordType::Stdout, id, &block);
        self.flush().map_err(OpError::from)
    }

    /// Replace an unsent response with `413 Content Too Large` (`request_body_max`).
    /// `false` if headers were already sent.
    pub fn send_too_large(&mut self, seq: u64) -> Result<bool, OpError> {
        let max = self.body_max;
        self.replace_unsent(seq, 413, |head| crate::http::too_large_response(max, head))
    }

    /// Replace an unsent response with a plain 500. `false` if headers were already sent
    /// (the caller must then abandon the connection instead).
    pub fn send_internal_error(&mut self, seq: u64) -> Result<bool, OpError> {
        self.replace_unsent(seq, 500, crate::http::internal_error_response)
    }

    /// Replace an unsent response with `504 Gateway Timeout` (request_terminate_timeout
    /// of `timeout` fired). `false` if headers were already sent.
    pub fn send_gateway_timeout(
        &mut self,
        seq: u64,
        timeout: std::time::Duration,
    ) -> Result<bool, OpError> {
        self.replace_unsent(seq, 504, |head| {
            crate::report::gateway_timeout_response(timeout, head)
        })
    }

    /// Send the `status` page `page(head)` instead of the app's unsent response (`head`:
    /// a HEAD request, whose page has no body). `false` if headers were already sent;
    /// `true`, with nothing sent, for an aborted request (nobody is listening).
    fn replace_unsent(
        &mut self,
        seq: u64,
        status: u16,
        page: impl FnOnce(bool) -> Vec<u8>,
    ) -> Result<bool, OpError> {
        let req = self.current(seq)?;
        if req.response.headers_sent {
            return Ok(false);
        }
        if req.aborted {
            return Ok(true);
        }
        req.response.headers_sent = true;
        req.response.pending_headers = None;
        req.response.status = status;
        let id = req.id;
        let response = page(req.response.head);
        fcgi::encode_stream(&mut self.out, RecordType::Stdout, id, &response);
        self.flush()?;
        Ok(true)
    }

    /// Last resort before the process ends (the watchdog, while the app is stuck): if
    /// nothing was sent for request `seq`, send the 504 and END_REQUEST at once, without
    /// draining the request body (the worker is about to exit, so the connection's
    /// future does not matter). `true` when the answer went out.
    pub fn answer_and_end(&mut self, seq: u64, timeout: std::time::Duration) -> bool {
        if !matches!(self.send_gateway_timeout(seq, timeout), Ok(true)) {
            return false;
        }
        let Ok(req) = self.current(seq) else {
            return false;
        };
        let id = req.id;
        fcgi::encode_end_of_stream(&mut self.out, RecordType::Stdout, id);
        fcgi::encode_end_request(&mut self.out, id, 0, ProtocolStatus::RequestComplete);
        self.flush().is_ok()
    }

    /// Abort a response whose headers are already sent: send `note` (and any buffered
    /// wsgi.errors text) as FCGI_STDERR, then a deliberately invalid record header, then
    /// close, with no END_REQUEST.
    ///
    /// Closing alone is not enough: without `fastcgi_keep_conn`, nginx takes end of file
    /// as the normal end of the response and would pass the truncated body to the client
    /// as complete. An unparsable record makes the web server fail the response (nginx
    /// logs "upstream sent unsupported FastCGI protocol version: 0", after the note), so
    /// the client sees a broken transfer instead of a fake success.
    pub fn abort_response(&mut self, seq: u64, note: &[u8]) {
        if let Ok(req) = self.current(seq) {
            let id = req.id;
            let mut text = std::mem::take(&mut req.stderr_buf);
            text.extend_from_slice(note);
            fcgi::encode_stream(&mut self.out, RecordType::Stderr, id, &text);
            self.out.extend_from_slice(&ABORT_MARKER);
            let _ = self.flush();
        }
        self.close();
    }

    /// Queue wsgi.errors text for FCGI_STDERR; sent when enough is buffered. A finished
    /// request's text is dropped (it already went to the worker's stderr).
    pub fn write_stderr(&mut self, seq: u64, text: &[u8]) -> Result<(), OpError> {
        let req = self.current(seq)?;
        req.stderr_buf.extend_from_slice(text);
        if req.stderr_buf.len() >= STDERR_FLUSH_AT {
            self.flush_stderr(seq)?;
        }
        Ok(())
    }

    /// Send buffered wsgi.errors text now.
    pub fn flush_stderr(&mut self, seq: u64) -> Result<(), OpError> {
        let req = self.current(seq)?;
        if req.stderr_buf.is_empty() || req.aborted {
            req.stderr_buf.clear();
            return Ok(());
        }
        let text = std::mem::take(&mut req.stderr_buf);
        req.stderr_used = true;
        let id = req.id;
        fcgi::encode_stream(&mut self.out, RecordType::Stderr, id, &text);
        self.flush().map_err(OpError::from)
    }
}

/// Read once from the connection and handle every complete event. `guard` is held on
/// entry and on return, but released during the `recv`, under the read token (see the
/// module docs). Returns `Ok(false)` when the peer closed the connection on a record
/// boundary with no request in service.
///
/// When another thread holds the read token, this waits until it has decoded what it
/// read and returns `Ok(true)` without reading: the caller re-checks what it waits
/// for. With `nonblocking` (the caller polled the socket), nothing to read is
/// `Ok(true)` too.
pub fn fill<'a>(
    shared: &'a Shared,
    mut guard: MutexGuard<'a, Conn>,
    nonblocking: bool,
) -> (MutexGuard<'a, Conn>, Result<bool, ConnError>) {
    if let Some(err) = &guard.failure {
        let err = err.clone();
        return (guard, Err(err));
    }
    if guard.reading {
        guard.waiters += 1;
        guard = shared
            .input
            .wait(guard)
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        guard.waiters -= 1;
        return (guard, Ok(true));
    }
    let Some(sock) = guard.sock.clone() else {
        return (guard, Err(ConnError::Closed));
    };
    if !nonblocking {
        guard.apply_read_timeout();
    }
    guard.reading = true;
    let mut buf = std::mem::take(guard.codec.read_buf());
    drop(guard);
    let got = sock.recv_into(&mut buf, nonblocking);
    drop(sock);
    let mut guard = lock(shared);
    guard.reading = false;
    *guard.codec.read_buf() = buf;
    let result = match got {
        Err(e) if nonblocking && e.kind() == io::ErrorKind::WouldBlock => Ok(true),
        got => guard.received(got),
    };
    if guard.waiters > 0 {
        shared.input.notify_all();
    }
    (guard, result)
}

/// Read request body bytes of request `token` for `wsgi.input`: up to `max` bytes
/// (`None` = all), and with `line` stop after the first `\n`. Blocks (the caller
/// released the GIL) until that much arrived or the body ended; never past the end of
/// FCGI_STDIN or past CONTENT_LENGTH. An empty result means end of body.
///
/// `stream` chooses FCGI_STDIN (`wsgi.input`) or FCGI_DATA (`fcgi.data`, which has no
/// CONTENT_LENGTH bound: it ends where the stream ends). After FCGI_ABORT_REQUEST
/// every read fails with [`OpError::Aborted`], so an app blocked waiting for body bytes
/// is woken with an exception rather than a short body.
pub fn read_input(
    shared: &Shared,
    token: u64,
    stream: InputStream,
    max: Option<usize>,
    line: bool,
) -> Result<InputChunks, OpError> {
    let mut out = InputChunks::default();
    let mut conn = lock(shared);
    loop {
        let body_max = conn.body_max;
        let req = conn.current(token)?;
        if req.aborted {
            return Err(OpError::Aborted);
        }
        if req.too_large && stream == InputStream::Stdin {
            return Err(OpError::TooLarge(body_max));
        }
        let (queue, done, remaining) = match stream {
            InputStream::Stdin => (&mut req.stdin, req.stdin_done, &mut req.input_remaining),
            InputStream::Data => (&mut req.data, req.data_done, &mut None),
        };
        // `remaining` already accounts for what earlier rounds took; `max` is for this
        // call as a whole.
        let mut want = max.map_or(u64::MAX, |m| m.saturating_sub(out.len()) as u64);
        if let Some(remaining) = *remaining {
            want = want.min(remaining);
        }
        let (taken, found_newline) = take_from_queue(queue, &mut out, want, line);
        if let Some(remaining) = remaining.as_mut() {
            *remaining -= taken;
        }
        let limit_reached = *remaining == Some(0) || max.is_some_and(|m| out.len() >= m);
        let empty = queue.is_empty();
        if found_newline || limit_reached || (empty && done) {
            return Ok(out);
        }
        if empty {
            let (guard, filled) = fill(shared, conn, false);
            conn = guard;
            if !filled? {
                // EOF with no request in service is impossible here (`current` found
                // one); `fill` reports EOF mid-request as an error.
                return Ok(out);
            }
        }
    }
}

/// Read and drop the rest of request `token`'s body, so the next request on a kept
/// connection starts at a record boundary and a closing socket has no unread data
/// (which would make the kernel send a reset and lose the response).
fn drain_input<'a>(
    shared: &'a Shared,
    token: u64,
) -> (MutexGuard<'a, Conn>, Result<(), ConnError>) {
    let mut conn = lock(shared);
    loop {
        let Ok(req) = conn.current(token) else {
            return (conn, Ok(()));
        };
        req.stdin.clear();
        req.data.clear();
        if req.stdin_done && req.data_done {
            return (conn, Ok(()));
        }
        let (guard, filled) = fill(shared, conn, false);
        conn = guard;
        match filled {
            Ok(true) => {}
            Ok(false) => return (conn, Ok(())),
            Err(e) => return (conn, Err(e)),
        }
    }
}

/// Finish request `token`: drain its body, send `body` (a whole response body the app
/// gave in one piece, not sent yet; empty for none) straight from the caller's buffer,
/// close its streams, send END_REQUEST (appStatus 0, FCGI_REQUEST_COMPLETE), all in one
/// write where the socket takes it. Returns whether the connection stays open:
/// FCGI_KEEP_CONN was set, or other requests are still in service on it (a request
/// without FCGI_KEEP_CONN then closes it once they are done). The caller closes it on
/// `Ok(false)` or an error, with the guard returned.
pub fn finish_request<'a>(
    shared: &'a Shared,
    token: u64,
    body: &[u8],
) -> (MutexGuard<'a, Conn>, Result<bool, ConnError>) {
    let (mut conn, drained) = drain_input(shared, token);
    if let Err(e) = drained {
        return (conn, Err(e));
    }
    let Some(ended) = conn.end_request(token, body) else {
        return (conn, Ok(false));
    };
    let flushed = if ended.body.is_empty() {
        conn.flush()
    } else {
        conn.flush_with_body(ended.id, ended.body, &ended.tail)
    };
    (conn, flushed.map(|()| ended.keep))
}

/// How [`finish_now`] ended a request.
#[derive(Debug)]
pub enum Ending {
    /// Sent in full: as [`finish_request`]'s result.
    Done(Result<bool, ConnError>),
    /// Ended, but part of it is still in the output buffer: send it with
    /// [`Conn::flush`]; then the connection stays open if this says so.
    Flushing(bool),
}

/// [`finish_request`] for request `token`, whose response body (if any) is all in the
/// output buffer, when that needs no waiting: its input was read to its end, so
/// nothing is drained, and the response is written without blocking, as far as the
/// socket takes it. `None` when its input is still arriving: nothing was done.
pub fn finish_now(conn: &mut Conn, token: u64) -> Option<Ending> {
    let req = conn.current(token).ok()?;
    if !(req.stdin_done && req.data_done) {
        return None;
    }
    req.stdin.clear();
    req.data.clear();
    let Some(ended) = conn.end_request(token, &[]) else {
        return Some(Ending::Done(Ok(false)));
    };
    Some(match conn.flush_now() {
        Ok(true) => Ending::Done(Ok(ended.keep)),
        Ok(false) => Ending::Flushing(ended.keep),
        Err(e) => Ending::Done(Err(e)),
    })
}

/// A request taken out of service by [`Conn::end_request`], its last records encoded
/// but not written.
struct Ended<'b> {
    /// Its FastCGI id.
    id: u16,
    /// The whole response body still to send (empty for none, HEAD or an abort).
    body: &'b [u8],
    /// The records that follow `body` (with a body; else they are in the output buffer).
    tail: BytesMut,
    /// The connection stays open.
    keep: bool,
}

impl Conn {
    /// Take request `token`, whose input was drained, out of service and encode the
    /// end of its response: `body`, a whole response body still to send, goes after
    /// the output buffer and before the returned tail. `None` when the request is no
    /// longer in service.
    fn end_request<'b>(&mut self, token: u64, body: &'b [u8]) -> Option<Ended<'b>> {
        let pos = self.reqs.iter().position(|r| r.token == token)?;
        let mut req = self.reqs.remove(pos);
        if !body.is_empty() && !req.aborted {
            // A whole response body left to send (see `Conn::may_send`): its header
            // block goes first, through the output buffer; the body (none for HEAD)
            // after it, from the caller's buffer.
            if let Some(block) = req.response.pending_headers.take() {
                fcgi::encode_stream(&mut self.out, RecordType::Stdout, req.id, &block);
            }
            req.response.headers_sent = true;
        }
        let body = if req.response.head || req.aborted {
            &[][..]
        } else {
            body
        };
        let mut tail = BytesMut::new();
        let out = if body.is_empty() {
            &mut self.out
        } else {
            &mut tail
        };
        if !req.stderr_buf.is_empty() && !req.aborted {
            fcgi::encode_stream(out, RecordType::Stderr, req.id, &req.stderr_buf);
            req.stderr_used = true;
        }
        if req.stderr_used {
            fcgi::encode_end_of_stream(out, RecordType::Stderr, req.id);
        }
        fcgi::encode_end_of_stream(out, RecordType::Stdout, req.id);
        fcgi::encode_end_request(out, req.id, 0, ProtocolStatus::RequestComplete);
        self.codec.end_request(req.id);
        if !req.keep_conn {
            self.close_when_idle = true;
        }
        Some(Ended {
            id: req.id,
            body,
            tail,
            keep: !self.reqs.is_empty() || !self.close_when_idle,
        })
    }
}

/// Body bytes read for the app: slices of the received records, not copied, until they
/// are copied once into the Python object.
#[derive(Debug, Default)]
pub struct InputChunks {
    parts: Vec<Bytes>,
    len: usize,
}

impl InputChunks {
    fn push(&mut self, part: Bytes) {
        self.len += part.len();
        self.parts.push(part);
    }

    /// Total bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// No bytes (end of body).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Copy everything into `dst`, which is exactly [`InputChunks::len`] bytes long
    /// (and may be uninitialised: every byte of it is written).
    pub fn copy_to(&self, dst: &mut [std::mem::MaybeUninit<u8>]) {
        let mut at = 0;
        for part in &self.parts {
            let out = &mut dst[at..at + part.len()];
            // SAFETY: `out` is `part.len()` writable bytes (MaybeUninit<u8> is laid out as
            // u8) that cannot overlap `part`, which is borrowed immutably.
            unsafe {
                std::ptr::copy_nonoverlapping(part.as_ptr(), out.as_mut_ptr().cast(), part.len())
            };
            at += part.len();
        }
        assert_eq!(at, dst.len(), "copy_to fills its whole destination");
    }
}

/// Move up to `want` bytes from the front of `queue` to `out`; with `line`, stop after
/// the first `\n`. Returns `(bytes moved, stopped at a newline)`.
fn take_from_queue(
    queue: &mut VecDeque<Bytes>,
    out: &mut InputChunks,
    want: u64,
    line: bool,
) -> (u64, bool) {
    let mut taken = 0u64;
    while taken < want {
        let Some(front) = queue.front_mut() else {
            break;
        };
        let mut n = front
            .len()
            .min(usize::try_from(want - taken).unwrap_or(usize::MAX));
        let mut newline = false;
        if line {
            if let Some(pos) = front[..n].iter().position(|&b| b == b'\n') {
                n = pos + 1;
                newline = true;
            }
        }
        taken += n as u64;
        if n == front.len() {
            if let Some(whole) = queue.pop_front() {
                out.push(whole);
            }
        } else {
            out.push(front.split_to(n));
        }
        if newline {
            return (taken, true);
        }
    }
    (taken, false)
}
