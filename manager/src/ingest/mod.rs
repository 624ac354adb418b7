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
    stream: BatchStream,
    store: &Arc<dyn TenantStore>,
    writes_in_flight: usize,
    rejects: &mut impl RejectSink,
) -> Drained {
    let mut writes = Writes::new(writes_in_flight);
    let plugin = feed(stream, store, &mut writes, rejects).await;
    let (written, store_error) = writes.settle().await;
    Drained {
        written,
        store_error,
        plugin,
    }
}

/// Hands every batch of `stream` to `writes` and its rejected records to `rejects`, and
/// returns once the plugin call has ended: its last writes may still be in flight, so the
/// next call can run while they finish. A storage error stops the plugin.
pub async fn feed(
    mut stream: BatchStream,
    store: &Arc<dyn TenantStore>,
    writes: &mut Writes,
    rejects: &mut impl RejectSink,
) -> CallOutcome {
    while let Some(batch) = stream.next().await {
        rejects.add(batch.rejected).await;
        if batch.rows.is_empty() {
            continue;
        }
        if !writes.push(store, batch.rows).await {
            break;
        }
    }
    stream.stop();
    stream.outcome().await
}

type Write = futures_util::future::BoxFuture<'static, Result<Written, StoreError>>;

/// Writes in flight to a tenant's store, at most a limit at once, and what they came to.
pub struct Writes {
    in_flight: FuturesUnordered<Write>,
    limit: usize,
    written: Written,
    error: Option<StoreError>,
}

impl Writes {
    /// No write yet; at most `limit` in flight.
    pub fn new(limit: usize) -> Self {
        Writes {
            in_flight: FuturesUnordered::new(),
            limit: limit.max(1),
            written: Written::default(),
            error: None,
        }
    }

    /// Starts writing `rows`, once there is room. Returns `false` (and writes nothing) once a
    /// write has failed.
    pub async fn push(&mut self, store: &Arc<dyn TenantStore>, rows: crate::coredms::Rows) -> bool {
        while self.in_flight.len() >= self.limit {
            if let Some(result) = self.in_flight.next().await {
                self.absorb(result);
            }
        }
        if self.error.is_some() {
            return false;
        }
        let store = Arc::clone(store);
        self.in_flight.push(Box::pin(async move { store.write(rows).await }));
        true
    }

    /// The first storage error so far, if any.
    pub fn failed(&self) -> Option<&StoreError> {
        self.error.as_ref()
    }

    /// Waits for every write in flight: the rows and bytes written, and the first error.
    pub async fn settle(mut self) -> (Written, Option<StoreError>) {
        while let Some(result) = self.in_flight.next().await {
            self.absorb(result);
        }
        (self.written, self.error)
    }

    fn absorb(&mut self, result: Result<Written, StoreError>) {
        match result {
            Ok(w) => {
                self.written.rows += w.rows;
                self.written.bytes += w.bytes;
            }
            Err(e) => {
                self.error.get_or_insert(e);
            }
        }
    }
}

/// The barrier after a source's rows are written: when it returns, they are durable, and the
/// tenant's usage is measured again (in the background). Nothing that says the rows are stored
/// (a report, an offset commit) may come before it.
pub async fn commit(
    store: &dyn TenantStore,
    usage: &Arc<UsageLedger>,
    storage: &TenantStorage,
    written: &Written,
) -> Result<(), StoreError> {
    store.flush().await?;
    usage.changed(storage.clone(), written.bytes);
    Ok(())
}
