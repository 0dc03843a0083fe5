//! Process management by the real `pyfpm` binary: worker replacement, start-up back-off,
//! fast and graceful stops, socket safety, socket modes and daemon mode.

mod common;

use common::fcgi::{self, Addr, CgiResponseExt as _, Conn, Request};
use common::{Pool, TestEnv, alive, wait_until};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

fn unix_pool(env: &TestEnv, app: &str) -> (Pool, Addr) {
    let sock = env.file("www.sock");
    (
        Pool::new("www", app).listen(&sock.display().to_string()),
        Addr::Unix(sock),
    )
}

fn echo_pid(addr: &Addr) -> i64 {
    let v = fcgi::request(addr, &Request::get("/")).json();
    v["pid"].as_i64().expect("pid in echo JSON")
}

#[test]
fn killed_worker_is_replaced_and_the_signal_is_logged() {
    let env = TestEnv::new();
    let (pool, addr) = unix_pool(&env, "echo:application");
    let p = env.start(&[pool], &addr);
    let old = echo_pid(&addr);
    // The worker is our grandchild, named by pid: kill exactly it.
    kill(Pid::from_raw(old as i32), Signal::SIGKILL).expect("kill the worker");
    let log = p.wait_log("SIGKILL", Duration::from_secs(15));
    assert!(
        log.lines()
            .any(|l| l.contains(&old.to_string()) && l.contains("SIGKILL")),
        "no log line names worker {old} and SIGKILL:\n{log}"
    );
    let mut new = old;
    assert!(
        wait_until(Duration::from_secs(20), || {
            if let Ok(()) = common::probe(&addr, Duration::from_secs(2)) {
                new = echo_pid(&addr);
            }
            new != old
        }),
        "no new worker served within 20 s; log:\n{}",
        p.log_text()
    );
    assert!(alive(new as i32));
    p.wait_log(&format!("child {new} started"), Duration::from_secs(5));
}

#[test]
fn worker_that_exits_is_replaced() {
    let env = TestEnv::new();
    let (pool, addr) = unix_pool(&env, "crash:application");
    let p = env.start(&[pool], &addr);
    let old = fcgi::request(&addr, &Request::get("/")).body;
    let r = fcgi::request_raw(&addr, &Request::get("/crash"));
    assert!(
        r.protocol_status.is_none(),
        "a dead worker cannot end the request"
    );
    let mut new = old.clone();
    assert!(
        wait_until(Duration::from_secs(20), || {
            if common::probe(&addr, Duration::from_secs(2)).is_ok() {
                new = fcgi::request(&addr, &Request::get("/")).body;
            }
            new != old
        }),
        "no replacement worker; log:\n{}",
        p.log_text()
    );
    p.wait_log("code 1", Duration::from_secs(5));
}

#[test]
fn app_that_fails_to_import_is_retried_slowly_and_never_serves() {
    let env = TestEnv::new();
    let (pool, addr) = unix_pool(&env, "badimport:application");
    let config = env.write_config(&[], &[pool]);
    let mut p = env.spawn(&config, "pyfpm.log", &["-F"]);
    let log = p.wait_log("failed to start", Duration::from_secs(20));
    assert!(
        log.contains("pyfpm-test-import-failure-marker"),
        "the import error is not in the log:\n{log}"
    );
    // Observe ~6 s: a fork bomb would log dozens of failures.
    let t0 = Instant::now();
    let first = log.matches("failed to start").count();
    // Meanwhile a request must not be answered by anything.
    let mut c = Conn::connect(&addr).expect("the socket is bound even without workers");
    c.set_timeout(Duration::from_secs(3));
    let _ = c.send(&Request::get("/").encode());
    let served = matches!(c.read_response(1), Ok(r) if r.protocol_status.is_some());
    assert!(
        !served,
        "a request was answered by a pool whose app cannot import"
    );
    std::thread::sleep(Duration::from_secs(6).saturating_sub(t0.elapsed()));
    let log = p.log_text();
    let later = log.matches("failed to start").count();
    assert!(
        later - first <= 4,
        "{} failed starts in ~6 s: no back-off\n{log}",
        later - first
    );
    assert!(
        p.try_exit().is_none(),
        "the manager must keep running:\n{log}"
    );
}

