//! Safety on a shared machine: the state and runtime files are private to
//! their user whatever the umask, the machine-wide address table refuses a
//! directory someone else could have prepared, and processes refuse runtime
//! files they cannot trust, saying so in their log and in `lbctl status`.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::util::*;

/// Every directory and file under `dir`, with its mode.
fn modes(dir: &Path, found: &mut Vec<(PathBuf, u32)>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let meta = std::fs::symlink_metadata(entry.path()).unwrap();
        found.push((entry.path(), meta.mode() & 0o7777));
        if meta.is_dir() {
            modes(&entry.path(), found);
        }
    }
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// An application load balancer with a self-signed HTTPS listener in front
/// of an auto-scaling group whose launch template holds a secret, and a
/// function.
fn secret_spec(port: u16, tls_port: u16) -> String {
    format!(
        r#"version: 1
name: private
load_balancers:
  front:
    type: application
    listeners:
      - port: {port}
        protocol: HTTP
        default_action: {{ forward: web }}
        rules:
          - {{ priority: 1, conditions: {{ path_pattern: ["/fn"] }}, action: {{ forward: fn }} }}
      - {{ port: {tls_port}, protocol: HTTPS, certificate: self_signed, default_action: {{ forward: web }} }}
target_groups:
  web:
    port: 8080
    health_check: {{ path: /health, interval: 500ms, timeout: 300ms, healthy_threshold: 2 }}
    deregistration_delay: 1s
  fn:
    target_type: lambda
    targets: [{{ function: echo }}]
functions:
  echo:
    command: ["sh", "-c", "cat >/dev/null; echo '{{\"statusCode\": 200, \"body\": \"from the function\"}}'"]
    env: {{ API_TOKEN: s3cr3t }}
autoscaling_groups:
  web:
    min_size: 1
    max_size: 1
    target_groups: [web]
    launch_template:
      command: ["lbctl", "worker", "--listen", "{{ip}}:{{port}}"]
      env: {{ DATABASE_PASSWORD: s3cr3t }}
"#
    )
}

/// `.lbctl` and everything in it are private after an apply run with umask
/// 022, including a tree an older release left readable.
#[test]
fn state_and_runtime_files_are_private_whatever_the_umask() {
    let (port, tls_port) = (free_port(), free_port());
    let stack = Stack::new(&secret_spec(port, tls_port));
    // What an older release left: a readable directory and file.
    let state_dir = stack.dir.path().join(".lbctl");
    std::fs::create_dir(&state_dir).unwrap();
    chmod(&state_dir, 0o755);
    std::fs::write(state_dir.join("leftover.log"), "old").unwrap();
    chmod(&state_dir.join("leftover.log"), 0o644);

    let mut apply = Command::new("sh");
    apply
        .args(["-c", "umask 022 && exec \"$0\" apply --auto-approve", &lbctl_exe().to_string_lossy()])
        .current_dir(stack.dir.path())
        .env("XDG_RUNTIME_DIR", runtime_dir())
        .stdin(Stdio::null());
    let run = Run::from(apply.output().unwrap()).expect_code(0);
    assert!(run.stdout.contains("front_ca_cert"), "{}", run.stdout);
    // Instance logs are written by the supervisor once the instance runs.
    wait_for("an instance log", Duration::from_secs(20), || {
        let dir = state_dir.join("run/asg/web/instances");
        std::fs::read_dir(dir).ok()?.flatten().next().map(|_| ())
    });

    assert_eq!(std::fs::metadata(&state_dir).unwrap().mode() & 0o7777, 0o700);
    let mut found = Vec::new();
    modes(&state_dir, &mut found);
    let names: Vec<String> =
        found.iter().map(|(path, _)| path.strip_prefix(&state_dir).unwrap().display().to_string()).collect();
    for expected in
        ["state.json", "lock", "run/lb/front/tls/key.pem", "run/asg/web/config.json", "run/fn/echo/function.json"]
    {
        assert!(names.iter().any(|it| it == expected), "{expected} is among {names:?}");
    }
    let open: Vec<String> = found
        .iter()
        .filter(|(path, mode)| if path.is_dir() { *mode != 0o700 } else { *mode != 0o600 && *mode != 0o700 })
        .map(|(path, mode)| format!("{} {mode:04o}", path.display()))
        .collect();
    assert!(open.is_empty(), "not private: {open:?}");
}

