//! The web-server side of a FastCGI exchange, and `pyfpm request` on top of it.
//!
//! `pyfpm request` sends one request to `unix:/path` or `host:port` and prints the
//! response, the way `cgi-fcgi -bind -connect` serves php-fpm users, but with the
//! parameters a stock nginx `include fastcgi_params;` would send, so what works here works
//! behind nginx. The integration tests drive pyfpm through the same code, so the client
//! that checks the server and the one that ships are one.
//!
//! The pieces, each usable alone:
//! - [`Request`]: one request described the way an HTTP request reaches nginx; its
//!   [`params`](Request::params) are the stock `fastcgi_params` list and
//!   [`encode`](Request::encode) gives the bytes on the wire.
//! - [`Connection`]: a blocking connection (Unix or TCP) that sends bytes, decodes what
//!   comes back ([`next_event`](Connection::next_event),
//!   [`next_part`](Connection::next_part)) and collects a whole [`Response`].
//! - [`CgiResponse`] and [`ResponseReader`]: the CGI response in FCGI_STDOUT (status,
//!   headers in order, body), parsed at once or as it streams in.
//! - [`RequestArgs`] and [`run`]: the command line.
//!
//! Exit statuses of `pyfpm request`: 0 when the response status is below 500, 1 for a
//! 5xx, 2 when no usable response arrived (connection failure, timeout, protocol error, a
//! refused request), 64 for a bad command line.

use crate::exit_code;
use bytes::{Bytes, BytesMut};
use clap::Args;
use fastcgi::{
    ClientConnection, ClientEvent, DecodeError, MAX_CONTENT_LEN, ProtocolStatus, RecordType, Role,
};
use percent_encoding::percent_decode;
use std::borrow::Cow;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Ipv6Addr, Shutdown, TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

// ---- the request ---------------------------------------------------------------------

/// One HTTP request header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// Header name as given (e.g. `Content-Type`).
    pub name: String,
    /// Value, surrounding whitespace removed.
    pub value: String,
}

/// A change to the default FastCGI parameters of a [`Request`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Param {
    /// Parameter name, sent verbatim.
    pub name: String,
    /// The value; `None` removes the parameter.
    pub value: Option<Vec<u8>>,
}

/// FastCGI parameters as sent, in order.
pub type ParamList = Vec<(Vec<u8>, Vec<u8>)>;

/// One request, described the way an HTTP request reaches nginx.
#[derive(Clone, Debug)]
pub struct Request {
    /// REQUEST_METHOD.
    pub method: String,
    /// The request target as on the HTTP request line: a percent-encoded path with an
    /// optional `?query`.
    pub uri: String,
    /// HTTP request headers, in order; see [`params`](Self::params) for how they are sent.
    pub headers: Vec<Header>,
    /// Changes to the default parameters, applied in order after them.
    pub params: Vec<Param>,
    /// The body, sent as FCGI_STDIN. `None` (no body) leaves CONTENT_LENGTH empty, as
    /// nginx does for a request without one; `Some` sets it to the length.
    pub body: Option<Vec<u8>>,
    /// The role asked for in BEGIN_REQUEST.
    pub role: Role,
    /// The filter role's data stream, sent as FCGI_DATA after the STDIN stream, with
    /// FCGI_DATA_LENGTH set to its size. `None` sends no FCGI_DATA at all.
    pub filter_data: Option<Vec<u8>>,
    /// FCGI_KEEP_CONN: the application keeps the connection open after this request.
    pub keep_conn: bool,
    /// The request id (never 0, which is reserved for management records).
    pub request_id: u16,
    /// Largest FCGI_STDIN record. Web servers cut the body differently (nginx by its
    /// buffer size, Apache in 8 KiB pieces); small values split lines and multi-byte
    /// reads across records, which an application must not notice.
    pub stdin_record_len: usize,
}

/// Version string sent as SERVER_SOFTWARE, where nginx sends `nginx/<version>`.
const SERVER_SOFTWARE: &str = concat!("pyfpm-request/", env!("CARGO_PKG_VERSION"));

impl Request {
    /// A request with no headers, no body and no parameter changes: a responder
    /// request, id 1, without FCGI_KEEP_CONN.
    pub fn new(method: &str, uri: &str) -> Request {
        Request {
            method: method.into(),
            uri: uri.into(),
            headers: Vec::new(),
            params: Vec::new(),
            body: None,
            role: Role::Responder,
            filter_data: None,
            keep_conn: false,
            request_id: 1,
            stdin_record_len: MAX_CONTENT_LEN,
        }
    }

    /// A GET of `uri` (`/a/b?x=1`).
    pub fn get(uri: &str) -> Request {
        Request::new("GET", uri)
    }

    /// Builder: set the method.
    pub fn method(mut self, method: &str) -> Request {
        self.method = method.into();
        self
    }

    /// Builder: add a request header.
    pub fn header(mut self, name: &str, value: &str) -> Request {
        self.headers.push(Header {
            name: name.into(),
            value: value.into(),
        });
        self
    }

    /// Builder: set a parameter, replacing the default of that name; setting the same
    /// name again sends it once more.
    pub fn param(mut self, name: &str, value: impl AsRef<[u8]>) -> Request {
        self.params.push(Param {
            name: name.into(),
            value: Some(value.as_ref().to_vec()),
        });
        self
    }

    /// Builder: leave out a parameter entirely.
    pub fn remove_param(mut self, name: &str) -> Request {
        self.params.push(Param {
            name: name.into(),
            value: None,
        });
        self
    }

