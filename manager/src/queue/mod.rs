//! queue: the tenants' message topics between the HTTP API (which produces accepted messages)
//! and the stream ingest instances (which consume them). One interface ([`Queue`] for topics
//! and producing, [`QueueConsumer`] for one member of a consumer group), two backends:
//! - [`embedded`]: a durable queue in one SQLite database, the default, nothing to install;
//! - [`kafka`]: Apache Kafka through `rdkafka`.
//!
//! The contract, the same for both (`tests/queue.rs` runs the same cases against each):
//! - **A topic per tenant.** A [`TenantId`] names its topic; nothing here can name another
//!   tenant's topic. Topics are created on first use (or ahead with [`Queue::ensure_topic`]).
//! - **Durable acknowledgement.** [`Queue::produce`] returns `Ok` only once every message of
//!   the call is durable: written to all in-sync replicas (`acks=all`) for Kafka, in a
//!   committed, fsynced SQLite transaction for the embedded queue. An acknowledged message
//!   survives a kill -9 of the producing process. On an error, some messages of the call may
//!   still have been stored: a retry may duplicate them (delivery is at-least-once; the rows
//!   written from messages are keyed by their data, so a duplicate never becomes a second row).
//! - **Per-partition order.** A topic has a fixed number of partitions; the messages of a
//!   partition are delivered in the order they were stored, each with its offset.
//! - **Consumer groups, explicit commits.** Consumers of one group share the topic's
//!   partitions (each partition has at most one consumer of the group at a time), so more
//!   consumers means more throughput. Nothing is committed automatically: a consumer commits
//!   offsets with [`QueueConsumer::commit`] once what it polled is stored. A consumer that
//!   starts (after a restart, a crash, or a rebalance) reads from the group's committed offsets,
//!   so every uncommitted message is delivered again.
//! - **Bounded consumer memory.** A consumer holds at most one poll's messages plus a bounded
//!   prefetch (the Kafka consumer's `queued.max.messages.kbytes`; the embedded queue reads on
//!   demand), however far behind the group is.
//!
//! The queue knows nothing about HTTP, plugins or coredms.

pub mod embedded;
pub mod kafka;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};

use crate::tenants::TenantId;

/// What a caller can do about a queue error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum QueueErrorKind {
    /// The broker (or the embedded queue's database) cannot be reached or is shutting down:
    /// retry later.
    Unavailable,
    /// The operation did not finish in time (for `produce`, some messages may be stored): retry.
    Timeout,
    /// A message is larger than the queue accepts ([`QueueConfig::max_message_bytes`]).
    TooLarge,
    /// A bad argument (an invalid group name, an offset of a partition the topic lacks).
    Invalid,
    /// A commit was refused because the group was rebalancing or the partitions moved to
    /// another consumer. Nothing is lost: uncommitted messages are delivered again to the
    /// partition's owner. Carry on polling.
    Rebalanced,
    /// Anything else.
    Internal,
}

/// A queue error with its kind, so callers choose retry or give-up without parsing text.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct QueueError {
    /// What kind of failure.
    pub kind: QueueErrorKind,
    /// What failed, on what (tenant, topic, group), and why.
    pub message: String,
}

impl QueueError {
    /// An error of `kind`.
    pub fn new(kind: QueueErrorKind, message: impl Into<String>) -> Self {
        QueueError {
            kind,
            message: message.into(),
        }
    }

    /// Whether retrying the same request may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self.kind, QueueErrorKind::Unavailable | QueueErrorKind::Timeout)
    }

    /// The delay a client should wait before retrying, for transient errors.
    pub fn retry_after(&self) -> Option<Duration> {
        self.is_transient().then_some(Duration::from_secs(5))
    }
}

/// The result of an acknowledged [`Queue::produce`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Produced {
    /// Messages stored.
    pub messages: u64,
    /// Their payload bytes.
    pub bytes: u64,
}

