//! The auto-scaling group supervisor: one process per group, started by the
//! provider as `lbctl internal supervisor --config <asg_dir>/config.json`.
//!
//! It keeps `desired` instance processes alive, registers each in its target
//! groups (`tg/<group>/targets/asg-<name>.json`), replaces the unhealthy
//! (EC2: the process exited; ELB: also a load balancer reports it unhealthy
//! after the grace period), drains before it terminates, and reports in
//! `instances.json`. It polls its configuration file and converges to a new
//! one in place. Instances run in their own process groups, so a supervisor
//! killed with SIGKILL leaves them serving; the next supervisor adopts them
//! from `instances.json`. On SIGTERM/SIGINT it deregisters, drains and stops
//! every instance, then exits: no instance outlives it.
//!
//! A plain-thread control loop ticking every 200 ms; it never blocks on one
//! instance: drains and stops are per-instance deadlines.
//!
//! **Architecture invariant:** no tokio and no networking library: it
//! talks to the provider and the proxies through `lbctl-runtime`'s files
//! only, and knows nothing of plans, state or the provider trait.

#![deny(missing_docs)]

mod decide;
mod refresh;
mod scaling;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use lbctl_spec::LaunchTemplate;
use rand::Rng;

use self::decide::{Candidate, Verdict};
use lbctl_runtime as runtime;
use lbctl_runtime::process;
use lbctl_runtime::{
    InstanceRecord, InstancesReport, Lifecycle, ProxyStatus, RegisteredTarget, Registrations, SupervisorConfig,
    TargetGroupConfig,
};

/// Time between two passes of the control loop.
const TICK: Duration = Duration::from_millis(200);
/// Time between SIGTERM and SIGKILL for an instance being stopped.
const TERMINATE_GRACE: Duration = Duration::from_secs(10);
/// How long the supervisor waits for processes gone after SIGKILL when stopping.
const KILL_WAIT: Duration = Duration::from_secs(5);
/// `instances.json` is rewritten at least this often.
const REPORT_EVERY: Duration = Duration::from_secs(1);
/// Events kept in the report.
const MAX_EVENTS: usize = 50;
/// A deregistered target may leave a load balancer's status before its
/// deregistration delay ends only in statuses written this long after.
const DRAIN_NOTICE_MS: u64 = 1500;
/// A supervisor whose configuration file is gone this long stops (its
/// runtime directory was removed without stopping it).
const CONFIG_MISSING_LIMIT: Duration = Duration::from_secs(10);

/// Runs the supervisor of the group configured in `config_path` until SIGTERM
/// or SIGINT, then deregisters, drains and stops every instance and returns.
pub fn run(config_path: &Path) -> Result<()> {
    let dir = config_path.parent().context("the configuration file has no directory")?;
    let _pid_file = runtime::PidFile::hold(dir, "supervisor")?;
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, Arc::clone(&stop)).context("installing signal handlers")?;
    }
    run_with_shutdown(config_path, stop)
}

/// The group's metrics, named after Auto Scaling's CloudWatch metrics
/// (`GroupDesiredCapacity` is `lbctl_group_desired_capacity`, ...).
fn metrics_text(config: &SupervisorConfig, report: &InstancesReport) -> String {
    let mut out = runtime::metrics::Exposition::new();
    let at = [("autoscaling_group", config.name.as_str())];
    let count = |wanted: &[Lifecycle]| report.instances.iter().filter(|it| wanted.contains(&it.lifecycle)).count();
    for (name, help, value) in [
        ("lbctl_group_desired_capacity", "Instances the group wants: GroupDesiredCapacity.", report.desired as usize),
        ("lbctl_group_min_size", "The group's minimum size: GroupMinSize.", config.settings.min_size as usize),
        ("lbctl_group_max_size", "The group's maximum size: GroupMaxSize.", config.settings.max_size as usize),
        (
            "lbctl_group_in_service_instances",
            "Instances in service: GroupInServiceInstances.",
            count(&[Lifecycle::InService]),
        ),
        ("lbctl_group_pending_instances", "Instances starting: GroupPendingInstances.", count(&[Lifecycle::Pending])),
        (
            "lbctl_group_terminating_instances",
            "Instances draining or stopping: GroupTerminatingInstances.",
            count(&[Lifecycle::Draining, Lifecycle::Terminating]),
        ),
        ("lbctl_group_total_instances", "Every instance of the group: GroupTotalInstances.", report.instances.len()),
    ] {
        out.family(name, "gauge", help);
        out.sample(name, &at, value);
    }
    out.finish()
}

