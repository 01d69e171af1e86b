//! How the load balancers see an instance: healthy everywhere it is
//! checked, judged unhealthy somewhere, or not judged yet. Pure, on the
//! proxies' status files; readiness and `lbctl status` read it.

use lbctl_runtime::{HealthState, ProxyStatus};

/// How the load balancers see an instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TargetVerdict {
    /// Healthy in every load balancer that routes to one of its groups (a
    /// group no load balancer routes to does not count against it).
    Healthy,
    /// Every such load balancer has judged it, and one found it unhealthy
    /// (or it is draining there); why.
    Unhealthy(String),
    /// Some load balancer has not registered or judged it yet; why.
    Pending(String),
}

/// How the load balancers that route to one of `target_groups` see
/// `instance_id`.
pub(crate) fn instance_target_health(
    statuses: &[(String, ProxyStatus)],
    target_groups: &[String],
    instance_id: &str,
) -> TargetVerdict {
    let mut unhealthy = None;
    for (lb, status) in statuses {
        for group in target_groups {
            let Some(targets) = status.target_groups.get(group) else { continue };
            match targets.iter().find(|it| it.id == instance_id) {
                None => return TargetVerdict::Pending(format!("not yet registered in {group} at load balancer {lb}")),
                Some(target) if target.state == HealthState::Initial => {
                    return TargetVerdict::Pending(format!("initial in {group} at {lb}: {}", target.reason));
                }
                Some(target) if target.state != HealthState::Healthy => {
                    unhealthy.get_or_insert_with(|| {
                        format!("{} in {group} at {lb}: {}", target.state.as_str(), target.reason)
                    });
                }
                Some(_) => {}
            }
        }
    }
    unhealthy.map_or(TargetVerdict::Healthy, TargetVerdict::Unhealthy)
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::BTreeMap;

    use lbctl_runtime::TargetHealth;

    use super::*;

    /// A proxy's status with one target of `group` in `state`.
    pub(crate) fn status(group: &str, id: &str, state: HealthState) -> ProxyStatus {
        let target = TargetHealth {
            id: id.to_string(),
            ip: "127.0.0.2".parse().unwrap(),
            port: 80,
            state,
            reason: "Target.Timeout: health check timed out".to_string(),
            requests: 0,
            health_check_requests: 0,
        };
        ProxyStatus { target_groups: BTreeMap::from([(group.to_string(), vec![target])]), ..ProxyStatus::default() }
    }

    #[test]
    fn healthy_means_healthy_wherever_it_is_checked() {
        let groups = vec!["web".to_string()];
        let healthy = vec![("public".to_string(), status("web", "i-1", HealthState::Healthy))];
        assert_eq!(instance_target_health(&healthy, &groups, "i-1"), TargetVerdict::Healthy);
        let mixed = vec![healthy[0].clone(), ("other".to_string(), status("web", "i-1", HealthState::Unhealthy))];
        assert_eq!(
            instance_target_health(&mixed, &groups, "i-1"),
            TargetVerdict::Unhealthy("unhealthy in web at other: Target.Timeout: health check timed out".to_string())
        );
        let checking = vec![mixed[1].clone(), ("third".to_string(), status("web", "i-1", HealthState::Initial))];
        assert!(
            matches!(instance_target_health(&checking, &groups, "i-1"), TargetVerdict::Pending(_)),
            "not judged yet"
        );
        assert!(
            matches!(instance_target_health(&healthy, &groups, "i-2"), TargetVerdict::Pending(_)),
            "not registered yet"
        );
        assert_eq!(instance_target_health(&[], &groups, "i-2"), TargetVerdict::Healthy, "unused groups do not count");
    }
}
