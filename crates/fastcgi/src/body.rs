//! The fixed-size record bodies: BEGIN_REQUEST, END_REQUEST and UNKNOWN_TYPE, all eight
//! bytes long with reserved trailing bytes (which are ignored on input).

use crate::{DecodeError, ProtocolStatus, RecordType, Role};
use nom::Parser;
use nom::number::complete::{be_u8, be_u16, be_u32};

/// Length of every fixed-size body.
pub const BODY_LEN: usize = 8;

fn check_len(record_type: RecordType, content: &[u8]) -> Result<(), DecodeError> {
    if content.len() == BODY_LEN {
        Ok(())
    } else {
        Err(DecodeError::BadBodyLength {
            record_type,
            len: content.len(),
            expected: BODY_LEN,
        })
    }
}

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
        check_len(RecordType::BeginRequest, content)?;
        let (_, (role, flags)) = (be_u16::<_, nom::error::Error<&[u8]>>, be_u8)
            .parse(content)
            .map_err(|_| DecodeError::BadBodyLength {
                record_type: RecordType::BeginRequest,
                len: content.len(),
                expected: BODY_LEN,
            })?;
        Ok(BeginRequestBody {
            role: role.into(),
            flags,
        })
    }

    /// Whether FCGI_KEEP_CONN is set.
    pub fn keep_conn(&self) -> bool {
        self.flags & crate::FCGI_KEEP_CONN != 0
    }

    /// The 8 wire bytes.
    pub fn to_bytes(&self) -> [u8; BODY_LEN] {
        let role = u16::from(self.role).to_be_bytes();
        [role[0], role[1], self.flags, 0, 0, 0, 0, 0]
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
        check_len(RecordType::EndRequest, content)?;
        let (_, (app_status, protocol_status)) = (be_u32::<_, nom::error::Error<&[u8]>>, be_u8)
            .parse(content)
            .map_err(|_| DecodeError::BadBodyLength {
                record_type: RecordType::EndRequest,
                len: content.len(),
                expected: BODY_LEN,
            })?;
        Ok(EndRequestBody {
            app_status,
            protocol_status: protocol_status.into(),
        })
    }

    /// The 8 wire bytes.
    pub fn to_bytes(&self) -> [u8; BODY_LEN] {
        let s = self.app_status.to_be_bytes();
        [s[0], s[1], s[2], s[3], self.protocol_status.into(), 0, 0, 0]
    }
}

/// Decode the 8-byte body of FCGI_UNKNOWN_TYPE: the type that was not understood.
pub fn parse_unknown_type(content: &[u8]) -> Result<u8, DecodeError> {
    check_len(RecordType::UnknownType, content)?;
    Ok(content[0])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn begin_request_body() {
        let b = BeginRequestBody::parse(&[0, 1, 1, 9, 9, 9, 9, 9]).unwrap();
        assert_eq!(b.role, Role::Responder);
        assert!(b.keep_conn());
        assert_eq!(b.to_bytes(), [0, 1, 1, 0, 0, 0, 0, 0]);
        let b = BeginRequestBody::parse(&[0x12, 0x34, 0, 0, 0, 0, 0, 0]).unwrap();
        assert_eq!(b.role, Role::Other(0x1234));
        assert!(!b.keep_conn());
    }

    #[test]
    fn end_request_body() {
        let b = EndRequestBody::parse(&[0, 0, 1, 2, 3, 0, 0, 0]).unwrap();
        assert_eq!(b.app_status, 0x0102);
        assert_eq!(b.protocol_status, ProtocolStatus::UnknownRole);
        assert_eq!(b.to_bytes(), [0, 0, 1, 2, 3, 0, 0, 0]);
    }

    #[test]
    fn unknown_type_body() {
        assert_eq!(parse_unknown_type(&[42, 0, 0, 0, 0, 0, 0, 0]), Ok(42));
    }

    #[test]
    fn wrong_lengths_are_errors() {
        for len in [0usize, 1, 7, 9, 16] {
            let content = vec![0u8; len];
            assert_eq!(
                BeginRequestBody::parse(&content),
                Err(DecodeError::BadBodyLength {
                    record_type: RecordType::BeginRequest,
                    len,
                    expected: 8
                })
            );
            assert!(matches!(
                EndRequestBody::parse(&content),
                Err(DecodeError::BadBodyLength {
                    record_type: RecordType::EndRequest,
                    ..
                })
            ));
            assert!(matches!(
                parse_unknown_type(&content),
                Err(DecodeError::BadBodyLength {
                    record_type: RecordType::UnknownType,
                    ..
                })
            ));
        }
    }
}
