//! The request path: route a request, then forward it to a target or answer
//! it directly (redirect, fixed response, error).
//!
//! Forwarding keeps the method, path, query, Host header and body (streamed
//! both ways), drops hop-by-hop headers, and adds the `X-Forwarded-*`
//! headers. Upstream connections are pooled. Failures map to AWS's answers:
//! 503 when no target is routable, 502 when the target refused or broke the
//! response, 504 when it sent nothing for the idle timeout after having the
//! request, 408 when the client stopped sending its request body for it (a
//! request is waited on for time without data, not for its length). A bodiless
//! request whose target refused it or died before answering is first sent
//! once more to another target (`retry`).
//!
//! A request for a function target is invoked instead (`lambda`), with the
//! same headers. When the group has stickiness on, the response carries the
//! `AWSALB` cookie naming the target that answered (`selection`).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use hyper::header::{HeaderValue, CONTENT_TYPE, HOST, LOCATION, SET_COOKIE, TE, TRANSFER_ENCODING, USER_AGENT};
use hyper::http::uri::{PathAndQuery, Scheme};
use hyper::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use tokio::time::Instant;

use super::access_log::{self, AccessLog};
use super::action::{Action, RedirectSource};
use super::client_body::{self, Silent};
use super::forwarding::{self, Forwarding};
use super::h1_client::Fields;
use super::lambda;
use super::observe::LbStats;
use super::retry::{self, Replay};
use super::router::{RequestView, Router};
use super::selection::{Backend, InFlight};
use super::target_group::TargetGroup;
use super::tunnel;
use super::upstream::{self, BoxError, TargetBody, Upstream, UpstreamBody};
use crate::runtime::ProxyConfig;

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
    /// Where its requests are counted and logged.
    pub observe: Arc<Observe>,
}

/// Where a listener's requests are counted, and logged when the load
/// balancer has access logs.
pub struct Observe {
    /// The load balancer's counters.
    pub stats: Arc<LbStats>,
    /// Its access log, when on.
    pub log: Option<Arc<AccessLog>>,
    /// `app/<name>/<id>`: the load balancer in log lines.
    pub elb: String,
}

