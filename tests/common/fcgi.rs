//! A FastCGI test client built on the codec's client side: it sends what nginx sends
//! (BEGIN_REQUEST, the stock `fastcgi_params`, HTTP_* headers, STDIN) and collects
//! STDOUT/STDERR/END_REQUEST, then parses the CGI response. It can also send raw bytes,
//! for the malformed-input tests.

use bytes::BytesMut;
use fastcgi::{
    ClientConnection, ClientEvent, ProtocolStatus, RecordType, Role, encode_begin_request,
    encode_end_of_stream, encode_params, encode_stream,
};
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// How long any single read may block before a test fails instead of hanging.
pub const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// Where a pool listens.
#[derive(Clone, Debug)]
pub enum Addr {
    /// A Unix-domain socket.
    Unix(PathBuf),
    /// A loopback TCP address.
    Tcp(SocketAddr),
}

impl std::fmt::Display for Addr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Addr::Unix(p) => write!(f, "unix:{}", p.display()),
            Addr::Tcp(a) => write!(f, "{a}"),
        }
    }
}

/// A stream of either kind.
pub enum Stream {
    /// Unix-domain.
    Unix(UnixStream),
    /// TCP.
    Tcp(TcpStream),
}

impl Stream {
    fn try_clone(&self) -> std::io::Result<Stream> {
        Ok(match self {
            Stream::Unix(s) => Stream::Unix(s.try_clone()?),
            Stream::Tcp(s) => Stream::Tcp(s.try_clone()?),
        })
    }

    fn set_read_timeout(&self, t: Option<Duration>) -> std::io::Result<()> {
        match self {
            Stream::Unix(s) => s.set_read_timeout(t),
            Stream::Tcp(s) => s.set_read_timeout(t),
        }
    }

