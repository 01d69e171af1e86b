//! Auto-scaling group health and recovery: the walkthrough's "web server
//! down, instance fine" case under `ELB` and `EC2` health checks, and a
//! supervisor killed and re-created without losing its instances.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::util::*;

const SLOW: Duration = Duration::from_secs(60);

fn spec(port: u16, health_check_type: &str) -> String {
    let name = format!("asg-{}", health_check_type.to_lowercase());
    let group = format!(
        "    min_size: 2
    max_size: 3
    health_check_type: {health_check_type}
    health_check_grace_period: 1s
    target_groups: [web]
    launch_template: {{ command: [lbctl, worker] }}
"
    );
    web_group_spec(&name, port, "1s", &group)
}

/// (id, address, pid) of every instance the supervisor reports.
fn instances(stack: &Stack) -> Vec<(String, String, u32)> {
    stack
        .instances("web")
        .iter()
        .map(|it| {
            let id = it["id"].as_str().unwrap().to_string();
            (id, it["address"].as_str().unwrap().to_string(), it["pid"].as_u64().unwrap() as u32)
        })
        .collect()
}

fn stop_listener(address: &str) {
    curl_with(&format!("http://{address}/fault/stop-listener"), &[], &["-X", "POST"])
        .expect("the fault switch answers");
}

#[test]
fn elb_health_replaces_an_instance_whose_web_server_is_down() {
    let port = free_port();
    let stack = Stack::new(&spec(port, "ELB"));
    stack.apply();
    let before = instances(&stack);
    let (victim, address, pid) = before[0].clone();
    stop_listener(&address);
    let replaced = wait_for("the instance to be replaced", SLOW, || {
        let now = instances(&stack);
        let ids: BTreeSet<&String> = now.iter().map(|it| &it.0).collect();
        (!ids.contains(&victim) && now.len() == 2 && !alive(pid)).then_some(now)
    });
    assert!(replaced.iter().all(|it| it.0 != victim));
    let url = format!("http://127.0.0.1:{port}/");
    let answering: BTreeSet<String> = (0..10).filter_map(|_| instance_of(&url, &[])).collect();
    assert!(!answering.contains(&victim));

    // `lbctl logs web` tells the story, in order: the instance unhealthy
    // and why, replaced and terminated, its successor launched and healthy.
    let successor = replaced.iter().find(|it| !before.iter().any(|old| old.0 == it.0)).unwrap().0.clone();
    let logs = wait_for("the successor in service in the group's log", SLOW, || {
        let logs = stack.lbctl(&["logs", "web"]).expect_code(0).stdout;
        logs.lines().any(|it| it.contains(&successor) && it.contains("in service")).then_some(logs)
    });
    println!("{logs}");
    let position = |words: &[&str]| {
        logs.lines()
            .position(|line| words.iter().all(|word| line.contains(word)))
            .unwrap_or_else(|| panic!("no line with {words:?} in\n{logs}"))
    };
    let unhealthy = position(&[&victim, "unhealthy", "Target."]);
    let terminated = position(&[&victim, "terminated"]);
    let launched = position(&["launched", &successor]);
    let healthy = position(&[&successor, "in service"]);
    assert!(unhealthy < terminated && launched < healthy && unhealthy < healthy, "{logs}");
    // One group's events as written, each after its time.
    assert!(logs.lines().all(|it| it.starts_with("20") && !it.contains("[web]")), "{logs}");
    // `-f` follows here: a spec file after it is named back as `--file`.
    let slip = stack.lbctl(&["logs", "-f", "lbctl.yaml", "web"]).expect_code(1);
    assert!(slip.stderr.contains("write `lbctl logs --file lbctl.yaml web`"), "{}", slip.stderr);
}

#[test]
fn ec2_health_keeps_the_instance_but_the_load_balancer_stops_routing_to_it() {
    let port = free_port();
    let stack = Stack::new(&spec(port, "EC2"));
    stack.apply();
    let (victim, address, pid) = instances(&stack)[0].clone();
    stop_listener(&address);
    wait_for("the load balancer to mark it unhealthy", SLOW, || {
        let status = stack.status().to_string();
        status.contains("\"state\":\"unhealthy\"").then_some(())
    });
    let url = format!("http://127.0.0.1:{port}/");
    let answering: BTreeSet<String> = (0..10).filter_map(|_| instance_of(&url, &[])).collect();
    assert_eq!(answering.len(), 1, "only the healthy instance serves");
    assert!(!answering.contains(&victim));
    // EC2 sees a running process: the instance stays.
    assert!(instances(&stack).iter().any(|it| it.0 == victim), "kept by the EC2 health check");
    assert!(alive(pid));
}

