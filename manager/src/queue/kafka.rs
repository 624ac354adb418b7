//! The Kafka backend, through `rdkafka` (librdkafka). It keeps the contract of the
//! [`queue`](super) module:
//! - **A topic per tenant**, `<topic_prefix><tenant>`, created with the admin client when
//!   missing (`partitions`, `replication_factor`, and `max.message.bytes` to fit
//!   `max_message_bytes`); an existing topic is used as it is. Producers never auto-create.
//! - **Durable acknowledgement**: one idempotent producer (`acks=all`, so no duplicate or
//!   reordering from its own retries) shared by all tenants; a produce call enqueues all its
//!   messages at once (round-robin over the partitions) and returns after every delivery
//!   report. A message is acknowledged when all in-sync replicas have it (Kafka itself does not
//!   fsync on every write: with one broker, power loss can still lose recent messages; a
//!   process crash cannot).
//! - **Consumer groups**: group `g` of tenant `t` is the Kafka group `<topic_prefix>t.g`, with
//!   the `cooperative-sticky` assignor (a consumer joining or leaving moves only the partitions
//!   that must move). `enable.auto.commit=false` and `enable.auto.offset.store=false`: offsets
//!   are committed only by [`QueueConsumer::commit`], synchronously; `auto.offset.reset=earliest`
//!   so a new group starts at the oldest message.
//! - **Bounded consumer memory**: librdkafka prefetches aggressively by default (up to 64 MiB
//!   and 100000 messages per consumer, which blows up with a large lag); the prefetch is bounded
//!   with `queued.max.messages.kbytes`, `queued.min.messages` and `fetch.max.bytes`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};

mod consumer;

pub use self::consumer::KafkaConsumer;
use super::{
    KafkaQueueConfig, Produced, Queue, QueueConfig, QueueConsumer, QueueError, QueueErrorKind, check_group, check_sizes,
};
use crate::tenants::TenantId;

/// Room for record batch framing above the largest payload, in a topic's `max.message.bytes`
/// and the producer's `message.max.bytes`.
const FRAMING_BYTES: usize = 64 << 10;

/// The producer's client context: it notes when librdkafka reports every broker down, so
/// produce calls fail fast (503 in the message API) instead of waiting out the message timeout
/// while the brokers are gone.
#[derive(Clone, Default)]
pub struct BrokerWatch {
    /// Milliseconds since the epoch when every broker was last reported down; 0 once a delivery
    /// succeeded since. Shared with the queue (librdkafka keeps the context to itself).
    down_since_ms: Arc<AtomicI64>,
}

impl rdkafka::client::ClientContext for BrokerWatch {
    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
            // The first report starts the clock; librdkafka repeats the error at every failed
            // reconnect, and restarting the clock then would keep it under DOWN_WAIT for ever.
            let first = self
                .down_since_ms
                .compare_exchange(0, super::now_ms().max(1), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok();
            if first {
                log::warn!("kafka queue: every broker is down ({reason}); produce calls fail fast until one answers");
            }
        } else {
            log::warn!("kafka queue: {error}: {reason}");
        }
    }
}

impl BrokerWatch {
    /// How long every broker has been down; zero while one answers.
    fn down_for(&self) -> Duration {
        match self.down_since_ms.load(Ordering::Relaxed) {
            0 => Duration::ZERO,
            since => Duration::from_millis(super::now_ms().saturating_sub(since).max(0) as u64),
        }
    }

    /// Watches the deliveries of a request that gave up on them: they stay in the producer's
    /// queue until their timeout, and the first delivered says a broker answers. Without this,
    /// only a request whose own messages come through would say so, and while the producer
    /// catches up after an outage every request could keep failing fast.
    fn clear_on_delivery(&self, mut deliveries: FuturesUnordered<DeliveryFuture>) {
        let watch = self.clone();
        tokio::spawn(async move {
            while let Some(delivery) = deliveries.next().await {
                if matches!(delivery, Ok(Ok(_))) {
                    watch.answered();
                    return;
                }
            }
        });
    }

