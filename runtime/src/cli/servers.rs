//! The server subcommands: `skiff up`, `skiff node` and `skiff scheduler`, their flags,
//! and how they become the options of the node and the scheduler.

use super::client::AdminClient;
use super::deploy;
use crate::server::embedded::{self, UpOptions};
use anyhow::bail;
use clap::Args;
use skiff_core::cluster_token::ClusterToken;
use skiff_core::instances::InstanceMaxima;
use skiff_core::limits::NodeLimits;
use skiff_core::manifest::{Size, Timeout};
use skiff_core::nats_auth::NatsAuth;
use skiff_core::signing::{RecordSigner, RecordVerifier};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Args)]
pub(super) struct UpArgs {
    /// Address for function traffic.
    #[arg(long, default_value = "127.0.0.1:7070")]
    listen: SocketAddr,
    /// Address for the admin API, /healthz and /metrics.
    #[arg(long, default_value = "127.0.0.1:7071")]
    admin: SocketAddr,
    /// Where deployments, artifacts and compiled code live.
    #[arg(long, default_value = ".skiff")]
    data_dir: PathBuf,
    /// The node's name (unique in a cluster) [default: `local` for up, the host name for
    /// node].
    #[arg(long)]
    name: Option<String>,
    /// NATS URL (or comma-separated URLs of a cluster's servers). Required by `node`;
    /// with `up`, events go through JetStream instead of the embedded bus.
    #[arg(long, env = "SKIFF_NATS")]
    nats: Option<String>,
    #[command(flatten)]
    nats_auth: NatsAuthArgs,
    /// Replicas of the JetStream streams and buckets this process creates, if they do not
    /// exist yet [default: the NATS cluster's size, at most 3].
    #[arg(long, env = "SKIFF_REPLICAS")]
    replicas: Option<usize>,
    /// Also export every invocation's span to this OpenTelemetry collector (OTLP over
    /// HTTP, JSON), e.g. http://127.0.0.1:4318.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
    /// Build and deploy this function folder once up (repeatable).
    #[arg(long = "deploy", value_name = "DIR")]
    deploy: Vec<PathBuf>,
    /// The key file functions' secrets are sealed with (64 hex digits; the same file on
    /// every node and the scheduler of a cluster) [default: DATA_DIR/secrets.key, made on
    /// first start].
    #[arg(long, env = "SKIFF_SECRETS_KEY", value_name = "FILE")]
    secrets_key: Option<PathBuf>,
    /// Invocations running at once on this node.
    #[arg(long, default_value_t = NodeLimits::default().node_concurrency)]
    max_concurrency: u32,
    /// Largest request head (request line + headers) accepted; larger answers 431.
    #[arg(long, default_value = "32KiB", value_parser = Size::parse)]
    max_header_bytes: Size,
    /// How long a client may take to send its request head.
    #[arg(long, default_value = "10s", value_parser = Timeout::parse)]
    header_read_timeout: Timeout,
    /// The most memory any function may ask for.
    #[arg(long, default_value = "1GiB", value_parser = Size::parse)]
    max_memory: Size,
    /// The longest timeout any function may ask for.
    #[arg(long, default_value = "5m", value_parser = Timeout::parse)]
    max_timeout: Timeout,
    /// The largest request body any function may accept.
    #[arg(long, default_value = "100MiB", value_parser = Size::parse)]
    max_body: Size,
    /// The largest component the admin API accepts for upload (refused before it is
    /// read whole, let alone compiled).
    #[arg(long, default_value = "50MiB", value_parser = Size::parse)]
    max_artifact: Size,
    /// Components kept loaded in memory at once; the least recently used is dropped and
    /// loads again (from the precompiled cache) when next called.
    #[arg(long, default_value_t = NodeLimits::default().code_cache)]
    code_cache: usize,
    /// The most requests one instance may serve (`[instances] reuse`).
    #[arg(long, default_value_t = InstanceMaxima::default().reuse)]
    max_instance_reuse: u32,
    /// The most requests one instance may serve at once (`[instances] concurrency`).
    #[arg(long, default_value_t = InstanceMaxima::default().concurrency)]
    max_instance_concurrency: u32,
    /// The longest an unused instance may be kept (`[instances] idle`).
    #[arg(long, default_value = "60s", value_parser = Timeout::parse)]
    max_instance_idle: Timeout,
    /// How long published event ids are remembered, so that a retried publish is not
    /// delivered twice (with NATS: the event stream's duplicate window).
    #[arg(long, default_value = "2h", value_parser = Timeout::parse)]
    dedup_window_events: Timeout,
    /// How long the first answer of a key-value write made under an idempotency key (an
    /// event handler's write) is kept, so that a redelivery answers it again instead of
    /// writing twice (with NATS: the state stream's duplicate window).
    #[arg(long, default_value = "2h", value_parser = Timeout::parse)]
    dedup_window_state: Timeout,
    /// The fastest a function's `[[schedule]]` may fire.
    #[arg(long, default_value = "1s", value_parser = Timeout::parse)]
    min_schedule_interval: Timeout,
    /// The furthest ahead an event may be published for later (`publish_at`,
    /// `skiff publish --at/--after`).
    #[arg(long, default_value = "30days", value_parser = Timeout::parse)]
    max_event_delay: Timeout,
}