    fn shutdown(&self, how: Shutdown) -> std::io::Result<()> {
        match self {
            Stream::Unix(s) => s.shutdown(how),
            Stream::Tcp(s) => s.shutdown(how),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Unix(s) => s.read(buf),
            Stream::Tcp(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Unix(s) => s.write(buf),
            Stream::Tcp(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// One request, described the way nginx would describe it.
#[derive(Clone, Debug)]
pub struct Request {
    /// REQUEST_METHOD.
    pub method: String,
    /// The decoded path as raw bytes (`$fastcgi_script_name`, `$document_uri`).
    pub path: Vec<u8>,
    /// QUERY_STRING (without `?`).
    pub query: String,
    /// HTTP request headers, sent as HTTP_* params in this order (duplicates kept).
    pub headers: Vec<(String, String)>,
    /// Request body, sent as FCGI_STDIN.
    pub body: Vec<u8>,
    /// CONTENT_LENGTH: `Some(true)` = the body length, `Some(false)` = omitted entirely,
    /// `None` = like nginx: the length when there is a body, else an empty string.
    pub content_length: Option<bool>,
    /// Params appended after the stock ones (raw bytes).
    pub extra_params: Vec<(Vec<u8>, Vec<u8>)>,
    /// The role in BEGIN_REQUEST.
    pub role: Role,
    /// FCGI_KEEP_CONN.
    pub keep_conn: bool,
    /// Request id.
    pub request_id: u16,
    /// Size of the STDIN records (the body is split into records of at most this size).
    pub stdin_chunk: usize,
}

impl Request {
    /// A GET of `path_and_query` (`/a/b?x=1`).
    pub fn get(path_and_query: &str) -> Request {
        let (path, query) = match path_and_query.split_once('?') {
            Some((p, q)) => (p, q),
            None => (path_and_query, ""),
        };
        Request {
            method: "GET".into(),
            path: path.as_bytes().to_vec(),
            query: query.into(),
            headers: vec![("Host".into(), "localhost".into())],
            body: Vec::new(),
            content_length: None,
            extra_params: Vec::new(),
            role: Role::Responder,
            keep_conn: false,
            request_id: 1,
            stdin_chunk: 65535,
        }
    }

    /// A POST of `body` to `path_and_query`.
    pub fn post(path_and_query: &str, body: Vec<u8>) -> Request {
        let mut r = Request::get(path_and_query);
        r.method = "POST".into();
        r.body = body;
        r.headers
            .push(("Content-Type".into(), "application/octet-stream".into()));
        r
    }

    /// Builder: set the method.
    pub fn method(mut self, m: &str) -> Self {
        self.method = m.into();
        self
    }

    /// Builder: add a header.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Builder: add a raw param.
    pub fn param(mut self, name: &str, value: &[u8]) -> Self {
        self.extra_params
            .push((name.as_bytes().to_vec(), value.to_vec()));
        self
    }

    /// Builder: set FCGI_KEEP_CONN.
    pub fn keep_conn(mut self, keep: bool) -> Self {
        self.keep_conn = keep;
        self
    }

    /// The FCGI_PARAMS pairs, in the order of nginx's stock `fastcgi_params` followed by
    /// the HTTP headers (nginx appends those after the configured params).
    pub fn params(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        let content_type = self
            .headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("content-type"))
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        let mut uri = percent_encode_path(&self.path);
        if !self.query.is_empty() {
            uri.push('?');
            uri.push_str(&self.query);
        }
        let mut p: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let mut add = |n: &str, v: &[u8]| p.push((n.as_bytes().to_vec(), v.to_vec()));
        add("QUERY_STRING", self.query.as_bytes());
        add("REQUEST_METHOD", self.method.as_bytes());
        add("CONTENT_TYPE", content_type.as_bytes());
        match self.content_length {
            Some(false) => {}
            Some(true) => add("CONTENT_LENGTH", self.body.len().to_string().as_bytes()),
            None if self.body.is_empty() => add("CONTENT_LENGTH", b""),
            None => add("CONTENT_LENGTH", self.body.len().to_string().as_bytes()),
        }
        add("SCRIPT_NAME", &self.path);
        add("REQUEST_URI", uri.as_bytes());
        add("DOCUMENT_URI", &self.path);
        add("DOCUMENT_ROOT", b"/usr/share/nginx/html");
        add("SERVER_PROTOCOL", b"HTTP/1.1");
        add("REQUEST_SCHEME", b"http");
        add("GATEWAY_INTERFACE", b"CGI/1.1");
        add("SERVER_SOFTWARE", b"nginx/1.22.1");
        add("REMOTE_ADDR", b"127.0.0.1");
        add("REMOTE_PORT", b"54321");
        add("REMOTE_USER", b"");
        add("SERVER_ADDR", b"127.0.0.1");
        add("SERVER_PORT", b"80");
        add("SERVER_NAME", b"localhost");
        add("REDIRECT_STATUS", b"200");
        for (n, v) in &self.headers {
            if n.eq_ignore_ascii_case("content-type") || n.eq_ignore_ascii_case("content-length") {
                continue;
            }
            let name = format!("HTTP_{}", n.to_ascii_uppercase().replace('-', "_"));
            add(&name, v.as_bytes());
        }
        for (n, v) in &self.extra_params {
            p.push((n.clone(), v.clone()));
        }
        p
    }

    /// The whole request as bytes on the wire.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = BytesMut::new();
        encode_begin_request(&mut out, self.request_id, self.role, self.keep_conn);
        let params = self.params();
        encode_params(
            &mut out,
            self.request_id,
            params.iter().map(|(n, v)| (n.as_slice(), v.as_slice())),
        );
        for chunk in self.body.chunks(self.stdin_chunk.max(1)) {
            encode_stream(&mut out, RecordType::Stdin, self.request_id, chunk);
        }
        encode_end_of_stream(&mut out, RecordType::Stdin, self.request_id);
        out.to_vec()
    }
}

/// Percent-encode the bytes of a path the way a browser would send them.
pub fn percent_encode_path(path: &[u8]) -> String {
    let mut s = String::new();
    for &b in path {
        if b.is_ascii_alphanumeric() || b"/-._~".contains(&b) {
            s.push(b as char);
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    s
}

/// What came back for one request.
#[derive(Debug, Default)]
pub struct Response {
    /// All FCGI_STDOUT bytes.
    pub stdout: Vec<u8>,
    /// All FCGI_STDERR bytes.
    pub stderr: Vec<u8>,
    /// The non-empty STDOUT records, as received.
    pub stdout_records: Vec<Vec<u8>>,
    /// END_REQUEST app status, if END_REQUEST arrived.
    pub app_status: Option<u32>,
    /// END_REQUEST protocol status, if END_REQUEST arrived.
    pub protocol_status: Option<ProtocolStatus>,
    /// Whether the STDOUT stream was closed with an empty record.
    pub stdout_closed: bool,
    /// The response ended in bytes that are not valid FastCGI, or inside a record (how
    /// pyfpm aborts a response whose headers are already sent, so the web server cannot
    /// take the truncated body for a complete one).
    pub protocol_error: Option<String>,
}

impl Response {
    /// The parsed CGI response. Panics (failing the test) when the STDOUT is not one.
    pub fn cgi(&self) -> CgiResponse {
        CgiResponse::parse(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "bad CGI response ({e}): stdout={:?} stderr={:?}",
                String::from_utf8_lossy(&self.stdout),
                String::from_utf8_lossy(&self.stderr)
            )
        })
    }

    /// Whether END_REQUEST arrived with FCGI_REQUEST_COMPLETE.
    pub fn completed(&self) -> bool {
        self.protocol_status == Some(ProtocolStatus::RequestComplete)
    }
}

/// A CGI response: status, headers in order (Status removed), body.
#[derive(Debug, Clone)]
pub struct CgiResponse {
    /// The status code (200 when the app sent no Status header).
    pub status: u16,
    /// The reason phrase from the Status header.
    pub reason: String,
    /// Headers in the order sent, Status excluded.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl CgiResponse {
    /// Parse `Header: value\r\n ... \r\n\r\n body`.
    pub fn parse(raw: &[u8]) -> Result<CgiResponse, String> {
        let (head_end, sep) = match find(raw, b"\r\n\r\n") {
            Some(i) => (i, 4),
            None => match find(raw, b"\n\n") {
                Some(i) => (i, 2),
                None => return Err("no end of headers".into()),
            },
        };
        let head = std::str::from_utf8(&raw[..head_end]).map_err(|e| e.to_string())?;
        let mut status = 200;
        let mut reason = String::from("OK");
        let mut headers = Vec::new();
        for line in head.split('\n') {
            let line = line.trim_end_matches('\r');
            if line.is_empty() {
                continue;
            }
            let (name, value) = line
                .split_once(':')
                .ok_or_else(|| format!("header line without colon: {line:?}"))?;
            let value = value.trim().to_string();
            if name.eq_ignore_ascii_case("status") {
                let (code, r) = value.split_once(' ').unwrap_or((&value, ""));
                status = code
                    .parse()
                    .map_err(|_| format!("bad Status header {value:?}"))?;
                reason = r.to_string();
            } else {
                headers.push((name.to_string(), value));
            }
        }
        Ok(CgiResponse {
            status,
            reason,
            headers,
            body: raw[head_end + sep..].to_vec(),
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

    /// The first header named `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.all(name).into_iter().next()
    }

    /// The body as JSON. Panics with the body when it is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "response body is not JSON ({e}); status {} body {:?}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// One client connection.
pub struct Conn {
    /// The socket.
    pub stream: Stream,
    dec: ClientConnection,
    /// Events decoded but not consumed yet.
    pending: std::collections::VecDeque<ClientEvent>,
    /// The peer closed the connection.
    pub eof: bool,
}

impl Conn {
    /// Connect.
    pub fn connect(addr: &Addr) -> std::io::Result<Conn> {
        let stream = match addr {
            Addr::Unix(p) => Stream::Unix(UnixStream::connect(p)?),
            Addr::Tcp(a) => Stream::Tcp(TcpStream::connect_timeout(a, Duration::from_secs(10))?),
        };
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        Ok(Conn {
            stream,
            dec: ClientConnection::new(),
            pending: Default::default(),
            eof: false,
        })
    }

    /// Set the read timeout.
    pub fn set_timeout(&self, t: Duration) {
        self.stream.set_read_timeout(Some(t)).unwrap();
    }

    /// Write bytes from a helper thread (so a server that answers before reading all the
    /// input, or closes early, cannot deadlock the test). Write errors are returned by
    /// the join handle.
    pub fn send_bg(&self, bytes: Vec<u8>) -> std::thread::JoinHandle<std::io::Result<()>> {
        let mut w = self.stream.try_clone().expect("clone socket");
        std::thread::spawn(move || w.write_all(&bytes))
    }

    /// Write bytes now.
    pub fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Close our writing side.
    pub fn shutdown_write(&self) {
        let _ = self.stream.shutdown(Shutdown::Write);
    }

    /// Close both directions (wakes a writer blocked on this socket).
    pub fn shutdown_both(&self) {
        let _ = self.stream.shutdown(Shutdown::Both);
    }

    /// Read once from the socket into the decoder. Returns false at end of stream
    /// (or on a connection reset, which is also the server closing).
    fn fill(&mut self) -> std::io::Result<bool> {
        let mut buf = [0u8; 65536];
        match self.stream.read(&mut buf) {
            Ok(0) => {
                self.eof = true;
                Ok(false)
            }
            Ok(n) => {
                self.dec.receive(&buf[..n]);
                Ok(true)
            }
            Err(e) if e.kind() == ErrorKind::ConnectionReset => {
                self.eof = true;
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// The next event; `Ok(None)` when the peer closed the connection first.
    pub fn next_event(&mut self) -> std::io::Result<Option<ClientEvent>> {
        loop {
            if let Some(e) = self.pending.pop_front() {
                return Ok(Some(e));
            }
            match self.dec.poll_event() {
                Ok(Some(e)) => return Ok(Some(e)),
                Ok(None) => {}
                Err(e) => {
                    return Err(std::io::Error::new(
                        ErrorKind::InvalidData,
                        format!("server sent bad FastCGI: {e}"),
                    ));
                }
            }
            if self.eof || !self.fill()? {
                // Ending inside a record is how pyfpm aborts a response whose headers
                // are already sent: report it like any other broken FastCGI.
                return match self.dec.receive_eof() {
                    Ok(()) => Ok(None),
                    Err(e) => Err(std::io::Error::new(
                        ErrorKind::InvalidData,
                        format!("server sent bad FastCGI: {e}"),
                    )),
                };
            }
        }
    }

    /// Send `req` and read its response up to END_REQUEST (or the connection closing).
    pub fn request(&mut self, req: &Request) -> std::io::Result<Response> {
        let writer = self.send_bg(req.encode());
        let resp = self.read_response(req.request_id);
        // A server that answered without reading all the input may leave the writer
        // blocked: give it a while, then shut the socket so the test stays bounded.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !writer.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if !writer.is_finished() {
            self.shutdown_both();
        }
        // A write error only matters if no response came back, and then `resp` says so.
        let _ = writer.join().expect("writer thread");
        resp
    }

    /// Collect events for `request_id` until END_REQUEST, end of stream or bytes that
    /// are not FastCGI (recorded in [`Response::protocol_error`]).
    pub fn read_response(&mut self, request_id: u16) -> std::io::Result<Response> {
        let mut r = Response::default();
        loop {
            let ev = match self.next_event() {
                Ok(Some(ev)) => ev,
                Ok(None) => break,
                Err(e) if e.kind() == ErrorKind::InvalidData => {
                    r.protocol_error = Some(e.to_string());
                    break;
                }
                Err(e) => return Err(e),
            };
            match ev {
                ClientEvent::Stdout {
                    request_id: id,
                    data,
                } if id == request_id => {
                    if data.is_empty() {
                        r.stdout_closed = true;
                    } else {
                        r.stdout.extend_from_slice(&data);
                        r.stdout_records.push(data.to_vec());
                    }
                }
                ClientEvent::Stderr {
                    request_id: id,
                    data,
                } if id == request_id => {
                    r.stderr.extend_from_slice(&data);
                }
                ClientEvent::EndRequest {
                    request_id: id,
                    app_status,
                    protocol_status,
                } if id == request_id => {
                    r.app_status = Some(app_status);
                    r.protocol_status = Some(protocol_status);
                    return Ok(r);
                }
                other => {
                    return Err(std::io::Error::new(
                        ErrorKind::InvalidData,
                        format!("unexpected event for request {request_id}: {other:?}"),
                    ));
                }
            }
        }
        Ok(r)
    }

    /// Read until the server closes the connection; returns the bytes that arrived
    /// meanwhile. Fails if the connection is still open after `within`.
    pub fn expect_closed(&mut self, within: Duration) -> Result<Vec<u8>, String> {
        self.set_timeout(within);
        let deadline = Instant::now() + within;
        let mut got = Vec::new();
        let mut buf = [0u8; 65536];
        loop {
            if Instant::now() > deadline {
                return Err(format!(
                    "connection still open after {within:?}; received {} bytes",
                    got.len()
                ));
            }
            match self.stream.read(&mut buf) {
                Ok(0) => return Ok(got),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::ConnectionReset => return Ok(got),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Err(format!(
                        "connection still open after {within:?}; received {} bytes",
                        got.len()
                    ));
                }
                Err(e) => return Err(format!("read failed: {e}")),
            }
        }
    }
}

/// Connect, send one request, read its response.
pub fn request(addr: &Addr, req: &Request) -> CgiResponse {
    let mut c = Conn::connect(addr).unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    let r = c
        .request(req)
        .unwrap_or_else(|e| panic!("request to {addr}: {e}"));
    assert!(
        r.completed(),
        "no END_REQUEST/REQUEST_COMPLETE from {addr} (got {:?}, protocol error {:?}); \
         stdout so far {:?}",
        r.protocol_status,
        r.protocol_error,
        String::from_utf8_lossy(&r.stdout)
    );
    r.cgi()
}

/// Connect, send one request, return the raw response (END_REQUEST may be missing).
pub fn request_raw(addr: &Addr, req: &Request) -> Response {
    let mut c = Conn::connect(addr).unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    c.request(req)
        .unwrap_or_else(|e| panic!("request to {addr}: {e}"))
}
