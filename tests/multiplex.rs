//! Threads and multiplexing on the wire: `threads: N` per worker, FCGI_MPXS_CONNS,
//! requests interleaved on one connection (large bodies, each answered on its own id,
//! records whole), requests of one worker running in the app at the same time, and
//! management records answered while a request runs.

mod common;

use bytes::BytesMut;
use common::fcgi::{self, Addr, CgiResponseExt as _, Conn, Request, ResponseExt as _};
use common::{Pool, Pyfpm, TestEnv, crc32, test_bytes, wait_until};
use fastcgi::{ClientEvent, ProtocolStatus, RecordType, encode_stream, values};
use std::collections::BTreeMap;
use std::time::Duration;

/// A pyfpm serving one pool on a Unix socket.
struct Server {
    // Field order matters: the process stops before its directory is removed.
    _pyfpm: Pyfpm,
    addr: Addr,
    env: TestEnv,
}

fn serve(app: &str, children: u32, threads: u32) -> Server {
    let env = TestEnv::new();
    let sock = env.file("www.sock");
    let pool = Pool::new("www", app)
        .listen(&sock.display().to_string())
        .children(children)
        .with(&format!("threads: {threads}"));
    let addr = Addr::Unix(sock);
    let pyfpm = env.start(&[pool], &addr);
    Server {
        _pyfpm: pyfpm,
        addr,
        env,
    }
}

/// What arrived for each request id until every id in `ids` ended: stdout bytes, and
/// the protocol status of END_REQUEST.
type Answers = BTreeMap<u16, (Vec<u8>, ProtocolStatus)>;

