//! `skiff dev [PATH]`: the inner loop. Builds and deploys the function to the Skiff at
//! `--server`, starting a `skiff up` (data under the project's `.skiff/`) when nothing
//! answers there; then watches the sources, rebuilds and redeploys on every change, and
//! streams the function's logs. A failed build prints the compiler's output and the last
//! good version keeps serving. Ctrl-C stops what `skiff dev` started.

use super::client::{AdminClient, ClientError};
use super::deploy::{self, Wait};
use anyhow::{Context, bail};
use clap::Args;
use notify::{EventKind, RecursiveMode, Watcher, event::ModifyKind};
use skiff_core::manifest::Manifest;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

/// How long the sources must be quiet before a rebuild starts (editors write in bursts).
const DEBOUNCE: Duration = Duration::from_millis(150);
/// How long a started `skiff up` may take to answer.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// `skiff dev`'s arguments.
#[derive(Debug, Args)]
pub struct DevArgs {
    /// The function's folder (with skiff.toml), or its manifest file.
    #[arg(default_value = ".")]
    path: PathBuf,
    /// Where a `skiff up` started by `skiff dev` serves functions (its admin API is
    /// --server's address).
    #[arg(long, default_value = "127.0.0.1:7070")]
    listen: SocketAddr,
}

/// Runs the loop until Ctrl-C.
pub async fn run(args: DevArgs, server: &str, token: Option<String>) -> anyhow::Result<ExitCode> {
    let (manifest, manifest_file, _) = Manifest::load(&args.path)?;
    // Absolute, as the watcher reports paths.
    let manifest_file = manifest_file
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", manifest_file.display()))?;
    let project = manifest_file
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("/"));
    let component = manifest.component_path(&manifest_file);
    let name = manifest.name.to_string();
    let client = AdminClient::new(server, token.clone())?;

    let mut started = match probe(&client, server).await? {
        Found::Skiff => {
            println!("[dev] using the Skiff at {server}");
            None
        }
        Found::Nothing(admin) => Some(start_up(&client, admin, args.listen, &project).await?),
    };

    let (tx, mut changes) = mpsc::unbounded_channel::<Vec<PathBuf>>();
    let watched = project.clone();
    let skip = component.clone();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        match res {
            // Reads (cargo opening the manifest, say) and metadata changes are not edits.
            Ok(event) if is_edit(&event.kind) => {
                let paths: Vec<PathBuf> = event
                    .paths
                    .into_iter()
                    .filter(|p| is_source(p, &watched, &skip))
                    .collect();
                if !paths.is_empty() {
                    let _ = tx.send(paths);
                }
            }
            Ok(_) => {}
            Err(e) => eprintln!("[dev] watching the sources failed: {e}"),
        }
    })
    .context("cannot watch the sources")?;
    watcher
        .watch(&project, RecursiveMode::Recursive)
        .with_context(|| format!("cannot watch {}", project.display()))?;

    let mut serving = build_and_deploy(&client, &args.path, None, Instant::now()).await;
    let mut logs = serving.map(|_| follow_logs(server, token.clone(), &name));
    println!(
        "[dev] watching {} for changes; Ctrl-C stops",
        project.display()
    );

    let code = loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break ExitCode::SUCCESS,
            exit = wait_child(&mut started) => {
                eprintln!("[dev] the skiff up that skiff dev started exited ({exit}); see {}", up_log(&project).display());
                started = None;
                break ExitCode::FAILURE;
            }
            Some(mut paths) = changes.recv() => {
                let at = Instant::now();
                // Editors write in bursts (temp file, rename, chmod): wait for quiet.
                while let Ok(Some(more)) = tokio::time::timeout(DEBOUNCE, changes.recv()).await {
                    paths.extend(more);
                }
                paths.sort();
                paths.dedup();
                let shown: Vec<String> = paths
                    .iter()
                    .map(|p| p.strip_prefix(&project).unwrap_or(p).display().to_string())
                    .collect();
                println!("[dev] changed: {}; rebuilding", shown.join(", "));
                if let Some(v) = build_and_deploy(&client, &args.path, serving, at).await {
                    serving = Some(v);
                    if logs.is_none() {
                        logs = Some(follow_logs(server, token.clone(), &name));
                    }
                }
            }
        }
    };
    if let Some(task) = logs {
        task.abort();
    }
    if let Some(child) = started.take() {
        stop(child).await;
    }
    Ok(code)
}

