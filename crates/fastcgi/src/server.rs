//! The application side of one transport connection.
//!
//! The state machine tracks each request id's streams and applies protocol policy, so
//! the worker only reacts to [`Event`]s: it decides which roles are accepted and how many
//! requests may be active at once, and turns refusals into [`Event::Reject`] for the
//! caller to answer with END_REQUEST.
//!
//! Per request it enforces the order the specification gives: BEGIN_REQUEST, then the
//! PARAMS stream, then STDIN (and DATA for filters). Records for request ids that are not
//! active are ignored, as the specification asks; records that only an application may
//! send are protocol errors.

use crate::body::BeginRequestBody;
use crate::record::{Record, RecordDecoder, RecordType};
use crate::{DecodeError, NULL_REQUEST_ID, Params, ProtocolStatus, Role};
use bytes::{Bytes, BytesMut};
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// Hashes a request id with one multiplication. The map is touched by every record of
/// every request, and the default SipHash cost more than the rest of the lookup; its
/// flooding resistance buys nothing here, as a connection holds at most a handful of
/// ids (the active requests, and rejected ones until the caller ends them).
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only u16 keys are hashed; this keeps any other use correct.
        for &b in bytes {
            self.write_u16(u16::from(b));
        }
    }

    fn write_u16(&mut self, id: u16) {
        // Fibonacci hashing spreads the ids over the high bits, which hashbrown uses
        // for its control bytes.
        self.0 = (self.0 ^ u64::from(id)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// The request-id map of a connection.
type IdMap<V> = HashMap<u16, V, BuildHasherDefault<IdHasher>>;

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
    /// The web server aborted an active request. Reported once per request; the caller
    /// still ends the request with END_REQUEST.
    AbortRequest {
        /// Request id.
        request_id: u16,
    },
    /// A GET_VALUES management query; answer with GET_VALUES_RESULT.
    GetValues {
        /// Names asked for (values in the query are ignored, per the spec).
        names: Vec<Bytes>,
    },
    /// A record of a type this side does not know (on any request id); answer
    /// FCGI_UNKNOWN_TYPE and carry on.
    UnknownType {
        /// The type byte received.
        record_type: u8,
    },
    /// A BEGIN_REQUEST the policy refused (unknown or disallowed role, or too many active
    /// requests). The caller must send END_REQUEST with `status`; later records for this
    /// id (a repeated BEGIN_REQUEST included) are ignored until the caller reports that
    /// END_REQUEST sent via [`ServerConnection::end_request`].
    Reject {
        /// Request id.
        request_id: u16,
        /// FCGI_UNKNOWN_ROLE or FCGI_CANT_MPX_CONN.
        status: ProtocolStatus,
    },
}

/// Where a request's PARAMS stream is. The first chunk is kept as it arrived (a view of
/// the read buffer), so the usual single-record PARAMS is never copied.
#[derive(Debug)]
enum ParamsState {
    Empty,
    One(Bytes),
    Many(BytesMut),
    Done,
}

#[derive(Debug)]
struct Request {
    params: ParamsState,
    stdin_ended: bool,
    data_ended: bool,
    aborted: bool,
}

#[derive(Debug)]
enum Slot {
    Active(Request),
    /// Refused with END_REQUEST; its records are ignored until `end_request`.
    Rejected,
}

/// Application-side state of one connection.
#[derive(Debug)]
pub struct ServerConnection {
    config: ServerConfig,
    buf: BytesMut,
    decoder: RecordDecoder,
    requests: IdMap<Slot>,
    active: usize,
    /// The first error: the connection is unusable after it, so it is repeated.
    failed: Option<DecodeError>,
}

impl ServerConnection {
    /// A connection with nothing received yet.
    pub fn new(config: ServerConfig) -> Self {
        ServerConnection {
            config,
            // Empty: the caller reserves what it reads into (the worker, 64 KiB). A
            // preallocated buffer would only be reallocated, and realloc copies the old
            // capacity: 16 KiB copied per connection was 15% of a small request's cost.
            buf: BytesMut::new(),
            decoder: RecordDecoder::splitting_input(),
            requests: IdMap::default(),
            active: 0,
            failed: None,
        }
    }

    /// The configuration this connection applies.
    pub fn config(&self) -> &ServerConfig {
        &self.config
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
    /// connection is unusable and should be closed (further calls repeat the error).
    pub fn poll_event(&mut self) -> Result<Option<Event>, DecodeError> {
        if let Some(err) = &self.failed {
            return Err(err.clone());
        }
        let result = self.next_event();
        if let Err(err) = &result {
            self.failed = Some(err.clone());
        }
        result
    }

    fn next_event(&mut self) -> Result<Option<Event>, DecodeError> {
        // Ignored records produce no event, so keep decoding until one does.
        while let Some(record) = self.decoder.decode(&mut self.buf)? {
            if let Some(event) = self.handle(record)? {
                return Ok(Some(event));
            }
        }
        Ok(None)
    }

    fn handle(&mut self, record: Record) -> Result<Option<Event>, DecodeError> {
        let Record {
            record_type,
            request_id,
            content,
        } = record;
        let unexpected = DecodeError::UnexpectedRecord {
            record_type,
            request_id,
        };
        match record_type {
            RecordType::Other(t) => Ok(Some(Event::UnknownType { record_type: t })),
            RecordType::EndRequest
            | RecordType::Stdout
            | RecordType::Stderr
            | RecordType::GetValuesResult
            | RecordType::UnknownType => Err(unexpected),
            RecordType::GetValues => {
                if request_id != NULL_REQUEST_ID {
                    return Err(unexpected);
                }
                let query = Params::new(content.clone())?;
                let names = query.iter().map(|(n, _)| content.slice_ref(n)).collect();
                Ok(Some(Event::GetValues { names }))
            }
            RecordType::BeginRequest => self.begin(request_id, &content),
            RecordType::Params
            | RecordType::Stdin
            | RecordType::Data
            | RecordType::AbortRequest => {
                let Some(Slot::Active(req)) = self.requests.get_mut(&request_id) else {
                    // Not active (never begun, ended, or rejected): ignored per the spec.
                    return Ok(None);
                };
                match record_type {
                    RecordType::Params => {
                        Self::params(req, request_id, content, self.config.max_params_len)
                    }
                    RecordType::Stdin | RecordType::Data => {
                        Self::input(req, record_type, request_id, content)
                    }
                    _ => {
                        if req.aborted {
                            return Ok(None);
                        }
                        req.aborted = true;
                        Ok(Some(Event::AbortRequest { request_id }))
                    }
                }
            }
        }
    }

    fn begin(&mut self, request_id: u16, content: &[u8]) -> Result<Option<Event>, DecodeError> {
        if request_id == NULL_REQUEST_ID {
            return Err(DecodeError::UnexpectedRecord {
                record_type: RecordType::BeginRequest,
                request_id,
            });
        }
        match self.requests.get(&request_id) {
            Some(Slot::Rejected) => return Ok(None),
            Some(Slot::Active(_)) => return Err(DecodeError::DuplicateRequest(request_id)),
            None => {}
        }
        let body = BeginRequestBody::parse(content)?;
        let status = if !self.config.roles.contains(&body.role) {
            Some(ProtocolStatus::UnknownRole)
        } else if self.active >= self.config.max_active_requests {
            Some(ProtocolStatus::CantMpxConn)
        } else {
            None
        };
        if let Some(status) = status {
            self.requests.insert(request_id, Slot::Rejected);
            return Ok(Some(Event::Reject { request_id, status }));
        }
        self.requests.insert(
            request_id,
            Slot::Active(Request {
                params: ParamsState::Empty,
                stdin_ended: false,
                data_ended: false,
                aborted: false,
            }),
        );
        self.active += 1;
        Ok(Some(Event::BeginRequest {
            request_id,
            role: body.role,
            keep_conn: body.keep_conn(),
        }))
    }

    fn params(
        req: &mut Request,
        request_id: u16,
        content: Bytes,
        limit: usize,
    ) -> Result<Option<Event>, DecodeError> {
        let state = std::mem::replace(&mut req.params, ParamsState::Done);
        let too_large = DecodeError::ParamsTooLarge { request_id, limit };
        let (next, event) = match state {
            ParamsState::Done => {
                return Err(DecodeError::UnexpectedRecord {
                    record_type: RecordType::Params,
                    request_id,
                });
            }
            ParamsState::Empty if content.is_empty() => (ParamsState::Done, Some(Bytes::new())),
            ParamsState::One(first) if content.is_empty() => (ParamsState::Done, Some(first)),
            ParamsState::Many(acc) if content.is_empty() => (ParamsState::Done, Some(acc.freeze())),
            ParamsState::Empty => {
                if content.len() > limit {
                    return Err(too_large);
                }
                (ParamsState::One(content), None)
            }
            ParamsState::One(first) => {
                if first.len() + content.len() > limit {
                    return Err(too_large);
                }
                // A second chunk: only now is copying unavoidable.
                let mut acc = BytesMut::with_capacity(first.len() + content.len());
                acc.extend_from_slice(&first);
                acc.extend_from_slice(&content);
                (ParamsState::Many(acc), None)
            }
            ParamsState::Many(mut acc) => {
                if acc.len() + content.len() > limit {
                    return Err(too_large);
                }
                acc.extend_from_slice(&content);
                (ParamsState::Many(acc), None)
            }
        };
        req.params = next;
        match event {
            None => Ok(None),
            Some(raw) => Ok(Some(Event::Params {
                request_id,
                params: Params::new(raw)?,
            })),
        }
    }

    fn input(
        req: &mut Request,
        record_type: RecordType,
        request_id: u16,
        data: Bytes,
    ) -> Result<Option<Event>, DecodeError> {
        let unexpected = DecodeError::UnexpectedRecord {
            record_type,
            request_id,
        };
        if !matches!(req.params, ParamsState::Done) {
            return Err(unexpected);
        }
        let ended = if record_type == RecordType::Stdin {
            &mut req.stdin_ended
        } else {
            &mut req.data_ended
        };
        if *ended {
            // A repeated end marker is harmless; more data after the end is not.
            return if data.is_empty() {
                Ok(None)
            } else {
                Err(unexpected)
            };
        }
        if data.is_empty() {
            *ended = true;
        }
        Ok(Some(if record_type == RecordType::Stdin {
            Event::Stdin { request_id, data }
        } else {
            Event::Data { request_id, data }
        }))
    }

    /// Whether the connection is inside a record: bytes of one are buffered, or part of
    /// one was returned (see [`RecordDecoder::splitting_input`]) and the rest is due.
    pub fn mid_record(&self) -> bool {
        self.decoder.mid_record(&self.buf)
    }

    /// Call when the peer closed its end: `Err(TruncatedRecord)` if a partial record is
    /// pending, `Ok(())` if the connection ended on a record boundary. Call it after
    /// [`poll_event`](Self::poll_event) has returned `Ok(None)`: any bytes still buffered
    /// then are an unfinished record.
    pub fn receive_eof(&mut self) -> Result<(), DecodeError> {
        if self.mid_record() {
            Err(DecodeError::TruncatedRecord(self.buf.len()))
        } else {
            Ok(())
        }
    }

    /// Mark a request finished (its END_REQUEST has been written), freeing its id.
    /// Also clears a rejected id. Unknown ids are ignored.
    pub fn end_request(&mut self, request_id: u16) {
        if let Some(Slot::Active(_)) = self.requests.remove(&request_id) {
            self.active -= 1;
        }
    }

    /// Number of requests currently active (begun and not ended).
    pub fn active_requests(&self) -> usize {
        self.active
    }
}
