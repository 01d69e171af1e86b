//! A target group as one proxy runs it: discovery, health checks and
//! selection tied together.
//!
//! Each group has one manager task that owns its target table: it polls the
//! registry, starts a health check task per target, applies their results,
//! drains deregistered targets, and publishes two snapshots whenever
//! something changes: the routable set (read by every request, lock-free)
//! and the targets' health (read by the status writer).
//!
//! In a `lambda` target group the targets are functions: they are not
//! health-checked (AWS's default) and count as healthy from registration.
//! A target that becomes healthy while another healthy target is not in slow
//! start begins its slow start (when the group has one).
//!
//! **Passive health**: a request that cannot connect to a target reports it
//! (`report_connection_failure`), and the manager at once marks it, if it
//! was healthy, `unhealthy` (`Target.ConnectionFailed: ... (passive)`), so no new request
//! goes there, until a health check that started after the mark passes, or
//! `PASSIVE_HOLD` has passed (a target whose health checks are slow gets a
//! request again then, retried elsewhere should it still refuse).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper::header::HeaderValue;
use hyper::HeaderMap;
use lbctl_spec::TargetType;
use tokio::sync::mpsc::{unbounded_channel, UnboundedSender};
use tokio::sync::Notify;
use tokio::time::{Instant, MissedTickBehavior};

use super::discovery::{Discovered, Registry};
use super::health_check::{self, Change, HealthCheck, Outcome, Tracker};
use super::lambda::Function;
use super::selection::{Backend, Balancer, Candidates, Routing};
use super::upstream::{Transport, TransportCell};
use super::AbortOnDrop;
use crate::runtime::{HealthState, Layout, RegisteredTarget, TargetHealth};

/// How often a group's registry is re-read.
const DISCOVERY_INTERVAL: Duration = Duration::from_millis(200);
/// How often idle connections to targets are looked at, and those the
/// targets closed meanwhile dropped (in discovery ticks: every 5 s).
const SWEEP_EVERY_TICKS: u32 = 25;
/// How long a target that refused a connection stays out of rotation at
/// most when no passing health check clears it first.
const PASSIVE_HOLD: Duration = Duration::from_secs(5);
/// Connection failures waiting for the manager, at most; more are dropped
/// (the first of a target is the one that matters).
const MAX_PENDING_FAILURES: usize = 64;

/// A target group, shared by the listeners that forward to it.
pub struct TargetGroup {
    /// Its name.
    pub name: String,
    /// `arn:aws:elasticloadbalancing:local:000000000000:targetgroup/<name>/<id>`:
    /// how access logs and Lambda events name it.
    pub arn: String,
    balancer: Balancer,
    records: ArcSwap<Vec<TargetRecord>>,
    /// How requests reach the targets; set from the group's settings.
    transport: TransportCell,
    /// Targets requests could not connect to, with why, for the manager.
    connection_failures: Mutex<Vec<(RegisteredTarget, String)>>,
    connection_failed: Notify,
    /// Why the registry's latest files are not used (the previous targets
    /// are kept); shown in the status's errors. Set by the manager.
    problem: Mutex<Option<String>>,
    /// Its targets' answers, for the metrics.
    pub stats: super::observe::GroupStats,
}

/// One target's published state.
#[derive(Debug, Clone)]
struct TargetRecord {
    backend: Arc<Backend>,
    state: HealthState,
    reason: String,
}

impl TargetGroup {
    /// Group `name` of stack `stack`, with no targets yet.
    pub fn new(stack: &str, name: &str) -> Arc<TargetGroup> {
        Arc::new(TargetGroup {
            name: name.to_string(),
            arn: format!(
                "arn:aws:elasticloadbalancing:local:000000000000:targetgroup/{name}/{}",
                super::access_log::resource_id(stack, name)
            ),
            balancer: Balancer::default(),
            records: ArcSwap::default(),
            transport: TransportCell::default(),
            connection_failures: Mutex::default(),
            connection_failed: Notify::new(),
            problem: Mutex::default(),
            stats: super::observe::GroupStats::default(),
        })
    }

