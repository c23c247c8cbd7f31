//! State operations and the one function that applies them.
//!
//! Every write — from a guest, from the admin API, or (in cluster mode) replayed from the
//! replication log — is an [`Op`] applied by [`apply`] inside a redb write transaction,
//! which also advances the log's last applied sequence. Limits are checked before anything
//! is written, so an op either applies whole or not at all.

use super::keys::{Namespace, function_prefix, prefix_end};
use redb::{ReadableTable, Table, TableDefinition};
use serde::{Deserialize, Serialize};
pub use skiff_core::limits::KvLimits;

/// Key → value, keys encoded by [`super::keys`].
pub const DATA: TableDefinition<&[u8], &[u8]> = TableDefinition::new("kv");
/// Function → (number of keys, bytes of keys + values).
pub const USAGE: TableDefinition<&str, (u64, u64)> = TableDefinition::new("kv_usage");
/// Idempotency key → (when, result) of the write first applied under it.
pub const JOURNAL: TableDefinition<&str, &[u8]> = TableDefinition::new("kv_journal");
/// Log name → last applied sequence.
pub const APPLIED: TableDefinition<&str, u64> = TableDefinition::new("applied");
/// Key (as in [`DATA`]) → the replicated log's sequence of the write that last set or
/// deleted it (cluster mode: the compare-and-set token of that key).
pub const KEY_SEQ: TableDefinition<&[u8], u64> = TableDefinition::new("kv_seq");

/// Checks a key's and a value's sizes against `limits` (what can be checked without the
/// store).
pub fn check_sizes(limits: &KvLimits, key: &str, value: Option<&[u8]>) -> Result<(), OpError> {
    check_key(key, limits)?;
    if let Some(v) = value {
        check_value(v, limits)?;
    }
    Ok(())
}

/// One state write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Set a key.
    Set {
        /// Where.
        ns: Namespace,
        /// The key.
        key: String,
        /// The value.
        value: Vec<u8>,
    },
    /// Delete a key (absent is fine).
    Delete {
        /// Where.
        ns: Namespace,
        /// The key.
        key: String,
    },
    /// Add `delta` to a decimal counter (absent counts as 0).
    Increment {
        /// Where.
        ns: Namespace,
        /// The key.
        key: String,
        /// How much.
        delta: u64,
    },
    /// Set `key` to `new` if its value is `expected` (`None`: absent).
    CompareAndSwap {
        /// Where.
        ns: Namespace,
        /// The key.
        key: String,
        /// The value it must have now.
        expected: Option<Vec<u8>>,
        /// The value to set.
        new: Vec<u8>,
    },
    /// Set several keys at once.
    SetMany {
        /// Where.
        ns: Namespace,
        /// Keys and values.
        items: Vec<(String, Vec<u8>)>,
    },
    /// Delete several keys at once.
    DeleteMany {
        /// Where.
        ns: Namespace,
        /// The keys.
        keys: Vec<String>,
    },
    /// Delete everything a function stores.
    Purge {
        /// The function.
        function: String,
    },
}

/// What an applied op answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum OpResult {
    /// Applied.
    Done,
    /// The counter's new value.
    Incremented(u64),
    /// Whether the swap happened.
    Swapped(bool),
    /// How many keys were removed.
    Purged(u64),
}

/// Why an op was refused (nothing was written).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum OpError {
    /// Key over the limit.
    #[error("key is {size} bytes; the limit is {limit}")]
    KeyTooLarge {
        /// The key's size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// Value over the limit.
    #[error("value is {size} bytes; the limit is {limit}")]
    ValueTooLarge {
        /// The value's size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// The function would hold too many keys.
    #[error("the function would hold {would} keys; the limit is {limit}")]
    TooManyKeys {
        /// Keys after the op.
        would: u64,
        /// The limit.
        limit: u64,
    },
    /// The function would hold too many bytes.
    #[error("the function would store {would} bytes; the limit is {limit}")]
    TooManyBytes {
        /// Bytes after the op.
        would: u64,
        /// The limit.
        limit: u64,
    },
    /// Increment of a value that is not a decimal u64.
    #[error("value of `{0}` is not a decimal counter, so it cannot be incremented")]
    NotACounter(String),
    /// Increment past u64::MAX.
    #[error("incrementing `{0}` would overflow")]
    Overflow(String),
    /// redb failed.
    #[error("storage error: {0}")]
    Storage(String),
}

impl From<redb::StorageError> for OpError {
    fn from(e: redb::StorageError) -> Self {
        OpError::Storage(e.to_string())
    }
}

/// The tables an op touches, opened by the job that applies it.
pub struct Tables<'txn> {
    /// Data.
    pub data: Table<'txn, &'static [u8], &'static [u8]>,
    /// Usage counters.
    pub usage: Table<'txn, &'static str, (u64, u64)>,
}

