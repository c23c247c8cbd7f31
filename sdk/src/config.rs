//! Configuration and secrets, through the standard `wasi:config/store`.
//!
//! ```text
//! let greeting = skiff_sdk::config::get("greeting")?.unwrap_or("hello".into());
//! let token = skiff_sdk::config::get("api_token")?.ok_or("api_token is not set")?;
//! ```
//!
//! Values come from `[config]` in skiff.toml and from secrets an operator sets with
//! `skiff secret set NAME KEY`; a secret wins over a `[config]` value of the same key.

use crate::bindings::wasi::config::store;
use std::fmt;

/// A config source failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error(pub String);

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "config error: {}", self.0)
    }
}

impl std::error::Error for Error {}

impl From<store::Error> for Error {
    fn from(e: store::Error) -> Self {
        Error(match e {
            store::Error::Upstream(m) | store::Error::Io(m) => m,
        })
    }
}

/// The value of `key`, if set.
pub fn get(key: &str) -> Result<Option<String>, Error> {
    Ok(store::get(key)?)
}

/// Every key and value.
pub fn get_all() -> Result<Vec<(String, String)>, Error> {
    Ok(store::get_all()?)
}
