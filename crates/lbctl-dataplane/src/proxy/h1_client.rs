//! HTTP/1.1 to a plain-HTTP target for a request without a body, driven
//! by the request's own task (as pingora does, rather than hyper's client):
//! the request head is written in one call from a buffer the connection
//! keeps, the response head is parsed with `httparse` and its field lines
//! are passed on as the target wrote them (`Fields`, no header map), and
//! the response body is read straight from the target's socket by whoever
//! polls it (the client connection's task). No connection task, no channel
//! between tasks.
//!
//! It owns the wire format only: which requests come here, where idle
//! connections are kept and what a failure means for retries is
//! `upstream`'s and `retry`'s.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll, Waker};

use bytes::{Buf, Bytes, BytesMut};
use hyper::body::{Body, Frame, SizeHint};
use hyper::header::{HeaderName, HeaderValue, CONTENT_LENGTH};
use hyper::http::request::Parts;
use hyper::http::uri::Authority;
use hyper::{HeaderMap, Method, Response, StatusCode, Version};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_util::io::poll_read_buf;

use super::forwarding::{self, Forwarding};

/// Most header fields in a response head (hyper's limit too).
const MAX_HEADERS: usize = 100;
/// Most bytes in a response head.
const MAX_HEAD: usize = 64 * 1024;
/// Most bytes of a chunk-size line, and of a chunked body's trailer
/// section (read and dropped: HTTP/1.1 trailers are not forwarded).
const MAX_CHUNK_LINE: usize = 4 * 1024;
const MAX_TRAILERS: usize = 64 * 1024;
/// Room made in the read buffer before each read.
const READ_SIZE: usize = 16 * 1024;

/// An HTTP/1.1 connection to a target, idle or carrying one exchange.
#[derive(Debug)]
pub struct Connection {
    stream: TcpStream,
    /// Bytes read from the target and not yet used.
    buf: BytesMut,
    /// The request head being written; its allocation serves the next.
    out: Vec<u8>,
    /// Where the response head's passed-on lines are in `buf`.
    runs: Vec<std::ops::Range<usize>>,
    /// An interim (1xx) answer to the current request was read.
    interim: bool,
}

/// Why an exchange failed, and whether the target sent nothing at all
/// (the connection was found closed or reset before any byte of an answer:
/// an idle connection the target had let go of).
#[derive(Debug)]
pub struct Failed {
    pub error: io::Error,
    pub unanswered: bool,
}

impl Connection {
    /// A connection on a connected socket.
    pub fn new(stream: TcpStream) -> Connection {
        Connection { stream, buf: BytesMut::new(), out: Vec::new(), runs: Vec::new(), interim: false }
    }

    /// Whether an idle connection can carry a request: the target has not
    /// closed it or sent anything unasked. Costs a system call only when
    /// the reactor has seen the socket readable since it was last read to
    /// its end.
    pub fn is_usable(&mut self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(Waker::noop());
        if self.stream.poll_read_ready(&mut cx).is_pending() {
            return true;
        }
        let mut probe = [0u8; 1];
        matches!(self.stream.try_read(&mut probe), Err(err) if err.kind() == io::ErrorKind::WouldBlock)
    }

