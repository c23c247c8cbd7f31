//! `skiff logs NAME [-f] [-n N]`.

use super::client::AdminClient;
use http_body_util::BodyExt;
use skiff_core::api::LogLine;
use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, UNIX_EPOCH};

fn print(out: &mut impl Write, l: &LogLine) -> std::io::Result<()> {
    let ts = humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(l.ts_ms));
    let inv = &l.invocation[..l.invocation.len().min(12)];
    writeln!(
        out,
        "{ts} {} v{} {inv} {}: {}",
        l.function, l.version, l.stream, l.line
    )?;
    out.flush()
}

/// Prints `name`'s recent lines, and with `follow` keeps printing new ones.
pub async fn run(
    client: &AdminClient,
    name: &str,
    follow: bool,
    tail: usize,
) -> anyhow::Result<ExitCode> {
    let path = format!("/v1/functions/{name}/logs?tail={tail}&follow={follow}");
    let mut body = client
        .stream(
            http::Method::GET,
            &path,
            super::client::full(bytes::Bytes::new()),
        )
        .await?
        .into_body();
    let mut pending = Vec::new();
    let mut out = std::io::stdout();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| anyhow::anyhow!("the log stream broke off: {e}"))?;
        let Some(data) = frame.data_ref() else {
            continue;
        };
        pending.extend_from_slice(data);
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            match serde_json::from_slice::<LogLine>(&line) {
                Ok(l) => print(&mut out, &l)?,
                Err(e) => anyhow::bail!("unexpected log line from the server: {e}"),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
