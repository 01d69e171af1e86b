//! A guard on a client connection's bytes for the two request-head checks
//! that the HTTP/1 servers (`h1_server`, and hyper's, which it hands what it
//! does not serve) do not make. A head the guard has changed does not parse,
//! so `h1_server` hands it to hyper, which answers 400 as described below.
//!
//! - **Conflicting framing (request smuggling).** A head with both
//!   `Content-Length` and `Transfer-Encoding` is how requests are smuggled
//!   past a proxy. hyper follows RFC 9112 §6.3 (the Transfer-Encoding wins,
//!   the Content-Length is dropped, the connection closes after the answer),
//!   which is safe on its own, but the request is malformed and the proxy
//!   refuses it outright, as AWS's strictest desync mode does: the guard
//!   turns the colon of the second framing header into a space before hyper
//!   sees it, so hyper's own parser rejects the head with 400 and closes the
//!   connection. Nothing else is ever changed.
//! - **Slow heads (slowloris).** A head whose bytes have started to arrive
//!   must be complete within `HEADER_READ_TIMEOUT`: the connection's
//!   watchdog (`connection`, told by `Activity::head_started`) drops it
//!   then, and a read that continues an older head fails. A client that
//!   stops sending altogether is left to the watchdog's idle timeout (hyper's
//!   own `header_read_timeout` is off: one timer per connection).
//!
//! To know where heads are, the guard follows HTTP/1 framing as hyper does:
//! a body with a Content-Length is skipped by count, a head with neither
//! header has no body. Whatever it does not follow turns it off for the rest
//! of the connection: a chunked body (so a conflicting head after a chunked
//! request on the same connection gets hyper's RFC handling instead of 400),
//! HTTP/2's preface, a head hyper will refuse anyway. The happy path costs a
//! scan of the head a line at a time; the clock is read only for a head that
//! does not arrive in one read.
//!
//! Once hyper's server has the connection, the guard also counts the bytes
//! read from the socket and written to it into a `refused::Traffic`, so
//! that a request hyper refuses is logged with its bytes; on `h1_server`'s
//! part of a connection there is nothing to count into.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use super::connection::Activity;
use super::refused::Traffic;

/// How long a request head (request line and headers) may take to arrive
/// once its first byte has: a legitimate client sends a head in one go, so
/// ten seconds (what AWS allows for a TLS handshake, too) only cuts off
/// clients that trickle bytes to hold connections open.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// A client connection's stream, checked as it is read.
pub struct HeadGuard<S> {
    inner: S,
    scanner: HeadScanner,
    /// `HEADER_READ_TIMEOUT`, shorter in tests.
    header_read_timeout: Duration,
    /// When the head being read started to arrive, if it did not arrive in one read.
    head_started: Option<Instant>,
    /// The connection's activity, told of late heads and of HTTP/2, so
    /// that its watchdog closes a connection whose head stopped arriving.
    activity: Arc<Activity>,
    /// Bytes read (and scanned) already, to be read again first (`unread`).
    unread: Bytes,
    /// Where the bytes read from and written to the socket are counted,
    /// once hyper's server has the connection (`count_into`).
    traffic: Option<Arc<Traffic>>,
}

impl<S> HeadGuard<S> {
    /// Guards `inner`, a connection that has not been read from yet, whose
    /// watchdog reads `activity`.
    pub fn new(inner: S, activity: Arc<Activity>) -> HeadGuard<S> {
        HeadGuard {
            inner,
            scanner: HeadScanner::default(),
            header_read_timeout: HEADER_READ_TIMEOUT,
            head_started: None,
            activity,
            unread: Bytes::new(),
            traffic: None,
        }
    }

    /// Gives back `bytes`, the last read from this stream and not used: the
    /// next reads return them first (a server hands a connection over).
    pub fn unread(&mut self, bytes: Bytes) {
        self.unread = bytes;
    }

    /// Counts into `traffic` what is read from the socket and written to
    /// it from now on (bytes given back by `unread` are not read again).
    pub fn count_into(&mut self, traffic: Arc<Traffic>) {
        self.traffic = Some(traffic);
    }

