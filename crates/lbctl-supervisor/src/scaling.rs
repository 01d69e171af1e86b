//! Target tracking scaling policies: the supervisor's desired capacity when
//! the group has `scaling: { target_tracking: ... }`.
//!
//! Every tick the supervisor samples a cumulative counter per instance (the
//! requests the load balancers forwarded to it, from their `status.json`, or
//! the CPU time of its process, from `/proc/<pid>/stat`), and
//! [`TargetTracker`] turns the deltas over a sliding window into a rate per
//! in-service instance. The wanted capacity is
//! `clamp(ceil(in_service * metric / target_value), min_size, max_size)`.
//! Like AWS, it scales out promptly (at most once per short warm-up) and
//! scales in conservatively: only after the metric has wanted fewer
//! instances for a whole `cooldown`, and at most once per `cooldown`.
//!
//! The decision is pure (explicit Unix-millisecond timestamps), so that it is
//! tested without processes or sleeps.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use lbctl_spec::settings::TargetTracking;
use lbctl_spec::ScalingMetric;

use super::Supervisor;
use lbctl_runtime as runtime;
use lbctl_runtime::{Lifecycle, ProxyStatus};

/// Samples older than this are dropped: the metric is a rate over it.
const WINDOW_MS: u64 = 6000;
/// No decision before the samples span this long.
const MIN_SPAN_MS: u64 = 2000;
/// The shortest time between two scale-outs (shorter when the cooldown is).
const SCALE_OUT_WARMUP_MS: u64 = 10_000;

/// The state of one target tracking policy.
#[derive(Debug, Clone)]
pub(super) struct TargetTracker {
    /// The metric sampled; a different one resets the tracker.
    pub(super) metric: ScalingMetric,
    /// The capacity the policy chose.
    pub(super) desired: u32,
    /// Last value of each counter, by key.
    counters: BTreeMap<String, u64>,
    /// `(at_ms, amount)`: what the counters grew by since the previous sample.
    samples: VecDeque<(u64, f64)>,
    /// When the last scaling action happened.
    last_action_ms: Option<u64>,
    /// When the last scale-out happened.
    last_scale_out_ms: Option<u64>,
    /// Since when the metric has wanted fewer instances than `desired`.
    low_since_ms: Option<u64>,
}

/// A scaling action the policy took.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Action {
    pub(super) from: u32,
    pub(super) to: u32,
    /// The metric per in-service instance that triggered it.
    pub(super) value: f64,
}

impl TargetTracker {
    pub(super) fn new(metric: ScalingMetric, desired: u32) -> TargetTracker {
        TargetTracker {
            metric,
            desired,
            counters: BTreeMap::new(),
            samples: VecDeque::new(),
            last_action_ms: None,
            last_scale_out_ms: None,
            low_since_ms: None,
        }
    }

    /// Records the counters seen at `now_ms`; each counter's growth since the
    /// previous sample counts `unit` per step. A counter seen for the first
    /// time, or that went backwards (a restarted proxy), adds nothing.
    pub(super) fn record(&mut self, now_ms: u64, counters: BTreeMap<String, u64>, unit: f64) {
        let mut amount = 0.0;
        for (key, value) in &counters {
            if let Some(previous) = self.counters.get(key) {
                amount += value.saturating_sub(*previous) as f64 * unit;
            }
        }
        self.counters = counters;
        self.samples.push_back((now_ms, amount));
        while self.samples.front().is_some_and(|(at, _)| at + WINDOW_MS < now_ms) {
            self.samples.pop_front();
        }
    }

    /// The counters' growth per second over the window; `None` until the
    /// samples span long enough.
    pub(super) fn rate(&self) -> Option<f64> {
        let (first, _) = *self.samples.front()?;
        let (last, _) = *self.samples.back()?;
        if last.saturating_sub(first) < MIN_SPAN_MS {
            return None;
        }
        // The first sample's amount grew before the window's start.
        let amount: f64 = self.samples.iter().skip(1).map(|(_, amount)| amount).sum();
        Some(amount * 1000.0 / (last - first) as f64)
    }

