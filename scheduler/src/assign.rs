//! Pure: which nodes host which function (`[placement] nodes = N`), from the live nodes
//! and the assignment the registry holds. The rebalancer ([`crate::rebalance`]) runs it a
//! few times a second and writes what changed.
//!
//! Rules, per function that asks for N nodes:
//! * A node that died (left the live set) is dropped at once: the others still serve.
//! * A node that is drained or stopping moves its functions make-before-break: it stays
//!   in `leaving`, serving, while a replacement is added.
//! * Too few nodes: the least busy eligible nodes (fewest assigned functions, then lowest
//!   load) are added; with fewer eligible nodes than N, every one of them is
//!   (under-replicated, reported).
//! * Uneven spread (a node with at least 2 more functions than another eligible node):
//!   one function moves from the fullest to the emptiest, make-before-break, a few per
//!   round; functions placed by hand (`pinned`) stay.
//! * `leaving` is released once every assigned node serves the function.

use skiff_core::hosting::Hosting;
use std::collections::{BTreeMap, BTreeSet};

/// A live node as the assignment sees it.
#[derive(Debug, Clone)]
pub struct NodeFacts {
    /// Its name.
    pub name: String,
    /// It may receive functions: up, and not drained.
    pub eligible: bool,
    /// In flight ÷ capacity, as last reported.
    pub load: f64,
    /// Functions it serves now (at their recorded version).
    pub serving: BTreeSet<String>,
}

/// A deployed function as the assignment sees it.
#[derive(Debug, Clone)]
pub struct FunctionFacts {
    /// Its name.
    pub name: String,
    /// Nodes asked for; `None`: every node.
    pub wanted: Option<u32>,
    /// The hosting the registry holds, if any.
    pub hosting: Option<Hosting>,
}

/// A function moved from one node to another (or placed anew: `from` is `None`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Move {
    /// The function.
    pub function: String,
    /// The node it leaves, if any.
    pub from: Option<String>,
    /// The node it goes to.
    pub to: String,
    /// Why: `placed`, `node lost`, `drained`, `balance`.
    pub why: &'static str,
}

/// What a round decided.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Plan {
    /// Functions whose hosting changes (`None`: remove the record; it runs everywhere).
    pub changes: Vec<(String, Option<Hosting>)>,
    /// Nodes added to functions, with why.
    pub moves: Vec<Move>,
    /// Functions hosted on fewer nodes than they ask for.
    pub under_replicated: Vec<String>,
}

