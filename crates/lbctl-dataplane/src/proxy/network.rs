//! Network load balancer listeners: TCP, TLS and UDP.
//!
//! A TCP connection goes to the routable target its flow hash picks (a keyed
//! hash of the client's and the listener's address and port) and stays there
//! for its life; on a TLS listener the handshake completes first and the
//! decrypted bytes go to the target. A target that refuses the connection is
//! reported (passive health) and the next routable one is tried, so a client
//! sees a refusal only when no target accepts. With `proxy_protocol_v2` on
//! the target group, a PROXY v2 header with the client's address precedes
//! the client's bytes.
//!
//! UDP: each client address and port is a flow with its own connected socket
//! to its target, bound to the load balancer's address; replies come back
//! from the listener's socket. A flow ends after `UDP_FLOW_IDLE` without a
//! datagram either way (AWS's fixed UDP idle timeout).
//!
//! Both count as in flight on their target while open, so draining waits
//! for them, and both close when their target is retired (drained past its
//! deregistration delay). A configuration change replaces the context new
//! connections read; open ones keep their target.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

use super::access_log::{self, AccessLog};
use super::connection::{Admitted, ConnectionLimit};
use super::observe::LbStats;
use super::relay::{self, CopyPump, Ended, Pump, SplicePump};
use super::selection::{Backend, InFlight};
use super::target_group::TargetGroup;
use super::TLS_HANDSHAKE_TIMEOUT;

/// How long a UDP flow lives without a datagram either way (AWS: 120 s).
pub const UDP_FLOW_IDLE: Duration = Duration::from_secs(120);
/// How often ended UDP flows are forgotten.
const UDP_SWEEP: Duration = Duration::from_secs(1);
/// The largest UDP datagram.
const MAX_DATAGRAM: usize = 65_535;
/// Connections a listener accepts in a row before the open connections'
/// ready bytes are served (as HAProxy's `tune.maxaccept` bounds it):
/// draining a whole burst of new connections first made the open ones
/// wait, which widened the spread of short connections' times (see
/// BENCHMARKS.md).
const ACCEPTS_IN_ROW: u32 = 4;

thread_local! {
    /// Where a thread's UDP flows receive their targets' replies.
    static REPLY_BUFFER: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0; MAX_DATAGRAM]);
}

/// The key of flow hashes, drawn once per process.
static FLOW_SECRET: LazyLock<RandomState> = LazyLock::new(RandomState::new);

/// A flow's hash: which target a new connection or UDP flow goes to.
fn flow_hash(client: SocketAddr, listener: SocketAddr, udp: bool) -> u64 {
    FLOW_SECRET.hash_one((client, listener, udp))
}

/// Where a network listener's connections are counted, and logged when the
/// load balancer has access logs.
pub struct Observe {
    /// The load balancer's counters.
    pub stats: Arc<LbStats>,
    /// Its access log, when on, with `net/<name>/<id>`.
    pub log: Option<(Arc<AccessLog>, String)>,
}

impl Observe {
    /// Counts a connection or flow that ended, and logs it.
    #[allow(clippy::too_many_arguments)]
    fn ended(
        &self,
        kind: &'static str,
        client: SocketAddr,
        listener: SocketAddr,
        target: Option<SocketAddr>,
        started: Instant,
        handshake: Option<Duration>,
        (received, sent): (u64, u64),
        tls: Option<crate::tls::SessionSummary>,
    ) {
        self.stats.bytes(received + sent);
        let Some((log, elb)) = &self.log else { return };
        let (time, duration) = (SystemTime::now(), started.elapsed());
        let entry = access_log::ConnectionEntry {
            kind,
            time,
            elb: elb.clone(),
            listener: access_log::resource_id(elb, &listener.port().to_string()),
            client,
            destination: listener,
            duration,
            tls_handshake: handshake,
            received_bytes: received,
            sent_bytes: sent,
            tls_cipher: tls.as_ref().map(|it| it.0.clone()),
            tls_protocol: tls.as_ref().map(|it| it.1),
            domain: tls.and_then(|it| it.2),
            started: time.checked_sub(duration).unwrap_or(time),
            target,
        };
        log.append_with(|out| entry.write_to(out));
    }
}