/// Serves `text` as Prometheus metrics on a free loopback port, on a thread
/// of its own; returns the URL (`None` when no port could be had).
fn serve_metrics(text: Arc<Mutex<String>>) -> Option<String> {
    let server = tiny_http::Server::http("127.0.0.1:0").ok()?;
    let url = format!("http://{}/metrics", server.server_addr().to_ip()?);
    std::thread::Builder::new()
        .name("metrics".to_string())
        .spawn(move || {
            for request in server.incoming_requests() {
                let response = if request.url() == "/metrics" {
                    let body = text.lock().unwrap_or_else(|it| it.into_inner()).clone();
                    let header =
                        tiny_http::Header::from_bytes("Content-Type", "text/plain; version=0.0.4; charset=utf-8");
                    tiny_http::Response::from_string(body).with_header(header.expect("a valid header"))
                } else {
                    tiny_http::Response::from_string("metrics are at /metrics\n").with_status_code(404)
                };
                let _ = request.respond(response);
            }
        })
        .ok()?;
    Some(url)
}

/// [`run`] without signal handlers: runs until `stop` becomes true (or the
/// configuration file has been gone for 10 s), then shuts down as on SIGTERM.
/// Fails at once when the configuration cannot be read or another live
/// supervisor already runs the group.
pub fn run_with_shutdown(config_path: &Path, stop: Arc<AtomicBool>) -> Result<()> {
    let mut supervisor = Supervisor::start(config_path)?;
    while !stop.load(Ordering::SeqCst) {
        if supervisor.tick() {
            break;
        }
        std::thread::sleep(TICK);
    }
    supervisor.shutdown();
    Ok(())
}

/// One instance and what the supervisor tracks beyond its record.
struct Instance {
    record: InstanceRecord,
    /// Our own child, reaped with `try_wait`; `None` for adopted instances.
    child: Option<Child>,
    /// Why it is draining or terminating (for the final event).
    why: String,
    /// Draining: when it was deregistered, Unix milliseconds.
    deregistered_ms: u64,
    /// Draining: when the deregistration delay is over.
    drain_until: Option<Instant>,
    /// Terminating: when SIGKILL is due (`None` once sent).
    kill_at: Option<Instant>,
}

impl Instance {
    fn is_live(&self) -> bool {
        matches!(self.record.lifecycle, Lifecycle::Pending | Lifecycle::InService)
    }

    /// `Some(description)` once its process has exited (reaping our children).
    fn exit(&mut self) -> Option<String> {
        let pid = self.record.pid;
        match &mut self.child {
            Some(child) => match child.try_wait() {
                Ok(Some(status)) => Some(describe_exit(status)),
                Ok(None) => None,
                Err(_) => (!process::is_alive(pid)).then(|| format!("process {pid} exited")),
            },
            None => (!process::is_ours(pid, &self.record.id)).then(|| format!("process {pid} exited")),
        }
    }

    /// Sends `signal` unless the process is already gone (or no longer ours).
    fn signal(&mut self, signal: i32) {
        let alive = match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => process::is_ours(self.record.pid, &self.record.id),
        };
        if alive {
            process::signal(self.record.pid, signal);
        }
    }
}

fn describe_exit(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("process exited with status {code}"),
        (None, Some(signal)) => {
            let name = match signal {
                libc::SIGKILL => " (SIGKILL)",
                libc::SIGTERM => " (SIGTERM)",
                libc::SIGINT => " (SIGINT)",
                libc::SIGSEGV => " (SIGSEGV)",
                libc::SIGABRT => " (SIGABRT)",
                _ => "",
            };
            format!("process killed by signal {signal}{name}")
        }
        _ => format!("process exited ({status})"),
    }
}

