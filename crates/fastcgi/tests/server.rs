//! The application-side state machine: policy, stream order and every protocol error.

mod common;

use bytes::{Bytes, BytesMut};
use common::{drain_server, server_events};
use fastcgi::nv::encode_pair;
use fastcgi::*;

fn wire(build: impl FnOnce(&mut BytesMut)) -> Vec<u8> {
    let mut out = BytesMut::new();
    build(&mut out);
    out.to_vec()
}

fn begin_with_params(out: &mut BytesMut, id: u16) {
    encode_begin_request(out, id, Role::Responder, true);
    encode_params(out, id, [(&b"REQUEST_METHOD"[..], &b"GET"[..])]);
}

/// Decode `wire` in one go and return the error it must produce.
fn error_of(config: &ServerConfig, wire: &[u8]) -> DecodeError {
    match server_events(config, wire) {
        (events, Ok(())) => panic!("expected an error, got {events:?}"),
        (_, Err(e)) => e,
    }
}

fn begin(id: u16, role: Role, keep_conn: bool) -> Event {
    Event::BeginRequest {
        request_id: id,
        role,
        keep_conn,
    }
}

#[test]
fn bad_version_is_an_error() {
    let mut w = wire(|o| begin_with_params(o, 1));
    w[0] = 0;
    assert_eq!(
        error_of(&ServerConfig::default(), &w),
        DecodeError::UnsupportedVersion(0)
    );
    let http = b"GET / HTTP/1.0\r\n\r\n";
    assert_eq!(
        error_of(&ServerConfig::default(), http),
        DecodeError::UnsupportedVersion(b'G')
    );
}

#[test]
fn errors_are_sticky() {
    let mut conn = ServerConnection::new(ServerConfig::default());
    conn.receive(&[9, 1, 0, 1, 0, 8, 0, 0]);
    assert_eq!(conn.poll_event(), Err(DecodeError::UnsupportedVersion(9)));
    conn.receive(&wire(|o| begin_with_params(o, 1)));
    assert_eq!(conn.poll_event(), Err(DecodeError::UnsupportedVersion(9)));
}

#[test]
fn begin_request_body_must_be_eight_bytes() {
    for len in [0usize, 7, 9, 16] {
        let w = wire(|o| encode_record(o, RecordType::BeginRequest, 1, &vec![0; len]));
        assert_eq!(
            error_of(&ServerConfig::default(), &w),
            DecodeError::BadBodyLength {
                record_type: RecordType::BeginRequest,
                len,
                expected: 8
            }
        );
    }
}

#[test]
fn begin_request_on_the_management_id_is_an_error() {
    let w = wire(|o| encode_begin_request(o, 0, Role::Responder, false));
    assert_eq!(
        error_of(&ServerConfig::default(), &w),
        DecodeError::UnexpectedRecord {
            record_type: RecordType::BeginRequest,
            request_id: 0
        }
    );
}

#[test]
fn duplicate_begin_is_an_error() {
    let w = wire(|o| {
        encode_begin_request(o, 5, Role::Responder, false);
        encode_begin_request(o, 5, Role::Responder, false);
    });
    assert_eq!(
        error_of(&ServerConfig::default(), &w),
        DecodeError::DuplicateRequest(5)
    );
}

#[test]
fn lying_name_value_lengths_are_errors() {
    // Value length 200 but only 3 bytes follow before the stream ends.
    let w = wire(|o| {
        encode_begin_request(o, 1, Role::Responder, false);
        encode_record(
            o,
            RecordType::Params,
            1,
            &[1, 0x80, 0, 0, 200, b'N', b'a', b'b'],
        );
        encode_end_of_stream(o, RecordType::Params, 1);
    });
    assert!(matches!(
        error_of(&ServerConfig::default(), &w),
        DecodeError::BadNameValue(_)
    ));
    // The same lie in a GET_VALUES query.
    let w = wire(|o| encode_record(o, RecordType::GetValues, 0, &[5, 0, b'A']));
    assert!(matches!(
        error_of(&ServerConfig::default(), &w),
        DecodeError::BadNameValue(_)
    ));
}

