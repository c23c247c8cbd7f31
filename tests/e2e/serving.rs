//! Deploying and invoking functions: the SDK's hello, and a component from another
//! toolchain (wstd) streaming a multi-megabyte body.

use crate::harness::*;
use bytes::Bytes;
use http_body_util::BodyExt;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread")]
async fn deploy_and_invoke_hello_through_cli_and_http() {
    let _gate = crate::gate::beside_others().await;
    let skiff = Skiff::start(&[]);
    let hello = repo().join("functions/hello");
    let out = skiff.cli_ok(&["deploy", hello.to_str().unwrap(), "--no-build"]);
    let url = format!("{}/hello/", skiff.listen);
    assert!(out.contains("deployed hello v1"), "{out}");
    assert!(out.contains(&url), "{out}");

    let out = skiff.cli_ok(&["invoke", "hello", "--path", "/world"]);
    assert_eq!(out, "Hello from Skiff! You asked for /hello/world\n");

    let r = get(&format!("{}/hello/plain/http?x=1", skiff.listen)).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.text(),
        "Hello from Skiff! You asked for /hello/plain/http\n"
    );
    assert_eq!(r.headers["x-skiff-version"], "1");

    let ls = skiff.cli_ok(&["ls"]);
    assert!(ls.contains("hello") && ls.contains("/hello/..."), "{ls}");
    let status = skiff.cli_ok(&["status"]);
    assert!(
        status.contains("embedded") && status.contains("hello"),
        "{status}"
    );
    // What the guest printed reaches the node's log, tagged with the function.
    assert!(
        wait_until(std::time::Duration::from_secs(2), async || skiff
            .log()
            .contains("hello called on /hello/plain/http"))
        .await,
        "guest stdout missing from log:\n{}",
        skiff.log()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn deploy_runs_the_build_unless_told_not_to() {
    let _gate = crate::gate::beside_others().await;
    let skiff = Skiff::start(&[]);
    let tmp = tempfile::tempdir().unwrap();
    let wasm = guest("functions", "hello.wasm");
    let copy = tmp.path().join("built.wasm");
    // The build command produces the component the manifest points at.
    let dir = function_dir(
        tmp.path(),
        "built",
        &format!(
            "name = \"built\"\ncomponent = \"../built.wasm\"\nbuild = \"cp '{}' '{}'\"\n",
            wasm.display(),
            copy.display()
        ),
    );
    let err = skiff.cli_err(&["deploy", dir.to_str().unwrap(), "--no-build"]);
    assert!(
        err.contains("not found at") && err.contains("drop --no-build"),
        "{err}"
    );
    let out = skiff.cli_ok(&["deploy", dir.to_str().unwrap()]);
    assert!(out.contains("deployed built v1"), "{out}");

    let failing = function_dir(
        tmp.path(),
        "failing",
        "name = \"failing\"\ncomponent = \"x.wasm\"\nbuild = \"echo compiler says no >&2; exit 3\"\n",
    );
    let err = skiff.cli_err(&["deploy", failing.to_str().unwrap()]);
    assert!(err.contains("build of `failing` failed"), "{err}");
    assert!(err.contains("compiler says no"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn wstd_component_streams_a_multi_megabyte_echo() {
    let _gate = crate::gate::beside_others().await;
    let skiff = Skiff::start(&[]);
    let dir = repo().join("functions/echo-wstd");
    skiff.cli_ok(&["deploy", dir.to_str().unwrap(), "--no-build"]);
    let r = get(&format!("{}/echo/", skiff.listen)).await;
    assert_eq!(r.status, 200);
    assert!(r.text().contains("echo-wstd"), "{}", r.text());

    // 8 MiB of varied bytes, sent with a length.
    let data: Vec<u8> = (0..8u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let r = request(
        "POST",
        &format!("{}/echo/x", skiff.listen),
        &[],
        Bytes::from(data.clone()),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.body.len(), data.len());
    assert!(r.body == data, "echoed bytes differ");

    // The same bytes streamed in chunks (chunked transfer encoding both ways).
    let chunks: Vec<Result<hyper::body::Frame<Bytes>, std::io::Error>> = data
        .chunks(64 << 10)
        .map(|c| Ok(hyper::body::Frame::data(Bytes::copy_from_slice(c))))
        .collect();
    let streamed = http_body_util::StreamBody::new(futures::stream::iter(chunks)).boxed();
    let req = http::Request::builder()
        .method("POST")
        .uri(format!("{}/echo/stream", skiff.listen))
        .body(streamed)
        .unwrap();
    let r = send(&client(), req).await.expect("streamed echo");
    assert_eq!(r.status, 200);
    assert!(r.body == data, "streamed echo differs");
    assert!(
        r.headers.get("content-length").is_none(),
        "expected a streamed answer"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn out_of_file_descriptors_the_listeners_back_off_and_recover() {
    let _gate = crate::gate::beside_others().await;
    let skiff = Skiff::start_with_fd_limit(160);
    let hello = repo().join("functions/hello");
    skiff.cli_ok(&["deploy", hello.to_str().unwrap(), "--no-build"]);
    let addr = |url: &str| url.trim_start_matches("http://").to_string();
    // Far more connections than the server may hold open: its accepts start failing.
    let mut held = Vec::new();
    for url in [&skiff.admin, &skiff.listen] {
        for _ in 0..200 {
            if let Ok(c) = std::net::TcpStream::connect(addr(url)) {
                held.push(c);
            }
        }
    }
    assert!(
        wait_until(Duration::from_secs(10), async || skiff
            .log()
            .contains("accept failed; pausing"))
        .await,
        "no accept failure was logged: {}",
        skiff.log()
    );
    // Failing accepts are retried with a pause, not in a busy loop.
    let before = skiff.cpu_ticks();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let used = skiff.cpu_ticks() - before;
    assert!(
        used < 60,
        "the server used {used} ticks of CPU in 2s while out of descriptors"
    );
    // Once the connections go, both listeners serve again.
    drop(held);
    assert!(
        wait_until(Duration::from_secs(10), async || {
            get(&format!("{}/healthz", skiff.admin)).await.status == 200
        })
        .await
    );
    skiff.assert_hello_serves().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn up_with_deploy_builds_and_serves_the_folders_it_was_given() {
    let _gate = crate::gate::beside_others().await;
    let hello = repo().join("functions/hello");
    let skiff = Skiff::start(&["--deploy", hello.to_str().unwrap()]);
    assert!(
        wait_until(Duration::from_secs(120), async || {
            get(&format!("{}/hello/up", skiff.listen)).await.status == 200
        })
        .await,
        "hello never served after `skiff up --deploy`: {}",
        skiff.log()
    );
    let r = get(&format!("{}/hello/up", skiff.listen)).await;
    assert_eq!(r.text(), "Hello from Skiff! You asked for /hello/up\n");
}