/// One message as a consumer receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedMessage {
    /// The partition of the tenant's topic.
    pub partition: u32,
    /// Its offset in the partition: increasing in the order the messages were stored.
    pub offset: u64,
    /// When it was stored, in milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    /// The bytes produced, unchanged.
    pub payload: Vec<u8>,
}

/// A queue backend: tenants' topics and their producer.
#[async_trait]
pub trait Queue: Send + Sync {
    /// `embedded` or `kafka`.
    fn backend(&self) -> &'static str;

    /// Creates the tenant's topic if it is missing (an existing topic is kept as it is, with
    /// its partition count). `produce` and `consumer` call it themselves; calling it ahead
    /// (when a tenant is added) only moves the cost.
    async fn ensure_topic(&self, tenant: &TenantId) -> Result<(), QueueError>;

    /// The partitions of the tenant's topic (creating it if it is missing).
    async fn partition_count(&self, tenant: &TenantId) -> Result<u32, QueueError>;

    /// Whether the queue answers for the tenant's topic now (one short request to a broker;
    /// the embedded queue always answers). The stream manager asks before it scales out: more
    /// instances would wait for the queue like the others.
    async fn reachable(&self, _tenant: &TenantId) -> Result<(), QueueError> {
        Ok(())
    }

    /// Appends `messages` to the tenant's topic, spread over its partitions (the messages of
    /// one call that land in one partition keep their order there). Returns once every
    /// message is durable; see the module docs for what an error means.
    async fn produce(&self, tenant: &TenantId, messages: Vec<Vec<u8>>) -> Result<Produced, QueueError>;

    /// A new member of consumer group `group` (`[A-Za-z0-9._-]{1,100}`) on the tenant's topic.
    /// Members of one group share the partitions; dropping a consumer leaves the group and its
    /// partitions go to the others.
    async fn consumer(&self, tenant: &TenantId, group: &str) -> Result<Box<dyn QueueConsumer>, QueueError>;
}

/// One member of a consumer group. Poll it regularly (at least every few minutes): group
/// membership and rebalances progress while it polls.
#[async_trait]
pub trait QueueConsumer: Send {
    /// Up to `max` messages (at least one when any is available) from this consumer's
    /// partitions, waiting up to `wait` for the first; an empty vector when none came. Each
    /// partition's messages come in offset order, from the position after the last message
    /// this consumer returned (or, for a partition newly assigned to it, from the group's
    /// committed offset).
    async fn poll(&mut self, max: usize, wait: Duration) -> Result<Vec<QueuedMessage>, QueueError>;

    /// Commits, for each `(partition, offset)`, every message of that partition up to and
    /// including `offset`: a consumer of this group started later begins after it. The future
    /// ends once the commit is durable; it does not borrow the consumer, so the consumer may poll
    /// on while a commit is under way. Commit only what is stored.
    fn commit(&mut self, up_to: &[(u32, u64)]) -> BoxFuture<'static, Result<(), QueueError>>;

    /// Messages of the whole topic not yet committed by this group (all partitions, whoever
    /// owns them): what the group still has to process. Like a commit, the future does not
    /// borrow the consumer.
    fn lag(&mut self) -> BoxFuture<'static, Result<u64, QueueError>>;

    /// The partitions currently assigned to this consumer, in increasing order (empty while the
    /// group is still forming, or when the group has more consumers than the topic partitions).
    fn assignment(&mut self) -> Result<Vec<u32>, QueueError>;
}

/// Which backend [`open`] starts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QueueBackend {
    /// [`embedded`]: SQLite in the data folder.
    #[default]
    Embedded,
    /// [`kafka`]: Apache Kafka.
    Kafka,
}

/// The queue section of the platform configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    /// `embedded` (the default) or `kafka`.
    pub backend: QueueBackend,
    /// The largest message accepted, in bytes (default 4 MiB); larger ones are refused with
    /// [`QueueErrorKind::TooLarge`]. Kafka topics are created to accept this size.
    pub max_message_bytes: usize,
    /// Settings of the embedded queue (used when `backend` is `embedded`).
    pub embedded: EmbeddedQueueConfig,
    /// Settings of Kafka (used when `backend` is `kafka`).
    pub kafka: KafkaQueueConfig,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            backend: QueueBackend::Embedded,
            max_message_bytes: 4 << 20,
            embedded: EmbeddedQueueConfig::default(),
            kafka: KafkaQueueConfig::default(),
        }
    }
}

