//! The load balancer process (`lbctl internal proxy CONFIG`): application
//! and network load balancers alike.
//!
//! It serves one `ProxyConfig` (`lb/<name>/config.json`) until SIGTERM or
//! SIGINT, reloading it whenever the file's bytes change, and reports through
//! `lb/<name>/status.json`. It is organised like pingora's load-balancing
//! crate, one concern per module:
//!
//! | module | owns |
//! | --- | --- |
//! | this one | the entry point, listeners, configuration reload, shutdown |
//! | `connection` | client connections: the limit, the per-connection watchdog, listening sockets |
//! | `router` | rules compiled per configuration, request matching |
//! | `action` | forward, weighted forward, redirect and fixed-response actions |
//! | `forward` | the request path: routing, forwarding, error answers |
//! | `client_body` | a client's request body on its way to a target, timed by the idle timeout |
//! | `forwarding` | the headers changed on the way to a target: hop-by-hop out, `X-Forwarded-*` in |
//! | `target_group` | one group's manager: discovery, health and selection together |
//! | `discovery` | reading a group's registry files |
//! | `health_check` | probes and the per-target health state machine |
//! | `head_guard` | request-head checks hyper does not make: conflicting framing, slow heads |
//! | `selection` | routable targets, the balancing algorithms, slow start, stickiness |
//! | `lambda` | function targets: the ALB Lambda event in, the response document out |
//! | `network` | network load balancer listeners: TCP and TLS connections, UDP flows |
//! | `relay` | moving a connection's bytes both ways: splice, or a buffer for TLS |
//! | `retry` | a request whose target died, once more on another target |
//! | `status` | the status file |
//! | `upstream` | connections to targets: HTTP/1.1 or HTTP/2, plain or TLS |
//! | `h1_client` | HTTP/1.1 to a plain target for a bodiless request, driven by the request's own task |
//! | `h1_server` | HTTP/1.1 from clients for bodiless requests; hands anything else to hyper's server |
//!
//! The same process serves both kinds of load balancer: HTTP and HTTPS
//! listeners (application), TCP, TLS and UDP listeners (network), all bound
//! to the configuration's `bind_ip`. HTTPS and TLS listeners use the
//! certificate files the configuration names, loaded once per configuration;
//! a listener whose certificate cannot be loaded is skipped and reported in
//! the status's `errors`.

mod access_log;
mod action;
mod client_body;
mod connection;
mod discovery;
mod forward;
mod forwarding;
mod h1_client;
mod h1_server;
mod head_guard;
mod health_check;
mod lambda;
mod network;
mod observe;
mod refused;
mod relay;
mod retry;
mod router;
mod selection;
mod status;
mod target_group;
mod tunnel;
mod upstream;

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use arc_swap::ArcSwap;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use lbctl_spec::ListenerProtocol;
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use self::access_log::AccessLog;
use self::connection::{Activity, Admitted, ConnectionLimit};
use self::forward::{ConnectionInfo, Frontend, ListenerContext, Observe};
use self::observe::LbStats;
use self::status::StatusBoard;
use self::target_group::TargetGroup;
use self::upstream::Upstream;
use crate::runtime::{self, ProxyConfig};

/// How often the configuration file is checked for changes.
const CONFIG_POLL: Duration = Duration::from_millis(200);
/// How long in-flight requests may take to finish when a listener closes.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a port that could not be bound is tried again.
const BIND_RETRY: Duration = Duration::from_secs(1);
/// How long a client may take to finish the TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest request head (request line and headers) accepted, in bytes:
/// AWS's limit for the whole header block. A larger HTTP/1 head gets 431
/// from hyper (as soon as the read buffer holds this much without a
/// complete head, so a client cannot make the proxy buffer more); it is also
/// the HTTP/2 header list limit.
const MAX_REQUEST_HEAD_BYTES: usize = 64 * 1024;
/// AWS's limits on a request's line and on each of its header lines
/// (`name: value`), in bytes: a longer request line gets 414, a longer
/// header line 431 (`forward::refusal`).
const MAX_REQUEST_LINE_BYTES: usize = 16 * 1024;
const MAX_FIELD_LINE_BYTES: usize = 16 * 1024;

/// Runs the proxy of the configuration file at `config_path` until SIGTERM
/// or SIGINT; blocking. In-flight requests get a few seconds to finish, and
/// the status file is removed on the way out.
pub fn run(config_path: &Path) -> Result<()> {
    let dir = config_path.parent().context("the configuration file has no directory")?;
    let _pid_file = runtime::PidFile::hold(dir, "proxy")?;
    let (_, config) = load_config(config_path)?;
    let threads = match config.worker_threads {
        0 => std::thread::available_parallelism().map(|it| it.get()).unwrap_or(1),
        threads => threads,
    };
    // One worker thread: a current-thread runtime, where every task runs on
    // the one thread with no cross-thread wake-ups or work stealing (the
    // cheapest scheduler tokio has, and the closest to an nginx worker).
    let mut builder = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(threads);
        builder
    };
    let runtime = builder.thread_name("lbctl-proxy").enable_all().build().context("starting the runtime")?;
    let result = runtime.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
        let shutdown = async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        };
        serve(config_path, shutdown).await
    });
    runtime.shutdown_timeout(Duration::from_millis(500));
    result
}

/// Serves the configuration file at `config_path` on the current tokio
/// runtime until `shutdown` resolves; `run` without the signals and the
/// runtime, for embedding and tests.
pub async fn serve(config_path: &Path, shutdown: impl Future<Output = ()>) -> Result<()> {
    let (bytes, config) = load_config(config_path)?;
    let name = config.name.clone();
    let board = Arc::new(StatusBoard::new(config.layout.lb_dir(&config.name).join("status.json")));
    eprintln!("proxy {name}: starting (pid {})", std::process::id());
    let mut proxy = Proxy::new(config_path, board.clone());
    let network = config.kind == Some(lbctl_spec::LoadBalancerType::Network);
    let metrics = match serve_metrics(board.clone(), name.clone(), network, proxy.stats.clone()).await {
        Ok((url, task)) => {
            board.update(|report| report.metrics_url = Some(url));
            Some(task)
        }
        Err(err) => {
            eprintln!("proxy {name}: no metrics endpoint: {err:#}");
            None
        }
    };
    proxy.apply(config, runtime::digest(&bytes)).await;
    // The provider waits for this file: write it as soon as the ports are bound.
    if let Err(err) = board.write() {
        eprintln!("proxy {name}: cannot write the status file: {err:#}");
    }
    let writer = AbortOnDrop(tokio::spawn(status::write_loop(board.clone())));
    let mut poll = tokio::time::interval(CONFIG_POLL);
    poll.set_missed_tick_behavior(MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = poll.tick() => proxy.tick().await,
        }
    }
    eprintln!("proxy {name}: shutting down");
    drop(writer);
    drop(metrics);
    proxy.shutdown().await;
    eprintln!("proxy {name}: stopped");
    Ok(())
}

