//! A running `skiff dev` and a steady client beside it, for the developer-loop tests in
//! `devloop.rs`.

use crate::harness::*;
use skiff_core::testkit::free_port;
use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A running `skiff dev`, its output collected.
pub(crate) struct Dev {
    pub(crate) child: Child,
    out: Arc<Mutex<String>>,
    pub(crate) listen: String,
    pub(crate) admin: String,
}

impl Dev {
    /// Starts `skiff dev` in `project` on fresh ports; it starts its own `skiff up`.
    pub(crate) fn start(project: &Path) -> Dev {
        let (listen, admin) = (free_port().unwrap(), free_port().unwrap());
        let mut child = Command::new(skiff_bin())
            .args(["--server", &format!("http://127.0.0.1:{admin}"), "dev"])
            .args(["--listen", &format!("127.0.0.1:{listen}")])
            .current_dir(project)
            .env_remove("SKIFF_SERVER")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let out = Arc::new(Mutex::new(String::new()));
        for pipe in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let out = out.clone();
            std::thread::spawn(move || {
                let mut pipe = pipe;
                let mut buf = [0u8; 4096];
                while let Ok(n) = pipe.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    out.lock()
                        .unwrap()
                        .push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            });
        }
        Dev {
            child,
            out,
            listen: format!("http://127.0.0.1:{listen}"),
            admin: format!("127.0.0.1:{admin}"),
        }
    }

    pub(crate) fn output(&self) -> String {
        self.out.lock().unwrap().clone()
    }

    pub(crate) async fn wait_output(&self, text: &str, max: Duration) -> bool {
        wait_until(max, async || self.output().contains(text)).await
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

/// Requests `url` back to back until stopped; counts answers and failures, and keeps the
/// latest body.
pub(crate) struct Steady {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<Mutex<Vec<String>>>,
    latest: Arc<Mutex<String>>,
    task: tokio::task::JoinHandle<()>,
}

impl Steady {
    pub(crate) fn start(url: String) -> Steady {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(Mutex::new(Vec::new()));
        let latest = Arc::new(Mutex::new(String::new()));
        let (s, o, f, l) = (stop.clone(), ok.clone(), failed.clone(), latest.clone());
        let task = tokio::spawn(async move {
            let c = client();
            while !s.load(Ordering::Relaxed) {
                let req = http::Request::get(&url).body(body("")).unwrap();
                match send(&c, req).await {
                    Ok(r) if r.status == 200 => {
                        o.fetch_add(1, Ordering::Relaxed);
                        *l.lock().unwrap() = r.text();
                    }
                    Ok(r) => f
                        .lock()
                        .unwrap()
                        .push(format!("{}: {}", r.status, r.text())),
                    Err(e) => f.lock().unwrap().push(e),
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        Steady {
            stop,
            ok,
            failed,
            latest,
            task,
        }
    }

    pub(crate) fn latest(&self) -> String {
        self.latest.lock().unwrap().clone()
    }

    /// Seconds from now until the steady client sees an answer containing `text`.
    pub(crate) async fn seconds_until(&self, text: &str, max: Duration) -> Option<f64> {
        let start = Instant::now();
        wait_until(max, async || self.latest().contains(text))
            .await
            .then(|| start.elapsed().as_secs_f64())
    }

    pub(crate) async fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap();
        let failed = self.failed.lock().unwrap().clone();
        (self.ok.load(Ordering::Relaxed), failed)
    }
}

pub(crate) fn edit(file: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(file).unwrap();
    assert!(
        text.contains(from),
        "{}: no `{from}` in\n{text}",
        file.display()
    );
    std::fs::write(file, text.replacen(from, to, 1)).unwrap();
}

/// The most `skiff dev` may add to a redeploy beyond its build and deploy.
pub(crate) const DEV_OVERHEAD: f64 = 2.0;

/// The build and deploy seconds `skiff dev` printed for `version`
/// ("[dev] v2 serving, X s after the change (build B s, deploy D s)").
pub(crate) fn build_and_deploy(output: &str, version: &str) -> Option<f64> {
    let line = output
        .lines()
        .find(|l| l.starts_with(&format!("[dev] {version} serving")))?;
    let seconds = |label: &str| -> Option<f64> {
        let rest = &line[line.find(label)? + label.len()..];
        rest.split(" s").next()?.trim().parse().ok()
    };
    Some(seconds("(build ")? + seconds("deploy ")?)
}
