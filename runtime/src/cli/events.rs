//! `skiff publish` and `skiff dead-letters ls|show|replay`.

use super::client::{AdminClient, full};
use anyhow::Context;
use bytes::Bytes;
use clap::Subcommand;
use http::Method;
use skiff_core::api::DeadLetter;
use std::process::ExitCode;

/// `skiff dead-letters` subcommands.
#[derive(Debug, Subcommand)]
pub enum DeadLetterCommand {
    /// List a function's dead letters.
    Ls {
        /// The function.
        name: String,
    },
    /// Show one dead letter with its payload.
    Show {
        /// The function.
        name: String,
        /// The event id.
        id: String,
    },
    /// Deliver dead letters to the function again.
    Replay {
        /// The function.
        name: String,
        /// The event id (omit with --all).
        id: Option<String>,
        /// Replay every dead letter of the function.
        #[arg(long)]
        all: bool,
    },
}

/// `skiff publish TOPIC DATA|@FILE [--at TIME | --after DELAY]`; `at_ms` 0: at once.
pub async fn publish(
    client: &AdminClient,
    topic: &str,
    data: &str,
    at_ms: u64,
) -> anyhow::Result<ExitCode> {
    let bytes = match data.strip_prefix('@') {
        Some(file) => tokio::fs::read(file)
            .await
            .with_context(|| format!("cannot read event data from `{file}`"))?,
        None => data.as_bytes().to_vec(),
    };
    let path = match at_ms {
        0 => format!("/v1/events/{topic}"),
        at => format!("/v1/events/{topic}?at_ms={at}"),
    };
    let answer: serde_json::Value = client.call(Method::POST, &path, full(bytes)).await?;
    let id = answer["id"].as_str().unwrap_or("?");
    match answer["at_ms"].as_u64().unwrap_or(0) {
        0 => println!("published {id} to {topic}"),
        at => println!(
            "published {id} to {topic}, delivered at {}",
            skiff_core::schedule::rfc3339(at)
        ),
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs a `skiff dead-letters` subcommand.
pub async fn dead_letters(
    client: &AdminClient,
    cmd: DeadLetterCommand,
) -> anyhow::Result<ExitCode> {
    match cmd {
        DeadLetterCommand::Ls { name } => {
            let list: Vec<DeadLetter> = client
                .get(&format!("/v1/functions/{name}/dead-letters"))
                .await?;
            if list.is_empty() {
                println!("no dead letters for {name}");
            } else {
                println!("{:<34} {:<28} {:>8}  ERROR", "EVENT", "TOPIC", "ATTEMPTS");
                for d in list {
                    println!(
                        "{:<34} {:<28} {:>8}  {}",
                        d.event.id, d.event.topic, d.attempts, d.error
                    );
                }
            }
        }
        DeadLetterCommand::Show { name, id } => {
            let d: DeadLetter = client
                .get(&format!("/v1/functions/{name}/dead-letters/{id}"))
                .await?;
            println!("event:    {}", d.event.id);
            println!("topic:    {}", d.event.topic);
            println!("attempts: {}", d.attempts);
            println!("error:    {}", d.error);
            for (k, v) in &d.event.headers {
                println!("header:   {k}: {v}");
            }
            println!("data:     {}", String::from_utf8_lossy(&d.event.data));
        }
        DeadLetterCommand::Replay { name, id, all } => {
            let path = match (id, all) {
                (Some(id), false) => format!("/v1/functions/{name}/dead-letters/{id}/replay"),
                (None, true) => format!("/v1/functions/{name}/dead-letters/replay"),
                _ => anyhow::bail!("name one dead letter to replay, or pass --all"),
            };
            let answer: serde_json::Value =
                client.call(Method::POST, &path, full(Bytes::new())).await?;
            println!(
                "replayed {} dead letter(s) of {name}",
                answer["replayed"].as_u64().unwrap_or(0)
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
