//! `pyfpm request`: send one FastCGI request to `unix:/path` or `host:port` and print
//! the response, the way `cgi-fcgi -bind -connect` serves php-fpm users, but with the
//! parameters a stock nginx `include fastcgi_params;` would send, so what works here works
//! behind nginx.
//!
//! This module owns the whole client: argument parsing helpers, the parameter set, the
//! split of the CGI response into header block and body, and the blocking I/O. The pure
//! parts ([`parse_address`], [`build_params`], [`ResponseReader`]) are separate from the
//! socket loop so they can be tested without a server.
//!
//! Exit statuses: 0 when the response status is below 500, 1 for a 5xx, 2 when no usable
//! response arrived (connection failure, timeout, protocol error, a refused request),
//! 64 for a bad command line.

use crate::exit_code;
use bytes::BytesMut;
use clap::Args;
use fastcgi::{ClientConnection, ClientEvent, DecodeError, ProtocolStatus, RecordType, Role};
use std::borrow::Cow;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Ipv6Addr, Shutdown, TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The request id used for the single request (any non-zero id would do).
const REQUEST_ID: u16 = 1;

/// Largest CGI header block accepted before the body starts. nginx gives up far earlier
/// (`fastcgi_buffer_size`, 4-8 KiB); this only bounds memory against a peer that never
/// ends its headers.
pub const MAX_HEAD_LEN: usize = 1024 * 1024;

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
    pub headers: Vec<HeaderArg>,

    /// Set a raw FastCGI parameter `NAME=VALUE` (repeatable), replacing the default of
    /// that name; `NAME` without `=` removes it. Repeat a name to send it several times.
    #[arg(short = 'p', long = "param", value_name = "NAME=VALUE", value_parser = parse_param_arg)]
    pub params: Vec<ParamArg>,

    /// Request body: a string, `@FILE`, or `@-` for standard input. Sent as is (like curl's
    /// --data-binary), with CONTENT_LENGTH set to its size.
    #[arg(
        short = 'd',
        long = "data",
        value_name = "DATA",
        allow_hyphen_values = true
    )]
    pub data: Option<String>,

    /// Print the response's CGI header block before the body.
    #[arg(short = 'i', long = "include")]
    pub include: bool,

    /// Give up after this many seconds, counting the connection and the whole response.
    #[arg(long = "timeout", value_name = "SECONDS", default_value = "10", value_parser = parse_timeout)]
    pub timeout: Duration,
}

/// One `--header` argument.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeaderArg {
    /// Header name as given (e.g. `Content-Type`).
    pub name: String,
    /// Value, surrounding whitespace removed.
    pub value: String,
}

/// One `--param` argument.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamArg {
    /// Parameter name, sent verbatim.
    pub name: String,
    /// The value; `None` removes the parameter.
    pub value: Option<String>,
}

/// Parse `NAME: VALUE` for `--header`.
pub fn parse_header_arg(s: &str) -> Result<HeaderArg, String> {
    let (name, value) = s
        .split_once(':')
        .ok_or_else(|| format!("expected `NAME: VALUE`, got {s:?}"))?;
    let name = name.trim();
    if name.is_empty() || !name.bytes().all(is_token_byte) {
        return Err(format!(
            "{name:?} is not a valid header name (letters, digits and !#$%&'*+-.^_`|~ only)"
        ));
    }
    Ok(HeaderArg {
        name: name.to_string(),
        value: value.trim().to_string(),
    })
}

