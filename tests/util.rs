//! Test support: a stack in a temporary directory, the real binary, curl,
//! and waiting on conditions with a deadline (never fixed sleeps).

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The proxy's header read timeout (`head_guard::HEADER_READ_TIMEOUT`).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The binary under test.
pub fn lbctl_exe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_lbctl"))
}

/// Starts `lbctl worker` with instance id `id` on 127.0.0.1:`port`; the
/// caller owns the child and must kill it (drop guards do).
pub fn spawn_worker(id: &str, port: u16) -> std::process::Child {
    Command::new(lbctl_exe())
        .args(["worker", "--listen", &format!("127.0.0.1:{port}"), "--id", id])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// The `XDG_RUNTIME_DIR` of every `lbctl` the tests run: where the
/// machine-wide address table lives (`lbctl/addresses.json` in it). The
/// test run's own, under the target directory, so that the tests neither
/// read nor fill the user's table.
pub fn runtime_dir() -> PathBuf {
    use std::os::unix::fs::DirBuilderExt;
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("xdg-runtime");
    let _ = std::fs::DirBuilder::new().mode(0o700).recursive(true).create(&dir);
    dir
}

/// A port free on 127.0.0.1 (TCP and UDP) right now, outside the kernel's
/// ephemeral range.
///
/// A port is never handed out twice in one test run, so a port a test
/// frees (a killed proxy) cannot be taken by another test meanwhile.
pub fn free_port() -> u16 {
    static NEXT: std::sync::Mutex<Option<u16>> = std::sync::Mutex::new(None);
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    // Outside the kernel's ephemeral range: a port from it (what binding
    // port 0 gives) can become the source port of any outgoing connection
    // before the test's load balancer listens on it, which then fails with
    // "address in use". Below the range when there is room, else above it.
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap_or_default();
    let mut bounds = range.split_whitespace().map(|it| it.parse::<u32>().ok());
    let (first, last) = match (bounds.next().flatten(), bounds.next().flatten()) {
        (Some(first), Some(last)) => (first, last),
        _ => (32768, 60999),
    };
    const LOW: u32 = 10_000;
    const ROOM: u32 = 1_000;
    let window = if first >= LOW + ROOM {
        Some((LOW, first))
    } else if last + 1 + ROOM <= 65_536 {
        Some((last.max(LOW - 1) + 1, 65_536))
    } else {
        None
    };
    let is_free = |port: u16| {
        TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
            && std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
    };
    let Some((low, high)) = window else {
        // No room outside the range: the kernel's choice, never the same twice.
        let mut given = GIVEN.lock().unwrap();
        for _ in 0..1_000 {
            let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap().local_addr().unwrap().port();
            if !given.contains(&port) && is_free(port) {
                given.push(port);
                return port;
            }
        }
        panic!("no free port on loopback that this run has not handed out already");
    };
    let span = high - low;
    let mut next = NEXT.lock().unwrap();
    // Started at a place of this process's own, stepping on: never the same twice in a run.
    let mut port = next.map_or(low + std::process::id() % span, u32::from);
    for _ in 0..span {
        let candidate = port as u16;
        port = if port + 1 >= high { low } else { port + 1 };
        if is_free(candidate) {
            *next = Some(port as u16);
            return candidate;
        }
    }
    panic!("no free port on loopback between {low} and {high}");
}

/// The host lbctl prints in a load balancer's URLs: its DNS name when the
/// system resolver gives the address it listens on (lbctl wrote it to
/// `/etc/hosts`, which it may as root), else that address.
pub fn url_host(outputs: &BTreeMap<String, String>, lb: &str, address: &str) -> String {
    use std::net::ToSocketAddrs;
    let dns = &outputs[&format!("{lb}_dns_name")];
    let resolves =
        (dns.as_str(), 0).to_socket_addrs().is_ok_and(|mut found| found.any(|it| it.ip().to_string() == address));
    if resolves {
        dns.clone()
    } else {
        address.to_string()
    }
}

/// Whether something listens on 127.0.0.1:`port`.
pub fn port_in_use(port: u16) -> bool {
    TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_err()
}

/// Polls `condition` every 100 ms until it gives a value or `timeout` passes.
pub fn wait_for<T>(what: &str, timeout: Duration, mut condition: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = condition() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A command's result, with its output as text.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(output: Output) -> Run {
        Run {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

impl Run {
    /// Panics with both streams unless the exit code is `code`.
    #[track_caller]
    pub fn expect_code(self, code: i32) -> Run {
        assert_eq!(self.code, code, "exit code\n--- stdout ---\n{}\n--- stderr ---\n{}", self.stdout, self.stderr);
        self
    }
}

/// A stack `name` with an application load balancer `front` on `port`
/// forwarding to target group `web` (port 8080, health checks every 500 ms,
/// `deregistration_delay`), and auto-scaling group `web` with the settings
/// `group` (YAML lines indented by four spaces).
pub fn web_group_spec(name: &str, port: u16, deregistration_delay: &str, group: &str) -> String {
    format!(
        "version: 1
name: {name}
load_balancers:
  front:
    type: application
    listeners: [{{ port: {port}, protocol: HTTP, default_action: {{ forward: web }} }}]
target_groups:
  web:
    port: 8080
    health_check: {{ path: /health, interval: 500ms, timeout: 300ms, healthy_threshold: 2, unhealthy_threshold: 2 }}
    deregistration_delay: {deregistration_delay}
autoscaling_groups:
  web:
{group}"
    )
}

/// A stack applied from a spec in its own temporary directory. Dropping it
/// destroys the stack and then kills, by PID, anything of it still alive.
pub struct Stack {
    pub dir: tempfile::TempDir,
    pub spec: PathBuf,
}

impl Stack {
    /// A stack from spec text (written as `lbctl.yaml`).
    pub fn new(spec_text: &str) -> Stack {
        let dir = tempfile::Builder::new().prefix("lbctl-e2e-").tempdir().unwrap();
        let spec = dir.path().join("lbctl.yaml");
        std::fs::write(&spec, spec_text).unwrap();
        Stack { dir, spec }
    }

    /// A stack from a file of `examples/`, with text replacements applied
    /// (free ports instead of fixed ones, so tests run side by side).
    pub fn example(name: &str, replacements: &[(&str, &str)]) -> Stack {
        let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
        let mut text = std::fs::read_to_string(examples.join(name)).unwrap();
        for (from, to) in replacements {
            assert!(text.contains(from), "{name} has no `{from}`");
            text = text.replace(from, to);
        }
        let stack = Stack::new(&text);
        // Copy the example's companion files (scripts it runs).
        for entry in std::fs::read_dir(&examples).unwrap().flatten() {
            if entry.path().extension().is_some_and(|it| it != "yaml") {
                std::fs::copy(entry.path(), stack.dir.path().join(entry.file_name())).unwrap();
            }
        }
        stack
    }

    /// Rewrites the spec.
    pub fn edit(&self, from: &str, to: &str) {
        let text = std::fs::read_to_string(&self.spec).unwrap();
        assert!(text.contains(from), "spec has no `{from}`");
        std::fs::write(&self.spec, text.replace(from, to)).unwrap();
    }

    /// `lbctl ARGS` in the stack's directory, no terminal, no stdin.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(lbctl_exe());
        command
            .args(args)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .env("NO_COLOR", "1")
            .env("XDG_RUNTIME_DIR", runtime_dir());
        command
    }

    pub fn lbctl(&self, args: &[&str]) -> Run {
        self.command(args).output().unwrap().into()
    }

    pub fn apply(&self) -> Run {
        self.lbctl(&["apply", "--auto-approve"]).expect_code(0)
    }

    /// The outputs as `apply` printed them.
    pub fn outputs(run: &Run) -> BTreeMap<String, String> {
        run.stdout
            .lines()
            .filter_map(|line| line.split_once(" = \""))
            .map(|(key, value)| (key.to_string(), value.trim_end_matches('"').to_string()))
            .collect()
    }

    /// `lbctl status --json`.
    pub fn status(&self) -> serde_json::Value {
        let run = self.lbctl(&["status", "--json"]).expect_code(0);
        let status: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
        assert_eq!(status["format_version"], 1, "README documents this shape: {status}");
        status
    }

    /// Instances of an auto-scaling group as `status --json` reports them.
    pub fn instances(&self, group: &str) -> Vec<serde_json::Value> {
        let status = self.status();
        let address = format!("autoscaling_group.{group}");
        let resource = status["resources"].as_array().unwrap().iter().find(|it| it["address"] == address.as_str());
        resource.map(|it| it["live"]["instances"].as_array().unwrap().clone()).unwrap_or_default()
    }

    /// Every process id the stack's runtime files name.
    pub fn pids(&self) -> Vec<u32> {
        let mut pids = Vec::new();
        collect_pids(&self.dir.path().join(".lbctl/run"), &mut pids);
        pids.sort();
        pids.dedup();
        pids
    }
}

fn collect_pids(dir: &Path, pids: &mut Vec<u32>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect_pids(&path, pids);
        } else if path.file_name().is_some_and(|it| it == "pid") {
            if let Ok(pid) = std::fs::read_to_string(&path).unwrap_or_default().trim().parse() {
                pids.push(pid);
            }
        } else if path.file_name().is_some_and(|it| it == "instances.json") {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            if let Ok(report) = serde_json::from_str::<serde_json::Value>(&text) {
                for instance in report["instances"].as_array().into_iter().flatten() {
                    if let Some(pid) = instance["pid"].as_u64() {
                        pids.push(pid as u32);
                    }
                }
            }
        }
    }
}

