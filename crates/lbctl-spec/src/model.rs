//! The version-1 spec types: exactly the YAML shape of PRODUCT.md, holding
//! what the user wrote.
//!
//! Every struct denies unknown fields, so a typo is an error with a location,
//! never a silently ignored setting. A field the user may omit is an
//! `Option`: omitted stays omitted here, and `settings` resolves the
//! effective value (AWS's default in context), so that a plan can tell
//! "omitted" from "written".

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::duration::Duration;

/// The whole spec file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    /// Format version; only `1` exists.
    pub version: u32,
    /// Stack name: namespaces DNS names (`<lb>.<stack>.elb.localhost`, `.elb.internal` for network load balancers) and runtime files.
    pub name: String,
    /// Load balancers by name.
    #[serde(default)]
    pub load_balancers: BTreeMap<String, LoadBalancer>,
    /// Target groups by name.
    #[serde(default)]
    pub target_groups: BTreeMap<String, TargetGroup>,
    /// Lambda-style functions by name, used by `target_type: lambda` groups.
    #[serde(default)]
    pub functions: BTreeMap<String, Function>,
    /// Auto-scaling groups by name.
    #[serde(default)]
    pub autoscaling_groups: BTreeMap<String, AutoscalingGroup>,
    /// Which provider makes the resources: `local` (default: processes on
    /// this machine) or `aws`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<ProviderName>,
    /// What only AWS needs (region, network); the local provider ignores it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aws: Option<AwsStack>,
}

/// A provider's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ProviderName {
    /// Real processes on this machine.
    Local,
    /// Amazon Web Services.
    Aws,
}

impl ProviderName {
    /// The name as the spec writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderName::Local => "local",
            ProviderName::Aws => "aws",
        }
    }
}

impl Spec {
    /// The provider the spec names (`local` when it names none).
    pub fn provider(&self) -> ProviderName {
        self.provider.unwrap_or(ProviderName::Local)
    }
}

/// The stack on AWS: where its resources go. Omitted, the provider uses the
/// region of the standard AWS configuration and the default VPC's subnets.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AwsStack {
    /// Region (default: `AWS_REGION` or the profile's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// VPC of the load balancers and target groups (default: the default VPC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vpc_id: Option<String>,
    /// Subnets of the load balancers and instances (default: the VPC's).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subnets: Vec<String>,
    /// Security groups of application load balancers and instances.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub security_groups: Vec<String>,
}

/// A launch template on AWS: the machine image and type its instances run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AwsLaunchTemplate {
    /// AMI id (`ami-...`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_id: Option<String>,
    /// Instance type (default `t3.micro`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_type: Option<String>,
}

/// An HTTPS or TLS listener on AWS: a certificate already in ACM.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AwsListener {
    /// ACM certificate ARN, used instead of the listener's `certificate`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_arn: Option<String>,
}

/// A function on AWS: a Lambda function already deployed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AwsFunction {
    /// The Lambda function's ARN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function_arn: Option<String>,
}

/// `application` (L7) or `network` (L4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LoadBalancerType {
    /// HTTP(S) proxy with host/path/header rules.
    Application,
    /// TCP/TLS/UDP proxy on a stable loopback IP.
    Network,
}

/// A load balancer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LoadBalancer {
    /// `application` or `network`.
    #[serde(rename = "type")]
    pub kind: LoadBalancerType,
    /// Threads of the proxy process (default: the number of cores).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_threads: Option<u32>,
    /// Idle connection timeout (default 60s for application, 350s for network).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<Duration>,
    /// The "elastic IP" of a network load balancer (127.0.0.0/8).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub static_ip: Option<String>,
    /// Local provider: the most client connections (and UDP flows) open at
    /// once; past it new ones are refused and the open ones keep working
    /// (default: from the proxy's file descriptor limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_connections: Option<u32>,
    /// One line per request (per connection for a network load balancer)
    /// in AWS's access-log format, to `.lbctl/logs/<lb>/access.log`
    /// (AWS's `access_logs.s3.enabled`). Default: off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_logs: Option<bool>,
    /// Listeners; ports are unique per load balancer.
    pub listeners: Vec<Listener>,
}

/// Listener protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum ListenerProtocol {
    /// Plain HTTP (application).
    Http,
    /// HTTP over TLS (application).
    Https,
    /// Plain TCP (network).
    Tcp,
    /// TCP with TLS termination (network).
    Tls,
    /// UDP datagrams (network).
    Udp,
}

