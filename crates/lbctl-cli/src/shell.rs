//! All console output goes through `Shell`: status lines on stderr, data
//! (plans, JSON, tables) on stdout, colour only on a terminal without
//! `NO_COLOR`, progress bars only on a terminal.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use lbctl_plan::executor::{Event, Observer};
use lbctl_plan::{ActionKind, Address};

/// The console.
#[derive(Debug, Clone, Copy)]
pub struct Shell {
    /// Colour on stdout.
    pub color: bool,
    /// Colour and bars on stderr.
    stderr_tty: bool,
    quiet: bool,
}

impl Shell {
    pub fn new() -> Shell {
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|it| !it.is_empty());
        Shell {
            color: !no_color && std::io::stdout().is_terminal(),
            stderr_tty: std::io::stderr().is_terminal(),
            quiet: false,
        }
    }

    pub fn quiet(mut self, quiet: bool) -> Shell {
        self.quiet = quiet;
        self
    }

    fn stderr_color(&self) -> bool {
        self.stderr_tty && std::env::var_os("NO_COLOR").is_none_or(|it| it.is_empty())
    }

    /// A status line: a right-aligned verb, then the message (stderr).
    pub fn status(&self, verb: &str, message: &str) {
        if self.quiet {
            return;
        }
        let verb = if self.stderr_color() { format!("\x1b[1;32m{verb:>12}\x1b[0m") } else { format!("{verb:>12}") };
        eprintln!("{verb} {message}");
    }

    /// A warning (stderr), shown even when quiet.
    pub fn warn(&self, message: &str) {
        let label = if self.stderr_color() { "\x1b[1;33mwarning\x1b[0m" } else { "warning" };
        eprintln!("{label}: {message}");
    }

    /// An error (stderr).
    pub fn error(&self, message: &str) {
        let label = if self.stderr_color() { "\x1b[1;31merror\x1b[0m" } else { "error" };
        eprintln!("{label}: {message}");
    }

    /// Data on stdout.
    pub fn out(&self, text: &str) -> std::io::Result<()> {
        let mut stdout = std::io::stdout().lock();
        stdout.write_all(text.as_bytes())?;
        stdout.flush()
    }

    /// Whether a person can answer a question.
    pub fn can_ask(&self) -> bool {
        std::io::stdin().is_terminal() && std::io::stderr().is_terminal()
    }

    /// Asks Terraform's question; true only for `yes`.
    pub fn confirm(&self, question: &str) -> std::io::Result<bool> {
        eprint!("{question}\n  Only 'yes' will be accepted to approve.\n\n  Enter a value: ");
        std::io::stderr().flush()?;
        let mut answer = String::new();
        std::io::stdin().read_line(&mut answer)?;
        eprintln!();
        Ok(answer.trim() == "yes")
    }

    /// An executor observer: bars on a terminal, plain lines otherwise.
    pub fn observer(&self) -> Progress {
        let bars = (self.stderr_tty && !self.quiet).then(MultiProgress::new);
        Progress { shell: *self, bars, active: Mutex::new(BTreeMap::new()) }
    }
}

fn gerund(kind: ActionKind) -> &'static str {
    match kind {
        ActionKind::Create => "Creating",
        ActionKind::Update => "Updating",
        ActionKind::Replace => "Replacing",
        ActionKind::Delete => "Destroying",
    }
}

fn done(kind: ActionKind) -> &'static str {
    match kind {
        ActionKind::Create => "Created",
        ActionKind::Update => "Updated",
        ActionKind::Replace => "Replaced",
        ActionKind::Delete => "Destroyed",
    }
}

/// Shows executor events.
pub struct Progress {
    shell: Shell,
    /// Present on a terminal: one spinner per resource in progress.
    bars: Option<MultiProgress>,
    /// Spinners by resource; a spinner is removed when its resource settles.
    active: Mutex<BTreeMap<Address, ProgressBar>>,
}

impl Progress {
    fn spinner(&self, address: &Address, message: String) {
        let Some(bars) = &self.bars else { return };
        let bar = bars.add(ProgressBar::new_spinner());
        bar.set_style(ProgressStyle::with_template("{spinner} {msg} [{elapsed}]").expect("valid template"));
        bar.enable_steady_tick(Duration::from_millis(120));
        bar.set_message(message);
        if let Some(old) = self.active.lock().expect("progress lock").insert(address.clone(), bar) {
            old.finish_and_clear();
        }
    }

    fn settle(&self, address: &Address, verb: &str, message: &str) {
        if let Some(bar) = self.active.lock().expect("progress lock").remove(address) {
            bar.finish_and_clear();
        }
        match &self.bars {
            // Print above the bars so lines and spinners never interleave.
            Some(bars) if !self.shell.quiet => {
                let _ = bars.println(format!("{verb:>12} {message}"));
            }
            _ => self.shell.status(verb, message),
        }
    }

    fn update(&self, address: &Address, message: String) {
        match self.active.lock().expect("progress lock").get(address) {
            Some(bar) => bar.set_message(message),
            None if self.bars.is_none() => self.shell.status("", &message),
            None => {}
        }
    }
}

impl Observer for Progress {
    fn event(&self, event: Event) {
        match event {
            Event::Started(address, kind) => {
                let message = format!("{address}: {}...", gerund(kind).to_lowercase());
                if self.bars.is_some() {
                    self.spinner(&address, message);
                } else {
                    self.shell.status(gerund(kind), &address.to_string());
                }
            }
            Event::Progress(address, message) => self.update(&address, format!("{address}: {message}")),
            Event::Finished(address, kind, elapsed) => {
                self.settle(&address, done(kind), &format!("{address} after {:.1}s", elapsed.as_secs_f64()));
            }
            Event::Failed(address, message) => self.settle(&address, "Failed", &format!("{address}: {message}")),
            Event::Waiting(address, reason) => {
                if self.bars.is_some() {
                    if self.active.lock().expect("progress lock").contains_key(&address) {
                        self.update(&address, format!("{address}: {reason}"));
                    } else {
                        self.spinner(&address, format!("{address}: {reason}"));
                    }
                } else {
                    self.shell.status("Waiting", &format!("{address}: {reason}"));
                }
            }
            Event::Ready(address, elapsed) => {
                self.settle(&address, "Ready", &format!("{address} after {:.1}s", elapsed.as_secs_f64()));
            }
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        for bar in self.active.lock().expect("progress lock").values() {
            bar.finish_and_clear();
        }
    }
}
