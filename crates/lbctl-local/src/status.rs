//! The live view for `lbctl status`: listeners, target health, instances.

use std::net::Ipv4Addr;

use lbctl_plan::{Kind, LiveStatus, ResourceState};
use lbctl_runtime::{self as runtime, HealthState, ProxyStatus, RegisteredTarget};
use serde_json::json;

use crate::provider::{lb_settings, LocalProvider};

/// Events of a group `lbctl status` shows, the latest.
const LATEST_EVENTS: usize = 5;

/// The reason of a target in a group that no load balancer routes to (AWS's code).
const REASON_NOT_IN_USE: &str = "Target.NotInUse: target group is not used by any load balancer";

/// A target's address as `status` shows it: `ip:port`, or `lambda` for a
/// function (registered with address 0.0.0.0 and port 0).
fn target_address(ip: Ipv4Addr, port: u16) -> String {
    if ip.is_unspecified() && port == 0 {
        "lambda".to_string()
    } else {
        format!("{ip}:{port}")
    }
}

/// One target of a target group as one load balancer sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct GroupTarget {
    /// The load balancer; `None` for a target of a group none routes to.
    load_balancer: Option<String>,
    id: String,
    address: String,
    state: HealthState,
    reason: String,
}

/// The targets of `group` as each running load balancer that routes to it
/// sees them; when none does, its `registered` targets, all `unused`.
fn group_targets(
    statuses: &[(String, ProxyStatus)],
    group: &str,
    registered: impl FnOnce() -> Vec<RegisteredTarget>,
) -> Vec<GroupTarget> {
    let mut targets = Vec::new();
    for (lb, status) in statuses {
        for target in status.target_groups.get(group).into_iter().flatten() {
            targets.push(GroupTarget {
                load_balancer: Some(lb.clone()),
                id: target.id.clone(),
                address: target_address(target.ip, target.port),
                state: target.state,
                reason: target.reason.clone(),
            });
        }
    }
    if !statuses.iter().any(|(_, status)| status.target_groups.contains_key(group)) {
        targets.extend(registered().into_iter().map(|target| GroupTarget {
            load_balancer: None,
            address: target_address(target.ip, target.port),
            id: target.id,
            state: HealthState::Unused,
            reason: REASON_NOT_IN_USE.to_string(),
        }));
    }
    targets
}

/// A summary line followed by one line per error.
fn with_errors(summary: String, errors: &[String]) -> String {
    errors.iter().fold(summary, |acc, error| format!("{acc}\n  error: {error}"))
}

