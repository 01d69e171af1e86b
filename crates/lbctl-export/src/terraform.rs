//! The export as Terraform configuration (HCL for the `hashicorp/aws`
//! provider), with references between resources, not copied values.

use std::collections::BTreeMap;

use hcl::expr::{Expression, FuncCall, Traversal, Variable};
use hcl::{Block, BlockBuilder, Body, Identifier};

use crate::model::*;

/// The configuration as HCL text.
pub fn configuration(stack: &Stack) -> String {
    let config = Config::new(stack);
    let mut body = Body::builder().add_block(
        Block::builder("terraform")
            .add_block(
                Block::builder("required_providers")
                    .add_attribute((
                        "aws",
                        Expression::from_iter([
                            (Identifier::unchecked("source"), Expression::from("hashicorp/aws")),
                            (Identifier::unchecked("version"), Expression::from(">= 5.0")),
                        ]),
                    ))
                    .build(),
            )
            .build(),
    );
    if let Some(region) = &stack.region {
        body = body
            .add_block(Block::builder("provider").add_label("aws").add_attribute(("region", region.as_str())).build());
    }
    for parameter in &stack.parameters {
        let kind = match parameter.kind {
            ParameterKind::SubnetIds | ParameterKind::SecurityGroupIds => "list(string)",
            _ => "string",
        };
        let mut block = Block::builder("variable")
            .add_label(snake(&parameter.name))
            .add_attribute(("type", Expression::Variable(Variable::unchecked(kind))))
            .add_attribute(("description", parameter.description.as_str()));
        if let Some(default) = &parameter.default {
            block = block.add_attribute(("default", default.as_str()));
        }
        body = body.add_block(block.build());
    }
    for block in config.resources() {
        body = body.add_block(block);
    }
    for lb in &stack.load_balancers {
        body = body.add_block(
            Block::builder("output")
                .add_label(format!("{}_dns_name", label(&lb.name)))
                .add_attribute(("description", format!("DNS name of load balancer {}", lb.name)))
                .add_attribute(("value", config.attribute(&lb.id, "dns_name")))
                .build(),
        );
    }
    for eip in &stack.elastic_ips {
        body = body.add_block(
            Block::builder("output")
                .add_label(format!("{}_address", label(&eip.name)))
                .add_attribute(("description", format!("Static address {} of a network load balancer", eip.name)))
                .add_attribute(("value", config.attribute(&eip.id, "public_ip")))
                .build(),
        );
    }
    let text = hcl::to_string(&body.build()).unwrap_or_default();
    format!("# Stack {} as exported by lbctl from its spec.\n\n{text}", stack.name)
}

/// `VpcId` -> `vpc_id`.
fn snake(name: &str) -> String {
    let mut out = String::new();
    for (idx, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() && idx > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

/// A spec name as a resource label: `web-v2` -> `web_v2`.
fn label(name: &str) -> String {
    name.replace('-', "_")
}

/// Resource addresses by model id.
struct Config<'a> {
    stack: &'a Stack,
    addresses: BTreeMap<&'a str, (&'static str, String)>,
}

impl<'a> Config<'a> {
    fn new(stack: &'a Stack) -> Self {
        let mut addresses = BTreeMap::new();
        let mut add = |id: &'a str, kind: &'static str, name: &str| {
            addresses.insert(id, (kind, label(name)));
        };
        for it in &stack.permissions {
            add(&it.id, "aws_lambda_permission", &it.name);
        }
        for it in &stack.elastic_ips {
            add(&it.id, "aws_eip", &it.name);
        }
        for it in &stack.load_balancers {
            add(&it.id, "aws_lb", &it.name);
        }
        for it in &stack.target_groups {
            add(&it.id, "aws_lb_target_group", &it.name);
        }
        for it in &stack.listeners {
            add(&it.id, "aws_lb_listener", &it.name);
        }
        for it in &stack.rules {
            add(&it.id, "aws_lb_listener_rule", &it.name);
        }
        for it in &stack.autoscaling_groups {
            add(&it.id, "aws_autoscaling_group", &it.name);
            add(&it.launch_template, "aws_launch_template", &it.name);
            if let Some(policy) = &it.policy {
                add(&policy.id, "aws_autoscaling_policy", &it.name);
            }
        }
        Config { stack, addresses }
    }

