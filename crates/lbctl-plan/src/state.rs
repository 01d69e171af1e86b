//! The state file: what lbctl has applied, with a lock, atomic writes and a
//! backup.
//!
//! `.lbctl/state.json` is rewritten after every resource an apply touches
//! (temp file, fsync, rename; the previous version goes to
//! `state.json.backup`), so a crash loses at most the resource in progress.
//! `serial` grows with every write and `lineage` is fixed when the state is
//! first created; a saved plan records both and is refused once either moved.
//! `.lbctl/lock` is held (`flock`) by the one apply or destroy running, and
//! holds a line naming it.
//!
//! Format 2 keeps, per resource, what the spec wrote (`attributes`) apart
//! from the effective settings (`resolved`) and the values only the provider
//! learned (`computed`), and records the provider. A format 1 state (one
//! set of attributes, defaults filled in) is read as format 2: its
//! attributes become the resolved ones, what was written is unknown (so no
//! default counts as a change), and its DNS names become computed values.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::resource::{Address, Resource};

/// The state file's format version.
pub const STATE_FORMAT: u32 = 2;

/// What lbctl has applied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// Format version of this file.
    pub format: u32,
    /// Fixed at creation; tells states of different stacks apart.
    pub lineage: String,
    /// Grows with every write.
    pub serial: u64,
    /// Stack name of the last apply.
    #[serde(default)]
    pub stack: String,
    /// The provider that made the resources (`local` in format 1 states);
    /// another provider never uses this state.
    #[serde(default = "local")]
    pub provider: String,
    /// Applied resources by address (`load_balancer.public`).
    #[serde(default)]
    pub resources: BTreeMap<String, ResourceState>,
    /// Outputs of the last apply.
    #[serde(default)]
    pub outputs: BTreeMap<String, String>,
}

fn local() -> String {
    "local".to_string()
}

/// One applied resource.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResourceState {
    /// Its address.
    pub address: Address,
    /// What the spec wrote for it when applied; `null` when not known (a
    /// state migrated from format 1).
    pub attributes: Value,
    /// The effective settings it was applied with.
    #[serde(default)]
    pub resolved: Value,
    /// Values the provider learned when it made it (DNS name, address, ARN).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub computed: BTreeMap<String, Value>,
    /// What it depended on when applied (deletion order).
    #[serde(default)]
    pub dependencies: Vec<Address>,
    /// Provider data (process ids, file paths).
    #[serde(default)]
    pub private: Value,
    /// Applied, but not yet seen ready: an apply that created, updated or
    /// replaced it ended (failed, timed out, was killed) before it was
    /// ready, so the next apply waits for it too.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub awaiting_ready: bool,
}

impl ResourceState {
    /// The state of `resource` once applied, awaiting readiness.
    pub fn applied(resource: &Resource, applied: crate::provider::Applied) -> ResourceState {
        ResourceState {
            address: resource.address.clone(),
            attributes: resource.attributes.clone(),
            resolved: resource.resolved.clone(),
            computed: applied.computed,
            dependencies: resource.dependencies.clone(),
            private: applied.private,
            awaiting_ready: true,
        }
    }
}

impl State {
    /// An empty state with a fresh lineage.
    pub fn new() -> State {
        State {
            format: STATE_FORMAT,
            lineage: new_lineage(),
            serial: 0,
            stack: String::new(),
            provider: local(),
            resources: BTreeMap::new(),
            outputs: BTreeMap::new(),
        }
    }

    /// The recorded resource at `address`.
    pub fn get(&self, address: &Address) -> Option<&ResourceState> {
        self.resources.get(&address.to_string())
    }
}

impl Default for State {
    fn default() -> Self {
        State::new()
    }
}

fn new_lineage() -> String {
    let bytes: [u8; 16] = rand::random();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &hex[0..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..32])
}

/// The `.lbctl` directory of a spec.
#[derive(Debug, Clone)]
pub struct StateStore {
    dir: PathBuf,
}

/// The held state lock; released on drop.
#[derive(Debug)]
pub struct StateLock {
    /// Kept open: the `flock` lives as long as this handle.
    _file: File,
}