/// Whether a process exists (and is not a zombie).
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| stat.rsplit_once(')').map(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X'])))
        .unwrap_or(false)
}

/// Live processes whose command line (arguments joined by NUL bytes) and
/// working directory satisfy `matches`.
pub fn processes_where(matches: impl Fn(&str, &Path) -> bool) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|it| it.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| alive(*pid))
        .filter(|pid| {
            let cmdline = String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default())
                .into_owned();
            let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap_or_default();
            matches(&cmdline, &cwd)
        })
        .collect()
}

/// SIGKILL by PID.
pub fn kill9(pid: u32) {
    // SAFETY: kill(2) with a positive pid has no memory-safety preconditions.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGKILL);
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let pids = self.pids();
        let _ = self.command(&["destroy", "--auto-approve"]).stdout(Stdio::null()).stderr(Stdio::null()).status();
        // Whatever destroy could not stop (a failed test may have broken it).
        for pid in pids.into_iter().chain(self.pids()) {
            if alive(pid) {
                // Only processes of this stack: proxies and supervisors name
                // its directory on their command line, instances run in it.
                let dir = self.dir.path().to_string_lossy().into_owned();
                let cmdline =
                    String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default())
                        .into_owned();
                let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap_or_default();
                let ours = cmdline.contains(&dir) || cwd.starts_with(self.dir.path());
                if ours {
                    kill9(pid);
                }
            }
        }
    }
}

