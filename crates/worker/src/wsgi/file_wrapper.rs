//! `wsgi.file_wrapper` (PEP 3333 "Optional Platform-Specific File Handling"): iterates a
//! file-like object in blocks and closes it when the server closes the response.

use pyo3::prelude::*;
use pyo3::types::PyBytes;

/// An iterable over `filelike.read(block_size)` blocks.
#[pyclass(module = "pyfpm_worker", name = "FileWrapper", frozen)]
pub struct FileWrapper {
    /// The wrapped file-like object.
    filelike: Py<PyAny>,
    /// Bytes asked for per `read` call.
    block_size: isize,
}

#[pymethods]
impl FileWrapper {
    #[new]
    #[pyo3(signature = (filelike, block_size=8192))]
    fn new(filelike: Py<PyAny>, block_size: isize) -> Self {
        FileWrapper {
            filelike,
            block_size,
        }
    }

    /// The wrapped object (some frameworks look at it).
    #[getter]
    fn filelike(&self, py: Python<'_>) -> Py<PyAny> {
        self.filelike.clone_ref(py)
    }

    /// The block size given at creation.
    #[getter]
    fn block_size(&self) -> isize {
        self.block_size
    }

    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        let block = self
            .filelike
            .bind(py)
            .call_method1("read", (self.block_size,))?;
        // An empty block (b"" or "") ends the iteration; anything else is passed on and
        // the server's bytes check applies to it like to any other body item.
        let empty = match block.cast::<PyBytes>() {
            Ok(bytes) => bytes.as_bytes().is_empty(),
            Err(_) => !block.is_truthy()?,
        };
        Ok((!empty).then_some(block))
    }

    /// Close the file-like object, if it has a `close()`.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        if let Some(close) = self.filelike.bind(py).getattr_opt("close")? {
            close.call0()?;
        }
        Ok(())
    }
}
