//! One stream instance's task: poll a batch from the tenant's topic (at most `batch_messages`,
//! waiting at most `batch_wait_ms`; up to [`BACKLOG_GROWTH`] times as many while a backlog is
//! drained), hand each partition's messages to the tenant's plugin, write the rows, make them
//! durable, keep the rejected messages, and only then commit the offsets. The writes start as
//! the plugin hands its rows over and go on, followed by the batch's durability barrier, while
//! the next batch is polled and processed: up to
//! [`UNCOMMITTED_AHEAD`] batches are on their way to durable at once, and their offsets are
//! committed in order, each only once its rows are durable. A stop is seen between batches, so
//! the batches in hand are always stored and committed first. A new plugin version is picked up
//! at a batch boundary.
//!
//! Anything that cannot go on now (no plugin, storage or the queue unreachable) pauses the
//! instance with a backoff; what was polled and not committed is delivered again (the consumer
//! is dropped, so the next one starts from the committed offsets).

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{GROUP, StreamContext, recovery};
use crate::coredms::{TenantStorage, TenantStore, Written};
use crate::durable::unix_now;
use crate::ingest;
use crate::monitor::{InstanceReport, Latencies};
use crate::plugin_host::{Instance, PluginVersion};
use crate::queue::{QueueConsumer, QueuedMessage};
use crate::report::StreamLog;
use crate::tenants::TenantId;

/// What an instance is doing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum InstanceState {
    /// Not yet consuming.
    #[default]
    Starting,
    /// Consuming (with or without messages to process).
    Running,
    /// Paused: see the note (no plugin, storage or the queue unreachable).
    Waiting,
    /// Stopped.
    Stopped,
}

impl InstanceState {
    /// Its name, as the API writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            InstanceState::Starting => "starting",
            InstanceState::Running => "running",
            InstanceState::Waiting => "waiting",
            InstanceState::Stopped => "stopped",
        }
    }
}

/// An instance's state and what it has done since it started.
#[derive(Debug, Clone, Default, Serialize)]
pub struct InstanceStatus {
    /// What it is doing.
    pub state: InstanceState,
    /// Why it waits.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// The plugin version it runs.
    pub plugin_version: Option<String>,
    /// That version's load generation.
    pub plugin_generation: Option<u64>,
    /// The partitions of the tenant's topic it consumes now.
    pub partitions: Vec<u32>,
    /// Messages processed (stored or rejected).
    pub messages: u64,
    /// Their payload bytes.
    pub bytes: u64,
    /// Rows stored.
    pub rows: u64,
    /// Messages rejected (by the plugin, or found to make it fail).
    pub rejected: u64,
    /// Plugin calls that failed (retried or split).
    pub failures: u64,
    /// Batches committed.
    pub batches: u64,
    /// Messages of the tenant's topic not yet committed by its group, last read.
    pub lag: Option<u64>,
    /// The last period's report.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_report: Option<InstanceReport>,
    /// When the last batch was committed (seconds since the epoch).
    pub last_batch_at: Option<f64>,
    /// The last batch's mean time from a message's acceptance to its rows being durable, ms.
    pub last_batch_latency_ms: Option<f64>,
}

/// Why an instance cannot go on now.
pub(super) struct Pause(pub(super) String);

/// Batches written and on their way to durable while the next one is polled and processed. At
/// two, the store always has the writes of one batch to do while the instance polls and the
/// plugin works on the next.
const UNCOMMITTED_AHEAD: usize = 2;

/// How often the lag is read.
const LAG_EVERY: Duration = Duration::from_secs(2);

/// While there is a backlog (a poll got `batch_messages` from the queue at once), each next poll
/// may take twice as many messages, up to this many times `batch_messages`: a batch's fixed costs
/// (the plugin calls, the barrier, the commit) are then spread over more rows while the instance
/// catches up. The first poll without a backlog goes back to `batch_messages`, so a light load
/// keeps small batches and their latency.
const BACKLOG_GROWTH: usize = 2;

