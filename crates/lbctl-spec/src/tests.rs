//! Data-driven checks of parsing and validation: one `check` per case, the
//! expected diagnostics written out in full.

use std::path::PathBuf;

/// Parses `source` as `lbctl.yaml` and compares every diagnostic line.
fn check(source: &str, expect: &[&str]) {
    let got = match crate::parse("lbctl.yaml", PathBuf::from("."), source.to_string()) {
        Ok(_) => Vec::new(),
        Err(diagnostics) => diagnostics.0.iter().map(|it| it.to_string()).collect(),
    };
    let expect: Vec<String> = expect.iter().map(|it| it.to_string()).collect();
    assert_eq!(got, expect, "\n--- source ---\n{source}");
}

const BASE: &str = "version: 1
name: shop
target_groups:
  web:
    port: 8080
    health_check: { path: /health }
autoscaling_groups:
  web:
    min_size: 1
    max_size: 3
    desired_capacity: 2
    target_groups: [web]
    launch_template: { command: [lbctl, worker] }
";

#[test]
fn the_product_example_parses_every_field() {
    let source = include_str!("../../../examples/quickstart.yaml");
    check(source, &[]);
}

#[test]
fn a_minimal_stack_is_valid() {
    check(BASE, &[]);
}

#[test]
fn dangling_target_group_reference() {
    let source = format!(
        "{BASE}load_balancers:\n  public:\n    type: application\n    listeners:\n      - port: 8080\n        protocol: HTTP\n        default_action: {{ forward: webb }}\n"
    );
    check(
        &source,
        &["lbctl.yaml:20:36: load_balancers.public.listeners[0].default_action.forward: target group `webb` is not defined (defined: web); did you mean `web`?"],
    );
}

#[test]
fn unknown_fields_are_errors_with_a_location() {
    let source = BASE.replace("    port: 8080\n", "    port: 8080\n    prot: HTTP\n");
    let err = crate::parse("lbctl.yaml", PathBuf::from("."), source).unwrap_err().to_string();
    assert!(err.starts_with("lbctl.yaml:6:5: target_groups.web: unknown field `prot`"), "{err}");
}

#[test]
fn impossible_capacities() {
    let source = BASE.replace("min_size: 1", "min_size: 3");
    check(
        &source,
        &["lbctl.yaml:11:23: autoscaling_groups.web.desired_capacity: desired_capacity (2) is less than min_size (3)"],
    );
    let source = BASE.replace("max_size: 3", "max_size: 1");
    check(&source, &["lbctl.yaml:11:23: autoscaling_groups.web.desired_capacity: desired_capacity (2) is greater than max_size (1)"]);
}

#[test]
fn duplicate_priorities_and_port_clashes() {
    let source = format!(
        "{BASE}load_balancers:
  a:
    type: application
    listeners:
      - port: 8080
        protocol: HTTP
        default_action: {{ forward: web }}
        rules:
          - {{ priority: 5, conditions: {{ path_pattern: [/a] }}, action: {{ forward: web }} }}
          - {{ priority: 5, conditions: {{ path_pattern: [/b] }}, action: {{ forward: web }} }}
  b:
    type: application
    listeners:
      - {{ port: 8080, protocol: HTTP, default_action: {{ forward: web }} }}
"
    );
    check(
        &source,
        &[
            "lbctl.yaml:23:25: load_balancers.a.listeners[0].rules[1].priority: priority 5 is already used by rules[0] of this listener",
            "lbctl.yaml:27:17: load_balancers.b.listeners[0].port: port 8080 on 127.0.0.1 is already used by load_balancers.a.listeners[0]",
        ],
    );
}

#[test]
fn cycles_through_alb_targets() {
    let source = "version: 1
name: loop
load_balancers:
  edge:
    type: network
    listeners: [{ port: 9000, protocol: TCP, default_action: { forward: via } }]
  inner:
    type: application
    listeners: [{ port: 9001, protocol: HTTP, default_action: { forward: web } }]
target_groups:
  via: { protocol: TCP, port: 9001, target_type: alb, targets: [{ load_balancer: inner }] }
  web: { protocol: TCP, port: 9001, target_type: alb, targets: [{ load_balancer: edge }] }
";
    let err = crate::parse("lbctl.yaml", PathBuf::from("."), source.to_string()).unwrap_err().to_string();
    assert!(err.contains("reference cycle: load_balancers.edge -> target_groups.via -> load_balancers.inner"), "{err}");
}

#[test]
fn the_schema_file_is_the_schema_output() {
    let on_disk = include_str!("../../../schemas/lbctl.schema.json");
    assert_eq!(
        on_disk,
        crate::schema_json(),
        "schemas/lbctl.schema.json is stale: run `lbctl schema > schemas/lbctl.schema.json`"
    );
}

