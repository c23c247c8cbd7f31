//! What a component imports and exports, read from its bytes without compiling it.
//!
//! A component's top-level import and export names say which world it implements and
//! whether it needs the component model's async ABI (WASI 0.3), so the node picks the
//! engine to compile it for ([`crate::engine::Flavor`]) and refuses a component that
//! exports no handler at all before spending seconds in Cranelift on it. Whether the
//! types match is still wasmtime's call, at link time.

use skiff_core::instances::HttpWorld;
use wasmparser::{KnownCustom, Parser, Payload};

/// The 0.2 HTTP export, without its patch version.
pub const HTTP_02: &str = "wasi:http/incoming-handler@0.2";
/// The 0.3 HTTP export, without its patch version or pre-release tag.
pub const HTTP_03: &str = "wasi:http/handler@0.3";
/// Skiff's event-handler export.
pub const EVENT_HANDLER: &str = "skiff:function/event-handler";

/// A component's top-level import and export names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ComponentFacts {
    /// Names it imports (`wasi:cli/environment@0.2.6`, ...).
    pub imports: Vec<String>,
    /// Names it exports.
    pub exports: Vec<String>,
    /// The `language` and `processed-by` names of its `producers` sections (its own and
    /// its modules'), e.g. `Rust`, `componentize-py`.
    pub producers: Vec<String>,
}

/// The toolchain that built a component, as its `producers` sections tell: for error
/// messages that say what to do in the user's own language.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Toolchain {
    /// Rust (skiff-sdk, wstd, spin-sdk, ...).
    Rust,
    /// componentize-py.
    Python,
    /// componentize-js.
    JavaScript,
    /// Anything else, or no `producers` section.
    #[default]
    Unknown,
}

impl Toolchain {
    /// How to export an HTTP handler with this toolchain.
    pub fn http_hint(self) -> &'static str {
        match self {
            Toolchain::Rust => {
                "with skiff-sdk, use `skiff_sdk::http_handler!` (0.2) or `skiff_sdk::http_service!` (0.3); with spin-sdk or wstd, their HTTP handler macro"
            }
            Toolchain::Python => {
                "with componentize-py, build with `-w wasi:http/proxy` and define an `IncomingHandler` class"
            }
            Toolchain::JavaScript => {
                "with componentize-js, build for the `wasi:http/proxy` world and export `incomingHandler`"
            }
            Toolchain::Unknown => {
                "build it for the `wasi:http/proxy` (0.2) or `wasi:http/service` (0.3) world"
            }
        }
    }

    /// How to export Skiff's event handler with this toolchain.
    pub fn events_hint(self) -> &'static str {
        match self {
            Toolchain::Rust => "with skiff-sdk, use `skiff_sdk::event_handler!`",
            _ => {
                "build it for a world that exports `skiff:function/event-handler` (Skiff's WIT is in the repository's sdk/wit)"
            }
        }
    }
}

/// Why a component's names could not be read.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ScanError(String);