/// Serves the load balancer's Prometheus metrics on a free loopback port:
/// `GET /metrics`. Returns its URL and the task.
async fn serve_metrics(
    board: Arc<StatusBoard>,
    name: String,
    network: bool,
    stats: Arc<LbStats>,
) -> Result<(String, AbortOnDrop)> {
    let listener = TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)).await.context("binding the metrics port")?;
    let url = format!("http://{}/metrics", listener.local_addr()?);
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let (board, name, stats) = (board.clone(), name.clone(), stats.clone());
            tokio::spawn(async move {
                let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                    let text = board.metrics(&name, network, &stats);
                    async move {
                        let response = if request.uri().path() == "/metrics" {
                            hyper::Response::builder()
                                .header("content-type", "text/plain; version=0.0.4; charset=utf-8")
                                .body(http_body_util::Full::new(bytes::Bytes::from(text)))
                        } else {
                            hyper::Response::builder().status(404).body(http_body_util::Full::new(
                                bytes::Bytes::from_static(b"metrics are at /metrics\n"),
                            ))
                        };
                        Ok::<_, Infallible>(response.unwrap_or_default())
                    }
                });
                let _ =
                    hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
    Ok((url, AbortOnDrop(task)))
}

/// Reads and parses a configuration file, returning its bytes too.
fn load_config(path: &Path) -> Result<(Vec<u8>, ProxyConfig)> {
    let bytes = runtime::read_trusted(path)?.with_context(|| format!("{} does not exist", path.display()))?;
    let config = serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", path.display()))?;
    Ok((bytes, config))
}

/// A task that is aborted when this is dropped.
pub(crate) struct AbortOnDrop(pub(crate) JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A running target group and its manager task.
struct GroupHandle {
    group: Arc<TargetGroup>,
    _manager: AbortOnDrop,
}

/// A listener's port and transport: a TCP and a UDP listener may share a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct ListenerKey {
    port: u16,
    udp: bool,
}

/// What a listener serves, compiled from the configuration.
enum Compiled {
    /// HTTP or HTTPS.
    Http(Box<ListenerContext>),
    /// TCP or TLS.
    Stream(network::StreamContext),
    /// UDP.
    Datagram(network::DatagramContext),
}

/// The live context of a bound listener, swapped on reload.
enum Served {
    Http(Arc<Frontend>),
    Stream(Arc<ArcSwap<network::StreamContext>>),
    Datagram(Arc<ArcSwap<network::DatagramContext>>),
}

impl Served {
    /// Gives a bound listener its new context; false when the listener
    /// serves another kind and must be bound again.
    fn swap(&self, compiled: Compiled) -> Result<(), Compiled> {
        match (self, compiled) {
            (Served::Http(frontend), Compiled::Http(context)) => frontend.context.store(Arc::from(context)),
            (Served::Stream(served), Compiled::Stream(context)) => served.store(Arc::new(context)),
            (Served::Datagram(served), Compiled::Datagram(context)) => served.store(Arc::new(context)),
            (_, compiled) => return Err(compiled),
        }
        Ok(())
    }
}

/// A bound listener and its accept task.
struct ListenerHandle {
    served: Served,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// A listener of the configuration whose port is not bound (yet).
struct Unbound {
    compiled: Compiled,
    error: String,
}

/// The proxy's mutable state, owned by its main loop.
struct Proxy {
    config_path: PathBuf,
    /// The configuration applied, and the digest of its file's bytes.
    config: Option<ProxyConfig>,
    applied: String,
    /// Why the configuration file on disk is not applied, and its digest.
    rejected: Option<(String, String)>,
    upstream: Upstream,
    /// Client connections and UDP flows of every listener, bounded.
    limit: Arc<ConnectionLimit>,
    /// The file descriptors this process may open (the default limit's base).
    descriptors: u64,
    board: Arc<StatusBoard>,
    groups: BTreeMap<String, GroupHandle>,
    listeners: BTreeMap<ListenerKey, ListenerHandle>,
    unbound: BTreeMap<ListenerKey, Unbound>,
    last_bind_attempt: Instant,
    /// Problems of the applied configuration (unsupported listeners, bad rules).
    config_errors: Vec<String>,
    /// Accept tasks of closed listeners, still draining their connections.
    retiring: Vec<JoinHandle<()>>,
    /// The load balancer's counters, for the metrics.
    stats: Arc<LbStats>,
    /// Its access log, when on, and its path.
    access_log: Option<(PathBuf, Arc<AccessLog>)>,
}

impl Proxy {
    fn new(config_path: &Path, board: Arc<StatusBoard>) -> Proxy {
        Proxy {
            config_path: config_path.to_path_buf(),
            config: None,
            applied: String::new(),
            rejected: None,
            upstream: Upstream::new(),
            limit: ConnectionLimit::new(usize::MAX),
            descriptors: connection::raise_descriptor_limit(),
            board,
            groups: BTreeMap::new(),
            listeners: BTreeMap::new(),
            unbound: BTreeMap::new(),
            last_bind_attempt: Instant::now(),
            config_errors: Vec::new(),
            retiring: Vec::new(),
            stats: Arc::new(LbStats::default()),
            access_log: None,
        }
    }

    fn name(&self) -> &str {
        self.config.as_ref().map_or("", |it| it.name.as_str())
    }

    /// One poll: reload the configuration if its file changed, retry ports
    /// that could not be bound, forget listeners that finished draining.
    async fn tick(&mut self) {
        self.retiring.retain(|it| !it.is_finished());
        match runtime::read_trusted(&self.config_path) {
            Ok(Some(bytes)) => {
                let digest = runtime::digest(&bytes);
                if digest == self.applied {
                    // The applied file is back (after a bad edit): nothing is wrong any more.
                    if self.rejected.take().is_some() {
                        self.publish();
                    }
                } else if self.rejected.as_ref().is_none_or(|(it, _)| *it != digest) {
                    match serde_json::from_slice::<ProxyConfig>(&bytes) {
                        Ok(config) => {
                            eprintln!("proxy {}: applying configuration {digest}", self.name());
                            self.rejected = None;
                            self.apply(config, digest).await;
                            return;
                        }
                        Err(err) => self.reject(digest, format!("{}: {err}", self.config_path.display())),
                    }
                }
            }
            Ok(None) => self.reject(String::new(), format!("{} does not exist", self.config_path.display())),
            Err(err) => self.reject(String::new(), format!("{err:#}")),
        }
        if !self.unbound.is_empty() && self.last_bind_attempt.elapsed() >= BIND_RETRY && self.bind_pending().await {
            self.publish();
        }
    }

