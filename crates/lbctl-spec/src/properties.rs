//! Property tests of the parser: whatever the bytes, `parse` returns (no
//! panic), and every diagnostic it returns is placed in the file. Inputs are
//! arbitrary text and, closer to what users write, the examples with
//! random edits (bytes deleted, replaced or inserted, lines swapped).

use std::path::PathBuf;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

/// Cases per property: bounded so that `make test` stays quick.
const CASES: u32 = 400;

/// Specs users start from.
const SEEDS: &[&str] = &[
    include_str!("../../../examples/quickstart.yaml"),
    include_str!("../../../examples/network.yaml"),
    include_str!("../../../examples/grpc.yaml"),
];

/// One edit of a source: at a position (a fraction of its length), delete,
/// replace or insert text.
#[derive(Debug, Clone)]
enum Edit {
    Delete { at: f64, len: usize },
    Replace { at: f64, text: String },
    Insert { at: f64, text: String },
    SwapLines { first: f64, second: f64 },
}

fn edit_strategy() -> impl Strategy<Value = Edit> {
    // Text that means something to YAML and to the spec, besides anything.
    let text = prop_oneof![
        "[ -~\n]{0,12}",
        Just(": ".to_string()),
        Just("\n  ".to_string()),
        Just("{ ".to_string()),
        Just("[".to_string()),
        Just("- ".to_string()),
        Just("&a ".to_string()),
        Just("*a".to_string()),
        Just("!!binary ".to_string()),
        Just("\"".to_string()),
        Just("99999999999999999999".to_string()),
        Just("-1".to_string()),
        Just("~".to_string()),
        Just("0s".to_string()),
        Just("\u{1F600}".to_string()),
    ];
    prop_oneof![
        (0.0..1.0f64, 0usize..40).prop_map(|(at, len)| Edit::Delete { at, len }),
        (0.0..1.0f64, text.clone()).prop_map(|(at, text)| Edit::Replace { at, text }),
        (0.0..1.0f64, text).prop_map(|(at, text)| Edit::Insert { at, text }),
        (0.0..1.0f64, 0.0..1.0f64).prop_map(|(first, second)| Edit::SwapLines { first, second }),
    ]
}

/// `source` with `edit` applied (on character boundaries).
fn apply(source: &str, edit: &Edit) -> String {
    let chars: Vec<char> = source.chars().collect();
    let index = |at: f64| ((chars.len() as f64) * at) as usize;
    let mut out: Vec<char> = chars.clone();
    match edit {
        Edit::Delete { at, len } => {
            let start = index(*at).min(out.len());
            let end = (start + len).min(out.len());
            out.drain(start..end);
        }
        Edit::Replace { at, text } => {
            let start = index(*at).min(out.len());
            let end = (start + text.chars().count()).min(out.len());
            out.splice(start..end, text.chars());
        }
        Edit::Insert { at, text } => {
            let start = index(*at).min(out.len());
            out.splice(start..start, text.chars());
        }
        Edit::SwapLines { first, second } => {
            let mut lines: Vec<&str> = source.lines().collect();
            if !lines.is_empty() {
                let (a, b) = (index(*first) % lines.len(), index(*second) % lines.len());
                lines.swap(a, b);
            }
            return lines.join("\n");
        }
    }
    out.into_iter().collect()
}

/// Parses `source`; fails the case when a diagnostic has no location.
fn parses_with_located_errors(source: &str) -> Result<(), TestCaseError> {
    if let Err(diagnostics) = crate::parse("lbctl.yaml", PathBuf::from("."), source.to_string()) {
        prop_assert!(!diagnostics.0.is_empty(), "an error with no diagnostic");
        for diagnostic in &diagnostics.0 {
            prop_assert!(diagnostic.location.is_some(), "no location: {diagnostic}\n--- source ---\n{source}");
        }
    }
    Ok(())
}

#[test]
fn the_parser_never_panics_and_places_every_error() {
    let mut runner = TestRunner::new(Config { cases: CASES, failure_persistence: None, ..Config::default() });
    let edited = (0..SEEDS.len(), proptest::collection::vec(edit_strategy(), 1..6));
    runner
        .run(&edited, |(seed, edits)| {
            let source = edits.iter().fold(SEEDS[seed].to_string(), |source, edit| apply(&source, edit));
            parses_with_located_errors(&source)
        })
        .unwrap();
    let mut runner = TestRunner::new(Config { cases: CASES, failure_persistence: None, ..Config::default() });
    runner.run(&"(?s).{0,400}", |source| parses_with_located_errors(&source)).unwrap();
    println!("parser properties: {} edited examples and {} arbitrary texts parsed, every error placed", CASES, CASES);
}
