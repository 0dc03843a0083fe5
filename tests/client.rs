//! `pyfpm request` end to end: the real binary against
//! - a scripted fake FastCGI application (records encoded and decoded by hand here, so
//!   the client's wire format is checked independently of the codec it uses), for every
//!   exit status and failure class;
//! - the real pyfpm manager and worker serving `tests/apps/errors.py`, for exit
//!   statuses 0, 1 and 2 as a health check sees them.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::net::UnixListener;
use std::process::{Command, Output, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Upper bound for one `pyfpm request` run; the client's own --timeout is far lower.
const RUN_LIMIT: Duration = Duration::from_secs(30);

/// Run `pyfpm request ARGS...` with `stdin`, killing it (by pid) if it overruns.
fn pyfpm_request(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_pyfpm"))
        .arg("request")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn pyfpm request");
    let mut input = child.stdin.take().unwrap();
    let stdin = stdin.to_vec();
    let feeder = std::thread::spawn(move || {
        let _ = input.write_all(&stdin);
    });
    let pid = child.id();
    let deadline = Instant::now() + RUN_LIMIT;
    let watchdog = std::thread::spawn(move || {
        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
            if !common::alive(pid as i32) {
                return;
            }
        }
        // Still running: ours, so kill it by pid and let the test fail on the status.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    });
    let out = child.wait_with_output().expect("wait for pyfpm request");
    let _ = feeder.join();
    let _ = watchdog.join();
    out
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn assert_exit(out: &Output, code: i32) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "expected exit {code}; stdout: {:?}; stderr: {:?}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

// ---- a scripted fake FastCGI application -------------------------------------------

const BEGIN_REQUEST: u8 = 1;
const END_REQUEST: u8 = 3;
const PARAMS: u8 = 4;
const STDIN: u8 = 5;
const STDOUT: u8 = 6;
const STDERR: u8 = 7;

/// What the fake application received.
#[derive(Debug, Default)]
struct Received {
    role: u16,
    flags: u8,
    params: Vec<(String, String)>,
    stdin: Vec<u8>,
}

impl Received {
    fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// One record, padded to a multiple of 8 as the specification suggests.
fn record(kind: u8, id: u16, content: &[u8]) -> Vec<u8> {
    let pad = (8 - content.len() % 8) % 8;
    let mut out = vec![
        1,
        kind,
        (id >> 8) as u8,
        id as u8,
        (content.len() >> 8) as u8,
        content.len() as u8,
        pad as u8,
        0,
    ];
    out.extend_from_slice(content);
    out.extend(std::iter::repeat_n(0, pad));
    out
}

/// A stream's records (chunked), without its end.
fn stream(kind: u8, data: &[u8]) -> Vec<u8> {
    data.chunks(65535)
        .flat_map(|c| record(kind, 1, c))
        .collect()
}

fn end_request(app_status: u32, protocol_status: u8) -> Vec<u8> {
    let mut body = app_status.to_be_bytes().to_vec();
    body.extend_from_slice(&[protocol_status, 0, 0, 0]);
    record(END_REQUEST, 1, &body)
}

/// A complete, well-formed response.
fn response(stdout: &[u8], stderr: &[u8]) -> Vec<u8> {
    let mut out = stream(STDERR, stderr);
    if !stderr.is_empty() {
        out.extend(record(STDERR, 1, b""));
    }
    out.extend(stream(STDOUT, stdout));
    out.extend(record(STDOUT, 1, b""));
    out.extend(end_request(0, 0));
    out
}

/// Decode name-value pairs by hand (1-byte or 4-byte lengths).
fn decode_pairs(mut raw: &[u8]) -> Vec<(String, String)> {
    fn len(raw: &mut &[u8]) -> usize {
        if raw[0] & 0x80 == 0 {
            let n = raw[0] as usize;
            *raw = &raw[1..];
            n
        } else {
            let n = u32::from_be_bytes([raw[0] & 0x7f, raw[1], raw[2], raw[3]]) as usize;
            *raw = &raw[4..];
            n
        }
    }
    let mut out = Vec::new();
    while !raw.is_empty() {
        let n = len(&mut raw);
        let v = len(&mut raw);
        let name = String::from_utf8_lossy(&raw[..n]).into_owned();
        let value = String::from_utf8_lossy(&raw[n..n + v]).into_owned();
        raw = &raw[n + v..];
        out.push((name, value));
    }
    out
}

/// Read records until the end of PARAMS (`upto_stdin == false`) or of STDIN.
fn read_request(conn: &mut impl Read, upto_stdin: bool) -> Received {
    let mut got = Received::default();
    let mut params = Vec::new();
    loop {
        let mut head = [0u8; 8];
        conn.read_exact(&mut head).expect("request header");
        assert_eq!(head[0], 1, "version");
        let id = u16::from_be_bytes([head[2], head[3]]);
        assert_eq!(id, 1, "request id");
        let len = u16::from_be_bytes([head[4], head[5]]) as usize;
        let mut content = vec![0u8; len + head[6] as usize];
        conn.read_exact(&mut content).expect("request content");
        content.truncate(len);
        match head[1] {
            BEGIN_REQUEST => {
                got.role = u16::from_be_bytes([content[0], content[1]]);
                got.flags = content[2];
            }
            PARAMS if len == 0 => {
                got.params = decode_pairs(&params);
                if !upto_stdin {
                    return got;
                }
            }
            PARAMS => params.extend_from_slice(&content),
            STDIN if len == 0 => return got,
            STDIN => got.stdin.extend_from_slice(&content),
            other => panic!("unexpected record type {other} from the client"),
        }
    }
}

/// A fake application on a fresh Unix socket that accepts one connection, reads the
/// request (`upto_stdin`: the whole of it, or only up to the params) and answers with
/// `reply(&received)`, then closes.
struct Fake {
    _dir: tempfile::TempDir,
    addr: String,
    handle: JoinHandle<Received>,
}

fn fake_unix(upto_stdin: bool, reply: impl FnOnce(&Received) -> Vec<u8> + Send + 'static) -> Fake {
    let dir = tempfile::Builder::new()
        .prefix("pyfpm-req-")
        .tempdir_in("/tmp")
        .unwrap();
    let path = dir.path().join("app.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let handle = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        conn.set_read_timeout(Some(RUN_LIMIT)).unwrap();
        let got = read_request(&mut conn, upto_stdin);
        let _ = conn.write_all(&reply(&got));
        got
    });
    Fake {
        addr: format!("unix:{}", path.display()),
        _dir: dir,
        handle,
    }
}

#[test]
fn sends_nginx_like_params_and_prints_the_body() {
    let fake = fake_unix(true, |_| {
        response(
            b"Status: 404 Not Found\r\nContent-Type: text/plain\r\n\r\nno such page\n",
            b"app warning\n",
        )
    });
    let out = pyfpm_request(&[&fake.addr, "/caf%C3%A9/x?a=1&b=2"], b"");
    let got = fake.handle.join().unwrap();
    assert_exit(&out, 0);
    assert_eq!(text(&out.stdout), "no such page\n");
    assert!(text(&out.stderr).contains("app warning"), "{out:?}");
    assert_eq!(got.role, 1, "responder");
    assert_eq!(got.flags, 0, "no keep-alive");
    assert!(got.stdin.is_empty());
    for (name, value) in [
        ("REQUEST_METHOD", "GET"),
        ("QUERY_STRING", "a=1&b=2"),
        ("SCRIPT_NAME", "/café/x"),
        ("DOCUMENT_URI", "/café/x"),
        ("REQUEST_URI", "/caf%C3%A9/x?a=1&b=2"),
        ("CONTENT_LENGTH", ""),
        ("CONTENT_TYPE", ""),
        ("SERVER_PROTOCOL", "HTTP/1.1"),
        ("GATEWAY_INTERFACE", "CGI/1.1"),
        ("HTTP_HOST", "localhost"),
        ("SERVER_PORT", "80"),
    ] {
        assert_eq!(got.param(name), Some(value), "{name} in {:?}", got.params);
    }
}

#[test]
fn post_body_headers_and_params() {
    let fake = fake_unix(true, |_| {
        response(b"Content-Type: text/plain\r\n\r\nok", b"")
    });
    let body = common::test_bytes(200_000, 7);
    let out = pyfpm_request(
        &[
            "-d",
            "@-",
            "-H",
            "Content-Type: application/octet-stream",
            "-H",
            "X-Forwarded-For: 10.0.0.1",
            "-p",
            "HTTPS=on",
            "-p",
            "DOCUMENT_ROOT",
            "-i",
            &fake.addr,
            "/upload",
        ],
        &body,
    );
    let got = fake.handle.join().unwrap();
    assert_exit(&out, 0);
    assert_eq!(text(&out.stdout), "Content-Type: text/plain\r\n\r\nok");
    assert_eq!(got.stdin, body);
    assert_eq!(got.param("REQUEST_METHOD"), Some("POST"));
    assert_eq!(got.param("CONTENT_LENGTH"), Some("200000"));
    assert_eq!(got.param("CONTENT_TYPE"), Some("application/octet-stream"));
    assert_eq!(got.param("HTTP_X_FORWARDED_FOR"), Some("10.0.0.1"));
    assert_eq!(got.param("HTTPS"), Some("on"));
    assert_eq!(got.param("DOCUMENT_ROOT"), None);
    assert_eq!(got.param("HTTP_CONTENT_TYPE"), None);
}

#[test]
fn a_5xx_exits_1_and_still_prints_the_body() {
    let fake = fake_unix(true, |_| {
        response(b"Status: 503 Service Unavailable\r\n\r\ndown\n", b"")
    });
    let out = pyfpm_request(&["--include", &fake.addr, "/"], b"");
    fake.handle.join().unwrap();
    assert_exit(&out, 1);
    assert_eq!(
        text(&out.stdout),
        "Status: 503 Service Unavailable\r\n\r\ndown\n"
    );
}

#[test]
fn an_early_answer_to_a_large_body_does_not_deadlock() {
    // The app answers after the params without reading the 8 MiB body: the client must
    // keep reading while it is still writing.
    let fake = fake_unix(false, |_| response(b"Status: 413 Too Large\r\n\r\n", b""));
    let body = vec![b'x'; 8 << 20];
    let out = pyfpm_request(&["--timeout", "20", "-d", "@-", &fake.addr], &body);
    fake.handle.join().unwrap();
    assert_exit(&out, 0);
}

#[test]
fn works_over_tcp() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let handle = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        conn.set_read_timeout(Some(RUN_LIMIT)).unwrap();
        read_request(&mut conn, true);
        conn.write_all(&response(b"\r\nHello over TCP", b""))
            .unwrap();
    });
    let out = pyfpm_request(&[&addr, "/hello"], b"");
    handle.join().unwrap();
    assert_exit(&out, 0);
    assert_eq!(text(&out.stdout), "Hello over TCP");
}

