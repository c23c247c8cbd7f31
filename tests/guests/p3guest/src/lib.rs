//! A wasi:http 0.3 guest for the end-to-end tests: behaves by the last segment of the
//! path (so that it can be deployed under any route).
//!
//! * `…/count` — counts requests in a global (grows only when the instance is reused).
//! * `…/echo` — streams the request body back as it arrives.
//! * `…/hang` — waits a minute before answering (never, as far as a test can tell).
//! * `…/leak` — keeps 4 MiB more in a global on every request, until the memory
//!   limit retires the instance.
//! * `…/flaky` — traps on every tenth request its instance serves.
//! * `…/kv` — increments a key in its key-value store and publishes an event.
//! * `…/config` — reads `greeting` from wasi:config.
//! * `…/last` — what the event handler last stored.
//! * `…/boom` — traps at once.
//! * `…/fetch/<percent-encoded URL>` — GETs the URL through wasi:http@0.3's client and
//!   answers `<status> <body>`, or the error.
//!
//! Its event handler stores the instance's count of calls (HTTP and events) under
//! `last-event`, so a test sees whether deliveries reuse an instance.

use skiff_sdk::service::{Request, Streaming};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

static COUNT: AtomicU64 = AtomicU64::new(0);
static HOARD: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

async fn handle(req: Request) -> Result<http::Response<Vec<u8>>, String> {
    let n = COUNT.fetch_add(1, Ordering::Relaxed) + 1;
    let text = |s: String| Ok(http::Response::new(s.into_bytes()));
    let path = req.uri().path().to_string();
    if let Some((_, url)) = path.split_once("/fetch/") {
        return fetch(&decode(url)).await;
    }
    match path.rsplit('/').next().unwrap_or_default() {
        "count" => text(format!("{n}")),
        "hang" => {
            // A minute of waiting on the host's clock: far past any test's timeout.
            skiff_sdk::service::wasip3::clocks::monotonic_clock::wait_for(60_000_000_000).await;
            text("woke up".into())
        }
        "leak" => {
            let mut h = HOARD.lock().map_err(|e| e.to_string())?;
            h.push(vec![7u8; 4 << 20]);
            text(format!("holding {} MiB after {n} requests", h.len() * 4))
        }
        "flaky" => {
            if n % 10 == 0 {
                panic!("request {n} of this instance fails on purpose");
            }
            text(format!("ok {n}"))
        }
        "kv" => {
            let store = skiff_sdk::kv::Store::open_default().map_err(|e| e.to_string())?;
            let v = store.increment("hits", 1).map_err(|e| e.to_string())?;
            skiff_sdk::events::publish("p3.hit", format!("{v}").as_bytes())
                .map_err(|e| e.to_string())?;
            text(format!("hits {v}"))
        }
        "boom" => panic!("boom, on purpose"),
        "last" => {
            let store = skiff_sdk::kv::Store::open_default().map_err(|e| e.to_string())?;
            let v = store.get("last-event").map_err(|e| e.to_string())?;
            text(String::from_utf8_lossy(&v.unwrap_or_default()).into_owned())
        }
        "config" => text(skiff_sdk::config::get("greeting").map_err(|e| e.to_string())?.unwrap_or_default()),
        _ => Ok(http::Response::builder()
            .status(404)
            .body(format!("no {path}").into_bytes())
            .map_err(|e| e.to_string())?),
    }
}

async fn entry(req: Request) -> Either {
    if req.uri().path().ends_with("/echo") {
        return Either::Stream(Streaming(http::Response::new(req.into_body())));
    }
    Either::Whole(handle(req).await)
}

enum Either {
    Stream(Streaming<skiff_sdk::service::IncomingRequestBody>),
    Whole(Result<http::Response<Vec<u8>>, String>),
}

impl skiff_sdk::service::IntoServiceResponse for Either {
    fn into_wasi(
        self,
    ) -> Result<skiff_sdk::service::wasip3::http::types::Response, skiff_sdk::service::ErrorCode> {
        match self {
            Either::Stream(s) => s.into_wasi(),
            Either::Whole(w) => w.into_wasi(),
        }
    }
}

skiff_sdk::http_service!(entry);

fn on_event(_event: skiff_sdk::events::Event) -> Result<(), String> {
    let n = COUNT.fetch_add(1, Ordering::Relaxed) + 1;
    let store = skiff_sdk::kv::Store::open_default().map_err(|e| e.to_string())?;
    store
        .set("last-event", n.to_string().as_bytes())
        .map_err(|e| e.to_string())
}

skiff_sdk::event_handler!(on_event);

async fn fetch(url: &str) -> Result<http::Response<Vec<u8>>, String> {
    let req = http::Request::get(url)
        .body(String::new())
        .map_err(|e| e.to_string())?;
    let text = match skiff_sdk::service::send(req).await {
        Ok(resp) => {
            let status = resp.status().as_u16();
            let body = skiff_sdk::service::read_body(resp.into_body(), 1 << 20)
                .await
                .map_err(|e| e.to_string())?;
            format!("{status} {}", String::from_utf8_lossy(&body))
        }
        Err(e) => format!("error: {e:?}"),
    };
    Ok(http::Response::new(text.into_bytes()))
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
