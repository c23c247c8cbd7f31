//! `skiff.toml`: a function's manifest, parsed strictly.
//!
//! Unknown keys are errors that name their line (serde's `deny_unknown_fields` + toml's
//! spans); names, sizes ("64MiB") and durations ("5s") are validated newtypes, so a
//! manifest that parses is one the node can act on.

use crate::routes::{Route, RouteError};
pub use crate::units::{Size, Timeout};
use serde::{Deserialize, Deserializer};
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The file name `skiff deploy DIR` looks for.
pub const MANIFEST_FILE: &str = "skiff.toml";

/// Why a manifest was refused.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The TOML did not parse or did not match the schema; the message names the line.
    #[error("{origin}: {message}")]
    Parse {
        /// Where the manifest came from (a path or "manifest").
        origin: String,
        /// toml's message, with line, column and the offending snippet.
        message: String,
    },
    /// The manifest file could not be read.
    #[error(
        "cannot read manifest `{path}`: {source}; pass a folder that holds skiff.toml or the file itself"
    )]
    Read {
        /// The path tried.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// A function name: `[a-z0-9][a-z0-9-]{0,62}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct FunctionName(String);

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid function name `{0}`: use 1 to 63 lowercase letters, digits and `-`, starting with a letter or digit (for example `hello-world`)"
)]
pub struct NameError(pub String);

impl FunctionName {
    /// Validates `name`.
    pub fn new(name: &str) -> Result<Self, NameError> {
        let bytes = name.as_bytes();
        let ok = !bytes.is_empty()
            && bytes.len() <= 63
            && (bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit())
            && bytes
                .iter()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-');
        if ok {
            Ok(FunctionName(name.to_string()))
        } else {
            Err(NameError(name.to_string()))
        }
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for FunctionName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for FunctionName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        FunctionName::new(&s).map_err(serde::de::Error::custom)
    }
}

/// The `[http]` table.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSection {
    /// Route pattern; default `/<name>/...`.
    pub route: Option<String>,
}

/// The `[limits]` table: per-function overrides, each bounded by the node's maxima.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSection {
    /// Linear memory an instance may grow to.
    pub memory: Option<Size>,
    /// Wall-clock time one invocation may take.
    pub timeout: Option<Timeout>,
    /// Invocations of this function running at once on one node.
    pub concurrency: Option<u32>,
    /// Largest request body accepted.
    pub body: Option<Size>,
    /// Longest key-value key.
    pub kv_key: Option<Size>,
    /// Largest key-value value.
    pub kv_value: Option<Size>,
    /// Most keys the function may hold.
    pub kv_keys: Option<u64>,
    /// Most bytes (keys + values) the function may hold.
    pub kv_bytes: Option<Size>,
}

/// The `[instances]` table: instance reuse (resolved in [`crate::instances`]).
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct InstancesSection {
    /// Requests one instance serves before it is dropped; `1`: a fresh one per request.
    pub reuse: Option<u32>,
    /// Requests one instance serves at once (WASI 0.3 components only).
    pub concurrency: Option<u32>,
    /// How long an instance with nothing to do is kept.
    pub idle: Option<Timeout>,
}

/// The `[placement]` table: how many nodes of a cluster host the function.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PlacementSection {
    /// Nodes that host it (its code, its event consumers and a copy of its state); unset:
    /// the scheduler's `--placement-nodes`, else every node.
    pub nodes: Option<u32>,
}

/// One `[[events]]` trigger.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct EventTrigger {
    /// Topic pattern (`*` one token, final `>` the rest), e.g. `orders.created`.
    pub topic: String,
    /// Deliveries before the event is dead-lettered (default 5).
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
    /// Delay before the first retry; doubles each retry, capped at 5 minutes (default 1s).
    #[serde(default = "default_backoff")]
    pub backoff: Timeout,
    /// Deliveries of this trigger handled at once on one node (default: the function's
    /// concurrency limit).
    pub concurrency: Option<u32>,
}

fn default_attempts() -> u32 {
    5
}

fn default_backoff() -> Timeout {
    Timeout(Duration::from_secs(1))
}

/// A parsed `skiff.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The function's name; also its default route.
    pub name: FunctionName,
    /// Path of the component, absolute or relative to the manifest's folder.
    pub component: PathBuf,
    /// Shell command that builds the component, run in the manifest's folder.
    pub build: Option<String>,
    /// Origins the function may call through `wasi:http/outgoing-handler`.
    #[serde(default)]
    pub allowed_outbound_hosts: Vec<String>,
    /// HTTP trigger.
    #[serde(default)]
    pub http: HttpSection,
    /// Per-function limits.
    #[serde(default)]
    pub limits: LimitsSection,
    /// Instance reuse (see [`crate::instances`]).
    #[serde(default)]
    pub instances: InstancesSection,
    /// How many nodes host it (cluster mode).
    #[serde(default)]
    pub placement: PlacementSection,
    /// Environment variables the function sees (and nothing else of the host's).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Values the function reads through `wasi:config/store` (secrets, set with
    /// `skiff secret set`, join them and win over a value of the same key).
    #[serde(default)]
    pub config: BTreeMap<String, String>,
    /// Event triggers.
    #[serde(default)]
    pub events: Vec<EventTrigger>,
    /// Schedule triggers (`[[schedule]]`), delivered to the event handler.
    #[serde(default)]
    pub schedule: Vec<crate::schedule::ScheduleSection>,
}