impl StateStore {
    /// The store in `dir` (created on first write).
    pub fn new(dir: impl Into<PathBuf>) -> StateStore {
        StateStore { dir: dir.into() }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `state.json`.
    pub fn path(&self) -> PathBuf {
        self.dir.join("state.json")
    }

    /// Takes the lock at once or fails naming its holder. The directory is
    /// created private (`0700`); one left readable by an older release is
    /// made private, with everything in it.
    pub fn lock(&self, holder: &str) -> Result<StateLock> {
        lbctl_files::create_private_dir(&self.dir)?;
        lbctl_files::tighten_tree(&self.dir)?;
        let path = self.dir.join("lock");
        let mut file = lbctl_files::open_private_rw(&path)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut who = String::new();
                file.read_to_string(&mut who).ok();
                let who = who.trim();
                let who = if who.is_empty() { "another lbctl process" } else { who };
                bail!("state is locked by {who} ({}); wait for it to finish", path.display());
            }
            Err(std::fs::TryLockError::Error(err)) => {
                return Err(err).with_context(|| format!("locking {}", path.display()));
            }
        }
        file.set_len(0).ok();
        file.rewind().ok();
        let pid = std::process::id();
        writeln!(file, "pid {pid} ({holder})").ok();
        file.flush().ok();
        Ok(StateLock { _file: file })
    }

    /// Reads the state; a missing file is an empty state. A file that
    /// cannot be parsed is an error naming it and, when there is one, the
    /// backup of the previous version: nothing is planned on a guess.
    pub fn load(&self) -> Result<State> {
        let path = self.path();
        let Some(bytes) = lbctl_files::read_trusted(&path)? else { return Ok(State::new()) };
        let state: State = match serde_json::from_slice(&bytes) {
            Ok(state) => state,
            Err(err) => {
                let backup = self.dir.join("state.json.backup");
                let hint = if backup.exists() {
                    format!(
                        "; {} holds the version before the last write: check it and copy it over the state to go back to it",
                        backup.display()
                    )
                } else {
                    String::new()
                };
                bail!("{} is corrupt ({err}){hint}", path.display());
            }
        };
        match state.format {
            STATE_FORMAT => Ok(state),
            1 => Ok(migrate_from_format_1(state)),
            format => {
                bail!("{} has format {format}; this lbctl reads formats 1 and {STATE_FORMAT}", path.display())
            }
        }
    }

    /// Writes `state` with the next serial: the old file becomes the backup,
    /// the new one appears atomically.
    pub fn save(&self, state: &mut State) -> Result<()> {
        let path = self.path();
        let previous = lbctl_files::read_trusted(&path)?;
        // What the file holds already is not written again: the serial
        // stays, so that a plan saved against it stays good (an apply with
        // nothing to do does not make it stale), as in Terraform.
        if previous.as_deref() == Some(&serde_json::to_vec_pretty(state).context("serializing state")?[..]) {
            return Ok(());
        }
        state.serial += 1;
        let bytes = serde_json::to_vec_pretty(state).context("serializing state")?;
        if let Some(previous) = previous {
            lbctl_files::write_private(&self.dir.join("state.json.backup"), &previous)?;
        }
        lbctl_files::write_private(&path, &bytes)
    }
}

/// A format 1 state as format 2 (see the module's documentation).
fn migrate_from_format_1(mut state: State) -> State {
    state.format = STATE_FORMAT;
    for resource in state.resources.values_mut() {
        let mut resolved = std::mem::take(&mut resource.attributes);
        if let Some(dns_name) = resolved.as_object_mut().and_then(|it| it.remove("dns_name")) {
            resource.computed.insert("dns_name".to_string(), dns_name);
        }
        resource.resolved = resolved;
    }
    state
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_bumps_serial_and_keeps_a_backup() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::new(dir.path());
        let mut state = store.load().unwrap();
        assert_eq!(state.serial, 0);
        store.save(&mut state).unwrap();
        state.outputs.insert("url".to_string(), "http://a/".to_string());
        store.save(&mut state).unwrap();
        let again = store.load().unwrap();
        assert_eq!((again.serial, &again.lineage), (2, &state.lineage));
        // The same again: not written, the serial kept.
        store.save(&mut state).unwrap();
        assert_eq!(store.load().unwrap().serial, 2);
        let backup: State =
            serde_json::from_slice(&std::fs::read(dir.path().join("state.json.backup")).unwrap()).unwrap();
        assert_eq!(backup.serial, 1);
    }

    #[test]
    fn a_second_lock_fails_naming_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::new(dir.path());
        let held = store.lock("lbctl apply").unwrap();
        let err = store.lock("lbctl destroy").unwrap_err().to_string();
        assert!(err.contains(&format!("state is locked by pid {} (lbctl apply)", std::process::id())), "{err}");
        drop(held);
        store.lock("lbctl destroy").unwrap();
    }
}
