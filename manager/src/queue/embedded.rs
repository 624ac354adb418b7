//! The embedded queue: every tenant's topic in one SQLite database, `<data>/queue.sqlite`,
//! nothing to install. It keeps the contract of the [`queue`](super) module:
//! - **Durable acknowledgement**: the database runs in WAL mode with `synchronous=FULL`, and a
//!   produce call is answered only after the transaction holding its messages has committed,
//!   so the WAL is fsynced: an acknowledged message survives kill -9 and power loss.
//! - **Group commit**: one writer thread owns the write connection; produce and commit
//!   requests wait in a bounded channel (backpressure beyond it), and the writer applies all
//!   waiting requests in one transaction, so concurrent producers share one fsync.
//! - **Partitions**: a topic has a fixed number of partitions (set when it is created);
//!   messages go round-robin, each with the next offset of its partition. A partition's
//!   messages are read in offset order.
//! - **Consumer groups**: consumers of one group (in this process) get disjoint partition sets,
//!   recomputed when a consumer joins or is dropped. Committed offsets are stored per group,
//!   topic and partition, and only ever move forward; a consumer reads a partition newly
//!   assigned to it from the group's committed offset, so after a restart or crash every
//!   uncommitted message is delivered again.
//! - **Bounded memory**: a consumer reads one poll (at most `max` messages and
//!   `max_poll_bytes`) at a time, and one ahead: when a poll returns messages, the read for the
//!   next starts while they are processed (dropped if the assignment changes in between).
//! - **Retention**: each partition's messages live in segments of 65,536 offsets (one table
//!   each, see [`segments`]); a segment is dropped whole once every group of its topic has
//!   committed past its last message (by the writer, every `cleanup_interval_ms` while there
//!   is something to drop, a few segments at a time so that produce calls never wait long
//!   behind it). Dropping a table costs a small fraction of deleting its rows one by one; up
//!   to one segment per partition of consumed messages stays on disk. A group exists from the
//!   moment its first consumer is created (its position is stored then), and stays until
//!   deleted from `queue_offsets`: a group that stops consuming holds messages back (its lag
//!   shows it). Messages of a topic without a group are kept, so nothing is lost before a first
//!   consumer comes; a group created later starts at the oldest message still kept. Dropped
//!   segments free pages that later messages reuse: the file keeps the size of the largest
//!   backlog (no VACUUM).
//!
//! One process at a time: a lock (`<data>/queue.lock`, held by an exclusive SQLite connection,
//! released by the kernel when the process dies) refuses a second opener.
//!
//! Tables: `queue_topics` (name, partitions), `queue_partitions` (next offset of each
//! partition), `queue_segments` (the segments that exist) with one
//! `queue_segment_<topic>_<partition>_<segment>` table each (offset, timestamp, payload), and
//! `queue_offsets` (committed position per group, topic and partition). A database of the
//! single-table layout (`queue_messages`) is moved into segments when opened.

mod consumer;
mod groups;
mod segments;
mod writer;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{Connection, OpenFlags};
use tokio::sync::{mpsc, oneshot, watch};

pub use self::consumer::EmbeddedConsumer;
use self::groups::Groups;
pub use self::segments::{SEGMENT_COLUMNS, SEGMENT_OFFSETS, stored_messages};
pub use self::writer::SCHEMA;
use self::writer::{Request, Writer, internal, load_topics, sqlite_error};
use super::{Produced, Queue, QueueConfig, QueueConsumer, QueueError, QueueErrorKind, check_group, check_sizes};
use crate::tenants::TenantId;

/// The pragmas of the queue's connections, after `journal_mode = WAL`: every commit syncs the
/// WAL (an acknowledgement is durable).
pub const CONNECTION_PRAGMAS: &str =
    "PRAGMA synchronous = FULL; PRAGMA busy_timeout = 10000; PRAGMA cache_size = -32768;";

/// The queue database's file name in the data folder.
pub const DATABASE_FILE: &str = "queue.sqlite";
/// The lock that keeps a second process out.
const LOCK_FILE: &str = "queue.lock";

