//! Real nginx (the Debian package) in front of pyfpm, configured with the server block
//! shipped in `contrib/nginx/pyfpm.conf` so that the documentation cannot rot: the block
//! between its `# BEGIN` and `# END` markers (uncommented for a variant), with only the
//! documented socket path, listen address, server_name and `keepalive` count replaced.
//! Everything a test needs beyond that (temp paths, pid, logs, its own limits and
//! timeouts) is wrapped around it here. nginx runs in the test's dir on a free loopback
//! port and is stopped by its pid on drop; the callers vary only what [`NginxBuilder`]
//! offers.

use super::{START_TIMEOUT, TestEnv, free_port, http, stop_child, wait_until};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// The README test command installs nginx; without it these tests fail, never skip.
fn nginx_bin() -> PathBuf {
    for p in ["/usr/sbin/nginx", "/usr/bin/nginx", "/usr/local/sbin/nginx"] {
        if Path::new(p).is_file() {
            return p.into();
        }
    }
    panic!(
        "nginx is not installed: run tests/run.sh or the README test command (they install \
         the Debian nginx package), or `apt-get install nginx-light`/`nginx`, then run the \
         tests again"
    );
}

/// The shipped config, relative to the repository root.
const CONTRIB: &str = "contrib/nginx/pyfpm.conf";
/// Its commented-out variant: `fastcgi_pass` straight to the socket, a connection per
/// request.
const PER_REQUEST: &str = "one connection per request";
/// Its active block: `upstream { keepalive 32; }` + `fastcgi_keep_conn on`.
const KEEP_ALIVE: &str = "keep-alive";
/// Its commented-out `fastcgi_pass 127.0.0.1:9000` variant.
const TCP: &str = "TCP variant";
/// The stock params file the contrib blocks include by a relative name.
const FASTCGI_PARAMS: &str = "/etc/nginx/fastcgi_params";

/// The lines between `# BEGIN <name>` and `# END <name>` of the contrib file. A variant
/// shipped commented out (every non-blank line starts with `#`) is enabled the way its
/// comment tells a sysadmin to: one leading `#` removed, so `##` lines stay comments.
fn contrib_block(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(CONTRIB);
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let (begin, end) = (format!("# BEGIN {name}"), format!("# END {name}"));
    let lines: Vec<&str> = text
        .lines()
        .skip_while(|l| l.trim_end() != begin)
        .skip(1)
        .take_while(|l| l.trim_end() != end)
        .collect();
    assert!(
        text.lines().any(|l| l.trim_end() == begin)
            && text.lines().any(|l| l.trim_end() == end)
            && !lines.is_empty(),
        "{CONTRIB} has no {begin:?} ... {end:?} block, which the nginx tests run"
    );
    let commented = lines
        .iter()
        .all(|l| l.trim().is_empty() || l.starts_with('#'));
    let mut out = String::new();
    for l in lines {
        out.push_str(if commented {
            l.strip_prefix('#').unwrap_or(l)
        } else {
            l
        });
        out.push('\n');
    }
    out
}

/// `text` (the block `name`) with every `(documented default, test value)` replaced. A
/// default missing from the block fails the test: the docs changed and the tests must
/// follow.
fn render(name: &str, text: &str, subst: &[(&str, String)]) -> String {
    let mut out = text.to_string();
    for (from, to) in subst {
        assert!(
            out.contains(from),
            "the {name:?} block of {CONTRIB} no longer contains {from:?}, which the nginx \
             tests replace"
        );
        out = out.replace(from, to);
    }
    out
}

