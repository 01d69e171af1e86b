//! The HTTP/1.1 server of a client connection's common case: requests
//! without a body, read with httparse from a buffer the connection keeps,
//! answered with the response head and the start of its body in one write,
//! one after the other on the connection's own task (keep-alive and
//! pipelining).
//!
//! Whatever it does not serve itself it hands over, with every byte it has
//! read, to hyper's server for the rest of the connection, which then
//! answers as it always did: a head that does not parse or is too large
//! (400, 431), a request or header line over AWS's limit, `TRACE` and an
//! `X-Forwarded-For` of more than 30 addresses (which `forward::refusal`
//! refuses), HTTP/1.0, a request with a body, `Expect` or `Upgrade`,
//! `HEAD` and `CONNECT`, and HTTP/2 (its preface is not an HTTP/1.1 head).
//! Either way a request goes through the same request path (`forward`).
//!
//! Not this module's: routing and forwarding (`forward`), the connection's
//! watchdog and its graceful close (`connection`; `closing` tells this
//! server), the head checks (`head_guard` wraps the stream read here).

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::ops::Range;
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::SystemTime;

use bytes::{Buf, Bytes, BytesMut};
use hyper::body::Body;
use hyper::header::{
    HeaderName, HeaderValue, CONNECTION, CONTENT_LENGTH, DATE, EXPECT, HOST, TRANSFER_ENCODING, UPGRADE,
};
use hyper::{Method, Request, Response, StatusCode, Uri, Version};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio_util::io::poll_read_buf;
use tokio_util::sync::CancellationToken;

use super::connection::Activity;
use super::forward::{self, ConnectionInfo, Frontend, ProxyBody};
use super::forwarding::{self, field, X_FORWARDED_FOR};
use super::h1_client;
use super::upstream::UpstreamBody;
use super::MAX_REQUEST_HEAD_BYTES;

/// Header fields a head may have: hyper's default, so that a head this
/// server hands over for having more gets hyper's 431 as before.
const MAX_HEADERS: usize = 100;
/// Bytes asked of the socket per read.
const READ_SIZE: usize = 8 * 1024;
/// Response bytes gathered before they are written.
const WRITE_AT: usize = 64 * 1024;

/// How a connection left this server.
pub enum Served<I> {
    /// It closed, or was closed.
    Closed,
    /// Its next request is not one this server serves: the stream, and the
    /// bytes read from it that nothing has used (that request's first).
    Handover(I, Bytes),
}

/// What the connection's requests share.
pub struct Shared<'a> {
    pub frontend: &'a Arc<Frontend>,
    pub peer: SocketAddr,
    pub connection: &'a Arc<ConnectionInfo>,
    pub activity: &'a Arc<Activity>,
    /// Cancelled when the connection is to close once its request in
    /// flight, if any, is answered. The watchdog cancels it on the
    /// connection's own task and polls the connection right after
    /// (`connection::watch`), so `serve` reads it as a flag where it would
    /// wait, and needs no wake-up for it (waiting on it cost a lock per read).
    pub closing: &'a CancellationToken,
}

