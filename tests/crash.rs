//! Crash handling through the real `pyfpm` binary: a worker killed by SIGSEGV or by an
//! outside SIGKILL is logged with the signal's name ("possibly out of memory" for a
//! SIGKILL the manager did not send), only the request it held fails, the other workers
//! carry on, and it is replaced; a worker that calls `os._exit` mid-request is replaced;
//! a crash loop at start-up backs off; `emergency_restart_threshold` /
//! `emergency_restart_interval` replace every worker as PHP-FPM does.

mod common;

use common::fcgi::{self, Addr, Request};
use common::{
    Pool, Pyfpm, TestEnv, children_of, get_json, json_pid, wait_children, wait_until,
    write_config_pm,
};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::time::{Duration, Instant};

fn start(env: &TestEnv, app: &str, children: u32, global: &[&str]) -> (Pyfpm, Addr) {
    let sock = env.file("www.sock");
    let pool = Pool::new("www", app)
        .listen(&sock.display().to_string())
        .children(children);
    let config = write_config_pm(env, global, &[(pool, "static")]);
    let addr = Addr::Unix(sock);
    let mut p = env.spawn(&config, "pyfpm.log", &["-F"]);
    p.wait_serving(&addr);
    (p, addr)
}

/// A request that kills its worker: it must end without END_REQUEST (the only worker
/// that could have answered is dead), and not hang.
fn crashing_request(addr: &Addr, uri: &str) {
    let mut c = fcgi::Conn::connect(addr).expect("connect");
    c.set_timeout(Duration::from_secs(30));
    // A read error (reset) is also an error for the web server, as expected.
    if let Ok(r) = c.request(&Request::get(uri)) {
        assert!(
            !r.completed(),
            "a crashed worker cannot have completed the request: {:?}",
            String::from_utf8_lossy(&r.stdout)
        );
    }
}

/// Wait until `pid` is gone and a different worker answers.
fn wait_replaced(p: &Pyfpm, addr: &Addr, pid: i32) -> i32 {
    assert!(
        wait_until(Duration::from_secs(20), || !common::alive(pid)),
        "worker {pid} still alive:\n{}",
        p.log_text()
    );
    let mut new = pid;
    assert!(
        wait_until(Duration::from_secs(20), || {
            if common::probe(addr, Duration::from_secs(5)).is_ok() {
                new = json_pid(&get_json(addr, "/").1);
            }
            new != pid
        }),
        "no replacement for {pid}:\n{}",
        p.log_text()
    );
    new
}

#[test]
fn segfault_is_logged_replaced_and_other_workers_are_untouched() {
    let env = TestEnv::new();
    let (p, addr) = start(&env, "segv:application", 2, &[]);
    let pid = p.pid().as_raw();
    wait_children(pid, Duration::from_secs(20), |n| n == 2).expect("2 workers");
    // One worker busy with a slow request...
    let touch = env.file("slow-started");
    let a = addr.clone();
    let uri = format!("/slow?s=3&touch={}", touch.display());
    let slow = std::thread::spawn(move || fcgi::request(&a, &Request::get(&uri)));
    assert!(wait_until(Duration::from_secs(15), || touch.exists()));
    let busy: i32 = std::fs::read_to_string(&touch).unwrap().parse().unwrap();
    // ...while the other one segfaults.
    let victim = *children_of(pid)
        .iter()
        .find(|&&w| w != busy)
        .expect("an idle worker");
    crashing_request(&addr, "/segv");
    let log = p.wait_log(
        &format!("child {victim} exited on signal 11 (SIGSEGV)"),
        Duration::from_secs(15),
    );
    assert!(!log.contains("possibly out of memory"), "{log}");
    let r = slow.join().expect("slow client");
    assert_eq!(r.status, 200, "the other worker's request was disturbed");
    assert_eq!(json_pid(&serde_json::from_slice(&r.body).unwrap()), busy);
    assert!(
        common::alive(busy),
        "the busy worker died with its neighbour"
    );
    wait_replaced(&p, &addr, victim);
    wait_children(pid, Duration::from_secs(20), |n| n == 2)
        .unwrap_or_else(|n| panic!("{n} workers after the crash, want 2"));
}

