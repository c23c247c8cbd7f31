//! `cargo bench --bench skiff -- schedules`: how late a schedule fires and a delayed
//! event arrives, with nothing else running. `every = "1s"` for 20 s and 10 events
//! published 1 s ahead, through the ticker test guest (it records, per slot and per
//! event, when its handler started); on `skiff up` (redb timers), on a cluster (3
//! clustered nats-servers, 3 nodes and a scheduler: NATS message schedules), and — the
//! limit — a tokio timer in this process that sleeps until each slot.

use super::{Skiff, repo};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const SECONDS: u64 = 20;
const DELAYED: usize = 10;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

type Client = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    http_body_util::Full<bytes::Bytes>,
>;

async fn call(client: &Client, method: http::Method, url: &str) -> (u16, String) {
    let req = http::Request::builder()
        .method(method)
        .uri(url)
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .expect("request");
    let resp = client.request(req).await.expect("request");
    let status = resp.status().as_u16();
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .expect("body")
        .to_bytes();
    (status, String::from_utf8_lossy(&body).to_string())
}

/// The ticker's kv under `prefix`: key → value.
async fn kv(client: &Client, admin: &str, prefix: &str) -> BTreeMap<String, String> {
    let (_, page) = call(
        client,
        http::Method::GET,
        &format!("{admin}/v1/functions/ticker/kv?prefix={prefix}"),
    )
    .await;
    let page: serde_json::Value = serde_json::from_str(&page).expect("key page");
    let mut out = BTreeMap::new();
    for key in page["keys"].as_array().into_iter().flatten() {
        let key = key.as_str().unwrap_or_default().to_string();
        let url = format!("{admin}/v1/functions/ticker/kv/{key}?consistent=true");
        let (status, value) = call(client, http::Method::GET, &url).await;
        if status == 200 {
            out.insert(key, value);
        }
    }
    out
}

/// p50, p99 and max of `v` (ms).
fn spread(mut v: Vec<u64>) -> String {
    if v.is_empty() {
        return "none | - | -".to_string();
    }
    v.sort_unstable();
    let at = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
    format!("{} ms | {} ms | {} ms", at(0.5), at(0.99), v[v.len() - 1])
}

/// Fires and delayed events through `front` (admin API of `skiff up` or the scheduler).
async fn measure(front: &Skiff, fns: &Path) -> (usize, Vec<u64>, Vec<u64>) {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http();
    let dir = fns.join("ticker");
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(
        dir.join("skiff.toml"),
        format!(
            "name = \"ticker\"\ncomponent = \"{}\"\n[[events]]\ntopic = \"delayed.ticker\"\n[[schedule]]\nevery = \"1s\"\n",
            repo()
                .join("tests/guests/target/wasm32-wasip2/release/ticker.wasm")
                .display()
        ),
    )
    .expect("manifest");
    front.deploy(&dir);
    // The first fire may find a node still starting: measure from the one after it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let from = now_ms();
    let mut due = Vec::new();
    for i in 0..DELAYED {
        let at = now_ms() + 1_000;
        let url = format!("{}/v1/events/delayed.ticker?at_ms={at}", front.admin);
        let req = http::Request::post(&url)
            .body(http_body_util::Full::new(bytes::Bytes::from(format!(
                "e{i}"
            ))))
            .expect("request");
        let resp = client.request(req).await.expect("publish");
        assert!(resp.status().is_success(), "publish: {}", resp.status());
        due.push(at);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    tokio::time::sleep(Duration::from_millis(
        (from + SECONDS * 1000).saturating_sub(now_ms()) + 2_000,
    ))
    .await;
    let late: Vec<u64> = kv(&client, &front.admin, "late/0/")
        .await
        .into_iter()
        .filter(|(k, _)| {
            k.rsplit('/')
                .next()
                .and_then(|s| s.parse::<u64>().ok())
                .is_some_and(|s| s >= from && s < from + SECONDS * 1000)
        })
        .filter_map(|(_, v)| v.parse().ok())
        .collect();
    let got = kv(&client, &front.admin, "got/").await;
    let delayed: Vec<u64> = (0..DELAYED)
        .filter_map(|i| {
            let at: u64 = got.get(&format!("got/e{i}"))?.parse().ok()?;
            Some(at.saturating_sub(due[i]))
        })
        .collect();
    (late.len(), late, delayed)
}

pub async fn schedules() {
    println!(
        "\n### schedules: `every = \"1s\"` for {SECONDS} s, {DELAYED} events published 1 s ahead, no other load\n"
    );
    println!(
        "| where | fires | fire lateness p50 | p99 | max | delayed events | arrival after due p50 | p99 | max |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    // The limit: a timer in this process, sleeping until each slot.
    let mut limit = Vec::new();
    for _ in 0..SECONDS {
        let slot = now_ms() / 1000 * 1000 + 1000;
        let wait = slot.saturating_sub(now_ms());
        tokio::time::sleep(Duration::from_millis(wait)).await;
        limit.push(now_ms() - slot);
    }
    println!(
        "| tokio timer in this process (the limit) | {SECONDS} | {} | - | - | - | - |",
        spread(limit)
    );
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let up = Skiff::spawn(&["up"], &[], Some(&dir.path().join("up")));
        let (n, fires, delayed) = measure(&up, &dir.path().join("fns-up")).await;
        println!(
            "| `skiff up` (redb timers) | {n} | {} | {} | {} |",
            spread(fires),
            delayed.len(),
            spread(delayed)
        );
    }
    let nats =
        skiff_core::testkit::NatsCluster::start(&dir.path().join("nats"), 3).expect("nats cluster");
    let urls = nats.urls();
    let scheduler = Skiff::spawn(
        &["scheduler"],
        &["--nats", &urls, "--replicas", "3"],
        Some(&dir.path().join("scheduler")),
    );
    let _nodes: Vec<Skiff> = (1..=3)
        .map(|i| {
            let name = format!("n{i}");
            Skiff::spawn(
                &["node"],
                &["--nats", &urls, "--name", &name, "--replicas", "3"],
                Some(&dir.path().join(&name)),
            )
        })
        .collect();
    let (n, fires, delayed) = measure(&scheduler, &dir.path().join("fns-cluster")).await;
    println!(
        "| cluster: 3 nats-servers (R3), 3 nodes (NATS message schedules) | {n} | {} | {} | {} |",
        spread(fires),
        delayed.len(),
        spread(delayed)
    );
}
