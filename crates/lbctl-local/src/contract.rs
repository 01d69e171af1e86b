//! `LocalProvider` as the planner sees it: the `Provider` contract, each
//! operation handed to the part of the crate that does it (`provider` for
//! processes and files, `capabilities` for what the machine allows,
//! `status` for the live view).

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Result;
use lbctl_plan::{
    Applied, DependencyOutputs, Finding, Kind, LiveStatus, LogFile, LogKind, Observed, Policy, Progress, Provider,
    Readiness, Replacement, Resource, ResourceState, State,
};
use lbctl_spec::settings::AutoscalingGroup;

use crate::provider::{settings, LocalProvider, ASG_DERIVED};

impl Provider for LocalProvider {
    fn name(&self) -> &'static str {
        "local"
    }

    /// A replaced load balancer or target group frees its port or name
    /// first; a deleted load balancer frees its ports before any is
    /// created; readiness is polled every 100 ms (local processes answer
    /// at once).
    fn policy(&self) -> Policy {
        Policy {
            replacement: Replacement::DeleteThenCreate,
            delete_before_create: vec![Kind::LoadBalancer],
            poll_interval: Duration::from_millis(100),
            ready_timeout: Duration::from_secs(120),
        }
    }

    fn computed(&self, resource: &Resource) -> Vec<&'static str> {
        if resource.address.kind != Kind::LoadBalancer {
            return Vec::new();
        }
        let network = resource.resolved["type"] == "network";
        let given = !resource.resolved["static_ip"].is_null();
        if network && !given {
            vec!["dns_name", "static_ip"]
        } else {
            vec!["dns_name"]
        }
    }

    fn replace_triggers(&self, kind: Kind) -> &'static [&'static str] {
        match kind {
            Kind::LoadBalancer => &["type", "static_ip"],
            Kind::TargetGroup => &["protocol", "port", "target_type"],
            Kind::AutoscalingGroup | Kind::Function => &[],
        }
    }

    fn update_notes(&self, desired: &Resource, changed: &[&str]) -> Vec<String> {
        let template_changed = changed.iter().any(|it| it.starts_with("launch_template"));
        if desired.address.kind != Kind::AutoscalingGroup || !template_changed {
            return Vec::new();
        }
        // As on AWS, and as Terraform does: a template change rolls the
        // instances only when the group has `instance_refresh`.
        match settings::<AutoscalingGroup>(&desired.resolved, ASG_DERIVED).ok().and_then(|it| it.instance_refresh) {
            None => vec!["existing instances keep the old launch template and new ones get the new one; add `instance_refresh` to roll them".to_string()],
            Some(refresh) => vec![format!(
                "an instance refresh replaces the instances in batches, keeping {}% of the desired capacity in service",
                refresh.min_healthy_percentage
            )],
        }
    }

    fn check_spec(&self, desired: &[Resource]) -> Vec<Finding> {
        crate::capabilities::check_spec(self, desired)
    }

    fn check(&self, desired: &[Resource], _state: &State) -> Result<Vec<Finding>> {
        crate::capabilities::conflicts(self, desired)
    }

    fn read(&self, prior: &ResourceState) -> Result<Observed> {
        match prior.address.kind {
            Kind::LoadBalancer => self.read_process_resource(prior, "proxy"),
            Kind::AutoscalingGroup => self.read_autoscaling_group(prior),
            Kind::TargetGroup | Kind::Function => self.read_file_resource(prior),
        }
    }

    fn create(&self, resource: &Resource, _: &DependencyOutputs, progress: &dyn Progress) -> Result<Applied> {
        match resource.address.kind {
            Kind::LoadBalancer => self.create_load_balancer(resource, progress),
            Kind::AutoscalingGroup => self.create_autoscaling_group(resource, progress),
            Kind::TargetGroup => self.write_target_group(resource),
            Kind::Function => self.write_function(resource),
        }
    }

    fn update(
        &self,
        prior: &ResourceState,
        resource: &Resource,
        _: &DependencyOutputs,
        progress: &dyn Progress,
    ) -> Result<Applied> {
        match resource.address.kind {
            Kind::LoadBalancer => self.update_load_balancer(prior, resource, progress),
            Kind::AutoscalingGroup => self.update_autoscaling_group(prior, resource, progress),
            Kind::TargetGroup => self.write_target_group(resource),
            Kind::Function => self.write_function(resource),
        }
    }

    fn delete(&self, prior: &ResourceState, progress: &dyn Progress) -> Result<()> {
        match prior.address.kind {
            Kind::LoadBalancer => self.delete_load_balancer(prior, progress),
            Kind::AutoscalingGroup => self.delete_autoscaling_group(prior, progress),
            Kind::TargetGroup => self.delete_target_group(prior),
            Kind::Function => self.delete_function(prior),
        }
    }

    fn ready(&self, current: &ResourceState) -> Result<Readiness> {
        match current.address.kind {
            Kind::LoadBalancer => self.load_balancer_ready(current),
            Kind::AutoscalingGroup => self.autoscaling_group_ready(current),
            Kind::TargetGroup => Ok(self.target_group_ready(&current.address.name, None)),
            Kind::Function => Ok(Readiness::Ready),
        }
    }

    fn outputs(&self, resources: &[ResourceState]) -> BTreeMap<String, String> {
        let mut outputs = BTreeMap::new();
        for resource in resources.iter().filter(|it| it.address.kind == Kind::LoadBalancer) {
            self.load_balancer_outputs(resource, &mut outputs);
        }
        outputs
    }

    fn status(&self, current: &ResourceState) -> Result<LiveStatus> {
        crate::status::live_status(self, current)
    }

    fn log_files(&self, resources: &[ResourceState]) -> Vec<LogFile> {
        let mut found = Vec::new();
        for resource in resources {
            let name = &resource.address.name;
            match resource.address.kind {
                Kind::LoadBalancer => {
                    let path = self.access_log_path(name);
                    if path.exists() {
                        found.push(LogFile { source: name.clone(), kind: LogKind::Access, path });
                    }
                }
                Kind::AutoscalingGroup => {
                    let events = self.logs_dir().join(name).join("events.log");
                    found.push(LogFile { source: name.clone(), kind: LogKind::Events, path: events });
                    let instances = self.layout().asg_dir(name).join("instances");
                    for entry in std::fs::read_dir(instances).into_iter().flatten().flatten() {
                        let path = entry.path();
                        if let Some(id) = path
                            .file_stem()
                            .and_then(|it| it.to_str())
                            .filter(|_| path.extension().is_some_and(|it| it == "log"))
                        {
                            found.push(LogFile { source: id.to_string(), kind: LogKind::Output, path: path.clone() });
                        }
                    }
                }
                Kind::TargetGroup | Kind::Function => {}
            }
        }
        found
    }

    fn stack_destroyed(&self) -> Result<Vec<String>> {
        // Runtime directories are removed by each resource's deletion; only
        // the empty skeleton may remain.
        remove_empty_dirs(&self.layout().root);
        self.hosts().remove_all();
        // The stack is gone: its network load balancers' addresses are free again.
        Ok(self.release_addresses()?.into_iter().map(|ip| format!("static IP {ip}")).collect())
    }
}

fn remove_empty_dirs(dir: &std::path::Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.path().is_dir() {
                remove_empty_dirs(&entry.path());
            }
        }
    }
    std::fs::remove_dir(dir).ok();
}
