//! Logging set-up for the manager: a `tracing` subscriber whose lines look like
//! PHP-FPM's error log, written to stderr or to `error_log`.
//!
//! ```text
//! [21-Nov-2026 05:18:11.123] NOTICE: [pool www] child 1234 started
//! ```
//!
//! Levels map from tracing as ERROR → `ERROR`, WARN → `WARNING`, INFO → `NOTICE`,
//! DEBUG/TRACE → `DEBUG`. The timestamp is local time with milliseconds.
//!
//! The file target is an `Arc<Mutex<File>>` behind a [`LogSink`] so that SIGUSR1 can
//! [`LogSink::reopen`] it after log rotation without rebuilding the subscriber. Each event
//! is formatted into one buffer and written with one `write` on an `O_APPEND` file, so
//! lines from the manager never interleave.

use pyfpm_config::LogLevel;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use tracing::level_filters::LevelFilter;
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::registry::LookupSpan;

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// `error_log` cannot be opened for appending.
    #[error("cannot open the error log {path} for appending: {source}")]
    Open {
        /// The configured `error_log`.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// A global subscriber was already installed (a bug in the caller).
    #[error("logging was already initialised")]
    AlreadyInitialised,
}

/// Where log lines go: stderr, or an append-mode file that can be reopened.
#[derive(Clone, Debug)]
pub struct LogSink {
    /// Shared with every writer handed to the subscriber, so a reopen is seen at once.
    target: Arc<Mutex<Target>>,
}

#[derive(Debug)]
enum Target {
    Stderr,
    File {
        /// Kept to reopen the same path on SIGUSR1.
        path: PathBuf,
        file: File,
    },
}

fn open_append(path: &Path) -> Result<File, LogError> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|source| LogError::Open {
            path: path.to_path_buf(),
            source,
        })
}

impl LogSink {
    /// A sink writing to the process's stderr.
    pub fn stderr() -> Self {
        LogSink {
            target: Arc::new(Mutex::new(Target::Stderr)),
        }
    }

    /// A sink appending to `path` (created if missing; the file is close-on-exec, as
    /// every file Rust opens, so workers never inherit it).
    pub fn file(path: &Path) -> Result<Self, LogError> {
        let file = open_append(path)?;
        Ok(LogSink {
            target: Arc::new(Mutex::new(Target::File {
                path: path.to_path_buf(),
                file,
            })),
        })
    }

    /// The log file path, or `None` for stderr.
    pub fn path(&self) -> Option<PathBuf> {
        match &*self.lock() {
            Target::Stderr => None,
            Target::File { path, .. } => Some(path.clone()),
        }
    }

    /// Reopen the log file (after rotation). A no-op for stderr. On failure the old file
    /// stays in use, so no line is lost.
    pub fn reopen(&self) -> Result<(), LogError> {
        let mut target = self.lock();
        if let Target::File { path, file } = &mut *target {
            *file = open_append(path)?;
        }
        Ok(())
    }

    /// Write to `path` from now on (`None`: stderr), for a reload that changed
    /// `error_log`. The new file is opened first: on failure nothing changes.
    pub fn retarget(&self, path: Option<&Path>) -> Result<(), LogError> {
        let new = match path {
            Some(path) => Target::File {
                path: path.to_path_buf(),
                file: open_append(path)?,
            },
            None => Target::Stderr,
        };
        *self.lock() = new;
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, Target> {
        // A panic while holding the lock cannot leave a half-updated Target behind (each
        // field is replaced whole), so a poisoned lock is still good to use.
        self.target.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Write for LogSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut *self.lock() {
            Target::Stderr => io::stderr().write(buf),
            Target::File { file, .. } => file.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut *self.lock() {
            Target::Stderr => io::stderr().flush(),
            Target::File { file, .. } => file.flush(),
        }
    }
}

impl<'a> MakeWriter<'a> for LogSink {
    type Writer = LogSink;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// The tracing level filter for a configured `log_level`. `alert` shows errors only:
/// tracing has no level above ERROR.
pub fn level_filter(level: LogLevel) -> LevelFilter {
    match level {
        LogLevel::Alert | LogLevel::Error => LevelFilter::ERROR,
        LogLevel::Warning => LevelFilter::WARN,
        LogLevel::Notice => LevelFilter::INFO,
        LogLevel::Debug => LevelFilter::DEBUG,
    }
}

/// PHP-FPM's name for a tracing level.
pub fn level_name(level: &Level) -> &'static str {
    match *level {
        Level::ERROR => "ERROR",
        Level::WARN => "WARNING",
        Level::INFO => "NOTICE",
        Level::DEBUG | Level::TRACE => "DEBUG",
    }
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// Broken-down local time, the part of `struct tm` a log line needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    /// Full year, e.g. 2026.
    pub year: i32,
    /// 0-based month.
    pub month: usize,
    /// Day of month, 1-based.
    pub day: i32,
    /// Hour 0–23.
    pub hour: i32,
    /// Minute.
    pub minute: i32,
    /// Second (60 on a leap second).
    pub second: i32,
    /// Milliseconds 0–999.
    pub millis: u32,
}

impl Stamp {
    /// The current local time (via `localtime_r`; UTC if that fails).
    pub fn now() -> Stamp {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let secs = now.as_secs() as libc::time_t;
        // SAFETY: localtime_r only writes the tm we hand it; a zeroed tm is a valid value.
        let mut tm: libc::tm = unsafe { std::mem::zeroed() };
        let ok = unsafe { !libc::localtime_r(&secs, &mut tm).is_null() };
        if !ok {
            unsafe { libc::gmtime_r(&secs, &mut tm) };
        }
        Stamp {
            year: tm.tm_year + 1900,
            month: (tm.tm_mon.clamp(0, 11)) as usize,
            day: tm.tm_mday,
            hour: tm.tm_hour,
            minute: tm.tm_min,
            second: tm.tm_sec,
            millis: now.subsec_millis(),
        }
    }
}

impl std::fmt::Display for Stamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:02}-{}-{:04} {:02}:{:02}:{:02}.{:03}",
            self.day,
            MONTHS[self.month.min(11)],
            self.year,
            self.hour,
            self.minute,
            self.second,
            self.millis
        )
    }
}

