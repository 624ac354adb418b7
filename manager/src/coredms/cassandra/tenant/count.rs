//! Exact counts without a coordinator timeout: the Murmur3 token ring is split into
//! `count_ranges` ranges, each counted by its own `SELECT COUNT(*) ... WHERE token(pk) >= ? AND
//! token(pk) <= ?`, a few at a time. A range that times out is split further and its parts
//! counted instead (also one the server aborted as too slow: a read failure), so a table of
//! any size is counted in requests of bounded work.

use futures_util::future::BoxFuture;
use futures_util::stream::{self, StreamExt, TryStreamExt};

use super::{CassandraTenant, TableHandle};
use crate::coredms::StoreError;
use crate::coredms::StoreErrorKind;
use crate::coredms::cassandra::retry::{self, Context, kind_of};

/// Ranges counted at once.
const RANGES_IN_FLIGHT: usize = 4;

/// A range that times out is split into this many parts...
const SPLIT_PARTS: u32 = 8;

/// ...at most this many times over.
const MAX_SPLIT_DEPTH: u32 = 3;

impl CassandraTenant {
    /// The exact number of rows of a table.
    pub(super) async fn count_rows(&self, handle: &TableHandle) -> Result<u64, StoreError> {
        let ranges = split(i64::MIN, i64::MAX, self.shared.config.count_ranges);
        stream::iter(ranges)
            .map(|(low, high)| self.count_range(handle, low, high, 0))
            .buffer_unordered(RANGES_IN_FLIGHT)
            .try_fold(0u64, |total, n| async move { Ok(total + n) })
            .await
    }

    /// Rows whose partition token is within `low..=high`.
    fn count_range<'a>(
        &'a self,
        handle: &'a TableHandle,
        low: i64,
        high: i64,
        depth: u32,
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        Box::pin(async move {
            let context = Context::new(&self.tenant, "counting rows").on(&handle.schema.name);
            let can_split = depth < MAX_SPLIT_DEPTH && high > low;
            // A range too slow to count is split while that is possible, retried after. Too
            // slow is a timeout, or a read failure: Cassandra aborts a local read that runs past
            // its timeout and answers ReadFailure (reason UNKNOWN), as seen right after an
            // ingest of 18.7 M rows while compactions ran.
            let too_slow = |e: &_| kind_of(e) == StoreErrorKind::Timeout || retry::is_read_failure(e);
            let retry_on = |e: &_| too_slow(e) && !can_split || kind_of(e) == StoreErrorKind::Unavailable;
            let session = &self.shared.session;
            let outcome = retry::retrying(self.shared.config.max_retries, retry_on, || {
                session.execute_unpaged(&handle.count, (low, high))
            })
            .await;
            match outcome {
                Ok(result) => {
                    let internal = |e: &dyn std::fmt::Display| context.error(StoreErrorKind::Internal, e);
                    let rows = result.into_rows_result().map_err(|e| internal(&e))?;
                    let (count,) = rows.first_row::<(i64,)>().map_err(|e| internal(&e))?;
                    Ok(u64::try_from(count).unwrap_or(0))
                }
                Err((error, _)) if can_split && too_slow(&error) => {
                    log::info!(
                        "cassandra: tenant={} table={} counting tokens {low}..={high} was too slow ({error}); splitting it in {SPLIT_PARTS}",
                        self.tenant,
                        handle.schema.name
                    );
                    let mut total = 0;
                    for (part_low, part_high) in split(low, high, SPLIT_PARTS) {
                        total += self.count_range(handle, part_low, part_high, depth + 1).await?;
                    }
                    Ok(total)
                }
                Err((error, attempts)) => Err(context.driver_error(&error, attempts)),
            }
        })
    }
}

/// `low..=high` cut into `parts` adjacent inclusive ranges (fewer if it holds fewer tokens).
fn split(low: i64, high: i64, parts: u32) -> Vec<(i64, i64)> {
    let span = i128::from(high) - i128::from(low) + 1;
    let parts = i128::from(parts.max(1)).min(span);
    (0..parts)
        .map(|i| {
            let start = i128::from(low) + span * i / parts;
            let end = i128::from(low) + span * (i + 1) / parts - 1;
            (start as i64, end as i64)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_cover_the_ring_once() {
        for parts in [1, 2, 3, 64, 1000] {
            let ranges = split(i64::MIN, i64::MAX, parts);
            assert_eq!(ranges.len(), parts as usize);
            assert_eq!(ranges[0].0, i64::MIN);
            assert_eq!(ranges[ranges.len() - 1].1, i64::MAX);
            for pair in ranges.windows(2) {
                assert!(pair[0].0 <= pair[0].1);
                assert_eq!(pair[0].1 + 1, pair[1].0);
            }
        }
        assert_eq!(split(5, 7, 8), vec![(5, 5), (6, 6), (7, 7)]);
    }
}
