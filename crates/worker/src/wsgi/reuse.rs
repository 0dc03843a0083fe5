//! The Python objects each request hands the app (`wsgi.input`, `wsgi.errors`,
//! `start_response` and its `write`), reused from one request to the next when the app
//! kept none of them.
//!
//! Making and freeing four objects was about 2k instructions of a small request (pyo3's
//! allocation and deallocation paths), more than a tenth of the server's own work. A
//! request thread keeps the last set it made; the next request takes it over when this
//! cache holds the only reference to each object, which means nothing else can see it
//! (not the app, not a method call in progress: a call holds a reference to its object),
//! and rebinds it to the new request. An object the app kept (a framework holding the
//! environ, a stored `write`) stays bound to its own request for good, and the new
//! request gets new objects. Between requests the kept set holds on to the last
//! connection's state (not its socket: closing a connection releases that), a few
//! dozen KiB at most per request thread.

use super::errors::Errors;
use super::input::Input;
use super::start_response::StartResponse;
use crate::conn::Shared;
use pyo3::prelude::*;
use std::cell::RefCell;
use std::mem::ManuallyDrop;
use std::sync::Mutex;

/// The connection and request (its token, see `conn::Request::token`) a per-request
/// object serves.
#[derive(Debug)]
pub struct Binding(Mutex<(Shared, u64)>);

impl Binding {
    /// Bound to request `seq` of `conn`.
    pub fn new(conn: Shared, seq: u64) -> Binding {
        Binding(Mutex::new((conn, seq)))
    }

    /// The connection and the request token. The lock is never contended: it is only
    /// rebound while nothing else can reach the object.
    pub fn get(&self) -> (Shared, u64) {
        let bound = self.0.lock().unwrap_or_else(|p| p.into_inner());
        (bound.0.clone(), bound.1)
    }

    fn rebind(&self, conn: &Shared, seq: u64) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = (conn.clone(), seq);
    }
}

/// One request's objects.
struct Set {
    input: Py<Input>,
    errors: Py<Errors>,
    start: Py<StartResponse>,
}

/// The objects as the request's code uses them.
type Objects<'py> = (
    Bound<'py, Input>,
    Bound<'py, Errors>,
    Bound<'py, StartResponse>,
);

impl Set {
    /// New objects for request `seq` of `conn`.
    fn new(py: Python<'_>, conn: &Shared, seq: u64) -> PyResult<Set> {
        Ok(Set {
            input: Py::new(py, Input::new(conn.clone(), seq))?,
            errors: Py::new(py, Errors::new(conn.clone(), seq))?,
            start: Py::new(py, StartResponse::new(py, conn.clone(), seq)?)?,
        })
    }

    /// New references to the three, for the request.
    fn bind<'py>(&self, py: Python<'py>) -> Objects<'py> {
        (
            self.input.bind(py).clone(),
            self.errors.bind(py).clone(),
            self.start.bind(py).clone(),
        )
    }
}

thread_local! {
    /// The set the thread made last. ManuallyDrop: never dropped, so no object is
    /// released after the interpreter has finalized at exit.
    static LAST: ManuallyDrop<RefCell<Option<Set>>> =
        const { ManuallyDrop::new(RefCell::new(None)) };
}

/// Only the cache refers to `obj`. The GIL (`_py`) keeps the count from changing under
/// us.
fn unshared<T>(_py: Python<'_>, obj: &Py<T>) -> bool {
    // SAFETY: a live object, read with the GIL held.
    unsafe { pyo3::ffi::Py_REFCNT(obj.as_ptr()) == 1 }
}

/// `wsgi.input`, `wsgi.errors` and `start_response` for request `seq` of `conn`: the
/// thread's previous ones rebound where nothing else holds them, new ones otherwise.
pub fn request_objects<'py>(py: Python<'py>, conn: &Shared, seq: u64) -> PyResult<Objects<'py>> {
    LAST.with(|last| {
        let Ok(mut last) = last.try_borrow_mut() else {
            // Re-entered (nothing does): fresh objects are correct, just slower.
            return Set::new(py, conn, seq).map(|set| set.bind(py));
        };
        let set = match last.take() {
            Some(mut set) => {
                if unshared(py, &set.input) {
                    set.input.get().binding().rebind(conn, seq);
                } else {
                    set.input = Py::new(py, Input::new(conn.clone(), seq))?;
                }
                if unshared(py, &set.errors) {
                    set.errors.get().binding().rebind(conn, seq);
                } else {
                    set.errors = Py::new(py, Errors::new(conn.clone(), seq))?;
                }
                let start = set.start.get();
                if unshared(py, &set.start) && unshared(py, start.write()) {
                    start.binding().rebind(conn, seq);
                    start.write().get().binding().rebind(conn, seq);
                } else {
                    set.start = Py::new(py, StartResponse::new(py, conn.clone(), seq)?)?;
                }
                set
            }
            None => Set::new(py, conn, seq)?,
        };
        let objects = set.bind(py);
        *last = Some(set);
        Ok(objects)
    })
}
