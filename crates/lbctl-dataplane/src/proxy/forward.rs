//! The request path: route a request, then forward it to a target or answer
//! it directly (redirect, fixed response, error).
//!
//! Forwarding keeps the method, path, query, Host header and body (streamed
//! both ways), drops hop-by-hop headers, and adds the `X-Forwarded-*`
//! headers. Upstream connections are pooled. Failures map to AWS's answers:
//! 503 when no target is routable, 502 when the target refused or broke the
//! response, 504 when it did not answer within the idle timeout. A bodiless
//! request whose target refused it or died before answering is first sent
//! once more to another target (`retry`).
//!
//! A request for a function target is invoked instead (`lambda`), with the
//! same headers. When the group has stickiness on, the response carries the
//! `AWSALB` cookie naming the target that answered (`selection`).

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::Either;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{
    HeaderName, HeaderValue, CONNECTION, CONTENT_TYPE, HOST, LOCATION, SET_COOKIE, TE, TRAILER, TRANSFER_ENCODING,
    UPGRADE, USER_AGENT,
};
use hyper::http::uri::{PathAndQuery, Scheme};
use hyper::{HeaderMap, Request, Response, StatusCode, Uri, Version};
use tokio::time::Instant;

use super::action::{Action, RedirectSource};
use super::lambda;
use super::retry::{self, Replay};
use super::router::{RequestView, Router};
use super::selection::InFlight;
use super::target_group::TargetGroup;
use super::upstream::{self, Upstream, UpstreamBody};
use crate::runtime::ProxyConfig;
use hyper::client::conn::http1;

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
/// The User-Agent of load balancers' health checks (AWS's, and lbctl's).
const HEALTH_CHECKER: &[u8] = super::health_check::USER_AGENT_VALUE.as_bytes();

/// What one listener needs per request, compiled from its configuration.
pub struct ListenerContext {
    /// The listener's port.
    pub port: u16,
    /// Its rules.
    pub router: Router,
    /// How long a target may take to answer, and an idle client connection may stay open.
    pub idle_timeout: Duration,
    /// `X-Forwarded-Port` value.
    forwarded_port: HeaderValue,
    /// `http` or `https`: the `X-Forwarded-Proto` value and a redirect's `#{protocol}`.
    protocol: &'static str,
    /// The TLS configuration of an HTTPS listener (set by the proxy after
    /// compiling, from the certificate files); `None` for plain HTTP.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// `#{host}` of a redirect when the request has no Host header.
    default_host: String,
}

impl ListenerContext {
    /// Compiles `listener` of `config`; `resolve` gives the target group of a name.
    pub fn compile(
        listener: &lbctl_spec::Listener,
        config: &ProxyConfig,
        resolve: &mut dyn FnMut(&str) -> std::sync::Arc<TargetGroup>,
    ) -> (ListenerContext, Vec<String>) {
        let (router, errors) = Router::compile(listener, resolve);
        let context = ListenerContext {
            port: listener.port,
            router,
            idle_timeout: Duration::from_millis(config.idle_timeout_ms.max(1)),
            forwarded_port: HeaderValue::from(listener.port),
            protocol: match listener.protocol {
                lbctl_spec::ListenerProtocol::Https => "https",
                _ => "http",
            },
            tls: None,
            default_host: config.dns_name.clone(),
        };
        (context, errors)
    }
}

/// A listener's shared state: its current context (swapped on reload) and the upstream client.
pub struct Frontend {
    /// The current configuration of the listener.
    pub context: ArcSwap<ListenerContext>,
    /// The client to targets.
    pub upstream: Upstream,
}

