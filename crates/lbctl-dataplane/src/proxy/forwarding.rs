//! What a load balancer changes in a request on its way to a target, as AWS
//! does: the hop-by-hop headers (and those `Connection` names) go,
//! `X-Forwarded-For` gets the client's address appended, `X-Forwarded-Proto`
//! and `X-Forwarded-Port` are set to the listener's, `X-Amzn-Trace-Id`
//! gets the request's trace id (its `Root`, or its `Self` beside the
//! client's `Root`), and the Host is kept (or taken from an HTTP/2
//! `:authority`).
//!
//! The same rules in two forms: `prepare` edits a header map (requests
//! that go out through hyper's client), `write_fields` writes the changed
//! header section straight into an HTTP/1.1 request head (`h1_client`),
//! leaving the map as the client sent it. Routing, targets and connections
//! are not this module's.

use std::net::IpAddr;

use bytes::Bytes;
use hyper::header::{HeaderName, HeaderValue, CONNECTION, COOKIE, HOST, TE, TRAILER, TRANSFER_ENCODING, UPGRADE};
use hyper::http::uri::Authority;
use hyper::{HeaderMap, Uri};

use super::access_log::{self, TraceId};

pub(super) static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
pub(super) static X_AMZN_TRACE_ID: HeaderName = HeaderName::from_static("x-amzn-trace-id");
/// The most addresses an `X-Forwarded-For` may name (AWS's ALB answers
/// 463 past it).
pub(super) const MAX_FORWARDED_ADDRESSES: usize = 30;

/// The addresses an `X-Forwarded-For` field value names (its comma-
/// separated items).
pub(super) fn forwarded_addresses(value: &[u8]) -> usize {
    value.split(|it| *it == b',').filter(|it| !it.trim_ascii().is_empty()).count()
}

/// Whether a `Transfer-Encoding` value names only codings the load balancer
/// passes on (AWS's ALB: `chunked` and `identity`; any other gets 501, as
/// the coding would be lost on the way).
pub(super) fn supported_transfer_coding(value: &[u8]) -> bool {
    // Empty items are no coding (RFC 9110 §5.6.1).
    value.split(|it| *it == b',').map(<[u8]>::trim_ascii).all(|coding| {
        coding.is_empty() || coding.eq_ignore_ascii_case(b"chunked") || coding.eq_ignore_ascii_case(b"identity")
    })
}

static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// The headers that only concern one connection.
pub(super) const HOP_BY_HOP: [&HeaderName; 7] =
    [&CONNECTION, &KEEP_ALIVE, &PROXY_CONNECTION, &TE, &TRAILER, &TRANSFER_ENCODING, &UPGRADE];

/// Where a request came from, as the forwarding headers say it.
#[derive(Debug, Clone)]
pub struct Forwarding {
    pub client_ip: IpAddr,
    /// `http` or `https`.
    pub protocol: &'static str,
    /// The listener's port.
    pub port: HeaderValue,
    /// The request's trace id, sent on in `X-Amzn-Trace-Id`.
    pub trace_id: TraceId,
}

/// The other names the `Connection` header lists (`close` and
/// `keep-alive` are options, not names).
fn connection_named(headers: &HeaderMap) -> Vec<HeaderName> {
    let mut named = Vec::new();
    for value in headers.get_all(CONNECTION) {
        for token in value.to_str().unwrap_or("").split(',') {
            let token = token.trim();
            if !token.is_empty() && !token.eq_ignore_ascii_case("close") && !token.eq_ignore_ascii_case("keep-alive") {
                // Host is the request's, end to end: `Connection` cannot take it.
                match HeaderName::from_bytes(token.as_bytes()) {
                    Ok(name) if name != HOST => named.push(name),
                    _ => {}
                }
            }
        }
    }
    named
}

/// Past this size of a request's headers, AWS sends a trace of its own
/// (`Root` only), whatever the client's.
const TRACE_HEADERS_LIMIT: usize = 7 * 1024;