/// The event format: `[dd-Mon-yyyy hh:mm:ss.mmm] LEVEL: message key=value...`.
#[derive(Clone, Copy, Debug, Default)]
pub struct PhpFpmFormat;

impl<S, N> FormatEvent<S, N> for PhpFpmFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        write!(
            writer,
            "[{}] {}: ",
            Stamp::now(),
            level_name(event.metadata().level())
        )?;
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

/// The installed subscriber's level, changeable by a reload ([`set_level`]).
static LEVEL: std::sync::OnceLock<
    tracing_subscriber::reload::Handle<LevelFilter, tracing_subscriber::Registry>,
> = std::sync::OnceLock::new();

/// Install the global subscriber writing to `sink` at `level`.
pub fn init(sink: &LogSink, level: LogLevel) -> Result<(), LogError> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let (filter, handle) = tracing_subscriber::reload::Layer::new(level_filter(level));
    tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .event_format(PhpFpmFormat)
                .with_writer(sink.clone()),
        )
        .try_init()
        .map_err(|_| LogError::AlreadyInitialised)?;
    let _ = LEVEL.set(handle);
    Ok(())
}

/// Change the level of the subscriber [`init`] installed (a reload's new `log_level`).
/// False when there is none.
pub fn set_level(level: LogLevel) -> bool {
    LEVEL
        .get()
        .is_some_and(|h| h.reload(level_filter(level)).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subscriber(sink: &LogSink) -> impl Subscriber + Send + Sync {
        tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(level_filter(LogLevel::Notice))
            .event_format(PhpFpmFormat)
            .with_writer(sink.clone())
            .finish()
    }

    #[test]
    fn stamp_formats_like_php_fpm() {
        let s = Stamp {
            year: 2026,
            month: 10,
            day: 1,
            hour: 5,
            minute: 8,
            second: 9,
            millis: 7,
        };
        assert_eq!(s.to_string(), "01-Nov-2026 05:08:09.007");
    }

    #[test]
    fn levels_map_to_php_fpm_names_and_filters() {
        assert_eq!(level_name(&Level::WARN), "WARNING");
        assert_eq!(level_name(&Level::INFO), "NOTICE");
        assert_eq!(level_filter(LogLevel::Alert), LevelFilter::ERROR);
        assert_eq!(level_filter(LogLevel::Debug), LevelFilter::DEBUG);
    }

    #[test]
    fn lines_go_to_the_file_and_survive_a_reopen_after_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("error.log");
        let sink = LogSink::file(&path).unwrap();
        assert_eq!(sink.path().as_deref(), Some(path.as_path()));
        tracing::subscriber::with_default(subscriber(&sink), || {
            tracing::info!("[pool www] child {} started", 42);
            tracing::debug!("filtered out at notice");
            std::fs::rename(&path, dir.path().join("error.log.1")).unwrap();
            sink.reopen().unwrap();
            tracing::warn!("after rotation");
        });
        let old = std::fs::read_to_string(dir.path().join("error.log.1")).unwrap();
        let new = std::fs::read_to_string(&path).unwrap();
        let re_line = |text: &str, level: &str, msg: &str| {
            let line = text.lines().next().unwrap_or_default().to_string();
            assert!(line.starts_with('['), "{line}");
            let (stamp, rest) = line[1..].split_once("] ").unwrap();
            assert_eq!(stamp.len(), "01-Nov-2026 05:08:09.007".len(), "{line}");
            assert_eq!(rest, format!("{level}: {msg}"));
        };
        assert_eq!(old.lines().count(), 1, "{old}");
        re_line(&old, "NOTICE", "[pool www] child 42 started");
        re_line(&new, "WARNING", "after rotation");
    }
}