    /// Sends `request` (its head only: it has no body), with the
    /// `forwarding` headers when given (`write_head`), and reads the
    /// response head: the response (its header map empty; the body streams
    /// on in it) and its fields.
    pub async fn send(
        mut self,
        request: &Parts,
        authority: &Authority,
        forwarding: Option<&Forwarding>,
    ) -> Result<(Response<ResponseBody>, Fields), Failed> {
        write_head(&mut self.out, request, authority, forwarding);
        self.interim = false;
        if let Err(error) = self.stream.write_all(&self.out).await {
            return Err(Failed { unanswered: true, error });
        }
        loop {
            let parsed = if self.buf.is_empty() { None } else { self.parse_head(&request.method)? };
            if let Some((response, fields, framing, reusable)) = parsed {
                return Ok((response.map(|()| ResponseBody { connection: Some(self), framing, reusable }), fields));
            }
            self.buf.reserve(READ_SIZE);
            let read = std::future::poll_fn(|cx| poll_read_buf(Pin::new(&mut self.stream), cx, &mut self.buf)).await;
            match read {
                Ok(0) => {
                    let unanswered = self.buf.is_empty() && !self.interim;
                    let error = io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the target closed the connection before its response head ended",
                    );
                    return Err(Failed { error, unanswered });
                }
                Ok(_) => {}
                Err(error) => {
                    let unanswered = self.buf.is_empty()
                        && !self.interim
                        && matches!(error.kind(), io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted);
                    return Err(Failed { error, unanswered });
                }
            }
        }
    }

    /// The response head, once the buffer holds all of it: interim (1xx)
    /// answers are skipped, as hyper's client does (after one, the request
    /// is no longer `unanswered`).
    #[allow(clippy::type_complexity)]
    fn parse_head(&mut self, method: &Method) -> Result<Option<(Response<()>, Fields, Framing, bool)>, Failed> {
        let invalid =
            |what: String| Failed { error: io::Error::new(io::ErrorKind::InvalidData, what), unanswered: false };
        loop {
            // Left uninitialised: httparse writes the fields it finds.
            let mut fields = [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
            let mut parsed = httparse::Response::new(&mut []);
            let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
                &mut parsed,
                &self.buf,
                &mut fields,
            ) {
                Ok(httparse::Status::Complete(len)) => len,
                Ok(httparse::Status::Partial) if self.buf.len() < MAX_HEAD => return Ok(None),
                Ok(httparse::Status::Partial) => {
                    return Err(invalid(format!("the target's response head is over {MAX_HEAD} bytes")))
                }
                Err(err) => return Err(invalid(format!("the target's response head is not HTTP/1.1: {err}"))),
            };
            let code = parsed.code.unwrap_or_default();
            if (100..200).contains(&code) && code != 101 {
                self.interim = true;
                self.buf.advance(len);
                continue;
            }
            let status = StatusCode::from_u16(code).map_err(|err| invalid(format!("the target's status: {err}")))?;
            let version = if parsed.version == Some(0) { Version::HTTP_10 } else { Version::HTTP_11 };
            let base = self.buf.as_ptr() as usize;
            let mut framing = Framing::Length(0);
            let mut length: Option<u64> = None;
            let mut chunked = false;
            let mut encoded = false;
            let mut dated = false;
            let mut keep_alive = version == Version::HTTP_11;
            // Other fields `Connection` names: hop-by-hop too (rare).
            let mut connection_named: Vec<&[u8]> = Vec::new();
            // Each field's role, read once for both passes.
            let mut roles = [Role::Other; MAX_HEADERS];
            for (field, role) in parsed.headers.iter().zip(&mut roles) {
                *role = Role::of(field.name.as_bytes());
                match *role {
                    Role::ContentLength => {
                        // Digits only (a list of one repeated value at most):
                        // no sign, no other whitespace, no disagreement.
                        for item in field.value.split(|it| *it == b',') {
                            match (decimal(item.trim_ascii()), length) {
                                (Some(this), None) => length = Some(this),
                                (Some(this), Some(before)) if this == before => {}
                                _ => {
                                    return Err(invalid(
                                        "the target sent a bad or conflicting content-length".to_string(),
                                    ))
                                }
                            }
                        }
                    }
                    Role::TransferEncoding => {
                        encoded = true;
                        chunked = field
                            .value
                            .rsplit(|it| *it == b',')
                            .next()
                            .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
                    }
                    Role::Connection => {
                        for token in field.value.split(|it| *it == b',') {
                            let token = token.trim_ascii();
                            if token.eq_ignore_ascii_case(b"close") {
                                keep_alive = false;
                            } else if token.eq_ignore_ascii_case(b"keep-alive") {
                                keep_alive |= version == Version::HTTP_10;
                            } else if !token.is_empty() {
                                connection_named.push(token);
                            }
                        }
                    }
                    Role::Date => dated = true,
                    Role::HopByHop | Role::Other => {}
                }
            }
            // Transfer-Encoding is HTTP/1.1's (RFC 9112 6.1).
            if encoded && version == Version::HTTP_10 {
                return Err(invalid("the target sent Transfer-Encoding in an HTTP/1.0 response".to_string()));
            }
            // The lines passed on, as runs of the head's bytes: every field
            // but the hop-by-hop ones (with those `Connection` names) and
            // the framing ones (the client's framing is the client
            // server's), each line as the target wrote it when it ends in
            // CRLF; a line that ends in a bare LF is written again.
            let mut runs = std::mem::take(&mut self.runs);
            runs.clear();
            let mut rewritten: Option<Vec<u8>> = None;
            for (field, role) in parsed.headers.iter().zip(roles) {
                let name = field.name.as_bytes();
                let passed = matches!(role, Role::Other | Role::Date)
                    && !connection_named.iter().any(|it| it.eq_ignore_ascii_case(name));
                if !passed {
                    continue;
                }
                let start = name.as_ptr() as usize - base;
                let value_end = field.value.as_ptr() as usize - base + field.value.len();
                let crlf = self.buf.get(value_end..value_end + 2) == Some(b"\r\n".as_slice());
                match (&mut rewritten, runs.last_mut()) {
                    (None, Some(run)) if crlf && run.end == start => run.end = value_end + 2,
                    (None, _) if crlf => runs.push(start..value_end + 2),
                    (Some(out), _) => line(out, name, field.value),
                    (None, _) => {
                        let mut out = Vec::new();
                        for run in runs.drain(..) {
                            out.extend_from_slice(&self.buf[run]);
                        }
                        line(&mut out, name, field.value);
                        rewritten = Some(out);
                    }
                }
            }
            let head = self.buf.split_to(len).freeze();
            let lines = match (rewritten, &runs[..]) {
                (Some(out), _) => Bytes::from(out),
                (None, []) => Bytes::new(),
                (None, [run]) => head.slice(run.clone()),
                (None, runs) => {
                    let mut out = Vec::with_capacity(runs.iter().map(|it| it.len()).sum());
                    for run in runs {
                        out.extend_from_slice(&head[run.clone()]);
                    }
                    Bytes::from(out)
                }
            };
            self.runs = runs;
            let bodiless = *method == Method::HEAD
                || matches!(
                    status,
                    StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED | StatusCode::SWITCHING_PROTOCOLS
                );
            if !bodiless {
                framing = match (encoded, chunked, length) {
                    (true, true, _) => Framing::Chunked(Chunk::Size),
                    (true, false, _) | (false, _, None) => Framing::UntilClose,
                    (false, _, Some(length)) => Framing::Length(length),
                };
            }
            // A switched protocol, a body that ends with the connection, or
            // both framings at once (RFC 9112 6.3): the connection is not reused.
            let reusable = keep_alive
                && status != StatusCode::SWITCHING_PROTOCOLS
                && !matches!(framing, Framing::UntilClose)
                && !(encoded && length.is_some());
            if let Framing::Length(0) = framing {
                framing = Framing::Done;
            }
            let mut response = Response::new(());
            *response.status_mut() = status;
            *response.version_mut() = version;
            // With Transfer-Encoding, a Content-Length is wrong and an
            // intermediary must drop it (RFC 9112 6.3).
            let fields = Fields { lines, content_length: length.filter(|_| !encoded), dated };
            return Ok(Some((response, fields, framing, reusable)));
        }
    }
}

