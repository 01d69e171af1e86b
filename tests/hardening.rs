//! Malformed and hostile clients against a real load balancer: each gets
//! its status or is cut off, and the proxy serves the next client as before.
//! The requests are written byte for byte over `std::net::TcpStream`, as no
//! well-behaved client would send them.

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, Shutdown, TcpStream};
use std::time::{Duration, Instant};

use crate::util::*;

/// Auto-scaling group `web`: one `lbctl worker` in target group `web`.
const WEB_GROUP: &str = r#"autoscaling_groups:
  web:
    min_size: 1
    max_size: 1
    desired_capacity: 1
    health_check_type: EC2
    target_groups: [web]
    launch_template:
      command: ["lbctl", "worker", "--listen", "{ip}:{port}"]
"#;

fn spec(port: u16, brief_port: u16) -> String {
    format!(
        r#"version: 1
name: hardening
load_balancers:
  public:
    type: application
    listeners:
      - port: {port}
        protocol: HTTP
        default_action: {{ forward: web }}
  brief:
    type: application
    idle_timeout: 2s
    listeners:
      - port: {brief_port}
        protocol: HTTP
        default_action: {{ fixed_response: {{ status_code: 200, content_type: text/plain, body: brief }} }}
target_groups:
  web:
    protocol: HTTP
    port: 8080
    health_check: {{ path: /health, interval: 500ms, timeout: 400ms, healthy_threshold: 2, unhealthy_threshold: 2 }}
    deregistration_delay: 1s
{WEB_GROUP}"#
    )
}

fn connect(port: u16) -> TcpStream {
    let stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    stream
}

/// Sends `request` as is and reads until the proxy closes the connection
/// (or resets it, or 15 s pass); what was read, as text.
fn exchange(port: u16, request: &[u8]) -> String {
    let mut stream = connect(port);
    // A proxy that refuses early may close before everything is written.
    let _ = stream.write_all(request);
    String::from_utf8_lossy(&read_until(&mut stream, |_| false)).into_owned()
}

/// Reads from `stream` until what was read is `done`, the peer closes or a
/// read fails (its timeout passes); what was read.
fn read_until(stream: &mut TcpStream, done: impl Fn(&[u8]) -> bool) -> Vec<u8> {
    let mut read = Vec::new();
    let mut buf = [0u8; 4096];
    while !done(&read) {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => read.extend_from_slice(&buf[..n]),
        }
    }
    read
}

/// Whether `bytes` hold a whole head (its blank line).
fn head_ended(bytes: &[u8]) -> bool {
    bytes.windows(4).any(|it| it == b"\r\n\r\n")
}

/// The status line of an answer.
fn status_line(answer: &str) -> &str {
    answer.lines().next().unwrap_or("")
}

