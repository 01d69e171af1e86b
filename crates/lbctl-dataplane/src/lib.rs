//! lbctl's data plane: the processes that serve traffic.
//!
//! This crate owns the load balancer proxy (`proxy`), the auto-scaling group
//! supervisor (`supervisor`), the built-in demo instance (`worker`), the
//! runtime files through which they and the provider talk (`runtime`), TLS
//! certificates and configurations (`tls`), and process helpers (`process`).
//!
//! **Architecture invariant:** it knows nothing of plans, state files or the
//! provider trait: a proxy or supervisor is started with one configuration
//! file and keeps serving with no `lbctl` command running. It depends on
//! `lbctl-spec` only for the settings types it is handed.
#![deny(missing_docs)]

pub mod process;
pub mod proxy;
pub mod runtime;
pub mod supervisor;
pub mod tls;
pub mod worker;
