//! Errors that lose nothing: bad specs are placed in the file and stop
//! everything before any process is touched; one apply at a time; no
//! unconfirmed changes; stale saved plans refused.

use std::net::{Ipv4Addr, TcpListener};
use std::process::Stdio;
use std::time::Duration;

use crate::util::*;

/// A stack with no instances: one load balancer in front of a fixed target.
fn small_spec(port: u16) -> String {
    format!(
        "version: 1
name: small
load_balancers:
  front:
    type: application
    listeners:
      - port: {port}
        protocol: HTTP
        default_action: {{ forward: fixed }}
target_groups:
  fixed:
    target_type: ip
    port: 9
    targets: [{{ ip: 127.0.0.1 }}]
"
    )
}

#[test]
fn a_dangling_reference_fails_validate_and_plan_with_its_location() {
    let stack = Stack::new(&small_spec(free_port()).replace("forward: fixed", "forward: fixd"));
    let expected = "lbctl.yaml:9:36: load_balancers.front.listeners[0].default_action.forward: target group `fixd` is not defined (defined: fixed)";
    for command in [&["validate"][..], &["plan"][..], &["apply", "--auto-approve"][..]] {
        let run = stack.lbctl(command).expect_code(1);
        assert!(run.stderr.starts_with(expected), "{command:?}:\n{}", run.stderr);
    }
    assert!(!stack.dir.path().join(".lbctl").exists(), "nothing was started or written");
}

#[test]
fn a_port_taken_on_the_machine_is_a_spec_error() {
    let taken = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let port = taken.local_addr().unwrap().port();
    let stack = Stack::new(&small_spec(port));
    let run = stack.lbctl(&["validate"]).expect_code(1);
    let expected =
        format!("lbctl.yaml:7:15: load_balancers.front.listeners[0].port: port {port} on 127.0.0.1 is already in use");
    assert!(run.stderr.starts_with(&expected), "{}", run.stderr);
    stack.lbctl(&["apply", "--auto-approve"]).expect_code(1);
    assert!(!stack.dir.path().join(".lbctl/run").exists());
}

#[test]
fn apply_without_a_terminal_needs_auto_approve() {
    let stack = Stack::new(&small_spec(free_port()));
    let run = stack.lbctl(&["apply"]).expect_code(1);
    assert!(run.stderr.contains("pass --auto-approve"), "{}", run.stderr);
    assert!(!stack.dir.path().join(".lbctl/run").exists(), "nothing was started");
    assert_eq!(stack.lbctl(&["show"]).expect_code(0).stdout, "The state is empty.\n");
}

#[test]
fn unsupported_features_are_shown_by_plan_and_refused_by_apply() {
    let stack = Stack::new(
        &small_spec(free_port()).replace("    target_type: ip\n", "    target_type: ip\n    proxy_protocol_v2: true\n"),
    );
    let plan = stack.lbctl(&["plan"]).expect_code(0);
    assert!(
        plan.stdout
            .contains("! target_groups.fixed.proxy_protocol_v2: the PROXY protocol is sent on TCP connections only"),
        "{}",
        plan.stdout
    );
    let apply = stack.lbctl(&["apply", "--auto-approve"]).expect_code(1);
    assert!(apply.stderr.contains("the local provider does not support"), "{}", apply.stderr);
    assert!(!stack.dir.path().join(".lbctl/run").exists(), "nothing was started");
}

