//! Binding every pool's listening sockets, before any thread exists.
//!
//! Owns: the Unix-socket safety rules (never steal a socket a live process serves, replace
//! a dead one, refuse anything else), the umask/chmod/chown dance that keeps a socket from
//! ever being looser than `listen.mode`, the TCP options (SO_REUSEADDR, IPV6_V6ONLY except
//! on the `[::]` wildcard), and removing the socket files we created on exit.
//!
//! Binding happens on the main thread before the tokio runtime starts because `umask` is
//! process-wide: with other threads around, a file they create meanwhile would get the
//! temporary mask. Every descriptor is close-on-exec; the spawner clears that flag only
//! in the child, only for the worker's own pool.
//!
//! Under systemd socket activation ([`bind_all_activated`]) an address is served by the
//! inherited socket bound to the same place (compared by `getsockname`), never re-bound;
//! its file belongs to the `.socket` unit and is never removed by us.

use nix::sys::socket::{
    self, AddressFamily, SockFlag, SockType, SockaddrLike as _, SockaddrStorage, UnixAddr,
};
use nix::sys::stat::{Mode, umask};
use nix::unistd::{Gid, Group, Uid, User};
use pyfpm_config::{ListenAddr, PoolConfig};
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// Why a listening socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// A live process accepts connections on the Unix socket already.
    #[error(
        "[pool {pool}] another process is serving unix:{path}; refusing to steal it \
         (stop that process or choose another listen path)"
    )]
    InUse {
        /// Pool name.
        pool: String,
        /// Socket path.
        path: PathBuf,
    },
    /// The listen path exists and is not a socket.
    #[error(
        "[pool {pool}] cannot listen on unix:{path}: the path exists and is not a socket; \
         refusing to remove it"
    )]
    NotASocket {
        /// Pool name.
        pool: String,
        /// The path.
        path: PathBuf,
    },
    /// The socket file exists but its liveness cannot be tested (e.g. permission denied).
    #[error(
        "[pool {pool}] cannot tell whether unix:{path} is still in use ({source}); \
         refusing to replace it"
    )]
    Unverifiable {
        /// Pool name.
        pool: String,
        /// The path.
        path: PathBuf,
        /// Why the connect test failed.
        source: io::Error,
    },
    /// `listen.owner` / `listen.group` names nobody.
    #[error("[pool {pool}] {what} {name:?} does not exist on this system")]
    UnknownId {
        /// Pool name.
        pool: String,
        /// `listen.owner` or `listen.group`.
        what: &'static str,
        /// The configured value.
        name: String,
    },
    /// A system call failed while setting the socket up.
    #[error("[pool {pool}] cannot listen on {addr}: {step}: {source}")]
    Sys {
        /// Pool name.
        pool: String,
        /// The address, as in the config.
        addr: String,
        /// What was being done (`bind`, `chmod`, ...).
        step: &'static str,
        /// The error.
        source: io::Error,
    },
}

/// One bound, listening socket.
#[derive(Debug)]
pub struct Listener {
    /// The address as configured.
    pub addr: ListenAddr,
    /// The listening socket (close-on-exec in the manager).
    pub fd: OwnedFd,
    /// For a Unix socket we created: (device, inode) of the file, so that on exit we
    /// unlink it only if it is still ours (not one another instance made since).
    unix_identity: Option<(u64, u64)>,
    /// Passed by systemd (socket activation): its file and its lifetime are systemd's.
    inherited: bool,
}

impl Listener {
    /// The raw descriptor number, inherited by workers under the same number.
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Whether systemd passed this socket (socket activation) instead of us binding it.
    /// Such a socket is never unlinked or re-bound by pyfpm.
    pub fn is_inherited(&self) -> bool {
        self.inherited
    }

    /// Remove the Unix socket file if it is still the one we created.
    pub fn remove_socket_file(&self) {
        if let (ListenAddr::Unix(path), Some((dev, ino))) = (&self.addr, self.unix_identity) {
            if let Ok(meta) = std::fs::symlink_metadata(path) {
                if meta.dev() == dev && meta.ino() == ino {
                    let _ = std::fs::remove_file(path);
                }
            }
        }
    }
}