/// The instance's working state.
pub(super) struct Task {
    pub(super) ctx: Arc<StreamContext>,
    pub(super) tenant: TenantId,
    pub(super) id: String,
    stop: CancellationToken,
    status: Arc<Mutex<InstanceStatus>>,
    consumer: Option<Box<dyn QueueConsumer>>,
    /// The plugin instance, on the version it was opened on.
    pub(super) plugin: Option<Instance>,
    /// The generation whose tables were prepared in the store.
    prepared: Option<u64>,
    lag_read_at: Option<Instant>,
    /// The lag read under way (it runs beside the batches; its figure is taken at the next
    /// step after it ends).
    lag_read: Option<tokio::task::JoinHandle<Result<u64, crate::queue::QueueError>>>,
    /// The commit under way and the offsets it sends: it runs while the next batch is polled
    /// and processed, and is waited for before the next commit (commits stay in order) and
    /// before the instance stops.
    committing: Option<Committing>,
    /// Messages the next poll takes at most: `batch_messages`, more while there is a backlog.
    poll_size: usize,
    /// The batches being written and made durable while the next one is processed, oldest first.
    pending: VecDeque<Uncommitted>,
    /// Offsets of durable batches whose commit the queue refused (a rebalance under way): sent
    /// again with the next commit, or alone at the next batch boundary, while their partitions
    /// stay with this instance. Without this, a partition that stays put after the rebalance
    /// is never committed (its consumer has read past those messages) and its lag never drains.
    refused: BTreeMap<u32, u64>,
    /// What this period's report will say (plugin calls and failures are counted as they
    /// happen, the rest once a batch is committed).
    pub(super) period: Period,
    /// Where reports go (the monitor).
    reports: mpsc::Sender<InstanceReport>,
}

/// A commit on its way, with the offsets it sends.
type Committing = (
    tokio::task::JoinHandle<Result<(), crate::queue::QueueError>>,
    Vec<(u32, u64)>,
);

/// The counters of the current report period.
pub(super) struct Period {
    start: f64,
    messages: u64,
    bytes: u64,
    rows: u64,
    rejected: u64,
    pub(super) calls: u64,
    pub(super) failures: u64,
    latencies: Latencies,
}

impl Period {
    fn new(start: f64) -> Self {
        Period {
            start,
            messages: 0,
            bytes: 0,
            rows: 0,
            rejected: 0,
            calls: 0,
            failures: 0,
            latencies: Latencies::default(),
        }
    }
}

/// A batch whose rows are written, on its way to durable, with its offsets not yet committed.
struct Uncommitted {
    /// Its last writes, then the durability barrier (and usage measurement), running in the
    /// background.
    durable: tokio::task::JoinHandle<Result<Written, crate::coredms::StoreError>>,
    offsets: Vec<(u32, u64)>,
    rejected_files: Vec<std::path::PathBuf>,
    messages: u64,
    bytes: u64,
    rejected: u64,
    failures: u64,
    timestamps: Vec<i64>,
}

/// Runs an instance until `stop`.
pub(super) async fn run(
    ctx: Arc<StreamContext>,
    tenant: TenantId,
    id: String,
    stop: CancellationToken,
    status: Arc<Mutex<InstanceStatus>>,
    reports: mpsc::Sender<InstanceReport>,
) {
    let mut task = Task {
        ctx,
        tenant,
        id,
        stop,
        status,
        consumer: None,
        plugin: None,
        prepared: None,
        lag_read_at: None,
        lag_read: None,
        committing: None,
        poll_size: 0,
        pending: VecDeque::new(),
        refused: BTreeMap::new(),
        period: Period::new(unix_now()),
        reports,
    };
    task.run().await;
}

