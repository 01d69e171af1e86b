//! The supervisor's pure decisions: no processes, no files, no clocks.

use std::ffi::OsString;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use lbctl_spec::{HealthCheckType, TerminationPolicy};

use lbctl_runtime::{HealthState, ProxyStatus};

/// How long a process must have run before it counts as started (EC2 health,
/// or ELB health when no load balancer checks the instance).
pub(crate) const SETTLE: Duration = Duration::from_secs(1);

/// The program and arguments of an instance: placeholders replaced in every
/// word, a first word `lbctl` replaced by the binary that applied the spec.
/// `None` for an empty command.
pub(crate) fn expand_command(
    words: &[String],
    ip: Ipv4Addr,
    port: u16,
    instance_id: &str,
    lbctl_exe: &Path,
) -> Option<(OsString, Vec<String>)> {
    let (first, rest) = words.split_first()?;
    let expand = |word: &String| {
        word.replace("{ip}", &ip.to_string()).replace("{port}", &port.to_string()).replace("{instance_id}", instance_id)
    };
    let program = if first == "lbctl" { lbctl_exe.as_os_str().to_owned() } else { OsString::from(expand(first)) };
    Some((program, rest.iter().map(expand).collect()))
}

/// An instance as the termination policy sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Candidate {
    /// Instance id.
    pub id: String,
    /// Launch time, Unix milliseconds.
    pub launched_ms: u64,
    /// Digest of the launch template it runs.
    pub template_digest: String,
}

/// The `count` instances scale-in stops, in order.
pub(crate) fn choose_victims(
    policy: TerminationPolicy,
    current_template: &str,
    candidates: &[Candidate],
    count: usize,
) -> Vec<String> {
    let mut sorted: Vec<&Candidate> = candidates.iter().collect();
    match policy {
        TerminationPolicy::OldestInstance => sorted.sort_by(|a, b| (a.launched_ms, &a.id).cmp(&(b.launched_ms, &b.id))),
        TerminationPolicy::NewestInstance => sorted.sort_by(|a, b| (b.launched_ms, &b.id).cmp(&(a.launched_ms, &a.id))),
        TerminationPolicy::Default => sorted.sort_by(|a, b| {
            let key = |it: &Candidate| (it.template_digest == current_template, it.launched_ms, it.id.clone());
            key(a).cmp(&key(b))
        }),
    }
    sorted.into_iter().take(count).map(|it| it.id.clone()).collect()
}

/// What one load balancer says about an instance in one target group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Observation {
    /// Load balancer name.
    pub lb: String,
    /// Target group name.
    pub group: String,
    /// Target health state.
    pub state: HealthState,
    /// Reason as the load balancer gives it.
    pub reason: String,
}

impl Observation {
    fn describe(&self) -> String {
        let reason = if self.reason.is_empty() { self.state.as_str().to_string() } else { self.reason.clone() };
        format!("load balancer {} reports {reason}", self.lb)
    }
}

/// Every entry for `instance_id` in the given groups of the given statuses.
pub(crate) fn observations(
    statuses: &[(String, ProxyStatus)],
    groups: &[String],
    instance_id: &str,
) -> Vec<Observation> {
    let mut found = Vec::new();
    for (lb, status) in statuses {
        for group in groups {
            let Some(targets) = status.target_groups.get(group) else { continue };
            for target in targets.iter().filter(|it| it.id == instance_id) {
                found.push(Observation {
                    lb: lb.clone(),
                    group: group.clone(),
                    state: target.state,
                    reason: target.reason.clone(),
                });
            }
        }
    }
    found
}

/// The health of a live instance (its process runs) and whether it may leave `Pending`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Verdict {
    /// Healthy under the group's health check type.
    pub healthy: bool,
    /// Why, e.g. `EC2: process 1234 running`.
    pub reason: String,
    /// Healthy everywhere it is checked: `Pending` may become `InService`.
    pub in_service: bool,
}

