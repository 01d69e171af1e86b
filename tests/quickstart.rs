//! `examples/quickstart.yaml` applied, exercised and destroyed: the whole
//! loop of the walkthrough on real processes.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::util::*;

const HEALTHY: Duration = Duration::from_secs(60);

/// Distinct instance ids answering `count` requests.
fn answering(url: &str, headers: &[&str], count: usize) -> BTreeSet<String> {
    (0..count).filter_map(|_| instance_of(url, headers)).collect()
}

fn ids(instances: &[serde_json::Value]) -> BTreeSet<String> {
    instances.iter().map(|it| it["id"].as_str().unwrap().to_string()).collect()
}

#[test]
fn quickstart_routes_scales_heals_and_destroys() {
    let port = free_port();
    let stack = Stack::example(
        "quickstart.yaml",
        &[("port: 8080\n        protocol: HTTP", &format!("port: {port}\n        protocol: HTTP"))],
    );

    // Apply returns only when healthy, and prints the URL.
    let applied = stack.apply();
    let outputs = Stack::outputs(&applied);
    let url = outputs["public_url"].clone();
    assert_eq!(outputs["public_dns_name"], "public.quickstart.elb.localhost");
    assert_eq!(url, format!("http://{}:{port}/", url_host(&outputs, "public", "127.0.0.1")));
    let web = ids(&stack.instances("web"));
    let images = ids(&stack.instances("images"));
    assert_eq!((web.len(), images.len()), (2, 2));

    // The default action spreads over both web instances.
    assert_eq!(answering(&url, &[], 20), web, "20 requests reach both web instances");
    // Path and host rules reach the images group.
    let images_url = format!("{url}images/x");
    assert!(answering(&images_url, &[], 6).is_subset(&images));
    assert_eq!(answering(&url, &["Host: image.example.com"], 10), images);
    // The load balancer adds X-Forwarded-* and keeps Host.
    let response = curl(&url, &[]).unwrap();
    assert_eq!(response.headers["x-seen-forwarded-for"], "127.0.0.1");
    assert_eq!(response.headers["x-seen-forwarded-proto"], "http");
    assert_eq!(response.headers["x-seen-forwarded-port"], port.to_string());
    assert_eq!(response.headers["x-seen-host"], format!("{}:{port}", url_host(&outputs, "public", "127.0.0.1")));
    // And X-Amzn-Trace-Id, as AWS: the request's id as its Root when the
    // client sent none, as its Self before the client's fields otherwise.
    let trace = &response.headers["x-seen-amzn-trace-id"];
    assert!(trace.starts_with("Root=1-") && trace.len() == 40, "{trace}");
    let root = "Root=1-67891233-abcdef012345678912345678";
    let response = curl(&url, &[&format!("X-Amzn-Trace-Id: {root};CalledFrom=app")]).unwrap();
    let trace = &response.headers["x-seen-amzn-trace-id"];
    assert!(trace.starts_with("Self=1-") && trace.ends_with(&format!(";{root};CalledFrom=app")), "{trace}");
    // The client's own X-Forwarded-For is kept and appended to; its
    // X-Forwarded-Proto and -Port are the listener's.
    let spoofed = ["X-Forwarded-For: 203.0.113.7", "X-Forwarded-Proto: https", "X-Forwarded-Port: 1"];
    let response = curl(&url, &spoofed).unwrap();
    assert_eq!(response.headers["x-seen-forwarded-for"], "203.0.113.7, 127.0.0.1");
    assert_eq!(response.headers["x-seen-forwarded-proto"], "http");
    assert_eq!(response.headers["x-seen-forwarded-port"], port.to_string());

    // Nothing to do right after an apply.
    stack.lbctl(&["plan", "--detailed-exitcode"]).expect_code(0);

    // desired_capacity 2 -> 4 is an in-place update that keeps the two.
    stack.edit("max_size: 6\n    desired_capacity: 2", "max_size: 6\n    desired_capacity: 4");
    let plan = stack.lbctl(&["plan", "--detailed-exitcode"]).expect_code(2);
    assert!(plan.stdout.contains("~ autoscaling_group \"web\" {"), "{}", plan.stdout);
    assert!(plan.stdout.contains("~ desired_capacity: 2 -> 4"), "{}", plan.stdout);
    assert!(plan.stdout.contains("Plan: 0 to add, 1 to change, 0 to destroy."), "{}", plan.stdout);
    stack.apply();
    let scaled = ids(&stack.instances("web"));
    assert_eq!(scaled.len(), 4);
    assert!(web.is_subset(&scaled), "the original instances stay: {web:?} in {scaled:?}");
    assert_eq!(answering(&url, &[], 40), scaled, "requests reach all 4 instances");
    stack.lbctl(&["plan", "--detailed-exitcode"]).expect_code(0);

    // An instance killed with -9 is replaced, and the new one serves.
    let victim = stack.instances("web")[0].clone();
    kill9(victim["pid"].as_u64().unwrap() as u32);
    let victim_id = victim["id"].as_str().unwrap().to_string();
    let replacement = wait_for("a replacement instance to serve", HEALTHY, || {
        let now = answering(&url, &[], 12);
        let fresh: Vec<String> = now.difference(&scaled).cloned().collect();
        (!now.contains(&victim_id) && !fresh.is_empty()).then(|| fresh[0].clone())
    });
    assert!(replacement.starts_with("i-") && replacement.len() == 19, "{replacement}");

    // A killed load balancer is drift: plan names it, apply repairs it.
    let lb_pid: u32 =
        std::fs::read_to_string(stack.dir.path().join(".lbctl/run/lb/public/pid")).unwrap().trim().parse().unwrap();
    kill9(lb_pid);
    wait_for("the proxy to be gone", Duration::from_secs(10), || (!alive(lb_pid)).then_some(()));
    let plan = stack.lbctl(&["plan", "--detailed-exitcode"]).expect_code(2);
    assert!(plan.stdout.contains("# load_balancer.public will be created"), "{}", plan.stdout);
    assert!(plan.stdout.contains(&format!("proxy process {lb_pid} is not running")), "{}", plan.stdout);
    stack.apply();
    stack.lbctl(&["plan", "--detailed-exitcode"]).expect_code(0);
    assert!(instance_of(&url, &[]).is_some(), "serves again after repair");

    // status shows targets with their health, the instances and each
    // group's latest events, in 100 columns; --wide adds the log files.
    let status = stack.lbctl(&["status"]).expect_code(0);
    assert!(status.stdout.contains("healthy"), "{}", status.stdout);
    assert!(status.stdout.contains("InService"), "{}", status.stdout);
    let wide_lines: Vec<&str> = status.stdout.lines().filter(|it| it.chars().count() > 100).collect();
    assert!(wide_lines.is_empty(), "lines over 100 columns: {wide_lines:#?}");
    // Ids and addresses are never split across lines: a search finds them.
    let resources = stack.status()["resources"].clone();
    for group in resources.as_array().unwrap().iter().filter_map(|it| it["live"]["instances"].as_array()) {
        for instance in group {
            for key in ["id", "address"] {
                let text = instance[key].as_str().unwrap();
                assert!(status.stdout.contains(text), "`{text}` whole in\n{}", status.stdout);
            }
        }
    }
    assert!(status.stdout.contains("latest events:"), "{}", status.stdout);
    let events = stack.status()["resources"].to_string();
    assert!(events.contains(&format!("replacing {victim_id}")), "the replacement is an event: {events}");
    assert!(status.stdout.contains("instance logs: "), "{}", status.stdout);
    assert!(!status.stdout.contains(".log │"), "no log column without --wide");
    let wide = stack.lbctl(&["status", "--wide"]).expect_code(0);
    assert!(wide.stdout.contains("log"), "{}", wide.stdout);
    assert!(wide.stdout.contains("reason"), "the reasons' column keeps its words whole: {}", wide.stdout);

    // destroy leaves nothing: no process, the port free, an empty state.
    let pids = stack.pids();
    assert!(pids.len() >= 9, "proxy, 2 supervisors, 6 instances: {pids:?}");
    stack.lbctl(&["destroy", "--auto-approve"]).expect_code(0);
    for pid in pids {
        assert!(!alive(pid), "process {pid} survived destroy");
    }
    assert!(!port_in_use(port), "port {port} is free again");
    let show = stack.lbctl(&["show"]).expect_code(0);
    assert_eq!(show.stdout, "The state is empty.\n");
    assert!(!stack.dir.path().join(".lbctl/run").exists(), "runtime files removed");
}
