//! Shared harness of the integration tests: a temp dir per test, config writing, starting
//! the real `pyfpm` binary with its log captured to a file, readiness and log waits,
//! stopping it by pid, a free-port picker, and small helpers (CRC-32, test bodies); real
//! nginx in front of it is [`nginx::Nginx`].
//! Only processes started here are ever signalled, and only by their pid.

// Each test crate uses a different subset of the harness.
#![allow(dead_code)]

pub mod fcgi;
pub mod http;
pub mod nginx;
pub mod notify;

use fcgi::{Addr, Request};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How long pyfpm may take to start serving.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);
/// Poll interval of every wait loop.
pub const POLL: Duration = Duration::from_millis(50);

/// The pyfpm binary under test.
pub fn pyfpm_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_pyfpm"))
}

/// Fail clearly when the worker module was not built next to the binary: `cargo test`
/// builds only the manager, the cdylib comes from `cargo build --workspace`.
pub fn require_worker_module() {
    let bin = pyfpm_bin();
    let dir = bin.parent().expect("binary has a directory");
    let module = dir.join("libpyfpm_worker.so");
    assert!(
        module.is_file(),
        "the worker module {} is missing: run `cargo build --workspace` first \
         (same profile as the tests), then run the tests again",
        module.display()
    );
}

/// The tests' Python apps.
pub fn apps_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/apps")
}

/// The real interpreter (not a pyenv-style shim, which needs an environment the
/// workers do not get with `clear_env`). `PYFPM_TEST_PYTHON` overrides.
pub fn python() -> &'static str {
    static PY: OnceLock<String> = OnceLock::new();
    PY.get_or_init(|| {
        if let Ok(p) = std::env::var("PYFPM_TEST_PYTHON") {
            return p;
        }
        let out = Command::new("python3")
            .args(["-c", "import sys; print(sys.executable)"])
            .output()
            .expect("python3 must be on PATH to run the integration tests");
        assert!(out.status.success(), "python3 -c failed: {out:?}");
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    })
}

/// A free loopback TCP port (bound to port 0, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind 127.0.0.1:0")
        .local_addr()
        .unwrap()
        .port()
}