/// The embedded queue backend.
pub struct EmbeddedQueue {
    shared: Arc<Shared>,
}

/// What the queue and its consumers share.
struct Shared {
    path: PathBuf,
    partitions: u32,
    max_message_bytes: usize,
    max_poll_bytes: usize,
    writer: mpsc::Sender<Request>,
    topics: Mutex<HashMap<TenantId, Arc<TopicInfo>>>,
    groups: Mutex<Groups>,
    _process_lock: Mutex<Connection>,
}

impl Shared {
    fn groups(&self) -> MutexGuard<'_, Groups> {
        self.groups.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends a request to the writer and waits for its answer.
    async fn request<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, QueueError>>) -> Request,
    ) -> Result<T, QueueError> {
        let (reply, answer) = oneshot::channel();
        let stopped = || QueueError::new(QueueErrorKind::Unavailable, "embedded queue: the writer has stopped");
        self.writer.send(make(reply)).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

/// A topic as the queue and its consumers see it.
pub(crate) struct TopicInfo {
    id: i64,
    name: String,
    partitions: u32,
    /// Bumped after every transaction that stored messages in the topic, and on every change
    /// of its groups' membership: consumers waiting for messages watch it.
    changed: watch::Sender<u64>,
}

impl TopicInfo {
    fn new(id: i64, name: String, partitions: u32) -> Self {
        TopicInfo {
            id,
            name,
            partitions,
            changed: watch::Sender::new(0),
        }
    }

    fn notify(&self) {
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }
}

impl EmbeddedQueue {
    /// Opens (creating if needed) `<data_dir>/queue.sqlite` and starts its writer thread.
    pub async fn open(config: &QueueConfig, data_dir: &Path) -> Result<Self, QueueError> {
        let (config, data_dir) = (config.clone(), data_dir.to_path_buf());
        tokio::task::spawn_blocking(move || Self::open_blocking(&config, &data_dir))
            .await
            .map_err(|e| internal(format!("opening the queue failed: {e}")))?
    }

    fn open_blocking(config: &QueueConfig, data_dir: &Path) -> Result<Self, QueueError> {
        std::fs::create_dir_all(data_dir).map_err(|e| {
            QueueError::new(
                QueueErrorKind::Unavailable,
                format!("embedded queue: cannot create {}: {e}", data_dir.display()),
            )
        })?;
        let process_lock = lock_process(&data_dir.join(LOCK_FILE))?;
        let path = data_dir.join(DATABASE_FILE);
        let opening = |e| sqlite_error(&format!("opening {}", path.display()), e);
        let connection = Connection::open(&path).map_err(opening)?;
        let mode: String = connection
            .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
            .map_err(opening)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(internal(format!("{} refused WAL mode (got {mode})", path.display())));
        }
        connection.execute_batch(CONNECTION_PRAGMAS).map_err(opening)?;
        // FULL (2): every commit syncs the WAL, which is what makes an acknowledgement durable.
        let synchronous: i64 = connection
            .pragma_query_value(None, "synchronous", |r| r.get(0))
            .map_err(opening)?;
        if synchronous != 2 {
            return Err(internal(format!(
                "{} refused synchronous=FULL (got {synchronous})",
                path.display()
            )));
        }
        connection.set_prepared_statement_cache_capacity(segments::STATEMENT_CACHE);
        connection.execute_batch(SCHEMA).map_err(opening)?;
        let mut connection = connection;
        let moved = segments::migrate_single_table(&mut connection).map_err(opening)?;
        if moved > 0 {
            log::info!("embedded queue: moved {moved} messages of the single-table layout into segments");
        }
        let topics = load_topics(&connection).map_err(opening)?;
        let segments = segments::load(&connection).map_err(opening)?;
        let known: HashMap<TenantId, Arc<TopicInfo>> = topics
            .values()
            .filter_map(|t| Some((t.info.name.parse().ok()?, Arc::clone(&t.info))))
            .collect();
        let embedded = &config.embedded;
        let (sender, receiver) = mpsc::channel(embedded.writer_queue.max(1));
        let writer = Writer::new(
            connection,
            topics,
            segments,
            embedded.max_transaction_bytes as u64,
            Duration::from_millis(embedded.cleanup_interval_ms),
        );
        std::thread::Builder::new()
            .name("queue-writer".to_string())
            .spawn(move || writer.run(receiver))
            .map_err(|e| internal(format!("cannot start the writer thread: {e}")))?;
        log::info!(
            "embedded queue: opened {} topics={} partitions_per_new_topic={}",
            path.display(),
            known.len(),
            embedded.partitions
        );
        Ok(EmbeddedQueue {
            shared: Arc::new(Shared {
                path,
                partitions: embedded.partitions.max(1),
                max_message_bytes: config.max_message_bytes,
                max_poll_bytes: embedded.max_poll_bytes.max(1),
                writer: sender,
                topics: Mutex::new(known),
                groups: Mutex::default(),
                _process_lock: Mutex::new(process_lock),
            }),
        })
    }

    /// The tenant's topic, created if missing.
    async fn topic(&self, tenant: &TenantId) -> Result<Arc<TopicInfo>, QueueError> {
        if let Some(topic) = self.shared.topics.lock().unwrap_or_else(|e| e.into_inner()).get(tenant) {
            return Ok(Arc::clone(topic));
        }
        let (name, partitions) = (tenant.to_string(), self.shared.partitions);
        let topic = self
            .shared
            .request(|reply| Request::EnsureTopic {
                name,
                partitions,
                reply,
            })
            .await?;
        log::info!(
            "embedded queue: tenant={tenant} topic ready, partitions={}",
            topic.partitions
        );
        let mut topics = self.shared.topics.lock().unwrap_or_else(|e| e.into_inner());
        Ok(Arc::clone(topics.entry(tenant.clone()).or_insert(topic)))
    }
}

