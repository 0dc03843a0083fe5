//! What the pyfpm manager and its workers agree on.
//!
//! The manager (pure Rust, no libpython) starts each worker as the pool's own Python
//! interpreter running [`BOOTSTRAP`], which loads the worker-core extension module from an
//! explicit path and calls its `serve()`. Everything the worker needs to know arrives in
//! one JSON document, the [`WorkerSpec`], in the environment variable [`SPEC_ENV`]. The
//! listening sockets and the control socket are inherited file descriptors whose numbers
//! the spec names.
//!
//! This crate is deliberately tiny: it is the whole contract between the two programs, so
//! that a manager and a worker module from different builds can detect the mismatch
//! ([`PROTOCOL_VERSION`], [`BUILD_ID`]) instead of misbehaving.

mod fdpass;
pub mod handoff;
pub mod zygote;

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Bumped whenever [`WorkerSpec`] or the control messages change shape.
pub const PROTOCOL_VERSION: u32 = 6;

/// The version of the pyfpm build. Manager and worker module must carry the same one.
pub const BUILD_ID: &str = env!("CARGO_PKG_VERSION");

/// Prefix of [`BUILD_MARKER`], for finding it inside a module image.
pub const BUILD_MARKER_PREFIX: &str = "pyfpm-worker-build=";

/// Text embedded in every worker module (as a `#[used]` static) so that the manager can
/// tell, before starting anything, whether a module file comes from its own build.
/// Keep the protocol number here in step with [`PROTOCOL_VERSION`].
pub const BUILD_MARKER: &str = concat!(
    "pyfpm-worker-build=",
    env!("CARGO_PKG_VERSION"),
    "/protocol=6"
);

/// Environment variable holding the JSON-encoded [`WorkerSpec`].
pub const SPEC_ENV: &str = "PYFPM_WORKER_SPEC";

/// Name under which the extension module is imported in the worker.
pub const MODULE_NAME: &str = "pyfpm_worker";

/// Python source run by the worker interpreter as `python -c BOOTSTRAP MODULE_PATH`.
///
/// It loads the extension from an explicit file path (no installation into the pool's
/// site-packages, no `sys.path` games), so the manager decides exactly which build of the
/// worker core runs, and then hands control to `serve()`, which never returns normally.
pub const BOOTSTRAP: &str = "\
import sys, importlib.machinery, importlib.util
path = sys.argv[1]
loader = importlib.machinery.ExtensionFileLoader('pyfpm_worker', path)
spec = importlib.util.spec_from_file_location('pyfpm_worker', path, loader=loader)
module = importlib.util.module_from_spec(spec)
sys.modules['pyfpm_worker'] = module
loader.exec_module(module)
del sys.argv[1:]
sys.exit(module.serve())
";

/// Worker exit codes the manager gives a meaning to. Anything else is a crash.
pub mod exit {
    /// Clean exit: graceful stop finished, or a recycling limit was reached.
    pub const OK: i32 = 0;
    /// The worker could not start serving for a reason in the environment or the spec
    /// (bad spec, unusable socket fd, ...). Retrying quickly will not help.
    pub const BOOT_ERROR: i32 = 3;
    /// The pool's app could not be imported or is not callable. The traceback was
    /// written to stderr. The manager backs off before trying again.
    pub const APP_LOAD_ERROR: i32 = 4;
    /// The worker module is from another pyfpm build than the manager. Fatal for the pool.
    pub const VERSION_MISMATCH: i32 = 5;
    /// A request outlived `request_terminate_timeout` and did not stop when told to
    /// (stuck in C code holding the GIL, or the app swallowed the timeout exception):
    /// the worker's watchdog ended the process. The manager replaces it; no back-off.
    pub const REQUEST_TIMEOUT_KILLED: i32 = 6;
}

/// Lines the worker writes on its control socket (one message per line, ASCII).
pub mod control {
    /// Written once the app is imported and the worker is about to accept.
    pub const READY: &str = "ready";
    /// `retire REASON` (REASON: `max_requests` or `max_memory`): the worker reached a
    /// recycling limit after finishing a request. It keeps serving until the manager has
    /// started its replacement and sends SIGQUIT, so the pool's capacity never dips.
    pub const RETIRE: &str = "retire";
    /// `slowlog N` followed by exactly N bytes: one slow-log entry (a header line with
    /// pool, pid, method and URI, then the Python stack), for the manager to append to
    /// the pool's `slowlog` file (the manager owns every log file, so USR1 reopens them).
    pub const SLOWLOG: &str = "slowlog";
    /// `exited PID code N` / `exited PID signal N [core]`: written by a pool's zygote
    /// only, when one of the workers it forked has ended (see [`crate::zygote`]).
    pub const EXITED: &str = "exited";
}

/// One inherited listening socket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListenerFd {
    /// File descriptor number in the worker (inherited, not close-on-exec).
    pub fd: i32,
    /// The address as written in the config, for log messages.
    pub address: String,
    /// `true` for a Unix-domain socket, `false` for TCP.
    pub unix: bool,
}

