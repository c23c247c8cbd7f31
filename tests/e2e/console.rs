//! The web console at `/ui`, in a real headless Chromium driven over WebDriver
//! (chromedriver, from Debian's `chromium-driver`; tests/setup.sh installs it): the
//! cluster overview goes live, a function's log streams, a workflow's trace shows its
//! steps, a dead letter is replayed, nothing shows without the token, what a guest logs
//! stays text, and no page logs a console error.

use crate::cluster::Cluster;
use crate::harness::*;
use fantoccini::{Client, ClientBuilder, Locator};
use skiff_core::testkit::free_port;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A headless Chromium behind its own chromedriver.
struct Browser {
    driver: Child,
    port: u16,
    client: Client,
}

impl Browser {
    async fn start() -> Browser {
        let port = free_port().unwrap();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (Debian's chromium-driver; run `bash tests/setup.sh`)");
        let up = wait_until(Duration::from_secs(20), async || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        })
        .await;
        assert!(up, "chromedriver did not listen on {port}");
        let caps = serde_json::json!({
            "goog:chromeOptions": {
                // No background networking: this machine's network is closed, and
                // Chromium's own connections would fail by the dozen.
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1280,1000",
                         "--no-first-run", "--disable-background-networking",
                         "--disable-component-update", "--disable-sync", "--disable-quic"]
            },
            "goog:loggingPrefs": { "browser": "ALL" }
        });
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps.as_object().unwrap().clone())
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .expect("a WebDriver session");
        Browser {
            driver,
            port,
            client,
        }
    }

    /// What the page logged at error level since the last call (console errors, failed
    /// loads, CSP violations).
    async fn console_errors(&self) -> Vec<String> {
        let sid = self.client.session_id().await.unwrap().unwrap();
        let r = request(
            "POST",
            &format!("http://127.0.0.1:{}/session/{sid}/se/log", self.port),
            &[("content-type", "application/json")],
            r#"{"type":"browser"}"#.into(),
        )
        .await;
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        v["value"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["level"] == "SEVERE")
            .map(|e| e["message"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    /// Runs `script` with `css` as its argument and returns its value. One script reads
    /// the DOM at one instant: the console re-renders a view on every snapshot, so an
    /// element found by one WebDriver call may be stale by the next.
    async fn query(&self, script: &str, css: &str) -> serde_json::Value {
        self.client
            .execute(script, vec![css.into()])
            .await
            .unwrap_or_default()
    }

    /// The text of the first element matching `css` ("" when there is none).
    async fn text(&self, css: &str) -> String {
        let v = self
            .query(
                "const e = document.querySelector(arguments[0]); return e ? e.innerText : '';",
                css,
            )
            .await;
        v.as_str().unwrap_or_default().to_string()
    }

    /// The texts of every element matching `css`.
    async fn texts(&self, css: &str) -> Vec<String> {
        let v = self
            .query(
                "return [...document.querySelectorAll(arguments[0])].map((e) => e.innerText);",
                css,
            )
            .await;
        serde_json::from_value(v).unwrap_or_default()
    }

    async fn wait_text(&self, css: &str, max: Duration, f: impl Fn(&str) -> bool) -> bool {
        wait_until(max, async || f(&self.text(css).await)).await
    }

    async fn count(&self, css: &str) -> usize {
        self.texts(css).await.len()
    }

    /// Clicks the first element matching `css`, finding it again if a re-render made
    /// the one found stale.
    async fn click(&self, css: &str) {
        let mut last = String::new();
        for _ in 0..20 {
            match self.client.find(Locator::Css(css)).await {
                Ok(e) => match e.click().await {
                    Ok(_) => return,
                    Err(err) => last = err.to_string(),
                },
                Err(err) => last = err.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("could not click {css}: {last}");
    }

    async fn close(mut self) {
        let _ = self.client.clone().close().await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Whether a JavaScript dialog (alert, confirm) is open.
async fn dialog_open(b: &Browser) -> bool {
    b.client.get_alert_text().await.is_ok()
}

/// The console's page and assets: under 200 KB together, each with the strict CSP.
#[tokio::test(flavor = "multi_thread")]
async fn the_console_weighs_under_200_kb_and_forbids_inline_script() {
    let _gate = crate::gate::beside_others().await;
    let skiff = Skiff::start(&["--token", "t"]);
    let mut total = 0;
    for asset in ["/ui", "/ui/app.js", "/ui/app.css", "/ui/favicon.svg"] {
        let r = get(&format!("{}{asset}", skiff.admin)).await;
        assert_eq!(r.status, 200, "{asset} needs no token");
        let csp = r.headers["content-security-policy"].to_str().unwrap();
        assert!(
            csp.contains("script-src 'self'") && !csp.contains("unsafe"),
            "{csp}"
        );
        total += r.body.len();
    }
    println!("console page and assets: {total} bytes");
    assert!(total < 200 * 1024, "{total} bytes");
    // Nothing else answers without the token: not the stream, not a function.
    for path in ["/v1/stream", "/v1/status", "/v1/functions"] {
        assert_eq!(
            get(&format!("{}{path}", skiff.admin)).await.status,
            401,
            "{path}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn without_the_token_the_console_shows_a_login_and_no_data() {
    let _gate = crate::gate::beside_others().await;
    let skiff = Skiff::start(&["--token", "console-s3cret"]);
    deploy_misbehave(&skiff, tempfile::tempdir().unwrap().path(), "secretfn", "");
    let b = Browser::start().await;
    b.client.goto(&format!("{}/ui", skiff.admin)).await.unwrap();
    let login = wait_until(Duration::from_secs(10), async || {
        b.client
            .find(Locator::Id("login"))
            .await
            .unwrap()
            .is_displayed()
            .await
            .unwrap_or(false)
    })
    .await;
    assert!(login, "no login form");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let page = b.client.source().await.unwrap();
    assert!(
        !page.contains("secretfn"),
        "data reached the page without a token"
    );
    assert_eq!(b.count("#nodes .card").await, 0);
    // A wrong token is refused; the right one shows the data.
    b.client
        .find(Locator::Id("token"))
        .await
        .unwrap()
        .send_keys("wrong")
        .await
        .unwrap();
    b.click("#login-form button").await;
    assert!(
        b.wait_text("#login-error", Duration::from_secs(5), |t| t
            .contains("not this server"))
            .await
    );
    let input = b.client.find(Locator::Id("token")).await.unwrap();
    input.clear().await.unwrap();
    input.send_keys("console-s3cret").await.unwrap();
    b.click("#login-form button").await;
    assert!(
        b.wait_text("#functions", Duration::from_secs(10), |t| t
            .contains("secretfn"))
            .await
    );
    // The token is in sessionStorage and in no URL.
    assert!(
        !b.client
            .current_url()
            .await
            .unwrap()
            .as_str()
            .contains("s3cret")
    );
    // The functions page lists it too.
    b.client
        .goto(&format!("{}/ui#/functions", skiff.admin))
        .await
        .unwrap();
    assert!(
        b.wait_text("#functions", Duration::from_secs(10), |t| t
            .contains("secretfn"))
            .await
    );
    let errors = b.console_errors().await;
    assert!(errors.is_empty(), "console errors: {errors:?}");
    // Writes need the token too.
    let r = request(
        "POST",
        &format!("{}/v1/functions/secretfn/dead-letters/replay", skiff.admin),
        &[],
        "".into(),
    )
    .await;
    assert_eq!(r.status, 401);
    b.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_functions_log_streams_and_guest_html_stays_text() {
    let _gate = crate::gate::beside_others().await;
    let skiff = Skiff::start(&[]);
    deploy_misbehave(&skiff, tempfile::tempdir().unwrap().path(), "loud", "");
    let b = Browser::start().await;
    b.client
        .goto(&format!("{}/ui#/functions/loud", skiff.admin))
        .await
        .unwrap();
    assert!(
        b.wait_text("#manifest", Duration::from_secs(10), |t| t
            .contains("name = \"loud\""))
            .await
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let print = |text: &'static str| {
        let url = format!("{}/loud/print", skiff.listen);
        async move { request("POST", &url, &[], text.into()).await }
    };
    let sent = Instant::now();
    assert_eq!(print("console line one").await.status, 200);
    let shown = b
        .wait_text("#log", Duration::from_secs(5), |t| {
            t.contains("console line one")
        })
        .await;
    let took = sent.elapsed();
    println!("log line to the console: {took:?}");
    assert!(shown && took < Duration::from_secs(1), "took {took:?}");

    print("<img src=x onerror=alert(1)>").await;
    print("<script>window.pwned = 1</script>").await;
    assert!(
        b.wait_text("#log", Duration::from_secs(5), |t| t
            .contains("<script>window.pwned"))
            .await
    );
    assert!(
        b.text("#log")
            .await
            .contains("<img src=x onerror=alert(1)>")
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!dialog_open(&b).await, "a guest's log line opened a dialog");
    assert_eq!(b.count("#log img, #log script").await, 0);
    let pwned = b
        .client
        .execute("return window.pwned === undefined", vec![])
        .await
        .unwrap();
    assert_eq!(pwned, serde_json::json!(true), "a guest's script ran");
    let errors = b.console_errors().await;
    assert!(errors.is_empty(), "console errors: {errors:?}");
    // The check itself sees errors: one logged on purpose is reported.
    b.client
        .execute("console.error('planted error')", vec![])
        .await
        .unwrap();
    let errors = b.console_errors().await;
    assert!(
        errors.iter().any(|e| e.contains("planted error")),
        "{errors:?}"
    );
    b.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_order_workflows_trace_shows_its_three_steps() {
    let _gate = crate::gate::beside_others().await;
    build_guests();
    let skiff = Skiff::start(&[]);
    let trace = place_order(&skiff, "c1").await;
    let b = Browser::start().await;
    b.client
        .goto(&format!("{}/ui#/traces", skiff.admin))
        .await
        .unwrap();
    b.client
        .find(Locator::Id("trace-id"))
        .await
        .unwrap()
        .send_keys(&trace)
        .await
        .unwrap();
    b.click("#view form button").await;
    let three = wait_until(Duration::from_secs(15), async || {
        if b.count("#trace li.span").await == 3 {
            return true;
        }
        let _ = b.client.refresh().await; // the later steps may not have ended yet
        tokio::time::sleep(Duration::from_millis(300)).await;
        false
    })
    .await;
    let tree = b.text("#trace").await;
    assert!(three, "{tree}");
    for step in [
        "http /orders",
        "event orders.created",
        "event payments.completed",
    ] {
        assert!(tree.contains(step), "{step} missing from {tree}");
    }
    // Nested: the payment step under the HTTP step, the notification under it.
    assert_eq!(
        b.count("#trace ul.tree li.span ul.tree li.span ul.tree li.span")
            .await,
        1
    );
    let errors = b.console_errors().await;
    assert!(errors.is_empty(), "console errors: {errors:?}");
    b.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_letter_is_replayed_after_confirmation() {
    let _gate = crate::gate::beside_others().await;
    let skiff = Skiff::start(&[]);
    deploy_misbehave(
        &skiff,
        tempfile::tempdir().unwrap().path(),
        "fails",
        "[[events]]\ntopic = \"jobs.>\"\nmax_attempts = 1\n",
    );
    skiff.cli_ok(&["publish", "jobs.always", "payload <b>bold</b>"]);
    let dead = wait_until(Duration::from_secs(15), async || {
        skiff
            .cli_ok(&["dead-letters", "ls", "fails"])
            .contains("jobs.always")
    })
    .await;
    assert!(dead, "no dead letter");
    let b = Browser::start().await;
    b.client
        .goto(&format!("{}/ui#/functions/fails", skiff.admin))
        .await
        .unwrap();
    assert!(
        b.wait_text("#dead-letters", Duration::from_secs(10), |t| t
            .contains("jobs.always"))
            .await
    );
    assert!(
        b.text("#dead-letters")
            .await
            .contains("payload <b>bold</b>"),
        "the payload as text"
    );
    b.click("#dead-letters button.replay").await;
    assert!(b.text("#dead-letters").await.contains("Replay this event?"));
    b.click("#dead-letters button.confirm").await;
    assert!(
        b.wait_text("#dead-letters", Duration::from_secs(10), |t| t
            .contains("replayed"))
            .await
    );
    // The replayed event ran again (and failed again: a new attempt in the log).
    let again = wait_until(Duration::from_secs(10), async || {
        skiff
            .cli_ok(&["logs", "fails"])
            .matches("topic=jobs.always")
            .count()
            >= 2
    })
    .await;
    assert!(again, "{}", skiff.cli_ok(&["logs", "fails"]));
    let errors = b.console_errors().await;
    assert!(errors.is_empty(), "console errors: {errors:?}");
    b.close().await;
}

/// The overview of a 3-node cluster, through the scheduler: every node listed, and
/// requests/s rising within 2 s of starting load.
#[tokio::test(flavor = "multi_thread")]
async fn the_cluster_overview_lists_every_node_and_goes_live_under_load() {
    let _alone = crate::gate::alone().await;
    let cluster = Cluster::start(3);
    cluster.deploy_example("hello");
    let b = Browser::start().await;
    b.client
        .goto(&format!("{}/ui", cluster.scheduler.admin))
        .await
        .unwrap();
    let all = wait_until(Duration::from_secs(20), async || {
        b.count("#nodes .card").await == 3
    })
    .await;
    assert!(all, "{}", b.text("#view").await);
    let cards = b.text("#nodes").await;
    for n in ["n1", "n2", "n3"] {
        assert!(cards.contains(n), "{n} missing: {cards}");
    }
    let rps = async || -> f64 {
        b.texts("#nodes .rps")
            .await
            .iter()
            .map(|t| t.trim().parse::<f64>().unwrap_or(0.0))
            .sum()
    };
    assert_eq!(rps().await, 0.0, "requests/s before any load");
    // Each snapshot updates the page in place: a card outlives the re-render, so a click
    // or a text selection on it is not lost.
    let mark =
        "const c = document.querySelector(arguments[0]); if (c) c.skiffMark = 1; return !!c;";
    assert_eq!(b.query(mark, "#nodes .card[data-node=n1]").await, true);
    let url = format!("{}/hello/load", cluster.scheduler.listen);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let c = client();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let req = http::Request::get(&url).body(body("")).unwrap();
                let _ = send(&c, req).await;
            }
        })
    };
    let started = Instant::now();
    let rose = wait_until(Duration::from_secs(5), async || rps().await > 0.0).await;
    let took = started.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    load.await.unwrap();
    println!("requests/s rose on the overview after {took:?}");
    assert!(rose && took <= Duration::from_secs(2), "took {took:?}");
    let kept = "const c = document.querySelector(arguments[0]); return c?.skiffMark === 1;";
    assert_eq!(
        b.query(kept, "#nodes .card[data-node=n1]").await,
        true,
        "the n1 card was replaced, not updated, by a snapshot"
    );
    let errors = b.console_errors().await;
    assert!(errors.is_empty(), "console errors: {errors:?}");
    b.close().await;
}
