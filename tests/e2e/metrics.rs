//! `/metrics`: valid Prometheus text (checked by promtool), exact counts.

use crate::harness::*;
use bytes::Bytes;
use std::io::Write;
use std::time::Duration;

async fn scrape(skiff: &Skiff) -> String {
    let r = get(&format!("{}/metrics", skiff.admin)).await;
    assert_eq!(r.status, 200);
    r.text()
}

pub fn promtool_check(text: &str) {
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian package `prometheus`; .ci/run installs it)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}\n--- metrics ---\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_are_valid_and_count_exactly() {
    let _gate = crate::gate::beside_others().await;
    let skiff = Skiff::start(&[]);
    for f in ["functions/hello", "functions/orders"] {
        skiff.cli_ok(&["deploy", repo().join(f).to_str().unwrap(), "--no-build"]);
    }
    for i in 0..17 {
        let r = get(&format!("{}/hello/{i}", skiff.listen)).await;
        assert_eq!(r.status, 200);
    }
    // A body over a (small) limit: small enough that the client finishes sending it.
    let tmp = tempfile::tempdir().unwrap();
    deploy_misbehave(&skiff, tmp.path(), "small", "[limits]\nbody = \"1KiB\"\n");
    let r = request(
        "POST",
        &format!("{}/small/size", skiff.listen),
        &[],
        Bytes::from(vec![0u8; 2000]),
    )
    .await;
    assert_eq!(r.status, 413);
    for i in 0..5 {
        let body = format!("{{\"id\": \"m{i}\", \"amount\": 1}}");
        let r = request(
            "POST",
            &format!("{}/orders", skiff.listen),
            &[],
            Bytes::from(body),
        )
        .await;
        assert_eq!(r.status, 201, "{}", r.text());
    }
    // Two steps per order: 10 acknowledged deliveries once the workflow is done.
    let acked = "skiff_events_acked_total{function=\"orders\"}";
    assert!(
        wait_until(Duration::from_secs(20), async || metric_value(
            &scrape(&skiff).await,
            acked
        ) == Some(10.0))
        .await,
        "{}",
        scrape(&skiff).await
    );
    let text = scrape(&skiff).await;
    promtool_check(&text);
    let expect = [
        (
            "skiff_invocations_total{function=\"hello\",trigger=\"http\",outcome=\"ok\"}",
            17.0,
        ),
        (
            "skiff_invocations_total{function=\"orders\",trigger=\"http\",outcome=\"ok\"}",
            5.0,
        ),
        (
            "skiff_invocations_total{function=\"orders\",trigger=\"event\",outcome=\"ok\"}",
            10.0,
        ),
        (
            "skiff_limit_rejections_total{function=\"small\",kind=\"body\"}",
            1.0,
        ),
        // 5 orders.created from HTTP + 5 payments.completed from the payment step.
        ("skiff_events_published_total{function=\"orders\"}", 10.0),
        ("skiff_in_flight_invocations{function=\"hello\"}", 0.0),
        (
            "skiff_invocation_duration_seconds_count{function=\"hello\",trigger=\"http\"}",
            17.0,
        ),
    ];
    for (series, want) in expect {
        assert_eq!(
            metric_value(&text, series),
            Some(want),
            "{series} in:\n{text}"
        );
    }
    for present in [
        "skiff_kv_operations_total{function=\"orders\",op=\"cas\"}",
        "skiff_kv_operation_duration_seconds_bucket",
        "skiff_instantiation_duration_seconds_bucket",
        "skiff_event_consumer_lag{function=\"orders\"",
        "skiff_build_info{version=",
    ] {
        assert!(text.contains(present), "{present} missing:\n{text}");
    }
}

/// Metric names a PromQL expression refers to.
fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while let Some(pos) = expr[i..].find("skiff_") {
        let start = i + pos;
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        out.push(expr[start..end].to_string());
        i = end;
    }
    out
}

/// Whether the exposition has `name`, as a sample, or as a family (histograms' samples
/// are `<family>_bucket` etc.).
fn exposes(text: &str, name: &str) -> bool {
    let family = ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|s| name.strip_suffix(s))
        .unwrap_or(name);
    text.lines().any(|l| {
        l.starts_with(&format!("# TYPE {name} "))
            || l.starts_with(&format!("# TYPE {family} histogram"))
            || l.starts_with(&format!("{name}{{"))
            || l.starts_with(&format!("{name} "))
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn every_metric_the_dashboard_queries_exists_on_a_live_node() {
    let _gate = crate::gate::beside_others().await;
    let skiff = Skiff::start(&[]);
    for f in ["functions/hello", "functions/orders", "functions/sessions"] {
        skiff.cli_ok(&["deploy", repo().join(f).to_str().unwrap(), "--no-build"]);
    }
    assert_eq!(get(&format!("{}/hello/x", skiff.listen)).await.status, 200);
    let text = scrape(&skiff).await;
    promtool_check(&text);
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("deploy/grafana-dashboard.json")).unwrap(),
    )
    .unwrap();
    let mut checked = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            let names = metric_names(expr);
            assert!(
                !names.is_empty(),
                "panel query without a skiff metric: {expr}"
            );
            for name in names {
                assert!(
                    exposes(&text, &name),
                    "dashboard queries `{name}`, which /metrics lacks:\n{text}"
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= 12, "only {checked} metric references checked");
}
