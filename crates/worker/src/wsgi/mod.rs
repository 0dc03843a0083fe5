//! Running one request through the WSGI app (PEP 3333).
//!
//! [`run_request`] builds the environ and the request's Python objects, calls the app,
//! streams each chunk of its result as it is yielded, always calls the result's
//! `close()`, and turns every failure into the right ending:
//!
//! - nothing sent yet (app exception, bad status or headers, a non-bytes body item,
//!   body before `start_response`): a plain `500 Internal Server Error`, the traceback
//!   in the worker's log, a one-line summary on FCGI_STDERR, END_REQUEST as usual;
//! - headers already sent: the error is logged, a summary goes out on FCGI_STDERR, then
//!   an invalid record header, and the connection is closed without END_REQUEST, so the
//!   web server fails the response instead of passing it on as complete (see
//!   `Conn::abort_response`);
//! - the web server went away (EPIPE, ECONNRESET): iteration stops, `close()` runs, an
//!   info line is logged and the connection is dropped;
//! - FCGI_ABORT_REQUEST (noticed while the app reads the body, which then raises
//!   `ConnectionAbortedError`, or before each chunk of a streamed response is sent):
//!   iteration stops, `close()` runs, END_REQUEST is sent and a kept connection stays
//!   usable;
//! - a body over `request_body_max`: answered `413 Content Too Large` before the app
//!   runs when CONTENT_LENGTH says so; otherwise `wsgi.input` raises `OSError` once the
//!   stream grows past the limit and, if the app lets it through before responding, the
//!   answer is the 413;
//! - `request_terminate_timeout` fired (the watchdog raised `RequestTimeout` in the app,
//!   see [`crate::watchdog`]): `close()` runs, then `504 Gateway Timeout` with a short
//!   text body if nothing was sent yet, else the response is aborted as above.

pub mod environ;
pub mod errors;
pub mod file_wrapper;
pub mod input;
pub mod reuse;
pub mod start_response;

use crate::conn::{Conn, ConnError, Ending, OpError, Shared, lock, try_lock};
use crate::log::{Level, log};
use crate::monitor::Monitor;
use crate::serve::Worker;
use pyo3::exceptions::{
    PyBrokenPipeError, PyConnectionAbortedError, PyConnectionResetError, PyKeyboardInterrupt,
    PyOSError, PyRuntimeError, PySystemExit, PyValueError,
};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyDict, PyList, PyTuple};
use scoreboard::SlotState;
use std::io;

/// Turn a failed operation of a request object into the Python exception the app sees.
pub(crate) fn op_error(err: OpError) -> PyErr {
    let msg = err.to_string();
    match err {
        OpError::Finished => PyValueError::new_err(msg),
        OpError::NotStarted => PyRuntimeError::new_err(msg),
        OpError::Aborted => PyConnectionAbortedError::new_err(msg),
        OpError::TooLarge(_) => PyOSError::new_err(msg),
        OpError::Conn(ConnError::Io { source, .. })
            if source.kind() == io::ErrorKind::BrokenPipe =>
        {
            PyBrokenPipeError::new_err(msg)
        }
        OpError::Conn(e) if e.is_peer_gone() => PyConnectionResetError::new_err(msg),
        OpError::Conn(_) => PyOSError::new_err(msg),
    }
}

/// What to do with the connection after a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// END_REQUEST was sent and FCGI_KEEP_CONN was set: wait for the next request.
    Keep,
    /// Close the connection.
    Close,
}

/// Why streaming the response stopped early.
enum Failure {
    /// A Python exception: from the app, its iterable, or our checks raised into it.
    App(PyErr),
    /// A contract violation found by the server (non-bytes item, missing
    /// start_response); no Python traceback to show.
    Contract(String),
    /// The web server sent FCGI_ABORT_REQUEST.
    Aborted,
    /// The body exceeded `request_body_max` (CONTENT_LENGTH said so before the app
    /// ran, or wsgi.input found out and the app let the error through).
    TooLarge,
    /// The connection failed.
    Conn(ConnError),
    /// request_terminate_timeout fired before the app was even called.
    TimedOut,
}

impl From<OpError> for Failure {
    fn from(err: OpError) -> Self {
        match err {
            OpError::Aborted => Failure::Aborted,
            OpError::TooLarge(_) => Failure::TooLarge,
            OpError::Conn(e) => Failure::Conn(e),
            OpError::NotStarted => Failure::Contract(
                "the app sent body data before calling start_response()".to_string(),
            ),
            OpError::Finished => Failure::Contract(
                "the request was finished while its response was being sent".to_string(),
            ),
        }
    }
}

