//! Command-line arguments (clap). Validated into commands' inputs in
//! `commands`, before any work starts.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Plan, apply and destroy load-balanced stacks from one YAML spec, run as
/// real local processes.
#[derive(Debug, Parser)]
#[command(name = "lbctl", version, max_term_width = 100)]
pub struct Args {
    /// Only errors on stderr.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    #[command(subcommand)]
    pub command: Command,
}

/// Where the spec is.
#[derive(Debug, clap::Args)]
pub struct SpecArg {
    /// The spec file; its state lives in `.lbctl/` beside it.
    #[arg(short = 'f', long = "file", default_value = "lbctl.yaml")]
    pub file: PathBuf,
    /// The provider, instead of the spec's `provider:` (a state is only ever used by the provider that made it).
    #[arg(long, value_parser = ["local", "aws"])]
    pub provider: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Parse and check the spec; nothing else.
    Validate {
        #[command(flatten)]
        spec: SpecArg,
    },
    /// Refresh the actual state, diff it against the spec, print the plan.
    Plan {
        #[command(flatten)]
        spec: SpecArg,
        /// Save the plan to apply it later with `lbctl apply FILE`.
        #[arg(long = "out", value_name = "PLAN")]
        out: Option<PathBuf>,
        /// Exit 0 when nothing would change, 2 when something would, 1 on error.
        #[arg(long)]
        detailed_exitcode: bool,
        /// Print the plan as JSON (format_version 1).
        #[arg(long)]
        json: bool,
    },
    /// Plan, confirm, execute, wait until healthy, print outputs.
    Apply {
        #[command(flatten)]
        spec: SpecArg,
        /// A plan saved by `lbctl plan --out`; applied as saved or refused
        /// (it holds its spec: not with `-f`).
        #[arg(value_name = "PLAN", conflicts_with = "file")]
        plan: Option<PathBuf>,
        /// Do not ask for confirmation.
        #[arg(long)]
        auto_approve: bool,
        /// How long to wait for everything to be healthy (e.g. 90s, 5m; default 2m locally, 20m on AWS).
        #[arg(long)]
        timeout: Option<String>,
    },
    /// Tear everything down in reverse dependency order, draining first.
    Destroy {
        #[command(flatten)]
        spec: SpecArg,
        /// Do not ask for confirmation.
        #[arg(long)]
        auto_approve: bool,
    },
    /// Live view: listeners, target health with reasons, instances, each group's latest events.
    Status {
        #[command(flatten)]
        spec: SpecArg,
        /// Print as JSON.
        #[arg(long)]
        json: bool,
        /// Also show what does not fit 100 columns (each instance's log file).
        #[arg(long)]
        wide: bool,
        /// Redraw every second (Ctrl-C stops).
        #[arg(long)]
        watch: bool,
    },
    /// Access logs, groups' events and instances' output: one's, or all interleaved by time.
    Logs {
        /// The spec file (`--file` only: `-f` follows, as in `tail -f`).
        #[arg(long = "file", default_value = "lbctl.yaml")]
        file: PathBuf,
        /// A load balancer, an auto-scaling group or an instance id (default: everything).
        name: Option<String>,
        /// Keep printing lines as they are written (Ctrl-C stops).
        #[arg(short, long)]
        follow: bool,
        /// Only lines from this long ago on (e.g. 5m, 1h).
        #[arg(long)]
        since: Option<String>,
    },
    /// A live web page of the stack on loopback: topology, target health, requests, access log, groups' activity.
    Console {
        #[command(flatten)]
        spec: SpecArg,
        /// Where to listen (a loopback address, or a port on 127.0.0.1; default: a free port).
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: String,
    },
    /// The outputs of the last apply (URLs, DNS names, static IPs), as `terraform output`.
    Output {
        #[command(flatten)]
        spec: SpecArg,
        /// One output, printed as its bare value (for scripts: `curl "$(lbctl output public_url)"`).
        name: Option<String>,
        /// Print as JSON: `{"NAME": {"value": "...", "type": "string", "sensitive": false}}`, or one value.
        #[arg(long)]
        json: bool,
    },
    /// What the state holds.
    Show {
        #[command(flatten)]
        spec: SpecArg,
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
    /// The resource dependency graph as DOT.
    Graph {
        #[command(flatten)]
        spec: SpecArg,
    },
    /// The spec as AWS infrastructure as code: a CloudFormation template or Terraform configuration.
    #[command(subcommand)]
    Export(ExportTarget),
    /// The spec's JSON Schema.
    Schema,
    /// Shell completions: `lbctl completion bash > /etc/bash_completion.d/lbctl`.
    Completion {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Manual pages (roff): `lbctl man | man -l -`, `lbctl man logs`; `--dir` writes every page.
    Man {
        /// A command's own page (`lbctl-logs(1)`) instead of lbctl's.
        command: Option<String>,
        /// Write lbctl's page and every command's into this directory instead.
        #[arg(long, conflicts_with = "command")]
        dir: Option<PathBuf>,
    },
    /// A demo instance: answers with its id, serves /health, has fault switches; with --echo, a TCP and UDP echo server.
    Worker {
        /// Address to listen on (default: $LBCTL_IP:$LBCTL_PORT).
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// Instance id to answer with (default: $LBCTL_INSTANCE_ID).
        #[arg(long)]
        id: Option<String>,
        /// Serve HTTPS (and HTTP/2 through ALPN) with a self-signed certificate made at start.
        #[arg(long)]
        tls: bool,
        /// Serve TCP and UDP echo on the address instead of HTTP (a network load balancer's target);
        /// `whoami` answers with the instance id.
        #[arg(long, conflicts_with = "tls")]
        echo: bool,
        /// Require a PROXY protocol v2 header on every TCP connection and report the client address it carries.
        #[arg(long)]
        proxy_protocol: bool,
    },
    /// Processes lbctl starts itself (not for direct use).
    #[command(hide = true)]
    Internal {
        #[command(subcommand)]
        role: Internal,
    },
}

#[derive(Debug, Subcommand)]
pub enum Internal {
    /// A load balancer's proxy.
    Proxy {
        #[arg(long)]
        config: PathBuf,
    },
    /// An auto-scaling group's supervisor.
    Supervisor {
        #[arg(long)]
        config: PathBuf,
    },
}

/// What `lbctl export` writes.
#[derive(Debug, Subcommand)]
pub enum ExportTarget {
    /// A CloudFormation template (what the spec cannot say about AWS becomes `Parameters`).
    Cloudformation {
        #[command(flatten)]
        spec: SpecArg,
        /// Template format.
        #[arg(long, value_enum, default_value = "yaml")]
        format: TemplateFormat,
    },
    /// Terraform configuration for the `hashicorp/aws` provider (unknowns become `variable`s).
    Terraform {
        #[command(flatten)]
        spec: SpecArg,
    },
}

/// CloudFormation template formats.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum TemplateFormat {
    /// YAML.
    Yaml,
    /// JSON.
    Json,
}

/// What a spec file given to `lbctl logs` after `-f` was meant as: `-f`
/// is --follow there (as in `tail -f`), so the file is named back with
/// `--file`, followed by the command's other `words`.
pub fn spec_file_after_follow(file: &str, words: &[&str]) -> String {
    let meant = [&["lbctl", "logs", "--file", file][..], words].concat().join(" ");
    format!("`{file}` names a spec file, not a resource: `-f` is --follow here; for a spec file, write `{meant}`")
}

/// The message for a command line clap refused (`error`) that is the
/// likely slip `lbctl logs -f x.yaml NAME`, whose NAME clap finds one too
/// many; `None` for any other.
pub fn misread(error: &clap::Error, words: &[String]) -> Option<String> {
    if error.kind() != clap::error::ErrorKind::UnknownArgument {
        return None;
    }
    let words: Vec<&str> = words.iter().map(String::as_str).skip_while(|it| *it != "logs").skip(1).collect();
    let follow = words
        .windows(2)
        .position(|it| matches!(it[0], "-f" | "--follow") && (it[1].ends_with(".yaml") || it[1].ends_with(".yml")))?;
    let rest: Vec<&str> = [&words[..follow], &words[follow + 2..]].concat();
    Some(spec_file_after_follow(words[follow + 1], &rest))
}
