//! `preload: true` through the real `pyfpm` binary: the app is imported once, in the
//! pool's zygote, and every worker (recycled ones too) is forked from it with CPython's
//! fork hooks; a reload imports again in a new zygote; workers outlive a killed zygote
//! and the pool recovers; an app that does not import backs off as without preload.

mod common;

use common::fcgi::Addr;
use common::{
    Pool, Pyfpm, TestEnv, alive, children_of, get_json, json_pid, start_quiet, wait_until,
};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);

/// A preload pool of `children` workers serving tests/apps/preload.py, with `extra`
/// directives; returns its address and the file its imports are logged to.
fn preload_pool(env: &TestEnv, children: u32, extra: &[&str]) -> (Pool, Addr, PathBuf) {
    let sock = env.file("www.sock");
    let imports = env.file("imports.log");
    let mut pool = Pool::new("www", "preload:application")
        .listen(&sock.display().to_string())
        .children(children)
        .with("preload: true")
        .with(&format!(
            "env: {{PRELOAD_LOG: {}}}",
            common::yq(&imports.display().to_string())
        ));
    for line in extra {
        pool = pool.with(line);
    }
    (pool, Addr::Unix(sock), imports)
}

/// The pids that imported the app, in order.
fn imports(path: &PathBuf) -> Vec<i32> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| l.trim().parse().unwrap())
        .collect()
}

/// One request's answer: (pid, ppid, import_pid, random).
fn ask(addr: &Addr) -> (i32, i32, i32, u64) {
    let (status, v) = get_json(addr, "/");
    assert_eq!(status, 200, "{v}");
    let field = |name: &str| {
        v[name]
            .as_i64()
            .unwrap_or_else(|| panic!("no {name} in {v}"))
    };
    (
        json_pid(&v),
        field("ppid") as i32,
        field("import_pid") as i32,
        v["random"].as_u64().unwrap(),
    )
}

/// The pid of the pool's zygote, from its "is ready" line (the last one logged).
fn ready_zygote(p: &Pyfpm) -> i32 {
    let log = p.log_text();
    log.lines()
        .rev()
        .filter_map(|l| {
            let rest = &l[l.find("[pool www] zygote ")? + "[pool www] zygote ".len()..];
            let (pid, tail) = rest.split_once(' ')?;
            tail.starts_with("is ready")
                .then(|| pid.parse().ok())
                .flatten()
        })
        .next()
        .unwrap_or_else(|| panic!("no zygote is ready; log:\n{log}"))
}

#[test]
fn the_app_is_imported_once_and_every_worker_is_forked_from_the_zygote() {
    let env = TestEnv::new();
    let (pool, addr, log) = preload_pool(&env, 2, &["pm.max_requests: 1"]);
    let config = env.write_config(&[], &[pool]);
    let mut p = start_quiet(&env, &config);
    let zygote = ready_zygote(&p);
    // The manager's only child is the zygote; the workers are the zygote's.
    assert_eq!(children_of(p.pid().as_raw()), vec![zygote]);
    assert_eq!(children_of(zygote).len(), 2, "{}", p.log_text());

    // With pm.max_requests 1 each worker is replaced after its request (by a fork of
    // the same zygote): wait for that each time, so every request meets a new worker.
    let mut first_draw: BTreeMap<i32, u64> = BTreeMap::new();
    for _ in 0..6 {
        let (pid, ppid, import_pid, random) = ask(&addr);
        assert_ne!(pid, zygote, "the zygote itself never serves");
        assert_eq!(ppid, zygote, "worker {pid} is not the zygote's child");
        assert_eq!(import_pid, zygote, "worker {pid} imported the app itself");
        assert!(
            first_draw.insert(pid, random).is_none(),
            "worker {pid} served twice"
        );
        assert!(
            wait_until(WAIT, || !alive(pid)),
            "worker {pid} was not recycled; log:\n{}",
            p.log_text()
        );
    }
    let distinct: BTreeSet<u64> = first_draw.values().copied().collect();
    assert_eq!(
        distinct.len(),
        first_draw.len(),
        "forked workers drew the same first random number (no fork hooks?): {first_draw:?}"
    );
    assert_eq!(
        imports(&log),
        vec![zygote],
        "the app was imported more than once"
    );

    // A graceful stop ends the workers, then the zygote.
    p.signal(Signal::SIGQUIT);
    let status = p.wait_exit(WAIT).expect("pyfpm did not stop");
    assert!(status.success(), "{status}; log:\n{}", p.log_text());
    assert!(
        wait_until(Duration::from_secs(5), || !alive(zygote)),
        "the zygote outlived the manager"
    );
}