impl Task {
    fn status(&self) -> std::sync::MutexGuard<'_, InstanceStatus> {
        self.status.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn run(&mut self) {
        let mut pause = Duration::from_millis(100);
        while !self.stop.is_cancelled() {
            let stepped = self.step().await;
            self.report(false).await;
            match stepped {
                Ok(()) => pause = Duration::from_millis(100),
                Err(Pause(reason)) => {
                    {
                        let mut status = self.status();
                        if status.note.as_deref() != Some(reason.as_str()) {
                            log::warn!("stream: tenant={} instance={} waits: {reason}", self.tenant, self.id);
                        }
                        status.state = super::InstanceState::Waiting;
                        status.note = Some(reason);
                    }
                    tokio::select! {
                        () = self.stop.cancelled() => {}
                        () = tokio::time::sleep(pause) => {}
                    }
                    pause = (pause * 2).min(Duration::from_secs(5));
                }
            }
        }
        // The last batch is stored and committed before the instance goes.
        if let Err(Pause(reason)) = self.settle().await {
            log::warn!(
                "stream: tenant={} instance={} stopping: {reason}; its last batch is delivered again",
                self.tenant,
                self.id
            );
        }
        self.report(true).await;
        // Close the plugin instance and leave the group (its partitions go to the others).
        self.plugin = None;
        self.consumer = None;
        let mut status = self.status();
        status.state = InstanceState::Stopped;
        status.partitions.clear();
    }

    /// One batch: poll, process and hand its rows to the store; its last writes and its barrier
    /// go on in the background. Then, when [`UNCOMMITTED_AHEAD`] batches are on their way, the
    /// oldest is waited for and its offsets committed. So the writes and the barrier of one
    /// batch overlap the poll and the plugin of the next, and a batch's offsets are still
    /// committed only once its rows are durable, in order.
    async fn step(&mut self) -> Result<(), Pause> {
        // The lag is read also while the instance waits (paused, no plugin).
        self.read_lag().await;
        if self.ctx.is_paused(&self.tenant) {
            self.settle().await?;
            return Err(Pause(format!(
                "paused by the stream manager: tenant {} is over its storage quota",
                self.tenant
            )));
        }
        let version = self
            .ctx
            .plugins
            .stream_plugin(&self.tenant)
            .map_err(|e| Pause(format!("no stream plugin to run: {e}")))?;
        let (storage, store) = self.store().await?;
        self.prepare(&version, &store).await?;
        let messages = self.poll().await?;
        self.read_lag().await;
        {
            let mut status = self.status();
            status.state = InstanceState::Running;
            status.note = None;
            status.plugin_version = Some(version.plugin_version().to_string());
            status.plugin_generation = Some(version.generation);
        }
        if messages.is_empty() {
            return self.settle().await;
        }
        let mut up_to: BTreeMap<u32, u64> = BTreeMap::new();
        let mut by_partition: BTreeMap<u32, Vec<QueuedMessage>> = BTreeMap::new();
        let (mut bytes, mut count, mut timestamps) = (0u64, 0u64, Vec::with_capacity(messages.len()));
        for message in messages {
            let last = up_to.entry(message.partition).or_default();
            *last = (*last).max(message.offset);
            by_partition.entry(message.partition).or_default().push(message);
        }
        let mut writes = ingest::Writes::new(self.ctx.config.writes_in_flight);
        let mut rejected_files = Vec::new();
        let mut rejected = 0;
        let mut failures = 0;
        for (partition, batch) in by_partition {
            // A partition that moved to another instance while this poll was processed (a
            // scale-out) is left to its new owner, which reads it from the committed offset.
            let owned = self.consumer.as_mut().and_then(|c| c.assignment().ok());
            if owned.is_some_and(|owned| !owned.is_empty() && !owned.contains(&partition)) {
                up_to.remove(&partition);
                continue;
            }
            bytes += batch.iter().map(|m| m.payload.len() as u64).sum::<u64>();
            count += batch.len() as u64;
            timestamps.extend(batch.iter().map(|m| m.timestamp_ms));
            match recovery::ingest_partition(self, &version, &store, &mut writes, batch).await {
                Ok(done) => {
                    rejected += done.rejected;
                    failures += done.failures;
                    rejected_files.extend(done.rejected_file);
                }
                Err(pause) => {
                    // Nothing of this poll (nor of the one before, not yet committed) is
                    // committed: their messages come again.
                    self.pending.clear();
                    self.consumer = None;
                    return Err(pause);
                }
            }
            // A poll may hold seconds of work (Kafka hands over thousands of messages at
            // once): the monitor still hears from the instance every period, between partitions.
            self.read_lag().await;
            self.report(false).await;
        }
        // The writes go on, and the barrier follows them, while the next batch is polled and
        // processed; its offsets are committed only once they are durable.
        let usage = Arc::clone(&self.ctx.usage);
        let durable = tokio::spawn(async move {
            let (written, store_error) = writes.settle().await;
            if let Some(e) = store_error {
                return Err(e);
            }
            ingest::commit(store.as_ref(), &usage, &storage, &written).await?;
            Ok(written)
        });
        while self.pending.len() >= UNCOMMITTED_AHEAD
            && let Some(oldest) = self.pending.pop_front()
        {
            self.settle_batch(oldest).await?;
        }
        self.pending.push_back(Uncommitted {
            durable,
            offsets: up_to.into_iter().collect(),
            rejected_files,
            messages: count,
            bytes,
            rejected,
            failures,
            timestamps,
        });
        Ok(())
    }

