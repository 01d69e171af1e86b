//! Connections to targets: which protocol a target group speaks, and the
//! clients that speak it.
//!
//! | group `protocol` / `protocol_version` | transport | connections |
//! | --- | --- | --- |
//! | `HTTP` / `HTTP1` | HTTP/1.1: `h1_client` for bodiless requests, hyper's for the rest | pooled per target (`Http1Pool`), several per target |
//! | `HTTPS` / `HTTP1` | HTTP/1.1 over TLS, ALPN `http/1.1` | pooled the same way |
//! | `HTTP` / `HTTP2`, `GRPC` | h2c (HTTP/2 with prior knowledge) | one per target, multiplexed |
//! | `HTTPS` / `HTTP2`, `GRPC` | HTTP/2 over TLS, ALPN `h2` | one per target, multiplexed |
//!
//! Target certificates are not verified, as AWS does not (see `crate::tls`).
//! Every client and TLS configuration is built once per process; a request
//! only picks one. HTTP/2 requests carry the client's Host as `:authority`
//! (and no Host header, which HTTP/2 forbids to differ from it), so the Host
//! is preserved whatever the version on either side. Trailers (gRPC's
//! `grpc-status`) pass through in both directions, as body frames.

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper::header::{HeaderValue, HOST};
use hyper::http::request::Parts;
use hyper::http::uri::{Authority, Scheme};
use hyper::{Request, Response, Uri, Version};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

pub use super::client_body::UpstreamBody;
use super::forwarding::{self, Forwarding};
use super::{h1_client, retry};
use crate::tls::{self, ClientAlpn};

/// How long connecting to a target may take (AWS: 10 seconds).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an idle pooled connection to a target is kept.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

pub type BoxError = Box<dyn StdError + Send + Sync>;

/// How the load balancer talks to a target group's targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Transport {
    /// TLS to the target (`protocol: HTTPS`).
    pub tls: bool,
    /// HTTP/2 to the target (`protocol_version: HTTP2` or `GRPC`).
    pub http2: bool,
    /// A PROXY protocol v2 header first on every connection (network load
    /// balancers, `proxy_protocol_v2: true`).
    pub proxy_protocol: bool,
}

impl Transport {
    /// The transport of a target group's settings.
    pub fn of(group: &lbctl_spec::settings::TargetGroup) -> Transport {
        use lbctl_spec::{ProtocolVersion, TargetProtocol};
        Transport {
            tls: group.protocol == TargetProtocol::Https,
            http2: matches!(group.version(), ProtocolVersion::Http2 | ProtocolVersion::Grpc),
            proxy_protocol: group.proxy_protocol_v2,
        }
    }

    fn to_bits(self) -> u8 {
        u8::from(self.tls) | (u8::from(self.http2) << 1) | (u8::from(self.proxy_protocol) << 2)
    }

    fn from_bits(bits: u8) -> Transport {
        Transport { tls: bits & 1 != 0, http2: bits & 2 != 0, proxy_protocol: bits & 4 != 0 }
    }
}

/// A target group's current transport, read by every request without a
/// lock and replaced by the group's manager when its settings change.
#[derive(Debug, Default)]
pub struct TransportCell(AtomicU8);

impl TransportCell {
    /// The current transport.
    pub fn load(&self) -> Transport {
        Transport::from_bits(self.0.load(Ordering::Relaxed))
    }

    /// Replaces the transport; requests already sent keep theirs.
    pub fn store(&self, transport: Transport) {
        self.0.store(transport.to_bits(), Ordering::Relaxed);
    }
}

/// Why a request could not be forwarded.
#[derive(Debug)]
pub struct UpstreamError {
    connect: bool,
    source: BoxError,
}

impl UpstreamError {
    /// Whether no connection to the target could be made (refused, reset
    /// during the TLS or HTTP/2 handshake, timed out): the request was not sent.
    pub fn is_connect(&self) -> bool {
        self.connect
    }