impl ListenerContext {
    /// Compiles `listener` of `config`; `resolve` gives the target group of a name.
    pub fn compile(
        listener: &lbctl_spec::Listener,
        config: &ProxyConfig,
        observe: Arc<Observe>,
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
            observe,
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

/// What a connection tells its requests' log lines.
#[derive(Debug)]
pub struct ConnectionInfo {
    /// TLS cipher (OpenSSL's name), protocol and SNI name, on HTTPS.
    pub tls: Option<crate::tls::SessionSummary>,
    /// `TID_<hex>`: the connection in log lines.
    pub trace_id: String,
    /// The client.
    peer: SocketAddr,
    /// What log lines have of the connection: written once, by the
    /// connection's first logged request.
    text: std::sync::OnceLock<access_log::ConnectionText>,
}

impl ConnectionInfo {
    /// `peer`'s connection, with its TLS session and trace id.
    pub fn new(peer: SocketAddr, tls: Option<crate::tls::SessionSummary>, trace_id: String) -> ConnectionInfo {
        ConnectionInfo { tls, trace_id, peer, text: std::sync::OnceLock::new() }
    }

    /// What log lines have of the connection to `elb`, its load balancer.
    fn text(&self, elb: &str) -> &access_log::ConnectionText {
        self.text.get_or_init(|| {
            let tls =
                self.tls.as_ref().map(|(cipher, protocol, domain)| (cipher.as_str(), *protocol, domain.as_deref()));
            access_log::ConnectionText::new(elb, self.peer, tls, &self.trace_id)
        })
    }
}

/// What happened to a request on its way, for its log line and the metrics.
#[derive(Default)]
struct Trace {
    /// The matching rule's priority, 0 for the default action.
    priority: Option<u32>,
    /// `forward`, `redirect`, `fixed-response`.
    actions: &'static str,
    /// The target group it was forwarded to.
    group: Option<Arc<TargetGroup>>,
    /// The target that was sent it.
    target: Option<Arc<Backend>>,
    /// When it was sent to the target, when the target's head came, and
    /// the time between (its target processing time).
    sent: Option<Instant>,
    answered: Option<Instant>,
    target_took: Option<Duration>,
    /// The target's status code.
    target_status: Option<u16>,
    /// A redirect's Location.
    redirect: Option<String>,
    /// Why it failed, AWS's code where it has one.
    error_reason: Option<&'static str>,
    /// Another load balancer's health check: not a client's request, so
    /// neither counted among requests and codes nor logged (AWS logs no
    /// health check).
    health_check: bool,
}

impl Trace {
    /// The target's answer came now; `status` is its own status code when
    /// it gave one, counted in its group's metrics with the time it took.
    fn answered(&mut self, group: &TargetGroup, status: Option<u16>) {
        let now = Instant::now();
        self.answered = Some(now);
        let took = now.saturating_duration_since(self.sent.unwrap_or(now));
        self.target_took = Some(took);
        if let Some(status) = status {
            self.target_status = Some(status);
            if !self.health_check {
                group.stats.answer(status, took);
            }
        }
    }
}

/// Answers one request from `peer`: routes and forwards it (`route`), then
/// counts the answer, and when the load balancer logs, has the response
/// body write its access-log line once it is sent.
pub async fn handle(
    frontend: &Frontend,
    request: Request<UpstreamBody>,
    peer: SocketAddr,
    connection: &Arc<ConnectionInfo>,
) -> Response<ProxyBody> {
    let arrived = Instant::now();
    // The one reading of the wall clock: the second of the request's trace
    // id, and its log line's times (the response's is this and the
    // monotonic time the request took).
    let arrived_at = since_epoch();
    let trace_id = access_log::TraceId::new(arrived_at.as_secs());
    let (observe, head) = {
        let context = frontend.context.load();
        let (default_host, port) = (context.default_host.as_bytes(), context.forwarded_port.as_bytes());
        let head =
            context.observe.log.as_ref().map(|_| RequestHead::of(&request, connection, default_host, port, trace_id));
        (context.observe.clone(), head)
    };
    let received = received_bytes(&request);
    let mut trace = Trace::default();
    let mut response = route(frontend, request, peer, trace_id, &mut trace).await;
    let status = response.status().as_u16();
    if !trace.health_check {
        observe.stats.response(status, trace.target_status.is_none());
    }
    let head_bytes = response_head_bytes(&response);
    let body = response.body_mut();
    body.stats = Some(observe.stats.clone());
    body.received = received + head_bytes;
    if let Some(head) = head.filter(|_| !trace.health_check) {
        let now = Instant::now();
        // Each step's time, and the whole's: the target's was measured
        // when it answered, and the whole is the steps' sum (two
        // subtractions of clock readings fewer per line). As AWS logs
        // them, the steps are all -1 when the request was not dispatched
        // to a target that answered: an action of the load balancer's own,
        // no target, a target refused or failed or timed out.
        let (steps, took) = match (trace.sent, trace.answered, trace.target_took) {
            (Some(sent), Some(answered), Some(target)) => {
                let request = sent.saturating_duration_since(arrived);
                let response = now.saturating_duration_since(answered);
                ([Some(request), Some(target), Some(response)], request + target + response)
            }
            _ => ([None; 3], now.saturating_duration_since(arrived)),
        };
        let [request_processing, target_processing, response_processing] = steps;
        body.log = Some(Box::new(PendingLine {
            observe,
            connection: connection.clone(),
            head,
            trace_id,
            responded_at: arrived_at + took,
            arrived_at,
            target: trace.target.take(),
            request_processing,
            target_processing,
            response_processing,
            elb_status: status,
            target_status: trace.target_status,
            received,
            head_bytes,
            group: trace.group.take(),
            priority: trace.priority,
            actions: if trace.actions.is_empty() { "-" } else { trace.actions },
            redirect: trace.redirect.take(),
            error_reason: trace.error_reason,
        }));
    }
    response
}

/// What a log line needs of a request, taken before it is forwarded: its
/// request line, User-Agent and the `X-Amzn-Trace-Id` sent on (when the
/// client sent one) already written as the line writes them (escaped), into
/// one small allocation. Copying these few bytes costs less than holding
/// the request's parts, whose every clone and drop is an atomic operation
/// on the connection's read buffer.
struct RequestHead {
    kind: &'static str,
    /// `GET http://host:port/path?query HTTP/1.1`, the User-Agent and the
    /// trace sent on, each escaped: `text[..agent]`, `text[agent..trace]`
    /// and `text[trace..]`.
    text: Vec<u8>,
    agent: usize,
    trace: usize,
}

impl RequestHead {
    /// `default_host` is the load balancer's name, `port` its listener's,
    /// `trace_id` the request's.
    fn of<B>(
        request: &Request<B>,
        connection: &ConnectionInfo,
        default_host: &[u8],
        port: &[u8],
        trace_id: access_log::TraceId,
    ) -> RequestHead {
        let tls = connection.tls.is_some();
        let kind = match (tls, request.version()) {
            (true, Version::HTTP_2) if is_grpc(request.headers()) => "grpcs",
            (true, Version::HTTP_2) => "h2",
            (true, _) => "https",
            (false, _) => "http",
        };
        // The first Host, User-Agent and trace, in one pass: a request has
        // few fields, and lookups by hash cost more than reading them.
        let (mut host, mut user_agent, mut incoming_trace) = (None, None, None);
        for (name, value) in request.headers() {
            if host.is_none() && name == HOST {
                host = Some(value.as_bytes());
            } else if user_agent.is_none() && name == USER_AGENT {
                user_agent = Some(value.as_bytes());
            } else if incoming_trace.is_none() && *name == forwarding::X_AMZN_TRACE_ID {
                incoming_trace = Some(value.as_bytes());
            }
        }
        // The line has the trace sent on; AWS's `Root` form of the
        // request's id (`trace_id`'s own field) when that builds on no
        // trace of the client's.
        let incoming_trace = forwarding::client_trace(request.headers(), incoming_trace);
        let mut trace_sent = Vec::new();
        if incoming_trace.is_some() {
            trace_id.header_value(&mut trace_sent, incoming_trace);
        }
        // AWS's `protocol://host:port/uri`: the listener's port when the
        // client named none, the load balancer's name when it named no host.
        let host = host.or_else(|| request.uri().authority().map(|it| it.as_str().as_bytes())).unwrap_or(default_host);
        let port: &[u8] = if split_port(host).1.is_some() { b"" } else { port };
        let colon: &[u8] = if port.is_empty() { b"" } else { b":" };
        let path = request.uri().path_and_query().map_or("/", PathAndQuery::as_str).as_bytes();
        let user_agent = user_agent.unwrap_or_default();
        let version: &[u8] = match request.version() {
            Version::HTTP_2 => b" HTTP/2.0",
            Version::HTTP_10 => b" HTTP/1.0",
            _ => b" HTTP/1.1",
        };
        let scheme: &[u8] = if tls { b" https://" } else { b" http://" };
        let method = request.method().as_str().as_bytes();
        let mut text = Vec::with_capacity(method.len() + 24 + host.len() + path.len() + user_agent.len());
        // Written as they came, then checked once for anything to escape
        // (nearly never): one pass over the whole text rather than one per
        // part. A method is a token, and the rest is lbctl's own: nothing
        // in them to escape.
        for part in [method, scheme, host, colon, port, path, version] {
            text.extend_from_slice(part);
        }
        let mut agent = text.len();
        text.extend_from_slice(user_agent);
        let mut trace = text.len();
        text.extend_from_slice(&trace_sent);
        if !access_log::nothing_to_escape(&text) {
            text.clear();
            text.extend_from_slice(method);
            text.extend_from_slice(scheme);
            access_log::escaped(&mut text, host);
            text.extend_from_slice(colon);
            text.extend_from_slice(port);
            access_log::escaped(&mut text, path);
            text.extend_from_slice(version);
            agent = text.len();
            access_log::escaped(&mut text, user_agent);
            trace = text.len();
            access_log::escaped(&mut text, &trace_sent);
        }
        RequestHead { kind, text, agent, trace }
    }

    /// The request line, escaped.
    fn request(&self) -> &[u8] {
        &self.text[..self.agent]
    }

    /// The User-Agent, escaped; empty when there was none.
    fn user_agent(&self) -> &[u8] {
        &self.text[self.agent..self.trace]
    }

    /// The `X-Amzn-Trace-Id` sent on, escaped, when the client sent one.
    fn trace_header(&self) -> Option<&[u8]> {
        Some(&self.text[self.trace..]).filter(|it| !it.is_empty())
    }
}

/// A Host value (`name`, `name:port`, `[v6]`, `[v6]:port`) as its host and
/// the port it names, if it names one.
fn split_port(host: &[u8]) -> (&[u8], Option<&[u8]>) {
    // The last `:` or `]` tells, read from the end: a port is short.
    match host.iter().rposition(|it| matches!(it, b':' | b']')) {
        Some(at) if host[at] == b':' => (&host[..at], Some(&host[at + 1..])),
        _ => (host, None),
    }
}

/// An access-log line waiting for its response to be sent.
struct PendingLine {
    /// The load balancer's, with its log.
    observe: Arc<Observe>,
    connection: Arc<ConnectionInfo>,
    head: RequestHead,
    trace_id: access_log::TraceId,
    /// When the response was made, since the Unix epoch: AWS's `time`.
    responded_at: Duration,
    /// When the request arrived, since the Unix epoch.
    arrived_at: Duration,
    target: Option<Arc<Backend>>,
    request_processing: Option<Duration>,
    target_processing: Option<Duration>,
    response_processing: Option<Duration>,
    elb_status: u16,
    target_status: Option<u16>,
    received: u64,
    head_bytes: u64,
    group: Option<Arc<TargetGroup>>,
    priority: Option<u32>,
    actions: &'static str,
    redirect: Option<String>,
    error_reason: Option<&'static str>,
}

impl PendingLine {
    /// Writes the line for a response whose body was `sent` bytes.
    fn write(&self, sent: u64) {
        let Some(log) = &self.observe.log else { return };
        let entry = access_log::Entry {
            kind: self.head.kind,
            time: self.responded_at,
            connection: self.connection.text(&self.observe.elb),
            target: self.target.as_deref().map(|it| it.authority.as_str()),
            request_processing: self.request_processing,
            target_processing: self.target_processing,
            response_processing: self.response_processing,
            elb_status: self.elb_status,
            target_status: self.target_status,
            received_bytes: self.received,
            sent_bytes: self.head_bytes + sent,
            request: self.head.request(),
            user_agent: self.head.user_agent(),
            target_group_arn: self.group.as_deref().map(|it| it.arn.as_str()),
            trace_id: self.trace_id,
            trace_header: self.head.trace_header(),
            matched_rule_priority: self.priority,
            request_creation_time: self.arrived_at,
            actions: self.actions,
            redirect_url: self.redirect.as_deref(),
            error_reason: self.error_reason,
        };
        log.append_with(|out| entry.write_to(out))
    }
}

/// Counts, and logs when the load balancer logs, a request hyper's server
/// refused and answered with `status` itself, `received` and `sent` its
/// bytes: as AWS logs a malformed request, with no request line
/// (`- http://host:port- -`), no target, no rule and -1 for every step.
pub fn refused(frontend: &Frontend, connection: &ConnectionInfo, status: u16, received: u64, sent: u64) {
    refused_with::<()>(frontend, connection, status, (received, sent), None);
}

/// Whether a request line of a method and a target of these lengths is
/// within AWS's limit.
pub(super) fn request_line_fits(method: usize, target: usize) -> bool {
    // `METHOD target HTTP/1.1`
    method + target + 10 <= super::MAX_REQUEST_LINE_BYTES
}

/// Whether a header line of `name` and `value` is within AWS's limit.
pub(super) fn field_line_fits(name: &[u8], value: &[u8]) -> bool {
    // `name: value`
    name.len() + value.len() + 2 <= super::MAX_FIELD_LINE_BYTES
}

/// Why a request that hyper's server let through is refused, if it is: a
/// request line over AWS's limit (414), a header line over it (431), an
/// HTTP/1.1 request without exactly one Host (400, RFC 9112 §3.2); then, as
/// AWS's ALB answers them, the TRACE method (405), a `Transfer-Encoding`
/// other than `chunked` or `identity` (501) and an `X-Forwarded-For` of more
/// than 30 addresses (463).
pub fn refusal<B>(request: &Request<B>) -> Option<StatusCode> {
    let uri = request.uri();
    // The target as sent: origin form, or absolute form with its authority
    // (HTTP/2's `:path`, with its `:authority` counted too: a few bytes more).
    let target =
        uri.path_and_query().map_or(1, |it| it.as_str().len()) + uri.authority().map_or(0, |it| it.as_str().len());
    if !request_line_fits(request.method().as_str().len(), target) {
        return Some(StatusCode::URI_TOO_LONG);
    }
    let mut hosts = 0;
    let mut bad_host = false;
    let (mut forwarded, mut unsupported_coding) = (0, false);
    for (name, value) in request.headers() {
        if !field_line_fits(name.as_str().as_bytes(), value.as_bytes()) {
            return Some(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
        }
        if *name == forwarding::X_FORWARDED_FOR {
            forwarded += forwarding::forwarded_addresses(value.as_bytes());
        } else if name == TRANSFER_ENCODING {
            unsupported_coding |= !forwarding::supported_transfer_coding(value.as_bytes());
        }
        if name == HOST {
            hosts += 1;
            // HTTP/2: a Host that names another than `:authority` is
            // malformed (RFC 9113 §8.3.1).
            let other = || uri.authority().is_some_and(|it| !same_entity(it.as_str().as_bytes(), value.as_bytes()));
            bad_host |= !valid_host(value.as_bytes()) || request.version() == Version::HTTP_2 && other();
        }
    }
    let one_needed = request.version() == Version::HTTP_11 && hosts != 1;
    if bad_host || one_needed || hosts > 1 {
        Some(StatusCode::BAD_REQUEST)
    } else if request.method() == Method::TRACE {
        Some(StatusCode::METHOD_NOT_ALLOWED)
    } else if unsupported_coding {
        Some(StatusCode::NOT_IMPLEMENTED)
    } else if forwarded > forwarding::MAX_FORWARDED_ADDRESSES {
        Some(TOO_MANY_FORWARDED_ADDRESSES)
    } else {
        None
    }
}

/// AWS's 463: an `X-Forwarded-For` of more than 30 addresses.
const TOO_MANY_FORWARDED_ADDRESSES: StatusCode = match StatusCode::from_u16(463) {
    Ok(status) => status,
    Err(_) => panic!("463 is a status code"),
};

/// Whether two `host[:port]` values name the same entity: the same host,
/// whatever its case, and the same port where both give one (a port left
/// out is the scheme's default).
fn same_entity(a: &[u8], b: &[u8]) -> bool {
    let ((host_a, port_a), (host_b, port_b)) = (split_port(a), split_port(b));
    host_a.eq_ignore_ascii_case(host_b) && (port_a.is_none() || port_b.is_none() || port_a == port_b)
}

/// Whether a Host value is `host[:port]` as RFC 9112 §3.2 has it (RFC 3986's
/// reg-name, IPv4 address or `[IP-literal]`, and digits for the port): a
/// request with any other is malformed (400), never routed nor sent on.
pub(super) fn valid_host(value: &[u8]) -> bool {
    let port = if value.first() == Some(&b'[') {
        let Some(end) = value.iter().position(|it| *it == b']') else { return false };
        let literal = &value[1..end];
        if literal.is_empty() || !literal.iter().all(|it| it.is_ascii_hexdigit() || matches!(it, b':' | b'.')) {
            return false;
        }
        &value[end + 1..]
    } else {
        // One pass, without branches per byte (every request's Host comes
        // here): host bytes and colons only, at most one colon, before the port.
        let (mut bad, mut colons, mut last_colon) = (false, 0usize, value.len());
        for (at, byte) in value.iter().enumerate() {
            let class = HOST_BYTES[usize::from(*byte)];
            bad |= class == 0;
            let colon = usize::from(class == 2);
            colons += colon;
            last_colon = if colon == 1 { at } else { last_colon };
        }
        if bad || colons > 1 {
            return false;
        }
        &value[last_colon..]
    };
    port.is_empty() || port[0] == b':' && port[1..].iter().all(u8::is_ascii_digit)
}

/// The bytes of a Host value outside brackets, by class: 1 for a byte of a
/// reg-name or IPv4 address (RFC 3986), 2 for the colon before the port, 0
/// for any other. A table, as every request's Host is checked.
const HOST_BYTES: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut byte = 0;
    while byte < 256 {
        let b = byte as u8;
        let name = b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
                    | b'%'
            );
        table[byte] = if b == b':' {
            2
        } else if name {
            1
        } else {
            0
        };
        byte += 1;
    }
    table
};

/// Answers `status`, counted and logged with its request line, a request
/// that hyper's server let through and `refusal` refuses; the connection
/// closes after it.
pub fn refused_request<B>(
    frontend: &Frontend,
    request: &Request<B>,
    connection: &ConnectionInfo,
    status: StatusCode,
) -> Response<ProxyBody> {
    let mut response = error(status);
    response.headers_mut().insert(hyper::header::CONNECTION, HeaderValue::from_static("close"));
    let sent = response_head_bytes(&response) + response.body().size_hint().exact().unwrap_or(0);
    let bytes = (received_bytes(request), sent);
    refused_with(frontend, connection, status.as_u16(), bytes, Some(request));
    response
}

/// `refused`, with the request when there is one to log.
fn refused_with<B>(
    frontend: &Frontend,
    connection: &ConnectionInfo,
    status: u16,
    (received, sent): (u64, u64),
    request: Option<&Request<B>>,
) {
    let context = frontend.context.load();
    let observe = &context.observe;
    observe.stats.response(status, true);
    observe.stats.bytes(received + sent);
    let Some(log) = &observe.log else { return };
    let now = since_epoch();
    let kind = if connection.tls.is_some() { "https" } else { "http" };
    let (default_host, port) = (context.default_host.as_bytes(), context.forwarded_port.as_bytes());
    let trace_id = access_log::TraceId::new(now.as_secs());
    let head = request.map(|it| RequestHead::of(it, connection, default_host, port, trace_id));
    let unparsed = format!("- {kind}://{}:{}- -", context.default_host, context.port);
    let entry = access_log::Entry {
        kind,
        time: now,
        connection: connection.text(&observe.elb),
        target: None,
        request_processing: None,
        target_processing: None,
        response_processing: None,
        elb_status: status,
        target_status: None,
        received_bytes: received,
        sent_bytes: sent,
        request: head.as_ref().map_or(unparsed.as_bytes(), RequestHead::request),
        user_agent: head.as_ref().map_or(&b""[..], RequestHead::user_agent),
        target_group_arn: None,
        trace_id,
        trace_header: head.as_ref().and_then(RequestHead::trace_header),
        matched_rule_priority: None,
        request_creation_time: now,
        actions: "-",
        redirect_url: None,
        error_reason: None,
    };
    log.append_with(|out| entry.write_to(out));
}

/// The wall-clock time now, since the Unix epoch.
fn since_epoch() -> Duration {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default()
}

/// The size of a request: its request line and headers (as sent over
/// HTTP/1.1), and its body's declared length.
fn received_bytes<B>(request: &Request<B>) -> u64 {
    let head: usize = request.headers().iter().map(|(name, value)| name.as_str().len() + value.len() + 4).sum();
    let line = request.method().as_str().len() + request.uri().path_and_query().map_or(1, |it| it.as_str().len()) + 12;
    let body = request
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|it| it.to_str().ok()?.parse::<u64>().ok())
        .unwrap_or(0);
    (line + head + 2) as u64 + body
}