    /// Waits until every pending batch is durable, keeps their rejected messages, and commits
    /// their offsets, in order.
    async fn settle(&mut self) -> Result<(), Pause> {
        if self.pending.is_empty() {
            // Offsets refused before are sent again.
            self.commit(Vec::new()).await;
        }
        while let Some(batch) = self.pending.pop_front() {
            self.settle_batch(batch).await?;
        }
        self.finish_commit().await;
        Ok(())
    }

    /// Waits until `batch` is durable, keeps its rejected messages, and commits its offsets.
    async fn settle_batch(&mut self, batch: Uncommitted) -> Result<(), Pause> {
        let durable = match batch.durable.await {
            Ok(result) => result.map_err(|e| e.to_string()),
            Err(e) => Err(format!("the barrier task failed: {e}")),
        };
        let written = match durable {
            Ok(written) => written,
            Err(e) => {
                // This batch and the ones after it are delivered again.
                self.pending.clear();
                self.consumer = None;
                return Err(Pause(format!("storage could not store the rows durably: {e}")));
            }
        };
        self.keep_rejects(batch.rejected_files).await;
        self.commit(batch.offsets).await;
        let now_ms = (unix_now() * 1000.0) as i64;
        let latencies: Vec<f64> = batch.timestamps.iter().map(|t| (now_ms - t).max(0) as f64).collect();
        let latency = latencies.iter().sum::<f64>() / latencies.len().max(1) as f64;
        self.ctx
            .metrics
            .stream_batch(self.tenant.as_str(), &self.id, latencies.iter().map(|ms| ms / 1000.0));
        let period = &mut self.period;
        period.messages += batch.messages;
        period.bytes += batch.bytes;
        period.rows += written.rows;
        period.rejected += batch.rejected;
        for ms in latencies {
            period.latencies.add(ms);
        }
        let mut status = self.status();
        status.messages += batch.messages;
        status.bytes += batch.bytes;
        status.rows += written.rows;
        status.rejected += batch.rejected;
        status.failures += batch.failures;
        status.batches += 1;
        status.last_batch_at = Some(unix_now());
        status.last_batch_latency_ms = Some(latency);
        Ok(())
    }

    /// Commits `offsets` of a durable batch, with those refused before whose partitions are
    /// still this instance's (a partition that moved is read again by its new owner from its
    /// committed offset, and rewritten to the same keys). The commit before it is waited for
    /// first; this one goes on in the background.
    async fn commit(&mut self, offsets: Vec<(u32, u64)>) {
        self.finish_commit().await;
        self.refuse(offsets);
        if self.refused.is_empty() {
            return;
        }
        let Some(consumer) = self.consumer.as_mut() else {
            return;
        };
        // An empty assignment owns nothing, too: the membership was lost (say the broker came
        // back after the session timed out) and the consumer is joining again. A commit then
        // fails with "unknown member", and on Kafka each such failure starts the join over:
        // retried at every empty poll, it kept the group from forming for minutes.
        if let Ok(owned) = consumer.assignment() {
            self.refused.retain(|partition, _| owned.contains(partition));
        }
        if self.refused.is_empty() {
            return;
        }
        let offsets: Vec<(u32, u64)> = std::mem::take(&mut self.refused).into_iter().collect();
        let commit = tokio::spawn(consumer.commit(&offsets));
        self.committing = Some((commit, offsets));
    }

