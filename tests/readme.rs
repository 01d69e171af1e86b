//! The README is a promise: every YAML block is a valid spec, and every
//! command block runs as a newcomer would type it (from a copy of the
//! repository's `examples/`, with `lbctl` on the PATH); `make` lines are
//! dry-run (`make -n`), as running them here would nest the test suite.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::util::*;

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

/// The fenced blocks of `language` in the README, with the line each starts on.
fn blocks(language: &str) -> Vec<(usize, String)> {
    let readme = std::fs::read_to_string(repository().join("README.md")).unwrap();
    let mut found = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (idx, line) in readme.lines().enumerate() {
        match &mut current {
            None if line.trim_start() == format!("```{language}") => current = Some((idx + 2, String::new())),
            Some(_) if line.trim_start() == "```" => found.push(current.take().unwrap()),
            Some((_, text)) => {
                text.push_str(line);
                text.push('\n');
            }
            None => {}
        }
    }
    found
}

#[test]
fn every_yaml_block_of_the_readme_is_a_valid_spec() {
    let specs = blocks("yaml");
    assert!(!specs.is_empty(), "the README shows a spec");
    for (line, text) in specs {
        let stack = Stack::new(&text);
        let run = stack.lbctl(&["validate"]);
        assert_eq!(run.code, 0, "README.md:{line}: the spec is not valid:\n{}", run.stderr);
    }
}

#[test]
fn every_command_block_of_the_readme_runs() {
    let sandbox = tempfile::Builder::new().prefix("lbctl-readme-").tempdir().unwrap();
    let examples = sandbox.path().join("examples");
    std::fs::create_dir(&examples).unwrap();
    for entry in std::fs::read_dir(repository().join("examples")).unwrap().flatten() {
        std::fs::copy(entry.path(), examples.join(entry.file_name())).unwrap();
    }
    let bin = lbctl_exe().parent().unwrap().to_path_buf();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let commands = blocks("sh");
    assert!(!commands.is_empty(), "the README shows commands");
    let mut applied = DestroyOnDrop { dir: sandbox.path().to_path_buf(), specs: Vec::new() };
    for (line, script) in commands {
        let mut shell_lines = Vec::new();
        for (offset, command) in script.lines().enumerate() {
            let command = command.trim();
            if command.is_empty() || command.starts_with('#') {
                continue;
            }
            if let Some(target) = command.strip_prefix("make ") {
                let target = target.split('#').next().unwrap().trim();
                let run: Run =
                    Command::new("make").args(["-n", target]).current_dir(repository()).output().unwrap().into();
                assert_eq!(
                    run.code,
                    0,
                    "README.md:{}: `make {target}` is not a target:\n{}",
                    line + offset,
                    run.stderr
                );
                continue;
            }
            if let Some(spec) = command.split_whitespace().skip_while(|it| *it != "apply").nth(2) {
                applied.specs.push(spec.to_string());
            }
            shell_lines.push(command.to_string());
        }
        if shell_lines.is_empty() {
            continue;
        }
        let script = format!("set -euo pipefail\n{}\n", shell_lines.join("\n"));
        let run: Run = Command::new("bash")
            .args(["-c", &script])
            .current_dir(sandbox.path())
            .env("PATH", &path)
            .env("XDG_RUNTIME_DIR", runtime_dir())
            .env("NO_COLOR", "1")
            .output()
            .unwrap()
            .into();
        assert_eq!(
            run.code, 0,
            "README.md:{line}: the block failed\n{script}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            run.stdout, run.stderr
        );
    }
}

/// Destroys, when dropped (the test passed or not), every spec a block
/// applied, in case it did not destroy it itself.
struct DestroyOnDrop {
    dir: PathBuf,
    specs: Vec<String>,
}

impl Drop for DestroyOnDrop {
    fn drop(&mut self) {
        for spec in &self.specs {
            let _ = Command::new(lbctl_exe())
                .args(["destroy", "-f", spec, "--auto-approve"])
                .current_dir(&self.dir)
                .env("XDG_RUNTIME_DIR", runtime_dir())
                .output();
        }
    }
}

