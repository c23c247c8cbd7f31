//! Invocation limits: the node's maxima and defaults, and their resolution against a
//! manifest's `[limits]`.

use crate::manifest::{LimitsSection, Size, Timeout};
use std::time::Duration;

/// Largest component accepted for upload unless `--max-artifact` says otherwise.
pub const MAX_ARTIFACT_BYTES: usize = 50 << 20;

/// A function's key-value limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KvLimits {
    /// Longest key, in bytes.
    pub key_bytes: u64,
    /// Largest value, in bytes.
    pub value_bytes: u64,
    /// Most keys the function may hold across its buckets.
    pub keys: u64,
    /// Most bytes (keys + values) the function may hold.
    pub total_bytes: u64,
}

impl KvLimits {
    /// No limits: replicated writes were checked before they entered the log, and every
    /// node must apply what the log holds, whatever its own usage.
    pub const UNLIMITED: KvLimits = KvLimits {
        key_bytes: u64::MAX,
        value_bytes: u64::MAX,
        keys: u64::MAX,
        total_bytes: u64::MAX,
    };
}

impl Default for KvLimits {
    fn default() -> Self {
        KvLimits {
            key_bytes: 1024,
            value_bytes: 1 << 20,
            keys: 100_000,
            total_bytes: 256 << 20,
        }
    }
}

/// The limits one function's invocations run under, after resolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FunctionLimits {
    /// Bytes of linear memory an instance may hold.
    pub memory: u64,
    /// Wall-clock time of one invocation, body streaming included.
    #[serde(with = "duration_ms")]
    pub timeout: Duration,
    /// Invocations of the function running at once on this node.
    pub concurrency: u32,
    /// Largest request body accepted, in bytes.
    pub body: u64,
    /// Key-value state limits.
    pub kv: KvLimits,
}

/// Node-wide settings: the ceiling for every function and the defaults a manifest may omit.
#[derive(Debug, Clone)]
pub struct NodeLimits {
    /// Limits for a function whose manifest says nothing.
    pub defaults: FunctionLimits,
    /// The most any function may ask for.
    pub max: FunctionLimits,
    /// Invocations running at once on the whole node.
    pub node_concurrency: u32,
    /// Largest request head (request line + headers) in bytes; larger answers 431.
    pub max_header_bytes: usize,
    /// How long a client may take to send its request head.
    pub header_read_timeout: Duration,
    /// Largest component the admin API accepts for upload.
    pub max_artifact_bytes: usize,
    /// Components kept loaded and linked in memory at once (least recently used go).
    pub code_cache: usize,
    /// The most any function's `[instances]` may ask for.
    pub instances: crate::instances::InstanceMaxima,
    /// How long idempotency records are kept.
    pub dedup: DedupWindows,
    /// Bounds on schedules and delayed events.
    pub timers: TimerLimits,
}

/// Bounds on schedules and delayed events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimerLimits {
    /// The fastest a `[[schedule]]` may fire (`--min-schedule-interval`, default 1s).
    pub min_interval: Duration,
    /// The furthest ahead an event may be published (`--max-event-delay`, default 30 days).
    pub max_delay: Duration,
    /// How far in the past a delivery time may lie and still be taken as "now".
    pub past_grace: Duration,
}

impl Default for TimerLimits {
    fn default() -> Self {
        TimerLimits {
            min_interval: crate::schedule::DEFAULT_MIN_INTERVAL,
            max_delay: Duration::from_secs(30 * 86_400),
            past_grace: Duration::from_secs(5),
        }
    }
}

