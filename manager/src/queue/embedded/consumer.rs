//! One member of a consumer group of the embedded queue: its partitions come from the group's
//! membership ([`groups`](super::groups)), its reads go through a read-only connection of its
//! own, its commits through the writer.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures_util::future::BoxFuture;
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::watch;

use super::segments;
use super::writer::{Request, internal, sqlite_error};
use super::{Shared, TopicInfo, open_reader};
use crate::queue::{QueueConsumer, QueueError, QueuedMessage};
use crate::tenants::TenantId;

/// One member of a consumer group of the embedded queue.
pub struct EmbeddedConsumer {
    shared: Arc<Shared>,
    tenant: TenantId,
    topic: Arc<TopicInfo>,
    changed: watch::Receiver<u64>,
    group: String,
    member: u64,
    /// The read connection (`None` while a read has it, or after a cancelled read).
    reader: Option<Connection>,
    /// The connection lag reads use (opened at the first), apart from `reader`: a lag read
    /// runs beside the consumer's reads.
    lag_reader: Arc<Mutex<Option<Connection>>>,
    /// The group generation `positions` was computed for.
    generation: u64,
    /// The assigned partitions and the next offset to read in each (`None`: the group's
    /// committed offset, to be looked up).
    positions: BTreeMap<u32, Option<u64>>,
    /// Which partition is read first, rotating so that each gets its turn.
    rotation: usize,
    /// The next poll's read, started when this one returned messages.
    ahead: Option<Ahead>,
}

impl EmbeddedConsumer {
    /// A consumer that has joined the group as `member`.
    pub(super) fn new(
        shared: Arc<Shared>,
        tenant: TenantId,
        topic: Arc<TopicInfo>,
        group: String,
        member: u64,
        reader: Connection,
    ) -> Self {
        EmbeddedConsumer {
            shared,
            tenant,
            changed: topic.changed.subscribe(),
            topic,
            group,
            member,
            reader: Some(reader),
            lag_reader: Arc::default(),
            generation: u64::MAX,
            positions: BTreeMap::new(),
            rotation: 0,
            ahead: None,
        }
    }

    /// Recomputes the assignment when the group changed: partitions kept keep their position,
    /// new ones start at the committed offset.
    fn refresh_assignment(&mut self) {
        let (generation, partitions) =
            self.shared
                .groups()
                .assignment(self.topic.id, &self.group, self.member, self.topic.partitions);
        if generation == self.generation {
            return;
        }
        let positions = partitions
            .into_iter()
            .map(|p| (p, self.positions.get(&p).copied().flatten()))
            .collect();
        self.positions = positions;
        self.generation = generation;
    }

    /// Starts `f` on the read connection (opened again if a cancelled job kept it) on the
    /// blocking pool.
    fn spawn_on_reader<T: Send + 'static>(
        &mut self,
        what: &'static str,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> ReaderTask<T> {
        let reader = self.reader.take();
        let path = self.shared.path.clone();
        tokio::task::spawn_blocking(move || {
            let reader = match reader {
                Some(reader) => reader,
                None => match open_reader(&path) {
                    Ok(reader) => reader,
                    Err(e) => return (None, Err(e)),
                },
            };
            let result = f(&reader).map_err(|e| sqlite_error(what, e));
            (Some(reader), result)
        })
    }

    /// Waits for a job on the read connection and takes the connection back.
    async fn join_reader<T>(&mut self, what: &'static str, task: ReaderTask<T>) -> Result<T, QueueError> {
        let (reader, result) = task.await.map_err(|e| internal(format!("{what} failed: {e}")))?;
        if reader.is_some() {
            self.reader = reader;
        }
        result.map_err(self.in_group())
    }

    /// What names this consumer's tenant and group in front of an error of its queue.
    fn in_group(&self) -> impl FnOnce(QueueError) -> QueueError + Send + 'static {
        let context = format!("tenant {} group {}", self.tenant, self.group);
        move |e| QueueError::new(e.kind, format!("{context}: {}", e.message))
    }

    /// Reads up to `max` messages from the assigned partitions and advances the positions: the
    /// read started ahead when it still fits (same assignment, some messages, no more than
    /// `max`), else a new one.
    async fn read(&mut self, max: usize) -> Result<Vec<QueuedMessage>, QueueError> {
        if let Some(ahead) = self.ahead.take() {
            let generation = ahead.generation;
            // A read ahead that failed or does not fit is dropped: the new read says why.
            if let Ok((messages, positions)) = self.join_reader(READING, ahead.task).await
                && generation == self.generation
                && !messages.is_empty()
                && messages.len() <= max
            {
                self.advance(positions);
                return Ok(messages);
            }
        }
        let Some(read) = self.start(max) else {
            return Ok(Vec::new());
        };
        let (messages, positions) = self.join_reader(READING, read.task).await?;
        self.advance(positions);
        Ok(messages)
    }

    /// Starts reading up to `max` messages from the current positions on the blocking pool.
    fn start(&mut self, max: usize) -> Option<Ahead> {
        if self.positions.is_empty() {
            return None;
        }
        let count = self.positions.len();
        let first = self.rotation % count;
        self.rotation = self.rotation.wrapping_add(1);
        let mut order: Vec<(u32, Option<u64>)> = self.positions.iter().map(|(p, o)| (*p, *o)).collect();
        order.rotate_left(first);
        let (topic_id, group, max_bytes) = (self.topic.id, self.group.clone(), self.shared.max_poll_bytes);
        let task = self.spawn_on_reader(READING, move |reader| {
            read_partitions(reader, topic_id, &group, order, max, max_bytes)
        });
        Some(Ahead {
            generation: self.generation,
            task,
        })
    }

    /// Moves the positions past what a read returned.
    fn advance(&mut self, positions: Positions) {
        for (partition, position) in positions {
            if let Some(slot) = self.positions.get_mut(&partition) {
                *slot = Some(position);
            }
        }
    }
}

