//! deploy/: the local cluster script starts and stops a real cluster, and the systemd
//! units and Kubernetes manifests use only flags the binary accepts.

use crate::harness::*;
use bytes::Bytes;
use std::process::Command;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread")]
async fn local_cluster_script_starts_serves_and_stops_cleanly() {
    let _one = crate::cluster::one_at_a_time().await;
    build_guests();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cluster");
    // The script takes runs of consecutive ports (3 NATS clients, 3 routes, 3 nodes and
    // their admin ports): find a block of 24 free ones below the ephemeral range.
    let b = (0..200u16)
        .map(|i| 32_000 - 24 * (i + 1) - (std::process::id() % 50) as u16 * 24 * 4)
        .find(|b| (0..24).all(|p| std::net::TcpListener::bind(("127.0.0.1", b + p)).is_ok()))
        .expect("no block of 24 free ports");
    let (listen, admin, nats, route, node_base) = (b, b + 1, b + 2, b + 5, b + 8);
    let script = |cmd: &str| {
        Command::new("bash")
            .arg(repo().join("deploy/local-cluster.sh"))
            .arg(cmd)
            .env("SKIFF_BIN", skiff_bin())
            .env("SKIFF_CLUSTER_DIR", &dir)
            .env("SKIFF_CLUSTER_LISTEN", format!("127.0.0.1:{listen}"))
            .env("SKIFF_CLUSTER_ADMIN", format!("127.0.0.1:{admin}"))
            .env("SKIFF_CLUSTER_NATS_PORT", nats.to_string())
            .env("SKIFF_CLUSTER_ROUTE_PORT", route.to_string())
            .env("SKIFF_CLUSTER_NODE_PORT", node_base.to_string())
            .env_remove("SKIFF_TOKEN")
            .output()
            .expect("run local-cluster.sh")
    };
    let up = script("up");
    let out = String::from_utf8_lossy(&up.stdout).into_owned();
    assert!(
        up.status.success() && out.contains("skiff cluster is up"),
        "up failed: {out}\n{}",
        String::from_utf8_lossy(&up.stderr)
    );
    let status = script("status");
    let text = String::from_utf8_lossy(&status.stdout).into_owned();
    for name in ["node1", "node2", "node3", "3 live node(s)"] {
        assert!(text.contains(name), "{text}");
    }
    let deploy = Command::new(skiff_bin())
        .args([
            "deploy",
            repo().join("functions/hello").to_str().unwrap(),
            "--no-build",
        ])
        .env("SKIFF_SERVER", format!("http://127.0.0.1:{admin}"))
        .env_remove("SKIFF_TOKEN")
        .output()
        .unwrap();
    assert!(
        deploy.status.success(),
        "{}",
        String::from_utf8_lossy(&deploy.stderr)
    );
    let r = get(&format!("http://127.0.0.1:{listen}/hello/script")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.headers.get("x-skiff-node").is_some());

    // Secured: the nodes answer only the cluster token (what the scheduler and, by
    // deploy/prometheus.yml, Prometheus present), and NATS only its NKey users over TLS.
    let token = std::fs::read_to_string(dir.join("secure/cluster.token")).unwrap();
    let bearer = format!("Bearer {}", token.trim());
    let direct = get(&format!("http://127.0.0.1:{}/hello/script", node_base + 1)).await;
    assert_eq!(direct.status, 401, "{}", direct.text());
    let stranger = skiff_core::nats_auth::NatsAuth {
        tls_ca: Some(dir.join("secure/tls/ca.pem")),
        ..Default::default()
    };
    let refused =
        skiff_core::nats::connect(&format!("nats://127.0.0.1:{nats}"), "stranger", &stranger).await;
    assert!(refused.is_err(), "NATS took a client without credentials");
    // Each node serves /metrics where deploy/prometheus.yml (shifted) expects it.
    for i in 1..=3 {
        let url = format!("http://127.0.0.1:{}/metrics", node_base + 10 + i);
        assert_eq!(
            get(&url).await.status,
            401,
            "node{i} served metrics to anyone"
        );
        let r = request("GET", &url, &[("authorization", &bearer)], Bytes::new()).await;
        assert_eq!(r.status, 200, "node{i} admin not at its fixed port");
        crate::metrics::promtool_check(&r.text());
    }
    let pids: Vec<u32> = std::fs::read_dir(dir.join("pids"))
        .unwrap()
        .map(|e| {
            std::fs::read_to_string(e.unwrap().path())
                .unwrap()
                .trim()
                .parse()
                .unwrap()
        })
        .collect();
    assert_eq!(pids.len(), 7, "3 nats-servers, 3 nodes, 1 scheduler");
    let down = script("down");
    assert!(
        down.status.success(),
        "{}",
        String::from_utf8_lossy(&down.stderr)
    );
    let out = String::from_utf8_lossy(&down.stdout).into_owned();
    assert!(
        !out.contains("killing"),
        "something had to be killed:\n{out}"
    );
    std::thread::sleep(Duration::from_millis(200));
    for pid in pids {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists()
                || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .is_ok_and(|s| s.contains(") Z ")),
            "process {pid} still runs after down"
        );
    }
}

