//! Durable key-value state: atomic counters under concurrency, durability across SIGKILL,
//! isolation between functions, limits, and the operator's `skiff kv`.

use crate::harness::*;
use bytes::Bytes;
use std::collections::BTreeMap;
use std::sync::Arc;

fn deploy_counter(skiff: &Skiff) {
    let dir = repo().join("functions/counter");
    skiff.cli_ok(&["deploy", dir.to_str().unwrap(), "--no-build"]);
}

fn deploy_probe(skiff: &Skiff, tmp: &std::path::Path, name: &str, limits: &str) {
    deploy_misbehave(skiff, tmp, name, &format!("[limits]\n{limits}\n"));
}

#[tokio::test(flavor = "multi_thread")]
async fn five_hundred_concurrent_increments_leave_exactly_five_hundred() {
    let _gate = crate::gate::beside_others().await;
    let skiff = Skiff::start(&[]);
    deploy_counter(&skiff);
    let url = format!("{}/counter/x", skiff.listen);
    let c = Arc::new(client());
    let mut tasks = Vec::new();
    for _ in 0..500 {
        let (c, url) = (c.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            let req = http::Request::post(&url).body(body(Bytes::new())).unwrap();
            send(&c, req).await
        }));
    }
    let mut values = Vec::new();
    for t in tasks {
        let r = t.await.unwrap().expect("request");
        assert_eq!(r.status, 200, "{}", r.text());
        values.push(r.text().parse::<u64>().expect("a number"));
    }
    values.sort_unstable();
    // Every increment saw a distinct value: none was lost or applied twice.
    assert_eq!(values, (1..=500).collect::<Vec<u64>>());
    assert_eq!(get(&url).await.text(), "500");
    assert_eq!(
        get(&format!("{}/counter/never", skiff.listen)).await.text(),
        "0"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn acknowledged_writes_survive_sigkill() {
    let _gate = crate::gate::beside_others().await;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut skiff = Skiff::start_in(&data, &[]);
    deploy_counter(&skiff);
    let c = Arc::new(client());
    let mut tasks = Vec::new();
    for i in 0..400 {
        let c = c.clone();
        let url = format!("{}/counter/k{}", skiff.listen, i % 8);
        tasks.push(tokio::spawn(async move {
            let req = http::Request::post(&url).body(body(Bytes::new())).unwrap();
            (i % 8, send(&c, req).await)
        }));
    }
    let mut acked: BTreeMap<usize, u64> = BTreeMap::new();
    for t in tasks {
        if let (k, Ok(r)) = t.await.unwrap()
            && r.status == 200
        {
            *acked.entry(k).or_default() += 1;
        }
    }
    // Kill right after the last acknowledgement: no clean shutdown, no final flush.
    skiff.kill();
    assert_eq!(acked.values().sum::<u64>(), 400);

    let skiff = Skiff::start_in(&data, &[]);
    for (k, n) in acked {
        let r = get(&format!("{}/counter/k{k}", skiff.listen)).await;
        assert_eq!(r.text(), n.to_string(), "counter k{k} lost writes");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn functions_cannot_reach_each_others_keys() {
    let _gate = crate::gate::beside_others().await;
    let skiff = Skiff::start(&[]);
    let tmp = tempfile::tempdir().unwrap();
    deploy_probe(&skiff, tmp.path(), "alpha", "");
    deploy_probe(&skiff, tmp.path(), "beta", "");
    let r = request(
        "POST",
        &format!("{}/alpha/kv/set/secret", skiff.listen),
        &[],
        Bytes::from_static(b"alpha-only"),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        get(&format!("{}/alpha/kv/get/secret", skiff.listen))
            .await
            .text(),
        "alpha-only"
    );
    assert_eq!(
        get(&format!("{}/beta/kv/get/secret", skiff.listen))
            .await
            .status,
        404
    );
    // Bucket names that spell alpha's storage prefix, or try to climb out, stay in beta.
    for bucket in [
        "%05alpha%07default",
        "default",
        "..%2Falpha",
        "%00",
        "alpha",
    ] {
        let r = get(&format!(
            "{}/beta/kv/bucket/{bucket}/get/secret",
            skiff.listen
        ))
        .await;
        assert_eq!(r.status, 404, "bucket {bucket}: {}", r.text());
    }
    // The operator sees each function's state under its own name.
    assert_eq!(
        skiff.cli_ok(&["kv", "get", "alpha", "secret"]),
        "alpha-only"
    );
    let err = skiff.cli_err(&["kv", "get", "beta", "secret"]);
    assert!(
        err.contains("key `secret` is not set in function `beta`"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_value_over_the_limit_is_an_error_and_the_function_keeps_working() {
    let _gate = crate::gate::beside_others().await;
    let skiff = Skiff::start(&[]);
    let tmp = tempfile::tempdir().unwrap();
    deploy_probe(
        &skiff,
        tmp.path(),
        "limited",
        "kv_value = \"1KiB\"\nkv_keys = 3",
    );
    let base = format!("{}/limited/kv", skiff.listen);
    let r = request(
        "POST",
        &format!("{base}/set/big"),
        &[],
        Bytes::from(vec![b'x'; 2000]),
    )
    .await;
    assert_eq!(r.status, 500);
    assert!(
        r.text().contains("value is 2000 bytes; the limit is 1024"),
        "{}",
        r.text()
    );
    assert_eq!(get(&format!("{base}/get/big")).await.status, 404);
    for k in ["a", "b", "c"] {
        let r = request(
            "POST",
            &format!("{base}/set/{k}"),
            &[],
            Bytes::from_static(b"small"),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let r = request(
        "POST",
        &format!("{base}/set/d"),
        &[],
        Bytes::from_static(b"small"),
    )
    .await;
    assert!(
        r.text().contains("would hold 4 keys; the limit is 3"),
        "{}",
        r.text()
    );
    // Overwriting an existing key is still fine, and reads work.
    let r = request(
        "POST",
        &format!("{base}/set/a"),
        &[],
        Bytes::from_static(b"again"),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(get(&format!("{base}/get/a")).await.text(), "again");
}

#[tokio::test(flavor = "multi_thread")]
async fn operators_read_and_repair_state_and_rm_keeps_it_unless_purged() {
    let _gate = crate::gate::beside_others().await;
    let skiff = Skiff::start(&[]);
    deploy_counter(&skiff);
    for _ in 0..3 {
        request(
            "POST",
            &format!("{}/counter/visits", skiff.listen),
            &[],
            Bytes::new(),
        )
        .await;
    }
    assert_eq!(skiff.cli_ok(&["kv", "get", "counter", "visits"]), "3");
    skiff.cli_ok(&["kv", "set", "counter", "visits", "41"]);
    skiff.cli_ok(&["kv", "set", "counter", "odd key/with spaces", "v"]);
    let r = request(
        "POST",
        &format!("{}/counter/visits", skiff.listen),
        &[],
        Bytes::new(),
    )
    .await;
    assert_eq!(r.text(), "42");
    let ls = skiff.cli_ok(&["kv", "ls", "counter"]);
    assert_eq!(ls, "odd key/with spaces\nvisits\n");
    assert_eq!(skiff.cli_ok(&["kv", "ls", "counter", "vis"]), "visits\n");
    skiff.cli_ok(&["kv", "del", "counter", "odd key/with spaces"]);
    assert_eq!(skiff.cli_ok(&["kv", "ls", "counter"]), "visits\n");

    // rm keeps the state; a redeploy finds it again.
    let out = skiff.cli_ok(&["rm", "counter"]);
    assert!(out.contains("state is kept"), "{out}");
    deploy_counter(&skiff);
    assert_eq!(
        get(&format!("{}/counter/visits", skiff.listen))
            .await
            .text(),
        "42"
    );
    let out = skiff.cli_ok(&["rm", "counter", "--purge-state"]);
    assert!(out.contains("purged its state (1 keys)"), "{out}");
    deploy_counter(&skiff);
    assert_eq!(
        get(&format!("{}/counter/visits", skiff.listen))
            .await
            .text(),
        "0"
    );
}