fn is_grpc(headers: &HeaderMap) -> bool {
    headers.get(CONTENT_TYPE).is_some_and(|it| it.as_bytes().starts_with(b"application/grpc"))
}

/// The size of a response's status line and headers.
fn response_head_bytes(response: &Response<ProxyBody>) -> u64 {
    let head: usize = response.headers().iter().map(|(name, value)| name.as_str().len() + value.len() + 4).sum();
    let fields = response.body().fields.as_ref().map_or(0, |it| {
        // `content-length: N` CRLF, when the client server writes it.
        let length = it.content_length.map_or(0, |length| 18 + itoa::Buffer::new().format(length).len());
        it.lines.len() + length
    });
    (17 + head + fields + 2) as u64
}

/// Routes a request and forwards or answers it, noting in `trace` what
/// happened.
async fn route(
    frontend: &Frontend,
    request: Request<UpstreamBody>,
    peer: SocketAddr,
    trace_id: access_log::TraceId,
    trace: &mut Trace,
) -> Response<ProxyBody> {
    let client_ip = peer.ip().to_canonical();
    // Route under the context snapshot, then let it go before any await.
    let (group, idle_timeout, forwarded_port, protocol) = {
        let context = frontend.context.load();
        let view = RequestView::new(&request, client_ip);
        let (priority, action) = context.router.route_with_priority(&view);
        trace.priority = Some(priority);
        let group = match action {
            Action::Forward(group) => group.clone(),
            Action::Weighted(weighted) => match weighted.pick() {
                Some(group) => group.clone(),
                None => {
                    trace.actions = "forward";
                    let failure = Failure::new(&request, peer, "-", "-");
                    return failure.answer(StatusCode::SERVICE_UNAVAILABLE, "every weight of the forward is 0");
                }
            },
            Action::Fixed(fixed) => {
                trace.actions = "fixed-response";
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
                trace.actions = "redirect";
                let url = redirect.location(&source);
                let Ok(location) = HeaderValue::try_from(url.as_str()) else {
                    return error(StatusCode::BAD_REQUEST);
                };
                trace.redirect = Some(url);
                let mut response = Response::new(ProxyBody::empty());
                *response.status_mut() = redirect.status;
                response.headers_mut().insert(LOCATION, location);
                return response;
            }
        };
        (group, context.idle_timeout, context.forwarded_port.clone(), context.protocol)
    };
    trace.actions = "forward";
    trace.group = Some(group.clone());
    // Another load balancer's health check is not a client request.
    trace.health_check = request.headers().get(USER_AGENT).is_some_and(|it| it.as_bytes() == HEALTH_CHECKER);
    let Some((backend, mut sticky_cookie)) = group.select_with(request.headers()) else {
        let failure = Failure::new(&request, peer, &group.name, "-");
        return failure.answer(StatusCode::SERVICE_UNAVAILABLE, "no registered target is routable");
    };
    let transport = group.transport();
    let mut in_flight = InFlight::start_request(backend, trace.health_check);
    if tunnel::asks(&request) && !transport.http2 && in_flight.function.is_none() {
        let forwarding = Forwarding { client_ip, protocol, port: forwarded_port, trace_id };
        let sending = Sending { group: &group, in_flight, transport, idle_timeout, peer, sticky_cookie };
        return upgrade_boxed(frontend, request, sending, forwarding, trace).await;
    }

    let (mut parts, body) = request.into_parts();
    if parts.version == Version::HTTP_2 && !transport.http2 {
        forwarding::join_cookies(&mut parts.headers);
    }
    let forwarding = Forwarding { client_ip, protocol, port: forwarded_port, trace_id };
    // The common case, a bodiless request to a plain HTTP/1.1 target: its
    // head is lent to each attempt (a retry needs no copy of it) and the
    // forwarding headers are written as it goes out; the map stays as the
    // client sent it.
    let lent = !transport.tls && !transport.http2 && in_flight.function.is_none() && body.is_end_stream();
    if !lent {
        // HTTP/2 targets get `te: trailers` through when the client sent it (gRPC requires it).
        let te_trailers = transport.http2 && upstream::asks_for_trailers(parts.headers.get(TE));
        forwarding::prepare(&mut parts.headers, &parts.uri, &forwarding);
        if te_trailers {
            parts.headers.insert(TE, HeaderValue::from_static("trailers"));
        }
    }
    if let Some(function) = &in_flight.function {
        trace.sent = Some(Instant::now());
        let (response, failed) = match invoke_boxed(function, parts, body, idle_timeout).await {
            Ok(answer) => answer,
            Err((method, path)) => {
                let failure = Failure { method, path, peer, group: group.name.clone(), target: in_flight.describe() };
                return unanswered(failure, Ok(Silent::Client), idle_timeout);
            }
        };
        let response = response.map(ProxyBody::full);
        trace.answered(&group, failed.is_none().then(|| response.status().as_u16()));
        trace.error_reason = failed;
        return with_sticky_cookie(response, sticky_cookie);
    }
    parts.version = Version::HTTP_11;
    // What an error answer's log line names; cheap (reference counts).
    let (method, path) = (parts.method.clone(), parts.uri.path_and_query().cloned());
    let sent_at = Instant::now();
    let deadline = sent_at + idle_timeout;
    trace.sent = Some(sent_at);
    trace.target = Some(in_flight.backend());
    let answer = if lent {
        let sent = frontend.upstream.send_head(in_flight.endpoint(), &parts, &forwarding);
        let mut answer = tokio::time::timeout_at(deadline, sent).await.map_err(|_| Silent::Target);
        // A target that died under the request: once more on another one (`retry`).
        if let Ok(Err(err)) = &answer {
            let idempotent = Some(retry::is_idempotent(&parts.method));
            if let Some(other) = retry::second_target(&group, &in_flight, err, idempotent) {
                retarget(&group, &mut in_flight, other, trace, &mut sticky_cookie);
                let again = frontend.upstream.send_head(in_flight.endpoint(), &parts, &forwarding);
                answer = tokio::time::timeout_at(deadline, again).await.map_err(|_| Silent::Target);
            }
        }
        answer
    } else {
        parts.uri = match to_target(std::mem::take(&mut parts.uri), &in_flight) {
            Some(uri) => uri,
            None => return error(StatusCode::BAD_REQUEST),
        };
        // Every other request hands its head over, a copy kept for a retry
        // when it has no body.
        let replay = Replay::capture(&parts, &body);
        let request = Request::from_parts(parts, body);
        let mut answer =
            send_boxed(&frontend.upstream, transport, in_flight.endpoint(), request, sent_at, idle_timeout).await;
        if let Ok(Err(err)) = &answer {
            if let Some((other, request)) = retry::second_attempt(&group, &in_flight, err, replay) {
                retarget(&group, &mut in_flight, other, trace, &mut sticky_cookie);
                answer =
                    send_boxed(&frontend.upstream, transport, in_flight.endpoint(), request, sent_at, idle_timeout)
                        .await;
            }
        }
        answer
    };
    let failure = || Failure { method, path, peer, group: group.name.clone(), target: in_flight.describe() };
    let exchange = match answer {
        Ok(Ok(exchange)) => exchange,
        Ok(Err(err)) => return unanswered(failure(), Err(err), idle_timeout),
        Err(silent) => return unanswered(failure(), Ok(silent), idle_timeout),
    };
    trace.answered(&group, Some(exchange.response.status().as_u16()));
    let (mut parts, body) = exchange.response.into_parts();
    // The target's HTTP version is its connection's, not the
    // client's: both servers answer an HTTP/1.1 client in HTTP/1.1
    // (hyper's answers an HTTP/1.0 client in HTTP/1.0 whatever this says).
    parts.version = Version::HTTP_11;
    let body = ProxyBody::upstream(body, in_flight, exchange.fields);
    with_sticky_cookie(Response::from_parts(parts, body), sticky_cookie)
}

