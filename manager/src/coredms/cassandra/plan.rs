//! Planning a write: rows grouped by partition key into requests of rows of one partition
//! (Cassandra applies an UNLOGGED batch of one partition as one mutation, at less than half the
//! server cost of single INSERTs), at most `rows_per_batch` rows and about [`MAX_BATCH_BYTES`]
//! each. On a cluster the partitions take turns ([`Order::PartitionsInTurn`]): requests in
//! flight together then go to different partitions, so to different replicas, where partition
//! after partition would keep one replica set busy at a time. On one node they go partition after
//! partition ([`Order::PartitionAfterPartition`]): requests in flight together then update the
//! same partition, which measured 3-13 % less server CPU per row than taking turns (BENCHMARKS.md).
//!
//! Within one write, a later row with the same primary key replaces an earlier one before
//! anything is sent: rows of one batch share a timestamp, and Cassandra would break that tie by
//! value, not by order. Keys are compared exactly ([`push_key`] bytes), found through a keyed
//! hash of them, so planning allocates nothing per row.

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};

use super::values::push_key;
use crate::coredms::{ColumnType, Rows, TableSchema, Value};

/// A batch closes at this many accounting bytes even below `rows_per_batch`, far under
/// Cassandra's largest mutation (half a commit log segment, 16 MiB by default).
pub(super) const MAX_BATCH_BYTES: u64 = 1 << 20;

/// One request: rows of one partition.
pub(super) type Request<'r> = Vec<&'r [Value]>;

/// The order of the requests of one write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Order {
    /// The first request of each partition, then the second of each, and so on (a cluster).
    PartitionsInTurn,
    /// Every request of a partition, then the next partition's (one node).
    PartitionAfterPartition,
}

/// Groups rows by partition key, keeps the last row of each primary key, and cuts each
/// partition into requests of at most `rows_per_batch` rows and about `max_bytes` bytes, in
/// `order`.
pub(super) fn plan_requests(rows: &Rows, rows_per_batch: usize, max_bytes: u64, order: Order) -> Vec<Request<'_>> {
    plan_with(rows, rows_per_batch, max_bytes, order, RandomState::new())
}

fn plan_with(
    rows: &Rows,
    rows_per_batch: usize,
    max_bytes: u64,
    order: Order,
    hasher: impl BuildHasher,
) -> Vec<Request<'_>> {
    let mut planner = Planner::new(&rows.table, hasher);
    for row in rows.iter() {
        planner.add(row);
    }
    let size = RowSize::of(&rows.table);
    let per_partition = planner
        .partitions
        .into_iter()
        .map(|p| cut(p, rows_per_batch, max_bytes, &size));
    match order {
        Order::PartitionsInTurn => interleave(per_partition.collect()),
        Order::PartitionAfterPartition => per_partition.flatten().collect(),
    }
}

/// Where a row is: partition, then position in it.
type Location = (usize, usize);

struct Planner<'r, S> {
    partition_key: Vec<usize>,
    clustering_key: Vec<usize>,
    /// Rows of each partition.
    partitions: Vec<Vec<&'r [Value]>>,
    by_partition_key: HashMap<Vec<u8>, usize>,
    /// The first row seen with each primary key hash.
    by_key_hash: HashMap<u64, Location, BuildHasherDefault<HashValue>>,
    /// Rows whose key hash equals that of another key (practically never), by exact key.
    collided: HashMap<Vec<u8>, Location>,
    /// Keyed (`RandomState`), so that no input can be made to collide on purpose.
    hasher: S,
    key: Vec<u8>,
    other_key: Vec<u8>,
}

impl<'r, S: BuildHasher> Planner<'r, S> {
    fn new(table: &TableSchema, hasher: S) -> Self {
        let position = |name: &String| table.columns.iter().position(|c| &c.name == name);
        Planner {
            partition_key: table.partition_key.iter().filter_map(position).collect(),
            clustering_key: table.clustering_key.iter().filter_map(position).collect(),
            partitions: Vec::new(),
            by_partition_key: HashMap::new(),
            by_key_hash: HashMap::default(),
            collided: HashMap::new(),
            hasher,
            key: Vec::with_capacity(64),
            other_key: Vec::with_capacity(64),
        }
    }

    fn add(&mut self, row: &'r [Value]) {
        self.key.clear();
        self.partition_key
            .iter()
            .for_each(|&i| push_key(&mut self.key, &row[i]));
        let partition = match self.by_partition_key.get(self.key.as_slice()) {
            Some(&partition) => partition,
            None => {
                self.by_partition_key.insert(self.key.clone(), self.partitions.len());
                self.partitions.push(Vec::new());
                self.partitions.len() - 1
            }
        };
        let rows = &mut self.partitions[partition];
        if self.clustering_key.is_empty() {
            // The partition key is the primary key: one row per partition.
            match rows.first_mut() {
                Some(earlier) => *earlier = row,
                None => rows.push(row),
            }
            return;
        }
        self.clustering_key
            .iter()
            .for_each(|&i| push_key(&mut self.key, &row[i]));
        let here = (partition, rows.len());
        match self.earlier_row(self.hasher.hash_one(self.key.as_slice()), here) {
            Some((p, position)) => self.partitions[p][position] = row,
            None => self.partitions[partition].push(row),
        }
    }

