//! lbctl's runtime contract: the files through which the provider, the
//! proxies and the supervisors talk, how their processes are started and
//! found (`process`), and certificate files (`certificates`).
//!
//! **Architecture invariant:** data, files and processes only: no tokio,
//! no hyper, no TLS library. The provider (`lbctl-local`) and the processes
//! (`lbctl-dataplane`, `lbctl-supervisor`) depend on it; it depends on
//! neither.
//!
//! Every process of a stack communicates through small JSON files under the
//! stack's runtime directory (`.lbctl/run/` beside the spec), each written
//! atomically (temp file + rename) by exactly one writer and polled by its
//! readers. Files survive any process dying, so every party can restart and
//! pick up where the others are; the data plane needs no `lbctl` running.
//!
//! ```text
//! run/lb/<name>/config.json        ProxyConfig        provider -> proxy
//! run/lb/<name>/status.json        ProxyStatus        proxy -> provider, supervisors, `lbctl status`
//! run/lb/<name>/pid, proxy.log
//! run/lb/<name>/tls/*.pem          self_signed cert   provider -> proxy, users (`ca.pem` for `curl --cacert`)
//! run/tg/<name>/group.json         TargetGroupConfig  provider -> proxies
//! run/tg/<name>/targets/<src>.json Registrations      provider ("static") or supervisor ("asg-<name>") -> proxies
//! run/fn/<name>/function.json      FunctionConfig     provider -> proxies (read on every invocation)
//! run/asg/<name>/config.json       SupervisorConfig   provider -> supervisor
//! run/asg/<name>/instances.json    InstancesReport    supervisor -> provider, `lbctl status`, its own restart
//! run/asg/<name>/pid, supervisor.log, instances/<id>.log
//! ```

#![deny(missing_docs)]

pub mod certificates;
pub mod metrics;
pub mod process;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Where a stack's runtime files live.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    /// `.lbctl/run` beside the spec.
    pub root: PathBuf,
}

impl Layout {
    /// The layout under `root`.
    pub fn new(root: impl Into<PathBuf>) -> Layout {
        Layout { root: root.into() }
    }
    /// Directory of a load balancer's proxy.
    pub fn lb_dir(&self, name: &str) -> PathBuf {
        self.root.join("lb").join(name)
    }
    /// Root of all target group registries.
    pub fn tg_root(&self) -> PathBuf {
        self.root.join("tg")
    }
    /// Directory of one target group's registry.
    pub fn tg_dir(&self, name: &str) -> PathBuf {
        self.tg_root().join(name)
    }
    /// Registration file of one source in a target group.
    pub fn registration_file(&self, group: &str, source: &str) -> PathBuf {
        self.tg_dir(group).join("targets").join(format!("{source}.json"))
    }
    /// Directory of an auto-scaling group's supervisor.
    pub fn asg_dir(&self, name: &str) -> PathBuf {
        self.root.join("asg").join(name)
    }
    /// The file describing a Lambda-style function.
    pub fn function_file(&self, name: &str) -> PathBuf {
        self.root.join("fn").join(name).join("function.json")
    }
}

/// The format of the runtime files this release writes. Files of older
/// releases lack the `format` field (format 1); readers take them on
/// purpose (`TargetGroupConfig::upgraded`), and a process of an older
/// release, which reports no format, is replaced rather than reconfigured.
pub const RUNTIME_FORMAT: u32 = 2;

fn format_1() -> u32 {
    1
}

