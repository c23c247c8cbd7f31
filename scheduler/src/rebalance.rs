//! Keeping the assignment of functions to nodes true to the live cluster: every half
//! second, [`crate::assign::plan`] over the registry's records and hosting and the live
//! set, and what changed written back with compare-and-set (a round that loses to
//! another scheduler's write just tries again next time). Nodes follow the assignment.
//!
//! Nothing is decided until the live set is trustworthy: NATS connected for a while
//! (every live node reported since), so that a scheduler that just started, or just got
//! NATS back, does not take silent-but-alive nodes for dead ones.

use crate::assign::{self, FunctionFacts, NodeFacts};
use crate::shared::Scheduler;
use skiff_core::control::ControlError;
use skiff_core::hosting::{Hosting, HostingTable};
use skiff_core::manifest::Manifest;
use skiff_core::record::FunctionRecord;
use skiff_core::report::{EXPIRE_AFTER_MS, NodeState};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often the assignment is checked.
const EVERY: Duration = Duration::from_millis(500);
/// Balancing moves started per round at most (moves that replace a lost or drained node
/// are not limited).
const BALANCE_PER_ROUND: usize = 2;

/// Runs rounds for as long as the scheduler runs.
pub(crate) async fn run(s: Arc<Scheduler>) {
    let settle = Duration::from_millis(2 * EXPIRE_AFTER_MS);
    let mut connected_since: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(EVERY) => {}
            _ = s.replan.notified() => {}
        }
        if !s.nats_connected() {
            connected_since = None;
            continue;
        }
        if connected_since.get_or_insert_with(Instant::now).elapsed() < settle {
            continue;
        }
        if let Err(e) = round(&s).await {
            tracing::debug!(error = %e, "cannot check the placement of functions now");
        }
    }
}

/// How many nodes a function with this manifest asks for: its `[placement] nodes`, else
/// the scheduler's default (`None`: every node).
pub(crate) fn wanted(manifest: &str, name: &str, default: Option<u32>) -> Option<u32> {
    Manifest::parse(manifest, name)
        .ok()
        .and_then(|m| m.placement.nodes)
        .or(default)
}

/// The live nodes as the assignment sees them.
pub(crate) fn node_facts(
    s: &Scheduler,
    table: &HostingTable,
    records: &[FunctionRecord],
) -> Vec<NodeFacts> {
    s.live
        .snapshot(Instant::now())
        .into_iter()
        .filter(|(r, _, _)| r.state != NodeState::Left)
        .map(|(r, _, _)| NodeFacts {
            eligible: r.state == NodeState::Up && !table.drained.contains(&r.node),
            load: f64::from(r.in_flight) / f64::from(r.capacity.max(1)),
            serving: r
                .functions
                .iter()
                .filter(|f| {
                    records
                        .iter()
                        .any(|rec| rec.name == f.name && rec.version == f.version)
                })
                .map(|f| f.name.clone())
                .collect(),
            name: r.node,
        })
        .collect()
}

/// One round: plan, write what changed, log and count the moves.
async fn round(s: &Scheduler) -> Result<(), ControlError> {
    let records = s.registry.records().await?;
    let table = s.registry.hosting().await?;
    let nodes = node_facts(s, &table, &records);
    let functions: Vec<FunctionFacts> = records
        .iter()
        .map(|r| FunctionFacts {
            name: r.name.clone(),
            wanted: wanted(&r.manifest, &r.name, s.placement_nodes),
            hosting: table.functions.get(&r.name).map(|(h, _)| h.clone()),
        })
        .collect();
    let plan = assign::plan(&functions, &nodes, BALANCE_PER_ROUND);
    s.set_hosting(table.clone(), plan.under_replicated.clone());
    for (name, change) in &plan.changes {
        let revision = table.functions.get(name).map_or(0, |(_, r)| *r);
        let written = match change {
            Some(h) => s.registry.put_hosting(name, h, revision).await.map(drop),
            None => s.registry.remove_hosting(name).await,
        };
        if let Err(e) = written {
            tracing::info!(function = %name, error = %e, "placement not written this round");
            return Ok(());
        }
    }
    for m in &plan.moves {
        s.moves.inc();
        match &m.from {
            Some(from) => {
                tracing::info!(function = %m.function, from = %from, to = %m.to, why = m.why, "moving a function")
            }
            None => {
                tracing::info!(function = %m.function, to = %m.to, why = m.why, "placing a function")
            }
        }
    }
    // The hosting of functions removed since.
    for name in table.functions.keys() {
        if !records.iter().any(|r| &r.name == name) {
            s.registry.remove_hosting(name).await?;
        }
    }
    Ok(())
}

/// Places a function about to be deployed (before its record is written, so that nodes
/// not assigned to it never load it): answers its hosting, or `None` when it runs
/// everywhere. A function placed already keeps its nodes.
pub(crate) async fn place_new(
    s: &Scheduler,
    name: &str,
    wanted: Option<u32>,
) -> Result<Option<Hosting>, ControlError> {
    let table = s.registry.hosting().await?;
    let records = s.registry.records().await?;
    let current = table.functions.get(name);
    let facts = FunctionFacts {
        name: name.to_string(),
        wanted,
        hosting: current.map(|(h, _)| h.clone()),
    };
    // Every other placed function counts, so that the new one goes where there is room.
    let mut all: Vec<FunctionFacts> = table
        .functions
        .iter()
        .filter(|(n, _)| n.as_str() != name)
        .map(|(n, (h, _))| FunctionFacts {
            name: n.clone(),
            wanted: h.wanted,
            hosting: Some(h.clone()),
        })
        .collect();
    all.push(facts);
    let nodes = node_facts(s, &table, &records);
    let plan = assign::plan(&all, &nodes, 0);
    let revision = current.map_or(0, |(_, r)| *r);
    match plan.changes.into_iter().find(|(n, _)| n == name) {
        Some((_, Some(h))) => {
            s.registry.put_hosting(name, &h, revision).await?;
            Ok(Some(h))
        }
        Some((_, None)) => {
            s.registry.remove_hosting(name).await?;
            Ok(None)
        }
        None => Ok(current.map(|(h, _)| h.clone())),
    }
}
