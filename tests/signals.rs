//! Manager signals through the real `pyfpm` binary: SIGTTIN / SIGTTOU add and remove one
//! worker within the pool's limits, SIGUSR1 reopens the error log and the slow log
//! without restarting any worker, and SIGTERM stops at once even with a request in flight.
//! (SIGQUIT's graceful stop is covered by tests/manager.rs; reload comes later.)

mod common;

use common::fcgi::{self, Addr, Request};
use common::{
    Pool, Pyfpm, TestEnv, children_of, sample_children, wait_children, wait_until, write_config_pm,
};
use nix::sys::signal::Signal;
use std::time::{Duration, Instant};

fn start(env: &TestEnv, pool: Pool, mode: &str, global: &[&str]) -> (Pyfpm, Addr) {
    let sock = env.file("www.sock");
    let pool = pool.listen(&sock.display().to_string());
    let config = write_config_pm(env, global, &[(pool, mode)]);
    let addr = Addr::Unix(sock);
    let mut p = env.spawn(&config, "pyfpm.log", &["-F"]);
    p.wait_serving(&addr);
    (p, addr)
}

fn expect_children(p: &Pyfpm, want: usize, what: &str) {
    let pid = p.pid().as_raw();
    wait_children(pid, Duration::from_secs(20), |n| n == want)
        .unwrap_or_else(|n| panic!("{what}: {n} workers, want {want}:\n{}", p.log_text()));
    // And it stays there for more than two maintenance ticks.
    let seen = sample_children(pid, Duration::from_millis(2500));
    assert!(
        seen.iter().all(|&n| n == want),
        "{what}: counts {seen:?}, want a steady {want}"
    );
}

#[test]
fn ttin_adds_and_ttou_removes_a_static_worker_within_limits() {
    let env = TestEnv::new();
    let pool = Pool::new("www", "sleep:application")
        .children(2)
        .with("process.max: 3");
    let (p, addr) = start(&env, pool, "static", &[]);
    expect_children(&p, 2, "at start");
    p.signal(Signal::SIGTTIN);
    expect_children(&p, 3, "after one SIGTTIN");
    // process.max 3 bounds it.
    p.signal(Signal::SIGTTIN);
    p.wait_log("SIGTTIN ignored", Duration::from_secs(10));
    expect_children(&p, 3, "after SIGTTIN at the pool's process.max");
    p.signal(Signal::SIGTTOU);
    expect_children(&p, 2, "after one SIGTTOU");
    p.signal(Signal::SIGTTOU);
    expect_children(&p, 1, "after two SIGTTOU");
    // Never below one worker.
    p.signal(Signal::SIGTTOU);
    p.wait_log("SIGTTOU ignored", Duration::from_secs(10));
    expect_children(&p, 1, "after SIGTTOU at one worker");
    assert_eq!(fcgi::request(&addr, &Request::get("/")).status, 200);
}

#[test]
fn ttin_and_ttou_in_a_dynamic_pool_respect_max_children_and_min_spare() {
    let env = TestEnv::new();
    let pool = Pool::new("www", "sleep:application")
        .children(3)
        .with("pm.start_servers: 2")
        .with("pm.min_spare_servers: 1")
        .with("pm.max_spare_servers: 3");
    let (p, _addr) = start(&env, pool, "dynamic", &[]);
    expect_children(&p, 2, "at start");
    p.signal(Signal::SIGTTIN);
    expect_children(&p, 3, "after SIGTTIN");
    p.signal(Signal::SIGTTIN);
    p.wait_log("pm.max_children (3) reached", Duration::from_secs(10));
    expect_children(&p, 3, "after SIGTTIN at pm.max_children");
    p.signal(Signal::SIGTTOU);
    expect_children(&p, 2, "after SIGTTOU");
    p.signal(Signal::SIGTTOU);
    expect_children(&p, 1, "after two SIGTTOU");
    p.signal(Signal::SIGTTOU);
    p.wait_log("SIGTTOU ignored", Duration::from_secs(10));
    expect_children(&p, 1, "after SIGTTOU at pm.min_spare_servers");
}

