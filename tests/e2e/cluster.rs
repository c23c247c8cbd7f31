//! Cluster mode end to end: real clustered nats-servers, `skiff node` processes and a
//! `skiff scheduler` on loopback, driven over real sockets.

use crate::harness::*;
use skiff_core::testkit::{NatsCluster, NatsServer};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub use crate::gate::one_at_a_time;

/// 3 clustered nats-servers, N nodes, 1 scheduler.
pub struct Cluster {
    pub tmp: tempfile::TempDir,
    pub nats: NatsCluster,
    pub nodes: Vec<Skiff>,
    pub scheduler: Skiff,
}

impl Cluster {
    pub fn start(nodes: usize) -> Cluster {
        let tmp = tempfile::tempdir().unwrap();
        let nats = NatsCluster::start(tmp.path(), 3).expect("nats cluster");
        let urls = nats.urls();
        let nodes = (1..=nodes)
            .map(|i| node(tmp.path(), &urls, &format!("n{i}"), &["--replicas", "3"]))
            .collect();
        let scheduler = Skiff::scheduler(&urls, &["--replicas", "3"]);
        Cluster {
            tmp,
            nats,
            nodes,
            scheduler,
        }
    }

    pub fn add_node(&mut self, name: &str) -> Instant {
        self.nodes
            .push(node(self.tmp.path(), &self.nats.urls(), name, &[]));
        Instant::now()
    }

    /// Deploys a function folder through the scheduler and waits until every node serves
    /// it; returns the CLI's output.
    pub fn deploy(&self, dir: &Path) -> String {
        self.scheduler
            .cli_ok(&["deploy", dir.to_str().unwrap(), "--no-build", "--wait-all"])
    }

    /// Deploys an example function and waits until every node serves it.
    pub fn deploy_example(&self, name: &str) -> String {
        let dir = repo().join("functions").join(name);
        self.scheduler
            .cli_ok(&["deploy", dir.to_str().unwrap(), "--no-build", "--wait-all"])
    }

    /// Deploys hello and waits until every node serves it.
    fn deploy_hello(&self) {
        let hello = repo().join("functions/hello");
        let out = self.scheduler.cli_ok(&[
            "deploy",
            hello.to_str().unwrap(),
            "--no-build",
            "--wait-all",
        ]);
        assert!(
            out.contains("deployed hello v1") && out.contains(&self.scheduler.listen),
            "{out}"
        );
    }
}

pub fn node(dir: &Path, nats: &str, name: &str, args: &[&str]) -> Skiff {
    Skiff::node(&dir.join(name), nats, name, args)
}

/// One NATS server, a scheduler and a few nodes, with hello deployed on every node.
pub struct SmallCluster {
    _tmp: tempfile::TempDir,
    _nats: NatsServer,
    pub url: String,
    pub scheduler: Skiff,
    pub nodes: Vec<Skiff>,
}

/// Starts a [`SmallCluster`] with nodes named `names`.
pub fn small_cluster(names: &[&str]) -> SmallCluster {
    let tmp = tempfile::tempdir().unwrap();
    let nats = NatsServer::start(&tmp.path().join("nats")).expect("nats");
    let url = nats.url();
    let scheduler = Skiff::scheduler(&url, &[]);
    let nodes = names
        .iter()
        .map(|n| node(tmp.path(), &url, n, &[]))
        .collect();
    let hello = repo().join("functions/hello");
    scheduler.cli_ok(&[
        "deploy",
        hello.to_str().unwrap(),
        "--no-build",
        "--wait-all",
    ]);
    SmallCluster {
        _tmp: tmp,
        _nats: nats,
        url,
        scheduler,
        nodes,
    }
}

/// One request's outcome as a load generator saw it.
#[derive(Debug, Clone)]
pub struct Hit {
    pub node: String,
    pub status: u16,
    pub latency: Duration,
    pub at: Instant,
    pub body: String,
}

/// Sends GETs to `url` from `workers` keep-alive clients until `total` were sent or
/// `until` passes. Transport failures count as status 0.
pub async fn hammer(url: &str, workers: usize, total: usize, until: Option<Instant>) -> Vec<Hit> {
    hammer_with("GET", url, workers, total, until).await
}