    /// `written` bytes went out: the connection is not idle while an
    /// answer is being sent (`Activity::answering`).
    fn wrote(&self, written: usize) {
        if let Some(traffic) = &self.traffic {
            traffic.written(written);
        }
        self.activity.answering(written);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for HeadGuard<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.unread.is_empty() && buf.remaining() > 0 {
            let n = this.unread.len().min(buf.remaining());
            buf.put_slice(&this.unread.split_to(n));
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        if let Some(traffic) = &this.traffic {
            traffic.read(buf.filled().len() - before);
        }
        if this.scanner.state == State::Off || buf.filled().len() == before {
            return Poll::Ready(Ok(()));
        }
        // A switched protocol's bytes (a WebSocket's) are not requests.
        if this.activity.is_upgraded() {
            this.scanner.state = State::Off;
            this.head_started = None;
            return Poll::Ready(Ok(()));
        }
        if this.head_started.is_some_and(|it| it.elapsed() >= this.header_read_timeout) {
            this.scanner.state = State::Off;
            let limit = lbctl_spec::Duration(this.header_read_timeout);
            let message = format!("the request head did not arrive within {limit}");
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, message)));
        }
        let scan = this.scanner.scan(&mut buf.filled_mut()[before..]);
        if scan.head_ended && this.head_started.take().is_some() {
            this.activity.head_ended();
        }
        if scan.in_head && this.head_started.is_none() {
            this.head_started = Some(Instant::now());
            this.activity.head_started();
        }
        if scan.http2 {
            this.activity.speaks_http2();
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for HeadGuard<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = ready!(Pin::new(&mut this.inner).poll_write(cx, buf))?;
        this.wrote(written);
        Poll::Ready(Ok(written))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = ready!(Pin::new(&mut this.inner).poll_write_vectored(cx, bufs))?;
        this.wrote(written);
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

/// The framing headers, lowercase.
const CONTENT_LENGTH: &[u8] = b"content-length";
const TRANSFER_ENCODING: &[u8] = b"transfer-encoding";
/// The start of HTTP/2's connection preface.
const HTTP2_PREFACE: &[u8] = b"PRI ";

/// Where the scanner is in the client's byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Between requests; blank lines before a request line are skipped, as hyper does.
    Idle,
    /// In the request line; `preface` bytes of `PRI ` matched so far (`u8::MAX`: no match).
    RequestLine { preface: u8 },
    /// At the start of a header line, or of the blank line that ends the head.
    LineStart,
    /// After a carriage return at the start of a line.
    BlankLine,
    /// In a header name that may be `name`; `matched` bytes of it matched so far.
    Name { name: &'static [u8], matched: u8 },
    /// In a header line that does not matter.
    SkipLine,
    /// In a Content-Length value.
    ContentLength { value: u64, digits: bool, ended: bool },
    /// In a body of which `remaining` bytes have not arrived yet.
    Body { remaining: u64 },
    /// Not following the stream any more.
    Off,
}

/// What scanning one read found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Scan {
    /// A head ended in it.
    head_ended: bool,
    /// It ended inside a head.
    in_head: bool,
    /// It held HTTP/2's connection preface.
    http2: bool,
}

/// Follows HTTP/1 request framing over a connection's bytes.
#[derive(Debug)]
struct HeadScanner {
    state: State,
    /// The framing headers of the current head.
    content_length: Option<u64>,
    transfer_encoding: bool,
}

impl Default for HeadScanner {
    fn default() -> Self {
        HeadScanner { state: State::Idle, content_length: None, transfer_encoding: false }
    }
}