#[test]
fn outside_sigkill_is_reported_as_possibly_out_of_memory() {
    let env = TestEnv::new();
    let (p, addr) = start(&env, "sleep:application", 1, &[]);
    let worker = json_pid(&get_json(&addr, "/").1);
    // The worker is our grandchild, named by pid: kill exactly it, as the OOM killer would.
    kill(Pid::from_raw(worker), Signal::SIGKILL).expect("kill the worker");
    let log = p.wait_log("possibly out of memory", Duration::from_secs(15));
    assert!(
        log.lines().any(
            |l| l.contains(&format!("child {worker} exited on signal 9 (SIGKILL)"))
                && l.contains("possibly out of memory")
        ),
        "want `child {worker} exited on signal 9 (SIGKILL) ... possibly out of memory`:\n{log}"
    );
    wait_replaced(&p, &addr, worker);
}

#[test]
fn os_exit_mid_request_is_logged_and_replaced() {
    let env = TestEnv::new();
    let (p, addr) = start(&env, "exit:application", 1, &[]);
    let worker = json_pid(&get_json(&addr, "/").1);
    crashing_request(&addr, "/exit?code=3");
    p.wait_log(
        &format!("child {worker} exited with code 3"),
        Duration::from_secs(15),
    );
    wait_replaced(&p, &addr, worker);
}

#[test]
fn crash_loop_at_start_up_backs_off() {
    let env = TestEnv::new();
    let sock = env.file("www.sock");
    let pool = Pool::new("www", "segvimport:application").listen(&sock.display().to_string());
    let config = write_config_pm(&env, &[], &[(pool, "static")]);
    let mut p = env.spawn(&config, "pyfpm.log", &["-F"]);
    const CRASH: &str = "exited on signal 11 (SIGSEGV)";
    let log = p.wait_log(CRASH, Duration::from_secs(20));
    let t0 = Instant::now();
    let first = log.matches(CRASH).count();
    std::thread::sleep(Duration::from_secs(8));
    let log = p.log_text();
    let later = log.matches(CRASH).count() - first;
    // A tight loop would crash dozens of times in 8 s; PHP-FPM has no back-off at all.
    assert!(
        later <= 5,
        "{later} crashes in {:?} after the first: no back-off\n{log}",
        t0.elapsed()
    );
    assert!(
        later >= 1,
        "the manager stopped retrying altogether:\n{log}"
    );
    assert!(
        p.try_exit().is_none(),
        "the manager must keep running:\n{log}"
    );
}

#[test]
fn emergency_restart_threshold_replaces_every_worker() {
    let env = TestEnv::new();
    let (p, addr) = start(
        &env,
        "segv:application",
        3,
        &[
            "emergency_restart_threshold: 3",
            "emergency_restart_interval: 10s",
        ],
    );
    let pid = p.pid().as_raw();
    wait_children(pid, Duration::from_secs(20), |n| n == 3).expect("3 workers");
    let mut survivors = Vec::new();
    for i in 0..3 {
        if i == 2 {
            // Everyone alive before the third crash, bar the one about to crash, must be
            // replaced by the emergency restart.
            survivors = children_of(pid);
        }
        crashing_request(&addr, "/segv");
        // Wait for the replacement so the next crash hits a serving pool.
        assert!(
            wait_until(Duration::from_secs(20), || {
                p.log_text().matches("(SIGSEGV)").count() > i
                    && common::probe(&addr, Duration::from_secs(5)).is_ok()
            }),
            "crash {i}:\n{}",
            p.log_text()
        );
    }
    let log = p.wait_log(
        "failed processes threshold (3 in 10 sec) is reached, initiating reload",
        Duration::from_secs(15),
    );
    assert!(survivors.len() >= 2, "{survivors:?}");
    // Two of the survivors never crashed: they are replaced too.
    assert!(
        wait_until(Duration::from_secs(30), || survivors
            .iter()
            .all(|&w| !common::alive(w))),
        "workers {:?} survived the emergency restart:\n{}",
        survivors
            .iter()
            .filter(|&&w| common::alive(w))
            .collect::<Vec<_>>(),
        p.log_text()
    );
    wait_children(pid, Duration::from_secs(20), |n| n == 3)
        .unwrap_or_else(|n| panic!("{n} workers after the restart, want 3:\n{log}"));
    assert_eq!(get_json(&addr, "/").0, 200);
    assert!(p.log_text().matches("initiating reload").count() == 1);
}
