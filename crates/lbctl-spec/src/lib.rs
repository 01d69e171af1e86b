//! lbctl's spec: the version-1 YAML format, parsed and checked.
//!
//! This crate owns the spec types (`Spec` and below, serde + schemars), YAML
//! parsing with `FILE:LINE:COL` diagnostics, and every semantic check that can
//! be made from the file alone (references, priorities, port clashes inside
//! the spec, cycles, capacities).
//!
//! **Architecture invariant:** it reads one file and nothing else: no
//! processes, no sockets, no state, no tokio. Checks that need the machine
//! (a port already taken) belong to the provider, which reports them by
//! resource path so that `SpecFile::locate` can place them in the file.
//!
//! **API boundary:** the types here are the file format; fields may be added,
//! never renamed.
#![deny(missing_docs)]

mod duration;
mod model;
pub mod settings;
mod shape;
mod source_map;
mod validate;
pub use validate::{health_check_matcher, parse_grpc_matcher, parse_matcher, wire_name, ALLOCATED_STATIC_IPS};

use std::fmt;
use std::path::{Path, PathBuf};

pub use duration::Duration;
pub use model::*;
pub use shape::{did_you_mean, suggestion};
pub use source_map::{Location, SourceMap};

/// One problem found in a spec, placed in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file as the user named it.
    pub file: String,
    /// Where in the file, when known.
    pub location: Option<Location>,
    /// The resource path (`load_balancers.public.listeners[0].port`), or empty.
    pub path: String,
    /// What is wrong, lowercase, no trailing full stop.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.location {
            Some(at) => write!(f, "{}:{}:{}: ", self.file, at.line, at.column)?,
            None => write!(f, "{}: ", self.file)?,
        }
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

/// Every problem found in a spec; never empty when returned as an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (idx, diagnostic) in self.0.iter().enumerate() {
            if idx > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{diagnostic}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

/// A parsed and validated spec with its source, so later layers can place
/// their own findings in the file.
#[derive(Debug, Clone)]
pub struct SpecFile {
    /// The file as the user named it (used in diagnostics).
    pub file: String,
    /// The file's directory, against which relative commands run.
    pub dir: PathBuf,
    /// The text as read.
    pub source: String,
    /// The typed spec.
    pub spec: Spec,
    source_map: source_map::Lazy,
}

impl SpecFile {
    /// A diagnostic for `path`, placed in this file.
    pub fn diagnostic(&self, path: &str, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            file: self.file.clone(),
            location: Some(self.source_map().locate(path)),
            path: path.to_string(),
            message: message.into(),
        }
    }

    /// Where each node of the file is (read on first use).
    pub(crate) fn source_map(&self) -> &SourceMap {
        self.source_map.of(&self.source)
    }
}

/// Reads, parses and validates the spec at `path`.
pub fn load(path: &Path) -> Result<SpecFile, Diagnostics> {
    let file = path.display().to_string();
    let source = std::fs::read_to_string(path).map_err(|err| {
        Diagnostics(vec![Diagnostic {
            file: file.clone(),
            location: None,
            path: String::new(),
            message: format!("cannot read spec: {err}"),
        }])
    })?;
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let dir = if dir.as_os_str().is_empty() { PathBuf::from(".") } else { dir };
    parse(&file, dir, source)
}

/// Parses and validates `source`, reporting problems against `file`: every
/// problem of the file in one run (unknown fields and values, missing
/// fields, then the semantic checks), each placed in the file.
pub fn parse(file: &str, dir: PathBuf, source: String) -> Result<SpecFile, Diagnostics> {
    // A byte-order mark, as some editors write, is no part of the YAML.
    let source = match source.strip_prefix('\u{feff}') {
        Some(rest) => rest.to_string(),
        None => source,
    };
    let mut document: serde_yaml::Value = serde_yaml::from_str(&source).map_err(|err| {
        Diagnostics(vec![Diagnostic {
            file: file.to_string(),
            location: Some(
                err.location().map_or(Location::START, |at| Location { line: at.line(), column: at.column() }),
            ),
            path: String::new(),
            message: yaml_message(&err),
        }])
    })?;
    document.apply_merge().ok();
    let (problems, renames) = shape::check(&mut document);
    let source_map = source_map::Lazy::new(renames);
    let place = |path: &str, at_key: bool, message: String| {
        let map = source_map.of(&source);
        let location = if at_key { map.locate_key(path) } else { map.locate(path) };
        // An unknown field is shown under its parent, at the field's key.
        let shown = if at_key { source_map::parent(path).unwrap_or("") } else { path };
        Diagnostic { file: file.to_string(), location: Some(location), path: shown.to_string(), message }
    };
    let mut diagnostics: Vec<Diagnostic> =
        problems.into_iter().map(|it| place(&it.path, it.at_key, it.message)).collect();
    let spec: Spec = match serde_path_to_error::deserialize(document) {
        Ok(spec) => spec,
        Err(err) => {
            let path = err.path().to_string();
            let path = if path == "." { String::new() } else { path };
            // What the shape check said of the same place says it better.
            if !diagnostics.iter().any(|it| it.path == path || path.starts_with(&format!("{}.", it.path))) {
                diagnostics.push(place(&path, false, yaml_message(err.inner())));
            }
            diagnostics.sort_by_key(|it| it.location.map(|at| (at.line, at.column)));
            return Err(Diagnostics(diagnostics));
        }
    };
    let spec_file = SpecFile { file: file.to_string(), dir, source, spec, source_map };
    diagnostics.extend(validate::check(&spec_file));
    if diagnostics.is_empty() {
        Ok(spec_file)
    } else {
        diagnostics.sort_by_key(|it| it.location.map(|at| (at.line, at.column)));
        Err(Diagnostics(diagnostics))
    }
}

/// serde_yaml's message without its trailing " at line L column C", which the
/// diagnostic already carries in front.
fn yaml_message(err: &serde_yaml::Error) -> String {
    let text = err.to_string();
    match text.rfind(" at line ") {
        Some(cut) => text[..cut].to_string(),
        None => text,
    }
}

/// The JSON Schema of the spec format, as `lbctl schema` prints it.
pub fn schema_json() -> String {
    let schema = schemars::schema_for!(Spec);
    let mut text = serde_json::to_string_pretty(&schema).expect("a schema always serializes");
    text.push('\n');
    text
}

/// Default port of an auto-scaling group's instances when nothing sets one.
pub const DEFAULT_INSTANCE_PORT: u16 = 8080;

impl Spec {
    /// The port instances of `group` listen on: the launch template's, else the
    /// first target group's, else 8080.
    pub fn instance_port(&self, group: &AutoscalingGroup) -> u16 {
        group
            .launch_template
            .port
            .or_else(|| {
                let first = group.target_groups.first()?;
                self.target_groups.get(first)?.port
            })
            .unwrap_or(DEFAULT_INSTANCE_PORT)
    }

    /// Target group names a load balancer's listeners forward to.
    pub fn load_balancer_target_groups(&self, load_balancer: &LoadBalancer) -> Vec<String> {
        let mut names: Vec<String> =
            load_balancer.listeners.iter().flat_map(Listener::target_groups).map(str::to_string).collect();
        names.sort();
        names.dedup();
        names
    }
}
#[cfg(test)]
mod properties;
#[cfg(test)]
mod tests;
