//! Text of the timeout reports: slow-log entries, request_terminate_timeout log lines and
//! the 504 body. Pure formatting (no Python, no I/O), so it is unit-tested on its own.

use std::fmt::Write as _;
use std::time::Duration;

/// The request a report is about, as raw FastCGI param bytes.
#[derive(Clone, Debug, Default)]
pub struct Label {
    /// REQUEST_METHOD.
    pub method: Vec<u8>,
    /// REQUEST_URI.
    pub uri: Vec<u8>,
    /// REMOTE_ADDR (or the connection's peer when the web server sent none).
    pub client: Vec<u8>,
}

impl Label {
    /// `GET /uri?q (client 1.2.3.4)`, escaped for a log line.
    pub fn describe(&self) -> String {
        format!(
            "{} {} (client {})",
            crate::http::log_safe(&self.method),
            crate::http::log_safe(&self.uri),
            crate::http::log_safe(&self.client)
        )
    }
}

/// A configured timeout as people write it: `30s`, `1.5s`, `250ms`.
pub fn timeout_text(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms % 1000 == 0 {
        format!("{}s", ms / 1000)
    } else {
        let text = format!("{:.3}", d.as_secs_f64());
        format!("{}s", text.trim_end_matches('0'))
    }
}

/// An elapsed time with millisecond precision: `1.295s`.
pub fn elapsed_text(d: Duration) -> String {
    format!("{}.{:03}s", d.as_secs(), d.subsec_millis())
}

/// `21-Nov-2026 05:18:36`: PHP-FPM's log time format, in local time. Month names are
/// spelled out here rather than by strftime, so the app's locale cannot change them.
pub fn php_time(unix_secs: i64) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    // SAFETY: localtime_r writes into `tm`, a valid zeroed struct; `t` is a valid time_t.
    let tm = unsafe {
        let t: libc::time_t = unix_secs as libc::time_t;
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&t, &mut tm).is_null() {
            return format!("@{unix_secs}");
        }
        tm
    };
    format!(
        "{:02}-{}-{} {:02}:{:02}:{:02}",
        tm.tm_mday,
        MONTHS[tm.tm_mon.clamp(0, 11) as usize],
        tm.tm_year + 1900,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    )
}

/// The stack as faulthandler wrote it, tidied: lossy UTF-8, no trailing blank lines,
/// and a note when the dump never came (the main thread could not run the handler).
pub fn stack_text(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    let text = text.trim_end();
    if text.is_empty() {
        "(no Python stack: the faulthandler dump did not arrive in time)".to_string()
    } else {
        text.to_string()
    }
}

/// One slow-log entry, PHP-FPM style: a blank line, a header line, the request, the
/// elapsed time, then the Python stack (most recent call first).
pub fn slowlog_entry(
    unix_secs: i64,
    pool: &str,
    pid: u32,
    label: &Label,
    elapsed: Duration,
    stack: &[u8],
) -> String {
    let mut out = String::with_capacity(256 + stack.len());
    let _ = write!(
        out,
        "\n[{}] [pool {pool}] pid {pid}\nrequest: {}\nelapsed: {}\n{}\n",
        php_time(unix_secs),
        label.describe(),
        elapsed_text(elapsed),
        stack_text(stack)
    );
    out
}

/// The error-log record written when request_terminate_timeout fires (one record, many
/// lines: the stack follows the first line).
pub fn terminate_record(
    pool: &str,
    pid: u32,
    label: &Label,
    timeout: Duration,
    elapsed: Duration,
    stack: &[u8],
) -> String {
    format!(
        "pool {pool}: pid {pid}: {}: request_terminate_timeout ({}) reached after {}; \
         stopping the request. Python stack at that moment:\n{}",
        label.describe(),
        timeout_text(timeout),
        elapsed_text(elapsed),
        stack_text(stack)
    )
}

/// The last record before the watchdog ends a worker whose request would not stop.
pub fn killed_record(
    pool: &str,
    pid: u32,
    label: &Label,
    timeout: Duration,
    elapsed: Duration,
    answered: bool,
) -> String {
    format!(
        "pool {pool}: pid {pid}: {}: still running {} after request_terminate_timeout ({}) \
         asked it to stop (stuck in C code holding the GIL, or the app swallowed \
         pyfpm_worker.RequestTimeout); {}ending the worker (exit code {}) so the manager \
         replaces it",
        label.describe(),
        elapsed_text(elapsed),
        timeout_text(timeout),
        if answered {
            "answered 504 Gateway Timeout; "
        } else {
            ""
        },
        pyfpm_ipc::exit::REQUEST_TIMEOUT_KILLED
    )
}