/// Serves the connection's requests until it closes or one is to be
/// handed over.
pub async fn serve<I>(mut io: I, shared: Shared<'_>) -> Served<I>
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut fields = Vec::new();
    loop {
        // A whole head. After a first look, it is parsed again only when
        // the bytes read since could end it (`ends_a_head`): a head
        // trickling in a byte at a time would otherwise be parsed from its
        // start on every read; and again once it is past the size a head
        // may have, so that one that never ends is refused there, never
        // read on into memory.
        let mut looked = None;
        let head = loop {
            // Blank lines before a request line are skipped, as hyper does.
            let blank = buf.iter().take_while(|it| matches!(it, b'\r' | b'\n')).count();
            buf.advance(blank);
            let may_end = looked.is_none_or(|looked| ends_a_head(&buf, looked));
            if !buf.is_empty() && (may_end || buf.len() >= MAX_REQUEST_HEAD_BYTES) {
                match parse(&buf, &mut fields) {
                    Parse::Head(head) => break head,
                    Parse::Partial if buf.len() < MAX_REQUEST_HEAD_BYTES => looked = Some(buf.len()),
                    Parse::Partial | Parse::Other => return Served::Handover(io, buf.freeze()),
                }
            }
            looked = looked.map(|_| buf.len());
            buf.reserve(READ_SIZE);
            let read = std::future::poll_fn(|cx| match poll_read_buf(Pin::new(&mut io), cx, &mut buf) {
                // Between requests, a graceful close closes at once.
                Poll::Pending if buf.is_empty() && shared.closing.is_cancelled() => Poll::Ready(Ok(0)),
                other => other,
            })
            .await;
            match read {
                Ok(0) if buf.is_empty() => return closed(io).await,
                Ok(0) | Err(_) => return Served::Closed,
                Ok(_) => {}
            }
        };
        let request = match head.request(&mut buf, &fields) {
            Ok(request) => request,
            Err(unused) => return Served::Handover(io, unused),
        };
        let guard = shared.activity.request();
        let response = {
            // While the request is answered, a client that closes (or
            // fails) ends it, as with hyper's server; bytes that come
            // instead are the next request's, kept.
            let mut answer = pin!(forward::handle(shared.frontend, request, shared.peer, shared.connection));
            let mut watch = buf.is_empty();
            buf.reserve(READ_SIZE);
            std::future::poll_fn(|cx| {
                if let Poll::Ready(response) = answer.as_mut().poll(cx) {
                    return Poll::Ready(Some(response));
                }
                if watch {
                    match poll_read_buf(Pin::new(&mut io), cx, &mut buf) {
                        Poll::Ready(Ok(0) | Err(_)) => return Poll::Ready(None),
                        Poll::Ready(Ok(_)) => watch = false,
                        Poll::Pending => {}
                    }
                }
                Poll::Pending
            })
            .await
        };
        drop(guard);
        let Some(response) = response else {
            return closed(io).await;
        };
        // An interim status is no final answer (hyper's server refuses it
        // the same way); a switched protocol ends the connection.
        let interim = response.status().is_informational();
        let close = head.close || interim || shared.closing.is_cancelled();
        let written = respond(&mut io, &mut out, response, close).await;
        // A large body's buffer is not kept by an idle connection.
        if out.capacity() > 2 * WRITE_AT {
            out = Vec::new();
        }
        match written {
            Err(_) => return Served::Closed,
            Ok(()) if close => return closed(io).await,
            Ok(()) => {}
        }
    }
}

/// Closes the connection's sending side (on TLS, `close_notify`), as hyper's
/// server does before it lets a connection go.
async fn closed<I: AsyncWrite + Unpin>(mut io: I) -> Served<I> {
    let _ = io.shutdown().await;
    Served::Closed
}

/// Whether the bytes of `buf` after its first `looked` (those read since a
/// head was last found incomplete) could end a head: a blank line.
fn ends_a_head(buf: &[u8], looked: usize) -> bool {
    let new = &buf[looked.min(buf.len()).saturating_sub(3)..];
    new.windows(2).any(|it| it == b"\n\n") || new.windows(3).any(|it| it == b"\n\r\n")
}

/// A parsed head this server serves.
struct Head {
    method: Method,
    /// Where the request target is in the buffer.
    target: Range<usize>,
    /// The head's length.
    len: usize,
    /// The client asked to close after this request.
    close: bool,
}

enum Parse {
    Head(Head),
    Partial,
    /// Not a request this server serves (or not one at all): hyper's.
    Other,
}

