//! Real web servers in front of pyfpm: Apache (`mod_proxy_fcgi`, `mod_authnz_fcgi`),
//! lighttpd (`mod_fastcgi`, responder and `"mode" => "authorizer"`) and Caddy
//! (`reverse_proxy` with the fastcgi transport), each started in the foreground in the
//! test's temp dir on a free loopback port, with the configuration shipped in `contrib/`
//! rendered (socket path, ports, temp dirs) so that the documentation cannot rot.
//!
//! One pyfpm pool runs `tests/apps/webserver.py` (echo, streaming and authorizer in one
//! app) on a Unix socket and a TCP port (mod_authnz_fcgi speaks TCP only).
//!
//! What each server sends for `GET /some/deep/pa%20th?a=1` (Apache 2.4.71, lighttpd
//! 1.4.69, Caddy 2.6.2, recorded with a raw FastCGI listener):
//! - Apache `ProxyPass "/" "unix:...|fcgi://localhost/"`: SCRIPT_NAME `/some/deep/pa th`,
//!   no PATH_INFO, SCRIPT_FILENAME `proxy:fcgi://localhost/some/deep/pa%20th`.
//! - lighttpd, prefix `/` with check-local disabled: SCRIPT_NAME `/some`, PATH_INFO
//!   `/deep/pa th` (split after the first segment); to an authorizer neither, only
//!   REQUEST_URI.
//! - Caddy: SCRIPT_NAME `''`, PATH_INFO `/some/deep/pa th`, DOCUMENT_URI `''`; a chunked
//!   upload comes with CONTENT_LENGTH `-1`.
//!
//! In every case the app at `/` sees SCRIPT_NAME `''` and the whole decoded path as
//! PATH_INFO. Chunked uploads reach the app without CONTENT_LENGTH through Apache (above
//! its 16 KiB prefetch) and Caddy; lighttpd buffers them and sends a length.

mod common;

use common::fcgi::Addr;
use common::http::{Client, Full};
use common::{Pool, START_TIMEOUT, TestEnv, crc32, free_port, test_bytes, wait_until};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

// ---- Harness ----------------------------------------------------------------------

/// A server binary, or a failure telling how to install it (never a skip).
fn server_bin(path: &str, package: &str) -> PathBuf {
    let p = PathBuf::from(path);
    assert!(
        p.is_file(),
        "{path} is missing: run ./tests/run.sh (it installs the Debian package {package}), \
         then run the tests again"
    );
    p
}

