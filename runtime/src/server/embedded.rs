//! `skiff up` and `skiff node`: a node with its function listener and admin API.
//!
//! * `skiff up` (embedded): one node and its front door in one process, with no external
//!   service. Deploys arrive through its admin API.
//! * `skiff node --nats URL` (cluster): the same node, but deploys come from the cluster
//!   registry ([`crate::cluster::sync`]), events and load reports go through NATS, and a
//!   stop drains: the node reports `draining`, keeps serving what the scheduler still
//!   sends for a moment, finishes running work, then reports `left`.
//!
//! The control store and compiled code live under `--data-dir`; deployments come back
//! after a restart from the verified precompiled cache, before NATS is even asked. A node
//! started while NATS is unreachable serves those functions at once (within
//! [`skiff_core::nats::CONNECT_GRACE`] when its packets go nowhere): state
//! reads answer from its copy (possibly stale), writes and event deliveries wait, and it
//! joins the cluster whenever NATS answers ([`join`]).

use super::admin::Admin;
use crate::cluster::reporter::Reporter;
use crate::engine::NodeEngine;
use crate::events::Bus;
use crate::events::embedded::EmbeddedBus;
use crate::events::nats::NatsBus;
use crate::localdb::LocalDb;
use crate::node::{Lifecycle, Node, NodeConfig};
use crate::registry::Registry;
use crate::state::{LocalState, Replica, ReplicatedState, StateBackend};
use crate::triggers::events::{EventInvoker, EventTriggers};
use anyhow::Context;
use skiff_core::cluster_registry::ClusterRegistry;
use skiff_core::cluster_token::ClusterToken;
use skiff_core::control::ControlStore;
use skiff_core::limits::NodeLimits;
use skiff_core::nats::JoinProgress as Progress;
use skiff_core::nats_auth::NatsAuth;
use skiff_core::serve::{bind, shutdown_signal};
use skiff_core::signing::RecordVerifier;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Options of `skiff up`.
#[derive(Debug)]
pub struct UpOptions {
    /// Address of the function listener (port 0 picks a free port).
    pub listen: SocketAddr,
    /// Address of the admin API.
    pub admin: SocketAddr,
    /// Where state lives.
    pub data_dir: PathBuf,
    /// Bearer token the admin API requires, if any.
    pub token: Option<String>,
    /// Limits and maxima.
    pub limits: NodeLimits,
    /// The node's name.
    pub name: String,
    /// NATS URL(s) for the event bus; the embedded bus when absent.
    pub nats: Option<String>,
    /// Told the bound addresses once the node serves (and has printed its "up" line).
    pub ready: Option<tokio::sync::oneshot::Sender<Bound>>,
    /// Run as a cluster node (`skiff node`): requires `nats`.
    pub cluster: bool,
    /// Where to export spans (OTLP/HTTP), if anywhere.
    pub otlp: Option<String>,
    /// Replicas of the streams this process creates (default: the NATS cluster's size).
    pub replicas: Option<usize>,
    /// The host (or host:port) the scheduler reaches this node at, when the bound address
    /// is not reachable as it is (e.g. bound to 0.0.0.0).
    pub advertise: Option<String>,
    /// The secrets key file (default: `<data_dir>/secrets.key`, made if absent).
    pub secrets_key: Option<PathBuf>,
    /// What this process presents to NATS (credentials, TLS).
    pub nats_auth: NatsAuth,
    /// A cluster node answers only requests carrying this token (the scheduler's).
    pub cluster_token: Option<ClusterToken>,
    /// A cluster node runs only records signed by this key's pair.
    pub trust: Option<RecordVerifier>,
    /// How long a cluster node keeps the state copy of a function it no longer hosts.
    pub release_grace: Duration,
}

/// Addresses a running server actually bound.
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    /// The function listener.
    pub listen: SocketAddr,
    /// The admin API.
    pub admin: SocketAddr,
}

/// How long a draining cluster node keeps accepting requests after it reported draining:
/// a few report intervals, so that the scheduler has certainly stopped sending.
const DRAIN_NOTICE: Duration = Duration::from_millis(600);

