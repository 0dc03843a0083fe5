//! Property tests: whatever is encoded decodes back to the same thing under any chunking
//! of the byte stream, and no input makes the decoders panic.

mod common;

use bytes::BytesMut;
use common::{client_events_split, drain_client, drain_server, server_events_split};
use fastcgi::nv::encode_pair;
use fastcgi::*;
use proptest::prelude::*;
use std::collections::HashMap;

/// Short strings and ones around the 127/128 length-form boundary.
fn nv_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => prop::collection::vec(any::<u8>(), 0..12),
        1 => prop::collection::vec(any::<u8>(), 125..131),
        1 => prop::collection::vec(any::<u8>(), 0..400),
    ]
}

#[derive(Clone, Debug)]
struct Request {
    role: Role,
    keep_conn: bool,
    params: Vec<(Vec<u8>, Vec<u8>)>,
    /// Where the encoded params are cut into records (fractions of its length, per mille).
    params_cuts: Vec<u16>,
    stdin: Vec<Vec<u8>>,
    data: Vec<Vec<u8>>,
}

fn request() -> impl Strategy<Value = Request> {
    (
        prop::sample::select(vec![Role::Responder, Role::Authorizer, Role::Filter]),
        any::<bool>(),
        prop::collection::vec((nv_bytes(), nv_bytes()), 0..8),
        prop::collection::vec(0u16..=1000, 0..4),
        prop::collection::vec(prop::collection::vec(any::<u8>(), 1..300), 0..4),
        prop::collection::vec(prop::collection::vec(any::<u8>(), 1..50), 0..3),
    )
        .prop_map(
            |(role, keep_conn, params, params_cuts, stdin, data)| Request {
                role,
                keep_conn,
                params,
                params_cuts,
                stdin,
                data,
            },
        )
}

/// The records of one request, in the order a web server sends them.
fn request_records(id: u16, req: &Request) -> Vec<BytesMut> {
    let mut records = Vec::new();
    let mut rec = |f: &dyn Fn(&mut BytesMut)| {
        let mut b = BytesMut::new();
        f(&mut b);
        records.push(b);
    };
    rec(&|o| encode_begin_request(o, id, req.role, req.keep_conn));
    let mut raw = Vec::new();
    for (n, v) in &req.params {
        encode_pair(&mut raw, n, v);
    }
    let mut cuts: Vec<usize> = req
        .params_cuts
        .iter()
        .map(|c| raw.len() * usize::from(*c) / 1000)
        .collect();
    cuts.sort_unstable();
    let mut start = 0;
    for cut in cuts.into_iter().chain([raw.len()]) {
        let piece = raw[start..cut].to_vec();
        start = cut;
        rec(&|o| encode_stream(o, RecordType::Params, id, &piece));
    }
    rec(&|o| encode_end_of_stream(o, RecordType::Params, id));
    for chunk in &req.stdin {
        rec(&|o| encode_stream(o, RecordType::Stdin, id, chunk));
    }
    rec(&|o| encode_end_of_stream(o, RecordType::Stdin, id));
    for chunk in &req.data {
        rec(&|o| encode_stream(o, RecordType::Data, id, chunk));
    }
    rec(&|o| encode_end_of_stream(o, RecordType::Data, id));
    records.retain(|r| !r.is_empty());
    records
}

#[derive(Clone, Debug)]
enum Management {
    GetValues(Vec<Vec<u8>>),
    Unknown(u8, Vec<u8>),
}

fn management() -> impl Strategy<Value = Management> {
    prop_oneof![
        prop::collection::vec(nv_bytes(), 0..4).prop_map(Management::GetValues),
        (12u8..=255, prop::collection::vec(any::<u8>(), 0..20))
            .prop_map(|(t, c)| Management::Unknown(t, c)),
    ]
}

/// Several requests, their records interleaved at random (each request's own order
/// kept), with management records sprinkled in; plus cut points for the byte stream.
fn conversation() -> impl Strategy<Value = (Vec<Request>, Vec<u8>, Vec<Management>, Vec<usize>)> {
    (
        prop::collection::vec(request(), 1..4),
        prop::collection::vec(any::<u8>(), 0..64),
        prop::collection::vec(management(), 0..3),
        prop::collection::vec(any::<usize>(), 0..12),
    )
}

fn ids(n: usize, seed: u8) -> Vec<u16> {
    (0..n)
        .map(|i| (usize::from(seed) * 251 + i * 7919) % 65535 + 1)
        .map(|id| id as u16)
        .collect()
}