    /// Every broker has been down for [`DOWN_WAIT`]: requests fail fast.
    fn down(&self) -> bool {
        self.down_for() >= DOWN_WAIT
    }

    /// A message was delivered, or a broker answered a metadata request: a broker answers.
    fn answered(&self) {
        if self.down_since_ms.load(Ordering::Relaxed) != 0 && self.down_since_ms.swap(0, Ordering::Relaxed) != 0 {
            log::info!("kafka queue: the brokers answer again");
        }
    }

    /// No broker answered the check at start, which waited `waited`.
    fn down_at_start(&self, waited: Duration) {
        let since = super::now_ms() - i64::try_from(waited.max(DOWN_WAIT).as_millis()).unwrap_or(i64::MAX);
        self.down_since_ms.store(since.max(1), Ordering::Relaxed);
    }

    /// While every broker is reported down, asks for the cluster's metadata every
    /// [`DOWN_PROBE_EVERY`]; the first answer clears the flag. Without it the flag would wait
    /// for a delivery, and none comes while every request fails fast: a platform that started
    /// with no broker, or whose producer was idle during an outage, would refuse until then.
    fn probe_while_down(&self, producer: KafkaProducer) -> tokio::task::AbortHandle {
        let watch = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(DOWN_PROBE_EVERY).await;
                if watch.down_for().is_zero() {
                    continue;
                }
                let probe = producer.clone();
                let asked = tokio::task::spawn_blocking(move || probe.client().fetch_metadata(None, DOWN_PROBE_EVERY));
                if matches!(asked.await, Ok(Ok(_))) {
                    watch.answered();
                }
            }
        })
        .abort_handle()
    }
}

/// The queue's producer (also used for metadata and watermark queries).
pub type KafkaProducer = FutureProducer<BrokerWatch>;

/// How long every broker must have been down before produce calls fail fast.
const DOWN_WAIT: Duration = Duration::from_secs(2);

/// How long [`Queue::reachable`] waits for a broker's answer at most.
const REACHABLE_WAIT: Duration = Duration::from_secs(2);

/// How long a produce call waits for its next acknowledgement once every broker is down.
const DOWN_POLL: Duration = Duration::from_millis(200);

/// How often the brokers are asked whether they answer while every one is reported down.
const DOWN_PROBE_EVERY: Duration = Duration::from_secs(1);

/// The Kafka backend.
pub struct KafkaQueue {
    config: KafkaQueueConfig,
    max_message_bytes: usize,
    producer: KafkaProducer,
    brokers: BrokerWatch,
    admin: AdminClient<DefaultClientContext>,
    /// Topics known to exist, with their partition count.
    topics: Mutex<HashMap<TenantId, u32>>,
    /// Round-robin counter for the partition of the next message.
    round_robin: AtomicU64,
    /// The task that asks the brokers whether they answer while they are reported down.
    prober: tokio::task::AbortHandle,
}

impl Drop for KafkaQueue {
    fn drop(&mut self) {
        self.prober.abort();
    }
}