/// A target's response fields as a client gets them: the lines passed on,
/// as the target wrote them, without building a header map (building one
/// and writing it out again was a fifth of the proxy's own work per
/// request).
#[derive(Debug)]
pub struct Fields {
    /// `name: value` lines, each ending in CRLF: every field but the
    /// hop-by-hop ones, those `Connection` names, `Content-Length` and
    /// `Transfer-Encoding`.
    pub lines: Bytes,
    /// The length the target declared (not when it sent Transfer-Encoding).
    pub content_length: Option<u64>,
    /// The lines include a `Date`.
    pub dated: bool,
}

impl Fields {
    /// Adds the fields to `headers` (for hyper's server, which needs a map).
    pub fn add_to(&self, headers: &mut HeaderMap) {
        let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut head = Vec::with_capacity(self.lines.len() + 2);
        head.extend_from_slice(&self.lines);
        head.extend_from_slice(b"\r\n");
        if let Ok(httparse::Status::Complete((_, parsed))) = httparse::parse_headers(&head, &mut slots) {
            for field in parsed {
                if let (Ok(name), Ok(value)) =
                    (HeaderName::from_bytes(field.name.as_bytes()), HeaderValue::from_bytes(field.value))
                {
                    headers.append(name, value);
                }
            }
        }
        if let Some(length) = self.content_length {
            headers.insert(CONTENT_LENGTH, HeaderValue::from(length));
        }
    }
}

