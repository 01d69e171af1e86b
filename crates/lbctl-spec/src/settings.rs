//! Effective settings: a spec's resources with every omitted field given
//! AWS's default **in context** (the target group's protocol and version,
//! its target type, the kind of load balancer that uses it), as the AWS
//! Elastic Load Balancing and Auto Scaling APIs document them. This is what
//! providers and processes work from; the spec model (`model`) keeps what
//! the user wrote, so that plans can tell "omitted" from "written".
//!
//! Target group health checks (`CreateTargetGroup` in the ELBv2 API
//! reference):
//!
//! | group | check | interval | timeout | healthy | unhealthy | matcher | path |
//! | --- | --- | --- | --- | --- | --- | --- | --- |
//! | HTTP | HTTP | 30s | 6s | 5 | 2 | `200` | `/` |
//! | HTTPS | HTTPS | 30s | 10s | 5 | 2 | `200` | `/` |
//! | HTTP/HTTPS, `GRPC` | same | 30s | 6s / 10s | 5 | 2 | `12` (gRPC) | `/AWS.ALB/healthcheck` |
//! | TCP, UDP | TCP | 30s | 10s | 5 | 2 | none | none |
//! | TCP, UDP with an HTTP(S) check | HTTP(S) | 30s | 10s | 5 | 2 | `200-399` | `/` |
//! | TCP, target type `alb` | HTTP | 30s | 10s | 5 | 2 | `200-399` | `/` |
//! | lambda | off | 35s | 30s | 5 | 5 | `200` | `/` |
//!
//! Elsewhere: `protocol_version` `HTTP1` (HTTP and HTTPS groups only),
//! `algorithm` `round_robin` and `slow_start` 0s (application load
//! balancers only), `deregistration_delay` 300s, stickiness off with a
//! one-day cookie, `proxy_protocol_v2` off; `idle_timeout` 60s (application)
//! or 350s (network); auto-scaling groups: `desired_capacity` = `min_size`,
//! `health_check_type` `EC2`, `health_check_grace_period` 300s,
//! `termination_policy` `default`, instance refresh at 90% healthy with no
//! warmup, target tracking cooldown 300s; functions time out after 3s.
//!
//! Serialized, these are what runtime files carry; fields that older
//! releases did not write have defaults, so their files still read.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::duration::Duration;
use crate::model::*;

/// The default path of a gRPC health check: AWS's.
pub const GRPC_HEALTH_CHECK_PATH: &str = "/AWS.ALB/healthcheck";

/// A target group's effective settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetGroup {
    /// Protocol to targets (`HTTP` for lambda groups, which have none).
    pub protocol: TargetProtocol,
    /// HTTP version to targets; `None` for TCP, UDP and lambda groups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol_version: Option<ProtocolVersion>,
    /// Traffic port; `None` for lambda groups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// What the targets are.
    pub target_type: TargetType,
    /// Health checks.
    pub health_check: HealthCheck,
    /// Selection algorithm; `None` for network load balancers' groups (flow hash).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub algorithm: Option<Algorithm>,
    /// How long a deregistered target drains at most.
    pub deregistration_delay: Duration,
    /// Ramp-up period for new targets (0s: off).
    pub slow_start: Duration,
    /// Load-balancer cookie stickiness.
    pub stickiness: Stickiness,
    /// Registered targets.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<Target>,
    /// Send the PROXY v2 header to targets.
    #[serde(default)]
    pub proxy_protocol_v2: bool,
}

impl TargetGroup {
    /// The HTTP version to targets (HTTP/1.1 where the group has none).
    pub fn version(&self) -> ProtocolVersion {
        self.protocol_version.unwrap_or(ProtocolVersion::Http1)
    }

    /// The selection algorithm (round robin where the group has none).
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm.unwrap_or(Algorithm::RoundRobin)
    }
}

