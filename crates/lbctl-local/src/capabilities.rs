//! What the local provider can do today, and what the machine allows.
//!
//! Unsupported features are reported by spec path so that `plan` can name
//! them and `apply` can refuse, instead of silently ignoring a setting.

use std::net::{Ipv4Addr, TcpListener};

use lbctl_plan::{Finding, Kind, Resource, Severity};
use lbctl_spec::{LoadBalancer, LoadBalancerType, TargetGroup, TargetProtocol, TargetType};

use crate::provider::{lb_settings, settings, LocalProvider};

fn unsupported(path: String, message: &str) -> Finding {
    Finding { path, message: message.to_string(), severity: Severity::Unsupported }
}

pub(crate) fn check(provider: &LocalProvider, desired: &[Resource]) -> Vec<Finding> {
    let mut found = Vec::new();
    for resource in desired {
        let base = resource.address.spec_path();
        match resource.address.kind {
            Kind::LoadBalancer => {
                let Ok(lb) = lb_settings(&resource.attributes) else { continue };
                load_balancer(&base, &lb, &mut found);
                crate::certificates::check_files(&base, provider.working_dir(), &lb, &mut found);
                ports_free(provider, resource, &lb, &mut found);
            }
            Kind::TargetGroup => {
                let Ok(group) = settings::<TargetGroup>(&resource.attributes, &[]) else { continue };
                target_group(&base, &group, &mut found);
            }
            Kind::AutoscalingGroup | Kind::Function => {}
        }
    }
    found
}

fn load_balancer(base: &str, lb: &LoadBalancer, found: &mut Vec<Finding>) {
    if lb.kind == LoadBalancerType::Network {
        found.push(unsupported(format!("{base}.type"), "network load balancers are not supported yet"));
    }
}

fn target_group(base: &str, group: &TargetGroup, found: &mut Vec<Finding>) {
    let mut note = |field: &str, message: &str| found.push(unsupported(format!("{base}.{field}"), message));
    match group.target_type {
        TargetType::Alb => note("target_type", "alb targets are not supported yet"),
        TargetType::Instance | TargetType::Ip | TargetType::Lambda => {}
    }
    if matches!(group.protocol, TargetProtocol::Tcp | TargetProtocol::Udp) && group.target_type != TargetType::Alb {
        note("protocol", "only HTTP and HTTPS target groups are supported yet");
    }
    if group.proxy_protocol_v2 {
        note("proxy_protocol_v2", "the PROXY protocol is not supported yet");
    }
}

/// Every listener port must be free on the machine, unless this stack's own
/// running proxy already holds it.
fn ports_free(provider: &LocalProvider, resource: &Resource, lb: &LoadBalancer, found: &mut Vec<Finding>) {
    // Ports held by any of this stack's running proxies are not a clash:
    // they may move between load balancers within one apply (deletions run
    // first), and a proxy an interrupted apply left behind is adopted.
    let held_by_stack: Vec<u16> = provider.all_proxy_statuses().into_iter().flat_map(|(_, it)| it.listening).collect();
    for (idx, listener) in lb.listeners.iter().enumerate() {
        if held_by_stack.contains(&listener.port) {
            continue;
        }
        if let Err(err) = TcpListener::bind((Ipv4Addr::LOCALHOST, listener.port)) {
            found.push(Finding {
                path: format!("{}.listeners[{idx}].port", resource.address.spec_path()),
                message: format!("port {} on 127.0.0.1 is already in use on this machine ({err})", listener.port),
                severity: Severity::Invalid,
            });
        }
    }
}
