//! lbctl's spec as the infrastructure as code its users deploy with:
//! `lbctl export cloudformation` and `lbctl export terraform`.
//!
//! This crate owns the mapping from a checked spec to AWS resources
//! (`model`: one mapping, AWS's limits applied, every change or omission
//! named in `notes`) and its two renderings (`cloudformation`: a template
//! as JSON or YAML; `terraform`: HCL for the `hashicorp/aws` provider).
//!
//! **Architecture invariant:** it reads a `Spec` and returns text. It knows
//! nothing of state, providers, processes or the network; the CLI reads the
//! file, checks it and prints what this crate returns.
#![deny(missing_docs)]

pub mod cloudformation;
pub mod model;
pub mod terraform;

use lbctl_spec::Spec;

/// What an export prints: the text, and what the user must know about it.
#[derive(Debug, Clone, PartialEq)]
pub struct Export {
    /// The template or configuration.
    pub text: String,
    /// What was changed to fit AWS or left out, by spec path.
    pub notes: Vec<String>,
}

/// The formats of a CloudFormation template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TemplateFormat {
    /// YAML (long-form intrinsic functions).
    Yaml,
    /// JSON.
    Json,
}

/// `spec` as a CloudFormation template.
pub fn cloudformation(spec: &Spec, format: TemplateFormat) -> Export {
    let stack = model::build(spec);
    let template = cloudformation::template(&stack);
    let text = match format {
        TemplateFormat::Json => serde_json::to_string_pretty(&template).unwrap_or_default() + "\n",
        TemplateFormat::Yaml => serde_yaml::to_string(&template).unwrap_or_default(),
    };
    Export { text, notes: stack.notes }
}

/// `spec` as Terraform configuration.
pub fn terraform(spec: &Spec) -> Export {
    let stack = model::build(spec);
    Export { text: terraform::configuration(&stack), notes: stack.notes }
}
