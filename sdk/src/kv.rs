//! Durable key-value state, private to the function.
//!
//! ```text
//! use skiff_sdk::kv::Store;
//!
//! let store = Store::open_default()?;
//! store.set("greeting", "hi")?;
//! let visits = store.increment("visits", 1)?;
//! let swapped = store.compare_and_swap("owner", None, b"me")?;
//! for key in store.keys_with_prefix("user:") { let key = key?; }
//! store.set_json("config", &serde_json::json!({"on": true}))?;
//! ```
//!
//! Every write is on disk before the call returns. Counters (`increment`) are stored as
//! decimal text. Each function sees only its own keys; buckets (`Store::open("name")`)
//! divide them further.

use crate::bindings::skiff::function::kv as ext;
use crate::bindings::wasi::keyvalue::{atomics, batch, store};
use std::fmt;

/// A failed key-value call: a limit, a counter that is not a number, a storage failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error(pub String);

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "key-value error: {}", self.0)
    }
}

impl std::error::Error for Error {}

impl From<store::Error> for Error {
    fn from(e: store::Error) -> Self {
        Error(match e {
            store::Error::NoSuchStore => "no such bucket".to_string(),
            store::Error::AccessDenied => "access denied".to_string(),
            store::Error::Other(m) => m,
        })
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Error(format!("JSON: {e}"))
    }
}

/// One bucket of the function's state.
pub struct Store {
    bucket: store::Bucket,
}

impl Store {
    /// The function's default bucket.
    pub fn open_default() -> Result<Store, Error> {
        Store::open("default")
    }

    /// A named bucket (at most 255 bytes).
    pub fn open(name: &str) -> Result<Store, Error> {
        Ok(Store {
            bucket: store::open(name)?,
        })
    }

    /// The value of `key`, if set.
    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>, Error> {
        Ok(self.bucket.get(key)?)
    }

    /// Sets `key` to `value`.
    pub fn set(&self, key: &str, value: impl AsRef<[u8]>) -> Result<(), Error> {
        Ok(self.bucket.set(key, value.as_ref())?)
    }

    /// Deletes `key` (absent is fine).
    pub fn delete(&self, key: &str) -> Result<(), Error> {
        Ok(self.bucket.delete(key)?)
    }

    /// Whether `key` is set.
    pub fn exists(&self, key: &str) -> Result<bool, Error> {
        Ok(self.bucket.exists(key)?)
    }

    /// Adds `delta` to the counter at `key` (absent counts as 0); returns the new value.
    pub fn increment(&self, key: &str, delta: u64) -> Result<u64, Error> {
        Ok(atomics::increment(&self.bucket, key, delta)?)
    }

    /// The value at `key` as last written anywhere in the cluster, even by another node a
    /// moment ago (one round trip to the cluster's log). `get` reads this node's copy,
    /// which trails other nodes' writes by milliseconds; on one node they are the same.
    pub fn get_consistent(&self, key: &str) -> Result<Option<Vec<u8>>, Error> {
        Ok(ext::get_consistent(&self.bucket, key)?)
    }

    /// Sets `key` to `new` if its value is `expected` (`None`: absent); whether it did.
    pub fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        new: impl AsRef<[u8]>,
    ) -> Result<bool, Error> {
        Ok(ext::compare_and_swap(
            &self.bucket,
            key,
            expected,
            new.as_ref(),
        )?)
    }

    /// Values of several keys at once (`None` where unset).
    pub fn get_many(&self, keys: &[&str]) -> Result<Vec<Option<Vec<u8>>>, Error> {
        let owned: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
        let found = batch::get_many(&self.bucket, &owned)?;
        Ok(found.into_iter().map(|kv| kv.map(|(_, v)| v)).collect())
    }

    /// Sets several keys in one durable write.
    pub fn set_many(&self, items: &[(&str, &[u8])]) -> Result<(), Error> {
        let owned: Vec<(String, Vec<u8>)> = items
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_vec()))
            .collect();
        Ok(batch::set_many(&self.bucket, &owned)?)
    }

    /// Deletes several keys in one durable write.
    pub fn delete_many(&self, keys: &[&str]) -> Result<(), Error> {
        let owned: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
        Ok(batch::delete_many(&self.bucket, &owned)?)
    }

    /// Every key, in byte order, fetched a page at a time.
    pub fn keys(&self) -> Keys<'_> {
        self.keys_with_prefix("")
    }

    /// Keys starting with `prefix`, in byte order, fetched a page at a time.
    pub fn keys_with_prefix(&self, prefix: &str) -> Keys<'_> {
        Keys {
            store: self,
            prefix: prefix.to_string(),
            page: Vec::new().into_iter(),
            cursor: Some(0),
        }
    }

    /// The JSON value at `key`, if set.
    pub fn get_json<T: serde::de::DeserializeOwned>(&self, key: &str) -> Result<Option<T>, Error> {
        match self.get(key)? {
            Some(bytes) => Ok(Some(serde_json::from_slice(&bytes)?)),
            None => Ok(None),
        }
    }

    /// Stores `value` as JSON at `key`.
    pub fn set_json<T: serde::Serialize>(&self, key: &str, value: &T) -> Result<(), Error> {
        self.set(key, serde_json::to_vec(value)?)
    }
}

/// Iterator over keys; see [`Store::keys_with_prefix`].
pub struct Keys<'a> {
    store: &'a Store,
    prefix: String,
    page: std::vec::IntoIter<String>,
    cursor: Option<u64>,
}

impl Iterator for Keys<'_> {
    type Item = Result<String, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(k) = self.page.next() {
                return Some(Ok(k));
            }
            let cursor = self.cursor.take()?;
            let cursor = (cursor > 0).then_some(cursor);
            match ext::list_prefix(&self.store.bucket, &self.prefix, cursor) {
                Ok(resp) => {
                    self.page = resp.keys.into_iter();
                    self.cursor = resp.cursor;
                    if self.page.len() == 0 {
                        return None;
                    }
                }
                Err(e) => return Some(Err(e.into())),
            }
        }
    }
}
