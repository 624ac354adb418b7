//! Ingesting staged files: a group of a tenant's files of one type (one file, or several small
//! ones queued together) shares one plugin version, one store and one barrier. Each file's
//! plugin call reads it on a thread of its version, and its rows go through the shared
//! ingestion path ([`crate::ingest`]) into the tenant's store. Then the barrier, each file's
//! report, and only then each staging file is removed (or set aside). A file's outcome is its
//! own: one that fails or must wait does not hold back the others of its group.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesOrdered;

use super::BatchContext;
use crate::coredms::{TenantStorage, TenantStore, Written};
use crate::crash::crash_point;
use crate::durable::unix_now;
use crate::ingest::{self, Drained, Rejects};
use crate::plugin_host::{CallOutcome, FileCall, PluginId, PluginVersion};
use crate::report::{FileOutcome, FileReport, StageTimes};
use crate::source::Source;
use crate::staging::{FAILED_DIR, STAGING_DIR, StagedFile, UploadMeta};
use crate::telemetry::FileIngested;

/// Files of a group whose plugin calls run at once (their writes then share transactions).
const CALLS_AT_ONCE: usize = 8;

/// How an attempt at a file ended.
#[derive(Debug, Clone)]
pub(super) enum Outcome {
    /// Reported (done or failed); the file left staging.
    Finished,
    /// Not started or interrupted without a report: try again after `delay`.
    Wait { reason: String, delay: Duration },
}

fn wait(reason: impl Into<String>, delay: Duration) -> Outcome {
    Outcome::Wait {
        reason: reason.into(),
        delay,
    }
}

/// What the files of a group share.
struct Group<'a> {
    ctx: &'a BatchContext,
    version: Arc<PluginVersion>,
    storage: TenantStorage,
    store: Arc<dyn TenantStore>,
}

/// One attempt at a file, with what it works with.
struct Attempt<'a> {
    group: &'a Group<'a>,
    file: &'a StagedFile,
    meta: UploadMeta,
    started: f64,
    /// When the tables were ready and the plugin was called (`None` if it never was).
    called: Option<f64>,
    /// When the plugin call ended and its writes were done.
    written: Option<f64>,
}

/// Ingests `files` (one tenant, one type) once; their outcomes, in order.
pub(super) async fn ingest(ctx: &BatchContext, files: &[StagedFile]) -> Vec<Outcome> {
    let mut outcomes: Vec<Option<Outcome>> = vec![None; files.len()];
    let mut pending = Vec::new();
    for (i, file) in files.iter().enumerate() {
        match finished_before(ctx, file).await {
            Some(outcome) => outcomes[i] = Some(outcome),
            None => pending.push(i),
        }
    }
    if let Some(&first) = pending.first() {
        let done = match Group::open(ctx, &files[first]).await {
            Ok(group) => group.ingest(files, &pending).await,
            Err(outcome) => vec![outcome; pending.len()],
        };
        for (i, outcome) in pending.into_iter().zip(done) {
            outcomes[i] = Some(outcome);
        }
    }
    settled(outcomes)
}

/// Every file's outcome, filled in slot by slot (a slot left empty would be a bug: that file
/// waits and is tried again).
fn settled(outcomes: Vec<Option<Outcome>>) -> Vec<Outcome> {
    outcomes
        .into_iter()
        .map(|o| o.unwrap_or_else(|| wait("the platform lost track of this file", Duration::from_secs(5))))
        .collect()
}

/// `Some` if `file` needs no attempt: it disappeared, or it was reported before a restart.
async fn finished_before(ctx: &BatchContext, file: &StagedFile) -> Option<Outcome> {
    if !file.path.exists() {
        ctx.tracker.finished(&file.tenant, file.id);
        log::warn!("staged file {} disappeared before ingestion", file.path.display());
        return Some(Outcome::Finished);
    }
    let report = ctx.reports.report(&file.tenant, file.id)?;
    // Reported before a crash that came before the file left staging: it is finished, and
    // redoing it would report it twice.
    log::info!(
        "tenant={} file={} was reported before a restart; it leaves staging",
        file.tenant,
        file.id
    );
    leave_staging(ctx, file, report.status).await;
    Some(Outcome::Finished)
}

