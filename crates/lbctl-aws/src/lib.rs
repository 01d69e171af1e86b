//! lbctl's aws provider: the spec's resources as AWS resources, through
//! the AWS SDK for Rust (Elastic Load Balancing v2, Auto Scaling, ACM) and
//! a few EC2 calls (`ec2`).
//!
//! A load balancer is an ELB load balancer with its listeners and rules (and,
//! for a network one, an Elastic IP per subnet, kept across re-creation
//! until the stack is destroyed, as the local provider keeps its static
//! addresses); a target group is a target group with its attributes and
//! registered targets; an auto-scaling group is a launch template (the
//! local `command` as `UserData`), the group, and its target tracking
//! policy; a function is an existing Lambda function named by its ARN.
//! Every AWS resource is named `<stack>-<name>` (shortened to AWS's limits
//! with a hash) and tagged `lbctl:stack`, so a create that failed half-way
//! is adopted by the next apply, and its ARNs are the provider's private
//! data in the state.
//!
//! **Architecture invariant:** it implements `lbctl_plan::Provider` and
//! knows nothing of processes, runtime files or the data plane; it decides
//! nothing about what to change (the planner does) beyond converging one
//! resource's AWS parts (listeners, rules, targets) to its settings.

mod api;
mod autoscaling;
mod ec2;
mod load_balancer;
mod mapping;
mod target_group;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{anyhow, Result};
use lbctl_plan::{
    Applied, DependencyOutputs, Finding, Kind, LiveStatus, Observed, Policy, Progress, Provider, Readiness,
    Replacement, Resource, ResourceState, Severity, State,
};
use lbctl_spec::AwsStack;
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use crate::api::Clients;

/// What the aws provider is made from.
#[derive(Debug, Clone)]
pub struct AwsOptions {
    /// Stack name.
    pub stack: String,
    /// The spec's `aws:` section.
    pub aws: AwsStack,
    /// The spec's directory (certificate files are relative to it).
    pub working_dir: PathBuf,
}

/// The aws provider.
pub struct AwsProvider {
    options: AwsOptions,
    clients: OnceLock<std::result::Result<Clients, String>>,
    network: OnceLock<std::result::Result<Network, String>>,
}

/// Where the stack's resources go.
#[derive(Debug, Clone)]
pub(crate) struct Network {
    /// The VPC of target groups.
    pub vpc: String,
    /// Subnets of load balancers and groups.
    pub subnets: Vec<String>,
}

impl AwsProvider {
    /// A provider for one stack. Nothing is called until a command needs
    /// AWS (`validate` never does).
    pub fn new(options: AwsOptions) -> AwsProvider {
        AwsProvider { options, clients: OnceLock::new(), network: OnceLock::new() }
    }

    /// The clients, connected (region and credentials checked) on first use.
    pub(crate) fn clients(&self) -> Result<&Clients> {
        self.clients
            .get_or_init(|| Clients::connect(self.options.aws.region.as_deref()).map_err(|err| format!("{err:#}")))
            .as_ref()
            .map_err(|err| anyhow!("{err}"))
    }

    /// The VPC and subnets: the `aws:` section's, or the default VPC's
    /// default subnets in its first two availability zones.
    pub(crate) fn network(&self) -> Result<&Network> {
        self.network
            .get_or_init(|| self.find_network().map_err(|err| format!("{err:#}")))
            .as_ref()
            .map_err(|err| anyhow!("{err}"))
    }

    fn find_network(&self) -> Result<Network> {
        let aws = &self.options.aws;
        let clients = self.clients()?;
        let vpc = match &aws.vpc_id {
            Some(vpc) => vpc.clone(),
            None => ec2::default_vpc(&self.ec2("DescribeVpcs", ec2::filters(&[("isDefault", "true")]))?)?,
        };
        if !aws.subnets.is_empty() {
            return Ok(Network { vpc, subnets: aws.subnets.clone() });
        }
        let mut filters = vec![("vpc-id", vpc.as_str())];
        if aws.vpc_id.is_none() {
            filters.push(("default-for-az", "true"));
        }
        let found = ec2::subnets(&self.ec2("DescribeSubnets", ec2::filters(&filters))?)?;
        let mut subnets: Vec<String> = Vec::new();
        let mut zones: Vec<String> = Vec::new();
        for subnet in found {
            if !zones.contains(&subnet.zone) && subnets.len() < 2 {
                zones.push(subnet.zone);
                subnets.push(subnet.id);
            }
        }
        if subnets.len() < 2 {
            let region = clients.region();
            return Err(anyhow!(
                "VPC {vpc} in {region} has subnets in {} availability zone(s); a load balancer needs two: set `aws.subnets`",
                subnets.len()
            ));
        }
        Ok(Network { vpc, subnets })
    }

    /// An EC2 call.
    pub(crate) fn ec2(&self, action: &str, params: Vec<(String, String)>) -> Result<String> {
        let clients = self.clients()?;
        let credentials = clients.credentials()?;
        clients.ec2.call(&credentials, action, &params)
    }

