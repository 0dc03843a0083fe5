//! The application side of one transport connection.
//!
//! The state machine tracks each request id's streams and applies protocol policy, so
//! the worker only reacts to [`Event`]s: it decides which roles are accepted and how many
//! requests may be active at once, and turns refusals into [`Event::Reject`] for the
//! caller to answer with END_REQUEST.

use crate::{DecodeError, Params, ProtocolStatus, Role};
use bytes::{Bytes, BytesMut};

/// Per-connection limits and policy.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Largest accepted FCGI_PARAMS stream of one request, in bytes.
    pub max_params_len: usize,
    /// How many requests may be active at once on the connection. 1 = no multiplexing:
    /// a further BEGIN_REQUEST is rejected with FCGI_CANT_MPX_CONN.
    pub max_active_requests: usize,
    /// Roles the application accepts; others are rejected with FCGI_UNKNOWN_ROLE.
    pub roles: Vec<Role>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_params_len: 1 << 20,
            max_active_requests: 1,
            roles: vec![Role::Responder, Role::Authorizer, Role::Filter],
        }
    }
}

/// Something that happened on the connection, in wire order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A request was accepted. Its params come next.
    BeginRequest {
        /// Request id.
        request_id: u16,
        /// Requested (and accepted) role.
        role: Role,
        /// FCGI_KEEP_CONN was set.
        keep_conn: bool,
    },
    /// The request's FCGI_PARAMS stream is complete (params split across any number of
    /// records are reassembled).
    Params {
        /// Request id.
        request_id: u16,
        /// All pairs.
        params: Params,
    },
    /// A chunk of FCGI_STDIN; an empty `data` marks the end of the stream.
    Stdin {
        /// Request id.
        request_id: u16,
        /// The bytes (never empty except at end of stream).
        data: Bytes,
    },
    /// A chunk of FCGI_DATA (filter role); an empty `data` marks the end of the stream.
    Data {
        /// Request id.
        request_id: u16,
        /// The bytes (never empty except at end of stream).
        data: Bytes,
    },
    /// The web server aborted an active request.
    AbortRequest {
        /// Request id.
        request_id: u16,
    },
    /// A GET_VALUES management query; answer with GET_VALUES_RESULT.
    GetValues {
        /// Names asked for (values in the query are ignored, per the spec).
        names: Vec<Bytes>,
    },
    /// A management record of a type this side does not know; answer FCGI_UNKNOWN_TYPE.
    UnknownType {
        /// The type byte received.
        record_type: u8,
    },
    /// A BEGIN_REQUEST the policy refused (unknown or disallowed role, or too many active
    /// requests). The caller must send END_REQUEST with `status`; later records for this
    /// id are ignored until its END_REQUEST is sent via [`ServerConnection::end_request`].
    Reject {
        /// Request id.
        request_id: u16,
        /// FCGI_UNKNOWN_ROLE or FCGI_CANT_MPX_CONN.
        status: ProtocolStatus,
    },
}

/// Application-side state of one connection.
#[derive(Debug)]
pub struct ServerConnection {
    config: ServerConfig,
    buf: BytesMut,
}

impl ServerConnection {
    /// A connection with nothing received yet.
    pub fn new(config: ServerConfig) -> Self {
        ServerConnection {
            config,
            buf: BytesMut::with_capacity(16 * 1024),
        }
    }

    /// The read buffer: append bytes received from the socket here (e.g. read into its
    /// spare capacity), then call [`poll_event`](Self::poll_event) until it returns
    /// `Ok(None)`.
    pub fn read_buf(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// Append received bytes (a copying convenience over [`read_buf`](Self::read_buf)).
    pub fn receive(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next event, `Ok(None)` when more bytes are needed. After an error the
    /// connection is unusable and should be closed.
    pub fn poll_event(&mut self) -> Result<Option<Event>, DecodeError> {
        let _ = &self.config;
        todo!()
    }

    /// Call when the peer closed its end: `Err(TruncatedRecord)` if a partial record is
    /// pending, `Ok(())` if the connection ended on a record boundary.
    pub fn receive_eof(&mut self) -> Result<(), DecodeError> {
        todo!()
    }

    /// Mark a request finished (its END_REQUEST has been written), freeing its id.
    pub fn end_request(&mut self, request_id: u16) {
        todo!("{request_id}")
    }

    /// Number of requests currently active (begun and not ended).
    pub fn active_requests(&self) -> usize {
        todo!()
    }
}
