//! Auto-scaling groups: a launch template per group (the local command as
//! `UserData`; a new version when it changes), the group with its target
//! groups, sizes, health checks and termination policy, its target
//! tracking policy, and an instance refresh when the template changes and
//! the spec asks for one.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use aws_sdk_autoscaling::types::{
    LaunchTemplateSpecification, MetricType, PredefinedMetricSpecification, RefreshPreferences, Tag,
    TargetTrackingConfiguration,
};
use base64::Engine;
use lbctl_plan::{
    Applied, DependencyOutputs, Kind, LiveStatus, Observed, PartlyApplied, Progress, Readiness, Resource, ResourceState,
};
use lbctl_spec::{settings::AutoscalingGroup, HealthCheckType, ScalingMetric, TerminationPolicy};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::api::sdk_error;
use crate::{dependency_arn, ec2, private, settings, AwsProvider};

/// Keys of a group's resolved attributes derived from other resources.
const DERIVED: &[&str] = &["instance_port", "target_group_ports"];

/// What the state keeps of a group.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Private {
    /// The group's name.
    pub name: String,
    /// Its ARN.
    pub arn: String,
    /// Its launch template's id.
    pub launch_template_id: String,
    /// The template version the group launches.
    pub version: i64,
    /// What that version was made from.
    pub template: String,
    /// Its target groups' ARNs by name.
    #[serde(default)]
    pub target_groups: BTreeMap<String, String>,
    /// Its scaling policy's name, when it has one.
    #[serde(default)]
    pub policy: Option<String>,
}

/// A launch template's data, as EC2 takes it.
fn template_params(security_groups: &[String], group: &AutoscalingGroup, port: u16) -> Result<Vec<(String, String)>> {
    let template = &group.launch_template;
    let aws = template.aws.clone().unwrap_or_default();
    let image = aws.image_id.ok_or_else(|| anyhow!("launch_template: no `aws.image_id`"))?;
    let user_data = lbctl_export::model::user_data(template, port);
    let mut params = vec![
        ("LaunchTemplateData.ImageId".to_string(), image),
        ("LaunchTemplateData.InstanceType".to_string(), aws.instance_type.unwrap_or_else(|| "t3.micro".to_string())),
        ("LaunchTemplateData.UserData".to_string(), base64::engine::general_purpose::STANDARD.encode(user_data)),
    ];
    for (idx, group) in security_groups.iter().enumerate() {
        params.push((format!("LaunchTemplateData.SecurityGroupId.{}", idx + 1), group.clone()));
    }
    Ok(params)
}

fn termination(policy: TerminationPolicy) -> &'static str {
    match policy {
        TerminationPolicy::OldestInstance => "OldestInstance",
        TerminationPolicy::NewestInstance => "NewestInstance",
        TerminationPolicy::Default => "Default",
    }
}

fn health_check_type(kind: HealthCheckType) -> &'static str {
    match kind {
        HealthCheckType::Ec2 => "EC2",
        HealthCheckType::Elb => "ELB",
    }
}

/// What a plan says of a launch template change, as on AWS.
pub(crate) fn update_notes(desired: &Resource, changed: &[&str]) -> Vec<String> {
    let template_changed = changed.iter().any(|it| it.starts_with("launch_template"));
    if desired.address.kind != Kind::AutoscalingGroup || !template_changed {
        return Vec::new();
    }
    match settings::<AutoscalingGroup>(&desired.resolved, DERIVED).ok().and_then(|it| it.instance_refresh) {
        None => vec!["a new launch template version: existing instances keep the old one and new ones get it; add `instance_refresh` to roll them".to_string()],
        Some(refresh) => vec![format!(
            "a new launch template version and an instance refresh (StartInstanceRefresh) keeping {}% healthy",
            refresh.min_healthy_percentage
        )],
    }
}

