//! Network load balancers through the real binary: TCP and UDP echo at a
//! static IP, the allocated address kept across re-creation, flow
//! stickiness and spread, a killed target, TLS ended at the load balancer,
//! an application load balancer as a target, PROXY protocol v2 to the
//! targets, an apply that leaves open connections flowing, draining, the
//! idle timeout, and `examples/network.yaml`.
//!
//! Targets are `lbctl worker --echo` (instances of an auto-scaling group, or
//! `ip` targets started here): a connection whose first line is `whoami`
//! learns which target it reached, then gets every later line echoed.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::util::*;

/// How long targets may take to become healthy on a loaded machine.
const HEALTHY: Duration = Duration::from_secs(20);

/// How long one read or connect through the load balancer may take.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// Fast health checks for the TCP and UDP groups of these tests.
const TCP_CHECKS: &str =
    "health_check: { protocol: TCP, interval: 300ms, timeout: 250ms, healthy_threshold: 2, unhealthy_threshold: 2 }";

/// A static IP no other test, stack or instance uses, derived from `port`
/// (handed out once per run): instances get theirs from 127.16-250.x.x,
/// allocated ones come from 127.251.x.x, other tests take 127.252.x.x.
fn static_ip_for(port: u16) -> Ipv4Addr {
    let n = u32::from(port);
    Ipv4Addr::new(127, 253 + (n / (256 * 254)) as u8, ((n / 254) % 256) as u8, (n % 254 + 1) as u8)
}

/// A spec with one network load balancer `edge` (its YAML body after
/// `type: network`), `target_groups` and `autoscaling_groups` (YAML bodies).
fn spec(name: &str, edge: &str, target_groups: &str, autoscaling_groups: &str) -> String {
    format!(
        "version: 1\nname: {name}\nload_balancers:\n  edge:\n    type: network\n{edge}\ntarget_groups:\n{target_groups}\nautoscaling_groups:\n{autoscaling_groups}\n"
    )
}

/// An auto-scaling group `echo` of `size` echo instances (with the extra
/// worker arguments `args`) registered in `groups`.
fn echo_asg(size: u32, groups: &str, args: &str) -> String {
    format!(
        "  echo:\n    min_size: {size}\n    max_size: {size}\n    health_check_type: ELB\n    health_check_grace_period: 1s\n    target_groups: [{groups}]\n    launch_template: {{ command: [lbctl, worker{args}] }}"
    )
}

/// A TCP connection through the load balancer that asked for its target's id.
struct Connection {
    reader: BufReader<TcpStream>,
    target: String,
}

impl Connection {
    /// Connects to `address` and asks `whoami`; `Err` says what failed.
    fn open(address: SocketAddr) -> Result<Connection, String> {
        let stream = TcpStream::connect_timeout(&address, IO_TIMEOUT).map_err(|err| format!("connecting: {err}"))?;
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        let mut connection = Connection { reader: BufReader::new(stream), target: String::new() };
        connection.target = connection.exchange("whoami")?;
        Ok(connection)
    }

    /// Sends a line and reads the line that comes back.
    fn exchange(&mut self, line: &str) -> Result<String, String> {
        self.reader.get_mut().write_all(format!("{line}\n").as_bytes()).map_err(|err| format!("writing: {err}"))?;
        let mut answer = String::new();
        match self.reader.read_line(&mut answer) {
            Ok(0) => Err("the connection closed".to_string()),
            Ok(_) => Ok(answer.trim_end().to_string()),
            Err(err) => Err(format!("reading: {err}")),
        }
    }

    /// Sends `count` numbered lines and checks each comes back unchanged.
    fn echoes(&mut self, count: usize) {
        for n in 0..count {
            let line = format!("line {n} of {} through the load balancer", self.target);
            assert_eq!(
                self.exchange(&line).as_deref(),
                Ok(line.as_str()),
                "line {n} of a connection to {}",
                self.target
            );
        }
    }
}

/// The targets that `count` new connections to `address` reached, in order.
fn new_connections(address: SocketAddr, count: usize) -> Vec<String> {
    (0..count)
        .map(|n| match Connection::open(address) {
            Ok(connection) => connection.target,
            Err(err) => panic!("new connection {n} to {address}: {err}"),
        })
        .collect()
}