/// Plans one round; starts at most `max_balance` balancing moves.
pub fn plan(functions: &[FunctionFacts], nodes: &[NodeFacts], max_balance: usize) -> Plan {
    let alive: BTreeMap<&str, &NodeFacts> = nodes.iter().map(|n| (n.name.as_str(), n)).collect();
    let eligible = |n: &str| alive.get(n).is_some_and(|f| f.eligible);
    // How many functions each node is assigned (dead nodes left out).
    let mut count: BTreeMap<String, usize> = nodes.iter().map(|n| (n.name.clone(), 0)).collect();
    for f in functions {
        if let Some(Hosting {
            nodes: Some(list), ..
        }) = &f.hosting
        {
            for n in list {
                if let Some(c) = count.get_mut(n) {
                    *c += 1;
                }
            }
        }
    }
    let mut plan = Plan::default();
    let mut balanced = 0;
    let mut ordered: Vec<&FunctionFacts> = functions.iter().collect();
    ordered.sort_by(|a, b| a.name.cmp(&b.name));
    for f in ordered {
        let Some(wanted) = f.wanted else {
            if f.hosting.is_some() {
                plan.changes.push((f.name.clone(), None));
            }
            continue;
        };
        let wanted = wanted as usize;
        let current = f.hosting.clone().unwrap_or_default();
        let mut targets: Vec<String> = current.nodes.clone().unwrap_or_default();
        let mut leaving: Vec<String> = current.leaving.clone();
        leaving.retain(|n| alive.contains_key(n.as_str()));
        let lost: Vec<String> = targets
            .iter()
            .filter(|n| !alive.contains_key(n.as_str()))
            .cloned()
            .collect();
        targets.retain(|n| alive.contains_key(n.as_str()));
        // Drained or stopping: keep serving from `leaving` until the replacement serves.
        let mut why: &'static str = if lost.is_empty() {
            "placed"
        } else {
            "node lost"
        };
        for n in targets.clone() {
            if !eligible(&n) {
                targets.retain(|t| *t != n);
                dec(&mut count, &n);
                if !leaving.contains(&n) {
                    leaving.push(n);
                }
                why = "drained";
            }
        }
        // Asked for fewer than it has: the fullest go.
        while targets.len() > wanted {
            let Some(fullest) = pick(&targets, &count, &alive, true) else {
                break;
            };
            targets.retain(|t| *t != fullest);
            dec(&mut count, &fullest);
            leaving.push(fullest);
        }
        // Too few: the emptiest eligible nodes join.
        while targets.len() < wanted {
            let candidates: Vec<String> = nodes
                .iter()
                .filter(|n| n.eligible && !targets.contains(&n.name))
                .map(|n| n.name.clone())
                .collect();
            let Some(to) = pick(&candidates, &count, &alive, false) else {
                break;
            };
            leaving.retain(|l| *l != to);
            *count.entry(to.clone()).or_default() += 1;
            plan.moves.push(Move {
                function: f.name.clone(),
                from: None,
                to: to.clone(),
                why,
            });
            targets.push(to);
        }
        // Uneven: one function moves from the fullest node to the emptiest.
        if !current.pinned && leaving.is_empty() && balanced < max_balance {
            let others: Vec<String> = nodes
                .iter()
                .filter(|n| n.eligible && !targets.contains(&n.name))
                .map(|n| n.name.clone())
                .collect();
            if let (Some(from), Some(to)) = (
                pick(&targets, &count, &alive, true),
                pick(&others, &count, &alive, false),
            ) && count.get(&from).copied().unwrap_or(0)
                >= count.get(&to).copied().unwrap_or(0) + 2
            {
                targets.retain(|t| *t != from);
                dec(&mut count, &from);
                *count.entry(to.clone()).or_default() += 1;
                plan.moves.push(Move {
                    function: f.name.clone(),
                    from: Some(from.clone()),
                    to: to.clone(),
                    why: "balance",
                });
                leaving.push(from);
                targets.push(to);
                balanced += 1;
            }
        }
        // Released once every assigned node serves it.
        if !leaving.is_empty()
            && !targets.is_empty()
            && targets.iter().all(|t| {
                alive
                    .get(t.as_str())
                    .is_some_and(|n| n.serving.contains(&f.name))
            })
        {
            leaving.clear();
        }
        if targets.len() < wanted {
            plan.under_replicated.push(f.name.clone());
        }
        let next = Hosting {
            nodes: Some(targets),
            leaving,
            wanted: Some(wanted as u32),
            pinned: current.pinned,
        };
        if f.hosting.as_ref() != Some(&next) {
            plan.changes.push((f.name.clone(), Some(next)));
        }
    }
    plan
}

fn dec(count: &mut BTreeMap<String, usize>, node: &str) {
    if let Some(c) = count.get_mut(node) {
        *c = c.saturating_sub(1);
    }
}