#[async_trait]
impl Queue for EmbeddedQueue {
    fn backend(&self) -> &'static str {
        "embedded"
    }

    async fn ensure_topic(&self, tenant: &TenantId) -> Result<(), QueueError> {
        self.topic(tenant).await.map(|_| ())
    }

    async fn partition_count(&self, tenant: &TenantId) -> Result<u32, QueueError> {
        self.topic(tenant).await.map(|t| t.partitions)
    }

    async fn produce(&self, tenant: &TenantId, messages: Vec<Vec<u8>>) -> Result<Produced, QueueError> {
        let bytes = check_sizes(tenant, &messages, self.shared.max_message_bytes)?;
        if messages.is_empty() {
            return Ok(Produced::default());
        }
        let topic_id = self.topic(tenant).await?.id;
        self.shared
            .request(|reply| Request::Produce {
                topic_id,
                messages,
                bytes,
                reply,
            })
            .await
            .map_err(|e| QueueError::new(e.kind, format!("tenant {tenant}: {}", e.message)))
    }

    async fn consumer(&self, tenant: &TenantId, group: &str) -> Result<Box<dyn QueueConsumer>, QueueError> {
        check_group(tenant, group)?;
        let topic = self.topic(tenant).await?;
        let path = self.shared.path.clone();
        let reader = tokio::task::spawn_blocking(move || open_reader(&path))
            .await
            .map_err(|e| internal(format!("opening a reader failed: {e}")))??;
        // The group exists from its first consumer on: a position at 0 (never moving a committed
        // one back) keeps the topic's messages from being deleted before the group read them.
        let (topic_id, name) = (topic.id, group.to_string());
        let next_offsets = (0..topic.partitions).map(|p| (p, 0)).collect();
        self.shared
            .request(|reply| Request::Commit {
                topic_id,
                group: name,
                next_offsets,
                reply,
            })
            .await?;
        let member = self.shared.groups().join(topic.id, group);
        topic.notify();
        log::info!("embedded queue: tenant={tenant} group={group} consumer {member} joined");
        Ok(Box::new(EmbeddedConsumer::new(
            Arc::clone(&self.shared),
            tenant.clone(),
            topic,
            group.to_string(),
            member,
            reader,
        )))
    }
}

