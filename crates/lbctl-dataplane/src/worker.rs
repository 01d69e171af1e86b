//! The built-in demo instance (`lbctl worker`).
//!
//! A worker is what an auto-scaling group's launch template runs when the user
//! has no application of their own: a small HTTP server (HTTP/1.1, and HTTP/2
//! with prior knowledge; with `--tls`, HTTPS with a self-signed certificate
//! made at start and HTTP/2 through ALPN) that answers every
//! request with its instance id, serves a health path, and has fault switches
//! so that demos and tests can make it unhealthy or take its web server down
//! while the process stays alive (the "EC2 healthy, ELB unhealthy" case).
//!
//! | request | answer |
//! | --- | --- |
//! | any path | 200 `<greeting> from <id> at <ip>:<port> path=<path>` |
//! | `GET /health` | 200 `ok`, or 503 while the unhealthy fault is on |
//! | `POST /fault/unhealthy`, `POST /fault/healthy` | switch the health answer |
//! | `POST /fault/stop-listener` (or SIGUSR1) | close the listening socket, keep the process |
//! | `?sleep=<ms>` on any request | wait that long before answering |
//!
//! Every answer echoes the forwarding headers it received as `x-seen-*`
//! (`x-seen-host` is the Host, or the HTTP/2 `:authority`) and the HTTP
//! version as `x-seen-version`.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue, CONTENT_TYPE, HOST};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::net::TcpListener;
use tokio::sync::Notify;

/// How long a stopping worker waits for in-flight requests.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Options of `lbctl worker`; anything omitted comes from the environment the
/// auto-scaling group supervisor sets (`LBCTL_IP`, `LBCTL_PORT`, `LBCTL_INSTANCE_ID`).
#[derive(Debug, Clone, Default)]
pub struct WorkerOptions {
    /// Address to listen on (default `LBCTL_IP:LBCTL_PORT`).
    pub listen: Option<SocketAddr>,
    /// Instance id to answer with (default `LBCTL_INSTANCE_ID`, else `local`).
    pub instance_id: Option<String>,
    /// Serve HTTPS with a self-signed certificate generated at start.
    pub tls: bool,
}

/// The worker's fault switches, shared by its request handlers and its
/// signal handler.
#[derive(Debug, Default)]
pub struct Faults {
    unhealthy: AtomicBool,
    stop_listener: Notify,
}

impl Faults {
    /// Turns the unhealthy fault on (the health path answers 503) or off.
    pub fn set_unhealthy(&self, on: bool) {
        self.unhealthy.store(on, Ordering::Relaxed);
    }

    /// Whether the health path currently answers 503.
    pub fn is_unhealthy(&self) -> bool {
        self.unhealthy.load(Ordering::Relaxed)
    }

    /// Asks the worker to close its listening socket; the request is kept
    /// until the accept loop sees it, so it is never lost.
    pub fn stop_listener(&self) {
        self.stop_listener.notify_one();
    }
}

/// Runs a worker until SIGTERM or SIGINT; blocking.
pub fn run(options: WorkerOptions) -> Result<()> {
    let listen = match options.listen {
        Some(listen) => listen,
        None => listen_from_env()?,
    };
    let instance_id = options
        .instance_id
        .or_else(|| std::env::var("LBCTL_INSTANCE_ID").ok())
        .filter(|it| !it.is_empty())
        .unwrap_or_else(|| "local".to_string());
    let greeting = std::env::var("GREETING").ok().filter(|it| !it.is_empty()).unwrap_or_else(|| "hello".to_string());
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the runtime")?;
    let result = runtime.block_on(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let listener = TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
        let tls = if options.tls {
            let names = vec![listen.ip().to_string(), "localhost".to_string()];
            let generated = crate::tls::generate_certificate(&names)?;
            let config =
                crate::tls::server_config_from_pem(generated.cert_pem.as_bytes(), generated.key_pem.as_bytes())?;
            Some(tokio_rustls::TlsAcceptor::from(config))
        } else {
            None
        };
        let faults = Arc::new(Faults::default());
        let mut usr1 = signal(SignalKind::user_defined1()).context("installing the SIGUSR1 handler")?;
        let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
        let on_usr1 = faults.clone();
        tokio::spawn(async move {
            while usr1.recv().await.is_some() {
                on_usr1.stop_listener();
            }
        });
        let shutdown = async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        };
        serve_with_tls(listener, &instance_id, &greeting, faults, tls, shutdown).await
    });
    runtime.shutdown_timeout(Duration::from_millis(200));
    result
}

