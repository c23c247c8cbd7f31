//! Files that must survive a crash whole or not at all.

use std::io::Write;
use std::path::{Path, PathBuf};

/// A file could not be written durably.
#[derive(Debug, thiserror::Error)]
#[error("{what} `{path}`: {source}")]
pub struct FileError {
    /// What was being done.
    pub what: &'static str,
    /// The file.
    pub path: PathBuf,
    /// The I/O error.
    pub source: std::io::Error,
}

/// Writes `bytes` to `path` so that after a crash the file is either absent or whole.
pub fn write_durably(path: &Path, bytes: &[u8]) -> Result<(), FileError> {
    let io = |what, source| FileError {
        what,
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut f = std::fs::File::create(&tmp).map_err(|e| io("cannot create", e))?;
    f.write_all(bytes).map_err(|e| io("cannot write", e))?;
    f.sync_all().map_err(|e| io("cannot sync", e))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(|e| io("cannot rename into place", e))?;
    if let Some(dir) = path.parent() {
        // The rename is durable only once the directory entry is.
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io("cannot sync folder of", e))?;
    }
    Ok(())
}

/// The bytes of every regular file below `dir` (links are not followed; what cannot be
/// read counts as nothing).
pub fn dir_size(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_size(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map(|m| m.len()).unwrap_or(0),
            _ => 0,
        })
        .sum()
}
