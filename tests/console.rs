//! `lbctl console` in a real headless Chromium (Debian `chromium`, driven
//! through its DevTools protocol by `tests/console_watch.py`): the page
//! shows every target of the quickstart with its state; after an instance
//! is broken it shows it unhealthy, then its replacement, without a reload.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use crate::util::*;

const SLOW: Duration = Duration::from_secs(60);

/// A child process stopped (by PID) when dropped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The page's text as the browser shows it, line by line of the watcher.
/// Dropped, it asks the watcher to quit (which stops Chromium), kills it by
/// PID if it has not within a deadline, then removes Chromium's profile.
struct Browser {
    child: Child,
    commands: Option<ChildStdin>,
    texts: Receiver<String>,
    last: String,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(mut commands) = self.commands.take() {
            let _ = writeln!(commands, "quit");
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Browser {
    fn open(url: &str) -> Browser {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/console_watch.py");
        let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/venv/bin/python3");
        let profile = tempfile::Builder::new().prefix("lbctl-chromium-").tempdir().unwrap();
        let mut child = Command::new(python)
            .args([script.to_str().unwrap(), url, "180", profile.path().to_str().unwrap()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting console_watch.py");
        let stdout = child.stdout.take().unwrap();
        let commands = child.stdin.take().unwrap();
        let (sender, texts) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let value: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
                if let Some(text) = value["text"].as_str() {
                    if sender.send(text.to_string()).is_err() {
                        return;
                    }
                }
            }
        });
        Browser { child, commands: Some(commands), texts, last: String::new(), _profile: profile }
    }

    /// Waits until the page's text satisfies `condition`.
    fn wait_for<T>(&mut self, what: &str, timeout: Duration, mut condition: impl FnMut(&str) -> Option<T>) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(found) = condition(&self.last) {
                return found;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.texts.recv_timeout(left.min(Duration::from_secs(1))) {
                Ok(text) => self.last = text,
                Err(mpsc::RecvTimeoutError::Timeout) if !left.is_zero() => {}
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    panic!("timed out after {timeout:?} waiting for the page to show {what}; it shows:\n{}", self.last)
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => panic!(
                    "the browser driver ended (its error is above) before the page showed {what}; it showed:\n{}",
                    self.last
                ),
            }
        }
    }

    fn screenshot(&mut self, path: &Path) {
        writeln!(self.commands.as_mut().unwrap(), "shot {}", path.display()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !path.exists() {
            assert!(Instant::now() < deadline, "no screenshot at {}", path.display());
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The state the page shows next to a target: the first state word after
/// its id.
fn state_of(text: &str, id: &str) -> Option<&'static str> {
    let at = text.find(id)?;
    let after = &text[at + id.len()..];
    // The next 200 characters (the page has multi-byte ones, such as `·`).
    let after = &after[..after.char_indices().nth(200).map_or(after.len(), |(end, _)| end)];
    ["unhealthy", "healthy", "initial", "draining", "unused"]
        .into_iter()
        .filter_map(|state| after.find(state).map(|position| (position, state)))
        .min()
        .map(|it| it.1)
}

#[test]
fn the_console_shows_targets_live_in_a_real_browser() {
    let port = free_port();
    let stack = Stack::example(
        "quickstart.yaml",
        &[("port: 8080\n        protocol: HTTP", &format!("port: {port}\n        protocol: HTTP"))],
    );
    stack.apply();
    let mut console = stack.command(&["console"]);
    console.stdout(Stdio::piped()).stderr(Stdio::inherit());
    let mut child = Running(console.spawn().unwrap());
    let mut first = String::new();
    BufReader::new(child.0.stdout.as_mut().unwrap()).read_line(&mut first).unwrap();
    let url = first.split_whitespace().find(|it| it.starts_with("http://127.0.0.1:")).expect(&first).to_string();

    // Only loopback clients that name the console's own address get in.
    let forbidden = curl(&format!("{url}api/state"), &["Host: attacker.example"]).unwrap();
    assert_eq!(forbidden.status, 403);

    let web: Vec<serde_json::Value> = stack.instances("web");
    let images: Vec<serde_json::Value> = stack.instances("images");
    let ids: Vec<String> = web.iter().chain(&images).map(|it| it["id"].as_str().unwrap().to_string()).collect();
    assert_eq!(ids.len(), 4);

    let mut browser = Browser::open(&url);
    browser.wait_for("every target healthy", SLOW, |text| {
        ids.iter().all(|id| state_of(text, id) == Some("healthy")).then_some(())
    });
    assert!(
        browser.last.contains("public") && browser.last.to_lowercase().contains("target groups"),
        "{}",
        browser.last
    );
    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("console.png");
    let _ = std::fs::remove_file(&shot);
    browser.screenshot(&shot);
    assert!(std::fs::metadata(&shot).unwrap().len() > 10_000, "a real screenshot");

    // Break an instance's web server: the page shows it unhealthy (the
    // load balancer's verdict), then, the group having replaced it (ELB
    // health), its replacement healthy, by itself.
    let victim = web[0]["id"].as_str().unwrap().to_string();
    let address = web[0]["address"].as_str().unwrap().to_string();
    curl_with(&format!("http://{address}/fault/unhealthy"), &[], &["-X", "POST"]).unwrap();
    browser.wait_for("the broken instance unhealthy", SLOW, |text| {
        (state_of(text, &victim) == Some("unhealthy")).then_some(())
    });
    let replacement = browser.wait_for("a replacement healthy", SLOW, |text| {
        stack
            .instances("web")
            .iter()
            .filter_map(|it| it["id"].as_str())
            .find(|id| !ids.iter().any(|old| old == id) && state_of(text, id) == Some("healthy"))
            .map(str::to_string)
    });
    assert_ne!(replacement, victim);
}