#[derive(Default, Debug)]
struct Seen {
    begin: Option<(Role, bool)>,
    params: Option<Vec<(Vec<u8>, Vec<u8>)>>,
    stdin: Vec<u8>,
    stdin_ended: bool,
    data: Vec<u8>,
    data_ended: bool,
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn requests_round_trip_under_any_chunking(
        (requests, order, mgmt, cuts) in conversation(),
        seed in any::<u8>(),
    ) {
        let ids = ids(requests.len(), seed);
        let mut queues: Vec<std::collections::VecDeque<BytesMut>> = requests
            .iter()
            .zip(&ids)
            .map(|(r, id)| request_records(*id, r).into())
            .collect();
        let mut wire = Vec::new();
        let mut mgmt_left = mgmt.clone();
        let mut order = order.into_iter().cycle();
        while queues.iter().any(|q| !q.is_empty()) {
            let pick = usize::from(order.next().unwrap_or(0));
            if pick % 5 == 0 && let Some(m) = mgmt_left.pop() {
                let mut b = BytesMut::new();
                match m {
                    Management::GetValues(names) => {
                        encode_get_values(&mut b, names.iter().map(|n| &n[..]))
                    }
                    Management::Unknown(t, c) => encode_record(&mut b, RecordType::Other(t), 0, &c),
                }
                wire.extend_from_slice(&b);
            }
            let live: Vec<usize> = (0..queues.len()).filter(|i| !queues[*i].is_empty()).collect();
            let q = live[pick % live.len()];
            wire.extend_from_slice(&queues[q].pop_front().unwrap());
        }
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (wire.len() + 1)).collect();
        cuts.sort_unstable();

        let config = ServerConfig { max_active_requests: 4, ..ServerConfig::default() };
        let (events, eof) = server_events_split(&config, &wire, &cuts);
        prop_assert_eq!(eof, Ok(()));

