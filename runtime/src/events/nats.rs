//! The NATS JetStream event bus (`--nats URL`), shared by every node of a cluster.
//!
//! * One stream, `SKIFF_EVENTS`, on subjects `events.<topic>`, `replay.<consumer>` and
//!   `schedules.>`, with interest retention (an event is kept until every consumer that
//!   wants it has settled it), de-duplication by `Nats-Msg-Id` = the event id, and NATS
//!   message schedules: a function's `[[schedule]]` and an event for later are schedule
//!   messages that NATS fires into `events.<topic>` ([`timers`]).
//! * One durable pull consumer per function and trigger, filtered on `events.<pattern>`
//!   and its own `replay.<consumer>` subject, so that replaying a dead letter reaches only
//!   the function it failed in. Explicit acks, confirmed by the server (double ack);
//!   redelivery after the ack wait; attempts are JetStream's delivery count.
//! * Dead letters in the KV bucket `skiff_dead_letters`, keyed `<function>.<event id>`.
//! * Publishing is local first ([`outbox`]): events go to a durable outbox in the node's redb and a
//!   forwarder moves them to JetStream, so a node keeps accepting work while NATS is
//!   unreachable and delivers it once NATS is back. Nothing acknowledged is lost.
//! * A node may start while NATS is unreachable: [`NatsBus::offline`] takes events into
//!   the outbox at once, and [`NatsBus::attach`] joins JetStream whenever it answers.

mod outbox;
mod timers;

pub use timers::{KEEPER, RECORDS_BUCKET};

use super::{Bus, BusError, ConsumerSpec, DeadLetter, Delivery, DeliveryToken, Event};
use crate::localdb::LocalDb;
use async_nats::HeaderMap;
use async_nats::jetstream::{self, AckKind, consumer::pull, kv, stream};
use futures::StreamExt;
use futures::future::BoxFuture;
use redb::TableDefinition;
use skiff_core::record::now_ms;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

/// The stream that carries events.
pub const STREAM: &str = "SKIFF_EVENTS";
/// The KV bucket of dead letters.
pub const DEAD_BUCKET: &str = "skiff_dead_letters";

const OUTBOX: TableDefinition<u64, &[u8]> = TableDefinition::new("nats_outbox");
const OUTBOX_META: TableDefinition<&str, u64> = TableDefinition::new("nats_outbox_meta");

const H_ID: &str = "Skiff-Event-Id";
const H_TOPIC: &str = "Skiff-Topic";
const H_AT: &str = "Skiff-Published-At";
const H_USER: &str = "Skiff-H-";
const H_AFTER: &str = "Skiff-After";
/// The function whose state position `Skiff-After` is.
const H_AFTER_OF: &str = "Skiff-After-Of";

/// The JetStream bus.
pub struct NatsBus {
    /// Set once JetStream answered ([`NatsBus::attach`]).
    remote: std::sync::OnceLock<Remote>,
    db: Arc<LocalDb>,
    consumers: Mutex<HashMap<String, jetstream::consumer::PullConsumer>>,
    forward: Arc<Notify>,
    /// The forwarder is failing (NATS unreachable): a delayed publish does not wait for
    /// it, and stays in the outbox like any event.
    stalled: std::sync::atomic::AtomicBool,
}

/// What the bus holds in JetStream.
struct Remote {
    js: jetstream::Context,
    dead: kv::Store,
    /// Schedule records ([`timers`]).
    schedules: kv::Store,
}

fn backend(e: impl std::fmt::Display) -> BusError {
    BusError::Backend(e.to_string())
}

/// Opens the KV bucket `name`, creating it (one value per key) if it does not exist.
async fn bucket(
    js: &jetstream::Context,
    name: &str,
    replicas: usize,
) -> Result<kv::Store, BusError> {
    match js.get_key_value(name).await {
        Ok(kv) => Ok(kv),
        Err(_) => js
            .create_key_value(kv::Config {
                bucket: name.to_string(),
                history: 1,
                storage: stream::StorageType::File,
                num_replicas: replicas,
                ..Default::default()
            })
            .await
            .map_err(|e| backend(format!("cannot create bucket {name}: {e}"))),
    }
}

fn headers_of(ev: &Event, msg_id: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(async_nats::header::NATS_MESSAGE_ID, msg_id);
    h.insert(H_ID, ev.id.as_str());
    h.insert(H_TOPIC, ev.topic.as_str());
    h.insert(H_AT, ev.published_at_ms.to_string().as_str());
    if ev.after > 0 {
        h.insert(H_AFTER, ev.after.to_string().as_str());
        h.insert(H_AFTER_OF, ev.after_of.as_str());
    }
    for (k, v) in &ev.headers {
        h.insert(format!("{H_USER}{k}").as_str(), v.as_str());
    }
    h
}

