//! One function per subcommand. Each loads its inputs, calls the planner or
//! the provider, and renders the result through `Shell`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use comfy_table::{presets::UTF8_FULL_CONDENSED, ContentArrangement, Table};
use lbctl_plan::executor::{self, Options};
use lbctl_plan::{render, Finding, Kind, Plan, Provider, Resource, Severity, State, StateStore};
use lbctl_spec::{Diagnostic, Diagnostics, SpecFile};
use serde_json::json;

use crate::args::{Args, Command, ExportTarget, Internal, SpecArg, TemplateFormat};
use crate::registry;
use crate::saved_plan::SavedPlan;
use crate::shell::Shell;

/// Exit codes: 0 success, 1 error, 2 plan has changes (`--detailed-exitcode`).
const EXIT_CHANGES: u8 = 2;

pub fn run(args: Args) -> Result<u8> {
    let shell = Shell::new().quiet(args.quiet);
    match args.command {
        Command::Validate { spec } => validate(&shell, &spec),
        Command::Plan { spec, out, detailed_exitcode, json } => {
            plan(&shell, &spec, out.as_deref(), detailed_exitcode, json)
        }
        Command::Apply { spec, plan, auto_approve, timeout } => {
            let timeout = timeout
                .map(|it| lbctl_spec::Duration::parse(&it).map_err(anyhow::Error::msg).context("--timeout"))
                .transpose()?;
            apply(&shell, &spec, plan.as_deref(), auto_approve, timeout.map(|it| it.get()))
        }
        Command::Destroy { spec, auto_approve } => destroy(&shell, &spec, auto_approve),
        Command::Status { spec, json, wide, watch } => {
            let dir = state_dir(&shell, &spec.file)?;
            if !watch {
                return status(&shell, &spec, &dir, json, wide, false);
            }
            // Redrawn in place on a terminal; elsewhere one status after
            // another, each after a line with its time (with --json, one
            // document per line).
            loop {
                if shell.can_ask() {
                    shell.out("\x1b[H\x1b[2J")?;
                } else if !json {
                    let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
                    shell.out(&format!("--- {now}\n"))?;
                }
                status(&shell, &spec, &dir, json, wide, true)?;
                std::thread::sleep(Duration::from_secs(1));
            }
        }
        Command::Console { spec, listen } => {
            let listen = crate::console::parse_listen(&listen)?;
            let dir = state_dir(&shell, &spec.file)?;
            let store = store_of(&dir);
            if store.load()?.resources.is_empty() {
                shell.status(
                    "Note",
                    &format!(
                        "nothing is applied in {} yet: the page shows the stack once it is",
                        store.dir().display()
                    ),
                );
            }
            let provider_of = |state: &State| state_provider(state, &dir, &spec);
            crate::console::serve(listen, &store, &provider_of, &|url| {
                shell.out(&format!("lbctl console: {url} (Ctrl-C stops it)\n"))?;
                Ok(())
            })?;
            Ok(0)
        }
        Command::Logs { file, name, follow, since } => {
            logs(&shell, &SpecArg { file, provider: None }, name.as_deref(), follow, since.as_deref())
        }
        Command::Show { spec, json } => show(&shell, &spec, json),
        Command::Output { spec, name, json } => output(&shell, &spec, name.as_deref(), json),
        Command::Graph { spec } => {
            let file = load_spec(&spec.file)?;
            shell.out(&lbctl_plan::graph_dot(&lbctl_plan::desired_resources(&file.spec)))?;
            Ok(0)
        }
        Command::Export(target) => export(&shell, target),
        Command::Completion { shell: target } => {
            // Without the hidden commands (clap_complete would offer them).
            // clap cannot take a subcommand away: the visible ones are put
            // under a new command with lbctl's own arguments.
            let lbctl = <Args as clap::CommandFactory>::command();
            let mut command = clap::Command::new("lbctl")
                .version(env!("CARGO_PKG_VERSION"))
                .about(lbctl.get_about().cloned().unwrap_or_default())
                .args(lbctl.get_arguments().cloned())
                .subcommands(lbctl.get_subcommands().filter(|it| !it.is_hide_set()).cloned());
            let mut out = Vec::new();
            clap_complete::generate(target, &mut command, "lbctl", &mut out);
            shell.out(&String::from_utf8_lossy(&out))?;
            Ok(0)
        }
        Command::Man { command, dir } => {
            let mut lbctl = <Args as clap::CommandFactory>::command().disable_help_subcommand(true);
            if let Some(dir) = dir {
                std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
                clap_mangen::generate_to(lbctl, &dir).with_context(|| format!("writing pages to {}", dir.display()))?;
                shell.status("Wrote", &format!("the manual pages to {}", dir.display()));
                return Ok(0);
            }
            lbctl.build();
            let page = match command {
                None => lbctl,
                Some(name) => {
                    let visible = || lbctl.get_subcommands().filter(|it| !it.is_hide_set());
                    let Some(found) = visible().find(|it| it.get_name() == name) else {
                        let names: Vec<&str> = visible().map(|it| it.get_name()).collect();
                        bail!("no command `{name}`; its pages are: {}", names.join(", "));
                    };
                    found.clone()
                }
            };
            let mut out = Vec::new();
            clap_mangen::Man::new(page).render(&mut out)?;
            shell.out(&String::from_utf8_lossy(&out))?;
            Ok(0)
        }
        Command::Schema => {
            shell.out(&lbctl_spec::schema_json())?;
            Ok(0)
        }
        Command::Worker { listen, id, tls, echo, proxy_protocol } => {
            lbctl_dataplane::worker::run(lbctl_dataplane::worker::WorkerOptions {
                listen,
                instance_id: id,
                tls,
                echo,
                proxy_protocol,
            })?;
            Ok(0)
        }
        Command::Internal { role: Internal::Proxy { config } } => {
            lbctl_dataplane::proxy::run(&config)?;
            Ok(0)
        }
        Command::Internal { role: Internal::Supervisor { config } } => {
            lbctl_supervisor::run(&config)?;
            Ok(0)
        }
    }
}