impl KafkaQueue {
    /// Creates the producer and the admin client and asks whether a broker answers. None
    /// answering is not an error: the platform starts (its batch half does not need the queue),
    /// produce calls and new consumers fail fast as [`QueueErrorKind::Unavailable`] until a
    /// broker answers, and running consumers wait for one. A setting librdkafka refuses is an
    /// error.
    pub async fn connect(config: &QueueConfig) -> Result<Self, QueueError> {
        let kafka = config.kafka.clone();
        let message_max_bytes = (config.max_message_bytes + FRAMING_BYTES).to_string();
        let brokers = BrokerWatch::default();
        let producer: KafkaProducer = client_config(
            &kafka,
            &[
                ("enable.idempotence", "true"),
                ("acks", "all"),
                ("linger.ms", &kafka.linger_ms.to_string()),
                ("batch.size", &kafka.batch_bytes.to_string()),
                ("compression.type", &kafka.compression),
                ("queue.buffering.max.kbytes", &kafka.producer_buffer_kbytes.to_string()),
                ("queue.buffering.max.messages", "1000000"),
                ("message.timeout.ms", &kafka.produce_timeout_ms.to_string()),
                ("message.max.bytes", &message_max_bytes),
                ("allow.auto.create.topics", "false"),
            ],
        )
        .create_with_context(brokers.clone())
        .map_err(|e| kafka_error("creating the producer", e))?;
        let admin: AdminClient<DefaultClientContext> = client_config(&kafka, &[])
            .create()
            .map_err(|e| kafka_error("creating the admin client", e))?;
        let probe = producer.clone();
        let timeout = Duration::from_millis(kafka.request_timeout_ms).min(REACHABLE_WAIT);
        let asked = tokio::task::spawn_blocking(move || probe.client().fetch_metadata(None, timeout))
            .await
            .map_err(|e| internal(format!("checking the brokers failed: {e}")))?;
        match asked {
            Ok(metadata) => log::info!(
                "kafka queue: connected to {} brokers={}",
                kafka.brokers,
                metadata.brokers().len()
            ),
            Err(e) => {
                brokers.down_at_start(timeout);
                log::error!(
                    "kafka queue: no broker of {} answered within {timeout:?} ({e}); the platform starts, and \
                     the message API answers 503 and stream instances wait until one answers",
                    kafka.brokers
                );
            }
        }
        let prober = brokers.probe_while_down(producer.clone());
        Ok(KafkaQueue {
            prober,
            brokers,
            config: kafka,
            max_message_bytes: config.max_message_bytes,
            producer,
            admin,
            topics: Mutex::default(),
            round_robin: AtomicU64::new(0),
        })
    }

    fn topic_name(&self, tenant: &TenantId) -> String {
        format!("{}{tenant}", self.config.topic_prefix)
    }

    fn known_partitions(&self, tenant: &TenantId) -> Option<u32> {
        self.topics
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(tenant)
            .copied()
    }

    /// The tenant's topic's partition count, creating the topic if needed.
    async fn partitions(&self, tenant: &TenantId) -> Result<u32, QueueError> {
        if let Some(partitions) = self.known_partitions(tenant) {
            return Ok(partitions);
        }
        let topic = self.topic_name(tenant);
        if self.brokers.down() {
            return Err(QueueError::new(
                QueueErrorKind::Unavailable,
                format!("kafka queue: tenant {tenant}: every broker is down, topic {topic} cannot be looked up"),
            ));
        }
        let max_message_bytes = (self.max_message_bytes + FRAMING_BYTES).to_string();
        let new_topic = NewTopic::new(
            &topic,
            self.config.partitions.max(1) as i32,
            TopicReplication::Fixed(self.config.replication_factor.max(1) as i32),
        )
        .set("max.message.bytes", &max_message_bytes);
        let timeout = Duration::from_millis(self.config.request_timeout_ms);
        let options = AdminOptions::new().operation_timeout(Some(timeout));
        let results = self
            .admin
            .create_topics([&new_topic], &options)
            .await
            .map_err(|e| kafka_error(&format!("creating topic {topic}"), e))?;
        let mut created = false;
        for result in results {
            match result {
                Ok(_) => created = true,
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((_, code)) => return Err(code_error(&format!("creating topic {topic}"), code)),
            }
        }
        let partitions = self.wait_for_leaders(&topic, timeout).await?;
        log::info!(
            "kafka queue: tenant={tenant} topic={topic} {} partitions={partitions}",
            if created { "created" } else { "exists" }
        );
        let mut topics = self.topics.lock().unwrap_or_else(|e| e.into_inner());
        Ok(*topics.entry(tenant.clone()).or_insert(partitions))
    }

