//! A deployed function version as every store keeps it, and the checks an artifact
//! passes before anything stores or compiles it: its sha256 names it, and its first
//! eight bytes say it is a component.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// One deployed function version as stored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FunctionRecord {
    /// The function's name.
    pub name: String,
    /// Monotonic per function, starting at 1.
    pub version: u64,
    /// The manifest text as deployed.
    pub manifest: String,
    /// sha256 (hex) of the component.
    pub artifact: String,
    /// Milliseconds since the Unix epoch.
    pub deployed_at_ms: u64,
    /// The scheduler's Ed25519 signature (hex) over the fields above, in cluster mode
    /// with `--signing-key` (see [`crate::signing`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

/// The hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Whether `s` looks like a hex sha256 (and so is safe as a file name).
pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Why an artifact is not a component, read from its header alone.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// The bytes are not WebAssembly at all.
    #[error(
        "the file is not WebAssembly (it does not start with the `\\0asm` magic); point `component` in skiff.toml at the .wasm your build produces"
    )]
    NotWasm,
    /// A core module, not a component.
    #[error(
        "the file is a core WebAssembly module, not a component; build a component instead (Rust: `--target wasm32-wasip2`; Python: componentize-py; JavaScript: componentize-js), or wrap the module with `wasm-tools component new`"
    )]
    CoreModule,
    /// A WebAssembly binary of a version or layer wasmtime does not read.
    #[error(
        "the file is WebAssembly of an unsupported version or layer ({0:#x}); build a WASI 0.2 or 0.3 component with a current toolchain"
    )]
    UnknownLayer(u32),
}

/// Checks the 8-byte header: `\0asm`, then version and layer (component = layer 1).
pub fn check_component_header(bytes: &[u8]) -> Result<(), HeaderError> {
    if bytes.len() < 8 || &bytes[0..4] != b"\0asm" {
        return Err(HeaderError::NotWasm);
    }
    let version = u16::from_le_bytes([bytes[4], bytes[5]]);
    let layer = u16::from_le_bytes([bytes[6], bytes[7]]);
    match (layer, version) {
        (0, 1) => Err(HeaderError::CoreModule),
        (1, _) => Ok(()),
        _ => Err(HeaderError::UnknownLayer(
            u32::from(version) | (u32::from(layer) << 16),
        )),
    }
}