impl HeadScanner {
    /// Scans the bytes of one read, spoiling the colon of a framing header
    /// that conflicts with an earlier one in the same head.
    fn scan(&mut self, bytes: &mut [u8]) -> Scan {
        let mut scan = Scan::default();
        let mut index = 0;
        while index < bytes.len() {
            let byte = bytes[index];
            self.state = match self.state {
                State::Off => return Scan::default(),
                State::Body { remaining } => {
                    let available = (bytes.len() - index) as u64;
                    if available < remaining {
                        self.state = State::Body { remaining: remaining - available };
                        return scan;
                    }
                    index += remaining as usize;
                    self.state = State::Idle;
                    continue;
                }
                State::Idle => match byte {
                    b'\r' | b'\n' => State::Idle,
                    _ => {
                        self.content_length = None;
                        self.transfer_encoding = false;
                        let preface = if byte == HTTP2_PREFACE[0] { 1 } else { u8::MAX };
                        State::RequestLine { preface }
                    }
                },
                State::RequestLine { preface } => {
                    if byte == b'\n' {
                        State::LineStart
                    } else if usize::from(preface) < HTTP2_PREFACE.len() {
                        if byte != HTTP2_PREFACE[usize::from(preface)] {
                            State::RequestLine { preface: u8::MAX }
                        } else if usize::from(preface) + 1 == HTTP2_PREFACE.len() {
                            scan.http2 = true;
                            self.state = State::Off;
                            return scan;
                        } else {
                            State::RequestLine { preface: preface + 1 }
                        }
                    } else {
                        // The rest of the line does not matter: jump to its end.
                        index = skip_to_newline(bytes, index);
                        continue;
                    }
                }
                State::LineStart => match byte.to_ascii_lowercase() {
                    b'\r' => State::BlankLine,
                    b'\n' => self.end_head(&mut scan),
                    b'c' => State::Name { name: CONTENT_LENGTH, matched: 1 },
                    b't' => State::Name { name: TRANSFER_ENCODING, matched: 1 },
                    _ => State::SkipLine,
                },
                State::BlankLine => match byte {
                    b'\n' => self.end_head(&mut scan),
                    // A bare carriage return: hyper refuses the head.
                    _ => State::Off,
                },
                State::Name { name, matched } if usize::from(matched) == name.len() => match byte {
                    b':' if self.conflicts(name) => {
                        // The second framing header of the head: hyper will
                        // refuse a header name followed by a space.
                        bytes[index] = b' ';
                        State::Off
                    }
                    b':' if name == CONTENT_LENGTH => State::ContentLength { value: 0, digits: false, ended: false },
                    b':' => {
                        self.transfer_encoding = true;
                        State::SkipLine
                    }
                    b'\n' => State::LineStart,
                    _ => State::SkipLine,
                },
                State::Name { name, matched } => match byte {
                    b'\n' => State::LineStart,
                    _ if byte.to_ascii_lowercase() == name[usize::from(matched)] => {
                        State::Name { name, matched: matched + 1 }
                    }
                    _ => State::SkipLine,
                },
                State::SkipLine => {
                    if byte == b'\n' {
                        State::LineStart
                    } else {
                        index = skip_to_newline(bytes, index);
                        continue;
                    }
                }
                State::ContentLength { value, digits, ended } => match byte {
                    b' ' | b'\t' => State::ContentLength { value, digits, ended: digits },
                    b'0'..=b'9' if !ended => {
                        match value.checked_mul(10).and_then(|it| it.checked_add(u64::from(byte - b'0'))) {
                            Some(value) => State::ContentLength { value, digits: true, ended },
                            // Too large for hyper too.
                            None => State::Off,
                        }
                    }
                    b'\r' => State::ContentLength { value, digits, ended: digits },
                    b'\n' if digits && self.content_length.is_none_or(|it| it == value) => {
                        self.content_length = Some(value);
                        State::LineStart
                    }
                    // Not a number, or a second different one: hyper refuses the head.
                    _ => State::Off,
                },
            };
            index += 1;
        }
        scan.in_head = matches!(
            self.state,
            State::RequestLine { .. }
                | State::LineStart
                | State::BlankLine
                | State::Name { .. }
                | State::SkipLine
                | State::ContentLength { .. }
        );
        scan
    }

    /// Whether a header `name` (just recognised) makes the head's framing ambiguous.
    fn conflicts(&self, name: &[u8]) -> bool {
        if name == CONTENT_LENGTH {
            self.transfer_encoding
        } else {
            self.content_length.is_some()
        }
    }

    /// The state after the blank line that ends a head.
    fn end_head(&mut self, scan: &mut Scan) -> State {
        scan.head_ended = true;
        match (self.transfer_encoding, self.content_length) {
            // A chunked body is not followed (see the module's documentation).
            (true, _) => State::Off,
            (false, Some(length)) if length > 0 => State::Body { remaining: length },
            (false, _) => State::Idle,
        }
    }
}