/// The flags a `skiff <sub>` accepts, from its --help.
fn flags(sub: &str) -> String {
    let out = Command::new(skiff_bin())
        .args([sub, "--help"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn check_flags(file: &str, text: &str, help: &str) {
    let used: Vec<&str> = text
        .split(|c: char| c.is_whitespace() || c == '\\')
        .filter(|w| w.starts_with("--") && w.len() > 2)
        .collect();
    assert!(!used.is_empty(), "{file}: no flags found");
    for flag in used {
        assert!(
            help.contains(&format!("{flag} ")) || help.contains(&format!("{flag}\n")),
            "{file} uses `{flag}`, which skiff does not accept"
        );
    }
}

#[test]
fn systemd_units_and_kubernetes_manifests_use_real_flags() {
    let _gate = crate::gate::beside_others_blocking();
    let (node, scheduler) = (flags("node"), flags("scheduler"));
    let deploy = repo().join("deploy");
    for (unit, help) in [
        ("systemd/skiff-node.service", &node),
        ("systemd/skiff-scheduler.service", &scheduler),
    ] {
        let text = std::fs::read_to_string(deploy.join(unit)).unwrap();
        let exec: String = text
            .lines()
            .skip_while(|l| !l.starts_with("ExecStart="))
            .take_while(|l| !l.is_empty() && !l.starts_with("KillSignal"))
            .collect::<Vec<_>>()
            .join("\n");
        check_flags(unit, &exec, help);
    }
    let manifests = std::fs::read_to_string(deploy.join("kubernetes/skiff.yaml")).unwrap();
    let mut checked = 0;
    for doc in manifests.split("\n---\n") {
        let args: String = doc
            .lines()
            .skip_while(|l| l.trim() != "args:")
            .skip(1)
            .take_while(|l| l.trim_start().starts_with("- "))
            .map(|l| l.trim_start().trim_start_matches("- "))
            .collect::<Vec<_>>()
            .join(" ");
        if let Some(rest) = args.strip_prefix("node ") {
            check_flags("kubernetes/skiff.yaml (node)", rest, &node);
            checked += 1;
        } else if let Some(rest) = args.strip_prefix("scheduler ") {
            check_flags("kubernetes/skiff.yaml (scheduler)", rest, &scheduler);
            checked += 1;
        }
    }
    assert_eq!(checked, 2, "expected a node and a scheduler in skiff.yaml");
}

#[test]
fn the_prometheus_config_is_valid_and_scrapes_the_local_cluster() {
    let _gate = crate::gate::beside_others_blocking();
    let path = repo().join("deploy/prometheus.yml");
    let out = Command::new("promtool")
        .args(["check", "config"])
        .arg(&path)
        .output()
        .expect("promtool (Debian package `prometheus`; tests/setup.sh installs it)");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&path).unwrap();
    for target in [
        "127.0.0.1:7071",
        "127.0.0.1:7091",
        "127.0.0.1:7092",
        "127.0.0.1:7093",
    ] {
        assert!(text.contains(target), "{target} not scraped");
    }
    let script = std::fs::read_to_string(repo().join("deploy/local-cluster.sh")).unwrap();
    assert!(
        script.contains("SKIFF_CLUSTER_NODE_PORT:-7080") && script.contains("node_port + 10 + i")
    );
}

/// The quoted subjects of a permission set, in order.
fn quoted(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .flat_map(|l| {
            l.split('"')
                .skip(1)
                .step_by(2)
                .map(String::from)
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn the_helm_values_grant_the_permission_sets_of_permissions_conf() {
    let _gate = crate::gate::beside_others_blocking();
    let conf = std::fs::read_to_string(repo().join("deploy/nats/permissions.conf")).unwrap();
    let values =
        std::fs::read_to_string(repo().join("deploy/kubernetes/nats-values.yaml")).unwrap();
    let node = &conf[conf.find("SKIFF_NODE_DENY").expect("the node's deny list")..];
    let mut want: Vec<String> = quoted(node).into_iter().filter(|s| s != ">").collect();
    let mut got: Vec<String> = quoted(&values[values.find("UREPLACE_WITH_THE_NODES").unwrap()..])
        .into_iter()
        .filter(|s| s != ">")
        .collect();
    want.sort();
    got.sort();
    assert!(!want.is_empty());
    assert_eq!(
        got, want,
        "nats-values.yaml's node permissions differ from permissions.conf"
    );
}
