//! The embedded queue's single writer: one thread owns the write connection and applies
//! produce, commit and topic requests. Requests waiting in its bounded channel are grouped into
//! one transaction (one fsync), so concurrent producers share the cost of durability; each
//! request is answered only after that transaction committed.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rusqlite::{Connection, Transaction, params};
use tokio::sync::{mpsc, oneshot};

use super::TopicInfo;
use super::segments::{self, SegmentId};
use crate::queue::{Produced, QueueError, QueueErrorKind, now_ms};

/// Tables of the queue database (one file for every tenant's topic).
pub const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS queue_topics (
        topic_id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        partitions INTEGER NOT NULL,
        created_ms INTEGER NOT NULL
    ) STRICT;
    CREATE TABLE IF NOT EXISTS queue_partitions (
        topic_id INTEGER NOT NULL,
        partition INTEGER NOT NULL,
        next_offset INTEGER NOT NULL,
        PRIMARY KEY (topic_id, partition)
    ) STRICT, WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS queue_segments (
        topic_id INTEGER NOT NULL,
        partition INTEGER NOT NULL,
        segment INTEGER NOT NULL,
        PRIMARY KEY (topic_id, partition, segment)
    ) STRICT, WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS queue_offsets (
        topic_id INTEGER NOT NULL,
        group_name TEXT NOT NULL,
        partition INTEGER NOT NULL,
        next_offset INTEGER NOT NULL,
        PRIMARY KEY (topic_id, group_name, partition)
    ) STRICT, WITHOUT ROWID;";

/// Segments one cleanup pass drops at most per partition, so a cleanup never holds the writer
/// for long; the rest go in the next passes.
pub(super) const CLEANUP_SEGMENTS: usize = 16;

/// A request to the writer, answered once durable.
pub(super) enum Request {
    /// Creates a topic with `partitions` partitions unless one of that name exists.
    EnsureTopic {
        name: String,
        partitions: u32,
        reply: oneshot::Sender<Result<Arc<TopicInfo>, QueueError>>,
    },
    /// Appends messages, round-robin over the topic's partitions.
    Produce {
        topic_id: i64,
        messages: Vec<Vec<u8>>,
        bytes: u64,
        reply: oneshot::Sender<Result<Produced, QueueError>>,
    },
    /// Sets a group's committed positions (`next_offset` = the first offset not consumed),
    /// never moving one back.
    Commit {
        topic_id: i64,
        group: String,
        next_offsets: Vec<(u32, u64)>,
        reply: oneshot::Sender<Result<(), QueueError>>,
    },
}

impl Request {
    fn bytes(&self) -> u64 {
        match self {
            Request::Produce { bytes, .. } => *bytes,
            _ => 0,
        }
    }
}

/// The writer's view of one topic.
pub(super) struct TopicState {
    pub(super) info: Arc<TopicInfo>,
    /// The next offset of each partition.
    pub(super) next: Vec<u64>,
    /// Round-robin counter for the next message.
    pub(super) round_robin: u64,
}

/// Reads every topic and its partitions' next offsets.
pub(super) fn load_topics(connection: &Connection) -> rusqlite::Result<HashMap<i64, TopicState>> {
    let mut topics = HashMap::new();
    let mut statement = connection.prepare("SELECT topic_id, name, partitions FROM queue_topics")?;
    let rows = statement.query_map([], |r| {
        Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, u32>(2)?))
    })?;
    for row in rows {
        let (id, name, partitions) = row?;
        let mut next = vec![0u64; partitions as usize];
        let mut offsets =
            connection.prepare("SELECT partition, next_offset FROM queue_partitions WHERE topic_id = ?1")?;
        for entry in offsets.query_map([id], |r| Ok((r.get::<_, u32>(0)?, r.get::<_, i64>(1)?)))? {
            let (partition, offset) = entry?;
            if let Some(slot) = next.get_mut(partition as usize) {
                *slot = offset as u64;
            }
        }
        let info = Arc::new(TopicInfo::new(id, name, partitions));
        topics.insert(
            id,
            TopicState {
                info,
                next,
                round_robin: 0,
            },
        );
    }
    Ok(topics)
}

/// The writer thread's state.
pub(super) struct Writer {
    pub(super) connection: Connection,
    pub(super) topics: HashMap<i64, TopicState>,
    pub(super) max_transaction_bytes: u64,
    pub(super) cleanup_interval: Duration,
    /// The segments that exist.
    segments: HashSet<SegmentId>,
    /// Topics with commits since the last cleanup.
    dirty: HashSet<i64>,
    last_cleanup: Instant,
}