    /// Builder: set the body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Request {
        self.body = Some(body.into());
        self
    }

    /// Builder: set FCGI_KEEP_CONN.
    pub fn keep_conn(mut self, keep: bool) -> Request {
        self.keep_conn = keep;
        self
    }

    /// The FCGI_PARAMS pairs: nginx's stock `fastcgi_params`, in its order, then the
    /// headers as `HTTP_*` (nginx appends those after the configured params), then the
    /// [`params`](Self::params) changes.
    ///
    /// SCRIPT_NAME and DOCUMENT_URI are the percent-decoded path (nginx's
    /// `$fastcgi_script_name` and `$document_uri`), REQUEST_URI the target as given.
    /// `Content-Type` and `Content-Length` headers become CONTENT_TYPE and CONTENT_LENGTH
    /// (both empty when there is nothing to say, like nginx); CONTENT_LENGTH is otherwise
    /// the body's length. A repeated header is joined with ", " (with "; " for Cookie),
    /// as nginx 1.23+ does, and the first `Host` replaces the default `localhost`.
    ///
    /// Every name in [`params`](Self::params) drops the defaults of that name; the set
    /// values are then appended in order, so repeating a name sends duplicates on purpose.
    pub fn params(&self) -> ParamList {
        let (path, query) = self.uri.split_once('?').unwrap_or((&self.uri, ""));
        let decoded: Vec<u8> = percent_decode(path.as_bytes()).collect();

        let mut content_type = None;
        let mut content_length = self.body.as_ref().map(|b| b.len().to_string());
        let mut http: Vec<(String, String)> = vec![("HTTP_HOST".into(), "localhost".into())];
        let mut host_given = false;
        for h in &self.headers {
            if h.name.eq_ignore_ascii_case("content-type") {
                content_type = Some(h.value.clone());
                continue;
            }
            if h.name.eq_ignore_ascii_case("content-length") {
                content_length = Some(h.value.clone());
                continue;
            }
            let key = format!("HTTP_{}", h.name.to_ascii_uppercase().replace('-', "_"));
            if key == "HTTP_HOST" && !host_given {
                host_given = true;
                http[0].1 = h.value.clone();
                continue;
            }
            let separator = if key == "HTTP_COOKIE" { "; " } else { ", " };
            match http.iter_mut().find(|(k, _)| *k == key) {
                Some((_, v)) => {
                    v.push_str(separator);
                    v.push_str(&h.value);
                }
                None => http.push((key, h.value.clone())),
            }
        }

        let mut params: ParamList = Vec::with_capacity(20 + http.len());
        let mut push = |name: &str, value: &[u8]| params.push((name.into(), value.to_vec()));
        push("QUERY_STRING", query.as_bytes());
        push("REQUEST_METHOD", self.method.as_bytes());
        push(
            "CONTENT_TYPE",
            content_type.as_deref().unwrap_or("").as_bytes(),
        );
        push(
            "CONTENT_LENGTH",
            content_length.as_deref().unwrap_or("").as_bytes(),
        );
        push("SCRIPT_NAME", &decoded);
        push("REQUEST_URI", self.uri.as_bytes());
        push("DOCUMENT_URI", &decoded);
        push("DOCUMENT_ROOT", b"");
        push("SERVER_PROTOCOL", b"HTTP/1.1");
        push("REQUEST_SCHEME", b"http");
        push("GATEWAY_INTERFACE", b"CGI/1.1");
        push("SERVER_SOFTWARE", SERVER_SOFTWARE.as_bytes());
        push("REMOTE_ADDR", b"127.0.0.1");
        push("REMOTE_PORT", b"0");
        push("SERVER_ADDR", b"127.0.0.1");
        push("SERVER_PORT", b"80");
        push("SERVER_NAME", b"localhost");
        for (k, v) in &http {
            push(k, v.as_bytes());
        }
        if let Some(data) = &self.filter_data {
            push("FCGI_DATA_LENGTH", data.len().to_string().as_bytes());
        }

        params.retain(|(k, _)| {
            !self
                .params
                .iter()
                .any(|p| p.name.as_bytes() == k.as_slice())
        });
        for p in &self.params {
            if let Some(v) = &p.value {
                params.push((p.name.clone().into_bytes(), v.clone()));
            }
        }
        params
    }

    /// Append BEGIN_REQUEST and the whole PARAMS stream: everything before the body.
    pub fn encode_head(&self, out: &mut BytesMut) {
        fastcgi::encode_begin_request(out, self.request_id, self.role, self.keep_conn);
        let params = self.params();
        fastcgi::encode_params(
            out,
            self.request_id,
            params.iter().map(|(k, v)| (k.as_slice(), v.as_slice())),
        );
    }

    /// The whole request as nginx sends it: [`encode_head`](Self::encode_head), then
    /// the STDIN stream (the body, if any, and its end), then for a filter the DATA
    /// stream (the FastCGI specification sends it after STDIN).
    pub fn encode(&self) -> BytesMut {
        let body = self.body.as_deref().unwrap_or_default();
        let mut out = BytesMut::with_capacity(1024 + body.len() + body.len() / 8);
        self.encode_head(&mut out);
        for chunk in body.chunks(self.stdin_record_len.clamp(1, MAX_CONTENT_LEN)) {
            fastcgi::encode_stream(&mut out, RecordType::Stdin, self.request_id, chunk);
        }
        fastcgi::encode_end_of_stream(&mut out, RecordType::Stdin, self.request_id);
        if let Some(data) = &self.filter_data {
            for chunk in data.chunks(self.stdin_record_len.clamp(1, MAX_CONTENT_LEN)) {
                fastcgi::encode_stream(&mut out, RecordType::Data, self.request_id, chunk);
            }
            fastcgi::encode_end_of_stream(&mut out, RecordType::Data, self.request_id);
        }
        out
    }
}

// ---- the CGI response ----------------------------------------------------------------

/// Largest CGI header block accepted before the body starts. nginx gives up far earlier
/// (`fastcgi_buffer_size`, 4-8 KiB); this only bounds memory against a peer that never
/// ends its headers.
pub const MAX_HEAD_LEN: usize = 1024 * 1024;

/// Why a CGI response header block is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    /// No empty line within [`MAX_HEAD_LEN`] bytes.
    #[error("response headers longer than {MAX_HEAD_LEN} bytes (no empty line ends them)")]
    TooLarge,
    /// A header line without a colon or with an invalid name.
    #[error("invalid response header line {0:?}")]
    BadLine(String),
    /// A `Status:` header that does not start with a 3-digit code.
    #[error("invalid Status header {0:?} (expected e.g. \"404 Not Found\")")]
    BadStatus(String),
    /// The output ended before the empty line closing the headers.
    #[error("response ended inside the headers (no empty line after them)")]
    Incomplete,
}

/// A CGI response, as an application writes it to FCGI_STDOUT.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CgiResponse {
    /// From the `Status:` header; 200 when there is none (CGI/1.1).
    pub status: u16,
    /// The reason phrase of the `Status:` header; `OK` when there is none.
    pub reason: String,
    /// The other headers in the order sent, values trimmed. Bytes are taken as latin-1,
    /// as they are on the wire (PEP 3333 native strings).
    pub headers: Vec<(String, String)>,
    /// Everything after the empty line ending the headers.
    pub body: Vec<u8>,
}

impl CgiResponse {
    /// Parse a complete FCGI_STDOUT: header block, empty line, body.
    pub fn parse(stdout: &[u8]) -> Result<CgiResponse, HeadError> {
        let len = head_len(stdout).ok_or(HeadError::Incomplete)?;
        let mut response = CgiResponse::parse_head(&stdout[..len])?;
        response.body = stdout[len..].to_vec();
        Ok(response)
    }

    /// Parse a header block alone (as measured by [`head_len`]); the body is left empty.
    pub fn parse_head(block: &[u8]) -> Result<CgiResponse, HeadError> {
        let mut status = None;
        let mut headers = Vec::new();
        for line in block.split(|&b| b == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.is_empty() {
                break;
            }
            let text: String = line.iter().map(|&b| b as char).collect();
            let (name, value) = text
                .split_once(':')
                .ok_or_else(|| HeadError::BadLine(text.clone()))?;
            if name.is_empty() || !name.bytes().all(is_token_byte) {
                return Err(HeadError::BadLine(text.clone()));
            }
            let value = value.trim();
            if name.eq_ignore_ascii_case("status") {
                // Only the first Status counts, as in nginx; a repeat is an ordinary header.
                if status.is_none() {
                    status = Some(parse_status(value)?);
                    continue;
                }
            }
            headers.push((name.to_string(), value.to_string()));
        }
        let (status, reason) = status.unwrap_or((200, "OK".into()));
        Ok(CgiResponse {
            status,
            reason,
            headers,
            body: Vec::new(),
        })
    }

    /// Values of every header named `name` (case-insensitive), in order.
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.all(name).into_iter().next()
    }
}

/// Length of the header block at the front of `buf`, up to and including the empty line
/// that ends it; `None` while that line has not arrived. Lines may end in CRLF or LF.
pub fn head_len(buf: &[u8]) -> Option<usize> {
    let mut start = 0;
    while let Some(nl) = buf[start..].iter().position(|&b| b == b'\n') {
        let line = &buf[start..start + nl];
        if line.is_empty() || line == b"\r" {
            return Some(start + nl + 1);
        }
        start += nl + 1;
    }
    None
}

/// The code and reason phrase of a `Status:` value such as `404 Not Found`.
fn parse_status(value: &str) -> Result<(u16, String), HeadError> {
    let bad = || HeadError::BadStatus(value.to_string());
    let code = value.get(..3).ok_or_else(bad)?;
    let rest = &value[3..];
    if !code.bytes().all(|b| b.is_ascii_digit()) || !(rest.is_empty() || rest.starts_with(' ')) {
        return Err(bad());
    }
    match code.parse::<u16>() {
        Ok(c) if c >= 100 => Ok((c, rest.trim_start().to_string())),
        _ => Err(bad()),
    }
}