/// The answer a target (`send` of the upstream) gives `request`, waited
/// for until the idle timeout passes without data: from the sending, or
/// from the client body's last data while one is still coming (an upload
/// takes as long as it keeps sending; one that stops gets 408). Boxed and
/// out of line, as every path but the common one: the request's future is
/// moved whole into hyper's connection, so its size is paid per request,
/// and the common path's code stays small enough to be inlined.
#[inline(never)]
fn send_boxed<'a>(
    upstream: &'a Upstream,
    transport: upstream::Transport,
    endpoint: upstream::Endpoint<'a>,
    mut request: Request<UpstreamBody>,
    sent_at: Instant,
    idle_timeout: Duration,
) -> Boxed<'a, Result<Result<upstream::Exchange, upstream::UpstreamError>, Silent>> {
    let progress = client_body::watch(request.body_mut());
    Box::pin(async move {
        let sent = upstream.send(transport, endpoint, request);
        client_body::within_idle(sent, sent_at, idle_timeout, progress.as_deref()).await
    })
}

/// A function target's answer and why it failed (`lambda::invoke`),
/// unless the client stops sending the request's body for the idle timeout
/// first: then the request's method and path, for the 408's log line.
/// Boxed and out of line, as `send_boxed`.
#[inline(never)]
fn invoke_boxed<'a>(
    function: &'a lambda::Function,
    parts: hyper::http::request::Parts,
    mut body: UpstreamBody,
    idle_timeout: Duration,
) -> Boxed<'a, Result<LambdaAnswer, (Method, Option<PathAndQuery>)>> {
    let progress = client_body::watch(&mut body);
    let (method, path) = (parts.method.clone(), parts.uri.path_and_query().cloned());
    let invocation = client_body::unless_stalled(lambda::invoke(function, parts, body), progress, idle_timeout);
    Box::pin(async move { invocation.await.map_err(|_| (method, path)) })
}

