//! FastCGI roles and request control, against the real binary: the `roles:` directive
//! (a refused role gets FCGI_UNKNOWN_ROLE like an unknown one), the filter role's
//! `fcgi.data` stream (also through `pyfpm request --role filter --filter-data`),
//! FCGI_ABORT_REQUEST while the app waits for body bytes and while it streams, and the
//! request limits (`request_body_max`, `request_read_timeout`).

mod common;

use bytes::BytesMut;
use common::fcgi::{self, Addr, Conn, Request, ResponseExt as _};
use common::{Pool, Pyfpm, TestEnv, pyfpm_bin};
use fastcgi::{ProtocolStatus, RecordType, Role};
use pyfpm::client::ResponsePart;
use std::time::{Duration, Instant};

/// The app of these tests, written into the test's directory (the pool's `chdir`, which
/// is on the worker's `sys.path`).
const APP: &str = r#"
import os, time

def application(environ, start_response):
    path = environ.get('PATH_INFO', '')
    if path == '/filter':
        data = environ['fcgi.data']
        first = data.readline()
        rest = data.read()
        body = environ['wsgi.input'].read()
        start_response('200 OK', [('Content-Type', 'text/plain'),
                                  ('X-Data-Length', environ.get('FCGI_DATA_LENGTH', '-')),
                                  ('X-Data-Last-Mod', environ.get('FCGI_DATA_LAST_MOD', '-')),
                                  ('X-Body', body.decode('latin-1'))])
        return [(first + rest).upper()]
    if path == '/filter-lines':
        lines = list(environ['fcgi.data'])
        start_response('200 OK', [('Content-Type', 'text/plain')])
        return [b'%d:' % len(lines)] + [l.upper() for l in lines]
    if path == '/wait-body':
        try:
            environ['wsgi.input'].read()
            outcome = 'read returned'
        except Exception as e:
            outcome = 'raised ' + type(e).__name__
        with open(os.environ['PYFPM_TEST_DIR'] + '/wait-body.txt', 'w') as f:
            f.write(outcome)
        start_response('200 OK', [('Content-Type', 'text/plain')])
        return [b'unreachable']
    if path == '/stream':
        start_response('200 OK', [('Content-Type', 'text/plain')])
        return Stream(os.environ['PYFPM_TEST_DIR'])
    if path == '/body':
        body = environ['wsgi.input'].read()
        start_response('200 OK', [('Content-Type', 'text/plain')])
        return [b'got %d' % len(body)]
    start_response('200 OK', [('Content-Type', 'text/plain')])
    return [environ.get('FCGI_ROLE', '-').encode()]


class Stream:
    def __init__(self, d):
        self.d = d
        self.n = 0

    def __iter__(self):
        return self

    def __next__(self):
        self.n += 1
        with open(self.d + '/stream-count.txt', 'w') as f:
            f.write(str(self.n))
        time.sleep(0.05)
        return b'chunk %d\n' % self.n

    def close(self):
        with open(self.d + '/stream-closed.txt', 'w') as f:
            f.write(str(self.n))
"#;

/// A running pool serving [`APP`] on a Unix socket.
struct Server {
    pyfpm: Pyfpm,
    addr: Addr,
    env: TestEnv,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.pyfpm.stop();
    }
}

fn serve(extra: &[&str]) -> Server {
    let env = TestEnv::new();
    std::fs::write(env.file("rolesapp.py"), APP).unwrap();
    let sock = env.file("www.sock");
    let mut pool = Pool::new("www", "rolesapp:application")
        .listen(&sock.display().to_string())
        .with(&format!(
            "chdir: {}",
            common::yq(&env.path().display().to_string())
        ));
    for e in extra {
        pool = pool.with(e);
    }
    let addr = Addr::Unix(sock);
    let pyfpm = env.start(&[pool], &addr);
    Server { pyfpm, addr, env }
}

/// Send `req` and return the protocol status of its END_REQUEST.
fn end_status(addr: &Addr, req: &Request) -> Option<ProtocolStatus> {
    fcgi::request_raw(addr, req).protocol_status
}

#[test]
fn all_roles_are_served_by_default_and_unknown_ones_refused() {
    let s = serve(&[]);
    for (role, name) in [
        (Role::Responder, "RESPONDER"),
        (Role::Authorizer, "AUTHORIZER"),
        (Role::Filter, "FILTER"),
    ] {
        let mut req = Request::get("/");
        req.role = role;
        if role == Role::Filter {
            req.filter_data = Some(Vec::new());
        }
        let r = fcgi::request(&s.addr, &req);
        assert_eq!(r.status, 200, "{name}");
        assert_eq!(r.body, name.as_bytes());
    }
    let mut req = Request::get("/");
    req.role = Role::Other(9);
    assert_eq!(end_status(&s.addr, &req), Some(ProtocolStatus::UnknownRole));
}

