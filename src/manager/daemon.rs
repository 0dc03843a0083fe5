//! Going to the background, and the pid file.
//!
//! Daemonizing happens before any thread or tokio runtime exists (a fork after threads
//! start can deadlock the child): fork, setsid, fork. The original process (the
//! launcher) waits up to [`HANDSHAKE_TIMEOUT`] on a pipe for the daemon to report
//! `started` or `failed: reason`, and exits 0 or 70 accordingly, so `pyfpm -D` in an init
//! script fails visibly when the daemon cannot start (PHP-FPM's handshake).

use crate::exit_code;
use nix::unistd::{ForkResult, Pid, fork, setsid};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

/// How long the launcher waits for the daemon's report.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The daemon's end of the start-up handshake.
#[derive(Debug)]
pub struct Notifier {
    pipe: Option<std::fs::File>,
}

impl Notifier {
    /// Tell the launcher that start-up succeeded.
    pub fn started(&mut self) {
        self.send("started\n");
    }

    /// Tell the launcher that start-up failed, and why.
    pub fn failed(&mut self, reason: &str) {
        let one_line = reason.replace('\n', " ");
        self.send(&format!("failed: {one_line}\n"));
    }

    fn send(&mut self, msg: &str) {
        if let Some(mut pipe) = self.pipe.take() {
            let _ = pipe.write_all(msg.as_bytes());
        }
    }
}

/// Which side of the fork we are on.
#[derive(Debug)]
pub enum Daemonized {
    /// The launcher: exit with this status.
    Launcher(i32),
    /// The daemon: carry on, and report through the notifier.
    Daemon(Notifier),
}

/// Fork into the background. Call only while the process is single-threaded.
pub fn daemonize() -> io::Result<Daemonized> {
    let (read_end, write_end) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    // SAFETY: single-threaded at this point (no runtime, no threads yet); the child
    // only makes system calls until it returns to ordinary code.
    match unsafe { fork() }? {
        ForkResult::Parent { child } => {
            drop(write_end);
            let code = wait_for_report(read_end, HANDSHAKE_TIMEOUT);
            // Reap the intermediate child (it exits right after its own fork).
            let _ = nix::sys::wait::waitpid(child, None);
            Ok(Daemonized::Launcher(code))
        }
        ForkResult::Child => {
            drop(read_end);
            let _ = setsid();
            // SAFETY: as above; the intermediate process only forks and _exits.
            match unsafe { fork() } {
                Ok(ForkResult::Parent { .. }) => unsafe { libc::_exit(0) },
                Ok(ForkResult::Child) => {}
                Err(_) => unsafe { libc::_exit(exit_code::SOFTWARE) },
            }
            detach_stdio()?;
            Ok(Daemonized::Daemon(Notifier {
                pipe: Some(std::fs::File::from(write_end)),
            }))
        }
    }
}

