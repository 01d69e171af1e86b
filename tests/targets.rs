//! Target groups beyond plain forwarding, through the real binary: Lambda
//! targets (a Python handler), stickiness, the algorithms, slow start, and
//! every target health state in `lbctl status --json`. Fixed workers
//! (`lbctl worker --id a|b|c`) are `ip` targets, so each answer names its
//! target.

use std::collections::BTreeMap;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::util::*;

/// How long targets may take to become healthy on a loaded machine.
const HEALTHY: Duration = Duration::from_secs(30);

/// Fast health checks for the groups of these tests.
const FAST_CHECKS: &str =
    "health_check: { path: /health, interval: 300ms, timeout: 250ms, healthy_threshold: 2, unhealthy_threshold: 2 }";

/// Workers started by a test, killed when it ends however it ends.
struct Workers {
    children: BTreeMap<String, Child>,
    ports: BTreeMap<String, u16>,
}

impl Workers {
    /// Workers named `names`, each on its own free port, listening.
    fn start(names: &[&str]) -> Workers {
        let mut workers = Workers { children: BTreeMap::new(), ports: BTreeMap::new() };
        for name in names {
            workers.ports.insert(name.to_string(), free_port());
            workers.launch(name);
        }
        workers
    }

    /// A free port reserved for a worker started later with `launch`.
    fn reserve(&mut self, name: &str) -> u16 {
        let port = free_port();
        self.ports.insert(name.to_string(), port);
        port
    }

    /// Starts worker `name` on its port and waits until it answers.
    fn launch(&mut self, name: &str) {
        let port = self.ports[name];
        let child = spawn_worker(name, port);
        self.children.insert(name.to_string(), child);
        let health = format!("http://127.0.0.1:{port}/health");
        wait_for("a worker to listen", Duration::from_secs(20), || curl(&health, &[]));
    }

