//! The web-server side of a connection: decoding what an application sends back.
//! Used by `pyfpm request` and by the test suite's FastCGI client.

use crate::body::{EndRequestBody, parse_unknown_type};
use crate::record::{Record, RecordDecoder, RecordType};
use crate::{DecodeError, Params, ProtocolStatus};
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
    decoder: RecordDecoder,
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
    ///
    /// Request ids are passed through unchecked: matching them to the requests sent is
    /// the caller's business, since only it knows which are outstanding.
    pub fn poll_event(&mut self) -> Result<Option<ClientEvent>, DecodeError> {
        let Some(Record {
            record_type,
            request_id,
            content,
        }) = self.decoder.decode(&mut self.buf)?
        else {
            return Ok(None);
        };
        let event = match record_type {
            RecordType::Stdout => ClientEvent::Stdout {
                request_id,
                data: content,
            },
            RecordType::Stderr => ClientEvent::Stderr {
                request_id,
                data: content,
            },
            RecordType::EndRequest => {
                let body = EndRequestBody::parse(&content)?;
                ClientEvent::EndRequest {
                    request_id,
                    app_status: body.app_status,
                    protocol_status: body.protocol_status,
                }
            }
            RecordType::GetValuesResult => {
                let pairs = Params::new(content.clone())?;
                let values = pairs
                    .iter()
                    .map(|(n, v)| (content.slice_ref(n), content.slice_ref(v)))
                    .collect();
                ClientEvent::GetValuesResult { values }
            }
            RecordType::UnknownType => ClientEvent::UnknownType {
                record_type: parse_unknown_type(&content)?,
            },
            RecordType::BeginRequest
            | RecordType::AbortRequest
            | RecordType::Params
            | RecordType::Stdin
            | RecordType::Data
            | RecordType::GetValues
            | RecordType::Other(_) => {
                return Err(DecodeError::UnexpectedRecord {
                    record_type,
                    request_id,
                });
            }
        };
        Ok(Some(event))
    }

    /// Call when the peer closed its end: `Err(TruncatedRecord)` if bytes of an
    /// unfinished record are buffered (call after [`poll_event`](Self::poll_event)
    /// returned `Ok(None)`).
    pub fn receive_eof(&mut self) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TruncatedRecord(self.buf.len()))
        }
    }
}
