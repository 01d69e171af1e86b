//! Load balancers: the ELB load balancer (a network one on an Elastic IP
//! per subnet), its listeners (certificates imported into ACM when the
//! spec makes or names them) and their rules, converged to the spec on
//! every apply: listeners and rules the spec no longer has are deleted,
//! moved rules get their new priority (`SetRulePriorities`), the others
//! are modified or created.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use aws_sdk_elasticloadbalancingv2::types::{
    Certificate as ElbCertificate, ListenerAttribute, LoadBalancerAttribute, LoadBalancerSchemeEnum,
    LoadBalancerTypeEnum, ProtocolEnum, RulePriorityPair, SubnetMapping, Tag,
};
use aws_smithy_types::Blob;
use lbctl_plan::{
    Applied, DependencyOutputs, Finding, Kind, LiveStatus, Observed, PartlyApplied, Progress, Readiness, Resource,
    ResourceState, Severity,
};
use lbctl_spec::{Certificate, GeneratedCertificate, ListenerProtocol, LoadBalancer, LoadBalancerType, Rule};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::api::{code, sdk_error, unless_missing};
use crate::mapping::{self, GroupRef};
use crate::{ec2, private, settings, AwsProvider};

/// What the state keeps of a load balancer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Private {
    /// Its ARN.
    pub arn: String,
    /// Its AWS name.
    pub name: String,
    /// Its DNS name.
    pub dns_name: String,
    /// A network load balancer's Elastic IPs: (allocation id, address).
    #[serde(default)]
    pub addresses: Vec<(String, String)>,
    /// Its listeners.
    #[serde(default)]
    pub listeners: Vec<ListenerPrivate>,
}

/// What the state keeps of a listener.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct ListenerPrivate {
    /// Port.
    pub port: u16,
    /// Protocol (`HTTP`, `TCP`, ...).
    pub protocol: String,
    /// Its ARN.
    pub arn: String,
    /// The certificate it serves, when lbctl imported it into ACM: (ARN,
    /// what it was made from).
    #[serde(default)]
    pub imported: Option<(String, String)>,
    /// Its rules' ARNs by priority.
    #[serde(default)]
    pub rules: BTreeMap<u32, String>,
}

/// Plan-time checks: certificate files must be there.
pub(crate) fn check_spec(base: &str, resource: &Resource, working_dir: &Path, found: &mut Vec<Finding>) {
    let Ok(lb) = settings::<LoadBalancer>(&resource.resolved, &[]) else { return };
    if lb.access_logs == Some(true) {
        found.push(Finding {
            path: format!("{base}.access_logs"),
            message: "AWS writes access logs to an S3 bucket, which the aws provider does not set up yet".to_string(),
            severity: Severity::Unsupported,
        });
    }
    let written = !resource.attributes["idle_timeout"].is_null();
    if let (LoadBalancerType::Network, Some(idle), true) = (lb.kind, lb.idle_timeout, written) {
        // AWS sets the idle timeout of TCP listeners; UDP and TLS ones keep
        // theirs (120 s and 350 s).
        for (idx, listener) in lb.listeners.iter().enumerate() {
            let fixed = match listener.protocol {
                ListenerProtocol::Udp => 120,
                ListenerProtocol::Tls => 350,
                _ => continue,
            };
            if idle.get().as_secs() != fixed {
                found.push(Finding {
                    path: format!("{base}.idle_timeout"),
                    message: format!(
                        "AWS keeps the idle timeout of {} listeners at {fixed}s (listeners[{idx}]); it sets TCP listeners' only",
                        lbctl_spec::wire_name(&listener.protocol)
                    ),
                    severity: Severity::Unsupported,
                });
            }
        }
    }
    for (idx, listener) in lb.listeners.iter().enumerate() {
        if let Some(Certificate::Files { cert, key }) = &listener.certificate {
            for (field, file) in [("cert", cert), ("key", key)] {
                if !working_dir.join(file).is_file() {
                    found.push(Finding {
                        path: format!("{base}.listeners[{idx}].certificate.{field}"),
                        message: format!("{file} does not exist beside the spec"),
                        severity: Severity::Invalid,
                    });
                }
            }
        }
    }
}

