//! `lbctl`: the command line. Thin on purpose: it parses arguments, asks for
//! confirmation, shows progress and prints results; every decision lives in
//! the spec, planner and provider crates.
//!
//! **Architecture invariant:** no business logic here. A command function
//! loads inputs, calls the planner or provider, and renders what comes back.

mod args;
mod commands;
mod console;
mod logs;
mod registry;
mod saved_plan;
mod shell;

use std::process::ExitCode;

use clap::Parser;

/// mimalloc instead of the system allocator: the proxy allocates per request
/// (hyper's buffers and header maps), and glibc's malloc showed as ~5% of its
/// CPU in `make bench` profiles.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let args = args::Args::try_parse().unwrap_or_else(|error| {
        let words: Vec<String> = std::env::args().skip(1).collect();
        match args::misread(&error, &words) {
            Some(message) => {
                shell::Shell::new().error(&message);
                std::process::exit(1)
            }
            None => {
                // Help and version go to stdout with 0; a usage error is an
                // error, 1: 2 means "the plan has changes" to
                // `--detailed-exitcode`, and a mistyped flag must not read so.
                let _ = error.print();
                std::process::exit(if error.use_stderr() { 1 } else { 0 })
            }
        }
    });
    match commands::run(args) {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            // A closed stdout (`lbctl plan | head`) is not an error.
            if err.chain().any(|cause| {
                cause.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) {
                return ExitCode::SUCCESS;
            }
            let shell = shell::Shell::new();
            // Spec problems print as `FILE:LINE:COL: path: message`, one per line.
            if let Some(diagnostics) = err.chain().find_map(|it| it.downcast_ref::<lbctl_spec::Diagnostics>()) {
                for diagnostic in &diagnostics.0 {
                    eprintln!("{diagnostic}");
                }
                let count = diagnostics.0.len();
                shell.error(&format!("{} ({count} problem{})", err, if count == 1 { "" } else { "s" }));
                return ExitCode::from(1);
            }
            shell.error(&format!("{err:#}"));
            ExitCode::from(1)
        }
    }
}