/// Parse `NAME=VALUE` (set) or `NAME` (remove) for `--param`.
pub fn parse_param_arg(s: &str) -> Result<ParamArg, String> {
    let (name, value) = match s.split_once('=') {
        Some((n, v)) => (n, Some(v.to_string())),
        None => (s, None),
    };
    if name.is_empty() {
        return Err(format!("expected `NAME=VALUE` or `NAME`, got {s:?}"));
    }
    Ok(ParamArg {
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

/// RFC 9110 token characters, the ones allowed in a header name.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Where `pyfpm request` connects.
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

/// Parse ADDR: `unix:/path`, `/path`, `host:port` or `[v6]:port`.
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

/// FastCGI parameters as sent, in order.
pub type ParamList = Vec<(Vec<u8>, Vec<u8>)>;

/// Build the FastCGI parameters for a request, mirroring nginx's stock `fastcgi_params`
/// followed by the request headers as `HTTP_*`, then applying `--param` overrides.
///
/// `body_len` is `Some` when a body is sent: it becomes CONTENT_LENGTH (unless a
/// `Content-Length` header says otherwise) and a default CONTENT_TYPE. Like nginx,
/// CONTENT_TYPE and CONTENT_LENGTH are sent empty when there is nothing to say.
pub fn build_params(
    method: &str,
    path: &str,
    headers: &[HeaderArg],
    overrides: &[ParamArg],
    body_len: Option<usize>,
) -> ParamList {
    let (uri_path, query) = match path.split_once('?') {
        Some((p, q)) => (p, q),
        None => (path, ""),
    };
    // nginx's $fastcgi_script_name / $document_uri are the decoded path.
    let decoded = percent_decode(uri_path.as_bytes());

    let mut content_type = body_len.map(|_| DEFAULT_BODY_CONTENT_TYPE.to_string());
    let mut content_length = body_len.map(|n| n.to_string());
    // HTTP_* in first-seen order; repeated names joined as nginx (>= 1.23) joins them.
    let mut http: Vec<(String, String)> = vec![("HTTP_HOST".into(), "localhost".into())];
    let mut host_given = false;
    for h in headers {
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
            // The first Host header replaces the default instead of joining it.
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

    let version = concat!("pyfpm-request/", env!("CARGO_PKG_VERSION"));
    let mut params: ParamList = Vec::with_capacity(20 + http.len());
    let mut push = |name: &str, value: &[u8]| params.push((name.into(), value.to_vec()));
    push("QUERY_STRING", query.as_bytes());
    push("REQUEST_METHOD", method.as_bytes());
    push(
        "CONTENT_TYPE",
        content_type.as_deref().unwrap_or("").as_bytes(),
    );
    push(
        "CONTENT_LENGTH",
        content_length.as_deref().unwrap_or("").as_bytes(),
    );
    push("SCRIPT_NAME", &decoded);
    push("REQUEST_URI", path.as_bytes());
    push("DOCUMENT_URI", &decoded);
    push("DOCUMENT_ROOT", b"");
    push("SERVER_PROTOCOL", b"HTTP/1.1");
    push("REQUEST_SCHEME", b"http");
    push("GATEWAY_INTERFACE", b"CGI/1.1");
    push("SERVER_SOFTWARE", version.as_bytes());
    push("REMOTE_ADDR", b"127.0.0.1");
    push("REMOTE_PORT", b"0");
    push("SERVER_ADDR", b"127.0.0.1");
    push("SERVER_PORT", b"80");
    push("SERVER_NAME", b"localhost");
    for (k, v) in &http {
        push(k, v.as_bytes());
    }

    // Every --param name drops the defaults of that name; the set values are appended in
    // the order given, so repeating a name sends duplicates on purpose.
    params.retain(|(k, _)| !overrides.iter().any(|o| o.name.as_bytes() == k.as_slice()));
    for o in overrides {
        if let Some(v) = &o.value {
            params.push((o.name.clone().into_bytes(), v.clone().into_bytes()));
        }
    }
    params
}

/// Decode `%XX` escapes; a `%` not followed by two hex digits is kept as is.
fn percent_decode(input: &[u8]) -> Vec<u8> {
    fn hex(b: u8) -> Option<u8> {
        (b as char).to_digit(16).map(|d| d as u8)
    }
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        if input[i] == b'%' && i + 2 < input.len() {
            if let (Some(h), Some(l)) = (hex(input[i + 1]), hex(input[i + 2])) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(input[i]);
        i += 1;
    }
    out
}

/// Encode the whole request: BEGIN_REQUEST (responder, no keep-alive), the PARAMS stream
/// and the STDIN stream (the body, if any, then its end), as nginx sends them.
pub fn encode_request(params: &ParamList, body: Option<&[u8]>) -> BytesMut {
    let mut out = BytesMut::with_capacity(1024 + body.map_or(0, <[u8]>::len));
    fastcgi::encode_begin_request(&mut out, REQUEST_ID, Role::Responder, false);
    fastcgi::encode_params(
        &mut out,
        REQUEST_ID,
        params.iter().map(|(k, v)| (k.as_slice(), v.as_slice())),
    );
    if let Some(body) = body {
        fastcgi::encode_stream(&mut out, RecordType::Stdin, REQUEST_ID, body);
    }
    fastcgi::encode_end_of_stream(&mut out, RecordType::Stdin, REQUEST_ID);
    out
}

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

/// The parsed CGI header block of a response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResponseHead {
    /// From the `Status:` header; 200 when there is none (CGI/1.1).
    pub status: u16,
    /// Every header in order, `Status` included, values trimmed.
    pub headers: Vec<(String, String)>,
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

/// Parse a complete header block (as measured by [`head_len`]).
pub fn parse_head(block: &[u8]) -> Result<ResponseHead, HeadError> {
    let mut status = None;
    let mut headers = Vec::new();
    for line in block.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            break;
        }
        // Header bytes are latin-1 on the wire (PEP 3333 native strings).
        let text: String = line.iter().map(|&b| b as char).collect();
        let (name, value) = text
            .split_once(':')
            .ok_or_else(|| HeadError::BadLine(text.clone()))?;
        if name.is_empty() || !name.bytes().all(is_token_byte) {
            return Err(HeadError::BadLine(text.clone()));
        }
        let value = value.trim();
        if status.is_none() && name.eq_ignore_ascii_case("status") {
            status = Some(parse_status(value)?);
        }
        headers.push((name.to_string(), value.to_string()));
    }
    Ok(ResponseHead {
        status: status.unwrap_or(200),
        headers,
    })
}

/// The code of a `Status:` value such as `404 Not Found`.
fn parse_status(value: &str) -> Result<u16, HeadError> {
    let bad = || HeadError::BadStatus(value.to_string());
    let code = value.get(..3).ok_or_else(bad)?;
    let rest = &value[3..];
    if !code.bytes().all(|b| b.is_ascii_digit()) || !(rest.is_empty() || rest.starts_with(' ')) {
        return Err(bad());
    }
    match code.parse::<u16>() {
        Ok(c) if c >= 100 => Ok(c),
        _ => Err(bad()),
    }
}

/// What one piece of FCGI_STDOUT produced.
#[derive(Debug, PartialEq, Eq)]
pub struct Fed<'a> {
    /// Set when this piece completed the header block: the parsed head and its raw bytes.
    pub head: Option<(ResponseHead, Vec<u8>)>,
    /// Body bytes to pass on (may be empty).
    pub body: Cow<'a, [u8]>,
}

/// Splits a response's FCGI_STDOUT into the CGI header block and the body, whatever the
/// record boundaries.
#[derive(Debug, Default)]
pub struct ResponseReader {
    /// Bytes received while the header block is incomplete.
    pending: Vec<u8>,
    /// The status, once the header block is complete.
    status: Option<u16>,
}

impl ResponseReader {
    /// A reader that has seen nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Take the next piece of FCGI_STDOUT.
    pub fn feed<'a>(&mut self, data: &'a [u8]) -> Result<Fed<'a>, HeadError> {
        if self.status.is_some() {
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
        let head = parse_head(&raw)?;
        self.status = Some(head.status);
        Ok(Fed {
            head: Some((head, raw)),
            body: Cow::Owned(body),
        })
    }

    /// The response status once the request has ended: `Ok(None)` when nothing at all
    /// was sent, an error when the header block never ended.
    pub fn finish(&self) -> Result<Option<u16>, HeadError> {
        match self.status {
            Some(s) => Ok(Some(s)),
            None if self.pending.is_empty() => Ok(None),
            None => Err(HeadError::Incomplete),
        }
    }
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

/// Read the `--data` argument.
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
    let deadline = Instant::now() + args.timeout;
    let method = args
        .method
        .as_deref()
        .unwrap_or(if body.is_some() { "POST" } else { "GET" });
    let params = build_params(
        method,
        &args.path,
        &args.headers,
        &args.params,
        body.as_ref().map(Vec::len),
    );
    let request = encode_request(&params, body.as_deref());
    drop(body);

    let timeout_error = || RequestError::Timeout {
        target: target.clone(),
        timeout: args.timeout,
    };
    let mut stream = Stream::connect(target, deadline).map_err(|e| match e.kind() {
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => timeout_error(),
        _ => RequestError::Connect {
            target: target.clone(),
            source: Reason(e),
        },
    })?;

    let writer = stream.try_clone().map_err(|e| RequestError::Connect {
        target: target.clone(),
        source: Reason(e),
    })?;
    // The request is written from a second thread so that an application answering
    // before it has read a large body cannot deadlock us: both sides would otherwise
    // block writing into full socket buffers.
    std::thread::scope(|scope| {
        let sender = scope.spawn(move || {
            let mut writer = writer;
            let _ = writer.set_write_timeout(args.timeout);
            // A failed write shows up on the reading side as a closed connection or a
            // missing response; an early answer makes it irrelevant.
            let _ = writer.write_all(&request);
        });
        let result = read_response(&mut stream, target, deadline, args.include, out, err).map_err(
            |e| match e {
                ReadFailure::Timeout => timeout_error(),
                ReadFailure::Error(e) => e,
            },
        );
        // Unblocks the sender if the peer stopped reading.
        let _ = stream.shutdown();
        let _ = sender.join();
        result
    })
}

