//! pyfpm's configuration.
//!
//! A main YAML file (global directives plus an `include` glob, default `pools.d/*.yaml`
//! relative to the main file) and any number of pool files, each holding one or more
//! pools. Every directive is declared once, with its type, default and documentation, in
//! [`directives::DIRECTIVES`]; the loader's known keys, suggestions and defaults and the
//! man page's directive list come from that table, and tests check that the bundled
//! `pools.d/www.yaml` and `contrib/pyfpm.yaml` mention every directive they should.
//!
//! Loading never stops at the first problem: [`load`] returns every [`Diagnostic`] it
//! found, each with `file:line:column`, so `pyfpm --test-config` can report them all.
//!
//! Module map:
//! - [`directives`]: the directive table (name, scope, type, default, doc) and the man
//!   page section generated from it.
//! - [`yaml`]: reading YAML files into a tree that keeps each node's position and raw
//!   text (why not serde: see there).
//! - [`values`]: parsers for durations, sizes, modes, listen addresses, `${ENV}`.
//! - `load`: the loader: main file, includes, pools, cross-pool checks.
//! - [`python`]: running a pool's interpreter to check its version and import its app.

pub mod directives;
mod load;
pub mod python;
pub mod values;
pub mod yaml;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

/// A position in a config file.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Location {
    /// The file.
    pub file: PathBuf,
    /// 1-based line; 0 when the diagnostic concerns the whole file (then only the
    /// file is displayed).
    pub line: usize,
    /// 1-based column (in characters); 0 with `line` 0.
    pub column: usize,
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.line == 0 {
            write!(f, "{}", self.file.display())
        } else {
            write!(f, "{}:{}:{}", self.file.display(), self.line, self.column)
        }
    }
}

/// One problem found in the configuration. Displays as `file:line:column: message`
/// (or `file: message` / `message` when the position is unknown).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    /// Where the problem is, when known.
    pub location: Option<Location>,
    /// What is wrong, phrased for a sysadmin, with a hint where one helps.
    pub message: String,
}

impl std::fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.location {
            Some(loc) => write!(f, "{loc}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

/// Every problem found while loading, in file order.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{} configuration error(s)", .0.len())]
pub struct ConfigErrors(pub Vec<Diagnostic>);

/// How thoroughly [`load`] checks things outside the files themselves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum CheckLevel {
    /// Files only: syntax, types, values, cross-pool conflicts, and each pool's
    /// interpreter (exists, runs, is CPython >= 3.9, is not free-threaded).
    Interpreters,
    /// Also import each pool's app in a throwaway interpreter (`-tt`).
    ImportApps,
}

/// Log verbosity of the manager (PHP-FPM's `log_level` values).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    /// Only failures that stop something.
    Alert,
    /// Errors.
    Error,
    /// Warnings.
    Warning,
    /// Normal operational messages (the default).
    Notice,
    /// Everything.
    Debug,
}

/// Where a pool listens.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ListenAddr {
    /// A Unix-domain socket path (absolute after loading).
    Unix(PathBuf),
    /// A TCP address. A bare port (`9000`) is `[::]:9000`, dual-stack.
    Tcp(SocketAddr),
}

impl std::fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListenAddr::Unix(p) => write!(f, "unix:{}", p.display()),
            ListenAddr::Tcp(a) => write!(f, "{a}"),
        }
    }
}

/// Process-management mode, with the settings that only that mode uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PmMode {
    /// Exactly `pm.max_children` workers at all times.
    Static,
    /// Between `min_spare_servers` and `max_spare_servers` idle workers, at most
    /// `pm.max_children` in all.
    Dynamic {
        /// Workers started at start-up (resolved: the derived default when unset).
        start_servers: u32,
        /// Fewer idle workers than this: spawn.
        min_spare_servers: u32,
        /// More idle workers than this: retire one per second.
        max_spare_servers: u32,
        /// Most workers spawned in one maintenance tick (the per-tick count doubles
        /// from 1 up to this while the pool stays short of idle workers).
        max_spawn_rate: u32,
    },
    /// No worker until a connection waits; workers idle longer than the timeout retire.
    Ondemand {
        /// How long a worker may stay idle before it is retired.
        process_idle_timeout: std::time::Duration,
        /// Most workers spawned in one maintenance tick.
        max_spawn_rate: u32,
    },
}

