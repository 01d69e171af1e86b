//! The document's shape, checked against the spec's own JSON Schema before
//! it is typed, so that one run reports every unknown field, every unknown
//! value of an enumeration and every missing field, each placed in the file
//! and with a suggestion for a near miss ("did you mean `desired_capacity`?").
//!
//! The schema is the one `lbctl schema` prints (schemars, from the types), so
//! this check never disagrees with the types about which fields exist. What
//! it cannot see (a string where a number goes) is left to the typed parse,
//! which runs on the document with the unknown fields taken out and each
//! near miss read as what it was most likely meant to be (so that the
//! semantic checks can run and report in the same run).

use schemars::schema::{InstanceType, RootSchema, Schema, SchemaObject, SingleOrVec};
use serde_yaml::Value;

/// A shape problem: the spec path it concerns, whether the location to
/// show is its key's (an unknown field), and the message.
pub(crate) struct Problem {
    pub path: String,
    pub at_key: bool,
    pub message: String,
}

/// The closest of `candidates` to `word`, when close enough to be a typo.
pub fn suggestion<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let limit = (word.chars().count() / 3).max(1);
    candidates
        .into_iter()
        .map(|it| (strsim::damerau_levenshtein(&word.to_lowercase(), &it.to_lowercase()), it))
        .filter(|(distance, _)| *distance <= limit)
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, it)| it)
}

/// `; did you mean `x`?` for a near miss, else nothing.
pub fn did_you_mean<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> String {
    suggestion(word, candidates).map(|it| format!("; did you mean `{it}`?")).unwrap_or_default()
}

/// Checks `document` against the spec's schema, renaming every unknown
/// field that is a near miss to the field it was meant to be (removing the
/// others) and reading every near-miss value as the value meant, and
/// returns the problems in document order.
/// Also returns the renames: (the path meant, the path written), so that
/// problems found later at a meant path are placed where it is written.
pub(crate) fn check(document: &mut Value) -> (Vec<Problem>, Vec<(String, String)>) {
    let root = schemars::schema_for!(crate::Spec);
    let top = Schema::Object(root.schema.clone());
    let mut walker = Walker { root: &root, problems: Vec::new(), renames: Vec::new() };
    walker.walk(document, &top, "");
    (walker.problems, walker.renames)
}

struct Walker<'a> {
    root: &'a RootSchema,
    problems: Vec<Problem>,
    renames: Vec<(String, String)>,
}

/// The object schemas a value may match, with references, `allOf`,
/// `anyOf` and `oneOf` flattened.
fn leaves<'a>(root: &'a RootSchema, schema: &'a Schema, out: &mut Vec<&'a SchemaObject>) {
    let Schema::Object(object) = schema else { return };
    if let Some(reference) = &object.reference {
        let name = reference.trim_start_matches("#/definitions/");
        if let Some(definition) = root.definitions.get(name) {
            leaves(root, definition, out);
        }
        return;
    }
    if let Some(sub) = &object.subschemas {
        let nested = [&sub.all_of, &sub.any_of, &sub.one_of];
        let mut any = false;
        for list in nested.into_iter().flatten() {
            for schema in list {
                any = true;
                leaves(root, schema, out);
            }
        }
        if any {
            return;
        }
    }
    out.push(object);
}

