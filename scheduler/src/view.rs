//! The scheduler's last known view, kept on disk (`<data dir>/view.json`): the nodes it
//! routed to (their last reports) and the registry's records. A scheduler started while
//! NATS is unreachable routes with it at once, and [`crate::probe`] checks each node
//! directly; NATS's reports and registry take over whenever it answers.

use crate::shared::Scheduler;
use serde::{Deserialize, Serialize};
use skiff_core::deploy::route_table;
use skiff_core::record::FunctionRecord;
use skiff_core::report::NodeReport;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The file the view is kept in, under the data dir.
pub const FILE: &str = "view.json";

/// How often a changed view is written.
const SAVE_EVERY: Duration = Duration::from_secs(1);

/// What the scheduler knew last.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct View {
    /// The live nodes' last reports.
    pub nodes: Vec<NodeReport>,
    /// The registry's records.
    pub records: Vec<FunctionRecord>,
}

/// Why the view could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    /// The file could not be read or written.
    #[error("cannot {what} the scheduler's view `{path}`: {source}; check the --data-dir")]
    Io {
        /// Read or write.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// The file is not a view.
    #[error(
        "the scheduler's view `{path}` is unreadable ({detail}); it is ignored and rewritten from NATS"
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        detail: String,
    },
}

/// Reads the view kept in `dir`, if there is one.
pub fn load(dir: &Path) -> Result<Option<View>, ViewError> {
    let path = dir.join(FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(ViewError::Io {
                what: "read",
                path,
                source,
            });
        }
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| ViewError::Corrupt {
            path,
            detail: e.to_string(),
        })
}

/// Writes `view` to `dir` atomically (a temporary file renamed over the old one, synced).
pub fn save(dir: &Path, view: &View) -> Result<(), ViewError> {
    let path = dir.join(FILE);
    let tmp = dir.join(format!("{FILE}.tmp"));
    let io = |what, source| ViewError::Io {
        what,
        path: path.clone(),
        source,
    };
    let json = serde_json::to_vec(view).map_err(|e| io("encode", std::io::Error::other(e)))?;
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp).map_err(|e| io("write", e))?;
        f.write_all(&json).map_err(|e| io("write", e))?;
        f.sync_all().map_err(|e| io("write", e))?;
    }
    std::fs::rename(&tmp, &path).map_err(|e| io("write", e))
}

/// Routes with `view` (at start, before NATS answered): its nodes join the live set as
/// if they had just reported (the probes drop those that do not answer) and its records
/// give the registered routes.
pub fn restore(s: &Scheduler, view: View) {
    let now = Instant::now();
    s.live.set_registered(route_table(&view.records, None));
    for mut report in view.nodes {
        // A node's sequence starts again when it restarts; any fresh report wins.
        report.seq = 0;
        s.remember(&report);
        s.live.report(report, now);
    }
    s.set_records(view.records);
}

/// Writes the view whenever it changed, for as long as the scheduler runs.
pub async fn keep(s: Arc<Scheduler>, dir: PathBuf) {
    let mut saved = View::default();
    loop {
        tokio::time::sleep(SAVE_EVERY).await;
        let mut nodes: Vec<NodeReport> = s
            .live
            .snapshot(Instant::now())
            .into_iter()
            .map(|(r, _, _)| r)
            .collect();
        nodes.sort_by(|a, b| a.node.cmp(&b.node));
        let records = s.records();
        // Load figures and sequence numbers change all the time; what is kept is where
        // nodes are and what they serve.
        let key = |v: &View| {
            let nodes: Vec<_> = v
                .nodes
                .iter()
                .map(|n| (&n.node, &n.url, &n.admin, &n.functions))
                .collect();
            serde_json::to_string(&(nodes, &v.records)).unwrap_or_default()
        };
        let view = View { nodes, records };
        if key(&view) == key(&saved) {
            continue;
        }
        match save(&dir, &view) {
            Ok(()) => saved = view,
            Err(e) => tracing::warn!(error = %e, "the last known view is not kept"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_view_loads_back_and_garbage_is_named() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load(dir.path()).unwrap().is_none());
        let view = View {
            nodes: Vec::new(),
            records: Vec::new(),
        };
        save(dir.path(), &view).unwrap();
        assert_eq!(load(dir.path()).unwrap(), Some(view));
        std::fs::write(dir.path().join(FILE), b"{not json").unwrap();
        let e = load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("view.json") && e.contains("unreadable"), "{e}");
    }
}