impl PmMode {
    /// The word used in the file (`static`, `dynamic`, `ondemand`).
    pub fn name(&self) -> &'static str {
        match self {
            PmMode::Static => "static",
            PmMode::Dynamic { .. } => "dynamic",
            PmMode::Ondemand { .. } => "ondemand",
        }
    }
}

/// A pool's recycling limits, request limits and timeouts, process cap and served
/// roles. Zero means "off" everywhere (PHP-FPM's convention); the [`Default`] is what a
/// pool without these directives gets: every limit off and no slow log, except the 30 s
/// `request_read_timeout`, with all three roles served.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolLimits {
    /// `pm.max_requests`: a worker retires after this many requests (0 = never).
    pub max_requests: u64,
    /// `pm.max_requests_jitter`: up to this many requests added to `max_requests`, drawn
    /// per worker, so workers started together do not all retire together.
    pub max_requests_jitter: u64,
    /// `pm.max_memory`: a worker whose RSS after a request exceeds this many bytes
    /// retires (0 = off).
    pub max_memory: u64,
    /// `pm.max_lifetime`: a worker older than this is replaced (zero = off).
    pub max_lifetime: std::time::Duration,
    /// `request_terminate_timeout`: a request running longer is stopped (zero = off).
    pub request_terminate_timeout: std::time::Duration,
    /// `request_slowlog_timeout`: a request running longer has its stack written to
    /// `slowlog` (zero = off).
    pub request_slowlog_timeout: std::time::Duration,
    /// `slowlog`: the slow-request log file (absolute after loading).
    pub slowlog: Option<PathBuf>,
    /// `process.max`: most processes of this pool at once, replacements included; 0 =
    /// `pm.max_children` plus the same again for replacements that overlap the workers
    /// they replace.
    pub process_max: u32,
    /// `request_body_max`: largest request body accepted, in bytes (0 = no limit).
    pub request_body_max: u64,
    /// `request_read_timeout`: a request that is still arriving and sends nothing for
    /// this long has its connection closed (zero = wait forever).
    pub request_read_timeout: std::time::Duration,
    /// `roles`: the FastCGI roles served; others are refused with FCGI_UNKNOWN_ROLE.
    pub roles: Roles,
}

impl Default for PoolLimits {
    fn default() -> Self {
        PoolLimits {
            max_requests: 0,
            max_requests_jitter: 0,
            max_memory: 0,
            max_lifetime: std::time::Duration::ZERO,
            request_terminate_timeout: std::time::Duration::ZERO,
            request_slowlog_timeout: std::time::Duration::ZERO,
            slowlog: None,
            process_max: 0,
            request_body_max: 0,
            request_read_timeout: std::time::Duration::from_secs(30),
            roles: Roles::default(),
        }
    }
}

/// The FastCGI roles a pool serves (the `roles` directive). The [`Default`] is all three.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Roles {
    /// FCGI_RESPONDER: an ordinary request.
    pub responder: bool,
    /// FCGI_AUTHORIZER: an access check on behalf of the web server.
    pub authorizer: bool,
    /// FCGI_FILTER: a request with a data stream (FCGI_DATA) to transform.
    pub filter: bool,
}

impl Default for Roles {
    fn default() -> Self {
        Roles {
            responder: true,
            authorizer: true,
            filter: true,
        }
    }
}

impl Roles {
    /// The FastCGI role numbers served (1 responder, 2 authorizer, 3 filter).
    pub fn numbers(&self) -> Vec<u16> {
        [(self.responder, 1), (self.authorizer, 2), (self.filter, 3)]
            .into_iter()
            .filter_map(|(on, n)| on.then_some(n))
            .collect()
    }
}

