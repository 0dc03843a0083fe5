//! A `preload` pool's zygote, seen from the manager.
//!
//! The zygote is the pool's interpreter started like a worker (same identity, sockets,
//! environment and parent-death signal) but told, by a fork channel in its spec, to
//! import the app and then fork workers on request (protocol: [`pyfpm_ipc::zygote`]).
//! There is one per pool generation: a reload or an emergency restart starts a new one,
//! so new code is imported, and an older zygote stays until its last worker is gone,
//! because only it can collect their exit statuses.
//!
//! Asking for a worker is a blocking request and reply on the fork channel, bounded
//! by [`FORK_TIMEOUT`]: the zygote answers as soon as `fork` returns in it, so the
//! manager's loop waits about as long as the fork itself. The zygote reports each exit
//! on its control socket ([`Reports`]); a pidfd per worker covers a zygote that dies
//! first, so a worker's end is always noticed.

use super::pool::Exit;
use super::spawn::{ExitSource, Output, PoolSpawner, Spawned, control_socketpair, manager_end};
use nix::sys::socket::{AddressFamily, SockFlag, SockType, setsockopt, socketpair, sockopt};
use nix::sys::time::TimeVal;
use pyfpm_ipc::zygote::{self, ForkRequest, Reply, WorkerFds};
use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::unix::AsyncFd;
use tokio::sync::oneshot;

/// Longest wait for the zygote's answer to a fork request (or for room to ask).
pub const FORK_TIMEOUT: Duration = Duration::from_secs(5);

/// How long after a forked worker's pidfd says it is gone the zygote's exit report may
/// take to arrive.
const REPORT_GRACE: Duration = Duration::from_millis(500);

/// A running zygote.
#[derive(Debug)]
pub struct Zygote {
    /// Its pid.
    pub pid: i32,
    /// The pool generation it imported the app for; its workers belong to it.
    pub generation: u64,
    /// It said "ready": the app is imported and it forks on request.
    pub ready: bool,
    /// When it was started.
    pub started: std::time::Instant,
    /// The manager's end of the fork channel (blocking, with [`FORK_TIMEOUT`]).
    /// Closing it tells the zygote to exit.
    channel: OwnedFd,
    /// Exit statuses it reported, for its workers' monitors.
    reports: Reports,
}

impl Zygote {
    /// Start the pool's zygote for `generation`. The returned [`Spawned`] is the
    /// zygote process itself, to be monitored like a worker (its control socket
    /// carries "ready" and the exit reports, see [`Reports`]).
    pub fn start(spawner: &PoolSpawner<'_>, generation: u64) -> io::Result<(Zygote, Spawned)> {
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )?;
        let timeout = TimeVal::new(FORK_TIMEOUT.as_secs() as _, 0);
        setsockopt(&ours, sockopt::ReceiveTimeout, &timeout)?;
        setsockopt(&ours, sockopt::SendTimeout, &timeout)?;
        let spawned = spawner.spawn_zygote(theirs.as_raw_fd())?;
        drop(theirs); // the zygote has its copy; ours must see its end of file
        Ok((
            Zygote {
                pid: spawned.pid,
                generation,
                ready: false,
                started: std::time::Instant::now(),
                channel: ours,
                reports: Reports::default(),
            },
            spawned,
        ))
    }

    /// Where the zygote's exit reports go (for the task reading its control socket).
    pub fn reports(&self) -> Reports {
        self.reports.clone()
    }

    /// Have the zygote fork a worker for `slot`. Call inside the runtime.
    pub fn fork(&self, slot: u32, max_requests: u64) -> Result<Spawned, ForkError> {
        let (control, worker_control) = control_socketpair()?;
        let (stdout, stdout_w) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(io::Error::from)?;
        let (stderr, stderr_w) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(io::Error::from)?;
        let request = ForkRequest { slot, max_requests };
        let fds = WorkerFds {
            control: worker_control.as_raw_fd(),
            stdout: stdout_w.as_raw_fd(),
            stderr: stderr_w.as_raw_fd(),
        };
        let channel = self.channel.as_raw_fd();
        zygote::send_request(channel, request, fds).map_err(|e| {
            ForkError::Broken(format!("cannot ask zygote {} for a worker: {e}", self.pid))
        })?;
        // The worker has its copies: ours must go, or end of file would never come.
        drop((worker_control, stdout_w, stderr_w));
        let pid = match zygote::receive_reply(channel) {
            Ok(Some(Reply::Forked(pid))) => pid,
            Ok(Some(Reply::Failed(why))) => {
                return Err(ForkError::Refused(format!("zygote {}: {why}", self.pid)));
            }
            Ok(None) => {
                return Err(ForkError::Broken(format!(
                    "zygote {} closed its fork channel",
                    self.pid
                )));
            }
            Err(nix::errno::Errno::EAGAIN) => {
                return Err(ForkError::Broken(format!(
                    "zygote {} did not answer within {}s",
                    self.pid,
                    FORK_TIMEOUT.as_secs()
                )));
            }
            Err(e) => {
                return Err(ForkError::Broken(format!(
                    "zygote {}: fork channel: {e}",
                    self.pid
                )));
            }
        };
        // The zygote reaps only after it has answered, so the pid is still this
        // worker's unless it has exited and been reaped already (then the report says
        // so, and no pidfd is needed).
        let pidfd = zygote::pidfd_open(pid).ok().and_then(|fd| {
            // SAFETY: the AsyncFd owns the pidfd; it is closed only when it is dropped.
            unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }.ok()
        });
        let exit = ForkedExit {
            pidfd,
            report: self.reports.expect(pid),
        };
        let output = |fd: OwnedFd| -> io::Result<Option<Output>> {
            let pipe = tokio::net::unix::pipe::Receiver::from_owned_fd(fd)?;
            Ok(Some(Box::pin(pipe) as Output))
        };
        Ok(Spawned {
            pid,
            exit: ExitSource::Forked(exit),
            stdout: output(stdout)?,
            stderr: output(stderr)?,
            control: manager_end(control)?,
        })
    }
}