/// An HTTP response as curl saw it.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: BTreeMap<String, String>,
    pub body: String,
}

/// `curl` a URL with extra headers; `None` when curl could not connect.
pub fn curl(url: &str, headers: &[&str]) -> Option<Response> {
    curl_with(url, headers, &[])
}

/// `curl` with extra curl arguments (`-X POST`).
pub fn curl_with(url: &str, headers: &[&str], extra: &[&str]) -> Option<Response> {
    let mut command = Command::new("curl");
    command.args(["-sS", "--max-time", "10", "-D", "-", url]).args(extra);
    for header in headers {
        command.args(["-H", header]);
    }
    let output = command.output().expect("curl is installed");
    if !output.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_string()))
        .collect();
    Some(Response { status, headers, body: body.to_string() })
}

/// The instance id that answered a request through the load balancer.
pub fn instance_of(url: &str, headers: &[&str]) -> Option<String> {
    let response = curl(url, headers)?;
    (response.status == 200).then(|| response.headers.get("x-instance-id").cloned()).flatten()
}

/// A blocking HTTP/1.1 client that keeps one connection open across
/// requests, as a browser or an SDK does: for load loops, where a curl per
/// request would be too slow. It reconnects only when the server said
/// `Connection: close`; a connection lost otherwise is the request's error.
pub struct KeepAliveClient {
    port: u16,
    host: String,
    connection: Option<std::io::BufReader<std::net::TcpStream>>,
}

/// A response as `KeepAliveClient` read it.
#[derive(Debug)]
pub struct KeepAliveResponse {
    pub status: u16,
    pub body: String,
}

impl KeepAliveClient {
    /// A client of 127.0.0.1:`port` sending `Host: host`.
    pub fn new(port: u16, host: &str) -> KeepAliveClient {
        KeepAliveClient { port, host: host.to_string(), connection: None }
    }