fn event_of(msg: &async_nats::Message) -> Result<Event, BusError> {
    let headers = msg
        .headers
        .as_ref()
        .ok_or_else(|| backend("message without Skiff headers"))?;
    let get = |k: &str| headers.get(k).map(|v| v.as_str().to_string());
    let mut user = Vec::new();
    for (k, values) in headers.iter() {
        if let Some(name) = k.to_string().strip_prefix(H_USER).map(str::to_string)
            && let Some(v) = values.first()
        {
            user.push((name, v.as_str().to_string()));
        }
    }
    Ok(Event {
        id: get(H_ID).ok_or_else(|| backend("message without an event id"))?,
        topic: get(H_TOPIC).unwrap_or_default(),
        data: msg.payload.to_vec(),
        headers: user,
        published_at_ms: get(H_AT).and_then(|v| v.parse().ok()).unwrap_or(0),
        after: get(H_AFTER).and_then(|v| v.parse().ok()).unwrap_or(0),
        after_of: get(H_AFTER_OF).unwrap_or_default(),
        deliver_at_ms: 0,
    })
}

impl NatsBus {
    /// Connects to `urls` (comma-separated) and builds the bus over that connection, with
    /// the default de-duplication window.
    pub async fn connect(
        urls: &str,
        auth: &skiff_core::nats_auth::NatsAuth,
        db: Arc<LocalDb>,
        replicas: usize,
    ) -> Result<Arc<NatsBus>, BusError> {
        let client = skiff_core::nats::connect(urls, "skiff", auth)
            .await
            .map_err(|e| BusError::Backend(e.to_string()))?;
        let window = skiff_core::limits::DedupWindows::default().events;
        Self::new(client, db, replicas, window).await
    }

    /// The bus over `client` (see [`skiff_core::nats::connect`]): [`NatsBus::offline`],
    /// then [`NatsBus::attach`].
    pub async fn new(
        client: async_nats::Client,
        db: Arc<LocalDb>,
        replicas: usize,
        window: std::time::Duration,
    ) -> Result<Arc<NatsBus>, BusError> {
        let bus = Self::offline(db).await?;
        bus.attach(client, replicas, window).await?;
        Ok(bus)
    }

    /// The bus before NATS answered: events are taken into this node's outbox (and go out
    /// once [`NatsBus::attach`] succeeds); everything else that needs JetStream fails with
    /// an error that says NATS has not been reached. Starts the outbox forwarder.
    pub async fn offline(db: Arc<LocalDb>) -> Result<Arc<NatsBus>, BusError> {
        db.run(|tx: &redb::WriteTransaction| {
            tx.open_table(OUTBOX).map_err(|e| e.to_string())?;
            tx.open_table(OUTBOX_META).map_err(|e| e.to_string())?;
            Ok(())
        })
        .await
        .map_err(backend)?;
        let bus = Arc::new(NatsBus {
            remote: std::sync::OnceLock::new(),
            db,
            consumers: Mutex::new(HashMap::new()),
            forward: Arc::new(Notify::new()),
            stalled: std::sync::atomic::AtomicBool::new(false),
        });
        tokio::spawn(outbox::forwarder(Arc::downgrade(&bus)));
        Ok(bus)
    }

