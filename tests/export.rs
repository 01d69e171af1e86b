//! `lbctl export cloudformation | terraform`: every example and a spec with
//! every feature, checked by the tools AWS users check with. cfn-lint (from
//! the tests' virtual environment) must find no error in the CloudFormation
//! template, YAML and JSON; python-hcl2 must parse the Terraform
//! configuration, whose resources, references and arguments are then
//! checked against the spec.

use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::util::*;

/// A spec with every feature an export carries: rule conditions and
/// actions, weighted forwards with stickiness, every target type, HTTPS,
/// TLS, UDP and gRPC, health checks, slow start, algorithms, draining,
/// PROXY protocol, target tracking on both metrics, instance refresh, and
/// `aws:` sections for some of what only AWS knows.
const EVERYTHING: &str = r##"version: 1
name: everything
aws:
  region: eu-west-1
  vpc_id: vpc-0123456789abcdef0
load_balancers:
  public:
    type: application
    idle_timeout: 120s
    access_logs: true
    listeners:
      - port: 18080
        protocol: HTTP
        default_action: { forward: web }
        rules:
          - priority: 10
            conditions: { path_pattern: ["/images/*"], host_header: ["img.example.com"] }
            action: { forward: images }
          - priority: 20
            conditions: { http_header: { name: X-Canary, values: ["1"] } }
            action:
              forward:
                - { target_group: web-v2, weight: 90 }
                - { target_group: web, weight: 10 }
          - priority: 30
            conditions: { path_pattern: ["/old/*"] }
            action: { redirect: { path: "/new/#{path}", status_code: 301 } }
          - priority: 40
            conditions: { http_request_method: [DELETE] }
            action: { fixed_response: { status_code: 403, content_type: application/json, body: '{"error":"nope"}' } }
          - priority: 50
            conditions: { query_string: [{ key: debug, value: "1" }, { value: trace }], source_ip: ["127.0.0.0/8"] }
            action: { forward: thumbs }
          - priority: 60
            conditions: { path_pattern: ["/grpc/*"] }
            action: { forward: greeter }
      - port: 18443
        protocol: HTTPS
        certificate: self_signed
        aws: { certificate_arn: "arn:aws:acm:eu-west-1:123456789012:certificate/abc" }
        default_action: { redirect: { protocol: HTTP, port: "18080" } }
  edge:
    type: network
    idle_timeout: 600s
    listeners:
      - { port: 19000, protocol: TCP, default_action: { forward: echo } }
      - { port: 19000, protocol: UDP, default_action: { forward: echo-udp } }
      - { port: 19443, protocol: TLS, certificate: self_signed, default_action: { forward: echo } }
      - { port: 19080, protocol: TCP, default_action: { forward: via-alb } }
target_groups:
  web:
    port: 18081
    health_check: { path: /health, interval: 10s, timeout: 5s, healthy_threshold: 3, unhealthy_threshold: 4, matcher: "200-299" }
    algorithm: least_outstanding_requests
    deregistration_delay: 30s
    slow_start: 60s
    stickiness: { enabled: true, duration: 1h }
  web-v2:
    port: 18081
    stickiness: { enabled: true, duration: 30m }
  images:
    protocol: HTTPS
    port: 18082
    target_type: ip
    algorithm: weighted_random
    targets: [{ ip: 127.0.0.1 }, { ip: 127.0.0.2, port: 18083 }]
  greeter:
    protocol_version: GRPC
    port: 18084
    health_check: { matcher: "0-2" }
  thumbs:
    target_type: lambda
    health_check: { enabled: true, path: /ping }
    targets: [{ function: thumbnailer }]
  echo:
    protocol: TCP
    port: 17000
    proxy_protocol_v2: true
    health_check: { protocol: HTTP, path: /health, matcher: "200-399" }
  echo-udp:
    protocol: UDP
    port: 17000
    health_check: { protocol: TCP, port: 17001 }
  via-alb:
    protocol: TCP
    port: 18080
    target_type: alb
    targets: [{ load_balancer: public }]
functions:
  thumbnailer:
    command: [python3, handler.py]
    timeout: 5s
  resizer:
    command: [python3, resize.py]
    aws: { function_arn: "arn:aws:lambda:eu-west-1:123456789012:function:resizer" }