/// What a proxy process serves; written by the provider, reloaded by the
/// proxy whenever the file changes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProxyConfig {
    /// The runtime files' format it was written in.
    #[serde(default = "format_1")]
    pub format: u32,
    /// Application or network (absent from format 1 files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<lbctl_spec::LoadBalancerType>,
    /// Stack name.
    pub stack: String,
    /// Load balancer name.
    pub name: String,
    /// `<name>.<stack>.elb.localhost` (`.elb.internal`: a network load balancer).
    pub dns_name: String,
    /// Address every listener binds (127.0.0.1 for application load balancers).
    pub bind_ip: Ipv4Addr,
    /// Tokio worker threads.
    pub worker_threads: usize,
    /// Idle timeout of client connections, in milliseconds.
    pub idle_timeout_ms: u64,
    /// The most client connections and UDP flows open at once; `None`: from
    /// the proxy's file descriptor limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    /// Listeners as the spec gives them.
    pub listeners: Vec<lbctl_spec::Listener>,
    /// Target groups the listeners forward to (their registries are under `Layout::tg_dir`).
    pub target_groups: Vec<String>,
    /// The runtime layout, to find target group registries.
    pub layout: Layout,
    /// Certificate and key files of the HTTPS listeners, by port, with
    /// absolute paths (the provider resolves `self_signed` and relative
    /// paths). Absent from configurations without HTTPS listeners.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub certificates: BTreeMap<u16, CertificateFiles>,
    /// The access log to write (`access_logs: true`), AWS's format.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_log: Option<PathBuf>,
}

/// A PEM certificate chain and private key on disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateFiles {
    /// Certificate chain (PEM), leaf first.
    pub cert: PathBuf,
    /// Private key (PEM).
    pub key: PathBuf,
}

/// A target group's settings; written by the provider.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetGroupConfig {
    /// The runtime files' format it was written in.
    #[serde(default = "format_1")]
    pub format: u32,
    /// Target group name.
    pub name: String,
    /// Effective settings (health check, algorithm, delays).
    pub settings: lbctl_spec::settings::TargetGroup,
}

impl TargetGroupConfig {
    /// The settings as this release reads them: format 1 files wrote a
    /// `GRPC` group's AWS defaults as the HTTP ones (matcher `200`, path
    /// `/`), meaning `12` and `/AWS.ALB/healthcheck`.
    pub fn upgraded(mut self) -> TargetGroupConfig {
        if self.format < 2 && self.settings.protocol_version == Some(lbctl_spec::ProtocolVersion::Grpc) {
            let check = &mut self.settings.health_check;
            if check.matcher.as_deref() == Some("200") {
                check.matcher = Some("12".to_string());
            }
            if check.path.as_deref() == Some("/") {
                check.path = Some(lbctl_spec::settings::GRPC_HEALTH_CHECK_PATH.to_string());
            }
        }
        self.format = RUNTIME_FORMAT;
        self
    }
}

/// A Lambda-style function as the proxies run it; written by the provider
/// and read by a proxy on every invocation, so a changed function applies to
/// the next request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionConfig {
    /// The runtime files' format it was written in.
    #[serde(default = "format_1")]
    pub format: u32,
    /// Function name.
    pub name: String,
    /// Effective settings (command, timeout, env).
    pub settings: lbctl_spec::settings::Function,
    /// The `lbctl` binary that a first word `lbctl` stands for.
    pub lbctl_exe: PathBuf,
    /// Working directory of the command (the spec's directory).
    pub working_dir: PathBuf,
}

/// One registered target. A Lambda function registered in a `lambda` target
/// group has its name as id, address 0.0.0.0 and port 0.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RegisteredTarget {
    /// Instance id (`i-...`) or `ip:port` for fixed targets.
    pub id: String,
    /// Address.
    pub ip: Ipv4Addr,
    /// Traffic port.
    pub port: u16,
}

/// The contents of one `targets/<source>.json` file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registrations {
    /// Registered targets of this source.
    pub targets: Vec<RegisteredTarget>,
}

/// Instances a target group names by id (`targets: [{ id: i-... }]` on an
/// `instance` group): `tg/<name>/by_id.json`, written by the provider.
/// The supervisor running each instance registers it there, and
/// deregisters it when it terminates, as on AWS.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisteredById {
    /// Instance ids.
    pub instances: std::collections::BTreeSet<String>,
    /// The group's traffic port.
    pub port: u16,
}

