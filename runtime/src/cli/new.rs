//! `skiff new NAME [--lang rust|python|js] [--template http|kv|events]`: writes a project
//! that `skiff deploy` (or `skiff dev`) builds and deploys unchanged. The templates
//! (`runtime/templates`) and, for Python and JavaScript, the WIT they bind (`sdk/wit`) are
//! embedded in the binary.

use super::toolchain;
use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use include_dir::{Dir, include_dir};
use skiff_core::manifest::FunctionName;
use std::path::{Path, PathBuf};

static TEMPLATES: Dir<'_> = include_dir!("$CARGO_MANIFEST_DIR/templates");
static WIT: Dir<'_> = include_dir!("$CARGO_MANIFEST_DIR/../sdk/wit");

/// The language of a new function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Lang {
    /// Rust with skiff-sdk (cargo, wasm32-wasip2).
    Rust,
    /// Python with componentize-py.
    Python,
    /// JavaScript with componentize-js (npm).
    Js,
}

/// What a new function does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Template {
    /// Answers every request with a greeting and the path it was asked for.
    Http,
    /// Stores, answers and deletes keys in the function's durable key-value store.
    Kv,
    /// Publishes what it is sent as an event, handles it, and answers the last one.
    Events,
}

/// `skiff new`'s arguments.
#[derive(Debug, Args)]
pub struct NewArgs {
    /// The function's name (lowercase letters, digits and `-`); also the folder's.
    name: String,
    /// The language.
    #[arg(long, value_enum, default_value_t = Lang::Rust)]
    lang: Lang,
    /// What the function starts out doing.
    #[arg(long, value_enum, default_value_t = Template::Http)]
    template: Template,
    /// The folder to write [default: ./NAME].
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Write into a folder that is not empty (files of the same name are replaced).
    #[arg(long)]
    force: bool,
    /// The skiff-sdk folder a Rust function depends on [default: the `sdk` folder of the
    /// Skiff source this binary was built from].
    #[arg(long, env = "SKIFF_SDK", value_name = "DIR")]
    sdk: Option<PathBuf>,
}

impl Lang {
    fn folder(self) -> &'static str {
        match self {
            Lang::Rust => "rust",
            Lang::Python => "python",
            Lang::Js => "js",
        }
    }

    /// The tool the build command starts with.
    fn tool(self) -> &'static str {
        match self {
            Lang::Rust => "cargo",
            Lang::Python => "componentize-py",
            Lang::Js => "npm",
        }
    }
}

impl Template {
    fn folder(self) -> &'static str {
        match self {
            Template::Http => "http",
            Template::Kv => "kv",
            Template::Events => "events",
        }
    }

    /// Commands that show what the function does once deployed.
    fn try_it(self, name: &str) -> String {
        let url = format!("http://127.0.0.1:7070/{name}");
        match self {
            Template::Http => format!("curl {url}/hello"),
            Template::Kv => format!("curl -X PUT -d world {url}/hello && curl {url}/hello"),
            Template::Events => format!("curl -d hi {url} && sleep 1 && curl {url}"),
        }
    }
}

/// Writes the project; prints what was made and the next commands.
pub fn run(args: NewArgs) -> anyhow::Result<()> {
    let name = FunctionName::new(&args.name)?;
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(name.as_str()));
    refuse_non_empty(&dir, args.force)?;
    let files = project_files(&args, name.as_str())?;
    for (path, contents) in &files {
        let target = dir.join(path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::write(&target, contents)
            .with_context(|| format!("cannot write {}", target.display()))?;
    }
    println!(
        "created {name} ({}, {} template) in {}",
        args.lang.folder(),
        args.template.folder(),
        dir.display()
    );
    let tool = args.lang.tool();
    if !toolchain::on_path(tool)
        && let Some(hint) = toolchain::install_hint(tool)
    {
        println!("note: its build needs `{tool}`, which is not on PATH: {hint}");
    }
    println!(
        "next:\n  cd {}\n  skiff dev        # or `skiff deploy` to a running Skiff\n  {}",
        dir.display(),
        args.template.try_it(name.as_str())
    );
    Ok(())
}

fn refuse_non_empty(dir: &Path, force: bool) -> anyhow::Result<()> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() && !force {
                bail!(
                    "{} exists and is not empty; choose another name or --dir, or pass --force to write the project into it (files of the same name are replaced)",
                    dir.display()
                );
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => {
            bail!("{} is a file; choose another name or --dir", dir.display())
        }
        Err(e) => Err(e).with_context(|| format!("cannot read {}", dir.display())),
    }
}

/// The project's files: the language's common files, the template's, and for Python and
/// JavaScript the WIT under `wit/`; placeholders filled in.
fn project_files(args: &NewArgs, name: &str) -> anyhow::Result<Vec<(PathBuf, Vec<u8>)>> {
    let lang = TEMPLATES
        .get_dir(args.lang.folder())
        .context("this skiff binary lacks its templates; rebuild it from the Skiff source")?;
    let template = lang
        .get_dir(Path::new(args.lang.folder()).join(args.template.folder()))
        .context("this skiff binary lacks the template; rebuild it from the Skiff source")?;
    let sdk = match args.lang {
        Lang::Rust => sdk_path(args.sdk.as_deref())?,
        _ => String::new(),
    };
    let fill = |text: &str| {
        text.replace("{{name}}", name)
            .replace("{{crate}}", &name.replace('-', "_"))
            .replace("{{sdk}}", &sdk)
            .replace("{{template}}", args.template.folder())
            .replace("{{try}}", &args.template.try_it(name))
    };
    let mut files = Vec::new();
    for file in lang.files() {
        let file_name = file.path().strip_prefix(lang.path())?;
        let file_name = match file_name.to_str() {
            Some("gitignore") => PathBuf::from(".gitignore"),
            _ => file_name.to_path_buf(),
        };
        files.push((file_name, fill(text(file)?).into_bytes()));
    }
    for file in all_files(template) {
        let relative = file.path().strip_prefix(template.path())?.to_path_buf();
        files.push((relative, fill(text(file)?).into_bytes()));
    }
    if args.lang != Lang::Rust {
        for file in all_files(&WIT) {
            files.push((Path::new("wit").join(file.path()), file.contents().to_vec()));
        }
    }
    Ok(files)
}