/// Like [`hammer`], with any method.
pub async fn hammer_with(
    method: &'static str,
    url: &str,
    workers: usize,
    total: usize,
    until: Option<Instant>,
) -> Vec<Hit> {
    let sent = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..workers)
        .map(|_| {
            let url = url.to_string();
            let sent = sent.clone();
            tokio::spawn(async move {
                let c = client();
                let mut hits = Vec::new();
                while sent.fetch_add(1, Ordering::Relaxed) < total
                    && until.is_none_or(|u| Instant::now() < u)
                {
                    let at = Instant::now();
                    let req = http::Request::builder()
                        .method(method)
                        .uri(&url)
                        .body(body(""))
                        .unwrap();
                    let (status, node, text) = match send(&c, req).await {
                        Ok(r) => (
                            r.status,
                            r.headers
                                .get("x-skiff-node")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("")
                                .to_string(),
                            r.text(),
                        ),
                        Err(e) => (0, String::new(), e),
                    };
                    hits.push(Hit {
                        node,
                        status,
                        latency: at.elapsed(),
                        at,
                        body: text,
                    });
                }
                hits
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

pub fn per_node(hits: &[Hit]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for h in hits {
        *m.entry(h.node.clone()).or_insert(0) += 1;
    }
    m
}

pub fn p99(hits: &[Hit]) -> Duration {
    let mut l: Vec<Duration> = hits.iter().map(|h| h.latency).collect();
    l.sort();
    l[(l.len() * 99 / 100).min(l.len() - 1)]
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_spread_evenly_a_new_node_takes_traffic_and_a_stopped_one_drains() {
    let _one = crate::gate::alone().await;
    let mut cluster = Cluster::start(3);
    cluster.deploy_hello();
    let url = format!("{}/hello/spread", cluster.scheduler.listen);

    let hits = hammer(&url, 6, 3000, None).await;
    assert!(hits.iter().all(|h| h.status == 200), "some requests failed");
    let counts = per_node(&hits);
    println!("3000 requests over 3 nodes: {counts:?}");
    assert_eq!(counts.len(), 3, "{counts:?}");
    for (node, n) in &counts {
        assert!(
            (850..=1150).contains(n),
            "node {node} took {n} of 3000 (more than 15% off even): {counts:?}"
        );
    }

    let status = cluster.scheduler.cli_ok(&["status"]);
    for n in ["n1", "n2", "n3"] {
        assert!(status.contains(n), "{status}");
    }
    assert_eq!(status.matches("hello v1").count(), 3, "{status}");
    // The scheduler's view of node load is on its /metrics; traces come from any node.
    let metrics = get(&format!("{}/metrics", cluster.scheduler.admin))
        .await
        .text();
    for line in [
        "skiff_scheduler_nodes 3",
        "skiff_scheduler_node_in_flight{node=\"n1\"}",
        "skiff_scheduler_node_capacity{node=\"n3\"} 512",
        "skiff_scheduler_requests_total{outcome=\"proxied\"}",
    ] {
        assert!(metrics.contains(line), "missing {line} in:\n{metrics}");
    }
    // Every /metrics endpoint of the cluster is valid Prometheus text.
    crate::metrics::promtool_check(&metrics);
    let node_metrics = get(&format!("{}/metrics", cluster.nodes[0].admin))
        .await
        .text();
    crate::metrics::promtool_check(&node_metrics);
    assert!(node_metrics.contains("skiff_invocations_total{function=\"hello\""));
    let r = get(&url).await;
    let trace = r.headers["x-skiff-trace-id"].to_str().unwrap().to_string();
    let spans = cluster.scheduler.cli_ok(&["trace", &trace]);
    assert!(
        spans.contains("hello") && spans.contains(r.headers["x-skiff-node"].to_str().unwrap()),
        "{spans}"
    );
    let ls = cluster.scheduler.cli_ok(&["ls"]);
    assert!(
        ls.contains(&format!("{}/hello/", cluster.scheduler.listen)),
        "{ls}"
    );

    // A fourth node joins and takes traffic within 2 s of starting.
    let joined = cluster.add_node("n4");
    let c = client();
    let mut took = None;
    while joined.elapsed() < Duration::from_secs(5) {
        let r = send(&c, http::Request::get(&url).body(body("")).unwrap())
            .await
            .unwrap();
        assert_eq!(r.status, 200);
        if r.headers.get("x-skiff-node").is_some_and(|v| v == "n4") {
            took = Some(joined.elapsed());
            break;
        }
    }
    let took = took.expect("n4 took no traffic within 5 s");
    println!("n4 took traffic {took:?} after it started");
    assert!(took < Duration::from_secs(2), "n4 took {took:?}");

    // n4 stops gracefully under load: it drains, nothing fails, and it leaves.
    let load = tokio::spawn({
        let url = url.clone();
        async move {
            hammer(
                &url,
                4,
                usize::MAX,
                Some(Instant::now() + Duration::from_millis(2500)),
            )
            .await
        }
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    let n4 = cluster.nodes.last_mut().unwrap();
    let exit = tokio::task::block_in_place(|| n4.terminate(Duration::from_secs(10)));
    assert!(exit.is_some_and(|s| s.success()), "n4 did not stop cleanly");
    let hits = load.await.unwrap();
    let failed: Vec<&Hit> = hits.iter().filter(|h| h.status != 200).collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed while n4 drained, e.g. {:?}",
        failed.len(),
        hits.len(),
        failed.first()
    );
    let status = cluster.scheduler.cli_ok(&["status"]);
    assert!(
        !status.contains("n4"),
        "n4 still listed after leaving:\n{status}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_node_costs_under_one_percent_and_errors_stop_within_two_seconds() {
    let _one = crate::gate::alone().await;
    let mut cluster = Cluster::start(3);
    cluster.deploy_hello();
    let url = format!("{}/hello/kill", cluster.scheduler.listen);
    let end = Instant::now() + Duration::from_secs(5);
    let load = tokio::spawn({
        let url = url.clone();
        async move { hammer(&url, 8, usize::MAX, Some(end)).await }
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let killed_at = Instant::now();
    cluster.nodes[1].kill();
    let hits = load.await.unwrap();
    let after: Vec<&Hit> = hits.iter().filter(|h| h.at >= killed_at).collect();
    let errors: Vec<&Hit> = after.iter().copied().filter(|h| h.status != 200).collect();
    let late: Vec<&Hit> = errors
        .iter()
        .copied()
        .filter(|h| h.at >= killed_at + Duration::from_secs(2))
        .collect();
    let rate = errors.len() as f64 / after.len().max(1) as f64;
    println!(
        "after SIGKILL of n2: {} requests, {} errors ({:.3}%), {} errors later than 2 s",
        after.len(),
        errors.len(),
        rate * 100.0,
        late.len()
    );
    assert!(
        after.len() > 500,
        "too little load to judge: {}",
        after.len()
    );
    assert!(rate < 0.01, "error rate {rate:.4} after the kill");
    assert!(late.is_empty(), "errors 2 s after the kill: {late:?}");
    assert!(
        after
            .iter()
            .filter(|h| h.at >= killed_at + Duration::from_secs(2))
            .all(|h| h.node != "n2"),
        "still routed to the dead node"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_node_gets_less_work_and_p99_beats_round_robin() {
    let _one = crate::gate::alone().await;
    let cluster = Cluster::start(3);
    let manifest = format!(
        "name = \"misbehave\"\ncomponent = \"{}\"\n",
        guest("tests/guests", "misbehave.wasm").display()
    );
    cluster.deploy(&function_dir(cluster.tmp.path(), "misbehave", &manifest));
    let rr = Skiff::scheduler(&cluster.nats.urls(), &["--placement", "round-robin"]);
    // Both schedulers must see every node serve it before either is measured: a node
    // missing from one's view would skew the shares (round robin once saw only two).
    for sched in [&rr, &cluster.scheduler] {
        let all_seen = wait_until(Duration::from_secs(20), async || {
            sched.cli_ok(&["status"]).matches("misbehave v1").count() == 3
        })
        .await;
        assert!(all_seen, "{}", sched.cli_ok(&["status"]));
    }
    // The function sleeps 40 ms only on n3 (it sees the port it was sent to).
    let slow_port = cluster.nodes[2]
        .listen
        .rsplit(':')
        .next()
        .unwrap()
        .to_string();
    let path = format!("/misbehave/sleep-on/{slow_port}/40");
    wait_until(Duration::from_secs(5), async || {
        get(&format!("{}{path}", rr.listen)).await.status == 200
    })
    .await;

    let mut rows = Vec::new();
    for (label, sched) in [("round-robin", &rr), ("p2c", &cluster.scheduler)] {
        let hits = hammer(&format!("{}{path}", sched.listen), 12, 1500, None).await;
        assert!(hits.iter().all(|h| h.status == 200), "{label}: failures");
        let slow = hits.iter().filter(|h| h.node == "n3").count();
        rows.push((label, slow as f64 / hits.len() as f64, p99(&hits)));
        println!("{}", sched.cli_ok(&["status"]));
    }
    println!("placement    | slow node's share | p99");
    for (label, share, p) in &rows {
        println!("{label:<12} | {:>16.1}% | {p:?}", share * 100.0);
    }
    let (rr_share, rr_p99) = (rows[0].1, rows[0].2);
    let (p2c_share, p2c_p99) = (rows[1].1, rows[1].2);
    assert!(
        p2c_share < rr_share / 3.0,
        "p2c sent the slow node {p2c_share:.3} of the work, round robin {rr_share:.3}"
    );
    assert!(
        p2c_p99 < rr_p99,
        "p99 through p2c {p2c_p99:?} is not better than round robin's {rr_p99:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn functions_keep_answering_while_nats_is_down_and_the_cluster_recovers() {
    let _one = one_at_a_time().await;
    let mut cluster = Cluster::start(3);
    cluster.deploy_hello();
    let url = format!("{}/hello/outage", cluster.scheduler.listen);
    for s in &mut cluster.nats.servers {
        s.kill();
    }
    // Longer than a node's report expiry: the scheduler must keep its last view.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let hits = hammer(&url, 4, 200, None).await;
    let counts = per_node(&hits);
    assert!(
        hits.iter().all(|h| h.status == 200),
        "requests failed while NATS was down: {counts:?}"
    );
    assert_eq!(
        counts.len(),
        3,
        "not every node kept serving: {counts:?}\nscheduler:\n{}\nn1:\n{}",
        cluster.scheduler.log(),
        cluster.nodes[0].log()
    );

    for s in &mut cluster.nats.servers {
        s.restart().expect("restart nats");
    }
    // Both sides reconnect on their own: a new deploy goes through and serves.
    let counter = repo().join("functions/counter");
    let deployed = wait_until(Duration::from_secs(30), async || {
        cluster
            .scheduler
            .cli(&["deploy", counter.to_str().unwrap(), "--no-build"])
            .status
            .success()
    })
    .await;
    assert!(
        deployed,
        "no deploy succeeded after NATS came back:\n{}",
        cluster.scheduler.log()
    );
    let r = get(&format!("{}/counter/x", cluster.scheduler.listen)).await;
    assert!(
        r.status == 200 || r.status == 201,
        "{} {}",
        r.status,
        r.text()
    );
    let status = cluster.scheduler.cli_ok(&["status"]);
    assert!(status.contains("3 live node(s)"), "{status}");
}

#[tokio::test(flavor = "multi_thread")]
async fn cluster_bad_input_gets_clear_errors() {
    let _one = one_at_a_time().await;
    let tmp = tempfile::tempdir().unwrap();
    let nats = NatsServer::start(&tmp.path().join("nats")).expect("nats");
    let sched = Skiff::scheduler(&nats.url(), &[]);

    // No node: a deploy times out naming the problem; the route answers 503, not a hang.
    let hello = repo().join("functions/hello");
    let err = sched.cli_err(&[
        "deploy",
        hello.to_str().unwrap(),
        "--no-build",
        "--timeout",
        "2s",
    ]);
    assert!(
        err.contains("no node served `hello` v1 within 2s") && err.contains("live nodes: none"),
        "{err}"
    );
    let asked = Instant::now();
    let r = wait_for_status(&format!("{}/hello/x", sched.listen), 503).await;
    assert!(
        r.text().contains("no live node can take `hello`"),
        "{}",
        r.text()
    );
    assert!(asked.elapsed() < Duration::from_secs(3));
    assert_eq!(
        r.headers.get("retry-after").map(|v| v.to_str().unwrap()),
        Some("1")
    );

    // An upload whose bytes do not hash to its name is refused.
    let wasm = std::fs::read(guest("functions", "hello.wasm")).unwrap();
    let wrong = "0".repeat(64);
    let r = request(
        "PUT",
        &format!("{}/v1/artifacts/{wrong}", sched.admin),
        &[],
        wasm.into(),
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("does not match its name"), "{}", r.text());

    // With a node: the version that was waiting loads; a component that does not compile
    // is refused with the node's reason and the previous version keeps serving.
    let n1 = node(tmp.path(), &nats.url(), "n1", &[]);
    let r = wait_for_status(&format!("{}/hello/x", sched.listen), 200).await;
    assert_eq!(r.headers.get("x-skiff-node").unwrap(), "n1");
    let broken = tmp.path().join("broken");
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::write(broken.join("broken.wasm"), b"\0asm\x0d\0\x01\0garbage").unwrap();
    std::fs::write(
        broken.join("skiff.toml"),
        "name = \"hello\"\ncomponent = \"broken.wasm\"\n",
    )
    .unwrap();
    let err = sched.cli_err(&["deploy", broken.to_str().unwrap(), "--no-build"]);
    assert!(
        err.contains("failed to load on node `n1`") && err.contains("v1 keeps serving"),
        "{err}"
    );
    let r = get(&format!("{}/hello/x", sched.listen)).await;
    assert_eq!(r.status, 200);
    assert!(sched.cli_ok(&["ls"]).contains("hello"));
    // The refused version's artifact is gone from the cluster's object store and from
    // the node's disk; the serving version's stays.
    let hello_sha =
        skiff_core::record::sha256_hex(&std::fs::read(guest("functions", "hello.wasm")).unwrap());
    let broken_sha = skiff_core::record::sha256_hex(b"\0asm\x0d\0\x01\0garbage");
    let client = skiff_core::nats::connect(&nats.url(), "test", &operator_auth())
        .await
        .unwrap();
    let registry =
        skiff_core::cluster_registry::ClusterRegistry::open(&async_nats::jetstream::new(client), 1)
            .await
            .unwrap();
    use skiff_core::control::ControlStore;
    assert_eq!(registry.artifacts().await.unwrap(), vec![hello_sha.clone()]);
    let local = |sha: &str| tmp.path().join("n1/artifacts").join(format!("{sha}.wasm"));
    assert!(local(&hello_sha).exists() && !local(&broken_sha).exists());

    // A node's own admin API refuses deploys: they go through the scheduler.
    let err = n1.cli_err(&["deploy", hello.to_str().unwrap(), "--no-build"]);
    assert!(
        err.contains("part of a cluster") && err.contains("through the scheduler"),
        "{err}"
    );

    // Waiting for every node works too, and names the version.
    let out = sched.cli_ok(&[
        "deploy",
        hello.to_str().unwrap(),
        "--no-build",
        "--wait-all",
    ]);
    assert!(out.contains("deployed hello v3"), "{out}");

    // Removed: its artifact leaves the object store, and the node's disk once it hears.
    sched.cli_ok(&["rm", "hello"]);
    assert!(registry.artifacts().await.unwrap().is_empty());
    assert!(
        wait_until(Duration::from_secs(10), async || !local(&hello_sha)
            .exists())
        .await,
        "the node kept the removed function's artifact"
    );
}

async fn wait_for_status(url: &str, status: u16) -> Resp {
    let start = Instant::now();
    loop {
        let r = get(url).await;
        if r.status == status || start.elapsed() > Duration::from_secs(10) {
            assert_eq!(r.status, status, "{url}: {}", r.text());
            return r;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn events_are_shared_by_every_node_and_each_runs_once() {
    let _one = one_at_a_time().await;
    let cluster = Cluster::start(3);
    let manifest = format!(
        "name = \"misbehave\"\ncomponent = \"{}\"\n\n[[events]]\ntopic = \"spread.slow\"\nconcurrency = 2\n",
        guest("tests/guests", "misbehave.wasm").display()
    );
    cluster.deploy(&function_dir(cluster.tmp.path(), "misbehave", &manifest));
    // Each event takes 200 ms and each node runs at most 2 at once, so no node can take
    // them all: every node with free slots pulls its share.
    let published = 60;
    for i in 0..published {
        let r = request(
            "POST",
            &format!("{}/v1/events/spread.slow", cluster.scheduler.admin),
            &[],
            format!("event {i}").into(),
        )
        .await;
        assert!(
            r.status == 200 || r.status == 202,
            "{} {}",
            r.status,
            r.text()
        );
    }
    // Logs come from every node through the scheduler.
    let logs_url = format!(
        "{}/v1/functions/misbehave/logs?tail=5000",
        cluster.scheduler.admin
    );
    let mut runs: BTreeMap<String, String> = BTreeMap::new();
    let done = wait_until(Duration::from_secs(30), async || {
        let r = get(&logs_url).await;
        for line in r.text().lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let text = v["line"].as_str().unwrap_or("");
            if let Some(id) = text
                .strip_prefix("event-run topic=spread.slow id=")
                .and_then(|r| r.split_whitespace().next())
            {
                runs.insert(id.to_string(), v["node"].as_str().unwrap().to_string());
            }
        }
        runs.len() >= published
    })
    .await;
    assert!(done, "only {} of {published} events ran", runs.len());
    let mut by_node: BTreeMap<&str, usize> = BTreeMap::new();
    for node in runs.values() {
        *by_node.entry(node).or_insert(0) += 1;
    }
    println!("{published} events handled by: {by_node:?}");
    assert_eq!(by_node.len(), 3, "not every node took events: {by_node:?}");
}