    /// Waits until the topic's metadata lists every partition with a leader; returns their count.
    async fn wait_for_leaders(&self, topic: &str, timeout: Duration) -> Result<u32, QueueError> {
        let producer = self.producer.clone();
        let topic = topic.to_string();
        tokio::task::spawn_blocking(move || {
            let deadline = Instant::now() + timeout;
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                let metadata = producer
                    .client()
                    .fetch_metadata(Some(&topic), left.max(Duration::from_millis(100)))
                    .map_err(|e| kafka_error(&format!("reading the metadata of topic {topic}"), e))?;
                let ready = metadata.topics().iter().find(|t| t.name() == topic).and_then(|t| {
                    let partitions = t.partitions();
                    let led = t.error().is_none()
                        && !partitions.is_empty()
                        && partitions.iter().all(|p| p.leader() >= 0 && p.error().is_none());
                    led.then_some(partitions.len() as u32)
                });
                if let Some(partitions) = ready {
                    return Ok(partitions);
                }
                if Instant::now() >= deadline {
                    return Err(QueueError::new(
                        QueueErrorKind::Timeout,
                        format!("kafka queue: topic {topic} has no leader for every partition yet"),
                    ));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
        .await
        .map_err(|e| internal(format!("waiting for topic leaders failed: {e}")))?
    }
}

#[async_trait]
impl Queue for KafkaQueue {
    fn backend(&self) -> &'static str {
        "kafka"
    }

    async fn ensure_topic(&self, tenant: &TenantId) -> Result<(), QueueError> {
        self.partitions(tenant).await.map(|_| ())
    }

    async fn partition_count(&self, tenant: &TenantId) -> Result<u32, QueueError> {
        self.partitions(tenant).await
    }

    async fn reachable(&self, tenant: &TenantId) -> Result<(), QueueError> {
        let (producer, topic) = (self.producer.clone(), self.topic_name(tenant));
        let timeout = Duration::from_millis(self.config.request_timeout_ms).min(REACHABLE_WAIT);
        tokio::task::spawn_blocking(move || producer.client().fetch_metadata(Some(&topic), timeout))
            .await
            .map_err(|e| internal(format!("asking a broker failed: {e}")))?
            .map(|_| ())
            .map_err(|e| kafka_error(&format!("asking the brokers about tenant {tenant}'s topic"), e))
    }

    async fn produce(&self, tenant: &TenantId, messages: Vec<Vec<u8>>) -> Result<Produced, QueueError> {
        let bytes = check_sizes(tenant, &messages, self.max_message_bytes)?;
        if messages.is_empty() {
            return Ok(Produced::default());
        }
        let partitions = u64::from(self.partitions(tenant).await?);
        let topic = self.topic_name(tenant);
        let deadline = Instant::now() + Duration::from_millis(self.config.produce_timeout_ms);
        let first = self.round_robin.fetch_add(messages.len() as u64, Ordering::Relaxed);
        let mut deliveries = Vec::with_capacity(messages.len());
        for (index, payload) in messages.iter().enumerate() {
            let partition = ((first + index as u64) % partitions) as i32;
            let mut record = FutureRecord::<(), [u8]>::to(&topic)
                .payload(payload.as_slice())
                .partition(partition);
            loop {
                match self.producer.send_result(record) {
                    Ok(delivery) => {
                        deliveries.push(delivery);
                        break;
                    }
                    // The producer's buffer is full: wait for deliveries to make room.
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back))
                        if Instant::now() < deadline =>
                    {
                        record = back;
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                    Err((e, _)) => return Err(kafka_error(&format!("tenant {tenant}: producing to {topic}"), e)),
                }
            }
        }
        // Once every broker has been down for DOWN_WAIT and no acknowledgement came for
        // DOWN_POLL, stop waiting: the client learns at once and tries again, instead of waiting
        // out the message timeout. (One timer per request, not one per message.)
        let watch = &self.brokers;
        let mut unacknowledged: FuturesUnordered<DeliveryFuture> = deliveries.into_iter().collect();
        let mut tick = std::pin::pin!(tokio::time::sleep(DOWN_POLL));
        let mut acknowledged = false;
        loop {
            tokio::select! {
                biased;
                delivery = unacknowledged.next() => match delivery {
                    None => break,
                    Some(Ok(Ok(_))) => {
                        acknowledged = true;
                        watch.answered();
                    }
                    Some(Ok(Err((e, _)))) => {
                        return Err(kafka_error(&format!("tenant {tenant}: producing to {topic}"), e));
                    }
                    Some(Err(_)) => {
                        return Err(QueueError::new(
                            QueueErrorKind::Unavailable,
                            format!("kafka queue: tenant {tenant}: the producer shut down before delivery"),
                        ));
                    }
                },
                () = &mut tick => {
                    if !std::mem::take(&mut acknowledged) && watch.down() {
                        watch.clear_on_delivery(unacknowledged);
                        return Err(QueueError::new(
                            QueueErrorKind::Unavailable,
                            format!(
                                "kafka queue: tenant {tenant}: every broker is down (some messages may still be delivered)"
                            ),
                        ));
                    }
                    tick.as_mut().reset(tokio::time::Instant::now() + DOWN_POLL);
                }
            }
        }
        Ok(Produced {
            messages: messages.len() as u64,
            bytes,
        })
    }

    async fn consumer(&self, tenant: &TenantId, group: &str) -> Result<Box<dyn QueueConsumer>, QueueError> {
        check_group(tenant, group)?;
        self.partitions(tenant).await?;
        let topic = self.topic_name(tenant);
        let group_id = format!("{topic}.{group}");
        let consumer = KafkaConsumer::subscribe(&self.config, self.producer.clone(), topic, group_id)?;
        log::info!(
            "kafka queue: tenant={tenant} consumer subscribed: {}",
            consumer.describe()
        );
        Ok(Box::new(consumer))
    }
}

/// Our settings, then the operator's `client_properties`.
pub(super) fn client_config(kafka: &KafkaQueueConfig, settings: &[(&str, &str)]) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &kafka.brokers)
        .set("client.id", "mysimbdp");
    for (key, value) in settings {
        config.set(*key, *value);
    }
    for (key, value) in &kafka.client_properties {
        config.set(key, value);
    }
    config
}