#[test]
fn health_check_matchers_are_http_or_grpc_codes() {
    let with = |group: &str| BASE.replace("    health_check: { path: /health }\n", group);
    check(&with("    health_check: { matcher: '200,202-299' }\n"), &[]);
    check(
        &with("    health_check: { matcher: '12' }\n"),
        &["lbctl.yaml:6:30: target_groups.web.health_check.matcher: invalid matcher `12`: `12` is not an HTTP status code"],
    );
    // gRPC groups match gRPC status codes; the HTTP default stands for gRPC's (12).
    check(&with("    protocol_version: GRPC\n    health_check: { matcher: '0-99' }\n"), &[]);
    check(&with("    protocol_version: GRPC\n"), &[]);
    check(
        &with("    protocol_version: GRPC\n    health_check: { matcher: '0,100' }\n"),
        &["lbctl.yaml:7:30: target_groups.web.health_check.matcher: invalid matcher `0,100`: `100` is not a gRPC status code (0-99)"],
    );
}

#[test]
fn network_load_balancers_and_alb_targets() {
    let source = "version: 1
name: edge
load_balancers:
  edge:
    type: network
    static_ip: 10.0.0.1
    listeners:
      - { port: 9000, protocol: TCP, default_action: { forward: via } }
      - { port: 9000, protocol: UDP, default_action: { forward: via } }
      - { port: 9001, protocol: HTTP, default_action: { forward: via } }
  inner:
    type: application
    listeners: [{ port: 8080, protocol: HTTP, default_action: { fixed_response: { status_code: 200 } } }]
target_groups:
  via: { protocol: TCP, port: 8081, target_type: alb, targets: [{ load_balancer: inner }] }
";
    check(
        source,
        &[
            "lbctl.yaml:6:16: load_balancers.edge.static_ip: `10.0.0.1` is not a loopback address; lbctl uses only 127.0.0.0/8",
            "lbctl.yaml:9:65: load_balancers.edge.listeners[1].default_action.forward: a UDP listener cannot forward to target group `via` (target_type alb): only TCP listeners forward to an application load balancer, as on AWS",
            "lbctl.yaml:10:33: load_balancers.edge.listeners[2].protocol: protocol HTTP is not valid here (network: TCP, TLS or UDP)",
            "lbctl.yaml:15:65: target_groups.via.targets[0]: the port of an alb target must be a listener port of `inner` (8080); set the group's port",
        ],
    );
    // AWS's pairs: TCP to TCP or alb groups, TLS to TCP groups, UDP to UDP groups.
    let paired = source
        .replace("10.0.0.1", "127.0.0.10")
        .replace("8081", "8080")
        .replace("protocol: UDP, default_action: { forward: via }", "protocol: UDP, default_action: { forward: dns }")
        .replace(
            ", protocol: HTTP, default_action: { forward: via }",
            ", protocol: TLS, certificate: self_signed, default_action: { forward: tcp }",
        )
        + "  dns: { protocol: UDP, port: 53, target_type: ip, targets: [{ ip: 127.0.0.2 }] }\n  tcp: { protocol: TCP, port: 80, target_type: ip, targets: [{ ip: 127.0.0.2 }] }\n";
    check(&paired, &[]);
    check(
        &paired.replace("{ forward: tcp }", "{ forward: via }").replace("protocol: TCP, default_action: { forward: via }", "protocol: TCP, default_action: { forward: dns }"),
        &[
            "lbctl.yaml:8:65: load_balancers.edge.listeners[0].default_action.forward: a TCP listener cannot forward to UDP target group `dns`: TCP and TLS listeners forward to TCP groups, UDP listeners to UDP groups, as on AWS",
            "lbctl.yaml:10:91: load_balancers.edge.listeners[2].default_action.forward: a TLS listener cannot forward to target group `via` (target_type alb): only TCP listeners forward to an application load balancer, as on AWS",
        ],
    );
    // An application load balancer forwarding to an alb group: one plain error.
    let front = "  front:\n    type: application\n    listeners: [{ port: 8090, protocol: HTTP, default_action: { forward: via } }]\n";
    let source = source
        .replace("10.0.0.1", "127.0.0.10")
        .replace("8081", "8080")
        .replace("  inner:\n", &format!("{front}  inner:\n"))
        .replace("      - { port: 9001, protocol: HTTP, default_action: { forward: via } }\n", "")
        .replace("      - { port: 9000, protocol: UDP, default_action: { forward: via } }\n", "");
    check(
        &source,
        &["lbctl.yaml:11:74: load_balancers.front.listeners[0].default_action.forward: target group `via` has target_type alb; only network load balancers forward to alb target groups, as on AWS"],
    );
}

