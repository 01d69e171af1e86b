//! The planner driven end to end against an in-memory provider: plan text,
//! ordering, drift, state writes.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::Result;
use expect_test::{expect, Expect};
use serde_json::{json, Value};

use crate::executor::{self, Event, Observer, Options};
use crate::provider::*;
use crate::resource::{desired_resources, Kind, Resource};
use crate::state::{ResourceState, State, StateStore};
use crate::{plan, refresh, render};

/// A provider that records calls and reports whatever `missing` and
/// `edited` say.
#[derive(Default)]
struct FakeProvider {
    calls: Mutex<Vec<String>>,
    missing: Mutex<Vec<String>>,
    /// Attributes changed outside lbctl, by address: (path, value).
    edited: Mutex<BTreeMap<String, (String, Value)>>,
    /// Leaves `desired_capacity` to run time, as under a scaling policy.
    ignore_desired: bool,
}

impl Provider for FakeProvider {
    fn name(&self) -> &'static str {
        "fake"
    }
    fn policy(&self) -> Policy {
        Policy {
            replacement: Replacement::DeleteThenCreate,
            delete_before_create: vec![Kind::LoadBalancer],
            poll_interval: Duration::from_millis(1),
            ready_timeout: Duration::from_secs(1),
        }
    }
    fn computed(&self, resource: &Resource) -> Vec<&'static str> {
        if resource.address.kind == Kind::LoadBalancer {
            vec!["dns_name"]
        } else {
            Vec::new()
        }
    }
    fn replace_triggers(&self, kind: Kind) -> &'static [&'static str] {
        match kind {
            Kind::TargetGroup => &["port"],
            _ => &[],
        }
    }
    fn ignored_changes(&self, resource: &Resource) -> &'static [&'static str] {
        if self.ignore_desired && resource.address.kind == Kind::AutoscalingGroup {
            &["desired_capacity"]
        } else {
            &[]
        }
    }
    fn check(&self, _: &[Resource], _: &State) -> Result<Vec<Finding>> {
        Ok(Vec::new())
    }
    fn read(&self, prior: &ResourceState) -> Result<Observed> {
        let name = prior.address.to_string();
        if self.missing.lock().unwrap().contains(&name) {
            return Ok(Observed::Missing { reason: "process 42 is not running".to_string() });
        }
        let mut attributes = prior.resolved.clone();
        if let Some((path, value)) = self.edited.lock().unwrap().get(&name) {
            attributes[path.as_str()] = value.clone();
        }
        Ok(Observed::Present { attributes: Some(attributes) })
    }
    fn create(&self, resource: &Resource, _: &DependencyOutputs, _: &dyn Progress) -> Result<Applied> {
        self.calls.lock().unwrap().push(format!("create {}", resource.address));
        let mut computed = Computed::new();
        if resource.address.kind == Kind::LoadBalancer {
            computed.insert("dns_name".to_string(), json!(format!("{}.fake", resource.address.name)));
        }
        Ok(Applied { private: json!({"pid": 42}), computed })
    }
    fn update(
        &self,
        _: &ResourceState,
        resource: &Resource,
        _: &DependencyOutputs,
        _: &dyn Progress,
    ) -> Result<Applied> {
        self.calls.lock().unwrap().push(format!("update {}", resource.address));
        Ok(Applied { private: json!({"pid": 42}), computed: Computed::new() })
    }
    fn delete(&self, prior: &ResourceState, _: &dyn Progress) -> Result<()> {
        self.calls.lock().unwrap().push(format!("delete {}", prior.address));
        Ok(())
    }
    fn ready(&self, _: &ResourceState) -> Result<Readiness> {
        Ok(Readiness::Ready)
    }
    fn outputs(&self, resources: &[ResourceState]) -> BTreeMap<String, String> {
        resources.iter().map(|it| (it.address.name.clone(), "ok".to_string())).collect()
    }
    fn status(&self, _: &ResourceState) -> Result<LiveStatus> {
        Ok(LiveStatus::default())
    }
}

struct Quiet;
impl Observer for Quiet {
    fn event(&self, _: Event) {}
}

const SPEC: &str = "version: 1
name: shop
load_balancers:
  public:
    type: application
    listeners: [{ port: 8080, protocol: HTTP, default_action: { forward: web } }]
target_groups:
  web: { port: 8080 }
