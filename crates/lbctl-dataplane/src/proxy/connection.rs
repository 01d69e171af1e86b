//! Client connections: how many a load balancer holds, how long an idle or
//! silent one may stay, and the listening sockets they arrive on.
//!
//! - **The limit.** One `ConnectionLimit` per proxy counts every client
//!   connection of every listener and every UDP flow (each holds file
//!   descriptors). Past `max_connections` a new connection is accepted and
//!   closed at once and a new flow's datagram dropped (AWS's
//!   `RejectedConnectionCount`); the open ones keep working. The default
//!   comes from the file descriptor limit, which the proxy first raises to
//!   its hard limit (as HAProxy does): half of it, less a reserve, since a
//!   proxied connection holds a client and a target descriptor.
//! - **The watchdog.** An HTTP connection has one deadline at a time, kept
//!   by `Activity` and enforced by `watch`: a connection that has not sent a
//!   complete request head within `HEADER_TIMEOUT` of opening (or of the
//!   head's first byte) is closed; one with nothing in flight is closed
//!   once `idle_timeout` has passed since its last request ended and since
//!   an answer's bytes last went out (HTTP/1 keep-alive and HTTP/2 alike;
//!   an HTTP/2 connection before its first stream `idle_timeout` after it
//!   opened): AWS's idle timeout is time without data, so a response still
//!   being sent (a download, a stream of events) keeps its connection.
//!   What a client sends without a request does not: bare line ends between
//!   HTTP/1 requests, HTTP/2 PINGs (AWS: they do not reset the idle
//!   timeout) and the small frames that answer them. A closing connection
//!   finishes what is in flight (HTTP/2 `GOAWAY`). Requests and writes only
//!   bump counters and a coarse clock: the one timer is the watchdog's,
//!   re-armed when it fires (every few seconds at most), never per request.
//! - **Listening sockets** are bound with the system's `somaxconn` as
//!   backlog, so bursts of connections queue in the kernel rather than
//!   being refused.

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::time::Instant;

/// How long a client may take to send a complete request head, from the
/// connection's start (or the end of a TLS handshake) or from the first
/// byte of a later head; nginx's `client_header_timeout` default is 60 s,
/// AWS closes silent connections after 10 s or so.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a closing connection gets to finish what is in flight.
const CLOSE_GRACE: Duration = Duration::from_secs(10);
/// The longest a watchdog sleeps between two looks (or the idle timeout,
/// when shorter): a deadline that moved earlier meanwhile (a head that
/// started on a kept-alive connection) is noticed this late at most.
const LOOK_EVERY: Duration = Duration::from_secs(5);
/// Concurrent streams one HTTP/2 client connection may have (AWS's ALB: 128).
pub const MAX_CONCURRENT_STREAMS: u32 = 128;
/// File descriptors kept aside from the connection limit (listeners,
/// status and registry files, health checks, logs).
const RESERVED_DESCRIPTORS: u64 = 256;
/// Backlog when `somaxconn` cannot be read (Linux's default since 5.4).
const DEFAULT_BACKLOG: i32 = 4096;

/// The client connections and UDP flows of one load balancer, bounded.
#[derive(Debug)]
pub struct ConnectionLimit {
    /// The most open at once.
    max: AtomicUsize,
    open: AtomicUsize,
    /// Connections and flows refused since the proxy started.
    rejected: AtomicU64,
    /// Whether a refusal was logged since the count last fell below the limit.
    logged: AtomicBool,
}

/// One admitted connection or flow; gives its place back when dropped.
#[derive(Debug)]
pub struct Admitted(Arc<ConnectionLimit>);

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl ConnectionLimit {
    /// A limit of `max` (at least 1).
    pub fn new(max: usize) -> Arc<ConnectionLimit> {
        Arc::new(ConnectionLimit {
            max: AtomicUsize::new(max.max(1)),
            open: AtomicUsize::new(0),
            rejected: AtomicU64::new(0),
            logged: AtomicBool::new(false),
        })
    }

    /// Changes the limit (a reloaded configuration); open connections stay.
    pub fn set_max(&self, max: usize) {
        self.max.store(max.max(1), Ordering::Relaxed);
    }

    /// A place for a new connection or flow, unless the limit is reached
    /// (then counted as rejected, and logged once per episode).
    pub fn admit(self: &Arc<Self>, what: &str) -> Option<Admitted> {
        let max = self.max.load(Ordering::Relaxed);
        let open = self.open.fetch_add(1, Ordering::Relaxed);
        if open < max {
            if open + 1 < max {
                self.logged.store(false, Ordering::Relaxed);
            }
            return Some(Admitted(self.clone()));
        }
        self.open.fetch_sub(1, Ordering::Relaxed);
        self.rejected.fetch_add(1, Ordering::Relaxed);
        if !self.logged.swap(true, Ordering::Relaxed) {
            eprintln!(
                "{} proxy: refusing a new {what}: {max} connections and flows are open (max_connections)",
                crate::runtime::log_time()
            );
        }
        None
    }

    /// Connections and flows open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Connections and flows refused so far.
    pub fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }
}