    /// Joins JetStream over `client`: creates the stream and the dead-letter bucket if
    /// needed, then starts sending what waits in the outbox. `replicas` is their
    /// replication factor; `window` how long the stream remembers event ids (its
    /// `duplicate_window`, set on an existing stream too). Once attached, again is a no-op.
    pub async fn attach(
        &self,
        client: async_nats::Client,
        replicas: usize,
        window: std::time::Duration,
    ) -> Result<(), BusError> {
        if self.remote.get().is_some() {
            return Ok(());
        }
        let js = jetstream::new(client);
        skiff_core::nats::stream_with_window(
            &js,
            stream::Config {
                name: STREAM.to_string(),
                subjects: vec![
                    "events.>".into(),
                    "replay.>".into(),
                    timers::SUBJECTS.into(),
                ],
                retention: stream::RetentionPolicy::Interest,
                storage: stream::StorageType::File,
                num_replicas: replicas,
                duplicate_window: window,
                allow_message_schedules: true,
                allow_rollup: true,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| {
            backend(format!(
                "cannot create stream {STREAM}: {e} (its schedules need nats-server 2.14 or newer)"
            ))
        })?;
        // Schedules stay in the stream only while a consumer wants them: this one does,
        // and never fetches.
        js.get_stream(STREAM)
            .await
            .map_err(backend)?
            .get_or_create_consumer::<pull::Config>(
                timers::KEEPER,
                pull::Config {
                    durable_name: Some(timers::KEEPER.to_string()),
                    filter_subject: timers::SUBJECTS.to_string(),
                    ack_policy: jetstream::consumer::AckPolicy::Explicit,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| backend(format!("cannot create consumer {}: {e}", timers::KEEPER)))?;
        let dead = bucket(&js, DEAD_BUCKET, replicas).await?;
        let schedules = bucket(&js, timers::RECORDS_BUCKET, replicas).await?;
        let _ = self.remote.set(Remote {
            js,
            dead,
            schedules,
        });
        self.forward.notify_one();
        Ok(())
    }

    /// The events stream, once JetStream answered.
    async fn stream(&self) -> Result<stream::Stream, BusError> {
        self.remote()?.js.get_stream(STREAM).await.map_err(backend)
    }

    /// JetStream, or why it cannot be used yet.
    fn remote(&self) -> Result<&Remote, BusError> {
        self.remote.get().ok_or_else(|| {
            BusError::Backend(
                "NATS has not answered since this node started; events published now wait in the node's outbox — check that NATS is up and reachable".into(),
            )
        })
    }

    async fn consumer(&self, name: &str) -> Result<jetstream::consumer::PullConsumer, BusError> {
        if let Ok(map) = self.consumers.lock()
            && let Some(c) = map.get(name)
        {
            return Ok(c.clone());
        }
        let stream = self.stream().await?;
        let c: jetstream::consumer::PullConsumer = stream
            .get_consumer(name)
            .await
            .map_err(|_| BusError::NoConsumer(name.to_string()))?;
        if let Ok(mut map) = self.consumers.lock() {
            map.insert(name.to_string(), c.clone());
        }
        Ok(c)
    }
}

fn token(d: &Delivery) -> Result<&jetstream::Message, BusError> {
    d.token
        .get::<jetstream::Message>()
        .ok_or_else(|| backend("delivery of another bus"))
}

impl Bus for NatsBus {
    fn pending<'a>(&'a self, consumer: &'a str) -> BoxFuture<'a, Result<u64, BusError>> {
        Box::pin(async move {
            let mut c = self.consumer(consumer).await?;
            let info = c.info().await.map_err(backend)?;
            Ok(info.num_pending + info.num_ack_pending as u64)
        })
    }

    fn publish<'a>(&'a self, events: Vec<Event>) -> BoxFuture<'a, Result<(), BusError>> {
        Box::pin(self.enqueue(events))
    }