autoscaling_groups:
  web:
    min_size: 2
    max_size: 6
    desired_capacity: 3
    health_check_type: ELB
    health_check_grace_period: 90s
    target_groups: [web, web-v2]
    termination_policy: oldest_instance
    instance_refresh: { min_healthy_percentage: 50, warmup: 30s }
    wait_for_elb_capacity: 2
    launch_template:
      command: [lbctl, worker, --listen, "{ip}:{port}", --id, "{instance_id}"]
      env: { GREETING: "it's ${HOME}" }
      aws: { image_id: ami-0123456789abcdef0, instance_type: c7g.large }
    scaling:
      target_tracking: { metric: request_count_per_target, target_value: 50, cooldown: 120s }
  echo:
    min_size: 1
    max_size: 4
    target_groups: [echo, echo-udp]
    launch_template:
      command: [lbctl, worker, --echo]
    scaling:
      target_tracking: { metric: cpu_utilization, target_value: 60 }
"##;

/// The tests' virtual environment's `bin/` (where `make test` installed
/// cfn-lint and python-hcl2).
fn venv_bin() -> std::path::PathBuf {
    let bin = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/venv/bin");
    assert!(bin.join("cfn-lint").is_file(), "{} has no cfn-lint: run the tests with `make test`", bin.display());
    bin
}

fn examples() -> Vec<(String, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let mut found: Vec<(String, String)> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .filter(|it| it.path().extension().is_some_and(|ext| ext == "yaml"))
        .map(|it| (it.file_name().to_string_lossy().into_owned(), std::fs::read_to_string(it.path()).unwrap()))
        .collect();
    found.sort();
    assert!(found.len() >= 5, "examples/ has {} specs", found.len());
    found
}

fn export(stack: &Stack, args: &[&str]) -> (String, String) {
    let mut all = vec!["export"];
    all.extend_from_slice(args);
    let run = stack.lbctl(&all).expect_code(0);
    (run.stdout, run.stderr)
}

/// cfn-lint's findings: no errors (it exits with bit 2 set on errors).
fn cfn_lint(file: &Path) {
    let output = Command::new(venv_bin().join("cfn-lint")).arg(file).stdin(Stdio::null()).output().unwrap();
    let report = String::from_utf8_lossy(&output.stdout);
    let code = output.status.code().unwrap_or(-1);
    assert!(code >= 0 && code & 2 == 0 && code & 1 == 0, "cfn-lint found errors in {}:\n{report}", file.display());
    if !report.trim().is_empty() {
        println!("cfn-lint on {} (no errors):\n{report}", file.display());
    }
}

/// The Terraform configuration as python-hcl2 reads it, quotes taken off
/// string values and keys.
fn hcl(text: &str) -> Value {
    let mut child = Command::new(venv_bin().join("python3"))
        .args(["-c", "import hcl2, json, sys; print(json.dumps(hcl2.load(sys.stdin)))"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "python-hcl2 cannot parse:\n{}\n{text}", String::from_utf8_lossy(&output.stderr));
    unquote(serde_json::from_slice(&output.stdout).unwrap())
}

fn unquote(value: Value) -> Value {
    let strip = |text: &str| -> String {
        text.strip_prefix('"')
            .and_then(|it| it.strip_suffix('"'))
            .map(str::to_string)
            .unwrap_or_else(|| text.to_string())
    };
    match value {
        Value::String(text) => Value::String(strip(&text)),
        Value::Array(list) => Value::Array(list.into_iter().map(unquote).collect()),
        Value::Object(map) => Value::Object(map.into_iter().map(|(k, v)| (strip(&k), unquote(v))).collect()),
        other => other,
    }
}

/// `resource "TYPE" "NAME" { ... }` of a parsed configuration.
fn resources(config: &Value) -> Vec<(String, String, Value)> {
    let mut found = Vec::new();
    for entry in config["resource"].as_array().into_iter().flatten() {
        for (kind, named) in entry.as_object().unwrap() {
            for (name, body) in named.as_object().unwrap() {
                found.push((kind.clone(), name.clone(), body.clone()));
            }
        }
    }
    found
}

fn resource<'a>(all: &'a [(String, String, Value)], kind: &str, name: &str) -> &'a Value {
    &all.iter().find(|(k, n, _)| k == kind && n == name).unwrap_or_else(|| panic!("no {kind}.{name}")).2
}

