//! Python and JavaScript wasi:http 0.2 components (componentize-py, componentize-js):
//! a fresh sandbox per request by default, and right answers under 200 at once.

use crate::harness::*;
use std::sync::OnceLock;

/// Builds tests/guests/polyglot once per test process; the folder of the components.
fn polyglot() -> std::path::PathBuf {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    let result = BUILT.get_or_init(|| {
        let out = std::process::Command::new("bash")
            .arg(repo().join("tests/guests/polyglot/build.sh"))
            .output()
            .map_err(|e| format!("cannot run build.sh: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "building the Python and JavaScript components failed (run `bash tests/setup.sh` first):\n{}",
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    repo().join("tests/guests/target/polyglot")
}

#[tokio::test(flavor = "multi_thread")]
async fn python_and_javascript_components_answer_200_parallel_requests() {
    let _gate = crate::gate::beside_others().await;
    let dir = polyglot();
    let skiff = Skiff::start(&[]);
    let tmp = tempfile::tempdir().unwrap();
    for (name, greeting) in [("pyhello", "Python"), ("jshello", "JavaScript")] {
        let manifest = format!(
            "name = \"{name}\"\ncomponent = \"{}\"\n[limits]\nconcurrency = 256\n",
            dir.join(format!("{name}.wasm")).display()
        );
        let fdir = function_dir(tmp.path(), name, &manifest);
        skiff.cli_ok(&["deploy", fdir.to_str().unwrap(), "--no-build"]);
        let ls = skiff.cli_ok(&["ls"]);
        assert!(
            ls.lines()
                .any(|l| l.starts_with(name) && l.contains("wasi:http 0.2")),
            "{ls}"
        );
        let calls = (0..200).map(|i| {
            let url = format!("{}/{name}/r{i}", skiff.listen);
            tokio::spawn(async move { (i, get(&url).await) })
        });
        for call in futures::future::join_all(calls).await {
            let (i, r) = call.unwrap();
            assert_eq!(r.status, 200, "{name} r{i}: {}", r.text());
            assert_eq!(
                r.text(),
                format!("Hello from {greeting}! You asked for /{name}/r{i}\n")
            );
        }
        // The 0.2 default: a fresh instance for every request.
        let m = get(&format!("{}/metrics", skiff.admin)).await.text();
        let created = metric_value(
            &m,
            &format!("skiff_instances_created_total{{function=\"{name}\"}}"),
        );
        assert_eq!(created, Some(200.0), "{name}");
    }
}

/// A component's exports are read from its bytes before it is compiled: a 13 MB
/// JavaScript component deployed with `[[events]]` (it exports only HTTP) is refused
/// naming what it lacks and what it has, and nothing is compiled for it.
#[tokio::test(flavor = "multi_thread")]
async fn a_large_component_lacking_its_export_is_refused_before_compiling() {
    let _gate = crate::gate::beside_others().await;
    let dir = polyglot();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let skiff = Skiff::start_in(&data, &[]);
    let wasm = dir.join("jshello.wasm");
    assert!(std::fs::metadata(&wasm).unwrap().len() > 10 << 20);
    let manifest = format!(
        "name = \"jsevents\"\ncomponent = \"{}\"\n[[events]]\ntopic = \"orders.placed\"\n",
        wasm.display()
    );
    let fdir = function_dir(tmp.path(), "jsevents", &manifest);
    let started = std::time::Instant::now();
    let err = skiff.cli_err(&["deploy", fdir.to_str().unwrap(), "--no-build"]);
    let took = started.elapsed();
    assert!(err.contains("skiff:function/event-handler"), "{err}");
    assert!(
        err.contains("it exports wasi:http/incoming-handler@0.2"),
        "{err}"
    );
    // The hint speaks to a JavaScript author, not a Rust one.
    assert!(
        err.contains("sdk/wit") && !err.contains("skiff_sdk"),
        "{err}"
    );
    let compiled: Vec<_> = std::fs::read_dir(data.join("compiled"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "cwasm"))
        .collect();
    assert!(compiled.is_empty(), "compiled anyway: {compiled:?}");
    // Compiling it takes tens of seconds in this (debug) build; reading its names, and
    // the CLI's upload, well under that.
    assert!(took < std::time::Duration::from_secs(5), "took {took:?}");
    eprintln!("refused a 13 MB component lacking its export in {took:?} (CLI upload included)");
}
