//! The deploy check that needs no engine, run the same way by a node (`skiff up`) and by
//! the scheduler before either records a version: the name in the request is valid, the
//! manifest parses and carries that name, its route parses, and the route is free among
//! the other deployed functions.
//!
//! What needs a node (limits against its maxima, the component's imports and exports)
//! is checked by the node on top of this.

use crate::manifest::{FunctionName, Manifest, ManifestError, NameError};
use crate::record::FunctionRecord;
use crate::routes::{Route, RouteError, RouteTable};

/// Why a deploy was refused before any code was looked at.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// The manifest is malformed.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// The name in the URL is not a valid function name.
    #[error(transparent)]
    Name(#[from] NameError),
    /// The URL and the manifest disagree on the name.
    #[error(
        "the manifest names function `{manifest}` but it was deployed as `{path}`; deploy it under its own name"
    )]
    NameMismatch {
        /// The name in the request path.
        path: String,
        /// The name in the manifest.
        manifest: String,
    },
    /// The route is malformed or taken.
    #[error(transparent)]
    Route(#[from] RouteError),
}

impl CheckError {
    /// Whether the failure is a conflict with what is already deployed.
    pub fn is_conflict(&self) -> bool {
        matches!(self, CheckError::Route(RouteError::Taken { .. }))
    }
}

/// A manifest that passed [`check_manifest`].
#[derive(Debug, Clone)]
pub struct Checked {
    /// The parsed manifest.
    pub manifest: Manifest,
    /// The route it asks for (or the default `/<name>/...`).
    pub route: Route,
}

impl Checked {
    /// The function's name.
    pub fn name(&self) -> &FunctionName {
        &self.manifest.name
    }

    /// Whether the manifest claims HTTP: it names a route, or has no event or schedule
    /// triggers. (A node also requires the component to export an HTTP handler then.)
    pub fn claims_http(&self) -> bool {
        (self.manifest.events.is_empty() && self.manifest.schedule.is_empty())
            || self.manifest.http.route.is_some()
    }
}

/// Checks a deploy of `manifest_text` under the name `path_name`.
pub fn check_manifest(path_name: &str, manifest_text: &str) -> Result<Checked, CheckError> {
    let expected = FunctionName::new(path_name)?;
    let manifest = Manifest::parse(manifest_text, "skiff.toml")?;
    if manifest.name != expected {
        return Err(CheckError::NameMismatch {
            path: expected.to_string(),
            manifest: manifest.name.to_string(),
        });
    }
    let route = manifest.route()?;
    Ok(Checked { manifest, route })
}

/// The route a stored record serves, if its manifest still parses (records were checked
/// when they were deployed; one that no longer parses serves no route).
pub fn record_route(record: &FunctionRecord) -> Option<Route> {
    Manifest::parse(&record.manifest, "skiff.toml")
        .ok()
        .and_then(|m| m.route().ok())
}

/// The routes of `records` (but `except`), in a table; a record whose route conflicts
/// with one already in it is logged and left out, never silently dropped.
pub fn route_table<'a>(
    records: impl IntoIterator<Item = &'a FunctionRecord>,
    except: Option<&str>,
) -> RouteTable<String> {
    let mut table = RouteTable::new();
    for r in records {
        if Some(r.name.as_str()) == except {
            continue;
        }
        let Some(route) = record_route(r) else {
            continue;
        };
        if let Err(e) = table.insert(&route, r.name.clone()) {
            tracing::warn!(function = %r.name, error = %e, "stored route conflicts with another function's; it is not routed");
        }
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &str, route: &str) -> FunctionRecord {
        FunctionRecord {
            name: name.into(),
            version: 1,
            manifest: format!(
                "name = \"{name}\"\ncomponent = \"x.wasm\"\n[http]\nroute = \"{route}\"\n"
            ),
            artifact: String::new(),
            deployed_at_ms: 0,
            signature: None,
        }
    }

    #[test]
    fn name_must_match_the_manifest() {
        let e = check_manifest("x", "name = \"y\"\ncomponent = \"a.wasm\"\n").unwrap_err();
        assert!(e.to_string().contains("deployed as `x`"), "{e}");
        assert!(matches!(
            check_manifest("Bad Name", "name = \"y\"\ncomponent = \"a.wasm\"\n"),
            Err(CheckError::Name(_))
        ));
    }

    #[test]
    fn a_good_manifest_passes_with_its_route() {
        let c = check_manifest("hello", "name = \"hello\"\ncomponent = \"a.wasm\"\n").unwrap();
        assert_eq!(c.route.to_string(), "/hello/...");
        assert!(c.claims_http());
    }

    #[test]
    fn route_table_leaves_out_the_excepted_and_the_conflicting() {
        let records = [
            record("a", "/x/..."),
            record("b", "/x/..."),
            record("c", "/c"),
        ];
        let t = route_table(&records, Some("c"));
        let taken = Route::parse("/x/...").unwrap();
        assert!(t.check(&taken, &"z".to_string()).is_err());
        assert!(
            t.check(&Route::parse("/c").unwrap(), &"z".to_string())
                .is_ok()
        );
    }
}
