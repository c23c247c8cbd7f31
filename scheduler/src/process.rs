//! `skiff scheduler`: the cluster's front door.
//!
//! * Load reports arrive on `skiff.nodes.*` and keep a [`LiveSet`] fresh; a node not heard
//!   from for a second is dropped, except while NATS itself is unreachable, when the last
//!   view keeps routing.
//! * The function listener is a [`Gateway`]: route → function → node by power of two
//!   choices → proxied, with `x-skiff-node` on every answer.
//! * The admin API deploys into the cluster registry and waits until a node serves the
//!   new version, shows the cluster's status, and forwards function-level calls (state,
//!   dead letters, publishing) to a live node; logs and traces are gathered from every
//!   node.

use crate::gateway::Gateway;
use crate::live::{LiveSet, Placement};
use bytes::Bytes;
use futures::StreamExt;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use skiff_core::cluster_registry::ClusterRegistry;
use skiff_core::control::ControlStore;
use skiff_core::deploy::route_table;
use skiff_core::report::{NodeReport, NodeState, SUBJECT_PREFIX};
use skiff_core::secrets::SecretKey;
use skiff_core::serve::{ConnLimits, bind, serve, shutdown_signal};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Options of `skiff scheduler`.
#[derive(Debug, Clone)]
pub struct SchedulerOptions {
    /// NATS URL(s).
    pub nats: String,
    /// Address of the function listener.
    pub listen: SocketAddr,
    /// Address of the admin API.
    pub admin: SocketAddr,
    /// Bearer token the admin API requires (and forwards to nodes), if any.
    pub token: Option<String>,
    /// Largest request body forwarded.
    pub max_body: u64,
    /// How long a deploy waits for a node to serve the new version.
    pub deploy_timeout: Duration,
    /// How requests are placed on nodes.
    pub placement: Placement,
    /// Replicas of the streams it creates (default: the NATS cluster's size).
    pub replicas: Option<usize>,
    /// The secrets key file shared with the nodes (without it, secrets cannot be set).
    pub secrets_key: Option<std::path::PathBuf>,
    /// Largest component accepted for upload.
    pub max_artifact: usize,
}

/// The scheduler's shared state.
pub struct Scheduler {
    pub(crate) live: Arc<LiveSet>,
    pub(crate) gateway: Gateway,
    pub(crate) registry: Arc<dyn ControlStore>,
    pub(crate) token: Option<String>,
    pub(crate) url: String,
    pub(crate) started: Instant,
    pub(crate) deploy_timeout: Duration,
    pub(crate) http: Client<HttpConnector, Full<Bytes>>,
    /// Serialises deploys so that route checks and version records do not interleave.
    pub(crate) deploys: tokio::sync::Mutex<()>,
    /// When reports could last start flowing (NATS connected); `None` while disconnected.
    pub(crate) heard_since: Mutex<Option<Instant>>,
    /// Seals secrets before they enter the registry.
    pub(crate) secrets_key: Option<SecretKey>,
    /// Largest component accepted for upload.
    pub(crate) max_artifact: usize,
    /// Uploads whose deploy is still on its way (spared by artifact collection).
    pub(crate) uploads: skiff_core::control::PendingUploads,
}