/// A target group's effective health checks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthCheck {
    /// Whether targets are checked at all (lambda groups: off by default).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Protocol; `None` only in files of older releases (the group's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<HealthCheckProtocol>,
    /// Port.
    pub port: HealthCheckPort,
    /// Path of HTTP(S) checks, gRPC method of `GRPC` groups; `None` for TCP checks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Time between checks.
    pub interval: Duration,
    /// Time to wait for an answer.
    pub timeout: Duration,
    /// Consecutive successes to become healthy.
    pub healthy_threshold: u32,
    /// Consecutive failures to become unhealthy.
    pub unhealthy_threshold: u32,
    /// Codes counted as success (HTTP status codes, or gRPC status codes for
    /// `GRPC` groups); `None` for TCP checks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matcher: Option<String>,
}

fn yes() -> bool {
    true
}

/// Effective stickiness.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stickiness {
    /// On or off.
    pub enabled: bool,
    /// Cookie lifetime.
    pub duration: Duration,
}

/// An auto-scaling group's effective settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AutoscalingGroup {
    /// Lower bound of the group's size.
    pub min_size: u32,
    /// Upper bound of the group's size.
    pub max_size: u32,
    /// Instances to run.
    pub desired_capacity: u32,
    /// `EC2` or `ELB`.
    pub health_check_type: HealthCheckType,
    /// Time after launch during which health failures are ignored.
    pub health_check_grace_period: Duration,
    /// Target groups every instance is registered in.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub target_groups: Vec<String>,
    /// How instances are started.
    pub launch_template: LaunchTemplate,
    /// Scale-in order.
    pub termination_policy: TerminationPolicy,
    /// Rolling replacement on launch template changes; `None`: no rolling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_refresh: Option<InstanceRefresh>,
    /// Automatic scaling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scaling: Option<Scaling>,
    /// Instances `apply` waits to see healthy in the load balancers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_for_elb_capacity: Option<u32>,
}

impl AutoscalingGroup {
    /// `desired_capacity` (kept as a method for the callers that read it so).
    pub fn desired(&self) -> u32 {
        self.desired_capacity
    }
}

/// Effective instance refresh settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceRefresh {
    /// Percentage of desired capacity that stays in service.
    pub min_healthy_percentage: u32,
    /// Time a new instance gets before it counts.
    pub warmup: Duration,
}

/// Effective scaling policies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scaling {
    /// Keep a metric near a target value.
    pub target_tracking: TargetTracking,
}

/// An effective target tracking policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetTracking {
    /// The metric followed.
    pub metric: ScalingMetric,
    /// The value to hold it at.
    pub target_value: f64,
    /// Time between scaling actions.
    pub cooldown: Duration,
}

/// A function's effective settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Function {
    /// Command and arguments.
    pub command: Vec<String>,
    /// Time limit per invocation.
    pub timeout: Duration,
    /// Extra environment variables.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
}

/// Which kind of load balancer a target group serves, from its protocol
/// and target type.
fn for_network(protocol: TargetProtocol) -> bool {
    matches!(protocol, TargetProtocol::Tcp | TargetProtocol::Udp)
}

