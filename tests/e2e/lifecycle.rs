//! Deployments over time: restarts, redeploys under load, removal with work in flight.

use crate::harness::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread")]
async fn a_restart_keeps_deployments_and_loads_the_compiled_cache() {
    let _gate = crate::gate::beside_others().await;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut skiff = Skiff::start_in(&data, &[]);
    let hello = repo().join("functions/hello");
    skiff.cli_ok(&["deploy", hello.to_str().unwrap(), "--no-build"]);
    let r = get(&format!("{}/hello/before", skiff.listen)).await;
    assert_eq!(r.status, 200);
    // SIGKILL: the deploy was acknowledged, so it must survive without a clean shutdown.
    skiff.kill();

    let skiff = Skiff::start_in(&data, &[]);
    assert!(
        skiff.log().contains("restored") || {
            wait_until(Duration::from_secs(2), async || {
                skiff.log().contains("restored")
            })
            .await
        }
    );
    let r = get(&format!("{}/hello/after", skiff.listen)).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "Hello from Skiff! You asked for /hello/after\n");
    let info = request(
        "GET",
        &format!("{}/v1/functions/hello", skiff.admin),
        &[],
        bytes::Bytes::new(),
    )
    .await;
    let info: serde_json::Value = serde_json::from_slice(&info.body).unwrap();
    assert_eq!(info["code"], "cache", "{info}");
    assert_eq!(info["version"], 1);

    // A damaged precompiled file is noticed and recompiled, not loaded.
    drop(skiff);
    for entry in std::fs::read_dir(data.join("compiled")).unwrap() {
        let path = entry.unwrap().path();
        let mut bytes = std::fs::read(&path).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0xff;
        std::fs::write(&path, bytes).unwrap();
    }
    let skiff = Skiff::start_in(&data, &[]);
    let r = get(&format!("{}/hello/recompiled", skiff.listen)).await;
    assert_eq!(r.status, 200);
    let info = get(&format!("{}/v1/functions/hello", skiff.admin)).await;
    let info: serde_json::Value = serde_json::from_slice(&info.body).unwrap();
    assert_eq!(info["code"], "compiled", "{info}");
    assert!(
        skiff.log().contains("does not match its recorded hash"),
        "{}",
        skiff.log()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_redeploy_during_steady_traffic_fails_no_request() {
    let _gate = crate::gate::beside_others().await;
    let skiff = Skiff::start(&[]);
    let tmp = tempfile::tempdir().unwrap();
    let deploy = |v: u32| {
        deploy_misbehave(
            &skiff,
            &tmp.path().join(format!("v{v}")),
            "misbehave",
            &format!("[env]\nVERSION = \"v{v}\"\n"),
        );
    };
    deploy(1);

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = Arc::new(std::sync::Mutex::new(std::collections::BTreeSet::new()));
    let mut workers = Vec::new();
    for _ in 0..8 {
        let (stop, ok, failures, seen) = (stop.clone(), ok.clone(), failures.clone(), seen.clone());
        let url = format!("{}/misbehave/version", skiff.listen);
        workers.push(tokio::spawn(async move {
            let c = client();
            // Bounded: the loop ends when told to, or after 20 s at the most.
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            while !stop.load(Ordering::Relaxed) && std::time::Instant::now() < deadline {
                let req = http::Request::get(&url)
                    .body(body(bytes::Bytes::new()))
                    .unwrap();
                match send(&c, req).await {
                    Ok(r) if r.status == 200 => {
                        ok.fetch_add(1, Ordering::Relaxed);
                        seen.lock().unwrap().insert(r.text());
                    }
                    Ok(r) => failures
                        .lock()
                        .unwrap()
                        .push(format!("{} {}", r.status, r.text())),
                    Err(e) => failures.lock().unwrap().push(e),
                }
            }
        }));
    }
    let before = ok.load(Ordering::Relaxed);
    for v in 2..=4 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        deploy(v);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    let failures = failures.lock().unwrap().clone();
    assert!(
        failures.is_empty(),
        "{} failed requests, first: {:?}",
        failures.len(),
        failures.first()
    );
    let total = ok.load(Ordering::Relaxed);
    assert!(
        total > before + 50,
        "too little traffic to mean anything: {total}"
    );
    let seen = seen.lock().unwrap().clone();
    for v in ["v1", "v4"] {
        assert!(seen.contains(v), "never saw {v}: {seen:?}");
    }
    let r = get(&format!("{}/misbehave/version", skiff.listen)).await;
    assert_eq!(r.text(), "v4");
    assert_eq!(r.headers["x-skiff-version"], "4");
}

#[tokio::test(flavor = "multi_thread")]
async fn rm_stops_new_requests_and_lets_running_ones_finish() {
    let _gate = crate::gate::beside_others().await;
    let skiff = Skiff::start(&[]);
    let tmp = tempfile::tempdir().unwrap();
    deploy_misbehave(&skiff, tmp.path(), "misbehave", "");
    let slow = start_slow_request(&skiff, "misbehave", 1500).await;
    let out = skiff.cli_ok(&["rm", "misbehave"]);
    assert!(out.contains("removed misbehave"), "{out}");
    let r = get(&format!("{}/misbehave/sleep/1", skiff.listen)).await;
    assert_eq!(r.status, 404);
    let slow = slow.await.unwrap();
    assert_eq!(
        (slow.status, slow.text()),
        (200, "slept 1500ms".to_string())
    );
    let err = skiff.cli_err(&["rm", "misbehave"]);
    assert!(err.contains("function `misbehave` not found"), "{err}");
    // Removed functions stay removed across a restart.
    let ls = skiff.cli_ok(&["ls"]);
    assert!(ls.contains("no functions deployed"), "{ls}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_drains_running_invocations_before_exit() {
    let _gate = crate::gate::beside_others().await;
    let mut skiff = Skiff::start(&[]);
    let tmp = tempfile::tempdir().unwrap();
    deploy_misbehave(&skiff, tmp.path(), "misbehave", "");
    let slow = start_slow_request(&skiff, "misbehave", 1000).await;
    let status = tokio::task::spawn_blocking(move || {
        let s = skiff.terminate(Duration::from_secs(10));
        (s, skiff)
    })
    .await
    .unwrap();
    assert!(
        status.0.is_some_and(|s| s.success()),
        "skiff did not exit cleanly: {:?}",
        status.0
    );
    let slow = slow.await.unwrap();
    assert_eq!(
        (slow.status, slow.text()),
        (200, "slept 1000ms".to_string())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn code_loads_on_demand_within_a_bounded_cache() {
    let _gate = crate::gate::beside_others().await;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    // Room for one component: two functions with different components take turns.
    // (Both are 0.2 functions, a fresh instance per request; a reused 0.3 instance
    // keeps its code while it lives, whatever the cache holds.)
    let mut skiff = Skiff::start_in(&data, &["--code-cache", "1"]);
    for f in ["echo-wstd", "counter"] {
        skiff.cli_ok(&[
            "deploy",
            repo().join("functions").join(f).to_str().unwrap(),
            "--no-build",
        ]);
    }
    let code = async |skiff: &Skiff, f: &str| -> String {
        let info = get(&format!("{}/v1/functions/{f}", skiff.admin)).await;
        let info: serde_json::Value = serde_json::from_slice(&info.body).unwrap();
        info["code"].as_str().unwrap_or_default().to_string()
    };
    for round in 0..3 {
        let r = get(&format!("{}/echo/r{round}", skiff.listen)).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_ne!(code(&skiff, "echo-wstd").await, "unloaded");
        assert_eq!(code(&skiff, "counter").await, "unloaded");
        let r = request(
            "POST",
            &format!("{}/counter/c", skiff.listen),
            &[],
            bytes::Bytes::new(),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.text().trim(), (round + 1).to_string());
        assert_eq!(code(&skiff, "echo-wstd").await, "unloaded");
    }
    let metrics = get(&format!("{}/metrics", skiff.admin)).await.text();
    assert!(
        metrics.contains("skiff_code_cache_components 1"),
        "{metrics}"
    );

    // A restart loads nothing until a function is called.
    skiff.kill();
    let skiff = Skiff::start_in(&data, &[]);
    assert_eq!(code(&skiff, "echo-wstd").await, "unloaded");
    assert_eq!(code(&skiff, "counter").await, "unloaded");
    let r = get(&format!("{}/echo/after", skiff.listen)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(code(&skiff, "echo-wstd").await, "cache");
}

/// Idle, `skiff up` exits promptly on SIGTERM, even with a client's keep-alive
/// connection open and functions deployed (an operator's restart waits on it).
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_when_idle_exits_within_200ms() {
    let _gate = crate::gate::alone().await;
    let mut skiff = Skiff::start(&[]);
    let hello = repo().join("functions/hello");
    skiff.cli_ok(&["deploy", hello.to_str().unwrap(), "--no-build"]);
    skiff.assert_hello_serves().await;
    // A keep-alive connection that has been served once and stays open, idle.
    let addr = skiff.listen.trim_start_matches("http://").to_string();
    let mut idle = std::net::TcpStream::connect(&addr).unwrap();
    std::io::Write::write_all(&mut idle, b"GET /hello/x HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut buf = [0u8; 512];
    let n = std::io::Read::read(&mut idle, &mut buf).unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    let started = Instant::now();
    let status = tokio::task::block_in_place(|| skiff.terminate(Duration::from_secs(10)));
    let took = started.elapsed();
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    assert!(took < Duration::from_millis(200), "took {took:?} to exit");
    drop(idle);
}