/// Labels log lines: the pool and the request.
struct Context<'a> {
    method: &'a str,
    uri: &'a str,
}

impl std::fmt::Display for Context<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.method, self.uri)
    }
}

/// The traceback of `err` as Python prints it, or its one-line form if that fails.
pub(crate) fn format_traceback(py: Python<'_>, err: &PyErr) -> String {
    let formatted = py.import("traceback").and_then(|tb| {
        let lines = tb.call_method1(
            "format_exception",
            (err.get_type(py), err.value(py), err.traceback(py)),
        )?;
        let mut text = String::new();
        for line in lines.try_iter()? {
            text.push_str(&line?.str()?.to_cow()?);
        }
        Ok::<_, PyErr>(text)
    });
    match formatted {
        Ok(text) => text.trim_end_matches('\n').to_string(),
        Err(_) => summary(py, err),
    }
}

/// `ExceptionType: message`, on one line.
fn summary(py: Python<'_>, err: &PyErr) -> String {
    let name = err
        .get_type(py)
        .name()
        .map_or_else(|_| "Exception".to_string(), |n| n.to_string());
    let msg = err
        .value(py)
        .str()
        .map_or_else(|_| String::new(), |s| s.to_string());
    let line = if msg.is_empty() {
        name
    } else {
        format!("{name}: {msg}")
    };
    line.replace(['\r', '\n'], " ")
}

/// Serve request `seq` (its token) of `shared`, whose params are complete, on request
/// thread `thread`, with the scoreboard, the watchdog and the recycling count kept up
/// to date around it.
pub fn run_request(
    py: Python<'_>,
    worker: &Worker,
    thread: usize,
    shared: &Shared,
    seq: u64,
) -> Outcome {
    let (params, role) = {
        let conn = lock(shared);
        match conn
            .request(seq)
            .and_then(|r| Some((r.params.clone()?, r.role)))
        {
            Some(found) => found,
            None => return Outcome::Close,
        }
    };
    let outcome = serve_request(py, worker, thread, shared, params, role, seq);
    worker.monitor.end(thread);
    outcome
}

/// Start the request's scoreboard entry and watchdog timers, with the method, URI and
/// client (REMOTE_ADDR, else the connection's peer) shown on the status page and in
/// slow-log entries.
fn begin(
    worker: &Worker,
    thread: usize,
    shared: &Shared,
    seq: u64,
    (method, uri, client): (&[u8], &[u8], Option<&[u8]>),
) {
    let peer;
    let client = match client {
        Some(client) => client,
        None => {
            peer = lock(shared).peer.clone();
            peer.as_bytes()
        }
    };
    worker
        .monitor
        .begin(thread, method, uri, client, shared, seq);
}

