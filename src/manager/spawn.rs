//! Starting one worker: the pool's interpreter running [`pyfpm_ipc::BOOTSTRAP`] with the
//! worker module, the pool's sockets inherited under their own numbers, a control
//! socketpair, and a [`WorkerSpec`] in the environment.
//!
//! Everything that can allocate is prepared in the manager; the `pre_exec` hook, which
//! runs between fork and exec, makes async-signal-safe system calls only: clear
//! FD_CLOEXEC on this pool's listening sockets and the worker's control end (never
//! `dup2` a descriptor onto itself: that is a no-op which leaves CLOEXEC set), drop
//! privileges, then `PR_SET_PDEATHSIG` (after setuid, which would clear it) so workers die
//! with the manager. Spawning must happen on the main thread: the death signal fires
//! when the *thread* that forked exits.

use super::listeners::Listener;
use super::pool::Exit;
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
use nix::unistd::{Gid, Uid, User};
use pyfpm_config::PoolConfig;
use pyfpm_ipc::{ListenerFd, WorkerSpec};
use std::ffi::{CString, OsString};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;

/// The user a pool's workers run as (only when the manager is root).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// User name, for `USER`.
    pub name: String,
    /// Home directory, for `HOME`.
    pub home: PathBuf,
    /// Numeric user id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Supplementary groups (initgroups equivalent, computed in the manager).
    pub groups: Vec<libc::gid_t>,
}

/// Why a pool's `user`/`group` cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// No such user.
    #[error("[pool {pool}] user {name:?} does not exist on this system")]
    NoUser {
        /// Pool name.
        pool: String,
        /// Configured user.
        name: String,
    },
    /// No such group.
    #[error("[pool {pool}] group {name:?} does not exist on this system")]
    NoGroup {
        /// Pool name.
        pool: String,
        /// Configured group.
        name: String,
    },
}

/// Decide who a pool's workers run as. `None`: as the manager's own user, either because
/// the manager is not root (`user`/`group` are then ignored with a notice) or because
/// no `user` is set.
pub fn identity(pool: &PoolConfig) -> Result<Option<Identity>, IdentityError> {
    if !Uid::effective().is_root() {
        if pool.user.is_some() || pool.group.is_some() {
            tracing::info!(
                "[pool {}] 'user' and 'group' are ignored when pyfpm is not running as root",
                pool.name
            );
        }
        return Ok(None);
    }
    let Some(user_name) = &pool.user else {
        tracing::warn!(
            "[pool {}] workers run as root because the pool sets no 'user'{}",
            pool.name,
            if pool.group.is_some() {
                " ('group' alone is ignored)"
            } else {
                ""
            }
        );
        return Ok(None);
    };
    let no_user = || IdentityError::NoUser {
        pool: pool.name.clone(),
        name: user_name.clone(),
    };
    let user = match user_name.parse::<u32>() {
        Ok(n) => User::from_uid(Uid::from_raw(n)).ok().flatten(),
        Err(_) => User::from_name(user_name).ok().flatten(),
    }
    .ok_or_else(no_user)?;
    let gid = match &pool.group {
        None => user.gid,
        Some(g) => super::listeners::resolve_group(g).ok_or_else(|| IdentityError::NoGroup {
            pool: pool.name.clone(),
            name: g.clone(),
        })?,
    };
    let groups = CString::new(user.name.clone())
        .ok()
        .and_then(|c| nix::unistd::getgrouplist(&c, gid).ok())
        .unwrap_or_else(|| vec![gid])
        .into_iter()
        .map(Gid::as_raw)
        .collect();
    Ok(Some(Identity {
        name: user.name,
        home: user.dir,
        uid: user.uid.as_raw(),
        gid: gid.as_raw(),
        groups,
    }))
}

/// Mark every descriptor above stderr close-on-exec. Descriptors the manager inherited
/// from whoever started it (a shell's, a supervisor's pipes) would otherwise leak into
/// every worker; the manager's own are close-on-exec from birth. Call once at start-up.
pub fn cloexec_inherited_fds() {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    let fds: Vec<RawFd> = dir
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter(|&fd| fd > 2)
        .collect();
    for fd in fds {
        // SAFETY: F_GETFD/F_SETFD on a number that may or may not still be open (the
        // directory's own fd is closed by now): EBADF is harmless.
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags >= 0 && flags & libc::FD_CLOEXEC == 0 {
                libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
            }
        }
    }
}

