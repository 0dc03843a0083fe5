//! Process-manager modes through the real `pyfpm` binary: `static` keeps exactly
//! `pm.max_children` workers, `dynamic` starts `pm.start_servers`, grows to keep
//! `pm.min_spare_servers` idle under load and retires surplus idle workers one per tick,
//! `ondemand` starts none, spawns for waiting connections (never fewer than the waiting
//! load needs) and retires after `pm.process_idle_timeout`. Worker counts are the
//! manager's live children; every wait is bounded and no test asserts speed.

mod common;

use common::fcgi::Addr;
use common::{
    Pool, TestEnv, children_of, concurrent_gets, json_pid, sample_children, start_quiet,
    wait_children, write_config_pm,
};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// A sleep.py pool on a Unix socket in the test dir.
fn sleep_pool(env: &TestEnv, max_children: u32) -> (Pool, Addr) {
    let sock = env.file("www.sock");
    (
        Pool::new("www", "sleep:application")
            .listen(&sock.display().to_string())
            .children(max_children),
        Addr::Unix(sock),
    )
}

/// Join the request threads; every one must have been answered 200 with a pid.
fn all_ok(
    handles: Vec<std::thread::JoinHandle<Result<common::fcgi::Response, String>>>,
) -> Vec<i32> {
    handles
        .into_iter()
        .map(|h| {
            let r = h.join().expect("client thread").expect("request failed");
            let cgi = common::fcgi::CgiResponse::parse(&r.stdout).expect("CGI response");
            assert_eq!(
                cgi.status,
                200,
                "body {:?}",
                String::from_utf8_lossy(&cgi.body)
            );
            json_pid(&serde_json::from_slice(&cgi.body).expect("JSON body"))
        })
        .collect()
}

#[test]
fn static_keeps_exactly_max_children_idle_and_busy() {
    let env = TestEnv::new();
    let (pool, addr) = sleep_pool(&env, 3);
    let config = write_config_pm(&env, &[], &[(pool, "static")]);
    let p = start_quiet(&env, &config);
    let pid = p.pid().as_raw();
    wait_children(pid, Duration::from_secs(20), |n| n == 3)
        .unwrap_or_else(|n| panic!("{n} workers, want 3:\n{}", p.log_text()));
    // Idle for more than two maintenance ticks: nothing is retired or added.
    let idle = sample_children(pid, Duration::from_millis(2500));
    assert!(idle.iter().all(|&n| n == 3), "idle counts {idle:?}");
    // Five requests for three workers: two wait, nothing is added.
    let handles = concurrent_gets(&addr, "/?s=2", 5);
    let busy = sample_children(pid, Duration::from_millis(2500));
    assert!(busy.iter().all(|&n| n == 3), "busy counts {busy:?}");
    all_ok(handles);
}