fn count(all: &[(String, String, Value)], kind: &str) -> usize {
    all.iter().filter(|(k, _, _)| k == kind).count()
}

/// Lints both template formats and parses the configuration; checks what
/// every export must have against the spec itself.
fn check_export(name: &str, text: &str) -> (Value, Vec<(String, String, Value)>, String) {
    let stack = Stack::new(text);
    let spec: serde_yaml::Value = serde_yaml::from_str(text).unwrap();
    let (yaml, _) = export(&stack, &["cloudformation", "-f", "lbctl.yaml"]);
    let (json, _) = export(&stack, &["cloudformation", "--format", "json"]);
    std::fs::write(stack.dir.path().join("template.yaml"), &yaml).unwrap();
    std::fs::write(stack.dir.path().join("template.json"), &json).unwrap();
    cfn_lint(&stack.dir.path().join("template.yaml"));
    cfn_lint(&stack.dir.path().join("template.json"));
    let template: Value = serde_json::from_str(&json).unwrap();
    let from_yaml: Value = serde_yaml::from_str(&yaml).unwrap();
    assert_eq!(template, from_yaml, "{name}: the YAML and JSON templates differ");

    let (terraform, notes) = export(&stack, &["terraform"]);
    let config = hcl(&terraform);
    let all = resources(&config);

    // One resource per spec resource, of the type AWS users expect.
    let sizes = |key: &str| spec[key].as_mapping().map(|it| it.len()).unwrap_or(0);
    let cfn_count =
        |kind: &str| template["Resources"].as_object().unwrap().values().filter(|it| it["Type"] == kind).count();
    assert_eq!(count(&all, "aws_lb"), sizes("load_balancers"), "{name}");
    assert_eq!(cfn_count("AWS::ElasticLoadBalancingV2::LoadBalancer"), sizes("load_balancers"), "{name}");
    assert_eq!(count(&all, "aws_lb_target_group"), sizes("target_groups"), "{name}");
    assert_eq!(cfn_count("AWS::ElasticLoadBalancingV2::TargetGroup"), sizes("target_groups"), "{name}");
    assert_eq!(count(&all, "aws_autoscaling_group"), sizes("autoscaling_groups"), "{name}");
    assert_eq!(count(&all, "aws_launch_template"), sizes("autoscaling_groups"), "{name}");
    assert_eq!(cfn_count("AWS::AutoScaling::AutoScalingGroup"), sizes("autoscaling_groups"), "{name}");
    assert_eq!(cfn_count("AWS::EC2::LaunchTemplate"), sizes("autoscaling_groups"), "{name}");
    let listeners: usize = spec["load_balancers"]
        .as_mapping()
        .map(|lbs| lbs.values().map(|lb| lb["listeners"].as_sequence().map(Vec::len).unwrap_or(0)).sum())
        .unwrap_or(0);
    assert_eq!(count(&all, "aws_lb_listener"), listeners, "{name}");
    assert_eq!(cfn_count("AWS::ElasticLoadBalancingV2::Listener"), listeners, "{name}");
    let rules: usize = spec["load_balancers"]
        .as_mapping()
        .map(|lbs| {
            lbs.values()
                .flat_map(|lb| lb["listeners"].as_sequence().cloned().unwrap_or_default())
                .map(|it| it["rules"].as_sequence().map(Vec::len).unwrap_or(0))
                .sum()
        })
        .unwrap_or(0);
    assert_eq!(count(&all, "aws_lb_listener_rule"), rules, "{name}");
    assert_eq!(cfn_count("AWS::ElasticLoadBalancingV2::ListenerRule"), rules, "{name}");
    let scaling = spec["autoscaling_groups"]
        .as_mapping()
        .map(|it| it.values().filter(|group| group.get("scaling").is_some()).count())
        .unwrap_or(0);
    assert_eq!(count(&all, "aws_autoscaling_policy"), scaling, "{name}");
    assert_eq!(cfn_count("AWS::AutoScaling::ScalingPolicy"), scaling, "{name}");

    // Every load balancer's DNS name is an output of both.
    for lb in spec["load_balancers"].as_mapping().unwrap().keys() {
        let lb = lb.as_str().unwrap();
        let label = lb.replace('-', "_");
        let outputs = config["output"].as_array().unwrap();
        assert!(
            outputs
                .iter()
                .any(|it| it[format!("{label}_dns_name")]["value"] == format!("${{aws_lb.{label}.dns_name}}")),
            "{name}: no DNS name output for {lb}"
        );
    }

    // Every reference names a resource or variable of the configuration.
    let declared: Vec<String> = all.iter().map(|(kind, name, _)| format!("{kind}.{name}")).collect();
    let variables: Vec<String> = config["variable"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|it| it.as_object().unwrap().keys().cloned())
        .collect();
    let mut references = Vec::new();
    collect_references(&config["resource"], &mut references);
    assert!(!references.is_empty(), "{name}: no references");
    for reference in &references {
        let parts: Vec<&str> = reference.split('.').collect();
        if parts[0] == "var" {
            let var = parts[1].split('[').next().unwrap();
            assert!(variables.iter().any(|it| it == var), "{name}: `{reference}` names no variable");
        } else {
            let address = format!("{}.{}", parts[0], parts[1]);
            assert!(declared.contains(&address), "{name}: `{reference}` names no resource");
        }
    }
    (config, all, notes)
}