    /// Why the registry's latest files are not used, if they are not.
    pub fn problem(&self) -> Option<String> {
        self.problem.lock().unwrap_or_else(|it| it.into_inner()).clone()
    }

    /// Records why the registry's files are not used (`None`: they are);
    /// true when that changed.
    fn set_problem(&self, problem: Option<String>) -> bool {
        let mut current = self.problem.lock().unwrap_or_else(|it| it.into_inner());
        let changed = *current != problem;
        *current = problem;
        changed
    }

    /// How requests reach the targets (protocol and HTTP version).
    pub fn transport(&self) -> Transport {
        self.transport.load()
    }

    /// The stickiness cookie pinning a client to `backend`, when the group
    /// has stickiness on (see `Balancer::sticky_cookie_for`).
    pub fn sticky_cookie_for(&self, backend: &Backend) -> Option<HeaderValue> {
        self.balancer.sticky_cookie_for(backend)
    }

    /// The target for a request with these headers, if any is routable, and
    /// the stickiness cookie to set on the response (see `Balancer::select_with`).
    pub fn select_with(&self, headers: &HeaderMap) -> Option<(Arc<Backend>, Option<HeaderValue>)> {
        self.balancer.select_with(headers)
    }

    /// The target of a new connection or UDP flow with flow hash `hash`,
    /// other than the `refused` ones (it could not connect to them); see
    /// `Balancer::select_flow`.
    pub fn select_flow(&self, hash: u64, refused: &[Arc<Backend>]) -> Option<Arc<Backend>> {
        self.balancer.select_flow(hash, refused)
    }

    /// The target for the retry of a request `failed` could not answer, if
    /// another one is routable.
    pub fn select_other(&self, failed: &Backend) -> Option<Arc<Backend>> {
        self.balancer.select_other(failed)
    }

    /// Reports that a request could not connect to `backend` (`error` says
    /// how): the manager takes it out of rotation (passive health).
    pub fn report_connection_failure(&self, backend: &Backend, error: &str) {
        let mut failures = self.connection_failures.lock().unwrap_or_else(|it| it.into_inner());
        if failures.len() < MAX_PENDING_FAILURES {
            let target = RegisteredTarget { id: backend.id.clone(), ip: backend.ip, port: backend.port };
            failures.push((target, error.to_string()));
        }
        drop(failures);
        self.connection_failed.notify_one();
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
                health_check_requests: it.backend.health_checks(),
            })
            .collect()
    }
}

