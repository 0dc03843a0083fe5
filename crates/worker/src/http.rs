//! Pure HTTP/CGI helpers of the worker: status-line and header validation, the CGI
//! response header block, percent-decoding, the SCRIPT_NAME / PATH_INFO split and the
//! URL scheme. No Python and no I/O here, and no `crate::` paths, so that the unit tests
//! at the bottom can be built into a test binary that does not load the extension
//! (`crates/worker/tests/pure.rs` includes this file).

use std::borrow::Cow;
use std::fmt;

/// Why a WSGI status line was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StatusError {
    /// Not three digits and a space at the start.
    Shape,
    /// The code is below 100.
    CodeOutOfRange(u16),
    /// CR, LF or NUL (or another control character) in the reason phrase.
    ControlCharacter,
    /// A character that cannot be sent as latin-1.
    NotLatin1,
}

impl fmt::Display for StatusError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StatusError::Shape => f.write_str(
                "status must be a 3-digit code, a space and a reason phrase, like '200 OK'",
            ),
            StatusError::CodeOutOfRange(code) => {
                write!(f, "status code {code} is out of range (100-999)")
            }
            StatusError::ControlCharacter => {
                f.write_str("status contains a control character (CR, LF, NUL, ...)")
            }
            StatusError::NotLatin1 => f.write_str("status contains a non-latin-1 character"),
        }
    }
}

/// Check a WSGI status line (`"200 OK"`) and return its code.
pub fn validate_status(status: &str) -> Result<u16, StatusError> {
    let bytes = status.as_bytes();
    if bytes.len() < 4 || !bytes[..3].iter().all(u8::is_ascii_digit) || bytes[3] != b' ' {
        return Err(StatusError::Shape);
    }
    let code = bytes[..3]
        .iter()
        .fold(0u16, |acc, d| acc * 10 + u16::from(d - b'0'));
    if code < 100 {
        return Err(StatusError::CodeOutOfRange(code));
    }
    for c in status.chars() {
        if c.is_control() {
            return Err(StatusError::ControlCharacter);
        }
        if u32::from(c) > 0xFF {
            return Err(StatusError::NotLatin1);
        }
    }
    Ok(code)
}

/// Why a response header was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeaderError {
    /// The name is empty or has a character that is not an HTTP token character.
    BadName(String),
    /// `Status` is set from the status line; a header of that name would be a second one.
    StatusHeader,
    /// CR, LF or NUL in a value (header injection).
    ControlCharacter(String),
    /// A value character above U+00FF.
    NotLatin1(String),
}

impl fmt::Display for HeaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeaderError::BadName(name) => write!(
                f,
                "header name {name:?} is not an HTTP token (letters, digits and !#$%&'*+-.^_`|~)"
            ),
            HeaderError::StatusHeader => f.write_str(
                "a 'Status' header is not allowed: the status comes from the status argument",
            ),
            HeaderError::ControlCharacter(name) => {
                write!(f, "the value of header {name:?} contains CR, LF or NUL")
            }
            HeaderError::NotLatin1(name) => write!(
                f,
                "the value of header {name:?} has a character that is not latin-1 \
                 (encode it, e.g. RFC 8187 or percent-encoding)"
            ),
        }
    }
}

/// RFC 9110 token characters, as a table: checked for every byte of every response
/// header name.
const TCHAR: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'!' | b'#'
                    | b'$'
                    | b'%'
                    | b'&'
                    | b'\''
                    | b'*'
                    | b'+'
                    | b'-'
                    | b'.'
                    | b'^'
                    | b'_'
                    | b'`'
                    | b'|'
                    | b'~'
            );
        b += 1;
    }
    table
};

/// True when `name` is a non-empty HTTP token.
pub fn is_token(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| TCHAR[usize::from(b)])
}

/// Builds the CGI response header block sent on FCGI_STDOUT:
/// `Status: 200 OK\r\n`, each header in order (duplicates kept), then an empty line.
#[derive(Clone, Debug)]
pub struct HeaderBlock {
    buf: Vec<u8>,
}

impl HeaderBlock {
    /// Start a block for a status line already checked by [`validate_status`].
    pub fn new(status: &str) -> Self {
        let mut buf = Vec::with_capacity(256);
        buf.extend_from_slice(b"Status: ");
        push_latin1(&mut buf, status);
        buf.extend_from_slice(b"\r\n");
        HeaderBlock { buf }
    }

