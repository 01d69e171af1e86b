//! A target group as one proxy runs it: discovery, health checks and
//! selection tied together.
//!
//! Each group has one manager task that owns its target table: it polls the
//! registry, starts a health check task per target, applies their results,
//! drains deregistered targets, and publishes two snapshots whenever
//! something changes: the routable set (read by every request, lock-free)
//! and the targets' health (read by the status writer).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use lbctl_spec::Algorithm;
use tokio::sync::mpsc::{unbounded_channel, UnboundedSender};
use tokio::time::{Instant, MissedTickBehavior};

use super::discovery::{Discovered, Registry};
use super::health_check::{self, Change, HealthCheck, Outcome, Tracker};
use super::selection::{Backend, Balancer, Candidates};
use super::status::StatusBoard;
use super::AbortOnDrop;
use crate::runtime::{HealthState, Layout, RegisteredTarget, TargetHealth};

/// How often a group's registry is re-read.
const DISCOVERY_INTERVAL: Duration = Duration::from_millis(200);

/// A target group, shared by the listeners that forward to it.
pub struct TargetGroup {
    /// Its name.
    pub name: String,
    balancer: Balancer,
    records: ArcSwap<Vec<TargetRecord>>,
}

/// One target's published state.
#[derive(Debug, Clone)]
struct TargetRecord {
    backend: Arc<Backend>,
    state: HealthState,
    reason: String,
}

impl TargetGroup {
    /// A group with no targets yet.
    pub fn new(name: &str) -> Arc<TargetGroup> {
        Arc::new(TargetGroup { name: name.to_string(), balancer: Balancer::default(), records: ArcSwap::default() })
    }

    /// The target for the next request, if any is routable.
    pub fn select(&self) -> Option<Arc<Backend>> {
        self.balancer.select()
    }

    /// Every target's health, in id order, for the status file.
    pub fn health(&self) -> Vec<TargetHealth> {
        self.records
            .load()
            .iter()
            .map(|it| TargetHealth {
                id: it.backend.id.clone(),
                ip: it.backend.ip,
                port: it.backend.port,
                state: it.state,
                reason: it.reason.clone(),
                requests: it.backend.requests(),
            })
            .collect()
    }
}

/// Runs the group until the task is aborted: polls the registry, checks
/// targets, and publishes changes (touching `board` so the status follows).
pub async fn manage(group: Arc<TargetGroup>, layout: Layout, board: Arc<StatusBoard>) {
    let mut registry = Registry::new(&layout, &group.name);
    let mut table = Table::new(&group.name);
    let (results_tx, mut results) = unbounded_channel::<CheckResult>();
    let mut tick = tokio::time::interval(DISCOVERY_INTERVAL);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        let changed = tokio::select! {
            _ = tick.tick() => {
                let now = Instant::now();
                let mut changed = match registry.poll() {
                    Some(Ok(discovered)) => table.apply(discovered, now),
                    Some(Err(problem)) => {
                        eprintln!("target group {}: keeping the previous targets: {problem}", group.name);
                        false
                    }
                    None => false,
                };
                changed |= table.expire(now);
                changed
            }
            Some(result) = results.recv() => table.record(result) != Change::None,
        };
        table.start_checkers(&results_tx);
        if changed {
            table.publish(&group);
            board.touch();
        }
    }
}

/// A health check result, tagged with the check task that produced it.
#[derive(Debug)]
struct CheckResult {
    target: RegisteredTarget,
    generation: u64,
    outcome: Outcome,
}

/// Probes one target every interval, the first time at once.
async fn check_loop(
    check: Arc<HealthCheck>,
    target: RegisteredTarget,
    generation: u64,
    results: UnboundedSender<CheckResult>,
) {
    let mut tick = tokio::time::interval(check.interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let outcome = health_check::probe(&check, target.ip, target.port).await;
        if results.send(CheckResult { target: target.clone(), generation, outcome }).is_err() {
            return;
        }
    }
}

/// A group's settings that its manager uses.
struct Settings {
    check: Arc<HealthCheck>,
    algorithm: Algorithm,
    deregistration_delay: Duration,
}

/// One registered (or draining) target.
struct Entry {
    backend: Arc<Backend>,
    tracker: Tracker,
    /// When a draining target is dropped.
    drain_until: Option<Instant>,
    /// Identifies the current health check task; results of older ones are ignored.
    generation: u64,
    checker: Option<AbortOnDrop>,
}

/// The manager's view of its targets.
struct Table {
    name: String,
    settings: Option<Settings>,
    entries: BTreeMap<RegisteredTarget, Entry>,
    generations: u64,
}

impl Table {
    fn new(name: &str) -> Table {
        Table { name: name.to_string(), settings: None, entries: BTreeMap::new(), generations: 0 }
    }

    fn next_generation(&mut self) -> u64 {
        self.generations += 1;
        self.generations
    }