/// How a process authenticates to NATS and verifies it: every secret comes from a file.
#[derive(Debug, Args)]
pub(super) struct NatsAuthArgs {
    /// A NATS credentials file (JWT and NKey seed, as `nsc generate creds` writes).
    #[arg(long, env = "SKIFF_NATS_CREDS", value_name = "FILE")]
    nats_creds: Option<PathBuf>,
    /// A file holding an NKey user seed (`SU...`; `skiff keygen --nats FILE` makes one).
    #[arg(long, env = "SKIFF_NATS_NKEY", value_name = "FILE")]
    nats_nkey: Option<PathBuf>,
    /// A file holding `user:password` on its first line.
    #[arg(long, env = "SKIFF_NATS_USER_FILE", value_name = "FILE")]
    nats_user_file: Option<PathBuf>,
    /// The CA certificate (PEM) the NATS servers' certificates chain to; given, the
    /// connection must be TLS.
    #[arg(long, env = "SKIFF_NATS_TLS_CA", value_name = "FILE")]
    nats_tls_ca: Option<PathBuf>,
    /// This process's client certificate (PEM), for NATS servers that verify clients.
    #[arg(long, env = "SKIFF_NATS_TLS_CERT", value_name = "FILE")]
    nats_tls_cert: Option<PathBuf>,
    /// The key (PEM) of --nats-tls-cert.
    #[arg(long, env = "SKIFF_NATS_TLS_KEY", value_name = "FILE")]
    nats_tls_key: Option<PathBuf>,
}

impl NatsAuthArgs {
    fn auth(self) -> anyhow::Result<NatsAuth> {
        let auth = NatsAuth {
            creds: self.nats_creds,
            nkey: self.nats_nkey,
            user_file: self.nats_user_file,
            tls_ca: self.nats_tls_ca,
            tls_cert: self.nats_tls_cert,
            tls_key: self.nats_tls_key,
        };
        auth.check()?;
        Ok(auth)
    }
}

#[derive(Debug, Args)]
pub(super) struct NodeArgs {
    #[command(flatten)]
    base: UpArgs,
    /// Host (or host:port) the scheduler reaches this node at, when the listen address is
    /// not reachable as it is (e.g. 0.0.0.0).
    #[arg(long, env = "SKIFF_ADVERTISE")]
    advertise: Option<String>,
    /// A file holding the token the scheduler presents (the same file as the scheduler's);
    /// given, the node answers function traffic and admin calls only when they carry it
    /// (`/healthz` stays open).
    #[arg(long, env = "SKIFF_CLUSTER_TOKEN_FILE", value_name = "FILE")]
    cluster_token_file: Option<PathBuf>,
    /// The scheduler's public signing key (64 hex digits, or a file holding them); given,
    /// the node runs only records signed with its pair (`skiff keygen --signing`).
    #[arg(long, env = "SKIFF_TRUST", value_name = "KEY")]
    trust: Option<String>,
    /// How long the state copy of a function moved off this node is kept before it is
    /// deleted (a function that comes back within it resumes from its copy).
    #[arg(long, default_value = "60s", value_parser = Timeout::parse)]
    release_grace: Timeout,
}