/// A function target's response, and why it failed (AWS's error reason).
type LambdaAnswer = (Response<Bytes>, Option<&'static str>);

/// A future made out of line, boxed (the rare paths of `route`).
type Boxed<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The answer to a request its target did not answer: 504 when the
/// target was silent for the idle timeout, 408 when the client's body
/// stopped for it with more to come (AWS: the client sent no data), 400
/// when the client's body broke off or was malformed (its fault, not the
/// target's), else 502. Out of line: the common path stays small.
#[cold]
#[inline(never)]
fn unanswered(
    failure: Failure,
    why: Result<Silent, upstream::UpstreamError>,
    idle_timeout: Duration,
) -> Response<ProxyBody> {
    let idle = lbctl_spec::Duration(idle_timeout);
    match why {
        Ok(Silent::Target) => {
            let why = format!("the target did not answer within the idle timeout ({idle})");
            failure.answer(StatusCode::GATEWAY_TIMEOUT, &why)
        }
        Ok(Silent::Client) => {
            let why = format!("the client sent no more of its request body within the idle timeout ({idle})");
            let mut response = failure.answer(StatusCode::REQUEST_TIMEOUT, &why);
            // The rest of its body will not be read: the connection ends.
            response.headers_mut().insert(hyper::header::CONNECTION, HeaderValue::from_static("close"));
            response
        }
        Err(err) if err.is_client_body() => {
            failure.answer(StatusCode::BAD_REQUEST, &format!("the client's request body failed: {err}"))
        }
        Err(err) => failure.answer(StatusCode::BAD_GATEWAY, &format!("{err}")),
    }
}

/// `uri` as hyper's client sends it to the target of `in_flight`:
/// absolute, with the target's address (its connector speaks TLS where the
/// group does, whatever the scheme says).
fn to_target(uri: Uri, in_flight: &InFlight) -> Option<Uri> {
    let mut uri = uri.into_parts();
    uri.scheme = Some(Scheme::HTTP);
    uri.authority = Some(in_flight.authority.clone());
    if uri.path_and_query.is_none() {
        uri.path_and_query = Some(PathAndQuery::from_static("/"));
    }
    Uri::from_parts(uri).ok()
}

/// Where a request goes once routed: its target group and target, how
/// the target is spoken to, and for how long it may be silent.
struct Sending<'a> {
    group: &'a TargetGroup,
    in_flight: InFlight,
    transport: upstream::Transport,
    idle_timeout: Duration,
    peer: SocketAddr,
    /// The stickiness cookie for the answer, when the group sets one.
    sticky_cookie: Option<HeaderValue>,
}