fn listener_key(port: u16, protocol: &str) -> String {
    format!("{port}/{protocol}")
}

/// The target groups the load balancer's actions forward to, by name.
fn groups(lb: &LoadBalancer, dependencies: &DependencyOutputs) -> Result<BTreeMap<String, GroupRef>> {
    let mut found = BTreeMap::new();
    for (address, computed) in dependencies {
        if address.kind != Kind::TargetGroup {
            continue;
        }
        let arn = computed.get("arn").and_then(Value::as_str).unwrap_or_default().to_string();
        let stickiness = computed.get("stickiness_seconds").and_then(Value::as_i64);
        found.insert(address.name.clone(), GroupRef { arn, stickiness });
    }
    let _ = lb;
    Ok(found)
}

/// Creates or converges a load balancer.
pub(crate) fn apply(
    provider: &AwsProvider,
    prior: Option<&ResourceState>,
    resource: &Resource,
    dependencies: &DependencyOutputs,
    progress: &dyn Progress,
) -> Result<Applied> {
    let clients = provider.clients()?;
    let name = &resource.address.name;
    let lb: LoadBalancer = settings(&resource.resolved, &[])?;
    let network = lb.kind == LoadBalancerType::Network;
    let mut state: Private = prior.map(private).unwrap_or_default();
    let aws_name = provider.aws_name(name, 32);

    let found = if state.arn.is_empty() { by_name(provider, &aws_name)? } else { describe(provider, &state.arn)? };
    match found {
        Some(existing) => {
            state.arn = existing.load_balancer_arn().unwrap_or_default().to_string();
            state.dns_name = existing.dns_name().unwrap_or_default().to_string();
            state.name = aws_name.clone();
        }
        None => {
            let subnets = provider.network()?.subnets.clone();
            let mut request = clients
                .elb
                .create_load_balancer()
                .name(&aws_name)
                .scheme(LoadBalancerSchemeEnum::InternetFacing)
                .r#type(if network { LoadBalancerTypeEnum::Network } else { LoadBalancerTypeEnum::Application });
            if network {
                // The static addresses: an Elastic IP per subnet, kept
                // across re-creation until the stack is destroyed.
                progress.report("allocating Elastic IPs");
                state.addresses = addresses(provider, &resource.address.to_string(), subnets.len())?;
                for (subnet, (allocation, _)) in subnets.iter().zip(&state.addresses) {
                    request = request
                        .subnet_mappings(SubnetMapping::builder().subnet_id(subnet).allocation_id(allocation).build());
                }
            } else {
                request = request.set_subnets(Some(subnets)).set_security_groups(
                    (!provider.options.aws.security_groups.is_empty())
                        .then(|| provider.options.aws.security_groups.clone()),
                );
            }
            for (key, value) in provider.tags(&resource.address.to_string()) {
                request = request.tags(Tag::builder().key(key).value(value).build());
            }
            progress.report("creating the load balancer");
            let answer = clients.run(request.send()).map_err(|err| sdk_error("CreateLoadBalancer", err))?;
            let created = answer.load_balancers().first().context("CreateLoadBalancer answered no load balancer")?;
            state.arn = created.load_balancer_arn().unwrap_or_default().to_string();
            state.dns_name = created.dns_name().unwrap_or_default().to_string();
            state.name = aws_name.clone();
        }
    }
    let converged = (|| -> Result<()> {
        if !network {
            let idle = lb.idle_timeout().get().as_secs().clamp(1, 4000);
            let attribute =
                LoadBalancerAttribute::builder().key("idle_timeout.timeout_seconds").value(idle.to_string()).build();
            clients
                .run(
                    clients
                        .elb
                        .modify_load_balancer_attributes()
                        .load_balancer_arn(&state.arn)
                        .attributes(attribute)
                        .send(),
                )
                .map_err(|err| sdk_error("ModifyLoadBalancerAttributes", err))?;
        }

        let groups = groups(&lb, dependencies)?;
        let prior_lb: Option<LoadBalancer> = prior.and_then(|it| settings(&it.resolved, &[]).ok());
        // A network load balancer's idle timeout is set on its TCP
        // listeners only when the spec writes one (AWS's default is 350 s).
        let tcp_idle = lb.idle_timeout.filter(|_| network && !resource.attributes["idle_timeout"].is_null());
        converge_listeners(provider, &lb, prior_lb.as_ref(), tcp_idle, &groups, &mut state, progress)
    })();

    let mut computed =
        BTreeMap::from([("arn".to_string(), json!(state.arn)), ("dns_name".to_string(), json!(state.dns_name))]);
    if network {
        let ips: Vec<&str> = state.addresses.iter().map(|(_, ip)| ip.as_str()).collect();
        computed.insert("static_ip".to_string(), json!(ips.join(", ")));
    }
    let applied = Applied { private: serde_json::to_value(&state)?, computed };
    match converged {
        Ok(()) => Ok(applied),
        Err(error) => Err(PartlyApplied { applied, error }.into()),
    }
}

