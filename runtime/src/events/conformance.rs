//! The conformance suite every [`Bus`] implementation must pass: delivery and ack,
//! pattern filtering, de-duplication by id, retry after nak with a growing attempt count,
//! redelivery after a lapsed lease, dead letters and replay, and consumer deletion.
//! Each backend's test calls [`run`] with a fresh bus.

use super::{Bus, ConsumerSpec, Event};
use skiff_core::limits::DedupWindows;
use std::time::Duration;

fn event(id: &str, topic: &str) -> Event {
    Event {
        id: id.to_string(),
        topic: topic.to_string(),
        data: id.as_bytes().to_vec(),
        headers: vec![("h".into(), "v".into())],
        published_at_ms: 0,
        // Carried through every bus unchanged.
        after: 7,
        after_of: "f".into(),
        deliver_at_ms: 0,
    }
}

fn spec(function: &str, pattern: &str, ack_wait: Duration) -> ConsumerSpec {
    ConsumerSpec::new(function, pattern, ack_wait)
}

const WAIT: Duration = Duration::from_secs(2);

/// Runs every check against `bus`.
pub async fn run(bus: &dyn Bus) {
    delivers_matching_events_once_acked(bus).await;
    de_duplicates_by_id(bus).await;
    nak_redelivers_with_growing_attempts(bus).await;
    lapsed_lease_redelivers(bus).await;
    dead_letters_and_replay(bus).await;
    deleted_consumer_gets_nothing(bus).await;
    delivers_delayed_events_at_their_time(bus).await;
    fires_installed_schedules_once_per_slot(bus).await;
}

async fn delivers_delayed_events_at_their_time(bus: &dyn Bus) {
    let c = spec("later", "later.x", WAIT);
    bus.ensure_consumer(&c).await.unwrap();
    let at = skiff_core::record::now_ms() + 1_500;
    let mut e = event("late-1", "later.x");
    e.deliver_at_ms = at;
    // A keyed (same id) delayed publish is de-duplicated like any other.
    bus.publish(vec![e.clone()]).await.unwrap();
    bus.publish(vec![e]).await.unwrap();
    assert!(
        bus.fetch(&c.name, 10, Duration::from_millis(500))
            .await
            .unwrap()
            .is_empty(),
        "delivered before its time"
    );
    let got = bus
        .fetch(&c.name, 10, Duration::from_secs(4))
        .await
        .unwrap();
    let now = skiff_core::record::now_ms();
    assert_eq!(got.len(), 1, "one delivery of the delayed event");
    assert_eq!(got[0].event.id, "late-1");
    assert!(now >= at, "delivered {} ms early", at - now);
    assert!(now < at + 1_500, "delivered {} ms late", now - at);
    bus.ack(&got[0]).await.unwrap();
    assert!(
        bus.fetch(&c.name, 10, Duration::from_millis(1_500))
            .await
            .unwrap()
            .is_empty(),
        "a delayed event came twice"
    );
    bus.delete_consumer(&c.name).await.unwrap();
}