impl Layout {
    /// The instances a target group names by id.
    pub fn by_id_file(&self, group: &str) -> PathBuf {
        self.tg_dir(group).join("by_id.json")
    }
}

/// AWS target health states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthState {
    /// Registered, not yet checked enough.
    Initial,
    /// Passing health checks.
    Healthy,
    /// Failing health checks.
    Unhealthy,
    /// Deregistered, finishing in-flight requests.
    Draining,
    /// No load balancer routes to the group.
    Unused,
}

impl HealthState {
    /// The state as the status file and `lbctl status` spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            HealthState::Initial => "initial",
            HealthState::Healthy => "healthy",
            HealthState::Unhealthy => "unhealthy",
            HealthState::Draining => "draining",
            HealthState::Unused => "unused",
        }
    }
}

/// One target as a proxy sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetHealth {
    /// Target id as registered.
    pub id: String,
    /// Address.
    pub ip: Ipv4Addr,
    /// Port.
    pub port: u16,
    /// State.
    pub state: HealthState,
    /// AWS-style reason code and detail, e.g.
    /// `Target.ResponseCodeMismatch: health check returned 500`.
    pub reason: String,
    /// Client requests (connections, for a network load balancer)
    /// forwarded to it so far.
    pub requests: u64,
    /// Health checks of other load balancers forwarded to it so far
    /// (through this one): not client requests.
    #[serde(default)]
    pub health_check_requests: u64,
}

/// What a proxy reports; rewritten by the proxy on every change and at least
/// every second.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxyStatus {
    /// The runtime files' format the proxy speaks (1: an older release's).
    #[serde(default = "format_1")]
    pub format: u32,
    /// The proxy's process id.
    pub pid: u32,
    /// `config_digest` of the configuration file it serves.
    pub config_digest: String,
    /// Ports it listens on.
    pub listening: Vec<u16>,
    /// Problems applying the configuration (a port it could not bind).
    pub errors: Vec<String>,
    /// Target health by target group name.
    pub target_groups: BTreeMap<String, Vec<TargetHealth>>,
    /// Client connections and UDP flows open now.
    #[serde(default)]
    pub connections: u64,
    /// Client connections and UDP flows refused at the limit since the proxy started.
    #[serde(default)]
    pub rejected_connections: u64,
    /// Where its Prometheus metrics are served (`http://127.0.0.1:PORT/metrics`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_url: Option<String>,
    /// When this was written, in Unix milliseconds.
    pub updated_ms: u64,
}

/// What an auto-scaling group supervisor runs; written by the provider,
/// reloaded by the supervisor whenever the file changes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SupervisorConfig {
    /// The runtime files' format it was written in.
    #[serde(default = "format_1")]
    pub format: u32,
    /// Stack name.
    pub stack: String,
    /// Group name.
    pub name: String,
    /// Settings as the spec gives them.
    pub settings: lbctl_spec::settings::AutoscalingGroup,
    /// Port every instance listens on.
    pub instance_port: u16,
    /// Traffic port per target group the instances register in.
    pub target_group_ports: BTreeMap<String, u16>,
    /// The `lbctl` binary that a first word `lbctl` stands for.
    pub lbctl_exe: PathBuf,
    /// Working directory of instance commands (the spec's directory).
    pub working_dir: PathBuf,
    /// The runtime layout.
    pub layout: Layout,
    /// Where the group's events are appended, one line each
    /// (`.lbctl/logs/<asg>/events.log`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events_log: Option<PathBuf>,
}

/// EC2-style lifecycle of an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Lifecycle {
    /// Started, not yet healthy.
    Pending,
    /// Healthy and serving.
    InService,
    /// Deregistered, finishing requests.
    Draining,
    /// Being stopped.
    Terminating,
}