    /// Waits for the commit under way; what it could not commit is sent again with the next.
    async fn finish_commit(&mut self) {
        let Some((commit, offsets)) = self.committing.take() else {
            return;
        };
        let error = match commit.await {
            Ok(Ok(())) => return,
            Ok(Err(e)) => e.to_string(),
            Err(e) => format!("the commit task failed: {e}"),
        };
        log::warn!(
            "stream: tenant={} instance={} commit failed, sent again at the next batch boundary: {error}",
            self.tenant,
            self.id
        );
        self.refuse(offsets);
    }

    /// Adds `offsets` to those still to be committed (the highest per partition).
    fn refuse(&mut self, offsets: Vec<(u32, u64)>) {
        for (partition, offset) in offsets {
            let last = self.refused.entry(partition).or_insert(offset);
            *last = (*last).max(offset);
        }
    }

    /// Sends the period's report once the period is over (or `last`, as the instance stops):
    /// to the monitor, the tenant's `_stream.jsonl` and the metrics; the API shows it too.
    async fn report(&mut self, last: bool) {
        let now = unix_now();
        if !last && now - self.period.start < self.ctx.monitor.report_every_seconds {
            return;
        }
        let period = std::mem::replace(&mut self.period, Period::new(now));
        let over_quota = self.over_quota();
        let status = self.status().clone();
        let report = InstanceReport {
            tenant: self.tenant.clone(),
            instance: self.id.clone(),
            period_start: period.start,
            period_end: now,
            messages: period.messages,
            bytes: period.bytes,
            rows: period.rows,
            rejected: period.rejected,
            calls: period.calls,
            failures: period.failures,
            avg_latency_ms: period.latencies.mean(),
            p95_latency_ms: period.latencies.quantile(0.95),
            lag: status.lag,
            partitions: status.partitions.clone(),
            state: if last {
                "stopped".into()
            } else {
                status.state.as_str().into()
            },
            note: status.note.clone(),
            over_quota,
        };
        self.ctx.metrics.stream_report(&report);
        let reports = Arc::clone(&self.ctx.reports);
        let kept = report.clone();
        let tenant = self.tenant.clone();
        let written =
            tokio::task::spawn_blocking(move || reports.append_record(&tenant, StreamLog::Reports, &kept)).await;
        if !matches!(written, Ok(Ok(()))) {
            log::warn!(
                "stream: tenant={} instance={} cannot keep its report",
                self.tenant,
                self.id
            );
        }
        self.status().last_report = Some(report.clone());
        if self.reports.try_send(report).is_err() {
            log::warn!(
                "stream: tenant={} instance={} the monitor is behind; a report was not evaluated",
                self.tenant,
                self.id
            );
        }
    }

    /// Whether the tenant's data occupies its quota, by the ledger's last measure.
    fn over_quota(&self) -> bool {
        let tenants = self.ctx.tenants.current();
        let Some(config) = tenants.get(&self.tenant) else {
            return false;
        };
        self.ctx
            .usage
            .known(&self.tenant)
            .is_some_and(|u| u.storage_used_bytes >= config.max_memory_size)
    }

    async fn store(&mut self) -> Result<(TenantStorage, Arc<dyn TenantStore>), Pause> {
        let tenants = self.ctx.tenants.current();
        let config = tenants
            .get(&self.tenant)
            .ok_or_else(|| Pause(format!("tenant {} is not configured", self.tenant)))?;
        let storage = TenantStorage::of(&self.tenant, config);
        let store = self
            .ctx
            .dms
            .open_tenant(&storage)
            .await
            .map_err(|e| Pause(format!("storage unavailable: {e}")))?;
        Ok((storage, store))
    }

    /// The version's tables exist in the store (once per version).
    async fn prepare(&mut self, version: &PluginVersion, store: &Arc<dyn TenantStore>) -> Result<(), Pause> {
        if self.prepared == Some(version.generation) {
            return Ok(());
        }
        for table in &version.manifest.tables {
            store
                .ensure_table(table)
                .await
                .map_err(|e| Pause(format!("cannot prepare table {}: {e}", table.name)))?;
        }
        self.prepared = Some(version.generation);
        Ok(())
    }