/// A job on the read connection, on the blocking pool: the connection back, and its result.
type ReaderTask<T> = tokio::task::JoinHandle<(Option<Connection>, Result<T, QueueError>)>;

/// What a read of messages is called in errors.
const READING: &str = "reading messages";

/// A read started for the next poll while the messages of this one are processed.
struct Ahead {
    /// The assignment generation it read for: another generation discards it.
    generation: u64,
    /// The messages, and each read partition's new position.
    task: ReaderTask<(Vec<QueuedMessage>, Positions)>,
}

#[async_trait]
impl QueueConsumer for EmbeddedConsumer {
    async fn poll(&mut self, max: usize, wait: Duration) -> Result<Vec<QueuedMessage>, QueueError> {
        let deadline = Instant::now() + wait;
        loop {
            // Marked seen before reading: a store or rebalance after this wakes the wait below.
            self.changed.borrow_and_update();
            self.refresh_assignment();
            let messages = self.read(max.max(1)).await?;
            if !messages.is_empty() {
                // The next poll's messages are read while these are processed.
                self.ahead = self.start(max.max(1));
                return Ok(messages);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || tokio::time::timeout(left, self.changed.changed()).await.is_err() {
                return Ok(Vec::new());
            }
        }
    }

    fn commit(&mut self, up_to: &[(u32, u64)]) -> BoxFuture<'static, Result<(), QueueError>> {
        if up_to.is_empty() {
            return Box::pin(std::future::ready(Ok(())));
        }
        let next_offsets = up_to.iter().map(|(p, o)| (*p, o.saturating_add(1))).collect();
        let (shared, topic_id, group, in_group) = (
            Arc::clone(&self.shared),
            self.topic.id,
            self.group.clone(),
            self.in_group(),
        );
        Box::pin(async move {
            shared
                .request(|reply| Request::Commit {
                    topic_id,
                    group,
                    next_offsets,
                    reply,
                })
                .await
                .map_err(in_group)
        })
    }

    fn lag(&mut self) -> BoxFuture<'static, Result<u64, QueueError>> {
        let (lag_reader, path, topic_id) = (Arc::clone(&self.lag_reader), self.shared.path.clone(), self.topic.id);
        let (group, in_group) = (self.group.clone(), self.in_group());
        Box::pin(async move {
            let read = tokio::task::spawn_blocking(move || {
                let mut reader = lag_reader.lock().unwrap_or_else(|e| e.into_inner());
                if reader.is_none() {
                    *reader = Some(open_reader(&path)?);
                }
                let reader = reader.as_ref().expect("just opened");
                group_lag(reader, topic_id, &group).map_err(|e| sqlite_error("computing the lag", e))
            })
            .await
            .map_err(|e| internal(format!("computing the lag failed: {e}")))?;
            read.map_err(in_group)
        })
    }

    fn assignment(&mut self) -> Result<Vec<u32>, QueueError> {
        self.refresh_assignment();
        Ok(self.positions.keys().copied().collect())
    }
}

impl Drop for EmbeddedConsumer {
    fn drop(&mut self) {
        self.shared.groups().leave(self.topic.id, &self.group, self.member);
        self.topic.notify();
        log::info!(
            "embedded queue: tenant={} group={} consumer {} left (group generation {})",
            self.tenant,
            self.group,
            self.member,
            self.shared.groups().generation(self.topic.id, &self.group)
        );
    }
}

