//! The write path: the requests [`plan`](super::plan) made (UNLOGGED batches of rows of one
//! partition, in the order that suits the cluster's size) sent many at a time, each holding a
//! permit of the platform-wide limiter while it is in flight, each retried on transient errors.

use futures_util::stream::{self, TryStreamExt};
use scylla::statement::batch::{Batch, BatchStatement, BatchType};
use scylla::statement::prepared::PreparedStatement;

use super::plan::{MAX_BATCH_BYTES, Order, plan_requests};
use super::retry::{self, Context};
use super::tenant::CassandraTenant;
use crate::coredms::{Rows, StoreError, Value, Written};

/// Requests one write call keeps in flight at most (the limiter may allow fewer).
const MAX_IN_FLIGHT_PER_WRITE: usize = 256;

impl CassandraTenant {
    /// Writes `rows` (of a declared table) with `insert`, the table's prepared INSERT.
    pub(super) async fn write_rows(&self, rows: &Rows, insert: &PreparedStatement) -> Result<Written, StoreError> {
        // On one node, partition after partition costs the server less; on a cluster, taking
        // turns spreads the requests in flight over the replicas.
        let order = match self.shared.session.get_cluster_state().get_nodes_info().len() {
            0 | 1 => Order::PartitionAfterPartition,
            _ => Order::PartitionsInTurn,
        };
        let requests = plan_requests(rows, self.shared.config.rows_per_batch, MAX_BATCH_BYTES, order);
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