#[derive(Debug, Args)]
pub(super) struct SchedulerArgs {
    /// NATS URL, or comma-separated URLs of the cluster's servers.
    #[arg(long, env = "SKIFF_NATS")]
    nats: String,
    /// Address for function traffic.
    #[arg(long, default_value = "127.0.0.1:7070")]
    listen: SocketAddr,
    /// Address for the admin API, /healthz and /metrics.
    #[arg(long, default_value = "127.0.0.1:7071")]
    admin: SocketAddr,
    /// The largest request body forwarded to a node.
    #[arg(long, default_value = "100MiB", value_parser = Size::parse)]
    max_body: Size,
    /// How long a deploy waits for a node to serve the new version, unless it asks.
    #[arg(long, default_value = "60s", value_parser = Timeout::parse)]
    deploy_timeout: Timeout,
    /// How requests are spread: `p2c` (power of two choices by load) or `round-robin`
    /// (ignores load; for comparison).
    #[arg(long, default_value = "p2c", value_parser = ["p2c", "round-robin"])]
    placement: String,
    /// How many nodes host a function whose manifest has no `[placement] nodes`
    /// [default: every node].
    #[arg(long, env = "SKIFF_PLACEMENT_NODES", value_parser = clap::value_parser!(u32).range(1..))]
    placement_nodes: Option<u32>,
    /// How many JetStream streams the cluster's state is split across; fixed when the
    /// cluster is created [default: what the cluster has, or 3 for a new one].
    #[arg(long, env = "SKIFF_STATE_SHARDS", value_parser = clap::value_parser!(u32).range(1..=64))]
    state_shards: Option<u32>,
    /// Replicas of the JetStream streams and buckets it creates, if they do not exist yet
    /// [default: the NATS cluster's size, at most 3].
    #[arg(long, env = "SKIFF_REPLICAS")]
    replicas: Option<usize>,
    /// The key file functions' secrets are sealed with: the same file as every node's
    /// `--secrets-key` (without it, secrets cannot be set through this scheduler).
    #[arg(long, env = "SKIFF_SECRETS_KEY", value_name = "FILE")]
    secrets_key: Option<PathBuf>,
    /// The largest component accepted for upload.
    #[arg(long, default_value = "50MiB", value_parser = Size::parse)]
    max_artifact: Size,
    /// Where the scheduler keeps its last known view of nodes and functions, to route
    /// with when it starts while NATS is unreachable.
    #[arg(long, default_value = ".skiff-scheduler")]
    data_dir: PathBuf,
    #[command(flatten)]
    nats_auth: NatsAuthArgs,
    /// A file holding the token presented to every node (the same file as the nodes').
    #[arg(long, env = "SKIFF_CLUSTER_TOKEN_FILE", value_name = "FILE")]
    cluster_token_file: Option<PathBuf>,
    /// The Ed25519 key (64 hex digits) every function record is signed with; nodes
    /// started with --trust run only signed records (`skiff keygen --signing`).
    #[arg(long, env = "SKIFF_SIGNING_KEY", value_name = "FILE")]
    signing_key: Option<PathBuf>,
}

impl UpArgs {
    fn options(self, token: Option<String>, cluster: bool) -> anyhow::Result<UpOptions> {
        let defaults = NodeLimits::default();
        let mut limits = NodeLimits {
            node_concurrency: self.max_concurrency.max(1),
            max_header_bytes: usize::try_from(self.max_header_bytes.0).unwrap_or(usize::MAX),
            header_read_timeout: self.header_read_timeout.0,
            max_artifact_bytes: usize::try_from(self.max_artifact.0).unwrap_or(usize::MAX),
            code_cache: self.code_cache.max(1),
            instances: InstanceMaxima {
                reuse: self.max_instance_reuse.max(1),
                concurrency: self.max_instance_concurrency.max(1),
                idle: self.max_instance_idle.0,
            },
            dedup: skiff_core::limits::DedupWindows {
                events: self.dedup_window_events.0,
                state: self.dedup_window_state.0,
            },
            timers: skiff_core::limits::TimerLimits {
                min_interval: self.min_schedule_interval.0,
                max_delay: self.max_event_delay.0,
                ..Default::default()
            },
            ..defaults
        };
        limits.max.memory = self.max_memory.0;
        limits.max.timeout = self.max_timeout.0;
        limits.max.body = self.max_body.0;
        limits.defaults.memory = limits.defaults.memory.min(limits.max.memory);
        limits.defaults.timeout = limits.defaults.timeout.min(limits.max.timeout);
        limits.defaults.body = limits.defaults.body.min(limits.max.body);
        let name = self.name.unwrap_or_else(|| {
            if cluster {
                host_name()
            } else {
                "local".to_string()
            }
        });
        Ok(UpOptions {
            nats_auth: self.nats_auth.auth()?,
            cluster_token: None,
            trust: None,
            listen: self.listen,
            admin: self.admin,
            data_dir: self.data_dir,
            token,
            limits,
            name,
            nats: self.nats,
            ready: None,
            cluster,
            advertise: None,
            otlp: self.otlp_endpoint,
            replicas: self.replicas,
            secrets_key: self.secrets_key,
            release_grace: Duration::from_secs(60),
        })
    }
}

