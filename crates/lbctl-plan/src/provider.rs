//! The provider trait: the only way the planner touches the world.
//!
//! **API boundary:** the planner and the CLI know resources only through
//! `Provider`. A provider reads what actually exists (as attributes, so
//! drift is field by field), creates, updates and deletes (given what the
//! resources it depends on produced), reports values only it learns
//! (`computed`: DNS names, addresses, ARNs), says when a resource is ready,
//! and sets the ordering policy. The local provider implements it with
//! processes; tests implement it in memory. Nothing above this trait knows
//! a process, a port file or an ARN.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Result;
use serde_json::Value;

use crate::resource::{Address, Kind, Resource};
use crate::state::{ResourceState, State};

/// Values a provider learned about a resource when it made it (a DNS name,
/// an allocated address, an ARN), by attribute name.
pub type Computed = BTreeMap<String, Value>;

/// What a create or update produced: the provider's own data, kept in the
/// state and opaque to the planner, and the computed attributes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Applied {
    /// Provider data (process ids, file paths, ARNs).
    pub private: Value,
    /// Values only the provider knows (`Provider::computed` names them).
    pub computed: Computed,
}

/// A create or update that failed after the provider made part of the
/// resource (a load balancer without all its listeners): what exists is
/// recorded in the state, so the next apply converges it and `destroy`
/// removes it. Providers return it as the error.
#[derive(Debug)]
pub struct PartlyApplied {
    /// What exists of the resource.
    pub applied: Applied,
    /// Why the rest failed.
    pub error: anyhow::Error,
}

impl std::fmt::Display for PartlyApplied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#}", self.error)
    }
}

impl std::error::Error for PartlyApplied {}

/// The computed attributes of the resources a resource depends on, by address.
pub type DependencyOutputs = BTreeMap<Address, Computed>;

/// How a resource is replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replacement {
    /// Delete the old one, then create the new (what holds a port or a name
    /// the new one needs).
    DeleteThenCreate,
    /// Create the new one, then delete the old (no gap in service).
    CreateThenDelete,
}

/// How the executor orders and waits, as the provider wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// How replacements are ordered.
    pub replacement: Replacement,
    /// Kinds whose deletions run before any creation of the same kind (the
    /// local provider's load balancers free ports another may take).
    pub delete_before_create: Vec<Kind>,
    /// How often readiness is polled.
    pub poll_interval: Duration,
    /// How long `apply` waits for readiness unless told (`--timeout`).
    pub ready_timeout: Duration,
}

/// What refresh found for a resource recorded in the state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observed {
    /// It exists. `attributes` are its effective settings as observed, when
    /// the provider can read them back; the planner compares them with the
    /// state's, field by field (`~ port: 8080 -> 8081 (changed outside lbctl)`).
    Present {
        /// Observed effective settings (the state's `resolved` shape).
        attributes: Option<Value>,
    },
    /// It exists but cannot be trusted as it is (a file others may write):
    /// it needs an update, for the reason given.
    Drifted {
        /// Why, e.g. `config.json is writable by group or others`.
        reason: String,
    },
    /// It is gone: it needs to be created again.
    Missing {
        /// Why, e.g. `proxy process 1234 is not running`.
        reason: String,
    },
}

/// Something the provider found before any change, placed by spec path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// The spec path it concerns (`load_balancers.edge.listeners[0].protocol`).
    pub path: String,
    /// What it is.
    pub message: String,
    /// Whether it stops a plan from being applied at all (`Unsupported`) or
    /// makes the spec invalid on this machine (`Invalid`).
    pub severity: Severity,
}

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// The spec is valid but the provider cannot do it yet: `plan` shows it,
    /// `apply` refuses.
    Unsupported,
    /// The spec cannot work on this machine (a port already taken).
    Invalid,
}

/// Whether a resource is ready to serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    /// Ready.
    Ready,
    /// Not yet, and why (`1 of 2 instances healthy`).
    Waiting(String),
    /// It will not become ready (a process exited); why.
    Failed(String),
}

/// Progress reports from inside a long provider call.
pub trait Progress: Sync {
    /// A short status line for the resource being worked on.
    fn report(&self, message: &str);
}

/// A live view of one resource for `lbctl status`: rows of a table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LiveStatus {
    /// One-line summary (`listening on http://...`).
    pub summary: String,
    /// Table header.
    pub columns: Vec<String>,
    /// Table rows.
    pub rows: Vec<Vec<String>>,
    /// How many of the last columns are shown only on request (`--wide`).
    pub wide_only: usize,
    /// Lines after the table (recent events, where logs are).
    pub footer: Vec<String>,
    /// The same as a JSON value for `--json`.
    pub json: Value,
}