/// Settings of the embedded queue.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EmbeddedQueueConfig {
    /// Partitions of a new topic (default 4). An existing topic keeps the count it was created
    /// with.
    pub partitions: u32,
    /// Produce and commit requests waiting for the writer thread (default 64); callers beyond
    /// that wait (backpressure).
    pub writer_queue: usize,
    /// Payload bytes that one transaction (one fsync) may group from waiting requests
    /// (default 32 MiB; a single larger request is still one transaction).
    pub max_transaction_bytes: usize,
    /// Payload bytes one poll returns at most (default 8 MiB; at least one message).
    pub max_poll_bytes: usize,
    /// How often, at most, messages every group has committed are deleted, in milliseconds
    /// (default 1000).
    pub cleanup_interval_ms: u64,
}

impl Default for EmbeddedQueueConfig {
    fn default() -> Self {
        EmbeddedQueueConfig {
            partitions: 4,
            writer_queue: 64,
            max_transaction_bytes: 32 << 20,
            max_poll_bytes: 8 << 20,
            cleanup_interval_ms: 1000,
        }
    }
}

/// Settings of the Kafka backend.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaQueueConfig {
    /// `bootstrap.servers`: `host:port[,host:port...]` (default `127.0.0.1:9092`).
    pub brokers: String,
    /// Prefix of topic and consumer group names: the topic of tenant `t` is `<prefix>t`, group
    /// `g` on it is `<prefix>t.g` (default `mysimbdp.`).
    pub topic_prefix: String,
    /// Partitions of a new topic (default 4). An existing topic keeps its own count.
    pub partitions: u32,
    /// Replication factor of a new topic (default 1, for a single broker; use 3 in production).
    pub replication_factor: u32,
    /// Producer `linger.ms`: how long to wait to fill a batch (default 5).
    pub linger_ms: u64,
    /// Producer `batch.size`: bytes per partition batch (default 1 MiB).
    pub batch_bytes: usize,
    /// Producer `compression.type`: `none` (default), `gzip`, `lz4` or `snappy`.
    pub compression: String,
    /// Producer `queue.buffering.max.kbytes`: messages waiting to be sent, in KiB (default
    /// 65536). A produce call waits for room, up to `produce_timeout_ms`.
    pub producer_buffer_kbytes: u64,
    /// The longest a produce call waits for all its messages to be acknowledged, in
    /// milliseconds (default 30000; librdkafka's `message.timeout.ms`).
    pub produce_timeout_ms: u64,
    /// Consumer prefetch bound `queued.max.messages.kbytes`, in KiB (default 16384): a
    /// consumer's memory does not grow with the group's lag.
    pub consumer_prefetch_kbytes: u64,
    /// Consumer `queued.min.messages` per partition (default 10000; librdkafka's 100000 is
    /// lowered so that the byte bound above is the one that applies).
    pub consumer_prefetch_messages: u64,
    /// Consumer `fetch.max.bytes` per fetch request (default 8 MiB).
    pub fetch_max_bytes: usize,
    /// Consumer `session.timeout.ms` (default 10000): how soon the partitions of a consumer that
    /// died without leaving go to the others.
    pub session_timeout_ms: u64,
    /// Timeout of admin, metadata, commit and offset requests, in milliseconds (default 10000).
    pub request_timeout_ms: u64,
    /// Extra librdkafka properties set on every client after the ones above (for example
    /// `security.protocol`), so they can also override them.
    pub client_properties: BTreeMap<String, String>,
}

