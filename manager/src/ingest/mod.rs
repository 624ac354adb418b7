//! ingest: the one path from a plugin's output to stored rows, for a staged file and for a batch
//! of stream messages alike. A call's checked batches ([`BatchStream`]) are written to the
//! tenant's store as they come, a few writes in flight (each under the platform-wide write
//! limiter, inside coredms); rejected records go to a [`Rejects`] collector keyed by the
//! [`Source`]; [`commit`] is the barrier that makes the rows durable and has the tenant's usage
//! measured again. What comes after the barrier (a file's report, a stream batch's offsets) is
//! the caller's.

mod rejects;

use std::sync::Arc;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;

pub use rejects::{RejectSink, Rejects};

use crate::coredms::{StoreError, TenantStorage, TenantStore, Written};
use crate::plugin_host::{BatchStream, CallOutcome};
use crate::usage::UsageLedger;

/// What a call's batches did to storage, and how the call ended.
#[derive(Debug)]
pub struct Drained {
    /// Rows and accounting bytes written.
    pub written: Written,
    /// The first storage error (the plugin was stopped then), if any.
    pub store_error: Option<StoreError>,
    /// The plugin call's outcome.
    pub plugin: CallOutcome,
}

/// Writes every batch of `stream` to `store`, at most `writes_in_flight` writes at a time, and
/// hands rejected records to `rejects`. A storage error stops the plugin (its next hand-over
/// fails) and is returned with what was written before it.
pub async fn drain(
    mut stream: BatchStream,
    store: &Arc<dyn TenantStore>,
    writes_in_flight: usize,
    rejects: &mut impl RejectSink,
) -> Drained {
    let mut written = Written::default();
    let mut store_error = None;
    let mut writes = FuturesUnordered::new();
    let mut absorb = |result: Result<Written, StoreError>, store_error: &mut Option<StoreError>| match result {
        Ok(w) => {
            written.rows += w.rows;
            written.bytes += w.bytes;
        }
        Err(e) => {
            store_error.get_or_insert(e);
        }
    };
    while let Some(batch) = stream.next().await {
        rejects.add(batch.rejected).await;
        if batch.rows.is_empty() {
            continue;
        }
        while writes.len() >= writes_in_flight.max(1) {
            if let Some(result) = writes.next().await {
                absorb(result, &mut store_error);
            }
        }
        if store_error.is_some() {
            break;
        }
        let store = Arc::clone(store);
        writes.push(async move { store.write(batch.rows).await });
    }
    // A storage error stops the plugin; then what is in flight settles.
    stream.stop();
    while let Some(result) = writes.next().await {
        absorb(result, &mut store_error);
    }
    let plugin = stream.outcome().await;
    Drained {
        written,
        store_error,
        plugin,
    }
}

/// The barrier after a source's rows are written: when it returns, they are durable, and the
/// tenant's usage is measured again (in the background). Nothing that says the rows are stored
/// (a report, an offset commit) may come before it.
pub async fn commit(
    store: &dyn TenantStore,
    usage: &Arc<UsageLedger>,
    storage: &TenantStorage,
) -> Result<(), StoreError> {
    store.flush().await?;
    usage.changed(storage.clone());
    Ok(())
}
