//! How a function's state is named: (function, bucket, key) as redb keys, so that no
//! name a guest chooses can reach another function's data (the function part is
//! length-prefixed and set by the host, the bucket part is length-prefixed too, and the
//! key follows as raw bytes); as NATS subjects of the replicated state log; and as the
//! admin API addresses it (`/v1/functions/{name}/kv/{key}?bucket=`). Pure functions of
//! their input, so the fuzz targets check them without linking the runtime.

use crate::manifest::FunctionName;

/// The bucket a guest gets when it names none.
pub const DEFAULT_BUCKET: &str = "default";

/// Longest bucket name, in bytes.
pub const MAX_BUCKET_BYTES: usize = 255;

/// A function's bucket: the unit a guest opens.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Namespace {
    /// The function (set by the host, never by the guest).
    pub function: String,
    /// The bucket the guest opened ("default" unless it named one).
    pub bucket: String,
}

impl Namespace {
    /// The namespace of `function`'s bucket `bucket`.
    pub fn new(function: &str, bucket: &str) -> Self {
        Namespace {
            function: function.to_string(),
            bucket: bucket.to_string(),
        }
    }

    /// The redb key prefix of every key in this bucket.
    pub fn prefix(&self) -> Vec<u8> {
        let mut p = function_prefix(&self.function);
        // Bucket names are at most MAX_BUCKET_BYTES, checked when opened.
        p.push(self.bucket.len().min(MAX_BUCKET_BYTES) as u8);
        p.extend_from_slice(self.bucket.as_bytes());
        p
    }

    /// The redb key of `key` in this bucket.
    pub fn key(&self, key: &str) -> Vec<u8> {
        let mut k = self.prefix();
        k.extend_from_slice(key.as_bytes());
        k
    }
}

/// The redb key prefix of everything `function` stores (function names are ≤ 63 bytes).
pub fn function_prefix(function: &str) -> Vec<u8> {
    let mut p = Vec::with_capacity(function.len() + 1);
    p.push(function.len() as u8);
    p.extend_from_slice(function.as_bytes());
    p
}

/// The smallest byte string greater than every string starting with `prefix`, if any.
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// The subject of `key` in `ns`.
pub fn subject(ns: &Namespace, key: &str) -> String {
    format!(
        "state.{}.b{}.k{}",
        ns.function,
        hex::encode(ns.bucket.as_bytes()),
        hex::encode(key.as_bytes())
    )
}

/// The namespace and key a subject names, if it is one of ours.
pub fn parse_subject(subject: &str) -> Option<(Namespace, String)> {
    let mut parts = subject.split('.');
    if parts.next()? != "state" {
        return None;
    }
    let function = parts.next()?;
    let bucket = String::from_utf8(hex::decode(parts.next()?.strip_prefix('b')?).ok()?).ok()?;
    let key = String::from_utf8(hex::decode(parts.next()?.strip_prefix('k')?).ok()?).ok()?;
    if parts.next().is_some() {
        return None;
    }
    Some((Namespace::new(function, &bucket), key))
}

/// What a key-value request addresses, read and checked from its path and query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvTarget {
    /// The function's bucket.
    pub ns: Namespace,
    /// The key (percent-decoded), when the path names one.
    pub key: Option<String>,
    /// Read the value as last written anywhere in the cluster.
    pub consistent: bool,
    /// Listing: only keys starting with this.
    pub prefix: String,
    /// Listing: where the previous page ended.
    pub cursor: u64,
}

/// Parses a `/v1/functions/{name}/kv[/{key}]?bucket=&prefix=&cursor=&consistent=`
/// request's parts, refusing an invalid name, an oversized bucket or a non-UTF-8 key.
pub fn parse_target(name: &str, key_path: Option<&str>, query: &str) -> Result<KvTarget, String> {
    FunctionName::new(name).map_err(|e| e.to_string())?;
    let mut bucket = DEFAULT_BUCKET.to_string();
    let (mut prefix, mut cursor, mut consistent) = (String::new(), 0, false);
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        match k.as_ref() {
            "bucket" if !v.is_empty() => bucket = v.into_owned(),
            "prefix" => prefix = v.into_owned(),
            "cursor" => cursor = v.parse().unwrap_or(0),
            "consistent" => consistent = v == "true",
            _ => {}
        }
    }
    if bucket.len() > MAX_BUCKET_BYTES {
        return Err(format!("bucket names are at most {MAX_BUCKET_BYTES} bytes"));
    }
    let key = match key_path.filter(|k| !k.is_empty()) {
        Some(raw) => Some(
            percent_encoding::percent_decode_str(raw)
                .decode_utf8()
                .map_err(|_| "keys must be UTF-8 text, percent-encoded in the path".to_string())?
                .into_owned(),
        ),
        None => None,
    };
    Ok(KvTarget {
        ns: Namespace::new(name, &bucket),
        key,
        consistent,
        prefix,
        cursor,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_bucket_or_key_of_one_function_lands_in_another() {
        // "a" + bucket "bx" must never equal "ab" + bucket "x", whatever bytes follow.
        let a = Namespace::new("a", "bx").key("k");
        let b = Namespace::new("ab", "x").key("k");
        assert_ne!(a, b);
        assert!(!a.starts_with(&function_prefix("ab")));
        assert!(!b.starts_with(&function_prefix("a")));
        // A bucket name carrying what looks like another function's prefix stays inside.
        let sneaky = Namespace::new("a", "\u{1}b\u{7}default").key("k");
        assert!(sneaky.starts_with(&function_prefix("a")));
        assert!(!sneaky.starts_with(&Namespace::new("b", "default").prefix()));
    }

    #[test]
    fn prefix_end_bounds_the_range() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff\xff"), None);
    }

    #[test]
    fn any_key_is_a_safe_subject_and_round_trips() {
        for (bucket, key) in [
            ("default", "x"),
            ("", "a.b*c>d e\tf"),
            ("b.*>", "ключ/🔑"),
            ("default", &"k".repeat(1024)),
        ] {
            let ns = Namespace::new("fn-1", bucket);
            let s = subject(&ns, key);
            assert!(
                s.split('.')
                    .all(|t| !t.is_empty()
                        && t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')),
                "{s}"
            );
            assert_eq!(parse_subject(&s), Some((ns, key.to_string())));
        }
        assert_eq!(parse_subject("events.x"), None);
        assert_eq!(parse_subject("state.f.bzz.k00"), None);
    }
}