/// RFC 9110 token characters, the ones allowed in a header name.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// What one piece of FCGI_STDOUT produced.
#[derive(Debug, PartialEq, Eq)]
pub struct Fed<'a> {
    /// Set when this piece completed the header block: its raw bytes, empty line
    /// included.
    pub head: Option<Vec<u8>>,
    /// Body bytes to pass on (may be empty).
    pub body: Cow<'a, [u8]>,
}

/// Splits a response's FCGI_STDOUT into the CGI header block and the body as it
/// arrives, whatever the record boundaries, so that a body can be passed on without
/// holding all of it.
#[derive(Debug, Default)]
pub struct ResponseReader {
    /// Bytes received while the header block is incomplete.
    pending: Vec<u8>,
    /// The parsed header block, once complete.
    head: Option<CgiResponse>,
}

impl ResponseReader {
    /// A reader that has seen nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Take the next piece of FCGI_STDOUT.
    pub fn feed<'a>(&mut self, data: &'a [u8]) -> Result<Fed<'a>, HeadError> {
        if self.head.is_some() {
            return Ok(Fed {
                head: None,
                body: Cow::Borrowed(data),
            });
        }
        self.pending.extend_from_slice(data);
        let Some(len) = head_len(&self.pending) else {
            if self.pending.len() > MAX_HEAD_LEN {
                return Err(HeadError::TooLarge);
            }
            return Ok(Fed {
                head: None,
                body: Cow::Borrowed(&[]),
            });
        };
        if len > MAX_HEAD_LEN {
            return Err(HeadError::TooLarge);
        }
        let mut raw = std::mem::take(&mut self.pending);
        let body = raw.split_off(len);
        self.head = Some(CgiResponse::parse_head(&raw)?);
        Ok(Fed {
            head: Some(raw),
            body: Cow::Owned(body),
        })
    }

    /// The parsed header block (with an empty body), once it is complete.
    pub fn head(&self) -> Option<&CgiResponse> {
        self.head.as_ref()
    }

    /// The response status once the request has ended: `Ok(None)` when nothing at all
    /// was sent, an error when the header block never ended.
    pub fn finish(&self) -> Result<Option<u16>, HeadError> {
        match &self.head {
            Some(head) => Ok(Some(head.status)),
            None if self.pending.is_empty() => Ok(None),
            None => Err(HeadError::Incomplete),
        }
    }
}

// ---- the connection ------------------------------------------------------------------

/// Where to connect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// A Unix-domain socket.
    Unix(PathBuf),
    /// A TCP address; `host` may be a name, an IPv4 or an IPv6 address (no brackets).
    Tcp {
        /// Host name or address.
        host: String,
        /// Port.
        port: u16,
    },
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Unix(p) => write!(f, "unix:{}", p.display()),
            Target::Tcp { host, port } if host.contains(':') => write!(f, "[{host}]:{port}"),
            Target::Tcp { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

/// Parse an address: `unix:/path`, `/path`, `host:port` or `[v6]:port`.
pub fn parse_address(s: &str) -> Result<Target, String> {
    const FORMS: &str = "use unix:/path/to.sock, /path/to.sock, host:port or [v6]:port";
    if let Some(path) = s.strip_prefix("unix:") {
        if path.is_empty() {
            return Err(format!("{s:?} names no socket path; {FORMS}"));
        }
        return Ok(Target::Unix(PathBuf::from(path)));
    }
    if s.starts_with('/') {
        return Ok(Target::Unix(PathBuf::from(s)));
    }
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (host, port) = rest
            .split_once("]:")
            .ok_or_else(|| format!("{s:?}: an IPv6 address needs a port, [v6]:port"))?;
        host.parse::<Ipv6Addr>()
            .map_err(|_| format!("{s:?}: {host:?} is not an IPv6 address"))?;
        (host, port)
    } else {
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| format!("{s:?} is not an address; {FORMS}"))?;
        if host.contains(':') {
            return Err(format!(
                "{s:?}: put an IPv6 address in brackets, [{host}]:{port}"
            ));
        }
        (host, port)
    };
    if host.is_empty() {
        return Err(format!("{s:?} has no host; {FORMS}"));
    }
    let port = match port.parse::<u16>() {
        Ok(p) if p != 0 => p,
        _ => return Err(format!("{s:?}: {port:?} is not a port number (1-65535)")),
    };
    Ok(Target::Tcp {
        host: host.to_string(),
        port,
    })
}

/// A connected socket of either family.
#[derive(Debug)]
pub enum Stream {
    /// Unix-domain.
    Unix(UnixStream),
    /// TCP.
    Tcp(TcpStream),
}

impl Stream {
    /// Connect before `deadline`; a timeout is reported as `ErrorKind::TimedOut`.
    pub fn connect(target: &Target, deadline: Instant) -> io::Result<Stream> {
        match target {
            Target::Unix(path) => connect_unix(path, deadline).map(Stream::Unix),
            Target::Tcp { host, port } => {
                let mut last = None;
                for addr in (host.as_str(), *port).to_socket_addrs()? {
                    let remaining = deadline.saturating_duration_since(Instant::now());
                    if remaining.is_zero() {
                        return Err(io::ErrorKind::TimedOut.into());
                    }
                    match TcpStream::connect_timeout(&addr, remaining) {
                        Ok(s) => {
                            // Small records go out at once rather than waiting for ACKs.
                            let _ = s.set_nodelay(true);
                            return Ok(Stream::Tcp(s));
                        }
                        Err(e) => last = Some(e),
                    }
                }
                Err(last.unwrap_or_else(|| {
                    io::Error::new(io::ErrorKind::NotFound, "the host name has no address")
                }))
            }
        }
    }

    /// Another handle on the same socket (for writing from a second thread).
    pub fn try_clone(&self) -> io::Result<Stream> {
        Ok(match self {
            Stream::Unix(s) => Stream::Unix(s.try_clone()?),
            Stream::Tcp(s) => Stream::Tcp(s.try_clone()?),
        })
    }

    /// Bound every read (`None`: block as long as it takes).
    pub fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.set_read_timeout(t),
            Stream::Tcp(s) => s.set_read_timeout(t),
        }
    }

    /// Shut down one or both directions; also wakes a thread blocked on the socket.
    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.shutdown(how),
            Stream::Tcp(s) => s.shutdown(how),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.read(buf),
            Stream::Tcp(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.write(buf),
            Stream::Tcp(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.flush(),
            Stream::Tcp(s) => s.flush(),
        }
    }
}

/// Connect to a Unix socket before `deadline`. A blocking connect(2) to a socket whose
/// backlog is full waits indefinitely on Linux, so connect non-blocking and retry on
/// EAGAIN (what a full backlog returns; Unix sockets never report EINPROGRESS).
fn connect_unix(path: &std::path::Path, deadline: Instant) -> io::Result<UnixStream> {
    use nix::errno::Errno;
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, UnixAddr, connect, socket};
    use std::os::fd::AsRawFd;

    let fd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    let addr = UnixAddr::new(path)?;
    loop {
        match connect(fd.as_raw_fd(), &addr) {
            Ok(()) => break,
            Err(Errno::EINTR) => {}
            Err(Errno::EAGAIN) => {
                if Instant::now() >= deadline {
                    return Err(io::ErrorKind::TimedOut.into());
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(e.into()),
        }
    }
    let stream = UnixStream::from(fd);
    stream.set_nonblocking(false)?;
    Ok(stream)
}

/// Why reading from a [`Connection`] failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The deadline or the read timeout passed.
    #[error("timed out")]
    TimedOut,
    /// The socket failed.
    #[error(transparent)]
    Io(io::Error),
    /// The peer sent bytes that are not valid FastCGI, or closed the connection inside
    /// a record (how pyfpm aborts a response whose headers are already sent, so that a
    /// truncated body cannot pass for a complete one).
    #[error(transparent)]
    Protocol(DecodeError),
    /// The peer sent a valid record that makes no sense for the request being read.
    #[error("{0}")]
    Unexpected(String),
    /// The peer closed the connection before END_REQUEST.
    #[error("the connection closed before the end of the request")]
    Closed,
}

