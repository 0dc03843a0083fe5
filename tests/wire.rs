//! Worker behaviour on the wire: the real `pyfpm` binary serving the apps in tests/apps,
//! driven by a FastCGI client that sends what nginx sends, over a Unix socket and TCP.

mod common;

use bytes::BytesMut;
use common::fcgi::{self, Addr, CgiResponseExt as _, Conn, Request, ResponseExt as _};
use common::{Pool, Pyfpm, TestEnv, crc32, free_port, latin1, test_bytes};
use fastcgi::{
    ClientEvent, ProtocolStatus, RecordType, Role, encode_begin_request, encode_end_of_stream,
    encode_record, encode_stream, values,
};
use serde_json::Value;
use std::time::Duration;

/// A pyfpm serving one pool on a Unix socket and a loopback TCP port.
struct Server {
    // Field order matters: the process stops before its directory is removed.
    pyfpm: Pyfpm,
    addrs: Vec<Addr>,
    env: TestEnv,
}

fn serve_with(app: &str, children: u32, extra: &[&str]) -> Server {
    let env = TestEnv::new();
    let sock = env.file("www.sock");
    let port = free_port();
    let mut pool = Pool::new("www", app)
        .listen(&sock.display().to_string())
        .listen(&format!("127.0.0.1:{port}"))
        .children(children);
    for e in extra {
        pool = pool.with(e);
    }
    let unix = Addr::Unix(sock);
    let tcp = Addr::Tcp(format!("127.0.0.1:{port}").parse().unwrap());
    let mut pyfpm = env.start(&[pool], &unix);
    pyfpm.wait_serving(&tcp);
    Server {
        pyfpm,
        addrs: vec![unix, tcp],
        env,
    }
}

fn serve(app: &str) -> Server {
    serve_with(app, 1, &[])
}

fn environ(v: &Value) -> &serde_json::Map<String, Value> {
    v["environ"].as_object().expect("environ object")
}

fn env_str<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    environ(v).get(key).and_then(Value::as_str)
}

#[test]
fn get_with_query_string_and_pep3333_environ() {
    let s = serve("echo:application");
    for addr in &s.addrs {
        let r = fcgi::request(addr, &Request::get("/hello/world?a=1&b=%20x&c"));
        assert_eq!(r.status, 200, "{addr}");
        assert_eq!(r.header("Content-Type"), Some("application/json"));
        let v = r.json();
        assert_eq!(env_str(&v, "QUERY_STRING"), Some("a=1&b=%20x&c"));
        assert_eq!(env_str(&v, "REQUEST_METHOD"), Some("GET"));
        assert_eq!(env_str(&v, "SERVER_NAME"), Some("localhost"));
        assert_eq!(env_str(&v, "SERVER_PORT"), Some("80"));
        assert_eq!(env_str(&v, "SERVER_PROTOCOL"), Some("HTTP/1.1"));
        assert_eq!(env_str(&v, "REMOTE_ADDR"), Some("127.0.0.1"));
        assert_eq!(env_str(&v, "HTTP_HOST"), Some("localhost"));
        assert_eq!(
            env_str(&v, "REQUEST_URI"),
            Some("/hello/world?a=1&b=%20x&c")
        );
        assert_eq!(v["wsgi"]["version"], serde_json::json!([1, 0]));
        assert_eq!(v["wsgi"]["url_scheme"], "http");
        assert_eq!(v["wsgi"]["multiprocess"], true);
        assert_eq!(v["wsgi"]["multithread"], false);
        assert_eq!(v["wsgi"]["run_once"], false);
        assert_eq!(
            v["wsgi"]["input_has"],
            serde_json::json!(["read", "readline", "readlines", "__iter__"])
        );
        assert_eq!(
            v["wsgi"]["errors_has"],
            serde_json::json!(["write", "writelines", "flush"])
        );
        assert_eq!(v["wsgi"]["file_wrapper"], true);
        // PEP 3333: the CGI keys are native strings, never bytes.
        let non_str: Vec<&str> = v["non_str"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_str().unwrap())
            .collect();
        assert!(
            non_str.iter().all(|k| k.contains('.')),
            "non-str environ values outside wsgi.*: {non_str:?}"
        );
    }
}

#[test]
fn fcgi_role_is_set_from_begin_request() {
    let s = serve("echo:application");
    for addr in &s.addrs {
        let v = fcgi::request(addr, &Request::get("/")).json();
        assert_eq!(env_str(&v, "FCGI_ROLE"), Some("RESPONDER"), "{addr}");
    }
}

#[test]
fn post_bodies_of_every_size_arrive_intact() {
    let s = serve("echo:application");
    for addr in &s.addrs {
        for (i, size) in [0usize, 1, 64 * 1024 + 1, 8 * 1024 * 1024]
            .into_iter()
            .enumerate()
        {
            let body = test_bytes(size, i as u64 + 7);
            let r = fcgi::request(addr, &fcgi::post("/upload", body.clone()));
            assert_eq!(r.status, 200, "{addr} size {size}");
            let v = r.json();
            assert_eq!(v["body_len"], size as u64, "{addr} size {size}");
            assert_eq!(v["body_crc32"], crc32(&body) as u64, "{addr} size {size}");
            assert_eq!(env_str(&v, "REQUEST_METHOD"), Some("POST"));
            if size > 0 {
                assert_eq!(
                    env_str(&v, "CONTENT_LENGTH"),
                    Some(size.to_string().as_str())
                );
                assert_eq!(
                    env_str(&v, "CONTENT_TYPE"),
                    Some("application/octet-stream")
                );
            }
        }
    }
}