/// What is at a Unix socket path before we bind it.
#[derive(Debug)]
pub enum Probe {
    /// Nothing there.
    Absent,
    /// A socket that accepts connections: someone serves it.
    Live,
    /// A socket nobody listens on (connection refused): safe to replace.
    Stale,
    /// Something that is not a socket (file, directory, symlink...).
    NotASocket,
    /// A socket whose state cannot be tested.
    Unknown(io::Error),
}

/// Look at `path` without changing anything.
pub fn probe_unix(path: &Path) -> Probe {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Probe::Absent,
        Err(e) => return Probe::Unknown(e),
    };
    if !meta.file_type().is_socket() {
        return Probe::NotASocket;
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Probe::Live,
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => Probe::Stale,
        Err(e) => Probe::Unknown(e),
    }
}

/// Resolve a user name or numeric uid.
pub fn resolve_user(name: &str) -> Option<Uid> {
    if let Ok(n) = name.parse::<u32>() {
        return Some(Uid::from_raw(n));
    }
    User::from_name(name).ok().flatten().map(|u| u.uid)
}

/// Resolve a group name or numeric gid.
pub fn resolve_group(name: &str) -> Option<Gid> {
    if let Ok(n) = name.parse::<u32>() {
        return Some(Gid::from_raw(n));
    }
    Group::from_name(name).ok().flatten().map(|g| g.gid)
}

/// Bind every listen address of every pool; the result is indexed like `pools`.
/// On failure, the sockets bound so far are closed and their files removed.
pub fn bind_all(pools: &[PoolConfig]) -> Result<Vec<Vec<Listener>>, ListenError> {
    bind_all_activated(pools, Vec::new())
}

/// A listening socket systemd passed (socket activation), not yet given to a pool.
#[derive(Debug)]
pub struct ActivatedSocket {
    /// The descriptor (close-on-exec).
    pub fd: OwnedFd,
    /// Its `FileDescriptorName=` from `LISTEN_FDNAMES`, for log lines.
    pub name: Option<String>,
}

impl ActivatedSocket {
    fn describe(&self) -> String {
        match &self.name {
            Some(name) => format!("fd {} ({name})", self.fd.as_raw_fd()),
            None => format!("fd {}", self.fd.as_raw_fd()),
        }
    }
}

/// [`bind_all`], except that an address served by one of the `activated` sockets uses
/// that socket instead of binding. Inherited sockets no pool listens on are logged and
/// closed; so are descriptors that are not listening stream sockets.
pub fn bind_all_activated(
    pools: &[PoolConfig],
    activated: Vec<ActivatedSocket>,
) -> Result<Vec<Vec<Listener>>, ListenError> {
    let mut candidates: Vec<(ListenAddr, ActivatedSocket)> = Vec::new();
    for sock in activated {
        match inherited_address(&sock.fd) {
            Ok(addr) => candidates.push((addr, sock)),
            Err(why) => tracing::warn!(
                "systemd passed {}, which {why}; closing it (pyfpm needs ListenStream= \
                 sockets with Accept=no)",
                sock.describe()
            ),
        }
    }
    // Match first and close the leftovers before binding anything: a leftover may hold
    // the very port a configured address is about to bind, and its warning must come
    // before that bind's error.
    let matched: Vec<Vec<Option<Listener>>> = pools
        .iter()
        .map(|pool| {
            pool.listen
                .iter()
                .map(|addr| {
                    let i = candidates
                        .iter()
                        .position(|(bound, _)| serves(addr, bound))?;
                    let (_, sock) = candidates.remove(i);
                    Some(adopt(pool, addr, sock))
                })
                .collect()
        })
        .collect();
    for (bound, sock) in candidates {
        tracing::warn!(
            "systemd passed {} listening on {bound}, which no pool listens on; closing it \
             (add the address to a pool's listen, or remove it from the .socket unit)",
            sock.describe()
        );
    }
    let mut all: Vec<Vec<Listener>> = Vec::with_capacity(pools.len());
    for (pool, slots) in pools.iter().zip(matched) {
        let mut mine = Vec::with_capacity(pool.listen.len());
        for (addr, slot) in pool.listen.iter().zip(slots) {
            match slot.map_or_else(|| bind_one(pool, addr), Ok) {
                Ok(l) => mine.push(l),
                Err(e) => {
                    for l in all.iter().flatten().chain(mine.iter()) {
                        l.remove_socket_file();
                    }
                    return Err(e);
                }
            }
        }
        all.push(mine);
    }
    Ok(all)
}