/// One piece of a response, from [`Connection::next_part`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResponsePart {
    /// A chunk of FCGI_STDOUT; empty at the end of the stream.
    Stdout(Bytes),
    /// A chunk of FCGI_STDERR; empty at the end of the stream.
    Stderr(Bytes),
    /// END_REQUEST: the request is over.
    End {
        /// CGI-style exit status.
        app_status: u32,
        /// Protocol status.
        protocol_status: ProtocolStatus,
    },
}

/// Everything that came back for one request, as collected by
/// [`Connection::read_response`].
#[derive(Clone, Debug, Default)]
pub struct Response {
    /// All FCGI_STDOUT bytes: the CGI response (see [`CgiResponse::parse`]).
    pub stdout: Vec<u8>,
    /// All FCGI_STDERR bytes.
    pub stderr: Vec<u8>,
    /// The sizes of the non-empty STDOUT records, in order: how the application cut its
    /// output.
    pub stdout_record_lens: Vec<usize>,
    /// Whether the STDOUT stream was closed with an empty record.
    pub stdout_closed: bool,
    /// END_REQUEST's application status, if END_REQUEST arrived.
    pub app_status: Option<u32>,
    /// END_REQUEST's protocol status, if END_REQUEST arrived.
    pub protocol_status: Option<ProtocolStatus>,
    /// Set when the response ended in bytes that are not FastCGI or inside a record;
    /// what arrived before is kept.
    pub protocol_error: Option<DecodeError>,
}

impl Response {
    /// Whether END_REQUEST arrived with FCGI_REQUEST_COMPLETE.
    pub fn completed(&self) -> bool {
        self.protocol_status == Some(ProtocolStatus::RequestComplete)
    }
}

/// How long [`Connection::request`] lets the request's writer finish once the response
/// has ended: an application that answered without reading the whole body on a kept
/// connection is still reading (and dropping) the rest of it.
pub const DRAIN_GRACE: Duration = Duration::from_secs(10);

/// A blocking web-server-side FastCGI connection: bytes go out as given, what comes back
/// is decoded into events, pieces of one request's response or a whole [`Response`].
#[derive(Debug)]
pub struct Connection {
    /// The socket.
    stream: Stream,
    /// Decoding state: bytes received but not yet returned as events.
    decoder: ClientConnection,
    /// The peer closed its end (no more bytes will come).
    eof: bool,
    /// Bound on each read, so a silent peer cannot hang the caller.
    read_timeout: Option<Duration>,
    /// Bound on all reads together (`pyfpm request --timeout` covers the whole response).
    deadline: Option<Instant>,
    /// Read buffer, kept between reads.
    buf: Vec<u8>,
}

impl Connection {
    /// Connect to `target` before `deadline`; a timeout is `ErrorKind::TimedOut`. Reads
    /// are not bounded until [`set_read_timeout`](Self::set_read_timeout) or
    /// [`set_deadline`](Self::set_deadline) says so.
    pub fn connect(target: &Target, deadline: Instant) -> io::Result<Connection> {
        Ok(Connection::new(Stream::connect(target, deadline)?))
    }

    /// Use an already connected socket.
    pub fn new(stream: Stream) -> Connection {
        Connection {
            stream,
            decoder: ClientConnection::new(),
            eof: false,
            read_timeout: None,
            deadline: None,
            buf: vec![0; 64 * 1024],
        }
    }

    /// The socket, for raw access (bytes read from it directly bypass the decoder).
    pub fn stream(&mut self) -> &mut Stream {
        &mut self.stream
    }

    /// Bound each read (`None`: no bound).
    pub fn set_read_timeout(&mut self, timeout: Option<Duration>) {
        self.read_timeout = timeout;
    }

    /// Bound all reads together: reading fails with [`ReadError::TimedOut`] from
    /// `deadline` on (`None`: no bound).
    pub fn set_deadline(&mut self, deadline: Option<Instant>) {
        self.deadline = deadline;
    }

    /// Write `bytes` now, blocking until they are all written.
    pub fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Write `bytes` from a second thread while `read` runs on this one, so that an
    /// application answering before it has read a large body cannot deadlock the
    /// exchange (both sides would otherwise block writing into full socket buffers).
    ///
    /// Once `read` returns, the writer gets `grace` to finish; a writer still blocked
    /// then is writing to a peer that will not read, and the connection is shut down to
    /// release it. Write errors are not reported: a peer that stopped reading shows up
    /// in what `read` got (a closed connection, a missing response), and an early answer
    /// makes them irrelevant. The error is from setting up the writer.
    pub fn send_while<T>(
        &mut self,
        bytes: &[u8],
        grace: Duration,
        read: impl FnOnce(&mut Connection) -> T,
    ) -> io::Result<T> {
        let mut writer = self.stream.try_clone()?;
        Ok(std::thread::scope(|scope| {
            let sender = scope.spawn(move || {
                let _ = writer.write_all(bytes);
            });
            let result = read(self);
            let until = Instant::now() + grace;
            while !sender.is_finished() && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(5));
            }
            if !sender.is_finished() {
                let _ = self.stream.shutdown(Shutdown::Both);
            }
            let _ = sender.join();
            result
        }))
    }

    /// Send `request` and collect its response ([`read_response`](Self::read_response)),
    /// writing as [`send_while`](Self::send_while) does with [`DRAIN_GRACE`].
    pub fn request(&mut self, request: &Request) -> Result<Response, ReadError> {
        let bytes = request.encode();
        self.send_while(&bytes, DRAIN_GRACE, |c| c.read_response(request.request_id))
            .map_err(ReadError::Io)?
    }

    /// The next record from the peer, whatever its request; `Ok(None)` once the peer
    /// has closed the connection between records. A connection reset counts as closing:
    /// it is how a peer that closes with unread input in its buffer ends up.
    pub fn next_event(&mut self) -> Result<Option<ClientEvent>, ReadError> {
        loop {
            if let Some(event) = self.decoder.poll_event().map_err(ReadError::Protocol)? {
                return Ok(Some(event));
            }
            if self.eof || !self.fill()? {
                self.decoder.receive_eof().map_err(ReadError::Protocol)?;
                return Ok(None);
            }
        }
    }

    /// Read once into the decoder; false at the end of the stream.
    fn fill(&mut self) -> Result<bool, ReadError> {
        let timeout = match self.deadline {
            Some(deadline) => {
                let remaining = deadline.saturating_duration_since(Instant::now());
                if remaining.is_zero() {
                    return Err(ReadError::TimedOut);
                }
                Some(self.read_timeout.map_or(remaining, |t| t.min(remaining)))
            }
            None => self.read_timeout,
        };
        self.stream
            .set_read_timeout(timeout)
            .map_err(ReadError::Io)?;
        loop {
            match self.stream.read(&mut self.buf) {
                Ok(0) => break,
                Ok(n) => {
                    self.decoder.receive(&self.buf[..n]);
                    return Ok(true);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => break,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(ReadError::TimedOut);
                }
                Err(e) => return Err(ReadError::Io(e)),
            }
        }
        self.eof = true;
        Ok(false)
    }

    /// The next piece of the response to `request_id`. Anything else the peer sends
    /// (records of another request, management records) is [`ReadError::Unexpected`],
    /// since only one request is outstanding; the connection closing first is
    /// [`ReadError::Closed`].
    pub fn next_part(&mut self, request_id: u16) -> Result<ResponsePart, ReadError> {
        let other_request = |record: &str, id: u16| {
            ReadError::Unexpected(format!(
                "{record} for request {id}, but only request {request_id} was sent"
            ))
        };
        match self.next_event()?.ok_or(ReadError::Closed)? {
            ClientEvent::Stdout { request_id: id, .. } if id != request_id => {
                Err(other_request("FCGI_STDOUT", id))
            }
            ClientEvent::Stderr { request_id: id, .. } if id != request_id => {
                Err(other_request("FCGI_STDERR", id))
            }
            ClientEvent::EndRequest { request_id: id, .. } if id != request_id => {
                Err(other_request("FCGI_END_REQUEST", id))
            }
            ClientEvent::Stdout { data, .. } => Ok(ResponsePart::Stdout(data)),
            ClientEvent::Stderr { data, .. } => Ok(ResponsePart::Stderr(data)),
            ClientEvent::EndRequest {
                app_status,
                protocol_status,
                ..
            } => Ok(ResponsePart::End {
                app_status,
                protocol_status,
            }),
            ClientEvent::GetValuesResult { .. } => Err(ReadError::Unexpected(
                "FCGI_GET_VALUES_RESULT that was not asked for".into(),
            )),
            ClientEvent::UnknownType { record_type } => Err(ReadError::Unexpected(format!(
                "it answered FCGI_UNKNOWN_TYPE to record type {record_type}"
            ))),
        }
    }

    /// Collect the response to `request_id` up to END_REQUEST. A response cut short,
    /// by the connection closing or by bytes that are not FastCGI, is returned as far as
    /// it got, without END_REQUEST and with the reason in
    /// [`Response::protocol_error`] when there is one: what arrived before is still
    /// worth seeing. Timeouts, socket errors and unexpected records are errors.
    pub fn read_response(&mut self, request_id: u16) -> Result<Response, ReadError> {
        let mut r = Response::default();
        loop {
            match self.next_part(request_id) {
                Ok(ResponsePart::Stdout(data)) if data.is_empty() => r.stdout_closed = true,
                Ok(ResponsePart::Stdout(data)) => {
                    r.stdout_record_lens.push(data.len());
                    r.stdout.extend_from_slice(&data);
                }
                Ok(ResponsePart::Stderr(data)) => r.stderr.extend_from_slice(&data),
                Ok(ResponsePart::End {
                    app_status,
                    protocol_status,
                }) => {
                    r.app_status = Some(app_status);
                    r.protocol_status = Some(protocol_status);
                    return Ok(r);
                }
                Err(ReadError::Closed) => return Ok(r),
                Err(ReadError::Protocol(e)) => {
                    r.protocol_error = Some(e);
                    return Ok(r);
                }
                Err(e) => return Err(e),
            }
        }
    }
}

