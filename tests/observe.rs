//! Seeing what a load balancer does: access logs in AWS's format, read with
//! the field list AWS documents; Prometheus metrics checked by `promtool`
//! (Debian `prometheus`, which `.ci/run` installs) and counted against the
//! requests sent.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::util::*;

const HEALTHY: Duration = Duration::from_secs(30);

/// The fields of an ALB access-log entry, in AWS's order
/// (docs.aws.amazon.com/elasticloadbalancing/latest/application/load-balancer-access-logs.html).
const ALB_FIELDS: [&str; 30] = [
    "type",
    "time",
    "elb",
    "client:port",
    "target:port",
    "request_processing_time",
    "target_processing_time",
    "response_processing_time",
    "elb_status_code",
    "target_status_code",
    "received_bytes",
    "sent_bytes",
    "request",
    "user_agent",
    "ssl_cipher",
    "ssl_protocol",
    "target_group_arn",
    "trace_id",
    "domain_name",
    "chosen_cert_arn",
    "matched_rule_priority",
    "request_creation_time",
    "actions_executed",
    "redirect_url",
    "error_reason",
    "target:port_list",
    "target_status_code_list",
    "classification",
    "classification_reason",
    "conn_trace_id",
];

/// One log line split as AWS's parsers split it: on spaces, a quoted
/// field (with `\"` inside) being one.
fn fields(line: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut chars = line.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c == ' ' {
            chars.next();
            continue;
        }
        let mut field = String::new();
        if c == '"' {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => field.extend(chars.next()),
                    '"' => break,
                    c => field.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ' ' {
                    break;
                }
                field.push(c);
                chars.next();
            }
        }
        found.push(field);
    }
    found
}

/// A line as (field name, value) pairs.
fn entry(line: &str) -> std::collections::BTreeMap<&'static str, String> {
    let values = fields(line);
    assert_eq!(values.len(), ALB_FIELDS.len(), "{line}");
    ALB_FIELDS.iter().copied().zip(values).collect()
}