struct Supervisor {
    config_path: PathBuf,
    asg_dir: PathBuf,
    config: SupervisorConfig,
    /// Digest of the configuration file applied.
    config_digest: String,
    /// Digest of a configuration file that failed to parse (reported once).
    bad_digest: Option<String>,
    /// Why the configuration file on disk is not used, when it is not
    /// trusted; reported in `instances.json`'s `errors`.
    config_problem: Option<String>,
    /// Instances that ended before getting in service since one last did.
    crash_loop: Option<runtime::CrashLoop>,
    config_missing_since: Option<Instant>,
    template_digest: String,
    instances: Vec<Instance>,
    events: VecDeque<String>,
    /// Why the next launches happen (replacements), consumed by scale-out.
    replacing: VecDeque<String>,
    /// Registration files written, by target group; `None`: content unknown.
    written: BTreeMap<String, Option<Registrations>>,
    /// Last report written, with `updated_ms` zeroed, and when.
    last_report: Option<(InstancesReport, Instant)>,
    /// Instances in a row that died before they got in service.
    launch_failures: u32,
    next_launch_at: Instant,
    last_warning: String,
    /// The target tracking policy's state, when the group has one.
    tracker: Option<scaling::TargetTracker>,
    /// The instance refresh in progress or the outcome of the last one.
    refresh: Option<refresh::Refresh>,
    /// The events log, appended to.
    events_log: Option<std::fs::File>,
    /// The metrics the metrics thread serves, rewritten with each report.
    metrics: Arc<Mutex<String>>,
    /// Where they are served.
    metrics_url: Option<String>,
}

fn template_digest(template: &LaunchTemplate) -> String {
    runtime::digest(&serde_json::to_vec(template).unwrap_or_default())
}

impl Supervisor {
    fn start(config_path: &Path) -> Result<Supervisor> {
        let bytes =
            runtime::read_trusted(config_path)?.with_context(|| format!("{} does not exist", config_path.display()))?;
        let config: SupervisorConfig =
            serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", config_path.display()))?;
        let asg_dir = config_path.parent().context("configuration file has no parent directory")?.to_path_buf();
        let mut supervisor = Supervisor {
            config_path: config_path.to_path_buf(),
            asg_dir,
            template_digest: template_digest(&config.settings.launch_template),
            config,
            config_digest: runtime::digest(&bytes),
            bad_digest: None,
            config_problem: None,
            crash_loop: None,
            config_missing_since: None,
            instances: Vec::new(),
            events: VecDeque::new(),
            replacing: VecDeque::new(),
            written: BTreeMap::new(),
            last_report: None,
            launch_failures: 0,
            next_launch_at: Instant::now(),
            last_warning: String::new(),
            tracker: None,
            refresh: None,
            events_log: None,
            metrics: Arc::default(),
            metrics_url: None,
        };
        supervisor.events_log = supervisor.config.events_log.as_ref().and_then(|path| {
            path.parent().map(lbctl_files::create_private_dir);
            lbctl_files::open_private_append(path).ok()
        });
        supervisor.metrics_url = serve_metrics(supervisor.metrics.clone());
        supervisor.adopt()?;
        supervisor.find_registrations();
        supervisor.event(format!(
            "supervisor started (pid {}, desired {}, {} instance(s) adopted)",
            std::process::id(),
            supervisor.config.settings.desired(),
            supervisor.instances.len()
        ));
        Ok(supervisor)
    }

    /// Takes over the instances a previous supervisor of this group left.
    fn adopt(&mut self) -> Result<()> {
        let path = self.asg_dir.join("instances.json");
        let old = match runtime::read_json::<InstancesReport>(&path) {
            Ok(Some(old)) => old,
            Ok(None) => return Ok(()),
            Err(err) => {
                self.warn(format!("ignoring unreadable previous report: {err:#}"));
                return Ok(());
            }
        };
        let marker = self.config_path.to_string_lossy().into_owned();
        if old.pid != std::process::id() && process::is_ours(old.pid, &marker) {
            bail!("another supervisor (pid {}) already runs this group", old.pid);
        }
        self.events = old.events.into_iter().collect();
        let now = Instant::now();
        for record in old.instances {
            let (id, pid) = (record.id.clone(), record.pid);
            if !process::is_ours(pid, &id) {
                let was_live = matches!(record.lifecycle, Lifecycle::Pending | Lifecycle::InService);
                self.event(format!("{id} (pid {pid}) is gone since the previous supervisor stopped"));
                if was_live {
                    self.replacing.push_back(format!("replacing {id}: EC2: process {pid} exited"));
                }
                continue;
            }
            let mut instance = Instance {
                record,
                child: None,
                why: "adopted while stopping".to_string(),
                deregistered_ms: runtime::now_ms(),
                drain_until: None,
                kill_at: None,
            };
            match instance.record.lifecycle {
                Lifecycle::Pending | Lifecycle::InService => {}
                Lifecycle::Draining => instance.drain_until = Some(now + self.drain_delay()),
                Lifecycle::Terminating => {
                    instance.signal(libc::SIGTERM);
                    instance.kill_at = Some(now + TERMINATE_GRACE);
                }
            }
            self.instances.push(instance);
        }
        Ok(())
    }

