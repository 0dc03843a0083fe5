//! The HTTP client side of the nginx tests, on `ureq`: one agent per nginx so requests
//! reuse kept-alive connections, no redirects, 4xx/5xx are plain responses, and bodies
//! can be read incrementally (a test can react to the first chunk of a streamed
//! response before the rest exists; a transfer cut mid-body is an error, never a short
//! body).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;
use ureq::http::{HeaderMap, Request};

/// A response whose body has not been read yet.
pub type Response = ureq::http::Response<ureq::Body>;

/// Above the largest body any test sends or expects (8 MiB + a few bytes): ureq's own
/// default cap is 10 MB, set explicitly so a test growing past it fails loudly here.
const BODY_LIMIT: u64 = 16 * 1024 * 1024;

/// An HTTP/1.1 client for the nginx listening on 127.0.0.1:`port`.
pub struct Client {
    agent: ureq::Agent,
    port: u16,
}

impl Client {
    /// A client with its own connection pool.
    pub fn new(port: u16) -> Self {
        let agent = ureq::Agent::config_builder()
            // The tests look at error statuses and redirects themselves.
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_connect(Some(Duration::from_secs(10)))
            .timeout_per_read(Some(Duration::from_secs(60)))
            .timeout_per_write(Some(Duration::from_secs(60)))
            .build()
            .new_agent();
        Client { agent, port }
    }

    /// Send a request and return once the response head is in.
    ///
    /// `headers` are appended in order, so a repeated name goes out as repeated header
    /// lines. `Host` is `localhost` (the nginx `server_name`), as a browser would send.
    pub fn send(
        &self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Response {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("http://127.0.0.1:{}{target}", self.port))
            .header("Host", "localhost");
        for (n, v) in headers {
            req = req.header(*n, *v);
        }
        // A bodiless GET/HEAD carries no Content-Length; a POST always does, even for 0.
        let sent = if body.is_empty() && method != "POST" && method != "PUT" {
            self.agent.run(req.body(()).expect("valid request"))
        } else {
            self.agent.run(req.body(body).expect("valid request"))
        };
        sent.unwrap_or_else(|e| panic!("{method} {target} via nginx on port {}: {e}", self.port))
    }

    /// Send a request and read the whole response. Panics on a broken transfer.
    pub fn request(
        &self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Full {
        let (parts, mut b) = self.send(method, target, headers, body).into_parts();
        let body = b
            .with_config()
            .limit(BODY_LIMIT)
            .read_to_vec()
            .unwrap_or_else(|e| panic!("broken HTTP response body for {method} {target}: {e}"));
        Full {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body,
        }
    }

    /// Send `method target` on a fresh connection with `Connection: close` and return
    /// every byte nginx sent after the response head.
    ///
    /// Raw socket on purpose, for this one check: ureq never reads a body for HEAD and
    /// silently drops a pooled connection that has stray bytes after a response, so it
    /// cannot show whether nginx wrongly sent a body.
    pub fn bytes_after_head(&self, method: &str, target: &str) -> Vec<u8> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port))
            .unwrap_or_else(|e| panic!("connect to nginx on 127.0.0.1:{}: {e}", self.port));
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        write!(
            s,
            "{method} {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut all = Vec::new();
        s.read_to_end(&mut all).expect("read the response");
        let end = all
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or_else(|| panic!("no response head in {:?}", String::from_utf8_lossy(&all)));
        all.split_off(end + 4)
    }
}

/// A complete response.
pub struct Full {
    /// Status code.
    pub status: u16,
    /// Response headers; repeated names keep every value in arrival order.
    pub headers: HeaderMap,
    /// The body.
    pub body: Vec<u8>,
}

impl Full {
    /// Every value of header `name`, in order.
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().expect("ASCII header value"))
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