/// What a response field means to the framing and the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    ContentLength,
    TransferEncoding,
    Connection,
    /// Another hop-by-hop field.
    HopByHop,
    Date,
    Other,
}

impl Role {
    /// The role of the field `name` (any case).
    fn of(name: &[u8]) -> Role {
        let is = |it: &[u8]| name.eq_ignore_ascii_case(it);
        match name.len() {
            2 if is(b"te") => Role::HopByHop,
            4 if is(b"date") => Role::Date,
            7 if is(b"trailer") || is(b"upgrade") => Role::HopByHop,
            10 if is(b"connection") => Role::Connection,
            10 if is(b"keep-alive") => Role::HopByHop,
            14 if is(b"content-length") => Role::ContentLength,
            16 if is(b"proxy-connection") => Role::HopByHop,
            17 if is(b"transfer-encoding") => Role::TransferEncoding,
            _ => Role::Other,
        }
    }
}

/// Appends `name: value` CRLF.
fn line(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// A run of ASCII digits as a number; `None` for anything else (empty,
/// signed, spaced, too large).
pub(super) fn decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |value, digit| {
        let digit = digit.is_ascii_digit().then(|| u64::from(digit - b'0'))?;
        value.checked_mul(10)?.checked_add(digit)
    })
}

/// A chunk-size line (`hex [BWS ; extensions] CRLF`), strictly: at least
/// one hex digit, CRLF and no bare CR or LF. `Ok(None)`: not all here yet.
fn chunk_size(buf: &[u8]) -> Result<Option<(usize, u64)>, ()> {
    let Some(end) = buf.windows(2).position(|it| it == b"\r\n") else {
        return if buf.contains(&b'\n') || buf.len() >= MAX_CHUNK_LINE { Err(()) } else { Ok(None) };
    };
    let line = &buf[..end];
    if end >= MAX_CHUNK_LINE || line.iter().any(|it| *it == b'\r' || *it == b'\n') {
        return Err(());
    }
    let digits = line.iter().take_while(|it| it.is_ascii_hexdigit()).count();
    let rest = line[digits..].trim_ascii_start();
    if digits == 0 || digits > 16 || !(rest.is_empty() || rest[0] == b';') {
        return Err(());
    }
    let size = line[..digits].iter().fold(0u64, |value, digit| (value << 4) | u64::from(hex_value(*digit)));
    Ok(Some((end + 2, size)))
}

fn hex_value(digit: u8) -> u8 {
    match digit {
        b'0'..=b'9' => digit - b'0',
        b'a'..=b'f' => digit - b'a' + 10,
        _ => digit - b'A' + 10,
    }
}

/// The request head in HTTP/1.1's origin form, with a Host always (the
/// target's `authority` when the request has none): with `forwarding`, its
/// header section as the load balancer changes it (`forwarding`), else as
/// it is. A bodiless request whose method carries a body says so with
/// `content-length: 0`, as hyper's client does.
fn write_head(out: &mut Vec<u8>, request: &Parts, authority: &Authority, forwarding: Option<&Forwarding>) {
    out.clear();
    out.extend_from_slice(request.method.as_str().as_bytes());
    out.push(b' ');
    // The origin form: a path always ("/" for an empty one, as in
    // `http://a.example?x`), then the query.
    let path = request.uri.path();
    out.extend_from_slice(if path.is_empty() { b"/" } else { path.as_bytes() });
    if let Some(query) = request.uri.query() {
        out.push(b'?');
        out.extend_from_slice(query.as_bytes());
    }
    out.extend_from_slice(b" HTTP/1.1\r\n");
    match forwarding {
        Some(forwarding) => forwarding::write_fields(out, &request.headers, &request.uri, authority, forwarding),
        None => {
            if !request.headers.contains_key(hyper::header::HOST) {
                forwarding::field(out, b"host", authority.as_str().as_bytes());
            }
            for (name, value) in &request.headers {
                forwarding::field(out, name.as_str().as_bytes(), value.as_bytes());
            }
        }
    }
    let carries_body = !matches!(
        request.method,
        Method::GET | Method::HEAD | Method::DELETE | Method::OPTIONS | Method::TRACE | Method::CONNECT
    );
    if carries_body && !request.headers.contains_key(CONTENT_LENGTH) {
        out.extend_from_slice(b"content-length: 0\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// How much of the response body is left, by its framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Length(u64),
    Chunked(Chunk),
    UntilClose,
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// A chunk-size line comes next.
    Size,
    /// This many bytes of chunk data.
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    /// The trailer section (this many bytes of it so far), up to an empty line.
    Trailers(usize),
}

/// A target's response body, read from its connection as it is polled.
#[derive(Debug)]
pub struct ResponseBody {
    /// `None` once the body failed: the connection is dropped.
    connection: Option<Connection>,
    framing: Framing,
    reusable: bool,
}

impl ResponseBody {
    /// The connection, when the body has ended and it can carry another request.
    pub fn into_idle(mut self) -> Option<Connection> {
        let connection = self.connection.take()?;
        (self.framing == Framing::Done && self.reusable && connection.buf.is_empty()).then_some(connection)
    }

    fn fail(&mut self, error: io::Error) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        self.connection = None;
        self.framing = Framing::Done;
        Poll::Ready(Some(Err(error)))
    }
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("the target's chunked body: {what}"))
}