/// What a TCP or TLS listener serves; replaced as a whole on reload.
pub struct StreamContext {
    /// The target group of the default action.
    pub group: Arc<TargetGroup>,
    /// The TLS acceptor of a TLS listener.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// How long a connection may move no byte.
    pub idle_timeout: Duration,
    /// The listener's address: the destination of the PROXY header, part
    /// of the flow hash (known, so no `getsockname` per connection).
    pub address: SocketAddr,
    /// Where its connections are counted and logged.
    pub observe: Arc<Observe>,
}

/// What a UDP listener serves; replaced as a whole on reload.
pub struct DatagramContext {
    /// The target group of the default action.
    pub group: Arc<TargetGroup>,
    /// The load balancer's address, which flows to targets are bound to.
    pub bind_ip: Ipv4Addr,
    /// Where its flows are counted and logged.
    pub observe: Arc<Observe>,
}

/// Accepts TCP connections until told to stop, yielding after every
/// `ACCEPTS_IN_ROW` (tokio runs it again once the tasks ready now have
/// run and the reactor has been polled). Open connections are not ended
/// with the listener: they keep flowing until they close, idle out or
/// their target is retired.
pub async fn accept_streams(
    listener: TcpListener,
    context: Arc<ArcSwap<StreamContext>>,
    limit: Arc<ConnectionLimit>,
    mut stop: watch::Receiver<bool>,
) {
    let mut in_row = 0u32;
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, client)) => {
                    // Past the limit the connection is closed at once.
                    let Some(admitted) = limit.admit("connection") else { continue };
                    let context = context.load_full();
                    match context.tls.clone() {
                        None => tokio::spawn(serve_plain(stream, client, context, admitted)),
                        Some(acceptor) => tokio::spawn(serve_tls(stream, client, context, acceptor, admitted)),
                    };
                    in_row += 1;
                    if in_row == ACCEPTS_IN_ROW {
                        in_row = 0;
                        tokio::task::yield_now().await;
                    }
                }
                Err(err) => {
                    if !matches!(err.kind(), std::io::ErrorKind::ConnectionAborted | std::io::ErrorKind::ConnectionReset) {
                        eprintln!("proxy: accept failed: {err}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            },
        }
    }
}

/// Relays one plain TCP client connection to its target.
async fn serve_plain(client: TcpStream, peer: SocketAddr, context: Arc<StreamContext>, _admitted: Admitted) {
    let started = Instant::now();
    context.observe.stats.new_connections.fetch_add(1, Ordering::Relaxed);
    let Some((backend, target)) = open_target(&context, peer).await else {
        context.observe.ended("tcp", peer, context.address, None, started, None, (0, 0), None);
        return;
    };
    let _flow = InFlight::start(backend.clone());
    let ended = AtomicBool::new(false);
    let (mut up, mut down) = SplicePump::pair(&client, &target, &ended);
    let end = relay::relay(&mut up, &mut down, context.idle_timeout, backend.retired()).await;
    log_end(peer, &backend, end);
    let bytes = (up.moved(), down.moved());
    let target = Some(SocketAddr::from((backend.ip, backend.port)));
    context.observe.ended("tcp", peer, context.address, target, started, None, bytes, None);
}

/// Relays one TLS client connection, decrypted, to its target; its own
/// task, so that plain connections do not carry a TLS handshake's state.
async fn serve_tls(
    client: TcpStream,
    peer: SocketAddr,
    context: Arc<StreamContext>,
    acceptor: tokio_rustls::TlsAcceptor,
    _admitted: Admitted,
) {
    let started = Instant::now();
    context.observe.stats.new_connections.fetch_add(1, Ordering::Relaxed);
    let Ok(Ok(client)) = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(client)).await else {
        // A handshake that failed or never ended is logged too, as AWS
        // does: no handshake time, no TLS fields.
        context.observe.ended("tls", peer, context.address, None, started, None, (0, 0), None);
        return;
    };
    let handshake = Some(started.elapsed());
    let tls = Some(crate::tls::session_summary(client.get_ref().1));
    let Some((backend, target)) = open_target(&context, peer).await else {
        context.observe.ended("tls", peer, context.address, None, started, handshake, (0, 0), tls);
        return;
    };
    let _flow = InFlight::start(backend.clone());
    let (client_read, client_write) = tokio::io::split(client);
    let (target_read, target_write) = target.into_split();
    let (mut up, mut down) = (CopyPump::new(client_read, target_write), CopyPump::new(target_read, client_write));
    log_end(peer, &backend, relay::relay(&mut up, &mut down, context.idle_timeout, backend.retired()).await);
    let bytes = (up.moved(), down.moved());
    let target = Some(SocketAddr::from((backend.ip, backend.port)));
    context.observe.ended("tls", peer, context.address, target, started, handshake, bytes, tls);
}

