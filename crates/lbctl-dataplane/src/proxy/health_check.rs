//! Target health checks: the probes and the per-target state machine.
//!
//! A probe is an HTTP GET of the check path (the status must satisfy the
//! matcher), over HTTP/1.1 or HTTP/2 as the group speaks to its targets, a
//! gRPC call (the `grpc-status` must satisfy the matcher), or a TCP connect,
//! within the check's timeout. HTTPS checks make the same requests over TLS. Its outcomes feed a
//! `Tracker`, which flips a target's state only after enough agreeing
//! results in a row: `healthy_threshold` successes to become healthy,
//! `unhealthy_threshold` failures to become unhealthy, as AWS does.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE, TE, USER_AGENT};
use hyper::{HeaderMap, Method, Request, Response, StatusCode, Version};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use lbctl_spec::{HealthCheckPort, HealthCheckProtocol, ProtocolVersion, TargetProtocol};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::AbortOnDrop;
use crate::runtime::HealthState;
use crate::tls::{self, ClientAlpn};

/// Reason of a target that has not been checked enough yet.
pub const REASON_INITIAL: &str = "Elb.RegistrationInProgress: target registration is in progress";
/// AWS's reason once a new target's first checks are under way.
pub const REASON_INITIAL_CHECKS: &str = "Elb.InitialHealthChecking: initial health checks in progress";
/// Reason of a deregistered target finishing its requests.
pub const REASON_DRAINING: &str = "Target.DeregistrationInProgress: target deregistration is in progress";

/// What a probe asks, and what counts as success.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// An HTTP/1.1 GET of `path`; success when the status is in one of the ranges.
    Http {
        /// Path (and query) to request.
        path: String,
        /// Inclusive status code ranges counted as success.
        matcher: Vec<(u16, u16)>,
    },
    /// The same over HTTP/2 (`protocol_version: HTTP2` groups: their
    /// targets are only known to speak HTTP/2).
    Http2 {
        /// Path (and query) to request.
        path: String,
        /// Inclusive status code ranges counted as success.
        matcher: Vec<(u16, u16)>,
    },
    /// A gRPC call of `path` with an empty message (`GRPC` groups); success
    /// when the `grpc-status` the target answers is in one of the ranges.
    Grpc {
        /// The method, `/package.Service/Method`.
        path: String,
        /// Inclusive gRPC status code ranges counted as success.
        matcher: Vec<(u16, u16)>,
    },
    /// Connect; success when the connection is accepted.
    Tcp,
}

/// A target group's health check settings, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    /// The probe.
    pub probe: Probe,
    /// Whether the probe runs over TLS (`protocol: HTTPS`; the target's
    /// certificate is not verified, as AWS does not).
    pub tls: bool,
    /// A fixed port, or `None` for the target's traffic port.
    pub port: Option<u16>,
    /// Time between probes.
    pub interval: Duration,
    /// Time a probe may take.
    pub timeout: Duration,
    /// Consecutive successes to become healthy.
    pub healthy_threshold: u32,
    /// Consecutive failures to become unhealthy.
    pub unhealthy_threshold: u32,
    /// Whether each probe connection starts with a PROXY protocol v2
    /// `LOCAL` header (no client address), as AWS sends to targets of a
    /// group with `proxy_protocol_v2` on: such targets expect one on every
    /// connection.
    pub proxy_protocol: bool,
}

