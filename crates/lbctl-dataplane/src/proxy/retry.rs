//! Retrying a request whose target died under it, once, on another target
//! of the group ("beyond AWS": `kill -9` of an instance under load costs the
//! clients nothing).
//!
//! Only a request without a body can be sent again (its body is streamed,
//! never buffered), and only when sending it again is safe:
//!
//! | what happened | retried when the request is |
//! | --- | --- |
//! | no connection could be made (refused, reset, timed out) | bodiless, any method |
//! | the connection closed before the response head | bodiless and idempotent (GET, HEAD, OPTIONS, PUT, DELETE, TRACE) |
//! | anything else (a broken response, a timeout) | never |
//!
//! A target that refused a connection is also reported to its group, which
//! takes it out of rotation at once (passive health, see `target_group`).
//! A connection closed under a request is not reported: it is also what the
//! benign keep-alive race looks like (a target closing an idle connection as
//! a request goes out), and a dead target refuses the next connection anyway.
//!
//! The cost on the happy path is a copy of the request head (method, URI,
//! headers: two allocations) for bodiless requests; a request with a body
//! costs nothing.

use std::error::Error as StdError;
use std::io;

use hyper::body::Body;
use hyper::http::request::Parts;
use hyper::http::uri::Authority;
use hyper::{HeaderMap, Method, Request, Uri, Version};

use super::selection::{Backend, InFlight};
use super::target_group::TargetGroup;
use super::upstream::{UpstreamBody, UpstreamError};

/// The head of a forwarded request that can be sent again.
pub struct Replay {
    idempotent: bool,
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
}

impl Replay {
    /// A copy of the head of a request about to be forwarded (`parts` as
    /// sent, `body` its body), or `None` when the request has a body.
    pub fn capture(parts: &Parts, body: &impl Body) -> Option<Replay> {
        if !body.is_end_stream() {
            return None;
        }
        Some(Replay {
            idempotent: is_idempotent(&parts.method),
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            version: parts.version,
            headers: parts.headers.clone(),
        })
    }

    /// The request again, addressed to `authority`.
    fn request(self, authority: &Authority) -> Request<UpstreamBody> {
        let mut uri = self.uri.into_parts();
        uri.authority = Some(authority.clone());
        let mut request = Request::new(UpstreamBody::Empty);
        *request.method_mut() = self.method;
        // Only the authority changed, and it is an address.
        *request.uri_mut() = Uri::from_parts(uri).unwrap_or_default();
        *request.version_mut() = self.version;
        *request.headers_mut() = self.headers;
        request
    }
}

/// Whether a request with `method` may be sent twice (RFC 9110 9.2.2).
pub fn is_idempotent(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE)
}

/// How forwarding a request failed, as far as retrying goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The request did not reach the target; `refused` says why when the
    /// target is to blame (it refused or reset the connection, or never answered it).
    NotSent { refused: Option<&'static str> },
    /// The connection closed (or was reset) before the response head came.
    Lost,
    /// Anything else.
    Other,
}

