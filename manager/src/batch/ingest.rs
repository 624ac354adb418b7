//! Ingesting one staged file: the tenant's plugin reads it on a thread of its version, and its
//! rows go through the shared ingestion path ([`crate::ingest`]) into the tenant's store. Then
//! the barrier, the report, and only then the staging file is removed (or set aside).

use std::sync::Arc;
use std::time::Duration;

use super::BatchContext;
use crate::coredms::{TenantStorage, TenantStore};
use crate::crash::crash_point;
use crate::durable::unix_now;
use crate::ingest::{self, Drained, Rejects};
use crate::plugin_host::{CallOutcome, FileCall, PluginId, PluginVersion};
use crate::report::{FileOutcome, FileReport, StageTimes};
use crate::source::Source;
use crate::staging::{FAILED_DIR, STAGING_DIR, StagedFile, UploadMeta};
use crate::telemetry::FileIngested;

/// How an attempt ended.
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

/// One attempt at a file, with what it works with.
struct Attempt<'a> {
    ctx: &'a BatchContext,
    file: &'a StagedFile,
    meta: UploadMeta,
    version: Arc<PluginVersion>,
    storage: TenantStorage,
    store: Arc<dyn TenantStore>,
    started: f64,
    /// When the tables were ready and the plugin was called (`None` if it never was).
    called: Option<f64>,
}

/// Ingests `file` once.
pub(super) async fn ingest(ctx: &BatchContext, file: &StagedFile) -> Outcome {
    if !file.path.exists() {
        ctx.tracker.finished(&file.tenant, file.id);
        log::warn!("staged file {} disappeared before ingestion", file.path.display());
        return Outcome::Finished;
    }
    if let Some(report) = ctx.reports.report(&file.tenant, file.id) {
        // Reported before a crash that came before the file left staging: it is finished, and
        // redoing it would report it twice.
        log::info!(
            "tenant={} file={} was reported before a restart; it leaves staging",
            file.tenant,
            file.id
        );
        leave_staging(ctx, file, report.status).await;
        return Outcome::Finished;
    }
    let tenants = ctx.tenants.current();
    let Some(tenant) = tenants.get(&file.tenant) else {
        return wait(
            format!("tenant {} is not in customer_information.json", file.tenant),
            Duration::from_secs(5),
        );
    };
    let version = match ctx.plugins.batch_plugin(&file.tenant, &file.file_type) {
        Ok(version) => version,
        Err(unavailable) => return wait(format!("waiting for a plugin: {unavailable}"), Duration::from_secs(2)),
    };
    let storage = TenantStorage::of(&file.tenant, tenant);
    let store = match ctx.dms.open_tenant(&storage).await {
        Ok(store) => store,
        Err(e) => return wait(format!("storage unavailable: {e}"), ctx.config.retry_delay()),
    };
    let staging = Arc::clone(&ctx.staging);
    let staged = file.clone();
    let Ok(meta) = tokio::task::spawn_blocking(move || staging.begin_attempt(&staged)).await else {
        return wait(
            "the platform failed while reading the file's metadata",
            ctx.config.retry_delay(),
        );
    };
    ctx.tracker
        .set_state(&file.tenant, file.id, super::FileState::Ingesting, None);
    let mut attempt = Attempt {
        ctx,
        file,
        meta,
        version,
        storage,
        store,
        started: unix_now(),
        called: None,
    };

    let tables = Arc::clone(&attempt.version);
    for table in &tables.manifest.tables {
        if let Err(e) = attempt.store.ensure_table(table).await {
            if e.is_transient() {
                return wait(format!("storage unavailable: {e}"), ctx.config.retry_delay());
            }
            let failed = attempt.not_run(format!("cannot prepare table {}: {e}", table.name));
            let rejects = attempt.rejects();
            return attempt.finish(failed, rejects).await;
        }
    }

    let mut rejects = attempt.rejects();
    attempt.called = Some(unix_now());
    let drained = attempt.run(&mut rejects).await;
    if ctx.cancel.is_cancelled() {
        return wait("the platform is shutting down", Duration::ZERO);
    }
    if let Some(e) = drained.store_error.as_ref().filter(|e| e.is_transient()) {
        return wait(
            format!("storage failed mid-file, the file will be redone: {e}"),
            ctx.config.retry_delay(),
        );
    }
    attempt.finish(drained, rejects).await
}

impl Attempt<'_> {
    fn rejects(&self) -> Rejects {
        Rejects::new(
            Source::File(self.file.id),
            self.ctx.rejected_tmp_dir.join(format!("{}.jsonl", self.file.name())),
            self.ctx.reports.config().rejected_rows_kept_per_file,
        )
    }

    /// The plugin reads the file; its rows go to the store.
    async fn run(&self, rejects: &mut Rejects) -> Drained {
        let (ctx, file) = (self.ctx, self.file);
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
                .version
                .ingest_file(call, Box::new(input), ctx.config.channel_batches, ctx.cancel.clone())
            {
                Ok(stream) => stream,
                Err(refused) => return self.not_run(refused.to_string()),
            };
        ingest::drain(stream, &self.store, ctx.config.writes_in_flight_per_file, rejects).await
    }

    fn not_run(&self, message: String) -> Drained {
        Drained {
            written: Default::default(),
            store_error: None,
            plugin: CallOutcome::not_run(message),
        }
    }

    /// The barrier, the report, then the staging file leaves.
    async fn finish(self, drained: Drained, rejects: Rejects) -> Outcome {
        let (ctx, file) = (self.ctx, self.file);
        let written_at = unix_now();
        let error = match (&drained.store_error, &drained.plugin.result) {
            (Some(e), _) => Some(format!("storage failed: {e}")),
            (None, Err(e)) => Some(format!(
                "plugin {} (version {}) failed: {}",
                self.version.id,
                self.version.plugin_version(),
                e.message
            )),
            (None, Ok(())) => None,
        };
        if drained.written.rows > 0
            && let Err(e) = ingest::commit(self.store.as_ref(), &ctx.usage, &self.storage).await
        {
            // Not known to be durable: no report, the file is redone.
            return wait(
                format!("storage could not make the rows durable, the file will be redone: {e}"),
                ctx.config.retry_delay(),
            );
        }
        crash_point("batch.after_barrier");
        let ended = unix_now();
        let (rejected_path, rejected_kept, rejected_total) = rejects.close().await;
        let mut report = self.report(&drained, rejected_total, error, ended).await;
        // A file that failed before the plugin ran has no stages to tell.
        report.stages = self.called.map(|called| StageTimes {
            prepare: called - self.started,
            plugin_and_writes: written_at - called,
            barrier: ended - written_at,
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
        let (ctx, file, meta) = (self.ctx, self.file, &self.meta);
        let path = file.path.clone();
        let file_size = tokio::task::spawn_blocking(move || std::fs::metadata(path).map(|m| m.len()))
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or(meta.file_received_size);
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
            plugin_version: Some(self.version.plugin_version().to_string()),
            plugin_generation: Some(self.version.generation),
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
