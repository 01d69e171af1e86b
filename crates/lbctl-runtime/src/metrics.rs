//! The Prometheus text format (0.0.4), written: what the proxies and the
//! supervisors serve on their metrics ports. A scrape is small and made
//! from counters the processes already keep, so it is written directly
//! rather than through a client library's registry.

use std::fmt::Write;

/// A label value escaped for the text format.
fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// `{a="x",b="y"}`.
fn labels(pairs: &[(&str, &str)]) -> String {
    let inner: Vec<String> = pairs.iter().map(|(key, value)| format!("{key}=\"{}\"", escape(value))).collect();
    format!("{{{}}}", inner.join(","))
}

/// The text of one scrape.
pub struct Exposition {
    text: String,
}

impl Exposition {
    /// An empty scrape.
    pub fn new() -> Exposition {
        Exposition { text: String::new() }
    }

    /// Starts a metric family.
    pub fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.text, "# HELP {name} {help}");
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }

    /// A family of one sample: `kind` `name`, its help, its value at `pairs`.
    pub fn single(
        &mut self,
        name: &str,
        kind: &str,
        help: &str,
        pairs: &[(&str, &str)],
        value: impl std::fmt::Display,
    ) {
        self.family(name, kind, help);
        self.sample(name, pairs, value);
    }

    /// One sample.
    pub fn sample(&mut self, name: &str, pairs: &[(&str, &str)], value: impl std::fmt::Display) {
        let _ = writeln!(self.text, "{name}{} {value}", labels(pairs));
    }

    /// The text.
    pub fn finish(self) -> String {
        self.text
    }
}

impl Default for Exposition {
    fn default() -> Self {
        Exposition::new()
    }
}
