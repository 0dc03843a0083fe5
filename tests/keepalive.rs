//! Idle kept-alive connections never pin a worker (issue 4, "Connections"): the thread
//! that served a kept connection holds it idle and watches it with the listeners and
//! its other held connections, so it serves the next request that arrives on any of
//! them; one whose request waits for a busy thread (or any, when the worker stops) is
//! parked with the manager, which hands it to an idle worker. Proven with real nginx
//! (`keepalive N` + `fastcgi_keep_conn on`) and with the raw FastCGI client.

mod common;

use common::fcgi::{self, Addr, CgiResponseExt as _, Conn, Request, ResponseExt as _};
use common::http::Client;
use common::nginx::Nginx;
use common::{Pool, Pyfpm, TestEnv, json_pid, log_pids, start_quiet, wait_until, write_config_pm};
use fastcgi::values;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The manager's parking capacity per pool (pyfpm::manager::parking::MAX_PARKED).
const MAX_PARKED: u32 = 4096;

/// An echo pool of `children` static workers on a Unix socket in `env`.
fn echo_pool(env: &TestEnv, children: u32) -> (Pool, Addr) {
    let sock = env.file("www.sock");
    (
        Pool::new("www", "echo:application")
            .listen(&sock.display().to_string())
            .children(children),
        Addr::Unix(sock),
    )
}

fn start(env: &TestEnv, pool: Pool, mode: &str) -> Pyfpm {
    let config = write_config_pm(env, &[], &[(pool, mode)]);
    start_quiet(env, &config)
}

/// nginx's error-log lines that mean an upstream connection broke under it.
fn reset_lines(nginx: &Nginx) -> Vec<String> {
    nginx
        .error_log()
        .lines()
        .filter(|l| {
            l.contains("recv() failed")
                || l.contains("Connection reset")
                || l.contains("prematurely closed")
        })
        .map(str::to_string)
        .collect()
}

/// `threads` clients, each with its own kept-alive HTTP connection, doing `each`
/// requests (alternating GET and POST, so a broken upstream connection cannot be hidden
/// by nginx's retry of idempotent requests); returns the statuses that were not 200.
fn load(port: u16, threads: usize, each: usize, query: &str) -> Vec<String> {
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let query = query.to_string();
            std::thread::spawn(move || {
                let client = Client::new(port);
                let mut bad = Vec::new();
                for i in 0..each {
                    let (method, body): (&str, &[u8]) = if i % 2 == 0 {
                        ("GET", b"")
                    } else {
                        ("POST", b"payload")
                    };
                    let r = client.request(method, &format!("/t{t}/{i}?{query}"), &[], body);
                    if r.status != 200 {
                        bad.push(format!("{method} t{t}/{i}: {}", r.status));
                    }
                }
                bad
            })
        })
        .collect();
    handles
        .into_iter()
        .flat_map(|h| h.join().expect("load thread"))
        .collect()
}

/// Run `f` on a thread; `None` if it does not finish within `within` (the thread is
/// left to its own I/O timeouts).
fn bounded<T: Send + 'static>(
    within: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(within).ok()
}

#[test]
fn idle_kept_connections_do_not_starve_another_web_server() {
    let env = TestEnv::new();
    let (pool, addr) = echo_pool(&env, 2);
    let sock = match &addr {
        Addr::Unix(p) => p.display().to_string(),
        Addr::Tcp(_) => unreachable!(),
    };
    let _p = start(&env, pool, "static");
    let a = Nginx::builder(&format!("unix:{sock}"))
        .keepalive(Some(32))
        .start(&env);
    let bad = load(a.port, 8, 25, "");
    assert!(
        bad.is_empty(),
        "nginx A (keep-alive) failed requests: {bad:?}"
    );
    // nginx A now caches idle connections to the pool. Before parking, each pinned one
    // of the two workers, and a second web server without keep-alive got nothing.
    let env_b = TestEnv::new();
    let b = Nginx::builder(&format!("unix:{sock}")).start(&env_b);
    let port_b = b.port;
    let started = Instant::now();
    let statuses = bounded(Duration::from_secs(30), move || {
        let client = Client::new(port_b);
        (0..50)
            .map(|i| client.request("GET", &format!("/b{i}"), &[], b"").status)
            .collect::<Vec<u16>>()
    })
    .unwrap_or_else(|| {
        panic!(
            "nginx B (no keep-alive) did not get 50 answers within 30 s; its error log:\n{}",
            b.error_log()
        )
    });
    eprintln!("nginx B: 50 requests in {:?}", started.elapsed());
    assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
    // nginx A's cached connections still work (they come back through the manager).
    let bad = load(a.port, 4, 10, "");
    assert!(bad.is_empty(), "nginx A after B: {bad:?}");
    assert_eq!(reset_lines(&a), Vec::<String>::new());
}

