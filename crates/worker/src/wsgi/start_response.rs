//! `start_response(status, headers, exc_info=None)` and the `write(data)` callable it
//! returns (PEP 3333).
//!
//! The status and headers are checked here (raising into the app, which normally turns
//! into a 500) and kept as an encoded CGI header block; it is sent lazily with the first
//! non-empty body chunk, so a later `start_response(..., exc_info)` can still replace it.

use super::op_error;
use super::reuse::Binding;
use crate::conn::{Conn, Shared, lock, try_lock};
use crate::http::{HeaderBlock, validate_status};
use pyo3::exceptions::{PyAssertionError, PyTypeError, PyValueError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyString, PyTuple};
use std::os::raw::c_char;

unsafe extern "C" {
    /// Exported by every CPython 3 but part of the limited API only from 3.10, so
    /// pyo3's abi3-py39 build reads strs through a temporary bytes object and a Rust
    /// copy instead; this returns the str's own UTF-8 (for ASCII, its data itself).
    fn PyUnicode_AsUTF8AndSize(
        unicode: *mut ffi::PyObject,
        size: *mut ffi::Py_ssize_t,
    ) -> *const c_char;
}

/// The UTF-8 text of `text`, borrowed from the str object (no copy for ASCII).
fn utf8<'a>(text: &'a Bound<'_, PyString>) -> PyResult<&'a str> {
    let mut size: ffi::Py_ssize_t = 0;
    // SAFETY: a valid str; the result is NULL with an exception set (a lone surrogate),
    // or `size` bytes of UTF-8 owned by the str, alive as long as the borrow of `text`.
    unsafe {
        let data = PyUnicode_AsUTF8AndSize(text.as_ptr(), &mut size);
        if data.is_null() {
            return Err(PyErr::fetch(text.py()));
        }
        let bytes = std::slice::from_raw_parts(data.cast::<u8>(), size as usize);
        Ok(std::str::from_utf8_unchecked(bytes))
    }
}

/// Run `f`, which must not block (no I/O), on the connection. Waiting for its mutex
/// happens only with the GIL released (the rule of [`crate::conn`]); but when the mutex
/// is free, as it nearly always is, it is taken at once: releasing and retaking the GIL
/// twice per call cost more than the rest of a `start_response`.
pub(crate) fn with_conn<R: Send>(
    py: Python<'_>,
    conn: &Shared,
    f: impl FnOnce(&mut Conn) -> R + Send,
) -> R {
    match try_lock(conn) {
        Some(mut guard) => f(&mut guard),
        None => py.detach(|| f(&mut lock(conn))),
    }
}

/// The type name of `obj`, for error messages.
pub(crate) fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type()
        .name()
        .map_or_else(|_| "?".to_string(), |n| n.to_string())
}

/// The `start_response` callable of one request.
#[pyclass(module = "pyfpm_worker", name = "StartResponse", frozen)]
pub struct StartResponse {
    /// The connection and the request this callable belongs to.
    binding: Binding,
    /// The `write` callable every call returns.
    write: Py<Write>,
}

impl StartResponse {
    /// The `start_response` of the request `seq` on `conn`.
    pub fn new(py: Python<'_>, conn: Shared, seq: u64) -> PyResult<Self> {
        let write = Py::new(
            py,
            Write {
                binding: Binding::new(conn.clone(), seq),
            },
        )?;
        Ok(StartResponse {
            binding: Binding::new(conn, seq),
            write,
        })
    }

    /// Its request (see [`super::reuse`]).
    pub fn binding(&self) -> &Binding {
        &self.binding
    }

    /// The `write` callable it returns.
    pub fn write(&self) -> &Py<Write> {
        &self.write
    }
}

