//! Where functions run in a cluster: the scheduler's assignment of each function to
//! nodes (`[placement] nodes = N`), and the nodes an operator drained. Kept in the
//! cluster registry next to the function records (`place.<function>`, `drain.<node>`);
//! only the scheduler writes them, and every node follows them to decide what it
//! fetches, compiles, serves and keeps state for.
//!
//! A move is make-before-break: the new node joins `nodes` while the old one stays in
//! `leaving`, serving, until every node in `nodes` serves the function; then the
//! scheduler drops `leaving`. A node hosts a function while it is in either list.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// Where one function runs.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Hosting {
    /// The nodes assigned to it; `None`: every node that is not drained (the default,
    /// `[placement]` unset).
    pub nodes: Option<Vec<String>>,
    /// Nodes it is moving away from: they serve it until every node in `nodes` does.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub leaving: Vec<String>,
    /// How many nodes the manifest asks for (`None`: all).
    #[serde(default)]
    pub wanted: Option<u32>,
    /// Placed by hand (`skiff move`): the scheduler's balancing leaves it where it is
    /// (it still replaces a node that died or was drained).
    #[serde(default)]
    pub pinned: bool,
}

impl Hosting {
    /// Every node that is not drained.
    pub fn everywhere() -> Hosting {
        Hosting::default()
    }

    /// Whether `node` (drained or not, as `drained` says) should host the function.
    pub fn hosts(&self, node: &str, drained: bool) -> bool {
        match &self.nodes {
            None => !drained,
            Some(nodes) => {
                nodes.iter().any(|n| n == node) || self.leaving.iter().any(|n| n == node)
            }
        }
    }

    /// The assigned nodes and those still leaving, in that order.
    pub fn all_nodes(&self) -> Vec<String> {
        let mut all = self.nodes.clone().unwrap_or_default();
        all.extend(self.leaving.iter().cloned());
        all
    }
}

/// The whole assignment as the registry holds it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct HostingTable {
    /// Each placed function's hosting, with the registry revision it was read at (for
    /// compare-and-set). A function absent here runs everywhere.
    pub functions: BTreeMap<String, (Hosting, u64)>,
    /// Nodes an operator drained: they host nothing that runs everywhere and get no new
    /// assignments.
    pub drained: BTreeSet<String>,
}

impl HostingTable {
    /// Whether `node` should host `function`.
    pub fn hosts(&self, function: &str, node: &str) -> bool {
        let drained = self.drained.contains(node);
        match self.functions.get(function) {
            Some((h, _)) => h.hosts(node, drained),
            None => !drained,
        }
    }

    /// `function`'s hosting (everywhere when none is recorded).
    pub fn of(&self, function: &str) -> Hosting {
        self.functions
            .get(function)
            .map(|(h, _)| h.clone())
            .unwrap_or_default()
    }
}

/// A change to the assignment, as a registry watch reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostingChange {
    /// A function's hosting was set (`None`: removed, so it runs everywhere again).
    Placed(String, Option<Hosting>),
    /// A node was drained (true) or taken back (false).
    Drained(String, bool),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_hosts_what_it_is_assigned_or_leaving_and_everything_unplaced_unless_drained() {
        let mut t = HostingTable::default();
        assert!(t.hosts("f", "a"));
        t.functions.insert(
            "f".into(),
            (
                Hosting {
                    nodes: Some(vec!["a".into()]),
                    leaving: vec!["b".into()],
                    wanted: Some(1),
                    pinned: false,
                },
                1,
            ),
        );
        assert!(t.hosts("f", "a"));
        assert!(t.hosts("f", "b"));
        assert!(!t.hosts("f", "c"));
        t.drained.insert("c".into());
        assert!(!t.hosts("g", "c"));
        assert!(t.hosts("g", "a"));
        // A drained node keeps what it is explicitly assigned until the scheduler moves it.
        t.drained.insert("a".into());
        assert!(t.hosts("f", "a"));
        assert_eq!(t.of("f").all_nodes(), vec!["a", "b"]);
        assert_eq!(t.of("g"), Hosting::everywhere());
    }
}
