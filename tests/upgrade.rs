//! Upgrading: a stack applied by the release before state format 2 (built
//! from git by `make test` into `target/previous-release/lbctl`) plans with
//! no change under this release, whose defaults differ; its processes keep
//! serving; the next applies replace the older processes on purpose (the
//! supervisor's instances are kept), and destroy removes everything. The
//! machine-wide address table the older release kept in `$TMPDIR` is taken
//! over.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::util::*;

fn previous_release() -> PathBuf {
    let binary = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/previous-release/lbctl");
    assert!(
        binary.is_file(),
        "{} is missing: `make test` builds it (`make target/previous-release/lbctl`)",
        binary.display()
    );
    binary
}

#[test]
fn a_stack_of_the_previous_release_plans_without_changes_and_upgrades() {
    let (port, nlb_port) = (free_port(), free_port());
    let stack = Stack::new(&format!(
        "version: 1
name: upgrade
load_balancers:
  front:
    type: application
    listeners: [{{ port: {port}, protocol: HTTP, default_action: {{ forward: web }} }}]
  edge:
    type: network
    listeners: [{{ port: {nlb_port}, protocol: TCP, default_action: {{ forward: echo }} }}]
target_groups:
  web: {{ port: 8080, health_check: {{ path: /health, interval: 500ms, timeout: 300ms, healthy_threshold: 2 }}, deregistration_delay: 1s }}
  echo: {{ protocol: TCP, port: 7000, health_check: {{ protocol: TCP, interval: 500ms, timeout: 300ms, healthy_threshold: 2 }}, deregistration_delay: 1s }}
autoscaling_groups:
  web:
    min_size: 1
    max_size: 3
    desired_capacity: 2
    target_groups: [web]
    launch_template: {{ command: [lbctl, worker] }}
  echo:
    min_size: 1
    max_size: 1
    target_groups: [echo]
    launch_template: {{ command: [lbctl, worker, --echo] }}
"
    ));
    // The older release keeps its address table in $TMPDIR; this one takes it over.
    let tmpdir = tempfile::Builder::new().prefix("lbctl-upgrade-tmp-").tempdir().unwrap();
    let runtime = tempfile::Builder::new().prefix("lbctl-upgrade-xdg-").tempdir().unwrap();
    let old = |args: &[&str]| -> Run {
        Command::new(previous_release())
            .args(args)
            .current_dir(stack.dir.path())
            .env("TMPDIR", tmpdir.path())
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .output()
            .unwrap()
            .into()
    };
    let new = |args: &[&str]| -> Run {
        Run::from(
            stack.command(args).env("TMPDIR", tmpdir.path()).env("XDG_RUNTIME_DIR", runtime.path()).output().unwrap(),
        )
    };
    let applied = old(&["apply", "--auto-approve"]).expect_code(0);
    let static_ip = Stack::outputs(&applied)["edge_static_ip"].clone();
    let url = format!("http://127.0.0.1:{port}/");
    let before: Vec<String> = stack.instances("web").iter().map(|it| it["id"].as_str().unwrap().to_string()).collect();

    // This release reads the older state, files and processes as they are.
    let plan = new(&["plan", "--detailed-exitcode"]);
    assert_eq!(plan.code, 0, "no change expected:\n{}\n{}", plan.stdout, plan.stderr);
    assert!(instance_of(&url, &[]).is_some(), "the older proxy serves");
    let outputs = new(&["output", "edge_static_ip"]).expect_code(0);
    assert_eq!(outputs.stdout.trim(), static_ip, "the allocated address is kept");

    // Changes replace the older processes on purpose; the instances stay.
    stack.edit("desired_capacity: 2", "desired_capacity: 3");
    new(&["apply", "--auto-approve"]).expect_code(0);
    let after: Vec<String> = stack.instances("web").iter().map(|it| it["id"].as_str().unwrap().to_string()).collect();
    assert_eq!(after.len(), 3, "{after:?}");
    assert!(
        before.iter().all(|it| after.contains(it)),
        "the older supervisor's instances were adopted: {before:?} in {after:?}"
    );
    stack.edit("max_size: 1\n    target_groups: [echo]", "max_size: 2\n    target_groups: [echo]");
    stack.edit(
        &format!("listeners: [{{ port: {port}, protocol: HTTP, default_action: {{ forward: web }} }}]"),
        &format!("listeners: [{{ port: {port}, protocol: HTTP, default_action: {{ forward: web }}, rules: [{{ priority: 1, conditions: {{ path_pattern: [/teapot] }}, action: {{ fixed_response: {{ status_code: 418 }} }} }}] }}]"),
    );
    new(&["apply", "--auto-approve"]).expect_code(0);
    assert_eq!(curl(&format!("{url}teapot"), &[]).unwrap().status, 418, "the new proxy serves the new rule");
    wait_for("an instance answering", Duration::from_secs(30), || instance_of(&url, &[]));
    assert_eq!(new(&["output", "edge_static_ip"]).expect_code(0).stdout.trim(), static_ip);
    new(&["plan", "--detailed-exitcode"]).expect_code(0);

    let pids = stack.pids();
    new(&["destroy", "--auto-approve"]).expect_code(0);
    wait_for("every process gone", Duration::from_secs(30), || pids.iter().all(|it| !alive(*it)).then_some(()));
}