impl HealthCheck {
    /// The health check of a target group's effective settings: HTTP(S)
    /// checks speak the group's HTTP version, `GRPC` groups get gRPC checks
    /// (the settings carry AWS's defaults for them). A check protocol
    /// missing from a file of an older release is the group's (HTTP for
    /// `alb` groups, TCP for TCP and UDP ones).
    pub fn of(group: &lbctl_spec::settings::TargetGroup) -> HealthCheck {
        let settings = &group.health_check;
        let protocol = settings.protocol.unwrap_or(match group.protocol {
            // An ALB as a target is checked through its HTTP listener (AWS).
            _ if group.target_type == lbctl_spec::TargetType::Alb => HealthCheckProtocol::Http,
            TargetProtocol::Http => HealthCheckProtocol::Http,
            TargetProtocol::Https => HealthCheckProtocol::Https,
            TargetProtocol::Tcp | TargetProtocol::Udp => HealthCheckProtocol::Tcp,
        });
        // Validation rejects a bad matcher; should one get here, AWS's default applies.
        let matcher = lbctl_spec::health_check_matcher(group).unwrap_or_else(|_| match group.version() {
            ProtocolVersion::Grpc => vec![(12, 12)],
            ProtocolVersion::Http1 | ProtocolVersion::Http2 => vec![(200, 200)],
        });
        let matcher = if matcher.is_empty() { vec![(200, 399)] } else { matcher };
        let default_path = if group.version() == ProtocolVersion::Grpc { GRPC_DEFAULT_PATH } else { "/" };
        let path = match settings.path.as_deref().unwrap_or(default_path) {
            path if path.starts_with('/') => path.to_string(),
            path => format!("/{path}"),
        };
        let probe = match (protocol, group.version()) {
            (HealthCheckProtocol::Tcp, _) => Probe::Tcp,
            (_, ProtocolVersion::Http1) => Probe::Http { path, matcher },
            (_, ProtocolVersion::Http2) => Probe::Http2 { path, matcher },
            (_, ProtocolVersion::Grpc) => Probe::Grpc { path, matcher },
        };
        HealthCheck {
            probe,
            tls: protocol == HealthCheckProtocol::Https,
            port: match settings.port {
                HealthCheckPort::Number(port) => Some(port),
                HealthCheckPort::Named(_) => None,
            },
            interval: settings.interval.get().max(Duration::from_millis(10)),
            timeout: settings.timeout.get().max(Duration::from_millis(1)),
            healthy_threshold: settings.healthy_threshold.max(1),
            unhealthy_threshold: settings.unhealthy_threshold.max(1),
            proxy_protocol: group.proxy_protocol_v2,
        }
    }
}

/// A PROXY protocol v2 `LOCAL` header: a connection of the load balancer's
/// own, with no client address.
fn local_proxy_header() -> Vec<u8> {
    use ppp::v2::{Addresses, Builder, Command, Protocol, Version};
    Builder::with_addresses(Version::Two | Command::Local, Protocol::Unspecified, Addresses::Unspecified)
        .build()
        .expect("a header without addresses fits")
}

/// AWS's default gRPC health check method: one no service has, so a live
/// gRPC server answers `12` (unimplemented), AWS's default matcher.
pub const GRPC_DEFAULT_PATH: &str = lbctl_spec::settings::GRPC_HEALTH_CHECK_PATH;

/// The result of one probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The target passed.
    Pass,
    /// The target failed, with an AWS-style reason.
    Fail(String),
}

/// Probes the target at `ip` (traffic port `port`) once.
pub async fn probe(check: &HealthCheck, ip: Ipv4Addr, port: u16) -> Outcome {
    let addr = SocketAddr::from((ip, check.port.unwrap_or(port)));
    let attempt = async {
        let mut stream = TcpStream::connect(addr).await.map_err(|err| failed(&err))?;
        if check.proxy_protocol {
            stream.write_all(&local_proxy_header()).await.map_err(|err| failed(&err))?;
        }
        if check.probe == Probe::Tcp {
            return Ok(());
        }
        if check.tls {
            let alpn = match check.probe {
                Probe::Http { .. } => ClientAlpn::Http1,
                _ => ClientAlpn::Http2,
            };
            let connector = tokio_rustls::TlsConnector::from(tls::client_config(alpn));
            let stream = connector
                .connect(tls::target_server_name(ip), stream)
                .await
                .map_err(|err| format!("Target.FailedHealthChecks: TLS handshake failed: {err}"))?;
            exchange(&check.probe, stream, addr, true).await
        } else {
            exchange(&check.probe, stream, addr, false).await
        }
    };
    match tokio::time::timeout(check.timeout, attempt).await {
        Ok(Ok(())) => Outcome::Pass,
        Ok(Err(reason)) => Outcome::Fail(reason),
        Err(_) => Outcome::Fail(format!(
            "Target.Timeout: health check timed out after {}",
            lbctl_spec::Duration(check.timeout)
        )),
    }
}

