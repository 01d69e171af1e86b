//! Where each node of the YAML document is: resource path -> line and column.
//!
//! `serde_yaml` gives typed values but no spans, so the same text is read a
//! second time, as a stream of marked events, to record the position of every
//! key and value under its path (`load_balancers.public.listeners[0].port`);
//! that second read happens only once a diagnostic needs a place (`Lazy`).

use std::sync::OnceLock;

use rustc_hash::FxHashMap;
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// A 1-based line and column in the spec file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
}

impl Location {
    /// The start of the file: where problems of the whole document are shown.
    pub const START: Location = Location { line: 1, column: 1 };
}

/// Positions of the document's nodes by path. Keyed with rustc-hash's
/// hasher: a spec is the user's own file, and SipHash was 5% of planning
/// 10,000 resources.
#[derive(Debug, Clone, Default)]
pub struct SourceMap {
    values: FxHashMap<String, Location>,
    keys: FxHashMap<String, Location>,
}

impl SourceMap {
    /// Reads `source`; a document that does not scan gives an empty map (the
    /// typed parse reports that error with its own location).
    pub fn build(source: &str) -> SourceMap {
        let mut builder = Builder { map: SourceMap::default(), stack: Vec::new() };
        let mut parser = Parser::new_from_str(source);
        let _ = parser.load(&mut builder, false);
        builder.map
    }

    /// The location of the value at `path`, or of its nearest recorded
    /// ancestor, or else the start of the file. A path can have no recorded
    /// ancestor although the typed parse read it: this reader stops at text
    /// it cannot scan that the YAML parser accepts (a flow mapping continued
    /// on a line indented less than its key), and records nothing after it.
    pub fn locate(&self, path: &str) -> Location {
        let mut path = path;
        loop {
            if let Some(location) = self.values.get(path).or_else(|| self.keys.get(path)) {
                return *location;
            }
            match parent(path) {
                Some(up) => path = up,
                None => return Location::START,
            }
        }
    }

    /// Places everything under `meant` where it is written, under
    /// `written` (a near-miss key read as the one meant).
    pub(crate) fn alias(&mut self, meant: &str, written: &str) {
        for map in [&mut self.values, &mut self.keys] {
            let moved: Vec<(String, Location)> = map
                .iter()
                .filter_map(|(path, at)| {
                    let rest = path.strip_prefix(written)?;
                    (rest.is_empty() || rest.starts_with(['.', '['])).then(|| (format!("{meant}{rest}"), *at))
                })
                .collect();
            for (path, at) in moved {
                map.entry(path).or_insert(at);
            }
        }
    }

    /// Whether the document writes `path` (a key or a value there), rather
    /// than leaving it to its default.
    pub fn has(&self, path: &str) -> bool {
        self.keys.contains_key(path) || self.values.contains_key(path)
    }

    /// The location of the key that introduces `path` (falls back to `locate`).
    pub fn locate_key(&self, path: &str) -> Location {
        self.keys.get(path).copied().unwrap_or_else(|| self.locate(path))
    }
}

/// A file's source map, read the first time a diagnostic needs a place:
/// a valid spec is never read a second time (that second read was a
/// third of planning 10,000 resources, and most of its memory).
#[derive(Debug, Clone)]
pub(crate) struct Lazy {
    /// Near-miss keys read as the ones meant: (meant, written).
    renames: Vec<(String, String)>,
    map: OnceLock<SourceMap>,
}

impl Lazy {
    pub(crate) fn new(renames: Vec<(String, String)>) -> Lazy {
        Lazy { renames, map: OnceLock::new() }
    }

    /// The map of `source`, the text this one is of.
    pub(crate) fn of(&self, source: &str) -> &SourceMap {
        self.map.get_or_init(|| {
            let mut map = SourceMap::build(source);
            for (meant, written) in &self.renames {
                map.alias(meant, written);
            }
            map
        })
    }
}

/// The path of the node that holds `path` (`a.b[0].c` -> `a.b[0]`).
pub(crate) fn parent(path: &str) -> Option<&str> {
    let cut = path.rfind(['.', '['])?;
    Some(&path[..cut])
}

