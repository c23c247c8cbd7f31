//! The `skiff` command line: server subcommands (`up`, `node`, `scheduler`) and client
//! subcommands that talk to a server's admin API (`deploy`, `ls`, `rm`, `invoke`,
//! `status`, ...). A client talks to `skiff up`'s admin API or, in a cluster, to the
//! scheduler's.

pub mod client;
mod cluster;
pub mod deploy;
mod dev;
mod events;
mod keygen;
mod kv;
mod logs;
mod new;
mod schedules;
mod secret;
mod servers;
pub mod toolchain;

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::{Args, Parser, Subcommand};
use client::AdminClient;
use http_body_util::BodyExt;
use skiff_core::api::{ClusterStatus, FunctionInfo, NodeStatus};
use skiff_core::manifest::Timeout;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

/// Skiff: run WebAssembly functions.
#[derive(Debug, Parser)]
#[command(name = "skiff", version, about, long_about = None)]
struct Cli {
    /// Admin API of the server to talk to.
    #[arg(
        long,
        global = true,
        env = "SKIFF_SERVER",
        default_value = "http://127.0.0.1:7071"
    )]
    server: String,
    /// Bearer token for the admin API (a server started with one requires it).
    #[arg(long, global = true, env = "SKIFF_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Log as JSON lines instead of human-readable text (level from RUST_LOG).
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run Skiff on this machine: one node and its front door, no external service.
    Up(servers::UpArgs),
    /// Run a cluster node: hosts the functions deployed to the cluster registry in NATS.
    Node(servers::NodeArgs),
    /// Run the cluster's scheduler: spreads invocations over the nodes by load.
    Scheduler(servers::SchedulerArgs),
    /// Build and deploy the function in PATH (a folder with skiff.toml, or the file).
    Deploy {
        /// Folder or manifest file.
        #[arg(default_value = ".")]
        path: PathBuf,
        /// Deploy the component as it is; do not run the manifest's build command.
        #[arg(long)]
        no_build: bool,
        /// In a cluster, wait until every live node that hosts the function serves the new version (not just one).
        #[arg(long)]
        wait_all: bool,
        /// In a cluster, how long to wait for nodes to serve the new version.
        #[arg(long, value_parser = Timeout::parse)]
        timeout: Option<Timeout>,
    },
    /// Write a new function project: manifest, source and README, ready to deploy.
    New(new::NewArgs),
    /// Build and deploy a function to a local Skiff (started if none answers), then
    /// rebuild and redeploy on every change and stream its logs.
    Dev(dev::DevArgs),
    /// List deployed functions.
    Ls,
    /// Remove a function; running invocations finish. Its state is kept unless purged.
    Rm {
        /// The function's name.
        name: String,
        /// Also delete every key the function stored.
        #[arg(long)]
        purge_state: bool,
    },
    /// Inspect and repair a function's key-value state.
    #[command(subcommand)]
    Kv(kv::KvCommand),
    /// Set, list and remove a function's secrets (read through wasi:config).
    #[command(subcommand)]
    Secret(secret::SecretCommand),
    /// Show what a function printed (stdout and stderr), newest last.
    Logs {
        /// The function.
        name: String,
        /// Keep following: print new lines as invocations end.
        #[arg(short = 'f', long)]
        follow: bool,
        /// How many recent lines to show first.
        #[arg(short = 'n', long, default_value_t = 100)]
        tail: usize,
    },
    /// Show the chain of invocations of a trace (id from the x-skiff-trace-id header).
    Trace {
        /// The trace id.
        id: String,
    },
    /// Publish an event, now or for later (--at, --after).
    Publish {
        /// The topic, e.g. orders.created.
        topic: String,
        /// The payload, or @FILE to read it from a file.
        data: String,
        #[command(flatten)]
        when: schedules::When,
    },
    /// List schedules (next slots, last fire and outcome), or pause and resume them.
    Schedules(schedules::SchedulesArgs),
    /// Inspect and replay events that ran out of attempts.
    #[command(subcommand, name = "dead-letters")]
    DeadLetters(events::DeadLetterCommand),
    /// Call a function over HTTP and print its answer.
    Invoke(InvokeArgs),
    /// Show the server's node, load and functions.
    Status,
    /// Make a key file for a secured cluster: signing key, NATS NKey or cluster token.
    Keygen(keygen::KeygenArgs),
    /// Move a function to another node (cluster; it stays there: balancing leaves it).
    Move {
        /// The function.
        name: String,
        /// The node to move it to.
        #[arg(long)]
        to: String,
        /// The node to move it from [default: the busiest of its nodes].
        #[arg(long)]
        from: Option<String>,
    },
    /// Move every function off a node (cluster), e.g. before stopping it for good.
    Drain {
        /// The node.
        node: String,
        /// Take the node back: it receives functions again.
        #[arg(long)]
        undo: bool,
    },
}

