//! The zygote of a `preload` pool: import the app once, then fork a worker for each
//! request from the manager (protocol in [`pyfpm_ipc::zygote`]).
//!
//! Forking goes through Python's own `os.fork()`, so CPython's fork hooks run: the
//! child's interpreter state is reinitialised (`PyOS_AfterFork_Child`), `random` is
//! reseeded, and handlers the app registered with `os.register_at_fork` run. A raw
//! `fork(2)` would skip them (every child would draw the same random numbers).
//! `gc.freeze()` runs once before the first fork, so the collector never writes to
//! the app's objects and their pages stay shared.
//!
//! The zygote is single-threaded; it waits in `poll(2)`, with the GIL released, on the
//! fork channel and on a pidfd per child. Only a parent can collect an exit status, so
//! the zygote reaps its children and reports each exit on its control socket. A forked
//! worker gets no parent-death signal: if the zygote dies, its workers keep serving
//! (the manager watches them through pidfds), and they notice the manager's death by
//! end of file on their own control socket, like any worker.

use crate::boot::BootError;
use crate::log::{Level, log};
use pyfpm_ipc::zygote::{self, ExitStatus, Incoming, Reply};
use pyfpm_ipc::{WorkerSpec, exit};
use pyo3::prelude::*;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};

/// A worker this zygote forked and has not reaped yet.
struct Child {
    pid: i32,
    /// Readable once the child has exited.
    pidfd: OwnedFd,
}

/// Serve fork requests until the manager closes the channel. Returns only in a forked
/// child, with that worker's spec and the app; in the zygote it ends with an error
/// carrying the exit code (`exit::OK` once the manager is done with it).
pub fn run(
    py: Python<'_>,
    spec: WorkerSpec,
    app: Py<PyAny>,
) -> Result<(WorkerSpec, Py<PyAny>), BootError> {
    // Freeze what the import built: the collector then never touches (writes to) those
    // objects, in the zygote or in the workers, and their pages stay shared.
    if let Err(e) = py.import("gc").and_then(|gc| gc.call_method0("freeze")) {
        log(Level::Warning, format!("zygote: gc.freeze() failed: {e}"));
    }
    // SAFETY: the spec names this process's control socket; it is owned here alone.
    let control = unsafe { OwnedFd::from_raw_fd(spec.control_fd) };
    // SAFETY: likewise the fork channel.
    let channel = unsafe { OwnedFd::from_raw_fd(spec.zygote_fd) };
    let mut control = std::fs::File::from(control);
    if let Err(e) = control.write_all(format!("{}\n", pyfpm_ipc::control::READY).as_bytes()) {
        return Err(gone(e));
    }
    log(
        Level::Debug,
        format!("zygote of pool {}: app {} imported", spec.pool, spec.app),
    );
    let mut children: Vec<Child> = Vec::new();
    let mut warned_threads = false;
    loop {
        let mut fds: Vec<RawFd> = vec![channel.as_raw_fd()];
        fds.extend(children.iter().map(|c| c.pidfd.as_raw_fd()));
        let ready = match py.detach(|| crate::parking::poll_readable(&fds, -1)) {
            Ok(ready) => ready,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {
                if let Err(e) = py.check_signals() {
                    log(
                        Level::Notice,
                        format!("zygote of pool {}: stopping ({e})", spec.pool),
                    );
                    return Err(BootError { code: exit::OK });
                }
                continue;
            }
            Err(e) => {
                return Err(BootError::log(
                    exit::BOOT_ERROR,
                    format!("zygote: poll failed: {e}"),
                ));
            }
        };
        // Reap first: a pid reported here is never reused before the manager hears.
        let mut index = 0;
        children.retain(|child| {
            index += 1;
            if !ready[index] {
                return true;
            }
            let Some(status) = reap(child.pid) else {
                return true;
            };
            if let Err(e) = control.write_all(zygote::exit_line(child.pid, status).as_bytes()) {
                log(
                    Level::Warning,
                    format!("zygote: cannot report the exit of {}: {e}", child.pid),
                );
            }
            false
        });
        if !ready[0] {
            continue;
        }
        let incoming = match zygote::receive_request(channel.as_raw_fd()) {
            Ok(incoming) => incoming,
            Err(nix::errno::Errno::EAGAIN) => continue,
            Err(e) => {
                return Err(BootError::log(
                    exit::BOOT_ERROR,
                    format!("zygote: cannot read the fork channel: {e}"),
                ));
            }
        };
        let (request, fds) = match incoming {
            Incoming::Fork(request, fds) => (request, fds),
            Incoming::Closed => return Err(BootError { code: exit::OK }),
            Incoming::Malformed(text) => {
                log(
                    Level::Warning,
                    format!("zygote: ignoring a malformed fork request {text:?}"),
                );
                continue;
            }
        };
        if !warned_threads {
            warned_threads = warn_about_threads(py);
        }
        // Whatever the app printed at import must not be written twice.
        crate::wsgi::flush_std_streams(py);
        let pid = match py
            .import("os")
            .and_then(|os| os.call_method0("fork"))
            .and_then(|pid| pid.extract::<i32>())
        {
            Ok(pid) => pid,
            Err(e) => {
                let why = format!("os.fork() failed: {e}");
                log(Level::Error, format!("zygote: {why}"));
                reply(&channel, &Reply::Failed(why));
                continue;
            }
        };
        if pid == 0 {
            // The new worker. Its own stdout and stderr replace the zygote's; the fork
            // channel, the zygote's control socket and its siblings' pidfds go.
            drop(children);
            drop(channel);
            drop(control);
            return become_worker(spec, request, fds).map(|spec| (spec, app));
        }
        drop(fds);
        match zygote::pidfd_open(pid) {
            Ok(pidfd) => {
                children.push(Child { pid, pidfd });
                reply(&channel, &Reply::Forked(pid));
            }
            Err(e) => {
                // Without a pidfd the zygote could not tell when to reap it: undo.
                // SAFETY: kill and waitpid on the child just forked.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                    libc::waitpid(pid, std::ptr::null_mut(), 0);
                }
                let why = format!("pidfd_open failed (Linux 5.3 or later is needed): {e}");
                log(Level::Error, format!("zygote: {why}"));
                reply(&channel, &Reply::Failed(why));
            }
        }
    }
}

