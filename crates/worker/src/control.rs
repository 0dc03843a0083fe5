//! Messages to the manager on the control socket (see [`pyfpm_ipc::control`]).
//!
//! Two threads write here: the main thread (READY, `retire`) and the watchdog thread
//! (`slowlog`). Every message goes out through [`Control::send`], which writes the whole
//! framed message with one `write_all` while holding a mutex, so two messages never
//! interleave and the manager's parser always sees whole frames.

use pyfpm_ipc::control;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long one message may wait for room in the socket buffer. The manager reads the
/// control socket continuously; if it stops for this long it is wedged or gone, and a
/// worker must not hang on it (the slow log is best effort, retire is re-derived by the
/// manager's own limits).
const SEND_PATIENCE: Duration = Duration::from_secs(5);

/// The writing side of the control socket.
#[derive(Debug)]
pub struct Control {
    /// A dup of the worker's control socket (non-blocking, like the original: they share
    /// one open file description).
    sock: Mutex<UnixStream>,
}

/// `slowlog N\n` followed by the N bytes of `entry`.
pub fn frame_slowlog(entry: &[u8]) -> Vec<u8> {
    let mut out = format!("{} {}\n", control::SLOWLOG, entry.len()).into_bytes();
    out.extend_from_slice(entry);
    out
}

/// `retire REASON\n`.
pub fn frame_retire(reason: &str) -> Vec<u8> {
    format!("{} {reason}\n", control::RETIRE).into_bytes()
}

impl Control {
    /// Write through a dup of `sock`.
    pub fn new(sock: &UnixStream) -> io::Result<Control> {
        Ok(Control {
            sock: Mutex::new(sock.try_clone()?),
        })
    }

    /// Send one whole message (already framed, newline included).
    pub fn send(&self, message: &[u8]) -> io::Result<()> {
        let mut sock = self
            .sock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let deadline = Instant::now() + SEND_PATIENCE;
        let mut rest = message;
        while !rest.is_empty() {
            match sock.write(rest) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => rest = &rest[n..],
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "the manager has not read the control socket for 5 s",
                        ));
                    }
                    wait_writable(sock.as_raw_fd(), left);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// Wait until `fd` is writable or `within` passed (errors are left to the next write).
fn wait_writable(fd: i32, within: Duration) {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLOUT,
        revents: 0,
    };
    let ms = i32::try_from(within.as_millis()).unwrap_or(i32::MAX).max(1);
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&mut pfd, 1, ms) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn frames() {
        assert_eq!(frame_retire("max_requests"), b"retire max_requests\n");
        assert_eq!(frame_slowlog(b"\nab\n"), b"slowlog 4\n\nab\n");
        assert_eq!(frame_slowlog(b""), b"slowlog 0\n");
    }

    #[test]
    fn concurrent_messages_never_interleave() {
        let (a, mut b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let control = std::sync::Arc::new(Control::new(&a).unwrap());
        let big = frame_slowlog(&vec![b'x'; 300_000]);
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let control = control.clone();
                let big = big.clone();
                std::thread::spawn(move || {
                    for _ in 0..3 {
                        control.send(&big).unwrap();
                        control.send(&frame_retire("max_memory")).unwrap();
                    }
                })
            })
            .collect();
        let expected = 6 * (big.len() + b"retire max_memory\n".len());
        let mut got = Vec::new();
        let mut buf = vec![0u8; 65536];
        while got.len() < expected {
            let n = b.read(&mut buf).unwrap();
            assert!(n > 0);
            got.extend_from_slice(&buf[..n]);
        }
        for t in threads {
            t.join().unwrap();
        }
        // Parse: every frame must be whole.
        let mut rest = &got[..];
        let mut frames = 0;
        while !rest.is_empty() {
            if let Some(r) = rest.strip_prefix(b"retire max_memory\n".as_slice()) {
                rest = r;
            } else {
                let r = rest
                    .strip_prefix(b"slowlog 300000\n".as_slice())
                    .expect("frame");
                assert!(r[..300_000].iter().all(|&c| c == b'x'));
                rest = &r[300_000..];
            }
            frames += 1;
        }
        assert_eq!(frames, 12);
    }
}