#[test]
fn malformed_requests_get_their_status_and_the_proxy_serves_on() {
    let (port, brief_port) = (free_port(), free_port());
    let stack = Stack::new(&spec(port, brief_port));
    stack.apply();
    let url = format!("http://127.0.0.1:{port}/");
    let pid_file = stack.dir.path().join(".lbctl/run/lb/public/pid");
    let pid: u32 = std::fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
    let serves = |after: &str| {
        let response = curl(&url, &[]).unwrap_or_else(|| panic!("no answer after {after}"));
        assert_eq!(response.status, 200, "after {after}: {response:?}");
        assert!(response.body.starts_with("hello from i-"), "after {after}: {response:?}");
        assert!(alive(pid), "the proxy died after {after}");
    };
    serves("apply");

    // A client that trickles its head one byte a second, on its own thread
    // while the other checks run: cut off once the head is 10 s old.
    let slow = std::thread::spawn(move || {
        let mut stream = connect(port);
        stream.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        let started = Instant::now();
        stream.write_all(b"GET / HTTP/1.1\r\nHost: slow\r\nX-Slow: ").unwrap();
        let mut buf = [0u8; 256];
        for _ in 0..40 {
            // Reading is the one-second pace: it times out while the connection is open.
            match stream.read(&mut buf) {
                Ok(0) => return (started.elapsed(), String::new()),
                Ok(n) => return (started.elapsed(), String::from_utf8_lossy(&buf[..n]).into_owned()),
                Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(err) => return (started.elapsed(), format!("read error: {err}")),
            }
            if let Err(err) = stream.write_all(b"a") {
                return (started.elapsed(), format!("write error: {err}"));
            }
        }
        panic!("the slow client was never cut off");
    });

    // Bad request lines: 400, whatever the garbage.
    for garbage in [
        &b"NOT A REQUEST\r\n\r\n"[..],
        b"GET /\r\n\r\n",
        b"GET / HTTP/1.1 extra\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
    ] {
        let answer = exchange(port, garbage);
        assert!(status_line(&answer).starts_with("HTTP/1.1 400 "), "{garbage:?} -> {answer:?}");
        serves(&format!("{garbage:?}"));
    }

    // A Host that is not `host[:port]`: 400, never routed nor sent on.
    for host in ["a b", "user@a", "a:notaport", "[::1", "evil.example/x?"] {
        let answer = exchange(port, format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes());
        assert!(status_line(&answer).starts_with("HTTP/1.1 400 "), "{host:?} -> {answer:?}");
    }
    serves("bad Host values");

    // What AWS's ALB refuses itself: TRACE (405); a transfer coding it
    // does not pass on, which the target would never learn of (501); an
    // X-Forwarded-For of more than 30 addresses (463), in one field or
    // several. Each goes no further, and 30 addresses still do.
    let addresses = |count: usize| (0..count).map(|it| format!("10.0.0.{it}")).collect::<Vec<_>>().join(", ");
    for (request, status) in [
        ("TRACE / HTTP/1.1\r\nHost: x\r\n\r\n".to_string(), "405"),
        ("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n".into(), "501"),
        (format!("GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: {}\r\n\r\n", addresses(31)), "463"),
        (
            format!(
                "GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: {}\r\nX-Forwarded-For: 10.1.1.1\r\n\r\n",
                addresses(30)
            ),
            "463",
        ),
        (format!("GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: {}\r\n\r\n", addresses(30)), "200"),
        (
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: identity, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n".into(),
            "200",
        ),
    ] {
        let answer = exchange(port, request.as_bytes());
        assert!(status_line(&answer).starts_with(&format!("HTTP/1.1 {status} ")), "{request:?} -> {answer:?}");
        assert_eq!(answer.contains("hello from i-"), status == "200", "{request:?} -> {answer:?}");
    }
    serves("what AWS refuses");
    // `Connection` cannot make the Host hop-by-hop: the target gets it.
    let kept = curl(&url, &["Host: kept.example", "Connection: host"]).unwrap();
    assert_eq!(kept.headers["x-seen-host"], "kept.example", "{kept:?}");

    // A 100 KiB header: 431 (AWS allows 64 KiB of headers).
    let mut big = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec();
    big.extend(std::iter::repeat_n(b'a', 100 * 1024));
    big.extend_from_slice(b"\r\n\r\n");
    let answer = exchange(port, &big);
    assert!(status_line(&answer).starts_with("HTTP/1.1 431 "), "{:?}", status_line(&answer));
    serves("a 100 KiB header");
    // A head that never ends is refused once past 64 KiB, not read on
    // into memory: the client is cut off long before 64 MiB are sent.
    for start in [&b"GET /"[..], b"GET / HTTP/1.1\r\nHost: x\r\nX-Endless: "] {
        let mut stream = connect(port);
        stream.set_write_timeout(Some(Duration::from_secs(15))).unwrap();
        stream.write_all(start).unwrap();
        let chunk = [b'a'; 64 * 1024];
        let sent = (0..1024).take_while(|_| stream.write_all(&chunk).is_ok()).count();
        assert!(sent < 1024, "{start:?}: the proxy read 64 MiB of a head");
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        let answer = String::from_utf8_lossy(&answer);
        assert!(status_line(&answer).starts_with("HTTP/1.1 431 "), "{start:?}: {:?}", status_line(&answer));
        serves("a head that never ends");
    }
    // Within the limits is fine: 48 KiB of headers, each line under 16 KiB.
    let fine: Vec<String> = (1..=3).map(|idx| format!("X-Fine-{idx}: {}", "b".repeat(16 * 1024 - 12))).collect();
    let fine: Vec<&str> = fine.iter().map(String::as_str).collect();
    assert_eq!(curl(&url, &fine).unwrap().status, 200);
    // A header line over 16 KiB gets 431, as on AWS.
    let over = format!("X-Over: {}", "b".repeat(16 * 1024));
    assert_eq!(curl(&url, &[&over]).unwrap().status, 431);
    serves("a header line over 16 KiB");
    // At most 100 header fields (hyper's default): the 101st gets 431.
    // `fields(n)` is a request of exactly n fields, sent to the fixed
    // response, so that the limit seen is the load balancer's own (a target
    // has its own, and the forwarding headers add three).
    let fields = |count: usize| {
        let mut head = b"GET / HTTP/1.1\r\nHost: x\r\n".to_vec();
        for idx in 2..count {
            head.extend_from_slice(format!("X-Field-{idx}: v\r\n").as_bytes());
        }
        head.extend_from_slice(b"Connection: close\r\n\r\n");
        head
    };
    let answer = exchange(brief_port, &fields(100));
    assert!(status_line(&answer).starts_with("HTTP/1.1 200 "), "{:?}", status_line(&answer));
    let answer = exchange(brief_port, &fields(101));
    assert!(status_line(&answer).starts_with("HTTP/1.1 431 "), "{:?}", status_line(&answer));
    serves("101 header fields");

    // Request smuggling: both framing headers, in either order, and two lengths.
    for framing in [
        "Content-Length: 5\r\nTransfer-Encoding: chunked",
        "Transfer-Encoding: chunked\r\nContent-Length: 5",
        "transfer-encoding: chunked\r\ncontent-length: 0",
        "Content-Length: 5\r\nContent-Length: 6",
    ] {
        let request = format!(
            "POST / HTTP/1.1\r\nHost: x\r\n{framing}\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
        );
        let answer = exchange(port, request.as_bytes());
        assert!(status_line(&answer).starts_with("HTTP/1.1 400 "), "{framing:?} -> {answer:?}");
        assert!(!answer.contains("/smuggled"), "{framing:?} -> {answer:?}");
        serves(framing);
    }
    // A malformed chunked body is the client's fault: 400, not a 502 blamed on the target.
    for body in ["zz\r\n", "ffffffffffffffffff\r\n", "3\nabc\r\n"] {
        let request = format!("PUT /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{body}");
        let answer = exchange(port, request.as_bytes());
        assert!(status_line(&answer).starts_with("HTTP/1.1 400 "), "{body:?} -> {answer:?}");
        serves(body);
    }
    // Well-framed bodies pass, chunked or not, and pipelined requests too.
    let posted = curl_with(&url, &[], &["-d", "some=data"]).unwrap();
    assert_eq!(posted.status, 200, "{posted:?}");
    let chunked = curl_with(&url, &["Transfer-Encoding: chunked"], &["-d", "some=data"]).unwrap();
    assert_eq!(chunked.status, 200, "{chunked:?}");
    let pipelined = exchange(
        port,
        b"POST /one HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabcGET /two HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(pipelined.matches("HTTP/1.1 200 OK").count(), 2, "{pipelined}");
    assert!(pipelined.contains("path=/one") && pipelined.contains("path=/two"), "{pipelined}");

    // The load balancer's idle timeout closes an idle keep-alive connection.
    let mut idle = connect(brief_port);
    idle.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut buf = [0u8; 1024];
    let mut answer = String::new();
    while !answer.ends_with("\r\n\r\nbrief") {
        let n = idle.read(&mut buf).unwrap();
        assert!(n > 0, "closed before the whole answer: {answer:?}");
        answer.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    let idle_since = Instant::now();
    let closed = idle.read(&mut buf);
    let waited = idle_since.elapsed();
    assert!(matches!(closed, Ok(0)), "{closed:?}");
    assert!(waited >= Duration::from_millis(1500) && waited < Duration::from_secs(8), "closed after {waited:?}");
    let _ = idle.shutdown(Shutdown::Both);
    // Bare line ends between requests are no data: they keep no connection open.
    let mut idle = connect(brief_port);
    idle.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    idle.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    let idle_since = Instant::now();
    let closed = loop {
        if idle.write_all(b"\r\n").is_err() {
            break true;
        }
        match idle.read(&mut buf) {
            Ok(0) => break true,
            Err(err) if !matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => break true,
            _ if idle_since.elapsed() > Duration::from_secs(20) => break false,
            _ => {}
        }
    };
    assert!(
        closed && idle_since.elapsed() < Duration::from_secs(12),
        "line ends kept it open {:?}",
        idle_since.elapsed()
    );

    let (elapsed, answer) = slow.join().unwrap();
    assert!(
        elapsed >= HEADER_READ_TIMEOUT - Duration::from_secs(1)
            && elapsed < HEADER_READ_TIMEOUT + Duration::from_secs(4),
        "the slow client was cut off after {elapsed:?}"
    );
    assert!(answer.is_empty() || answer.starts_with("read error"), "{answer:?}");
    serves("a slow client");
}

/// Raises this test process's soft file descriptor limit to its hard one,
/// for tests that hold thousands of connections.
fn raise_descriptor_limit() {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit only read and write `limit`.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// Whether the proxy closed `stream` (EOF or reset) within `within`.
fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    stream.set_read_timeout(Some(within.max(Duration::from_millis(1)))).unwrap();
    let mut buf = [0u8; 64];
    match stream.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(err) => !matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
    }
}

/// A client that connects and sends nothing is closed once the header
/// timeout (10 s) passes; 5,000 of them at once do not keep other clients
/// from being served.
#[test]
fn silent_connections_are_closed_and_do_not_crowd_out_others() {
    raise_descriptor_limit();
    let (port, brief_port) = (free_port(), free_port());
    let stack = Stack::new(&spec(port, brief_port));
    stack.apply();
    let url = format!("http://127.0.0.1:{port}/");
    let opened = Instant::now();
    let mut silent: Vec<TcpStream> =
        (0..5000).map(|_| TcpStream::connect((Ipv4Addr::LOCALHOST, port)).expect("a silent connection")).collect();
    // And a few that send part of a head, then nothing: no request to
    // finish, they are closed at the header timeout too, not later.
    for start in [&b"GET / HTTP/1.1\r\nHost: x\r\n"[..], b"GET /"] {
        for _ in 0..5 {
            let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).expect("a silent connection");
            stream.write_all(start).unwrap();
            silent.push(stream);
        }
    }
    let all_open = Instant::now();
    for round in 0..5 {
        let response = curl(&url, &[]).unwrap_or_else(|| panic!("no answer beside 5,000 silent clients ({round})"));
        assert_eq!(response.status, 200, "{response:?}");
    }
    // Every one is closed within 15 s of its opening (a graceful close would take 10 s more).
    let deadline = all_open + Duration::from_secs(15);
    for (idx, stream) in silent.iter_mut().enumerate() {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(closed_within(stream, left), "silent connection {idx} still open after {:?}", opened.elapsed());
    }
    assert!(opened.elapsed() >= HEADER_READ_TIMEOUT - Duration::from_secs(1), "not closed before the header timeout");
    assert_eq!(curl(&url, &[]).unwrap().status, 200);
}

