//! Quantities as skiff.toml and the CLI write them: sizes ("64MiB") and durations ("5s"),
//! parsed into validated newtypes.

use serde::{Deserialize, Deserializer};
use std::fmt;
use std::time::Duration;

/// A byte size written as "64MiB", "512KiB", "10MB" or a plain number of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Size(pub u64);

impl Size {
    /// Parses a human-readable size.
    pub fn parse(s: &str) -> Result<Size, String> {
        s.trim()
            .parse::<bytesize::ByteSize>()
            .map(|b| Size(b.as_u64()))
            .map_err(|e| format!("invalid size `{s}`: {e} (write it like \"64MiB\" or \"10MB\")"))
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", bytesize::ByteSize(self.0).display().iec())
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) => Ok(Size(n)),
            Raw::Text(s) => Size::parse(&s).map_err(serde::de::Error::custom),
        }
    }
}

/// A duration written as "5s", "250ms" or "1m".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timeout(pub Duration);

impl Timeout {
    /// Parses a human-readable duration.
    pub fn parse(s: &str) -> Result<Timeout, String> {
        humantime::parse_duration(s.trim())
            .map(Timeout)
            .map_err(|e| format!("invalid duration `{s}`: {e} (write it like \"5s\" or \"250ms\")"))
    }
}

impl fmt::Display for Timeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl<'de> Deserialize<'de> for Timeout {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Timeout::parse(&s).map_err(serde::de::Error::custom)
    }
}
