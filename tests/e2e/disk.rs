//! What deploys leave on disk: a refused deploy leaves the data dir byte-for-byte as it
//! was; `rm` and a restart collect artifacts and compiled code no version uses.

use crate::harness::*;
use std::collections::BTreeMap;
use std::path::Path;

/// Every file under `dir` with its bytes.
fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let path = e.path();
            if e.file_type().unwrap().is_dir() {
                stack.push(path);
            } else {
                let rel = path.strip_prefix(dir).unwrap().display().to_string();
                out.insert(rel, std::fs::read(&path).unwrap());
            }
        }
    }
    out
}

fn names(dir: &Path, sub: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir.join(sub))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

async fn data_dir_bytes(skiff: &Skiff) -> f64 {
    let m = get(&format!("{}/metrics", skiff.admin)).await.text();
    metric_value(&m, "skiff_data_dir_bytes")
        .unwrap_or_else(|| panic!("no skiff_data_dir_bytes in:\n{m}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_deploys_leave_nothing_and_unused_files_are_collected() {
    let _gate = crate::gate::beside_others().await;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let skiff = Skiff::start_in(&data, &[]);
    let hello = repo().join("functions/hello");
    skiff.cli_ok(&["deploy", hello.to_str().unwrap(), "--no-build"]);
    skiff.assert_hello_serves().await;
    let before = files(&data);

    // Refused before compiling (no HTTP export), after compiling (an import Skiff does
    // not provide), and after compiling and linking (its route is taken).
    let refused = [
        ("noexport", "\0asm\x0d\0\x01\0".as_bytes().to_vec(), ""),
        (
            "needs",
            std::fs::read(guest("tests/guests", "p3import.wasm")).unwrap(),
            "",
        ),
        (
            "taken",
            std::fs::read(guest("tests/guests", "hello02.wasm")).unwrap(),
            "[http]\nroute = \"/hello/...\"\n",
        ),
    ];
    for (name, wasm, extra) in &refused {
        let dir = function_dir(
            tmp.path(),
            name,
            &format!("name = \"{name}\"\ncomponent = \"f.wasm\"\n{extra}"),
        );
        std::fs::write(dir.join("f.wasm"), wasm).unwrap();
        skiff.cli_err(&["deploy", dir.to_str().unwrap(), "--no-build"]);
    }
    let after = files(&data);
    let changed: Vec<&String> = before
        .keys()
        .chain(after.keys())
        .filter(|k| before.get(*k) != after.get(*k))
        .collect();
    assert!(changed.is_empty(), "refused deploys changed: {changed:?}");
    skiff.assert_hello_serves().await;

    // `rm` takes hello's artifact and compiled code with it; the gauge sees it.
    let size = data_dir_bytes(&skiff).await;
    assert_eq!(names(&data, "artifacts").len(), 1);
    assert!(
        names(&data, "compiled")
            .iter()
            .any(|n| n.ends_with(".cwasm"))
    );
    skiff.cli_ok(&["rm", "hello"]);
    assert!(
        names(&data, "artifacts").is_empty(),
        "{:?}",
        names(&data, "artifacts")
    );
    let compiled = names(&data, "compiled");
    assert!(
        compiled.iter().all(|n| !n.ends_with(".cwasm")),
        "{compiled:?}"
    );
    let freed = size - data_dir_bytes(&skiff).await;
    let hello_wasm = std::fs::metadata(guest("functions", "hello.wasm"))
        .unwrap()
        .len();
    assert!(freed >= hello_wasm as f64, "freed {freed} bytes");

    // At start: files no version uses (a crash between upload and deploy, code of an
    // older version) are removed; what a version uses stays.
    skiff.cli_ok(&["deploy", hello.to_str().unwrap(), "--no-build"]);
    drop(skiff);
    let orphan = format!("{}.wasm", "ab".repeat(32));
    std::fs::write(data.join("artifacts").join(&orphan), b"\0asm\x0d\0\x01\0").unwrap();
    let stale = format!("{}-0123456789abcdef.cwasm", "cd".repeat(32));
    std::fs::write(data.join("compiled").join(&stale), b"stale").unwrap();
    let skiff = Skiff::start_in(&data, &[]);
    skiff.assert_hello_serves().await;
    assert!(!names(&data, "artifacts").contains(&orphan));
    assert_eq!(names(&data, "artifacts").len(), 1);
    assert!(!names(&data, "compiled").contains(&stale));
}

/// A tmpfs of `mib` MiB mounted on `dir` for the test's life.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, mib: u64) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "this test needs to mount a small tmpfs (root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(dir.to_path_buf())
    }

    fn available(&self) -> u64 {
        let out = std::process::Command::new("df")
            .args(["-B1", "--output=avail"])
            .arg(&self.0)
            .output()
            .expect("run df");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .and_then(|l| l.trim().parse().ok())
            .expect("df's answer")
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// A full disk fails the writes that do not fit, clearly, and a request whose event
/// cannot be stored fails, counted and traced as an error (with its ids on the answer);
/// once there is room again the node writes again by itself (redb is opened again after
/// its I/O error), and every acknowledged write is still there.
#[tokio::test(flavor = "multi_thread")]
async fn writes_resume_by_themselves_once_a_full_disk_has_room() {
    let _gate = crate::gate::beside_others().await;
    let tmp = tempfile::tempdir().unwrap();
    let disk = Tmpfs::mount(&tmp.path().join("disk"), 96);
    let skiff = Skiff::start_in(&disk.0.join("data"), &[]);
    let counter = repo().join("functions/counter");
    skiff.cli_ok(&["deploy", counter.to_str().unwrap(), "--no-build"]);
    deploy_misbehave(
        &skiff,
        tmp.path(),
        "misbehave",
        "[[events]]\ntopic = \"full.*\"\n",
    );
    // Leave a few MiB free.
    let filler = disk.0.join("filler");
    let room = disk.available().saturating_sub(6 << 20);
    std::fs::write(&filler, vec![0u8; room as usize]).unwrap();

    let kv = |key: String| format!("{}/v1/functions/counter/kv/{key}", skiff.admin);
    let value = vec![b'x'; 256 << 10];
    let mut acked = Vec::new();
    let mut refused = None;
    for i in 0..100 {
        let r = request("PUT", &kv(format!("big-{i}")), &[], value.clone().into()).await;
        if r.status == 200 {
            acked.push(i);
        } else {
            refused = Some(r.text());
            break;
        }
    }
    let refused = refused.expect("100 × 256 KiB fit in 6 MiB?");
    assert!(
        !acked.is_empty(),
        "the disk was full from the start: {refused}"
    );
    println!("{} writes acknowledged, then: {refused}", acked.len());
    assert!(
        refused.contains("state.redb") && refused.contains("resume on their own"),
        "unclear error: {refused}"
    );
    assert_eq!(get(&format!("{}/healthz", skiff.admin)).await.status, 200);

    // An event the bus cannot store (not a byte left): the request fails, and it is
    // counted and traced as an error, not `ok`.
    let brim = disk.0.join("brim");
    let _ = std::fs::write(&brim, vec![0u8; disk.available() as usize + (1 << 20)]);
    let r = request(
        "POST",
        &format!("{}/misbehave/publish/full.event", skiff.listen),
        &[],
        vec![b'e'; 512 << 10].into(),
    )
    .await;
    assert!(r.status >= 500, "{} {}", r.status, r.text());
    let metrics = get(&format!("{}/metrics", skiff.admin)).await.text();
    let count = |outcome: &str| metric(&metrics, "skiff_invocations_total{", "misbehave", outcome);
    assert_eq!(
        (count("outcome=\"ok\""), count("outcome=\"error\"")),
        (0.0, 1.0),
        "{metrics}"
    );
    let trace = r
        .headers
        .get("x-skiff-trace-id")
        .and_then(|v| v.to_str().ok())
        .expect("trace id")
        .to_string();
    let spans = get(&format!("{}/v1/traces/{trace}", skiff.admin))
        .await
        .text();
    let spans: serde_json::Value = serde_json::from_str(&spans).unwrap();
    assert_eq!(spans[0]["outcome"], "error", "{spans}");

    // Room again: the next writes succeed without a restart.
    std::fs::remove_file(&filler).unwrap();
    std::fs::remove_file(&brim).unwrap();
    let resumed = wait_until(std::time::Duration::from_secs(10), async || {
        request("PUT", &kv("after".into()), &[], value.clone().into())
            .await
            .status
            == 200
    })
    .await;
    assert!(resumed, "writes did not resume once the disk had room");
    for i in acked {
        let r = get(&kv(format!("big-{i}"))).await;
        assert_eq!((r.status, r.body.len()), (200, 256 << 10), "big-{i} lost");
    }
    let r = get(&kv("after".into())).await;
    assert_eq!((r.status, r.body.len()), (200, 256 << 10));
    drop(skiff);
}
