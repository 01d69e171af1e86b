//! Resources: what the spec asks for, as addressed, attributed graph nodes.

use std::collections::BTreeMap;
use std::fmt;

use lbctl_spec::{Spec, TargetType};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// The kinds of resource, in the order their addresses sort.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A Lambda-style function.
    Function,
    /// A target group.
    TargetGroup,
    /// A load balancer.
    LoadBalancer,
    /// An auto-scaling group.
    AutoscalingGroup,
}

impl Kind {
    /// The address prefix (`load_balancer`).
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Function => "function",
            Kind::TargetGroup => "target_group",
            Kind::LoadBalancer => "load_balancer",
            Kind::AutoscalingGroup => "autoscaling_group",
        }
    }

    /// The spec's top-level key for this kind (`load_balancers`).
    pub fn spec_key(self) -> &'static str {
        match self {
            Kind::Function => "functions",
            Kind::TargetGroup => "target_groups",
            Kind::LoadBalancer => "load_balancers",
            Kind::AutoscalingGroup => "autoscaling_groups",
        }
    }
}

/// `load_balancer.public`: a kind and a name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Address {
    /// The kind.
    pub kind: Kind,
    /// The name, unique per kind.
    pub name: String,
}

impl Address {
    /// An address.
    pub fn new(kind: Kind, name: impl Into<String>) -> Address {
        Address { kind, name: name.into() }
    }

    /// The resource's path in the spec (`load_balancers.public`).
    pub fn spec_path(&self) -> String {
        format!("{}.{}", self.kind.spec_key(), self.name)
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.kind.as_str(), self.name)
    }
}

/// A resource as the spec wants it.
#[derive(Debug, Clone, PartialEq)]
pub struct Resource {
    /// Its address.
    pub address: Address,
    /// What the spec writes for it, as a JSON object: omitted fields are
    /// absent. Plans show these.
    pub attributes: Value,
    /// Its effective settings: what is written, AWS's defaults in context,
    /// and values derived from other resources (an ASG's ports). Providers
    /// work from these, and changes are found on them.
    pub resolved: Value,
    /// Resources that must exist before it.
    pub dependencies: Vec<Address>,
}

/// The resources a spec describes, sorted by address.
pub fn desired_resources(spec: &Spec) -> Vec<Resource> {
    let mut resources = Vec::new();
    for (name, function) in &spec.functions {
        resources.push(Resource {
            address: Address::new(Kind::Function, name),
            attributes: attributes(function),
            resolved: attributes(&function.resolve()),
            dependencies: Vec::new(),
        });
    }
    for (name, group) in &spec.target_groups {
        let settings = group.resolve();
        let mut dependencies = Vec::new();
        for target in &group.targets {
            if let (TargetType::Lambda, Some(function)) = (settings.target_type, &target.function) {
                dependencies.push(Address::new(Kind::Function, function));
            }
            if let (TargetType::Alb, Some(lb)) = (settings.target_type, &target.load_balancer) {
                dependencies.push(Address::new(Kind::LoadBalancer, lb));
            }
        }
        resources.push(Resource {
            address: Address::new(Kind::TargetGroup, name),
            attributes: attributes(group),
            resolved: attributes(&settings),
            dependencies,
        });
    }
    for (name, lb) in &spec.load_balancers {
        let dependencies = spec
            .load_balancer_target_groups(lb)
            .into_iter()
            .map(|group| Address::new(Kind::TargetGroup, group))
            .collect();
        let mut resolved = attributes(lb);
        resolved["idle_timeout"] = json!(lb.idle_timeout());
        resources.push(Resource {
            address: Address::new(Kind::LoadBalancer, name),
            attributes: attributes(lb),
            resolved,
            dependencies,
        });
    }
    for (name, group) in &spec.autoscaling_groups {
        let mut resolved = attributes(&group.resolve());
        resolved["instance_port"] = json!(spec.instance_port(group));
        let ports: BTreeMap<&String, u16> = group
            .target_groups
            .iter()
            .map(|tg| {
                let port = spec.target_groups.get(tg).and_then(|it| it.port).unwrap_or(spec.instance_port(group));
                (tg, port)
            })
            .collect();
        resolved["target_group_ports"] = json!(ports);
        let mut dependencies: Vec<Address> =
            group.target_groups.iter().map(|tg| Address::new(Kind::TargetGroup, tg)).collect();
        // Requests per target are counted at a load balancer: a policy on
        // them comes after the load balancers that route to the group.
        let counts_requests = group
            .scaling
            .as_ref()
            .is_some_and(|it| it.target_tracking.metric == lbctl_spec::ScalingMetric::RequestCountPerTarget);
        if counts_requests {
            for (lb_name, lb) in &spec.load_balancers {
                let routed = spec.load_balancer_target_groups(lb);
                if group.target_groups.iter().any(|tg| routed.contains(tg)) {
                    dependencies.push(Address::new(Kind::LoadBalancer, lb_name));
                }
            }
        }
        // Values derived from other resources are shown as written: a
        // change of theirs is a change of the group's.
        let mut written = attributes(group);
        written["instance_port"] = resolved["instance_port"].clone();
        written["target_group_ports"] = resolved["target_group_ports"].clone();
        resources.push(Resource {
            address: Address::new(Kind::AutoscalingGroup, name),
            attributes: written,
            resolved,
            dependencies,
        });
    }
    resources.sort_by(|a, b| a.address.cmp(&b.address));
    resources
}

/// A spec value as attributes.
fn attributes<T: Serialize>(value: &T) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}
