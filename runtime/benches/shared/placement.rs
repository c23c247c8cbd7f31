//! `cargo bench --bench skiff -- placement`: what `[placement] nodes = N` saves. Six
//! `skiff node`s, a scheduler and 3 clustered nats-servers on this machine; 12 functions
//! (copies of the counter example), each given KEYS keys of VALUE bytes through the admin
//! API; then each node's state copy — as it reports it (keys, bytes) and as its
//! `state.redb` weighs on disk — with every function on every node (before issue #17)
//! and with every function on 2 nodes.

use super::{Skiff, repo};
use std::path::Path;
use std::time::{Duration, Instant};

const NODES: usize = 6;
const FUNCTIONS: usize = 12;
const KEYS: usize = 200;
const VALUE: usize = 1024;

/// One node's state copy.
struct Kept {
    keys: u64,
    bytes: u64,
    disk: u64,
}

pub async fn placement() {
    println!("\n### state per node: 6 nodes, 12 functions × {KEYS} keys of {VALUE} B\n");
    println!(
        "| placement | functions per node | keys per node (min/avg/max) | state bytes per node (avg) | state.redb on disk per node (min/avg/max) | state.redb, all nodes |"
    );
    println!("|---|---|---|---|---|---|");
    for (label, placement) in [("every node (before)", None), ("nodes = 2", Some("2"))] {
        let dir = tempfile::tempdir().expect("tempdir");
        let nats = skiff_core::testkit::NatsCluster::start(&dir.path().join("nats"), 3)
            .expect("nats cluster");
        let urls = nats.urls();
        let mut sched_args = vec!["--nats", &urls, "--replicas", "3"];
        if let Some(n) = placement {
            sched_args.extend_from_slice(&["--placement-nodes", n]);
        }
        let sched_dir = dir.path().join("scheduler");
        let scheduler = Skiff::spawn(&["scheduler"], &sched_args, Some(&sched_dir));
        let nodes: Vec<(String, Skiff)> = (1..=NODES)
            .map(|i| {
                let name = format!("n{i}");
                let data = dir.path().join(&name);
                let node = Skiff::spawn(
                    &["node"],
                    &[
                        "--nats",
                        &urls,
                        "--name",
                        &name,
                        "--replicas",
                        "3",
                        "--release-grace",
                        "1s",
                    ],
                    Some(&data),
                );
                (name, node)
            })
            .collect();
        let wasm = repo().join("functions/target/wasm32-wasip2/release/counter.wasm");
        for f in 0..FUNCTIONS {
            let fdir = dir.path().join("fns").join(format!("f{f}"));
            std::fs::create_dir_all(&fdir).expect("mkdir");
            std::fs::write(
                fdir.join("skiff.toml"),
                format!("name = \"f{f}\"\ncomponent = \"{}\"\n", wasm.display()),
            )
            .expect("manifest");
            scheduler.deploy(&fdir);
        }
        let client = reqwest_like();
        let value = vec![b'v'; VALUE];
        for f in 0..FUNCTIONS {
            for k in 0..KEYS {
                let url = format!("{}/v1/functions/f{f}/kv/k{k}", scheduler.admin);
                put(&client, &url, value.clone()).await;
            }
        }
        // Every copy caught up, and copies of functions moved while deploying dropped:
        // each function's keys on exactly its nodes.
        let copies = placement.map_or(NODES, |n| n.parse().unwrap_or(NODES));
        let want = (FUNCTIONS * copies * KEYS) as u64;
        let kept = settle(&scheduler, &nodes, dir.path(), want).await;
        let per_node = |f: &dyn Fn(&Kept) -> u64| -> (u64, u64, u64) {
            let v: Vec<u64> = kept.iter().map(f).collect();
            let sum: u64 = v.iter().sum();
            (
                *v.iter().min().unwrap_or(&0),
                sum / v.len().max(1) as u64,
                *v.iter().max().unwrap_or(&0),
            )
        };
        let keys = per_node(&|k| k.keys);
        let bytes = per_node(&|k| k.bytes);
        let disk = per_node(&|k| k.disk);
        let total: u64 = kept.iter().map(|k| k.disk).sum();
        let fns_per_node =
            kept.iter().map(|k| k.keys).sum::<u64>() as f64 / (KEYS as f64 * kept.len() as f64);
        println!(
            "| {label} | {fns_per_node:.1} | {}/{}/{} | {:.1} MiB | {:.1}/{:.1}/{:.1} MiB | {:.1} MiB |",
            keys.0,
            keys.1,
            keys.2,
            mib(bytes.1),
            mib(disk.0),
            mib(disk.1),
            mib(disk.2),
            mib(total)
        );
        drop(nodes);
        drop(scheduler);
    }
}

fn mib(b: u64) -> f64 {
    b as f64 / (1u64 << 20) as f64
}

type Client = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    http_body_util::Full<bytes::Bytes>,
>;

fn reqwest_like() -> Client {
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http()
}

async fn put(client: &Client, url: &str, value: Vec<u8>) {
    let req = http::Request::put(url)
        .body(http_body_util::Full::new(bytes::Bytes::from(value)))
        .expect("request");
    let resp = client.request(req).await.expect("kv set");
    assert!(resp.status().is_success(), "{url}: {}", resp.status());
}

/// Waits until the nodes' reported keys add up to `want` and stop changing; answers each
/// node's copy.
async fn settle(scheduler: &Skiff, nodes: &[(String, Skiff)], dir: &Path, want: u64) -> Vec<Kept> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = Vec::new();
    loop {
        let status: serde_json::Value = {
            let client = reqwest_like();
            let req = http::Request::get(format!("{}/v1/status", scheduler.admin))
                .body(http_body_util::Full::new(bytes::Bytes::new()))
                .expect("request");
            let resp = client.request(req).await.expect("status");
            let body = http_body_util::BodyExt::collect(resp.into_body())
                .await
                .expect("body")
                .to_bytes();
            serde_json::from_slice(&body).expect("status JSON")
        };
        let now: Vec<(u64, u64)> = nodes
            .iter()
            .map(|(name, _)| {
                status["nodes"]
                    .as_array()
                    .and_then(|a| a.iter().find(|n| n["node"] == name.as_str()))
                    .and_then(|n| n["stored"].as_array())
                    .map(|s| {
                        s.iter().fold((0, 0), |(k, b), st| {
                            (
                                k + st["keys"].as_u64().unwrap_or(0),
                                b + st["bytes"].as_u64().unwrap_or(0),
                            )
                        })
                    })
                    .unwrap_or((0, 0))
            })
            .collect();
        let total: u64 = now.iter().map(|(k, _)| k).sum();
        if now == last && total == want || Instant::now() > deadline {
            return nodes
                .iter()
                .zip(now)
                .map(|((name, _), (keys, bytes))| Kept {
                    keys,
                    bytes,
                    disk: std::fs::metadata(dir.join(name).join("state.redb"))
                        .map(|m| m.len())
                        .unwrap_or(0),
                })
                .collect();
        }
        last = now;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
