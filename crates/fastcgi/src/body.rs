//! The fixed-size record bodies.

use crate::{DecodeError, ProtocolStatus, Role};

/// Body of FCGI_BEGIN_REQUEST.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BeginRequestBody {
    /// Requested role.
    pub role: Role,
    /// Flags; bit 0 is FCGI_KEEP_CONN.
    pub flags: u8,
}

impl BeginRequestBody {
    /// Decode an 8-byte body.
    pub fn parse(content: &[u8]) -> Result<Self, DecodeError> {
        todo!("{}", content.len())
    }

    /// Whether FCGI_KEEP_CONN is set.
    pub fn keep_conn(&self) -> bool {
        self.flags & crate::FCGI_KEEP_CONN != 0
    }
}

/// Body of FCGI_END_REQUEST.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EndRequestBody {
    /// The application's exit status (CGI-style).
    pub app_status: u32,
    /// Protocol-level outcome.
    pub protocol_status: ProtocolStatus,
}

impl EndRequestBody {
    /// Decode an 8-byte body.
    pub fn parse(content: &[u8]) -> Result<Self, DecodeError> {
        todo!("{}", content.len())
    }
}

/// Decode the 8-byte body of FCGI_UNKNOWN_TYPE: the type that was not understood.
pub fn parse_unknown_type(content: &[u8]) -> Result<u8, DecodeError> {
    todo!("{}", content.len())
}