    /// The location of an earlier row with the primary key in `self.key`, or `None` after
    /// recording `here` as the location of that key.
    fn earlier_row(&mut self, hash: u64, here: Location) -> Option<Location> {
        let first = *self.by_key_hash.entry(hash).or_insert(here);
        if first == here {
            return None;
        }
        self.other_key.clear();
        let earlier = self.partitions[first.0][first.1];
        for &i in self.partition_key.iter().chain(&self.clustering_key) {
            push_key(&mut self.other_key, &earlier[i]);
        }
        if self.other_key == self.key {
            return Some(first);
        }
        match self.collided.get(self.key.as_slice()) {
            Some(&location) => Some(location),
            None => {
                self.collided.insert(self.key.clone(), here);
                None
            }
        }
    }
}

/// A hasher for keys that already are hashes.
#[derive(Default)]
struct HashValue(u64);

impl Hasher for HashValue {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// Accounting bytes of a row: its fixed-size columns' (known from the schema) plus the lengths
/// of its text and blob values.
struct RowSize {
    fixed: u64,
    variable: Vec<usize>,
}

impl RowSize {
    fn of(table: &TableSchema) -> Self {
        let mut size = RowSize {
            fixed: 0,
            variable: Vec::new(),
        };
        for (i, column) in table.columns.iter().enumerate() {
            match column.column_type {
                ColumnType::Text | ColumnType::Blob => size.variable.push(i),
                ColumnType::BigInt | ColumnType::Double | ColumnType::Timestamp => size.fixed += 8,
                ColumnType::Int => size.fixed += 4,
                ColumnType::Boolean => size.fixed += 1,
            }
        }
        size
    }

    /// At least the row's accounting bytes (nulls in fixed-size columns count as their size).
    fn bound(&self, row: &[Value]) -> u64 {
        self.fixed + self.variable.iter().map(|&i| row[i].logical_bytes()).sum::<u64>()
    }
}

/// Cuts one partition's rows into requests by row count and bytes.
fn cut<'r>(rows: Vec<&'r [Value]>, rows_per_batch: usize, max_bytes: u64, size: &RowSize) -> Vec<Request<'r>> {
    let rows_per_batch = rows_per_batch.max(1);
    let mut requests = Vec::with_capacity(rows.len().div_ceil(rows_per_batch));
    let mut current: Request<'r> = Vec::with_capacity(rows_per_batch.min(rows.len()));
    let mut bytes = 0;
    for row in rows {
        let row_bytes = size.bound(row);
        if !current.is_empty() && (current.len() >= rows_per_batch || bytes + row_bytes > max_bytes) {
            requests.push(std::mem::replace(&mut current, Vec::with_capacity(rows_per_batch)));
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

/// The first request of each partition, then the second of each, and so on.
fn interleave(per_partition: Vec<Vec<Request<'_>>>) -> Vec<Request<'_>> {
    let total = per_partition.iter().map(Vec::len).sum();
    let mut queues: Vec<_> = per_partition.into_iter().map(Vec::into_iter).collect();
    let mut requests = Vec::with_capacity(total);
    while requests.len() < total {
        requests.extend(queues.iter_mut().filter_map(Iterator::next));
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
    fn each_request_holds_rows_of_one_partition_up_to_the_batch_size_in_either_order() {
        let input: Vec<(&str, i64, usize)> = (0..7).map(|t| (if t % 2 == 0 { "a" } else { "b" }, t, 1)).collect();
        let rows = rows(&input);
        let planned = shape(&plan_requests(&rows, 2, 1 << 20, Order::PartitionsInTurn));
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
        let planned = shape(&plan_requests(&rows, 2, 1 << 20, Order::PartitionAfterPartition));
        assert_eq!(
            planned,
            vec![
                expected("a", &[0, 2]),
                expected("a", &[4, 6]),
                expected("b", &[1, 3]),
                expected("b", &[5]),
            ]
        );
    }

    #[test]
    fn the_last_row_of_a_primary_key_wins() {
        let rows = rows(&[("a", 1, 1), ("a", 2, 1), ("a", 1, 9)]);
        assert_eq!(
            shape(&plan_requests(&rows, 50, 1 << 20, Order::PartitionsInTurn)),
            vec![vec![("a".into(), 1, 9), ("a".into(), 2, 1)]]
        );
    }

    #[test]
    fn rows_with_the_same_key_hash_but_different_keys_are_all_kept() {
        #[derive(Default)]
        struct Constant;
        impl Hasher for Constant {
            fn finish(&self) -> u64 {
                7
            }
            fn write(&mut self, _: &[u8]) {}
        }
        let rows = rows(&[
            ("a", 1, 1),
            ("a", 2, 2),
            ("b", 1, 3),
            ("a", 2, 4),
            ("a", 3, 5),
            ("b", 1, 6),
        ]);
        let planned = shape(&plan_with(
            &rows,
            50,
            1 << 20,
            Order::PartitionsInTurn,
            BuildHasherDefault::<Constant>::default(),
        ));
        assert_eq!(
            planned,
            vec![
                vec![("a".into(), 1, 1), ("a".into(), 2, 4), ("a".into(), 3, 5)],
                vec![("b".into(), 1, 6)]
            ]
        );
    }

    #[test]
    fn large_rows_close_a_batch_early() {
        let rows = rows(&[("a", 1, 600), ("a", 2, 600), ("a", 3, 10), ("a", 4, 2000)]);
        let sizes: Vec<usize> = plan_requests(&rows, 50, 1024, Order::PartitionsInTurn)
            .iter()
            .map(Vec::len)
            .collect();
        assert_eq!(sizes, vec![1, 2, 1]);
    }
}
