//! Plays systemd's notification socket (`NOTIFY_SOCKET`) for the tests of pyfpm's
//! `Type=notify` support: every datagram pyfpm sends, in arrival order.

#![allow(dead_code)] // each test binary uses a different part

use super::{Pyfpm, wait_until};
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The collecting socket; its reader thread ends when this is dropped.
pub struct NotifySocket {
    messages: Arc<Mutex<Vec<String>>>,
}

impl NotifySocket {
    /// Bind `path` and collect what arrives until the test ends.
    pub fn bind(path: &Path) -> NotifySocket {
        let socket = UnixDatagram::bind(path).expect("bind the notification socket");
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let messages = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::downgrade(&messages);
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 4096];
            // Ends when the test drops its NotifySocket.
            while let Some(sink) = sink.upgrade() {
                if let Ok(n) = socket.recv(&mut buf) {
                    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                    sink.lock().unwrap().push(text);
                }
            }
        });
        NotifySocket { messages }
    }

    /// Every message so far.
    pub fn all(&self) -> Vec<String> {
        self.messages.lock().unwrap().clone()
    }

    /// The first line of every message that is READY=1 or RELOADING=1, in order.
    pub fn states(&self) -> Vec<String> {
        self.all()
            .iter()
            .filter_map(|m| m.lines().next())
            .filter(|l| *l == "READY=1" || *l == "RELOADING=1")
            .map(str::to_string)
            .collect()
    }

    /// Wait (bounded) for a message containing the assignment `line`; returns its index.
    pub fn wait_for(&self, line: &str, p: &mut Pyfpm) -> usize {
        let mut found = None;
        let ok = wait_until(Duration::from_secs(30), || {
            found = self.all().iter().position(|m| m.lines().any(|l| l == line));
            found.is_some() || p.try_exit().is_some()
        });
        match found {
            Some(i) if ok => i,
            _ => panic!(
                "no {line:?} from pyfpm; messages so far: {:?}\nlog:\n{}",
                self.all(),
                p.log_text()
            ),
        }
    }
}