    /// Applies what the registry holds; true when anything visible changed.
    fn apply(&mut self, discovered: Discovered, now: Instant) -> bool {
        let name = &self.name;
        let Some(config) = discovered.config else {
            if !self.entries.is_empty() {
                eprintln!("target group {name}: group.json is gone; dropping its targets");
            }
            let changed = !self.entries.is_empty() || self.settings.is_some();
            self.entries.clear();
            self.settings = None;
            return changed;
        };
        let group = &config.settings;
        let settings = Settings {
            check: Arc::new(HealthCheck::of(group)),
            algorithm: group.algorithm,
            deregistration_delay: group.deregistration_delay.get(),
        };
        let mut changed = match &self.settings {
            Some(old) => old.algorithm != settings.algorithm,
            None => true,
        };
        if self.settings.as_ref().is_some_and(|old| old.check != settings.check) {
            // New health check settings: restart every check, keeping states.
            let keys: Vec<RegisteredTarget> = self.entries.keys().cloned().collect();
            for key in keys {
                let generation = self.next_generation();
                let entry = self.entries.get_mut(&key).expect("listed above");
                entry.checker = None;
                entry.generation = generation;
            }
        }
        let delay = settings.deregistration_delay;
        self.settings = Some(settings);

        for target in &discovered.targets {
            let generation = self.next_generation();
            match self.entries.get_mut(target) {
                None => {
                    eprintln!("target group {}: registered {} ({}:{})", self.name, target.id, target.ip, target.port);
                    let entry = Entry {
                        backend: Backend::new(&target.id, target.ip, target.port),
                        tracker: Tracker::default(),
                        drain_until: None,
                        generation,
                        checker: None,
                    };
                    self.entries.insert(target.clone(), entry);
                    changed = true;
                }
                Some(entry) if entry.tracker.state() == HealthState::Draining => {
                    eprintln!("target group {}: registered {} again while it was draining", self.name, target.id);
                    entry.tracker = Tracker::default();
                    entry.drain_until = None;
                    entry.generation = generation;
                    entry.checker = None;
                    changed = true;
                }
                Some(_) => {}
            }
        }
        for (target, entry) in &mut self.entries {
            if !discovered.targets.contains(target) && entry.tracker.state() != HealthState::Draining {
                eprintln!(
                    "target group {}: deregistered {}; draining for {}",
                    self.name,
                    target.id,
                    lbctl_spec::Duration(delay)
                );
                entry.tracker.drain();
                entry.drain_until = Some(now + delay);
                entry.checker = None;
                changed = true;
            }
        }
        // Draining targets are dropped by the next tick's `expire`, so each
        // is seen as `draining` at least once.
        changed
    }

    /// Applies a health check result; what it changed.
    fn record(&mut self, result: CheckResult) -> Change {
        let (Some(settings), Some(entry)) = (&self.settings, self.entries.get_mut(&result.target)) else {
            return Change::None;
        };
        if entry.generation != result.generation || entry.tracker.state() == HealthState::Draining {
            return Change::None;
        }
        let before = entry.tracker.state();
        let change = entry.tracker.record(&result.outcome, &settings.check);
        if change == Change::State {
            let after = entry.tracker.state();
            let why = if entry.tracker.reason().is_empty() {
                String::new()
            } else {
                format!(" ({})", entry.tracker.reason())
            };
            eprintln!(
                "target group {}: {} ({}:{}) {} -> {}{why}",
                self.name,
                result.target.id,
                result.target.ip,
                result.target.port,
                before.as_str(),
                after.as_str()
            );
        }
        change
    }

    /// Drops the targets whose draining is over: the deregistration delay
    /// has passed, or (as AWS does) no request is in flight to them any more.
    /// True when any was dropped.
    fn expire(&mut self, now: Instant) -> bool {
        let before = self.entries.len();
        let name = &self.name;
        self.entries.retain(|target, entry| {
            let keep = entry.drain_until.is_none_or(|until| now < until && entry.backend.in_flight() > 0);
            if !keep {
                eprintln!("target group {name}: {} drained", target.id);
            }
            keep
        });
        before != self.entries.len()
    }

    /// Starts a health check task for every target that needs one.
    fn start_checkers(&mut self, results: &UnboundedSender<CheckResult>) {
        let Some(settings) = &self.settings else { return };
        for (target, entry) in &mut self.entries {
            if entry.checker.is_none() && entry.tracker.state() != HealthState::Draining {
                let task = check_loop(settings.check.clone(), target.clone(), entry.generation, results.clone());
                entry.checker = Some(AbortOnDrop(tokio::spawn(task)));
            }
        }
    }