    /// Keeps serving the applied configuration and reports why the file is not used.
    fn reject(&mut self, digest: String, problem: String) {
        if self.rejected.as_ref().is_some_and(|(it, _)| *it == digest) {
            return;
        }
        eprintln!("{} proxy {}: keeping the current configuration: {problem}", runtime::log_time(), self.name());
        self.rejected = Some((digest, problem));
        self.publish();
    }

    /// Applies a configuration: target groups, rules, listeners.
    async fn apply(&mut self, config: ProxyConfig, digest: String) {
        let previous = self.config.take();
        let mut errors = Vec::new();

        // Target groups: every group named, and every group an action forwards to.
        let mut wanted: BTreeSet<String> = config.target_groups.iter().cloned().collect();
        for listener in &config.listeners {
            wanted.extend(referenced_groups(listener).map(str::to_string));
        }
        if previous.as_ref().is_some_and(|it| it.layout != config.layout) {
            self.groups.clear();
        }
        self.groups.retain(|name, _| wanted.contains(name));
        for name in wanted {
            self.groups.entry(name).or_insert_with_key(|name| {
                let group = TargetGroup::new(&config.stack, name);
                let board = self.board.clone();
                let manager = target_group::manage(group.clone(), config.layout.clone(), move || board.touch());
                GroupHandle { group, _manager: AbortOnDrop(tokio::spawn(manager)) }
            });
        }

        // The access log: opened when asked for, closed when not.
        match &config.access_log {
            None => self.access_log = None,
            Some(path) if self.access_log.as_ref().is_some_and(|(open, _)| open == path) => {}
            Some(path) => match AccessLog::open(path) {
                Ok(log) => self.access_log = Some((path.clone(), Arc::new(log))),
                Err(err) => {
                    errors.push(format!("access log: {err:#}"));
                    self.access_log = None;
                }
            },
        }
        let kind = if config.kind == Some(lbctl_spec::LoadBalancerType::Network) { "net" } else { "app" };
        let observe = Arc::new(Observe {
            stats: self.stats.clone(),
            log: self.access_log.as_ref().map(|(_, log)| log.clone()),
            elb: format!("{kind}/{}/{}", config.name, access_log::resource_id(&config.stack, &config.name)),
        });

        let network_observe = Arc::new(network::Observe {
            stats: self.stats.clone(),
            log: observe.log.clone().map(|log| (log, observe.elb.clone())),
        });

        // Listeners: compile every usable one.
        let mut contexts: BTreeMap<ListenerKey, Compiled> = BTreeMap::new();
        for listener in &config.listeners {
            let port = listener.port;
            let key = ListenerKey { port, udp: listener.protocol == ListenerProtocol::Udp };
            if contexts.contains_key(&key) {
                errors.push(format!("listener {port}: the port is used by another listener"));
                continue;
            }
            let tls = match listener.protocol {
                ListenerProtocol::Https | ListenerProtocol::Tls => match listener_tls(&config, port) {
                    Ok(acceptor) => Some(acceptor),
                    Err(err) => {
                        errors.push(format!("listener {port}: {err:#}"));
                        continue;
                    }
                },
                ListenerProtocol::Http | ListenerProtocol::Tcp | ListenerProtocol::Udp => None,
            };
            let groups = &self.groups;
            let mut resolve = |name: &str| {
                groups.get(name).map(|it| it.group.clone()).unwrap_or_else(|| TargetGroup::new(&config.stack, name))
            };
            let compiled = match listener.protocol {
                ListenerProtocol::Http | ListenerProtocol::Https => {
                    let (mut context, problems) =
                        ListenerContext::compile(listener, &config, observe.clone(), &mut resolve);
                    context.tls = tls;
                    errors.extend(problems.into_iter().map(|it| format!("listener {port}: {it}")));
                    Compiled::Http(Box::new(context))
                }
                ListenerProtocol::Tcp | ListenerProtocol::Tls | ListenerProtocol::Udp => {
                    // Validation allows a network listener one target group.
                    let Some(group) = referenced_groups(listener).next() else {
                        errors.push(format!("listener {port}: a network listener forwards to one target group"));
                        continue;
                    };
                    let group = resolve(group);
                    let observe = network_observe.clone();
                    if key.udp {
                        Compiled::Datagram(network::DatagramContext { group, bind_ip: config.bind_ip, observe })
                    } else {
                        let idle_timeout = Duration::from_millis(config.idle_timeout_ms);
                        let address = SocketAddr::from((config.bind_ip, port));
                        Compiled::Stream(network::StreamContext { group, tls, idle_timeout, address, observe })
                    }
                }
            };
            contexts.insert(key, compiled);
        }

        // Close what is gone, swap the contexts of what stays, bind what is new.
        let rebind = previous.as_ref().is_some_and(|it| it.bind_ip != config.bind_ip);
        let closing: Vec<ListenerKey> =
            self.listeners.keys().copied().filter(|key| rebind || !contexts.contains_key(key)).collect();
        for key in closing {
            self.close_listener(key);
        }
        self.unbound.clear();
        for (key, compiled) in contexts {
            let compiled = match self.listeners.get(&key) {
                Some(listener) => match listener.served.swap(compiled) {
                    Ok(()) => continue,
                    Err(compiled) => {
                        self.close_listener(key);
                        compiled
                    }
                },
                None => compiled,
            };
            self.unbound.insert(key, Unbound { compiled, error: String::new() });
        }
        let max_connections = config
            .max_connections
            .map(|it| it as usize)
            .unwrap_or_else(|| connection::default_max_connections(self.descriptors));
        self.limit.set_max(max_connections);
        self.config = Some(config);
        self.applied = digest;
        self.config_errors = errors;
        self.bind_pending().await;
        self.publish();
    }

    /// Stops a listener's accepting; what it accepted finishes on its own.
    fn close_listener(&mut self, key: ListenerKey) {
        if let Some(listener) = self.listeners.remove(&key) {
            let transport = if key.udp { "udp" } else { "tcp" };
            eprintln!("proxy {}: closing {transport} port {}", self.name(), key.port);
            let _ = listener.stop.send(true);
            self.retiring.push(listener.task);
        }
    }