pub(super) fn kind_of(code: RDKafkaErrorCode) -> QueueErrorKind {
    use RDKafkaErrorCode as C;
    match code {
        C::MessageSizeTooLarge | C::MessageBatchTooLarge => QueueErrorKind::TooLarge,
        C::MessageTimedOut | C::OperationTimedOut | C::RequestTimedOut | C::TimedOutQueue | C::QueueFull => {
            QueueErrorKind::Timeout
        }
        C::RebalanceInProgress
        | C::IllegalGeneration
        | C::UnknownMemberId
        | C::AssignmentLost
        | C::StaleMemberEpoch
        | C::FencedMemberEpoch => QueueErrorKind::Rebalanced,
        C::BrokerTransportFailure
        | C::AllBrokersDown
        | C::Resolve
        | C::NetworkException
        | C::LeaderNotAvailable
        | C::NotLeaderForPartition
        | C::NotEnoughReplicas
        | C::NotEnoughReplicasAfterAppend
        | C::CoordinatorLoadInProgress
        | C::CoordinatorNotAvailable
        | C::NotCoordinator
        | C::WaitingForCoordinator
        | C::BrokerDestroy
        | C::UnknownTopicOrPartition => QueueErrorKind::Unavailable,
        C::InvalidArgument => QueueErrorKind::Invalid,
        _ => QueueErrorKind::Internal,
    }
}

pub(super) fn kafka_error(what: &str, error: KafkaError) -> QueueError {
    let kind = error.rdkafka_error_code().map_or(QueueErrorKind::Internal, kind_of);
    QueueError::new(kind, format!("kafka queue: {what}: {error}"))
}

fn code_error(what: &str, code: RDKafkaErrorCode) -> QueueError {
    QueueError::new(kind_of(code), format!("kafka queue: {what}: {code}"))
}

pub(super) fn internal(message: String) -> QueueError {
    QueueError::new(QueueErrorKind::Internal, format!("kafka queue: {message}"))
}
