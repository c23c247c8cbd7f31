//! WASI 0.3: wasi:http/handler@0.3 components (spin-sdk 7's, the SDK's) beside 0.2 ones,
//! instance reuse by `[instances]`, and the limits' meaning under reuse.

use crate::harness::*;
use bytes::Bytes;
use skiff_core::testkit::NatsServer;
use std::path::Path;
use std::time::{Duration, Instant};

/// Deploys the p3 test guest as `name` with `extra` manifest lines.
fn deploy_p3(skiff: &Skiff, parent: &Path, name: &str, extra: &str) {
    let manifest = format!(
        "name = \"{name}\"\ncomponent = \"{}\"\n{extra}",
        guest("tests/guests", "p3guest.wasm").display()
    );
    let dir = function_dir(parent, name, &manifest);
    skiff.cli_ok(&["deploy", dir.to_str().unwrap(), "--no-build"]);
}

fn deploy_spin(skiff: &Skiff, parent: &Path) {
    let manifest = format!(
        "name = \"spinhello\"\ncomponent = \"{}\"\n[limits]\nconcurrency = 256\n",
        guest("tests/guests", "spinhello.wasm").display()
    );
    let dir = function_dir(parent, "spinhello", &manifest);
    skiff.cli_ok(&["deploy", dir.to_str().unwrap(), "--no-build"]);
}

/// `function`'s instances retired for `reason` so far.
async fn retired(skiff: &Skiff, function: &str, reason: &str) -> f64 {
    let m = get(&format!("{}/metrics", skiff.admin)).await.text();
    let reason = format!("reason=\"{reason}\"");
    metric(&m, "skiff_instances_retired_total", function, &reason)
}

/// Waits until one more of `function`'s instances has gone idle and been dropped.
async fn one_more_idle(skiff: &Skiff, function: &str) {
    let before = retired(skiff, function, "idle").await;
    let idled = wait_until(Duration::from_secs(5), async || {
        retired(skiff, function, "idle").await > before
    })
    .await;
    assert!(idled, "no instance of `{function}` went idle within 5 s");
}