/// The address table's directory (`$XDG_RUNTIME_DIR/lbctl`) is refused
/// when it is a symlink, another user's, or open to others, naming it, and
/// nothing is written through it; a missing one is created private.
#[test]
fn an_unsafe_address_table_directory_is_refused() {
    let port = free_port();
    let stack = Stack::new(&format!(
        "version: 1
name: table
load_balancers:
  edge:
    type: network
    listeners: [{{ port: {port}, protocol: TCP, default_action: {{ forward: echo }} }}]
target_groups:
  echo: {{ protocol: TCP, port: 9, target_type: ip, targets: [{{ ip: 127.0.0.1 }}] }}
"
    ));
    let xdg = tempfile::Builder::new().prefix("lbctl-xdg-").tempdir().unwrap();
    chmod(xdg.path(), 0o700);
    let table_dir = xdg.path().join("lbctl");
    let elsewhere = xdg.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    let apply =
        || Run::from(stack.command(&["apply", "--auto-approve"]).env("XDG_RUNTIME_DIR", xdg.path()).output().unwrap());
    let refused = |why: &str| {
        let run = apply().expect_code(1);
        let expected = format!("refusing {}: {why}", table_dir.display());
        assert!(run.stderr.contains(&expected), "expected {expected:?} in:\n{}", run.stderr);
        assert!(!stack.dir.path().join(".lbctl/run").exists(), "nothing was started");
    };

    // A symlink to a directory of the attacker's choosing.
    std::os::unix::fs::symlink(&elsewhere, &table_dir).unwrap();
    refused("it is a symbolic link");
    assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0, "nothing written through the symlink");
    std::fs::remove_file(&table_dir).unwrap();

    // A directory others may write into.
    std::fs::create_dir(&table_dir).unwrap();
    chmod(&table_dir, 0o777);
    refused("its mode is 0777; it must be private to this user (0700)");
    assert_eq!(std::fs::read_dir(&table_dir).unwrap().count(), 0, "nothing written into it");

    // Another user's directory (only root can make one to test with).
    if lbctl_files_uid() == 0 {
        chmod(&table_dir, 0o700);
        std::os::unix::fs::chown(&table_dir, Some(65534), Some(65534)).unwrap();
        refused("it is owned by uid 65534, not by this user (uid 0)");
        assert_eq!(std::fs::read_dir(&table_dir).unwrap().count(), 0, "nothing written into it");
    }
    std::fs::remove_dir(&table_dir).unwrap();

    // None yet: made private, and used.
    apply().expect_code(0);
    assert_eq!(std::fs::metadata(&table_dir).unwrap().mode() & 0o7777, 0o700);
    let table = std::fs::read_to_string(table_dir.join("addresses.json")).unwrap();
    assert!(table.contains("\"load_balancer\": \"edge\""), "{table}");
    Run::from(stack.command(&["destroy", "--auto-approve"]).env("XDG_RUNTIME_DIR", xdg.path()).output().unwrap())
        .expect_code(0);
}

/// This process's user id.
fn lbctl_files_uid() -> u32 {
    // SAFETY: geteuid has no failure mode.
    unsafe { libc::geteuid() }
}

/// A configuration or function file writable by others is not used: the
/// proxy and the supervisor keep what they run and say why in their log and
/// in `lbctl status`, a function is not run, and the next plan shows drift
/// that apply repairs.
#[test]
fn runtime_files_writable_by_others_are_refused() {
    let (port, tls_port) = (free_port(), free_port());
    let stack = Stack::new(&secret_spec(port, tls_port));
    stack.apply();
    let run = stack.dir.path().join(".lbctl/run");
    let url = format!("http://127.0.0.1:{port}/");
    assert_eq!(curl(&format!("{url}fn"), &[]).unwrap().body, "from the function");

    chmod(&run.join("lb/front/config.json"), 0o666);
    chmod(&run.join("asg/web/config.json"), 0o666);
    chmod(&run.join("fn/echo/function.json"), 0o666);
    let refusal =
        |file: &str| format!("refusing {}: it is writable by group or others (mode 0666)", run.join(file).display());

    let function = curl(&format!("{url}fn"), &[]).unwrap();
    assert_eq!(function.status, 502, "{function:?}");
    wait_for("both refusals in the status", Duration::from_secs(10), || {
        let errors = stack.status()["resources"].to_string();
        (errors.contains(&refusal("lb/front/config.json")) && errors.contains(&refusal("asg/web/config.json")))
            .then_some(())
    });
    let status = stack.lbctl(&["status"]).expect_code(0).stdout;
    assert!(status.contains("  error: "), "{status}");
    let proxy_log = std::fs::read_to_string(run.join("lb/front/proxy.log")).unwrap();
    assert!(proxy_log.contains(&refusal("lb/front/config.json")), "{proxy_log}");
    assert!(proxy_log.contains(&refusal("fn/echo/function.json")), "{proxy_log}");
    let supervisor_log = std::fs::read_to_string(run.join("asg/web/supervisor.log")).unwrap();
    assert!(supervisor_log.contains(&refusal("asg/web/config.json")), "{supervisor_log}");
    // The load balancer keeps serving what it applied.
    assert_eq!(curl(&url, &[]).unwrap().status, 200);

    let plan = stack.lbctl(&["plan", "--detailed-exitcode"]).expect_code(2);
    assert!(plan.stdout.contains("writable by group or others"), "{}", plan.stdout);
    stack.apply();
    stack.lbctl(&["plan", "--detailed-exitcode"]).expect_code(0);
    assert_eq!(curl(&format!("{url}fn"), &[]).unwrap().body, "from the function");
    wait_for("the refusals to clear", Duration::from_secs(10), || {
        (!stack.lbctl(&["status"]).expect_code(0).stdout.contains("refusing")).then_some(())
    });
}
