//! `lbctl worker`: the demo instance and its fault switches.

use std::process::Child;
use std::time::Duration;

use crate::util::*;

/// Kills the worker when the test ends, however it ends.
struct Worker(Child);

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn worker_answers_with_its_id_and_its_listener_can_be_stopped() {
    let port = free_port();
    let child = spawn_worker("i-0123456789abcdef0", port);
    let worker = Worker(child);
    let url = format!("http://127.0.0.1:{port}/");
    let response = wait_for("the worker to listen", Duration::from_secs(20), || curl(&url, &[]));
    assert_eq!(response.status, 200);
    assert_eq!(response.headers["x-instance-id"], "i-0123456789abcdef0");
    assert!(response.body.contains("i-0123456789abcdef0"), "{}", response.body);
    assert_eq!(curl(&format!("{url}health"), &[]).unwrap().status, 200);

    // Unhealthy switch: /health fails, the process serves on.
    curl_with(&format!("{url}fault/unhealthy"), &[], &["-X", "POST"]).unwrap();
    assert_eq!(curl(&format!("{url}health"), &[]).unwrap().status, 503);
    curl_with(&format!("{url}fault/healthy"), &[], &["-X", "POST"]).unwrap();
    assert_eq!(curl(&format!("{url}health"), &[]).unwrap().status, 200);

    // Listener switch: connections are refused, the process stays alive.
    curl_with(&format!("{url}fault/stop-listener"), &[], &["-X", "POST"]).unwrap();
    wait_for("the listener to close", Duration::from_secs(10), || curl(&url, &[]).is_none().then_some(()));
    assert!(alive(worker.0.id()), "the process lives on with its listener down");
}