/// Raises the soft file descriptor limit to the hard one and returns it.
pub fn raise_descriptor_limit() -> u64 {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit only read and write `limit`.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 1024;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit.rlim_cur = limit.rlim_max;
            }
        }
    }
    limit.rlim_cur
}

/// The connection limit when the spec sets none: half the descriptors a
/// process may open, less a reserve, and at least 64.
pub fn default_max_connections(descriptors: u64) -> usize {
    (descriptors.saturating_sub(RESERVED_DESCRIPTORS) / 2).clamp(64, 1 << 20) as usize
}

/// A TCP listening socket on `ip:port`, with `SO_REUSEADDR` (as tokio's
/// own bind), `TCP_NODELAY` inherited by accepted connections (one
/// `setsockopt` per listener, not per connection) and the system's
/// `somaxconn` as backlog.
pub fn listen(ip: Ipv4Addr, port: u16) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM.nonblocking(), Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_tcp_nodelay(true)?;
    socket.bind(&SocketAddr::from((ip, port)).into())?;
    socket.listen(backlog())?;
    TcpListener::from_std(std::net::TcpListener::from(socket))
}

/// The system's `somaxconn`, read once.
fn backlog() -> i32 {
    static BACKLOG: std::sync::OnceLock<i32> = std::sync::OnceLock::new();
    *BACKLOG.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/net/core/somaxconn")
            .ok()
            .and_then(|it| it.trim().parse().ok())
            .filter(|it| *it > 0)
            .unwrap_or(DEFAULT_BACKLOG)
    })
}

/// What an HTTP connection is doing, in milliseconds since it opened:
/// written by its requests and its head guard, read by its watchdog.
#[derive(Debug)]
pub struct Activity {
    opened: Instant,
    /// Requests (HTTP/2 streams) being answered.
    in_flight: AtomicU32,
    /// Requests started so far.
    requests: AtomicU64,
    /// When the last request's answer was handed over.
    last_end_ms: AtomicU64,
    /// When the request head being read started to arrive, plus one; 0: none.
    head_since_ms: AtomicU64,
    /// The client speaks HTTP/2.
    http2: AtomicBool,
    /// The connection switched protocols (a WebSocket): its bytes are no
    /// longer HTTP, and `tunnel` times it.
    upgraded: AtomicBool,
    /// When an answer's bytes last went out, on the coarse clock
    /// (`coarse_ms`); 0: never.
    moved_ms: AtomicU64,
}

/// The monotonic clock as of its last tick, in milliseconds: a few
/// milliseconds coarse, and a few nanoseconds to read (no system call, no
/// time-stamp counter), so that every read and write of a connection can
/// note it.
fn coarse_ms() -> u64 {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `now` is a valid timespec to write; the clock exists on
    // Linux since 2.6.32 (on failure `now` stays 0, which reads as never).
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut now) };
    now.tv_sec as u64 * 1000 + now.tv_nsec as u64 / 1_000_000
}

impl Activity {
    /// A connection opening now.
    pub fn new() -> Arc<Activity> {
        Arc::new(Activity {
            opened: Instant::now(),
            in_flight: AtomicU32::new(0),
            requests: AtomicU64::new(0),
            last_end_ms: AtomicU64::new(0),
            head_since_ms: AtomicU64::new(0),
            http2: AtomicBool::new(false),
            upgraded: AtomicBool::new(false),
            moved_ms: AtomicU64::new(0),
        })
    }

    fn now_ms(&self) -> u64 {
        self.opened.elapsed().as_millis() as u64
    }

    /// A request started; its answer is handed over when the guard drops.
    pub fn request(self: &Arc<Self>) -> RequestGuard {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.requests.fetch_add(1, Ordering::Relaxed);
        RequestGuard(self.clone())
    }

