//! A test guest that misbehaves on purpose and probes the host, one path each (below
//! whatever route it is deployed on):
//! `/trap` panics, `/loop` spins forever, `/grow` allocates without bound,
//! `/sleep/<ms>` sleeps, `/sleep-on/<port>/<ms>` sleeps only on the node whose listener
//! has that port (it reads the `Host` the request was sent to), `/size` answers the body's length, `/version` answers `[env] VERSION`,
//! `/kv/set/<key>` stores the body, `/kv/get/<key>` answers it,
//! `/kv/bucket/<bucket>/get/<key>` reads from a bucket of any name,
//! `/kvbench/<n>` times n sets and n gets from inside the guest,
//! `/publish/<topic>` publishes the body and answers 200, `/publish-then-trap/<topic>`
//! publishes and then traps.
//!
//! Its event handler logs every run (`event-run topic=… id=… attempt=…`) and, by topic:
//! `*.fail-twice` fails on attempts 1 and 2, `*.always` always fails, `*.trap` traps,
//! `*.slow` takes 200 ms,
//! `bench.*` stores its publish-to-handler latency (the payload is the publication time in
//! µs since the Unix epoch) under `lat:<event id>`, anything else succeeds.

use skiff_sdk::events::{self, Event};
use skiff_sdk::kv::Store;
use skiff_sdk::{Request, Response, http::StatusCode, text};
use std::time::Instant;

fn handle(req: Request) -> Response {
    let path = req.uri().path();
    // Skip the route's first segment so that copies can be deployed under other names.
    let rest = match path.get(1..).and_then(|p| p.find('/')) {
        Some(i) => &path[i + 1..],
        None => "/",
    };
    match rest {
        "/trap" => panic!("misbehave: asked to trap"),
        "/loop" => {
            let mut n: u64 = 0;
            loop {
                n = std::hint::black_box(n.wrapping_add(1));
            }
        }
        "/grow" => {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(vec![1u8; 1 << 20]);
                std::hint::black_box(&hoard);
            }
        }
        "/size" => text(StatusCode::OK, req.body().len().to_string()),
        "/version" => text(
            StatusCode::OK,
            std::env::var("VERSION").unwrap_or_else(|_| "unset".into()),
        ),
        _ => {
            if let Some(key) = rest.strip_prefix("/kv/set/") {
                return match Store::open_default().and_then(|s| s.set(key, req.body())) {
                    Ok(()) => text(StatusCode::OK, "stored"),
                    Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
                };
            }
            if let Some(key) = rest.strip_prefix("/kv/get/") {
                return get(Store::open_default(), key);
            }
            if let Some(tail) = rest.strip_prefix("/kv/bucket/") {
                let Some((bucket, key)) = tail.split_once("/get/") else {
                    return text(StatusCode::BAD_REQUEST, "use /kv/bucket/<bucket>/get/<key>");
                };
                let bucket = decode(bucket);
                return get(Store::open(&bucket), key);
            }
            if let Some(topic) = rest.strip_prefix("/publish/") {
                return match events::publish(topic, req.body()) {
                    Ok(id) => text(StatusCode::OK, id),
                    Err(e) => text(StatusCode::BAD_REQUEST, e.to_string()),
                };
            }
            if let Some(topic) = rest.strip_prefix("/publish-then-trap/") {
                let _ = events::publish(topic, req.body());
                panic!("misbehave: published to {topic}, then trapped");
            }
            if let Some(n) = rest.strip_prefix("/kvbench/") {
                return kvbench(n.parse().unwrap_or(1000));
            }
            if let Some(args) = rest.strip_prefix("/sleep-on/") {
                let (port, ms) = args.split_once('/').unwrap_or((args, "100"));
                let host = req
                    .uri()
                    .authority()
                    .map(|a| a.as_str().to_string())
                    .or_else(|| {
                        req.headers()
                            .get("host")
                            .and_then(|h| h.to_str().ok())
                            .map(str::to_string)
                    })
                    .unwrap_or_default();
                if host.ends_with(&format!(":{port}")) {
                    let ms: u64 = ms.parse().unwrap_or(100);
                    std::thread::sleep(std::time::Duration::from_millis(ms));
                    return text(StatusCode::OK, format!("slept {ms}ms on {host}"));
                }
                return text(StatusCode::OK, format!("fast on {host}"));
            }
            if let Some(ms) = rest.strip_prefix("/sleep/") {
                let ms: u64 = ms.parse().unwrap_or(100);
                std::thread::sleep(std::time::Duration::from_millis(ms));
                return text(StatusCode::OK, format!("slept {ms}ms"));
            }
            text(StatusCode::NOT_FOUND, format!("no behaviour at {rest}"))
        }
    }
}

fn get(store: Result<Store, skiff_sdk::kv::Error>, key: &str) -> Response {
    match store.and_then(|s| s.get(key)) {
        Ok(Some(v)) => text(StatusCode::OK, String::from_utf8_lossy(&v).into_owned()),
        Ok(None) => text(StatusCode::NOT_FOUND, "not set"),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// `%XX` escapes decoded, so a test can pass any bytes as a bucket name.
fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(b) = s.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Times `n` sets and `n` gets of 100-byte values, as the guest sees them.
fn kvbench(n: usize) -> Response {
    let store = match Store::open("bench") {
        Ok(s) => s,
        Err(e) => return text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let value = [7u8; 100];
    let mut sets = Vec::with_capacity(n);
    let mut gets = Vec::with_capacity(n);
    for i in 0..n {
        let key = format!("k{i}");
        let t = Instant::now();
        if let Err(e) = store.set(&key, value) {
            return text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
        }
        sets.push(t.elapsed().as_nanos() as u64);
    }
    for i in 0..n {
        let key = format!("k{i}");
        let t = Instant::now();
        if let Err(e) = store.get(&key) {
            return text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
        }
        gets.push(t.elapsed().as_nanos() as u64);
    }
    let q = |v: &mut Vec<u64>, p: f64| {
        v.sort_unstable();
        v[((v.len() as f64 * p) as usize).min(v.len() - 1)]
    };
    text(
        StatusCode::OK,
        format!(
            "{{\"set_p50_ns\":{},\"set_p99_ns\":{},\"get_p50_ns\":{},\"get_p99_ns\":{}}}",
            q(&mut sets, 0.5),
            q(&mut sets, 0.99),
            q(&mut gets, 0.5),
            q(&mut gets, 0.99)
        ),
    )
}

fn on_event(e: Event) -> Result<(), String> {
    if e.topic.starts_with("bench.") {
        let sent: u128 = String::from_utf8_lossy(&e.data).trim().parse().unwrap_or(0);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros())
            .unwrap_or(0);
        let store = Store::open_default().map_err(|e| e.to_string())?;
        return store
            .set(&format!("lat:{}", e.id), now.saturating_sub(sent).to_string())
            .map_err(|e| e.to_string());
    }
    println!("event-run topic={} id={} attempt={}", e.topic, e.id, e.attempt);
    let last = e.topic.rsplit('.').next().unwrap_or("");
    match last {
        "fail-twice" if e.attempt < 3 => Err(format!("attempt {} fails on purpose", e.attempt)),
        "always" => Err("this handler always fails".to_string()),
        "trap" => panic!("misbehave: event handler trapped"),
        "slow" => {
            std::thread::sleep(std::time::Duration::from_millis(200));
            Ok(())
        }
        _ => Ok(()),
    }
}

skiff_sdk::http_handler!(handle);
skiff_sdk::event_handler!(on_event);