fn converge_listeners(
    provider: &AwsProvider,
    lb: &LoadBalancer,
    prior: Option<&LoadBalancer>,
    tcp_idle: Option<lbctl_spec::Duration>,
    groups: &BTreeMap<String, GroupRef>,
    state: &mut Private,
    progress: &dyn Progress,
) -> Result<()> {
    let clients = provider.clients()?;
    let answer = clients
        .run(clients.elb.describe_listeners().load_balancer_arn(&state.arn).send())
        .map_err(|err| sdk_error("DescribeListeners", err))?;
    let existing: BTreeMap<String, String> = answer
        .listeners()
        .iter()
        .filter_map(|it| {
            Some((
                listener_key(u16::try_from(it.port()?).ok()?, it.protocol()?.as_str()),
                it.listener_arn()?.to_string(),
            ))
        })
        .collect();
    let wanted: Vec<String> =
        lb.listeners.iter().map(|it| listener_key(it.port, &lbctl_spec::wire_name(&it.protocol))).collect();
    // Listeners the spec no longer has go first: their ports may be taken
    // again by another protocol.
    for (key, arn) in &existing {
        if !wanted.contains(key) {
            progress.report(&format!("deleting listener {key}"));
            clients
                .run(clients.elb.delete_listener().listener_arn(arn).send())
                .map_err(|err| sdk_error("DeleteListener", err))?;
        }
    }
    let mut listeners = Vec::new();
    for (idx, listener) in lb.listeners.iter().enumerate() {
        let protocol = lbctl_spec::wire_name(&listener.protocol);
        let key = listener_key(listener.port, &protocol);
        let path = format!("listeners[{idx}]");
        let mut kept: ListenerPrivate =
            state.listeners.iter().find(|it| listener_key(it.port, &it.protocol) == key).cloned().unwrap_or(
                ListenerPrivate { port: listener.port, protocol: protocol.clone(), ..ListenerPrivate::default() },
            );
        let certificate = certificate(provider, listener, &mut kept, &state.dns_name, progress)
            .with_context(|| format!("{path}.certificate"))?;
        let action =
            mapping::action(&listener.default_action, groups).with_context(|| format!("{path}.default_action"))?;
        let certificates = certificate.map(|arn| vec![ElbCertificate::builder().certificate_arn(arn).build()]);
        match existing.get(&key) {
            Some(arn) => {
                clients
                    .run(
                        clients
                            .elb
                            .modify_listener()
                            .listener_arn(arn)
                            .default_actions(action)
                            .set_certificates(certificates)
                            .send(),
                    )
                    .map_err(|err| sdk_error("ModifyListener", err))
                    .with_context(|| path.clone())?;
                kept.arn = arn.clone();
            }
            None => {
                progress.report(&format!("creating listener {key}"));
                let answer = clients
                    .run(
                        clients
                            .elb
                            .create_listener()
                            .load_balancer_arn(&state.arn)
                            .port(i32::from(listener.port))
                            .protocol(ProtocolEnum::from(protocol.as_str()))
                            .default_actions(action)
                            .set_certificates(certificates)
                            .send(),
                    )
                    .map_err(|err| sdk_error("CreateListener", err))
                    .with_context(|| path.clone())?;
                kept.arn = answer.listeners().first().and_then(|it| it.listener_arn()).unwrap_or_default().to_string();
            }
        }
        if let (ListenerProtocol::Tcp, Some(idle)) = (listener.protocol, tcp_idle) {
            let seconds = idle.get().as_secs().clamp(60, 6000);
            let attribute =
                ListenerAttribute::builder().key("tcp.idle_timeout.seconds").value(seconds.to_string()).build();
            clients
                .run(clients.elb.modify_listener_attributes().listener_arn(&kept.arn).attributes(attribute).send())
                .map_err(|err| sdk_error("ModifyListenerAttributes", err))
                .with_context(|| path.clone())?;
        }
        let prior_rules: &[Rule] = prior
            .and_then(|it| it.listeners.iter().find(|it| it.port == listener.port && it.protocol == listener.protocol))
            .map(|it| it.rules.as_slice())
            .unwrap_or(&[]);
        converge_rules(provider, &listener.rules, prior_rules, groups, &mut kept, progress)
            .with_context(|| path.clone())?;
        listeners.push(kept);
    }
    // Certificates lbctl imported for listeners that are gone, or that now
    // serve another one.
    for old in &state.listeners {
        if let Some((arn, _)) = &old.imported {
            let still = listeners.iter().any(|it| it.imported.as_ref().is_some_and(|(kept, _)| kept == arn));
            if !still {
                delete_certificate(provider, arn, progress)?;
            }
        }
    }
    state.listeners = listeners;
    Ok(())
}