enum Frame {
    Map { path: String, key: Option<String> },
    Seq { path: String, index: usize },
}

struct Builder {
    map: SourceMap,
    stack: Vec<Frame>,
}

fn location(mark: Marker) -> Location {
    // yaml-rust2 counts lines from 1 and columns from 0.
    Location { line: mark.line(), column: mark.col() + 1 }
}

fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

impl Builder {
    /// The path of the value about to be read, if the parent expects a value.
    fn value_path(&self) -> Option<String> {
        match self.stack.last() {
            None => Some(String::new()),
            Some(Frame::Map { path, key: Some(key) }) => Some(join(path, key)),
            Some(Frame::Map { key: None, .. }) => None,
            Some(Frame::Seq { path, index }) => Some(format!("{path}[{index}]")),
        }
    }

    /// Moves the parent past the value just read.
    fn advance(&mut self) {
        match self.stack.last_mut() {
            Some(Frame::Map { key, .. }) => *key = None,
            Some(Frame::Seq { index, .. }) => *index += 1,
            None => {}
        }
    }

    fn scalar(&mut self, text: String, mark: Marker) {
        if let Some(Frame::Map { path, key: key @ None }) = self.stack.last_mut() {
            let full = join(path, &text);
            let at = location(mark);
            self.map.keys.entry(full).or_insert(at);
            // A block mapping's start mark can sit after its first key; the
            // mapping starts no later than any of its keys.
            if let Some(start) = self.map.values.get_mut(path.as_str()) {
                if (at.line, at.column) < (start.line, start.column) {
                    *start = at;
                }
            }
            *key = Some(text);
            return;
        }
        if let Some(path) = self.value_path() {
            self.map.values.entry(path).or_insert(location(mark));
        }
        self.advance();
    }

    fn open(&mut self, mark: Marker, sequence: bool) {
        // A complex (non-scalar) key gets a placeholder path.
        let path = self.value_path().unwrap_or_else(|| "?".to_string());
        self.map.values.entry(path.clone()).or_insert(location(mark));
        self.stack.push(if sequence { Frame::Seq { path, index: 0 } } else { Frame::Map { path, key: None } });
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, event: Event, mark: Marker) {
        match event {
            Event::Scalar(text, ..) => self.scalar(text, mark),
            Event::Alias(_) => self.scalar(String::new(), mark),
            Event::MappingStart(..) => self.open(mark, false),
            Event::SequenceStart(..) => self.open(mark, true),
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
                self.advance();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(source: &str, path: &str, expect: (usize, usize)) {
        let map = SourceMap::build(source);
        let got = map.locate(path);
        let got = (got.line, got.column);
        assert_eq!(got, expect, "locating {path}");
    }

    const DOC: &str = "version: 1\nname: shop\nload_balancers:\n  public:\n    listeners:\n      - port: 8080\n        default_action: { forward: web }\n";

    #[test]
    fn locates_values_by_path() {
        check(DOC, "name", (2, 7));
        check(DOC, "load_balancers.public.listeners[0].port", (6, 15));
        check(DOC, "load_balancers.public.listeners[0].default_action.forward", (7, 36));
    }

    #[test]
    fn falls_back_to_the_nearest_ancestor() {
        check(DOC, "load_balancers.public.listeners[0].rules[3]", (6, 9));
        check(DOC, "target_groups.web", (1, 1));
    }

    #[test]
    fn text_it_cannot_scan_leaves_what_follows_at_the_start_of_the_file() {
        // libyaml (the typed parse) accepts a flow mapping continued at a
        // lower indent; this reader stops there.
        let doc =
            "version: 1\ntarget_groups:\n  web:\n    health_check: {\n  path: /h }\nautoscaling_groups:\n  web: {}\n";
        assert!(serde_yaml::from_str::<serde_yaml::Value>(doc).is_ok());
        check(doc, "target_groups.web", (4, 5));
        check(doc, "autoscaling_groups.web.target_groups[0]", (1, 1));
    }
}
