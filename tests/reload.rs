//! Graceful reload (SIGUSR2/SIGHUP) against the real binary: a broken config keeps the
//! old generation serving; pools are added, removed and changed; an unchanged Unix
//! socket is never re-bound; an in-flight request survives; a storm of signals ends in
//! one generation; and under `wrk` load through real nginx (with and without
//! `fastcgi_keep_conn`) repeated reloads fail no request.

mod common;

use common::notify::NotifySocket;

use common::fcgi::{Addr, ResponseExt};
use common::nginx::Nginx;
use common::{
    POLL, Pool, Pyfpm, START_TIMEOUT, TestEnv, children_of, free_port, get_json, json_pid,
    log_pids, wait_until,
};
use nix::sys::signal::Signal;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Longest a reload may take to hand over in these tests (interpreter start-up on a
/// loaded machine); never asserted as a speed.
const RELOAD_WITHIN: Duration = Duration::from_secs(30);

/// The load tests take both cores; they run one at a time.
static LOAD: Mutex<()> = Mutex::new(());

fn unix(env: &TestEnv, name: &str) -> (String, Addr) {
    let path = env.file(name);
    (path.display().to_string(), Addr::Unix(path))
}

/// A pool of the echo app with `GEN` in its environment (a change shows in responses).
fn echo_pool(env: &TestEnv, name: &str, listen: &str, children: u32, generation: &str) -> Pool {
    Pool::new(name, "echo:application")
        .listen(listen)
        .children(children)
        .with("env:")
        .with(&format!("  PYFPM_TEST_DIR: '{}'", env.path().display()))
        .with(&format!("  GEN: '{generation}'"))
}

const GLOBAL: &[&str] = &["process_control_timeout: 20s"];

fn start(env: &TestEnv, pools: &[Pool], ready_on: &Addr) -> Pyfpm {
    let config = env.write_config(GLOBAL, pools);
    let mut p = env.spawn(&config, "pyfpm.log", &["-F"]);
    p.wait_serving(ready_on);
    p
}

fn count(log: &str, needle: &str) -> usize {
    log.matches(needle).count()
}

/// Wait until the log has `n` occurrences of `needle`; returns the log.
fn wait_count(p: &Pyfpm, needle: &str, n: usize, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        let log = p.log_text();
        if count(&log, needle) >= n {
            return log;
        }
        assert!(
            Instant::now() < deadline,
            "the log never had {n} x {needle:?} within {within:?}; log:\n{log}"
        );
        std::thread::sleep(POLL);
    }
}

/// The `GEN` a worker reports, and its pid.
fn generation_of(addr: &Addr) -> (String, i32) {
    let (status, v) = get_json(addr, "/?osenv=GEN");
    assert_eq!(status, 200, "{v}");
    (
        v["osenv"]["GEN"].as_str().unwrap_or("").to_string(),
        json_pid(&v),
    )
}

#[test]
fn a_broken_config_keeps_the_old_generation_serving_and_says_where() {
    let env = TestEnv::new();
    let (listen, addr) = unix(&env, "www.sock");
    let pools = [echo_pool(&env, "www", &listen, 2, "1")];
    let p = start(&env, &pools, &addr);
    let children = children_of(p.pid().as_raw());
    // An unknown directive: a config error with a position.
    let config = env.write_config(GLOBAL, &[pools[0].clone().with("bogus_directive: 1")]);
    let text = std::fs::read_to_string(&config).unwrap();
    let line = text
        .lines()
        .position(|l| l.contains("bogus_directive"))
        .unwrap()
        + 1;
    p.signal(Signal::SIGUSR2);
    let log = p.wait_log("reload failed", RELOAD_WITHIN);
    let want = format!("{}:{line}:", config.display());
    let diag = log
        .lines()
        .find(|l| l.contains(&want) && l.contains("bogus_directive"))
        .unwrap_or_else(|| panic!("no diagnostic naming {want}<col>; log:\n{log}"));
    assert!(diag.contains("ERROR"), "{diag}");
    let col = diag.split(&want).nth(1).unwrap().split(':').next().unwrap();
    assert!(col.parse::<u32>().is_ok(), "no column in {diag}");
    assert!(
        log.contains("still serving with the previous configuration"),
        "{log}"
    );
    assert!(!log.contains("Reloading in progress"), "{log}");
    // Same workers, same config, still serving.
    assert_eq!(generation_of(&addr).0, "1");
    assert_eq!(children_of(p.pid().as_raw()), children);
    // A fixed config reloads (the failure left nothing half done).
    env.write_config(GLOBAL, &[echo_pool(&env, "www", &listen, 2, "2")]);
    p.signal(Signal::SIGHUP);
    p.wait_log("configuration reloaded", RELOAD_WITHIN);
    assert!(wait_until(RELOAD_WITHIN, || generation_of(&addr).0 == "2"));
}

