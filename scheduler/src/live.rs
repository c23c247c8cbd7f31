//! The live set: every node heard from recently, its last report, and the requests this
//! scheduler has outstanding on it. Feeds placement.

use crate::placement::Load;
use skiff_core::report::{EXPIRE_AFTER_MS, NodeReport, NodeState};
use skiff_core::routes::{Route, RouteTable};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// One node as the scheduler sees it.
#[derive(Debug)]
pub struct LiveNode {
    /// Its last report.
    pub report: NodeReport,
    /// When that report arrived.
    pub seen: Instant,
    /// Not to be picked before this instant (it refused a connection).
    pub avoid_until: Option<Instant>,
    /// Requests this scheduler has sent it that have not finished.
    pub outstanding: Arc<AtomicU32>,
    /// Requests this scheduler has sent it since it joined.
    pub sent: Arc<AtomicU64>,
    /// Dropped with the node when it leaves the live set: requests it still holds stop
    /// waiting for it (see [`Target::gone`]).
    gone: tokio::sync::watch::Sender<()>,
}

impl LiveNode {
    fn load(&self, now: Instant) -> Load {
        let outstanding = self.outstanding.load(Ordering::Relaxed);
        Load {
            in_flight: self.report.in_flight.max(outstanding),
            capacity: self.report.capacity,
            latency_us: self.report.latency_us,
            accepting: self.report.state == NodeState::Up
                && self.avoid_until.is_none_or(|t| now >= t),
        }
    }
}

/// How the scheduler chooses among nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Placement {
    /// Power of two choices over the load score (the default).
    #[default]
    PowerOfTwo,
    /// Each node in turn, ignoring load: the baseline placement is measured against.
    RoundRobin,
}

/// A node picked for one request.
#[derive(Debug, Clone)]
pub struct Target {
    /// Its name.
    pub node: String,
    /// Its function listener's base URL.
    pub url: String,
    /// Its outstanding counter, to hold while the request runs.
    pub outstanding: Arc<AtomicU32>,
    /// Its sent counter.
    pub sent: Arc<AtomicU64>,
    /// Closes when the node leaves the live set (it stopped reporting or left): a request
    /// still waiting for it then fails instead of hanging on a cut-off link.
    pub gone: tokio::sync::watch::Receiver<()>,
}

/// Why no node could be picked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoTarget {
    /// The function exists but no live node serving it takes work; carries its name.
    NoNode(String),
}

/// The live set of one scheduler.
#[derive(Debug, Default)]
pub struct LiveSet {
    nodes: RwLock<BTreeMap<String, LiveNode>>,
    /// Rebuilt whenever a report changes which functions and routes exist.
    routes: RwLock<Arc<RouteTable<String>>>,
    /// Routes of every function in the registry, served or not, so that a function no
    /// live node serves answers 503 rather than 404.
    registered: RwLock<Arc<RouteTable<String>>>,
}

fn fingerprint(r: &NodeReport) -> Vec<(String, u64, String)> {
    r.functions
        .iter()
        .map(|f| (f.name.clone(), f.version, f.route.clone()))
        .collect()
}