/// Give an inherited socket to `pool` for `addr`.
fn adopt(pool: &PoolConfig, addr: &ListenAddr, sock: ActivatedSocket) -> Listener {
    tracing::info!(
        "[pool {}] using the socket systemd passed ({}) for {addr}",
        pool.name,
        sock.describe()
    );
    if matches!(addr, ListenAddr::Unix(_))
        && (pool.listen_owner.is_some() || pool.listen_group.is_some())
    {
        tracing::info!(
            "[pool {}] listen.owner, listen.group and listen.mode do not apply to {addr}: \
             systemd created it (set SocketUser=, SocketGroup= and SocketMode= in the \
             .socket unit)",
            pool.name
        );
    }
    Listener {
        addr: addr.clone(),
        fd: sock.fd,
        // Not ours to unlink: the .socket unit owns the file.
        unix_identity: None,
        inherited: true,
    }
}

/// Where an inherited socket listens, or why it cannot serve a pool.
fn inherited_address(fd: &OwnedFd) -> Result<ListenAddr, String> {
    match socket::getsockopt(fd, socket::sockopt::SockType) {
        Ok(SockType::Stream) => {}
        Ok(other) => return Err(format!("is a {other:?} socket, not a stream socket")),
        Err(e) => return Err(format!("is not a socket ({e})")),
    }
    if !socket::getsockopt(fd, socket::sockopt::AcceptConn).unwrap_or(false) {
        return Err("is not listening (a connection from Accept=yes?)".into());
    }
    let local: SockaddrStorage =
        socket::getsockname(fd.as_raw_fd()).map_err(|e| format!("has no address ({e})"))?;
    if let Some(unix) = local.as_unix_addr() {
        return match unix.path() {
            Some(path) => Ok(ListenAddr::Unix(path.to_path_buf())),
            None => Err(
                "is an abstract or unnamed Unix socket, which no listen entry \
                         can name"
                    .into(),
            ),
        };
    }
    if let Some(v4) = local.as_sockaddr_in() {
        return Ok(ListenAddr::Tcp(SocketAddr::from(*v4)));
    }
    if let Some(v6) = local.as_sockaddr_in6() {
        return Ok(ListenAddr::Tcp(SocketAddr::from(*v6)));
    }
    Err(format!(
        "has an unsupported address family ({:?})",
        local.family()
    ))
}

/// Whether a socket listening on `bound` serves the configured address `configured`.
///
/// Unix paths match when equal or when they resolve to the same file (`/var/run` vs
/// `/run`). TCP addresses match by IP and port; the `[::]` wildcard also takes a
/// `0.0.0.0` socket on the same port, as [`bind_all`] falls back to on an IPv4-only
/// host. Never the other way round: a configured `0.0.0.0` must not silently serve IPv6.
pub fn serves(configured: &ListenAddr, bound: &ListenAddr) -> bool {
    match (configured, bound) {
        (ListenAddr::Unix(want), ListenAddr::Unix(have)) => {
            want == have
                || matches!(
                    (std::fs::canonicalize(want), std::fs::canonicalize(have)),
                    (Ok(a), Ok(b)) if a == b
                )
        }
        (ListenAddr::Tcp(want), ListenAddr::Tcp(have)) => {
            want.port() == have.port()
                && (want.ip() == have.ip()
                    || (is_unspecified_v6(*want)
                        && matches!(have, SocketAddr::V4(v4) if v4.ip().is_unspecified())))
        }
        _ => false,
    }
}

/// Bind one address of `pool` with the start-up rules (a reload's new address).
pub fn bind(pool: &PoolConfig, addr: &ListenAddr) -> Result<Listener, ListenError> {
    bind_one(pool, addr)
}

fn bind_one(pool: &PoolConfig, addr: &ListenAddr) -> Result<Listener, ListenError> {
    match addr {
        ListenAddr::Unix(path) => bind_unix(pool, path),
        ListenAddr::Tcp(sa) => bind_tcp(pool, addr, *sa),
    }
}