/// A spec that failed to load: its diagnostics, one per line, as the error.
fn load_spec(path: &Path) -> Result<SpecFile> {
    lbctl_spec::load(path).map_err(|diagnostics| anyhow::Error::new(diagnostics).context("the spec is invalid"))
}

/// The spec's directory, absolute: state, runtime files and instance
/// commands are anchored there.
fn spec_dir(path: &Path) -> Result<PathBuf> {
    let parent = path.parent().filter(|it| !it.as_os_str().is_empty()).unwrap_or(Path::new("."));
    parent.canonicalize().with_context(|| format!("finding the directory of {}", path.display()))
}

/// The directory of the stack whose state a command reads, beside
/// `path`; a spec file that does not exist is said, not passed over (the
/// state beside where it would be is read all the same: it may have been
/// deleted after apply).
fn state_dir(shell: &Shell, path: &Path) -> Result<PathBuf> {
    let dir = spec_dir(path)?;
    if !path.exists() {
        shell.warn(&format!(
            "{} does not exist: reading the state in {}",
            path.display(),
            store_of(&dir).dir().display()
        ));
    }
    Ok(dir)
}

/// The provider a spec names (or `--provider`), for the stack in `dir`.
fn provider_for(file: &SpecFile, dir: &Path, chosen: Option<&str>) -> Result<Box<dyn Provider>> {
    let name = registry::chosen(&file.spec, chosen)?;
    registry::provider(name, &registry::Stack::new(&file.spec, dir))
}

/// Where the state of the stack in `dir` is.
pub(crate) fn store_of(dir: &Path) -> StateStore {
    StateStore::new(dir.join(".lbctl"))
}

/// The provider that made `state`, for the stack in `dir` (with the spec's
/// `aws:` section when the spec still loads).
fn state_provider(state: &State, dir: &Path, spec: &SpecArg) -> Result<Box<dyn Provider>> {
    let name = registry::name_of(state)?;
    if let Some(chosen) = &spec.provider {
        registry::check_same(state, registry::chosen_name(chosen)?, &dir.join(".lbctl"))?;
    }
    let mut stack = registry::Stack { stack: state.stack.clone(), dir: dir.to_path_buf(), aws: Default::default() };
    if let Ok(file) = lbctl_spec::load(&spec.file) {
        registry::check_stack(state, &file.spec.name, &dir.join(".lbctl"))?;
        stack.aws = file.spec.aws.clone().unwrap_or_default();
    }
    registry::provider(name, &stack)
}