    /// Binds the ports not bound yet; true when any was.
    async fn bind_pending(&mut self) -> bool {
        self.last_bind_attempt = Instant::now();
        let Some(config) = &self.config else { return false };
        let (ip, name) = (config.bind_ip, config.name.clone());
        let mut bound = false;
        let keys: Vec<ListenerKey> = self.unbound.keys().copied().collect();
        for key in keys {
            let port = key.port;
            let attempt = if key.udp {
                UdpSocket::bind((ip, port)).await.map(Bound::Udp)
            } else {
                connection::listen(ip, port).map(Bound::Tcp)
            };
            match attempt {
                Ok(socket) => {
                    let pending = self.unbound.remove(&key).expect("listed above");
                    let (stop, stopped) = watch::channel(false);
                    let (served, task) = match (pending.compiled, socket) {
                        (Compiled::Http(context), Bound::Tcp(listener)) => {
                            let frontend = Arc::new(Frontend {
                                context: ArcSwap::from(Arc::from(context)),
                                upstream: self.upstream.clone(),
                            });
                            let task =
                                tokio::spawn(accept_loop(listener, frontend.clone(), self.limit.clone(), stopped));
                            (Served::Http(frontend), task)
                        }
                        (Compiled::Stream(context), Bound::Tcp(listener)) => {
                            let context = Arc::new(ArcSwap::from_pointee(context));
                            let limit = self.limit.clone();
                            let task = tokio::spawn(network::accept_streams(listener, context.clone(), limit, stopped));
                            (Served::Stream(context), task)
                        }
                        (Compiled::Datagram(context), Bound::Udp(socket)) => {
                            let context = Arc::new(ArcSwap::from_pointee(context));
                            let limit = self.limit.clone();
                            let task = tokio::spawn(network::serve_datagrams(socket, context.clone(), limit, stopped));
                            (Served::Datagram(context), task)
                        }
                        _ => unreachable!("UDP keys hold datagram contexts and bind UDP sockets"),
                    };
                    let transport = if key.udp { "udp" } else { "tcp" };
                    eprintln!("proxy {name}: listening on {transport} {ip}:{port}");
                    self.listeners.insert(key, ListenerHandle { served, stop, task });
                    bound = true;
                }
                Err(err) => {
                    let error = format!("listener {port}: cannot listen on {ip}:{port}: {err}");
                    let pending = self.unbound.get_mut(&key).expect("listed above");
                    if pending.error != error {
                        eprintln!("proxy {name}: {error}");
                        pending.error = error;
                    }
                }
            }
        }
        bound
    }

    /// Puts the current state on the status board.
    fn publish(&self) {
        let mut errors = self.config_errors.clone();
        errors.extend(self.unbound.values().map(|it| it.error.clone()).filter(|it| !it.is_empty()));
        if let Some((_, problem)) = &self.rejected {
            errors.push(format!("configuration not applied: {problem}"));
        }
        let listening: BTreeSet<u16> = self.listeners.keys().map(|it| it.port).collect();
        let listening = listening.into_iter().collect();
        let groups = self.groups.values().map(|it| it.group.clone()).collect();
        let digest = self.applied.clone();
        let limit = self.limit.clone();
        self.board.update(move |report| {
            report.limit = Some(limit);
            report.config_digest = digest;
            report.listening = listening;
            report.errors = errors;
            report.groups = groups;
        });
    }

    /// Stops accepting, lets in-flight requests finish (for a while), stops
    /// the target groups and removes the status file.
    async fn shutdown(mut self) {
        for (_, listener) in std::mem::take(&mut self.listeners) {
            let _ = listener.stop.send(true);
            self.retiring.push(listener.task);
        }
        let deadline = Instant::now() + DRAIN_TIMEOUT + Duration::from_secs(1);
        for task in self.retiring.drain(..) {
            let _ = tokio::time::timeout_at(deadline, task).await;
        }
        self.groups.clear();
        self.board.remove();
    }
}

/// A bound listening socket.
enum Bound {
    Tcp(TcpListener),
    Udp(UdpSocket),
}

/// The TLS acceptor of the HTTPS or TLS listener on `port`, from the certificate
/// files the configuration gives for it.
fn listener_tls(config: &ProxyConfig, port: u16) -> Result<tokio_rustls::TlsAcceptor> {
    let files = config.certificates.get(&port).context("the configuration names no certificate files for it")?;
    let server_config = crate::tls::server_config_from_files(&files.cert, &files.key)?;
    Ok(tokio_rustls::TlsAcceptor::from(server_config))
}

/// The target groups a listener's actions forward to.
fn referenced_groups(listener: &lbctl_spec::Listener) -> impl Iterator<Item = &str> {
    std::iter::once(&listener.default_action)
        .chain(listener.rules.iter().map(|it| &it.action))
        .filter_map(|it| it.forward.as_ref())
        .flat_map(|it| it.target_groups())
}

/// Accepts connections until told to stop, then closes the socket and lets
/// the open connections finish their requests (for `DRAIN_TIMEOUT` at most).
async fn accept_loop(
    listener: TcpListener,
    frontend: Arc<Frontend>,
    limit: Arc<ConnectionLimit>,
    mut stop: watch::Receiver<bool>,
) {
    // Cancelled when the listener closes: every connection finishes what is
    // in flight and closes. The tracker tells when they all have.
    let shutdown = CancellationToken::new();
    let connections = TaskTracker::new();
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    // Past the limit the connection is closed at once.
                    let Some(admitted) = limit.admit("connection") else { continue };
                    let frontend = frontend.clone();
                    connections.spawn(serve_connection(stream, peer, frontend, admitted, shutdown.clone()));
                }
                Err(err) => {
                    // Out of file descriptors, typically: wait instead of spinning.
                    if !matches!(err.kind(), std::io::ErrorKind::ConnectionAborted | std::io::ErrorKind::ConnectionReset) {
                        eprintln!("{} proxy: accept failed: {err}", runtime::log_time());
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            },
        }
    }
    drop(listener);
    shutdown.cancel();
    connections.close();
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, connections.wait()).await;
}

/// Serves one client connection: HTTP/1.1 or HTTP/2 with prior knowledge
/// (h2c) on a plain listener; on an HTTPS listener the same after the TLS
/// handshake (within `TLS_HANDSHAKE_TIMEOUT`), HTTP/2 being chosen through
/// ALPN. The handshake runs on the connection's own task, never in the
/// accept loop.
async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    frontend: Arc<Frontend>,
    _admitted: Admitted,
    shutdown: CancellationToken,
) {
    let (tls, stats) = {
        let context = frontend.context.load();
        (context.tls.clone(), context.observe.stats.clone())
    };
    stats.new_connections.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let trace_id = format!("TID_{:016x}", rand::random::<u64>());
    match tls {
        None => serve_http(stream, peer, frontend, ConnectionInfo::new(peer, None, trace_id), shutdown).await,
        Some(acceptor) => {
            if let Ok(Ok(stream)) = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                let tls = Some(crate::tls::session_summary(stream.get_ref().1));
                serve_http(stream, peer, frontend, ConnectionInfo::new(peer, tls, trace_id), shutdown).await;
            }
        }
    }
}