    /// The AWS name of a resource: `<stack>-<name>`, shortened with a hash
    /// of the whole to `limit` characters.
    pub(crate) fn aws_name(&self, name: &str, limit: usize) -> String {
        aws_name(&self.options.stack, name, limit)
    }

    /// How long to wait between two looks at something AWS does
    /// asynchronously: 5 s, or 1 s against another endpoint (a test double).
    pub(crate) fn poll(&self) -> Duration {
        Duration::from_secs(if std::env::var_os("AWS_ENDPOINT_URL").is_some() { 1 } else { 5 })
    }

    /// The tags every AWS resource of the stack carries.
    pub(crate) fn tags(&self, resource: &str) -> Vec<(&'static str, String)> {
        vec![("lbctl:stack", self.options.stack.clone()), ("lbctl:resource", resource.to_string())]
    }
}

/// `<stack>-<name>`, or its first characters and a hash when longer than
/// `limit` (32 for load balancers and target groups).
pub(crate) fn aws_name(stack: &str, name: &str, limit: usize) -> String {
    let full = format!("{stack}-{name}");
    if full.len() <= limit {
        return full;
    }
    // FNV-1a: stable across releases and machines.
    let hash = full
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325u64, |hash, byte| (hash ^ u64::from(byte)).wrapping_mul(0x100_0000_01b3));
    let keep = limit - 9;
    format!("{}-{:08x}", full[..keep].trim_end_matches('-'), hash as u32)
}

/// A resource's settings from its resolved attributes, without the keys
/// derived from other resources.
pub(crate) fn settings<T: DeserializeOwned>(resolved: &Value, derived: &[&str]) -> Result<T> {
    let mut value = resolved.clone();
    if let Some(map) = value.as_object_mut() {
        for key in derived {
            map.remove(*key);
        }
    }
    serde_json::from_value(value).map_err(|err| anyhow!("reading resource attributes: {err}"))
}

/// The provider's private data of a resource.
pub(crate) fn private<T: DeserializeOwned + Default>(state: &ResourceState) -> T {
    serde_json::from_value(state.private.clone()).unwrap_or_default()
}

/// The ARN a dependency reported.
pub(crate) fn dependency_arn(dependencies: &DependencyOutputs, kind: Kind, name: &str) -> Result<String> {
    dependencies
        .get(&lbctl_plan::Address::new(kind, name))
        .and_then(|it| it.get("arn"))
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| anyhow!("{}.{name} has no ARN in the state yet", kind.as_str()))
}