    /// Registration files of this group left by a previous supervisor, so
    /// that those of target groups it no longer uses get removed.
    fn find_registrations(&mut self) {
        let Ok(groups) = std::fs::read_dir(self.config.layout.tg_root()) else { return };
        let source = self.source();
        for group in groups.flatten() {
            let name = group.file_name().to_string_lossy().into_owned();
            let file = self.config.layout.registration_file(&name, &source);
            if file.exists() {
                let content = runtime::read_json::<Registrations>(&file).ok().flatten();
                self.written.insert(name, content);
            }
        }
    }

    fn source(&self) -> String {
        format!("asg-{}", self.config.name)
    }

    fn event(&mut self, message: String) {
        let line = format!("{} {message}", decide::utc_timestamp(runtime::now_ms()));
        eprintln!("{line}");
        if let Some(log) = &mut self.events_log {
            use std::io::Write;
            let _ = writeln!(log, "{line}");
        }
        self.events.push_back(line);
        while self.events.len() > MAX_EVENTS {
            self.events.pop_front();
        }
    }

    /// Records an instance that ended before it got in service.
    fn crashed(&mut self, exit: String, log: String) {
        let restarts = self.crash_loop.as_ref().map_or(0, |it| it.restarts) + 1;
        self.crash_loop = Some(runtime::CrashLoop { restarts, last_exit: exit, last_log: log });
    }

    /// Logs a problem once (until a different one happens).
    fn warn(&mut self, message: String) {
        if message != self.last_warning {
            eprintln!("{} warning: {message}", runtime::log_time());
            self.last_warning = message;
        }
    }

    /// One pass of the control loop; true when the supervisor must stop.
    fn tick(&mut self) -> bool {
        if self.reload_config() {
            self.event("configuration file is gone: stopping".to_string());
            return true;
        }
        let statuses = self.proxy_statuses();
        self.reap();
        self.check_health(&statuses);
        self.track_target(&statuses);
        self.refresh_step();
        self.scale();
        self.note_refresh_launches();
        self.progress_stops(&statuses);
        self.sync_registrations();
        self.write_report(false);
        false
    }

    /// Re-reads the configuration file when its bytes changed; true when it
    /// has been missing too long.
    fn reload_config(&mut self) -> bool {
        let bytes = match runtime::read_trusted(&self.config_path) {
            Ok(Some(bytes)) => bytes,
            Ok(None) => {
                let since = *self.config_missing_since.get_or_insert_with(Instant::now);
                self.warn(format!("{} is missing", self.config_path.display()));
                return since.elapsed() >= CONFIG_MISSING_LIMIT;
            }
            Err(err) => {
                // Not trusted (another user's, or writable by others): the
                // applied configuration stays, and the report says why.
                let problem = format!("keeping the applied configuration: {err:#}");
                self.warn(problem.clone());
                self.config_problem = Some(problem);
                return false;
            }
        };
        self.config_missing_since = None;
        self.config_problem = None;
        let digest = runtime::digest(&bytes);
        if digest == self.config_digest || self.bad_digest.as_ref() == Some(&digest) {
            return false;
        }
        match serde_json::from_slice::<SupervisorConfig>(&bytes) {
            Ok(config) => {
                let before = self.config.settings.desired();
                let previous_template = self.config.settings.launch_template.clone();
                let previous_digest =
                    std::mem::replace(&mut self.template_digest, template_digest(&config.settings.launch_template));
                // A new launch template starts with a clean record: the
                // old one's crashes are not the new one's.
                if previous_digest != self.template_digest {
                    self.crash_loop = None;
                    self.launch_failures = 0;
                }
                self.config = config;
                self.config_digest = digest;
                self.bad_digest = None;
                self.event(format!(
                    "applied new configuration {} (desired {before} -> {})",
                    self.config_digest,
                    self.config.settings.desired()
                ));
                self.consider_refresh(previous_template, previous_digest);
            }
            Err(err) => {
                self.event(format!("ignoring invalid configuration {digest}: {err}; keeping {}", self.config_digest));
                self.bad_digest = Some(digest);
            }
        }
        false
    }

