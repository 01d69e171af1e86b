//! The diff: desired resources against the state as refreshed, into a `Plan`.
//!
//! Pure: no I/O. What exists was observed beforehand (`refresh`) and is
//! passed in, so the same inputs always give the same plan.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::Result;
use serde_json::Value;

use crate::provider::{Finding, Observed, Provider};
use crate::resource::{Address, Resource};
use crate::state::{ResourceState, State};

/// What an action does to a resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ActionKind {
    /// `+`: create.
    Create,
    /// `~`: update in place.
    Update,
    /// `-/+`: delete, then create.
    Replace,
    /// `-`: delete.
    Delete,
}

impl ActionKind {
    /// The Terraform-style symbol.
    pub fn symbol(self) -> &'static str {
        match self {
            ActionKind::Create => "+",
            ActionKind::Update => "~",
            ActionKind::Replace => "-/+",
            ActionKind::Delete => "-",
        }
    }

    /// The word used in `--json` output.
    pub fn as_str(self) -> &'static str {
        match self {
            ActionKind::Create => "create",
            ActionKind::Update => "update",
            ActionKind::Replace => "replace",
            ActionKind::Delete => "delete",
        }
    }
}

/// One attribute that changes.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// Attribute path (`listeners[0].port`).
    pub path: String,
    /// Value before (`None`: absent).
    pub before: Option<Value>,
    /// Value after (`None`: absent).
    pub after: Option<Value>,
    /// Whether this change forces the resource to be replaced.
    pub forces_replacement: bool,
}

/// One planned action.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedAction {
    /// The resource.
    pub address: Address,
    /// What happens.
    pub kind: ActionKind,
    /// Why, in words.
    pub reason: String,
    /// Attribute changes (all attributes for a create or delete).
    pub changes: Vec<Change>,
    /// The desired resource (create, update, replace).
    pub desired: Option<Resource>,
    /// The state before (update, replace, delete).
    pub prior: Option<ResourceState>,
}

/// What `apply` would do.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Actions, sorted by address.
    pub actions: Vec<PlannedAction>,
    /// Features the provider cannot do yet: `apply` refuses while any remain.
    pub unsupported: Vec<Finding>,
    /// What the plan deliberately leaves alone, in words (attributes the
    /// provider manages at run time).
    pub notes: Vec<String>,
    /// Every desired resource (to wait for readiness and compute outputs).
    pub desired: Vec<Resource>,
    /// The state's serial when planned.
    pub serial: u64,
    /// The state's lineage when planned.
    pub lineage: String,
}

impl Plan {
    /// (to add, to change, to destroy), counting a replace as one add and one destroy.
    pub fn summary(&self) -> (usize, usize, usize) {
        let count = |kinds: &[ActionKind]| self.actions.iter().filter(|it| kinds.contains(&it.kind)).count();
        (
            count(&[ActionKind::Create, ActionKind::Replace]),
            count(&[ActionKind::Update]),
            count(&[ActionKind::Delete, ActionKind::Replace]),
        )
    }

    /// Whether applying would change anything.
    pub fn has_changes(&self) -> bool {
        !self.actions.is_empty()
    }

    /// A compact description of the actions, to tell whether two plans agree.
    pub fn fingerprint(&self) -> String {
        let mut text = String::new();
        for action in &self.actions {
            text.push_str(&format!("{} {}\n", action.kind.as_str(), action.address));
            for change in &action.changes {
                text.push_str(&format!("  {} {:?} -> {:?}\n", change.path, change.before, change.after));
            }
        }
        text
    }
}

/// Observes every resource of the state.
pub fn refresh(provider: &dyn Provider, state: &State) -> Result<BTreeMap<Address, Observed>> {
    let mut observed = BTreeMap::new();
    for resource in state.resources.values() {
        observed.insert(resource.address.clone(), provider.read(resource)?);
    }
    Ok(observed)
}

