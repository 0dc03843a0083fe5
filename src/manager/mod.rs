//! The supervisor: `pyfpm` without a subcommand.
//!
//! Start-up order matters and is the reason this module exists as a sequence:
//! 1. load the config (every problem reported, exit 78) and find the worker module;
//! 2. set up logging (stderr or `error_log`);
//! 3. check the pid file, then daemonize if asked — before any thread exists;
//! 4. bind every pool's sockets — still single-threaded, because of the umask;
//! 5. write the pid file, start a current-thread tokio runtime and hand over to the
//!    [`supervisor::Supervisor`] loop.
//!
//! Submodules:
//! - [`listeners`]: binding Unix and TCP sockets safely.
//! - [`parking`]: idle kept-alive connections held by the manager, handed to idle workers.
//! - [`spawn`]: starting one worker process (fds, env, privileges, death signal).
//! - [`planner`]: the pure scaling planner (static, dynamic, ondemand).
//! - [`pool`]: per-slot worker state and the pure decisions (what to spawn, back-off,
//!   what an exit means).
//! - [`output`]: worker stdout/stderr to log lines.
//! - [`supervisor`]: the main loop (signals, events, escalation) and graceful reload.
//! - [`daemon`]: fork to the background with a start-up handshake; the pid file.
//! - [`zygote`]: a `preload` pool's zygote: starting it, asking it for workers, the
//!   exits it reports.

pub mod daemon;
pub mod listeners;
pub mod output;
pub mod parking;
pub mod planner;
pub mod pool;
pub mod spawn;
pub mod supervisor;
// systemd: sd_notify (Type=notify) and socket activation (LISTEN_FDS).
pub mod systemd;
#[cfg(test)]
mod test_support;
pub mod zygote;

use crate::cli::Cli;
use crate::exit_code;
use crate::logging::{self, LogSink};
use daemon::{Daemonized, Notifier};
use std::path::PathBuf;

/// Run the manager until it is told to stop; returns the exit status.
pub fn run(cli: &Cli) -> i32 {
    spawn::cloexec_inherited_fds();
    // systemd: take NOTIFY_SOCKET / LISTEN_FDS / WATCHDOG_USEC out of the environment
    // while single-threaded and before daemonizing changes our pid (see systemd.rs).
    systemd::capture_environment();
    let config = match pyfpm_config::load(&cli.config, pyfpm_config::CheckLevel::Interpreters) {
        Ok(config) => config,
        Err(errors) => {
            for d in &errors.0 {
                eprintln!("{d}");
            }
            eprintln!(
                "pyfpm: configuration file {} has {} error{}; not starting",
                cli.config.display(),
                errors.0.len(),
                if errors.0.len() == 1 { "" } else { "s" }
            );
            return exit_code::CONFIG;
        }
    };
    // Same wording as `--test-config`: a warning must not read like an error.
    for w in &config.warnings {
        match &w.location {
            Some(loc) => eprintln!("{loc}: warning: {}", w.message),
            None => eprintln!("warning: {}", w.message),
        }
    }
    let module = match crate::worker_module::locate(
        cli.worker_module.as_deref(),
        config.global.worker_module.as_deref(),
    ) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("pyfpm: {e}");
            return exit_code::CONFIG;
        }
    };
    let daemonize = if cli.foreground {
        false
    } else {
        cli.daemonize || config.global.daemonize
    };
    if daemonize && config.global.error_log.is_none() {
        eprintln!(
            "{}: daemonize is on but no error_log is set: a daemon has nowhere to log; \
             set error_log, or run in the foreground with -F",
            config.main_file.display()
        );
        return exit_code::CONFIG;
    }
    let sink = match &config.global.error_log {
        Some(path) => match LogSink::file(path) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("pyfpm: {e}");
                return exit_code::CONFIG;
            }
        },
        None => LogSink::stderr(),
    };
    if let Err(e) = logging::init(&sink, config.global.log_level) {
        eprintln!("pyfpm: {e}");
        return exit_code::SOFTWARE;
    }
    let pid_file: Option<PathBuf> = cli.pid.clone().or_else(|| config.global.pid.clone());
    if let Some(path) = &pid_file {
        if let Err(e) = daemon::check_pid_file(path) {
            return fail(&sink, None, false, &e.to_string());
        }
    }
    let notifier = if daemonize {
        match daemon::daemonize() {
            Ok(Daemonized::Launcher(code)) => return code,
            Ok(Daemonized::Daemon(n)) => Some(n),
            Err(e) => return fail(&sink, None, false, &format!("cannot daemonize: {e}")),
        }
    } else {
        None
    };
    start(config, module, pid_file, cli.pid.is_some(), sink, notifier)
}