/// Sends `datagram` from `socket` to `address` and returns the answer and
/// where it came from; `None` when nothing came back in time.
fn udp_exchange(socket: &UdpSocket, address: SocketAddr, datagram: &[u8]) -> Option<(String, SocketAddr)> {
    socket.send_to(datagram, address).ok()?;
    let mut buffer = [0u8; 1024];
    let (length, from) = socket.recv_from(&mut buffer).ok()?;
    Some((String::from_utf8_lossy(&buffer[..length]).into_owned(), from))
}

/// `lbctl worker --echo` processes as `ip` targets, killed when the test
/// ends however it ends.
struct EchoWorkers {
    children: Vec<(String, u16, Child)>,
}

impl EchoWorkers {
    /// Workers named `names`, each on its own free port of 127.0.0.1, answering.
    fn start(names: &[&str]) -> EchoWorkers {
        let mut workers = EchoWorkers { children: Vec::new() };
        for name in names {
            let port = free_port();
            let child = Command::new(lbctl_exe())
                .args(["worker", "--echo", "--listen", &format!("127.0.0.1:{port}"), "--id", name])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            workers.children.push((name.to_string(), port, child));
            let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            wait_for("an echo worker to listen", HEALTHY, || Connection::open(address).ok());
        }
        workers
    }

    /// The spec text of the workers as `ip` targets.
    fn targets(&self) -> String {
        let targets: Vec<String> =
            self.children.iter().map(|(_, port, _)| format!("{{ ip: 127.0.0.1, port: {port} }}")).collect();
        format!("[{}]", targets.join(", "))
    }

    /// The target id the load balancer knows worker `name` by.
    fn id(&self, name: &str) -> String {
        let (_, port, _) = self.children.iter().find(|it| it.0 == name).unwrap();
        format!("127.0.0.1:{port}")
    }

