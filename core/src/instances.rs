//! Instance reuse: the manifest's `[instances]` table, the node's maxima, and the policy
//! one deployed version runs under.
//!
//! An instance is one sandbox (a wasmtime store and the component instantiated in it).
//! `reuse` is how many requests it serves before it is dropped (`1`: a fresh sandbox per
//! request); `concurrency` how many it serves at once (WASI 0.3 only: a 0.2 handler is a
//! synchronous call); `idle` how long an unused one is kept. The defaults depend on the
//! world the component implements: 0.3 handlers are reused as `wasmtime serve` reuses
//! them, 0.2 handlers get a fresh sandbox per request because some toolchains' 0.2 guests
//! break when reused (componentize-js answers "respondWith can't be called twice").

pub use crate::manifest::InstancesSection;
use crate::manifest::Timeout;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::Duration;

/// Which HTTP world a component implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum HttpWorld {
    /// `wasi:http/incoming-handler@0.2`.
    #[default]
    #[serde(rename = "wasi:http 0.2")]
    P2,
    /// `wasi:http/handler@0.3`.
    #[serde(rename = "wasi:http 0.3")]
    P3,
}

impl fmt::Display for HttpWorld {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HttpWorld::P2 => "wasi:http 0.2",
            HttpWorld::P3 => "wasi:http 0.3",
        })
    }
}

/// How one deployed version's instances are used, after resolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstancePolicy {
    /// Requests per instance before it is dropped (at least 1).
    pub reuse: u32,
    /// Requests served at once by one instance (at least 1).
    pub concurrency: u32,
    /// How long an unused instance is kept.
    #[serde(with = "millis")]
    pub idle: Duration,
}

impl InstancePolicy {
    /// A fresh sandbox for every request.
    pub const FRESH: InstancePolicy = InstancePolicy {
        reuse: 1,
        concurrency: 1,
        idle: Duration::ZERO,
    };

    /// The defaults for a component of `world`: `wasmtime serve`'s for 0.3 (128 requests
    /// per instance, 16 at once, 1 s idle), a fresh sandbox per request for 0.2.
    pub fn default_for(world: HttpWorld) -> InstancePolicy {
        match world {
            HttpWorld::P3 => InstancePolicy {
                reuse: 128,
                concurrency: 16,
                idle: Duration::from_secs(1),
            },
            HttpWorld::P2 => InstancePolicy {
                reuse: 1,
                concurrency: 1,
                idle: Duration::from_secs(1),
            },
        }
    }

    /// Whether an instance may serve more than one request.
    pub fn reuses(&self) -> bool {
        self.reuse > 1
    }
}

/// The most any function's `[instances]` may ask for on a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InstanceMaxima {
    /// Most requests per instance.
    pub reuse: u32,
    /// Most requests served at once by one instance.
    pub concurrency: u32,
    /// Longest an unused instance may be kept.
    pub idle: Duration,
}

impl Default for InstanceMaxima {
    fn default() -> Self {
        InstanceMaxima {
            reuse: 10_000,
            concurrency: 64,
            idle: Duration::from_secs(60),
        }
    }
}

/// An `[instances]` value the node refuses; the message names the key, the limit and
/// what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InstancesError {
    /// Above the node's maximum.
    #[error(
        "[instances] {key} = {asked} exceeds this node's maximum of {max}; lower it in skiff.toml or raise the node's maximum"
    )]
    AboveMaximum {
        /// The manifest key.
        key: &'static str,
        /// What the manifest asked for.
        asked: String,
        /// The node's ceiling.
        max: String,
    },
    /// Zero requests.
    #[error("[instances] {key} must be at least 1")]
    Zero {
        /// The manifest key.
        key: &'static str,
    },
    /// Concurrency on a component whose handler is a synchronous call.
    #[error(
        "[instances] concurrency = {asked} needs a wasi:http 0.3 component; this one implements wasi:http 0.2, whose handler serves one request at a time: remove the key or build the function for wasi:http 0.3"
    )]
    ConcurrencyNeedsP3 {
        /// What the manifest asked for.
        asked: u32,
    },
}

impl InstanceMaxima {
    /// Resolves `spec` for a component of `world` (none: it handles only events, which
    /// are served one at a time per instance).
    pub fn resolve(
        &self,
        spec: &InstancesSection,
        world: Option<HttpWorld>,
    ) -> Result<InstancePolicy, InstancesError> {
        let defaults = InstancePolicy::default_for(world.unwrap_or(HttpWorld::P2));
        let reuse = spec.reuse.unwrap_or(defaults.reuse);
        let concurrency = spec.concurrency.unwrap_or(defaults.concurrency);
        let idle = spec.idle.map_or(defaults.idle, |t| t.0);
        if reuse == 0 {
            return Err(InstancesError::Zero { key: "reuse" });
        }
        if concurrency == 0 {
            return Err(InstancesError::Zero { key: "concurrency" });
        }
        if reuse > self.reuse {
            return Err(InstancesError::AboveMaximum {
                key: "reuse",
                asked: reuse.to_string(),
                max: self.reuse.to_string(),
            });
        }
        if concurrency > self.concurrency {
            return Err(InstancesError::AboveMaximum {
                key: "concurrency",
                asked: concurrency.to_string(),
                max: self.concurrency.to_string(),
            });
        }
        if idle > self.idle {
            return Err(InstancesError::AboveMaximum {
                key: "idle",
                asked: Timeout(idle).to_string(),
                max: Timeout(self.idle).to_string(),
            });
        }
        if concurrency > 1 && world != Some(HttpWorld::P3) {
            return Err(InstancesError::ConcurrencyNeedsP3 { asked: concurrency });
        }
        Ok(InstancePolicy {
            reuse,
            concurrency,
            idle,
        })
    }
}

mod millis {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(reuse: Option<u32>, concurrency: Option<u32>) -> InstancesSection {
        InstancesSection {
            reuse,
            concurrency,
            idle: None,
        }
    }

    #[test]
    fn defaults_follow_the_world() {
        let m = InstanceMaxima::default();
        let p3 = m
            .resolve(&section(None, None), Some(HttpWorld::P3))
            .unwrap();
        assert_eq!((p3.reuse, p3.concurrency), (128, 16));
        let p2 = m
            .resolve(&section(None, None), Some(HttpWorld::P2))
            .unwrap();
        assert_eq!((p2.reuse, p2.concurrency), (1, 1));
        let p2 = m
            .resolve(&section(Some(50), None), Some(HttpWorld::P2))
            .unwrap();
        assert_eq!((p2.reuse, p2.concurrency), (50, 1));
    }

    #[test]
    fn bad_values_name_the_key_and_the_limit() {
        let m = InstanceMaxima::default();
        let e = m
            .resolve(&section(Some(20_000), None), Some(HttpWorld::P3))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("reuse = 20000") && e.contains("maximum of 10000"),
            "{e}"
        );
        let e = m
            .resolve(&section(None, Some(4)), Some(HttpWorld::P2))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("concurrency = 4") && e.contains("wasi:http 0.3"),
            "{e}"
        );
        let e = m
            .resolve(&section(Some(0), None), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("reuse must be at least 1"), "{e}");
        let idle = InstancesSection {
            idle: Some(Timeout(Duration::from_secs(3600))),
            ..InstancesSection::default()
        };
        let e = m.resolve(&idle, None).unwrap_err().to_string();
        assert!(e.contains("[instances] idle = 1h"), "{e}");
    }
}
