//! lbctl's planner: from a spec and what exists, to a plan, to a new state.
//!
//! This crate owns the resource graph (`resource`), the diff of desired
//! against observed (`diff`), plan rendering as text and JSON (`render`), the
//! executor that runs a plan in dependency order with independent resources
//! in parallel (`executor`), and the state file with its lock (`state`).
//!
//! **Architecture invariant:** it knows resources only through the
//! `Provider` trait it defines. It starts no process, opens no socket and
//! knows nothing of proxies, supervisors or the runtime directory; the local
//! provider is not among its dependencies.
//!
//! **API boundary:** `Provider` is the contract every provider implements.
#![deny(missing_docs)]

pub mod diff;
pub mod executor;
pub mod provider;
pub mod render;
pub mod resource;
pub mod state;

pub use diff::{plan, refresh, ActionKind, Change, Plan, PlannedAction};
pub use provider::{
    Applied, Computed, DependencyOutputs, Finding, LiveStatus, LogFile, LogKind, Observed, PartlyApplied, Policy,
    Progress, Provider, Readiness, Replacement, Severity,
};
pub use resource::{desired_resources, Address, Kind, Resource};
pub use state::{ResourceState, State, StateLock, StateStore};

/// The resource graph of a spec as DOT, for `lbctl graph`.
pub fn graph_dot(resources: &[Resource]) -> String {
    let mut graph = petgraph::graph::DiGraph::<String, ()>::new();
    let mut nodes = std::collections::BTreeMap::new();
    for resource in resources {
        nodes.insert(resource.address.clone(), graph.add_node(resource.address.to_string()));
    }
    for resource in resources {
        for dependency in &resource.dependencies {
            if let Some(&from) = nodes.get(dependency) {
                graph.add_edge(nodes[&resource.address], from, ());
            }
        }
    }
    let dot = petgraph::dot::Dot::with_config(&graph, &[petgraph::dot::Config::EdgeNoLabel]);
    format!("{dot:?}")
}

#[cfg(test)]
mod tests;