/// Everything a plan is made from.
struct Inputs {
    file: SpecFile,
    dir: PathBuf,
    store: StateStore,
    provider: Box<dyn Provider>,
    /// The provider's name, the spec's or `--provider`.
    provider_name: lbctl_spec::ProviderName,
}

fn inputs(spec: &SpecArg) -> Result<Inputs> {
    let file = load_spec(&spec.file)?;
    let dir = spec_dir(&spec.file)?;
    inputs_from(file, dir, spec.provider.as_deref())
}

fn inputs_from(file: SpecFile, dir: PathBuf, chosen: Option<&str>) -> Result<Inputs> {
    let provider_name = registry::chosen(&file.spec, chosen)?;
    let provider = provider_for(&file, &dir, chosen)?;
    let store = store_of(&dir);
    Ok(Inputs { file, dir, store, provider, provider_name })
}

/// Splits provider findings: machine conflicts become spec diagnostics (an
/// error), unsupported features are returned for the plan to show.
fn provider_findings(inputs: &Inputs, desired: &[Resource], state: &State) -> Result<Vec<Finding>> {
    let mut findings = inputs.provider.check_spec(desired);
    findings.extend(inputs.provider.check(desired, state)?);
    let invalid: Vec<Diagnostic> = findings
        .iter()
        .filter(|it| it.severity == Severity::Invalid)
        .map(|it| inputs.file.diagnostic(&it.path, it.message.clone()))
        .collect();
    if !invalid.is_empty() {
        return Err(anyhow::Error::new(Diagnostics(invalid)).context("the spec cannot be applied on this machine"));
    }
    Ok(findings.into_iter().filter(|it| it.severity == Severity::Unsupported).collect())
}

fn make_plan(inputs: &Inputs, state: &State) -> Result<Plan> {
    registry::check_same(state, inputs.provider_name, inputs.store.dir())?;
    registry::check_stack(state, &inputs.file.spec.name, inputs.store.dir())?;
    let desired = lbctl_plan::desired_resources(&inputs.file.spec);
    let unsupported = provider_findings(inputs, &desired, state)?;
    let observed = lbctl_plan::refresh(inputs.provider.as_ref(), state)?;
    Ok(lbctl_plan::plan(inputs.provider.as_ref(), desired, state, &observed, unsupported))
}

/// Checks the file (and the files it names) and nothing else: no state, no
/// ports, no processes.
fn validate(shell: &Shell, spec: &SpecArg) -> Result<u8> {
    let file = load_spec(&spec.file)?;
    let provider = provider_for(&file, &spec_dir(&spec.file)?, spec.provider.as_deref())?;
    let findings = provider.check_spec(&lbctl_plan::desired_resources(&file.spec));
    let invalid: Vec<Diagnostic> = findings
        .iter()
        .filter(|it| it.severity == Severity::Invalid)
        .map(|it| file.diagnostic(&it.path, it.message.clone()))
        .collect();
    if !invalid.is_empty() {
        return Err(anyhow::Error::new(Diagnostics(invalid)).context("the spec is invalid"));
    }
    for finding in findings.iter().filter(|it| it.severity == Severity::Unsupported) {
        shell.status("Note", &format!("{}: {} (apply will refuse)", finding.path, finding.message));
    }
    shell.out(&format!("{}: the spec is valid.\n", file.file))?;
    shell.status(
        "Note",
        "validate checks the file only; `lbctl plan` also checks this machine (ports, addresses, instances)",
    );
    Ok(0)
}

/// `lbctl export`: the text on stdout, what did not carry over on stderr.
fn export(shell: &Shell, target: ExportTarget) -> Result<u8> {
    let export = match target {
        ExportTarget::Cloudformation { spec, format } => {
            let format = match format {
                TemplateFormat::Yaml => lbctl_export::TemplateFormat::Yaml,
                TemplateFormat::Json => lbctl_export::TemplateFormat::Json,
            };
            lbctl_export::cloudformation(&load_spec(&spec.file)?.spec, format)
        }
        ExportTarget::Terraform { spec } => lbctl_export::terraform(&load_spec(&spec.file)?.spec),
    };
    shell.out(&export.text)?;
    for note in &export.notes {
        shell.status("Note", note);
    }
    Ok(0)
}

