//! Skiff's benchmark program: `cargo bench --bench skiff [-- SECTION...]`.
//!
//! It starts the real `skiff up` (release build) on free loopback ports and, in this
//! process, a native hyper server that does the same work without WebAssembly — the
//! baseline every row is compared with, measured in the same run so that the ratio holds
//! on a noisy machine. The load generator is a Rust client on its own single-threaded
//! runtime, pinned to the last core, with one keep-alive connection per concurrent
//! client; the servers (native and Skiff's processes) are pinned to the other cores.
//! Each measurement is a 1 s warm-up followed by three runs; the table shows the median.
//!
//! Sections: `hello` (requests/s and latency of a hello-world function, at the node and
//! through the scheduler, and the per-request instantiation time), `kv` (guest-side
//! key-value latency, and increments/s through HTTP), `events` (events/s through a
//! one-step trigger and publish → handler latency, on the embedded bus and on a real
//! nats-server), `state` (state writes in this process: embedded redb against cluster
//! mode's replicated log on three clustered nats-servers), `scale` (deploy to first
//! response, memory per idle and per loaded function, RSS with 1,000 and 10,000
//! functions deployed, start-up with 1,000), `placement` (state kept per node with 12
//! functions on 6 nodes, on every node against `[placement] nodes = 2`), `schedules` (how
//! late schedule fires and delayed events come, against a timer in this process),
//! `redeploy` (build and redeploy after an edit per language: `skiff dev`'s loop, against
//! `wasmtime compile`).
//! Default: all.

#[path = "shared/placement.rs"]
mod placement;
#[path = "shared/redeploy.rs"]
mod redeploy;
#[path = "shared/schedules.rs"]
mod schedules;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use skiff_runtime::localdb::LocalDb;
use skiff_runtime::state::{
    KvLimits, LocalState, Namespace, Op, OpResult, ReplicatedState, StateBackend,
};
use std::convert::Infallible;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[path = "support/peer.rs"]
mod peer;

const RUN: Duration = Duration::from_secs(3);
const WARMUP: Duration = Duration::from_secs(1);
const RUNS: usize = 3;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("runtime/ has a parent")
        .to_path_buf()
}

fn build_guests() {
    for dir in ["functions", "tests/guests"] {
        let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["build", "--release", "--target", "wasm32-wasip2", "--quiet"])
            .current_dir(repo().join(dir))
            .status()
            .expect("run cargo");
        assert!(
            status.success(),
            "building {dir} failed (is the wasm32-wasip2 target installed? `rustup target add wasm32-wasip2`)"
        );
    }
}

/// The cores the servers run on (all but the last) and the load generator's (the last),
/// when there are at least two.
fn cores() -> Option<(String, usize)> {
    // Read once, before any thread is pinned (pinning shrinks what the OS reports).
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let n = *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    (n >= 2).then(|| (format!("0-{}", n - 2), n - 1))
}