    /// Statuses of the load balancers whose proxy runs.
    fn proxy_statuses(&self) -> Vec<(String, ProxyStatus)> {
        runtime::running_proxy_statuses(&self.config.layout)
    }

    /// Drops instances whose process exited; live ones get replaced.
    fn reap(&mut self) {
        let mut index = 0;
        while index < self.instances.len() {
            let Some(exit) = self.instances[index].exit() else {
                index += 1;
                continue;
            };
            let instance = self.instances.remove(index);
            let id = &instance.record.id;
            match instance.record.lifecycle {
                Lifecycle::Pending | Lifecycle::InService => {
                    if instance.record.lifecycle == Lifecycle::Pending {
                        self.launch_failures += 1;
                        self.next_launch_at = Instant::now() + decide::launch_backoff(self.launch_failures);
                        self.crashed(exit.clone(), process::log_tail(&instance.record.log, 5));
                    }
                    let log = process::log_tail(&instance.record.log, 3);
                    let tail =
                        if log.is_empty() { String::new() } else { format!("; log: {}", log.replace('\n', " | ")) };
                    self.event(format!("terminated {id}: EC2: {exit}{tail}"));
                    self.replacing.push_back(format!("replacing {id}: EC2: {exit}"));
                }
                Lifecycle::Draining | Lifecycle::Terminating => {
                    self.event(format!("terminated {id} ({}): {exit}", instance.why));
                }
            }
        }
    }

    /// Updates the health of live instances, moves them in service, and
    /// replaces the unhealthy.
    fn check_health(&mut self, statuses: &[(String, ProxyStatus)]) {
        let settings = &self.config.settings;
        let (check, grace) = (settings.health_check_type, settings.health_check_grace_period.get());
        let groups = settings.target_groups.clone();
        let now_ms = runtime::now_ms();
        let mut unhealthy = Vec::new();
        let mut in_service_now = Vec::new();
        for instance in self.instances.iter_mut().filter(|it| it.is_live()) {
            let record = &mut instance.record;
            let age = Duration::from_millis(now_ms.saturating_sub(record.launched_ms));
            let seen = decide::observations(statuses, &groups, &record.id);
            let Verdict { healthy, reason, in_service } = decide::judge(check, record.pid, age, grace, &seen);
            record.health = if healthy { "healthy" } else { "unhealthy" }.to_string();
            record.health_reason = reason.clone();
            if !healthy {
                unhealthy.push((record.id.clone(), reason));
            } else if in_service && record.lifecycle == Lifecycle::Pending {
                record.lifecycle = Lifecycle::InService;
                self.launch_failures = 0;
                self.crash_loop = None;
                in_service_now.push(format!("{} in service ({})", record.id, record.health_reason));
            }
        }
        for event in in_service_now {
            self.event(event);
        }
        for (id, reason) in unhealthy {
            self.replacing.push_back(format!("replacing unhealthy {id}: {reason}"));
            self.begin_drain(&id, format!("unhealthy: {reason}"));
        }
    }