fn open_reader(path: &Path) -> Result<Connection, QueueError> {
    let reading = |e| sqlite_error(&format!("opening {} to read", path.display()), e);
    let reader = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
        .map_err(reading)?;
    reader.busy_timeout(Duration::from_secs(10)).map_err(reading)?;
    reader.set_prepared_statement_cache_capacity(segments::STATEMENT_CACHE);
    Ok(reader)
}

/// Takes the data folder's queue lock: a SQLite database written once in exclusive locking
/// mode, so its lock is held until the connection closes or the process dies.
fn lock_process(path: &Path) -> Result<Connection, QueueError> {
    let locking = |e| sqlite_error(&format!("locking {}", path.display()), e);
    let connection = Connection::open(path).map_err(locking)?;
    connection.busy_timeout(Duration::ZERO).map_err(locking)?;
    let locked = connection.execute_batch(
        "PRAGMA locking_mode = EXCLUSIVE;
         CREATE TABLE IF NOT EXISTS held_by (pid INTEGER NOT NULL);
         DELETE FROM held_by;",
    );
    let locked = locked.and_then(|()| {
        connection
            .execute("INSERT INTO held_by (pid) VALUES (?1)", [std::process::id()])
            .map(|_| ())
    });
    match locked {
        Ok(()) => Ok(connection),
        Err(e) if matches!(e.sqlite_error_code(), Some(rusqlite::ErrorCode::DatabaseBusy)) => Err(QueueError::new(
            QueueErrorKind::Unavailable,
            format!(
                "embedded queue: {} is held by another process (or already open in this one): one process at a time",
                path.display()
            ),
        )),
        Err(e) => Err(locking(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_second_open_of_the_same_folder_is_refused_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let config = QueueConfig::default();
        let first = EmbeddedQueue::open(&config, dir.path()).await.unwrap();
        let error = EmbeddedQueue::open(&config, dir.path()).await.err().unwrap();
        assert_eq!(error.kind, QueueErrorKind::Unavailable, "{}", error.message);
        drop(first);
        EmbeddedQueue::open(&config, dir.path()).await.unwrap();
    }

    #[tokio::test]
    async fn a_segment_is_dropped_once_every_group_committed_past_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = QueueConfig::default();
        config.embedded.partitions = 1;
        config.embedded.cleanup_interval_ms = 0;
        let queue = EmbeddedQueue::open(&config, dir.path()).await.unwrap();
        let tenant: TenantId = "client1".parse().unwrap();
        let segment = SEGMENT_OFFSETS;
        queue
            .produce(&tenant, vec![b"m".to_vec(); segment as usize + 2])
            .await
            .unwrap();
        let mut fast = queue.consumer(&tenant, "fast").await.unwrap();
        let mut slow = queue.consumer(&tenant, "slow").await.unwrap();
        let stored = |dir: &Path| stored_messages(&open_reader(&dir.join(DATABASE_FILE)).unwrap()).unwrap();
        // The writer cleans up after answering; its next answer comes after that cleanup.
        fast.commit(&[(0, segment)]).await.unwrap();
        queue.produce(&tenant, vec![b"c".to_vec()]).await.unwrap();
        assert_eq!(
            stored(dir.path()),
            segment + 3,
            "a group that has not committed yet holds every message"
        );
        slow.commit(&[(0, segment - 2)]).await.unwrap();
        queue.produce(&tenant, vec![b"d".to_vec()]).await.unwrap();
        assert_eq!(
            stored(dir.path()),
            segment + 4,
            "a segment is kept while a group has not consumed all of it"
        );
        slow.commit(&[(0, segment - 1)]).await.unwrap();
        queue.produce(&tenant, vec![b"e".to_vec()]).await.unwrap();
        assert_eq!(stored(dir.path()), 5, "the first segment is dropped whole");
        assert_eq!(slow.lag().await.unwrap(), 5);
        assert_eq!(fast.lag().await.unwrap(), 4);
        // A group created later starts at the oldest message kept.
        let mut late = queue.consumer(&tenant, "late").await.unwrap();
        let offsets: Vec<u64> = late
            .poll(10, Duration::from_secs(1))
            .await
            .unwrap()
            .iter()
            .map(|m| m.offset)
            .collect();
        assert_eq!(offsets, (segment..segment + 5).collect::<Vec<_>>());
        assert_eq!(late.lag().await.unwrap(), 5);
    }

    #[tokio::test]
    async fn a_poll_reads_across_segments_in_offset_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = QueueConfig::default();
        config.embedded.partitions = 2;
        let queue = EmbeddedQueue::open(&config, dir.path()).await.unwrap();
        let tenant: TenantId = "client1".parse().unwrap();
        let total = SEGMENT_OFFSETS as usize * 2 * 2 + 6;
        let messages: Vec<Vec<u8>> = (0..total).map(|i| i.to_string().into_bytes()).collect();
        queue.produce(&tenant, messages).await.unwrap();
        let mut consumer = queue.consumer(&tenant, "g").await.unwrap();
        let mut next = [0u64; 2];
        let mut seen = 0;
        while seen < total {
            let batch = consumer.poll(50_000, Duration::from_secs(1)).await.unwrap();
            assert!(!batch.is_empty(), "{seen} of {total} read");
            for message in &batch {
                let p = message.partition as usize;
                assert_eq!(message.offset, next[p], "partition {p} in order, nothing skipped");
                // Round-robin: the message's index is its offset's place over the partitions.
                let index = message.offset as usize * 2 + p;
                assert_eq!(message.payload, index.to_string().into_bytes());
                next[p] += 1;
            }
            seen += batch.len();
        }
        assert_eq!(next, [SEGMENT_OFFSETS * 2 + 3; 2]);
        assert_eq!(consumer.lag().await.unwrap(), total as u64);
    }

    #[tokio::test]
    async fn the_read_ahead_skips_nothing_when_the_poll_is_smaller_or_the_group_rebalances() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = QueueConfig::default();
        config.embedded.partitions = 2;
        let queue = EmbeddedQueue::open(&config, dir.path()).await.unwrap();
        let tenant: TenantId = "client1".parse().unwrap();
        queue.produce(&tenant, vec![b"m".to_vec(); 400]).await.unwrap();
        let mut first = queue.consumer(&tenant, "g").await.unwrap();
        let mut next = [0u64; 2];
        let check = |batch: &[crate::queue::QueuedMessage], next: &mut [u64; 2]| {
            for m in batch {
                assert_eq!(
                    m.offset, next[m.partition as usize],
                    "partition {} in order",
                    m.partition
                );
                next[m.partition as usize] += 1;
            }
        };
        let batch = first.poll(100, Duration::from_secs(1)).await.unwrap();
        assert_eq!(batch.len(), 100);
        check(&batch, &mut next);
        // The read ahead holds 100; a poll of 10 reads anew from where the last one ended.
        let batch = first.poll(10, Duration::from_secs(1)).await.unwrap();
        assert_eq!(batch.len(), 10);
        check(&batch, &mut next);
        // A second member takes a partition: the read ahead (of both) is dropped, the kept
        // partition goes on from its position.
        let mut second = queue.consumer(&tenant, "g").await.unwrap();
        let kept = first.assignment().unwrap();
        assert_eq!(kept.len(), 1);
        let batch = first.poll(1000, Duration::from_secs(1)).await.unwrap();
        assert!(batch.iter().all(|m| m.partition == kept[0]));
        check(&batch, &mut next);
        assert_eq!(
            next[kept[0] as usize], 200,
            "the rest of the kept partition, nothing skipped"
        );
        // The moved partition is read by its new member from the committed offset (none yet).
        let moved = second.poll(1000, Duration::from_secs(1)).await.unwrap();
        assert_eq!(moved.len(), 200);
        assert_eq!(moved.first().map(|m| m.offset), Some(0));
    }

    #[tokio::test]
    async fn a_queue_of_the_single_table_layout_is_moved_into_segments_when_opened() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = QueueConfig::default();
        config.embedded.partitions = 1;
        {
            let queue = EmbeddedQueue::open(&config, dir.path()).await.unwrap();
            let tenant: TenantId = "client1".parse().unwrap();
            queue.produce(&tenant, vec![b"x".to_vec()]).await.unwrap();
            let mut consumer = queue.consumer(&tenant, "g").await.unwrap();
            consumer.commit(&[(0, 0)]).await.unwrap();
        }
        // Make it the layout before segments: offsets 1..=70,000 in `queue_messages` (offset
        // 0 consumed and deleted), partition 0 at 70,001.
        {
            let connection = Connection::open(dir.path().join(DATABASE_FILE)).unwrap();
            for id in segments::load(&connection).unwrap() {
                segments::drop(&connection, id).unwrap();
            }
            connection
                .execute_batch(
                    "CREATE TABLE queue_messages (topic_id INTEGER NOT NULL, partition INTEGER NOT NULL,
                       message_offset INTEGER NOT NULL, timestamp_ms INTEGER NOT NULL, payload BLOB NOT NULL,
                       PRIMARY KEY (topic_id, partition, message_offset)) STRICT, WITHOUT ROWID;
                     WITH RECURSIVE n(o) AS (SELECT 1 UNION ALL SELECT o + 1 FROM n WHERE o < 70000)
                     INSERT INTO queue_messages SELECT 1, 0, o, 0, CAST(CAST(o AS TEXT) AS BLOB) FROM n;
                     UPDATE queue_partitions SET next_offset = 70001;",
                )
                .unwrap();
        }
        let queue = EmbeddedQueue::open(&config, dir.path()).await.unwrap();
        let tenant: TenantId = "client1".parse().unwrap();
        let mut consumer = queue.consumer(&tenant, "g").await.unwrap();
        assert_eq!(consumer.lag().await.unwrap(), 70_000);
        let mut offsets = Vec::new();
        while offsets.len() < 70_000 {
            let batch = consumer.poll(100_000, Duration::from_secs(1)).await.unwrap();
            assert!(!batch.is_empty());
            for message in batch {
                assert_eq!(message.payload, message.offset.to_string().into_bytes());
                offsets.push(message.offset);
            }
        }
        assert_eq!(offsets, (1..=70_000).collect::<Vec<u64>>());
        queue.produce(&tenant, vec![b"new".to_vec()]).await.unwrap();
        let after = consumer.poll(10, Duration::from_secs(1)).await.unwrap();
        assert_eq!(after.iter().map(|m| m.offset).collect::<Vec<_>>(), [70_001]);
        let connection = open_reader(&dir.path().join(DATABASE_FILE)).unwrap();
        let old: i64 = connection
            .query_row(
                "SELECT COUNT(*) FROM sqlite_master WHERE name = 'queue_messages'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(old, 0, "the old table is gone");
    }

    #[tokio::test]
    async fn committing_past_the_end_or_an_unknown_partition_is_invalid() {
        let dir = tempfile::tempdir().unwrap();
        let queue = EmbeddedQueue::open(&QueueConfig::default(), dir.path()).await.unwrap();
        let tenant: TenantId = "client1".parse().unwrap();
        queue.produce(&tenant, vec![b"a".to_vec()]).await.unwrap();
        let mut consumer = queue.consumer(&tenant, "g").await.unwrap();
        for bad in [(0, 1), (9, 0)] {
            let error = consumer.commit(&[bad]).await.unwrap_err();
            assert_eq!(error.kind, QueueErrorKind::Invalid, "{}", error.message);
        }
        consumer.commit(&[(0, 0)]).await.unwrap();
    }
}
