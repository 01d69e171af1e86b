//! The diff: desired resources against the state as refreshed, into a `Plan`.
//!
//! Pure: no I/O. What exists was observed beforehand (`refresh`) and is
//! passed in, so the same inputs always give the same plan.
//!
//! Changes are found on the effective settings (`resolved`): what the
//! resource runs with (as observed when the provider can read it back, else
//! as applied) against what the spec now resolves to. A field that neither
//! the state nor the spec writes is left alone even when its default
//! differs (a default that changed between releases, or in context, does
//! not move a resource that nothing else changes, as Terraform leaves an
//! optional computed attribute). A changed value the spec does not write is
//! shown `(default)`; one that differs from what lbctl applied is shown
//! `(changed outside lbctl)`; one only the provider will know is shown
//! `(known after apply)`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

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
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Change {
    /// Attribute path (`listeners[0].port`).
    pub path: String,
    /// Value before (`None`: absent).
    pub before: Option<Value>,
    /// Value after (`None`: absent, or not known before apply).
    pub after: Option<Value>,
    /// Whether this change forces the resource to be replaced.
    pub forces_replacement: bool,
    /// The value after is a default: the spec does not write it.
    pub after_is_default: bool,
    /// The value before is not what lbctl applied: it changed outside lbctl.
    pub changed_outside: bool,
    /// Only the provider will know the value, after apply.
    pub known_after_apply: bool,
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
    /// The desired resource (create, update, replace), shared with
    /// `Plan::desired`.
    pub desired: Option<Arc<Resource>>,
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
    pub desired: Vec<Arc<Resource>>,
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
    let desired: Vec<Arc<Resource>> = desired.into_iter().map(Arc::new).collect();
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
        let created = |reason: String, prior: Option<ResourceState>| PlannedAction {
            address: resource.address.clone(),
            kind: ActionKind::Create,
            reason,
            changes: creation_changes(resource, &provider.computed(resource)),
            desired: Some(Arc::clone(resource)),
            prior,
        };
        let Some(prior) = state.get(&resource.address) else {
            actions.push(created("not in the state".to_string(), None));
            continue;
        };
        let observation = observed.get(&resource.address).cloned().unwrap_or(Observed::Present { attributes: None });
        let actual = match &observation {
            Observed::Missing { reason } => {
                actions.push(created(format!("{reason}; it will be created again"), Some(prior.clone())));
                continue;
            }
            Observed::Present { attributes: Some(observed) } => observed,
            Observed::Present { attributes: None } | Observed::Drifted { .. } => &prior.resolved,
        };
        let triggers = provider.replace_triggers(resource.address.kind);
        let ignored = provider.ignored_changes(resource);
        let mut changes = update_changes(prior, actual, resource, triggers);
        changes.retain(|change| !ignored.contains(&change.path.as_str()));
        let (kind, reason) = if changes.iter().any(|it| it.forces_replacement) {
            let forcing: Vec<String> =
                changes.iter().filter(|it| it.forces_replacement).map(|it| format!("`{}`", it.path)).collect();
            (ActionKind::Replace, format!("{} forces replacement", forcing.join(", ")))
        } else if let Observed::Drifted { reason } = observation {
            (ActionKind::Update, reason)
        } else if changes.iter().any(|it| it.changed_outside) {
            (ActionKind::Update, "changed outside lbctl".to_string())
        } else if !changes.is_empty() {
            (ActionKind::Update, "the spec changed".to_string())
        } else {
            continue;
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
            desired: Some(Arc::clone(resource)),
            prior: Some(prior.clone()),
        });
    }
    for prior in state.resources.values() {
        if desired_addresses.contains(&prior.address) {
            continue;
        }
        let shown = if prior.attributes.is_null() { &prior.resolved } else { &prior.attributes };
        actions.push(PlannedAction {
            address: prior.address.clone(),
            kind: ActionKind::Delete,
            reason: "not in the spec".to_string(),
            changes: attribute_changes(shown, &Value::Null, &[]),
            desired: None,
            prior: Some(prior.clone()),
        });
    }
    actions.sort_by(|a, b| a.address.cmp(&b.address));
    Plan { actions, unsupported, notes, desired, serial: state.serial, lineage: state.lineage.clone() }
}

/// What a create shows: the written attributes, and the computed ones as
/// `(known after apply)`.
fn creation_changes(resource: &Resource, computed: &[&str]) -> Vec<Change> {
    let mut changes = attribute_changes(&Value::Null, &resource.attributes, &[]);
    for name in computed {
        changes.push(Change { path: name.to_string(), known_after_apply: true, ..Change::default() });
    }
    changes.sort_by(|a, b| a.path.cmp(&b.path));
    changes
}

/// The changes that take `prior` (running with `actual`) to `desired`; see
/// the module's documentation.
fn update_changes(prior: &ResourceState, actual: &Value, desired: &Resource, triggers: &[&str]) -> Vec<Change> {
    let mut leaves = BTreeMap::new();
    flatten("", &prior.resolved, &mut leaves);
    let mut written_before = BTreeMap::new();
    flatten("", &prior.attributes, &mut written_before);
    let mut written_after = BTreeMap::new();
    flatten("", &desired.attributes, &mut written_after);
    let written = |leaves: &BTreeMap<String, Value>, path: &str| {
        leaves.keys().any(|it| it == path || path.starts_with(&format!("{it}.")) || path.starts_with(&format!("{it}[")))
    };
    let mut changes = attribute_changes(actual, &desired.resolved, triggers);
    changes.retain_mut(|change| {
        let applied = leaves.get(&change.path);
        change.changed_outside = applied != change.before.as_ref();
        change.after_is_default = !written(&written_after, &change.path);
        // A default neither side writes is no change, unless it moved outside lbctl.
        change.changed_outside || !change.after_is_default || written(&written_before, &change.path)
    });
    changes
}

/// The leaf-by-leaf differences between two attribute objects.
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
        changes.push(Change {
            path: path.clone(),
            before: old.cloned(),
            after: new.cloned(),
            forces_replacement,
            ..Change::default()
        });
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
        // Rules are told apart by priority, not position: a rule deleted
        // or added shows as that rule, not as its successors shifting.
        Value::Array(items) if !items.is_empty() && items.iter().all(|it| it["priority"].is_u64()) => {
            for child in items {
                flatten(&format!("{path}[priority {}]", child["priority"]), child, leaves);
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

    #[test]
    fn rules_are_compared_by_priority() {
        let before = json!({ "rules": [{ "priority": 10, "action": "a" }, { "priority": 20, "action": "b" }, { "priority": 30, "action": "c" }] });
        let after = json!({ "rules": [{ "priority": 10, "action": "a" }, { "priority": 30, "action": "c" }] });
        let changes: Vec<String> = attribute_changes(&before, &after, &[]).into_iter().map(|it| it.path).collect();
        assert_eq!(changes, ["rules[priority 20].action", "rules[priority 20].priority"]);
    }

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
