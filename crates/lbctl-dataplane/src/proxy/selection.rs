//! Choosing the target of a request: the routable set, the algorithm, slow
//! start and stickiness.
//!
//! A target group's routable targets are published as an immutable snapshot
//! (rebuilt only when health or registrations change) behind an `ArcSwap`, so
//! selecting a target takes no lock: one atomic load and one atomic increment.
//! Only healthy targets are routable; when none is, the group fails open to
//! every registered target that is not draining, as AWS does.
//!
//! Algorithms (AWS's): `round_robin` takes each target in turn;
//! `least_outstanding_requests` the one with the fewest requests in flight
//! from this proxy, ties going to the next in turn; `weighted_random` draws
//! at random, every target weighing the same unless in slow start.
//!
//! **Slow start** (round robin and weighted random): a target that becomes
//! healthy while another healthy target is not in slow start gets a share
//! that grows linearly from nothing to full over the group's `slow_start`.
//! While a target ramps, a request reads the clock and weighs the candidates
//! (no allocation); the group's manager republishes the set when the ramps
//! are over, and requests take the plain path again.
//!
//! **Stickiness**: the load balancer's `AWSALB` cookie pins a client to a
//! target for the group's `duration`. Its value is opaque: a keyed hash of
//! the target id, the expiry, and a MAC of both under a secret drawn when
//! the proxy starts (so cookies do not outlive the proxy process). A request
//! whose cookie is valid and names a target that is still routable goes to
//! that target; any other gets a target as usual and a new cookie.
//!
//! **Flow hash** (network load balancers): a connection or UDP flow goes to
//! the routable target its flow hash picks, whatever the algorithm; it stays
//! there for its life because the connection is bound to it, not because
//! selection remembers it.

use std::hash::{BuildHasher, RandomState};
use std::net::Ipv4Addr;
use std::ops::Deref;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use bytes::Bytes;
use hyper::header::{HeaderValue, COOKIE};
use hyper::http::uri::Authority;
use hyper::HeaderMap;
use lbctl_spec::Algorithm;
use rand::Rng;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::lambda::Function;
use super::upstream::{Http1Pool, Http2Connection};
use crate::runtime::HealthState;

/// The stickiness cookie's name (AWS's load-balancer-generated cookie).
pub const STICKY_COOKIE: &str = "AWSALB";
/// AWS's cross-origin copy of the cookie, honoured when `AWSALB` is absent.
const STICKY_COOKIE_CORS: &str = "AWSALBCORS";
/// Hex digits of a stickiness token: target key, expiry and MAC, 8 bytes each.
const STICKY_TOKEN_LEN: usize = 48;

/// The secret keying stickiness tokens and target keys, drawn once per process.
static STICKY_SECRET: LazyLock<RandomState> = LazyLock::new(RandomState::new);

/// One target that requests can be forwarded to, with its counters.
#[derive(Debug)]
pub struct Backend {
    /// Target id as registered.
    pub id: String,
    /// Address (0.0.0.0 for a function).
    pub ip: Ipv4Addr,
    /// Traffic port (0 for a function).
    pub port: u16,
    /// `ip:port`, ready to put in a request URI.
    pub authority: Authority,
    /// The function this target is, in a `lambda` target group.
    pub function: Option<Function>,
    /// Its HTTP/2 connection (HTTP/2 and gRPC groups), made on first use.
    pub h2: Http2Connection,
    /// Its idle HTTP/1.1 connections (plain HTTP groups).
    pub h1: Http1Pool,
    /// What stickiness cookies name this target by: a keyed hash of its id.
    sticky_key: u64,
    /// Client requests forwarded to it (connections, for a network load balancer).
    requests: AtomicU64,
    /// Health checks forwarded to it (another load balancer's, through
    /// this one): counted apart from client requests.
    health_checks: AtomicU64,
    in_flight: AtomicU64,
    /// Cancelled when the target leaves its group (drained, or the group
    /// is gone): connections still relayed to it close then.
    retired: CancellationToken,
}