#[test]
fn term_stops_fast_and_removes_the_socket() {
    let env = TestEnv::new();
    let (pool, addr) = unix_pool(&env, "echo:application");
    let mut p = env.start(&[pool], &addr);
    let worker = echo_pid(&addr);
    p.signal(Signal::SIGTERM);
    let status = p
        .wait_exit(Duration::from_secs(10))
        .unwrap_or_else(|| panic!("still running 10 s after SIGTERM:\n{}", p.log_text()));
    assert!(status.success(), "exit status {status}:\n{}", p.log_text());
    assert!(!env.file("www.sock").exists(), "socket file left behind");
    assert!(
        wait_until(Duration::from_secs(5), || !alive(worker as i32)),
        "worker {worker} outlived the manager"
    );
}

#[test]
fn int_stops_like_term() {
    let env = TestEnv::new();
    let (pool, addr) = unix_pool(&env, "echo:application");
    let mut p = env.start(&[pool], &addr);
    p.signal(Signal::SIGINT);
    let status = p
        .wait_exit(Duration::from_secs(10))
        .unwrap_or_else(|| panic!("still running 10 s after SIGINT:\n{}", p.log_text()));
    assert!(status.success(), "exit status {status}");
    assert!(!env.file("www.sock").exists(), "socket file left behind");
}

#[test]
fn quit_lets_the_in_flight_request_finish() {
    let env = TestEnv::new();
    let (pool, addr) = unix_pool(&env, "echo:application");
    let mut p = env.start(&[pool], &addr);
    let started = env.file("started");
    let a = addr.clone();
    let path = format!("/slow?sleep=2&touch={}", started.display());
    let client = std::thread::spawn(move || fcgi::request(&a, &Request::get(&path)));
    assert!(
        wait_until(Duration::from_secs(15), || started.exists()),
        "the slow request never reached the app"
    );
    p.signal(Signal::SIGQUIT);
    let r = client.join().expect("client thread");
    assert_eq!(r.status, 200, "the in-flight request was cut by SIGQUIT");
    assert_eq!(r.json()["environ"]["PATH_INFO"], "/slow");
    let status = p
        .wait_exit(Duration::from_secs(20))
        .unwrap_or_else(|| panic!("still running 20 s after SIGQUIT:\n{}", p.log_text()));
    assert!(status.success(), "exit status {status}");
    assert!(!env.file("www.sock").exists(), "socket file left behind");
}

#[test]
fn second_instance_on_the_same_socket_is_refused() {
    let env = TestEnv::new();
    let (pool, addr) = unix_pool(&env, "echo:application");
    let config = env.write_config(&[], &[pool]);
    let mut first = env.spawn(&config, "first.log", &["-F"]);
    first.wait_serving(&addr);
    let before = echo_pid(&addr);
    let mut second = env.spawn(&config, "second.log", &["-F"]);
    let status = second
        .wait_exit(Duration::from_secs(20))
        .unwrap_or_else(|| panic!("second instance still running:\n{}", second.log_text()));
    assert!(!status.success(), "the second instance must fail");
    let msg = second.log_text().to_lowercase();
    assert!(
        msg.contains("refus"),
        "the message should say it refuses the live socket:\n{msg}"
    );
    assert!(first.try_exit().is_none(), "the first instance died");
    assert_eq!(
        echo_pid(&addr),
        before,
        "the first instance no longer serves"
    );
}

