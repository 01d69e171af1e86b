//! Saved plans (`plan --out FILE`, `apply FILE`): the spec as planned, the
//! state it was planned against, and the actions, so that `apply` can refuse
//! a plan that no longer matches.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// The saved plan file (JSON).
#[derive(Debug, Serialize, Deserialize)]
pub struct SavedPlan {
    /// Always `lbctl-plan`.
    pub format: String,
    /// Format version.
    pub version: u32,
    /// The spec file as the user named it.
    pub spec_file: String,
    /// Its directory, absolute.
    pub spec_dir: PathBuf,
    /// Its text when planned.
    pub spec_source: String,
    /// State lineage when planned.
    pub lineage: String,
    /// State serial when planned.
    pub serial: u64,
    /// The planned actions in a comparable form.
    pub fingerprint: String,
    /// The plan as `plan --json` prints it, for people and tools.
    pub plan: serde_json::Value,
}

const FORMAT: &str = "lbctl-plan";

impl SavedPlan {
    pub fn write(&self, path: &Path) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(self).context("serializing plan")?;
        // A plan holds the spec, `env` values included: private, as the state.
        lbctl_files::write_private(path, &bytes).with_context(|| format!("writing plan {}", path.display()))
    }

    /// Refuses `path` as where a plan is saved when writing there would
    /// lose something or surprise: a file that is not a saved plan (the
    /// spec, say) is never overwritten, no directory is made for it, and
    /// the state's directory is lbctl's own.
    pub fn check_destination(path: &Path, state_dir: &Path) -> Result<()> {
        let dir = path.parent().filter(|it| !it.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let Ok(dir) = dir.canonicalize() else {
            bail!("cannot save the plan to {}: directory {} does not exist", path.display(), dir.display());
        };
        if state_dir.canonicalize().is_ok_and(|state| dir.starts_with(state)) {
            bail!("cannot save the plan to {}: {} is lbctl's state directory", path.display(), state_dir.display());
        }
        if path.exists() && SavedPlan::read(path).is_err() {
            bail!(
                "cannot save the plan to {}: it exists and is not a plan saved by lbctl, so it is not overwritten",
                path.display()
            );
        }
        Ok(())
    }

    pub fn read(path: &Path) -> Result<SavedPlan> {
        let bytes = std::fs::read(path).with_context(|| format!("reading plan {}", path.display()))?;
        let plan: SavedPlan = serde_json::from_slice(&bytes)
            .with_context(|| format!("{} is not a plan saved by lbctl", path.display()))?;
        if plan.format != FORMAT || plan.version != 1 {
            bail!("{} is not a version-1 lbctl plan", path.display());
        }
        Ok(plan)
    }

    pub fn new(spec_file: String, spec_dir: PathBuf, spec_source: String, plan: &lbctl_plan::Plan) -> SavedPlan {
        SavedPlan {
            format: FORMAT.to_string(),
            version: 1,
            spec_file,
            spec_dir,
            spec_source,
            lineage: plan.lineage.clone(),
            serial: plan.serial,
            fingerprint: plan.fingerprint(),
            plan: lbctl_plan::render::json(plan),
        }
    }
}
