//! The spec as AWS resources: one mapping, rendered by `cloudformation`
//! and `terraform` alike.
//!
//! Every resource of the spec becomes the AWS resources that do the same
//! (a load balancer, its listeners and rules, Elastic IPs for a network
//! load balancer's static address; a target group with its attributes; an
//! auto-scaling group, its launch template and scaling policy). Values AWS
//! must have that a local spec cannot give (the VPC, subnets, machine
//! images, certificates, the Lambda functions' code, addresses in the VPC)
//! become parameters, unless the spec's `aws:` sections give them. AWS's
//! limits are applied (a 500 ms health check interval is 5 s on AWS), and
//! everything changed or left out is named in `notes`.

use std::collections::BTreeMap;

use lbctl_spec::settings;
use lbctl_spec::*;

/// A value that is a literal, a parameter, or another resource's attribute.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A string.
    Text(String),
    /// A number.
    Number(i64),
    /// A boolean.
    Bool(bool),
    /// A list.
    List(Vec<Value>),
    /// A parameter (`Ref` / `var.`).
    Parameter(String),
    /// An attribute of a resource of this export.
    Attribute(Reference),
    /// One element of a list value (`Fn::Select` / `list[i]`).
    Select(usize, Box<Value>),
    /// Values joined with a separator (`Fn::Join` / a template).
    Join(&'static str, Vec<Value>),
}

/// An attribute of one of the exported resources.
#[derive(Debug, Clone, PartialEq)]
pub struct Reference {
    /// The resource's id (`LoadBalancerPublic`).
    pub resource: String,
    /// Which attribute.
    pub attribute: Attribute,
}

/// The attributes exports refer to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attribute {
    /// The resource's ARN (or id: a launch template's).
    Arn,
    /// A load balancer's DNS name.
    DnsName,
    /// An Elastic IP's allocation id.
    AllocationId,
    /// An Elastic IP's address.
    PublicIp,
    /// A launch template's latest version.
    LatestVersion,
    /// A load balancer's or target group's name as CloudWatch labels it
    /// (`app/name/id`, `targetgroup/name/id`).
    FullName,
    /// An auto-scaling group's name.
    Name,
}

/// A parameter: what the spec cannot say about AWS.
#[derive(Debug, Clone, PartialEq)]
pub struct Parameter {
    /// Its name (`VpcId`; `vpc_id` in Terraform).
    pub name: String,
    /// What it is, for the user.
    pub description: String,
    /// Its type.
    pub kind: ParameterKind,
    /// A default, when there is a sensible one.
    pub default: Option<String>,
}

/// What a parameter holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParameterKind {
    /// A VPC id.
    VpcId,
    /// Subnet ids (at least two, in two zones).
    SubnetIds,
    /// Security group ids.
    SecurityGroupIds,
    /// A machine image id.
    ImageId,
    /// Any text (an instance type, an ARN, an address).
    Text,
}

/// An exported load balancer.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadBalancer {
    /// Resource id.
    pub id: String,
    /// The spec's name.
    pub name: String,
    /// Its name on AWS, when `<stack>-<name>` fits AWS's 32 characters.
    pub aws_name: Option<String>,
    /// `application` or `network`.
    pub kind: LoadBalancerType,
    /// Subnets (application load balancers; network ones use `subnet_mappings`).
    pub subnets: Value,
    /// Network load balancers' subnets, each with an Elastic IP.
    pub subnet_mappings: Vec<(Value, Value)>,
    /// Security groups (application load balancers), when given.
    pub security_groups: Option<Value>,
    /// Idle timeout, seconds (application load balancers).
    pub idle_timeout: Option<i64>,
    /// The S3 bucket of its access logs, when it has them.
    pub access_logs: Option<Value>,
}

/// An Elastic IP of a network load balancer.
#[derive(Debug, Clone, PartialEq)]
pub struct ElasticIp {
    /// Resource id.
    pub id: String,
    /// A name for it (`public-a`).
    pub name: String,
    /// The load balancer it is for.
    pub load_balancer: String,
}

/// An exported target group.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetGroup {
    /// Resource id.
    pub id: String,
    /// The spec's name.
    pub name: String,
    /// Its name on AWS, when `<stack>-<name>` fits AWS's 32 characters.
    pub aws_name: Option<String>,
    /// `HTTP`, `HTTPS`, `TCP`, `UDP`; `None` for lambda groups.
    pub protocol: Option<String>,
    /// `HTTP1`, `HTTP2`, `GRPC` (HTTP and HTTPS groups).
    pub protocol_version: Option<String>,
    /// Traffic port; `None` for lambda groups.
    pub port: Option<i64>,
    /// `instance`, `ip`, `lambda`, `alb`.
    pub target_type: String,
    /// The VPC (not for lambda groups).
    pub vpc: Option<Value>,
    /// Health check and attributes.
    pub settings: GroupSettings,
    /// Registered targets: (id, port).
    pub targets: Vec<(Value, Option<i64>)>,
    /// Resources that must exist first (Lambda permissions; the listeners
    /// of an application load balancer registered as a target).
    pub depends_on: Vec<String>,
}