/// Sends a request's answer, once the transaction's outcome is known.
type Answer = Box<dyn FnOnce(Result<(), QueueError>)>;

/// What to undo in memory when a transaction fails.
#[derive(Default)]
struct Undo {
    created: Vec<i64>,
    segments: Vec<SegmentId>,
    offsets: HashMap<i64, (Vec<u64>, u64)>,
}

impl Writer {
    pub(super) fn new(
        connection: Connection,
        topics: HashMap<i64, TopicState>,
        segments: HashSet<SegmentId>,
        max_transaction_bytes: u64,
        cleanup_interval: Duration,
    ) -> Self {
        Writer {
            connection,
            topics,
            max_transaction_bytes,
            cleanup_interval,
            segments,
            // Clean up soon after start: committed messages of an earlier run may be left.
            dirty: HashSet::new(),
            last_cleanup: Instant::now(),
        }
    }

    /// Serves requests until every sender is gone. Cleanup runs between transactions, and
    /// also while idle as long as some topic has committed messages left to delete.
    pub(super) fn run(mut self, mut requests: mpsc::Receiver<Request>) {
        self.dirty = self.topics.keys().copied().collect();
        // A small runtime of the writer's own, only to wait for a request with a timeout.
        let waiter = match tokio::runtime::Builder::new_current_thread().enable_time().build() {
            Ok(waiter) => waiter,
            Err(e) => {
                log::error!("embedded queue: the writer cannot start its timer: {e}");
                return;
            }
        };
        loop {
            let next = if self.dirty.is_empty() {
                requests.blocking_recv()
            } else {
                let wait = self.cleanup_interval.saturating_sub(self.last_cleanup.elapsed());
                match waiter.block_on(async { tokio::time::timeout(wait, requests.recv()).await }) {
                    Ok(request) => request,
                    Err(_idle) => {
                        self.cleanup();
                        continue;
                    }
                }
            };
            let Some(first) = next else {
                return;
            };
            let mut bytes = first.bytes();
            let mut batch = vec![first];
            while bytes < self.max_transaction_bytes {
                match requests.try_recv() {
                    Ok(request) => {
                        bytes += request.bytes();
                        batch.push(request);
                    }
                    Err(_) => break,
                }
            }
            self.apply(batch);
            if !self.dirty.is_empty() && self.last_cleanup.elapsed() >= self.cleanup_interval {
                self.cleanup();
            }
        }
    }

    /// Applies a batch of requests in one transaction and answers each.
    fn apply(&mut self, batch: Vec<Request>) {
        let mut undo = Undo::default();
        let mut answers: Vec<Answer> = Vec::with_capacity(batch.len());
        let mut touched = HashSet::new();
        let mut committed = HashSet::new();
        let result = (|| -> rusqlite::Result<()> {
            let transaction = self.connection.transaction()?;
            for request in batch {
                match request {
                    Request::EnsureTopic {
                        name,
                        partitions,
                        reply,
                    } => {
                        let info = ensure_topic(&transaction, &mut self.topics, &mut undo, &name, partitions)?;
                        answers.push(Box::new(move |r| {
                            let _ = reply.send(r.map(|()| info));
                        }));
                    }
                    Request::Produce {
                        topic_id,
                        messages,
                        bytes,
                        reply,
                    } => match self.topics.get_mut(&topic_id) {
                        None => {
                            let _ = reply.send(Err(internal(format!("produce to unknown topic id {topic_id}"))));
                        }
                        Some(topic) => {
                            undo.offsets
                                .entry(topic_id)
                                .or_insert_with(|| (topic.next.clone(), topic.round_robin));
                            append(&transaction, topic, &mut self.segments, &mut undo, &messages)?;
                            touched.insert(topic_id);
                            let produced = Produced {
                                messages: messages.len() as u64,
                                bytes,
                            };
                            answers.push(Box::new(move |r| {
                                let _ = reply.send(r.map(|()| produced));
                            }));
                        }
                    },
                    Request::Commit {
                        topic_id,
                        group,
                        next_offsets,
                        reply,
                    } => match check_commit(self.topics.get(&topic_id), topic_id, &next_offsets) {
                        Err(error) => {
                            let _ = reply.send(Err(error));
                        }
                        Ok(()) => {
                            commit_offsets(&transaction, topic_id, &group, &next_offsets)?;
                            committed.insert(topic_id);
                            answers.push(Box::new(move |r| {
                                let _ = reply.send(r);
                            }));
                        }
                    },
                }
            }
            for topic_id in &touched {
                let topic = &self.topics[topic_id];
                let mut update = transaction.prepare_cached(
                    "UPDATE queue_partitions SET next_offset = ?3 WHERE topic_id = ?1 AND partition = ?2",
                )?;
                for (partition, next) in topic.next.iter().enumerate() {
                    update.execute(params![topic_id, partition as i64, *next as i64])?;
                }
            }
            transaction.commit()
        })();
        match result {
            Ok(()) => {
                for answer in answers {
                    answer(Ok(()));
                }
                for topic_id in touched {
                    self.topics[&topic_id].info.notify();
                }
                self.dirty.extend(committed);
            }
            Err(e) => {
                log::error!("embedded queue: a write transaction failed: {e}");
                for id in undo.created {
                    self.topics.remove(&id);
                }
                for id in undo.segments {
                    self.segments.remove(&id);
                }
                for (id, (next, round_robin)) in undo.offsets {
                    if let Some(topic) = self.topics.get_mut(&id) {
                        topic.next = next;
                        topic.round_robin = round_robin;
                    }
                }
                let error = sqlite_error("writing to the queue", e);
                for answer in answers {
                    answer(Err(error.clone()));
                }
            }
        }
    }

