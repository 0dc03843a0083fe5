//! The web-server side of a connection: decoding what an application sends back.
//! Used by `pyfpm request` and by the test suite's FastCGI client.

use crate::{DecodeError, ProtocolStatus};
use bytes::{Bytes, BytesMut};

/// Something the application sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientEvent {
    /// A chunk of FCGI_STDOUT; empty `data` marks the end of the stream.
    Stdout {
        /// Request id.
        request_id: u16,
        /// The bytes.
        data: Bytes,
    },
    /// A chunk of FCGI_STDERR; empty `data` marks the end of the stream.
    Stderr {
        /// Request id.
        request_id: u16,
        /// The bytes.
        data: Bytes,
    },
    /// The request is over.
    EndRequest {
        /// Request id.
        request_id: u16,
        /// CGI-style exit status.
        app_status: u32,
        /// Protocol status.
        protocol_status: ProtocolStatus,
    },
    /// Answer to GET_VALUES.
    GetValuesResult {
        /// The variables and values, in order.
        values: Vec<(Bytes, Bytes)>,
    },
    /// The application did not understand a record type we sent.
    UnknownType {
        /// That type.
        record_type: u8,
    },
}

/// Client-side decoding state of one connection.
#[derive(Debug, Default)]
pub struct ClientConnection {
    buf: BytesMut,
}

impl ClientConnection {
    /// A connection with nothing received yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The read buffer; see [`crate::ServerConnection::read_buf`].
    pub fn read_buf(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// Append received bytes.
    pub fn receive(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next event, `Ok(None)` when more bytes are needed. Records a server must not
    /// send (BEGIN_REQUEST, PARAMS, STDIN, ...) are errors.
    pub fn poll_event(&mut self) -> Result<Option<ClientEvent>, DecodeError> {
        todo!()
    }
}