/// Health check settings as AWS takes them.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthCheck {
    /// Checks on (lambda groups may turn them off).
    pub enabled: bool,
    /// `HTTP`, `HTTPS`, `TCP`.
    pub protocol: String,
    /// `traffic-port` or a number.
    pub port: String,
    /// HTTP(S) path.
    pub path: Option<String>,
    /// Seconds.
    pub interval: i64,
    /// Seconds.
    pub timeout: i64,
    /// Count.
    pub healthy_threshold: i64,
    /// Count.
    pub unhealthy_threshold: i64,
    /// HTTP codes.
    pub http_code: Option<String>,
    /// gRPC codes.
    pub grpc_code: Option<String>,
}

/// A permission for the load balancing service to invoke a function.
#[derive(Debug, Clone, PartialEq)]
pub struct LambdaPermission {
    /// Resource id.
    pub id: String,
    /// The spec's function name.
    pub name: String,
    /// The function (its ARN).
    pub function: Value,
    /// The target groups that invoke it (ids).
    pub target_groups: Vec<String>,
}

/// An exported listener.
#[derive(Debug, Clone, PartialEq)]
pub struct Listener {
    /// Resource id.
    pub id: String,
    /// A name for it (`public-80`).
    pub name: String,
    /// Its load balancer's id.
    pub load_balancer: String,
    /// Port.
    pub port: i64,
    /// `HTTP`, `HTTPS`, `TCP`, `TLS`, `UDP`.
    pub protocol: String,
    /// The certificate (HTTPS and TLS).
    pub certificate: Option<Value>,
    /// What happens when no rule matches.
    pub default_action: Action,
    /// A network load balancer's TCP idle timeout, seconds (a listener
    /// attribute on AWS).
    pub tcp_idle_timeout: Option<i64>,
}

/// An exported listener rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// Resource id.
    pub id: String,
    /// A name for it (`public-80-rule-10`).
    pub name: String,
    /// Its listener's id.
    pub listener: String,
    /// Priority.
    pub priority: i64,
    /// Conditions: (field, values) or (field, key/value pairs).
    pub conditions: Vec<Condition>,
    /// What happens on a match.
    pub action: Action,
}

/// One rule condition.
#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    /// `host-header`, `path-pattern`, `http-request-method`, `source-ip`.
    Values(&'static str, Vec<String>),
    /// `http-header`: a name and value patterns.
    Header(String, Vec<String>),
    /// `query-string`: (key, value) pairs.
    Query(Vec<(Option<String>, String)>),
}

/// A listener's or rule's action.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Forward to target groups (ids) with weights, stickiness seconds when on.
    Forward(Vec<(String, i64)>, Option<i64>),
    /// Redirect; `#{...}` keeps the request's part.
    Redirect {
        /// `HTTP`, `HTTPS` or `#{protocol}`.
        protocol: String,
        /// Host.
        host: String,
        /// Port.
        port: String,
        /// Absolute path.
        path: String,
        /// Query, without `?`.
        query: String,
        /// `HTTP_301` or `HTTP_302`.
        status: String,
    },
    /// Fixed response.
    Fixed {
        /// Status code.
        status: String,
        /// One of AWS's five content types.
        content_type: String,
        /// Body, at most 1024 bytes.
        body: Option<String>,
    },
}

/// An exported auto-scaling group and its launch template.
#[derive(Debug, Clone, PartialEq)]
pub struct AutoscalingGroup {
    /// Resource id.
    pub id: String,
    /// Its launch template's id.
    pub launch_template: String,
    /// The spec's name.
    pub name: String,
    /// Sizes.
    pub min: i64,
    /// Sizes.
    pub max: i64,
    /// Desired capacity; `None` under a scaling policy (the policy sets it).
    pub desired: Option<i64>,
    /// `EC2` or `ELB`.
    pub health_check_type: String,
    /// Seconds.
    pub grace_period: i64,
    /// Subnets.
    pub subnets: Value,
    /// Target groups (ids).
    pub target_groups: Vec<String>,
    /// `OldestInstance`, `NewestInstance`, `Default`.
    pub termination_policy: String,
    /// Instance refresh: minimum healthy percentage, warmup seconds.
    pub instance_refresh: Option<(i64, i64)>,
    /// Healthy instances in the load balancers to wait for on apply.
    pub wait_for_elb_capacity: Option<i64>,
    /// The launch template: image, instance type, security groups, user data.
    pub image: Value,
    /// Instance type.
    pub instance_type: Value,
    /// Security groups, when given.
    pub security_groups: Option<Value>,
    /// The start-up script (the launch template's command).
    pub user_data: String,
    /// A target tracking policy: metric, value, warmup seconds, and for a
    /// request count the load balancer and target group it counts at.
    pub policy: Option<ScalingPolicy>,
}

