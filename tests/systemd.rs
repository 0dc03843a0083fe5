//! systemd integration of the real `pyfpm` binary: `Type=notify` messages on a datagram
//! socket the test plays systemd with, and socket activation with listening sockets the
//! test binds and passes at fds 3.. the way systemd does.

mod common;

use common::fcgi::{self, Addr, CgiResponseExt as _, Request};
use common::notify::NotifySocket;
use common::{Pool, Pyfpm, TestEnv, wait_until};
use nix::sys::signal::Signal;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// The value of `KEY=` in a message.
fn field<'a>(message: &'a str, key: &str) -> Option<&'a str> {
    message
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
}

/// `(active, idle, requests)` from a `Processes active: A, idle: I, Requests: R` status.
fn parse_status(status: &str) -> Option<(u64, u64, u64)> {
    let rest = status.strip_prefix("Processes active: ")?;
    let (active, rest) = rest.split_once(", idle: ")?;
    let (idle, requests) = rest.split_once(", Requests: ")?;
    Some((
        active.parse().ok()?,
        idle.parse().ok()?,
        requests.parse().ok()?,
    ))
}

/// A module whose import takes a while and leaves a marker file once done, so the test
/// knows the app had loaded when READY=1 arrived without measuring time.
const SLOW_APP: &str = r#"
import os, time
time.sleep(2)
open(os.path.join(os.environ["PYFPM_TEST_DIR"], "slow-imported"), "w").close()

def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"slow"]
"#;

#[test]
fn notify_ready_after_every_pool_serves_then_status_lines_and_stopping() {
    let env = TestEnv::new();
    std::fs::write(env.file("slowready.py"), SLOW_APP).unwrap();
    let notify = NotifySocket::bind(&env.file("notify"));
    let www_sock = env.file("www.sock");
    let slow_sock = env.file("slow.sock");
    let www = Pool::new("www", "echo:application")
        .listen(&www_sock.display().to_string())
        .children(2)
        // The workers must not see systemd's variables even with the environment kept.
        .with("clear_env: false");
    let slow = Pool::new("slow", "slowready:application")
        .listen(&slow_sock.display().to_string())
        .with(&format!(
            "env: {{PYFPM_TEST_DIR: {dir}, PYTHONPATH: {dir}}}",
            dir = common::yq(&env.path().display().to_string())
        ));
    let config = env.write_config(&["systemd_interval: 1s"], &[www, slow]);
    let notify_path = env.file("notify").display().to_string();
    let mut p = env.spawn_env(
        &config,
        "pyfpm.log",
        &["-F"],
        &[("NOTIFY_SOCKET", notify_path.as_str())],
    );

    let ready_at = notify.wait_for("READY=1", &mut p);
    assert!(
        env.file("slow-imported").exists(),
        "READY=1 came before the slow pool's app had loaded"
    );
    let ready = notify.all()[ready_at].clone();
    assert_eq!(
        field(&ready, "MAINPID"),
        Some(p.child.id().to_string().as_str()),
        "{ready:?}"
    );
    assert_eq!(field(&ready, "STATUS"), Some("Ready to handle connections"));
    // Ready means serving, on every pool.
    let www_addr = Addr::Unix(www_sock);
    let slow_addr = Addr::Unix(slow_sock);
    common::probe(&www_addr, Duration::from_secs(10)).expect("www serves at READY=1");
    common::probe(&slow_addr, Duration::from_secs(10)).expect("slow serves at READY=1");
    let seen = fcgi::request(
        &www_addr,
        &Request::get("/?osenv=NOTIFY_SOCKET&osenv=LISTEN_FDS&osenv=WATCHDOG_USEC"),
    )
    .json();
    for name in ["NOTIFY_SOCKET", "LISTEN_FDS", "WATCHDOG_USEC"] {
        assert!(
            seen["osenv"][name].is_null(),
            "a worker saw {name}: {}",
            seen["osenv"]
        );
    }

    // STATUS lines every second: the 3 workers, all idle between requests, and the
    // requests served (3 here, 1 above, and the 2 probes; the counts lag by up to a
    // maintenance tick).
    for _ in 0..3 {
        fcgi::request(&www_addr, &Request::get("/"));
    }
    let mut last = None;
    let counted = wait_until(Duration::from_secs(20), || {
        last = notify
            .all()
            .iter()
            .skip(ready_at + 1)
            .filter_map(|m| field(m, "STATUS").and_then(parse_status))
            .next_back();
        last == Some((0, 3, 6))
    });
    assert!(
        counted,
        "no STATUS line with 0 active, 3 idle, 6 requests (last parsed: {last:?}); \
         messages: {:?}",
        notify.all()
    );
    // A worker inside a request is active.
    let busy_addr = www_addr.clone();
    let busy = std::thread::spawn(move || fcgi::request(&busy_addr, &Request::get("/?sleep=4")));
    let mut seen = None;
    let active = wait_until(Duration::from_secs(20), || {
        seen = notify
            .all()
            .iter()
            .filter_map(|m| field(m, "STATUS").and_then(parse_status))
            .next_back();
        matches!(seen, Some((1, 2, _)))
    });
    assert!(
        active,
        "no STATUS line with 1 active, 2 idle during a slow request (last: {seen:?})"
    );
    busy.join().expect("the slow request completes");
    let status_lines = notify
        .all()
        .iter()
        .filter(|m| field(m, "STATUS").is_some_and(|s| s.starts_with("Processes active: ")))
        .count();
    assert!(status_lines >= 1);
    assert!(
        !notify.all().iter().any(|m| m.contains("STOPPING=1")),
        "STOPPING=1 before any stop"
    );

    p.signal(Signal::SIGTERM);
    notify.wait_for("STOPPING=1", &mut p);
    let status = p.wait_exit(Duration::from_secs(20)).expect("pyfpm exits");
    assert!(status.success(), "{status}; log:\n{}", p.log_text());
}

