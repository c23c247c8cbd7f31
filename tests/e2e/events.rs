//! Event triggers and workflows, each test on both backends (the embedded bus and a real
//! nats-server with JetStream): the order workflow end to end, retries, dead letters and
//! replay, publish-on-success, bad input, a SIGKILL in the middle of a thousand orders,
//! and NATS unreachable at start or lost while running.

use crate::harness::*;
use bytes::Bytes;
use skiff_core::testkit::NatsServer;
use std::sync::Arc;
use std::time::Duration;

/// Which event bus a test runs on.
#[derive(Clone, Copy, Debug)]
enum Backend {
    Embedded,
    Nats,
}

/// The services a test's `skiff up` talks to.
struct Env {
    nats: Option<NatsServer>,
    _dir: tempfile::TempDir,
}

impl Env {
    fn new(b: Backend) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let nats = match b {
            Backend::Embedded => None,
            Backend::Nats => {
                Some(NatsServer::start(&dir.path().join("nats")).expect("nats-server"))
            }
        };
        Env { nats, _dir: dir }
    }

    fn args(&self) -> Vec<String> {
        match &self.nats {
            Some(n) => vec!["--nats".into(), n.url()],
            None => Vec::new(),
        }
    }

    fn start(&self) -> Skiff {
        let args = self.args();
        Skiff::start(&args.iter().map(String::as_str).collect::<Vec<_>>())
    }

    fn start_in(&self, data: &std::path::Path) -> Skiff {
        let args = self.args();
        Skiff::start_in(data, &args.iter().map(String::as_str).collect::<Vec<_>>())
    }
}

/// Runs `$name(Backend)` as two tests, `$name::embedded` and `$name::nats`.
macro_rules! on_both_backends {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread")]
            async fn embedded() {
                let _gate = crate::gate::beside_others().await;
                super::$name(super::Backend::Embedded).await
            }

            #[tokio::test(flavor = "multi_thread")]
            async fn nats() {
                let _gate = crate::gate::beside_others().await;
                super::$name(super::Backend::Nats).await
            }
        }
    };
}

on_both_backends!(a_thousand_orders_all_reach_notified_with_one_charge);
on_both_backends!(retries_dead_letters_and_replay);
on_both_backends!(events_are_published_only_by_invocations_that_succeed);
on_both_backends!(sigkill_in_the_middle_of_a_thousand_orders_loses_nothing);

fn deploy_orders(skiff: &Skiff) {
    let dir = repo().join("functions/orders");
    skiff.cli_ok(&["deploy", dir.to_str().unwrap(), "--no-build"]);
}

/// Deploys the misbehave guest as `name` with a trigger on `pattern`.
fn deploy_flaky(skiff: &Skiff, tmp: &std::path::Path, name: &str, pattern: &str) {
    deploy_misbehave(
        skiff,
        tmp,
        name,
        &format!("[[events]]\ntopic = \"{pattern}\"\nmax_attempts = 3\nbackoff = \"50ms\"\n"),
    );
}

fn runs(skiff: &Skiff, needle: &str) -> usize {
    skiff.log().matches(needle).count()
}

/// POSTs `n` orders (ids `{prefix}{i}`) with `conns` concurrent clients; returns how
/// many were acknowledged (201).
async fn post_orders(listen: &str, prefix: &str, n: usize, conns: usize) -> usize {
    let acked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    post_orders_counting(listen, prefix, n, conns, acked).await
}