impl<'a> Group<'a> {
    /// The tenant's plugin version and store for `file`'s kind, or why the group must wait.
    async fn open(ctx: &'a BatchContext, file: &StagedFile) -> Result<Self, Outcome> {
        let tenants = ctx.tenants.current();
        let Some(tenant) = tenants.get(&file.tenant) else {
            return Err(wait(
                format!("tenant {} is not in customer_information.json", file.tenant),
                Duration::from_secs(5),
            ));
        };
        let version = ctx
            .plugins
            .batch_plugin(&file.tenant, &file.file_type)
            .map_err(|unavailable| wait(format!("waiting for a plugin: {unavailable}"), Duration::from_secs(2)))?;
        let storage = TenantStorage::of(&file.tenant, tenant);
        let store = ctx
            .dms
            .open_tenant(&storage)
            .await
            .map_err(|e| wait(format!("storage unavailable: {e}"), ctx.config.retry_delay()))?;
        Ok(Group {
            ctx,
            version,
            storage,
            store,
        })
    }

    /// The files at `indexes` of `files`: their tables, their plugin calls (a few at once), one
    /// barrier for all their rows, then their reports.
    async fn ingest(&self, files: &[StagedFile], indexes: &[usize]) -> Vec<Outcome> {
        let ctx = self.ctx;
        let attempts = futures_util::future::join_all(indexes.iter().map(|&i| Attempt::begin(self, &files[i]))).await;
        let mut outcomes: Vec<Option<Outcome>> = vec![None; attempts.len()];
        let mut begun = Vec::new();
        for (slot, attempt) in attempts.into_iter().enumerate() {
            match attempt {
                Ok(attempt) => begun.push((slot, attempt)),
                Err(outcome) => outcomes[slot] = Some(outcome),
            }
        }

        let mut ran = Vec::with_capacity(begun.len());
        match self.ensure_tables().await {
            Err(outcome) => {
                for (slot, _) in begun {
                    outcomes[slot] = Some(outcome.clone());
                }
            }
            Ok(Err(not_prepared)) => {
                for (slot, attempt) in begun {
                    let drained = attempt.not_run(not_prepared.clone());
                    let rejects = attempt.rejects();
                    ran.push((slot, attempt, drained, rejects));
                }
            }
            Ok(Ok(())) => {
                let mut begun = begun.into_iter();
                let mut calls = FuturesOrdered::new();
                loop {
                    while calls.len() < CALLS_AT_ONCE
                        && let Some((slot, attempt)) = begun.next()
                    {
                        calls.push_back(attempt.call(slot));
                    }
                    match calls.next().await {
                        Some(done) => ran.push(done),
                        None => break,
                    }
                }
            }
        }

        let mut finishing = Vec::with_capacity(ran.len());
        for (slot, attempt, drained, rejects) in ran {
            if ctx.cancel.is_cancelled() {
                outcomes[slot] = Some(wait("the platform is shutting down", Duration::ZERO));
            } else if let Some(e) = drained.store_error.as_ref().filter(|e| e.is_transient()) {
                outcomes[slot] = Some(wait(
                    format!("storage failed mid-file, the file will be redone: {e}"),
                    ctx.config.retry_delay(),
                ));
            } else {
                finishing.push((slot, attempt, drained, rejects));
            }
        }
        let written = finishing
            .iter()
            .fold(Written::default(), |sum, (_, _, drained, _)| Written {
                rows: sum.rows + drained.written.rows,
                bytes: sum.bytes + drained.written.bytes,
            });
        if written.rows > 0
            && let Err(e) = ingest::commit(self.store.as_ref(), &ctx.usage, &self.storage, &written).await
        {
            // Not known to be durable: no report, the files are redone.
            let outcome = wait(
                format!("storage could not make the rows durable, the file will be redone: {e}"),
                ctx.config.retry_delay(),
            );
            for (slot, ..) in finishing {
                outcomes[slot] = Some(outcome.clone());
            }
        } else {
            crash_point("batch.after_barrier");
            let ended = unix_now();
            let together = finishing.len() as u32;
            let (slots, reports): (Vec<usize>, Vec<_>) = finishing
                .into_iter()
                .map(|(slot, attempt, drained, rejects)| (slot, attempt.finish(drained, rejects, ended, together)))
                .unzip();
            let reported = futures_util::future::join_all(reports).await;
            for (slot, outcome) in slots.into_iter().zip(reported) {
                outcomes[slot] = Some(outcome);
            }
        }
        settled(outcomes)
    }