/// Judges a live instance: `age` is the time since its launch.
pub(crate) fn judge(check: HealthCheckType, pid: u32, age: Duration, grace: Duration, seen: &[Observation]) -> Verdict {
    let ec2 = format!("EC2: process {pid} running");
    let settled = age >= SETTLE;
    let checked: Vec<&Observation> = seen
        .iter()
        .filter(|it| matches!(it.state, HealthState::Initial | HealthState::Healthy | HealthState::Unhealthy))
        .collect();
    let unhealthy = checked.iter().find(|it| it.state == HealthState::Unhealthy);
    match check {
        HealthCheckType::Ec2 => {
            let reason = match unhealthy {
                Some(it) => format!("{ec2} (ELB view, not acted on with health_check_type EC2: {})", it.describe()),
                None => ec2,
            };
            Verdict { healthy: true, reason, in_service: settled }
        }
        HealthCheckType::Elb => {
            if let Some(it) = unhealthy {
                let elb = format!("ELB: {}", it.describe());
                return if age >= grace {
                    Verdict { healthy: false, reason: elb, in_service: false }
                } else {
                    // Whole seconds left, as `4m12s`.
                    let left = Duration::from_secs((grace - age).as_secs_f64().ceil() as u64);
                    let left = humantime::format_duration(left).to_string().replace(' ', "");
                    Verdict {
                        healthy: true,
                        reason: format!("{elb} (ignored during the health check grace period, {left} left)"),
                        in_service: false,
                    }
                };
            }
            if checked.is_empty() {
                return Verdict {
                    healthy: true,
                    reason: format!("{ec2}; no load balancer checks it yet"),
                    in_service: settled,
                };
            }
            if let Some(it) = checked.iter().find(|it| it.state != HealthState::Healthy) {
                return Verdict { healthy: true, reason: format!("ELB: {}", it.describe()), in_service: false };
            }
            let mut lbs: Vec<&str> = checked.iter().map(|it| it.lb.as_str()).collect();
            lbs.dedup();
            let reason = format!("ELB: healthy in load balancer {}", lbs.join(", "));
            Verdict { healthy: true, reason, in_service: true }
        }
    }
}

/// Whether every load balancer has finished draining a deregistered
/// instance before its deregistration delay is over (AWS completes
/// deregistration at once when a target has nothing in flight): each status
/// that holds one of its groups either lists it as `unused`, or no longer
/// lists it and was written at least `notice_ms` after the deregistration
/// (so that the proxy had time to see it).
pub(crate) fn drained_everywhere(
    statuses: &[(String, ProxyStatus)],
    groups: &[String],
    instance_id: &str,
    deregistered_ms: u64,
    notice_ms: u64,
) -> bool {
    statuses.iter().all(|(_, status)| {
        groups.iter().all(|group| {
            let Some(targets) = status.target_groups.get(group) else { return true };
            match targets.iter().find(|it| it.id == instance_id) {
                Some(target) => target.state == HealthState::Unused,
                None => status.updated_ms >= deregistered_ms + notice_ms,
            }
        })
    })
}

/// Delay before the next launch after `failures` instances in a row died
/// before they got in service: the first is replaced at once, then 0.5 s,
/// 1 s, 2 s, ... up to 15 s, so that a broken command does not spin.
pub(crate) fn launch_backoff(failures: u32) -> Duration {
    if failures <= 1 {
        return Duration::ZERO;
    }
    let factor = 1u32 << (failures - 2).min(5);
    (Duration::from_millis(500) * factor).min(Duration::from_secs(15))
}

/// Instances an instance refresh replaces per batch (AWS's rule): as many as
/// may be out of service while `min_healthy_percentage` of `desired` stays
/// in service, at least one.
pub(crate) fn refresh_batch_size(desired: usize, min_healthy_percentage: u32) -> usize {
    let percentage = min_healthy_percentage.min(100) as usize;
    let must_stay = (desired * percentage).div_ceil(100);
    desired.saturating_sub(must_stay).max(1)
}

/// Share of `desired` capacity already on the new launch template, when
/// `outdated` live instances still run the previous one.
pub(crate) fn refresh_percent(desired: usize, outdated: usize) -> u32 {
    if desired == 0 {
        return 100;
    }
    (desired.saturating_sub(outdated) * 100 / desired) as u32
}

/// How long the new instances of a refresh batch get to be in service
/// (before the warmup): max(30 s, 10 health check intervals).
pub(crate) fn refresh_timeout(health_check_interval: Duration) -> Duration {
    (health_check_interval * 10).max(Duration::from_secs(30))
}