/// Runs the group until the task is aborted: polls the registry, checks
/// targets, and publishes changes (calling `on_change`, so that the status
/// follows).
pub async fn manage(group: Arc<TargetGroup>, layout: Layout, on_change: impl Fn()) {
    let mut registry = Registry::new(&layout, &group.name);
    let mut table = Table::new(&group.name, &group.arn, layout);
    let (results_tx, mut results) = unbounded_channel::<CheckResult>();
    let mut tick = tokio::time::interval(DISCOVERY_INTERVAL);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut ticks = 0u32;
    loop {
        let changed = tokio::select! {
            _ = tick.tick() => {
                ticks = ticks.wrapping_add(1);
                if ticks.is_multiple_of(SWEEP_EVERY_TICKS) {
                    table.close_stale_connections();
                }
                let now = Instant::now();
                let mut changed = match registry.poll() {
                    Some(Ok(discovered)) => {
                        if let Some(config) = &discovered.config {
                            group.transport.store(Transport::of(&config.settings));
                        }
                        group.set_problem(None) | table.apply(discovered, now)
                    }
                    Some(Err(problem)) => {
                        eprintln!(
                            "{} target group {}: keeping the previous targets: {problem}",
                            crate::runtime::log_time(),
                            group.name
                        );
                        group.set_problem(Some(format!("target group {}: {problem}", group.name)))
                    }
                    None => false,
                };
                changed |= table.expire(now);
                changed |= table.end_slow_starts(now);
                changed |= table.expire_suspects(now);
                changed
            }
            Some(result) = results.recv() => table.record(result) != Change::None,
            _ = group.connection_failed.notified() => {
                let failures = std::mem::take(&mut *group.connection_failures.lock().unwrap_or_else(|it| it.into_inner()));
                table.mark_suspects(failures, Instant::now())
            }
        };
        table.start_checkers(&results_tx);
        if changed {
            table.publish(&group);
            on_change();
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
    routing: Routing,
    deregistration_delay: Duration,
    /// Whether the targets are functions.
    lambda: bool,
}

/// One registered (or draining) target.
struct Entry {
    backend: Arc<Backend>,
    tracker: Tracker,
    /// When a draining target is dropped.
    drain_until: Option<Instant>,
    /// When its slow start began, while it lasts.
    slow_start_since: Option<Instant>,
    /// Identifies the current health check task; results of older ones are ignored.
    generation: u64,
    checker: Option<AbortOnDrop>,
    /// Since when and why it is out of rotation after a failed connection.
    suspect: Option<(Instant, String)>,
}

impl Entry {
    /// Its health state: a function's is healthy until it is deregistered.
    fn state(&self) -> HealthState {
        match self.tracker.state() {
            HealthState::Draining => HealthState::Draining,
            _ if self.suspect.is_some() => HealthState::Unhealthy,
            _ if self.backend.function.is_some() => HealthState::Healthy,
            state => state,
        }
    }

    /// The reason for its state (empty while healthy).
    fn reason(&self) -> &str {
        match &self.suspect {
            _ if self.state() == HealthState::Healthy => "",
            Some((_, reason)) if self.tracker.state() != HealthState::Draining => reason,
            _ => self.tracker.reason(),
        }
    }
}

/// The manager's view of its targets.
struct Table {
    name: String,
    /// The group's ARN, which Lambda events carry.
    arn: String,
    /// Where the functions of a `lambda` group are described.
    layout: Layout,
    settings: Option<Settings>,
    entries: BTreeMap<RegisteredTarget, Entry>,
    generations: u64,
}

impl Table {
    fn new(name: &str, arn: &str, layout: Layout) -> Table {
        Table {
            name: name.to_string(),
            arn: arn.to_string(),
            layout,
            settings: None,
            entries: BTreeMap::new(),
            generations: 0,
        }
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
            self.entries.values().for_each(|it| it.backend.retire());
            self.entries.clear();
            self.settings = None;
            return changed;
        };
        let group = &config.settings;
        let settings = Settings {
            check: Arc::new(HealthCheck::of(group)),
            routing: Routing::of(group),
            deregistration_delay: group.deregistration_delay.get(),
            lambda: group.target_type == TargetType::Lambda,
        };
        let mut changed = match &self.settings {
            Some(old) => old.routing != settings.routing,
            None => true,
        };
        if self.settings.as_ref().is_some_and(|old| old.lambda != settings.lambda) {
            // Functions and addresses are different targets: start afresh.
            self.entries.values().for_each(|it| it.backend.retire());
            self.entries.clear();
            changed = true;
        }
        if settings.routing.slow_start.is_zero() {
            self.entries.values_mut().for_each(|it| it.slow_start_since = None);
        }
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
        let lambda = settings.lambda;
        self.settings = Some(settings);

        for target in &discovered.targets {
            let generation = self.next_generation();
            match self.entries.get_mut(target) {
                None => {
                    let backend = if lambda {
                        eprintln!("target group {}: registered function {}", self.name, target.id);
                        let file = self.layout.function_file(&target.id);
                        Backend::lambda(Function::new(&target.id, file, &self.arn))
                    } else {
                        eprintln!(
                            "target group {}: registered {} ({}:{})",
                            self.name, target.id, target.ip, target.port
                        );
                        Backend::new(&target.id, target.ip, target.port)
                    };
                    let entry = Entry {
                        backend,
                        tracker: Tracker::default(),
                        drain_until: None,
                        slow_start_since: None,
                        generation,
                        checker: None,
                        suspect: None,
                    };
                    self.entries.insert(target.clone(), entry);
                    changed = true;
                }
                Some(entry) if entry.tracker.state() == HealthState::Draining => {
                    eprintln!("target group {}: registered {} again while it was draining", self.name, target.id);
                    entry.tracker = Tracker::default();
                    entry.drain_until = None;
                    entry.slow_start_since = None;
                    entry.generation = generation;
                    entry.checker = None;
                    entry.suspect = None;
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
                entry.slow_start_since = None;
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
        // A target that turns healthy while another healthy one is not in
        // slow start begins its slow start (AWS).
        let settled_peer = self.entries.iter().any(|(target, it)| {
            *target != result.target && it.state() == HealthState::Healthy && it.slow_start_since.is_none()
        });
        let (Some(settings), Some(entry)) = (&self.settings, self.entries.get_mut(&result.target)) else {
            return Change::None;
        };
        if entry.generation != result.generation || entry.tracker.state() == HealthState::Draining {
            return Change::None;
        }
        // A pass clears a passive mark, if the probe started after the mark
        // (it takes at most the check's timeout).
        let now = Instant::now();
        let cleared = result.outcome == Outcome::Pass
            && entry.suspect.as_ref().is_some_and(|(since, _)| *since + settings.check.timeout < now);
        if cleared {
            entry.suspect = None;
            eprintln!("target group {}: {} passed a health check; back in rotation", self.name, result.target.id);
        }
        let before = entry.tracker.state();
        let change = entry.tracker.record(&result.outcome, &settings.check);
        if cleared && change == Change::None {
            return Change::State;
        }
        if change == Change::State {
            let after = entry.tracker.state();
            let slow_start = settings.routing.slow_start;
            let ramps = after == HealthState::Healthy && !slow_start.is_zero() && settled_peer;
            entry.slow_start_since = ramps.then(Instant::now);
            let why = if ramps {
                format!(" (slow start for {})", lbctl_spec::Duration(slow_start))
            } else if entry.tracker.reason().is_empty() {
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
                // Connections a network load balancer still relays to it close now.
                entry.backend.retire();
            }
            keep
        });
        before != self.entries.len()
    }

    /// Marks the healthy targets requests could not connect to as out of
    /// rotation; true when any was not already. Targets the health checks
    /// have not found healthy keep their state and reason: they only get
    /// requests when the group fails open, and an instance still booting
    /// must not look unhealthy to its auto-scaling group.
    fn mark_suspects(&mut self, failures: Vec<(RegisteredTarget, String)>, now: Instant) -> bool {
        let mut changed = false;
        for (target, error) in failures {
            let Some(entry) = self.entries.get_mut(&target) else { continue };
            if entry.suspect.is_some() || entry.tracker.state() != HealthState::Healthy {
                continue;
            }
            let reason = format!("Target.ConnectionFailed: {error} (passive)");
            eprintln!(
                "target group {}: {} ({}:{}) {} -> unhealthy ({reason})",
                self.name,
                target.id,
                target.ip,
                target.port,
                entry.state().as_str()
            );
            entry.suspect = Some((now, reason));
            changed = true;
        }
        changed
    }

    /// Puts back in rotation the targets marked out longer than
    /// `PASSIVE_HOLD` ago; true when any was.
    fn expire_suspects(&mut self, now: Instant) -> bool {
        let mut changed = false;
        for (target, entry) in &mut self.entries {
            if entry.suspect.as_ref().is_some_and(|(since, _)| *since + PASSIVE_HOLD <= now) {
                eprintln!(
                    "target group {}: {} back in rotation after {}",
                    self.name,
                    target.id,
                    lbctl_spec::Duration(PASSIVE_HOLD)
                );
                entry.suspect = None;
                changed = true;
            }
        }
        changed
    }

    /// Ends the slow starts whose period is over, so that requests take the
    /// plain path again; true when any ended.
    fn end_slow_starts(&mut self, now: Instant) -> bool {
        let period = self.settings.as_ref().map(|it| it.routing.slow_start).unwrap_or_default();
        let mut ended = false;
        for entry in self.entries.values_mut() {
            if entry.slow_start_since.is_some_and(|since| since + period <= now) {
                entry.slow_start_since = None;
                ended = true;
            }
        }
        ended
    }

    /// Starts a health check task for every target that needs one (not
    /// functions: AWS does not check them unless asked).
    fn start_checkers(&mut self, results: &UnboundedSender<CheckResult>) {
        let Some(settings) = &self.settings else { return };
        for (target, entry) in &mut self.entries {
            let checked = entry.backend.function.is_none();
            if checked && entry.checker.is_none() && entry.tracker.state() != HealthState::Draining {
                let task = check_loop(settings.check.clone(), target.clone(), entry.generation, results.clone());
                entry.checker = Some(AbortOnDrop(tokio::spawn(task)));
            }
        }
    }

    /// Publishes the routable set and the health records.
    /// Drops the idle connections the targets have closed, which would
    /// otherwise wait (in CLOSE_WAIT) for a request to find them.
    fn close_stale_connections(&self) {
        for entry in self.entries.values() {
            entry.backend.h1.close_stale();
        }
    }

    fn publish(&self, group: &TargetGroup) {
        let routing = self.settings.as_ref().map(|it| it.routing).unwrap_or_default();
        let targets = self.entries.values().map(|it| (&it.backend, it.state(), it.slow_start_since));
        group.balancer.update(Candidates::build(targets, routing));
        let records = self
            .entries
            .values()
            .map(|it| TargetRecord { backend: it.backend.clone(), state: it.state(), reason: it.reason().to_string() })
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
        discovered_with(ids, "")
    }

    /// Registry contents with `extra` group settings (`key: value, ` pairs).
    fn discovered_with(ids: &[&str], extra: &str) -> Discovered {
        let yaml = format!(
            "{{ {extra}health_check: {{ healthy_threshold: 2, unhealthy_threshold: 2 }}, deregistration_delay: 2s }}"
        );
        let settings = serde_yaml::from_str::<lbctl_spec::TargetGroup>(&yaml).unwrap().resolve();
        Discovered {
            config: Some(TargetGroupConfig { format: crate::runtime::RUNTIME_FORMAT, name: "web".into(), settings }),
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
        let group = TargetGroup::new("test", "web");
        table.publish(&group);
        let states: Vec<String> = group.health().iter().map(|it| format!("{}={}", it.id, it.state.as_str())).collect();
        let picks: Vec<String> = (0..4)
            .map(|_| group.select_with(&HeaderMap::new()).map(|it| it.0.id.clone()).unwrap_or("-".into()))
            .collect();
        (states.join(" "), picks.join(" "))
    }

    #[test]
    fn passive_health_marks_and_clears() {
        let now = Instant::now();
        let mut table = Table::new("web", "arn:web", Layout::new("/nonexistent"));
        table.apply(discovered(&["a", "b"]), now);
        for id in ["a", "a", "b", "b"] {
            record(&mut table, id, Outcome::Pass);
        }
        // A refused connection takes the target out of rotation at once.
        let group = TargetGroup::new("test", "web");
        group.report_connection_failure(&Backend::new("a", Ipv4Addr::new(127, 0, 0, 2), 8080), "connection refused");
        let failures = std::mem::take(&mut *group.connection_failures.lock().unwrap());
        assert!(table.mark_suspects(failures, now));
        assert_eq!(published(&table), ("a=unhealthy b=healthy".into(), "b b b b".into()));
        assert_eq!(table.entries[&target("a")].reason(), "Target.ConnectionFailed: connection refused (passive)");
        assert!(!table.mark_suspects(vec![(target("a"), "connection reset".into())], now), "already out");
        // A pass from a probe that may have started before the mark does not
        // clear it (the check's timeout is 5 s), nor does time until the hold is over.
        assert_eq!(record(&mut table, "a", Outcome::Pass), Change::None);
        assert!(!table.expire_suspects(now + PASSIVE_HOLD - Duration::from_millis(1)));
        assert_eq!(published(&table).0, "a=unhealthy b=healthy");
        assert!(table.expire_suspects(now + PASSIVE_HOLD));
        assert_eq!(published(&table), ("a=healthy b=healthy".into(), "a b a b".into()));
        // A pass from a later probe clears a mark.
        let long_ago = now.checked_sub(Duration::from_secs(6)).unwrap();
        assert!(table.mark_suspects(vec![(target("b"), "connection refused".into())], long_ago));
        assert_eq!(published(&table).0, "a=healthy b=unhealthy");
        assert_eq!(record(&mut table, "b", Outcome::Pass), Change::State);
        assert_eq!(published(&table).0, "a=healthy b=healthy");
        // Only healthy targets are marked.
        table.apply(discovered(&["b", "c"]), now);
        let failures = ["a", "c", "z"].map(|it| (target(it), "connection refused".to_string()));
        assert!(!table.mark_suspects(failures.to_vec(), now));
        assert_eq!(published(&table).0, "a=draining b=healthy c=initial");
    }

    #[test]
    fn registration_health_and_draining() {
        let start = Instant::now();
        let mut table = Table::new("web", "arn:web", Layout::new("/nonexistent"));
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
        let mut table = Table::new("web", "arn:web", Layout::new("/nonexistent"));
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
    fn functions_are_healthy_without_checks() {
        let layout = Layout::new("/stack/run");
        let mut table = Table::new("web", "arn:web", layout.clone());
        table.apply(discovered_with(&["thumbnailer"], "target_type: lambda, "), Instant::now());
        let (states, picks) = published(&table);
        assert_eq!(
            (states.as_str(), picks.as_str()),
            ("thumbnailer=healthy", "thumbnailer thumbnailer thumbnailer thumbnailer")
        );
        let entry = &table.entries[&target("thumbnailer")];
        assert_eq!(
            (entry.reason(), entry.backend.function.as_ref().map(|it| it.name.as_str())),
            ("", Some("thumbnailer"))
        );
        // Deregistered functions drain like any target.
        table.apply(discovered_with(&[], "target_type: lambda, "), Instant::now());
        assert_eq!(published(&table).0, "thumbnailer=draining");
        // A group that changes between functions and addresses starts afresh.
        table.apply(discovered(&["thumbnailer"]), Instant::now());
        assert_eq!(published(&table).0, "thumbnailer=initial");
        assert!(table.entries[&target("thumbnailer")].backend.function.is_none());
    }

    #[test]
    fn slow_start_begins_beside_a_settled_target() {
        let start = Instant::now();
        let mut table = Table::new("web", "arn:web", Layout::new("/nonexistent"));
        table.apply(discovered_with(&["a", "b", "c"], "slow_start: 10s, "), start);
        let ramping = |table: &Table| -> Vec<String> {
            table.entries.iter().filter(|it| it.1.slow_start_since.is_some()).map(|it| it.0.id.clone()).collect()
        };
        // The first healthy target has no healthy peer: no slow start.
        record(&mut table, "a", Outcome::Pass);
        record(&mut table, "a", Outcome::Pass);
        assert_eq!(ramping(&table), Vec::<String>::new());
        // The next ones turn healthy beside it: slow start.
        for id in ["b", "c"] {
            record(&mut table, id, Outcome::Pass);
            record(&mut table, id, Outcome::Pass);
        }
        assert_eq!(ramping(&table), vec!["b", "c"]);
        // Unhealthy ends it; the period's end too.
        let refused = || Outcome::Fail("Target.FailedHealthChecks: connection refused".into());
        record(&mut table, "c", refused());
        record(&mut table, "c", refused());
        assert_eq!(ramping(&table), vec!["b"]);
        assert!(!table.end_slow_starts(Instant::now()));
        assert!(table.end_slow_starts(Instant::now() + Duration::from_secs(10)));
        assert_eq!(ramping(&table), Vec::<String>::new());
        // Turning slow start off ends every ramp at once.
        table.entries.get_mut(&target("b")).unwrap().slow_start_since = Some(start);
        assert!(table.apply(discovered(&["a", "b", "c"]), start), "the routing settings changed");
        assert_eq!(ramping(&table), Vec::<String>::new());
    }

    #[test]
    fn a_missing_group_file_drops_every_target() {
        let mut table = Table::new("web", "arn:web", Layout::new("/nonexistent"));
        table.apply(discovered(&["a"]), Instant::now());
        assert!(table.apply(Discovered { config: None, targets: BTreeSet::new() }, Instant::now()));
        assert_eq!(published(&table), (String::new(), "- - - -".into()));
    }
}