/// A YAML double-quoted string.
pub fn yq(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

/// One pool of a generated config.
#[derive(Clone, Debug)]
pub struct Pool {
    /// Pool name.
    pub name: String,
    /// Listen addresses as written in the config.
    pub listen: Vec<String>,
    /// `module:callable`.
    pub app: String,
    /// pm.max_children.
    pub max_children: u32,
    /// Extra directive lines, already YAML (`key: value`), indented by the writer.
    pub extra: Vec<String>,
    /// Leave `python:` out, so pyfpm picks `python3` on PATH.
    pub default_python: bool,
}

impl Pool {
    /// A pool running `app` with one worker.
    pub fn new(name: &str, app: &str) -> Pool {
        Pool {
            name: name.into(),
            listen: Vec::new(),
            app: app.into(),
            max_children: 1,
            extra: Vec::new(),
            default_python: false,
        }
    }

    /// Builder: add a listen address.
    pub fn listen(mut self, addr: &str) -> Pool {
        self.listen.push(addr.into());
        self
    }

    /// Builder: pm.max_children.
    pub fn children(mut self, n: u32) -> Pool {
        self.max_children = n;
        self
    }

    /// Builder: no `python:` directive.
    pub fn default_python(mut self) -> Pool {
        self.default_python = true;
        self
    }

    /// Builder: an extra directive line.
    pub fn with(mut self, line: &str) -> Pool {
        self.extra.push(line.into());
        self
    }
}

/// A test's private directory and the config written into it.
pub struct TestEnv {
    /// The temp dir (removed on drop).
    pub dir: tempfile::TempDir,
}

impl TestEnv {
    /// A fresh temp dir. Checks the worker module first.
    pub fn new() -> TestEnv {
        require_worker_module();
        // Short paths: Unix socket paths are limited to 107 bytes.
        let dir = tempfile::Builder::new()
            .prefix("pyfpm-it-")
            .tempdir_in("/tmp")
            .expect("create temp dir");
        TestEnv { dir }
    }

    /// The temp dir's path.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A path inside the temp dir.
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The YAML block of one pool (`name:` and its directives), indented by `indent`.
    pub fn pool_yaml(&self, p: &Pool, indent: usize) -> String {
        let pad = " ".repeat(indent);
        let mut y = String::new();
        writeln!(y, "{pad}{}:", p.name).unwrap();
        if p.listen.len() == 1 {
            writeln!(y, "{pad}  listen: {}", yq(&p.listen[0])).unwrap();
        } else {
            writeln!(y, "{pad}  listen:").unwrap();
            for l in &p.listen {
                writeln!(y, "{pad}    - {}", yq(l)).unwrap();
            }
        }
        writeln!(y, "{pad}  pm: static").unwrap();
        writeln!(y, "{pad}  pm.max_children: {}", p.max_children).unwrap();
        writeln!(y, "{pad}  app: {}", yq(&p.app)).unwrap();
        if !p.default_python {
            writeln!(y, "{pad}  python: {}", yq(python())).unwrap();
        }
        writeln!(y, "{pad}  python_path:").unwrap();
        writeln!(y, "{pad}    - {}", yq(&apps_dir().display().to_string())).unwrap();
        let has_env = p.extra.iter().any(|e| e.starts_with("env:"));
        if !has_env {
            writeln!(y, "{pad}  env:").unwrap();
            writeln!(
                y,
                "{pad}    PYFPM_TEST_DIR: {}",
                yq(&self.path().display().to_string())
            )
            .unwrap();
        }
        for e in &p.extra {
            writeln!(y, "{pad}  {e}").unwrap();
        }
        y
    }

    /// Write the main config with `pools` (and extra global lines); returns its path.
    pub fn write_config(&self, global: &[&str], pools: &[Pool]) -> PathBuf {
        let mut y = String::new();
        writeln!(y, "daemonize: false").unwrap();
        writeln!(y, "log_level: notice").unwrap();
        for g in global {
            writeln!(y, "{g}").unwrap();
        }
        writeln!(y, "pools:").unwrap();
        for p in pools {
            y.push_str(&self.pool_yaml(p, 2));
        }
        let path = self.file("main.yaml");
        std::fs::write(&path, y).expect("write config");
        path
    }

    /// Start `pyfpm -F -c <config>` with its stderr in `<dir>/<log_name>`.
    pub fn spawn(&self, config: &Path, log_name: &str, extra_args: &[&str]) -> Pyfpm {
        self.spawn_env(config, log_name, extra_args, &[])
    }

    /// [`spawn`](Self::spawn) with extra variables in the manager's environment.
    pub fn spawn_env(
        &self,
        config: &Path,
        log_name: &str,
        extra_args: &[&str],
        vars: &[(&str, &str)],
    ) -> Pyfpm {
        let log = self.file(log_name);
        let out = std::fs::File::create(&log).expect("create log file");
        let child = Command::new(pyfpm_bin())
            .args(extra_args)
            .arg("-c")
            .arg(config)
            .envs(vars.iter().copied())
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("spawn pyfpm");
        Pyfpm {
            child,
            log,
            exited: None,
        }
    }

    /// Write the config, start pyfpm in the foreground and wait until `ready_on` serves.
    pub fn start(&self, pools: &[Pool], ready_on: &Addr) -> Pyfpm {
        let config = self.write_config(&[], pools);
        let mut p = self.spawn(&config, "pyfpm.log", &["-F"]);
        p.wait_serving(ready_on);
        p
    }
}

/// A running pyfpm started by a test. Dropping it stops it (TERM, then KILL) by pid.
pub struct Pyfpm {
    /// The process.
    pub child: Child,
    /// Its stderr/stdout log file.
    pub log: PathBuf,
    /// Its exit status once reaped.
    pub exited: Option<ExitStatus>,
}

impl Pyfpm {
    /// Its pid.
    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    /// The log so far.
    pub fn log_text(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.log).unwrap_or_default()).into_owned()
    }

    /// Has it exited? Reaps it if so.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().expect("try_wait");
        }
        self.exited
    }

    /// Wait up to `within` for it to exit.
    pub fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(s) = self.try_exit() {
                return Some(s);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(POLL);
        }
    }

    /// Send a signal to the manager.
    pub fn signal(&self, sig: Signal) {
        if self.exited.is_none() {
            let _ = kill(self.pid(), sig);
        }
    }

    /// Wait until a full request on `addr` is answered, failing with the log if pyfpm
    /// exits or the deadline passes.
    pub fn wait_serving(&mut self, addr: &Addr) {
        let deadline = Instant::now() + START_TIMEOUT;
        let mut last_err = String::from("not tried");
        loop {
            if let Some(status) = self.try_exit() {
                panic!(
                    "pyfpm exited ({status}) before serving on {addr}; log:\n{}",
                    self.log_text()
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "pyfpm did not serve on {addr} within {START_TIMEOUT:?} (last error: \
                     {last_err}); log:\n{}",
                    self.log_text()
                );
            }
            match probe(addr, Duration::from_secs(2)) {
                Ok(()) => return,
                Err(e) => last_err = e,
            }
            std::thread::sleep(POLL);
        }
    }

    /// Wait until the log contains `needle` (bounded); returns the log.
    pub fn wait_log(&self, needle: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let text = self.log_text();
            if text.contains(needle) {
                return text;
            }
            if Instant::now() > deadline {
                panic!("log never contained {needle:?} within {within:?}; log:\n{text}");
            }
            std::thread::sleep(POLL);
        }
    }

    /// TERM, wait, KILL: stop it for good.
    pub fn stop(&mut self) {
        if self.try_exit().is_some() {
            return;
        }
        self.signal(Signal::SIGTERM);
        if self.wait_exit(Duration::from_secs(10)).is_none() {
            let _ = kill(self.pid(), Signal::SIGKILL);
            let _ = self.child.wait();
        }
    }
}