impl Backend {
    /// A backend with zeroed counters.
    pub fn new(id: &str, ip: Ipv4Addr, port: u16) -> Arc<Backend> {
        Arc::new(Backend::with_function(id, ip, port, None))
    }

    /// A function target, named by its function.
    pub fn lambda(function: Function) -> Arc<Backend> {
        let id = function.name.clone();
        Arc::new(Backend::with_function(&id, Ipv4Addr::UNSPECIFIED, 0, Some(function)))
    }

    fn with_function(id: &str, ip: Ipv4Addr, port: u16, function: Option<Function>) -> Backend {
        let authority =
            Authority::try_from(format!("{ip}:{port}")).expect("an IPv4 address and port form an authority");
        Backend {
            id: id.to_string(),
            ip,
            port,
            authority,
            function,
            h2: Http2Connection::default(),
            h1: Http1Pool::default(),
            sticky_key: STICKY_SECRET.hash_one(("target", id)),
            requests: AtomicU64::new(0),
            health_checks: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            retired: CancellationToken::new(),
        }
    }

    /// Marks the target as gone from its group: what still relays to it
    /// stops (`retired`).
    pub fn retire(&self) {
        self.retired.cancel();
    }

    /// Resolves once the target has left its group.
    pub fn retired(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.retired.cancelled()
    }

    /// What a request needs of it (`upstream::Upstream::send`).
    pub fn endpoint(&self) -> super::upstream::Endpoint<'_> {
        super::upstream::Endpoint {
            address: std::net::SocketAddr::from((self.ip, self.port)),
            authority: &self.authority,
            h1: &self.h1,
            h2: &self.h2,
        }
    }

    /// Requests forwarded to it so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Health checks forwarded to it so far.
    pub fn health_checks(&self) -> u64 {
        self.health_checks.load(Ordering::Relaxed)
    }

    /// Requests forwarded to it that have not finished yet.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }
}

/// A request in flight to a backend: counted when made, uncounted when
/// dropped (after the response body has been sent or abandoned).
#[derive(Debug)]
pub struct InFlight(Arc<Backend>);

impl InFlight {
    /// Counts a new request to `backend`.
    pub fn start(backend: Arc<Backend>) -> InFlight {
        backend.requests.fetch_add(1, Ordering::Relaxed);
        backend.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(backend)
    }

    /// Counts a new request to `backend`: a health check (another load
    /// balancer's) when `health_check`, else a client's.
    pub fn start_request(backend: Arc<Backend>, health_check: bool) -> InFlight {
        let counter = if health_check { &backend.health_checks } else { &backend.requests };
        counter.fetch_add(1, Ordering::Relaxed);
        backend.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(backend)
    }
}

impl InFlight {
    /// The target as log lines name it: `id (ip:port)`.
    pub fn describe(&self) -> String {
        format!("{} ({}:{})", self.0.id, self.0.ip, self.0.port)
    }

    /// The target, shared.
    pub fn backend(&self) -> Arc<Backend> {
        self.0.clone()
    }
}