fn sys(
    pool: &PoolConfig,
    addr: &ListenAddr,
    step: &'static str,
) -> impl FnOnce(io::Error) -> ListenError {
    let (pool, addr) = (pool.name.clone(), addr.to_string());
    move |source| ListenError::Sys {
        pool,
        addr,
        step,
        source,
    }
}

fn errno(e: nix::Error) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

fn listen(fd: &OwnedFd, backlog: i32) -> io::Result<()> {
    // Not nix::listen: its Backlog refuses values above SOMAXCONN, which the kernel
    // would simply clamp (PHP-FPM's default 511 is above the old SOMAXCONN of 128).
    let backlog = if backlog <= 0 { -1 } else { backlog };
    // SAFETY: plain syscall on a descriptor we own.
    if unsafe { libc::listen(fd.as_raw_fd(), backlog) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Create, bind and listen on a Unix socket, following the safety rules in the module
/// comment. The socket is never looser than `listen.mode`, even for an instant.
fn bind_unix(pool: &PoolConfig, path: &Path) -> Result<Listener, ListenError> {
    let addr = ListenAddr::Unix(path.to_path_buf());
    match probe_unix(path) {
        Probe::Absent => {}
        Probe::Stale => {
            std::fs::remove_file(path).map_err(sys(pool, &addr, "removing the stale socket"))?
        }
        Probe::Live => {
            return Err(ListenError::InUse {
                pool: pool.name.clone(),
                path: path.to_path_buf(),
            });
        }
        Probe::NotASocket => {
            return Err(ListenError::NotASocket {
                pool: pool.name.clone(),
                path: path.to_path_buf(),
            });
        }
        Probe::Unknown(source) => {
            return Err(ListenError::Unverifiable {
                pool: pool.name.clone(),
                path: path.to_path_buf(),
                source,
            });
        }
    }
    let owner = match &pool.listen_owner {
        None => None,
        Some(name) => Some(resolve_user(name).ok_or_else(|| ListenError::UnknownId {
            pool: pool.name.clone(),
            what: "listen.owner",
            name: name.clone(),
        })?),
    };
    let group = match &pool.listen_group {
        None => None,
        Some(name) => Some(resolve_group(name).ok_or_else(|| ListenError::UnknownId {
            pool: pool.name.clone(),
            what: "listen.group",
            name: name.clone(),
        })?),
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        if !parent.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(parent)
                .map_err(sys(pool, &addr, "creating the socket's directory"))?;
        }
    }
    let sockaddr = UnixAddr::new(path).map_err(|e| sys(pool, &addr, "socket path")(errno(e)))?;
    let fd = socket::socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| sys(pool, &addr, "socket")(errno(e)))?;
    let mode = pool.listen_mode & 0o777;
    // The socket file is created by bind() with 0777 & ~umask: with this mask it is
    // exactly `mode` from the first instant. Single-threaded here, so the mask is ours.
    let old_mask = umask(Mode::from_bits_truncate(!mode & 0o777));
    let bound = socket::bind(fd.as_raw_fd(), &sockaddr);
    umask(old_mask);
    bound.map_err(|e| sys(pool, &addr, "bind")(errno(e)))?;
    let meta = std::fs::symlink_metadata(path).map_err(sys(pool, &addr, "stat"))?;
    let listener = Listener {
        addr: addr.clone(),
        fd,
        unix_identity: Some((meta.dev(), meta.ino())),
        inherited: false,
    };
    let finish = || -> Result<(), ListenError> {
        // chmod as well: a mode with bits outside the umask's reach (none today) or a
        // filesystem that ignores the umask for sockets must still end up exact.
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode))
            .map_err(sys(pool, &addr, "chmod"))?;
        if owner.is_some() || group.is_some() {
            nix::unistd::chown(path, owner, group)
                .map_err(|e| sys(pool, &addr, "chown (listen.owner/listen.group)")(errno(e)))?;
        }
        listen(&listener.fd, pool.listen_backlog).map_err(sys(pool, &addr, "listen"))
    };
    if let Err(e) = finish() {
        listener.remove_socket_file();
        return Err(e);
    }
    Ok(listener)
}

