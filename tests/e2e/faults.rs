//! Faults of the control plane: a node and a scheduler started while NATS is down serve
//! what they knew, and join on their own when NATS returns.

use crate::cluster::{node, one_at_a_time, small_cluster};
use crate::harness::*;
use skiff_core::cluster_registry::ClusterRegistry;
use skiff_core::control::ControlStore;
use skiff_core::record::FunctionRecord;
use skiff_core::testkit::NatsServer;
use std::path::Path;
use std::time::{Duration, Instant};

/// The cluster registry in the NATS at `url`, opened directly (behind the scheduler's
/// checks) with the scheduler's credentials.
async fn registry(url: &str) -> ClusterRegistry {
    let client = skiff_core::nats::connect(url, "test", &operator_auth())
        .await
        .unwrap();
    ClusterRegistry::open(&async_nats::jetstream::new(client), 1)
        .await
        .unwrap()
}

/// `record` signed with the scheduler's key, as the scheduler would write it.
fn signed(mut record: FunctionRecord) -> FunctionRecord {
    skiff_core::signing::RecordSigner::load(&cluster_keys().signing_key)
        .unwrap()
        .sign(&mut record);
    record
}

/// How soon a server started without NATS must serve.
const SERVES_WITHIN: Duration = Duration::from_secs(2);