/// Creates or converges a group.
pub(crate) fn apply(
    provider: &AwsProvider,
    prior: Option<&ResourceState>,
    resource: &Resource,
    dependencies: &DependencyOutputs,
    progress: &dyn Progress,
) -> Result<Applied> {
    let clients = provider.clients()?;
    let name = &resource.address.name;
    let group: AutoscalingGroup = settings(&resource.resolved, DERIVED)?;
    let port = resource.resolved["instance_port"].as_u64().and_then(|it| u16::try_from(it).ok()).unwrap_or(8080);
    let mut state: Private = prior.map(private).unwrap_or_default();
    state.name = provider.aws_name(name, 255);

    // The launch template: created once, a new version when its data changes.
    let params = template_params(&provider.options.aws.security_groups, &group, port).context("launch_template")?;
    let made_from = format!("{params:?}");
    let mut template_changed = false;
    if state.launch_template_id.is_empty() {
        let found =
            provider.ec2("DescribeLaunchTemplates", vec![("LaunchTemplateName.1".to_string(), state.name.clone())]);
        match found {
            Ok(answer) if ec2::first(&answer, "launchTemplateId")?.is_some() => {
                state.launch_template_id = ec2::first(&answer, "launchTemplateId")?.unwrap_or_default();
                state.version = ec2::first(&answer, "latestVersionNumber")?.and_then(|it| it.parse().ok()).unwrap_or(1);
                template_changed = true;
            }
            Ok(_) => {}
            Err(err) if ec2::code(&err).is_some_and(|it| it.contains("NotFound")) => {}
            Err(err) => return Err(err),
        }
    }
    if state.launch_template_id.is_empty() {
        progress.report("creating the launch template");
        let tags = provider.tags(&resource.address.to_string());
        let tags: Vec<(&str, &str)> = tags.iter().map(|(key, value)| (*key, value.as_str())).collect();
        let mut request = vec![("LaunchTemplateName".to_string(), state.name.clone())];
        request.extend(params.clone());
        request.extend(ec2::tag_specification("launch-template", &tags));
        let answer = provider.ec2("CreateLaunchTemplate", request)?;
        state.launch_template_id =
            ec2::first(&answer, "launchTemplateId")?.context("CreateLaunchTemplate answered no id")?;
        state.version = 1;
        state.template = made_from.clone();
    } else if state.template != made_from {
        progress.report("creating a launch template version");
        let mut request = vec![("LaunchTemplateId".to_string(), state.launch_template_id.clone())];
        request.extend(params.clone());
        let answer = provider.ec2("CreateLaunchTemplateVersion", request)?;
        state.version = ec2::first(&answer, "versionNumber")?
            .and_then(|it| it.parse().ok())
            .context("CreateLaunchTemplateVersion answered no version")?;
        state.template = made_from.clone();
        template_changed = true;
    }
    let converged = (|| -> Result<()> {
        let template = LaunchTemplateSpecification::builder()
            .launch_template_id(&state.launch_template_id)
            .version(state.version.to_string())
            .build();

        let mut target_groups = BTreeMap::new();
        for tg in &group.target_groups {
            target_groups.insert(tg.clone(), dependency_arn(dependencies, Kind::TargetGroup, tg)?);
        }
        let subnets = provider.network()?.subnets.join(",");
        let existing = describe(provider, &state.name)?;
        let scaled = group.scaling.is_some();
        match &existing {
            None => {
                progress.report("creating the auto-scaling group");
                let mut request = clients
                    .asg
                    .create_auto_scaling_group()
                    .auto_scaling_group_name(&state.name)
                    .launch_template(template)
                    .min_size(group.min_size as i32)
                    .max_size(group.max_size as i32)
                    .desired_capacity(group.desired_capacity as i32)
                    .vpc_zone_identifier(&subnets)
                    .set_target_group_arns(Some(target_groups.values().cloned().collect()))
                    .health_check_type(health_check_type(group.health_check_type))
                    .health_check_grace_period(group.health_check_grace_period.get().as_secs() as i32)
                    .termination_policies(termination(group.termination_policy));
                for (key, value) in provider.tags(&resource.address.to_string()) {
                    request = request.tags(
                        Tag::builder()
                            .key(key)
                            .value(value)
                            .propagate_at_launch(true)
                            .resource_id(&state.name)
                            .resource_type("auto-scaling-group")
                            .build(),
                    );
                }
                clients.run(request.send()).map_err(|err| sdk_error("CreateAutoScalingGroup", err))?;
            }
            Some(found) => {
                progress.report("updating the auto-scaling group");
                let request = clients
                    .asg
                    .update_auto_scaling_group()
                    .auto_scaling_group_name(&state.name)
                    .launch_template(template)
                    .min_size(group.min_size as i32)
                    .max_size(group.max_size as i32)
                    .set_desired_capacity((!scaled).then_some(group.desired_capacity as i32))
                    .vpc_zone_identifier(&subnets)
                    .health_check_type(health_check_type(group.health_check_type))
                    .health_check_grace_period(group.health_check_grace_period.get().as_secs() as i32)
                    .termination_policies(termination(group.termination_policy));
                clients.run(request.send()).map_err(|err| sdk_error("UpdateAutoScalingGroup", err))?;
                let attached: Vec<String> = found.target_group_arns().to_vec();
                let attach: Vec<String> = target_groups.values().filter(|it| !attached.contains(it)).cloned().collect();
                let detach: Vec<String> =
                    attached.iter().filter(|it| !target_groups.values().any(|w| w == *it)).cloned().collect();
                if !attach.is_empty() {
                    clients
                        .run(
                            clients
                                .asg
                                .attach_load_balancer_target_groups()
                                .auto_scaling_group_name(&state.name)
                                .set_target_group_arns(Some(attach))
                                .send(),
                        )
                        .map_err(|err| sdk_error("AttachLoadBalancerTargetGroups", err))?;
                }
                if !detach.is_empty() {
                    clients
                        .run(
                            clients
                                .asg
                                .detach_load_balancer_target_groups()
                                .auto_scaling_group_name(&state.name)
                                .set_target_group_arns(Some(detach))
                                .send(),
                        )
                        .map_err(|err| sdk_error("DetachLoadBalancerTargetGroups", err))?;
                }
                if template_changed {
                    if let Some(refresh) = &group.instance_refresh {
                        progress.report("starting an instance refresh");
                        let preferences = RefreshPreferences::builder()
                            .min_healthy_percentage(refresh.min_healthy_percentage as i32)
                            .instance_warmup(refresh.warmup.get().as_secs() as i32)
                            .build();
                        clients
                            .run(
                                clients
                                    .asg
                                    .start_instance_refresh()
                                    .auto_scaling_group_name(&state.name)
                                    .preferences(preferences)
                                    .send(),
                            )
                            .map_err(|err| sdk_error("StartInstanceRefresh", err))?;
                    }
                }
            }
        }
        state.target_groups = target_groups;
        state.arn = describe(provider, &state.name)?
            .and_then(|it| it.auto_scaling_group_arn().map(str::to_string))
            .unwrap_or_default();

        // The target tracking policy.
        match &group.scaling {
            Some(scaling) => {
                let tracking = &scaling.target_tracking;
                let (metric, value, label) = match tracking.metric {
                    ScalingMetric::CpuUtilization => {
                        (MetricType::AsgAverageCpuUtilization, tracking.target_value, None)
                    }
                    // AWS counts requests per target per minute.
                    ScalingMetric::RequestCountPerTarget => (
                        MetricType::AlbRequestCountPerTarget,
                        tracking.target_value * 60.0,
                        Some(request_count_label(provider, &state)?),
                    ),
                };
                let metric = PredefinedMetricSpecification::builder()
                    .predefined_metric_type(metric)
                    .set_resource_label(label)
                    .build();
                let configuration = TargetTrackingConfiguration::builder()
                    .predefined_metric_specification(metric)
                    .target_value(value)
                    .build();
                let policy = format!("{}-target-tracking", state.name);
                clients
                    .run(
                        clients
                            .asg
                            .put_scaling_policy()
                            .auto_scaling_group_name(&state.name)
                            .policy_name(&policy)
                            .policy_type("TargetTrackingScaling")
                            .estimated_instance_warmup(tracking.cooldown.get().as_secs() as i32)
                            .target_tracking_configuration(configuration)
                            .send(),
                    )
                    .map_err(|err| sdk_error("PutScalingPolicy", err))
                    .context("scaling")?;
                state.policy = Some(policy);
            }
            None => {
                if let Some(policy) = state.policy.take() {
                    clients
                        .run(
                            clients
                                .asg
                                .delete_policy()
                                .auto_scaling_group_name(&state.name)
                                .policy_name(&policy)
                                .send(),
                        )
                        .map_err(|err| sdk_error("DeletePolicy", err))?;
                }
            }
        }
        Ok(())
    })();
    let applied = Applied {
        private: serde_json::to_value(&state)?,
        computed: BTreeMap::from([("arn".to_string(), json!(state.arn))]),
    };
    match converged {
        Ok(()) => Ok(applied),
        Err(error) => Err(PartlyApplied { applied, error }.into()),
    }
}