    /// Append one header after checking it.
    pub fn push(&mut self, name: &str, value: &str) -> Result<(), HeaderError> {
        if !is_token(name) {
            return Err(HeaderError::BadName(name.to_owned()));
        }
        if name.eq_ignore_ascii_case("status") {
            return Err(HeaderError::StatusHeader);
        }
        // CR, LF and NUL are ASCII, so a byte scan finds them in UTF-8 too.
        if value.bytes().any(|b| matches!(b, b'\r' | b'\n' | b'\0')) {
            return Err(HeaderError::ControlCharacter(name.to_owned()));
        }
        if !value.is_ascii() && value.chars().any(|c| u32::from(c) > 0xFF) {
            return Err(HeaderError::NotLatin1(name.to_owned()));
        }
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.extend_from_slice(b": ");
        push_latin1(&mut self.buf, value);
        self.buf.extend_from_slice(b"\r\n");
        Ok(())
    }

    /// The finished block, with the blank line that ends the headers.
    pub fn finish(mut self) -> Vec<u8> {
        self.buf.extend_from_slice(b"\r\n");
        self.buf
    }
}

/// Append `text` as latin-1. The caller has checked every char is at most U+00FF.
fn push_latin1(out: &mut Vec<u8>, text: &str) {
    if text.is_ascii() {
        // The usual case: ASCII is its own latin-1 encoding, copied in one go.
        out.extend_from_slice(text.as_bytes());
        return;
    }
    // Characters above U+00FF cannot occur (checked by the callers); `as u8` keeps the
    // low byte, which for U+0000..=U+00FF is the latin-1 encoding.
    out.extend(text.chars().map(|c| c as u8));
}

/// A complete CGI response with a short `text/plain` body, for the pages the worker
/// answers itself instead of the app (500, 413, 504). `status` is the status line
/// (`"500 Internal Server Error"`); `head` leaves out the body (a HEAD request).
pub fn text_response(status: &str, body: &str, head: bool) -> Vec<u8> {
    let mut out = format!(
        "Status: {status}\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head {
        out.extend_from_slice(body.as_bytes());
    }
    out
}

/// The response sent when the app failed before anything was sent. The body is short on
/// purpose: the details go to the error log, not to the client.
pub fn internal_error_response(head: bool) -> Vec<u8> {
    text_response("500 Internal Server Error", "Internal Server Error\n", head)
}

/// The response for a request body over `request_body_max` (`max` bytes), sent instead
/// of the app's.
pub fn too_large_response(max: u64, head: bool) -> Vec<u8> {
    let body = format!("Content Too Large: the request body exceeds {max} bytes\n");
    text_response("413 Content Too Large", &body, head)
}

/// The path part of a REQUEST_URI: without the query string or fragment, and without
/// the scheme and authority of an absolute-form target (`http://host/path`).
pub fn request_uri_path(uri: &[u8]) -> &[u8] {
    let end = uri
        .iter()
        .position(|&b| b == b'?' || b == b'#')
        .unwrap_or(uri.len());
    let path = &uri[..end];
    if let Some(scheme_end) = path.windows(3).position(|w| w == b"://") {
        let scheme = &path[..scheme_end];
        if !scheme.is_empty() && scheme.iter().all(|b| b.is_ascii_alphanumeric()) {
            let after = &path[scheme_end + 3..];
            return match after.iter().position(|&b| b == b'/') {
                Some(slash) => &after[slash..],
                None => b"/",
            };
        }
    }
    path
}

/// The request's full URL path (decoded), before it is split at the mount point.
///
/// SCRIPT_NAME + PATH_INFO as sent: stock nginx `include fastcgi_params;` sends the
/// decoded URI path as SCRIPT_NAME and no PATH_INFO, a server configured the CGI way
/// splits it. When both are empty, DOCUMENT_URI (nginx's decoded `$document_uri`), else
/// the percent-decoded path of REQUEST_URI.
pub fn full_path(
    script_name: Option<&[u8]>,
    path_info: Option<&[u8]>,
    document_uri: Option<&[u8]>,
    request_uri: Option<&[u8]>,
) -> Vec<u8> {
    let script_name = script_name.unwrap_or_default();
    let path_info = path_info.unwrap_or_default();
    if !script_name.is_empty() || !path_info.is_empty() {
        let mut full = Vec::with_capacity(script_name.len() + path_info.len());
        full.extend_from_slice(script_name);
        full.extend_from_slice(path_info);
        return full;
    }
    match document_uri {
        Some(doc) if !doc.is_empty() => doc.to_vec(),
        // A `%` not followed by two hex digits stays as it is (as nginx leaves it), so
        // decoding never fails; `+` is not a space in a path.
        _ => percent_encoding::percent_decode(request_uri_path(request_uri.unwrap_or_default()))
            .collect(),
    }
}

