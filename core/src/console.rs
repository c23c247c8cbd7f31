//! The web console, served at `/ui` on the admin port of `skiff up`, a node and the
//! scheduler: its assets (core/console, embedded), `/v1/session` (whether a token is
//! needed and whether the caller has it; no data), and the hub behind `/v1/stream`, which
//! sends every subscriber the same snapshot once a second as server-sent events, after
//! the last five minutes of them.

use crate::http::{AdminBody, Response, authorized, full};
pub use crate::live::{LiveFunction, LiveNode, LiveSnapshot};
use bytes::Bytes;
use http::{Method, StatusCode, header};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use tokio::sync::broadcast;

/// No inline script or style, nothing from another origin, no framing.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// How far back a new subscriber's history reaches: five minutes.
pub const HISTORY_MS: u64 = 300_000;

/// Snapshots kept at most (a scheduler publishes as its nodes' reports bring news, up to a
/// few times a second).
pub const MAX_KEPT: usize = 1500;

const ASSETS: [(&str, &str, &str); 4] = [
    (
        "",
        "text/html; charset=utf-8",
        include_str!("../console/index.html"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("../console/app.js"),
    ),
    (
        "app.css",
        "text/css; charset=utf-8",
        include_str!("../console/app.css"),
    ),
    (
        "favicon.svg",
        "image/svg+xml",
        include_str!("../console/favicon.svg"),
    ),
];

/// Answers what the console needs without a token: its assets and `/v1/session`.
/// `None`: not one of those; the admin API goes on (and asks for the token).
pub fn open(token: Option<&str>, req: &http::Request<Incoming>) -> Option<Response> {
    if req.method() != Method::GET {
        return None;
    }
    let path = req.uri().path();
    if path == "/v1/session" {
        let body = serde_json::json!({
            "token_required": token.is_some(),
            "authorized": authorized(token, req),
        });
        return Some(answer(StatusCode::OK, "application/json", body.to_string()));
    }
    let asset = match path {
        "/ui" | "/ui/" | "/ui/index.html" => "",
        p => p.strip_prefix("/ui/")?,
    };
    Some(match ASSETS.iter().find(|(name, _, _)| *name == asset) {
        Some((_, kind, text)) => answer(StatusCode::OK, kind, *text),
        None => answer(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "no such console page; the console is at /ui\n",
        ),
    })
}

fn answer(status: StatusCode, kind: &str, body: impl Into<Bytes>) -> Response {
    let mut r = http::Response::new(full(body));
    *r.status_mut() = status;
    let h = r.headers_mut();
    if let Ok(v) = header::HeaderValue::from_str(kind) {
        h.insert(header::CONTENT_TYPE, v);
    }
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        header::HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        header::HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        header::HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-cache"),
    );
    r
}

/// Keeps the last [`HISTORY_MS`] of snapshots, serialized once, and sends each new one to
/// every subscriber.
pub struct LiveHub {
    history: Mutex<VecDeque<(u64, Bytes)>>,
    latest: Mutex<Option<LiveSnapshot>>,
    tx: broadcast::Sender<Bytes>,
}

impl Default for LiveHub {
    fn default() -> Self {
        LiveHub {
            history: Mutex::new(VecDeque::new()),
            latest: Mutex::new(None),
            tx: broadcast::channel(16).0,
        }
    }
}

impl LiveHub {
    /// Records `snapshot` and sends it to the subscribers.
    pub fn publish(&self, snapshot: &LiveSnapshot) {
        let Ok(json) = serde_json::to_vec(snapshot) else {
            return;
        };
        let json = Bytes::from(json);
        {
            let mut h = self.history.lock().unwrap_or_else(|p| p.into_inner());
            let horizon = snapshot.time_ms.saturating_sub(HISTORY_MS);
            while h
                .front()
                .is_some_and(|(t, _)| *t < horizon || h.len() >= MAX_KEPT)
            {
                h.pop_front();
            }
            h.push_back((snapshot.time_ms, json.clone()));
        }
        *self.latest.lock().unwrap_or_else(|p| p.into_inner()) = Some(snapshot.clone());
        // No subscriber is not an error.
        let _ = self.tx.send(json);
    }

    /// The last snapshot published.
    pub fn latest(&self) -> Option<LiveSnapshot> {
        self.latest
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Subscribers now.
    pub fn subscribers(&self) -> usize {
        self.tx.receiver_count()
    }

    /// A server-sent event stream: `history` (the kept snapshots, oldest first), then a
    /// `snapshot` event each second. A subscriber that falls behind skips what it missed.
    pub fn subscribe(self: &Arc<Self>) -> Response {
        let rx = self.tx.subscribe();
        let history = {
            let h = self.history.lock().unwrap_or_else(|p| p.into_inner());
            let mut all = Vec::with_capacity(h.iter().map(|(_, s)| s.len() + 1).sum::<usize>() + 2);
            all.push(b'[');
            for (i, (_, s)) in h.iter().enumerate() {
                if i > 0 {
                    all.push(b',');
                }
                all.extend_from_slice(s);
            }
            all.push(b']');
            all
        };
        let first = event("history", &history);
        let rest = futures::stream::unfold(rx, |mut rx| async move {
            loop {
                match rx.recv().await {
                    Ok(json) => return Some((event("snapshot", &json), rx)),
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        });
        let frames = futures::StreamExt::map(
            futures::StreamExt::chain(futures::stream::iter([first]), rest),
            |b| Ok::<_, std::convert::Infallible>(Frame::data(b)),
        );
        let body: AdminBody = StreamBody::new(frames).boxed_unsync();
        let mut r = http::Response::new(body);
        let h = r.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("text/event-stream"),
        );
        h.insert(
            header::CACHE_CONTROL,
            header::HeaderValue::from_static("no-store"),
        );
        r
    }
}

fn event(kind: &str, json: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(json.len() + kind.len() + 16);
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(kind.as_bytes());
    out.extend_from_slice(b"\ndata: ");
    out.extend_from_slice(json);
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(t: u64) -> LiveSnapshot {
        LiveSnapshot {
            time_ms: t,
            mode: "embedded".into(),
            nodes: vec![],
            functions: vec![],
        }
    }

    #[tokio::test]
    async fn a_subscriber_gets_the_history_then_each_snapshot() {
        let hub = Arc::new(LiveHub::default());
        for t in 0..(HISTORY_MS / 1000 + 5) {
            hub.publish(&snap(t * 1000));
        }
        let mut body = hub.subscribe().into_body();
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        let text = String::from_utf8(first.to_vec()).unwrap();
        let json = text
            .strip_prefix("event: history\ndata: ")
            .unwrap()
            .trim_end();
        let history: Vec<LiveSnapshot> = serde_json::from_str(json).unwrap();
        assert_eq!(history.len(), 301, "five minutes, both ends included");
        assert_eq!(history[0].time_ms, 4000, "the oldest kept");
        hub.publish(&snap(1_000_000));
        let next = body.frame().await.unwrap().unwrap().into_data().unwrap();
        let text = String::from_utf8(next.to_vec()).unwrap();
        assert!(
            text.starts_with("event: snapshot\ndata: {\"time_ms\":1000"),
            "{text}"
        );
        assert!(text.ends_with("\n\n"));
        assert_eq!(hub.subscribers(), 1);
    }
}
