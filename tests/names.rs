//! Names that resolve for every client: the URLs `apply` prints reach the
//! load balancers from curl, Python's urllib and wrk alike. Where lbctl may
//! write `/etc/hosts` (as root, in CI), they are the DNS names; elsewhere
//! they are addresses, never a name that does not resolve.

use std::process::Command;
use std::time::Duration;

use crate::util::*;

const HEALTHY: Duration = Duration::from_secs(30);

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Reaches `url` with curl, Python and wrk (bounded: one second, two
/// connections); each must get answers from an instance.
fn every_client_reaches(url: &str) {
    let response = wait_for(&format!("curl to reach {url}"), HEALTHY, || curl(url, &[]).filter(|it| it.status == 200));
    assert!(response.body.contains(" from i-"), "{}", response.body);

    let python = Command::new("python3")
        .args([
            "-c",
            "import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())",
            url,
        ])
        .output()
        .unwrap();
    assert!(python.status.success(), "python3 urllib: {}", String::from_utf8_lossy(&python.stderr));
    assert!(String::from_utf8_lossy(&python.stdout).contains(" from i-"));

    let wrk = Command::new("wrk")
        .args(["-t1", "-c2", "-d1s", "--timeout", "2s", url])
        .output()
        .expect("wrk is missing: install Debian's `wrk` package (.ci/run does)");
    let report = String::from_utf8_lossy(&wrk.stdout);
    assert!(wrk.status.success(), "wrk: {report}{}", String::from_utf8_lossy(&wrk.stderr));
    let requests: u64 = report
        .lines()
        .find(|it| it.contains("requests in"))
        .and_then(|it| it.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    assert!(requests > 0, "wrk got no answers from {url}:\n{report}");
    assert!(!report.contains("Socket errors") && !report.contains("Non-2xx"), "wrk saw failures at {url}:\n{report}");
}

#[test]
fn printed_urls_reach_both_load_balancers_from_every_client() {
    let (alb, nlb) = (free_port(), free_port());
    let stack = Stack::new(&format!(
        "version: 1
name: names
load_balancers:
  public:
    type: application
    listeners: [{{ port: {alb}, protocol: HTTP, default_action: {{ forward: web }} }}]
  edge:
    type: network
    listeners: [{{ port: {nlb}, protocol: TCP, default_action: {{ forward: via-alb }} }}]
target_groups:
  web: {{ port: {port}, health_check: {{ path: /health, interval: 300ms, timeout: 250ms, healthy_threshold: 2 }} }}
  via-alb:
    protocol: TCP
    port: {alb}
    target_type: alb
    targets: [{{ load_balancer: public }}]
    health_check: {{ interval: 300ms, timeout: 250ms, healthy_threshold: 2 }}
autoscaling_groups:
  web:
    min_size: 1
    max_size: 1
    health_check_type: ELB
    target_groups: [web]
    launch_template: {{ command: [lbctl, worker] }}
",
        port = free_port()
    ));
    let outputs = Stack::outputs(&stack.apply());
    let alb_url = outputs["public_url"].clone();
    let edge = outputs["edge_url"].replace("tcp://", "http://") + "/";
    if is_root() {
        // lbctl wrote the names to /etc/hosts: the URLs are by name, and
        // the system resolver (getent, glibc) gives each its address.
        assert_eq!(alb_url, format!("http://public.names.elb.localhost:{alb}/"));
        assert_eq!(edge, format!("http://edge.names.elb.internal:{nlb}/"));
        let getent = Command::new("getent").args(["hosts", "edge.names.elb.internal"]).output().unwrap();
        assert!(String::from_utf8_lossy(&getent.stdout).starts_with(&outputs["edge_static_ip"]), "{getent:?}");
    } else {
        // Without /etc/hosts, the URLs carry addresses.
        assert_eq!(alb_url, format!("http://127.0.0.1:{alb}/"));
        assert_eq!(edge, format!("http://{}:{nlb}/", outputs["edge_static_ip"]));
    }
    every_client_reaches(&alb_url);
    every_client_reaches(&edge);

    // Destroy takes the names out again.
    stack.lbctl(&["destroy", "--auto-approve"]).expect_code(0);
    let hosts = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
    assert!(!hosts.contains(".names.elb."), "{hosts}");
}