    /// Decides the desired capacity at `now_ms` with `in_service` instances
    /// in service; returns the action taken, if any.
    pub(super) fn decide(
        &mut self,
        now_ms: u64,
        in_service: u32,
        policy: &TargetTracking,
        min_size: u32,
        max_size: u32,
    ) -> Option<Action> {
        self.desired = self.desired.clamp(min_size, max_size);
        let rate = self.rate()?;
        if in_service == 0 || policy.target_value <= 0.0 {
            return None;
        }
        let value = rate / f64::from(in_service);
        let wanted = (f64::from(in_service) * value / policy.target_value - 1e-9).ceil().max(0.0);
        let wanted = (wanted.min(f64::from(u32::MAX)) as u32).clamp(min_size, max_size);
        let cooldown_ms = policy.cooldown.get().as_millis() as u64;
        let from = self.desired;
        if wanted > from {
            self.low_since_ms = None;
            let warmup_ms = cooldown_ms.min(SCALE_OUT_WARMUP_MS);
            if self.last_scale_out_ms.is_some_and(|at| now_ms < at.saturating_add(warmup_ms)) {
                return None;
            }
            self.last_scale_out_ms = Some(now_ms);
        } else if wanted < from {
            let since = *self.low_since_ms.get_or_insert(now_ms);
            let cooling = self.last_action_ms.is_some_and(|at| now_ms < at.saturating_add(cooldown_ms));
            if now_ms < since.saturating_add(cooldown_ms) || cooling {
                return None;
            }
            self.low_since_ms = None;
        } else {
            self.low_since_ms = None;
            return None;
        }
        self.last_action_ms = Some(now_ms);
        self.desired = wanted;
        Some(Action { from, to: wanted, value })
    }
}

/// The metric's name as the spec spells it.
pub(super) fn metric_name(metric: ScalingMetric) -> &'static str {
    match metric {
        ScalingMetric::RequestCountPerTarget => "request_count_per_target",
        ScalingMetric::CpuUtilization => "cpu_utilization",
    }
}

/// Requests forwarded so far to each of `ids` in `groups`, by load balancer,
/// target group and instance.
pub(super) fn request_counters(
    statuses: &[(String, ProxyStatus)],
    groups: &[String],
    ids: &BTreeSet<String>,
) -> BTreeMap<String, u64> {
    let mut counters = BTreeMap::new();
    for (lb, status) in statuses {
        for group in groups {
            for target in status.target_groups.get(group).into_iter().flatten() {
                if ids.contains(&target.id) {
                    counters.insert(format!("{lb}/{group}/{}", target.id), target.requests);
                }
            }
        }
    }
    counters
}

/// User plus system CPU time of a process so far, in clock ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_cpu_ticks(&stat)
}

/// `utime + stime` from the text of `/proc/<pid>/stat` (fields 14 and 15; the
/// command name in parentheses may hold spaces).
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Percent of one CPU per clock tick per second.
fn percent_per_tick() -> f64 {
    // SAFETY: sysconf only reads a system constant.
    let ticks_per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    100.0 / if ticks_per_second > 0 { ticks_per_second as f64 } else { 100.0 }
}

impl Supervisor {
    /// The capacity the group converges to: the policy's when a scaling
    /// policy is active, else the configuration's `desired_capacity`.
    pub(super) fn desired_capacity(&self) -> u32 {
        match (&self.tracker, &self.config.settings.scaling) {
            (Some(tracker), Some(_)) => tracker.desired,
            _ => self.config.settings.desired(),
        }
    }

    /// What sets the desired capacity, for the report: `None` without a policy.
    pub(super) fn desired_set_by(&self) -> Option<String> {
        let scaling = self.config.settings.scaling.as_ref()?;
        Some(format!("target tracking on {}", metric_name(scaling.target_tracking.metric)))
    }