fn accepts(object: &SchemaObject, kind: InstanceType) -> bool {
    match &object.instance_type {
        None => object.enum_values.is_none() && object.object.is_none() && object.array.is_none(),
        Some(SingleOrVec::Single(single)) => **single == kind,
        Some(SingleOrVec::Vec(list)) => list.contains(&kind),
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

impl<'a> Walker<'a> {
    fn problem(&mut self, path: String, at_key: bool, message: String) {
        self.problems.push(Problem { path, at_key, message });
    }

    fn walk(&mut self, value: &mut Value, schema: &'a Schema, path: &str) {
        let mut found = Vec::new();
        leaves(self.root, schema, &mut found);
        match value {
            Value::Mapping(mapping) => {
                let objects: Vec<&SchemaObject> = found.into_iter().filter(|it| it.object.is_some()).collect();
                if objects.is_empty() {
                    return;
                }
                // Every key known to any shape the value may have.
                let known: Vec<&str> = objects
                    .iter()
                    .flat_map(|it| it.object.as_ref().into_iter().flat_map(|it| it.properties.keys()))
                    .map(String::as_str)
                    .collect();
                let additional = objects
                    .iter()
                    .filter_map(|it| it.object.as_ref()?.additional_properties.as_deref())
                    .find(|it| !matches!(it, Schema::Bool(false)));
                let mut unknown = Vec::new();
                // Fields an unknown one was taken for: not also "missing".
                let mut meant = Vec::new();
                for (key, item) in mapping.iter_mut() {
                    let Some(key) = key.as_str().map(str::to_string) else { continue };
                    let property = objects.iter().find_map(|it| it.object.as_ref()?.properties.get(&key));
                    match (property, additional) {
                        (Some(schema), _) | (None, Some(schema)) => self.walk(item, schema, &join(path, &key)),
                        (None, None) => {
                            meant.extend(suggestion(&key, known.iter().copied()));
                            let hint = did_you_mean(&key, known.iter().copied());
                            let expected =
                                if hint.is_empty() { format!("; expected one of {}", list(&known)) } else { hint };
                            self.problem(join(path, &key), true, format!("unknown field `{key}`{expected}"));
                            unknown.push(key);
                        }
                    }
                }
                for key in unknown {
                    let Some(value) = mapping.remove(key.as_str()) else { continue };
                    if let Some(meant) = suggestion(&key, known.iter().copied()).filter(|it| !mapping.contains_key(*it))
                    {
                        mapping.insert(Value::String(meant.to_string()), value);
                        self.renames.push((join(path, meant), join(path, &key)));
                    }
                }
                // Missing fields, when the value can have one shape only.
                if let [only] = objects.as_slice() {
                    let required = only.object.as_ref().map(|it| &it.required);
                    for key in required.into_iter().flatten() {
                        if !mapping.contains_key(key.as_str()) && !meant.contains(&key.as_str()) {
                            self.problem(path.to_string(), false, format!("missing field `{key}`"));
                        }
                    }
                }
            }
            Value::Sequence(items) => {
                let Some(item_schema) = found.iter().find_map(|it| match it.array.as_ref()?.items.as_ref()? {
                    SingleOrVec::Single(schema) => Some(&**schema),
                    SingleOrVec::Vec(_) => None,
                }) else {
                    return;
                };
                for (idx, item) in items.iter_mut().enumerate() {
                    self.walk(item, item_schema, &format!("{path}[{idx}]"));
                }
            }
            Value::String(text) => {
                // An enumeration's value: every shape that takes a string
                // lists its values.
                let strings: Vec<&SchemaObject> = found
                    .into_iter()
                    .filter(|it| accepts(it, InstanceType::String) || it.enum_values.is_some())
                    .collect();
                if strings.is_empty() || strings.iter().any(|it| it.enum_values.is_none()) {
                    return;
                }
                let allowed: Vec<&str> = strings
                    .iter()
                    .flat_map(|it| it.enum_values.iter().flatten())
                    .filter_map(|it| it.as_str())
                    .collect();
                if !allowed.contains(&text.as_str()) {
                    let hint = did_you_mean(text, allowed.iter().copied());
                    let message = format!("unknown value `{text}`, expected {}{hint}", list(&allowed));
                    self.problem(path.to_string(), false, message);
                    if let Some(meant) = suggestion(text, allowed.iter().copied()) {
                        *text = meant.to_string();
                    }
                }
            }
            Value::Tagged(tagged) => self.walk(&mut tagged.value, schema, path),
            Value::Null | Value::Bool(_) | Value::Number(_) => {}
        }
    }
}

/// `a`, `b` or `c` / one of `a`, `b`, `c`.
fn list(words: &[&str]) -> String {
    match words {
        [one] => format!("`{one}`"),
        _ => format!("one of {}", words.iter().map(|it| format!("`{it}`")).collect::<Vec<_>>().join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions_are_for_near_misses_only() {
        let fields = ["desired_capacity", "min_size", "max_size", "target_groups"];
        assert_eq!(suggestion("desired_capacty", fields), Some("desired_capacity"));
        assert_eq!(suggestion("maxsize", fields), Some("max_size"));
        assert_eq!(suggestion("target_group", fields), Some("target_groups"));
        assert_eq!(suggestion("colour", fields), None);
        assert_eq!(suggestion("HTPP", ["HTTP", "HTTPS", "TCP"]), Some("HTTP"));
    }
}