/// Builds and deploys; the version now serving (the old one when the build or deploy
/// failed, after printing why).
async fn build_and_deploy(
    client: &AdminClient,
    path: &Path,
    serving: Option<u64>,
    since: Instant,
) -> Option<u64> {
    let result = async {
        let start = Instant::now();
        deploy::build(path).await?;
        let built = start.elapsed();
        let start = Instant::now();
        let info = deploy::deploy(client, path, false, Wait::default()).await?;
        anyhow::Ok((info, built, start.elapsed()))
    }
    .await;
    match result {
        Ok((info, built, deployed)) => {
            println!(
                "[dev] v{} serving, {:.1} s after the change (build {:.1} s, deploy {:.1} s)",
                info.version,
                since.elapsed().as_secs_f64(),
                built.as_secs_f64(),
                deployed.as_secs_f64()
            );
            Some(info.version)
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            match serving {
                Some(v) => eprintln!("[dev] v{v} keeps serving; fix the error and save again"),
                None => eprintln!("[dev] nothing serves yet; fix the error and save again"),
            }
            serving
        }
    }
}

/// What answers at the admin address.
enum Found {
    /// A Skiff server.
    Skiff,
    /// Nothing: the address to start one at.
    Nothing(SocketAddr),
}

async fn probe(client: &AdminClient, server: &str) -> anyhow::Result<Found> {
    match client.get::<serde_json::Value>("/v1/status").await {
        Ok(v) if v.get("node").is_some() || v.get("nodes").is_some() => Ok(Found::Skiff),
        Ok(_) => bail!(not_skiff(server, "its /v1/status is not Skiff's")),
        Err(ClientError::Unreachable { .. }) => {
            let admin = loopback_addr(server)?;
            match tokio::net::TcpStream::connect(admin).await {
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    Ok(Found::Nothing(admin))
                }
                Err(e) => {
                    bail!("cannot reach {admin} ({e}); pass --server with a free loopback port")
                }
                Ok(_) => bail!(not_skiff(
                    server,
                    "it accepts connections but does not speak HTTP"
                )),
            }
        }
        Err(ClientError::Api { status, .. }) if status == http::StatusCode::UNAUTHORIZED => {
            bail!("the Skiff at {server} requires a token: pass --token (or SKIFF_TOKEN)")
        }
        Err(e) => bail!(not_skiff(server, &e.to_string())),
    }
}

fn not_skiff(server: &str, why: &str) -> String {
    format!(
        "something that is not Skiff answers at {server} ({why}); stop it, or run skiff dev with --server http://127.0.0.1:PORT for a free port"
    )
}

/// The admin address of `server` when it is on this machine.
fn loopback_addr(server: &str) -> anyhow::Result<SocketAddr> {
    let uri: http::Uri = server.parse().context("invalid --server URL")?;
    let host = uri.host().unwrap_or_default();
    let host = if host == "localhost" {
        "127.0.0.1"
    } else {
        host
    };
    let addr = SocketAddr::new(
        host.trim_matches(['[', ']']).parse().with_context(|| {
            format!("nothing answers at {server}; skiff dev starts a Skiff only on a loopback address (--server http://127.0.0.1:PORT)")
        })?,
        uri.port_u16().unwrap_or(80),
    );
    if !addr.ip().is_loopback() {
        bail!(
            "nothing answers at {server}; skiff dev starts a Skiff only on a loopback address (--server http://127.0.0.1:PORT)"
        );
    }
    Ok(addr)
}

fn up_log(project: &Path) -> PathBuf {
    project.join(".skiff").join("skiff-up.log")
}

/// Starts `skiff up` with its data under the project and waits until it answers.
async fn start_up(
    client: &AdminClient,
    admin: SocketAddr,
    listen: SocketAddr,
    project: &Path,
) -> anyhow::Result<Child> {
    if let Err(e) = std::net::TcpListener::bind(listen) {
        bail!(
            "port {} ({listen}) is taken ({e}) by something that is not this Skiff; skiff dev serves functions there: stop it, or pass --listen 127.0.0.1:PORT",
            listen.port()
        );
    }
    let data = project.join(".skiff");
    std::fs::create_dir_all(&data).with_context(|| format!("cannot create {}", data.display()))?;
    let log_path = up_log(project);
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("cannot create {}", log_path.display()))?;
    let exe = std::env::current_exe().context("cannot find the skiff binary to start skiff up")?;
    let mut child = Command::new(exe)
        .arg("up")
        .arg("--listen")
        .arg(listen.to_string())
        .arg("--admin")
        .arg(admin.to_string())
        .arg("--data-dir")
        .arg(&data)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .context("cannot start skiff up")?;
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if client.get::<serde_json::Value>("/v1/status").await.is_ok() {
            break;
        }
        if let Some(status) = child.try_wait()? {
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(10).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!("skiff up exited at start ({status}):\n{}", tail.join("\n"));
        }
        if Instant::now() > deadline {
            stop(child).await;
            bail!(
                "skiff up did not answer within {START_TIMEOUT:?}; see {}",
                log_path.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "[dev] started skiff up: functions on http://{listen}, admin on http://{admin}, data in {}, its log in {}",
        data.display(),
        log_path.display()
    );
    Ok(child)
}

