//! Route patterns and the table that maps a request path to the function that serves it.
//!
//! A route is either exact (`/status`) or a prefix wildcard written with a trailing `/...`
//! (`/hello/...`), which matches `/hello`, `/hello/` and everything below `/hello/`.
//! Lookup picks the exact route first, then the longest matching prefix, so a more
//! specific function always wins over a broader one.

use std::collections::BTreeMap;
use std::fmt;

/// Why a route pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// The pattern does not start with `/`.
    #[error("route `{0}` must start with `/` (for example \"/hello/...\")")]
    NotAbsolute(String),
    /// `...` stands somewhere other than the final segment.
    #[error("route `{0}`: `...` may only end a route, as in \"/hello/...\"")]
    MisplacedWildcard(String),
    /// The pattern contains characters that never reach a path (query, fragment, spaces).
    #[error("route `{0}` contains `{1}`, which cannot appear in a request path")]
    BadCharacter(String, char),
    /// Another function already serves this exact pattern.
    #[error(
        "route `{route}` is already served by function `{owner}`; choose another route or remove `{owner}` first"
    )]
    Taken {
        /// The contested pattern.
        route: String,
        /// The function that holds it.
        owner: String,
    },
}

/// A parsed route pattern.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Route {
    /// Matches exactly this path.
    Exact(String),
    /// Matches this prefix (without trailing slash) and everything below it.
    Prefix(String),
}

impl Route {
    /// Parses a pattern such as `/hello/...`, `/...` or `/exact/path`.
    pub fn parse(pattern: &str) -> Result<Route, RouteError> {
        if !pattern.starts_with('/') {
            return Err(RouteError::NotAbsolute(pattern.to_string()));
        }
        if let Some(c) = pattern
            .chars()
            .find(|c| matches!(c, '?' | '#' | ' ' | '\t' | '\r' | '\n'))
        {
            return Err(RouteError::BadCharacter(pattern.to_string(), c));
        }
        let (base, wildcard) = match pattern.strip_suffix("/...") {
            Some(base) => (base, true),
            None if pattern == "/..." => ("", true),
            None => (pattern, false),
        };
        if base.contains("...") {
            return Err(RouteError::MisplacedWildcard(pattern.to_string()));
        }
        if wildcard {
            Ok(Route::Prefix(base.to_string()))
        } else {
            Ok(Route::Exact(pattern.to_string()))
        }
    }

    /// The route for a function that sets none: `/<name>/...`.
    pub fn default_for(name: &str) -> Route {
        Route::Prefix(format!("/{name}"))
    }

    /// Whether `path` (without query) falls under this route.
    pub fn matches(&self, path: &str) -> bool {
        match self {
            Route::Exact(p) => p == path,
            Route::Prefix(base) => match path.strip_prefix(base.as_str()) {
                Some(rest) => rest.is_empty() || rest.starts_with('/'),
                None => false,
            },
        }
    }

    /// The path a client would call to reach the root of this route.
    pub fn base_path(&self) -> String {
        match self {
            Route::Exact(p) => p.clone(),
            Route::Prefix(base) => format!("{base}/"),
        }
    }
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Route::Exact(p) => f.write_str(p),
            Route::Prefix(base) => write!(f, "{base}/..."),
        }
    }
}

/// Maps routes to the value (usually a function name) that owns them.
#[derive(Debug, Clone)]
pub struct RouteTable<T> {
    exact: BTreeMap<String, T>,
    /// Prefixes keyed by their base; lookup walks the path's own prefixes from longest.
    prefixes: BTreeMap<String, T>,
}

impl<T> Default for RouteTable<T> {
    fn default() -> Self {
        RouteTable {
            exact: BTreeMap::new(),
            prefixes: BTreeMap::new(),
        }
    }
}

impl<T: Clone + PartialEq + fmt::Display> RouteTable<T> {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `route` for `owner`. Re-adding a route for the same owner is allowed (redeploy).
    pub fn insert(&mut self, route: &Route, owner: T) -> Result<(), RouteError> {
        let (map, key) = match route {
            Route::Exact(p) => (&mut self.exact, p),
            Route::Prefix(b) => (&mut self.prefixes, b),
        };
        if let Some(existing) = map.get(key)
            && *existing != owner
        {
            return Err(RouteError::Taken {
                route: route.to_string(),
                owner: existing.to_string(),
            });
        }
        map.insert(key.clone(), owner);
        Ok(())
    }

    /// Checks whether `owner` could take `route` without inserting it.
    pub fn check(&self, route: &Route, owner: &T) -> Result<(), RouteError> {
        let existing = match route {
            Route::Exact(p) => self.exact.get(p),
            Route::Prefix(b) => self.prefixes.get(b),
        };
        match existing {
            Some(e) if e != owner => Err(RouteError::Taken {
                route: route.to_string(),
                owner: e.to_string(),
            }),
            _ => Ok(()),
        }
    }