#[test]
fn a_refused_role_gets_unknown_role_and_the_connection_stays_usable() {
    let s = serve(&["roles: [responder, authorizer]"]);
    let mut c = Conn::connect(&s.addr).unwrap();
    let mut filter = Request::get("/").keep_conn(true);
    filter.role = Role::Filter;
    filter.filter_data = Some(b"abc".to_vec());
    let refused = c.request(&filter).unwrap();
    assert_eq!(refused.protocol_status, Some(ProtocolStatus::UnknownRole));
    assert!(refused.stdout.is_empty());
    let mut auth = Request::get("/").keep_conn(true);
    auth.role = Role::Authorizer;
    let ok = c.request(&auth).unwrap();
    assert!(ok.completed());
    assert_eq!(ok.cgi().body, b"AUTHORIZER");
}

#[test]
fn a_pool_of_filters_only_refuses_responders() {
    let s = serve(&["roles: filter"]);
    assert_eq!(
        end_status(&s.addr, &Request::get("/")),
        Some(ProtocolStatus::UnknownRole)
    );
    let mut req = Request::get("/filter");
    req.role = Role::Filter;
    req.filter_data = Some(b"x".to_vec());
    assert_eq!(fcgi::request(&s.addr, &req).body, b"X");
}

#[test]
fn the_filter_role_reads_fcgi_data_after_the_body() {
    let s = serve(&[]);
    let data = b"first line\nsecond line\n".repeat(4000);
    let mut req = Request::get("/filter").param("FCGI_DATA_LAST_MOD", "1700000000");
    req.role = Role::Filter;
    req.filter_data = Some(data.clone());
    req.stdin_record_len = 1000;
    // Without a body.
    let r = fcgi::request(&s.addr, &req);
    assert_eq!(r.status, 200);
    assert_eq!(r.body, data.to_ascii_uppercase());
    assert_eq!(
        r.header("X-Data-Length"),
        Some(data.len().to_string().as_str())
    );
    assert_eq!(r.header("X-Data-Last-Mod"), Some("1700000000"));
    assert_eq!(r.header("X-Body"), Some(""));
    // With a body: both streams reach the app intact.
    let r = fcgi::request(
        &s.addr,
        &req.clone().method("POST").body(b"the body".to_vec()),
    );
    assert_eq!(r.body, data.to_ascii_uppercase());
    assert_eq!(r.header("X-Body"), Some("the body"));
    // Iteration yields lines.
    let mut lines = Request::get("/filter-lines");
    lines.role = Role::Filter;
    lines.filter_data = Some(b"a\nbb\nccc".to_vec());
    assert_eq!(fcgi::request(&s.addr, &lines).body, b"3:A\nBB\nCCC");
}

#[test]
fn pyfpm_request_sends_a_role_and_filter_data() {
    let s = serve(&[]);
    let Addr::Unix(sock) = &s.addr else {
        unreachable!()
    };
    let data = s.env.file("data.txt");
    std::fs::write(&data, "hello filter\n").unwrap();
    let out = std::process::Command::new(pyfpm_bin())
        .args(["request", "--role", "filter", "-i", "-d", "body!"])
        .arg(format!("--filter-data=@{}", data.display()))
        .arg(sock)
        .arg("/filter")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("X-Data-Length: 13"), "{stdout}");
    assert!(stdout.contains("X-Body: body!"), "{stdout}");
    assert!(stdout.ends_with("HELLO FILTER\n"), "{stdout}");
    let out = std::process::Command::new(pyfpm_bin())
        .args(["request", "--role", "authorizer"])
        .arg(sock)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "AUTHORIZER");
    // A filter with no --filter-data still gets its (empty) data stream.
    let out = std::process::Command::new(pyfpm_bin())
        .args(["request", "--role", "filter", "--timeout", "5"])
        .arg(sock)
        .arg("/filter")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "");
}

/// Read the response parts of request 1 until END_REQUEST; returns stdout and the
/// protocol status.
fn read_to_end(c: &mut Conn) -> (Vec<u8>, ProtocolStatus) {
    let mut stdout = Vec::new();
    loop {
        match c.next_part(1).unwrap() {
            ResponsePart::Stdout(b) => stdout.extend_from_slice(&b),
            ResponsePart::Stderr(_) => {}
            ResponsePart::End {
                protocol_status, ..
            } => return (stdout, protocol_status),
        }
    }
}

fn abort_record() -> Vec<u8> {
    let mut out = BytesMut::new();
    fastcgi::encode_abort_request(&mut out, 1);
    out.to_vec()
}

