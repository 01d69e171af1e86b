//! The export as a CloudFormation template (JSON or YAML, long-form
//! intrinsic functions so that both read the same).

use serde_json::{json, Map, Value as Json};

use crate::model::*;

/// The template as JSON.
pub fn template(stack: &Stack) -> Json {
    let mut template = Template { stack, resources: Map::new() };
    template.resources();
    let mut root = Map::new();
    root.insert("AWSTemplateFormatVersion".into(), json!("2010-09-09"));
    root.insert("Description".into(), json!(format!("Stack {} as exported by lbctl from its spec", stack.name)));
    if !stack.parameters.is_empty() {
        root.insert("Parameters".into(), parameters(stack));
    }
    root.insert("Resources".into(), Json::Object(template.resources));
    root.insert("Outputs".into(), outputs(stack));
    Json::Object(root)
}

fn parameters(stack: &Stack) -> Json {
    let mut map = Map::new();
    for parameter in &stack.parameters {
        let kind = match parameter.kind {
            ParameterKind::VpcId => "AWS::EC2::VPC::Id",
            ParameterKind::SubnetIds => "List<AWS::EC2::Subnet::Id>",
            ParameterKind::SecurityGroupIds => "List<AWS::EC2::SecurityGroup::Id>",
            ParameterKind::ImageId => "AWS::EC2::Image::Id",
            ParameterKind::Text => "String",
        };
        let mut entry = json!({ "Type": kind, "Description": parameter.description });
        if let Some(default) = &parameter.default {
            entry["Default"] = json!(default);
        }
        map.insert(parameter.name.clone(), entry);
    }
    Json::Object(map)
}

fn outputs(stack: &Stack) -> Json {
    let mut map = Map::new();
    for lb in &stack.load_balancers {
        map.insert(
            format!("{}DnsName", lb.id),
            json!({
                "Description": format!("DNS name of load balancer {}", lb.name),
                "Value": { "Fn::GetAtt": [lb.id, "DNSName"] },
            }),
        );
    }
    for eip in &stack.elastic_ips {
        map.insert(
            format!("{}Address", eip.id),
            json!({
                "Description": format!("Static address {} of a network load balancer", eip.name),
                "Value": { "Fn::GetAtt": [eip.id, "PublicIp"] },
            }),
        );
    }
    Json::Object(map)
}

struct Template<'a> {
    stack: &'a Stack,
    resources: Map<String, Json>,
}

