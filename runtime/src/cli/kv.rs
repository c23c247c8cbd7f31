//! `skiff kv get|set|del|ls`: a function's key-value state through the admin API.

use super::client::{AdminClient, full};
use anyhow::Context;
use bytes::Bytes;
use clap::Subcommand;
use http::Method;
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use skiff_core::api::KeyPage;
use std::io::Write;
use std::process::ExitCode;

/// `skiff kv` subcommands.
#[derive(Debug, Subcommand)]
pub enum KvCommand {
    /// Print the value of KEY.
    Get {
        /// The function.
        name: String,
        /// The key.
        key: String,
        /// The bucket.
        #[arg(long, default_value = "default")]
        bucket: String,
        /// In a cluster: read the value as last written anywhere, not this node's copy.
        #[arg(long)]
        consistent: bool,
    },
    /// Set KEY to VALUE (or @FILE).
    Set {
        /// The function.
        name: String,
        /// The key.
        key: String,
        /// The value, or @FILE to read it from a file.
        value: String,
        /// The bucket.
        #[arg(long, default_value = "default")]
        bucket: String,
    },
    /// Delete KEY.
    Del {
        /// The function.
        name: String,
        /// The key.
        key: String,
        /// The bucket.
        #[arg(long, default_value = "default")]
        bucket: String,
    },
    /// List keys (optionally those starting with PREFIX).
    Ls {
        /// The function.
        name: String,
        /// Only keys starting with this.
        prefix: Option<String>,
        /// The bucket.
        #[arg(long, default_value = "default")]
        bucket: String,
    },
}

fn enc(s: &str) -> String {
    utf8_percent_encode(s, NON_ALPHANUMERIC).to_string()
}

fn key_path(name: &str, key: &str, bucket: &str) -> String {
    format!(
        "/v1/functions/{}/kv/{}?bucket={}",
        enc(name),
        enc(key),
        enc(bucket)
    )
}

/// Runs a `skiff kv` subcommand.
pub async fn run(client: &AdminClient, cmd: KvCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        KvCommand::Get {
            name,
            key,
            bucket,
            consistent,
        } => {
            let mut path = key_path(&name, &key, &bucket);
            if consistent {
                path.push_str(if path.contains('?') { "&" } else { "?" });
                path.push_str("consistent=true");
            }
            let value = client.send(Method::GET, &path, full(Bytes::new())).await?;
            let mut out = std::io::stdout().lock();
            out.write_all(&value)?;
            if std::io::IsTerminal::is_terminal(&out) && !value.ends_with(b"\n") {
                out.write_all(b"\n")?;
            }
        }
        KvCommand::Set {
            name,
            key,
            value,
            bucket,
        } => {
            let bytes = match value.strip_prefix('@') {
                Some(file) => tokio::fs::read(file)
                    .await
                    .with_context(|| format!("cannot read the value from `{file}`"))?,
                None => value.into_bytes(),
            };
            let _: serde_json::Value = client
                .call(Method::PUT, &key_path(&name, &key, &bucket), full(bytes))
                .await?;
        }
        KvCommand::Del { name, key, bucket } => {
            let _: serde_json::Value = client
                .call(
                    Method::DELETE,
                    &key_path(&name, &key, &bucket),
                    full(Bytes::new()),
                )
                .await?;
        }
        KvCommand::Ls {
            name,
            prefix,
            bucket,
        } => {
            let mut cursor = 0;
            let mut out = std::io::stdout().lock();
            loop {
                let page: KeyPage = client
                    .get(&format!(
                        "/v1/functions/{}/kv?bucket={}&prefix={}&cursor={cursor}",
                        enc(&name),
                        enc(&bucket),
                        enc(prefix.as_deref().unwrap_or(""))
                    ))
                    .await?;
                for k in &page.keys {
                    writeln!(out, "{k}")?;
                }
                match page.cursor {
                    Some(c) => cursor = c,
                    None => break,
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