/// Runs `skiff scheduler` until Ctrl-C or SIGTERM.
pub async fn run(opts: SchedulerOptions) -> anyhow::Result<()> {
    let secrets_key = match &opts.secrets_key {
        Some(path) => Some(SecretKey::load(path)?),
        None => None,
    };
    let client = skiff_core::nats::connect(&opts.nats, "skiff-scheduler").await?;
    let replicas = skiff_core::nats::replicas(&client, opts.replicas);
    let js = async_nats::jetstream::new(client.clone());
    let registry = skiff_core::nats::until_ready("open the cluster registry", || {
        ClusterRegistry::open(&js, replicas)
    })
    .await?;
    let reports = client
        .subscribe(format!("{SUBJECT_PREFIX}.*"))
        .await
        .map_err(|e| anyhow::anyhow!("cannot subscribe to load reports: {e}"))?;
    let (listener, admin_listener) = bind(opts.listen, opts.admin).await?;
    let (listen, admin) = (listener.local_addr()?, admin_listener.local_addr()?);
    let live = Arc::new(LiveSet::new());
    let scheduler = Arc::new(Scheduler {
        gateway: Gateway::new(live.clone(), opts.max_body, opts.placement),
        live: live.clone(),
        registry: Arc::new(registry),
        token: opts.token.clone(),
        url: format!("http://{listen}"),
        started: Instant::now(),
        deploy_timeout: opts.deploy_timeout,
        http: Client::builder(TokioExecutor::new()).build_http(),
        deploys: tokio::sync::Mutex::new(()),
        heard_since: Mutex::new(Some(Instant::now())),
        secrets_key,
        max_artifact: opts.max_artifact,
        uploads: Default::default(),
    });
    tokio::spawn(follow_reports(reports, live));
    tokio::spawn(follow_registered(scheduler.clone()));
    tokio::spawn(expire_silent_nodes(scheduler.clone(), client));

    let (stop_tx, stop_rx) = watch::channel(false);
    let gateway = scheduler.clone();
    let serving = tokio::spawn(serve(
        listener,
        ConnLimits::default(),
        stop_rx.clone(),
        move |req| {
            let s = gateway.clone();
            async move { s.gateway.handle(req).await }
        },
    ));
    let admin_side = scheduler.clone();
    let admin_serving = tokio::spawn(serve(
        admin_listener,
        ConnLimits::default(),
        stop_rx,
        move |req| {
            let s = admin_side.clone();
            async move { s.handle(req).await }
        },
    ));
    println!(
        "skiff is up: functions on http://{listen} · admin on http://{admin} · scheduler over NATS at {}",
        opts.nats
    );
    shutdown_signal().await;
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), serving).await;
    let _ = tokio::time::timeout(Duration::from_secs(1), admin_serving).await;
    Ok(())
}

/// Load reports in: each one refreshes its node in the live set.
async fn follow_reports(mut reports: async_nats::Subscriber, live: Arc<LiveSet>) {
    while let Some(msg) = reports.next().await {
        match serde_json::from_slice::<NodeReport>(&msg.payload) {
            Ok(r) => {
                if r.state == NodeState::Left {
                    tracing::info!(node = %r.node, "node left");
                }
                live.report(r, Instant::now());
            }
            Err(e) => {
                tracing::warn!(subject = %msg.subject, error = %e, "unreadable load report")
            }
        }
    }
}

/// The registry's routes, every second, so that a function no live node serves answers
/// 503 rather than 404.
async fn follow_registered(s: Arc<Scheduler>) {
    loop {
        match s.registry.records().await {
            Ok(records) => s.live.set_registered(route_table(&records, None)),
            Err(e) => tracing::debug!(error = %e, "cannot list the registry's routes now"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Drops nodes that stopped reporting; paused while NATS itself is away, so that the last
/// known nodes keep serving.
async fn expire_silent_nodes(s: Arc<Scheduler>, client: async_nats::Client) {
    let mut connected = true;
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now_connected = client.connection_state() == async_nats::connection::State::Connected;
        let since = {
            let mut h = match s.heard_since.lock() {
                Ok(h) => h,
                Err(p) => p.into_inner(),
            };
            if now_connected && !connected {
                tracing::info!("NATS is back; node reports resume");
                *h = Some(Instant::now());
            } else if !now_connected && connected {
                tracing::warn!("NATS unreachable; routing with the last known nodes");
                *h = None;
            }
            *h
        };
        connected = now_connected;
        for node in s.live.expire(Instant::now(), since) {
            tracing::warn!(node, "node stopped reporting; no longer routing to it");
        }
    }
}
