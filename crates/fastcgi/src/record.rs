//! Record framing: the 8-byte header, record types, roles and protocol statuses, and
//! [`RecordDecoder`], which splits whole records off a connection's read buffer without
//! copying their content (and, for input streams, hands out a large record's content
//! as it arrives: see [`RecordDecoder::splitting_input`]).

use crate::{DecodeError, FCGI_VERSION_1, HEADER_LEN};
use bytes::{Buf, Bytes, BytesMut};
use nom::Parser;
use nom::number::streaming::{be_u8, be_u16};

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
        match v {
            1 => RecordType::BeginRequest,
            2 => RecordType::AbortRequest,
            3 => RecordType::EndRequest,
            4 => RecordType::Params,
            5 => RecordType::Stdin,
            6 => RecordType::Stdout,
            7 => RecordType::Stderr,
            8 => RecordType::Data,
            9 => RecordType::GetValues,
            10 => RecordType::GetValuesResult,
            11 => RecordType::UnknownType,
            other => RecordType::Other(other),
        }
    }
}

impl From<RecordType> for u8 {
    fn from(t: RecordType) -> u8 {
        match t {
            RecordType::BeginRequest => 1,
            RecordType::AbortRequest => 2,
            RecordType::EndRequest => 3,
            RecordType::Params => 4,
            RecordType::Stdin => 5,
            RecordType::Stdout => 6,
            RecordType::Stderr => 7,
            RecordType::Data => 8,
            RecordType::GetValues => 9,
            RecordType::GetValuesResult => 10,
            RecordType::UnknownType => 11,
            RecordType::Other(v) => v,
        }
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
        match self {
            Role::Responder => Some("RESPONDER"),
            Role::Authorizer => Some("AUTHORIZER"),
            Role::Filter => Some("FILTER"),
            Role::Other(_) => None,
        }
    }
}

impl From<u16> for Role {
    fn from(v: u16) -> Self {
        match v {
            1 => Role::Responder,
            2 => Role::Authorizer,
            3 => Role::Filter,
            other => Role::Other(other),
        }
    }
}

impl From<Role> for u16 {
    fn from(r: Role) -> u16 {
        match r {
            Role::Responder => 1,
            Role::Authorizer => 2,
            Role::Filter => 3,
            Role::Other(v) => v,
        }
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
        match v {
            0 => ProtocolStatus::RequestComplete,
            1 => ProtocolStatus::CantMpxConn,
            2 => ProtocolStatus::Overloaded,
            3 => ProtocolStatus::UnknownRole,
            other => ProtocolStatus::Other(other),
        }
    }
}

impl From<ProtocolStatus> for u8 {
    fn from(s: ProtocolStatus) -> u8 {
        match s {
            ProtocolStatus::RequestComplete => 0,
            ProtocolStatus::CantMpxConn => 1,
            ProtocolStatus::Overloaded => 2,
            ProtocolStatus::UnknownRole => 3,
            ProtocolStatus::Other(v) => v,
        }
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

impl Header {
    /// The 8 wire bytes of this header (the reserved byte is 0). Lets a caller write a
    /// header and then the content straight from its own buffer (vectored I/O) instead of
    /// copying the content through [`encode_record`](crate::encode_record).
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let id = self.request_id.to_be_bytes();
        let len = self.content_length.to_be_bytes();
        [
            self.version,
            self.record_type.into(),
            id[0],
            id[1],
            len[0],
            len[1],
            self.padding_length,
            0,
        ]
    }

    /// Bytes the whole record occupies on the wire: header, content and padding.
    pub fn record_len(&self) -> usize {
        HEADER_LEN + usize::from(self.content_length) + usize::from(self.padding_length)
    }
}

/// nom parser for one 8-byte header. Does not check the version.
pub fn parse_header(input: &[u8]) -> nom::IResult<&[u8], Header> {
    let (rest, (version, record_type, request_id, content_length, padding_length, _reserved)) =
        (be_u8, be_u8, be_u16, be_u16, be_u8, be_u8).parse(input)?;
    Ok((
        rest,
        Header {
            version,
            record_type: record_type.into(),
            request_id,
            content_length,
            padding_length,
        },
    ))
}

/// One complete record, padding removed (or, from a decoder made with
/// [`RecordDecoder::splitting_input`], a non-empty piece of a large STDIN or DATA
/// record's content). `content` shares the connection buffer's memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Record type.
    pub record_type: RecordType,
    /// Request id.
    pub request_id: u16,
    /// The content bytes (without padding).
    pub content: Bytes,
}