/// `upgrade`'s future, made out of line: the rare path adds nothing to the
/// size or the code of the common one's.
#[inline(never)]
fn upgrade_boxed<'a>(
    frontend: &'a Frontend,
    request: Request<UpstreamBody>,
    sending: Sending<'a>,
    forwarding: Forwarding,
    trace: &'a mut Trace,
) -> Boxed<'a, Response<ProxyBody>> {
    Box::pin(upgrade(frontend, request, sending, forwarding, trace))
}

/// A request to switch protocols (WebSocket): sent with its `Upgrade` on a
/// target connection of its own; a 101 answer hands both connections to
/// `tunnel`, any other answer goes back as usual.
async fn upgrade(
    frontend: &Frontend,
    mut request: Request<UpstreamBody>,
    sending: Sending<'_>,
    forwarding: Forwarding,
    trace: &mut Trace,
) -> Response<ProxyBody> {
    let Sending { group, in_flight, transport, idle_timeout, peer, sticky_cookie } = sending;
    let client = hyper::upgrade::on(&mut request);
    let (mut parts, body) = request.into_parts();
    let asked = parts.headers.get(hyper::header::UPGRADE).cloned();
    forwarding::prepare(&mut parts.headers, &parts.uri, &forwarding);
    if let Some(asked) = asked {
        tunnel::keep_upgrade(&mut parts.headers, asked);
    }
    let (method, path) = (parts.method.clone(), parts.uri.path_and_query().cloned());
    parts.uri = match to_target(std::mem::take(&mut parts.uri), &in_flight) {
        Some(uri) => uri,
        None => return error(StatusCode::BAD_REQUEST),
    };
    trace.sent = Some(Instant::now());
    trace.target = Some(in_flight.backend());
    let sent = frontend.upstream.send_upgrade(transport, in_flight.endpoint(), Request::from_parts(parts, body));
    let answer = tokio::time::timeout(idle_timeout, sent).await;
    let failure = || Failure { method, path, peer, group: group.name.clone(), target: in_flight.describe() };
    let mut response = match answer {
        Ok(Ok(response)) => response,
        Ok(Err(err)) => return unanswered(failure(), Err(err), idle_timeout),
        Err(_) => return unanswered(failure(), Ok(Silent::Target), idle_timeout),
    };
    trace.answered(group, Some(response.status().as_u16()));
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        let upgraded = hyper::upgrade::on(&mut response);
        // The target's head as it is, its `Upgrade` and `Connection` with it.
        let answer = Response::from_parts(response.into_parts().0, ProxyBody::empty());
        tunnel::spawn(client, upgraded, idle_timeout, in_flight);
        return with_sticky_cookie(answer, sticky_cookie);
    }
    forwarding::remove_hop_by_hop(response.headers_mut());
    let (mut parts, body) = response.into_parts();
    parts.version = Version::HTTP_11;
    let body = TargetBody::Hyper { body, connection: None };
    with_sticky_cookie(Response::from_parts(parts, ProxyBody::upstream(body, in_flight, None)), sticky_cookie)
}

