//! Network load balancer connections over time: the example, draining of
//! a deregistered target, and the idle timeout.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::{curl, free_port, lbctl_exe, wait_for, Stack};

/// `lbctl worker --echo` with id `id` on 127.0.0.1:`port`, killed on drop.
struct EchoWorker(Child);

impl EchoWorker {
    fn start(id: &str, port: u16) -> EchoWorker {
        let child = Command::new(lbctl_exe())
            .args(["worker", "--echo", "--listen", &format!("127.0.0.1:{port}"), "--id", id])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        EchoWorker(child)
    }
}

impl Drop for EchoWorker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A TCP connection through the load balancer that asked for its target's id.
struct Connection {
    reader: BufReader<TcpStream>,
    target: String,
}

impl Connection {
    fn open(address: &str) -> Option<Connection> {
        let stream = TcpStream::connect(address).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut connection = Connection { reader: BufReader::new(stream), target: String::new() };
        connection.target = connection.exchange("whoami")?;
        Some(connection)
    }

    /// Sends a line and reads the line that comes back.
    fn exchange(&mut self, line: &str) -> Option<String> {
        self.reader.get_mut().write_all(format!("{line}\n").as_bytes()).ok()?;
        let mut answer = String::new();
        match self.reader.read_line(&mut answer) {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(answer.trim_end().to_string()),
        }
    }

    /// Waits until the load balancer closes the connection; how long that took.
    fn wait_closed(&mut self, within: Duration) -> Duration {
        let started = Instant::now();
        self.reader.get_ref().set_read_timeout(Some(within)).unwrap();
        let mut rest = Vec::new();
        let closed = self.reader.read_to_end(&mut rest);
        assert!(closed.is_ok(), "not closed within {within:?}: {closed:?}");
        started.elapsed()
    }
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
    assert_eq!(outputs["edge_url"], format!("tcp://{ip}:{port}"));
    assert_eq!(
        outputs["edge_url_{port}_udp".replace("{port}", &port.to_string()).as_str()],
        format!("udp://{ip}:{port}")
    );

    // TCP: new connections spread over both instances.
    let ids: std::collections::BTreeSet<String> =
        (0..20).map(|_| Connection::open(&format!("{ip}:{port}")).expect("a TCP connection").target).collect();
    assert_eq!(ids.len(), 2, "{ids:?}");
    assert!(ids.iter().all(|it| it.starts_with("i-")), "{ids:?}");

    // UDP on the same port: a flow answers, and stays on its instance.
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut answers = Vec::new();
    for _ in 0..3 {
        socket.send_to(b"whoami", format!("{ip}:{port}")).unwrap();
        let mut buffer = [0u8; 64];
        let (length, from) = socket.recv_from(&mut buffer).unwrap();
        assert_eq!(from.to_string(), format!("{ip}:{port}"), "the answer comes from the listener");
        answers.push(String::from_utf8_lossy(&buffer[..length]).trim_end().to_string());
    }
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
    let (a_port, b_port, port) = (free_port(), free_port(), free_port());
    let _workers = [EchoWorker::start("a", a_port), EchoWorker::start("b", b_port)];
    let static_ip = format!("127.252.{}.{}", port >> 8, (port & 0xff).max(1));
    let spec = format!(
        r#"
version: 1
name: draining
load_balancers:
  edge:
    type: network
    static_ip: {static_ip}
    listeners:
      - {{ port: {port}, protocol: TCP, default_action: {{ forward: echo }} }}
target_groups:
  echo:
    protocol: TCP
    target_type: ip
    deregistration_delay: 3s
    health_check: {{ protocol: TCP, interval: 500ms, timeout: 500ms, healthy_threshold: 2 }}
    targets:
      - {{ ip: 127.0.0.1, port: {a_port} }}
      - {{ ip: 127.0.0.1, port: {b_port} }}
"#
    );
    let stack = Stack::new(&spec);
    stack.apply();
    let address = format!("{static_ip}:{port}");
    let mut open = wait_for("a connection to each target", Duration::from_secs(20), || {
        let connections: Vec<Connection> = (0..10).filter_map(|_| Connection::open(&address)).collect();
        let on_a = connections.into_iter().find(|it| it.target == "a");
        on_a.filter(|_| (0..10).filter_map(|_| Connection::open(&address)).any(|it| it.target == "b"))
    });

    stack.edit(&format!("      - {{ ip: 127.0.0.1, port: {a_port} }}\n"), "");
    let deregistered = Instant::now();
    stack.apply();
    // The open connection keeps flowing...
    assert_eq!(open.exchange("still here").as_deref(), Some("still here"));
    // ...while every new one goes to the target that stays.
    for _ in 0..10 {
        let connection = Connection::open(&address).expect("a new connection");
        assert_eq!(connection.target, "b");
    }
    // At the end of the delay the load balancer closes it.
    open.wait_closed(Duration::from_secs(15));
    let lasted = deregistered.elapsed();
    assert!(lasted >= Duration::from_millis(2500), "closed {lasted:?} after deregistration, before the 3s delay");
}

/// A connection that moves no byte for the idle timeout is closed; one
/// that keeps talking is not.
#[test]
fn idle_connections_are_closed_after_the_idle_timeout() {
    let (worker_port, port) = (free_port(), free_port());
    let _worker = EchoWorker::start("only", worker_port);
    let static_ip = format!("127.252.{}.{}", port >> 8, (port & 0xff).max(1));
    let spec = format!(
        r#"
version: 1
name: idle
load_balancers:
  edge:
    type: network
    static_ip: {static_ip}
    idle_timeout: 1s
    listeners:
      - {{ port: {port}, protocol: TCP, default_action: {{ forward: echo }} }}
target_groups:
  echo:
    protocol: TCP
    target_type: ip
    health_check: {{ protocol: TCP, interval: 500ms, timeout: 500ms }}
    targets: [{{ ip: 127.0.0.1, port: {worker_port} }}]
"#
    );
    let stack = Stack::new(&spec);
    stack.apply();
    let address = format!("{static_ip}:{port}");
    let mut idle = wait_for("a connection", Duration::from_secs(20), || Connection::open(&address));
    let mut busy = Connection::open(&address).expect("a second connection");
    // Talking every 300 ms for 2.4 s: longer than the timeout, never idle for it.
    for round in 0..8 {
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(busy.exchange(&format!("round {round}")), Some(format!("round {round}")));
    }
    let waited = idle.wait_closed(Duration::from_secs(10));
    assert!(waited < Duration::from_secs(10));
    assert_eq!(busy.exchange("last").as_deref(), Some("last"), "the busy connection is still open");
}
