//! The providers this binary has, by name: the one place in the CLI that
//! knows any of them. Everything else holds a `Box<dyn Provider>`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use lbctl_plan::{Provider, State};
use lbctl_spec::{AwsStack, ProviderName, Spec};

/// What every provider is made from: the stack, where its files live, and
/// the spec's `aws:` section.
pub struct Stack {
    /// Stack name.
    pub stack: String,
    /// The spec's directory (absolute).
    pub dir: PathBuf,
    /// The spec's `aws:` section (empty when it has none).
    pub aws: AwsStack,
}

impl Stack {
    /// The stack of `spec`, whose file is in `dir`.
    pub fn new(spec: &Spec, dir: &Path) -> Stack {
        Stack { stack: spec.name.clone(), dir: dir.to_path_buf(), aws: spec.aws.clone().unwrap_or_default() }
    }
}

/// Every provider this binary has.
const PROVIDERS: [ProviderName; 2] = [ProviderName::Local, ProviderName::Aws];

fn by_name(name: &str) -> Option<ProviderName> {
    PROVIDERS.into_iter().find(|it| it.as_str() == name)
}

/// `--provider NAME`.
pub fn chosen_name(name: &str) -> Result<ProviderName> {
    match by_name(name) {
        Some(found) => Ok(found),
        None => bail!("there is no provider `{name}`: `local` or `aws`"),
    }
}

/// The provider of a run: `--provider`, else the spec's `provider:`.
pub fn chosen(spec: &Spec, flag: Option<&str>) -> Result<ProviderName> {
    flag.map(chosen_name).unwrap_or(Ok(spec.provider()))
}

/// The provider called `name`.
pub fn provider(name: ProviderName, context: &Stack) -> Result<Box<dyn Provider>> {
    match name {
        ProviderName::Local => Ok(Box::new(lbctl_local::LocalProvider::new(lbctl_local::LocalOptions {
            stack: context.stack.clone(),
            state_dir: context.dir.join(".lbctl"),
            working_dir: context.dir.clone(),
            lbctl_exe: std::env::current_exe().context("finding the lbctl binary")?,
        }))),
        ProviderName::Aws => Ok(Box::new(lbctl_aws::AwsProvider::new(lbctl_aws::AwsOptions {
            stack: context.stack.clone(),
            aws: context.aws.clone(),
            working_dir: context.dir.clone(),
        }))),
    }
}

/// The provider a state was made with, by the name it records.
pub fn name_of(state: &State) -> Result<ProviderName> {
    match by_name(&state.provider) {
        Some(found) => Ok(found),
        None => bail!("the state was made by a provider this lbctl does not know: `{}`", state.provider),
    }
}

/// Refuses to use `state`, which holds another stack's resources, for
/// the stack `wanted`: two specs beside each other share one `.lbctl/`,
/// and planning one against the other's state would destroy the other.
pub fn check_stack(state: &State, wanted: &str, state_dir: &Path) -> Result<()> {
    if state.resources.is_empty() || state.stack.is_empty() || state.stack == wanted {
        return Ok(());
    }
    bail!(
        "the state in {} holds the resources of stack `{}`; this spec is stack `{wanted}`. A directory holds one stack's state: destroy stack `{}` first (`lbctl destroy -f` its spec; to rename a stack, destroy it under its old `name` first), or keep this spec in a directory of its own",
        state_dir.display(),
        state.stack,
        state.stack
    )
}

/// Refuses to use `state` with a provider other than the one that made it.
pub fn check_same(state: &State, wanted: ProviderName, state_dir: &Path) -> Result<()> {
    if state.resources.is_empty() || state.provider == wanted.as_str() {
        return Ok(());
    }
    bail!(
        "the state in {} holds resources the `{}` provider made; this run uses `{}`. A state is never used by another provider: run `lbctl destroy` with `{}` first, or keep the two stacks in separate directories",
        state_dir.display(),
        state.provider,
        wanted.as_str(),
        state.provider
    )
}