#[test]
fn dynamic_starts_start_servers_grows_under_load_and_shrinks_one_per_tick() {
    let env = TestEnv::new();
    let (pool, addr) = sleep_pool(&env, 6);
    let pool = pool
        .with("pm.start_servers: 2")
        .with("pm.min_spare_servers: 2")
        .with("pm.max_spare_servers: 3");
    let config = write_config_pm(&env, &[], &[(pool, "dynamic")]);
    let p = start_quiet(&env, &config);
    let pid = p.pid().as_raw();
    wait_children(pid, Duration::from_secs(20), |n| n == 2)
        .unwrap_or_else(|n| panic!("{n} workers at start, want start_servers=2"));
    // 2 idle is within [min_spare, max_spare]: stable over two ticks.
    let settled = sample_children(pid, Duration::from_millis(2500));
    assert!(
        settled.iter().all(|&n| n == 2),
        "counts at rest {settled:?}"
    );

    // Four slow requests: 4 busy + min_spare 2 idle = 6 = max_children.
    let handles = concurrent_gets(&addr, "/?s=8", 4);
    let grown = wait_children(pid, Duration::from_secs(20), |n| n >= 6).unwrap_or_else(|n| {
        panic!(
            "{n} workers with 4 busy; want 6 (4 busy + 2 spare):\n{}",
            p.log_text()
        )
    });
    assert_eq!(grown, 6);
    let pids = all_ok(handles);
    assert_eq!(
        pids.iter().collect::<BTreeSet<_>>().len(),
        4,
        "the 4 slow requests were not served by 4 workers: {pids:?}"
    );
    assert!(
        children_of(pid).len() <= 6,
        "more workers than pm.max_children"
    );

    // Load gone: 6 idle > max_spare 3, retired one per tick down to 3.
    let t0 = Instant::now();
    let mut seen = Vec::new();
    while t0.elapsed() < Duration::from_secs(30) {
        let n = children_of(pid).len();
        if seen.last() != Some(&n) {
            seen.push(n);
        }
        if n == 3 && t0.elapsed() > Duration::from_secs(1) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        seen.last(),
        Some(&3),
        "idle workers not retired down to max_spare 3: counts {seen:?}\n{}",
        p.log_text()
    );
    // One per tick: every step down is by one (a count can be missed only if two
    // retirements land within one 20 ms poll, which a 1 s tick does not allow).
    for w in seen.windows(2) {
        assert!(
            w[1] + 1 >= w[0],
            "more than one worker retired at once: counts {seen:?}"
        );
    }
    let after = sample_children(pid, Duration::from_millis(2500));
    assert!(
        after.iter().all(|&n| n == 3),
        "not stable at max_spare: {after:?}"
    );
    let log = p.log_text();
    assert!(
        log.contains("more than pm.max_spare_servers"),
        "no retirement reason in the log:\n{log}"
    );
}

#[test]
fn dynamic_logs_when_max_children_is_reached() {
    let env = TestEnv::new();
    let (pool, addr) = sleep_pool(&env, 2);
    let pool = pool
        .with("pm.start_servers: 1")
        .with("pm.min_spare_servers: 1")
        .with("pm.max_spare_servers: 2");
    let config = write_config_pm(&env, &[], &[(pool, "dynamic")]);
    let p = start_quiet(&env, &config);
    // 3 requests, 2 workers at most: saturated, nobody idle.
    let handles = concurrent_gets(&addr, "/?s=4", 3);
    let log = p.wait_log(
        "server reached pm.max_children setting (2)",
        Duration::from_secs(20),
    );
    assert!(log.contains("consider raising it"), "{log}");
    assert!(children_of(p.pid().as_raw()).len() <= 2);
    all_ok(handles);
}

#[test]
fn ondemand_starts_none_spawns_for_a_burst_and_retires_when_idle() {
    let env = TestEnv::new();
    let (pool, addr) = sleep_pool(&env, 4);
    let pool = pool.with("pm.process_idle_timeout: 2s");
    let config = write_config_pm(&env, &[], &[(pool, "ondemand")]);
    let p = start_quiet(&env, &config);
    let pid = p.pid().as_raw();
    // Nothing runs before the first connection, over more than two ticks.
    let quiet = sample_children(pid, Duration::from_millis(2500));
    assert!(
        quiet.iter().all(|&n| n == 0),
        "ondemand started workers with no connection: {quiet:?}"
    );

    // The first connection gets a worker.
    let (status, v) = common::get_json(&addr, "/");
    assert_eq!(status, 200);
    let first = json_pid(&v);
    assert!(children_of(pid).contains(&first));

    // A burst of K = max_children slow requests: each gets its own worker, so none waits
    // for another to finish (a waiting one would reuse a finished worker's pid).
    const K: usize = 4;
    const SLEEP: u64 = 4;
    let t0 = Instant::now();
    let handles = concurrent_gets(&addr, &format!("/?s={SLEEP}"), K);
    let peak = wait_children(pid, Duration::from_secs(20), |n| n >= K)
        .unwrap_or_else(|n| panic!("{n} workers for {K} waiting requests:\n{}", p.log_text()));
    assert!(peak <= K, "more workers ({peak}) than pm.max_children");
    let pids = all_ok(handles);
    let elapsed = t0.elapsed();
    assert_eq!(
        pids.iter().collect::<BTreeSet<_>>().len(),
        K,
        "some of the {K} requests shared a worker (one waited for another): {pids:?}\n{}",
        p.log_text()
    );
    assert!(
        elapsed < Duration::from_secs(SLEEP * K as u64),
        "{K} concurrent {SLEEP}s requests took {elapsed:?}: they were serialised"
    );

    // Idle past process_idle_timeout: all retired, one per tick.
    wait_children(pid, Duration::from_secs(30), |n| n == 0).unwrap_or_else(|n| {
        panic!(
            "{n} workers still there after the idle timeout:\n{}",
            p.log_text()
        )
    });
    let log = p.log_text();
    assert!(
        log.contains("longer than pm.process_idle_timeout"),
        "no idle-timeout retirement in the log:\n{log}"
    );
    // And the pool still serves: a new worker is spawned on demand.
    let (status, _) = common::get_json(&addr, "/");
    assert_eq!(status, 200);
}