    /// Launches or drains instances until `desired` are live.
    fn scale(&mut self) {
        // An instance refresh launches its new instances before it drains old ones.
        let desired = self.desired_capacity() as usize + self.refresh_extra();
        let live = self.instances.iter().filter(|it| it.is_live()).count();
        if live < desired {
            for _ in live..desired {
                if Instant::now() < self.next_launch_at {
                    break;
                }
                let reason =
                    self.replacing.pop_front().unwrap_or_else(|| format!("scaling out to desired capacity {desired}"));
                if let Err(err) = self.launch(&reason) {
                    self.launch_failures += 1;
                    self.next_launch_at = Instant::now() + decide::launch_backoff(self.launch_failures).max(TICK);
                    self.crashed(format!("could not be started: {err:#}"), String::new());
                    self.event(format!("failed to launch an instance ({reason}): {err:#}"));
                    self.replacing.push_front(reason);
                    break;
                }
            }
        } else {
            self.replacing.clear();
        }
        if live > desired {
            let candidates: Vec<Candidate> = self
                .instances
                .iter()
                .filter(|it| it.is_live())
                .map(|it| Candidate {
                    id: it.record.id.clone(),
                    launched_ms: it.record.launched_ms,
                    template_digest: it.record.template_digest.clone(),
                })
                .collect();
            let policy = self.config.settings.termination_policy;
            for id in decide::choose_victims(policy, &self.template_digest, &candidates, live - desired) {
                self.begin_drain(&id, format!("scale-in to desired capacity {desired}"));
            }
        }
    }

    /// Starts one instance.
    fn launch(&mut self, reason: &str) -> Result<()> {
        let id = new_instance_id();
        let port = self.config.instance_port;
        let used: BTreeSet<Ipv4Addr> = self.instances.iter().map(|it| it.record.ip).collect();
        let ip = pick_ip(port, &used)?;
        let template = &self.config.settings.launch_template;
        let (program, args) = decide::expand_command(&template.command, ip, port, &id, &self.config.lbctl_exe)
            .context("the launch template's command is empty")?;
        let mut command = Command::new(&program);
        command
            .args(&args)
            .envs(&template.env)
            .env("LBCTL_IP", ip.to_string())
            .env("LBCTL_PORT", port.to_string())
            .env("LBCTL_INSTANCE_ID", &id)
            .current_dir(&self.config.working_dir);
        let log = self.asg_dir.join("instances").join(format!("{id}.log"));
        let child = process::spawn_detached(command, &log)?;
        let pid = child.id();
        self.instances.push(Instance {
            record: InstanceRecord {
                id: id.clone(),
                pid,
                ip,
                port,
                lifecycle: Lifecycle::Pending,
                health: "healthy".to_string(),
                health_reason: format!("EC2: process {pid} starting"),
                launched_ms: runtime::now_ms(),
                template_digest: self.template_digest.clone(),
                log,
            },
            child: Some(child),
            why: String::new(),
            deregistered_ms: 0,
            drain_until: None,
            kill_at: None,
        });
        self.event(format!("launched {id} at {ip}:{port} (pid {pid}): {reason}"));
        Ok(())
    }

    /// The largest deregistration delay among the group's target groups.
    fn drain_delay(&self) -> Duration {
        self.config
            .settings
            .target_groups
            .iter()
            .filter_map(|tg| {
                runtime::read_json::<TargetGroupConfig>(&self.config.layout.tg_dir(tg).join("group.json"))
                    .ok()
                    .flatten()
            })
            .map(|it| it.settings.deregistration_delay.get())
            .max()
            .unwrap_or_default()
    }

    /// Deregisters a live instance; it is terminated once drained.
    fn begin_drain(&mut self, id: &str, why: String) {
        let delay = self.drain_delay();
        let Some(instance) = self.instances.iter_mut().find(|it| it.record.id == id && it.is_live()) else { return };
        instance.record.lifecycle = Lifecycle::Draining;
        instance.why = why.clone();
        instance.deregistered_ms = runtime::now_ms();
        instance.drain_until = Some(Instant::now() + delay);
        self.event(format!(
            "draining {id} ({why}): it leaves once its in-flight requests finish, {} at most (deregistration delay)",
            lbctl_spec::Duration(delay)
        ));
    }

