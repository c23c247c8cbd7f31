//! `cargo bench --bench skiff -- redeploy`: what an edit costs `skiff dev` per language,
//! each phase timed on its own. A template from `skiff new` (http) is built, deployed,
//! edited (its greeting) and built and deployed again, three times; the deploy is timed
//! to the new version serving. Against it, the peer: `wasmtime compile` of the same
//! component (what `wasmtime serve` pays for every new version, with its cache off).
//! Skiff's redeploy compiles with Cranelift's incremental cache, warm from the version
//! before; the first deploy compiles cold. Everything here runs on every core, one at a
//! time (the other sections pin servers and client apart). Languages whose toolchain is
//! not on PATH are skipped with a note.

use super::{Skiff, cores, peer};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const EDITS: usize = 3;

/// `program` on every core: this process's client thread is pinned to one, and children
/// inherit that.
fn unpinned(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut c = Command::new("taskset");
    let all = cores().map_or(0, |(_, client)| client);
    c.args(["-c", &format!("0-{all}")]).arg(program);
    c
}

/// A `skiff up` on every core.
fn up() -> (Skiff, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let cmd = unpinned(env!("CARGO_BIN_EXE_skiff"));
    (Skiff::spawn_with(cmd, &["up"], &[], Some(dir.path())), dir)
}

fn skiff(args: &[&str], dir: &Path) -> Duration {
    let start = Instant::now();
    let out = unpinned(env!("CARGO_BIN_EXE_skiff"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run skiff");
    assert!(
        out.status.success(),
        "skiff {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    start.elapsed()
}

fn median(mut v: Vec<Duration>) -> f64 {
    v.sort();
    v[v.len() / 2].as_secs_f64()
}

/// Prints the table.
pub async fn redeploy() {
    println!(
        "\n## redeploy after an edit: `skiff new --template http`, seconds (median of {EDITS} edits)\n"
    );
    println!(
        "| language | build | first deploy (cold compile) | redeploy (incremental) | `wasmtime compile` (peer) | component |"
    );
    println!("|---|---|---|---|---|---|");
    let wasmtime = peer::binary();
    let (server_up, _up_dir) = up();
    let tmp = tempfile::tempdir().expect("tempdir");
    for (lang, tool, source, wasm) in [
        (
            "rust",
            "cargo",
            "src/lib.rs",
            "target/wasm32-wasip2/release/r_rust.wasm",
        ),
        ("python", "componentize-py", "app.py", "app.wasm"),
        ("js", "npm", "app.js", "app.wasm"),
    ] {
        if !skiff_runtime::cli::toolchain::on_path(tool) {
            println!("| {lang} | skipped: `{tool}` is not on PATH | | | | |");
            continue;
        }
        let name = format!("r-{lang}");
        skiff(&["new", &name, "--lang", lang], tmp.path());
        let dir = tmp.path().join(&name);
        let server = ["--server", server_up.admin.as_str()];
        let deploy = |dir: &Path| skiff(&[server[0], server[1], "deploy", "--no-build", "."], dir);
        skiff(&["deploy", "--server", &server_up.admin], &dir); // the first build fetches and compiles dependencies
        let first = {
            // A cold compile: a fresh server, nothing cached.
            let (fresh, _dir) = up();
            skiff(
                &["deploy", "--no-build", "--server", &fresh.admin, "."],
                &dir,
            )
        };
        let (mut builds, mut redeploys, mut peers) = (Vec::new(), Vec::new(), Vec::new());
        for edit in 0..EDITS {
            let file = dir.join(source);
            let text = std::fs::read_to_string(&file).expect("source");
            std::fs::write(
                &file,
                text.replacen("Hello from", &format!("Hello {edit} from"), 1),
            )
            .expect("edit");
            let start = Instant::now();
            let built = unpinned("sh")
                .arg("-c")
                .arg(build_command(&dir))
                .current_dir(&dir)
                .output()
                .expect("build");
            assert!(
                built.status.success(),
                "{}",
                String::from_utf8_lossy(&built.stderr)
            );
            builds.push(start.elapsed());
            redeploys.push(deploy(&dir));
            if let Ok(bin) = &wasmtime {
                let start = Instant::now();
                let out = unpinned(bin)
                    .args(["compile", "-C", "cache=n", "-o"])
                    .arg(tmp.path().join("peer.cwasm"))
                    .arg(dir.join(wasm))
                    .output()
                    .expect("wasmtime compile");
                assert!(
                    out.status.success(),
                    "{}",
                    String::from_utf8_lossy(&out.stderr)
                );
                peers.push(start.elapsed());
            }
        }
        let size = std::fs::metadata(dir.join(wasm))
            .map(|m| m.len())
            .unwrap_or(0);
        println!(
            "| {lang} | {:.2} | {:.2} | {:.2} | {} | {:.1} MB |",
            median(builds),
            first.as_secs_f64(),
            median(redeploys),
            if peers.is_empty() {
                "–".to_string()
            } else {
                format!("{:.2}", median(peers))
            },
            size as f64 / 1e6
        );
    }
    if let Err(e) = wasmtime {
        println!("\n(no peer column: {e})");
    }
}

fn build_command(dir: &Path) -> String {
    let text = std::fs::read_to_string(dir.join("skiff.toml")).expect("manifest");
    let manifest: toml::Value = toml::from_str(&text).expect("manifest");
    manifest["build"]
        .as_str()
        .expect("build command")
        .to_string()
}