/// Point stdin, stdout and stderr at /dev/null: the daemon logs to `error_log` only, and
/// must not keep the launcher's terminal or pipes open.
fn detach_stdio() -> io::Result<()> {
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    for target in 0..=2 {
        // SAFETY: dup2 onto the standard descriptors, which stay open and are never owned
        // by anything else in this process.
        if unsafe { libc::dup2(null.as_raw_fd(), target) } == -1 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The launcher's side: wait for one line from the daemon and turn it into an exit status.
fn wait_for_report(pipe: OwnedFd, timeout: Duration) -> i32 {
    let deadline = Instant::now() + timeout;
    let mut file = std::fs::File::from(pipe);
    let mut got = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            eprintln!(
                "pyfpm: the daemon did not report within {}s; see the error log",
                timeout.as_secs()
            );
            return exit_code::SOFTWARE;
        }
        let mut fds = [nix::poll::PollFd::new(
            file.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
        match nix::poll::poll(&mut fds, ms) {
            Ok(0) | Err(nix::Error::EINTR) => continue,
            Ok(_) => {}
            Err(e) => {
                eprintln!("pyfpm: waiting for the daemon: {e}");
                return exit_code::SOFTWARE;
            }
        }
        let mut buf = [0u8; 512];
        match file.read(&mut buf) {
            Ok(0) => {
                eprintln!("pyfpm: the daemon exited during start-up; see the error log");
                return exit_code::SOFTWARE;
            }
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                eprintln!("pyfpm: waiting for the daemon: {e}");
                return exit_code::SOFTWARE;
            }
        }
        if let Some(end) = got.iter().position(|&b| b == b'\n') {
            let line = String::from_utf8_lossy(&got[..end]);
            return match line.strip_prefix("failed: ") {
                None if line == "started" => exit_code::OK,
                Some(reason) => {
                    eprintln!("pyfpm: failed to start: {reason}");
                    exit_code::SOFTWARE
                }
                None => {
                    eprintln!("pyfpm: unexpected report from the daemon: {line}");
                    exit_code::SOFTWARE
                }
            };
        }
    }
}

/// Why the pid file stops start-up.
#[derive(Debug, thiserror::Error)]
pub enum PidFileError {
    /// Another instance is alive.
    #[error("pyfpm already running with pid {pid} (pid file {path})")]
    Running {
        /// Its pid.
        pid: i32,
        /// The pid file.
        path: String,
    },
    /// The pid file cannot be written.
    #[error("cannot write the pid file {path}: {source}")]
    Write {
        /// The pid file.
        path: String,
        /// The I/O error.
        source: io::Error,
    },
}

/// The pid a pid file names, if it names a live process other than this one.
pub fn live_pid(path: &Path) -> Option<i32> {
    let text = std::fs::read_to_string(path).ok()?;
    let pid: i32 = text.trim().parse().ok().filter(|&p| p > 0)?;
    if pid == std::process::id() as i32 {
        return None;
    }
    match nix::sys::signal::kill(Pid::from_raw(pid), None) {
        // EPERM: alive, owned by someone else.
        Ok(()) | Err(nix::Error::EPERM) => Some(pid),
        Err(_) => None,
    }
}

/// Refuse to start when the pid file names a live process.
pub fn check_pid_file(path: &Path) -> Result<(), PidFileError> {
    match live_pid(path) {
        Some(pid) => Err(PidFileError::Running {
            pid,
            path: path.display().to_string(),
        }),
        None => Ok(()),
    }
}

/// Write this process's pid to `path` (replacing a stale file).
pub fn write_pid_file(path: &Path) -> Result<(), PidFileError> {
    let err = |source| PidFileError::Write {
        path: path.display().to_string(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    std::fs::write(path, format!("{}\n", std::process::id())).map_err(err)
}

/// Remove the pid file if it still names this process.
pub fn remove_pid_file(path: &Path) {
    let ours = std::fs::read_to_string(path)
        .ok()
        .and_then(|t| t.trim().parse::<u32>().ok())
        == Some(std::process::id());
    if ours {
        let _ = std::fs::remove_file(path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid_file_liveness() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/pyfpm.pid");
        assert_eq!(live_pid(&path), None, "missing file");
        check_pid_file(&path).unwrap();

        // A live process that is not us.
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, format!("{}\n", child.id())).unwrap();
        assert_eq!(live_pid(&path), Some(child.id() as i32));
        let err = check_pid_file(&path).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "pyfpm already running with pid {} (pid file {})",
                child.id(),
                path.display()
            )
        );
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(live_pid(&path), None, "a dead pid is stale");

        std::fs::write(&path, "garbage").unwrap();
        assert_eq!(live_pid(&path), None);

        write_pid_file(&path).unwrap();
        assert_eq!(live_pid(&path), None, "our own pid is not another instance");
        remove_pid_file(&path);
        assert!(!path.exists());
    }

    #[test]
    fn a_foreign_pid_file_is_not_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("other.pid");
        std::fs::write(&path, "1\n").unwrap();
        remove_pid_file(&path);
        assert!(path.exists());
    }

    #[test]
    fn launcher_reads_the_daemon_report() {
        let run = |msg: Option<&[u8]>| {
            let (r, w) = nix::unistd::pipe().unwrap();
            let mut w = std::fs::File::from(w);
            if let Some(m) = msg {
                w.write_all(m).unwrap();
            }
            drop(w);
            wait_for_report(r, Duration::from_secs(2))
        };
        assert_eq!(run(Some(b"started\n")), exit_code::OK);
        assert_eq!(run(Some(b"failed: bind\n")), exit_code::SOFTWARE);
        assert_eq!(run(None), exit_code::SOFTWARE);
    }

    #[test]
    fn launcher_gives_up_after_the_timeout() {
        let (r, w) = nix::unistd::pipe().unwrap();
        let t = Instant::now();
        assert_eq!(
            wait_for_report(r, Duration::from_millis(200)),
            exit_code::SOFTWARE
        );
        assert!(t.elapsed() >= Duration::from_millis(200));
        drop(w);
    }
}