/// Shell completions load in bash and name every command; the manual page
/// renders with every command in it.
#[test]
fn completions_and_the_manual_page_come_from_the_command_line() {
    let completion = Command::new(lbctl_exe()).args(["completion", "bash"]).output().unwrap();
    assert!(completion.status.success());
    let script = String::from_utf8(completion.stdout).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("lbctl.bash");
    std::fs::write(&file, &script).unwrap();
    let loaded =
        Command::new("bash").args(["-c", &format!("source {} && complete -p lbctl", file.display())]).output().unwrap();
    assert!(String::from_utf8_lossy(&loaded.stdout).contains("lbctl"), "{loaded:?}");
    for command in ["plan", "apply", "destroy", "logs", "console", "export"] {
        assert!(script.contains(command), "completions lack `{command}`");
    }
    let man = Command::new(lbctl_exe()).arg("man").output().unwrap();
    let page = String::from_utf8(man.stdout).unwrap();
    assert!(page.starts_with(".ie") && page.contains(".TH lbctl 1"), "{page}");
    for command in ["lbctl\\-plan", "lbctl\\-console", "lbctl\\-logs"] {
        assert!(page.contains(command), "the manual page lacks `{command}`");
    }
    assert!(!page.contains("lbctl \\- lbctl"), "NAME says lbctl once: {page}");
    // Every page lbctl's names exists: `man --dir` writes them, and a
    // command's own documents its options.
    let pages = tempfile::tempdir().unwrap();
    let written = Command::new(lbctl_exe()).args(["man", "--dir"]).arg(pages.path()).output().unwrap();
    assert!(written.status.success(), "{written:?}");
    for command in ["plan", "apply", "destroy", "logs", "console", "status"] {
        assert!(pages.path().join(format!("lbctl-{command}.1")).is_file(), "no page lbctl-{command}.1");
    }
    let logs = Command::new(lbctl_exe()).args(["man", "logs"]).output().unwrap();
    let logs = String::from_utf8(logs.stdout).unwrap();
    assert!(logs.contains(".TH lbctl-logs 1") && logs.contains("\\-\\-since"), "{logs}");
    assert!(!std::fs::read_dir(pages.path()).unwrap().any(|it| it.unwrap().file_name() == "lbctl-internal.1"));
    // What lbctl runs itself is not offered.
    assert!(!script.contains("internal"), "completions offer the hidden `internal`");
    for shell in ["zsh", "fish"] {
        let out = Command::new(lbctl_exe()).args(["completion", shell]).output().unwrap();
        assert!(out.status.success() && !out.stdout.is_empty(), "{shell}");
    }
}

/// `status --watch` piped: one status after another, each document of
/// `--json` on its own line with its time; a missing spec file is said.
#[test]
fn status_watch_piped_gives_one_json_document_per_line() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(lbctl_exe())
        .args(["status", "--watch", "--json", "-f"])
        .arg(dir.path().join("lbctl.yaml"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    struct Stop(std::process::Child);
    impl Drop for Stop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let _stop = Stop(child);
    // Read on a thread: the test waits with a deadline, never on a blocked read.
    let (sender, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    let mut documents = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while documents.len() < 2 {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = lines.recv_timeout(left).expect("two statuses within 20 s");
        documents.push(serde_json::from_str::<serde_json::Value>(&line).expect("one JSON document per line"));
    }
    for document in &documents {
        assert!(document["time"].as_str().is_some_and(|it| it.ends_with('Z')), "{document}");
        assert_eq!(document["resources"], serde_json::json!([]), "{document}");
    }
    drop(_stop);
    let mut warning = String::new();
    std::io::Read::read_to_string(&mut { stderr }, &mut warning).unwrap();
    assert!(warning.contains("lbctl.yaml does not exist"), "{warning}");
}