/// A target tracking scaling policy.
#[derive(Debug, Clone, PartialEq)]
pub struct ScalingPolicy {
    /// Resource id.
    pub id: String,
    /// `ALBRequestCountPerTarget` or `ASGAverageCPUUtilization`.
    pub metric: &'static str,
    /// The value to hold.
    pub target_value: f64,
    /// Warmup, seconds.
    pub warmup: i64,
    /// Request count: (load balancer id, target group id).
    pub label: Option<(String, String)>,
}

/// The whole export.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stack {
    /// The stack's name.
    pub name: String,
    /// The AWS region, when the spec names one.
    pub region: Option<String>,
    /// Parameters, in order.
    pub parameters: Vec<Parameter>,
    /// Load balancers.
    pub load_balancers: Vec<LoadBalancer>,
    /// Elastic IPs.
    pub elastic_ips: Vec<ElasticIp>,
    /// Target groups.
    pub target_groups: Vec<TargetGroup>,
    /// Lambda permissions.
    pub permissions: Vec<LambdaPermission>,
    /// Listeners.
    pub listeners: Vec<Listener>,
    /// Rules.
    pub rules: Vec<Rule>,
    /// Auto-scaling groups.
    pub autoscaling_groups: Vec<AutoscalingGroup>,
    /// What changed or was left out, by spec path.
    pub notes: Vec<String>,
}

/// `web-v2` -> `WebV2`: a name as part of a resource id.
pub fn camel(name: &str) -> String {
    name.split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|it| !it.is_empty())
        .map(|part| {
            let mut chars = part.chars();
            chars.next().map(|first| first.to_ascii_uppercase().to_string() + chars.as_str()).unwrap_or_default()
        })
        .collect()
}

/// Whole seconds of `duration`, at least `min` and at most `max`; a note
/// when AWS's range changed it.
pub fn seconds(duration: Duration, min: i64, max: i64, path: &str, notes: &mut Vec<String>) -> i64 {
    let exact = duration.get().as_secs_f64().ceil() as i64;
    let clamped = exact.clamp(min, max);
    if clamped as f64 != duration.get().as_secs_f64() {
        notes.push(format!("{path}: {duration} is {clamped}s on AWS (whole seconds, {min} to {max})"));
    }
    clamped
}

fn count(value: u32, min: i64, max: i64, path: &str, notes: &mut Vec<String>) -> i64 {
    let clamped = i64::from(value).clamp(min, max);
    if clamped != i64::from(value) {
        notes.push(format!("{path}: {value} is {clamped} on AWS ({min} to {max})"));
    }
    clamped
}

impl Stack {
    fn parameter(&mut self, name: &str, description: &str, kind: ParameterKind, default: Option<&str>) -> Value {
        if !self.parameters.iter().any(|it| it.name == name) {
            self.parameters.push(Parameter {
                name: name.to_string(),
                description: description.to_string(),
                kind,
                default: default.map(str::to_string),
            });
        }
        Value::Parameter(name.to_string())
    }

    fn text_or_parameter(
        &mut self,
        given: Option<&String>,
        name: &str,
        description: &str,
        kind: ParameterKind,
    ) -> Value {
        match given {
            Some(value) => Value::Text(value.clone()),
            None => self.parameter(name, description, kind, None),
        }
    }
}

/// A listener's resource id: its load balancer, port, and `Udp` for UDP
/// (a network load balancer may listen on one port for TCP and UDP).
fn listener_id(load_balancer: &str, listener: &lbctl_spec::Listener) -> String {
    let udp = if listener.protocol == ListenerProtocol::Udp { "Udp" } else { "" };
    format!("Listener{}{}{udp}", camel(load_balancer), listener.port)
}

/// `<stack>-<name>` when it fits AWS's 32 characters for load balancer and
/// target group names; otherwise AWS names the resource (and a note says so).
fn aws_name(stack: &str, name: &str, path: &str, notes: &mut Vec<String>) -> Option<String> {
    let full = format!("{stack}-{name}");
    if full.len() <= 32 {
        return Some(full);
    }
    notes.push(format!("{path}: `{full}` is longer than AWS's 32 characters; AWS names it"));
    None
}

fn reference(resource: &str, attribute: Attribute) -> Value {
    Value::Attribute(Reference { resource: resource.to_string(), attribute })
}