/// Serves HTTP on an accepted (and, on HTTPS listeners, decrypted) connection
/// until it closes, its watchdog closes it (a silent client, an idle
/// connection; see `connection`) or `shutdown` ends it.
async fn serve_http<I>(
    io: I,
    peer: SocketAddr,
    frontend: Arc<Frontend>,
    connection: ConnectionInfo,
    shutdown: CancellationToken,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let idle_timeout = frontend.context.load().idle_timeout;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // Heads, idle keep-alive connections and HTTP/2 connections are timed
    // by the connection's watchdog (one timer per connection), not by
    // hyper's per-request header timer.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        // At most 100 header fields, more get 431: hyper's default, left
        // unset because setting it (even to 100) makes hyper initialise a
        // field array on every parse (tests/hardening.rs pins the limit).
        .max_buf_size(MAX_REQUEST_HEAD_BYTES);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(MAX_REQUEST_HEAD_BYTES as u32)
        .max_concurrent_streams(connection::MAX_CONCURRENT_STREAMS);
    let activity = Activity::new();
    let connection = Arc::new(connection);
    let closing = CancellationToken::new();
    let io = head_guard::HeadGuard::new(io, activity.clone());
    let serving = async {
        let shared = h1_server::Shared {
            frontend: &frontend,
            peer,
            connection: &connection,
            activity: &activity,
            closing: &closing,
        };
        let (io, traffic) = match h1_server::serve(io, shared).await {
            h1_server::Served::Closed => return,
            h1_server::Served::Handover(mut io, read) => {
                let traffic = Arc::new(refused::Traffic::handed_over(read.len() as u64));
                io.unread(read);
                io.count_into(traffic.clone());
                (io, traffic)
            }
        };
        // Closing already: one more answer (the request handed over), then
        // close; a graceful shutdown now could cancel hyper's look at the
        // protocol and lose that request.
        let closed_already = closing.is_cancelled();
        if closed_already {
            builder.http1().keep_alive(false);
        }
        let io = TokioIo::new(io);
        let served = builder
            .serve_connection_with_upgrades(io, hyper_service(&frontend, peer, &connection, &activity, &traffic));
        tokio::pin!(served);
        let result = if closed_already {
            served.await
        } else {
            tokio::select! {
                biased;
                result = served.as_mut() => result,
                () = closing.cancelled() => {
                    served.as_mut().graceful_shutdown();
                    served.await
                }
            }
        };
        // A request hyper refused and answered itself is logged and
        // counted as AWS does.
        if let Some(status) = result.err().and_then(|it| refused::status_of(&*it)) {
            let (received, sent) = traffic.since_request();
            forward::refused(&frontend, &connection, status, received, sent);
        }
    };
    connection::watch(serving, |_| closing.cancel(), &activity, idle_timeout, shutdown).await;
}

/// The request path as hyper's server calls it.
fn hyper_service(
    frontend: &Arc<Frontend>,
    peer: SocketAddr,
    connection: &Arc<ConnectionInfo>,
    activity: &Arc<Activity>,
    traffic: &Arc<refused::Traffic>,
) -> impl hyper::service::Service<
    hyper::Request<hyper::body::Incoming>,
    Response = hyper::Response<forward::ProxyBody>,
    Error = Infallible,
    Future = impl Future<Output = Result<hyper::Response<forward::ProxyBody>, Infallible>> + Send,
