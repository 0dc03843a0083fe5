//! The fork channel between the manager and a pool's zygote (`preload: true`).
//!
//! The zygote is started like a worker, with [`crate::WorkerSpec::zygote_fd`] naming
//! one end of a SOCK_SEQPACKET socketpair. It imports the app once, then forks one
//! worker per request on that socket:
//!
//! - request (manager → zygote): `fork SLOT MAX_REQUESTS`, with three fds attached
//!   (SCM_RIGHTS): the worker's end of its control socketpair, then the write ends of
//!   its stdout and stderr pipes;
//! - reply (zygote → manager): `forked PID`, or `error TEXT` when no worker was made.
//!
//! Only the zygote can wait for its children, so it reports each exit on its own control
//! socket as a line `exited PID code N` or `exited PID signal N` (plus ` core` when a
//! core file was written); see [`exit_line`] and [`parse_exit`].

use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// Largest request or reply.
const MAX_MESSAGE: usize = 1024;

/// What the manager asks the zygote for: a worker in this slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ForkRequest {
    /// The worker's slot (replaces [`crate::WorkerSpec::slot`]).
    pub slot: u32,
    /// Its `pm.max_requests`, jitter applied (replaces
    /// [`crate::WorkerSpec::max_requests`]).
    pub max_requests: u64,
}

/// The fds a new worker gets, in the order they travel.
#[derive(Debug)]
pub struct WorkerFds<T> {
    /// Its end of the control socketpair.
    pub control: T,
    /// Write end of the pipe the manager logs as its stdout.
    pub stdout: T,
    /// Write end of the pipe the manager logs as its stderr.
    pub stderr: T,
}

/// What the zygote found on the fork channel.
#[derive(Debug)]
pub enum Incoming {
    /// A fork request and the new worker's fds.
    Fork(ForkRequest, WorkerFds<OwnedFd>),
    /// The manager closed the channel: the zygote's work is over.
    Closed,
    /// Anything else (dropped, with the fds it carried).
    Malformed(String),
}

/// The zygote's answer to a fork request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// The worker runs with this pid.
    Forked(i32),
    /// No worker was made, and why.
    Failed(String),
}

/// How a worker ended, as its parent (the zygote) saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitStatus {
    /// `exit(code)`.
    Code(i32),
    /// Killed by a signal.
    Signal {
        /// The signal number.
        signal: i32,
        /// Whether a core file was written.
        core_dumped: bool,
    },
}

/// Ask for a worker (blocking until the request is queued).
pub fn send_request(sock: RawFd, req: ForkRequest, fds: WorkerFds<RawFd>) -> nix::Result<()> {
    let text = format!("fork {} {}", req.slot, req.max_requests);
    crate::fdpass::send(
        sock,
        &[text.as_bytes()],
        &[fds.control, fds.stdout, fds.stderr],
        false,
    )
}

/// Read one request (blocking: call when the socket is readable).
pub fn receive_request(sock: RawFd) -> nix::Result<Incoming> {
    let mut buf = [0u8; MAX_MESSAGE];
    let (len, fds) = crate::fdpass::receive(sock, &mut buf, false)?;
    if len == 0 && fds.is_empty() {
        return Ok(Incoming::Closed);
    }
    let text = String::from_utf8_lossy(&buf[..len]).into_owned();
    let parsed = text.strip_prefix("fork ").and_then(|rest| {
        let (slot, max) = rest.split_once(' ')?;
        Some(ForkRequest {
            slot: slot.parse().ok()?,
            max_requests: max.parse().ok()?,
        })
    });
    let mut fds = fds.into_iter();
    Ok(
        match (parsed, fds.next(), fds.next(), fds.next(), fds.next()) {
            (Some(req), Some(control), Some(stdout), Some(stderr), None) => Incoming::Fork(
                req,
                WorkerFds {
                    control,
                    stdout,
                    stderr,
                },
            ),
            _ => Incoming::Malformed(text),
        },
    )
}

/// Answer a request.
pub fn send_reply(sock: RawFd, reply: &Reply) -> nix::Result<()> {
    let text = match reply {
        Reply::Forked(pid) => format!("forked {pid}"),
        Reply::Failed(why) => format!("error {why}"),
    };
    let mut bytes = text.into_bytes();
    bytes.truncate(MAX_MESSAGE);
    crate::fdpass::send(sock, &[&bytes], &[], false)
}

/// Read the answer (blocking; a receive timeout set on the socket ends the wait with
/// `Err(EAGAIN)`). `Ok(None)`: the zygote closed the channel.
pub fn receive_reply(sock: RawFd) -> nix::Result<Option<Reply>> {
    let mut buf = [0u8; MAX_MESSAGE];
    let (len, _fds) = crate::fdpass::receive(sock, &mut buf, false)?;
    if len == 0 {
        return Ok(None);
    }
    let text = String::from_utf8_lossy(&buf[..len]);
    Ok(Some(
        match text.strip_prefix("forked ").and_then(|p| p.parse().ok()) {
            Some(pid) => Reply::Forked(pid),
            None => Reply::Failed(text.strip_prefix("error ").unwrap_or(&text).to_string()),
        },
    ))
}