/// Polls `url` until it answers `status`; answers how long that took from `since`.
async fn until_status(url: &str, status: u16, since: Instant, max: Duration) -> (Duration, Resp) {
    loop {
        let r = get(url).await;
        if r.status == status || since.elapsed() > max {
            assert_eq!(r.status, status, "{url}: {}", r.text());
            return (since.elapsed(), r);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn version(r: &Resp) -> String {
    r.headers
        .get("x-skiff-version")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

/// The scheduler's view file once it names `node` and `functions`.
async fn view_with(dir: &Path, node: &str, functions: &[&str]) -> String {
    let mut text = String::new();
    let found = wait_until(Duration::from_secs(10), async || {
        text = std::fs::read_to_string(dir.join("view.json")).unwrap_or_default();
        text.contains(node) && functions.iter().all(|f| text.contains(f))
    })
    .await;
    assert!(
        found,
        "the scheduler's view never named {node} and {functions:?}: {text}"
    );
    text
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_and_a_scheduler_started_while_nats_is_down_serve_and_join_when_it_returns() {
    let _one = one_at_a_time().await;
    let tmp = tempfile::tempdir().unwrap();
    let mut nats = NatsServer::start(&tmp.path().join("nats")).expect("nats");
    let url = nats.url();
    let view_dir = tmp.path().join("scheduler");
    let view_arg = ["--data-dir", view_dir.to_str().unwrap()];
    let mut scheduler = Skiff::scheduler(&url, &view_arg);
    let mut n1 = node(tmp.path(), &url, "n1", &[]);
    for f in ["hello", "counter"] {
        let dir = repo().join("functions").join(f);
        scheduler.cli_ok(&["deploy", dir.to_str().unwrap(), "--no-build", "--wait-all"]);
    }
    for want in 1..=3 {
        let r = request(
            "POST",
            &format!("{}/counter/c", scheduler.listen),
            &[],
            "".into(),
        )
        .await;
        assert_eq!((r.status, r.text()), (200, want.to_string()));
    }
    view_with(&view_dir, "n1", &["hello", "counter"]).await;

    // The scheduler restarts while NATS is down: it routes with its last view at once.
    scheduler.kill();
    nats.kill();
    let started = Instant::now();
    let scheduler = Skiff::scheduler(&url, &view_arg);
    let hello = format!("{}/hello/outage", scheduler.listen);
    let (took, r) = until_status(&hello, 200, started, Duration::from_secs(10)).await;
    assert!(
        took < SERVES_WITHIN,
        "the scheduler took {took:?} to serve without NATS:\n{}",
        scheduler.log()
    );
    assert_eq!(r.headers.get("x-skiff-node").unwrap(), "n1");
    println!("scheduler started without NATS served in {took:?}");
    let err = scheduler.cli_err(&["ls"]);
    assert!(err.contains("NATS") && err.contains("unreachable"), "{err}");

    // It probes the node directly: a killed node stops being routed to.
    let (listen, admin) = (n1.listen.clone(), n1.admin.clone());
    n1.kill();
    let killed = Instant::now();
    let (took, _) = until_status(&hello, 503, killed, Duration::from_secs(5)).await;
    println!("scheduler without NATS stopped routing to a killed node in {took:?}");

    // The node restarts while NATS is down, where it listened before: it serves its last
    // known functions at once, reads its copy of the state, and refuses writes clearly.
    let started = Instant::now();
    let data = tmp.path().join("n1");
    let n1 = Skiff::spawn_at(
        &[
            "node",
            "--nats",
            &url,
            "--name",
            "n1",
            "--data-dir",
            data.to_str().unwrap(),
        ],
        listen.trim_start_matches("http://"),
        admin.trim_start_matches("http://"),
    );
    let (took, _) = until_status(
        &format!("{}/hello/back", n1.listen),
        200,
        started,
        Duration::from_secs(10),
    )
    .await;
    assert!(
        took < SERVES_WITHIN,
        "the node took {took:?} to serve without NATS:\n{}",
        n1.log()
    );
    println!("node started without NATS served in {took:?}");
    let r = get(&format!("{}/counter/c", n1.listen)).await;
    assert_eq!((r.status, r.text()), (200, "3".to_string()));
    let err = n1.cli_err(&["kv", "set", "counter", "c", "9"]);
    assert!(err.contains("NATS") && err.contains("not applied"), "{err}");
    // ... and the scheduler finds it again by probing.
    let again = Instant::now();
    let (took, r) = until_status(&hello, 200, again, Duration::from_secs(5)).await;
    assert_eq!(r.headers.get("x-skiff-node").unwrap(), "n1");
    println!("scheduler without NATS took a restarted node back in {took:?}");

    // NATS returns: both join on their own. Writes go through, deploys reach the node.
    nats.restart().expect("restart nats");
    let counter = format!("{}/counter/c", scheduler.listen);
    let mut last = String::new();
    let wrote = wait_until(Duration::from_secs(30), async || {
        let r = request("POST", &counter, &[], "".into()).await;
        last = format!("{} {}", r.status, r.text());
        r.status == 200
    })
    .await;
    assert!(
        wrote,
        "no write succeeded after NATS came back: {last}\n{}",
        n1.log()
    );
    assert_eq!(last, "200 4", "increments were lost or doubled");
    let hello_dir = repo().join("functions/hello");
    let deployed = wait_until(Duration::from_secs(30), async || {
        scheduler
            .cli(&[
                "deploy",
                hello_dir.to_str().unwrap(),
                "--no-build",
                "--wait-all",
            ])
            .status
            .success()
    })
    .await;
    assert!(
        deployed,
        "no deploy succeeded after NATS came back:\n{}",
        scheduler.log()
    );
    let r = get(&hello).await;
    assert_eq!(version(&r), "2", "{:?}", r.headers);
    let status = scheduler.cli_ok(&["status"]);
    assert!(status.contains("1 live node(s)"), "{status}");

    // A node never goes back to an older version, whatever the registry says.
    let registry = registry(&url).await;
    let mut old = registry.record("hello").await.unwrap().expect("hello v2");
    old.version = 1;
    registry.put(&signed(old)).await.unwrap();
    let mut report = String::new();
    let refused = wait_until(Duration::from_secs(10), async || {
        report = get(&format!("{}/v1/report", n1.admin)).await.text();
        report.contains("never goes back")
    })
    .await;
    assert!(
        refused,
        "the node did not refuse v1 after serving v2: {report}"
    );
    assert_eq!(version(&get(&format!("{}/hello/x", n1.listen)).await), "2");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stored_route_conflict_is_named_and_the_first_function_keeps_its_route() {
    let _one = one_at_a_time().await;
    let c = small_cluster(&["n1"]);
    let (url, scheduler, n1) = (&c.url, &c.scheduler, &c.nodes[0]);

    // A record that claims hello's route, put into the registry behind the deploy checks
    // (as a registry written by another tool, or restored from a backup, could hold).
    let registry = registry(url).await;
    let mut twin = registry.record("hello").await.unwrap().expect("hello");
    twin.name = "twin".into();
    // hello's manifest names its route (`/hello/...`) explicitly.
    twin.manifest = twin.manifest.replace("name = \"hello\"", "name = \"twin\"");
    registry.put(&signed(twin)).await.unwrap();

    // Neither side drops it silently: the node refuses it by name, the scheduler logs it,
    // and hello keeps its route.
    let mut report = String::new();
    let refused = wait_until(Duration::from_secs(10), async || {
        report = get(&format!("{}/v1/report", n1.admin)).await.text();
        report.contains("twin") && report.contains("/hello/...")
    })
    .await;
    assert!(
        refused,
        "the node did not report the conflicting record: {report}"
    );
    let logged = wait_until(Duration::from_secs(5), async || {
        scheduler.log().contains("stored route conflicts")
    })
    .await;
    assert!(
        logged,
        "the scheduler did not name the conflict:\n{}",
        scheduler.log()
    );
    let r = get(&format!("{}/hello/still", scheduler.listen)).await;
    assert_eq!(r.status, 200, "{}", r.text());
}