#[test]
fn access_logs_are_aws_lines_and_metrics_count_the_requests() {
    let (port, worker_port) = (free_port(), free_port());
    let mut worker = spawn_worker("w-1", worker_port);
    struct Kill<'a>(&'a mut std::process::Child);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _worker = Kill(&mut worker);
    let stack = Stack::new(&format!(
        r#"version: 1
name: logged
load_balancers:
  public:
    type: application
    access_logs: true
    listeners:
      - port: {port}
        protocol: HTTP
        default_action: {{ forward: web }}
        rules:
          - {{ priority: 10, conditions: {{ path_pattern: ["/old/*"] }}, action: {{ redirect: {{ path: "/new/#{{path}}", status_code: 301 }} }} }}
          - {{ priority: 20, conditions: {{ path_pattern: ["/teapot"] }}, action: {{ fixed_response: {{ status_code: 418, body: short and stout }} }} }}
          - {{ priority: 30, conditions: {{ path_pattern: ["/broken"] }}, action: {{ forward: broken }} }}
target_groups:
  web:
    port: {worker_port}
    target_type: ip
    targets: [{{ ip: 127.0.0.1 }}]
    health_check: {{ path: /health, interval: 300ms, timeout: 250ms, healthy_threshold: 2 }}
  broken:
    target_type: lambda
    targets: [{{ function: broken }}]
functions:
  broken:
    command: [sh, -c, "echo this is not a response document"]
"#
    ));
    stack.apply();
    let url = format!("http://127.0.0.1:{port}");
    wait_for("the worker healthy", HEALTHY, || curl(&format!("{url}/"), &[]).filter(|it| it.status == 200));

    let log = stack.dir.path().join(".lbctl/logs/public/access.log");
    let lines_now =
        || std::fs::read_to_string(&log).unwrap_or_default().lines().map(str::to_string).collect::<Vec<_>>();
    let status = stack.status();
    let metrics_url = status["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|it| it["address"] == "load_balancer.public")
        .and_then(|it| it["live"]["metrics_url"].as_str())
        .expect("a metrics_url in status --json")
        .to_string();
    let requests_to = |text: &str| -> u64 {
        text.lines()
            .find(|it| it.starts_with("lbctl_requests_total{load_balancer=\"public\",target_group=\"web\","))
            .and_then(|it| it.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0)
    };
    let healthy = "lbctl_healthy_hosts{load_balancer=\"public\",target_group=\"web\"} 1";
    let metrics = wait_for("the worker healthy in the metrics", HEALTHY, || {
        curl(&metrics_url, &[]).filter(|it| it.body.lines().any(|line| line == healthy)).map(|it| it.body)
    });
    let counted_before = requests_to(&metrics);

    // Ten requests: seven forwarded, a redirect, a fixed response, a 502.
    let (mut codes, mut traces_seen) = (Vec::new(), Vec::new());
    let client_trace = "X-Amzn-Trace-Id: Root=1-67891233-abcdef012345678912345678;CalledFrom=app";
    for path in ["/", "/a", "/b?x=1", "/c", "/d", "/e", "/f", "/old/page", "/teapot", "/broken"] {
        // One names its host without a port, which the line adds; one
        // comes with a trace of its own.
        let mut headers = vec!["User-Agent: lbctl-test/1.0"];
        match path {
            "/c" => headers.push("Host: shop.example"),
            "/d" => headers.push(client_trace),
            _ => {}
        }
        let response = curl(&format!("{url}{path}"), &headers).unwrap();
        codes.push(response.status);
        traces_seen.push(response.headers.get("x-seen-amzn-trace-id").cloned());
    }
    assert_eq!(codes, [200, 200, 200, 200, 200, 200, 200, 301, 418, 502]);

    // The test's requests are the lines with its User-Agent (the health
    // wait's curl may still be in the writer's buffer).
    let lines = wait_for("ten access-log lines", Duration::from_secs(10), || {
        let lines: Vec<String> = lines_now().into_iter().filter(|it| it.contains("\"lbctl-test/1.0\"")).collect();
        (lines.len() >= 10).then_some(lines)
    });
    assert_eq!(lines.len(), 10, "{lines:#?}");
    let entries: Vec<_> = lines.iter().map(|it| entry(it)).collect();
    for (entry, code) in entries.iter().zip(&codes) {
        assert_eq!(entry["type"], "http");
        assert!(entry["elb"].starts_with("app/public/"), "{entry:?}");
        assert!(entry["client:port"].starts_with("127.0.0.1:"), "{entry:?}");
        assert_eq!(entry["elb_status_code"], code.to_string(), "{entry:?}");
        assert_eq!(entry["user_agent"], "lbctl-test/1.0");
        assert!(entry["time"].ends_with('Z') && entry["request_creation_time"] <= entry["time"], "{entry:?}");
        assert!(entry["conn_trace_id"].starts_with("TID_"), "{entry:?}");
        assert!(entry["received_bytes"].parse::<u64>().unwrap() > 0);
        assert!(entry["sent_bytes"].parse::<u64>().unwrap() > 0);
    }
    // The trace id is the X-Amzn-Trace-Id the target got, the client's
    // Root kept when it sent one.
    for (idx, (entry, seen)) in entries.iter().zip(&traces_seen).enumerate() {
        let trace = &entry["trace_id"];
        match (idx, seen) {
            (0..=6, Some(seen)) => assert_eq!(trace, seen, "{entry:?}"),
            (7..=9, None) => {}
            _ => panic!("request {idx}: the target saw trace {seen:?}"),
        }
        let ours = if idx == 4 { "Self=1-" } else { "Root=1-" };
        assert!(trace.starts_with(ours), "{entry:?}");
    }
    assert!(entries[4]["trace_id"].ends_with(";Root=1-67891233-abcdef012345678912345678;CalledFrom=app"));
    let worker_address = format!("127.0.0.1:{worker_port}");
    for entry in &entries[..7] {
        assert_eq!(entry["target:port"], worker_address);
        assert_eq!((entry["target_status_code"].as_str(), entry["matched_rule_priority"].as_str()), ("200", "0"));
        assert_eq!(entry["actions_executed"], "forward");
        assert!(entry["target_group_arn"].contains(":targetgroup/web/"), "{entry:?}");
        assert_eq!(entry["target:port_list"], worker_address);
        assert!(entry["target_processing_time"].parse::<f64>().unwrap() >= 0.0);
    }
    assert_eq!(entries[2]["request"], format!("GET http://127.0.0.1:{port}/b?x=1 HTTP/1.1"));
    assert_eq!(entries[3]["request"], format!("GET http://shop.example:{port}/c HTTP/1.1"));
    // Not dispatched to a target: every step -1, as AWS has it (a Lambda
    // function that answered badly has its times, as in AWS's example).
    for entry in &entries[7..9] {
        let steps = ["request_processing_time", "target_processing_time", "response_processing_time"];
        assert_eq!(steps.map(|it| entry[it].as_str()), ["-1"; 3], "{entry:?}");
    }
    let redirect = &entries[7];
    assert_eq!((redirect["target:port"].as_str(), redirect["target_status_code"].as_str()), ("-", "-"));
    assert_eq!((redirect["matched_rule_priority"].as_str(), redirect["actions_executed"].as_str()), ("10", "redirect"));
    assert_eq!(redirect["redirect_url"], format!("http://127.0.0.1:{port}/new/old/page"));
    assert_eq!(redirect["target_processing_time"], "-1");
    let fixed = &entries[8];
    assert_eq!((fixed["matched_rule_priority"].as_str(), fixed["actions_executed"].as_str()), ("20", "fixed-response"));
    assert_eq!(fixed["target_group_arn"], "-");
    let broken = &entries[9];
    assert_eq!(
        (broken["matched_rule_priority"].as_str(), broken["error_reason"].as_str()),
        ("30", "LambdaInvalidResponse")
    );
    assert_eq!(broken["target_status_code"], "-");
    assert!(broken["target_group_arn"].contains(":targetgroup/broken/"), "{broken:?}");

    // Metrics: the exposition passes promtool; the web group's counter grew
    // by the seven requests sent to it.
    let metrics = curl(&metrics_url, &[]).unwrap().body;
    promtool(&metrics);
    assert_eq!(requests_to(&metrics) - counted_before, 7, "{metrics}");
    for expected in [
        "lbctl_httpcode_elb_total{load_balancer=\"public\",class=\"3xx\"} 1",
        "lbctl_httpcode_elb_total{load_balancer=\"public\",class=\"4xx\"} 1",
        "lbctl_httpcode_elb_total{load_balancer=\"public\",class=\"5xx\"} 1",
        "lbctl_healthy_hosts{load_balancer=\"public\",target_group=\"web\"} 1",
    ] {
        assert!(metrics.lines().any(|it| it == expected), "no `{expected}` in\n{metrics}");
    }
    assert!(metrics.contains(
        "lbctl_target_response_time_seconds_bucket{load_balancer=\"public\",target_group=\"web\",le=\"+Inf\"}"
    ));
    let target_2xx = metrics
        .lines()
        .find(|it| {
            it.starts_with("lbctl_httpcode_target_total{load_balancer=\"public\",target_group=\"web\",class=\"2xx\"}")
        })
        .and_then(|it| it.rsplit(' ').next()?.parse::<u64>().ok())
        .unwrap();
    assert!(target_2xx >= 8, "the first check request and the seven: {target_2xx}");

    // A request that does not parse is answered 400 by the proxy, and
    // logged and counted as AWS does: no request line, no target, no rule.
    const MALFORMED: &[u8] = b"GET / HTTP/1.1 and more\r\nHost: shop.example\r\nUser-Agent: lbctl-test\r\n\r\n";
    // Refused at its first line, long before its end: still all received.
    let answer = exchange(port, MALFORMED);
    assert!(answer.starts_with(b"HTTP/1.1 400 "), "{}", String::from_utf8_lossy(&answer));
    let malformed = wait_for("the malformed request's line", Duration::from_secs(10), || {
        lines_now().into_iter().find(|it| it.contains(" 400 - "))
    });
    let malformed = entry(&malformed);
    assert_eq!(malformed["request"], format!("- http://public.logged.elb.localhost:{port}- -"), "{malformed:?}");
    assert_eq!((malformed["target:port"].as_str(), malformed["request_processing_time"].as_str()), ("-", "-1"));
    assert_eq!((malformed["matched_rule_priority"].as_str(), malformed["actions_executed"].as_str()), ("-", "-"));
    assert_eq!(malformed["received_bytes"], MALFORMED.len().to_string());
    assert_eq!(malformed["sent_bytes"], answer.len().to_string());
    // HTTP/1.1 without a Host: 400 (RFC 9112), logged with its request line.
    let answer = exchange(port, b"GET /no-host HTTP/1.1\r\nUser-Agent: lbctl-test/2.0\r\n\r\n");
    assert!(answer.starts_with(b"HTTP/1.1 400 "), "{}", String::from_utf8_lossy(&answer));
    let no_host = wait_for("the line of the request without a Host", Duration::from_secs(10), || {
        lines_now().into_iter().find(|it| it.contains("\"lbctl-test/2.0\""))
    });
    let no_host = entry(&no_host);
    assert_eq!(no_host["request"], format!("GET http://public.logged.elb.localhost:{port}/no-host HTTP/1.1"));
    assert_eq!((no_host["elb_status_code"].as_str(), no_host["target:port"].as_str()), ("400", "-"));
    // AWS's limits: a request line over 16 KiB gets 414, a header line
    // over 16 KiB 431, each logged; a request line at the limit is served.
    let path = format!("/{}", "a".repeat(16 * 1024 - 14));
    assert_eq!(curl(&format!("{url}{path}"), &[]).unwrap().status, 200, "a request line of 16 KiB");
    let head = format!("GET {path}a HTTP/1.1\r\nHost: shop.example\r\nUser-Agent: lbctl-test/3.0\r\n\r\n");
    let answer = exchange(port, head.as_bytes());
    assert!(answer.starts_with(b"HTTP/1.1 414 "), "{}", String::from_utf8_lossy(&answer[..40]));
    let big = "b".repeat(16 * 1024);
    let head = format!("GET /big HTTP/1.1\r\nHost: shop.example\r\nUser-Agent: lbctl-test/4.0\r\nX-Big: {big}\r\n\r\n");
    let answer = exchange(port, head.as_bytes());
    assert!(answer.starts_with(b"HTTP/1.1 431 "), "{}", String::from_utf8_lossy(&answer[..40]));
    for (agent, code, request) in [
        ("lbctl-test/3.0", "414", format!("GET http://shop.example:{port}{path}a HTTP/1.1")),
        ("lbctl-test/4.0", "431", format!("GET http://shop.example:{port}/big HTTP/1.1")),
    ] {
        let line = wait_for("the line of a request over a limit", Duration::from_secs(10), || {
            lines_now().into_iter().find(|it| it.contains(&format!("\"{agent}\"")))
        });
        let line = entry(&line);
        assert_eq!((line["elb_status_code"].as_str(), line["target:port"].as_str()), (code, "-"), "{line:?}");
        assert_eq!(line["request"], request);
    }
    let metrics = curl(&metrics_url, &[]).unwrap().body;
    let refused = "lbctl_httpcode_elb_total{load_balancer=\"public\",class=\"4xx\"} 5";
    assert!(metrics.lines().any(|it| it == refused), "no `{refused}` in\n{metrics}");
}

/// Sends `bytes` on a new connection to `port`, and reads the answer until
/// the load balancer closes the connection.
fn exchange(port: u16, bytes: &[u8]) -> Vec<u8> {
    use std::io::{Read, Write};
    let mut client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    client.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    client.write_all(bytes).unwrap();
    let mut answer = Vec::new();
    client.read_to_end(&mut answer).unwrap();
    answer
}

/// Runs `promtool check metrics` on `text`; fails on any problem it reports.
fn promtool(text: &str) {
    let promtool =
        ["/usr/bin/promtool", "/usr/local/bin/promtool"].into_iter().find(|it| Path::new(it).exists()).expect(
            "promtool is missing: install Debian's `prometheus` package (.ci/run does: apt-get install prometheus)",
        );
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "promtool check metrics:\n{}{}\n{text}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