#[test]
fn body_without_content_length_is_read_to_end_of_stdin() {
    let s = serve("echo:application");
    let body = test_bytes(100_000, 3);
    for addr in &s.addrs {
        // No CONTENT_LENGTH at all (how Apache relays a chunked upload), in small records.
        let mut req = fcgi::post("/chunked", body.clone()).remove_param("CONTENT_LENGTH");
        req.stdin_record_len = 1000;
        let v = fcgi::request(addr, &req).json();
        assert_eq!(
            v["body_len"],
            body.len() as u64,
            "{addr}: no CONTENT_LENGTH"
        );
        assert_eq!(v["body_crc32"], crc32(&body) as u64, "{addr}");

        // An empty CONTENT_LENGTH (nginx's `$content_length` when the client sent none).
        let req = fcgi::post("/chunked", body.clone()).param("CONTENT_LENGTH", b"");
        let v = fcgi::request(addr, &req).json();
        assert_eq!(
            v["body_len"],
            body.len() as u64,
            "{addr}: empty CONTENT_LENGTH"
        );
        assert_eq!(v["body_crc32"], crc32(&body) as u64, "{addr}");
    }
}

#[test]
fn wsgi_input_readline_readlines_and_iteration() {
    let s = serve("lines:application");
    let body = b"one\ntwo\n\nthree".to_vec();
    let lines = ["one\n", "two\n", "\n", "three"];
    let cases: Vec<(&str, Vec<&str>)> = vec![
        ("readline", lines.to_vec()),
        ("iter", lines.to_vec()),
        ("readlines", lines.to_vec()),
        ("sized", vec!["one\n", "two\n", "\n", "thre", "e"]),
        ("mixed", vec!["one", "\n", "two\n\nthree", ""]),
    ];
    for addr in &s.addrs {
        for (mode, want) in &cases {
            // Tiny STDIN records: lines straddle record boundaries.
            let mut req = fcgi::post(&format!("/lines?mode={mode}"), body.clone());
            req.stdin_record_len = 3;
            let v = fcgi::request(addr, &req).json();
            let got: Vec<&str> = v["pieces"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p.as_str().unwrap())
                .collect();
            assert_eq!(&got, want, "{addr} mode {mode}");
            assert_eq!(
                v["types"],
                serde_json::json!(["bytes"]),
                "{addr} mode {mode}"
            );
        }
    }
}

#[test]
fn non_ascii_path_arrives_latin1_decoded() {
    let s = serve("echo:application");
    let raw: &[u8] = "/café/€ x".as_bytes();
    let uri = "/caf%C3%A9/%E2%82%AC%20x";
    for addr in &s.addrs {
        let v = fcgi::request(addr, &Request::get(uri)).json();
        let path_info = env_str(&v, "PATH_INFO").unwrap();
        // One code point per byte of the UTF-8 path, as PEP 3333 requires.
        assert_eq!(path_info, latin1(raw), "{addr}");
        assert_eq!(
            path_info.chars().map(|c| c as u32).collect::<Vec<_>>(),
            raw.iter().map(|&b| b as u32).collect::<Vec<_>>()
        );
        assert_eq!(v["path_info_utf8"], "/café/€ x");
        assert_eq!(env_str(&v, "SCRIPT_NAME"), Some(""));
        assert_eq!(
            env_str(&v, "REQUEST_URI"),
            Some(uri),
            "REQUEST_URI is passed through as sent"
        );
    }
}

#[test]
fn stock_params_give_empty_script_name_and_full_path_info() {
    let s = serve("echo:application");
    for addr in &s.addrs {
        for path in ["/", "/a", "/a/b/c.txt", "/index.php/x"] {
            let v = fcgi::request(addr, &Request::get(path)).json();
            assert_eq!(env_str(&v, "SCRIPT_NAME"), Some(""), "{addr} {path}");
            assert_eq!(env_str(&v, "PATH_INFO"), Some(path), "{addr} {path}");
        }
    }
}

#[test]
fn mount_prefix_splits_script_name_and_path_info() {
    let s = serve_with("echo:application", 1, &["mount: \"/app\""]);
    for addr in &s.addrs {
        for (path, sn, pi) in [
            ("/app/x/y", "/app", "/x/y"),
            ("/app/", "/app", "/"),
            ("/app", "/app", ""),
        ] {
            let v = fcgi::request(addr, &Request::get(path)).json();
            assert_eq!(env_str(&v, "SCRIPT_NAME"), Some(sn), "{addr} {path}");
            assert_eq!(env_str(&v, "PATH_INFO"), Some(pi), "{addr} {path}");
        }
    }
}

#[test]
fn http_proxy_header_is_dropped() {
    let s = serve("echo:application");
    for addr in &s.addrs {
        let req = Request::get("/")
            .header("Proxy", "http://evil.example:8080")
            .header("X-Other", "kept");
        let v = fcgi::request(addr, &req).json();
        assert_eq!(env_str(&v, "HTTP_PROXY"), None, "{addr}: httpoxy");
        assert_eq!(env_str(&v, "HTTP_X_OTHER"), Some("kept"));
    }
}

#[test]
fn url_scheme_follows_https_and_request_scheme() {
    let s = serve("echo:application");
    for addr in &s.addrs {
        let v = fcgi::request(addr, &Request::get("/").param("HTTPS", b"on")).json();
        assert_eq!(v["wsgi"]["url_scheme"], "https", "{addr}: HTTPS=on");
        let req = Request::get("/").param("REQUEST_SCHEME", "https");
        let v = fcgi::request(addr, &req).json();
        assert_eq!(
            v["wsgi"]["url_scheme"], "https",
            "{addr}: REQUEST_SCHEME=https"
        );
        let v = fcgi::request(addr, &Request::get("/")).json();
        assert_eq!(v["wsgi"]["url_scheme"], "http", "{addr}: plain");
    }
}

#[test]
fn duplicate_request_headers_are_combined() {
    // nginx before 1.23 (Debian bookworm ships 1.22) sends a repeated header as repeated
    // HTTP_* params; the app must see both values, in order. The client joins repeated
    // headers the way nginx 1.23+ does, so the repeated params are set directly.
    let s = serve("echo:application");
    for addr in &s.addrs {
        let req = Request::get("/")
            .param("HTTP_X_DUP", "a")
            .param("HTTP_X_DUP", "b");
        let v = fcgi::request(addr, &req).json();
        let dup = env_str(&v, "HTTP_X_DUP").expect("HTTP_X_DUP present");
        let parts: Vec<&str> = dup.split(',').map(str::trim).collect();
        assert_eq!(parts, ["a", "b"], "{addr}: HTTP_X_DUP={dup:?}");
    }
}