/// Report a start-up failure: to the log, to the launcher when daemonized, and to stderr
/// when the log is a file the foreground user may not be watching.
fn fail(sink: &LogSink, notifier: Option<&mut Notifier>, daemonized: bool, message: &str) -> i32 {
    tracing::error!("{message}");
    if let Some(n) = notifier {
        n.failed(message);
    }
    if !daemonized && sink.path().is_some() {
        if message.starts_with("pyfpm ") {
            eprintln!("{message}");
        } else {
            eprintln!("pyfpm: {message}");
        }
    }
    exit_code::SOFTWARE
}

/// Steps 4 and 5: bind, write the pid file, run the supervisor; clean up after it.
fn start(
    config: pyfpm_config::Config,
    module: PathBuf,
    pid_file: Option<PathBuf>,
    from_cli: bool,
    sink: LogSink,
    mut notifier: Option<Notifier>,
) -> i32 {
    let daemonized = notifier.is_some();
    let mut identities = Vec::with_capacity(config.pools.len());
    for pool in &config.pools {
        match spawn::identity(pool) {
            Ok(id) => identities.push(id),
            Err(e) => return fail(&sink, notifier.as_mut(), daemonized, &e.to_string()),
        }
    }
    // systemd: report what its environment held, set the STATUS cadence, and serve
    // the sockets it passed (socket activation) instead of binding those addresses.
    systemd::configure(config.global.systemd_interval);
    let activated = systemd::activated_sockets();
    let listeners = match listeners::bind_all_activated(&config.pools, activated) {
        Ok(l) => l,
        Err(e) => return fail(&sink, notifier.as_mut(), daemonized, &e.to_string()),
    };
    let supervisor = supervisor::Supervisor::new(
        &config,
        listeners,
        identities,
        module,
        sink.clone(),
        supervisor::PidFile {
            path: pid_file.clone(),
            from_cli,
        },
    );
    if let Some(path) = &pid_file {
        if let Err(e) = daemon::write_pid_file(path) {
            supervisor.remove_socket_files();
            return fail(&sink, notifier.as_mut(), daemonized, &e.to_string());
        }
    }
    // Workers are spawned from this thread; a current-thread runtime keeps it that way
    // (PR_SET_PDEATHSIG follows the forking thread, and DESIGN.md forbids forking after
    // a multi-threaded runtime starts).
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            supervisor.remove_socket_files();
            if let Some(path) = &pid_file {
                daemon::remove_pid_file(path);
            }
            return fail(
                &sink,
                notifier.as_mut(),
                daemonized,
                &format!("cannot start the event loop: {e}"),
            );
        }
    };
    tracing::info!(
        "pyfpm {} is running, pid {}",
        env!("CARGO_PKG_VERSION"),
        std::process::id()
    );
    let ran = runtime.block_on(supervisor.run(|| {
        if let Some(n) = notifier.as_mut() {
            n.started();
        }
    }));
    let status = match ran {
        Ok(status) => status,
        Err(e) => fail(
            &sink,
            notifier.as_mut(),
            daemonized,
            &format!("cannot install signal handlers: {e}"),
        ),
    };
    // The supervisor removed the pid file (wherever a reload moved it) and the sockets.
    tracing::info!("exiting, bye-bye!");
    status
}