/// A second attempt goes to `other`: the log line names it, and a
/// stickiness cookie (when one is set) sticks to it.
fn retarget(
    group: &TargetGroup,
    in_flight: &mut InFlight,
    other: InFlight,
    trace: &mut Trace,
    sticky_cookie: &mut Option<HeaderValue>,
) {
    *in_flight = other;
    trace.target = Some(in_flight.backend());
    *sticky_cookie = sticky_cookie.take().and_then(|_| group.sticky_cookie_for(in_flight));
}

/// Adds the stickiness cookie (when the target group has stickiness on) to
/// a target's response.
fn with_sticky_cookie(mut response: Response<ProxyBody>, cookie: Option<HeaderValue>) -> Response<ProxyBody> {
    if let Some(cookie) = cookie {
        response.headers_mut().append(SET_COOKIE, cookie);
    }
    response
}

/// A request the load balancer answers with an error of its own (408, 502,
/// 503, 504): what the log line says of it.
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
    let body = match status {
        StatusCode::BAD_REQUEST => Bytes::from_static(b"400 Bad Request\n"),
        StatusCode::BAD_GATEWAY => Bytes::from_static(b"502 Bad Gateway\n"),
        StatusCode::SERVICE_UNAVAILABLE => Bytes::from_static(b"503 Service Unavailable\n"),
        StatusCode::GATEWAY_TIMEOUT => Bytes::from_static(b"504 Gateway Timeout\n"),
        TOO_MANY_FORWARDED_ADDRESSES => Bytes::from_static(b"463 Too many addresses in X-Forwarded-For (30 at most)\n"),
        other => Bytes::from(format!("{} {}\n", other.as_u16(), other.canonical_reason().unwrap_or("Error"))),
    };
    let mut response = Response::new(ProxyBody::full(body));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}

/// A response body: a target's, streamed while counting the request as in
/// flight, or one the load balancer made.
pub struct ProxyBody {
    kind: BodyKind,
    /// The load balancer's counters: bytes sent and received are added
    /// when the body is done.
    stats: Option<Arc<LbStats>>,
    /// Bytes of the request.
    received: u64,
    /// Bytes of the body sent so far.
    sent: u64,
    /// The access-log line, written once the body is sent (with its size
    /// and time).
    log: Option<Box<PendingLine>>,
    /// A target's response fields as it wrote them, when `h1_client` read
    /// the response: they go out after the response's header map (which
    /// then holds only what the load balancer adds).
    fields: Option<Fields>,
}

enum BodyKind {
    Full(Option<Bytes>),
    /// A target's body; its connection goes back to the target's pool
    /// once the last frame is read (a body dropped early closes it instead).
    Upstream {
        body: TargetBody,
        in_flight: InFlight,
    },
}

impl ProxyBody {
    fn new(kind: BodyKind) -> ProxyBody {
        ProxyBody { kind, stats: None, received: 0, sent: 0, log: None, fields: None }
    }

    pub(super) fn full(bytes: Bytes) -> ProxyBody {
        ProxyBody::new(BodyKind::Full(if bytes.is_empty() { None } else { Some(bytes) }))
    }

    fn empty() -> ProxyBody {
        ProxyBody::new(BodyKind::Full(None))
    }

    fn upstream(mut body: TargetBody, in_flight: InFlight, fields: Option<Fields>) -> ProxyBody {
        // An empty body (204, HEAD) may never be polled: its connection is free now.
        if body.is_end_stream() {
            body.release_to(&in_flight.h1);
        }
        let mut proxied = ProxyBody::new(BodyKind::Upstream { body, in_flight });
        proxied.fields = fields;
        proxied
    }

    /// The target's response fields, when they are not in the response's
    /// header map (once).
    pub(super) fn take_fields(&mut self) -> Option<Fields> {
        self.fields.take()
    }

    fn poll_kind(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.kind {
            BodyKind::Full(bytes) => Poll::Ready(bytes.take().map(|it| Ok(Frame::data(it)))),
            BodyKind::Upstream { body, in_flight } => {
                let frame = Pin::new(&mut *body).poll_frame(cx);
                let ended = match &frame {
                    Poll::Ready(None) => true,
                    Poll::Ready(Some(Ok(_))) => body.is_end_stream(),
                    _ => false,
                };
                if ended {
                    body.release_to(&in_flight.h1);
                }
                frame
            }
        }
    }
}