#[test]
fn ondemand_logs_when_max_children_is_reached() {
    let env = TestEnv::new();
    let (pool, addr) = sleep_pool(&env, 2);
    let config = write_config_pm(&env, &[], &[(pool, "ondemand")]);
    let p = start_quiet(&env, &config);
    let handles = concurrent_gets(&addr, "/?s=4", 3);
    let log = p.wait_log("setting (2), consider raising it", Duration::from_secs(20));
    assert!(
        log.lines()
            .any(|l| l.contains("server reached") && l.contains("max_children")),
        "{log}"
    );
    assert!(children_of(p.pid().as_raw()).len() <= 2);
    // The third request waits for a worker, then is served: nothing is dropped.
    all_ok(handles);
}

#[test]
fn global_process_max_caps_all_pools_together() {
    let env = TestEnv::new();
    let a_sock = env.file("a.sock");
    let b_sock = env.file("b.sock");
    let a = Pool::new("a", "sleep:application")
        .listen(&a_sock.display().to_string())
        .children(2);
    let b = Pool::new("b", "sleep:application")
        .listen(&b_sock.display().to_string())
        .children(2);
    let config = write_config_pm(&env, &["process.max: 3"], &[(a, "static"), (b, "static")]);
    let mut p = env.spawn(&config, "pyfpm.log", &["-F"]);
    let log = p.wait_log(
        "The maximum number of processes has been reached",
        Duration::from_secs(20),
    );
    assert!(log.contains("'process.max'"), "{log}");
    // Both pools still serve, within the global cap of 3 workers.
    p.wait_serving(&Addr::Unix(a_sock));
    p.wait_serving(&Addr::Unix(b_sock));
    let seen = sample_children(p.pid().as_raw(), Duration::from_millis(2500));
    assert!(
        seen.iter().all(|&n| n <= 3) && seen.contains(&3),
        "worker counts {seen:?} with process.max 3"
    );
}

#[test]
fn dynamic_start_servers_defaults_to_the_middle_of_the_spare_range() {
    let env = TestEnv::new();
    let (pool, _addr) = sleep_pool(&env, 8);
    let pool = pool
        .with("pm.min_spare_servers: 1")
        .with("pm.max_spare_servers: 5");
    let config = write_config_pm(&env, &[], &[(pool, "dynamic")]);
    let p = start_quiet(&env, &config);
    // PHP-FPM's rule: min_spare + (max_spare - min_spare) / 2 = 1 + 4 / 2 = 3.
    let pid = p.pid().as_raw();
    wait_children(pid, Duration::from_secs(20), |n| n == 3)
        .unwrap_or_else(|n| panic!("{n} workers, want the derived start_servers 3"));
    let seen = sample_children(pid, Duration::from_millis(2500));
    assert!(seen.iter().all(|&n| n == 3), "{seen:?}");
}