impl Deref for InFlight {
    type Target = Backend;
    fn deref(&self) -> &Backend {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How a target group spreads requests: its settings that selection uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Routing {
    /// The algorithm.
    pub algorithm: Algorithm,
    /// How long a newly healthy target ramps up; zero: no slow start.
    pub slow_start: Duration,
    /// The stickiness cookie's lifetime; `None`: no stickiness.
    pub stickiness: Option<Duration>,
}

impl Routing {
    /// The routing settings of a target group.
    pub fn of(group: &lbctl_spec::settings::TargetGroup) -> Routing {
        Routing {
            algorithm: group.algorithm(),
            slow_start: group.slow_start.get(),
            stickiness: group.stickiness.enabled.then(|| group.stickiness.duration.get()),
        }
    }
}

impl Default for Routing {
    /// Round robin, no slow start, no stickiness.
    fn default() -> Self {
        Routing { algorithm: Algorithm::RoundRobin, slow_start: Duration::ZERO, stickiness: None }
    }
}

/// The routable targets of a group at one moment, and how to choose among them.
#[derive(Debug)]
pub struct Candidates {
    backends: Vec<Arc<Backend>>,
    /// When each backend's slow start began, by index in `backends`; empty
    /// when none ramps.
    ramp_starts: Vec<Option<Instant>>,
    /// When the last slow start ends; `None` when none ramps.
    ramp_until: Option<Instant>,
    routing: Routing,
}

impl Candidates {
    /// The routable set of `targets` (each with its state and, when it is in
    /// slow start, since when): the healthy ones, or, when none is healthy,
    /// every one that is not draining or unused (failing open, without slow
    /// start). Slow start applies to round robin and weighted random, and
    /// never to a lone target.
    pub fn build<'a>(
        targets: impl IntoIterator<Item = (&'a Arc<Backend>, HealthState, Option<Instant>)>,
        routing: Routing,
    ) -> Candidates {
        let mut healthy = Vec::new();
        let mut ramp_starts = Vec::new();
        let mut registered = Vec::new();
        for (backend, state, slow_start_since) in targets {
            match state {
                HealthState::Healthy => {
                    healthy.push(backend.clone());
                    ramp_starts.push(slow_start_since);
                }
                HealthState::Initial | HealthState::Unhealthy => registered.push(backend.clone()),
                HealthState::Draining | HealthState::Unused => {}
            }
        }
        if healthy.is_empty() {
            return Candidates { backends: registered, ramp_starts: Vec::new(), ramp_until: None, routing };
        }
        let ramps = !routing.slow_start.is_zero()
            && routing.algorithm != Algorithm::LeastOutstandingRequests
            && healthy.len() > 1;
        let ramp_until = ramp_starts.iter().flatten().max().filter(|_| ramps).map(|it| *it + routing.slow_start);
        if ramp_until.is_none() {
            ramp_starts.clear();
        }
        Candidates { backends: healthy, ramp_starts, ramp_until, routing }
    }

    /// The target for the `turn`-th request.
    fn pick(&self, turn: usize) -> Option<&Arc<Backend>> {
        let count = self.backends.len();
        if count == 0 {
            return None;
        }
        if let Some(until) = self.ramp_until {
            let now = Instant::now();
            if now < until {
                if let Some(backend) = self.pick_ramping(now, turn) {
                    return Some(backend);
                }
            }
        }
        let start = turn % count;
        match self.routing.algorithm {
            Algorithm::RoundRobin => self.backends.get(start),
            Algorithm::WeightedRandom => self.backends.get(rand::thread_rng().gen_range(0..count)),
            // The fewest requests in flight; ties go to the next in turn, so
            // that an idle group is still served round robin.
            Algorithm::LeastOutstandingRequests => {
                (0..count).map(|offset| &self.backends[(start + offset) % count]).min_by_key(|it| it.in_flight())
            }
        }
    }

    /// The pick while targets ramp: every target weighs 1, one in slow start
    /// the part of the period that has passed, and each gets its weight's
    /// share of the total. Round robin spreads its turns evenly over the
    /// total (a golden-ratio sequence), weighted random draws. `None` when
    /// every weight is still zero.
    fn pick_ramping(&self, now: Instant, turn: usize) -> Option<&Arc<Backend>> {
        let period = self.routing.slow_start.as_secs_f64();
        let weight = |idx: usize| match self.ramp_starts[idx] {
            Some(since) => (now.saturating_duration_since(since).as_secs_f64() / period).min(1.0),
            None => 1.0,
        };
        let total: f64 = (0..self.backends.len()).map(weight).sum();
        if total <= 0.0 {
            return None;
        }
        let point = match self.routing.algorithm {
            Algorithm::WeightedRandom => rand::thread_rng().gen::<f64>(),
            _ => golden_ratio_point(turn),
        };
        let mut rest = point * total;
        let mut last_weighed = None;
        for (idx, backend) in self.backends.iter().enumerate() {
            let weight = weight(idx);
            if rest < weight {
                return Some(backend);
            }
            rest -= weight;
            if weight > 0.0 {
                last_weighed = Some(backend);
            }
        }
        // Only rounding gets here.
        last_weighed
    }
}

/// The `turn`-th point of the golden-ratio sequence in [0, 1): consecutive
/// turns land evenly spread, so shares match weights closely without state.
fn golden_ratio_point(turn: usize) -> f64 {
    /// 2^64 divided by the golden ratio.
    const INVERSE_GOLDEN_RATIO: u64 = 0x9E37_79B9_7F4A_7C15;
    let fraction = (turn as u64).wrapping_mul(INVERSE_GOLDEN_RATIO);
    (fraction >> 11) as f64 / (1u64 << 53) as f64
}

/// A target group's selector: the current candidates and a turn counter.
pub struct Balancer {
    candidates: ArcSwap<Candidates>,
    turn: AtomicUsize,
}

impl Default for Balancer {
    fn default() -> Self {
        let candidates =
            Candidates { backends: Vec::new(), ramp_starts: Vec::new(), ramp_until: None, routing: Routing::default() };
        Balancer { candidates: ArcSwap::from_pointee(candidates), turn: AtomicUsize::new(0) }
    }
}

impl Balancer {
    /// Publishes a new routable set; requests already routed are unaffected.
    pub fn update(&self, candidates: Candidates) {
        self.candidates.store(Arc::new(candidates));
    }

    /// The target for a request with these headers, and the stickiness
    /// cookie to set on its response when the group has stickiness on: the
    /// target its valid cookie names while that target is routable, else
    /// the next one. `None` when nothing is routable.
    pub fn select_with(&self, headers: &HeaderMap) -> Option<(Arc<Backend>, Option<HeaderValue>)> {
        let candidates = self.candidates.load();
        if candidates.backends.is_empty() {
            return None;
        }
        let Some(lifetime) = candidates.routing.stickiness else {
            return candidates.pick(self.next_turn()).map(|it| (it.clone(), None));
        };
        let now = unix_seconds();
        let pinned =
            pinned_key(headers, now).and_then(|key| candidates.backends.iter().find(|it| it.sticky_key == key));
        let backend = match pinned {
            Some(backend) => backend,
            None => candidates.pick(self.next_turn())?,
        };
        Some((backend.clone(), Some(sticky_cookie(backend.sticky_key, now, lifetime))))
    }

    /// The stickiness cookie pinning a client to `backend` (the target that
    /// answered after a retry), when the group has stickiness on.
    pub fn sticky_cookie_for(&self, backend: &Backend) -> Option<HeaderValue> {
        let lifetime = self.candidates.load().routing.stickiness?;
        Some(sticky_cookie(backend.sticky_key, unix_seconds(), lifetime))
    }

    /// The target for the retry of a request that `failed` could not
    /// answer: the next routable target in turn other than `failed`, whatever
    /// the algorithm (retries are rare; spreading them is enough). `None`
    /// when `failed` is the only one.
    pub fn select_other(&self, failed: &Backend) -> Option<Arc<Backend>> {
        let candidates = self.candidates.load();
        let count = candidates.backends.len();
        let start = self.next_turn();
        (0..count)
            .map(|offset| &candidates.backends[(start + offset) % count])
            .find(|it| !std::ptr::eq(it.as_ref(), failed))
            .cloned()
    }

    /// The target of a new flow with hash `hash`: the routable target at
    /// the hash's place, or the next one after it that is not in `refused`
    /// (targets a connection of this flow could not reach). `None` when
    /// nothing (else) is routable.
    pub fn select_flow(&self, hash: u64, refused: &[Arc<Backend>]) -> Option<Arc<Backend>> {
        let candidates = self.candidates.load();
        let count = candidates.backends.len();
        let start = (hash % count.max(1) as u64) as usize;
        (0..count)
            .map(|offset| &candidates.backends[(start + offset) % count])
            .find(|it| !refused.iter().any(|refused| Arc::ptr_eq(it, refused)))
            .cloned()
    }

    fn next_turn(&self) -> usize {
        self.turn.fetch_add(1, Ordering::Relaxed)
    }
}

fn unix_seconds() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|it| it.as_secs()).unwrap_or(0)
}