#[test]
fn params_larger_than_the_limit_are_errors() {
    let config = ServerConfig {
        max_params_len: 100,
        ..ServerConfig::default()
    };
    let mut raw = Vec::new();
    encode_pair(&mut raw, b"N", &[b'v'; 97]);
    assert_eq!(raw.len(), 100);
    // Exactly at the limit, split over records: accepted.
    let w = wire(|o| {
        encode_begin_request(o, 1, Role::Responder, false);
        encode_record(o, RecordType::Params, 1, &raw[..50]);
        encode_record(o, RecordType::Params, 1, &raw[50..]);
        encode_end_of_stream(o, RecordType::Params, 1);
    });
    let (events, eof) = server_events(&config, &w);
    assert_eq!(eof, Ok(()));
    assert!(matches!(&events[1], Event::Params { params, .. } if params.raw().len() == 100));

    // One byte over, in one record or across several.
    raw.clear();
    encode_pair(&mut raw, b"N", &[b'v'; 98]);
    let too_large = DecodeError::ParamsTooLarge {
        request_id: 1,
        limit: 100,
    };
    let one = wire(|o| {
        encode_begin_request(o, 1, Role::Responder, false);
        encode_record(o, RecordType::Params, 1, &raw);
    });
    assert_eq!(error_of(&config, &one), too_large);
    let three = wire(|o| {
        encode_begin_request(o, 1, Role::Responder, false);
        encode_record(o, RecordType::Params, 1, &raw[..40]);
        encode_record(o, RecordType::Params, 1, &raw[40..80]);
        encode_record(o, RecordType::Params, 1, &raw[80..]);
    });
    assert_eq!(error_of(&config, &three), too_large);
}

/// A large STDIN record arriving in two parts is handed out as it comes (see
/// `RecordDecoder::splitting_input`); an end of file between the parts is still a
/// truncated record, though no byte of it is left buffered.
#[test]
fn a_large_input_record_comes_out_in_parts_and_eof_inside_it_is_truncation() {
    let body = vec![b'b'; 3 * SPLIT_INPUT_MIN];
    let w = wire(|o| {
        begin_with_params(o, 1);
        encode_stream(o, RecordType::Stdin, 1, &body);
        encode_end_of_stream(o, RecordType::Stdin, 1);
    });
    let cut = w.len() - 8 - SPLIT_INPUT_MIN;
    let mut conn = ServerConnection::new(ServerConfig::default());
    conn.receive(&w[..cut]);
    let mut events = Vec::new();
    drain_server(&mut conn, &mut events).unwrap();
    let stdin_len = |events: &[Event]| -> Vec<usize> {
        events
            .iter()
            .filter_map(|e| match e {
                Event::Stdin { data, .. } => Some(data.len()),
                _ => None,
            })
            .collect()
    };
    assert_eq!(
        stdin_len(&events),
        [2 * SPLIT_INPUT_MIN],
        "the part received so far"
    );
    assert!(conn.read_buf().is_empty());
    assert!(conn.mid_record());
    assert_eq!(conn.receive_eof(), Err(DecodeError::TruncatedRecord(0)));
    conn.receive(&w[cut..]);
    drain_server(&mut conn, &mut events).unwrap();
    assert_eq!(
        stdin_len(&events),
        [2 * SPLIT_INPUT_MIN, SPLIT_INPUT_MIN, 0]
    );
    assert!(!conn.mid_record());
    assert_eq!(conn.receive_eof(), Ok(()));
}

#[test]
fn truncated_eof_is_reported_and_clean_eof_is_not() {
    let w = wire(|o| begin_with_params(o, 1));
    let mut conn = ServerConnection::new(ServerConfig::default());
    conn.receive(&w[..w.len() - 3]);
    let mut events = Vec::new();
    drain_server(&mut conn, &mut events).unwrap();
    assert_eq!(conn.receive_eof(), Err(DecodeError::TruncatedRecord(5)));
    conn.receive(&w[w.len() - 3..]);
    drain_server(&mut conn, &mut events).unwrap();
    assert_eq!(conn.receive_eof(), Ok(()));
    assert_eq!(events.len(), 2);
}

#[test]
fn stdin_and_data_before_params_end_are_errors() {
    for t in [RecordType::Stdin, RecordType::Data] {
        // Before any params, and after some params but before the closing record.
        let early = wire(|o| {
            encode_begin_request(o, 1, Role::Filter, false);
            encode_stream(o, t, 1, b"body");
        });
        let partial = wire(|o| {
            encode_begin_request(o, 1, Role::Filter, false);
            encode_stream(o, RecordType::Params, 1, &[1, 1, b'A', b'B']);
            encode_end_of_stream(o, t, 1);
        });
        for w in [early, partial] {
            assert_eq!(
                error_of(&ServerConfig::default(), &w),
                DecodeError::UnexpectedRecord {
                    record_type: t,
                    request_id: 1
                }
            );
        }
    }
}