#[test]
fn stale_socket_file_is_replaced() {
    let env = TestEnv::new();
    let sock = env.file("www.sock");
    // A socket file nobody listens on any more: bound, then closed.
    drop(std::os::unix::net::UnixListener::bind(&sock).expect("bind stale socket"));
    assert!(sock.exists());
    let (pool, addr) = unix_pool(&env, "echo:application");
    let _p = env.start(&[pool], &addr);
    assert_eq!(fcgi::request(&addr, &Request::get("/")).status, 200);
}

#[test]
fn listen_mode_is_applied_to_the_socket() {
    let env = TestEnv::new();
    let (pool, addr) = unix_pool(&env, "echo:application");
    let _p = env.start(&[pool.with("listen.mode: \"0600\"")], &addr);
    let mode = std::fs::metadata(env.file("www.sock"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "socket mode {:o}", mode & 0o777);
}

#[test]
fn default_listen_mode_is_0660() {
    let env = TestEnv::new();
    let (pool, addr) = unix_pool(&env, "echo:application");
    let _p = env.start(&[pool], &addr);
    let mode = std::fs::metadata(env.file("www.sock"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o660, "socket mode {:o}", mode & 0o777);
}

/// Stops a daemon we launched, by the pid its pid file named, if a test failed midway.
struct DaemonGuard(Option<i32>);

impl Drop for DaemonGuard {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            if alive(pid) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
                if !wait_until(Duration::from_secs(10), || !alive(pid)) {
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                }
            }
        }
    }
}

#[test]
fn daemon_mode_writes_a_pid_file_and_stops_on_term() {
    let env = TestEnv::new();
    let (pool, addr) = unix_pool(&env, "echo:application");
    let pid_file = env.file("pyfpm.pid");
    let error_log = env.file("error.log");
    let config = env.write_config(
        &[
            &format!("pid: {}", common::yq(&pid_file.display().to_string())),
            &format!(
                "error_log: {}",
                common::yq(&error_log.display().to_string())
            ),
        ],
        &[pool],
    );
    let mut launcher = env.spawn(&config, "launcher.log", &["-D"]);
    let status = launcher
        .wait_exit(Duration::from_secs(20))
        .unwrap_or_else(|| panic!("the -D launcher did not return:\n{}", launcher.log_text()));
    let mut guard = DaemonGuard(None);
    assert!(
        wait_until(Duration::from_secs(10), || pid_file.exists()),
        "no pid file; launcher said:\n{}",
        launcher.log_text()
    );
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .expect("pid file holds a number");
    guard.0 = Some(pid);
    assert!(status.success(), "launcher exit status {status}");
    assert!(alive(pid), "the pid file names a dead process");
    assert_ne!(
        pid,
        launcher.child.id() as i32,
        "the daemon must not be the launcher"
    );
    // Serving.
    let deadline = Instant::now() + common::START_TIMEOUT;
    while common::probe(&addr, Duration::from_secs(2)).is_err() {
        assert!(
            Instant::now() < deadline,
            "the daemon does not serve; error_log:\n{}",
            std::fs::read_to_string(&error_log).unwrap_or_default()
        );
        std::thread::sleep(common::POLL);
    }
    assert_eq!(fcgi::request(&addr, &Request::get("/")).status, 200);
    assert!(error_log.exists(), "error_log not written");
    kill(Pid::from_raw(pid), Signal::SIGTERM).unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || !alive(pid)),
        "the daemon survived SIGTERM"
    );
    assert!(
        wait_until(Duration::from_secs(5), || !pid_file.exists()),
        "pid file left behind"
    );
    assert!(!env.file("www.sock").exists(), "socket file left behind");
}