#[test]
fn given_static_ips_stay_out_of_the_allocation_range() {
    let source = "version: 1
name: edge
load_balancers:
  edge:
    type: network
    static_ip: 127.251.3.4
    listeners: [{ port: 9000, protocol: TCP, default_action: { forward: tcp } }]
target_groups:
  tcp: { protocol: TCP, port: 7000 }
";
    check(source, &["lbctl.yaml:6:16: load_balancers.edge.static_ip: 127.251.3.4 is in 127.251.0.0/16, where lbctl allocates the static IPs of network load balancers that give none; choose another address"]);
    check(&source.replace("127.251.3.4", "127.250.3.4"), &[]);
}

#[test]
fn fields_without_effect_in_their_context_are_errors() {
    let source = "version: 1
name: shop
target_groups:
  tcp:
    protocol: TCP
    port: 9000
    protocol_version: HTTP2
    algorithm: least_outstanding_requests
    health_check: { path: /health, matcher: '200' }
  fn:
    target_type: lambda
    protocol: HTTP
    port: 80
    targets: [{ function: f }]
  sticky:
    stickiness: { duration: 1h }
functions:
  f: { command: [cat] }
";
    check(
        source,
        &[
            "lbctl.yaml:7:23: target_groups.tcp.protocol_version: protocol_version applies to HTTP and HTTPS target groups only",
            "lbctl.yaml:8:16: target_groups.tcp.algorithm: network load balancers pick targets by flow hash; algorithm applies to HTTP and HTTPS target groups",
            "lbctl.yaml:9:27: target_groups.tcp.health_check.path: a TCP health check has no path",
            "lbctl.yaml:9:45: target_groups.tcp.health_check.matcher: a TCP health check has no matcher",
            "lbctl.yaml:12:15: target_groups.fn.protocol: lambda target groups have no protocol",
            "lbctl.yaml:13:11: target_groups.fn.port: lambda target groups have no port",
            "lbctl.yaml:16:29: target_groups.sticky.stickiness.duration: duration has no effect with stickiness off; set `enabled: true` or remove it",
        ],
    );
}

#[test]
fn a_grpc_matcher_is_read_as_written() {
    let source = "version: 1
name: shop
target_groups:
  api: { protocol_version: GRPC, health_check: { matcher: '200' } }
";
    check(
        source,
        &["lbctl.yaml:4:59: target_groups.api.health_check.matcher: invalid matcher `200`: `200` is not a gRPC status code (0-99)"],
    );
    check(&source.replace("'200'", "'0-2'"), &[]);
}

#[test]
fn a_problem_under_a_misspelt_key_is_placed_where_it_is_written() {
    check(
        &BASE.replace("target_groups:\n  web:", "target_group:\n  web:").replace("port: 8080", "port: 0"),
        &[
            "lbctl.yaml:3:1: unknown field `target_group`; did you mean `target_groups`?",
            "lbctl.yaml:5:11: target_groups.web.port: port must be between 1 and 65535",
        ],
    );
}