/// The certificate ARN a TLS listener serves: the one the `aws:` section
/// names, or one lbctl imports into ACM (generated for the DNS name, or
/// the spec's files), kept while what it was made from is the same.
fn certificate(
    provider: &AwsProvider,
    listener: &lbctl_spec::Listener,
    kept: &mut ListenerPrivate,
    dns_name: &str,
    progress: &dyn Progress,
) -> Result<Option<String>> {
    if !matches!(listener.protocol, ListenerProtocol::Https | ListenerProtocol::Tls) {
        return Ok(None);
    }
    if let Some(arn) = listener.aws.as_ref().and_then(|it| it.certificate_arn.clone()) {
        return Ok(Some(arn));
    }
    let (source, pem) = match &listener.certificate {
        Some(Certificate::Generated(GeneratedCertificate::SelfSigned)) | None => {
            let source = format!("self_signed:{dns_name}");
            if let Some((arn, made_from)) = &kept.imported {
                if *made_from == source {
                    return Ok(Some(arn.clone()));
                }
            }
            let made = lbctl_runtime::certificates::generate_certificate(&[dns_name.to_string()])?;
            (source, (made.cert_pem, made.key_pem, Some(made.ca_pem)))
        }
        Some(Certificate::Files { cert, key }) => {
            let dir = &provider.options.working_dir;
            let cert_pem = std::fs::read_to_string(dir.join(cert)).with_context(|| format!("reading {cert}"))?;
            let key_pem = std::fs::read_to_string(dir.join(key)).with_context(|| format!("reading {key}"))?;
            let source = format!("files:{:016x}", fingerprint(&(cert_pem.clone() + &key_pem)));
            if let Some((arn, made_from)) = &kept.imported {
                if *made_from == source {
                    return Ok(Some(arn.clone()));
                }
            }
            // The first certificate is the listener's, the rest its chain.
            let marker = "-----BEGIN CERTIFICATE-----";
            let mut parts: Vec<String> =
                cert_pem.split(marker).filter(|it| !it.trim().is_empty()).map(|it| format!("{marker}{it}")).collect();
            if parts.is_empty() {
                bail!("{cert} holds no PEM certificate");
            }
            let leaf = parts.remove(0);
            (source, (leaf, key_pem, (!parts.is_empty()).then(|| parts.concat())))
        }
    };
    progress.report("importing the certificate into ACM");
    let clients = provider.clients()?;
    let (cert_pem, key_pem, chain) = pem;
    let mut request = clients
        .acm
        .import_certificate()
        .certificate(Blob::new(cert_pem.into_bytes()))
        .private_key(Blob::new(key_pem.into_bytes()))
        .set_certificate_chain(chain.map(|it| Blob::new(it.into_bytes())));
    for (key, value) in provider.tags(&format!("listener {}", listener.port)) {
        request = request
            .tags(aws_sdk_acm::types::Tag::builder().key(key).value(value).build().map_err(|err| anyhow!("{err}"))?);
    }
    let answer = clients.run(request.send()).map_err(|err| sdk_error("ImportCertificate", err))?;
    let arn = answer.certificate_arn().context("ImportCertificate answered no ARN")?.to_string();
    kept.imported = Some((arn.clone(), source));
    Ok(Some(arn))
}