#[test]
fn duplicate_response_headers_and_set_cookies_keep_their_order() {
    let s = serve("echo:application");
    for addr in &s.addrs {
        let r = fcgi::request(
            addr,
            &Request::get("/?header=X-Multi:1&header=X-Multi:2&cookies=3"),
        );
        assert_eq!(r.all("X-Multi"), ["1", "2"], "{addr}");
        assert_eq!(
            r.all("Set-Cookie"),
            ["c0=v0; Path=/", "c1=v1; Path=/", "c2=v2; Path=/"],
            "{addr}"
        );
    }
}

#[test]
fn arbitrary_status_codes_pass_through() {
    let s = serve("echo:application");
    for addr in &s.addrs {
        for code in [204u16, 404, 418, 599] {
            let r = fcgi::request(addr, &Request::get(&format!("/?status={code}")));
            assert_eq!(r.status, code, "{addr}");
            if code == 204 {
                assert!(r.body.is_empty(), "204 with a body");
            } else {
                assert_eq!(r.json()["body_len"], 0);
            }
        }
        let r = fcgi::request(addr, &Request::get("/?status=418"));
        assert_eq!(r.reason, "I'm a teapot");
    }
}

#[test]
fn streamed_response_is_sent_before_the_app_finishes() {
    let s = serve("stream:application");
    for (i, addr) in s.addrs.iter().enumerate() {
        let gate = s.env.file(&format!("gate{i}"));
        let mut c = Conn::connect(addr).unwrap();
        let req = Request::get(&format!("/?gate={}", gate.display()));
        c.send(&req.encode()).unwrap();
        // The app blocks after its first chunk until the gate exists: the first chunk can
        // only arrive here if the worker streams instead of buffering the body.
        let mut stdout = Vec::new();
        while !String::from_utf8_lossy(&stdout).contains("first;") {
            match c.next_event().unwrap() {
                Some(ClientEvent::Stdout { data, .. }) => {
                    assert!(!data.is_empty(), "STDOUT ended before the first chunk");
                    stdout.extend_from_slice(&data)
                }
                Some(ClientEvent::Stderr { .. }) => {}
                other => panic!("{addr}: expected the first chunk, got {other:?}"),
            }
        }
        std::fs::write(&gate, b"go").unwrap();
        let rest = c.read_response(1).unwrap();
        assert!(rest.completed(), "{addr}");
        stdout.extend_from_slice(&rest.stdout);
        let cgi = fcgi::CgiResponse::parse(&stdout).unwrap();
        assert_eq!(cgi.status, 200);
        assert_eq!(
            String::from_utf8_lossy(&cgi.body),
            "first;chunk1;chunk2;chunk3;",
            "{addr}"
        );
    }
}

#[test]
fn head_response_has_no_body() {
    let s = serve("echo:application");
    for addr in &s.addrs {
        let r = fcgi::request(addr, &Request::get("/").method("HEAD"));
        assert_eq!(r.status, 200, "{addr}");
        assert_eq!(r.header("Content-Type"), Some("application/json"));
        assert!(
            r.body.is_empty(),
            "{addr}: HEAD body {:?}",
            String::from_utf8_lossy(&r.body)
        );
    }
}

#[test]
fn a_large_one_piece_body_arrives_whole_and_head_gets_only_the_headers() {
    // Bodies of 16 KiB and more leave straight from the app's bytes object with the
    // request's last records: around that size, around a record (65535) and beyond
    // the socket buffer, so the vectored write continues after partial writes.
    let s = serve("blob:application");
    let pattern = |n: usize| (0..n).map(|i| (i % 251) as u8).collect::<Vec<u8>>();
    for addr in &s.addrs {
        for n in [100, 16383, 16384, 65535, 65536, 131071, 131072, 700_001] {
            let r = fcgi::request(addr, &Request::get(&format!("/?n={n}")));
            assert_eq!(r.status, 200, "{addr} n={n}");
            assert_eq!(r.header("Content-Length"), Some(n.to_string().as_str()));
            assert!(r.body == pattern(n), "{addr} n={n}: body differs");
            let head = fcgi::request(addr, &Request::get(&format!("/?n={n}")).method("HEAD"));
            assert_eq!(head.status, 200, "{addr} HEAD n={n}");
            assert_eq!(head.header("Content-Length"), Some(n.to_string().as_str()));
            assert!(head.body.is_empty(), "{addr} HEAD n={n} has a body");
        }
        // No start_response: a 500, whatever the body's size, and the worker serves on.
        for n in [100, 70_000] {
            let r = fcgi::request(addr, &Request::get(&format!("/?n={n}&nostart=1")));
            assert_eq!(r.status, 500, "{addr} nostart n={n}");
        }
        assert_eq!(fcgi::request(addr, &Request::get("/?n=20000")).status, 200);
    }
}

fn pid_of(addr: &Addr) -> String {
    let r = fcgi::request(addr, &Request::get("/"));
    assert_eq!(r.status, 200);
    r.header("X-Pid").expect("X-Pid header").to_string()
}

#[test]
fn app_exception_gives_500_and_the_worker_keeps_serving() {
    let s = serve("errors:application");
    for addr in &s.addrs {
        let before = pid_of(addr);
        let r = fcgi::request(addr, &Request::get("/raise"));
        assert_eq!(r.status, 500, "{addr}");
        assert!(
            !String::from_utf8_lossy(&r.body).contains("pyfpm-test-exception-marker"),
            "the traceback must not leak to the client"
        );
        // A new connection is served by the same (surviving) worker.
        assert_eq!(pid_of(addr), before, "{addr}: the worker was replaced");
    }
    s.pyfpm
        .wait_log("pyfpm-test-exception-marker", Duration::from_secs(10));
}