impl ComponentFacts {
    /// Reads the names from a component's bytes (the header already checked).
    pub fn scan(wasm: &[u8]) -> Result<ComponentFacts, ScanError> {
        let mut facts = ComponentFacts::default();
        // Nested modules and components have sections of their own; only the
        // outermost component's imports and exports are its interface.
        let mut depth = 0usize;
        for payload in Parser::new(0).parse_all(wasm) {
            match payload.map_err(|e| ScanError(e.to_string()))? {
                Payload::ModuleSection { .. } | Payload::ComponentSection { .. } => depth += 1,
                Payload::End(_) => depth = depth.saturating_sub(1),
                Payload::ComponentImportSection(reader) if depth == 0 => {
                    for import in reader {
                        let import = import.map_err(|e| ScanError(e.to_string()))?;
                        facts.imports.push(import.name.name.to_string());
                    }
                }
                Payload::ComponentExportSection(reader) if depth == 0 => {
                    for export in reader {
                        let export = export.map_err(|e| ScanError(e.to_string()))?;
                        facts.exports.push(export.name.name.to_string());
                    }
                }
                Payload::CustomSection(custom) => {
                    // A malformed producers section says nothing; it is not an error.
                    if let KnownCustom::Producers(fields) = custom.as_known() {
                        for field in fields.into_iter().flatten() {
                            if field.name == "language" || field.name == "processed-by" {
                                for value in field.values.into_iter().flatten() {
                                    facts.producers.push(value.name.to_string());
                                }
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(facts)
    }

    /// The HTTP world it exports, 0.3 first (as `wasmtime serve` tries them).
    pub fn http_world(&self) -> Option<HttpWorld> {
        if self.exports.iter().any(|e| e.starts_with(HTTP_03)) {
            Some(HttpWorld::P3)
        } else if self.exports.iter().any(|e| e.starts_with(HTTP_02)) {
            Some(HttpWorld::P2)
        } else {
            None
        }
    }

    /// Whether it exports Skiff's event handler (any version).
    pub fn handles_events(&self) -> bool {
        self.exports.iter().any(|e| e.starts_with(EVENT_HANDLER))
    }

    /// Whether it imports or exports any WASI 0.3 interface, and so needs the
    /// component model's async ABI.
    pub fn uses_wasi_03(&self) -> bool {
        self.imports
            .iter()
            .chain(&self.exports)
            .any(|n| n.starts_with("wasi:") && n.contains("@0.3"))
    }

    /// The toolchain that built it (componentize-py and componentize-js embed a Rust
    /// or C runtime, so they are looked for first).
    pub fn toolchain(&self) -> Toolchain {
        let has = |what: &str| {
            self.producers
                .iter()
                .any(|p| p.to_ascii_lowercase().contains(what))
        };
        if has("componentize-py") {
            Toolchain::Python
        } else if has("componentize-js") || has("componentizejs") || has("spidermonkey") {
            Toolchain::JavaScript
        } else if has("rust") {
            Toolchain::Rust
        } else {
            Toolchain::Unknown
        }
    }

    /// Its exports as one line for error messages.
    pub fn exports_line(&self) -> String {
        match self.exports.is_empty() {
            true => "nothing".to_string(),
            false => self.exports.join(", "),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_bytes_are_an_error_not_a_panic() {
        let mut wasm = b"\0asm\x0d\x00\x01\x00".to_vec();
        wasm.extend_from_slice(&[0x0b, 0xff, 0xff, 0xff, 0xff, 0x0f]);
        let err = ComponentFacts::scan(&wasm).unwrap_err();
        assert!(err.to_string().contains("end-of-file"), "{err}");
    }

    #[test]
    fn worlds_and_async_are_read_from_names() {
        let facts = ComponentFacts {
            imports: vec!["wasi:cli/stdout@0.3.0-rc-2026-03-15".into()],
            exports: vec!["wasi:http/handler@0.3.0-rc-2026-03-15".into()],
            producers: vec!["Rust".into(), "wit-component".into()],
        };
        assert_eq!(facts.toolchain(), Toolchain::Rust);
        assert_eq!(facts.http_world(), Some(HttpWorld::P3));
        assert!(facts.uses_wasi_03());
        let facts = ComponentFacts {
            imports: vec!["wasi:io/streams@0.2.6".into()],
            exports: vec![
                "wasi:http/incoming-handler@0.2.6".into(),
                "skiff:function/event-handler@0.1.0".into(),
            ],
            producers: vec!["C11".into(), "Rust".into(), "componentize-py".into()],
        };
        assert_eq!(facts.toolchain(), Toolchain::Python);
        assert_eq!(facts.http_world(), Some(HttpWorld::P2));
        assert!(facts.handles_events());
        assert!(!facts.uses_wasi_03());
        assert_eq!(ComponentFacts::default().http_world(), None);
    }
}