fn plan(shell: &Shell, spec: &SpecArg, out: Option<&Path>, detailed_exitcode: bool, json: bool) -> Result<u8> {
    let inputs = inputs(spec)?;
    if let Some(out) = out {
        SavedPlan::check_destination(out, inputs.store.dir())?;
    }
    let state = inputs.store.load()?;
    let plan = make_plan(&inputs, &state)?;
    if json {
        shell.out(&format!("{}\n", serde_json::to_string_pretty(&render::json(&plan))?))?;
    } else {
        shell.out(&render::text(&plan, render::Style { color: shell.color }))?;
    }
    if let Some(out) = out {
        SavedPlan::new(inputs.file.file.clone(), inputs.dir.clone(), inputs.file.source.clone(), &plan).write(out)?;
        shell.status("Saved", &format!("plan to {}; apply it with `lbctl apply {}`", out.display(), out.display()));
    }
    Ok(if detailed_exitcode && plan.has_changes() { EXIT_CHANGES } else { 0 })
}

fn refuse_unsupported(plan: &Plan, provider: &str) -> Result<()> {
    if plan.unsupported.is_empty() {
        return Ok(());
    }
    let lines: Vec<String> = plan.unsupported.iter().map(|it| format!("{}: {}", it.path, it.message)).collect();
    bail!("the spec uses features the {provider} provider does not support:\n  {}", lines.join("\n  "))
}

fn confirm(shell: &Shell, verb: &str, auto_approve: bool) -> Result<bool> {
    if auto_approve {
        return Ok(true);
    }
    if !shell.can_ask() {
        bail!("{verb} needs confirmation and there is no terminal to ask on; pass --auto-approve to {verb} without asking");
    }
    let question = if verb == "destroy" {
        "Do you really want to destroy all resources?"
    } else {
        "Do you want to perform these actions?"
    };
    Ok(shell.confirm(question)?)
}

fn apply(
    shell: &Shell,
    spec: &SpecArg,
    saved: Option<&Path>,
    auto_approve: bool,
    timeout: Option<Duration>,
) -> Result<u8> {
    // Load and check everything before taking the lock or touching anything.
    let (inputs, saved) = match saved {
        Some(path) => {
            let saved = SavedPlan::read(path)?;
            let file = lbctl_spec::parse(&saved.spec_file, saved.spec_dir.clone(), saved.spec_source.clone())
                .map_err(|it| anyhow::Error::new(it).context("the saved plan's spec is invalid"))?;
            (inputs_from(file, saved.spec_dir.clone(), spec.provider.as_deref())?, Some(saved))
        }
        None => (inputs(spec)?, None),
    };
    let _lock = inputs.store.lock("lbctl apply")?;
    let mut state = inputs.store.load()?;
    if let Some(saved) = &saved {
        if saved.lineage != state.lineage && state.serial > 0 {
            bail!(
                "the saved plan is stale: it was made against another state (lineage {}; the state here is lineage {}, made since); run `lbctl plan` again",
                saved.lineage,
                state.lineage
            );
        }
        if saved.serial != state.serial {
            bail!(
                "the saved plan is stale: it was made against state serial {} and the state is now at serial {}; run `lbctl plan` again",
                saved.serial,
                state.serial
            );
        }
    }
    let plan = make_plan(&inputs, &state)?;
    if let Some(saved) = &saved {
        if plan.fingerprint() != saved.fingerprint {
            bail!("the saved plan is stale: the actual resources changed since it was made; run `lbctl plan` again");
        }
    } else {
        shell.out(&render::text(&plan, render::Style { color: shell.color }))?;
    }
    refuse_unsupported(&plan, inputs.provider.name())?;
    if plan.has_changes() && saved.is_none() && !confirm(shell, "apply", auto_approve)? {
        shell.error("apply cancelled");
        return Ok(1);
    }
    state.stack = inputs.file.spec.name.clone();
    state.provider = inputs.provider.name().to_string();
    let observer = shell.observer();
    executor::apply(
        &plan,
        inputs.provider.as_ref(),
        &inputs.store,
        &mut state,
        &observer,
        &Options { ready_timeout: timeout.unwrap_or(inputs.provider.policy().ready_timeout) },
    )
    .map_err(|err| place_failures(&inputs.file, err))?;
    drop(observer);
    let (add, change, destroy) = plan.summary();
    let mut text = format!("\nApply complete! Resources: {add} added, {change} changed, {destroy} destroyed.\n");
    if !state.outputs.is_empty() {
        text.push_str("\nOutputs:\n\n");
        for (key, value) in &state.outputs {
            text.push_str(&format!("{key} = \"{value}\"\n"));
        }
    }
    shell.out(&text)?;
    Ok(0)
}