/// Runs an HTTP(S) or gRPC probe on a connected stream.
async fn exchange<S>(probe: &Probe, mut stream: S, addr: SocketAddr, tls: bool) -> Result<(), String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let in_ranges =
        |matcher: &[(u16, u16)], code: u16| matcher.iter().any(|(low, high)| (*low..=*high).contains(&code));
    match probe {
        Probe::Tcp => Ok(()),
        Probe::Http { path, matcher } => {
            let status = http_status(&mut stream, addr, path).await?;
            if in_ranges(matcher, status) {
                Ok(())
            } else {
                Err(format!("Target.ResponseCodeMismatch: health check returned {status}"))
            }
        }
        Probe::Http2 { path, matcher } => {
            let request = http2_request(Method::GET, addr, path, tls, Bytes::new())?;
            let (response, _connection) = http2_exchange(stream, request).await?;
            let status = response.status().as_u16();
            if in_ranges(matcher, status) {
                Ok(())
            } else {
                Err(format!("Target.ResponseCodeMismatch: health check returned {status}"))
            }
        }
        Probe::Grpc { path, matcher } => {
            // One length-prefixed message of zero bytes: an empty request
            // (`grpc.health.v1.HealthCheckRequest` asks about the whole server).
            let mut request = http2_request(Method::POST, addr, path, tls, Bytes::from_static(&[0; 5]))?;
            request.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
            request.headers_mut().insert(TE, HeaderValue::from_static("trailers"));
            let (response, _connection) = http2_exchange(stream, request).await?;
            let code = grpc_status(response).await?;
            if in_ranges(matcher, code) {
                Ok(())
            } else {
                Err(format!("Target.ResponseCodeMismatch: health check returned gRPC status {code}"))
            }
        }
    }
}

/// A health check request for HTTP/2 (absolute URI: `:scheme`, `:authority`, `:path`).
fn http2_request(
    method: Method,
    addr: SocketAddr,
    path: &str,
    tls: bool,
    body: Bytes,
) -> Result<Request<Full<Bytes>>, String> {
    let scheme = if tls { "https" } else { "http" };
    let mut request = Request::new(Full::new(body));
    *request.method_mut() = method;
    *request.version_mut() = Version::HTTP_2;
    *request.uri_mut() = format!("{scheme}://{addr}{path}")
        .parse()
        .map_err(|_| format!("Target.FailedHealthChecks: `{path}` is not a valid health check path"))?;
    request.headers_mut().insert(USER_AGENT, HeaderValue::from_static(USER_AGENT_VALUE));
    Ok(request)
}

/// Starts HTTP/2 on `stream` and sends `request`; the connection task is
/// returned so that it ends with the probe.
async fn http2_exchange<S>(
    stream: S,
    request: Request<Full<Bytes>>,
) -> Result<(Response<Incoming>, AbortOnDrop), String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let not_http2 =
        |err: hyper::Error| format!("Target.FailedHealthChecks: the target did not answer with HTTP/2: {err}");
    let (mut sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .handshake(TokioIo::new(stream))
        .await
        .map_err(not_http2)?;
    let connection = AbortOnDrop(tokio::spawn(async move {
        let _ = connection.await;
    }));
    let response = sender.send_request(request).await.map_err(not_http2)?;
    Ok((response, connection))
}

/// The `grpc-status` of a gRPC answer: in the headers of a trailers-only
/// answer, else in the trailers after the messages.
async fn grpc_status(response: Response<Incoming>) -> Result<u16, String> {
    let status = response.status();
    if status != StatusCode::OK {
        return Err(format!("Target.ResponseCodeMismatch: health check returned HTTP {}", status.as_u16()));
    }
    let parse = |headers: &HeaderMap| {
        headers.get("grpc-status").and_then(|it| it.to_str().ok()).and_then(|it| it.trim().parse::<u16>().ok())
    };
    if let Some(code) = parse(response.headers()) {
        return Ok(code);
    }
    let mut body = response.into_body();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|err| format!("Target.FailedHealthChecks: the gRPC answer broke off: {err}"))?;
        if let Some(code) = frame.trailers_ref().and_then(parse) {
            return Ok(code);
        }
    }
    Err("Target.FailedHealthChecks: the gRPC answer has no grpc-status".to_string())
}

