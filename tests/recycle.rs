//! Worker recycling through the real `pyfpm` binary: `pm.max_requests` (with
//! `pm.max_requests_jitter`), `pm.max_memory` and `pm.max_lifetime`. A retiring worker is
//! replaced new-one-first, so the pool never has fewer workers than configured and no
//! request fails during the swap. Counts of requests per worker are exact because these
//! tests never send probe requests (they wait for "ready to handle connections").

mod common;

use common::fcgi::Addr;
use common::{
    Pool, Pyfpm, TestEnv, children_of, get_json, json_pid, log_line_index, log_pids, start_quiet,
    wait_until, write_config_pm,
};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

fn pool(env: &TestEnv, app: &str, children: u32) -> (Pool, Addr) {
    let sock = env.file("www.sock");
    (
        Pool::new("www", app)
            .listen(&sock.display().to_string())
            .children(children),
        Addr::Unix(sock),
    )
}

/// Wait (bounded) until the log says `pid` exited; returns the log.
fn wait_exited(p: &Pyfpm, pid: i32) -> String {
    p.wait_log(&format!("child {pid} exited"), Duration::from_secs(20))
}

/// The replacement of `old` was started before `old` exited: some `started` line that
/// comes after `old`'s own `started` line precedes its `exited` line.
fn assert_replaced_first(log: &str, old: i32) {
    let exited = log_line_index(log, &[&format!("child {old} exited")])
        .unwrap_or_else(|| panic!("no exit line for {old}:\n{log}"));
    let own_start = log_line_index(log, &[&format!("child {old} started")]).unwrap_or(0);
    let started_between = log
        .lines()
        .enumerate()
        .filter(|(i, l)| {
            *i > own_start && *i < exited && l.contains("] child ") && l.contains(" started")
        })
        .count();
    assert!(
        started_between >= 1,
        "child {old} exited before any replacement started (capacity dipped):\n{log}"
    );
}

/// The number of `reached pm.max_requests (L)` that the log gives for `pid`.
fn logged_limit(log: &str, pid: i32) -> Option<u64> {
    let head = format!("child {pid} reached pm.max_requests (");
    let line = log.lines().find(|l| l.contains(&head))?;
    let rest = &line[line.find(&head)? + head.len()..];
    rest.split(')').next()?.parse().ok()
}

#[test]
fn max_requests_replaces_the_worker_after_n_requests_new_one_first() {
    const N: usize = 3;
    let env = TestEnv::new();
    let (pool, addr) = pool(&env, "sleep:application", 1);
    let config = write_config_pm(
        &env,
        &[],
        &[(pool.with(&format!("pm.max_requests: {N}")), "static")],
    );
    let p = start_quiet(&env, &config);
    let mut previous = None;
    for generation in 0..3 {
        // A fresh worker serves exactly its first N requests itself.
        let pids: Vec<i32> = (0..N)
            .map(|_| {
                let (status, v) = get_json(&addr, "/");
                assert_eq!(status, 200);
                json_pid(&v)
            })
            .collect();
        let worker = pids[0];
        assert!(
            pids.iter().all(|&x| x == worker),
            "generation {generation}: one worker should serve the first {N} requests: {pids:?}"
        );
        assert_ne!(
            Some(worker),
            previous,
            "the retired worker is still serving"
        );
        p.wait_log(
            &format!("child {worker} reached pm.max_requests ({N})"),
            Duration::from_secs(20),
        );
        let log = wait_exited(&p, worker);
        assert_replaced_first(&log, worker);
        assert!(
            log.lines()
                .any(|l| l.contains(&format!("child {worker} exited with code 0"))),
            "a recycled worker exits cleanly:\n{log}"
        );
        previous = Some(worker);
    }
}

