//! The proxy's status file (`lb/<name>/status.json`).
//!
//! The status board holds what the proxy reports (configuration digest,
//! bound ports, errors, target groups); anything that changes it touches the
//! board, and the writer task rewrites the file at once, and at least every
//! second so that request counters and `updated_ms` stay fresh. Writes go
//! through a blocking thread, since they fsync.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use tokio::sync::Notify;

use super::connection::ConnectionLimit;
use super::observe::LbStats;
use super::target_group::TargetGroup;
use crate::runtime::{self, ProxyStatus};

/// The longest time between two writes.
const REFRESH: Duration = Duration::from_secs(1);
/// The shortest time between two writes, so that bursts of changes coalesce.
const MIN_GAP: Duration = Duration::from_millis(20);

/// What the proxy reports, apart from what its target groups hold.
#[derive(Default)]
pub struct Report {
    /// Digest of the configuration file applied.
    pub config_digest: String,
    /// Ports bound.
    pub listening: Vec<u16>,
    /// Problems applying the configuration.
    pub errors: Vec<String>,
    /// The target groups, whose health is read when writing.
    pub groups: Vec<Arc<TargetGroup>>,
    /// The connection limit, whose counts are read when writing.
    pub limit: Option<Arc<ConnectionLimit>>,
    pub metrics_url: Option<String>,
}

/// The shared status of one proxy.
pub struct StatusBoard {
    path: PathBuf,
    report: Mutex<Report>,
    changed: Notify,
    /// Held while writing or removing the file; true once removed for good.
    closed: Mutex<bool>,
}

impl StatusBoard {
    /// A board writing to `path`.
    pub fn new(path: PathBuf) -> StatusBoard {
        StatusBoard { path, report: Mutex::default(), changed: Notify::new(), closed: Mutex::new(false) }
    }

    /// Changes the report and asks for a write.
    pub fn update(&self, change: impl FnOnce(&mut Report)) {
        change(&mut self.report.lock().unwrap_or_else(|it| it.into_inner()));
        self.touch();
    }

    /// Asks for a write (something the report points to changed).
    pub fn touch(&self) {
        self.changed.notify_one();
    }

    /// The status as it is now.
    pub fn snapshot(&self) -> ProxyStatus {
        let report = self.report.lock().unwrap_or_else(|it| it.into_inner());
        ProxyStatus {
            format: runtime::RUNTIME_FORMAT,
            pid: std::process::id(),
            config_digest: report.config_digest.clone(),
            listening: report.listening.clone(),
            errors: report.errors.iter().cloned().chain(report.groups.iter().filter_map(|it| it.problem())).collect(),
            target_groups: report.groups.iter().map(|it| (it.name.clone(), it.health())).collect(),
            connections: report.limit.as_ref().map_or(0, |it| it.open() as u64),
            rejected_connections: report.limit.as_ref().map_or(0, |it| it.rejected()),
            metrics_url: report.metrics_url.clone(),
            updated_ms: runtime::now_ms(),
        }
    }

    /// The Prometheus text of the load balancer `lb`.
    pub fn metrics(&self, lb: &str, network: bool, stats: &LbStats) -> String {
        let status = self.snapshot();
        let groups: Vec<Arc<TargetGroup>> = self.report.lock().unwrap_or_else(|it| it.into_inner()).groups.to_vec();
        let stats_of: Vec<(String, &super::observe::GroupStats)> =
            groups.iter().map(|it| (it.name.clone(), &it.stats)).collect();
        super::observe::exposition(lb, network, stats, &stats_of, &status)
    }

    /// Writes the status file now, unless it has been removed for good.
    pub fn write(&self) -> Result<()> {
        let closed = self.closed.lock().unwrap_or_else(|it| it.into_inner());
        if *closed {
            return Ok(());
        }
        runtime::write_json(&self.path, &self.snapshot())
    }

    /// Removes the status file; later writes do nothing.
    pub fn remove(&self) {
        let mut closed = self.closed.lock().unwrap_or_else(|it| it.into_inner());
        *closed = true;
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Rewrites the status file on every change and at least every second,
/// until the task is aborted.
pub async fn write_loop(board: Arc<StatusBoard>) {
    let mut last_error = String::new();
    loop {
        let _ = tokio::time::timeout(REFRESH, board.changed.notified()).await;
        let writer = board.clone();
        let result = tokio::task::spawn_blocking(move || writer.write()).await;
        // Report a failing write once, not every second.
        let error = match result {
            Ok(Ok(())) => String::new(),
            Ok(Err(err)) => format!("{err:#}"),
            Err(err) => err.to_string(),
        };
        if !error.is_empty() && error != last_error {
            eprintln!("proxy: cannot write {}: {error}", board.path.display());
        }
        last_error = error;
        tokio::time::sleep(MIN_GAP).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_until_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lb/public/status.json");
        let board = StatusBoard::new(path.clone());
        board.update(|it| {
            it.config_digest = "abc".into();
            it.listening = vec![8080];
            it.groups = vec![TargetGroup::new("test", "web")];
        });
        board.write().unwrap();
        let status: ProxyStatus = runtime::read_json(&path).unwrap().unwrap();
        assert_eq!(
            (status.pid, status.config_digest.as_str(), status.listening),
            (std::process::id(), "abc", vec![8080])
        );
        assert_eq!(status.target_groups["web"], vec![]);
        board.remove();
        board.write().unwrap();
        assert!(!path.exists());
    }
}