    /// Removes every route owned by `owner`.
    pub fn remove_owner(&mut self, owner: &T) {
        self.exact.retain(|_, v| v != owner);
        self.prefixes.retain(|_, v| v != owner);
    }

    /// The owner of the most specific route that matches `path`.
    pub fn lookup(&self, path: &str) -> Option<&T> {
        if let Some(v) = self.exact.get(path) {
            return Some(v);
        }
        // Walk `path`'s own prefixes at segment boundaries, longest first.
        let mut candidate = path.trim_end_matches('/');
        loop {
            if let Some(v) = self.prefixes.get(candidate) {
                return Some(v);
            }
            if candidate.is_empty() {
                return None;
            }
            candidate = match candidate.rfind('/') {
                Some(i) => &candidate[..i],
                None => return None,
            };
        }
    }

    /// Every route with its owner, exact routes first.
    pub fn iter(&self) -> impl Iterator<Item = (Route, &T)> {
        self.exact
            .iter()
            .map(|(p, v)| (Route::Exact(p.clone()), v))
            .chain(
                self.prefixes
                    .iter()
                    .map(|(b, v)| (Route::Prefix(b.clone()), v)),
            )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(routes: &[(&str, &str)]) -> RouteTable<String> {
        let mut t = RouteTable::new();
        for (r, owner) in routes {
            t.insert(&Route::parse(r).expect("valid route"), owner.to_string())
                .expect("insert");
        }
        t
    }

    #[test]
    fn parses_patterns() {
        assert_eq!(
            Route::parse("/hello/...").unwrap(),
            Route::Prefix("/hello".into())
        );
        assert_eq!(Route::parse("/...").unwrap(), Route::Prefix("".into()));
        assert_eq!(Route::parse("/x").unwrap(), Route::Exact("/x".into()));
        assert!(matches!(
            Route::parse("hello"),
            Err(RouteError::NotAbsolute(_))
        ));
        assert!(matches!(
            Route::parse("/a/.../b"),
            Err(RouteError::MisplacedWildcard(_))
        ));
        assert!(matches!(
            Route::parse("/a?b"),
            Err(RouteError::BadCharacter(_, '?'))
        ));
    }

    #[test]
    fn display_round_trips() {
        for p in ["/hello/...", "/...", "/a/b", "/"] {
            assert_eq!(Route::parse(p).unwrap().to_string(), p);
        }
    }

    #[test]
    fn prefix_matches_only_at_segment_boundaries() {
        let r = Route::parse("/hello/...").unwrap();
        assert!(r.matches("/hello"));
        assert!(r.matches("/hello/"));
        assert!(r.matches("/hello/a/b"));
        assert!(!r.matches("/helloworld"));
        assert!(!r.matches("/hell"));
    }

    #[test]
    fn lookup_prefers_exact_then_longest_prefix() {
        let t = table(&[
            ("/...", "root"),
            ("/api/...", "api"),
            ("/api/users/...", "users"),
            ("/api/health", "health"),
        ]);
        assert_eq!(t.lookup("/api/health").map(String::as_str), Some("health"));
        assert_eq!(t.lookup("/api/health/x").map(String::as_str), Some("api"));
        assert_eq!(t.lookup("/api/users/7").map(String::as_str), Some("users"));
        assert_eq!(t.lookup("/api/users").map(String::as_str), Some("users"));
        assert_eq!(t.lookup("/api/usersx").map(String::as_str), Some("api"));
        assert_eq!(t.lookup("/other").map(String::as_str), Some("root"));
        assert_eq!(t.lookup("/").map(String::as_str), Some("root"));
    }

    #[test]
    fn lookup_misses_without_catch_all() {
        let t = table(&[("/hello/...", "hello"), ("/x", "x")]);
        assert_eq!(t.lookup("/nope"), None);
        assert_eq!(t.lookup("/"), None);
        assert_eq!(t.lookup("/x/"), None);
        assert_eq!(t.lookup("/hello//a").map(String::as_str), Some("hello"));
    }

    #[test]
    fn conflicting_owner_is_refused_and_same_owner_allowed() {
        let mut t = table(&[("/hello/...", "hello")]);
        let r = Route::parse("/hello/...").unwrap();
        assert!(t.insert(&r, "hello".to_string()).is_ok());
        let err = t.insert(&r, "other".to_string()).unwrap_err();
        assert_eq!(
            err,
            RouteError::Taken {
                route: "/hello/...".into(),
                owner: "hello".into()
            }
        );
        assert!(t.check(&r, &"other".to_string()).is_err());
        t.remove_owner(&"hello".to_string());
        assert!(t.insert(&r, "other".to_string()).is_ok());
        assert_eq!(t.lookup("/hello/x").map(String::as_str), Some("other"));
    }
}
