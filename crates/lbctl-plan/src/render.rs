//! Plans as text (Terraform's layout) and as the documented `--json` value.

use std::fmt::Write;

use serde_json::{json, Value};

use crate::diff::{ActionKind, Change, Plan};
use crate::provider::Severity;

/// Text rendering options.
#[derive(Debug, Clone, Copy, Default)]
pub struct Style {
    /// ANSI colours (off when `NO_COLOR` is set or output is not a terminal).
    pub color: bool,
}

impl Style {
    fn paint(&self, kind: ActionKind, text: &str) -> String {
        if !self.color {
            return text.to_string();
        }
        let code = match kind {
            ActionKind::Create => "32",
            ActionKind::Update => "33",
            ActionKind::Replace => "35",
            ActionKind::Delete => "31",
        };
        format!("\x1b[{code}m{text}\x1b[0m")
    }

    fn bold(&self, text: &str) -> String {
        if self.color {
            format!("\x1b[1m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }
}

/// The plan as Terraform-style text, ending with the `Plan:` summary line.
pub fn text(plan: &Plan, style: Style) -> String {
    let mut out = String::new();
    if !plan.unsupported.is_empty() {
        out.push_str("Not supported by the provider yet (apply will refuse):\n");
        for finding in plan.unsupported.iter().filter(|it| it.severity == Severity::Unsupported) {
            let _ = writeln!(out, "  ! {}: {}", finding.path, finding.message);
        }
        out.push('\n');
    }
    for note in &plan.notes {
        let _ = writeln!(out, "Note: {note}.");
    }
    if !plan.notes.is_empty() {
        out.push('\n');
    }
    if !plan.has_changes() {
        out.push_str("No changes. The actual state matches the spec.\n");
        return out;
    }
    out.push_str("lbctl will perform the following actions:\n");
    for action in &plan.actions {
        let verb = match action.kind {
            ActionKind::Create => "will be created",
            ActionKind::Update => "will be updated in-place",
            ActionKind::Replace => "must be replaced",
            ActionKind::Delete => "will be destroyed",
        };
        let _ = writeln!(out, "\n  {}", style.bold(&format!("# {} {verb}", action.address)));
        let _ = writeln!(out, "  # ({})", action.reason);
        let symbol = action.kind.symbol();
        let header = format!("{symbol:>3} {} \"{}\" {{", action.address.kind.as_str(), action.address.name);
        let _ = writeln!(out, "{}", style.paint(action.kind, &header));
        for change in &action.changes {
            out.push_str(&change_line(action.kind, change, style));
        }
        out.push_str("    }\n");
    }
    let (add, change, destroy) = plan.summary();
    let _ = writeln!(out, "\nPlan: {add} to add, {change} to change, {destroy} to destroy.");
    out
}

fn show(value: &Option<Value>) -> String {
    match value {
        None => "(none)".to_string(),
        Some(Value::String(text)) => format!("{text:?}"),
        Some(other) => other.to_string(),
    }
}

/// One attribute line; long values (commands, bodies) get a line diff.
fn change_line(kind: ActionKind, change: &Change, style: Style) -> String {
    let mut forces = String::new();
    if change.after_is_default && change.after.is_some() {
        forces.push_str(" (default)");
    }
    if change.changed_outside {
        forces.push_str(" (changed outside lbctl)");
    }
    if change.forces_replacement {
        forces.push_str(" # forces replacement");
    }
    let forces = forces.as_str();
    if change.known_after_apply {
        return format!("      {} {} = (known after apply)\n", style.paint(kind, "+"), change.path);
    }
    match kind {
        ActionKind::Create => format!("      {} {} = {}\n", style.paint(kind, "+"), change.path, show(&change.after)),
        ActionKind::Delete => format!("      {} {} = {}\n", style.paint(kind, "-"), change.path, show(&change.before)),
        ActionKind::Update | ActionKind::Replace => {
            let (before, after) = (show(&change.before), show(&change.after));
            if before.len() + after.len() > 100 {
                return long_change(kind, change, &before, &after, forces, style);
            }
            let symbol = match (&change.before, &change.after) {
                (None, _) => "+",
                (_, None) => "-",
                _ => "~",
            };
            format!("      {} {}: {before} -> {after}{forces}\n", style.paint(ActionKind::Update, symbol), change.path)
        }
    }
}

fn long_change(kind: ActionKind, change: &Change, before: &str, after: &str, forces: &str, style: Style) -> String {
    let mut out = format!("      {} {}:{forces}\n", style.paint(kind, "~"), change.path);
    let pretty = |text: &str| -> String {
        serde_json::from_str::<Value>(text)
            .ok()
            .and_then(|it| serde_json::to_string_pretty(&it).ok())
            .unwrap_or_else(|| text.to_string())
    };
    let (before, after) = (pretty(before), pretty(after));
    let diff = similar::TextDiff::from_lines(&before, &after);
    for line in diff.iter_all_changes() {
        let (sign, paint_kind) = match line.tag() {
            similar::ChangeTag::Delete => ("-", Some(ActionKind::Delete)),
            similar::ChangeTag::Insert => ("+", Some(ActionKind::Create)),
            similar::ChangeTag::Equal => (" ", None),
        };
        let text = format!("{sign} {}", line.value().trim_end());
        let text = match paint_kind {
            Some(it) => style.paint(it, &text),
            None => text,
        };
        let _ = writeln!(out, "          {text}");
    }
    out
}

/// The plan as the stable `--json` document (format_version 1):
///
/// ```json
/// { "format_version": 1, "lineage": "…", "serial": 3, "has_changes": true,
///   "summary": { "add": 1, "change": 0, "destroy": 0 },
///   "resource_changes": [ { "address": "load_balancer.public", "action": "create",
///       "reason": "…", "changes": [ { "path": "…", "before": …, "after": …,
///       "forces_replacement": false, "after_is_default": false,
///       "changed_outside": false, "known_after_apply": false } ] } ],
///   "unsupported": [ { "path": "…", "message": "…" } ], "notes": [ "…" ] }
/// ```
pub fn json(plan: &Plan) -> Value {
    let (add, change, destroy) = plan.summary();
    let resource_changes: Vec<Value> = plan
        .actions
        .iter()
        .map(|action| {
            let changes: Vec<Value> = action
                .changes
                .iter()
                .map(|it| {
                    json!({
                        "path": it.path,
                        "before": it.before,
                        "after": it.after,
                        "forces_replacement": it.forces_replacement,
                        "after_is_default": it.after_is_default,
                        "changed_outside": it.changed_outside,
                        "known_after_apply": it.known_after_apply,
                    })
                })
                .collect();
            json!({
                "address": action.address.to_string(),
                "action": action.kind.as_str(),
                "reason": action.reason,
                "changes": changes,
            })
        })
        .collect();
    let unsupported: Vec<Value> =
        plan.unsupported.iter().map(|it| json!({"path": it.path, "message": it.message})).collect();
    json!({
        "format_version": 1,
        "lineage": plan.lineage,
        "serial": plan.serial,
        "has_changes": plan.has_changes(),
        "summary": { "add": add, "change": change, "destroy": destroy },
        "resource_changes": resource_changes,
        "unsupported": unsupported,
        "notes": plan.notes,
    })
}
