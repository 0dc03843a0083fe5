//! Encoders. Each appends whole records to `out`. Content is padded to a multiple of 8
//! bytes as the specification recommends; streams are split into records of at most
//! [`MAX_CONTENT_LEN`] bytes.

use crate::body::{BeginRequestBody, EndRequestBody};
use crate::nv::{encode_pair, encoded_pair_len};
use crate::{FCGI_VERSION_1, HEADER_LEN, Header, MAX_CONTENT_LEN, NULL_REQUEST_ID};
use crate::{ProtocolStatus, RecordType, Role};
use bytes::{BufMut, BytesMut};

const PADDING: [u8; 8] = [0; 8];

/// Padding bytes that follow `content_len` bytes of content: enough to reach a multiple
/// of 8.
pub fn padding_len(content_len: usize) -> usize {
    (8 - content_len % 8) % 8
}

/// The header of a record carrying `content_len` bytes (padded to a multiple of 8).
/// Panics if `content_len` is over 65535. For callers that write the content from their
/// own buffer (vectored I/O): write these 8 bytes, the content, then
/// [`padding_len`]`(content_len)` zero bytes.
pub fn record_header(record_type: RecordType, request_id: u16, content_len: usize) -> Header {
    let content_length = u16::try_from(content_len).unwrap_or_else(|_| {
        panic!("FastCGI record content of {content_len} bytes exceeds {MAX_CONTENT_LEN}")
    });
    Header {
        version: FCGI_VERSION_1,
        record_type,
        request_id,
        content_length,
        padding_length: padding_len(content_len) as u8,
    }
}

/// Append one record. Panics if `content` is longer than 65535 bytes (use
/// [`encode_stream`] for arbitrary lengths).
pub fn encode_record(out: &mut BytesMut, record_type: RecordType, request_id: u16, content: &[u8]) {
    let header = record_header(record_type, request_id, content.len());
    out.reserve(header.record_len());
    out.put_slice(&header.to_bytes());
    out.put_slice(content);
    out.put_slice(&PADDING[..usize::from(header.padding_length)]);
}

/// Append one record whose content is `head` followed by `tail`, without joining them
/// first (a response's header block and the start of its body). Panics if they
/// add up to more than 65535 bytes.
pub fn encode_record_parts(
    out: &mut BytesMut,
    record_type: RecordType,
    request_id: u16,
    head: &[u8],
    tail: &[u8],
) {
    let header = record_header(record_type, request_id, head.len() + tail.len());
    out.reserve(header.record_len());
    out.put_slice(&header.to_bytes());
    out.put_slice(head);
    out.put_slice(tail);
    out.put_slice(&PADDING[..usize::from(header.padding_length)]);
}

/// Append `data` as one or more records of a stream type (STDIN, STDOUT, STDERR, DATA,
/// PARAMS). Empty `data` appends nothing: an empty record would end the stream, which is
/// [`encode_end_of_stream`]'s job.
pub fn encode_stream(out: &mut BytesMut, record_type: RecordType, request_id: u16, data: &[u8]) {
    let records = data.len().div_ceil(MAX_CONTENT_LEN);
    out.reserve(data.len() + records * (HEADER_LEN + 7));
    for chunk in data.chunks(MAX_CONTENT_LEN) {
        encode_record(out, record_type, request_id, chunk);
    }
}

/// Append the empty record that closes a stream.
pub fn encode_end_of_stream(out: &mut BytesMut, record_type: RecordType, request_id: u16) {
    encode_record(out, record_type, request_id, &[]);
}

/// Append FCGI_BEGIN_REQUEST.
pub fn encode_begin_request(out: &mut BytesMut, request_id: u16, role: Role, keep_conn: bool) {
    let flags = if keep_conn { crate::FCGI_KEEP_CONN } else { 0 };
    let body = BeginRequestBody { role, flags };
    encode_record(out, RecordType::BeginRequest, request_id, &body.to_bytes());
}

/// Append FCGI_ABORT_REQUEST.
pub fn encode_abort_request(out: &mut BytesMut, request_id: u16) {
    encode_record(out, RecordType::AbortRequest, request_id, &[]);
}

/// Append a whole PARAMS stream: the pairs, chunked, then the empty closing record.
pub fn encode_params<'a, I>(out: &mut BytesMut, request_id: u16, pairs: I)
where
    I: IntoIterator<Item = (&'a [u8], &'a [u8])>,
{
    let mut raw = Vec::new();
    for (name, value) in pairs {
        encode_pair(&mut raw, name, value);
    }
    encode_stream(out, RecordType::Params, request_id, &raw);
    encode_end_of_stream(out, RecordType::Params, request_id);
}

/// Encode pairs for a management record, which must fit in one record.
fn management_pairs<'a>(pairs: impl IntoIterator<Item = (&'a [u8], &'a [u8])>) -> Vec<u8> {
    let mut raw = Vec::new();
    for (name, value) in pairs {
        // Drop what does not fit rather than emit an invalid record: a management
        // record cannot be continued, and every real variable name is short.
        if raw.len() + encoded_pair_len(name, value) > MAX_CONTENT_LEN {
            continue;
        }
        encode_pair(&mut raw, name, value);
    }
    raw
}

/// Append FCGI_END_REQUEST.
pub fn encode_end_request(
    out: &mut BytesMut,
    request_id: u16,
    app_status: u32,
    protocol_status: ProtocolStatus,
) {
    let body = EndRequestBody {
        app_status,
        protocol_status,
    };
    encode_record(out, RecordType::EndRequest, request_id, &body.to_bytes());
}

