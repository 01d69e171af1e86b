//! Instance refresh: the rolling replacement that a launch template change
//! starts. Each batch launches new instances first (capacity goes above
//! desired by at most the batch size), waits until they are in service for
//! the warmup, then drains and stops as many instances on the previous
//! template. When the new instances of a batch die or do not get in service
//! in time, the refresh stops and rolls back: the previous launch template
//! is restored and the new instances are drained.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use lbctl_spec::LaunchTemplate;

use super::decide::{self, Candidate};
use super::{template_digest, Supervisor};
use lbctl_runtime::{Lifecycle, RefreshState, RefreshStatus, TargetGroupConfig};

/// A refresh in progress or the outcome of the last one.
pub(super) struct Refresh {
    /// The launch template the group ran before the change (restored on rollback).
    previous: LaunchTemplate,
    /// Its digest.
    previous_digest: String,
    /// What is reported.
    status: RefreshStatus,
    /// New instances launched above desired for the current batch (0: no batch).
    extra: usize,
    /// When the current batch started.
    batch_started: Instant,
    /// When each new-template instance was first seen in service.
    in_service_since: BTreeMap<String, Instant>,
    /// New-template instances seen live during the current batch.
    batch_ids: BTreeSet<String>,
}

impl Refresh {
    /// The status written in `instances.json`.
    pub(super) fn status(&self) -> RefreshStatus {
        self.status.clone()
    }

    fn in_progress(&self) -> bool {
        self.status.state == RefreshState::InProgress
    }
}

impl Supervisor {
    /// Called when a new configuration is applied, with the launch template
    /// (and its digest) the group ran before it: starts a refresh when the
    /// template changed and instances run the previous one.
    pub(super) fn consider_refresh(&mut self, before: LaunchTemplate, before_digest: String) {
        if before_digest == self.template_digest {
            // A refresh in progress goes on; a finished one is forgotten.
            if !self.refresh.as_ref().is_some_and(Refresh::in_progress) {
                self.refresh = None;
            }
            return;
        }
        if self.config.settings.instance_refresh.is_none() {
            // As on AWS: the new template is for the instances launched from
            // now on; without `instance_refresh` nothing rolls.
            if self.refresh.take().is_some_and(|it| it.in_progress()) {
                self.event("instance refresh stopped: the group has no instance_refresh any more".to_string());
            }
            self.event("launch template changed: new instances get it, existing ones keep theirs".to_string());
            return;
        }
        let current = self.template_digest.clone();
        let outdated = self.instances.iter().filter(|it| it.is_live() && it.record.template_digest != current).count();
        // A refresh interrupted by another change keeps the template it started from.
        let (previous, previous_digest) = match self.refresh.take() {
            Some(refresh) if refresh.in_progress() => (refresh.previous, refresh.previous_digest),
            _ => (before, before_digest),
        };
        if outdated == 0 {
            self.refresh = None;
            return;
        }
        self.event(format!("instance refresh started: {outdated} instance(s) to replace"));
        self.refresh = Some(Refresh {
            previous,
            previous_digest,
            status: RefreshStatus { state: RefreshState::InProgress, percent: 0, reason: String::new() },
            extra: 0,
            batch_started: Instant::now(),
            in_service_since: BTreeMap::new(),
            batch_ids: BTreeSet::new(),
        });
    }

    /// New instances launched above desired capacity by the refresh.
    pub(super) fn refresh_extra(&self) -> usize {
        self.refresh.as_ref().filter(|it| it.in_progress()).map_or(0, |it| it.extra)
    }

    /// Remembers the new instances of the current batch (called after
    /// launches, so that one dying at once is noticed as a failure).
    pub(super) fn note_refresh_launches(&mut self) {
        let current = self.template_digest.clone();
        let Some(refresh) = self.refresh.as_mut().filter(|it| it.in_progress() && it.extra > 0) else { return };
        for instance in self.instances.iter().filter(|it| it.is_live() && it.record.template_digest == current) {
            refresh.batch_ids.insert(instance.record.id.clone());
        }
    }

    /// One step of the refresh in progress, if any.
    pub(super) fn refresh_step(&mut self) {
        let Some(mut refresh) = self.refresh.take() else { return };
        if refresh.in_progress() {
            self.advance_refresh(&mut refresh);
        }
        self.refresh = Some(refresh);
    }