    /// The version's tables made ready: `Err` if the group must wait (storage down), `Ok(Err)`
    /// with why the tables cannot be made ready (every file of the group fails with it).
    async fn ensure_tables(&self) -> Result<Result<(), String>, Outcome> {
        for table in &self.version.manifest.tables {
            if let Err(e) = self.store.ensure_table(table).await {
                if e.is_transient() {
                    return Err(wait(format!("storage unavailable: {e}"), self.ctx.config.retry_delay()));
                }
                return Ok(Err(format!("cannot prepare table {}: {e}", table.name)));
            }
        }
        Ok(Ok(()))
    }
}

impl<'a> Attempt<'a> {
    /// Counts the attempt in the file's metadata and marks the file as ingesting.
    async fn begin(group: &'a Group<'a>, file: &'a StagedFile) -> Result<Self, Outcome> {
        let ctx = group.ctx;
        let staging = Arc::clone(&ctx.staging);
        let staged = file.clone();
        let Ok(meta) = tokio::task::spawn_blocking(move || staging.begin_attempt(&staged)).await else {
            return Err(wait(
                "the platform failed while reading the file's metadata",
                ctx.config.retry_delay(),
            ));
        };
        ctx.tracker
            .set_state(&file.tenant, file.id, super::FileState::Ingesting, None);
        Ok(Attempt {
            group,
            file,
            meta,
            started: unix_now(),
            called: None,
            written: None,
        })
    }

    /// Calls the plugin on the file: what its rows did to storage, and its rejects.
    async fn call(mut self, slot: usize) -> (usize, Self, Drained, Rejects) {
        let mut rejects = self.rejects();
        self.called = Some(unix_now());
        let drained = self.run(&mut rejects).await;
        self.written = Some(unix_now());
        (slot, self, drained, rejects)
    }

    fn rejects(&self) -> Rejects {
        Rejects::new(
            Source::File(self.file.id),
            self.group
                .ctx
                .rejected_tmp_dir
                .join(format!("{}.jsonl", self.file.name())),
            self.group.ctx.reports.config().rejected_rows_kept_per_file,
        )
    }

    /// The plugin reads the file; its rows go to the store.
    async fn run(&self, rejects: &mut Rejects) -> Drained {
        let (ctx, file) = (self.group.ctx, self.file);
        let call = FileCall {
            file_id: file.id.to_string(),
            file_name: self.meta.client_file_name.clone(),
            file_type: file.file_type.to_string(),
            file_size: self.meta.file_received_size,
            batch_rows: ctx.config.batch_rows,
        };
        let path = file.path.clone();
        let opened = tokio::task::spawn_blocking(move || std::fs::File::open(&path)).await;
        let input = match opened {
            Ok(Ok(f)) => std::io::BufReader::with_capacity(256 << 10, f),
            Ok(Err(e)) => return self.not_run(format!("cannot open {}: {e}", file.path.display())),
            Err(e) => return self.not_run(format!("cannot open {}: {e}", file.path.display())),
        };
        let stream =
            match self
                .group
                .version
                .ingest_file(call, Box::new(input), ctx.config.channel_batches, ctx.cancel.clone())
            {
                Ok(stream) => stream,
                Err(refused) => return self.not_run(refused.to_string()),
            };
        ingest::drain(stream, &self.group.store, ctx.config.writes_in_flight_per_file, rejects).await
    }

    fn not_run(&self, message: String) -> Drained {
        Drained {
            written: Default::default(),
            store_error: None,
            plugin: CallOutcome::not_run(message),
        }
    }