#[test]
fn watchdog_keepalives_come_at_half_the_interval() {
    let env = TestEnv::new();
    let notify = NotifySocket::bind(&env.file("notify"));
    let sock = env.file("www.sock");
    let pool = Pool::new("www", "echo:application").listen(&sock.display().to_string());
    // STATUS lines off: only the watchdog asks for periodic messages.
    let config = env.write_config(&["systemd_interval: 0"], &[pool]);
    let notify_path = env.file("notify").display().to_string();
    let mut p = env.spawn_env(
        &config,
        "pyfpm.log",
        &["-F"],
        &[
            ("NOTIFY_SOCKET", notify_path.as_str()),
            ("WATCHDOG_USEC", "1000000"),
        ],
    );
    notify.wait_for("READY=1", &mut p);
    let pings = || {
        notify
            .all()
            .iter()
            .filter(|m| m.lines().any(|l| l == "WATCHDOG=1"))
            .count()
    };
    assert!(
        wait_until(Duration::from_secs(20), || pings() >= 3),
        "fewer than 3 WATCHDOG=1 with WATCHDOG_USEC=1s: {:?}",
        notify.all()
    );
    assert!(
        !notify
            .all()
            .iter()
            .any(|m| field(m, "STATUS").is_some_and(|s| s.starts_with("Processes"))),
        "systemd_interval: 0 must turn the STATUS lines off: {:?}",
        notify.all()
    );
}

/// Duplicate `fd` above the numbers a child will get, close-on-exec, so placing it at
/// 3.. in the child can never overwrite another source or be a dup2 onto itself.
fn high_dup(fd: RawFd) -> OwnedFd {
    // SAFETY: F_DUPFD_CLOEXEC returns a new descriptor we then own.
    let new = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 100) };
    assert!(new >= 100, "F_DUPFD_CLOEXEC failed");
    // SAFETY: `new` is a fresh descriptor nothing else owns.
    unsafe { std::os::fd::FromRawFd::from_raw_fd(new) }
}

