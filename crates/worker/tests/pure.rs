//! Unit tests of the worker core's pure helpers.
//!
//! The extension itself cannot be linked into a test binary (it links no libpython), so
//! the modules that do not touch Python are compiled in here directly; their own
//! `#[cfg(test)]` tests run as part of this binary.

#[allow(dead_code)]
#[path = "../src/http.rs"]
mod http;

#[allow(dead_code)]
#[path = "../src/log.rs"]
mod log;

#[allow(dead_code)]
#[path = "../src/control.rs"]
mod control;

#[allow(dead_code)]
#[path = "../src/recycle.rs"]
mod recycle;

#[allow(dead_code)]
#[path = "../src/report.rs"]
mod report;
