//! What a deploy leaves on disk, and collecting what no function references.
//!
//! A deploy that is refused leaves the data dir as it found it: code it compiled stays in
//! memory until the deploy is accepted ([`Node::accepted`] writes it, with what the
//! component exports), and the artifact it uploaded is removed ([`Node::refused`]) unless
//! a recorded version uses it. [`Node::collect`] removes every artifact and precompiled
//! file no recorded version references: at start and after `rm`. An artifact uploaded a
//! moment ago for a deploy still on its way is spared for
//! [`skiff_core::control::UPLOAD_GRACE`].

use super::{Exports, Node};
use crate::engine::CompileError;
use skiff_core::control::ControlError;
use std::collections::HashSet;

/// What one collection removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Collected {
    /// Artifacts removed.
    pub artifacts: usize,
    /// Bytes freed (artifacts and precompiled code).
    pub bytes: u64,
}

/// Why a collection failed.
#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    /// The control store could not list or remove artifacts.
    #[error("cannot collect unused artifacts: {0}")]
    Control(#[from] ControlError),
    /// The compiled-code cache could not be cleaned.
    #[error("cannot collect unused compiled code: {0}")]
    Compiled(#[from] CompileError),
    /// The blocking task died.
    #[error("cannot collect unused compiled code: {0}")]
    Task(String),
}

impl Node {
    /// Notes that `artifact` was just uploaded (and so is spared by collections for a
    /// while even though no version references it yet).
    pub fn uploaded(&self, artifact: &str) {
        self.uploads.uploaded(artifact);
    }

    /// A deploy of `artifact` is accepted: what it compiled goes to the precompiled
    /// cache, and what it exports to the index.
    pub(super) async fn accepted(
        &self,
        artifact: &str,
        exports: &Exports,
    ) -> Result<(), super::DeployError> {
        self.uploads.settled(artifact);
        let internal = |detail: String| super::DeployError::Internal {
            name: artifact.to_string(),
            detail,
        };
        self.code
            .save(artifact)
            .await
            .map_err(|e| internal(e.to_string()))?;
        self.engine
            .index()
            .set_exports(&self.exports_key(artifact), exports.bits())
            .map_err(|e| internal(e.to_string()))
    }

    /// A deploy of `artifact` was refused: its compiled code leaves memory, and the
    /// artifact leaves the disk unless a recorded version uses it.
    pub(super) async fn refused(&self, artifact: &str) {
        self.uploads.settled(artifact);
        self.code.discard(artifact);
        let used = match self.control.records().await {
            Ok(records) => records.iter().any(|r| r.artifact == artifact),
            Err(e) => {
                tracing::warn!(artifact, error = %e, "cannot list versions; the refused artifact stays until the next collection");
                true
            }
        };
        if !used && let Err(e) = self.control.remove_artifact(artifact).await {
            tracing::warn!(artifact, error = %e, "cannot remove the refused deploy's artifact");
        }
    }

    /// Removes every artifact and precompiled file that no recorded version references
    /// (sparing artifacts uploaded in the last [`skiff_core::control::UPLOAD_GRACE`]).
    pub async fn collect(&self) -> Result<Collected, CollectError> {
        let keep: HashSet<String> = self
            .control
            .records()
            .await?
            .into_iter()
            .map(|r| r.artifact)
            .collect();
        let spared = self.uploads.spared();
        let mut collected = Collected::default();
        for artifact in self.control.artifacts().await? {
            if keep.contains(&artifact) || spared.contains(&artifact) {
                continue;
            }
            collected.bytes += self.control.remove_artifact(&artifact).await?;
            collected.artifacts += 1;
        }
        let engine = self.engine.clone();
        collected.bytes += tokio::task::spawn_blocking(move || engine.collect(&keep))
            .await
            .map_err(|e| CollectError::Task(e.to_string()))??;
        if collected.artifacts > 0 || collected.bytes > 0 {
            tracing::info!(
                artifacts = collected.artifacts,
                bytes = collected.bytes,
                "removed artifacts and compiled code no version uses"
            );
        }
        Ok(collected)
    }
}
