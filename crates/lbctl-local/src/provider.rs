//! `LocalProvider`: create, read, update and delete resources as processes
//! and runtime files.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use lbctl_plan::{Applied, Kind, Observed, Progress, Readiness, Resource, ResourceState};
use lbctl_runtime as runtime;
use lbctl_runtime::process;
use lbctl_runtime::{
    FunctionConfig, InstancesReport, Layout, ProxyConfig, ProxyStatus, RegisteredTarget, Registrations,
    SupervisorConfig, TargetGroupConfig,
};
use lbctl_spec::settings::{AutoscalingGroup, Function, TargetGroup};
use lbctl_spec::{LoadBalancer, LoadBalancerType, TargetType};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::addresses::AddressTable;
use crate::health::TargetVerdict;

/// Resolved attributes of an auto-scaling group that the planner derives
/// from other resources (not settings of the group's own).
pub(crate) const ASG_DERIVED: &[&str] = &["instance_port", "target_group_ports"];

/// A load balancer's DNS name, known once it is made. An application load
/// balancer's is `<lb>.<stack>.elb.localhost`, which curl and browsers
/// resolve to 127.0.0.1, where it listens, by themselves. A network load
/// balancer listens on its own address: its name is
/// `<lb>.<stack>.elb.internal` (a name for private use), which clients
/// resolve through `/etc/hosts` only (curl would take any `.localhost`
/// name to 127.0.0.1).
pub(crate) fn dns_name(stack: &str, load_balancer: &str, kind: LoadBalancerType) -> String {
    match kind {
        LoadBalancerType::Application => format!("{load_balancer}.{stack}.elb.localhost"),
        LoadBalancerType::Network => format!("{load_balancer}.{stack}.elb.internal"),
    }
}

/// How long a started process gets to report that it runs.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a proxy gets to finish in-flight requests when stopped.
const PROXY_STOP_GRACE: Duration = Duration::from_secs(10);
/// What a supervisor needs beyond its groups' deregistration delay to stop
/// its instances (SIGTERM, then SIGKILL after 10 s).
const SUPERVISOR_STOP_MARGIN: Duration = Duration::from_secs(15);

/// Where the local provider keeps things and which binary it runs.
#[derive(Debug, Clone)]
pub struct LocalOptions {
    /// Stack name.
    pub stack: String,
    /// `.lbctl` beside the spec; runtime files go to its `run/`.
    pub state_dir: PathBuf,
    /// Working directory of instance commands (the spec's directory).
    pub working_dir: PathBuf,
    /// The `lbctl` binary that runs proxies, supervisors and `lbctl` commands.
    pub lbctl_exe: PathBuf,
}

/// The local provider.
#[derive(Debug, Clone)]
pub struct LocalProvider {
    options: LocalOptions,
    layout: Layout,
    addresses: AddressTable,
}

/// What the state keeps about a process-backed resource.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct ProcessData {
    /// Process id of the proxy or supervisor.
    pid: u32,
    /// Its configuration file; also the marker that tells the process is ours.
    config_path: PathBuf,
    /// Digest of the configuration file as written.
    config_digest: String,
    /// The address a network load balancer listens on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    static_ip: Option<Ipv4Addr>,
}

/// What the state keeps about a file-backed resource.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct FileData {
    /// The file.
    path: PathBuf,
    /// Digest of the file as written.
    digest: String,
}

/// Effective settings from a resource's resolved attributes, minus the
/// planner's derived keys.
pub(crate) fn settings<T: DeserializeOwned>(attributes: &Value, derived: &[&str]) -> Result<T> {
    let has_derived = attributes.as_object().is_some_and(|map| derived.iter().any(|key| map.contains_key(*key)));
    if !has_derived {
        // Read in place: a copy of the attributes was most of planning's
        // provider checks.
        return T::deserialize(attributes).context("reading resource attributes");
    }
    let mut value = attributes.clone();
    if let Some(map) = value.as_object_mut() {
        for key in derived {
            map.remove(*key);
        }
    }
    serde_json::from_value(value).context("reading resource attributes")
}

/// A load balancer's settings from its resolved attributes.
pub(crate) fn lb_settings(attributes: &Value) -> Result<LoadBalancer> {
    settings(attributes, &[])
}

impl LocalProvider {
    /// A provider for one stack.
    pub fn new(options: LocalOptions) -> LocalProvider {
        let layout = Layout::new(options.state_dir.join("run"));
        LocalProvider { options, layout, addresses: AddressTable::for_user() }
    }

    /// The runtime layout.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// What the state keeps for `resource` of this provider's own; an
    /// error naming the state file when it cannot be read, so that nothing
    /// is started or stopped on a guess.
    fn private<T: DeserializeOwned>(&self, resource: &ResourceState) -> Result<T> {
        serde_json::from_value(resource.private.clone()).map_err(|err| {
            let state = self.options.state_dir.join("state.json");
            anyhow!(
                "{}: the record of {} is damaged ({err}); restore it from {} or remove the record and clean up by hand",
                state.display(),
                resource.address,
                state.with_extension("json.backup").display()
            )
        })
    }

    fn proxy_status(&self, name: &str) -> Option<ProxyStatus> {
        runtime::read_json(&self.layout.lb_dir(name).join("status.json")).ok().flatten()
    }

    fn instances(&self, name: &str) -> Option<InstancesReport> {
        runtime::read_json(&self.layout.asg_dir(name).join("instances.json")).ok().flatten()
    }