/// `text` with `directives` (each `name args;`) set in every `context` block (`server`,
/// `location`): one whose name the block already sets replaces that line, since nginx
/// refuses most directives twice; the others go before the block's closing brace.
fn set_directives(text: &str, context: &str, directives: &[String]) -> String {
    let name = |d: &str| d.split_whitespace().next().unwrap_or("").to_string();
    let mut open: Vec<String> = Vec::new();
    let mut replaced: Vec<String> = Vec::new();
    let mut found = false;
    let mut out = String::new();
    for line in text.lines() {
        let t = line.trim();
        let indent = &line[..line.len() - line.trim_start().len()];
        let here = open.last().is_some_and(|c| c == context);
        if t.ends_with('{') {
            open.push(name(t));
        } else if t == "}" {
            if here {
                found = true;
                for d in directives.iter().filter(|d| !replaced.contains(&name(d))) {
                    out.push_str(&format!("{indent}    {d}\n"));
                }
                replaced.clear();
            }
            open.pop();
        } else if here && !t.starts_with('#') && t.ends_with(';') {
            if let Some(d) = directives.iter().find(|d| name(d) == name(t)) {
                out.push_str(&format!("{indent}{d}\n"));
                replaced.push(name(d));
                continue;
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    assert!(
        found || directives.is_empty(),
        "no {context} block to add {directives:?} to:\n{text}"
    );
    out
}

/// What a test chooses about its nginx; see [`Nginx::builder`].
#[derive(Clone, Debug)]
pub struct NginxBuilder {
    pass: String,
    keepalive: Option<u32>,
    server: Vec<String>,
    location: Vec<String>,
}

impl NginxBuilder {
    /// With `Some(idle)`, the contrib keep-alive block: an `upstream` block that keeps
    /// up to `idle` connections to pyfpm open, with `fastcgi_keep_conn on`. With `None`
    /// (the default) the contrib variant without keep-alive: nginx sends no
    /// FCGI_KEEP_CONN, so pyfpm closes each connection after its request.
    pub fn keepalive(mut self, idle: Option<u32>) -> Self {
        self.keepalive = idle;
        self
    }

    /// A directive of the `server` block, e.g. `client_max_body_size 16m;`; it replaces
    /// the contrib block's own setting of the same directive.
    pub fn server(mut self, directive: &str) -> Self {
        self.server.push(directive.into());
        self
    }

    /// A directive of `location /`, e.g. `fastcgi_read_timeout 120s;`; it replaces the
    /// contrib block's own setting of the same directive.
    pub fn location(mut self, directive: &str) -> Self {
        self.location.push(directive.into());
        self
    }

    /// The contrib server block for this test, listening on 127.0.0.1:`port`: the
    /// keep-alive block with `keepalive`, else the per-request variant for a Unix socket
    /// and the TCP variant for an address.
    fn site(&self, port: u16) -> String {
        let listen = ("listen 80;", format!("listen 127.0.0.1:{port};"));
        // The apps' SERVER_NAME, and the Host the tests' HTTP client sends.
        let server_name = ("server_name example.com;", "server_name localhost;".into());
        let site = match self.keepalive {
            Some(idle) => render(
                KEEP_ALIVE,
                &contrib_block(KEEP_ALIVE),
                &[
                    ("unix:/run/pyfpm/www.sock", self.pass.clone()),
                    // The documented count; tests vary it against the pool size.
                    ("keepalive 32;", format!("keepalive {idle};")),
                    listen,
                    // Loopback IPv4 only: a container may have no IPv6 at all.
                    ("listen [::]:80;", String::new()),
                    server_name,
                ],
            ),
            None if self.pass.starts_with("unix:") => render(
                PER_REQUEST,
                &contrib_block(PER_REQUEST),
                &[
                    ("unix:/run/pyfpm/www.sock", self.pass.clone()),
                    listen,
                    // Loopback IPv4 only: a container may have no IPv6 at all.
                    ("listen [::]:80;", String::new()),
                    server_name,
                ],
            ),
            None => render(
                TCP,
                &contrib_block(TCP),
                &[("127.0.0.1:9000", self.pass.clone()), listen, server_name],
            ),
        };
        let site = set_directives(&site, "server", &self.server);
        set_directives(&site, "location", &self.location)
    }

    /// The nginx.conf around the rendered site `<dir>/nginx-site.conf`, with every path
    /// of nginx's own inside `dir`.
    fn conf(dir: &Path) -> String {
        let d = dir.display();
        let mut c = String::from("daemon off;\nmaster_process on;\n");
        // As root, nginx would run its workers as `nobody`, who may not enter the test's
        // private temp dir or connect to a 0660 socket: keep them as the test's user.
        if nix::unistd::geteuid().is_root() {
            c.push_str("user root root;\n");
        }
        c.push_str(&format!(
            "pid {d}/nginx.pid;\nerror_log {d}/nginx-error.log;\nworker_processes 1;\n"
        ));
        // 256: a wrk run's 16 client connections plus as many kept-alive upstream ones.
        c.push_str("events { worker_connections 256; }\n");
        c.push_str(&format!(
            "http {{\n    access_log off;\n    client_body_temp_path {d}/client_body;\n    \
             fastcgi_temp_path {d}/fastcgi_temp;\n    proxy_temp_path {d}/proxy_temp;\n    \
             uwsgi_temp_path {d}/uwsgi_temp;\n    scgi_temp_path {d}/scgi_temp;\n    \
             include {d}/nginx-site.conf;\n}}\n"
        ));
        c
    }

    /// Write `<dir>/nginx.conf` and the rendered `<dir>/nginx-site.conf`, start nginx and
    /// wait until it listens; panics with its output if it exits or does not listen
    /// within [`START_TIMEOUT`].
    pub fn start(self, env: &TestEnv) -> Nginx {
        let bin = nginx_bin();
        let port = free_port();
        // nginx resolves the contrib block's `include fastcgi_params;` against the dir of
        // nginx.conf, as it does against /etc/nginx in an installed setup.
        std::fs::copy(FASTCGI_PARAMS, env.file("fastcgi_params"))
            .unwrap_or_else(|e| panic!("copy {FASTCGI_PARAMS} (from the nginx package): {e}"));
        std::fs::write(env.file("nginx-site.conf"), self.site(port)).unwrap();
        let conf_path = env.file("nginx.conf");
        std::fs::write(&conf_path, Self::conf(env.path())).unwrap();
        let error_log = env.file("nginx-error.log");
        let stderr_log = env.file("nginx-stderr.log");
        let out = std::fs::File::create(&stderr_log).unwrap();
        let child = Command::new(bin)
            .arg("-p")
            .arg(env.path())
            .arg("-e")
            .arg(&error_log)
            .arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("spawn nginx");
        let mut n = Nginx {
            child,
            port,
            error_log,
        };
        let up = wait_until(START_TIMEOUT, || {
            matches!(n.child.try_wait(), Ok(Some(_)))
                || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        if let Ok(Some(status)) = n.child.try_wait() {
            panic!(
                "nginx exited ({status}): {}{}",
                std::fs::read_to_string(&stderr_log).unwrap_or_default(),
                n.error_log()
            );
        }
        assert!(up, "nginx did not listen on {port}: {}", n.error_log());
        n
    }
}

/// A running nginx master started by a test, stopped by pid on drop.
pub struct Nginx {
    child: Child,
    /// Its HTTP port on 127.0.0.1.
    pub port: u16,
    error_log: PathBuf,
}

impl Nginx {
    /// An nginx passing every request to `pass` (`unix:/path` or `127.0.0.1:port`)
    /// directly, without upstream keep-alive; start it with [`NginxBuilder::start`].
    pub fn builder(pass: &str) -> NginxBuilder {
        NginxBuilder {
            pass: pass.into(),
            keepalive: None,
            server: Vec::new(),
            location: Vec::new(),
        }
    }

    /// Its error log so far.
    pub fn error_log(&self) -> String {
        std::fs::read_to_string(&self.error_log).unwrap_or_default()
    }

    /// One GET through nginx on a fresh client: (status, body).
    pub fn get(&self, target: &str) -> (u16, Vec<u8>) {
        let f = http::Client::new(self.port).request("GET", target, &[], b"");
        (f.status, f.body)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        stop_child(&mut self.child);
    }
}