impl Drop for Pyfpm {
    fn drop(&mut self) {
        self.stop();
        // A failing test shows what pyfpm said (the temp dir is about to go).
        if std::thread::panicking() {
            eprintln!(
                "---- pyfpm log ({}) ----\n{}",
                self.log.display(),
                self.log_text()
            );
        }
    }
}

/// One full request with a bounded read: Ok when END_REQUEST arrives.
pub fn probe(addr: &Addr, timeout: Duration) -> Result<(), String> {
    let mut c = fcgi::Conn::connect(addr).map_err(|e| format!("connect: {e}"))?;
    c.set_timeout(timeout);
    let r = c
        .request(&Request::get("/__pyfpm_probe"))
        .map_err(|e| format!("request: {e}"))?;
    if r.protocol_status.is_some() {
        Ok(())
    } else {
        Err("connection closed without END_REQUEST".into())
    }
}

/// Stop a helper process a test started (nginx, another web server): TERM, up to 10 s
/// for it to exit, then KILL; by its pid only, and nothing if it has already exited.
pub fn stop_child(child: &mut Child) {
    if let Ok(None) = child.try_wait() {
        let pid = Pid::from_raw(child.id() as i32);
        let _ = kill(pid, Signal::SIGTERM);
        if !wait_until(Duration::from_secs(10), || {
            matches!(child.try_wait(), Ok(Some(_)))
        }) {
            let _ = kill(pid, Signal::SIGKILL);
            let _ = child.wait();
        }
    }
}

/// Whether `pid` names a live process (a zombie counts as gone).
pub fn alive(pid: i32) -> bool {
    if kill(Pid::from_raw(pid), None).is_err() {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            // The state follows the parenthesised command name.
            let state = stat.rsplit(')').next().unwrap_or("").trim_start();
            !state.starts_with('Z') && !state.starts_with('X')
        }
        Err(_) => false,
    }
}

/// Poll `cond` every [`POLL`] until it holds or `within` passes.
pub fn wait_until(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(POLL);
    }
}

/// Deterministic pseudo-random bytes (so a misplaced chunk changes the checksum).
pub fn test_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 56) as u8
        })
        .collect()
}

/// CRC-32 (IEEE, as Python's `zlib.crc32`).
pub fn crc32(data: &[u8]) -> u32 {
    static TABLE: OnceLock<[u32; 256]> = OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (i, e) in t.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
            *e = c;
        }
        t
    });
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc = table[((crc ^ b as u32) & 0xFF) as usize] ^ (crc >> 8);
    }
    crc ^ 0xFFFF_FFFF
}

/// The string whose code points are the bytes of `raw` (PEP 3333's latin-1 decoding).
pub fn latin1(raw: &[u8]) -> String {
    raw.iter().map(|&b| b as char).collect()
}

#[test]
fn crc32_matches_zlib() {
    // zlib.crc32(b"123456789") == 0xCBF43926
    assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
}

// ---- Process-manager helpers (pm, recycling, timeouts, crashes, signals) ----

/// Live (not zombie) processes whose parent is `pid`, by scanning `/proc/*/stat`.
/// Workers may be forked by any thread of the manager, and `/proc/<pid>/task/<tid>/children`
/// is per thread, so the parent pid field of every process is the reliable source.
pub fn children_of(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let Some(child) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue; // gone meanwhile
        };
        // After the parenthesised command name: " S ppid ...".
        let mut rest = stat.rsplit(')').next().unwrap_or("").split_whitespace();
        let state = rest.next().unwrap_or("");
        let ppid: i32 = rest.next().and_then(|s| s.parse().ok()).unwrap_or(-1);
        if ppid == pid && state != "Z" && state != "X" {
            out.push(child);
        }
    }
    out.sort_unstable();
    out
}

/// Poll the number of live children of `pid` until `pred(count)` holds or `within`
/// passes. Ok(count) when it held, Err(last count) otherwise.
pub fn wait_children(
    pid: i32,
    within: Duration,
    mut pred: impl FnMut(usize) -> bool,
) -> Result<usize, usize> {
    let deadline = Instant::now() + within;
    loop {
        let n = children_of(pid).len();
        if pred(n) {
            return Ok(n);
        }
        if Instant::now() > deadline {
            return Err(n);
        }
        std::thread::sleep(POLL);
    }
}