#[test]
fn a_second_apply_fails_at_once_with_a_lock_error() {
    // An instance group that takes a few seconds to become healthy keeps the
    // first apply running.
    let spec = format!(
        "{}autoscaling_groups:
  slow:
    min_size: 1
    max_size: 1
    target_groups: [app]
    launch_template: {{ command: [lbctl, worker] }}
",
        small_spec(free_port()).replace("default_action: { forward: fixed }", "default_action: { forward: app }")
            + "  app:\n    port: 8080\n    health_check: { path: /health, interval: 1s, timeout: 500ms, healthy_threshold: 4 }\n"
    );
    let stack = Stack::new(&spec);
    let mut first =
        stack.command(&["apply", "--auto-approve"]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let state = stack.dir.path().join(".lbctl/state.json");
    wait_for("the first apply to save a resource", Duration::from_secs(30), || state.exists().then_some(()));
    let started = std::time::Instant::now();
    let second = stack.lbctl(&["apply", "--auto-approve"]);
    let still_running = first.try_wait().unwrap().is_none();
    assert!(still_running, "the first apply was still running when the second started");
    let second = second.expect_code(1);
    assert!(
        second.stderr.contains(&format!("state is locked by pid {} (lbctl apply)", first.id())),
        "{}",
        second.stderr
    );
    assert!(started.elapsed() < Duration::from_secs(5), "fails at once");
    assert!(first.wait().unwrap().success(), "the first apply finishes");
}

#[test]
fn a_saved_plan_applies_once_and_a_stale_one_is_refused() {
    let stack = Stack::new(&small_spec(free_port()));
    stack.lbctl(&["plan", "--out", "first.plan"]).expect_code(0);
    stack.lbctl(&["apply", "first.plan"]).expect_code(0);
    stack.lbctl(&["plan", "--detailed-exitcode"]).expect_code(0);

    stack.edit("port: 9\n", "port: 10\n");
    stack.lbctl(&["plan", "--out", "second.plan"]).expect_code(0);
    stack.lbctl(&["plan", "--out", "third.plan"]).expect_code(0);
    stack.lbctl(&["apply", "second.plan"]).expect_code(0);
    let stale = stack.lbctl(&["apply", "third.plan"]).expect_code(1);
    assert!(stale.stderr.contains("the saved plan is stale"), "{}", stale.stderr);
}

#[test]
fn the_schema_file_is_what_lbctl_schema_prints() {
    let run = Stack::new("").lbctl(&["schema"]).expect_code(0);
    let on_disk =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../schemas/lbctl.schema.json")).unwrap();
    assert_eq!(
        run.stdout, on_disk,
        "schemas/lbctl.schema.json is stale: run `lbctl schema > schemas/lbctl.schema.json`"
    );
}

/// The proxy processes running with the stack's configuration path on their
/// command line.
fn proxies_of(stack: &Stack) -> Vec<u32> {
    let marker = stack.dir.path().join(".lbctl/run/lb/front/config.json").to_string_lossy().into_owned();
    processes_where(|cmdline, _| cmdline.contains(&marker))
}

/// A state file that does not parse, or whose record of a resource is
/// damaged, stops plan and apply with the file named, and nothing is
/// started or stopped on a guess.
#[test]
fn a_corrupt_state_stops_plan_and_apply_naming_the_file() {
    let stack = Stack::new(&small_spec(free_port()));
    stack.apply();
    stack.apply(); // a second write: the backup now exists
    let state_path = stack.dir.path().join(".lbctl/state.json");
    let good = std::fs::read_to_string(&state_path).unwrap();
    let proxies = proxies_of(&stack);
    assert_eq!(proxies.len(), 1, "{proxies:?}");

    std::fs::write(&state_path, &good[..good.len() / 2]).unwrap();
    for command in [&["plan"][..], &["apply", "--auto-approve"][..]] {
        let run = stack.lbctl(command).expect_code(1);
        assert!(run.stderr.contains(&format!("{} is corrupt", state_path.display())), "{command:?}:\n{}", run.stderr);
        assert!(run.stderr.contains("state.json.backup holds the version before the last write"), "{}", run.stderr);
    }
    assert_eq!(proxies_of(&stack), proxies, "nothing started or stopped");

    // Parses, but the load balancer's private record is damaged.
    let mut state: serde_json::Value = serde_json::from_str(&good).unwrap();
    state["resources"]["load_balancer.front"]["private"]["pid"] = serde_json::json!("not a pid");
    std::fs::write(&state_path, serde_json::to_string_pretty(&state).unwrap()).unwrap();
    for command in [&["plan"][..], &["apply", "--auto-approve"][..]] {
        let run = stack.lbctl(command).expect_code(1);
        let expected = format!("{}: the record of load_balancer.front is damaged", state_path.display());
        assert!(run.stderr.contains(&expected), "{command:?}:\n{}", run.stderr);
    }
    assert_eq!(proxies_of(&stack), proxies, "no second proxy beside the live one");
    std::fs::write(&state_path, &good).unwrap();
    stack.lbctl(&["plan", "--detailed-exitcode"]).expect_code(0);
}