/// Reads the head at the start of `buf`, its fields' names and where their
/// values are into `fields`.
fn parse(buf: &[u8], fields: &mut Vec<(HeaderName, Range<usize>)>) -> Parse {
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_request_with_uninit_headers(&mut parsed, buf, &mut slots) {
        // A head over the limit is hyper's to refuse (431).
        Ok(httparse::Status::Complete(len)) if len <= MAX_REQUEST_HEAD_BYTES => len,
        Ok(httparse::Status::Complete(_)) | Err(_) => return Parse::Other,
        Ok(httparse::Status::Partial) => return Parse::Partial,
    };
    let method = match parsed.method.map(|it| Method::from_bytes(it.as_bytes())) {
        // TRACE too: hyper's path refuses it (405).
        Some(Ok(method)) if method != Method::HEAD && method != Method::CONNECT && method != Method::TRACE => method,
        _ => return Parse::Other,
    };
    let (Some(1), Some(target)) = (parsed.version, parsed.path) else {
        return Parse::Other;
    };
    // Over AWS's limits: hyper's path refuses it (`forward::refusal`).
    if !forward::request_line_fits(method.as_str().len(), target.len()) {
        return Parse::Other;
    }
    let base = buf.as_ptr() as usize;
    let at = |text: &[u8]| {
        let start = text.as_ptr() as usize - base;
        start..start + text.len()
    };
    let mut close = false;
    // RFC 9112 §3.2: exactly one Host, else 400 (hyper's path answers it).
    let mut hosts = 0u8;
    // Over AWS's 30 addresses: hyper's path refuses it (463).
    let mut forwarded = 0;
    fields.clear();
    for field in parsed.headers.iter() {
        let Ok(name) = HeaderName::from_bytes(field.name.as_bytes()) else {
            return Parse::Other;
        };
        if !forward::field_line_fits(field.name.as_bytes(), field.value) {
            return Parse::Other;
        }
        if name == CONTENT_LENGTH {
            // A body, or a length hyper will judge.
            if field.value != b"0" {
                return Parse::Other;
            }
        } else if name == TRANSFER_ENCODING || name == EXPECT || name == UPGRADE {
            return Parse::Other;
        } else if name == HOST {
            // One that is not `host[:port]`: hyper's path answers 400.
            if !forward::valid_host(field.value) {
                return Parse::Other;
            }
            hosts = hosts.saturating_add(1);
        } else if name == CONNECTION {
            close |= field.value.split(|it| *it == b',').any(|token| token.trim_ascii().eq_ignore_ascii_case(b"close"));
        } else if name == X_FORWARDED_FOR {
            forwarded += forwarding::forwarded_addresses(field.value);
        }
        fields.push((name, at(field.value)));
    }
    if hosts != 1 || forwarded > forwarding::MAX_FORWARDED_ADDRESSES {
        return Parse::Other;
    }
    Parse::Head(Head { method, target: at(target.as_bytes()), len, close })
}

impl Head {
    /// The request, its head taken from `buf`; or, when its target is not
    /// a URI, every byte not used, for hyper (which answers 400).
    fn request(
        &self,
        buf: &mut BytesMut,
        fields: &[(HeaderName, Range<usize>)],
    ) -> Result<Request<UpstreamBody>, Bytes> {
        let head = buf.split_to(self.len).freeze();
        let uri = match Uri::from_maybe_shared(head.slice(self.target.clone())) {
            Ok(uri) => uri,
            Err(_) => {
                let mut unused = BytesMut::with_capacity(head.len() + buf.len());
                unused.extend_from_slice(&head);
                unused.extend_from_slice(buf);
                return Err(unused.freeze());
            }
        };
        let mut request = Request::new(UpstreamBody::Empty);
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = uri;
        *request.version_mut() = Version::HTTP_11;
        let headers = request.headers_mut();
        headers.reserve(fields.len());
        for (name, value) in fields {
            let value = head.slice(value.clone());
            debug_assert!(HeaderValue::from_maybe_shared(value.clone()).is_ok());
            // SAFETY: httparse accepted these bytes as a field value (HTAB,
            // SP, visible ASCII and bytes 0x80 and up: no other control
            // byte, no DEL), exactly what a `HeaderValue` may hold; hyper's
            // server builds its header maps the same way.
            let value = unsafe { HeaderValue::from_maybe_shared_unchecked(value) };
            headers.append(name.clone(), value);
        }
        Ok(request)
    }
}

/// How a response body is framed on the wire.
enum Framing {
    /// This many bytes left.
    Length(u64),
    Chunked,
}

