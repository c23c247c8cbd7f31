//! One conformance suite for [`StateBackend`], run against [`LocalState`] (embedded mode)
//! and [`ReplicatedState`] (through the replicated JetStream log, applied back to redb). It
//! checks what each write answers as well as what is stored.

use super::*;
use std::sync::Arc;
use std::time::Duration;

fn limits() -> KvLimits {
    KvLimits {
        key_bytes: 64,
        value_bytes: 256,
        keys: 50,
        total_bytes: 1 << 20,
    }
}

async fn run(s: &dyn StateBackend) {
    let ns = Namespace::new("conf", "default");
    let other = Namespace::new("conf", "other");
    let set = |k: &str, v: &str| Op::Set {
        ns: ns.clone(),
        key: k.into(),
        value: v.as_bytes().to_vec(),
    };
    // Set, read, overwrite, delete; buckets are separate.
    assert_eq!(
        s.write(set("a", "1"), limits()).await.unwrap(),
        OpResult::Done
    );
    s.write(set("a", "2"), limits()).await.unwrap();
    assert_eq!(
        s.get_consistent(&ns, "a").await.unwrap(),
        Some(b"2".to_vec())
    );
    assert_eq!(s.get(&ns, "a").unwrap(), Some(b"2".to_vec()));
    assert_eq!(s.get(&other, "a").unwrap(), None);
    s.write(
        Op::Delete {
            ns: ns.clone(),
            key: "a".into(),
        },
        limits(),
    )
    .await
    .unwrap();
    assert_eq!(s.get(&ns, "a").unwrap(), None);

    // Concurrent increments all count, and each answers a different value.
    let increments = (0..100).map(|_| {
        s.write(
            Op::Increment {
                ns: ns.clone(),
                key: "n".into(),
                delta: 1,
            },
            limits(),
        )
    });
    let mut answers: Vec<u64> = futures::future::join_all(increments)
        .await
        .into_iter()
        .map(|r| match r {
            Ok(OpResult::Incremented(n)) => n,
            other => panic!("increment answered {other:?}"),
        })
        .collect();
    answers.sort_unstable();
    assert_eq!(answers, (1..=100).collect::<Vec<u64>>());
    assert_eq!(s.get(&ns, "n").unwrap(), Some(b"100".to_vec()));

    // Compare-and-swap.
    let cas = |expected: Option<&str>, new: &str| Op::CompareAndSwap {
        ns: ns.clone(),
        key: "c".into(),
        expected: expected.map(|e| e.as_bytes().to_vec()),
        new: new.as_bytes().to_vec(),
    };
    assert_eq!(
        s.write(cas(None, "x"), limits()).await.unwrap(),
        OpResult::Swapped(true)
    );
    assert_eq!(
        s.write(cas(None, "y"), limits()).await.unwrap(),
        OpResult::Swapped(false)
    );
    assert_eq!(
        s.write(cas(Some("x"), "z"), limits()).await.unwrap(),
        OpResult::Swapped(true)
    );
    assert_eq!(s.get(&ns, "c").unwrap(), Some(b"z".to_vec()));

    // Batches.
    s.write(
        Op::SetMany {
            ns: ns.clone(),
            items: vec![("b1".into(), b"1".to_vec()), ("b2".into(), b"2".to_vec())],
        },
        limits(),
    )
    .await
    .unwrap();
    let (keys, _) = s.list(&ns, "b", 0).unwrap();
    assert_eq!(keys, vec!["b1", "b2"]);
    s.write(
        Op::DeleteMany {
            ns: ns.clone(),
            keys: vec!["b1".into(), "b2".into()],
        },
        limits(),
    )
    .await
    .unwrap();
    assert!(s.list(&ns, "b", 0).unwrap().0.is_empty());

    // Refusals write nothing.
    let too_long = "k".repeat(65);
    assert!(matches!(
        s.write(set(&too_long, "v"), limits()).await,
        Err(StateError::Refused(OpError::KeyTooLarge { .. }))
    ));
    assert!(matches!(
        s.write(set("big", &"v".repeat(257)), limits()).await,
        Err(StateError::Refused(OpError::ValueTooLarge { .. }))
    ));
    assert!(matches!(
        s.write(
            Op::Increment {
                ns: ns.clone(),
                key: "c".into(),
                delta: 1
            },
            limits()
        )
        .await,
        Err(StateError::Refused(OpError::NotACounter(_)))
    ));
    let few = KvLimits {
        keys: 2,
        ..limits()
    };
    assert!(matches!(
        s.write(set("one-too-many", "v"), few).await,
        Err(StateError::Refused(OpError::TooManyKeys { .. }))
    ));
    assert_eq!(s.get(&ns, "one-too-many").unwrap(), None);
    assert_eq!(s.get(&ns, "c").unwrap(), Some(b"z".to_vec()));

    // The same idempotent write twice (a redelivered handler) applies once, and the
    // repeat answers what the first answered.
    for _ in 0..2 {
        let answer = s
            .write_once(
                Op::Increment {
                    ns: ns.clone(),
                    key: "once".into(),
                    delta: 5,
                },
                limits(),
                Some("conf/event-1/0/abc".into()),
            )
            .await
            .unwrap();
        assert_eq!(answer, OpResult::Incremented(5));
    }
    assert_eq!(s.get(&ns, "once").unwrap(), Some(b"5".to_vec()));
    // A redelivered swap answers true again, though the value no longer matches.
    for _ in 0..2 {
        let answer = s
            .write_once(
                Op::CompareAndSwap {
                    ns: ns.clone(),
                    key: "c".into(),
                    expected: Some(b"z".to_vec()),
                    new: b"w".to_vec(),
                },
                limits(),
                Some("conf/event-2/0/def".into()),
            )
            .await
            .unwrap();
        assert_eq!(answer, OpResult::Swapped(true));
    }
    assert_eq!(s.get(&ns, "c").unwrap(), Some(b"w".to_vec()));
    // Usage follows the data.
    let (keys, _) = s.usage("conf").unwrap();
    assert_eq!(keys, 3, "n, c, once");
}

