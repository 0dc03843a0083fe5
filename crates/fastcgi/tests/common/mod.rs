//! Helpers shared by the integration tests: draining connections and feeding bytes in
//! pieces.
#![allow(dead_code)] // each test binary uses a different subset

use fastcgi::{ClientConnection, ClientEvent, DecodeError, Event, ServerConfig, ServerConnection};

/// Poll until `Ok(None)` or an error. Bounded: a decoder that loops forever fails here.
pub fn drain_server(
    conn: &mut ServerConnection,
    events: &mut Vec<Event>,
) -> Result<(), DecodeError> {
    for _ in 0..1_000_000 {
        match conn.poll_event()? {
            Some(e) => events.push(e),
            None => return Ok(()),
        }
    }
    panic!("poll_event never returned Ok(None)");
}

/// Client twin of [`drain_server`].
pub fn drain_client(
    conn: &mut ClientConnection,
    events: &mut Vec<ClientEvent>,
) -> Result<(), DecodeError> {
    for _ in 0..1_000_000 {
        match conn.poll_event()? {
            Some(e) => events.push(e),
            None => return Ok(()),
        }
    }
    panic!("poll_event never returned Ok(None)");
}

/// Everything `wire` decodes to when fed in the pieces `cuts` delimits (sorted offsets),
/// then EOF. The error, if any, ends the sequence.
pub fn server_events_split(
    config: &ServerConfig,
    wire: &[u8],
    cuts: &[usize],
) -> (Vec<Event>, Result<(), DecodeError>) {
    let mut conn = ServerConnection::new(config.clone());
    let mut events = Vec::new();
    let mut start = 0;
    for &cut in cuts.iter().chain(std::iter::once(&wire.len())) {
        let cut = cut.clamp(start, wire.len());
        conn.receive(&wire[start..cut]);
        start = cut;
        if let Err(e) = drain_server(&mut conn, &mut events) {
            return (events, Err(e));
        }
    }
    let eof = conn.receive_eof();
    (events, eof)
}

/// Client twin of [`server_events_split`].
pub fn client_events_split(
    wire: &[u8],
    cuts: &[usize],
) -> (Vec<ClientEvent>, Result<(), DecodeError>) {
    let mut conn = ClientConnection::new();
    let mut events = Vec::new();
    let mut start = 0;
    for &cut in cuts.iter().chain(std::iter::once(&wire.len())) {
        let cut = cut.clamp(start, wire.len());
        conn.receive(&wire[start..cut]);
        start = cut;
        if let Err(e) = drain_client(&mut conn, &mut events) {
            return (events, Err(e));
        }
    }
    let eof = conn.receive_eof();
    (events, eof)
}

/// One-shot decode of a whole byte string.
pub fn server_events(config: &ServerConfig, wire: &[u8]) -> (Vec<Event>, Result<(), DecodeError>) {
    server_events_split(config, wire, &[])
}