    /// GETs `path`; `Err` says what went wrong on the wire.
    pub fn get(&mut self, path: &str) -> Result<KeepAliveResponse, String> {
        use std::io::{BufRead, Read, Write};
        if self.connection.is_none() {
            let stream = std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, self.port))
                .map_err(|err| format!("connecting: {err}"))?;
            stream.set_read_timeout(Some(Duration::from_secs(20))).map_err(|err| err.to_string())?;
            stream.set_nodelay(true).map_err(|err| err.to_string())?;
            self.connection = Some(std::io::BufReader::new(stream));
        }
        let result = (|| {
            let reader = self.connection.as_mut().expect("connected above");
            let request = format!("GET {path} HTTP/1.1\r\nHost: {}\r\n\r\n", self.host);
            reader.get_mut().write_all(request.as_bytes()).map_err(|err| format!("writing: {err}"))?;
            let mut line = String::new();
            fn read_line(reader: &mut impl BufRead, line: &mut String) -> Result<(), String> {
                line.clear();
                match reader.read_line(line) {
                    Ok(0) => Err("the connection closed".to_string()),
                    Ok(_) => Ok(()),
                    Err(err) => Err(format!("reading: {err}")),
                }
            }
            read_line(reader, &mut line)?;
            let status = line
                .split_whitespace()
                .nth(1)
                .and_then(|it| it.parse().ok())
                .ok_or_else(|| format!("bad status line {line:?}"))?;
            let (mut length, mut chunked, mut close) = (None, false, false);
            loop {
                read_line(reader, &mut line)?;
                let header = line.trim_end();
                if header.is_empty() {
                    break;
                }
                let (name, value) = header.split_once(':').ok_or_else(|| format!("bad header {header:?}"))?;
                let (name, value) = (name.trim().to_ascii_lowercase(), value.trim().to_ascii_lowercase());
                match name.as_str() {
                    "content-length" => length = value.parse::<usize>().ok(),
                    "transfer-encoding" => chunked = value.ends_with("chunked"),
                    "connection" => close = value == "close",
                    _ => {}
                }
            }
            let mut body = Vec::new();
            if chunked {
                loop {
                    read_line(reader, &mut line)?;
                    let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                        .map_err(|_| format!("bad chunk size {line:?}"))?;
                    let mut chunk = vec![0u8; size + 2];
                    reader.read_exact(&mut chunk).map_err(|err| format!("reading a chunk: {err}"))?;
                    body.extend_from_slice(&chunk[..size]);
                    if size == 0 {
                        break;
                    }
                }
            } else {
                let mut exact = vec![0u8; length.unwrap_or(0)];
                reader.read_exact(&mut exact).map_err(|err| format!("reading the body: {err}"))?;
                body = exact;
            }
            Ok((KeepAliveResponse { status, body: String::from_utf8_lossy(&body).into_owned() }, close))
        })();
        match result {
            Ok((response, close)) => {
                if close {
                    self.connection = None;
                }
                Ok(response)
            }
            Err(err) => {
                self.connection = None;
                Err(err)
            }
        }
    }
}

/// Requests one `LoadLoop` client makes at most.
const LOAD_MAX_REQUESTS: u64 = 500_000;

/// What a `LoadLoop` saw.
#[derive(Debug, Default)]
pub struct Tally {
    pub ok: std::sync::atomic::AtomicU64,
    pub failed: std::sync::atomic::AtomicU64,
    /// Successful answers by the first word of their body (the worker's greeting).
    pub by_greeting: std::sync::Mutex<BTreeMap<String, u64>>,
    /// The first few failures, for assertion messages.
    pub failures: std::sync::Mutex<Vec<String>>,
}

impl Tally {
    pub fn ok(&self) -> u64 {
        self.ok.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn failed(&self) -> u64 {
        self.failed.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// A bounded load loop: one keep-alive client thread per path, each GETting
/// its path until `finish`, the drop of the loop, `limit`, or
/// `LOAD_MAX_REQUESTS` requests, whichever comes first.
pub struct LoadLoop {
    pub tally: std::sync::Arc<Tally>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl LoadLoop {
    pub fn start(port: u16, host: &str, paths: &[&'static str], limit: Duration) -> LoadLoop {
        use std::sync::atomic::{AtomicBool, Ordering};
        let tally = std::sync::Arc::new(Tally::default());
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let threads = paths
            .iter()
            .map(|path| {
                let (tally, stop, host, path) = (tally.clone(), stop.clone(), host.to_string(), *path);
                std::thread::spawn(move || {
                    let mut client = KeepAliveClient::new(port, &host);
                    let started = Instant::now();
                    for _ in 0..LOAD_MAX_REQUESTS {
                        if stop.load(Ordering::Relaxed) || started.elapsed() >= limit {
                            break;
                        }
                        match client.get(path) {
                            Ok(response) if response.status == 200 => {
                                tally.ok.fetch_add(1, Ordering::Relaxed);
                                let greeting = response.body.split_whitespace().next().unwrap_or("").to_string();
                                *tally.by_greeting.lock().unwrap().entry(greeting).or_insert(0) += 1;
                            }
                            other => {
                                tally.failed.fetch_add(1, Ordering::Relaxed);
                                let mut failures = tally.failures.lock().unwrap();
                                if failures.len() < 10 {
                                    failures.push(format!("{path} after {:?}: {other:?}", started.elapsed()));
                                }
                            }
                        }
                    }
                })
            })
            .collect();
        LoadLoop { tally, stop, threads }
    }

    /// Waits until `more` further requests have succeeded.
    pub fn wait_for_more(&self, what: &str, more: u64) {
        let from = self.tally.ok();
        wait_for(what, Duration::from_secs(30), || (self.tally.ok() >= from + more).then_some(()));
    }

    /// Stops the clients and waits for them.
    pub fn finish(mut self) -> std::sync::Arc<Tally> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            thread.join().unwrap();
        }
        self.tally.clone()
    }
}

impl Drop for LoadLoop {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}