/// The spec as AWS resources.
pub fn build(spec: &Spec) -> Stack {
    let mut stack = Stack { name: spec.name.clone(), ..Stack::default() };
    let aws = spec.aws.clone().unwrap_or_default();
    stack.region = aws.region.clone();
    let vpc = stack.text_or_parameter(
        aws.vpc_id.as_ref(),
        "VpcId",
        "The VPC of the load balancers and target groups",
        ParameterKind::VpcId,
    );
    let subnets = if aws.subnets.is_empty() {
        stack.parameter(
            "Subnets",
            "Subnets of the load balancers and instances (two or more, in different zones)",
            ParameterKind::SubnetIds,
            None,
        )
    } else {
        Value::List(aws.subnets.iter().cloned().map(Value::Text).collect())
    };
    let security_groups = (!aws.security_groups.is_empty())
        .then(|| Value::List(aws.security_groups.iter().cloned().map(Value::Text).collect()));

    let group_id = |name: &str| format!("TargetGroup{}", camel(name));
    let lb_id = |name: &str| format!("LoadBalancer{}", camel(name));

    for (name, function) in &spec.functions {
        let arn = stack.text_or_parameter(
            function.aws.as_ref().and_then(|it| it.function_arn.as_ref()),
            &format!("Function{}Arn", camel(name)),
            &format!("ARN of the Lambda function for `functions.{name}` (its code is not exported)"),
            ParameterKind::Text,
        );
        stack.permissions.push(LambdaPermission {
            id: format!("Permission{}", camel(name)),
            name: name.clone(),
            function: arn,
            target_groups: Vec::new(),
        });
        if matches!(stack.permissions.last().map(|it| &it.function), Some(Value::Parameter(_))) {
            stack.notes.push(format!(
                "functions.{name}: the command runs locally only; deploy its code as a Lambda function and pass its ARN"
            ));
        }
    }

    for (name, written) in &spec.target_groups {
        let group = written.resolve();
        let base = format!("target_groups.{name}");
        let lambda = group.target_type == TargetType::Lambda;
        let mut notes = Vec::new();
        let settings = group_settings(&group, &base, &mut notes);
        let mut targets = Vec::new();
        let mut depends_on = Vec::new();
        for (idx, target) in group.targets.iter().enumerate() {
            let path = format!("{base}.targets[{idx}]");
            if let Some(function) = &target.function {
                targets.push((Value::Parameter(format!("Function{}Arn", camel(function))), None));
                let permission = format!("Permission{}", camel(function));
                if let Some(it) = stack.permissions.iter_mut().find(|it| it.id == permission) {
                    it.target_groups.push(group_id(name));
                }
                depends_on.push(permission);
            } else if let Some(lb) = &target.load_balancer {
                // AWS registers an application load balancer only once it
                // listens on the group's port.
                targets.push((reference(&lb_id(lb), Attribute::Arn), target.port.or(group.port).map(i64::from)));
                if let Some(balancer) = spec.load_balancers.get(lb) {
                    depends_on.extend(balancer.listeners.iter().map(|it| listener_id(lb, it)));
                }
            } else if let Some(ip) = &target.ip {
                let parameter = stack.parameter(
                    &format!("{}Target{idx}Ip", group_id(name)),
                    &format!("Address in the VPC of `{path}` (locally {ip})"),
                    ParameterKind::Text,
                    None,
                );
                targets.push((parameter, target.port.or(group.port).map(i64::from)));
            } else if let Some(id) = &target.id {
                notes.push(format!(
                    "{path}: instance {id} exists only locally; not exported (attach its group instead)"
                ));
            }
        }
        stack.notes.extend(notes);
        let aws_name = aws_name(&spec.name, name, &base, &mut stack.notes);
        stack.target_groups.push(TargetGroup {
            id: group_id(name),
            name: name.clone(),
            aws_name,
            protocol: (!lambda).then(|| wire_name(&group.protocol)),
            protocol_version: group.protocol_version.map(|it| wire_name(&it)),
            port: if lambda { None } else { group.port.map(i64::from) },
            target_type: wire_name(&group.target_type),
            vpc: (!lambda).then(|| vpc.clone()),
            settings,
            targets,
            depends_on,
        });
    }

    for (name, lb) in &spec.load_balancers {
        let id = lb_id(name);
        let base = format!("load_balancers.{name}");
        let mut subnet_mappings = Vec::new();
        if lb.kind == LoadBalancerType::Network {
            // One Elastic IP per subnet: the static address users reach.
            for (zone, letter) in ["a", "b"].iter().enumerate() {
                let eip = format!("ElasticIp{}{}", camel(name), letter.to_uppercase());
                stack.elastic_ips.push(ElasticIp {
                    id: eip.clone(),
                    name: format!("{name}-{letter}"),
                    load_balancer: id.clone(),
                });
                let subnet = match &subnets {
                    Value::List(list) => list.get(zone).cloned().unwrap_or_else(|| list[0].clone()),
                    other => Value::Select(zone, Box::new(other.clone())),
                };
                subnet_mappings.push((subnet, reference(&eip, Attribute::AllocationId)));
            }
            if lb.static_ip.is_some() {
                stack.notes.push(format!(
                    "{base}.static_ip: a loopback address; on AWS the load balancer gets Elastic IPs (see the outputs)"
                ));
            }
        }
        if lb.worker_threads.is_some() || lb.max_connections.is_some() {
            stack.notes.push(format!("{base}: worker_threads and max_connections are local settings; not exported"));
        }
        let aws_name = aws_name(&spec.name, name, &base, &mut stack.notes);
        let access_logs = lb.access_logs.unwrap_or(false).then(|| {
            stack.notes.push(format!(
                "{base}.access_logs: AWS writes access logs to an S3 bucket (the AccessLogsBucket parameter){}",
                if lb.kind == LoadBalancerType::Network { ", for TLS listeners only" } else { "" }
            ));
            stack.parameter(
                "AccessLogsBucket",
                "S3 bucket the load balancers' access logs go to",
                ParameterKind::Text,
                None,
            )
        });
        stack.load_balancers.push(LoadBalancer {
            id: id.clone(),
            name: name.clone(),
            aws_name,
            kind: lb.kind,
            subnets: subnets.clone(),
            subnet_mappings,
            security_groups: (lb.kind == LoadBalancerType::Application).then(|| security_groups.clone()).flatten(),
            access_logs,
            idle_timeout: (lb.kind == LoadBalancerType::Application)
                .then(|| seconds(lb.idle_timeout(), 1, 4000, &format!("{base}.idle_timeout"), &mut stack.notes)),
        });
        for (idx, listener) in lb.listeners.iter().enumerate() {
            let path = format!("{base}.listeners[{idx}]");
            let listener_id = listener_id(name, listener);
            let listener_name = format!(
                "{name}-{}{}",
                listener.port,
                if listener.protocol == ListenerProtocol::Udp { "-udp" } else { "" }
            );
            let certificate = matches!(listener.protocol, ListenerProtocol::Https | ListenerProtocol::Tls).then(|| {
                let given = listener.aws.as_ref().and_then(|it| it.certificate_arn.as_ref());
                if given.is_none() {
                    stack.notes.push(format!(
                        "{path}.certificate: a local certificate; on AWS the listener uses an ACM certificate (a parameter)"
                    ));
                }
                stack.text_or_parameter(
                    given,
                    &format!("{listener_id}CertificateArn"),
                    &format!("ACM certificate ARN of `{path}`"),
                    ParameterKind::Text,
                )
            });
            let default_action =
                action(spec, &listener.default_action, &format!("{path}.default_action"), &mut stack.notes);
            let tcp_idle_timeout = match (lb.kind, listener.protocol, lb.idle_timeout) {
                (LoadBalancerType::Network, ListenerProtocol::Tcp, Some(idle)) => {
                    Some(seconds(idle, 60, 6000, &format!("{base}.idle_timeout"), &mut stack.notes))
                }
                (LoadBalancerType::Network, _, Some(_)) => {
                    stack.notes.push(format!(
                        "{path}: AWS sets the idle timeout of TCP listeners only; this {} listener keeps AWS's",
                        wire_name(&listener.protocol)
                    ));
                    None
                }
                _ => None,
            };
            stack.listeners.push(Listener {
                id: listener_id.clone(),
                name: listener_name.clone(),
                load_balancer: id.clone(),
                port: i64::from(listener.port),
                protocol: wire_name(&listener.protocol),
                certificate,
                default_action,
                tcp_idle_timeout,
            });
            for rule in &listener.rules {
                let rule_path = format!("{path}.rules[priority {}]", rule.priority);
                stack.rules.push(Rule {
                    id: format!("{listener_id}Rule{}", rule.priority),
                    name: format!("{listener_name}-rule-{}", rule.priority),
                    listener: listener_id.clone(),
                    priority: i64::from(rule.priority),
                    conditions: conditions(&rule.conditions),
                    action: action(spec, &rule.action, &rule_path, &mut stack.notes),
                });
            }
        }
    }

    for (name, written) in &spec.autoscaling_groups {
        let group = written.resolve();
        let base = format!("autoscaling_groups.{name}");
        let template = &group.launch_template;
        let aws_template = template.aws.clone().unwrap_or_default();
        let image = stack.text_or_parameter(
            aws_template.image_id.as_ref(),
            &format!("Image{}", camel(name)),
            &format!("Machine image (AMI) of `{base}`: it must provide the launch template's command"),
            ParameterKind::ImageId,
        );
        let instance_type = match &aws_template.instance_type {
            Some(it) => Value::Text(it.clone()),
            None => stack.parameter(
                &format!("InstanceType{}", camel(name)),
                &format!("Instance type of `{base}`"),
                ParameterKind::Text,
                Some("t3.micro"),
            ),
        };
        let port = spec.instance_port(written);
        let policy = group.scaling.as_ref().and_then(|scaling| {
            let tracking = &scaling.target_tracking;
            let warmup = seconds(tracking.cooldown, 0, 86_400, &format!("{base}.scaling.target_tracking.cooldown"), &mut stack.notes);
            match tracking.metric {
                ScalingMetric::CpuUtilization => Some(ScalingPolicy {
                    id: format!("ScalingPolicy{}", camel(name)),
                    metric: "ASGAverageCPUUtilization",
                    target_value: tracking.target_value,
                    warmup,
                    label: None,
                }),
                ScalingMetric::RequestCountPerTarget => {
                    // AWS counts requests per target per minute, at one
                    // load balancer and target group.
                    let counted = group.target_groups.iter().find_map(|tg| {
                        let lb = spec.load_balancers.iter().find(|(_, lb)| spec.load_balancer_target_groups(lb).contains(tg))?;
                        Some((lb_id(lb.0), group_id(tg)))
                    });
                    match counted {
                        Some(label) => {
                            stack.notes.push(format!(
                                "{base}.scaling.target_tracking.target_value: {} requests per second per target is {} per minute on AWS",
                                tracking.target_value,
                                tracking.target_value * 60.0
                            ));
                            Some(ScalingPolicy {
                                id: format!("ScalingPolicy{}", camel(name)),
                                metric: "ALBRequestCountPerTarget",
                                target_value: tracking.target_value * 60.0,
                                warmup,
                                label: Some(label),
                            })
                        }
                        None => {
                            stack.notes.push(format!(
                                "{base}.scaling: request count needs a target group an application load balancer routes to; not exported"
                            ));
                            None
                        }
                    }
                }
            }
        });
        stack.autoscaling_groups.push(AutoscalingGroup {
            id: format!("AutoScalingGroup{}", camel(name)),
            launch_template: format!("LaunchTemplate{}", camel(name)),
            name: name.clone(),
            min: i64::from(group.min_size),
            max: i64::from(group.max_size),
            desired: policy.is_none().then_some(i64::from(group.desired_capacity)),
            health_check_type: wire_name(&group.health_check_type),
            grace_period: seconds(
                group.health_check_grace_period,
                0,
                86_400,
                &format!("{base}.health_check_grace_period"),
                &mut stack.notes,
            ),
            subnets: subnets.clone(),
            target_groups: group.target_groups.iter().map(|it| group_id(it)).collect(),
            termination_policy: match group.termination_policy {
                TerminationPolicy::OldestInstance => "OldestInstance",
                TerminationPolicy::NewestInstance => "NewestInstance",
                TerminationPolicy::Default => "Default",
            }
            .to_string(),
            instance_refresh: group.instance_refresh.as_ref().map(|it| {
                (
                    i64::from(it.min_healthy_percentage),
                    seconds(it.warmup, 0, 86_400, &format!("{base}.instance_refresh.warmup"), &mut stack.notes),
                )
            }),
            wait_for_elb_capacity: group.wait_for_elb_capacity.map(i64::from),
            image,
            instance_type,
            security_groups: security_groups.clone(),
            user_data: user_data(template, port),
            policy,
        });
    }
    stack
}

