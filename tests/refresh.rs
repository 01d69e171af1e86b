//! Instance refresh: a launch template change under load replaces every
//! instance batch by batch with no failed request, and a broken template is
//! rolled back with a clear error from `apply`.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::util::*;

/// Client threads of the load loop.
const CLIENTS: usize = 2;
/// The load loop stops after this long even if the test does not stop it.
const LOAD_LIMIT: Duration = Duration::from_secs(90);

fn spec(port: u16) -> String {
    web_group_spec(
        "refresh",
        port,
        "1s",
        r#"    min_size: 3
    max_size: 4
    desired_capacity: 3
    health_check_type: ELB
    health_check_grace_period: 5s
    target_groups: [web]
    instance_refresh: { min_healthy_percentage: 50 }
    launch_template:
      command: ["lbctl", "worker"]
      env: { GREETING: one }
"#,
    )
}

/// Ids of the group's instances that are not on their way out.
fn live_ids(stack: &Stack) -> BTreeSet<String> {
    stack
        .instances("web")
        .iter()
        .filter(|it| {
            let lifecycle = it["lifecycle"].as_str().unwrap_or("");
            lifecycle.eq_ignore_ascii_case("pending") || lifecycle.eq_ignore_ascii_case("inservice")
        })
        .map(|it| it["id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn a_launch_template_change_replaces_every_instance_under_load_and_a_broken_one_rolls_back() {
    let port = free_port();
    let stack = Stack::new(&spec(port));
    stack.apply();
    let before = live_ids(&stack);
    assert_eq!(before.len(), 3, "{before:?}");

    let load = LoadLoop::start(port, "refresh.example.com", &["/"; CLIENTS], LOAD_LIMIT);
    stack.edit("GREETING: one", "GREETING: two");
    let started = Instant::now();
    let run = stack.lbctl(&["apply", "--auto-approve", "--timeout", "90s"]).expect_code(0);
    eprintln!("refresh apply took {:?}\n{}", started.elapsed(), run.stderr);
    let after = live_ids(&stack);
    let tally = load.finish();
    let (ok, failed) = (tally.ok(), tally.failed());
    eprintln!("load during the refresh: {ok} ok, {failed} failed");
    assert_eq!(after.len(), 3, "{after:?}");
    assert!(before.is_disjoint(&after), "old instances left: before {before:?}, after {after:?}");
    assert!(ok > 0);
    assert_eq!(failed, 0, "failures: {:?}", tally.failures.lock().unwrap());

    stack.edit(r#"command: ["lbctl", "worker"]"#, r#"command: ["sh", "-c", "exit 3"]"#);
    let run = stack.lbctl(&["apply", "--auto-approve", "--timeout", "90s"]).expect_code(1);
    assert!(run.stderr.contains("rolled back"), "stderr:\n{}", run.stderr);
    eprintln!("broken template apply:\n{}", run.stderr);
    let kept = wait_for("the rolled-back group to run its previous instances", Duration::from_secs(30), || {
        let now = live_ids(&stack);
        (now == after).then_some(now)
    });
    assert_eq!(kept, after);
    let url = format!("http://127.0.0.1:{port}/");
    for _ in 0..5 {
        let answered = instance_of(&url, &[]).expect("the group still serves");
        assert!(after.contains(&answered), "{answered} is not one of {after:?}");
    }
    // The group runs the previous template, not the spec's: plan says so.
    let plan = stack.lbctl(&["plan", "--detailed-exitcode"]).expect_code(2);
    assert!(plan.stdout.contains("instance refresh rolled back"), "{}", plan.stdout);
}

/// Without `instance_refresh`, a launch template change replaces nothing,
/// as on AWS: plan says so, the instances stay, and only instances launched
/// afterwards get the new template.
#[test]
fn a_template_change_without_instance_refresh_replaces_nothing() {
    let port = free_port();
    let stack = Stack::new(&spec(port).replace("    instance_refresh: { min_healthy_percentage: 50 }\n", ""));
    stack.apply();
    let before = live_ids(&stack);
    stack.edit("GREETING: one", "GREETING: two");
    let plan = stack.lbctl(&["plan", "--detailed-exitcode"]).expect_code(2);
    assert!(
        plan.stdout.contains("existing instances keep the old launch template and new ones get the new one; add `instance_refresh` to roll them"),
        "{}",
        plan.stdout
    );
    stack.apply();
    assert_eq!(live_ids(&stack), before, "nothing replaced");
    let url = format!("http://127.0.0.1:{port}/");
    let greetings: BTreeSet<String> = (0..12)
        .filter_map(|_| curl(&url, &[]))
        .map(|it| it.body.split_whitespace().next().unwrap_or("").to_string())
        .collect();
    assert_eq!(greetings, BTreeSet::from(["one".to_string()]), "the old template still runs");
    // A scale-out launches from the new template.
    stack.edit("desired_capacity: 3", "desired_capacity: 4");
    stack.apply();
    wait_for("an instance on the new template", Duration::from_secs(30), || {
        (0..12).filter_map(|_| curl(&url, &[])).any(|it| it.body.starts_with("two ")).then_some(())
    });
}