    /// Starts `lbctl internal <role> --config <config_path>` and waits until
    /// `started` says it runs, failing with its log if it exits.
    fn start_process(
        &self,
        role: &str,
        config_path: &Path,
        log: &Path,
        progress: &dyn Progress,
        started: impl Fn(u32) -> Option<Result<()>>,
    ) -> Result<u32> {
        let mut command = Command::new(&self.options.lbctl_exe);
        command.arg("internal").arg(role).arg("--config").arg(config_path);
        let mut child = process::spawn_detached(command, log)?;
        let pid = child.id();
        progress.report(&format!("started {role} (pid {pid}), waiting for it to come up"));
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                bail!("{role} exited with {status} while starting:\n{}", process::log_tail(log, 15));
            }
            match started(pid) {
                // The process outlives this command on purpose: drop the handle
                // without waiting; once lbctl exits, init reaps it.
                Some(Ok(())) => return Ok(pid),
                // It runs but cannot serve (a port taken since the plan):
                // stopped, so that no process the state does not know is
                // left holding what it did get.
                Some(Err(err)) => {
                    process::stop(pid, &config_path.to_string_lossy(), Duration::from_secs(2));
                    let _ = child.try_wait();
                    return Err(err);
                }
                None => {}
            }
            if Instant::now() >= deadline {
                process::stop(pid, &config_path.to_string_lossy(), Duration::from_secs(2));
                let _ = child.try_wait();
                bail!("{role} did not come up within {}s:\n{}", START_TIMEOUT.as_secs(), process::log_tail(log, 15));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until a running process reports `digest` as applied.
    fn wait_applied(&self, what: &str, pid: u32, marker: &str, applied: impl Fn() -> Option<Result<()>>) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(result) = applied() {
                return result;
            }
            if !process::is_ours(pid, marker) {
                bail!("{what} (pid {pid}) exited while applying the new configuration");
            }
            if Instant::now() >= deadline {
                bail!("{what} (pid {pid}) did not apply the new configuration within {}s", START_TIMEOUT.as_secs());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Writes a process's configuration into `dir` and starts it there;
    /// `runs(pid, digest)` says when it serves that configuration.
    fn launch<T: Serialize>(
        &self,
        role: &str,
        dir: &Path,
        config: &T,
        progress: &dyn Progress,
        runs: impl Fn(u32, &str) -> Option<Result<()>>,
    ) -> Result<Value> {
        let config_path = dir.join("config.json");
        runtime::write_json(&config_path, config)?;
        let config_digest = runtime::digest(&std::fs::read(&config_path)?);
        // A process of ours already runs here when an earlier `lbctl` was
        // killed after starting it and before saving the state: adopt it
        // (it reloads the configuration just written) rather than start a
        // second one beside it.
        let marker = config_path.to_string_lossy().into_owned();
        let adopt = |pid: u32| -> Result<Value> {
            progress.report(&format!("adopting the running {role} (pid {pid})"));
            self.wait_applied(role, pid, &marker, || runs(pid, &config_digest))?;
            Ok(json!(ProcessData {
                pid,
                config_path: config_path.clone(),
                config_digest: config_digest.clone(),
                static_ip: None
            }))
        };
        if let Some(pid) = running_in(dir, role, &marker)? {
            return adopt(pid);
        }
        let log = dir.join(format!("{role}.log"));
        match self.start_process(role, &config_path, &log, progress, |pid| runs(pid, &config_digest)) {
            Ok(pid) => Ok(json!(ProcessData { pid, config_path, config_digest, static_ip: None })),
            // It found one already running (started by an apply killed
            // before this one looked): that one is adopted.
            Err(err) => match running_in(dir, role, &marker)? {
                Some(pid) => adopt(pid),
                None => Err(err),
            },
        }
    }

    /// Rewrites a running process's configuration and waits until it
    /// reports the new one as applied (it reloads on change: no restart).
    fn reconfigure<T: Serialize>(
        &self,
        role: &str,
        prior: &ResourceState,
        config: &T,
        runs: impl Fn(u32, &str) -> Option<Result<()>>,
    ) -> Result<Value> {
        let mut data: ProcessData = self.private(prior)?;
        runtime::write_json(&data.config_path, config)?;
        data.config_digest = runtime::digest(&std::fs::read(&data.config_path)?);
        let marker = data.config_path.to_string_lossy().into_owned();
        self.wait_applied(role, data.pid, &marker, || runs(data.pid, &data.config_digest))?;
        Ok(json!(data))
    }

    // Load balancers.

    fn proxy_config(&self, resource: &Resource) -> Result<ProxyConfig> {
        let lb = lb_settings(&resource.resolved)?;
        let name = &resource.address.name;
        let worker_threads = lb
            .worker_threads
            .map(|it| it as usize)
            .unwrap_or_else(|| std::thread::available_parallelism().map(|it| it.get()).unwrap_or(1));
        let target_groups = resource.dependencies.iter().map(|it| it.name.clone()).collect();
        let dns_name = dns_name(&self.options.stack, name, lb.kind);
        let static_ip = self.static_ip(name, &lb)?;
        let certificates = crate::certificates::listener_certificates(
            &self.layout,
            &self.options.working_dir,
            name,
            &dns_name,
            static_ip,
            &lb,
        )?;
        Ok(ProxyConfig {
            format: runtime::RUNTIME_FORMAT,
            kind: Some(lb.kind),
            stack: self.options.stack.clone(),
            name: name.clone(),
            dns_name,
            bind_ip: static_ip.unwrap_or(Ipv4Addr::LOCALHOST),
            worker_threads,
            idle_timeout_ms: lb.idle_timeout().get().as_millis() as u64,
            max_connections: lb.max_connections,
            listeners: lb.listeners.clone(),
            target_groups,
            layout: self.layout.clone(),
            certificates,
            access_log: lb.access_logs.unwrap_or(false).then(|| self.access_log_path(name)),
        })
    }

    /// Where a load balancer's access log goes: `.lbctl/logs/<lb>/access.log`.
    pub(crate) fn access_log_path(&self, name: &str) -> PathBuf {
        self.logs_dir().join(name).join("access.log")
    }

    /// `.lbctl/logs`: access logs and groups' event logs.
    pub(crate) fn logs_dir(&self) -> PathBuf {
        self.options.state_dir.join("logs")
    }

    /// The address of a network load balancer (`None` for an application
    /// one): its `static_ip`, or the one allocated to it, once, and kept.
    fn static_ip(&self, name: &str, lb: &LoadBalancer) -> Result<Option<Ipv4Addr>> {
        if lb.kind != LoadBalancerType::Network {
            return Ok(None);
        }
        let given = lb.static_ip.as_deref().map(str::parse).transpose().context("static_ip")?;
        self.addresses.assign(&self.options.state_dir, name, given, &[]).map(Some)
    }

    /// The address a network load balancer has or will have: `static_ip`,
    /// or the one allocated to it before; `None` when it gets a new one
    /// (nothing can be bound there yet). Changes nothing.
    pub(crate) fn known_static_ip(&self, name: &str, lb: &LoadBalancer) -> Result<Option<Ipv4Addr>> {
        match lb.static_ip.as_deref() {
            Some(ip) => Ok(ip.parse().ok()),
            None => self.addresses.lookup(&self.options.state_dir, name),
        }
    }

    /// Who else holds `ip`, the `static_ip` of load balancer `name`.
    pub(crate) fn static_ip_holder(&self, ip: Ipv4Addr, name: &str) -> Result<Option<crate::addresses::Owner>> {
        self.addresses.holder_other_than(ip, &self.options.state_dir, name)
    }

    /// Releases the stack's network load balancer addresses (after its destroy).
    pub fn release_addresses(&self) -> Result<Vec<Ipv4Addr>> {
        self.addresses.release_stack(&self.options.state_dir)
    }

    /// Whether a proxy's status shows it serving `digest` on every port.
    fn proxy_serves(&self, name: &str, pid: u32, digest: &str, ports: &[u16]) -> Option<Result<()>> {
        let status = self.proxy_status(name)?;
        if status.pid != pid || status.config_digest != digest {
            return None;
        }
        if !status.errors.is_empty() {
            return Some(Err(anyhow!("load balancer {name}: {}", status.errors.join("; "))));
        }
        ports.iter().all(|it| status.listening.contains(it)).then_some(Ok(()))
    }

    pub(crate) fn create_load_balancer(&self, resource: &Resource, progress: &dyn Progress) -> Result<Applied> {
        let config = self.proxy_config(resource)?;
        let ports: Vec<u16> = config.listeners.iter().map(|it| it.port).collect();
        let launched = self.launch("proxy", &self.layout.lb_dir(&config.name), &config, progress, |pid, digest| {
            self.proxy_serves(&config.name, pid, digest, &ports)
        })?;
        self.hosts().set(&config.dns_name, config.bind_ip);
        Ok(load_balancer_applied(launched, &config))
    }

    /// The hosts file entries of this stack.
    pub(crate) fn hosts(&self) -> crate::hosts::Hosts {
        crate::hosts::Hosts::new(crate::hosts::HOSTS, &self.options.state_dir)
    }

    pub(crate) fn update_load_balancer(
        &self,
        prior: &ResourceState,
        resource: &Resource,
        progress: &dyn Progress,
    ) -> Result<Applied> {
        let name = &resource.address.name;
        // A proxy of an older release does not read this release's files:
        // it is replaced (on purpose), not reconfigured.
        if self.proxy_status(name).is_some_and(|it| it.format < runtime::RUNTIME_FORMAT) {
            progress.report("the running proxy is an older lbctl's: replacing it");
            self.delete_load_balancer_process(prior)?;
            return self.create_load_balancer(resource, progress);
        }
        let config = self.proxy_config(resource)?;
        let ports: Vec<u16> = config.listeners.iter().map(|it| it.port).collect();
        progress.report("reloading the proxy's configuration");
        let reconfigured = self
            .reconfigure("proxy", prior, &config, |pid, digest| self.proxy_serves(&config.name, pid, digest, &ports))?;
        self.hosts().set(&config.dns_name, config.bind_ip);
        Ok(load_balancer_applied(reconfigured, &config))
    }

    /// Stops a load balancer's proxy, keeping its directory (certificates).
    fn delete_load_balancer_process(&self, prior: &ResourceState) -> Result<()> {
        let data: ProcessData = self.private(prior)?;
        let marker = data.config_path.to_string_lossy().into_owned();
        process::stop(data.pid, &marker, PROXY_STOP_GRACE);
        Ok(())
    }

    // Auto-scaling groups.

    fn supervisor_config(&self, resource: &Resource) -> Result<SupervisorConfig> {
        let settings: AutoscalingGroup = settings(&resource.resolved, ASG_DERIVED)?;
        let instance_port = resource.resolved["instance_port"].as_u64().context("instance_port")? as u16;
        let target_group_ports: BTreeMap<String, u16> =
            serde_json::from_value(resource.resolved["target_group_ports"].clone()).context("target_group_ports")?;
        Ok(SupervisorConfig {
            format: runtime::RUNTIME_FORMAT,
            stack: self.options.stack.clone(),
            name: resource.address.name.clone(),
            settings,
            instance_port,
            target_group_ports,
            lbctl_exe: self.options.lbctl_exe.clone(),
            working_dir: self.options.working_dir.clone(),
            layout: self.layout.clone(),
            events_log: Some(self.logs_dir().join(&resource.address.name).join("events.log")),
        })
    }

    fn supervisor_runs(&self, name: &str, pid: u32, digest: &str) -> Option<Result<()>> {
        let report = self.instances(name)?;
        (report.pid == pid && report.config_digest == digest).then_some(Ok(()))
    }

    pub(crate) fn create_autoscaling_group(&self, resource: &Resource, progress: &dyn Progress) -> Result<Applied> {
        let config = self.supervisor_config(resource)?;
        let private =
            self.launch("supervisor", &self.layout.asg_dir(&config.name), &config, progress, |pid, digest| {
                self.supervisor_runs(&config.name, pid, digest)
            })?;
        Ok(Applied { private, computed: Default::default() })
    }

    pub(crate) fn update_autoscaling_group(
        &self,
        prior: &ResourceState,
        resource: &Resource,
        progress: &dyn Progress,
    ) -> Result<Applied> {
        let name = &resource.address.name;
        // A supervisor of an older release does not read this release's
        // files: it is killed (its instances keep running) and a new one
        // adopts them.
        if self.instances(name).is_some_and(|it| it.format < runtime::RUNTIME_FORMAT) {
            progress.report("the running supervisor is an older lbctl's: replacing it, keeping its instances");
            let data: ProcessData = self.private(prior)?;
            if process::is_ours(data.pid, &data.config_path.to_string_lossy()) {
                process::signal(data.pid, libc::SIGKILL);
                process::wait_gone(data.pid, Duration::from_secs(5));
            }
            return self.create_autoscaling_group(resource, progress);
        }
        let config = self.supervisor_config(resource)?;
        progress.report("handing the new settings to the supervisor");
        let private = self
            .reconfigure("supervisor", prior, &config, |pid, digest| self.supervisor_runs(&config.name, pid, digest))?;
        Ok(Applied { private, computed: Default::default() })
    }

    /// Stops a supervisor (it drains and stops its instances), then makes
    /// sure none of the instances it listed survived.
    pub(crate) fn delete_autoscaling_group(&self, prior: &ResourceState, progress: &dyn Progress) -> Result<()> {
        let data: ProcessData = self.private(prior)?;
        let name = &prior.address.name;
        let marker = data.config_path.to_string_lossy().into_owned();
        let settings: Option<AutoscalingGroup> = settings(&prior.resolved, ASG_DERIVED).ok();
        let delay = settings
            .iter()
            .flat_map(|it| it.target_groups.iter())
            .filter_map(|tg| {
                runtime::read_json::<TargetGroupConfig>(&self.layout.tg_dir(tg).join("group.json")).ok().flatten()
            })
            .map(|it| it.settings.deregistration_delay.get())
            .max()
            .unwrap_or_default();
        let before = self.instances(name);
        if process::is_ours(data.pid, &marker) {
            progress.report("draining and stopping instances");
            process::stop(data.pid, &marker, delay + SUPERVISOR_STOP_MARGIN);
        }
        // Instances left by a supervisor that died or had to be killed.
        for instance in before.iter().flat_map(|it| it.instances.iter()) {
            if process::stop(instance.pid, &instance.id, Duration::from_secs(5)) {
                progress.report(&format!("killed instance {} (pid {})", instance.id, instance.pid));
            }
        }
        self.remove_registrations(&format!("asg-{name}"));
        remove_dir(&self.layout.asg_dir(name))
    }

    fn remove_registrations(&self, source: &str) {
        let Ok(groups) = std::fs::read_dir(self.layout.tg_root()) else { return };
        for group in groups.flatten() {
            let file = group.path().join("targets").join(format!("{source}.json"));
            std::fs::remove_file(file).ok();
        }
    }

    // Target groups and functions: files only.

    pub(crate) fn write_target_group(&self, resource: &Resource) -> Result<Applied> {
        let settings: TargetGroup = settings(&resource.resolved, &[])?;
        let name = &resource.address.name;
        let mut targets = Vec::new();
        for target in &settings.targets {
            // A function is registered by name, with no address.
            if let (TargetType::Lambda, Some(function)) = (settings.target_type, &target.function) {
                targets.push(RegisteredTarget { id: function.clone(), ip: Ipv4Addr::UNSPECIFIED, port: 0 });
                continue;
            }
            // An application load balancer listens on 127.0.0.1, at the group's port.
            if let (TargetType::Alb, Some(lb), Some(port)) =
                (settings.target_type, &target.load_balancer, target.port.or(settings.port))
            {
                targets.push(RegisteredTarget { id: lb.clone(), ip: Ipv4Addr::LOCALHOST, port });
                continue;
            }
            if let (Some(ip), Some(port)) = (&target.ip, target.port.or(settings.port)) {
                let ip: Ipv4Addr = ip.parse().with_context(|| format!("target address {ip}"))?;
                targets.push(RegisteredTarget { id: format!("{ip}:{port}"), ip, port });
            }
        }
        runtime::write_json(&self.layout.registration_file(name, "static"), &Registrations { targets })?;
        // Instances named by id: their supervisors register them.
        let by_id: BTreeSet<String> = settings.targets.iter().filter_map(|it| it.id.clone()).collect();
        let by_id_file = self.layout.by_id_file(name);
        if by_id.is_empty() {
            remove_file(&by_id_file)?;
        } else {
            let port = settings.port.unwrap_or(lbctl_spec::DEFAULT_INSTANCE_PORT);
            runtime::write_json(&by_id_file, &runtime::RegisteredById { instances: by_id, port })?;
        }
        let path = self.layout.tg_dir(name).join("group.json");
        let config = TargetGroupConfig { format: runtime::RUNTIME_FORMAT, name: name.clone(), settings };
        runtime::write_json(&path, &config)?;
        let digest = runtime::digest(&std::fs::read(&path)?);
        Ok(Applied { private: json!(FileData { path, digest }), computed: Default::default() })
    }

    /// Removes what the provider wrote for a target group; registrations of
    /// auto-scaling groups stay until their supervisors remove them.
    pub(crate) fn delete_target_group(&self, prior: &ResourceState) -> Result<()> {
        let dir = self.layout.tg_dir(&prior.address.name);
        std::fs::remove_file(dir.join("group.json")).ok();
        std::fs::remove_file(self.layout.by_id_file(&prior.address.name)).ok();
        std::fs::remove_file(self.layout.registration_file(&prior.address.name, "static")).ok();
        std::fs::remove_dir(dir.join("targets")).ok();
        std::fs::remove_dir(&dir).ok();
        Ok(())
    }

    pub(crate) fn write_function(&self, resource: &Resource) -> Result<Applied> {
        let function: Function = settings(&resource.resolved, &[])?;
        let name = &resource.address.name;
        let path = self.layout.function_file(name);
        let config = FunctionConfig {
            format: runtime::RUNTIME_FORMAT,
            name: name.clone(),
            settings: function,
            lbctl_exe: self.options.lbctl_exe.clone(),
            working_dir: self.options.working_dir.clone(),
        };
        runtime::write_json(&path, &config)?;
        let digest = runtime::digest(&std::fs::read(&path)?);
        Ok(Applied { private: json!(FileData { path, digest }), computed: Default::default() })
    }

    /// What a target group's or function's file holds now: its settings
    /// read back, field by field; `None` attributes for a file of an older
    /// release (read as applied).
    pub(crate) fn read_file_resource(&self, prior: &ResourceState) -> Result<Observed> {
        let data: FileData = self.private(prior)?;
        let bytes = match runtime::read_trusted(&data.path) {
            Ok(None) => return Ok(Observed::Missing { reason: format!("{} is missing", data.path.display()) }),
            Ok(Some(bytes)) => bytes,
            Err(err) => return Ok(Observed::Drifted { reason: format!("{err:#}") }),
        };
        let unreadable = |err: serde_json::Error| Observed::Drifted {
            reason: format!("{} cannot be read ({err}); apply writes it again", data.path.display()),
        };
        let observed = if prior.address.kind == Kind::TargetGroup {
            match serde_json::from_slice::<TargetGroupConfig>(&bytes) {
                Ok(config) => (config.format >= runtime::RUNTIME_FORMAT).then(|| json!(config.settings)),
                Err(err) => return Ok(unreadable(err)),
            }
        } else {
            match serde_json::from_slice::<FunctionConfig>(&bytes) {
                Ok(config) => (config.format >= runtime::RUNTIME_FORMAT).then(|| json!(config.settings)),
                Err(err) => return Ok(unreadable(err)),
            }
        };
        Ok(Observed::Present { attributes: observed })
    }

    /// What a proxy or supervisor runs now: its configuration file's
    /// settings read back over the state's (the fields the file holds),
    /// `None` attributes for a file of an older release.
    pub(crate) fn read_process_resource(&self, prior: &ResourceState, role: &str) -> Result<Observed> {
        let data: ProcessData = self.private(prior)?;
        if !process::is_ours(data.pid, &data.config_path.to_string_lossy()) {
            return Ok(Observed::Missing { reason: format!("{role} process {} is not running", data.pid) });
        }
        let bytes = match runtime::read_trusted(&data.config_path) {
            Ok(Some(bytes)) => bytes,
            Ok(None) => {
                let reason = format!("{} is missing; apply writes it again", data.config_path.display());
                return Ok(Observed::Drifted { reason });
            }
            Err(err) => return Ok(Observed::Drifted { reason: format!("{err:#}") }),
        };
        let unreadable = |err: serde_json::Error| Observed::Drifted {
            reason: format!("{} cannot be read ({err}); apply writes it again", data.config_path.display()),
        };
        let mut observed = prior.resolved.clone();
        if prior.address.kind == Kind::LoadBalancer {
            let config = match serde_json::from_slice::<ProxyConfig>(&bytes) {
                Ok(config) => config,
                Err(err) => return Ok(unreadable(err)),
            };
            if config.format < runtime::RUNTIME_FORMAT {
                return Ok(Observed::Present { attributes: None });
            }
            observed["listeners"] = json!(config.listeners);
            observed["idle_timeout"] = json!(lbctl_spec::Duration::from_millis(config.idle_timeout_ms));
            if let Some(kind) = config.kind {
                observed["type"] = json!(kind);
            }
        } else {
            let config = match serde_json::from_slice::<SupervisorConfig>(&bytes) {
                Ok(config) => config,
                Err(err) => return Ok(unreadable(err)),
            };
            if config.format < runtime::RUNTIME_FORMAT {
                return Ok(Observed::Present { attributes: None });
            }
            observed = json!(config.settings);
            observed["instance_port"] = json!(config.instance_port);
            observed["target_group_ports"] = json!(config.target_group_ports);
        }
        Ok(Observed::Present { attributes: Some(observed) })
    }

    /// An auto-scaling group read back; a rolled-back refresh runs the
    /// previous launch template, not the state's: the next plan shows the
    /// update again.
    pub(crate) fn read_autoscaling_group(&self, prior: &ResourceState) -> Result<Observed> {
        let observed = self.read_process_resource(prior, "supervisor")?;
        if let Observed::Present { .. } = observed {
            if let Some(refresh) = self.instances(&prior.address.name).and_then(|it| it.refresh) {
                if refresh.state == runtime::RefreshState::RolledBack {
                    let reason = format!(
                        "its instance refresh rolled back ({}); it runs the previous launch template",
                        refresh.reason
                    );
                    return Ok(Observed::Drifted { reason });
                }
            }
        }
        Ok(observed)
    }

    /// Stops a load balancer's proxy and removes its directory.
    pub(crate) fn delete_load_balancer(&self, prior: &ResourceState, progress: &dyn Progress) -> Result<()> {
        let data: ProcessData = self.private(prior)?;
        let marker = data.config_path.to_string_lossy().into_owned();
        if process::is_ours(data.pid, &marker) {
            progress.report("stopping the proxy");
            process::stop(data.pid, &marker, PROXY_STOP_GRACE);
        }
        self.hosts().remove(&self.dns_name_of(prior));
        remove_dir(&self.layout.lb_dir(&prior.address.name))
    }

    /// Removes a function's file.
    pub(crate) fn delete_function(&self, prior: &ResourceState) -> Result<()> {
        let data: FileData = self.private(prior)?;
        match data.path.parent() {
            Some(dir) => remove_dir(dir),
            None => Ok(()),
        }
    }

    /// Readiness of a load balancer: its proxy serves the configuration on
    /// every port, and routes to the targets its groups have.
    pub(crate) fn load_balancer_ready(&self, current: &ResourceState) -> Result<Readiness> {
        let data: ProcessData = self.private(current)?;
        let name = &current.address.name;
        if !process::is_ours(data.pid, &data.config_path.to_string_lossy()) {
            let log = self.layout.lb_dir(name).join("proxy.log");
            return Ok(Readiness::Failed(format!("proxy exited:\n{}", process::log_tail(&log, 10))));
        }
        let lb = lb_settings(&current.resolved)?;
        let ports: Vec<u16> = lb.listeners.iter().map(|it| it.port).collect();
        Ok(match self.proxy_serves(name, data.pid, &data.config_digest, &ports) {
            Some(Ok(())) => current
                .dependencies
                .iter()
                .filter(|it| it.kind == Kind::TargetGroup)
                .map(|group| self.target_group_ready(&group.name, Some(name)))
                .find(|it| *it != Readiness::Ready)
                .unwrap_or(Readiness::Ready),
            Some(Err(err)) => Readiness::Failed(format!("{err:#}")),
            None => Readiness::Waiting("proxy is not listening yet".to_string()),
        })
    }

    /// The outputs of a load balancer: DNS name, static IP, URLs, CA.
    pub(crate) fn load_balancer_outputs(&self, resource: &ResourceState, outputs: &mut BTreeMap<String, String>) {
        let Ok(lb) = lb_settings(&resource.resolved) else { return };
        let name = &resource.address.name;
        outputs.insert(format!("{name}_dns_name"), self.dns_name_of(resource));
        if let Some(ip) = self.static_ip_of(resource) {
            outputs.insert(format!("{name}_static_ip"), ip.to_string());
        }
        for (idx, (listener, url)) in lb.listeners.iter().zip(self.listener_urls(resource, &lb)).enumerate() {
            // A TCP and a UDP listener may share a port.
            let udp = if listener.protocol == lbctl_spec::ListenerProtocol::Udp { "_udp" } else { "" };
            let key = if idx == 0 { format!("{name}_url") } else { format!("{name}_url_{}{udp}", listener.port) };
            outputs.insert(key, url);
        }
        if let Some(ca) = crate::certificates::self_signed_ca(&self.layout, name, &lb) {
            outputs.insert(format!("{name}_ca_cert"), ca.display().to_string());
        }
    }

    /// A load balancer's DNS name, as computed when it was made.
    pub(crate) fn dns_name_of(&self, resource: &ResourceState) -> String {
        match resource.computed.get("dns_name").and_then(Value::as_str) {
            Some(name) => name.to_string(),
            None => {
                let kind = lb_settings(&resource.resolved).map(|it| it.kind).unwrap_or(LoadBalancerType::Application);
                dns_name(&self.options.stack, &resource.address.name, kind)
            }
        }
    }

    /// A network load balancer's address, as computed (or recorded by an
    /// older release) when it was made.
    pub(crate) fn static_ip_of(&self, resource: &ResourceState) -> Option<Ipv4Addr> {
        let computed = resource.computed.get("static_ip").and_then(|it| serde_json::from_value(it.clone()).ok());
        computed.or_else(|| self.private::<ProcessData>(resource).ok().and_then(|it| it.static_ip))
    }

    /// Readiness of an auto-scaling group: `desired` instances in service.
    /// An `ELB` group's count only once healthy in every load balancer that
    /// routes to its target groups; an `EC2` group's once in service and
    /// judged by those load balancers (healthy or not: EC2 health keeps an
    /// instance the load balancers find unhealthy). With
    /// `wait_for_elb_capacity`, that many must also be healthy in them
    /// (Terraform's setting).
    pub(crate) fn autoscaling_group_ready(&self, current: &ResourceState) -> Result<Readiness> {
        let data: ProcessData = self.private(current)?;
        let name = &current.address.name;
        if !process::is_ours(data.pid, &data.config_path.to_string_lossy()) {
            let log = self.layout.asg_dir(name).join("supervisor.log");
            return Ok(Readiness::Failed(format!("supervisor exited:\n{}", process::log_tail(&log, 10))));
        }
        let settings: AutoscalingGroup = settings(&current.resolved, ASG_DERIVED)?;
        let Some(report) = self.instances(name).filter(|it| it.config_digest == data.config_digest) else {
            return Ok(Readiness::Waiting("supervisor has not reported yet".to_string()));
        };
        // A launch template change is done when its instance refresh is.
        if let Some(refresh) = &report.refresh {
            match refresh.state {
                runtime::RefreshState::RolledBack => {
                    return Ok(Readiness::Failed(format!("instance refresh rolled back: {}", refresh.reason)));
                }
                runtime::RefreshState::InProgress => {
                    let latest = report.events.last().map(|it| format!("; latest event: {it}")).unwrap_or_default();
                    return Ok(Readiness::Waiting(format!("instance refresh {}%{latest}", refresh.percent)));
                }
                runtime::RefreshState::Successful => {}
            }
        }
        // Instances that die as they start will not get better by waiting.
        if let Some(crash) = &report.crash_loop {
            return Ok(Readiness::Failed(format!(
                "its instances keep exiting as they start ({} in a row); the last one: {}{}",
                crash.restarts,
                crash.last_exit,
                if crash.last_log.is_empty() { String::new() } else { format!("; its log ends:\n{}", crash.last_log) }
            )));
        }
        let statuses = self.all_proxy_statuses();
        // A scaling policy chooses the desired capacity: it is not drift, and
        // the group is ready with as many instances as the policy wants.
        let desired = if report.desired_set_by.is_some() { report.desired } else { settings.desired() } as usize;
        let ec2 = settings.health_check_type == lbctl_spec::HealthCheckType::Ec2;
        let elb_capacity = settings.wait_for_elb_capacity.unwrap_or(0) as usize;
        let (mut in_service, mut healthy) = (0, 0);
        let mut waiting = Vec::new();
        let live = report
            .instances
            .iter()
            .filter(|it| matches!(it.lifecycle, runtime::Lifecycle::Pending | runtime::Lifecycle::InService));
        for instance in live {
            if !process::is_ours(instance.pid, &instance.id) {
                waiting.push(format!("{}: process {} exited", instance.id, instance.pid));
                continue;
            }
            let counted = ec2 && instance.lifecycle == runtime::Lifecycle::InService;
            match crate::health::instance_target_health(&statuses, &settings.target_groups, &instance.id) {
                TargetVerdict::Healthy if ec2 && !counted => {
                    waiting.push(format!("{}: not in service yet", instance.id));
                    healthy += 1;
                }
                TargetVerdict::Healthy => {
                    in_service += 1;
                    healthy += 1;
                }
                TargetVerdict::Unhealthy(_) if counted => in_service += 1,
                TargetVerdict::Unhealthy(reason) | TargetVerdict::Pending(reason) => {
                    waiting.push(format!("{}: {reason}", instance.id));
                }
            }
        }
        if in_service >= desired && healthy >= elb_capacity {
            return Ok(Readiness::Ready);
        }
        let detail = match waiting.as_slice() {
            [] => String::new(),
            [one] => format!(" ({one})"),
            [first, rest @ ..] => format!(" ({first}; and {} more)", rest.len()),
        };
        // The supervisor's latest event says why when instances keep dying.
        let latest = report.events.last().map(|it| format!("; latest event: {it}")).unwrap_or_default();
        let progress = if in_service < desired {
            let what = if ec2 { "in service" } else { "healthy" };
            format!("{in_service} of {desired} instances {what}")
        } else {
            format!("{healthy} of {elb_capacity} instances healthy in the load balancers (wait_for_elb_capacity)")
        };
        Ok(Readiness::Waiting(format!("{progress}{detail}{latest}")))
    }

    /// Readiness of a target group: every running load balancer that routes
    /// to it (or only `only_lb`) routes to exactly its registered targets, so
    /// that when apply returns a deregistered target gets no new request or
    /// connection, and a registered one is being checked.
    pub(crate) fn target_group_ready(&self, name: &str, only_lb: Option<&str>) -> Readiness {
        let registered: BTreeSet<String> =
            runtime::registered_targets(&self.layout, name).into_iter().map(|it| it.id).collect();
        // Instances named by id are registered by their supervisors.
        if let Ok(Some(by_id)) = runtime::read_json::<runtime::RegisteredById>(&self.layout.by_id_file(name)) {
            let live = self.live_instances();
            let waiting: Vec<&String> = by_id
                .instances
                .iter()
                .filter(|id| !registered.contains(*id) && live.iter().any(|(it, _)| it == *id))
                .collect();
            if let Some(id) = waiting.first() {
                return Readiness::Waiting(format!("instance {id} is not registered yet"));
            }
        }
        let statuses = self.all_proxy_statuses();
        for (lb, status) in statuses.iter().filter(|(lb, _)| only_lb.is_none_or(|it| it == lb)) {
            let Some(targets) = status.target_groups.get(name) else { continue };
            let routed: BTreeSet<String> = targets
                .iter()
                .filter(|it| it.state != runtime::HealthState::Draining)
                .map(|it| it.id.clone())
                .collect();
            if routed != registered {
                return Readiness::Waiting(format!("load balancer {lb} has not picked up the registered targets yet"));
            }
        }
        Readiness::Ready
    }

    pub(crate) fn all_proxy_statuses(&self) -> Vec<(String, ProxyStatus)> {
        runtime::running_proxy_statuses(&self.layout)
    }
}

/// The process of `role` running in `dir`: the one its `pid` file names
/// (written by the process itself, under a lock it holds while it runs; see
/// `runtime::PidFile`), when it is alive and ours (`marker` on its command
/// line). A file that holds no process id is an error naming it.
fn running_in(dir: &Path, role: &str, marker: &str) -> Result<Option<u32>> {
    let pid_file = dir.join("pid");
    let Some(bytes) = runtime::read_trusted(&pid_file)? else { return Ok(None) };
    let text = String::from_utf8_lossy(&bytes);
    if text.trim().is_empty() {
        // Created, and not written yet or never: nothing to adopt.
        return Ok(None);
    }
    let pid = text.trim().parse::<u32>().map_err(|_| {
        anyhow!(
            "{} does not hold a process id; check whether a {role} of this resource still runs, stop it, and remove the file",
            pid_file.display()
        )
    })?;
    Ok(Some(pid).filter(|pid| process::is_ours(*pid, marker)))
}

/// What making or updating a load balancer produced: the proxy's data, and
/// the computed DNS name and (network load balancers) address.
fn load_balancer_applied(mut private: Value, config: &ProxyConfig) -> Applied {
    let mut computed = lbctl_plan::Computed::new();
    computed.insert("dns_name".to_string(), json!(config.dns_name));
    if config.kind == Some(LoadBalancerType::Network) {
        private["static_ip"] = json!(config.bind_ip);
        computed.insert("static_ip".to_string(), json!(config.bind_ip));
    }
    Applied { private, computed }
}

fn remove_file(file: &Path) -> Result<()> {
    match std::fs::remove_file(file) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(err).with_context(|| format!("removing {}", file.display())),
    }
}

fn remove_dir(dir: &Path) -> Result<()> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(err).with_context(|| format!("removing {}", dir.display())),
    }
}