// ---- pyfpm request -------------------------------------------------------------------

/// The request id `pyfpm request` uses (any non-zero id would do).
const REQUEST_ID: u16 = 1;

/// Content type sent with `--data` when no `Content-Type` header is given (what curl does).
const DEFAULT_BODY_CONTENT_TYPE: &str = "application/x-www-form-urlencoded";

/// Options of `pyfpm request`.
#[derive(Debug, Args)]
pub struct RequestArgs {
    /// Where to connect: `unix:/path/to.sock`, `/path/to.sock`, `host:port` or `[v6]:port`.
    pub address: String,

    /// Request path, with an optional `?query`.
    #[arg(default_value = "/")]
    pub path: String,

    /// Request method (default GET, or POST when a body is given with --data).
    #[arg(short = 'X', long = "method", value_name = "METHOD")]
    pub method: Option<String>,

    /// Add a request header `NAME: VALUE` (repeatable). Sent as HTTP_NAME; Content-Type and
    /// Content-Length become CONTENT_TYPE and CONTENT_LENGTH; a repeated name is joined
    /// with ", " (with "; " for Cookie), as nginx 1.23+ does.
    #[arg(short = 'H', long = "header", value_name = "NAME: VALUE", value_parser = parse_header_arg)]
    pub headers: Vec<Header>,

    /// Set a raw FastCGI parameter `NAME=VALUE` (repeatable), replacing the default of
    /// that name; `NAME` without `=` removes it. Repeat a name to send it several times.
    #[arg(short = 'p', long = "param", value_name = "NAME=VALUE", value_parser = parse_param_arg)]
    pub params: Vec<Param>,

    /// Request body: a string, `@FILE`, or `@-` for standard input. Sent as is (like curl's
    /// --data-binary), with CONTENT_LENGTH set to its size.
    #[arg(
        short = 'd',
        long = "data",
        value_name = "DATA",
        allow_hyphen_values = true
    )]
    pub data: Option<String>,

    /// FastCGI role to ask for: responder, authorizer or filter.
    #[arg(long = "role", value_name = "ROLE", default_value = "responder", value_parser = parse_role_arg)]
    pub role: Role,

    /// Filter role's data stream (FCGI_DATA): a string, `@FILE`, or `@-` for standard
    /// input, sent after the body with FCGI_DATA_LENGTH set to its size.
    #[arg(long = "filter-data", value_name = "DATA", allow_hyphen_values = true)]
    pub filter_data: Option<String>,

    /// Print the response's CGI header block before the body.
    #[arg(short = 'i', long = "include")]
    pub include: bool,

    /// Give up after this many seconds, counting the connection and the whole response.
    #[arg(long = "timeout", value_name = "SECONDS", default_value = "10", value_parser = parse_timeout)]
    pub timeout: Duration,
}

/// Parse `NAME: VALUE` for `--header`.
pub fn parse_header_arg(s: &str) -> Result<Header, String> {
    let (name, value) = s
        .split_once(':')
        .ok_or_else(|| format!("expected `NAME: VALUE`, got {s:?}"))?;
    let name = name.trim();
    if name.is_empty() || !name.bytes().all(is_token_byte) {
        return Err(format!(
            "{name:?} is not a valid header name (letters, digits and !#$%&'*+-.^_`|~ only)"
        ));
    }
    Ok(Header {
        name: name.to_string(),
        value: value.trim().to_string(),
    })
}

/// Parse `NAME=VALUE` (set) or `NAME` (remove) for `--param`.
pub fn parse_param_arg(s: &str) -> Result<Param, String> {
    let (name, value) = match s.split_once('=') {
        Some((n, v)) => (n, Some(v.as_bytes().to_vec())),
        None => (s, None),
    };
    if name.is_empty() {
        return Err(format!("expected `NAME=VALUE` or `NAME`, got {s:?}"));
    }
    Ok(Param {
        name: name.to_string(),
        value,
    })
}

/// Parse `--timeout`: positive seconds, fractions allowed.
pub fn parse_timeout(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !(secs > 0.0 && secs <= 86_400.0) {
        return Err(format!(
            "the timeout must be above 0 and at most 86400 seconds, got {s}"
        ));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// The FastCGI name of a protocol status.
pub fn protocol_status_name(status: ProtocolStatus) -> String {
    match status {
        ProtocolStatus::RequestComplete => "FCGI_REQUEST_COMPLETE".into(),
        ProtocolStatus::CantMpxConn => "FCGI_CANT_MPX_CONN".into(),
        ProtocolStatus::Overloaded => "FCGI_OVERLOADED".into(),
        ProtocolStatus::UnknownRole => "FCGI_UNKNOWN_ROLE".into(),
        ProtocolStatus::Other(n) => format!("unknown protocol status {n}"),
    }
}

/// An I/O error shown the way a sysadmin expects (`No such file or directory`, without
/// Rust's ` (os error 2)` suffix).
#[derive(Debug)]
pub struct Reason(pub io::Error);

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = self.0.to_string();
        match text.rfind(" (os error ") {
            Some(i) if text.ends_with(')') => f.write_str(&text[..i]),
            _ => f.write_str(&text),
        }
    }
}

impl std::error::Error for Reason {}