/// A started worker (or zygote): how to learn of its exit, its output and the
/// manager's end of its control socket.
pub struct Spawned {
    /// Its pid.
    pub pid: i32,
    /// Where its exit status comes from.
    pub exit: ExitSource,
    /// Its stdout, to log.
    pub stdout: Option<Output>,
    /// Its stderr, to log.
    pub stderr: Option<Output>,
    /// The manager's end of the control socketpair.
    pub control: tokio::net::UnixStream,
}

/// A started process's stdout or stderr.
pub type Output = std::pin::Pin<Box<dyn tokio::io::AsyncRead + Send>>;

/// How a started process's end is learnt.
#[derive(Debug)]
pub enum ExitSource {
    /// The manager's own child: `wait` for it.
    Child(tokio::process::Child),
    /// A worker forked by its pool's zygote (see [`super::zygote`]).
    Forked(super::zygote::ForkedExit),
}

impl ExitSource {
    /// Wait for the process to end.
    pub async fn wait(self) -> Exit {
        match self {
            ExitSource::Child(mut child) => match child.wait().await {
                Ok(status) => Exit::from_status(status),
                // wait() fails only if the child was already reaped: report it as
                // vanished.
                Err(_) => Exit::Code(-1),
            },
            ExitSource::Forked(forked) => forked.wait().await,
        }
    }
}

/// What a pool's workers need that does not change between spawns.
#[derive(Debug)]
pub struct PoolSpawner<'a> {
    /// The pool.
    pub pool: &'a PoolConfig,
    /// The pool's listening sockets.
    pub listeners: &'a [Listener],
    /// The worker module to load.
    pub module: &'a Path,
    /// Who the workers run as.
    pub identity: Option<&'a Identity>,
    /// The manager's pid: a child whose parent is no longer this pid exits at once.
    pub manager_pid: i32,
    /// The pool's scoreboard memfd, inherited by the worker (`None`: no scoreboard).
    pub scoreboard_fd: Option<RawFd>,
    /// This worker's `pm.max_requests`, jitter applied (0 = never).
    pub max_requests: u64,
    /// The pool's parking fds (PARK send end, DISPATCH receive end), inherited by the
    /// worker (`None`: idle kept connections pin their worker).
    pub parking: Option<(RawFd, RawFd)>,
}