impl Provider for AwsProvider {
    fn name(&self) -> &'static str {
        "aws"
    }

    /// Replacements delete first (names are unique, and a network load
    /// balancer's Elastic IPs move to its successor); AWS is polled every
    /// 5 s.
    fn policy(&self) -> Policy {
        Policy {
            replacement: Replacement::DeleteThenCreate,
            delete_before_create: vec![Kind::LoadBalancer, Kind::TargetGroup],
            poll_interval: self.poll(),
            // New load balancers take minutes to become active, instances
            // minutes more to pass their health checks.
            ready_timeout: Duration::from_secs(20 * 60),
        }
    }

    fn computed(&self, resource: &Resource) -> Vec<&'static str> {
        match resource.address.kind {
            Kind::LoadBalancer if resource.resolved["type"] == "network" => vec!["arn", "dns_name", "static_ip"],
            Kind::LoadBalancer => vec!["arn", "dns_name"],
            Kind::TargetGroup | Kind::AutoscalingGroup => vec!["arn"],
            Kind::Function => Vec::new(),
        }
    }

    fn replace_triggers(&self, kind: Kind) -> &'static [&'static str] {
        match kind {
            Kind::LoadBalancer => &["type"],
            Kind::TargetGroup => &["protocol", "protocol_version", "port", "target_type"],
            Kind::AutoscalingGroup | Kind::Function => &[],
        }
    }

    fn update_notes(&self, desired: &Resource, changed: &[&str]) -> Vec<String> {
        autoscaling::update_notes(desired, changed)
    }

    fn check_spec(&self, desired: &[Resource]) -> Vec<Finding> {
        let mut found = Vec::new();
        for resource in desired {
            let base = resource.address.spec_path();
            match resource.address.kind {
                Kind::Function => {
                    if resource.attributes["aws"]["function_arn"].is_null() {
                        found.push(Finding {
                            path: base,
                            message: "the aws provider registers existing Lambda functions only: set `aws: { function_arn: ... }` (creating one from its command is not supported)".to_string(),
                            severity: Severity::Invalid,
                        });
                    }
                }
                Kind::AutoscalingGroup => {
                    if resource.attributes["launch_template"]["aws"]["image_id"].is_null() {
                        found.push(Finding {
                            path: format!("{base}.launch_template"),
                            message: "the aws provider needs a machine image: set `aws: { image_id: ami-... }` (one that provides the command)".to_string(),
                            severity: Severity::Invalid,
                        });
                    }
                }
                Kind::TargetGroup => target_group::check_spec(&base, resource, &mut found),
                Kind::LoadBalancer => load_balancer::check_spec(&base, resource, &self.options.working_dir, &mut found),
            }
        }
        found
    }

    fn check(&self, _desired: &[Resource], _state: &State) -> Result<Vec<Finding>> {
        // Credentials and a region, checked at once; the network the stack
        // goes to, found.
        self.network()?;
        Ok(Vec::new())
    }

    fn read(&self, prior: &ResourceState) -> Result<Observed> {
        match prior.address.kind {
            Kind::LoadBalancer => load_balancer::read(self, prior),
            Kind::TargetGroup => target_group::read(self, prior),
            Kind::AutoscalingGroup => autoscaling::read(self, prior),
            Kind::Function => Ok(Observed::Present { attributes: None }),
        }
    }

    fn create(
        &self,
        resource: &Resource,
        dependencies: &DependencyOutputs,
        progress: &dyn Progress,
    ) -> Result<Applied> {
        match resource.address.kind {
            Kind::LoadBalancer => load_balancer::apply(self, None, resource, dependencies, progress),
            Kind::TargetGroup => target_group::apply(self, None, resource, dependencies, progress),
            Kind::AutoscalingGroup => autoscaling::apply(self, None, resource, dependencies, progress),
            Kind::Function => function(resource),
        }
    }

    fn update(
        &self,
        prior: &ResourceState,
        resource: &Resource,
        dependencies: &DependencyOutputs,
        progress: &dyn Progress,
    ) -> Result<Applied> {
        match resource.address.kind {
            Kind::LoadBalancer => load_balancer::apply(self, Some(prior), resource, dependencies, progress),
            Kind::TargetGroup => target_group::apply(self, Some(prior), resource, dependencies, progress),
            Kind::AutoscalingGroup => autoscaling::apply(self, Some(prior), resource, dependencies, progress),
            Kind::Function => function(resource),
        }
    }

    fn delete(&self, prior: &ResourceState, progress: &dyn Progress) -> Result<()> {
        match prior.address.kind {
            Kind::LoadBalancer => load_balancer::delete(self, prior, progress),
            Kind::TargetGroup => target_group::delete(self, prior, progress),
            Kind::AutoscalingGroup => autoscaling::delete(self, prior, progress),
            Kind::Function => Ok(()),
        }
    }

    fn ready(&self, current: &ResourceState) -> Result<Readiness> {
        match current.address.kind {
            Kind::LoadBalancer => load_balancer::ready(self, current),
            Kind::AutoscalingGroup => autoscaling::ready(self, current),
            Kind::TargetGroup | Kind::Function => Ok(Readiness::Ready),
        }
    }

    fn outputs(&self, resources: &[ResourceState]) -> BTreeMap<String, String> {
        let mut outputs = BTreeMap::new();
        for resource in resources.iter().filter(|it| it.address.kind == Kind::LoadBalancer) {
            load_balancer::outputs(resource, &mut outputs);
        }
        outputs
    }

    fn status(&self, current: &ResourceState) -> Result<LiveStatus> {
        match current.address.kind {
            Kind::LoadBalancer => load_balancer::status(self, current),
            Kind::TargetGroup => target_group::status(self, current),
            Kind::AutoscalingGroup => autoscaling::status(self, current),
            Kind::Function => Ok(LiveStatus {
                summary: format!(
                    "Lambda function {}",
                    current.attributes["aws"]["function_arn"].as_str().unwrap_or("?")
                ),
                ..LiveStatus::default()
            }),
        }
    }

    fn stack_destroyed(&self) -> Result<Vec<String>> {
        load_balancer::release_addresses(self)
    }
}

/// A function: an existing Lambda function, named by its ARN.
fn function(resource: &Resource) -> Result<Applied> {
    let arn = resource.attributes["aws"]["function_arn"]
        .as_str()
        .ok_or_else(|| anyhow!("{}: no `aws.function_arn`", resource.address.spec_path()))?;
    Ok(Applied { private: json!({ "arn": arn }), computed: BTreeMap::from([("arn".to_string(), json!(arn))]) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aws_names_fit_aws_limits_and_stay_the_same() {
        assert_eq!(aws_name("shop", "public", 32), "shop-public");
        let long = aws_name("a-rather-long-stack-name", "and-a-long-load-balancer", 32);
        assert_eq!(long.len(), 32, "{long}");
        assert_eq!(long, aws_name("a-rather-long-stack-name", "and-a-long-load-balancer", 32));
        assert_ne!(long, aws_name("a-rather-long-stack-name", "and-a-long-load-balancer2", 32));
        assert!(long.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') && !long.ends_with('-'));
    }
}