/// A target group's health check and attributes as AWS takes them.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupSettings {
    /// Health checks.
    pub health_check: HealthCheck,
    /// Seconds a deregistered target keeps its connections (not lambda).
    pub deregistration_delay: Option<i64>,
    /// Slow start seconds, when on (application groups).
    pub slow_start: Option<i64>,
    /// Cookie stickiness: on, and its seconds (application groups).
    pub stickiness: Option<(bool, i64)>,
    /// `round_robin`, `least_outstanding_requests`, `weighted_random`
    /// (application groups).
    pub algorithm: Option<&'static str>,
    /// PROXY protocol v2 (TCP groups).
    pub proxy_protocol_v2: Option<bool>,
}

impl GroupSettings {
    /// The attributes as AWS's keys and values (CloudFormation's
    /// `TargetGroupAttributes`, `ModifyTargetGroupAttributes`). `converge`
    /// also writes what resets an existing group's earlier values: slow
    /// start off under an algorithm (AWS refuses both), and stickiness's
    /// type and duration while it is off.
    pub fn attributes(&self, converge: bool) -> Vec<(&'static str, String)> {
        let mut found = Vec::new();
        if let Some(delay) = self.deregistration_delay {
            found.push(("deregistration_delay.timeout_seconds", delay.to_string()));
        }
        let slow_start = if converge { self.slow_start.or(self.algorithm.map(|_| 0)) } else { self.slow_start };
        if let Some(seconds) = slow_start {
            found.push(("slow_start.duration_seconds", seconds.to_string()));
        }
        if let Some((enabled, duration)) = self.stickiness {
            found.push(("stickiness.enabled", enabled.to_string()));
            if enabled || converge {
                found.push(("stickiness.type", "lb_cookie".to_string()));
                found.push(("stickiness.lb_cookie.duration_seconds", duration.to_string()));
            }
        }
        if let Some(algorithm) = self.algorithm {
            found.push(("load_balancing.algorithm.type", algorithm.to_string()));
        }
        if let Some(on) = self.proxy_protocol_v2 {
            found.push(("proxy_protocol_v2.enabled", on.to_string()));
        }
        found
    }
}

