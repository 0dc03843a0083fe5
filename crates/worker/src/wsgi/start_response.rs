//! `start_response(status, headers, exc_info=None)` and the `write(data)` callable it
//! returns (PEP 3333).
//!
//! The status and headers are checked here (raising into the app, which normally turns
//! into a 500) and kept as an encoded CGI header block; it is sent lazily with the first
//! non-empty body chunk, so a later `start_response(..., exc_info)` can still replace it.

use super::op_error;
use crate::conn::{Shared, lock};
use crate::http::{HeaderBlock, validate_status};
use pyo3::exceptions::{PyAssertionError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString};

/// The type name of `obj`, for error messages.
pub(crate) fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type()
        .name()
        .map_or_else(|_| "?".to_string(), |n| n.to_string())
}

/// The `start_response` callable of one request.
#[pyclass(module = "pyfpm_worker", name = "StartResponse", frozen)]
pub struct StartResponse {
    /// The connection of the request.
    conn: Shared,
    /// The request this callable belongs to (its token, see `conn::Request::token`).
    seq: u64,
}

impl StartResponse {
    /// The `start_response` of the request `seq` on `conn`.
    pub fn new(conn: Shared, seq: u64) -> Self {
        StartResponse { conn, seq }
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
    let status = status.to_cow()?;
    let code = validate_status(&status)
        .map_err(|e| PyValueError::new_err(format!("start_response(): {e}: {status:?}")))?;
    let mut block = HeaderBlock::new(&status);
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
        let item = item?;
        let bad_item = || {
            PyTypeError::new_err(format!(
                "start_response(): each header must be a (name, value) tuple of two str, \
                 got {}",
                item.repr()
                    .map_or_else(|_| type_name(&item), |r| r.to_string())
            ))
        };
        if item.is_instance_of::<PyString>() || item.len().ok() != Some(2) {
            return Err(bad_item());
        }
        let name = item.get_item(0)?;
        let value = item.get_item(1)?;
        let (Ok(name), Ok(value)) = (name.cast::<PyString>(), value.cast::<PyString>()) else {
            return Err(bad_item());
        };
        block
            .push(&name.to_cow()?, &value.to_cow()?)
            .map_err(|e| PyValueError::new_err(format!("start_response(): {e}")))?;
    }
    Ok((block.finish(), code))
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
    ) -> PyResult<Write> {
        let (conn, seq) = (&self.conn, self.seq);
        let (started, sent) = py
            .detach(|| lock(conn).response_state(seq))
            .map_err(op_error)?;
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
        py.detach(|| lock(conn).set_headers(seq, block, code))
            .map_err(op_error)?;
        Ok(Write {
            conn: self.conn.clone(),
            seq: self.seq,
        })
    }
}

/// The `write(data)` callable: sends body bytes at once (the old imperative API).
#[pyclass(module = "pyfpm_worker", name = "Write", frozen)]
pub struct Write {
    /// The connection of the request.
    conn: Shared,
    /// The request this callable belongs to.
    seq: u64,
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
        let (conn, seq) = (&self.conn, self.seq);
        py.detach(|| lock(conn).send_body(seq, bytes, true))
            .map_err(op_error)
    }
}