async fn wait_child(child: &mut Option<Child>) -> String {
    match child {
        Some(c) => match c.wait().await {
            Ok(status) => status.to_string(),
            Err(e) => e.to_string(),
        },
        None => std::future::pending().await,
    }
}

/// Stops the `skiff up` we started: SIGTERM, then SIGKILL after 10 s.
async fn stop(mut child: Child) {
    if let Some(pid) = child
        .id()
        .and_then(|id| rustix::process::Pid::from_raw(id as i32))
    {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    }
    if tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
    println!("[dev] stopped the skiff up it started");
}

/// Streams the function's log lines to the terminal, reconnecting if the stream ends.
fn follow_logs(server: &str, token: Option<String>, name: &str) -> tokio::task::JoinHandle<()> {
    let server = server.to_string();
    let name = name.to_string();
    tokio::spawn(async move {
        loop {
            if let Ok(client) = AdminClient::new(&server, token.clone()) {
                let _ = super::logs::run(&client, &name, true, 0).await;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    })
}

/// Whether an event changed a file (not a read or a metadata change).
fn is_edit(kind: &EventKind) -> bool {
    match kind {
        EventKind::Create(_) | EventKind::Remove(_) => true,
        EventKind::Modify(m) => !matches!(m, ModifyKind::Metadata(_)),
        EventKind::Access(_) | EventKind::Any | EventKind::Other => false,
    }
}

/// Whether a change to `path` calls for a rebuild: not build output, dependencies, the
/// local Skiff's data, or hidden files (editors' swap files, .git).
fn is_source(path: &Path, project: &Path, component: &Path) -> bool {
    if path == component || path.extension().is_some_and(|e| e == "wasm") {
        return false;
    }
    let relative = path.strip_prefix(project).unwrap_or(path);
    // Folders themselves, and lock files the build tools write.
    if relative.as_os_str().is_empty()
        || relative == Path::new(".")
        || relative
            .file_name()
            .is_some_and(|n| n == "Cargo.lock" || n == "package-lock.json")
    {
        return false;
    }
    !relative.components().any(|c| {
        let c = c.as_os_str().to_string_lossy();
        c.starts_with('.')
            || c.ends_with('~')
            || matches!(
                c.as_ref(),
                "target" | "node_modules" | "__pycache__" | "4913"
            )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_sources_trigger_a_rebuild() {
        let p = Path::new("/p");
        let c = Path::new("/p/app.wasm");
        assert!(is_source(Path::new("/p/app.py"), p, c));
        assert!(is_source(Path::new("/p/src/lib.rs"), p, c));
        assert!(is_source(Path::new("/p/skiff.toml"), p, c));
        assert!(!is_source(Path::new("/p/app.wasm"), p, c));
        assert!(!is_source(Path::new("/p/target/release/x.d"), p, c));
        assert!(!is_source(Path::new("/p/node_modules/a/b.js"), p, c));
        assert!(!is_source(Path::new("/p/.skiff/data.redb"), p, c));
        assert!(!is_source(Path::new("/p/__pycache__/app.pyc"), p, c));
        assert!(!is_source(Path::new("/p/.app.py.swp"), p, c));
        assert!(!is_source(Path::new("/p/app.py~"), p, c));
        assert!(!is_source(Path::new("/p/Cargo.lock"), p, c));
        assert!(!is_source(Path::new("/p"), p, c));
    }

    #[test]
    fn starts_a_server_only_on_loopback() {
        assert_eq!(
            loopback_addr("http://127.0.0.1:7071").unwrap(),
            "127.0.0.1:7071".parse().unwrap()
        );
        assert!(loopback_addr("http://localhost:9").is_ok());
        assert!(loopback_addr("http://10.0.0.1:7071").is_err());
        assert!(loopback_addr("http://example.com:7071").is_err());
    }
}
