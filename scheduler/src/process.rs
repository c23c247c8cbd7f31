//! `skiff scheduler`: the cluster's front door.
//!
//! * Load reports arrive on `skiff.nodes.*` and keep a [`LiveSet`] fresh; a node not heard
//!   from for a second is dropped. While NATS is unreachable, [`crate::probe`] asks the
//!   known nodes directly instead.
//! * It starts without NATS: it routes with the last known view it keeps on disk
//!   ([`crate::view`]), answers registry calls with an error that names NATS, and joins
//!   whenever NATS answers ([`join`]).
//! * The function listener is a [`Gateway`]: route → function → node by power of two
//!   choices → proxied, with `x-skiff-node` on every answer.
//! * The admin API deploys into the cluster registry and waits until a node serves the
//!   new version, shows the cluster's status, and forwards function-level calls (state,
//!   dead letters, publishing) to a live node; logs and traces are gathered from every
//!   node.

use crate::gateway::Gateway;
use crate::live::{LiveSet, Placement};
use crate::shared::Scheduler;
use futures::StreamExt;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use skiff_core::cluster_registry::ClusterRegistry;
use skiff_core::cluster_token::ClusterToken;
use skiff_core::deferred::Deferred;
use skiff_core::deploy::route_table;
use skiff_core::nats::JoinProgress;
use skiff_core::nats_auth::NatsAuth;
use skiff_core::report::{NodeReport, NodeState, SUBJECT_PREFIX};
use skiff_core::secrets::SecretKey;
use skiff_core::serve::{ConnLimits, bind, serve, shutdown_signal};
use skiff_core::signing::RecordSigner;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
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
    /// Where the last known view is kept.
    pub data_dir: std::path::PathBuf,
    /// What it presents to NATS (credentials, TLS).
    pub nats_auth: NatsAuth,
    /// Presented to every node, which answers nothing else (`--cluster-token-file`).
    pub cluster_token: Option<ClusterToken>,
    /// Signs every record it writes into the registry (`--signing-key`).
    pub signer: Option<RecordSigner>,
    /// How many nodes host a function whose manifest does not say (`None`: all).
    pub placement_nodes: Option<u32>,
    /// The state shard count for a new cluster (refused if the cluster has another).
    pub state_shards: Option<u32>,
}