    /// Kills worker `name` and waits for it to be gone.
    fn kill(&mut self, name: &str) {
        if let Some(mut child) = self.children.remove(name) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The spec text of worker `name` as an `ip` target.
    fn target(&self, name: &str) -> String {
        format!("{{ ip: 127.0.0.1, port: {} }}", self.ports[name])
    }

    /// The target id the load balancer knows worker `name` by.
    fn id(&self, name: &str) -> String {
        format!("127.0.0.1:{}", self.ports[name])
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for child in self.children.values_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs curl with `args` (URL globs like `[1-20]` make many requests over
/// one keep-alive connection) and returns its stdout lines.
fn curl_lines(args: &[&str]) -> Vec<String> {
    let output = Command::new("curl").args(["-sS", "--max-time", "60"]).args(args).output().unwrap();
    assert!(output.status.success(), "curl {args:?} failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).lines().map(str::to_string).collect()
}

/// The targets answering `count` requests to `url` made by one curl
/// without cookies, counted per worker name.
fn answers(url: &str, count: usize) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    let glob = format!("{url}?n=[1-{count}]");
    for id in curl_lines(&["-o", "/dev/null", "-w", "%header{x-instance-id}\\n", &glob]) {
        *counts.entry(id).or_insert(0) += 1;
    }
    counts
}

/// The status of one resource as `lbctl status --json` reports it.
fn live(stack: &Stack, address: &str) -> Value {
    let status = stack.status();
    let resources = status["resources"].as_array().unwrap();
    resources.iter().find(|it| it["address"] == address).map(|it| it["live"].clone()).unwrap_or(Value::Null)
}

/// `(target group, id) -> (state, reason, requests)` of the load balancer `public`.
fn lb_targets(stack: &Stack) -> BTreeMap<(String, String), (String, String, u64)> {
    let live = live(stack, "load_balancer.public");
    live["targets"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|it| {
            let key = (it["target_group"].as_str().unwrap().to_string(), it["id"].as_str().unwrap().to_string());
            let state = it["state"].as_str().unwrap().to_string();
            (key, (state, it["reason"].as_str().unwrap().to_string(), it["requests"].as_u64().unwrap()))
        })
        .collect()
}

/// Waits until every `(group, id)` listed has `state` at the load balancer.
fn wait_states(stack: &Stack, expect: &[(&str, &str, &str)]) -> BTreeMap<(String, String), (String, String, u64)> {
    wait_for(&format!("target states {expect:?}"), HEALTHY, || {
        let targets = lb_targets(stack);
        let all = expect.iter().all(|(group, id, state)| {
            targets.get(&(group.to_string(), id.to_string())).is_some_and(|it| it.0 == *state)
        });
        all.then_some(targets)
    })
}

/// A stack with one load balancer `public` on a free port whose default
/// action forwards to `default_group`, plus `rules`, `target_groups` and
/// `functions` (YAML bodies, indented as in the file).
fn stack(name: &str, default_group: &str, rules: &str, target_groups: &str, functions: &str) -> (Stack, String) {
    let port = free_port();
    let spec = format!(
        "version: 1\nname: {name}\nload_balancers:\n  public:\n    type: application\n    listeners:\n      - port: {port}\n        protocol: HTTP\n        default_action: {{ forward: {default_group} }}\n        rules:{rules}\ntarget_groups:\n{target_groups}\n{functions}"
    );
    (Stack::new(&spec), format!("http://127.0.0.1:{port}"))
}

/// The Python handler of the Lambda test: `handler.py MODE`.
const HANDLER: &str = r#"
import base64, json, os, sys, time

mode = sys.argv[1]
event = json.load(sys.stdin)
if mode == "slow":
    time.sleep(30)
elif mode == "crash":
    raise RuntimeError("the handler crashed")
elif mode == "garbage":
    print("this is not a response document")
elif mode == "binary":
    body = base64.b64encode(bytes(range(256))).decode()
    print(json.dumps({"statusCode": 200, "headers": {"content-type": "application/octet-stream"},
                      "body": body, "isBase64Encoded": True}))
else:
    body = event["body"]
    if event["isBase64Encoded"]:
        body = base64.b64decode(body).decode()
    answer = {
        "method": event["httpMethod"], "path": event["path"], "query": event["queryStringParameters"],
        "host": event["headers"].get("host"), "forwarded_for": event["headers"].get("x-forwarded-for"),
        "user": event["headers"].get("x-user"), "trace": event["headers"].get("x-amzn-trace-id"),
        "body": body, "base64": event["isBase64Encoded"],
        "arn": event["requestContext"]["elb"]["targetGroupArn"],
        "greeting": os.environ.get("GREETING"), "cwd": os.getcwd(),
    }
    print(json.dumps({"statusCode": 201, "statusDescription": "201 Created",
                      "headers": {"content-type": "application/json", "x-handler": "python"},
                      "multiValueHeaders": {"set-cookie": ["a=1", "b=2"]},
                      "body": json.dumps(answer), "isBase64Encoded": False}))
"#;

#[test]
fn lambda_targets_answer_from_a_python_handler() {
    let rules = r#"
          - { priority: 10, conditions: { path_pattern: ["/slow"] }, action: { forward: slow } }
          - { priority: 20, conditions: { path_pattern: ["/crash"] }, action: { forward: crash } }
          - { priority: 30, conditions: { path_pattern: ["/garbage"] }, action: { forward: garbage } }
          - { priority: 40, conditions: { path_pattern: ["/binary"] }, action: { forward: binary } }"#;
    let mut groups = String::new();
    let mut functions = String::from("functions:\n");
    for (name, timeout) in [("echo", "10s"), ("slow", "1s"), ("crash", "10s"), ("garbage", "10s"), ("binary", "10s")] {
        groups.push_str(&format!("  {name}: {{ target_type: lambda, targets: [{{ function: {name} }}] }}\n"));
        functions.push_str(&format!(
            "  {name}: {{ command: [python3, handler.py, {name}], timeout: {timeout}, env: {{ GREETING: hi }} }}\n"
        ));
    }
    let (stack, url) = stack("lambdas", "echo", rules, &groups, &functions);
    std::fs::write(stack.dir.path().join("handler.py"), HANDLER).unwrap();
    stack.apply();
    stack.lbctl(&["plan", "--detailed-exitcode"]).expect_code(0);

    // The request becomes the event; the response document becomes the answer.
    let response =
        curl_with(&format!("{url}/echo/a?x=1&y=two"), &["X-User: u1", "Content-Type: text/plain"], &["-d", "hello"])
            .unwrap();
    assert_eq!(response.status, 201, "{}", response.body);
    assert_eq!(response.headers["x-handler"], "python");
    assert_eq!(response.headers["content-type"], "application/json");
    let answer: Value = serde_json::from_str(&response.body).unwrap();
    let cwd = stack.dir.path().canonicalize().unwrap();
    assert_eq!(answer["method"], "POST");
    assert_eq!(answer["path"], "/echo/a");
    assert_eq!(answer["query"], serde_json::json!({ "x": "1", "y": "two" }));
    assert_eq!(answer["host"], url.trim_start_matches("http://"));
    assert_eq!(answer["forwarded_for"], "127.0.0.1");
    // The function gets the request's trace id, as a target does.
    assert!(answer["trace"].as_str().is_some_and(|it| it.starts_with("Root=1-") && it.len() == 40), "{answer}");
    assert_eq!((&answer["user"], &answer["body"], &answer["base64"]), (&"u1".into(), &"hello".into(), &false.into()));
    assert!(answer["arn"].as_str().unwrap().starts_with("arn:aws:elasticloadbalancing:"), "{answer}");
    assert_eq!((&answer["greeting"], answer["cwd"].as_str().unwrap()), (&"hi".into(), cwd.to_str().unwrap()));
    let head = curl_lines(&["-D", "-", "-o", "/dev/null", &format!("{url}/echo")]);
    assert!(head[0].starts_with("HTTP/1.1 201 Created"), "{head:?}");
    assert!(
        head.iter().any(|it| it.trim() == "set-cookie: a=1") && head.iter().any(|it| it.trim() == "set-cookie: b=2")
    );

    // A binary body goes through base64 both ways.
    let binary = Command::new("curl").args(["-sS", &format!("{url}/binary")]).output().unwrap();
    assert_eq!(binary.stdout, (0..=255u8).collect::<Vec<u8>>());
    let upload = curl_with(&format!("{url}/echo"), &["Content-Type: application/octet-stream"], &["-d", "raw"]);
    let answer: Value = serde_json::from_str(&upload.unwrap().body).unwrap();
    assert_eq!((&answer["body"], &answer["base64"]), (&"raw".into(), &true.into()));

    // The function's timeout gives 504, a crash or a broken document 502,
    // and the load balancer keeps serving.
    let started = Instant::now();
    let slow = curl(&format!("{url}/slow"), &[]).unwrap();
    assert_eq!(slow.status, 504, "{}", slow.body);
    assert!(started.elapsed() >= Duration::from_secs(1) && started.elapsed() < Duration::from_secs(10));
    assert_eq!(curl(&format!("{url}/crash"), &[]).unwrap().status, 502);
    assert_eq!(curl(&format!("{url}/garbage"), &[]).unwrap().status, 502);
    assert_eq!(curl(&format!("{url}/echo"), &[]).unwrap().status, 201);

    // Functions are not health-checked: healthy with no reason, no address.
    let live = live(&stack, "load_balancer.public");
    let echo = live["targets"].as_array().unwrap().iter().find(|it| it["target_group"] == "echo").unwrap().clone();
    assert_eq!(
        (&echo["id"], &echo["state"], &echo["reason"], &echo["address"]),
        (&"echo".into(), &"healthy".into(), &"".into(), &"lambda".into())
    );
}

#[test]
fn stickiness_pins_a_client_while_cookieless_clients_spread() {
    let mut workers = Workers::start(&["a", "b", "c"]);
    let targets = ["a", "b", "c"].map(|it| workers.target(it)).join(", ");
    let groups = format!(
        "  web: {{ protocol: HTTP, target_type: ip, targets: [{targets}], {FAST_CHECKS}, stickiness: {{ enabled: true, duration: 1h }} }}\n"
    );
    let (stack, url) = stack("sticky", "web", " []", &groups, "");
    stack.apply();
    let ids = ["a", "b", "c"].map(|it| workers.id(it));
    wait_states(&stack, &ids.iter().map(|id| ("web", id.as_str(), "healthy")).collect::<Vec<_>>());

    // The load balancer sets its cookie: opaque, with the group's duration.
    let response = curl(&url, &[]).unwrap();
    let cookie = &response.headers["set-cookie"];
    assert!(cookie.starts_with("AWSALB=") && cookie.ends_with("; Max-Age=3600; Path=/"), "{cookie}");
    assert!(!cookie.contains("127.0.0.1") && !cookie.contains(&workers.ports["a"].to_string()), "{cookie}");

    // A client keeping its cookies stays on one target for 20 requests...
    let jar = stack.dir.path().join("cookies.txt");
    let jar = jar.to_str().unwrap();
    let glob = format!("{url}/?n=[1-20]");
    let pinned = curl_lines(&["-b", "", "-c", jar, "-o", "/dev/null", "-w", "%header{x-instance-id}\\n", &glob]);
    assert_eq!(pinned.len(), 20);
    assert!(pinned.iter().all(|it| *it == pinned[0]), "{pinned:?}");
    // ...while clients without cookies spread over all of them.
    let spread = answers(&format!("{url}/"), 21);
    assert_eq!(spread.len(), 3, "{spread:?}");

    // When the pinned target stops being routable, the client moves to
    // another one and stays there.
    let pinned_name = pinned[0].clone();
    workers.kill(&pinned_name);
    wait_states(&stack, &[("web", workers.id(&pinned_name).as_str(), "unhealthy")]);
    let glob = format!("{url}/?n=[1-10]");
    let moved = curl_lines(&["-b", jar, "-c", jar, "-o", "/dev/null", "-w", "%header{x-instance-id}\\n", &glob]);
    assert!(moved.iter().all(|it| *it == moved[0] && *it != pinned_name), "{moved:?} after {pinned_name} died");
}

#[test]
fn least_outstanding_requests_prefers_the_idle_target() {
    let workers = Workers::start(&["a", "b"]);
    let targets = ["a", "b"].map(|it| workers.target(it)).join(", ");
    let groups = format!(
        "  web: {{ protocol: HTTP, target_type: ip, targets: [{targets}], {FAST_CHECKS}, algorithm: least_outstanding_requests }}\n"
    );
    let (stack, url) = stack("lor", "web", " []", &groups, "");
    stack.apply();
    let ids = ["a", "b"].map(|it| workers.id(it));
    wait_states(&stack, &ids.iter().map(|id| ("web", id.as_str(), "healthy")).collect::<Vec<_>>());

    // One slow request keeps a target busy...
    let slow_url = format!("{url}/slow?sleep=8000");
    let slow = std::thread::spawn(move || curl(&slow_url, &[]).unwrap());
    wait_for("the slow request to be in flight", Duration::from_secs(5), || {
        (lb_targets(&stack).values().map(|it| it.2).sum::<u64>() == 1).then_some(())
    });
    // ...so every quick request goes to the other one.
    let quick = answers(&format!("{url}/quick"), 10);
    let slow = slow.join().unwrap();
    assert_eq!(slow.status, 200);
    let busy = &slow.headers["x-instance-id"];
    assert_eq!(quick.len(), 1, "{quick:?}");
    assert!(!quick.contains_key(busy), "quick requests {quick:?} went to the busy target {busy}");
    // Idle again: both targets serve.
    assert_eq!(answers(&format!("{url}/quick"), 10).len(), 2);
}

#[test]
fn weighted_random_spreads_requests() {
    let workers = Workers::start(&["a", "b", "c"]);
    let targets = ["a", "b", "c"].map(|it| workers.target(it)).join(", ");
    let groups = format!(
        "  web: {{ protocol: HTTP, target_type: ip, targets: [{targets}], {FAST_CHECKS}, algorithm: weighted_random }}\n"
    );
    let (stack, url) = stack("random", "web", " []", &groups, "");
    stack.apply();
    let ids = ["a", "b", "c"].map(|it| workers.id(it));
    wait_states(&stack, &ids.iter().map(|id| ("web", id.as_str(), "healthy")).collect::<Vec<_>>());
    let counts = answers(&format!("{url}/"), 150);
    // 50 expected each; fewer than 20 is a one-in-a-million draw.
    assert_eq!(counts.len(), 3, "{counts:?}");
    assert!(counts.values().all(|it| *it >= 20), "{counts:?}");
    // Not round robin in disguise: some target answers twice in a row.
    let sequence = curl_lines(&["-o", "/dev/null", "-w", "%header{x-instance-id}\\n", &format!("{url}/?n=[1-30]")]);
    assert!(sequence.windows(2).any(|it| it[0] == it[1]), "{sequence:?}");
}

#[test]
fn slow_start_ramps_a_new_target_up() {
    let mut workers = Workers::start(&["a"]);
    workers.reserve("b");
    let targets = ["a", "b"].map(|it| workers.target(it)).join(", ");
    let groups =
        format!("  web: {{ protocol: HTTP, target_type: ip, targets: [{targets}], {FAST_CHECKS}, slow_start: 6s }}\n");
    let (stack, url) = stack("slowstart", "web", " []", &groups, "");
    stack.apply();
    let (a, b) = (workers.id("a"), workers.id("b"));
    wait_states(&stack, &[("web", &a, "healthy"), ("web", &b, "unhealthy")]);

    // b comes up while a serves: it starts with a small share...
    workers.launch("b");
    wait_states(&stack, &[("web", &b, "healthy")]);
    let healthy_at = Instant::now();
    let share_of_b = || {
        let counts = answers(&format!("{url}/"), 100);
        counts.get("b").copied().unwrap_or(0) as f64 / counts.values().sum::<usize>() as f64
    };
    let early = share_of_b();
    assert!(early < 0.35, "b got {early:.2} of the requests right after becoming healthy");
    // ...that grows to its full half over the 6 s period, not at once.
    let ramped = wait_for("b to get its full share", Duration::from_secs(30), || {
        (share_of_b() >= 0.42).then(|| healthy_at.elapsed())
    });
    eprintln!("slow start: b's early share {early:.2}, full share after {ramped:?}");
    assert!(ramped >= Duration::from_secs(3), "b reached its full share after {ramped:?}, early share {early:.2}");
}

#[test]
fn every_target_state_shows_in_status() {
    let workers = Workers::start(&["a", "c"]);
    let dead = free_port();
    let (a, c) = (workers.target("a"), workers.target("c"));
    let rules = r#"
          - { priority: 10, conditions: { path_pattern: ["/late/*"] }, action: { forward: late } }
          - { priority: 20, conditions: { path_pattern: ["/drain/*"] }, action: { forward: drain } }"#;
    let groups = format!(
        "  web: {{ protocol: HTTP, target_type: ip, targets: [{a}, {{ ip: 127.0.0.1, port: {dead} }}], {FAST_CHECKS} }}
  late:
    protocol: HTTP
    target_type: ip
    targets: [{a}]
    health_check: {{ path: /health, interval: 60s, timeout: 5s, healthy_threshold: 5 }}
  drain: {{ protocol: HTTP, target_type: ip, targets: [{c}], {FAST_CHECKS}, deregistration_delay: 60s }}
  spare: {{ protocol: HTTP, target_type: ip, targets: [{a}] }}
"
    );
    let (stack, url) = stack("states", "web", rules, &groups, "");
    stack.apply();
    let (a_id, c_id, dead_id) = (workers.id("a"), workers.id("c"), format!("127.0.0.1:{dead}"));
    wait_states(&stack, &[("web", &a_id, "healthy"), ("web", &dead_id, "unhealthy"), ("drain", &c_id, "healthy")]);

    // A request in flight to c keeps it draining after it is deregistered.
    let slow_url = format!("{url}/drain/x?sleep=8000");
    let slow = std::thread::spawn(move || curl(&slow_url, &[]).unwrap());
    wait_for("the request to c to be in flight", Duration::from_secs(5), || {
        lb_targets(&stack).get(&("drain".to_string(), c_id.clone())).is_some_and(|it| it.2 == 1).then_some(())
    });
    stack.edit(&format!("targets: [{c}]"), "targets: []");
    stack.apply();
    let targets = wait_states(&stack, &[("drain", &c_id, "draining")]);

    let state = |group: &str, id: &str| targets[&(group.to_string(), id.to_string())].clone();
    // A new target is `initial`: registering, then (its first check
    // passed, four more to go) in its initial health checks, as on AWS.
    let (initial, reason, _) = state("late", &a_id);
    assert_eq!(initial, "initial");
    assert!(
        [
            "Elb.RegistrationInProgress: target registration is in progress",
            "Elb.InitialHealthChecking: initial health checks in progress"
        ]
        .contains(&reason.as_str()),
        "{reason}"
    );
    wait_for("the late target's initial checks", Duration::from_secs(10), || {
        let (state, reason, _) = lb_targets(&stack).get(&("late".to_string(), a_id.clone())).cloned()?;
        (state == "initial" && reason == "Elb.InitialHealthChecking: initial health checks in progress").then_some(())
    });
    assert_eq!(state("web", &a_id).0, "healthy");
    assert!(state("web", &a_id).1.is_empty());
    let (unhealthy, reason, _) = state("web", &dead_id);
    assert_eq!(unhealthy, "unhealthy");
    assert!(reason.starts_with("Target.FailedHealthChecks"), "{reason}");
    assert_eq!(state("drain", &c_id).1, "Target.DeregistrationInProgress: target deregistration is in progress");

    // The group no load balancer routes to: its registered targets are unused.
    let spare = live(&stack, "target_group.spare");
    assert_eq!(spare["targets"].as_array().unwrap().len(), 1, "{spare}");
    let unused = &spare["targets"][0];
    assert_eq!((&unused["id"], &unused["state"]), (&a_id.as_str().into(), &"unused".into()));
    assert_eq!(unused["reason"], "Target.NotInUse: target group is not used by any load balancer");
    let text = stack.lbctl(&["status"]).expect_code(0).stdout;
    for state in ["initial", "healthy", "unhealthy", "draining", "unused"] {
        assert!(text.contains(state), "`lbctl status` shows no {state} target:\n{text}");
    }

    // The in-flight request finishes while its target drains.
    let finished = slow.join().unwrap();
    assert_eq!((finished.status, finished.headers["x-instance-id"].as_str()), (200, "c"));
}

/// An upgrade target in the test: answers health checks, switches a
/// `Upgrade: websocket` request to an echo that upper-cases what it gets,
/// and says which `Upgrade` and `X-Forwarded-For` it was sent. Stops when
/// dropped.
struct UpgradeTarget {
    port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl UpgradeTarget {
    fn start() -> UpgradeTarget {
        use std::io::{BufRead, BufReader, Read, Write};
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        let serve = move |stream: std::net::TcpStream| {
            stream.set_nonblocking(false).unwrap();
            stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut head = Vec::new();
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                head.push(line.trim_end().to_string());
            }
            let field = |name: &str| {
                head.iter().find_map(|it| {
                    let (key, value) = it.split_once(':')?;
                    key.eq_ignore_ascii_case(name).then(|| value.trim().to_string())
                })
            };
            let mut out = stream;
            if field("upgrade").is_some_and(|it| it.eq_ignore_ascii_case("websocket")) {
                let seen = format!(
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nx-seen-upgrade: {}\r\nx-seen-forwarded-for: {}\r\n\r\n",
                    field("upgrade").unwrap_or_default(),
                    field("x-forwarded-for").unwrap_or_default()
                );
                out.write_all(seen.as_bytes()).unwrap();
                let mut buf = [0u8; 1024];
                while let Ok(n) = reader.read(&mut buf) {
                    if n == 0 || out.write_all(&buf[..n].to_ascii_uppercase()).is_err() {
                        break;
                    }
                }
            } else {
                let _ = out.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n");
            }
        };
        let thread = std::thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        std::thread::spawn(move || serve(stream));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        UpgradeTarget { port, stop, thread: Some(thread) }
    }
}

impl Drop for UpgradeTarget {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A WebSocket goes through as on AWS: the `Upgrade` reaches the target,
/// its 101 reaches the client, then bytes flow both ways on the one
/// connection; the request is logged with its 101.
#[test]
fn a_websocket_switches_protocols_through_the_load_balancer() {
    use std::io::{Read, Write};
    let target = UpgradeTarget::start();
    let port = free_port();
    let stack = Stack::new(&format!(
        "version: 1
name: websocket
load_balancers:
  public:
    type: application
    access_logs: true
    listeners:
      - {{ port: {port}, protocol: HTTP, default_action: {{ forward: chat }} }}
target_groups:
  chat: {{ protocol: HTTP, target_type: ip, targets: [{{ ip: 127.0.0.1, port: {} }}], {FAST_CHECKS}, deregistration_delay: 1s }}
",
        target.port
    ));
    stack.apply();
    let mut client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    client.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    client
        .write_all(b"GET /chat HTTP/1.1\r\nHost: chat.example\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(client.read(&mut byte).unwrap(), 1, "closed in the head: {}", String::from_utf8_lossy(&head));
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101 "), "{head}");
    assert!(head.contains("upgrade: websocket") && head.contains("x-seen-upgrade: websocket"), "{head}");
    assert!(head.contains("x-seen-forwarded-for: 127.0.0.1"), "{head}");
    let exchange = |client: &mut std::net::TcpStream, message: &str| {
        client.write_all(message.as_bytes()).unwrap();
        let mut echoed = vec![0u8; message.len()];
        client.read_exact(&mut echoed).unwrap();
        assert_eq!(echoed, message.to_ascii_uppercase().as_bytes());
    };
    exchange(&mut client, "hello");
    // Quiet past the header timeout: the tunnel's bytes are not a request
    // head, so it stays open (a read that times out, not one that ends).
    client.set_read_timeout(Some(HEADER_READ_TIMEOUT + Duration::from_secs(1))).unwrap();
    let quiet = client.read(&mut byte);
    assert!(
        matches!(&quiet, Err(err) if matches!(err.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)),
        "{quiet:?}"
    );
    client.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    exchange(&mut client, "and again");
    // Deregistered, the target's tunnels end once it has drained.
    stack.edit(&format!("targets: [{{ ip: 127.0.0.1, port: {} }}]", target.port), "targets: []");
    stack.apply();
    let ended = client.read(&mut byte);
    assert!(matches!(ended, Ok(0)), "{ended:?}");
    drop(client);
    let log = stack.dir.path().join(".lbctl/logs/public/access.log");
    let line = wait_for("the upgrade's log line", Duration::from_secs(10), || {
        std::fs::read_to_string(&log)
            .ok()?
            .lines()
            .find(|it| it.contains("GET http://chat.example:"))
            .map(str::to_string)
    });
    assert!(line.contains(" 101 101 "), "{line}");
}