/// A connection to the target of `peer`'s flow, the PROXY header sent when
/// the group wants one.
async fn open_target(context: &StreamContext, peer: SocketAddr) -> Option<(Arc<Backend>, TcpStream)> {
    let (backend, mut target) =
        connect(&context.group, flow_hash(peer, context.address, false), &context.observe.stats)?;
    if context.group.transport().proxy_protocol {
        let header = proxy_header(peer, context.address, ppp::v2::Protocol::Stream);
        target.write_all(&header).await.ok()?;
    }
    Some((backend, target))
}

/// Logs why a relay ended when it was the load balancer's doing.
fn log_end(peer: SocketAddr, backend: &Backend, ended: Ended) {
    match ended {
        Ended::Closed | Ended::Failed => {}
        Ended::Idle => eprintln!("proxy: closed the idle connection of {peer} to {}", backend.id),
        Ended::Stopped => eprintln!("proxy: closed the connection of {peer} to {}: the target drained", backend.id),
    }
}

/// A connection to the target of flow `hash`: the routable target the hash
/// picks, or, when it refuses, the next one (each refusal reported for
/// passive health). `None` when no target accepts.
fn connect(group: &TargetGroup, hash: u64, stats: &LbStats) -> Option<(Arc<Backend>, TcpStream)> {
    let mut refused: Vec<Arc<Backend>> = Vec::new();
    // Ends: every refused target is left out of the next pick.
    loop {
        let backend = group.select_flow(hash, &refused)?;
        let address = SocketAddr::from((backend.ip, backend.port));
        match start_connect(address) {
            Ok(stream) => return Some((backend, stream)),
            Err(err) => {
                stats.target_resets.fetch_add(1, Ordering::Relaxed);
                group.report_connection_failure(&backend, &err.to_string())
            }
        }
        refused.push(backend);
    }
}

/// Sends a datagram on `socket` at once, without the readiness tokio's
/// `try_send_to` waits to have seen (a socket that has only received yet
/// has not seen any).
fn send_to(socket: &UdpSocket, datagram: &[u8], to: SocketAddr) -> std::io::Result<usize> {
    socket2::SockRef::from(socket).send_to(datagram, &to.into())
}

/// A connection to `address`, without waiting for it to be established.
///
/// On loopback the handshake (or the refusal) completes inside `connect`,
/// so a refused target is known at once from `SO_ERROR`, and the relay can
/// start without a round through the reactor. A connection still being
/// made elsewhere completes in the background: the first bytes sent to it
/// wait for it, and its failure ends the relay.
fn start_connect(address: SocketAddr) -> std::io::Result<TcpStream> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM.nonblocking(), Some(Protocol::TCP))?;
    socket.set_tcp_nodelay(true)?;
    match socket.connect(&address.into()) {
        Ok(()) => {}
        Err(err) if err.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(err) => return Err(err),
    }
    if let Some(err) = socket.take_error()? {
        return Err(err);
    }
    TcpStream::from_std(std::net::TcpStream::from(socket))
}

/// A PROXY protocol v2 header: this connection (or flow) is `client`'s, to
/// the listener at `listener`.
fn proxy_header(client: SocketAddr, listener: SocketAddr, protocol: ppp::v2::Protocol) -> Vec<u8> {
    use ppp::v2::{Builder, Command, Version};
    Builder::with_addresses(Version::Two | Command::Proxy, protocol, (client, listener))
        .build()
        .expect("two IPv4 addresses fit a header")
}