/// Why a request produced no usable response (exit status 2).
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The body could not be read.
    #[error("cannot read the request body from {from}: {source}")]
    Body {
        /// `standard input` or the file name.
        from: String,
        /// Why.
        source: Reason,
    },
    /// Connecting failed.
    #[error("cannot connect to {target}: {source}")]
    Connect {
        /// Where.
        target: Target,
        /// Why.
        source: Reason,
    },
    /// The deadline passed.
    #[error("no complete response from {target} within {}s (see --timeout)", .timeout.as_secs_f64())]
    Timeout {
        /// Where.
        target: Target,
        /// The --timeout value.
        timeout: Duration,
    },
    /// Reading from the connection failed.
    #[error("reading the response from {target} failed: {source}")]
    Read {
        /// Where.
        target: Target,
        /// Why.
        source: Reason,
    },
    /// The peer sent bytes that are not valid FastCGI.
    #[error("{target} broke the FastCGI protocol: {source}")]
    Protocol {
        /// Where.
        target: Target,
        /// What was wrong.
        source: DecodeError,
    },
    /// The peer sent a valid record that makes no sense here.
    #[error("{target} broke the FastCGI protocol: {what}")]
    Unexpected {
        /// Where.
        target: Target,
        /// What arrived.
        what: String,
    },
    /// The CGI header block was invalid.
    #[error("{target} sent an invalid response: {source}")]
    Head {
        /// Where.
        target: Target,
        /// What was wrong.
        source: HeadError,
    },
    /// END_REQUEST came with no output at all.
    #[error("{target} ended the request without sending a response")]
    NoResponse {
        /// Where.
        target: Target,
    },
    /// END_REQUEST with a protocol status other than REQUEST_COMPLETE.
    #[error("{target} rejected the request: {}", protocol_status_name(*.status))]
    Rejected {
        /// Where.
        target: Target,
        /// The protocol status.
        status: ProtocolStatus,
    },
    /// The connection ended before END_REQUEST.
    #[error("{target} closed the connection before the end of the request")]
    Closed {
        /// Where.
        target: Target,
    },
    /// Writing the response to our standard output failed (other than a closed pipe).
    #[error("cannot write the response to standard output: {0}")]
    Output(Reason),
}

impl RequestError {
    /// The error for a failed read from `target` under `--timeout timeout`.
    fn from_read(e: ReadError, target: &Target, timeout: Duration) -> RequestError {
        let target = target.clone();
        match e {
            ReadError::TimedOut => RequestError::Timeout { target, timeout },
            ReadError::Io(e) => RequestError::Read {
                target,
                source: Reason(e),
            },
            ReadError::Protocol(source) => RequestError::Protocol { target, source },
            ReadError::Unexpected(what) => RequestError::Unexpected { target, what },
            ReadError::Closed => RequestError::Closed { target },
        }
    }
}

/// Run the request; returns the exit status.
pub fn run(args: &RequestArgs) -> i32 {
    let target = match parse_address(&args.address) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("pyfpm request: {e}");
            return exit_code::USAGE;
        }
    };
    let stdout = io::stdout();
    let stderr = io::stderr();
    match execute(args, &target, &mut stdout.lock(), &mut stderr.lock()) {
        Ok(status) if status >= 500 => 1,
        Ok(_) => 0,
        Err(e) => {
            eprintln!("pyfpm request: {e}");
            2
        }
    }
}

/// Parse `--role`.
pub fn parse_role_arg(s: &str) -> Result<Role, String> {
    match s.to_ascii_lowercase().as_str() {
        "responder" => Ok(Role::Responder),
        "authorizer" => Ok(Role::Authorizer),
        "filter" => Ok(Role::Filter),
        _ => Err(format!(
            "unknown role '{s}' (use responder, authorizer or filter)"
        )),
    }
}

/// Read the `--data` or `--filter-data` argument.
fn load_body(data: &str) -> Result<Vec<u8>, RequestError> {
    match data.strip_prefix('@') {
        Some("-") => {
            let mut body = Vec::new();
            io::stdin()
                .lock()
                .read_to_end(&mut body)
                .map_err(|e| RequestError::Body {
                    from: "standard input".into(),
                    source: Reason(e),
                })?;
            Ok(body)
        }
        Some(file) => std::fs::read(file).map_err(|e| RequestError::Body {
            from: file.to_string(),
            source: Reason(e),
        }),
        None => Ok(data.as_bytes().to_vec()),
    }
}

/// The request the command line describes, with `body` as read from `--data`.
pub fn build_request(args: &RequestArgs, body: Option<Vec<u8>>) -> Request {
    let method = args
        .method
        .as_deref()
        .unwrap_or(if body.is_some() { "POST" } else { "GET" });
    let mut request = Request::new(method, &args.path);
    request.headers = args.headers.clone();
    if body.is_some()
        && !args
            .headers
            .iter()
            .any(|h| h.name.eq_ignore_ascii_case("content-type"))
    {
        request = request.header("Content-Type", DEFAULT_BODY_CONTENT_TYPE);
    }
    request.params = args.params.clone();
    request.body = body;
    request.role = args.role;
    request.request_id = REQUEST_ID;
    request
}