/// `app/<lb>/<id>/targetgroup/<tg>/<id>`: the load balancer and target
/// group AWS counts requests at, the first of the group's target groups
/// an application load balancer routes to.
fn request_count_label(provider: &AwsProvider, state: &Private) -> Result<String> {
    let clients = provider.clients()?;
    let arns: Vec<String> = state.target_groups.values().cloned().collect();
    let answer = clients
        .run(clients.elb.describe_target_groups().set_target_group_arns(Some(arns)).send())
        .map_err(|err| sdk_error("DescribeTargetGroups", err))?;
    for group in answer.target_groups() {
        let Some(lb) = group.load_balancer_arns().iter().find(|it| it.contains(":loadbalancer/app/")) else { continue };
        let lb_part = lb.split(":loadbalancer/").nth(1).unwrap_or_default();
        let tg_part = group.target_group_arn().and_then(|it| it.rsplit(':').next()).unwrap_or_default();
        return Ok(format!("{lb_part}/{tg_part}"));
    }
    bail!("request_count_per_target needs a target group of the group that an application load balancer routes to")
}

fn describe(provider: &AwsProvider, name: &str) -> Result<Option<aws_sdk_autoscaling::types::AutoScalingGroup>> {
    let clients = provider.clients()?;
    let answer = clients
        .run(clients.asg.describe_auto_scaling_groups().auto_scaling_group_names(name).send())
        .map_err(|err| sdk_error("DescribeAutoScalingGroups", err))?;
    Ok(answer.auto_scaling_groups().first().filter(|it| it.status() != Some("Delete in progress")).cloned())
}