/// Split `full` at the pool's mount prefix into `(SCRIPT_NAME, PATH_INFO)`.
///
/// `mount` is `""` (the app is at the root) or `/prefix` without a trailing slash. The
/// prefix only matches whole segments: `/m` matches `/m` and `/m/x`, not `/mx`. A path
/// outside the mount gets `SCRIPT_NAME = ""` and the whole path as PATH_INFO.
pub fn split_mount<'a>(full: &'a [u8], mount: &[u8]) -> (&'a [u8], &'a [u8]) {
    if !mount.is_empty() && full.starts_with(mount) {
        let rest = &full[mount.len()..];
        if rest.is_empty() || rest[0] == b'/' {
            return (&full[..mount.len()], rest);
        }
    }
    (&[], full)
}

/// `wsgi.url_scheme`: `https` when the HTTPS param is `on` or `1` (any case), or
/// REQUEST_SCHEME is `https`; else `http`.
pub fn url_scheme(https: Option<&[u8]>, request_scheme: Option<&[u8]>) -> &'static str {
    let https_on = https.is_some_and(|v| v.eq_ignore_ascii_case(b"on") || v == b"1");
    let scheme_https = request_scheme.is_some_and(|v| v.eq_ignore_ascii_case(b"https"));
    if https_on || scheme_https {
        "https"
    } else {
        "http"
    }
}

