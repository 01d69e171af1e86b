//! lbctl's local provider: every resource as real processes and files on
//! this machine.
//!
//! This crate implements `lbctl_plan::Provider` on top of the data plane:
//! a load balancer is a proxy process, an auto-scaling group a supervisor
//! process, a target group and a function are files the proxies read. It
//! writes the runtime files of `lbctl_runtime`, starts and stops
//! processes by PID, and reads their status files to refresh, to wait for
//! readiness and to show `lbctl status`.
//!
//! **Architecture invariant:** it holds no plan logic (what to change is the
//! planner's call) and no data-plane logic (how to proxy or supervise is the
//! data plane's); it only translates resources into processes and files and
//! back.
#![deny(missing_docs)]

mod addresses;
mod capabilities;
mod certificates;
mod contract;
mod health;
mod holders;
mod hosts;
mod provider;
mod status;

pub use provider::{LocalOptions, LocalProvider};