    /// Moves drained instances to `Terminating` (SIGTERM) and kills those
    /// that ignore it.
    fn progress_stops(&mut self, statuses: &[(String, ProxyStatus)]) {
        let now = Instant::now();
        let groups = &self.config.settings.target_groups;
        for instance in &mut self.instances {
            match instance.record.lifecycle {
                Lifecycle::Draining => {
                    let id = &instance.record.id;
                    let drained = instance.drain_until.is_none_or(|until| now >= until)
                        || decide::drained_everywhere(statuses, groups, id, instance.deregistered_ms, DRAIN_NOTICE_MS);
                    if drained {
                        instance.record.lifecycle = Lifecycle::Terminating;
                        instance.kill_at = Some(now + TERMINATE_GRACE);
                        instance.signal(libc::SIGTERM);
                    }
                }
                Lifecycle::Terminating => {
                    if instance.kill_at.is_some_and(|at| now >= at) {
                        instance.kill_at = None;
                        instance.signal(libc::SIGKILL);
                        eprintln!(
                            "{} {} ignored SIGTERM for {}s: sent SIGKILL",
                            decide::utc_timestamp(runtime::now_ms()),
                            instance.record.id,
                            TERMINATE_GRACE.as_secs()
                        );
                    }
                }
                Lifecycle::Pending | Lifecycle::InService => {}
            }
        }
    }

