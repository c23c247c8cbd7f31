//! `skiff deploy`: build (unless `--no-build`), upload the component with progress, deploy
//! the manifest, and report the URL once the new version serves.

use super::client::{AdminClient, ClientBody};
use anyhow::{Context, bail};
use bytes::Bytes;
use http::Method;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use indicatif::{ProgressBar, ProgressStyle};
use skiff_core::api::{DeployRequest, FunctionInfo};
use skiff_core::manifest::Manifest;
use skiff_core::record::check_component_header;
use skiff_core::record::sha256_hex;
use std::path::Path;
use std::time::Duration;

/// Upload chunk size: the granularity of the progress bar.
const CHUNK: usize = 256 << 10;

/// How much of a failed build's output is shown (its end, where the summary is).
const BUILD_OUTPUT_LINES: usize = 80;

/// How long a deploy to a cluster waits, and for how many nodes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Wait {
    /// Wait until every live node serves the new version (default: one).
    pub all: bool,
    /// How long the scheduler waits (default: its `--deploy-timeout`).
    pub timeout: Option<Duration>,
}

impl Wait {
    fn query(&self) -> String {
        let mut q = Vec::new();
        if self.all {
            q.push("wait=all".to_string());
        }
        if let Some(t) = self.timeout {
            q.push(format!("timeout={}ms", t.as_millis()));
        }
        if q.is_empty() {
            String::new()
        } else {
            format!("?{}", q.join("&"))
        }
    }
}

/// Runs the build command of the function at `path` (a folder with skiff.toml, or the
/// manifest file), if it has one.
pub async fn build(path: &Path) -> anyhow::Result<()> {
    let (manifest, manifest_file, _) = Manifest::load(path)?;
    match &manifest.build {
        Some(cmd) => run_build(manifest.name.as_str(), cmd, &manifest_file).await,
        None => Ok(()),
    }
}

/// Deploys the function at `path` (a folder with skiff.toml, or the manifest file).
pub async fn deploy(
    client: &AdminClient,
    path: &Path,
    build: bool,
    wait: Wait,
) -> anyhow::Result<FunctionInfo> {
    let (manifest, manifest_file, text) = Manifest::load(path)?;
    let name = manifest.name.clone();
    if build && let Some(cmd) = &manifest.build {
        run_build(name.as_str(), cmd, &manifest_file).await?;
    }
    let component = manifest.component_path(&manifest_file);
    let bytes = match tokio::fs::read(&component).await {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "component of `{name}` not found at {} (`component` in {}); build it first{}, or fix the path",
            component.display(),
            manifest_file.display(),
            if manifest.build.is_some() {
                " (drop --no-build)"
            } else {
                ""
            }
        ),
        Err(e) => bail!("cannot read component {}: {e}", component.display()),
    };
    check_component_header(&bytes)
        .with_context(|| format!("cannot deploy `{name}` from {}", component.display()))?;
    let sha = sha256_hex(&bytes);
    upload(client, &sha, Bytes::from(bytes)).await?;

    let request = serde_json::to_vec(&DeployRequest {
        manifest: text,
        artifact: sha,
    })?;
    let spinner = spinner(format!("deploying {name}"));
    let info: Result<FunctionInfo, _> = client
        .call(
            Method::PUT,
            &format!("/v1/functions/{name}{}", wait.query()),
            super::client::full(request),
        )
        .await;
    spinner.finish_and_clear();
    // The node knows the artifact by its hash only; name the file the user deployed.
    let info = info.map_err(|e| anyhow::anyhow!("{e:#}\n  component: {}", component.display()))?;
    println!(
        "deployed {} v{} ({}) → {}",
        info.name, info.version, info.route, info.url
    );
    Ok(info)
}

async fn run_build(name: &str, cmd: &str, manifest_file: &Path) -> anyhow::Result<()> {
    let dir = manifest_file
        .parent()
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let spinner = spinner(format!("building {name}: {cmd}"));
    let output = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .current_dir(&dir)
        .output()
        .await
        .with_context(|| {
            format!(
                "cannot run the build command of `{name}` in {}",
                dir.display()
            )
        })?;
    spinner.finish_and_clear();
    if !output.status.success() {
        // Compilers write errors to stderr; some tools only to stdout.
        let stderr = String::from_utf8_lossy(&output.stderr);
        let stdout = String::from_utf8_lossy(&output.stdout);
        let shown = if stderr.trim().is_empty() {
            &stdout
        } else {
            &stderr
        };
        let tail: Vec<&str> = shown.lines().rev().take(BUILD_OUTPUT_LINES).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        let fix = super::toolchain::diagnose(&stderr).unwrap_or_else(|| {
            "fix the build, or deploy a prebuilt component with --no-build".to_string()
        });
        bail!(
            "build of `{name}` failed ({}) running `{cmd}` in {}:\n{}\n{fix}",
            output.status,
            dir.display(),
            tail.join("\n")
        );
    }
    Ok(())
}

async fn upload(client: &AdminClient, sha: &str, bytes: Bytes) -> anyhow::Result<()> {
    let bar = ProgressBar::new(bytes.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("uploading {bytes}/{total_bytes} {wide_bar} {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let chunks: Vec<Bytes> = (0..bytes.len())
        .step_by(CHUNK)
        .map(|i| bytes.slice(i..(i + CHUNK).min(bytes.len())))
        .collect();
    let progress = bar.clone();
    let stream = futures::stream::iter(chunks.into_iter().map(move |c| {
        progress.inc(c.len() as u64);
        Ok::<_, std::io::Error>(Frame::data(c))
    }));
    let body: ClientBody = StreamBody::new(stream).boxed();
    let result: Result<serde_json::Value, _> = client
        .call(Method::PUT, &format!("/v1/artifacts/{sha}"), body)
        .await;
    bar.finish_and_clear();
    result?;
    Ok(())
}

fn spinner(message: String) -> ProgressBar {
    let s = ProgressBar::new_spinner();
    s.set_message(message);
    s.enable_steady_tick(Duration::from_millis(100));
    s
}