/// Start pyfpm the way systemd does for a socket-activated service: `sockets` at fds 3..,
/// `LISTEN_FDS`/`LISTEN_FDNAMES`, and `LISTEN_PID` naming pyfpm itself (a shell sets it
/// to its own pid and execs pyfpm, which keeps that pid).
fn spawn_activated(env: &TestEnv, config: &Path, sockets: &[(RawFd, &str)]) -> Pyfpm {
    let log = env.file("pyfpm.log");
    let out = std::fs::File::create(&log).unwrap();
    let sources: Vec<OwnedFd> = sockets.iter().map(|&(fd, _)| high_dup(fd)).collect();
    let raw: Vec<RawFd> = sources.iter().map(|fd| fd.as_raw_fd()).collect();
    let names: Vec<&str> = sockets.iter().map(|&(_, name)| name).collect();
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(r#"LISTEN_PID=$$ exec "$0" "$@""#)
        .arg(common::pyfpm_bin())
        .args(["-F", "-c"])
        .arg(config)
        .env("LISTEN_FDS", sockets.len().to_string())
        .env("LISTEN_FDNAMES", names.join(":"))
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out);
    // SAFETY: only dup2 (async-signal-safe) between fork and exec, on descriptors opened
    // before the fork; the targets are below 100 and the sources at or above it.
    unsafe {
        cmd.pre_exec(move || {
            for (i, &src) in raw.iter().enumerate() {
                // dup2 clears close-on-exec on the new descriptor.
                if libc::dup2(src, 3 + i as RawFd) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let child = cmd.spawn().expect("spawn /bin/sh -> pyfpm");
    drop(sources);
    Pyfpm {
        child,
        log,
        exited: None,
    }
}

#[test]
fn socket_activation_serves_on_inherited_sockets_and_leaves_their_files() {
    let env = TestEnv::new();
    let unix_path = env.file("www.sock");
    let unix = UnixListener::bind(&unix_path).unwrap();
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let tcp_addr = tcp.local_addr().unwrap();
    // Passed but named by no pool: pyfpm must warn and close it.
    let stray_path = env.file("stray.sock");
    let stray = UnixListener::bind(&stray_path).unwrap();
    // Configured but not passed: bound by pyfpm as usual, and removed by it on exit.
    let own_path = env.file("own.sock");

    let www = Pool::new("www", "echo:application")
        .listen(&unix_path.display().to_string())
        .listen(&own_path.display().to_string())
        .with("clear_env: false");
    let api = Pool::new("api", "echo:application").listen(&tcp_addr.to_string());
    let config = env.write_config(&[], &[www, api]);
    let mut p = spawn_activated(
        &env,
        &config,
        &[
            (unix.as_raw_fd(), "www.socket"),
            (tcp.as_raw_fd(), "api.socket"),
            (stray.as_raw_fd(), "stray.socket"),
        ],
    );
    // Our copies stay open, as systemd's do: the files and ports remain systemd's.
    let unix_addr = Addr::Unix(unix_path.clone());
    let tcp_addr = Addr::Tcp(tcp_addr);
    p.wait_serving(&unix_addr);
    p.wait_serving(&tcp_addr);
    p.wait_serving(&Addr::Unix(own_path.clone()));

    let log = p.log_text();
    for expected in [
        "[pool www] using the socket systemd passed (fd 3 (www.socket))",
        "[pool api] using the socket systemd passed (fd 4 (api.socket))",
        "systemd passed fd 5 (stray.socket) listening on unix:",
    ] {
        assert!(log.contains(expected), "log lacks {expected:?}:\n{log}");
    }
    let www = fcgi::request(
        &unix_addr,
        &Request::get("/?osenv=LISTEN_FDS&osenv=LISTEN_PID"),
    )
    .json();
    assert!(www["osenv"]["LISTEN_FDS"].is_null(), "{}", www["osenv"]);
    assert!(www["osenv"]["LISTEN_PID"].is_null(), "{}", www["osenv"]);
    let api = fcgi::request(&tcp_addr, &Request::get("/")).json();
    assert!(api["pid"].as_i64().is_some());
    // The stray socket was closed by pyfpm; ours is the only copy left.
    drop(stray);
    assert!(
        std::os::unix::net::UnixStream::connect(&stray_path).is_err(),
        "nobody may listen on the stray socket any more"
    );

    p.signal(Signal::SIGTERM);
    let status = p.wait_exit(Duration::from_secs(20)).expect("pyfpm exits");
    assert!(status.success(), "{status}; log:\n{}", p.log_text());
    assert!(
        unix_path.exists(),
        "pyfpm removed the socket file systemd owns; log:\n{}",
        p.log_text()
    );
    assert!(
        !own_path.exists(),
        "pyfpm left the socket file it created itself"
    );
    // And the inherited socket still works for whoever holds it (the next activation).
    drop(unix);
}