/// An apply's failures, each placed at its resource in the spec
/// (`lbctl.yaml:12:3: load_balancer.public (update): CreateRule: ...`).
fn place_failures(file: &SpecFile, err: anyhow::Error) -> anyhow::Error {
    let text = format!("{err:#}");
    let placed: Vec<String> = text
        .lines()
        .map(|line| {
            let trimmed = line.trim_start();
            let address = trimmed.split(' ').next().unwrap_or_default();
            let spec_path = address.split_once('.').and_then(|(kind, name)| {
                let key = [Kind::LoadBalancer, Kind::TargetGroup, Kind::AutoscalingGroup, Kind::Function]
                    .into_iter()
                    .find(|it| it.as_str() == kind)?
                    .spec_key();
                Some(format!("{key}.{name}"))
            });
            match spec_path.map(|path| file.diagnostic(&path, "")) {
                Some(diagnostic) if diagnostic.location.is_some() && trimmed.contains(" (") => {
                    let at = diagnostic.location.expect("checked");
                    let indent = &line[..line.len() - trimmed.len()];
                    format!("{indent}{}:{}:{}: {trimmed}", diagnostic.file, at.line, at.column)
                }
                _ => line.to_string(),
            }
        })
        .collect();
    anyhow!(placed.join("\n"))
}

/// Destroy needs only the state: it works even when the spec no longer parses.
fn destroy(shell: &Shell, spec: &SpecArg, auto_approve: bool) -> Result<u8> {
    let dir = state_dir(shell, &spec.file)?;
    let store = store_of(&dir);
    let _lock = store.lock("lbctl destroy")?;
    let mut state = store.load()?;
    let provider = state_provider(&state, &dir, spec)?;
    let observed = lbctl_plan::refresh(provider.as_ref(), &state)?;
    let plan = lbctl_plan::plan(provider.as_ref(), Vec::new(), &state, &observed, Vec::new());
    shell.out(&render::text(&plan, render::Style { color: shell.color }))?;
    if plan.has_changes() && !confirm(shell, "destroy", auto_approve)? {
        shell.error("destroy cancelled");
        return Ok(1);
    }
    let observer = shell.observer();
    executor::apply(
        &plan,
        provider.as_ref(),
        &store,
        &mut state,
        &observer,
        &Options { ready_timeout: Duration::from_secs(1) },
    )?;
    drop(observer);
    state.outputs.clear();
    store.save(&mut state)?;
    for released in provider.stack_destroyed()? {
        shell.status("Released", &released);
    }
    let (_, _, destroyed) = plan.summary();
    shell.out(&format!("\nDestroy complete! Resources: {destroyed} destroyed.\n"))?;
    Ok(0)
}

/// `lbctl logs`: what the provider logs, from the state's resources.
fn logs(shell: &Shell, spec: &SpecArg, name: Option<&str>, follow: bool, since: Option<&str>) -> Result<u8> {
    // A resource's name has no dot: this is a spec file, after `-f`
    // (--follow here, as in `tail -f`).
    if let Some(name) = name.filter(|it| it.ends_with(".yaml") || it.ends_with(".yml")) {
        bail!(crate::args::spec_file_after_follow(name, &[]));
    }
    let since = since
        .map(|it| lbctl_spec::Duration::parse(it).map_err(anyhow::Error::msg).context("--since"))
        .transpose()?
        .map(|it| std::time::SystemTime::now() - it.get());
    let dir = state_dir(shell, &spec.file)?;
    let store = store_of(&dir);
    let state = store.load()?;
    if state.resources.is_empty() {
        let kept = store.dir().join("logs");
        if kept.is_dir() {
            bail!(
                "nothing is applied in {}; the logs of what was destroyed are kept in {}",
                store.dir().display(),
                kept.display()
            );
        }
        bail!("nothing is applied in {}: no logs", store.dir().display());
    }
    let provider = state_provider(&state, &dir, spec)?;
    let resources: Vec<lbctl_plan::ResourceState> = state.resources.values().cloned().collect();
    let files = || crate::logs::select(provider.log_files(&resources), name);
    let mut readers = std::collections::BTreeMap::new();
    // One resource's lines as written; everything's after their source.
    let labelled = name.is_none();
    crate::logs::add_new(&mut readers, files()?, labelled);
    let print = |readers: &mut std::collections::BTreeMap<std::path::PathBuf, crate::logs::Reader>, since| {
        let mut list: Vec<crate::logs::Reader> = std::mem::take(readers).into_values().collect();
        let lines = crate::logs::gather(&mut list, since);
        for reader in list {
            readers.insert(reader.path().clone(), reader);
        }
        let text: String = lines.iter().map(|it| format!("{}\n", it.text)).collect();
        shell.out(&text)
    };
    print(&mut readers, since)?;
    if !follow {
        return Ok(0);
    }
    loop {
        std::thread::sleep(crate::logs::FOLLOW_EVERY);
        if let Ok(now) = files() {
            crate::logs::add_new(&mut readers, now, labelled);
        }
        print(&mut readers, None)?;
    }
}

