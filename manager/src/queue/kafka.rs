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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures_util::StreamExt;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

use super::{
    KafkaQueueConfig, Produced, Queue, QueueConfig, QueueConsumer, QueueError, QueueErrorKind, QueuedMessage,
    check_group, check_sizes,
};
use crate::tenants::TenantId;

/// Room for record batch framing above the largest payload, in a topic's `max.message.bytes`
/// and the producer's `message.max.bytes`.
const FRAMING_BYTES: usize = 64 << 10;

/// The Kafka backend.
pub struct KafkaQueue {
    config: KafkaQueueConfig,
    max_message_bytes: usize,
    producer: FutureProducer,
    admin: AdminClient<DefaultClientContext>,
    /// Topics known to exist, with their partition count.
    topics: Mutex<HashMap<TenantId, u32>>,
    /// Round-robin counter for the partition of the next message.
    round_robin: AtomicU64,
}

impl KafkaQueue {
    /// Creates the producer and the admin client and checks that a broker answers.
    pub async fn connect(config: &QueueConfig) -> Result<Self, QueueError> {
        let kafka = config.kafka.clone();
        let message_max_bytes = (config.max_message_bytes + FRAMING_BYTES).to_string();
        let producer: FutureProducer = client_config(
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
        .create()
        .map_err(|e| kafka_error("creating the producer", e))?;
        let admin: AdminClient<DefaultClientContext> = client_config(&kafka, &[])
            .create()
            .map_err(|e| kafka_error("creating the admin client", e))?;
        let probe = producer.clone();
        let timeout = Duration::from_millis(kafka.request_timeout_ms);
        let brokers = tokio::task::spawn_blocking(move || probe.client().fetch_metadata(None, timeout))
            .await
            .map_err(|e| internal(format!("checking the brokers failed: {e}")))?
            .map_err(|e| kafka_error(&format!("reaching {}", kafka.brokers), e))?
            .brokers()
            .len();
        log::info!("kafka queue: connected to {} brokers={brokers}", kafka.brokers);
        Ok(KafkaQueue {
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
        let results = futures_util::future::join_all(deliveries).await;
        for result in results {
            match result {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => return Err(kafka_error(&format!("tenant {tenant}: producing to {topic}"), e)),
                Err(_) => {
                    return Err(QueueError::new(
                        QueueErrorKind::Unavailable,
                        format!("kafka queue: tenant {tenant}: the producer shut down before delivery"),
                    ));
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
        let kafka = &self.config;
        let consumer: StreamConsumer = client_config(
            kafka,
            &[
                ("group.id", &group_id),
                ("enable.auto.commit", "false"),
                ("enable.auto.offset.store", "false"),
                ("auto.offset.reset", "earliest"),
                ("partition.assignment.strategy", "cooperative-sticky"),
                ("session.timeout.ms", &kafka.session_timeout_ms.to_string()),
                (
                    "heartbeat.interval.ms",
                    &(kafka.session_timeout_ms / 10).max(100).to_string(),
                ),
                (
                    "queued.max.messages.kbytes",
                    &kafka.consumer_prefetch_kbytes.to_string(),
                ),
                ("queued.min.messages", &kafka.consumer_prefetch_messages.to_string()),
                ("fetch.max.bytes", &kafka.fetch_max_bytes.to_string()),
                // With the prefetch bounded, the queue thresholds are reached all the time, and
                // librdkafka then postpones the partition's next fetch by this much (1000 ms by
                // default: consumption fell to about 20k messages/s).
                ("fetch.queue.backoff.ms", "10"),
            ],
        )
        .create()
        .map_err(|e| kafka_error(&format!("creating a consumer of group {group_id}"), e))?;
        consumer
            .subscribe(&[&topic])
            .map_err(|e| kafka_error(&format!("subscribing group {group_id} to {topic}"), e))?;
        log::info!("kafka queue: tenant={tenant} group={group_id} consumer subscribed to {topic}");
        Ok(Box::new(KafkaConsumer {
            consumer: Some(Arc::new(consumer)),
            producer: self.producer.clone(),
            topic,
            group_id,
            request_timeout: Duration::from_millis(kafka.request_timeout_ms),
        }))
    }
}

/// One member of a Kafka consumer group.
pub struct KafkaConsumer {
    /// `None` only while dropping.
    consumer: Option<Arc<StreamConsumer>>,
    /// The queue's producer, whose connections answer metadata and watermark queries at once
    /// (the consumer's own connection to a leader is often busy with a long-poll fetch).
    producer: FutureProducer,
    topic: String,
    group_id: String,
    request_timeout: Duration,
}

impl KafkaConsumer {
    fn consumer(&self) -> &Arc<StreamConsumer> {
        self.consumer.as_ref().expect("the consumer is present until dropped")
    }

    /// Runs a blocking librdkafka call on the blocking pool.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&StreamConsumer) -> Result<T, QueueError> + Send + 'static,
    ) -> Result<T, QueueError> {
        let consumer = Arc::clone(self.consumer());
        tokio::task::spawn_blocking(move || f(&consumer))
            .await
            .map_err(|e| internal(format!("a consumer call failed: {e}")))?
    }
}

#[async_trait]
impl QueueConsumer for KafkaConsumer {
    async fn poll(&mut self, max: usize, wait: Duration) -> Result<Vec<QueuedMessage>, QueueError> {
        let deadline = tokio::time::Instant::now() + wait;
        let consumer = Arc::clone(self.consumer());
        let mut stream = consumer.stream();
        let mut messages = Vec::new();
        while messages.len() < max.max(1) {
            // After the first message, take only what is already fetched.
            let until = if messages.is_empty() {
                deadline
            } else {
                tokio::time::Instant::now()
            };
            let Ok(next) = tokio::time::timeout_at(until, stream.next()).await else {
                break;
            };
            match next {
                Some(Ok(message)) => messages.push(QueuedMessage {
                    partition: message.partition() as u32,
                    offset: message.offset() as u64,
                    timestamp_ms: message.timestamp().to_millis().unwrap_or(0),
                    payload: message.payload().unwrap_or_default().to_vec(),
                }),
                Some(Err(e)) if messages.is_empty() && !is_transient(&e) => {
                    return Err(kafka_error(
                        &format!("group {} polling {}", self.group_id, self.topic),
                        e,
                    ));
                }
                Some(Err(e)) => {
                    log::warn!("kafka queue: group {} polling {}: {e}", self.group_id, self.topic);
                    if !messages.is_empty() {
                        break;
                    }
                }
                None => break,
            }
        }
        Ok(messages)
    }

    async fn commit(&mut self, up_to: &[(u32, u64)]) -> Result<(), QueueError> {
        if up_to.is_empty() {
            return Ok(());
        }
        let mut list = TopicPartitionList::new();
        for (partition, offset) in up_to {
            list.add_partition_offset(&self.topic, *partition as i32, Offset::Offset(*offset as i64 + 1))
                .map_err(|e| kafka_error("building a commit", e))?;
        }
        let what = format!("group {} committing on {}", self.group_id, self.topic);
        self.blocking(move |consumer| {
            consumer
                .commit(&list, CommitMode::Sync)
                .map_err(|e| kafka_error(&what, e))
        })
        .await
    }

    async fn lag(&mut self) -> Result<u64, QueueError> {
        let (topic, timeout, producer) = (self.topic.clone(), self.request_timeout, self.producer.clone());
        let what = format!("group {} reading the lag of {}", self.group_id, self.topic);
        self.blocking(move |consumer| {
            let fail = |e| kafka_error(&what, e);
            let metadata = producer.client().fetch_metadata(Some(&topic), timeout).map_err(fail)?;
            let partitions: Vec<i32> = metadata
                .topics()
                .iter()
                .filter(|t| t.name() == topic)
                .flat_map(|t| t.partitions().iter().map(|p| p.id()))
                .collect();
            let mut list = TopicPartitionList::new();
            for partition in &partitions {
                list.add_partition(&topic, *partition);
            }
            let committed = consumer.committed_offsets(list, timeout).map_err(fail)?;
            let mut lag = 0u64;
            for partition in partitions {
                let (low, high) = producer
                    .client()
                    .fetch_watermarks(&topic, partition, timeout)
                    .map_err(fail)?;
                let position = match committed.find_partition(&topic, partition).map(|e| e.offset()) {
                    Some(Offset::Offset(offset)) => offset.max(low),
                    _ => low,
                };
                lag += (high - position).max(0) as u64;
            }
            Ok(lag)
        })
        .await
    }

    fn assignment(&mut self) -> Result<Vec<u32>, QueueError> {
        let list = self
            .consumer()
            .assignment()
            .map_err(|e| kafka_error(&format!("group {} reading its assignment", self.group_id), e))?;
        let mut partitions: Vec<u32> = list
            .elements()
            .iter()
            .filter(|e| e.topic() == self.topic)
            .map(|e| e.partition() as u32)
            .collect();
        partitions.sort_unstable();
        Ok(partitions)
    }
}

impl Drop for KafkaConsumer {
    /// Leaving the group waits for the broker: done on the blocking pool when there is one.
    fn drop(&mut self) {
        let Some(consumer) = self.consumer.take() else {
            return;
        };
        log::info!("kafka queue: group {} consumer leaving", self.group_id);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn_blocking(move || drop(consumer));
        }
    }
}

/// Our settings, then the operator's `client_properties`.
fn client_config(kafka: &KafkaQueueConfig, settings: &[(&str, &str)]) -> ClientConfig {
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

fn is_transient(error: &KafkaError) -> bool {
    error.rdkafka_error_code().is_some_and(|code| {
        matches!(
            kind_of(code),
            QueueErrorKind::Unavailable | QueueErrorKind::Timeout | QueueErrorKind::Rebalanced
        )
    })
}

fn kind_of(code: RDKafkaErrorCode) -> QueueErrorKind {
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

fn kafka_error(what: &str, error: KafkaError) -> QueueError {
    let kind = error.rdkafka_error_code().map_or(QueueErrorKind::Internal, kind_of);
    QueueError::new(kind, format!("kafka queue: {what}: {error}"))
}

fn code_error(what: &str, code: RDKafkaErrorCode) -> QueueError {
    QueueError::new(kind_of(code), format!("kafka queue: {what}: {code}"))
}

fn internal(message: String) -> QueueError {
    QueueError::new(QueueErrorKind::Internal, format!("kafka queue: {message}"))
}