#[test]
fn params_after_completion_is_an_error() {
    let w = wire(|o| {
        begin_with_params(o, 1);
        encode_stream(o, RecordType::Params, 1, &[1, 1, b'A', b'B']);
    });
    assert_eq!(
        error_of(&ServerConfig::default(), &w),
        DecodeError::UnexpectedRecord {
            record_type: RecordType::Params,
            request_id: 1
        }
    );
}

#[test]
fn stream_end_is_reported_once_and_data_after_it_is_an_error() {
    let w = wire(|o| {
        begin_with_params(o, 1);
        encode_stream(o, RecordType::Stdin, 1, b"abc");
        encode_end_of_stream(o, RecordType::Stdin, 1);
        encode_end_of_stream(o, RecordType::Stdin, 1);
        encode_stream(o, RecordType::Data, 1, b"d");
        encode_end_of_stream(o, RecordType::Data, 1);
        encode_end_of_stream(o, RecordType::Data, 1);
    });
    let (events, eof) = server_events(&ServerConfig::default(), &w);
    assert_eq!(eof, Ok(()));
    assert_eq!(
        &events[2..],
        &[
            Event::Stdin {
                request_id: 1,
                data: Bytes::from_static(b"abc")
            },
            Event::Stdin {
                request_id: 1,
                data: Bytes::new()
            },
            Event::Data {
                request_id: 1,
                data: Bytes::from_static(b"d")
            },
            Event::Data {
                request_id: 1,
                data: Bytes::new()
            },
        ]
    );
    let mut w2 = w.clone();
    w2.extend(wire(|o| encode_stream(o, RecordType::Stdin, 1, b"more")));
    assert_eq!(
        error_of(&ServerConfig::default(), &w2),
        DecodeError::UnexpectedRecord {
            record_type: RecordType::Stdin,
            request_id: 1
        }
    );
}

#[test]
fn records_only_an_application_sends_are_errors() {
    let cases: Vec<(RecordType, u16, Vec<u8>)> = vec![
        (RecordType::EndRequest, 1, vec![0; 8]),
        (RecordType::Stdout, 1, b"x".to_vec()),
        (RecordType::Stderr, 1, b"x".to_vec()),
        (RecordType::GetValuesResult, 0, vec![]),
        (RecordType::UnknownType, 0, vec![0; 8]),
        // GET_VALUES is a management record: on a request id it makes no sense.
        (RecordType::GetValues, 1, vec![]),
    ];
    for (t, id, content) in cases {
        let w = wire(|o| {
            begin_with_params(o, 1);
            encode_record(o, t, id, &content);
        });
        assert_eq!(
            error_of(&ServerConfig::default(), &w),
            DecodeError::UnexpectedRecord {
                record_type: t,
                request_id: id
            },
            "{t:?}"
        );
    }
}

#[test]
fn unknown_types_are_reported_on_any_id_and_decoding_continues() {
    let w = wire(|o| {
        encode_record(o, RecordType::Other(0), 0, b"");
        encode_record(o, RecordType::Other(200), 7, b"whatever");
        encode_get_values(o, [values::FCGI_MAX_REQS]);
    });
    let (events, eof) = server_events(&ServerConfig::default(), &w);
    assert_eq!(eof, Ok(()));
    assert_eq!(
        events,
        vec![
            Event::UnknownType { record_type: 0 },
            Event::UnknownType { record_type: 200 },
            Event::GetValues {
                names: vec![Bytes::from_static(b"FCGI_MAX_REQS")]
            },
        ]
    );
}

#[test]
fn get_values_ignores_the_values_in_the_query() {
    let mut raw = Vec::new();
    encode_pair(&mut raw, b"FCGI_MAX_CONNS", b"junk");
    encode_pair(&mut raw, b"FCGI_MPXS_CONNS", b"");
    let w = wire(|o| encode_record(o, RecordType::GetValues, 0, &raw));
    let (events, _) = server_events(&ServerConfig::default(), &w);
    assert_eq!(
        events,
        vec![Event::GetValues {
            names: vec![
                Bytes::from_static(b"FCGI_MAX_CONNS"),
                Bytes::from_static(b"FCGI_MPXS_CONNS")
            ]
        }]
    );
}

