//! Encoders. Each appends whole records to `out`. Content is padded to a multiple of 8
//! bytes as the specification recommends; streams are split into records of at most
//! [`MAX_CONTENT_LEN`](crate::MAX_CONTENT_LEN) bytes.

use crate::{ProtocolStatus, RecordType, Role};
use bytes::BytesMut;

/// Append one record. Panics if `content` is longer than 65535 bytes (use
/// [`encode_stream`] for arbitrary lengths).
pub fn encode_record(out: &mut BytesMut, record_type: RecordType, request_id: u16, content: &[u8]) {
    todo!(
        "{} {record_type:?} {request_id} {}",
        out.len(),
        content.len()
    )
}

/// Append `data` as one or more records of a stream type (STDIN, STDOUT, STDERR, DATA,
/// PARAMS). Empty `data` appends nothing: an empty record would end the stream, which is
/// [`encode_end_of_stream`]'s job.
pub fn encode_stream(out: &mut BytesMut, record_type: RecordType, request_id: u16, data: &[u8]) {
    todo!("{} {record_type:?} {request_id} {}", out.len(), data.len())
}

/// Append the empty record that closes a stream.
pub fn encode_end_of_stream(out: &mut BytesMut, record_type: RecordType, request_id: u16) {
    todo!("{} {record_type:?} {request_id}", out.len())
}

/// Append FCGI_BEGIN_REQUEST.
pub fn encode_begin_request(out: &mut BytesMut, request_id: u16, role: Role, keep_conn: bool) {
    todo!("{} {request_id} {role:?} {keep_conn}", out.len())
}

/// Append FCGI_ABORT_REQUEST.
pub fn encode_abort_request(out: &mut BytesMut, request_id: u16) {
    todo!("{} {request_id}", out.len())
}

/// Append a whole PARAMS stream: the pairs, chunked, then the empty closing record.
pub fn encode_params<'a, I>(out: &mut BytesMut, request_id: u16, pairs: I)
where
    I: IntoIterator<Item = (&'a [u8], &'a [u8])>,
{
    let _ = pairs;
    todo!("{} {request_id}", out.len())
}

/// Append FCGI_END_REQUEST.
pub fn encode_end_request(
    out: &mut BytesMut,
    request_id: u16,
    app_status: u32,
    protocol_status: ProtocolStatus,
) {
    todo!(
        "{} {request_id} {app_status} {protocol_status:?}",
        out.len()
    )
}

/// Append FCGI_GET_VALUES asking for `names`.
pub fn encode_get_values<'a, I>(out: &mut BytesMut, names: I)
where
    I: IntoIterator<Item = &'a [u8]>,
{
    let _ = names;
    todo!("{}", out.len())
}

/// Append FCGI_GET_VALUES_RESULT with `pairs`.
pub fn encode_get_values_result<'a, I>(out: &mut BytesMut, pairs: I)
where
    I: IntoIterator<Item = (&'a [u8], &'a [u8])>,
{
    let _ = pairs;
    todo!("{}", out.len())
}

/// Append FCGI_UNKNOWN_TYPE for a record type that was not understood.
pub fn encode_unknown_type(out: &mut BytesMut, record_type: u8) {
    todo!("{} {record_type}", out.len())
}