/// The MAC of a stickiness token's target key and expiry.
fn sticky_mac(key: u64, expires: u64) -> u64 {
    STICKY_SECRET.hash_one((STICKY_COOKIE, key, expires))
}

/// The `Set-Cookie` value pinning a client to the target of `key` for
/// `lifetime` from `now` (Unix seconds).
fn sticky_cookie(key: u64, now: u64, lifetime: Duration) -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let expires = now.saturating_add(lifetime.as_secs());
    let mut raw = [0u8; 24];
    raw[..8].copy_from_slice(&key.to_be_bytes());
    raw[8..16].copy_from_slice(&expires.to_be_bytes());
    raw[16..].copy_from_slice(&sticky_mac(key, expires).to_be_bytes());
    let mut value = Vec::with_capacity(STICKY_COOKIE.len() + STICKY_TOKEN_LEN + 40);
    value.extend_from_slice(STICKY_COOKIE.as_bytes());
    value.push(b'=');
    for byte in raw {
        value.push(HEX[usize::from(byte >> 4)]);
        value.push(HEX[usize::from(byte & 0xf)]);
    }
    value.extend_from_slice(format!("; Max-Age={}; Path=/", lifetime.as_secs()).as_bytes());
    HeaderValue::from_maybe_shared(Bytes::from(value)).expect("hex digits and ASCII attributes form a header value")
}

