//! Start-up: read and check the [`WorkerSpec`], take over the inherited fds, import the
//! app, and tell the manager the worker is ready. Every failure here ends the worker
//! with the exit code that tells the manager what went wrong (see [`pyfpm_ipc::exit`]).

use crate::control::Control;
use crate::log::{Level, log};
use crate::monitor::{Limits, Monitor};
use crate::parking::Parking;
use crate::serve::{Stop, Worker};
use crate::watchdog::Watchdog;
use crate::watcher::{ReadyQueue, Watcher};
use crate::wsgi::{file_wrapper::FileWrapper, format_traceback};
use pyfpm_ipc::{BUILD_ID, ListenerFd, PROTOCOL_VERSION, SPEC_ENV, WorkerSpec, control, exit};
use pyo3::prelude::*;
use pyo3::types::PyList;
use scoreboard::{Scoreboard, SlotState};
use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;

/// Why the worker could not start; carries the exit code.
#[derive(Debug)]
pub struct BootError {
    /// Process exit code (one of [`exit`]).
    pub code: i32,
}

impl BootError {
    /// Log `message` as an error; the error carries `code`.
    pub(crate) fn log(code: i32, message: impl std::fmt::Display) -> Self {
        log(Level::Error, message);
        BootError { code }
    }
}

/// Read the spec from the environment and check that it comes from this build.
fn read_spec() -> Result<WorkerSpec, BootError> {
    let text = std::env::var(SPEC_ENV).map_err(|_| {
        BootError::log(
            exit::BOOT_ERROR,
            format!(
                "pyfpm worker: {SPEC_ENV} is not set (or not UTF-8); workers are started \
                 by the pyfpm manager, not by hand"
            ),
        )
    })?;
    // Check the versions on the loose JSON first: a spec from another protocol version
    // may not even parse as this build's WorkerSpec, and "version mismatch" is the
    // message that helps then.
    let loose: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
        BootError::log(
            exit::BOOT_ERROR,
            format!("pyfpm worker: {SPEC_ENV} is not valid JSON: {e}"),
        )
    })?;
    let protocol = loose.get("protocol").and_then(serde_json::Value::as_u64);
    let build = loose.get("build").and_then(serde_json::Value::as_str);
    if protocol != Some(u64::from(PROTOCOL_VERSION)) || build != Some(BUILD_ID) {
        return Err(BootError::log(
            exit::VERSION_MISMATCH,
            format!(
                "pyfpm worker: version mismatch: the manager is build {} (protocol {}), this \
                 worker module is build {BUILD_ID} (protocol {PROTOCOL_VERSION}); rebuild \
                 both with `cargo build --workspace` or point the manager at the matching \
                 worker module",
                build.unwrap_or("?"),
                protocol.map_or_else(|| "?".to_string(), |p| p.to_string())
            ),
        ));
    }
    WorkerSpec::from_json(&text).map_err(|e| {
        BootError::log(
            exit::BOOT_ERROR,
            format!("pyfpm worker: {SPEC_ENV} does not describe a worker: {e}"),
        )
    })
}

/// Check that `fd` is open; then own it.
fn own_fd(fd: RawFd, what: &str) -> Result<OwnedFd, String> {
    if fd < 0 {
        return Err(format!("{what}: invalid fd {fd}"));
    }
    // SAFETY: F_GETFD only inspects the descriptor table.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(format!(
            "{what}: fd {fd} is not open in the worker ({})",
            io::Error::last_os_error()
        ));
    }
    // SAFETY: the fd is open, was inherited for this worker alone, and the caller
    // checked that no fd number appears twice in the spec.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Make `fd` close-on-exec (subprocesses the app starts must not inherit the worker's
/// sockets) and optionally non-blocking.
fn set_fd_flags(fd: RawFd, nonblocking: bool) -> io::Result<()> {
    // SAFETY: fcntl on an fd we own, with integer arguments only.
    unsafe {
        if libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) < 0 {
            return Err(io::Error::last_os_error());
        }
        if nonblocking {
            let flags = libc::fcntl(fd, libc::F_GETFL);
            if flags < 0 || libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
                return Err(io::Error::last_os_error());
            }
        }
    }
    Ok(())
}

/// True when `fd` is a socket in the listening state.
fn is_listening(fd: RawFd) -> bool {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `value` and `len` are valid for getsockopt to write an int.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ACCEPTCONN,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    rc == 0 && value != 0
}

/// The fds a worker takes over at start-up.
struct Fds {
    /// Listening sockets.
    listeners: Vec<(OwnedFd, ListenerFd)>,
    /// The control socket.
    control: UnixStream,
    /// The scoreboard memfd, when the spec names one.
    scoreboard: Option<OwnedFd>,
}