    /// Publishes the routable set and the health records.
    fn publish(&self, group: &TargetGroup) {
        let algorithm = self.settings.as_ref().map(|it| it.algorithm).unwrap_or(Algorithm::RoundRobin);
        let targets = self.entries.values().map(|it| (&it.backend, it.tracker.state()));
        group.balancer.update(Candidates::build(targets, algorithm));
        let records = self
            .entries
            .values()
            .map(|it| TargetRecord {
                backend: it.backend.clone(),
                state: it.tracker.state(),
                reason: it.tracker.reason().to_string(),
            })
            .collect();
        group.records.store(Arc::new(records));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::selection::InFlight;
    use crate::runtime::TargetGroupConfig;
    use std::collections::BTreeSet;
    use std::net::Ipv4Addr;

    fn target(id: &str) -> RegisteredTarget {
        RegisteredTarget { id: id.into(), ip: Ipv4Addr::new(127, 0, 0, 2), port: 8080 }
    }

    fn discovered(ids: &[&str]) -> Discovered {
        let yaml = "{ health_check: { healthy_threshold: 2, unhealthy_threshold: 2 }, deregistration_delay: 2s }";
        let settings: lbctl_spec::TargetGroup = serde_yaml::from_str(yaml).unwrap();
        Discovered {
            config: Some(TargetGroupConfig { name: "web".into(), settings }),
            targets: ids.iter().map(|it| target(it)).collect::<BTreeSet<_>>(),
        }
    }

    /// Records `outcome` for `id` as its current check task would.
    fn record(table: &mut Table, id: &str, outcome: Outcome) -> Change {
        let generation = table.entries[&target(id)].generation;
        table.record(CheckResult { target: target(id), generation, outcome })
    }

    /// The published `id=state` list and where four requests go.
    fn published(table: &Table) -> (String, String) {
        let group = TargetGroup::new("web");
        table.publish(&group);
        let states: Vec<String> = group.health().iter().map(|it| format!("{}={}", it.id, it.state.as_str())).collect();
        let picks: Vec<String> = (0..4).map(|_| group.select().map(|it| it.id.clone()).unwrap_or("-".into())).collect();
        (states.join(" "), picks.join(" "))
    }

    #[test]
    fn registration_health_and_draining() {
        let start = Instant::now();
        let mut table = Table::new("web");
        assert!(table.apply(discovered(&["a", "b"]), start));
        assert_eq!(published(&table), ("a=initial b=initial".into(), "a b a b".into()));

        record(&mut table, "a", Outcome::Pass);
        assert_eq!(record(&mut table, "a", Outcome::Pass), Change::State);
        assert_eq!(published(&table), ("a=healthy b=initial".into(), "a a a a".into()));

        // A result from a replaced check task is ignored.
        let stale = CheckResult { target: target("b"), generation: 0, outcome: Outcome::Pass };
        assert_eq!(table.record(stale), Change::None);

        // Deregistered: draining, no new requests, kept while a request is
        // in flight and until the delay.
        let in_flight = InFlight::start(table.entries[&target("a")].backend.clone());
        assert!(table.apply(discovered(&["b"]), start));
        assert_eq!(published(&table), ("a=draining b=initial".into(), "b b b b".into()));
        assert_eq!(record(&mut table, "a", Outcome::Pass), Change::None, "draining targets are not checked");
        assert!(!table.expire(start + Duration::from_millis(1999)));
        drop(in_flight);
        assert!(table.apply(discovered(&["b", "a"]), start + Duration::from_secs(1)));
        assert_eq!(published(&table).0, "a=initial b=initial", "registered again while draining");

        let in_flight = InFlight::start(table.entries[&target("b")].backend.clone());
        assert!(table.apply(discovered(&[]), start + Duration::from_secs(1)));
        assert_eq!(published(&table), ("a=draining b=draining".into(), "- - - -".into()));
        assert!(table.expire(start + Duration::from_secs(1)), "a has nothing in flight: drained at once");
        assert_eq!(published(&table).0, "b=draining");
        assert!(table.expire(start + Duration::from_secs(3)), "b: the delay is over");
        assert_eq!(published(&table).0, "");
        drop(in_flight);
    }

    #[test]
    fn unhealthy_targets_fail_open() {
        let start = Instant::now();
        let mut table = Table::new("web");
        table.apply(discovered(&["a", "b"]), start);
        let refused = || Outcome::Fail("Target.FailedHealthChecks: connection refused".into());
        for id in ["a", "b"] {
            record(&mut table, id, refused());
            record(&mut table, id, refused());
        }
        assert_eq!(published(&table), ("a=unhealthy b=unhealthy".into(), "a b a b".into()));
        record(&mut table, "b", Outcome::Pass);
        record(&mut table, "b", Outcome::Pass);
        assert_eq!(published(&table), ("a=unhealthy b=healthy".into(), "b b b b".into()));
    }

    #[test]
    fn a_missing_group_file_drops_every_target() {
        let mut table = Table::new("web");
        table.apply(discovered(&["a"]), Instant::now());
        assert!(table.apply(Discovered { config: None, targets: BTreeSet::new() }, Instant::now()));
        assert_eq!(published(&table), (String::new(), "- - - -".into()));
    }
}