    /// Whether the request failed on the client's side: its body, which
    /// the target was being sent, broke off or was malformed (hyper's
    /// client calls the body it sends the user's).
    pub fn is_client_body(&self) -> bool {
        let mut cause: Option<&(dyn StdError + 'static)> = Some(self.source.as_ref());
        while let Some(err) = cause {
            // A body error of hyper's client has the body's own error as
            // its cause: here the client connection's (hyper's server's).
            let body = err.downcast_ref::<hyper::Error>().filter(|it| it.is_user());
            if body.and_then(StdError::source).is_some_and(|it| it.is::<hyper::Error>()) {
                return true;
            }
            cause = err.source();
        }
        false
    }

    fn connect(source: impl Into<BoxError>) -> UpstreamError {
        UpstreamError { connect: true, source: source.into() }
    }

    fn exchange(source: impl Into<BoxError>) -> UpstreamError {
        UpstreamError { connect: false, source: source.into() }
    }

    fn from_client(err: hyper_util::client::legacy::Error) -> UpstreamError {
        UpstreamError { connect: err.is_connect(), source: err.into() }
    }
}

impl fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = if self.connect { "connecting to the target" } else { "forwarding to the target" };
        write!(f, "{what}: {}", self.source)
    }
}

impl StdError for UpstreamError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(self.source.as_ref())
    }
}

/// The clients to targets; one is shared by every listener of a proxy.
#[derive(Clone)]
pub struct Upstream {
    http1_tls: Client<TlsConnector, UpstreamBody>,
}

impl Default for Upstream {
    fn default() -> Upstream {
        Upstream::new()
    }
}

impl Upstream {
    /// The clients, with their TLS configuration built once here.
    pub fn new() -> Upstream {
        let http = http_connector();
        let tls = TlsConnector {
            http: http.clone(),
            tls: tokio_rustls::TlsConnector::from(tls::client_config(ClientAlpn::Http1)),
        };
        Upstream { http1_tls: pooled_client(tls) }
    }

    /// Sends a request without a body to a plain HTTP/1.1 target: the
    /// common case, in which the head is lent rather than handed over (a
    /// retry sends the same head again, without a copy kept for it) and the
    /// request's own task drives the connection (`h1_client`).
    /// The forwarding headers are written as the head goes out
    /// (`forwarding::write_fields`); the head itself is left as it is.
    pub async fn send_head(
        &self,
        target: Endpoint<'_>,
        head: &Parts,
        forwarding: &Forwarding,
    ) -> Result<Exchange, UpstreamError> {
        target.h1.send_inline(target, head, Some(forwarding)).await
    }

    /// Sends `request` to `target` over `transport` and returns the
    /// response head (its body streams on). The request's URI is absolute
    /// (`http://<target ip:port>/path`) and its version HTTP/1.1, as the
    /// request path prepares it; HTTP/2 transports rewrite both.
    pub async fn send(
        &self,
        transport: Transport,
        target: Endpoint<'_>,
        request: Request<UpstreamBody>,
    ) -> Result<Exchange, UpstreamError> {
        match transport {
            Transport { http2: false, tls: false, .. } => target.h1.send(target, request).await,
            // The other paths are boxed: their state (hyper's client, TLS,
            // handshakes) would otherwise enlarge every request's future,
            // which is moved whole into hyper's connection per request.
            Transport { http2: false, tls: true, .. } => {
                let response = Box::pin(self.http1_tls.request(request)).await.map_err(UpstreamError::from_client)?;
                Ok(Exchange::hyper(response, None))
            }
            Transport { http2: true, tls, .. } => {
                let response = Box::pin(target.h2.send(target.address, tls, into_http2(request, tls))).await?;
                Ok(Exchange::hyper(response, None))
            }
        }
    }

    /// Sends a request to switch protocols (WebSocket) to a target over
    /// HTTP/1.1, on a connection of its own that the upgrade takes over
    /// (never one from a pool, nor given back to one).
    pub async fn send_upgrade(
        &self,
        transport: Transport,
        target: Endpoint<'_>,
        mut request: Request<UpstreamBody>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        if transport.tls {
            return self.http1_tls.request(request).await.map_err(UpstreamError::from_client);
        }
        to_origin_form(&mut request, target.authority);
        let stream = connect_tcp(target.address).await?;
        let (mut sender, connection) =
            http1::Builder::new().handshake(TokioIo::new(stream)).await.map_err(UpstreamError::connect)?;
        tokio::spawn(async move {
            // Ends when the target closes, or hands the connection to the upgrade.
            let _ = connection.with_upgrades().await;
        });
        sender.send_request(request).await.map_err(UpstreamError::exchange)
    }
}

