//! Bad input of every kind gets a clear error, and the node keeps serving `hello`.

use crate::harness::*;
use bytes::Bytes;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

fn deploy_hello(skiff: &Skiff) {
    let hello = repo().join("functions/hello");
    skiff.cli_ok(&["deploy", hello.to_str().unwrap(), "--no-build"]);
}

/// (folder name, manifest, component bytes, expected error fragments)
type BadDeploy<'a> = (&'a str, String, Option<&'a [u8]>, Vec<&'a str>);

#[tokio::test(flavor = "multi_thread")]
async fn bad_deploys_get_clear_errors_and_the_node_keeps_serving() {
    let _gate = crate::gate::beside_others().await;
    let skiff = Skiff::start(&[]);
    deploy_hello(&skiff);
    let tmp = tempfile::tempdir().unwrap();
    let hello_wasm = guest("functions", "hello.wasm");

    let cases: Vec<BadDeploy> = vec![
        (
            "not-wasm",
            "name = \"not-wasm\"\ncomponent = \"f.wasm\"\n".into(),
            Some(b"this is a text file, not wasm"),
            vec!["not WebAssembly"],
        ),
        (
            "core-module",
            "name = \"core-module\"\ncomponent = \"f.wasm\"\n".into(),
            Some(b"\0asm\x01\0\0\0"),
            vec!["core WebAssembly module, not a component", "wasm32-wasip2"],
        ),
        (
            "no-handler",
            "name = \"no-handler\"\ncomponent = \"f.wasm\"\n".into(),
            Some(b"\0asm\x0d\0\x01\0"),
            vec![
                "exports neither wasi:http/incoming-handler@0.2 nor wasi:http/handler@0.3",
                "(it exports nothing)",
                // Nothing says which toolchain built it: the hint names the worlds, not
                // a Rust macro.
                "build it for the `wasi:http/proxy` (0.2) or `wasi:http/service` (0.3) world",
            ],
        ),
        (
            "truncated",
            "name = \"truncated\"\ncomponent = \"f.wasm\"\n".into(),
            Some(b"\0asm\x0d\0\x01\0\x07\x05\x01\x00\x00"),
            vec![
                "the component is malformed",
                "copied whole",
                "component: ",
                "truncated/f.wasm",
            ],
        ),
        (
            "unknown-key",
            "name = \"unknown-key\"\ncomponent = \"f.wasm\"\ncolour = \"blue\"\n".into(),
            None,
            vec!["line 3", "colour"],
        ),
        (
            "bad-name",
            "name = \"Bad_Name\"\ncomponent = \"f.wasm\"\n".into(),
            None,
            vec!["invalid function name `Bad_Name`"],
        ),
        (
            "missing",
            "name = \"missing\"\ncomponent = \"nowhere/f.wasm\"\n".into(),
            None,
            vec!["component of `missing` not found at", "nowhere/f.wasm"],
        ),
        (
            "route-taken",
            format!(
                "name = \"route-taken\"\ncomponent = \"{}\"\n[http]\nroute = \"/hello/...\"\n",
                hello_wasm.display()
            ),
            None,
            vec!["already served by function `hello`"],
        ),
        (
            "too-much-memory",
            format!(
                "name = \"too-much-memory\"\ncomponent = \"{}\"\n[limits]\nmemory = \"64GiB\"\n",
                hello_wasm.display()
            ),
            None,
            vec!["memory", "exceeds this node's maximum"],
        ),
    ];
    for (name, manifest, bytes, expected) in cases {
        let dir = function_dir(tmp.path(), name, &manifest);
        if let Some(b) = bytes {
            std::fs::write(dir.join("f.wasm"), b).unwrap();
        }
        let err = skiff.cli_err(&["deploy", dir.to_str().unwrap(), "--no-build"]);
        for e in expected {
            assert!(err.contains(e), "{name}: expected `{e}` in: {err}");
        }
        skiff.assert_hello_serves().await;
    }
    let ls = skiff.cli_ok(&["ls"]);
    assert!(
        !ls.contains("no-handler") && !ls.contains("route-taken"),
        "{ls}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_admin_api_checks_what_the_cli_would_have() {
    let _gate = crate::gate::beside_others().await;
    // A client that skips the CLI's own checks meets the same rules on the server.
    let skiff = Skiff::start(&[]);
    deploy_hello(&skiff);
    let junk = b"not a component at all".to_vec();
    let sha = hex_sha256(&junk);
    let r = request(
        "PUT",
        &format!("{}/v1/artifacts/{sha}", skiff.admin),
        &[],
        Bytes::from(junk),
    )
    .await;
    assert_eq!(r.status, 400);
    assert!(r.text().contains("not WebAssembly"), "{}", r.text());

    let r = request(
        "PUT",
        &format!("{}/v1/artifacts/{}", skiff.admin, "0".repeat(64)),
        &[],
        Bytes::from_static(b"\0asm\x0d\0\x01\0"),
    )
    .await;
    assert_eq!(r.status, 400);
    assert!(r.text().contains("does not match its name"), "{}", r.text());

    let deploy = |manifest: &str, artifact: &str| {
        serde_json::json!({ "manifest": manifest, "artifact": artifact }).to_string()
    };
    let url = format!("{}/v1/functions/x", skiff.admin);
    let r = request(
        "PUT",
        &url,
        &[],
        Bytes::from(deploy(
            "name = \"x\"\ncomponent = \"a\"\nbogus = 1\n",
            &"a".repeat(64),
        )),
    )
    .await;
    assert_eq!(r.status, 400);
    assert!(
        r.text().contains("line 3") && r.text().contains("bogus"),
        "{}",
        r.text()
    );

    let r = request(
        "PUT",
        &url,
        &[],
        Bytes::from(deploy("name = \"x\"\ncomponent = \"a\"\n", &"a".repeat(64))),
    )
    .await;
    assert_eq!(r.status, 400);
    assert!(r.text().contains("has not been uploaded"), "{}", r.text());

    let r = request(
        "PUT",
        &url,
        &[],
        Bytes::from(deploy("name = \"y\"\ncomponent = \"a\"\n", &"a".repeat(64))),
    )
    .await;
    assert_eq!(r.status, 400);
    assert!(r.text().contains("deployed as `x`"), "{}", r.text());

    let r = request("PUT", &url, &[], Bytes::from_static(b"{not json")).await;
    assert_eq!(r.status, 400);
    assert!(r.text().contains("not valid JSON"), "{}", r.text());
    skiff.assert_hello_serves().await;
}

fn hex_sha256(bytes: &[u8]) -> String {
    skiff_core::record::sha256_hex(bytes)
}

#[tokio::test(flavor = "multi_thread")]
async fn misbehaving_guests_and_clients_get_their_errors_and_the_node_keeps_serving() {
    let _gate = crate::gate::beside_others().await;
    let skiff = Skiff::start(&["--token", "s3cret", "--header-read-timeout", "1s"]);
    deploy_hello(&skiff);
    let tmp = tempfile::tempdir().unwrap();
    deploy_misbehave(
        &skiff,
        tmp.path(),
        "misbehave",
        "[limits]\nmemory = \"32MiB\"\ntimeout = \"30s\"\nconcurrency = 1\nbody = \"1KiB\"\n",
    );
    // The timeout case has a function of its own, so that a loaded machine cannot push the
    // other cases past a short timeout.
    deploy_misbehave(
        &skiff,
        tmp.path(),
        "spinner",
        "[limits]\ntimeout = \"1s\"\n",
    );
    let base = format!("{}/misbehave", skiff.listen);

    // A guest that traps.
    let r = get(&format!("{base}/trap")).await;
    assert_eq!(r.status, 500);
    assert!(
        r.text().contains("function `misbehave` failed: wasm trap"),
        "{}",
        r.text()
    );
    skiff.assert_hello_serves().await;

    // A guest that loops forever is stopped at its timeout.
    let start = Instant::now();
    let r = get(&format!("{}/spinner/loop", skiff.listen)).await;
    assert_eq!(r.status, 504, "{}", r.text());
    assert!(
        r.text()
            .contains("function `spinner` did not finish within its timeout of 1s"),
        "{}",
        r.text()
    );
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "took {:?}",
        start.elapsed()
    );
    skiff.assert_hello_serves().await;

    // A guest that grows memory without bound.
    let r = get(&format!("{base}/grow")).await;
    assert_eq!(r.status, 500);
    assert!(
        r.text().contains("exceeded its memory limit of 32.0 MiB"),
        "{}",
        r.text()
    );
    skiff.assert_hello_serves().await;

    // A body over the limit, declared and chunked; one under it passes.
    let r = request(
        "POST",
        &format!("{base}/size"),
        &[],
        Bytes::from(vec![0u8; 2000]),
    )
    .await;
    assert_eq!(r.status, 413, "{}", r.text());
    let r = chunked_post(&format!("{base}/size"), 2000).await;
    assert_eq!(r.status, 413, "{}", r.text());
    let r = chunked_post(&format!("{base}/size"), 500).await;
    assert_eq!((r.status, r.text()), (200, "500".to_string()));
    skiff.assert_hello_serves().await;

    // Concurrency: with one invocation running, the next is refused with Retry-After.
    deploy_misbehave(
        &skiff,
        tmp.path(),
        "slowpoke",
        "[limits]\nconcurrency = 1\n",
    );
    let slow_base = format!("{}/slowpoke", skiff.listen);
    let slow = start_slow_request(&skiff, "slowpoke", 1500).await;
    let r = get(&format!("{slow_base}/sleep/1")).await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.headers["retry-after"], "1");
    assert!(r.text().contains("concurrency limit (1)"), "{}", r.text());
    let slow = slow.await.unwrap();
    assert_eq!(
        (slow.status, slow.text()),
        (200, "slept 1500ms".to_string())
    );
    skiff.assert_hello_serves().await;

    // Unknown functions: 404 over HTTP without naming what is deployed (any client can
    // ask), and the CLI names what is deployed.
    let r = get(&format!("{}/nope/x", skiff.listen)).await;
    assert_eq!(r.status, 404);
    assert!(r.text().contains("skiff ls"), "{}", r.text());
    for name in ["hello", "misbehave", "slowpoke", "spinner"] {
        assert!(!r.text().contains(name), "404 names `{name}`: {}", r.text());
    }
    let err = skiff.cli_err(&["invoke", "nope"]);
    assert!(
        err.contains("function `nope` not found; deployed: hello, misbehave, slowpoke, spinner"),
        "{err}"
    );
    let out = skiff.cli(&["invoke", "misbehave", "--path", "/trap"]);
    assert!(
        !out.status.success(),
        "invoke of a failing function must exit non-zero"
    );

    // Oversized headers.
    let big = "a".repeat(40_000);
    let r = request(
        "GET",
        &format!("{}/hello/", skiff.listen),
        &[("x-big", &big)],
        Bytes::new(),
    )
    .await;
    assert_eq!(r.status, 431);
    skiff.assert_hello_serves().await;

    // A client that sends its headers too slowly is cut off.
    let addr = skiff.listen.trim_start_matches("http://").to_string();
    let cut_off = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET /hello/ HTTP/1.1\r\nHo").unwrap();
        let start = Instant::now();
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        (start.elapsed(), buf)
    })
    .await
    .unwrap();
    assert!(
        cut_off.0 < Duration::from_secs(3),
        "slow client held the connection {:?}",
        cut_off.0
    );
    assert!(!String::from_utf8_lossy(&cut_off.1).contains("200 OK"));
    skiff.assert_hello_serves().await;

    // The admin API wants the token everywhere but /healthz.
    let r = get(&format!("{}/v1/functions", skiff.admin)).await;
    assert_eq!(r.status, 401);
    assert!(r.text().contains("requires a token"), "{}", r.text());
    let r = request(
        "GET",
        &format!("{}/v1/functions", skiff.admin),
        &[("authorization", "Bearer wrong")],
        Bytes::new(),
    )
    .await;
    assert_eq!(r.status, 401);
    assert_eq!(get(&format!("{}/healthz", skiff.admin)).await.status, 200);
    let out = std::process::Command::new(skiff_bin())
        .args(["ls", "--server", &skiff.admin])
        .env_remove("SKIFF_TOKEN")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("requires a token"));
    skiff.assert_hello_serves().await;
}

async fn chunked_post(url: &str, len: usize) -> Resp {
    use http_body_util::BodyExt;
    let chunks: Vec<Result<hyper::body::Frame<Bytes>, std::io::Error>> = vec![0u8; len]
        .chunks(100)
        .map(|c| Ok(hyper::body::Frame::data(Bytes::copy_from_slice(c))))
        .collect();
    let b = http_body_util::StreamBody::new(futures::stream::iter(chunks)).boxed();
    let req = http::Request::builder()
        .method("POST")
        .uri(url)
        .body(b)
        .unwrap();
    send(&client(), req).await.expect("chunked post")
}