/// Run against a fake that answers `reply`; expect exit 2 and `needle` on stderr.
fn expect_failure(reply: Vec<u8>, needle: &str) {
    let fake = fake_unix(true, move |_| reply);
    let out = pyfpm_request(&["--timeout", "5", &fake.addr, "/"], b"");
    fake.handle.join().unwrap();
    assert_exit(&out, 2);
    let err = text(&out.stderr);
    assert!(err.starts_with("pyfpm request: "), "{err}");
    assert!(err.contains(&fake.addr), "names the address: {err}");
    assert!(err.contains(needle), "expected {needle:?} in {err:?}");
}

#[test]
fn a_rejected_request_exits_2_naming_the_status() {
    expect_failure(end_request(0, 3), "FCGI_UNKNOWN_ROLE");
    expect_failure(end_request(0, 2), "FCGI_OVERLOADED");
}

#[test]
fn protocol_failures_exit_2() {
    expect_failure(
        Vec::new(),
        "closed the connection before the end of the request",
    );
    expect_failure(end_request(0, 0), "without sending a response");
    expect_failure(
        b"HTTP/1.1 400 Bad Request\r\n\r\n".to_vec(),
        "broke the FastCGI protocol",
    );
    let mut unfinished = stream(STDOUT, b"Content-Type: text/plain\r\n");
    unfinished.extend(record(STDOUT, 1, b""));
    unfinished.extend(end_request(0, 0));
    expect_failure(unfinished, "ended inside the headers");
    let mut bad_status = stream(STDOUT, b"Status: fine\r\n\r\n");
    bad_status.extend(end_request(0, 0));
    expect_failure(bad_status, "invalid Status header");
}

