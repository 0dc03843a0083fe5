//! `request_terminate_timeout` and `request_slowlog_timeout` through the real `pyfpm`
//! binary: a request that runs too long is answered 504 with a short body (over FastCGI
//! and through real nginx), its Python stack goes to the error log, a worker stuck in C
//! code holding the GIL is killed and replaced, and a slow request gets a slow-log entry
//! (pool, pid, method, URI, the app's function) without being stopped. Timing bounds are
//! generous upper limits only; no test asserts speed.

mod common;

use common::fcgi::{self, Addr, Request};
use common::nginx::Nginx;
use common::{Pool, Pyfpm, TestEnv, get_json, json_pid, wait_until, write_config_pm};
use std::time::{Duration, Instant};

/// request_terminate_timeout used by these tests.
const TIMEOUT: Duration = Duration::from_secs(2);
/// Scheduling slack on a shared, loaded 2-core machine: an upper bound, never a target.
const SLACK: Duration = Duration::from_secs(15);

fn start(env: &TestEnv, app: &str, children: u32, extra: &[&str]) -> (Pyfpm, Addr) {
    let sock = env.file("www.sock");
    let mut pool = Pool::new("www", app)
        .listen(&sock.display().to_string())
        .children(children)
        .with(&format!(
            "request_terminate_timeout: {}s",
            TIMEOUT.as_secs()
        ));
    for e in extra {
        pool = pool.with(e);
    }
    let config = write_config_pm(env, &[], &[(pool, "static")]);
    let addr = Addr::Unix(sock);
    let mut p = env.spawn(&config, "pyfpm.log", &["-F"]);
    p.wait_serving(&addr);
    (p, addr)
}

/// One request with a long read bound; returns the raw response and how long it took.
fn timed(addr: &Addr, uri: &str) -> (fcgi::Response, Duration) {
    let t0 = Instant::now();
    let mut c = fcgi::Conn::connect(addr).expect("connect");
    c.set_timeout(Duration::from_secs(60));
    let r = c.request(&Request::get(uri)).expect("request");
    (r, t0.elapsed())
}

/// The response must be a complete 504 with a short text body, after about the timeout.
fn assert_gateway_timeout(r: &fcgi::Response, took: Duration, log: &str) {
    assert!(
        r.completed(),
        "the timed-out request got no END_REQUEST (a reset, not an error page); stdout \
         {:?}\nlog:\n{log}",
        String::from_utf8_lossy(&r.stdout)
    );
    let cgi = fcgi::CgiResponse::parse(&r.stdout).expect("CGI response");
    assert_eq!(
        cgi.status,
        504,
        "body {:?}\nlog:\n{log}",
        String::from_utf8_lossy(&cgi.body)
    );
    assert!(
        !cgi.body.is_empty() && cgi.body.len() < 1024,
        "want a short body, got {} bytes",
        cgi.body.len()
    );
    assert!(
        took >= TIMEOUT - Duration::from_millis(200),
        "answered after {took:?}, before the {TIMEOUT:?} timeout"
    );
    assert!(took < TIMEOUT + SLACK, "answered only after {took:?}");
}

/// After a timeout the pool serves again (the same worker or its replacement).
fn assert_serves_again(p: &Pyfpm, addr: &Addr) -> i32 {
    let mut last = String::new();
    let ok = wait_until(Duration::from_secs(20), || {
        match common::probe(addr, Duration::from_secs(5)) {
            Ok(()) => true,
            Err(e) => {
                last = e;
                false
            }
        }
    });
    assert!(ok, "the pool no longer serves ({last}):\n{}", p.log_text());
    let (status, v) = get_json(addr, "/");
    assert_eq!(status, 200);
    json_pid(&v)
}

#[test]
fn sleeping_request_gets_504_and_its_stack_is_logged() {
    let env = TestEnv::new();
    let (p, addr) = start(&env, "sleep:application", 1, &[]);
    let (_, v) = get_json(&addr, "/");
    let worker = json_pid(&v);
    let (r, took) = timed(&addr, "/timeout-me?s=30");
    let log = p.log_text();
    assert_gateway_timeout(&r, took, &log);
    let log = p.wait_log("pyfpm_test_sleeper", Duration::from_secs(10));
    assert!(
        log.lines()
            .any(|l| l.contains("request_terminate_timeout") && l.contains("/timeout-me")),
        "no log line names the timeout and the request:\n{log}"
    );
    let next = assert_serves_again(&p, &addr);
    // Either the same worker carried on or it was replaced; both are fine if it serves.
    eprintln!("worker before {worker}, after {next}");
}

#[test]
fn busy_python_loop_gets_504() {
    let env = TestEnv::new();
    let (p, addr) = start(&env, "busy:application", 1, &[]);
    let (r, took) = timed(&addr, "/spin?s=30");
    assert_gateway_timeout(&r, took, &p.log_text());
    p.wait_log("pyfpm_test_busy_loop", Duration::from_secs(10));
    assert_serves_again(&p, &addr);
}