fn fingerprint(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |hash, byte| (hash ^ u64::from(byte)).wrapping_mul(0x100_0000_01b3))
}

/// Rules of one listener, converged: a rule whose conditions and action
/// moved to a free priority gets it (`SetRulePriorities`); rules at
/// priorities the spec no longer has are deleted; the others are modified
/// or created.
fn converge_rules(
    provider: &AwsProvider,
    rules: &[Rule],
    prior: &[Rule],
    groups: &BTreeMap<String, GroupRef>,
    listener: &mut ListenerPrivate,
    progress: &dyn Progress,
) -> Result<()> {
    let clients = provider.clients()?;
    let answer = clients
        .run(clients.elb.describe_rules().listener_arn(&listener.arn).send())
        .map_err(|err| sdk_error("DescribeRules", err))?;
    let mut existing: BTreeMap<u32, String> = answer
        .rules()
        .iter()
        .filter(|it| it.is_default() != Some(true))
        .filter_map(|it| Some((it.priority()?.parse().ok()?, it.rule_arn()?.to_string())))
        .collect();
    let wanted: BTreeMap<u32, &Rule> = rules.iter().map(|it| (it.priority, it)).collect();
    let mut moves = Vec::new();
    for (priority, arn) in &existing {
        if wanted.contains_key(priority) {
            continue;
        }
        let Some(was) = prior.iter().find(|it| it.priority == *priority) else { continue };
        let target = wanted.iter().find(|(to, rule)| {
            !existing.contains_key(to)
                && !moves.iter().any(|(_, taken)| taken == *to)
                && rule.conditions == was.conditions
                && rule.action == was.action
        });
        if let Some((to, _)) = target {
            moves.push((arn.clone(), *to));
        }
    }
    if !moves.is_empty() {
        progress.report("moving rules to their new priorities");
        let mut request = clients.elb.set_rule_priorities();
        for (arn, to) in &moves {
            request = request.rule_priorities(RulePriorityPair::builder().rule_arn(arn).priority(*to as i32).build());
        }
        clients.run(request.send()).map_err(|err| sdk_error("SetRulePriorities", err))?;
        existing.retain(|_, arn| !moves.iter().any(|(moved, _)| moved == arn));
        for (arn, to) in moves {
            existing.insert(to, arn);
        }
    }
    for (priority, arn) in &existing {
        if !wanted.contains_key(priority) {
            progress.report(&format!("deleting rule {priority}"));
            clients.run(clients.elb.delete_rule().rule_arn(arn).send()).map_err(|err| sdk_error("DeleteRule", err))?;
        }
    }
    let mut kept = BTreeMap::new();
    for (priority, rule) in wanted {
        let path = format!("rules[priority {priority}]");
        let action = mapping::action(&rule.action, groups).with_context(|| path.clone())?;
        let conditions = mapping::conditions(&rule.conditions);
        let arn = match existing.get(&priority) {
            Some(arn) => {
                clients
                    .run(
                        clients.elb.modify_rule().rule_arn(arn).set_conditions(Some(conditions)).actions(action).send(),
                    )
                    .map_err(|err| sdk_error("ModifyRule", err))
                    .with_context(|| path.clone())?;
                arn.clone()
            }
            None => {
                progress.report(&format!("creating rule {priority}"));
                let answer = clients
                    .run(
                        clients
                            .elb
                            .create_rule()
                            .listener_arn(&listener.arn)
                            .priority(priority as i32)
                            .set_conditions(Some(conditions))
                            .actions(action)
                            .send(),
                    )
                    .map_err(|err| sdk_error("CreateRule", err))
                    .with_context(|| path.clone())?;
                answer.rules().first().and_then(|it| it.rule_arn()).unwrap_or_default().to_string()
            }
        };
        kept.insert(priority, arn);
    }
    listener.rules = kept;
    Ok(())
}