fn wait_file(path: &std::path::Path, within: Duration) -> Option<String> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Ok(text) = std::fs::read_to_string(path) {
            if !text.is_empty() {
                return Some(text);
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

#[test]
fn abort_while_the_app_waits_for_body_bytes_raises_and_keeps_the_connection() {
    let s = serve(&[]);
    let mut c = Conn::connect(&s.addr).unwrap();
    let req = fcgi::post("/wait-body", vec![b'x'; 100]).keep_conn(true);
    let mut head = BytesMut::new();
    req.encode_head(&mut head);
    fastcgi::encode_stream(&mut head, RecordType::Stdin, 1, b"only ten b");
    c.send(&head).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    c.send(&abort_record()).unwrap();
    let (_, status) = read_to_end(&mut c);
    assert_eq!(status, ProtocolStatus::RequestComplete);
    assert_eq!(
        wait_file(&s.env.file("wait-body.txt"), Duration::from_secs(5)).as_deref(),
        Some("raised ConnectionAbortedError")
    );
    let next = c.request(&Request::get("/").keep_conn(true)).unwrap();
    assert!(next.completed());
    assert_eq!(next.cgi().body, b"RESPONDER");
}

#[test]
fn abort_during_a_streamed_response_stops_it_and_calls_close() {
    let s = serve(&[]);
    let mut c = Conn::connect(&s.addr).unwrap();
    let req = Request::get("/stream").keep_conn(true);
    c.send(&req.encode()).unwrap();
    // Wait for a few chunks, then abort.
    let mut got = Vec::new();
    while got.len() < 3 * 8 {
        match c.next_part(1).unwrap() {
            ResponsePart::Stdout(b) => got.extend_from_slice(&b),
            other => panic!("unexpected {other:?}"),
        }
    }
    c.send(&abort_record()).unwrap();
    let (_, status) = read_to_end(&mut c);
    assert_eq!(status, ProtocolStatus::RequestComplete);
    let closed: u32 = wait_file(&s.env.file("stream-closed.txt"), Duration::from_secs(5))
        .expect("close() called")
        .parse()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let count: u32 = std::fs::read_to_string(s.env.file("stream-count.txt"))
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(count, closed, "iteration stopped at close()");
    assert!(count < 100, "the stream was stopped ({count} chunks)");
    let next = c.request(&Request::get("/").keep_conn(true)).unwrap();
    assert!(next.completed());
    assert_eq!(next.cgi().body, b"RESPONDER");
}

#[test]
fn a_content_length_over_request_body_max_is_answered_413_before_the_app_runs() {
    let s = serve(&["request_body_max: 1K"]);
    let mut c = Conn::connect(&s.addr).unwrap();
    let big = fcgi::post("/body", vec![b'x'; 5000]).keep_conn(true);
    let r = c.request(&big).unwrap();
    assert!(r.completed());
    let cgi = r.cgi();
    assert_eq!(cgi.status, 413);
    assert!(
        String::from_utf8_lossy(&cgi.body).contains("Content Too Large"),
        "{:?}",
        String::from_utf8_lossy(&cgi.body)
    );
    // The connection is still usable, and a body within the limit goes through.
    let small = c
        .request(&fcgi::post("/body", vec![b'x'; 1024]).keep_conn(true))
        .unwrap();
    assert!(small.completed());
    assert_eq!(small.cgi().body, b"got 1024");
    // The worker's log lines reach the manager's log asynchronously.
    s.pyfpm.wait_log("answered 413", Duration::from_secs(5));
}

#[test]
fn a_body_without_content_length_over_request_body_max_fails_wsgi_input() {
    let s = serve(&["request_body_max: 1K"]);
    let mut c = Conn::connect(&s.addr).unwrap();
    let mut big = fcgi::post("/body", vec![b'y'; 3000])
        .remove_param("CONTENT_LENGTH")
        .keep_conn(true);
    big.stdin_record_len = 500;
    let r = c.request(&big).unwrap();
    assert!(r.completed());
    assert_eq!(r.cgi().status, 413);
    let ok = c
        .request(
            &fcgi::post("/body", vec![b'y'; 1000])
                .remove_param("CONTENT_LENGTH")
                .keep_conn(true),
        )
        .unwrap();
    assert_eq!(ok.cgi().body, b"got 1000");
}

#[test]
fn a_client_sending_too_slowly_is_disconnected_after_request_read_timeout() {
    let s = serve(&["request_read_timeout: 1s"]);
    // Params begun but never finished.
    let mut c = Conn::connect(&s.addr).unwrap();
    let mut head = BytesMut::new();
    Request::get("/").encode_head(&mut head);
    let cut = head.len() - 20;
    c.send(&head[..cut]).unwrap();
    let started = Instant::now();
    c.expect_closed(Duration::from_secs(10)).unwrap();
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    // A connection that never sends its request.
    let mut c = Conn::connect(&s.addr).unwrap();
    let started = Instant::now();
    c.expect_closed(Duration::from_secs(10)).unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    // A body that stops arriving while the app reads it.
    let mut c = Conn::connect(&s.addr).unwrap();
    let req = fcgi::post("/body", vec![b'z'; 100]);
    let mut head = BytesMut::new();
    req.encode_head(&mut head);
    fastcgi::encode_stream(&mut head, RecordType::Stdin, 1, b"partial");
    c.send(&head).unwrap();
    c.expect_closed(Duration::from_secs(10)).unwrap();
    s.pyfpm
        .wait_log("request_read_timeout", Duration::from_secs(5));
    // The worker is free again.
    assert_eq!(
        fcgi::request(&s.addr, &Request::get("/")).body,
        b"RESPONDER"
    );
}