#[test]
fn bad_status_non_bytes_body_and_double_start_response_give_500() {
    let s = serve("errors:application");
    for addr in &s.addrs {
        let before = pid_of(addr);
        for path in ["/bad-status", "/non-bytes", "/twice"] {
            let r = fcgi::request(addr, &Request::get(path));
            assert_eq!(r.status, 500, "{addr} {path}");
            assert!(
                !String::from_utf8_lossy(&r.body).contains("should not be sent"),
                "{addr} {path}"
            );
        }
        assert_eq!(pid_of(addr), before, "{addr}: the worker was replaced");
    }
}

#[test]
fn headers_after_body_cut_the_response_and_the_worker_survives() {
    // The first chunk is already on the wire when the app calls start_response again, so
    // no 500 is possible: the response must end without the rest, and serving goes on.
    let s = serve("errors:application");
    for addr in &s.addrs {
        let before = pid_of(addr);
        let r = fcgi::request_raw(addr, &Request::get("/headers-after-body"));
        let out = String::from_utf8_lossy(&r.stdout).into_owned();
        // A truncated body must not be passed off as a complete response.
        assert!(
            !r.completed(),
            "{addr}: truncated response ended normally: {out:?}"
        );
        assert!(!out.contains("should not be sent"), "{addr}: {out:?}");
        assert!(!out.contains("X-Late"), "{addr}: {out:?}");
        assert_eq!(pid_of(addr), before, "{addr}: the worker was replaced");
    }
}

#[test]
fn write_callable_and_exc_info_replacement() {
    let s = serve("errors:application");
    for addr in &s.addrs {
        let r = fcgi::request(addr, &Request::get("/write"));
        assert_eq!(r.status, 200);
        assert_eq!(r.body, b"hello world", "{addr}");
        let r = fcgi::request(addr, &Request::get("/replace"));
        assert_eq!(r.status, 503, "{addr}: exc_info may replace unsent headers");
        assert_eq!(r.body, b"replaced");
    }
}

fn wait_marker(path: &std::path::Path, what: &str) {
    assert!(
        common::wait_until(Duration::from_secs(15), || path.exists()),
        "close() was not called on the result iterable ({what})"
    );
}

#[test]
fn close_is_always_called_on_the_result() {
    let s = serve("stream:application");
    for (i, addr) in s.addrs.iter().enumerate() {
        // Normal completion.
        let m = s.env.file(&format!("m-ok-{i}"));
        let r = fcgi::request(addr, &Request::get(&format!("/?marker={}", m.display())));
        assert_eq!(r.body, b"first;chunk1;chunk2;chunk3;");
        wait_marker(&m, "normal completion");

        // The iterable raises half-way.
        let m = s.env.file(&format!("m-fail-{i}"));
        let r = fcgi::request_raw(
            addr,
            &Request::get(&format!("/?fail_at=2&marker={}", m.display())),
        );
        assert!(!String::from_utf8_lossy(&r.stdout).contains("chunk2"));
        assert!(!r.completed(), "{addr}: truncated response ended normally");
        wait_marker(&m, "exception during iteration");

        // The client goes away mid-response.
        let m = s.env.file(&format!("m-gone-{i}"));
        let gate = s.env.file(&format!("g-gone-{i}"));
        let mut c = Conn::connect(addr).unwrap();
        c.send(
            &Request::get(&format!(
                "/?chunks=50&gate={}&marker={}",
                gate.display(),
                m.display()
            ))
            .encode(),
        )
        .unwrap();
        match c.next_event().unwrap() {
            Some(ClientEvent::Stdout { .. }) => {}
            other => panic!("expected STDOUT, got {other:?}"),
        }
        drop(c);
        std::fs::write(&gate, b"go").unwrap();
        wait_marker(&m, "client disconnected");

        // And the worker still serves.
        let r = fcgi::request(addr, &Request::get("/?chunks=1"));
        assert_eq!(r.body, b"first;chunk1;");
    }
}

#[test]
fn keep_conn_serves_several_requests_on_one_connection() {
    let s = serve("echo:application");
    for addr in &s.addrs {
        let mut c = Conn::connect(addr).unwrap();
        for n in 0..3 {
            let req = fcgi::post(&format!("/k{n}"), vec![b'x'; n * 100]).keep_conn(true);
            let r = c.request(&req).unwrap();
            assert!(r.completed(), "{addr}: request {n} on the kept connection");
            let v = r.cgi().json();
            assert_eq!(env_str(&v, "PATH_INFO"), Some(format!("/k{n}").as_str()));
            assert_eq!(v["body_len"], (n * 100) as u64);
        }
        // The last one without the flag: the server closes after END_REQUEST.
        let r = c.request(&Request::get("/last")).unwrap();
        assert!(r.completed());
        c.expect_closed(Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("{addr}: without FCGI_KEEP_CONN: {e}"));
    }
}

/// A small deterministic generator (xorshift64*), so that a failing sequence repeats.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % n
    }

    fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        from[self.below(from.len())]
    }
}