impl TimerLimits {
    /// Checks a delivery time `at_ms` asked for at `now_ms`; answers the time to use.
    pub fn check_delivery(&self, at_ms: u64, now_ms: u64) -> Result<u64, String> {
        let grace = self.past_grace.as_millis() as u64;
        if at_ms + grace < now_ms {
            return Err(format!(
                "the delivery time {} is {} in the past; give a future time or a delay",
                crate::schedule::rfc3339(at_ms),
                humantime::format_duration(Duration::from_millis((now_ms - at_ms) / 1000 * 1000))
            ));
        }
        let max = self.max_delay.as_millis() as u64;
        if at_ms > now_ms + max {
            return Err(format!(
                "the delivery time {} is {} ahead, beyond this node's maximum delay of {} (`--max-event-delay`)",
                crate::schedule::rfc3339(at_ms),
                humantime::format_duration(Duration::from_millis((at_ms - now_ms) / 1000 * 1000)),
                humantime::format_duration(self.max_delay)
            ));
        }
        Ok(at_ms.max(now_ms))
    }
}

/// How long each kind of idempotency record is kept, in both modes: past its window, a
/// redelivered write or a retried publish is no longer recognised as a repeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DedupWindows {
    /// Published event ids (`--dedup-window-events`): the embedded bus's table, and the
    /// NATS event stream's `duplicate_window`.
    pub events: Duration,
    /// Key-value writes made under an idempotency key (`--dedup-window-state`): the
    /// journal of first answers, and the NATS state stream's `duplicate_window`.
    pub state: Duration,
}

impl Default for DedupWindows {
    /// Two hours each: far longer than any redelivery (an event is retried within its
    /// handler's timeout plus backoff), and what JetStream keeps in memory stays small.
    fn default() -> Self {
        DedupWindows {
            events: Duration::from_secs(2 * 3600),
            state: Duration::from_secs(2 * 3600),
        }
    }
}

impl Default for NodeLimits {
    fn default() -> Self {
        NodeLimits {
            defaults: FunctionLimits {
                memory: 128 << 20,
                timeout: Duration::from_secs(30),
                concurrency: 128,
                body: 10 << 20,
                kv: KvLimits::default(),
            },
            max: FunctionLimits {
                memory: 1 << 30,
                timeout: Duration::from_secs(300),
                concurrency: 512,
                body: 100 << 20,
                kv: KvLimits {
                    key_bytes: 64 << 10,
                    value_bytes: 32 << 20,
                    keys: 100_000_000,
                    total_bytes: 64 << 30,
                },
            },
            node_concurrency: 512,
            max_header_bytes: 32 << 10,
            header_read_timeout: Duration::from_secs(10),
            max_artifact_bytes: MAX_ARTIFACT_BYTES,
            code_cache: 512,
            instances: crate::instances::InstanceMaxima::default(),
            dedup: DedupWindows::default(),
            timers: TimerLimits::default(),
        }
    }
}

/// A manifest asked for more than the node allows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "[limits] {key} = {asked} exceeds this node's maximum of {max}; lower it in skiff.toml or raise the node's maximum"
)]
pub struct LimitError {
    /// The manifest key.
    pub key: &'static str,
    /// What the manifest asked for.
    pub asked: String,
    /// The node's ceiling.
    pub max: String,
}