#[test]
fn unknown_and_disallowed_roles_are_rejected() {
    let config = ServerConfig {
        roles: vec![Role::Responder],
        max_active_requests: 10,
        ..ServerConfig::default()
    };
    let w = wire(|o| {
        encode_begin_request(o, 1, Role::Other(0), false);
        encode_begin_request(o, 2, Role::Other(4), false);
        encode_begin_request(o, 3, Role::Filter, false);
        encode_begin_request(o, 4, Role::Authorizer, true);
        encode_begin_request(o, 5, Role::Responder, true);
    });
    let (events, eof) = server_events(&config, &w);
    assert_eq!(eof, Ok(()));
    let reject = |id| Event::Reject {
        request_id: id,
        status: ProtocolStatus::UnknownRole,
    };
    assert_eq!(
        events,
        vec![
            reject(1),
            reject(2),
            reject(3),
            reject(4),
            begin(5, Role::Responder, true)
        ]
    );
}

#[test]
fn too_many_requests_are_rejected_with_cant_mpx_conn() {
    let mut conn = ServerConnection::new(ServerConfig::default());
    conn.receive(&wire(|o| {
        begin_with_params(o, 1);
        encode_begin_request(o, 2, Role::Responder, false);
    }));
    let mut events = Vec::new();
    drain_server(&mut conn, &mut events).unwrap();
    assert_eq!(conn.active_requests(), 1);
    assert_eq!(
        events[2],
        Event::Reject {
            request_id: 2,
            status: ProtocolStatus::CantMpxConn
        }
    );
    // Once request 1 ends, a new request fits.
    conn.end_request(1);
    conn.end_request(2);
    assert_eq!(conn.active_requests(), 0);
    conn.receive(&wire(|o| {
        encode_begin_request(o, 2, Role::Responder, false)
    }));
    events.clear();
    drain_server(&mut conn, &mut events).unwrap();
    assert_eq!(events, vec![begin(2, Role::Responder, false)]);
    assert_eq!(conn.active_requests(), 1);
}

#[test]
fn records_for_rejected_ids_are_ignored_until_end_request() {
    let mut conn = ServerConnection::new(ServerConfig::default());
    conn.receive(&wire(|o| {
        begin_with_params(o, 1);
        encode_begin_request(o, 2, Role::Responder, false);
        // All of these belong to the rejected request 2 and must vanish.
        encode_params(o, 2, [(&b"A"[..], &b"B"[..])]);
        encode_stream(o, RecordType::Stdin, 2, b"body");
        encode_end_of_stream(o, RecordType::Stdin, 2);
        encode_record(o, RecordType::Params, 2, &[9, 9, 9]); // malformed, still ignored
        encode_abort_request(o, 2);
        encode_begin_request(o, 2, Role::Responder, false);
        encode_stream(o, RecordType::Stdin, 1, b"x");
    }));
    let mut events = Vec::new();
    drain_server(&mut conn, &mut events).unwrap();
    assert_eq!(events.len(), 4, "{events:?}");
    assert!(matches!(events[2], Event::Reject { request_id: 2, .. }));
    assert_eq!(
        events[3],
        Event::Stdin {
            request_id: 1,
            data: Bytes::from_static(b"x")
        }
    );
    assert_eq!(conn.active_requests(), 1);
}

#[test]
fn records_for_inactive_ids_are_ignored() {
    let mut conn = ServerConnection::new(ServerConfig::default());
    conn.receive(&wire(|o| {
        // Never begun.
        encode_params(o, 3, [(&b"A"[..], &b"B"[..])]);
        encode_stream(o, RecordType::Stdin, 3, b"x");
        encode_stream(o, RecordType::Data, 3, b"x");
        encode_abort_request(o, 3);
        begin_with_params(o, 1);
    }));
    let mut events = Vec::new();
    drain_server(&mut conn, &mut events).unwrap();
    assert_eq!(events.len(), 2, "{events:?}");
    conn.end_request(1);
    assert_eq!(conn.active_requests(), 0);
    // Ended: its late records vanish too.
    conn.receive(&wire(|o| {
        encode_stream(o, RecordType::Stdin, 1, b"late");
        encode_abort_request(o, 1);
    }));
    events.clear();
    drain_server(&mut conn, &mut events).unwrap();
    assert!(events.is_empty(), "{events:?}");
    // Ending an unknown id is harmless.
    conn.end_request(42);
    assert_eq!(conn.active_requests(), 0);
}

