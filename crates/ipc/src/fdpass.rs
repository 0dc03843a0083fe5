//! One SOCK_SEQPACKET message with file descriptors attached (SCM_RIGHTS): the
//! primitive under [`crate::handoff`] and [`crate::zygote`].

use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// Send `parts` as one message with `fds` attached. With `nonblocking`, a full socket
/// is `Err(EAGAIN)`; otherwise the call waits for room. Interrupted calls are retried.
pub(crate) fn send(
    sock: RawFd,
    parts: &[&[u8]],
    fds: &[RawFd],
    nonblocking: bool,
) -> nix::Result<()> {
    let iov: Vec<IoSlice<'_>> = parts.iter().map(|p| IoSlice::new(p)).collect();
    let cmsg = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage<'_>] = if fds.is_empty() { &[] } else { &cmsg };
    let mut flags = MsgFlags::MSG_NOSIGNAL;
    if nonblocking {
        flags |= MsgFlags::MSG_DONTWAIT;
    }
    loop {
        match sendmsg::<()>(sock, &iov, cmsgs, flags, None) {
            Err(nix::errno::Errno::EINTR) => continue,
            other => return other.map(|_| ()),
        }
    }
}

/// Receive one message into `buf`, returning its length and the fds it carried (at
/// most 4; close-on-exec). `Ok((0, []))` is end of file. Interrupted calls are retried.
pub(crate) fn receive(
    sock: RawFd,
    buf: &mut [u8],
    nonblocking: bool,
) -> nix::Result<(usize, Vec<OwnedFd>)> {
    let mut space = nix::cmsg_space!([RawFd; 4]);
    let mut flags = MsgFlags::MSG_CMSG_CLOEXEC;
    if nonblocking {
        flags |= MsgFlags::MSG_DONTWAIT;
    }
    loop {
        let mut iov = [IoSliceMut::new(buf)];
        let msg = match recvmsg::<()>(sock, &mut iov, Some(&mut space), flags) {
            Ok(msg) => msg,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e),
        };
        let mut fds: Vec<OwnedFd> = Vec::new();
        if let Ok(cmsgs) = msg.cmsgs() {
            for c in cmsgs {
                if let ControlMessageOwned::ScmRights(received) = c {
                    // SAFETY: SCM_RIGHTS installed these fds in this process just now;
                    // nothing else owns them.
                    fds.extend(
                        received
                            .into_iter()
                            .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                    );
                }
            }
        }
        return Ok((msg.bytes, fds));
    }
}
