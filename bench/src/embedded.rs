//! The embedded backend's baseline: the same rows inserted straight into SQLite through
//! rusqlite, with the backend's own pragmas, table and statement (prepared, one transaction per
//! chunk of `batch.batch_rows` rows), into a fresh database.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mysimbdp::coredms::embedded::{EmbeddedDms, WRITER_PRAGMAS, upsert_sql};
use mysimbdp::coredms::{CoreDms, TenantStorage, WriteLimiter};
use mysimbdp::tenants::ReplicationClass;

use crate::rows::DataSet;

/// Inserts `data` into a new database in `dir`; returns the time the inserts took.
pub async fn raw_inserts(dir: &Path, data: &DataSet, chunk_rows: usize) -> anyhow::Result<Duration> {
    let tenant = "rawbench".parse().map_err(anyhow::Error::msg)?;
    let dms = EmbeddedDms::new(dir, Arc::new(WriteLimiter::new(64, 32)))?;
    let storage = TenantStorage {
        tenant,
        replication_class: ReplicationClass::SimpleStrategy,
        replication_factor: 1,
    };
    dms.open_tenant(&storage).await?.ensure_table(&data.table).await?;
    let mut connection = rusqlite::Connection::open(dir.join("rawbench.sqlite"))?;
    connection.execute_batch(WRITER_PRAGMAS)?;
    let sql = upsert_sql(&data.table, &data.table);
    let width = data.table.columns.len();
    let started = Instant::now();
    for chunk in data.values.chunks(chunk_rows * width) {
        let transaction = connection.transaction()?;
        {
            let mut statement = transaction.prepare_cached(&sql)?;
            for row in chunk.chunks(width) {
                statement.execute(rusqlite::params_from_iter(row.iter()))?;
            }
        }
        transaction.commit()?;
    }
    Ok(started.elapsed())
}
