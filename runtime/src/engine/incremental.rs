//! Cranelift's incremental compilation cache, in memory: compiled functions keyed by
//! their IR, so that a new version of a function recompiles only the functions that
//! changed. A Python or JavaScript component is mostly its language runtime (libpython,
//! StarlingMonkey), which is identical from one version to the next: measured on an
//! 18 MB componentize-py component, a redeploy after an edit compiles in a fraction of
//! the first compile's time (see BENCHMARKS.md, "Redeploy").

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Mutex;
use wasmtime::CacheStore;

/// How many bytes of compiled functions are kept; past it the cache starts over (a
/// node's working set is the functions it hosts, recompiled only on redeploys).
pub const CAPACITY: usize = 512 << 20;

/// The store: a map under a lock, emptied when it would exceed [`CAPACITY`].
#[derive(Debug, Default)]
pub struct FunctionCache {
    inner: Mutex<Entries>,
}

#[derive(Debug, Default)]
struct Entries {
    map: HashMap<Vec<u8>, Vec<u8>>,
    bytes: usize,
}

impl CacheStore for FunctionCache {
    fn get(&self, key: &[u8]) -> Option<Cow<'_, [u8]>> {
        let entries = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        entries.map.get(key).map(|v| Cow::Owned(v.clone()))
    }

    fn insert(&self, key: &[u8], value: Vec<u8>) -> bool {
        let size = key.len() + value.len();
        if size > CAPACITY {
            return false;
        }
        let mut entries = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if entries.bytes + size > CAPACITY {
            entries.map.clear();
            entries.bytes = 0;
        }
        if let Some(old) = entries.map.insert(key.to_vec(), value) {
            entries.bytes -= key.len() + old.len();
        }
        entries.bytes += size;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_entries_and_starts_over_past_capacity() {
        let c = FunctionCache::default();
        assert!(c.insert(b"a", vec![1; 10]));
        assert_eq!(c.get(b"a").as_deref(), Some(&[1u8; 10][..]));
        assert!(c.insert(b"a", vec![2; 5]));
        assert_eq!(c.get(b"a").as_deref(), Some(&[2u8; 5][..]));
        assert!(c.insert(b"big", vec![0; CAPACITY - 4]));
        assert_eq!(c.get(b"a"), None, "past capacity the cache starts over");
        assert!(c.get(b"big").is_some());
        assert!(!c.insert(b"huge", vec![0; CAPACITY + 1]));
    }
}