/// The environ is a function of the request's params alone. The worker reuses strs and
/// whole environ templates from one request to the next (crates/worker/src/wsgi/
/// environ.rs); none of that may let one request's values show in another's. Requests
/// of many shapes (headers present or not, GET and POST, params left out, a repeated
/// header, a name too long to cache, credentials, values too long to remember, an
/// authorizer's request), four
/// requests of each with values drawn from small pools, so that values repeat, change
/// length and come back, go over one kept connection to one worker in three orders
/// (grouped by shape, shuffled, grouped in reverse), each twice in a row. Each answer's
/// environ must equal the one the same request got the first time, and hold what was
/// sent.
#[test]
fn environ_depends_on_the_request_alone() {
    let s = serve("echo:application");
    let long = "q".repeat(200);
    let long_query = format!("/a?{long}");
    let long_path = format!("/{long}");
    let long_name = format!("X-{}", "N".repeat(70));
    let uris = [
        "/a",
        "/a?x=1",
        "/bb/c?x=22",
        "/a?x=2",
        "/%C3%A9t%C3%A9",
        &long_query,
        &long_path,
    ];
    // PATH_INFO of each: the decoded path, its bytes as latin-1.
    let paths = [
        "/a",
        "/a",
        "/bb/c",
        "/a",
        &latin1("/été".as_bytes()),
        "/a",
        &long_path,
    ];
    let values = ["v1", "v22", "", &long];
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut requests = Vec::new();
    let headers = [
        ("Accept", "HTTP_ACCEPT"),
        ("Cookie", "HTTP_COOKIE"),
        ("Authorization", "HTTP_AUTHORIZATION"),
        ("X-Custom", "HTTP_X_CUSTOM"),
    ];
    // Ten shapes (method, headers, one odd param: every one of them), four requests of
    // each whose values differ.
    let shapes: Vec<_> = (0..10)
        .map(|n| {
            let post = n % 3 == 0;
            let present: Vec<_> = headers.iter().filter(|_| rng.below(2) == 0).collect();
            // The POSTs of a shape go to one URI: only their bodies differ. The CGI-split
            // variant's URI is a short one: its whole path is its only long value.
            let uri = match (post, n % 9) {
                (_, 6) => Some(rng.below(4)),
                (true, _) => Some(rng.below(uris.len())),
                _ => None,
            };
            (post, present, n % 9, uri)
        })
        .collect();
    for (post, present, variant, uri) in shapes.iter().flat_map(|s| [s, s, s, s]) {
        let method = if *post { "POST" } else { "GET" };
        let u = uri.unwrap_or_else(|| rng.below(uris.len()));
        let mut req = Request::new(method, uris[u]);
        let mut path = paths[u].to_string();
        let mut sent: Vec<(String, String)> = vec![("REQUEST_METHOD".into(), method.into())];
        // What the app reads: the body, cut at a CONTENT_LENGTH shorter than it.
        let mut body_len = 0;
        if *post {
            body_len = rng.below(3) * 7;
            let ctype = rng.pick(&["text/plain", "application/json"]);
            req = req.header("Content-Type", ctype).body(vec![b'x'; body_len]);
            if body_len > 0 && rng.below(2) == 0 {
                body_len -= 2;
                req = req.header("Content-Length", &body_len.to_string());
            }
            sent.push(("CONTENT_TYPE".into(), ctype.into()));
            sent.push(("CONTENT_LENGTH".into(), body_len.to_string()));
        }
        for (header, var) in present {
            let value = rng.pick(&values);
            req = req.header(header, value);
            sent.push((var.to_string(), value.into()));
        }
        // The role is no param: the same params come as an authorizer's request too.
        let role = if rng.below(4) == 0 {
            // Sent without its body, as an authorizer's request is.
            req.role = Role::Authorizer;
            body_len = 0;
            "AUTHORIZER"
        } else {
            "RESPONDER"
        };
        sent.push(("FCGI_ROLE".into(), role.into()));
        let port = rng.pick(&["1", "12345", "54321"]);
        req = req.param("REMOTE_PORT", port);
        sent.push(("REMOTE_PORT".into(), port.into()));
        match variant {
            0 => req = req.remove_param("SERVER_NAME").remove_param("SERVER_PORT"),
            1 => req = req.param("HTTPS", "on"),
            2 => req = req.param("HTTP_PROXY", "http://evil.example"),
            3 => req = req.param("HTTP_X_DUP", "a").param("HTTP_X_DUP", "b"),
            4 => req = req.header(&long_name, "long name"),
            5 => req = req.remove_param("QUERY_STRING"),
            6 => {
                // Split the CGI way, each part short, the whole path long.
                let (script, info) = (format!("/{}", &long[..100]), format!("/{}", &long[..90]));
                path = format!("{script}{info}");
                req = req.param("SCRIPT_NAME", &script).param("PATH_INFO", &info);
            }
            _ => {}
        }
        let query = match req.params().iter().any(|(k, _)| k == b"QUERY_STRING") {
            true => uris[u].split_once('?').map_or("", |(_, q)| q),
            false => "",
        };
        sent.push(("QUERY_STRING".into(), query.into()));
        sent.push(("PATH_INFO".into(), path));
        sent.push(("SCRIPT_NAME".into(), String::new()));
        sent.push(("body_len".into(), body_len.to_string()));
        requests.push((req.keep_conn(true), sent));
    }
    for addr in &s.addrs {
        let mut c = Conn::connect(addr).unwrap();
        let mut first: Vec<Option<Value>> = vec![None; requests.len()];
        let mut order: Vec<usize> = (0..requests.len()).collect();
        // Grouped by shape, shuffled, then grouped again in reverse.
        for round in 0..3 {
            match round {
                1 => {
                    for i in (1..order.len()).rev() {
                        order.swap(i, rng.below(i + 1));
                    }
                }
                2 => order = (0..requests.len()).rev().collect(),
                _ => {}
            }
            // Each one twice in a row: the second finds the template the first left.
            for i in order.iter().flat_map(|&i| [i, i]) {
                let (req, sent) = &requests[i];
                let r = c.request(req).unwrap();
                assert!(r.completed(), "{addr}: request {i}");
                let v = r.cgi().json();
                let got = serde_json::json!({"environ": v["environ"], "non_str": v["non_str"]});
                for (var, value) in sent {
                    let got = match var.as_str() {
                        "body_len" => Some(v["body_len"].to_string()),
                        _ => env_str(&v, var).map(String::from),
                    };
                    assert_eq!(
                        got.as_deref(),
                        Some(value.as_str()),
                        "{addr}: round {round}, request {i}: {var}"
                    );
                }
                assert_eq!(env_str(&v, "HTTP_PROXY"), None, "{addr}: request {i}");
                match &first[i] {
                    None => first[i] = Some(got),
                    Some(want) => assert_eq!(
                        &got, want,
                        "{addr}: round {round}: request {i} got another environ than the first time"
                    ),
                }
            }
        }
    }
}