#[test]
fn sixty_four_idle_connections_in_front_of_four_workers() {
    let env = TestEnv::new();
    let (pool, addr) = echo_pool(&env, 4);
    let sock = match &addr {
        Addr::Unix(p) => p.display().to_string(),
        Addr::Tcp(_) => unreachable!(),
    };
    let _p = start(&env, pool, "static");
    let nginx = Nginx::builder(&format!("unix:{sock}"))
        .keepalive(Some(64))
        .location("fastcgi_read_timeout 60s;")
        .start(&env);
    // 64 concurrent slow-ish requests make nginx open 64 upstream connections, which it
    // then keeps, idle.
    let bad = load(nginx.port, 64, 1, "sleep=0.2");
    assert!(bad.is_empty(), "{bad:?}");
    std::thread::sleep(Duration::from_millis(300));
    // A burst now must not wait behind the idle connections.
    let port = nginx.port;
    let started = Instant::now();
    let bad =
        bounded(Duration::from_secs(10), move || load(port, 32, 4, "")).unwrap_or_else(|| {
            panic!(
                "a burst behind 64 idle kept connections did not finish within 10 s; nginx:\n{}",
                nginx.error_log()
            )
        });
    eprintln!(
        "burst of 128 requests behind 64 idle connections: {:?}",
        started.elapsed()
    );
    assert!(bad.is_empty(), "{bad:?}");
    assert_eq!(reset_lines(&nginx), Vec::<String>::new());
}

#[test]
fn threaded_workers_behind_nginx_keep_alive_serve_every_request() {
    // Two workers of four threads behind nginx with keep-alive: idle kept connections
    // are parked by whichever thread holds them, GETs and POSTs all succeed, and a
    // second nginx without keep-alive is not starved.
    let env = TestEnv::new();
    let (pool, addr) = echo_pool(&env, 2);
    let sock = match &addr {
        Addr::Unix(p) => p.display().to_string(),
        Addr::Tcp(_) => unreachable!(),
    };
    let _p = start(&env, pool.with("threads: 4"), "static");
    let a = Nginx::builder(&format!("unix:{sock}"))
        .keepalive(Some(32))
        .start(&env);
    let bad = load(a.port, 16, 20, "");
    assert!(
        bad.is_empty(),
        "nginx A (keep-alive) failed requests: {bad:?}"
    );
    let env_b = TestEnv::new();
    let b = Nginx::builder(&format!("unix:{sock}")).start(&env_b);
    let port_b = b.port;
    let bad =
        bounded(Duration::from_secs(30), move || load(port_b, 4, 10, "")).unwrap_or_else(|| {
            panic!(
                "nginx B did not get its answers within 30 s; its error log:\n{}",
                b.error_log()
            )
        });
    assert!(bad.is_empty(), "nginx B: {bad:?}");
    let bad = load(a.port, 8, 10, "");
    assert!(bad.is_empty(), "nginx A after B: {bad:?}");
    assert_eq!(reset_lines(&a), Vec::<String>::new());
}