/// Hold 6 slow requests on a dynamic pool of 6 idle workers (min_spare 6, max 12), so
/// 6 more are needed at once; returns the successive worker counts while it grows and
/// the manager's log.
fn growth_steps(spawn_rate: Option<u32>) -> (Vec<usize>, String) {
    let env = TestEnv::new();
    let (pool, addr) = sleep_pool(&env, 12);
    let mut pool = pool
        .with("pm.start_servers: 6")
        .with("pm.min_spare_servers: 6")
        .with("pm.max_spare_servers: 12");
    if let Some(r) = spawn_rate {
        pool = pool.with(&format!("pm.max_spawn_rate: {r}"));
    }
    let config = write_config_pm(&env, &[], &[(pool, "dynamic")]);
    let p = start_quiet(&env, &config);
    let pid = p.pid().as_raw();
    wait_children(pid, Duration::from_secs(20), |n| n == 6).expect("6 workers at start");
    let handles = concurrent_gets(&addr, "/?s=12", 6);
    let t0 = Instant::now();
    let mut seen = vec![6];
    while t0.elapsed() < Duration::from_secs(30) {
        let n = children_of(pid).len();
        if seen.last() != Some(&n) {
            seen.push(n);
        }
        if n >= 12 {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        seen.last(),
        Some(&12),
        "never grew to 12: {seen:?}\n{}",
        p.log_text()
    );
    all_ok(handles);
    (seen, p.log_text())
}

/// The growth of [`growth_steps`], read from the manager's log instead of sampled from
/// /proc (a sampler on a loaded machine can see two spawns of one tick as two steps):
/// the number of workers each maintenance tick started, in order. Spawns of one tick are
/// milliseconds apart in the log, ticks about a second apart.
fn spawns_per_tick(log: &str) -> Vec<usize> {
    let times: Vec<u64> = log
        .lines()
        .filter(|l| l.contains("] child ") && l.ends_with(" started"))
        .filter_map(log_time_ms)
        .skip(6) // pm.start_servers
        .collect();
    let mut ticks: Vec<usize> = Vec::new();
    let mut last: Option<u64> = None;
    for t in times {
        match last {
            Some(prev) if t.saturating_sub(prev) < 400 => *ticks.last_mut().unwrap() += 1,
            _ => ticks.push(1),
        }
        last = Some(t);
    }
    ticks
}

/// Milliseconds since midnight of a `[21-Nov-2026 08:01:39.587] ...` log line.
fn log_time_ms(line: &str) -> Option<u64> {
    let stamp = line.strip_prefix('[')?.split(']').next()?;
    let time = stamp.split(' ').nth(1)?;
    let (hms, ms) = time.split_once('.')?;
    let mut parts = hms.split(':').map(|p| p.parse::<u64>().ok());
    let (h, m, s) = (parts.next()??, parts.next()??, parts.next()??);
    Some(((h * 60 + m) * 60 + s) * 1000 + ms.parse::<u64>().ok()?)
}

#[test]
fn max_spawn_rate_one_spawns_one_worker_per_tick() {
    let (_, log) = growth_steps(Some(1));
    let ticks = spawns_per_tick(&log);
    assert_eq!(ticks.iter().sum::<usize>(), 6, "{ticks:?}\n{log}");
    assert!(
        ticks.iter().all(|&n| n == 1),
        "more than one worker spawned in one tick with pm.max_spawn_rate 1: {ticks:?}\n{log}"
    );
}

#[test]
fn default_spawn_rate_doubles_per_tick() {
    // Ticks spawn 1, 2, then the remaining 3: some tick starts more than one at once.
    let (_, log) = growth_steps(None);
    let ticks = spawns_per_tick(&log);
    assert_eq!(ticks.iter().sum::<usize>(), 6, "{ticks:?}\n{log}");
    assert!(
        ticks.iter().any(|&n| n >= 2),
        "the spawn rate never doubled: {ticks:?}\n{log}"
    );
}