/// The width `lbctl status` fits in when not on a terminal.
const STATUS_WIDTH: usize = 100;

/// The terminal's width, else `STATUS_WIDTH`.
fn status_width() -> usize {
    Table::new().width().map(usize::from).unwrap_or(STATUS_WIDTH)
}

/// Each line of `text` wrapped to `width` columns at spaces (a word longer
/// than that, a path, stays whole), continuation lines indented two more
/// than their line; every line ends in a newline.
fn wrap(text: &str, width: usize) -> String {
    let mut wrapped = String::new();
    for line in text.lines() {
        let indent = " ".repeat(line.len() - line.trim_start().len() + 2);
        let options = textwrap::Options::new(width)
            .subsequent_indent(&indent)
            .break_words(false)
            .word_splitter(textwrap::WordSplitter::NoHyphenation);
        for part in textwrap::wrap(line, options) {
            wrapped.push_str(&part);
            wrapped.push('\n');
        }
    }
    wrapped
}

/// Constrains `table` (of `columns` and `rows`, `width` wide) so that
/// what is searched for is found whole: a column of single words (ids,
/// addresses, states) is never split, narrowest first while the width
/// allows, and a column of prose (reasons) wraps at spaces only, its
/// longest word (`Target.Timeout:`) kept whole.
fn keep_words_whole(table: &mut Table, columns: &[String], rows: &[Vec<String>], width: usize) {
    use comfy_table::{ColumnConstraint, Width};
    let cells =
        |index: usize| rows.iter().filter_map(move |row| row.get(index)).chain(std::iter::once(&columns[index]));
    let longest = |texts: &mut dyn Iterator<Item = &str>| texts.map(|it| it.chars().count()).max().unwrap_or(0);
    let mut whole = Vec::new();
    // Each column's borders and padding take three characters, and one more ends the row.
    let mut used = 3 * columns.len() + 1;
    for index in 0..columns.len() {
        if cells(index).all(|cell| !cell.contains(' ')) {
            whole.push((longest(&mut cells(index).map(String::as_str)), index));
        } else {
            let word = longest(&mut cells(index).flat_map(|cell| cell.split(' ')));
            used += word;
            if let Some(column) = table.column_mut(index) {
                column.set_constraint(ColumnConstraint::LowerBoundary(Width::Fixed(word as u16)));
            }
        }
    }
    whole.sort();
    for (content, index) in whole {
        if used + content > width {
            break;
        }
        used += content;
        if let Some(column) = table.column_mut(index) {
            column.set_constraint(ColumnConstraint::ContentWidth);
        }
    }
}