/// The worker reuses a request's wsgi.input, wsgi.errors and start_response for the
/// next request, but only when the app kept none of them: objects an app stored stay
/// bound to their own, finished request, and a stale `write` never reaches the current
/// response.
#[test]
fn objects_an_app_keeps_stay_with_their_request() {
    let s = serve("keeper:application");
    let ids = |r: &fcgi::CgiResponse| r.json()["ids"].clone();
    for addr in &s.addrs {
        let first = fcgi::request(addr, &Request::get("/plain"));
        let second = fcgi::request(addr, &Request::get("/plain"));
        assert_eq!(
            ids(&first),
            ids(&second),
            "{addr}: unkept objects are reused"
        );
        let kept = fcgi::request(addr, &Request::get("/keep"));
        assert_eq!(kept.status, 200, "{addr}");
        let r = fcgi::request(addr, &Request::get("/stale"));
        assert_eq!(r.status, 200, "{addr}");
        let v = r.json();
        for key in ["same_input", "same_errors", "same_start"] {
            assert_eq!(v[key], false, "{addr}: {key}: {v}");
        }
        assert_ne!(v["write"], "ok", "{addr}: a finished request's write: {v}");
        assert_ne!(v["ids"], ids(&kept), "{addr}");
        // The write callable alone kept: start_response is not reused either, since
        // it returns the same write.
        fcgi::request(addr, &Request::get("/keep?only=write"));
        let v = fcgi::request(addr, &Request::get("/stale")).json();
        assert_ne!(v["write"], "ok", "{addr}: a finished request's write: {v}");
        let after = fcgi::request(addr, &Request::get("/plain"));
        assert_eq!(after.status, 200, "{addr}");
    }
}

/// A record sent right behind a request whose bytes end exactly where the worker's read
/// of them ends (64 KiB): after the response nothing new arrives to wake the worker, so
/// it must read on before it goes back to waiting. What follows is FCGI_GET_VALUES, which
/// a client may send at any time; a second BEGIN_REQUEST for the same id would not do,
/// since the id is still active until its END_REQUEST (FastCGI 1.0, section 3.3).
#[test]
fn a_record_sent_behind_a_request_that_fills_a_whole_read_is_answered() {
    const READ_CHUNK: usize = 64 * 1024;
    let s = serve("echo:application");
    let first = (READ_CHUNK - 2048..READ_CHUNK)
        .rev()
        .map(|len| fcgi::post("/fills-the-read", vec![b'f'; len]).keep_conn(true))
        .find(|r| r.encode().len() == READ_CHUNK)
        .expect("a body length that makes the request exactly 64 KiB");
    for addr in &s.addrs {
        let mut c = Conn::connect(addr).unwrap();
        // The connection is held, waiting for its next request, before both arrive.
        let r = c.request(&Request::get("/warm").keep_conn(true)).unwrap();
        assert!(r.completed(), "{addr}");
        let mut both = first.encode();
        fastcgi::encode_get_values(&mut both, [values::FCGI_MPXS_CONNS]);
        c.send(&both).unwrap();
        let (mut stdout, mut ended, mut values) = (Vec::new(), false, None);
        while !ended || values.is_none() {
            match c.next_event() {
                Ok(Some(ClientEvent::Stdout { request_id, data })) => {
                    assert_eq!(request_id, first.request_id, "{addr}");
                    stdout.extend_from_slice(&data);
                }
                Ok(Some(ClientEvent::EndRequest { request_id, .. })) => {
                    assert_eq!(request_id, first.request_id, "{addr}");
                    ended = true;
                }
                Ok(Some(ClientEvent::GetValuesResult { values: v })) => values = Some(v),
                other => panic!(
                    "{addr}: ended {ended}, values {}: {other:?}",
                    values.is_some()
                ),
            }
        }
        let v = fcgi::CgiResponse::parse(&stdout).unwrap().json();
        assert_eq!(env_str(&v, "PATH_INFO"), Some("/fills-the-read"), "{addr}");
        let values = values.unwrap();
        assert_eq!(values.len(), 1, "{addr}: {values:?}");
        assert_eq!(values[0].0, values::FCGI_MPXS_CONNS, "{addr}");
        // The connection still serves requests afterwards.
        let r = c.request(&Request::get("/after").keep_conn(true)).unwrap();
        assert!(r.completed(), "{addr}");
    }
}

#[test]
fn without_keep_conn_the_server_closes_after_end_request() {
    let s = serve("echo:application");
    for addr in &s.addrs {
        let mut c = Conn::connect(addr).unwrap();
        let r = c.request(&Request::get("/once")).unwrap();
        assert!(r.completed(), "{addr}");
        let extra = c
            .expect_closed(Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("{addr}: {e}"));
        assert!(extra.is_empty(), "{addr}: bytes after END_REQUEST");
    }
}

#[test]
fn get_values_is_answered_truthfully() {
    let s = serve_with("echo:application", 2, &[]);
    for addr in &s.addrs {
        let mut c = Conn::connect(addr).unwrap();
        let v = c.get_values(&[
            values::FCGI_MAX_CONNS,
            values::FCGI_MAX_REQS,
            values::FCGI_MPXS_CONNS,
        ]);
        assert_eq!(
            fcgi::value(&v, values::FCGI_MPXS_CONNS),
            Some("0"),
            "{addr}"
        );
        // Two workers plus the manager's parking capacity (pyfpm::manager::parking).
        assert_eq!(
            fcgi::value(&v, values::FCGI_MAX_CONNS),
            Some("4098"),
            "{addr}"
        );
        assert_eq!(fcgi::value(&v, values::FCGI_MAX_REQS), Some("2"), "{addr}");
    }
}

