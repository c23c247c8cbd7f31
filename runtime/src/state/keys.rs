//! How (function, bucket, key) map onto redb keys so that no name a guest chooses can
//! reach another function's data: the function part is length-prefixed and set by the
//! host, the bucket part is length-prefixed too, and the key follows as raw bytes.

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
}