/// Check the status and headers and encode them as a CGI header block.
fn encode_headers(
    status: &Bound<'_, PyAny>,
    headers: &Bound<'_, PyAny>,
) -> PyResult<(Vec<u8>, u16)> {
    let status = status.cast::<PyString>().map_err(|_| {
        PyTypeError::new_err(format!(
            "start_response(): status must be a str like '200 OK', not {}",
            type_name(status)
        ))
    })?;
    let status = utf8(status)?;
    let code = validate_status(status)
        .map_err(|e| PyValueError::new_err(format!("start_response(): {e}: {status:?}")))?;
    let mut block = HeaderBlock::new(status);
    if let Ok(list) = headers.cast_exact::<PyList>() {
        // The usual `[(name, value), ...]`: indexed directly, without an iterator.
        for item in list.iter() {
            push_header(&mut block, &item)?;
        }
        return Ok((block.finish(), code));
    }
    if headers.is_instance_of::<PyString>() || headers.is_instance_of::<PyBytes>() {
        return Err(PyTypeError::new_err(
            "start_response(): headers must be a list of (name, value) tuples, not a string",
        ));
    }
    let items = headers.try_iter().map_err(|_| {
        PyTypeError::new_err(format!(
            "start_response(): headers must be a list of (name, value) tuples, not {}",
            type_name(headers)
        ))
    })?;
    for item in items {
        push_header(&mut block, &item?)?;
    }
    Ok((block.finish(), code))
}

/// Check one `(name, value)` header and add it to `block`.
fn push_header(block: &mut HeaderBlock, item: &Bound<'_, PyAny>) -> PyResult<()> {
    let bad_item = || {
        PyTypeError::new_err(format!(
            "start_response(): each header must be a (name, value) tuple of two str, got {}",
            item.repr()
                .map_or_else(|_| type_name(item), |r| r.to_string())
        ))
    };
    let (name, value) = if let Ok(pair) = item.cast_exact::<PyTuple>() {
        // The usual exact tuple: its items read in place.
        if pair.len() != 2 {
            return Err(bad_item());
        }
        (pair.get_item(0)?, pair.get_item(1)?)
    } else {
        if item.is_instance_of::<PyString>() || item.len().ok() != Some(2) {
            return Err(bad_item());
        }
        (item.get_item(0)?, item.get_item(1)?)
    };
    let (Ok(name), Ok(value)) = (name.cast::<PyString>(), value.cast::<PyString>()) else {
        return Err(bad_item());
    };
    block
        .push(utf8(name)?, utf8(value)?)
        .map_err(|e| PyValueError::new_err(format!("start_response(): {e}")))
}

#[pymethods]
impl StartResponse {
    #[pyo3(signature = (status, headers, exc_info=None))]
    fn __call__(
        &self,
        py: Python<'_>,
        status: &Bound<'_, PyAny>,
        headers: &Bound<'_, PyAny>,
        exc_info: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Py<Write>> {
        let (conn, seq) = self.binding.get();
        let conn = &conn;
        let (started, sent) =
            with_conn(py, conn, |conn| conn.response_state(seq)).map_err(op_error)?;
        let has_exc_info = match exc_info {
            Some(info) => info.is_truthy()?,
            None => false,
        };
        if let (true, Some(info)) = (has_exc_info && sent, exc_info) {
            // Too late to change the response: re-raise the app's exception so it unwinds
            // the app (PEP 3333), and the server truncates the response.
            let value = info.get_item(1)?;
            let tb = info.get_item(2)?;
            let value = if tb.is_none() {
                value
            } else {
                value.call_method1("with_traceback", (tb,))?
            };
            return Err(PyErr::from_value(value));
        }
        if started && !has_exc_info {
            return Err(PyAssertionError::new_err(
                "start_response() called a second time without exc_info",
            ));
        }
        let (block, code) = encode_headers(status, headers)?;
        with_conn(py, conn, |conn| conn.set_headers(seq, block, code)).map_err(op_error)?;
        Ok(self.write.clone_ref(py))
    }
}

/// The `write(data)` callable: sends body bytes at once (the old imperative API).
#[pyclass(module = "pyfpm_worker", name = "Write", frozen)]
pub struct Write {
    /// The connection and the request this callable belongs to.
    binding: Binding,
}

impl Write {
    /// Its request (see [`super::reuse`]).
    pub fn binding(&self) -> &Binding {
        &self.binding
    }
}

#[pymethods]
impl Write {
    fn __call__(&self, py: Python<'_>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let data = data.cast::<PyBytes>().map_err(|_| {
            PyTypeError::new_err(format!(
                "write() takes bytes, not {} (encode text first)",
                type_name(data)
            ))
        })?;
        let bytes = data.as_bytes();
        let (conn, seq) = self.binding.get();
        py.detach(|| lock(&conn).send_body(seq, bytes, true))
            .map_err(op_error)
    }
}
