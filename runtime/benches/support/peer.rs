//! The peer every Skiff row is held against: `wasmtime serve` 48 on the same
//! components, in the same run, pinned to the same cores.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// The wasmtime release the node embeds, and so the fair peer.
pub const VERSION: &str = "48.0.8";

/// Where the benchmark keeps its own `wasmtime` (outside the repository).
fn cache_root() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("skiff-bench").join(format!("wasmtime-{VERSION}"))
}

fn is_right_version(bin: &Path) -> bool {
    Command::new(bin)
        .arg("--version")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(VERSION))
}

/// The `wasmtime` binary: `$SKIFF_WASMTIME` if set, else the cached one, else installed
/// into the cache with `cargo install wasmtime-cli --version 48.0.8 --locked` (about 15
/// minutes on two cores; `SKIFF_BENCH_NO_INSTALL=1` skips the peer's rows instead).
/// `Err` says why there are no peer rows.
pub fn binary() -> Result<PathBuf, String> {
    if let Some(bin) = std::env::var_os("SKIFF_WASMTIME").map(PathBuf::from) {
        return if is_right_version(&bin) {
            Ok(bin)
        } else {
            Err(format!(
                "SKIFF_WASMTIME={} is not wasmtime {VERSION}",
                bin.display()
            ))
        };
    }
    let root = cache_root();
    let bin = root.join("bin").join("wasmtime");
    if is_right_version(&bin) {
        return Ok(bin);
    }
    if std::env::var_os("SKIFF_BENCH_NO_INSTALL").is_some() {
        return Err(format!(
            "wasmtime {VERSION} is not at {} and SKIFF_BENCH_NO_INSTALL is set",
            bin.display()
        ));
    }
    eprintln!(
        "installing wasmtime-cli {VERSION} into {} for the peer rows (once; ~15 min)...",
        root.display()
    );
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args([
            "install",
            "wasmtime-cli",
            "--version",
            VERSION,
            "--locked",
            "--root",
        ])
        .arg(&root)
        .status()
        .map_err(|e| format!("cannot run cargo install: {e}"))?;
    if status.success() && is_right_version(&bin) {
        Ok(bin)
    } else {
        Err(format!(
            "cargo install wasmtime-cli {VERSION} failed ({status})"
        ))
    }
}

/// A running `wasmtime serve`.
pub struct Peer {
    child: Child,
    /// Its base URL.
    pub url: String,
}

impl Peer {
    /// Serves `component` with `wasmtime serve` (WASI cli interfaces on, as Skiff links
    /// them), pinned to `cores` when given.
    pub fn start(bin: &Path, component: &Path, cores: Option<&str>) -> Result<Peer, String> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("no free port: {e}"))?
            .port();
        let addr = format!("127.0.0.1:{port}");
        let mut cmd = match cores {
            Some(c) => {
                let mut t = Command::new("taskset");
                t.args(["-c", c]).arg(bin);
                t
            }
            None => Command::new(bin),
        };
        let mut child = cmd
            .args(["serve", "--addr", &addr, "-Scli"])
            // As for Skiff: no backtrace captured for every error value.
            .env("RUST_LIB_BACKTRACE", "0")
            .arg(component)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start wasmtime serve: {e}"))?;
        let stderr = child.stderr.take().ok_or("no stderr")?;
        let mut reader = BufReader::new(stderr);
        let mut line = String::new();
        while !line.contains("Serving HTTP") {
            line.clear();
            if reader.read_line(&mut line).map_err(|e| e.to_string())? == 0 {
                return Err(format!("wasmtime serve {} exited", component.display()));
            }
        }
        // Keep draining its stderr (it logs every guest line) so it never blocks.
        std::thread::spawn(move || {
            let mut sink = String::new();
            while reader.read_line(&mut sink).is_ok_and(|n| n > 0) {
                sink.clear();
            }
        });
        Ok(Peer {
            child,
            url: format!("http://{addr}"),
        })
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