/// What AWS has, as the spec's settings.
pub(crate) fn read(provider: &AwsProvider, prior: &ResourceState) -> Result<Observed> {
    let state: Private = private(prior);
    let Some(found) = describe(provider, &state.name)? else {
        return Ok(Observed::Missing {
            reason: format!("auto-scaling group {} was deleted outside lbctl", state.name),
        });
    };
    match provider
        .ec2("DescribeLaunchTemplates", vec![("LaunchTemplateId.1".to_string(), state.launch_template_id.clone())])
    {
        Ok(_) => {}
        Err(err) if ec2::code(&err).is_some_and(|it| it.contains("NotFound")) => {
            return Ok(Observed::Drifted {
                reason: format!("launch template {} was deleted outside lbctl", state.launch_template_id),
            })
        }
        Err(err) => return Err(err),
    }
    if prior.resolved.is_null() {
        return Ok(Observed::Present { attributes: None });
    }
    let mut observed = prior.resolved.clone();
    let mut set = |key: &str, value: Value| {
        if observed[key] != value {
            observed[key] = value;
        }
    };
    set("min_size", json!(found.min_size()));
    set("max_size", json!(found.max_size()));
    if prior.attributes["scaling"].is_null() {
        set("desired_capacity", json!(found.desired_capacity()));
    }
    let health_type = found.health_check_type().unwrap_or("EC2");
    set("health_check_type", json!(health_type));
    if let Some(grace) = found.health_check_grace_period() {
        let wanted = prior.resolved["health_check_grace_period"].clone();
        let wanted_secs =
            serde_json::from_value::<lbctl_spec::Duration>(wanted).map(|it| it.get().as_secs()).unwrap_or_default();
        if wanted_secs != grace as u64 {
            set("health_check_grace_period", serde_json::to_value(lbctl_spec::Duration::from_secs(grace as u64))?);
        }
    }
    let names: Vec<String> = found
        .target_group_arns()
        .iter()
        .map(|arn| {
            state
                .target_groups
                .iter()
                .find(|(_, it)| *it == arn)
                .map(|(name, _)| name.clone())
                .unwrap_or_else(|| arn.clone())
        })
        .collect();
    let mut wanted: Vec<String> = serde_json::from_value(prior.resolved["target_groups"].clone()).unwrap_or_default();
    let mut seen = names.clone();
    wanted.sort();
    seen.sort();
    if wanted != seen {
        set("target_groups", json!(names));
    }
    Ok(Observed::Present { attributes: Some(observed) })
}