/// What the body does next with the bytes it has.
enum Step {
    /// Hand these bytes on; the framing is then the second.
    Data(Bytes, Framing),
    /// Framing consumed, nothing to hand on.
    Next(Framing),
    /// Read more from the target.
    Read,
    Fail(io::Error),
}

/// One step of reading the body framed as `framing` from `buf`.
fn step(framing: Framing, buf: &mut BytesMut) -> Step {
    match framing {
        Framing::Done => Step::Next(Framing::Done),
        Framing::Length(left) | Framing::Chunked(Chunk::Data(left)) if !buf.is_empty() => {
            let take = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            let left = left - take as u64;
            let next = match framing {
                Framing::Chunked(_) if left == 0 => Framing::Chunked(Chunk::DataEnd),
                Framing::Chunked(_) => Framing::Chunked(Chunk::Data(left)),
                _ if left == 0 => Framing::Done,
                _ => Framing::Length(left),
            };
            Step::Data(buf.split_to(take).freeze(), next)
        }
        Framing::UntilClose if !buf.is_empty() => Step::Data(buf.split().freeze(), Framing::UntilClose),
        Framing::Chunked(Chunk::Size) if !buf.is_empty() => match chunk_size(buf) {
            Ok(Some((used, size))) => {
                buf.advance(used);
                Step::Next(Framing::Chunked(if size == 0 { Chunk::Trailers(0) } else { Chunk::Data(size) }))
            }
            Ok(None) => Step::Read,
            Err(()) => Step::Fail(invalid("a bad chunk-size line")),
        },
        Framing::Chunked(Chunk::DataEnd) if buf.len() >= 2 => {
            if &buf[..2] != b"\r\n" {
                return Step::Fail(invalid("no CRLF after a chunk"));
            }
            buf.advance(2);
            Step::Next(Framing::Chunked(Chunk::Size))
        }
        Framing::Chunked(Chunk::Trailers(seen)) => match buf.windows(2).position(|it| it == b"\r\n") {
            Some(0) => {
                buf.advance(2);
                Step::Next(Framing::Done)
            }
            Some(end) if seen + end + 2 <= MAX_TRAILERS => {
                buf.advance(end + 2);
                Step::Next(Framing::Chunked(Chunk::Trailers(seen + end + 2)))
            }
            Some(_) => Step::Fail(invalid("a trailer section over 64 KiB")),
            None if seen + buf.len() > MAX_TRAILERS => Step::Fail(invalid("a trailer section over 64 KiB")),
            None => Step::Read,
        },
        _ => Step::Read,
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        loop {
            let Some(connection) = this.connection.as_mut() else {
                return Poll::Ready(None);
            };
            match step(this.framing, &mut connection.buf) {
                Step::Data(data, next) => {
                    this.framing = next;
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Step::Next(Framing::Done) => {
                    this.framing = Framing::Done;
                    return Poll::Ready(None);
                }
                Step::Next(next) => this.framing = next,
                Step::Fail(error) => return this.fail(error),
                Step::Read => {
                    connection.buf.reserve(READ_SIZE);
                    match ready!(poll_read_buf(Pin::new(&mut connection.stream), cx, &mut connection.buf)) {
                        Ok(0) if this.framing == Framing::UntilClose => {
                            this.framing = Framing::Done;
                            this.reusable = false;
                        }
                        Ok(0) => {
                            let error = io::Error::new(
                                io::ErrorKind::UnexpectedEof,
                                "the target closed the connection mid-body",
                            );
                            return this.fail(error);
                        }
                        Ok(_) => {}
                        Err(error) => return this.fail(error),
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.framing == Framing::Done
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Length(left) => SizeHint::with_exact(left),
            Framing::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use tokio::io::AsyncReadExt;

    /// Sends a GET (or `method`) to a target that answers `answer` (in
    /// pieces, to cross read boundaries) and returns the response, its
    /// body, and whether the connection could be reused.
    async fn exchange(
        method: Method,
        answer: &'static [&'static [u8]],
    ) -> Result<(Response<Fields>, Vec<u8>, bool), String> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let target = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let head = read_request_head(&mut stream).await;
            for piece in answer {
                stream.write_all(piece).await.unwrap();
                stream.flush().await.unwrap();
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
            String::from_utf8(head).unwrap()
        });
        let connection = Connection::new(TcpStream::connect(addr).await.unwrap());
        let (parts, ()) = hyper::Request::builder()
            .method(method)
            .uri("/a?b=c")
            .header("host", "shop.example.com")
            .body(())
            .unwrap()
            .into_parts();
        let authority = Authority::from_static("127.0.0.9:80");
        let (response, fields) = connection.send(&parts, &authority, None).await.map_err(|it| it.error.to_string())?;
        let (mut head, mut body) = response.into_parts();
        // The fields as a map, as hyper's server gets them; the lines as they are.
        fields.add_to(&mut head.headers);
        let mut bytes = Vec::new();
        while let Some(frame) = body.frame().await {
            bytes.extend_from_slice(&frame.map_err(|it| it.to_string())?.into_data().unwrap());
        }
        let request = target.await.unwrap();
        assert!(request.starts_with(&format!("{} /a?b=c HTTP/1.1\r\nhost: shop.example.com\r\n", parts.method)));
        Ok((Response::from_parts(head, fields), bytes, body.into_idle().is_some()))
    }

    /// What a test target reads of a request: its head, to the empty line.
    pub(in crate::proxy) async fn read_request_head(stream: &mut TcpStream) -> Vec<u8> {
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.ends_with(b"\r\n\r\n") {
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "the connection closed before the request head ended");
            head.extend_from_slice(&buf[..n]);
        }
        head
    }

    fn run<T>(future: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(future)
    }

    #[test]
    fn bodies_by_their_framing() {
        run(async {
            let (response, body, reusable) =
                exchange(Method::GET, &[b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nx-a: 1\r\n\r\nhel", b"lo"])
                    .await
                    .unwrap();
            assert_eq!((response.status(), &body[..], reusable), (StatusCode::OK, &b"hello"[..], true));
            assert_eq!(response.headers()["x-a"], "1");

            let chunked: &[&[u8]] = &[
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;ext=1\r\nhel",
                b"lo\r\n1",
                b"0\r\n0123456789abcdef\r\n0\r\nx-trailer: 1\r",
                b"\n\r\n",
            ];
            let (_, body, reusable) = exchange(Method::GET, chunked).await.unwrap();
            assert_eq!((&body[..], reusable), (&b"hello0123456789abcdef"[..], true));
            // Both framings: the chunks count, the length is dropped, the
            // connection is not reused.
            let both: &[&[u8]] =
                &[b"HTTP/1.1 200 OK\r\ncontent-length: 99\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"];
            let (response, body, reusable) = exchange(Method::GET, both).await.unwrap();
            assert_eq!((&body[..], reusable), (&b"ok"[..], false));
            assert!(!response.headers().contains_key(CONTENT_LENGTH));

            let until_close: &[&[u8]] = &[b"HTTP/1.0 200 OK\r\n\r\nall of ", b"it"];
            let (response, body, reusable) = exchange(Method::GET, until_close).await.unwrap();
            assert_eq!((response.version(), &body[..], reusable), (Version::HTTP_10, &b"all of it"[..], false));

            // Interim answers are skipped; HEAD and 304 have no body whatever their length says.
            let interim: &[&[u8]] = &[b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n"];
            let (response, body, reusable) = exchange(Method::POST, interim).await.unwrap();
            assert_eq!((response.status(), body.len(), reusable), (StatusCode::NO_CONTENT, 0, true));
            let head: &[&[u8]] = &[b"HTTP/1.1 200 OK\r\ncontent-length: 99\r\n\r\n"];
            let (_, body, reusable) = exchange(Method::HEAD, head).await.unwrap();
            assert_eq!((body.len(), reusable), (0, true));

            let close: &[&[u8]] = &[b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok"];
            let (_, body, reusable) = exchange(Method::GET, close).await.unwrap();
            assert_eq!((&body[..], reusable), (&b"ok"[..], false));
        });
    }

    #[test]
    fn hop_by_hop_headers_stay_with_the_connection() {
        run(async {
            // The standard ones, and those `Connection` names (before or
            // after it); the framing they gave still counts.
            let answer: &[&[u8]] =
                &[b"HTTP/1.1 200 OK\r\nx-private: 1\r\nconnection: keep-alive, X-Private, x-later\r\n\
                keep-alive: timeout=5\r\ntransfer-encoding: chunked\r\nx-later: 2\r\nx-kept: 3\r\nupgrade: h2c\r\n\r\n\
                2\r\nok\r\n0\r\n\r\n"];
            let (response, body, reusable) = exchange(Method::GET, answer).await.unwrap();
            assert_eq!((&body[..], reusable), (&b"ok"[..], true));
            let names: Vec<&str> = response.headers().keys().map(|it| it.as_str()).collect();
            assert_eq!(names, ["x-kept"]);
            assert_eq!(response.body().lines, "x-kept: 3\r\n");
            // `close` among the options still ends the connection.
            let close: &[&[u8]] =
                &[b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: x-a, close\r\nx-a: 1\r\n\r\nok"];
            let (response, body, reusable) = exchange(Method::GET, close).await.unwrap();
            assert_eq!((&body[..], reusable), (&b"ok"[..], false));
            assert_eq!(response.headers().keys().map(|it| it.as_str()).collect::<Vec<_>>(), ["content-length"]);
        });
    }

    #[test]
    fn fields_pass_on_as_the_target_wrote_them() {
        run(async {
            // Runs of lines around the dropped ones, the target's spelling
            // and spacing kept; a line ending in a bare LF written again.
            let answer: &[&[u8]] = &[b"HTTP/1.1 200 OK\r\nServer: t\r\nDate: Wed, 02 Dec 2026 13:00:00 GMT\r\n\
                Content-Length: 2\r\nConnection: keep-alive\r\nX-A:  1\r\nx-b: 2\nx-c: 3\r\nx-e:\r\nx-f: \r\n\r\nok"];
            let (response, body, reusable) = exchange(Method::GET, answer).await.unwrap();
            assert_eq!((&body[..], reusable), (&b"ok"[..], true));
            let fields = response.body();
            assert_eq!(
                fields.lines,
                "Server: t\r\nDate: Wed, 02 Dec 2026 13:00:00 GMT\r\nX-A:  1\r\nx-b: 2\r\nx-c: 3\r\nx-e: \r\nx-f: \r\n"
            );
            assert_eq!((fields.content_length, fields.dated), (Some(2), true));
            assert_eq!(response.headers()["x-a"], "1");
            assert_eq!(response.headers()[CONTENT_LENGTH], "2");
            // Empty values, as written.
            let empty: &[&[u8]] = &[b"HTTP/1.1 200 OK\r\nx-e:\r\nx-f: \r\ncontent-length: 0\r\n\r\n"];
            let (response, _, _) = exchange(Method::GET, empty).await.unwrap();
            assert_eq!(response.body().lines, "x-e:\r\nx-f: \r\n");
            assert_eq!(response.headers()["x-e"], "");
            // No fields at all.
            let bare: &[&[u8]] = &[b"HTTP/1.1 204 No Content\r\n\r\n"];
            let (response, _, _) = exchange(Method::GET, bare).await.unwrap();
            assert_eq!((&response.body().lines[..], response.body().dated), (&b""[..], false));
        });
    }

    #[test]
    fn the_hop_by_hop_fields_are_the_forwarding_ones() {
        // `Role::of` reads the bytes; `forwarding` lists the same names.
        for name in forwarding::HOP_BY_HOP {
            assert!(!matches!(Role::of(name.as_str().as_bytes()), Role::Other | Role::Date), "{name}");
            assert_eq!(Role::of(name.as_str().to_uppercase().as_bytes()), Role::of(name.as_str().as_bytes()));
        }
        assert_eq!(Role::of(b"X-Kept"), Role::Other);
    }

    #[test]
    fn broken_answers_are_errors() {
        run(async {
            let conflicting: &[&[u8]] = &[b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok"];
            assert!(exchange(Method::GET, conflicting).await.unwrap_err().contains("content-length"));
            let short: &[&[u8]] = &[b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\nok"];
            assert!(exchange(Method::GET, short).await.unwrap_err().contains("mid-body"));
            let bad_chunk: &[&[u8]] = &[b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n"];
            assert!(exchange(Method::GET, bad_chunk).await.unwrap_err().contains("chunk-size"));
            // Content-Length is digits, nothing else.
            let signed: &[&[u8]] = &[b"HTTP/1.1 200 OK\r\ncontent-length: +2\r\n\r\nok"];
            assert!(exchange(Method::GET, signed).await.unwrap_err().contains("content-length"));
            // A chunk-size line needs a hex digit, and CRLF.
            let no_digit: &[&[u8]] = &[b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\r\nhello\r\n0\r\n\r\n"];
            assert!(exchange(Method::GET, no_digit).await.unwrap_err().contains("chunk-size"));
            let bare_lf: &[&[u8]] =
                &[b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;a\nb\r\nhello\r\n0\r\n\r\n"];
            assert!(exchange(Method::GET, bare_lf).await.unwrap_err().contains("chunk-size"));
            // Transfer-Encoding is not HTTP/1.0's.
            let old: &[&[u8]] = &[b"HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n"];
            assert!(exchange(Method::GET, old).await.unwrap_err().contains("HTTP/1.0"));
            let not_http: &[&[u8]] = &[b"SSH-2.0-OpenSSH\r\n\r\n"];
            assert!(exchange(Method::GET, not_http).await.unwrap_err().contains("not HTTP/1.1"));
            // A head that never ends within the limit: refused, not buffered on.
            let endless: &'static [u8] = [&b"HTTP/1.1 200 OK\r\nx-big: "[..], &[b'a'; MAX_HEAD]].concat().leak();
            let endless: &'static [&'static [u8]] = vec![endless].leak();
            assert!(exchange(Method::GET, endless).await.unwrap_err().contains("over 65536 bytes"));
        });
    }

    #[test]
    fn a_bodiless_post_says_its_length() {
        let authority = Authority::from_static("127.0.0.9:80");
        let (parts, ()) = hyper::Request::post("/x").header("host", "h").body(()).unwrap().into_parts();
        let mut out = Vec::new();
        write_head(&mut out, &parts, &authority, None);
        assert_eq!(out, b"POST /x HTTP/1.1\r\nhost: h\r\ncontent-length: 0\r\n\r\n");
        // No Host: the target's address is the Host; an absolute URI goes out in origin form.
        let (parts, ()) = hyper::Request::get("http://127.0.0.9:80/a?b").body(()).unwrap().into_parts();
        write_head(&mut out, &parts, &authority, None);
        assert_eq!(out, b"GET /a?b HTTP/1.1\r\nhost: 127.0.0.9:80\r\n\r\n");
        // A query with no path: the path is "/".
        let (parts, ()) = hyper::Request::get("http://127.0.0.9:80?b").body(()).unwrap().into_parts();
        write_head(&mut out, &parts, &authority, None);
        assert_eq!(out, b"GET /?b HTTP/1.1\r\nhost: 127.0.0.9:80\r\n\r\n");
        // With forwarding: the fields as the load balancer changes them.
        let (parts, ()) = hyper::Request::get("/").header("connection", "close").body(()).unwrap().into_parts();
        let forwarding = Forwarding {
            client_ip: "10.0.0.9".parse().unwrap(),
            protocol: "https",
            port: HeaderValue::from_static("443"),
            trace_id: super::super::access_log::TraceId::of(0x6789_1233, (0, 2)),
        };
        write_head(&mut out, &parts, &authority, Some(&forwarding));
        let expect = "GET / HTTP/1.1\r\nhost: 127.0.0.9:80\r\nx-forwarded-for: 10.0.0.9\r\n\
            x-forwarded-proto: https\r\nx-forwarded-port: 443\r\n\
            x-amzn-trace-id: Root=1-67891233-000000000000000000000002\r\n\r\n";
        assert_eq!(String::from_utf8(out).unwrap(), expect);
    }
}
