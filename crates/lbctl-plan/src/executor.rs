//! The executor: runs a plan's actions through the provider in dependency
//! order, independent ones in parallel, saving the state after each.
//!
//! Ordering (an edge `a -> b` means `a` finishes before `b` starts):
//! - a resource is created or updated after the resources it depends on;
//! - a resource that depended on something being deleted is updated or
//!   deleted before that deletion (dependents go first on the way down);
//! - a resource of a kind the provider's `Policy` names in
//!   `delete_before_create` is deleted before any of that kind is created
//!   (the local provider's load balancers: a port freed by one can be taken
//!   by another in the same apply);
//! - a replacement deletes then creates, or creates then deletes, as the
//!   policy says.
//!
//! Each action runs on its own scoped thread; the calling thread alone
//! schedules, records results and writes the state, so the state file has
//! one writer.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::Direction;

use crate::diff::{ActionKind, Plan, PlannedAction};
use crate::provider::{DependencyOutputs, PartlyApplied, Policy, Progress, Provider, Readiness, Replacement};
use crate::resource::{Address, Kind};
use crate::state::{ResourceState, State, StateStore};

/// What the executor tells its caller as it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// An action started.
    Started(Address, ActionKind),
    /// A provider progress line for a resource.
    Progress(Address, String),
    /// An action finished.
    Finished(Address, ActionKind, Duration),
    /// An action failed.
    Failed(Address, String),
    /// Waiting for a resource to be ready, and on what.
    Waiting(Address, String),
    /// A resource is ready.
    Ready(Address, Duration),
}

/// Receives events; called from the executor's threads.
pub trait Observer: Sync {
    /// One event.
    fn event(&self, event: Event);
}

/// Executor settings.
#[derive(Debug, Clone)]
pub struct Options {
    /// How long to wait for every resource to be ready after the actions.
    pub ready_timeout: Duration,
}

struct ResourceProgress<'a> {
    address: &'a Address,
    observer: &'a dyn Observer,
}

impl Progress for ResourceProgress<'_> {
    fn report(&self, message: &str) {
        self.observer.event(Event::Progress(self.address.clone(), message.to_string()));
    }
}

/// The order constraints between a plan's actions.
pub fn action_graph(plan: &Plan, policy: &Policy) -> Result<DiGraph<usize, ()>> {
    let mut graph = DiGraph::new();
    let nodes: Vec<NodeIndex> = (0..plan.actions.len()).map(|idx| graph.add_node(idx)).collect();
    let index: BTreeMap<&Address, usize> =
        plan.actions.iter().enumerate().map(|(idx, action)| (&action.address, idx)).collect();
    for (idx, action) in plan.actions.iter().enumerate() {
        // Created or updated after what it depends on.
        if let Some(desired) = &action.desired {
            for dependency in &desired.dependencies {
                if let Some(&dep_idx) = index.get(dependency) {
                    if plan.actions[dep_idx].kind != ActionKind::Delete {
                        graph.update_edge(nodes[dep_idx], nodes[idx], ());
                    }
                }
            }
        }
        // Dependents of a deleted resource let go of it first.
        if let Some(prior) = &action.prior {
            for dependency in &prior.dependencies {
                if let Some(&dep_idx) = index.get(dependency) {
                    if plan.actions[dep_idx].kind == ActionKind::Delete {
                        graph.update_edge(nodes[idx], nodes[dep_idx], ());
                    }
                }
            }
        }
        // Deletions that free what a creation of the same kind may need.
        if policy.delete_before_create.contains(&action.address.kind) && action.kind == ActionKind::Delete {
            for (other_idx, other) in plan.actions.iter().enumerate() {
                let creates = matches!(other.kind, ActionKind::Create | ActionKind::Replace);
                if other.address.kind == action.address.kind && creates {
                    graph.update_edge(nodes[idx], nodes[other_idx], ());
                }
            }
        }
    }
    if let Err(cycle) = petgraph::algo::toposort(&graph, None) {
        let address = &plan.actions[graph[cycle.node_id()]].address;
        bail!("the plan's actions form a cycle through {address}");
    }
    Ok(graph)
}