impl LocalProvider {
    /// Process id of a process-backed resource and whether it runs.
    pub(crate) fn process_of(&self, resource: &ResourceState) -> Result<(u32, bool)> {
        let data: ProcessData = self.private(resource)?;
        Ok((data.pid, process::is_ours(data.pid, &data.config_path.to_string_lossy())))
    }

    /// The live instances (pending or in service, process running) of every
    /// auto-scaling group of the stack, as (id, group).
    pub(crate) fn live_instances(&self) -> Vec<(String, String)> {
        let Ok(groups) = std::fs::read_dir(self.layout.root.join("asg")) else { return Vec::new() };
        let mut live = Vec::new();
        for entry in groups.flatten() {
            let group = entry.file_name().to_string_lossy().into_owned();
            for instance in self.instances(&group).into_iter().flat_map(|it| it.instances) {
                let running = matches!(instance.lifecycle, runtime::Lifecycle::Pending | runtime::Lifecycle::InService);
                if running && process::is_ours(instance.pid, &instance.id) {
                    live.push((instance.id, group.clone()));
                }
            }
        }
        live.sort();
        live
    }

    /// The instances report of an auto-scaling group.
    pub(crate) fn instances_report(&self, name: &str) -> Option<InstancesReport> {
        self.instances(name)
    }