impl Template<'_> {
    fn add(&mut self, id: &str, kind: &str, properties: Json, depends_on: &[String]) {
        let mut resource = json!({ "Type": kind, "Properties": properties });
        if !depends_on.is_empty() {
            resource["DependsOn"] = json!(depends_on);
        }
        self.resources.insert(id.to_string(), resource);
    }

    fn value(&self, value: &Value) -> Json {
        match value {
            Value::Text(text) => json!(text),
            Value::Number(number) => json!(number),
            Value::Bool(flag) => json!(flag),
            Value::List(list) => Json::Array(list.iter().map(|it| self.value(it)).collect()),
            Value::Parameter(name) => json!({ "Ref": name }),
            Value::Select(index, list) => json!({ "Fn::Select": [index, self.value(list)] }),
            Value::Join(separator, parts) => {
                json!({ "Fn::Join": [separator, parts.iter().map(|it| self.value(it)).collect::<Vec<_>>()] })
            }
            Value::Attribute(reference) => {
                let name = match reference.attribute {
                    Attribute::Arn | Attribute::Name => return json!({ "Ref": reference.resource }),
                    Attribute::DnsName => "DNSName",
                    Attribute::AllocationId => "AllocationId",
                    Attribute::PublicIp => "PublicIp",
                    Attribute::LatestVersion => "LatestVersionNumber",
                    Attribute::FullName if self.is_load_balancer(&reference.resource) => "LoadBalancerFullName",
                    Attribute::FullName => "TargetGroupFullName",
                };
                json!({ "Fn::GetAtt": [reference.resource, name] })
            }
        }
    }

    fn is_load_balancer(&self, id: &str) -> bool {
        self.stack.load_balancers.iter().any(|it| it.id == id)
    }

    fn resources(&mut self) {
        let stack = self.stack;
        for permission in &stack.permissions {
            let properties = json!({
                "Action": "lambda:InvokeFunction",
                "FunctionName": self.value(&permission.function),
                "Principal": "elasticloadbalancing.amazonaws.com",
            });
            self.add(&permission.id, "AWS::Lambda::Permission", properties, &[]);
        }
        for eip in &stack.elastic_ips {
            self.add(&eip.id, "AWS::EC2::EIP", json!({ "Domain": "vpc" }), &[]);
        }
        for lb in &stack.load_balancers {
            self.load_balancer(lb);
        }
        for group in &stack.target_groups {
            self.target_group(group);
        }
        for listener in &stack.listeners {
            let mut properties = json!({
                "LoadBalancerArn": { "Ref": listener.load_balancer },
                "Port": listener.port,
                "Protocol": listener.protocol,
                "DefaultActions": [self.action(&listener.default_action)],
            });
            if let Some(certificate) = &listener.certificate {
                properties["Certificates"] = json!([{ "CertificateArn": self.value(certificate) }]);
            }
            if let Some(idle) = listener.tcp_idle_timeout {
                properties["ListenerAttributes"] =
                    json!([{ "Key": "tcp.idle_timeout.seconds", "Value": idle.to_string() }]);
            }
            self.add(&listener.id, "AWS::ElasticLoadBalancingV2::Listener", properties, &[]);
        }
        for rule in &stack.rules {
            let properties = json!({
                "ListenerArn": { "Ref": rule.listener },
                "Priority": rule.priority,
                "Conditions": rule.conditions.iter().map(condition).collect::<Vec<_>>(),
                "Actions": [self.action(&rule.action)],
            });
            self.add(&rule.id, "AWS::ElasticLoadBalancingV2::ListenerRule", properties, &[]);
        }
        for group in &stack.autoscaling_groups {
            self.autoscaling_group(group);
        }
    }

    fn load_balancer(&mut self, lb: &LoadBalancer) {
        let mut properties = json!({
            "Type": match lb.kind {
                lbctl_spec::LoadBalancerType::Application => "application",
                lbctl_spec::LoadBalancerType::Network => "network",
            },
            "Scheme": "internet-facing",
            "Tags": [{ "Key": "lbctl:load-balancer", "Value": lb.name }],
        });
        if let Some(name) = &lb.aws_name {
            properties["Name"] = json!(name);
        }
        if lb.subnet_mappings.is_empty() {
            properties["Subnets"] = self.value(&lb.subnets);
        } else {
            properties["SubnetMappings"] = lb
                .subnet_mappings
                .iter()
                .map(|(subnet, allocation)| json!({ "SubnetId": self.value(subnet), "AllocationId": self.value(allocation) }))
                .collect();
        }
        if let Some(groups) = &lb.security_groups {
            properties["SecurityGroups"] = self.value(groups);
        }
        let mut attributes = Vec::new();
        if let Some(idle) = lb.idle_timeout {
            attributes.push(json!({ "Key": "idle_timeout.timeout_seconds", "Value": idle.to_string() }));
        }
        if let Some(bucket) = &lb.access_logs {
            attributes.push(json!({ "Key": "access_logs.s3.enabled", "Value": "true" }));
            attributes.push(json!({ "Key": "access_logs.s3.bucket", "Value": self.value(bucket) }));
        }
        if !attributes.is_empty() {
            properties["LoadBalancerAttributes"] = json!(attributes);
        }
        self.add(&lb.id, "AWS::ElasticLoadBalancingV2::LoadBalancer", properties, &[]);
    }

    fn target_group(&mut self, group: &TargetGroup) {
        let check = &group.settings.health_check;
        let lambda = group.target_type == "lambda";
        let mut properties = json!({
            "TargetType": group.target_type,
            "HealthCheckEnabled": check.enabled,
            "HealthCheckIntervalSeconds": check.interval,
            "HealthCheckTimeoutSeconds": check.timeout,
            "HealthyThresholdCount": check.healthy_threshold,
            "UnhealthyThresholdCount": check.unhealthy_threshold,
            "Tags": [{ "Key": "lbctl:target-group", "Value": group.name }],
        });
        if let Some(name) = &group.aws_name {
            properties["Name"] = json!(name);
        }
        if !lambda {
            properties["HealthCheckProtocol"] = json!(check.protocol);
            properties["HealthCheckPort"] = json!(check.port);
        }
        if let Some(path) = &check.path {
            properties["HealthCheckPath"] = json!(path);
        }
        if let Some(codes) = &check.http_code {
            properties["Matcher"] = json!({ "HttpCode": codes });
        }
        if let Some(codes) = &check.grpc_code {
            properties["Matcher"] = json!({ "GrpcCode": codes });
        }
        if let Some(protocol) = &group.protocol {
            properties["Protocol"] = json!(protocol);
        }
        if let Some(version) = &group.protocol_version {
            properties["ProtocolVersion"] = json!(version);
        }
        if let Some(port) = group.port {
            properties["Port"] = json!(port);
        }
        if let Some(vpc) = &group.vpc {
            properties["VpcId"] = self.value(vpc);
        }
        let attributes: Vec<_> = group
            .settings
            .attributes(false)
            .into_iter()
            .map(|(key, value)| json!({ "Key": key, "Value": value }))
            .collect();
        if !attributes.is_empty() {
            properties["TargetGroupAttributes"] = json!(attributes);
        }
        if !group.targets.is_empty() {
            properties["Targets"] = group
                .targets
                .iter()
                .map(|(id, port)| {
                    let mut target = json!({ "Id": self.value(id) });
                    if let Some(port) = port {
                        target["Port"] = json!(port);
                    }
                    target
                })
                .collect();
        }
        self.add(&group.id, "AWS::ElasticLoadBalancingV2::TargetGroup", properties, &group.depends_on);
    }

    fn action(&self, action: &Action) -> Json {
        match action {
            Action::Forward(groups, stickiness) if groups.len() == 1 && stickiness.is_none() => {
                json!({ "Type": "forward", "TargetGroupArn": { "Ref": groups[0].0 } })
            }
            Action::Forward(groups, stickiness) => {
                let mut config = json!({
                    "TargetGroups": groups
                        .iter()
                        .map(|(id, weight)| json!({ "TargetGroupArn": { "Ref": id }, "Weight": weight }))
                        .collect::<Vec<_>>(),
                });
                if let Some(seconds) = stickiness {
                    config["TargetGroupStickinessConfig"] = json!({ "Enabled": true, "DurationSeconds": seconds });
                }
                json!({ "Type": "forward", "ForwardConfig": config })
            }
            Action::Redirect { protocol, host, port, path, query, status } => json!({
                "Type": "redirect",
                "RedirectConfig": {
                    "Protocol": protocol,
                    "Host": host,
                    "Port": port,
                    "Path": path,
                    "Query": query,
                    "StatusCode": status,
                },
            }),
            Action::Fixed { status, content_type, body } => {
                let mut config = json!({ "StatusCode": status, "ContentType": content_type });
                if let Some(body) = body {
                    config["MessageBody"] = json!(body);
                }
                json!({ "Type": "fixed-response", "FixedResponseConfig": config })
            }
        }
    }

    fn autoscaling_group(&mut self, group: &AutoscalingGroup) {
        let mut data = json!({
            "ImageId": self.value(&group.image),
            "InstanceType": self.value(&group.instance_type),
            "UserData": { "Fn::Base64": group.user_data },
        });
        if let Some(groups) = &group.security_groups {
            data["SecurityGroupIds"] = self.value(groups);
        }
        self.add(&group.launch_template, "AWS::EC2::LaunchTemplate", json!({ "LaunchTemplateData": data }), &[]);

        let mut properties = json!({
            "AutoScalingGroupName": format!("{}-{}", self.stack.name, group.name),
            "MinSize": group.min.to_string(),
            "MaxSize": group.max.to_string(),
            "HealthCheckType": group.health_check_type,
            "HealthCheckGracePeriod": group.grace_period,
            "VPCZoneIdentifier": self.value(&group.subnets),
            "TerminationPolicies": [group.termination_policy],
            "LaunchTemplate": {
                "LaunchTemplateId": { "Ref": group.launch_template },
                "Version": { "Fn::GetAtt": [group.launch_template, "LatestVersionNumber"] },
            },
        });
        if let Some(desired) = group.desired {
            properties["DesiredCapacity"] = json!(desired.to_string());
        }
        if !group.target_groups.is_empty() {
            properties["TargetGroupARNs"] = group.target_groups.iter().map(|id| json!({ "Ref": id })).collect();
        }
        self.add(&group.id, "AWS::AutoScaling::AutoScalingGroup", properties, &[]);
        if let Some((min_healthy, warmup)) = group.instance_refresh {
            // CloudFormation replaces instances on a template change by its
            // rolling update policy: the same floor and pause.
            self.resources[&group.id]["UpdatePolicy"] = json!({
                "AutoScalingRollingUpdate": {
                    "MinActiveInstancesPercent": min_healthy,
                    "MaxBatchSize": 1,
                    "PauseTime": format!("PT{warmup}S"),
                },
            });
        }
        if let Some(policy) = &group.policy {
            let mut metric = json!({ "PredefinedMetricType": policy.metric });
            if let Some((lb, tg)) = &policy.label {
                metric["ResourceLabel"] = self.value(&Value::Join(
                    "/",
                    vec![
                        Value::Attribute(Reference { resource: lb.clone(), attribute: Attribute::FullName }),
                        Value::Attribute(Reference { resource: tg.clone(), attribute: Attribute::FullName }),
                    ],
                ));
            }
            let properties = json!({
                "AutoScalingGroupName": { "Ref": group.id },
                "PolicyType": "TargetTrackingScaling",
                "EstimatedInstanceWarmup": policy.warmup,
                "TargetTrackingConfiguration": {
                    "PredefinedMetricSpecification": metric,
                    "TargetValue": policy.target_value,
                },
            });
            self.add(&policy.id, "AWS::AutoScaling::ScalingPolicy", properties, &[]);
        }
    }
}

fn condition(condition: &Condition) -> Json {
    match condition {
        Condition::Values(field, values) => {
            let key = match *field {
                "host-header" => "HostHeaderConfig",
                "path-pattern" => "PathPatternConfig",
                "http-request-method" => "HttpRequestMethodConfig",
                _ => "SourceIpConfig",
            };
            json!({ "Field": field, key: { "Values": values } })
        }
        Condition::Header(name, values) => {
            json!({ "Field": "http-header", "HttpHeaderConfig": { "HttpHeaderName": name, "Values": values } })
        }
        Condition::Query(pairs) => {
            let values: Vec<Json> = pairs
                .iter()
                .map(|(key, value)| match key {
                    Some(key) => json!({ "Key": key, "Value": value }),
                    None => json!({ "Value": value }),
                })
                .collect();
            json!({ "Field": "query-string", "QueryStringConfig": { "Values": values } })
        }
    }
}
