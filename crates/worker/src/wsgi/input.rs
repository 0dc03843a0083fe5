//! `wsgi.input`: the request body, streamed from FCGI_STDIN as the app reads it.
//!
//! Nothing is buffered up front: each read pulls records off the socket (with the GIL
//! released) until it can answer. With CONTENT_LENGTH the app gets at most that many
//! bytes; without it, everything up to the end of the STDIN stream (Apache relays
//! chunked uploads that way). A read never blocks past the end of the stream.
//!
//! The same class serves the filter role's `environ['fcgi.data']`, streamed from
//! FCGI_DATA, which ends where that stream ends. After FCGI_ABORT_REQUEST every read
//! raises `ConnectionAbortedError`.

use super::op_error;
use super::reuse::Binding;
use crate::conn::{InputStream, Shared, read_input};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList};
use std::mem::MaybeUninit;

/// The `wsgi.input` stream of one request.
#[pyclass(module = "pyfpm_worker", name = "Input", frozen)]
pub struct Input {
    /// The connection the body arrives on, and the request this stream belongs to.
    binding: Binding,
    /// Which FastCGI stream it reads.
    stream: InputStream,
}

impl Input {
    /// The body stream of the request `seq` on `conn`.
    pub fn new(conn: Shared, seq: u64) -> Self {
        Input {
            binding: Binding::new(conn, seq),
            stream: InputStream::Stdin,
        }
    }

    /// The FCGI_DATA stream (filter role) of the request `seq` on `conn`.
    pub fn data(conn: Shared, seq: u64) -> Self {
        Input {
            binding: Binding::new(conn, seq),
            stream: InputStream::Data,
        }
    }

    /// Its request (see [`super::reuse`]).
    pub fn binding(&self) -> &Binding {
        &self.binding
    }

    /// Read (GIL released) and make the bytes object: the body is copied once, from
    /// the received records into the object.
    fn pull<'py>(
        &self,
        py: Python<'py>,
        max: Option<usize>,
        line: bool,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let ((conn, seq), stream) = (self.binding.get(), self.stream);
        let chunks = py
            .detach(|| read_input(&conn, seq, stream, max, line))
            .map_err(op_error)?;
        uninit_bytes(py, chunks.len(), |dst| chunks.copy_to(dst))
    }
}

/// A new bytes object of `len` bytes, all written by `fill`. `PyBytes::new_with` would
/// zero them first: for a 64 KiB body that is as much work as the copy itself.
fn uninit_bytes<'py>(
    py: Python<'py>,
    len: usize,
    fill: impl FnOnce(&mut [MaybeUninit<u8>]),
) -> PyResult<Bound<'py, PyBytes>> {
    let size = ffi::Py_ssize_t::try_from(len)
        .map_err(|_| pyo3::exceptions::PyOverflowError::new_err("body too large"))?;
    // SAFETY: with a NULL source, PyBytes_FromStringAndSize returns a new bytes object
    // (or NULL with an exception set) whose `len` bytes are allocated but not
    // initialised, and ours to write while nothing else refers to the object; `fill`
    // writes all of them (`InputChunks::copy_to` asserts it) before it is returned.
    unsafe {
        let ptr = ffi::PyBytes_FromStringAndSize(std::ptr::null(), size);
        let bytes = Bound::from_owned_ptr_or_err(py, ptr)?.cast_into_unchecked::<PyBytes>();
        let data = ffi::PyBytes_AsString(ptr).cast::<MaybeUninit<u8>>();
        fill(std::slice::from_raw_parts_mut(data, len));
        Ok(bytes)
    }
}

/// A Python size argument: `None` or a negative number means "no limit".
fn limit(size: Option<isize>) -> Option<usize> {
    size.and_then(|s| usize::try_from(s).ok())
}

#[pymethods]
impl Input {
    /// Read at most `size` bytes (all that is left with no size or a negative one).
    #[pyo3(signature = (size=None))]
    fn read<'py>(&self, py: Python<'py>, size: Option<isize>) -> PyResult<Bound<'py, PyBytes>> {
        self.pull(py, limit(size), false)
    }

    /// Read one line, including its `\n`, or at most `size` bytes of it.
    #[pyo3(signature = (size=None))]
    fn readline<'py>(&self, py: Python<'py>, size: Option<isize>) -> PyResult<Bound<'py, PyBytes>> {
        self.pull(py, limit(size), true)
    }

    /// Read lines until the end of the body, or until their total size reaches `hint`.
    #[pyo3(signature = (hint=None))]
    fn readlines<'py>(&self, py: Python<'py>, hint: Option<isize>) -> PyResult<Bound<'py, PyList>> {
        let hint = limit(hint).filter(|&h| h > 0);
        let lines = PyList::empty(py);
        let mut total = 0usize;
        loop {
            let line = self.pull(py, None, true)?;
            if line.as_bytes().is_empty() {
                break;
            }
            total += line.as_bytes().len();
            lines.append(line)?;
            if hint.is_some_and(|h| total >= h) {
                break;
            }
        }
        Ok(lines)
    }

    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let line = self.pull(py, None, true)?;
        Ok((!line.as_bytes().is_empty()).then_some(line))
    }
}