/// `${aws_lb.public.arn}` and `var.subnets[0]` inside every string.
fn collect_references(value: &Value, into: &mut Vec<String>) {
    match value {
        Value::String(text) => {
            let mut rest = text.as_str();
            while let Some(start) = rest.find("${") {
                let inner = &rest[start + 2..];
                let end = inner.find('}').unwrap_or(inner.len());
                for word in inner[..end].split(|c: char| !(c.is_ascii_alphanumeric() || "._[]".contains(c))) {
                    if word.starts_with("aws_") || word.starts_with("var.") {
                        into.push(word.to_string());
                    }
                }
                rest = &inner[end..];
            }
        }
        Value::Array(list) => list.iter().for_each(|it| collect_references(it, into)),
        Value::Object(map) => map.values().for_each(|it| collect_references(it, into)),
        _ => {}
    }
}

#[test]
fn every_example_exports_to_cloudformation_and_terraform() {
    for (name, text) in examples() {
        let (_, all, _) = check_export(&name, &text);
        // The launch templates start what the spec's command starts.
        for (kind, _, body) in &all {
            if kind == "aws_launch_template" {
                assert!(body["user_data"].as_str().unwrap().starts_with("${base64encode("), "{name}: {body}");
            }
        }
    }
}

#[test]
fn a_spec_with_every_feature_exports_with_references_and_every_argument() {
    let (config, all, notes) = check_export("everything", EVERYTHING);
    let first = |value: &Value| value.as_array().map(|it| it[0].clone()).unwrap_or_else(|| value.clone());

    // Load balancers: the ALB in the variable subnets, the NLB on two
    // Elastic IPs, each in one of them.
    let public = resource(&all, "aws_lb", "public");
    assert_eq!(public["load_balancer_type"], "application");
    assert_eq!(public["subnets"], "${var.subnets}");
    assert_eq!(public["idle_timeout"], 120);
    let logs = first(&public["access_logs"]);
    assert_eq!((&logs["bucket"], &logs["enabled"]), (&Value::from("${var.access_logs_bucket}"), &Value::Bool(true)));
    let edge = resource(&all, "aws_lb", "edge");
    assert_eq!(edge["load_balancer_type"], "network");
    let mappings = edge["subnet_mapping"].as_array().unwrap();
    assert_eq!(mappings.len(), 2);
    assert_eq!(mappings[0]["subnet_id"], "${var.subnets[0]}");
    assert_eq!(mappings[1]["allocation_id"], "${aws_eip.edge_b.allocation_id}");
    assert_eq!(count(&all, "aws_eip"), 2);

    // Target groups: what the spec says, AWS's ranges applied.
    let web = resource(&all, "aws_lb_target_group", "web");
    assert_eq!(web["port"], 18081);
    assert_eq!(web["vpc_id"], "vpc-0123456789abcdef0", "the aws: section's VPC, not a variable");
    assert_eq!(web["load_balancing_algorithm_type"], "least_outstanding_requests");
    assert_eq!(web["deregistration_delay"], 30);
    assert_eq!(web["slow_start"], 60);
    let check = first(&web["health_check"]);
    assert_eq!(
        (&check["path"], &check["interval"], &check["timeout"], &check["matcher"]),
        (&Value::from("/health"), &Value::from(10), &Value::from(5), &Value::from("200-299"))
    );
    assert_eq!((&check["healthy_threshold"], &check["unhealthy_threshold"]), (&Value::from(3), &Value::from(4)));
    let sticky = first(&web["stickiness"]);
    assert_eq!((&sticky["enabled"], &sticky["cookie_duration"]), (&Value::Bool(true), &Value::from(3600)));
    let greeter = first(&resource(&all, "aws_lb_target_group", "greeter")["health_check"]);
    assert_eq!(resource(&all, "aws_lb_target_group", "greeter")["protocol_version"], "GRPC");
    assert_eq!((&greeter["matcher"], &greeter["path"]), (&Value::from("0-2"), &Value::from("/AWS.ALB/healthcheck")));
    let echo = resource(&all, "aws_lb_target_group", "echo");
    assert_eq!((&echo["protocol"], &echo["proxy_protocol_v2"]), (&Value::from("TCP"), &Value::Bool(true)));
    let udp = first(&resource(&all, "aws_lb_target_group", "echo_udp")["health_check"]);
    assert_eq!((&udp["protocol"], &udp["port"]), (&Value::from("TCP"), &Value::from("17001")));
    let thumbs = resource(&all, "aws_lb_target_group", "thumbs");
    assert_eq!(thumbs["target_type"], "lambda");
    assert!(thumbs.get("port").is_none() && thumbs.get("vpc_id").is_none(), "{thumbs}");

    // Targets: ip targets become variables (addresses in the VPC), the ALB
    // target its ARN, the function its ARN once the permission exists.
    let attachments: Vec<&Value> =
        all.iter().filter(|(k, _, _)| k == "aws_lb_target_group_attachment").map(|it| &it.2).collect();
    assert!(attachments.iter().any(|it| it["target_id"] == "${aws_lb.public.arn}" && it["port"] == 18080));
    assert!(attachments
        .iter()
        .any(|it| it["target_id"] == "${var.target_group_images_target1_ip}" && it["port"] == 18083));
    let lambda = attachments.iter().find(|it| it["target_group_arn"] == "${aws_lb_target_group.thumbs.arn}").unwrap();
    assert_eq!(lambda["target_id"], "${var.function_thumbnailer_arn}");
    assert_eq!(lambda["depends_on"], serde_json::json!(["${aws_lambda_permission.thumbnailer}"]));
    let permission = resource(&all, "aws_lambda_permission", "thumbnailer");
    assert_eq!(permission["source_arn"], "${aws_lb_target_group.thumbs.arn}");
    assert_eq!(
        resource(&all, "aws_lambda_permission", "resizer")["function_name"],
        "arn:aws:lambda:eu-west-1:123456789012:function:resizer"
    );

    // Listeners and rules: references to the load balancer, the groups and
    // the certificate the aws: section names.
    let https = resource(&all, "aws_lb_listener", "public_18443");
    assert_eq!(https["load_balancer_arn"], "${aws_lb.public.arn}");
    assert_eq!(https["certificate_arn"], "arn:aws:acm:eu-west-1:123456789012:certificate/abc");
    let redirect = first(&first(&https["default_action"])["redirect"]);
    assert_eq!(
        (&redirect["protocol"], &redirect["port"], &redirect["status_code"]),
        (&Value::from("HTTP"), &Value::from("18080"), &Value::from("HTTP_302"))
    );
    assert_eq!(resource(&all, "aws_lb_listener", "edge_19000")["tcp_idle_timeout_seconds"], 600);
    assert_eq!(resource(&all, "aws_lb_listener", "edge_19000_udp")["protocol"], "UDP");
    assert_eq!(
        resource(&all, "aws_lb_listener", "edge_19443")["certificate_arn"],
        "${var.listener_edge19443_certificate_arn}"
    );
    let rule = |priority: u32| resource(&all, "aws_lb_listener_rule", &format!("public_18080_rule_{priority}"));
    assert_eq!(rule(10)["listener_arn"], "${aws_lb_listener.public_18080.arn}");
    assert_eq!(rule(10)["priority"], 10);
    assert_eq!(rule(10)["condition"].as_array().unwrap().len(), 2, "path and host conditions");
    let weighted = first(&first(&rule(20)["action"])["forward"]);
    let groups = weighted["target_group"].as_array().unwrap();
    assert_eq!(
        (&groups[0]["arn"], &groups[0]["weight"]),
        (&Value::from("${aws_lb_target_group.web_v2.arn}"), &Value::from(90))
    );
    assert_eq!(first(&weighted["stickiness"])["duration"], 3600, "the longest stickiness of the groups");
    let header = first(&first(&rule(20)["condition"])["http_header"]);
    assert_eq!((&header["http_header_name"], &header["values"]), (&Value::from("X-Canary"), &serde_json::json!(["1"])));
    assert_eq!(first(&first(&rule(30)["action"])["redirect"])["path"], "/new/#{path}");
    let fixed = first(&first(&rule(40)["action"])["fixed_response"]);
    assert_eq!(
        (&fixed["status_code"], &fixed["content_type"]),
        (&Value::from("403"), &Value::from("application/json"))
    );
    let conditions = rule(50)["condition"].as_array().unwrap().clone();
    assert!(
        conditions.iter().any(|it| first(&it["source_ip"])["values"] == serde_json::json!(["127.0.0.0/8"])),
        "{conditions:?}"
    );
    let query = conditions.iter().find_map(|it| it.get("query_string")).unwrap().as_array().unwrap();
    assert_eq!(query.len(), 2, "one block per pair: {query:?}");
    assert_eq!((&query[0]["key"], &query[0]["value"]), (&Value::from("debug"), &Value::from("1")));
    assert!(!notes.contains("functions.resizer"), "its ARN is given: {notes}");

    // Auto scaling: the launch template's command as user data, the groups
    // attached, instance refresh, and the policies at the right metric.
    let template = resource(&all, "aws_launch_template", "web");
    assert_eq!(template["image_id"], "ami-0123456789abcdef0");
    assert_eq!(template["instance_type"], "c7g.large");
    assert_eq!(resource(&all, "aws_launch_template", "echo")["image_id"], "${var.image_echo}");
    let asg = resource(&all, "aws_autoscaling_group", "web");
    assert_eq!((&asg["min_size"], &asg["max_size"]), (&Value::from(2), &Value::from(6)));
    assert!(asg.get("desired_capacity").is_none(), "a scaling policy owns the desired capacity");
    assert_eq!(
        asg["target_group_arns"],
        serde_json::json!(["${aws_lb_target_group.web.arn}", "${aws_lb_target_group.web_v2.arn}"])
    );
    assert_eq!((&asg["health_check_type"], &asg["health_check_grace_period"]), (&Value::from("ELB"), &Value::from(90)));
    assert_eq!(asg["termination_policies"], serde_json::json!(["OldestInstance"]));
    assert_eq!(asg["wait_for_elb_capacity"], 2);
    let launch = first(&asg["launch_template"]);
    assert_eq!(
        (&launch["id"], &launch["version"]),
        (&Value::from("${aws_launch_template.web.id}"), &Value::from("${aws_launch_template.web.latest_version}"))
    );
    let refresh = first(&first(&asg["instance_refresh"])["preferences"]);
    assert_eq!((&refresh["min_healthy_percentage"], &refresh["instance_warmup"]), (&Value::from(50), &Value::from(30)));
    let policy = first(&resource(&all, "aws_autoscaling_policy", "web")["target_tracking_configuration"]);
    assert_eq!(policy["target_value"], 3000.0, "50 requests per second per target is 3000 per minute");
    let metric = first(&policy["predefined_metric_specification"]);
    assert_eq!(metric["predefined_metric_type"], "ALBRequestCountPerTarget");
    assert!(metric["resource_label"].as_str().unwrap().contains("aws_lb.public.arn_suffix"), "{metric}");
    let cpu = first(
        &first(&resource(&all, "aws_autoscaling_policy", "echo")["target_tracking_configuration"])
            ["predefined_metric_specification"],
    );
    assert_eq!(cpu["predefined_metric_type"], "ASGAverageCPUUtilization");

    // The region of the aws: section, and what did not carry over, named.
    assert_eq!(first(&config["provider"])["aws"]["region"], "eu-west-1");
    assert!(notes.contains("functions.thumbnailer: the command runs locally only"), "{notes}");
    assert!(
        notes.contains("load_balancers.edge.listeners[1]: AWS sets the idle timeout of TCP listeners only"),
        "{notes}"
    );
    assert!(!notes.contains("load_balancers.public.listeners[1].certificate"), "an ARN was given: {notes}");
    assert!(notes.contains("load_balancers.edge.listeners[2].certificate"), "{notes}");
}