#[test]
fn recycling_under_keep_alive_load_resets_no_connection() {
    let env = TestEnv::new();
    let (pool, addr) = echo_pool(&env, 2);
    let sock = match &addr {
        Addr::Unix(p) => p.display().to_string(),
        Addr::Tcp(_) => unreachable!(),
    };
    let p = start(&env, pool.with("pm.max_requests: 5"), "static");
    let nginx = Nginx::builder(&format!("unix:{sock}"))
        .keepalive(Some(32))
        .start(&env);
    // 20 ms per request: a replacement starts in about 150 ms, so many of them happen
    // while the load runs.
    let bad = load(nginx.port, 8, 25, "sleep=0.02");
    let log = p.log_text();
    // Every start after the first two is a replacement.
    let recycled = log_pids(&log, "www", "started").len().saturating_sub(2);
    eprintln!("recycling under keep-alive: 200 requests, {recycled} workers recycled");
    assert!(bad.is_empty(), "failed requests: {bad:?}");
    assert!(
        recycled >= 10,
        "too few recyclings to prove anything:\n{log}"
    );
    assert_eq!(
        reset_lines(&nginx),
        Vec::<String>::new(),
        "nginx saw broken upstream connections"
    );
}

#[test]
fn a_kept_connection_does_not_hold_the_only_worker() {
    let env = TestEnv::new();
    let (pool, addr) = echo_pool(&env, 1);
    let _p = start(&env, pool, "static");
    let mut first = Conn::connect(&addr).unwrap();
    let r = first
        .request(&Request::get("/first").keep_conn(true))
        .unwrap();
    assert!(r.completed());
    let pid = json_pid(&r.cgi().json());
    // The only worker now holds `first`, idle and open. A second connection is served
    // all the same: the worker watches its listener with the connections it holds.
    let second = bounded(Duration::from_secs(10), {
        let addr = addr.clone();
        move || {
            let mut c = Conn::connect(&addr).unwrap();
            c.request(&Request::get("/second")).unwrap()
        }
    })
    .expect("a second connection waited behind an idle kept one");
    assert!(second.completed());
    assert_eq!(json_pid(&second.cgi().json()), pid);
    // `first`'s next request is served by the worker that holds it.
    let again = first
        .request(&Request::get("/first-again").keep_conn(true))
        .unwrap();
    assert!(again.completed());
    assert_eq!(json_pid(&again.cgi().json()), pid);
    // And once more, on the fast path or through the manager alike.
    let third = first.request(&Request::get("/first-3")).unwrap();
    assert!(third.completed());
}

#[test]
fn a_held_connection_whose_worker_is_busy_is_served_by_an_idle_worker() {
    let env = TestEnv::new();
    let sock = env.file("www.sock");
    let pool = Pool::new("www", "sleep:application")
        .listen(&sock.display().to_string())
        .children(2);
    let addr = Addr::Unix(sock);
    let _p = start(&env, pool, "static");
    // `x` is served once, then held idle by the worker that served it, A.
    let mut x = Conn::connect(&addr).unwrap();
    let r = x.request(&Request::get("/x1").keep_conn(true)).unwrap();
    assert!(r.completed());
    let a = json_pid(&r.cgi().json());
    // Occupy both workers with a request each, in the app until its gate opens.
    let slow = |i: u32| {
        let touch = env.file(&format!("in-app-{i}"));
        let gate = env.file(&format!("gate-{i}"));
        let uri = format!("/slow{i}?touch={}&wait={}", touch.display(), gate.display());
        let addr = addr.clone();
        let handle = std::thread::spawn(move || {
            let mut c = Conn::connect(&addr).unwrap();
            c.request(&Request::get(&uri)).unwrap()
        });
        (touch, gate, handle)
    };
    let (touch1, gate1, slow1) = slow(1);
    let (touch2, gate2, slow2) = slow(2);
    assert!(
        wait_until(Duration::from_secs(20), || touch1.exists()
            && touch2.exists()),
        "the two slow requests never both reached the app"
    );
    let pid_of = |p: &std::path::Path| -> i32 {
        std::fs::read_to_string(p).unwrap().trim().parse().unwrap()
    };
    let (pid1, pid2) = (pid_of(&touch1), pid_of(&touch2));
    assert_ne!(pid1, pid2, "one request per worker");
    assert!(pid1 == a || pid2 == a, "A is one of the two workers");
    // Free the other worker, B. A stays in the app, still holding `x`.
    let ((gate_a, slow_a), (gate_b, slow_b)) = if pid1 == a {
        ((gate1, slow1), (gate2, slow2))
    } else {
        ((gate2, slow2), (gate1, slow1))
    };
    std::fs::write(&gate_b, b"").unwrap();
    let b = json_pid(&slow_b.join().unwrap().cgi().json());
    // `x`'s next request must not wait for A, whose request stays in the app until its
    // gate opens (30 s at most): the watcher parks `x` and B serves it.
    x.set_timeout(Duration::from_secs(10));
    let r = x
        .request(&Request::get("/x2").keep_conn(true))
        .expect("the request on the held connection waited for its busy worker");
    assert!(r.completed());
    assert_eq!(json_pid(&r.cgi().json()), b);
    std::fs::write(&gate_a, b"").unwrap();
    assert_eq!(json_pid(&slow_a.join().unwrap().cgi().json()), a);
    // And `x` goes on working.
    let r = x.request(&Request::get("/x3")).unwrap();
    assert!(r.completed());
}