impl Default for KafkaQueueConfig {
    fn default() -> Self {
        KafkaQueueConfig {
            brokers: "127.0.0.1:9092".to_string(),
            topic_prefix: "mysimbdp.".to_string(),
            partitions: 4,
            replication_factor: 1,
            linger_ms: 5,
            batch_bytes: 1 << 20,
            compression: "none".to_string(),
            producer_buffer_kbytes: 65536,
            produce_timeout_ms: 30_000,
            consumer_prefetch_kbytes: 16384,
            consumer_prefetch_messages: 10_000,
            fetch_max_bytes: 8 << 20,
            session_timeout_ms: 10_000,
            request_timeout_ms: 10_000,
            client_properties: BTreeMap::new(),
        }
    }
}

/// Opens the configured backend. The embedded queue keeps its database in `data_dir`
/// (created if missing); Kafka is checked to answer before this returns.
pub async fn open(config: &QueueConfig, data_dir: &Path) -> Result<Arc<dyn Queue>, QueueError> {
    match config.backend {
        QueueBackend::Embedded => Ok(Arc::new(embedded::EmbeddedQueue::open(config, data_dir).await?)),
        QueueBackend::Kafka => Ok(Arc::new(kafka::KafkaQueue::connect(config).await?)),
    }
}

/// Checks a consumer group name: `[A-Za-z0-9._-]{1,100}`.
pub(crate) fn check_group(tenant: &TenantId, group: &str) -> Result<(), QueueError> {
    let valid = !group.is_empty()
        && group.len() <= 100
        && group
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if valid {
        Ok(())
    } else {
        Err(QueueError::new(
            QueueErrorKind::Invalid,
            format!(
                "tenant {tenant}: {group:?} is not a valid consumer group (1 to 100 of A-Z, a-z, 0-9, '.', '_', '-')"
            ),
        ))
    }
}

/// Checks every message against `max_message_bytes`; returns the payload bytes.
pub(crate) fn check_sizes(
    tenant: &TenantId,
    messages: &[Vec<u8>],
    max_message_bytes: usize,
) -> Result<u64, QueueError> {
    let mut bytes = 0u64;
    for (index, message) in messages.iter().enumerate() {
        if message.len() > max_message_bytes {
            return Err(QueueError::new(
                QueueErrorKind::TooLarge,
                format!(
                    "tenant {tenant}: message {index} has {} bytes, more than the queue accepts ({max_message_bytes})",
                    message.len()
                ),
            ));
        }
        bytes += message.len() as u64;
    }
    Ok(bytes)
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_to_embedded_and_refuses_unknown_fields() {
        let config: QueueConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(config, QueueConfig::default());
        assert_eq!(config.backend, QueueBackend::Embedded);
        let kafka: QueueConfig =
            serde_json::from_str(r#"{"backend": "kafka", "kafka": {"brokers": "10.0.0.1:9092", "partitions": 8}}"#)
                .unwrap();
        assert_eq!(kafka.backend, QueueBackend::Kafka);
        assert_eq!(kafka.kafka.partitions, 8);
        assert_eq!(kafka.kafka.topic_prefix, "mysimbdp.");
        assert!(serde_json::from_str::<QueueConfig>(r#"{"kafka": {"partition": 8}}"#).is_err());
        assert!(serde_json::from_str::<QueueConfig>(r#"{"backend": "rabbit"}"#).is_err());
    }

    #[test]
    fn group_names_are_checked() {
        let tenant: TenantId = "client1".parse().unwrap();
        assert!(check_group(&tenant, "stream-app.v1_2").is_ok());
        for bad in ["", "a b", "ü", &"g".repeat(101)] {
            assert_eq!(check_group(&tenant, bad).unwrap_err().kind, QueueErrorKind::Invalid);
        }
    }

    #[test]
    fn oversized_messages_are_too_large() {
        let tenant: TenantId = "client1".parse().unwrap();
        assert_eq!(check_sizes(&tenant, &[vec![0; 10], vec![1; 5]], 10).unwrap(), 15);
        let error = check_sizes(&tenant, &[vec![0; 10], vec![1; 11]], 10).unwrap_err();
        assert_eq!(error.kind, QueueErrorKind::TooLarge);
        assert!(error.message.contains("message 1"), "{}", error.message);
    }
}