fn run_action(
    provider: &dyn Provider,
    action: &PlannedAction,
    dependencies: &DependencyOutputs,
    progress: &dyn Progress,
) -> Result<Option<ResourceState>> {
    let desired = || action.desired.as_ref().ok_or_else(|| anyhow!("{} has no desired settings", action.address));
    let prior = || action.prior.as_ref().ok_or_else(|| anyhow!("{} has no prior state", action.address));
    match action.kind {
        ActionKind::Create => {
            let resource = desired()?;
            // A resource re-created after drift is created over what is left
            // of it: the provider adopts what still lives (a supervisor's
            // instances) instead of the executor tearing it down first.
            let applied = provider.create(resource, dependencies, progress)?;
            Ok(Some(ResourceState::applied(resource, applied)))
        }
        ActionKind::Update => {
            let resource = desired()?;
            let applied = provider.update(prior()?, resource, dependencies, progress)?;
            Ok(Some(ResourceState::applied(resource, applied)))
        }
        ActionKind::Replace => {
            let resource = desired()?;
            let applied = match provider.policy().replacement {
                Replacement::DeleteThenCreate => {
                    provider.delete(prior()?, progress)?;
                    provider.create(resource, dependencies, progress)?
                }
                Replacement::CreateThenDelete => {
                    let applied = provider.create(resource, dependencies, progress)?;
                    provider.delete(prior()?, progress)?;
                    applied
                }
            };
            Ok(Some(ResourceState::applied(resource, applied)))
        }
        ActionKind::Delete => {
            provider.delete(prior()?, progress)?;
            Ok(None)
        }
    }
}

/// Runs `plan`: actions in dependency order, the state saved after each; then
/// waits for every desired resource to be ready and records the outputs.
pub fn apply(
    plan: &Plan,
    provider: &dyn Provider,
    store: &StateStore,
    state: &mut State,
    observer: &dyn Observer,
    options: &Options,
) -> Result<()> {
    let policy = provider.policy();
    let graph = action_graph(plan, &policy)?;
    let mut waiting_on: Vec<usize> =
        graph.node_indices().map(|node| graph.neighbors_directed(node, Direction::Incoming).count()).collect();
    let mut failures: Vec<String> = Vec::new();
    std::thread::scope(|scope| {
        let (done_tx, done_rx) = mpsc::channel::<(usize, Result<Option<ResourceState>>, Duration)>();
        let mut running = 0usize;
        let mut started = vec![false; plan.actions.len()];
        loop {
            // Start everything whose predecessors are done, unless something failed.
            if failures.is_empty() {
                for node in graph.node_indices() {
                    let idx = graph[node];
                    if started[idx] || waiting_on[idx] > 0 {
                        continue;
                    }
                    started[idx] = true;
                    running += 1;
                    let action = &plan.actions[idx];
                    observer.event(Event::Started(action.address.clone(), action.kind));
                    // What its dependencies produced, as they stand now (they
                    // finished before it started).
                    let dependencies: DependencyOutputs = action
                        .desired
                        .iter()
                        .flat_map(|it| it.dependencies.iter())
                        .filter_map(|it| Some((it.clone(), state.get(it)?.computed.clone())))
                        .collect();
                    let done_tx = done_tx.clone();
                    scope.spawn(move || {
                        let began = Instant::now();
                        let progress = ResourceProgress { address: &action.address, observer };
                        let result = run_action(provider, action, &dependencies, &progress);
                        let _ = done_tx.send((idx, result, began.elapsed()));
                    });
                }
            }
            if running == 0 {
                break;
            }
            let Ok((idx, result, elapsed)) = done_rx.recv() else { break };
            running -= 1;
            let action = &plan.actions[idx];
            match result {
                Ok(applied) => {
                    let key = action.address.to_string();
                    match applied {
                        Some(resource_state) => state.resources.insert(key, resource_state),
                        None => state.resources.remove(&key),
                    };
                    if let Err(err) = store.save(state) {
                        failures.push(format!("saving state after {}: {err:#}", action.address));
                    }
                    observer.event(Event::Finished(action.address.clone(), action.kind, elapsed));
                    let node = graph.node_indices().find(|it| graph[*it] == idx).expect("every action has a node");
                    for next in graph.neighbors_directed(node, Direction::Outgoing) {
                        waiting_on[graph[next]] -= 1;
                    }
                }
                Err(err) => {
                    // What a failed create or update made is kept: the next
                    // apply converges it (its settings are unknown, so all
                    // of them are applied again) and destroy removes it.
                    if let (Some(partial), Some(resource)) =
                        (err.downcast_ref::<PartlyApplied>(), action.desired.as_ref())
                    {
                        let mut kept = ResourceState::applied(resource, partial.applied.clone());
                        kept.resolved = serde_json::Value::Null;
                        state.resources.insert(action.address.to_string(), kept);
                        if let Err(err) = store.save(state) {
                            failures.push(format!("saving state after {}: {err:#}", action.address));
                        }
                    }
                    let message = format!("{err:#}");
                    observer.event(Event::Failed(action.address.clone(), message.clone()));
                    failures.push(format!("{} ({}): {message}", action.address, action.kind.as_str()));
                }
            }
        }
    });
    if !failures.is_empty() {
        bail!("apply failed; the state holds what was done\n  {}", failures.join("\n  "));
    }
    wait_ready(plan, provider, state, observer, options)?;
    for resource in state.resources.values_mut() {
        resource.awaiting_ready = false;
    }
    let applied: Vec<ResourceState> = state.resources.values().cloned().collect();
    state.outputs = provider.outputs(&applied);
    store.save(state)?;
    Ok(())
}