fn read_answers(c: &mut Conn, ids: &[u16]) -> Answers {
    let mut stdout: BTreeMap<u16, Vec<u8>> = BTreeMap::new();
    let mut ended = Answers::new();
    while ids.iter().any(|id| !ended.contains_key(id)) {
        match c.next_event().expect("read a record") {
            Some(ClientEvent::Stdout { request_id, data }) => stdout
                .entry(request_id)
                .or_default()
                .extend_from_slice(&data),
            Some(ClientEvent::Stderr { .. }) => {}
            Some(ClientEvent::EndRequest {
                request_id,
                protocol_status,
                ..
            }) => {
                let out = stdout.remove(&request_id).unwrap_or_default();
                ended.insert(request_id, (out, protocol_status));
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    ended
}

#[test]
fn get_values_reports_multiplexing_and_the_pool_capacity_with_threads() {
    let s = serve("echo:application", 2, 4);
    let mut c = Conn::connect(&s.addr).unwrap();
    let v = c.get_values(&[values::FCGI_MPXS_CONNS, values::FCGI_MAX_REQS]);
    assert_eq!(fcgi::value(&v, values::FCGI_MPXS_CONNS), Some("1"));
    // Two workers of four threads each.
    assert_eq!(fcgi::value(&v, values::FCGI_MAX_REQS), Some("8"));
}

#[test]
fn interleaved_multiplexed_requests_with_large_bodies_are_answered_on_their_own_ids() {
    let s = serve("echo:application", 1, 3);
    let mut c = Conn::connect(&s.addr).unwrap();
    let bodies: Vec<(u16, Vec<u8>)> = [(1u16, 300 << 10), (2, 200 << 10), (7, 100 << 10)]
        .into_iter()
        .map(|(id, len)| (id, test_bytes(len, u64::from(id))))
        .collect();
    // Every head first, then the bodies round-robin in 16 KiB records, then the ends of
    // the streams: the three requests arrive interleaved record by record.
    let mut bytes = BytesMut::new();
    for (id, body) in &bodies {
        let mut req = fcgi::post(&format!("/req{id}"), body.clone()).keep_conn(true);
        req.request_id = *id;
        req.encode_head(&mut bytes);
    }
    let chunks: Vec<Vec<&[u8]>> = bodies
        .iter()
        .map(|(_, b)| b.chunks(16 << 10).collect())
        .collect();
    let rounds = chunks.iter().map(Vec::len).max().unwrap();
    for round in 0..rounds {
        for ((id, _), pieces) in bodies.iter().zip(&chunks) {
            if let Some(piece) = pieces.get(round) {
                encode_stream(&mut bytes, RecordType::Stdin, *id, piece);
            }
        }
    }
    for (id, _) in &bodies {
        fastcgi::encode_end_of_stream(&mut bytes, RecordType::Stdin, *id);
    }
    // From a helper thread: the responses flow while the bodies are still being sent.
    let writer = c.send_bg(bytes.to_vec());
    let answers = read_answers(&mut c, &[1, 2, 7]);
    writer.join().unwrap().unwrap();
    for (id, body) in &bodies {
        let (stdout, status) = &answers[id];
        assert_eq!(*status, ProtocolStatus::RequestComplete, "request {id}");
        let v = fcgi::CgiResponse::parse(stdout).unwrap().json();
        assert_eq!(
            v["environ"]["PATH_INFO"],
            format!("/req{id}"),
            "request {id}"
        );
        assert_eq!(v["body_len"], body.len() as u64, "request {id}");
        assert_eq!(v["body_crc32"], u64::from(crc32(body)), "request {id}");
    }
    // The connection is still usable afterwards.
    let r = c.request(&Request::get("/after").keep_conn(true)).unwrap();
    assert!(r.completed());
    assert_eq!(r.cgi().status, 200);
}

#[test]
fn requests_multiplexed_on_one_connection_run_in_the_app_at_the_same_time() {
    // A barrier of three parties: all three answers are 200 only if the three requests
    // were in the app together, on three threads of the one worker.
    let s = serve("barrier:application", 1, 3);
    let mut c = Conn::connect(&s.addr).unwrap();
    let mut bytes = BytesMut::new();
    for id in 1..=3u16 {
        let mut req = Request::get("/?n=3&key=mpx").keep_conn(true);
        req.request_id = id;
        bytes.extend_from_slice(&req.encode());
    }
    c.send(&bytes).unwrap();
    c.set_timeout(Duration::from_secs(30));
    let answers = read_answers(&mut c, &[1, 2, 3]);
    let mut threads = Vec::new();
    for id in 1..=3u16 {
        let (stdout, status) = &answers[&id];
        assert_eq!(*status, ProtocolStatus::RequestComplete);
        let r = fcgi::CgiResponse::parse(stdout).unwrap();
        assert_eq!(
            r.status, 200,
            "request {id} did not meet the others in the app"
        );
        threads.push(r.json()["thread"].as_u64().unwrap());
    }
    threads.sort_unstable();
    threads.dedup();
    assert_eq!(threads.len(), 3, "three requests, three threads");
}

#[test]
fn one_worker_with_threads_serves_separate_connections_at_the_same_time() {
    let s = serve("barrier:application", 1, 4);
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let addr = s.addr.clone();
            std::thread::spawn(move || {
                let mut c = Conn::connect(&addr).unwrap();
                c.set_timeout(Duration::from_secs(30));
                let r = c.request(&Request::get("/?n=4&key=conns")).unwrap();
                assert!(r.completed());
                r.cgi()
            })
        })
        .collect();
    let pids: Vec<u64> = clients
        .into_iter()
        .map(|h| {
            let r = h.join().unwrap();
            assert_eq!(
                r.status, 200,
                "a request did not meet the others in the app"
            );
            r.json()["pid"].as_u64().unwrap()
        })
        .collect();
    assert!(
        pids.windows(2).all(|w| w[0] == w[1]),
        "one worker: {pids:?}"
    );
}

/// Send request 1, which stays in the app until [`release`], and wait until it is there.
fn start_sleeper(s: &Server, c: &mut Conn) {
    let touch = s.env.file("in-app");
    let gate = s.env.file("release");
    let _ = std::fs::remove_file(&touch);
    let _ = std::fs::remove_file(&gate);
    let req = Request::get(&format!(
        "/?touch={}&wait={}",
        touch.display(),
        gate.display()
    ))
    .keep_conn(true);
    c.send(&req.encode()).unwrap();
    // Well below the app's 30 s wait: an answer that only comes once request 1 ends
    // fails the test instead of arriving late.
    c.set_timeout(Duration::from_secs(10));
    assert!(
        wait_until(Duration::from_secs(20), || touch.exists()),
        "the request never reached the app"
    );
}

/// Let request 1 of [`start_sleeper`] finish.
fn release(s: &Server) {
    std::fs::write(s.env.file("release"), b"").unwrap();
}

#[test]
fn get_values_is_answered_while_a_request_runs() {
    for threads in [1, 4] {
        let s = serve("sleep:application", 1, threads);
        let mut c = Conn::connect(&s.addr).unwrap();
        start_sleeper(&s, &mut c);
        // The answer must come while request 1 is in the app, which it leaves only once
        // released.
        let v = c.get_values(&[values::FCGI_MPXS_CONNS]);
        let expected = if threads > 1 { "1" } else { "0" };
        assert_eq!(fcgi::value(&v, values::FCGI_MPXS_CONNS), Some(expected));
        release(&s);
        let answers = read_answers(&mut c, &[1]);
        assert_eq!(answers[&1].1, ProtocolStatus::RequestComplete);
    }
}

#[test]
fn with_one_thread_a_request_sent_while_another_runs_gets_cant_mpx_conn_at_once() {
    let s = serve("sleep:application", 1, 1);
    let mut c = Conn::connect(&s.addr).unwrap();
    start_sleeper(&s, &mut c);
    let mut second = Request::get("/?s=0").keep_conn(true);
    second.request_id = 2;
    c.send(&second.encode()).unwrap();
    // Refused while request 1 is still in the app, which it leaves only once released.
    match c.next_event().unwrap() {
        Some(ClientEvent::EndRequest {
            request_id: 2,
            protocol_status,
            ..
        }) => assert_eq!(protocol_status, ProtocolStatus::CantMpxConn),
        other => panic!("expected request 2 refused first, got {other:?}"),
    }
    release(&s);
    let answers = read_answers(&mut c, &[1]);
    assert_eq!(answers[&1].1, ProtocolStatus::RequestComplete);
    assert_eq!(
        fcgi::CgiResponse::parse(&answers[&1].0).unwrap().status,
        200
    );
}

#[test]
fn aborting_one_multiplexed_request_leaves_the_others_and_the_connection() {
    let s = serve("sleep:application", 1, 2);
    let mut c = Conn::connect(&s.addr).unwrap();
    start_sleeper(&s, &mut c);
    let mut second = Request::get("/?s=0").keep_conn(true);
    second.request_id = 2;
    let mut bytes = second.encode();
    fastcgi::encode_abort_request(&mut bytes, 1);
    c.send(&bytes).unwrap();
    // Request 2 is served while request 1 is still in the app.
    let answers = read_answers(&mut c, &[2]);
    release(&s);
    let mut answers2 = read_answers(&mut c, &[1]);
    let mut answers = answers;
    answers.append(&mut answers2);
    let (stdout, status) = &answers[&2];
    assert_eq!(*status, ProtocolStatus::RequestComplete);
    assert_eq!(fcgi::CgiResponse::parse(stdout).unwrap().status, 200);
    // The aborted request ends with no response.
    let (stdout, status) = &answers[&1];
    assert_eq!(*status, ProtocolStatus::RequestComplete);
    assert!(stdout.is_empty(), "an aborted request's response was sent");
    let r = c.request(&Request::get("/?s=0").keep_conn(true)).unwrap();
    assert!(r.completed(), "the connection is unusable after the abort");
}