/// The request itself: environ, app call, response, error handling.
fn serve_request(
    py: Python<'_>,
    worker: &Worker,
    thread: usize,
    shared: &Shared,
    params: fastcgi::Params,
    role: fastcgi::Role,
    seq: u64,
) -> Outcome {
    let built = (|| -> PyResult<_> {
        let (input, errors, start) = reuse::request_objects(py, shared, seq)?;
        let (input, errors) = (input.into_any(), errors.into_any());
        let data = match role {
            fastcgi::Role::Filter => {
                Some(Bound::new(py, input::Input::data(shared.clone(), seq))?.into_any())
            }
            _ => None,
        };
        let streams = environ::Streams {
            input: &input,
            data: data.as_ref(),
            errors: &errors,
            file_wrapper: worker.file_wrapper.bind(py),
        };
        let (environ, info) = environ::build(py, &params, role, &worker.spec.mount, streams)?;
        Ok((environ, start, info))
    })();
    let (environ, start, info) = match built {
        Ok(b) => b,
        Err(err) => {
            // Shown and counted all the same, with the raw values.
            let [addr, method, uri] =
                params.get_each([b"REMOTE_ADDR", b"REQUEST_METHOD", b"REQUEST_URI"]);
            let request = (
                method.unwrap_or(b"GET"),
                uri.unwrap_or(b""),
                addr.filter(|a| !a.is_empty()),
            );
            begin(worker, thread, shared, seq, request);
            log(
                Level::Error,
                format!(
                    "cannot build the WSGI environ: {}",
                    format_traceback(py, &err)
                ),
            );
            lock(shared).close();
            return Outcome::Close;
        }
    };
    let request = (info.method.as_bytes(), info.uri.as_bytes(), info.client);
    begin(worker, thread, shared, seq, request);
    lock(shared).start_app(seq, info.content_length, info.is_head());
    let ctx = Context {
        method: &info.method,
        uri: &info.uri,
    };
    let body_max = worker.spec.request_body_max;
    if body_max != 0 && info.content_length.is_some_and(|n| n > body_max) {
        // Refused before the app runs; the body is drained by the normal ending.
        return fail(py, worker, thread, shared, seq, &ctx, Failure::TooLarge);
    }

    let monitor = &worker.monitor;
    // The watchdog may raise RequestTimeout only between enter_app and leave_app: the
    // app's code runs there, and nowhere else is such an exception expected.
    let called = if monitor.enter_app(thread) {
        Some(worker.app.bind(py).call1((environ, start)))
    } else {
        None
    };
    let outcome = match called {
        None => {
            monitor.leave_app(thread);
            Err(Failure::TimedOut)
        }
        Some(Err(err)) => {
            monitor.leave_app(thread);
            Err(Failure::App(err))
        }
        Some(Ok(result)) => {
            let streamed = stream(py, monitor, thread, shared, seq, &result);
            let closed = call_close(&result);
            monitor.leave_app(thread);
            match (streamed, closed) {
                (Err(failure), Err(close_err)) => {
                    log(
                        Level::Error,
                        format!(
                            "{ctx}: the response's close() raised too: {}",
                            format_traceback(py, &close_err)
                        ),
                    );
                    Err(failure)
                }
                (Err(failure), Ok(())) => Err(failure),
                (Ok(body), Err(close_err)) => {
                    // The response is complete; a failing close() is the app's cleanup
                    // problem, not the client's.
                    log(
                        Level::Error,
                        format!(
                            "{ctx}: the response's close() raised: {}",
                            format_traceback(py, &close_err)
                        ),
                    );
                    Ok(body)
                }
                (Ok(body), Ok(())) => Ok(body),
            }
        }
    };
    let result = match outcome {
        Ok(body) => finish(py, shared, seq, &ctx, body.as_ref()),
        Err(failure) => fail(py, worker, thread, shared, seq, &ctx, failure),
    };
    flush_std_streams(py);
    result
}

/// A whole response body at least this long goes from the app's `bytes` object to the
/// socket with the request's last records in one vectored write, instead of through
/// the output buffer (a copy of 64 KiB costs a few microseconds).
const DIRECT_BODY_MIN: usize = 16 * 1024;

/// Iterate the app's result and send each chunk as it comes. A large one-chunk body is
/// returned instead, for [`finish`] to send with END_REQUEST.
fn stream(
    py: Python<'_>,
    monitor: &Monitor,
    thread: usize,
    shared: &Shared,
    seq: u64,
    result: &Bound<'_, PyAny>,
) -> Result<Option<Py<PyBytes>>, Failure> {
    // A one-item list or tuple (the common `[body]`) is the whole response: its bytes
    // can wait in the buffer and leave in one write with END_REQUEST.
    let single = (result.is_exact_instance_of::<PyList>()
        || result.is_exact_instance_of::<PyTuple>())
        && result.len().ok() == Some(1);
    let iter = result.try_iter().map_err(Failure::App)?;
    let mut sent = false;
    for item in iter {
        let item = item.map_err(Failure::App)?;
        let bytes = item.cast::<PyBytes>().map_err(|_| {
            Failure::Contract(format!(
                "the app's response iterable yielded {}, not bytes",
                start_response::type_name(&item)
            ))
        })?;
        let data = bytes.as_bytes();
        if data.is_empty() {
            continue;
        }
        monitor.state(thread, SlotState::Writing);
        if single && data.len() >= DIRECT_BODY_MIN {
            // What sending would check now; the bytes leave with END_REQUEST.
            start_response::with_conn(py, shared, |c| c.may_send(seq))?;
            return Ok(Some(bytes.clone().unbind()));
        }
        if single {
            // Encoded into the output buffer for finish() to send: no I/O, so the
            // GIL is kept when the mutex is free.
            start_response::with_conn(py, shared, |c| c.send_body(seq, data, false))?;
        } else {
            py.detach(|| lock(shared).send_body(seq, data, true))?;
        }
        sent = true;
        monitor.state(thread, SlotState::Running);
    }
    monitor.state(thread, SlotState::Writing);
    if sent {
        // The headers went with the first chunk (or alone, for HEAD).
        return Ok(None);
    }
    py.detach(|| lock(shared).send_headers_if_pending(seq))
        .map(|()| None)
        .map_err(|e| match e {
            OpError::NotStarted => {
                Failure::Contract("the app returned without calling start_response()".to_string())
            }
            other => other.into(),
        })
}