/// A listener: a port, a protocol, a default action and rules.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    /// Port to listen on.
    pub port: u16,
    /// Protocol.
    pub protocol: ListenerProtocol,
    /// TLS certificate for HTTPS and TLS listeners.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<Certificate>,
    /// What happens when no rule matches.
    pub default_action: Action,
    /// Rules, evaluated by ascending priority.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<Rule>,
    /// What only AWS needs; the local provider ignores it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aws: Option<AwsListener>,
}

/// A TLS certificate: generated, or from files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum Certificate {
    /// `self_signed`: generated for the DNS name and `localhost`.
    Generated(GeneratedCertificate),
    /// PEM files.
    Files {
        /// Certificate chain (PEM).
        cert: String,
        /// Private key (PEM).
        key: String,
    },
}

/// The only generated certificate kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum GeneratedCertificate {
    /// A self-signed certificate kept in the state dir.
    SelfSigned,
}

/// A listener rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Unique per listener; lowest wins.
    pub priority: u32,
    /// All conditions must match.
    pub conditions: Conditions,
    /// What to do on a match.
    pub action: Action,
}

/// Rule conditions; every given condition must match, any value of one condition may.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Conditions {
    /// Host patterns (case-insensitive, `*` and `?` wildcards).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub host_header: Vec<String>,
    /// Path patterns (case-sensitive, `*` and `?` wildcards).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub path_pattern: Vec<String>,
    /// A header whose value matches one of the patterns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_header: Option<HttpHeaderCondition>,
    /// Request methods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub http_request_method: Vec<String>,
    /// Query string key/value pairs (key optional).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub query_string: Vec<QueryStringCondition>,
    /// Client address ranges (CIDR).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub source_ip: Vec<String>,
}

/// `http_header: { name, values }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpHeaderCondition {
    /// Header name (case-insensitive).
    pub name: String,
    /// Value patterns (case-insensitive, wildcards).
    pub values: Vec<String>,
}

/// One `query_string` pair.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct QueryStringCondition {
    /// Key; omitted matches any key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Value pattern.
    pub value: String,
}

/// What a listener does with a request: exactly one of the fields.
///
/// A struct of options rather than an enum so that YAML's plain
/// `{ forward: web }` form parses; validation checks that exactly one is set.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Action {
    /// Forward to one target group, or weighted over several.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forward: Option<Forward>,
    /// Redirect with `#{protocol}`, `#{host}`, `#{port}`, `#{path}`, `#{query}` placeholders.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect: Option<Redirect>,
    /// Answer directly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fixed_response: Option<FixedResponse>,
}

/// The one action an `Action` holds, once validated.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ActionKind<'a> {
    /// `forward`.
    Forward(&'a Forward),
    /// `redirect`.
    Redirect(&'a Redirect),
    /// `fixed_response`.
    FixedResponse(&'a FixedResponse),
}

impl Action {
    /// The action, or `None` unless exactly one field is set.
    pub fn kind(&self) -> Option<ActionKind<'_>> {
        match (&self.forward, &self.redirect, &self.fixed_response) {
            (Some(forward), None, None) => Some(ActionKind::Forward(forward)),
            (None, Some(redirect), None) => Some(ActionKind::Redirect(redirect)),
            (None, None, Some(fixed)) => Some(ActionKind::FixedResponse(fixed)),
            _ => None,
        }
    }

    /// A forward to one target group.
    pub fn forward_to(group: &str) -> Action {
        Action { forward: Some(Forward::Single(group.to_string())), ..Action::default() }
    }
}

/// `forward: web` or `forward: [{ target_group, weight }]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum Forward {
    /// One target group by name.
    Single(String),
    /// Weighted target groups.
    Weighted(Vec<WeightedTargetGroup>),
}

impl Listener {
    /// The target groups its default action and rules forward to.
    pub fn target_groups(&self) -> Vec<&str> {
        let actions = std::iter::once(&self.default_action).chain(self.rules.iter().map(|it| &it.action));
        actions.filter_map(|it| it.forward.as_ref()).flat_map(Forward::target_groups).collect()
    }
}

impl Forward {
    /// The target group names this forward reaches.
    pub fn target_groups(&self) -> Vec<&str> {
        match self {
            Forward::Single(name) => vec![name.as_str()],
            Forward::Weighted(list) => list.iter().map(|it| it.target_group.as_str()).collect(),
        }
    }
}