/// What AWS refuses, refused here too: forwards that loop back through an
/// ip target, condition and redirect limits, fixed-response types, fields
/// with no effect on lambda groups, commands that cannot run.
#[test]
fn what_aws_refuses_is_refused() {
    let source = r##"version: 1
name: v
load_balancers:
  a:
    type: application
    listeners:
      - port: 31001
        protocol: HTTP
        default_action: { forward: ipself }
        rules:
          - priority: 1
            conditions: { path_pattern: ["/a", "/b", "/c", "/d"], host_header: ["exa mple.com"] }
            action: { redirect: { path: "/new/#{pathz}", port: "99999" } }
          - priority: 2
            conditions: { path_pattern: [], http_header: { name: "bad header:", values: ["x"] } }
            action: { redirect: {} }
          - priority: 3
            conditions: { http_request_method: [GET] }
            action: { fixed_response: { status_code: 200, content_type: image/png } }
target_groups:
  ipself: { target_type: ip, port: 31001, targets: [{ ip: 127.0.0.1 }], proxy_protocol_v2: true }
  lam: { target_type: lambda, stickiness: { enabled: true }, slow_start: 30s, targets: [{ function: f, port: 80 }, { function: f }] }
functions:
  f: { command: [""], env: { "A=B": x } }
autoscaling_groups:
  g:
    min_size: 1
    max_size: 1
    launch_template: { command: ["lbctl", "worker", "--listen", "{ipp}:{port}", "sh -c ${foo}", "awk '{print}'"] }
"##;
    check(
        source,
        &[
            "lbctl.yaml:5:5: load_balancers.a: forwarding loop: load_balancers.a (port 31001) -> target_groups.ipself -> load_balancers.a (port 31001)",
            "lbctl.yaml:12:41: load_balancers.a.listeners[0].rules[0].conditions.path_pattern: path_pattern has 4 values; a condition takes at most 3, as on AWS",
            "lbctl.yaml:12:81: load_balancers.a.listeners[0].rules[0].conditions.host_header[0]: `exa mple.com` is not a host name pattern (a-z, 0-9, `-`, `.`, `*`, `?`)",
            "lbctl.yaml:13:41: load_balancers.a.listeners[0].rules[0].action.redirect.path: `#{pathz}` is not a placeholder: #{protocol}, #{host}, #{port}, #{path} or #{query}",
            "lbctl.yaml:13:64: load_balancers.a.listeners[0].rules[0].action.redirect.port: `99999` is not a port (1 to 65535) or #{port}",
            "lbctl.yaml:15:41: load_balancers.a.listeners[0].rules[1].conditions.path_pattern: path_pattern needs at least one value",
            "lbctl.yaml:15:66: load_balancers.a.listeners[0].rules[1].conditions.http_header.name: `bad header:` is not a header name (a token of at most 40 characters)",
            "lbctl.yaml:16:33: load_balancers.a.listeners[0].rules[1].action.redirect: this redirect leads to the request's own URL: change at least one of protocol, host, port and path, as AWS requires",
            "lbctl.yaml:19:73: load_balancers.a.listeners[0].rules[2].action.fixed_response.content_type: content_type `image/png` is not one AWS serves: text/plain, text/css, text/html, application/javascript, application/json",
            "lbctl.yaml:21:92: target_groups.ipself.proxy_protocol_v2: proxy_protocol_v2 applies to network load balancers' target groups (TCP) only",
            "lbctl.yaml:22:43: target_groups.lam.stickiness: stickiness applies to the instance and ip target groups of application load balancers only",
            "lbctl.yaml:22:74: target_groups.lam.slow_start: slow_start applies to the instance and ip target groups of application load balancers only",
            "lbctl.yaml:22:88: target_groups.lam.targets: a lambda target group has one function as its target, as on AWS",
            "lbctl.yaml:22:110: target_groups.lam.targets[0].port: a function target has no port",
            "lbctl.yaml:24:18: functions.f.command[0]: the program to run must not be empty",
            "lbctl.yaml:24:37: functions.f.env.A=B: `A=B` is not an environment variable name: not empty, no `=` or NUL",
            "lbctl.yaml:29:65: autoscaling_groups.g.launch_template.command[3]: `{ipp}` is not a placeholder ({ip}, {port} or {instance_id}); did you mean `{ip}`?",
        ],
    );
    // Five values to match per rule at most, and a fixed response's body of 1 KiB.
    let busy = BASE.to_string()
        + "load_balancers:\n  public:\n    type: application\n    listeners:\n      - port: 8080\n        protocol: HTTP\n        default_action: { fixed_response: { status_code: 200, body: '"
        + &"x".repeat(1025)
        + "' } }\n        rules:\n          - priority: 1\n            conditions: { path_pattern: [/a, /b, /c], host_header: [a.example, b.example], http_request_method: [GET] }\n            action: { forward: web }\n";
    check(
        &busy,
        &[
            "lbctl.yaml:20:69: load_balancers.public.listeners[0].default_action.fixed_response.body: body is 1025 characters; a fixed response's is at most 1024, as on AWS",
            "lbctl.yaml:23:25: load_balancers.public.listeners[0].rules[0].conditions: this rule has 6 values to match; a rule takes at most 5, as on AWS",
        ],
    );
}

#[test]
fn a_byte_order_mark_is_no_part_of_the_spec() {
    check(&format!("\u{feff}{BASE}"), &[]);
}

/// A listener forwarding to another listener of its own load balancer (an
/// ip target at it) is no loop; back to itself it is.
#[test]
fn a_forward_to_another_listener_is_no_loop() {
    let source = "version: 1
name: hops
load_balancers:
  front:
    type: application
    listeners:
      - { port: 31080, protocol: HTTP, default_action: { forward: inner } }
      - { port: 31081, protocol: HTTP, default_action: { forward: app } }
target_groups:
  inner: { target_type: ip, port: 31081, targets: [{ ip: 127.0.0.1 }] }
  app: { target_type: ip, port: 9000, targets: [{ ip: 127.0.0.2 }] }
";
    check(source, &[]);
    check(
        &source.replace("forward: app", "forward: inner"),
        &["lbctl.yaml:5:5: load_balancers.front: forwarding loop: load_balancers.front (port 31081) -> target_groups.inner -> load_balancers.front (port 31081)"],
    );
}