impl crate::model::TargetGroup {
    /// The effective settings: what is written, and AWS's defaults in context.
    pub fn resolve(&self) -> TargetGroup {
        let target_type = self.target_type.unwrap_or(TargetType::Instance);
        let lambda = target_type == TargetType::Lambda;
        let protocol = self.protocol.unwrap_or(TargetProtocol::Http);
        let network = !lambda && for_network(protocol);
        let protocol_version = (!lambda && !network).then(|| self.protocol_version.unwrap_or(ProtocolVersion::Http1));
        let written = self.health_check.clone().unwrap_or_default();
        let check_protocol = written.protocol.unwrap_or(match protocol {
            // AWS checks an application load balancer registered as a
            // target over HTTP (HTTP or HTTPS only).
            _ if target_type == TargetType::Alb => HealthCheckProtocol::Http,
            TargetProtocol::Https => HealthCheckProtocol::Https,
            TargetProtocol::Tcp | TargetProtocol::Udp => HealthCheckProtocol::Tcp,
            TargetProtocol::Http => HealthCheckProtocol::Http,
        });
        let tcp_check = check_protocol == HealthCheckProtocol::Tcp;
        let grpc = protocol_version == Some(ProtocolVersion::Grpc);
        let seconds = Duration::from_secs;
        let (interval, timeout, unhealthy) = match (lambda, check_protocol) {
            (true, _) => (seconds(35), seconds(30), 5),
            (false, HealthCheckProtocol::Http) if !network => (seconds(30), seconds(6), 2),
            (false, _) => (seconds(30), seconds(10), 2),
        };
        let default_matcher = match (grpc, network) {
            (true, _) => "12",
            (false, true) => "200-399",
            (false, false) => "200",
        };
        let default_path = if grpc { GRPC_HEALTH_CHECK_PATH } else { "/" };
        let health_check = HealthCheck {
            enabled: written.enabled.unwrap_or(!lambda),
            protocol: Some(check_protocol),
            port: written.port.clone().unwrap_or(HealthCheckPort::Named(TrafficPort::TrafficPort)),
            path: (!tcp_check).then(|| written.path.clone().unwrap_or_else(|| default_path.to_string())),
            interval: written.interval.unwrap_or(interval),
            timeout: written.timeout.unwrap_or(timeout),
            healthy_threshold: written.healthy_threshold.unwrap_or(5),
            unhealthy_threshold: written.unhealthy_threshold.unwrap_or(unhealthy),
            matcher: (!tcp_check).then(|| written.matcher.clone().unwrap_or_else(|| default_matcher.to_string())),
        };
        let stickiness = self.stickiness.clone().unwrap_or_default();
        TargetGroup {
            protocol,
            protocol_version,
            port: if lambda { None } else { Some(self.port.unwrap_or(80)) },
            target_type,
            health_check,
            algorithm: (!network && !lambda).then(|| self.algorithm.unwrap_or(Algorithm::RoundRobin)),
            deregistration_delay: self.deregistration_delay.unwrap_or(seconds(300)),
            slow_start: self.slow_start.unwrap_or(seconds(0)),
            stickiness: Stickiness {
                enabled: stickiness.enabled.unwrap_or(false),
                duration: stickiness.duration.unwrap_or(seconds(86_400)),
            },
            targets: self.targets.clone(),
            proxy_protocol_v2: self.proxy_protocol_v2.unwrap_or(false),
        }
    }

    /// Whether this group's targets sit behind a network load balancer
    /// (TCP or UDP groups), where only connection-level settings apply.
    pub fn is_network(&self) -> bool {
        self.target_type != Some(TargetType::Lambda) && for_network(self.protocol.unwrap_or(TargetProtocol::Http))
    }
}

impl crate::model::AutoscalingGroup {
    /// The effective settings: what is written, and AWS's defaults.
    pub fn resolve(&self) -> AutoscalingGroup {
        AutoscalingGroup {
            min_size: self.min_size,
            max_size: self.max_size,
            desired_capacity: self.desired(),
            health_check_type: self.health_check_type.unwrap_or(HealthCheckType::Ec2),
            health_check_grace_period: self.health_check_grace_period.unwrap_or(Duration::from_secs(300)),
            target_groups: self.target_groups.clone(),
            launch_template: self.launch_template.clone(),
            termination_policy: self.termination_policy.unwrap_or(TerminationPolicy::Default),
            instance_refresh: self.instance_refresh.as_ref().map(|it| InstanceRefresh {
                min_healthy_percentage: it.min_healthy_percentage.unwrap_or(90),
                warmup: it.warmup.unwrap_or(Duration::from_secs(0)),
            }),
            scaling: self.scaling.as_ref().map(|it| Scaling {
                target_tracking: TargetTracking {
                    metric: it.target_tracking.metric,
                    target_value: it.target_tracking.target_value,
                    cooldown: it.target_tracking.cooldown.unwrap_or(Duration::from_secs(300)),
                },
            }),
            wait_for_elb_capacity: self.wait_for_elb_capacity,
        }
    }
}

