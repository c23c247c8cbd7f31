//! Connecting to NATS: one URL or a cluster's list, retried while a fresh JetStream
//! elects its leaders, and the replication factor for the streams Skiff creates.

use crate::nats_auth::{AuthError, NatsAuth};
use std::time::Duration;

/// How often a client pings its server. The library's default (a minute) would leave a
/// node talking to a partitioned server for minutes.
const PING_EVERY: Duration = Duration::from_millis(500);

/// The last operation NATS refused this process (a permission violation), and when.
static REFUSED: std::sync::Mutex<Option<(std::time::Instant, String)>> =
    std::sync::Mutex::new(None);

/// What NATS refused this process in the last 30 s, if anything: an operation that then
/// times out failed for that, not for a slow NATS.
pub fn recent_refusal() -> Option<String> {
    let last = REFUSED.lock().ok()?;
    let (at, what) = last.as_ref()?;
    (at.elapsed() < Duration::from_secs(30)).then(|| what.clone())
}

/// NATS could not be reached, or refused this process.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// No server answered; one may later.
    #[error(
        "cannot connect to NATS at {urls}: {detail}; start nats-server with JetStream (-js) or fix --nats"
    )]
    Unreachable {
        /// The URLs tried.
        urls: String,
        /// What the client said.
        detail: String,
    },
    /// The credentials or TLS settings do not work: retrying cannot fix it.
    #[error("NATS at {urls}: {error}")]
    Refused {
        /// The URLs tried.
        urls: String,
        /// What is wrong and which flag to fix.
        error: AuthError,
    },
}

/// Connects to one NATS URL or a comma-separated list of a cluster's servers. NATS must
/// answer at start; after that the client reconnects on its own for as long as the
/// process lives.
pub async fn connect(
    urls: &str,
    name: &str,
    auth: &NatsAuth,
) -> Result<async_nats::Client, ConnectError> {
    let fail = |detail: String| ConnectError::Unreachable {
        urls: urls.to_string(),
        detail,
    };
    let refused = |error: AuthError| ConnectError::Refused {
        urls: urls.to_string(),
        error,
    };
    let list: Vec<&str> = urls
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .collect();
    if list.is_empty() {
        return Err(fail("no URL given".into()));
    }
    let options = async_nats::ConnectOptions::new()
        .name(name)
        .connection_timeout(Duration::from_secs(5))
        // A server cut off by a partition sends nothing; missed pings notice it (after
        // two unanswered ones) and the client moves to another server of the cluster.
        .ping_interval(PING_EVERY)
        .max_reconnects(None)
        // The server reports a permission it refused (naming the subject) only here: say
        // so once per refusal, never retry it silently.
        .event_callback(|event| async move {
            if let async_nats::Event::ServerError(e) = event {
                tracing::error!(error = %e, "NATS refused an operation of this process; its user lacks the permission (see deploy/nats/permissions.conf)");
                if let Ok(mut last) = REFUSED.lock() {
                    *last = Some((std::time::Instant::now(), e.to_string()));
                }
            }
        });
    let options = auth.apply(options).await.map_err(refused)?;
    tokio::time::timeout(Duration::from_secs(10), options.connect(list.as_slice()))
        .await
        .map_err(|_| fail("no server answered within 10s".into()))?
        .map_err(|e| match crate::nats_auth::refusal(&e) {
            Some(error) => refused(error),
            None => fail(e.to_string()),
        })
}

