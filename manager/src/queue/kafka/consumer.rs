//! One member of a Kafka consumer group: a `StreamConsumer` with explicit, synchronous commits
//! and a bounded prefetch.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::Producer;
use rdkafka::{Offset, TopicPartitionList};

use super::{client_config, internal, kafka_error, kind_of};
use crate::queue::{KafkaQueueConfig, QueueConsumer, QueueError, QueueErrorKind, QueuedMessage};

/// One member of a Kafka consumer group.
pub struct KafkaConsumer {
    /// `None` only while dropping.
    consumer: Option<Arc<StreamConsumer>>,
    /// The queue's producer, whose connections answer metadata and watermark queries at once
    /// (the consumer's own connection to a leader is often busy with a long-poll fetch).
    producer: super::KafkaProducer,
    topic: String,
    group_id: String,
    request_timeout: Duration,
}

impl KafkaConsumer {
    /// Creates a consumer of group `group_id` and subscribes it to `topic`.
    pub(super) fn subscribe(
        kafka: &KafkaQueueConfig,
        producer: super::KafkaProducer,
        topic: String,
        group_id: String,
    ) -> Result<Self, QueueError> {
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
        Ok(KafkaConsumer {
            consumer: Some(Arc::new(consumer)),
            producer,
            topic,
            group_id,
            request_timeout: Duration::from_millis(kafka.request_timeout_ms),
        })
    }

    /// Its group and topic, for logs.
    pub(super) fn describe(&self) -> String {
        format!("group {} on {}", self.group_id, self.topic)
    }

    fn consumer(&self) -> &Arc<StreamConsumer> {
        self.consumer.as_ref().expect("the consumer is present until dropped")
    }
}

/// Runs a blocking librdkafka call of `consumer` on the blocking pool.
async fn blocking<T: Send + 'static>(
    consumer: Arc<StreamConsumer>,
    f: impl FnOnce(&StreamConsumer) -> Result<T, QueueError> + Send + 'static,
) -> Result<T, QueueError> {
    tokio::task::spawn_blocking(move || f(&consumer))
        .await
        .map_err(|e| internal(format!("a consumer call failed: {e}")))?
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

    fn commit(&mut self, up_to: &[(u32, u64)]) -> BoxFuture<'static, Result<(), QueueError>> {
        if up_to.is_empty() {
            return Box::pin(std::future::ready(Ok(())));
        }
        let mut list = TopicPartitionList::new();
        for (partition, offset) in up_to {
            if let Err(e) =
                list.add_partition_offset(&self.topic, *partition as i32, Offset::Offset(*offset as i64 + 1))
            {
                return Box::pin(std::future::ready(Err(kafka_error("building a commit", e))));
            }
        }
        let what = format!("group {} committing on {}", self.group_id, self.topic);
        Box::pin(blocking(Arc::clone(self.consumer()), move |consumer| {
            consumer
                .commit(&list, CommitMode::Sync)
                .map_err(|e| kafka_error(&what, e))
        }))
    }

    fn lag(&mut self) -> BoxFuture<'static, Result<u64, QueueError>> {
        let (topic, timeout, producer) = (self.topic.clone(), self.request_timeout, self.producer.clone());
        let what = format!("group {} reading the lag of {}", self.group_id, self.topic);
        Box::pin(blocking(Arc::clone(self.consumer()), move |consumer| {
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
        }))
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

fn is_transient(error: &KafkaError) -> bool {
    error.rdkafka_error_code().is_some_and(|code| {
        matches!(
            kind_of(code),
            QueueErrorKind::Unavailable | QueueErrorKind::Timeout | QueueErrorKind::Rebalanced
        )
    })
}