/// Why a zygote gave no worker.
#[derive(Debug, thiserror::Error)]
pub enum ForkError {
    /// It answered that it could not fork (os.fork() failed: a process limit, memory);
    /// it is otherwise fine.
    #[error("{0}")]
    Refused(String),
    /// The request or the answer was lost, or came late: the zygote is stuck or gone and
    /// must be replaced.
    #[error("{0}")]
    Broken(String),
    /// Setting up the worker's sockets and pipes here failed.
    #[error("{0}")]
    Local(#[from] io::Error),
}

/// The exit statuses a zygote reported on its control socket, for the monitors of
/// the workers it forked. Cheap to clone (shared).
#[derive(Clone, Debug, Default)]
pub struct Reports(Arc<Mutex<ReportsInner>>);

#[derive(Debug, Default)]
struct ReportsInner {
    /// Monitors waiting for a pid's report.
    waiting: HashMap<i32, oneshot::Sender<Exit>>,
    /// Reports that came before anyone waited for them.
    early: HashMap<i32, Exit>,
    /// The zygote's control socket is closed: no more reports.
    closed: bool,
}

impl Reports {
    /// A receiver for `pid`'s report (closed at once if none can come any more).
    fn expect(&self, pid: i32) -> oneshot::Receiver<Exit> {
        let (tx, rx) = oneshot::channel();
        let mut inner = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(exit) = inner.early.remove(&pid) {
            let _ = tx.send(exit);
        } else if !inner.closed {
            inner.waiting.insert(pid, tx);
        }
        rx
    }

    /// The zygote reported that `pid` ended with `exit`.
    pub fn deliver(&self, pid: i32, exit: Exit) {
        let mut inner = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match inner.waiting.remove(&pid) {
            Some(tx) => {
                let _ = tx.send(exit);
            }
            None => {
                inner.early.insert(pid, exit);
            }
        }
    }

    /// The zygote is gone: every waiting monitor falls back on its pidfd.
    pub fn close(&self) {
        let mut inner = self.0.lock().unwrap_or_else(|e| e.into_inner());
        inner.closed = true;
        inner.waiting.clear();
        inner.early.clear();
    }
}

/// How a forked worker's end is learnt: the zygote's report, or, when the zygote
/// died first, the worker's pidfd becoming readable (status unknown).
#[derive(Debug)]
pub struct ForkedExit {
    /// Readable once the worker has exited (`None`: it was gone before it was opened).
    pidfd: Option<AsyncFd<OwnedFd>>,
    /// The zygote's report.
    report: oneshot::Receiver<Exit>,
}

impl ForkedExit {
    /// Wait for the worker to end.
    pub async fn wait(self) -> Exit {
        let ForkedExit { pidfd, mut report } = self;
        let Some(pidfd) = pidfd else {
            return report.await.unwrap_or(Exit::Unknown);
        };
        tokio::select! {
            got = &mut report => {
                if let Ok(exit) = got {
                    return exit;
                }
                // The zygote is gone; the worker may still be serving.
                let _ = pidfd.readable().await;
                Exit::Unknown
            }
            _ = pidfd.readable() => {
                // Gone; the zygote's report is on its way (it reaps at once).
                match tokio::time::timeout(REPORT_GRACE, report).await {
                    Ok(Ok(exit)) => exit,
                    _ => Exit::Unknown,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_reaches_its_monitor_whether_it_comes_before_or_after() {
        let reports = Reports::default();
        let mut late = reports.expect(10);
        reports.deliver(10, Exit::Code(3));
        assert_eq!(late.try_recv().unwrap(), Exit::Code(3));
        reports.deliver(11, Exit::Code(0));
        let mut early = reports.expect(11);
        assert_eq!(early.try_recv().unwrap(), Exit::Code(0));
        let mut orphan = reports.expect(12);
        reports.close();
        assert!(orphan.try_recv().is_err(), "closed: no report will come");
        let mut after = reports.expect(13);
        assert!(matches!(
            after.try_recv(),
            Err(oneshot::error::TryRecvError::Closed)
        ));
    }
}