#[test]
fn a_silent_application_times_out() {
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let path = dir.path().join("slow.sock");
    // Accepted by the kernel backlog, never answered.
    let _listener = UnixListener::bind(&path).unwrap();
    let addr = format!("unix:{}", path.display());
    let started = Instant::now();
    let out = pyfpm_request(&["--timeout", "0.5", &addr], b"");
    assert_exit(&out, 2);
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(text(&out.stderr).contains("within 0.5s"), "{out:?}");
}

#[test]
fn a_full_listen_backlog_times_out_instead_of_hanging() {
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let path = dir.path().join("full.sock");
    let listener = UnixListener::bind(&path).unwrap();
    nix::sys::socket::listen(&listener, nix::sys::socket::Backlog::new(0).unwrap()).unwrap();
    // Fill the backlog: non-blocking connects succeed until the kernel says EAGAIN.
    let mut held = Vec::new();
    let mut full = false;
    for _ in 0..16 {
        let fd = nix::sys::socket::socket(
            nix::sys::socket::AddressFamily::Unix,
            nix::sys::socket::SockType::Stream,
            nix::sys::socket::SockFlag::SOCK_NONBLOCK,
            None,
        )
        .unwrap();
        let addr = nix::sys::socket::UnixAddr::new(&path).unwrap();
        match nix::sys::socket::connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &addr) {
            Ok(()) => held.push(fd),
            Err(nix::errno::Errno::EAGAIN) => {
                full = true;
                break;
            }
            Err(e) => panic!("connect: {e}"),
        }
    }
    assert!(full, "the backlog never filled");
    let started = Instant::now();
    let out = pyfpm_request(&["--timeout", "0.5", &path.display().to_string()], b"");
    assert_exit(&out, 2);
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(text(&out.stderr).contains("within 0.5s"), "{out:?}");
}