/// The control line reporting that `pid` ended with `status` (newline included).
pub fn exit_line(pid: i32, status: ExitStatus) -> String {
    match status {
        ExitStatus::Code(code) => format!("{} {pid} code {code}\n", crate::control::EXITED),
        ExitStatus::Signal {
            signal,
            core_dumped,
        } => format!(
            "{} {pid} signal {signal}{}\n",
            crate::control::EXITED,
            if core_dumped { " core" } else { "" }
        ),
    }
}

/// Parse the argument of an [`crate::control::EXITED`] line (what follows the word).
pub fn parse_exit(arg: &str) -> Option<(i32, ExitStatus)> {
    let mut words = arg.split(' ');
    let pid = words.next()?.parse().ok()?;
    let status = match (words.next()?, words.next()?.parse().ok()?, words.next()) {
        ("code", code, None) => ExitStatus::Code(code),
        ("signal", signal, core) => ExitStatus::Signal {
            signal,
            core_dumped: match core {
                None => false,
                Some("core") => true,
                Some(_) => return None,
            },
        },
        _ => return None,
    };
    words.next().is_none().then_some((pid, status))
}

/// A pidfd for `pid` (close-on-exec): readable once the process has exited, whoever
/// its parent is. Linux 5.3 or later.
pub fn pidfd_open(pid: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { nix::libc::syscall(nix::libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just created this fd for us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
    use std::os::fd::AsRawFd;

    fn seqpacket() -> (OwnedFd, OwnedFd) {
        socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .unwrap()
    }

    #[test]
    fn a_request_its_fds_and_the_reply_cross_over() {
        let (manager, zygote) = seqpacket();
        let (a, _a) = seqpacket();
        let (b, _b) = seqpacket();
        let (c, _c) = seqpacket();
        let req = ForkRequest {
            slot: 3,
            max_requests: 500,
        };
        let fds = WorkerFds {
            control: a.as_raw_fd(),
            stdout: b.as_raw_fd(),
            stderr: c.as_raw_fd(),
        };
        send_request(manager.as_raw_fd(), req, fds).unwrap();
        match receive_request(zygote.as_raw_fd()).unwrap() {
            Incoming::Fork(got, fds) => {
                assert_eq!(got, req);
                for (ours, theirs) in [(&a, fds.control), (&b, fds.stdout), (&c, fds.stderr)] {
                    // A new number for the same socket: same inode.
                    let st = |fd: &OwnedFd| nix::sys::stat::fstat(fd).unwrap().st_ino;
                    assert_eq!(st(ours), st(&theirs));
                }
            }
            other => panic!("{other:?}"),
        }
        send_reply(zygote.as_raw_fd(), &Reply::Forked(4242)).unwrap();
        assert_eq!(
            receive_reply(manager.as_raw_fd()).unwrap(),
            Some(Reply::Forked(4242))
        );
        send_reply(zygote.as_raw_fd(), &Reply::Failed("fork: EAGAIN".into())).unwrap();
        assert_eq!(
            receive_reply(manager.as_raw_fd()).unwrap(),
            Some(Reply::Failed("fork: EAGAIN".into()))
        );
        drop(zygote);
        assert_eq!(receive_reply(manager.as_raw_fd()).unwrap(), None);
    }

    #[test]
    fn a_request_without_its_three_fds_is_malformed() {
        let (manager, zygote) = seqpacket();
        crate::fdpass::send(manager.as_raw_fd(), &[b"fork 1 0"], &[], false).unwrap();
        assert!(matches!(
            receive_request(zygote.as_raw_fd()).unwrap(),
            Incoming::Malformed(t) if t == "fork 1 0"
        ));
        let (a, _a) = seqpacket();
        let fd = a.as_raw_fd();
        crate::fdpass::send(manager.as_raw_fd(), &[b"fork x 0"], &[fd, fd, fd], false).unwrap();
        assert!(matches!(
            receive_request(zygote.as_raw_fd()).unwrap(),
            Incoming::Malformed(_)
        ));
        drop(manager);
        assert!(matches!(
            receive_request(zygote.as_raw_fd()).unwrap(),
            Incoming::Closed
        ));
    }

    #[test]
    fn exit_lines_parse_back() {
        for status in [
            ExitStatus::Code(0),
            ExitStatus::Code(4),
            ExitStatus::Signal {
                signal: 9,
                core_dumped: false,
            },
            ExitStatus::Signal {
                signal: 11,
                core_dumped: true,
            },
        ] {
            let line = exit_line(77, status);
            let arg = line
                .trim_end()
                .strip_prefix("exited ")
                .expect("starts with the word");
            assert_eq!(parse_exit(arg), Some((77, status)), "{line:?}");
        }
        for bad in [
            "",
            "77",
            "77 code",
            "x code 1",
            "77 code 1 2",
            "77 signal 9 dump",
            "77 stop 1",
        ] {
            assert_eq!(parse_exit(bad), None, "{bad:?}");
        }
    }
}