autoscaling_groups:
  web:
    min_size: 1
    max_size: 6
    desired_capacity: 2
    target_groups: [web]
    launch_template: { command: [lbctl, worker] }
";

fn desired(source: &str) -> Vec<Resource> {
    let file = lbctl_spec::parse("lbctl.yaml", PathBuf::from("."), source.to_string()).unwrap();
    desired_resources(&file.spec)
}

/// Plans `source` against `state` and checks the plan text.
fn check_plan(provider: &FakeProvider, source: &str, state: &State, expect: Expect) -> crate::Plan {
    let observed = refresh(provider, state).unwrap();
    let plan = plan(provider, desired(source), state, &observed, Vec::new());
    expect.assert_eq(&render::text(&plan, render::Style::default()));
    plan
}

fn apply(provider: &FakeProvider, plan: &crate::Plan, store: &StateStore, state: &mut State) {
    let options = Options { ready_timeout: Duration::from_secs(5) };
    executor::apply(plan, provider, store, state, &Quiet, &options).unwrap();
}

#[test]
fn create_then_scale_in_place_then_repair_drift() {
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::new(dir.path());
    let provider = FakeProvider::default();
    let mut state = store.load().unwrap();

    let first = check_plan(
        &provider,
        SPEC,
        &state,
        expect![[r#"
            lbctl will perform the following actions:

              # target_group.web will be created
              # (not in the state)
              + target_group "web" {
                  + port = 8080
                }

              # load_balancer.public will be created
              # (not in the state)
              + load_balancer "public" {
                  + dns_name = (known after apply)
                  + listeners[0].default_action.forward = "web"
                  + listeners[0].port = 8080
                  + listeners[0].protocol = "HTTP"
                  + type = "application"
                }

              # autoscaling_group.web will be created
              # (not in the state)
              + autoscaling_group "web" {
                  + desired_capacity = 2
                  + instance_port = 8080
                  + launch_template.command = ["lbctl","worker"]
                  + max_size = 6
                  + min_size = 1
                  + target_group_ports.web = 8080
                  + target_groups = ["web"]
                }

            Plan: 3 to add, 0 to change, 0 to destroy.
        "#]],
    );
    apply(&provider, &first, &store, &mut state);
    let calls = provider.calls.lock().unwrap().clone();
    assert_eq!(calls[0], "create target_group.web", "dependencies first: {calls:?}");
    assert_eq!(state.serial, 4, "saved after each of 3 resources and once with the outputs");

    let scaled = SPEC.replace("desired_capacity: 2", "desired_capacity: 4");
    let second = check_plan(
        &provider,
        &scaled,
        &state,
        expect![[r#"
        lbctl will perform the following actions:

          # autoscaling_group.web will be updated in-place
          # (the spec changed)
          ~ autoscaling_group "web" {
              ~ desired_capacity: 2 -> 4
            }

        Plan: 0 to add, 1 to change, 0 to destroy.
    "#]],
    );
    apply(&provider, &second, &store, &mut state);

    provider.missing.lock().unwrap().push("load_balancer.public".to_string());
    check_plan(
        &provider,
        &scaled,
        &state,
        expect![[r#"
            lbctl will perform the following actions:

              # load_balancer.public will be created
              # (process 42 is not running; it will be created again)
              + load_balancer "public" {
                  + dns_name = (known after apply)
                  + listeners[0].default_action.forward = "web"
                  + listeners[0].port = 8080
                  + listeners[0].protocol = "HTTP"
                  + type = "application"
                }

            Plan: 1 to add, 0 to change, 0 to destroy.
        "#]],
    );
    provider.missing.lock().unwrap().clear();
    check_plan(
        &provider,
        &scaled,
        &state,
        expect![[r#"
        No changes. The actual state matches the spec.
    "#]],
    );
}

#[test]
fn a_forcing_attribute_replaces_and_removed_resources_go_after_their_dependents() {
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::new(dir.path());
    let provider = FakeProvider::default();
    let mut state = store.load().unwrap();
    let observed = refresh(&provider, &state).unwrap();
    let first = plan(&provider, desired(SPEC), &state, &observed, Vec::new());
    apply(&provider, &first, &store, &mut state);

    let moved = SPEC.replace("web: { port: 8080 }", "web: { port: 9090 }");
    let replace = check_plan(
        &provider,
        &moved,
        &state,
        expect![[r#"
            lbctl will perform the following actions:

              # target_group.web must be replaced
              # (`port` forces replacement)
            -/+ target_group "web" {
                  ~ port: 8080 -> 9090 # forces replacement
                }

              # autoscaling_group.web will be updated in-place
              # (the spec changed)
              ~ autoscaling_group "web" {
                  ~ instance_port: 8080 -> 9090
                  ~ target_group_ports.web: 8080 -> 9090
                }

            Plan: 1 to add, 1 to change, 1 to destroy.
        "#]],
    );
    assert_eq!(replace.summary(), (1, 1, 1));

    provider.calls.lock().unwrap().clear();
    let observed = refresh(&provider, &state).unwrap();
    let destroy = plan(&provider, Vec::new(), &state, &observed, Vec::new());
    apply(&provider, &destroy, &store, &mut state);
    let calls = provider.calls.lock().unwrap().clone();
    let position = |call: &str| calls.iter().position(|it| it == call).unwrap();
    assert!(position("delete load_balancer.public") < position("delete target_group.web"), "{calls:?}");
    assert!(position("delete autoscaling_group.web") < position("delete target_group.web"), "{calls:?}");
    assert!(state.resources.is_empty());
}

#[test]
fn changes_the_provider_manages_at_run_time_are_not_planned() {
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::new(dir.path());
    let provider = FakeProvider { ignore_desired: true, ..FakeProvider::default() };
    let mut state = store.load().unwrap();
    let observed = refresh(&provider, &state).unwrap();
    let first = plan(&provider, desired(SPEC), &state, &observed, Vec::new());
    apply(&provider, &first, &store, &mut state);
    let scaled = SPEC.replace("desired_capacity: 2", "desired_capacity: 4");
    check_plan(
        &provider,
        &scaled,
        &state,
        expect![[r#"
            Note: autoscaling_group.web: `desired_capacity` is managed at run time (a scaling policy); plan leaves it alone.

            No changes. The actual state matches the spec.
        "#]],
    );
}

#[test]
fn an_apply_waits_only_for_what_it_changed() {
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::new(dir.path());
    let provider = FakeProvider::default();
    let mut state = store.load().unwrap();
    let two_groups = format!(
        "{SPEC}  other:\n    min_size: 1\n    max_size: 3\n    target_groups: [spare]\n    launch_template: {{ command: [lbctl, worker] }}\n"
    )
    .replace("  web: { port: 8080 }\n", "  web: { port: 8080 }\n  spare: { port: 8080 }\n");
    let waits = |source: &str, state: &State| -> Vec<String> {
        let observed = refresh(&provider, state).unwrap();
        let plan = plan(&provider, desired(source), state, &observed, Vec::new());
        let mut addresses: Vec<String> = executor::waits_for(&plan, state).iter().map(|it| it.to_string()).collect();
        addresses.sort();
        addresses
    };
    // Everything is new.
    assert_eq!(waits(&two_groups, &state).len(), 5);
    let observed = refresh(&provider, &state).unwrap();
    apply(&provider, &plan(&provider, desired(&two_groups), &state, &observed, Vec::new()), &store, &mut state);
    assert!(state.resources.values().all(|it| !it.awaiting_ready), "seen ready");

    // Another group's capacity: that group only.
    let scaled = two_groups.replace("max_size: 3\n", "max_size: 3\n    desired_capacity: 2\n");
    assert_eq!(waits(&scaled, &state), ["autoscaling_group.other"]);
    // A target group: it and what depends on it.
    let checked = two_groups.replace("web: { port: 8080 }", "web: { port: 8080, health_check: { interval: 10s } }");
    assert_eq!(waits(&checked, &state), ["autoscaling_group.web", "load_balancer.public", "target_group.web"]);
    // A load balancer: it and the groups behind it.
    let listener = two_groups.replace("port: 8080, protocol: HTTP", "port: 8081, protocol: HTTP");
    assert_eq!(waits(&listener, &state), ["autoscaling_group.web", "load_balancer.public"]);
    // Nothing changed, but an earlier apply never saw `other` ready.
    state.resources.get_mut("autoscaling_group.other").unwrap().awaiting_ready = true;
    assert_eq!(waits(&two_groups, &state), ["autoscaling_group.other"]);
}

#[test]
fn drift_and_defaults_are_shown_field_by_field() {
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::new(dir.path());
    let provider = FakeProvider::default();
    let mut state = store.load().unwrap();
    let observed = refresh(&provider, &state).unwrap();
    apply(&provider, &plan(&provider, desired(SPEC), &state, &observed, Vec::new()), &store, &mut state);
    assert_eq!(state.resources["load_balancer.public"].computed["dns_name"], "public.fake", "computed, recorded");

    // A field changed outside lbctl.
    provider.edited.lock().unwrap().insert("autoscaling_group.web".to_string(), ("max_size".to_string(), json!(9)));
    check_plan(
        &provider,
        SPEC,
        &state,
        expect![[r#"
            lbctl will perform the following actions:

              # autoscaling_group.web will be updated in-place
              # (changed outside lbctl)
              ~ autoscaling_group "web" {
                  ~ max_size: 9 -> 6 (changed outside lbctl)
                }

            Plan: 0 to add, 1 to change, 0 to destroy.
        "#]],
    );
    provider.edited.lock().unwrap().clear();

    // A written value removed: back to the default, and said so.
    let with_interval = SPEC.replace("web: { port: 8080 }", "web: { port: 8080, health_check: { interval: 10s } }");
    let observed = refresh(&provider, &state).unwrap();
    apply(&provider, &plan(&provider, desired(&with_interval), &state, &observed, Vec::new()), &store, &mut state);
    check_plan(
        &provider,
        SPEC,
        &state,
        expect![[r#"
            lbctl will perform the following actions:

              # target_group.web will be updated in-place
              # (the spec changed)
              ~ target_group "web" {
                  ~ health_check.interval: "10s" -> "30s" (default)
                }

            Plan: 0 to add, 1 to change, 0 to destroy.
        "#]],
    );
}

/// A state written by the previous format (one set of attributes, the old
/// release's defaults filled in) plans with no change for an unchanged spec,
/// even where this release's defaults differ.
#[test]
fn a_format_1_state_plans_without_changes() {
    let dir = tempfile::tempdir().unwrap();
    let old = json!({
        "format": 1, "lineage": "l", "serial": 3, "stack": "shop",
        "resources": {
            "target_group.web": { "address": { "kind": "target_group", "name": "web" }, "attributes": {
                "protocol": "HTTP", "protocol_version": "HTTP1", "port": 8080, "target_type": "instance",
                "health_check": { "port": "traffic-port", "path": "/", "interval": "5s", "timeout": "2s",
                    "healthy_threshold": 5, "unhealthy_threshold": 2, "matcher": "200" },
                "algorithm": "round_robin", "deregistration_delay": "5m", "slow_start": "0s",
                "stickiness": { "enabled": false, "duration": "1day" }, "proxy_protocol_v2": false },
                "dependencies": [], "private": { "path": "/x", "digest": "d" } },
            "load_balancer.public": { "address": { "kind": "load_balancer", "name": "public" }, "attributes": {
                "type": "application", "dns_name": "public.shop.elb.localhost",
                "listeners": [ { "port": 8080, "protocol": "HTTP", "default_action": { "forward": "web" } } ] },
                "dependencies": [ { "kind": "target_group", "name": "web" } ], "private": { "pid": 1 } },
            "autoscaling_group.web": { "address": { "kind": "autoscaling_group", "name": "web" }, "attributes": {
                "min_size": 1, "max_size": 6, "desired_capacity": 2, "health_check_type": "EC2",
                "health_check_grace_period": "5m", "target_groups": ["web"],
                "launch_template": { "command": ["lbctl", "worker"] }, "termination_policy": "default",
                "instance_port": 8080, "target_group_ports": { "web": 8080 } },
                "dependencies": [ { "kind": "target_group", "name": "web" } ], "private": { "pid": 2 } }
        },
        "outputs": {}
    });
    std::fs::write(dir.path().join("state.json"), serde_json::to_vec(&old).unwrap()).unwrap();
    let state = StateStore::new(dir.path()).load().unwrap();
    assert_eq!((state.format, state.provider.as_str()), (2, "local"));
    assert_eq!(state.resources["load_balancer.public"].computed["dns_name"], "public.shop.elb.localhost");
    let provider = FakeProvider::default();
    check_plan(
        &provider,
        SPEC,
        &state,
        expect![[r#"
        No changes. The actual state matches the spec.
    "#]],
    );
}