impl NodeLimits {
    /// Resolves a manifest's `[limits]` against the defaults and maxima.
    pub fn resolve(&self, spec: &LimitsSection) -> Result<FunctionLimits, LimitError> {
        let d = self.defaults;
        let m = self.max;
        let memory = spec.memory.map_or(d.memory, |s| s.0);
        if memory > m.memory {
            return Err(LimitError {
                key: "memory",
                asked: Size(memory).to_string(),
                max: Size(m.memory).to_string(),
            });
        }
        let timeout = spec.timeout.map_or(d.timeout, |t| t.0);
        if timeout > m.timeout {
            return Err(LimitError {
                key: "timeout",
                asked: Timeout(timeout).to_string(),
                max: Timeout(m.timeout).to_string(),
            });
        }
        let concurrency_max = m.concurrency.min(self.node_concurrency);
        let concurrency = match spec.concurrency {
            Some(c) if c > concurrency_max => {
                return Err(LimitError {
                    key: "concurrency",
                    asked: c.to_string(),
                    max: concurrency_max.to_string(),
                });
            }
            Some(c) => c,
            // The default may exceed a node configured smaller than the defaults assume.
            None => d.concurrency.min(concurrency_max),
        };
        let body = spec.body.map_or(d.body, |s| s.0);
        if body > m.body {
            return Err(LimitError {
                key: "body",
                asked: Size(body).to_string(),
                max: Size(m.body).to_string(),
            });
        }
        let kv = KvLimits {
            key_bytes: bounded(
                "kv_key",
                spec.kv_key.map(|s| s.0),
                d.kv.key_bytes,
                m.kv.key_bytes,
                true,
            )?,
            value_bytes: bounded(
                "kv_value",
                spec.kv_value.map(|s| s.0),
                d.kv.value_bytes,
                m.kv.value_bytes,
                true,
            )?,
            keys: bounded("kv_keys", spec.kv_keys, d.kv.keys, m.kv.keys, false)?,
            total_bytes: bounded(
                "kv_bytes",
                spec.kv_bytes.map(|s| s.0),
                d.kv.total_bytes,
                m.kv.total_bytes,
                true,
            )?,
        };
        Ok(FunctionLimits {
            memory,
            timeout,
            concurrency,
            body,
            kv,
        })
    }
}

/// `asked` (or `default`) if within `max`, else the error naming `key`.
fn bounded(
    key: &'static str,
    asked: Option<u64>,
    default: u64,
    max: u64,
    size: bool,
) -> Result<u64, LimitError> {
    let v = asked.unwrap_or(default);
    if v > max {
        let show = |n| {
            if size {
                Size(n).to_string()
            } else {
                n.to_string()
            }
        };
        return Err(LimitError {
            key,
            asked: show(v),
            max: show(max),
        });
    }
    Ok(v)
}

mod duration_ms {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_section_takes_defaults() {
        let n = NodeLimits::default();
        assert_eq!(n.resolve(&LimitsSection::default()).unwrap(), n.defaults);
    }

    #[test]
    fn overrides_within_maxima_apply() {
        let n = NodeLimits::default();
        let spec = LimitsSection {
            memory: Some(Size(64 << 20)),
            timeout: Some(Timeout(Duration::from_secs(5))),
            concurrency: Some(4),
            body: Some(Size(1024)),
            kv_value: Some(Size(10)),
            ..Default::default()
        };
        let l = n.resolve(&spec).unwrap();
        assert_eq!(l.memory, 64 << 20);
        assert_eq!(l.timeout, Duration::from_secs(5));
        assert_eq!(l.concurrency, 4);
        assert_eq!(l.body, 1024);
        assert_eq!(l.kv.value_bytes, 10);
        assert_eq!(l.kv.keys, KvLimits::default().keys);
    }

    #[test]
    fn each_limit_over_the_maximum_is_refused_by_name() {
        let n = NodeLimits::default();
        let cases = [
            (
                LimitsSection {
                    memory: Some(Size(2 << 30)),
                    ..Default::default()
                },
                "memory",
            ),
            (
                LimitsSection {
                    timeout: Some(Timeout(Duration::from_secs(3600))),
                    ..Default::default()
                },
                "timeout",
            ),
            (
                LimitsSection {
                    concurrency: Some(100_000),
                    ..Default::default()
                },
                "concurrency",
            ),
            (
                LimitsSection {
                    body: Some(Size(1 << 40)),
                    ..Default::default()
                },
                "body",
            ),
        ];
        for (spec, key) in cases {
            let err = n.resolve(&spec).unwrap_err();
            assert_eq!(err.key, key);
            assert!(err.to_string().contains("exceeds this node's maximum"));
        }
    }

    #[test]
    fn default_concurrency_is_capped_by_a_small_node() {
        let n = NodeLimits {
            node_concurrency: 8,
            ..NodeLimits::default()
        };
        assert_eq!(n.resolve(&LimitsSection::default()).unwrap().concurrency, 8);
    }
}