/// What a request needs of its target: where it is, its name as a Host,
/// and its connections (kept by the target's `selection::Backend`).
#[derive(Clone, Copy)]
pub struct Endpoint<'a> {
    /// Its address and port.
    pub address: SocketAddr,
    /// `ip:port`, the Host of a request that has none.
    pub authority: &'a Authority,
    /// Its idle HTTP/1.1 connections.
    pub h1: &'a Http1Pool,
    /// Its HTTP/2 connection.
    pub h2: &'a Http2Connection,
}

/// A target's answer: the response head, without the headers that only
/// concerned the target's connection (hop-by-hop); the body streams on.
pub struct Exchange {
    pub response: Response<TargetBody>,
    /// From `h1_client`, the head's fields as the target wrote them (the
    /// response's header map is then empty); from hyper's client, `None`.
    pub fields: Option<h1_client::Fields>,
}

impl Exchange {
    fn hyper(mut response: Response<Incoming>, connection: Option<http1::SendRequest<UpstreamBody>>) -> Exchange {
        forwarding::remove_hop_by_hop(response.headers_mut());
        Exchange { response: response.map(|body| TargetBody::Hyper { body, connection }), fields: None }
    }

    fn inline((response, fields): (Response<h1_client::ResponseBody>, h1_client::Fields)) -> Exchange {
        Exchange { response: response.map(TargetBody::Inline), fields: Some(fields) }
    }
}

/// A target's response body, and the HTTP/1.1 connection it comes on,
/// which goes back to the target's pool (`release_to`) once the body has
/// ended. A body dropped early closes its connection instead.
pub enum TargetBody {
    /// From hyper's client: HTTP/2, TLS, or a request with a body.
    Hyper { body: Incoming, connection: Option<http1::SendRequest<UpstreamBody>> },
    /// From `h1_client`.
    Inline(h1_client::ResponseBody),
    /// Given back already.
    Released,
}

impl TargetBody {
    /// Gives the connection back to `pool`; call once the body has ended.
    pub fn release_to(&mut self, pool: &Http1Pool) {
        match std::mem::replace(self, TargetBody::Released) {
            TargetBody::Hyper { connection: Some(connection), .. } => pool.release(connection),
            TargetBody::Inline(body) => {
                if let Some(connection) = body.into_idle() {
                    pool.release_inline(connection);
                }
            }
            _ => {}
        }
    }
}

impl hyper::body::Body for TargetBody {
    type Data = bytes::Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, BoxError>>> {
        match self.get_mut() {
            TargetBody::Hyper { body, .. } => Pin::new(body).poll_frame(cx).map_err(Into::into),
            TargetBody::Inline(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
            TargetBody::Released => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            TargetBody::Hyper { body, .. } => body.is_end_stream(),
            TargetBody::Inline(body) => body.is_end_stream(),
            TargetBody::Released => true,
        }
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        match self {
            TargetBody::Hyper { body, .. } => body.size_hint(),
            TargetBody::Inline(body) => body.size_hint(),
            TargetBody::Released => hyper::body::SizeHint::with_exact(0),
        }
    }
}

impl fmt::Debug for Exchange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Exchange").field("status", &self.response.status()).finish_non_exhaustive()
    }
}

/// Idle HTTP/1.1 connections to one target, kept on its `Backend`.
///
/// The request path takes an idle connection (or makes one), sends, and
/// gives the connection back when the response body has been read to its
/// end, so a connection is never shared by two requests and a slow body
/// never holds up another request. A connection the target closed is
/// dropped when next taken. Lighter than hyper-util's pooled client: no
/// pool keys to hash, no background task per request, and the lock is never
/// contended on a one-thread proxy and never held across an await.
///
/// A request without a body (most of them) goes out on an `h1_client`
/// connection, which its own task drives; one with a body streams it
/// through hyper's client, whose connection task reads the answer while
/// the body is still being sent. Each kind is kept apart.
#[derive(Default)]
pub struct Http1Pool {
    idle: std::sync::Mutex<Idle>,
}

#[derive(Default)]
struct Idle {
    hyper: Vec<http1::SendRequest<UpstreamBody>>,
    inline: Vec<h1_client::Connection>,
}

/// Idle connections kept per target; more are closed when released.
const MAX_IDLE_PER_TARGET: usize = 512;

impl fmt::Debug for Http1Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Http1Pool").finish_non_exhaustive()
    }
}

