//! `pyfpm request`: send one FastCGI request to `unix:/path` or `host:port` and print
//! the response.

use clap::Args;

/// Options of `pyfpm request`.
#[derive(Debug, Args)]
pub struct RequestArgs {
    /// Where to connect: `unix:/path/to.sock`, `/path/to.sock`, `host:port` or `[v6]:port`.
    pub address: String,
    /// Request path, with an optional `?query`.
    #[arg(default_value = "/")]
    pub path: String,
}

/// Run the request; returns the exit status.
pub fn run(args: &RequestArgs) -> i32 {
    let _ = args;
    todo!()
}