/// Everything a worker needs to serve one pool.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkerSpec {
    /// Must equal [`PROTOCOL_VERSION`] of the worker module.
    pub protocol: u32,
    /// The manager's [`BUILD_ID`]; the worker refuses to run under another build.
    pub build: String,
    /// Pool name, for log lines.
    pub pool: String,
    /// The worker's slot in its pool (0-based), stable across respawns of that slot.
    pub slot: u32,
    /// The WSGI application, `module:callable` (callable may be a dotted attribute path).
    pub app: String,
    /// Directories prepended to `sys.path` before the app is imported.
    pub python_path: Vec<PathBuf>,
    /// URL prefix the app is mounted at: `""` for the root, else `/prefix` without a
    /// trailing slash. Decides the SCRIPT_NAME / PATH_INFO split.
    pub mount: String,
    /// Listening sockets to accept on.
    pub listeners: Vec<ListenerFd>,
    /// The worker's end of a Unix socketpair to the manager (see [`control`]). End of
    /// file on it means the manager is gone: the worker finishes its request and exits.
    pub control_fd: i32,
    /// FCGI_MAX_CONNS to report to GET_VALUES: how many connections the whole pool
    /// holds at once (its workers plus the manager's parked idle connections).
    pub fcgi_max_conns: u32,
    /// FCGI_MAX_REQS to report to GET_VALUES: how many requests the whole pool serves
    /// at once (its worker count times `threads`).
    pub fcgi_max_reqs: u32,
    /// Request threads in this worker (`threads`, at least 1). With more than one the
    /// worker multiplexes (FCGI_MPXS_CONNS=1): up to this many requests per connection.
    pub threads: u32,
    /// Send end of the pool's PARK socketpair (SOCK_SEQPACKET, shared by the pool's
    /// workers; `-1` = no parking): an idle kept-alive connection is handed to the
    /// manager as one message, payload = a marker byte then the bytes already read from
    /// it, SCM_RIGHTS = the connection.
    pub park_fd: i32,
    /// Receive end of the pool's DISPATCH socketpair (SOCK_SEQPACKET, shared by the
    /// pool's workers; `-1` = none): parked connections whose next request has arrived,
    /// in the same message format as [`WorkerSpec::park_fd`].
    pub dispatch_fd: i32,
    /// Largest accepted total size of a request's FCGI_PARAMS stream, in bytes.
    pub request_params_max: usize,
    /// The pool's shared-memory scoreboard (a memfd; `-1` for none), which the worker
    /// maps and updates in slot [`WorkerSpec::slot`].
    pub scoreboard_fd: i32,
    /// Ask to retire (see [`control::RETIRE`]) after this many requests; 0 = never. The
    /// manager has already applied `pm.max_requests_jitter`.
    pub max_requests: u64,
    /// Ask to retire when the worker's RSS, checked after each request, exceeds this
    /// many bytes; 0 = never.
    pub max_memory: u64,
    /// `request_terminate_timeout` in milliseconds (0 = none): the worker stops a request
    /// that runs longer, answers 504 when it still can, and logs the Python stack.
    pub request_terminate_timeout_ms: u64,
    /// `request_slowlog_timeout` in milliseconds (0 = none): the worker sends a slow-log
    /// entry (see [`control::SLOWLOG`]) for a request still running after this long.
    pub request_slowlog_timeout_ms: u64,
    /// FastCGI role numbers served (1 responder, 2 authorizer, 3 filter); a
    /// BEGIN_REQUEST for any other role is refused with FCGI_UNKNOWN_ROLE.
    pub roles: Vec<u16>,
    /// `request_body_max` in bytes (0 = no limit): a larger CONTENT_LENGTH is answered
    /// 413 before the app runs; a longer body without one fails `wsgi.input`.
    pub request_body_max: u64,
    /// `request_read_timeout` in milliseconds (0 = none): a request still arriving that
    /// sends nothing for this long has its connection closed.
    pub request_read_timeout_ms: u64,
    /// `-1` for a worker. Otherwise this process is the pool's zygote (`preload`): it
    /// imports the app, then forks a worker for each request on this SOCK_SEQPACKET
    /// socket (see [`zygote`]); each worker's spec is this one with the request's slot,
    /// `max_requests` and control fd, and `zygote_fd` -1.
    pub zygote_fd: i32,
}

impl WorkerSpec {
    /// Serialise for [`SPEC_ENV`].
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("WorkerSpec is always serialisable")
    }

    /// Parse from [`SPEC_ENV`].
    pub fn from_json(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marker_names_the_protocol_version() {
        assert!(BUILD_MARKER.starts_with(BUILD_MARKER_PREFIX));
        assert!(BUILD_MARKER.ends_with(&format!("/protocol={PROTOCOL_VERSION}")));
    }

    #[test]
    fn spec_round_trips_through_json() {
        let spec = WorkerSpec {
            protocol: PROTOCOL_VERSION,
            build: BUILD_ID.into(),
            pool: "www".into(),
            slot: 2,
            app: "app:application".into(),
            python_path: vec!["/srv/app".into()],
            mount: "/blog".into(),
            listeners: vec![ListenerFd {
                fd: 5,
                address: "127.0.0.1:9000".into(),
                unix: false,
            }],
            control_fd: 7,
            fcgi_max_conns: 4100,
            fcgi_max_reqs: 4,
            threads: 1,
            park_fd: 9,
            dispatch_fd: 10,
            request_params_max: 1 << 20,
            scoreboard_fd: 8,
            max_requests: 500,
            max_memory: 256 << 20,
            request_terminate_timeout_ms: 30_000,
            request_slowlog_timeout_ms: 5_000,
            roles: vec![1, 3],
            request_body_max: 1 << 20,
            request_read_timeout_ms: 30_000,
            zygote_fd: -1,
        };
        assert_eq!(WorkerSpec::from_json(&spec.to_json()).unwrap(), spec);
    }
}
