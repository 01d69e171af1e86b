//! Zero failed requests under load while the load balancer is reconfigured
//! five times and an instance is killed with -9: the proxy swaps routing
//! tables without touching its listeners, and retries an idempotent request
//! whose target died on another target.

use std::time::Duration;

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

#[test]
fn five_applies_and_a_killed_instance_fail_no_request() {
    let port = free_port();
    let stack = Stack::new(&spec(port));
    stack.apply();

    let load = LoadLoop::start(port, "hitless.example.com", &["/"; CLIENTS], LOAD_LIMIT);
    // Progress: at least `more` successful requests from now on.
    let progress = |what: &str, more: u64| load.wait_for_more(what, more);
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

    let tally = load.finish();
    let (ok, failed) = (tally.ok(), tally.failed());
    let by_group = tally.by_greeting.lock().unwrap().clone();
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
