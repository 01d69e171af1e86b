//! TLS, HTTP/2 and gRPC: HTTPS listeners with the generated certificate
//! (`curl --cacert`), HTTP/2 through ALPN and h2c, HTTPS and HTTP/2 target
//! groups, and real gRPC calls (Python `grpcio`) through the load balancer.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::util::*;

/// `curl` over HTTPS trusting `ca`, with extra curl arguments; `None` when
/// curl fails (cannot connect, or the certificate is not trusted).
fn curl_tls(url: &str, ca: &Path, extra: &[&str]) -> Option<Response> {
    curl_with(url, &[], &[&["--cacert", ca.to_str().unwrap()], extra].concat())
}

/// The HTTP version curl used for `url` (`%{http_version}`: `1.1`, `2`).
fn http_version(url: &str, extra: &[&str]) -> String {
    let output = Command::new("curl")
        .args(["-sS", "--max-time", "10", "-o", "/dev/null", "-w", "%{http_version}", url])
        .args(extra)
        .output()
        .expect("curl is installed");
    assert!(output.status.success(), "curl {url}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn instance_ids(stack: &Stack, group: &str) -> BTreeSet<String> {
    stack.instances(group).iter().map(|it| it["id"].as_str().unwrap().to_string()).collect()
}

#[test]
fn https_listeners_http2_and_tls_targets() {
    let (https_port, http_port, checked_port, health_port) = (free_port(), free_port(), free_port(), free_port());
    // A fixed target whose health is checked on another port (a second
    // worker), to show that `health_check.port` is used.
    let _workers = FixedWorkers::start(&[checked_port, health_port]);
    let spec = format!(
        r#"version: 1
name: tls
load_balancers:
  public:
    type: application
    listeners:
      - port: {https_port}
        protocol: HTTPS
        certificate: self_signed
        default_action: {{ forward: web }}
        rules:
          - {{ priority: 10, conditions: {{ path_pattern: ["/secure/*"] }}, action: {{ forward: secure }} }}
          - {{ priority: 20, conditions: {{ path_pattern: ["/h2/*"] }}, action: {{ forward: h2 }} }}
          - {{ priority: 30, conditions: {{ path_pattern: ["/checked/*"] }}, action: {{ forward: checked }} }}
      - port: {http_port}
        protocol: HTTP
        default_action: {{ forward: web }}
        rules:
          - {{ priority: 20, conditions: {{ path_pattern: ["/h2/*"] }}, action: {{ forward: h2c }} }}
target_groups:
  web:
    port: {web_port}
    health_check: {{ path: /health, interval: 500ms, timeout: 400ms, healthy_threshold: 2 }}
    deregistration_delay: 1s
  secure:
    protocol: HTTPS
    port: {secure_port}
    health_check: {{ path: /health, interval: 500ms, timeout: 400ms, healthy_threshold: 2 }}
    deregistration_delay: 1s
  h2:
    protocol: HTTPS
    protocol_version: HTTP2
    port: {secure_port}
    health_check: {{ path: /health, interval: 500ms, timeout: 400ms, healthy_threshold: 2 }}
    deregistration_delay: 1s
  h2c:
    protocol_version: HTTP2
    port: {web_port}
    health_check: {{ path: /health, interval: 500ms, timeout: 400ms, healthy_threshold: 2 }}
    deregistration_delay: 1s
  checked:
    target_type: ip
    port: {checked_port}
    targets: [{{ ip: 127.0.0.1 }}]
    health_check: {{ port: {health_port}, path: /health, interval: 300ms, timeout: 250ms, healthy_threshold: 2, unhealthy_threshold: 2 }}
    deregistration_delay: 1s
autoscaling_groups:
  web:
    min_size: 2
    max_size: 2
    target_groups: [web, h2c]
    launch_template: {{ command: ["lbctl", "worker"] }}
  secure:
    min_size: 1
    max_size: 1
    target_groups: [secure, h2]
    launch_template: {{ command: ["lbctl", "worker", "--tls"] }}
"#,
        web_port = free_port(),
        secure_port = free_port(),
    );
    let stack = Stack::new(&spec);
    let applied = stack.apply();
    let outputs = Stack::outputs(&applied);
    let ca = Path::new(&outputs["public_ca_cert"]).to_path_buf();
    assert!(ca.is_absolute() && ca.is_file(), "{outputs:?}");
    let dns = outputs["public_dns_name"].clone();
    assert_eq!(dns, "public.tls.elb.localhost");
    let https = format!("https://{dns}:{https_port}");
    let (web, secure) = (instance_ids(&stack, "web"), instance_ids(&stack, "secure"));

    // The generated certificate is trusted through the CA file, for the DNS
    // name, localhost and 127.0.0.1, and only through it.
    let mut seen = BTreeSet::new();
    for _ in 0..8 {
        let response = curl_tls(&format!("{https}/hello"), &ca, &[]).expect("curl --cacert reaches the listener");
        assert_eq!(response.status, 200, "{response:?}");
        assert_eq!(response.headers["x-seen-forwarded-proto"], "https");
        assert_eq!(response.headers["x-seen-forwarded-port"], https_port.to_string());
        assert_eq!(response.headers["x-seen-host"], format!("{dns}:{https_port}"));
        seen.insert(response.headers["x-instance-id"].clone());
    }
    assert_eq!(seen, web, "requests reach every web instance");
    for host in ["localhost", "127.0.0.1"] {
        let response = curl_tls(&format!("https://{host}:{https_port}/"), &ca, &[]).unwrap();
        assert_eq!(response.status, 200, "{host}: {response:?}");
    }
    assert!(curl_with(&format!("{https}/"), &[], &[]).is_none(), "without --cacert the certificate is not trusted");

    // HTTP/2 through ALPN on HTTPS; HTTP/1.1 and h2c on plain HTTP.
    let cacert = ["--cacert", ca.to_str().unwrap()];
    assert_eq!(http_version(&format!("{https}/"), &[&["--http2"][..], &cacert].concat()), "2");
    assert_eq!(http_version(&format!("{https}/"), &[&["--http1.1"][..], &cacert].concat()), "1.1");
    let plain = format!("http://{dns}:{http_port}");
    assert_eq!(http_version(&format!("{plain}/"), &["--http2-prior-knowledge"]), "2");
    assert_eq!(http_version(&format!("{plain}/"), &[]), "1.1");
    let response = curl_with(&format!("{plain}/"), &[], &["--http2-prior-knowledge"]).unwrap();
    assert_eq!((response.status, response.headers["x-seen-forwarded-proto"].as_str()), (200, "http"));
    // An HTTP/2 client's cookies, one field each, reach an HTTP/1.1 target
    // as one Cookie (RFC 9113 §8.2.3).
    let cookies = ["-H", "Cookie: a=1", "-H", "Cookie: b=2", "--http2-prior-knowledge"];
    let response = curl_with(&format!("{plain}/"), &[], &cookies).unwrap();
    assert_eq!((response.status, response.headers["x-seen-cookie"].as_str()), (200, "a=1; b=2"), "{response:?}");

    // An HTTPS target group: TLS to `lbctl worker --tls`, checked over HTTPS.
    let response = curl_tls(&format!("{https}/secure/x"), &ca, &["--http2"]).unwrap();
    assert_eq!(response.status, 200, "{response:?}");
    assert!(secure.contains(&response.headers["x-instance-id"]), "{response:?}");
    assert_eq!(response.headers["x-seen-version"], "HTTP/1.1");
    assert!(response.body.ends_with("path=/secure/x\n"), "{}", response.body);

    // HTTP/2 to targets, over TLS (h2) and plain (h2c), whatever the client
    // speaks; the Host reaches the target as the `:authority`.
    // The client's trace reaches it with the request's id as its Self.
    let root = "Root=1-67891233-abcdef012345678912345678";
    let trace = format!("X-Amzn-Trace-Id: {root}");
    let response = curl_tls(&format!("{https}/h2/y"), &ca, &["--http1.1", "-H", &trace]).unwrap();
    assert_eq!(response.status, 200, "{response:?}");
    assert!(secure.contains(&response.headers["x-instance-id"]), "{response:?}");
    assert_eq!(response.headers["x-seen-version"], "HTTP/2");
    assert_eq!(response.headers["x-seen-host"], format!("{dns}:{https_port}"));
    let seen = &response.headers["x-seen-amzn-trace-id"];
    assert!(seen.starts_with("Self=1-") && seen.ends_with(&format!(";{root}")), "{seen}");
    let response = curl_with(&format!("{plain}/h2/z"), &[], &["--http2-prior-knowledge"]).unwrap();
    assert_eq!(response.status, 200, "{response:?}");
    assert!(web.contains(&response.headers["x-instance-id"]), "{response:?}");
    assert_eq!(response.headers["x-seen-version"], "HTTP/2");

    // A numeric health check port: the target is checked on the second
    // worker, so stopping that worker's listener makes the target unhealthy.
    let target_state = || {
        let status = stack.status();
        let resources = status["resources"].as_array().unwrap().clone();
        let group = resources.iter().find(|it| it["address"] == "target_group.checked")?.clone();
        Some(group["live"]["targets"][0]["state"].as_str()?.to_string())
    };
    wait_for("the checked target to be healthy", Duration::from_secs(20), || {
        (target_state().as_deref() == Some("healthy")).then_some(())
    });
    assert_eq!(curl_tls(&format!("{https}/checked/a"), &ca, &[]).unwrap().status, 200);
    curl_with(&format!("http://127.0.0.1:{health_port}/fault/stop-listener"), &[], &["-X", "POST"]).unwrap();
    wait_for("the checked target to be unhealthy", Duration::from_secs(20), || {
        (target_state().as_deref() == Some("unhealthy")).then_some(())
    });

    stack.lbctl(&["destroy", "--auto-approve"]).expect_code(0);
    assert!(!ca.exists(), "the generated certificate goes with the load balancer");
}

#[test]
fn grpc_target_groups_serve_real_calls() {
    let python_grpc = Command::new("python3").args(["-c", "import grpc, grpc_health.v1.health"]).output().unwrap();
    assert!(
        python_grpc.status.success(),
        "this test needs Python grpcio: pip install grpcio grpcio-health-checking (.ci/run does)"
    );
    let (https_port, http_port) = (free_port(), free_port());
    let stack = Stack::example(
        "grpc.yaml",
        &[
            ("port: 8443", &format!("port: {https_port}")),
            ("port: 8081", &format!("port: {http_port}")),
            ("port: 50051", &format!("port: {}", free_port())),
        ],
    );
    let applied = stack.apply();
    let ca = Stack::outputs(&applied)["api_ca_cert"].clone();
    let instances = instance_ids(&stack, "greeter");
    assert_eq!(instances.len(), 2);

    // Both groups' instances are healthy: the AWS-default check (gRPC status
    // 12 from /AWS.ALB/healthcheck) and the standard health service (0).
    let status = stack.status();
    for group in ["target_group.greeter", "target_group.health"] {
        let resources = status["resources"].as_array().unwrap();
        let resource = resources.iter().find(|it| it["address"] == group).unwrap();
        let states: Vec<&str> =
            resource["live"]["targets"].as_array().unwrap().iter().map(|it| it["state"].as_str().unwrap()).collect();
        assert_eq!(states, ["healthy", "healthy"], "{group}: {resource:#}");
    }

    let client = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/grpc_client.py");
    let call = |args: &[&str]| -> String {
        let output = Command::new("timeout").arg("60").arg("python3").arg(&client).args(args).output().unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "grpc_client.py {args:?}: {stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        stdout
    };
    let mut answered = BTreeSet::new();
    for (args, via) in [
        (vec![format!("127.0.0.1:{http_port}")], "h2c"),
        (vec![format!("localhost:{https_port}"), ca.clone()], "TLS"),
        (vec![format!("127.0.0.1:{https_port}"), ca.clone()], "TLS to 127.0.0.1"),
    ] {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let output = call(&args);
        let lines: Vec<&str> = output.lines().collect();
        assert_eq!(lines.len(), 3, "{via}: {output}");
        // The answer and its trailing metadata come from the same instance.
        let (answer, trailer) = lines[0].split_once(" | trailer x-instance-id=").expect(&output);
        let id = answer.strip_prefix("hello: hello grpc from ").expect(&output);
        assert_eq!(id, trailer, "{via}: {output}");
        assert!(instances.contains(id), "{via}: {output}");
        answered.insert(id.to_string());
        assert!(lines[1].starts_with("fail: NOT_FOUND nothing to fail on i-"), "{via}: {output}");
        assert_eq!(lines[2], "health: SERVING", "{via}: {output}");
    }
    assert!(!answered.is_empty());
}

#[test]
fn certificate_files_are_checked_then_served() {
    let port = free_port();
    let stack = Stack::new(&format!(
        r#"version: 1
name: files
load_balancers:
  public:
    type: application
    listeners:
      - port: {port}
        protocol: HTTPS
        certificate: {{ cert: certs/cert.pem, key: certs/key.pem }}
        default_action: {{ fixed_response: {{ status_code: 200, body: "from files" }} }}
"#
    ));
    // Missing files are a spec error, placed at the listener's certificate.
    let run = stack.lbctl(&["validate"]).expect_code(1);
    let expected = format!(
        "lbctl.yaml:9:22: load_balancers.public.listeners[0].certificate: reading {}: No such file or directory",
        stack.dir.path().join("certs/cert.pem").display()
    );
    assert!(run.stderr.contains(&expected), "{}", run.stderr);

    // Files made by openssl (an RSA key, PKCS #8) are served as they are.
    std::fs::create_dir(stack.dir.path().join("certs")).unwrap();
    let openssl = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost", "-keyout", "certs/key.pem", "-out", "certs/cert.pem"])
        .current_dir(stack.dir.path())
        .output()
        .expect("openssl is installed");
    assert!(openssl.status.success(), "{}", String::from_utf8_lossy(&openssl.stderr));
    stack.lbctl(&["validate"]).expect_code(0);
    let applied = stack.apply();
    assert!(!Stack::outputs(&applied).contains_key("public_ca_cert"), "no generated certificate");
    let response =
        curl_tls(&format!("https://localhost:{port}/"), &stack.dir.path().join("certs/cert.pem"), &["--http2"])
            .unwrap();
    assert_eq!((response.status, response.body.as_str()), (200, "from files"));
}

/// `lbctl worker` processes on fixed ports, killed when the test ends.
struct FixedWorkers(Vec<std::process::Child>);

impl FixedWorkers {
    fn start(ports: &[u16]) -> FixedWorkers {
        let mut children = Vec::new();
        for port in ports {
            let child = spawn_worker(&format!("fixed-{port}"), *port);
            children.push(child);
        }
        let workers = FixedWorkers(children);
        for port in ports {
            wait_for("a worker to listen", Duration::from_secs(20), || {
                curl(&format!("http://127.0.0.1:{port}/health"), &[])
            });
        }
        workers
    }
}

impl Drop for FixedWorkers {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