async fn fires_installed_schedules_once_per_slot(bus: &dyn Bus) {
    use skiff_core::fire::header_ms;
    use skiff_core::schedule::{H_SCHEDULED, Schedule, ScheduleSection};
    let every: ScheduleSection = toml::from_str("every = \"1s\"").unwrap();
    let schedules = vec![Schedule::parse(1, &every).unwrap()];
    let c = spec("tick", "schedule.tick.0", WAIT);
    bus.ensure_consumer(&c).await.unwrap();
    bus.install_schedules("tick", 1, &schedules).await.unwrap();
    // Installing again (another node, a restart) changes nothing.
    bus.install_schedules("tick", 1, &schedules).await.unwrap();
    let mut slots = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(6);
    while slots.len() < 3 && tokio::time::Instant::now() < deadline {
        for d in bus
            .fetch(&c.name, 10, Duration::from_millis(500))
            .await
            .unwrap()
        {
            assert_eq!(d.event.topic, "schedule.tick.0");
            let slot = header_ms(&d.event, H_SCHEDULED).expect("a fire names its slot");
            assert_eq!(d.event.id, skiff_core::schedule::fire_id("tick", 0, slot));
            slots.push(slot);
            bus.ack(&d).await.unwrap();
        }
    }
    assert!(slots.len() >= 3, "fires: {slots:?}");
    for w in slots.windows(2) {
        assert_eq!(
            w[1] - w[0],
            1_000,
            "slots a second apart, each once: {slots:?}"
        );
    }
    // A newer version's schedule replaces it; an older version's never does.
    let every2: ScheduleSection = toml::from_str("every = \"2s\"").unwrap();
    let slower = vec![Schedule::parse(1, &every2).unwrap()];
    bus.install_schedules("tick", 2, &slower).await.unwrap();
    bus.install_schedules("tick", 1, &schedules).await.unwrap();
    while !bus
        .fetch(&c.name, 10, Duration::from_millis(100))
        .await
        .unwrap()
        .is_empty()
    {}
    let mut later = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(7);
    while later.len() < 3 && tokio::time::Instant::now() < deadline {
        for d in bus
            .fetch(&c.name, 10, Duration::from_millis(500))
            .await
            .unwrap()
        {
            later.push(header_ms(&d.event, H_SCHEDULED).expect("slot"));
            bus.ack(&d).await.unwrap();
        }
    }
    assert!(later.len() >= 2, "fires after the update: {later:?}");
    for w in later[later.len() - 2..].windows(2) {
        assert_eq!(w[1] - w[0], 2_000, "the newer schedule fires: {later:?}");
    }
    // Records change atomically and read back.
    let edit: super::RecordEdit = std::sync::Arc::new(|r| r.fires += 1);
    bus.update_schedule("tick", 0, edit.clone()).await.unwrap();
    let (before, after) = bus.update_schedule("tick", 0, edit).await.unwrap();
    assert_eq!((before.fires, after.fires), (1, 2));
    assert_eq!(bus.schedule_record("tick", 0).await.unwrap().fires, 2);
    // Removed: no more fires, and the record is gone.
    bus.remove_schedules("tick").await.unwrap();
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    while !bus
        .fetch(&c.name, 10, Duration::from_millis(100))
        .await
        .unwrap()
        .is_empty()
    {}
    assert!(
        bus.fetch(&c.name, 10, Duration::from_millis(2_500))
            .await
            .unwrap()
            .is_empty(),
        "a removed schedule still fires"
    );
    assert_eq!(bus.schedule_record("tick", 0).await.unwrap().fires, 0);
    bus.delete_consumer(&c.name).await.unwrap();
}