/// One instance as its supervisor sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceRecord {
    /// `i-` and 17 hex digits.
    pub id: String,
    /// Process id.
    pub pid: u32,
    /// Its private loopback address.
    pub ip: Ipv4Addr,
    /// Its port.
    pub port: u16,
    /// Lifecycle state.
    pub lifecycle: Lifecycle,
    /// `healthy` or `unhealthy`, from the group's health check type.
    pub health: String,
    /// Why, e.g. `EC2: process running` or `ELB: public reports unhealthy (...)`.
    pub health_reason: String,
    /// Launch time, Unix milliseconds.
    pub launched_ms: u64,
    /// Digest of the launch template it was started from.
    pub template_digest: String,
    /// Its log file.
    pub log: PathBuf,
}

/// What a supervisor reports.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstancesReport {
    /// The runtime files' format the supervisor speaks (1: an older release's).
    #[serde(default = "format_1")]
    pub format: u32,
    /// The supervisor's process id.
    pub pid: u32,
    /// `config_digest` of the configuration it runs.
    pub config_digest: String,
    /// Capacity it is converging to.
    pub desired: u32,
    /// What sets `desired` when a scaling policy does, e.g. `target tracking
    /// on request_count_per_target`; `None`: the configuration's
    /// `desired_capacity`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_set_by: Option<String>,
    /// Its instances.
    pub instances: Vec<InstanceRecord>,
    /// Recent events, newest last (launches, replacements and why).
    pub events: Vec<String>,
    /// When this was written, in Unix milliseconds.
    pub updated_ms: u64,
    /// The instance refresh in progress or the outcome of the last one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh: Option<RefreshStatus>,
    /// Problems now (a configuration file it refuses to use).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
    /// Instances that keep exiting before they get in service, when
    /// `CRASH_LOOP_AFTER` have in a row.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crash_loop: Option<CrashLoop>,
    /// Where its Prometheus metrics are served (`http://127.0.0.1:PORT/metrics`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_url: Option<String>,
}

/// Instances exiting while they start, one after the other.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CrashLoop {
    /// Instances that exited (or could not be started) before getting in service, in a row.
    pub restarts: u32,
    /// How the last one ended (`process exited with status 127`).
    pub last_exit: String,
    /// The last lines of its log.
    pub last_log: String,
}

/// Instances exiting in a row before getting in service that make a crash
/// loop: `apply` stops waiting and `lbctl status` shows it.
pub const CRASH_LOOP_AFTER: u32 = 3;

/// Where an instance refresh (the rolling replacement a launch template
/// change starts) stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RefreshState {
    /// Replacing instances batch by batch.
    InProgress,
    /// Every instance runs the new launch template.
    Successful,
    /// New instances could not get in service: the previous template is back.
    RolledBack,
}

/// Progress and outcome of an instance refresh.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefreshStatus {
    /// Where it stands.
    pub state: RefreshState,
    /// Share of desired capacity on the new launch template, 0 to 100.
    pub percent: u32,
    /// Why it rolled back (empty otherwise).
    #[serde(default)]
    pub reason: String,
}

/// The status of every load balancer of a stack whose proxy is running, by
/// load balancer name, sorted. A status counts only when its `pid` is a
/// live proxy of that load balancer (its configuration path on its command
/// line), so a stale file whose pid was reused by another process does not.
pub fn running_proxy_statuses(layout: &Layout) -> Vec<(String, ProxyStatus)> {
    let Ok(entries) = std::fs::read_dir(layout.root.join("lb")) else { return Vec::new() };
    let mut statuses = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Ok(Some(status)) = read_json::<ProxyStatus>(&entry.path().join("status.json")) {
            let marker = entry.path().join("config.json");
            if process::is_ours(status.pid, &marker.to_string_lossy()) {
                statuses.push((name, status));
            }
        }
    }
    statuses.sort_by(|a, b| a.0.cmp(&b.0));
    statuses
}