#[test]
fn pools_are_added_removed_and_changed_and_kept_sockets_are_not_rebound() {
    let env = TestEnv::new();
    let (a_listen, a) = unix(&env, "a.sock");
    let (b_listen, b) = unix(&env, "b.sock");
    let (c_listen, c) = unix(&env, "c.sock");
    let tcp_port = free_port();
    let t_listen = format!("127.0.0.1:{tcp_port}");
    let t = Addr::Tcp(t_listen.parse().unwrap());
    let mut p = start(
        &env,
        &[
            echo_pool(&env, "a", &a_listen, 2, "1"),
            echo_pool(&env, "b", &b_listen, 1, "1").listen(&t_listen),
        ],
        &a,
    );
    p.wait_serving(&b);
    let manager = p.pid().as_raw();
    assert!(wait_until(START_TIMEOUT, || children_of(manager).len() == 3));
    let inode = std::fs::metadata(env.file("a.sock")).unwrap().ino();
    let b_pids = log_pids(&p.log_text(), "b", "started");
    assert_eq!(b_pids.len(), 1);
    // a: 2 -> 3 workers and GEN 2; b removed, its TCP address moves to the new pool c.
    let config = env.write_config(
        GLOBAL,
        &[
            echo_pool(&env, "a", &a_listen, 3, "2"),
            echo_pool(&env, "c", &c_listen, 1, "1").listen(&t_listen),
        ],
    );
    p.signal(Signal::SIGUSR2);
    let log = p.wait_log("configuration reloaded", RELOAD_WITHIN);
    for line in [
        "Reloading in progress ...",
        "[pool a] changed",
        "[pool b] removed",
        "[pool c] added",
        "[pool a] reloaded: ",
    ] {
        assert!(log.contains(line), "no {line:?} in the log:\n{log}");
    }
    // The kept socket is the same file (never re-bound); the new pool serves on its new
    // socket and on the TCP address it took over from b.
    assert_eq!(
        std::fs::metadata(env.file("a.sock")).unwrap().ino(),
        inode,
        "a.sock was re-bound"
    );
    assert!(
        !log.contains(&format!("listening on tcp:{t_listen}"))
            && !log.contains(&format!("listening on {t_listen}")),
        "the TCP socket moved between pools must not be re-bound; log:\n{log}"
    );
    p.wait_serving(&c);
    p.wait_serving(&t);
    // b drains: its worker exits and its socket file goes.
    assert!(
        wait_until(RELOAD_WITHIN, || !env.file("b.sock").exists()),
        "b.sock still exists; log:\n{}",
        p.log_text()
    );
    let b_pid = b_pids[0];
    p.wait_log(&format!("[pool b] child {b_pid} exited"), RELOAD_WITHIN);
    // a serves the new config from 3 workers: 3 (a) + 1 (c) children in the end.
    assert!(
        wait_until(RELOAD_WITHIN, || children_of(manager).len() == 4),
        "children: {:?}; log:\n{}",
        children_of(manager),
        p.log_text()
    );
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..30 {
        let (generation, pid) = generation_of(&a);
        assert_eq!(generation, "2", "an old worker still answers");
        seen.insert(pid);
    }
    assert!(seen.len() <= 3, "{seen:?}");
    assert!(config.exists());
}