        let mut seen: HashMap<u16, Seen> = HashMap::new();
        let mut management_events = 0;
        for e in events {
            match e {
                Event::BeginRequest { request_id, role, keep_conn } => {
                    let s = seen.entry(request_id).or_default();
                    prop_assert!(s.begin.is_none());
                    s.begin = Some((role, keep_conn));
                }
                Event::Params { request_id, params } => {
                    let s = seen.get_mut(&request_id).expect("params before begin");
                    prop_assert!(s.params.is_none());
                    s.params = Some(params.iter().map(|(n, v)| (n.to_vec(), v.to_vec())).collect());
                }
                Event::Stdin { request_id, data } => {
                    let s = seen.get_mut(&request_id).expect("stdin before begin");
                    prop_assert!(s.params.is_some() && !s.stdin_ended);
                    if data.is_empty() { s.stdin_ended = true } else { s.stdin.extend_from_slice(&data) }
                }
                Event::Data { request_id, data } => {
                    let s = seen.get_mut(&request_id).expect("data before begin");
                    prop_assert!(s.params.is_some() && !s.data_ended);
                    if data.is_empty() { s.data_ended = true } else { s.data.extend_from_slice(&data) }
                }
                Event::GetValues { .. } | Event::UnknownType { .. } => management_events += 1,
                other => prop_assert!(false, "unexpected event {:?}", other),
            }
        }
        prop_assert_eq!(management_events, mgmt.len() - mgmt_left.len());
        prop_assert_eq!(seen.len(), requests.len());
        for (req, id) in requests.iter().zip(&ids) {
            let s = &seen[id];
            prop_assert_eq!(s.begin, Some((req.role, req.keep_conn)));
            prop_assert_eq!(s.params.as_ref(), Some(&req.params));
            prop_assert_eq!(&s.stdin, &req.stdin.concat());
            prop_assert_eq!(&s.data, &req.data.concat());
            prop_assert!(s.stdin_ended && s.data_ended);
        }
    }

    #[test]
    fn responses_round_trip_under_any_chunking(
        stdout in prop::collection::vec(prop::collection::vec(any::<u8>(), 1..200), 0..5),
        stderr in prop::collection::vec(any::<u8>(), 0..100),
        values in prop::collection::vec((nv_bytes(), nv_bytes()), 0..4),
        app_status in any::<u32>(),
        status in any::<u8>(),
        id in 1u16..,
        cuts in prop::collection::vec(any::<usize>(), 0..10),
    ) {
        let mut out = BytesMut::new();
        encode_get_values_result(&mut out, values.iter().map(|(n, v)| (&n[..], &v[..])));
        for chunk in &stdout {
            encode_stream(&mut out, RecordType::Stdout, id, chunk);
        }
        encode_stream(&mut out, RecordType::Stderr, id, &stderr);
        encode_end_of_stream(&mut out, RecordType::Stdout, id);
        encode_end_request(&mut out, id, app_status, status.into());
        let wire = out.to_vec();
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (wire.len() + 1)).collect();
        cuts.sort_unstable();
        let (events, eof) = client_events_split(&wire, &cuts);
        prop_assert_eq!(eof, Ok(()));
        let mut got_stdout = Vec::new();
        let mut got_stderr = Vec::new();
        let mut got_values = None;
        let mut end = None;
        for e in events {
            match e {
                ClientEvent::Stdout { request_id, data } => {
                    prop_assert_eq!(request_id, id);
                    got_stdout.extend_from_slice(&data);
                }
                ClientEvent::Stderr { data, .. } => got_stderr.extend_from_slice(&data),
                ClientEvent::GetValuesResult { values } => got_values = Some(values),
                ClientEvent::EndRequest { request_id, app_status, protocol_status } => {
                    end = Some((request_id, app_status, u8::from(protocol_status)))
                }
                other => prop_assert!(false, "unexpected {:?}", other),
            }
        }
        prop_assert_eq!(got_stdout, stdout.concat());
        prop_assert_eq!(got_stderr, stderr);
        let got_values: Vec<(Vec<u8>, Vec<u8>)> = got_values
            .unwrap()
            .into_iter()
            .map(|(n, v)| (n.to_vec(), v.to_vec()))
            .collect();
        prop_assert_eq!(got_values, values);
        prop_assert_eq!(end, Some((id, app_status, status)));
    }

    #[test]
    fn params_round_trip(pairs in prop::collection::vec((nv_bytes(), nv_bytes()), 0..20)) {
        let mut raw = Vec::new();
        for (n, v) in &pairs {
            encode_pair(&mut raw, n, v);
        }
        let params = Params::new(raw.into()).unwrap();
        prop_assert_eq!(params.len(), pairs.len());
        let back: Vec<(Vec<u8>, Vec<u8>)> =
            params.iter().map(|(n, v)| (n.to_vec(), v.to_vec())).collect();
        prop_assert_eq!(&back, &pairs);
        if let Some((n, _)) = pairs.first() {
            let last = pairs.iter().rev().find(|(m, _)| m == n).map(|(_, v)| &v[..]);
            prop_assert_eq!(params.get(n), last);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(
        bytes in prop::collection::vec(any::<u8>(), 0..2048),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (bytes.len() + 1)).collect();
        cuts.sort_unstable();
        let _ = server_events_split(&ServerConfig::default(), &bytes, &cuts);
        let _ = client_events_split(&bytes, &cuts);
        let _ = Params::new(bytes.clone().into());
    }

    /// Garbage with a valid version byte goes deep into the state machines.
    #[test]
    fn arbitrary_records_never_panic(
        records in prop::collection::vec(
            (0u8..16, 0u16..4, prop::collection::vec(any::<u8>(), 0..24), 0u8..9),
            0..40,
        ),
        max_active in 0usize..3,
    ) {
        let mut wire = Vec::new();
        for (t, id, content, padding) in &records {
            let len = (content.len() as u16).to_be_bytes();
            let id = id.to_be_bytes();
            wire.extend_from_slice(&[1, *t, id[0], id[1], len[0], len[1], *padding, 0]);
            wire.extend_from_slice(content);
            wire.extend(std::iter::repeat_n(0, usize::from(*padding)));
        }
        let config = ServerConfig { max_active_requests: max_active, ..ServerConfig::default() };
        let mut server = ServerConnection::new(config);
        server.receive(&wire);
        let mut events = Vec::new();
        // Answer the way a worker does: rejected and aborted requests end at once.
        for _ in 0..wire.len() + 1 {
            match server.poll_event() {
                Ok(Some(Event::Reject { request_id, .. }))
                | Ok(Some(Event::AbortRequest { request_id })) => server.end_request(request_id),
                Ok(Some(e)) => events.push(e),
                Ok(None) | Err(_) => break,
            }
            prop_assert!(server.active_requests() <= max_active);
        }
        let _ = drain_server(&mut server, &mut events);
        let mut client = ClientConnection::new();
        client.receive(&wire);
        let _ = drain_client(&mut client, &mut Vec::new());
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]

    /// Streams longer than one record are chunked and come back whole.
    #[test]
    fn long_streams_round_trip(
        len in 65_530usize..200_000,
        seed in any::<u8>(),
        cuts in prop::collection::vec(any::<usize>(), 0..6),
    ) {
        let body: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect();
        let mut out = BytesMut::new();
        encode_begin_request(&mut out, 1, Role::Responder, false);
        encode_params(&mut out, 1, [(&b"BIG"[..], &body[..])]);
        encode_stream(&mut out, RecordType::Stdin, 1, &body);
        encode_end_of_stream(&mut out, RecordType::Stdin, 1);
        let wire = out.to_vec();
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (wire.len() + 1)).collect();
        cuts.sort_unstable();
        let (events, eof) = server_events_split(&ServerConfig::default(), &wire, &cuts);
        prop_assert_eq!(eof, Ok(()));
        let mut stdin = Vec::new();
        let mut pieces = Vec::new();
        for e in &events {
            match e {
                Event::Params { params, .. } => prop_assert_eq!(params.get(b"BIG"), Some(&body[..])),
                Event::Stdin { data, .. } => {
                    prop_assert!(data.len() <= MAX_CONTENT_LEN);
                    stdin.extend_from_slice(data);
                    pieces.push(data.len());
                }
                _ => {}
            }
        }
        // Only the end of the stream is empty, however the records arrived in pieces;
        // received whole, each record is one event.
        prop_assert_eq!(pieces.iter().position(|&n| n == 0), Some(pieces.len() - 1));
        if cuts.is_empty() {
            prop_assert_eq!(pieces.len(), len.div_ceil(MAX_CONTENT_LEN) + 1);
        }
        prop_assert_eq!(stdin, body);
    }
}
