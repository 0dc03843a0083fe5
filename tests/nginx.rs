//! End to end through real nginx (the Debian package) configured with the server blocks
//! shipped in contrib/nginx/pyfpm.conf (a stock `location /` with
//! `include fastcgi_params; fastcgi_pass ...;` and no other fastcgi_param lines; the
//! keep-alive and TCP variants), in front of the real `pyfpm` serving the apps in
//! tests/apps.

mod common;

use common::fcgi::Addr;
use common::http;
use common::nginx::Nginx;
use common::{Pool, Pyfpm, TestEnv, crc32, free_port, test_bytes, wait_until};
use std::io::Read;
use std::time::Duration;

/// pyfpm (Unix socket or TCP) behind nginx. Field order: the client's kept-alive
/// connections close first, then nginx stops, then pyfpm, then the directory goes.
struct Stack {
    /// One agent for the whole test, so sequential requests reuse a connection to nginx.
    http: http::Client,
    nginx: Nginx,
    pyfpm: Pyfpm,
    env: TestEnv,
    /// nginx's `fastcgi_pass` target.
    pass: String,
}

fn stack(app: &str, tcp: bool, keepalive: bool) -> Stack {
    let env = TestEnv::new();
    let (listen, addr, pass) = if tcp {
        let port = free_port();
        (
            format!("127.0.0.1:{port}"),
            Addr::Tcp(format!("127.0.0.1:{port}").parse().unwrap()),
            format!("127.0.0.1:{port}"),
        )
    } else {
        let sock = env.file("www.sock");
        (
            sock.display().to_string(),
            Addr::Unix(sock.clone()),
            format!("unix:{}", sock.display()),
        )
    };
    let pyfpm = env.start(&[Pool::new("www", app).listen(&listen).children(2)], &addr);
    // No body-size override: the 8 MiB uploads pass only through the documented
    // `client_max_body_size 64m` of the contrib block.
    let nginx = Nginx::builder(&pass)
        .keepalive(keepalive.then_some(4))
        .start(&env);
    Stack {
        http: http::Client::new(nginx.port),
        nginx,
        pyfpm,
        env,
        pass,
    }
}

impl Stack {
    fn get(&self, target: &str) -> http::Full {
        self.http.request("GET", target, &[], b"")
    }

    fn context(&self) -> String {
        format!(
            "nginx error log:\n{}\npyfpm log:\n{}",
            self.nginx.error_log(),
            self.pyfpm.log_text()
        )
    }
}

fn env_str<'a>(v: &'a serde_json::Value, key: &str) -> Option<&'a str> {
    v["environ"][key].as_str()
}

#[test]
fn get_with_query_string() {
    let s = stack("echo:application", false, false);
    let r = s.get("/hello/world?a=1&b=%20x");
    assert_eq!(r.status, 200, "{}", s.context());
    let v = r.json();
    assert_eq!(env_str(&v, "QUERY_STRING"), Some("a=1&b=%20x"));
    assert_eq!(env_str(&v, "REQUEST_METHOD"), Some("GET"));
    assert_eq!(env_str(&v, "SCRIPT_NAME"), Some(""));
    assert_eq!(env_str(&v, "PATH_INFO"), Some("/hello/world"));
    assert_eq!(env_str(&v, "SERVER_NAME"), Some("localhost"));
    assert_eq!(
        env_str(&v, "SERVER_PORT"),
        Some(s.nginx.port.to_string().as_str())
    );
    assert_eq!(env_str(&v, "HTTP_HOST"), Some("localhost"));
    assert_eq!(env_str(&v, "FCGI_ROLE"), Some("RESPONDER"));
    assert_eq!(v["wsgi"]["url_scheme"], "http");
}

#[test]
fn post_bodies_from_0_bytes_to_8_mib() {
    let s = stack("echo:application", false, false);
    for (i, size) in [0usize, 1, 1000, 64 * 1024 + 1, 1024 * 1024, 8 * 1024 * 1024]
        .into_iter()
        .enumerate()
    {
        let body = test_bytes(size, 100 + i as u64);
        let r = s.http.request(
            "POST",
            "/upload",
            &[("Content-Type", "application/octet-stream")],
            &body,
        );
        assert_eq!(r.status, 200, "size {size}: {}", s.context());
        let v = r.json();
        assert_eq!(v["body_len"], size as u64, "size {size}");
        assert_eq!(v["body_crc32"], crc32(&body) as u64, "size {size}");
    }
}

