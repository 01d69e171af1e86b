//! Conventions enforced by `cargo test`, not by memory: every Rust file
//! opens with a `//!` saying what it owns, and no test is skipped or
//! expected to panic.

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, files: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() && path.file_name().is_some_and(|it| it != "target") {
            rust_files(&path, files);
        } else if path.extension().is_some_and(|it| it == "rs") {
            files.push(path);
        }
    }
}

#[test]
fn every_rust_file_says_what_it_owns_and_no_test_is_skipped() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut files = Vec::new();
    rust_files(&root.join("crates"), &mut files);
    rust_files(&root.join("tests"), &mut files);
    let banned = [concat!("#[should", "_panic"), concat!("#[ig", "nore")];
    let mut problems = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        if !text.trim_start().starts_with("//!") {
            problems.push(format!("{}: does not start with a `//!` comment", file.display()));
        }
        for word in banned {
            if text.contains(word) {
                problems
                    .push(format!("{}: uses {word}]; assert today's behaviour with a FIXME instead", file.display()));
            }
        }
    }
    assert!(files.len() > 10, "found the sources");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
