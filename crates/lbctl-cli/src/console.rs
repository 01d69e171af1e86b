//! `lbctl console`: a web page on loopback that shows the stack live. The
//! page (one embedded file: no CDN, nothing fetched from elsewhere) polls
//! `/api/state` every second and redraws the topology (listeners, rules,
//! target groups, targets, groups and their instances), each target's
//! health and reason, requests per second, the latest access-log lines and
//! each group's activity.
//!
//! The server is `tiny_http` on one thread. It answers loopback clients
//! only, and only requests whose `Host` is its own address (a page of
//! another site cannot rebind a name to it and read the state).

use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use anyhow::{anyhow, bail, Result};
use lbctl_plan::{LogKind, Provider, State, StateStore};
use serde_json::{json, Value};

/// The page.
const PAGE: &str = include_str!("console.html");
/// Access-log lines the page shows.
const LOG_LINES: usize = 20;

/// Serves the console on `listen` (a loopback address) until the process is
/// stopped; `ready` is told the URL once it listens.
pub fn serve(
    listen: SocketAddr,
    store: &StateStore,
    provider_of: &dyn Fn(&State) -> Result<Box<dyn Provider>>,
    ready: &dyn Fn(&str) -> Result<()>,
) -> Result<()> {
    if !listen.ip().is_loopback() {
        bail!("--listen {listen}: the console serves on loopback only (127.0.0.0/8 or ::1)");
    }
    let server = tiny_http::Server::http(listen).map_err(|err| {
        let hint = match err.downcast_ref::<std::io::Error>().map(std::io::Error::kind) {
            Some(std::io::ErrorKind::AddrInUse) => {
                "; something else listens there: choose another port (--listen 127.0.0.1:PORT, or --listen 127.0.0.1:0 for any free one)"
            }
            _ => "",
        };
        anyhow!("listening on {listen}: {err}{hint}")
    })?;
    let address = server.server_addr().to_ip().ok_or_else(|| anyhow!("the console has no IP address"))?;
    let url = format!("http://{address}/");
    ready(&url)?;
    let allowed_hosts = [address.to_string(), format!("localhost:{}", address.port())];
    for request in server.incoming_requests() {
        let peer_ok = request.remote_addr().is_some_and(|it| it.ip().is_loopback());
        let host = request.headers().iter().find(|it| it.field.equiv("Host")).map(|it| it.value.to_string());
        if !peer_ok || !host.as_ref().is_some_and(|it| allowed_hosts.contains(it)) {
            let _ = request.respond(tiny_http::Response::from_string("forbidden\n").with_status_code(403));
            continue;
        }
        let response = match request.url() {
            "/" | "/index.html" => html(PAGE.to_string()),
            "/api/state" => match state_json(store, provider_of) {
                Ok(value) => json_response(&value),
                Err(err) => json_response(&json!({ "error": format!("{err:#}") })),
            },
            _ => tiny_http::Response::from_string("not found\n").with_status_code(404),
        };
        let _ = request.respond(response);
    }
    Ok(())
}

fn header(name: &str, value: &str) -> tiny_http::Header {
    tiny_http::Header::from_bytes(name.as_bytes(), value.as_bytes()).expect("a valid header")
}

fn html(body: String) -> tiny_http::Response<std::io::Cursor<Vec<u8>>> {
    tiny_http::Response::from_string(body)
        .with_header(header("Content-Type", "text/html; charset=utf-8"))
        .with_header(header(
            "Content-Security-Policy",
            "default-src 'self'; style-src 'unsafe-inline'; script-src 'unsafe-inline'",
        ))
        .with_header(header("Cache-Control", "no-store"))
}

fn json_response(value: &Value) -> tiny_http::Response<std::io::Cursor<Vec<u8>>> {
    tiny_http::Response::from_string(value.to_string())
        .with_header(header("Content-Type", "application/json"))
        .with_header(header("Cache-Control", "no-store"))
}