#[test]
fn more_idle_connections_than_a_thread_holds_all_stay_usable() {
    // One worker holds at most 64 idle connections (pyfpm_worker::parking::MAX_HELD);
    // beyond that it parks the oldest with the manager, which must not lose any.
    let env = TestEnv::new();
    let (pool, addr) = echo_pool(&env, 1);
    let _p = start(&env, pool, "static");
    let mut conns: Vec<Conn> = (0..72)
        .map(|i| {
            let mut c = Conn::connect(&addr).unwrap();
            let r = c
                .request(&Request::get(&format!("/first-{i}")).keep_conn(true))
                .unwrap();
            assert!(r.completed(), "first request on connection {i}");
            c
        })
        .collect();
    // Oldest first: those are the ones the worker handed to the manager.
    for (i, c) in conns.iter_mut().enumerate() {
        let r = c
            .request(&Request::get(&format!("/again-{i}")).keep_conn(true))
            .unwrap_or_else(|e| panic!("connection {i} failed on its second request: {e}"));
        assert!(r.completed(), "second request on connection {i}");
    }
}

#[test]
fn ondemand_starts_a_worker_for_a_parked_connection_whose_request_arrived() {
    let env = TestEnv::new();
    let (pool, addr) = echo_pool(&env, 1);
    let p = start(&env, pool.with("pm.process_idle_timeout: 1s"), "ondemand");
    let mut c = Conn::connect(&addr).unwrap();
    let r = c.request(&Request::get("/one").keep_conn(true)).unwrap();
    let pid = json_pid(&r.cgi().json());
    // Idle past the timeout: the worker retires, parking the connection on its way out.
    p.wait_log(&format!("child {pid} exited"), Duration::from_secs(20));
    let again = c.request(&Request::get("/two").keep_conn(true)).unwrap();
    assert!(again.completed());
    let new_pid = json_pid(&again.cgi().json());
    assert_ne!(new_pid, pid, "served by a new worker");
}

#[test]
fn get_values_counts_parked_connections() {
    let env = TestEnv::new();
    let (pool, addr) = echo_pool(&env, 3);
    let _p = start(&env, pool, "static");
    let mut c = Conn::connect(&addr).unwrap();
    let v = c.get_values(&[values::FCGI_MAX_CONNS, values::FCGI_MAX_REQS]);
    let conns = (3 + MAX_PARKED).to_string();
    assert_eq!(
        fcgi::value(&v, values::FCGI_MAX_CONNS),
        Some(conns.as_str())
    );
    assert_eq!(fcgi::value(&v, values::FCGI_MAX_REQS), Some("3"));
}