/// Writes `response` (its head, then its body as it comes; `close` adds
/// `Connection: close`), as hyper's server would for the same request.
async fn respond<I>(io: &mut I, out: &mut Vec<u8>, response: Response<ProxyBody>, close: bool) -> io::Result<()>
where
    I: AsyncWrite + Unpin,
{
    let (mut parts, mut body) = response.into_parts();
    out.clear();
    if parts.status.is_informational() && parts.status != StatusCode::SWITCHING_PROTOCOLS {
        parts = Response::new(()).into_parts().0;
        parts.status = StatusCode::INTERNAL_SERVER_ERROR;
        body = ProxyBody::full(Bytes::new());
    }
    let status = parts.status;
    let reason = parts.extensions.get::<hyper::ext::ReasonPhrase>();
    if status == StatusCode::OK && reason.is_none() {
        out.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
    } else {
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(status.as_str().as_bytes());
        out.push(b' ');
        match reason {
            Some(reason) => out.extend_from_slice(reason.as_bytes()),
            None => out.extend_from_slice(status.canonical_reason().unwrap_or("<none>").as_bytes()),
        }
        out.extend_from_slice(b"\r\n");
    }
    // No body for 1xx, 204 and 304 (HEAD is not served here).
    let bodiless = status.is_informational() || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
    // A target's fields as it wrote them (`h1_client`), after the map.
    let fields = body.take_fields();
    let mut length = fields.as_ref().and_then(|it| it.content_length);
    let mut dated = fields.as_ref().is_some_and(|it| it.dated);
    for (name, value) in &parts.headers {
        if *name == TRANSFER_ENCODING {
            continue;
        }
        if *name == CONTENT_LENGTH {
            // The first valid one, written with the framing below.
            length = length.or_else(|| h1_client::decimal(value.as_bytes()));
            continue;
        }
        if *name == CONNECTION && close {
            continue;
        }
        dated |= *name == DATE;
        field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    if let Some(fields) = &fields {
        out.extend_from_slice(&fields.lines);
    }
    let mut framing = Framing::Length(0);
    if !bodiless {
        framing = match length {
            Some(length) => {
                field(out, b"content-length", itoa::Buffer::new().format(length).as_bytes());
                Framing::Length(length)
            }
            None if body.is_end_stream() => {
                field(out, b"content-length", b"0");
                Framing::Length(0)
            }
            None => match body.size_hint().exact() {
                Some(exact) => {
                    field(out, b"content-length", itoa::Buffer::new().format(exact).as_bytes());
                    Framing::Length(exact)
                }
                None => {
                    field(out, b"transfer-encoding", b"chunked");
                    Framing::Chunked
                }
            },
        };
    }
    if close {
        field(out, b"connection", b"close");
    }
    if !dated {
        field(out, b"date", &DATE_NOW.with(CachedDate::now));
    }
    out.extend_from_slice(b"\r\n");
    if !bodiless {
        write_body(io, out, &mut body, framing).await?;
    }
    io.write_all(out).await?;
    io.flush().await
}

/// Appends the body to `out` as it comes, writing `out` whenever the body
/// makes the connection wait and whenever `WRITE_AT` bytes are gathered; a
/// body that ends short of its length, or errs, is an error (the
/// connection closes, as hyper's does).
async fn write_body<I>(io: &mut I, out: &mut Vec<u8>, body: &mut ProxyBody, mut framing: Framing) -> io::Result<()>
where
    I: AsyncWrite + Unpin,
{
    loop {
        let frame =
            match std::future::poll_fn(|cx: &mut Context<'_>| Poll::Ready(Pin::new(&mut *body).poll_frame(cx))).await {
                Poll::Ready(frame) => frame,
                Poll::Pending => {
                    io.write_all(out).await?;
                    io.flush().await?;
                    out.clear();
                    std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await
                }
            };
        let data = match frame {
            None => break,
            Some(Err(err)) => return Err(io::Error::other(err)),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => data,
                // Trailers: HTTP/1.1 clients get none, as from hyper.
                Err(_) => continue,
            },
        };
        if data.is_empty() {
            continue;
        }
        match &mut framing {
            Framing::Length(left) => {
                if data.len() as u64 > *left {
                    return Err(io::Error::other("the response body is longer than its length"));
                }
                *left -= data.len() as u64;
                out.extend_from_slice(&data);
                if *left == 0 {
                    // All of it: what follows (an end, trailers) is not waited for.
                    break;
                }
            }
            Framing::Chunked => {
                let mut size = [0u8; 16];
                let digits = hex(&mut size, data.len());
                out.extend_from_slice(digits);
                out.extend_from_slice(b"\r\n");
                out.extend_from_slice(&data);
                out.extend_from_slice(b"\r\n");
            }
        }
        if out.len() >= WRITE_AT {
            io.write_all(out).await?;
            out.clear();
        }
    }
    match framing {
        Framing::Length(0) => Ok(()),
        Framing::Length(_) => Err(io::Error::other("the response body ended short of its length")),
        Framing::Chunked => {
            out.extend_from_slice(b"0\r\n\r\n");
            Ok(())
        }
    }
}

/// `value` in lowercase hex, written at the end of `buf`.
fn hex(buf: &mut [u8; 16], mut value: usize) -> &[u8] {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b"0123456789abcdef"[value & 0xf];
        value >>= 4;
        if value == 0 {
            return &buf[at..];
        }
    }
}

/// The `Date` header's value, formatted once a second per thread.
struct CachedDate {
    second: Cell<u64>,
    text: Cell<[u8; 29]>,
}

