//! The command line: flags and subcommands, each declared once here with its help text
//! (the man page `man/pyfpm.8` documents the same set), and the dispatch to the manager,
//! the config test and the `request` client.

use crate::exit_code;
use clap::{ArgAction, Parser, Subcommand};
use std::path::PathBuf;

/// Default main config file.
pub const DEFAULT_CONFIG: &str = "/etc/pyfpm/pyfpm.yaml";

/// pyfpm: a FastCGI process manager for Python WSGI apps.
#[derive(Debug, Parser)]
#[command(name = "pyfpm", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// Main configuration file (its `include` glob, default `pools.d/*.yaml`, is relative
    /// to the file's directory).
    #[arg(short = 'c', long = "config", env = "PYFPM_CONFIG", default_value = DEFAULT_CONFIG)]
    pub config: PathBuf,

    /// Test the configuration and exit: 0 when good, 78 with `file:line:column: reason`
    /// for every problem otherwise. Give it twice (`-tt`) to also import each pool's app
    /// in a throwaway interpreter. Creates no sockets, logs or pid files.
    #[arg(short = 't', long = "test-config", action = ArgAction::Count)]
    pub test_config: u8,

    /// Stay in the foreground (overrides `daemonize: true`).
    #[arg(
        short = 'F',
        long = "nodaemonize",
        alias = "foreground",
        conflicts_with = "daemonize"
    )]
    pub foreground: bool,

    /// Run in the background (overrides `daemonize: false`).
    #[arg(short = 'D', long = "daemonize")]
    pub daemonize: bool,

    /// Pid file (overrides `pid:` in the main config).
    #[arg(short = 'g', long = "pid")]
    pub pid: Option<PathBuf>,

    /// Worker extension module to load in every pool (default: the one built with this
    /// manager, found beside the executable).
    #[arg(long = "worker-module", env = crate::worker_module::ENV)]
    pub worker_module: Option<PathBuf>,

    /// Subcommand; without one, pyfpm runs the pools.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Send one FastCGI request and print the response (a health check, like
    /// `cgi-fcgi -bind -connect`). Exits 0 on a response below 500, 1 on a 5xx,
    /// 2 on a connection or protocol failure.
    Request(crate::client::RequestArgs),
}

/// Parse the command line and run; returns the process exit status.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() {
                exit_code::USAGE
            } else {
                exit_code::OK
            };
            let _ = e.print();
            return code;
        }
    };
    match cli.command {
        Some(Command::Request(args)) => crate::client::run(&args),
        None if cli.test_config > 0 => test_config(&cli),
        None => crate::manager::run(&cli),
    }
}

/// `--test-config`: report every problem, or success, on stderr whatever the log level.
fn test_config(cli: &Cli) -> i32 {
    let level = if cli.test_config >= 2 {
        pyfpm_config::CheckLevel::ImportApps
    } else {
        pyfpm_config::CheckLevel::Interpreters
    };
    match pyfpm_config::load(&cli.config, level) {
        Ok(config) => {
            // Warnings do not fail the test; say so, or they read like errors.
            for w in &config.warnings {
                match &w.location {
                    Some(loc) => eprintln!("{loc}: warning: {}", w.message),
                    None => eprintln!("warning: {}", w.message),
                }
            }
            let module = crate::worker_module::locate(
                cli.worker_module.as_deref(),
                config.global.worker_module.as_deref(),
            );
            if let Err(e) = module {
                eprintln!("{}: {e}", cli.config.display());
                return exit_code::CONFIG;
            }
            eprintln!(
                "pyfpm: configuration file {} test is successful ({} pool{})",
                cli.config.display(),
                config.pools.len(),
                if config.pools.len() == 1 { "" } else { "s" }
            );
            exit_code::OK
        }
        Err(errors) => {
            for d in &errors.0 {
                eprintln!("{d}");
            }
            eprintln!(
                "pyfpm: configuration file {} test failed: {} error{}",
                cli.config.display(),
                errors.0.len(),
                if errors.0.len() == 1 { "" } else { "s" }
            );
            exit_code::CONFIG
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