/// What an apply waits to be ready: only what it touched, as Terraform
/// does (a resource elsewhere in the stack that is not ready, such as an
/// `EC2` group keeping an instance its load balancer finds unhealthy, is
/// none of this apply's business):
/// - every resource it created, updated or replaced, and every resource an
///   earlier apply did and never saw ready (`awaiting_ready` in `state`);
/// - every resource that depends on one of those (an auto-scaling group
///   whose target group changed);
/// - for a load balancer it created, updated or replaced, every resource
///   that depends on what it forwards to (the groups that register
///   instances there, which must now be in service in it too).
pub fn waits_for<'a>(plan: &'a Plan, state: &State) -> Vec<&'a Address> {
    let changed: BTreeSet<&Address> = plan
        .actions
        .iter()
        .filter(|it| it.kind != ActionKind::Delete)
        .map(|it| &it.address)
        .chain(plan.desired.iter().map(|it| &it.address).filter(|it| state.get(it).is_some_and(|it| it.awaiting_ready)))
        .collect();
    let behind_changed_load_balancers: BTreeSet<&Address> = plan
        .desired
        .iter()
        .filter(|it| it.address.kind == Kind::LoadBalancer && changed.contains(&it.address))
        .flat_map(|it| it.dependencies.iter())
        .collect();
    plan.desired
        .iter()
        .filter(|resource| {
            changed.contains(&resource.address)
                || resource
                    .dependencies
                    .iter()
                    .any(|it| changed.contains(it) || behind_changed_load_balancers.contains(it))
        })
        .map(|it| &it.address)
        .collect()
}

/// Polls what the apply waits for (`waits_for`) until all of it is ready;
/// fails at the first `Failed`, or when the timeout passes, naming what it
/// still waits for.
fn wait_ready(
    plan: &Plan,
    provider: &dyn Provider,
    state: &State,
    observer: &dyn Observer,
    options: &Options,
) -> Result<()> {
    let began = Instant::now();
    let deadline = began + options.ready_timeout;
    let poll_interval = provider.policy().poll_interval;
    let mut pending = waits_for(plan, state);
    let mut last_reason: BTreeMap<&Address, String> = BTreeMap::new();
    loop {
        let mut still = Vec::new();
        for address in pending {
            let Some(current) = state.get(address) else { continue };
            match provider.ready(current)? {
                Readiness::Ready => observer.event(Event::Ready(address.clone(), began.elapsed())),
                Readiness::Waiting(reason) => {
                    if last_reason.get(address) != Some(&reason) {
                        observer.event(Event::Waiting(address.clone(), reason.clone()));
                        last_reason.insert(address, reason);
                    }
                    still.push(address);
                }
                Readiness::Failed(reason) => bail!("{address} will not become ready: {reason}"),
            }
        }
        if still.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let details: Vec<String> = still
                .iter()
                .map(|it| format!("{it}: {}", last_reason.get(it).map(String::as_str).unwrap_or("not ready")))
                .collect();
            bail!(
                "timed out after {}s waiting for resources to be ready:\n  {}",
                options.ready_timeout.as_secs(),
                details.join("\n  ")
            );
        }
        pending = still;
        std::thread::sleep(poll_interval);
    }
}