impl Drop for ProxyBody {
    /// The response is done (sent, or given up by the client): its bytes
    /// are counted and its log line written.
    fn drop(&mut self) {
        if let Some(stats) = &self.stats {
            stats.bytes(self.received + self.sent);
        }
        if let Some(line) = self.log.take() {
            line.write(self.sent);
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let frame = this.poll_kind(cx);
        if let Poll::Ready(Some(Ok(frame))) = &frame {
            if let Some(data) = frame.data_ref() {
                this.sent += data.len() as u64;
            }
        }
        frame
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
    fn a_host_is_host_and_port_and_one_only() {
        for good in ["shop.example.com", "shop.example.com:8080", "127.0.0.1:80", "[::1]:8080", "[::1]", "a_b.c~d", ""]
        {
            assert!(valid_host(good.as_bytes()), "{good:?}");
        }
        for bad in ["a b", "user@a", "a:notaport", "[::1", "[]", "evil.example/x?", "a\"b", "[::1]x"] {
            assert!(!valid_host(bad.as_bytes()), "{bad:?}");
        }
        let request = |version: Version, uri: &str, hosts: &[&str]| {
            let mut builder = Request::builder().version(version).uri(uri);
            for host in hosts {
                builder = builder.header(HOST, *host);
            }
            builder.body(()).unwrap()
        };
        let h2 = Version::HTTP_2;
        assert_eq!(refusal(&request(h2, "http://shop.example/", &[])), None);
        assert_eq!(refusal(&request(h2, "http://shop.example/", &["SHOP.example"])), None);
        assert_eq!(refusal(&request(h2, "https://shop.example/", &["shop.example:443"])), None);
        assert_eq!(refusal(&request(h2, "http://[::1]:8080/", &["[::1]:8080"])), None);
        assert_eq!(
            refusal(&request(h2, "http://shop.example:8080/", &["shop.example:8081"])),
            Some(StatusCode::BAD_REQUEST)
        );
        // HTTP/2: a Host naming another than `:authority`, or two, are malformed (RFC 9113 §8.3.1).
        assert_eq!(
            refusal(&request(h2, "http://shop.example/", &["elsewhere.example"])),
            Some(StatusCode::BAD_REQUEST)
        );
        assert_eq!(refusal(&request(h2, "/", &["a", "b"])), Some(StatusCode::BAD_REQUEST));
        assert_eq!(refusal(&request(Version::HTTP_11, "/", &["a b"])), Some(StatusCode::BAD_REQUEST));
        assert_eq!(refusal(&request(Version::HTTP_11, "/", &["a"])), None);
    }

    #[test]
    fn the_logged_request_line_escapes_what_the_client_wrote() {
        let head = |request: Request<()>| {
            let connection = ConnectionInfo::new(([127, 0, 0, 1], 9).into(), None, String::new());
            let trace_id = access_log::TraceId::of(0x6789_1233, (0, 3));
            RequestHead::of(&request, &connection, b"public.shop.elb.localhost", b"8080", trace_id)
        };
        let line = |request: Request<()>| String::from_utf8(head(request).request().to_vec()).unwrap();
        // A path cannot hold a quote or a backslash (hyper refuses them); a Host can.
        let request = Request::get("/a?b=c").header(HOST, "\"shop\\x:8080").body(()).unwrap();
        assert_eq!(line(request), "GET http://\\\"shop\\\\x:8080/a?b=c HTTP/1.1");
        let request = Request::get("http://h2.example:443").version(Version::HTTP_2).body(()).unwrap();
        assert_eq!(line(request), "GET http://h2.example:443/ HTTP/2.0");
        // The first of repeated fields, as a lookup by name gives.
        let request = Request::get("/")
            .header(USER_AGENT, "curl/8.0")
            .header(HOST, "first")
            .header(HOST, "second")
            .header(USER_AGENT, "other")
            .body(())
            .unwrap();
        let first = head(request);
        assert_eq!((first.request(), first.user_agent()), (&b"GET http://first:8080/ HTTP/1.1"[..], &b"curl/8.0"[..]));
        // A User-Agent to escape, after a request line with nothing to.
        let request = Request::get("/").header(HOST, "h").header(USER_AGENT, "a \"b\"").body(()).unwrap();
        let quoted = head(request);
        assert_eq!((quoted.request(), quoted.user_agent()), (&b"GET http://h:8080/ HTTP/1.1"[..], &b"a \\\"b\\\""[..]));
        assert_eq!(quoted.trace_header(), None);
        // The client's trace: the line has the one sent on, escaped.
        let request = Request::get("/")
            .header(HOST, "h")
            .header("x-amzn-trace-id", "Root=1-67891200-abcdef012345678912345678;Note=\"x\"")
            .header(USER_AGENT, "curl/8.0")
            .body(())
            .unwrap();
        let traced = head(request);
        assert_eq!(traced.user_agent(), b"curl/8.0");
        let sent = "Self=1-67891233-000000000000000000000003;Root=1-67891200-abcdef012345678912345678;Note=\\\"x\\\"";
        assert_eq!(traced.trace_header(), Some(sent.as_bytes()));
        // One that `Connection` names is not sent on: the line has the Root.
        let request = Request::get("/")
            .header(HOST, "h")
            .header("connection", "x-amzn-trace-id")
            .header("x-amzn-trace-id", "Root=1-67891200-abcdef012345678912345678")
            .body(())
            .unwrap();
        assert_eq!(head(request).trace_header(), None);
        // Bytes past ASCII in a field are escaped, not dropped.
        let request = Request::get("/").header(HOST, &b"caf\xc3\xa9"[..]).body(()).unwrap();
        assert_eq!(line(request), "GET http://caf\\xc3\\xa9:8080/ HTTP/1.1");
        // No Host (HTTP/1.0): the load balancer's name; IPv6 hosts with and without a port.
        let request = Request::get("/old").version(Version::HTTP_10).body(()).unwrap();
        assert_eq!(line(request), "GET http://public.shop.elb.localhost:8080/old HTTP/1.0");
        let request = Request::get("/").header(HOST, "[::1]").body(()).unwrap();
        assert_eq!(line(request), "GET http://[::1]:8080/ HTTP/1.1");
        let request = Request::get("/").header(HOST, "[::1]:9000").body(()).unwrap();
        assert_eq!(line(request), "GET http://[::1]:9000/ HTTP/1.1");
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
