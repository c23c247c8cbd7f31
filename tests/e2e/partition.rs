//! Network partitions: three clustered nats-servers, two nodes and the scheduler, each in
//! its own network namespace ([`crate::netns`]), under steady HTTP load, increments of a
//! hot counter and the order workflow. Links are cut and healed; after every heal no
//! acknowledged write is lost, the counter holds every acknowledged increment, no order
//! is charged twice, every acknowledged order reaches `notified`, and errors stop within
//! two seconds. Each scenario prints its figures (BENCHMARKS.md, reliability).

use crate::harness::*;
use crate::netns::{Lan, Net};
use skiff_core::testkit::NatsServer;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Errors must stop this soon after a heal.
const RECOVERS_WITHIN: Duration = Duration::from_secs(2);
/// Load runs this long before a cut and after a heal.
const LEAD: Duration = Duration::from_secs(2);
const TAIL: Duration = Duration::from_secs(4);
/// How long a request may take before the load counts it as failed (in doubt).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The processes first (dropped first), then the namespaces they ran in.
struct Partitioned {
    scheduler: Skiff,
    nodes: Vec<Skiff>,
    _nats: Vec<NatsServer>,
    urls: String,
    net: Net,
    _tmp: tempfile::TempDir,
}

const NODES: [(&str, u8); 2] = [("n1", 21), ("n2", 22)];

impl Partitioned {
    fn start() -> Partitioned {
        let tmp = tempfile::tempdir().unwrap();
        let mut net =
            Net::create().unwrap_or_else(|e| panic!("cannot build the partition harness: {e}"));
        let both = [Lan::Nats, Lan::Http];
        for i in 0..3u8 {
            net.add(&format!("s{i}"), 10 + i, &[Lan::Nats]).unwrap();
        }
        for (name, host) in NODES {
            net.add(name, host, &both).unwrap();
        }
        net.add("sc", 30, &both).unwrap();
        let server = |i: u8| net.addr(Lan::Nats, 10 + i);
        let mut nats = Vec::new();
        for i in 0..3u8 {
            let store = tmp.path().join(format!("s{i}"));
            std::fs::create_dir_all(&store).unwrap();
            let routes: Vec<String> = (0..3u8)
                .filter(|&j| j != i)
                .map(|j| format!("nats-route://{}:6222", server(j)))
                .collect();
            let config = tmp.path().join(format!("s{i}.conf"));
            // Secured as every test cluster: TLS (a certificate naming this server's
            // address), NKey users, and TLS between the servers.
            let secured = skiff_core::testkit::secured();
            let addr = server(i).to_string();
            std::fs::write(
                &config,
                format!(
                    "server_name: s{i}\nlisten: {a}:4222\njetstream {{ store_dir: \"{}\", sync_interval: always }}\ncluster {{ name: skiff-partition, listen: {a}:6222, routes: [{}]\n{} }}\n{}",
                    store.display(),
                    routes.join(", "),
                    secured.route_tls_block(&[&addr]).unwrap(),
                    secured.server_blocks(&[&addr]).unwrap(),
                    a = addr,
                ),
            )
            .unwrap();
            let ns = net.ns(&format!("s{i}"));
            nats.push(
                NatsServer::start_via(&["ip", "netns", "exec", &ns], &config, &store)
                    .expect("nats-server in its namespace"),
            );
        }
        let urls = nats
            .iter()
            .map(NatsServer::url)
            .collect::<Vec<_>>()
            .join(",");
        // Member `name` at `host`, listening on its HTTP-net address.
        let spawn = |name: &str, host: u8, args: &[&str]| {
            let addr = net.addr(Lan::Http, host);
            let dir = tmp.path().join(name);
            let mut all = args.to_vec();
            all.extend_from_slice(&["--nats", &urls, "--replicas", "3"]);
            all.extend_from_slice(&["--data-dir", dir.to_str().unwrap()]);
            Skiff::spawn_in_netns(
                &net.ns(name),
                &all,
                &format!("{addr}:7070"),
                &format!("{addr}:7071"),
            )
        };
        let nodes = NODES
            .iter()
            .map(|&(name, host)| spawn(name, host, &["node", "--name", name]))
            .collect();
        let scheduler = spawn("sc", 30, &["scheduler"]);
        for f in ["hello", "counter", "orders"] {
            let dir = repo().join("functions").join(f);
            scheduler.cli_ok(&["deploy", dir.to_str().unwrap(), "--no-build", "--wait-all"]);
        }
        Partitioned {
            scheduler,
            nodes,
            _nats: nats,
            urls,
            net,
            _tmp: tmp,
        }
    }

