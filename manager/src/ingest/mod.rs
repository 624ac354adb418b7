//! ingest: the one path from a plugin's output to stored rows, for a staged file and for a batch
//! of stream messages alike. A call's checked batches ([`BatchStream`]) are written to the
//! tenant's store as they come, a few writes in flight (each under the platform-wide write
//! limiter, inside coredms); rejected records go to a [`Rejects`] collector keyed by the
//! [`Source`]; [`commit`] is the barrier that makes the rows durable and has the tenant's usage
//! measured again. What comes after the barrier (a file's report, a stream batch's offsets) is
//! the caller's.

mod rejects;

use std::sync::{Arc, OnceLock};

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::sync::mpsc;

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

/// Rows to write, and where.
type Job = (Arc<dyn TenantStore>, crate::coredms::Rows);

/// Writes in flight to a tenant's store, at most a limit at once, and what they came to.
///
/// The writes run on a task of their own: a write starts as soon as it is pushed (in push
/// order) and goes on while its caller waits for the plugin's next batch, polls the queue, or
/// has moved on to the next source; [`Writes::settle`] collects them.
pub struct Writes {
    jobs: mpsc::Sender<Job>,
    driver: tokio::task::JoinHandle<Written>,
    failed: Arc<OnceLock<StoreError>>,
}

impl Writes {
    /// No write yet; at most `limit` in flight.
    pub fn new(limit: usize) -> Self {
        // One job waits in the channel while `limit` are in flight: the pusher is held back
        // when the store is slower than the plugin.
        let (jobs, received) = mpsc::channel(1);
        let failed = Arc::new(OnceLock::new());
        let driver = tokio::spawn(drive(received, limit.max(1), Arc::clone(&failed)));
        Writes { jobs, driver, failed }
    }

    /// Starts writing `rows`, once there is room. Returns `false` (and writes nothing) once a
    /// write has failed.
    pub async fn push(&mut self, store: &Arc<dyn TenantStore>, rows: crate::coredms::Rows) -> bool {
        if self.failed.get().is_some() {
            return false;
        }
        self.jobs.send((Arc::clone(store), rows)).await.is_ok() && self.failed.get().is_none()
    }

    /// The first storage error so far, if any.
    pub fn failed(&self) -> Option<&StoreError> {
        self.failed.get()
    }

    /// Waits for every write pushed: the rows and bytes written, and the first error.
    pub async fn settle(self) -> (Written, Option<StoreError>) {
        let Writes { jobs, driver, failed } = self;
        drop(jobs);
        let written = match driver.await {
            Ok(written) => written,
            Err(e) => {
                let _ = failed.set(StoreError::new(
                    crate::coredms::StoreErrorKind::Internal,
                    format!("the writes' task failed: {e}"),
                ));
                Written::default()
            }
        };
        (written, failed.get().cloned())
    }
}

/// Runs the writes of one [`Writes`] until its sender is dropped and every write has ended.
/// After the first error no further write starts.
async fn drive(mut jobs: mpsc::Receiver<Job>, limit: usize, failed: Arc<OnceLock<StoreError>>) -> Written {
    let mut in_flight: FuturesUnordered<Write> = FuturesUnordered::new();
    let mut written = Written::default();
    let mut open = true;
    loop {
        tokio::select! {
            // Completions first, so a failure stops the next write from starting.
            biased;
            Some(result) = in_flight.next(), if !in_flight.is_empty() => match result {
                Ok(w) => {
                    written.rows += w.rows;
                    written.bytes += w.bytes;
                }
                Err(e) => {
                    let _ = failed.set(e);
                }
            },
            job = jobs.recv(), if open && in_flight.len() < limit => match job {
                Some(_) if failed.get().is_some() => {}
                // Pushed into the set, it is first polled (and so sent) in push order.
                Some((store, rows)) => in_flight.push(Box::pin(async move { store.write(rows).await })),
                None => open = false,
            },
            else => return written,
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