#[derive(Debug, Args)]
struct InvokeArgs {
    /// The function's name.
    name: String,
    /// Path below the function's route, e.g. /world.
    #[arg(long, default_value = "/")]
    path: String,
    /// HTTP method.
    #[arg(short = 'X', long = "request", default_value = "GET")]
    method: String,
    /// Request body, or @FILE to read it from a file.
    #[arg(short = 'd', long = "data")]
    data: Option<String>,
    /// Header as 'Name: value' (repeatable).
    #[arg(short = 'H', long = "header")]
    headers: Vec<String>,
}

/// Entry point of the `skiff` binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(
        cli.log_json,
        matches!(
            cli.command,
            Command::Up(_) | Command::Node(_) | Command::Scheduler(_)
        ),
    );
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(json: bool, server: bool) {
    let default = if server { "info" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let client = || AdminClient::new(&cli.server, cli.token.clone());
    match cli.command {
        Command::Up(args) => servers::up(args, cli.token.clone()).await?,
        Command::Node(args) => servers::node(args, cli.token.clone()).await?,
        Command::Scheduler(args) => servers::scheduler(args, cli.token.clone()).await?,
        Command::Deploy {
            path,
            no_build,
            wait_all,
            timeout,
        } => {
            let wait = deploy::Wait {
                all: wait_all,
                timeout: timeout.map(|t| t.0),
            };
            deploy::deploy(&client()?, &path, !no_build, wait).await?;
        }
        Command::New(args) => new::run(args)?,
        Command::Dev(args) => return dev::run(args, &cli.server, cli.token.clone()).await,
        Command::Ls => {
            let list: Vec<FunctionInfo> = client()?.get("/v1/functions").await?;
            print_functions(&list);
        }
        Command::Rm { name, purge_state } => {
            let query = if purge_state { "?purge_state=true" } else { "" };
            let answer: serde_json::Value = client()?
                .call(
                    http::Method::DELETE,
                    &format!("/v1/functions/{name}{query}"),
                    client::full(Bytes::new()),
                )
                .await?;
            match answer["keys"].as_u64() {
                Some(keys) => println!("removed {name} and purged its state ({keys} keys)"),
                None => println!(
                    "removed {name} (its state is kept; `skiff rm {name} --purge-state` deletes it)"
                ),
            }
        }
        Command::Kv(cmd) => return kv::run(&client()?, cmd).await,
        Command::Secret(cmd) => return secret::run(|| Ok(client()?), cmd).await,
        Command::Logs { name, follow, tail } => {
            return logs::run(&client()?, &name, follow, tail).await;
        }
        Command::Trace { id } => {
            let spans: Vec<skiff_core::api::Span> =
                client()?.get(&format!("/v1/traces/{id}")).await?;
            print_trace(&spans);
        }
        Command::Publish { topic, data, when } => {
            return events::publish(&client()?, &topic, &data, when.at_ms()).await;
        }
        Command::Schedules(args) => return schedules::run(&client()?, args).await,
        Command::DeadLetters(cmd) => return events::dead_letters(&client()?, cmd).await,
        Command::Status => {
            let raw: serde_json::Value = client()?.get("/v1/status").await?;
            if raw.get("nodes").is_some() {
                let s: ClusterStatus = serde_json::from_value(raw)?;
                cluster::print_status(&s);
                return Ok(ExitCode::SUCCESS);
            }
            let s: NodeStatus = serde_json::from_value(raw)?;
            println!(
                "node {} ({}) · {} · up {}s · in flight {}/{}",
                s.node, s.mode, s.url, s.uptime_secs, s.in_flight, s.capacity
            );
            print_functions(&s.functions);
        }
        Command::Invoke(args) => return invoke(&client()?, args).await,
        Command::Keygen(args) => keygen::run(args)?,
        Command::Move { name, to, from } => {
            cluster::move_function(&client()?, &name, to, from).await?
        }
        Command::Drain { node, undo } => cluster::drain(&client()?, &node, undo).await?,
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints spans as a tree by parent, children in start order.
fn print_trace(spans: &[skiff_core::api::Span]) {
    fn walk(spans: &[skiff_core::api::Span], parent: Option<&str>, depth: usize) {
        for s in spans.iter().filter(|s| s.parent.as_deref() == parent) {
            println!(
                "{}{} {}  {}  {:.1} ms  {}  [{}]",
                "  ".repeat(depth),
                s.function,
                s.trigger,
                s.outcome,
                s.duration_us as f64 / 1000.0,
                s.node,
                s.span_id
            );
            walk(spans, Some(&s.span_id), depth + 1);
        }
    }
    let ids: std::collections::HashSet<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
    // Roots: no parent, or a parent outside this node's view (an external caller).
    for root in spans
        .iter()
        .filter(|s| s.parent.as_deref().is_none_or(|p| !ids.contains(p)))
    {
        println!(
            "{} {}  {}  {:.1} ms  {}  [{}]",
            root.function,
            root.trigger,
            root.outcome,
            root.duration_us as f64 / 1000.0,
            root.node,
            root.span_id
        );
        walk(spans, Some(&root.span_id), 1);
    }
}

fn print_functions(list: &[FunctionInfo]) {
    if list.is_empty() {
        println!("no functions deployed; deploy one with `skiff deploy DIR`");
        return;
    }
    let placed = list.iter().any(|f| f.placement.is_some());
    println!(
        "{:<24} {:>7} {:<24} {:<14} {:>9}  {}URL",
        "NAME",
        "VERSION",
        "ROUTE",
        "WORLD",
        "IN-FLIGHT",
        if placed {
            "NODES                    "
        } else {
            ""
        }
    );
    for f in list {
        let world = f.world.map_or("events".to_string(), |w| w.to_string());
        let nodes = f
            .placement
            .as_ref()
            .map(|p| format!("{:<24} ", cluster::placement_text(p)))
            .unwrap_or_default();
        println!(
            "{:<24} {:>7} {:<24} {:<14} {:>9}  {nodes}{}",
            f.name, f.version, f.route, world, f.in_flight, f.url
        );
    }
}

async fn invoke(client: &AdminClient, args: InvokeArgs) -> anyhow::Result<ExitCode> {
    let info: FunctionInfo = client.get(&format!("/v1/functions/{}", args.name)).await?;
    let base = info.url.trim_end_matches('/');
    let sub = args.path.trim_start_matches('/');
    let url = if sub.is_empty() {
        info.url.clone()
    } else {
        format!("{base}/{sub}")
    };
    let body = match &args.data {
        None => Bytes::new(),
        Some(d) => match d.strip_prefix('@') {
            Some(file) => Bytes::from(
                tokio::fs::read(file)
                    .await
                    .with_context(|| format!("cannot read request body from `{file}`"))?,
            ),
            None => Bytes::from(d.clone()),
        },
    };
    let method = http::Method::from_bytes(args.method.as_bytes())
        .with_context(|| format!("`{}` is not an HTTP method", args.method))?;
    let mut req = http::Request::builder().method(method).uri(&url);
    for h in &args.headers {
        let Some((k, v)) = h.split_once(':') else {
            bail!("header `{h}` is not of the form 'Name: value'");
        };
        req = req.header(k.trim(), v.trim());
    }
    let req = req
        .body(client::full(body))
        .with_context(|| format!("cannot build a request to {url}"))?;
    let resp = client::http_client()
        .request(req)
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach {url}: {}", client::describe(&e)))?;
    let status = resp.status();
    let mut body = resp.into_body();
    let mut out = std::io::stdout().lock();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| anyhow::anyhow!("response from {url} broke off: {e}"))?;
        if let Some(data) = frame.data_ref() {
            out.write_all(data)?;
        }
    }
    out.flush()?;
    if status.is_success() {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("error: {url} answered {status}");
        Ok(ExitCode::FAILURE)
    }
}
