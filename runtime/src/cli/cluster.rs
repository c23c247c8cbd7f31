//! The cluster's face in the CLI: `skiff status` against a scheduler (nodes, what each
//! hosts and the state it keeps, the state shards and their leaders), `skiff move` and
//! `skiff drain`.

use super::client::{self, AdminClient};
use bytes::Bytes;
use skiff_core::api::{ClusterStatus, MoveRequest, PlacementInfo};

/// A function's placement in a few words: `all`, `2: n1,n2`, with what is moving.
pub(super) fn placement_text(p: &PlacementInfo) -> String {
    let mut s = match p.wanted {
        None => "all".to_string(),
        Some(n) => format!("{n}: {}", p.assigned.join(",")),
    };
    if !p.leaving.is_empty() {
        s.push_str(&format!(" (leaving {})", p.leaving.join(",")));
    }
    if p.pinned {
        s.push_str(" pinned");
    }
    if p.under_replicated {
        s.push_str(" UNDER-REPLICATED");
    }
    s
}

fn size(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 => format!("{:.1}GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1}MiB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1}KiB", b as f64 / 1024.0),
        b => format!("{b}B"),
    }
}

/// `skiff status` against a scheduler.
pub(super) fn print_status(s: &ClusterStatus) {
    println!(
        "scheduler · {} · up {}s · {} live node(s)",
        s.url,
        s.uptime_secs,
        s.nodes.len()
    );
    if s.nodes.is_empty() {
        println!("no live node; start one with `skiff node --nats URL`");
    } else {
        println!(
            "{:<16} {:<9} {:>9} {:>7} {:>10} {:>9} {:>8}  FUNCTIONS",
            "NODE", "STATE", "IN-FLIGHT", "QUEUE", "LATENCY", "MEMORY", "SENT"
        );
    }
    for n in &s.nodes {
        let r = &n.report;
        let functions: Vec<String> = r
            .functions
            .iter()
            .map(|f| format!("{} v{}", f.name, f.version))
            .chain(
                r.failed
                    .iter()
                    .map(|f| format!("{} v{} FAILED", f.name, f.version)),
            )
            .collect();
        let state = if s.drained.contains(&r.node) {
            "drained".to_string()
        } else {
            format!("{:?}", r.state).to_lowercase()
        };
        println!(
            "{:<16} {:<9} {:>9} {:>7} {:>8.1}ms {:>7}Mi {:>8}  {}",
            r.node,
            state,
            format!("{}/{}", r.in_flight, r.capacity),
            r.queue,
            r.latency_us as f64 / 1000.0,
            r.memory_bytes >> 20,
            n.sent,
            functions.join(", ")
        );
    }
    for n in &s.nodes {
        for f in &n.report.failed {
            println!(
                "  {}: {} v{} FAILED: {}",
                n.report.node, f.name, f.version, f.error
            );
        }
    }
    if s.nodes.iter().any(|n| !n.report.stored.is_empty()) {
        println!();
        println!("{:<16} STATE KEPT (function keys/size)", "NODE");
        for n in &s.nodes {
            let kept: Vec<String> = n
                .report
                .stored
                .iter()
                .map(|st| format!("{} {}/{}", st.function, st.keys, size(st.bytes)))
                .collect();
            println!("{:<16} {}", n.report.node, kept.join(", "));
        }
    }
    if !s.shards.is_empty() {
        println!();
        let shards: Vec<String> = s
            .shards
            .iter()
            .map(|sh| {
                format!(
                    "{} led by {}",
                    sh.stream,
                    sh.leader.as_deref().unwrap_or("nobody (electing)")
                )
            })
            .collect();
        println!("state shards: {}", shards.join(" · "));
    }
    println!();
    super::print_functions(&s.functions);
}

/// `skiff move NAME --to NODE [--from NODE]`.
pub(super) async fn move_function(
    client: &AdminClient,
    name: &str,
    to: String,
    from: Option<String>,
) -> anyhow::Result<()> {
    let body = serde_json::to_vec(&MoveRequest {
        to: to.clone(),
        from,
    })?;
    let info: skiff_core::api::FunctionInfo = client
        .call(
            http::Method::POST,
            &format!("/v1/functions/{name}/move"),
            client::full(Bytes::from(body)),
        )
        .await?;
    let placed = info
        .placement
        .as_ref()
        .map(placement_text)
        .unwrap_or_default();
    println!("moved {name} to {to}; it runs on {placed}");
    Ok(())
}

/// `skiff drain NODE [--undo]`.
pub(super) async fn drain(client: &AdminClient, node: &str, undo: bool) -> anyhow::Result<()> {
    let verb = if undo { "undrain" } else { "drain" };
    let answer: serde_json::Value = client
        .call(
            http::Method::POST,
            &format!("/v1/nodes/{node}/{verb}"),
            client::full(Bytes::new()),
        )
        .await?;
    if undo {
        println!("{node} takes functions again");
    } else {
        let moved: Vec<String> = answer["moved"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let moved = if moved.is_empty() {
            "nothing".to_string()
        } else {
            moved.join(", ")
        };
        println!("drained {node}: {moved} moved off it; `skiff drain {node} --undo` takes it back");
    }
    Ok(())
}