fn check_key(key: &str, limits: &KvLimits) -> Result<(), OpError> {
    let size = key.len() as u64;
    if size > limits.key_bytes || key.is_empty() {
        return Err(OpError::KeyTooLarge {
            size,
            limit: limits.key_bytes,
        });
    }
    Ok(())
}

fn check_value(value: &[u8], limits: &KvLimits) -> Result<(), OpError> {
    let size = value.len() as u64;
    if size > limits.value_bytes {
        return Err(OpError::ValueTooLarge {
            size,
            limit: limits.value_bytes,
        });
    }
    Ok(())
}

/// Changes to a function's usage, applied only once every check passed.
#[derive(Default)]
struct Delta {
    keys: i64,
    bytes: i64,
}

impl Delta {
    fn set(&mut self, key: &str, old: Option<usize>, new: usize) {
        match old {
            Some(old) => self.bytes += new as i64 - old as i64,
            None => {
                self.keys += 1;
                self.bytes += (key.len() + new) as i64;
            }
        }
    }

    fn delete(&mut self, key: &str, old: Option<usize>) {
        if let Some(old) = old {
            self.keys -= 1;
            self.bytes -= (key.len() + old) as i64;
        }
    }
}

fn commit_usage(
    t: &mut Tables<'_>,
    function: &str,
    d: Delta,
    limits: &KvLimits,
) -> Result<(), OpError> {
    let (keys, bytes) = t.usage.get(function)?.map(|v| v.value()).unwrap_or((0, 0));
    let keys = (keys as i64 + d.keys).max(0) as u64;
    let bytes = (bytes as i64 + d.bytes).max(0) as u64;
    if d.keys > 0 && keys > limits.keys {
        return Err(OpError::TooManyKeys {
            would: keys,
            limit: limits.keys,
        });
    }
    if d.bytes > 0 && bytes > limits.total_bytes {
        return Err(OpError::TooManyBytes {
            would: bytes,
            limit: limits.total_bytes,
        });
    }
    t.usage.insert(function, (keys, bytes))?;
    Ok(())
}

fn old_len(t: &Tables<'_>, k: &[u8]) -> Result<Option<usize>, OpError> {
    Ok(t.data.get(k)?.map(|v| v.value().len()))
}

/// The counter at `key` (decimal text; absent counts as 0) plus `delta`.
pub fn incremented(current: Option<&[u8]>, key: &str, delta: u64) -> Result<u64, OpError> {
    let n = match current {
        None => 0,
        Some(bytes) => std::str::from_utf8(bytes)
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            .ok_or_else(|| OpError::NotACounter(key.to_string()))?,
    };
    n.checked_add(delta)
        .ok_or_else(|| OpError::Overflow(key.to_string()))
}

fn increment(
    t: &mut Tables<'_>,
    ns: &Namespace,
    key: &str,
    delta: u64,
    limits: &KvLimits,
) -> Result<OpResult, OpError> {
    check_key(key, limits)?;
    let k = ns.key(key);
    let (next, old) = match t.data.get(k.as_slice())? {
        Some(v) => (
            incremented(Some(v.value()), key, delta)?,
            Some(v.value().len()),
        ),
        None => (incremented(None, key, delta)?, None),
    };
    let text = next.to_string();
    let mut d = Delta::default();
    d.set(key, old, text.len());
    commit_usage(t, &ns.function, d, limits)?;
    t.data.insert(k.as_slice(), text.as_bytes())?;
    Ok(OpResult::Incremented(next))
}