    /// `aws_lb.public` as a traversal base.
    fn address(&self, id: &str) -> Traversal {
        let (kind, name) = self.addresses.get(id).cloned().unwrap_or(("unknown", id.to_string()));
        Traversal::builder(Variable::unchecked(kind)).attr(name).build()
    }

    /// `aws_lb.public.arn`.
    fn attribute(&self, id: &str, attribute: &str) -> Expression {
        let base = self.address(id);
        Expression::from(Traversal::new(
            base.expr,
            base.operators.into_iter().chain([hcl::expr::TraversalOperator::GetAttr(attribute.into())]),
        ))
    }

    fn resource(&self, id: &str) -> BlockBuilder {
        let (kind, name) = self.addresses.get(id).cloned().unwrap_or(("unknown", id.to_string()));
        Block::builder("resource").add_label(kind).add_label(name)
    }

    fn depends_on(&self, ids: &[String]) -> Expression {
        Expression::Array(ids.iter().map(|id| Expression::from(self.address(id))).collect())
    }

    fn value(&self, value: &Value) -> Expression {
        match value {
            Value::Text(text) => Expression::from(text.as_str()),
            Value::Number(number) => Expression::from(*number),
            Value::Bool(flag) => Expression::from(*flag),
            Value::List(list) => Expression::Array(list.iter().map(|it| self.value(it)).collect()),
            Value::Parameter(name) => {
                Expression::from(Traversal::builder(Variable::unchecked("var")).attr(snake(name)).build())
            }
            Value::Select(index, list) => {
                Expression::from(Traversal::builder(self.value(list)).index(*index as u64).build())
            }
            Value::Join(separator, parts) => Expression::from(
                FuncCall::builder("join")
                    .arg(*separator)
                    .arg(Expression::Array(parts.iter().map(|it| self.value(it)).collect()))
                    .build(),
            ),
            Value::Attribute(reference) => {
                let kind = self.addresses.get(reference.resource.as_str()).map(|it| it.0).unwrap_or_default();
                let name = match reference.attribute {
                    Attribute::Arn if kind == "aws_launch_template" => "id",
                    Attribute::Arn => "arn",
                    Attribute::DnsName => "dns_name",
                    Attribute::AllocationId => "allocation_id",
                    Attribute::PublicIp => "public_ip",
                    Attribute::LatestVersion => "latest_version",
                    Attribute::FullName => "arn_suffix",
                    Attribute::Name => "name",
                };
                self.attribute(&reference.resource, name)
            }
        }
    }

    fn resources(&self) -> Vec<Block> {
        let stack = self.stack;
        let mut blocks = Vec::new();
        for permission in &stack.permissions {
            let mut block = self
                .resource(&permission.id)
                .add_attribute(("statement_id", "AllowInvokeFromLoadBalancing"))
                .add_attribute(("action", "lambda:InvokeFunction"))
                .add_attribute(("function_name", self.value(&permission.function)))
                .add_attribute(("principal", "elasticloadbalancing.amazonaws.com"));
            if let [group] = permission.target_groups.as_slice() {
                block = block.add_attribute(("source_arn", self.attribute(group, "arn")));
            }
            blocks.push(block.build());
        }
        for eip in &stack.elastic_ips {
            blocks.push(self.resource(&eip.id).add_attribute(("domain", "vpc")).build());
        }
        for lb in &stack.load_balancers {
            blocks.push(self.load_balancer(lb));
        }
        for group in &stack.target_groups {
            blocks.push(self.target_group(group));
            for (idx, (id, port)) in group.targets.iter().enumerate() {
                let mut block = Block::builder("resource")
                    .add_label("aws_lb_target_group_attachment")
                    .add_label(format!("{}_{idx}", label(&group.name)))
                    .add_attribute(("target_group_arn", self.attribute(&group.id, "arn")))
                    .add_attribute(("target_id", self.value(id)));
                if let Some(port) = port {
                    block = block.add_attribute(("port", *port));
                }
                if !group.depends_on.is_empty() {
                    block = block.add_attribute(("depends_on", self.depends_on(&group.depends_on)));
                }
                blocks.push(block.build());
            }
        }
        for listener in &stack.listeners {
            let mut block = self
                .resource(&listener.id)
                .add_attribute(("load_balancer_arn", self.attribute(&listener.load_balancer, "arn")))
                .add_attribute(("port", listener.port))
                .add_attribute(("protocol", listener.protocol.as_str()));
            if let Some(certificate) = &listener.certificate {
                block = block.add_attribute(("certificate_arn", self.value(certificate)));
            }
            if let Some(idle) = listener.tcp_idle_timeout {
                block = block.add_attribute(("tcp_idle_timeout_seconds", idle));
            }
            blocks.push(block.add_block(self.action("default_action", &listener.default_action)).build());
        }
        for rule in &stack.rules {
            let mut block = self
                .resource(&rule.id)
                .add_attribute(("listener_arn", self.attribute(&rule.listener, "arn")))
                .add_attribute(("priority", rule.priority))
                .add_block(self.action("action", &rule.action));
            for condition in &rule.conditions {
                block = block.add_block(self.condition(condition));
            }
            blocks.push(block.build());
        }
        for group in &stack.autoscaling_groups {
            blocks.extend(self.autoscaling_group(group));
        }
        blocks
    }

