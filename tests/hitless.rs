//! Zero failed requests under load while the load balancer is reconfigured
//! five times and an instance is killed with -9: the proxy swaps routing
//! tables without touching its listeners, and retries an idempotent request
//! whose target died on another target.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::util::*;

/// Client threads of the load loop.
const CLIENTS: usize = 4;
/// The load loop stops after this long even if the test does not stop it.
const LOAD_LIMIT: Duration = Duration::from_secs(150);

fn spec(port: u16) -> String {
    let group = "protocol: HTTP
    port: 8080
    health_check: { path: /health, interval: 300ms, timeout: 250ms, healthy_threshold: 2, unhealthy_threshold: 2 }
    deregistration_delay: 1s";
    let asg = |name: &str, size: u32| {
        format!(
            "  {name}:
    min_size: {size}
    max_size: {size}
    desired_capacity: {size}
    health_check_type: ELB
    health_check_grace_period: 5s
    target_groups: [{name}]
    launch_template:
      command: [\"lbctl\", \"worker\", \"--listen\", \"{{ip}}:{{port}}\"]
      env: {{ GREETING: {name} }}
"
        )
    };
    format!(
        r#"version: 1
name: hitless
load_balancers:
  public:
    type: application
    listeners:
      - port: {port}
        protocol: HTTP
        default_action: {{ forward: blue }}
        rules:
          - priority: 10
            conditions: {{ path_pattern: ["/blue/*"] }}
            action: {{ forward: blue }}
          - priority: 20
            conditions: {{ path_pattern: ["/green/*"] }}
            action: {{ forward: green }}
target_groups:
  blue:
    {group}
  green:
    {group}
autoscaling_groups:
{}{}"#,
        asg("blue", 3),
        asg("green", 2)
    )
}

/// What the load loop saw.
#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    failed: AtomicU64,
    /// Successful answers per greeting (`blue`, `green`).
    by_group: Mutex<BTreeMap<String, u64>>,
    /// The first few failures, for the assertion message.
    failures: Mutex<Vec<String>>,
}

/// One client thread: keep-alive GETs of `/` until `stop` or the time limit.
fn load(port: u16, stop: Arc<AtomicBool>, tally: Arc<Tally>) {
    let mut client = KeepAliveClient::new(port, "hitless.example.com");
    let started = Instant::now();
    let mut by_group: BTreeMap<String, u64> = BTreeMap::new();
    while !stop.load(Ordering::Relaxed) && started.elapsed() < LOAD_LIMIT {
        match client.get("/") {
            Ok(response) if response.status == 200 => {
                tally.ok.fetch_add(1, Ordering::Relaxed);
                let greeting = response.body.split_whitespace().next().unwrap_or("").to_string();
                *by_group.entry(greeting).or_insert(0) += 1;
            }
            other => {
                tally.failed.fetch_add(1, Ordering::Relaxed);
                let mut failures = tally.failures.lock().unwrap();
                if failures.len() < 10 {
                    failures.push(format!("after {:?}: {other:?}", started.elapsed()));
                }
            }
        }
    }
    let mut total = tally.by_group.lock().unwrap();
    for (group, count) in by_group {
        *total.entry(group).or_insert(0) += count;
    }
}

/// Stops the load threads when the test ends, however it ends.
struct LoadGuard {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl LoadGuard {
    fn finish(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            thread.join().unwrap();
        }
    }
}

impl Drop for LoadGuard {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[test]
fn five_applies_and_a_killed_instance_fail_no_request() {
    let port = free_port();
    let stack = Stack::new(&spec(port));
    stack.apply();

    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let threads = (0..CLIENTS)
        .map(|_| {
            let (stop, tally) = (stop.clone(), tally.clone());
            std::thread::spawn(move || load(port, stop, tally))
        })
        .collect();
    let guard = LoadGuard { stop, threads };
    // Progress: at least `more` successful requests from now on.
    let progress = |what: &str, more: u64| {
        let from = tally.ok.load(Ordering::Relaxed);
        wait_for(what, Duration::from_secs(30), || (tally.ok.load(Ordering::Relaxed) >= from + more).then_some(()));
    };
    progress("the load loop to start", 200);

    // 1. A rule with a fixed response on an unrelated path.
    stack.edit(
        "            action: { forward: green }\n",
        "            action: { forward: green }\n          - priority: 30\n            conditions: { path_pattern: [\"/teapot\"] }\n            action: { fixed_response: { status_code: 418, body: tea } }\n",
    );
    stack.apply();
    assert_eq!(curl(&format!("http://127.0.0.1:{port}/teapot"), &[]).unwrap().status, 418);
    progress("requests after apply 1", 200);

    // 2. A rule's priority.
    stack.edit("          - priority: 10\n", "          - priority: 15\n");
    stack.apply();
    progress("requests after apply 2", 200);

    // An instance of the group serving `/` killed under load.
    let victim = stack.instances("blue")[0]["pid"].as_u64().unwrap() as u32;
    kill9(victim);
    wait_for("the instance to die", Duration::from_secs(10), || (!alive(victim)).then_some(()));
    progress("requests after the kill", 500);

    // 3. The default action to the other group.
    stack.edit("        default_action: { forward: blue }", "        default_action: { forward: green }");
    stack.apply();
    progress("requests after apply 3", 200);

    // 4. The fixed-response rule removed.
    stack.edit(
        "          - priority: 30\n            conditions: { path_pattern: [\"/teapot\"] }\n            action: { fixed_response: { status_code: 418, body: tea } }\n",
        "",
    );
    stack.apply();
    progress("requests after apply 4", 200);

    // 5. The default action back.
    stack.edit("        default_action: { forward: green }", "        default_action: { forward: blue }");
    stack.apply();
    progress("requests after apply 5", 500);

    guard.finish();
    let (ok, failed) = (tally.ok.load(Ordering::Relaxed), tally.failed.load(Ordering::Relaxed));
    let by_group = tally.by_group.lock().unwrap().clone();
    println!("hitless: {ok} requests succeeded, {failed} failed; by group: {by_group:?}");
    if failed > 0 {
        let log = stack.dir.path().join(".lbctl/run/lb/public/proxy.log");
        println!("--- {} ---\n{}", log.display(), std::fs::read_to_string(&log).unwrap_or_default());
    }
    assert_eq!(failed, 0, "failed requests: {:?}", tally.failures.lock().unwrap());
    assert!(
        by_group.get("blue").copied().unwrap_or(0) > 0 && by_group.get("green").copied().unwrap_or(0) > 0,
        "{by_group:?}"
    );
}
