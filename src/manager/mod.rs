//! The supervisor.

/// Run the manager until it is told to stop; returns the exit status.
pub fn run(cli: &crate::cli::Cli) -> i32 {
    let _ = cli;
    todo!()
}
