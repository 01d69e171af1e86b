//! `examples/python-backend.yaml`: a launch template that runs a Python
//! server reading LBCTL_IP / LBCTL_PORT, not `lbctl worker`.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::util::*;

#[test]
fn python_backend_serves_behind_the_load_balancer() {
    let port = free_port();
    let stack = Stack::example("python-backend.yaml", &[("port: 8090", &format!("port: {port}"))]);
    let applied = stack.apply();
    let url = Stack::outputs(&applied)["app_url"].clone();
    let instances = stack.instances("backend");
    assert_eq!(instances.len(), 2, "min_size instances when desired_capacity is omitted");
    let expected: BTreeSet<String> = instances.iter().map(|it| it["id"].as_str().unwrap().to_string()).collect();
    let seen: BTreeSet<String> = (0..16).filter_map(|_| instance_of(&url, &[])).collect();
    assert_eq!(seen, expected);
    let body = curl(&format!("{url}hello"), &[]).unwrap().body;
    assert!(body.starts_with("python backend i-") && body.ends_with("served /hello\n"), "{body}");

    // Killed, it is replaced like any instance.
    let victim = instances[0]["pid"].as_u64().unwrap() as u32;
    kill9(victim);
    wait_for("the python instance to be replaced", Duration::from_secs(60), || {
        let now: BTreeSet<String> = stack
            .instances("backend")
            .iter()
            .filter(|it| it["lifecycle"] == "InService")
            .map(|it| it["id"].as_str().unwrap().to_string())
            .collect();
        (now.len() == 2 && now != expected).then_some(())
    });
    stack.lbctl(&["destroy", "--auto-approve"]).expect_code(0);
    assert!(!port_in_use(port));
}
