//! Arbitrary bytes, fed in arbitrary chunks, to both connection decoders. Neither may
//! panic, loop forever or let more requests be active than configured.
//!
//! Input layout: byte 0 picks the server policy, byte 1 how many chunk sizes follow,
//! then those chunk sizes (one byte each), then the bytes to decode.
#![no_main]

use fastcgi::{ClientConnection, Event, Role, ServerConfig, ServerConnection};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let Some((&policy, rest)) = input.split_first() else {
        return;
    };
    let Some((&n_chunks, rest)) = rest.split_first() else {
        return;
    };
    let n_chunks = usize::from(n_chunks % 32).min(rest.len());
    let (chunk_sizes, wire) = rest.split_at(n_chunks);

    let all_roles = [Role::Responder, Role::Authorizer, Role::Filter];
    let config = ServerConfig {
        max_params_len: 64 << (policy & 0x7),
        max_active_requests: usize::from((policy >> 3) & 0x3),
        roles: all_roles
            .iter()
            .enumerate()
            .filter(|(i, _)| (policy >> 5) & (1 << i) != 0)
            .map(|(_, r)| *r)
            .collect(),
    };
    let max_active = config.max_active_requests;
    let mut server = ServerConnection::new(config);
    let mut client = ClientConnection::new();
    let mut server_ok = true;
    let mut client_ok = true;

    let mut sizes = chunk_sizes.iter().map(|s| usize::from(*s) + 1).cycle();
    let mut at = 0;
    while at < wire.len() {
        let end = (at + sizes.next().unwrap_or(wire.len())).min(wire.len());
        let chunk = &wire[at..end];
        at = end;

        if server_ok {
            server.receive(chunk);
            // Every event consumes at least one 8-byte header, so this bound is generous.
            for _ in 0..=wire.len() {
                match server.poll_event() {
                    // End requests the way a worker would, so ids get reused.
                    Ok(Some(Event::Reject { request_id, .. }))
                    | Ok(Some(Event::AbortRequest { request_id })) => {
                        server.end_request(request_id)
                    }
                    Ok(Some(Event::Stdin { request_id, data })) if data.is_empty() => {
                        server.end_request(request_id)
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(_) => {
                        server_ok = false;
                        break;
                    }
                }
                assert!(server.active_requests() <= max_active);
            }
        }
        if client_ok {
            client.receive(chunk);
            for _ in 0..=wire.len() {
                match client.poll_event() {
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(_) => {
                        client_ok = false;
                        break;
                    }
                }
            }
        }
    }
    if server_ok {
        let _ = server.receive_eof();
    }
    if client_ok {
        let _ = client.receive_eof();
    }
});
