//! The credential a cluster's scheduler presents to its nodes (`--cluster-token-file`, the
//! same file on each): a node started with it answers function traffic and its admin API
//! only to requests that carry it, so nothing on the network reaches a node around the
//! scheduler. `/healthz` stays open.
//!
//! The token travels in the `Skiff-Cluster-Token` header, compared in constant time; the
//! node removes it before a function sees the request. On the admin API a bearer token
//! equal to it is accepted too (Prometheus scrapes with `authorization.credentials_file`).

use crate::http::{Response, error};
use http::{HeaderMap, HeaderValue, StatusCode};
use std::path::Path;
use subtle::ConstantTimeEq;

/// The header the token travels in.
pub const HEADER: &str = "skiff-cluster-token";
/// The shortest token accepted: anything shorter is guessable.
pub const MIN_LEN: usize = 32;

/// A cluster token file that cannot be used.
#[derive(Debug, Clone, thiserror::Error)]
#[error("cluster token file `{path}`: {detail}")]
pub struct TokenError {
    /// The file.
    pub path: String,
    /// What is wrong, and what to do.
    pub detail: String,
}

/// The scheduler's credential towards its nodes.
#[derive(Clone)]
pub struct ClusterToken {
    value: HeaderValue,
}

impl std::fmt::Debug for ClusterToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterToken(..)")
    }
}

impl ClusterToken {
    /// Reads the token from `path`: its first line, at least [`MIN_LEN`] visible ASCII
    /// characters.
    pub fn load(path: &Path) -> Result<ClusterToken, TokenError> {
        let fail = |detail: String| TokenError {
            path: path.display().to_string(),
            detail,
        };
        let text = std::fs::read_to_string(path).map_err(|e| {
            fail(format!(
                "{e}; make one with `skiff keygen --cluster-token FILE` and give the same file to the scheduler and every node"
            ))
        })?;
        let token = text.lines().next().unwrap_or("").trim();
        if token.len() < MIN_LEN || !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(fail(format!(
                "the token must be at least {MIN_LEN} visible ASCII characters on the first line; make one with `skiff keygen --cluster-token FILE`"
            )));
        }
        let value = HeaderValue::from_str(token).map_err(|e| fail(e.to_string()))?;
        Ok(ClusterToken { value })
    }

    /// A new random token (64 hex digits).
    pub fn generate() -> Result<String, TokenError> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(|e| TokenError {
            path: String::new(),
            detail: format!("the system gave no randomness: {e}"),
        })?;
        Ok(hex::encode(bytes))
    }

    /// The header value to send.
    pub fn header_value(&self) -> HeaderValue {
        self.value.clone()
    }

    /// Sets the token header on `headers`, replacing whatever a client sent.
    pub fn stamp(&self, headers: &mut HeaderMap) {
        headers.insert(HEADER, self.value.clone());
    }

    fn matches(&self, presented: &[u8]) -> bool {
        presented.ct_eq(self.value.as_bytes()).into()
    }

    /// Whether `headers` carry the token in its header.
    pub fn in_header(&self, headers: &HeaderMap) -> bool {
        headers
            .get(HEADER)
            .is_some_and(|v| self.matches(v.as_bytes()))
    }

    /// Whether `headers` carry the token in its header or as the bearer token.
    pub fn in_header_or_bearer(&self, headers: &HeaderMap) -> bool {
        self.in_header(headers)
            || headers
                .get(http::header::AUTHORIZATION)
                .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
                .is_some_and(|t| self.matches(t))
    }
}

/// What a node answers (401) to a request that came around the scheduler.
pub fn refusal(node: &str) -> String {
    format!(
        "node `{node}` answers only its cluster's scheduler: send the request through the scheduler (its listener, or `--server http://SCHEDULER:7071`)"
    )
}

/// The admin API's 401 for a request that came around the scheduler.
pub fn refused(node: &str) -> Response {
    error(StatusCode::UNAUTHORIZED, refusal(node))
}

/// Whether `path` is the health check every listener leaves open.
pub fn is_health(path: &str) -> bool {
    path.trim_matches('/') == "healthz"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_token_admits_and_short_tokens_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "short\n").unwrap();
        let err = ClusterToken::load(&path).unwrap_err().to_string();
        assert!(err.contains("at least 32"), "{err}");
        let secret = ClusterToken::generate().unwrap();
        std::fs::write(&path, format!("{secret}\n")).unwrap();
        let token = ClusterToken::load(&path).unwrap();
        let mut h = HeaderMap::new();
        assert!(!token.in_header_or_bearer(&h));
        h.insert(HEADER, HeaderValue::from_static("wrong"));
        assert!(!token.in_header(&h));
        token.stamp(&mut h);
        assert!(token.in_header(&h));
        let mut bearer = HeaderMap::new();
        bearer.insert(
            http::header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {secret}")).unwrap(),
        );
        assert!(!token.in_header(&bearer));
        assert!(token.in_header_or_bearer(&bearer));
        assert!(!format!("{token:?}").contains(&secret));
    }
}