#[test]
fn with_threads_each_timed_out_request_gets_504_on_its_own_thread() {
    // Two busy requests at once on a worker of two threads: one runs on the main thread
    // (stopped by the chained signal handler), the other on a second thread (stopped
    // with an asynchronous exception). Both must get their 504, the worker survives.
    let env = TestEnv::new();
    let (p, addr) = start(&env, "busy:application", 1, &["threads: 2"]);
    let (_, v) = get_json(&addr, "/");
    let worker = json_pid(&v);
    let clients: Vec<_> = (0..2)
        .map(|i| {
            let addr = addr.clone();
            std::thread::spawn(move || timed(&addr, &format!("/spin{i}?s=30")))
        })
        .collect();
    for client in clients {
        let (r, took) = client.join().unwrap();
        assert_gateway_timeout(&r, took, &p.log_text());
    }
    // Each request's record is logged once its thread has stopped: wait for both.
    let mut log = String::new();
    let both = wait_until(Duration::from_secs(10), || {
        log = p.log_text();
        (0..2).all(|i| {
            log.lines().any(|l| {
                l.contains("stopped by request_terminate_timeout")
                    && l.contains(&format!("/spin{i}"))
            })
        })
    });
    assert!(both, "a timed-out request is missing from the log:\n{log}");
    assert_eq!(
        assert_serves_again(&p, &addr),
        worker,
        "the worker was replaced; the timeouts should have stopped only the requests"
    );
}

#[test]
fn worker_stuck_in_c_code_is_killed_and_replaced() {
    let env = TestEnv::new();
    let (p, addr) = start(&env, "cblock:application", 1, &[]);
    let (_, v) = get_json(&addr, "/");
    let worker = json_pid(&v);
    let t0 = Instant::now();
    let mut c = fcgi::Conn::connect(&addr).expect("connect");
    c.set_timeout(Duration::from_secs(60));
    let r = c.request(&Request::get("/block"));
    let took = t0.elapsed();
    assert!(took < TIMEOUT + SLACK, "no answer or close for {took:?}");
    // The worker is gone: killed, and the log says why.
    assert!(
        wait_until(Duration::from_secs(20), || !common::alive(worker)),
        "the stuck worker {worker} is still alive:\n{}",
        p.log_text()
    );
    let log = p.wait_log(&format!("child {worker} exited"), Duration::from_secs(10));
    assert!(
        log.lines().any(
            |l| l.contains(&format!("pid {worker}")) && l.contains("request_terminate_timeout")
        ),
        "no log line ties worker {worker} to the timeout:\n{log}"
    );
    assert!(
        log.contains("pyfpm_test_stuck_in_c"),
        "the Python stack (with the app's function) is not in the log:\n{log}"
    );
    // The web server should still get an error page when the worker can write one.
    match r {
        Ok(r) if r.completed() => assert_gateway_timeout(&r, took, &log),
        Ok(r) => panic!(
            "connection closed without END_REQUEST (stdout {:?}) although the \
             watchdog could answer 504:\n{log}",
            String::from_utf8_lossy(&r.stdout)
        ),
        Err(e) => panic!("read error {e} instead of a 504:\n{log}"),
    }
    let next = assert_serves_again(&p, &addr);
    assert_ne!(next, worker);
    p.wait_log(&format!("child {next} started"), Duration::from_secs(5));
}

#[test]
fn timeout_is_a_504_page_through_nginx() {
    let env = TestEnv::new();
    let (p, _addr) = start(&env, "sleep:application", 1, &[]);
    let nginx = Nginx::builder(&format!("unix:{}", env.file("www.sock").display()))
        .location("fastcgi_read_timeout 120s;")
        .start(&env);
    let t0 = Instant::now();
    let (status, body) = nginx.get("/via-nginx?s=30");
    let took = t0.elapsed();
    assert_eq!(
        status,
        504,
        "body {:?}\nnginx: {}\npyfpm:\n{}",
        String::from_utf8_lossy(&body),
        nginx.error_log(),
        p.log_text()
    );
    assert!(took < TIMEOUT + SLACK, "{took:?}");
    assert!(
        String::from_utf8_lossy(&body).contains("timed out"),
        "pyfpm's own short page should reach the client, got {:?}",
        String::from_utf8_lossy(&body)
    );
    let nginx_log = nginx.error_log();
    assert!(
        !nginx_log.contains("upstream prematurely closed") && !nginx_log.contains("reset by peer"),
        "nginx saw a broken upstream, not a response:\n{nginx_log}"
    );
    let (status, _) = nginx.get("/after?s=0");
    assert_eq!(status, 200);
}

#[test]
fn slow_request_is_logged_to_the_slowlog_and_still_succeeds() {
    let env = TestEnv::new();
    let slowlog = env.file("slow.log");
    let (p, addr) = start(
        &env,
        "sleep:application",
        1,
        &[
            "request_slowlog_timeout: 1s",
            &format!("slowlog: {}", common::yq(&slowlog.display().to_string())),
        ],
    );
    // Under the 2 s terminate timeout, over the 1 s slow-log timeout.
    let (r, _) = timed(&addr, "/slow-path?s=1.6");
    let cgi = fcgi::CgiResponse::parse(&r.stdout).expect("CGI response");
    assert_eq!(cgi.status, 200, "the slow request must not be stopped");
    let worker = json_pid(&serde_json::from_slice(&cgi.body).unwrap());
    let mut text = String::new();
    assert!(
        wait_until(Duration::from_secs(10), || {
            text = std::fs::read_to_string(&slowlog).unwrap_or_default();
            text.contains("pyfpm_test_sleeper")
        }),
        "no slow-log entry with the app's function in {}: {text:?}\nlog:\n{}",
        slowlog.display(),
        p.log_text()
    );
    assert!(text.contains("[pool www]"), "pool missing: {text}");
    assert!(
        text.contains(&format!("pid {worker}")),
        "pid missing: {text}"
    );
    assert!(text.contains("GET"), "method missing: {text}");
    assert!(text.contains("/slow-path"), "URI missing: {text}");
}