impl crate::model::Function {
    /// The effective settings.
    pub fn resolve(&self) -> Function {
        Function {
            command: self.command.clone(),
            timeout: self.timeout.unwrap_or(Duration::from_secs(3)),
            env: self.env.clone(),
        }
    }
}

impl crate::model::LoadBalancer {
    /// The idle timeout: AWS's default is 60s for application load
    /// balancers and 350s for network ones.
    pub fn idle_timeout(&self) -> Duration {
        self.idle_timeout.unwrap_or(match self.kind {
            LoadBalancerType::Application => Duration::from_secs(60),
            LoadBalancerType::Network => Duration::from_secs(350),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(yaml: &str) -> TargetGroup {
        serde_yaml::from_str::<crate::model::TargetGroup>(yaml).unwrap().resolve()
    }

    #[test]
    fn defaults_follow_the_group() {
        let http = group("{}");
        assert_eq!(http.health_check.path.as_deref(), Some("/"));
        assert_eq!(http.health_check.matcher.as_deref(), Some("200"));
        assert_eq!(
            (http.health_check.interval.to_string(), http.health_check.timeout.to_string()),
            ("30s".into(), "6s".into())
        );
        assert_eq!(http.algorithm, Some(Algorithm::RoundRobin));

        let tcp = group("{ protocol: TCP }");
        assert_eq!((tcp.health_check.path, tcp.health_check.matcher), (None, None));
        assert_eq!(tcp.health_check.protocol, Some(HealthCheckProtocol::Tcp));
        assert_eq!((tcp.protocol_version, tcp.algorithm), (None, None));
        assert_eq!(tcp.health_check.timeout.to_string(), "10s");

        let tcp_http = group("{ protocol: TCP, health_check: { protocol: HTTP } }");
        assert_eq!(tcp_http.health_check.matcher.as_deref(), Some("200-399"));

        let grpc = group("{ protocol_version: GRPC }");
        assert_eq!(grpc.health_check.path.as_deref(), Some(GRPC_HEALTH_CHECK_PATH));
        assert_eq!(grpc.health_check.matcher.as_deref(), Some("12"));
        let grpc_200 = group("{ protocol_version: GRPC, health_check: { matcher: '200' } }");
        assert_eq!(grpc_200.health_check.matcher.as_deref(), Some("200"), "written, never reinterpreted");

        let lambda = group("{ target_type: lambda }");
        assert!(!lambda.health_check.enabled);
        assert_eq!(
            (lambda.health_check.interval.to_string(), lambda.health_check.unhealthy_threshold),
            ("35s".into(), 5)
        );
        assert_eq!((lambda.port, lambda.protocol_version), (None, None));
    }

    /// A target group as a release before this one wrote it in `group.json`
    /// still reads.
    #[test]
    fn files_of_older_releases_read() {
        let old = r#"{"protocol":"HTTP","protocol_version":"HTTP1","port":8080,"target_type":"instance",
            "health_check":{"port":"traffic-port","path":"/health","interval":"1s","timeout":"500ms",
            "healthy_threshold":2,"unhealthy_threshold":2,"matcher":"200"},"algorithm":"round_robin",
            "deregistration_delay":"2s","slow_start":"0s","stickiness":{"enabled":false,"duration":"1day"},
            "proxy_protocol_v2":false}"#;
        let settings: TargetGroup = serde_json::from_str(old).unwrap();
        assert!(settings.health_check.enabled);
        assert_eq!(settings.health_check.protocol, None);
        assert_eq!(settings.health_check.path.as_deref(), Some("/health"));
    }
}