    /// The URL of each listener of a load balancer: its DNS name, or a
    /// network load balancer's static IP (`*.localhost` resolves to
    /// 127.0.0.1 only).
    /// A load balancer's listeners' URLs: by its DNS name where the system
    /// resolver gives its address (the hosts file has it), else by address:
    /// a name that does not resolve is never printed as a URL.
    pub(crate) fn listener_urls(&self, resource: &ResourceState, lb: &LoadBalancer) -> Vec<String> {
        let dns = self.dns_name_of(resource);
        let address = self.static_ip_of(resource).unwrap_or(Ipv4Addr::LOCALHOST);
        let host = if crate::hosts::resolves_to(&dns, address) { dns } else { address.to_string() };
        lb.listeners
            .iter()
            .map(|listener| {
                let scheme = lbctl_spec::wire_name(&listener.protocol).to_lowercase();
                let slash = if matches!(scheme.as_str(), "http" | "https") { "/" } else { "" };
                format!("{scheme}://{host}:{}{slash}", listener.port)
            })
            .collect()
    }

    /// The stack's state directory.
    pub(crate) fn state_dir(&self) -> &Path {
        &self.options.state_dir
    }

    /// The spec's directory, which relative paths in the spec start from.
    pub(crate) fn working_dir(&self) -> &Path {
        &self.options.working_dir
    }
}