/// Answers one request from `peer`.
pub async fn handle(frontend: &Frontend, request: Request<Incoming>, peer: SocketAddr) -> Response<ProxyBody> {
    let client_ip = peer.ip().to_canonical();
    // Route under the context snapshot, then let it go before any await.
    let (group, idle_timeout, forwarded_port, protocol) = {
        let context = frontend.context.load();
        let view = RequestView::new(&request, client_ip);
        let group = match context.router.route(&view) {
            Action::Forward(group) => group.clone(),
            Action::Weighted(weighted) => match weighted.pick() {
                Some(group) => group.clone(),
                None => {
                    let failure = Failure::new(&request, peer, "-", "-");
                    return failure.answer(StatusCode::SERVICE_UNAVAILABLE, "every weight of the forward is 0");
                }
            },
            Action::Fixed(fixed) => {
                let mut response = Response::new(ProxyBody::full(fixed.body.clone()));
                *response.status_mut() = fixed.status;
                response.headers_mut().insert(CONTENT_TYPE, fixed.content_type.clone());
                return response;
            }
            Action::Redirect(redirect) => {
                let host = view.host.and_then(|it| std::str::from_utf8(it).ok()).unwrap_or(&context.default_host);
                let uri = request.uri();
                let source = RedirectSource {
                    protocol: context.protocol,
                    host,
                    port: context.port,
                    path: uri.path(),
                    query: uri.query().unwrap_or(""),
                };
                let Ok(location) = HeaderValue::try_from(redirect.location(&source)) else {
                    return error(StatusCode::BAD_REQUEST);
                };
                let mut response = Response::new(ProxyBody::empty());
                *response.status_mut() = redirect.status;
                response.headers_mut().insert(LOCATION, location);
                return response;
            }
        };
        (group, context.idle_timeout, context.forwarded_port.clone(), context.protocol)
    };
    let Some((backend, mut sticky_cookie)) = group.select_with(request.headers()) else {
        let failure = Failure::new(&request, peer, &group.name, "-");
        return failure.answer(StatusCode::SERVICE_UNAVAILABLE, "no registered target is routable");
    };
    let transport = group.transport();
    // Another load balancer's health check is not a client request.
    let health_check = request.headers().get(USER_AGENT).is_some_and(|it| it.as_bytes() == HEALTH_CHECKER);
    let mut in_flight = InFlight::start_request(backend, health_check);

    let (mut parts, body) = request.into_parts();
    // HTTP/2 targets get `te: trailers` through when the client sent it (gRPC requires it).
    let te_trailers = transport.http2 && upstream::asks_for_trailers(parts.headers.get(TE));
    prepare_request_headers(&mut parts.headers, &parts.uri, client_ip, forwarded_port, protocol);
    if te_trailers {
        parts.headers.insert(TE, HeaderValue::from_static("trailers"));
    }
    if let Some(function) = &in_flight.function {
        let response = lambda::invoke(function, parts, body).await.map(ProxyBody::full);
        return with_sticky_cookie(response, sticky_cookie);
    }
    let mut uri = std::mem::take(&mut parts.uri).into_parts();
    uri.scheme = Some(Scheme::HTTP);
    uri.authority = Some(in_flight.authority.clone());
    if uri.path_and_query.is_none() {
        uri.path_and_query = Some(PathAndQuery::from_static("/"));
    }
    parts.uri = match Uri::from_parts(uri) {
        Ok(uri) => uri,
        Err(_) => return error(StatusCode::BAD_REQUEST),
    };
    parts.version = Version::HTTP_11;

    // What an error answer's log line names; cheap (reference counts).
    let (method, path) = (parts.method.clone(), parts.uri.path_and_query().cloned());
    let replay = Replay::capture(&parts, &body);
    let deadline = Instant::now() + idle_timeout;
    let sent = frontend.upstream.send(transport, in_flight.endpoint(), Request::from_parts(parts, Either::Left(body)));
    let mut answer = tokio::time::timeout_at(deadline, sent).await;
    // A target that died under the request: once more on another one (`retry`).
    if let Ok(Err(err)) = &answer {
        if let Some((other, request)) = retry::second_attempt(&group, &in_flight, err, replay) {
            in_flight = other;
            sticky_cookie = sticky_cookie.and_then(|_| group.sticky_cookie_for(&in_flight));
            answer =
                tokio::time::timeout_at(deadline, frontend.upstream.send(transport, in_flight.endpoint(), request))
                    .await;
        }
    }
    let failure = || Failure { method, path, peer, group: group.name.clone(), target: in_flight.describe() };
    match answer {
        Err(_) => {
            let why =
                format!("the target did not answer within the idle timeout ({})", lbctl_spec::Duration(idle_timeout));
            failure().answer(StatusCode::GATEWAY_TIMEOUT, &why)
        }
        Ok(Err(err)) => failure().answer(StatusCode::BAD_GATEWAY, &format!("{err}")),
        Ok(Ok(exchange)) => {
            let (mut parts, body) = exchange.response.into_parts();
            remove_hop_by_hop(&mut parts.headers);
            let body = ProxyBody::upstream(body, in_flight, exchange.connection);
            with_sticky_cookie(Response::from_parts(parts, body), sticky_cookie)
        }
    }
}