/// The listen address from `LBCTL_IP` and `LBCTL_PORT`.
fn listen_from_env() -> Result<SocketAddr> {
    let (Ok(ip), Ok(port)) = (std::env::var("LBCTL_IP"), std::env::var("LBCTL_PORT")) else {
        bail!("no address to listen on: pass --listen IP:PORT or set LBCTL_IP and LBCTL_PORT");
    };
    format!("{ip}:{port}").parse().with_context(|| format!("LBCTL_IP={ip} LBCTL_PORT={port} is not an address"))
}

/// Serves the demo application on `listener` until `shutdown` resolves, then
/// lets in-flight requests finish (for a few seconds at most).
///
/// After the stop-listener fault the socket is closed but this keeps running
/// until `shutdown`, as a process whose web server died would.
pub async fn serve(
    listener: TcpListener,
    instance_id: &str,
    greeting: &str,
    faults: Arc<Faults>,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    serve_with_tls(listener, instance_id, greeting, faults, None, shutdown).await
}

/// `serve`, over TLS when `tls` is given (the handshake runs on each
/// connection's own task).
pub async fn serve_with_tls(
    listener: TcpListener,
    instance_id: &str,
    greeting: &str,
    faults: Arc<Faults>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let addr = listener.local_addr().context("reading the listening address")?;
    eprintln!("worker {instance_id} listening on {addr}");
    let app = Arc::new(App {
        instance_id: instance_id.to_string(),
        instance_header: HeaderValue::from_str(instance_id).unwrap_or(HeaderValue::from_static("invalid")),
        greeting: greeting.to_string(),
        addr,
        faults: faults.clone(),
    });
    let mut graceful = GracefulShutdown::new();
    let mut closing = None;
    let mut listener = Some(listener);
    tokio::pin!(shutdown);
    loop {
        let Some(open) = &listener else {
            (&mut shutdown).await;
            break;
        };
        tokio::select! {
            _ = &mut shutdown => break,
            _ = faults.stop_listener.notified() => {
                listener = None;
                eprintln!("worker {instance_id}: listener stopped; the process stays up");
                // Closing the watched connections gracefully ends the idle
                // keep-alive ones at once and the busy ones after their
                // current response.
                let watched = std::mem::take(&mut graceful);
                closing = Some(tokio::spawn(watched.shutdown()));
            }
            accepted = open.accept() => match accepted {
                Ok((stream, _)) => {
                    stream.set_nodelay(true).ok();
                    let (app, watcher) = (app.clone(), graceful.watcher());
                    match tls.clone() {
                        None => {
                            tokio::spawn(serve_connection(stream, app, watcher));
                        }
                        Some(acceptor) => {
                            tokio::spawn(async move {
                                if let Ok(Ok(stream)) = tokio::time::timeout(DRAIN_TIMEOUT, acceptor.accept(stream)).await {
                                    serve_connection(stream, app, watcher).await;
                                }
                            });
                        }
                    }
                }
                Err(err) => {
                    // Running out of file descriptors must not spin the loop.
                    eprintln!("worker {instance_id}: accept failed: {err}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    drop(listener);
    let drain = async {
        graceful.shutdown().await;
        if let Some(closing) = closing {
            let _ = closing.await;
        }
    };
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, drain).await;
    eprintln!("worker {instance_id}: stopped");
    Ok(())
}

/// Serves HTTP/1.1 or HTTP/2 on one connection until it closes.
async fn serve_connection<I>(io: I, app: Arc<App>, watcher: Watcher)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |request| {
        let app = app.clone();
        async move { Ok::<_, Infallible>(app.handle(request).await) }
    });
    let builder = auto::Builder::new(TokioExecutor::new());
    let _ = watcher.watch(builder.serve_connection(TokioIo::new(io), service).into_owned()).await;
}

/// What every request handler shares.
struct App {
    instance_id: String,
    instance_header: HeaderValue,
    greeting: String,
    addr: SocketAddr,
    faults: Arc<Faults>,
}

/// Request headers echoed back under an `x-seen-` name.
const ECHOED: [(&str, &str); 4] = [
    ("x-forwarded-for", "x-seen-forwarded-for"),
    ("x-forwarded-proto", "x-seen-forwarded-proto"),
    ("x-forwarded-port", "x-seen-forwarded-port"),
    ("host", "x-seen-host"),
];

impl App {
    async fn handle(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        if let Some(ms) = query_value(request.uri().query(), "sleep").and_then(|it| it.parse::<u64>().ok()) {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        let (parts, body) = request.into_parts();
        // Read the body to its end so that the connection stays reusable.
        let mut body = body;
        while let Some(frame) = body.frame().await {
            if frame.is_err() {
                break;
            }
        }
        let path = parts.uri.path();
        let (status, text) = match (&parts.method, path) {
            (_, "/health") if self.faults.is_unhealthy() => {
                (StatusCode::SERVICE_UNAVAILABLE, "unhealthy\n".to_string())
            }
            (_, "/health") => (StatusCode::OK, "ok\n".to_string()),
            (&Method::POST, "/fault/unhealthy") => {
                self.faults.set_unhealthy(true);
                eprintln!("worker {}: health checks now answer 503", self.instance_id);
                (StatusCode::OK, "health checks now fail\n".to_string())
            }
            (&Method::POST, "/fault/healthy") => {
                self.faults.set_unhealthy(false);
                eprintln!("worker {}: health checks now answer 200", self.instance_id);
                (StatusCode::OK, "health checks now pass\n".to_string())
            }
            (&Method::POST, "/fault/stop-listener") => {
                self.faults.stop_listener();
                (StatusCode::OK, "listener stopping\n".to_string())
            }
            (_, fault) if fault.starts_with("/fault/") => (
                StatusCode::NOT_FOUND,
                "faults: POST /fault/unhealthy, /fault/healthy, /fault/stop-listener\n".to_string(),
            ),
            _ => {
                (StatusCode::OK, format!("{} from {} at {} path={path}\n", self.greeting, self.instance_id, self.addr))
            }
        };
        let mut response = Response::new(Full::new(Bytes::from(text)));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        headers.insert(HeaderName::from_static("x-instance-id"), self.instance_header.clone());
        for (seen, echoed) in ECHOED {
            let value = if seen == "host" {
                // HTTP/2 requests carry the host as `:authority`, in the URI.
                let authority = parts.uri.authority().and_then(|it| HeaderValue::from_str(it.as_str()).ok());
                parts.headers.get(HOST).cloned().or(authority)
            } else {
                parts.headers.get(seen).cloned()
            };
            if let Some(value) = value {
                headers.insert(HeaderName::from_static(echoed), value);
            }
        }
        let version = match parts.version {
            Version::HTTP_2 => "HTTP/2",
            Version::HTTP_10 => "HTTP/1.0",
            _ => "HTTP/1.1",
        };
        headers.insert(HeaderName::from_static("x-seen-version"), HeaderValue::from_static(version));
        response
    }
}

/// The value of `key` in a query string, if present.
fn query_value<'a>(query: Option<&'a str>, key: &str) -> Option<&'a str> {
    query?.split('&').find_map(|pair| match pair.split_once('=') {
        Some((k, v)) if k == key => Some(v),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Empty;
    use hyper_util::client::legacy::Client;

    type TestClient = Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>;

    async fn call(client: &TestClient, method: Method, url: &str) -> (StatusCode, String, hyper::HeaderMap) {
        let request = Request::builder().method(method).uri(url).body(Empty::new()).unwrap();
        let response = client.request(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned(), headers)
    }

    #[test]
    fn query_values() {
        fn check(query: Option<&str>, expect: Option<&str>) {
            assert_eq!(query_value(query, "sleep"), expect, "{query:?}");
        }
        check(None, None);
        check(Some("sleep=20"), Some("20"));
        check(Some("a=1&sleep=5&b"), Some("5"));
        check(Some("sleeping=5"), None);
    }

    #[test]
    fn serves_health_and_faults() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let faults = Arc::new(Faults::default());
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let server = tokio::spawn(serve(listener, "i-test", "hi", faults.clone(), async move {
                let _ = stopped.await;
            }));
            let client: TestClient = Client::builder(TokioExecutor::new()).build_http();
            let base = format!("http://{addr}");

            let (status, body, headers) = call(&client, Method::GET, &format!("{base}/images/x?sleep=10")).await;
            assert_eq!(status, 200);
            assert_eq!(body, format!("hi from i-test at {addr} path=/images/x\n"));
            assert_eq!(headers["x-instance-id"], "i-test");
            assert_eq!(headers["x-seen-host"], addr.to_string());

            assert_eq!(call(&client, Method::GET, &format!("{base}/health")).await.0, 200);
            assert_eq!(call(&client, Method::POST, &format!("{base}/fault/unhealthy")).await.0, 200);
            assert_eq!(call(&client, Method::GET, &format!("{base}/health")).await.0, 503);
            assert_eq!(call(&client, Method::POST, &format!("{base}/fault/healthy")).await.0, 200);
            assert_eq!(call(&client, Method::GET, &format!("{base}/health")).await.0, 200);

            let (status, body, _) = call(&client, Method::POST, &format!("{base}/fault/stop-listener")).await;
            assert_eq!((status, body.as_str()), (StatusCode::OK, "listener stopping\n"));
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            while tokio::net::TcpStream::connect(addr).await.is_ok() {
                assert!(tokio::time::Instant::now() < deadline, "the listener never closed");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            assert!(!server.is_finished(), "the worker stays up after its listener stops");

            stop.send(()).unwrap();
            server.await.unwrap().unwrap();
        });
    }
}