fn text<'a>(file: &'a include_dir::File<'a>) -> anyhow::Result<&'a str> {
    file.contents_utf8()
        .with_context(|| format!("template file {} is not UTF-8", file.path().display()))
}

fn all_files<'a>(dir: &'a Dir<'a>) -> Vec<&'a include_dir::File<'a>> {
    let mut out: Vec<_> = dir.files().collect();
    for sub in dir.dirs() {
        out.extend(all_files(sub));
    }
    out
}

/// The skiff-sdk a Rust project depends on by path: `--sdk`, else the `sdk` folder next
/// to the `runtime` crate this binary was built from (skiff-sdk is not on crates.io).
fn sdk_path(given: Option<&Path>) -> anyhow::Result<String> {
    let built_from = Path::new(env!("CARGO_MANIFEST_DIR")).join("../sdk");
    let (dir, from_flag) = match given {
        Some(d) => (d.to_path_buf(), true),
        None => (built_from, false),
    };
    let dir = dir
        .canonicalize()
        .ok()
        .filter(|d| d.join("Cargo.toml").is_file());
    match (dir, from_flag) {
        (Some(d), _) => d
            .to_str()
            .map(str::to_string)
            .context("the skiff-sdk path is not UTF-8; pass --sdk with another path"),
        (None, true) => bail!(
            "--sdk {} is not a skiff-sdk folder (it has no Cargo.toml); pass the `sdk` folder of a Skiff checkout",
            given
                .map(Path::display)
                .map(|d| d.to_string())
                .unwrap_or_default()
        ),
        (None, false) => bail!(
            "skiff-sdk is not where this binary was built ({}); pass --sdk DIR (or SKIFF_SDK) with the `sdk` folder of a Skiff checkout",
            env!("CARGO_MANIFEST_DIR")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_core::manifest::Manifest;

    fn args(lang: Lang, template: Template) -> NewArgs {
        NewArgs {
            name: "my-fn".into(),
            lang,
            template,
            dir: None,
            force: false,
            sdk: None,
        }
    }

    #[test]
    fn every_template_fills_in_and_its_manifest_parses() {
        for lang in [Lang::Rust, Lang::Python, Lang::Js] {
            for template in [Template::Http, Template::Kv, Template::Events] {
                let files = project_files(&args(lang, template), "my-fn").unwrap();
                let names: Vec<String> =
                    files.iter().map(|(p, _)| p.display().to_string()).collect();
                for (path, contents) in &files {
                    let text = String::from_utf8_lossy(contents);
                    assert!(
                        !text.contains("{{"),
                        "{lang:?}/{template:?} {path:?}: {text}"
                    );
                }
                let manifest = files
                    .iter()
                    .find(|(p, _)| p == Path::new("skiff.toml"))
                    .map(|(_, c)| String::from_utf8_lossy(c).into_owned())
                    .unwrap_or_else(|| {
                        panic!("{lang:?}/{template:?} has no skiff.toml: {names:?}")
                    });
                let m = Manifest::parse(&manifest, "skiff.toml").unwrap();
                assert_eq!(m.name.as_str(), "my-fn");
                assert_eq!(m.events.len(), usize::from(template == Template::Events));
                assert!(names.contains(&"README.md".to_string()), "{names:?}");
                assert!(names.contains(&".gitignore".to_string()), "{names:?}");
                let wit = names.iter().any(|n| n == "wit/skiff.wit");
                assert_eq!(wit, lang != Lang::Rust, "{names:?}");
            }
        }
    }

    /// The examples in functions/ carry the helper `skiff new` writes, as real files
    /// (componentize-py and componentize-js do not follow links out of the project).
    #[test]
    fn examples_carry_the_templates_helpers() {
        for (example, template) in [
            ("functions/py-counter/skiff_http.py", "python/skiff_http.py"),
            ("functions/js-inbox/skiff_http.js", "js/skiff_http.js"),
        ] {
            let file = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join(example);
            let copy = std::fs::read(&file).unwrap();
            let original = TEMPLATES.get_file(template).unwrap().contents();
            assert!(
                copy == original,
                "{example} differs from runtime/templates/{template}: copy the template's over it"
            );
        }
    }

    #[test]
    fn refuses_a_folder_that_is_not_empty() {
        let tmp = tempfile::tempdir().unwrap();
        refuse_non_empty(&tmp.path().join("absent"), false).unwrap();
        refuse_non_empty(tmp.path(), false).unwrap();
        std::fs::write(tmp.path().join("x"), "").unwrap();
        let e = refuse_non_empty(tmp.path(), false).unwrap_err().to_string();
        assert!(e.contains("--force"), "{e}");
        refuse_non_empty(tmp.path(), true).unwrap();
    }
}