    /// Samples the policy's metric and lets it choose the desired capacity;
    /// every scaling action is an event naming the metric's value.
    pub(super) fn track_target(&mut self, statuses: &[(String, ProxyStatus)]) {
        let settings = &self.config.settings;
        let Some(scaling) = &settings.scaling else {
            self.tracker = None;
            return;
        };
        let policy = scaling.target_tracking.clone();
        if self.tracker.as_ref().is_none_or(|it| it.metric != policy.metric) {
            // A supervisor that adopted instances keeps the capacity its
            // predecessor's policy chose (live ones plus those being
            // replaced); a new group starts from `desired_capacity`.
            let adopted = self.instances.iter().filter(|it| it.is_live()).count() + self.replacing.len();
            let start = match &self.tracker {
                Some(tracker) => tracker.desired,
                None if adopted > 0 => adopted as u32,
                None => settings.desired(),
            };
            self.tracker = Some(TargetTracker::new(policy.metric, start));
        }
        let in_service: Vec<_> =
            self.instances.iter().filter(|it| it.record.lifecycle == Lifecycle::InService).collect();
        let (counters, unit) = match policy.metric {
            ScalingMetric::RequestCountPerTarget => {
                // Draining instances still finish requests sent before.
                let ids: BTreeSet<String> = self.instances.iter().map(|it| it.record.id.clone()).collect();
                (request_counters(statuses, &settings.target_groups, &ids), 1.0)
            }
            ScalingMetric::CpuUtilization => {
                let counters = in_service
                    .iter()
                    .filter_map(|it| Some((it.record.pid.to_string(), cpu_ticks(it.record.pid)?)))
                    .collect();
                (counters, percent_per_tick())
            }
        };
        let count = in_service.len() as u32;
        let (min_size, max_size) = (settings.min_size, settings.max_size);
        let Some(tracker) = self.tracker.as_mut() else { return };
        tracker.record(runtime::now_ms(), counters, unit);
        if let Some(Action { from, to, value }) = tracker.decide(runtime::now_ms(), count, &policy, min_size, max_size)
        {
            let direction = if to > from { "scaling out" } else { "scaling in" };
            self.event(format!(
                "target tracking: {} is {value:.1} per instance (target {}): {direction}, desired {from} -> {to}",
                metric_name(policy.metric),
                policy.target_value
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn policy(target_value: f64, cooldown_secs: u64) -> TargetTracking {
        TargetTracking {
            metric: ScalingMetric::RequestCountPerTarget,
            target_value,
            cooldown: lbctl_spec::Duration(Duration::from_secs(cooldown_secs)),
        }
    }

    /// Feeds one sample every 200 ms from `start_ms` to `end_ms` with the
    /// counter growing by `per_second`, deciding after each; returns the
    /// actions with their times.
    fn run(
        tracker: &mut TargetTracker,
        counter: &mut u64,
        (start_ms, end_ms): (u64, u64),
        per_second: u64,
        in_service: &dyn Fn(u32) -> u32,
        policy: &TargetTracking,
    ) -> Vec<(u64, Action)> {
        let mut actions = Vec::new();
        let mut now = start_ms;
        while now <= end_ms {
            *counter += per_second / 5;
            tracker.record(now, BTreeMap::from([("lb/tg/i-1".to_string(), *counter)]), 1.0);
            let count = in_service(tracker.desired);
            if let Some(action) = tracker.decide(now, count, policy, 1, 3) {
                actions.push((now, action));
            }
            now += 200;
        }
        actions
    }

    #[test]
    fn rate_needs_two_seconds_of_samples_and_skips_the_first_amount() {
        let mut tracker = TargetTracker::new(ScalingMetric::RequestCountPerTarget, 1);
        tracker.record(1000, BTreeMap::from([("a".to_string(), 500)]), 1.0);
        tracker.record(2000, BTreeMap::from([("a".to_string(), 510)]), 1.0);
        assert_eq!(tracker.rate(), None);
        tracker.record(3000, BTreeMap::from([("a".to_string(), 530), ("b".to_string(), 99)]), 1.0);
        assert_eq!(tracker.rate(), Some(15.0));
        // A counter going backwards (a restarted proxy) adds nothing.
        tracker.record(4000, BTreeMap::from([("a".to_string(), 3), ("b".to_string(), 99)]), 1.0);
        assert_eq!(tracker.rate(), Some(10.0));
    }

    #[test]
    fn old_samples_leave_the_window() {
        let mut tracker = TargetTracker::new(ScalingMetric::RequestCountPerTarget, 1);
        let mut counter = 0;
        for second in 0..=20 {
            counter += if second <= 10 { 100 } else { 0 };
            tracker.record(second * 1000, BTreeMap::from([("a".to_string(), counter)]), 1.0);
        }
        assert_eq!(tracker.rate(), Some(0.0));
    }

    #[test]
    fn scales_out_promptly_and_in_after_the_cooldown() {
        let policy = policy(20.0, 3);
        let mut tracker = TargetTracker::new(ScalingMetric::RequestCountPerTarget, 1);
        let mut counter = 0;
        let all_in_service = |desired: u32| desired;
        // 50 requests per second for 10 s: ceil(50 / 20) = 3 instances.
        let actions = run(&mut tracker, &mut counter, (0, 10_000), 50, &all_in_service, &policy);
        assert_eq!(actions.len(), 1, "{actions:?}");
        let (at, action) = &actions[0];
        assert!(*at >= MIN_SPAN_MS && *at <= 2400, "scaled out at {at}");
        assert_eq!((action.from, action.to), (1, 3));
        assert!((action.value - 50.0).abs() < 1.0, "{action:?}");
        // Load stops: the window empties in 6 s, then 3 s more of a low metric.
        let actions = run(&mut tracker, &mut counter, (10_200, 30_000), 0, &all_in_service, &policy);
        assert_eq!(actions.len(), 1, "{actions:?}");
        let (at, action) = &actions[0];
        assert_eq!((action.from, action.to), (3, 1));
        assert!(*at >= 10_200 + 3000, "scaled in at {at}, before the cooldown");
        assert!(*at <= 10_200 + WINDOW_MS + 3000 + 400, "scaled in at {at}");
    }

    #[test]
    fn scale_in_waits_for_a_whole_cooldown_of_low_metric() {
        let policy = policy(20.0, 5);
        let mut tracker = TargetTracker::new(ScalingMetric::RequestCountPerTarget, 3);
        let mut counter = 0;
        let all_in_service = |desired: u32| desired;
        // 30 requests per second wants 2; a burst in the middle resets the wait.
        let mut actions = run(&mut tracker, &mut counter, (0, 4000), 30, &all_in_service, &policy);
        actions.extend(run(&mut tracker, &mut counter, (4200, 5000), 100, &all_in_service, &policy));
        assert!(actions.is_empty(), "{actions:?}");
        let actions = run(&mut tracker, &mut counter, (5200, 20_000), 30, &all_in_service, &policy);
        assert_eq!(actions.len(), 1, "{actions:?}");
        assert_eq!((actions[0].1.from, actions[0].1.to), (3, 2));
    }

    #[test]
    fn stays_within_min_and_max_and_without_instances_in_service_does_nothing() {
        let policy = policy(1.0, 1);
        let mut tracker = TargetTracker::new(ScalingMetric::RequestCountPerTarget, 7);
        let mut counter = 0;
        let none_in_service = |_: u32| 0;
        let actions = run(&mut tracker, &mut counter, (0, 5000), 1000, &none_in_service, &policy);
        assert!(actions.is_empty(), "{actions:?}");
        assert_eq!(tracker.desired, 3, "clamped to max_size");
        let all_in_service = |desired: u32| desired;
        let actions = run(&mut tracker, &mut counter, (5200, 9000), 1000, &all_in_service, &policy);
        assert!(actions.is_empty(), "already at max_size: {actions:?}");
    }

    #[test]
    fn scale_outs_are_spaced_by_the_warmup() {
        let policy = policy(10.0, 4);
        let mut tracker = TargetTracker::new(ScalingMetric::RequestCountPerTarget, 1);
        let mut counter = 0;
        // Only one instance ever gets in service, so the metric stays high.
        let one = |_: u32| 1;
        let actions = run(&mut tracker, &mut counter, (0, 2000), 15, &one, &policy);
        assert_eq!(actions.iter().map(|(_, it)| it.to).collect::<Vec<_>>(), vec![2]);
        let actions = run(&mut tracker, &mut counter, (2200, 9000), 25, &one, &policy);
        assert_eq!(actions.iter().map(|(_, it)| it.to).collect::<Vec<_>>(), vec![3]);
        assert!(actions[0].0 >= 2000 + 4000, "{actions:?}");
    }

    #[test]
    fn parses_cpu_ticks_with_spaces_in_the_command_name() {
        let stat = "42 (my (odd) name) S 1 42 42 0 -1 4194560 100 0 0 0 17 5 0 0 20 0 1 0 100 0 0";
        assert_eq!(parse_cpu_ticks(stat), Some(22));
        assert_eq!(parse_cpu_ticks("garbage"), None);
        assert!(cpu_ticks(std::process::id()).is_some());
    }
}