fn compare_and_swap(
    t: &mut Tables<'_>,
    ns: &Namespace,
    key: &str,
    expected: Option<&[u8]>,
    new: &[u8],
    limits: &KvLimits,
) -> Result<OpResult, OpError> {
    check_key(key, limits)?;
    check_value(new, limits)?;
    let k = ns.key(key);
    let current = t.data.get(k.as_slice())?.map(|v| v.value().to_vec());
    if current.as_deref() != expected {
        return Ok(OpResult::Swapped(false));
    }
    let mut d = Delta::default();
    d.set(key, current.map(|c| c.len()), new.len());
    commit_usage(t, &ns.function, d, limits)?;
    t.data.insert(k.as_slice(), new)?;
    Ok(OpResult::Swapped(true))
}

fn set_many(
    t: &mut Tables<'_>,
    ns: &Namespace,
    items: &[(String, Vec<u8>)],
    limits: &KvLimits,
) -> Result<OpResult, OpError> {
    let mut d = Delta::default();
    let mut seen = std::collections::HashMap::new();
    for (key, value) in items {
        check_key(key, limits)?;
        check_value(value, limits)?;
        // A key repeated in one batch counts once, at its last value.
        let old = match seen.get(key) {
            Some(len) => Some(*len),
            None => old_len(t, &ns.key(key))?,
        };
        d.set(key, old, value.len());
        seen.insert(key.clone(), value.len());
    }
    commit_usage(t, &ns.function, d, limits)?;
    for (key, value) in items {
        t.data.insert(ns.key(key).as_slice(), value.as_slice())?;
    }
    Ok(OpResult::Done)
}

/// Applies `op` under `limits`. Checks happen before writes, so on `Err` nothing changed.
pub fn apply(t: &mut Tables<'_>, op: &Op, limits: &KvLimits) -> Result<OpResult, OpError> {
    match op {
        Op::Set { ns, key, value } => {
            check_key(key, limits)?;
            check_value(value, limits)?;
            let k = ns.key(key);
            let mut d = Delta::default();
            d.set(key, old_len(t, &k)?, value.len());
            commit_usage(t, &ns.function, d, limits)?;
            t.data.insert(k.as_slice(), value.as_slice())?;
            Ok(OpResult::Done)
        }
        Op::Delete { ns, key } => {
            let k = ns.key(key);
            let mut d = Delta::default();
            d.delete(key, old_len(t, &k)?);
            commit_usage(t, &ns.function, d, limits)?;
            t.data.remove(k.as_slice())?;
            Ok(OpResult::Done)
        }
        Op::Increment { ns, key, delta } => increment(t, ns, key, *delta, limits),
        Op::CompareAndSwap {
            ns,
            key,
            expected,
            new,
        } => compare_and_swap(t, ns, key, expected.as_deref(), new, limits),
        Op::SetMany { ns, items } => set_many(t, ns, items, limits),
        Op::DeleteMany { ns, keys } => {
            let mut d = Delta::default();
            let mut gone = std::collections::HashSet::new();
            for key in keys {
                if gone.insert(key.clone()) {
                    d.delete(key, old_len(t, &ns.key(key))?);
                }
            }
            commit_usage(t, &ns.function, d, limits)?;
            for key in keys {
                t.data.remove(ns.key(key).as_slice())?;
            }
            Ok(OpResult::Done)
        }
        Op::Purge { function } => {
            let prefix = function_prefix(function);
            let doomed: Vec<Vec<u8>> = match prefix_end(&prefix) {
                Some(end) => t
                    .data
                    .range(prefix.as_slice()..end.as_slice())?
                    .map(|e| e.map(|(k, _)| k.value().to_vec()))
                    .collect::<Result<_, _>>()?,
                None => Vec::new(),
            };
            for k in &doomed {
                t.data.remove(k.as_slice())?;
            }
            t.usage.remove(function.as_str())?;
            Ok(OpResult::Purged(doomed.len() as u64))
        }
    }
}