impl Http1Pool {
    fn idle(&self) -> std::sync::MutexGuard<'_, Idle> {
        self.idle.lock().unwrap_or_else(|it| it.into_inner())
    }

    /// Gives a hyper connection back after its response body ended.
    fn release(&self, connection: http1::SendRequest<UpstreamBody>) {
        if connection.is_closed() {
            return;
        }
        let mut idle = self.idle();
        if idle.hyper.len() < MAX_IDLE_PER_TARGET {
            idle.hyper.push(connection);
        }
    }

    /// Drops the idle connections the target has closed (a request would
    /// drop them too, when it next takes one).
    pub fn close_stale(&self) {
        let mut idle = self.idle();
        idle.inline.retain_mut(h1_client::Connection::is_usable);
        idle.hyper.retain(|it| !it.is_closed());
    }

    /// Gives an `h1_client` connection back after its response body ended.
    fn release_inline(&self, connection: h1_client::Connection) {
        let mut idle = self.idle();
        if idle.inline.len() < MAX_IDLE_PER_TARGET {
            idle.inline.push(connection);
        }
    }

    /// Sends on an idle connection, or a new one.
    async fn send(&self, target: Endpoint<'_>, mut request: Request<UpstreamBody>) -> Result<Exchange, UpstreamError> {
        to_origin_form(&mut request, target.authority);
        if hyper::body::Body::is_end_stream(request.body()) {
            let (parts, _) = request.into_parts();
            return self.send_inline(target, &parts, None).await;
        }
        // Boxed: see `Upstream::send`.
        Box::pin(self.send_hyper(target, request)).await
    }

    /// Sends a request with a body through hyper's client.
    async fn send_hyper(
        &self,
        target: Endpoint<'_>,
        mut request: Request<UpstreamBody>,
    ) -> Result<Exchange, UpstreamError> {
        // A request an idle connection could not take (the target closed
        // it) goes out on a new connection; it was never written, so that
        // is always safe.
        loop {
            let Some(mut connection) = self.idle().hyper.pop() else { break };
            // Ready once the connection has finished its previous exchange.
            if connection.ready().await.is_err() {
                continue;
            }
            match connection.try_send_request(request).await {
                Ok(response) => return Ok(Exchange::hyper(response, Some(connection))),
                Err(mut err) => match err.take_message() {
                    Some(unsent) => request = unsent,
                    None => return Err(UpstreamError::exchange(err.into_error())),
                },
            }
        }
        let mut connection = connect_http1(target.address).await?;
        let response = connection.send_request(request).await.map_err(UpstreamError::exchange)?;
        Ok(Exchange::hyper(response, Some(connection)))
    }

    /// Sends a bodiless request with `h1_client`, on an idle connection
    /// (those found closed are dropped unused) or a new one. When the idle
    /// connection it went out on was closed or reset before any byte of an
    /// answer (the target let go of it as the request went out), an
    /// idempotent request is sent once more, on a new connection: never
    /// twice on pooled ones, so a target that drops a request is sent it at
    /// most twice here.
    async fn send_inline(
        &self,
        target: Endpoint<'_>,
        parts: &Parts,
        forwarding: Option<&Forwarding>,
    ) -> Result<Exchange, UpstreamError> {
        let idle = loop {
            let Some(mut connection) = self.idle().inline.pop() else { break None };
            if connection.is_usable() {
                break Some(connection);
            }
        };
        if let Some(connection) = idle {
            match connection.send(parts, target.authority, forwarding).await {
                Ok(answer) => return Ok(Exchange::inline(answer)),
                Err(failed) if failed.unanswered && retry::is_idempotent(&parts.method) => {}
                Err(failed) => return Err(UpstreamError::exchange(failed.error)),
            }
        }
        // Boxed: connecting is rare (connections are pooled), and its state
        // would otherwise enlarge every request's future.
        let connection = h1_client::Connection::new(Box::pin(connect_tcp(target.address)).await?);
        match connection.send(parts, target.authority, forwarding).await {
            Ok(answer) => Ok(Exchange::inline(answer)),
            Err(failed) => Err(UpstreamError::exchange(failed.error)),
        }
    }
}