/// A log file of a resource, as `lbctl logs` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogFile {
    /// Whose it is: a load balancer's, a group's or an instance's name.
    pub source: String,
    /// What it holds.
    pub kind: LogKind,
    /// Where it is.
    pub path: std::path::PathBuf,
}

/// What a log file holds, and so where its lines' times are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogKind {
    /// AWS-format access log: the time is the second field.
    Access,
    /// Events: the time is the first field.
    Events,
    /// A process's output: lines carry no time.
    Output,
}

/// Materializes resources. Implementations must be callable from several
/// threads at once: the executor runs independent resources in parallel.
pub trait Provider: Sync {
    /// The provider's name, as a spec writes it (`local`, `aws`).
    fn name(&self) -> &'static str;

    /// How the executor orders replacements and deletions, and polls.
    fn policy(&self) -> Policy;

    /// Attributes of `resource` only the provider learns, at create:
    /// `plan` shows them as `(known after apply)`. Default: none.
    fn computed(&self, _resource: &Resource) -> Vec<&'static str> {
        Vec::new()
    }

    /// Attribute paths of `kind` whose change forces replacement.
    fn replace_triggers(&self, kind: Kind) -> &'static [&'static str];

    /// Attribute paths of a resource whose changes the plan leaves alone,
    /// because the provider manages them at run time, as Terraform's
    /// `ignore_changes`. Default: an auto-scaling group's desired capacity
    /// under a scaling policy (the policy sets it; the spec's value is only
    /// where it starts), as on AWS.
    fn ignored_changes(&self, resource: &Resource) -> &'static [&'static str] {
        let scaled = resource.address.kind == Kind::AutoscalingGroup && !resource.attributes["scaling"].is_null();
        if scaled {
            &["desired_capacity"]
        } else {
            &[]
        }
    }

    /// What an update of `desired` changing the attributes at `changed`
    /// will do beyond the attributes themselves, in words for the plan
    /// (whether a launch template change rolls the instances). Default:
    /// nothing to say.
    fn update_notes(&self, _desired: &Resource, _changed: &[&str]) -> Vec<String> {
        Vec::new()
    }

    /// What the provider finds from the resources and the files the spec
    /// names (certificates), touching nothing else: features it does not
    /// support (`Unsupported`: `plan` shows them, `apply` refuses) and
    /// files that cannot serve (`Invalid`). `validate` runs this and no
    /// more. Default: nothing to say.
    fn check_spec(&self, _desired: &[Resource]) -> Vec<Finding> {
        Vec::new()
    }

    /// Problems in the world before anything is touched, beyond
    /// `check_spec`: conflicts with the machine (ports already taken by
    /// someone else). An error when the
    /// provider cannot even look (its machine-wide files are unsafe to use).
    fn check(&self, desired: &[Resource], state: &State) -> Result<Vec<Finding>>;

    /// What exists now for a resource the state records.
    fn read(&self, prior: &ResourceState) -> Result<Observed>;

    /// Creates the resource, given the computed attributes of what it
    /// depends on. Also called for a resource refresh found `Missing`, over
    /// whatever is left of it: the provider adopts what still lives
    /// (instances of a killed supervisor) or replaces it.
    fn create(&self, resource: &Resource, dependencies: &DependencyOutputs, progress: &dyn Progress)
        -> Result<Applied>;

    /// Updates the resource in place.
    fn update(
        &self,
        prior: &ResourceState,
        resource: &Resource,
        dependencies: &DependencyOutputs,
        progress: &dyn Progress,
    ) -> Result<Applied>;

    /// Deletes the resource (draining first); nothing of it may remain.
    fn delete(&self, prior: &ResourceState, progress: &dyn Progress) -> Result<()>;

    /// Whether the resource serves as desired.
    fn ready(&self, current: &ResourceState) -> Result<Readiness>;

    /// Outputs (URLs, DNS names) of the applied resources, by name.
    fn outputs(&self, resources: &[ResourceState]) -> BTreeMap<String, String>;

    /// Live status of a resource for `lbctl status`.
    fn status(&self, current: &ResourceState) -> Result<LiveStatus>;

    /// The log files of the applied resources, for `lbctl logs`: access
    /// logs, groups' events, instances' output. Default: none (a provider
    /// whose logs are elsewhere).
    fn log_files(&self, _resources: &[ResourceState]) -> Vec<LogFile> {
        Vec::new()
    }

    /// After a whole stack is destroyed: release what outlives its resources
    /// (the local provider's allocated addresses). Returns what was
    /// released, in words. Default: nothing.
    fn stack_destroyed(&self) -> Result<Vec<String>> {
        Ok(Vec::new())
    }
}