#[test]
fn a_reload_imports_the_app_again_in_a_new_zygote() {
    let env = TestEnv::new();
    let (pool, addr, log) = preload_pool(&env, 2, &[]);
    let config = env.write_config(&[], &[pool]);
    let mut p = start_quiet(&env, &config);
    let first = ready_zygote(&p);
    assert_eq!(ask(&addr).2, first);
    p.signal(Signal::SIGHUP);
    assert!(
        wait_until(WAIT, || ready_zygote(&p) != first
            && ask(&addr).2 != first
            && children_of(first).is_empty()),
        "the new generation did not take over; log:\n{}",
        p.log_text()
    );
    let second = ready_zygote(&p);
    assert_eq!(imports(&log), vec![first, second]);
    for _ in 0..4 {
        let (_, ppid, import_pid, _) = ask(&addr);
        assert_eq!((ppid, import_pid), (second, second));
    }
    // The old zygote goes once its last worker has.
    assert!(
        wait_until(WAIT, || !alive(first)),
        "the old zygote was kept; log:\n{}",
        p.log_text()
    );
    p.stop();
}

#[test]
fn a_reload_that_turns_preload_off_lets_the_zygote_go() {
    let env = TestEnv::new();
    let (pool, addr, log) = preload_pool(&env, 1, &[]);
    let config = env.write_config(&[], std::slice::from_ref(&pool));
    let mut p = start_quiet(&env, &config);
    let zygote = ready_zygote(&p);
    let mut off = pool.clone();
    off.extra.retain(|l| l != "preload: true");
    env.write_config(&[], &[off]);
    p.signal(Signal::SIGHUP);
    // The new worker imports the app itself; the zygote goes with its last worker.
    assert!(
        wait_until(WAIT, || {
            let (pid, _, import_pid, _) = ask(&addr);
            import_pid == pid && !alive(zygote)
        }),
        "the zygote outlived its generation; log:\n{}",
        p.log_text()
    );
    assert_eq!(imports(&log).len(), 2);
    p.stop();
}

#[test]
fn workers_outlive_a_killed_zygote_and_the_pool_recovers() {
    let env = TestEnv::new();
    let (pool, addr, log) = preload_pool(&env, 1, &[]);
    let config = env.write_config(&[], &[pool]);
    let mut p = start_quiet(&env, &config);
    let zygote = ready_zygote(&p);
    let (worker, ..) = ask(&addr);
    kill(Pid::from_raw(zygote), Signal::SIGKILL).unwrap();
    p.wait_log(&format!("zygote {zygote} exited on signal 9"), WAIT);
    // Still served by the same worker, now an orphan.
    let (pid, ppid, import_pid, _) = ask(&addr);
    assert_eq!((pid, import_pid), (worker, zygote));
    assert_ne!(ppid, zygote);

    // Its end is still noticed (through its pidfd), and a new zygote forks its
    // replacement.
    kill(Pid::from_raw(worker), Signal::SIGKILL).unwrap();
    p.wait_log(&format!("child {worker} exited"), WAIT);
    assert!(
        p.log_text().contains("its status is unknown"),
        "{}",
        p.log_text()
    );
    assert!(
        wait_until(WAIT, || {
            let (pid, ppid, import_pid, _) = ask(&addr);
            pid != worker && ppid == import_pid && import_pid != zygote
        }),
        "no worker from a new zygote; log:\n{}",
        p.log_text()
    );
    assert_eq!(imports(&log).len(), 2);
    p.stop();
}

#[test]
fn an_app_that_does_not_import_backs_off_with_its_traceback_logged() {
    let env = TestEnv::new();
    let sock = env.file("www.sock");
    let pool = Pool::new("www", "badimport:application")
        .listen(&sock.display().to_string())
        .with("preload: true");
    let config = env.write_config(&[], &[pool]);
    let mut p = env.spawn(&config, "pyfpm.log", &["-F"]);
    let log = p.wait_log("next attempt in", WAIT);
    assert!(log.contains("pyfpm-test-import-failure-marker"), "{log}");
    assert!(
        log.contains("failed to start: the app could not be imported"),
        "{log}"
    );
    assert!(log.contains("] zygote "), "{log}");
    assert!(p.try_exit().is_none(), "the manager gave up; log:\n{log}");
    p.stop();
}
