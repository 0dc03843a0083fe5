//! The worker core's side of the log line protocol (see the crate root): every line the
//! core writes to stderr starts with `<N>`, N a syslog severity digit, so the manager
//! can give it a level, while app output (prints, raw stderr writes) stays unprefixed.
//!
//! Pure formatting lives in [`format_record`] so it can be unit-tested without Python.

use std::fmt::Display;
use std::io::Write;

/// Severity of a worker log line; the value is the syslog severity digit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// `<3>`: something failed (an app exception, a module that cannot load).
    Error = 3,
    /// `<4>`: a peer broke the protocol, a connection failed.
    Warning = 4,
    /// `<5>`: normal but significant (worker start, stop).
    Notice = 5,
    /// `<6>`: routine events worth a line (a client went away mid-response).
    Info = 6,
    /// `<7>`: detail for debugging.
    Debug = 7,
}

/// Format `message` as log lines of `level`: every line (a traceback has many) gets the
/// `<N>` prefix and ends with `\n`. A trailing newline in `message` does not produce an
/// extra empty line; an empty message produces one empty line.
pub fn format_record(level: Level, message: &str) -> String {
    let digit = char::from(b'0' + level as u8);
    let body = message.strip_suffix('\n').unwrap_or(message);
    let mut out = String::with_capacity(body.len() + 8);
    for line in body.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        out.push('<');
        out.push(digit);
        out.push('>');
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Write one log record to the process's stderr (fd 2).
///
/// One `write` call per record, so records from the core never interleave mid-line with
/// whole lines the app writes. Failures are ignored: there is nowhere else to report them.
pub fn log(level: Level, message: impl Display) {
    let text = format_record(level, &message.to_string());
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_line_carries_the_prefix() {
        assert_eq!(
            format_record(Level::Error, "Traceback:\n  File x\nValueError: y\n"),
            "<3>Traceback:\n<3>  File x\n<3>ValueError: y\n"
        );
    }

    #[test]
    fn single_line_and_empty_messages() {
        assert_eq!(format_record(Level::Info, "gone"), "<6>gone\n");
        assert_eq!(format_record(Level::Warning, ""), "<4>\n");
        assert_eq!(format_record(Level::Debug, "a\r\nb"), "<7>a\n<7>b\n");
    }
}
