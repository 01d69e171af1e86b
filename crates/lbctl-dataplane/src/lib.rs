//! lbctl's data plane: the processes that serve traffic.
//!
//! This crate owns the load balancer proxy (`proxy`), the built-in demo
//! instance (`worker`) and their TLS configurations (`tls`). The files they
//! read and write are `lbctl-runtime`'s (re-exported as `runtime` and
//! `process`).
//!
//! **Architecture invariant:** it knows nothing of plans, state files or the
//! provider trait: a proxy is started with one configuration file and keeps
//! serving with no `lbctl` command running. It depends on `lbctl-spec` only
//! for the settings types it is handed.
#![deny(missing_docs)]

pub use lbctl_runtime as runtime;
pub use lbctl_runtime::process;

pub mod proxy;
pub mod tls;
pub mod worker;