/// Partitions and the next offset to read in each.
type Positions = Vec<(u32, u64)>;

/// Reads partitions in the given order, sharing `max` between them (a partition with less
/// leaves its share to the others), stopping once `max_bytes` is reached (after at least one
/// message). Returns the messages and each read partition's new position.
fn read_partitions(
    reader: &Connection,
    topic_id: i64,
    group: &str,
    order: Vec<(u32, Option<u64>)>,
    max: usize,
    max_bytes: usize,
) -> rusqlite::Result<(Vec<QueuedMessage>, Positions)> {
    let transaction = reader.unchecked_transaction()?;
    let mut positions = Vec::with_capacity(order.len());
    for (partition, position) in order {
        let position = match position {
            Some(position) => position,
            None => committed_offset(&transaction, topic_id, group, partition)?,
        };
        positions.push((partition, position));
    }
    let mut read = Gathered {
        messages: Vec::new(),
        bytes: 0,
        max_bytes,
    };
    let mut more = true;
    while more && read.messages.len() < max && !read.full() {
        more = false;
        let share = (max - read.messages.len()).div_ceil(positions.len());
        for (partition, position) in positions.iter_mut() {
            let take = share.min(max - read.messages.len());
            if take == 0 || read.full() {
                break;
            }
            more |= read_partition(&transaction, topic_id, *partition, position, take, &mut read)? == take;
        }
    }
    let messages = read.messages;
    transaction.commit()?;
    Ok((messages, positions))
}

/// The messages of one poll so far.
struct Gathered {
    messages: Vec<QueuedMessage>,
    bytes: usize,
    max_bytes: usize,
}

impl Gathered {
    fn full(&self) -> bool {
        self.bytes >= self.max_bytes
    }
}

/// Reads up to `take` messages of one partition from `position` on into `read`, through the
/// partition's segments in order (a position below the oldest segment, whose messages every
/// group has consumed, moves to the oldest kept), stopping once `read` is full. Returns how
/// many it read.
fn read_partition(
    transaction: &Connection,
    topic_id: i64,
    partition: u32,
    position: &mut u64,
    take: usize,
    read: &mut Gathered,
) -> rusqlite::Result<usize> {
    let mut count = 0;
    for segment in segments::listed(transaction, topic_id, partition, segments::segment_of(*position))? {
        let mut select = transaction.prepare_cached(&format!(
            "SELECT message_offset, timestamp_ms, payload FROM {}
              WHERE message_offset >= ?1 ORDER BY message_offset LIMIT ?2",
            segments::table((topic_id, partition, segment))
        ))?;
        let mut rows = select.query(params![*position as i64, (take - count) as i64])?;
        while let Some(row) = rows.next()? {
            let payload = row.get_ref(2)?.as_blob()?.to_vec();
            let offset = row.get::<_, i64>(0)? as u64;
            read.bytes += payload.len();
            read.messages.push(QueuedMessage {
                partition,
                offset,
                timestamp_ms: row.get(1)?,
                payload,
            });
            *position = offset + 1;
            count += 1;
            if read.full() {
                return Ok(count);
            }
        }
        if count == take {
            break;
        }
    }
    Ok(count)
}

fn committed_offset(connection: &Connection, topic_id: i64, group: &str, partition: u32) -> rusqlite::Result<u64> {
    let committed: Option<i64> = connection
        .prepare_cached(
            "SELECT next_offset FROM queue_offsets WHERE topic_id = ?1 AND group_name = ?2 AND partition = ?3",
        )?
        .query_row(params![topic_id, group, partition], |r| r.get(0))
        .optional()?;
    Ok(committed.unwrap_or(0) as u64)
}

/// Per partition: the next offset, minus the group's committed offset or, when higher, the
/// oldest offset still stored.
fn group_lag(reader: &Connection, topic_id: i64, group: &str) -> rusqlite::Result<u64> {
    let transaction = reader.unchecked_transaction()?;
    let partitions: Vec<(u32, i64, i64)> = transaction
        .prepare_cached(
            "SELECT p.partition, p.next_offset, COALESCE(o.next_offset, 0)
               FROM queue_partitions AS p
               LEFT JOIN queue_offsets AS o
                 ON o.topic_id = p.topic_id AND o.partition = p.partition AND o.group_name = ?2
              WHERE p.topic_id = ?1",
        )?
        .query_map(params![topic_id, group], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let mut lag = 0u64;
    for (partition, next, committed) in partitions {
        let oldest = segments::oldest_offset(&transaction, topic_id, partition)?.map_or(next, |o| o as i64);
        lag += (next - committed.max(oldest)).max(0) as u64;
    }
    transaction.commit()?;
    Ok(lag)
}