    /// The orders' dead letters and what the nodes and the scheduler warned about, for a
    /// failure message.
    async fn diagnose(&self) -> String {
        let dead = self.scheduler.cli(&["dead-letters", "ls", "orders"]);
        let mut out = format!("dead letters:\n{}\n", String::from_utf8_lossy(&dead.stdout));
        let client = skiff_core::nats::connect(&self.urls, "partition-test", &operator_auth())
            .await
            .unwrap();
        let js = async_nats::jetstream::new(client);
        let mut stream = js.get_stream("SKIFF_EVENTS").await.unwrap();
        out.push_str(&format!(
            "events stream: {:?}\n",
            stream.info().await.unwrap().state
        ));
        let mut names = stream.consumer_names();
        while let Some(Ok(name)) = futures::StreamExt::next(&mut names).await {
            let mut c: async_nats::jetstream::consumer::PullConsumer =
                stream.get_consumer(&name).await.unwrap();
            let i = c.info().await.unwrap();
            out.push_str(&format!(
                "consumer {name} {:?}: pending {} ack pending {} redelivered {} delivered {:?} acked {:?}\n",
                i.config.filter_subjects,
                i.num_pending,
                i.num_ack_pending,
                i.num_redelivered,
                i.delivered,
                i.ack_floor
            ));
        }
        let names = ["n1", "n2", "scheduler"];
        for (skiff, name) in self.nodes.iter().chain([&self.scheduler]).zip(names) {
            let log = skiff.log();
            let noted: Vec<&str> = log
                .lines()
                .filter(|l| l.contains("WARN") || l.contains("ERROR"))
                .collect();
            let tail = &noted[noted.len().saturating_sub(40)..];
            let file = std::env::temp_dir().join(format!("skiff-partition-{name}.log"));
            let kept = std::fs::write(&file, &log).is_ok();
            out.push_str(&format!(
                "{name} (whole log{} {}):\n{}\n",
                if kept { " in" } else { " not written to" },
                file.display(),
                tail.join("\n")
            ));
        }
        out
    }

    /// The name of the server leading `stream`.
    async fn leader_of(&self, stream: &str) -> String {
        let client = skiff_core::nats::connect(&self.urls, "partition-test", &operator_auth())
            .await
            .unwrap();
        let js = async_nats::jetstream::new(client);
        let mut s = js.get_stream(stream).await.unwrap();
        let info = s.info().await.unwrap();
        info.cluster
            .as_ref()
            .and_then(|c| c.leader.clone())
            .expect("a stream leader")
    }
}

/// What the load does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Read,
    Increment,
    Order,
}

/// One request of the load.
#[derive(Debug, Clone)]
struct Shot {
    kind: Kind,
    id: String,
    at: Instant,
    status: u16,
    body: String,
}

impl Shot {
    fn ok(&self) -> bool {
        matches!(self.status, 200 | 201)
    }
    /// Whether the request may have taken effect without being acknowledged.
    /// Whether the request may have taken effect though it failed: no answer, a 502, a
    /// write in doubt, or one the node says is stored in the log but not yet applied
    /// where it ran (it will apply).
    fn in_doubt(&self) -> bool {
        self.status == 0
            || self.status == 502
            || self.body.contains("may or may not")
            || self.body.contains("is stored in the cluster's log")
    }
}