/// Ready when as many instances as the group wants are in service (and, with
/// `wait_for_elb_capacity`, that many healthy in every target group).
pub(crate) fn ready(provider: &AwsProvider, current: &ResourceState) -> Result<Readiness> {
    let state: Private = private(current);
    let Some(found) = describe(provider, &state.name)? else {
        return Ok(Readiness::Failed(format!("auto-scaling group {} is gone", state.name)));
    };
    let desired = found.desired_capacity().unwrap_or_default();
    let in_service =
        found.instances().iter().filter(|it| it.lifecycle_state().map(|it| it.as_str()) == Some("InService")).count();
    if (in_service as i32) < desired {
        return Ok(Readiness::Waiting(format!("{in_service} of {desired} instances in service")));
    }
    let group: AutoscalingGroup = settings(&current.resolved, DERIVED)?;
    if let Some(wanted) = group.wait_for_elb_capacity {
        let clients = provider.clients()?;
        for (name, arn) in &state.target_groups {
            let health = clients
                .run(clients.elb.describe_target_health().target_group_arn(arn).send())
                .map_err(|err| sdk_error("DescribeTargetHealth", err))?;
            let healthy = health
                .target_health_descriptions()
                .iter()
                .filter(|it| it.target_health().and_then(|it| it.state()).map(|it| it.as_str()) == Some("healthy"))
                .count();
            if (healthy as u32) < wanted {
                return Ok(Readiness::Waiting(format!("{healthy} of {wanted} instances healthy in {name}")));
            }
        }
    }
    Ok(Readiness::Ready)
}

/// The group's instances as Auto Scaling reports them.
pub(crate) fn status(provider: &AwsProvider, current: &ResourceState) -> Result<LiveStatus> {
    let state: Private = private(current);
    let Some(found) = describe(provider, &state.name)? else {
        return Ok(LiveStatus { summary: format!("{} (deleted)", state.name), ..LiveStatus::default() });
    };
    let rows: Vec<Vec<String>> = found
        .instances()
        .iter()
        .map(|it| {
            vec![
                it.instance_id().unwrap_or_default().to_string(),
                it.lifecycle_state().map(|it| it.as_str().to_string()).unwrap_or_default(),
                it.health_status().unwrap_or_default().to_string(),
                it.availability_zone().unwrap_or_default().to_string(),
                it.launch_template().and_then(|it| it.version()).unwrap_or_default().to_string(),
            ]
        })
        .collect();
    Ok(LiveStatus {
        summary: format!(
            "{}: {} instances, desired {} (min {}, max {})",
            state.name,
            rows.len(),
            found.desired_capacity().unwrap_or_default(),
            found.min_size().unwrap_or_default(),
            found.max_size().unwrap_or_default()
        ),
        columns: ["INSTANCE", "LIFECYCLE", "HEALTH", "ZONE", "TEMPLATE"].map(str::to_string).to_vec(),
        json: json!({
            "arn": state.arn,
            "desired": found.desired_capacity(),
            "instances": rows.iter().map(|it| json!({ "id": it[0], "lifecycle": it[1], "health": it[2], "zone": it[3] })).collect::<Vec<_>>(),
        }),
        rows,
        ..LiveStatus::default()
    })
}