impl Failure {
    /// Classifies an upstream error by its cause chain.
    pub fn of(err: &UpstreamError) -> Failure {
        let mut source: Option<&(dyn StdError + 'static)> = Some(err);
        let mut io_kind = None;
        let mut lost = false;
        while let Some(cause) = source {
            if let Some(err) = cause.downcast_ref::<hyper::Error>() {
                // A canceled request usually did not go out, but hyper also
                // cancels those whose connection task vanished: count it as lost.
                lost |= err.is_incomplete_message() || err.is_canceled();
            }
            if let Some(err) = cause.downcast_ref::<io::Error>() {
                io_kind = io_kind.or(Some(err.kind()));
            }
            source = cause.source();
        }
        if err.is_connect() {
            let refused = match io_kind {
                Some(io::ErrorKind::ConnectionRefused) => Some("connection refused"),
                Some(io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted) => Some("connection reset"),
                Some(io::ErrorKind::TimedOut) => Some("connection timed out"),
                // Out of local ports or descriptors, say: not the target's fault.
                _ => None,
            };
            return Failure::NotSent { refused };
        }
        let reset = matches!(
            io_kind,
            Some(
                io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::BrokenPipe
                    | io::ErrorKind::UnexpectedEof
            )
        );
        if lost || reset {
            Failure::Lost
        } else {
            Failure::Other
        }
    }
}

/// After forwarding to `failed` went wrong with `err`: reports a refused
/// connection to the group, and returns the target of a second attempt
/// (its in-flight count) when the request may be sent again and another
/// target is routable. `idempotent` is `None` for a request that cannot be
/// sent again (its body is gone).
pub fn second_target(
    group: &TargetGroup,
    failed: &Backend,
    err: &UpstreamError,
    idempotent: Option<bool>,
) -> Option<InFlight> {
    let failure = Failure::of(err);
    if let Failure::NotSent { refused: Some(error) } = &failure {
        group.report_connection_failure(failed, error);
    }
    let retry = match failure {
        Failure::NotSent { .. } => idempotent.is_some(),
        Failure::Lost => idempotent == Some(true),
        Failure::Other => false,
    };
    if !retry {
        return None;
    }
    Some(InFlight::start(group.select_other(failed)?))
}

/// `second_target` for a request whose head was handed over: the second
/// attempt's target and the request again, from `replay`.
pub fn second_attempt(
    group: &TargetGroup,
    failed: &Backend,
    err: &UpstreamError,
    replay: Option<Replay>,
) -> Option<(InFlight, Request<UpstreamBody>)> {
    let other = second_target(group, failed, err, replay.as_ref().map(|it| it.idempotent))?;
    let request = replay?.request(&other.authority);
    Some((other, request))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replayed_request_goes_to_the_new_address() {
        let mut request = Request::put("http://127.0.0.1:8080/a/b?c=d").body(()).unwrap();
        request.headers_mut().insert("host", "shop.example.com".parse().unwrap());
        let (parts, ()) = request.into_parts();
        let replay = Replay {
            idempotent: true,
            method: parts.method,
            uri: parts.uri,
            version: parts.version,
            headers: parts.headers,
        };
        let again = replay.request(&"127.0.0.9:9090".parse().unwrap());
        assert_eq!(again.method(), Method::PUT);
        assert_eq!(again.uri().to_string(), "http://127.0.0.9:9090/a/b?c=d");
        assert_eq!(again.headers()["host"], "shop.example.com");
        assert!(again.body().is_end_stream());
    }

    /// What forwarding a GET to a target that does `serve` (with the one
    /// connection it accepts) comes to.
    fn failure_against(serve: Option<&'static [u8]>) -> Failure {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            match serve {
                // Nobody listens.
                None => drop(listener),
                Some(answer) => {
                    tokio::spawn(async move {
                        let (mut stream, _) = listener.accept().await.unwrap();
                        let mut buf = [0u8; 1024];
                        let _ = stream.read(&mut buf).await;
                        let _ = stream.write_all(answer).await;
                    });
                }
            }
            let backend = Backend::new("t", std::net::Ipv4Addr::LOCALHOST, addr.port());
            let request = Request::get(format!("http://{addr}/")).body(UpstreamBody::Empty).unwrap();
            let upstream = super::super::upstream::Upstream::new();
            let err = upstream.send(Default::default(), backend.endpoint(), request).await.unwrap_err();
            Failure::of(&err)
        })
    }

    /// A target that closes every connection right after its first answer,
    /// without saying so (no `Connection: close`): the pooled connection is
    /// dead when the next request takes it. hyper-util's client retries by
    /// itself when it notices before sending; otherwise the failure is one
    /// `second_attempt` retries (`Lost` or `NotSent`), never a 502.
    #[test]
    fn a_pooled_connection_the_target_closed_is_retried() {
        use http_body_util::BodyExt;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let outcomes = runtime.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::spawn(async move {
                while let Ok((mut stream, _)) = listener.accept().await {
                    tokio::spawn(async move {
                        let mut head = Vec::new();
                        let mut buf = [0u8; 1024];
                        while !head.ends_with(b"\r\n\r\n") {
                            match stream.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => head.extend_from_slice(&buf[..n]),
                            }
                        }
                        let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
                    });
                }
            });
            let backend = Backend::new("t", std::net::Ipv4Addr::LOCALHOST, addr.port());
            let upstream = super::super::upstream::Upstream::new();
            let mut outcomes = std::collections::BTreeMap::new();
            for _ in 0..200 {
                let request = Request::get(format!("http://{addr}/")).body(UpstreamBody::Empty).unwrap();
                let outcome = match upstream.send(Default::default(), backend.endpoint(), request).await {
                    Ok(exchange) => {
                        let mut body = exchange.response.into_body();
                        while let Some(frame) = body.frame().await {
                            frame.unwrap();
                        }
                        // Back to the pool, as the request path does after the body.
                        body.release_to(&backend.h1);
                        "answered".to_string()
                    }
                    Err(err) => format!("{:?}", Failure::of(&err)),
                };
                *outcomes.entry(outcome).or_insert(0) += 1;
            }
            outcomes
        });
        let retried = |it: &str| it == "answered" || it == "Lost" || it.starts_with("NotSent");
        assert!(outcomes.keys().all(|it| retried(it)), "{outcomes:?}");
        assert!(outcomes["answered"] > 100, "{outcomes:?}");
    }

    #[test]
    fn failures_by_cause() {
        assert_eq!(failure_against(None), Failure::NotSent { refused: Some("connection refused") });
        // The target read the request and closed without a word.
        assert_eq!(failure_against(Some(b"")), Failure::Lost);
        // Half a response head, then closed.
        assert_eq!(failure_against(Some(b"HTTP/1.1 200 OK\r\nconte")), Failure::Lost);
        assert_eq!(failure_against(Some(b"SSH-2.0-OpenSSH\r\n\r\n")), Failure::Other);
    }
}
