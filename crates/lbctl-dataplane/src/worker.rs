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
//! Every answer echoes the forwarding headers it received (`X-Forwarded-*`,
//! `X-Amzn-Trace-Id`) as `x-seen-*`
//! (`x-seen-host` is the Host, or the HTTP/2 `:authority`; `x-seen-cookie`
//! every Cookie field, joined by ` | `) and the HTTP
//! version as `x-seen-version`.
//!
//! With `--echo` it is what a network load balancer's TCP and UDP listeners
//! forward to instead: a TCP echo server and a UDP echo server on the same
//! address. A `whoami` line tells which target answered.
//!
//! | input | answer |
//! | --- | --- |
//! | TCP: any bytes | the same bytes; once the client half-closes, the worker closes its write side |
//! | TCP: a first line of exactly `whoami\n` | `<id>\n`, then the rest echoed |
//! | UDP: any datagram | one datagram with the same bytes, to its sender |
//! | UDP: a datagram of exactly `whoami` or `whoami\n` | `<id>\n` |
//! | SIGUSR1 | close the TCP listener (open connections and UDP keep answering) |
//! | SIGTERM, SIGINT | stop, closing the open connections |
//!
//! With `--proxy-protocol` every accepted TCP connection must open with a
//! PROXY protocol version 2 header (before TLS, if any), as a target group
//! with `proxy_protocol_v2` sends; one that does not within 5 s is closed
//! and logged (not logged when it sent nothing at all, as a port probe).
//! Exactly the header's bytes are read, never the payload after it. After a
//! `PROXY` header, HTTP answers carry `x-seen-proxy-source` and
//! `x-seen-proxy-destination` (`<ip>:<port>` each) and the echo server first
//! writes `proxy <source ip>:<source port>\n`; after a `LOCAL` header (a
//! health check) nothing is added. UDP datagrams carry no header.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue, CONTENT_TYPE, COOKIE, HOST};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Notify;
use tokio::task::JoinSet;

/// How long a stopping worker waits for in-flight requests.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a connection may take to send its PROXY protocol header.
const PROXY_HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// The first line that makes the echo server answer with its instance id.
const WHOAMI: &[u8] = b"whoami\n";

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
    /// Serve TCP and UDP echo instead of HTTP.
    pub echo: bool,
    /// Require a PROXY protocol v2 header on every TCP connection.
    pub proxy_protocol: bool,
}

/// How the HTTP server's connections start: TLS, a PROXY protocol header
/// (which comes first when both are on), or neither.
#[derive(Clone, Default)]
pub struct HttpTransport {
    /// Serve HTTPS with this acceptor.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// Require a PROXY protocol v2 header on every connection.
    pub proxy_protocol: bool,
}

/// The addresses a PROXY protocol header announced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxiedAddresses {
    /// The client the load balancer received the connection from.
    pub source: SocketAddr,
    /// The load balancer address the client connected to.
    pub destination: SocketAddr,
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
    if options.echo && options.tls {
        bail!("--echo serves plain TCP and UDP: it cannot be combined with --tls");
    }
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the runtime")?;
    let result = runtime.block_on(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let listener = TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
        let udp = if options.echo {
            Some(UdpSocket::bind(listen).await.with_context(|| format!("cannot listen on {listen}/udp"))?)
        } else {
            None
        };
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
        match udp {
            Some(udp) => serve_echo(listener, udp, &instance_id, faults, options.proxy_protocol, shutdown).await,
            None => {
                let transport = HttpTransport { tls, proxy_protocol: options.proxy_protocol };
                serve_with(listener, &instance_id, &greeting, faults, transport, shutdown).await
            }
        }
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
    serve_with(listener, instance_id, greeting, faults, HttpTransport { tls, proxy_protocol: false }, shutdown).await
}