#[test]
fn pools_from_the_include_glob_are_served() {
    let env = TestEnv::new();
    std::fs::create_dir(env.file("pools.d")).unwrap();
    let a = env.file("a.sock");
    let b = env.file("b.sock");
    for (file, name, sock) in [("10-alpha.yaml", "alpha", &a), ("20-beta.yaml", "beta", &b)] {
        let pool = Pool::new(name, "echo:application").listen(&sock.display().to_string());
        std::fs::write(env.file("pools.d").join(file), env.pool_yaml(&pool, 0)).unwrap();
    }
    // A relative glob: relative to the main file's directory, not to our cwd.
    let main = env.file("main.yaml");
    std::fs::write(&main, "daemonize: false\ninclude: \"pools.d/*.yaml\"\n").unwrap();
    let mut p = env.spawn(&main, "pyfpm.log", &["-F"]);
    for sock in [&a, &b] {
        let addr = Addr::Unix(sock.clone());
        p.wait_serving(&addr);
        assert_eq!(fcgi::request(&addr, &Request::get("/")).status, 200);
    }
    let log = p.log_text();
    assert!(
        log.contains("[pool alpha]") && log.contains("[pool beta]"),
        "{log}"
    );
}

#[test]
fn env_clear_env_and_chdir_shape_the_workers_environment() {
    let env = TestEnv::new();
    let work = env.file("work");
    std::fs::create_dir(&work).unwrap();
    let cleared_sock = env.file("cleared.sock");
    let kept_sock = env.file("kept.sock");
    let cleared = Pool::new("cleared", "echo:application")
        .listen(&cleared_sock.display().to_string())
        .with("env:")
        .with("  PYFPM_TEST_POOL_VAR: from-config")
        .with(&format!(
            "chdir: {}",
            common::yq(&work.display().to_string())
        ));
    let kept = Pool::new("kept", "echo:application")
        .listen(&kept_sock.display().to_string())
        .with("clear_env: false");
    let config = env.write_config(&[], &[cleared, kept]);
    let mut p = env.spawn_env(
        &config,
        "pyfpm.log",
        &["-F"],
        &[("PYFPM_TEST_LEAK", "leaked")],
    );
    let cleared = Addr::Unix(cleared_sock);
    let kept = Addr::Unix(kept_sock);
    p.wait_serving(&cleared);
    p.wait_serving(&kept);
    let q = "/?osenv=PYFPM_TEST_LEAK&osenv=PYFPM_TEST_POOL_VAR";
    let v = fcgi::request(&cleared, &Request::get(q)).json();
    assert_eq!(v["osenv"]["PYFPM_TEST_POOL_VAR"], "from-config");
    assert_eq!(
        v["osenv"]["PYFPM_TEST_LEAK"],
        serde_json::Value::Null,
        "clear_env (the default) must not pass the manager's environment"
    );
    assert_eq!(
        std::path::Path::new(v["cwd"].as_str().unwrap())
            .canonicalize()
            .unwrap(),
        work.canonicalize().unwrap(),
        "chdir"
    );
    let v = fcgi::request(&kept, &Request::get(q)).json();
    assert_eq!(v["osenv"]["PYFPM_TEST_LEAK"], "leaked", "clear_env: false");
}

#[test]
fn default_interpreter_is_python3_on_path() {
    let env = TestEnv::new();
    let (pool, addr) = unix_pool(&env, "echo:application");
    let _p = env.start(&[pool.default_python()], &addr);
    let v = fcgi::request(&addr, &Request::get("/")).json();
    assert_eq!(v["environ"]["PATH_INFO"], "/");
}

#[test]
fn an_apps_printed_lines_reach_the_log_after_each_request() {
    let env = TestEnv::new();
    let (pool, addr) = unix_pool(&env, "printer:application");
    let p = env.start(&[pool.children(1)], &addr);
    // The original sys.stdout writes straight through.
    let r = fcgi::request(&addr, &Request::get("/?line=straight-through-1"));
    assert_eq!(r.body, b"printed");
    p.wait_log(
        "said into stdout: \"straight-through-1\"",
        Duration::from_secs(15),
    );
    // A buffered replacement is flushed by the worker after the request.
    let r = fcgi::request(&addr, &Request::get("/?buffered=1&line=from-a-buffer-2"));
    assert_eq!(r.body, b"printed");
    p.wait_log(
        "said into stdout: \"from-a-buffer-2\"",
        Duration::from_secs(15),
    );
}