/// The health check and attributes of `group` within AWS's ranges (whole
/// seconds, counts 2 to 10, a timeout below the interval), each change a
/// note under `base`.
pub fn group_settings(group: &settings::TargetGroup, base: &str, notes: &mut Vec<String>) -> GroupSettings {
    let lambda = group.target_type == TargetType::Lambda;
    let network = !lambda && matches!(group.protocol, TargetProtocol::Tcp | TargetProtocol::Udp);
    let check = &group.health_check;
    let grpc = group.protocol_version == Some(ProtocolVersion::Grpc);
    let health_check = HealthCheck {
        enabled: check.enabled,
        protocol: wire_name(&check.protocol.unwrap_or(HealthCheckProtocol::Http)),
        port: match &check.port {
            HealthCheckPort::Number(port) => port.to_string(),
            HealthCheckPort::Named(_) => "traffic-port".to_string(),
        },
        path: check.path.clone(),
        interval: seconds(check.interval, 5, 300, &format!("{base}.health_check.interval"), notes),
        timeout: seconds(check.timeout, 2, 120, &format!("{base}.health_check.timeout"), notes),
        healthy_threshold: count(
            check.healthy_threshold,
            2,
            10,
            &format!("{base}.health_check.healthy_threshold"),
            notes,
        ),
        unhealthy_threshold: count(
            check.unhealthy_threshold,
            2,
            10,
            &format!("{base}.health_check.unhealthy_threshold"),
            notes,
        ),
        http_code: check.matcher.clone().filter(|_| !grpc),
        grpc_code: check.matcher.clone().filter(|_| grpc),
    };
    let mut health_check = health_check;
    if health_check.timeout >= health_check.interval {
        health_check.timeout = (health_check.interval - 1).max(2);
    }
    let application = !network && !lambda;
    let deregistration_delay =
        (!lambda).then(|| seconds(group.deregistration_delay, 0, 3600, &format!("{base}.deregistration_delay"), notes));
    let slow_start = (application && !group.slow_start.get().is_zero())
        .then(|| seconds(group.slow_start, 30, 900, &format!("{base}.slow_start"), notes));
    let stickiness = application.then(|| {
        let duration = seconds(group.stickiness.duration, 1, 604_800, &format!("{base}.stickiness.duration"), notes);
        (group.stickiness.enabled, duration)
    });
    let algorithm = application.then(|| match group.algorithm() {
        Algorithm::RoundRobin => "round_robin",
        Algorithm::LeastOutstandingRequests => "least_outstanding_requests",
        Algorithm::WeightedRandom => "weighted_random",
    });
    let proxy_protocol_v2 = (group.protocol == TargetProtocol::Tcp && !lambda).then_some(group.proxy_protocol_v2);
    GroupSettings { health_check, deregistration_delay, slow_start, stickiness, algorithm, proxy_protocol_v2 }
}