    fn load_balancer(&self, lb: &LoadBalancer) -> Block {
        let mut block = self
            .resource(&lb.id)
            .add_attribute((
                "load_balancer_type",
                match lb.kind {
                    lbctl_spec::LoadBalancerType::Application => "application",
                    lbctl_spec::LoadBalancerType::Network => "network",
                },
            ))
            .add_attribute(("internal", false));
        if let Some(name) = &lb.aws_name {
            block = block.add_attribute(("name", name.as_str()));
        }
        if lb.subnet_mappings.is_empty() {
            block = block.add_attribute(("subnets", self.value(&lb.subnets)));
        }
        for (subnet, allocation) in &lb.subnet_mappings {
            block = block.add_block(
                Block::builder("subnet_mapping")
                    .add_attribute(("subnet_id", self.value(subnet)))
                    .add_attribute(("allocation_id", self.value(allocation)))
                    .build(),
            );
        }
        if let Some(groups) = &lb.security_groups {
            block = block.add_attribute(("security_groups", self.value(groups)));
        }
        if let Some(idle) = lb.idle_timeout {
            block = block.add_attribute(("idle_timeout", idle));
        }
        if let Some(bucket) = &lb.access_logs {
            block = block.add_block(
                Block::builder("access_logs")
                    .add_attribute(("bucket", self.value(bucket)))
                    .add_attribute(("enabled", true))
                    .build(),
            );
        }
        block.add_attribute(tags("lbctl:load-balancer", &lb.name)).build()
    }