fn by_name(provider: &AwsProvider, name: &str) -> Result<Option<aws_sdk_elasticloadbalancingv2::types::LoadBalancer>> {
    let clients = provider.clients()?;
    let answer = clients.run(clients.elb.describe_load_balancers().names(name).send());
    Ok(unless_missing(answer, "DescribeLoadBalancers", "LoadBalancerNotFound")?
        .and_then(|it| it.load_balancers().first().cloned()))
}

fn describe(provider: &AwsProvider, arn: &str) -> Result<Option<aws_sdk_elasticloadbalancingv2::types::LoadBalancer>> {
    let clients = provider.clients()?;
    let answer = clients.run(clients.elb.describe_load_balancers().load_balancer_arns(arn).send());
    Ok(unless_missing(answer, "DescribeLoadBalancers", "LoadBalancerNotFound")?
        .and_then(|it| it.load_balancers().first().cloned()))
}

/// `count` Elastic IPs of a network load balancer: those it had (tagged
/// with the stack and the load balancer), and new ones.
fn addresses(provider: &AwsProvider, resource: &str, count: usize) -> Result<Vec<(String, String)>> {
    let stack = provider.options.stack.clone();
    let answer = provider
        .ec2("DescribeAddresses", ec2::filters(&[("tag:lbctl:stack", &stack), ("tag:lbctl:resource", resource)]))?;
    let mut found: Vec<(String, String)> =
        ec2::addresses(&answer)?.into_iter().map(|it| (it.allocation_id, it.public_ip)).collect();
    found.sort();
    while found.len() < count {
        let tags: Vec<(&str, String)> = provider.tags(resource);
        let tags: Vec<(&str, &str)> = tags.iter().map(|(key, value)| (*key, value.as_str())).collect();
        let mut params = vec![("Domain".to_string(), "vpc".to_string())];
        params.extend(ec2::tag_specification("elastic-ip", &tags));
        let answer = provider.ec2("AllocateAddress", params)?;
        let allocation = ec2::first(&answer, "allocationId")?.context("AllocateAddress answered no allocation id")?;
        let ip = ec2::first(&answer, "publicIp")?.unwrap_or_default();
        found.push((allocation, ip));
    }
    found.truncate(count);
    Ok(found)
}

/// After the stack's destroy: its Elastic IPs, released.
pub(crate) fn release_addresses(provider: &AwsProvider) -> Result<Vec<String>> {
    let stack = provider.options.stack.clone();
    let answer = provider.ec2("DescribeAddresses", ec2::filters(&[("tag:lbctl:stack", &stack)]))?;
    let mut released = Vec::new();
    for address in ec2::addresses(&answer)? {
        // A deleted network load balancer lets go of its addresses a
        // little after it is gone.
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            match provider.ec2("ReleaseAddress", vec![("AllocationId".to_string(), address.allocation_id.clone())]) {
                Ok(_) => break,
                Err(err) if ec2::code(&err) == Some("InvalidAllocationID.NotFound") => break,
                Err(err) if ec2::code(&err) == Some("InvalidIPAddress.InUse") && Instant::now() < deadline => {
                    std::thread::sleep(provider.poll())
                }
                Err(err) => return Err(err.context(format!("releasing Elastic IP {}", address.public_ip))),
            }
        }
        released.push(format!("Elastic IP {}", address.public_ip));
    }
    Ok(released)
}

fn delete_certificate(provider: &AwsProvider, arn: &str, progress: &dyn Progress) -> Result<()> {
    let clients = provider.clients()?;
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        match clients.run(clients.acm.delete_certificate().certificate_arn(arn).send()) {
            Ok(_) => return Ok(()),
            Err(err) if code(&err) == Some("ResourceNotFoundException") => return Ok(()),
            Err(err) if code(&err) == Some("ResourceInUseException") && Instant::now() < deadline => {
                progress.report("waiting for the listener to let go of its certificate");
                std::thread::sleep(provider.poll());
            }
            Err(err) => return Err(sdk_error("DeleteCertificate", err)),
        }
    }
}