/// How long a stopping server waits for running invocations.
const DRAIN: Duration = Duration::from_secs(30);

/// The stores a node runs on, as the options choose them: the only place that names
/// concrete implementations.
struct Stores {
    control: Arc<dyn ControlStore>,
    state: Arc<dyn StateBackend>,
    bus: Arc<dyn Bus>,
    /// With NATS: what joins it once it answers.
    nats: Option<Joining>,
}

/// The NATS-backed parts, built before NATS answered, to join it in the background.
struct Joining {
    url: String,
    bus: Arc<NatsBus>,
    /// Cluster mode: the replicated state to attach to the cluster's log.
    replicated: Option<Arc<ReplicatedState>>,
}

/// What joining NATS brought.
struct Joined {
    client: async_nats::Client,
    /// Cluster mode: the cluster registry.
    registry: Option<Arc<dyn ControlStore>>,
    /// Cluster mode: the replicated state, attached now or once a scheduler fixed the
    /// shard count (a brand-new cluster).
    state: Option<Arc<ReplicatedState>>,
}

/// Opens the local stores and the NATS-backed ones, which work from this node's disk
/// until [`join`] reaches NATS: nothing here waits for the network.
async fn open_stores(opts: &UpOptions) -> anyhow::Result<Stores> {
    let control: Arc<dyn ControlStore> = Arc::new(Registry::open(&opts.data_dir)?);
    let db = LocalDb::open(&opts.data_dir.join("state.redb"))?;
    let dedup = opts.limits.dedup;
    let local = LocalState::open_with(
        db.clone(),
        dedup.state,
        crate::state::local::JOURNAL_SWEEP_EVERY,
    )
    .await?;
    let Some(url) = &opts.nats else {
        if opts.cluster {
            anyhow::bail!(
                "a cluster node needs NATS: pass --nats nats://HOST:4222 (or set SKIFF_NATS)"
            );
        }
        let bus = Arc::new(EmbeddedBus::open(db, dedup.events).await?);
        // Schedules fire from this node's redb; the task ends with the bus.
        tokio::spawn(crate::events::embedded::run_timers(Arc::downgrade(&bus)));
        return Ok(Stores {
            control,
            state: local,
            bus,
            nats: None,
        });
    };
    let bus = NatsBus::offline(db).await?;
    // State goes through the replicated log; this node applies the part of the
    // functions it hosts.
    let replicated = opts
        .cluster
        .then(|| ReplicatedState::offline(local.clone(), opts.release_grace));
    let state: Arc<dyn StateBackend> = match &replicated {
        Some(r) => r.clone(),
        None => local.clone(),
    };
    Ok(Stores {
        control,
        state,
        bus: bus.clone(),
        nats: Some(Joining {
            url: url.clone(),
            bus,
            replicated,
        }),
    })
}

/// Joins NATS, however long it takes: connects, then sets up the event stream and, in
/// cluster mode, the registry and the state log (which this node then follows). Until
/// then the node serves its last known functions from its own store: state reads may be
/// stale, and writes fail. `progress` is told how far it got.
async fn join(joining: Joining, opts: JoinOptions, progress: watch::Sender<Progress>) -> Joined {
    let client =
        skiff_core::nats::connect_forever(&joining.url, &opts.name, &opts.auth, &progress).await;
    let replicas = skiff_core::nats::replicas(&client, opts.replicas);
    let dedup = opts.dedup;
    skiff_core::nats::retry_forever("set up the event stream", || {
        joining.bus.attach(client.clone(), replicas, dedup.events)
    })
    .await;
    let mut registry: Option<Arc<dyn ControlStore>> = None;
    if let Some(replicated) = &joining.replicated {
        let js = async_nats::jetstream::new(client.clone());
        let opened = skiff_core::nats::retry_forever("open the cluster registry", || {
            ClusterRegistry::open(&js, replicas)
        })
        .await;
        // The shard count is fixed by the first scheduler. A cluster that has one attaches
        // now (so that restored functions catch up before serving); a brand-new one, with
        // no function yet, attaches once a scheduler has joined.
        let attach = {
            let (registry, replicated, js) = (opened.clone(), replicated.clone(), js.clone());
            async move {
                let shards = state_shards(&registry).await;
                let replica = skiff_core::nats::retry_forever("open the state streams", || {
                    Replica::open(js.clone(), shards, replicas, dedup.state)
                })
                .await;
                replicated.attach(replica);
            }
        };
        if matches!(opened.state_shards().await, Ok(Some(_))) {
            attach.await;
        } else {
            tokio::spawn(attach);
        }
        registry = Some(Arc::new(opened));
    }
    tracing::info!(nats = %joining.url, "joined NATS");
    progress.send_replace(Progress::Joined);
    Joined {
        client,
        registry,
        state: joining.replicated.clone(),
    }
}

