//! Target groups: `CreateTargetGroup` (or the group of the same name, left
//! by a create that failed half-way), its health check
//! (`ModifyTargetGroup`), attributes (`ModifyTargetGroupAttributes`) and the
//! spec's targets (`RegisterTargets` / `DeregisterTargets`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use aws_sdk_elasticloadbalancingv2::types::{Matcher, ProtocolEnum, Tag, TargetDescription, TargetTypeEnum};
use lbctl_plan::{
    Applied, DependencyOutputs, Finding, Kind, LiveStatus, Observed, PartlyApplied, Progress, Resource, ResourceState,
    Severity,
};
use lbctl_spec::{settings, Duration as SpecDuration, TargetType};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::api::{code, sdk_error, unless_missing};
use crate::mapping::{self, attribute_drift, group_attributes};
use crate::{dependency_arn, private, settings, AwsProvider};

/// What the state keeps of a target group.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Private {
    /// Its ARN.
    pub arn: String,
    /// Its AWS name.
    pub name: String,
    /// The targets the spec registered: (id, port).
    #[serde(default)]
    pub targets: Vec<(String, Option<i32>)>,
}

/// Plan-time checks: what AWS cannot register.
pub(crate) fn check_spec(base: &str, resource: &Resource, found: &mut Vec<Finding>) {
    for (idx, target) in resource.attributes["targets"].as_array().into_iter().flatten().enumerate() {
        if let Some(ip) = target["ip"].as_str().and_then(|it| it.parse::<std::net::Ipv4Addr>().ok()) {
            if ip.is_loopback() {
                found.push(Finding {
                    path: format!("{base}.targets[{idx}].ip"),
                    message: format!("{ip} is a loopback address; AWS registers addresses in the VPC"),
                    severity: Severity::Invalid,
                });
            }
        }
    }
}

fn sdk_protocol(text: &str) -> ProtocolEnum {
    ProtocolEnum::from(text)
}

/// The targets the spec registers: (id, port).
fn desired_targets(
    group: &settings::TargetGroup,
    dependencies: &DependencyOutputs,
) -> Result<Vec<(String, Option<i32>)>> {
    let mut found = Vec::new();
    for target in &group.targets {
        let port = target.port.or(group.port).map(i32::from);
        if let Some(ip) = &target.ip {
            found.push((ip.clone(), port));
        } else if let Some(id) = &target.id {
            found.push((id.clone(), port));
        } else if let Some(lb) = &target.load_balancer {
            found.push((dependency_arn(dependencies, Kind::LoadBalancer, lb)?, port));
        } else if let Some(function) = &target.function {
            found.push((dependency_arn(dependencies, Kind::Function, function)?, None));
        }
    }
    Ok(found)
}

fn description((id, port): &(String, Option<i32>)) -> TargetDescription {
    TargetDescription::builder().id(id).set_port(*port).build()
}

