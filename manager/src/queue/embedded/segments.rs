//! Where the embedded queue keeps its messages: each partition's messages in segment tables
//! of [`SEGMENT_OFFSETS`] consecutive offsets (`queue_segment_<topic>_<partition>_<segment>`,
//! the offset as the row id), listed in `queue_segments`. A segment is created by the write
//! that appends its first message, and dropped whole once every group has committed past its
//! last offset: dropping a table frees its pages without visiting each row, where deleting
//! consumed rows one by one cost about as much as writing them (~2 µs a message on this
//! machine's disk). So retention is by segment: up to one segment per partition of consumed
//! messages stays until the group moves past the segment's end.

use std::collections::HashSet;

use rusqlite::{Connection, OptionalExtension, params};

/// Offsets per segment of a partition.
pub const SEGMENT_OFFSETS: u64 = 65_536;

/// The segment table's columns (also the shape the benchmark's raw appends write).
pub const SEGMENT_COLUMNS: &str =
    "(message_offset INTEGER PRIMARY KEY, timestamp_ms INTEGER NOT NULL, payload BLOB NOT NULL) STRICT";

/// Prepared statements kept per connection: a few per segment in use, over every topic.
pub(super) const STATEMENT_CACHE: usize = 256;

/// A segment: topic, partition, segment number.
pub(super) type SegmentId = (i64, u32, u64);

/// The segment holding `offset`.
pub(super) fn segment_of(offset: u64) -> u64 {
    offset / SEGMENT_OFFSETS
}

/// The first offset of `segment`.
pub(super) fn first_offset(segment: u64) -> u64 {
    segment.saturating_mul(SEGMENT_OFFSETS)
}

/// The table of a segment.
pub(super) fn table((topic_id, partition, segment): SegmentId) -> String {
    format!("queue_segment_{topic_id}_{partition}_{segment}")
}

/// Every segment listed.
pub(super) fn load(connection: &Connection) -> rusqlite::Result<HashSet<SegmentId>> {
    let mut statement = connection.prepare("SELECT topic_id, partition, segment FROM queue_segments")?;
    let rows = statement.query_map([], |r| {
        Ok((r.get::<_, i64>(0)?, r.get::<_, u32>(1)?, r.get::<_, i64>(2)? as u64))
    })?;
    rows.collect()
}

/// Creates a segment's table and lists it (inside the caller's transaction).
pub(super) fn create(connection: &Connection, id: SegmentId) -> rusqlite::Result<()> {
    connection.execute_batch(&format!("CREATE TABLE IF NOT EXISTS {} {SEGMENT_COLUMNS};", table(id)))?;
    connection
        .prepare_cached("INSERT OR IGNORE INTO queue_segments (topic_id, partition, segment) VALUES (?1, ?2, ?3)")?
        .execute(params![id.0, id.1, id.2 as i64])?;
    Ok(())
}

/// Drops a segment's table and its listing (inside the caller's transaction).
pub(super) fn drop(connection: &Connection, id: SegmentId) -> rusqlite::Result<()> {
    connection.execute_batch(&format!("DROP TABLE IF EXISTS {};", table(id)))?;
    connection
        .prepare_cached("DELETE FROM queue_segments WHERE topic_id = ?1 AND partition = ?2 AND segment = ?3")?
        .execute(params![id.0, id.1, id.2 as i64])?;
    Ok(())
}

/// A partition's segments from `from` on, in order.
pub(super) fn listed(connection: &Connection, topic_id: i64, partition: u32, from: u64) -> rusqlite::Result<Vec<u64>> {
    let mut statement = connection.prepare_cached(
        "SELECT segment FROM queue_segments WHERE topic_id = ?1 AND partition = ?2 AND segment >= ?3 ORDER BY segment",
    )?;
    let rows = statement.query_map(params![topic_id, partition, from as i64], |r| r.get::<_, i64>(0))?;
    rows.map(|r| r.map(|s| s as u64)).collect()
}

/// The oldest offset a partition still holds.
pub(super) fn oldest_offset(connection: &Connection, topic_id: i64, partition: u32) -> rusqlite::Result<Option<u64>> {
    let Some(&segment) = listed(connection, topic_id, partition, 0)?.first() else {
        return Ok(None);
    };
    let oldest: Option<i64> = connection
        .prepare_cached(&format!(
            "SELECT MIN(message_offset) FROM {}",
            table((topic_id, partition, segment))
        ))?
        .query_row([], |r| r.get(0))
        .optional()?
        .flatten();
    Ok(oldest.map(|o| o as u64))
}

/// Moves the messages of a queue written before segments (one `queue_messages` table) into
/// segments, in one transaction, and drops the old table. Nothing to do on a newer database.
pub(super) fn migrate_single_table(connection: &mut Connection) -> rusqlite::Result<u64> {
    let exists: bool = connection
        .prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'queue_messages'")?
        .exists([])?;
    if !exists {
        return Ok(0);
    }
    let transaction = connection.transaction()?;
    let ranges: Vec<(i64, u32, i64, i64)> = transaction
        .prepare(
            "SELECT topic_id, partition, MIN(message_offset), MAX(message_offset) FROM queue_messages
              GROUP BY topic_id, partition",
        )?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let mut moved = 0u64;
    for (topic_id, partition, low, high) in ranges {
        for segment in segment_of(low as u64)..=segment_of(high as u64) {
            let id = (topic_id, partition, segment);
            create(&transaction, id)?;
            moved += transaction.execute(
                &format!(
                    "INSERT INTO {} (message_offset, timestamp_ms, payload)
                     SELECT message_offset, timestamp_ms, payload FROM queue_messages
                      WHERE topic_id = ?1 AND partition = ?2 AND message_offset >= ?3 AND message_offset < ?4",
                    table(id)
                ),
                params![
                    topic_id,
                    partition,
                    first_offset(segment) as i64,
                    first_offset(segment + 1) as i64
                ],
            )? as u64;
        }
    }
    transaction.execute_batch("DROP TABLE queue_messages;")?;
    transaction.commit()?;
    Ok(moved)
}

/// Messages held, over every segment (for tests and tools).
pub fn stored_messages(connection: &Connection) -> rusqlite::Result<u64> {
    let mut total = 0u64;
    for id in load(connection)? {
        let count: i64 = connection.query_row(&format!("SELECT COUNT(*) FROM {}", table(id)), [], |r| r.get(0))?;
        total += count as u64;
    }
    Ok(total)
}