    /// A request head started to arrive and did not arrive in one read.
    pub fn head_started(&self) {
        self.head_since_ms.store(self.now_ms() + 1, Ordering::Relaxed);
    }

    /// The head being read is complete.
    pub fn head_ended(&self) {
        self.head_since_ms.store(0, Ordering::Relaxed);
    }

    /// Whether the connection switched protocols.
    pub fn is_upgraded(&self) -> bool {
        self.upgraded.load(Ordering::Relaxed)
    }

    /// The client sent HTTP/2's preface.
    pub fn speaks_http2(&self) {
        self.http2.store(true, Ordering::Relaxed);
    }

    /// `written` bytes went out to the client. On HTTP/1 every write is an
    /// answer's. On HTTP/2 the frames a client can make the server send
    /// without a request (a PING's answer, 17 bytes; SETTINGS and
    /// WINDOW_UPDATE, fewer) are not counted, so PINGs keep no connection
    /// open; anything larger carries an answer's data.
    pub fn answering(&self, written: usize) {
        if written > 17 || written > 0 && !self.http2.load(Ordering::Relaxed) {
            self.moved_ms.store(coarse_ms(), Ordering::Relaxed);
        }
    }

    /// How long ago an answer's bytes last went out, if they did.
    fn since_moved(&self) -> Option<Duration> {
        let moved = self.moved_ms.load(Ordering::Relaxed);
        (moved != 0).then(|| Duration::from_millis(coarse_ms().saturating_sub(moved)))
    }

    /// When the connection is due to close, given its idle timeout and
    /// the time `now`; `None` while requests are in flight (and no head is
    /// late).
    fn deadline(&self, idle_timeout: Duration, now: Instant) -> Option<Instant> {
        let at = |ms: u64, after: Duration| self.opened + Duration::from_millis(ms) + after;
        if let Some(late) = self.late_head() {
            return Some(late);
        }
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return None;
        }
        if self.requests.load(Ordering::Relaxed) == 0 {
            let first = if self.http2.load(Ordering::Relaxed) { idle_timeout } else { HEADER_TIMEOUT };
            return Some(at(0, first));
        }
        let ended = at(self.last_end_ms.load(Ordering::Relaxed), idle_timeout);
        let moved = self.since_moved().and_then(|it| now.checked_sub(it)).map(|it| it + idle_timeout);
        Some(moved.map_or(ended, |it| it.max(ended)))
    }

    /// When the head being read is due, if one is: a head late past it has
    /// no request to finish, so its connection is dropped then, not closed
    /// gracefully (which would wait `CLOSE_GRACE` more for a client that
    /// sends nothing).
    fn late_head(&self) -> Option<Instant> {
        let head_since = self.head_since_ms.load(Ordering::Relaxed);
        (head_since != 0).then(|| self.opened + Duration::from_millis(head_since - 1) + HEADER_TIMEOUT)
    }
}

/// One request of a connection; its end is recorded when dropped.
pub struct RequestGuard(Arc<Activity>);