async fn delivers_matching_events_once_acked(bus: &dyn Bus) {
    let orders = spec("a", "orders.*", WAIT);
    let all = spec("b", ">", WAIT);
    bus.ensure_consumer(&orders).await.unwrap();
    bus.ensure_consumer(&all).await.unwrap();
    bus.publish(vec![
        event("e1", "orders.created"),
        event("e2", "users.created"),
    ])
    .await
    .unwrap();
    // Lag is eventually consistent (JetStream: the local outbox forwards first).
    let mut lag = 0;
    for _ in 0..40 {
        lag = bus.pending(&orders.name).await.unwrap();
        if lag == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(lag, 1, "pending after one matching publish");
    let got = bus.fetch(&orders.name, 10, WAIT).await.unwrap();
    assert_eq!(got.len(), 1, "only the matching event");
    assert_eq!(got[0].event, event("e1", "orders.created"));
    assert_eq!(got[0].attempt, 1);
    bus.ack(&got[0]).await.unwrap();
    assert_eq!(bus.pending(&orders.name).await.unwrap(), 0);
    let mut ids: Vec<String> = Vec::new();
    while ids.len() < 2 {
        let batch = bus.fetch(&all.name, 10, WAIT).await.unwrap();
        assert!(!batch.is_empty(), "`>` consumer got {ids:?} only");
        for d in &batch {
            ids.push(d.event.id.clone());
            bus.ack(d).await.unwrap();
        }
    }
    ids.sort();
    assert_eq!(ids, ["e1", "e2"]);
    // Acked deliveries do not come back.
    assert!(
        bus.fetch(&orders.name, 10, Duration::from_millis(200))
            .await
            .unwrap()
            .is_empty()
    );
    bus.delete_consumer(&orders.name).await.unwrap();
    bus.delete_consumer(&all.name).await.unwrap();
}

async fn de_duplicates_by_id(bus: &dyn Bus) {
    let c = spec("dedup", "d.>", WAIT);
    bus.ensure_consumer(&c).await.unwrap();
    bus.publish(vec![event("same", "d.x")]).await.unwrap();
    bus.publish(vec![event("same", "d.x"), event("other", "d.x")])
        .await
        .unwrap();
    let mut ids = Vec::new();
    loop {
        let got = bus
            .fetch(&c.name, 10, Duration::from_millis(300))
            .await
            .unwrap();
        if got.is_empty() {
            break;
        }
        for d in got {
            ids.push(d.event.id.clone());
            bus.ack(&d).await.unwrap();
        }
    }
    ids.sort();
    assert_eq!(ids, ["other", "same"]);
    bus.delete_consumer(&c.name).await.unwrap();
}

async fn nak_redelivers_with_growing_attempts(bus: &dyn Bus) {
    let c = spec("nak", "n.x", WAIT);
    bus.ensure_consumer(&c).await.unwrap();
    bus.publish(vec![event("n1", "n.x")]).await.unwrap();
    let first = bus.fetch(&c.name, 1, WAIT).await.unwrap().pop().unwrap();
    bus.nak(&first, Duration::from_millis(300)).await.unwrap();
    // Not before the delay...
    assert!(
        bus.fetch(&c.name, 1, Duration::from_millis(100))
            .await
            .unwrap()
            .is_empty()
    );
    // ...then again, as attempt 2.
    let second = bus.fetch(&c.name, 1, WAIT).await.unwrap().pop().unwrap();
    assert_eq!(second.event.id, "n1");
    assert_eq!(second.attempt, 2);
    bus.ack(&second).await.unwrap();
    bus.delete_consumer(&c.name).await.unwrap();
}

async fn lapsed_lease_redelivers(bus: &dyn Bus) {
    let c = spec("lease", "l.x", Duration::from_millis(300));
    bus.ensure_consumer(&c).await.unwrap();
    bus.publish(vec![event("l1", "l.x")]).await.unwrap();
    let first = bus.fetch(&c.name, 1, WAIT).await.unwrap().pop().unwrap();
    // Never settled (its handler's node died): it comes back after the ack wait.
    drop(first);
    let again = bus.fetch(&c.name, 1, WAIT).await.unwrap().pop().unwrap();
    assert_eq!((again.event.id.as_str(), again.attempt), ("l1", 2));
    bus.ack(&again).await.unwrap();
    bus.delete_consumer(&c.name).await.unwrap();
}

async fn dead_letters_and_replay(bus: &dyn Bus) {
    let c = spec("deadfn", "dl.x", WAIT);
    bus.ensure_consumer(&c).await.unwrap();
    bus.publish(vec![event("dl1", "dl.x")]).await.unwrap();
    let d = bus.fetch(&c.name, 1, WAIT).await.unwrap().pop().unwrap();
    bus.dead_letter(&d, "deadfn", "boom").await.unwrap();
    assert!(
        bus.fetch(&c.name, 1, Duration::from_millis(200))
            .await
            .unwrap()
            .is_empty()
    );
    let letters = bus.dead_letters("deadfn").await.unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(
        (letters[0].event.id.as_str(), letters[0].error.as_str()),
        ("dl1", "boom")
    );
    assert!(bus.dead_letters("someone-else").await.unwrap().is_empty());
    assert!(bus.replay("deadfn", "dl1").await.unwrap());
    assert!(
        !bus.replay("deadfn", "dl1").await.unwrap(),
        "a replayed letter is gone"
    );
    let again = bus.fetch(&c.name, 1, WAIT).await.unwrap().pop().unwrap();
    assert_eq!(again.event, event("dl1", "dl.x"));
    bus.ack(&again).await.unwrap();
    assert!(bus.dead_letters("deadfn").await.unwrap().is_empty());
    bus.delete_consumer(&c.name).await.unwrap();
}

async fn deleted_consumer_gets_nothing(bus: &dyn Bus) {
    let c = spec("gone", "g.x", WAIT);
    bus.ensure_consumer(&c).await.unwrap();
    bus.publish(vec![event("g1", "g.x")]).await.unwrap();
    // Wait until the event has reached the consumer (JetStream publishes go through a
    // local outbox first, so without this the event could arrive after the re-creation
    // and be new to it); it is left unacknowledged.
    let first = bus.fetch(&c.name, 1, WAIT).await.unwrap();
    assert_eq!(first.len(), 1, "the event reached the first consumer");
    bus.delete_consumer(&c.name).await.unwrap();
    bus.ensure_consumer(&c).await.unwrap();
    assert!(
        bus.fetch(&c.name, 1, Duration::from_millis(200))
            .await
            .unwrap()
            .is_empty(),
        "a recreated consumer starts from new events"
    );
    bus.delete_consumer(&c.name).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn embedded_bus_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let store = crate::localdb::LocalDb::open(&dir.path().join("state.redb")).unwrap();
    let bus = std::sync::Arc::new(
        super::embedded::EmbeddedBus::open(store, DedupWindows::default().events)
            .await
            .unwrap(),
    );
    tokio::spawn(super::embedded::run_timers(std::sync::Arc::downgrade(&bus)));
    run(bus.as_ref()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn embedded_publish_that_fails_half_way_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let db = crate::localdb::LocalDb::open(&dir.path().join("state.redb")).unwrap();
    let bus = super::embedded::EmbeddedBus::open(db, DedupWindows::default().events)
        .await
        .unwrap();
    let c = spec("halfway", "h.x", WAIT);
    bus.ensure_consumer(&c).await.unwrap();
    // The publication fails after it recorded the event's id as seen.
    super::embedded::failpoint::arm("h.x");
    assert!(bus.publish(vec![event("h1", "h.x")]).await.is_err());
    // The retry must not be dropped as a duplicate of what never happened.
    bus.publish(vec![event("h1", "h.x")]).await.unwrap();
    let got = bus.fetch(&c.name, 1, WAIT).await.unwrap();
    assert_eq!(got.len(), 1, "the retried event was lost");
    assert_eq!(got[0].event, event("h1", "h.x"));
    bus.ack(&got[0]).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn embedded_bus_redelivers_what_was_in_flight_at_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    {
        let store = crate::localdb::LocalDb::open(&path).unwrap();
        let bus = super::embedded::EmbeddedBus::open(store, DedupWindows::default().events)
            .await
            .unwrap();
        let c = spec("crash", "c.x", Duration::from_secs(3600));
        bus.ensure_consumer(&c).await.unwrap();
        bus.publish(vec![event("c1", "c.x")]).await.unwrap();
        let leased = bus.fetch(&c.name, 1, WAIT).await.unwrap();
        assert_eq!(leased.len(), 1);
        // The process "dies" holding the lease (an hour long).
    }
    // The writer thread of the old store is gone with its channel; reopen.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let store = crate::localdb::LocalDb::open(&path).unwrap();
    let bus = super::embedded::EmbeddedBus::open(store, DedupWindows::default().events)
        .await
        .unwrap();
    let c = spec("crash", "c.x", Duration::from_secs(3600));
    let again = bus.fetch(&c.name, 1, WAIT).await.unwrap().pop().unwrap();
    assert_eq!((again.event.id.as_str(), again.attempt), ("c1", 2));
}

#[tokio::test(flavor = "multi_thread")]
async fn nats_bus_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let nats =
        skiff_core::testkit::NatsServer::start(&dir.path().join("nats")).expect("nats-server");
    let store = crate::localdb::LocalDb::open(&dir.path().join("state.redb")).unwrap();
    let bus = super::nats::NatsBus::connect(&nats.url(), &node_auth(), store, 1)
        .await
        .expect("connect");
    run(bus.as_ref()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn nats_bus_keeps_publications_while_nats_is_down() {
    let dir = tempfile::tempdir().unwrap();
    let mut nats =
        skiff_core::testkit::NatsServer::start(&dir.path().join("nats")).expect("nats-server");
    let store = crate::localdb::LocalDb::open(&dir.path().join("state.redb")).unwrap();
    let bus = super::nats::NatsBus::connect(&nats.url(), &node_auth(), store, 1)
        .await
        .expect("connect");
    let c = spec("outage", "o.x", WAIT);
    bus.ensure_consumer(&c).await.unwrap();
    nats.kill();
    // Accepted while NATS is gone: it waits in the local outbox.
    bus.publish(vec![event("during-outage", "o.x")])
        .await
        .unwrap();
    nats.restart().unwrap();
    let mut got = Vec::new();
    for _ in 0..20 {
        match bus.fetch(&c.name, 1, WAIT).await {
            Ok(d) if !d.is_empty() => {
                got = d;
                break;
            }
            _ => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
    assert_eq!(
        got.len(),
        1,
        "the event published during the outage never arrived"
    );
    assert_eq!(got[0].event, event("during-outage", "o.x"));
    bus.ack(&got[0]).await.unwrap();
}

#[tokio::test]
async fn nats_unreachable_names_the_url() {
    let dir = tempfile::tempdir().unwrap();
    let store = crate::localdb::LocalDb::open(&dir.path().join("state.redb")).unwrap();
    let err =
        match super::nats::NatsBus::connect("nats://127.0.0.1:1", &node_auth(), store, 1).await {
            Ok(_) => panic!("connected to nothing"),
            Err(e) => e.to_string(),
        };
    assert!(
        err.contains("cannot connect to NATS at nats://127.0.0.1:1"),
        "{err}"
    );
}

/// What a node presents to the test NATS servers.
fn node_auth() -> skiff_core::nats_auth::NatsAuth {
    skiff_core::testkit::secured().auth(skiff_core::testkit::Role::Node)
}