/// Runs `setup` until it succeeds or 30 s pass: a freshly started NATS cluster answers
/// "JetStream not ready" until it has elected a leader, and nodes, schedulers and NATS
/// are often started together.
pub async fn until_ready<T, E, F, Fut>(what: &str, mut setup: F) -> Result<T, E>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        match setup().await {
            Ok(v) => return Ok(v),
            Err(e) if std::time::Instant::now() < deadline => {
                tracing::warn!(error = %e, "cannot {what} yet; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Runs `setup` until it succeeds, however long that takes, waiting up to 5 s between
/// tries: a node or scheduler started while NATS is unreachable joins whenever it
/// answers. The first failure and each new kind of failure are logged as warnings.
pub async fn retry_forever<T, E, F, Fut>(what: &str, mut setup: F) -> T
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut wait = Duration::from_millis(250);
    let mut last = String::new();
    loop {
        match setup().await {
            Ok(v) => return v,
            Err(e) => {
                let e = e.to_string();
                if e != last {
                    tracing::warn!(error = %e, "cannot {what} yet; retrying until it works");
                } else {
                    tracing::debug!(error = %e, "cannot {what} yet; retrying");
                }
                last = e;
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// How far a process that joins NATS in the background got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JoinProgress {
    /// NATS refused this process's credentials or TLS settings: what is wrong and the
    /// flag to fix. A starting process exits with it.
    Refused(String),
    /// Trying to connect.
    Connecting,
    /// The first try to connect failed: NATS is down or unreachable.
    Unreachable,
    /// Connected; setting up streams and buckets (a fresh cluster may still be electing).
    Connected,
    /// Everything is set up.
    Joined,
}

/// How long a starting process waits to hear whether NATS answers before it serves
/// without it.
pub const CONNECT_GRACE: Duration = Duration::from_millis(1500);

/// How long a starting process whose NATS answered waits for its streams before it
/// serves without them (a fresh NATS cluster is electing its leaders).
pub const SETUP_GRACE: Duration = Duration::from_secs(30);

/// Waits, at start, for a background join reported through `progress`: answers whether it
/// joined. It answers `false` at once if NATS is unreachable, after [`CONNECT_GRACE`] if
/// no connection came, and after [`SETUP_GRACE`] if NATS answered but the setup did not
/// finish; the process then serves without NATS and the join goes on. It answers an
/// error if NATS refused this process's credentials or TLS: the process must not start.
pub async fn wait_for_join(
    progress: &mut tokio::sync::watch::Receiver<JoinProgress>,
) -> Result<bool, String> {
    let first = tokio::time::timeout(
        CONNECT_GRACE,
        progress.wait_for(|p| *p != JoinProgress::Connecting),
    )
    .await
    .ok()
    .and_then(|r| r.ok().map(|p| p.clone()));
    match first {
        Some(JoinProgress::Joined) => return Ok(true),
        Some(JoinProgress::Refused(why)) => return Err(why),
        Some(JoinProgress::Connected) => {}
        _ => return Ok(false),
    }
    let joined = tokio::time::timeout(
        SETUP_GRACE,
        progress.wait_for(|p| *p == JoinProgress::Joined),
    )
    .await
    .is_ok_and(|r| r.is_ok());
    if let JoinProgress::Refused(why) = &*progress.borrow() {
        return Err(why.clone());
    }
    if !joined {
        tracing::warn!(
            "NATS answers but its streams were not ready within {SETUP_GRACE:?}; serving without it and joining when they are"
        );
    }
    Ok(joined)
}

/// Connects to `urls` for a background join, retrying every second for as long as it
/// takes, and tells `progress` how it goes. A refusal (credentials, TLS) is reported as
/// [`JoinProgress::Refused`] and logged as an error at each try, every 5 s: a process
/// already serving goes on without NATS until its files are fixed.
pub async fn connect_forever(
    urls: &str,
    name: &str,
    auth: &NatsAuth,
    progress: &tokio::sync::watch::Sender<JoinProgress>,
) -> async_nats::Client {
    loop {
        match connect(urls, name, auth).await {
            Ok(client) => {
                progress.send_replace(JoinProgress::Connected);
                return client;
            }
            Err(e @ ConnectError::Refused { .. }) => {
                tracing::error!(error = %e, "NATS refuses this process; not joining until the credentials or TLS files are fixed");
                progress.send_replace(JoinProgress::Refused(e.to_string()));
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
            Err(e) => {
                if *progress.borrow() == JoinProgress::Connecting {
                    tracing::warn!(error = %e, "NATS unreachable: serving with what this process knows, and joining when NATS answers");
                    progress.send_replace(JoinProgress::Unreachable);
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// The replication factor for Skiff's streams when they are created: `chosen` if given
/// (`--replicas`), else the NATS cluster's size as the server reports it, at most 3.
///
/// A stream keeps the factor it was created with, so a node started while part of the NATS
/// cluster was still down would fix a low one; pass `--replicas 3` in production to be
/// sure (deploy/ does).
pub fn replicas(client: &async_nats::Client, chosen: Option<usize>) -> usize {
    if let Some(n) = chosen {
        return n.clamp(1, 5);
    }
    // A server lists the client URLs of its cluster (itself included) in `connect_urls`.
    let seen = client.server_info().connect_urls.len().clamp(1, 3);
    if seen < 3 && !client.server_info().connect_urls.is_empty() {
        tracing::warn!(
            replicas = seen,
            "the NATS cluster shows {seen} server(s); new streams get {seen} replica(s) — pass --replicas to choose"
        );
    }
    seen
}

/// Creates the stream `config` describes, or opens it; an existing stream whose
/// de-duplication window differs from `config`'s gets `config`'s (the operator changed
/// `--dedup-window-*`), and `config`'s subjects and message schedules if it lacks them
/// (a newer Skiff). Answers the stream, or what failed.
pub async fn stream_with_window(
    js: &async_nats::jetstream::Context,
    config: async_nats::jetstream::stream::Config,
) -> Result<async_nats::jetstream::stream::Stream, String> {
    let window = config.duplicate_window;
    let name = config.name.clone();
    let mut stream = js
        .get_or_create_stream(config.clone())
        .await
        .map_err(|e| e.to_string())?;
    let mut current = stream
        .info()
        .await
        .map_err(|e| e.to_string())?
        .config
        .clone();
    let mut changed = false;
    if current.duplicate_window != window {
        tracing::info!(stream = %name, from = ?current.duplicate_window, to = ?window, "de-duplication window changed");
        current.duplicate_window = window;
        changed = true;
    }
    // A newer Skiff may add subjects and features to a stream an older one created.
    for subject in &config.subjects {
        if !current.subjects.contains(subject) {
            tracing::info!(stream = %name, %subject, "stream takes a new subject");
            current.subjects.push(subject.clone());
            changed = true;
        }
    }
    if config.allow_message_schedules && !current.allow_message_schedules {
        tracing::info!(stream = %name, "stream takes message schedules");
        current.allow_message_schedules = true;
        current.allow_rollup = true;
        current.deny_purge = false;
        changed = true;
    }
    if changed {
        js.update_stream(&current)
            .await
            .map_err(|e| {
                format!(
                    "cannot update the stream's configuration: {e} (message schedules need nats-server 2.14 or newer)"
                )
            })?;
        stream = js.get_stream(&name).await.map_err(|e| e.to_string())?;
    }
    Ok(stream)
}
