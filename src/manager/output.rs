//! Workers' stdout and stderr, turned into log lines.
//!
//! Lines of the form `<N>text`, N a syslog severity digit, are the worker core's own
//! messages and are logged at that level as `[pool www] child 1234: text`. Anything else
//! is the app's output, logged at NOTICE as
//! `[pool www] child 1234 said into stderr: "text"` (PHP-FPM's `catch_workers_output`
//! wording). A line longer than [`MAX_LINE`] is split so a worker that never writes a
//! newline cannot make the manager buffer without bound.

use tokio::io::{AsyncRead, AsyncReadExt};
use tracing::Level;

/// Longest line logged as one entry; longer ones are split.
pub const MAX_LINE: usize = 8 * 1024;

/// Splits a byte stream into lines of at most [`MAX_LINE`] bytes (sans-I/O).
#[derive(Debug, Default)]
pub struct LineSplitter {
    buf: Vec<u8>,
}

impl LineSplitter {
    /// Feed bytes; returns the complete lines (without `\n` or a trailing `\r`).
    pub fn push(&mut self, mut data: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        while !data.is_empty() {
            let room = MAX_LINE - self.buf.len();
            let window = &data[..data.len().min(room)];
            match window.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    self.buf.extend_from_slice(&window[..i]);
                    out.push(self.take());
                    data = &data[i + 1..];
                }
                None => {
                    self.buf.extend_from_slice(window);
                    data = &data[window.len()..];
                    if self.buf.len() == MAX_LINE {
                        out.push(self.take());
                    }
                }
            }
        }
        out
    }

    /// The unterminated rest at end of stream, if any.
    pub fn finish(&mut self) -> Option<String> {
        (!self.buf.is_empty()).then(|| self.take())
    }

    fn take(&mut self) -> String {
        let mut line = std::mem::take(&mut self.buf);
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        String::from_utf8_lossy(&line).into_owned()
    }
}

/// The tracing level for a syslog severity digit (0 emerg ... 7 debug).
pub fn syslog_level(digit: u8) -> Level {
    match digit {
        0..=3 => Level::ERROR,
        4 => Level::WARN,
        5 | 6 => Level::INFO,
        _ => Level::DEBUG,
    }
}

/// Split a worker line into (level, text) when it is a worker-core message `<N>text`.
pub fn parse_core_line(line: &str) -> Option<(Level, &str)> {
    let b = line.as_bytes();
    if b.len() >= 3 && b[0] == b'<' && b[2] == b'>' && (b'0'..=b'7').contains(&b[1]) {
        Some((syslog_level(b[1] - b'0'), &line[3..]))
    } else {
        None
    }
}

/// Log `message` at a level chosen at run time.
pub fn log_at(level: Level, message: std::fmt::Arguments<'_>) {
    match level {
        Level::ERROR => tracing::error!("{message}"),
        Level::WARN => tracing::warn!("{message}"),
        Level::INFO => tracing::info!("{message}"),
        Level::DEBUG => tracing::debug!("{message}"),
        _ => tracing::trace!("{message}"),
    }
}

/// Log one line a worker wrote on `stream` (`"stdout"` or `"stderr"`).
pub fn log_worker_line(pool: &str, pid: i32, stream: &str, line: &str) {
    match parse_core_line(line) {
        Some((level, text)) => log_at(level, format_args!("[pool {pool}] child {pid}: {text}")),
        None => tracing::info!("[pool {pool}] child {pid} said into {stream}: \"{line}\""),
    }
}

/// Read `reader` to end of file, logging each line.
pub async fn pump<R: AsyncRead + Unpin>(
    mut reader: R,
    pool: String,
    pid: i32,
    stream: &'static str,
) {
    let mut splitter = LineSplitter::default();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                for line in splitter.push(&buf[..n]) {
                    log_worker_line(&pool, pid, stream, &line);
                }
            }
        }
    }
    if let Some(rest) = splitter.finish() {
        log_worker_line(&pool, pid, stream, &rest);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_reassembled_across_chunks() {
        let mut s = LineSplitter::default();
        assert!(s.push(b"Trace").is_empty());
        assert_eq!(
            s.push(b"back\r\n  File \"x\"\nrest"),
            ["Traceback", "  File \"x\""]
        );
        assert_eq!(s.push(b"\n\n"), ["rest", ""]);
        assert_eq!(s.finish(), None);
        s.push(b"no newline");
        assert_eq!(s.finish().as_deref(), Some("no newline"));
    }

    #[test]
    fn an_endless_line_is_split_not_buffered() {
        let mut s = LineSplitter::default();
        let lines = s.push(&vec![b'x'; MAX_LINE * 2 + 5]);
        assert_eq!(lines.len(), 2);
        assert!(lines.iter().all(|l| l.len() == MAX_LINE));
        assert_eq!(s.finish().map(|r| r.len()), Some(5));
    }

    #[test]
    fn invalid_utf8_is_replaced_not_fatal() {
        let mut s = LineSplitter::default();
        assert_eq!(s.push(b"caf\xe9\n"), ["caf\u{fffd}"]);
    }

    #[test]
    fn core_messages_carry_a_syslog_level() {
        assert_eq!(
            parse_core_line("<3>cannot import app"),
            Some((Level::ERROR, "cannot import app"))
        );
        assert_eq!(parse_core_line("<4>w"), Some((Level::WARN, "w")));
        assert_eq!(parse_core_line("<6>i"), Some((Level::INFO, "i")));
        assert_eq!(parse_core_line("<7>d"), Some((Level::DEBUG, "d")));
        assert_eq!(parse_core_line("<8>app text"), None);
        assert_eq!(parse_core_line("<html>"), None);
        assert_eq!(parse_core_line("<3"), None);
    }
}
