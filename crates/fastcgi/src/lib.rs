//! A sans-I/O codec for FastCGI 1.0.
//!
//! No sockets, clocks, async runtime or Python here: callers own the buffers and the I/O.
//! Bytes go in through a connection's read buffer, [`server::ServerConnection::poll_event`]
//! (or the client twin) turns them into events, and the `encode_*` functions append
//! records to an output buffer the caller writes out. "Need more bytes" is `Ok(None)`,
//! never an error, so records may be split at any byte.
//!
//! Record content is handed out as [`bytes::Bytes`] views of the read buffer, not copies;
//! a request's PARAMS are copied only when they arrive in more than one record. On the
//! server side a large STDIN or DATA record arriving in parts is handed out in parts
//! (so a stream's pieces need not match its records), which spares the reader moving a
//! partly received record into a new buffer.
//!
//! Module map:
//! - [`record`]: record header and framing (nom), the record-type/role/status enums.
//! - [`nv`]: name-value pairs with 1- and 4-byte lengths.
//! - [`body`]: the fixed-size bodies (BEGIN_REQUEST, END_REQUEST, UNKNOWN_TYPE).
//! - [`encode`]: record encoders; streams are chunked into records of at most 65535 bytes.
//! - [`server`]: the application-side connection state machine (what a worker runs).
//! - [`client`]: the web-server side: response decoding, used by `pyfpm request` and tests.
//!
//! ```
//! use bytes::BytesMut;
//! use fastcgi::*;
//!
//! // What a web server sends...
//! let mut wire = BytesMut::new();
//! encode_begin_request(&mut wire, 1, Role::Responder, false);
//! encode_params(&mut wire, 1, [(&b"REQUEST_METHOD"[..], &b"GET"[..])]);
//! encode_end_of_stream(&mut wire, RecordType::Stdin, 1);
//!
//! // ...arriving in two pieces at the application.
//! let mut conn = ServerConnection::new(ServerConfig::default());
//! conn.receive(&wire[..5]);
//! assert_eq!(conn.poll_event(), Ok(None));
//! conn.receive(&wire[5..]);
//! let mut events = Vec::new();
//! while let Some(event) = conn.poll_event().expect("valid FastCGI") {
//!     events.push(event);
//! }
//! assert!(matches!(&events[1], Event::Params { params, .. }
//!     if params.get(b"REQUEST_METHOD") == Some(&b"GET"[..])));
//! assert!(matches!(&events[2], Event::Stdin { data, .. } if data.is_empty()));
//!
//! // The application answers; the web server decodes it.
//! let mut reply = BytesMut::new();
//! encode_stream(&mut reply, RecordType::Stdout, 1, b"Status: 204\r\n\r\n");
//! encode_end_of_stream(&mut reply, RecordType::Stdout, 1);
//! encode_end_request(&mut reply, 1, 0, ProtocolStatus::RequestComplete);
//! conn.end_request(1);
//! let mut client = ClientConnection::new();
//! client.receive(&reply);
//! assert!(matches!(client.poll_event(), Ok(Some(ClientEvent::Stdout { .. }))));
//! ```

pub mod body;
pub mod client;
pub mod encode;
pub mod nv;
pub mod record;
pub mod server;

pub use body::{BeginRequestBody, EndRequestBody};
pub use client::{ClientConnection, ClientEvent};
pub use encode::*;
pub use nv::{NameValueIter, Pair, PairIter, Params, same_bytes};
pub use record::{
    Header, ProtocolStatus, Record, RecordDecoder, RecordType, Role, SPLIT_INPUT_MIN,
};
pub use server::{Event, ServerConfig, ServerConnection};

/// The only protocol version defined (FCGI_VERSION_1).
pub const FCGI_VERSION_1: u8 = 1;
/// Size of a record header.
pub const HEADER_LEN: usize = 8;
/// Largest content of one record.
pub const MAX_CONTENT_LEN: usize = 65535;
/// Request id 0 is reserved for management records (GET_VALUES, UNKNOWN_TYPE).
pub const NULL_REQUEST_ID: u16 = 0;
/// BEGIN_REQUEST flag: keep the connection open after this request.
pub const FCGI_KEEP_CONN: u8 = 1;

/// Names of the variables a GET_VALUES query may ask for.
pub mod values {
    /// Maximum concurrent transport connections the application accepts.
    pub const FCGI_MAX_CONNS: &[u8] = b"FCGI_MAX_CONNS";
    /// Maximum concurrent requests the application accepts.
    pub const FCGI_MAX_REQS: &[u8] = b"FCGI_MAX_REQS";
    /// "0" or "1": whether the application multiplexes connections.
    pub const FCGI_MPXS_CONNS: &[u8] = b"FCGI_MPXS_CONNS";
}

/// Why bytes could not be decoded. Any of these means the peer broke the protocol:
/// the caller should log it and close the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The version byte was not 1 (often: the peer is not speaking FastCGI at all).
    #[error("unsupported FastCGI version {0} (is the peer speaking FastCGI?)")]
    UnsupportedVersion(u8),
    /// A fixed-size body (BEGIN_REQUEST, END_REQUEST, UNKNOWN_TYPE) had the wrong length.
    #[error("{record_type:?} record has a {len}-byte body, expected {expected}")]
    BadBodyLength {
        /// The record whose body is wrong.
        record_type: RecordType,
        /// Its content length.
        len: usize,
        /// The length the specification defines.
        expected: usize,
    },
    /// A name-value pair ran past the end of its stream, or a length was out of range.
    #[error("malformed name-value pair: {0}")]
    BadNameValue(&'static str),
    /// A request's PARAMS stream grew past the configured limit.
    #[error("request {request_id}: FCGI_PARAMS larger than the limit of {limit} bytes")]
    ParamsTooLarge {
        /// The offending request.
        request_id: u16,
        /// The configured limit.
        limit: usize,
    },
    /// BEGIN_REQUEST for a request id that is already active on this connection.
    #[error("BEGIN_REQUEST for request {0}, which is already active")]
    DuplicateRequest(u16),
    /// A record that only the other side may send (e.g. STDOUT sent to an application), or
    /// one out of order (STDIN before the PARAMS stream ended, PARAMS after it ended, data
    /// after its stream's end, a management record on a request id or the reverse).
    #[error(
        "unexpected {record_type:?} record for request {request_id}: out of order, or one only \
         the other side of a FastCGI connection may send"
    )]
    UnexpectedRecord {
        /// What arrived.
        record_type: RecordType,
        /// Its request id.
        request_id: u16,
    },
    /// The peer closed the connection in the middle of a record.
    #[error("connection closed in the middle of a record ({0} bytes pending)")]
    TruncatedRecord(usize),
}