/// Creates or converges a target group.
pub(crate) fn apply(
    provider: &AwsProvider,
    prior: Option<&ResourceState>,
    resource: &Resource,
    dependencies: &DependencyOutputs,
    progress: &dyn Progress,
) -> Result<Applied> {
    let clients = provider.clients()?;
    let name = &resource.address.name;
    let group: settings::TargetGroup = settings(&resource.resolved, &[])?;
    let mapped = mapping::group_settings(name, &group);
    let check = &mapped.health_check;
    let lambda = group.target_type == TargetType::Lambda;
    let aws_name = provider.aws_name(name, 32);
    let mut state: Private = prior.map(private).unwrap_or_default();

    let matcher = if let Some(codes) = &check.grpc_code {
        Some(Matcher::builder().grpc_code(codes).build())
    } else {
        check.http_code.as_ref().map(|codes| Matcher::builder().http_code(codes).build())
    };
    if state.arn.is_empty() {
        // Left by an apply that failed before it could record it.
        if let Some(found) = by_name(provider, &aws_name)? {
            state = Private {
                arn: found.target_group_arn().unwrap_or_default().to_string(),
                name: aws_name.clone(),
                targets: Vec::new(),
            };
        }
    }
    let exists = !state.arn.is_empty() && describe(provider, &state.arn)?.is_some();
    if !exists {
        progress.report("creating the target group");
        let mut request = clients
            .elb
            .create_target_group()
            .name(&aws_name)
            .target_type(TargetTypeEnum::from(lbctl_spec::wire_name(&group.target_type).as_str()))
            .health_check_enabled(check.enabled)
            .health_check_interval_seconds(check.interval as i32)
            .health_check_timeout_seconds(check.timeout as i32)
            .healthy_threshold_count(check.healthy_threshold as i32)
            .unhealthy_threshold_count(check.unhealthy_threshold as i32)
            .set_health_check_path(check.path.clone())
            .set_matcher(matcher.clone());
        if !lambda {
            request = request
                .protocol(sdk_protocol(&lbctl_spec::wire_name(&group.protocol)))
                .set_protocol_version(group.protocol_version.map(|it| lbctl_spec::wire_name(&it)))
                .set_port(group.port.map(i32::from))
                .vpc_id(&provider.network()?.vpc)
                .health_check_protocol(sdk_protocol(&check.protocol))
                .health_check_port(&check.port);
        }
        for (key, value) in provider.tags(&resource.address.to_string()) {
            request = request.tags(Tag::builder().key(key).value(value).build());
        }
        let answer = clients.run(request.send()).map_err(|err| sdk_error("CreateTargetGroup", err))?;
        let created = answer.target_groups().first().context("CreateTargetGroup answered no target group")?;
        state = Private {
            arn: created.target_group_arn().unwrap_or_default().to_string(),
            name: aws_name.clone(),
            targets: Vec::new(),
        };
    } else {
        progress.report("updating the health check");
        let mut request = clients
            .elb
            .modify_target_group()
            .target_group_arn(&state.arn)
            .health_check_enabled(check.enabled)
            .health_check_interval_seconds(check.interval as i32)
            .health_check_timeout_seconds(check.timeout as i32)
            .healthy_threshold_count(check.healthy_threshold as i32)
            .unhealthy_threshold_count(check.unhealthy_threshold as i32)
            .set_health_check_path(check.path.clone())
            .set_matcher(matcher);
        if !lambda {
            request = request.health_check_protocol(sdk_protocol(&check.protocol)).health_check_port(&check.port);
        }
        clients.run(request.send()).map_err(|err| sdk_error("ModifyTargetGroup", err))?;
    }
    let converged = (|| -> Result<()> {
        let attributes = group_attributes(&mapped);
        if !attributes.is_empty() {
            clients
                .run(
                    clients
                        .elb
                        .modify_target_group_attributes()
                        .target_group_arn(&state.arn)
                        .set_attributes(Some(attributes))
                        .send(),
                )
                .map_err(|err| sdk_error("ModifyTargetGroupAttributes", err))?;
        }

        // Targets: the spec's, registered; those it no longer lists, deregistered.
        let wanted = desired_targets(&group, dependencies)?;
        let gone: Vec<&(String, Option<i32>)> = state.targets.iter().filter(|it| !wanted.contains(it)).collect();
        if !gone.is_empty() {
            progress.report("deregistering targets");
            let request = clients
                .elb
                .deregister_targets()
                .target_group_arn(&state.arn)
                .set_targets(Some(gone.iter().map(|it| description(it)).collect()));
            clients.run(request.send()).map_err(|err| sdk_error("DeregisterTargets", err))?;
        }
        if !wanted.is_empty() {
            progress.report("registering targets");
            let request = clients
                .elb
                .register_targets()
                .target_group_arn(&state.arn)
                .set_targets(Some(wanted.iter().map(description).collect()));
            clients.run(request.send()).map_err(|err| sdk_error("RegisterTargets", err))?;
        }
        state.targets = wanted;
        Ok(())
    })();
    let mut computed = BTreeMap::from([("arn".to_string(), json!(state.arn))]);
    if let Some((true, seconds)) = mapped.stickiness {
        computed.insert("stickiness_seconds".to_string(), json!(seconds));
    }
    let applied = Applied { private: serde_json::to_value(&state)?, computed };
    match converged {
        Ok(()) => Ok(applied),
        Err(error) => Err(PartlyApplied { applied, error }.into()),
    }
}