/// Runs `skiff scheduler` until Ctrl-C or SIGTERM.
pub async fn run(opts: SchedulerOptions) -> anyhow::Result<()> {
    let secrets_key = match &opts.secrets_key {
        Some(path) => Some(SecretKey::load(path)?),
        None => None,
    };
    std::fs::create_dir_all(&opts.data_dir).map_err(|e| {
        anyhow::anyhow!(
            "cannot create the scheduler's data dir `{}`: {e}; pass --data-dir",
            opts.data_dir.display()
        )
    })?;
    let (listener, admin_listener) = bind(opts.listen, opts.admin).await?;
    let (listen, admin) = (listener.local_addr()?, admin_listener.local_addr()?);
    let live = Arc::new(LiveSet::new());
    let registry = Arc::new(Deferred::new(format!(
        "the cluster registry is unreachable: NATS at {} has not answered since this scheduler started; deployed functions keep being served — retry once NATS is up",
        opts.nats
    )));
    let scheduler = Arc::new(Scheduler {
        gateway: Gateway::new(
            live.clone(),
            opts.max_body,
            opts.placement,
            opts.cluster_token.clone(),
        ),
        cluster_token: opts.cluster_token.clone(),
        live: live.clone(),
        registry: registry.clone(),
        nats: OnceLock::new(),
        known: Mutex::new(BTreeMap::new()),
        records: Mutex::new(Vec::new()),
        token: opts.token.clone(),
        url: format!("http://{listen}"),
        started: Instant::now(),
        deploy_timeout: opts.deploy_timeout,
        http: Client::builder(TokioExecutor::new()).build_http(),
        deploys: tokio::sync::Mutex::new(()),
        secrets_key,
        max_artifact: opts.max_artifact,
        uploads: Default::default(),
        placement_nodes: opts.placement_nodes,
        hosting: Default::default(),
        moves: Default::default(),
        replan: tokio::sync::Notify::new(),
        shards: OnceLock::new(),
        stream: Default::default(),
    });
    match crate::view::load(&opts.data_dir) {
        Ok(Some(view)) => {
            tracing::info!(
                nodes = view.nodes.len(),
                functions = view.records.len(),
                "routing with the last known view until NATS answers"
            );
            crate::view::restore(&scheduler, view);
        }
        Ok(None) => {}
        Err(e) => tracing::warn!(error = %e, "starting without a last known view"),
    }
    let (progress_tx, mut progress) = tokio::sync::watch::channel(JoinProgress::Connecting);
    tokio::spawn(join(
        scheduler.clone(),
        Joining {
            urls: opts.nats.clone(),
            auth: opts.nats_auth.clone(),
            replicas: opts.replicas,
            signer: opts.signer.clone(),
            state_shards: opts.state_shards,
        },
        registry,
        progress_tx,
    ));
    // A healthy NATS is joined before the scheduler says it is up; an unreachable one is not
    // waited for; one that refuses this scheduler's credentials stops it.
    skiff_core::nats::wait_for_join(&mut progress)
        .await
        .map_err(|why| anyhow::anyhow!("{why}"))?;
    tokio::spawn(follow_registered(scheduler.clone()));
    tokio::spawn(crate::rebalance::run(scheduler.clone()));
    tokio::spawn(crate::shards::run(scheduler.clone()));
    tokio::spawn(expire_silent_nodes(scheduler.clone()));
    tokio::spawn(crate::probe::run(scheduler.clone()));
    tokio::spawn(crate::stream::run(scheduler.clone()));
    tokio::spawn(crate::view::keep(scheduler.clone(), opts.data_dir.clone()));

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

/// How the scheduler joins NATS.
struct Joining {
    urls: String,
    auth: NatsAuth,
    replicas: Option<usize>,
    signer: Option<RecordSigner>,
    state_shards: Option<u32>,
}

/// Joins NATS, however long it takes: connects, opens the cluster registry, subscribes to
/// load reports, then follows them.
async fn join(
    s: Arc<Scheduler>,
    how: Joining,
    registry: Arc<Deferred>,
    progress: tokio::sync::watch::Sender<JoinProgress>,
) {
    let urls = how.urls;
    // Until it connects: routing with the last known view, probing nodes directly.
    let client =
        skiff_core::nats::connect_forever(&urls, "skiff-scheduler", &how.auth, &progress).await;
    let replicas = skiff_core::nats::replicas(&client, how.replicas);
    let js = async_nats::jetstream::new(client.clone());
    let opened = skiff_core::nats::retry_forever("open the cluster registry", || {
        ClusterRegistry::open(&js, replicas)
    })
    .await;
    registry.set(Arc::new(opened.clone().signed_by(how.signer)));
    // The state shard count is fixed once, by the first scheduler of a cluster; a flag
    // that contradicts it stops this one from starting. Any other failure is retried in
    // the background (the registry serves meanwhile).
    match opened.fix_state_shards(how.state_shards).await {
        Ok(shards) => {
            let _ = s.shards.set(shards);
        }
        Err(skiff_core::control::ControlError::Conflict(why)) => {
            progress.send_replace(JoinProgress::Refused(why));
            return;
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot fix the cluster's state shard count yet; retrying");
            let (s, want) = (s.clone(), how.state_shards);
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    match opened.fix_state_shards(want).await {
                        Ok(shards) => {
                            let _ = s.shards.set(shards);
                            return;
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, "cannot fix the state shard count yet")
                        }
                    }
                }
            });
        }
    }
    let reports = skiff_core::nats::retry_forever("subscribe to load reports", || {
        client.subscribe(format!("{SUBJECT_PREFIX}.*"))
    })
    .await;
    let _ = s.nats.set(client);
    tracing::info!(nats = %urls, "joined NATS");
    progress.send_replace(JoinProgress::Joined);
    follow_reports(reports, s.clone()).await;
}

/// Load reports in: each one refreshes its node in the live set.
async fn follow_reports(mut reports: async_nats::Subscriber, s: Arc<Scheduler>) {
    while let Some(msg) = reports.next().await {
        match serde_json::from_slice::<NodeReport>(&msg.payload) {
            Ok(r) => {
                if r.state == NodeState::Left {
                    tracing::info!(node = %r.node, "node left");
                }
                // A node stopping or gone: its functions are placed elsewhere now.
                if r.state != NodeState::Up {
                    s.replan.notify_one();
                }
                s.live.report(r, Instant::now());
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
            Ok(records) => {
                s.live.set_registered(route_table(&records, None));
                s.set_records(records);
            }
            Err(e) => tracing::debug!(error = %e, "cannot list the registry's routes now"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Drops nodes not heard from for a second: through reports while NATS is connected,
/// through direct probes while it is not; a node silent for a second is probed once more
/// before it is dropped. Each switch starts the count again.
async fn expire_silent_nodes(s: Arc<Scheduler>) {
    let mut connected = s.nats_connected();
    let mut since = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now_connected = s.nats_connected();
        if now_connected != connected {
            since = Instant::now();
            connected = now_connected;
            if connected {
                tracing::info!("NATS is back; node reports resume");
            }
        }
        let silent = s.live.silent(Instant::now(), since);
        if silent.is_empty() {
            continue;
        }
        let answers = futures::future::join_all(
            silent
                .iter()
                .map(|(node, admin)| crate::probe::probe(&s, node, admin)),
        )
        .await;
        for report in answers.into_iter().flatten() {
            s.live.report(report, Instant::now());
        }
        for node in s.live.expire(Instant::now(), Some(since)) {
            tracing::warn!(node, "node stopped answering; no longer routing to it");
            s.replan.notify_one();
        }
    }
}