/// Content of a partly received STDIN or DATA record at least this long is handed out
/// at once (see [`RecordDecoder::splitting_input`]); shorter is left to complete.
pub const SPLIT_INPUT_MIN: usize = 4096;

/// Splits complete records off the front of a buffer.
#[derive(Debug, Default)]
pub struct RecordDecoder {
    /// Hand out the content of large STDIN and DATA records as it arrives.
    split_input: bool,
    /// The rest of the record whose first part was handed out.
    partial: Option<Partial>,
}

/// What is left of a STDIN or DATA record after its first part was handed out.
#[derive(Debug)]
struct Partial {
    record_type: RecordType,
    request_id: u16,
    content_left: usize,
    padding_left: usize,
}

impl RecordDecoder {
    /// A decoder of whole records.
    pub fn new() -> Self {
        Self::default()
    }

    /// A decoder that returns a STDIN or DATA record (of a request, not a management
    /// record) in pieces when it arrives in pieces: once [`SPLIT_INPUT_MIN`] bytes of its
    /// content are buffered, they are returned at once, and the rest as it comes, each
    /// piece non-empty, so the empty record still alone ends a stream. A reader of the
    /// connection then never has to move a partly received record to the front of a new
    /// buffer: with nginx's 32 KiB body records and 64 KiB reads, that was a copy of
    /// half the body on average.
    pub fn splitting_input() -> Self {
        RecordDecoder {
            split_input: true,
            partial: None,
        }
    }

    /// Whether a record is unfinished: part of it was returned, or some of it is
    /// buffered.
    pub fn mid_record(&self, buf: &BytesMut) -> bool {
        self.partial.is_some() || !buf.is_empty()
    }

