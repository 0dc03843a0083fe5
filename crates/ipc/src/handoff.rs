//! Handing a kept-alive connection between processes (worker → manager on the PARK
//! socket, manager → worker on the DISPATCH socket): one SOCK_SEQPACKET message per
//! connection, carrying the connection's fd (SCM_RIGHTS) and the bytes already read from
//! it but not yet decoded. A marker byte leads the payload so that an empty message can
//! never be mistaken for end of file.

use std::os::fd::{OwnedFd, RawFd};

/// Most bytes a message carries besides its fd.
pub const MAX_PAYLOAD: usize = 64 * 1024;

const MARKER: u8 = b'P';

/// What [`receive`] found.
#[derive(Debug)]
pub enum Received {
    /// A connection and the bytes already read from it.
    Conn(OwnedFd, Vec<u8>),
    /// Nothing queued (or another process took it first).
    WouldBlock,
    /// The other end is closed.
    Closed,
    /// A message that is not a handed-over connection; dropped (with any fds it held).
    Malformed,
}

/// Send `conn` and `bytes` on `sock`. With `nonblocking`, a full socket is
/// `Err(EAGAIN)`; otherwise the call waits for room. Interrupted calls are retried.
pub fn send(sock: RawFd, conn: RawFd, bytes: &[u8], nonblocking: bool) -> nix::Result<()> {
    crate::fdpass::send(sock, &[&[MARKER], bytes], &[conn], nonblocking)
}

/// Receive one message from `sock` without waiting; received fds are close-on-exec.
pub fn receive(sock: RawFd) -> nix::Result<Received> {
    let mut buf = vec![0u8; MAX_PAYLOAD + 1];
    let (len, fds) = match crate::fdpass::receive(sock, &mut buf, true) {
        Ok(got) => got,
        Err(nix::errno::Errno::EAGAIN) => return Ok(Received::WouldBlock),
        Err(e) => return Err(e),
    };
    if len == 0 && fds.is_empty() {
        return Ok(Received::Closed);
    }
    let mut fds = fds.into_iter();
    Ok(match (fds.next(), len > 0 && buf[0] == MARKER) {
        (Some(conn), true) => {
            buf.truncate(len);
            buf.remove(0);
            Received::Conn(conn, buf)
        }
        _ => Received::Malformed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
    use std::os::fd::AsRawFd;

    #[test]
    fn a_connection_and_its_bytes_cross_over() {
        let (a, b) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .unwrap();
        let (conn, _peer) = socketpair(
            AddressFamily::Unix,
            SockType::Stream,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .unwrap();
        assert!(matches!(
            receive(b.as_raw_fd()).unwrap(),
            Received::WouldBlock
        ));
        send(a.as_raw_fd(), conn.as_raw_fd(), b"abc", true).unwrap();
        match receive(b.as_raw_fd()).unwrap() {
            Received::Conn(fd, bytes) => {
                assert_eq!(bytes, b"abc");
                assert_ne!(fd.as_raw_fd(), conn.as_raw_fd());
            }
            other => panic!("{other:?}"),
        }
        send(a.as_raw_fd(), conn.as_raw_fd(), b"", true).unwrap();
        assert!(matches!(receive(b.as_raw_fd()).unwrap(), Received::Conn(_, v) if v.is_empty()));
        drop(a);
        assert!(matches!(receive(b.as_raw_fd()).unwrap(), Received::Closed));
    }
}