#[test]
fn abort_is_reported_once() {
    let w = wire(|o| {
        begin_with_params(o, 1);
        encode_abort_request(o, 1);
        encode_abort_request(o, 1);
    });
    let (events, eof) = server_events(&ServerConfig::default(), &w);
    assert_eq!(eof, Ok(()));
    assert_eq!(events.len(), 3);
    assert_eq!(events[2], Event::AbortRequest { request_id: 1 });
}

#[test]
fn abort_before_params_is_reported() {
    let w = wire(|o| {
        encode_begin_request(o, 1, Role::Responder, false);
        encode_abort_request(o, 1);
    });
    let (events, _) = server_events(&ServerConfig::default(), &w);
    assert_eq!(events[1], Event::AbortRequest { request_id: 1 });
}

#[test]
fn multiplexed_requests_are_tracked_separately() {
    let config = ServerConfig {
        max_active_requests: 3,
        ..ServerConfig::default()
    };
    let mut conn = ServerConnection::new(config);
    conn.receive(&wire(|o| {
        for id in [10, 20, 30] {
            encode_begin_request(o, id, Role::Responder, true);
        }
        encode_begin_request(o, 40, Role::Responder, true);
        for id in [30, 10, 20] {
            encode_params(o, id, [(&b"ID"[..], id.to_string().as_bytes())]);
        }
    }));
    let mut events = Vec::new();
    drain_server(&mut conn, &mut events).unwrap();
    assert_eq!(conn.active_requests(), 3);
    assert!(matches!(
        events[3],
        Event::Reject {
            request_id: 40,
            status: ProtocolStatus::CantMpxConn
        }
    ));
    for (event, id) in events[4..].iter().zip([30u16, 10, 20]) {
        match event {
            Event::Params { request_id, params } => {
                assert_eq!(*request_id, id);
                assert_eq!(params.get(b"ID"), Some(id.to_string().as_bytes()));
            }
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn empty_params_are_valid() {
    let w = wire(|o| {
        encode_begin_request(o, 1, Role::Responder, false);
        encode_end_of_stream(o, RecordType::Params, 1);
    });
    let (events, _) = server_events(&ServerConfig::default(), &w);
    assert!(matches!(&events[1], Event::Params { params, .. } if params.is_empty()));
}

/// The address range of the connection's read buffer, after the bytes were put in it.
fn load(conn: &mut ServerConnection, bytes: &[u8]) -> std::ops::Range<usize> {
    conn.read_buf().extend_from_slice(bytes);
    let start = conn.read_buf().as_ptr() as usize;
    start..start + bytes.len()
}

#[test]
fn single_record_params_and_stdin_are_not_copied() {
    let mut conn = ServerConnection::new(ServerConfig::default());
    let range = load(
        &mut conn,
        &wire(|o| {
            begin_with_params(o, 1);
            encode_stream(o, RecordType::Stdin, 1, b"body bytes");
        }),
    );
    let mut events = Vec::new();
    drain_server(&mut conn, &mut events).unwrap();
    match &events[1] {
        Event::Params { params, .. } => {
            assert!(
                range.contains(&(params.raw().as_ptr() as usize)),
                "params were copied"
            );
            let v = params.get(b"REQUEST_METHOD").unwrap();
            assert!(range.contains(&(v.as_ptr() as usize)));
        }
        other => panic!("{other:?}"),
    }
    match &events[2] {
        Event::Stdin { data, .. } => assert!(range.contains(&(data.as_ptr() as usize))),
        other => panic!("{other:?}"),
    }
}

#[test]
fn params_in_two_records_are_joined() {
    let mut raw = Vec::new();
    encode_pair(&mut raw, b"SERVER_NAME", b"example.org");
    let mut conn = ServerConnection::new(ServerConfig::default());
    let range = load(
        &mut conn,
        &wire(|o| {
            encode_begin_request(o, 1, Role::Responder, false);
            encode_record(o, RecordType::Params, 1, &raw[..5]);
            encode_record(o, RecordType::Params, 1, &raw[5..]);
            encode_end_of_stream(o, RecordType::Params, 1);
        }),
    );
    let mut events = Vec::new();
    drain_server(&mut conn, &mut events).unwrap();
    match &events[1] {
        Event::Params { params, .. } => {
            assert!(!range.contains(&(params.raw().as_ptr() as usize)));
            assert_eq!(params.get(b"SERVER_NAME"), Some(&b"example.org"[..]));
        }
        other => panic!("{other:?}"),
    }
}
