//! `skiff logs`: what a function printed, tagged with its invocation, and `-f` following.

use crate::harness::*;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread")]
async fn logs_show_what_hello_printed_and_follow_live() {
    let _gate = crate::gate::beside_others().await;
    let skiff = Skiff::start(&[]);
    skiff.cli_ok(&[
        "deploy",
        repo().join("functions/hello").to_str().unwrap(),
        "--no-build",
    ]);
    let r = get(&format!("{}/hello/first", skiff.listen)).await;
    let invocation = r.headers["x-skiff-invocation-id"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(invocation.len(), 32, "{invocation}");

    let out = skiff.cli_ok(&["logs", "hello"]);
    let line = out
        .lines()
        .find(|l| l.contains("hello called on /hello/first"))
        .unwrap_or_else(|| panic!("line missing:\n{out}"));
    assert!(line.contains(&invocation[..12]), "{line}");
    assert!(
        line.contains("hello v1") && line.contains("stdout:"),
        "{line}"
    );

    // Follow: a new invocation's line shows up within a second.
    let mut follower = Command::new(skiff_bin())
        .args(["logs", "hello", "-f", "-n", "0", "--server", &skiff.admin])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = follower.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send((Instant::now(), line)).is_err() {
                return;
            }
        }
    });
    // The follower may take a moment to connect, and a line printed before it did is not
    // shown (-n 0): invoke until a line arrives, and time it from the invocation it names.
    let mut seen = None;
    let mut sent = Vec::new();
    for i in 0..20 {
        sent.push(Instant::now());
        let r = get(&format!("{}/hello/live{i}", skiff.listen)).await;
        assert_eq!(r.status, 200);
        if let Ok(got) = rx.recv_timeout(Duration::from_secs(1)) {
            seen = Some(got);
            break;
        }
    }
    let _ = follower.kill();
    let _ = follower.wait();
    let (at, line) = seen.expect("no line reached `skiff logs -f`");
    assert!(line.contains("hello called on /hello/live"), "{line}");
    let i: usize = line
        .rsplit("/hello/live")
        .next()
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("unexpected line: {line}"));
    let took = at.duration_since(sent[i]);
    assert!(
        took < Duration::from_secs(1),
        "line of invocation {i} took {took:?}"
    );

    let err = skiff.cli_err(&["logs", "nope"]);
    assert!(err.contains("function `nope` not found"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_order_workflow_is_one_trace() {
    let _gate = crate::gate::beside_others().await;
    let skiff = Skiff::start(&[]);
    let trace = place_order(&skiff, "t1").await;
    let done = wait_until(Duration::from_secs(10), async || {
        skiff.cli(&["trace", &trace]).status.success()
            && skiff.cli_ok(&["trace", &trace]).lines().count() == 3
    })
    .await;
    let out = skiff.cli_ok(&["trace", &trace]);
    assert!(
        done,
        "the workflow's three steps never showed in one trace:\n{out}"
    );
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("orders http /orders  ok"), "{out}");
    assert!(
        lines[1].starts_with("  orders event orders.created  ok"),
        "{out}"
    );
    assert!(
        lines[2].starts_with("    orders event payments.completed  ok"),
        "{out}"
    );
    // An incoming traceparent is continued.
    let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let r = request(
        "GET",
        &format!("{}/orders/t1", skiff.listen),
        &[("traceparent", parent)],
        bytes::Bytes::new(),
    )
    .await;
    assert_eq!(
        r.headers["x-skiff-trace-id"],
        "4bf92f3577b34da6a3ce929d0e0e4736"
    );
    let err = skiff.cli_err(&["trace", "0123"]);
    assert!(err.contains("no trace `0123`"), "{err}");
}

/// A stand-in OpenTelemetry collector: accepts `POST /v1/traces` on a free port and
/// hands each JSON body over.
async fn collector() -> (
    String,
    tokio::sync::mpsc::UnboundedReceiver<serde_json::Value>,
) {
    use http_body_util::BodyExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let tx = tx.clone();
            tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(
                hyper_util::rt::TokioIo::new(stream),
                hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let tx = tx.clone();
                    async move {
                        let ok = req.uri().path() == "/v1/traces"
                            && req.headers()["content-type"] == "application/json";
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        if ok {
                            let _ = tx.send(serde_json::from_slice(&body).unwrap());
                        }
                        let status = if ok { 200 } else { 404 };
                        Ok::<_, std::convert::Infallible>(
                            http::Response::builder()
                                .status(status)
                                .body(http_body_util::Full::new(bytes::Bytes::from("{}")))
                                .unwrap(),
                        )
                    }
                }),
            ));
        }
    });
    (url, rx)
}

#[tokio::test(flavor = "multi_thread")]
async fn spans_are_exported_to_an_otlp_collector() {
    let _gate = crate::gate::beside_others().await;
    let (endpoint, mut received) = collector().await;
    let skiff = Skiff::start(&["--otlp-endpoint", &endpoint]);
    skiff.cli_ok(&[
        "deploy",
        repo().join("functions/hello").to_str().unwrap(),
        "--no-build",
    ]);
    let r = get(&format!("{}/hello/otlp", skiff.listen)).await;
    let trace = r.headers["x-skiff-trace-id"].to_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let body = tokio::time::timeout_at(deadline.into(), received.recv())
            .await
            .expect("no OTLP export within 10 s")
            .expect("collector stopped");
        let rs = &body["resourceSpans"][0];
        let spans = rs["scopeSpans"][0]["spans"].as_array().unwrap();
        let Some(span) = spans.iter().find(|s| s["traceId"] == trace.as_str()) else {
            continue;
        };
        assert_eq!(
            rs["resource"]["attributes"][0]["value"]["stringValue"],
            "skiff"
        );
        assert_eq!(span["name"], "hello http /hello/otlp");
        assert_eq!(span["kind"], 2);
        assert_eq!(span["status"]["code"], 1);
        let start: u128 = span["startTimeUnixNano"].as_str().unwrap().parse().unwrap();
        let end: u128 = span["endTimeUnixNano"].as_str().unwrap().parse().unwrap();
        assert!(end > start && start > 1_700_000_000_000_000_000);
        break;
    }
}