/// Relays UDP datagrams until told to stop; then every flow ends.
pub async fn serve_datagrams(
    socket: UdpSocket,
    context: Arc<ArcSwap<DatagramContext>>,
    limit: Arc<ConnectionLimit>,
    mut stop: watch::Receiver<bool>,
) {
    let socket = Arc::new(socket);
    let Ok(local) = socket.local_addr() else { return };
    let mut flows: HashMap<SocketAddr, Flow> = HashMap::new();
    let mut buffer = vec![0u8; MAX_DATAGRAM];
    let mut sweep = tokio::time::interval(UDP_SWEEP);
    sweep.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            _ = sweep.tick() => flows.retain(|_, flow| !flow.replies.is_finished()),
            received = socket.recv_from(&mut buffer) => {
                let Ok((length, peer)) = received else { continue };
                let flow = match flows.get(&peer) {
                    Some(flow) if !flow.replies.is_finished() => flow,
                    _ => {
                        // Past the limit a new flow's datagram is dropped.
                        let Some(admitted) = limit.admit("UDP flow") else { continue };
                        let Some(flow) = open_flow(&context.load(), &socket, peer, local, admitted).await else { continue };
                        context.load().observe.stats.new_connections.fetch_add(1, Ordering::Relaxed);
                        flows.entry(peer).insert_entry(flow).into_mut()
                    }
                };
                flow.last_datagram.store(flow.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
                flow.received.fetch_add(length as u64, Ordering::Relaxed);
                // Sent without waiting (for readiness tokio has not seen on a
                // new socket, or for room): a datagram that cannot go now
                // is dropped, as UDP may, and no flow holds up the others.
                let _ = socket2::SockRef::from(&*flow.upstream).send(&buffer[..length]);
            }
        }
    }
    for flow in flows.into_values() {
        flow.replies.abort();
    }
}

/// A UDP flow: one client address and port, one target.
struct Flow {
    upstream: Arc<UdpSocket>,
    /// When the flow opened; `last_datagram` counts milliseconds from it.
    epoch: Instant,
    /// When the last datagram moved either way.
    last_datagram: Arc<AtomicU64>,
    /// Bytes from the client.
    received: Arc<AtomicU64>,
    replies: JoinHandle<()>,
    /// Its place under the load balancer's limit, given back when the flow is forgotten.
    _admitted: Admitted,
}

/// Opens the flow of `peer`: a socket connected to the target its flow
/// hash picks, and a task passing the target's replies back.
async fn open_flow(
    context: &DatagramContext,
    listener: &Arc<UdpSocket>,
    peer: SocketAddr,
    local: SocketAddr,
    admitted: Admitted,
) -> Option<Flow> {
    let backend = context.group.select_flow(flow_hash(peer, local, true), &[])?;
    let upstream = UdpSocket::bind((context.bind_ip, 0)).await.ok()?;
    upstream.connect((backend.ip, backend.port)).await.ok()?;
    let upstream = Arc::new(upstream);
    let epoch = Instant::now();
    let last_datagram = Arc::new(AtomicU64::new(0));
    let received = Arc::new(AtomicU64::new(0));
    let flow = FlowEnds {
        observe: context.observe.clone(),
        peer,
        listener: local,
        started: epoch,
        received: received.clone(),
    };
    let replies =
        tokio::spawn(pass_replies(upstream.clone(), listener.clone(), flow, backend, epoch, last_datagram.clone()));
    Some(Flow { upstream, epoch, last_datagram, received, replies, _admitted: admitted })
}

/// What is logged of a UDP flow when it ends.
struct FlowEnds {
    observe: Arc<Observe>,
    peer: SocketAddr,
    listener: SocketAddr,
    started: Instant,
    received: Arc<AtomicU64>,
}