#[test]
fn cloudformation_carries_the_same_references() {
    let stack = Stack::new(EVERYTHING);
    let (json, _) = export(&stack, &["cloudformation", "--format", "json"]);
    let template: Value = serde_json::from_str(&json).unwrap();
    let resources = &template["Resources"];
    let listener = &resources["ListenerPublic18080"]["Properties"];
    assert_eq!(listener["LoadBalancerArn"], serde_json::json!({ "Ref": "LoadBalancerPublic" }));
    assert_eq!(listener["DefaultActions"][0]["TargetGroupArn"], serde_json::json!({ "Ref": "TargetGroupWeb" }));
    assert_eq!(resources["TargetGroupThumbs"]["DependsOn"], serde_json::json!(["PermissionThumbnailer"]));
    assert_eq!(
        resources["TargetGroupViaAlb"]["Properties"]["Targets"][0]["Id"],
        serde_json::json!({ "Ref": "LoadBalancerPublic" })
    );
    let depends = resources["TargetGroupViaAlb"]["DependsOn"].as_array().unwrap();
    assert!(
        depends.contains(&Value::from("ListenerPublic18080")),
        "an ALB target needs its listener first: {depends:?}"
    );
    let mapping = &resources["LoadBalancerEdge"]["Properties"]["SubnetMappings"][0];
    assert_eq!(mapping["AllocationId"], serde_json::json!({ "Fn::GetAtt": ["ElasticIpEdgeA", "AllocationId"] }));
    assert_eq!(mapping["SubnetId"], serde_json::json!({ "Fn::Select": [0, { "Ref": "Subnets" }] }));
    let asg = &resources["AutoScalingGroupWeb"];
    assert_eq!(asg["UpdatePolicy"]["AutoScalingRollingUpdate"]["MinActiveInstancesPercent"], 50);
    let label = &resources["ScalingPolicyWeb"]["Properties"]["TargetTrackingConfiguration"]
        ["PredefinedMetricSpecification"]["ResourceLabel"];
    assert_eq!(
        label,
        &serde_json::json!({ "Fn::Join": ["/", [
            { "Fn::GetAtt": ["LoadBalancerPublic", "LoadBalancerFullName"] },
            { "Fn::GetAtt": ["TargetGroupWeb", "TargetGroupFullName"] }
        ]] })
    );
    let user_data =
        resources["LaunchTemplateWeb"]["Properties"]["LaunchTemplateData"]["UserData"]["Fn::Base64"].as_str().unwrap();
    assert!(user_data.contains("export GREETING='it'\\''s ${HOME}'"), "{user_data}");
    assert!(
        user_data.contains(
            "'lbctl' 'worker' '--listen' ''\"$LBCTL_IP\"':'\"$LBCTL_PORT\"'' '--id' ''\"$LBCTL_INSTANCE_ID\"''"
        ),
        "{user_data}"
    );
    for output in ["LoadBalancerPublicDnsName", "LoadBalancerEdgeDnsName", "ElasticIpEdgeAAddress"] {
        assert!(template["Outputs"].get(output).is_some(), "no output {output}");
    }
}

#[test]
fn export_refuses_a_bad_spec_with_located_errors() {
    let stack = Stack::new(&EVERYTHING.replace("forward: thumbs }", "forward: thumbz }"));
    let run = stack.lbctl(&["export", "terraform"]).expect_code(1);
    assert!(run.stderr.contains("lbctl.yaml:") && run.stderr.contains("thumbz"), "{}", run.stderr);
    assert!(run.stdout.is_empty(), "nothing printed on a bad spec: {}", run.stdout);
}
