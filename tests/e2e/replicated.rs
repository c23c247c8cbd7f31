//! Replicated state in a cluster: real clustered nats-servers, three nodes and a
//! scheduler; counters written through any node, read on every node, through faults.

use crate::cluster::{Cluster, hammer_with, node, one_at_a_time, per_node};
use crate::harness::*;
use std::time::{Duration, Instant};

async fn value(url: &str) -> (u16, String) {
    let r = get(url).await;
    (r.status, r.text())
}

/// Waits until every node's local copy of counter `key` reads `want`.
async fn converged(cluster: &Cluster, key: &str, want: u64) -> Vec<String> {
    let mut seen = Vec::new();
    let ok = wait_until(Duration::from_secs(10), async || {
        seen.clear();
        for n in &cluster.nodes {
            seen.push(value(&format!("{}/counter/{key}", n.listen)).await.1);
        }
        seen.iter().all(|v| v == &want.to_string())
    })
    .await;
    assert!(
        ok,
        "nodes read {seen:?}, want {want} on each; node logs:\n{}",
        cluster
            .nodes
            .iter()
            .map(|n| n
                .log()
                .lines()
                .filter(|l| !l.contains("skiff::guest") && !l.contains(" INFO "))
                .collect::<Vec<_>>()
                .join("\n"))
            .collect::<Vec<_>>()
            .join("\n----\n")
    );
    seen
}

