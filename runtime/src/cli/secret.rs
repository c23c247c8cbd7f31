//! `skiff secret set|ls|rm`: a function's secrets through the admin API. Values go in,
//! never come back out: `ls` lists keys only.

use super::client::{AdminClient, full};
use anyhow::Context;
use clap::Subcommand;
use http::Method;
use skiff_core::api::SecretKeys;
use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

/// `skiff secret` subcommands.
#[derive(Debug, Subcommand)]
pub enum SecretCommand {
    /// Set KEY of function NAME; the value comes from standard input unless given (as
    /// VALUE or @FILE), so that it stays out of shell history.
    Set {
        /// The function.
        name: String,
        /// The key the function reads through wasi:config.
        key: String,
        /// The value, or @FILE; read from standard input when omitted.
        value: Option<String>,
    },
    /// List the keys of NAME's secrets (never their values).
    Ls {
        /// The function.
        name: String,
    },
    /// Remove KEY of function NAME.
    Rm {
        /// The function.
        name: String,
        /// The key.
        key: String,
    },
    /// Write a new random key file for `--secrets-key` (share it with every node and the
    /// scheduler of a cluster).
    Keygen {
        /// Where to write it (refuses to overwrite).
        file: PathBuf,
    },
}

/// Runs a `skiff secret` subcommand.
pub async fn run(
    client: impl Fn() -> anyhow::Result<AdminClient>,
    cmd: SecretCommand,
) -> anyhow::Result<ExitCode> {
    match cmd {
        SecretCommand::Set { name, key, value } => {
            let bytes = match value {
                Some(v) => match v.strip_prefix('@') {
                    Some(file) => tokio::fs::read(file)
                        .await
                        .with_context(|| format!("cannot read the value from `{file}`"))?,
                    None => v.into_bytes(),
                },
                None => {
                    let mut buf = Vec::new();
                    std::io::stdin()
                        .read_to_end(&mut buf)
                        .context("cannot read the value from standard input")?;
                    // `echo value | skiff secret set` adds a newline nobody means.
                    if buf.ends_with(b"\n") {
                        buf.pop();
                    }
                    buf
                }
            };
            let _: serde_json::Value = client()?
                .call(Method::PUT, &path(&name, Some(&key)), full(bytes))
                .await?;
            println!("set secret {key} of {name}");
        }
        SecretCommand::Ls { name } => {
            let keys: SecretKeys = client()?.get(&path(&name, None)).await?;
            for k in keys.keys {
                println!("{k}");
            }
        }
        SecretCommand::Rm { name, key } => {
            let _: serde_json::Value = client()?
                .call(
                    Method::DELETE,
                    &path(&name, Some(&key)),
                    full(bytes::Bytes::new()),
                )
                .await?;
            println!("removed secret {key} of {name}");
        }
        SecretCommand::Keygen { file } => {
            skiff_core::secrets::write_new_key(&file)?;
            println!("wrote a new secrets key to {}", file.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn path(name: &str, key: Option<&str>) -> String {
    use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
    let enc = |s: &str| utf8_percent_encode(s, NON_ALPHANUMERIC).to_string();
    match key {
        Some(k) => format!("/v1/functions/{}/secrets/{}", enc(name), enc(k)),
        None => format!("/v1/functions/{}/secrets", enc(name)),
    }
}
