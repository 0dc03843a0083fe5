//! `wsgi.errors`: text the app reports about a request. It goes to two places: the
//! worker's stderr (through Python's `sys.stderr`, so it stays in order with the app's
//! other output; the manager puts it in the pool's error log) and the request's
//! FCGI_STDERR stream (the web server logs it). FCGI_STDERR text is buffered until
//! `flush()`, 8 KiB or the end of the request, so a traceback written line by line
//! becomes one web-server log entry.

use super::reuse::Binding;
use crate::conn::{Shared, lock};
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::PyString;

/// The `wsgi.errors` stream of one request.
#[pyclass(module = "pyfpm_worker", name = "Errors", frozen)]
pub struct Errors {
    /// The connection and the request this stream belongs to.
    binding: Binding,
}

impl Errors {
    /// The error stream of the request `seq` on `conn`.
    pub fn new(conn: Shared, seq: u64) -> Self {
        Errors {
            binding: Binding::new(conn, seq),
        }
    }

    /// Its request (see [`super::reuse`]).
    pub fn binding(&self) -> &Binding {
        &self.binding
    }
}

/// Write `text` to Python's `sys.stderr`, ignoring failures (a closed or missing stderr
/// must not turn an app's log call into an exception).
fn to_sys_stderr(py: Python<'_>, text: &Bound<'_, PyString>) {
    if let Ok(stderr) = py.import("sys").and_then(|sys| sys.getattr("stderr")) {
        if !stderr.is_none() {
            let _ = stderr.call_method1("write", (text,));
        }
    }
}

#[pymethods]
impl Errors {
    /// Write a str; returns its length like a text file does.
    fn write(&self, py: Python<'_>, text: &Bound<'_, PyAny>) -> PyResult<usize> {
        let text = text.cast::<PyString>().map_err(|_| {
            PyTypeError::new_err(format!(
                "wsgi.errors.write() takes a str, not {}",
                text.get_type()
                    .name()
                    .map_or_else(|_| "?".to_string(), |n| n.to_string())
            ))
        })?;
        to_sys_stderr(py, text);
        let utf8 = text.to_cow()?;
        let len = utf8.chars().count();
        let (conn, seq) = self.binding.get();
        let bytes = utf8.as_bytes();
        // A finished request or a broken connection only loses the FCGI_STDERR copy;
        // the text already reached the worker's stderr.
        let _ = py.detach(|| lock(&conn).write_stderr(seq, bytes));
        Ok(len)
    }

    /// Write each str of an iterable.
    fn writelines(&self, py: Python<'_>, lines: &Bound<'_, PyAny>) -> PyResult<()> {
        for line in lines.try_iter()? {
            self.write(py, &line?)?;
        }
        Ok(())
    }

    /// Send buffered text to the web server and flush `sys.stderr`.
    fn flush(&self, py: Python<'_>) -> PyResult<()> {
        if let Ok(stderr) = py.import("sys").and_then(|sys| sys.getattr("stderr")) {
            if !stderr.is_none() {
                let _ = stderr.call_method0("flush");
            }
        }
        let (conn, seq) = self.binding.get();
        let _ = py.detach(|| lock(&conn).flush_stderr(seq));
        Ok(())
    }
}
