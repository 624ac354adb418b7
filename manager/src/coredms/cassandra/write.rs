//! The write path: rows grouped by partition key into UNLOGGED batches of rows of one partition
//! (Cassandra applies such a batch as one mutation, at less than half the server cost of single
//! INSERTs), sent many at a time with the partitions taking turns, each request holding a permit
//! of the platform-wide limiter.
//!
//! Within one write, a later row with the same primary key replaces an earlier one before
//! anything is sent: rows of one batch share a timestamp, and Cassandra would break that tie by
//! value, not by order.

use std::collections::HashMap;

use futures_util::stream::{self, TryStreamExt};
use scylla::statement::batch::{Batch, BatchStatement, BatchType};
use scylla::statement::prepared::PreparedStatement;

use super::retry::{self, Context};
use super::tenant::CassandraTenant;
use super::values::push_key;
use crate::coredms::{Rows, StoreError, TableSchema, Value, Written};

/// A batch closes at this many accounting bytes even below `rows_per_batch`, far under
/// Cassandra's largest mutation (half a commit log segment, 16 MiB by default).
const MAX_BATCH_BYTES: u64 = 1 << 20;

/// Requests one write call keeps in flight at most (the limiter may allow fewer).
const MAX_IN_FLIGHT_PER_WRITE: usize = 256;

/// One request: rows of one partition.
type Request<'r> = Vec<&'r [Value]>;

impl CassandraTenant {
    /// Writes `rows` (of a declared table) with `insert`, the table's prepared INSERT.
    pub(super) async fn write_rows(&self, rows: &Rows, insert: &PreparedStatement) -> Result<Written, StoreError> {
        let requests = plan_requests(rows, self.shared.config.rows_per_batch, MAX_BATCH_BYTES);
        let context = Context::new(&self.tenant, "writing rows").on(&rows.table.name);
        stream::iter(requests.into_iter().map(Ok))
            .try_for_each_concurrent(MAX_IN_FLIGHT_PER_WRITE, |request| {
                let context = &context;
                async move {
                    let _permit = self.shared.limiter.acquire(&self.tenant).await;
                    self.send(insert, &request, context).await
                }
            })
            .await?;
        Ok(Written {
            rows: rows.len() as u64,
            bytes: rows.logical_bytes(),
        })
    }

    /// Sends one request, retrying transient failures.
    async fn send(&self, insert: &PreparedStatement, rows: &[&[Value]], context: &Context) -> Result<(), StoreError> {
        let session = &self.shared.session;
        if let [row] = rows {
            return retry::with_retries(&self.shared, context, || session.execute_unpaged(insert, *row))
                .await
                .map(|_| ());
        }
        let batch = unlogged_batch(insert, rows.len());
        retry::with_retries(&self.shared, context, || session.batch(&batch, rows))
            .await
            .map(|_| ())
    }
}

/// An UNLOGGED batch of `n` times `insert`.
fn unlogged_batch(insert: &PreparedStatement, n: usize) -> Batch {
    let statements = vec![BatchStatement::PreparedStatement(insert.clone()); n];
    let mut batch = Batch::new_with_statements(BatchType::Unlogged, statements);
    batch.set_is_idempotent(true);
    batch
}

/// Rows of one partition, deduplicated by primary key (the last row wins).
#[derive(Default)]
struct Partition<'r> {
    rows: Vec<&'r [Value]>,
    /// Position in `rows` by clustering key (empty without a clustering key: one row).
    by_clustering_key: HashMap<Vec<u8>, usize>,
}

/// Groups rows by partition key, keeps the last row of each primary key, and cuts each
/// partition into requests of at most `rows_per_batch` rows and about `max_bytes` bytes.
fn plan_requests(rows: &Rows, rows_per_batch: usize, max_bytes: u64) -> Vec<Request<'_>> {
    let table: &TableSchema = &rows.table;
    let (partition_key, clustering_key) = key_indices(table);
    let mut partitions: Vec<Partition<'_>> = Vec::new();
    let mut by_partition_key: HashMap<Vec<u8>, usize> = HashMap::new();
    let mut key = Vec::with_capacity(64);
    for row in rows.iter() {
        key.clear();
        partition_key.iter().for_each(|&i| push_key(&mut key, &row[i]));
        let index = match by_partition_key.get(key.as_slice()) {
            Some(&index) => index,
            None => {
                by_partition_key.insert(key.clone(), partitions.len());
                partitions.push(Partition::default());
                partitions.len() - 1
            }
        };
        partitions[index].add(row, &clustering_key, &mut key);
    }
    let per_partition = partitions
        .into_iter()
        .map(|p| cut(p.rows, rows_per_batch, max_bytes))
        .collect();
    interleave(per_partition)
}