impl PoolSpawner<'_> {
    /// The spec for a worker in `slot` whose control end is `control_fd`.
    pub fn spec(&self, slot: u32, control_fd: RawFd) -> WorkerSpec {
        let pool = self.pool;
        WorkerSpec {
            protocol: pyfpm_ipc::PROTOCOL_VERSION,
            build: pyfpm_ipc::BUILD_ID.to_string(),
            pool: pool.name.clone(),
            slot,
            app: pool.app.clone(),
            python_path: pool.python_path.clone(),
            mount: pool.mount.clone(),
            listeners: self
                .listeners
                .iter()
                .map(|l| ListenerFd {
                    fd: l.raw_fd(),
                    address: l.addr.to_string(),
                    unix: matches!(l.addr, pyfpm_config::ListenAddr::Unix(_)),
                })
                .collect(),
            control_fd,
            // Parked connections need no worker: the pool holds that many more.
            fcgi_max_conns: pool.max_children
                + if self.parking.is_some() {
                    super::parking::MAX_PARKED
                } else {
                    0
                },
            fcgi_max_reqs: pool.max_children.saturating_mul(pool.threads),
            threads: pool.threads,
            park_fd: self.parking.map_or(-1, |p| p.0),
            dispatch_fd: self.parking.map_or(-1, |p| p.1),
            request_params_max: pool.request_params_max,
            scoreboard_fd: self.scoreboard_fd.unwrap_or(-1),
            max_requests: self.max_requests,
            max_memory: pool.limits.max_memory,
            request_terminate_timeout_ms: millis(pool.limits.request_terminate_timeout),
            request_slowlog_timeout_ms: if pool.limits.slowlog.is_some() {
                millis(pool.limits.request_slowlog_timeout)
            } else {
                0
            },
            roles: pool.limits.roles.numbers(),
            request_body_max: pool.limits.request_body_max,
            request_read_timeout_ms: millis(pool.limits.request_read_timeout),
            zygote_fd: -1,
        }
    }

    /// The worker's environment, in order of application (later wins).
    pub fn environment(&self, spec: &WorkerSpec) -> Vec<(OsString, OsString)> {
        let pool = self.pool;
        let mut env: Vec<(OsString, OsString)> = Vec::new();
        if let Some(id) = self.identity {
            env.push(("USER".into(), id.name.clone().into()));
            env.push(("HOME".into(), id.home.clone().into()));
        }
        for (k, v) in &pool.env {
            env.push((k.into(), v.into()));
        }
        if let Some(venv) = &pool.virtualenv {
            env.push(("VIRTUAL_ENV".into(), venv.clone().into()));
            let inherited = if pool.clear_env {
                None
            } else {
                std::env::var_os("PATH")
            };
            let base = pool.env.get("PATH").map(OsString::from).or(inherited);
            let mut path = venv.join("bin").into_os_string();
            if let Some(base) = base.filter(|b| !b.is_empty()) {
                path.push(":");
                path.push(base);
            }
            env.push(("PATH".into(), path));
        }
        env.push(("PYTHONUNBUFFERED".into(), "1".into()));
        env.push((pyfpm_ipc::SPEC_ENV.into(), spec.to_json().into()));
        env
    }

    /// Start a worker in `slot`. Must be called on the main thread.
    pub fn spawn(&self, slot: u32) -> io::Result<Spawned> {
        self.start(slot, None)
    }

    /// Start the pool's zygote (`preload`), whose end of the fork channel is
    /// `zygote_fd`. Must be called on the main thread.
    pub fn spawn_zygote(&self, zygote_fd: RawFd) -> io::Result<Spawned> {
        self.start(0, Some(zygote_fd))
    }

    /// Start the pool's interpreter: a worker in `slot`, or with `zygote_fd` the zygote.
    fn start(&self, slot: u32, zygote_fd: Option<RawFd>) -> io::Result<Spawned> {
        let pool = self.pool;
        let (ours, theirs) = control_socketpair()?;
        let control_fd = theirs.as_raw_fd();
        let mut spec = self.spec(slot, control_fd);
        spec.zygote_fd = zygote_fd.unwrap_or(-1);

        let mut cmd = tokio::process::Command::new(&pool.python);
        cmd.arg("-c").arg(pyfpm_ipc::BOOTSTRAP).arg(self.module);
        if pool.clear_env {
            cmd.env_clear();
        }
        cmd.envs(self.environment(&spec));
        if let Some(dir) = &pool.chdir {
            cmd.current_dir(dir);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // A terminal's Ctrl-C must reach only the manager, which then stops the
            // workers in order.
            .process_group(0)
            .kill_on_drop(false);

        let mut inherit: Vec<RawFd> = self.listeners.iter().map(|l| l.raw_fd()).collect();
        inherit.push(control_fd);
        inherit.extend(zygote_fd);
        inherit.extend(self.scoreboard_fd);
        inherit.extend(
            self.parking
                .iter()
                .flat_map(|&(park, dispatch)| [park, dispatch]),
        );
        let ids = self.identity.map(|id| (id.uid, id.gid, id.groups.clone()));
        let parent = self.manager_pid;
        // SAFETY: the closure runs in the forked child before exec and calls only
        // async-signal-safe functions (fcntl, setgroups, setgid, setuid, prctl, getppid);
        // everything it touches was allocated before the fork.
        unsafe {
            cmd.pre_exec(move || {
                for &fd in &inherit {
                    if libc::fcntl(fd, libc::F_SETFD, 0) == -1 {
                        return Err(io::Error::last_os_error());
                    }
                }
                if let Some((uid, gid, groups)) = &ids {
                    if libc::setgroups(groups.len(), groups.as_ptr()) == -1
                        || libc::setgid(*gid) == -1
                        || libc::setuid(*uid) == -1
                    {
                        return Err(io::Error::last_os_error());
                    }
                }
                // After setuid, which resets the parent-death signal.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) == -1 {
                    return Err(io::Error::last_os_error());
                }
                // The manager may have died before the prctl: then nobody would kill us.
                if libc::getppid() != parent {
                    return Err(io::Error::from_raw_os_error(libc::ESRCH));
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot run {}: {e}", pool.python.display()),
            )
        })?;
        // The worker has its copy; ours must go, or the worker's EOF detection (manager
        // gone) and ours (worker gone) would never fire.
        drop(theirs);
        let control = manager_end(ours)?;
        Ok(Spawned {
            pid: child.id().map_or(-1, |p| p as i32),
            stdout: child.stdout.take().map(|o| Box::pin(o) as Output),
            stderr: child.stderr.take().map(|o| Box::pin(o) as Output),
            exit: ExitSource::Child(child),
            control,
        })
    }
}