/// What AWS has, as the spec's settings: listeners and rules deleted
/// outside lbctl are gone from them, moved ones at their port and
/// priority, edited conditions as they are now.
pub(crate) fn read(provider: &AwsProvider, prior: &ResourceState) -> Result<Observed> {
    let state: Private = private(prior);
    let Some(found) = describe(provider, &state.arn)? else {
        return Ok(Observed::Missing { reason: format!("load balancer {} was deleted outside lbctl", state.name) });
    };
    if prior.resolved.is_null() {
        // Made in part by a failed apply: the next apply converges it.
        return Ok(Observed::Present { attributes: None });
    }
    let clients = provider.clients()?;
    let mut observed = prior.resolved.clone();
    if found.r#type() == Some(&LoadBalancerTypeEnum::Application) {
        let attributes = clients
            .run(clients.elb.describe_load_balancer_attributes().load_balancer_arn(&state.arn).send())
            .map_err(|err| sdk_error("DescribeLoadBalancerAttributes", err))?;
        let idle = attributes
            .attributes()
            .iter()
            .find(|it| it.key() == Some("idle_timeout.timeout_seconds"))
            .and_then(|it| it.value()?.parse::<u64>().ok());
        let wanted =
            settings::<LoadBalancer>(&prior.resolved, &[]).map(|it| it.idle_timeout().get().as_secs().clamp(1, 4000));
        if let (Some(idle), Ok(wanted)) = (idle, wanted) {
            if idle != wanted {
                observed["idle_timeout"] = serde_json::to_value(lbctl_spec::Duration::from_secs(idle))?;
            }
        }
    }
    let listeners = clients
        .run(clients.elb.describe_listeners().load_balancer_arn(&state.arn).send())
        .map_err(|err| sdk_error("DescribeListeners", err))?;
    let mut kept_listeners = Vec::new();
    for listener in observed["listeners"].as_array().cloned().unwrap_or_default() {
        let mut listener = listener;
        let port = listener["port"].as_u64().unwrap_or_default();
        let protocol = listener["protocol"].as_str().unwrap_or_default().to_string();
        let Some(recorded) = state.listeners.iter().find(|it| u64::from(it.port) == port && it.protocol == protocol)
        else {
            kept_listeners.push(listener);
            continue;
        };
        let Some(live) = listeners.listeners().iter().find(|it| it.listener_arn() == Some(recorded.arn.as_str()))
        else {
            // Deleted outside lbctl.
            continue;
        };
        if let Some(live_port) = live.port().filter(|it| u64::try_from(*it).ok() != Some(port)) {
            listener["port"] = json!(live_port);
        }
        let rules = clients
            .run(clients.elb.describe_rules().listener_arn(&recorded.arn).send())
            .map_err(|err| sdk_error("DescribeRules", err))?;
        let mut kept_rules = Vec::new();
        for rule in listener["rules"].as_array().cloned().unwrap_or_default() {
            let mut rule = rule;
            let priority = rule["priority"].as_u64().unwrap_or_default() as u32;
            let Some(arn) = recorded.rules.get(&priority) else {
                kept_rules.push(rule);
                continue;
            };
            let Some(live) = rules.rules().iter().find(|it| it.rule_arn() == Some(arn.as_str())) else { continue };
            if let Some(live_priority) =
                live.priority().and_then(|it| it.parse::<u32>().ok()).filter(|it| *it != priority)
            {
                rule["priority"] = json!(live_priority);
            }
            let conditions = mapping::conditions_back(live.conditions());
            let written: lbctl_spec::Conditions =
                serde_json::from_value(rule["conditions"].clone()).unwrap_or_default();
            if conditions != written {
                rule["conditions"] = serde_json::to_value(&conditions)?;
            }
            kept_rules.push(rule);
        }
        if listener.get("rules").is_some() {
            listener["rules"] = Value::Array(kept_rules);
        }
        kept_listeners.push(listener);
    }
    observed["listeners"] = Value::Array(kept_listeners);
    Ok(Observed::Present { attributes: Some(observed) })
}