/// The reason of a probe that failed with an I/O error.
fn failed(err: &std::io::Error) -> String {
    let what = match err.kind() {
        std::io::ErrorKind::ConnectionRefused => "connection refused".to_string(),
        std::io::ErrorKind::ConnectionReset => "connection reset".to_string(),
        _ => err.to_string(),
    };
    format!("Target.FailedHealthChecks: {what}")
}

/// The User-Agent of AWS's health checker.
pub const USER_AGENT_VALUE: &str = "ELB-HealthChecker/2.0";

/// Sends the check request and reads the status code of the answer.
async fn http_status<S>(stream: &mut S, addr: SocketAddr, path: &str) -> Result<u16, String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: {USER_AGENT_VALUE}\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.map_err(|err| failed(&err))?;
    stream.flush().await.map_err(|err| failed(&err))?;
    let mut head = [0u8; 64];
    let mut len = 0;
    // `HTTP/1.1 200` is 12 bytes; read until the status code is in.
    while len < 12 {
        match stream.read(&mut head[len..]).await {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(err) => return Err(failed(&err)),
        }
    }
    parse_status(&head[..len])
        .ok_or_else(|| "Target.FailedHealthChecks: the target did not answer with HTTP".to_string())
}

/// The status code of an HTTP/1 status line.
fn parse_status(head: &[u8]) -> Option<u16> {
    let rest = head.strip_prefix(b"HTTP/1.")?;
    let code = rest.get(2..5)?;
    if rest.get(1) != Some(&b' ') || !code.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(code).ok()?.parse().ok()
}

/// One target's health: its state, the reason, and the current run of
/// agreeing results.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tracker {
    state: HealthState,
    reason: String,
    successes: u32,
    failures: u32,
}

impl Default for Tracker {
    fn default() -> Self {
        Tracker { state: HealthState::Initial, reason: REASON_INITIAL.to_string(), successes: 0, failures: 0 }
    }
}

/// What recording a probe outcome changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Nothing visible.
    None,
    /// The reason changed, not the state.
    Reason,
    /// The state flipped.
    State,
}

impl Tracker {
    /// The current state.
    pub fn state(&self) -> HealthState {
        self.state
    }

    /// The current reason (empty while healthy).
    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// Records a probe outcome and applies the thresholds.
    pub fn record(&mut self, outcome: &Outcome, check: &HealthCheck) -> Change {
        let change = self.apply(outcome, check);
        // A new target, checked once and still short of a verdict: AWS's
        // registration is over, its initial checks are under way.
        if change == Change::None && self.state == HealthState::Initial && self.reason == REASON_INITIAL {
            self.reason = REASON_INITIAL_CHECKS.to_string();
            return Change::Reason;
        }
        change
    }

    fn apply(&mut self, outcome: &Outcome, check: &HealthCheck) -> Change {
        match outcome {
            Outcome::Pass => {
                self.failures = 0;
                self.successes = self.successes.saturating_add(1);
                if self.state != HealthState::Healthy && self.successes >= check.healthy_threshold {
                    self.state = HealthState::Healthy;
                    self.reason.clear();
                    return Change::State;
                }
                Change::None
            }
            Outcome::Fail(reason) => {
                self.successes = 0;
                self.failures = self.failures.saturating_add(1);
                match self.state {
                    HealthState::Unhealthy if self.reason != *reason => {
                        self.reason.clone_from(reason);
                        Change::Reason
                    }
                    HealthState::Initial | HealthState::Healthy if self.failures >= check.unhealthy_threshold => {
                        self.state = HealthState::Unhealthy;
                        self.reason.clone_from(reason);
                        Change::State
                    }
                    _ => Change::None,
                }
            }
        }
    }