/// Global (`main file`) settings.
#[derive(Clone, Debug, PartialEq)]
pub struct GlobalConfig {
    /// Pid file to write (none by default).
    pub pid: Option<PathBuf>,
    /// Error log file; `None` logs to stderr.
    pub error_log: Option<PathBuf>,
    /// Manager log verbosity.
    pub log_level: LogLevel,
    /// Run in the background (overridden by `-F` / `-D`).
    pub daemonize: bool,
    /// How long a graceful stop (SIGQUIT) waits for in-flight requests before the
    /// workers are killed (a duration such as `30s` in the file).
    pub process_control_timeout: std::time::Duration,
    /// Explicit path of the worker extension module; `None` = find the one built with
    /// this manager.
    pub worker_module: Option<PathBuf>,
    /// `emergency_restart_threshold`: this many workers dying on SIGSEGV or SIGBUS
    /// within `emergency_restart_interval` restart every worker (0 = off).
    pub emergency_restart_threshold: u32,
    /// `emergency_restart_interval` (zero = off; both must be set).
    pub emergency_restart_interval: std::time::Duration,
    /// `process.max`: most worker processes across all pools (0 = unlimited).
    pub process_max: u32,
    /// `systemd_interval`: how often the manager sends a STATUS line to systemd (zero =
    /// never).
    pub systemd_interval: std::time::Duration,
}

/// One pool: a set of identical workers running one app behind one or more sockets.
#[derive(Clone, Debug, PartialEq)]
pub struct PoolConfig {
    /// Pool name (unique).
    pub name: String,
    /// Where the pool is defined.
    pub location: Location,
    /// Listening addresses (at least one).
    pub listen: Vec<ListenAddr>,
    /// Owner of the Unix socket(s); `None` = the manager's user.
    pub listen_owner: Option<String>,
    /// Group of the Unix socket(s); `None` = the manager's group.
    pub listen_group: Option<String>,
    /// Mode of the Unix socket(s) (default 0660).
    pub listen_mode: u32,
    /// listen(2) backlog (default 511).
    pub listen_backlog: i32,
    /// User the workers run as (only when the manager is root).
    pub user: Option<String>,
    /// Group the workers run as.
    pub group: Option<String>,
    /// Process-management mode.
    pub pm: PmMode,
    /// Number of workers (static), or the most workers at once (dynamic, ondemand).
    pub max_children: u32,
    /// `threads`: request threads per worker (1 = one request at a time).
    pub threads: u32,
    /// WSGI app, `module:callable`.
    pub app: String,
    /// `preload`: import the app once in a zygote and fork workers from it.
    pub preload: bool,
    /// The interpreter to run: resolved from `python`, `virtualenv` or `python3` on PATH.
    pub python: PathBuf,
    /// The virtualenv, when one was given (its `bin/` is put first on PATH and
    /// VIRTUAL_ENV is set for the workers).
    pub virtualenv: Option<PathBuf>,
    /// Extra `sys.path` entries (absolute after loading).
    pub python_path: Vec<PathBuf>,
    /// URL prefix the app is mounted at: `""` or `/prefix` (no trailing slash).
    pub mount: String,
    /// Working directory of the workers (absolute after loading).
    pub chdir: Option<PathBuf>,
    /// Clear the manager's environment before applying `env` (default true).
    pub clear_env: bool,
    /// Environment for the workers (after `${VAR}` interpolation).
    pub env: BTreeMap<String, String>,
    /// `request_params_max`: largest FCGI_PARAMS stream accepted per request, in bytes
    /// (a size such as `1M` in the file).
    pub request_params_max: usize,
    /// Recycling, timeouts, slow log and the process cap.
    pub limits: PoolLimits,
}

/// A loaded, validated configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// The main file it was loaded from.
    pub main_file: PathBuf,
    /// Every file read, main file first (for messages).
    pub files: Vec<PathBuf>,
    /// Global settings.
    pub global: GlobalConfig,
    /// Pools in file order (include files sorted by name).
    pub pools: Vec<PoolConfig>,
    /// Non-fatal findings (e.g. an include glob matching nothing).
    pub warnings: Vec<Diagnostic>,
}

/// Load and validate the configuration rooted at `main_file`, reporting every problem.
/// Has no side effects: creates no files, sockets or directories.
/// Runs each distinct pool interpreter once (`-E -s -S`, 10 s deadline) and, with
/// [`CheckLevel::ImportApps`], one throwaway interpreter per pool; `${VAR}` and the PATH
/// used to find `python3` come from this process's environment.
pub fn load(main_file: &std::path::Path, level: CheckLevel) -> Result<Config, ConfigErrors> {
    load::load_with(main_file, level, &|name| std::env::var(name).ok())
}

/// [`load`] with another environment for `${VAR}` interpolation and the PATH search
/// (tests, and callers that validate a config for another environment).
pub fn load_with_env(
    main_file: &std::path::Path,
    level: CheckLevel,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigErrors> {
    load::load_with(main_file, level, env)
}