/// Append FCGI_GET_VALUES asking for `names`. A management record is a single record, so
/// names that would push it past 65535 bytes are left out.
pub fn encode_get_values<'a, I>(out: &mut BytesMut, names: I)
where
    I: IntoIterator<Item = &'a [u8]>,
{
    let raw = management_pairs(names.into_iter().map(|n| (n, &b""[..])));
    encode_record(out, RecordType::GetValues, NULL_REQUEST_ID, &raw);
}

/// Append FCGI_GET_VALUES_RESULT with `pairs`. Pairs that would push the single record
/// past 65535 bytes are left out.
pub fn encode_get_values_result<'a, I>(out: &mut BytesMut, pairs: I)
where
    I: IntoIterator<Item = (&'a [u8], &'a [u8])>,
{
    let raw = management_pairs(pairs);
    encode_record(out, RecordType::GetValuesResult, NULL_REQUEST_ID, &raw);
}

/// Append FCGI_UNKNOWN_TYPE for a record type that was not understood.
pub fn encode_unknown_type(out: &mut BytesMut, record_type: u8) {
    encode_record(
        out,
        RecordType::UnknownType,
        NULL_REQUEST_ID,
        &[record_type, 0, 0, 0, 0, 0, 0, 0],
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RecordDecoder;

    #[test]
    fn a_record_in_two_parts_is_the_record_of_both_joined() {
        let data: Vec<u8> = (0..70_000u32).map(|i| (i % 251) as u8).collect();
        for (head, tail) in [
            (0, 0),
            (0, 9),
            (9, 0),
            (13, 100),
            (100, 65_435),
            (65_535, 0),
        ] {
            let (h, t) = (&data[..head], &data[head..head + tail]);
            let mut parts = BytesMut::new();
            encode_record_parts(&mut parts, RecordType::Stdout, 3, h, t);
            let mut joined = BytesMut::new();
            encode_record(&mut joined, RecordType::Stdout, 3, &[h, t].concat());
            assert_eq!(parts, joined, "head {head}, tail {tail}");
        }
    }

    #[test]
    #[should_panic(expected = "exceeds")]
    fn a_record_in_two_parts_over_the_limit_panics() {
        encode_record_parts(
            &mut BytesMut::new(),
            RecordType::Stdout,
            1,
            &[0; 40_000],
            &[0; 30_000],
        );
    }

    fn decode_all(mut buf: BytesMut) -> Vec<crate::Record> {
        let mut dec = RecordDecoder::new();
        let mut out = Vec::new();
        while let Some(r) = dec.decode(&mut buf).unwrap() {
            out.push(r);
        }
        assert!(buf.is_empty(), "{} trailing bytes", buf.len());
        out
    }

    #[test]
    fn records_are_padded_to_eight() {
        for len in 0..=17usize {
            let mut out = BytesMut::new();
            encode_record(&mut out, RecordType::Stdout, 3, &vec![b'x'; len]);
            assert_eq!(out.len() % 8, 0, "content {len}");
            assert_eq!(out.len(), HEADER_LEN + len + padding_len(len));
            assert_eq!(usize::from(out[6]), padding_len(len));
            assert!(out[HEADER_LEN + len..].iter().all(|b| *b == 0));
            let recs = decode_all(out);
            assert_eq!(recs[0].content.len(), len);
        }
    }

    #[test]
    fn max_record_is_accepted() {
        let mut out = BytesMut::new();
        encode_record(&mut out, RecordType::Stdout, 1, &vec![1; MAX_CONTENT_LEN]);
        assert_eq!(out.len(), HEADER_LEN + MAX_CONTENT_LEN + 1);
        assert_eq!(&out[4..7], &[0xff, 0xff, 1]);
    }

    #[test]
    #[should_panic(expected = "exceeds 65535")]
    fn oversized_record_panics() {
        encode_record(&mut BytesMut::new(), RecordType::Stdout, 1, &vec![1; 65536]);
    }

    #[test]
    fn long_stream_is_chunked_and_reassembles() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let mut out = BytesMut::new();
        encode_stream(&mut out, RecordType::Stdout, 9, &data);
        encode_end_of_stream(&mut out, RecordType::Stdout, 9);
        let recs = decode_all(out);
        assert_eq!(recs.len(), 5); // 65535 * 3 + 3395, then the empty record
        assert!(recs.iter().all(|r| r.content.len() <= MAX_CONTENT_LEN));
        assert!(recs.iter().all(|r| r.request_id == 9));
        assert!(recs[4].content.is_empty());
        let joined: Vec<u8> = recs
            .iter()
            .flat_map(|r| r.content.iter().copied())
            .collect();
        assert_eq!(joined, data);
    }

    #[test]
    fn empty_stream_appends_nothing() {
        let mut out = BytesMut::new();
        encode_stream(&mut out, RecordType::Stdin, 1, b"");
        assert!(out.is_empty());
    }

    #[test]
    fn management_records_drop_what_does_not_fit() {
        let long = vec![b'n'; 40_000];
        let mut out = BytesMut::new();
        encode_get_values(&mut out, [&long[..], &long[..], b"FCGI_MAX_REQS"]);
        let recs = decode_all(out);
        let p = crate::Params::new(recs[0].content.clone()).unwrap();
        let names: Vec<_> = p.iter().map(|(n, _)| n.len()).collect();
        assert_eq!(names, vec![40_000, 13]);
    }
}
