//! Cluster security: NATS over TLS with NKey users and least-privilege permissions
//! (deploy/nats/permissions.conf), signed function records, and nodes that answer only
//! their scheduler. Every server here is the real one, secured as deploy/ documents.

use crate::cluster::{one_at_a_time, small_cluster};
use crate::harness::*;
use async_nats::jetstream;
use skiff_core::cluster_registry::{ARTIFACTS, BUCKET, ClusterRegistry};
use skiff_core::control::ControlStore;
use skiff_core::nats::ConnectError;
use skiff_core::nats_auth::NatsAuth;
use skiff_core::signing::RecordSigner;
use skiff_core::testkit::{NatsServer, Role, secured};
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Connects to `url` as `auth` presents itself.
async fn connect(url: &str, auth: &NatsAuth) -> Result<async_nats::Client, ConnectError> {
    skiff_core::nats::connect(url, "security-test", auth).await
}

#[tokio::test(flavor = "multi_thread")]
async fn nats_refuses_strangers_and_plaintext_and_a_node_cannot_deploy() {
    let _gate = crate::gate::beside_others().await;
    let tmp = tempfile::tempdir().unwrap();
    let nats = NatsServer::start(&tmp.path().join("nats")).expect("nats");
    let url = nats.url();
    let s = secured();

    // No credentials, though TLS verifies: refused, and said to be the credentials.
    let tls_only = NatsAuth {
        tls_ca: Some(s.ca.clone()),
        ..NatsAuth::default()
    };
    match connect(&url, &tls_only).await {
        Err(e @ ConnectError::Refused { .. }) => {
            assert!(e.to_string().contains("credentials"), "{e}")
        }
        other => panic!("a client without credentials was not refused: {other:?}"),
    }
    // Credentials, but the server's CA not trusted: refused, naming the flag.
    let no_ca = NatsAuth {
        nkey: Some(s.seed(Role::Node).to_path_buf()),
        ..NatsAuth::default()
    };
    match connect(&url, &no_ca).await {
        Err(e @ ConnectError::Refused { .. }) => {
            assert!(e.to_string().contains("--nats-tls-ca"), "{e}")
        }
        other => panic!("a server from an unknown CA was trusted: {other:?}"),
    }
    // Plaintext: the server answers a CONNECT without TLS with an error, never a PONG.
    let port = url.rsplit(':').next().unwrap();
    let mut raw = std::net::TcpStream::connect(format!("127.0.0.1:{port}")).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut info = [0u8; 4096];
    let n = raw.read(&mut info).unwrap();
    let info = String::from_utf8_lossy(&info[..n]);
    assert!(info.contains("\"tls_required\":true"), "{info}");
    let _ = raw.write_all(b"CONNECT {\"verbose\":false}\r\nPING\r\n");
    let mut answer = Vec::new();
    let _ = raw.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        !answer.contains("PONG"),
        "a plaintext client was served: {answer}"
    );

    // The scheduler's user sets up the registry; a node's user can read it but not write
    // a record, a secret or an artifact, nor remove the registry.
    let operator = connect(&url, &s.auth(Role::Scheduler)).await.unwrap();
    let registry = ClusterRegistry::open(&jetstream::new(operator.clone()), 1)
        .await
        .unwrap();
    let as_node = connect(&url, &s.auth(Role::Node)).await.unwrap();
    let mut js = jetstream::new(as_node.clone());
    js.set_timeout(Duration::from_secs(2));
    let kv = js
        .get_key_value(BUCKET)
        .await
        .expect("a node reads the registry");
    assert!(
        kv.get("fn.anything").await.is_ok(),
        "a node could not read the registry"
    );
    let record = br#"{"name":"evil","version":1,"manifest":"name = \"evil\"","artifact":"00","deployed_at_ms":0}"#;
    assert!(
        kv.put("fn.evil", record.to_vec().into()).await.is_err(),
        "a node wrote a function record"
    );
    assert!(
        kv.put("sec.evil.k", b"x".to_vec().into()).await.is_err(),
        "a node wrote a secret"
    );
    let objects = js
        .get_object_store(ARTIFACTS)
        .await
        .expect("a node reads artifacts");
    let mut bytes: &[u8] = b"\0asm\x0d\0\x01\0evil";
    assert!(
        objects.put("evil", &mut bytes).await.is_err(),
        "a node wrote an artifact"
    );
    assert!(
        js.delete_stream(format!("KV_{BUCKET}")).await.is_err(),
        "a node deleted the registry"
    );
    // Nothing got through, as the scheduler's user sees it.
    assert_eq!(registry.record("evil").await.unwrap(), None);
    assert!(registry.artifacts().await.unwrap().is_empty());
    // What a node needs still works: state and events.
    let state = js
        .get_or_create_stream(jetstream::stream::Config {
            name: "SECURITY_STATE_PROBE".into(),
            subjects: vec!["state.probe.>".into()],
            ..Default::default()
        })
        .await
        .expect("a node creates a state stream");
    js.publish("state.probe.k", "v".into())
        .await
        .expect("publish")
        .await
        .expect("a node writes state");
    drop(state);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_record_not_signed_by_the_scheduler_never_runs_and_the_last_good_serves() {
    let _one = one_at_a_time().await;
    let c = small_cluster(&["n1", "n2"]);
    let (url, scheduler, nodes) = (&c.url, &c.scheduler, &c.nodes);
    let hello = repo().join("functions/hello");
    assert!(scheduler.cli_ok(&["ls"]).contains("hello"));

    // Someone with the scheduler's NATS credentials but another key writes version 2,
    // pointing at other code they uploaded.
    let operator = connect(url, &operator_auth()).await.unwrap();
    let forger = RecordSigner::generate().unwrap();
    let registry = ClusterRegistry::open(&jetstream::new(operator), 1)
        .await
        .unwrap();
    let other = std::fs::read(guest("tests/guests", "misbehave.wasm")).unwrap();
    let sha = registry.put_artifact(&other).await.unwrap();
    let mut forged = registry.record("hello").await.unwrap().expect("hello v1");
    forged.version = 2;
    forged.artifact = sha;
    forger.sign(&mut forged);
    registry.put(&forged).await.unwrap();

    // Every node refuses it, says why, counts it; v1 keeps serving everywhere.
    for n in nodes {
        let mut report = String::new();
        let refused = wait_until(Duration::from_secs(10), async || {
            report = get(&format!("{}/v1/report", n.admin)).await.text();
            report.contains("does not verify")
        })
        .await;
        assert!(refused, "a node did not refuse the forged record: {report}");
        let metrics = get(&format!("{}/metrics", n.admin)).await.text();
        assert!(
            metric(&metrics, "skiff_untrusted_records_total", "hello", "") >= 1.0,
            "{metrics}"
        );
        let r = get(&format!("{}/hello/x", n.listen)).await;
        assert_eq!(r.status, 200);
        assert_eq!(
            r.headers
                .get("x-skiff-version")
                .and_then(|v| v.to_str().ok()),
            Some("1")
        );
        assert!(
            n.log().contains("not signed by the trusted key"),
            "{}",
            n.log()
        );
    }
    let mut status = String::new();
    let shown = wait_until(Duration::from_secs(5), async || {
        status = scheduler.cli_ok(&["status"]);
        status.matches("does not verify").count() == 2
    })
    .await;
    assert!(
        shown,
        "skiff status does not say why on both nodes: {status}"
    );
    let r = get(&format!("{}/hello/x", scheduler.listen)).await;
    assert_eq!(r.status, 200);

    // The scheduler's own deploys still run, signed with its key, numbered above the
    // forgery.
    let out = scheduler.cli_ok(&[
        "deploy",
        hello.to_str().unwrap(),
        "--no-build",
        "--wait-all",
    ]);
    assert!(out.contains("deployed hello v3"), "{out}");
    for n in nodes {
        let r = get(&format!("{}/hello/x", n.listen)).await;
        assert_eq!(
            r.headers
                .get("x-skiff-version")
                .and_then(|v| v.to_str().ok()),
            Some("3")
        );
    }
    let cleared = wait_until(Duration::from_secs(5), async || {
        status = scheduler.cli_ok(&["status"]);
        !status.contains("FAILED")
    })
    .await;
    assert!(cleared, "{status}");
}

