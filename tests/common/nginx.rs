//! Real nginx (the Debian package) in front of pyfpm: a stock `location /` with
//! `include /etc/nginx/fastcgi_params; fastcgi_pass ...;`, started in the test's dir on a
//! free loopback port and stopped by its pid on drop. The callers vary only what
//! [`NginxBuilder`] offers.

use super::{START_TIMEOUT, TestEnv, free_port, http, stop_child, wait_until};
use std::fmt::Write as _;
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

/// What a test chooses about its nginx; see [`Nginx::builder`].
#[derive(Clone, Debug)]
pub struct NginxBuilder {
    pass: String,
    keepalive: Option<u32>,
    server: Vec<String>,
    location: Vec<String>,
}

impl NginxBuilder {
    /// With `Some(idle)`, pass requests through an `upstream` block that keeps up to
    /// `idle` connections to pyfpm open, with `fastcgi_keep_conn on`. With `None` (the
    /// default) nginx sends no FCGI_KEEP_CONN, so pyfpm closes each connection after its
    /// request.
    pub fn keepalive(mut self, idle: Option<u32>) -> Self {
        self.keepalive = idle;
        self
    }

    /// An extra directive of the `server` block, e.g. `client_max_body_size 16m;`.
    pub fn server(mut self, directive: &str) -> Self {
        self.server.push(directive.into());
        self
    }

    /// An extra directive of `location /`, e.g. `fastcgi_read_timeout 120s;`.
    pub fn location(mut self, directive: &str) -> Self {
        self.location.push(directive.into());
        self
    }

    /// The nginx.conf for a server listening on 127.0.0.1:`port`, with every path of
    /// nginx's own inside `dir`.
    fn conf(&self, dir: &Path, port: u16) -> String {
        let d = dir.display();
        let mut c = String::new();
        writeln!(c, "daemon off;\nmaster_process on;").unwrap();
        // As root, nginx would run its workers as `nobody`, who may not enter the test's
        // private temp dir or connect to a 0660 socket: keep them as the test's user.
        if nix::unistd::geteuid().is_root() {
            writeln!(c, "user root root;").unwrap();
        }
        writeln!(c, "pid {d}/nginx.pid;\nerror_log {d}/nginx-error.log;").unwrap();
        // 256: a wrk run's 16 client connections plus as many kept-alive upstream ones.
        writeln!(
            c,
            "worker_processes 1;\nevents {{ worker_connections 256; }}"
        )
        .unwrap();
        writeln!(c, "http {{\n    access_log off;").unwrap();
        writeln!(
            c,
            "    client_body_temp_path {d}/client_body;\n    fastcgi_temp_path {d}/fastcgi_temp;\n    \
             proxy_temp_path {d}/proxy_temp;\n    uwsgi_temp_path {d}/uwsgi_temp;\n    \
             scgi_temp_path {d}/scgi_temp;"
        )
        .unwrap();
        let target = match self.keepalive {
            Some(idle) => {
                writeln!(
                    c,
                    "    upstream pyfpm {{ server {}; keepalive {idle}; }}",
                    self.pass
                )
                .unwrap();
                "pyfpm"
            }
            None => self.pass.as_str(),
        };
        writeln!(c, "    server {{\n        listen 127.0.0.1:{port};").unwrap();
        // The apps' SERVER_NAME, and the Host the tests' HTTP client sends.
        writeln!(c, "        server_name localhost;").unwrap();
        for s in &self.server {
            writeln!(c, "        {s}").unwrap();
        }
        writeln!(c, "        location / {{").unwrap();
        writeln!(c, "            include /etc/nginx/fastcgi_params;").unwrap();
        writeln!(c, "            fastcgi_pass {target};").unwrap();
        if self.keepalive.is_some() {
            writeln!(c, "            fastcgi_keep_conn on;").unwrap();
        }
        for l in &self.location {
            writeln!(c, "            {l}").unwrap();
        }
        writeln!(c, "        }}\n    }}\n}}").unwrap();
        c
    }

    /// Write `<dir>/nginx.conf`, start nginx and wait until it listens; panics with its
    /// output if it exits or does not listen within [`START_TIMEOUT`].
    pub fn start(self, env: &TestEnv) -> Nginx {
        let bin = nginx_bin();
        let port = free_port();
        let conf_path = env.file("nginx.conf");
        std::fs::write(&conf_path, self.conf(env.path(), port)).unwrap();
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