impl LiveSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes a report: adds the node, refreshes it, or drops it when it has left. A report
    /// older (by `seq`) than the one held is ignored.
    pub fn report(&self, report: NodeReport, now: Instant) {
        let mut nodes = match self.nodes.write() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let routes_changed;
        if report.state == NodeState::Left {
            routes_changed = nodes.remove(&report.node).is_some();
        } else if let Some(n) = nodes.get_mut(&report.node) {
            if report.seq <= n.report.seq && report.url == n.report.url {
                return;
            }
            routes_changed = fingerprint(&n.report) != fingerprint(&report);
            n.report = report;
            n.seen = now;
            n.avoid_until = None;
        } else {
            routes_changed = true;
            nodes.insert(
                report.node.clone(),
                LiveNode {
                    report,
                    seen: now,
                    avoid_until: None,
                    outstanding: Arc::new(AtomicU32::new(0)),
                    sent: Arc::new(AtomicU64::new(0)),
                    gone: tokio::sync::watch::channel(()).0,
                },
            );
        }
        if routes_changed {
            self.rebuild_routes(&nodes);
        }
    }

    /// The nodes not heard from within [`EXPIRE_AFTER_MS`] of `now`, counting only time
    /// since `since`: (name, admin URL), to probe before they are dropped.
    pub fn silent(&self, now: Instant, since: Instant) -> Vec<(String, String)> {
        let limit = Duration::from_millis(EXPIRE_AFTER_MS);
        let nodes = match self.nodes.read() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        nodes
            .values()
            .filter(|n| now.saturating_duration_since(n.seen.max(since)) > limit)
            .map(|n| (n.report.node.clone(), n.report.admin.clone()))
            .collect()
    }

    /// Drops nodes not heard from within [`EXPIRE_AFTER_MS`] of `now`, counting only time
    /// since `heard_since` (when reports could last flow: NATS reconnected). While NATS is
    /// down, pass `None`: nothing expires and routing keeps its last view. Returns the
    /// names dropped.
    pub fn expire(&self, now: Instant, heard_since: Option<Instant>) -> Vec<String> {
        let Some(since) = heard_since else {
            return Vec::new();
        };
        let limit = Duration::from_millis(EXPIRE_AFTER_MS);
        let mut nodes = match self.nodes.write() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let dead: Vec<String> = nodes
            .iter()
            .filter(|(_, n)| now.saturating_duration_since(n.seen.max(since)) > limit)
            .map(|(k, _)| k.clone())
            .collect();
        for d in &dead {
            nodes.remove(d);
        }
        if !dead.is_empty() {
            self.rebuild_routes(&nodes);
        }
        dead
    }

    /// Keeps `node` out of placement for `for_how_long` (it refused a connection); its next
    /// report lets it back in.
    pub fn avoid(&self, node: &str, now: Instant, for_how_long: Duration) {
        let mut nodes = match self.nodes.write() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if let Some(n) = nodes.get_mut(node) {
            n.avoid_until = Some(now + for_how_long);
        }
    }

    fn rebuild_routes(&self, nodes: &BTreeMap<String, LiveNode>) {
        // The newest version of each function decides its route.
        let mut newest: BTreeMap<&str, (u64, &str)> = BTreeMap::new();
        for n in nodes.values() {
            for f in &n.report.functions {
                let e = newest.entry(&f.name).or_insert((f.version, &f.route));
                if f.version > e.0 {
                    *e = (f.version, &f.route);
                }
            }
        }
        let mut table = RouteTable::new();
        for (name, (_, route)) in newest {
            if route.is_empty() {
                continue;
            }
            match Route::parse(route) {
                Ok(r) => {
                    if let Err(e) = table.insert(&r, name.to_string()) {
                        tracing::warn!(function = name, error = %e, "route conflict between nodes' reports; the first one keeps it");
                    }
                }
                Err(e) => {
                    tracing::warn!(function = name, error = %e, "a node reported a bad route")
                }
            }
        }
        let mut routes = match self.routes.write() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        *routes = Arc::new(table);
    }

    /// The function that serves `path`, if any: as live nodes report it, else as the
    /// registry has it.
    pub fn function_for(&self, path: &str) -> Option<String> {
        let read = |t: &RwLock<Arc<RouteTable<String>>>| match t.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        };
        read(&self.routes)
            .lookup(path)
            .cloned()
            .or_else(|| read(&self.registered).lookup(path).cloned())
    }

    /// Sets the routes of every registered function (see
    /// [`skiff_core::deploy::route_table`]).
    pub fn set_registered(&self, table: RouteTable<String>) {
        let mut g = match self.registered.write() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        *g = Arc::new(table);
    }

    /// Picks a node for `function` by `placement`, leaving out `tried`. `r1` and `r2` are
    /// random numbers (round robin uses `r1` as its turn).
    pub fn pick(
        &self,
        function: &str,
        tried: &[String],
        now: Instant,
        placement: Placement,
        r1: u64,
        r2: u64,
    ) -> Result<Target, NoTarget> {
        let nodes = match self.nodes.read() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let mut candidates: Vec<&LiveNode> = nodes
            .values()
            .filter(|n| n.report.functions.iter().any(|f| f.name == function))
            .filter(|n| !tried.contains(&n.report.node))
            .collect();
        // A node cut off from NATS serves reads but fails writes: prefer the others.
        if candidates.iter().any(|n| n.report.nats) {
            candidates.retain(|n| n.report.nats);
        }
        let loads: Vec<Load> = candidates.iter().map(|n| n.load(now)).collect();
        let chosen = match placement {
            Placement::PowerOfTwo => crate::placement::pick(&loads, r1, r2),
            Placement::RoundRobin => crate::placement::round_robin(&loads, r1),
        };
        match chosen {
            Some(i) => {
                let n = candidates[i];
                Ok(Target {
                    node: n.report.node.clone(),
                    url: n.report.url.clone(),
                    outstanding: n.outstanding.clone(),
                    sent: n.sent.clone(),
                    gone: n.gone.subscribe(),
                })
            }
            None => Err(NoTarget::NoNode(function.to_string())),
        }
    }

    /// Every live node's last report, with how long ago it came and the requests this
    /// scheduler sent it.
    pub fn snapshot(&self, now: Instant) -> Vec<(NodeReport, Duration, u64)> {
        let nodes = match self.nodes.read() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        nodes
            .values()
            .map(|n| {
                (
                    n.report.clone(),
                    now.saturating_duration_since(n.seen),
                    n.sent.load(Ordering::Relaxed),
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_core::report::Served;

    fn report(
        node: &str,
        seq: u64,
        state: NodeState,
        functions: &[(&str, u64, &str)],
    ) -> NodeReport {
        NodeReport {
            node: node.into(),
            url: format!("http://{node}"),
            admin: format!("http://{node}-admin"),
            state,
            in_flight: 0,
            capacity: 10,
            queue: 0,
            latency_us: 0,
            memory_bytes: 0,
            uptime_secs: 0,
            functions: functions
                .iter()
                .map(|(n, v, r)| Served {
                    name: n.to_string(),
                    version: *v,
                    route: r.to_string(),
                })
                .collect(),
            failed: vec![],
            stored: vec![],
            seq,
            nats: true,
            live: None,
        }
    }

    #[test]
    fn routes_follow_reports_and_nodes_expire_only_while_reports_can_flow() {
        let set = LiveSet::new();
        let t0 = Instant::now();
        set.report(
            report("a", 1, NodeState::Up, &[("hello", 1, "/hello/...")]),
            t0,
        );
        set.report(
            report("b", 1, NodeState::Up, &[("hello", 2, "/hi/...")]),
            t0,
        );
        // The newest version's route wins.
        assert_eq!(set.function_for("/hi/x").as_deref(), Some("hello"));
        assert_eq!(set.function_for("/hello/x"), None);
        // A registered function no node serves is still known (503, not 404).
        let mut registered = RouteTable::new();
        registered
            .insert(&Route::parse("/other/...").unwrap(), "other".to_string())
            .unwrap();
        set.set_registered(registered);
        assert_eq!(set.function_for("/other/x").as_deref(), Some("other"));
        let later = t0 + Duration::from_millis(EXPIRE_AFTER_MS + 500);
        // NATS down: nothing expires.
        assert!(set.expire(later, None).is_empty());
        // NATS back only just now: nothing expires yet.
        assert!(set.expire(later, Some(later)).is_empty());
        // Reports could flow all along: both expire.
        assert_eq!(set.expire(later, Some(t0)), vec!["a", "b"]);
        assert_eq!(set.function_for("/hi/x"), None);
    }

    #[test]
    fn draining_left_and_avoided_nodes_are_not_picked() {
        let set = LiveSet::new();
        let t0 = Instant::now();
        set.report(report("a", 1, NodeState::Up, &[("f", 1, "/f/...")]), t0);
        set.report(
            report("b", 1, NodeState::Draining, &[("f", 1, "/f/...")]),
            t0,
        );
        for r in 0..10 {
            assert_eq!(
                set.pick("f", &[], t0, Placement::PowerOfTwo, r, r * 7)
                    .unwrap()
                    .node,
                "a"
            );
        }
        set.avoid("a", t0, Duration::from_secs(1));
        assert_eq!(
            set.pick("f", &[], t0, Placement::PowerOfTwo, 0, 0)
                .unwrap_err(),
            NoTarget::NoNode("f".into())
        );
        // A newer report lets it back.
        set.report(report("a", 2, NodeState::Up, &[("f", 1, "/f/...")]), t0);
        assert_eq!(
            set.pick("f", &[], t0, Placement::PowerOfTwo, 0, 0)
                .unwrap()
                .node,
            "a"
        );
        // Already tried: nothing else to pick.
        assert!(
            set.pick("f", &["a".to_string()], t0, Placement::PowerOfTwo, 0, 0)
                .is_err()
        );
        // A stale report does not overwrite a newer one.
        set.report(
            report("a", 1, NodeState::Draining, &[("f", 1, "/f/...")]),
            t0,
        );
        assert_eq!(
            set.pick("f", &[], t0, Placement::PowerOfTwo, 0, 0)
                .unwrap()
                .node,
            "a"
        );
        set.report(report("a", 3, NodeState::Left, &[]), t0);
        assert!(set.snapshot(t0).iter().all(|(r, _, _)| r.node != "a"));
    }

    #[test]
    fn outstanding_requests_count_before_the_next_report() {
        let set = LiveSet::new();
        let t0 = Instant::now();
        set.report(report("a", 1, NodeState::Up, &[("f", 1, "/f/...")]), t0);
        set.report(report("b", 1, NodeState::Up, &[("f", 1, "/f/...")]), t0);
        let a = set
            .pick("f", &["b".into()], t0, Placement::PowerOfTwo, 0, 0)
            .unwrap();
        a.outstanding.fetch_add(5, Ordering::Relaxed);
        for r1 in 0..8 {
            for r2 in 0..8 {
                assert_eq!(
                    set.pick("f", &[], t0, Placement::PowerOfTwo, r1, r2)
                        .unwrap()
                        .node,
                    "b"
                );
            }
        }
    }
}
