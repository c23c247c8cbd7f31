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
//! Sandbox probes: `/fetch/<url>` (percent-encoded) makes an outgoing GET and answers
//! 200 with the body, 403 `denied` for `HTTP-request-denied`, 502 for other failures;
//! `/config/get/<key>` and `/config/all` read wasi:config; `/ambient/files`,
//! `/ambient/env` and `/ambient/socket/<port>` try what the sandbox must not allow and
//! say what happened; `/huge/random`, `/huge/kv`, `/huge/resources` and `/huge/fields`
//! ask the host to allocate more than it allows (each should trap or fail).
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
        "/print" => {
            // Whatever the caller sent, as a log line (the console must show it as text).
            println!("{}", String::from_utf8_lossy(req.body()));
            text(StatusCode::OK, "printed")
        }
        // The request's header names, one a line: what reached the function.
        "/headers" => text(
            StatusCode::OK,
            req.headers()
                .keys()
                .map(|k| format!("{k}\n"))
                .collect::<String>(),
        ),
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
            if let Some(r) = probe(rest) {
                return r;
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

/// The sandbox probes (see the crate docs); `None` when `rest` is not one.
fn probe(rest: &str) -> Option<Response> {
    use skiff_sdk::outbound;
    if let Some(url) = rest.strip_prefix("/fetch/") {
        let req = match http::Request::get(decode(url)).body(Vec::new()) {
            Ok(r) => r,
            Err(e) => return Some(text(StatusCode::BAD_REQUEST, e.to_string())),
        };
        return Some(match outbound::send(req) {
            Ok(res) => text(
                StatusCode::OK,
                format!(
                    "{} {}",
                    res.status().as_u16(),
                    String::from_utf8_lossy(res.body())
                ),
            ),
            Err(outbound::Error::Denied) => text(StatusCode::FORBIDDEN, "denied"),
            Err(e) => text(StatusCode::BAD_GATEWAY, e.to_string()),
        });
    }
    if let Some(key) = rest.strip_prefix("/config/get/") {
        return Some(match skiff_sdk::config::get(key) {
            Ok(Some(v)) => text(StatusCode::OK, v),
            Ok(None) => text(StatusCode::NOT_FOUND, "unset"),
            Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        });
    }
    Some(match rest {
        "/config/all" => match skiff_sdk::config::get_all() {
            Ok(mut all) => {
                all.sort();
                let keys: Vec<String> = all.into_iter().map(|(k, _)| k).collect();
                text(StatusCode::OK, keys.join(","))
            }
            Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        },
        "/ambient/files" => {
            let preopens = wasip2::filesystem::preopens::get_directories().len();
            let read = std::fs::read("/etc/passwd").map(|b| b.len());
            let list = std::fs::read_dir("/").map(|d| d.count());
            text(
                StatusCode::OK,
                format!("preopens={preopens} read={read:?} list={list:?}"),
            )
        }
        "/ambient/env" => {
            let mut keys: Vec<String> = std::env::vars().map(|(k, _)| k).collect();
            keys.sort();
            text(StatusCode::OK, keys.join(","))
        }
        _ => {
            if let Some(port) = rest.strip_prefix("/ambient/socket/") {
                return Some(text(StatusCode::OK, connect(port.parse().unwrap_or(80))));
            }
            return huge(rest);
        }
    })
}

/// Tries a TCP connection to 127.0.0.1:`port` through wasi:sockets directly.
fn connect(port: u16) -> String {
    use wasip2::sockets::network::{IpAddressFamily, IpSocketAddress, Ipv4SocketAddress};
    let network = wasip2::sockets::instance_network::instance_network();
    let socket = match wasip2::sockets::tcp_create_socket::create_tcp_socket(IpAddressFamily::Ipv4)
    {
        Ok(s) => s,
        Err(e) => return format!("create refused: {e:?}"),
    };
    let addr = IpSocketAddress::Ipv4(Ipv4SocketAddress {
        port,
        address: (127, 0, 0, 1),
    });
    if let Err(e) = socket.start_connect(&network, addr) {
        return format!("connect refused: {e:?}");
    }
    socket.subscribe().block();
    match socket.finish_connect() {
        Ok(_) => "connected".to_string(),
        Err(e) => format!("connect failed: {e:?}"),
    }
}

/// Asks the host to allocate without bound; each of these should trap or fail.
fn huge(rest: &str) -> Option<Response> {
    Some(match rest {
        "/huge/random" => {
            let bytes = wasip2::random::random::get_random_bytes(8 << 20);
            text(StatusCode::OK, format!("got {} random bytes", bytes.len()))
        }
        "/huge/kv" => {
            let value = vec![7u8; 32 << 20];
            match Store::open_default().and_then(|s| s.set("huge", &value)) {
                Ok(()) => text(StatusCode::OK, "stored 32 MiB"),
                Err(e) => text(StatusCode::PAYLOAD_TOO_LARGE, e.to_string()),
            }
        }
        "/huge/resources" => {
            let mut held = Vec::new();
            loop {
                held.push(wasip2::http::types::Fields::new());
                if held.len() % 100_000 == 0 {
                    std::hint::black_box(&held);
                }
            }
        }
        "/huge/fields" => {
            // 96 KiB of headers: within wasmtime's default bound, over Skiff's 64 KiB.
            let fields = wasip2::http::types::Fields::new();
            let value = vec![b'x'; 8 << 10];
            for i in 0..12u32 {
                if let Err(e) = fields.append(&format!("x-h{i}"), &value) {
                    return Some(text(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        format!("refused after {i} headers: {e:?}"),
                    ));
                }
            }
            text(StatusCode::OK, "added 96 KiB of headers")
        }
        _ => return None,
    })
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
            && let Some(b) = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
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
            .set(
                &format!("lat:{}", e.id),
                now.saturating_sub(sent).to_string(),
            )
            .map_err(|e| e.to_string());
    }
    println!(
        "event-run topic={} id={} attempt={}",
        e.topic, e.id, e.attempt
    );
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
