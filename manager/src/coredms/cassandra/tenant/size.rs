//! What a tenant's keyspace occupies: for each declared table, its exact row count times the
//! mean accounting bytes of a sample of its rows. The sample is read from [`SAMPLE_TOKENS`]
//! points spread evenly over the token ring ([`SAMPLE_ROWS_PER_TOKEN`] rows from each), so it
//! comes from many partitions, not only the first. Re-writing rows that exist changes neither
//! the count nor (for the same values) the sample: a re-ingest adds nothing.

use futures_util::stream::{self, StreamExt, TryStreamExt};

use super::read::result_rows;
use super::{CassandraTenant, TableHandle};
use crate::coredms::cassandra::retry::{self, Context};
use crate::coredms::{StoreError, StoreErrorKind, Value};

/// Points of the token ring a sample starts from.
const SAMPLE_TOKENS: i64 = 8;

/// Rows read from each point (the sample holds at most `SAMPLE_TOKENS` times this many).
pub(super) const SAMPLE_ROWS_PER_TOKEN: usize = 128;

impl CassandraTenant {
    /// Sum over the declared tables of rows × mean row bytes.
    pub(super) async fn measure_size(&self) -> Result<u64, StoreError> {
        let mut total = 0u64;
        for schema in self.declared_tables().await? {
            let handle = self.table(&schema.name).await?;
            let rows = self.count_rows(&handle).await?;
            if rows == 0 {
                continue;
            }
            let mean = self.mean_row_bytes(&handle).await?;
            total = total.saturating_add((rows as f64 * mean).round() as u64);
        }
        Ok(total)
    }

    /// The mean accounting bytes of the sampled rows (0 for an empty table).
    async fn mean_row_bytes(&self, handle: &TableHandle) -> Result<f64, StoreError> {
        let context = Context::new(&self.tenant, "sampling rows").on(&handle.schema.name);
        let step = u64::MAX / SAMPLE_TOKENS as u64;
        let starts = (0..SAMPLE_TOKENS).map(|i| i64::MIN.wrapping_add((step * i as u64) as i64));
        let sizes: Vec<(u64, u64)> = stream::iter(starts)
            .map(|token| {
                let context = &context;
                async move {
                    let result = retry::with_retries(&self.shared, context, || {
                        self.shared.session.execute_unpaged(&handle.sample, (token,))
                    })
                    .await?;
                    let mut rows = 0u64;
                    let mut bytes = 0u64;
                    for row in result_rows(result, context)? {
                        let values = super::read::decode_row(&handle.schema, row)
                            .map_err(|e| context.error(StoreErrorKind::Internal, e))?;
                        rows += 1;
                        bytes += values.iter().map(Value::logical_bytes).sum::<u64>();
                    }
                    Ok::<_, StoreError>((rows, bytes))
                }
            })
            .buffer_unordered(4)
            .try_collect()
            .await?;
        // Samples starting near each other overlap (a small table is sampled whole several
        // times over); the mean is the same either way.
        let (rows, bytes) = sizes
            .iter()
            .fold((0u64, 0u64), |(r, b), (rows, bytes)| (r + rows, b + bytes));
        Ok(if rows == 0 { 0.0 } else { bytes as f64 / rows as f64 })
    }
}