#[test]
fn unknown_record_type_is_answered_and_the_connection_still_serves() {
    let s = serve("echo:application");
    for addr in &s.addrs {
        let mut c = Conn::connect(addr).unwrap();
        let mut out = BytesMut::new();
        encode_record(&mut out, RecordType::Other(42), 0, &[0u8; 8]);
        c.send(&out).unwrap();
        match c.next_event().unwrap() {
            Some(ClientEvent::UnknownType { record_type }) => assert_eq!(record_type, 42),
            other => panic!("{addr}: expected UNKNOWN_TYPE, got {other:?}"),
        }
        let r = c.request(&Request::get("/after-unknown")).unwrap();
        assert!(r.completed(), "{addr}");
        assert_eq!(r.cgi().status, 200);
    }
}

#[test]
fn unknown_role_is_refused_with_unknown_role() {
    let s = serve("echo:application");
    for addr in &s.addrs {
        let mut req = Request::get("/");
        req.role = Role::Other(99);
        let r = fcgi::request_raw(addr, &req);
        assert_eq!(
            r.protocol_status,
            Some(ProtocolStatus::UnknownRole),
            "{addr}: stdout {:?}",
            String::from_utf8_lossy(&r.stdout)
        );
        assert!(r.stdout.is_empty(), "{addr}: the app must not run");
        assert_eq!(fcgi::request(addr, &Request::get("/")).status, 200);
    }
}

/// Send `bad`, expect the server to close the connection, then check the same worker
/// (max_children 1) still serves a good request.
fn assert_rejected_and_worker_survives(s: &Server, what: &str, bad: &[u8], half_close: bool) {
    // half_close: close our sending side after the bytes, like a client that goes away.
    for addr in &s.addrs {
        let pid = fcgi::request(addr, &Request::get("/")).json()["pid"].clone();
        let mut c = Conn::connect(addr).unwrap();
        // From a thread: a server that stops reading must not block the test. The
        // thread is left to end with the connection.
        let writer = c.send_bg(bad.to_vec());
        if half_close {
            let _ = writer.join();
            c.shutdown_write();
        }
        let got = c
            .expect_closed(Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("{addr}: {what}: {e}"));
        assert!(
            // The echo JSON's key: the app must not have run.
            !String::from_utf8_lossy(&got).contains("\"environ\""),
            "{addr}: {what}: the bad request was served"
        );
        let after = fcgi::request(addr, &Request::get("/")).json()["pid"].clone();
        assert_eq!(after, pid, "{addr}: {what}: the worker did not survive");
    }
}

#[test]
fn malformed_random_garbage_closes_the_connection() {
    let s = serve("echo:application");
    let mut junk = test_bytes(512, 99);
    junk[0] = 0x47; // never version 1
    assert_rejected_and_worker_survives(&s, "garbage", &junk, false);
    assert_rejected_and_worker_survives(&s, "an HTTP request", b"GET / HTTP/1.1\r\n\r\n", false);
}

#[test]
fn malformed_wrong_version_closes_the_connection() {
    let s = serve("echo:application");
    let mut bytes = Request::get("/").encode();
    bytes[0] = 2;
    assert_rejected_and_worker_survives(&s, "version 2", &bytes, false);
}

#[test]
fn malformed_truncated_record_then_close() {
    let s = serve("echo:application");
    let full = Request::get("/").encode();
    // BEGIN_REQUEST (16 bytes) plus part of the PARAMS record.
    assert_rejected_and_worker_survives(&s, "truncated record", &full[..16 + 13], true);
    // Only half a header.
    assert_rejected_and_worker_survives(&s, "half a header", &full[..4], true);
}

#[test]
fn malformed_lying_name_value_lengths() {
    let s = serve("echo:application");
    let mut out = BytesMut::new();
    encode_begin_request(&mut out, 1, Role::Responder, false);
    // A pair claiming a 4-byte name length of 200 and a value of 100 bytes, with only a
    // few bytes behind it, then the end of the PARAMS stream.
    let mut lie = vec![0x80, 0, 0, 200, 100];
    lie.extend_from_slice(b"SHORT");
    encode_stream(&mut out, RecordType::Params, 1, &lie);
    encode_end_of_stream(&mut out, RecordType::Params, 1);
    encode_end_of_stream(&mut out, RecordType::Stdin, 1);
    assert_rejected_and_worker_survives(&s, "lying lengths", &out, false);
}

#[test]
fn params_over_request_params_max_are_refused() {
    let s = serve_with("echo:application", 1, &["request_params_max: 64K"]);
    // Under the limit: served.
    for addr in &s.addrs {
        let req = Request::get("/").header("X-Big", &"a".repeat(30 * 1024));
        let v = fcgi::request(addr, &req).json();
        assert_eq!(env_str(&v, "HTTP_X_BIG").map(str::len), Some(30 * 1024));
    }
    let huge = Request::get("/")
        .header("X-Huge", &"b".repeat(200 * 1024))
        .encode();
    assert_rejected_and_worker_survives(&s, "params over the limit", &huge, false);
}

#[test]
fn wsgi_errors_arrive_as_fcgi_stderr() {
    let s = serve("echo:application");
    for addr in &s.addrs {
        let r = fcgi::request_raw(addr, &Request::get("/?stderr=pyfpm-stderr-marker"));
        assert!(r.completed());
        assert!(
            String::from_utf8_lossy(&r.stderr).contains("pyfpm-stderr-marker"),
            "{addr}: FCGI_STDERR was {:?}",
            String::from_utf8_lossy(&r.stderr)
        );
        assert_eq!(r.cgi().status, 200);
    }
}

#[test]
fn wsgi_errors_reach_the_pool_error_log() {
    let s = serve("echo:application");
    let r = fcgi::request_raw(&s.addrs[0], &Request::get("/?stderr=pyfpm-log-marker"));
    assert!(r.completed());
    s.pyfpm
        .wait_log("pyfpm-log-marker", Duration::from_secs(10));
}

