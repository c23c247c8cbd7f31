//! `skiff up`: one node and its front door in one process, with no external service.
//! The control store and compiled code live under `--data-dir`; deployments come back
//! after a restart from the verified precompiled cache.

use super::admin::Admin;
use super::{listen, shutdown_signal};
use crate::engine::NodeEngine;
use crate::events::Bus;
use crate::events::embedded::EmbeddedBus;
use crate::events::nats::NatsBus;
use crate::limits::NodeLimits;
use crate::node::{Node, NodeConfig};
use crate::registry::Registry;
use crate::state::StateStore;
use anyhow::Context;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Options of `skiff up`.
#[derive(Debug, Clone)]
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
    /// Function folders to build and deploy once up.
    pub deploy: Vec<PathBuf>,
}

/// Addresses a running server actually bound.
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    /// The function listener.
    pub listen: SocketAddr,
    /// The admin API.
    pub admin: SocketAddr,
}

/// How long a stopping server waits for running invocations.
const DRAIN: Duration = Duration::from_secs(30);

/// Runs `skiff up` until Ctrl-C or SIGTERM.
pub async fn run(opts: UpOptions) -> anyhow::Result<()> {
    std::fs::create_dir_all(&opts.data_dir)
        .with_context(|| format!("cannot create data dir `{}`", opts.data_dir.display()))?;
    let registry = Arc::new(Registry::open(&opts.data_dir)?);
    let state = StateStore::open(&opts.data_dir.join("state.redb"))?;
    let bus: Arc<dyn Bus> = match &opts.nats {
        Some(url) => NatsBus::connect(url, state.clone(), 1).await?,
        None => Arc::new(EmbeddedBus::open(state.clone()).await?),
    };
    let engine = NodeEngine::new(&opts.limits, &opts.data_dir.join("compiled"))?;
    let listener = TcpListener::bind(opts.listen).await.with_context(|| {
        format!(
            "cannot listen on {} for functions; is another server using it? pick another with --listen",
            opts.listen
        )
    })?;
    let admin_listener = TcpListener::bind(opts.admin).await.with_context(|| {
        format!(
            "cannot listen on {} for the admin API; pick another with --admin",
            opts.admin
        )
    })?;
    let bound = Bound {
        listen: listener.local_addr()?,
        admin: admin_listener.local_addr()?,
    };
    let node = Arc::new(
        Node::new(
            NodeConfig {
                name: opts.name.clone(),
                mode: "embedded",
                url: format!("http://{}", bound.listen),
                limits: opts.limits.clone(),
            },
            engine,
            registry,
            state.clone(),
            bus,
        )
        .map_err(|e| anyhow::anyhow!("cannot link the host interfaces: {e:#}"))?,
    );
    let restored = node.restore().await?;

    let (stop_tx, stop_rx) = watch::channel(false);
    let serving = tokio::spawn(listen::serve(
        listener,
        node.clone(),
        opts.limits.clone(),
        stop_rx.clone(),
    ));
    let admin = Arc::new(Admin::new(node.clone(), opts.token.clone()));
    let admin_serving = tokio::spawn(admin.serve(admin_listener, stop_rx));

    // Tests and scripts read this line to learn the ports (useful with port 0).
    println!(
        "skiff is up: functions on http://{} · admin on http://{} · {restored} function(s) restored from {}",
        bound.listen,
        bound.admin,
        opts.data_dir.display()
    );

    let admin_url = format!("http://{}", bound.admin);
    for dir in &opts.deploy {
        let client = crate::cli::client::AdminClient::new(&admin_url, opts.token.clone())?;
        if let Err(e) = crate::cli::deploy::deploy(&client, dir, true).await {
            eprintln!("error: cannot deploy {}: {e:#}", dir.display());
        }
    }

    shutdown_signal().await;
    tracing::info!("stopping: no new connections; waiting for running invocations");
    let _ = stop_tx.send(true);
    if !node.drain(DRAIN).await {
        tracing::warn!("invocations still running after {DRAIN:?}; stopping anyway");
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), serving).await;
    let _ = tokio::time::timeout(Duration::from_secs(1), admin_serving).await;
    Ok(())
}
