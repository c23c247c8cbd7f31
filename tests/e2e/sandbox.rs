//! The sandbox's policy with real guests: outgoing HTTP only where the manifest allows
//! and never to the admin API, no ambient authority, config and secrets through
//! wasi:config and nowhere else, and host allocations a guest cannot make unbounded.

use crate::harness::*;
use bytes::Bytes;
use std::path::Path;

async fn fetch(skiff: &Skiff, function: &str, url: &str) -> Resp {
    get(&format!("{}/{function}/fetch/{}", skiff.listen, enc(url))).await
}

fn port_of(url: &str) -> &str {
    url.rsplit(':').next().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn outgoing_http_follows_the_allowlist_and_never_reaches_the_admin_api() {
    let _gate = crate::gate::beside_others().await;
    let skiff = Skiff::start(&[]);
    let tmp = tempfile::tempdir().unwrap();
    let origin = upstream().await;
    let admin_port = port_of(&skiff.admin);
    // The manifest even lists the admin API's origins: they stay denied.
    deploy_misbehave(
        &skiff,
        tmp.path(),
        "out",
        &format!(
            "allowed_outbound_hosts = [\"{origin}\", \"http://127.0.0.1:{admin_port}\", \"http://localhost:{admin_port}\"]\n[limits]\nmemory = \"512MiB\"\n"
        ),
    );

    let r = fetch(&skiff, "out", &format!("{origin}/pong")).await;
    assert_eq!(
        (r.status, r.text().as_str()),
        (200, "200 pong"),
        "{}",
        r.text()
    );

    // Not listed: another port of the same host, another host.
    let other = format!("http://127.0.0.1:{}/pong", port_of(&skiff.listen));
    for url in [other.as_str(), "https://example.com/"] {
        let r = fetch(&skiff, "out", url).await;
        assert_eq!((r.status, r.text().as_str()), (403, "denied"), "{url}");
    }
    // The admin API, by address and by name, whatever the manifest says.
    for host in ["127.0.0.1", "localhost"] {
        let url = format!("http://{host}:{admin_port}/v1/functions");
        let r = fetch(&skiff, "out", &url).await;
        assert_eq!((r.status, r.text().as_str()), (403, "denied"), "{url}");
    }
    // A response past the bound fails inside the guest, with the standard code.
    let r = fetch(&skiff, "out", &format!("{origin}/big")).await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(r.text().contains("body size exceeds limit"), "{}", r.text());

    let metrics = get(&format!("{}/metrics", skiff.admin)).await.text();
    let count = |outcome: &str| -> f64 {
        let series =
            format!("skiff_outbound_requests_total{{function=\"out\",outcome=\"{outcome}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(series.as_str()))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    };
    assert_eq!(count("denied"), 4.0, "{metrics}");
    assert_eq!(count("sent"), 2.0, "{metrics}");
    let log = skiff.log();
    assert!(
        log.contains("outgoing request denied") && log.contains("admin API"),
        "{log}"
    );
    skiff.cli_ok(&[
        "deploy",
        repo().join("functions/hello").to_str().unwrap(),
        "--no-build",
    ]);
    skiff.assert_hello_serves().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_sandbox_grants_no_ambient_authority() {
    let _gate = crate::gate::beside_others().await;
    let skiff = Skiff::start(&[]);
    let tmp = tempfile::tempdir().unwrap();
    deploy_misbehave(&skiff, tmp.path(), "amb", "[env]\nONLY_THIS = \"1\"\n");
    let probe = async |path: &str| {
        let r = get(&format!("{}/amb{path}", skiff.listen)).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        r.text()
    };
    // Only the manifest's environment: not PATH, HOME, RUST_LOG or anything of the host's.
    assert_eq!(probe("/ambient/env").await, "ONLY_THIS");
    // No preopened directory: no file can be read, no folder listed.
    let files = probe("/ambient/files").await;
    assert!(
        files.starts_with("preopens=0 read=Err(") && files.contains("list=Err("),
        "{files}"
    );
    // No sockets: not even to the node's own admin port.
    let socket = probe(&format!("/ambient/socket/{}", port_of(&skiff.admin))).await;
    assert!(
        socket.contains("refused") && socket.contains("access-denied"),
        "{socket}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn huge_host_allocations_are_refused_and_memory_stays_flat() {
    let _gate = crate::gate::beside_others().await;
    let skiff = Skiff::start(&[]);
    let tmp = tempfile::tempdir().unwrap();
    deploy_misbehave(&skiff, tmp.path(), "big", "");
    let call = async |path: &str| get(&format!("{}/big{path}", skiff.listen)).await;
    // Warm up the allocator and the pooled slot before the baseline.
    for _ in 0..3 {
        let _ = call("/size").await;
    }
    let before = skiff.rss_kib();
    for _ in 0..3 {
        // 8 MiB of random bytes: over the host's 1 MiB bound, so the guest traps.
        let r = call("/huge/random").await;
        assert_eq!(r.status, 500, "random: {}", r.text());
        // A 32 MiB key-value write is refused as it crosses into the host (before the
        // host copies it), not after: a trap, not the store's "value too large".
        let r = call("/huge/kv").await;
        assert_eq!(r.status, 500, "kv: {}", r.text());
        // Resource handles without end: the table is bounded, so the guest traps.
        let r = call("/huge/resources").await;
        assert_eq!(r.status, 500, "resources: {}", r.text());
        // 96 KiB of headers: over the host's 64 KiB bound on fields, so the guest traps.
        let r = call("/huge/fields").await;
        assert_eq!(r.status, 500, "fields: {}", r.text());
        assert!(r.text().contains("fields exceeds limit"), "{}", r.text());
    }
    let grew = skiff.rss_kib().saturating_sub(before);
    assert!(grew < 64 << 10, "the node grew by {grew} KiB");
    assert!(skiff.log().contains("big"), "the traps are logged");
    skiff.cli_ok(&[
        "deploy",
        repo().join("functions/hello").to_str().unwrap(),
        "--no-build",
    ]);
    skiff.assert_hello_serves().await;
}

/// Every file under `dir` (recursively) that contains `needle`.
pub fn files_containing(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(bytes) = std::fs::read(&p)
                && bytes.windows(needle.len()).any(|w| w == needle)
            {
                found.push(p.display().to_string());
            }
        }
    }
    found
}

/// A value no test would produce by chance.
pub fn fresh_secret() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("sk-{nanos:x}-{}", std::process::id())
}

#[tokio::test(flavor = "multi_thread")]
async fn config_and_secrets_reach_the_guest_and_nowhere_else() {
    let _gate = crate::gate::beside_others().await;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut skiff = Skiff::start_in(&data, &[]);
    let secret = fresh_secret();
    // A secret may be set before its function is deployed.
    skiff.cli_ok(&["secret", "set", "cfg", "db_password", &secret]);
    deploy_misbehave(
        &skiff,
        tmp.path(),
        "cfg",
        "[config]\ngreeting = \"hello\"\napi_token = \"from-config\"\n",
    );
    let read = async |skiff: &Skiff, key: &str| {
        let r = get(&format!("{}/cfg/config/get/{key}", skiff.listen)).await;
        (r.status, r.text())
    };
    assert_eq!(read(&skiff, "greeting").await, (200, "hello".into()));
    assert_eq!(read(&skiff, "api_token").await, (200, "from-config".into()));
    assert_eq!(read(&skiff, "db_password").await, (200, secret.clone()));
    assert_eq!(read(&skiff, "missing").await.0, 404);

    // A secret overrides [config] and applies to the next invocation.
    let token_file = tmp.path().join("token");
    std::fs::write(&token_file, format!("{secret}-token")).unwrap();
    skiff.cli_ok(&[
        "secret",
        "set",
        "cfg",
        "api_token",
        &format!("@{}", token_file.display()),
    ]);
    assert_eq!(
        read(&skiff, "api_token").await,
        (200, format!("{secret}-token"))
    );
    let all = get(&format!("{}/cfg/config/all", skiff.listen))
        .await
        .text();
    assert_eq!(all, "api_token,db_password,greeting");

    // Keys are listed, values never shown: not by the CLI, the API, metrics or logs.
    assert_eq!(
        skiff.cli_ok(&["secret", "ls", "cfg"]),
        "api_token\ndb_password\n"
    );
    let shown = [
        skiff.cli_ok(&["ls"]),
        skiff.cli_ok(&["status"]),
        get(&format!("{}/v1/functions/cfg", skiff.admin))
            .await
            .text(),
        get(&format!("{}/v1/functions/cfg/secrets", skiff.admin))
            .await
            .text(),
        get(&format!("{}/metrics", skiff.admin)).await.text(),
        skiff.log(),
    ];
    for text in &shown {
        assert!(!text.contains(&secret), "a secret leaked: {text}");
    }
    // Bad keys and values get clear errors.
    let err = skiff.cli_err(&["secret", "set", "cfg", "no/slash", "x"]);
    assert!(err.contains("invalid config or secret key"), "{err}");
    let err = skiff.cli_err(&["secret", "set", "Bad_Name", "k", "x"]);
    assert!(err.contains("invalid function name"), "{err}");
    let err = skiff.cli_err(&["secret", "rm", "cfg", "never-set"]);
    assert!(err.contains("has no secret `never-set`"), "{err}");

    // At rest, only sealed: no file under the data dir holds the value.
    skiff.kill();
    let leaked = files_containing(&data, secret.as_bytes());
    assert!(leaked.is_empty(), "plain secret in {leaked:?}");
    // A restart opens them again with the same key file.
    let skiff = Skiff::start_in(&data, &[]);
    assert_eq!(read(&skiff, "db_password").await, (200, secret.clone()));
    skiff.cli_ok(&["secret", "rm", "cfg", "api_token"]);
    assert_eq!(read(&skiff, "api_token").await, (200, "from-config".into()));
}

#[tokio::test(flavor = "multi_thread")]
async fn cluster_secrets_travel_sealed_and_reach_every_node() {
    let _one = crate::cluster::one_at_a_time().await;
    let tmp = tempfile::tempdir().unwrap();
    let nats = skiff_core::testkit::NatsServer::start(&tmp.path().join("nats")).expect("nats");
    let key = tmp.path().join("cluster.key");
    let out = std::process::Command::new(skiff_bin())
        .args(["secret", "keygen", key.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let with_key = ["--secrets-key", key.to_str().unwrap()];
    let nodes: Vec<Skiff> = ["s1", "s2"]
        .iter()
        .map(|n| Skiff::node(&tmp.path().join(n), &nats.url(), n, &with_key))
        .collect();
    let scheduler = Skiff::scheduler(&nats.url(), &with_key);
    let manifest = format!(
        "name = \"vault\"\ncomponent = \"{}\"\n",
        guest("tests/guests", "misbehave.wasm").display()
    );
    let dir = function_dir(tmp.path(), "vault", &manifest);
    scheduler.cli_ok(&["deploy", dir.to_str().unwrap(), "--no-build", "--wait-all"]);

    let secret = fresh_secret();
    scheduler.cli_ok(&["secret", "set", "vault", "token", &secret]);
    assert_eq!(scheduler.cli_ok(&["secret", "ls", "vault"]), "token\n");
    // Every node has it within moments, each from the registry.
    for node in &nodes {
        let url = format!("{}/vault/config/get/token", node.listen);
        let ok = wait_until(std::time::Duration::from_secs(10), async || {
            get(&url).await.text() == secret
        })
        .await;
        assert!(ok, "{} never saw the secret", node.listen);
    }
    // Nodes refuse to take secrets directly: they come from the registry.
    let err = nodes[0].cli_err(&["secret", "set", "vault", "token", "x"]);
    assert!(err.contains("through the scheduler"), "{err}");
    // Removal reaches the nodes too.
    scheduler.cli_ok(&["secret", "rm", "vault", "token"]);
    for node in &nodes {
        let url = format!("{}/vault/config/get/token", node.listen);
        let ok = wait_until(std::time::Duration::from_secs(10), async || {
            get(&url).await.status == 404
        })
        .await;
        assert!(ok, "{} kept a removed secret", node.listen);
    }
    for s in nodes.iter().chain([&scheduler]) {
        assert!(!s.log().contains(&secret), "a log shows the secret");
    }
    // Neither NATS's store nor any node's data dir ever held the plain value.
    drop(nodes);
    drop(scheduler);
    let leaked = files_containing(tmp.path(), secret.as_bytes());
    assert!(leaked.is_empty(), "plain secret in {leaked:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_components_are_refused_before_they_are_read() {
    let _gate = crate::gate::beside_others().await;
    let skiff = Skiff::start(&["--max-artifact", "1KiB"]);
    let hello = repo().join("functions/hello");
    let err = skiff.cli_err(&["deploy", hello.to_str().unwrap(), "--no-build"]);
    assert!(
        err.contains("larger than this server's limit of 1.0 KiB")
            && err.contains("--max-artifact"),
        "{err}"
    );
    // Nothing was stored or compiled: the function does not exist.
    let r = get(&format!("{}/v1/functions/hello", skiff.admin)).await;
    assert_eq!(r.status, 404, "{}", r.text());
    // A body that lies about its length (none declared, streamed) is cut off too.
    let sha = "0".repeat(64);
    let r = request(
        "PUT",
        &format!("{}/v1/artifacts/{sha}", skiff.admin),
        &[],
        Bytes::from(vec![0u8; 4096]),
    )
    .await;
    assert_eq!(r.status, 413, "{}", r.text());
}
