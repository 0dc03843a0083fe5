//! The web-server side decoder: what an application may send, and what it must not.

mod common;

use bytes::{Bytes, BytesMut};
use common::client_events_split;
use fastcgi::*;

fn wire(build: impl FnOnce(&mut BytesMut)) -> Vec<u8> {
    let mut out = BytesMut::new();
    build(&mut out);
    out.to_vec()
}

#[test]
fn every_response_record_decodes() {
    let w = wire(|o| {
        encode_stream(o, RecordType::Stdout, 1, b"out");
        encode_end_of_stream(o, RecordType::Stdout, 1);
        encode_stream(o, RecordType::Stderr, 1, b"err");
        encode_end_of_stream(o, RecordType::Stderr, 1);
        encode_end_request(o, 1, 0xdead_beef, ProtocolStatus::Overloaded);
        encode_end_request(o, 2, 0, ProtocolStatus::Other(200));
        encode_get_values_result(o, [(&b"FCGI_MAX_REQS"[..], &[b'9'; 130][..])]);
        encode_get_values_result(o, []);
        encode_unknown_type(o, 250);
    });
    let (events, eof) = client_events_split(&w, &[]);
    assert_eq!(eof, Ok(()));
    let b = Bytes::from_static;
    assert_eq!(
        events,
        vec![
            ClientEvent::Stdout {
                request_id: 1,
                data: b(b"out")
            },
            ClientEvent::Stdout {
                request_id: 1,
                data: Bytes::new()
            },
            ClientEvent::Stderr {
                request_id: 1,
                data: b(b"err")
            },
            ClientEvent::Stderr {
                request_id: 1,
                data: Bytes::new()
            },
            ClientEvent::EndRequest {
                request_id: 1,
                app_status: 0xdead_beef,
                protocol_status: ProtocolStatus::Overloaded
            },
            ClientEvent::EndRequest {
                request_id: 2,
                app_status: 0,
                protocol_status: ProtocolStatus::Other(200)
            },
            ClientEvent::GetValuesResult {
                values: vec![(b(b"FCGI_MAX_REQS"), Bytes::from(vec![b'9'; 130]))]
            },
            ClientEvent::GetValuesResult { values: vec![] },
            ClientEvent::UnknownType { record_type: 250 },
        ]
    );
}

#[test]
fn records_a_server_must_not_send_are_errors() {
    let cases = [
        (RecordType::BeginRequest, 1u16, vec![0, 1, 0, 0, 0, 0, 0, 0]),
        (RecordType::AbortRequest, 1, vec![]),
        (RecordType::Params, 1, vec![]),
        (RecordType::Stdin, 1, vec![]),
        (RecordType::Data, 1, vec![]),
        (RecordType::GetValues, 0, vec![]),
        (RecordType::Other(12), 0, vec![]),
    ];
    for (t, id, content) in cases {
        let w = wire(|o| encode_record(o, t, id, &content));
        let (_, result) = client_events_split(&w, &[]);
        assert_eq!(
            result,
            Err(DecodeError::UnexpectedRecord {
                record_type: t,
                request_id: id
            })
        );
    }
}

#[test]
fn malformed_response_bodies_are_errors() {
    let w = wire(|o| encode_record(o, RecordType::EndRequest, 1, &[0; 5]));
    assert_eq!(
        client_events_split(&w, &[]).1,
        Err(DecodeError::BadBodyLength {
            record_type: RecordType::EndRequest,
            len: 5,
            expected: 8
        })
    );
    let w = wire(|o| encode_record(o, RecordType::UnknownType, 0, &[0; 9]));
    assert!(matches!(
        client_events_split(&w, &[]).1,
        Err(DecodeError::BadBodyLength {
            record_type: RecordType::UnknownType,
            len: 9,
            ..
        })
    ));
    let w = wire(|o| encode_record(o, RecordType::GetValuesResult, 0, &[3, 0x80, b'a']));
    assert!(matches!(
        client_events_split(&w, &[]).1,
        Err(DecodeError::BadNameValue(_))
    ));
    let mut w = wire(|o| encode_stream(o, RecordType::Stdout, 1, b"x"));
    w[0] = 2;
    assert_eq!(
        client_events_split(&w, &[]).1,
        Err(DecodeError::UnsupportedVersion(2))
    );
}

#[test]
fn truncated_response_is_reported() {
    let w = wire(|o| encode_end_request(o, 1, 0, ProtocolStatus::RequestComplete));
    let (events, eof) = client_events_split(&w[..12], &[]);
    assert!(events.is_empty());
    assert_eq!(eof, Err(DecodeError::TruncatedRecord(12)));
}