/// Pins the calling thread to `cpu`.
fn pin_thread(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes within it; the
    // call only changes this thread's affinity.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Pins the calling thread to every core below `client` (the servers' cores).
fn pin_servers(client: usize) {
    // SAFETY: as in `pin_thread`.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for cpu in 0..client {
            libc::CPU_SET(cpu, &mut set);
        }
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// A `skiff` command pinned to the server cores.
fn skiff_command() -> Command {
    match cores() {
        Some((servers, _)) => {
            let mut c = Command::new("taskset");
            c.args(["-c", &servers, env!("CARGO_BIN_EXE_skiff")]);
            c
        }
        None => Command::new(env!("CARGO_BIN_EXE_skiff")),
    }
}

/// A running `skiff up`, `skiff node` or `skiff scheduler`.
struct Skiff {
    child: Child,
    listen: String,
    admin: String,
    _dir: Option<tempfile::TempDir>,
}

impl Skiff {
    fn start() -> Skiff {
        Skiff::start_with(&[])
    }

    fn start_with(extra: &[&str]) -> Skiff {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = Skiff::spawn(&["up"], extra, Some(dir.path()));
        s._dir = Some(dir);
        s
    }

    /// Starts `skiff <sub> <extra>` on free loopback ports and waits for its banner.
    fn spawn(sub: &[&str], extra: &[&str], data_dir: Option<&Path>) -> Skiff {
        Skiff::spawn_with(skiff_command(), sub, extra, data_dir)
    }

    /// Like [`Skiff::spawn`], starting `cmd` (the skiff binary, perhaps under taskset).
    fn spawn_with(
        mut cmd: Command,
        sub: &[&str],
        extra: &[&str],
        data_dir: Option<&Path>,
    ) -> Skiff {
        cmd.args(sub)
            .args(["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
            .args(extra);
        // The test NATS servers are secured (TLS, NKey users); present the role's user.
        if sub.iter().chain(extra).any(|a| *a == "--nats") {
            let role = match sub.first() {
                Some(&"scheduler") => skiff_core::testkit::Role::Scheduler,
                _ => skiff_core::testkit::Role::Node,
            };
            cmd.args(skiff_core::testkit::secured().args(role));
        }
        if let Some(d) = data_dir {
            cmd.arg("--data-dir").arg(d);
        }
        let mut child = cmd
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start skiff");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        let mut reader = BufReader::new(stdout);
        while !line.contains("http://") {
            line.clear();
            if reader.read_line(&mut line).expect("banner") == 0 {
                panic!("skiff {sub:?} exited before its banner");
            }
        }
        let urls: Vec<String> = line
            .split_whitespace()
            .filter(|w| w.starts_with("http://"))
            .map(String::from)
            .collect();
        assert_eq!(urls.len(), 2, "unexpected banner {line}");
        Skiff {
            child,
            listen: urls[0].clone(),
            admin: urls[1].clone(),
            _dir: None,
        }
    }

    /// The process's resident memory, in KiB.
    fn rss_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            })
            .unwrap_or(0)
    }

    fn deploy(&self, manifest_dir: &Path) {
        let out = Command::new(env!("CARGO_BIN_EXE_skiff"))
            .args([
                "deploy",
                "--no-build",
                "--wait-all",
                "--server",
                &self.admin,
            ])
            .arg(manifest_dir)
            .output()
            .expect("deploy");
        assert!(
            out.status.success(),
            "deploy failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Skiff {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The native baseline: the same routes as the functions, in plain hyper.
async fn native_server(state: Arc<LocalState>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let state = state.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let state = state.clone();
                    async move {
                        let path = req.uri().path().to_string();
                        let body = if let Some(key) = path.strip_prefix("/counter/") {
                            let op = Op::Increment {
                                ns: Namespace::new("native", "default"),
                                key: key.to_string(),
                                delta: 1,
                            };
                            match state.write(op, KvLimits::default()).await {
                                Ok(OpResult::Incremented(n)) => n.to_string(),
                                other => format!("{other:?}"),
                            }
                        } else {
                            format!("Hello from native hyper! You asked for {path}\n")
                        };
                        Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from(body))))
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

/// One run's result.
#[derive(Clone, Debug)]
struct Stats {
    rps: f64,
    p50_us: u64,
    p99_us: u64,
    errors: u64,
}

/// Drives `conns` keep-alive connections at `url` for `dur`.
async fn run_load(
    addr: &str,
    path: &str,
    method: &http::Method,
    conns: usize,
    dur: Duration,
) -> Stats {
    let mut tasks = Vec::new();
    let start = Instant::now();
    for _ in 0..conns {
        let (addr, path, method) = (addr.to_string(), path.to_string(), method.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0u64;
            let Ok(stream) = tokio::net::TcpStream::connect(&addr).await else {
                return (lat, 1);
            };
            let _ = stream.set_nodelay(true);
            let Ok((mut sender, conn)) =
                hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
                    .await
            else {
                return (lat, 1);
            };
            tokio::spawn(conn);
            while start.elapsed() < dur {
                let req = http::Request::builder()
                    .method(method.clone())
                    .uri(&path)
                    .header("host", &addr)
                    .body(Empty::new())
                    .expect("request");
                let t = Instant::now();
                match sender.send_request(req).await {
                    Ok(resp) => {
                        let ok = resp.status().is_success();
                        let _ = resp.into_body().collect().await;
                        if ok {
                            lat.push(t.elapsed().as_micros() as u64);
                        } else {
                            errors += 1;
                        }
                    }
                    Err(_) => {
                        errors += 1;
                        break;
                    }
                }
            }
            (lat, errors)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        if let Ok((lat, e)) = t.await {
            all.extend(lat);
            errors += e;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    all.sort_unstable();
    let q = |p: f64| {
        if all.is_empty() {
            0
        } else {
            all[((all.len() as f64 * p) as usize).min(all.len() - 1)]
        }
    };
    Stats {
        rps: all.len() as f64 / elapsed,
        p50_us: q(0.5),
        p99_us: q(0.99),
        errors,
    }
}

/// Warm-up, then RUNS runs; the median run by requests/s.
async fn measure(base: &str, path: &str, method: http::Method, conns: usize) -> Stats {
    let addr = base.trim_start_matches("http://").to_string();
    run_load(&addr, path, &method, conns, WARMUP).await;
    let mut runs = Vec::new();
    for _ in 0..RUNS {
        runs.push(run_load(&addr, path, &method, conns, RUN).await);
    }
    runs.sort_by(|a, b| a.rps.total_cmp(&b.rps));
    runs[RUNS / 2].clone()
}

fn row(label: &str, s: &Stats, baseline: Option<&Stats>) {
    let ratio = baseline
        .map(|b| format!("{:>6.1}%", 100.0 * s.rps / b.rps.max(1e-9)))
        .unwrap_or_else(|| "   base".to_string());
    println!(
        "| {label:<34} | {:>10.0} | {:>8} | {:>8} | {:>6} | {ratio} |",
        s.rps, s.p50_us, s.p99_us, s.errors
    );
}

fn header(title: &str) {
    println!("\n### {title}\n");
    println!(
        "| {:<34} | {:>10} | {:>8} | {:>8} | {:>6} | {:>7} |",
        "target", "req/s", "p50 µs", "p99 µs", "errors", "vs base"
    );
    println!(
        "|{}|------------|----------|----------|--------|---------|",
        "-".repeat(36)
    );
}

/// A component both Skiff and `wasmtime serve` run, and the path it is asked for.
struct Bench {
    label: &'static str,
    wasm: PathBuf,
    path: &'static str,
}

fn bench_components() -> Vec<Bench> {
    let guests = repo().join("tests/guests/target/wasm32-wasip2/release");
    vec![
        Bench {
            label: "hello 0.3 (skiff-sdk)",
            wasm: repo().join("functions/target/wasm32-wasip2/release/hello.wasm"),
            path: "/hello/bench",
        },
        Bench {
            label: "hello 0.2 (skiff-sdk)",
            wasm: guests.join("hello02.wasm"),
            path: "/hello02/bench",
        },
        Bench {
            label: "hello 0.3 (spin-sdk 7)",
            wasm: guests.join("spinhello.wasm"),
            path: "/spinhello/bench",
        },
    ]
}

/// Sends `body` with `method` to `url`; the status and the whole answer.
async fn fetch(url: &str, method: http::Method, body: Bytes) -> (u16, Bytes) {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let req = http::Request::builder()
        .method(method)
        .uri(url)
        .body(Full::new(body))
        .expect("request");
    let resp = client.request(req).await.expect("call");
    let status = resp.status().as_u16();
    (
        status,
        resp.into_body().collect().await.expect("body").to_bytes(),
    )
}

/// Skiff and the peer answer the same requests the same way: each hello, and a streamed
/// 4 MB echo through the 0.3 echo component.
async fn same_answers(skiff: &Skiff, peers: &[(String, Option<peer::Peer>)], echo: &peer::Peer) {
    for (b, (_, p)) in bench_components().iter().zip(peers) {
        let Some(p) = p else { continue };
        let ours = fetch(
            &format!("{}{}", skiff.listen, b.path),
            http::Method::GET,
            Bytes::new(),
        )
        .await;
        let theirs = fetch(
            &format!("{}{}", p.url, b.path),
            http::Method::GET,
            Bytes::new(),
        )
        .await;
        assert_eq!(
            ours, theirs,
            "{}: Skiff and wasmtime serve answer differently",
            b.label
        );
    }
    let big: Bytes = (0..4_000_000u32)
        .map(|i| (i * 31 % 251) as u8)
        .collect::<Vec<_>>()
        .into();
    let ours = fetch(
        &format!("{}/echo03/x", skiff.listen),
        http::Method::POST,
        big.clone(),
    )
    .await;
    let theirs = fetch(
        &format!("{}/echo03/x", echo.url),
        http::Method::POST,
        big.clone(),
    )
    .await;
    assert_eq!((ours.0, theirs.0), (200, 200));
    assert!(ours.1 == big && theirs.1 == big, "the 4 MB echo differs");
    println!(
        "\nSkiff and wasmtime serve {} gave the same answers (status and body) to every hello above and to a streamed 4 MB echo (0.3).",
        peer::VERSION
    );
}

async fn hello(skiff: &Skiff, native: &str) {
    let wasmtime = peer::binary();
    let server_cores = cores().map(|(s, _)| s);
    let peers: Vec<(String, Option<peer::Peer>)> = bench_components()
        .into_iter()
        .map(|b| {
            let p = wasmtime.as_ref().ok().map(|w| {
                peer::Peer::start(w, &b.wasm, server_cores.as_deref()).expect("wasmtime serve")
            });
            (b.label.to_string(), p)
        })
        .collect();
    header("hello world over HTTP/1.1 keep-alive");
    let mut bases = Vec::new();
    let mut versus = Vec::new();
    for conns in [1, 32] {
        let base = measure(native, "/hello/bench", http::Method::GET, conns).await;
        row(&format!("native hyper, {conns} conn"), &base, None);
        for (b, (_, p)) in bench_components().iter().zip(&peers) {
            let s = measure(&skiff.listen, b.path, http::Method::GET, conns).await;
            row(
                &format!("skiff, {}, {conns} conn", b.label),
                &s,
                Some(&base),
            );
            if let Some(p) = p {
                let w = measure(&p.url, b.path, http::Method::GET, conns).await;
                row(
                    &format!("wasmtime serve, {}, {conns} conn", b.label),
                    &w,
                    Some(&base),
                );
                versus.push((b.label, conns, s.rps, w.rps, base.rps));
            }
        }
        bases.push((conns, base));
    }
    match &wasmtime {
        Ok(_) => {
            println!(
                "\n| component | conns | skiff req/s | wasmtime serve req/s | skiff ÷ wasmtime | skiff ÷ native |"
            );
            println!("|---|---|---|---|---|---|");
            for (label, conns, s, w, n) in &versus {
                println!(
                    "| {label} | {conns} | {s:.0} | {w:.0} | {:.2}× | {:.1}% |",
                    s / w.max(1e-9),
                    100.0 * s / n.max(1e-9)
                );
            }
            let echo = peer::Peer::start(
                wasmtime.as_ref().expect("checked"),
                &repo().join("tests/guests/target/wasm32-wasip2/release/echo03.wasm"),
                server_cores.as_deref(),
            )
            .expect("wasmtime serve echo");
            same_answers(skiff, &peers, &echo).await;
        }
        Err(why) => println!("\n(no wasmtime serve rows: {why})"),
    }
    drop(peers);
    // Through the scheduler (its own node, NATS beside them), against the same baselines;
    // started only now so that the rows above have the server cores to themselves.
    let cluster = Cluster::start();
    for (conns, base) in &bases {
        let s = measure(
            &cluster.scheduler.listen,
            "/hello/bench",
            http::Method::GET,
            *conns,
        )
        .await;
        row(&format!("scheduler → 1 node, {conns} conn"), &s, Some(base));
    }
    drop(cluster);
    let metrics = admin_get(&skiff.admin, "/metrics").await;
    let series = |name: &str, function: &str| -> f64 {
        let prefix = format!("{name}{{function=\"{function}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    };
    for function in ["hello", "hello02"] {
        let (sum, count) = (
            series("skiff_instantiation_duration_seconds_sum", function),
            series("skiff_instantiation_duration_seconds_count", function),
        );
        let requests: f64 = metrics
            .lines()
            .filter(|l| l.starts_with(&format!("skiff_invocations_total{{function=\"{function}\"")))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        println!(
            "\n`{function}`: {count:.0} instances for {requests:.0} requests; instantiation mean {:.1} µs.",
            1e6 * sum / count.max(1.0)
        );
    }
}

/// A nats-server, one `skiff node` and a `skiff scheduler`, hello deployed.
struct Cluster {
    _nats: skiff_core::testkit::NatsServer,
    _node: Skiff,
    scheduler: Skiff,
    _dir: tempfile::TempDir,
}

impl Cluster {
    fn start() -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let nats =
            skiff_core::testkit::NatsServer::start(&dir.path().join("nats")).expect("nats-server");
        let url = nats.url();
        let node = Skiff::spawn(
            &["node", "--nats", &url, "--name", "bench"],
            &[],
            Some(&dir.path().join("node")),
        );
        let scheduler = Skiff::spawn(&["scheduler", "--nats", &url], &[], None);
        scheduler.deploy(&repo().join("functions/hello"));
        Cluster {
            _nats: nats,
            _node: node,
            scheduler,
            _dir: dir,
        }
    }
}

/// GETs `path` from an admin API; the body as text.
async fn admin_get(admin: &str, path: &str) -> String {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Empty<Bytes>>();
    let resp = client
        .get(format!("{admin}{path}").parse().expect("url"))
        .await
        .expect("admin get");
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    String::from_utf8_lossy(&body).into_owned()
}

/// Sends `body` with `method` to `url`; the status.
async fn admin_send(url: &str, method: http::Method, body: Bytes) -> u16 {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let req = http::Request::builder()
        .method(method)
        .uri(url)
        .body(Full::new(body))
        .expect("request");
    let resp = client.request(req).await.expect("admin call");
    let status = resp.status().as_u16();
    let _ = resp.into_body().collect().await;
    status
}

/// `wasm` with a custom section appended: a different artifact (another sha256) that
/// behaves the same, so the node has to compile it.
fn variant(wasm: &[u8], tag: u64) -> Vec<u8> {
    fn leb(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    let name = b"skiff-bench";
    let payload = tag.to_le_bytes();
    let mut section = Vec::new();
    leb(name.len(), &mut section);
    section.extend_from_slice(name);
    section.extend_from_slice(&payload);
    let mut out = wasm.to_vec();
    out.push(0);
    leb(section.len(), &mut out);
    out.extend_from_slice(&section);
    out
}

/// Uploads `wasm` (if new) and deploys it as `name` through the admin API; the status.
async fn deploy_raw(admin: &str, name: &str, wasm: &[u8], upload: bool) -> u16 {
    let sha = skiff_core::record::sha256_hex(wasm);
    if upload {
        let status = admin_send(
            &format!("{admin}/v1/artifacts/{sha}"),
            http::Method::PUT,
            Bytes::copy_from_slice(wasm),
        )
        .await;
        assert_eq!(status, 200, "upload of {name}");
    }
    let body = serde_json::json!({
        "manifest": format!("name = \"{name}\"\ncomponent = \"hello.wasm\"\n"),
        "artifact": sha,
    });
    admin_send(
        &format!("{admin}/v1/functions/{name}"),
        http::Method::PUT,
        Bytes::from(body.to_string()),
    )
    .await
}

/// Deploys `names` (all on one artifact) with 16 deploys in flight.
async fn deploy_many(admin: &str, wasm: &Arc<Vec<u8>>, names: std::ops::Range<usize>) {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(names.start));
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let (admin, wasm, next) = (admin.to_string(), wasm.clone(), next.clone());
            let end = names.end;
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= end {
                        return;
                    }
                    let status = deploy_raw(&admin, &format!("f{i}"), &wasm, false).await;
                    assert_eq!(status, 200, "deploy f{i}");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("deployer");
    }
}

/// Polls `url` until it answers 200; how long that took.
async fn until_ok(url: &str, since: Instant) -> Duration {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Empty<Bytes>>();
    loop {
        if let Ok(r) = client.get(url.parse().expect("url")).await
            && r.status().is_success()
        {
            return since.elapsed();
        }
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
}

fn median(mut xs: Vec<Duration>) -> Duration {
    xs.sort_unstable();
    xs[xs.len() / 2]
}

async fn scale() {
    let hello = Arc::new(
        std::fs::read(repo().join("functions/target/wasm32-wasip2/release/hello.wasm"))
            .expect("hello.wasm"),
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let skiff = Skiff::spawn(&["up"], &[], Some(&data));

    println!("\n### deploy to first response (hello.wasm, 5 runs, median)\n");
    println!("| artifact                                  | deploy → first 200 |");
    println!("|-------------------------------------------|--------------------|");
    let mut fresh = Vec::new();
    let mut known = Vec::new();
    for i in 0..5u64 {
        let wasm = variant(&hello, i);
        let t = Instant::now();
        assert_eq!(
            deploy_raw(&skiff.admin, &format!("new{i}"), &wasm, true).await,
            200
        );
        fresh.push(until_ok(&format!("{}/new{i}/", skiff.listen), t).await);
        let t = Instant::now();
        assert_eq!(
            deploy_raw(&skiff.admin, &format!("again{i}"), &wasm, true).await,
            200
        );
        known.push(until_ok(&format!("{}/again{i}/", skiff.listen), t).await);
    }
    println!(
        "| new (upload, compile, link, record)       | {:>15.1} ms |",
        median(fresh).as_secs_f64() * 1e3
    );
    println!(
        "| already compiled, another function        | {:>15.1} ms |",
        median(known).as_secs_f64() * 1e3
    );

    println!("\n### memory and start-up with many functions (hello.wasm under distinct names)\n");
    println!("| functions deployed | node RSS MiB | per function KiB | loaded components |");
    println!("|--------------------|--------------|------------------|-------------------|");
    // Start from a node with nothing of this run deployed.
    drop(skiff);
    let _ = std::fs::remove_dir_all(&data);
    let mut skiff = Skiff::spawn(&["up"], &[], Some(&data));
    let base = deploy_raw(&skiff.admin, "f0", &hello, true).await;
    assert_eq!(base, 200);
    let _ = until_ok(&format!("{}/f0/", skiff.listen), Instant::now()).await;
    let rss0 = skiff.rss_kib();
    let report = |n: usize, rss: u64, metrics: &str| {
        let loaded = metrics
            .lines()
            .find_map(|l| l.strip_prefix("skiff_code_cache_components "))
            .unwrap_or("?")
            .to_string();
        println!(
            "| {n:>18} | {:>12.1} | {:>16.1} | {loaded:>17} |",
            rss as f64 / 1024.0,
            (rss.saturating_sub(rss0)) as f64 / n.max(2).saturating_sub(1) as f64,
        );
    };
    report(1, rss0, &admin_get(&skiff.admin, "/metrics").await);
    let mut deployed = 1;
    let mut startups = Vec::new();
    for target in [1_000usize, 10_000] {
        deploy_many(&skiff.admin, &hello, deployed..target).await;
        deployed = target;
        let metrics = admin_get(&skiff.admin, "/metrics").await;
        report(target, skiff.rss_kib(), &metrics);
        // Start-up: stop, then time a node over the same data dir to its banner and to
        // the last function's first answer.
        let _ = Command::new("kill")
            .args(["-TERM", &skiff.child.id().to_string()])
            .status();
        let _ = skiff.child.wait();
        let t = Instant::now();
        skiff = Skiff::spawn(&["up"], &[], Some(&data));
        let listening = t.elapsed();
        let first = until_ok(&format!("{}/f{}/", skiff.listen, deployed - 1), t).await;
        startups.push((target, listening, first, skiff.rss_kib()));
    }
    println!(
        "\n| start-up with N functions | to listening | to the last one's first 200 | RSS after |"
    );
    println!(
        "|---------------------------|--------------|-----------------------------|-----------|"
    );
    for (n, listening, first, rss) in startups {
        println!(
            "| {n:>25} | {:>9.0} ms | {:>24.0} ms | {:>5.1} MiB |",
            listening.as_secs_f64() * 1e3,
            first.as_secs_f64() * 1e3,
            rss as f64 / 1024.0
        );
    }

    // What a loaded component costs: 50 distinct artifacts, each called once.
    let before = skiff.rss_kib();
    for i in 0..50u64 {
        let wasm = variant(&hello, 1000 + i);
        assert_eq!(
            deploy_raw(&skiff.admin, &format!("d{i}"), &wasm, true).await,
            200
        );
        let _ = until_ok(&format!("{}/d{i}/", skiff.listen), Instant::now()).await;
    }
    let per = skiff.rss_kib().saturating_sub(before) as f64 / 50.0;
    println!(
        "\nA loaded component (hello.wasm: compiled code + linked instance template) costs about {per:.0} KiB of RSS; at most --code-cache (default 512) stay loaded."
    );
}

async fn kv(skiff: &Skiff, native: &str) {
    // Guest-side latency, as the function measures it around each call.
    let url = format!("{}/probe/kvbench/2000", skiff.listen);
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Empty<Bytes>>();
    let mut samples = Vec::new();
    for _ in 0..RUNS {
        let resp = client
            .get(url.parse().expect("url"))
            .await
            .expect("kvbench");
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).expect("kvbench json");
        samples.push(v);
    }
    let median = |field: &str| {
        let mut xs: Vec<u64> = samples.iter().filter_map(|v| v[field].as_u64()).collect();
        xs.sort_unstable();
        xs.get(xs.len() / 2).copied().unwrap_or(0)
    };
    println!("\n### key-value latency inside the guest (2000 sequential ops, 100-byte values)\n");
    println!("| op  | p50 µs | p99 µs |");
    println!("|-----|--------|--------|");
    println!(
        "| set | {:>6.1} | {:>6.1} |",
        median("set_p50_ns") as f64 / 1000.0,
        median("set_p99_ns") as f64 / 1000.0
    );
    println!(
        "| get | {:>6.1} | {:>6.1} |",
        median("get_p50_ns") as f64 / 1000.0,
        median("get_p99_ns") as f64 / 1000.0
    );

    header("durable increments through HTTP (POST /counter/x, one hot key)");
    for conns in [1, 16, 64] {
        let base = measure(native, "/counter/x", http::Method::POST, conns).await;
        row(&format!("native hyper + redb, {conns} conn"), &base, None);
        let s = measure(&skiff.listen, "/counter/x", http::Method::POST, conns).await;
        row(
            &format!("skiff counter.wasm, {conns} conn"),
            &s,
            Some(&base),
        );
    }
}

/// Deploys the probe guest as `name` with the given extra manifest text.
fn deploy_probe(skiff: &Skiff, dir: &Path, name: &str, extra: &str) {
    let folder = dir.join(name);
    std::fs::create_dir_all(&folder).expect("mkdir");
    std::fs::write(
        folder.join("skiff.toml"),
        format!(
            "name = \"{name}\"\ncomponent = \"{}\"\n{extra}",
            repo()
                .join("tests/guests/target/wasm32-wasip2/release/misbehave.wasm")
                .display()
        ),
    )
    .expect("manifest");
    skiff.deploy(&folder);
}

fn now_us() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or(0)
}

/// Publishes `n` events through the admin API with `conns` publishers, waits until the
/// probe's one-step trigger has handled them all, and reads back each latency.
async fn event_run(skiff: &Skiff, topic: &str, n: usize, conns: usize) -> (f64, u64, u64) {
    let admin = skiff.admin.trim_start_matches("http://").to_string();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let (admin, next, topic) = (admin.clone(), next.clone(), topic.to_string());
        tasks.push(tokio::spawn(async move {
            let stream = tokio::net::TcpStream::connect(&admin).await.expect("admin");
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream))
                    .await
                    .expect("handshake");
            tokio::spawn(conn);
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < n {
                let req = http::Request::post(format!("/v1/events/{topic}"))
                    .header("host", &admin)
                    .body(Full::new(Bytes::from(now_us().to_string())))
                    .expect("request");
                let resp = sender.send_request(req).await.expect("publish");
                assert!(
                    resp.status().is_success(),
                    "publish answered {}",
                    resp.status()
                );
                let _ = resp.into_body().collect().await;
            }
        }));
    }
    for t in tasks {
        t.await.expect("publisher");
    }
    // Wait until every event was handled (each leaves one `lat:` key).
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Empty<Bytes>>();
    let list = |cursor: u64| {
        format!(
            "{}/v1/functions/probe/kv?prefix=lat:&cursor={cursor}",
            skiff.admin
        )
    };
    let mut keys: Vec<String> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while keys.len() < n && Instant::now() < deadline {
        keys.clear();
        let mut cursor = 0;
        loop {
            let resp = client
                .get(list(cursor).parse().expect("url"))
                .await
                .expect("list");
            let body = resp.into_body().collect().await.expect("body").to_bytes();
            let page: serde_json::Value = serde_json::from_slice(&body).expect("json");
            keys.extend(
                page["keys"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|k| k.as_str().map(String::from)),
            );
            match page["cursor"].as_u64() {
                Some(c) => cursor = c,
                None => break,
            }
        }
        if keys.len() < n {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    assert!(
        keys.len() >= n,
        "only {} of {n} events were handled",
        keys.len()
    );
    let mut lat = Vec::with_capacity(keys.len());
    for k in &keys {
        let url = format!(
            "{}/v1/functions/probe/kv/{}",
            skiff.admin,
            k.replace(':', "%3A")
        );
        let resp = client.get(url.parse().expect("url")).await.expect("get");
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        lat.push(String::from_utf8_lossy(&body).parse::<u64>().unwrap_or(0));
    }
    // Clear them for the next run.
    let _ = Command::new(env!("CARGO_BIN_EXE_skiff"))
        .args(["rm", "probe", "--purge-state", "--server", &skiff.admin])
        .output();
    lat.sort_unstable();
    let q = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    (n as f64 / elapsed, q(0.5), q(0.99))
}

async fn events(dir: &Path) {
    println!("\n### events through a one-step trigger (handler stores one key per event)\n");
    println!("Saturated: 2000 events from 32 concurrent publishers (latency includes queueing).");
    println!(
        "Unloaded: 300 events from one publisher, each sent when the previous was accepted.\n"
    );
    println!(
        "| bus                  | events/s (saturated) | p50 µs | p99 µs | unloaded p50 µs | p99 µs |"
    );
    println!(
        "|----------------------|----------------------|--------|--------|-----------------|--------|"
    );
    let nats = skiff_core::testkit::NatsServer::start(&dir.join("nats")).expect("nats-server");
    for (label, extra) in [
        ("embedded (redb)", None),
        ("NATS JetStream", Some(nats.url())),
    ] {
        let args: Vec<String> = extra
            .map(|u| vec!["--nats".to_string(), u])
            .unwrap_or_default();
        let skiff = Skiff::start_with(&args.iter().map(String::as_str).collect::<Vec<_>>());
        let manifest = "[limits]\nconcurrency = 64\n[[events]]\ntopic = \"bench.>\"\n";
        let mut saturated = Vec::new();
        let mut unloaded = Vec::new();
        for _ in 0..RUNS {
            deploy_probe(&skiff, dir, "probe", manifest);
            saturated.push(event_run(&skiff, "bench.tick", 2000, 32).await);
            deploy_probe(&skiff, dir, "probe", manifest);
            unloaded.push(event_run(&skiff, "bench.tick", 300, 1).await);
        }
        saturated.sort_by(|a, b| a.0.total_cmp(&b.0));
        unloaded.sort_by_key(|r| r.1);
        let (rate, p50, p99) = saturated[RUNS / 2];
        let (_, u50, u99) = unloaded[RUNS / 2];
        println!("| {label:<20} | {rate:>20.0} | {p50:>6} | {p99:>6} | {u50:>15} | {u99:>6} |");
    }
}

/// Sequential write latency, then writes/s from concurrent writers, on one store.
/// Functions the state benchmark's plain writers spread over.
const BENCH_FUNCTIONS: usize = 6;

async fn state_run(store: Arc<dyn StateBackend>) -> (u128, u128, f64, f64) {
    store.host("bench").await.expect("host");
    for f in 0..BENCH_FUNCTIONS {
        store.host(&format!("bench-{f}")).await.expect("host");
    }
    let ns = Namespace::new("bench", "default");
    let value = vec![b'v'; 100];
    let mut lat = Vec::with_capacity(1000);
    for i in 0..1000 {
        let started = Instant::now();
        store
            .write(
                Op::Set {
                    ns: ns.clone(),
                    key: format!("seq-{i}"),
                    value: value.clone(),
                },
                KvLimits::default(),
            )
            .await
            .expect("set");
        lat.push(started.elapsed().as_micros());
    }
    lat.sort_unstable();
    let rate = |writers: usize, hot: bool| {
        let store = store.clone();
        let (ns, value) = (ns.clone(), value.clone());
        async move {
            let end = Instant::now() + RUN;
            let tasks: Vec<_> = (0..writers)
                .map(|w| {
                    // Plain writers spread over BENCH_FUNCTIONS functions (and so over
                    // the cluster's state shards); the hot key is one function's.
                    let ns = if hot {
                        ns.clone()
                    } else {
                        Namespace::new(&format!("bench-{}", w % BENCH_FUNCTIONS), "default")
                    };
                    let (store, value) = (store.clone(), value.clone());
                    tokio::spawn(async move {
                        let mut n = 0u64;
                        while Instant::now() < end {
                            let op = if hot {
                                Op::Increment {
                                    ns: ns.clone(),
                                    key: "hot".into(),
                                    delta: 1,
                                }
                            } else {
                                Op::Set {
                                    ns: ns.clone(),
                                    key: format!("w{w}-{n}"),
                                    value: value.clone(),
                                }
                            };
                            if store.write(op, KvLimits::default()).await.is_ok() {
                                n += 1;
                            }
                        }
                        n
                    })
                })
                .collect();
            let mut total = 0;
            for t in tasks {
                total += t.await.expect("writer");
            }
            total as f64 / RUN.as_secs_f64()
        }
    };
    let sets = rate(32, false).await;
    let increments = rate(8, true).await;
    (
        lat[lat.len() / 2],
        lat[lat.len() * 99 / 100],
        sets,
        increments,
    )
}

/// A local state store on its own database file.
async fn open_local(path: &Path) -> Arc<LocalState> {
    LocalState::open(LocalDb::open(path).expect("local database"))
        .await
        .expect("state")
}

async fn state_writes(dir: &Path) {
    println!("\n### state writes (in process; 100-byte values)\n");
    println!(
        "Latency: 1000 sequential sets. Throughput: 32 writers on their own keys, over {BENCH_FUNCTIONS} functions, for {}s; increments: 8 writers on one key.\n",
        RUN.as_secs()
    );
    println!(
        "| store                                   | set p50 µs | set p99 µs | sets/s (32 writers) | increments/s (one key) |"
    );
    println!(
        "|-----------------------------------------|------------|------------|---------------------|------------------------|"
    );
    let embedded: Arc<dyn StateBackend> = open_local(&dir.join("bench-embedded.redb")).await;
    let (p50, p99, sets, incs) = state_run(embedded).await;
    let label = "embedded (redb, group commit)";
    println!("| {label:<39} | {p50:>10} | {p99:>10} | {sets:>19.0} | {incs:>22.0} |");
    // The secured cluster (TLS, NKey users, as deploy/ sets it up) with its state in 3
    // shards, in 1 shard (one stream leader takes every write), and open (what security
    // costs).
    for (label, secure, shards) in [
        ("cluster (JetStream R3, sync always)", true, 3),
        ("  same, 1 state shard", true, 1),
        ("  same, no TLS and no users", false, 3),
    ] {
        let shards = skiff_core::state_keys::StateShards::new(shards).expect("shards");
        let nats_dir = dir.join(format!("nats-cluster-{secure}-{}", shards.count()));
        let (nats, auth) = if secure {
            let auth = skiff_core::testkit::secured().auth(skiff_core::testkit::Role::Node);
            (skiff_core::testkit::NatsCluster::start(&nats_dir, 3), auth)
        } else {
            let open = skiff_core::testkit::NatsCluster::start_open(&nats_dir, 3);
            (open, Default::default())
        };
        let nats = nats.expect("nats cluster");
        let client = skiff_core::nats::connect(&nats.urls(), "bench", &auth)
            .await
            .expect("nats");
        let replica = skiff_core::nats::until_ready("open the state stream", || {
            skiff_runtime::state::Replica::open(
                async_nats::jetstream::new(client.clone()),
                shards,
                3,
                skiff_core::limits::DedupWindows::default().state,
            )
        })
        .await
        .expect("state stream");
        let copy = open_local(&nats_dir.join("bench-cluster.redb")).await;
        let leaders = replica.leaders().await;
        let cluster: Arc<dyn StateBackend> =
            ReplicatedState::new(copy, replica, Duration::from_secs(60));
        let servers: std::collections::BTreeSet<_> =
            leaders.iter().filter_map(|(_, l)| l.clone()).collect();
        eprintln!(
            "{label}: {} shard leader(s) on {} server(s)",
            leaders.len(),
            servers.len()
        );
        let (p50, p99, sets, incs) = state_run(cluster).await;
        println!("| {label:<39} | {p50:>10} | {p99:>10} | {sets:>19.0} | {incs:>22.0} |");
    }
}

fn main() {
    let _ = cores();
    // `SKIFF_BENCH_LOAD=http://host:port/path [SKIFF_BENCH_CONNS=32]`: only drive load at
    // that URL for 10 s and print requests/s (for profiling a server started by hand).
    if let Ok(url) = std::env::var("SKIFF_BENCH_LOAD") {
        let conns = std::env::var("SKIFF_BENCH_CONNS")
            .ok()
            .and_then(|c| c.parse().ok())
            .unwrap_or(32);
        let uri: http::Uri = url.parse().expect("SKIFF_BENCH_LOAD is a URL");
        let addr = uri.authority().expect("host:port").to_string();
        let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
        if let Some((_, client)) = cores() {
            pin_thread(client);
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let s = rt.block_on(run_load(
            &addr,
            &path,
            &http::Method::GET,
            conns,
            Duration::from_secs(10),
        ));
        println!(
            "{:.0} req/s, p50 {} µs, p99 {} µs, {} errors",
            s.rps, s.p50_us, s.p99_us, s.errors
        );
        return;
    }
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let want = |s: &str| args.is_empty() || args.iter().any(|a| a == s);
    build_guests();
    let skiff = Skiff::start();
    skiff.deploy(&repo().join("functions/hello"));
    skiff.deploy(&repo().join("functions/counter"));
    let tmp_guests = tempfile::tempdir().expect("tempdir");
    for name in ["hello02", "spinhello", "echo03"] {
        let dir = tmp_guests.path().join(name);
        std::fs::create_dir_all(&dir).expect("mkdir");
        let wasm = repo().join(format!(
            "tests/guests/target/wasm32-wasip2/release/{name}.wasm"
        ));
        // As many requests at once as the load generator sends.
        let manifest = format!(
            "name = \"{name}\"\ncomponent = \"{}\"\n[limits]\nconcurrency = 64\nbody = \"16MiB\"\n",
            wasm.display()
        );
        std::fs::write(dir.join("skiff.toml"), manifest).expect("manifest");
        skiff.deploy(&dir);
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let probe = tmp.path().join("probe");
    std::fs::create_dir_all(&probe).expect("mkdir");
    std::fs::write(
        probe.join("skiff.toml"),
        format!(
            "name = \"probe\"\ncomponent = \"{}\"\n",
            repo()
                .join("tests/guests/target/wasm32-wasip2/release/misbehave.wasm")
                .display()
        ),
    )
    .expect("manifest");
    skiff.deploy(&probe);

    let server_cores = cores();
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_start(move || {
            // The native server stays off the load generator's core.
            if let Some((_, client)) = &server_cores {
                pin_servers(*client);
            }
        })
        .build()
        .expect("runtime");
    let native = server_rt.block_on(async {
        let state = open_local(&tmp.path().join("native-state.redb")).await;
        native_server(state).await
    });
    let native = format!("http://{native}");
    // The load generator gets a single thread, on a core of its own.
    if let Some((_, client)) = cores() {
        pin_thread(client);
    }
    let client_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "## Skiff benchmark — {} cores, {}; servers on cores {}, load generator on core {}",
        cores().map_or(1, |(_, client)| client + 1),
        std::env::consts::ARCH,
        cores().map_or("any".to_string(), |(s, _)| s),
        cores().map_or("any".to_string(), |(_, c)| c.to_string()),
    );
    println!(
        "(median of {RUNS} runs of {}s after a {}s warm-up)",
        RUN.as_secs(),
        WARMUP.as_secs()
    );
    if want("hello") {
        client_rt.block_on(hello(&skiff, &native));
    }
    if want("kv") {
        client_rt.block_on(kv(&skiff, &native));
    }
    if want("events") {
        client_rt.block_on(events(tmp.path()));
    }
    if want("state") {
        server_rt.block_on(state_writes(tmp.path()));
    }
    if want("scale") {
        client_rt.block_on(scale());
    }
    if want("placement") {
        client_rt.block_on(placement::placement());
    }
    if want("schedules") {
        server_rt.block_on(schedules::schedules());
    }
    if want("redeploy") {
        client_rt.block_on(redeploy::redeploy());
    }
}
