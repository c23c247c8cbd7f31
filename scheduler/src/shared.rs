//! The scheduler's shared state: what its listeners, its background loops and its
//! admin API all work on, and the small helpers over it.

use crate::gateway::Gateway;
use crate::live::LiveSet;
use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use skiff_core::cluster_token::ClusterToken;
use skiff_core::control::ControlStore;
use skiff_core::hosting::HostingTable;
use skiff_core::record::FunctionRecord;
use skiff_core::report::{NodeReport, NodeState};
use skiff_core::secrets::SecretKey;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The scheduler's shared state.
pub struct Scheduler {
    pub(crate) live: Arc<LiveSet>,
    pub(crate) gateway: Gateway,
    pub(crate) registry: Arc<dyn ControlStore>,
    /// The NATS client, once NATS answered and load reports are subscribed to.
    pub(crate) nats: OnceLock<async_nats::Client>,
    /// Every node heard of (name → admin URL), to probe while NATS is away.
    pub(crate) known: Mutex<BTreeMap<String, String>>,
    /// The registry's records as last listed (kept in the view).
    pub(crate) records: Mutex<Vec<FunctionRecord>>,
    pub(crate) token: Option<String>,
    /// Presented to nodes, which answer nothing else.
    pub(crate) cluster_token: Option<ClusterToken>,
    pub(crate) url: String,
    pub(crate) started: Instant,
    pub(crate) deploy_timeout: Duration,
    pub(crate) http: Client<HttpConnector, Full<Bytes>>,
    /// Serialises deploys so that route checks and version records do not interleave.
    pub(crate) deploys: tokio::sync::Mutex<()>,
    /// Seals secrets before they enter the registry.
    pub(crate) secrets_key: Option<SecretKey>,
    /// Largest component accepted for upload.
    pub(crate) max_artifact: usize,
    /// Uploads whose deploy is still on its way (spared by artifact collection).
    pub(crate) uploads: skiff_core::control::PendingUploads,
    /// How many nodes host a function whose manifest does not say (`None`: all).
    pub(crate) placement_nodes: Option<u32>,
    /// The assignment as last read, and the functions hosted on too few nodes.
    pub(crate) hosting: Mutex<(HostingTable, Vec<String>)>,
    /// Functions placed on or moved to a node since start.
    pub(crate) moves: prometheus_client::metrics::counter::Counter,
    /// Woken when a node is lost, so that its functions are placed again at once.
    pub(crate) replan: tokio::sync::Notify,
    /// The cluster's state shard count, once fixed.
    pub(crate) shards: OnceLock<skiff_core::state_keys::StateShards>,
    /// The console's live view (`/v1/stream`), fed by [`crate::stream::run`].
    pub(crate) stream: Arc<skiff_core::console::LiveHub>,
}

impl Scheduler {
    /// Whether NATS is connected and load reports flow.
    pub(crate) fn nats_connected(&self) -> bool {
        self.nats
            .get()
            .is_some_and(|c| c.connection_state() == async_nats::connection::State::Connected)
    }

    /// Remembers where `report`'s node is, to probe it while NATS is away.
    pub(crate) fn remember(&self, report: &NodeReport) {
        if report.state == NodeState::Left {
            self.forget(&report.node);
            return;
        }
        let mut known = lock(&self.known);
        if known.get(&report.node) != Some(&report.admin) {
            known.insert(report.node.clone(), report.admin.clone());
        }
    }

    /// Forgets a node that left.
    pub(crate) fn forget(&self, node: &str) {
        lock(&self.known).remove(node);
    }

    /// Every node heard of: (name, admin URL).
    pub(crate) fn known_nodes(&self) -> Vec<(String, String)> {
        lock(&self.known)
            .iter()
            .map(|(n, a)| (n.clone(), a.clone()))
            .collect()
    }

    /// The registry's records as last listed.
    pub(crate) fn set_hosting(&self, table: HostingTable, under_replicated: Vec<String>) {
        *lock(&self.hosting) = (table, under_replicated);
    }

    /// The assignment as last read, and the under-replicated functions.
    pub(crate) fn hosting_view(&self) -> (HostingTable, Vec<String>) {
        lock(&self.hosting).clone()
    }

    pub(crate) fn records(&self) -> Vec<FunctionRecord> {
        lock(&self.records).clone()
    }

    /// Keeps the registry's records as just listed.
    pub(crate) fn set_records(&self, records: Vec<FunctionRecord>) {
        *lock(&self.records) = records;
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}
