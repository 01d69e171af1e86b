//! Durations written as `500ms`, `2s`, `5m`, `1h` (parsed by `humantime`).

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A duration as written in the spec; serializes back to the same short form.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration(pub std::time::Duration);

impl Duration {
    /// A duration of whole seconds.
    pub const fn from_secs(secs: u64) -> Self {
        Duration(std::time::Duration::from_secs(secs))
    }

    /// A duration of whole milliseconds.
    pub const fn from_millis(millis: u64) -> Self {
        Duration(std::time::Duration::from_millis(millis))
    }

    /// The std duration.
    pub fn get(self) -> std::time::Duration {
        self.0
    }

    /// Parses `500ms`, `2s`, `5m`, `1h30m`; a bare number is refused so that
    /// units are never guessed.
    pub fn parse(text: &str) -> Result<Duration, String> {
        humantime::parse_duration(text.trim()).map(Duration).map_err(|err| {
            use humantime::DurationError::*;
            let why = match err {
                NumberExpected(_) | InvalidCharacter(_) | Empty => "a number then a unit".to_string(),
                UnknownUnit { unit, .. } if unit.is_empty() => "a unit after the number".to_string(),
                UnknownUnit { unit, .. } => format!("a known unit, not `{unit}`"),
                NumberOverflow => "a smaller number".to_string(),
            };
            format!("invalid duration `{text}`: expected {why}, e.g. 500ms, 2s, 5m, 1h30m")
        })
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let total_ms = self.0.as_millis();
        if total_ms == 0 {
            return f.write_str("0s");
        }
        write!(f, "{}", humantime::format_duration(self.0)).map(|_| ())
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Duration::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Duration {
    fn schema_name() -> String {
        "Duration".to_string()
    }

    fn json_schema(_: &mut schemars::gen::SchemaGenerator) -> schemars::schema::Schema {
        let mut schema = schemars::schema::SchemaObject {
            instance_type: Some(schemars::schema::InstanceType::String.into()),
            ..Default::default()
        };
        schema.string().pattern = Some(r"^\s*([0-9]+\s*(ns|us|ms|s|m|h|d)\s*)+$".to_string());
        schema.metadata().description = Some("A duration such as `500ms`, `2s`, `5m` or `1h30m`.".to_string());
        schema.into()
    }
}

#[cfg(test)]
mod tests {
    use super::Duration;

    fn check(text: &str, expect_ms: Option<u128>) {
        let got = Duration::parse(text).ok().map(|it| it.0.as_millis());
        assert_eq!(got, expect_ms, "parsing {text:?}");
    }

    #[test]
    fn parses_the_spec_forms() {
        check("500ms", Some(500));
        check("2s", Some(2000));
        check("5m", Some(300_000));
        check("1h", Some(3_600_000));
        check("1m30s", Some(90_000));
        check("5", None);
        check("fast", None);
    }

    #[test]
    fn displays_short_forms() {
        assert_eq!(Duration::parse("2s").unwrap().to_string(), "2s");
        assert_eq!(Duration::parse("500ms").unwrap().to_string(), "500ms");
        assert_eq!(Duration::parse("0s").unwrap().to_string(), "0s");
    }
}
