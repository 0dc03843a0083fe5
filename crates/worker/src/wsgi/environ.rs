//! The PEP 3333 `environ` of a request, built from its FastCGI params.
//!
//! Every param becomes a native str (its bytes decoded as latin-1), except: HTTP_PROXY
//! is dropped (httpoxy), empty CONTENT_LENGTH / CONTENT_TYPE are dropped (a non-numeric
//! CONTENT_LENGTH too), HTTP_CONTENT_LENGTH / HTTP_CONTENT_TYPE are not passed (CGI
//! forbids them; they only fill in a missing CONTENT_*), and SCRIPT_NAME / PATH_INFO are
//! recomputed from the full path and the pool's mount point (see [`crate::http`]).
//! REQUEST_METHOD, SERVER_NAME, SERVER_PORT, SERVER_PROTOCOL and QUERY_STRING always
//! exist, so `wsgiref.validate` accepts the environ even from a minimal client.

use crate::http;
use fastcgi::{Params, Role};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString, PyTuple, PyType};

/// What the driver needs to know about a request besides the environ.
#[derive(Debug)]
pub struct RequestInfo {
    /// REQUEST_METHOD, escaped for log lines (see `http::log_safe`).
    pub method: String,
    /// REQUEST_URI (or the path and query), escaped for log lines.
    pub uri: String,
    /// CONTENT_LENGTH, when present and valid: the most `wsgi.input` returns.
    pub content_length: Option<u64>,
}

impl RequestInfo {
    /// A HEAD request: the body is not sent.
    pub fn is_head(&self) -> bool {
        self.method == "HEAD"
    }
}

/// A native str holding `bytes` decoded as latin-1 (PEP 3333 "bytes in a str").
pub fn latin1<'py>(py: Python<'py>, bytes: &[u8]) -> Bound<'py, PyString> {
    match std::str::from_utf8(bytes) {
        Ok(ascii) if bytes.is_ascii() => PyString::new(py, ascii),
        _ => PyString::new(
            py,
            &bytes.iter().map(|&b| char::from(b)).collect::<String>(),
        ),
    }
}

/// The objects a request's environ refers to, made by the driver.
pub struct Streams<'a, 'py> {
    /// `wsgi.input`.
    pub input: &'a Bound<'py, PyAny>,
    /// `fcgi.data`, for the filter role only.
    pub data: Option<&'a Bound<'py, PyAny>>,
    /// `wsgi.errors`.
    pub errors: &'a Bound<'py, PyAny>,
    /// `wsgi.file_wrapper`.
    pub file_wrapper: &'a Bound<'py, PyType>,
}