/// HTTP/1.1 to an origin server takes the path and query only (the request
/// path prepares an absolute URI), and always a Host header.
fn to_origin_form(request: &mut Request<UpstreamBody>, authority: &Authority) {
    if request.uri().scheme().is_some() {
        let origin = request.uri().path_and_query().cloned().map_or_else(|| Uri::from_static("/"), Uri::from);
        *request.uri_mut() = origin;
    }
    if !request.headers().contains_key(HOST) {
        if let Ok(host) = HeaderValue::from_str(authority.as_str()) {
            request.headers_mut().insert(HOST, host);
        }
    }
}

/// A new TCP connection to `addr`, without Nagle's delay.
async fn connect_tcp(addr: SocketAddr) -> Result<TcpStream, UpstreamError> {
    let timed_out = || UpstreamError::connect(io::Error::new(io::ErrorKind::TimedOut, "connect timed out"));
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| timed_out())?
        .map_err(UpstreamError::connect)?;
    stream.set_nodelay(true).ok();
    Ok(stream)
}

/// A new HTTP/1.1 connection to `addr`, its connection task spawned.
async fn connect_http1(addr: SocketAddr) -> Result<http1::SendRequest<UpstreamBody>, UpstreamError> {
    let stream = connect_tcp(addr).await?;
    let (sender, connection) =
        http1::Builder::new().handshake(TokioIo::new(stream)).await.map_err(UpstreamError::connect)?;
    tokio::spawn(async move {
        // Ends when the target or the pool lets go of the connection.
        let _ = connection.await;
    });
    Ok(sender)
}

fn http_connector() -> HttpConnector {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
    connector
}

fn pooled_client<C>(connector: C) -> Client<C, UpstreamBody>
where
    C: hyper_util::client::legacy::connect::Connect + Clone + Send + Sync + 'static,
{
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .build(connector)
}

/// Turns an HTTP/1.1-shaped request into an HTTP/2 one: the Host header
/// becomes the `:authority` (the target's address when there is no usable
/// Host), the scheme says whether TLS is used.
fn into_http2<B>(request: Request<B>, tls: bool) -> Request<B> {
    let (mut parts, body) = request.into_parts();
    let authority = parts.headers.get(HOST).and_then(|it| Authority::try_from(it.as_bytes()).ok());
    if authority.is_some() {
        parts.headers.remove(HOST);
    }
    let mut uri = std::mem::take(&mut parts.uri).into_parts();
    uri.scheme = Some(if tls { Scheme::HTTPS } else { Scheme::HTTP });
    if let Some(authority) = authority {
        uri.authority = Some(authority);
    }
    // Scheme, authority and path were valid apart; they are together.
    parts.uri = Uri::from_parts(uri).unwrap_or_default();
    parts.version = Version::HTTP_2;
    Request::from_parts(parts, body)
}

/// A target's HTTP/2 connection, made on first use and shared by every
/// request to it (HTTP/2 multiplexes). It lives in the target's `Backend`, so
/// it is closed when the target leaves the group.
#[derive(Default)]
pub struct Http2Connection {
    /// The live connection's handle; `None` before the first request. The
    /// async mutex is held while connecting, so concurrent first requests
    /// wait for one connection instead of each making their own.
    sender: tokio::sync::Mutex<Option<http2::SendRequest<UpstreamBody>>>,
}

impl fmt::Debug for Http2Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Http2Connection").finish_non_exhaustive()
    }
}

impl Http2Connection {
    /// Sends a request; a request the connection closed under before it went
    /// out is sent once more on a new connection.
    async fn send(
        &self,
        addr: SocketAddr,
        tls: bool,
        request: Request<UpstreamBody>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let mut sender = self.sender(addr, tls).await?;
        match sender.try_send_request(request).await {
            Ok(response) => Ok(response),
            Err(mut err) => match err.take_message() {
                Some(request) => {
                    let mut sender = self.sender(addr, tls).await?;
                    sender.send_request(request).await.map_err(UpstreamError::exchange)
                }
                None => Err(UpstreamError::exchange(err.into_error())),
            },
        }
    }