/// Every live-children count of `pid` seen while polling for `during` (one per poll).
pub fn sample_children(pid: i32, during: Duration) -> Vec<usize> {
    let deadline = Instant::now() + during;
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        seen.push(children_of(pid).len());
        std::thread::sleep(POLL);
    }
    seen
}

/// A pool's YAML with `pm: static` replaced by `pm: <mode>` (the rest as [`TestEnv::pool_yaml`]).
pub fn pool_yaml_pm(env: &TestEnv, p: &Pool, mode: &str, indent: usize) -> String {
    let y = env.pool_yaml(p, indent);
    let pad = " ".repeat(indent);
    let from = format!("{pad}  pm: static\n");
    assert!(y.contains(&from), "pool_yaml no longer writes {from:?}");
    y.replacen(&from, &format!("{pad}  pm: {mode}\n"), 1)
}

/// [`TestEnv::write_config`] with a pm mode per pool.
pub fn write_config_pm(env: &TestEnv, global: &[&str], pools: &[(Pool, &str)]) -> PathBuf {
    let mut y = String::new();
    writeln!(y, "daemonize: false").unwrap();
    writeln!(y, "log_level: notice").unwrap();
    for g in global {
        writeln!(y, "{g}").unwrap();
    }
    writeln!(y, "pools:").unwrap();
    for (p, mode) in pools {
        y.push_str(&pool_yaml_pm(env, p, mode, 2));
    }
    let path = env.file("main.yaml");
    std::fs::write(&path, y).expect("write config");
    path
}

/// Start pyfpm on `config` (foreground) and wait, without sending any request, for the
/// log line "ready to handle connections". Tests that count requests per worker use this
/// instead of [`Pyfpm::wait_serving`], whose probe requests would count too.
pub fn start_quiet(env: &TestEnv, config: &Path) -> Pyfpm {
    let mut p = env.spawn(config, "pyfpm.log", &["-F"]);
    let deadline = Instant::now() + START_TIMEOUT;
    while !p.log_text().contains("ready to handle connections") {
        if let Some(status) = p.try_exit() {
            panic!(
                "pyfpm exited ({status}) before it was ready; log:\n{}",
                p.log_text()
            );
        }
        assert!(
            Instant::now() < deadline,
            "no \"ready to handle connections\" within {START_TIMEOUT:?}; log:\n{}",
            p.log_text()
        );
        std::thread::sleep(POLL);
    }
    p
}

/// Pids named by the log lines `[pool <pool>] child <pid> <verb>` (e.g. verb `started`,
/// `exited`), in log order.
pub fn log_pids(log: &str, pool: &str, verb: &str) -> Vec<i32> {
    let head = format!("[pool {pool}] child ");
    log.lines()
        .filter_map(|l| {
            let rest = &l[l.find(&head)? + head.len()..];
            let (pid, tail) = rest.split_once(' ')?;
            tail.starts_with(verb).then(|| pid.parse().ok()).flatten()
        })
        .collect()
}

/// Index of the first log line containing every one of `needles`, if any.
pub fn log_line_index(log: &str, needles: &[&str]) -> Option<usize> {
    log.lines()
        .position(|l| needles.iter().all(|n| l.contains(n)))
}

/// GET `uri` on `addr` and return (HTTP status, body parsed as JSON or Null).
pub fn get_json(addr: &Addr, uri: &str) -> (u16, serde_json::Value) {
    let r = fcgi::request(addr, &Request::get(uri));
    let v = serde_json::from_slice(&r.body).unwrap_or(serde_json::Value::Null);
    (r.status, v)
}

/// The `pid` field of a JSON answer from the tests' apps.
pub fn json_pid(v: &serde_json::Value) -> i32 {
    v["pid"]
        .as_i64()
        .unwrap_or_else(|| panic!("no pid in the answer {v}")) as i32
}

/// Run `n` requests for `uri` on `addr` at once, each on its own thread; returns the
/// join handles (each yields the full response or the client error).
pub fn concurrent_gets(
    addr: &Addr,
    uri: &str,
    n: usize,
) -> Vec<std::thread::JoinHandle<Result<fcgi::Response, String>>> {
    (0..n)
        .map(|i| {
            let a = addr.clone();
            let u = uri.replace("{i}", &i.to_string());
            std::thread::spawn(move || {
                let mut c = fcgi::Conn::connect(&a).map_err(|e| format!("connect: {e}"))?;
                c.set_timeout(Duration::from_secs(60));
                c.request(&Request::get(&u))
                    .map_err(|e| format!("request: {e}"))
            })
        })
        .collect()
}