#[tokio::test(flavor = "multi_thread")]
async fn increments_through_every_node_end_exact_and_reads_agree() {
    let _one = crate::gate::alone().await;
    let cluster = Cluster::start(3);
    cluster.deploy_example("counter");
    let started = Instant::now();
    let hits = hammer_with(
        "POST",
        &format!("{}/counter/x", cluster.scheduler.listen),
        8,
        3000,
        None,
    )
    .await;
    let took = started.elapsed();
    let failed: Vec<_> = hits.iter().filter(|h| h.status != 200).collect();
    assert!(
        failed.is_empty(),
        "{} failed, e.g. {:?}",
        failed.len(),
        failed.first()
    );
    let spread = per_node(&hits);
    println!(
        "3000 increments of one key in {took:?} ({:.0}/s) over {spread:?}",
        3000.0 / took.as_secs_f64()
    );
    assert_eq!(spread.len(), 3, "{spread:?}");
    // Every answer was a distinct value: no increment was lost or applied twice.
    let mut values: Vec<u64> = hits.iter().map(|h| h.body.parse().unwrap()).collect();
    values.sort();
    let dups: Vec<u64> = values
        .windows(2)
        .filter(|w| w[0] == w[1])
        .map(|w| w[0])
        .collect();
    assert!(
        dups.is_empty() && values == (1..=3000).collect::<Vec<_>>(),
        "answers repeat {} values (e.g. {:?}); highest {:?}",
        dups.len(),
        &dups[..dups.len().min(10)],
        values.last()
    );
    converged(&cluster, "x", 3000).await;

    // A write through node A is read on node B at once with the consistent read, and
    // with the plain read within a bound measured here.
    let (a, b) = (&cluster.nodes[0].listen, &cluster.nodes[1].listen);
    let c = client();
    let mut lags = Vec::new();
    for i in 1..=200u64 {
        let r = send(
            &c,
            http::Request::post(format!("{a}/counter/lag"))
                .body(body(""))
                .unwrap(),
        )
        .await
        .unwrap();
        assert_eq!(r.text(), i.to_string());
        let written = Instant::now();
        let strong = send(
            &c,
            http::Request::get(format!("{b}/counter/lag?consistent"))
                .body(body(""))
                .unwrap(),
        )
        .await
        .unwrap();
        assert_eq!(
            strong.text(),
            i.to_string(),
            "consistent read on B missed A's write"
        );
        loop {
            let plain = send(
                &c,
                http::Request::get(format!("{b}/counter/lag"))
                    .body(body(""))
                    .unwrap(),
            )
            .await
            .unwrap();
            if plain.text() == i.to_string() {
                lags.push(written.elapsed());
                break;
            }
            assert!(
                written.elapsed() < Duration::from_secs(1),
                "B still reads {} 1 s after A wrote {i}",
                plain.text()
            );
        }
    }
    lags.sort();
    println!(
        "plain read on B after a write on A: p50 {:?}, p99 {:?}, max {:?} (measured after a consistent read)",
        lags[lags.len() / 2],
        lags[lags.len() * 99 / 100],
        lags[lags.len() - 1]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn losing_nats_servers_loses_no_acknowledged_write() {
    let _one = one_at_a_time().await;
    let mut cluster = Cluster::start(3);
    cluster.deploy_example("counter");
    let url = format!("{}/counter/y", cluster.scheduler.listen);
    // Long enough that the election (seconds, more on a loaded machine) is well behind us
    // by the end.
    let end = Instant::now() + Duration::from_secs(15);
    let load = tokio::spawn({
        let url = url.clone();
        async move { hammer_with("POST", &url, 4, usize::MAX, Some(end)).await }
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Every stream is on all three servers, so losing one loses nothing.
    let client = skiff_core::nats::connect(&cluster.nats.urls(), "test", &operator_auth())
        .await
        .unwrap();
    let js = async_nats::jetstream::new(client);
    for name in [
        "SKIFF_STATE_0",
        "SKIFF_STATE_1",
        "SKIFF_STATE_2",
        "SKIFF_EVENTS",
        "KV_skiff_registry",
        "OBJ_skiff_artifacts",
    ] {
        let mut stream = js.get_stream(name).await.unwrap();
        assert_eq!(
            stream.info().await.unwrap().config.num_replicas,
            3,
            "{name}"
        );
    }
    cluster.nats.servers[0].kill();
    let hits = load.await.unwrap();
    let acked = hits.iter().filter(|h| h.status == 200).count() as u64;
    let errors = hits.len() as u64 - acked;
    let late_ok = hits
        .iter()
        .filter(|h| h.at > end - Duration::from_secs(3) && h.status == 200)
        .count();
    println!(
        "one of 3 nats-servers killed: {acked} writes acknowledged, {errors} refused, {late_ok} acknowledged in the last 3 s"
    );
    assert!(
        late_ok > 0,
        "writes did not continue after the election; last errors: {:?}\nn1:\n{}",
        hits.iter()
            .rev()
            .filter(|h| h.status != 200)
            .take(3)
            .map(|h| &h.body)
            .collect::<Vec<_>>(),
        cluster.nodes[0]
            .log()
            .lines()
            .filter(|l| !l.contains("skiff::guest"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let n1 = &cluster.nodes[0].listen;
    let (_, strong) = value(&format!("{n1}/counter/y?consistent")).await;
    let total: u64 = strong.parse().unwrap();
    assert!(
        total >= acked && total <= acked + errors,
        "counter reads {total} after {acked} acknowledged increments ({errors} refused)"
    );

    // Two of three down: no quorum. Writes fail with a clear error and are never
    // acknowledged; reads keep working from each node's copy.
    converged(&cluster, "y", total).await;
    cluster.nats.servers[1].kill();
    let r = request("POST", &format!("{n1}/counter/y"), &[], "".into()).await;
    assert_ne!(
        r.status,
        200,
        "a write was acknowledged without a quorum: {}",
        r.text()
    );
    assert!(
        r.text().contains("not applied") || r.text().contains("quorum"),
        "unclear error: {}",
        r.text()
    );
    for n in &cluster.nodes {
        let (status, v) = value(&format!("{}/counter/y", n.listen)).await;
        assert_eq!((status, v), (200, total.to_string()));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_node_catches_up_before_it_serves() {
    let _one = one_at_a_time().await;
    let mut cluster = Cluster::start(3);
    cluster.deploy_example("counter");
    let url = format!("{}/counter/z", cluster.scheduler.listen);
    hammer_with("POST", &url, 4, 100, None).await;
    cluster.nodes[2].kill();
    // More writes while n3 is away.
    let hits = hammer_with("POST", &url, 4, 400, None).await;
    assert!(hits.iter().all(|h| h.status == 200));
    let urls = cluster.nats.urls();
    cluster.nodes[2] = node(cluster.tmp.path(), &urls, "n3", &[]);
    // Its first answer, on its own copy, already has every write.
    let (status, v) = value(&format!("{}/counter/z", cluster.nodes[2].listen)).await;
    assert_eq!((status, v.as_str()), (200, "500"));
    assert!(cluster.nodes[2].log().contains("state caught up"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_fails_that_nodes_write_and_loses_nothing_acknowledged() {
    let _one = one_at_a_time().await;
    let mut cluster = Cluster::start(2);
    let urls = cluster.nats.urls();
    let small = cluster.tmp.path().join("n3");
    cluster
        .nodes
        .push(Skiff::node_with_small_disk(&small, &urls, "n3", 24 * 1024));
    cluster.deploy_example("counter");
    let n3 = cluster.nodes[2].admin.clone();
    let value = vec![b'x'; 512 << 10];
    let mut acked = Vec::new();
    let mut refused = None;
    for i in 0..80 {
        let r = request(
            "PUT",
            &format!("{n3}/v1/functions/counter/kv/big-{i}"),
            &[],
            value.clone().into(),
        )
        .await;
        if r.status == 200 {
            acked.push(i);
        } else {
            refused = Some(r.text());
            break;
        }
    }
    let refused = refused.expect("80 × 512 KiB fit on a 24 MiB disk?");
    println!(
        "{} writes acknowledged before the disk filled; then: {refused}",
        acked.len()
    );
    assert!(
        !acked.is_empty(),
        "the disk was full from the start: {refused}"
    );
    assert!(
        refused.contains("cannot apply it") && refused.contains("other nodes have it"),
        "unclear error: {refused}"
    );
    // The node is still up, and every acknowledged write is on the other nodes.
    assert_eq!(get(&format!("{n3}/healthz")).await.status, 200);
    let n1 = &cluster.nodes[0].admin;
    for i in acked {
        let r = get(&format!(
            "{n1}/v1/functions/counter/kv/big-{i}?consistent=true"
        ))
        .await;
        assert_eq!((r.status, r.body.len()), (200, 512 << 10), "big-{i} lost");
    }
}