> + Clone {
    let (frontend, connection, requests, traffic) =
        (frontend.clone(), connection.clone(), activity.clone(), traffic.clone());
    service_fn(move |request| {
        traffic.request_started();
        let frontend = frontend.clone();
        let connection = connection.clone();
        let request_guard = requests.request();
        async move {
            let request = request.map(client_body::UpstreamBody::Client);
            // Over AWS's limits, or without exactly one Host (RFC 9112
            // §3.2): `h1_server` hands such a request over.
            if let Some(status) = forward::refusal(&request) {
                drop(request_guard);
                return Ok(forward::refused_request(&frontend, &request, &connection, status));
            }
            let mut response = Box::pin(forward::handle(&frontend, request, peer, &connection)).await;
            if response.status() == hyper::StatusCode::SWITCHING_PROTOCOLS {
                request_guard.switched_protocols();
            }
            drop(request_guard);
            // hyper's server writes the header map only.
            if let Some(fields) = response.body_mut().take_fields() {
                fields.add_to(response.headers_mut());
            }
            Ok::<_, Infallible>(response)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::{HealthState, Layout, ProxyStatus, RegisteredTarget, Registrations, TargetGroupConfig};
    use crate::worker;
    use bytes::Bytes;
    use http_body_util::{BodyExt, Empty};
    use hyper::{HeaderMap, Request, StatusCode};
    use hyper_util::client::legacy::connect::HttpConnector;
    use hyper_util::client::legacy::Client;
    use std::net::Ipv4Addr;
    use tokio::sync::oneshot;

    type TestClient = Client<HttpConnector, Empty<Bytes>>;

    /// A demo worker serving on a free port until its sender is dropped or fired.
    struct TestWorker {
        target: RegisteredTarget,
        stop: oneshot::Sender<()>,
        task: JoinHandle<Result<()>>,
    }

    async fn start_worker(id: &str) -> TestWorker {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (stop, stopped) = oneshot::channel::<()>();
        let id_owned = id.to_string();
        let task = tokio::spawn(async move {
            let faults = Arc::new(worker::Faults::default());
            worker::serve(listener, &id_owned, "hello", faults, async move {
                let _ = stopped.await;
            })
            .await
        });
        TestWorker { target: RegisteredTarget { id: id.into(), ip: Ipv4Addr::LOCALHOST, port }, stop, task }
    }

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
    }

    /// A stack layout with target group `web` (fast health checks) and `targets` registered in it.
    fn write_group(layout: &Layout, targets: &[RegisteredTarget]) {
        let yaml = "{ port: 8080, health_check: { path: /health, interval: 100ms, timeout: 500ms, \
                    healthy_threshold: 2, unhealthy_threshold: 2 }, deregistration_delay: 300ms }";
        let settings = serde_yaml::from_str::<lbctl_spec::TargetGroup>(yaml).unwrap().resolve();
        runtime::write_json(
            &layout.tg_dir("web").join("group.json"),
            &TargetGroupConfig { format: runtime::RUNTIME_FORMAT, name: "web".into(), settings },
        )
        .unwrap();
        runtime::write_json(&layout.registration_file("web", "static"), &Registrations { targets: targets.to_vec() })
            .unwrap();
    }

    fn proxy_config(layout: &Layout, listeners: &str) -> ProxyConfig {
        ProxyConfig {
            format: runtime::RUNTIME_FORMAT,
            kind: Some(lbctl_spec::LoadBalancerType::Application),
            stack: "shop".into(),
            name: "public".into(),
            dns_name: "public.shop.elb.localhost".into(),
            bind_ip: Ipv4Addr::LOCALHOST,
            worker_threads: 2,
            idle_timeout_ms: 1000,
            max_connections: None,
            listeners: serde_yaml::from_str(listeners).unwrap(),
            target_groups: vec!["web".into(), "empty".into()],
            layout: layout.clone(),
            certificates: BTreeMap::new(),
            access_log: None,
        }
    }

    /// Serves the configuration at `config_path` on a task until the sender fires.
    fn start_proxy(config_path: &Path) -> (oneshot::Sender<()>, JoinHandle<Result<()>>) {
        let (stop, stopped) = oneshot::channel::<()>();
        let served_path = config_path.to_path_buf();
        let task = tokio::spawn(async move {
            serve(&served_path, async move {
                let _ = stopped.await;
            })
            .await
        });
        (stop, task)
    }

    /// Polls the status file until `ready` holds, for at most ten seconds.
    async fn wait_for(path: &Path, what: &str, ready: impl Fn(&ProxyStatus) -> bool) -> ProxyStatus {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = runtime::read_json::<ProxyStatus>(path) {
                if ready(&status) {
                    return status;
                }
                assert!(Instant::now() < deadline, "timed out waiting for {what}; last status: {status:#?}");
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}; no status file");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn states(status: &ProxyStatus, group: &str) -> Vec<(String, HealthState)> {
        status
            .target_groups
            .get(group)
            .map(|it| it.iter().map(|it| (it.id.clone(), it.state)).collect())
            .unwrap_or_default()
    }

    async fn get(client: &TestClient, port: u16, path: &str, host: &str) -> (StatusCode, HeaderMap, String) {
        let request =
            Request::get(format!("http://127.0.0.1:{port}{path}")).header("host", host).body(Empty::new()).unwrap();
        let response = client.request(request).await.unwrap();
        let (parts, body) = response.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        (parts.status, parts.headers, String::from_utf8_lossy(&body).into_owned())
    }

    #[test]
    fn forwards_routes_and_drains() {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        runtime.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let layout = Layout::new(dir.path().join("run"));
            let workers = vec![start_worker("i-a").await, start_worker("i-b").await];
            write_group(&layout, &workers.iter().map(|it| it.target.clone()).collect::<Vec<_>>());
            let port = free_port();
            let listeners = format!(
                r#"
- port: {port}
  protocol: HTTP
  default_action: {{ forward: web }}
  rules:
    - priority: 10
      conditions: {{ path_pattern: ["/teapot"] }}
      action: {{ fixed_response: {{ status_code: 418, body: "short and stout" }} }}
    - priority: 20
      conditions: {{ path_pattern: ["/old/*"] }}
      action: {{ redirect: {{ path: "/new/#{{path}}", status_code: 301 }} }}
    - priority: 30
      conditions: {{ path_pattern: ["/nobody/*"] }}
      action: {{ forward: empty }}
- port: {}
  protocol: HTTPS
  default_action: {{ forward: web }}
"#,
                free_port()
            );
            let config_path = layout.lb_dir("public").join("config.json");
            runtime::write_json(&config_path, &proxy_config(&layout, &listeners)).unwrap();
            let status_path = layout.lb_dir("public").join("status.json");

            let (stop_proxy, proxy) = start_proxy(&config_path);

            let status = wait_for(&status_path, "both targets healthy", |it| {
                states(it, "web").iter().filter(|(_, state)| *state == HealthState::Healthy).count() == 2
            })
            .await;
            assert_eq!(status.pid, std::process::id());
            assert_eq!(status.config_digest, runtime::digest(&std::fs::read(&config_path).unwrap()));
            assert_eq!(status.listening, vec![port]);
            assert_eq!(status.errors.len(), 1, "{:?}", status.errors);
            assert!(status.errors[0].ends_with("the configuration names no certificate files for it"), "{:?}", status.errors);
            assert_eq!(states(&status, "empty"), vec![]);

            let client: TestClient = Client::builder(TokioExecutor::new()).build_http();
            let mut seen = BTreeSet::new();
            for _ in 0..10 {
                let (code, headers, body) = get(&client, port, "/hello?x=1", "shop.example.com").await;
                assert_eq!(code, StatusCode::OK, "{body}");
                assert!(body.ends_with("path=/hello\n"), "{body}");
                assert_eq!(headers["x-seen-forwarded-for"], "127.0.0.1");
                assert_eq!(headers["x-seen-forwarded-proto"], "http");
                assert_eq!(headers["x-seen-forwarded-port"], port.to_string());
                assert_eq!(headers["x-seen-host"], "shop.example.com");
                seen.insert(headers["x-instance-id"].to_str().unwrap().to_string());
            }
            assert_eq!(seen, BTreeSet::from(["i-a".to_string(), "i-b".to_string()]));

            let (code, headers, body) = get(&client, port, "/teapot", "x").await;
            assert_eq!((code.as_u16(), body.as_str(), headers["content-type"].to_str().unwrap()), (418, "short and stout", "text/plain"));
            let (code, headers, _) = get(&client, port, "/old/a/b?q=1", "shop.example.com").await;
            let location = headers["location"].to_str().unwrap();
            assert_eq!((code.as_u16(), location), (301, format!("http://shop.example.com:{port}/new/old/a/b?q=1").as_str()));
            let (code, _, body) = get(&client, port, "/nobody/home", "x").await;
            assert_eq!((code.as_u16(), body.as_str()), (503, "503 Service Unavailable\n"));
            let (code, _, body) = get(&client, port, "/slow?sleep=1500", "x").await;
            assert_eq!((code.as_u16(), body.as_str()), (504, "504 Gateway Timeout\n"));

            let status = wait_for(&status_path, "request counters", |it| {
                it.target_groups["web"].iter().map(|it| it.requests).sum::<u64>() == 11
            })
            .await;
            assert!(status.target_groups["web"].iter().all(|it| it.requests >= 4), "{status:#?}");

            // Deregistering i-b drains it: no new requests, then it is gone
            // (at once here, as nothing is in flight to it).
            write_group(&layout, &[workers[0].target.clone()]);
            wait_for(&status_path, "i-b draining or drained", |it| {
                !states(it, "web").contains(&("i-b".into(), HealthState::Healthy))
            })
            .await;
            for _ in 0..4 {
                assert_eq!(get(&client, port, "/", "x").await.1["x-instance-id"], "i-a");
            }
            wait_for(&status_path, "i-b gone", |it| states(it, "web") == vec![("i-a".into(), HealthState::Healthy)]).await;

            // A target that refuses connections is unhealthy; with no healthy
            // target left the group fails open to it, and the answer is 502.
            let dead = RegisteredTarget { id: "dead".into(), ip: Ipv4Addr::LOCALHOST, port: free_port() };
            write_group(&layout, &[dead]);
            wait_for(&status_path, "dead unhealthy and i-a drained", |it| {
                states(it, "web") == vec![("dead".into(), HealthState::Unhealthy)]
            })
            .await;
            let (code, _, body) = get(&client, port, "/", "x").await;
            assert_eq!((code.as_u16(), body.as_str()), (502, "502 Bad Gateway\n"));

            // A new configuration applies without a restart.
            let fixed = format!("[{{ port: {port}, protocol: HTTP, default_action: {{ fixed_response: {{ status_code: 200, body: v2 }} }} }}]");
            runtime::write_json(&config_path, &proxy_config(&layout, &fixed)).unwrap();
            let digest = runtime::digest(&std::fs::read(&config_path).unwrap());
            let status = wait_for(&status_path, "the new configuration", |it| it.config_digest == digest).await;
            assert_eq!((status.listening, status.errors), (vec![port], vec![]));
            assert_eq!(get(&client, port, "/", "x").await.2, "v2");

            // A broken file keeps the applied configuration and says why.
            let good = std::fs::read(&config_path).unwrap();
            std::fs::write(&config_path, b"{").unwrap();
            let status = wait_for(&status_path, "the rejection", |it| !it.errors.is_empty()).await;
            assert_eq!(status.config_digest, digest);
            assert!(status.errors[0].starts_with("configuration not applied: "), "{:?}", status.errors);
            assert_eq!(get(&client, port, "/", "x").await.2, "v2");
            runtime::write_atomic(&config_path, &good).unwrap();
            wait_for(&status_path, "the error to clear", |it| it.errors.is_empty()).await;

            stop_proxy.send(()).unwrap();
            proxy.await.unwrap().unwrap();
            assert!(!status_path.exists(), "the status file is removed on shutdown");
            assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err(), "the port is closed");
            for worker in workers {
                worker.stop.send(()).unwrap();
                worker.task.await.unwrap().unwrap();
            }
        });
    }

    /// An HTTP/2 connection with no stream open for the idle timeout gets
    /// `GOAWAY` and is closed; it carries at most 128 concurrent streams.
    #[test]
    fn idle_http2_connections_are_closed() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let layout = Layout::new(dir.path().join("run"));
            let port = free_port();
            let listeners = format!(
                "[{{ port: {port}, protocol: HTTP, default_action: {{ fixed_response: {{ status_code: 200, body: ok }} }} }}]"
            );
            let config_path = layout.lb_dir("public").join("config.json");
            runtime::write_json(&config_path, &proxy_config(&layout, &listeners)).unwrap();
            let (stop_proxy, proxy) = start_proxy(&config_path);
            wait_for(&layout.lb_dir("public").join("status.json"), "the listener", |it| it.listening == vec![port])
                .await;

            let stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
            let (mut sender, connection) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await.unwrap();
            let connection = tokio::spawn(connection);
            let request = Request::get(format!("http://127.0.0.1:{port}/")).body(Empty::<Bytes>::new()).unwrap();
            let response = sender.send_request(request).await.unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            drop(response);
            // The configuration's idle timeout is 1 s.
            let started = Instant::now();
            let closed = tokio::time::timeout(Duration::from_secs(10), connection).await;
            assert!(closed.is_ok(), "the idle connection is still open after 10 s");
            assert!(started.elapsed() >= Duration::from_millis(500), "closed after {:?}", started.elapsed());

            stop_proxy.send(()).unwrap();
            proxy.await.unwrap().unwrap();
        });
    }

    /// A target that answers by path, on every connection it accepts:
    /// `/chunked` in two chunks with a pause between, `/until-close` with a
    /// body that ends when it closes, anything else (health checks) `ok`.
    async fn start_raw_target() -> RegisteredTarget {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    loop {
                        head.clear();
                        while !head.ends_with(b"\r\n\r\n") {
                            if stream.read(&mut byte).await.unwrap_or(0) == 0 {
                                return;
                            }
                            head.push(byte[0]);
                        }
                        let head = String::from_utf8_lossy(&head).into_owned();
                        if head.starts_with("GET /chunked ") {
                            let first = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n";
                            stream.write_all(first).await.unwrap();
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            stream.write_all(b"6\r\n world\r\n0\r\n\r\n").await.unwrap();
                        } else if head.starts_with("GET /until-close ") {
                            stream.write_all(b"HTTP/1.1 200 OK\r\n\r\nall of it").await.unwrap();
                            return;
                        } else if head.starts_with("GET /http10 ") {
                            stream.write_all(b"HTTP/1.0 200 OK\r\n\r\nold").await.unwrap();
                            return;
                        } else {
                            stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n").await.unwrap();
                        }
                    }
                });
            }
        });
        RegisteredTarget { id: "raw".into(), ip: Ipv4Addr::LOCALHOST, port }
    }

    /// Reads one response from `stream` (`buf` keeps what follows it):
    /// its head, and its body by its framing (content-length or chunked).
    async fn read_response(stream: &mut TcpStream, buf: &mut Vec<u8>) -> (u16, Vec<(String, String)>, String) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut fields = [httparse::EMPTY_HEADER; 32];
            let mut response = httparse::Response::new(&mut fields);
            if let httparse::Status::Complete(len) = response.parse(buf).unwrap() {
                let code = response.code.unwrap();
                let headers: Vec<(String, String)> = response
                    .headers
                    .iter()
                    .map(|it| (it.name.to_ascii_lowercase(), String::from_utf8_lossy(it.value).into_owned()))
                    .collect();
                buf.drain(..len);
                let header = |name: &str| headers.iter().find(|it| it.0 == name).map(|it| it.1.clone());
                let mut body = Vec::new();
                if header("transfer-encoding").as_deref() == Some("chunked") {
                    loop {
                        let mut size = None;
                        while size.is_none() {
                            if let Some(end) = buf.windows(2).position(|it| it == b"\r\n") {
                                let digits = std::str::from_utf8(&buf[..end]).unwrap();
                                let length = usize::from_str_radix(digits, 16).unwrap();
                                if buf.len() >= end + 2 + length + 2 {
                                    body.extend_from_slice(&buf[end + 2..end + 2 + length]);
                                    buf.drain(..end + 2 + length + 2);
                                    size = Some(length);
                                    continue;
                                }
                            }
                            fill(stream, buf, deadline).await;
                        }
                        if size == Some(0) {
                            break;
                        }
                    }
                } else {
                    let length: usize = header("content-length").expect("a length").parse().unwrap();
                    while buf.len() < length {
                        fill(stream, buf, deadline).await;
                    }
                    body.extend(buf.drain(..length));
                }
                return (code, headers, String::from_utf8(body).unwrap());
            }
            fill(stream, buf, deadline).await;
        }
    }

    /// Reads more of `stream` into `buf`.
    async fn fill(stream: &mut TcpStream, buf: &mut Vec<u8>, deadline: Instant) {
        use tokio::io::AsyncReadExt;
        let mut chunk = [0u8; 4096];
        let read =
            tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await.expect("a response in 10 s").unwrap();
        assert!(read > 0, "the connection closed mid-response");
        buf.extend_from_slice(&chunk[..read]);
    }

    /// One connection carries pipelined requests, a request with a body
    /// (which hyper's server then serves, on the same connection), and
    /// `Connection: close`; bodies of unknown length go out chunked.
    #[test]
    fn requests_on_one_connection_whoever_serves_them() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let layout = Layout::new(dir.path().join("run"));
            write_group(&layout, &[start_raw_target().await]);
            let port = free_port();
            let listeners = format!(
                r#"
- port: {port}
  protocol: HTTP
  default_action: {{ forward: web }}
  rules:
    - priority: 10
      conditions: {{ path_pattern: ["/teapot"] }}
      action: {{ fixed_response: {{ status_code: 418, body: "short and stout" }} }}
"#
            );
            let config_path = layout.lb_dir("public").join("config.json");
            runtime::write_json(&config_path, &proxy_config(&layout, &listeners)).unwrap();
            let (stop_proxy, proxy) = start_proxy(&config_path);
            wait_for(&layout.lb_dir("public").join("status.json"), "the target healthy", |it| {
                states(it, "web") == vec![("raw".into(), HealthState::Healthy)]
            })
            .await;

            let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
            let mut buf = Vec::new();
            // Three requests in one write.
            stream
                .write_all(b"GET /a HTTP/1.1\r\nhost: x\r\n\r\nGET /teapot HTTP/1.1\r\nhost: x\r\n\r\nGET /chunked HTTP/1.1\r\nhost: x\r\n\r\n")
                .await
                .unwrap();
            let (code, headers, body) = read_response(&mut stream, &mut buf).await;
            assert_eq!((code, body.as_str()), (200, "ok\n"));
            assert!(headers.iter().any(|it| it.0 == "date"), "{headers:?}");
            let (code, fast_teapot, body) = read_response(&mut stream, &mut buf).await;
            assert_eq!((code, body.as_str()), (418, "short and stout"));
            let (code, headers, body) = read_response(&mut stream, &mut buf).await;
            assert_eq!((code, body.as_str()), (200, "hello world"), "{headers:?}");
            // A body of unknown length goes out chunked, and the connection stays.
            stream.write_all(b"GET /until-close HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
            let (code, headers, body) = read_response(&mut stream, &mut buf).await;
            assert_eq!((code, body.as_str()), (200, "all of it"));
            assert!(headers.contains(&("transfer-encoding".into(), "chunked".into())), "{headers:?}");
            // An HTTP/1.0 target's answer goes to an HTTP/1.1 client in HTTP/1.1.
            stream.write_all(b"GET /http10 HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
            let (code, headers, body) = read_response(&mut stream, &mut buf).await;
            assert_eq!((code, body.as_str()), (200, "old"));
            assert!(headers.contains(&("transfer-encoding".into(), "chunked".into())), "{headers:?}");
            // A head split across reads, after a blank line.
            stream.write_all(b"\r\nGET /split HT").await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
            stream.write_all(b"TP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
            assert_eq!(read_response(&mut stream, &mut buf).await.0, 200);
            // A request with a body, between two others in one write: hyper's
            // server from it on, with every byte after it.
            stream
                .write_all(b"GET /a HTTP/1.1\r\nhost: x\r\n\r\nPOST /p HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\n\r\nabcGET /teapot HTTP/1.1\r\nhost: x\r\n\r\n")
                .await
                .unwrap();
            assert_eq!(read_response(&mut stream, &mut buf).await.0, 200);
            assert_eq!(read_response(&mut stream, &mut buf).await.0, 200);
            let (code, hyper_teapot, body) = read_response(&mut stream, &mut buf).await;
            assert_eq!((code, body.as_str()), (418, "short and stout"));
            // Both servers write the same fields (the date aside).
            let fields = |headers: Vec<(String, String)>| {
                let mut fields: Vec<_> = headers.into_iter().filter(|it| it.0 != "date").collect();
                fields.sort();
                fields
            };
            assert_eq!(fields(fast_teapot), fields(hyper_teapot));
            // hyper's server too answers an HTTP/1.0 target's body in HTTP/1.1, chunked.
            stream.write_all(b"GET /http10 HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
            let (code, headers, body) = read_response(&mut stream, &mut buf).await;
            assert_eq!((code, body.as_str()), (200, "old"));
            assert!(headers.contains(&("transfer-encoding".into(), "chunked".into())), "{headers:?}");
            stream.write_all(b"GET /b HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await.unwrap();
            let (code, headers, _) = read_response(&mut stream, &mut buf).await;
            assert_eq!(code, 200);
            assert!(headers.contains(&("connection".into(), "close".into())), "{headers:?}");
            assert_eq!(stream.read(&mut [0u8; 16]).await.unwrap(), 0, "closed after Connection: close");
            assert!(buf.is_empty());

            // Served here, `Connection: close` closes too.
            let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
            stream.write_all(b"GET /c HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await.unwrap();
            let (code, headers, _) = read_response(&mut stream, &mut buf).await;
            assert_eq!(code, 200);
            assert!(headers.contains(&("connection".into(), "close".into())), "{headers:?}");
            assert_eq!(stream.read(&mut [0u8; 16]).await.unwrap(), 0, "closed after Connection: close");

            // An idle keep-alive connection is closed at the idle timeout (1 s
            // here), not held until the watchdog gives up on it.
            let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
            stream.write_all(b"GET /d HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
            assert_eq!(read_response(&mut stream, &mut buf).await.0, 200);
            let idle = Instant::now();
            let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut [0u8; 16])).await;
            assert_eq!(read.expect("closed within 5 s").unwrap(), 0);
            assert!(idle.elapsed() >= Duration::from_millis(500), "closed after {:?}", idle.elapsed());

            // What hyper answers, it still does: a bad head, HTTP/1.0.
            let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
            stream.write_all(b"GET /a HTTP/1.1\r\nbad header\r\n\r\n").await.unwrap();
            assert_eq!(read_response(&mut stream, &mut buf).await.0, 400);
            assert_eq!(stream.read(&mut [0u8; 16]).await.unwrap(), 0, "closed after a 400");
            let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
            buf.clear();
            stream.write_all(b"GET /a HTTP/1.0\r\n\r\n").await.unwrap();
            let (code, _, body) = read_response(&mut stream, &mut buf).await;
            assert_eq!((code, body.as_str()), (200, "ok\n"));

            stop_proxy.send(()).unwrap();
            proxy.await.unwrap().unwrap();
        });
    }
}