/// The target key of the request's valid stickiness cookie, if any: an
/// `AWSALB` cookie whose MAC matches and which has not expired at `now`
/// (else an `AWSALBCORS` cookie that is valid).
fn pinned_key(headers: &HeaderMap, now: u64) -> Option<u64> {
    let mut cors = None;
    for value in headers.get_all(COOKIE) {
        for pair in value.as_bytes().split(|it| *it == b';') {
            let Some((name, token)) = pair.trim_ascii().split_once_byte(b'=') else { continue };
            if name == STICKY_COOKIE.as_bytes() {
                if let Some(key) = verify_token(token, now) {
                    return Some(key);
                }
            } else if name == STICKY_COOKIE_CORS.as_bytes() && cors.is_none() {
                cors = verify_token(token, now);
            }
        }
    }
    cors
}

/// The target key of a stickiness token that is authentic and not expired.
fn verify_token(token: &[u8], now: u64) -> Option<u64> {
    if token.len() != STICKY_TOKEN_LEN {
        return None;
    }
    let mut words = [0u64; 3];
    for (word, digits) in words.iter_mut().zip(token.chunks(16)) {
        for digit in digits {
            let nibble = match digit {
                b'0'..=b'9' => digit - b'0',
                b'a'..=b'f' => digit - b'a' + 10,
                _ => return None,
            };
            *word = (*word << 4) | u64::from(nibble);
        }
    }
    let [key, expires, mac] = words;
    (mac == sticky_mac(key, expires) && expires > now).then_some(key)
}

/// `split_once` for byte strings.
trait SplitOnceByte {
    fn split_once_byte(&self, separator: u8) -> Option<(&[u8], &[u8])>;
}