    /// The live connection's handle, connecting when there is none.
    async fn sender(&self, addr: SocketAddr, tls: bool) -> Result<http2::SendRequest<UpstreamBody>, UpstreamError> {
        let mut slot = self.sender.lock().await;
        if let Some(sender) = slot.as_ref().filter(|it| !it.is_closed()) {
            return Ok(sender.clone());
        }
        *slot = None;
        let sender = tokio::time::timeout(CONNECT_TIMEOUT, connect_http2(addr, tls))
            .await
            .map_err(|_| UpstreamError::connect(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")))??;
        *slot = Some(sender.clone());
        Ok(sender)
    }
}

/// Connects to `addr`, over TLS (ALPN `h2`) or not, and starts HTTP/2 on it.
async fn connect_http2(addr: SocketAddr, tls: bool) -> Result<http2::SendRequest<UpstreamBody>, UpstreamError> {
    let stream = TcpStream::connect(addr).await.map_err(UpstreamError::connect)?;
    stream.set_nodelay(true).ok();
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder.timer(TokioTimer::new());
    if tls {
        let ip = match addr.ip() {
            std::net::IpAddr::V4(ip) => ip,
            std::net::IpAddr::V6(_) => Ipv4Addr::LOCALHOST,
        };
        let connector = tokio_rustls::TlsConnector::from(tls::client_config(ClientAlpn::Http2));
        let stream = connector.connect(tls::target_server_name(ip), stream).await.map_err(UpstreamError::connect)?;
        let (sender, connection) = builder.handshake(TokioIo::new(stream)).await.map_err(UpstreamError::connect)?;
        tokio::spawn(connection);
        Ok(sender)
    } else {
        let (sender, connection) = builder.handshake(TokioIo::new(stream)).await.map_err(UpstreamError::connect)?;
        tokio::spawn(connection);
        Ok(sender)
    }
}

/// The connector of the pooled HTTP/1.1-over-TLS client: a TCP connection
/// (hyper-util's connector, with its timeout), then a TLS handshake.
#[derive(Clone)]
struct TlsConnector {
    http: HttpConnector,
    tls: tokio_rustls::TlsConnector,
}

impl tower_service::Service<Uri> for TlsConnector {
    type Response = TokioIo<TargetTls>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<TokioIo<TargetTls>, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        tower_service::Service::<Uri>::poll_ready(&mut self.http, cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let ip = uri.host().and_then(|it| it.parse::<Ipv4Addr>().ok()).unwrap_or(Ipv4Addr::LOCALHOST);
        let connecting = tower_service::Service::<Uri>::call(&mut self.http, uri);
        let tls = self.tls.clone();
        Box::pin(async move {
            let stream = connecting.await?.into_inner();
            let stream = tls.connect(tls::target_server_name(ip), stream).await?;
            Ok(TokioIo::new(TargetTls(stream)))
        })
    }
}

/// A TLS connection to a target, as the pooled client sees it.
struct TargetTls(TlsStream<TcpStream>);

impl Connection for TargetTls {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl AsyncRead for TargetTls {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TargetTls {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

/// `te: trailers` is the one TE value HTTP/2 allows; gRPC requires it.
pub(super) fn asks_for_trailers(value: Option<&HeaderValue>) -> bool {
    value.is_some_and(|it| it.as_bytes().eq_ignore_ascii_case(b"trailers"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transports_of_target_groups() {
        fn check(yaml: &str, expect: (bool, bool)) {
            let group = serde_yaml::from_str::<lbctl_spec::TargetGroup>(yaml).unwrap().resolve();
            let transport = Transport::of(&group);
            assert_eq!((transport.tls, transport.http2), expect, "{yaml}");
            let cell = TransportCell::default();
            cell.store(transport);
            assert_eq!(cell.load(), transport);
        }
        check("{}", (false, false));
        check("{ protocol: HTTPS }", (true, false));
        check("{ protocol_version: HTTP2 }", (false, true));
        check("{ protocol: HTTPS, protocol_version: GRPC }", (true, true));
    }

    #[test]
    fn http2_requests_carry_the_host_as_authority() {
        fn check(host: Option<&str>, tls: bool, expect: (&str, Option<&str>)) {
            let mut builder = Request::get("http://127.0.0.9:50051/pkg.Service/Method?x=1");
            if let Some(host) = host {
                builder = builder.header(HOST, host);
            }
            let (parts, ()) = into_http2(builder.body(()).unwrap(), tls).into_parts();
            let host = parts.headers.get(HOST).map(|it| it.to_str().unwrap());
            assert_eq!((parts.uri.to_string().as_str(), host), expect);
            assert_eq!(parts.version, Version::HTTP_2);
        }
        check(Some("api.example.com:8443"), true, ("https://api.example.com:8443/pkg.Service/Method?x=1", None));
        check(None, false, ("http://127.0.0.9:50051/pkg.Service/Method?x=1", None));
        check(Some("bad host"), false, ("http://127.0.0.9:50051/pkg.Service/Method?x=1", Some("bad host")));
    }

    /// An idle connection stays pooled while the target keeps it open, and
    /// the sweep drops it once the target has closed it.
    #[test]
    fn idle_connections_the_target_closed_are_swept() {
        use http_body_util::BodyExt;
        use tokio::io::AsyncWriteExt;
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let (close, closed) = tokio::sync::oneshot::channel::<()>();
            tokio::spawn(async move {
                let (mut stream, _) = listener.accept().await.unwrap();
                h1_client::tests::read_request_head(&mut stream).await;
                stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await.unwrap();
                let _ = closed.await;
            });
            let backend = super::super::selection::Backend::new("t", Ipv4Addr::LOCALHOST, addr.port());
            let request = Request::get(format!("http://{addr}/")).body(UpstreamBody::Empty).unwrap();
            let exchange = Upstream::new().send(Transport::default(), backend.endpoint(), request).await.unwrap();
            let mut body = exchange.response.into_body();
            while let Some(frame) = body.frame().await {
                frame.unwrap();
            }
            body.release_to(&backend.h1);
            let idle = || backend.h1.idle().inline.len();
            assert_eq!(idle(), 1);
            backend.h1.close_stale();
            assert_eq!(idle(), 1, "a connection the target keeps open stays");
            close.send(()).unwrap();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while idle() > 0 {
                assert!(tokio::time::Instant::now() < deadline, "the closed connection was never swept");
                tokio::time::sleep(Duration::from_millis(10)).await;
                backend.h1.close_stale();
            }
        });
    }

    /// A target that reads a request and closes without answering is sent
    /// it at most twice (once on a pooled connection, once on a new one),
    /// however many idle connections the pool holds.
    #[test]
    fn a_dropped_request_is_sent_at_most_twice() {
        use http_body_util::BodyExt;
        use std::sync::atomic::AtomicUsize;
        use tokio::io::AsyncWriteExt;
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let dropped = std::sync::Arc::new(AtomicUsize::new(0));
            let counted = dropped.clone();
            tokio::spawn(async move {
                while let Ok((mut stream, _)) = listener.accept().await {
                    let counted = counted.clone();
                    tokio::spawn(async move {
                        loop {
                            let head = h1_client::tests::read_request_head(&mut stream).await;
                            if head.starts_with(b"GET /drop ") {
                                counted.fetch_add(1, Ordering::Relaxed);
                                return;
                            }
                            stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await.unwrap();
                        }
                    });
                }
            });
            let backend = super::super::selection::Backend::new("t", Ipv4Addr::LOCALHOST, addr.port());
            let upstream = Upstream::new();
            let send = |path: &str| {
                let request = Request::get(format!("http://{addr}{path}")).body(UpstreamBody::Empty).unwrap();
                upstream.send(Transport::default(), backend.endpoint(), request)
            };
            // Four idle connections in the pool.
            let answers = futures_join4(send("/ok"), send("/ok"), send("/ok"), send("/ok")).await;
            for exchange in answers {
                let mut body = exchange.unwrap().response.into_body();
                while let Some(frame) = body.frame().await {
                    frame.unwrap();
                }
                body.release_to(&backend.h1);
            }
            assert_eq!(backend.h1.idle().inline.len(), 4);
            assert!(send("/drop").await.is_err());
            assert_eq!(dropped.load(Ordering::Relaxed), 2);
        });
    }

    /// Four futures driven together (the test's way to hold four
    /// connections open at once).
    async fn futures_join4<F: Future>(a: F, b: F, c: F, d: F) -> [F::Output; 4] {
        let (ab, cd) = tokio::join!(async { tokio::join!(a, b) }, async { tokio::join!(c, d) });
        [ab.0, ab.1, cd.0, cd.1]
    }

    #[test]
    fn te_trailers() {
        assert!(asks_for_trailers(Some(&HeaderValue::from_static("trailers"))));
        assert!(!asks_for_trailers(Some(&HeaderValue::from_static("gzip"))));
        assert!(!asks_for_trailers(None));
    }
}