async fn local(path: &std::path::Path) -> Arc<LocalState> {
    LocalState::open(crate::localdb::LocalDb::open(path).unwrap())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn embedded_state_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let s = local(&dir.path().join("state.redb")).await;
    run(s.as_ref()).await;
}

async fn replicated(nats: &str, path: &std::path::Path) -> Arc<ReplicatedState> {
    let client = skiff_core::nats::connect(
        nats,
        "test",
        &skiff_core::testkit::secured().auth(skiff_core::testkit::Role::Node),
    )
    .await
    .unwrap();
    let replica = Replica::open(
        async_nats::jetstream::new(client),
        skiff_core::state_keys::StateShards::new(3).unwrap(),
        1,
        skiff_core::limits::DedupWindows::default().state,
    )
    .await
    .unwrap();
    let copy = local(path).await;
    let state = ReplicatedState::new(copy, replica, Duration::from_millis(300));
    state.host("conf").await.unwrap();
    state
}

#[tokio::test(flavor = "multi_thread")]
async fn replicated_state_conforms_and_every_node_converges() {
    let dir = tempfile::tempdir().unwrap();
    let nats =
        skiff_core::testkit::NatsServer::start(&dir.path().join("nats")).expect("nats-server");
    let a = replicated(&nats.url(), &dir.path().join("a.redb")).await;
    run(a.as_ref()).await;
    // A second node built from the stream alone holds the same state.
    let b = replicated(&nats.url(), &dir.path().join("b.redb")).await;
    // Hosting waited until b caught up with the function's shard.
    let target = a
        .replica()
        .expect("attached")
        .last_seq("conf")
        .await
        .unwrap();
    assert!(target > 0);
    assert!(b.local().log_applied("conf") >= target);
    let ns = Namespace::new("conf", "default");
    for key in ["n", "c", "once", "a", "b1"] {
        assert_eq!(b.get(&ns, key).unwrap(), a.get(&ns, key).unwrap(), "{key}");
    }
    assert_eq!(b.usage("conf").unwrap(), a.usage("conf").unwrap());
    // Writes through b are read on a: strongly at once, locally after it applies them.
    b.write(
        Op::Set {
            ns: ns.clone(),
            key: "from-b".into(),
            value: b"hi".to_vec(),
        },
        limits(),
    )
    .await
    .unwrap();
    let replica = a.replica().expect("attached");
    assert_eq!(
        replica.get_strong(&ns, "from-b").await.unwrap(),
        Some(b"hi".to_vec())
    );
    let seq = b.local().log_applied("conf");
    assert!(
        a.local()
            .wait_applied("conf", seq, Duration::from_secs(5))
            .await
    );
    assert_eq!(a.get(&ns, "from-b").unwrap(), Some(b"hi".to_vec()));
    // Increments from both nodes at once all count.
    let mut tasks = Vec::new();
    for i in 0..100 {
        let s = if i % 2 == 0 { a.clone() } else { b.clone() };
        let ns = ns.clone();
        tasks.push(tokio::spawn(async move {
            s.write(
                Op::Increment {
                    ns,
                    key: "both".into(),
                    delta: 1,
                },
                limits(),
            )
            .await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(
        replica.get_strong(&ns, "both").await.unwrap(),
        Some(b"100".to_vec())
    );
    // An event redelivered to the other node: its write answers what it answered first.
    let keyed = || Op::Increment {
        ns: ns.clone(),
        key: "moved".into(),
        delta: 3,
    };
    let idem = || Some("conf/event-3/0/x".to_string());
    let first = a.write_once(keyed(), limits(), idem()).await.unwrap();
    let again = b.write_once(keyed(), limits(), idem()).await.unwrap();
    assert_eq!(
        (first, again),
        (OpResult::Incremented(3), OpResult::Incremented(3))
    );
    assert_eq!(
        replica.get_strong(&ns, "moved").await.unwrap(),
        Some(b"3".to_vec())
    );
}

/// Without a consumer (NATS has no meta leader yet), a copy reads what it misses from the
/// stream's leader, in batches, and ends equal to a copy that followed the consumer.
#[tokio::test(flavor = "multi_thread")]
async fn a_copy_catches_up_by_direct_reads_without_a_consumer() {
    let dir = tempfile::tempdir().unwrap();
    let nats =
        skiff_core::testkit::NatsServer::start(&dir.path().join("nats")).expect("nats-server");
    let a = replicated(&nats.url(), &dir.path().join("a.redb")).await;
    run(a.as_ref()).await;
    // More keys than one catch-up batch (the stream keeps the last write of each key).
    let ns = Namespace::new("conf", "default");
    for i in 0..150 {
        let key = format!("bulk-{i}");
        a.write(
            Op::Set {
                ns: ns.clone(),
                key,
                value: i.to_string().into_bytes(),
            },
            KvLimits {
                keys: 200,
                ..limits()
            },
        )
        .await
        .unwrap();
    }
    let replica = a.replica().expect("attached");
    let target = replica.last_seq("conf").await.unwrap();
    let copy = local(&dir.path().join("copy.redb")).await;
    let functions = vec!["conf".to_string()];
    let applied = replica.catch_up_by_reads(&copy, &functions).await.unwrap();
    assert!(applied >= 150, "applied {applied}");
    assert_eq!(copy.log_applied("conf"), target);
    let mut keys: Vec<String> = (0..150).map(|i| format!("bulk-{i}")).collect();
    keys.extend(["n", "c", "once", "a", "b1"].map(String::from));
    for key in &keys {
        assert_eq!(
            copy.get(&ns, key).unwrap(),
            a.get(&ns, key).unwrap(),
            "{key}"
        );
    }
    assert_eq!(copy.usage("conf").unwrap(), a.usage("conf").unwrap());
    // Nothing more to read: a second catch-up applies nothing.
    assert_eq!(
        replica.catch_up_by_reads(&copy, &functions).await.unwrap(),
        0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_keeps_only_the_functions_it_hosts_and_drops_one_it_lets_go() {
    let dir = tempfile::tempdir().unwrap();
    let nats =
        skiff_core::testkit::NatsServer::start(&dir.path().join("nats")).expect("nats-server");
    let a = replicated(&nats.url(), &dir.path().join("a.redb")).await;
    let b = replicated(&nats.url(), &dir.path().join("b.redb")).await;
    // Functions in different shards, written through a.
    let names = ["alpha", "beta", "gamma", "delta"];
    for f in names {
        a.host(f).await.unwrap();
        a.write(
            Op::Set {
                ns: Namespace::new(f, "default"),
                key: "k".into(),
                value: f.as_bytes().to_vec(),
            },
            limits(),
        )
        .await
        .unwrap();
    }
    let shards = a.replica().unwrap().shards();
    let used: std::collections::BTreeSet<u32> = names.iter().map(|f| shards.of(f)).collect();
    assert!(
        used.len() >= 2,
        "the functions spread over shards: {used:?}"
    );
    // b hosts only beta: it holds beta's key and nothing of the others.
    b.host("beta").await.unwrap();
    let held: Vec<String> = b.stored().unwrap().into_iter().map(|(f, _, _)| f).collect();
    assert_eq!(held, vec!["beta".to_string()]);
    assert_eq!(
        b.get(&Namespace::new("beta", "default"), "k").unwrap(),
        Some(b"beta".to_vec())
    );
    assert_eq!(
        b.get(&Namespace::new("alpha", "default"), "k").unwrap(),
        None
    );
    // Let go, its copy goes after the grace; taken again, it comes back whole.
    b.release("beta");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let held = loop {
        let held: Vec<String> = b.stored().unwrap().into_iter().map(|(f, _, _)| f).collect();
        if held.is_empty() || std::time::Instant::now() > deadline {
            break held;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(held.is_empty(), "{held:?}");
    b.host("beta").await.unwrap();
    assert_eq!(
        b.get(&Namespace::new("beta", "default"), "k").unwrap(),
        Some(b"beta".to_vec())
    );
    // A write through b now is read on a once a applied it, as before.
    b.write(
        Op::Set {
            ns: Namespace::new("beta", "default"),
            key: "k2".into(),
            value: b"x".to_vec(),
        },
        limits(),
    )
    .await
    .unwrap();
    let seq = b.position("beta");
    assert!(a.wait_position("beta", seq, Duration::from_secs(5)).await);
    assert_eq!(
        a.get(&Namespace::new("beta", "default"), "k2").unwrap(),
        Some(b"x".to_vec())
    );
}