    /// The report (once the group's barrier made the rows durable), then the staging file
    /// leaves.
    async fn finish(self, drained: Drained, rejects: Rejects, ended: f64, group_files: u32) -> Outcome {
        let (ctx, file, version) = (self.group.ctx, self.file, &self.group.version);
        let error = match (&drained.store_error, &drained.plugin.result) {
            (Some(e), _) => Some(format!("storage failed: {e}")),
            (None, Err(e)) => Some(format!(
                "plugin {} (version {}) failed: {}",
                version.id,
                version.plugin_version(),
                e.message
            )),
            (None, Ok(())) => None,
        };
        let (rejected_path, rejected_kept, rejected_total) = rejects.close().await;
        let mut report = self.report(&drained, rejected_total, error, ended).await;
        // A file that failed before the plugin ran has no stages to tell.
        report.stages = self.called.zip(self.written).map(|(called, written)| StageTimes {
            prepare: called - self.started,
            plugin_and_writes: written - called,
            barrier: ended - written,
            group_files,
        });
        let reports = Arc::clone(&ctx.reports);
        let tenant = file.tenant.clone();
        let recorded = tokio::task::spawn_blocking(move || {
            let rejected = rejected_path.as_deref().map(|p| (p, rejected_kept));
            let result = reports.record(&tenant, report, rejected);
            if let Some(path) = rejected_path {
                let _ = std::fs::remove_file(path);
            }
            result
        })
        .await;
        let report = match recorded {
            Ok(Ok(report)) => report,
            Ok(Err(e)) => return wait(format!("cannot write the report: {e}"), ctx.config.retry_delay()),
            Err(e) => return wait(format!("cannot write the report: {e}"), ctx.config.retry_delay()),
        };
        crash_point("batch.after_report");
        leave_staging(ctx, file, report.status).await;
        FileIngested { report: &report }.emit(&ctx.metrics);
        Outcome::Finished
    }

    async fn report(&self, drained: &Drained, rows_failed: u64, error: Option<String>, ended: f64) -> FileReport {
        let (ctx, file, meta) = (self.group.ctx, self.file, &self.meta);
        // A staged file is complete: its size is the one it had when it was found.
        let file_size = file.size;
        let ingest_time = (ended - self.started).max(1e-9);
        let rows = drained.written.rows;
        FileReport {
            file_received_size: meta.file_received_size,
            file_name: file.name(),
            // Where the file is once the report is written: a failed file is set aside.
            file_path: match error {
                Some(_) => format!("{STAGING_DIR}/{FAILED_DIR}/{}", file.name()),
                None => format!("{STAGING_DIR}/{}", file.name()),
            },
            ingest_start_time: self.started,
            ingest_end_time: ended,
            ingest_time,
            rows_total: rows + rows_failed,
            rows_ingested: rows,
            rows_failed,
            file_size,
            ingest_rate_bs: file_size as f64 / ingest_time,
            ingest_rate_rs: rows as f64 / ingest_time,
            manager_process_time: (self.started - meta.staged_at).max(0.0),
            total_process_time: (ended - meta.request_started_at).max(0.0),
            status: if error.is_some() {
                FileOutcome::Failed
            } else {
                FileOutcome::Done
            },
            error,
            file_id: file.id.to_string(),
            tenant: file.tenant.to_string(),
            file_type: file.file_type.to_string(),
            client_file_name: meta.client_file_name.clone(),
            plugin: PluginId::batch(file.tenant.clone(), file.file_type.clone()).to_string(),
            plugin_version: Some(self.group.version.plugin_version().to_string()),
            plugin_generation: Some(self.group.version.generation),
            plugin_cpu_seconds: drained.plugin.cpu_ns as f64 / 1e9,
            bytes_written: drained.written.bytes,
            backend: ctx.dms.backend().to_string(),
            attempts: meta.attempts,
            rejected: None,
            stages: None,
        }
    }
}

/// A reported file leaves staging: removed when done, set aside when it failed; then it is no
/// longer in flight.
async fn leave_staging(ctx: &BatchContext, file: &StagedFile, outcome: FileOutcome) {
    let staging = Arc::clone(&ctx.staging);
    let staged = file.clone();
    let cleanup = tokio::task::spawn_blocking(move || match outcome {
        FileOutcome::Done => staging.remove(&staged).map(|()| None),
        FileOutcome::Failed => staging.set_aside(&staged).map(Some),
    })
    .await
    .unwrap_or_else(|e| Err(std::io::Error::other(e)));
    match cleanup {
        Ok(Some(kept)) => log::warn!(
            "tenant={} file={} failed; the file is kept at {}",
            file.tenant,
            file.id,
            kept.display()
        ),
        Ok(None) => {}
        Err(e) => log::error!(
            "tenant={} file={}: cannot clear {} from staging: {e}",
            file.tenant,
            file.id,
            file.path.display()
        ),
    }
    ctx.tracker.finished(&file.tenant, file.id);
}
