//! Requests hyper's server refuses before they reach the request path: a
//! head that does not parse (400), one too large (431) or a URI too long
//! (414), which hyper answers itself and then closes the connection. AWS
//! logs and counts malformed requests as any other, so the proxy does too:
//! this module counts the bytes of the part of a connection that hyper
//! serves (`Counted`: what the proxy read from the client, which may be
//! less than the client sent when hyper stopped reading at the error), and
//! tells which status hyper answered an error with (`status_of`). The line
//! itself is `forward`'s.
//!
//! Not this module's: the fast HTTP/1.1 server (`h1_server`), which hands
//! hyper every head it does not parse, so that every refusal is hyper's.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes read and written, in all and when the last request reached the
/// request path.
#[derive(Debug, Default)]
pub struct Traffic {
    read: AtomicU64,
    written: AtomicU64,
    read_at_request: AtomicU64,
    written_at_request: AtomicU64,
    /// Bytes the stream gives back first, already counted (`handed_over`).
    given_back: AtomicU64,
}

impl Traffic {
    /// For the part of a connection whose first `bytes` were read from the
    /// socket already (by `h1_server`) and are given back by the stream
    /// before anything else: they are counted now, and not again when read.
    pub fn handed_over(bytes: u64) -> Traffic {
        let traffic = Traffic::default();
        traffic.read.store(bytes, Relaxed);
        traffic.given_back.store(bytes, Relaxed);
        traffic
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

/// A stream whose bytes are counted into a `Traffic`.
pub struct Counted<S> {
    inner: S,
    traffic: Arc<Traffic>,
}

impl<S> Counted<S> {
    pub fn new(inner: S, traffic: Arc<Traffic>) -> Counted<S> {
        Counted { inner, traffic }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        let read = (buf.filled().len() - before) as u64;
        let given_back = this.traffic.given_back.load(Relaxed).min(read);
        if given_back > 0 {
            this.traffic.given_back.fetch_sub(given_back, Relaxed);
        }
        this.traffic.read.fetch_add(read - given_back, Relaxed);
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = ready!(Pin::new(&mut this.inner).poll_write(cx, buf))?;
        this.traffic.written.fetch_add(written as u64, Relaxed);
        Poll::Ready(Ok(written))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = ready!(Pin::new(&mut this.inner).poll_write_vectored(cx, bufs))?;
        this.traffic.written.fetch_add(written as u64, Relaxed);
        Poll::Ready(Ok(written))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
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