/// The first request of each partition, then the second of each, and so on: requests in flight
/// together then hit different partitions, instead of contending for one (Cassandra applies
/// concurrent updates of one partition with compare-and-swap retries).
fn interleave(per_partition: Vec<Vec<Request<'_>>>) -> Vec<Request<'_>> {
    let total = per_partition.iter().map(Vec::len).sum();
    let mut queues: Vec<_> = per_partition.into_iter().map(Vec::into_iter).collect();
    let mut requests = Vec::with_capacity(total);
    while requests.len() < total {
        requests.extend(queues.iter_mut().filter_map(Iterator::next));
    }
    requests
}

impl<'r> Partition<'r> {
    fn add(&mut self, row: &'r [Value], clustering_key: &[usize], key: &mut Vec<u8>) {
        if clustering_key.is_empty() {
            match self.rows.first_mut() {
                Some(existing) => *existing = row,
                None => self.rows.push(row),
            }
            return;
        }
        key.clear();
        clustering_key.iter().for_each(|&i| push_key(key, &row[i]));
        match self.by_clustering_key.get(key.as_slice()) {
            Some(&position) => self.rows[position] = row,
            None => {
                self.by_clustering_key.insert(key.clone(), self.rows.len());
                self.rows.push(row);
            }
        }
    }
}

fn key_indices(table: &TableSchema) -> (Vec<usize>, Vec<usize>) {
    let position = |name: &String| table.columns.iter().position(|c| &c.name == name);
    (
        table.partition_key.iter().filter_map(position).collect(),
        table.clustering_key.iter().filter_map(position).collect(),
    )
}

/// Cuts one partition's rows into requests by row count and bytes.
fn cut(rows: Vec<&[Value]>, rows_per_batch: usize, max_bytes: u64) -> Vec<Request<'_>> {
    let mut requests = Vec::with_capacity(rows.len().div_ceil(rows_per_batch.max(1)));
    let mut current: Request<'_> = Vec::with_capacity(rows_per_batch.min(rows.len()));
    let mut bytes = 0;
    for row in rows {
        let row_bytes: u64 = row.iter().map(Value::logical_bytes).sum();
        if !current.is_empty() && (current.len() >= rows_per_batch || bytes + row_bytes > max_bytes) {
            requests.push(std::mem::take(&mut current));
            bytes = 0;
        }
        bytes += row_bytes;
        current.push(row);
    }
    if !current.is_empty() {
        requests.push(current);
    }
    requests
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::coredms::{Column, ColumnType};

    fn readings() -> Arc<TableSchema> {
        let column = |name: &str, column_type| Column {
            name: name.into(),
            column_type,
            nullable: false,
        };
        Arc::new(TableSchema {
            name: "readings".into(),
            columns: vec![
                column("value", ColumnType::Blob),
                column("dev", ColumnType::Text),
                column("time", ColumnType::BigInt),
            ],
            partition_key: vec!["dev".into()],
            clustering_key: vec!["time".into()],
        })
    }

    fn rows(items: &[(&str, i64, usize)]) -> Rows {
        let mut rows = Rows::new(readings());
        for &(dev, time, size) in items {
            rows.values
                .extend([Value::Blob(vec![0; size]), Value::Text(dev.into()), Value::BigInt(time)]);
        }
        rows
    }

    fn shape(requests: &[Request<'_>]) -> Vec<Vec<(String, i64, usize)>> {
        requests
            .iter()
            .map(|r| {
                r.iter()
                    .map(|row| match row {
                        [Value::Blob(b), Value::Text(d), Value::BigInt(t)] => (d.clone(), *t, b.len()),
                        _ => unreachable!(),
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn each_request_holds_rows_of_one_partition_up_to_the_batch_size_partitions_taking_turns() {
        let input: Vec<(&str, i64, usize)> = (0..7).map(|t| (if t % 2 == 0 { "a" } else { "b" }, t, 1)).collect();
        let rows = rows(&input);
        let planned = shape(&plan_requests(&rows, 2, 1 << 20));
        let expected = |d: &str, times: &[i64]| times.iter().map(|&t| (d.to_string(), t, 1)).collect::<Vec<_>>();
        assert_eq!(
            planned,
            vec![
                expected("a", &[0, 2]),
                expected("b", &[1, 3]),
                expected("a", &[4, 6]),
                expected("b", &[5]),
            ]
        );
    }

    #[test]
    fn the_last_row_of_a_primary_key_wins() {
        let rows = rows(&[("a", 1, 1), ("a", 2, 1), ("a", 1, 9)]);
        assert_eq!(
            shape(&plan_requests(&rows, 50, 1 << 20)),
            vec![vec![("a".into(), 1, 9), ("a".into(), 2, 1)]]
        );
    }

    #[test]
    fn large_rows_close_a_batch_early() {
        let rows = rows(&[("a", 1, 600), ("a", 2, 600), ("a", 3, 10), ("a", 4, 2000)]);
        let sizes: Vec<usize> = plan_requests(&rows, 50, 1024).iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![1, 2, 1]);
    }
}