/// The level to log a failed operation at: routine when the peer simply went away.
fn e_level(e: &OpError) -> Level {
    match e {
        OpError::Conn(c) => c.level(),
        _ => Level::Warning,
    }
}

/// Call the result's `close()`, if it has one.
fn call_close(result: &Bound<'_, PyAny>) -> PyResult<()> {
    // A plain list or tuple has none; asking would build an AttributeError to discard.
    if result.is_exact_instance_of::<PyList>() || result.is_exact_instance_of::<PyTuple>() {
        return Ok(());
    }
    if let Some(close) = result.getattr_opt(pyo3::intern!(result.py(), "close"))? {
        close.call0()?;
    }
    Ok(())
}

/// The normal end: `body` (a whole response body [`stream`] left to send), then
/// END_REQUEST, then keep or close the connection. Blocking I/O (draining the body,
/// writing) runs with the GIL released; but a response already in the output buffer,
/// whose request body was read to its end, is first written without blocking, with
/// the GIL kept (see [`crate::conn::finish_now`]), and the GIL is only released if the
/// socket did not take all of it.
fn finish(
    py: Python<'_>,
    shared: &Shared,
    seq: u64,
    ctx: &Context<'_>,
    body: Option<&Py<PyBytes>>,
) -> Outcome {
    if body.is_none()
        && let Some(mut conn) = try_lock(shared)
    {
        match crate::conn::finish_now(&mut conn, seq) {
            Some(Ending::Done(finished)) => return ended(conn, ctx, finished),
            Some(Ending::Flushing(keep)) => {
                drop(conn);
                return py.detach(|| {
                    let mut conn = lock(shared);
                    let finished = conn.flush().map(|()| keep);
                    ended(conn, ctx, finished)
                });
            }
            None => {}
        }
    }
    let body: &[u8] = body.map_or(&[], |b| b.as_bytes(py));
    py.detach(|| finish_detached(shared, seq, ctx, body))
}

fn finish_detached(shared: &Shared, seq: u64, ctx: &Context<'_>, body: &[u8]) -> Outcome {
    let (conn, finished) = crate::conn::finish_request(shared, seq, body);
    ended(conn, ctx, finished)
}

/// Keep or close the connection once a request's end was sent (`finished`: whether it
/// stays open), logging a failure.
fn ended(
    mut conn: std::sync::MutexGuard<'_, Conn>,
    ctx: &Context<'_>,
    finished: Result<bool, ConnError>,
) -> Outcome {
    match finished {
        Ok(true) => Outcome::Keep,
        Ok(false) => {
            conn.close();
            Outcome::Close
        }
        Err(e) => {
            log(
                e.level(),
                format!("{ctx}: {}: {e}; connection closed", conn.peer),
            );
            conn.close();
            Outcome::Close
        }
    }
}