#[tokio::test(flavor = "multi_thread")]
async fn nodes_answer_only_the_scheduler() {
    let _one = one_at_a_time().await;
    let c = small_cluster(&["n1"]);
    let (scheduler, n1) = (&c.scheduler, &c.nodes[0]);

    let raw = async |url: &str, token: Option<&str>| {
        let mut req = http::Request::builder().uri(url);
        if let Some(t) = token {
            req = req.header(CLUSTER_TOKEN_HEADER, t);
        }
        send_unstamped(&client(), req.body(body("")).unwrap())
            .await
            .unwrap()
    };
    for url in [
        format!("{}/hello/x", n1.listen),
        format!("{}/v1/status", n1.admin),
        format!("{}/metrics", n1.admin),
    ] {
        let r = raw(&url, None).await;
        assert_eq!(r.status, 401, "{url}: {}", r.text());
        assert!(r.text().contains("through the scheduler"), "{}", r.text());
        let wrong = "x".repeat(64);
        assert_eq!(raw(&url, Some(&wrong)).await.status, 401, "{url}");
        assert_eq!(
            raw(&url, Some(&cluster_keys().token)).await.status,
            200,
            "{url}"
        );
    }
    assert_eq!(
        raw(&format!("{}/healthz", n1.admin), None).await.status,
        200
    );
    // Through the scheduler: served, whatever token a client sends, and the function
    // never sees the token header (the guest lists the header names it received).
    let dirs = tempfile::tempdir().unwrap();
    deploy_misbehave(scheduler, dirs.path(), "peek", "");
    let url = format!("{}/peek/headers", scheduler.listen);
    let r = request(
        "GET",
        &url,
        &[(CLUSTER_TOKEN_HEADER, "client-chosen"), ("x-probe", "1")],
        bytes::Bytes::new(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains("x-probe"), "{}", r.text());
    assert!(!r.text().contains(CLUSTER_TOKEN_HEADER), "{}", r.text());
    // The scheduler's calls to the node's admin API carry it too.
    scheduler.cli_ok(&["logs", "hello"]);
    assert!(scheduler.cli_ok(&["status"]).contains("1 live node(s)"));
}

/// Runs `skiff ARGS` expecting it to refuse to start: answers its stderr.
pub(crate) fn refused_start(args: &[String]) -> String {
    let mut child = Command::new(skiff_bin())
        .args(args)
        .args(["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .env_remove("SKIFF_NATS")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            assert!(!status.success(), "skiff {args:?} started: {err}");
            return err;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("skiff {args:?} kept running with bad credentials");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_credentials_stop_the_start_and_name_the_flag() {
    let _gate = crate::gate::beside_others().await;
    let tmp = tempfile::tempdir().unwrap();
    let nats = NatsServer::start(&tmp.path().join("nats")).expect("nats");
    let url = nats.url();
    let s = secured();
    let path = |p: &Path| p.display().to_string();
    let node_args = |dir: &str, extra: &[String]| {
        let mut a: Vec<String> = ["node", "--nats", &url, "--name", "bad", "--data-dir"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        a.push(tmp.path().join(dir).display().to_string());
        a.extend_from_slice(extra);
        a
    };

    // An NKey the server does not know.
    let stranger = tmp.path().join("stranger.nk");
    let out = Command::new(skiff_bin())
        .args(["keygen", "--nats"])
        .arg(&stranger)
        .output()
        .unwrap();
    assert!(out.status.success());
    let err = refused_start(&node_args(
        "a",
        &[
            "--nats-nkey".into(),
            path(&stranger),
            "--nats-tls-ca".into(),
            path(&s.ca),
        ],
    ));
    assert!(
        err.contains("refused this process's credentials") && err.contains("--nats-nkey"),
        "{err}"
    );

    // A server certificate from a CA this node does not trust.
    let other_ca = tmp.path().join("other-ca");
    let made = Command::new("bash")
        .arg(repo().join("deploy/nats/make-pki.sh"))
        .arg(&other_ca)
        .arg("x")
        .status()
        .unwrap();
    assert!(made.success());
    let err = refused_start(&node_args(
        "b",
        &[
            "--nats-nkey".into(),
            path(s.seed(Role::Node)),
            "--nats-tls-ca".into(),
            path(&other_ca.join("ca.pem")),
        ],
    ));
    assert!(
        err.contains("CA this process does not trust") && err.contains("--nats-tls-ca"),
        "{err}"
    );

    // A scheduler with a node's key file where its signing key belongs, and a node whose
    // --trust is no key: refused before anything starts.
    let err = refused_start(&[
        "scheduler".into(),
        "--nats".into(),
        url.clone(),
        "--signing-key".into(),
        path(s.seed(Role::Node)),
    ]);
    assert!(err.contains("skiff keygen --signing"), "{err}");
    let err = refused_start(&node_args("c", &["--trust".into(), "not-a-key".into()]));
    assert!(err.contains("--trust `not-a-key`"), "{err}");
    // Two kinds of credentials at once.
    let user = tmp.path().join("user");
    std::fs::write(&user, "u:p\n").unwrap();
    let err = refused_start(&node_args(
        "d",
        &[
            "--nats-nkey".into(),
            path(s.seed(Role::Node)),
            "--nats-user-file".into(),
            path(&user),
        ],
    ));
    assert!(
        err.contains("one of --nats-creds, --nats-nkey or --nats-user-file"),
        "{err}"
    );
}

/// A NATS server of the secured setup whose `tls` and `authorization` blocks the test
/// has changed (`blocks`, from [`skiff_core::testkit::Secured::server_blocks`]).
fn nats_with(tmp: &Path, blocks: &str) -> NatsServer {
    let store = tmp.join("nats");
    std::fs::create_dir_all(&store).unwrap();
    let port = skiff_core::testkit::free_port().unwrap();
    let config = tmp.join("nats.conf");
    let text = format!(
        "listen: 127.0.0.1:{port}\njetstream {{ store_dir: \"{}\" }}\n{blocks}",
        store.display()
    );
    std::fs::write(&config, text).unwrap();
    NatsServer::start_via(&[], &config, &store).expect("nats with the test's config")
}

#[tokio::test(flavor = "multi_thread")]
async fn mutual_tls_takes_a_client_certificate_from_the_ca_and_refuses_none() {
    let _gate = crate::gate::beside_others().await;
    let tmp = tempfile::tempdir().unwrap();
    let s = secured();
    let blocks =
        s.server_blocks(&[])
            .unwrap()
            .replacen("timeout: 2 }", "timeout: 2, verify: true }", 1);
    let nats = nats_with(tmp.path(), &blocks);
    let url = nats.url();
    let (cert, key) = s.client_cert();
    let with_cert = NatsAuth {
        tls_cert: Some(cert),
        tls_key: Some(key),
        ..s.auth(Role::Node)
    };
    let client = connect(&url, &with_cert)
        .await
        .expect("a client certificate from the CA");
    client.flush().await.unwrap();
    match connect(&url, &s.auth(Role::Node)).await {
        Err(ConnectError::Refused { error, .. }) => {
            assert!(error.to_string().contains("--nats-tls-cert"), "{error}")
        }
        Err(e) => panic!("refused without naming the client certificate: {e}"),
        Ok(_) => panic!("a client without a certificate got in"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_server_certificate_stops_the_start_and_says_so() {
    let _gate = crate::gate::beside_others().await;
    let tmp = tempfile::tempdir().unwrap();
    let s = secured();
    // A certificate from the test CA that expired yesterday.
    let made = Command::new("bash")
        .arg(repo().join("deploy/nats/make-pki.sh"))
        .arg(&s.dir)
        .arg("expired")
        .env("DAYS", "-1")
        .status()
        .unwrap();
    assert!(made.success());
    let blocks = s.server_blocks(&[]).unwrap().replace("/server", "/expired");
    let nats = nats_with(tmp.path(), &blocks);
    let mut args: Vec<String> = [
        "node",
        "--nats",
        &nats.url(),
        "--name",
        "late",
        "--data-dir",
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    args.push(tmp.path().join("node").display().to_string());
    args.extend(s.args(Role::Node));
    let err = refused_start(&args);
    assert!(err.contains("has expired"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_permission_nats_refuses_is_logged_with_its_subject_and_the_deploy_fails() {
    let _one = one_at_a_time().await;
    let tmp = tempfile::tempdir().unwrap();
    let nats = NatsServer::start(&tmp.path().join("nats")).expect("nats");
    let url = nats.url();
    // A scheduler given a node's credentials: NATS lets it read but not write the registry.
    let mut args = vec!["--nats-nkey".to_string()];
    args.push(secured().seed(Role::Node).display().to_string());
    args.push("--nats-tls-ca".into());
    args.push(secured().ca.display().to_string());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let scheduler = Skiff::scheduler(&url, &args);
    let hello = repo().join("functions/hello");
    let err = scheduler.cli_err(&["deploy", hello.to_str().unwrap(), "--no-build"]);
    assert!(
        err.contains("refused this process's user a permission")
            && err.contains("Permissions Violation"),
        "{err}"
    );
    let logged = wait_until(Duration::from_secs(5), async || {
        let log = scheduler.log();
        log.contains("Permissions Violation") && log.contains("skiff_")
    })
    .await;
    assert!(
        logged,
        "the refused permission was not logged with its subject:\n{}",
        scheduler.log()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_user_and_password_from_a_file_get_in_and_a_wrong_one_is_named() {
    let _gate = crate::gate::beside_others().await;
    let tmp = tempfile::tempdir().unwrap();
    let s = secured();
    let blocks = s.server_blocks(&[]).unwrap().replacen(
        "\n  users: [\n",
        "\n  users: [\n    { user: skiff, password: \"s3cret-from-a-file\", permissions: $SKIFF_NODE }\n",
        1,
    );
    let nats = nats_with(tmp.path(), &blocks);
    let file = tmp.path().join("user");
    let auth = NatsAuth {
        user_file: Some(file.clone()),
        tls_ca: Some(s.ca.clone()),
        ..NatsAuth::default()
    };
    std::fs::write(&file, "skiff:s3cret-from-a-file\n").unwrap();
    let client = connect(&nats.url(), &auth)
        .await
        .expect("the user from the file");
    client.flush().await.unwrap();
    std::fs::write(&file, "skiff:wrong\n").unwrap();
    match connect(&nats.url(), &auth).await {
        Err(e @ ConnectError::Refused { .. }) => {
            assert!(e.to_string().contains("--nats-user-file"), "{e}")
        }
        other => panic!("a wrong password was not refused: {other:?}"),
    }
    std::fs::write(&file, "no colon here\n").unwrap();
    match connect(&nats.url(), &auth).await {
        Err(e) => assert!(e.to_string().contains("user:password"), "{e}"),
        Ok(_) => panic!("a malformed user file was used"),
    }
}
