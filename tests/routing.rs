//! Every rule condition and action of an application load balancer, through
//! the real binary, with fixed workers (`lbctl worker --id a|b|c`) as `ip`
//! targets so that each answer names the group that served it.

use std::collections::BTreeMap;
use std::process::{Child, Command};
use std::time::Duration;

use crate::util::*;

/// Workers started by the test, killed when it ends however it ends.
struct Workers(Vec<Child>);

impl Drop for Workers {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn start_workers(names: &[&str]) -> (Workers, BTreeMap<String, u16>) {
    let mut children = Vec::new();
    let mut ports = BTreeMap::new();
    for name in names {
        let port = free_port();
        let child = spawn_worker(name, port);
        children.push(child);
        ports.insert(name.to_string(), port);
    }
    let workers = Workers(children);
    for port in ports.values() {
        wait_for("a worker to listen", Duration::from_secs(20), || {
            curl(&format!("http://127.0.0.1:{port}/health"), &[])
        });
    }
    (workers, ports)
}

/// The instance ids answering `count` requests made by one curl over one
/// keep-alive connection (`{n}` in the path is replaced by 1..=count).
fn answers(url: &str, count: usize, headers: &[&str]) -> Vec<String> {
    let mut command = Command::new("curl");
    command.args(["-sS", "--max-time", "60", "-o", "/dev/null", "-w", "%header{x-instance-id}\\n"]);
    for header in headers {
        command.args(["-H", header]);
    }
    command.arg(url.replace("{n}", &format!("[1-{count}]")));
    let output = command.output().unwrap();
    assert!(output.status.success(), "curl failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).lines().map(str::to_string).collect()
}

fn served_by(url: &str, headers: &[&str]) -> String {
    let response = curl(url, headers).unwrap();
    assert_eq!(response.status, 200, "{url} {headers:?}: {}", response.body);
    response.headers["x-instance-id"].clone()
}

#[test]
fn every_condition_and_action_routes_as_aws_does() {
    let (_workers, ports) = start_workers(&["a", "b", "c"]);
    let port = free_port();
    let spec = format!(
        r##"version: 1
name: routing
load_balancers:
  front:
    type: application
    listeners:
      - port: {port}
        protocol: HTTP
        default_action: {{ forward: a }}
        rules:
          - priority: 5
            conditions: {{ path_pattern: ["/both"], http_request_method: [POST] }}
            action: {{ forward: c }}
          - priority: 10
            conditions: {{ host_header: ["*.example.com"] }}
            action: {{ forward: b }}
          - priority: 20
            conditions: {{ path_pattern: ["/images/*", "/v?/img"] }}
            action: {{ forward: c }}
          - priority: 30
            conditions: {{ http_header: {{ name: X-Canary, values: ["on", "y*s"] }} }}
            action: {{ forward: b }}
          - priority: 40
            conditions: {{ http_request_method: [DELETE] }}
            action: {{ fixed_response: {{ status_code: 403, content_type: application/json, body: '{{"error":"nope"}}' }} }}
          - priority: 50
            conditions: {{ query_string: [{{ key: version, value: "v2*" }}, {{ value: canary }}] }}
            action: {{ forward: c }}
          - priority: 60
            conditions: {{ source_ip: ["10.0.0.0/8"] }}
            action: {{ forward: b }}
          - priority: 70
            conditions: {{ path_pattern: ["/mine"], source_ip: ["127.0.0.1/32"] }}
            action: {{ forward: b }}
          - priority: 80
            conditions: {{ path_pattern: ["/old/*"] }}
            action: {{ redirect: {{ protocol: HTTP, host: "new.#{{host}}", path: "/new/#{{path}}", query: "from=old&#{{query}}", status_code: 301 }} }}
          - priority: 90
            conditions: {{ path_pattern: ["/temp"] }}
            action: {{ redirect: {{ port: "9999" }} }}
          - priority: 100
            conditions: {{ path_pattern: ["/split/*"] }}
            action:
              forward:
                - {{ target_group: a, weight: 80 }}
                - {{ target_group: b, weight: 20 }}
                - {{ target_group: c, weight: 0 }}
target_groups:
  a: {{ target_type: ip, port: {a}, targets: [{{ ip: 127.0.0.1 }}], health_check: {{ path: /health, interval: 1s, timeout: 500ms, healthy_threshold: 2 }} }}
  b: {{ target_type: ip, port: {b}, targets: [{{ ip: 127.0.0.1 }}], health_check: {{ path: /health, interval: 1s, timeout: 500ms, healthy_threshold: 2 }} }}
  c: {{ target_type: ip, port: {c}, targets: [{{ ip: 127.0.0.1 }}], health_check: {{ path: /health, interval: 1s, timeout: 500ms, healthy_threshold: 2 }} }}
"##,
        a = ports["a"],
        b = ports["b"],
        c = ports["c"],
    );
    let stack = Stack::new(&spec);
    stack.apply();
    let base = format!("http://127.0.0.1:{port}");
    // The targets are healthy once every group answers from its worker.
    wait_for("all groups healthy", Duration::from_secs(30), || {
        let status = stack.status();
        let front = status["resources"].as_array().unwrap().iter().find(|it| it["address"] == "load_balancer.front");
        let healthy =
            front.map(|it| it["live"].to_string()).unwrap_or_default().matches("\"state\":\"healthy\"").count();
        (healthy == 3).then_some(())
    });

    // No rule matches: the default action.
    assert_eq!(served_by(&format!("{base}/"), &[]), "a");
    // host_header: wildcard, case-insensitive, port ignored.
    assert_eq!(served_by(&format!("{base}/"), &["Host: API.Example.COM:8080"]), "b");
    assert_eq!(served_by(&format!("{base}/"), &["Host: example.com"]), "a", "`*.` needs a subdomain");
    // path_pattern: `*` and `?` wildcards, case-sensitive, any of the values.
    assert_eq!(served_by(&format!("{base}/images/cat.png"), &[]), "c");
    assert_eq!(served_by(&format!("{base}/v2/img"), &[]), "c");
    assert_eq!(served_by(&format!("{base}/IMAGES/cat.png"), &[]), "a", "paths are case-sensitive");
    assert_eq!(served_by(&format!("{base}/images/x?version=1"), &[]), "c", "the query is not part of the path");
    // http_header: name case-insensitive, values with wildcards.
    assert_eq!(served_by(&format!("{base}/"), &["x-canary: on"]), "b");
    assert_eq!(served_by(&format!("{base}/"), &["X-CANARY: YES"]), "b", "header values are case-insensitive");
    assert_eq!(served_by(&format!("{base}/"), &["X-Canary: off"]), "a");
    // http_request_method with a fixed response.
    let denied = curl_with(&format!("{base}/anything"), &[], &["-X", "DELETE"]).unwrap();
    assert_eq!((denied.status, denied.body.as_str()), (403, r#"{"error":"nope"}"#));
    assert_eq!(denied.headers["content-type"], "application/json");
    // Several conditions in one rule must all match.
    let both = curl_with(&format!("{base}/both"), &[], &["-X", "POST", "-d", "x"]).unwrap();
    assert_eq!(both.headers["x-instance-id"], "c");
    assert_eq!(served_by(&format!("{base}/both"), &[]), "a", "GET /both misses the method condition");
    // query_string: key and value pattern, or value alone.
    assert_eq!(served_by(&format!("{base}/q?version=v2.1"), &[]), "c");
    assert_eq!(served_by(&format!("{base}/q?anything=canary"), &[]), "c");
    assert_eq!(served_by(&format!("{base}/q?version=v1"), &[]), "a");
    // source_ip: CIDR blocks.
    assert_eq!(served_by(&format!("{base}/mine"), &[]), "b", "127.0.0.1 is in 127.0.0.1/32");
    // Priorities: the lowest matching wins (host rule 10 before path rule 20).
    assert_eq!(served_by(&format!("{base}/images/x"), &["Host: a.example.com"]), "b");

    // Redirects with placeholders; 302 unless told otherwise.
    let moved = curl(&format!("{base}/old/a/b?x=1"), &["Host: shop.test"]).unwrap();
    assert_eq!(moved.status, 301);
    assert_eq!(moved.headers["location"], format!("http://new.shop.test:{port}/new/old/a/b?from=old&x=1"));
    let temp = curl(&format!("{base}/temp?y=2"), &["Host: shop.test"]).unwrap();
    assert_eq!((temp.status, temp.headers["location"].as_str()), (302, "http://shop.test:9999/temp?y=2"));

    // Weighted forward: 80/20/0 over 1,000 requests, within a few percent.
    let split = answers(&format!("{base}/split/{{n}}"), 1000, &[]);
    let count = |id: &str| split.iter().filter(|it| *it == id).count();
    println!("weighted forward over 1000 requests: a={} b={} c={}", count("a"), count("b"), count("c"));
    assert_eq!(split.len(), 1000);
    assert!((750..=850).contains(&count("a")), "a got {}", count("a"));
    assert!((150..=250).contains(&count("b")), "b got {}", count("b"));
    assert_eq!(count("c"), 0, "weight 0 gets nothing");
}