/// [`post_orders`], counting acknowledgements into `acked` as they come.
async fn post_orders_counting(
    listen: &str,
    prefix: &str,
    n: usize,
    conns: usize,
    acked: Arc<std::sync::atomic::AtomicUsize>,
) -> usize {
    let c = Arc::new(client());
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let (c, next, acked) = (c.clone(), next.clone(), acked.clone());
        let (url, prefix) = (format!("{listen}/orders"), prefix.to_string());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= n {
                    return;
                }
                let body = format!("{{\"id\": \"{prefix}{i}\", \"amount\": {i}}}");
                let req = http::Request::post(&url)
                    .body(crate::harness::body(body))
                    .unwrap();
                if let Ok(r) = send(&c, req).await
                    && r.status == 201
                {
                    acked.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    acked.load(std::sync::atomic::Ordering::Relaxed)
}

/// Waits until every order `{prefix}0..n` is `notified`; returns the ones that are not,
/// with what they show.
async fn unfinished(listen: &str, prefix: &str, n: usize, max: Duration) -> Vec<String> {
    let c = client();
    let start = std::time::Instant::now();
    let mut pending: Vec<usize> = (0..n).collect();
    let mut last = Vec::new();
    while !pending.is_empty() && start.elapsed() < max {
        last.clear();
        let mut still = Vec::new();
        for i in pending {
            let req = http::Request::get(format!("{listen}/orders/{prefix}{i}"))
                .body(crate::harness::body(Bytes::new()))
                .unwrap();
            let ok = match send(&c, req).await {
                Ok(r) if r.status == 200 => {
                    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
                    if v["status"] == "notified" && v["charges"] == 1 {
                        true
                    } else {
                        last.push(format!("{prefix}{i}: {v}"));
                        v["status"] == "notified"
                    }
                }
                Ok(r) => {
                    last.push(format!("{prefix}{i}: HTTP {}", r.status));
                    false
                }
                Err(e) => {
                    last.push(format!("{prefix}{i}: {e}"));
                    false
                }
            };
            if !ok {
                still.push(i);
            }
        }
        pending = still;
        if !pending.is_empty() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    last
}

async fn a_thousand_orders_all_reach_notified_with_one_charge(b: Backend) {
    let env = Env::new(b);
    let skiff = env.start();
    deploy_orders(&skiff);
    assert_eq!(post_orders(&skiff.listen, "o", 1000, 32).await, 1000);
    let bad = unfinished(&skiff.listen, "o", 1000, Duration::from_secs(60)).await;
    assert!(
        bad.is_empty(),
        "{} orders unfinished or charged twice, e.g. {:?}",
        bad.len(),
        &bad[..bad.len().min(5)]
    );
    // A repeated POST neither resets the order nor publishes again.
    let r = request(
        "POST",
        &format!("{}/orders", skiff.listen),
        &[],
        Bytes::from_static(b"{\"id\": \"o7\", \"amount\": 7}"),
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(r.text().contains("notified"), "{}", r.text());
}

async fn retries_dead_letters_and_replay(b: Backend) {
    let env = Env::new(b);
    let skiff = env.start();
    let tmp = tempfile::tempdir().unwrap();
    deploy_flaky(&skiff, tmp.path(), "flaky", "flaky.>");
    // Dead letters are also announced as events; a second function listens for them.
    deploy_flaky(&skiff, tmp.path(), "watcher", "deadletters.flaky");

    // Fails twice, then succeeds: exactly three runs, and no dead letter.
    let out = skiff.cli_ok(&["publish", "flaky.fail-twice", "payload"]);
    let id = out.split_whitespace().nth(1).unwrap().to_string();
    let needle = format!("topic=flaky.fail-twice id={id}");
    assert!(
        wait_until(Duration::from_secs(10), async || runs(
            &skiff,
            &format!("{needle} attempt=3")
        ) == 1)
        .await,
        "third attempt never ran:\n{}",
        skiff.log()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(runs(&skiff, &needle), 3, "{}", skiff.log());

    // Always fails: dead-lettered after max_attempts (3), listed, shown, replayed.
    let out = skiff.cli_ok(&["publish", "flaky.always", "{\"n\": 1}"]);
    let dead_id = out.split_whitespace().nth(1).unwrap().to_string();
    let listed = wait_until(Duration::from_secs(10), async || {
        skiff
            .cli_ok(&["dead-letters", "ls", "flaky"])
            .contains(&dead_id)
    })
    .await;
    assert!(listed, "never dead-lettered:\n{}", skiff.log());
    let needle = format!("topic=flaky.always id={dead_id}");
    assert_eq!(runs(&skiff, &needle), 3);
    assert!(
        wait_until(Duration::from_secs(10), async || runs(
            &skiff,
            "topic=deadletters.flaky"
        ) >= 1)
        .await,
        "the dead letter was not announced on deadletters.flaky"
    );
    let show = skiff.cli_ok(&["dead-letters", "show", "flaky", &dead_id]);
    assert!(
        show.contains("attempts: 3")
            && show.contains("always fails")
            && show.contains("{\"n\": 1}"),
        "{show}"
    );
    let out = skiff.cli_ok(&["dead-letters", "replay", "flaky", &dead_id]);
    assert!(out.contains("replayed 1"), "{out}");
    assert!(
        wait_until(Duration::from_secs(10), async || runs(&skiff, &needle) >= 6).await,
        "replay did not run the handler again:\n{}",
        skiff.log()
    );
    assert!(
        wait_until(Duration::from_secs(10), async || skiff
            .cli_ok(&["dead-letters", "ls", "flaky"])
            .contains(&dead_id))
        .await
    );
    let err = skiff.cli_err(&["dead-letters", "replay", "flaky", "no-such-event"]);
    assert!(err.contains("no dead letter `no-such-event`"), "{err}");

    // A trapping handler is retried like a failing one, and the node keeps serving.
    let out = skiff.cli_ok(&["publish", "flaky.trap", "x"]);
    let trap_id = out.split_whitespace().nth(1).unwrap().to_string();
    assert!(
        wait_until(Duration::from_secs(10), async || skiff
            .cli_ok(&["dead-letters", "ls", "flaky"])
            .contains(&trap_id))
        .await
    );
    let r = get(&format!("{}/flaky/size", skiff.listen)).await;
    assert_eq!(r.status, 200);
}

async fn events_are_published_only_by_invocations_that_succeed(b: Backend) {
    let env = Env::new(b);
    let skiff = env.start();
    let tmp = tempfile::tempdir().unwrap();
    deploy_flaky(&skiff, tmp.path(), "listener", "outcome.*");
    let r = request(
        "POST",
        &format!("{}/listener/publish-then-trap/outcome.lost", skiff.listen),
        &[],
        Bytes::from_static(b"x"),
    )
    .await;
    assert_eq!(r.status, 500);
    let r = request(
        "POST",
        &format!("{}/listener/publish/outcome.kept", skiff.listen),
        &[],
        Bytes::from_static(b"x"),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        wait_until(Duration::from_secs(10), async || runs(
            &skiff,
            "topic=outcome.kept"
        ) == 1)
        .await
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        runs(&skiff, "topic=outcome.lost"),
        0,
        "an event of a failed invocation was delivered"
    );

    // Bad publications get clear errors.
    let r = request(
        "POST",
        &format!("{}/listener/publish/bad..topic", skiff.listen),
        &[],
        Bytes::new(),
    )
    .await;
    assert_eq!(r.status, 400);
    assert!(
        r.text().contains("invalid topic `bad..topic`"),
        "{}",
        r.text()
    );
    let err = skiff.cli_err(&["publish", "orders.*", "x"]);
    assert!(err.contains("wildcards"), "{err}");
    let big = tmp.path().join("big");
    std::fs::write(&big, vec![b'x'; (1 << 20) + 1]).unwrap();
    let err = skiff.cli_err(&["publish", "outcome.big", &format!("@{}", big.display())]);
    assert!(err.contains("exceeds"), "{err}");
    let r = request(
        "POST",
        &format!("{}/listener/publish/outcome.big", skiff.listen),
        &[],
        Bytes::from(vec![b'x'; (1 << 20) + 1]),
    )
    .await;
    assert!(r.text().contains("the limit is"), "{}", r.text());

    // A function whose manifest has triggers must export an event handler.
    let dir = function_dir(
        tmp.path(),
        "no-events",
        &format!(
            "name = \"no-events\"\ncomponent = \"{}\"\n[[events]]\ntopic = \"a.b\"\n",
            guest("functions", "hello.wasm").display()
        ),
    );
    let err = skiff.cli_err(&["deploy", dir.to_str().unwrap(), "--no-build"]);
    assert!(
        err.contains("does not export skiff:function/event-handler"),
        "{err}"
    );
}

async fn sigkill_in_the_middle_of_a_thousand_orders_loses_nothing(b: Backend) {
    let env = Env::new(b);
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut skiff = env.start_in(&data);
    deploy_orders(&skiff);
    let listen = skiff.listen.clone();
    let so_far = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = so_far.clone();
    let posting =
        tokio::spawn(async move { post_orders_counting(&listen, "k", 1000, 16, counter).await });
    // Kill while orders are still arriving and the workflow is mid-flight: once 200 of
    // the 1000 have been acknowledged.
    assert!(
        wait_until(Duration::from_secs(60), async || {
            so_far.load(std::sync::atomic::Ordering::Relaxed) >= 200
        })
        .await,
        "orders never got going"
    );
    skiff.kill();
    let acked = posting.await.unwrap();
    assert!(
        acked > 0 && acked < 1000,
        "the kill should land mid-run (acked {acked})"
    );

    let skiff = env.start_in(&data);
    // Orders the client never got an answer for may or may not exist; post them again.
    let c = client();
    for i in 0..1000 {
        let body = format!("{{\"id\": \"k{i}\", \"amount\": {i}}}");
        let req = http::Request::post(format!("{}/orders", skiff.listen))
            .body(crate::harness::body(body))
            .unwrap();
        let r = send(&c, req).await.expect("post after restart");
        assert!(r.status == 200 || r.status == 201, "{}", r.text());
    }
    let bad = unfinished(&skiff.listen, "k", 1000, Duration::from_secs(90)).await;
    assert!(
        bad.is_empty(),
        "{} orders unfinished or charged twice, e.g. {:?}",
        bad.len(),
        &bad[..bad.len().min(5)]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn nats_unreachable_at_start_serves_and_joins_when_it_answers() {
    let _gate = crate::gate::beside_others().await;
    let dir = tempfile::tempdir().unwrap();
    let port = skiff_core::testkit::free_port().unwrap();
    let url = format!("nats://127.0.0.1:{port}");
    // Nothing listens there: Skiff starts anyway, and says why events wait.
    let skiff = Skiff::start_in(&dir.path().join("data"), &["--nats", &url]);
    assert!(
        skiff
            .log()
            .contains(&format!("cannot connect to NATS at {url}")),
        "{}",
        skiff.log()
    );
    let hello = repo().join("functions/hello");
    skiff.cli_ok(&["deploy", hello.to_str().unwrap(), "--no-build"]);
    skiff.assert_hello_serves().await;
    let orders = repo().join("functions/orders");
    let err = skiff.cli_err(&["deploy", orders.to_str().unwrap(), "--no-build"]);
    assert!(
        err.contains("serves HTTP") && err.contains("NATS has not answered"),
        "{err}"
    );

    // NATS comes up where Skiff looks for it: the triggers start on their own.
    let _nats = NatsServer::start_on(&dir.path().join("nats"), port).expect("nats");
    let started = wait_until(Duration::from_secs(30), async || {
        skiff.log().contains("event triggers started")
    })
    .await;
    assert!(started, "{}", skiff.log());
    assert_eq!(post_orders(&skiff.listen, "late", 20, 4).await, 20);
    let left = unfinished(&skiff.listen, "late", 20, Duration::from_secs(30)).await;
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn nats_lost_while_running_keeps_serving_and_delivers_once_back() {
    let _gate = crate::gate::beside_others().await;
    let mut env = Env::new(Backend::Nats);
    let skiff = env.start();
    deploy_orders(&skiff);
    assert_eq!(post_orders(&skiff.listen, "before", 20, 4).await, 20);
    assert!(
        unfinished(&skiff.listen, "before", 20, Duration::from_secs(30))
            .await
            .is_empty()
    );

    env.nats.as_mut().unwrap().kill();
    // HTTP keeps working, and orders are acknowledged: their events wait locally.
    assert_eq!(post_orders(&skiff.listen, "during", 50, 4).await, 50);
    let r = get(&format!("{}/orders/during7", skiff.listen)).await;
    assert!(r.text().contains("created"), "{}", r.text());

    env.nats.as_mut().unwrap().restart().unwrap();
    let bad = unfinished(&skiff.listen, "during", 50, Duration::from_secs(60)).await;
    assert!(
        bad.is_empty(),
        "{} orders stuck after NATS came back, e.g. {:?}",
        bad.len(),
        &bad[..bad.len().min(5)]
    );
}
