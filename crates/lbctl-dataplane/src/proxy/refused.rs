//! Requests hyper's server refuses before they reach the request path: a
//! head that does not parse (400), one too large (431) or a URI too long
//! (414), which hyper answers itself and then closes the connection. AWS
//! logs and counts malformed requests as any other, so the proxy does too:
//! this module keeps the count of the bytes of the part of a connection
//! that hyper serves (`Traffic`: what the proxy read from the client, which
//! may be less than the client sent when hyper stopped reading at the
//! error; `head_guard` counts them as they pass), and tells which status
//! hyper answered an error with (`status_of`). The line itself is
//! `forward`'s.
//!
//! Not this module's: the fast HTTP/1.1 server (`h1_server`), which hands
//! hyper every head it does not parse, so that every refusal is hyper's.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Bytes read and written, in all and when the last request reached the
/// request path.
#[derive(Debug, Default)]
pub struct Traffic {
    read: AtomicU64,
    written: AtomicU64,
    read_at_request: AtomicU64,
    written_at_request: AtomicU64,
}

impl Traffic {
    /// For the part of a connection whose first `bytes` were read from the
    /// socket already (by `h1_server`): they count as read.
    pub fn handed_over(bytes: u64) -> Traffic {
        let traffic = Traffic::default();
        traffic.read.store(bytes, Relaxed);
        traffic
    }

    /// `bytes` more read from the socket.
    pub fn read(&self, bytes: usize) {
        self.read.fetch_add(bytes as u64, Relaxed);
    }

    /// `bytes` more written to the socket.
    pub fn written(&self, bytes: usize) {
        self.written.fetch_add(bytes as u64, Relaxed);
    }

    /// A request reached the request path: what comes after is the next one's.
    pub fn request_started(&self) {
        self.read_at_request.store(self.read.load(Relaxed), Relaxed);
        self.written_at_request.store(self.written.load(Relaxed), Relaxed);
    }

    /// Bytes read and written since the last request reached the request
    /// path (since the handover when none did): a refused request's.
    pub fn since_request(&self) -> (u64, u64) {
        let read = self.read.load(Relaxed) - self.read_at_request.load(Relaxed);
        (read, self.written.load(Relaxed) - self.written_at_request.load(Relaxed))
    }
}

/// The status hyper's server answered with before closing on `error`, when
/// it answered one: 400 for a head that does not parse, 431 for one too
/// large, 414 for a URI too long (hyper's `on_error`).
pub fn status_of(error: &(dyn std::error::Error + 'static)) -> Option<u16> {
    let error = error.downcast_ref::<hyper::Error>()?;
    if !error.is_parse() || error.is_parse_status() || error.is_parse_version_h2() {
        return None;
    }
    let text = error.to_string();
    if text.starts_with("internal error") {
        None
    } else if text.starts_with("URI too long") {
        Some(414)
    } else if error.is_parse_too_large() {
        Some(431)
    } else {
        Some(400)
    }
}