/// End a request that failed.
fn fail(
    py: Python<'_>,
    worker: &Worker,
    thread: usize,
    shared: &Shared,
    seq: u64,
    ctx: &Context<'_>,
    failure: Failure,
) -> Outcome {
    // An exception raised by our own stream objects because the connection failed or
    // the request was aborted is not the app's fault: report the real cause.
    let failure = match failure {
        Failure::App(err) => {
            let conn = lock(shared);
            if let Some(e) = conn.failure() {
                Failure::Conn(e.clone())
            } else if conn.request(seq).is_some_and(|r| r.aborted) {
                Failure::Aborted
            } else if conn.request(seq).is_some_and(|r| r.too_large) {
                Failure::TooLarge
            } else {
                drop(conn);
                Failure::App(err)
            }
        }
        other => other,
    };
    // request_terminate_timeout fired: how the app's code ended decides only the wording.
    let ended = match (&failure, worker.monitor.timed_out(thread)) {
        (Failure::TimedOut, timeout) => Some((timeout.unwrap_or_default(), None)),
        (Failure::App(err), Some(timeout)) => Some((timeout, Some(summary(py, err)))),
        (Failure::Contract(msg), Some(timeout)) => Some((timeout, Some(msg.clone()))),
        _ => None,
    };
    if let Some((timeout, ended_with)) = ended {
        return timed_out(py, worker, thread, shared, seq, ctx, timeout, ended_with);
    }
    let (detail, summary_line) = match failure {
        Failure::Conn(e) => {
            let mut conn = lock(shared);
            log(
                e.level(),
                format!(
                    "{ctx}: {}: {e}; response abandoned, connection closed",
                    conn.peer
                ),
            );
            // Closing only drops the socket: no blocking I/O under the GIL here.
            conn.close();
            return Outcome::Close;
        }
        Failure::Aborted => {
            log(Level::Info, format!("{ctx}: aborted by the web server"));
            return finish(py, shared, seq, ctx, None);
        }
        Failure::TooLarge => {
            return py.detach(|| {
                let mut conn = lock(shared);
                let max = conn.body_max();
                match conn.send_too_large(seq) {
                    Ok(true) => {
                        log(
                            Level::Notice,
                            format!(
                                "{ctx}: request body over request_body_max ({max} bytes); \
                                 answered 413"
                            ),
                        );
                        drop(conn);
                        finish_detached(shared, seq, ctx, &[])
                    }
                    Ok(false) => {
                        log(
                            Level::Notice,
                            format!(
                                "{ctx}: request body over request_body_max ({max} bytes) \
                                 after the response started: the response is aborted"
                            ),
                        );
                        conn.abort_response(
                            seq,
                            b"pyfpm: request body over request_body_max; response aborted\n",
                        );
                        Outcome::Close
                    }
                    Err(e) => {
                        log(
                            e_level(&e),
                            format!("{ctx}: {}: could not send the 413 response: {e}", conn.peer),
                        );
                        conn.close();
                        Outcome::Close
                    }
                }
            });
        }
        Failure::App(err) => {
            if err.is_instance_of::<PyKeyboardInterrupt>(py)
                || err.is_instance_of::<PySystemExit>(py)
            {
                // Ctrl-C or sys.exit() in the app: answer this request, then leave.
                worker.stop.request();
            }
            (
                format!(
                    "unhandled exception in the app:\n{}",
                    format_traceback(py, &err)
                ),
                summary(py, &err),
            )
        }
        Failure::Contract(msg) => (msg.clone(), msg),
        Failure::TimedOut => unreachable!("handled above"),
    };
    py.detach(|| {
        let mut conn = lock(shared);
        match conn.send_internal_error(seq) {
            Ok(true) => {
                log(Level::Error, format!("{ctx}: {detail}"));
                let line = format!(
                    "pyfpm: {} {}: {summary_line} (details in the pool's error log)\n",
                    ctx.method, ctx.uri
                );
                let _ = conn.write_stderr(seq, line.as_bytes());
                drop(conn);
                finish_detached(shared, seq, ctx, &[])
            }
            Ok(false) => {
                log(
                    Level::Error,
                    format!(
                        "{ctx}: {detail}\nthe response headers were already sent: the \
                         response is aborted so the web server sees a truncated response"
                    ),
                );
                let line = format!(
                    "pyfpm: {} {}: {summary_line}; response aborted after its headers were \
                     sent (details in the pool's error log)\n",
                    ctx.method, ctx.uri
                );
                conn.abort_response(seq, line.as_bytes());
                Outcome::Close
            }
            Err(e) => {
                log(Level::Error, format!("{ctx}: {detail}"));
                log(
                    Level::Info,
                    format!(
                        "{ctx}: {}: could not send the error response: {e}",
                        conn.peer
                    ),
                );
                conn.close();
                Outcome::Close
            }
        }
    })
}

