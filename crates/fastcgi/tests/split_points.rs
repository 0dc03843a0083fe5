//! Records may be split at any byte: a realistic multi-record conversation must decode to
//! the same events whatever the split.

mod common;

use bytes::{Bytes, BytesMut};
use common::{client_events_split, server_events, server_events_split};
use fastcgi::nv::encode_pair;
use fastcgi::*;

fn config() -> ServerConfig {
    ServerConfig {
        max_active_requests: 2,
        ..ServerConfig::default()
    }
}

/// The web server's side of a conversation with two multiplexed requests, management
/// records, a refusal and records the application must ignore.
fn request_wire() -> (Vec<u8>, Vec<u8>) {
    let mut out = BytesMut::new();
    encode_get_values(
        &mut out,
        [
            values::FCGI_MAX_CONNS,
            values::FCGI_MAX_REQS,
            values::FCGI_MPXS_CONNS,
        ],
    );
    encode_begin_request(&mut out, 1, Role::Responder, true);

    // PARAMS in three records, with the long pair cut in the middle of its value.
    let mut raw = Vec::new();
    encode_pair(&mut raw, b"REQUEST_METHOD", b"POST");
    encode_pair(&mut raw, b"SCRIPT_NAME", b"");
    encode_pair(&mut raw, b"HTTP_COOKIE", &[b'c'; 300]);
    encode_pair(&mut raw, b"CONTENT_LENGTH", b"11");
    let cut1 = 20;
    let cut2 = 200;
    encode_record(&mut out, RecordType::Params, 1, &raw[..cut1]);
    encode_record(&mut out, RecordType::Params, 1, &raw[cut1..cut2]);
    encode_record(&mut out, RecordType::Params, 1, &raw[cut2..]);
    encode_end_of_stream(&mut out, RecordType::Params, 1);

    // A second request multiplexed in, params in a single record.
    encode_begin_request(&mut out, 2, Role::Filter, false);
    encode_params(&mut out, 2, [(&b"A"[..], &b"1"[..])]);
    encode_stream(&mut out, RecordType::Stdin, 1, b"hello ");
    encode_end_of_stream(&mut out, RecordType::Stdin, 2);
    encode_stream(&mut out, RecordType::Stdin, 1, b"world");
    encode_record(&mut out, RecordType::Other(99), 0, b"mystery");
    encode_end_of_stream(&mut out, RecordType::Stdin, 1);
    encode_stream(&mut out, RecordType::Data, 2, b"file");
    encode_end_of_stream(&mut out, RecordType::Data, 2);

    // Refused (cant-mpx, then unknown role), then records that must be ignored.
    encode_begin_request(&mut out, 3, Role::Responder, false);
    encode_params(&mut out, 3, [(&b"IGNORED"[..], &b"x"[..])]);
    encode_begin_request(&mut out, 4, Role::Other(77), false);
    encode_stream(&mut out, RecordType::Stdin, 9, b"never begun");
    encode_abort_request(&mut out, 2);
    encode_abort_request(&mut out, 2);
    (out.to_vec(), raw)
}

fn expected_events(raw_params: Vec<u8>) -> Vec<Event> {
    let b = Bytes::from_static;
    vec![
        Event::GetValues {
            names: vec![
                b(b"FCGI_MAX_CONNS"),
                b(b"FCGI_MAX_REQS"),
                b(b"FCGI_MPXS_CONNS"),
            ],
        },
        Event::BeginRequest {
            request_id: 1,
            role: Role::Responder,
            keep_conn: true,
        },
        Event::Params {
            request_id: 1,
            params: Params::new(Bytes::from(raw_params)).unwrap(),
        },
        Event::BeginRequest {
            request_id: 2,
            role: Role::Filter,
            keep_conn: false,
        },
        Event::Params {
            request_id: 2,
            params: Params::new(b(&[1, 1, b'A', b'1'])).unwrap(),
        },
        Event::Stdin {
            request_id: 1,
            data: b(b"hello "),
        },
        Event::Stdin {
            request_id: 2,
            data: Bytes::new(),
        },
        Event::Stdin {
            request_id: 1,
            data: b(b"world"),
        },
        Event::UnknownType { record_type: 99 },
        Event::Stdin {
            request_id: 1,
            data: Bytes::new(),
        },
        Event::Data {
            request_id: 2,
            data: b(b"file"),
        },
        Event::Data {
            request_id: 2,
            data: Bytes::new(),
        },
        Event::Reject {
            request_id: 3,
            status: ProtocolStatus::CantMpxConn,
        },
        Event::Reject {
            request_id: 4,
            status: ProtocolStatus::UnknownRole,
        },
        Event::AbortRequest { request_id: 2 },
    ]
}