/// Take over the listening sockets, the control socket and the scoreboard named by the
/// spec.
fn take_fds(spec: &WorkerSpec) -> Result<Fds, String> {
    if spec.listeners.is_empty() {
        return Err("the spec names no listening socket".to_string());
    }
    let mut seen: Vec<RawFd> = vec![spec.control_fd];
    if spec.scoreboard_fd >= 0 {
        if seen.contains(&spec.scoreboard_fd) {
            return Err(format!(
                "fd {} appears twice in the spec",
                spec.scoreboard_fd
            ));
        }
        seen.push(spec.scoreboard_fd);
    }
    for l in &spec.listeners {
        if seen.contains(&l.fd) {
            return Err(format!("fd {} appears twice in the spec", l.fd));
        }
        seen.push(l.fd);
    }
    let control = own_fd(spec.control_fd, "control socket")?;
    set_fd_flags(spec.control_fd, false)
        .map_err(|e| format!("control socket fd {}: {e}", spec.control_fd))?;
    let mut listeners = Vec::new();
    for l in &spec.listeners {
        let what = format!("listener {}", l.address);
        let fd = own_fd(l.fd, &what)?;
        if !is_listening(l.fd) {
            return Err(format!("{what}: fd {} is not a listening socket", l.fd));
        }
        set_fd_flags(l.fd, true).map_err(|e| format!("{what}: fd {}: {e}", l.fd))?;
        listeners.push((fd, l.clone()));
    }
    let scoreboard = if spec.scoreboard_fd >= 0 {
        let fd = own_fd(spec.scoreboard_fd, "scoreboard")?;
        set_fd_flags(spec.scoreboard_fd, false)
            .map_err(|e| format!("scoreboard fd {}: {e}", spec.scoreboard_fd))?;
        Some(fd)
    } else {
        None
    };
    Ok(Fds {
        listeners,
        control: UnixStream::from(control),
        scoreboard,
    })
}

/// Map the pool's scoreboard and check that the worker's slot is in it.
fn open_scoreboard(spec: &WorkerSpec, fd: OwnedFd) -> Result<(Scoreboard, usize), String> {
    let board =
        Scoreboard::open(fd).map_err(|e| format!("scoreboard fd {}: {e}", spec.scoreboard_fd))?;
    let index = spec.slot as usize;
    if board.try_slot(index).is_none() {
        return Err(format!(
            "the scoreboard has {} slots, but this worker is slot {index}",
            board.slots()
        ));
    }
    Ok((board, index))
}

/// Import `module:callable` (callable may be a dotted attribute path; default
/// `application`) with `python_path` prepended to `sys.path`.
fn load_app<'py>(py: Python<'py>, spec: &WorkerSpec) -> PyResult<Bound<'py, PyAny>> {
    let sys_path = py.import("sys")?.getattr("path")?;
    let sys_path = sys_path.cast::<PyList>()?;
    for (i, dir) in spec.python_path.iter().enumerate() {
        sys_path.insert(i, dir.to_string_lossy().as_ref())?;
    }
    let (module, attr) = spec
        .app
        .split_once(':')
        .unwrap_or((spec.app.as_str(), "application"));
    if module.is_empty() || attr.is_empty() {
        return Err(pyo3::exceptions::PyValueError::new_err(format!(
            "app {:?} is not of the form \"module:callable\"",
            spec.app
        )));
    }
    let mut obj = py
        .import("importlib")?
        .call_method1("import_module", (module,))?;
    for part in attr.split('.') {
        obj = obj.getattr(part)?;
    }
    if !obj.is_callable() {
        return Err(pyo3::exceptions::PyTypeError::new_err(format!(
            "app {:?} is not callable (it is a {})",
            spec.app,
            crate::wsgi::start_response::type_name(&obj)
        )));
    }
    Ok(obj)
}

/// [`load_app`], failing with [`exit::APP_LOAD_ERROR`] and the traceback logged.
fn import_app<'py>(py: Python<'py>, spec: &WorkerSpec) -> Result<Bound<'py, PyAny>, BootError> {
    load_app(py, spec).map_err(|err| {
        BootError::log(
            exit::APP_LOAD_ERROR,
            format!(
                "cannot load the app {:?}:\n{}",
                spec.app,
                format_traceback(py, &err)
            ),
        )
    })
}

/// Every fd the spec names (those that are set).
fn spec_fds(spec: &WorkerSpec) -> Vec<RawFd> {
    let mut fds: Vec<RawFd> = spec.listeners.iter().map(|l| l.fd).collect();
    fds.extend([
        spec.control_fd,
        spec.zygote_fd,
        spec.scoreboard_fd,
        spec.park_fd,
        spec.dispatch_fd,
    ]);
    fds.retain(|&fd| fd >= 0);
    fds
}