/// What the trace sent on builds on (`TraceId::header_value`), given the
/// client's first `X-Amzn-Trace-Id` value, `first`: that value, unless
/// `Connection` names the header (hop-by-hop: not sent on) or the
/// request's headers are over 7 KB. The one rule for the target's header
/// and the log line alike; the rest of its work only when there is a
/// trace, which is rare.
pub(super) fn client_trace<'a>(headers: &HeaderMap, first: Option<&'a [u8]>) -> Option<&'a [u8]> {
    let first = first?;
    let size: usize = headers.iter().map(|(name, value)| name.as_str().len() + value.len() + 4).sum();
    let named = headers.contains_key(CONNECTION) && connection_named(headers).contains(&X_AMZN_TRACE_ID);
    (size <= TRACE_HEADERS_LIMIT && !named).then_some(first)
}

/// Removes the headers that only concern one connection, including those
/// the `Connection` header names.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the names finds the few present (most messages have
    // none, or a `Connection: keep-alive` alone): only those are looked up.
    let mut present = [false; HOP_BY_HOP.len()];
    for name in headers.keys() {
        if let Some(idx) = HOP_BY_HOP.iter().position(|it| *it == name) {
            present[idx] = true;
        }
    }
    if present[0] {
        for name in connection_named(headers) {
            headers.remove(name);
        }
    }
    for (name, present) in HOP_BY_HOP.into_iter().zip(present) {
        if present {
            headers.remove(name);
        }
    }
}

/// The `X-Forwarded-For` value: the addresses the client sent (unless
/// `Connection` named the header, making it hop-by-hop), then its own.
fn forwarded_for(out: &mut Vec<u8>, headers: &HeaderMap, previous: bool, client_ip: IpAddr) {
    if previous {
        for item in headers.get_all(&X_FORWARDED_FOR) {
            out.extend_from_slice(item.as_bytes());
            out.extend_from_slice(b", ");
        }
    }
    access_log::ip(out, client_ip);
}

/// Joins the `cookie` fields of an HTTP/2 request into one, for an
/// HTTP/1.1 target (RFC 9113 §8.2.3: HTTP/2 clients send each cookie as a
/// field of its own, and HTTP/1.1 has one).
pub fn join_cookies(headers: &mut HeaderMap) {
    let mut cookies = headers.get_all(COOKIE).iter();
    if cookies.next().is_none() || cookies.next().is_none() {
        return;
    }
    let mut joined = Vec::new();
    for (idx, value) in headers.get_all(COOKIE).iter().enumerate() {
        if idx > 0 {
            joined.extend_from_slice(b"; ");
        }
        joined.extend_from_slice(value.as_bytes());
    }
    if let Ok(value) = HeaderValue::from_maybe_shared(Bytes::from(joined)) {
        headers.insert(COOKIE, value);
    }
}

/// Edits `headers` for the target: hop-by-hop headers removed, the
/// forwarding headers set, a Host from the URI's authority (HTTP/2) when
/// there is none.
pub fn prepare(headers: &mut HeaderMap, uri: &Uri, forwarding: &Forwarding) {
    // The trace from the headers as the client sent them, as `write_fields` has it.
    let mut trace = Vec::with_capacity(48);
    let first = headers.get(&X_AMZN_TRACE_ID).map(HeaderValue::as_bytes);
    forwarding.trace_id.header_value(&mut trace, client_trace(headers, first));
    remove_hop_by_hop(headers);
    if !headers.contains_key(HOST) {
        if let Some(host) = uri.authority().and_then(|it| HeaderValue::from_str(it.as_str()).ok()) {
            headers.insert(HOST, host);
        }
    }
    let mut value = Vec::with_capacity(48);
    // Hop-by-hop headers are gone already, an `X-Forwarded-For` that
    // `Connection` named among them.
    forwarded_for(&mut value, headers, true, forwarding.client_ip);
    if let Ok(value) = HeaderValue::from_maybe_shared(Bytes::from(value)) {
        headers.insert(X_FORWARDED_FOR.clone(), value);
    }
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(forwarding.protocol));
    headers.insert(X_FORWARDED_PORT.clone(), forwarding.port.clone());
    // Valid: the client's fields are bytes of a header value already, and
    // the rest is lbctl's text.
    if let Ok(value) = HeaderValue::from_maybe_shared(Bytes::from(trace)) {
        headers.insert(X_AMZN_TRACE_ID.clone(), value);
    }
}