#[test]
fn connection_failures_exit_2() {
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let missing = dir.path().join("missing.sock");
    let out = pyfpm_request(&[&missing.display().to_string()], b"");
    assert_exit(&out, 2);
    assert_eq!(
        text(&out.stderr).trim_end(),
        format!(
            "pyfpm request: cannot connect to unix:{}: No such file or directory",
            missing.display()
        )
    );

    let port = common::free_port();
    let out = pyfpm_request(&[&format!("127.0.0.1:{port}")], b"");
    assert_exit(&out, 2);
    assert!(text(&out.stderr).contains("Connection refused"), "{out:?}");
}

#[test]
fn bad_arguments_exit_64() {
    for args in [
        &["not-an-address"][..],
        &["-H", "nocolon", "/x.sock"],
        &["--timeout", "0", "/x.sock"],
    ] {
        let out = pyfpm_request(args, b"");
        assert_exit(&out, 64);
    }
    let out = pyfpm_request(&["-d", "@/nonexistent/body", "/x.sock"], b"");
    assert_exit(&out, 2);
    assert!(text(&out.stderr).contains("/nonexistent/body"), "{out:?}");
}

// ---- the real pyfpm ------------------------------------------------------------------

/// pyfpm serving tests/apps/errors.py on a Unix socket.
fn start_real(env: &common::TestEnv) -> (common::Pyfpm, String) {
    let sock = env.file("www.sock");
    let pool = common::Pool::new("www", "errors:application").listen(&sock.display().to_string());
    let p = env.start(&[pool], &common::fcgi::Addr::Unix(sock.clone()));
    (p, format!("unix:{}", sock.display()))
}

#[test]
fn health_check_against_real_pyfpm() {
    let env = common::TestEnv::new();
    let (mut pyfpm, addr) = start_real(&env);

    let out = pyfpm_request(&[&addr, "/fine"], b"");
    assert_exit(&out, 0);
    assert_eq!(text(&out.stdout), "ok");

    // The app raises: pyfpm answers 500, the health check fails with 1.
    let out = pyfpm_request(&["-i", &addr, "/raise"], b"");
    assert_exit(&out, 1);
    assert!(text(&out.stdout).contains("Status: 500"), "{out:?}");

    // A deliberate 503 from the app is a 5xx too.
    let out = pyfpm_request(&[&addr, "/replace"], b"");
    assert_exit(&out, 1);
    assert_eq!(text(&out.stdout), "replaced");

    // Not a socket any more once pyfpm is gone.
    pyfpm.stop();
    let out = pyfpm_request(&[&addr, "/fine"], b"");
    assert_exit(&out, 2);
    assert!(text(&out.stderr).contains("cannot connect to"), "{out:?}");
}
