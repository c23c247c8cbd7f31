//! Schedules and delayed events end to end: `[[schedule]]` fires once per slot on a
//! three-node cluster (NATS message schedules) and on one `skiff up` (redb), through a
//! SIGKILL of the node running a fire, and after downtime by each catch-up policy;
//! delayed events arrive on time across a SIGKILL of the node that published them.
//!
//! The test function is `tests/guests/ticker`: each fire records its lateness, its count
//! and its attempt in kv under its slot (see its docs).

use crate::cluster::{Cluster, one_at_a_time};
use crate::harness::*;
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// The ticker guest's manifest: name, component, its trigger for delayed events, then
/// `extra`.
fn ticker_manifest(name: &str, extra: &str) -> String {
    format!(
        "name = \"{name}\"\ncomponent = \"{}\"\n[http]\nroute = \"/{name}/...\"\n[[events]]\ntopic = \"delayed.{name}\"\n{extra}",
        guest("tests/guests", "ticker.wasm").display()
    )
}

/// `url`'s answer, asked again while the scheduler forwards to a node that just died
/// (502 until it notices).
async fn answered(url: &str) -> Resp {
    let mut r = get(url).await;
    for _ in 0..50 {
        if r.status != 502 && r.status != 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        r = get(url).await;
    }
    r
}

/// `prefix`'d keys of `function`'s kv with their values, read through `admin`
/// (consistent reads: in a cluster, as last written anywhere).
async fn kv_map(admin: &str, function: &str, prefix: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut cursor: Option<u64> = None;
    loop {
        let mut url = format!("{admin}/v1/functions/{function}/kv?prefix={}", enc(prefix));
        if let Some(c) = cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let r = answered(&url).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let page: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        for key in page["keys"].as_array().unwrap() {
            let key = key.as_str().unwrap().to_string();
            let v = answered(&format!(
                "{admin}/v1/functions/{function}/kv/{}?consistent=true",
                enc(&key)
            ))
            .await;
            if v.status == 200 {
                out.insert(key, v.text());
            }
        }
        match page["cursor"].as_u64() {
            Some(c) => cursor = Some(c),
            None => return out,
        }
    }
}

/// Slot → value for keys `<what>/<index>/<slot>`.
async fn by_slot(admin: &str, function: &str, what: &str, index: usize) -> BTreeMap<u64, u64> {
    kv_map(admin, function, &format!("{what}/{index}/"))
        .await
        .into_iter()
        .filter_map(|(k, v)| Some((k.rsplit('/').next()?.parse().ok()?, v.parse().ok()?)))
        .collect()
}

/// When the ticker received delayed event `id` (waiting up to `wait`), and how often.
async fn arrival(admin: &str, id: &str, wait: Duration) -> (u64, u64) {
    let key = format!("got/{id}");
    let arrived = wait_until(wait, async || {
        !kv_map(admin, "ticker", &key).await.is_empty()
    })
    .await;
    assert!(arrived, "delayed event {id} never arrived");
    let at = kv_map(admin, "ticker", &key).await[&key].parse().unwrap();
    let count_key = format!("gotcount/{id}");
    let count = kv_map(admin, "ticker", &count_key).await[&count_key]
        .parse()
        .unwrap();
    (at, count)
}