/// Writes the header section `prepare` would leave, as HTTP/1.1 field
/// lines (`name: value\r\n`), without changing `headers`. With no Host
/// (nor an authority in `uri`), the Host is `target`, as hyper's client
/// makes it.
pub fn write_fields(out: &mut Vec<u8>, headers: &HeaderMap, uri: &Uri, target: &Authority, forwarding: &Forwarding) {
    let named = if headers.contains_key(CONNECTION) { connection_named(headers) } else { Vec::new() };
    let (mut host, mut trace) = (false, None);
    for (name, value) in headers {
        if *name == X_AMZN_TRACE_ID {
            trace = trace.or(Some(value.as_bytes()));
            continue;
        }
        let replaced = *name == X_FORWARDED_FOR || *name == X_FORWARDED_PROTO || *name == X_FORWARDED_PORT;
        if replaced || HOP_BY_HOP.contains(&name) || named.contains(name) {
            continue;
        }
        host |= *name == HOST;
        field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    if !host {
        let authority = uri.authority().unwrap_or(target);
        field(out, b"host", authority.as_str().as_bytes());
    }
    out.extend_from_slice(b"x-forwarded-for: ");
    forwarded_for(out, headers, !named.contains(&X_FORWARDED_FOR), forwarding.client_ip);
    out.extend_from_slice(b"\r\n");
    field(out, b"x-forwarded-proto", forwarding.protocol.as_bytes());
    field(out, b"x-forwarded-port", forwarding.port.as_bytes());
    out.extend_from_slice(b"x-amzn-trace-id: ");
    forwarding.trace_id.header_value(out, client_trace(headers, trace));
    out.extend_from_slice(b"\r\n");
}

/// Writes `name: value\r\n`.
pub fn field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(headers: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.append(HeaderName::from_bytes(name.as_bytes()).unwrap(), HeaderValue::from_str(value).unwrap());
        }
        map
    }

    fn sorted(map: &HeaderMap) -> Vec<(String, String)> {
        let mut pairs: Vec<(String, String)> =
            map.iter().map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_string())).collect();
        pairs.sort();
        pairs
    }

    fn forwarding() -> Forwarding {
        Forwarding {
            client_ip: "10.0.0.9".parse().unwrap(),
            protocol: "http",
            port: HeaderValue::from(8080u16),
            trace_id: TraceId::of(0x6789_1233, (0, 1)),
        }
    }

    /// The examples, each checked in both forms: the map `prepare` leaves,
    /// and the fields `write_fields` writes (parsed back), are the same.
    #[test]
    fn request_headers_for_the_target() {
        fn check(headers: &[(&str, &str)], uri: &str, expect: &[(&str, &str)]) {
            let uri: Uri = uri.parse().unwrap();
            let target = Authority::from_static("127.0.0.9:80");
            let mut expect: Vec<(String, String)> =
                expect.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            expect.sort();

            let mut prepared = map(headers);
            prepare(&mut prepared, &uri, &forwarding());
            if !prepared.contains_key(HOST) {
                prepared.insert(HOST, HeaderValue::from_static("127.0.0.9:80"));
            }
            assert_eq!(sorted(&prepared), expect, "prepare {headers:?}");

            let mut out = Vec::new();
            write_fields(&mut out, &map(headers), &uri, &target, &forwarding());
            let mut fields = [httparse::EMPTY_HEADER; 32];
            let head = [&b"GET / HTTP/1.1\r\n"[..], &out, b"\r\n"].concat();
            let mut request = httparse::Request::new(&mut fields);
            assert!(request.parse(&head).unwrap().is_complete());
            let written = map(&request
                .headers
                .iter()
                .map(|it| (it.name, std::str::from_utf8(it.value).unwrap()))
                .collect::<Vec<_>>());
            assert_eq!(sorted(&written), expect, "write_fields {headers:?}");
        }
        let added = [
            ("x-forwarded-proto", "http"),
            ("x-forwarded-port", "8080"),
            ("x-amzn-trace-id", "Root=1-67891233-000000000000000000000001"),
        ];
        check(
            &[("host", "shop.example.com")],
            "/x",
            &[&[("host", "shop.example.com"), ("x-forwarded-for", "10.0.0.9")][..], &added].concat(),
        );
        check(
            &[("x-forwarded-for", "1.2.3.4"), ("x-forwarded-for", "5.6.7.8"), ("x-forwarded-proto", "https")],
            "/x",
            &[&[("host", "127.0.0.9:80"), ("x-forwarded-for", "1.2.3.4, 5.6.7.8, 10.0.0.9")][..], &added].concat(),
        );
        check(
            &[
                ("connection", "keep-alive, x-secret"),
                ("x-secret", "1"),
                ("keep-alive", "timeout=5"),
                ("te", "trailers"),
                ("upgrade", "websocket"),
                ("accept", "*/*"),
                ("accept", "text/plain"),
            ],
            "/x",
            &[
                &[
                    ("host", "127.0.0.9:80"),
                    ("accept", "*/*"),
                    ("accept", "text/plain"),
                    ("x-forwarded-for", "10.0.0.9"),
                ][..],
                &added,
            ]
            .concat(),
        );
        // `Connection` can make even X-Forwarded-For hop-by-hop.
        check(
            &[("connection", "x-forwarded-for"), ("x-forwarded-for", "1.2.3.4")],
            "/x",
            &[&[("host", "127.0.0.9:80"), ("x-forwarded-for", "10.0.0.9")][..], &added].concat(),
        );
        // The client's trace: this request's id is its Self.
        let root = "Root=1-67891200-abcdef012345678912345678";
        check(
            &[("host", "shop.example.com"), ("x-amzn-trace-id", &format!("{root};CalledFrom=app"))],
            "/x",
            &[
                ("host", "shop.example.com"),
                ("x-forwarded-for", "10.0.0.9"),
                ("x-forwarded-proto", "http"),
                ("x-forwarded-port", "8080"),
                ("x-amzn-trace-id", &format!("Self=1-67891233-000000000000000000000001;{root};CalledFrom=app")),
            ],
        );
        // A trace that `Connection` names is not sent on: the request's id is its Root.
        check(
            &[("connection", "x-amzn-trace-id"), ("x-amzn-trace-id", root)],
            "/x",
            &[&[("host", "127.0.0.9:80"), ("x-forwarded-for", "10.0.0.9")][..], &added].concat(),
        );
        // Headers over 7 KB: the request's id is the Root, whatever the client's.
        let big = "x".repeat(7 * 1024);
        check(
            &[("x-amzn-trace-id", root), ("x-big", &big)],
            "/x",
            &[&[("host", "127.0.0.9:80"), ("x-forwarded-for", "10.0.0.9"), ("x-big", &big)][..], &added].concat(),
        );
        // HTTP/2: the authority is the Host.
        check(
            &[("x-forwarded-port", "1")],
            "https://api.example.com:8443/x",
            &[&[("host", "api.example.com:8443"), ("x-forwarded-for", "10.0.0.9")][..], &added].concat(),
        );
    }

    #[test]
    fn hop_by_hop_headers_of_a_response() {
        let mut headers = map(&[("connection", "keep-alive"), ("content-length", "2"), ("server", "nginx")]);
        remove_hop_by_hop(&mut headers);
        assert_eq!(
            sorted(&headers),
            [("content-length".to_string(), "2".to_string()), ("server".to_string(), "nginx".to_string())]
        );
    }
}