/// Ready once AWS says `active`.
pub(crate) fn ready(provider: &AwsProvider, current: &ResourceState) -> Result<Readiness> {
    let state: Private = private(current);
    let Some(found) = describe(provider, &state.arn)? else {
        return Ok(Readiness::Failed(format!("load balancer {} is gone", state.name)));
    };
    let code = found.state().and_then(|it| it.code()).map(|it| it.as_str().to_string()).unwrap_or_default();
    Ok(match code.as_str() {
        "active" => Readiness::Ready,
        "failed" => Readiness::Failed(format!(
            "AWS failed to provision it: {}",
            found.state().and_then(|it| it.reason()).unwrap_or("no reason given")
        )),
        other => Readiness::Waiting(format!("{other} (AWS takes a few minutes)")),
    })
}

/// `<lb>_dns_name`, `<lb>_url` (its first listener), `<lb>_static_ip`.
pub(crate) fn outputs(resource: &ResourceState, outputs: &mut BTreeMap<String, String>) {
    let state: Private = private(resource);
    let name = &resource.address.name;
    outputs.insert(format!("{name}_dns_name"), state.dns_name.clone());
    if let Some(listener) = state.listeners.first() {
        let scheme = match listener.protocol.as_str() {
            "HTTP" => "http",
            "HTTPS" => "https",
            other => other,
        };
        let scheme = scheme.to_lowercase();
        outputs.insert(format!("{name}_url"), format!("{scheme}://{}:{}", state.dns_name, listener.port));
    }
    if !state.addresses.is_empty() {
        let ips: Vec<&str> = state.addresses.iter().map(|(_, ip)| ip.as_str()).collect();
        outputs.insert(format!("{name}_static_ip"), ips.join(", "));
    }
}

/// The load balancer as AWS has it: state, DNS name, listeners and rules.
pub(crate) fn status(provider: &AwsProvider, current: &ResourceState) -> Result<LiveStatus> {
    let state: Private = private(current);
    let found = describe(provider, &state.arn)?;
    let code = found
        .as_ref()
        .and_then(|it| it.state())
        .and_then(|it| it.code())
        .map(|it| it.as_str().to_string())
        .unwrap_or_else(|| "deleted".to_string());
    let rows: Vec<Vec<String>> = state
        .listeners
        .iter()
        .map(|it| vec![it.port.to_string(), it.protocol.clone(), it.rules.len().to_string(), it.arn.clone()])
        .collect();
    Ok(LiveStatus {
        summary: format!("{} ({code})", state.dns_name),
        columns: ["PORT", "PROTOCOL", "RULES", "LISTENER"].map(str::to_string).to_vec(),
        wide_only: 1,
        json: json!({ "arn": state.arn, "dns_name": state.dns_name, "state": code,
            "static_ips": state.addresses.iter().map(|(_, ip)| ip).collect::<Vec<_>>() }),
        rows,
        ..LiveStatus::default()
    })
}

/// Deletes the load balancer (its listeners and rules with it), waits until
/// AWS has, and deletes the certificates lbctl imported for it. Its Elastic
/// IPs stay with the stack until it is destroyed.
pub(crate) fn delete(provider: &AwsProvider, prior: &ResourceState, progress: &dyn Progress) -> Result<()> {
    let state: Private = private(prior);
    let clients = provider.clients()?;
    if !state.arn.is_empty() {
        match clients.run(clients.elb.delete_load_balancer().load_balancer_arn(&state.arn).send()) {
            Ok(_) => {}
            Err(err) if code(&err) == Some("LoadBalancerNotFound") => {}
            Err(err) => return Err(sdk_error("DeleteLoadBalancer", err)),
        }
        let deadline = Instant::now() + Duration::from_secs(600);
        while describe(provider, &state.arn)?.is_some() {
            if Instant::now() > deadline {
                bail!("load balancer {} is still there 10 minutes after DeleteLoadBalancer", state.name);
            }
            progress.report("waiting for AWS to delete it");
            std::thread::sleep(provider.poll());
        }
    }
    for listener in &state.listeners {
        if let Some((arn, _)) = &listener.imported {
            delete_certificate(provider, arn, progress)?;
        }
    }
    Ok(())
}