#[test]
fn usr1_reopens_the_logs_and_keeps_the_workers() {
    let env = TestEnv::new();
    let error_log = env.file("error.log");
    let slowlog = env.file("slow.log");
    let pool = Pool::new("www", "sleep:application")
        .children(2)
        .with("request_terminate_timeout: 20s")
        .with("request_slowlog_timeout: 1s")
        .with(&format!(
            "slowlog: {}",
            common::yq(&slowlog.display().to_string())
        ));
    let (p, addr) = start(
        &env,
        pool,
        "static",
        &[&format!(
            "error_log: {}",
            common::yq(&error_log.display().to_string())
        )],
    );
    expect_children(&p, 2, "at start");
    let before = children_of(p.pid().as_raw());
    // A slow-log entry before the rotation, so the old slow log exists.
    assert_eq!(
        fcgi::request(&addr, &Request::get("/before?s=1.5")).status,
        200
    );
    assert!(
        wait_until(Duration::from_secs(10), || std::fs::read_to_string(
            &slowlog
        )
        .unwrap_or_default()
        .contains("/before")),
        "no slow-log entry before the rotation"
    );
    // logrotate's way: rename, then USR1.
    let rotated = env.file("error.log.1");
    let rotated_slow = env.file("slow.log.1");
    std::fs::rename(&error_log, &rotated).unwrap();
    std::fs::rename(&slowlog, &rotated_slow).unwrap();
    p.signal(Signal::SIGUSR1);
    let mut text = String::new();
    assert!(
        wait_until(Duration::from_secs(10), || {
            text = std::fs::read_to_string(&error_log).unwrap_or_default();
            text.contains("re-opened")
        }),
        "no new error log at {} after USR1 (rotated file says:\n{})",
        error_log.display(),
        std::fs::read_to_string(&rotated).unwrap_or_default()
    );
    // The slow log too: the next entry goes to a new file at the original path.
    assert_eq!(
        fcgi::request(&addr, &Request::get("/after?s=1.5")).status,
        200
    );
    assert!(
        wait_until(Duration::from_secs(10), || std::fs::read_to_string(
            &slowlog
        )
        .unwrap_or_default()
        .contains("/after")),
        "the slow log was not reopened: new {:?}, rotated {:?}",
        std::fs::read_to_string(&slowlog).ok(),
        std::fs::read_to_string(&rotated_slow).ok()
    );
    assert!(
        !std::fs::read_to_string(&rotated_slow)
            .unwrap()
            .contains("/after"),
        "the rotated slow log still gets entries"
    );
    // No worker was restarted (unlike PHP-FPM with an access log).
    let seen = sample_children(p.pid().as_raw(), Duration::from_millis(2500));
    assert!(seen.iter().all(|&n| n == 2), "{seen:?}");
    assert_eq!(
        children_of(p.pid().as_raw()),
        before,
        "USR1 restarted workers"
    );
    let all = std::fs::read_to_string(&rotated).unwrap_or_default() + &text;
    assert!(!all.contains("exited"), "a worker exited on USR1:\n{all}");
}

#[test]
fn term_stops_at_once_with_a_request_in_flight() {
    let env = TestEnv::new();
    let pool = Pool::new("www", "sleep:application").children(1);
    let (mut p, addr) = start(&env, pool, "static", &[]);
    let touch = env.file("started");
    let a = addr.clone();
    let uri = format!("/long?s=60&touch={}", touch.display());
    let client = std::thread::spawn(move || {
        let mut c = fcgi::Conn::connect(&a).expect("connect");
        c.set_timeout(Duration::from_secs(90));
        c.request(&Request::get(&uri)).map(|r| {
            r.completed() && fcgi::CgiResponse::parse(&r.stdout).is_ok_and(|c| c.status == 200)
        })
    });
    assert!(wait_until(Duration::from_secs(15), || touch.exists()));
    let worker: i32 = std::fs::read_to_string(&touch).unwrap().parse().unwrap();
    let t0 = Instant::now();
    p.signal(Signal::SIGTERM);
    let status = p
        .wait_exit(Duration::from_secs(20))
        .unwrap_or_else(|| panic!("still running 20 s after SIGTERM:\n{}", p.log_text()));
    // Far below the request's 60 s: TERM does not wait for in-flight requests.
    assert!(t0.elapsed() < Duration::from_secs(30));
    assert!(status.success(), "exit status {status}");
    assert!(
        !common::alive(worker),
        "worker {worker} outlived the manager"
    );
    let completed = client.join().expect("client");
    assert!(
        !matches!(completed, Ok(true)),
        "the 60 s request cannot have been answered 200"
    );
    assert!(p.log_text().contains("Terminating"), "{}", p.log_text());
}