    /// Drops the segments whose messages every group which committed on the topic has
    /// consumed. Messages of a topic no group has committed on are kept.
    fn cleanup(&mut self) {
        self.last_cleanup = Instant::now();
        let dirty: Vec<i64> = self.dirty.drain().collect();
        let started = Instant::now();
        let mut dropped = Vec::new();
        let result = (|| -> rusqlite::Result<()> {
            let transaction = self.connection.transaction()?;
            for topic_id in dirty {
                let Some(topic) = self.topics.get(&topic_id) else {
                    continue;
                };
                for partition in 0..topic.info.partitions {
                    let Some(floor) = cleanup_floor(&transaction, topic_id, partition)? else {
                        continue;
                    };
                    // Whole segments below the floor: their last offset is under it.
                    let consumed: Vec<u64> = segments::listed(&transaction, topic_id, partition, 0)?
                        .into_iter()
                        .take_while(|&segment| segments::first_offset(segment + 1) <= floor)
                        .collect();
                    if consumed.len() > CLEANUP_SEGMENTS {
                        self.dirty.insert(topic_id);
                    }
                    for segment in consumed.into_iter().take(CLEANUP_SEGMENTS) {
                        let id = (topic_id, partition, segment);
                        segments::drop(&transaction, id)?;
                        dropped.push(id);
                    }
                }
            }
            transaction.commit()
        })();
        match result {
            Ok(()) => {
                if !dropped.is_empty() {
                    log::debug!(
                        "embedded queue: dropped {} consumed segments ms={}",
                        dropped.len(),
                        started.elapsed().as_millis()
                    );
                }
                for id in dropped {
                    self.segments.remove(&id);
                }
            }
            Err(e) => log::warn!("embedded queue: dropping consumed segments failed (will retry): {e}"),
        }
    }
}

/// The lowest committed position over the groups that committed on the topic (a group without
/// a position on this partition counts as 0); `None` when no group committed on it.
fn cleanup_floor(transaction: &Transaction, topic_id: i64, partition: u32) -> rusqlite::Result<Option<u64>> {
    let floor: Option<i64> = transaction
        .prepare_cached(
            "SELECT MIN(COALESCE(o.next_offset, 0))
           FROM (SELECT DISTINCT group_name FROM queue_offsets WHERE topic_id = ?1) AS g
           LEFT JOIN queue_offsets AS o
             ON o.topic_id = ?1 AND o.group_name = g.group_name AND o.partition = ?2",
        )?
        .query_row(params![topic_id, partition], |r| r.get(0))?;
    Ok(floor.map(|f| f as u64))
}