impl SplitOnceByte for [u8] {
    fn split_once_byte(&self, separator: u8) -> Option<(&[u8], &[u8])> {
        let at = self.iter().position(|it| *it == separator)?;
        Some((&self[..at], &self[at + 1..]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use HealthState::*;

    fn backends(n: u8) -> Vec<Arc<Backend>> {
        (1..=n).map(|it| Backend::new(&format!("t{it}"), Ipv4Addr::new(127, 0, 0, it), 8080)).collect()
    }

    /// The next pick for a request without cookies.
    fn select(balancer: &Balancer) -> Arc<Backend> {
        balancer.select_with(&HeaderMap::new()).unwrap().0
    }

    fn routing(algorithm: Algorithm) -> Routing {
        Routing { algorithm, ..Routing::default() }
    }

    fn balancer(all: &[Arc<Backend>], states: &[HealthState], routing: Routing) -> Balancer {
        let balancer = Balancer::default();
        let targets = all.iter().zip(states.iter().copied()).map(|(backend, state)| (backend, state, None));
        balancer.update(Candidates::build(targets, routing));
        balancer
    }

    /// How many of `picks` selections each target gets.
    fn shares(picks: usize, mut select: impl FnMut() -> String) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for _ in 0..picks {
            *counts.entry(select()).or_insert(0) += 1;
        }
        counts
    }

    /// Which targets six selections reach, given each target's state.
    #[test]
    fn round_robin_over_healthy_then_fail_open() {
        fn check(states: &[HealthState], expect: &str) {
            let all = backends(states.len() as u8);
            let balancer = balancer(&all, states, Routing::default());
            let picks: Vec<String> = (0..6)
                .map(|_| balancer.select_with(&HeaderMap::new()).map(|it| it.0.id.clone()).unwrap_or("-".into()))
                .collect();
            assert_eq!(picks.join(" "), expect, "{states:?}");
        }
        check(&[Healthy, Healthy, Healthy], "t1 t2 t3 t1 t2 t3");
        check(&[Healthy, Unhealthy, Healthy], "t1 t3 t1 t3 t1 t3");
        check(&[Initial, Healthy, Draining], "t2 t2 t2 t2 t2 t2");
        check(&[Unhealthy, Initial, Draining], "t1 t2 t1 t2 t1 t2");
        check(&[Draining, Draining], "- - - - - -");
        check(&[Unused], "- - - - - -");
        check(&[], "- - - - - -");
    }

    /// A flow hash picks one routable target, the same every time; a
    /// refused target is skipped; nothing routable is `None`.
    #[test]
    fn flows_are_placed_by_their_hash() {
        let all = backends(3);
        let balancer = balancer(&all, &[Healthy, Unhealthy, Healthy], Routing::default());
        let pick = |hash: u64, refused: &[Arc<Backend>]| balancer.select_flow(hash, refused).map(|it| it.id.clone());
        assert_eq!(
            (pick(0, &[]), pick(1, &[]), pick(2, &[])),
            (Some("t1".into()), Some("t3".into()), Some("t1".into()))
        );
        assert_eq!(pick(7, &[]), pick(7, &[]));
        assert_eq!(pick(0, &all[..1]), Some("t3".into()));
        assert_eq!(pick(0, &[all[0].clone(), all[2].clone()]), None);
        let spread = shares(1000, || pick(rand::random(), &[]).unwrap());
        assert!(spread.values().all(|it| *it > 400), "{spread:?}");
        let empty = self::balancer(&[], &[], Routing::default());
        assert!(empty.select_flow(5, &[]).is_none());
    }

    #[test]
    fn a_retry_goes_to_another_target() {
        let all = backends(3);
        let balancer = balancer(&all, &[Healthy, Healthy, Unhealthy], Routing::default());
        let picks: Vec<String> = (0..4).map(|_| balancer.select_other(&all[0]).unwrap().id.clone()).collect();
        assert_eq!(picks.join(" "), "t2 t2 t2 t2");
        let lone = self::balancer(&all[..1], &[Healthy], Routing::default());
        assert!(lone.select_other(&all[0]).is_none());
        assert_eq!(lone.select_other(&all[1]).unwrap().id, "t1");
    }

    #[test]
    fn least_outstanding_requests_prefers_idle_targets() {
        let all = backends(3);
        let balancer = balancer(&all, &[Healthy; 3], routing(Algorithm::LeastOutstandingRequests));
        let first = InFlight::start(select(&balancer));
        let second = InFlight::start(select(&balancer));
        let third = select(&balancer);
        assert_eq!((first.id.as_str(), second.id.as_str(), third.id.as_str()), ("t1", "t2", "t3"));
        drop(first);
        // t1 is idle again and t2 is busy: t1 wins whatever the turn.
        for _ in 0..4 {
            assert_ne!(select(&balancer).id, "t2");
        }
        assert_eq!((all[1].requests(), all[1].in_flight()), (1, 1));
        drop(second);
        assert_eq!(all[1].in_flight(), 0);
        // Busy targets are avoided as long as an idle one is left.
        let busy: Vec<InFlight> = (0..2).map(|_| InFlight::start(select(&balancer))).collect();
        let idle: Vec<&str> = all.iter().filter(|it| it.in_flight() == 0).map(|it| it.id.as_str()).collect();
        assert_eq!(idle.len(), 1);
        for _ in 0..6 {
            assert_eq!(select(&balancer).id, idle[0]);
        }
        drop(busy);
    }

    #[test]
    fn weighted_random_spreads_evenly() {
        let all = backends(3);
        let balancer = balancer(&all, &[Healthy; 3], routing(Algorithm::WeightedRandom));
        let counts = shares(3000, || select(&balancer).id.clone());
        assert_eq!(counts.len(), 3, "{counts:?}");
        assert!(counts.values().all(|it| (800..=1200).contains(it)), "{counts:?}");
    }

    /// Shares of 2000 selections when t2 of three healthy targets has been
    /// in slow start for `elapsed` of a 100 s period.
    fn ramp_shares(algorithm: Algorithm, elapsed: Duration, count: u8) -> BTreeMap<String, usize> {
        let all = backends(count);
        let since = Instant::now().checked_sub(elapsed).unwrap();
        let routing = Routing { algorithm, slow_start: Duration::from_secs(100), stickiness: None };
        let targets = all.iter().enumerate().map(|(idx, it)| (it, Healthy, (idx == 1).then_some(since)));
        let balancer = Balancer::default();
        balancer.update(Candidates::build(targets, routing));
        shares(2000, || select(&balancer).id.clone())
    }

    #[test]
    fn slow_start_ramps_a_new_target_linearly() {
        fn check(algorithm: Algorithm, elapsed_secs: u64, count: u8, expect: &[(&str, usize)], tolerance: usize) {
            let got = ramp_shares(algorithm, Duration::from_secs(elapsed_secs), count);
            for (id, share) in expect {
                let got_share = got.get(*id).copied().unwrap_or(0);
                assert!(got_share.abs_diff(*share) <= tolerance, "{algorithm:?} {elapsed_secs}s: {got:?}");
            }
        }
        // Weights 1, 0.25, 1: t2 gets 0.25 / 2.25 of the requests.
        check(Algorithm::RoundRobin, 25, 3, &[("t1", 889), ("t2", 222), ("t3", 889)], 10);
        check(Algorithm::WeightedRandom, 25, 3, &[("t1", 889), ("t2", 222), ("t3", 889)], 120);
        // Nothing at the start, everything once the period is over.
        check(Algorithm::RoundRobin, 0, 3, &[("t2", 0)], 2);
        check(Algorithm::RoundRobin, 100, 3, &[("t1", 667), ("t2", 667), ("t3", 667)], 2);
        // Not with least outstanding requests (AWS forbids the combination),
        // and not for a lone target.
        check(Algorithm::LeastOutstandingRequests, 0, 3, &[("t1", 667), ("t2", 667), ("t3", 667)], 2);
        let all = backends(2);
        let just_now = Instant::now();
        let routing = Routing { slow_start: Duration::from_secs(100), ..Routing::default() };
        let lone = Candidates::build([(&all[1], Healthy, Some(just_now)), (&all[0], Unhealthy, None)], routing);
        assert_eq!(lone.ramp_until, None);
        let pair = Candidates::build([(&all[1], Healthy, Some(just_now)), (&all[0], Healthy, None)], routing);
        assert_eq!(pair.ramp_until, Some(just_now + Duration::from_secs(100)));
    }

    /// The `Cookie` header value that sends back a `Set-Cookie` value.
    fn cookie_header(set_cookie: &HeaderValue) -> HeaderMap {
        let pair = set_cookie.to_str().unwrap().split(';').next().unwrap().to_string();
        let mut headers = HeaderMap::new();
        headers.insert(COOKIE, HeaderValue::from_str(&format!("other=1; {pair}; more=2")).unwrap());
        headers
    }

    #[test]
    fn stickiness_pins_clients_to_routable_targets() {
        let all = backends(3);
        let sticky = Routing { stickiness: Some(Duration::from_secs(3600)), ..Routing::default() };
        let balancer = balancer(&all, &[Healthy; 3], sticky);

        // No cookie: round robin, and a cookie naming the target.
        let (first, cookie) = balancer.select_with(&HeaderMap::new()).unwrap();
        let cookie = cookie.unwrap();
        let text = cookie.to_str().unwrap();
        assert!(text.starts_with("AWSALB=") && text.ends_with("; Max-Age=3600; Path=/"), "{text}");
        assert!(!text.contains("t1") && !text.contains("127.0.0"), "opaque: {text}");
        let headers = cookie_header(&cookie);
        for _ in 0..20 {
            let (backend, refreshed) = balancer.select_with(&headers).unwrap();
            assert_eq!(backend.id, first.id);
            assert!(refreshed.is_some(), "the cookie is refreshed on every response");
        }
        // Without stickiness the same headers change nothing.
        let plain = self::balancer(&all, &[Healthy; 3], Routing::default());
        let picks: Vec<String> = (0..3).map(|_| plain.select_with(&headers).unwrap().0.id.clone()).collect();
        assert_eq!((picks.join(" "), plain.select_with(&headers).unwrap().1), ("t1 t2 t3".into(), None));

        // A tampered, expired or foreign cookie is ignored.
        let token = text.split(';').next().unwrap().trim_start_matches("AWSALB=");
        let tampered = format!("AWSALB={}{}", &token[..47], if token.ends_with('0') { '1' } else { '0' });
        let key = u64::from_str_radix(&token[..16], 16).unwrap();
        let expired = {
            let value = sticky_cookie(key, 1000, Duration::from_secs(10));
            value.to_str().unwrap().split(';').next().unwrap().to_string()
        };
        for cookie in [tampered.as_str(), expired.as_str(), "AWSALB=zz", "AWSALB=", "AWSALB"] {
            let mut headers = HeaderMap::new();
            headers.insert(COOKIE, HeaderValue::from_str(cookie).unwrap());
            assert_eq!(pinned_key(&headers, unix_seconds()), None, "{cookie}");
        }
        // The cross-origin copy works too, and the plain cookie wins over it.
        let mut cors = HeaderMap::new();
        cors.insert(COOKIE, HeaderValue::from_str(&format!("AWSALBCORS={token}")).unwrap());
        assert_eq!(pinned_key(&cors, unix_seconds()), Some(key));

        // A pinned target that is no longer routable: another one, and a new cookie.
        let states = all.iter().map(|it| if it.id == first.id { Unhealthy } else { Healthy }).collect::<Vec<_>>();
        let targets = all.iter().zip(states).map(|(backend, state)| (backend, state, None));
        balancer.update(Candidates::build(targets, sticky));
        let (moved, new_cookie) = balancer.select_with(&headers).unwrap();
        assert_ne!(moved.id, first.id);
        assert_ne!(new_cookie.as_ref(), Some(&cookie));
        let headers = cookie_header(&new_cookie.unwrap());
        for _ in 0..5 {
            assert_eq!(balancer.select_with(&headers).unwrap().0.id, moved.id);
        }

        // After a retry, the cookie names the target that answered.
        let answered = all.iter().find(|it| it.id != first.id && it.id != moved.id).unwrap();
        let headers = cookie_header(&balancer.sticky_cookie_for(answered).unwrap());
        assert_eq!(balancer.select_with(&headers).unwrap().0.id, answered.id);
        assert_eq!(plain.sticky_cookie_for(answered), None, "no stickiness, no cookie");
    }

    #[test]
    fn golden_ratio_points_spread_evenly() {
        let mut buckets = [0usize; 10];
        for turn in 0..1000 {
            buckets[(golden_ratio_point(turn) * 10.0) as usize] += 1;
        }
        assert!(buckets.iter().all(|it| (95..=105).contains(it)), "{buckets:?}");
    }
}