/// Create, bind and listen on a TCP socket. The `[::]` wildcard is dual-stack; if the
/// host has no IPv6 it falls back to `0.0.0.0` (as PHP-FPM does for a bare port).
fn bind_tcp(pool: &PoolConfig, addr: &ListenAddr, sa: SocketAddr) -> Result<Listener, ListenError> {
    match tcp_socket(sa, pool.listen_backlog) {
        Ok(fd) => Ok(Listener {
            addr: addr.clone(),
            fd,
            unix_identity: None,
            inherited: false,
        }),
        Err((step, e))
            if is_unspecified_v6(sa)
                && matches!(
                    e.raw_os_error(),
                    Some(libc::EAFNOSUPPORT) | Some(libc::EADDRNOTAVAIL)
                ) =>
        {
            tracing::info!(
                "[pool {}] failed implicitly binding to {sa} ({step}: {e}), retrying with 0.0.0.0:{}",
                pool.name,
                sa.port()
            );
            let v4 = SocketAddr::from((Ipv4Addr::UNSPECIFIED, sa.port()));
            let fd = tcp_socket(v4, pool.listen_backlog)
                .map_err(|(step, e)| sys(pool, addr, step)(e))?;
            Ok(Listener {
                addr: addr.clone(),
                fd,
                unix_identity: None,
                inherited: false,
            })
        }
        Err((step, e)) => Err(sys(pool, addr, step)(e)),
    }
}

fn is_unspecified_v6(sa: SocketAddr) -> bool {
    matches!(sa, SocketAddr::V6(v6) if v6.ip().is_unspecified())
}

