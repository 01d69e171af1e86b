//! What the local provider can do today, and what the machine allows.
//!
//! Unsupported features are reported by spec path so that `plan` can name
//! them and `apply` can refuse, instead of silently ignoring a setting.

use std::net::{Ipv4Addr, TcpListener, UdpSocket};

use lbctl_plan::{Finding, Kind, Resource, Severity};
use lbctl_spec::settings::{AutoscalingGroup, TargetGroup};
use lbctl_spec::{ListenerProtocol, LoadBalancer, LoadBalancerType, TargetProtocol};

use crate::provider::{lb_settings, settings, LocalProvider, ASG_DERIVED};

fn not_done(path: String, message: &str) -> Finding {
    Finding { path, message: message.to_string(), severity: Severity::Unsupported }
}

/// What cannot be applied here: an error at `path`.
fn invalid(path: String, message: String) -> Finding {
    Finding { path, message, severity: Severity::Invalid }
}

/// What the spec asks that the local provider does not do, and certificate
/// files that cannot serve: from the spec and the files it names alone.
pub(crate) fn check_spec(provider: &LocalProvider, desired: &[Resource]) -> Vec<Finding> {
    let mut found = Vec::new();
    for resource in desired {
        let base = resource.address.spec_path();
        match resource.address.kind {
            Kind::TargetGroup => {
                let Ok(group) = settings::<TargetGroup>(&resource.resolved, &[]) else { continue };
                target_group(&base, &group, &mut found);
            }
            Kind::LoadBalancer => {
                let Ok(lb) = lb_settings(&resource.resolved) else { continue };
                crate::certificates::check_files(&base, provider.working_dir(), &lb, &mut found);
                if lb.worker_threads.is_some_and(|it| it > MAX_WORKER_THREADS) {
                    let message = format!("worker_threads must be at most {MAX_WORKER_THREADS} here: they are threads of one process on this machine");
                    found.push(invalid(format!("{base}.worker_threads"), message));
                }
            }
            Kind::AutoscalingGroup => {
                let Ok(group) = settings::<AutoscalingGroup>(&resource.resolved, ASG_DERIVED) else { continue };
                if group.max_size > MAX_INSTANCES {
                    let message = format!(
                        "max_size must be at most {MAX_INSTANCES} here: each instance is a process on this machine"
                    );
                    found.push(invalid(format!("{base}.max_size"), message));
                }
            }
            Kind::Function => {}
        }
    }
    found
}

/// The most instances a group may have locally: each is a process.
const MAX_INSTANCES: u32 = 1000;
/// The most threads a load balancer's proxy may have locally.
const MAX_WORKER_THREADS: u32 = 1024;

/// What stands in the way on this machine: static IPs and ports taken by
/// others, instances named by id that are not there.
pub(crate) fn conflicts(provider: &LocalProvider, desired: &[Resource]) -> anyhow::Result<Vec<Finding>> {
    let mut found = Vec::new();
    let load_balancers: Vec<&str> =
        desired.iter().filter(|it| it.address.kind == Kind::LoadBalancer).map(|it| it.address.name.as_str()).collect();
    // Ports held by any of this stack's running proxies are not a clash:
    // they may move between load balancers within one apply (deletions run
    // first), and a proxy an interrupted apply left behind is adopted.
    let held_by_stack: Vec<u16> = provider.all_proxy_statuses().into_iter().flat_map(|(_, it)| it.listening).collect();
    for resource in desired.iter().filter(|it| it.address.kind == Kind::LoadBalancer) {
        let base = resource.address.spec_path();
        let Ok(lb) = lb_settings(&resource.resolved) else { continue };
        static_ip_free(provider, &base, &resource.address.name, &lb, &load_balancers, &mut found)?;
        ports_free(provider, resource, &lb, &held_by_stack, &mut found)?;
    }
    instances_live(provider, desired, &mut found);
    Ok(found)
}