#[test]
fn wsgiref_validate_app_passes() {
    let s = serve("validated:application");
    for addr in &s.addrs {
        let r = fcgi::request(addr, &Request::get("/v?x=1"));
        assert_eq!(
            r.status,
            200,
            "{addr}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(r.body, b"validated:");
        let r = fcgi::request(addr, &fcgi::post("/v", b"payload".to_vec()));
        assert_eq!(
            r.status,
            200,
            "{addr}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(r.body, b"validated:payload");
        let r = fcgi::request(addr, &fcgi::post("/v?lines", b"a\nb\nc".to_vec()));
        assert_eq!(r.status, 200, "{addr}");
        let r = fcgi::request(addr, &Request::get("/v").method("HEAD"));
        assert_eq!(r.status, 200, "{addr}");
    }
    // A last request collects garbage and marks the log; validator complaints about
    // earlier requests (e.g. close() never called) would be in the log before the mark.
    fcgi::request(&s.addrs[0], &Request::get("/v?done"));
    let log = s.pyfpm.wait_log("VALIDATOR-DONE", Duration::from_secs(10));
    assert!(
        !log.contains("VALIDATOR-UNRAISABLE") && !log.contains("AssertionError"),
        "wsgiref.validate complained:\n{log}"
    );
}

#[test]
fn ipv6_loopback_listen() {
    let env = TestEnv::new();
    let port = std::net::TcpListener::bind("[::1]:0")
        .expect("this test needs an IPv6 loopback ([::1])")
        .local_addr()
        .unwrap()
        .port();
    let addr = Addr::Tcp(format!("[::1]:{port}").parse().unwrap());
    let pool = Pool::new("www", "echo:application").listen(&format!("[::1]:{port}"));
    let _p = env.start(&[pool], &addr);
    let v = fcgi::request(&addr, &Request::get("/six")).json();
    assert_eq!(env_str(&v, "PATH_INFO"), Some("/six"));
}

#[test]
fn request_trickled_one_byte_at_a_time_is_served() {
    // Every record (and every header) split across separate socket writes.
    let s = serve("echo:application");
    for addr in &s.addrs {
        let mut req = fcgi::post("/trickle?x=1", b"hello trickle".to_vec());
        req.stdin_record_len = 4;
        let bytes = req.encode();
        let mut c = Conn::connect(addr).unwrap();
        if let pyfpm::client::Stream::Tcp(t) = c.stream() {
            t.set_nodelay(true).unwrap();
        }
        for b in &bytes {
            c.send(std::slice::from_ref(b)).unwrap();
        }
        let r = c.read_response(1).unwrap();
        assert!(r.completed(), "{addr}");
        let v = r.cgi().json();
        assert_eq!(env_str(&v, "PATH_INFO"), Some("/trickle"));
        assert_eq!(v["body_crc32"], crc32(b"hello trickle") as u64);
    }
}

#[test]
fn a_second_request_on_a_busy_connection_is_refused_with_cant_mpx_conn() {
    let s = serve("echo:application");
    for addr in &s.addrs {
        let mut c = Conn::connect(addr).unwrap();
        let first = fcgi::post("/first", b"body one".to_vec()).keep_conn(true);
        let mut second = Request::get("/second");
        second.request_id = 2;
        let one = first.encode();
        // Request 1 up to (not including) its STDIN records, then all of request 2, then
        // request 1's STDIN: request 2 arrives while request 1 is active.
        let stdin_at = {
            let mut head = BytesMut::new();
            first.encode_head(&mut head);
            head.len()
        };
        let mut bytes = one[..stdin_at].to_vec();
        bytes.extend_from_slice(&second.encode());
        bytes.extend_from_slice(&one[stdin_at..]);
        c.send(&bytes).unwrap();
        let (mut refused, mut stdout, mut ended) = (None, Vec::new(), false);
        while !(ended && refused.is_some()) {
            match c.next_event().unwrap() {
                Some(ClientEvent::EndRequest {
                    request_id: 2,
                    protocol_status,
                    ..
                }) => refused = Some(protocol_status),
                Some(ClientEvent::Stdout {
                    request_id: 1,
                    data,
                }) => stdout.extend_from_slice(&data),
                Some(ClientEvent::Stderr { .. }) => {}
                Some(ClientEvent::EndRequest { request_id: 1, .. }) => ended = true,
                other => panic!("{addr}: unexpected {other:?}"),
            }
        }
        assert_eq!(refused, Some(ProtocolStatus::CantMpxConn), "{addr}");
        let v = fcgi::CgiResponse::parse(&stdout).unwrap().json();
        assert_eq!(env_str(&v, "PATH_INFO"), Some("/first"), "{addr}");
        assert_eq!(v["body_len"], 8);
    }
}

#[test]
fn unread_request_body_is_discarded_on_a_kept_connection() {
    // The app answers without reading its 1 MiB body; with FCGI_KEEP_CONN the rest of
    // that STDIN must be skipped so the next request on the connection is served.
    let s = serve("errors:application");
    for addr in &s.addrs {
        let mut c = Conn::connect(addr).unwrap();
        let req = fcgi::post("/ignores-body", test_bytes(1 << 20, 11)).keep_conn(true);
        let r = c.request(&req).unwrap();
        assert!(r.completed(), "{addr}");
        assert_eq!(r.cgi().body, b"ok");
        let r = c.request(&Request::get("/next").keep_conn(true)).unwrap();
        assert!(r.completed(), "{addr}: the kept connection is stuck");
        assert_eq!(r.cgi().body, b"ok");
    }
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

#[test]
fn large_response_is_split_into_valid_records() {
    let s = serve("stream:application");
    let n = 8 * 1024 * 1024 + 3;
    for addr in &s.addrs {
        let mut c = Conn::connect(addr).unwrap();
        let r = c.request(&Request::get(&format!("/?big={n}"))).unwrap();
        assert!(r.completed(), "{addr}");
        assert!(
            r.stdout_record_lens.iter().all(|&len| len <= 65535),
            "{addr}: a STDOUT record over 65535 bytes"
        );
        let cgi = r.cgi();
        assert_eq!(cgi.body.len(), n, "{addr}");
        assert!(cgi.body == pattern(n), "{addr}: body corrupted");
    }
}
