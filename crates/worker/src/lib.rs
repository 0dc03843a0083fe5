//! pyfpm's worker core: the pyo3 abi3 extension module `pyfpm_worker`.
//!
//! Each worker is the pool's own Python interpreter running [`pyfpm_ipc::BOOTSTRAP`],
//! which loads this module from an explicit path and calls `serve()`. `serve()` reads
//! the [`pyfpm_ipc::WorkerSpec`], imports the pool's WSGI app, writes
//! [`pyfpm_ipc::control::READY`] on the control socket, then accepts FastCGI connections
//! on the inherited listening sockets and serves their requests, one at a time per
//! request thread (`threads`, default 1; more threads also multiplex). Python is
//! entered only to call the app; accepting, FastCGI decoding and response writing are
//! Rust, with the GIL released around every blocking system call.
//!
//! # Log line protocol
//!
//! The worker core writes its own log lines to stderr, each prefixed with `<N>`, where
//! N is a syslog severity digit:
//!
//! | prefix | level   | used for                                                      |
//! |--------|---------|---------------------------------------------------------------|
//! | `<3>`  | error   | app exceptions (with traceback), app load failures, bad spec  |
//! | `<4>`  | warning | a peer broke the protocol or a connection failed              |
//! | `<5>`  | notice  | significant events (stopping on KeyboardInterrupt)            |
//! | `<6>`  | info    | routine trouble: the web server went away mid-response        |
//! | `<7>`  | debug   | lifecycle detail (ready, exiting)                             |
//!
//! Every line of a multi-line message (a traceback) carries the prefix, and a message
//! is written with a single `write`, so it never interleaves mid-line with other output.
//! Lines name the pool and, where there is one, the request (`pool www: GET /uri: ...`).
//! Anything else on stderr (the app's prints, `wsgi.errors` text, raw writes) has no
//! prefix; the manager logs it as the worker's output.
//!
//! # Modules
//!
//! - [`boot`]: the spec, the inherited fds, importing the app, READY.
//! - [`serve`]: the epoll/accept loop, signals and stopping, one connection's requests.
//! - [`conn`]: one connection: socket I/O, codec events, response and body state.
//! - [`wsgi`]: one request through the app: environ, `wsgi.input`, `wsgi.errors`,
//!   `start_response`/`write`, `wsgi.file_wrapper`, error handling.
//! - [`monitor`]: per-request bookkeeping: scoreboard slot, watchdog, recycling.
//! - [`watchdog`]: `request_slowlog_timeout` and `request_terminate_timeout` (stack
//!   dumps via faulthandler, `RequestTimeout`, the last-resort exit).
//! - [`control`]: messages to the manager (READY, retire, slowlog), one writer at a time.
//! - [`parking`]: idle kept-alive connections: each thread's held set, and handing
//!   them to the manager and back.
//! - [`watcher`]: reading connections whose requests are in the app (GET_VALUES,
//!   ABORT, multiplexed requests), and the queue of requests waiting for a thread.
//! - [`recycle`], [`report`]: pure helpers (RSS, the retire rule; report texts).
//! - [`http`]: pure helpers (status and header checks, paths, percent-decoding).
//! - [`log`]: the log line protocol above.
//! - [`zygote`]: `preload` pools: import the app once, fork the workers from it.

pub mod boot;
pub mod conn;
pub mod control;
pub mod http;
pub mod log;
pub mod monitor;
pub mod parking;
pub mod recycle;
pub mod report;
pub mod serve;
pub mod watchdog;
pub mod watcher;
pub mod wsgi;
pub mod zygote;

use pyo3::prelude::*;

/// [`pyfpm_ipc::BUILD_MARKER`] as a NUL-terminated byte array, kept in the module image
/// so the manager can check, by scanning the file, that a module is from its own build.
/// The NUL ends the marker for the scanner (a plain `&str` could run into neighbouring
/// string data).
#[used]
#[unsafe(no_mangle)]
pub static PYFPM_WORKER_BUILD_MARKER: [u8; pyfpm_ipc::BUILD_MARKER.len() + 1] = {
    let src = pyfpm_ipc::BUILD_MARKER.as_bytes();
    let mut out = [0u8; pyfpm_ipc::BUILD_MARKER.len() + 1];
    let mut i = 0;
    while i < src.len() {
        out[i] = src[i];
        i += 1;
    }
    out
};

/// Serve the pool described by the `PYFPM_WORKER_SPEC` environment variable until asked
/// to stop. Returns the process exit code (see `pyfpm_ipc::exit`).
#[pyfunction]
#[pyo3(name = "serve")]
fn serve_py(py: Python<'_>) -> i32 {
    match boot::boot(py) {
        Ok(worker) => serve::serve_forever(py, &worker),
        Err(err) => err.code,
    }
}

/// pyfpm's worker core (loaded by the pyfpm manager; not for direct use).
#[pymodule(gil_used = true)]
fn pyfpm_worker(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(serve_py, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_class::<wsgi::file_wrapper::FileWrapper>()?;
    m.add(
        "RequestTimeout",
        m.py().get_type::<watchdog::RequestTimeout>(),
    )?;
    Ok(())
}
