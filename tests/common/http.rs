//! A minimal HTTP/1.1 client for the nginx tests: raw header lines in order (so duplicate
//! headers such as Set-Cookie are visible), no redirects, 4xx/5xx are just responses,
//! chunked bodies decoded incrementally (so a test can react to the first chunk of a
//! streamed response before the rest exists).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// A parsed response head plus a reader for the body.
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Header lines in order.
    pub headers: Vec<(String, String)>,
    reader: BufReader<TcpStream>,
    framing: Framing,
}

enum Framing {
    None,
    Length(usize),
    Chunked { done: bool },
    UntilClose { done: bool },
}

/// Send one request to 127.0.0.1:`port` (`Connection: close`) and read the head.
pub fn send(
    port: u16,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> HttpResponse {
    let s = TcpStream::connect(("127.0.0.1", port))
        .unwrap_or_else(|e| panic!("connect to nginx on 127.0.0.1:{port}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut head =
        format!("{method} {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    for (n, v) in headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    if !body.is_empty() || method == "POST" || method == "PUT" {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    let mut w = s.try_clone().unwrap();
    let body = body.to_vec();
    // Write from a thread: nginx may answer (413, 500...) before reading everything.
    let writer = std::thread::spawn(move || {
        let _ = w.write_all(head.as_bytes());
        let _ = w.write_all(&body);
    });
    let mut reader = BufReader::new(s);
    let mut line = String::new();
    reader.read_line(&mut line).expect("read status line");
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad HTTP status line {line:?}"));
    let mut headers = Vec::new();
    loop {
        let mut l = String::new();
        reader.read_line(&mut l).expect("read header line");
        let l = l.trim_end_matches(['\r', '\n']);
        if l.is_empty() {
            break;
        }
        let (n, v) = l.split_once(':').expect("header line has a colon");
        headers.push((n.to_string(), v.trim().to_string()));
    }
    let _ = writer.join();
    let get = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    let framing = if method == "HEAD" || status == 204 || status == 304 {
        Framing::None
    } else if get("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        Framing::Chunked { done: false }
    } else if let Some(n) = get("content-length") {
        Framing::Length(n.parse().expect("numeric Content-Length"))
    } else {
        Framing::UntilClose { done: false }
    };
    HttpResponse {
        status,
        headers,
        reader,
        framing,
    }
}

/// A complete response.
pub struct Full {
    /// Status code.
    pub status: u16,
    /// Header lines in order.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
    /// Bytes that arrived after the declared end of the body (must be none).
    pub trailing: usize,
}

impl Full {
    /// Every value of header `name`, in order.
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The first value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.all(name).into_iter().next()
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}); status {} body {:?}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

impl HttpResponse {
    /// The next piece of the body (`None` at its end): one chunk of a chunked body.
    /// Panics on a broken transfer.
    pub fn next_piece(&mut self) -> Option<Vec<u8>> {
        self.try_next_piece()
            .unwrap_or_else(|e| panic!("broken HTTP response body: {e}"))
    }

    /// Like [`next_piece`](Self::next_piece), but a broken transfer (connection closed
    /// mid-body, bad chunk framing) is an `Err`.
    pub fn try_next_piece(&mut self) -> Result<Option<Vec<u8>>, String> {
        let io = |e: std::io::Error| e.to_string();
        match &mut self.framing {
            Framing::None => Ok(None),
            Framing::Length(n) => {
                if *n == 0 {
                    return Ok(None);
                }
                let mut buf = vec![0u8; (*n).min(65536)];
                let got = self.reader.read(&mut buf).map_err(io)?;
                if got == 0 {
                    return Err(format!("connection closed with {n} body bytes missing"));
                }
                *n -= got;
                buf.truncate(got);
                Ok(Some(buf))
            }
            Framing::Chunked { done } => {
                if *done {
                    return Ok(None);
                }
                let mut size_line = String::new();
                if self.reader.read_line(&mut size_line).map_err(io)? == 0 {
                    return Err("connection closed before the last chunk".into());
                }
                let size =
                    usize::from_str_radix(size_line.trim().split(';').next().unwrap_or(""), 16)
                        .map_err(|_| format!("bad chunk size line {size_line:?}"))?;
                if size == 0 {
                    // Trailers end with an empty line.
                    loop {
                        let mut l = String::new();
                        let n = self.reader.read_line(&mut l).map_err(io)?;
                        if n == 0 || l.trim().is_empty() {
                            break;
                        }
                    }
                    *done = true;
                    return Ok(None);
                }
                let mut buf = vec![0u8; size + 2];
                self.reader.read_exact(&mut buf).map_err(io)?;
                if &buf[size..] != b"\r\n" {
                    return Err("chunk not followed by CRLF".into());
                }
                buf.truncate(size);
                Ok(Some(buf))
            }
            Framing::UntilClose { done } => {
                if *done {
                    return Ok(None);
                }
                let mut buf = vec![0u8; 65536];
                let got = self.reader.read(&mut buf).map_err(io)?;
                if got == 0 {
                    *done = true;
                    return Ok(None);
                }
                buf.truncate(got);
                Ok(Some(buf))
            }
        }
    }

    /// Read the rest of the body.
    pub fn finish(mut self) -> Full {
        let mut body = Vec::new();
        while let Some(p) = self.next_piece() {
            body.extend_from_slice(&p);
        }
        // With Connection: close, nothing may follow the body.
        let mut rest = Vec::new();
        let _ = self.reader.read_to_end(&mut rest);
        Full {
            status: self.status,
            headers: self.headers,
            body,
            trailing: rest.len(),
        }
    }
}

/// Send a request and read the whole response.
pub fn request(
    port: u16,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Full {
    send(port, method, target, headers, body).finish()
}
