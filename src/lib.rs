//! pyfpm, the manager: a FastCGI process manager for Python WSGI apps.
//!
//! The manager is pure Rust and never links Python. It reads the configuration
//! ([`pyfpm_config`]), binds every pool's sockets, and starts each worker as the pool's
//! own Python interpreter running the worker-core extension (`crates/worker`), passing the
//! sockets as inherited descriptors and a [`pyfpm_ipc::WorkerSpec`] in the environment.
//!
//! Module map:
//! - [`cli`]: command-line flags and subcommands (declared once, with their docs).
//! - [`client`]: a web-server-side FastCGI client: `pyfpm request` (health checks,
//!   debugging) and the integration tests use it.
//! - [`logging`]: tracing set-up: stderr or `error_log`, PHP-FPM-like levels.
//! - [`manager`]: the supervisor: listeners, spawning, the main loop, signals.
//! - [`worker_module`]: finding the worker extension this manager was built with.

pub mod cli;
pub mod client;
pub mod logging;
pub mod manager;
pub mod worker_module;

/// Exit statuses of the `pyfpm` command (sysexits, like php-fpm).
pub mod exit_code {
    /// Success.
    pub const OK: i32 = 0;
    /// Bad command line.
    pub const USAGE: i32 = 64;
    /// Runtime or start-up failure.
    pub const SOFTWARE: i32 = 70;
    /// Configuration error (also `--test-config` failures).
    pub const CONFIG: i32 = 78;
}