/// Past `max_connections`, a new connection is closed at once and the open
/// ones keep being served; a freed place takes a new one again.
#[test]
fn connections_past_the_limit_are_refused_and_the_open_ones_keep_working() {
    let port = free_port();
    let stack = Stack::new(&format!(
        "version: 1
name: limited
load_balancers:
  front:
    type: application
    max_connections: 3
    listeners:
      - {{ port: {port}, protocol: HTTP, default_action: {{ fixed_response: {{ status_code: 200, body: fine }} }} }}
"
    ));
    stack.apply();
    let mut clients: Vec<KeepAliveClient> = (0..3).map(|_| KeepAliveClient::new(port, "x")).collect();
    for client in &mut clients {
        assert_eq!(client.get("/").map(|it| it.body), Ok("fine".to_string()));
    }
    let mut refused = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap();
    let _ = refused.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(closed_within(&mut refused, Duration::from_secs(5)), "the fourth connection is closed at once");
    for client in &mut clients {
        assert_eq!(client.get("/").map(|it| it.body), Ok("fine".to_string()), "open connections keep working");
    }
    wait_for("the refusal in the status", Duration::from_secs(10), || {
        let live = stack.status()["resources"][0]["live"].clone();
        (live["rejected_connections"].as_u64() >= Some(1) && live["connections"].as_u64() == Some(3)).then_some(())
    });
    clients.pop();
    wait_for("a freed place", Duration::from_secs(10), || {
        curl(&format!("http://127.0.0.1:{port}/"), &[]).filter(|it| it.status == 200)
    });
}