/// Every target registered in target group `group` by any source, in id
/// order; a registration file that cannot be read or parsed registers nothing.
pub fn registered_targets(layout: &Layout, group: &str) -> Vec<RegisteredTarget> {
    let Ok(entries) = std::fs::read_dir(layout.tg_dir(group).join("targets")) else { return Vec::new() };
    let mut targets = std::collections::BTreeSet::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.ends_with(".json") || name.starts_with('.') {
            continue;
        }
        if let Ok(Some(registrations)) = read_json::<Registrations>(&entry.path()) {
            targets.extend(registrations.targets);
        }
    }
    let mut targets: Vec<RegisteredTarget> = targets.into_iter().collect();
    targets.sort_by(|a, b| a.id.cmp(&b.id));
    targets
}

/// The time now as log lines start with it (RFC 3339, UTC, milliseconds).
pub fn log_time() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// The `pid` file of a proxy or supervisor, written by the process itself
/// and locked (`flock`) for as long as it runs: a second process started
/// for the same directory (by an apply that could not know of the first)
/// fails at once, naming the first, which the provider then adopts.
#[derive(Debug)]
pub struct PidFile {
    /// Kept open: the lock lives as long as this handle.
    _file: std::fs::File,
}

impl PidFile {
    /// Takes `dir/pid` for this process, as `role`.
    pub fn hold(dir: &Path, role: &str) -> Result<PidFile> {
        use std::io::{Read, Seek, Write};
        let path = dir.join("pid");
        let mut file = lbctl_files::open_private_rw(&path)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                file.read_to_string(&mut holder).ok();
                anyhow::bail!("another {role} (pid {}) already runs for {}", holder.trim(), dir.display());
            }
            Err(std::fs::TryLockError::Error(err)) => {
                return Err(err).with_context(|| format!("locking {}", path.display()));
            }
        }
        file.set_len(0).with_context(|| format!("writing {}", path.display()))?;
        file.rewind().with_context(|| format!("writing {}", path.display()))?;
        writeln!(file, "{}", std::process::id()).with_context(|| format!("writing {}", path.display()))?;
        file.sync_all().with_context(|| format!("writing {}", path.display()))?;
        Ok(PidFile { _file: file })
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|it| it.as_millis() as u64).unwrap_or(0)
}

/// A short stable digest of a file's bytes (FNV-1a, hex), used to tell which
/// configuration a process has loaded. Not a security measure.
pub fn digest(bytes: &[u8]) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016x}")
}

/// Writes `value` as JSON to `path` atomically: a reader sees the old file or
/// the new one, never a torn one.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(value).context("serializing runtime file")?;
    write_atomic(path, &bytes)
}

/// Writes bytes atomically and privately (`0600`, through an exclusively
/// created temporary file renamed over `path`; see `lbctl_files`).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    lbctl_files::write_private(path, bytes)
}

/// Reads a runtime file, trusting it only when it is this user's and
/// writable by nobody else (`lbctl_files::read_trusted`); `Ok(None)` when
/// it does not exist.
pub fn read_trusted(path: &Path) -> Result<Option<Vec<u8>>> {
    lbctl_files::read_trusted(path)
}

/// Reads a JSON runtime file (trusted as `read_trusted` says); `Ok(None)`
/// when it does not exist.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    match read_trusted(path)? {
        Some(bytes) => {
            let value = serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", path.display()))?;
            Ok(Some(value))
        }
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registered_targets_are_the_union_of_sources() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        let target =
            |id: &str, last: u8| RegisteredTarget { id: id.into(), ip: Ipv4Addr::new(127, 0, 0, last), port: 80 };
        assert_eq!(registered_targets(&layout, "web"), vec![], "no registry yet");
        write_json(&layout.registration_file("web", "static"), &Registrations { targets: vec![target("b", 2)] })
            .unwrap();
        let asg = Registrations { targets: vec![target("a", 3), target("b", 2)] };
        write_json(&layout.registration_file("web", "asg-web"), &asg).unwrap();
        std::fs::write(layout.registration_file("web", "broken"), b"{").unwrap();
        let ids: Vec<String> = registered_targets(&layout, "web").into_iter().map(|it| it.id).collect();
        assert_eq!(ids, ["a", "b"]);
    }
}