/// The instance start-up script: the launch template's environment and
/// command, with the placeholders an instance fills locally taken from the
/// instance metadata.
pub fn user_data(template: &LaunchTemplate, port: u16) -> String {
    let quote = |word: &str| format!("'{}'", word.replace('\'', "'\\''"));
    let mut script = String::from("#!/bin/sh\n# Made by lbctl from the launch template's command.\n");
    script.push_str("TOKEN=$(curl -s -X PUT http://169.254.169.254/latest/api/token -H 'X-aws-ec2-metadata-token-ttl-seconds: 60')\n");
    script.push_str(
        "meta() { curl -s -H \"X-aws-ec2-metadata-token: $TOKEN\" http://169.254.169.254/latest/meta-data/$1; }\n",
    );
    script.push_str("export LBCTL_IP=$(meta local-ipv4) LBCTL_INSTANCE_ID=$(meta instance-id)\n");
    script.push_str(&format!("export LBCTL_PORT={port}\n"));
    for (key, value) in &template.env {
        script.push_str(&format!("export {key}={}\n", quote(value)));
    }
    let words: Vec<String> = template
        .command
        .iter()
        .map(|word| {
            let word = word.replace("{ip}", "@IP@").replace("{port}", "@PORT@").replace("{instance_id}", "@ID@");
            quote(&word)
                .replace("@IP@", "'\"$LBCTL_IP\"'")
                .replace("@PORT@", "'\"$LBCTL_PORT\"'")
                .replace("@ID@", "'\"$LBCTL_INSTANCE_ID\"'")
        })
        .collect();
    script.push_str(&format!("nohup {} >/var/log/lbctl-instance.log 2>&1 &\n", words.join(" ")));
    script
}

