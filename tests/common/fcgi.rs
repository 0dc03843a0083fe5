//! The tests' FastCGI client: `pyfpm::client` (the one `pyfpm request` ships: nginx-like
//! params, request encoding, response collection, CGI parsing), plus what only tests
//! need: typed loopback addresses, a read bound on every connection so a test fails
//! instead of hanging, raw sends for the malformed-input tests, waiting for the server to
//! close, and helpers that panic with the evidence.

use pyfpm::client::{Connection, Target};
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::ops::{Deref, DerefMut};
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub use pyfpm::client::{CgiResponse, Request, Response};

/// How long any single read may block before a test fails instead of hanging.
pub const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a pool listens.
#[derive(Clone, Debug)]
pub enum Addr {
    /// A Unix-domain socket.
    Unix(PathBuf),
    /// A loopback TCP address.
    Tcp(SocketAddr),
}

impl Addr {
    /// The same address for `pyfpm::client`.
    pub fn target(&self) -> Target {
        match self {
            Addr::Unix(p) => Target::Unix(p.clone()),
            Addr::Tcp(a) => Target::Tcp {
                host: a.ip().to_string(),
                port: a.port(),
            },
        }
    }
}

impl std::fmt::Display for Addr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.target().fmt(f)
    }
}

/// A POST of `body` to `uri`, typed `application/octet-stream` as the tests' uploads are.
pub fn post(uri: &str, body: Vec<u8>) -> Request {
    Request::new("POST", uri)
        .header("Content-Type", "application/octet-stream")
        .body(body)
}

/// Test assertions on a collected [`Response`].
pub trait ResponseExt {
    /// The parsed CGI response. Panics (failing the test) when the STDOUT is not one.
    fn cgi(&self) -> CgiResponse;
}

impl ResponseExt for Response {
    fn cgi(&self) -> CgiResponse {
        CgiResponse::parse(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "bad CGI response ({e}): stdout={:?} stderr={:?}",
                String::from_utf8_lossy(&self.stdout),
                String::from_utf8_lossy(&self.stderr)
            )
        })
    }
}

/// Test assertions on a [`CgiResponse`].
pub trait CgiResponseExt {
    /// The body as JSON. Panics with the body when it is not JSON.
    fn json(&self) -> serde_json::Value;
}

impl CgiResponseExt for CgiResponse {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "response body is not JSON ({e}); status {} body {:?}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// A client connection: a [`Connection`] whose reads are bounded by [`IO_TIMEOUT`], with
/// the raw-socket operations the malformed-input and connection-lifetime tests need.
pub struct Conn {
    conn: Connection,
}

impl Deref for Conn {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        &self.conn
    }
}

impl DerefMut for Conn {
    fn deref_mut(&mut self) -> &mut Connection {
        &mut self.conn
    }
}

impl Conn {
    /// Connect.
    pub fn connect(addr: &Addr) -> std::io::Result<Conn> {
        let mut conn = Connection::connect(&addr.target(), Instant::now() + CONNECT_TIMEOUT)?;
        conn.set_read_timeout(Some(IO_TIMEOUT));
        Ok(Conn { conn })
    }

    /// Bound each read by `t` instead of [`IO_TIMEOUT`].
    pub fn set_timeout(&mut self, t: Duration) {
        self.conn.set_read_timeout(Some(t));
    }

    /// Write bytes from a helper thread (so a server that answers before reading all the
    /// input, or closes early, cannot deadlock the test). Write errors are returned by
    /// the join handle.
    pub fn send_bg(&mut self, bytes: Vec<u8>) -> std::thread::JoinHandle<std::io::Result<()>> {
        let mut w = self.conn.stream().try_clone().expect("clone socket");
        std::thread::spawn(move || w.write_all(&bytes))
    }

    /// Ask GET_VALUES for `names`; the answer's variables and values, as text, in the
    /// order sent. Panics (failing the test) on any other answer.
    pub fn get_values(&mut self, names: &[&[u8]]) -> Vec<(String, String)> {
        let mut out = bytes::BytesMut::new();
        fastcgi::encode_get_values(&mut out, names.iter().copied());
        self.conn.send(&out).expect("send GET_VALUES");
        match self.conn.next_event().expect("read GET_VALUES_RESULT") {
            Some(fastcgi::ClientEvent::GetValuesResult { values }) => values
                .iter()
                .map(|(k, v)| {
                    (
                        String::from_utf8_lossy(k).into_owned(),
                        String::from_utf8_lossy(v).into_owned(),
                    )
                })
                .collect(),
            other => panic!("expected GET_VALUES_RESULT, got {other:?}"),
        }
    }

    /// Close our writing side.
    pub fn shutdown_write(&mut self) {
        let _ = self.conn.stream().shutdown(Shutdown::Write);
    }

    /// Read raw bytes until the server closes the connection; returns the bytes that
    /// arrived meanwhile. Fails if the connection is still open after `within`.
    pub fn expect_closed(&mut self, within: Duration) -> Result<Vec<u8>, String> {
        let deadline = Instant::now() + within;
        let still_open = |got: &[u8]| {
            format!(
                "connection still open after {within:?}; received {} bytes",
                got.len()
            )
        };
        let stream = self.conn.stream();
        let mut got = Vec::new();
        let mut buf = [0u8; 65536];
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(still_open(&got));
            }
            stream
                .set_read_timeout(Some(remaining))
                .map_err(|e| format!("set timeout: {e}"))?;
            match stream.read(&mut buf) {
                Ok(0) => return Ok(got),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::ConnectionReset => return Ok(got),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Err(still_open(&got));
                }
                Err(e) => return Err(format!("read failed: {e}")),
            }
        }
    }
}

/// Connect, send one request, read its response; it must end with END_REQUEST and
/// FCGI_REQUEST_COMPLETE.
pub fn request(addr: &Addr, req: &Request) -> CgiResponse {
    let r = request_raw(addr, req);
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

/// The value of `name` in a [`Conn::get_values`] answer.
pub fn value<'a>(values: &'a [(String, String)], name: &[u8]) -> Option<&'a str> {
    values
        .iter()
        .find(|(k, _)| k.as_bytes() == name)
        .map(|(_, v)| v.as_str())
}