/// One weighted target group of a forward action.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WeightedTargetGroup {
    /// Target group name.
    pub target_group: String,
    /// Relative weight, 0 to 999 (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
}

impl WeightedTargetGroup {
    /// The weight (1 when omitted).
    pub fn weight(&self) -> u32 {
        self.weight.unwrap_or(1)
    }
}

/// A redirect action; omitted parts keep the request's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Redirect {
    /// `HTTP` or `HTTPS`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// Host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<String>,
    /// Path (absolute).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Query without the leading `?`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// 301 or 302 (default 302).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_code: Option<u16>,
}

impl Redirect {
    /// The status code (302 when omitted).
    pub fn status(&self) -> u16 {
        self.status_code.unwrap_or(302)
    }
}

/// A fixed response action.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FixedResponse {
    /// HTTP status code.
    pub status_code: u16,
    /// Content type (default `text/plain`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// Body (default empty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
}

/// Protocol between the load balancer and targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum TargetProtocol {
    /// HTTP.
    Http,
    /// HTTPS.
    Https,
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

/// HTTP version spoken to targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum ProtocolVersion {
    /// HTTP/1.1.
    Http1,
    /// HTTP/2.
    Http2,
    /// gRPC over HTTP/2.
    Grpc,
}

/// What a target group's targets are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TargetType {
    /// Instances registered by auto-scaling groups.
    Instance,
    /// Fixed addresses.
    Ip,
    /// Functions invoked per request.
    Lambda,
    /// An application load balancer of the same stack.
    Alb,
}

/// Target selection algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    /// Each target in turn.
    RoundRobin,
    /// The target with the fewest requests in flight.
    LeastOutstandingRequests,
    /// Random, weighted by target health.
    WeightedRandom,
}

/// A target group. Omitted fields take AWS's defaults for the group's
/// protocol, version and target type (`settings::TargetGroup`); a field
/// that has no effect in the group's context is an error.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TargetGroup {
    /// Protocol to targets (default HTTP; lambda groups have none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<TargetProtocol>,
    /// HTTP version to targets (HTTP and HTTPS groups; default HTTP1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol_version: Option<ProtocolVersion>,
    /// Traffic port on each target (default 80; instances listen on it; lambda groups have none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// What the targets are (default instance).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_type: Option<TargetType>,
    /// Health check settings (defaults depend on the group: see the README's table).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
    /// Selection algorithm (application load balancers' groups; default round_robin).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub algorithm: Option<Algorithm>,
    /// How long a deregistered target drains at most (default 300s, as AWS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deregistration_delay: Option<Duration>,
    /// Ramp-up period for new targets (application load balancers' groups; default 0s: off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slow_start: Option<Duration>,
    /// Load-balancer cookie stickiness (application load balancers' groups).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stickiness: Option<Stickiness>,
    /// Registered targets: addresses (`ip`), functions (`lambda`), a load
    /// balancer (`alb`), or live instances by id (`instance`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<Target>,
    /// Send the PROXY v2 header to targets (TCP groups; default false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_protocol_v2: Option<bool>,
}

/// Health check protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum HealthCheckProtocol {
    /// HTTP GET of `path`.
    Http,
    /// HTTPS GET of `path`.
    Https,
    /// TCP connect.
    Tcp,
}

/// `traffic-port` or a port number.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum HealthCheckPort {
    /// A fixed port.
    Number(u16),
    /// `traffic-port`: the target's own port.
    Named(TrafficPort),
}

/// The `traffic-port` keyword.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum TrafficPort {
    /// The target's traffic port.
    #[serde(rename = "traffic-port")]
    TrafficPort,
}

/// Health check settings; every field is optional, its default depends on
/// the target group (see `settings`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    /// Whether targets are checked (lambda groups only; default false there, always on elsewhere).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Protocol (default: HTTP or HTTPS as the group; TCP for TCP and UDP groups).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<HealthCheckProtocol>,
    /// Port (default `traffic-port`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<HealthCheckPort>,
    /// Path of HTTP(S) checks (default `/`); for `GRPC` groups, the gRPC
    /// method to call (default `/AWS.ALB/healthcheck`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Time between checks (default 30s; lambda 35s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<Duration>,
    /// Time to wait for an answer (default 6s for HTTP, 10s for HTTPS and TCP, 30s for lambda).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// Consecutive successes to become healthy (default 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy_threshold: Option<u32>,
    /// Consecutive failures to become unhealthy (default 2; lambda 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unhealthy_threshold: Option<u32>,
    /// Codes counted as success: `200`, `200,202`, `200-299` (default `200`;
    /// `200-399` for network load balancers' groups); for `GRPC` groups,
    /// gRPC status codes 0-99 (default `12`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matcher: Option<String>,
}