#[test]
fn no_request_fails_while_workers_are_recycled_under_load() {
    const N: u64 = 5;
    let env = TestEnv::new();
    let (pool, addr) = pool(&env, "sleep:application", 2);
    let config = write_config_pm(
        &env,
        &[],
        &[(pool.with(&format!("pm.max_requests: {N}")), "static")],
    );
    let p = start_quiet(&env, &config);
    // Three clients back to back, 120 requests of 50 ms: a retiring worker keeps serving
    // until its replacement is ready, so the requests must last long enough for several
    // generations to come and go.
    let clients: Vec<_> = (0..3)
        .map(|_| {
            let a = addr.clone();
            std::thread::spawn(move || {
                (0..40)
                    .map(|_| {
                        let r =
                            common::fcgi::request_raw(&a, &common::fcgi::Request::get("/?s=0.05"));
                        let cgi = r
                            .completed()
                            .then(|| common::fcgi::CgiResponse::parse(&r.stdout).ok())
                            .flatten();
                        match cgi {
                            Some(c) if c.status == 200 => {
                                Ok(json_pid(&serde_json::from_slice(&c.body).unwrap()))
                            }
                            _ => Err(format!(
                                "failed: completed={} stdout={:?}",
                                r.completed(),
                                String::from_utf8_lossy(&r.stdout)
                            )),
                        }
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut per_pid: BTreeMap<i32, u64> = BTreeMap::new();
    let mut failures = Vec::new();
    for c in clients {
        for r in c.join().expect("client thread") {
            match r {
                Ok(pid) => *per_pid.entry(pid).or_default() += 1,
                Err(e) => failures.push(e),
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of 120 requests failed during recycling: {:?}\n{}",
        failures.len(),
        &failures[..failures.len().min(5)],
        p.log_text()
    );
    assert!(
        per_pid.len() >= 4,
        "hardly any recycling: {per_pid:?}\n{}",
        p.log_text()
    );
    // Let the last retirements finish, then check every one against the log.
    std::thread::sleep(Duration::from_secs(3));
    let log = p.log_text();
    for old in log_pids(&log, "www", "exited") {
        assert_replaced_first(&log, old);
        // A worker never retires before its limit.
        if let Some(&served) = per_pid.get(&old) {
            assert!(
                served >= N,
                "child {old} retired after {served} < {N} requests"
            );
        }
    }
    let pid = p.pid().as_raw();
    assert!(
        common::wait_children(pid, Duration::from_secs(20), |n| n == 2).is_ok(),
        "the pool did not settle back at 2 workers: {:?}",
        children_of(pid)
    );
}

#[test]
fn max_requests_jitter_spreads_the_limits() {
    const N: u64 = 2;
    const J: u64 = 8;
    const GENERATIONS: usize = 6;
    let env = TestEnv::new();
    let (pool, addr) = pool(&env, "sleep:application", 1);
    let pool = pool
        .with(&format!("pm.max_requests: {N}"))
        .with(&format!("pm.max_requests_jitter: {J}"));
    let config = write_config_pm(&env, &[], &[(pool, "static")]);
    let p = start_quiet(&env, &config);
    let mut served: BTreeMap<i32, u64> = BTreeMap::new();
    let mut retired = Vec::new();
    let mut sent = 0;
    while retired.len() < GENERATIONS {
        assert!(
            sent < GENERATIONS as u64 * (N + J + 5),
            "too many requests ({sent}) for {GENERATIONS} retirements: {served:?}\n{}",
            p.log_text()
        );
        let (status, v) = get_json(&addr, "/");
        assert_eq!(status, 200);
        sent += 1;
        let pid = json_pid(&v);
        *served.entry(pid).or_default() += 1;
        // Once a worker asked to retire, stop until it is gone, so its count is its own.
        let log = p.log_text();
        let asked: Vec<i32> = served
            .keys()
            .copied()
            .filter(|w| !retired.contains(w))
            .filter(|w| log.contains(&format!("child {w} reached pm.max_requests")))
            .collect();
        for w in asked {
            wait_exited(&p, w);
            retired.push(w);
        }
    }
    let log = p.log_text();
    let limits: Vec<u64> = retired
        .iter()
        .map(|&pid| logged_limit(&log, pid).expect("logged limit"))
        .collect();
    for (&pid, &limit) in retired.iter().zip(&limits) {
        assert!(
            (N..=N + J).contains(&limit),
            "child {pid}: limit {limit} outside [{N}, {}]",
            N + J
        );
        assert!(
            served[&pid] >= limit,
            "child {pid} retired after {} requests, before its limit {limit}",
            served[&pid]
        );
    }
    let distinct: std::collections::BTreeSet<_> = limits.iter().collect();
    assert!(
        distinct.len() >= 2,
        "{GENERATIONS} workers all retired at the same count {limits:?}: no jitter"
    );
}

#[test]
fn max_memory_replaces_the_worker_after_the_request_that_crossed_it() {
    const LIMIT_MB: u64 = 120;
    let env = TestEnv::new();
    let (pool, addr) = pool(&env, "leak:application", 1);
    let pool = pool.with(&format!("pm.max_memory: {LIMIT_MB}M"));
    let config = write_config_pm(&env, &[], &[(pool, "static")]);
    let p = start_quiet(&env, &config);
    let (status, v) = get_json(&addr, "/?mb=0");
    assert_eq!(status, 200);
    let worker = json_pid(&v);
    assert!(
        v["rss"].as_u64().unwrap() < LIMIT_MB << 20,
        "the worker starts above the test's limit: {v}"
    );
    // The worker measures its RSS after the request, the app inside it: a request that
    // ends within MARGIN below the limit may or may not be the one that crossed it.
    const MARGIN: u64 = 8 << 20;
    let mut crossed = None;
    let mut previous_rss = 0;
    for _ in 0..20 {
        let (status, v) = get_json(&addr, "/?mb=25");
        // The request that crosses the limit still gets its answer.
        assert_eq!(status, 200, "{v}");
        let rss = v["rss"].as_u64().unwrap();
        if json_pid(&v) != worker {
            assert!(
                previous_rss > (LIMIT_MB << 20) - MARGIN,
                "replaced at rss {previous_rss}, below the limit:\n{}",
                p.log_text()
            );
            crossed = Some(v);
            break;
        }
        if rss > LIMIT_MB << 20 {
            crossed = Some(v);
            break;
        }
        if rss < (LIMIT_MB << 20) - MARGIN {
            assert!(
                !p.log_text().contains(&format!("child {worker} reached")),
                "retired below the limit (rss {rss}):\n{}",
                p.log_text()
            );
        }
        previous_rss = rss;
    }
    let crossed = crossed.expect("the leak never crossed the limit");
    p.wait_log(
        &format!("child {worker} reached pm.max_memory"),
        Duration::from_secs(20),
    );
    let log = wait_exited(&p, worker);
    assert_replaced_first(&log, worker);
    let (status, v) = get_json(&addr, "/?mb=0");
    assert_eq!(status, 200);
    assert_ne!(json_pid(&v), worker, "the leaking worker still serves");
    assert!(!common::alive(worker));
    assert_eq!(
        v["held_mb"], 0,
        "the new worker is fresh: {v} (crossed: {crossed})"
    );
}

#[test]
fn max_lifetime_replaces_every_worker_without_a_capacity_dip() {
    let env = TestEnv::new();
    let (pool, addr) = pool(&env, "sleep:application", 2);
    let config = write_config_pm(&env, &[], &[(pool.with("pm.max_lifetime: 3s"), "static")]);
    let p = start_quiet(&env, &config);
    let pid = p.pid().as_raw();
    let first = common::wait_children(pid, Duration::from_secs(20), |n| n == 2)
        .map(|_| children_of(pid))
        .expect("2 workers");
    // Serve continuously while the workers age out; count the workers all along.
    let t0 = Instant::now();
    let mut min_seen = usize::MAX;
    let mut failed = 0;
    let gone = loop {
        let r = common::fcgi::request_raw(&addr, &common::fcgi::Request::get("/"));
        let ok = r.completed()
            && common::fcgi::CgiResponse::parse(&r.stdout).is_ok_and(|c| c.status == 200);
        if !ok {
            failed += 1;
        }
        let now = children_of(pid);
        min_seen = min_seen.min(now.len());
        if first.iter().all(|w| !now.contains(w)) {
            break true;
        }
        if t0.elapsed() > Duration::from_secs(30) {
            break false;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        gone,
        "the first workers {first:?} outlived pm.max_lifetime:\n{}",
        p.log_text()
    );
    assert_eq!(
        failed,
        0,
        "requests failed during lifetime recycling:\n{}",
        p.log_text()
    );
    assert!(min_seen >= 2, "the pool dipped to {min_seen} workers");
    // Gone from the process table can come just before the manager logs the exit.
    for w in &first {
        wait_exited(&p, *w);
    }
    let log = p.log_text();
    for w in &first {
        assert!(
            log.contains(&format!("child {w} reached pm.max_lifetime (3s)")),
            "no lifetime line for {w}:\n{log}"
        );
        assert_replaced_first(&log, *w);
    }
    assert!(wait_until(Duration::from_secs(5), || children_of(pid)
        .len()
        == 2));
}

#[test]
fn worker_told_to_quit_serves_the_connection_it_already_accepted() {
    // What the manager does to a retiring worker (SIGQUIT) can land after the worker
    // accepted a connection and before the web server's request bytes arrive. That
    // connection is the worker's to serve (PHP-FPM's worker keeps polling for the first
    // request); dropping it is a failed request for nginx (502).
    let env = TestEnv::new();
    let (pool, addr) = pool(&env, "sleep:application", 1);
    let config = write_config_pm(&env, &[], &[(pool, "static")]);
    let p = start_quiet(&env, &config);
    let (_, v) = get_json(&addr, "/");
    let worker = json_pid(&v);
    let mut c = common::fcgi::Conn::connect(&addr).expect("connect");
    c.set_timeout(Duration::from_secs(30));
    // The only worker is idle in poll on the listener: give it ample time to accept.
    std::thread::sleep(Duration::from_millis(500));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(worker),
        nix::sys::signal::Signal::SIGQUIT,
    )
    .expect("SIGQUIT the worker");
    std::thread::sleep(Duration::from_millis(200));
    let r = c
        .request(&common::fcgi::Request::get("/late"))
        .map_err(|e| e.to_string());
    let ok = matches!(&r, Ok(r) if r.completed()
        && common::fcgi::CgiResponse::parse(&r.stdout).is_ok_and(|c| c.status == 200));
    assert!(
        ok,
        "the connection accepted before SIGQUIT was dropped ({:?}):\n{}",
        r.map(|r| String::from_utf8_lossy(&r.stdout).into_owned()),
        p.log_text()
    );
}