#[test]
fn an_in_flight_request_completes_across_a_reload() {
    let env = TestEnv::new();
    let (listen, addr) = unix(&env, "www.sock");
    let pool = Pool::new("www", "sleep:application")
        .listen(&listen)
        .children(2);
    let p = start(&env, std::slice::from_ref(&pool), &addr);
    let touch = env.file("began");
    let uri = format!("/?s=3&touch={}", touch.display());
    let slow = {
        let addr = addr.clone();
        std::thread::spawn(move || {
            let mut c = common::fcgi::Conn::connect(&addr).expect("connect");
            c.set_timeout(Duration::from_secs(60));
            c.request(&common::fcgi::Request::get(&uri))
        })
    };
    assert!(wait_until(START_TIMEOUT, || touch.exists()));
    let old_pid: i32 = std::fs::read_to_string(&touch)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    p.signal(Signal::SIGUSR2);
    p.wait_log("configuration reloaded", RELOAD_WITHIN);
    // New requests are served meanwhile by the new generation.
    let (status, v) = get_json(&addr, "/?s=0");
    assert_eq!(status, 200);
    assert_ne!(
        json_pid(&v),
        old_pid,
        "the finishing worker took a new request"
    );
    let r = slow.join().unwrap().expect("the in-flight request failed");
    assert!(r.completed(), "the in-flight request was cut: {r:?}");
    let r = r.cgi();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    p.wait_log(&format!("[pool www] child {old_pid} exited"), RELOAD_WITHIN);
}

#[test]
fn a_storm_of_reload_signals_ends_in_one_generation() {
    let env = TestEnv::new();
    let (listen, addr) = unix(&env, "www.sock");
    let p = start(&env, &[echo_pool(&env, "www", &listen, 2, "1")], &addr);
    let manager = p.pid().as_raw();
    env.write_config(GLOBAL, &[echo_pool(&env, "www", &listen, 2, "storm")]);
    for _ in 0..20 {
        p.signal(Signal::SIGUSR2);
    }
    // Wait until every reload that started has completed and the old workers are gone.
    let deadline = Instant::now() + 2 * RELOAD_WITHIN;
    let (reloads, log) = loop {
        std::thread::sleep(Duration::from_millis(500));
        let log = p.log_text();
        let started = count(&log, "Reloading in progress ...");
        let done = count(&log, "configuration reloaded");
        if started >= 1 && started == done && children_of(manager).len() == 2 {
            // Stable: still the same after another look.
            std::thread::sleep(Duration::from_millis(700));
            let again = p.log_text();
            if count(&again, "Reloading in progress ...") == started
                && children_of(manager).len() == 2
            {
                break (started, again);
            }
        }
        assert!(Instant::now() < deadline, "no stable end; log:\n{log}");
    };
    assert!(
        reloads <= 2,
        "{reloads} reloads ran for one storm (at most one extra expected); log:\n{log}"
    );
    // Every live child was started after the last reload began: one generation.
    let last = log.rfind("Reloading in progress ...").unwrap();
    let newest = log_pids(&log[last..], "www", "started");
    let children = children_of(manager);
    for c in &children {
        assert!(
            newest.contains(c),
            "child {c} is from an older generation; log:\n{log}"
        );
    }
    for _ in 0..20 {
        let (generation, pid) = generation_of(&addr);
        assert_eq!(generation, "storm");
        assert!(children.contains(&pid));
    }
    eprintln!(
        "storm of 20 SIGUSR2: {reloads} reloads executed, {} workers",
        children.len()
    );
}

/// What wrk reported.
#[derive(Debug, Default)]
struct WrkResult {
    requests: u64,
    non_2xx: u64,
    socket_errors: u64,
}

/// Parse wrk's summary (`N requests in`, `Socket errors: connect a, read b, write c,
/// timeout d`, `Non-2xx or 3xx responses: n`; the last two only appear when non-zero).
fn parse_wrk(out: &str) -> WrkResult {
    let mut r = WrkResult::default();
    for line in out.lines().map(str::trim) {
        if let Some(n) = line
            .split(" requests in")
            .next()
            .filter(|_| line.contains(" requests in"))
        {
            r.requests = n
                .trim()
                .parse()
                .unwrap_or_else(|_| panic!("bad wrk line {line:?}"));
        } else if let Some(rest) = line.strip_prefix("Socket errors:") {
            r.socket_errors = rest
                .split(',')
                .filter_map(|part| part.split_whitespace().last()?.parse::<u64>().ok())
                .sum();
        } else if let Some(rest) = line.strip_prefix("Non-2xx or 3xx responses:") {
            r.non_2xx = rest
                .trim()
                .parse()
                .unwrap_or_else(|_| panic!("bad wrk line {line:?}"));
        }
    }
    r
}