#[test]
fn non_ascii_path_reaches_the_app_decoded() {
    let s = stack("echo:application", false, false);
    let r = s.get("/caf%C3%A9/%E2%82%AC%20x?q=%C3%A9");
    assert_eq!(r.status, 200, "{}", s.context());
    let v = r.json();
    assert_eq!(v["path_info_utf8"], "/café/€ x");
    assert_eq!(env_str(&v, "SCRIPT_NAME"), Some(""));
    assert_eq!(env_str(&v, "QUERY_STRING"), Some("q=%C3%A9"));
}

#[test]
fn duplicate_request_headers_reach_the_app() {
    let s = stack("echo:application", false, false);
    let r = s.http.request(
        "GET",
        "/",
        &[("X-Dup", "a"), ("X-Dup", "b"), ("Proxy", "http://evil:1")],
        b"",
    );
    assert_eq!(r.status, 200, "{}", s.context());
    let v = r.json();
    let dup = env_str(&v, "HTTP_X_DUP").expect("HTTP_X_DUP");
    let parts: Vec<&str> = dup.split(',').map(str::trim).collect();
    assert_eq!(parts, ["a", "b"], "HTTP_X_DUP={dup:?}");
    assert_eq!(env_str(&v, "HTTP_PROXY"), None, "httpoxy");
}

#[test]
fn multiple_set_cookie_headers() {
    let s = stack("echo:application", false, false);
    let r = s.get("/?cookies=3&header=X-Multi:1&header=X-Multi:2");
    assert_eq!(r.status, 200, "{}", s.context());
    assert_eq!(
        r.all("Set-Cookie"),
        ["c0=v0; Path=/", "c1=v1; Path=/", "c2=v2; Path=/"]
    );
    assert_eq!(r.all("X-Multi"), ["1", "2"]);
}

#[test]
fn status_codes_204_404_418_500() {
    let s = stack("echo:application", false, false);
    for code in [204u16, 404, 418, 500] {
        let r = s.get(&format!("/?status={code}"));
        assert_eq!(r.status, code, "{}", s.context());
        if code == 204 {
            assert!(r.body.is_empty());
        } else {
            assert_eq!(r.json()["body_len"], 0, "the app's own body for {code}");
        }
    }
}

#[test]
fn app_exception_is_a_500() {
    let s = stack("errors:application", false, false);
    let r = s.get("/raise");
    assert_eq!(r.status, 500, "{}", s.context());
    let r = s.get("/");
    assert_eq!(r.status, 200, "served after the exception: {}", s.context());
}

#[test]
fn streamed_response_arrives_before_the_app_finishes() {
    let s = stack("stream:application", false, false);
    let gate = s.env.file("gate");
    let mut resp = s
        .http
        .send("GET", &format!("/?gate={}", gate.display()), &[], b"");
    assert_eq!(resp.status(), 200, "{}", s.context());
    // The app waits for the gate after its first chunk: it only gets here if pyfpm and
    // nginx pass the first chunk on at once.
    let mut reader = resp.body_mut().as_reader();
    let mut body = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&body).contains("first;") {
        let n = reader
            .read(&mut buf)
            .unwrap_or_else(|e| panic!("broken HTTP response body: {e}"));
        assert!(n > 0, "body ended before the first chunk");
        body.extend_from_slice(&buf[..n]);
    }
    std::fs::write(&gate, b"go").unwrap();
    reader
        .read_to_end(&mut body)
        .unwrap_or_else(|e| panic!("broken HTTP response body: {e}"));
    assert_eq!(
        String::from_utf8_lossy(&body),
        "first;chunk1;chunk2;chunk3;"
    );
}

#[test]
fn head_has_no_body() {
    let s = stack("echo:application", false, false);
    let r = s.http.request("HEAD", "/", &[], b"");
    assert_eq!(r.status, 200, "{}", s.context());
    assert!(r.body.is_empty(), "HEAD answered with a body");
    assert_eq!(r.header("Content-Type"), Some("application/json"));
    // ureq never reads a body for HEAD: look at the raw bytes after the head as well.
    let extra = s.http.bytes_after_head("HEAD", "/");
    assert!(
        extra.is_empty(),
        "HEAD answered with a body: {:?}",
        String::from_utf8_lossy(&extra)
    );
}