/// The manager is gone (or broke the control socket): nothing left to fork for.
fn gone(e: std::io::Error) -> BootError {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        BootError { code: exit::OK }
    } else {
        BootError::log(
            exit::BOOT_ERROR,
            format!("zygote: cannot write to the control socket: {e}"),
        )
    }
}

fn reply(channel: &OwnedFd, reply: &Reply) {
    if let Err(e) = zygote::send_reply(channel.as_raw_fd(), reply) {
        log(
            Level::Warning,
            format!("zygote: cannot answer a fork request: {e}"),
        );
    }
}

/// In the forked child: take over the request's fds and build the worker's spec.
fn become_worker(
    spec: WorkerSpec,
    request: zygote::ForkRequest,
    fds: zygote::WorkerFds<OwnedFd>,
) -> Result<WorkerSpec, BootError> {
    for (from, to) in [(&fds.stdout, 1), (&fds.stderr, 2)] {
        // SAFETY: dup2 onto the standard descriptors, which this process owns.
        if unsafe { libc::dup2(from.as_raw_fd(), to) } < 0 {
            return Err(BootError::log(
                exit::BOOT_ERROR,
                format!(
                    "forked worker: cannot take over its output: {}",
                    std::io::Error::last_os_error()
                ),
            ));
        }
    }
    // Its own process group, like a worker the manager starts: a terminal's Ctrl-C
    // reaches only the manager.
    // SAFETY: setpgid on this process.
    unsafe { libc::setpgid(0, 0) };
    Ok(WorkerSpec {
        slot: request.slot,
        max_requests: request.max_requests,
        control_fd: fds.control.into_raw_fd(),
        zygote_fd: -1,
        ..spec
    })
}

/// Collect `pid`'s exit status, if it has exited.
fn reap(pid: i32) -> Option<ExitStatus> {
    let mut status = 0;
    // SAFETY: waitpid on our own child, status written to a local.
    let rc = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
    if rc != pid {
        return None;
    }
    Some(if libc::WIFSIGNALED(status) {
        ExitStatus::Signal {
            signal: libc::WTERMSIG(status),
            core_dumped: libc::WCOREDUMP(status),
        }
    } else {
        ExitStatus::Code(libc::WEXITSTATUS(status))
    })
}

/// Warn (once) when the app started threads at import: only the forking thread
/// exists in a forked child, so locks those threads held stay locked there.
/// Returns whether it warned.
fn warn_about_threads(py: Python<'_>) -> bool {
    let count = py
        .import("threading")
        .and_then(|t| t.call_method0("active_count"))
        .and_then(|n| n.extract::<usize>())
        .unwrap_or(1);
    if count > 1 {
        log(
            Level::Warning,
            format!(
                "zygote: the app started {} thread(s) at import; they do not exist in the \
                 forked workers (start them lazily, or set preload: false)",
                count - 1
            ),
        );
    }
    count > 1
}