#[test]
fn one_shot_decodes_to_the_expected_events() {
    let (wire, raw) = request_wire();
    let (events, eof) = server_events(&config(), &wire);
    assert_eq!(eof, Ok(()));
    assert_eq!(events, expected_events(raw));
    let p = match &events[2] {
        Event::Params { params, .. } => params.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(p.get(b"HTTP_COOKIE"), Some(&[b'c'; 300][..]));
    assert_eq!(p.get(b"SCRIPT_NAME"), Some(&b""[..]));
    assert_eq!(p.len(), 4);
}

#[test]
fn every_split_point_gives_the_same_events() {
    let (wire, _) = request_wire();
    let (whole, eof) = server_events(&config(), &wire);
    assert_eq!(eof, Ok(()));
    for cut in 0..=wire.len() {
        let (events, eof) = server_events_split(&config(), &wire, &[cut]);
        assert_eq!(eof, Ok(()), "split at {cut}");
        assert_eq!(events, whole, "split at {cut}");
    }
}

#[test]
fn every_pair_of_split_points_gives_the_same_events() {
    let (wire, _) = request_wire();
    let (whole, _) = server_events(&config(), &wire);
    // A grid of cut pairs: strides coprime with 8 so cuts land at every offset within
    // headers, pairs and padding.
    for a in (0..wire.len()).step_by(7) {
        for b in (a..=wire.len()).step_by(5) {
            let (events, eof) = server_events_split(&config(), &wire, &[a, b]);
            assert_eq!(eof, Ok(()), "splits at {a}, {b}");
            assert_eq!(events, whole, "splits at {a}, {b}");
        }
    }
}

#[test]
fn byte_by_byte_gives_the_same_events() {
    let (wire, _) = request_wire();
    let (whole, _) = server_events(&config(), &wire);
    let cuts: Vec<usize> = (1..wire.len()).collect();
    let (events, eof) = server_events_split(&config(), &wire, &cuts);
    assert_eq!(eof, Ok(()));
    assert_eq!(events, whole);
}

#[test]
fn truncation_at_every_point_is_reported_at_eof() {
    let (wire, _) = request_wire();
    // Record boundaries: where EOF is clean.
    let mut boundaries = vec![0];
    let mut at = 0;
    while at < wire.len() {
        let (_, h) = record::parse_header(&wire[at..]).unwrap();
        at += h.record_len();
        boundaries.push(at);
    }
    for cut in 0..wire.len() {
        let (_, eof) = server_events(&config(), &wire[..cut]);
        if boundaries.contains(&cut) {
            assert_eq!(eof, Ok(()), "cut at {cut}");
        } else {
            assert!(
                matches!(eof, Err(DecodeError::TruncatedRecord(n)) if n > 0 && n <= cut),
                "cut at {cut}: {eof:?}"
            );
        }
    }
}

fn response_wire() -> Vec<u8> {
    let mut out = BytesMut::new();
    encode_get_values_result(
        &mut out,
        [
            (values::FCGI_MAX_CONNS, &b"4"[..]),
            (values::FCGI_MPXS_CONNS, &b"0"[..]),
        ],
    );
    encode_stream(&mut out, RecordType::Stdout, 1, b"Status: 200 OK\r\n\r\n");
    encode_stream(&mut out, RecordType::Stderr, 1, b"warning");
    encode_stream(&mut out, RecordType::Stdout, 1, &[b'b'; 70_000]);
    encode_end_of_stream(&mut out, RecordType::Stderr, 1);
    encode_end_of_stream(&mut out, RecordType::Stdout, 1);
    encode_end_request(&mut out, 1, 0, ProtocolStatus::RequestComplete);
    encode_unknown_type(&mut out, 99);
    encode_end_request(&mut out, 3, 0, ProtocolStatus::CantMpxConn);
    out.to_vec()
}

#[test]
fn client_decodes_every_split_the_same() {
    let wire = response_wire();
    let (whole, eof) = client_events_split(&wire, &[]);
    assert_eq!(eof, Ok(()));
    let b = Bytes::from_static;
    assert_eq!(whole.len(), 10);
    assert_eq!(
        whole[0],
        ClientEvent::GetValuesResult {
            values: vec![
                (b(b"FCGI_MAX_CONNS"), b(b"4")),
                (b(b"FCGI_MPXS_CONNS"), b(b"0"))
            ]
        }
    );
    let stdout: Vec<u8> = whole
        .iter()
        .filter_map(|e| match e {
            ClientEvent::Stdout { data, .. } => Some(data.to_vec()),
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(stdout.len(), 18 + 70_000);
    assert_eq!(
        whole[7],
        ClientEvent::EndRequest {
            request_id: 1,
            app_status: 0,
            protocol_status: ProtocolStatus::RequestComplete
        }
    );
    assert_eq!(whole[8], ClientEvent::UnknownType { record_type: 99 });
    // Every single split point near the small records, a stride through the big one.
    let interesting = (0..200)
        .chain((200..wire.len()).step_by(997))
        .chain(wire.len() - 100..=wire.len());
    for cut in interesting {
        let (events, eof) = client_events_split(&wire, &[cut]);
        assert_eq!(eof, Ok(()), "split at {cut}");
        assert_eq!(events, whole, "split at {cut}");
    }
}