    /// Writes each target group's registrations when they change; removes
    /// those of target groups the group left.
    fn sync_registrations(&mut self) {
        let source = self.source();
        let attached = self.config.settings.target_groups.clone();
        // Groups that name some of these instances by id, besides those the
        // group is attached to: (group, port, the ids it names).
        let by_id = self.named_by_id();
        let mut groups: Vec<String> = attached.clone();
        groups.extend(by_id.keys().filter(|it| !attached.contains(it)).cloned());
        for group in &groups {
            // The provider creates a target group's directory before any
            // group registers in it; never resurrect one it removed.
            if !self.config.layout.tg_dir(group).is_dir() {
                continue;
            }
            let (port, only) = match (attached.contains(group), by_id.get(group)) {
                (true, _) => {
                    (self.config.target_group_ports.get(group).copied().unwrap_or(self.config.instance_port), None)
                }
                (false, Some((port, ids))) => (*port, Some(ids)),
                (false, None) => continue,
            };
            let mut targets: Vec<RegisteredTarget> = self
                .instances
                .iter()
                .filter(|it| it.is_live() && only.is_none_or(|ids| ids.contains(&it.record.id)))
                .map(|it| RegisteredTarget { id: it.record.id.clone(), ip: it.record.ip, port })
                .collect();
            targets.sort();
            let wanted = Registrations { targets };
            let file = self.config.layout.registration_file(group, &source);
            if self.written.get(group) == Some(&Some(wanted.clone())) && file.exists() {
                continue;
            }
            match runtime::write_json(&file, &wanted) {
                Ok(()) => {
                    self.written.insert(group.clone(), Some(wanted));
                }
                Err(err) => self.warn(format!("{err:#}")),
            }
        }
        let stale: Vec<String> = self.written.keys().filter(|it| !groups.contains(it)).cloned().collect();
        for group in stale {
            let file = self.config.layout.registration_file(&group, &source);
            match std::fs::remove_file(&file) {
                Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
                    self.warn(format!("removing {}: {err}", file.display()));
                }
                _ => {
                    self.written.remove(&group);
                }
            }
        }
    }

    /// The target groups that name instances of this group by id
    /// (`runtime::RegisteredById`), with their port and the ids of ours.
    fn named_by_id(&self) -> BTreeMap<String, (u16, BTreeSet<String>)> {
        let mut named = BTreeMap::new();
        let Ok(groups) = std::fs::read_dir(self.config.layout.tg_root()) else { return named };
        let ours: BTreeSet<&str> = self.instances.iter().map(|it| it.record.id.as_str()).collect();
        for entry in groups.flatten() {
            let group = entry.file_name().to_string_lossy().into_owned();
            let Ok(Some(by_id)) = runtime::read_json::<runtime::RegisteredById>(&self.config.layout.by_id_file(&group))
            else {
                continue;
            };
            let ids: BTreeSet<String> = by_id.instances.into_iter().filter(|it| ours.contains(it.as_str())).collect();
            if !ids.is_empty() {
                named.insert(group, (by_id.port, ids));
            }
        }
        named
    }

    /// Writes `instances.json` when it changed or a second has passed.
    fn write_report(&mut self, force: bool) {
        let report = InstancesReport {
            format: runtime::RUNTIME_FORMAT,
            pid: std::process::id(),
            config_digest: self.config_digest.clone(),
            desired: self.desired_capacity(),
            desired_set_by: self.desired_set_by(),
            instances: self.instances.iter().map(|it| it.record.clone()).collect(),
            events: self.events.iter().cloned().collect(),
            updated_ms: 0,
            refresh: self.refresh.as_ref().map(refresh::Refresh::status),
            errors: self.config_problem.iter().cloned().collect(),
            crash_loop: self.crash_loop.clone().filter(|it| it.restarts >= runtime::CRASH_LOOP_AFTER),
            metrics_url: self.metrics_url.clone(),
        };
        *self.metrics.lock().unwrap_or_else(|it| it.into_inner()) = metrics_text(&self.config, &report);
        if let Some((last, at)) = &self.last_report {
            if !force && *last == report && at.elapsed() < REPORT_EVERY {
                return;
            }
        }
        if !self.asg_dir.is_dir() {
            return; // removed with the runtime directory: do not recreate it
        }
        let stamped = InstancesReport { updated_ms: runtime::now_ms(), ..report.clone() };
        match runtime::write_json(&self.asg_dir.join("instances.json"), &stamped) {
            Ok(()) => self.last_report = Some((report, Instant::now())),
            Err(err) => self.warn(format!("{err:#}")),
        }
    }

    /// Deregisters everything, waits for the drain (at most the largest
    /// deregistration delay), stops every instance (SIGTERM, SIGKILL after
    /// 10 s), removes its registration files and reports no instances.
    fn shutdown(&mut self) {
        let count = self.instances.len();
        self.event(format!("stopping: deregistering and terminating {count} instance(s)"));
        let delay = self.drain_delay();
        let now = Instant::now();
        for instance in &mut self.instances {
            if instance.record.lifecycle != Lifecycle::Terminating {
                if instance.is_live() {
                    instance.why = "supervisor stopping".to_string();
                    instance.deregistered_ms = runtime::now_ms();
                }
                instance.record.lifecycle = Lifecycle::Draining;
                // Never wait longer than the delay, even for instances that
                // were already draining.
                instance.drain_until = Some(instance.drain_until.map_or(now + delay, |it| it.min(now + delay)));
            }
        }
        self.sync_registrations();
        self.write_report(true);
        let deadline = now + delay + TERMINATE_GRACE + KILL_WAIT;
        while !self.instances.is_empty() {
            let statuses = self.proxy_statuses();
            self.reap();
            self.progress_stops(&statuses);
            self.write_report(false);
            if self.instances.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                let left: Vec<String> =
                    self.instances.iter().map(|it| format!("{} (pid {})", it.record.id, it.record.pid)).collect();
                self.event(format!("gave up waiting for {}", left.join(", ")));
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.instances.clear();
        self.replacing.clear();
        let source = self.source();
        let groups: BTreeSet<String> =
            self.written.keys().cloned().chain(self.config.settings.target_groups.iter().cloned()).collect();
        for group in groups {
            std::fs::remove_file(self.config.layout.registration_file(&group, &source)).ok();
        }
        self.written.clear();
        self.event("stopped".to_string());
        self.write_report(true);
    }
}

/// `i-` and 17 random lowercase hex digits.
fn new_instance_id() -> String {
    let mut rng = rand::thread_rng();
    let digits: String = (0..17).map(|_| char::from_digit(rng.gen_range(0..16), 16).unwrap_or('0')).collect();
    format!("i-{digits}")
}

/// A random private loopback address (127.16-250.1-254.1-254) on which
/// `port` is free and no instance of this group lives.
fn pick_ip(port: u16, used: &BTreeSet<Ipv4Addr>) -> Result<Ipv4Addr> {
    let mut rng = rand::thread_rng();
    let mut last_error = None;
    for _ in 0..100 {
        let ip = Ipv4Addr::new(127, rng.gen_range(16..=250), rng.gen_range(1..=254), rng.gen_range(1..=254));
        if used.contains(&ip) {
            continue;
        }
        match TcpListener::bind((ip, port)) {
            Ok(listener) => {
                drop(listener);
                return Ok(ip);
            }
            Err(err) => last_error = Some(err),
        }
    }
    match last_error {
        Some(err) => Err(err).with_context(|| format!("no free loopback address for port {port}")),
        None => bail!("no free loopback address for port {port}"),
    }
}