/// Adds the stickiness cookie (when the target group has stickiness on) to
/// a target's response.
fn with_sticky_cookie(mut response: Response<ProxyBody>, cookie: Option<HeaderValue>) -> Response<ProxyBody> {
    if let Some(cookie) = cookie {
        response.headers_mut().append(SET_COOKIE, cookie);
    }
    response
}

/// Drops hop-by-hop headers, adds the forwarding headers, and keeps the Host
/// the client sent (from the HTTP/2 authority when it sent no header).
fn prepare_request_headers(
    headers: &mut HeaderMap,
    uri: &Uri,
    client_ip: IpAddr,
    forwarded_port: HeaderValue,
    protocol: &'static str,
) {
    remove_hop_by_hop(headers);
    if !headers.contains_key(HOST) {
        if let Some(host) = uri.authority().and_then(|it| HeaderValue::from_str(it.as_str()).ok()) {
            headers.insert(HOST, host);
        }
    }
    let forwarded_for = {
        let mut previous = headers.get_all(&X_FORWARDED_FOR).iter().peekable();
        if previous.peek().is_none() {
            HeaderValue::try_from(client_ip.to_string())
        } else {
            let mut value = Vec::with_capacity(64);
            for item in previous {
                value.extend_from_slice(item.as_bytes());
                value.extend_from_slice(b", ");
            }
            value.extend_from_slice(client_ip.to_string().as_bytes());
            HeaderValue::from_bytes(&value)
        }
    };
    if let Ok(forwarded_for) = forwarded_for {
        headers.insert(X_FORWARDED_FOR.clone(), forwarded_for);
    }
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(protocol));
    headers.insert(X_FORWARDED_PORT.clone(), forwarded_port);
}

/// Removes the headers that only concern one connection, including those
/// the `Connection` header names.
fn remove_hop_by_hop(headers: &mut HeaderMap) {
    let mut named = Vec::new();
    for value in headers.get_all(CONNECTION) {
        for token in value.to_str().unwrap_or("").split(',') {
            let token = token.trim();
            if !token.is_empty() && !token.eq_ignore_ascii_case("close") && !token.eq_ignore_ascii_case("keep-alive") {
                if let Ok(name) = HeaderName::from_bytes(token.as_bytes()) {
                    named.push(name);
                }
            }
        }
    }
    for name in named {
        headers.remove(name);
    }
    for name in [&CONNECTION, &KEEP_ALIVE, &PROXY_CONNECTION, &TE, &TRAILER, &TRANSFER_ENCODING, &UPGRADE] {
        headers.remove(name);
    }
}

/// A request the load balancer answers with an error of its own (502, 503,
/// 504): what the log line says of it.
struct Failure {
    method: hyper::Method,
    path: Option<PathAndQuery>,
    peer: SocketAddr,
    group: String,
    /// `id (ip:port)`, or `-` when no target was chosen.
    target: String,
}

impl Failure {
    fn new<B>(request: &Request<B>, peer: SocketAddr, group: &str, target: &str) -> Failure {
        Failure {
            method: request.method().clone(),
            path: request.uri().path_and_query().cloned(),
            peer,
            group: group.to_string(),
            target: target.to_string(),
        }
    }

    /// Logs the failure (time, client, request, target group, target and
    /// why) in the load balancer's log, and answers it with `status`.
    fn answer(self, status: StatusCode, why: &str) -> Response<ProxyBody> {
        let path = self.path.as_ref().map_or("/", PathAndQuery::as_str);
        eprintln!(
            "{} {} {} {path} from {}: target group {}, target {}: {why}",
            crate::runtime::log_time(),
            status.as_u16(),
            self.method,
            self.peer,
            self.group,
            self.target
        );
        error(status)
    }
}