/// `lbctl status` of the stack in `dir`; `watching`: one of a series
/// (`--watch`), JSON on one line with its time.
fn status(shell: &Shell, spec: &SpecArg, dir: &Path, json: bool, wide: bool, watching: bool) -> Result<u8> {
    let state = store_of(dir).load()?;
    let provider = state_provider(&state, dir, spec)?;
    let mut text = String::new();
    let mut values = Vec::new();
    for resource in state.resources.values() {
        let live = provider.status(resource)?;
        values.push(json!({ "address": resource.address.to_string(), "summary": live.summary, "live": live.json }));
        let width = status_width();
        text.push_str(&wrap(&format!("{}: {}", resource.address, live.summary), width));
        if !live.rows.is_empty() {
            // Columns shown only with --wide are dropped; what is left
            // wraps to the terminal's width (100 columns without one).
            let shown = if wide { live.columns.len() } else { live.columns.len() - live.wide_only };
            let mut table = Table::new();
            table
                .load_preset(UTF8_FULL_CONDENSED)
                .set_content_arrangement(ContentArrangement::Dynamic)
                .set_header(live.columns[..shown].to_vec());
            table.set_width(width as u16);
            for row in &live.rows {
                table.add_row(row[..shown.min(row.len())].to_vec());
            }
            keep_words_whole(&mut table, &live.columns[..shown], &live.rows, width);
            text.push_str(&format!("{table}\n"));
        }
        for line in &live.footer {
            text.push_str(&wrap(line, width));
        }
        text.push('\n');
    }
    if json {
        let text = if watching {
            let time = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
            serde_json::to_string(&json!({ "format_version": 1, "time": time, "resources": values }))?
        } else {
            serde_json::to_string_pretty(&json!({ "format_version": 1, "resources": values }))?
        };
        shell.out(&format!("{text}\n"))?;
    } else if state.resources.is_empty() {
        shell.out("Nothing is applied.\n")?;
    } else {
        shell.out(&text)?;
    }
    Ok(0)
}

/// `lbctl output`: the outputs of the last apply, from the state.
fn output(shell: &Shell, spec: &SpecArg, name: Option<&str>, json: bool) -> Result<u8> {
    let dir = state_dir(shell, &spec.file)?;
    let state = store_of(&dir).load()?;
    let describe = |value: &String| json!({ "sensitive": false, "type": "string", "value": value });
    match name {
        Some(name) => {
            let Some(value) = state.outputs.get(name) else {
                let names: Vec<&str> = state.outputs.keys().map(String::as_str).collect();
                if names.is_empty() {
                    bail!("no output `{name}`: the state has no outputs (nothing is applied)");
                }
                bail!(
                    "no output `{name}` (outputs: {}){}",
                    names.join(", "),
                    lbctl_spec::did_you_mean(name, names.iter().copied())
                );
            };
            if json {
                shell.out(&format!("{}\n", serde_json::to_string(value)?))?;
            } else {
                shell.out(&format!("{value}\n"))?;
            }
        }
        None if json => {
            let all: serde_json::Map<String, serde_json::Value> =
                state.outputs.iter().map(|(key, value)| (key.clone(), describe(value))).collect();
            shell.out(&format!("{}\n", serde_json::to_string_pretty(&all)?))?;
        }
        None if state.outputs.is_empty() => shell.status("Note", "no outputs: nothing is applied"),
        None => {
            let text: String = state.outputs.iter().map(|(key, value)| format!("{key} = \"{value}\"\n")).collect();
            shell.out(&text)?;
        }
    }
    Ok(0)
}

/// `lbctl show`: what the state holds. Each resource's effective settings
/// (what was written and the defaults in context) and what the provider
/// learned when it made it; `--json` gives the written attributes apart.
fn show(shell: &Shell, spec: &SpecArg, json: bool) -> Result<u8> {
    let dir = state_dir(shell, &spec.file)?;
    let state = store_of(&dir).load()?;
    if json {
        let resources: Vec<_> = state
            .resources
            .values()
            .map(|it| {
                json!({
                    "address": it.address.to_string(), "attributes": it.attributes,
                    "resolved": it.resolved, "computed": it.computed,
                })
            })
            .collect();
        let value = json!({
            "format_version": 2, "provider": state.provider, "lineage": state.lineage, "serial": state.serial,
            "resources": resources, "outputs": state.outputs,
        });
        shell.out(&format!("{}\n", serde_json::to_string_pretty(&value)?))?;
        return Ok(0);
    }
    if state.resources.is_empty() {
        shell.out("The state is empty.\n")?;
        return Ok(0);
    }
    let mut text = String::new();
    for resource in state.resources.values() {
        let mut shown = resource.resolved.clone();
        for (key, value) in &resource.computed {
            shown[key.as_str()] = value.clone();
        }
        text.push_str(&format!("# {}\n{}\n\n", resource.address, serde_json::to_string_pretty(&shown)?));
    }
    if !state.outputs.is_empty() {
        text.push_str("Outputs:\n\n");
        for (key, value) in &state.outputs {
            text.push_str(&format!("{key} = \"{value}\"\n"));
        }
    }
    shell.out(&text)?;
    Ok(0)
}