    fn target_group(&self, group: &TargetGroup) -> Block {
        let check = &group.settings.health_check;
        let lambda = group.target_type == "lambda";
        let mut block = self.resource(&group.id).add_attribute(("target_type", group.target_type.as_str()));
        if let Some(name) = &group.aws_name {
            block = block.add_attribute(("name", name.as_str()));
        }
        if let Some(port) = group.port {
            block = block.add_attribute(("port", port));
        }
        if let Some(protocol) = &group.protocol {
            block = block.add_attribute(("protocol", protocol.as_str()));
        }
        if let Some(version) = &group.protocol_version {
            block = block.add_attribute(("protocol_version", version.as_str()));
        }
        if let Some(vpc) = &group.vpc {
            block = block.add_attribute(("vpc_id", self.value(vpc)));
        }
        if let Some(delay) = group.settings.deregistration_delay {
            block = block.add_attribute(("deregistration_delay", delay));
        }
        if let Some(slow) = group.settings.slow_start {
            block = block.add_attribute(("slow_start", slow));
        }
        if let Some(algorithm) = group.settings.algorithm {
            block = block.add_attribute(("load_balancing_algorithm_type", algorithm));
        }
        if let Some(on) = group.settings.proxy_protocol_v2 {
            block = block.add_attribute(("proxy_protocol_v2", on));
        }
        let mut health = Block::builder("health_check")
            .add_attribute(("enabled", check.enabled))
            .add_attribute(("interval", check.interval))
            .add_attribute(("timeout", check.timeout))
            .add_attribute(("healthy_threshold", check.healthy_threshold))
            .add_attribute(("unhealthy_threshold", check.unhealthy_threshold));
        if !lambda {
            health = health
                .add_attribute(("protocol", check.protocol.as_str()))
                .add_attribute(("port", check.port.as_str()));
        }
        if let Some(path) = &check.path {
            health = health.add_attribute(("path", path.as_str()));
        }
        if let Some(codes) = check.http_code.as_ref().or(check.grpc_code.as_ref()) {
            health = health.add_attribute(("matcher", codes.as_str()));
        }
        block = block.add_block(health.build());
        if let Some((enabled, duration)) = group.settings.stickiness {
            block = block.add_block(
                Block::builder("stickiness")
                    .add_attribute(("type", "lb_cookie"))
                    .add_attribute(("enabled", enabled))
                    .add_attribute(("cookie_duration", duration))
                    .build(),
            );
        }
        block.add_attribute(tags("lbctl:target-group", &group.name)).build()
    }

    fn action(&self, name: &str, action: &Action) -> Block {
        let block = Block::builder(name.to_string());
        match action {
            Action::Forward(groups, stickiness) if groups.len() == 1 && stickiness.is_none() => block
                .add_attribute(("type", "forward"))
                .add_attribute(("target_group_arn", self.attribute(&groups[0].0, "arn")))
                .build(),
            Action::Forward(groups, stickiness) => {
                let mut forward = Block::builder("forward");
                for (id, weight) in groups {
                    forward = forward.add_block(
                        Block::builder("target_group")
                            .add_attribute(("arn", self.attribute(id, "arn")))
                            .add_attribute(("weight", *weight))
                            .build(),
                    );
                }
                if let Some(seconds) = stickiness {
                    forward = forward.add_block(
                        Block::builder("stickiness")
                            .add_attribute(("enabled", true))
                            .add_attribute(("duration", *seconds))
                            .build(),
                    );
                }
                block.add_attribute(("type", "forward")).add_block(forward.build()).build()
            }
            Action::Redirect { protocol, host, port, path, query, status } => block
                .add_attribute(("type", "redirect"))
                .add_block(
                    Block::builder("redirect")
                        .add_attribute(("protocol", protocol.as_str()))
                        .add_attribute(("host", host.as_str()))
                        .add_attribute(("port", port.as_str()))
                        .add_attribute(("path", path.as_str()))
                        .add_attribute(("query", query.as_str()))
                        .add_attribute(("status_code", status.as_str()))
                        .build(),
                )
                .build(),
            Action::Fixed { status, content_type, body } => {
                let mut fixed = Block::builder("fixed_response")
                    .add_attribute(("content_type", content_type.as_str()))
                    .add_attribute(("status_code", status.as_str()));
                if let Some(body) = body {
                    fixed = fixed.add_attribute(("message_body", body.as_str()));
                }
                block.add_attribute(("type", "fixed-response")).add_block(fixed.build()).build()
            }
        }
    }

    /// A rule's `condition` block: one kind of condition each, a query
    /// string condition with one `query_string` block per pair.
    fn condition(&self, condition: &Condition) -> Block {
        let values = |list: &[String]| Expression::Array(list.iter().map(|it| Expression::from(it.as_str())).collect());
        let block = Block::builder("condition");
        match condition {
            Condition::Values(field, list) => block
                .add_block(Block::builder(field.replace('-', "_")).add_attribute(("values", values(list))).build())
                .build(),
            Condition::Header(name, list) => block
                .add_block(
                    Block::builder("http_header")
                        .add_attribute(("http_header_name", name.as_str()))
                        .add_attribute(("values", values(list)))
                        .build(),
                )
                .build(),
            Condition::Query(pairs) => pairs
                .iter()
                .fold(block, |block, (key, value)| {
                    let mut pair = Block::builder("query_string");
                    if let Some(key) = key {
                        pair = pair.add_attribute(("key", key.as_str()));
                    }
                    block.add_block(pair.add_attribute(("value", value.as_str())).build())
                })
                .build(),
        }
    }