/// A rule's conditions, one per kind written.
pub fn conditions(conditions: &Conditions) -> Vec<Condition> {
    let mut found = Vec::new();
    if !conditions.host_header.is_empty() {
        found.push(Condition::Values("host-header", conditions.host_header.clone()));
    }
    if !conditions.path_pattern.is_empty() {
        found.push(Condition::Values("path-pattern", conditions.path_pattern.clone()));
    }
    if let Some(header) = &conditions.http_header {
        found.push(Condition::Header(header.name.clone(), header.values.clone()));
    }
    if !conditions.http_request_method.is_empty() {
        found.push(Condition::Values("http-request-method", conditions.http_request_method.clone()));
    }
    if !conditions.query_string.is_empty() {
        found.push(Condition::Query(
            conditions.query_string.iter().map(|it| (it.key.clone(), it.value.clone())).collect(),
        ));
    }
    if !conditions.source_ip.is_empty() {
        found.push(Condition::Values("source-ip", conditions.source_ip.clone()));
    }
    found
}

fn action(spec: &Spec, action: &lbctl_spec::Action, path: &str, notes: &mut Vec<String>) -> Action {
    let group_id = |name: &str| format!("TargetGroup{}", camel(name));
    match action.kind() {
        Some(ActionKind::Forward(forward)) => {
            let groups: Vec<(String, i64)> = match forward {
                Forward::Single(name) => vec![(group_id(name), 1)],
                Forward::Weighted(list) => {
                    list.iter().map(|it| (group_id(&it.target_group), i64::from(it.weight()))).collect()
                }
            };
            // A weighted forward keeps a client on its group when the groups stick.
            let stickiness = match forward {
                Forward::Weighted(list) => list
                    .iter()
                    .filter_map(|it| spec.target_groups.get(&it.target_group).map(settings_of))
                    .filter(|it| it.stickiness.enabled)
                    .map(|it| it.stickiness.duration.get().as_secs() as i64)
                    .max(),
                Forward::Single(_) => None,
            };
            Action::Forward(groups, stickiness)
        }
        Some(ActionKind::Redirect(redirect)) => {
            let keep =
                |value: &Option<String>, placeholder: &str| value.clone().unwrap_or_else(|| placeholder.to_string());
            let path_value = keep(&redirect.path, "/#{path}");
            Action::Redirect {
                protocol: redirect
                    .protocol
                    .as_ref()
                    .map(|it| if it.starts_with('#') { it.clone() } else { it.to_uppercase() })
                    .unwrap_or_else(|| "#{protocol}".to_string()),
                host: keep(&redirect.host, "#{host}"),
                port: keep(&redirect.port, "#{port}"),
                path: if path_value.starts_with('/') { path_value } else { format!("/{path_value}") },
                query: keep(&redirect.query, "#{query}"),
                status: format!("HTTP_{}", redirect.status()),
            }
        }
        Some(ActionKind::FixedResponse(fixed)) => {
            let mut content_type = fixed.content_type.clone().unwrap_or_else(|| "text/plain".to_string());
            if !FIXED_RESPONSE_TYPES.contains(&content_type.as_str()) {
                notes.push(format!("{path}.fixed_response.content_type: AWS answers with {FIXED_RESPONSE_TYPES:?} only; `{content_type}` is text/plain"));
                content_type = "text/plain".to_string();
            }
            let mut body = fixed.body.clone();
            if let Some(text) = &mut body {
                if text.len() > 1024 {
                    notes.push(format!("{path}.fixed_response.body: AWS keeps 1024 bytes; the rest is cut"));
                    let mut end = 1024;
                    while !text.is_char_boundary(end) {
                        end -= 1;
                    }
                    text.truncate(end);
                }
            }
            Action::Fixed { status: fixed.status_code.to_string(), content_type, body }
        }
        None => {
            notes.push(format!("{path}: no action; exported as a 404"));
            Action::Fixed { status: "404".to_string(), content_type: "text/plain".to_string(), body: None }
        }
    }
}

/// The content types a fixed response may have on AWS.
pub const FIXED_RESPONSE_TYPES: [&str; 5] =
    ["text/plain", "text/css", "text/html", "application/javascript", "application/json"];

fn settings_of(group: &lbctl_spec::TargetGroup) -> settings::TargetGroup {
    group.resolve()
}

/// Every target group of `stack` by id, for renderers.
pub fn target_groups_by_id(stack: &Stack) -> BTreeMap<&str, &TargetGroup> {
    stack.target_groups.iter().map(|it| (it.id.as_str(), it)).collect()
}