/// The index of the next newline at or after `from`, or the end.
fn skip_to_newline(bytes: &[u8], from: usize) -> usize {
    bytes[from..].iter().position(|it| *it == b'\n').map_or(bytes.len(), |it| from + it)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Feeds `reads` (one string per read) to a new scanner and returns what
    /// came out of each read (`_` for the spoiled colon) and the final state.
    fn check(reads: &[&str], expect: &[&str], expect_state: &str) {
        let mut scanner = HeadScanner::default();
        let mut got = Vec::new();
        for read in reads {
            let mut bytes = read.as_bytes().to_vec();
            let original = bytes.clone();
            scanner.scan(&mut bytes);
            let shown: String = bytes
                .iter()
                .zip(&original)
                .map(|(after, before)| if after != before { '_' } else { char::from(*after) })
                .collect();
            got.push(shown);
        }
        assert_eq!(got, expect, "{reads:?}");
        let state = match scanner.state {
            State::Idle => "idle".to_string(),
            State::Off => "off".to_string(),
            State::Body { remaining } => format!("body {remaining}"),
            _ => "head".to_string(),
        };
        assert_eq!(state, expect_state, "{reads:?}");
    }

    #[test]
    fn conflicting_framing_headers_are_spoiled() {
        let cl_te = "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n";
        check(
            &[cl_te],
            &["POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding_ chunked\r\n\r\n"],
            "off",
        );
        let te_cl = "POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\nCONTENT-LENGTH: 0\r\n\r\n";
        check(&[te_cl], &["POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\nCONTENT-LENGTH_ 0\r\n\r\n"], "off");
        // Split anywhere, even inside the name.
        check(
            &["POST / HTTP/1.1\r\nContent-Le", "ngth: 3\r\nTransfer-Enc", "oding:chunked\r\n\r\n"],
            &["POST / HTTP/1.1\r\nContent-Le", "ngth: 3\r\nTransfer-Enc", "oding_chunked\r\n\r\n"],
            "off",
        );
        // After a keep-alive request with a body, on the same connection.
        check(
            &["POST /a HTTP/1.1\r\nContent-Length: 4\r\n\r\nbodyGET /b HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"],
            &["POST /a HTTP/1.1\r\nContent-Length: 4\r\n\r\nbodyGET /b HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding_ chunked\r\n\r\n"],
            "off",
        );
    }

    #[test]
    fn well_framed_requests_are_untouched() {
        fn same(reads: &[&str], expect_state: &str) {
            check(reads, reads, expect_state);
        }
        same(&["GET / HTTP/1.1\r\nHost: x\r\n\r\n"], "idle");
        same(&["GET / HTTP/1.1\r\nHost: x\r\n\r\nGET /2 HTTP/1.1\r\nHost: x\r\n\r\n"], "idle");
        same(&["\r\nGET / HTTP/1.1\nHost: x\n\n"], "idle");
        // Bodies are skipped by count, across reads, even when they look like heads.
        let body = "x\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        let post = format!("POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n", body.len());
        same(&[&post, body, "GET / HTTP/1.1\r\n\r\n"], "idle");
        same(&[&post, &body[..10]], &format!("body {}", body.len() - 10));
        // Equal repeated lengths are fine for hyper, and so here.
        same(&["POST / HTTP/1.1\r\nContent-Length: 2\r\ncontent-length:2 \r\n\r\nab"], "idle");
        // Names that only start like a framing header.
        same(&["GET / HTTP/1.1\r\nContent-Type: a\r\nTransfer-Encodings: b\r\nContent-Length-X: 5\r\n\r\n"], "idle");
        // Chunked requests are not followed past their head.
        same(&["POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"], "off");
        // HTTP/2 with prior knowledge turns the guard off.
        same(&["PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"], "off");
        // A head hyper refuses anyway.
        same(&["POST / HTTP/1.1\r\nContent-Length: 1x\r\n\r\n"], "off");
        same(&["POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"], "off");
        // A partial head.
        same(&["GET / HTTP/1.1\r\nHo"], "head");
    }

    #[test]
    fn scan_reports_heads_ending_and_pending() {
        let mut scanner = HeadScanner::default();
        let mut scan = |text: &str| scanner.scan(&mut text.as_bytes().to_vec());
        assert_eq!(scan("GET / HTTP/1.1\r\n"), Scan { head_ended: false, in_head: true, http2: false });
        assert_eq!(scan("\r\n"), Scan { head_ended: true, in_head: false, http2: false });
        assert_eq!(scan("GET / HTTP/1.1\r\n\r\nGET"), Scan { head_ended: true, in_head: true, http2: false });
        assert_eq!(scan(" / HTTP/1.1\r\n\r\n\r\n"), Scan { head_ended: true, in_head: false, http2: false });
        let mut h2 = HeadScanner::default();
        assert_eq!(
            h2.scan(&mut b"PRI * HTTP/2.0\r\n".to_vec()),
            Scan { head_ended: false, in_head: false, http2: true }
        );
    }

    #[test]
    fn a_trickling_head_is_cut_off() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let timeout = Duration::from_millis(300);
            let (mut client, server) = tokio::io::duplex(1024);
            let mut guard = HeadGuard::new(server, Activity::new());
            guard.header_read_timeout = timeout;
            let mut buf = [0u8; 64];
            // A whole head in one read, however late it comes, is fine.
            tokio::time::sleep(timeout + Duration::from_millis(50)).await;
            client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
            assert_eq!(guard.read(&mut buf).await.unwrap(), 18);
            // A head trickling in fails once it has taken too long.
            client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
            assert_eq!(guard.read(&mut buf).await.unwrap(), 16);
            client.write_all(b"X").await.unwrap();
            assert_eq!(guard.read(&mut buf).await.unwrap(), 1);
            tokio::time::sleep(timeout).await;
            client.write_all(b"Y").await.unwrap();
            let err = guard.read(&mut buf).await.unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::TimedOut);
            assert_eq!(err.to_string(), "the request head did not arrive within 300ms");
        });
    }

    /// Property: the scanner never panics, whatever the bytes and however
    /// they are split into reads, and the only byte it ever changes is a
    /// colon, into a space, at most once per connection.
    #[test]
    fn the_scanner_never_panics_and_only_spoils_a_colon() {
        use proptest::prelude::*;
        use proptest::test_runner::{Config, TestRunner};
        const CASES: u32 = 2000;
        // Pieces of heads in every state the scanner knows, and noise.
        let piece = prop_oneof![
            Just(b"GET / HTTP/1.1\r\n".to_vec()),
            Just(b"POST /x HTTP/1.1\r\n".to_vec()),
            Just(b"Content-Length: 5\r\n".to_vec()),
            Just(b"content-length:12345678901234567890\r\n".to_vec()),
            Just(b"Transfer-Encoding: chunked\r\n".to_vec()),
            Just(b"Host: x\r\n".to_vec()),
            Just(b"\r\n".to_vec()),
            Just(b"\n".to_vec()),
            Just(b"\r".to_vec()),
            Just(b"PRI * HTTP/2.0\r\n".to_vec()),
            Just(b"hello".to_vec()),
            proptest::collection::vec(any::<u8>(), 0..40),
        ];
        let cases = (proptest::collection::vec(piece, 0..20), proptest::collection::vec(1usize..50, 1..30));
        let mut runner = TestRunner::new(Config { cases: CASES, failure_persistence: None, ..Config::default() });
        runner
            .run(&cases, |(pieces, splits)| {
                let original: Vec<u8> = pieces.concat();
                let mut scanner = HeadScanner::default();
                let mut seen = Vec::with_capacity(original.len());
                let mut rest = original.as_slice();
                for split in splits.iter().cycle() {
                    if rest.is_empty() {
                        break;
                    }
                    let (read, after) = rest.split_at((*split).min(rest.len()));
                    let mut bytes = read.to_vec();
                    scanner.scan(&mut bytes);
                    seen.extend_from_slice(&bytes);
                    rest = after;
                }
                let changed: Vec<(u8, u8)> =
                    original.iter().zip(&seen).filter(|(a, b)| a != b).map(|(a, b)| (*a, *b)).collect();
                prop_assert!(changed.len() <= 1, "{changed:?}");
                prop_assert!(changed.iter().all(|it| *it == (b':', b' ')), "{changed:?}");
                Ok(())
            })
            .unwrap();
        println!("head guard property: {CASES} byte streams scanned in random reads, never more than a colon spoiled");
    }
}