    fn advance_refresh(&mut self, refresh: &mut Refresh) {
        let desired = self.desired_capacity() as usize;
        let settings = &self.config.settings;
        let min_healthy = settings.instance_refresh.as_ref().map_or(90, |it| it.min_healthy_percentage);
        let warmup = settings.instance_refresh.as_ref().map_or(Duration::ZERO, |it| it.warmup.get());
        let current = self.template_digest.clone();
        let now = Instant::now();
        let live: Vec<(String, bool, Lifecycle, u64)> = self
            .instances
            .iter()
            .filter(|it| it.is_live())
            .map(|it| {
                (it.record.id.clone(), it.record.template_digest == current, it.record.lifecycle, it.record.launched_ms)
            })
            .collect();
        for (id, new, lifecycle, _) in &live {
            if *new && *lifecycle == Lifecycle::InService {
                refresh.in_service_since.entry(id.clone()).or_insert(now);
            }
        }
        let live_ids: BTreeSet<&String> = live.iter().map(|it| &it.0).collect();
        let warmed: BTreeSet<String> = refresh
            .in_service_since
            .iter()
            .filter(|(_, since)| now.duration_since(**since) >= warmup)
            .map(|(id, _)| id.clone())
            .collect();
        let ready = |id: &String| warmed.contains(id);
        let new_ready = live.iter().filter(|it| it.1 && ready(&it.0)).count();
        let outdated: Vec<Candidate> = live
            .iter()
            .filter(|it| !it.1)
            .map(|it| Candidate { id: it.0.clone(), launched_ms: it.3, template_digest: String::new() })
            .collect();
        refresh.status.percent = decide::refresh_percent(desired, outdated.len());

        // A new instance of this batch that left before it got in service failed.
        let failed =
            refresh.batch_ids.iter().find(|id| !live_ids.contains(id) && !refresh.in_service_since.contains_key(*id));
        if let Some(id) = failed.cloned() {
            let why = self
                .events
                .iter()
                .rev()
                .find(|it| it.contains(&id) && (it.contains("terminated") || it.contains("draining")))
                .map(|it| it.split_once(' ').map_or(it.as_str(), |(_, rest)| rest).to_string())
                .unwrap_or_else(|| format!("{id} stopped before it got in service"));
            self.roll_back(refresh, format!("new instance {id} did not get in service: {why}"));
            return;
        }
        refresh.in_service_since.retain(|id, _| live_ids.contains(id));
        refresh.batch_ids.retain(|id| live_ids.contains(id));
        let limit = self.refresh_timeout() + warmup;
        if refresh.extra > 0 && now.duration_since(refresh.batch_started) > limit {
            let waiting: Vec<&String> = live.iter().filter(|it| it.1 && !ready(&it.0)).map(|it| &it.0).collect();
            let names = waiting.iter().map(|it| it.as_str()).collect::<Vec<_>>().join(", ");
            let limit = lbctl_spec::Duration(limit);
            let reason = if names.is_empty() {
                format!("no new instance in service within {limit}")
            } else {
                format!("new instance(s) {names} not in service within {limit}")
            };
            self.roll_back(refresh, reason);
            return;
        }

        if outdated.is_empty() {
            if new_ready >= desired {
                refresh.extra = 0;
                refresh.status = RefreshStatus { state: RefreshState::Successful, percent: 100, reason: String::new() };
                self.event("instance refresh successful".to_string());
            }
            return;
        }
        if refresh.extra == 0 {
            refresh.extra = decide::refresh_batch_size(desired, min_healthy).min(outdated.len());
            refresh.batch_started = now;
            refresh.batch_ids.clear();
            for _ in 0..refresh.extra {
                self.replacing.push_back(format!("instance refresh {}%: new launch template", refresh.status.percent));
            }
            self.event(format!(
                "instance refresh {}%: launching {} new instance(s) before replacing as many",
                refresh.status.percent, refresh.extra
            ));
            return;
        }
        // The batch is done once every live new instance has warmed up and
        // enough of them run to replace `extra` outdated ones.
        let new_live = live.iter().filter(|it| it.1).count();
        if new_ready == new_live && new_ready + outdated.len() >= desired + refresh.extra {
            let victims =
                decide::choose_victims(lbctl_spec::TerminationPolicy::OldestInstance, "", &outdated, refresh.extra);
            refresh.extra = 0;
            for id in victims {
                self.begin_drain(&id, "instance refresh".to_string());
            }
        }
    }

    /// Restores the previous launch template and drains the instances of the new one.
    fn roll_back(&mut self, refresh: &mut Refresh, reason: String) {
        self.event(format!("instance refresh failed, rolling back: {reason}"));
        self.config.settings.launch_template = refresh.previous.clone();
        self.template_digest = refresh.previous_digest.clone();
        debug_assert_eq!(self.template_digest, template_digest(&refresh.previous));
        let current = self.template_digest.clone();
        let broken: Vec<String> = self
            .instances
            .iter()
            .filter(|it| it.is_live() && it.record.template_digest != current)
            .map(|it| it.record.id.clone())
            .collect();
        for id in broken {
            self.begin_drain(&id, "instance refresh rolled back".to_string());
        }
        self.replacing.clear();
        self.launch_failures = 0;
        self.next_launch_at = Instant::now();
        refresh.extra = 0;
        refresh.status = RefreshStatus { state: RefreshState::RolledBack, percent: refresh.status.percent, reason };
    }

    /// How long new instances of a batch get to be in service:
    /// max(30 s, 10 x the largest health check interval).
    fn refresh_timeout(&self) -> Duration {
        let interval = self
            .config
            .settings
            .target_groups
            .iter()
            .filter_map(|tg| {
                lbctl_runtime::read_json::<TargetGroupConfig>(&self.config.layout.tg_dir(tg).join("group.json"))
                    .ok()
                    .flatten()
            })
            .map(|it| it.settings.health_check.interval.get())
            .max()
            .unwrap_or_default();
        decide::refresh_timeout(interval)
    }
}