#[test]
fn keepalive_upstream_serves_50_sequential_requests() {
    let s = stack("echo:application", false, true);
    for i in 0..50 {
        let body = test_bytes(i * 37, i as u64);
        let r = s.http.request("POST", &format!("/k/{i}?n={i}"), &[], &body);
        assert_eq!(r.status, 200, "request {i}: {}", s.context());
        let v = r.json();
        assert_eq!(env_str(&v, "PATH_INFO"), Some(format!("/k/{i}").as_str()));
        assert_eq!(v["body_crc32"], crc32(&body) as u64, "request {i}");
    }
    let log = s.nginx.error_log();
    assert!(
        !log.contains("[error]") && !log.contains("[crit]"),
        "nginx logged errors:\n{log}"
    );
}

/// Established server-side TCP connections on local `port` (from /proc/net/tcp{,6}).
fn established_on(port: u16) -> usize {
    let port_hex = format!(":{port:04X}");
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .flat_map(|t| t.lines().skip(1).map(str::to_string).collect::<Vec<_>>())
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && f[1].ends_with(&port_hex) && f[3] == "01"
        })
        .count()
}

fn pyfpm_port(s: &Stack) -> u16 {
    s.pass
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("a TCP stack")
}

#[test]
fn tcp_listen_variant() {
    let s = stack("echo:application", true, false);
    let r = s.get("/tcp?x=1");
    assert_eq!(r.status, 200, "{}", s.context());
    assert_eq!(env_str(&r.json(), "PATH_INFO"), Some("/tcp"));
    let body = test_bytes(300_000, 5);
    let r = s.http.request("POST", "/tcp", &[], &body);
    assert_eq!(r.status, 200, "{}", s.context());
    assert_eq!(r.json()["body_crc32"], crc32(&body) as u64);
    let r = s.get("/?cookies=2&status=418");
    assert_eq!(r.status, 418);
    assert_eq!(r.all("Set-Cookie").len(), 2);
    // Without fastcgi_keep_conn nginx sends no FCGI_KEEP_CONN: pyfpm closes each
    // connection after its request.
    let port = pyfpm_port(&s);
    assert!(
        wait_until(Duration::from_secs(10), || established_on(port) == 0),
        "connections to pyfpm stay open without FCGI_KEEP_CONN"
    );
}

#[test]
fn tcp_listen_with_keepalive_upstream() {
    let s = stack("echo:application", true, true);
    for i in 0..20 {
        let r = s.get(&format!("/t/{i}"));
        assert_eq!(r.status, 200, "request {i}: {}", s.context());
    }
    // The upstream connection nginx keeps for reuse is still open on pyfpm's side.
    let open = established_on(pyfpm_port(&s));
    assert!(
        (1..=2).contains(&open),
        "{open} established connections to pyfpm after 20 kept-alive requests"
    );
}

#[test]
fn large_streamed_response_arrives_intact() {
    let s = stack("stream:application", false, false);
    let n = 8 * 1024 * 1024 + 3;
    let r = s.get(&format!("/?big={n}"));
    assert_eq!(r.status, 200, "{}", s.context());
    assert_eq!(r.body.len(), n);
    let want: Vec<u8> = (0..n).map(|i| (i % 251) as u8).collect();
    assert!(r.body == want, "body corrupted");
}

#[test]
fn response_failing_mid_body_is_not_delivered_as_complete() {
    // The app raises after two chunks: the client must see a broken transfer, not a
    // short body that looks whole.
    let s = stack("stream:application", false, false);
    let mut resp = s.http.send("GET", "/?fail_at=2", &[], b"");
    assert_eq!(resp.status(), 200, "{}", s.context());
    let mut body = Vec::new();
    // On error, read_to_end keeps what arrived in `body`.
    let outcome = resp.body_mut().as_reader().read_to_end(&mut body);
    assert!(
        outcome.is_err(),
        "the truncated body {:?} arrived as a complete response; {}",
        String::from_utf8_lossy(&body),
        s.context()
    );
    assert!(!String::from_utf8_lossy(&body).contains("chunk2"));
    assert_eq!(
        s.get("/?chunks=1").body,
        b"first;chunk1;",
        "served afterwards"
    );
}