#[test]
fn a_killed_supervisor_is_recreated_and_adopts_its_instances() {
    let port = free_port();
    let stack = Stack::new(&spec(port, "ELB"));
    stack.apply();
    let before: BTreeSet<String> = instances(&stack).into_iter().map(|it| it.0).collect();
    let supervisor: u32 =
        std::fs::read_to_string(stack.dir.path().join(".lbctl/run/asg/web/pid")).unwrap().trim().parse().unwrap();
    kill9(supervisor);
    wait_for("the supervisor to be gone", Duration::from_secs(10), || (!alive(supervisor)).then_some(()));
    // The instances keep serving without it.
    let url = format!("http://127.0.0.1:{port}/");
    assert!(instance_of(&url, &[]).is_some_and(|it| before.contains(&it)));
    let plan = stack.lbctl(&["plan", "--detailed-exitcode"]).expect_code(2);
    assert!(plan.stdout.contains(&format!("supervisor process {supervisor} is not running")), "{}", plan.stdout);
    stack.apply();
    let after: BTreeSet<String> = instances(&stack).into_iter().map(|it| it.0).collect();
    assert_eq!(after, before, "the same instances, adopted");
    stack.lbctl(&["plan", "--detailed-exitcode"]).expect_code(0);
}

/// An apply waits only for what it changes. With an `EC2` group keeping an
/// instance its load balancer finds unhealthy (correctly: EC2 health keeps
/// it), an apply that only changes another group's capacity finishes once
/// that group is ready; `wait_for_elb_capacity` makes a group wait for
/// instances healthy in the load balancer, as Terraform's setting does.
#[test]
fn apply_waits_only_for_what_it_changed() {
    let port = free_port();
    // The settings of a group registered in the target group of its name.
    let settings = |name: &str| {
        format!(
            "    min_size: 1
    max_size: 3
    desired_capacity: 1
    health_check_type: EC2
    health_check_grace_period: 1s
    target_groups: [{name}]
    launch_template: {{ command: [lbctl, worker] }}
"
        )
    };
    let other_group = "  other:\n    port: 8080\n    health_check: { path: /health, interval: 500ms, timeout: 300ms, healthy_threshold: 2, unhealthy_threshold: 2 }\n    deregistration_delay: 1s\n";
    let spec = web_group_spec("apply-waits", port, "1s", &settings("web"))
        .replace(
            "default_action: { forward: web } }]",
            "default_action: { forward: web }, rules: [{ priority: 1, conditions: { path_pattern: [\"/other/*\"] }, action: { forward: other } }] }]",
        )
        .replace("autoscaling_groups:\n", &format!("{other_group}autoscaling_groups:\n"))
        + "  other:\n"
        + &settings("other");
    let stack = Stack::new(&spec);
    stack.apply();
    let (_, address, _) = instances(&stack)[0].clone();
    stop_listener(&address);
    wait_for("the load balancer to mark it unhealthy", SLOW, || {
        stack.status().to_string().contains("\"state\":\"unhealthy\"").then_some(())
    });

    // Another group's capacity: ready as soon as that group is, whatever `web` does.
    stack.edit(
        "  other:\n    min_size: 1\n    max_size: 3\n    desired_capacity: 1",
        "  other:\n    min_size: 1\n    max_size: 3\n    desired_capacity: 2",
    );
    let run = stack.lbctl(&["apply", "--auto-approve", "--timeout", "60s"]).expect_code(0);
    assert!(!run.stderr.contains("autoscaling_group.web"), "web was not waited for:\n{}", run.stderr);
    stack.lbctl(&["plan", "--detailed-exitcode"]).expect_code(0);

    // With `wait_for_elb_capacity: 2`, the new instance is healthy and the
    // unhealthy one is not: apply waits, and says on what.
    stack.edit(
        "  web:\n    min_size: 1\n    max_size: 3\n    desired_capacity: 1",
        "  web:\n    min_size: 1\n    max_size: 3\n    desired_capacity: 2\n    wait_for_elb_capacity: 2",
    );
    let run = stack.lbctl(&["apply", "--auto-approve", "--timeout", "20s"]).expect_code(1);
    assert!(
        run.stderr
            .contains("autoscaling_group.web: 1 of 2 instances healthy in the load balancers (wait_for_elb_capacity)"),
        "{}",
        run.stderr
    );
}

/// A launch command that exits at once fails `apply` within seconds with
/// the instance's last log line, and `status` shows the crash loop.
#[test]
fn a_crash_loop_fails_apply_fast_and_shows_in_status() {
    let port = free_port();
    let group = "    min_size: 2
    max_size: 2
    target_groups: [web]
    launch_template:
      command: [sh, -c, \"echo starting; echo cannot open config.yaml >&2; exit 3\"]
";
    let stack = Stack::new(&web_group_spec("crash-loop", port, "1s", group));
    // Without the crash loop detection this would wait out the timeout.
    let run = stack.lbctl(&["apply", "--auto-approve", "--timeout", "15s"]).expect_code(1);
    assert!(run.stderr.contains("its instances keep exiting as they start"), "{}", run.stderr);
    assert!(run.stderr.contains("process exited with status 3"), "{}", run.stderr);
    assert!(run.stderr.contains("cannot open config.yaml"), "{}", run.stderr);
    let status = stack.lbctl(&["status"]).expect_code(0).stdout;
    assert!(status.contains("CRASH-LOOPING"), "{status}");
    assert!(status.contains("its last log line: cannot open config.yaml"), "{status}");
    // The template fixed, the next apply succeeds: the old template's
    // crashes do not count against the new one.
    stack.edit(
        "command: [sh, -c, \"echo starting; echo cannot open config.yaml >&2; exit 3\"]",
        "command: [\"lbctl\", \"worker\", \"--listen\", \"{ip}:{port}\"]",
    );
    stack.apply();
}