pub(crate) fn live_status(provider: &LocalProvider, current: &ResourceState) -> anyhow::Result<LiveStatus> {
    let name = &current.address.name;
    match current.address.kind {
        Kind::LoadBalancer => {
            let (pid, running) = provider.process_of(current)?;
            let lb = lb_settings(&current.resolved)?;
            let urls = provider.listener_urls(current, &lb);
            let state = if running { format!("running (pid {pid})") } else { format!("NOT RUNNING (pid {pid} gone)") };
            let status = provider.all_proxy_statuses().into_iter().find(|(lb_name, _)| lb_name == name).map(|it| it.1);
            let mut rows = Vec::new();
            let mut targets_json = Vec::new();
            for (group, targets) in status.iter().flat_map(|it| it.target_groups.iter()) {
                for target in targets {
                    let address = target_address(target.ip, target.port);
                    rows.push(vec![
                        group.clone(),
                        target.id.clone(),
                        address.clone(),
                        target.state.as_str().to_string(),
                        target.reason.clone(),
                        target.requests.to_string(),
                    ]);
                    targets_json.push(json!({
                        "target_group": group, "id": target.id, "address": address,
                        "state": target.state.as_str(), "reason": target.reason, "requests": target.requests,
                        "health_check_requests": target.health_check_requests,
                    }));
                }
            }
            let errors: Vec<String> = status.iter().flat_map(|it| it.errors.iter().cloned()).collect();
            Ok(LiveStatus {
                summary: with_errors(format!("{state}, listening on {}", urls.join(", ")), &errors),
                columns: ["target group", "target", "address", "state", "reason", "requests"]
                    .map(String::from)
                    .to_vec(),
                rows,
                wide_only: 0,
                footer: Vec::new(),
                json: json!({
                    "running": running, "pid": pid, "urls": urls, "targets": targets_json, "errors": errors,
                    "connections": status.as_ref().map_or(0, |it| it.connections),
                    "rejected_connections": status.as_ref().map_or(0, |it| it.rejected_connections),
                    "metrics_url": status.as_ref().and_then(|it| it.metrics_url.clone()),
                    "access_log": lb.access_logs.unwrap_or(false).then(|| provider.access_log_path(name)),
                }),
            })
        }
        Kind::AutoscalingGroup => {
            let (pid, running) = provider.process_of(current)?;
            let report = provider.instances_report(name).unwrap_or_default();
            let state = if running {
                format!("supervisor running (pid {pid})")
            } else {
                format!("supervisor NOT RUNNING (pid {pid} gone)")
            };
            let mut rows = Vec::new();
            let mut instances_json = Vec::new();
            for instance in &report.instances {
                let lifecycle = format!("{:?}", instance.lifecycle);
                rows.push(vec![
                    instance.id.clone(),
                    format!("{}:{}", instance.ip, instance.port),
                    instance.pid.to_string(),
                    lifecycle.clone(),
                    instance.health.clone(),
                    instance.health_reason.clone(),
                    instance.log.display().to_string(),
                ]);
                instances_json.push(json!({
                    "id": instance.id, "address": format!("{}:{}", instance.ip, instance.port), "pid": instance.pid,
                    "lifecycle": lifecycle, "health": instance.health, "health_reason": instance.health_reason,
                    "log": instance.log,
                }));
            }
            let mut summary = format!(
                "{state}, desired {}{}, {} instances",
                report.desired,
                report.desired_set_by.as_ref().map(|by| format!(" (set by {by})")).unwrap_or_default(),
                report.instances.len()
            );
            let mut footer = Vec::new();
            if let Some(crash) = &report.crash_loop {
                summary.push_str(", CRASH-LOOPING");
                footer.push(format!(
                    "crash loop: {} instances in a row ended as they started; the last: {}",
                    crash.restarts, crash.last_exit
                ));
                if let Some(line) = crash.last_log.lines().next_back() {
                    footer.push(format!("  its last log line: {line}"));
                }
            }
            if !report.events.is_empty() {
                footer.push("latest events:".to_string());
                let latest = report.events.len().saturating_sub(LATEST_EVENTS);
                footer.extend(report.events[latest..].iter().map(|it| format!("  {it}")));
            }
            if let Some(dir) = report.instances.first().and_then(|it| it.log.parent()) {
                footer.push(format!("instance logs: {}/<instance>.log", dir.display()));
            }
            Ok(LiveStatus {
                summary: with_errors(summary, &report.errors),
                columns: ["instance", "address", "pid", "lifecycle", "health", "reason", "log"]
                    .map(String::from)
                    .to_vec(),
                rows,
                wide_only: 1,
                footer,
                json: json!({
                    "running": running, "pid": pid, "desired": report.desired, "desired_set_by": report.desired_set_by,
                    "instances": instances_json, "events": report.events, "errors": report.errors,
                    "crash_loop": report.crash_loop.as_ref().map(|it| json!({
                        "restarts": it.restarts, "last_exit": it.last_exit, "last_log": it.last_log,
                    })),
                    "metrics_url": report.metrics_url,
                }),
            })
        }
        Kind::TargetGroup => {
            let statuses = provider.all_proxy_statuses();
            let routing: Vec<&String> =
                statuses.iter().filter(|(_, status)| status.target_groups.contains_key(name)).map(|it| &it.0).collect();
            let summary = if routing.is_empty() {
                "unused: no load balancer routes to it".to_string()
            } else {
                format!("checked by {}", routing.iter().map(|it| it.as_str()).collect::<Vec<_>>().join(", "))
            };
            let targets = group_targets(&statuses, name, || runtime::registered_targets(provider.layout(), name));
            let rows = targets
                .iter()
                .map(|it| {
                    let lb = it.load_balancer.clone().unwrap_or_else(|| "-".to_string());
                    vec![lb, it.id.clone(), it.address.clone(), it.state.as_str().to_string(), it.reason.clone()]
                })
                .collect();
            let targets_json: Vec<_> = targets
                .iter()
                .map(|it| {
                    json!({
                        "load_balancer": it.load_balancer, "id": it.id, "address": it.address,
                        "state": it.state.as_str(), "reason": it.reason,
                    })
                })
                .collect();
            Ok(LiveStatus {
                summary,
                columns: ["load balancer", "target", "address", "state", "reason"].map(String::from).to_vec(),
                rows,
                wide_only: 0,
                footer: Vec::new(),
                json: json!({ "load_balancers": routing, "targets": targets_json }),
            })
        }
        Kind::Function => Ok(LiveStatus { summary: "invoked per request".to_string(), ..LiveStatus::default() }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::tests::status;

    #[test]
    fn targets_of_groups_used_or_not() {
        fn check(statuses: &[(String, ProxyStatus)], group: &str, expect: &[&str]) {
            let registered = || {
                vec![
                    RegisteredTarget { id: "127.0.0.9:80".into(), ip: "127.0.0.9".parse().unwrap(), port: 80 },
                    RegisteredTarget { id: "thumbnailer".into(), ip: Ipv4Addr::UNSPECIFIED, port: 0 },
                ]
            };
            let got: Vec<String> = group_targets(statuses, group, registered)
                .into_iter()
                .map(|it| {
                    let lb = it.load_balancer.unwrap_or("-".into());
                    format!("{lb} {} {} {} {}", it.id, it.address, it.state.as_str(), it.reason)
                })
                .collect();
            assert_eq!(got, expect, "{group}");
        }
        let statuses = vec![("public".to_string(), status("web", "i-1", HealthState::Unhealthy))];
        check(&statuses, "web", &["public i-1 127.0.0.2:80 unhealthy Target.Timeout: health check timed out"]);
        let unused = "Target.NotInUse: target group is not used by any load balancer";
        let expect =
            [format!("- 127.0.0.9:80 127.0.0.9:80 unused {unused}"), format!("- thumbnailer lambda unused {unused}")];
        check(&statuses, "spare", &expect.iter().map(String::as_str).collect::<Vec<_>>());
        check(&[], "web", &expect.iter().map(String::as_str).collect::<Vec<_>>());
    }
}