/// Passes a flow's replies from its target to its client until the flow is
/// idle for `UDP_FLOW_IDLE` or its target is retired.
async fn pass_replies(
    upstream: Arc<UdpSocket>,
    listener: Arc<UdpSocket>,
    flow: FlowEnds,
    backend: Arc<Backend>,
    epoch: Instant,
    last_datagram: Arc<AtomicU64>,
) {
    let _flow = InFlight::start(backend.clone());
    let peer = flow.peer;
    let sent = AtomicU64::new(0);
    // Logged however the flow ends (idle, retired, or aborted with its listener).
    let _log = LogOnDrop(|| {
        let bytes = (flow.received.load(Ordering::Relaxed), sent.load(Ordering::Relaxed));
        let target = Some(SocketAddr::from((backend.ip, backend.port)));
        flow.observe.ended("udp", peer, flow.listener, target, flow.started, None, bytes, None);
    });
    let idle = tokio::time::sleep(UDP_FLOW_IDLE);
    let retired = backend.retired();
    tokio::pin!(idle, retired);
    loop {
        tokio::select! {
            () = &mut retired => return,
            ready = upstream.readable() => {
                if ready.is_err() {
                    return;
                }
                // The thread's buffer, not one per flow: an idle flow holds
                // no buffer. The listener's socket sends without waiting: a
                // reply it has no room for is dropped, as UDP may.
                // Would block ends it; so does a closed port on the target
                // (ICMP unreachable): the flow stays, and the target's health
                // checks take it out of rotation.
                REPLY_BUFFER.with_borrow_mut(|buffer| {
                    while let Ok(length) = upstream.try_recv(buffer) {
                        last_datagram.store(epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
                        sent.fetch_add(length as u64, Ordering::Relaxed);
                        let _ = send_to(&listener, &buffer[..length], peer);
                    }
                });
            }
            () = &mut idle => {
                let deadline = epoch + Duration::from_millis(last_datagram.load(Ordering::Relaxed)) + UDP_FLOW_IDLE;
                if deadline <= Instant::now() {
                    return;
                }
                idle.as_mut().reset(deadline);
            }
        }
    }
}

/// Runs a closure when dropped.
struct LogOnDrop<F: FnMut()>(F);

impl<F: FnMut()> Drop for LogOnDrop<F> {
    fn drop(&mut self) {
        (self.0)();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a plain connection costs in the proxy's memory, besides its
    /// sockets and their registrations: its task's future, about 1.3 KiB
    /// (HAProxy holds two 16 KiB buffers per connection unless splicing).
    #[tokio::test]
    async fn a_plain_connection_task_is_small() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let client = TcpStream::connect(address).await.unwrap();
        let context = Arc::new(StreamContext {
            group: TargetGroup::new("test", "g"),
            tls: None,
            idle_timeout: Duration::from_secs(1),
            address,
            observe: Arc::new(Observe { stats: Arc::default(), log: None }),
        });
        let task = serve_plain(client, address, context, ConnectionLimit::new(1).admit("connection").unwrap());
        assert!(std::mem::size_of_val(&task) <= 2048, "{} bytes", std::mem::size_of_val(&task));
    }

    /// Property: a PROXY v2 header built for any client and listener, of
    /// either address family, decodes (as `lbctl worker` decodes it) to the
    /// same addresses, and nothing after it is consumed.
    #[test]
    fn proxy_headers_decode_to_the_addresses_they_were_built_with() {
        use proptest::prelude::*;
        use proptest::test_runner::{Config, TestRunner};
        const CASES: u32 = 500;
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let v4 = (any::<[u8; 4]>(), any::<u16>(), any::<[u8; 4]>(), any::<u16>()).prop_map(|(a, p, b, q)| {
            (SocketAddr::from((Ipv4Addr::from(a), p)), SocketAddr::from((Ipv4Addr::from(b), q)))
        });
        let v6 = (any::<[u8; 16]>(), any::<u16>(), any::<[u8; 16]>(), any::<u16>()).prop_map(|(a, p, b, q)| {
            let (a, b) = (std::net::Ipv6Addr::from(a), std::net::Ipv6Addr::from(b));
            (SocketAddr::from((a, p)), SocketAddr::from((b, q)))
        });
        let cases = (prop_oneof![v4, v6], any::<bool>(), proptest::collection::vec(any::<u8>(), 0..32));
        let mut runner = TestRunner::new(Config { cases: CASES, failure_persistence: None, ..Config::default() });
        runner
            .run(&cases, |((client, listener), stream, after)| {
                let protocol = if stream { ppp::v2::Protocol::Stream } else { ppp::v2::Protocol::Datagram };
                let mut bytes = proxy_header(client, listener, protocol);
                bytes.extend_from_slice(&after);
                let mut reader = bytes.as_slice();
                let decoded = runtime
                    .block_on(crate::worker::read_proxy_header(&mut reader, Duration::from_secs(1)))
                    .map_err(|err| TestCaseError::fail(format!("{err:#}")))?
                    .ok_or_else(|| TestCaseError::fail("no addresses"))?;
                prop_assert_eq!((decoded.source, decoded.destination), (client, listener));
                prop_assert_eq!(reader, after.as_slice(), "the bytes after the header are left");
                Ok(())
            })
            .unwrap();
        println!("PROXY v2 property: {CASES} headers built, decoded to the same addresses");
    }
}