/// A file shipped in `contrib/`.
fn contrib(rel: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("contrib")
        .join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// `text` with every `(documented default, test value)` replaced. A default missing from
/// the file fails the test: the docs changed and the tests must follow.
fn render(name: &str, text: &str, subst: &[(&str, &str)]) -> String {
    let mut out = text.to_string();
    for (from, to) in subst {
        assert!(
            out.contains(from),
            "contrib/{name} no longer contains {from:?}, which the test replaces"
        );
        out = out.replace(from, to);
    }
    out
}

/// `text` with the commented-out lines between `# BEGIN <block>` and `# END <block>`
/// enabled (one leading `#` removed; `##` explanation lines stay comments).
fn uncomment(name: &str, text: &str, block: &str) -> String {
    let (begin, end) = (format!("# BEGIN {block}"), format!("# END {block}"));
    assert!(
        text.contains(&begin) && text.contains(&end),
        "contrib/{name} has no {begin:?} ... {end:?} block"
    );
    let mut inside = false;
    let mut out = String::new();
    for line in text.lines() {
        if line.starts_with(&begin) {
            inside = true;
        } else if line.starts_with(&end) {
            inside = false;
        } else if inside {
            out.push_str(line.strip_prefix('#').unwrap_or(line));
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

/// A web server started by a test, stopped (TERM, then KILL) by its pid on drop.
struct Server {
    name: &'static str,
    child: Child,
    port: u16,
    /// Files whose contents a failing test prints.
    logs: Vec<PathBuf>,
}

impl Server {
    /// Spawn `cmd` (stdout and stderr to `<dir>/<name>-stderr.log`) and wait until it
    /// accepts connections on 127.0.0.1:`port`.
    fn start(name: &'static str, env: &TestEnv, mut cmd: Command, port: u16) -> Server {
        let stderr_log = env.file(&format!("{name}-stderr.log"));
        let out = std::fs::File::create(&stderr_log).unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        let mut s = Server {
            name,
            child,
            port,
            logs: vec![stderr_log, env.file(&format!("{name}-error.log"))],
        };
        let up = wait_until(START_TIMEOUT, || {
            matches!(s.child.try_wait(), Ok(Some(_)))
                || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        if let Ok(Some(status)) = s.child.try_wait() {
            panic!("{name} exited ({status}):\n{}", s.logs());
        }
        assert!(up, "{name} did not listen on {port}:\n{}", s.logs());
        s
    }

    /// Its logs so far, for failure messages.
    fn logs(&self) -> String {
        let mut all = String::new();
        for l in &self.logs {
            let text = std::fs::read_to_string(l).unwrap_or_default();
            all.push_str(&format!("---- {} ----\n{text}", l.display()));
        }
        all
    }

    /// A fresh HTTP client for it.
    fn client(&self) -> Client {
        Client::new(self.port)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let pid = Pid::from_raw(self.child.id() as i32);
            let _ = kill(pid, Signal::SIGTERM);
            if !wait_until(Duration::from_secs(10), || {
                matches!(self.child.try_wait(), Ok(Some(_)))
            }) {
                let _ = kill(pid, Signal::SIGKILL);
                let _ = self.child.wait();
            }
        }
        if std::thread::panicking() {
            eprintln!("{} logs:\n{}", self.name, self.logs());
        }
    }
}

/// A test's temp dir and pyfpm running the test app on `<dir>/www.sock` and a TCP
/// port; its methods start one web server in front of it.
struct Stack {
    // Dropped in this order: pyfpm stops before its temp dir goes.
    _pyfpm: common::Pyfpm,
    env: TestEnv,
    sock: PathBuf,
    tcp: u16,
}

impl Stack {
    /// Start pyfpm. The temp dir and the socket are opened to everyone: Apache run as
    /// root switches its workers to www-data, which must reach the socket.
    fn new() -> Stack {
        let env = TestEnv::new();
        std::fs::set_permissions(env.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let sock = env.file("www.sock");
        let tcp = free_port();
        let pool = Pool::new("www", "webserver:application")
            .listen(&sock.display().to_string())
            .listen(&format!("127.0.0.1:{tcp}"))
            .children(3)
            .with("listen.mode: \"0666\"");
        let pyfpm = env.start(&[pool], &Addr::Unix(sock.clone()));
        Stack {
            env,
            _pyfpm: pyfpm,
            sock,
            tcp,
        }
    }

    /// The pool's Unix socket path.
    fn sock(&self) -> String {
        self.sock.display().to_string()
    }

    /// The test's temp dir, where every server keeps its files.
    fn dir(&self) -> String {
        self.env.path().display().to_string()
    }

    /// Apache with contrib/apache/pyfpm.conf (authorizer block enabled) as its only site.
    fn apache(&self) -> Server {
        let bin = server_bin("/usr/sbin/apache2", "apache2");
        let port = free_port();
        let d = self.dir();
        let site = render(
            "apache/pyfpm.conf",
            &uncomment(
                "apache/pyfpm.conf",
                &contrib("apache/pyfpm.conf"),
                "authorizer example",
            ),
            &[
                ("/run/pyfpm/www.sock", &self.sock()),
                ("<VirtualHost *:80>", &format!("<VirtualHost *:{port}>")),
                ("127.0.0.1:9001", &format!("127.0.0.1:{}", self.tcp)),
            ],
        );
        std::fs::write(self.env.file("apache-site.conf"), site).unwrap();
        let m = "/usr/lib/apache2/modules";
        let mut conf = format!(
            "ServerRoot {d}\nListen 127.0.0.1:{port}\nPidFile {d}/apache.pid\n\
             ErrorLog {d}/apache-error.log\nLogLevel info\nServerName localhost\n\
             Mutex file:{d}\nDefaultRuntimeDir {d}\n"
        );
        // Apache refuses to run its workers as root.
        if nix::unistd::geteuid().is_root() {
            conf.push_str("User www-data\nGroup www-data\n");
        }
        for module in [
            "mpm_event",
            "authz_core",
            "authn_core",
            "authz_user",
            "auth_basic",
            "proxy",
            "proxy_fcgi",
            "authnz_fcgi",
        ] {
            conf.push_str(&format!("LoadModule {module}_module {m}/mod_{module}.so\n"));
        }
        conf.push_str(&format!("Include {d}/apache-site.conf\n"));
        let conf_path = self.env.file("apache.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let mut cmd = Command::new(bin);
        cmd.arg("-d")
            .arg(self.env.path())
            .arg("-f")
            .arg(&conf_path)
            .arg("-DFOREGROUND");
        Server::start("apache", &self.env, cmd, port)
    }

    /// lighttpd with contrib/lighttpd/pyfpm.conf (authorizer block enabled).
    fn lighttpd(&self) -> Server {
        let bin = server_bin("/usr/sbin/lighttpd", "lighttpd");
        let port = free_port();
        let d = self.dir();
        let site = render(
            "lighttpd/pyfpm.conf",
            &uncomment(
                "lighttpd/pyfpm.conf",
                &contrib("lighttpd/pyfpm.conf"),
                "authorizer example",
            ),
            &[("/run/pyfpm/www.sock", &self.sock())],
        );
        std::fs::write(self.env.file("lighttpd-site.conf"), site).unwrap();
        std::fs::create_dir_all(self.env.file("htdocs")).unwrap();
        let conf = format!(
            "server.document-root = \"{d}/htdocs\"\nserver.bind = \"127.0.0.1\"\n\
             server.port = {port}\nserver.errorlog = \"{d}/lighttpd-error.log\"\n\
             server.upload-dirs = ( \"{d}\" )\ninclude \"{d}/lighttpd-site.conf\"\n"
        );
        let conf_path = self.env.file("lighttpd.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let mut cmd = Command::new(bin);
        cmd.arg("-D").arg("-f").arg(&conf_path);
        Server::start("lighttpd", &self.env, cmd, port)
    }

    /// Caddy with contrib/caddy/Caddyfile, its site address made plain HTTP on loopback.
    fn caddy(&self) -> Server {
        let bin = server_bin("/usr/bin/caddy", "caddy");
        let port = free_port();
        // No admin endpoint (port 2019) and no certificates in a test.
        let global = "{\n\tadmin off\n\tauto_https off\n}\n";
        let site = render(
            "caddy/Caddyfile",
            &contrib("caddy/Caddyfile"),
            &[
                ("/run/pyfpm/www.sock", &self.sock()),
                (
                    "example.com {",
                    &format!("http://:{port} {{\n\tbind 127.0.0.1"),
                ),
            ],
        );
        let conf_path = self.env.file("Caddyfile");
        std::fs::write(&conf_path, format!("{global}{site}")).unwrap();
        let d = self.dir();
        let mut cmd = Command::new(bin);
        cmd.args(["run", "--adapter", "caddyfile", "--config"])
            .arg(&conf_path)
            // Caddy keeps its state under $HOME / XDG dirs: keep it in the temp dir.
            .env("HOME", &d)
            .env("XDG_DATA_HOME", format!("{d}/caddy-data"))
            .env("XDG_CONFIG_HOME", format!("{d}/caddy-config"));
        Server::start("caddy", &self.env, cmd, port)
    }
}

/// The `environ` object of an echo answer.
fn environ(f: &Full) -> serde_json::Value {
    f.json()["environ"].clone()
}

/// An environ entry as a string (`None` when absent).
fn var(f: &Full, name: &str) -> Option<String> {
    environ(f)[name].as_str().map(String::from)
}

/// Body bytes that a reader hands out in pieces of at most 7000 bytes, so a chunked
/// request carries several chunks.
struct Pieces(std::io::Cursor<Vec<u8>>);

impl Read for Pieces {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(7000);
        self.0.read(&mut buf[..n])
    }
}

/// POST `body` with `Transfer-Encoding: chunked` (no Content-Length).
fn post_chunked(port: u16, target: &str, body: Vec<u8>) -> Full {
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .new_agent();
    let req = ureq::http::Request::builder()
        .method("POST")
        .uri(format!("http://127.0.0.1:{port}{target}"))
        .header("Host", "localhost")
        .header("Content-Type", "application/octet-stream")
        .body(ureq::SendBody::from_owned_reader(Pieces(
            std::io::Cursor::new(body),
        )))
        .unwrap();
    let (parts, mut b) = agent
        .run(req)
        .unwrap_or_else(|e| panic!("chunked POST {target} on port {port}: {e}"))
        .into_parts();
    let body = b
        .with_config()
        .limit(16 << 20)
        .read_to_vec()
        .expect("read the response");
    Full {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body,
    }
}

// ---- Checks shared by every server -------------------------------------------------

/// GET with a query string and a percent-encoded path: the app at `/` sees SCRIPT_NAME
/// '' and the whole decoded path as PATH_INFO, the query string as sent, the responder
/// role.
fn check_get(s: &Server) {
    let f = s
        .client()
        .request("GET", "/some/deep/pa%20th?a=1&b=x%20y&c=", &[], b"");
    assert_eq!(f.status, 200, "{}: {:?}\n{}", s.name, f.body, s.logs());
    let e = environ(&f);
    assert_eq!(e["REQUEST_METHOD"], "GET", "{}: {e}", s.name);
    assert_eq!(e["QUERY_STRING"], "a=1&b=x%20y&c=", "{}: {e}", s.name);
    assert_eq!(e["SCRIPT_NAME"], "", "{}: {e}", s.name);
    assert_eq!(e["PATH_INFO"], "/some/deep/pa th", "{}: {e}", s.name);
    assert_eq!(e["FCGI_ROLE"], "RESPONDER", "{}: {e}", s.name);
    assert_eq!(
        e["REQUEST_URI"], "/some/deep/pa%20th?a=1&b=x%20y&c=",
        "{}: {e}",
        s.name
    );
    // The root itself.
    let f = s.client().request("GET", "/", &[], b"");
    assert_eq!(f.status, 200, "{}", s.name);
    assert_eq!(var(&f, "SCRIPT_NAME").as_deref(), Some(""), "{}", s.name);
    assert_eq!(var(&f, "PATH_INFO").as_deref(), Some("/"), "{}", s.name);
}

/// POST bodies of several sizes with Content-Length arrive whole.
fn check_post_sizes(s: &Server) {
    for (i, len) in [0usize, 1, 8191, 65_535, 65_536, 300_001, 2_000_000]
        .into_iter()
        .enumerate()
    {
        let body = test_bytes(len, i as u64 + 1);
        let f = s.client().request(
            "POST",
            "/upload",
            &[("Content-Type", "application/octet-stream")],
            &body,
        );
        assert_eq!(f.status, 200, "{} POST {len}:\n{}", s.name, s.logs());
        let v = f.json();
        assert_eq!(v["body_len"], len as u64, "{} POST {len}", s.name);
        assert_eq!(v["body_crc32"], crc32(&body), "{} POST {len}", s.name);
        assert_eq!(v["environ"]["REQUEST_METHOD"], "POST", "{}", s.name);
        if len > 0 {
            assert_eq!(
                v["environ"]["CONTENT_LENGTH"],
                len.to_string(),
                "{} POST {len}",
                s.name
            );
        }
    }
}

/// Chunked uploads of several sizes are read whole by the app. `expect_length(len)`
/// says whether the server turns one into a CONTENT_LENGTH (`Some(true)`: lighttpd
/// buffers every body), streams it without one (`Some(false)`) or may do either
/// (`None`: Apache sends a length when its non-blocking prefetch of up to 16 KiB got the
/// whole body, which depends on how the client's packets arrive).
fn check_chunked(s: &Server, expect_length: impl Fn(usize) -> Option<bool>) {
    let mut seen = Vec::new();
    for (i, len) in [1usize, 8_000, 20_000, 1_000_001].into_iter().enumerate() {
        let body = test_bytes(len, 100 + i as u64);
        let f = post_chunked(s.port, "/chunked", body.clone());
        assert_eq!(f.status, 200, "{} chunked {len}:\n{}", s.name, s.logs());
        let v = f.json();
        assert_eq!(v["body_len"], len as u64, "{} chunked {len}: {v}", s.name);
        assert_eq!(v["body_crc32"], crc32(&body), "{} chunked {len}", s.name);
        let te = v["environ"]["HTTP_TRANSFER_ENCODING"]
            .as_str()
            .map(String::from);
        let cl = v["environ"]["CONTENT_LENGTH"].as_str().map(String::from);
        seen.push((len, te, cl));
    }
    for (len, _, cl) in &seen {
        let want = match expect_length(*len) {
            Some(with_length) => with_length.then(|| len.to_string()),
            None if cl.is_some() => Some(len.to_string()),
            None => None,
        };
        assert_eq!(
            cl, &want,
            "{}: CONTENT_LENGTH of a chunked upload of {len}; every upload \
             (length, HTTP_TRANSFER_ENCODING, CONTENT_LENGTH): {seen:?}",
            s.name
        );
    }
}

/// The app's status codes and bodies reach the client, and repeated Set-Cookie headers
/// stay separate and in order.
fn check_status_and_cookies(s: &Server) {
    for code in [201u16, 404, 418, 500, 503] {
        let f = s
            .client()
            .request("GET", &format!("/st?status={code}"), &[], b"");
        assert_eq!(f.status, code, "{}:\n{}", s.name, s.logs());
        assert!(
            f.json()["pid"].is_number(),
            "{}: status {code} did not carry the app's body",
            s.name
        );
    }
    let f = s.client().request("GET", "/st?status=204", &[], b"");
    assert_eq!(f.status, 204, "{}", s.name);
    assert!(f.body.is_empty(), "{}: 204 with a body", s.name);

    let f = s
        .client()
        .request("GET", "/c?cookies=3&header=X-Extra:yes", &[], b"");
    assert_eq!(f.status, 200, "{}", s.name);
    assert_eq!(
        f.all("set-cookie"),
        ["c0=v0; Path=/", "c1=v1; Path=/", "c2=v2; Path=/"],
        "{}",
        s.name
    );
    assert_eq!(f.header("x-extra"), Some("yes"), "{}", s.name);
}

/// A 3 MB response of many FastCGI records arrives whole and in order.
fn check_big_response(s: &Server) {
    let len = 3_000_000usize;
    let f = s
        .client()
        .request("GET", &format!("/big?app=stream&big={len}"), &[], b"");
    assert_eq!(f.status, 200, "{}:\n{}", s.name, s.logs());
    assert_eq!(f.body.len(), len, "{}", s.name);
    let bad = f
        .body
        .iter()
        .enumerate()
        .position(|(i, &b)| b != (i % 251) as u8);
    assert_eq!(bad, None, "{}: first wrong byte", s.name);
}

/// The first chunk of a streamed response reaches the client while the app still waits
/// for a gate file that the test creates only after reading it.
fn check_streaming(s: &Server, env: &TestEnv) {
    let gate = env.file(&format!("gate-{}", s.name));
    let resp = s.client().send(
        "GET",
        &format!("/stream?app=stream&chunks=2&gate={}", gate.display()),
        &[],
        b"",
    );
    assert_eq!(resp.status().as_u16(), 200, "{}", s.name);
    let mut r = resp.into_body().into_reader();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    // Bounded: the app gives up on the gate after 20 s and says so in the body.
    while !got.windows(6).any(|w| w == b"first;") {
        let n = r.read(&mut buf).expect("read the streamed body");
        assert!(n > 0, "{}: body ended before the first chunk", s.name);
        got.extend_from_slice(&buf[..n]);
    }
    assert!(
        !String::from_utf8_lossy(&got).contains("gate-timeout"),
        "{} buffered the streamed response (the app waited for the gate in vain): {:?}",
        s.name,
        String::from_utf8_lossy(&got)
    );
    std::fs::write(&gate, b"open").unwrap();
    r.read_to_end(&mut got).expect("read the rest");
    assert_eq!(
        String::from_utf8_lossy(&got),
        "first;chunk1;chunk2;",
        "{}",
        s.name
    );
}

/// The classic FastCGI authorizer at /private/: alice passes and the protected backend
/// (the same pool as responder) gets the authorizer's `Variable-X-User` as the request
/// variable named `var("X-User")` (each server spells it its own way); bob gets the
/// app's 403 and body; nobody gets its 401, body and WWW-Authenticate. A POST body goes
/// to the backend whole, while the authorizer, run first, sees none and does not wait
/// for one.
fn check_authorizer(s: &Server, var_name: impl Fn(&str) -> String) -> Full {
    let c = s.client();
    let ok = c.request("GET", "/private/page?x=1", &[("X-Auth-User", "alice")], b"");
    assert_eq!(ok.status, 200, "{}: {:?}\n{}", s.name, ok.body, s.logs());
    let e = environ(&ok);
    assert_eq!(e["FCGI_ROLE"], "RESPONDER", "{}: {e}", s.name);
    assert_eq!(e["PATH_INFO"], "/private/page", "{}: {e}", s.name);
    assert_eq!(e["QUERY_STRING"], "x=1", "{}: {e}", s.name);
    let user_var = var_name("X-User");
    assert_eq!(
        e[&user_var], "alice",
        "{}: the authorizer's Variable-X-User did not reach the backend as {user_var}: {e}",
        s.name
    );
    // What the authorizer itself saw.
    assert_eq!(
        e[&var_name("X-Authz-Path")],
        "|/private/page",
        "{}: {e}",
        s.name
    );
    assert_eq!(e[&var_name("X-Authz-Method")], "GET", "{}: {e}", s.name);
    assert_eq!(e[&var_name("X-Authz-Body")], "0", "{}: {e}", s.name);
    assert!(
        ok.header("variable-x-user").is_none(),
        "{}: a Variable- header leaked to the client",
        s.name
    );

    let body = test_bytes(150_000, 7);
    let post = c.request(
        "POST",
        "/private/upload",
        &[
            ("X-Auth-User", "alice"),
            ("Content-Type", "application/octet-stream"),
        ],
        &body,
    );
    assert_eq!(
        post.status,
        200,
        "{}: {:?}\n{}",
        s.name,
        post.body,
        s.logs()
    );
    let v = post.json();
    assert_eq!(v["body_len"], body.len() as u64, "{}: {v}", s.name);
    assert_eq!(v["body_crc32"], crc32(&body), "{}", s.name);
    assert_eq!(
        v["environ"][&var_name("X-Authz-Method")],
        "POST",
        "{}",
        s.name
    );
    assert_eq!(v["environ"][&var_name("X-Authz-Body")], "0", "{}", s.name);

    let denied = c.request("GET", "/private/page", &[("X-Auth-User", "bob")], b"");
    assert_eq!(denied.status, 403, "{}:\n{}", s.name, s.logs());
    assert_eq!(
        String::from_utf8_lossy(&denied.body),
        "denied by the pyfpm authorizer (bob)\n",
        "{}",
        s.name
    );

    let anon = c.request("GET", "/private/page", &[], b"");
    assert_eq!(anon.status, 401, "{}", s.name);
    assert_eq!(
        anon.header("www-authenticate"),
        Some("Basic realm=\"pyfpm-test\""),
        "{}",
        s.name
    );
    assert_eq!(
        String::from_utf8_lossy(&anon.body),
        "who are you? (pyfpm authorizer)\n",
        "{}",
        s.name
    );
    ok
}

// ---- Apache httpd: mod_proxy_fcgi and mod_authnz_fcgi ------------------------------

#[test]
fn apache_get_query_and_path() {
    let st = Stack::new();
    check_get(&st.apache());
}

#[test]
fn apache_post_bodies() {
    let st = Stack::new();
    check_post_sizes(&st.apache());
}

#[test]
fn apache_chunked_upload_arrives_without_content_length() {
    let st = Stack::new();
    // Above Apache's 16 KiB prefetch, the body is always streamed without a length.
    check_chunked(&st.apache(), |len| (len > 16 * 1024).then_some(false));
}

#[test]
fn apache_status_codes_and_cookies() {
    let st = Stack::new();
    check_status_and_cookies(&st.apache());
}

#[test]
fn apache_streamed_and_large_responses() {
    let st = Stack::new();
    let s = st.apache();
    check_streaming(&s, &st.env);
    check_big_response(&s);
}

/// mod_authnz_fcgi `authnz` provider in the check_authn phase: the classic authorizer.
/// Apache names the Variable- header's request variable `X-User` and calls the app with
/// FCGI_APACHE_ROLE=AUTHENTICATOR.
#[test]
fn apache_authnz_fcgi_classic_authorizer() {
    let st = Stack::new();
    let s = st.apache();
    let ok = check_authorizer(&s, |name| name.to_string());
    assert_eq!(var(&ok, "X-Authz-Role").as_deref(), Some("AUTHENTICATOR"));
}

/// mod_authnz_fcgi `authn` (Basic password check) and `authz` (`Require`) providers:
/// the app is asked twice; a refusal is Apache's own 401 (mod_authnz_fcgi relays
/// neither status nor body of an authz provider).
#[test]
fn apache_authnz_fcgi_authn_and_authz_providers() {
    let st = Stack::new();
    let s = st.apache();
    let c = s.client();
    let basic = |cred: &str| format!("Basic {}", base64(cred.as_bytes()));

    let ok = c.request(
        "GET",
        "/members/page",
        &[("Authorization", &basic("alice:secret"))],
        b"",
    );
    assert_eq!(ok.status, 200, "{:?}\n{}", ok.body, s.logs());
    assert_eq!(var(&ok, "REMOTE_USER").as_deref(), Some("alice"));
    assert_eq!(var(&ok, "X-User").as_deref(), Some("alice"));
    assert_eq!(var(&ok, "X-Authz-Role").as_deref(), Some("AUTHORIZER"));
    assert_eq!(var(&ok, "PATH_INFO").as_deref(), Some("/members/page"));

    // Authenticated by the app, refused by it as authz provider.
    let refused = c.request(
        "GET",
        "/members/page",
        &[("Authorization", &basic("bob:secret"))],
        b"",
    );
    assert_eq!(refused.status, 401, "{}", s.logs());
    assert!(s.logs().contains("user bob: authorization failure"));

    let wrong = c.request(
        "GET",
        "/members/page",
        &[("Authorization", &basic("alice:wrong"))],
        b"",
    );
    assert_eq!(wrong.status, 401);
    assert!(s.logs().contains("user alice: authentication failure"));

    let anon = c.request("GET", "/members/page", &[], b"");
    assert_eq!(anon.status, 401);
    assert_eq!(
        anon.header("www-authenticate"),
        Some("Basic realm=\"pyfpm\"")
    );
}

// ---- lighttpd: mod_fastcgi -------------------------------------------------------

#[test]
fn lighttpd_get_query_and_path() {
    let st = Stack::new();
    check_get(&st.lighttpd());
}

#[test]
fn lighttpd_post_bodies() {
    let st = Stack::new();
    check_post_sizes(&st.lighttpd());
}

#[test]
fn lighttpd_chunked_upload_is_buffered_with_a_length() {
    let st = Stack::new();
    check_chunked(&st.lighttpd(), |_| Some(true));
}

#[test]
fn lighttpd_status_codes_and_cookies() {
    let st = Stack::new();
    check_status_and_cookies(&st.lighttpd());
}

#[test]
fn lighttpd_streamed_and_large_responses() {
    let st = Stack::new();
    let s = st.lighttpd();
    check_streaming(&s, &st.env);
    check_big_response(&s);
}

/// `"mode" => "authorizer"`: lighttpd sets the Variable- header as `X_USER` (upper
/// case, `-` made `_`) and sends no FCGI_APACHE_ROLE.
#[test]
fn lighttpd_authorizer_mode() {
    let st = Stack::new();
    let s = st.lighttpd();
    let ok = check_authorizer(&s, |name| name.to_uppercase().replace('-', "_"));
    assert_eq!(var(&ok, "X_AUTHZ_ROLE").as_deref(), Some("none"));
}

// ---- Caddy: reverse_proxy with the fastcgi transport -------------------------------

#[test]
fn caddy_get_query_and_path() {
    let st = Stack::new();
    check_get(&st.caddy());
}

#[test]
fn caddy_post_bodies() {
    let st = Stack::new();
    check_post_sizes(&st.caddy());
}

#[test]
fn caddy_chunked_upload_arrives_without_content_length() {
    let st = Stack::new();
    check_chunked(&st.caddy(), |_| Some(false));
}

#[test]
fn caddy_status_codes_and_cookies() {
    let st = Stack::new();
    check_status_and_cookies(&st.caddy());
}

#[test]
fn caddy_streamed_and_large_responses() {
    let st = Stack::new();
    let s = st.caddy();
    check_streaming(&s, &st.env);
    check_big_response(&s);
}

// ---- Helpers ---------------------------------------------------------------------

/// Standard base64 with padding (for Basic credentials).
fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[test]
fn base64_matches_rfc4648() {
    assert_eq!(base64(b"alice:secret"), "YWxpY2U6c2VjcmV0");
    assert_eq!(base64(b"f"), "Zg==");
    assert_eq!(base64(b"fo"), "Zm8=");
    assert_eq!(base64(b"foo"), "Zm9v");
}
