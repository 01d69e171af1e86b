//! The supervisor with real instance processes (`sleep 30`) in a temporary
//! runtime directory; load balancer statuses are written by the tests.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::json;

use super::run_with_shutdown;
use lbctl_runtime as runtime;
use lbctl_runtime::process;
use lbctl_runtime::{
    HealthState, InstanceRecord, InstancesReport, Layout, Lifecycle, ProxyStatus, Registrations, SupervisorConfig,
    TargetGroupConfig, TargetHealth,
};

const TIMEOUT: Duration = Duration::from_secs(30);

/// A supervisor running in a thread; on drop (test failure included) it is
/// stopped and every instance it ever reported is killed.
struct Harness {
    _dir: tempfile::TempDir,
    layout: Layout,
    config_path: PathBuf,
    config: SupervisorConfig,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<anyhow::Result<()>>>,
    /// Every (pid, instance id) seen in a report.
    seen: RefCell<BTreeSet<(u32, String)>>,
}

impl Harness {
    fn new(settings: serde_json::Value, target_groups: &[&str]) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path().join("run"));
        let config = SupervisorConfig {
            format: runtime::RUNTIME_FORMAT,
            stack: "test".to_string(),
            name: "web".to_string(),
            settings: serde_json::from_value::<lbctl_spec::AutoscalingGroup>(settings).unwrap().resolve(),
            instance_port: 8080,
            target_group_ports: target_groups.iter().map(|it| (it.to_string(), 8080)).collect(),
            lbctl_exe: PathBuf::from("/nonexistent/lbctl"),
            working_dir: dir.path().to_path_buf(),
            layout: layout.clone(),
            events_log: Some(dir.path().join("logs/web/events.log")),
        };
        let config_path = layout.asg_dir("web").join("config.json");
        let harness = Harness {
            _dir: dir,
            layout,
            config_path,
            config,
            stop: Arc::new(AtomicBool::new(false)),
            thread: None,
            seen: RefCell::new(BTreeSet::new()),
        };
        harness.write_config();
        harness
    }

    fn write_config(&self) {
        runtime::write_json(&self.config_path, &self.config).unwrap();
    }

    fn start(&mut self) {
        let (path, stop) = (self.config_path.clone(), Arc::clone(&self.stop));
        self.thread = Some(std::thread::spawn(move || run_with_shutdown(&path, stop)));
    }

    fn report(&self) -> Option<InstancesReport> {
        let report: InstancesReport = runtime::read_json(&self.config_path.with_file_name("instances.json")).ok()??;
        self.seen.borrow_mut().extend(report.instances.iter().map(|it| (it.pid, it.id.clone())));
        Some(report)
    }

    /// Polls the report until `check` returns something; `tick` runs before each poll.
    fn wait_for<T>(
        &self,
        what: &str,
        mut tick: impl FnMut(),
        mut check: impl FnMut(&InstancesReport) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            tick();
            let report = self.report();
            if let Some(found) = report.as_ref().and_then(&mut check) {
                return found;
            }
            if let Some(thread) = &self.thread {
                assert!(!thread.is_finished(), "supervisor stopped while waiting for {what}");
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}; last report: {report:#?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the supervisor as SIGTERM would and returns what it returned.
    fn shut_down(&mut self) -> anyhow::Result<()> {
        self.shut_down_while(|| {})
    }

    /// [`Harness::shut_down`], running `tick` until the supervisor is done.
    fn shut_down_while(&mut self, mut tick: impl FnMut()) -> anyhow::Result<()> {
        self.stop.store(true, Ordering::SeqCst);
        let thread = self.thread.take().expect("started");
        let deadline = Instant::now() + TIMEOUT;
        while !thread.is_finished() {
            assert!(Instant::now() < deadline, "supervisor did not stop");
            tick();
            std::thread::sleep(Duration::from_millis(50));
        }
        thread.join().expect("supervisor thread panicked")
    }

    fn kill_everything_seen(&self) {
        self.report();
        for (pid, id) in self.seen.borrow().iter() {
            if process::is_ours(*pid, id) {
                process::signal(*pid, libc::SIGKILL);
            }
        }
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.kill_everything_seen();
        if let Some(thread) = self.thread.take() {
            let deadline = Instant::now() + TIMEOUT;
            while !thread.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            if thread.is_finished() {
                thread.join().ok();
            }
        }
        // Anything launched between the first sweep and the shutdown.
        self.kill_everything_seen();
    }
}

fn live(report: &InstancesReport) -> Vec<&InstanceRecord> {
    report.instances.iter().filter(|it| matches!(it.lifecycle, Lifecycle::Pending | Lifecycle::InService)).collect()
}

fn in_service(report: &InstancesReport) -> Vec<&InstanceRecord> {
    report.instances.iter().filter(|it| it.lifecycle == Lifecycle::InService).collect()
}

fn has_event(report: &InstancesReport, parts: &[&str]) -> bool {
    report.events.iter().any(|event| parts.iter().all(|part| event.contains(part)))
}

fn sleep_group(desired: u32, extra: serde_json::Value) -> serde_json::Value {
    let mut settings = json!({
        "min_size": 0,
        "max_size": 5,
        "desired_capacity": desired,
        "health_check_grace_period": "0s",
        "launch_template": { "command": ["sleep", "30"], "env": { "GREETING": "hello" } },
    });
    for (key, value) in extra.as_object().unwrap() {
        settings[key] = value.clone();
    }
    settings
}

#[test]
fn supervisor_keeps_desired_instances_replaces_dead_ones_and_scales_in() {
    let mut harness = Harness::new(sleep_group(2, json!({ "health_check_type": "EC2" })), &[]);
    harness.start();

    let first = harness.wait_for(
        "2 instances in service",
        || {},
        |report| {
            let ready = in_service(report);
            (ready.len() == 2 && report.desired == 2).then(|| ready.into_iter().cloned().collect::<Vec<_>>())
        },
    );
    let report = harness.report().unwrap();
    assert_eq!(report.config_digest, runtime::digest(&std::fs::read(&harness.config_path).unwrap()));
    assert!(report.pid == std::process::id() && report.updated_ms > 0);
    for instance in &first {
        assert!(instance.id.starts_with("i-") && instance.id.len() == 19, "{}", instance.id);
        assert!(instance.id[2..].chars().all(|it| it.is_ascii_hexdigit() && !it.is_ascii_uppercase()));
        let octets = instance.ip.octets();
        assert!(octets[0] == 127 && (16..=250).contains(&octets[1]) && octets[2] >= 1 && octets[3] >= 1);
        assert_eq!(instance.port, 8080);
        assert_eq!(instance.health, "healthy");
        assert_eq!(instance.health_reason, format!("EC2: process {} running", instance.pid));
        let environ = std::fs::read(format!("/proc/{}/environ", instance.pid)).unwrap();
        let environ = String::from_utf8_lossy(&environ);
        for var in [
            format!("LBCTL_INSTANCE_ID={}", instance.id),
            format!("LBCTL_IP={}", instance.ip),
            "LBCTL_PORT=8080".to_string(),
            "GREETING=hello".to_string(),
        ] {
            assert!(environ.split('\0').any(|it| it == var), "{var} missing from the instance's environment");
        }
    }
    assert_ne!(first[0].ip, first[1].ip);

    // A dead instance is replaced at once.
    let victim = first[0].clone();
    process::signal(victim.pid, libc::SIGKILL);
    harness.wait_for(
        "the killed instance replaced",
        || {},
        |report| {
            let now = live(report);
            let replaced = now.len() == 2
                && now.iter().all(|it| it.id != victim.id && process::is_alive(it.pid))
                && report.instances.iter().all(|it| it.id != victim.id);
            replaced.then_some(())
        },
    );
    let report = harness.report().unwrap();
    assert!(has_event(&report, &[&format!("replacing {}", victim.id), "SIGKILL"]), "{:#?}", report.events);
    // The events are also in the events log, and the metrics say how many
    // instances are in service.
    let events = std::fs::read_to_string(harness._dir.path().join("logs/web/events.log")).unwrap();
    assert!(events.lines().any(|it| it.contains(&format!("replacing {}", victim.id))), "{events}");
    let url = report.metrics_url.clone().expect("a metrics URL");
    let address = url.trim_start_matches("http://").trim_end_matches("/metrics");
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    use std::io::{Read, Write};
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(answer.contains("lbctl_group_total_instances{autoscaling_group=\"web\"} 2"), "{answer}");
    assert!(answer.contains("# TYPE lbctl_group_desired_capacity gauge"), "{answer}");

    // Scale in: one instance drained and terminated, the other untouched.
    let before: Vec<InstanceRecord> = live(&report).into_iter().cloned().collect();
    harness.config.settings.desired_capacity = 1;
    harness.write_config();
    let kept = harness.wait_for(
        "scale-in to 1",
        || {},
        |report| {
            (report.desired == 1 && report.instances.len() == 1 && live(report).len() == 1)
                .then(|| report.instances[0].clone())
        },
    );
    assert!(before.iter().any(|it| it.id == kept.id && it.pid == kept.pid), "the kept instance is one of before");
    let gone = before.iter().find(|it| it.id != kept.id).unwrap();
    assert!(process::wait_gone(gone.pid, Duration::from_secs(5)), "the scaled-in instance is stopped");
    let report = harness.report().unwrap();
    assert!(has_event(&report, &[&format!("draining {}", gone.id), "scale-in"]), "{:#?}", report.events);

    // Shut down: no instance survives, the report lists none.
    harness.shut_down().unwrap();
    for (pid, id) in harness.seen.borrow().iter() {
        assert!(!process::is_alive(*pid), "instance {id} (pid {pid}) survived the supervisor");
    }
    let report = harness.report().unwrap();
    assert!(report.instances.is_empty());
    assert!(has_event(&report, &["stopped"]));
}

#[test]
fn supervisor_adopts_live_instances_of_a_previous_supervisor() {
    let mut harness = Harness::new(sleep_group(2, json!({ "target_groups": ["web"] })), &["web"]);
    let asg_dir = harness.config_path.parent().unwrap().to_path_buf();
    write_group(&harness.layout, json!({ "deregistration_delay": "0s" }));
    // An instance left running by a supervisor killed with SIGKILL, and one that died since.
    let id = "i-0123456789abcdef0".to_string();
    let mut command = Command::new("sleep");
    command.arg("30").env("LBCTL_INSTANCE_ID", &id);
    let mut survivor = process::spawn_detached(command, &asg_dir.join("instances").join(format!("{id}.log"))).unwrap();
    let mut dead = Command::new("true").spawn().unwrap();
    let dead_pid = dead.id();
    dead.wait().unwrap();
    let record = |id: &str, pid: u32| InstanceRecord {
        id: id.to_string(),
        pid,
        ip: "127.99.1.1".parse().unwrap(),
        port: 8080,
        lifecycle: Lifecycle::InService,
        health: "healthy".to_string(),
        health_reason: String::new(),
        launched_ms: runtime::now_ms(),
        template_digest: "old".to_string(),
        log: PathBuf::new(),
    };
    let old = InstancesReport {
        pid: dead_pid,
        instances: vec![record(&id, survivor.id()), record("i-0000000000000dead", dead_pid)],
        events: vec!["an old event".to_string()],
        ..InstancesReport::default()
    };
    runtime::write_json(&asg_dir.join("instances.json"), &old).unwrap();
    // A registration file for a target group the group has left.
    let stale = harness.layout.registration_file("old-tg", "asg-web");
    runtime::write_json(&stale, &Registrations::default()).unwrap();

    harness.seen.borrow_mut().insert((survivor.id(), id.clone()));
    harness.start();
    let report = harness.wait_for(
        "the survivor adopted and the dead one replaced",
        || {},
        |report| {
            let now = live(report);
            (report.pid == std::process::id() && now.len() == 2 && now.iter().any(|it| it.id == id))
                .then(|| report.clone())
        },
    );
    let adopted = report.instances.iter().find(|it| it.id == id).unwrap();
    assert_eq!(adopted.pid, survivor.id());
    assert!(report.instances.iter().all(|it| it.id != "i-0000000000000dead"));
    assert!(has_event(&report, &["an old event"]), "events are kept");
    assert!(has_event(&report, &["i-0000000000000dead", "gone"]), "{:#?}", report.events);
    assert!(has_event(&report, &["replacing i-0000000000000dead"]), "{:#?}", report.events);
    // Both registered in the group's target group; the stale file removed.
    let registered = harness.wait_for(
        "both registered",
        || {},
        |_| {
            let file = harness.layout.registration_file("web", "asg-web");
            let regs: Registrations = runtime::read_json(&file).ok()??;
            (regs.targets.len() == 2).then_some(regs)
        },
    );
    assert!(registered.targets.iter().any(|it| it.id == id && it.ip == adopted.ip));
    assert!(!stale.exists(), "registration of a target group the group left is removed");

    // The adopted instance is stopped with the others.
    harness.shut_down().unwrap();
    let status = survivor.wait().unwrap();
    assert_eq!(status.code(), None, "stopped by a signal");
    assert!(!harness.layout.registration_file("web", "asg-web").exists());
    for (pid, id) in harness.seen.borrow().iter() {
        assert!(!process::is_alive(*pid), "instance {id} (pid {pid}) survived the supervisor");
    }
}

/// A load balancer `public` routing to target group `web`: writes its status
/// with every registered instance healthy except those in `unhealthy`. Its
/// process is a `sleep` carrying the proxy's configuration path in its
/// environment, so that it passes for the proxy (statuses count only with a
/// live process of theirs); killed on drop.
struct FakeLoadBalancer {
    layout: Layout,
    unhealthy: RefCell<BTreeSet<String>>,
    process: std::process::Child,
}

impl Drop for FakeLoadBalancer {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

impl FakeLoadBalancer {
    fn new(layout: &Layout) -> FakeLoadBalancer {
        let marker = layout.lb_dir("public").join("config.json");
        let process = std::process::Command::new("sleep").arg("600").env("LBCTL_FAKE_PROXY", marker).spawn().unwrap();
        FakeLoadBalancer { layout: layout.clone(), unhealthy: RefCell::new(BTreeSet::new()), process }
    }

    fn publish(&self) {
        let file = self.layout.registration_file("web", "asg-web");
        let regs: Registrations = runtime::read_json(&file).ok().flatten().unwrap_or_default();
        let targets = regs
            .targets
            .iter()
            .map(|it| {
                let bad = self.unhealthy.borrow().contains(&it.id);
                TargetHealth {
                    id: it.id.clone(),
                    ip: it.ip,
                    port: it.port,
                    state: if bad { HealthState::Unhealthy } else { HealthState::Healthy },
                    reason: if bad {
                        "Target.FailedHealthChecks: connection refused".to_string()
                    } else {
                        String::new()
                    },
                    requests: 0,
                    health_check_requests: 0,
                }
            })
            .collect();
        let status = ProxyStatus {
            pid: self.process.id(),
            target_groups: BTreeMap::from([("web".to_string(), targets)]),
            updated_ms: runtime::now_ms(),
            ..ProxyStatus::default()
        };
        runtime::write_json(&self.layout.lb_dir("public").join("status.json"), &status).unwrap();
    }
}

fn elb_harness(check: &str) -> Harness {
    let harness =
        Harness::new(sleep_group(1, json!({ "health_check_type": check, "target_groups": ["web"] })), &["web"]);
    // AWS's default 300 s delay: the drain ends early because the load
    // balancer no longer holds the target.
    write_group(&harness.layout, json!({}));
    harness
}

/// Target group `web` as the provider writes it.
fn write_group(layout: &Layout, settings: serde_json::Value) {
    let settings = serde_json::from_value::<lbctl_spec::TargetGroup>(settings).unwrap().resolve();
    let group = TargetGroupConfig { format: runtime::RUNTIME_FORMAT, name: "web".to_string(), settings };
    runtime::write_json(&layout.tg_dir("web").join("group.json"), &group).unwrap();
}

#[test]
fn supervisor_replaces_an_instance_the_load_balancer_reports_unhealthy_with_elb_checks() {
    let mut harness = elb_harness("ELB");
    harness.start();
    let lb = FakeLoadBalancer::new(&harness.layout);
    let first = harness.wait_for(
        "in service behind the load balancer",
        || lb.publish(),
        |report| in_service(report).first().map(|it| (*it).clone()),
    );
    assert_eq!(first.health_reason, "ELB: healthy in load balancer public");

    lb.unhealthy.borrow_mut().insert(first.id.clone());
    let second = harness.wait_for(
        "a replacement in service and the old one gone",
        || lb.publish(),
        |report| {
            let ready = in_service(report);
            (report.instances.len() == 1 && ready.len() == 1 && ready[0].id != first.id).then(|| ready[0].clone())
        },
    );
    assert!(process::wait_gone(first.pid, Duration::from_secs(5)), "the unhealthy instance is terminated");
    let report = harness.report().unwrap();
    let reason = "ELB: load balancer public reports Target.FailedHealthChecks: connection refused";
    assert!(
        has_event(&report, &[&format!("replacing unhealthy {}: {reason}", first.id), &second.id]),
        "{:#?}",
        report.events
    );
    assert!(has_event(&report, &[&format!("draining {}", first.id)]), "{:#?}", report.events);
    let regs: Registrations = runtime::read_json(&harness.layout.registration_file("web", "asg-web")).unwrap().unwrap();
    assert_eq!(regs.targets.iter().map(|it| it.id.as_str()).collect::<Vec<_>>(), [second.id.as_str()]);
    // Draining ends when the load balancer lets go, well before the 300 s delay.
    harness.shut_down_while(|| lb.publish()).unwrap();
    assert!(!process::is_alive(second.pid));
}

#[test]
fn supervisor_keeps_an_instance_the_load_balancer_reports_unhealthy_with_ec2_checks() {
    let mut harness = elb_harness("EC2");
    harness.start();
    let lb = FakeLoadBalancer::new(&harness.layout);
    let first =
        harness.wait_for("in service", || lb.publish(), |report| in_service(report).first().map(|it| (*it).clone()));
    lb.unhealthy.borrow_mut().insert(first.id.clone());
    let marked = runtime::now_ms();
    // The EC2 view stays healthy (the reason shows the load balancer's view)
    // and nothing is replaced, over reports written well after the failure.
    harness.wait_for(
        "2 s of reports after the failure",
        || lb.publish(),
        |report| {
            assert_eq!(report.instances.len(), 1, "{report:#?}");
            let instance = &report.instances[0];
            assert_eq!((instance.id.as_str(), instance.lifecycle), (first.id.as_str(), Lifecycle::InService));
            assert_eq!(instance.health, "healthy");
            let noted = instance.health_reason.contains("Target.FailedHealthChecks");
            (noted && report.updated_ms > marked + 2000).then_some(())
        },
    );
    harness.shut_down_while(|| lb.publish()).unwrap();
    assert!(!process::is_alive(first.pid));
}