fn by_name(provider: &AwsProvider, name: &str) -> Result<Option<aws_sdk_elasticloadbalancingv2::types::TargetGroup>> {
    let clients = provider.clients()?;
    let answer = clients.run(clients.elb.describe_target_groups().names(name).send());
    Ok(unless_missing(answer, "DescribeTargetGroups", "TargetGroupNotFound")?
        .and_then(|it| it.target_groups().first().cloned()))
}

/// The target group of `arn`, or `None` when AWS has none.
fn describe(provider: &AwsProvider, arn: &str) -> Result<Option<aws_sdk_elasticloadbalancingv2::types::TargetGroup>> {
    let clients = provider.clients()?;
    let answer = clients.run(clients.elb.describe_target_groups().target_group_arns(arn).send());
    Ok(unless_missing(answer, "DescribeTargetGroups", "TargetGroupNotFound")?
        .and_then(|it| it.target_groups().first().cloned()))
}

fn seconds(value: i64) -> Value {
    serde_json::to_value(SpecDuration::from_secs(value as u64)).unwrap_or(Value::Null)
}

/// What AWS has, as the spec's settings: each value AWS holds other than
/// what the spec's mapping sets replaces the state's.
pub(crate) fn read(provider: &AwsProvider, prior: &ResourceState) -> Result<Observed> {
    let state: Private = private(prior);
    let Some(found) = describe(provider, &state.arn)? else {
        return Ok(Observed::Missing { reason: format!("target group {} was deleted outside lbctl", state.name) });
    };
    if prior.resolved.is_null() {
        return Ok(Observed::Present { attributes: None });
    }
    let group: settings::TargetGroup = settings(&prior.resolved, &[])?;
    let mapped = mapping::group_settings(&prior.address.name, &group);
    let check = &mapped.health_check;
    let mut observed = prior.resolved.clone();
    let health = &mut observed["health_check"];
    if let Some(interval) = found.health_check_interval_seconds().filter(|it| i64::from(*it) != check.interval) {
        health["interval"] = seconds(interval.into());
    }
    if let Some(timeout) = found.health_check_timeout_seconds().filter(|it| i64::from(*it) != check.timeout) {
        health["timeout"] = seconds(timeout.into());
    }
    if let Some(count) = found.healthy_threshold_count().filter(|it| i64::from(*it) != check.healthy_threshold) {
        health["healthy_threshold"] = json!(count);
    }
    if let Some(count) = found.unhealthy_threshold_count().filter(|it| i64::from(*it) != check.unhealthy_threshold) {
        health["unhealthy_threshold"] = json!(count);
    }
    if let (Some(path), Some(wanted)) = (found.health_check_path(), &check.path) {
        if path != wanted {
            health["path"] = json!(path);
        }
    }
    let codes = found.matcher().and_then(|it| it.http_code().or(it.grpc_code()));
    if let (Some(codes), Some(wanted)) = (codes, check.http_code.as_ref().or(check.grpc_code.as_ref())) {
        if codes != wanted {
            health["matcher"] = json!(codes);
        }
    }
    let clients = provider.clients()?;
    let attributes = clients
        .run(clients.elb.describe_target_group_attributes().target_group_arn(&state.arn).send())
        .map_err(|err| sdk_error("DescribeTargetGroupAttributes", err))?;
    for (key, _, seen) in attribute_drift(&group_attributes(&mapped), attributes.attributes()) {
        match key.as_str() {
            "deregistration_delay.timeout_seconds" => {
                observed["deregistration_delay"] = seconds(seen.parse().unwrap_or_default())
            }
            "slow_start.duration_seconds" => observed["slow_start"] = seconds(seen.parse().unwrap_or_default()),
            "stickiness.enabled" => observed["stickiness"]["enabled"] = json!(seen == "true"),
            "stickiness.lb_cookie.duration_seconds" => {
                observed["stickiness"]["duration"] = seconds(seen.parse().unwrap_or_default())
            }
            "load_balancing.algorithm.type" => observed["algorithm"] = json!(seen),
            "proxy_protocol_v2.enabled" => observed["proxy_protocol_v2"] = json!(seen == "true"),
            _ => {}
        }
    }
    // A target the spec registered that AWS no longer has is gone from the
    // observed targets.
    let registered = registered(provider, &state.arn)?;
    if let Some(targets) = observed["targets"].as_array_mut() {
        let mut idx = 0;
        targets.retain(|_| {
            let keep = state.targets.get(idx).is_none_or(|(id, _)| registered.iter().any(|(it, _)| it == id));
            idx += 1;
            keep
        });
    }
    Ok(Observed::Present { attributes: Some(observed) })
}