fn wrk_bin() -> PathBuf {
    ["/usr/bin/wrk", "/usr/local/bin/wrk"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .expect("wrk is not installed: run tests/run.sh (it installs Debian's wrk)")
}

/// `wrk -t2 -c16 -d8s` through nginx while SIGUSR2 goes to pyfpm every second.
fn zero_drop(keep_conn: bool) {
    let _serial = LOAD.lock().unwrap_or_else(|e| e.into_inner());
    let wrk = wrk_bin();
    let env = TestEnv::new();
    let (listen, addr) = unix(&env, "www.sock");
    // Fewer workers than wrk has connections: with keep_conn, idle kept-alive upstream
    // connections are parked with the manager instead of pinning a worker each.
    let children = 4;
    let p = start(
        &env,
        &[echo_pool(&env, "www", &listen, children, "1")],
        &addr,
    );
    let nginx = Nginx::builder(&format!("unix:{listen}"))
        .keepalive(keep_conn.then_some(32))
        .location("fastcgi_read_timeout 60s;")
        .start(&env);
    let (status, _) = nginx.get("/");
    assert_eq!(status, 200);
    let load = Command::new(&wrk)
        .args(["-t2", "-c16", "-d8s"])
        .arg(format!("http://127.0.0.1:{}/", nginx.port))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run wrk");
    let mut sent = 0;
    for _ in 0..7 {
        std::thread::sleep(Duration::from_secs(1));
        p.signal(Signal::SIGUSR2);
        sent += 1;
    }
    let out = load.wait_with_output().expect("wrk output");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "wrk failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let log = wait_count(&p, "configuration reloaded", 1, RELOAD_WITHIN);
    let executed = count(&log, "Reloading in progress ...");
    let r = parse_wrk(&stdout);
    let nginx_errors: Vec<String> = nginx
        .error_log()
        .lines()
        .filter(|l| l.contains("[error]") || l.contains("[crit]") || l.contains("[alert]"))
        .map(str::to_string)
        .collect();
    eprintln!(
        "zero-drop reload (fastcgi_keep_conn {}): {} requests, {sent} SIGUSR2 sent, \
         {executed} reloads executed, {} non-2xx, {} socket errors, {} nginx error-log \
         lines (upstream errors nginx retried)",
        if keep_conn { "on" } else { "off" },
        r.requests,
        r.non_2xx,
        r.socket_errors,
        nginx_errors.len()
    );
    for l in nginx_errors.iter().take(5) {
        eprintln!("  nginx: {l}");
    }
    assert!(r.requests > 0, "wrk made no request: {stdout}");
    assert!(executed >= 2, "too few reloads ran under load; log:\n{log}");
    assert_eq!(r.non_2xx, 0, "non-2xx responses during reloads: {stdout}");
    assert_eq!(r.socket_errors, 0, "socket errors during reloads: {stdout}");
    if keep_conn {
        // Old workers park their idle kept connections instead of closing them, so nginx
        // never reuses a connection that was reset under it.
        let resets: Vec<&String> = nginx_errors
            .iter()
            .filter(|l| l.contains("recv() failed") || l.contains("Connection reset"))
            .collect();
        assert!(
            resets.is_empty(),
            "nginx saw reset upstream connections: {resets:?}"
        );
    }
    drop(nginx);
    assert!(Path::new(&listen).exists());
}

#[test]
fn zero_drop_under_load_without_keep_conn() {
    zero_drop(false);
}

#[test]
fn zero_drop_under_load_with_keep_conn() {
    zero_drop(true);
}

#[test]
fn wrk_output_is_parsed() {
    let out = "Running 8s test @ http://127.0.0.1:1/\n  2 threads and 16 connections\n\
               \x20 12345 requests in 8.00s, 3.21MB read\n\
               \x20 Socket errors: connect 0, read 2, write 1, timeout 3\n\
               \x20 Non-2xx or 3xx responses: 7\nRequests/sec:   1543.12\n";
    let r = parse_wrk(out);
    assert_eq!((r.requests, r.socket_errors, r.non_2xx), (12345, 6, 7));
    let clean = parse_wrk("  100 requests in 1.00s, 1MB read\n");
    assert_eq!(
        (clean.requests, clean.socket_errors, clean.non_2xx),
        (100, 0, 0)
    );
}

fn wait_file_contains(path: &Path, needle: &str) -> String {
    let mut text = String::new();
    let found = wait_until(RELOAD_WITHIN, || {
        text = std::fs::read_to_string(path).unwrap_or_default();
        text.contains(needle)
    });
    assert!(
        found,
        "{} never contained {needle:?}:\n{text}",
        path.display()
    );
    text
}

#[test]
fn systemd_hears_reloading_then_ready_and_global_settings_follow_the_config() {
    let env = TestEnv::new();
    let notify_path = env.file("notify.sock");
    let notify = NotifySocket::bind(&notify_path);
    let (listen, addr) = unix(&env, "www.sock");
    let pool = echo_pool(&env, "www", &listen, 1, "1");
    let (pid1, log1) = (env.file("one.pid"), env.file("one.log"));
    let (pid2, log2) = (env.file("two.pid"), env.file("two.log"));
    let global = |pid: &Path, log: &Path| {
        vec![
            format!("pid: '{}'", pid.display()),
            format!("error_log: '{}'", log.display()),
        ]
    };
    let write = |g: Vec<String>, pools: &[Pool]| {
        let lines: Vec<&str> = g.iter().map(String::as_str).collect();
        env.write_config(&lines, pools)
    };
    let config = write(global(&pid1, &log1), std::slice::from_ref(&pool));
    let mut p = env.spawn_env(
        &config,
        "pyfpm.log",
        &["-F"],
        &[("NOTIFY_SOCKET", notify_path.to_str().unwrap())],
    );
    p.wait_serving(&addr);
    assert!(wait_until(RELOAD_WITHIN, || notify.states() == ["READY=1"]));
    let manager = p.pid().as_raw();
    assert_eq!(
        std::fs::read_to_string(&pid1).unwrap().trim(),
        manager.to_string()
    );

    // A new address that cannot be bound (a regular file is in the way) cancels the
    // reload before anything changes.
    let blocked = env.file("blocked.sock");
    std::fs::write(&blocked, "not a socket").unwrap();
    write(
        global(&pid2, &log2),
        &[pool.clone().listen(&blocked.display().to_string())],
    );
    p.signal(Signal::SIGUSR2);
    let text = wait_file_contains(&log1, "reload failed");
    assert!(
        text.contains("blocked.sock") && text.contains("not a socket"),
        "{text}"
    );
    assert!(!text.contains("Reloading in progress"), "{text}");
    assert!(wait_until(RELOAD_WITHIN, || notify.states()
        == ["READY=1", "RELOADING=1", "READY=1"]));
    assert!(pid1.exists() && !pid2.exists() && !log2.exists());
    assert_eq!(generation_of(&addr).0, "1");

    // pid and error_log move with the config.
    write(
        global(&pid2, &log2),
        &[echo_pool(&env, "www", &listen, 1, "2")],
    );
    p.signal(Signal::SIGHUP);
    wait_file_contains(&log2, "configuration reloaded");
    let old_log = std::fs::read_to_string(&log1).unwrap();
    assert!(
        old_log.contains(&format!("error_log changed: logging to {}", log2.display())),
        "{old_log}"
    );
    assert_eq!(
        std::fs::read_to_string(&pid2).unwrap().trim(),
        manager.to_string()
    );
    assert!(!pid1.exists(), "the old pid file was left behind");
    assert!(wait_until(RELOAD_WITHIN, || notify.states()
        == [
            "READY=1",
            "RELOADING=1",
            "READY=1",
            "RELOADING=1",
            "READY=1"
        ]));
    assert_eq!(generation_of(&addr).0, "2");
    p.signal(Signal::SIGTERM);
    assert!(p.wait_exit(Duration::from_secs(20)).is_some());
    assert!(!pid2.exists(), "the pid file was not removed at exit");
}

#[test]
fn new_code_that_fails_to_import_leaves_the_old_workers_serving() {
    let env = TestEnv::new();
    let (listen, addr) = unix(&env, "www.sock");
    let p = start(&env, &[echo_pool(&env, "www", &listen, 1, "1")], &addr);
    let (_, old_pid) = generation_of(&addr);
    let mut broken = echo_pool(&env, "www", &listen, 1, "2");
    broken.app = "badimport:application".into();
    env.write_config(GLOBAL, &[broken]);
    p.signal(Signal::SIGUSR2);
    let log = p.wait_log("do not start; the old ones keep serving", RELOAD_WITHIN);
    assert!(
        log.contains("[pool www] the new workers fail to start"),
        "{log}"
    );
    // The old generation still answers, with the old config.
    for _ in 0..5 {
        assert_eq!(generation_of(&addr), ("1".to_string(), old_pid));
    }
    // Fixed code: the next reload replaces both the old worker and the failing one.
    env.write_config(GLOBAL, &[echo_pool(&env, "www", &listen, 1, "3")]);
    p.signal(Signal::SIGUSR2);
    wait_count(&p, "configuration reloaded", 2, RELOAD_WITHIN);
    assert!(wait_until(RELOAD_WITHIN, || generation_of(&addr).0 == "3"));
    p.wait_log(&format!("[pool www] child {old_pid} exited"), RELOAD_WITHIN);
}

/// Whether `line` is `[pool POOL] reloaded: N new workers ready, M old workers finishing`
/// with N >= 1 and M >= 1.
fn handed_over(line: &str, pool: &str) -> bool {
    let Some(rest) = line
        .split_once(&format!("[pool {pool}] reloaded: "))
        .map(|(_, r)| r)
    else {
        return false;
    };
    let Some((new, old)) = rest.split_once(" new workers ready, ") else {
        return false;
    };
    let old = old.trim_end().strip_suffix(" old workers finishing");
    matches!(new.parse::<u32>(), Ok(n) if n >= 1)
        && matches!(old.map(str::parse::<u32>), Some(Ok(m)) if m >= 1)
}

#[test]
fn dynamic_and_ondemand_pools_hand_over_too() {
    let env = TestEnv::new();
    let (d_listen, d) = unix(&env, "dyn.sock");
    let (o_listen, o) = unix(&env, "ond.sock");
    let dynamic = |generation: &str| {
        echo_pool(&env, "dyn", &d_listen, 4, generation)
            .with("pm.start_servers: 2")
            .with("pm.min_spare_servers: 1")
            .with("pm.max_spare_servers: 3")
    };
    let ondemand = |generation: &str| echo_pool(&env, "ond", &o_listen, 2, generation);
    let write = |generation: &str| {
        common::write_config_pm(
            &env,
            GLOBAL,
            &[
                (dynamic(generation), "dynamic"),
                (ondemand(generation), "ondemand"),
            ],
        )
    };
    let config = write("1");
    let mut p = env.spawn(&config, "pyfpm.log", &["-F"]);
    p.wait_serving(&d);
    p.wait_serving(&o); // the ondemand pool now has one worker
    let (_, ondemand_pid) = generation_of(&o);
    write("2");
    p.signal(Signal::SIGUSR2);
    let log = p.wait_log("configuration reloaded", RELOAD_WITHIN);
    // The ondemand pool had a ready worker: a new one is started for it before the old
    // one is told to finish (no connection has to wait for a cold start).
    // Both pools hand over: some new workers ready before some old ones are told to
    // finish. (The exact counts depend on how the probes and the planners raced under
    // load: an ondemand pool may have had 1 or 2 workers, a dynamic one 2 or 3.)
    for pool in ["ond", "dyn"] {
        assert!(
            log.lines().any(|l| handed_over(l, pool)),
            "pool {pool} did not hand over:\n{log}"
        );
    }
    p.wait_log(
        &format!("[pool ond] child {ondemand_pid} exited"),
        RELOAD_WITHIN,
    );
    assert_eq!(generation_of(&d).0, "2");
    assert_eq!(generation_of(&o).0, "2");
}