/// Body of the 504 answer to a request stopped by request_terminate_timeout.
pub fn timeout_body(timeout: Duration) -> String {
    format!("pyfpm: request timed out after {}\n", timeout_text(timeout))
}

/// The whole CGI response (headers and, unless HEAD, body) for a timed-out request.
pub fn gateway_timeout_response(timeout: Duration, head: bool) -> Vec<u8> {
    crate::http::text_response("504 Gateway Timeout", &timeout_body(timeout), head)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn label() -> Label {
        Label {
            method: b"GET".to_vec(),
            uri: b"/slow?q=1".to_vec(),
            client: b"1.2.3.4".to_vec(),
        }
    }

    #[test]
    fn timeouts_read_like_the_config() {
        assert_eq!(timeout_text(Duration::from_secs(30)), "30s");
        assert_eq!(timeout_text(Duration::from_millis(1500)), "1.5s");
        assert_eq!(timeout_text(Duration::from_millis(1250)), "1.25s");
        assert_eq!(timeout_text(Duration::from_millis(250)), "250ms");
        assert_eq!(elapsed_text(Duration::from_millis(1295)), "1.295s");
        assert_eq!(elapsed_text(Duration::from_micros(2_000_400)), "2.000s");
    }

    #[test]
    fn slowlog_entry_layout() {
        let stack = b"Stack (most recent call first):\n  File \"/a.py\", line 3 in app\n\n";
        let e = slowlog_entry(0, "www", 1234, &label(), Duration::from_millis(1295), stack);
        let lines: Vec<&str> = e.split('\n').collect();
        assert_eq!(lines[0], "");
        assert!(lines[1].starts_with('['), "{e}");
        assert!(lines[1].ends_with("] [pool www] pid 1234"), "{e}");
        assert_eq!(lines[2], "request: GET /slow?q=1 (client 1.2.3.4)");
        assert_eq!(lines[3], "elapsed: 1.295s");
        assert_eq!(lines[4], "Stack (most recent call first):");
        assert_eq!(lines[5], "  File \"/a.py\", line 3 in app");
        assert_eq!(lines[6], "");
        assert_eq!(lines.len(), 7);
    }

    #[test]
    fn php_time_shape() {
        // 2026-11-21 05:18:36 UTC; the local zone may shift the hour and day, not the shape.
        let t = php_time(1_795_238_316);
        assert_eq!(t.len(), "21-Nov-2026 05:18:36".len(), "{t}");
        assert_eq!(&t[2..3], "-");
        assert_eq!(&t[6..7], "-");
        assert!(t[3..6].chars().all(|c| c.is_ascii_alphabetic()), "{t}");
    }

    #[test]
    fn reports_name_the_request() {
        let r = terminate_record(
            "www",
            7,
            &label(),
            Duration::from_secs(1),
            Duration::from_millis(1001),
            b"",
        );
        assert!(r.starts_with(
            "pool www: pid 7: GET /slow?q=1 (client 1.2.3.4): request_terminate_timeout (1s) \
             reached after 1.001s;"
        ));
        assert!(r.ends_with("(no Python stack: the faulthandler dump did not arrive in time)"));
        let k = killed_record(
            "www",
            7,
            &label(),
            Duration::from_secs(1),
            Duration::from_secs(3),
            true,
        );
        assert!(k.contains("still running 3.000s after request_terminate_timeout (1s)"));
        assert!(k.contains("; answered 504 Gateway Timeout; ending the worker (exit code 6)"));
    }

    #[test]
    fn gateway_timeout() {
        let r = gateway_timeout_response(Duration::from_secs(30), false);
        let text = String::from_utf8(r).unwrap();
        assert!(text.starts_with("Status: 504 Gateway Timeout\r\n"));
        assert!(text.ends_with("\r\n\r\npyfpm: request timed out after 30s\n"));
        assert!(text.contains("Content-Length: 35\r\n"), "{text}");
        let head = gateway_timeout_response(Duration::from_secs(30), true);
        assert!(head.ends_with(b"\r\n\r\n"));
    }
}