    /// SIGKILLs worker `name` and reaps it.
    fn kill(&mut self, name: &str) {
        let (_, _, child) = self.children.iter_mut().find(|it| it.0 == name).unwrap();
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for EchoWorkers {
    fn drop(&mut self) {
        for (_, _, child) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `(target group, id, state)` of every target of load balancer `lb` as
/// `lbctl status --json` reports them.
fn target_states(stack: &Stack, lb: &str) -> Vec<(String, String, String)> {
    let status = stack.status();
    let address = format!("load_balancer.{lb}");
    let resource = status["resources"].as_array().unwrap().iter().find(|it| it["address"] == address.as_str());
    let live = resource.map(|it| it["live"].clone()).unwrap_or(Value::Null);
    live["targets"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|it| {
            let field = |name: &str| it[name].as_str().unwrap_or_default().to_string();
            (field("target_group"), field("id"), field("state"))
        })
        .collect()
}

/// Waits until `lbctl status` shows `count` healthy targets in `group` of `lb`.
fn wait_healthy(stack: &Stack, lb: &str, group: &str, count: usize) {
    wait_for(&format!("{count} healthy targets in {group}"), HEALTHY, || {
        let healthy = target_states(stack, lb).iter().filter(|it| it.0 == group && it.2 == "healthy").count();
        (healthy == count).then_some(())
    });
}

/// The pid of load balancer `lb`'s proxy.
fn proxy_pid(stack: &Stack, lb: &str) -> u32 {
    let path = stack.dir.path().join(format!(".lbctl/run/lb/{lb}/pid"));
    std::fs::read_to_string(path).unwrap().trim().parse().unwrap()
}

/// The addresses the machine-wide table gives to this stack's load balancers.
fn table_entries(stack: &Stack) -> Vec<(String, String)> {
    let path = runtime_dir().join("lbctl/addresses.json");
    let table: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap_or_default()).unwrap_or_default();
    let state_dir = stack.dir.path().join(".lbctl");
    table["addresses"]
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(_, owner)| owner["state_dir"].as_str().is_some_and(|it| Path::new(it) == state_dir))
        .map(|(ip, owner)| (ip.clone(), owner["load_balancer"].as_str().unwrap_or_default().to_string()))
        .collect()
}

#[test]
fn tcp_and_udp_echo_through_the_static_ip() {
    let (port, target_port) = (free_port(), free_port());
    let ip = static_ip_for(port);
    let stack = Stack::new(&spec(
        "nlb-echo",
        &format!(
            "    static_ip: {ip}\n    listeners:\n      - {{ port: {port}, protocol: TCP, default_action: {{ forward: echo }} }}\n      - {{ port: {port}, protocol: UDP, default_action: {{ forward: echo-udp }} }}"
        ),
        &format!(
            "  echo: {{ protocol: TCP, port: {target_port}, deregistration_delay: 1s, {TCP_CHECKS} }}\n  echo-udp: {{ protocol: UDP, port: {target_port}, deregistration_delay: 1s, {TCP_CHECKS} }}"
        ),
        &echo_asg(2, "echo, echo-udp", ", --echo"),
    ));
    let outputs = Stack::outputs(&stack.apply());
    assert_eq!(outputs["edge_static_ip"], ip.to_string(), "{outputs:?}");
    let host = url_host(&outputs, "edge", &ip.to_string());
    assert_eq!(outputs["edge_url"], format!("tcp://{host}:{port}"), "{outputs:?}");
    assert_eq!(outputs[&format!("edge_url_{port}_udp")], format!("udp://{host}:{port}"), "{outputs:?}");
    let instances: BTreeSet<String> =
        stack.instances("echo").iter().map(|it| it["id"].as_str().unwrap().to_string()).collect();
    assert_eq!(instances.len(), 2);

    // TCP: the connection reaches an instance, and its bytes come back.
    let address = SocketAddr::from((ip, port));
    let mut connection = Connection::open(address).expect("a TCP connection at the static IP");
    assert!(instances.contains(&connection.target), "{} is not one of {instances:?}", connection.target);
    connection.echoes(5);
    // Only the static IP listens, not 127.0.0.1.
    assert!(TcpStream::connect_timeout(&SocketAddr::from((Ipv4Addr::LOCALHOST, port)), IO_TIMEOUT).is_err());

    // UDP on the same port: an instance answers `whoami`, then echoes, and
    // the answers come from the listener's address.
    let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let (answer, from) = wait_for("a UDP answer", HEALTHY, || udp_exchange(&socket, address, b"whoami"));
    assert_eq!(from, address, "the answer comes from the listener");
    assert!(instances.contains(answer.trim_end()), "{answer:?} is not one of {instances:?}");
    for n in 0..5 {
        let datagram = format!("datagram {n}");
        let (echoed, from) = udp_exchange(&socket, address, datagram.as_bytes()).expect("an echoed datagram");
        assert_eq!((echoed.as_str(), from), (datagram.as_str(), address));
    }
    // The flow stays on its instance.
    let (again, _) = udp_exchange(&socket, address, b"whoami").expect("a UDP answer");
    assert_eq!(again, answer);
}

#[test]
fn an_allocated_static_ip_is_kept_until_the_stack_is_destroyed() {
    let port = free_port();
    let workers = EchoWorkers::start(&["a"]);
    let edge = format!(
        "load_balancers:\n  edge:\n    type: network\n    listeners:\n      - {{ port: {port}, protocol: TCP, default_action: {{ forward: echo }} }}\n"
    );
    let rest = format!(
        "target_groups:\n  echo: {{ protocol: TCP, target_type: ip, targets: {}, {TCP_CHECKS} }}\n",
        workers.targets()
    );
    let with_edge = format!("version: 1\nname: nlb-keep\n{edge}{rest}");
    let without_edge = format!("version: 1\nname: nlb-keep\n{rest}");
    let stack = Stack::new(&with_edge);

    let outputs = Stack::outputs(&stack.apply());
    let ip: Ipv4Addr = outputs["edge_static_ip"].parse().unwrap();
    assert_eq!(ip.octets()[..2], [127, 251], "allocated from 127.251.0.0/16: {ip}");
    assert_eq!(outputs["edge_url"], format!("tcp://{}:{port}", url_host(&outputs, "edge", &ip.to_string())));
    assert_eq!(table_entries(&stack), vec![(ip.to_string(), "edge".to_string())]);
    let address = SocketAddr::from((ip, port));
    let reaches_a = || Connection::open(address).ok().filter(|it| it.target == "a");
    wait_for("a connection at the allocated address", HEALTHY, reaches_a);

    // Removed from the spec: deleted, but the address stays the stack's.
    std::fs::write(&stack.spec, &without_edge).unwrap();
    let applied = stack.apply();
    assert!(!Stack::outputs(&applied).contains_key("edge_static_ip"), "{}", applied.stdout);
    assert!(TcpStream::connect_timeout(&address, IO_TIMEOUT).is_err(), "the load balancer is gone");
    assert_eq!(table_entries(&stack), vec![(ip.to_string(), "edge".to_string())], "still held");

    // Put back: the same address.
    std::fs::write(&stack.spec, &with_edge).unwrap();
    assert_eq!(Stack::outputs(&stack.apply())["edge_static_ip"], ip.to_string());
    wait_for("a connection at the same address", HEALTHY, reaches_a);

    // Its proxy killed and re-created: the same address.
    let pid = proxy_pid(&stack, "edge");
    kill9(pid);
    wait_for("the proxy to be gone", Duration::from_secs(10), || (!alive(pid)).then_some(()));
    assert_eq!(Stack::outputs(&stack.apply())["edge_static_ip"], ip.to_string());
    assert_ne!(proxy_pid(&stack, "edge"), pid, "a new proxy");
    wait_for("a connection to the new proxy", HEALTHY, reaches_a);

    // Destroyed: released.
    let destroyed = stack.lbctl(&["destroy", "--auto-approve"]).expect_code(0);
    let said = format!("{}{}", destroyed.stdout, destroyed.stderr);
    assert!(said.contains(&format!("Released static IP {ip}")), "{said}");
    assert_eq!(table_entries(&stack), vec![], "the table forgets the stack's addresses");
}

#[test]
fn a_connection_stays_on_its_target_while_new_ones_spread() {
    let (port, target_port) = (free_port(), free_port());
    let ip = static_ip_for(port);
    let stack = Stack::new(&spec(
        "nlb-spread",
        &format!("    static_ip: {ip}\n    listeners:\n      - {{ port: {port}, protocol: TCP, default_action: {{ forward: echo }} }}"),
        &format!("  echo: {{ protocol: TCP, port: {target_port}, deregistration_delay: 1s, {TCP_CHECKS} }}"),
        &echo_asg(3, "echo", ", --echo"),
    ));
    stack.apply();
    let address = SocketAddr::from((ip, port));
    let mut long_lived = Connection::open(address).expect("a TCP connection");

    // While new connections come and go (and are spread by their flow
    // hash), the open one keeps echoing on the target it was given.
    let started = Instant::now();
    let mut reached = BTreeSet::new();
    let mut rounds = 0;
    while started.elapsed() < Duration::from_secs(2) || rounds < 10 {
        long_lived.echoes(3);
        reached.extend(new_connections(address, 4));
        rounds += 1;
    }
    assert!(reached.len() >= 2, "new connections spread: {reached:?}");
    assert!(reached.contains(&long_lived.target), "{reached:?} misses {}", long_lived.target);

    // 20 fresh connections: over at least two of the three instances.
    let spread: BTreeSet<String> = new_connections(address, 20).into_iter().collect();
    assert!(spread.len() >= 2, "20 connections reached only {spread:?}");
    long_lived.echoes(3);
}

#[test]
fn connections_avoid_a_killed_target() {
    let port = free_port();
    let ip = static_ip_for(port);
    let mut workers = EchoWorkers::start(&["a", "b"]);
    let stack = Stack::new(&format!(
        "version: 1\nname: nlb-kill\nload_balancers:\n  edge:\n    type: network\n    static_ip: {ip}\n    listeners:\n      - {{ port: {port}, protocol: TCP, default_action: {{ forward: echo }} }}\ntarget_groups:\n  echo: {{ protocol: TCP, target_type: ip, targets: {}, deregistration_delay: 1s, {TCP_CHECKS} }}\n",
        workers.targets()
    ));
    stack.apply();
    wait_healthy(&stack, "edge", "echo", 2);
    let address = SocketAddr::from((ip, port));
    let before: BTreeSet<String> = new_connections(address, 20).into_iter().collect();
    assert_eq!(before, BTreeSet::from(["a".to_string(), "b".to_string()]));

    workers.kill("a");
    let victim = workers.id("a");
    wait_for("the killed target to be unhealthy", HEALTHY, || {
        let states = target_states(&stack, "edge");
        states.iter().any(|it| it.1 == victim && it.2 == "unhealthy").then_some(())
    });
    let after = new_connections(address, 20);
    assert!(after.iter().all(|it| it == "b"), "every new connection reaches the survivor: {after:?}");
}

#[test]
fn a_tls_listener_with_a_self_signed_certificate_for_its_ip() {
    let (port, tls_port, target_port) = (free_port(), free_port(), free_port());
    let ip = static_ip_for(port);
    let stack = Stack::new(&spec(
        "nlb-tls",
        &format!(
            "    static_ip: {ip}\n    access_logs: true\n    listeners:\n      - {{ port: {port}, protocol: TCP, default_action: {{ forward: echo }} }}\n      - {{ port: {tls_port}, protocol: TLS, certificate: self_signed, default_action: {{ forward: echo }} }}"
        ),
        &format!("  echo: {{ protocol: TCP, port: {target_port}, deregistration_delay: 1s, {TCP_CHECKS} }}"),
        &echo_asg(1, "echo", ", --echo"),
    ));
    let outputs = Stack::outputs(&stack.apply());
    let host = url_host(&outputs, "edge", &ip.to_string());
    assert_eq!(outputs[&format!("edge_url_{tls_port}")], format!("tls://{host}:{tls_port}"), "{outputs:?}");
    let ca = outputs["edge_ca_cert"].clone();
    assert!(Path::new(&ca).is_file(), "{ca}");
    let instance = stack.instances("echo")[0]["id"].as_str().unwrap().to_string();

    // The certificate chains to the CA and covers the static IP (only it).
    let verify = |verify_ip: &str| {
        let output = Command::new("openssl")
            .args(["s_client", "-connect", &format!("{ip}:{tls_port}"), "-CAfile", &ca])
            .args(["-verify_return_error", "-verify_ip", verify_ip])
            .stdin(Stdio::null())
            .output()
            .expect("openssl is installed");
        (output.status.success(), String::from_utf8_lossy(&output.stderr).into_owned())
    };
    let (verified, stderr) = verify(&ip.to_string());
    assert!(verified, "the certificate verifies for {ip}: {stderr}");
    let (verified, _) = verify("127.0.0.2");
    assert!(!verified, "the certificate does not cover 127.0.0.2");

    // Decrypted bytes reach the instance and its answers come back.
    let mut s_client = Command::new("openssl")
        .args(["s_client", "-quiet", "-connect", &format!("{ip}:{tls_port}"), "-CAfile", &ca])
        .args(["-verify_return_error", "-verify_ip", &ip.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("openssl is installed");
    let stdout = s_client.stdout.take().unwrap();
    let (lines, received) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let mut stdin = s_client.stdin.take().unwrap();
    let next_line = || received.recv_timeout(IO_TIMEOUT).ok().and_then(Result::ok);
    stdin.write_all(b"whoami\n").unwrap();
    let first = next_line();
    stdin.write_all(b"over TLS\n").unwrap();
    let second = next_line();
    let _ = s_client.kill();
    let _ = s_client.wait();
    assert_eq!(first, Some(instance));
    assert_eq!(second.as_deref(), Some("over TLS"));

    // Each connection is a line of AWS's NLB format: the TLS session's, and
    // a handshake that failed (plain text to the TLS port), without TLS fields.
    {
        let mut plain = std::net::TcpStream::connect((ip, tls_port)).unwrap();
        plain.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        plain.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        let _ = std::io::Read::read_to_end(&mut plain, &mut Vec::new());
    }
    let log = stack.dir.path().join(".lbctl/logs/edge/access.log");
    let tls_lines = wait_for("both TLS connections' lines", Duration::from_secs(10), || {
        let text = std::fs::read_to_string(&log).ok()?;
        let lines: Vec<Vec<String>> = text
            .lines()
            .filter(|it| it.starts_with("tls 2.0 ") && it.contains(&format!(":{tls_port} ")))
            .map(|it| it.split(' ').map(str::to_string).collect())
            .collect();
        let failed = lines.iter().any(|it| it[8] == "-" && it[14] == "-");
        let session = lines.iter().any(|it| it[15] == "tlsv13" && it[12].starts_with("arn:aws:acm:"));
        (failed && session).then_some(lines)
    });
    for line in &tls_lines {
        assert_eq!(line.len(), 23, "{line:?}");
        assert!(!line[2].ends_with('Z') && line[4].len() == 16, "AWS's time and listener id: {line:?}");
    }
}

#[test]
fn a_network_load_balancer_in_front_of_an_application_one() {
    let (port, alb_port, web_port) = (free_port(), free_port(), free_port());
    let ip = static_ip_for(port);
    let stack = Stack::new(&format!(
        "version: 1
name: nlb-alb
load_balancers:
  edge:
    type: network
    static_ip: {ip}
    listeners: [{{ port: {port}, protocol: TCP, default_action: {{ forward: via-alb }} }}]
  public:
    type: application
    access_logs: true
    listeners: [{{ port: {alb_port}, protocol: HTTP, default_action: {{ forward: web }} }}]
target_groups:
  via-alb:
    protocol: TCP
    port: {alb_port}
    target_type: alb
    targets: [{{ load_balancer: public }}]
    health_check: {{ protocol: HTTP, path: /health, interval: 300ms, timeout: 250ms, healthy_threshold: 2 }}
  web:
    port: {web_port}
    health_check: {{ path: /health, interval: 300ms, timeout: 250ms, healthy_threshold: 2 }}
    deregistration_delay: 1s
autoscaling_groups:
  web:
    min_size: 1
    max_size: 1
    health_check_type: ELB
    target_groups: [web]
    launch_template: {{ command: [lbctl, worker] }}
"
    ));
    stack.apply();
    let instance = stack.instances("web")[0]["id"].as_str().unwrap().to_string();
    wait_healthy(&stack, "edge", "via-alb", 1);
    let response = wait_for("an answer through both load balancers", HEALTHY, || {
        curl(&format!("http://{ip}:{port}/through"), &[]).filter(|it| it.status == 200)
    });
    assert!(response.body.contains(&format!("from {instance} ")), "{response:?}");
    assert!(response.body.trim_end().ends_with("path=/through"), "{response:?}");
    // The ALB saw the NLB's connection, and added its forwarding headers.
    assert!(response.headers.contains_key("x-seen-forwarded-for"), "{response:?}");
    // The NLB's health checks pass through the ALB to the instance, and are
    // counted apart from the one client request.
    wait_for("the counts in the ALB's status", Duration::from_secs(10), || {
        let status = stack.status();
        let alb = status["resources"].as_array()?.iter().find(|it| it["address"] == "load_balancer.public")?.clone();
        let target = alb["live"]["targets"].as_array()?.iter().find(|it| it["id"] == instance.as_str())?.clone();
        (target["requests"] == 1 && target["health_check_requests"].as_u64()? > 0).then_some(())
    });
    // Everywhere: the ALB's codes, response times and access log have the
    // client's request only, as AWS logs no health check.
    let status = stack.status();
    let alb =
        status["resources"].as_array().unwrap().iter().find(|it| it["address"] == "load_balancer.public").unwrap();
    let metrics = curl(alb["live"]["metrics_url"].as_str().unwrap(), &[]).unwrap().body;
    for expected in [
        "lbctl_httpcode_client_total{load_balancer=\"public\",class=\"2xx\"} 1",
        "lbctl_httpcode_target_total{load_balancer=\"public\",target_group=\"web\",class=\"2xx\"} 1",
        "lbctl_target_response_time_seconds_count{load_balancer=\"public\",target_group=\"web\"} 1",
    ] {
        assert!(metrics.lines().any(|it| it == expected), "no `{expected}` in\n{metrics}");
    }
    let log = stack.dir.path().join(".lbctl/logs/public/access.log");
    let lines = wait_for("the request's access-log line", Duration::from_secs(10), || {
        let text = std::fs::read_to_string(&log).ok()?;
        text.contains("/through").then_some(text)
    });
    assert_eq!(lines.lines().count(), 1, "{lines}");
}

#[test]
fn proxy_protocol_v2_tells_targets_the_client_address() {
    let (port, target_port) = (free_port(), free_port());
    let ip = static_ip_for(port);
    let stack = Stack::new(&spec(
        "nlb-ppv2",
        &format!("    static_ip: {ip}\n    listeners:\n      - {{ port: {port}, protocol: TCP, default_action: {{ forward: web }} }}"),
        &format!(
            "  web:\n    protocol: TCP\n    port: {target_port}\n    proxy_protocol_v2: true\n    deregistration_delay: 1s\n    health_check: {{ protocol: HTTP, path: /health, interval: 300ms, timeout: 250ms, healthy_threshold: 2 }}"
        ),
        &echo_asg(1, "web", ", --proxy-protocol"),
    ));
    // Healthy means the health checks' LOCAL headers were accepted.
    stack.apply();
    let output = Command::new("curl")
        .args(["-sS", "--max-time", "10", "-D", "-", "-o", "/dev/null"])
        .args(["-w", "client=%{local_ip}:%{local_port}\\n", &format!("http://{ip}:{port}/")])
        .output()
        .expect("curl is installed");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "{text}{}", String::from_utf8_lossy(&output.stderr));
    let header = |name: &str| {
        text.lines()
            .find_map(|line| line.split_once(':').filter(|it| it.0.eq_ignore_ascii_case(name)))
            .map(|it| it.1.trim().to_string())
    };
    let client = text.lines().find_map(|line| line.strip_prefix("client=")).unwrap().to_string();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(client.starts_with("127.0.0.1:"), "{client}");
    assert_eq!(header("x-seen-proxy-source"), Some(client), "{text}");
    assert_eq!(header("x-seen-proxy-destination"), Some(format!("{ip}:{port}")), "{text}");
}

#[test]
fn an_apply_leaves_open_connections_flowing() {
    let (port, second_port, target_port) = (free_port(), free_port(), free_port());
    let ip = static_ip_for(port);
    let stack = Stack::new(&spec(
        "nlb-hitless",
        &format!("    static_ip: {ip}\n    listeners:\n      - {{ port: {port}, protocol: TCP, default_action: {{ forward: echo }} }}"),
        &format!("  echo: {{ protocol: TCP, port: {target_port}, deregistration_delay: 1s, {TCP_CHECKS} }}"),
        &echo_asg(2, "echo", ", --echo"),
    ));
    stack.apply();
    let address = SocketAddr::from((ip, port));
    let mut open = Connection::open(address).expect("a TCP connection");
    open.echoes(3);
    let pid = proxy_pid(&stack, "edge");

    // A second listener and slower health checks: a reload, not a restart.
    stack.edit(
        "default_action: { forward: echo } }",
        &format!(
            "default_action: {{ forward: echo }} }}\n      - {{ port: {second_port}, protocol: TCP, default_action: {{ forward: echo }} }}"
        ),
    );
    stack.edit("interval: 300ms", "interval: 400ms");
    stack.apply();
    assert_eq!(proxy_pid(&stack, "edge"), pid, "the same proxy");

    open.echoes(5);
    assert!(Connection::open(SocketAddr::from((ip, second_port))).is_ok(), "the new listener serves");
    assert!(Connection::open(address).is_ok(), "the old listener still serves");
    open.echoes(3);
    stack.lbctl(&["plan", "--detailed-exitcode"]).expect_code(0);
}

/// The example: TCP, UDP and TLS to echo instances, TCP through the ALB.
#[test]
fn network_example_serves_tcp_udp_tls_and_the_alb_behind_it() {
    let (port, tls_port, alb_port, alb_nlb_port) = (free_port(), free_port(), free_port(), free_port());
    let stack = Stack::example(
        "network.yaml",
        &[
            ("port: 9000,", &format!("port: {port},")),
            ("port: 9443,", &format!("port: {tls_port},")),
            ("port: 9080,", &format!("port: {alb_nlb_port},")),
            ("port: 8088", &format!("port: {alb_port}")),
        ],
    );
    let outputs = Stack::outputs(&stack.apply());
    let ip = outputs["edge_static_ip"].clone();
    assert!(ip.starts_with("127."), "{outputs:?}");
    let host = url_host(&outputs, "edge", &ip);
    assert_eq!(outputs["edge_url"], format!("tcp://{host}:{port}"));
    assert_eq!(
        outputs["edge_url_{port}_udp".replace("{port}", &port.to_string()).as_str()],
        format!("udp://{host}:{port}")
    );

    // TCP: new connections spread over both instances.
    let address: SocketAddr = format!("{ip}:{port}").parse().unwrap();
    let ids: BTreeSet<String> = new_connections(address, 20).into_iter().collect();
    assert_eq!(ids.len(), 2, "{ids:?}");
    assert!(ids.iter().all(|it| it.starts_with("i-")), "{ids:?}");

    // UDP on the same port: a flow answers, and stays on its instance.
    let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    socket.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let answers: Vec<String> = (0..3)
        .map(|_| {
            let (answer, from) = udp_exchange(&socket, address, b"whoami").expect("a UDP answer");
            assert_eq!(from, address, "the answer comes from the listener");
            answer.trim_end().to_string()
        })
        .collect();
    assert!(ids.contains(&answers[0]) && answers.iter().all(|it| *it == answers[0]), "{answers:?}");

    // TLS ended at the load balancer, verified against its CA, for its IP.
    let mut s_client = Command::new("openssl")
        .args(["s_client", "-quiet", "-verify_return_error", "-connect", &format!("{ip}:{tls_port}")])
        .args(["-CAfile", &outputs["edge_ca_cert"], "-verify_ip", &ip])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    s_client.stdin.as_mut().unwrap().write_all(b"whoami\n").unwrap();
    let mut line = String::new();
    BufReader::new(s_client.stdout.as_mut().unwrap()).read_line(&mut line).unwrap();
    let _ = s_client.kill();
    let _ = s_client.wait();
    assert!(ids.contains(line.trim_end()), "TLS answer {line:?}");

    // Through the NLB to the ALB to a web instance.
    let response = curl(&format!("http://{ip}:{alb_nlb_port}/through"), &[]).expect("an answer through the ALB");
    assert_eq!(response.status, 200, "{response:?}");
    assert!(response.body.contains("from i-") && response.body.ends_with("path=/through\n"), "{response:?}");

    let destroyed = stack.lbctl(&["destroy", "--auto-approve"]).expect_code(0);
    assert!(destroyed.stderr.contains(&format!("Released static IP {ip}")), "{}", destroyed.stderr);
}

/// A deregistered target gets no new connections; an open one keeps
/// flowing until the deregistration delay, then is closed.
#[test]
fn deregistered_targets_drain_their_connections() {
    let workers = EchoWorkers::start(&["a", "b"]);
    let port = free_port();
    let ip = static_ip_for(port);
    let stack = Stack::new(&spec(
        "nlb-draining",
        &format!("    static_ip: {ip}\n    listeners:\n      - {{ port: {port}, protocol: TCP, default_action: {{ forward: echo }} }}"),
        &format!("  echo: {{ protocol: TCP, target_type: ip, deregistration_delay: 3s, {TCP_CHECKS}, targets: {} }}", workers.targets()),
        "",
    ));
    stack.apply();
    wait_healthy(&stack, "edge", "echo", 2);
    let address = SocketAddr::from((ip, port));
    let mut open =
        wait_for("a connection to a", HEALTHY, || Connection::open(address).ok().filter(|it| it.target == "a"));

    let a = workers.id("a").replace("127.0.0.1:", "");
    stack.edit(&format!("{{ ip: 127.0.0.1, port: {a} }}, "), "");
    let deregistered = Instant::now();
    stack.apply();
    // The open connection keeps flowing, while every new one goes to b.
    open.echoes(3);
    assert_eq!(new_connections(address, 10), vec!["b"; 10]);
    // At the end of the delay the load balancer closes it.
    open.reader.get_ref().set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let mut rest = String::new();
    assert!(open.reader.read_line(&mut rest).is_ok_and(|it| it == 0), "closed at the end of the delay: {rest:?}");
    let lasted = deregistered.elapsed();
    assert!(lasted >= Duration::from_millis(2500), "closed {lasted:?} after deregistration, before the 3s delay");
}

/// A connection that moves no byte for the idle timeout is closed; one
/// that keeps talking is not.
#[test]
fn idle_connections_are_closed_after_the_idle_timeout() {
    let workers = EchoWorkers::start(&["only"]);
    let port = free_port();
    let ip = static_ip_for(port);
    let stack = Stack::new(&spec(
        "nlb-idle",
        &format!("    static_ip: {ip}\n    idle_timeout: 3s\n    listeners:\n      - {{ port: {port}, protocol: TCP, default_action: {{ forward: echo }} }}"),
        &format!("  echo: {{ protocol: TCP, target_type: ip, {TCP_CHECKS}, targets: {} }}", workers.targets()),
        "",
    ));
    stack.apply();
    let address = SocketAddr::from((ip, port));
    let mut idle = wait_for("a connection", HEALTHY, || Connection::open(address).ok());
    let mut busy = Connection::open(address).expect("a second connection");
    // A line every 300 ms for 3.6 s: longer than the timeout, never idle for
    // it (with 2.7 s to spare for a loaded machine).
    for round in 0..12 {
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(busy.exchange(&format!("round {round}")), Ok(format!("round {round}")));
    }
    idle.reader.get_ref().set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut rest = String::new();
    assert!(idle.reader.read_line(&mut rest).is_ok_and(|it| it == 0), "the idle connection is closed: {rest:?}");
    assert_eq!(busy.exchange("last").as_deref(), Ok("last"), "the busy connection is still open");
}
