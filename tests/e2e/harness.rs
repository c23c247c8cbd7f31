//! Test harness: builds the guest components, starts the real `skiff` binary on free
//! loopback ports in a temp dir, and talks to it over real sockets.
//!
//! Clusters start secured, as deploy/ documents: NATS over TLS with NKey users holding
//! the permission sets of deploy/nats/permissions.conf (`skiff_core::testkit::secure`),
//! a scheduler that signs records and presents a cluster token, and nodes that trust only
//! its key and answer only that token. A test that passes any `--nats-*`, `--trust`,
//! `--signing-key` or `--cluster-token-file` flag itself gets no defaults for that part.
//! Requests the harness sends to a token-guarded node carry the token, as the scheduler's
//! would; [`send_unstamped`] sends without it.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The repository's root folder.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("runtime/ has a parent")
        .to_path_buf()
}

/// The `skiff` binary under test.
pub fn skiff_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_skiff"))
}

/// Builds `functions/` and `tests/guests/` for wasm32-wasip2 once per test process.
pub fn build_guests() {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    let result = BUILT.get_or_init(|| {
        for dir in ["functions", "tests/guests"] {
            let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
                .args(["build", "--release", "--target", "wasm32-wasip2"])
                .current_dir(repo().join(dir))
                .env_remove("CARGO_TARGET_DIR")
                .output()
                .map_err(|e| format!("cannot run cargo: {e}"))?;
            if !out.status.success() {
                let stderr = String::from_utf8_lossy(&out.stderr);
                let hint = if stderr.contains("wasm32-wasip2") && stderr.contains("target") {
                    "\nthe wasm target is missing: run `rustup target add wasm32-wasip2`"
                } else {
                    ""
                };
                return Err(format!(
                    "building {dir} for wasm32-wasip2 failed:\n{stderr}{hint}"
                ));
            }
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// Path of a built guest component.
pub fn guest(workspace: &str, file: &str) -> PathBuf {
    build_guests();
    repo()
        .join(workspace)
        .join("target/wasm32-wasip2/release")
        .join(file)
}

/// A running `skiff up`.
pub struct Skiff {
    child: Child,
    /// Base URL of the function listener.
    pub listen: String,
    /// Base URL of the admin API.
    pub admin: String,
    /// The admin token, when the server requires one.
    pub token: Option<String>,
    stderr: Arc<Mutex<String>>,
    _tmp: Option<tempfile::TempDir>,
}

impl Skiff {
    /// Starts `skiff up` in a fresh temp dir with extra `args`.
    pub fn start(args: &[&str]) -> Skiff {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("data");
        let mut s = Skiff::start_in(&dir, args);
        s._tmp = Some(tmp);
        s
    }

    /// Starts `skiff up` on `data_dir` (kept by the caller) with extra `args`.
    pub fn start_in(data_dir: &Path, args: &[&str]) -> Skiff {
        let mut all = vec!["up", "--data-dir", data_dir.to_str().expect("utf-8 path")];
        all.extend_from_slice(args);
        Skiff::spawn(&all)
    }

    /// Starts `skiff node` named `name` on `data_dir` against NATS at `nats`.
    pub fn node(data_dir: &Path, nats: &str, name: &str, args: &[&str]) -> Skiff {
        let mut all = vec![
            "node",
            "--nats",
            nats,
            "--name",
            name,
            "--data-dir",
            data_dir.to_str().expect("utf-8 path"),
        ];
        all.extend_from_slice(args);
        Skiff::spawn(&all)
    }

    /// Starts `skiff node` like [`Skiff::node`], but no file it writes may grow beyond
    /// `max_file_kib` (a disk that fills up): writes past it fail with EFBIG.
    pub fn node_with_small_disk(
        data_dir: &Path,
        nats: &str,
        name: &str,
        max_file_kib: u64,
    ) -> Skiff {
        let all = [
            "node",
            "--nats",
            nats,
            "--name",
            name,
            "--data-dir",
            data_dir.to_str().expect("utf-8 path"),
        ];
        // Ignore SIGXFSZ (inherited through exec) so that the write fails instead.
        Skiff::spawn_via(
            Some(&format!("trap '' XFSZ; ulimit -f {max_file_kib}")),
            &all,
        )
    }

    /// Starts `skiff up` in a fresh temp dir allowed at most `files` open file
    /// descriptors (`ulimit -n`).
    pub fn start_with_fd_limit(files: u32) -> Skiff {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("data");
        let all = ["up", "--data-dir", dir.to_str().expect("utf-8 path")];
        let mut s = Skiff::spawn_via(Some(&format!("ulimit -n {files}")), &all);
        s._tmp = Some(tmp);
        s
    }

    /// Starts `skiff scheduler` against NATS at `nats`, keeping its view in a temp dir
    /// unless `args` name a `--data-dir`.
    pub fn scheduler(nats: &str, args: &[&str]) -> Skiff {
        let mut all = vec!["scheduler", "--nats", nats];
        all.extend_from_slice(args);
        if args.contains(&"--data-dir") {
            return Skiff::spawn(&all);
        }
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().to_str().expect("utf-8 path").to_string();
        all.extend_from_slice(&["--data-dir", &dir]);
        let mut s = Skiff::spawn(&all);
        s._tmp = Some(tmp);
        s
    }

    /// Starts `skiff <args>` (a server subcommand first) on free loopback ports and waits
    /// for its banner.
    fn spawn(args: &[&str]) -> Skiff {
        Skiff::spawn_via(None, args)
    }

    /// Starts `skiff <args>` listening at `listen` and `admin` (`127.0.0.1:PORT`), e.g.
    /// where a stopped server listened before.
    pub fn spawn_at(args: &[&str], listen: &str, admin: &str) -> Skiff {
        Skiff::spawn_full(None, None, args, listen, admin)
    }

    /// Starts `skiff <args>` in the network namespace `ns`, listening at `listen` and
    /// `admin` (addresses of that namespace).
    pub fn spawn_in_netns(ns: &str, args: &[&str], listen: &str, admin: &str) -> Skiff {
        Skiff::spawn_full(Some(ns), None, args, listen, admin)
    }

    /// Like [`Skiff::spawn`], run through `bash -c '<setup>; exec skiff ...'` when given.
    fn spawn_via(setup: Option<&str>, args: &[&str]) -> Skiff {
        Skiff::spawn_full(None, setup, args, "127.0.0.1:0", "127.0.0.1:0")
    }

    fn spawn_full(
        netns: Option<&str>,
        setup: Option<&str>,
        args: &[&str],
        listen: &str,
        admin: &str,
    ) -> Skiff {
        build_guests();
        let secured = secure_args(args);
        let guard_token = (args.first() == Some(&"node")
            && secured.iter().any(|a| a == "--cluster-token-file"))
        .then(|| cluster_keys().token.clone());
        let args: Vec<&str> = args
            .iter()
            .copied()
            .chain(secured.iter().map(String::as_str))
            .collect();
        let args = args.as_slice();
        let mut cmd = match (netns, setup) {
            (Some(ns), _) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(skiff_bin());
                c
            }
            (None, None) => Command::new(skiff_bin()),
            (None, Some(setup)) => {
                let mut c = Command::new("bash");
                c.arg("-c")
                    .arg(format!("{setup}; exec \"$0\" \"$@\""))
                    .arg(skiff_bin());
                c
            }
        };
        cmd.args(args)
            .args(["--listen", listen, "--admin", admin])
            .env_remove("SKIFF_TOKEN")
            .env_remove("SKIFF_NATS");
        for var in [
            "SKIFF_NATS_CREDS",
            "SKIFF_NATS_NKEY",
            "SKIFF_NATS_USER_FILE",
            "SKIFF_NATS_TLS_CA",
            "SKIFF_NATS_TLS_CERT",
            "SKIFF_NATS_TLS_KEY",
            "SKIFF_CLUSTER_TOKEN_FILE",
            "SKIFF_TRUST",
            "SKIFF_SIGNING_KEY",
        ] {
            cmd.env_remove(var);
        }
        cmd.env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let token = args
            .iter()
            .position(|a| *a == "--token")
            .and_then(|i| args.get(i + 1))
            .map(|t| t.to_string());
        let mut child = cmd.spawn().expect("start skiff");
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err_pipe = child.stderr.take().expect("stderr piped");
        let sink = stderr.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok(n) = err_pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                if let Ok(mut s) = sink.lock() {
                    s.push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            }
        });
        let stdout = child.stdout.take().expect("stdout piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            while let Some(Ok(line)) = lines.next() {
                if line.starts_with("skiff is up:") {
                    let _ = tx.send(line);
                }
            }
        });
        let line = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(l) => l,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "skiff up did not report its addresses within 60s; stderr:\n{}",
                    stderr.lock().map(|s| s.clone()).unwrap_or_default()
                );
            }
        };
        let urls: Vec<String> = line
            .split_whitespace()
            .filter(|w| w.starts_with("http://"))
            .map(String::from)
            .collect();
        assert_eq!(urls.len(), 2, "unexpected banner: {line}");
        if guard_token.is_some() {
            guard(&urls[0]);
            guard(&urls[1]);
        }
        Skiff {
            child,
            listen: urls[0].clone(),
            admin: urls[1].clone(),
            // A guarded node's admin API takes the cluster token as its bearer token.
            token: guard_token.or(token),
            stderr,
            _tmp: None,
        }
    }

    /// The server's resident memory, in KiB (from /proc).
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("read /proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc status")
    }

    /// CPU time the server has used so far, in clock ticks (user + system, from /proc).
    pub fn cpu_ticks(&self) -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))
            .expect("read /proc stat");
        // Fields after the command name (which may hold spaces) start past the last ')'.
        let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // utime and stime are fields 14 and 15 of stat, 12 and 13 after the name.
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime")
    }

    /// What the server has logged so far.
    pub fn log(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Runs a client subcommand of `skiff` against this server.
    pub fn cli(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(skiff_bin());
        cmd.args(args)
            .env("SKIFF_SERVER", &self.admin)
            .env_remove("SKIFF_TOKEN")
            .stdin(Stdio::null());
        if let Some(t) = &self.token {
            cmd.env("SKIFF_TOKEN", t);
        }
        cmd.output().expect("run skiff cli")
    }

    /// Runs a client subcommand and asserts it succeeded; returns stdout.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "skiff {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs a client subcommand and asserts it failed; returns stderr.
    pub fn cli_err(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            !out.status.success(),
            "skiff {args:?} unexpectedly succeeded: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// SIGKILLs the server and waits for it to die.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Asks the server to stop (SIGTERM) and waits up to `max` for it to exit.
    pub fn terminate(&mut self, max: Duration) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let start = Instant::now();
        while start.elapsed() < max {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Asserts that hello answers 200 (the node still serves after something bad).
    pub async fn assert_hello_serves(&self) {
        let r = get(&format!("{}/hello/still-alive", self.listen)).await;
        assert_eq!(r.status, 200, "hello stopped serving: {}", r.text());
        assert!(r.text().contains("/hello/still-alive"));
    }
}

impl Drop for Skiff {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes a function folder with `manifest` as its skiff.toml; returns the folder.
pub fn function_dir(parent: &Path, name: &str, manifest: &str) -> PathBuf {
    let dir = parent.join(name);
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(dir.join("skiff.toml"), manifest).expect("write manifest");
    dir
}

/// Deploys the misbehave test guest as function `name`, its manifest (the name and
/// component lines, then `extra`) written to `parent/name/skiff.toml`.
pub fn deploy_misbehave(skiff: &Skiff, parent: &Path, name: &str, extra: &str) {
    let manifest = format!(
        "name = \"{name}\"\ncomponent = \"{}\"\n{extra}",
        guest("tests/guests", "misbehave.wasm").display()
    );
    let dir = function_dir(parent, name, &manifest);
    skiff.cli_ok(&["deploy", dir.to_str().unwrap(), "--no-build"]);
}

/// Deploys functions/orders on `skiff`, places order `id` and returns the workflow's
/// trace id (its three steps: the HTTP call, payment, notification).
pub async fn place_order(skiff: &Skiff, id: &str) -> String {
    skiff.cli_ok(&[
        "deploy",
        repo().join("functions/orders").to_str().unwrap(),
        "--no-build",
    ]);
    let r = request(
        "POST",
        &format!("{}/orders", skiff.listen),
        &[],
        Bytes::from(format!("{{\"id\": \"{id}\", \"amount\": 3}}")),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    r.headers["x-skiff-trace-id"].to_str().unwrap().to_string()
}

/// An HTTP answer.
#[derive(Debug)]
pub struct Resp {
    /// Status code.
    pub status: u16,
    /// Headers.
    pub headers: http::HeaderMap,
    /// The whole body.
    pub body: Bytes,
}

impl Resp {
    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

type TestBody = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

/// A shared keep-alive HTTP client.
pub fn client() -> Client<HttpConnector, TestBody> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// A body from bytes.
pub fn body(b: impl Into<Bytes>) -> TestBody {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

/// Sends one request; one to a token-guarded node carries the cluster token, as the
/// scheduler's would.
pub async fn send(
    client: &Client<HttpConnector, TestBody>,
    mut req: http::Request<TestBody>,
) -> Result<Resp, String> {
    if is_guarded(req.uri()) && !req.headers().contains_key(CLUSTER_TOKEN_HEADER) {
        let token = http::HeaderValue::from_str(&cluster_keys().token).expect("token header");
        req.headers_mut().insert(CLUSTER_TOKEN_HEADER, token);
    }
    send_unstamped(client, req).await
}

/// Sends one request as it is, without the cluster token.
pub async fn send_unstamped(
    client: &Client<HttpConnector, TestBody>,
    req: http::Request<TestBody>,
) -> Result<Resp, String> {
    let resp = client.request(req).await.map_err(|e| format!("{e:?}"))?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("{e:?}"))?
        .to_bytes();
    Ok(Resp {
        status,
        headers,
        body,
    })
}

/// GET `url`.
pub async fn get(url: &str) -> Resp {
    request("GET", url, &[], Bytes::new()).await
}

/// Sends `method url` with headers and body on a fresh client.
pub async fn request(method: &str, url: &str, headers: &[(&str, &str)], b: Bytes) -> Resp {
    let mut req = http::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    send(&client(), req.body(body(b)).expect("request"))
        .await
        .unwrap_or_else(|e| panic!("{method} {url} failed: {e}"))
}

/// Starts `GET /<function>/sleep/<ms>` (the misbehave guest holds the invocation that
/// long) and returns once the node counts it in flight.
pub async fn start_slow_request(
    skiff: &Skiff,
    function: &str,
    ms: u64,
) -> tokio::task::JoinHandle<Resp> {
    let url = format!("{}/{function}/sleep/{ms}", skiff.listen);
    let slow = tokio::spawn(async move { get(&url).await });
    let info = format!("{}/v1/functions/{function}", skiff.admin);
    let auth = skiff.token.as_ref().map(|t| format!("Bearer {t}"));
    let busy = wait_until(Duration::from_secs(5), async || {
        let headers: Vec<(&str, &str)> = auth
            .as_deref()
            .map(|a| vec![("authorization", a)])
            .unwrap_or_default();
        request("GET", &info, &headers, Bytes::new())
            .await
            .text()
            .contains("\"in_flight\": 1")
    })
    .await;
    assert!(
        busy,
        "the slow invocation of `{function}` never showed as in flight"
    );
    slow
}

/// Polls `f` until it returns true or `max` passes.
pub async fn wait_until(max: Duration, mut f: impl AsyncFnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < max {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// Serves `/pong` ("pong") and `/big` (70 MiB) on a free loopback port; returns its origin.
pub async fn upstream() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(
                hyper_util::rt::TokioIo::new(stream),
                hyper::service::service_fn(
                    |req: http::Request<hyper::body::Incoming>| async move {
                        let body = match req.uri().path() {
                            "/big" => Bytes::from(vec![b'z'; 70 << 20]),
                            _ => Bytes::from_static(b"pong"),
                        };
                        Ok::<_, std::convert::Infallible>(http::Response::new(
                            http_body_util::Full::new(body),
                        ))
                    },
                ),
            ));
        }
    });
    origin
}

/// `s` percent-encoded (every byte but ASCII letters and digits).
pub fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The value of exactly `series` (name and labels as exposed, e.g.
/// `skiff_node_capacity` or `skiff_x_total{function="f"}`) in a Prometheus text.
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// The sum of `name`'s series for `function` whose line also contains `extra` (e.g. a
/// `reason="idle"` label; empty: all of them).
pub fn metric(text: &str, name: &str, function: &str, extra: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(&format!("function=\"{function}\"")))
        .filter(|l| l.contains(extra))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The header the scheduler presents its cluster token in.
pub const CLUSTER_TOKEN_HEADER: &str = "skiff-cluster-token";

/// The scheduler's keys in the secured test cluster.
pub struct ClusterKeys {
    /// The cluster token file.
    pub token_file: PathBuf,
    /// The token itself.
    pub token: String,
    /// The scheduler's signing key file.
    pub signing_key: PathBuf,
    /// Its public key, for the nodes' `--trust`.
    pub trust: String,
}

/// The secured test cluster's token and signing key, made once per test process with
/// `skiff keygen` (beside the NATS test PKI).
pub fn cluster_keys() -> &'static ClusterKeys {
    static KEYS: OnceLock<ClusterKeys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let dir = skiff_core::testkit::secured().dir.clone();
        let token_file = dir.join("cluster.token");
        let signing_key = dir.join("signing.key");
        for (flag, path) in [
            ("--cluster-token", &token_file),
            ("--signing", &signing_key),
        ] {
            let out = Command::new(skiff_bin())
                .args(["keygen", flag])
                .arg(path)
                .output()
                .expect("run skiff keygen");
            assert!(
                out.status.success(),
                "skiff keygen {flag} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let read = |p: &Path| {
            std::fs::read_to_string(p)
                .unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
                .trim()
                .to_string()
        };
        ClusterKeys {
            token: read(&token_file),
            trust: read(&dir.join("signing.key.pub")),
            token_file,
            signing_key,
        }
    })
}

/// The flags the secured setup adds to `args` (a server subcommand first): NATS
/// credentials and TLS for a process given `--nats`, and the scheduler's and nodes' keys;
/// none for a part the test set itself.
fn secure_args(args: &[&str]) -> Vec<String> {
    let has = |prefix: &str| args.iter().any(|a| a.starts_with(prefix));
    let mut out = Vec::new();
    let role = match args.first() {
        Some(&"scheduler") => skiff_core::testkit::Role::Scheduler,
        _ => skiff_core::testkit::Role::Node,
    };
    if has("--nats") && !has("--nats-") {
        out.extend(skiff_core::testkit::secured().args(role));
    }
    let keys = cluster_keys;
    match args.first() {
        Some(&"scheduler") => {
            if !has("--cluster-token-file") {
                out.push("--cluster-token-file".into());
                out.push(keys().token_file.display().to_string());
            }
            if !has("--signing-key") {
                out.push("--signing-key".into());
                out.push(keys().signing_key.display().to_string());
            }
        }
        Some(&"node") => {
            if !has("--cluster-token-file") {
                out.push("--cluster-token-file".into());
                out.push(keys().token_file.display().to_string());
            }
            if !has("--trust") {
                out.push("--trust".into());
                out.push(keys().trust.clone());
            }
        }
        _ => {}
    }
    out
}

/// Base URLs (`http://host:port`) of guarded nodes' listeners and admin APIs.
fn guarded() -> &'static Mutex<Vec<String>> {
    static GUARDED: OnceLock<Mutex<Vec<String>>> = OnceLock::new();
    GUARDED.get_or_init(|| Mutex::new(Vec::new()))
}

fn guard(base: &str) {
    if let Ok(mut g) = guarded().lock() {
        g.push(base.trim_end_matches('/').to_string());
    }
}

fn is_guarded(uri: &http::Uri) -> bool {
    let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
        return false;
    };
    let base = format!("{scheme}://{authority}");
    guarded().lock().is_ok_and(|g| g.contains(&base))
}

/// What the test process presents to the test NATS servers: the scheduler's user (the
/// operator's view).
pub fn operator_auth() -> skiff_core::nats_auth::NatsAuth {
    skiff_core::testkit::secured().auth(skiff_core::testkit::Role::Scheduler)
}
