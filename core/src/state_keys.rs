//! How a function's state is named: (function, bucket, key) as redb keys, so that no
//! name a guest chooses can reach another function's data (the function part is
//! length-prefixed and set by the host, the bucket part is length-prefixed too, and the
//! key follows as raw bytes); as NATS subjects of the replicated state log, split into
//! shards by function; and as the
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

/// How many streams the cluster's replicated state is split across (`--state-shards`,
/// fixed when the cluster is created). A function's keys all live in one shard, chosen by
/// a stable hash of its name, so one function's writes stay in order in one stream while
/// different functions' writes spread over several stream leaders.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateShards(u32);

/// The number of shards a new cluster gets.
pub const DEFAULT_STATE_SHARDS: u32 = 3;
/// The most shards a cluster may have (each is a replicated stream on every NATS server).
pub const MAX_STATE_SHARDS: u32 = 64;

impl StateShards {
    /// `n` shards, if 1 ≤ n ≤ [`MAX_STATE_SHARDS`].
    pub fn new(n: u32) -> Result<StateShards, String> {
        if (1..=MAX_STATE_SHARDS).contains(&n) {
            Ok(StateShards(n))
        } else {
            Err(format!(
                "--state-shards must be between 1 and {MAX_STATE_SHARDS}, not {n}"
            ))
        }
    }

    /// How many there are.
    pub fn count(self) -> u32 {
        self.0
    }

    /// The shard that holds `function`'s keys: the same on every process and version
    /// (the first 8 bytes of sha256(name), modulo the count).
    pub fn of(self, function: &str) -> u32 {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(function.as_bytes());
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        (u64::from_be_bytes(first) % u64::from(self.0)) as u32
    }

    /// The subject of `key` in `ns`, in its function's shard.
    pub fn subject(self, ns: &Namespace, key: &str) -> String {
        subject(self.of(&ns.function), ns, key)
    }

    /// The subjects of every key of `function` (a wildcard).
    pub fn function_subjects(self, function: &str) -> String {
        format!("state.{}.{function}.>", self.of(function))
    }
}

/// The stream that holds shard `shard`.
pub fn stream_name(shard: u32) -> String {
    format!("SKIFF_STATE_{shard}")
}

/// The subjects of shard `shard`'s stream.
pub fn shard_subjects(shard: u32) -> String {
    format!("state.{shard}.>")
}

/// The subject of `key` in `ns`, in shard `shard`.
pub fn subject(shard: u32, ns: &Namespace, key: &str) -> String {
    format!(
        "state.{shard}.{}.b{}.k{}",
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
    parts.next()?.parse::<u32>().ok()?;
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
            let s = subject(2, &ns, key);
            assert!(
                s.split('.')
                    .all(|t| !t.is_empty()
                        && t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')),
                "{s}"
            );
            assert_eq!(parse_subject(&s), Some((ns, key.to_string())));
        }
        assert_eq!(parse_subject("events.x"), None);
        assert_eq!(parse_subject("state.0.f.bzz.k00"), None);
        assert_eq!(parse_subject("state.f.b00.k00"), None);
    }

    #[test]
    fn a_function_has_one_stable_shard_and_functions_spread() {
        let k = StateShards::new(3).unwrap();
        // Fixed forever: a change here would strand every cluster's state.
        assert_eq!(k.of("counter"), StateShards::new(3).unwrap().of("counter"));
        let mut seen = [0u32; 3];
        for i in 0..300 {
            seen[k.of(&format!("fn-{i}")) as usize] += 1;
        }
        assert!(seen.iter().all(|&n| n > 70), "{seen:?}");
        let ns = Namespace::new("counter", "default");
        let s = k.subject(&ns, "n");
        assert!(s.starts_with(&format!("state.{}.counter.", k.of("counter"))));
        assert_eq!(StateShards::new(1).unwrap().of("anything"), 0);
        assert!(StateShards::new(0).is_err());
        assert!(StateShards::new(MAX_STATE_SHARDS + 1).is_err());
    }
}