/// A worker's control socketpair: (the manager's end, the worker's end), both
/// close-on-exec (the spawner clears the flag on the worker's end in the child).
pub fn control_socketpair() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(socketpair(
        AddressFamily::Unix,
        SockType::Stream,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?)
}

/// The manager's end of a control socketpair, made non-blocking for tokio. Call inside
/// the runtime.
pub fn manager_end(fd: OwnedFd) -> io::Result<tokio::net::UnixStream> {
    let stream = std::os::unix::net::UnixStream::from(fd);
    stream.set_nonblocking(true)?;
    tokio::net::UnixStream::from_std(stream)
}

/// A duration in whole milliseconds for the spec, saturating.
fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// `pm.max_requests` plus a random jitter in `0..=jitter`, drawn per worker so that
/// workers started together do not all retire together. 0 stays 0 (never).
pub fn jittered_max_requests(max_requests: u64, jitter: u64) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    if max_requests == 0 || jitter == 0 {
        return max_requests;
    }
    // RandomState is seeded from the OS once per process and per instance after that:
    // enough randomness for spreading restarts, without a dependency.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(max_requests);
    let r = h.finish() % jitter.saturating_add(1);
    max_requests.saturating_add(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pyfpm_config::ListenAddr;
    use tokio::io::{AsyncBufReadExt, AsyncReadExt};

    /// Stands in for the worker: reports what it inherited, says "ready", exits 7.
    const FAKE_WORKER: &str = r#"
import fcntl, json, os, socket, sys
spec = json.loads(os.environ["PYFPM_WORKER_SPEC"])
fds = []
for name in os.listdir("/proc/self/fd"):
    try:
        fcntl.fcntl(int(name), fcntl.F_GETFD)
        fds.append(int(name))
    except OSError:
        pass
report = {
    "fds": sorted(fds),
    "listeners": [l["fd"] for l in spec["listeners"]],
    "control": spec["control_fd"],
    "parking": [spec["park_fd"], spec["dispatch_fd"]],
    "listening": [socket.socket(fileno=l["fd"]).getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) for l in spec["listeners"]],
    "slot": spec["slot"],
    "argv": sys.argv[1:],
    "cwd": os.getcwd(),
    "env": {k: os.environ.get(k) for k in ("FOO", "HOME", "PYTHONUNBUFFERED", "VIRTUAL_ENV", "PATH")},
    "pgid_is_pid": os.getpgid(0) == os.getpid(),
}
print(json.dumps(report))
sys.stdout.flush()
os.write(spec["control_fd"], b"ready\n")
sys.exit(7)
"#;

    #[test]
    fn a_worker_inherits_exactly_its_sockets_and_gets_its_spec() {
        // The test process may have inherited descriptors (from cargo, a shell): the
        // manager marks them at start-up, and so does this test.
        cloexec_inherited_fds();
        let Ok(python3) = which("python3") else {
            eprintln!("skipped: no python3 on PATH");
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("fake_worker.py");
        std::fs::write(&script, FAKE_WORKER).unwrap();
        let interpreter = dir.path().join("python");
        std::fs::write(
            &interpreter,
            format!(
                "#!/bin/sh\nexec {} {} \"$@\"\n",
                python3.display(),
                script.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(
            &interpreter,
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let venv = dir.path().join("venv");
        let pool = PoolConfig {
            name: "t".into(),
            location: pyfpm_config::Location {
                file: "t.yaml".into(),
                line: 1,
                column: 1,
            },
            listen: vec![
                ListenAddr::Tcp("127.0.0.1:0".parse().unwrap()),
                ListenAddr::Unix(dir.path().join("t.sock")),
            ],
            listen_owner: None,
            listen_group: None,
            listen_mode: 0o660,
            listen_backlog: 8,
            user: None,
            group: None,
            pm: pyfpm_config::PmMode::Static,
            max_children: 3,
            threads: 1,
            app: "app:application".into(),
            preload: false,
            python: interpreter.clone(),
            virtualenv: Some(venv.clone()),
            python_path: vec![],
            mount: String::new(),
            chdir: Some(dir.path().to_path_buf()),
            clear_env: true,
            env: [("FOO".to_string(), "bar".to_string())].into(),
            request_params_max: 1 << 16,
            limits: Default::default(),
        };
        // Listeners of another pool must not leak into this pool's worker.
        let all = super::super::listeners::bind_all(&[
            pool.clone(),
            PoolConfig {
                name: "other".into(),
                listen: vec![ListenAddr::Tcp("127.0.0.1:0".parse().unwrap())],
                ..pool.clone()
            },
        ])
        .unwrap();
        let module = dir.path().join("libpyfpm_worker.so");
        // Stand-ins for the pool's parking ends (close-on-exec like the real ones).
        let (park, dispatch) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .unwrap();
        let spawner = PoolSpawner {
            pool: &pool,
            listeners: &all[0],
            module: &module,
            identity: None,
            manager_pid: std::process::id() as i32,
            scoreboard_fd: None,
            max_requests: 0,
            parking: Some((park.as_raw_fd(), dispatch.as_raw_fd())),
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut spawned = spawner.spawn(2).unwrap();
            let mut out = String::new();
            spawned
                .stdout
                .take()
                .unwrap()
                .read_to_string(&mut out)
                .await
                .unwrap();
            let mut err = String::new();
            let mut stderr = spawned.stderr.take().unwrap();
            stderr.read_to_string(&mut err).await.unwrap();
            assert_eq!(err, "", "the fake worker complained");
            let mut control = tokio::io::BufReader::new(spawned.control).lines();
            assert_eq!(control.next_line().await.unwrap().as_deref(), Some("ready"));
            assert_eq!(spawned.exit.wait().await, Exit::Code(7));
            let report: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
            let listeners: Vec<i64> = all[0].iter().map(|l| l.raw_fd() as i64).collect();
            assert_eq!(report["listeners"], serde_json::json!(listeners));
            let mut expected: Vec<i64> = vec![0, 1, 2];
            expected.extend(&listeners);
            expected.push(report["control"].as_i64().unwrap());
            let parking = [park.as_raw_fd() as i64, dispatch.as_raw_fd() as i64];
            assert_eq!(report["parking"], serde_json::json!(parking));
            expected.extend(parking);
            expected.sort();
            assert_eq!(report["fds"], serde_json::json!(expected), "{out}");
            assert_eq!(report["listening"], serde_json::json!([1, 1]));
            assert_eq!(report["slot"], 2);
            assert_eq!(
                report["argv"],
                serde_json::json!(["-c", pyfpm_ipc::BOOTSTRAP, module.to_str().unwrap()])
            );
            assert_eq!(
                std::path::Path::new(report["cwd"].as_str().unwrap())
                    .canonicalize()
                    .unwrap(),
                dir.path().canonicalize().unwrap()
            );
            let env = &report["env"];
            assert_eq!(env["FOO"], "bar");
            assert_eq!(env["HOME"], serde_json::Value::Null, "clear_env drops HOME");
            assert_eq!(env["PYTHONUNBUFFERED"], "1");
            assert_eq!(env["VIRTUAL_ENV"], venv.to_str().unwrap());
            assert_eq!(env["PATH"], venv.join("bin").to_str().unwrap());
            assert_eq!(report["pgid_is_pid"], true);
        });
        for l in all.iter().flatten() {
            l.remove_socket_file();
        }
    }

    #[test]
    fn jitter_stays_in_range_and_varies() {
        assert_eq!(jittered_max_requests(0, 50), 0);
        assert_eq!(jittered_max_requests(500, 0), 500);
        let drawn: std::collections::BTreeSet<u64> =
            (0..200).map(|_| jittered_max_requests(500, 10)).collect();
        assert!(drawn.iter().all(|n| (500..=510).contains(n)), "{drawn:?}");
        assert!(drawn.len() > 3, "jitter does not vary: {drawn:?}");
    }

    /// The real interpreter behind `name` (not a shim that needs the environment the
    /// worker does not get).
    fn which(name: &str) -> Result<PathBuf, ()> {
        let out = std::process::Command::new(name)
            .args(["-c", "import sys; print(sys.executable)"])
            .output()
            .map_err(drop)?;
        let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && path.is_file() {
            Ok(path)
        } else {
            Err(())
        }
    }
}
