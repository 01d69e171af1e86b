//! Scale-in that drains (no request lost, the oldest instances go first) and
//! an apply killed halfway that the next apply finishes without orphans.

use std::collections::BTreeSet;
use std::process::Stdio;
use std::time::Duration;

use crate::util::*;

fn spec(port: u16, desired: u32) -> String {
    web_group_spec(
        "scale-in",
        port,
        "3s",
        &format!(
            "    min_size: 1
    max_size: 4
    desired_capacity: {desired}
    health_check_type: ELB
    health_check_grace_period: 2s
    termination_policy: oldest_instance
    target_groups: [web]
    launch_template: {{ command: [lbctl, worker] }}
"
        ),
    )
}

fn ids(stack: &Stack) -> BTreeSet<String> {
    stack.instances("web").iter().map(|it| it["id"].as_str().unwrap().to_string()).collect()
}

#[test]
fn scale_in_drains_and_stops_the_oldest_instances() {
    let port = free_port();
    let stack = Stack::new(&spec(port, 2));
    stack.apply();
    let oldest = ids(&stack);
    stack.edit("desired_capacity: 2", "desired_capacity: 4");
    stack.apply();
    let newest: BTreeSet<String> = ids(&stack).difference(&oldest).cloned().collect();
    assert_eq!(newest.len(), 2);

    // Bounded load: three fast clients and one whose requests take 1 s.
    let load = LoadLoop::start(port, "scale-in.test", &["/", "/", "/", "/?sleep=1000"], Duration::from_secs(60));
    load.wait_for_more("load to start", 20);

    stack.edit("desired_capacity: 4", "desired_capacity: 2");
    stack.apply();
    let remaining = wait_for("scale-in to finish", Duration::from_secs(60), || {
        let now = ids(&stack);
        (now.len() == 2).then_some(now)
    });
    // Let a few more requests go through the two that remain.
    load.wait_for_more("more requests", 20);
    let tally = load.finish();
    let (ok, failed) = (tally.ok(), tally.failed());
    println!("scale-in 4 -> 2 under load: {ok} requests succeeded, {failed} failed");
    assert_eq!(failed, 0, "failures: {:?}", tally.failures.lock().unwrap());
    assert_eq!(remaining, newest, "oldest_instance stops the two oldest");
}

#[test]
fn an_apply_killed_halfway_is_finished_by_the_next_without_orphans() {
    let port = free_port();
    let stack = Stack::new(&spec(port, 2));
    let mut first =
        stack.command(&["apply", "--auto-approve"]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    // Kill it as soon as it has started the proxy and the supervisor, most
    // likely before it recorded them in the state: they must be adopted.
    let run = stack.dir.path().join(".lbctl/run");
    wait_for("the first apply to start its processes", Duration::from_secs(30), || {
        (run.join("lb/front/pid").exists() && run.join("asg/web/pid").exists()).then_some(())
    });
    kill9(first.id());
    first.wait().unwrap();

    let applied = stack.apply();
    assert!(applied.stdout.contains("Apply complete!"), "{}", applied.stdout);
    stack.lbctl(&["plan", "--detailed-exitcode"]).expect_code(0);
    assert_eq!(ids(&stack).len(), 2);
    let url = format!("http://127.0.0.1:{port}/");
    assert!(instance_of(&url, &[]).is_some());

    // Exactly one proxy and one supervisor run for the stack: every process
    // in the stack's directory is one the runtime files name.
    let known = stack.pids();
    let dir = stack.dir.path().to_path_buf();
    let ours = processes_where(|cmdline, cwd| {
        cmdline.contains("internal") && cmdline.contains(dir.to_str().unwrap())
            || cwd.starts_with(&dir) && cmdline.contains("worker")
    });
    let orphans: Vec<&u32> = ours.iter().filter(|it| !known.contains(it)).collect();
    assert!(orphans.is_empty(), "processes no runtime file names: {orphans:?} (known {known:?})");
    stack.lbctl(&["destroy", "--auto-approve"]).expect_code(0);
    for pid in ours {
        assert!(!alive(pid), "{pid} survived destroy");
    }
}