fn ensure_topic(
    transaction: &Transaction,
    topics: &mut HashMap<i64, TopicState>,
    undo: &mut Undo,
    name: &str,
    partitions: u32,
) -> rusqlite::Result<Arc<TopicInfo>> {
    if let Some(existing) = topics.values().find(|t| t.info.name == name) {
        return Ok(Arc::clone(&existing.info));
    }
    transaction.execute(
        "INSERT INTO queue_topics (name, partitions, created_ms) VALUES (?1, ?2, ?3)",
        params![name, partitions, now_ms()],
    )?;
    let id = transaction.last_insert_rowid();
    for partition in 0..partitions {
        transaction.execute(
            "INSERT INTO queue_partitions (topic_id, partition, next_offset) VALUES (?1, ?2, 0)",
            params![id, partition],
        )?;
    }
    let info = Arc::new(TopicInfo::new(id, name.to_string(), partitions));
    topics.insert(
        id,
        TopicState {
            info: Arc::clone(&info),
            next: vec![0; partitions as usize],
            round_robin: 0,
        },
    );
    undo.created.push(id);
    Ok(info)
}

fn append(
    transaction: &Transaction,
    topic: &mut TopicState,
    existing: &mut HashSet<SegmentId>,
    undo: &mut Undo,
    messages: &[Vec<u8>],
) -> rusqlite::Result<()> {
    let timestamp = now_ms();
    let partitions = topic.next.len() as u64;
    // Each partition's current segment and the statement that appends to it.
    let mut inserts: Vec<Option<(u64, String)>> = vec![None; topic.next.len()];
    for message in messages {
        let partition = (topic.round_robin % partitions) as usize;
        topic.round_robin = topic.round_robin.wrapping_add(1);
        let offset = topic.next[partition];
        let segment = segments::segment_of(offset);
        let slot = &mut inserts[partition];
        if slot.as_ref().is_none_or(|(s, _)| *s != segment) {
            let id = (topic.info.id, partition as u32, segment);
            if !existing.contains(&id) {
                segments::create(transaction, id)?;
                existing.insert(id);
                undo.segments.push(id);
            }
            let sql = format!(
                "INSERT INTO {} (message_offset, timestamp_ms, payload) VALUES (?1, ?2, ?3)",
                segments::table(id)
            );
            *slot = Some((segment, sql));
        }
        let (_, sql) = slot.as_ref().expect("just set");
        transaction
            .prepare_cached(sql)?
            .execute(params![offset as i64, timestamp, message.as_slice()])?;
        topic.next[partition] += 1;
    }
    Ok(())
}

fn check_commit(topic: Option<&TopicState>, topic_id: i64, next_offsets: &[(u32, u64)]) -> Result<(), QueueError> {
    let topic = topic.ok_or_else(|| internal(format!("commit on unknown topic id {topic_id}")))?;
    for (partition, next_offset) in next_offsets {
        let Some(end) = topic.next.get(*partition as usize) else {
            return Err(QueueError::new(
                QueueErrorKind::Invalid,
                format!(
                    "topic {} has no partition {partition} (it has {})",
                    topic.info.name, topic.info.partitions
                ),
            ));
        };
        if next_offset > end {
            return Err(QueueError::new(
                QueueErrorKind::Invalid,
                format!(
                    "cannot commit offset {} of partition {partition} of topic {}: its last offset is {}",
                    next_offset - 1,
                    topic.info.name,
                    *end as i64 - 1
                ),
            ));
        }
    }
    Ok(())
}

fn commit_offsets(
    transaction: &Transaction,
    topic_id: i64,
    group: &str,
    next_offsets: &[(u32, u64)],
) -> rusqlite::Result<()> {
    let mut upsert = transaction.prepare_cached(
        "INSERT INTO queue_offsets (topic_id, group_name, partition, next_offset) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (topic_id, group_name, partition)
         DO UPDATE SET next_offset = MAX(next_offset, excluded.next_offset)",
    )?;
    for (partition, next_offset) in next_offsets {
        upsert.execute(params![topic_id, group, partition, *next_offset as i64])?;
    }
    Ok(())
}

pub(super) fn internal(message: String) -> QueueError {
    QueueError::new(QueueErrorKind::Internal, format!("embedded queue: {message}"))
}

/// Maps a SQLite error: a busy or locked database is `Unavailable`, a full disk too (space may
/// come back), anything else `Internal`.
pub(super) fn sqlite_error(what: &str, error: rusqlite::Error) -> QueueError {
    use rusqlite::ErrorCode;
    let kind = match error.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked | ErrorCode::DiskFull | ErrorCode::CannotOpen) => {
            QueueErrorKind::Unavailable
        }
        Some(ErrorCode::TooBig) => QueueErrorKind::TooLarge,
        _ => QueueErrorKind::Internal,
    };
    QueueError::new(kind, format!("embedded queue: {what}: {error}"))
}