/// Deletes the group (and its instances and policy), waits until AWS has,
/// then its launch template.
pub(crate) fn delete(provider: &AwsProvider, prior: &ResourceState, progress: &dyn Progress) -> Result<()> {
    let state: Private = private(prior);
    let clients = provider.clients()?;
    if describe(provider, &state.name)?.is_some() {
        clients
            .run(clients.asg.delete_auto_scaling_group().auto_scaling_group_name(&state.name).force_delete(true).send())
            .map_err(|err| sdk_error("DeleteAutoScalingGroup", err))?;
    }
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        let answer = clients
            .run(clients.asg.describe_auto_scaling_groups().auto_scaling_group_names(&state.name).send())
            .map_err(|err| sdk_error("DescribeAutoScalingGroups", err))?;
        if answer.auto_scaling_groups().is_empty() {
            break;
        }
        if Instant::now() > deadline {
            bail!("auto-scaling group {} is still there 15 minutes after DeleteAutoScalingGroup", state.name);
        }
        progress.report("waiting for AWS to terminate its instances");
        std::thread::sleep(provider.poll());
    }
    if !state.launch_template_id.is_empty() {
        match provider
            .ec2("DeleteLaunchTemplate", vec![("LaunchTemplateId".to_string(), state.launch_template_id.clone())])
        {
            Ok(_) => {}
            Err(err) if ec2::code(&err).is_some_and(|it| it.contains("NotFound")) => {}
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_launch_template_is_the_command_as_user_data_on_the_given_image() {
        let written: lbctl_spec::AutoscalingGroup = serde_yaml::from_str(
            "{ min_size: 1, max_size: 2, launch_template: { command: [lbctl, worker, --listen, '{ip}:{port}'], env: { GREETING: hi }, aws: { image_id: ami-1 } } }",
        )
        .unwrap();
        let params = template_params(&["sg-1".to_string()], &written.resolve(), 8080).unwrap();
        let get = |key: &str| params.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone()).unwrap();
        assert_eq!(get("LaunchTemplateData.ImageId"), "ami-1");
        assert_eq!(get("LaunchTemplateData.InstanceType"), "t3.micro");
        assert_eq!(get("LaunchTemplateData.SecurityGroupId.1"), "sg-1");
        let script = String::from_utf8(
            base64::engine::general_purpose::STANDARD.decode(get("LaunchTemplateData.UserData")).unwrap(),
        )
        .unwrap();
        assert!(script.starts_with("#!/bin/sh\n"), "{script}");
        assert!(script.contains("export LBCTL_PORT=8080\nexport GREETING='hi'\n"), "{script}");
        assert!(script.contains("nohup 'lbctl' 'worker' '--listen' ''\"$LBCTL_IP\"':'\"$LBCTL_PORT\"''"), "{script}");

        let without: lbctl_spec::AutoscalingGroup =
            serde_yaml::from_str("{ min_size: 1, max_size: 2, launch_template: { command: [x] } }").unwrap();
        assert!(template_params(&[], &without.resolve(), 80).unwrap_err().to_string().contains("aws.image_id"));
        assert_eq!(
            (termination(TerminationPolicy::OldestInstance), health_check_type(HealthCheckType::Elb)),
            ("OldestInstance", "ELB")
        );
    }
}