/// Every 502, 503 and 504 the load balancer answers itself is logged with
/// its time, the request, the target group, the target and the error.
#[test]
fn error_answers_are_logged_with_their_cause() {
    let port = free_port();
    let stack = Stack::new(&format!(
        "version: 1
name: causes
load_balancers:
  front:
    type: application
    listeners:
      - port: {port}
        protocol: HTTP
        default_action: {{ forward: nowhere }}
        rules:
          - {{ priority: 1, conditions: {{ path_pattern: [\"/empty\"] }}, action: {{ forward: empty }} }}
target_groups:
  nowhere:
    target_type: ip
    port: {}
    targets: [{{ ip: 127.0.0.1 }}]
  empty: {{ target_type: ip, port: 80 }}
",
        free_port()
    ));
    stack.apply();
    let url = format!("http://127.0.0.1:{port}");
    assert_eq!(curl(&format!("{url}/refused?x=1"), &[]).unwrap().status, 502);
    assert_eq!(curl(&format!("{url}/empty"), &[]).unwrap().status, 503);
    let log = std::fs::read_to_string(stack.dir.path().join(".lbctl/run/lb/front/proxy.log")).unwrap();
    let line =
        |needle: &str| log.lines().find(|it| it.contains(needle)).unwrap_or_else(|| panic!("no {needle:?} in:\n{log}"));
    let refused = line("502 GET /refused?x=1 from 127.0.0.1:");
    assert!(refused.starts_with("20"), "starts with the time: {refused}");
    assert!(refused.contains("target group nowhere, target 127.0.0.1:"), "{refused}");
    assert!(refused.contains("connecting to the target"), "{refused}");
    let empty = line("503 GET /empty from 127.0.0.1:");
    assert!(empty.ends_with("target group empty, target -: no registered target is routable"), "{empty}");
}

/// AWS's idle timeout is time without data: an upload that keeps sending
/// for longer than it reaches its target and is answered; one that stops
/// with more to come gets 408 once the idle timeout passes (the client's
/// fault, not the target's 504), logged as such; a lambda target's client
/// that stops is not waited for either.
#[test]
fn uploads_are_timed_by_silence_and_a_stalled_client_gets_408() {
    let port = free_port();
    let stack = Stack::new(&format!(
        r#"version: 1
name: uploads
load_balancers:
  front:
    type: application
    idle_timeout: 2s
    access_logs: true
    listeners:
      - port: {port}
        protocol: HTTP
        default_action: {{ forward: web }}
        rules:
          - {{ priority: 1, conditions: {{ path_pattern: ["/fn"] }}, action: {{ forward: fn }} }}
target_groups:
  web:
    protocol: HTTP
    port: 8080
    health_check: {{ path: /health, interval: 500ms, timeout: 400ms, healthy_threshold: 2, unhealthy_threshold: 2 }}
  fn:
    target_type: lambda
    targets: [{{ function: echo }}]
functions:
  echo:
    command: ["cat"]
{WEB_GROUP}"#
    ));
    stack.apply();
    wait_for("a healthy target", Duration::from_secs(20), || {
        curl(&format!("http://127.0.0.1:{port}/"), &[]).filter(|it| it.status == 200)
    });
    // Sends the head of a request with a `length`-byte body, then `sent`
    // bytes of it `gap` apart; the status line and when it came.
    let upload = |path: &str, length: usize, sent: usize, gap: Duration| {
        let mut stream = connect(port);
        let started = Instant::now();
        write!(stream, "POST {path} HTTP/1.1\r\nHost: uploads\r\nContent-Length: {length}\r\n\r\n").unwrap();
        for _ in 0..sent {
            std::thread::sleep(gap);
            stream.write_all(b"x").unwrap();
        }
        let answer = read_until(&mut stream, head_ended);
        (status_line(&String::from_utf8_lossy(&answer)).to_string(), started.elapsed())
    };
    // Eight bytes 400 ms apart: 3.2 s of upload, past the 2 s timeout with
    // no gap near it. The worker answers once it has read the whole body.
    let (status, took) = upload("/up", 8, 8, Duration::from_millis(400));
    assert_eq!(status, "HTTP/1.1 200 OK", "after {took:?}");
    // Three bytes of a hundred, then nothing.
    let (status, took) = upload("/up", 100, 3, Duration::from_millis(10));
    assert_eq!(status, "HTTP/1.1 408 Request Timeout", "after {took:?}");
    assert!(took >= Duration::from_secs(2) && took < Duration::from_secs(10), "408 after {took:?}");
    let (status, took) = upload("/fn", 100, 3, Duration::from_millis(10));
    assert_eq!(status, "HTTP/1.1 408 Request Timeout", "after {took:?}");
    assert!(took >= Duration::from_secs(2) && took < Duration::from_secs(10), "408 after {took:?}");
    let proxy_log = stack.dir.path().join(".lbctl/run/lb/front/proxy.log");
    let stalled = wait_for("the 408s in the proxy's log", Duration::from_secs(10), || {
        let log = std::fs::read_to_string(&proxy_log).ok()?;
        let lines: Vec<String> = log.lines().filter(|it| it.contains(" 408 POST ")).map(String::from).collect();
        (lines.len() == 2).then_some(lines)
    });
    for line in &stalled {
        assert!(line.contains("the client sent no more of its request body within the idle timeout (2s)"), "{line}");
    }
    let access_log = stack.dir.path().join(".lbctl/logs/front/access.log");
    let codes = wait_for("three uploads in the access log", Duration::from_secs(10), || {
        let log = std::fs::read_to_string(&access_log).ok()?;
        let codes: Vec<String> = log
            .lines()
            .filter(|it| it.contains("\"POST "))
            .map(|it| it.split(' ').nth(8).unwrap_or("").to_string())
            .collect();
        (codes.len() == 3).then_some(codes)
    });
    assert_eq!(codes, ["200", "408", "408"]);
}

/// A target on loopback that answers `GET /health` with 200 and any other
/// request with a body of `length` bytes of which it sends `sent`, one
/// every `gap`, then keeps the connection open and silent; its port.
fn dripping_target(length: usize, sent: usize, gap: Duration) -> u16 {
    let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            std::thread::spawn(move || {
                let head = read_until(&mut stream, head_ended);
                if !head_ended(&head) {
                    return;
                }
                if head.starts_with(b"GET /health ") {
                    let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n");
                    return;
                }
                let _ = write!(stream, "HTTP/1.1 200 OK\r\nContent-Length: {length}\r\n\r\n");
                for _ in 0..sent {
                    std::thread::sleep(gap);
                    if stream.write_all(b"x").is_err() {
                        return;
                    }
                }
                // Silent, open, until the proxy closes it.
                read_until(&mut stream, |_| false);
            });
        }
    });
    port
}

/// AWS's idle timeout is time without data, in answers too: a response
/// that keeps coming for far longer than it (a download, a stream of
/// events) reaches the client whole; one whose target stops sending is cut
/// off once the idle timeout passes (and the closing connection's grace).
#[test]
fn a_response_that_keeps_coming_is_not_cut_off_and_a_stalled_one_is() {
    let (port, dripping) = (free_port(), dripping_target(33, 33, Duration::from_millis(400)));
    let (stalled_port, stalled) = (free_port(), dripping_target(100, 3, Duration::from_millis(10)));
    let group = |name: &str, target: u16| {
        format!(
            "  {name}:\n    target_type: ip\n    protocol: HTTP\n    port: {target}\n    targets: [{{ ip: 127.0.0.1 }}]\n    \
             health_check: {{ path: /health, interval: 500ms, timeout: 400ms, healthy_threshold: 2, unhealthy_threshold: 2 }}\n"
        )
    };
    let stack = Stack::new(&format!(
        "version: 1
name: answers
load_balancers:
  front:
    type: application
    idle_timeout: 2s
    listeners:
      - {{ port: {port}, protocol: HTTP, default_action: {{ forward: dripping }} }}
      - {{ port: {stalled_port}, protocol: HTTP, default_action: {{ forward: stalled }} }}
target_groups:
{}{}",
        group("dripping", dripping),
        group("stalled", stalled)
    ));
    stack.apply();
    // Reads an answer to its end or to the proxy's close: the bytes after
    // the head, and when the read ended.
    let fetch = |port: u16| {
        let mut stream = connect(port);
        stream.set_read_timeout(Some(Duration::from_secs(40))).unwrap();
        let started = Instant::now();
        stream.write_all(b"GET /download HTTP/1.1\r\nHost: answers\r\n\r\n").unwrap();
        let answer = read_until(&mut stream, |read| {
            let head_end = read.windows(4).position(|it| it == b"\r\n\r\n");
            head_end.is_some_and(|at| read.len() - at - 4 >= 33)
        });
        let text = String::from_utf8_lossy(&answer).into_owned();
        let body = text.split_once("\r\n\r\n").map_or(String::new(), |it| it.1.to_string());
        (status_line(&text).to_string(), body, started.elapsed())
    };
    let healthy = |port: u16| {
        wait_for("a healthy target", Duration::from_secs(20), || {
            curl(&format!("http://127.0.0.1:{port}/health"), &[]).filter(|it| it.status == 200)
        })
    };
    healthy(port);
    healthy(stalled_port);
    let stalled_answer = std::thread::spawn(move || fetch(stalled_port));
    // 33 bytes, 400 ms apart: 13 s, past the idle timeout and a closing
    // connection's grace together.
    let (status, body, took) = fetch(port);
    assert_eq!(status, "HTTP/1.1 200 OK", "after {took:?}");
    assert_eq!(body, "x".repeat(33), "after {took:?}");
    assert!(took > Duration::from_secs(12), "the download took {took:?}");
    let (status, body, took) = stalled_answer.join().unwrap();
    assert_eq!((status.as_str(), body.as_str()), ("HTTP/1.1 200 OK", "xxx"), "after {took:?}");
    assert!(took < Duration::from_secs(30), "a stalled answer was cut off after {took:?}");
}