/// The fullest (`fullest`) or emptiest of `among`, by assigned count, then load, then
/// name (so that a round is deterministic).
fn pick(
    among: &[String],
    count: &BTreeMap<String, usize>,
    alive: &BTreeMap<&str, &NodeFacts>,
    fullest: bool,
) -> Option<String> {
    let key = |n: &String| {
        let c = count.get(n).copied().unwrap_or(0);
        let load = alive.get(n.as_str()).map_or(0.0, |f| f.load);
        (c, load)
    };
    let mut sorted: Vec<&String> = among.iter().collect();
    sorted.sort_by(|a, b| {
        let (ka, kb) = (key(a), key(b));
        ka.0.cmp(&kb.0).then(ka.1.total_cmp(&kb.1)).then(a.cmp(b))
    });
    if fullest {
        sorted.last().map(|s| (*s).clone())
    } else {
        sorted.first().map(|s| (*s).clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, eligible: bool, serving: &[&str]) -> NodeFacts {
        NodeFacts {
            name: name.into(),
            eligible,
            load: 0.0,
            serving: serving.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn func(name: &str, wanted: Option<u32>, nodes: &[&str], leaving: &[&str]) -> FunctionFacts {
        FunctionFacts {
            name: name.into(),
            wanted,
            hosting: (!nodes.is_empty() || !leaving.is_empty()).then(|| Hosting {
                nodes: Some(nodes.iter().map(|s| s.to_string()).collect()),
                leaving: leaving.iter().map(|s| s.to_string()).collect(),
                wanted,
                pinned: false,
            }),
        }
    }

    fn hosting_of<'a>(p: &'a Plan, f: &str) -> Option<&'a Hosting> {
        p.changes
            .iter()
            .find(|(n, _)| n == f)
            .and_then(|(_, h)| h.as_ref())
    }

    fn assigned(h: &Hosting) -> Vec<String> {
        let mut v = h.nodes.clone().unwrap_or_default();
        v.sort();
        v
    }

    #[test]
    fn new_functions_spread_evenly_over_eligible_nodes() {
        let nodes: Vec<NodeFacts> = (1..=6).map(|i| node(&format!("n{i}"), true, &[])).collect();
        let mut functions: Vec<FunctionFacts> = (0..12)
            .map(|i| func(&format!("f{i:02}"), Some(2), &[], &[]))
            .collect();
        let p = plan(&functions, &nodes, 2);
        assert_eq!(p.changes.len(), 12);
        let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
        for (name, h) in &p.changes {
            let h = h.as_ref().unwrap();
            assert_eq!(assigned(h).len(), 2, "{name}");
            for n in assigned(h) {
                *per_node.entry(n).or_default() += 1;
            }
        }
        assert!(per_node.values().all(|&c| c == 4), "{per_node:?}");
        // Applied, the next round changes nothing.
        for f in &mut functions {
            f.hosting = hosting_of(&p, &f.name).cloned();
        }
        assert_eq!(plan(&functions, &nodes, 2), Plan::default());
    }

    #[test]
    fn a_lost_node_is_replaced_at_once_and_nothing_else_moves() {
        let nodes = vec![
            node("a", true, &["f"]),
            node("c", true, &[]),
            node("d", true, &[]),
        ];
        let functions = vec![func("f", Some(2), &["a", "b"], &[])];
        let p = plan(&functions, &nodes, 2);
        let h = hosting_of(&p, "f").unwrap();
        assert_eq!(h.nodes.as_ref().unwrap()[0], "a");
        assert_eq!(assigned(h).len(), 2);
        assert!(h.leaving.is_empty());
        assert_eq!(p.moves.len(), 1);
        assert_eq!(p.moves[0].why, "node lost");
    }

    #[test]
    fn a_drained_node_keeps_serving_until_its_replacement_does() {
        let nodes = vec![
            node("a", false, &["f"]),
            node("b", true, &["f"]),
            node("c", true, &[]),
        ];
        let functions = vec![func("f", Some(2), &["a", "b"], &[])];
        let p = plan(&functions, &nodes, 2);
        let h = hosting_of(&p, "f").unwrap().clone();
        assert_eq!(assigned(&h), vec!["b", "c"]);
        assert_eq!(h.leaving, vec!["a"]);
        assert_eq!(p.moves[0].why, "drained");
        // c does not serve yet: a stays.
        let f = vec![FunctionFacts {
            hosting: Some(h.clone()),
            ..functions[0].clone()
        }];
        assert!(plan(&f, &nodes, 2).changes.is_empty());
        // c serves: a is released.
        let nodes = vec![
            node("a", false, &["f"]),
            node("b", true, &["f"]),
            node("c", true, &["f"]),
        ];
        let p = plan(&f, &nodes, 2);
        assert!(hosting_of(&p, "f").unwrap().leaving.is_empty());
    }

    #[test]
    fn fewer_nodes_than_asked_is_under_replicated_on_all_of_them() {
        let nodes = vec![node("a", true, &[]), node("b", true, &[])];
        let p = plan(&[func("f", Some(5), &[], &[])], &nodes, 2);
        assert_eq!(assigned(hosting_of(&p, "f").unwrap()), vec!["a", "b"]);
        assert_eq!(p.under_replicated, vec!["f"]);
        // Nothing eligible at all: still recorded, still under-replicated.
        let p = plan(&[func("f", Some(1), &[], &[])], &[node("a", false, &[])], 2);
        assert_eq!(p.under_replicated, vec!["f"]);
    }

    #[test]
    fn a_joining_node_receives_functions_until_the_spread_is_even() {
        let mut nodes = vec![node("a", true, &[]), node("b", true, &[])];
        let mut functions: Vec<FunctionFacts> = (0..6)
            .map(|i| func(&format!("f{i}"), Some(1), &[], &[]))
            .collect();
        let p = plan(&functions, &nodes, 2);
        for f in &mut functions {
            f.hosting = hosting_of(&p, &f.name).cloned();
        }
        nodes.push(node("c", true, &[]));
        // Rounds until nothing changes; every move completes (the target serves).
        for _ in 0..10 {
            for n in &mut nodes {
                n.serving = functions
                    .iter()
                    .filter(|f| f.hosting.as_ref().unwrap().hosts(&n.name, false))
                    .map(|f| f.name.clone())
                    .collect();
            }
            let p = plan(&functions, &nodes, 1);
            for (name, h) in p.changes {
                functions
                    .iter_mut()
                    .find(|f| f.name == name)
                    .unwrap()
                    .hosting = h;
            }
        }
        let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
        for f in &functions {
            let h = f.hosting.as_ref().unwrap();
            assert!(h.leaving.is_empty());
            for n in assigned(h) {
                *per_node.entry(n).or_default() += 1;
            }
        }
        assert_eq!(
            per_node.values().copied().collect::<Vec<_>>(),
            vec![2, 2, 2]
        );
    }

    #[test]
    fn pinned_functions_stay_and_everywhere_functions_drop_their_record() {
        let nodes = vec![
            node("a", true, &["f"]),
            node("b", true, &[]),
            node("c", true, &[]),
        ];
        let mut f = func("f", Some(1), &["a"], &[]);
        let mut g = func("g", Some(1), &["a"], &[]);
        let mut h = func("h", Some(1), &["a"], &[]);
        for x in [&mut f, &mut g, &mut h] {
            x.hosting.as_mut().unwrap().pinned = true;
        }
        assert!(plan(&[f, g, h], &nodes, 5).changes.is_empty());
        let all = func("e", None, &["a"], &[]);
        assert_eq!(
            plan(&[all], &nodes, 5).changes,
            vec![("e".to_string(), None)]
        );
    }

    #[test]
    fn asking_for_fewer_nodes_lets_the_fullest_go_make_before_break() {
        let nodes = vec![node("a", true, &["f"]), node("b", true, &["f"])];
        let p = plan(&[func("f", Some(1), &["a", "b"], &[])], &nodes, 2);
        let h = hosting_of(&p, "f").unwrap();
        assert_eq!(assigned(h).len(), 1);
        // The one that stays serves already: the other is released at once.
        assert!(h.leaving.is_empty());
    }
}