/// Whether each of the ticker's first `schedules` schedules fired twice within `wait`.
async fn each_fired_twice(admin: &str, schedules: usize, wait: Duration) -> bool {
    wait_until(wait, async || {
        for i in 0..schedules {
            if by_slot(admin, "ticker", "fires", i).await.len() < 2 {
                return false;
            }
        }
        true
    })
    .await
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cluster_fires_each_slot_once_through_a_node_kill_and_delays_events() {
    let _one = one_at_a_time().await;
    let mut cluster = Cluster::start(3);
    let fns = cluster.tmp.path().join("fns");
    let admin = cluster.scheduler.admin.clone();
    // Every second, on all three nodes.
    let dir = function_dir(
        &fns,
        "ticker",
        &ticker_manifest("ticker", "[[schedule]]\nevery = \"1s\"\n"),
    );
    cluster
        .scheduler
        .cli_ok(&["deploy", dir.to_str().unwrap(), "--no-build", "--wait-all"]);
    assert!(
        wait_until(Duration::from_secs(15), async || !by_slot(
            &admin, "ticker", "fires", 0
        )
        .await
        .is_empty())
        .await,
        "no fire within 15 s; scheduler log:\n{}",
        cluster.scheduler.log()
    );
    let from = now_ms().div_ceil(1000) * 1000 + 1000;
    tokio::time::sleep(Duration::from_millis(from + 30_000 - now_ms() + 3_000)).await;
    let fires = by_slot(&admin, "ticker", "fires", 0).await;
    let window: Vec<(&u64, &u64)> = fires.range(from..from + 30_000).collect();
    assert!(
        (29..=31).contains(&window.len()),
        "{} fires in 30 s: {window:?}",
        window.len()
    );
    assert!(
        window.iter().all(|(_, n)| **n == 1),
        "a slot was handled twice: {window:?}"
    );
    let mut late: Vec<u64> = by_slot(&admin, "ticker", "late", 0)
        .await
        .range(from..from + 30_000)
        .map(|(_, v)| *v)
        .collect();
    late.sort();
    eprintln!(
        "cluster lateness over {} fires: p50 {} ms, p99 {} ms, max {} ms",
        late.len(),
        percentile(&late, 0.5),
        percentile(&late, 0.99),
        late[late.len() - 1]
    );
    // The listing shows it, with its last fire.
    let listing = cluster.scheduler.cli_ok(&["schedules"]);
    assert!(
        listing.contains("ticker") && listing.contains("every 1s") && listing.contains(" ok "),
        "{listing}"
    );

    // A fire that sleeps 2.5 s; SIGKILL the node running one: it completes once elsewhere.
    let dir = function_dir(
        &fns,
        "sleeper",
        &ticker_manifest(
            "sleeper",
            "[env]\nSLEEP_MS = \"2500\"\n[limits]\ntimeout = \"4s\"\n[[schedule]]\nevery = \"3s\"\nbackoff = \"100ms\"\n",
        ),
    );
    cluster
        .scheduler
        .cli_ok(&["deploy", dir.to_str().unwrap(), "--no-build", "--wait-all"]);
    let mut victim = None;
    let found = wait_until(Duration::from_secs(20), async || {
        for (i, n) in cluster.nodes.iter().enumerate() {
            let m = get(&format!("{}/metrics", n.admin)).await.text();
            if metric(&m, "skiff_in_flight_invocations", "sleeper", "") > 0.0 {
                victim = Some(i);
                return true;
            }
        }
        false
    })
    .await;
    assert!(found, "no node ran a sleeper fire");
    let victim = victim.unwrap();
    cluster.nodes[victim].kill();
    let killed_at = now_ms();
    // Its slot started (late/ is written first) and had not finished.
    let started = by_slot(&admin, "sleeper", "late", 0).await;
    let done = by_slot(&admin, "sleeper", "fires", 0).await;
    let cut: Vec<u64> = started
        .keys()
        .filter(|s| !done.contains_key(s))
        .copied()
        .collect();
    assert!(
        !cut.is_empty(),
        "no fire was cut: started {started:?}, done {done:?}"
    );
    let settled = wait_until(Duration::from_secs(25), async || {
        let done = by_slot(&admin, "sleeper", "fires", 0).await;
        cut.iter().all(|s| done.contains_key(s))
    })
    .await;
    let done = by_slot(&admin, "sleeper", "fires", 0).await;
    let attempts = by_slot(&admin, "sleeper", "attempt", 0).await;
    assert!(settled, "cut fires {cut:?} never completed: {done:?}");
    for s in &cut {
        assert_eq!(done[s], 1, "slot {s} completed {} times", done[s]);
    }
    assert!(
        cut.iter().any(|s| attempts[s] >= 2),
        "no cut fire was retried elsewhere: {cut:?} {attempts:?} (killed at {killed_at})"
    );
    assert!(
        done.values().all(|n| *n == 1),
        "a slot was handled twice: {done:?}"
    );

    // A delayed event from a node that is SIGKILLed right after: on time anyway.
    let r = request(
        "POST",
        &format!("{}/ticker/delay/d1?ms=2000", cluster.scheduler.listen),
        &[],
        bytes::Bytes::new(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let published: u64 = r.text().trim().parse().unwrap();
    let publisher = r.headers["x-skiff-node"].to_str().unwrap().to_string();
    let index: usize = publisher.trim_start_matches('n').parse::<usize>().unwrap() - 1;
    assert_ne!(index, victim, "a dead node answered");
    cluster.nodes[index].kill();
    let (got, count) = arrival(&admin, "d1", Duration::from_secs(8)).await;
    let took = got - published;
    eprintln!("delayed event (2 s) across the publisher's SIGKILL arrived after {took} ms");
    assert!((2_000..=2_500).contains(&took), "arrived after {took} ms");
    assert_eq!(count, 1, "the delayed event arrived {count} times");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cluster_catches_up_by_each_policy_after_nats_was_down() {
    let _one = one_at_a_time().await;
    let mut cluster = Cluster::start(2);
    let admin = cluster.scheduler.admin.clone();
    // Cron keeps its slots through an outage (an interval restarts from NATS's restart).
    let dir = function_dir(
        &cluster.tmp.path().join("fns"),
        "ticker",
        &ticker_manifest(
            "ticker",
            "[[schedule]]\ncron = \"*/2 * * * * *\"\ncatch_up = \"all\"\n\
             [[schedule]]\ncron = \"*/2 * * * * *\"\ncatch_up = \"none\"\n\
             [[schedule]]\ncron = \"*/2 * * * * *\"\ncatch_up = \"latest\"\n",
        ),
    );
    cluster
        .scheduler
        .cli_ok(&["deploy", dir.to_str().unwrap(), "--no-build", "--wait-all"]);
    let fired = each_fired_twice(&admin, 3, Duration::from_secs(15)).await;
    assert!(fired, "not every schedule fired twice");
    // The whole NATS cluster goes down for 10 s.
    for s in cluster.nats.servers.iter_mut() {
        s.kill();
    }
    let down = now_ms();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let up = now_ms();
    for s in cluster.nats.servers.iter_mut() {
        s.restart().expect("restart nats");
    }
    let resumed = wait_until(Duration::from_secs(40), async || {
        for i in 0..3 {
            let after = by_slot(&admin, "ticker", "fires", i).await;
            if after.range(up + 4_000..).count() < 2 {
                return false;
            }
        }
        true
    })
    .await;
    assert!(resumed, "fires did not resume after NATS came back");
    let all = by_slot(&admin, "ticker", "fires", 0).await;
    let first = *all.keys().next().unwrap();
    let slots: Vec<u64> = all.keys().copied().collect();
    let gaps: Vec<&[u64]> = slots.windows(2).filter(|w| w[1] - w[0] != 2_000).collect();
    assert!(
        gaps.is_empty(),
        "`all` left slots out from {first}: {gaps:?}"
    );
    assert!(all.values().all(|n| *n == 1), "a slot twice: {all:?}");
    for i in [1, 2] {
        let fires = by_slot(&admin, "ticker", "fires", i).await;
        assert!(
            fires.values().all(|n| *n == 1),
            "#{i}: a slot twice: {fires:?}"
        );
        let missed: Vec<u64> = fires
            .range(down + 2_000..up.saturating_sub(2_000))
            .map(|(s, _)| *s)
            .collect();
        assert!(
            missed.is_empty(),
            "#{i} ran slots missed while NATS was down: {missed:?}"
        );
    }
    let listing = cluster.scheduler.cli_ok(&["schedules", "ticker"]);
    eprintln!("after a 10 s NATS outage:\n{listing}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_embedded_node_catches_up_by_each_policy_after_downtime() {
    // It times fires to the second and restarts `skiff up` (compiling on start): alone, so
    // that it neither slows nor is slowed by the cluster tests' recoveries.
    let _one = one_at_a_time().await;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut skiff = Skiff::start_in(&data, &[]);
    let manifest = ticker_manifest(
        "ticker",
        "[[schedule]]\nevery = \"2s\"\ncatch_up = \"latest\"\n\
         [[schedule]]\nevery = \"2s\"\ncatch_up = \"all\"\nwindow = \"1h\"\n\
         [[schedule]]\nevery = \"2s\"\ncatch_up = \"none\"\n",
    );
    let dir = function_dir(tmp.path(), "ticker", &manifest);
    skiff.cli_ok(&["deploy", dir.to_str().unwrap(), "--no-build"]);
    let admin = skiff.admin.clone();
    let fired = each_fired_twice(&admin, 3, Duration::from_secs(10)).await;
    assert!(fired, "not every schedule fired twice:\n{}", skiff.log());
    skiff.kill();
    let down = now_ms();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let up = now_ms();
    let mut skiff = Skiff::start_in(&data, &[]);
    tokio::time::sleep(Duration::from_secs(6)).await;
    let admin = skiff.admin.clone();
    let listing = skiff.cli_ok(&["schedules", "ticker"]);
    let mut misses = Vec::new();
    for line in listing.lines().skip(1) {
        misses.push(
            line.split_whitespace()
                .last()
                .unwrap()
                .parse::<u64>()
                .unwrap(),
        );
    }
    for i in 0..3 {
        let fires = by_slot(&admin, "ticker", "fires", i).await;
        let late = by_slot(&admin, "ticker", "late", i).await;
        assert!(
            fires.values().all(|n| *n == 1),
            "#{i}: a slot twice: {fires:?}"
        );
        // The last slot before the kill, and what came after it.
        let last = *fires.range(..down + 1).next_back().unwrap().0;
        let after: Vec<u64> = fires.range(last + 1..).map(|(s, _)| *s).collect();
        assert!(!after.is_empty(), "#{i}: nothing fired after the restart");
        let contiguous = after.windows(2).all(|w| w[1] - w[0] == 2_000);
        assert!(
            contiguous,
            "#{i}: slots after the outage not regular: {after:?}"
        );
        let missed = (after[0] - last) / 2_000 - 1;
        match i {
            // latest: only the last slot that passed while down, then on.
            0 => {
                assert!(
                    after[0] + 2_000 >= up,
                    "#0 fired an old missed slot: {after:?} (up at {up})"
                );
                assert!(
                    after[0] <= up + 6_000,
                    "#0 skipped the last missed slot: {after:?} (up at {up})"
                );
                assert_eq!(misses[0], missed, "#0 misses: {listing}");
            }
            // all: every slot, none missed.
            1 => {
                assert_eq!(after[0], last + 2_000, "#1 missed slots: {after:?}");
                assert!(after.len() >= 7, "#1 made up only {after:?}");
                assert_eq!(misses[1], 0, "{listing}");
            }
            // none: no slot that passed while down, and nothing late.
            _ => {
                assert!(
                    after[0] + 1_000 >= up,
                    "#2 fired a missed slot: {after:?} (up at {up})"
                );
                let late_after: Vec<u64> = after.iter().map(|s| late[s]).collect();
                assert!(
                    late_after.iter().all(|l| *l < 1_500),
                    "#2 ran late fires: {late_after:?}"
                );
                assert!(misses[2] >= missed, "#2 misses: {listing}");
            }
        }
    }

    // Paused: fires are skipped and shown so; resumed: they come again.
    let out = skiff.cli_ok(&["schedules", "pause", "ticker"]);
    assert!(out.contains("PAUSED"), "{out}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let paused_at = now_ms();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let fired_while_paused = by_slot(&admin, "ticker", "fires", 0)
        .await
        .range(paused_at..)
        .count();
    assert_eq!(fired_while_paused, 0, "fired while paused");
    let listing = skiff.cli_ok(&["schedules"]);
    assert!(listing.contains("PAUSED (paused)"), "{listing}");
    skiff.cli_ok(&["schedules", "resume", "ticker"]);
    let resumed_at = now_ms();
    let again = wait_until(Duration::from_secs(6), async || {
        by_slot(&admin, "ticker", "fires", 0)
            .await
            .range(resumed_at..)
            .count()
            > 0
    })
    .await;
    assert!(again, "no fire after resume");

    // A delayed event from the CLI, on time.
    let before = now_ms();
    let out = skiff.cli_ok(&["publish", "delayed.ticker", "e1", "--after", "2s"]);
    assert!(out.contains("delivered at"), "{out}");
    let (got, count) = arrival(&admin, "e1", Duration::from_secs(5)).await;
    assert_eq!(count, 1, "the delayed event arrived {count} times");
    let took = got - before;
    eprintln!("embedded delayed event (2 s) arrived after {took} ms");
    assert!((2_000..=2_500).contains(&took), "arrived after {took} ms");

    // `rm` removes the schedules and their records: a redeploy starts afresh.
    skiff.cli_ok(&["schedules", "pause", "ticker"]);
    skiff.cli_ok(&["rm", "ticker"]);
    skiff.cli_ok(&["deploy", dir.to_str().unwrap(), "--no-build"]);
    let listing = skiff.cli_ok(&["schedules", "ticker"]);
    assert!(!listing.contains("PAUSED"), "{listing}");
    // A redeploy with other schedules replaces them.
    let other = ticker_manifest("ticker", "[[schedule]]\ncron = \"*/5 * * * * *\"\n");
    let dir = function_dir(tmp.path(), "ticker", &other);
    skiff.cli_ok(&["deploy", dir.to_str().unwrap(), "--no-build"]);
    let listing = skiff.cli_ok(&["schedules", "ticker"]);
    assert_eq!(listing.lines().count(), 2, "{listing}");
    assert!(listing.contains("cron */5 * * * * * (UTC)"), "{listing}");
    let since = now_ms();
    let fired = wait_until(Duration::from_secs(8), async || {
        by_slot(&admin, "ticker", "fires", 0)
            .await
            .range(since..)
            .next()
            .is_some()
    })
    .await;
    assert!(fired, "the new schedule did not fire");
    let slots: Vec<u64> = by_slot(&admin, "ticker", "fires", 0)
        .await
        .range(since..)
        .map(|(s, _)| *s)
        .collect();
    assert!(slots.iter().all(|s| s % 5_000 == 0), "{slots:?}");
    assert!(
        by_slot(&admin, "ticker", "fires", 1)
            .await
            .range(since + 2_000..)
            .next()
            .is_none(),
        "a dropped schedule still fires"
    );
    skiff.kill();
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_schedules_and_delays_are_refused_with_the_reason() {
    let _gate = crate::gate::beside_others().await;
    let tmp = tempfile::tempdir().unwrap();
    let skiff = Skiff::start(&["--min-schedule-interval", "2s"]);
    for (name, extra, expect) in [
        (
            "badcron",
            "[[schedule]]\ncron = \"0 */5 * * *\"\n",
            "[[schedule]] #1 cron",
        ),
        (
            "badfield",
            "[[schedule]]\ncron = \"0 0 25 * * *\"\n",
            "`0 0 25 * * *`",
        ),
        ("toofast", "[[schedule]]\nevery = \"1s\"\n", "minimum of 2s"),
        (
            "badzone",
            "[[schedule]]\ncron = \"0 0 * * * *\"\ntimezone = \"Mars/Base\"\n",
            "unknown time zone `Mars/Base`",
        ),
    ] {
        let dir = function_dir(tmp.path(), name, &ticker_manifest(name, extra));
        let err = skiff.cli_err(&["deploy", dir.to_str().unwrap(), "--no-build"]);
        assert!(err.contains(expect), "{name}: {err}");
    }
    // A schedule needs an event handler to fire.
    let manifest = format!(
        "name = \"nohandler\"\ncomponent = \"{}\"\n[http]\nroute = \"/nohandler/...\"\n[[schedule]]\nevery = \"5s\"\n",
        guest("functions", "hello.wasm").display()
    );
    let dir = function_dir(tmp.path(), "nohandler", &manifest);
    let err = skiff.cli_err(&["deploy", dir.to_str().unwrap(), "--no-build"]);
    assert!(err.contains("event-handler"), "{err}");
    // Delays: too far, in the past, and the schedule topics are not for publishing.
    let err = skiff.cli_err(&["publish", "a.b", "x", "--after", "31days"]);
    assert!(err.contains("maximum delay of 30days"), "{err}");
    let err = skiff.cli_err(&["publish", "a.b", "x", "--at", "2020-01-01T00:00:00Z"]);
    assert!(err.contains("in the past"), "{err}");
    let err = skiff.cli_err(&["publish", "a.b", "x", "--at", "tomorrow"]);
    assert!(err.contains("RFC 3339"), "{err}");
    let err = skiff.cli_err(&["publish", "schedule.x.0", "x"]);
    assert!(err.contains("reserved for schedule fires"), "{err}");
    // A guest asking for too long a delay is refused at once.
    let dir = function_dir(tmp.path(), "ticker", &ticker_manifest("ticker", ""));
    skiff.cli_ok(&["deploy", dir.to_str().unwrap(), "--no-build"]);
    let r = request(
        "POST",
        &format!("{}/ticker/delay/x?ms={}", skiff.listen, 40u64 * 86_400_000),
        &[],
        bytes::Bytes::new(),
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("maximum delay"), "{}", r.text());
    let err = skiff.cli_err(&["schedules", "pause", "ticker"]);
    assert!(err.contains("has no [[schedule]]"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_sessions_example_expires_keys_by_a_delayed_event() {
    let _gate = crate::gate::beside_others().await;
    let skiff = Skiff::start(&[]);
    let dir = repo().join("functions/sessions");
    skiff.cli_ok(&["deploy", dir.to_str().unwrap(), "--no-build"]);
    let url = format!("{}/sessions/s1", skiff.listen);
    let r = request("PUT", &url, &[], bytes::Bytes::from_static(b"2")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(get(&url).await.status, 200);
    // Two seconds on, the delayed event deletes it (not just hides it).
    let key = format!("{}/v1/functions/sessions/kv/session:s1", skiff.admin);
    assert_eq!(get(&key).await.status, 200);
    let deleted = wait_until(Duration::from_secs(5), async || {
        get(&key).await.status == 404
    })
    .await;
    assert!(deleted, "the session outlived its expiry:\n{}", skiff.log());
    assert_eq!(get(&url).await.status, 404);
    // Its sweep is listed, with the next minute's slot.
    let listing = skiff.cli_ok(&["schedules"]);
    assert!(
        listing.contains("sessions") && listing.contains("cron 0 * * * * * (UTC)"),
        "{listing}"
    );
    assert!(listing.contains(":00.000Z"), "{listing}");
}
