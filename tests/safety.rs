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

/// A port taken on the machine is a located error of `plan` and `apply`
/// naming who holds it: another process, or another stack's load balancer.
/// `validate` checks the file only, and says so.
#[test]
fn a_port_taken_on_the_machine_is_a_spec_error_naming_its_holder() {
    let taken = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let port = taken.local_addr().unwrap().port();
    let stack = Stack::new(&small_spec(port));
    let validated = stack.lbctl(&["validate"]).expect_code(0);
    assert!(validated.stderr.contains("validate checks the file only"), "{}", validated.stderr);
    let run = stack.lbctl(&["plan"]).expect_code(1);
    let expected = format!(
        "lbctl.yaml:7:15: load_balancers.front.listeners[0].port: port {port} on 127.0.0.1 is already in use on this machine: it is held by pid {} (`",
        std::process::id()
    );
    assert!(run.stderr.starts_with(&expected), "{}", run.stderr);
    stack.lbctl(&["apply", "--auto-approve"]).expect_code(1);
    assert!(!stack.dir.path().join(".lbctl/run").exists());
    drop(taken);

    // Another stack's load balancer holds it.
    stack.apply();
    let other = Stack::new(&small_spec(port).replace("name: small", "name: other"));
    let run = other.lbctl(&["plan"]).expect_code(1);
    let holder = format!("it is held by load balancer `front` of the lbctl stack in {}", stack.dir.path().display());
    assert!(run.stderr.contains(&holder), "{}", run.stderr);
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
    // lbctl's network load balancers send the PROXY protocol on TCP only.
    let udp = "  dns:\n    protocol: UDP\n    port: 53\n    target_type: ip\n    proxy_protocol_v2: true\n    targets: [{ ip: 127.0.0.1 }]\n";
    let stack = Stack::new(&(small_spec(free_port()) + udp));
    let plan = stack.lbctl(&["plan"]).expect_code(0);
    assert!(
        plan.stdout
            .contains("! target_groups.dns.proxy_protocol_v2: the PROXY protocol is sent on TCP connections only"),
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
    // An apply with nothing to do changes no state: a plan saved before it still applies.
    stack.lbctl(&["plan", "--out", "quiet.plan"]).expect_code(0);
    stack.apply();
    stack.lbctl(&["apply", "quiet.plan"]).expect_code(0);

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

/// A spec with several mistakes gets every one in one run, each placed and
/// with a suggestion; a rule a default breaks names the default.
#[test]
fn every_mistake_is_reported_at_once_with_suggestions() {
    let stack = Stack::new(
        "version: 1
name: typos
load_balancers:
  front:
    type: aplication
    listeners:
      - port: 8080
        protocl: HTTP
        default_action: { forward: web }
target_groups:
  web: { port: 8080, health_check: { path: /health, interval: 1s } }
autoscaling_groups:
  web:
    min_size: 1
    max_size: 3
    desired_capacty: 2
    target_groups: [wbe]
    launch_template: { command: [lbctl, worker] }
",
    );
    let run = stack.lbctl(&["validate"]).expect_code(1);
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert_eq!(
        &lines[..5],
        [
            "lbctl.yaml:5:11: load_balancers.front.type: unknown value `aplication`, expected one of `application`, `network`; did you mean `application`?",
            "lbctl.yaml:8:9: load_balancers.front.listeners[0]: unknown field `protocl`; did you mean `protocol`?",
            "lbctl.yaml:11:63: target_groups.web.health_check.interval: timeout 6s (the default) must not be longer than interval 1s",
            "lbctl.yaml:16:5: autoscaling_groups.web: unknown field `desired_capacty`; did you mean `desired_capacity`?",
            "lbctl.yaml:17:21: autoscaling_groups.web.target_groups[0]: target group `wbe` is not defined (defined: web); did you mean `web`?",
        ],
        "{}",
        run.stderr
    );
    // The same problems once the typos are fixed.
    stack.edit("aplication", "application");
    stack.edit("protocl", "protocol");
    stack.edit("desired_capacty", "desired_capacity");
    let run = stack.lbctl(&["validate"]).expect_code(1);
    assert!(
        run.stderr.contains("lbctl.yaml:11:63: target_groups.web.health_check.interval: timeout 6s (the default) must not be longer than interval 1s"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("autoscaling_groups.web.target_groups[0]: target group `wbe` is not defined (defined: web); did you mean `web`?"),
        "{}",
        run.stderr
    );
}

/// `lbctl output` gives the outputs of the last apply, all or one, as text or JSON.
#[test]
fn output_gives_the_last_applys_outputs() {
    let port = free_port();
    let stack = Stack::new(&small_spec(port));
    assert!(stack.lbctl(&["output"]).expect_code(0).stderr.contains("no outputs"));
    let outputs = Stack::outputs(&stack.apply());
    let url = format!("http://{}:{port}/", url_host(&outputs, "front", "127.0.0.1"));
    let all = stack.lbctl(&["output"]).expect_code(0).stdout;
    assert!(all.contains(&format!("front_url = \"{url}\"")), "{all}");
    assert_eq!(stack.lbctl(&["output", "front_url"]).expect_code(0).stdout, format!("{url}\n"));
    let json: serde_json::Value =
        serde_json::from_str(&stack.lbctl(&["output", "--json"]).expect_code(0).stdout).unwrap();
    assert_eq!(json["front_url"]["value"], url.as_str());
    assert_eq!(json["front_url"]["type"], "string");
    let missing = stack.lbctl(&["output", "front_ur"]).expect_code(1);
    assert!(
        missing.stderr.contains("no output `front_ur`") && missing.stderr.contains("did you mean `front_url`?"),
        "{}",
        missing.stderr
    );
}

/// `plan` shows what only apply learns as `(known after apply)`, a change
/// made by hand in a runtime file field by field, and no field a context
/// makes meaningless (a TCP group's HTTP settings).
#[test]
fn plan_shows_values_known_after_apply_and_drift_field_by_field() {
    let port = free_port();
    let stack = Stack::new(&format!(
        "version: 1
name: fields
load_balancers:
  edge:
    type: network
    listeners: [{{ port: {port}, protocol: TCP, default_action: {{ forward: echo }} }}]
target_groups:
  echo: {{ protocol: TCP, port: 7, target_type: ip, targets: [{{ ip: 127.0.0.1 }}], deregistration_delay: 5s }}
"
    ));
    let plan = stack.lbctl(&["plan"]).expect_code(0);
    assert!(plan.stdout.contains("+ static_ip = (known after apply)"), "{}", plan.stdout);
    assert!(plan.stdout.contains("+ dns_name = (known after apply)"), "{}", plan.stdout);
    for http_only in ["path", "matcher", "protocol_version", "algorithm", "stickiness"] {
        assert!(!plan.stdout.contains(http_only), "{http_only} in a TCP group's plan:\n{}", plan.stdout);
    }
    let applied = stack.apply();
    assert!(Stack::outputs(&applied).contains_key("edge_static_ip"));
    let show = stack.lbctl(&["show", "--json"]).expect_code(0).stdout;
    assert!(show.contains("\"static_ip\""), "recorded after apply: {show}");

    // An edit by hand of the target group's file.
    let file = stack.dir.path().join(".lbctl/run/tg/echo/group.json");
    let text = std::fs::read_to_string(&file)
        .unwrap()
        .replace("\"deregistration_delay\": \"5s\"", "\"deregistration_delay\": \"9s\"");
    std::fs::write(&file, text).unwrap();
    let plan = stack.lbctl(&["plan", "--detailed-exitcode"]).expect_code(2);
    assert!(
        plan.stdout.contains("~ deregistration_delay: \"9s\" -> \"5s\" (changed outside lbctl)"),
        "{}",
        plan.stdout
    );
    stack.apply();
    stack.lbctl(&["plan", "--detailed-exitcode"]).expect_code(0);
}

/// Two specs beside each other share one `.lbctl/`: a spec of another
/// stack (or the stack renamed) is refused by plan, apply and destroy,
/// never planned against the state of the one applied, which it would
/// destroy.
#[test]
fn another_stacks_spec_beside_the_state_is_refused_and_destroys_nothing() {
    let stack = Stack::new(&small_spec(free_port()));
    stack.apply();
    let state = || std::fs::read(stack.dir.path().join(".lbctl").join("state.json")).unwrap();
    let (before, proxies) = (state(), proxies_of(&stack));
    let other = small_spec(free_port()).replace("name: small", "name: other");
    std::fs::write(stack.dir.path().join("other.yaml"), other).unwrap();
    for command in [
        &["plan", "-f", "other.yaml"][..],
        &["apply", "-f", "other.yaml", "--auto-approve"],
        &["destroy", "-f", "other.yaml", "--auto-approve"],
    ] {
        let run = stack.lbctl(command).expect_code(1);
        assert!(
            run.stderr.contains("holds the resources of stack `small`; this spec is stack `other`"),
            "{command:?}:\n{}",
            run.stderr
        );
    }
    stack.edit("name: small", "name: renamed");
    let renamed = stack.lbctl(&["plan"]).expect_code(1);
    assert!(renamed.stderr.contains("this spec is stack `renamed`"), "{}", renamed.stderr);
    stack.edit("name: renamed", "name: small");
    assert_eq!(state(), before, "the state is untouched");
    assert!(proxies.iter().all(|it| alive(*it)), "the applied stack still runs");
    stack.lbctl(&["plan", "--detailed-exitcode"]).expect_code(0);
}

/// A mistyped command line is an error, 1: never 2, which
/// `--detailed-exitcode` gives only to a plan with changes.
#[test]
fn a_usage_error_exits_1_and_help_0() {
    let stack = Stack::new(&small_spec(free_port()));
    for command in [
        &["plan", "--detailed-exitcode", "--jsn"][..],
        &["plan", "--detailed-exitcode", "--provider", "gcp"],
        &["plan", "--detailed-exitcode", "--out"],
        &["bogus"],
        &[],
        &["apply", "-f", "lbctl.yaml", "saved.plan"],
    ] {
        let run = stack.lbctl(command).expect_code(1);
        assert!(run.stderr.contains("error: ") || run.stderr.contains("Usage: "), "{command:?}:\n{}", run.stderr);
    }
    stack.lbctl(&["--help"]).expect_code(0);
    stack.lbctl(&["plan", "--help"]).expect_code(0);
}

/// `plan --out` writes a plan where one may go: never over the spec or
/// another file that is not a saved plan, never into a directory it would
/// have to make, never into the state's directory.
#[test]
fn plan_out_overwrites_nothing_but_a_saved_plan() {
    let stack = Stack::new(&small_spec(free_port()));
    let spec = std::fs::read(&stack.spec).unwrap();
    for (out, says) in [
        ("lbctl.yaml", "it exists and is not a plan saved by lbctl"),
        ("missing/dir/p.plan", "directory missing/dir does not exist"),
        (".lbctl/p.plan", "is lbctl's state directory"),
    ] {
        if out.starts_with(".lbctl") {
            std::fs::create_dir_all(stack.dir.path().join(".lbctl")).unwrap();
        }
        let run = stack.lbctl(&["plan", "--out", out]).expect_code(1);
        assert!(run.stderr.contains(says), "{out}:\n{}", run.stderr);
    }
    assert_eq!(std::fs::read(&stack.spec).unwrap(), spec, "the spec is untouched");
    assert!(!stack.dir.path().join("missing").exists());
    stack.lbctl(&["plan", "--out", "p.plan"]).expect_code(0);
    stack.lbctl(&["plan", "--out", "p.plan"]).expect_code(0);
}

/// A network load balancer whose address is yet to be allocated cannot
/// have a port a socket bound to every address (0.0.0.0) holds: plan
/// says so, and apply starts nothing.
#[test]
fn a_port_held_on_every_address_is_an_error_for_a_new_network_load_balancer() {
    // Bound, never accepting: nothing is sent to it.
    let taken = TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
    let port = taken.local_addr().unwrap().port();
    let stack = Stack::new(&format!(
        "version: 1
name: wildcard
load_balancers:
  edge:
    type: network
    listeners: [{{ port: {port}, protocol: TCP, default_action: {{ forward: tcp }} }}]
target_groups:
  tcp: {{ protocol: TCP, port: 9, target_type: ip, targets: [{{ ip: 127.0.0.1 }}] }}
"
    ));
    let run = stack.lbctl(&["plan"]).expect_code(1);
    let expected = format!(
        "lbctl.yaml:6:25: load_balancers.edge.listeners[0].port: port {port} is taken on every address of this machine (0.0.0.0): it is held by pid {}",
        std::process::id()
    );
    assert!(run.stderr.starts_with(&expected), "{}", run.stderr);
    stack.lbctl(&["apply", "--auto-approve"]).expect_code(1);
    assert!(!stack.dir.path().join(".lbctl/run/lb").exists(), "nothing was started");
}

/// Sizes no machine runs locally are refused before anything starts:
/// instances are processes and worker threads threads of one.
#[test]
fn sizes_past_what_a_machine_runs_are_refused_locally() {
    let port = free_port();
    let stack = Stack::new(&format!(
        "version: 1
name: huge
load_balancers:
  a:
    type: application
    worker_threads: 100000000
    listeners: [{{ port: {port}, protocol: HTTP, default_action: {{ forward: web }} }}]
target_groups:
  web: {{ port: 8080 }}
autoscaling_groups:
  web: {{ min_size: 1, max_size: 4294967295, desired_capacity: 100000000, target_groups: [web], launch_template: {{ command: [lbctl, worker] }} }}
"
    ));
    for command in [&["validate"][..], &["apply", "--auto-approve"]] {
        let run = stack.lbctl(command).expect_code(1);
        assert!(
            run.stderr
                .contains("lbctl.yaml:6:21: load_balancers.a.worker_threads: worker_threads must be at most 1024"),
            "{}",
            run.stderr
        );
        assert!(
            run.stderr.contains("lbctl.yaml:11:33: autoscaling_groups.web.max_size: max_size must be at most 1000"),
            "{}",
            run.stderr
        );
    }
    assert!(!stack.dir.path().join(".lbctl/run").exists(), "nothing was started");
}