    /// Marks the target deregistered.
    pub fn drain(&mut self) {
        self.state = HealthState::Draining;
        self.reason = REASON_DRAINING.to_string();
        self.successes = 0;
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_settings(healthy: u32, unhealthy: u32) -> HealthCheck {
        HealthCheck {
            probe: Probe::Tcp,
            tls: false,
            port: None,
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(500),
            healthy_threshold: healthy,
            unhealthy_threshold: unhealthy,
            proxy_protocol: false,
        }
    }

    /// Feeds outcomes (`+` pass, `-` fail with a 500, `t` timeout) and
    /// compares the state after each one (`i`, `h`, `u`).
    #[test]
    fn state_transitions() {
        fn check(thresholds: (u32, u32), outcomes: &str, expect: &str) {
            let settings = check_settings(thresholds.0, thresholds.1);
            let mut tracker = Tracker::default();
            let states: String = outcomes
                .chars()
                .map(|it| {
                    let outcome = match it {
                        '+' => Outcome::Pass,
                        '-' => Outcome::Fail("Target.ResponseCodeMismatch: health check returned 500".into()),
                        _ => Outcome::Fail("Target.Timeout: health check timed out after 500ms".into()),
                    };
                    tracker.record(&outcome, &settings);
                    match tracker.state() {
                        HealthState::Initial => 'i',
                        HealthState::Healthy => 'h',
                        HealthState::Unhealthy => 'u',
                        _ => '?',
                    }
                })
                .collect();
            assert_eq!(states, expect, "thresholds {thresholds:?}, outcomes {outcomes}");
        }
        check((2, 2), "++", "ih");
        check((2, 2), "+-+-+-", "iiiiii");
        check((2, 2), "--", "iu");
        check((1, 1), "+-+", "huh");
        check((2, 3), "++--+---", "ihhhhhhu");
        check((3, 2), "--+++", "iuuuh");
        check((3, 2), "--++-+++", "iuuuuuuh");
        check((2, 2), "++-t-", "ihhuu");
    }

    #[test]
    fn reasons_follow_the_state() {
        let settings = check_settings(2, 2);
        let mut tracker = Tracker::default();
        assert_eq!(tracker.reason(), REASON_INITIAL);
        let refused = Outcome::Fail("Target.FailedHealthChecks: connection refused".into());
        let timeout = Outcome::Fail("Target.Timeout: health check timed out after 500ms".into());
        assert_eq!(tracker.record(&refused, &settings), Change::Reason);
        assert_eq!(tracker.reason(), REASON_INITIAL_CHECKS);
        assert_eq!(tracker.record(&refused, &settings), Change::State);
        assert_eq!(tracker.reason(), "Target.FailedHealthChecks: connection refused");
        assert_eq!(tracker.record(&refused, &settings), Change::None);
        assert_eq!(tracker.record(&timeout, &settings), Change::Reason);
        assert_eq!(tracker.reason(), "Target.Timeout: health check timed out after 500ms");
        tracker.record(&Outcome::Pass, &settings);
        assert_eq!(tracker.record(&Outcome::Pass, &settings), Change::State);
        assert_eq!((tracker.state(), tracker.reason()), (HealthState::Healthy, ""));
        tracker.drain();
        assert_eq!((tracker.state(), tracker.reason()), (HealthState::Draining, REASON_DRAINING));
    }

    #[test]
    fn status_lines() {
        fn check(head: &str, expect: Option<u16>) {
            assert_eq!(parse_status(head.as_bytes()), expect, "{head}");
        }
        check("HTTP/1.1 200 OK\r\n", Some(200));
        check("HTTP/1.0 503", Some(503));
        check("HTTP/1.1 20", None);
        check("SSH-2.0-OpenSSH", None);
        check("", None);
    }

    #[test]
    fn settings_from_the_spec() {
        fn check(yaml: &str, expect: (&str, Option<u16>, Vec<(u16, u16)>)) {
            let group = serde_yaml::from_str::<lbctl_spec::TargetGroup>(yaml).unwrap().resolve();
            let check = HealthCheck::of(&group);
            let scheme = if check.tls { "HTTPS" } else { "HTTP" };
            let (kind, matcher) = match check.probe {
                Probe::Http { path, matcher } => (format!("{scheme}/1.1 GET {path}"), matcher),
                Probe::Http2 { path, matcher } => (format!("{scheme}/2 GET {path}"), matcher),
                Probe::Grpc { path, matcher } => (format!("{scheme}/2 gRPC {path}"), matcher),
                Probe::Tcp => ("TCP".to_string(), vec![]),
            };
            assert_eq!((kind.as_str(), check.port, matcher), expect, "{yaml}");
        }
        check("{ port: 80 }", ("HTTP/1.1 GET /", None, vec![(200, 200)]));
        check(
            "{ health_check: { path: /health, matcher: '200-399' } }",
            ("HTTP/1.1 GET /health", None, vec![(200, 399)]),
        );
        check("{ protocol: TCP }", ("TCP", None, vec![]));
        check(
            "{ protocol: TCP, health_check: { protocol: HTTP, port: 9000 } }",
            ("HTTP/1.1 GET /", Some(9000), vec![(200, 399)]),
        );
        check("{ protocol: HTTPS }", ("HTTPS/1.1 GET /", None, vec![(200, 200)]));
        check("{ protocol: HTTPS, health_check: { protocol: HTTP } }", ("HTTP/1.1 GET /", None, vec![(200, 200)]));
        check("{ protocol_version: HTTP2, health_check: { path: /h } }", ("HTTP/2 GET /h", None, vec![(200, 200)]));
        check("{ protocol_version: GRPC }", ("HTTP/2 gRPC /AWS.ALB/healthcheck", None, vec![(12, 12)]));
        check(
            "{ protocol: HTTPS, protocol_version: GRPC, health_check: { path: /grpc.health.v1.Health/Check, matcher: '0' } }",
            ("HTTPS/2 gRPC /grpc.health.v1.Health/Check", None, vec![(0, 0)]),
        );
        check("{ protocol_version: GRPC, health_check: { protocol: TCP } }", ("TCP", None, vec![]));
    }

    #[test]
    fn probes_report_aws_reasons() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            // A port nobody listens on: bind one, then free it.
            let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            let mut settings = check_settings(1, 1);
            assert_eq!(
                probe(&settings, Ipv4Addr::LOCALHOST, closed).await,
                Outcome::Fail("Target.FailedHealthChecks: connection refused".into())
            );
            // A server that accepts and never answers.
            let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = silent.local_addr().unwrap().port();
            settings.probe = Probe::Http { path: "/".into(), matcher: vec![(200, 200)] };
            settings.timeout = Duration::from_millis(50);
            assert_eq!(
                probe(&settings, Ipv4Addr::LOCALHOST, port).await,
                Outcome::Fail("Target.Timeout: health check timed out after 50ms".into())
            );
            settings.probe = Probe::Tcp;
            assert_eq!(probe(&settings, Ipv4Addr::LOCALHOST, port).await, Outcome::Pass);
        });
    }
    /// HTTPS and HTTP/2 probes against `lbctl worker --tls`, and gRPC probes
    /// against a small HTTP/2 server answering `grpc-status` in trailers, in
    /// a trailers-only answer, or not at all.
    #[test]
    fn probes_speak_tls_http2_and_grpc() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let generated = tls::generate_certificate(&["127.0.0.1".to_string()]).unwrap();
            let config =
                tls::server_config_from_pem(generated.cert_pem.as_bytes(), generated.key_pem.as_bytes()).unwrap();
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let worker_port = listener.local_addr().unwrap().port();
            let faults = std::sync::Arc::new(crate::worker::Faults::default());
            let acceptor = tokio_rustls::TlsAcceptor::from(config);
            let _worker = AbortOnDrop(tokio::spawn(async move {
                let serving = crate::worker::serve_with_tls(
                    listener,
                    "i-tls",
                    "hi",
                    faults,
                    Some(acceptor),
                    std::future::pending(),
                );
                let _ = serving.await;
            }));
            let grpc_port = start_grpc_stub().await;

            let http = |path: &str| Probe::Http { path: path.into(), matcher: vec![(200, 299)] };
            let http2 = |path: &str| Probe::Http2 { path: path.into(), matcher: vec![(200, 299)] };
            let grpc = |path: &str, code: u16| Probe::Grpc { path: path.into(), matcher: vec![(code, code)] };
            let check = |asked: Probe, tls: bool, port: u16, expect: Outcome| async move {
                let settings =
                    HealthCheck { probe: asked.clone(), tls, timeout: Duration::from_secs(5), ..check_settings(1, 1) };
                assert_eq!(probe(&settings, Ipv4Addr::LOCALHOST, port).await, expect, "{asked:?} tls={tls}");
            };
            check(http("/health"), true, worker_port, Outcome::Pass).await;
            check(http2("/health"), true, worker_port, Outcome::Pass).await;
            check(
                http2("/fault/x"),
                true,
                worker_port,
                Outcome::Fail("Target.ResponseCodeMismatch: health check returned 404".into()),
            )
            .await;
            check(
                http("/health"),
                false,
                worker_port,
                Outcome::Fail("Target.FailedHealthChecks: the target did not answer with HTTP".into()),
            )
            .await;
            check(http2("/pkg.Service/Silent"), false, grpc_port, Outcome::Pass).await;
            check(grpc("/pkg.Service/Ok", 0), false, grpc_port, Outcome::Pass).await;
            check(grpc("/AWS.ALB/healthcheck", 12), false, grpc_port, Outcome::Pass).await;
            check(
                grpc("/AWS.ALB/healthcheck", 0),
                false,
                grpc_port,
                Outcome::Fail("Target.ResponseCodeMismatch: health check returned gRPC status 12".into()),
            )
            .await;
            check(
                grpc("/pkg.Service/Silent", 0),
                false,
                grpc_port,
                Outcome::Fail("Target.FailedHealthChecks: the gRPC answer has no grpc-status".into()),
            )
            .await;
            check(
                grpc("/pkg.Service/Missing", 0),
                false,
                grpc_port,
                Outcome::Fail("Target.ResponseCodeMismatch: health check returned HTTP 404".into()),
            )
            .await;
        });
    }

    /// An h2c server answering like a gRPC service: `/pkg.Service/Ok` with a
    /// message and `grpc-status: 0` in the trailers, `/AWS.ALB/healthcheck`
    /// with a trailers-only `grpc-status: 12`, `/pkg.Service/Silent` with no
    /// status at all, anything else with HTTP 404. Serves until the runtime ends.
    async fn start_grpc_stub() -> u16 {
        use http_body_util::combinators::BoxBody;
        type StubBody = BoxBody<Bytes, std::convert::Infallible>;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let service = hyper::service::service_fn(|request: Request<Incoming>| async move {
                    let mut trailers = HeaderMap::new();
                    trailers.insert("grpc-status", HeaderValue::from_static("0"));
                    let response: Response<StubBody> = match request.uri().path() {
                        "/pkg.Service/Ok" => Response::builder()
                            .header(CONTENT_TYPE, "application/grpc")
                            .body(
                                Full::new(Bytes::from_static(&[0, 0, 0, 0, 0]))
                                    .with_trailers(async move { Some(Ok(trailers)) })
                                    .boxed(),
                            )
                            .unwrap(),
                        "/AWS.ALB/healthcheck" => Response::builder()
                            .header(CONTENT_TYPE, "application/grpc")
                            .header("grpc-status", "12")
                            .body(Full::new(Bytes::new()).boxed())
                            .unwrap(),
                        "/pkg.Service/Silent" => Response::new(Full::new(Bytes::new()).boxed()),
                        _ => Response::builder().status(404).body(Full::new(Bytes::new()).boxed()).unwrap(),
                    };
                    Ok::<_, std::convert::Infallible>(response)
                });
                let connection = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service);
                tokio::spawn(connection);
            }
        });
        port
    }
}