    /// A batch: at most `batch_messages`, gathered for at most `batch_wait_ms` after the first
    /// poll began. A stop during the wait ends it with what has come.
    async fn poll(&mut self) -> Result<Vec<QueuedMessage>, Pause> {
        if self.consumer.is_none() {
            let consumer = self
                .ctx
                .queue
                .consumer(&self.tenant, GROUP)
                .await
                .map_err(|e| Pause(format!("the queue is unavailable: {e}")))?;
            self.consumer = Some(consumer);
        }
        let consumer = self.consumer.as_mut().expect("just made");
        let base = self.ctx.config.batch_messages.max(1);
        let max = self.poll_size.clamp(base, base * BACKLOG_GROWTH);
        let deadline = Instant::now() + self.ctx.config.batch_wait();
        let mut messages = Vec::new();
        let mut backlog = false;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let polled = tokio::select! {
                () = self.stop.cancelled() => break,
                polled = consumer.poll(max - messages.len(), left) => polled,
            };
            match polled {
                Ok(batch) => {
                    let got = batch.len();
                    let first = messages.is_empty();
                    messages.extend(batch);
                    if first && got >= base {
                        // A whole batch at once: the messages were waiting. What came is taken
                        // as it is (a read ahead sized for the last poll may hold less than
                        // this one asks; the next read ahead has this poll's size).
                        backlog = true;
                        break;
                    }
                    if got == 0 || messages.len() >= max || Instant::now() >= deadline {
                        break;
                    }
                }
                Err(e) if messages.is_empty() => {
                    self.consumer = None;
                    return Err(Pause(format!("the queue is unavailable: {e}")));
                }
                Err(_) => break,
            }
        }
        self.poll_size = if backlog { max * 2 } else { base };
        if let Some(consumer) = self.consumer.as_mut()
            && let Ok(partitions) = consumer.assignment()
        {
            self.status().partitions = partitions;
        }
        Ok(messages)
    }

    /// Takes the figure of a lag read that ended, and starts the next once [`LAG_EVERY`] has
    /// passed: the read (several round trips to a broker) never holds up a batch.
    async fn read_lag(&mut self) {
        if let Some(read) = self.lag_read.take_if(|read| read.is_finished())
            && let Ok(Ok(lag)) = read.await
        {
            self.status().lag = Some(lag);
        }
        if self.lag_read.is_some() || self.lag_read_at.is_some_and(|at| at.elapsed() < LAG_EVERY) {
            return;
        }
        if let Some(consumer) = self.consumer.as_mut() {
            self.lag_read_at = Some(Instant::now());
            self.lag_read = Some(tokio::spawn(consumer.lag()));
        }
    }

    /// Appends the batch's rejected messages to the tenant's log.
    async fn keep_rejects(&mut self, files: Vec<std::path::PathBuf>) {
        if files.is_empty() {
            return;
        }
        let reports = Arc::clone(&self.ctx.reports);
        let tenant = self.tenant.clone();
        let kept = tokio::task::spawn_blocking(move || {
            for file in files {
                if let Err(e) = reports.record_stream_rejects(&tenant, &file) {
                    log::error!("stream: tenant={tenant} cannot keep rejected messages: {e}");
                }
                let _ = std::fs::remove_file(file);
            }
        })
        .await;
        if let Err(e) = kept {
            log::error!("stream: tenant={} cannot keep rejected messages: {e}", self.tenant);
        }
    }

    /// The plugin instance on `version`: the one open if it runs on it, else a new one.
    pub(super) async fn instance(&mut self, version: &Arc<PluginVersion>) -> Result<&Instance, String> {
        let current = self
            .plugin
            .as_ref()
            .is_some_and(|i| i.version().generation == version.generation);
        if !current {
            if let Some(old) = self.plugin.take() {
                log::info!(
                    "stream: tenant={} instance={} moves from plugin generation {} to {}",
                    self.tenant,
                    self.id,
                    old.version().generation,
                    version.generation
                );
            }
            let opened = version
                .open_instance(&format!("{}/{}", self.tenant, self.id), self.ctx.config.batch_rows)
                .await
                .map_err(|e| format!("the plugin did not open an instance: {}", e.message))?;
            self.plugin = Some(opened);
        }
        Ok(self.plugin.as_ref().expect("just opened"))
    }
}