/// Parse CONTENT_LENGTH: ASCII digits only (no sign, no spaces), fitting in a u64.
/// `None` means "absent or unusable", and the body is then read to the end of FCGI_STDIN.
pub fn parse_content_length(value: &[u8]) -> Option<u64> {
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    value.iter().try_fold(0u64, |acc, d| {
        acc.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// Text from the wire made safe for a log line: invalid UTF-8 replaced, control
/// characters written as `\xNN`, so a request cannot forge or split log lines.
/// Printable ASCII, the usual method and URI, is borrowed as it is.
pub fn log_safe(bytes: &[u8]) -> Cow<'_, str> {
    if bytes.iter().all(|&b| (0x20..0x7f).contains(&b)) {
        if let Ok(text) = std::str::from_utf8(bytes) {
            return Cow::Borrowed(text);
        }
    }
    let text = String::from_utf8_lossy(bytes);
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            out.push_str(&format!("\\x{:02x}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines() {
        assert_eq!(validate_status("200 OK"), Ok(200));
        assert_eq!(validate_status("999 Custom"), Ok(999));
        assert_eq!(validate_status("404 "), Ok(404));
        assert_eq!(validate_status("200"), Err(StatusError::Shape));
        assert_eq!(validate_status("200OK"), Err(StatusError::Shape));
        assert_eq!(validate_status("20x OK"), Err(StatusError::Shape));
        assert_eq!(
            validate_status("099 Low"),
            Err(StatusError::CodeOutOfRange(99))
        );
        assert_eq!(
            validate_status("200 OK\r\nX: y"),
            Err(StatusError::ControlCharacter)
        );
        assert_eq!(validate_status("200 \u{20ac}"), Err(StatusError::NotLatin1));
        assert_eq!(validate_status("200 Caf\u{e9}"), Ok(200));
    }

    #[test]
    fn header_block_keeps_order_and_duplicates() {
        let mut block = HeaderBlock::new("200 OK");
        block.push("Content-Type", "text/plain").unwrap();
        block.push("Set-Cookie", "a=1").unwrap();
        block.push("Set-Cookie", "b=2").unwrap();
        block.push("X-Latin", "caf\u{e9}").unwrap();
        assert_eq!(
            block.finish(),
            b"Status: 200 OK\r\nContent-Type: text/plain\r\nSet-Cookie: a=1\r\n\
              Set-Cookie: b=2\r\nX-Latin: caf\xe9\r\n\r\n"
        );
    }

    #[test]
    fn bad_headers_are_refused() {
        let mut block = HeaderBlock::new("200 OK");
        assert!(matches!(block.push("", "x"), Err(HeaderError::BadName(_))));
        assert!(matches!(
            block.push("A B", "x"),
            Err(HeaderError::BadName(_))
        ));
        assert!(matches!(
            block.push("A:", "x"),
            Err(HeaderError::BadName(_))
        ));
        assert!(matches!(
            block.push("X\n", "x"),
            Err(HeaderError::BadName(_))
        ));
        assert_eq!(
            block.push("status", "200 OK"),
            Err(HeaderError::StatusHeader)
        );
        assert!(matches!(
            block.push("X", "a\r\nInjected: 1"),
            Err(HeaderError::ControlCharacter(_))
        ));
        assert!(matches!(
            block.push("X", "a\0"),
            Err(HeaderError::ControlCharacter(_))
        ));
        assert!(matches!(
            block.push("X", "\u{20ac}"),
            Err(HeaderError::NotLatin1(_))
        ));
        // Nothing refused was appended.
        assert_eq!(block.finish(), b"Status: 200 OK\r\n\r\n");
    }

    #[test]
    fn request_uri_path_is_percent_decoded() {
        let decoded = |uri: &[u8]| full_path(None, None, None, Some(uri));
        assert_eq!(decoded(b"/a%20b"), b"/a b");
        assert_eq!(decoded(b"/caf%C3%A9"), b"/caf\xc3\xa9");
        assert_eq!(decoded(b"/%2f%2F"), b"///");
        assert_eq!(decoded(b"/100%"), b"/100%");
        assert_eq!(decoded(b"/%4"), b"/%4");
        assert_eq!(decoded(b"/%zz%41"), b"/%zzA");
        assert_eq!(decoded(b"a+b"), b"a+b");
        assert_eq!(decoded(b""), b"");
    }

    #[test]
    fn request_uri_paths() {
        assert_eq!(request_uri_path(b"/a/b?x=1#f"), b"/a/b");
        assert_eq!(request_uri_path(b"/a#f?x"), b"/a");
        assert_eq!(request_uri_path(b"http://h:80/p?q"), b"/p");
        assert_eq!(request_uri_path(b"https://h"), b"/");
        assert_eq!(request_uri_path(b"/x/http://y"), b"/x/http://y");
        assert_eq!(request_uri_path(b""), b"");
    }

    #[test]
    fn full_path_sources() {
        // Stock nginx fastcgi_params: SCRIPT_NAME is the decoded path, no PATH_INFO.
        assert_eq!(
            full_path(Some(b"/a b"), None, None, Some(b"/a%20b?q")),
            b"/a b"
        );
        // A CGI-style split is joined again.
        assert_eq!(full_path(Some(b"/app"), Some(b"/x"), None, None), b"/app/x");
        assert_eq!(full_path(Some(b""), Some(b"/x"), None, None), b"/x");
        // Neither: DOCUMENT_URI, then REQUEST_URI decoded.
        assert_eq!(
            full_path(Some(b""), Some(b""), Some(b"/doc"), Some(b"/r")),
            b"/doc"
        );
        assert_eq!(full_path(None, None, Some(b""), Some(b"/r%41?x")), b"/rA");
        assert_eq!(full_path(None, None, None, None), b"");
    }

    #[test]
    fn mount_split() {
        assert_eq!(split_mount(b"/x/y", b""), (&b""[..], &b"/x/y"[..]));
        assert_eq!(split_mount(b"/m", b"/m"), (&b"/m"[..], &b""[..]));
        assert_eq!(split_mount(b"/m/", b"/m"), (&b"/m"[..], &b"/"[..]));
        assert_eq!(split_mount(b"/m/a/b", b"/m"), (&b"/m"[..], &b"/a/b"[..]));
        assert_eq!(split_mount(b"/mx", b"/m"), (&b""[..], &b"/mx"[..]));
        assert_eq!(split_mount(b"/other", b"/m"), (&b""[..], &b"/other"[..]));
        assert_eq!(split_mount(b"", b"/m"), (&b""[..], &b""[..]));
    }

    #[test]
    fn url_schemes() {
        assert_eq!(url_scheme(Some(b"on"), None), "https");
        assert_eq!(url_scheme(Some(b"ON"), None), "https");
        assert_eq!(url_scheme(Some(b"1"), None), "https");
        assert_eq!(url_scheme(Some(b"off"), None), "http");
        assert_eq!(url_scheme(Some(b""), Some(b"HTTPS")), "https");
        assert_eq!(url_scheme(None, Some(b"http")), "http");
        assert_eq!(url_scheme(None, None), "http");
    }

    #[test]
    fn content_lengths() {
        assert_eq!(parse_content_length(b"0"), Some(0));
        assert_eq!(parse_content_length(b"1048576"), Some(1 << 20));
        assert_eq!(parse_content_length(b""), None);
        assert_eq!(parse_content_length(b"-1"), None);
        assert_eq!(parse_content_length(b" 5"), None);
        assert_eq!(parse_content_length(b"99999999999999999999999"), None);
    }

    #[test]
    fn log_safe_escapes_control_characters() {
        assert_eq!(log_safe(b"/a b?c=\xc3\xa9"), "/a b?c=\u{e9}");
        assert_eq!(log_safe(b"/x\n<3>forged\r"), "/x\\x0a<3>forged\\x0d");
        assert_eq!(log_safe(b"\xff"), "\u{fffd}");
    }

    #[test]
    fn error_response_has_no_body_for_head() {
        let full = internal_error_response(false);
        assert!(full.starts_with(b"Status: 500 Internal Server Error\r\n"));
        assert!(full.ends_with(b"\r\n\r\nInternal Server Error\n"));
        assert!(internal_error_response(true).ends_with(b"\r\n\r\n"));
    }
}