/// End a request stopped by request_terminate_timeout: 504 when nothing was sent yet,
/// else abort the response. The watchdog already logged the Python stack; `ended_with`
/// is how the app's code ended (normally `RequestTimeout: ...`).
#[allow(clippy::too_many_arguments)]
fn timed_out(
    py: Python<'_>,
    worker: &Worker,
    thread: usize,
    shared: &Shared,
    seq: u64,
    ctx: &Context<'_>,
    timeout: std::time::Duration,
    ended_with: Option<String>,
) -> Outcome {
    let limit = crate::report::timeout_text(timeout);
    let how = ended_with.map_or_else(
        || "before the app was called".to_string(),
        |s| format!("the app ended with {s}"),
    );
    // Each branch does its I/O first (the web server gets its answer at once), then
    // waits for the watchdog's record with the stack, so that this line follows it.
    let report_then_log = |level: Level, text: String| {
        worker.monitor.wait_timeout_report(thread);
        log(level, text);
    };
    py.detach(|| {
        let mut conn = lock(shared);
        match conn.send_gateway_timeout(seq, timeout) {
            Ok(true) => {
                let line = format!(
                    "pyfpm: {} {}: request timed out after {limit} \
                     (request_terminate_timeout); answered 504\n",
                    ctx.method, ctx.uri
                );
                let _ = conn.write_stderr(seq, line.as_bytes());
                drop(conn);
                let outcome = finish_detached(shared, seq, ctx, &[]);
                report_then_log(
                    Level::Error,
                    format!(
                        "{ctx}: stopped by request_terminate_timeout ({limit}), {how}; \
                         answered 504 Gateway Timeout"
                    ),
                );
                outcome
            }
            Ok(false) => {
                let line = format!(
                    "pyfpm: {} {}: request timed out after {limit} \
                     (request_terminate_timeout); response aborted after its headers \
                     were sent\n",
                    ctx.method, ctx.uri
                );
                conn.abort_response(seq, line.as_bytes());
                drop(conn);
                report_then_log(
                    Level::Error,
                    format!(
                        "{ctx}: stopped by request_terminate_timeout ({limit}), {how}; the \
                         response headers were already sent: the response is aborted"
                    ),
                );
                Outcome::Close
            }
            Err(e) => {
                let peer = conn.peer.clone();
                conn.close();
                drop(conn);
                report_then_log(
                    Level::Error,
                    format!("{ctx}: stopped by request_terminate_timeout ({limit}), {how}"),
                );
                log(
                    Level::Info,
                    format!("{ctx}: {peer}: could not send the 504 response: {e}"),
                );
                Outcome::Close
            }
        }
    })
}

/// Flush Python's `sys.stdout` and `sys.stderr`, so the app's prints of this request
/// reach the pool's log now rather than when a block buffer fills (and, in a preload
/// zygote, so that nothing buffered is written twice after a fork: there the originals
/// are not yet known to be unbuffered, so both are flushed).
pub(crate) fn flush_std_streams(py: Python<'_>) {
    // Looked up in the sys module's dict with interned keys: this runs after every
    // request, and PySys_GetObject would build and hash a new str per lookup.
    let Some(sys) = SYS_DICT
        .get_or_try_init(py, || Ok::<_, PyErr>(py.import("sys")?.dict().unbind()))
        .ok()
        .map(|d| d.bind(py))
    else {
        return;
    };
    let originals = UNBUFFERED_ORIGINALS.get(py);
    for (name, original) in [
        (pyo3::intern!(py, "stdout"), originals.map(|o| &o[0])),
        (pyo3::intern!(py, "stderr"), originals.map(|o| &o[1])),
    ] {
        let Ok(Some(stream)) = sys.get_item(name) else {
            continue;
        };
        if stream.is_none() || original.is_some_and(|o| stream.is(o)) {
            continue;
        }
        let _ = stream.call_method0(pyo3::intern!(py, "flush"));
    }
}

/// The `sys` module's dict (the interpreter's, for its whole life).
static SYS_DICT: PyOnceLock<Py<PyDict>> = PyOnceLock::new();

/// The original `sys.__stdout__` and `sys.__stderr__`, when both write straight through
/// to their fds (the manager starts workers with PYTHONUNBUFFERED=1): while the app has
/// not replaced `sys.stdout` / `sys.stderr` with something else there is nothing to
/// flush after a request. Unset (flush whatever is there) until checked.
static UNBUFFERED_ORIGINALS: PyOnceLock<[Py<PyAny>; 2]> = PyOnceLock::new();

/// At start-up: check that the original `sys.__stdout__` and `sys.__stderr__` buffer
/// nothing (text layer `write_through`, over a raw `FileIO`), which lets the flush after
/// each request skip them.
pub fn note_std_streams(py: Python<'_>) {
    let unbuffered = |name: &str| -> PyResult<Option<Bound<'_, PyAny>>> {
        let stream = py.import("sys")?.getattr(name)?;
        let raw = py.import("io")?.getattr("FileIO")?;
        let through = stream.getattr("write_through")?.is_truthy()?
            && stream.getattr("buffer")?.get_type().is(&raw);
        Ok(through.then_some(stream))
    };
    if let (Ok(Some(out)), Ok(Some(err))) = (unbuffered("__stdout__"), unbuffered("__stderr__")) {
        let _ = UNBUFFERED_ORIGINALS.set(py, [out.unbind(), err.unbind()]);
    }
}
