//! End-to-end tests: the real `lbctl` binary against real processes, real
//! sockets and a real HTTP client (curl). One test binary; one module per
//! area. Every test works in its own temporary directory with free ports and
//! destroys what it applied, even when it fails (`util::Stack`'s drop).

mod util;

/// The quickstart example: routing, scaling in place, self-healing, drift.
mod quickstart;

/// The walkthrough's first stage: instances registered by id, then the group attached.
mod walkthrough;

/// Auto-scaling groups: ELB and EC2 health, supervisor recovery.
mod autoscaling;

/// Instance refresh: a launch template change under load, and its rollback.
mod refresh;

/// Draining scale-in and interrupted applies.
mod scale_in;

/// Target tracking scaling policies: scale out under load, back in after.
mod scaling;

/// Launch templates that run something other than `lbctl worker`.
mod custom_command;

/// Rule conditions and actions of application load balancers.
mod routing;

/// Malformed and hostile clients: 400, 431, smuggling, slow heads, idle
/// timeout, silent connections, the connection limit.
mod hardening;

/// Zero failed requests under load through applies and a killed instance.
mod hitless;

/// A shared machine: private state and runtime files, a refused address
/// table directory, runtime files that cannot be trusted.
mod shared_machine;

/// Bad specs, locks, confirmation and saved plans: errors that lose nothing.
mod safety;

/// Lambda targets, stickiness, algorithms, slow start and target states.
mod targets;

/// `lbctl worker` on its own: ids, health, fault switches.
mod worker;

/// HTTPS listeners, HTTP/2 (ALPN, h2c), HTTPS and HTTP/2 target groups, gRPC.
mod tls;

/// Network load balancers: TCP, UDP and TLS listeners, static IPs, flow
/// hashing, PROXY protocol v2, ALB targets, hitless applies, draining, idle
/// timeout, the network example.
mod network;

/// `lbctl export`: CloudFormation and Terraform, linted and parsed.
mod export;

/// Access logs in AWS's format, Prometheus metrics.
mod observe;

/// Printed names resolve for curl, Python and wrk.
mod names;

/// `lbctl console` in headless Chromium.
mod console;

/// The aws provider against moto's server: apply, drift, destroy.
mod aws;

/// A stack of the previous release, planned and upgraded by this one.
mod upgrade;

/// Random kills of instances, supervisors and applies under load.
mod chaos;

/// The README's specs and commands, as a newcomer runs them.
mod readme;

/// Project conventions as tests.
mod tidy;