/// Build the environ for `params`.
pub fn build<'py>(
    py: Python<'py>,
    params: &Params,
    role: Role,
    mount: &str,
    streams: Streams<'_, 'py>,
) -> PyResult<(Bound<'py, PyDict>, RequestInfo)> {
    let environ = PyDict::new(py);
    let mut script_name = None;
    let mut path_info = None;
    let mut document_uri = None;
    let mut request_uri = None;
    let mut https = None;
    let mut request_scheme = None;
    let mut content_length = None;
    let mut content_type = None;
    let mut http_content_length = None;
    let mut http_content_type = None;
    let mut method = None;
    let mut query_string = None;
    let mut http_host = None;
    let mut has_server_name = false;
    let mut has_server_port = false;
    let mut has_server_protocol = false;

    for (name, value) in params.iter() {
        match name {
            b"HTTP_PROXY" => continue,
            b"SCRIPT_NAME" => script_name = Some(value),
            b"PATH_INFO" => path_info = Some(value),
            b"CONTENT_LENGTH" => content_length = Some(value),
            b"CONTENT_TYPE" => content_type = Some(value),
            b"HTTP_CONTENT_LENGTH" => http_content_length = Some(value),
            b"HTTP_CONTENT_TYPE" => http_content_type = Some(value),
            _ => {
                match name {
                    b"DOCUMENT_URI" => document_uri = Some(value),
                    b"REQUEST_URI" => request_uri = Some(value),
                    b"HTTPS" => https = Some(value),
                    b"REQUEST_SCHEME" => request_scheme = Some(value),
                    b"REQUEST_METHOD" => method = Some(value),
                    b"QUERY_STRING" => query_string = Some(value),
                    b"HTTP_HOST" => http_host = Some(value),
                    b"SERVER_NAME" => has_server_name = true,
                    b"SERVER_PORT" => has_server_port = true,
                    b"SERVER_PROTOCOL" => has_server_protocol = true,
                    _ => {}
                }
                let key = latin1(py, name);
                // nginx before 1.23 sends a repeated request header as repeated HTTP_*
                // params; join them as an HTTP proxy would (RFC 9110 §5.3), cookies with
                // "; ". Other repeated params keep the last value.
                if name.starts_with(b"HTTP_") {
                    if let Some(prev) = environ.get_item(&key)? {
                        let sep = if name == b"HTTP_COOKIE" { "; " } else { ", " };
                        let mut joined: String = prev.extract()?;
                        joined.push_str(sep);
                        joined.extend(value.iter().map(|&b| char::from(b)));
                        environ.set_item(key, joined)?;
                        continue;
                    }
                }
                environ.set_item(key, latin1(py, value))?;
            }
        }
    }

    // CONTENT_LENGTH / CONTENT_TYPE: the CGI ones, else the header copies; empty or
    // (for the length) unparsable values are left out.
    let length_raw = content_length
        .filter(|v| !v.is_empty())
        .or(http_content_length.filter(|v| !v.is_empty()));
    let length = length_raw.and_then(http::parse_content_length);
    if let (Some(raw), Some(_)) = (length_raw, length) {
        environ.set_item(intern!(py, "CONTENT_LENGTH"), latin1(py, raw))?;
    }
    if let Some(ctype) = content_type
        .filter(|v| !v.is_empty())
        .or(http_content_type.filter(|v| !v.is_empty()))
    {
        environ.set_item(intern!(py, "CONTENT_TYPE"), latin1(py, ctype))?;
    }

    let method = match method {
        Some(m) if !m.is_empty() => http::log_safe(m),
        _ => {
            environ.set_item(intern!(py, "REQUEST_METHOD"), intern!(py, "GET"))?;
            "GET".to_string()
        }
    };
    let scheme = http::url_scheme(https, request_scheme);
    if !has_server_name {
        let host = http_host
            .map(host_without_port)
            .filter(|h| !h.is_empty())
            .unwrap_or(b"localhost");
        environ.set_item(intern!(py, "SERVER_NAME"), latin1(py, host))?;
    }
    if !has_server_port {
        let port = if scheme == "https" { "443" } else { "80" };
        environ.set_item(intern!(py, "SERVER_PORT"), port)?;
    }
    if !has_server_protocol {
        environ.set_item(intern!(py, "SERVER_PROTOCOL"), intern!(py, "HTTP/1.1"))?;
    }
    if query_string.is_none() {
        environ.set_item(intern!(py, "QUERY_STRING"), intern!(py, ""))?;
    }

    let full = http::full_path(script_name, path_info, document_uri, request_uri);
    let (script, path) = http::split_mount(&full, mount.as_bytes());
    environ.set_item(intern!(py, "SCRIPT_NAME"), latin1(py, script))?;
    environ.set_item(intern!(py, "PATH_INFO"), latin1(py, path))?;

    environ.set_item(intern!(py, "wsgi.version"), PyTuple::new(py, [1, 0])?)?;
    environ.set_item(intern!(py, "wsgi.url_scheme"), scheme)?;
    environ.set_item(intern!(py, "wsgi.input"), streams.input)?;
    environ.set_item(intern!(py, "wsgi.errors"), streams.errors)?;
    environ.set_item(intern!(py, "wsgi.multithread"), false)?;
    environ.set_item(intern!(py, "wsgi.multiprocess"), true)?;
    environ.set_item(intern!(py, "wsgi.run_once"), false)?;
    // The body always ends at the end of FCGI_STDIN, so apps may read to EOF without a
    // CONTENT_LENGTH (the mod_wsgi / gunicorn convention Werkzeug honours).
    environ.set_item(intern!(py, "wsgi.input_terminated"), true)?;
    environ.set_item(intern!(py, "wsgi.file_wrapper"), streams.file_wrapper)?;
    if let Some(role) = role.as_str() {
        environ.set_item(intern!(py, "FCGI_ROLE"), role)?;
    }
    if let Some(data) = streams.data {
        environ.set_item(intern!(py, "fcgi.data"), data)?;
    }

    let uri = match request_uri {
        Some(uri) if !uri.is_empty() => http::log_safe(uri),
        _ => {
            let mut uri = full.clone();
            if let Some(q) = query_string.filter(|q| !q.is_empty()) {
                uri.push(b'?');
                uri.extend_from_slice(q);
            }
            http::log_safe(&uri)
        }
    };
    Ok((
        environ,
        RequestInfo {
            method,
            uri,
            content_length: length,
        },
    ))
}

/// The host part of a Host header value (`example.com:8080` -> `example.com`,
/// `[::1]:80` -> `[::1]`).
fn host_without_port(host: &[u8]) -> &[u8] {
    if host.starts_with(b"[") {
        return match host.iter().position(|&b| b == b']') {
            Some(end) => &host[..=end],
            None => host,
        };
    }
    match host.iter().rposition(|&b| b == b':') {
        Some(colon) => &host[..colon],
        None => host,
    }
}