/// What the page draws: the applied resources with their live status, the
/// load balancers' listeners and rules, and the latest access-log lines.
fn state_json(store: &StateStore, provider_of: &dyn Fn(&State) -> Result<Box<dyn Provider>>) -> Result<Value> {
    let state = store.load()?;
    if state.resources.is_empty() {
        return Ok(json!({ "stack": state.stack, "resources": [], "access_log": [], "time": now() }));
    }
    let provider = provider_of(&state)?;
    let mut resources = Vec::new();
    for resource in state.resources.values() {
        let live = provider.status(resource).map(|it| json!({ "summary": it.summary, "live": it.json }));
        let live = live.unwrap_or_else(|err| json!({ "summary": format!("{err:#}"), "live": {} }));
        resources.push(json!({
            "address": resource.address.to_string(),
            "kind": resource.address.kind.as_str(),
            "name": resource.address.name,
            "settings": resource.resolved,
            "summary": live["summary"],
            "live": live["live"],
        }));
    }
    let states: Vec<lbctl_plan::ResourceState> = state.resources.values().cloned().collect();
    let mut access_log = Vec::new();
    for file in provider.log_files(&states).into_iter().filter(|it| it.kind == LogKind::Access) {
        for line in tail(&file.path, LOG_LINES) {
            access_log.push(json!({ "load_balancer": file.source, "line": line }));
        }
    }
    Ok(json!({
        "stack": state.stack,
        "provider": state.provider,
        "resources": resources,
        "access_log": access_log,
        "time": now(),
    }))
}

fn now() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

/// The last `count` lines of a file (read from its last 64 KiB).
fn tail(path: &Path, count: usize) -> Vec<String> {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut file) = std::fs::File::open(path) else { return Vec::new() };
    let length = file.metadata().map(|it| it.len()).unwrap_or(0);
    let start = length.saturating_sub(64 * 1024);
    let mut text = String::new();
    if file.seek(SeekFrom::Start(start)).is_err() || file.read_to_string(&mut text).is_err() {
        return Vec::new();
    }
    let lines: Vec<&str> = text.lines().skip(usize::from(start > 0)).collect();
    lines[lines.len().saturating_sub(count)..].iter().map(|it| it.to_string()).collect()
}

/// `--listen`: an address, or a port on 127.0.0.1.
pub fn parse_listen(text: &str) -> Result<SocketAddr> {
    if let Ok(address) = text.parse::<SocketAddr>() {
        return Ok(address);
    }
    if let Ok(port) = text.parse::<u16>() {
        return Ok(SocketAddr::from((IpAddr::from([127, 0, 0, 1]), port)));
    }
    // `localhost` is loopback by definition (RFC 6761): no lookup needed.
    if let Some(port) = text.strip_prefix("localhost:").and_then(|it| it.parse::<u16>().ok()) {
        return Ok(SocketAddr::from((IpAddr::from([127, 0, 0, 1]), port)));
    }
    bail!("--listen {text}: expected ADDRESS:PORT (127.0.0.1:8900, localhost:8900, [::1]:8900) or a port")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_console_listens_on_loopback_only() {
        assert_eq!(parse_listen("8900").unwrap(), "127.0.0.1:8900".parse().unwrap());
        assert_eq!(parse_listen("127.0.0.2:0").unwrap(), "127.0.0.2:0".parse().unwrap());
        assert_eq!(parse_listen("localhost:8901").unwrap(), "127.0.0.1:8901".parse().unwrap());
        assert!(parse_listen("all").is_err());
        let dir = tempfile::tempdir().unwrap();
        let store = crate::commands::store_of(dir.path());
        let err = serve("0.0.0.0:0".parse().unwrap(), &store, &|_| bail!("unused"), &|_| Ok(())).unwrap_err();
        assert!(err.to_string().contains("loopback only"), "{err}");
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let err = serve(taken.local_addr().unwrap(), &store, &|_| bail!("unused"), &|_| Ok(())).unwrap_err();
        assert!(err.to_string().contains("choose another port"), "{err}");
    }

    #[test]
    fn tail_gives_the_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        std::fs::write(&path, "a\nb\nc\n").unwrap();
        assert_eq!(tail(&path, 2), ["b", "c"]);
        assert!(tail(&dir.path().join("missing"), 2).is_empty());
    }
}