    fn autoscaling_group(&self, group: &AutoscalingGroup) -> Vec<Block> {
        let mut template = self
            .resource(&group.launch_template)
            .add_attribute(("name_prefix", format!("{}-{}-", self.stack.name, group.name)))
            .add_attribute(("image_id", self.value(&group.image)))
            .add_attribute(("instance_type", self.value(&group.instance_type)))
            .add_attribute(("user_data", FuncCall::builder("base64encode").arg(group.user_data.as_str()).build()));
        if let Some(groups) = &group.security_groups {
            template = template.add_attribute(("vpc_security_group_ids", self.value(groups)));
        }
        let mut asg = self
            .resource(&group.id)
            .add_attribute(("name", format!("{}-{}", self.stack.name, group.name)))
            .add_attribute(("min_size", group.min))
            .add_attribute(("max_size", group.max));
        if let Some(desired) = group.desired {
            asg = asg.add_attribute(("desired_capacity", desired));
        }
        asg = asg
            .add_attribute(("health_check_type", group.health_check_type.as_str()))
            .add_attribute(("health_check_grace_period", group.grace_period))
            .add_attribute(("vpc_zone_identifier", self.value(&group.subnets)))
            .add_attribute(("termination_policies", Expression::Array(vec![group.termination_policy.as_str().into()])));
        if !group.target_groups.is_empty() {
            let arns = group.target_groups.iter().map(|id| self.attribute(id, "arn")).collect();
            asg = asg.add_attribute(("target_group_arns", Expression::Array(arns)));
        }
        if let Some(count) = group.wait_for_elb_capacity {
            asg = asg.add_attribute(("wait_for_elb_capacity", count));
        }
        asg = asg.add_block(
            Block::builder("launch_template")
                .add_attribute(("id", self.attribute(&group.launch_template, "id")))
                .add_attribute(("version", self.attribute(&group.launch_template, "latest_version")))
                .build(),
        );
        if let Some((min_healthy, warmup)) = group.instance_refresh {
            asg = asg.add_block(
                Block::builder("instance_refresh")
                    .add_attribute(("strategy", "Rolling"))
                    .add_block(
                        Block::builder("preferences")
                            .add_attribute(("min_healthy_percentage", min_healthy))
                            .add_attribute(("instance_warmup", warmup))
                            .build(),
                    )
                    .build(),
            );
        }
        let mut blocks = vec![template.build(), asg.build()];
        if let Some(policy) = &group.policy {
            let mut metric = Block::builder("predefined_metric_specification")
                .add_attribute(("predefined_metric_type", policy.metric));
            if let Some((lb, tg)) = &policy.label {
                let label = Value::Join(
                    "/",
                    vec![
                        Value::Attribute(Reference { resource: lb.clone(), attribute: Attribute::FullName }),
                        Value::Attribute(Reference { resource: tg.clone(), attribute: Attribute::FullName }),
                    ],
                );
                metric = metric.add_attribute(("resource_label", self.value(&label)));
            }
            blocks.push(
                self.resource(&policy.id)
                    .add_attribute(("name", format!("{}-{}-target-tracking", self.stack.name, group.name)))
                    .add_attribute(("autoscaling_group_name", self.attribute(&group.id, "name")))
                    .add_attribute(("policy_type", "TargetTrackingScaling"))
                    .add_attribute(("estimated_instance_warmup", policy.warmup))
                    .add_block(
                        Block::builder("target_tracking_configuration")
                            .add_block(metric.build())
                            .add_attribute(("target_value", policy.target_value))
                            .build(),
                    )
                    .build(),
            );
        }
        blocks
    }
}

/// `tags = { "lbctl:load-balancer" = "public" }`: which spec resource it is.
fn tags(key: &str, value: &str) -> (&'static str, Expression) {
    ("tags", Expression::from_iter([(key, value)]))
}