/// Instances a target group names by id must be live instances of the stack.
fn instances_live(provider: &LocalProvider, desired: &[Resource], found: &mut Vec<Finding>) {
    let mut live = None;
    for resource in desired.iter().filter(|it| it.address.kind == Kind::TargetGroup) {
        let Ok(group) = settings::<TargetGroup>(&resource.resolved, &[]) else { continue };
        for (idx, target) in group.targets.iter().enumerate() {
            let Some(id) = &target.id else { continue };
            let live = live.get_or_insert_with(|| provider.live_instances());
            if live.iter().any(|(it, _)| it == id) {
                continue;
            }
            let listed: Vec<String> = live.iter().map(|(id, group)| format!("{id} ({group})")).collect();
            let listed = if listed.is_empty() { "none".to_string() } else { listed.join(", ") };
            found.push(invalid(
                format!("{}.targets[{idx}].id", resource.address.spec_path()),
                format!("`{id}` is not a live instance of this stack (live: {listed})"),
            ));
        }
    }
}

fn target_group(base: &str, group: &TargetGroup, found: &mut Vec<Finding>) {
    if group.proxy_protocol_v2 && group.protocol != TargetProtocol::Tcp {
        let message =
            "the PROXY protocol is sent on TCP connections only (TCP target groups of network load balancers)";
        found.push(not_done(format!("{base}.proxy_protocol_v2"), message));
    }
}

/// A given `static_ip` must not be another stack's, nor allocated to
/// another load balancer of this one.
fn static_ip_free(
    provider: &LocalProvider,
    base: &str,
    name: &str,
    lb: &LoadBalancer,
    load_balancers: &[&str],
    found: &mut Vec<Finding>,
) -> anyhow::Result<()> {
    let Some(ip) = lb.static_ip.as_deref().and_then(|it| it.parse::<Ipv4Addr>().ok()) else { return Ok(()) };
    let Some(owner) = provider.static_ip_holder(ip, name)? else { return Ok(()) };
    let same_stack = owner.state_dir == provider.state_dir();
    if same_stack && !load_balancers.contains(&owner.load_balancer.as_str()) {
        // Held for a load balancer this stack no longer has: this one takes it.
        return Ok(());
    }
    let whose =
        if same_stack { "this stack".to_string() } else { format!("the stack in {}", owner.state_dir.display()) };
    found.push(invalid(
        format!("{base}.static_ip"),
        format!("static_ip {ip} is held by load balancer `{}` of {whose}", owner.load_balancer),
    ));
    Ok(())
}

/// Every listener port must be free on the machine, at the load balancer's
/// address (127.0.0.1, or a network load balancer's static IP; for one yet
/// to be allocated, not held on every address), unless this stack's own
/// running proxy already holds it (`held_by_stack`).
fn ports_free(
    provider: &LocalProvider,
    resource: &Resource,
    lb: &LoadBalancer,
    held_by_stack: &[u16],
    found: &mut Vec<Finding>,
) -> anyhow::Result<()> {
    let ip = match lb.kind {
        LoadBalancerType::Application => Some(Ipv4Addr::LOCALHOST),
        LoadBalancerType::Network => provider.known_static_ip(&resource.address.name, lb)?,
    };
    for (idx, listener) in lb.listeners.iter().enumerate() {
        if held_by_stack.contains(&listener.port) {
            continue;
        }
        let udp = listener.protocol == ListenerProtocol::Udp;
        let path = format!("{}.listeners[{idx}].port", resource.address.spec_path());
        let Some(ip) = ip else {
            // A newly allocated address has nothing bound to it yet; a
            // socket bound to every address (0.0.0.0) takes its ports too.
            if let Some(holder) = crate::holders::holder_of(Ipv4Addr::UNSPECIFIED, listener.port, udp) {
                let message = format!(
                    "port {} is taken on every address of this machine (0.0.0.0): it is held by {holder}",
                    listener.port
                );
                found.push(invalid(path, message));
            }
            continue;
        };
        let bound = if udp {
            UdpSocket::bind((ip, listener.port)).map(drop)
        } else {
            TcpListener::bind((ip, listener.port)).map(drop)
        };
        if let Err(err) = bound {
            let holder = crate::holders::holder_of(ip, listener.port, udp)
                .map(|it| format!(": it is held by {it}"))
                .unwrap_or_else(|| format!(" ({err})"));
            let message = format!("port {} on {ip} is already in use on this machine{holder}", listener.port);
            found.push(invalid(path, message));
        }
    }
    Ok(())
}