/// Everything before serving: spec, fds, app import, READY.
pub fn boot(py: Python<'_>) -> Result<Worker, BootError> {
    let spec = read_spec()?;
    // The app (and anything it spawns) has no business with the spec.
    if let Ok(environ) = py.import("os").and_then(|os| os.getattr("environ")) {
        let _ = environ.call_method1("pop", (SPEC_ENV, py.None()));
    }
    let boot_error = |e: String| BootError::log(exit::BOOT_ERROR, format!("worker: {e}"));
    // A preload pool's zygote imports the app once and returns here only in each worker
    // it forks, with that worker's spec.
    let (spec, preloaded) = if spec.zygote_fd >= 0 {
        for fd in spec_fds(&spec) {
            // Close-on-exec, so a subprocess the app starts at import inherits none of
            // the pool's sockets (forked workers keep them: fork ignores the flag).
            set_fd_flags(fd, false).map_err(|e| boot_error(format!("fd {fd}: {e}")))?;
        }
        let app = import_app(py, &spec)?;
        let (spec, app) = crate::zygote::run(py, spec, app.unbind())?;
        (spec, Some(app))
    } else {
        (spec, None)
    };
    let Fds {
        listeners,
        control,
        scoreboard,
    } = take_fds(&spec).map_err(boot_error)?;
    let board = scoreboard
        .map(|fd| open_scoreboard(&spec, fd).map(|(b, i)| (Arc::new(b), i)))
        .transpose()
        .map_err(boot_error)?;
    // Signal handlers before the (possibly slow) app import: a SIGQUIT from the manager
    // then means "exit once ready" instead of SIGQUIT's default core dump.
    let stop = Stop::install(py, control).map_err(|e| {
        BootError::log(
            exit::BOOT_ERROR,
            format!(
                "cannot install the signal handlers: {}",
                format_traceback(py, &e)
            ),
        )
    })?;
    let app = match preloaded {
        Some(app) => app.into_bound(py),
        None => import_app(py, &spec)?,
    };
    let control = Control::new(stop.control_socket())
        .map(Arc::new)
        .map_err(|e| boot_error(format!("control socket: {e}")))?;
    // After the app import, so that an app registering its own handler for one of the
    // watchdog's signals cannot silently disable the timeouts.
    let watchdog = Watchdog::install(py, &spec, Arc::clone(&control)).map_err(|e| {
        BootError::log(
            exit::BOOT_ERROR,
            format!(
                "cannot set up request_terminate_timeout / request_slowlog_timeout: {}",
                format_traceback(py, &e)
            ),
        )
    })?;
    let file_wrapper = py.get_type::<FileWrapper>().unbind();
    crate::wsgi::note_std_streams(py);
    control
        .send(format!("{}\n", control::READY).as_bytes())
        .map_err(|e| {
            if e.kind() == io::ErrorKind::BrokenPipe {
                // The manager is gone already: nothing to serve for.
                BootError { code: exit::OK }
            } else {
                BootError::log(
                    exit::BOOT_ERROR,
                    format!("cannot write to the control socket: {e}"),
                )
            }
        })?;
    log(
        Level::Debug,
        format!(
            "worker {} ready: app {} on {}",
            spec.slot,
            spec.app,
            listeners
                .iter()
                .map(|(_, l)| l.address.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    );
    let monitor = Monitor::new(
        board.clone(),
        watchdog,
        control,
        Limits {
            max_requests: spec.max_requests,
            max_memory: spec.max_memory,
        },
        spec.threads.max(1) as usize,
    );
    monitor.state(0, SlotState::Idle);
    let ready = if spec.threads > 1 {
        Some(Arc::new(ReadyQueue::new().map_err(|e| {
            boot_error(format!("cannot create the ready queue: {e}"))
        })?))
    } else {
        None
    };
    let parking = Arc::new(Parking::from_spec(spec.park_fd, spec.dispatch_fd));
    let watcher = Watcher::start(
        ready.clone(),
        Arc::clone(&parking),
        board,
        spec.threads.max(1) as usize,
    )
    .map_err(|e| boot_error(format!("cannot start the connection watcher: {e}")))?;
    let (server_config, capacity) = Worker::connection_settings(&spec);
    Ok(Worker {
        monitor,
        watcher,
        parking,
        ready,
        server_config,
        capacity,
        spec,
        app: app.unbind(),
        file_wrapper,
        listeners,
        stop,
    })
}