impl RequestGuard {
    /// The request's answer switches the connection's protocol (101): from
    /// now on its bytes are not requests.
    pub fn switched_protocols(&self) {
        self.0.upgraded.store(true, Ordering::Relaxed);
        self.0.head_ended();
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.0.last_end_ms.store(self.0.now_ms(), Ordering::Relaxed);
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Drives `connection` to its end, closing it gracefully (`close`: finish
/// what is in flight, then close; HTTP/2 `GOAWAY`) when its `activity` says
/// it is due (see the module's documentation) or when `shutdown` is
/// cancelled, and dropping it when a graceful close takes longer than
/// `CLOSE_GRACE`. `close` runs on the connection's own task, and the
/// connection is polled again right after it (a flag it sets is seen
/// without a wake-up).
pub async fn watch<C: Future>(
    connection: C,
    close: impl Fn(std::pin::Pin<&mut C>),
    activity: &Activity,
    idle_timeout: Duration,
    shutdown: tokio_util::sync::CancellationToken,
) {
    tokio::pin!(connection);
    let look_every = idle_timeout.min(LOOK_EVERY);
    let timer = tokio::time::sleep(look_every);
    tokio::pin!(timer);
    let cancelled = shutdown.cancelled();
    tokio::pin!(cancelled);
    let mut closing = false;
    // The timer and `shutdown`, once polled, wake the task when due; on its
    // other wake-ups (the connection's I/O, a few per request) only the
    // connection is polled, and they are read as flags: polling them again
    // cost a lock each time.
    let mut armed = false;
    std::future::poll_fn(|cx| loop {
        if connection.as_mut().poll(cx).is_ready() {
            return Poll::Ready(());
        }
        if armed && !(timer.is_elapsed() || (!closing && shutdown.is_cancelled())) {
            return Poll::Pending;
        }
        armed = false;
        if !closing && cancelled.as_mut().poll(cx).is_ready() {
            close(connection.as_mut());
            closing = true;
            timer.as_mut().reset(Instant::now() + CLOSE_GRACE);
            continue;
        }
        if timer.as_mut().poll(cx).is_ready() {
            if closing {
                return Poll::Ready(());
            }
            let now = Instant::now();
            // Late with nothing in flight: dropped; an answer being sent
            // still gets its graceful close below.
            if activity.late_head().is_some_and(|due| due <= now) && activity.in_flight.load(Ordering::Relaxed) == 0 {
                return Poll::Ready(());
            }
            match activity.deadline(idle_timeout, now) {
                Some(due) if due <= now => {
                    close(connection.as_mut());
                    closing = true;
                    timer.as_mut().reset(now + CLOSE_GRACE);
                }
                Some(due) => timer.as_mut().reset(due.min(now + look_every)),
                // Busy: look again in a while (a request's own time is bounded elsewhere).
                None => timer.as_mut().reset(now + look_every),
            }
            continue;
        }
        armed = true;
        return Poll::Pending;
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_admits_up_to_max_and_gives_places_back() {
        let limit = ConnectionLimit::new(2);
        let first = limit.admit("connection").unwrap();
        let second = limit.admit("connection").unwrap();
        assert!(limit.admit("connection").is_none());
        assert_eq!((limit.open(), limit.rejected()), (2, 1));
        drop(first);
        let third = limit.admit("flow").unwrap();
        assert_eq!(limit.open(), 2);
        limit.set_max(3);
        let fourth = limit.admit("flow").unwrap();
        drop((second, third, fourth));
        assert_eq!((limit.open(), limit.rejected()), (0, 1));
    }

    #[test]
    fn default_limits_follow_the_descriptor_limit() {
        assert_eq!(default_max_connections(20_000), 9_872);
        assert_eq!(default_max_connections(1024), 384);
        assert_eq!(default_max_connections(100), 64);
    }

    #[tokio::test(start_paused = true)]
    async fn deadlines_follow_what_the_connection_does() {
        let idle = Duration::from_secs(60);
        let activity = Activity::new();
        let opened = activity.opened;
        // Silent: the first head is due within the header timeout.
        assert_eq!(activity.deadline(idle, Instant::now()), Some(opened + HEADER_TIMEOUT));
        // A request in flight has no deadline; after it, the idle timeout runs.
        let request = activity.request();
        assert_eq!(activity.deadline(idle, Instant::now()), None);
        tokio::time::advance(Duration::from_secs(3)).await;
        drop(request);
        assert_eq!(activity.deadline(idle, Instant::now()), Some(opened + Duration::from_secs(3) + idle));
        // An answer's bytes going out after it (its body) keep it open as long.
        tokio::time::advance(Duration::from_secs(1)).await;
        activity.answering(100);
        let due = activity.deadline(idle, Instant::now()).expect("a deadline");
        // The coarse clock is real time, the test's is not: apart by the
        // real time this test took (under a second, even on a loaded machine).
        let moved_due = opened + Duration::from_secs(4) + idle;
        assert!(due <= moved_due && due + Duration::from_secs(1) > moved_due, "{:?}", moved_due - due);
        // A head that has started must be complete within the header timeout.
        activity.head_started();
        assert_eq!(activity.deadline(idle, Instant::now()), Some(opened + Duration::from_secs(4) + HEADER_TIMEOUT));
        activity.head_ended();
        // HTTP/2 before its first stream: the idle timeout.
        let h2 = Activity::new();
        h2.speaks_http2();
        assert_eq!(h2.deadline(idle, Instant::now()), Some(h2.opened + idle));
        // A PING's answer keeps no HTTP/2 connection open; an answer's data does.
        drop(h2.request());
        h2.answering(17);
        assert_eq!(h2.since_moved(), None);
        h2.answering(18);
        assert!(h2.since_moved().is_some());
    }
}
