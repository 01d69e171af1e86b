//! Choosing the target of a request: the routable set and the algorithm.
//!
//! A target group's routable targets are published as an immutable snapshot
//! (rebuilt only when health or registrations change) behind an `ArcSwap`, so
//! selecting a target takes no lock: one atomic load and one atomic increment.
//! Only healthy targets are routable; when none is, the group fails open to
//! every registered target that is not draining, as AWS does.

use std::net::Ipv4Addr;
use std::ops::Deref;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use hyper::http::uri::Authority;
use lbctl_spec::Algorithm;
use rand::Rng;

use crate::runtime::HealthState;

/// One target that requests can be forwarded to, with its counters.
#[derive(Debug)]
pub struct Backend {
    /// Target id as registered.
    pub id: String,
    /// Address.
    pub ip: Ipv4Addr,
    /// Traffic port.
    pub port: u16,
    /// `ip:port`, ready to put in a request URI.
    pub authority: Authority,
    requests: AtomicU64,
    in_flight: AtomicU64,
}

impl Backend {
    /// A backend with zeroed counters.
    pub fn new(id: &str, ip: Ipv4Addr, port: u16) -> Arc<Backend> {
        let authority =
            Authority::try_from(format!("{ip}:{port}")).expect("an IPv4 address and port form an authority");
        Arc::new(Backend {
            id: id.to_string(),
            ip,
            port,
            authority,
            requests: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
        })
    }

    /// Requests forwarded to it so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
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

/// The routable targets of a group at one moment, and how to choose among them.
#[derive(Debug)]
pub struct Candidates {
    backends: Vec<Arc<Backend>>,
    algorithm: Algorithm,
}

impl Candidates {
    /// The routable set of `targets`: the healthy ones, or, when none is
    /// healthy, every one that is not draining or unused (failing open).
    pub fn build<'a>(
        targets: impl IntoIterator<Item = (&'a Arc<Backend>, HealthState)>,
        algorithm: Algorithm,
    ) -> Candidates {
        let mut healthy = Vec::new();
        let mut registered = Vec::new();
        for (backend, state) in targets {
            match state {
                HealthState::Healthy => healthy.push(backend.clone()),
                HealthState::Initial | HealthState::Unhealthy => registered.push(backend.clone()),
                HealthState::Draining | HealthState::Unused => {}
            }
        }
        let backends = if healthy.is_empty() { registered } else { healthy };
        Candidates { backends, algorithm }
    }

    /// The target for the `turn`-th request.
    fn pick(&self, turn: usize) -> Option<&Arc<Backend>> {
        let count = self.backends.len();
        if count == 0 {
            return None;
        }
        let start = turn % count;
        match self.algorithm {
            Algorithm::RoundRobin => self.backends.get(start),
            Algorithm::WeightedRandom => self.backends.get(rand::thread_rng().gen_range(0..count)),
            // The fewest requests in flight; ties go to the next in turn, so
            // that an idle group is still served round robin.
            Algorithm::LeastOutstandingRequests => {
                (0..count).map(|offset| &self.backends[(start + offset) % count]).min_by_key(|it| it.in_flight())
            }
        }
    }
}

/// A target group's selector: the current candidates and a turn counter.
pub struct Balancer {
    candidates: ArcSwap<Candidates>,
    turn: AtomicUsize,
}

impl Default for Balancer {
    fn default() -> Self {
        Balancer {
            candidates: ArcSwap::from_pointee(Candidates { backends: Vec::new(), algorithm: Algorithm::RoundRobin }),
            turn: AtomicUsize::new(0),
        }
    }
}

impl Balancer {
    /// Publishes a new routable set; requests already routed are unaffected.
    pub fn update(&self, candidates: Candidates) {
        self.candidates.store(Arc::new(candidates));
    }

    /// The target for the next request, or `None` when nothing is routable.
    pub fn select(&self) -> Option<Arc<Backend>> {
        let candidates = self.candidates.load();
        if candidates.backends.is_empty() {
            return None;
        }
        candidates.pick(self.turn.fetch_add(1, Ordering::Relaxed)).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use HealthState::*;

    fn backends(n: u8) -> Vec<Arc<Backend>> {
        (1..=n).map(|it| Backend::new(&format!("t{it}"), Ipv4Addr::new(127, 0, 0, it), 8080)).collect()
    }

    /// Which targets ten selections reach, given each target's state.
    #[test]
    fn round_robin_over_healthy_then_fail_open() {
        fn check(states: &[HealthState], expect: &str) {
            let all = backends(states.len() as u8);
            let balancer = Balancer::default();
            balancer.update(Candidates::build(all.iter().zip(states.iter().copied()), Algorithm::RoundRobin));
            let picks: Vec<String> =
                (0..6).map(|_| balancer.select().map(|it| it.id.clone()).unwrap_or("-".into())).collect();
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

    #[test]
    fn least_outstanding_requests_prefers_idle_targets() {
        let all = backends(3);
        let balancer = Balancer::default();
        balancer.update(Candidates::build(all.iter().map(|it| (it, Healthy)), Algorithm::LeastOutstandingRequests));
        let first = InFlight::start(balancer.select().unwrap());
        let second = InFlight::start(balancer.select().unwrap());
        let third = balancer.select().unwrap();
        assert_eq!((first.id.as_str(), second.id.as_str(), third.id.as_str()), ("t1", "t2", "t3"));
        drop(first);
        // t1 is idle again and t2 is busy: t1 wins whatever the turn.
        for _ in 0..4 {
            assert_ne!(balancer.select().unwrap().id, "t2");
        }
        assert_eq!((all[1].requests(), all[1].in_flight()), (1, 1));
        drop(second);
        assert_eq!(all[1].in_flight(), 0);
    }

    #[test]
    fn weighted_random_reaches_every_candidate() {
        let all = backends(2);
        let balancer = Balancer::default();
        balancer.update(Candidates::build(all.iter().map(|it| (it, Healthy)), Algorithm::WeightedRandom));
        let picks: std::collections::BTreeSet<String> =
            (0..200).map(|_| balancer.select().unwrap().id.clone()).collect();
        assert_eq!(picks.len(), 2);
    }
}