/// (id, port) of every target AWS has registered, with its health.
fn registered(provider: &AwsProvider, arn: &str) -> Result<Vec<(String, Vec<String>)>> {
    let clients = provider.clients()?;
    let answer = clients
        .run(clients.elb.describe_target_health().target_group_arn(arn).send())
        .map_err(|err| sdk_error("DescribeTargetHealth", err))?;
    Ok(answer
        .target_health_descriptions()
        .iter()
        .map(|it| {
            let target = it.target();
            let health = it.target_health();
            (
                target.and_then(|it| it.id()).unwrap_or_default().to_string(),
                vec![
                    target.and_then(|it| it.port()).map(|it| it.to_string()).unwrap_or_default(),
                    health.and_then(|it| it.state()).map(|it| it.as_str().to_string()).unwrap_or_default(),
                    health
                        .map(|it| {
                            let reason = it.reason().map(|it| it.as_str().to_string()).unwrap_or_default();
                            let description = it.description().unwrap_or_default();
                            [reason, description.to_string()]
                                .into_iter()
                                .filter(|it| !it.is_empty())
                                .collect::<Vec<_>>()
                                .join(": ")
                        })
                        .unwrap_or_default(),
                ],
            )
        })
        .collect())
}

/// `DescribeTargetHealth`: AWS's states and reasons.
pub(crate) fn status(provider: &AwsProvider, current: &ResourceState) -> Result<LiveStatus> {
    let state: Private = private(current);
    let targets = registered(provider, &state.arn)?;
    let rows: Vec<Vec<String>> = targets.iter().map(|(id, rest)| [vec![id.clone()], rest.clone()].concat()).collect();
    let healthy = targets.iter().filter(|(_, rest)| rest[1] == "healthy").count();
    Ok(LiveStatus {
        summary: format!("{} ({healthy} of {} targets healthy)", state.name, targets.len()),
        columns: ["TARGET", "PORT", "STATE", "REASON"].map(str::to_string).to_vec(),
        json: json!({
            "arn": state.arn,
            "targets": targets.iter().map(|(id, rest)| json!({ "id": id, "port": rest[0], "state": rest[1], "reason": rest[2] })).collect::<Vec<_>>(),
        }),
        rows,
        ..LiveStatus::default()
    })
}

/// `DeleteTargetGroup`, retried while a load balancer being deleted still
/// uses it.
pub(crate) fn delete(provider: &AwsProvider, prior: &ResourceState, progress: &dyn Progress) -> Result<()> {
    let state: Private = private(prior);
    if state.arn.is_empty() {
        return Ok(());
    }
    let clients = provider.clients()?;
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        match clients.run(clients.elb.delete_target_group().target_group_arn(&state.arn).send()) {
            Ok(_) => return Ok(()),
            Err(err) if code(&err) == Some("TargetGroupNotFound") => return Ok(()),
            Err(err) if code(&err) == Some("ResourceInUse") && Instant::now() < deadline => {
                progress.report("waiting for load balancers to let go of it");
                std::thread::sleep(provider.poll());
            }
            Err(err) => return Err(sdk_error("DeleteTargetGroup", err)),
        }
    }
}