/// Load-balancer cookie stickiness.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Stickiness {
    /// On or off (default off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Cookie lifetime (default 1d; only with stickiness on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<Duration>,
}

/// A registered target: exactly one of `id` (`instance` groups), `ip`,
/// `function`, `load_balancer`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Target {
    /// A live instance of an auto-scaling group of the stack, registered by
    /// hand (`instance` groups); it leaves the group when it terminates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Address in 127.0.0.0/8 (`ip` groups).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    /// Port (default: the group's port).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Function name (`lambda` groups).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function: Option<String>,
    /// Load balancer name (`alb` groups).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<String>,
}

/// A Lambda-style function: a command run per request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Function {
    /// Command and arguments; reads the event JSON on stdin.
    pub command: Vec<String>,
    /// Time limit per invocation (default 3s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// Extra environment variables.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// What only AWS needs; the local provider ignores it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aws: Option<AwsFunction>,
}

/// `EC2` (process alive) or `ELB` (load balancer target health too).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum HealthCheckType {
    /// The instance is healthy while its process runs.
    #[serde(rename = "EC2")]
    Ec2,
    /// Also unhealthy when a load balancer reports the target unhealthy.
    #[serde(rename = "ELB")]
    Elb,
}

/// Which instances scale-in stops first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TerminationPolicy {
    /// Oldest first.
    OldestInstance,
    /// Newest first.
    NewestInstance,
    /// Older launch template first, then oldest.
    Default,
}

/// An auto-scaling group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AutoscalingGroup {
    /// Lower bound of the group's size.
    pub min_size: u32,
    /// Upper bound of the group's size.
    pub max_size: u32,
    /// Instances to run (default `min_size`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_capacity: Option<u32>,
    /// `EC2` (default) or `ELB`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check_type: Option<HealthCheckType>,
    /// Time after launch during which health failures are ignored (default 300s as AWS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check_grace_period: Option<Duration>,
    /// Target groups every instance is registered in.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub target_groups: Vec<String>,
    /// How instances are started.
    pub launch_template: LaunchTemplate,
    /// Scale-in order (default `default`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub termination_policy: Option<TerminationPolicy>,
    /// Rolling replacement settings for launch template changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_refresh: Option<InstanceRefresh>,
    /// Automatic scaling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scaling: Option<Scaling>,
    /// `apply` waits until this many instances are healthy in every load
    /// balancer that routes to the group (Terraform's setting); without it
    /// an `EC2` group is ready once its instances are in service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_for_elb_capacity: Option<u32>,
}

impl AutoscalingGroup {
    /// `desired_capacity`, or `min_size` when omitted.
    pub fn desired(&self) -> u32 {
        self.desired_capacity.unwrap_or(self.min_size)
    }
}

/// How an instance is started.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LaunchTemplate {
    /// Command and arguments with `{ip}`, `{port}`, `{instance_id}` placeholders;
    /// a first word `lbctl` runs the binary that applied the spec.
    pub command: Vec<String>,
    /// Extra environment variables (besides `LBCTL_IP`, `LBCTL_PORT`, `LBCTL_INSTANCE_ID`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Port instances listen on (default: the first target group's port, else 8080).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// What only AWS needs; the local provider ignores it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aws: Option<AwsLaunchTemplate>,
}

/// Instance refresh settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InstanceRefresh {
    /// Percentage of desired capacity that stays healthy (default 90).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_healthy_percentage: Option<u32>,
    /// Time a new instance gets before it counts (default 0s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warmup: Option<Duration>,
}

/// Scaling policies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Scaling {
    /// Keep a metric near a target value.
    pub target_tracking: TargetTracking,
}

/// A target tracking policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TargetTracking {
    /// The metric followed.
    pub metric: ScalingMetric,
    /// The value to hold it at.
    pub target_value: f64,
    /// Time between scaling actions (default 300s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cooldown: Option<Duration>,
}

/// Metrics a target tracking policy can follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ScalingMetric {
    /// Requests per second per instance, from the load balancers.
    RequestCountPerTarget,
    /// Average CPU percentage of the instances.
    CpuUtilization,
}