/// Diffs `desired` against `state` as `observed`.
pub fn plan(
    provider: &dyn Provider,
    desired: Vec<Resource>,
    state: &State,
    observed: &BTreeMap<Address, Observed>,
    unsupported: Vec<Finding>,
) -> Plan {
    let mut actions = Vec::new();
    let mut notes = Vec::new();
    for resource in &desired {
        for path in provider.ignored_changes(resource) {
            notes.push(format!(
                "{}: `{path}` is managed at run time (a scaling policy); plan leaves it alone",
                resource.address
            ));
        }
    }
    let desired_addresses: BTreeSet<&Address> = desired.iter().map(|it| &it.address).collect();
    for resource in &desired {
        let Some(prior) = state.get(&resource.address) else {
            actions.push(PlannedAction {
                address: resource.address.clone(),
                kind: ActionKind::Create,
                reason: "not in the state".to_string(),
                changes: attribute_changes(&Value::Null, &resource.attributes, &[]),
                desired: Some(resource.clone()),
                prior: None,
            });
            continue;
        };
        let triggers = provider.replace_triggers(resource.address.kind);
        let ignored = provider.ignored_changes(resource);
        let mut changes = attribute_changes(&prior.attributes, &resource.attributes, triggers);
        changes.retain(|change| !ignored.contains(&change.path.as_str()));
        let observation = observed.get(&resource.address).cloned().unwrap_or(Observed::Present);
        let (kind, reason) = match observation {
            Observed::Missing { reason } => {
                actions.push(PlannedAction {
                    address: resource.address.clone(),
                    kind: ActionKind::Create,
                    reason: format!("{reason}; it will be created again"),
                    changes: attribute_changes(&Value::Null, &resource.attributes, &[]),
                    desired: Some(resource.clone()),
                    prior: Some(prior.clone()),
                });
                continue;
            }
            _ if changes.iter().any(|it| it.forces_replacement) => {
                let forcing: Vec<String> =
                    changes.iter().filter(|it| it.forces_replacement).map(|it| format!("`{}`", it.path)).collect();
                (ActionKind::Replace, format!("{} forces replacement", forcing.join(", ")))
            }
            Observed::Drifted { reason } => (ActionKind::Update, reason),
            Observed::Present if !changes.is_empty() => (ActionKind::Update, "the spec changed".to_string()),
            Observed::Present => continue,
        };
        if kind == ActionKind::Update {
            let changed: Vec<&str> = changes.iter().map(|it| it.path.as_str()).collect();
            notes.extend(
                provider.update_notes(resource, &changed).into_iter().map(|it| format!("{}: {it}", resource.address)),
            );
        }
        actions.push(PlannedAction {
            address: resource.address.clone(),
            kind,
            reason,
            changes,
            desired: Some(resource.clone()),
            prior: Some(prior.clone()),
        });
    }
    for prior in state.resources.values() {
        if desired_addresses.contains(&prior.address) {
            continue;
        }
        actions.push(PlannedAction {
            address: prior.address.clone(),
            kind: ActionKind::Delete,
            reason: "not in the spec".to_string(),
            changes: attribute_changes(&prior.attributes, &Value::Null, &[]),
            desired: None,
            prior: Some(prior.clone()),
        });
    }
    actions.sort_by(|a, b| a.address.cmp(&b.address));
    Plan { actions, unsupported, notes, desired, serial: state.serial, lineage: state.lineage.clone() }
}

/// Leaf-level differences between two attribute values. Objects are walked
/// key by key and arrays of objects index by index; arrays of plain values
/// (a command line) are compared whole.
pub fn attribute_changes(before: &Value, after: &Value, triggers: &[&str]) -> Vec<Change> {
    let mut before_leaves = BTreeMap::new();
    let mut after_leaves = BTreeMap::new();
    flatten("", before, &mut before_leaves);
    flatten("", after, &mut after_leaves);
    let paths: BTreeSet<&String> = before_leaves.keys().chain(after_leaves.keys()).collect();
    let mut changes = Vec::new();
    for path in paths {
        let old = before_leaves.get(path);
        let new = after_leaves.get(path);
        if old == new {
            continue;
        }
        let forces_replacement = triggers.iter().any(|trigger| {
            path == trigger || path.starts_with(&format!("{trigger}.")) || path.starts_with(&format!("{trigger}["))
        });
        changes.push(Change { path: path.clone(), before: old.cloned(), after: new.cloned(), forces_replacement });
    }
    changes
}

fn flatten(path: &str, value: &Value, leaves: &mut BTreeMap<String, Value>) {
    let join = |key: &str| if path.is_empty() { key.to_string() } else { format!("{path}.{key}") };
    match value {
        Value::Null => {}
        Value::Object(map) if !map.is_empty() => {
            for (key, child) in map {
                flatten(&join(key), child, leaves);
            }
        }
        Value::Array(items) if items.iter().any(|it| it.is_object() || it.is_array()) => {
            for (idx, child) in items.iter().enumerate() {
                flatten(&format!("{path}[{idx}]"), child, leaves);
            }
        }
        _ => {
            leaves.insert(path.to_string(), value.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn check(before: Value, after: Value, triggers: &[&str], expect: &[&str]) {
        let got: Vec<String> = attribute_changes(&before, &after, triggers)
            .iter()
            .map(|it| {
                let show = |value: &Option<Value>| value.as_ref().map_or("null".to_string(), |it| it.to_string());
                let mark = if it.forces_replacement { " (forces replacement)" } else { "" };
                format!("{}: {} -> {}{mark}", it.path, show(&it.before), show(&it.after))
            })
            .collect();
        assert_eq!(got, expect);
    }

    #[test]
    fn scalar_and_nested_changes() {
        check(
            json!({"desired_capacity": 2, "min_size": 1}),
            json!({"desired_capacity": 4, "min_size": 1}),
            &[],
            &["desired_capacity: 2 -> 4"],
        );
        check(
            json!({"listeners": [{"port": 8080, "protocol": "HTTP"}]}),
            json!({"listeners": [{"port": 8081, "protocol": "HTTP"}]}),
            &["listeners"],
            &["listeners[0].port: 8080 -> 8081 (forces replacement)"],
        );
    }

    #[test]
    fn plain_arrays_compare_whole() {
        check(
            json!({"command": ["a", "b"]}),
            json!({"command": ["a", "c"]}),
            &[],
            &[r#"command: ["a","b"] -> ["a","c"]"#],
        );
    }

    #[test]
    fn added_and_removed_attributes() {
        check(json!({"a": 1}), json!({"b": 2}), &["b"], &["a: 1 -> null", "b: null -> 2 (forces replacement)"]);
    }
}
