//! Target tracking scaling: a group following the load balancer's request
//! count scales out under a bounded load loop and back in after it stops,
//! within min/max, and `plan` does not count the policy's capacity as drift.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::util::*;

fn spec(port: u16) -> String {
    web_group_spec(
        "scaling",
        port,
        "1s",
        "    min_size: 1
    max_size: 3
    desired_capacity: 1
    health_check_grace_period: 1s
    target_groups: [web]
    launch_template: { command: [lbctl, worker] }
    scaling:
      target_tracking: { metric: request_count_per_target, target_value: 20, cooldown: 3s }
",
    )
}

/// (desired, what sets it, live instances) as `status --json` reports them.
fn capacity(stack: &Stack) -> (u64, String, usize) {
    let status = stack.status();
    let resource = status["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|it| it["address"] == "autoscaling_group.web")
        .cloned()
        .unwrap_or_default();
    let live = &resource["live"];
    let instances = live["instances"].as_array().cloned().unwrap_or_default();
    let running =
        instances.iter().filter(|it| matches!(it["lifecycle"].as_str(), Some("Pending" | "InService"))).count();
    (live["desired"].as_u64().unwrap_or(0), live["desired_set_by"].as_str().unwrap_or("").to_string(), running)
}

/// Two threads sending keep-alive requests (about 200 per second in all)
/// until `stop`, 30 s, or 6000 requests each; counts failures.
fn load(port: u16, stop: Arc<AtomicBool>, failures: Arc<AtomicU64>) -> Vec<std::thread::JoinHandle<()>> {
    (0..2)
        .map(|_| {
            let (stop, failures) = (Arc::clone(&stop), Arc::clone(&failures));
            std::thread::spawn(move || {
                let started = Instant::now();
                let mut client = KeepAliveClient::new(port, "localhost");
                for _ in 0..6000 {
                    if stop.load(Ordering::SeqCst) || started.elapsed() > Duration::from_secs(30) {
                        break;
                    }
                    if !client.get("/").is_ok_and(|it| it.status == 200) {
                        failures.fetch_add(1, Ordering::SeqCst);
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            })
        })
        .collect()
}

#[test]
fn target_tracking_on_request_count_scales_out_under_load_and_back_in() {
    let port = free_port();
    let stack = Stack::new(&spec(port));
    let plan = stack.lbctl(&["plan"]).expect_code(0);
    assert!(!plan.stdout.contains("not supported"), "{}", plan.stdout);
    stack.apply();
    let (desired, set_by, _) = capacity(&stack);
    assert_eq!(desired, 1);
    assert_eq!(set_by, "target tracking on request_count_per_target");

    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicU64::new(0));
    let threads = load(port, Arc::clone(&stop), Arc::clone(&failures));
    let scaled_out = wait_for("the group scaled out under load", Duration::from_secs(30), || {
        let (desired, _, running) = capacity(&stack);
        assert!(desired <= 3 && running <= 3, "above max_size: desired {desired}, {running} running");
        (desired > 1 && running > 1).then_some(desired)
    });
    assert!((2..=3).contains(&scaled_out));
    let human = stack.lbctl(&["status"]).expect_code(0);
    let unwrapped = human.stdout.replace("\n  ", " ");
    let says = unwrapped.lines().any(|line| {
        line.contains("desired ") && line.contains(" (set by target tracking on request_count_per_target)")
    });
    assert!(says, "{}", human.stdout);
    // The policy's capacity is not drift, and plan says why it leaves it.
    let plan = stack.lbctl(&["plan", "--detailed-exitcode"]).expect_code(0);
    assert!(plan.stdout.contains("`desired_capacity` is managed at run time"), "{}", plan.stdout);

    stop.store(true, Ordering::SeqCst);
    for thread in threads {
        thread.join().unwrap();
    }
    wait_for("the group scaled back in after the load stopped", Duration::from_secs(30), || {
        let (desired, _, running) = capacity(&stack);
        assert!(desired <= 3 && running <= 3, "above max_size: desired {desired}, {running} running");
        (desired == 1 && running == 1).then_some(())
    });
    let events = stack.status().to_string();
    assert!(events.contains("target tracking: request_count_per_target is"), "{events}");
    assert_eq!(failures.load(Ordering::SeqCst), 0, "failed requests under load");
}