    fn ensure_consumer<'a>(
        &'a self,
        spec: &'a ConsumerSpec,
    ) -> BoxFuture<'a, Result<(), BusError>> {
        Box::pin(async move {
            let stream = self.stream().await?;
            let c: jetstream::consumer::PullConsumer = stream
                .get_or_create_consumer(
                    &spec.name,
                    pull::Config {
                        durable_name: Some(spec.name.clone()),
                        filter_subjects: vec![
                            format!("events.{}", spec.pattern),
                            format!("replay.{}", spec.name),
                        ],
                        ack_policy: jetstream::consumer::AckPolicy::Explicit,
                        ack_wait: Duration::from_millis(spec.ack_wait_ms),
                        deliver_policy: jetstream::consumer::DeliverPolicy::New,
                        // Attempts are counted and dead-lettered by Skiff.
                        max_deliver: -1,
                        max_ack_pending: 10_000,
                        ..Default::default()
                    },
                )
                .await
                .map_err(|e| backend(format!("cannot create consumer {}: {e}", spec.name)))?;
            if let Ok(mut map) = self.consumers.lock() {
                map.insert(spec.name.clone(), c);
            }
            Ok(())
        })
    }

    fn delete_consumer<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), BusError>> {
        Box::pin(async move {
            if let Ok(mut map) = self.consumers.lock() {
                map.remove(name);
            }
            let stream = self.stream().await?;
            match stream.delete_consumer(name).await {
                Ok(_) => Ok(()),
                Err(e) if e.to_string().contains("not found") => Ok(()),
                Err(e) => Err(backend(e)),
            }
        })
    }

    fn fetch<'a>(
        &'a self,
        consumer: &'a str,
        max: usize,
        wait: Duration,
    ) -> BoxFuture<'a, Result<Vec<Delivery>, BusError>> {
        Box::pin(async move {
            let c = self.consumer(consumer).await?;
            let mut batch = c
                .fetch()
                .max_messages(max)
                .expires(wait.max(Duration::from_millis(100)))
                .messages()
                .await
                .map_err(backend)?;
            let mut out = Vec::new();
            while let Some(msg) = batch.next().await {
                let msg = msg.map_err(backend)?;
                let attempt = msg.info().map(|i| i.delivered).unwrap_or(1).max(1) as u32;
                let event = timers::fire_of(&msg).unwrap_or_else(|| event_of(&msg));
                match event {
                    Ok(event) => out.push(Delivery {
                        event,
                        attempt,
                        consumer: consumer.to_string(),
                        token: DeliveryToken::new(msg),
                    }),
                    Err(e) => {
                        // Not ours to handle: terminate it rather than loop on it.
                        tracing::warn!(error = %e, "dropping a malformed message");
                        let _ = msg.ack_with(AckKind::Term).await;
                    }
                }
            }
            Ok(out)
        })
    }

    fn ack<'a>(&'a self, d: &'a Delivery) -> BoxFuture<'a, Result<(), BusError>> {
        // Confirmed by the server, so a settled delivery is not redelivered after a crash.
        Box::pin(async move { token(d)?.double_ack().await.map_err(backend) })
    }

    fn nak<'a>(&'a self, d: &'a Delivery, delay: Duration) -> BoxFuture<'a, Result<(), BusError>> {
        Box::pin(async move {
            token(d)?
                .ack_with(AckKind::Nak(Some(delay)))
                .await
                .map_err(backend)
        })
    }

    fn dead_letter<'a>(
        &'a self,
        d: &'a Delivery,
        function: &'a str,
        error: &'a str,
    ) -> BoxFuture<'a, Result<(), BusError>> {
        Box::pin(async move {
            let letter = DeadLetter {
                function: function.to_string(),
                consumer: d.consumer.clone(),
                event: d.event.clone(),
                attempts: d.attempt,
                error: error.to_string(),
                at_ms: now_ms(),
            };
            let bytes = serde_json::to_vec(&letter).map_err(backend)?;
            self.remote()?
                .dead
                .put(format!("{function}.{}", d.event.id), bytes.into())
                .await
                .map_err(backend)?;
            token(d)?
                .double_ack_with(AckKind::Term)
                .await
                .map_err(backend)
        })
    }

    fn dead_letters<'a>(
        &'a self,
        function: &'a str,
    ) -> BoxFuture<'a, Result<Vec<DeadLetter>, BusError>> {
        Box::pin(async move {
            let prefix = format!("{function}.");
            let dead = &self.remote()?.dead;
            let mut keys = dead.keys().await.map_err(backend)?;
            let mut out = Vec::new();
            while let Some(key) = keys.next().await {
                let key = key.map_err(backend)?;
                if !key.starts_with(&prefix) {
                    continue;
                }
                if let Some(v) = dead.get(&key).await.map_err(backend)? {
                    out.push(serde_json::from_slice::<DeadLetter>(&v).map_err(backend)?);
                }
            }
            out.sort_by_key(|d| d.at_ms);
            Ok(out)
        })
    }

    fn replay<'a>(
        &'a self,
        function: &'a str,
        event_id: &'a str,
    ) -> BoxFuture<'a, Result<bool, BusError>> {
        Box::pin(async move {
            let key = format!("{function}.{event_id}");
            let remote = self.remote()?;
            let Some(v) = remote.dead.get(&key).await.map_err(backend)? else {
                return Ok(false);
            };
            let letter: DeadLetter = serde_json::from_slice(&v).map_err(backend)?;
            if self.consumer(&letter.consumer).await.is_err() {
                return Err(BusError::Backend(format!(
                    "function `{function}` no longer has the trigger this event came through; redeploy it first"
                )));
            }
            // A fresh message id: the original is still in the de-duplication window.
            let msg_id = format!("{}:replay:{}", letter.event.id, now_ms());
            remote
                .js
                .publish_with_headers(
                    format!("replay.{}", letter.consumer),
                    headers_of(&letter.event, &msg_id),
                    letter.event.data.clone().into(),
                )
                .await
                .map_err(backend)?
                .await
                .map_err(backend)?;
            remote.dead.delete(&key).await.map_err(backend)?;
            Ok(true)
        })
    }
}
