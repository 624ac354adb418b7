//! batch manager: finds staged files (from daas, the folder watcher and a scan at start, so a
//! file staged before a restart is ingested), schedules them fairly across tenants under a
//! global and a per-tenant limit, and runs each through [`ingest`]. A file that cannot start
//! (no plugin yet, storage down, tenant gone) waits and is tried again; it is never dropped.

mod ingest;
pub mod scheduler;
pub mod tracker;

use std::collections::HashSet;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use tracker::{FileState, FileTracker, UploadReservation};

use crate::coredms::CoreDms;
use crate::fswatch::{FolderWatch, watch_folder};
use crate::plugin_host::PluginHost;
use crate::report::ReportStore;
use crate::source::FileId;
use crate::staging::{StagedFile, Staging};
use crate::telemetry::Metrics;
use crate::tenants::TenantId;
use crate::tenants::watch::TenantsHandle;
use crate::usage::UsageLedger;
use ingest::Outcome;
use scheduler::FairQueue;

/// How long files in flight get to stop at a batch boundary when the platform shuts down;
/// a file still running after that is cut off and redone at the next start.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Settings of the batch manager.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchConfig {
    /// Files ingesting at once, all tenants.
    pub workers: usize,
    /// Files ingesting at once for one tenant.
    pub workers_per_tenant: usize,
    /// Rows per batch a plugin hands over.
    pub batch_rows: u32,
    /// Batches buffered between a plugin and storage (bounds memory per file).
    pub channel_batches: usize,
    /// Writes in flight per file.
    pub writes_in_flight_per_file: usize,
    /// Seconds before a file is tried again after a storage outage.
    pub retry_delay_seconds: u64,
    /// Small files of a tenant queued together are ingested as one group of at most this many:
    /// one plugin set-up, shared transactions, one barrier, reports written together.
    pub group_files: usize,
    /// Files of at most this many bytes may be grouped; a larger one is ingested alone.
    pub group_file_bytes: u64,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            workers: 4,
            workers_per_tenant: 2,
            batch_rows: 2000,
            channel_batches: 4,
            writes_in_flight_per_file: 4,
            retry_delay_seconds: 5,
            group_files: 32,
            group_file_bytes: 1 << 20,
        }
    }
}

impl BatchConfig {
    fn retry_delay(&self) -> Duration {
        Duration::from_secs(self.retry_delay_seconds)
    }
}

/// What the batch manager works with.
pub struct BatchContext {
    /// The staging folder.
    pub staging: Arc<Staging>,
    /// Files in flight.
    pub tracker: Arc<FileTracker>,
    /// What each tenant's data occupies.
    pub usage: Arc<UsageLedger>,
    /// The plugins.
    pub plugins: Arc<PluginHost>,
    /// The tenants' stores the rows go to.
    pub dms: Arc<dyn CoreDms>,
    /// Where each file's report and rejected rows are written.
    pub reports: Arc<ReportStore>,
    /// The configuration in force (a file waits while its tenant is missing).
    pub tenants: TenantsHandle,
    /// Ingested files are counted here.
    pub metrics: Arc<Metrics>,
    /// Workers, batch sizes, retry delay.
    pub config: BatchConfig,
    /// Where rejected rows wait while their file is ingested.
    pub rejected_tmp_dir: PathBuf,
    /// Cancelled at shutdown.
    pub cancel: CancellationToken,
}

/// The running batch manager.
pub struct BatchManager {
    submit: mpsc::Sender<StagedFile>,
    task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    _watcher: FolderWatch,
}

impl BatchManager {
    /// Starts it: scans staging, then watches it.
    pub fn start(ctx: Arc<BatchContext>) -> std::io::Result<Self> {
        let _ = std::fs::remove_dir_all(&ctx.rejected_tmp_dir);
        std::fs::create_dir_all(&ctx.rejected_tmp_dir)?;
        let (submit, submitted) = mpsc::channel(1024);
        let (events_tx, events) = mpsc::channel::<PathBuf>(4096);
        let watcher = watch_folder(ctx.staging.dir(), move |paths| {
            for path in paths.unwrap_or_default() {
                let _ = events_tx.try_send(path.clone());
            }
        })
        .map_err(std::io::Error::other)?;
        let task = tokio::spawn(run(ctx, submitted, events, submit.clone()));
        Ok(BatchManager {
            submit,
            task: std::sync::Mutex::new(Some(task)),
            _watcher: watcher,
        })
    }

    /// Hands a newly staged file over (the watcher would find it too, a moment later).
    pub fn submit(&self, file: StagedFile) {
        let _ = self.submit.try_send(file);
    }