thread_local! {
    static DATE_NOW: CachedDate = const { CachedDate { second: Cell::new(u64::MAX), text: Cell::new([0; 29]) } };
}

impl CachedDate {
    fn now(&self) -> [u8; 29] {
        let now = SystemTime::now();
        let second = now.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |it| it.as_secs());
        if second != self.second.get() {
            let mut text = [0; 29];
            text.copy_from_slice(httpdate::fmt_http_date(now).as_bytes());
            self.text.set(text);
            self.second.set(second);
        }
        self.text.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(head: &[u8]) -> &'static str {
        match parse(head, &mut Vec::new()) {
            Parse::Head(_) => "served",
            Parse::Partial => "partial",
            Parse::Other => "hyper's",
        }
    }

    #[test]
    fn only_bodiless_http11_requests_are_served_here() {
        assert_eq!(kind(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n"), "served");
        assert_eq!(kind(b"DELETE /a HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n"), "served");
        assert_eq!(kind(b"GET / HTTP/1.1\r\nhost: x\r\n"), "partial");
        for other in [
            &b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\n\r\nabc"[..],
            b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 00\r\n\r\n",
            b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\ncontent-length: 1\r\n\r\n",
            b"POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
            b"GET / HTTP/1.1\r\nhost: x\r\nexpect: 100-continue\r\n\r\n",
            b"GET / HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\n\r\n",
            b"HEAD / HTTP/1.1\r\nhost: x\r\n\r\n",
            b"CONNECT a:443 HTTP/1.1\r\nhost: a:443\r\n\r\n",
            b"GET / HTTP/1.0\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"GET / HTTP/1.1\r\nhost: x\r\nbad header\r\n\r\n",
            // Not exactly one Host: hyper's path answers 400 (RFC 9112 §3.2).
            b"GET / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nhost: x\r\nHost: y\r\n\r\n",
        ] {
            assert_eq!(kind(other), "hyper's", "{}", String::from_utf8_lossy(other));
        }
    }

    #[test]
    fn a_head_is_parsed_again_only_when_new_bytes_may_end_it() {
        let head = b"GET / HTTP/1.1\r\nx: 1\r\n\r\n";
        // Looked at up to each point: could what came after end the head?
        assert!(!ends_a_head(&head[..20], 10));
        assert!(ends_a_head(head, head.len() - 1));
        assert!(ends_a_head(head, head.len() - 2));
        assert!(ends_a_head(b"GET / HTTP/1.1\n\n", 15));
        assert!(!ends_a_head(b"GET / HTTP/1.1\r\nx: 1\r\n", 5));
    }

    async fn written(response: Response<ProxyBody>, close: bool) -> String {
        let mut out = Vec::new();
        let mut wire = Vec::new();
        respond(&mut wire, &mut out, response, close).await.unwrap();
        let text = String::from_utf8(wire).unwrap();
        // The date moves; the rest is exact.
        let date = text.find("date: ").unwrap();
        text[..date].to_string() + &text[date + "date: ".len() + 29..]
    }

    #[tokio::test]
    async fn responses_are_framed_as_hyper_frames_them() {
        let mut response = Response::new(ProxyBody::full(Bytes::from_static(b"short")));
        *response.status_mut() = StatusCode::IM_A_TEAPOT;
        assert_eq!(written(response, false).await, "HTTP/1.1 418 I'm a teapot\r\ncontent-length: 5\r\n\r\n\r\nshort");
        let response = Response::new(ProxyBody::full(Bytes::new()));
        assert_eq!(
            written(response, true).await,
            "HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n\r\n"
        );
        let mut response = Response::new(ProxyBody::full(Bytes::from_static(b"ignored")));
        *response.status_mut() = StatusCode::NO_CONTENT;
        assert_eq!(written(response, false).await, "HTTP/1.1 204 No Content\r\n\r\n\r\n");
        // An interim status as a final answer: hyper's 500.
        let mut response = Response::new(ProxyBody::full(Bytes::from_static(b"x")));
        *response.status_mut() = StatusCode::from_u16(103).unwrap();
        assert_eq!(
            written(response, true).await,
            "HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\nconnection: close\r\n\r\n\r\n"
        );
        let mut response = Response::new(ProxyBody::full(Bytes::from_static(b"x")));
        response.extensions_mut().insert(hyper::ext::ReasonPhrase::from_static(b"Fine"));
        assert_eq!(written(response, false).await, "HTTP/1.1 200 Fine\r\ncontent-length: 1\r\n\r\n\r\nx");
    }
}
