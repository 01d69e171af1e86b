//! Target discovery: reading a target group's registry from the runtime files.
//!
//! A group's registry is `tg/<name>/group.json` (its settings, written by the
//! provider) and `tg/<name>/targets/<source>.json` (one file per registering
//! source: the provider's static targets, each auto-scaling group's
//! instances). The group's targets are the union of every source's. The
//! files are tiny, so they are simply re-read on every poll and parsed only
//! when their bytes changed.

use std::collections::BTreeSet;
use std::path::PathBuf;

use crate::runtime::{self, Layout, RegisteredTarget, Registrations, TargetGroupConfig};

/// What a registry holds at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct Discovered {
    /// The group's settings; `None` when `group.json` is missing, in which
    /// case the group has no targets.
    pub config: Option<TargetGroupConfig>,
    /// Every registered target.
    pub targets: BTreeSet<RegisteredTarget>,
}

/// One target group's registry on disk.
pub struct Registry {
    group_file: PathBuf,
    targets_dir: PathBuf,
    fingerprint: Option<String>,
}

impl Registry {
    /// The registry of target group `name`.
    pub fn new(layout: &Layout, name: &str) -> Registry {
        let dir = layout.tg_dir(name);
        Registry { group_file: dir.join("group.json"), targets_dir: dir.join("targets"), fingerprint: None }
    }

    /// Re-reads the files: `None` when their bytes have not changed since the
    /// last call, else what they now hold, or why they cannot be used (the
    /// caller then keeps what it had).
    pub fn poll(&mut self) -> Option<Result<Discovered, String>> {
        let files = self.read();
        let mut all = Vec::new();
        for (path, bytes) in &files {
            all.extend_from_slice(path.as_os_str().as_encoded_bytes());
            all.push(0);
            match bytes {
                Ok(Some(bytes)) => all.extend_from_slice(bytes),
                Ok(None) => all.extend_from_slice(b"\xff missing"),
                Err(problem) => all.extend_from_slice(problem.as_bytes()),
            }
            all.push(0);
        }
        let fingerprint = runtime::digest(&all);
        if self.fingerprint.as_ref() == Some(&fingerprint) {
            return None;
        }
        self.fingerprint = Some(fingerprint);
        Some(parse(&files))
    }

    /// `group.json` first, then every registration file in name order;
    /// `None` bytes for a file that is gone, an error for one that could
    /// not be read or is not trusted (see `runtime::read_trusted`).
    fn read(&self) -> Vec<(PathBuf, FileRead)> {
        let read = |path: &PathBuf| runtime::read_trusted(path).map_err(|err| format!("{err:#}"));
        let mut files = vec![(self.group_file.clone(), read(&self.group_file))];
        let mut sources: Vec<PathBuf> = match std::fs::read_dir(&self.targets_dir) {
            Ok(entries) => entries
                .filter_map(|it| it.ok())
                .map(|it| it.path())
                .filter(|it| {
                    let name = it.file_name().and_then(|it| it.to_str()).unwrap_or("");
                    name.ends_with(".json") && !name.starts_with('.')
                })
                .collect(),
            Err(_) => Vec::new(),
        };
        sources.sort();
        files.extend(sources.into_iter().map(|path| {
            let bytes = read(&path);
            (path, bytes)
        }));
        files
    }
}

/// A registry file's bytes; `None` when it is gone.
type FileRead = Result<Option<Vec<u8>>, String>;

/// Parses the files `Registry::read` returned. A file that could not be
/// read or is not trusted makes the whole registry unusable.
fn parse(files: &[(PathBuf, FileRead)]) -> Result<Discovered, String> {
    if let Some(problem) = files.iter().find_map(|(_, read)| read.as_ref().err()) {
        return Err(problem.clone());
    }
    let Some(((group_path, Ok(Some(group_bytes))), sources)) = files.split_first() else {
        return Ok(Discovered { config: None, targets: BTreeSet::new() });
    };
    let config = serde_json::from_slice::<TargetGroupConfig>(group_bytes)
        .map_err(|err| format!("{}: {err}", group_path.display()))?
        .upgraded();
    let mut targets = BTreeSet::new();
    for (path, bytes) in sources {
        // A file removed between listing and reading registers nothing.
        let Ok(Some(bytes)) = bytes else { continue };
        let registrations: Registrations =
            serde_json::from_slice(bytes).map_err(|err| format!("{}: {err}", path.display()))?;
        targets.extend(registrations.targets);
    }
    Ok(Discovered { config: Some(config), targets })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn target(id: &str, last: u8) -> RegisteredTarget {
        RegisteredTarget { id: id.into(), ip: Ipv4Addr::new(127, 0, 0, last), port: 8080 }
    }

    #[test]
    fn reads_the_union_of_sources_when_files_change() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        let mut registry = Registry::new(&layout, "web");
        let ids = |it: Option<Result<Discovered, String>>| -> Option<Result<Vec<String>, String>> {
            it.map(|it| it.map(|it| it.targets.into_iter().map(|it| it.id).collect()))
        };

        // No group.json: no targets, even with registrations.
        let static_targets = Registrations { targets: vec![target("a", 2)] };
        runtime::write_json(&layout.registration_file("web", "static"), &static_targets).unwrap();
        assert_eq!(ids(registry.poll()), Some(Ok(vec![])));
        assert_eq!(ids(registry.poll()), None, "nothing changed");

        let settings = serde_yaml::from_str::<lbctl_spec::TargetGroup>("{ port: 8080 }").unwrap().resolve();
        let config = TargetGroupConfig { format: runtime::RUNTIME_FORMAT, name: "web".into(), settings };
        runtime::write_json(&layout.tg_dir("web").join("group.json"), &config).unwrap();
        assert_eq!(ids(registry.poll()), Some(Ok(vec!["a".into()])));

        let asg_targets = Registrations { targets: vec![target("a", 2), target("i-1", 3)] };
        runtime::write_json(&layout.registration_file("web", "asg-web"), &asg_targets).unwrap();
        assert_eq!(ids(registry.poll()), Some(Ok(vec!["a".into(), "i-1".into()])));

        std::fs::write(layout.registration_file("web", "broken"), b"{").unwrap();
        assert!(matches!(registry.poll(), Some(Err(message)) if message.contains("broken.json")));

        std::fs::remove_file(layout.registration_file("web", "broken")).unwrap();
        std::fs::remove_file(layout.registration_file("web", "static")).unwrap();
        let last = registry.poll().unwrap().unwrap();
        assert_eq!(last.config.unwrap().name, "web");
        assert_eq!(last.targets.into_iter().map(|it| it.id).collect::<Vec<_>>(), vec!["a", "i-1"]);
    }
}