fn tcp_socket(sa: SocketAddr, backlog: i32) -> Result<OwnedFd, (&'static str, io::Error)> {
    let family = if sa.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let fd = socket::socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)
        .map_err(|e| ("socket", errno(e)))?;
    socket::setsockopt(&fd, socket::sockopt::ReuseAddr, &true)
        .map_err(|e| ("SO_REUSEADDR", errno(e)))?;
    if sa.is_ipv6() {
        // Only the wildcard is dual-stack; a specific v6 address must not also claim
        // the matching v4-mapped address.
        socket::setsockopt(&fd, socket::sockopt::Ipv6V6Only, &!is_unspecified_v6(sa))
            .map_err(|e| ("IPV6_V6ONLY", errno(e)))?;
    }
    socket::bind(fd.as_raw_fd(), &SockaddrStorage::from(sa)).map_err(|e| ("bind", errno(e)))?;
    listen(&fd, backlog).map_err(|e| ("listen", e))?;
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manager::test_support::pool_config;
    use std::os::unix::fs::PermissionsExt;

    fn is_cloexec(fd: RawFd) -> bool {
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
        flags & libc::FD_CLOEXEC != 0
    }

    #[test]
    fn unix_socket_is_created_with_mode_and_parent_dir_and_removed_on_exit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/dir/www.sock");
        let mut p = pool_config("t", vec![ListenAddr::Unix(path.clone())]);
        p.listen_mode = 0o600;
        let all = bind_all(&[p]).unwrap();
        let l = &all[0][0];
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let parent = std::fs::metadata(path.parent().unwrap()).unwrap();
        assert!(parent.is_dir());
        assert!(is_cloexec(l.raw_fd()));
        assert!(matches!(probe_unix(&path), Probe::Live));
        l.remove_socket_file();
        assert!(!path.exists());
    }

    #[test]
    fn a_live_socket_is_refused_and_a_dead_one_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("live.sock");
        let other = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let p = pool_config("t", vec![ListenAddr::Unix(path.clone())]);
        let err = bind_all(std::slice::from_ref(&p)).unwrap_err();
        assert!(matches!(err, ListenError::InUse { .. }), "{err}");
        assert!(err.to_string().contains("refusing to steal it"));
        assert!(path.exists(), "the live socket must be left alone");
        drop(other); // leaves a dead socket file behind
        assert!(matches!(probe_unix(&path), Probe::Stale));
        let all = bind_all(&[p]).unwrap();
        assert!(matches!(probe_unix(&path), Probe::Live));
        all[0][0].remove_socket_file();
    }

    #[test]
    fn a_regular_file_is_never_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("file.sock");
        std::fs::write(&path, b"precious").unwrap();
        let err = bind_all(&[pool_config("t", vec![ListenAddr::Unix(path.clone())])]).unwrap_err();
        assert!(matches!(err, ListenError::NotASocket { .. }), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), b"precious");
    }

    #[test]
    fn owner_and_group_are_applied_by_name_or_number() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("own.sock");
        let me = Uid::current();
        let my_group = Gid::current();
        let mut p = pool_config("t", vec![ListenAddr::Unix(path.clone())]);
        p.listen_owner = Some(me.as_raw().to_string());
        p.listen_group = Some(
            Group::from_gid(my_group)
                .unwrap()
                .map(|g| g.name)
                .unwrap_or_else(|| my_group.as_raw().to_string()),
        );
        let all = bind_all(&[p]).unwrap();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert_eq!(meta.uid(), me.as_raw());
        assert_eq!(meta.gid(), my_group.as_raw());
        all[0][0].remove_socket_file();

        let mut bad = pool_config("t", vec![ListenAddr::Unix(path.clone())]);
        bad.listen_owner = Some("no-such-user-pyfpm".into());
        let err = bind_all(&[bad]).unwrap_err();
        assert!(matches!(err, ListenError::UnknownId { .. }), "{err}");
        assert!(!path.exists());
    }

    #[test]
    fn tcp_sockets_listen_with_the_right_v6only() {
        let v4 = pool_config("t", vec![ListenAddr::Tcp("127.0.0.1:0".parse().unwrap())]);
        let all = bind_all(&[v4]).unwrap();
        let fd = &all[0][0].fd;
        assert!(is_cloexec(fd.as_raw_fd()));
        assert!(socket::getsockopt(fd, socket::sockopt::ReuseAddr).unwrap());
        assert!(socket::getsockopt(fd, socket::sockopt::AcceptConn).unwrap());

        let v6 = pool_config("t", vec![ListenAddr::Tcp("[::1]:0".parse().unwrap())]);
        if let Ok(all) = bind_all(&[v6]) {
            let fd = &all[0][0].fd;
            assert!(socket::getsockopt(fd, socket::sockopt::Ipv6V6Only).unwrap());
        }
        let any = pool_config("t", vec![ListenAddr::Tcp("[::]:0".parse().unwrap())]);
        let all = bind_all(&[any]).unwrap();
        let fd = &all[0][0].fd;
        if let Ok(v6only) = socket::getsockopt(fd, socket::sockopt::Ipv6V6Only) {
            assert!(!v6only, "the [::] wildcard must be dual-stack");
        }
    }

    #[test]
    fn a_busy_tcp_port_is_an_error_naming_the_pool() {
        let first = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = first.local_addr().unwrap();
        let err = bind_all(&[pool_config("t", vec![ListenAddr::Tcp(addr)])]).unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("[pool t] cannot listen on 127.0.0.1:"),
            "{text}"
        );
        assert!(text.contains("bind"), "{text}");
    }

    fn activated(fd: impl Into<OwnedFd>, name: &str) -> ActivatedSocket {
        ActivatedSocket {
            fd: fd.into(),
            name: Some(name.into()),
        }
    }

    #[test]
    fn an_inherited_unix_socket_is_used_and_its_file_never_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("www.sock");
        let sock = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let fd_number = sock.as_raw_fd();
        let p = pool_config(
            "t",
            vec![
                ListenAddr::Unix(path.clone()),
                ListenAddr::Tcp("127.0.0.1:0".parse().unwrap()),
            ],
        );
        let all = bind_all_activated(&[p], vec![activated(sock, "www.socket")]).unwrap();
        let (unix, tcp) = (&all[0][0], &all[0][1]);
        assert!(unix.is_inherited());
        assert_eq!(unix.raw_fd(), fd_number, "the inherited descriptor itself");
        assert_eq!(unix.addr, ListenAddr::Unix(path.clone()));
        assert!(
            !tcp.is_inherited(),
            "an address systemd did not pass is bound"
        );
        assert!(socket::getsockopt(&tcp.fd, socket::sockopt::AcceptConn).unwrap());
        for l in all.iter().flatten() {
            l.remove_socket_file();
        }
        assert!(path.exists(), "the .socket unit's file must survive us");
        assert!(matches!(probe_unix(&path), Probe::Live));
    }

    #[test]
    fn a_unix_path_reached_through_a_symlink_matches() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("real")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("real"), dir.path().join("link")).unwrap();
        let sock = std::os::unix::net::UnixListener::bind(dir.path().join("real/a.sock")).unwrap();
        let configured = dir.path().join("link/a.sock");
        let all = bind_all_activated(
            &[pool_config("t", vec![ListenAddr::Unix(configured.clone())])],
            vec![activated(sock, "a")],
        )
        .unwrap();
        assert!(all[0][0].is_inherited());
        assert_eq!(all[0][0].addr, ListenAddr::Unix(configured));
    }

    #[test]
    fn an_inherited_tcp_socket_matches_by_ip_and_port() {
        let sock = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = sock.local_addr().unwrap();
        let all = bind_all_activated(
            &[pool_config("t", vec![ListenAddr::Tcp(addr)])],
            vec![activated(sock, "tcp")],
        )
        .unwrap();
        assert!(all[0][0].is_inherited());
        std::net::TcpStream::connect(addr).expect("the inherited socket still listens");
    }

    #[test]
    fn tcp_matching_rules() {
        let tcp = |s: &str| ListenAddr::Tcp(s.parse().unwrap());
        assert!(serves(&tcp("127.0.0.1:9000"), &tcp("127.0.0.1:9000")));
        assert!(!serves(&tcp("127.0.0.1:9000"), &tcp("127.0.0.1:9001")));
        assert!(!serves(&tcp("127.0.0.1:9000"), &tcp("127.0.0.2:9000")));
        assert!(serves(&tcp("[::]:9000"), &tcp("[::]:9000")));
        // The IPv4-only fallback of a bare port...
        assert!(serves(&tcp("[::]:9000"), &tcp("0.0.0.0:9000")));
        // ...but a v4 wildcard never takes a dual-stack socket (it would serve IPv6).
        assert!(!serves(&tcp("0.0.0.0:9000"), &tcp("[::]:9000")));
        assert!(!serves(&tcp("[::1]:9000"), &tcp("127.0.0.1:9000")));
        let unix = ListenAddr::Unix("/run/pyfpm/www.sock".into());
        assert!(!serves(&unix, &tcp("127.0.0.1:9000")));
        assert!(!serves(&tcp("127.0.0.1:9000"), &unix));
        assert!(!serves(
            &unix,
            &ListenAddr::Unix("/run/pyfpm/other.sock".into())
        ));
    }

    #[test]
    fn unused_and_unusable_inherited_sockets_are_closed() {
        let dir = tempfile::tempdir().unwrap();
        let unused_path = dir.path().join("unused.sock");
        let unused = std::os::unix::net::UnixListener::bind(&unused_path).unwrap();
        let dgram_path = dir.path().join("dgram.sock");
        let dgram = std::os::unix::net::UnixDatagram::bind(&dgram_path).unwrap();
        // A stale socket file at the configured path: replaced by the ordinary bind.
        let configured = dir.path().join("www.sock");
        let idle = socket::socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .unwrap();
        socket::bind(idle.as_raw_fd(), &UnixAddr::new(&configured).unwrap()).unwrap();
        drop(idle); // leaves a stale file, which bind_unix replaces
        let all = bind_all_activated(
            &[pool_config("t", vec![ListenAddr::Unix(configured.clone())])],
            vec![activated(unused, "unused"), activated(dgram, "dgram")],
        )
        .unwrap();
        assert!(!all[0][0].is_inherited());
        assert!(matches!(probe_unix(&configured), Probe::Live));
        assert!(
            matches!(probe_unix(&unused_path), Probe::Stale),
            "the unused inherited listener must be closed"
        );
        let probe = std::os::unix::net::UnixDatagram::unbound().unwrap();
        let sent = probe.send_to(b"x", &dgram_path);
        assert_eq!(
            sent.map_err(|e| e.kind()),
            Err(io::ErrorKind::ConnectionRefused),
            "the datagram socket must be closed"
        );
        all[0][0].remove_socket_file();
    }

    #[test]
    fn a_non_listening_inherited_stream_socket_is_refused() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let fd = OwnedFd::from(a);
        let why = inherited_address(&fd).unwrap_err();
        assert!(why.contains("not listening"), "{why}");
    }
}