/// How the read loop failed.
enum ReadFailure {
    /// The deadline passed.
    Timeout,
    /// Anything else.
    Error(RequestError),
}

impl From<RequestError> for ReadFailure {
    fn from(e: RequestError) -> Self {
        ReadFailure::Error(e)
    }
}

/// Read records until END_REQUEST, streaming output as it arrives.
fn read_response(
    stream: &mut Stream,
    target: &Target,
    deadline: Instant,
    include: bool,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<u16, ReadFailure> {
    let mut conn = ClientConnection::new();
    let mut reader = ResponseReader::new();
    let mut output = Output { out, open: true };
    let mut buf = vec![0u8; 64 * 1024];
    let unexpected = |what: String| RequestError::Unexpected {
        target: target.clone(),
        what,
    };
    loop {
        while let Some(event) = conn.poll_event().map_err(|source| RequestError::Protocol {
            target: target.clone(),
            source,
        })? {
            match event {
                ClientEvent::Stdout { request_id, data } => {
                    check_id(request_id, "FCGI_STDOUT").map_err(unexpected)?;
                    let fed = reader.feed(&data).map_err(|source| RequestError::Head {
                        target: target.clone(),
                        source,
                    })?;
                    if include {
                        if let Some((_, raw)) = &fed.head {
                            output.write(raw)?;
                        }
                    }
                    output.write(&fed.body)?;
                }
                ClientEvent::Stderr { request_id, data } => {
                    check_id(request_id, "FCGI_STDERR").map_err(unexpected)?;
                    // The application's error output is advisory; losing it must not
                    // change the outcome of the request.
                    let _ = err.write_all(&data).and_then(|()| err.flush());
                }
                ClientEvent::EndRequest {
                    request_id,
                    protocol_status,
                    ..
                } => {
                    check_id(request_id, "FCGI_END_REQUEST").map_err(unexpected)?;
                    if protocol_status != ProtocolStatus::RequestComplete {
                        return Err(RequestError::Rejected {
                            target: target.clone(),
                            status: protocol_status,
                        }
                        .into());
                    }
                    return match reader.finish() {
                        Ok(Some(status)) => Ok(status),
                        Ok(None) => Err(RequestError::NoResponse {
                            target: target.clone(),
                        }
                        .into()),
                        Err(source) => Err(RequestError::Head {
                            target: target.clone(),
                            source,
                        }
                        .into()),
                    };
                }
                ClientEvent::GetValuesResult { .. } => {
                    return Err(
                        unexpected("FCGI_GET_VALUES_RESULT that was not asked for".into()).into(),
                    );
                }
                ClientEvent::UnknownType { record_type } => {
                    return Err(unexpected(format!(
                        "it answered FCGI_UNKNOWN_TYPE to record type {record_type}"
                    ))
                    .into());
                }
            }
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(ReadFailure::Timeout);
        }
        stream
            .set_read_timeout(remaining)
            .map_err(|e| RequestError::Read {
                target: target.clone(),
                source: Reason(e),
            })?;
        match stream.read(&mut buf) {
            Ok(0) => {
                return Err(RequestError::Closed {
                    target: target.clone(),
                }
                .into());
            }
            Ok(n) => conn.receive(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(ReadFailure::Timeout);
            }
            Err(e) => {
                return Err(RequestError::Read {
                    target: target.clone(),
                    source: Reason(e),
                }
                .into());
            }
        }
    }
}

/// Reject a record for a request we did not send.
fn check_id(request_id: u16, record: &str) -> Result<(), String> {
    if request_id == REQUEST_ID {
        Ok(())
    } else {
        Err(format!(
            "{record} for request {request_id}, but only request {REQUEST_ID} was sent"
        ))
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

/// A connected socket of either family.
enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Stream {
    /// Connect before `deadline`; a timeout is reported as `ErrorKind::TimedOut`.
    fn connect(target: &Target, deadline: Instant) -> io::Result<Stream> {
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

    fn try_clone(&self) -> io::Result<Stream> {
        Ok(match self {
            Stream::Unix(s) => Stream::Unix(s.try_clone()?),
            Stream::Tcp(s) => Stream::Tcp(s.try_clone()?),
        })
    }

    fn set_read_timeout(&self, t: Duration) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.set_read_timeout(Some(t)),
            Stream::Tcp(s) => s.set_read_timeout(Some(t)),
        }
    }

    fn set_write_timeout(&self, t: Duration) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.set_write_timeout(Some(t)),
            Stream::Tcp(s) => s.set_write_timeout(Some(t)),
        }
    }

    fn shutdown(&self) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.shutdown(Shutdown::Both),
            Stream::Tcp(s) => s.shutdown(Shutdown::Both),
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

    fn header(s: &str) -> HeaderArg {
        parse_header_arg(s).unwrap()
    }

    fn param(s: &str) -> ParamArg {
        parse_param_arg(s).unwrap()
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
            HeaderArg {
                name: "X-Thing".into(),
                value: "a: b".into()
            }
        );
        assert!(parse_header_arg("no colon").is_err());
        assert!(parse_header_arg("bad name: x").is_err());
        assert!(parse_header_arg(": x").is_err());
        assert_eq!(
            param("A=b=c"),
            ParamArg {
                name: "A".into(),
                value: Some("b=c".into())
            }
        );
        assert_eq!(param("A").value, None);
        assert_eq!(param("A=").value, Some(String::new()));
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
        let p = build_params("GET", "/a%20b/c?x=1&y=%41", &[], &[], None);
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
    fn a_body_sets_length_and_default_type() {
        let p = build_params("POST", "/echo", &[], &[], Some(0));
        assert_eq!(get(&p, "CONTENT_LENGTH"), [b"0"]);
        assert_eq!(
            get(&p, "CONTENT_TYPE"),
            [DEFAULT_BODY_CONTENT_TYPE.as_bytes()]
        );
        let p = build_params(
            "PUT",
            "/",
            &[
                header("content-type: text/plain"),
                header("Content-Length: 99"),
            ],
            &[],
            Some(5),
        );
        assert_eq!(get(&p, "CONTENT_TYPE"), [b"text/plain"]);
        assert_eq!(get(&p, "CONTENT_LENGTH"), [b"99"]);
        assert!(get(&p, "HTTP_CONTENT_TYPE").is_empty());
        assert!(get(&p, "HTTP_CONTENT_LENGTH").is_empty());
    }

    #[test]
    fn headers_become_http_params_and_repeats_are_joined() {
        let p = build_params(
            "GET",
            "/",
            &[
                header("Host: example.org"),
                header("X-Forwarded-For: 10.0.0.1"),
                header("Accept: text/html"),
                header("x-forwarded-for: 10.0.0.2"),
                header("Cookie: a=1"),
                header("Cookie: b=2"),
            ],
            &[],
            None,
        );
        assert_eq!(get(&p, "HTTP_HOST"), [b"example.org"]);
        assert_eq!(get(&p, "HTTP_X_FORWARDED_FOR"), [b"10.0.0.1, 10.0.0.2"]);
        assert_eq!(get(&p, "HTTP_ACCEPT"), [b"text/html"]);
        assert_eq!(get(&p, "HTTP_COOKIE"), [b"a=1; b=2"]);
    }

    #[test]
    fn params_override_remove_and_repeat() {
        let p = build_params(
            "GET",
            "/x",
            &[],
            &[
                param("SCRIPT_NAME="),
                param("CONTENT_LENGTH"),
                param("X_DUP=1"),
                param("X_DUP=2"),
                param("HTTPS=on"),
            ],
            None,
        );
        assert_eq!(get(&p, "SCRIPT_NAME"), [b""]);
        assert!(get(&p, "CONTENT_LENGTH").is_empty());
        assert_eq!(get(&p, "X_DUP"), [b"1", b"2"]);
        assert_eq!(get(&p, "HTTPS"), [b"on"]);
        assert_eq!(get(&p, "REQUEST_URI"), [b"/x"]);
    }

    #[test]
    fn percent_decoding_keeps_bad_escapes() {
        assert_eq!(percent_decode(b"/caf%C3%A9"), "/café".as_bytes());
        assert_eq!(percent_decode(b"%zz%4"), b"%zz%4");
        assert_eq!(percent_decode(b"%"), b"%");
        assert_eq!(percent_decode(b"a%2fb%2F"), b"a/b/");
    }

    #[test]
    fn head_parsing() {
        let block = b"Content-Type: text/plain\r\nStatus: 404 Not Found\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n\r\n";
        assert_eq!(head_len(block), Some(block.len()));
        let head = parse_head(block).unwrap();
        assert_eq!(head.status, 404);
        assert_eq!(head.headers.len(), 4);
        assert_eq!(head.headers[2], ("Set-Cookie".into(), "a=1".into()));

        assert_eq!(parse_head(b"X: y\n\n").unwrap().status, 200);
        assert_eq!(parse_head(b"status:503\n\n").unwrap().status, 503);
        assert_eq!(parse_head(b"\r\n").unwrap().headers, vec![]);
        assert_eq!(head_len(b"A: b\r\nC: d\r\n"), None);
        assert_eq!(head_len(b"A: b\n\nbody\n\n"), Some(6));

        assert!(matches!(
            parse_head(b"junk\n\n"),
            Err(HeadError::BadLine(_))
        ));
        assert!(matches!(
            parse_head(b"bad name: x\n\n"),
            Err(HeadError::BadLine(_))
        ));
        for bad in ["Status: OK", "Status: 20", "Status: 2000", "Status: 099 x"] {
            let block = format!("{bad}\r\n\r\n");
            assert!(
                matches!(parse_head(block.as_bytes()), Err(HeadError::BadStatus(_))),
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
            if let Some((_, raw)) = fed.head {
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
            target,
            status: ProtocolStatus::Overloaded,
        };
        assert!(e.to_string().ends_with("FCGI_OVERLOADED"), "{e}");
    }
}