/// `2024-05-01T12:34:56Z` for Unix milliseconds.
pub(crate) fn utc_timestamp(ms: u64) -> String {
    let time = std::time::UNIX_EPOCH + Duration::from_millis(ms);
    humantime::format_rfc3339_seconds(time).to_string()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::PathBuf;

    use super::*;
    use lbctl_runtime::TargetHealth;

    fn words(list: &[&str]) -> Vec<String> {
        list.iter().map(|it| it.to_string()).collect()
    }

    #[test]
    fn supervisor_expands_placeholders_in_every_word() {
        let exe = PathBuf::from("/opt/bin/lbctl");
        let ip = Ipv4Addr::new(127, 20, 3, 4);
        let (program, args) = expand_command(
            &words(&["lbctl", "worker", "--listen", "{ip}:{port}", "--id={instance_id}", "{port}{port}"]),
            ip,
            8080,
            "i-0123456789abcdef0",
            &exe,
        )
        .unwrap();
        assert_eq!(program, OsString::from("/opt/bin/lbctl"));
        assert_eq!(args, words(&["worker", "--listen", "127.20.3.4:8080", "--id=i-0123456789abcdef0", "80808080"]));

        let (program, args) = expand_command(&words(&["python3", "-m", "http.server"]), ip, 9000, "i-1", &exe).unwrap();
        assert_eq!(program, OsString::from("python3"));
        assert_eq!(args, words(&["-m", "http.server"]));

        // Only a first word of exactly `lbctl` is the applying binary.
        let (program, args) = expand_command(&words(&["./lbctl", "lbctl"]), ip, 1, "i-1", &exe).unwrap();
        assert_eq!(program, OsString::from("./lbctl"));
        assert_eq!(args, words(&["lbctl"]));
        let (program, _) = expand_command(&words(&["/bin/{instance_id}"]), ip, 1, "i-1", &exe).unwrap();
        assert_eq!(program, OsString::from("/bin/i-1"));

        assert_eq!(expand_command(&[], ip, 1, "i-1", &exe), None);
    }

    fn candidate(id: &str, launched_ms: u64, template: &str) -> Candidate {
        Candidate { id: id.to_string(), launched_ms, template_digest: template.to_string() }
    }

    #[test]
    fn supervisor_termination_policies() {
        let list = [candidate("i-b", 200, "new"), candidate("i-a", 100, "new"), candidate("i-c", 300, "old")];
        assert_eq!(choose_victims(TerminationPolicy::OldestInstance, "new", &list, 2), ["i-a", "i-b"]);
        assert_eq!(choose_victims(TerminationPolicy::NewestInstance, "new", &list, 2), ["i-c", "i-b"]);
        assert_eq!(choose_victims(TerminationPolicy::Default, "new", &list, 2), ["i-c", "i-a"]);
        assert_eq!(choose_victims(TerminationPolicy::Default, "new", &list, 5), ["i-c", "i-a", "i-b"]);
        assert!(choose_victims(TerminationPolicy::Default, "new", &list, 0).is_empty());
        // Ties on launch time are broken by id, so the choice is stable.
        let tied = [candidate("i-2", 100, "x"), candidate("i-1", 100, "x")];
        assert_eq!(choose_victims(TerminationPolicy::OldestInstance, "x", &tied, 1), ["i-1"]);
    }

    /// `(target group, [(instance id, state, reason)])`.
    type Group<'a> = (&'a str, &'a [(&'a str, HealthState, &'a str)]);

    fn status(updated_ms: u64, groups: &[Group]) -> ProxyStatus {
        let mut target_groups = BTreeMap::new();
        for (group, targets) in groups {
            let list = targets
                .iter()
                .map(|(id, state, reason)| TargetHealth {
                    id: id.to_string(),
                    ip: Ipv4Addr::new(127, 16, 0, 1),
                    port: 8080,
                    state: *state,
                    reason: reason.to_string(),
                    requests: 0,
                    health_check_requests: 0,
                })
                .collect();
            target_groups.insert(group.to_string(), list);
        }
        ProxyStatus { pid: 1, target_groups, updated_ms, ..ProxyStatus::default() }
    }

    const FAILED: &str = "Target.FailedHealthChecks: connection refused";

    #[test]
    fn supervisor_health_from_load_balancer_statuses() {
        use HealthState::*;
        let groups = words(&["web"]);
        let statuses = vec![
            ("internal".to_string(), status(0, &[("web", &[("i-a", Healthy, ""), ("i-b", Healthy, "")])])),
            (
                "public".to_string(),
                status(
                    0,
                    &[
                        ("web", &[("i-a", Unhealthy, FAILED), ("i-b", Healthy, "")]),
                        ("other", &[("i-c", Unhealthy, "")]),
                    ],
                ),
            ),
        ];
        let long = Duration::from_secs(60);
        let grace = Duration::from_secs(5);

        // Process alive, web server down: EC2 says healthy, ELB says unhealthy.
        let seen = observations(&statuses, &groups, "i-a");
        assert_eq!(seen.len(), 2);
        let ec2 = judge(HealthCheckType::Ec2, 42, long, grace, &seen);
        assert!(ec2.healthy && ec2.in_service);
        assert!(ec2.reason.starts_with("EC2: process 42 running"), "{}", ec2.reason);
        let elb = judge(HealthCheckType::Elb, 42, long, grace, &seen);
        assert_eq!(
            elb,
            Verdict {
                healthy: false,
                reason: format!("ELB: load balancer public reports {FAILED}"),
                in_service: false
            }
        );
        // Within the grace period the failure is not acted on.
        let young = judge(HealthCheckType::Elb, 42, Duration::from_secs(2), grace, &seen);
        assert!(young.healthy && !young.in_service, "{young:?}");
        assert!(young.reason.ends_with("(ignored during the health check grace period, 3s left)"), "{young:?}");

        // Healthy in every load balancer that lists it.
        let ok = judge(HealthCheckType::Elb, 7, long, grace, &observations(&statuses, &groups, "i-b"));
        assert_eq!(
            ok,
            Verdict {
                healthy: true,
                reason: "ELB: healthy in load balancer internal, public".into(),
                in_service: true
            }
        );

        // Not in a group the instance belongs to: not seen; unlisted means checked by no one.
        assert!(observations(&statuses, &groups, "i-c").is_empty());
        let unseen = judge(HealthCheckType::Elb, 9, Duration::from_millis(300), grace, &[]);
        assert!(unseen.healthy && !unseen.in_service);
        assert!(judge(HealthCheckType::Elb, 9, long, grace, &[]).in_service);
        assert!(!judge(HealthCheckType::Ec2, 9, Duration::from_millis(300), grace, &[]).in_service);

        // Still initial somewhere: healthy, but not yet in service.
        let initial =
            vec![("public".to_string(), status(0, &[("web", &[("i-d", Initial, "Elb.RegistrationInProgress")])]))];
        let verdict = judge(HealthCheckType::Elb, 9, long, grace, &observations(&initial, &groups, "i-d"));
        assert_eq!(
            verdict,
            Verdict {
                healthy: true,
                reason: "ELB: load balancer public reports Elb.RegistrationInProgress".into(),
                in_service: false
            }
        );
    }

    #[test]
    fn supervisor_drain_completes_when_no_load_balancer_holds_the_target() {
        use HealthState::*;
        let groups = words(&["web"]);
        let draining = vec![(
            "public".to_string(),
            status(5_000, &[("web", &[("i-a", Draining, "Target.DeregistrationInProgress")])]),
        )];
        assert!(!drained_everywhere(&draining, &groups, "i-a", 1_000, 1_500));
        // Gone from a status written long enough after the deregistration.
        let gone = vec![("public".to_string(), status(5_000, &[("web", &[])]))];
        assert!(drained_everywhere(&gone, &groups, "i-a", 1_000, 1_500));
        // Gone from a status written too soon: the proxy may not have seen it yet.
        assert!(!drained_everywhere(&gone, &groups, "i-a", 4_000, 1_500));
        // No load balancer routes to the group.
        let other = vec![("public".to_string(), status(0, &[("images", &[])]))];
        assert!(drained_everywhere(&other, &groups, "i-a", 1_000, 1_500));
        assert!(drained_everywhere(&[], &groups, "i-a", 1_000, 1_500));
    }

    #[test]
    fn supervisor_launch_backoff_grows_and_is_capped() {
        assert_eq!(launch_backoff(0), Duration::ZERO);
        assert_eq!(launch_backoff(1), Duration::ZERO);
        assert_eq!(launch_backoff(2), Duration::from_millis(500));
        assert_eq!(launch_backoff(3), Duration::from_secs(1));
        assert_eq!(launch_backoff(7), Duration::from_secs(15));
        assert_eq!(launch_backoff(100), Duration::from_secs(15));
    }

    #[test]
    fn supervisor_formats_utc_timestamps() {
        assert_eq!(utc_timestamp(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc_timestamp(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(utc_timestamp(1_700_000_000_123), "2023-11-14T22:13:20Z");
    }

    #[test]
    fn refresh_batch_size_keeps_min_healthy_percentage_of_desired_in_service() {
        // desired - ceil(desired * min / 100), at least one.
        assert_eq!(refresh_batch_size(3, 50), 1);
        assert_eq!(refresh_batch_size(4, 50), 2);
        assert_eq!(refresh_batch_size(10, 90), 1);
        assert_eq!(refresh_batch_size(10, 75), 2);
        assert_eq!(refresh_batch_size(3, 90), 1);
        assert_eq!(refresh_batch_size(3, 100), 1);
        assert_eq!(refresh_batch_size(5, 0), 5);
        assert_eq!(refresh_batch_size(1, 0), 1);
        assert_eq!(refresh_batch_size(0, 90), 1);
    }

    #[test]
    fn refresh_percent_counts_capacity_on_the_new_template() {
        assert_eq!(refresh_percent(3, 3), 0);
        assert_eq!(refresh_percent(4, 2), 50);
        assert_eq!(refresh_percent(3, 0), 100);
        assert_eq!(refresh_percent(2, 3), 0);
        assert_eq!(refresh_percent(0, 0), 100);
    }

    #[test]
    fn refresh_timeout_is_ten_intervals_but_at_least_thirty_seconds() {
        assert_eq!(refresh_timeout(Duration::from_millis(500)), Duration::from_secs(30));
        assert_eq!(refresh_timeout(Duration::from_secs(5)), Duration::from_secs(50));
    }
}
