//! Starting, finding and stopping the processes of a stack, by PID only.
//!
//! A PID alone can be reused by an unrelated process, so "is it still ours?"
//! also checks that the process's command line carries a marker we gave it
//! (the path of its configuration file, or its instance id in its
//! environment). Nothing here ever looks processes up by name.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// Starts `command` detached from the caller: its own process group (so a
/// Ctrl-C on the caller's terminal does not reach it), stdin closed, stdout
/// and stderr appended to `log`. The child is returned so that a caller which
/// stays alive (the supervisor) can reap it; a short-lived caller may drop it.
pub fn spawn_detached(mut command: Command, log: &Path) -> Result<Child> {
    let out = lbctl_files::open_private_append(log)?;
    let err = out.try_clone().context("duplicating log handle")?;
    command.stdin(Stdio::null()).stdout(out).stderr(err).process_group(0);
    let program = command.get_program().to_string_lossy().into_owned();
    command.spawn().with_context(|| format!("starting `{program}`"))
}

/// Whether `pid` is a live (not zombie) process whose command line or
/// environment contains `marker`.
pub fn is_ours(pid: u32, marker: &str) -> bool {
    if pid == 0 || !is_alive(pid) {
        return false;
    }
    let contains = |file: &str| {
        std::fs::read(format!("/proc/{pid}/{file}"))
            .map(|bytes| bytes.windows(marker.len().max(1)).any(|it| it == marker.as_bytes()))
            .unwrap_or(false)
    };
    contains("cmdline") || contains("environ")
}

/// Whether `pid` exists and is not a zombie.
pub fn is_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name, which may itself
        // hold spaces or parentheses: read it after the last ')'.
        Ok(stat) => stat.rsplit_once(')').map(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X'])).unwrap_or(false),
        Err(_) => false,
    }
}

/// Sends `signal` to `pid`.
pub fn signal(pid: u32, signal: i32) {
    if pid > 1 {
        // SAFETY: kill(2) with a positive pid has no memory-safety preconditions.
        unsafe {
            libc::kill(pid as libc::pid_t, signal);
        }
    }
}

/// Asks `pid` to stop (SIGTERM), waits up to `grace`, then kills it (SIGKILL)
/// and waits for it to be gone. Returns whether it had to be killed.
pub fn stop(pid: u32, marker: &str, grace: Duration) -> bool {
    if !is_ours(pid, marker) {
        return false;
    }
    signal(pid, libc::SIGTERM);
    if wait_gone(pid, grace) {
        return false;
    }
    signal(pid, libc::SIGKILL);
    wait_gone(pid, Duration::from_secs(5));
    true
}

/// Waits until `pid` is gone or `timeout` passes; true when gone.
pub fn wait_gone(pid: u32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if !is_alive(pid) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The last `lines` lines of a log file, for error messages.
pub fn log_tail(log: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_and_stops_its_own_child() {
        let dir = tempfile::tempdir().unwrap();
        let mut command = Command::new("sleep");
        command.arg("30");
        let mut child = spawn_detached(command, &dir.path().join("sleep.log")).unwrap();
        let pid = child.id();
        // The child's command line becomes `sleep 30` once it has exec'd.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !is_ours(pid, "sleep") {
            assert!(Instant::now() < deadline, "the child never showed up as `sleep`");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(!is_ours(pid, "not-in-its-command-line"));
        // Reap in the background so the process does not linger as a zombie.
        let reaper = std::thread::spawn(move || child.wait());
        assert!(!stop(pid, "sleep", Duration::from_secs(5)), "sleep stops on SIGTERM");
        reaper.join().unwrap().unwrap();
        assert!(!is_alive(pid));
    }
}