#[tokio::test(flavor = "multi_thread")]
async fn p3_components_serve_beside_p2_and_reuse_instances() {
    let _gate = crate::gate::beside_others().await;
    let skiff = Skiff::start(&[]);
    let tmp = tempfile::tempdir().unwrap();
    let hello = repo().join("functions/hello");
    skiff.cli_ok(&["deploy", hello.to_str().unwrap(), "--no-build"]);
    let echo = repo().join("functions/echo-wstd");
    skiff.cli_ok(&["deploy", echo.to_str().unwrap(), "--no-build"]);
    deploy_spin(&skiff, tmp.path());
    deploy_p3(
        &skiff,
        tmp.path(),
        "pooled",
        "[config]\ngreeting = \"hi from config\"\n[limits]\nbody = \"16MiB\"\n",
    );
    deploy_p3(&skiff, tmp.path(), "fresh", "[instances]\nreuse = 1\n");
    // A 0.2 component may opt into (sequential) reuse.
    let wstd = function_dir(
        tmp.path(),
        "echo-reused",
        &format!(
            "name = \"echo-reused\"\ncomponent = \"{}\"\n[instances]\nreuse = 50\n",
            guest("functions", "echo_wstd.wasm").display()
        ),
    );
    skiff.cli_ok(&["deploy", wstd.to_str().unwrap(), "--no-build"]);

    // The world shows in `skiff ls`.
    let ls = skiff.cli_ok(&["ls"]);
    let world = |name: &str| {
        ls.lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("{name} not listed: {ls}"))
            .to_string()
    };
    assert!(world("hello ").contains("wasi:http 0.3"), "{ls}");
    assert!(world("spinhello").contains("wasi:http 0.3"), "{ls}");
    assert!(world("echo-wstd").contains("wasi:http 0.2"), "{ls}");

    let r = get(&format!("{}/spinhello/", skiff.listen)).await;
    assert_eq!((r.status, r.text().as_str()), (200, "Hello, Spin"));
    let r = get(&format!("{}/hello/p3", skiff.listen)).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "Hello from Skiff! You asked for /hello/p3\n");
    assert!(r.headers.contains_key("x-skiff-invocation-id"));

    // A global counter grows under the 0.3 defaults, and stays 1 with reuse = 1.
    let mut pooled = Vec::new();
    let mut fresh = Vec::new();
    for _ in 0..5 {
        pooled.push(get(&format!("{}/pooled/count", skiff.listen)).await.text());
        fresh.push(get(&format!("{}/fresh/count", skiff.listen)).await.text());
    }
    assert_eq!(pooled, ["1", "2", "3", "4", "5"]);
    assert_eq!(fresh, ["1", "1", "1", "1", "1"]);

    // Capabilities reach 0.3 guests: config, kv, events.
    let r = get(&format!("{}/pooled/config", skiff.listen)).await;
    assert_eq!(r.text(), "hi from config");
    for want in ["hits 1", "hits 2"] {
        assert_eq!(
            get(&format!("{}/pooled/kv", skiff.listen)).await.text(),
            want
        );
    }

    // A multi-megabyte body streams through and back.
    let big: Vec<u8> = (0..5_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let r = request(
        "POST",
        &format!("{}/pooled/echo", skiff.listen),
        &[],
        Bytes::from(big.clone()),
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(r.body == big, "echo differs: {} bytes back", r.body.len());

    // 200 parallel requests to a 0.3 function all answer, on few instances.
    let calls = (0..200).map(|_| {
        let url = format!("{}/spinhello/", skiff.listen);
        tokio::spawn(async move { get(&url).await })
    });
    for r in futures::future::join_all(calls).await {
        let r = r.unwrap();
        assert_eq!((r.status, r.text().as_str()), (200, "Hello, Spin"));
    }
    // The opted-in 0.2 function answers right on reused instances.
    for i in 0..20 {
        let r = request(
            "POST",
            &format!("{}/echo-reused/", skiff.listen),
            &[],
            Bytes::from(format!("ping {i}")),
        )
        .await;
        assert_eq!((r.status, r.text()), (200, format!("ping {i}")));
    }

    // Steady load reuses instances: 8 clients, 25 requests each, starting from no live
    // instance. (How many instances the burst above made is wasmtime-wasi-http's call and
    // this machine's speed: a busy instance takes no second request until its first one
    // waits, so a burst starts workers, some of which find no request left. It is not
    // measured; its idle workers are let go first, so that they do not count here.)
    let spin = |m: &str| {
        (
            metric(m, "skiff_instances_created_total", "spinhello", ""),
            metric(m, "skiff_instances_reused_total", "spinhello", ""),
            metric(m, "skiff_instances_retired_total", "spinhello", ""),
        )
    };
    let drained = wait_until(Duration::from_secs(10), async || {
        let (created, _, retired) = spin(&get(&format!("{}/metrics", skiff.admin)).await.text());
        created > 0.0 && created == retired
    })
    .await;
    assert!(
        drained,
        "the burst's instances of `spinhello` did not all go idle in 10 s"
    );
    let (created0, reused0, _) = spin(&get(&format!("{}/metrics", skiff.admin)).await.text());
    let clients = (0..8).map(|_| {
        let url = format!("{}/spinhello/", skiff.listen);
        tokio::spawn(async move {
            for _ in 0..25 {
                let r = get(&url).await;
                assert_eq!((r.status, r.text().as_str()), (200, "Hello, Spin"));
            }
        })
    });
    for c in futures::future::join_all(clients).await {
        c.unwrap();
    }
    let m = get(&format!("{}/metrics", skiff.admin)).await.text();
    let (created, reused, _) = spin(&m);
    let (created, reused) = (created - created0, reused - reused0);
    eprintln!(
        "steady load on spinhello: {created} instances created, {reused} requests reused one"
    );
    // Every request that is not an instance's first counts as reused; an instance's first
    // is one of at most `created`.
    assert!(
        (1.0..=16.0).contains(&created),
        "200 requests from 8 clients, from no live instance, made {created} new instances"
    );
    assert!(
        reused >= 200.0 - created,
        "of 200 requests only {reused} went to a used instance, with {created} new ones"
    );
    assert!(metric(&m, "skiff_instances_reused_total", "echo-reused", "") >= 10.0);
    assert_eq!(metric(&m, "skiff_instances_reused_total", "fresh", ""), 0.0);
    assert!(metric(&m, "skiff_events_published_total", "pooled", "") >= 2.0);
    // Idle instances go after 1 s.
    let idled = wait_until(Duration::from_secs(5), async || {
        retired(&skiff, "pooled", "idle").await >= 1.0
    })
    .await;
    assert!(idled, "no idle instance of `pooled` was dropped within 5 s");
    let logs = skiff.cli_ok(&["logs", "hello"]);
    assert!(logs.contains("hello called on /hello/p3"), "{logs}");
}

#[tokio::test(flavor = "multi_thread")]
async fn p3_limits_hold_under_reuse_and_the_node_keeps_serving() {
    let _gate = crate::gate::beside_others().await;
    let skiff = Skiff::start(&[]);
    let tmp = tempfile::tempdir().unwrap();
    let hello = repo().join("functions/hello");
    skiff.cli_ok(&["deploy", hello.to_str().unwrap(), "--no-build"]);
    deploy_p3(
        &skiff,
        tmp.path(),
        "bad",
        "[limits]\ntimeout = \"2s\"\nmemory = \"32MiB\"\n",
    );
    let url = |p: &str| format!("{}/bad/{p}", skiff.listen);

    // One request never answers while others answer on the same instance; it gets 504
    // at its deadline, and its instance takes no further request.
    let hang = tokio::spawn({
        let u = url("hang");
        async move {
            let t = Instant::now();
            (get(&u).await, t.elapsed())
        }
    });
    // Time for the hanging request to reach its instance (no metric tells that apart
    // from admission).
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut counts = Vec::new();
    for _ in 0..3 {
        counts.push(get(&url("count")).await.text());
    }
    assert_eq!(
        counts,
        ["2", "3", "4"],
        "others answer on the same instance"
    );
    let (r, took) = hang.await.unwrap();
    assert_eq!(r.status, 504, "{}", r.text());
    assert!(
        r.text().contains("did not finish within its timeout of 2s"),
        "{}",
        r.text()
    );
    assert!(took < Duration::from_secs(4), "{took:?}");
    assert_eq!(
        get(&url("count")).await.text(),
        "1",
        "a fresh instance after the timeout"
    );

    // A global buffer grows until the memory limit: that instance is retired, and the
    // next request succeeds on a fresh one.
    let mut failed = None;
    for i in 0..20 {
        let r = get(&url("leak")).await;
        if r.status != 200 {
            failed = Some((i, r));
            break;
        }
    }
    let (_, r) = failed.expect("the leak hit the memory limit");
    assert_eq!(r.status, 500);
    assert!(
        r.text().contains("exceeded its memory limit of 32.0 MiB"),
        "{}",
        r.text()
    );
    let r = get(&url("leak")).await;
    assert_eq!(r.status, 200);
    assert!(r.text().starts_with("holding 4 MiB"), "{}", r.text());

    // A guest that traps on every tenth request: the other nine answer.
    one_more_idle(&skiff, "bad").await; // the leaky instance goes
    let mut statuses = Vec::new();
    for _ in 0..20 {
        statuses.push(get(&url("flaky")).await.status);
    }
    let ok = statuses.iter().filter(|s| **s == 200).count();
    assert_eq!(ok, 18, "{statuses:?}");
    assert_eq!(statuses[9], 500, "{statuses:?}");

    let m = get(&format!("{}/metrics", skiff.admin)).await.text();
    for reason in ["timeout", "memory", "trap"] {
        let n = metric(
            &m,
            "skiff_instances_retired_total",
            "bad",
            &format!("reason=\"{reason}\""),
        );
        assert!(n >= 1.0, "no instance retired for {reason}:\n{m}");
    }
    assert!(metric(&m, "skiff_invocations_total", "bad", "outcome=\"timeout\"") >= 1.0);

    // A trap retires the instance: the request that trapped and the one it was serving
    // at once both get 500 saying so, at once, not at the other's deadline.
    // (The flaky instance trapped on its 20th request: the next request makes a fresh one.)
    let waiting = tokio::spawn({
        let u = url("hang");
        async move {
            let t = Instant::now();
            (get(&u).await, t.elapsed())
        }
    });
    // Time for the hanging request to reach its instance (no metric tells that apart
    // from admission).
    tokio::time::sleep(Duration::from_millis(200)).await;
    let r = get(&url("boom")).await;
    assert_eq!(r.status, 500, "{}", r.text());
    assert!(
        r.text().contains("its instance was retired"),
        "{}",
        r.text()
    );
    let (r, took) = waiting.await.unwrap();
    assert_eq!(r.status, 500, "{}", r.text());
    assert!(
        r.text()
            .contains("the requests it was serving at once failed with it"),
        "{}",
        r.text()
    );
    assert!(took < Duration::from_millis(1500), "{took:?}");
    assert_eq!(get(&url("count")).await.text(), "1");
    skiff.assert_hello_serves().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn p3_outgoing_http_follows_the_allowlist() {
    let _gate = crate::gate::beside_others().await;
    let skiff = Skiff::start(&[]);
    let tmp = tempfile::tempdir().unwrap();
    let origin = upstream().await;
    deploy_p3(
        &skiff,
        tmp.path(),
        "out3",
        &format!("allowed_outbound_hosts = [\"{origin}\"]\n"),
    );
    let fetch = async |url: &str| get(&format!("{}/out3/fetch/{}", skiff.listen, enc(url))).await;
    let r = fetch(&format!("{origin}/pong")).await;
    assert_eq!((r.status, r.text()), (200, "200 pong".to_string()));
    // Another port on the same host, and the admin API, are not on the list.
    for denied in [
        format!("{}/hello/", skiff.listen),
        format!("{}/v1/status", skiff.admin),
    ] {
        let r = fetch(&denied).await;
        assert!(
            r.text().contains("HttpRequestDenied"),
            "{denied}: {}",
            r.text()
        );
    }
    let m = get(&format!("{}/metrics", skiff.admin)).await.text();
    assert_eq!(
        metric(
            &m,
            "skiff_outbound_requests_total",
            "out3",
            "outcome=\"sent\""
        ),
        1.0
    );
    assert_eq!(
        metric(
            &m,
            "skiff_outbound_requests_total",
            "out3",
            "outcome=\"denied\""
        ),
        2.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_instances_settings_are_refused_with_the_limit_named() {
    let _gate = crate::gate::beside_others().await;
    let skiff = Skiff::start(&["--max-instance-reuse", "500"]);
    let tmp = tempfile::tempdir().unwrap();
    let p2 = guest("tests/guests", "misbehave.wasm");
    let p3 = guest("tests/guests", "p3guest.wasm");
    let cases = [
        (
            "p2conc",
            &p2,
            "[instances]\nconcurrency = 4\n",
            vec!["concurrency = 4", "needs a wasi:http 0.3 component"],
        ),
        (
            "p3reuse",
            &p3,
            "[instances]\nreuse = 1000\n",
            vec!["[instances] reuse = 1000", "maximum of 500"],
        ),
        (
            "p3conc",
            &p3,
            "[instances]\nconcurrency = 100\n",
            vec!["[instances] concurrency = 100", "maximum of 64"],
        ),
        (
            "zero",
            &p3,
            "[instances]\nreuse = 0\n",
            vec!["reuse must be at least 1"],
        ),
        ("unknown", &p3, "[instances]\nreuses = 3\n", vec!["reuses"]),
    ];
    for (name, wasm, extra, wants) in cases {
        let manifest = format!(
            "name = \"{name}\"\ncomponent = \"{}\"\n{extra}",
            wasm.display()
        );
        let dir = function_dir(tmp.path(), name, &manifest);
        let err = skiff.cli_err(&["deploy", dir.to_str().unwrap(), "--no-build"]);
        for want in wants {
            assert!(err.contains(want), "{name}: `{want}` not in: {err}");
        }
    }
    // A 0.3 component importing what Skiff does not provide: the error names the import.
    let manifest = format!(
        "name = \"needs\"\ncomponent = \"{}\"\n",
        guest("tests/guests", "p3import.wasm").display()
    );
    let dir = function_dir(tmp.path(), "needs", &manifest);
    let err = skiff.cli_err(&["deploy", dir.to_str().unwrap(), "--no-build"]);
    assert!(
        err.contains("imports `example:missing/oracle#ask`, which Skiff does not provide"),
        "{err}"
    );
    deploy_p3(
        &skiff,
        tmp.path(),
        "good",
        "[instances]\nreuse = 500\nconcurrency = 2\nidle = \"5s\"\n",
    );
    assert_eq!(
        get(&format!("{}/good/count", skiff.listen)).await.text(),
        "1"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn p3_components_answer_through_the_scheduler() {
    let _gate = crate::gate::beside_others().await;
    let tmp = tempfile::tempdir().unwrap();
    let nats = NatsServer::start(&tmp.path().join("nats")).expect("nats");
    let sched = Skiff::scheduler(&nats.url(), &[]);
    let _node = Skiff::node(&tmp.path().join("n1"), &nats.url(), "n1", &[]);
    let hello = repo().join("functions/hello");
    sched.cli_ok(&["deploy", hello.to_str().unwrap(), "--no-build"]);
    deploy_spin(&sched, tmp.path());
    let r = get(&format!("{}/spinhello/", sched.listen)).await;
    assert_eq!((r.status, r.text().as_str()), (200, "Hello, Spin"));
    let r = get(&format!("{}/hello/through", sched.listen)).await;
    assert_eq!(r.text(), "Hello from Skiff! You asked for /hello/through\n");
    let ls = sched.cli_ok(&["ls"]);
    assert!(ls.contains("wasi:http 0.3"), "{ls}");
}

#[tokio::test(flavor = "multi_thread")]
async fn event_deliveries_follow_the_instance_policy() {
    let _gate = crate::gate::beside_others().await;
    let skiff = Skiff::start(&[]);
    let tmp = tempfile::tempdir().unwrap();
    deploy_p3(
        &skiff,
        tmp.path(),
        "reused",
        "[instances]\nidle = \"30s\"\n[[events]]\ntopic = \"ticks.reused\"\nconcurrency = 1\n",
    );
    deploy_p3(
        &skiff,
        tmp.path(),
        "fresh",
        "[instances]\nreuse = 1\n[[events]]\ntopic = \"ticks.fresh\"\nconcurrency = 1\n",
    );
    for _ in 0..5 {
        skiff.cli_ok(&["publish", "ticks.reused", "x"]);
        skiff.cli_ok(&["publish", "ticks.fresh", "x"]);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let m = get(&format!("{}/metrics", skiff.admin)).await.text();
        let acked = |f: &str| metric(&m, "skiff_events_acked_total", f, "");
        if acked("reused") >= 5.0 && acked("fresh") >= 5.0 {
            assert!(
                metric(&m, "skiff_instances_reused_total", "reused", "") >= 4.0,
                "{m}"
            );
            assert_eq!(metric(&m, "skiff_instances_reused_total", "fresh", ""), 0.0);
            break;
        }
        assert!(Instant::now() < deadline, "deliveries did not finish:\n{m}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // One instance saw all five deliveries; the fresh ones each saw one.
    assert_eq!(
        get(&format!("{}/reused/last", skiff.listen)).await.text(),
        "5"
    );
    assert_eq!(
        get(&format!("{}/fresh/last", skiff.listen)).await.text(),
        "1"
    );
}

/// `wasmtime serve` 48.0.8 on `component`, on a free loopback port (installed by
/// tests/setup.sh, or named by `SKIFF_WASMTIME`).
struct WasmtimeServe {
    child: std::process::Child,
    url: String,
}

impl WasmtimeServe {
    fn start(component: &Path) -> WasmtimeServe {
        use std::io::BufRead;
        let bin = std::env::var_os("SKIFF_WASMTIME")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| {
                let home = std::env::var_os("HOME").expect("HOME");
                Path::new(&home).join(".cache/skiff-bench/wasmtime-48.0.8/bin/wasmtime")
            });
        assert!(
            bin.exists(),
            "wasmtime 48.0.8 is not at {}: run `bash tests/setup.sh` (or set SKIFF_WASMTIME)",
            bin.display()
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let mut child = std::process::Command::new(&bin)
            .args(["serve", "--addr", &addr, "-Scli"])
            .arg(component)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start wasmtime serve");
        let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
        loop {
            let line = lines.next().expect("wasmtime serve exited").unwrap();
            if line.contains("Serving HTTP") {
                break;
            }
        }
        std::thread::spawn(move || for _ in lines {});
        WasmtimeServe {
            child,
            url: format!("http://{addr}"),
        }
    }
}

impl Drop for WasmtimeServe {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn answers_equal_wasmtime_serves_for_the_same_components() {
    let _gate = crate::gate::beside_others().await;
    let skiff = Skiff::start(&[]);
    let tmp = tempfile::tempdir().unwrap();
    let hello = repo().join("functions/hello");
    skiff.cli_ok(&["deploy", hello.to_str().unwrap(), "--no-build"]);
    deploy_spin(&skiff, tmp.path());
    for name in ["hello02", "echo03"] {
        let manifest = format!(
            "name = \"{name}\"\ncomponent = \"{}\"\n[limits]\nbody = \"16MiB\"\n",
            guest("tests/guests", &format!("{name}.wasm")).display()
        );
        let dir = function_dir(tmp.path(), name, &manifest);
        skiff.cli_ok(&["deploy", dir.to_str().unwrap(), "--no-build"]);
    }
    let cases = [
        (guest("functions", "hello.wasm"), "/hello/same?x=1"),
        (guest("tests/guests", "hello02.wasm"), "/hello02/same"),
        (guest("tests/guests", "spinhello.wasm"), "/spinhello/"),
    ];
    for (wasm, path) in &cases {
        let peer = WasmtimeServe::start(wasm);
        let ours = get(&format!("{}{path}", skiff.listen)).await;
        let theirs = get(&format!("{}{path}", peer.url)).await;
        assert_eq!(
            (ours.status, &ours.body),
            (theirs.status, &theirs.body),
            "{path}"
        );
        assert_eq!(
            ours.headers.get("content-type"),
            theirs.headers.get("content-type"),
            "{path}"
        );
    }
    // A multi-megabyte body streamed through a 0.3 echo, both ways.
    let peer = WasmtimeServe::start(&guest("tests/guests", "echo03.wasm"));
    let big: Vec<u8> = (0..6_000_000u32).map(|i| (i * 13 % 251) as u8).collect();
    for base in [&skiff.listen, &peer.url] {
        let r = request(
            "POST",
            &format!("{base}/echo03/x"),
            &[],
            Bytes::from(big.clone()),
        )
        .await;
        assert_eq!(r.status, 200, "{base}");
        assert!(r.body == big, "{base}: {} bytes back", r.body.len());
    }
}
