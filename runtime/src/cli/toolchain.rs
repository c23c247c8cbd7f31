//! The toolchains a function's build command needs: whether one is on `PATH`, and the
//! command that installs a missing one. `skiff new` warns before the first build;
//! `skiff deploy` and `skiff dev` name the install command when a build cannot find one.

use std::path::Path;

/// The install command (or instruction) for `tool`, for the tools Skiff's templates use.
pub fn install_hint(tool: &str) -> Option<&'static str> {
    Some(match tool {
        "cargo" | "rustc" | "rustup" => {
            "install Rust from https://rustup.rs, then `rustup target add wasm32-wasip2`"
        }
        "componentize-py" => "`pip install componentize-py==0.25.1`",
        "npm" | "npx" | "node" => {
            "install Node.js with npm (on Debian: `apt install nodejs npm`); the build then runs `npm install` for componentize-js"
        }
        "componentize-js" => "`npm install` in the project folder (package.json pins it)",
        _ => return None,
    })
}

/// Whether an executable named `tool` is on `PATH`.
pub fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|dir| is_executable(&dir.join(tool)))
    })
}

fn is_executable(file: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(file).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// What a failed build's output says is missing, as a sentence that names the fix: a
/// command the shell did not find, or Rust's wasm32-wasip2 target.
pub fn diagnose(output: &str) -> Option<String> {
    if output.contains("wasm32-wasip2") && output.contains("target may not be installed") {
        return Some(
            "the wasm32-wasip2 target is not installed: run `rustup target add wasm32-wasip2`"
                .to_string(),
        );
    }
    // dash: "sh: 1: npm: not found"; bash: "bash: npm: command not found".
    output.lines().find_map(|line| {
        let rest = line
            .strip_suffix(": not found")
            .or_else(|| line.strip_suffix(": command not found"))?;
        let tool = rest.rsplit(": ").next()?.trim();
        Some(match install_hint(tool) {
            Some(hint) => format!("`{tool}` is not installed (not on PATH): {hint}"),
            None => format!("`{tool}` is not installed (not on PATH)"),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_missing_tool_and_its_install_command() {
        let d = diagnose("sh: 1: componentize-py: not found\n").unwrap();
        assert!(d.contains("pip install componentize-py"), "{d}");
        let d = diagnose("bash: npx: command not found").unwrap();
        assert!(d.contains("apt install nodejs npm"), "{d}");
        let d = diagnose("sh: 1: zig: not found").unwrap();
        assert_eq!(d, "`zig` is not installed (not on PATH)");
        let d = diagnose("error[E0463]: can't find crate for `core`\n  = note: the `wasm32-wasip2` target may not be installed").unwrap();
        assert!(d.contains("rustup target add wasm32-wasip2"), "{d}");
        assert_eq!(diagnose("error: expected `;`"), None);
    }

    #[test]
    fn finds_sh_on_path() {
        assert!(on_path("sh"));
        assert!(!on_path("no-such-tool-skiff"));
    }
}