impl Manifest {
    /// Parses manifest text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Manifest, ManifestError> {
        let parse_err = |message: String| ManifestError::Parse {
            origin: origin.to_string(),
            message,
        };
        let manifest: Manifest =
            toml::from_str(text).map_err(|e| parse_err(e.to_string().trim_end().to_string()))?;
        manifest
            .route()
            .map_err(|e| parse_err(format!("[http] {e}")))?;
        if manifest.placement.nodes == Some(0) {
            return Err(parse_err(
                "[placement] nodes must be at least 1 (leave it out to run on every node)"
                    .to_string(),
            ));
        }
        if manifest.limits.concurrency == Some(0) {
            return Err(parse_err(
                "[limits] concurrency must be at least 1".to_string(),
            ));
        }
        for (i, t) in manifest.events.iter().enumerate() {
            crate::topic::check_pattern(&t.topic)
                .map_err(|e| parse_err(format!("[[events]] #{}: {e}", i + 1)))?;
            if t.max_attempts == 0 || t.concurrency == Some(0) {
                return Err(parse_err(format!(
                    "[[events]] #{}: max_attempts and concurrency must be at least 1",
                    i + 1
                )));
            }
            if manifest.events[..i].iter().any(|o| o.topic == t.topic) {
                return Err(parse_err(format!(
                    "[[events]] #{}: topic `{}` appears twice; merge the triggers",
                    i + 1,
                    t.topic
                )));
            }
        }
        manifest.schedules().map_err(|e| parse_err(e.to_string()))?;
        for key in manifest.config.keys() {
            crate::secrets::check_key(key).map_err(|e| parse_err(format!("[config] {e}")))?;
        }
        for key in manifest.env.keys() {
            if key.is_empty() || key.contains('=') || key.contains('\0') {
                return Err(parse_err(format!(
                    "[env] key `{key}` is not a valid environment variable name"
                )));
            }
        }
        Ok(manifest)
    }

    /// Reads and parses the manifest at `path` (a file, or a folder holding skiff.toml).
    pub fn load(path: &Path) -> Result<(Manifest, PathBuf, String), ManifestError> {
        let file = if path.is_dir() {
            path.join(MANIFEST_FILE)
        } else {
            path.to_path_buf()
        };
        let text = std::fs::read_to_string(&file).map_err(|source| ManifestError::Read {
            path: file.clone(),
            source,
        })?;
        let manifest = Manifest::parse(&text, &file.display().to_string())?;
        Ok((manifest, file, text))
    }

    /// The checked `[[schedule]]` tables, in order.
    pub fn schedules(
        &self,
    ) -> Result<Vec<crate::schedule::Schedule>, crate::schedule::ScheduleError> {
        self.schedule
            .iter()
            .enumerate()
            .map(|(i, s)| crate::schedule::Schedule::parse(i + 1, s))
            .collect()
    }

    /// The route this function serves.
    pub fn route(&self) -> Result<Route, RouteError> {
        match &self.http.route {
            Some(r) => Route::parse(r),
            None => Ok(Route::default_for(self.name.as_str())),
        }
    }

    /// The component's path, resolved against the manifest's folder.
    pub fn component_path(&self, manifest_file: &Path) -> PathBuf {
        if self.component.is_absolute() {
            self.component.clone()
        } else {
            manifest_file
                .parent()
                .unwrap_or(Path::new("."))
                .join(&self.component)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"
name = "hello"
component = "target/wasm32-wasip2/release/hello.wasm"
build = "cargo build --release --target wasm32-wasip2"
allowed_outbound_hosts = ["https://api.example.com"]

[http]
route = "/hi/..."

[limits]
memory = "64MiB"
timeout = "5s"
concurrency = 64
body = "1MiB"

[env]
GREETING = "hi"

[config]
greeting = "hello"

[[events]]
topic = "orders.*"
max_attempts = 3
backoff = "250ms"

[[events]]
topic = "payments.completed"
"#;

    #[test]
    fn parses_a_full_manifest() {
        let m = Manifest::parse(FULL, "test").unwrap();
        assert_eq!(m.name.as_str(), "hello");
        assert_eq!(m.limits.memory, Some(Size(64 << 20)));
        assert_eq!(m.limits.timeout, Some(Timeout(Duration::from_secs(5))));
        assert_eq!(m.limits.concurrency, Some(64));
        assert_eq!(m.limits.body, Some(Size(1 << 20)));
        assert_eq!(m.env.get("GREETING").map(String::as_str), Some("hi"));
        assert_eq!(m.config.get("greeting").map(String::as_str), Some("hello"));
        let err = Manifest::parse(
            "name = \"a\"\ncomponent = \"x\"\n[config]\n\"a b\" = \"1\"\n",
            "t",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("[config] invalid config or secret key `a b`"),
            "{err}"
        );
        assert_eq!(m.route().unwrap().to_string(), "/hi/...");
        assert_eq!(m.events.len(), 2);
        assert_eq!(m.events[0].max_attempts, 3);
        assert_eq!(m.events[0].backoff, Timeout(Duration::from_millis(250)));
        assert_eq!(m.events[1].max_attempts, 5);
    }

    #[test]
    fn bad_triggers_are_refused() {
        let base = "name = \"a\"\ncomponent = \"x\"\n";
        for (trigger, expect) in [
            ("[[events]]\ntopic = \"a..b\"\n", "invalid trigger pattern"),
            (
                "[[events]]\ntopic = \"a\"\nmax_attempts = 0\n",
                "at least 1",
            ),
            (
                "[[events]]\ntopic = \"a\"\n[[events]]\ntopic = \"a\"\n",
                "appears twice",
            ),
            ("[[events]]\ntopic = \"a\"\nretries = 3\n", "retries"),
        ] {
            let err = Manifest::parse(&format!("{base}{trigger}"), "t")
                .unwrap_err()
                .to_string();
            assert!(err.contains(expect), "{err}");
        }
    }

    #[test]
    fn default_route_is_name() {
        let m = Manifest::parse("name = \"abc\"\ncomponent = \"x.wasm\"\n", "t").unwrap();
        assert_eq!(m.route().unwrap().to_string(), "/abc/...");
    }

    #[test]
    fn unknown_key_names_its_line() {
        let text = "name = \"abc\"\ncomponent = \"x.wasm\"\ncolour = \"blue\"\n";
        let err = Manifest::parse(text, "skiff.toml").unwrap_err().to_string();
        assert!(err.contains("line 3"), "{err}");
        assert!(err.contains("colour"), "{err}");
    }

    #[test]
    fn unknown_key_in_table_names_its_line() {
        let text = "name = \"abc\"\ncomponent = \"x.wasm\"\n[limits]\nmemroy = \"1MiB\"\n";
        let err = Manifest::parse(text, "skiff.toml").unwrap_err().to_string();
        assert!(err.contains("line 4"), "{err}");
        assert!(err.contains("memroy"), "{err}");
    }

    #[test]
    fn bad_names_are_refused() {
        for bad in ["Hello", "-x", "", "a_b", "é", &"a".repeat(64)] {
            assert!(FunctionName::new(bad).is_err(), "{bad:?} accepted");
            let text = format!("name = \"{bad}\"\ncomponent = \"x.wasm\"\n");
            let err = Manifest::parse(&text, "t").unwrap_err().to_string();
            assert!(err.contains("invalid function name"), "{err}");
        }
        for good in ["a", "0", "hello-world", &"a".repeat(63)] {
            assert!(FunctionName::new(good).is_ok(), "{good:?} refused");
        }
    }

    #[test]
    fn sizes_and_durations() {
        assert_eq!(Size::parse("64MiB").unwrap(), Size(64 << 20));
        assert_eq!(Size::parse("10MB").unwrap(), Size(10_000_000));
        assert_eq!(Size::parse("512").unwrap(), Size(512));
        assert!(Size::parse("lots").is_err());
        assert_eq!(
            Timeout::parse("250ms").unwrap(),
            Timeout(Duration::from_millis(250))
        );
        assert!(Timeout::parse("soon").is_err());
        let err = Manifest::parse(
            "name = \"a\"\ncomponent = \"x\"\n[limits]\ntimeout = \"soon\"\n",
            "t",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("line 4") && err.contains("invalid duration"),
            "{err}"
        );
    }

    #[test]
    fn bad_route_and_zero_concurrency_are_refused() {
        let err = Manifest::parse(
            "name = \"a\"\ncomponent = \"x\"\n[http]\nroute = \"nope\"\n",
            "t",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("must start with `/`"), "{err}");
        let err = Manifest::parse(
            "name = \"a\"\ncomponent = \"x\"\n[limits]\nconcurrency = 0\n",
            "t",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("at least 1"), "{err}");
        let err = Manifest::parse(
            "name = \"a\"\ncomponent = \"x\"\n[placement]\nnodes = 0\n",
            "t",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("[placement] nodes must be at least 1"),
            "{err}"
        );
        let m = Manifest::parse(
            "name = \"a\"\ncomponent = \"x\"\n[placement]\nnodes = 2\n",
            "t",
        )
        .unwrap();
        assert_eq!(m.placement.nodes, Some(2));
    }

    #[test]
    fn component_path_resolves_relative_to_manifest() {
        let m = Manifest::parse("name = \"a\"\ncomponent = \"out/a.wasm\"\n", "t").unwrap();
        assert_eq!(
            m.component_path(Path::new("/srv/fn/skiff.toml")),
            PathBuf::from("/srv/fn/out/a.wasm")
        );
        let m = Manifest::parse("name = \"a\"\ncomponent = \"/abs/a.wasm\"\n", "t").unwrap();
        assert_eq!(
            m.component_path(Path::new("/srv/fn/skiff.toml")),
            PathBuf::from("/abs/a.wasm")
        );
    }
}