    /// Take the next complete record off the front of `buf`. `Ok(None)` means more bytes
    /// are needed (nothing is consumed). A header with a version other than 1 is an error.
    ///
    /// The version is checked as soon as the header is complete, without waiting for the
    /// content, so a peer that does not speak FastCGI is refused at once.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Record>, DecodeError> {
        if let Some(partial) = &mut self.partial {
            if partial.content_left > 0 {
                if buf.is_empty() {
                    return Ok(None);
                }
                let n = partial.content_left.min(buf.len());
                partial.content_left -= n;
                let record = Record {
                    record_type: partial.record_type,
                    request_id: partial.request_id,
                    content: buf.split_to(n).freeze(),
                };
                if partial.content_left == 0 && partial.padding_left == 0 {
                    self.partial = None;
                }
                return Ok(Some(record));
            }
            let n = partial.padding_left.min(buf.len());
            buf.advance(n);
            partial.padding_left -= n;
            if partial.padding_left > 0 {
                return Ok(None);
            }
            self.partial = None;
        }
        // The eight header bytes read directly: the same result as `parse_header`, which
        // costs several times more through nom's combinators, once per record.
        let Some(
            &[
                version,
                record_type,
                id_hi,
                id_lo,
                len_hi,
                len_lo,
                padding_length,
                _,
            ],
        ) = buf.first_chunk::<HEADER_LEN>()
        else {
            return Ok(None);
        };
        let header = Header {
            version,
            record_type: record_type.into(),
            request_id: u16::from_be_bytes([id_hi, id_lo]),
            content_length: u16::from_be_bytes([len_hi, len_lo]),
            padding_length,
        };
        if header.version != FCGI_VERSION_1 {
            return Err(DecodeError::UnsupportedVersion(header.version));
        }
        if buf.len() < header.record_len() {
            return Ok(self.split_off(buf, &header));
        }
        if header.content_length == 0 {
            // Half the records of a request are empty (the ends of PARAMS and STDIN):
            // no view of the buffer (and no reference count) for them.
            buf.advance(header.record_len());
            return Ok(Some(Record {
                record_type: header.record_type,
                request_id: header.request_id,
                content: Bytes::new(),
            }));
        }
        // split_to + freeze hands out a view of the same allocation: no content copy.
        let mut record = buf.split_to(header.record_len());
        record.advance(HEADER_LEN);
        record.truncate(usize::from(header.content_length));
        Ok(Some(Record {
            record_type: header.record_type,
            request_id: header.request_id,
            content: record.freeze(),
        }))
    }

    /// For an incomplete record whose header is `header`: its first part, when this
    /// decoder splits input and the record is a large enough part of a stream.
    fn split_off(&mut self, buf: &mut BytesMut, header: &Header) -> Option<Record> {
        let content_len = usize::from(header.content_length);
        let buffered = buf.len().saturating_sub(HEADER_LEN).min(content_len);
        if !self.split_input
            || !matches!(header.record_type, RecordType::Stdin | RecordType::Data)
            || header.request_id == crate::NULL_REQUEST_ID
            || buffered < SPLIT_INPUT_MIN
        {
            return None;
        }
        buf.advance(HEADER_LEN);
        self.partial = Some(Partial {
            record_type: header.record_type,
            request_id: header.request_id,
            content_left: content_len - buffered,
            padding_left: usize::from(header.padding_length),
        });
        Some(Record {
            record_type: header.record_type,
            request_id: header.request_id,
            content: buf.split_to(buffered).freeze(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_type_round_trips_every_byte() {
        for v in 0..=u8::MAX {
            let t = RecordType::from(v);
            assert_eq!(u8::from(t), v);
            assert_eq!(matches!(t, RecordType::Other(_)), !(1..=11).contains(&v));
        }
    }

    #[test]
    fn role_and_status_round_trip() {
        for v in [0u16, 1, 2, 3, 4, 0xffff] {
            assert_eq!(u16::from(Role::from(v)), v);
        }
        assert_eq!(Role::from(1).as_str(), Some("RESPONDER"));
        assert_eq!(Role::from(2).as_str(), Some("AUTHORIZER"));
        assert_eq!(Role::from(3).as_str(), Some("FILTER"));
        assert_eq!(Role::from(9).as_str(), None);
        for v in 0..=u8::MAX {
            assert_eq!(u8::from(ProtocolStatus::from(v)), v);
        }
        assert_eq!(ProtocolStatus::from(3), ProtocolStatus::UnknownRole);
    }

    #[test]
    fn header_parses_and_serialises() {
        let wire = [1, 5, 0x12, 0x34, 0x01, 0x02, 6, 0];
        let (rest, h) = parse_header(&wire).unwrap();
        assert!(rest.is_empty());
        assert_eq!(
            h,
            Header {
                version: 1,
                record_type: RecordType::Stdin,
                request_id: 0x1234,
                content_length: 0x0102,
                padding_length: 6,
            }
        );
        assert_eq!(h.to_bytes(), wire);
        assert_eq!(h.record_len(), 8 + 0x0102 + 6);
        assert!(matches!(
            parse_header(&wire[..7]),
            Err(nom::Err::Incomplete(_))
        ));
    }

    #[test]
    fn decoder_waits_for_whole_record_and_strips_padding() {
        let wire = [1, 6, 0, 1, 0, 3, 5, 0, b'a', b'b', b'c', 0, 0, 0, 0, 0, 1];
        let mut buf = BytesMut::new();
        let mut dec = RecordDecoder::new();
        for (i, b) in wire.iter().enumerate() {
            buf.extend_from_slice(&[*b]);
            let got = dec.decode(&mut buf).unwrap();
            if i < 15 {
                assert_eq!(got, None, "record reported complete after {} bytes", i + 1);
                assert_eq!(buf.len(), i + 1, "bytes consumed while incomplete");
            } else if i == 15 {
                let rec = got.unwrap();
                assert_eq!(rec.record_type, RecordType::Stdout);
                assert_eq!(rec.request_id, 1);
                assert_eq!(&rec.content[..], b"abc");
                assert!(buf.is_empty());
            } else {
                assert_eq!(got, None);
            }
        }
        assert_eq!(&buf[..], &[1]);
    }

    #[test]
    fn decoder_rejects_other_versions_from_the_header_alone() {
        let mut buf = BytesMut::from(&b"GET / HTTP/1.1\r\n"[..]);
        assert_eq!(
            RecordDecoder::new().decode(&mut buf),
            Err(DecodeError::UnsupportedVersion(b'G'))
        );
        let mut buf = BytesMut::from(&[2u8, 1, 0, 1, 0xff, 0xff, 0, 0][..]);
        assert_eq!(
            RecordDecoder::new().decode(&mut buf),
            Err(DecodeError::UnsupportedVersion(2))
        );
    }

    #[test]
    fn decoded_content_shares_the_read_buffer() {
        let mut buf = BytesMut::with_capacity(64);
        buf.extend_from_slice(&[1, 5, 0, 1, 0, 4, 4, 0, 1, 2, 3, 4, 0, 0, 0, 0]);
        let start = buf.as_ptr() as usize;
        let rec = RecordDecoder::new().decode(&mut buf).unwrap().unwrap();
        assert_eq!(rec.content.as_ptr() as usize, start + HEADER_LEN);
    }

    /// A STDIN record of `len` content bytes with `padding` padding bytes, then an
    /// empty STDIN record (the end of the stream), as one wire.
    fn stdin_wire(len: usize, padding: u8) -> (Vec<u8>, Vec<u8>) {
        let content: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let len16 = u16::try_from(len).unwrap();
        let mut wire = vec![1, 5, 0, 1, (len16 >> 8) as u8, len16 as u8, padding, 0];
        wire.extend_from_slice(&content);
        wire.extend(std::iter::repeat_n(0xEE, usize::from(padding)));
        wire.extend_from_slice(&[1, 5, 0, 1, 0, 0, 0, 0]);
        (wire, content)
    }

    /// Feed `wire` in pieces cut at `cuts`; the records decoded, and whether the
    /// decoder was between records after each piece.
    fn decode_cut(dec: &mut RecordDecoder, wire: &[u8], cuts: &[usize]) -> Vec<Record> {
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let mut at = 0;
        for &end in cuts.iter().chain([&wire.len()]) {
            buf.extend_from_slice(&wire[at..end]);
            at = end;
            while let Some(rec) = dec.decode(&mut buf).unwrap() {
                out.push(rec);
            }
        }
        assert!(!dec.mid_record(&buf), "a whole wire leaves nothing pending");
        out
    }

    #[test]
    fn splitting_decoder_returns_large_input_in_pieces_at_every_split_point() {
        for padding in [0u8, 3, 7] {
            let (wire, content) = stdin_wire(10_000, padding);
            for cut in 0..=wire.len() {
                let recs = decode_cut(&mut RecordDecoder::splitting_input(), &wire, &[cut]);
                let (end, pieces) = recs.split_last().unwrap();
                assert!(
                    end.content.is_empty(),
                    "cut {cut}: the end marker comes last"
                );
                let joined: Vec<u8> = pieces.iter().flat_map(|r| r.content.to_vec()).collect();
                assert_eq!(joined, content, "cut {cut} padding {padding}");
                for r in pieces {
                    assert!(!r.content.is_empty(), "cut {cut}: an empty piece");
                    assert_eq!((r.record_type, r.request_id), (RecordType::Stdin, 1));
                }
                // In two pieces only when the first had SPLIT_INPUT_MIN content bytes or
                // more, but not all (missing padding alone does not cut the content).
                let first_has = cut.saturating_sub(HEADER_LEN).min(content.len());
                let split = (SPLIT_INPUT_MIN..content.len()).contains(&first_has);
                assert_eq!(
                    pieces.len(),
                    if split { 2 } else { 1 },
                    "cut {cut} padding {padding}"
                );
                // A whole-record decoder gives the record whole, whatever the cut.
                let whole = decode_cut(&mut RecordDecoder::new(), &wire, &[cut]);
                assert_eq!(whole.len(), 2);
                assert_eq!(whole[0].content, content);
            }
        }
    }

    #[test]
    fn splitting_decoder_fed_byte_by_byte_gives_pieces_of_the_minimum() {
        let (wire, content) = stdin_wire(3 * SPLIT_INPUT_MIN, 4);
        let cuts: Vec<usize> = (1..wire.len()).collect();
        let recs = decode_cut(&mut RecordDecoder::splitting_input(), &wire, &cuts);
        let (end, pieces) = recs.split_last().unwrap();
        assert!(end.content.is_empty());
        // The first piece waits for SPLIT_INPUT_MIN bytes; the rest come one by one.
        assert_eq!(pieces[0].content.len(), SPLIT_INPUT_MIN);
        assert!(pieces[1..].iter().all(|r| r.content.len() == 1));
        let joined: Vec<u8> = pieces.iter().flat_map(|r| r.content.to_vec()).collect();
        assert_eq!(joined, content);
    }

    #[test]
    fn splitting_decoder_keeps_other_records_and_management_input_whole() {
        let big = vec![7u8; 20_000];
        for (record_type, request_id) in [
            (RecordType::Params, 1),
            (RecordType::Stdout, 1),
            (RecordType::Stdin, 0),
        ] {
            let mut wire = BytesMut::new();
            crate::encode_record(&mut wire, record_type, request_id, &big);
            let recs = decode_cut(&mut RecordDecoder::splitting_input(), &wire, &[10_000]);
            assert_eq!(recs.len(), 1, "{record_type:?} id {request_id}");
            assert_eq!(recs[0].content.len(), big.len());
        }
        // DATA is input too.
        let mut wire = BytesMut::new();
        crate::encode_record(&mut wire, RecordType::Data, 2, &big);
        let recs = decode_cut(&mut RecordDecoder::splitting_input(), &wire, &[10_000]);
        assert_eq!(recs.len(), 2);
    }

    #[test]
    fn a_record_returned_in_part_is_pending_until_its_padding_is_read() {
        let (wire, _) = stdin_wire(SPLIT_INPUT_MIN + 10, 5);
        let mut dec = RecordDecoder::splitting_input();
        let mut buf = BytesMut::from(&wire[..HEADER_LEN + SPLIT_INPUT_MIN + 10 + 2]);
        let piece = dec.decode(&mut buf).unwrap().unwrap();
        assert_eq!(piece.content.len(), SPLIT_INPUT_MIN + 10);
        assert_eq!(
            dec.decode(&mut buf).unwrap(),
            None,
            "two of five padding bytes read"
        );
        assert!(buf.is_empty());
        assert!(dec.mid_record(&buf), "three padding bytes are still due");
        assert_eq!(dec.decode(&mut buf).unwrap(), None);
        buf.extend_from_slice(&wire[HEADER_LEN + SPLIT_INPUT_MIN + 12..]);
        let end = dec.decode(&mut buf).unwrap().unwrap();
        assert!(end.content.is_empty());
        assert!(!dec.mid_record(&buf));
    }
}