    /// Waits for the manager to stop (after the context's cancellation).
    pub async fn join(&self) {
        let task = self.task.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

struct Manager {
    ctx: Arc<BatchContext>,
    queue: FairQueue,
    known: HashSet<FileId>,
    running: JoinSet<Vec<(StagedFile, Outcome)>>,
    retry: mpsc::Sender<StagedFile>,
}

async fn run(
    ctx: Arc<BatchContext>,
    mut submitted: mpsc::Receiver<StagedFile>,
    mut events: mpsc::Receiver<PathBuf>,
    submit: mpsc::Sender<StagedFile>,
) {
    let (retry, mut retries) = mpsc::channel::<StagedFile>(4096);
    let mut manager = Manager {
        queue: FairQueue::new(ctx.config.workers, ctx.config.workers_per_tenant),
        known: HashSet::new(),
        running: JoinSet::new(),
        retry,
        ctx: Arc::clone(&ctx),
    };
    manager.rescan();
    let mut rescan = tokio::time::interval(Duration::from_secs(30));
    rescan.tick().await;
    drop(submit);
    loop {
        manager.start_what_fits();
        tokio::select! {
            () = ctx.cancel.cancelled() => break,
            Some(file) = submitted.recv() => manager.enqueue(file),
            Some(file) = retries.recv() => {
                let tenant = file.tenant.clone();
                manager.queue.push(file);
                manager.publish(&tenant);
            }
            Some(path) = events.recv() => {
                if let Some(file) = ctx.staging.parse(&path) {
                    manager.enqueue(file);
                }
            }
            Some(joined) = manager.running.join_next() => manager.finished(joined),
            _ = rescan.tick() => manager.rescan(),
        }
    }
    // Let files in flight stop (their plugins see the cancellation at their next batch); what
    // did not finish is redone at the next start.
    let grace = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while manager.running.join_next().await.is_some() {}
    });
    if grace.await.is_err() {
        log::warn!("batch manager: files still ingesting at shutdown will be redone at the next start");
    }
}

impl Manager {
    fn enqueue(&mut self, file: StagedFile) {
        if !self.known.insert(file.id) {
            return;
        }
        self.ctx.tracker.discovered(&file.tenant, file.id);
        let tenant = file.tenant.clone();
        self.queue.push(file);
        self.publish(&tenant);
    }

    /// The tenant's gauges: files in flight, files waiting for a worker.
    fn publish(&self, tenant: &TenantId) {
        let metrics = &self.ctx.metrics;
        metrics.set_files_in_flight(tenant.as_str(), self.ctx.tracker.in_flight(tenant));
        metrics.set_files_queued(tenant.as_str(), self.queue.queued(tenant));
    }

    fn rescan(&mut self) {
        match self.ctx.staging.scan() {
            Ok(files) => files.into_iter().for_each(|f| self.enqueue(f)),
            Err(e) => log::error!("cannot scan {}: {e}", self.ctx.staging.dir().display()),
        }
    }

    fn start_what_fits(&mut self) {
        let (max_files, max_bytes) = (self.ctx.config.group_files, self.ctx.config.group_file_bytes);
        let small = |file: &StagedFile| file.size <= max_bytes;
        while let Some(files) = self.queue.next_group(max_files, small) {
            self.publish(&files[0].tenant);
            let ctx = Arc::clone(&self.ctx);
            self.running.spawn(async move {
                // A bug in the platform fails this attempt, not the manager.
                let outcomes = AssertUnwindSafe(ingest::ingest(&ctx, &files))
                    .catch_unwind()
                    .await
                    .unwrap_or_else(|_| {
                        let failed = Outcome::Wait {
                            reason: "the platform failed while ingesting this file".into(),
                            delay: Duration::from_secs(30),
                        };
                        vec![failed; files.len()]
                    });
                files.into_iter().zip(outcomes).collect()
            });
        }
    }

    fn finished(&mut self, joined: Result<Vec<(StagedFile, Outcome)>, tokio::task::JoinError>) {
        let Ok(group) = joined else {
            // Tasks are never aborted and panics are caught inside them.
            return;
        };
        let Some(tenant) = group.first().map(|(file, _)| file.tenant.clone()) else {
            return;
        };
        self.queue.done(&tenant);
        for (file, outcome) in group {
            match outcome {
                Outcome::Finished => {
                    self.known.remove(&file.id);
                }
                Outcome::Wait { reason, delay } => {
                    if self.ctx.cancel.is_cancelled() {
                        continue;
                    }
                    log::info!("tenant={} file={} waits {:?}: {reason}", file.tenant, file.id, delay);
                    self.ctx
                        .tracker
                        .set_state(&file.tenant, file.id, FileState::Queued, Some(reason));
                    let retry = self.retry.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(delay).await;
                        let _ = retry.send(file).await;
                    });
                }
            }
        }
        self.publish(&tenant);
    }
}