/// What [`join`] needs of the options.
struct JoinOptions {
    name: String,
    auth: NatsAuth,
    replicas: Option<usize>,
    dedup: skiff_core::limits::DedupWindows,
}

/// How many shards the cluster's state is split across, once a scheduler has fixed it
/// (nodes may not write the registry): asked every 250 ms until it answers.
async fn state_shards(registry: &ClusterRegistry) -> skiff_core::state_keys::StateShards {
    let mut said = String::new();
    loop {
        let why = match registry.state_shards().await {
            Ok(Some(shards)) => return shards,
            Ok(None) => "no scheduler has joined this cluster yet to fix how many shards its state is split across; start `skiff scheduler --nats URL`".to_string(),
            Err(e) => e.to_string(),
        };
        if why != said {
            tracing::warn!("{why}; waiting");
            said = why;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Cluster mode, once NATS answered: follows the registry and publishes load reports.
fn follow_cluster(
    node: &Arc<Node>,
    joined: Joined,
    reporter: Option<&Reporter>,
    trust: Option<RecordVerifier>,
) {
    if let Some(registry) = joined.registry {
        let (node, state) = (node.clone(), joined.state);
        tokio::spawn(async move {
            // Functions are taken from the registry only once writes can reach the state
            // log: a function served before would refuse every write.
            if let Some(state) = state {
                state.until_attached().await;
            }
            crate::cluster::sync::run(node, registry, trust).await
        });
    }
    if let Some(reporter) = reporter {
        reporter.attach(joined.client);
    }
}

/// A cluster node's reporter: the URLs the scheduler reaches it at.
fn reporter(node: &Arc<Node>, bound: Bound, advertise: Option<&str>) -> Arc<Reporter> {
    let host = |addr: SocketAddr| match advertise {
        Some(h) if h.contains(':') => format!("http://{h}"),
        Some(h) => format!("http://{h}:{}", addr.port()),
        None => format!("http://{addr}"),
    };
    let admin = match advertise {
        Some(h) if !h.contains(':') => format!("http://{h}:{}", bound.admin.port()),
        _ => format!("http://{}", bound.admin),
    };
    Arc::new(Reporter::new(node.clone(), host(bound.listen), admin))
}

/// Runs `skiff up` until Ctrl-C or SIGTERM.
pub async fn run(mut opts: UpOptions) -> anyhow::Result<()> {
    std::fs::create_dir_all(&opts.data_dir)
        .with_context(|| format!("cannot create data dir `{}`", opts.data_dir.display()))?;
    let stores = open_stores(&opts).await?;
    let engine = NodeEngine::new(&opts.limits, &opts.data_dir.join("compiled"))?;
    let (listener, admin_listener) = bind(opts.listen, opts.admin).await?;
    let bound = Bound {
        listen: listener.local_addr()?,
        admin: admin_listener.local_addr()?,
    };
    let secrets_key = match &opts.secrets_key {
        Some(path) => skiff_core::secrets::SecretKey::load(path)?,
        None => skiff_core::secrets::SecretKey::load_or_create(
            &opts.data_dir.join(skiff_core::secrets::KEY_FILE),
        )?,
    };
    let node = Arc::new(
        Node::new(
            NodeConfig {
                name: opts.name.clone(),
                mode: if opts.cluster { "cluster" } else { "embedded" },
                url: format!("http://{}", bound.listen),
                limits: opts.limits.clone(),
                admin: Some(bound.admin),
                secrets_key: Some(Arc::new(secrets_key)),
                data_dir: Some(opts.data_dir.clone()),
            },
            engine,
            stores.control,
            stores.state,
            stores.bus,
        )
        .map_err(|e| anyhow::anyhow!("cannot link the host interfaces: {e:#}"))?,
    );
    let reporter = opts
        .cluster
        .then(|| reporter(&node, bound, opts.advertise.as_deref()));
    // NATS is joined in the background. If it answers at once, a cluster node catches up
    // with the state log before it serves; if not, it serves what it has and joins later.
    let mut joined = None;
    if let Some(joining) = stores.nats {
        let (progress_tx, mut progress) = watch::channel(Progress::Connecting);
        let join_opts = JoinOptions {
            name: opts.name.clone(),
            auth: opts.nats_auth.clone(),
            replicas: opts.replicas,
            dedup: opts.limits.dedup,
        };
        let mut joining = tokio::spawn(join(joining, join_opts, progress_tx));
        let now = skiff_core::nats::wait_for_join(&mut progress)
            .await
            .map_err(|why| anyhow::anyhow!("{why}"))?;
        if now {
            // Restoring hosts each function again, which waits until its state copy has
            // caught up with its shard.
            joined = Some((&mut joining).await.context("joining NATS failed")?);
        } else {
            let (node, reporter, trust) = (node.clone(), reporter.clone(), opts.trust.clone());
            tokio::spawn(async move {
                if let Ok(done) = joining.await {
                    follow_cluster(&node, done, reporter.as_deref(), trust);
                }
            });
        }
    }
    let invoker: Arc<dyn EventInvoker> = node.clone();
    node.set_hook(EventTriggers::new(
        Arc::downgrade(&invoker),
        node.bus().clone(),
    ));
    let restored = node.restore().await?;
    if let Some(endpoint) = &opts.otlp {
        node.traces()
            .export_to(crate::otlp::start(endpoint, &opts.name)?);
    }

    let (stop_tx, stop_rx) = watch::channel(false);
    let serving = tokio::spawn(crate::triggers::http::serve(
        listener,
        node.clone(),
        opts.limits.clone(),
        opts.cluster_token.clone(),
        stop_rx.clone(),
    ));
    let mut admin =
        Admin::new(node.clone(), opts.token.clone()).with_cluster_token(opts.cluster_token.clone());
    if let Some(reporter) = &reporter {
        admin = admin.with_reporter(reporter.clone());
        reporter.send_live(admin.live());
        tokio::spawn(reporter.clone().run());
    }
    tokio::spawn(super::live::run(node.clone(), admin.live()));
    let admin_serving = tokio::spawn(Arc::new(admin).serve(admin_listener, stop_rx));
    if let Some(done) = joined {
        follow_cluster(&node, done, reporter.as_deref(), opts.trust.clone());
    }

    // Tests and scripts read this line to learn the ports (useful with port 0).
    println!(
        "skiff is up: functions on http://{} · admin on http://{} · {restored} function(s) restored from {}",
        bound.listen,
        bound.admin,
        opts.data_dir.display()
    );
    if let Some(ready) = opts.ready.take() {
        let _ = ready.send(bound);
    }

    shutdown_signal().await;
    if let Some(reporter) = &reporter {
        // Tell the scheduler first, and keep serving what it sent before it heard.
        node.set_lifecycle(Lifecycle::Draining);
        reporter.publish().await;
        tracing::info!("draining: the scheduler sends no new work");
        tokio::time::sleep(DRAIN_NOTICE).await;
    }
    tracing::info!("stopping: no new connections; waiting for running invocations");
    let _ = stop_tx.send(true);
    if !node.drain(DRAIN).await {
        tracing::warn!("invocations still running after {DRAIN:?}; stopping anyway");
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), serving).await;
    let _ = tokio::time::timeout(Duration::from_secs(1), admin_serving).await;
    if let Some(reporter) = &reporter {
        node.set_lifecycle(Lifecycle::Left);
        reporter.publish().await;
        tracing::info!("left the cluster");
    }
    Ok(())
}
