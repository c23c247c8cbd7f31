//! `skiff schedules [NAME]`, `skiff schedules pause|resume NAME`, and the time options
//! of `skiff publish` (`--at`, `--after`).

use super::client::{AdminClient, full};
use clap::{Args, Subcommand};
use http::Method;
use skiff_core::api::{FunctionInfo, ScheduleInfo};
use skiff_core::manifest::Timeout;
use skiff_core::schedule::{TOPIC_PREFIX, parse_rfc3339, rfc3339};
use std::process::ExitCode;

/// `skiff schedules`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct SchedulesArgs {
    #[command(subcommand)]
    action: Option<ScheduleAction>,
    /// The function (default: every function with a `[[schedule]]`).
    name: Option<String>,
}

#[derive(Debug, Subcommand)]
enum ScheduleAction {
    /// Skip a function's fires until resumed (missed fires are not made up for).
    Pause {
        /// The function.
        name: String,
    },
    /// Fire a paused function's schedules again.
    Resume {
        /// The function.
        name: String,
    },
}

/// When `skiff publish` delivers: `--at TIME` or `--after DELAY`.
#[derive(Debug, Args)]
pub struct When {
    /// Deliver no earlier than this time (RFC 3339, like 2026-12-24T18:00:00Z).
    #[arg(long, conflicts_with = "after", value_parser = parse_at)]
    at: Option<u64>,
    /// Deliver after this delay, like 10m.
    #[arg(long, value_parser = Timeout::parse)]
    after: Option<Timeout>,
}

fn parse_at(text: &str) -> Result<u64, String> {
    parse_rfc3339(text).ok_or_else(|| {
        format!("`{text}` is not an RFC 3339 time; write it like 2026-12-24T18:00:00Z")
    })
}

impl When {
    /// The delivery time in ms since the epoch (0: at once).
    pub fn at_ms(&self) -> u64 {
        match (self.at, self.after) {
            (Some(at), _) => at.max(1),
            (None, Some(after)) => skiff_core::record::now_ms() + after.0.as_millis() as u64,
            (None, None) => 0,
        }
    }
}

/// Runs `skiff schedules`.
pub async fn run(client: &AdminClient, args: SchedulesArgs) -> anyhow::Result<ExitCode> {
    let list: Vec<ScheduleInfo> = match (args.action, args.name) {
        (Some(ScheduleAction::Pause { name }), _) => post(client, &name, "pause").await?,
        (Some(ScheduleAction::Resume { name }), _) => post(client, &name, "resume").await?,
        (None, Some(name)) => {
            client
                .get(&format!("/v1/functions/{name}/schedules"))
                .await?
        }
        (None, None) => {
            let functions: Vec<FunctionInfo> = client.get("/v1/functions").await?;
            let mut all = Vec::new();
            for f in functions.iter().filter(|f| {
                f.triggers
                    .iter()
                    .any(|t| t.starts_with(&format!("{TOPIC_PREFIX}.")))
            }) {
                let one: Vec<ScheduleInfo> = client
                    .get(&format!("/v1/functions/{}/schedules", f.name))
                    .await?;
                all.extend(one);
            }
            all
        }
    };
    print(&list);
    Ok(ExitCode::SUCCESS)
}

async fn post(client: &AdminClient, name: &str, action: &str) -> anyhow::Result<Vec<ScheduleInfo>> {
    Ok(client
        .call(
            Method::POST,
            &format!("/v1/functions/{name}/schedules/{action}"),
            full(Vec::new()),
        )
        .await?)
}

fn time(ms: u64) -> String {
    if ms == 0 {
        "-".to_string()
    } else {
        rfc3339(ms)
    }
}

fn print(list: &[ScheduleInfo]) {
    if list.is_empty() {
        println!("no schedules");
        return;
    }
    println!(
        "{:<16} {:>2}  {:<32} {:<8} {:<26} {:<26} {:<24} {:>6} {:>6}",
        "FUNCTION", "#", "SCHEDULE", "CATCH-UP", "NEXT", "LAST SLOT", "OUTCOME", "FIRES", "MISSES"
    );
    for s in list {
        let r = &s.record;
        let outcome = match (r.paused, r.last_outcome.as_str()) {
            (true, "") => "PAUSED".to_string(),
            (true, o) => format!("PAUSED ({o})"),
            (false, "") => "-".to_string(),
            (false, o) => o.chars().take(60).collect(),
        };
        println!(
            "{:<16} {:>2}  {:<32} {:<8} {:<26} {:<26} {:<24} {:>6} {:>6}",
            s.function,
            s.index,
            s.schedule,
            s.catch_up,
            time(s.next_ms.first().copied().unwrap_or(0)),
            time(r.last_slot_ms),
            outcome,
            r.fires,
            r.misses
        );
    }
}