/// An answer of the load balancer itself: status line text as the body.
fn error(status: StatusCode) -> Response<ProxyBody> {
    let body: &'static [u8] = match status {
        StatusCode::BAD_REQUEST => b"400 Bad Request\n",
        StatusCode::BAD_GATEWAY => b"502 Bad Gateway\n",
        StatusCode::SERVICE_UNAVAILABLE => b"503 Service Unavailable\n",
        StatusCode::GATEWAY_TIMEOUT => b"504 Gateway Timeout\n",
        _ => b"error\n",
    };
    let mut response = Response::new(ProxyBody::full(Bytes::from_static(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}

/// A response body: a target's, streamed while counting the request as in
/// flight, or one the load balancer made.
pub struct ProxyBody {
    kind: BodyKind,
}

enum BodyKind {
    Full(Option<Bytes>),
    /// A target's body; `connection` goes back to the target's pool once
    /// the last frame is read (a body dropped early closes it instead).
    Upstream {
        body: Incoming,
        in_flight: InFlight,
        connection: Option<http1::SendRequest<UpstreamBody>>,
    },
}

impl ProxyBody {
    fn full(bytes: Bytes) -> ProxyBody {
        ProxyBody { kind: BodyKind::Full(if bytes.is_empty() { None } else { Some(bytes) }) }
    }

    fn empty() -> ProxyBody {
        ProxyBody { kind: BodyKind::Full(None) }
    }

    fn upstream(
        body: Incoming,
        in_flight: InFlight,
        connection: Option<http1::SendRequest<UpstreamBody>>,
    ) -> ProxyBody {
        // An empty body (204, HEAD) may never be polled: its connection is free now.
        let connection = match connection {
            Some(connection) if body.is_end_stream() => {
                in_flight.h1.release(connection);
                None
            }
            other => other,
        };
        ProxyBody { kind: BodyKind::Upstream { body, in_flight, connection } }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match &mut self.get_mut().kind {
            BodyKind::Full(bytes) => Poll::Ready(bytes.take().map(|it| Ok(Frame::data(it)))),
            BodyKind::Upstream { body, in_flight, connection } => {
                let frame = Pin::new(&mut *body).poll_frame(cx);
                let ended = match &frame {
                    Poll::Ready(None) => true,
                    Poll::Ready(Some(Ok(_))) => body.is_end_stream(),
                    _ => false,
                };
                if ended {
                    if let Some(connection) = connection.take() {
                        in_flight.h1.release(connection);
                    }
                }
                frame
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            BodyKind::Full(bytes) => bytes.is_none(),
            BodyKind::Upstream { body, .. } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            BodyKind::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |it| it.len() as u64)),
            BodyKind::Upstream { body, .. } => body.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_headers_for_the_target() {
        fn check(headers: &[(&str, &str)], expect: &[(&str, &str)]) {
            let mut map = HeaderMap::new();
            for (name, value) in headers {
                map.append(HeaderName::from_bytes(name.as_bytes()).unwrap(), HeaderValue::from_str(value).unwrap());
            }
            let uri: Uri = "/x".parse().unwrap();
            prepare_request_headers(&mut map, &uri, "10.0.0.9".parse().unwrap(), HeaderValue::from(8080u16), "http");
            let mut got: Vec<(String, String)> =
                map.iter().map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_string())).collect();
            got.sort();
            let mut expect: Vec<(String, String)> =
                expect.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            expect.sort();
            assert_eq!(got, expect, "{headers:?}");
        }
        let added = [("x-forwarded-proto", "http"), ("x-forwarded-port", "8080")];
        check(
            &[("host", "shop.example.com")],
            &[&[("host", "shop.example.com"), ("x-forwarded-for", "10.0.0.9")][..], &added].concat(),
        );
        check(
            &[("x-forwarded-for", "1.2.3.4"), ("x-forwarded-for", "5.6.7.8"), ("x-forwarded-proto", "https")],
            &[&[("x-forwarded-for", "1.2.3.4, 5.6.7.8, 10.0.0.9")][..], &added].concat(),
        );
        check(
            &[
                ("connection", "keep-alive, x-secret"),
                ("x-secret", "1"),
                ("keep-alive", "timeout=5"),
                ("te", "trailers"),
                ("accept", "*/*"),
            ],
            &[&[("accept", "*/*"), ("x-forwarded-for", "10.0.0.9")][..], &added].concat(),
        );
    }

    #[test]
    fn error_answers() {
        fn check(status: StatusCode, expect: &str) {
            let response = error(status);
            let BodyKind::Full(Some(body)) = &response.body().kind else { panic!() };
            assert_eq!((response.status(), std::str::from_utf8(body).unwrap()), (status, expect));
        }
        check(StatusCode::BAD_GATEWAY, "502 Bad Gateway\n");
        check(StatusCode::SERVICE_UNAVAILABLE, "503 Service Unavailable\n");
        check(StatusCode::GATEWAY_TIMEOUT, "504 Gateway Timeout\n");
    }
}