/// Steady load through the scheduler until `stop`: 3 readers of hello, 2 incrementers of
/// the counter `hot-<tag>`, 2 order placers (ids `<tag>-<n>`).
async fn drive(sched: String, tag: String, stop: Arc<AtomicBool>) -> Vec<Shot> {
    let next_order = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for kind in [
        Kind::Read,
        Kind::Read,
        Kind::Read,
        Kind::Increment,
        Kind::Increment,
        Kind::Order,
        Kind::Order,
    ] {
        let (sched, tag, stop, next_order) =
            (sched.clone(), tag.clone(), stop.clone(), next_order.clone());
        tasks.push(tokio::spawn(async move {
            let c = client();
            let mut shots = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let (req, id) = match kind {
                    Kind::Read => (
                        http::Request::get(format!("{sched}/hello/p")).body(body("")),
                        String::new(),
                    ),
                    Kind::Increment => (
                        http::Request::post(format!("{sched}/counter/hot-{tag}")).body(body("")),
                        String::new(),
                    ),
                    Kind::Order => {
                        let id = format!("{tag}-{}", next_order.fetch_add(1, Ordering::Relaxed));
                        let json = format!("{{\"id\": \"{id}\", \"amount\": 1}}");
                        (
                            http::Request::post(format!("{sched}/orders")).body(body(json)),
                            id,
                        )
                    }
                };
                let at = Instant::now();
                let (status, text) =
                    match tokio::time::timeout(REQUEST_TIMEOUT, send(&c, req.unwrap())).await {
                        Ok(Ok(r)) => (r.status, r.text()),
                        Ok(Err(e)) => (0, e),
                        Err(_) => (0, "timed out".to_string()),
                    };
                shots.push(Shot {
                    kind,
                    id,
                    at,
                    status,
                    body: text,
                });
                if status == 0 || status >= 500 {
                    // Do not spin on a failing path.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            shots
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

/// One scenario's figures.
#[derive(Debug, Default)]
struct Row {
    scenario: &'static str,
    requests: usize,
    failed_during_cut: usize,
    acked_increments: usize,
    counter: u64,
    lost: u64,
    in_doubt: usize,
    acked_orders: usize,
    unfinished_orders: usize,
    charged_twice: usize,
    recovery_ms: u128,
    /// The longest time between two acknowledged increments while cut.
    stall_ms: u128,
    note: String,
}

impl Row {
    fn print(&self) {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} ms | {} ms | {} |",
            self.scenario,
            self.requests,
            self.failed_during_cut,
            self.acked_increments,
            self.counter,
            self.lost,
            self.in_doubt,
            self.acked_orders,
            self.unfinished_orders,
            self.charged_twice,
            self.recovery_ms,
            self.stall_ms,
            self.note
        );
    }
}

/// Runs the load around `cut`, which cuts links, checks what must hold while they are
/// cut, heals them and answers (when it cut, when it healed, a note). Then checks
/// everything that must hold after the heal and answers the figures.
async fn scenario<F>(c: &Partitioned, name: &'static str, tag: &str, cut: F) -> Row
where
    F: AsyncFnOnce() -> (Instant, Instant, String),
{
    let sched = c.scheduler.listen.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(drive(sched.clone(), tag.to_string(), stop.clone()));
    tokio::time::sleep(LEAD).await;
    let (cut_at, heal_at, note) = cut().await;
    tokio::time::sleep(TAIL).await;
    stop.store(true, Ordering::Relaxed);
    let shots = load.await.unwrap();

    let late: Vec<&Shot> = shots
        .iter()
        .filter(|s| !s.ok() && s.at >= heal_at + RECOVERS_WITHIN)
        .collect();
    assert!(
        late.is_empty(),
        "{name}: {} requests still failed more than {RECOVERS_WITHIN:?} after the heal, e.g. {:?} {}: {}\n{}",
        late.len(),
        late.first().map(|s| s.kind),
        late.first().map_or(0, |s| s.status),
        late.first().map_or("", |s| s.body.as_str()),
        c.diagnose().await
    );
    let recovery = shots
        .iter()
        .filter(|s| !s.ok() && s.at >= heal_at)
        .map(|s| s.at - heal_at)
        .max()
        .unwrap_or_default();
    let acked = shots
        .iter()
        .filter(|s| s.kind == Kind::Increment && s.ok())
        .count();
    let doubt = shots
        .iter()
        .filter(|s| s.kind == Kind::Increment && s.in_doubt())
        .count();
    let counter = consistent_counter(&sched, tag).await;
    assert!(
        counter >= acked as u64,
        "{name}: acknowledged increments were lost: {acked} acknowledged, counter {counter}"
    );
    assert!(
        counter <= (acked + doubt) as u64,
        "{name}: the counter ({counter}) holds more than the acknowledged ({acked}) and in-doubt ({doubt}) increments; the failed ones: {:?}",
        shots
            .iter()
            .filter(|s| s.kind == Kind::Increment && !s.ok())
            .map(|s| format!("{} {}", s.status, s.body))
            .collect::<Vec<_>>()
    );
    let orders: Vec<&Shot> = shots.iter().filter(|s| s.kind == Kind::Order).collect();
    let acked_orders: Vec<&str> = orders
        .iter()
        .filter(|s| s.ok())
        .map(|s| s.id.as_str())
        .collect();
    let (unfinished, twice) = check_orders(&sched, &orders).await;
    assert!(
        unfinished.is_empty(),
        "{name}: acknowledged orders never reached notified: {unfinished:?}\n{}",
        c.diagnose().await
    );
    assert!(twice.is_empty(), "{name}: orders charged twice: {twice:?}");
    Row {
        scenario: name,
        requests: shots.len(),
        failed_during_cut: shots
            .iter()
            .filter(|s| !s.ok() && s.at >= cut_at && s.at < heal_at)
            .count(),
        acked_increments: acked,
        counter,
        lost: (acked as u64).saturating_sub(counter),
        in_doubt: doubt,
        acked_orders: acked_orders.len(),
        unfinished_orders: unfinished.len(),
        charged_twice: twice.len(),
        recovery_ms: recovery.as_millis(),
        stall_ms: longest_gap(&shots, cut_at, heal_at).as_millis(),
        note,
    }
}

/// The longest time from `from` to `to` without the start of an increment that was then
/// acknowledged.
fn longest_gap(shots: &[Shot], from: Instant, to: Instant) -> Duration {
    let mut starts: Vec<Instant> = shots
        .iter()
        .filter(|s| s.kind == Kind::Increment && s.ok() && s.at > from && s.at < to)
        .map(|s| s.at)
        .collect();
    starts.sort();
    let mut last = from;
    let mut longest = Duration::ZERO;
    for t in starts.into_iter().chain([to]) {
        longest = longest.max(t - last);
        last = t;
    }
    longest
}

/// The hot counter's value as last written anywhere.
async fn consistent_counter(sched: &str, tag: &str) -> u64 {
    let url = format!("{sched}/counter/hot-{tag}?consistent");
    let mut last = String::new();
    for _ in 0..100 {
        let r = get(&url).await;
        if r.status == 200 {
            return r.text().trim().parse().unwrap_or(0);
        }
        last = format!("{} {}", r.status, r.text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("cannot read the counter after the heal: {last}")
}

/// Acknowledged orders not `notified` with one charge within a minute, and any order
/// (acknowledged or not) charged more than once.
async fn check_orders(sched: &str, orders: &[&Shot]) -> (Vec<String>, Vec<String>) {
    let c = client();
    let fetch = async |id: &str| -> serde_json::Value {
        let req = http::Request::get(format!("{sched}/orders/{id}"))
            .body(body(""))
            .unwrap();
        match send(&c, req).await {
            Ok(r) if r.status == 200 => serde_json::from_slice(&r.body).unwrap_or_default(),
            Ok(r) => serde_json::json!({ "http": r.status }),
            Err(e) => serde_json::json!({ "error": e }),
        }
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut pending: Vec<&str> = orders
        .iter()
        .filter(|s| s.ok())
        .map(|s| s.id.as_str())
        .collect();
    let mut unfinished = Vec::new();
    while !pending.is_empty() {
        unfinished.clear();
        let mut still = Vec::new();
        for id in pending {
            let v = fetch(id).await;
            if v["status"] != "notified" {
                unfinished.push(format!("{id}: {v}"));
                still.push(id);
            }
        }
        pending = still;
        if pending.is_empty() || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Every order placed, acknowledged or not: charged at most once.
    let mut twice = Vec::new();
    for s in orders {
        let v = fetch(&s.id).await;
        if v["charges"].as_u64().unwrap_or(0) > 1 {
            twice.push(format!("{}: {v}", s.id));
        }
    }
    (unfinished, twice)
}

/// Polls `url` with `method` until `pred` holds on the answer; panics with the last one.
async fn until_answer(
    method: &str,
    url: &str,
    max: Duration,
    pred: impl Fn(&Resp) -> bool,
) -> Resp {
    let start = Instant::now();
    loop {
        let r = request(method, url, &[], "".into()).await;
        if pred(&r) {
            return r;
        }
        assert!(
            start.elapsed() < max,
            "{method} {url}: still {} {}",
            r.status,
            r.text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn partitions_lose_no_acknowledged_work_and_errors_stop_within_two_seconds() {
    let _one = crate::gate::alone().await;
    let c = Partitioned::start();
    let mut rows = Vec::new();

    // (a) A node cut off from everything: the scheduler routes around it.
    rows.push(
        scenario(&c, "(a) node cut off", "a", async || {
            let cut_at = Instant::now();
            c.net.cut("n1", Lan::Nats);
            c.net.cut("n1", Lan::Http);
            tokio::time::sleep(Duration::from_secs(5)).await;
            c.net.heal("n1", Lan::Nats);
            c.net.heal("n1", Lan::Http);
            (cut_at, Instant::now(), String::new())
        })
        .await,
    );

    // (b) A minority NATS server (the leader of the counter's state shard) cut off: the
    // majority keeps acknowledging writes.
    let shard =
        skiff_core::state_keys::StateShards::new(skiff_core::state_keys::DEFAULT_STATE_SHARDS)
            .expect("shards")
            .of("counter");
    let leader = c
        .leader_of(&skiff_core::state_keys::stream_name(shard))
        .await;
    rows.push(
        scenario(&c, "(b) NATS minority cut off", "b", async || {
            let cut_at = Instant::now();
            c.net.cut(&leader, Lan::Nats);
            // A write sent now is acknowledged once the majority has a new leader, and
            // writes go on being acknowledged while the old one is away.
            let url = format!("{}/counter/direct-b", c.scheduler.listen);
            until_answer("POST", &url, Duration::from_secs(30), |r| r.status == 200).await;
            let first_ack = cut_at.elapsed();
            tokio::time::sleep(Duration::from_secs(3)).await;
            c.net.heal(&leader, Lan::Nats);
            (
                cut_at,
                Instant::now(),
                format!(
                    "state stream leader {leader} cut; a write sent at the cut was acknowledged after {} ms",
                    first_ack.as_millis()
                ),
            )
        })
        .await,
    );

    // (c) A node cut off from NATS, not from the scheduler: its writes fail clearly, its
    // reads answer from its copy, and it catches up after the heal.
    let n1 = c.nodes[0].listen.clone();
    rows.push(
        scenario(&c, "(c) node cut off from NATS", "c", async || {
            let cut_at = Instant::now();
            c.net.cut("n1", Lan::Nats);
            // Written on a key of its own: a refused write must not count against hot-c.
            let url = format!("{n1}/counter/direct-c");
            let failed =
                until_answer("POST", &url, Duration::from_secs(30), |r| r.status != 200).await;
            let text = failed.text();
            assert!(
                failed.status == 500 && text.contains("applied") && text.contains("NATS"),
                "a write on a node cut off from NATS: {} {text}",
                failed.status
            );
            let read = get(&format!("{n1}/counter/hot-c")).await;
            assert_eq!(
                read.status,
                200,
                "a local read on a node cut off from NATS: {}",
                read.text()
            );
            c.net.heal("n1", Lan::Nats);
            let heal_at = Instant::now();
            (
                cut_at,
                heal_at,
                format!(
                    "write refused after {} ms: {}",
                    (heal_at - cut_at).as_millis(),
                    text.trim()
                ),
            )
        })
        .await,
    );
    // n1 caught up: its own copy holds what the cluster holds.
    let want = consistent_counter(&c.scheduler.listen, "c").await;
    until_answer(
        "GET",
        &format!("{n1}/counter/hot-c"),
        Duration::from_secs(10),
        |r| r.text().trim() == want.to_string(),
    )
    .await;

    // (d) The majority of NATS cut off: writes fail clearly, reads keep working, and
    // everything resumes after the heal.
    rows.push(
        scenario(&c, "(d) NATS majority cut off", "d", async || {
            let cut_at = Instant::now();
            c.net.cut("s0", Lan::Nats);
            c.net.cut("s1", Lan::Nats);
            let url = format!("{}/counter/direct-d", c.scheduler.listen);
            let failed =
                until_answer("POST", &url, Duration::from_secs(30), |r| r.status != 200).await;
            let text = failed.text();
            assert!(
                text.contains("applied") && text.contains("NATS"),
                "a write while NATS has no majority: {} {text}",
                failed.status
            );
            for path in ["/hello/d", "/counter/hot-d"] {
                let r = get(&format!("{}{path}", c.scheduler.listen)).await;
                assert_eq!(
                    r.status,
                    200,
                    "a read while NATS has no majority: {path}: {}",
                    r.text()
                );
            }
            c.net.heal("s0", Lan::Nats);
            c.net.heal("s1", Lan::Nats);
            (
                cut_at,
                Instant::now(),
                format!("write refused: {}", text.trim()),
            )
        })
        .await,
    );

    println!(
        "| scenario | requests | failed while cut | acked increments | counter | lost | in doubt | acked orders | unfinished | charged twice | errors stop after heal | longest write stall while cut | note |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in &rows {
        r.print();
    }
    for r in &rows {
        assert_eq!(
            (r.lost, r.unfinished_orders, r.charged_twice),
            (0, 0, 0),
            "{r:?}"
        );
    }
}