/// Send the request and copy the response to `out` (body, and the header block first with
/// `--include`) and FCGI_STDERR to `err`. Returns the response status.
pub fn execute(
    args: &RequestArgs,
    target: &Target,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<u16, RequestError> {
    // Reading the body (maybe from a slow pipe) is not part of the --timeout budget.
    let body = args.data.as_deref().map(load_body).transpose()?;
    let mut filter_data = args.filter_data.as_deref().map(load_body).transpose()?;
    // A filter always gets a data stream (maybe empty): an application reading it to
    // the end would otherwise wait for one that never comes.
    if args.role == Role::Filter && filter_data.is_none() {
        filter_data = Some(Vec::new());
    }
    let deadline = Instant::now() + args.timeout;
    let mut request = build_request(args, body);
    request.filter_data = filter_data;
    let bytes = request.encode();

    let connect_error = |e: io::Error| match e.kind() {
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => RequestError::Timeout {
            target: target.clone(),
            timeout: args.timeout,
        },
        _ => RequestError::Connect {
            target: target.clone(),
            source: Reason(e),
        },
    };
    let mut conn = Connection::connect(target, deadline).map_err(connect_error)?;
    conn.set_deadline(Some(deadline));
    // No grace for the writer: after this one request the connection is of no use.
    conn.send_while(&bytes, Duration::ZERO, |conn| {
        relay_response(conn, target, args, out, err)
    })
    .map_err(connect_error)?
}

/// Read the response, streaming its output as it arrives.
fn relay_response(
    conn: &mut Connection,
    target: &Target,
    args: &RequestArgs,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<u16, RequestError> {
    let mut reader = ResponseReader::new();
    let mut output = Output { out, open: true };
    let head_error = |source| RequestError::Head {
        target: target.clone(),
        source,
    };
    loop {
        let part = conn
            .next_part(REQUEST_ID)
            .map_err(|e| RequestError::from_read(e, target, args.timeout))?;
        match part {
            ResponsePart::Stdout(data) => {
                let fed = reader.feed(&data).map_err(head_error)?;
                if args.include {
                    if let Some(raw) = &fed.head {
                        output.write(raw)?;
                    }
                }
                output.write(&fed.body)?;
            }
            ResponsePart::Stderr(data) => {
                // The application's error output is advisory; losing it must not change
                // the outcome of the request.
                let _ = err.write_all(&data).and_then(|()| err.flush());
            }
            ResponsePart::End {
                protocol_status, ..
            } => {
                if protocol_status != ProtocolStatus::RequestComplete {
                    return Err(RequestError::Rejected {
                        target: target.clone(),
                        status: protocol_status,
                    });
                }
                return match reader.finish() {
                    Ok(Some(status)) => Ok(status),
                    Ok(None) => Err(RequestError::NoResponse {
                        target: target.clone(),
                    }),
                    Err(source) => Err(head_error(source)),
                };
            }
        }
    }
}

/// Standard output that tolerates its reader going away (`pyfpm request ... | head`): the
/// response is still read to the end so the exit status reflects it.
struct Output<'w> {
    out: &'w mut dyn Write,
    open: bool,
}

impl Output<'_> {
    fn write(&mut self, data: &[u8]) -> Result<(), RequestError> {
        if !self.open || data.is_empty() {
            return Ok(());
        }
        // Flushed per piece so that streamed responses show up as they are produced.
        match self.out.write_all(data).and_then(|()| self.out.flush()) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
                self.open = false;
                Ok(())
            }
            Err(e) => Err(RequestError::Output(Reason(e))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get<'a>(params: &'a ParamList, name: &str) -> Vec<&'a [u8]> {
        params
            .iter()
            .filter(|(k, _)| k == name.as_bytes())
            .map(|(_, v)| v.as_slice())
            .collect()
    }

    fn header(s: &str) -> Header {
        parse_header_arg(s).unwrap()
    }

    fn param(s: &str) -> Param {
        parse_param_arg(s).unwrap()
    }

    fn args(path: &str) -> RequestArgs {
        RequestArgs {
            address: "/x.sock".into(),
            path: path.into(),
            method: None,
            headers: Vec::new(),
            params: Vec::new(),
            data: None,
            role: Role::Responder,
            filter_data: None,
            include: false,
            timeout: Duration::from_secs(10),
        }
    }

    #[test]
    fn addresses_in_every_form() {
        assert_eq!(
            parse_address("unix:/run/pyfpm/www.sock"),
            Ok(Target::Unix("/run/pyfpm/www.sock".into()))
        );
        assert_eq!(
            parse_address("unix:rel.sock"),
            Ok(Target::Unix("rel.sock".into()))
        );
        assert_eq!(
            parse_address("/tmp/a.sock"),
            Ok(Target::Unix("/tmp/a.sock".into()))
        );
        assert_eq!(
            parse_address("127.0.0.1:9000"),
            Ok(Target::Tcp {
                host: "127.0.0.1".into(),
                port: 9000
            })
        );
        assert_eq!(
            parse_address("localhost:80"),
            Ok(Target::Tcp {
                host: "localhost".into(),
                port: 80
            })
        );
        let v6 = parse_address("[::1]:9000").unwrap();
        assert_eq!(
            v6,
            Target::Tcp {
                host: "::1".into(),
                port: 9000
            }
        );
        assert_eq!(v6.to_string(), "[::1]:9000");
        assert_eq!(
            parse_address("unix:/x.sock").unwrap().to_string(),
            "unix:/x.sock"
        );
    }

    #[test]
    fn bad_addresses_are_explained() {
        for bad in [
            "unix:",
            "www.sock",
            "host:",
            ":9000",
            "host:0",
            "host:70000",
            "::1:9000",
            "[::1]",
            "[nothost]:80",
        ] {
            let e = parse_address(bad).expect_err(bad);
            assert!(e.contains(bad), "{bad}: {e}");
        }
        assert!(
            parse_address("::1:9000")
                .unwrap_err()
                .contains("[::1]:9000")
        );
    }

    #[test]
    fn header_and_param_arguments() {
        assert_eq!(
            header("X-Thing:  a: b  "),
            Header {
                name: "X-Thing".into(),
                value: "a: b".into()
            }
        );
        assert!(parse_header_arg("no colon").is_err());
        assert!(parse_header_arg("bad name: x").is_err());
        assert!(parse_header_arg(": x").is_err());
        assert_eq!(
            param("A=b=c"),
            Param {
                name: "A".into(),
                value: Some(b"b=c".to_vec())
            }
        );
        assert_eq!(param("A").value, None);
        assert_eq!(param("A=").value, Some(Vec::new()));
        assert!(parse_param_arg("=x").is_err());
    }

    #[test]
    fn timeouts() {
        assert_eq!(parse_timeout("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_timeout("0.25"), Ok(Duration::from_millis(250)));
        for bad in ["0", "-1", "nan", "inf", "abc", "100000"] {
            assert!(parse_timeout(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn default_params_mirror_nginx_fastcgi_params() {
        let p = Request::get("/a%20b/c?x=1&y=%41").params();
        let names: Vec<&[u8]> = p.iter().map(|(k, _)| k.as_slice()).collect();
        let expected: Vec<&[u8]> = vec![
            b"QUERY_STRING",
            b"REQUEST_METHOD",
            b"CONTENT_TYPE",
            b"CONTENT_LENGTH",
            b"SCRIPT_NAME",
            b"REQUEST_URI",
            b"DOCUMENT_URI",
            b"DOCUMENT_ROOT",
            b"SERVER_PROTOCOL",
            b"REQUEST_SCHEME",
            b"GATEWAY_INTERFACE",
            b"SERVER_SOFTWARE",
            b"REMOTE_ADDR",
            b"REMOTE_PORT",
            b"SERVER_ADDR",
            b"SERVER_PORT",
            b"SERVER_NAME",
            b"HTTP_HOST",
        ];
        assert_eq!(names, expected);
        assert_eq!(get(&p, "QUERY_STRING"), [b"x=1&y=%41"]);
        assert_eq!(get(&p, "REQUEST_METHOD"), [b"GET"]);
        assert_eq!(get(&p, "CONTENT_TYPE"), [b""]);
        assert_eq!(get(&p, "CONTENT_LENGTH"), [b""]);
        assert_eq!(get(&p, "SCRIPT_NAME"), [b"/a b/c"]);
        assert_eq!(get(&p, "DOCUMENT_URI"), [b"/a b/c"]);
        assert_eq!(get(&p, "REQUEST_URI"), [b"/a%20b/c?x=1&y=%41"]);
        assert_eq!(get(&p, "SERVER_PROTOCOL"), [b"HTTP/1.1"]);
        assert_eq!(get(&p, "HTTP_HOST"), [b"localhost"]);
        assert!(get(&p, "SERVER_SOFTWARE")[0].starts_with(b"pyfpm-request/"));
    }

    #[test]
    fn a_body_sets_length_and_the_command_line_a_default_type() {
        let p = build_request(&args("/echo"), Some(Vec::new())).params();
        assert_eq!(get(&p, "REQUEST_METHOD"), [b"POST"]);
        assert_eq!(get(&p, "CONTENT_LENGTH"), [b"0"]);
        assert_eq!(
            get(&p, "CONTENT_TYPE"),
            [DEFAULT_BODY_CONTENT_TYPE.as_bytes()]
        );
        let mut a = args("/");
        a.method = Some("PUT".into());
        a.headers = vec![
            header("content-type: text/plain"),
            header("Content-Length: 99"),
        ];
        let p = build_request(&a, Some(b"hello".to_vec())).params();
        assert_eq!(get(&p, "REQUEST_METHOD"), [b"PUT"]);
        assert_eq!(get(&p, "CONTENT_TYPE"), [b"text/plain"]);
        assert_eq!(get(&p, "CONTENT_LENGTH"), [b"99"]);
        assert!(get(&p, "HTTP_CONTENT_TYPE").is_empty());
        assert!(get(&p, "HTTP_CONTENT_LENGTH").is_empty());
        // The library itself adds no content type: nginx sends the client's, or nothing.
        let p = Request::get("/").body(b"x".to_vec()).params();
        assert_eq!(get(&p, "CONTENT_LENGTH"), [b"1"]);
        assert_eq!(get(&p, "CONTENT_TYPE"), [b""]);
    }

    #[test]
    fn headers_become_http_params_and_repeats_are_joined() {
        let p = Request::get("/")
            .header("Host", "example.org")
            .header("X-Forwarded-For", "10.0.0.1")
            .header("Accept", "text/html")
            .header("x-forwarded-for", "10.0.0.2")
            .header("Cookie", "a=1")
            .header("Cookie", "b=2")
            .params();
        assert_eq!(get(&p, "HTTP_HOST"), [b"example.org"]);
        assert_eq!(get(&p, "HTTP_X_FORWARDED_FOR"), [b"10.0.0.1, 10.0.0.2"]);
        assert_eq!(get(&p, "HTTP_ACCEPT"), [b"text/html"]);
        assert_eq!(get(&p, "HTTP_COOKIE"), [b"a=1; b=2"]);
    }

    #[test]
    fn params_override_remove_and_repeat() {
        let mut a = args("/x");
        a.params = vec![
            param("SCRIPT_NAME="),
            param("CONTENT_LENGTH"),
            param("X_DUP=1"),
            param("X_DUP=2"),
            param("HTTPS=on"),
        ];
        let p = build_request(&a, None).params();
        assert_eq!(get(&p, "SCRIPT_NAME"), [b""]);
        assert!(get(&p, "CONTENT_LENGTH").is_empty());
        assert_eq!(get(&p, "X_DUP"), [b"1", b"2"]);
        assert_eq!(get(&p, "HTTPS"), [b"on"]);
        assert_eq!(get(&p, "REQUEST_URI"), [b"/x"]);
    }

    #[test]
    fn percent_decoding_keeps_bad_escapes() {
        let script_name = |uri: &str| {
            let p = Request::get(uri).params();
            get(&p, "SCRIPT_NAME")[0].to_vec()
        };
        assert_eq!(script_name("/caf%C3%A9"), "/café".as_bytes());
        assert_eq!(script_name("%zz%4"), b"%zz%4");
        assert_eq!(script_name("%"), b"%");
        assert_eq!(script_name("a%2fb%2F"), b"a/b/");
    }

    #[test]
    fn encoding_cuts_the_body_into_stdin_records() {
        let mut req = Request::get("/")
            .body(b"0123456789".to_vec())
            .keep_conn(true);
        req.request_id = 7;
        req.stdin_record_len = 4;
        let wire = req.encode();
        let mut head = BytesMut::new();
        req.encode_head(&mut head);
        assert!(wire.starts_with(&head));
        let mut server = fastcgi::ServerConnection::new(fastcgi::ServerConfig::default());
        server.receive(&wire);
        let mut stdin = Vec::new();
        while let Some(event) = server.poll_event().unwrap() {
            match event {
                fastcgi::Event::BeginRequest {
                    request_id,
                    role,
                    keep_conn,
                } => assert_eq!((request_id, role, keep_conn), (7, Role::Responder, true)),
                fastcgi::Event::Stdin { data, .. } => stdin.push(data.to_vec()),
                _ => {}
            }
        }
        assert_eq!(stdin, [&b"0123"[..], b"4567", b"89", b""]);
    }

    #[test]
    fn cgi_response_parsing() {
        let raw = b"Content-Type: text/plain\r\nStatus: 404 Not Found\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n\r\nbody\r\n\r\n";
        let r = CgiResponse::parse(raw).unwrap();
        assert_eq!((r.status, r.reason.as_str()), (404, "Not Found"));
        assert_eq!(r.headers.len(), 3);
        assert_eq!(r.headers[1], ("Set-Cookie".into(), "a=1".into()));
        assert_eq!(r.all("set-cookie"), ["a=1", "b=2"]);
        assert_eq!(r.header("content-type"), Some("text/plain"));
        assert_eq!(r.body, b"body\r\n\r\n");

        let r = CgiResponse::parse(b"X: y\n\n").unwrap();
        assert_eq!((r.status, r.reason.as_str()), (200, "OK"));
        assert_eq!(CgiResponse::parse(b"status:503\n\n").unwrap().status, 503);
        assert_eq!(CgiResponse::parse(b"\r\n").unwrap().headers, vec![]);
        assert_eq!(CgiResponse::parse(b"A: b\r\n"), Err(HeadError::Incomplete));
        assert_eq!(head_len(b"A: b\r\nC: d\r\n"), None);
        assert_eq!(head_len(b"A: b\n\nbody\n\n"), Some(6));

        assert!(matches!(
            CgiResponse::parse(b"junk\n\n"),
            Err(HeadError::BadLine(_))
        ));
        assert!(matches!(
            CgiResponse::parse(b"bad name: x\n\n"),
            Err(HeadError::BadLine(_))
        ));
        for bad in ["Status: OK", "Status: 20", "Status: 2000", "Status: 099 x"] {
            let block = format!("{bad}\r\n\r\n");
            assert!(
                matches!(
                    CgiResponse::parse(block.as_bytes()),
                    Err(HeadError::BadStatus(_))
                ),
                "{bad}"
            );
        }
    }

    /// Feed `stdout` to a reader in pieces cut at the given points; collect head and body.
    fn split_feed(stdout: &[u8], cuts: &[usize]) -> (Option<u16>, Vec<u8>, Vec<u8>) {
        let mut r = ResponseReader::new();
        let mut raw_head = Vec::new();
        let mut body = Vec::new();
        let mut start = 0;
        for &cut in cuts.iter().chain(std::iter::once(&stdout.len())) {
            let fed = r.feed(&stdout[start..cut]).unwrap();
            if let Some(raw) = fed.head {
                assert!(raw_head.is_empty(), "head reported twice");
                raw_head = raw;
            }
            body.extend_from_slice(&fed.body);
            start = cut;
        }
        (r.finish().unwrap(), raw_head, body)
    }

    #[test]
    fn response_split_at_every_point() {
        let head = b"Status: 201 Created\r\nContent-Type: text/plain\r\n\r\n";
        let mut stdout = head.to_vec();
        stdout.extend_from_slice(b"line one\r\n\r\nline two\n");
        for i in 0..=stdout.len() {
            for j in i..=stdout.len() {
                let (status, raw, body) = split_feed(&stdout, &[i, j]);
                assert_eq!(status, Some(201), "cut at {i},{j}");
                assert_eq!(raw, head, "cut at {i},{j}");
                assert_eq!(body, &stdout[head.len()..], "cut at {i},{j}");
            }
        }
    }

    #[test]
    fn reader_outcomes_without_a_full_head() {
        let r = ResponseReader::new();
        assert_eq!(r.finish(), Ok(None));

        let mut r = ResponseReader::new();
        r.feed(b"Content-Type: text/plain\r\n").unwrap();
        assert_eq!(r.head(), None);
        assert_eq!(r.finish(), Err(HeadError::Incomplete));

        let mut r = ResponseReader::new();
        let chunk = vec![b'x'; 64 * 1024];
        let mut result = Ok(());
        for _ in 0..(MAX_HEAD_LEN / chunk.len() + 2) {
            if let Err(e) = r.feed(&chunk) {
                result = Err(e);
                break;
            }
        }
        assert_eq!(result, Err(HeadError::TooLarge));
    }

    #[test]
    fn os_error_suffix_is_dropped() {
        let e = io::Error::from_raw_os_error(2);
        assert_eq!(Reason(e).to_string(), "No such file or directory");
        let e = io::Error::other("plain message");
        assert_eq!(Reason(e).to_string(), "plain message");
    }

    #[test]
    fn error_messages_name_the_target() {
        let target = parse_address("unix:/run/pyfpm/www.sock").unwrap();
        let e = RequestError::Connect {
            target: target.clone(),
            source: Reason(io::Error::from_raw_os_error(2)),
        };
        assert_eq!(
            e.to_string(),
            "cannot connect to unix:/run/pyfpm/www.sock: No such file or directory"
        );
        let e = RequestError::Rejected {
            target: target.clone(),
            status: ProtocolStatus::Overloaded,
        };
        assert!(e.to_string().ends_with("FCGI_OVERLOADED"), "{e}");
        let e = RequestError::from_read(ReadError::TimedOut, &target, Duration::from_millis(500));
        assert_eq!(
            e.to_string(),
            "no complete response from unix:/run/pyfpm/www.sock within 0.5s (see --timeout)"
        );
    }
}
