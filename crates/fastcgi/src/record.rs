//! Record framing: the 8-byte header, record types, roles and protocol statuses.

use crate::DecodeError;
use bytes::{Bytes, BytesMut};

/// A FastCGI record type. Unknown values are kept, so they can be answered with
/// FCGI_UNKNOWN_TYPE.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RecordType {
    /// FCGI_BEGIN_REQUEST (1)
    BeginRequest,
    /// FCGI_ABORT_REQUEST (2)
    AbortRequest,
    /// FCGI_END_REQUEST (3)
    EndRequest,
    /// FCGI_PARAMS (4)
    Params,
    /// FCGI_STDIN (5)
    Stdin,
    /// FCGI_STDOUT (6)
    Stdout,
    /// FCGI_STDERR (7)
    Stderr,
    /// FCGI_DATA (8)
    Data,
    /// FCGI_GET_VALUES (9)
    GetValues,
    /// FCGI_GET_VALUES_RESULT (10)
    GetValuesResult,
    /// FCGI_UNKNOWN_TYPE (11)
    UnknownType,
    /// Any other value.
    Other(u8),
}

impl From<u8> for RecordType {
    fn from(v: u8) -> Self {
        todo!("{v}")
    }
}

impl From<RecordType> for u8 {
    fn from(t: RecordType) -> u8 {
        todo!("{t:?}")
    }
}

/// The role a BEGIN_REQUEST asks the application to play.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// FCGI_RESPONDER (1)
    Responder,
    /// FCGI_AUTHORIZER (2)
    Authorizer,
    /// FCGI_FILTER (3)
    Filter,
    /// Any other value.
    Other(u16),
}

impl Role {
    /// `"RESPONDER"`, `"AUTHORIZER"`, `"FILTER"`; `None` for an unknown role.
    pub fn as_str(self) -> Option<&'static str> {
        todo!()
    }
}

impl From<u16> for Role {
    fn from(v: u16) -> Self {
        todo!("{v}")
    }
}

impl From<Role> for u16 {
    fn from(r: Role) -> u16 {
        todo!("{r:?}")
    }
}

/// END_REQUEST protocol status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProtocolStatus {
    /// FCGI_REQUEST_COMPLETE (0)
    RequestComplete,
    /// FCGI_CANT_MPX_CONN (1)
    CantMpxConn,
    /// FCGI_OVERLOADED (2)
    Overloaded,
    /// FCGI_UNKNOWN_ROLE (3)
    UnknownRole,
    /// Any other value.
    Other(u8),
}

impl From<u8> for ProtocolStatus {
    fn from(v: u8) -> Self {
        todo!("{v}")
    }
}

impl From<ProtocolStatus> for u8 {
    fn from(s: ProtocolStatus) -> u8 {
        todo!("{s:?}")
    }
}

/// A decoded record header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Protocol version (must be 1).
    pub version: u8,
    /// Record type.
    pub record_type: RecordType,
    /// Request id (0 = management record).
    pub request_id: u16,
    /// Bytes of content that follow the header.
    pub content_length: u16,
    /// Bytes of padding after the content.
    pub padding_length: u8,
}

/// nom parser for one 8-byte header. Does not check the version.
pub fn parse_header(input: &[u8]) -> nom::IResult<&[u8], Header> {
    todo!("{}", input.len())
}

/// One complete record, padding removed. `content` shares the connection buffer's memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Record type.
    pub record_type: RecordType,
    /// Request id.
    pub request_id: u16,
    /// The content bytes (without padding).
    pub content: Bytes,
}

/// Splits complete records off the front of a buffer.
#[derive(Debug, Default)]
pub struct RecordDecoder {}

impl RecordDecoder {
    /// A decoder.
    pub fn new() -> Self {
        Self {}
    }

    /// Take the next complete record off the front of `buf`. `Ok(None)` means more bytes
    /// are needed (nothing is consumed). A header with a version other than 1 is an error.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Record>, DecodeError> {
        todo!("{}", buf.len())
    }
}