/// `serve` with connections that start as `transport` says (the PROXY
/// header and the TLS handshake are read on each connection's own task).
pub async fn serve_with(
    listener: TcpListener,
    instance_id: &str,
    greeting: &str,
    faults: Arc<Faults>,
    transport: HttpTransport,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let addr = listener.local_addr().context("reading the listening address")?;
    let requires = if transport.proxy_protocol { " (PROXY protocol v2 required)" } else { "" };
    say(format_args!("{instance_id} listening on {addr}{requires}"));
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
                say(format_args!("{instance_id}: listener stopped; the process stays up"));
                // Closing the watched connections gracefully ends the idle
                // keep-alive ones at once and the busy ones after their
                // current response.
                let watched = std::mem::take(&mut graceful);
                closing = Some(tokio::spawn(watched.shutdown()));
            }
            accepted = open.accept() => match accepted {
                Ok((mut stream, peer)) => {
                    stream.set_nodelay(true).ok();
                    let (app, watcher, transport) = (app.clone(), graceful.watcher(), transport.clone());
                    tokio::spawn(async move {
                        let proxied = if transport.proxy_protocol {
                            match read_proxy_header(&mut stream, PROXY_HEADER_TIMEOUT).await {
                                Ok(proxied) => proxied,
                                Err(err) => return log_refused(&app.instance_id, peer, &err),
                            }
                        } else {
                            None
                        };
                        match transport.tls {
                            None => serve_connection(stream, app, watcher, proxied).await,
                            Some(acceptor) => {
                                if let Ok(Ok(stream)) = tokio::time::timeout(DRAIN_TIMEOUT, acceptor.accept(stream)).await {
                                    serve_connection(stream, app, watcher, proxied).await;
                                }
                            }
                        }
                    });
                }
                Err(err) => {
                    // Running out of file descriptors must not spin the loop.
                    say(format_args!("{instance_id}: accept failed: {err}"));
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
    say(format_args!("{instance_id}: stopped"));
    Ok(())
}

/// Serves HTTP/1.1 or HTTP/2 on one connection until it closes; `proxied`
/// is what the connection's PROXY header announced.
async fn serve_connection<I>(io: I, app: Arc<App>, watcher: Watcher, proxied: Option<ProxiedAddresses>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |request| {
        let app = app.clone();
        async move {
            let mut response = app.handle(request).await;
            if let Some(proxied) = proxied {
                let headers = response.headers_mut();
                for (name, address) in
                    [("x-seen-proxy-source", proxied.source), ("x-seen-proxy-destination", proxied.destination)]
                {
                    if let Ok(value) = HeaderValue::from_str(&address.to_string()) {
                        headers.insert(HeaderName::from_static(name), value);
                    }
                }
            }
            Ok::<_, Infallible>(response)
        }
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

/// Writes a line of the worker's own to its output (the instance's log),
/// after the time: `lbctl logs` places it by that time.
fn say(message: std::fmt::Arguments) {
    eprintln!("{} worker {message}", crate::runtime::log_time());
}

/// Request headers echoed back under an `x-seen-` name.
const ECHOED: [(&str, &str); 6] = [
    ("x-forwarded-for", "x-seen-forwarded-for"),
    // Each Cookie field, joined by ` | `: how many came is seen too.
    ("cookie", "x-seen-cookie"),
    ("x-forwarded-proto", "x-seen-forwarded-proto"),
    ("x-forwarded-port", "x-seen-forwarded-port"),
    ("x-amzn-trace-id", "x-seen-amzn-trace-id"),
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
                say(format_args!("{}: health checks now answer 503", self.instance_id));
                (StatusCode::OK, "health checks now fail\n".to_string())
            }
            (&Method::POST, "/fault/healthy") => {
                self.faults.set_unhealthy(false);
                say(format_args!("{}: health checks now answer 200", self.instance_id));
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
            } else if seen == "cookie" {
                let fields: Vec<&[u8]> = parts.headers.get_all(COOKIE).iter().map(HeaderValue::as_bytes).collect();
                (!fields.is_empty()).then(|| HeaderValue::from_bytes(&fields.join(&b" | "[..])).ok()).flatten()
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

/// Reads a PROXY protocol version 2 header from the start of `io`, within
/// `timeout`, and consumes nothing after it: the 16-byte fixed part first,
/// then exactly the length it announces. Returns the announced addresses for
/// a `PROXY` command with IP addresses, `None` for `LOCAL` (or an address
/// family without IP addresses).
pub async fn read_proxy_header<R>(io: &mut R, timeout: Duration) -> Result<Option<ProxiedAddresses>>
where
    R: AsyncRead + Unpin,
{
    use ppp::v2::{Addresses, Command, Header, ParseError, PROTOCOL_PREFIX};
    let read = async {
        let mut header = vec![0u8; PROTOCOL_PREFIX.len() + 4];
        let mut filled = 0;
        while filled < header.len() {
            let read = io.read(&mut header[filled..]).await.context("reading the PROXY header")?;
            if read == 0 && filled == 0 {
                return Err(NothingSent.into());
            }
            if read == 0 {
                bail!("closed before a full PROXY protocol v2 header");
            }
            filled += read;
            // A client speaking something else is turned away at once, not
            // after the timeout.
            let checked = filled.min(PROTOCOL_PREFIX.len());
            if header[..checked] != PROTOCOL_PREFIX[..checked] {
                bail!("not a PROXY protocol v2 header");
            }
        }
        match Header::try_from(header.as_slice()) {
            Ok(_) | Err(ParseError::Partial(..)) => {}
            Err(err) => bail!("invalid PROXY protocol v2 header: {err}"),
        }
        let length = usize::from(u16::from_be_bytes([header[14], header[15]]));
        header.resize(header.len() + length, 0);
        io.read_exact(&mut header[filled..]).await.context("reading the PROXY header")?;
        let parsed =
            Header::try_from(header.as_slice()).map_err(|err| anyhow!("invalid PROXY protocol v2 header: {err}"))?;
        let addresses = match (parsed.command, parsed.addresses) {
            (Command::Proxy, Addresses::IPv4(it)) => Some(ProxiedAddresses {
                source: (it.source_address, it.source_port).into(),
                destination: (it.destination_address, it.destination_port).into(),
            }),
            (Command::Proxy, Addresses::IPv6(it)) => Some(ProxiedAddresses {
                source: (it.source_address, it.source_port).into(),
                destination: (it.destination_address, it.destination_port).into(),
            }),
            _ => None,
        };
        Ok(addresses)
    };
    match tokio::time::timeout(timeout, read).await {
        Ok(result) => result,
        Err(_) => bail!("no PROXY protocol v2 header within {}s", timeout.as_secs_f32()),
    }
}

/// A connection closed before sending anything: a probe that only checks
/// the port is open, not a client sending a bad header.
#[derive(Debug)]
struct NothingSent;

impl std::fmt::Display for NothingSent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("closed before sending a PROXY protocol v2 header")
    }
}

impl std::error::Error for NothingSent {}

/// Logs why a connection's PROXY header was refused, unless it sent nothing.
fn log_refused(instance_id: &str, peer: SocketAddr, err: &anyhow::Error) {
    if !err.is::<NothingSent>() {
        say(format_args!("{instance_id}: closing the connection from {peer}: {err:#}"));
    }
}

/// Serves TCP echo on `listener` and UDP echo on `udp` until `shutdown`
/// resolves, then closes every connection. After the stop-listener fault the
/// TCP listener is closed; open connections and UDP keep answering.
pub async fn serve_echo(
    listener: TcpListener,
    udp: UdpSocket,
    instance_id: &str,
    faults: Arc<Faults>,
    proxy_protocol: bool,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let addr = listener.local_addr().context("reading the listening address")?;
    let requires = if proxy_protocol { " (PROXY protocol v2 required on TCP)" } else { "" };
    say(format_args!("{instance_id} echoing on {addr} over TCP and UDP{requires}"));
    let id: Arc<str> = Arc::from(instance_id);
    let datagrams = tokio::spawn(echo_datagrams(udp, id.clone()));
    let mut connections = JoinSet::new();
    let mut listener = Some(listener);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = faults.stop_listener.notified(), if listener.is_some() => {
                listener = None;
                say(format_args!("{instance_id}: TCP listener stopped; the process and UDP stay up"));
            }
            // Finished connections are reaped so that the set stays small.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = accept(&listener) => match accepted {
                Ok((stream, peer)) => {
                    stream.set_nodelay(true).ok();
                    connections.spawn(echo_connection(stream, peer, id.clone(), proxy_protocol));
                }
                Err(err) => {
                    // Running out of file descriptors must not spin the loop.
                    say(format_args!("{instance_id}: accept failed: {err}"));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    drop(listener);
    datagrams.abort();
    // Echo connections have no request boundary to finish at: by the time
    // an instance is stopped the load balancer has drained it, so whatever
    // is still open is closed now.
    connections.shutdown().await;
    let _ = datagrams.await;
    say(format_args!("{instance_id}: stopped"));
    Ok(())
}

/// The next connection on `listener`, or never once it is closed.
async fn accept(listener: &Option<TcpListener>) -> io::Result<(TcpStream, SocketAddr)> {
    match listener {
        Some(listener) => listener.accept().await,
        None => std::future::pending().await,
    }
}

/// One echo connection: its PROXY header first when required, then echo.
async fn echo_connection(mut stream: TcpStream, peer: SocketAddr, instance_id: Arc<str>, proxy_protocol: bool) {
    if proxy_protocol {
        match read_proxy_header(&mut stream, PROXY_HEADER_TIMEOUT).await {
            Ok(Some(proxied)) => {
                if stream.write_all(format!("proxy {}\n", proxied.source).as_bytes()).await.is_err() {
                    return;
                }
            }
            Ok(None) => {}
            Err(err) => return log_refused(&instance_id, peer, &err),
        }
    }
    // A reset or broken connection is the client's business.
    let _ = echo(&mut stream, &instance_id).await;
}

/// Writes back every byte read until the client half-closes, then closes
/// the write side; a first line of exactly `whoami` is answered with the
/// instance id instead.
async fn echo<S>(stream: &mut S, instance_id: &str) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut buffer = vec![0u8; 16 * 1024];
    // Only as much as tells whether the first line is `whoami` is gathered
    // before echoing starts.
    let mut filled = 0;
    while filled < WHOAMI.len() && WHOAMI.starts_with(&buffer[..filled]) {
        let read = stream.read(&mut buffer[filled..]).await?;
        if read == 0 {
            break;
        }
        filled += read;
    }
    if buffer[..filled].starts_with(WHOAMI) {
        stream.write_all(format!("{instance_id}\n").as_bytes()).await?;
        stream.write_all(&buffer[WHOAMI.len()..filled]).await?;
    } else {
        stream.write_all(&buffer[..filled]).await?;
    }
    loop {
        let read = stream.read(&mut buffer).await?;
        if read == 0 {
            break;
        }
        stream.write_all(&buffer[..read]).await?;
    }
    stream.shutdown().await
}

/// Answers every datagram on `socket` with the same bytes, or with the
/// instance id for `whoami`, until aborted.
async fn echo_datagrams(socket: UdpSocket, instance_id: Arc<str>) {
    let answer = format!("{instance_id}\n");
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        match socket.recv_from(&mut buffer).await {
            Ok((read, from)) => {
                let datagram = &buffer[..read];
                let reply = if datagram == b"whoami" || datagram == WHOAMI { answer.as_bytes() } else { datagram };
                // A sender that went away is no reason to stop answering others.
                let _ = socket.send_to(reply, from).await;
            }
            // An earlier reply's ICMP "port unreachable" surfaces here.
            Err(err) if matches!(err.kind(), io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionReset) => {}
            Err(err) => {
                say(format_args!("{instance_id}: UDP receive failed: {err}"));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
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

    /// A server under test: where it listens, its faults, how to stop it.
    struct Running {
        addr: SocketAddr,
        faults: Arc<Faults>,
        stop: tokio::sync::oneshot::Sender<()>,
        server: tokio::task::JoinHandle<Result<()>>,
    }

    impl Running {
        async fn stop(self) {
            self.stop.send(()).unwrap();
            tokio::time::timeout(Duration::from_secs(10), self.server).await.unwrap().unwrap().unwrap();
        }
    }

    /// A TCP listener and a UDP socket on the same free loopback port.
    async fn bind_both() -> (TcpListener, UdpSocket) {
        for _ in 0..20 {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            // The port is free for TCP; UDP may still hold it, then try another.
            if let Ok(udp) = UdpSocket::bind(listener.local_addr().unwrap()).await {
                return (listener, udp);
            }
        }
        panic!("no loopback port free for both TCP and UDP");
    }

    async fn start_echo(proxy_protocol: bool) -> Running {
        let (listener, udp) = bind_both().await;
        let addr = listener.local_addr().unwrap();
        let faults = Arc::new(Faults::default());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn({
            let faults = faults.clone();
            async move {
                serve_echo(listener, udp, "i-test", faults, proxy_protocol, async move {
                    let _ = stopped.await;
                })
                .await
            }
        });
        Running { addr, faults, stop, server }
    }

    async fn start_http(proxy_protocol: bool) -> Running {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let faults = Arc::new(Faults::default());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let transport = HttpTransport { tls: None, proxy_protocol };
        let server = tokio::spawn({
            let faults = faults.clone();
            async move {
                serve_with(listener, "i-test", "hi", faults, transport, async move {
                    let _ = stopped.await;
                })
                .await
            }
        });
        Running { addr, faults, stop, server }
    }

    /// Sends `data` on a new connection, half-closes, and returns all that
    /// came back before the server closed; writing and reading run together
    /// so that large echoes cannot fill both directions' buffers.
    async fn exchange(addr: SocketAddr, data: &[u8]) -> io::Result<Vec<u8>> {
        send_and_read(addr, data, true).await
    }

    /// `exchange`, half-closing after `data` only when `half_close`: HTTP
    /// requests end with `Connection: close` instead.
    async fn send_and_read(addr: SocketAddr, data: &[u8], half_close: bool) -> io::Result<Vec<u8>> {
        let stream = TcpStream::connect(addr).await?;
        let (mut reader, mut writer) = stream.into_split();
        let data = data.to_vec();
        let write = async move {
            writer.write_all(&data).await?;
            if half_close {
                writer.shutdown().await?;
            }
            // Keeps the write side open until the server has answered.
            Ok::<_, io::Error>(writer)
        };
        let read = async move {
            let mut received = Vec::new();
            reader.read_to_end(&mut received).await.map(|_| received)
        };
        let (written, received) = tokio::time::timeout(Duration::from_secs(10), async { tokio::join!(write, read) })
            .await
            .expect("timed out");
        // A server that closes before reading everything may reset the
        // write; what was received is what counts.
        let _ = written;
        received
    }

    fn proxy_header(source: &str, destination: &str) -> Vec<u8> {
        use ppp::v2::{Builder, Command, Protocol, Version};
        let addresses: (SocketAddr, SocketAddr) = (source.parse().unwrap(), destination.parse().unwrap());
        Builder::with_addresses(Version::Two | Command::Proxy, Protocol::Stream, addresses).build().unwrap()
    }

    fn local_header() -> Vec<u8> {
        use ppp::v2::{Addresses, Builder, Command, Protocol, Version};
        Builder::with_addresses(Version::Two | Command::Local, Protocol::Unspecified, Addresses::Unspecified)
            .build()
            .unwrap()
    }

    fn joined(parts: &[&[u8]]) -> Vec<u8> {
        parts.concat()
    }

    #[tokio::test]
    async fn echoes_tcp_until_the_client_half_closes() {
        let worker = start_echo(false).await;
        assert_eq!(exchange(worker.addr, b"hello\nworld").await.unwrap(), b"hello\nworld");
        assert_eq!(exchange(worker.addr, b"").await.unwrap(), b"");
        // Prefixes and near misses of `whoami` are plain data.
        for data in [&b"who"[..], b"whoami", b"whoami\r\n", b"whoamI\n", b"xwhoami\n", b"whoamii\n"] {
            assert_eq!(exchange(worker.addr, data).await.unwrap(), data, "{:?}", String::from_utf8_lossy(data));
        }
        let large: Vec<u8> = (0..3_000_000u32).map(|it| (it % 251) as u8).collect();
        assert_eq!(exchange(worker.addr, &large).await.unwrap(), large);
        worker.stop().await;
    }

    #[tokio::test]
    async fn tcp_whoami_answers_with_the_instance_id() {
        let worker = start_echo(false).await;
        assert_eq!(exchange(worker.addr, b"whoami\n").await.unwrap(), b"i-test\n");
        assert_eq!(exchange(worker.addr, b"whoami\nthen\nwhoami\n").await.unwrap(), b"i-test\nthen\nwhoami\n");

        // The line may arrive in pieces.
        let mut stream = TcpStream::connect(worker.addr).await.unwrap();
        stream.write_all(b"who").await.unwrap();
        stream.flush().await.unwrap();
        let mut answer = vec![0u8; 7];
        let asked = async {
            stream.write_all(b"ami\n").await.unwrap();
            stream.read_exact(&mut answer).await.unwrap();
        };
        tokio::time::timeout(Duration::from_secs(5), asked).await.unwrap();
        assert_eq!(answer, b"i-test\n");
        worker.stop().await;
    }

    #[tokio::test]
    async fn echoes_udp_and_answers_whoami() {
        let worker = start_echo(false).await;
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        client.connect(worker.addr).await.unwrap();
        let mut buffer = vec![0u8; 65536];
        for (sent, expected) in [
            (&b"ping"[..], &b"ping"[..]),
            (b"whoami", b"i-test\n"),
            (b"whoami\n", b"i-test\n"),
            (b"whoami\nmore", b"whoami\nmore"),
            (b"", b""),
            (&[7u8; 9000], &[7u8; 9000]),
        ] {
            client.send(sent).await.unwrap();
            let read = tokio::time::timeout(Duration::from_secs(5), client.recv(&mut buffer)).await.unwrap().unwrap();
            assert_eq!(&buffer[..read], expected, "{:?}", String::from_utf8_lossy(sent));
        }
        worker.stop().await;
    }

    #[tokio::test]
    async fn stop_listener_closes_tcp_and_keeps_udp() {
        let worker = start_echo(false).await;
        worker.faults.stop_listener();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while TcpStream::connect(worker.addr).await.is_ok() {
            assert!(tokio::time::Instant::now() < deadline, "the TCP listener never closed");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        client.connect(worker.addr).await.unwrap();
        client.send(b"still there").await.unwrap();
        let mut buffer = [0u8; 64];
        let read = tokio::time::timeout(Duration::from_secs(5), client.recv(&mut buffer)).await.unwrap().unwrap();
        assert_eq!(&buffer[..read], b"still there");
        assert!(!worker.server.is_finished(), "the worker stays up after its listener stops");
        worker.stop().await;
    }

    #[tokio::test]
    async fn echo_reports_the_proxy_source() {
        let worker = start_echo(true).await;
        let header = proxy_header("203.0.113.7:4321", "127.0.0.10:9000");
        let received = exchange(worker.addr, &joined(&[&header, b"whoami\nabc"])).await.unwrap();
        assert_eq!(String::from_utf8_lossy(&received), "proxy 203.0.113.7:4321\ni-test\nabc");
        let header = proxy_header("[2001:db8::1]:5000", "[::1]:9000");
        let received = exchange(worker.addr, &joined(&[&header, b"data"])).await.unwrap();
        assert_eq!(String::from_utf8_lossy(&received), "proxy [2001:db8::1]:5000\ndata");
        let received = exchange(worker.addr, &joined(&[&local_header(), b"health"])).await.unwrap();
        assert_eq!(String::from_utf8_lossy(&received), "health");
        // Without its header a connection gets nothing back.
        assert!(exchange(worker.addr, b"whoami\n").await.unwrap_or_default().is_empty());
        worker.stop().await;
    }

    #[tokio::test]
    async fn http_answers_carry_the_proxy_addresses() {
        let worker = start_http(true).await;
        let requests: &[u8] =
            b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";

        // The header and the requests in one write: none of the requests'
        // bytes may be taken for the header.
        let header = proxy_header("203.0.113.7:4321", "127.0.0.10:9000");
        let received = send_and_read(worker.addr, &joined(&[&header, requests]), false).await.unwrap();
        let text = String::from_utf8_lossy(&received).to_lowercase();
        assert_eq!(text.matches("http/1.1 200 ok").count(), 2, "{text}");
        assert_eq!(text.matches("x-seen-proxy-source: 203.0.113.7:4321\r\n").count(), 2, "{text}");
        assert_eq!(text.matches("x-seen-proxy-destination: 127.0.0.10:9000\r\n").count(), 2, "{text}");
        assert!(text.contains(&format!("hi from i-test at {} path=/a\n", worker.addr)), "{text}");
        assert!(text.contains("path=/b\n"), "{text}");

        let received = send_and_read(worker.addr, &joined(&[&local_header(), requests]), false).await.unwrap();
        let text = String::from_utf8_lossy(&received).to_lowercase();
        assert_eq!(text.matches("http/1.1 200 ok").count(), 2, "{text}");
        assert!(!text.contains("x-seen-proxy"), "{text}");
        worker.stop().await;
    }

    #[tokio::test]
    async fn http_without_proxy_protocol_adds_nothing() {
        let worker = start_http(false).await;
        let request: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
        let received = send_and_read(worker.addr, request, false).await.unwrap();
        let text = String::from_utf8_lossy(&received).to_lowercase();
        assert!(text.starts_with("http/1.1 200 ok"), "{text}");
        assert!(!text.contains("x-seen-proxy"), "{text}");
        worker.stop().await;
    }

    #[tokio::test]
    async fn a_bad_proxy_header_closes_the_connection() {
        let worker = start_http(true).await;
        let plain: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
        let mut version_one = proxy_header("203.0.113.7:4321", "127.0.0.10:9000");
        version_one[12] = 0x11;
        let mut short_length = proxy_header("203.0.113.7:4321", "127.0.0.10:9000");
        short_length[15] = 4;
        for (name, data) in [
            ("plain HTTP", plain.to_vec()),
            ("version 1 byte", joined(&[&version_one, plain])),
            ("length shorter than the addresses", joined(&[&short_length, plain])),
            ("half a header", proxy_header("203.0.113.7:4321", "127.0.0.10:9000")[..10].to_vec()),
        ] {
            let received = exchange(worker.addr, &data).await.unwrap_or_default();
            assert!(received.is_empty(), "{name}: {:?}", String::from_utf8_lossy(&received));
        }
        // The server goes on serving well-formed connections.
        let header = proxy_header("203.0.113.7:4321", "127.0.0.10:9000");
        let received = send_and_read(worker.addr, &joined(&[&header, plain]), false).await.unwrap();
        assert!(String::from_utf8_lossy(&received).starts_with("HTTP/1.1 200 OK"));
        worker.stop().await;
    }

    #[tokio::test]
    async fn reads_exactly_the_proxy_header() {
        use ppp::v2::{Builder, Command, Protocol, Type, Version};
        let addresses: (SocketAddr, SocketAddr) =
            ("203.0.113.7:4321".parse().unwrap(), "127.0.0.10:9000".parse().unwrap());
        // A TLV makes the announced length longer than the addresses.
        let header = Builder::with_addresses(Version::Two | Command::Proxy, Protocol::Stream, addresses)
            .write_tlv(Type::NoOp, b"padding")
            .unwrap()
            .build()
            .unwrap();
        let (mut client, mut server) = tokio::io::duplex(1024);
        client.write_all(&joined(&[&header, b"payload"])).await.unwrap();
        drop(client);
        let proxied = read_proxy_header(&mut server, Duration::from_secs(5)).await.unwrap();
        assert_eq!(proxied, Some(ProxiedAddresses { source: addresses.0, destination: addresses.1 }));
        let mut rest = Vec::new();
        server.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"payload");

        let (mut client, mut server) = tokio::io::duplex(1024);
        client.write_all(&local_header()).await.unwrap();
        assert_eq!(read_proxy_header(&mut server, Duration::from_secs(5)).await.unwrap(), None);

        // A probe that only opens the port is told apart from a bad header.
        let (client, mut server) = tokio::io::duplex(1024);
        drop(client);
        let err = read_proxy_header(&mut server, Duration::from_secs(5)).await.unwrap_err();
        assert!(err.is::<NothingSent>(), "{err:#}");

        // A client that sends nothing is given up on.
        let (_client, mut server) = tokio::io::duplex(1024);
        let err = read_proxy_header(&mut server, Duration::from_millis(50)).await.unwrap_err();
        assert!(err.to_string().contains("within"), "{err:#}");
    }
}