/// This machine's name, for a node started without `--name`.
fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "node".to_string())
}

/// `skiff up`: the embedded node; `--deploy DIR` deploys once it is up, through the admin
/// API like any client.
pub(super) async fn up(args: UpArgs, token: Option<String>) -> anyhow::Result<()> {
    let dirs = args.deploy.clone();
    let mut opts = args.options(token.clone(), false)?;
    let (ready, bound) = tokio::sync::oneshot::channel();
    opts.ready = Some(ready);
    tokio::spawn(async move {
        let Ok(bound) = bound.await else { return };
        let admin = format!("http://{}", bound.admin);
        for dir in dirs {
            let result = match AdminClient::new(&admin, token.clone()) {
                Ok(c) => deploy::deploy(&c, &dir, true, Default::default())
                    .await
                    .map(drop),
                Err(e) => Err(e.into()),
            };
            if let Err(e) = result {
                eprintln!("error: cannot deploy {}: {e:#}", dir.display());
            }
        }
    });
    embedded::run(opts).await
}

/// `skiff node`: a cluster node.
pub(super) async fn node(args: NodeArgs, token: Option<String>) -> anyhow::Result<()> {
    if !args.base.deploy.is_empty() {
        bail!(
            "a cluster node takes its functions from the cluster registry; deploy through the scheduler: `skiff deploy DIR --server http://SCHEDULER:7071`"
        );
    }
    let mut opts = args.base.options(token, true)?;
    opts.advertise = args.advertise;
    opts.release_grace = args.release_grace.0;
    opts.cluster_token = args
        .cluster_token_file
        .as_deref()
        .map(ClusterToken::load)
        .transpose()?;
    opts.trust = args
        .trust
        .as_deref()
        .map(RecordVerifier::parse)
        .transpose()?;
    if opts.trust.is_none() {
        tracing::warn!(
            "no --trust: this node runs any record in the cluster registry, signed or not; pass the scheduler's public signing key"
        );
    }
    if opts.cluster_token.is_none() {
        tracing::warn!(
            "no --cluster-token-file: this node answers anyone who reaches its ports, not only the scheduler"
        );
    }
    embedded::run(opts).await
}

/// `skiff scheduler`: the cluster's front door.
pub(super) async fn scheduler(args: SchedulerArgs, token: Option<String>) -> anyhow::Result<()> {
    skiff_scheduler::run(skiff_scheduler::SchedulerOptions {
        nats: args.nats,
        listen: args.listen,
        admin: args.admin,
        token,
        max_body: args.max_body.0,
        deploy_timeout: args.deploy_timeout.0,
        replicas: args.replicas,
        secrets_key: args.secrets_key,
        max_artifact: usize::try_from(args.max_artifact.0).unwrap_or(usize::MAX),
        data_dir: args.data_dir,
        nats_auth: args.nats_auth.auth()?,
        cluster_token: args
            .cluster_token_file
            .as_deref()
            .map(ClusterToken::load)
            .transpose()?,
        signer: match &args.signing_key {
            Some(path) => Some(RecordSigner::load(path)?),
            None => {
                tracing::warn!(
                    "no --signing-key: records go unsigned, and nodes started with --trust refuse them"
                );
                None
            }
        },
        placement_nodes: args.placement_nodes,
        state_shards: args.state_shards,
        placement: if args.placement == "round-robin" {
            skiff_scheduler::live::Placement::RoundRobin
        } else {
            skiff_scheduler::live::Placement::PowerOfTwo
        },
    })
    .await
}
