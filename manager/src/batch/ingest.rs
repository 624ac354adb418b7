//! Ingesting one staged file: the tenant's plugin reads it on a thread of its version and hands
//! row batches through a bounded channel to this task, which writes them to coredms with a few
//! writes in flight. A full channel blocks the plugin: memory stays bounded whatever the file
//! size. Then the report is written, and only then the staging file removed.

use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use abi_stable::std_types::RString;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use plugin_api::ffi::{FileInfo, RowBatch};
use tokio::sync::mpsc;

use super::BatchContext;
use crate::coredms::{StoreError, TableSchema, TenantStorage, TenantStore, Written};
use crate::plugin_host::loader::thread_cpu_ns;
use crate::plugin_host::rows::{HostBatch, RejectedRecord, convert_batch};
use crate::plugin_host::{CallError, PluginId, PluginVersion};
use crate::report::{FileOutcome, FileReport, RejectedRow};
use crate::staging::{FAILED_DIR, STAGING_DIR, StagedFile, UploadMeta, unix_now};
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

/// What the plugin and the writes did.
struct Pipeline {
    written: Written,
    rejected: RejectedFile,
    plugin: Result<(), CallError>,
    store_error: Option<StoreError>,
    cancelled: bool,
    cpu_ns: u64,
}

/// Ingests `file` once.
pub(super) async fn ingest(ctx: &BatchContext, file: &StagedFile) -> Outcome {
    if !file.path.exists() {
        ctx.tracker.finished(&file.tenant, file.id);
        log::warn!("staged file {} disappeared before ingestion", file.path.display());
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
    let attempts = ctx.staging.bump_attempts(file);
    ctx.tracker
        .set_state(&file.tenant, file.id, super::FileState::Ingesting, None);
    let meta = ctx.staging.meta(file);
    let started = unix_now();

    for table in &version.manifest.tables {
        if let Err(e) = store.ensure_table(table).await {
            if e.is_transient() {
                return wait(format!("storage unavailable: {e}"), ctx.config.retry_delay());
            }
            let error = format!("cannot prepare table {}: {e}", table.name);
            let pipeline = Pipeline::empty(
                ctx,
                file,
                Err(CallError {
                    kind: plugin_api::ErrorKind::Internal,
                    message: error,
                }),
            );
            return finish(
                ctx,
                file,
                &meta,
                &version,
                &storage,
                store.as_ref(),
                pipeline,
                started,
                attempts,
            )
            .await;
        }
    }

    let pipeline = run_pipeline(ctx, file, &version, Arc::clone(&store)).await;
    if pipeline.cancelled {
        return wait("the platform is shutting down", Duration::ZERO);
    }
    if let Some(e) = pipeline.store_error.as_ref().filter(|e| e.is_transient()) {
        return wait(
            format!("storage failed mid-file, the file will be redone: {e}"),
            ctx.config.retry_delay(),
        );
    }
    finish(
        ctx,
        file,
        &meta,
        &version,
        &storage,
        store.as_ref(),
        pipeline,
        started,
        attempts,
    )
    .await
}

impl Pipeline {
    fn empty(ctx: &BatchContext, file: &StagedFile, plugin: Result<(), CallError>) -> Self {
        Pipeline {
            written: Written::default(),
            rejected: RejectedFile::new(ctx, file),
            plugin,
            store_error: None,
            cancelled: false,
            cpu_ns: 0,
        }
    }
}

async fn run_pipeline(
    ctx: &BatchContext,
    file: &StagedFile,
    version: &Arc<PluginVersion>,
    store: Arc<dyn TenantStore>,
) -> Pipeline {
    let (batches, mut received) = mpsc::channel::<HostBatch>(ctx.config.channel_batches.max(1));
    let tables: Vec<Arc<TableSchema>> = version.manifest.tables.iter().cloned().map(Arc::new).collect();
    let info = FileInfo {
        file_id: RString::from(file.id.to_string()),
        file_name: RString::from(ctx.staging.meta(file).client_file_name),
        file_type: RString::from(file.file_type.as_str()),
        file_size: std::fs::metadata(&file.path).map_or(0, |m| m.len()),
        batch_rows: ctx.config.batch_rows,
    };
    let path = file.path.clone();
    let cancel = ctx.cancel.clone();
    let call = version.spawn_call("file", move |library| {
        let cpu_started = thread_cpu_ns();
        let result = File::open(&path)
            .map_err(|e| CallError {
                kind: plugin_api::ErrorKind::Internal,
                message: format!("cannot open {}: {e}", path.display()),
            })
            .and_then(|f| {
                let mut reader = BufReader::with_capacity(256 << 10, f);
                let mut sink = |batch: &RowBatch| {
                    if cancel.is_cancelled() {
                        return Err("the platform is shutting down".to_string());
                    }
                    let host = convert_batch(batch, &tables)?;
                    batches
                        .blocking_send(host)
                        .map_err(|_| "the platform stopped this file (storage failed)".to_string())
                };
                library.ingest_file(&info, &mut reader, &mut sink)
            });
        (result, thread_cpu_ns().saturating_sub(cpu_started))
    });
    let call = match call {
        Ok(call) => call,
        Err(refused) => {
            return Pipeline::empty(
                ctx,
                file,
                Err(CallError {
                    kind: plugin_api::ErrorKind::Internal,
                    message: refused.to_string(),
                }),
            );
        }
    };

    let mut pipeline = Pipeline::empty(ctx, file, Ok(()));
    let mut writes = FuturesUnordered::new();
    while let Some(batch) = received.recv().await {
        pipeline.rejected.add(batch.rejected);
        if batch.rows.is_empty() {
            continue;
        }
        while writes.len() >= ctx.config.writes_in_flight_per_file.max(1) {
            if let Some(result) = writes.next().await {
                pipeline.absorb(result);
            }
        }
        if pipeline.store_error.is_some() {
            break;
        }
        let store = Arc::clone(&store);
        writes.push(async move { store.write(batch.rows).await });
    }
    // Stop the plugin if storage failed (its next hand-over returns an error), then settle.
    drop(received);
    while let Some(result) = writes.next().await {
        pipeline.absorb(result);
    }
    let (result, cpu_ns) = call.await.unwrap_or_else(|_| {
        (
            Err(CallError {
                kind: plugin_api::ErrorKind::Internal,
                message: "the plugin thread ended without an answer".into(),
            }),
            0,
        )
    });
    pipeline.cpu_ns = cpu_ns;
    pipeline.cancelled = ctx.cancel.is_cancelled();
    if let Err(e) = &result
        && pipeline.store_error.is_none()
    {
        version.record_outcome(Err(e));
    } else if result.is_ok() {
        version.record_outcome(Ok(()));
    }
    pipeline.plugin = result;
    pipeline
}

impl Pipeline {
    fn absorb(&mut self, result: Result<Written, StoreError>) {
        match result {
            Ok(written) => {
                self.written.rows += written.rows;
                self.written.bytes += written.bytes;
            }
            Err(e) => {
                self.store_error.get_or_insert(e);
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn finish(
    ctx: &BatchContext,
    file: &StagedFile,
    meta: &UploadMeta,
    version: &Arc<PluginVersion>,
    storage: &TenantStorage,
    store: &dyn TenantStore,
    pipeline: Pipeline,
    started: f64,
    attempts: u32,
) -> Outcome {
    let error = match (&pipeline.store_error, &pipeline.plugin) {
        (Some(e), _) => Some(format!("storage failed: {e}")),
        (None, Err(e)) => Some(format!(
            "plugin {} (version {}) failed: {}",
            version.id,
            version.plugin_version(),
            e.message
        )),
        (None, Ok(())) => None,
    };
    if pipeline.written.rows > 0 {
        if let Err(e) = store.flush().await {
            // Not known to be durable: no report, the file is redone.
            return wait(
                format!("storage could not make the rows durable, the file will be redone: {e}"),
                ctx.config.retry_delay(),
            );
        }
        ctx.usage.changed(storage.clone());
    }
    let ended = unix_now();
    let report = build_report(ctx, file, meta, version, &pipeline, error, started, ended, attempts);
    let reports = Arc::clone(&ctx.reports);
    let tenant = file.tenant.clone();
    let (rejected_path, rejected_kept) = pipeline.rejected.close();
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
    let cleanup = match report.status {
        FileOutcome::Done => ctx.staging.remove(file).map(|()| None),
        FileOutcome::Failed => ctx.staging.set_aside(file).map(Some),
    };
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
    FileIngested { report: &report }.emit(&ctx.metrics);
    Outcome::Finished
}

#[allow(clippy::too_many_arguments)]
fn build_report(
    ctx: &BatchContext,
    file: &StagedFile,
    meta: &UploadMeta,
    version: &PluginVersion,
    pipeline: &Pipeline,
    error: Option<String>,
    started: f64,
    ended: f64,
    attempts: u32,
) -> FileReport {
    let file_size = std::fs::metadata(&file.path).map_or(meta.file_received_size, |m| m.len());
    let ingest_time = (ended - started).max(1e-9);
    let rows_failed = pipeline.rejected.total;
    FileReport {
        file_received_size: meta.file_received_size,
        file_name: file.name(),
        // Where the file is once the report is written: a failed file is set aside.
        file_path: match error {
            Some(_) => format!("{STAGING_DIR}/{FAILED_DIR}/{}", file.name()),
            None => format!("{STAGING_DIR}/{}", file.name()),
        },
        ingest_start_time: started,
        ingest_end_time: ended,
        ingest_time,
        rows_total: pipeline.written.rows + rows_failed,
        rows_ingested: pipeline.written.rows,
        rows_failed,
        file_size,
        ingest_rate_bs: file_size as f64 / ingest_time,
        ingest_rate_rs: pipeline.written.rows as f64 / ingest_time,
        manager_process_time: (started - meta.staged_at).max(0.0),
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
        plugin_version: Some(version.plugin_version().to_string()),
        plugin_generation: Some(version.generation),
        plugin_cpu_seconds: pipeline.cpu_ns as f64 / 1e9,
        bytes_written: pipeline.written.bytes,
        backend: ctx.dms.backend().to_string(),
        attempts,
        rejected: None,
    }
}

/// The file's rejected rows, written to a temporary JSON Lines file while it is ingested (at
/// most the configured number; all are counted).
struct RejectedFile {
    file_id: String,
    path: PathBuf,
    writer: Option<BufWriter<File>>,
    kept: u64,
    total: u64,
    keep: u64,
}

impl RejectedFile {
    fn new(ctx: &BatchContext, file: &StagedFile) -> Self {
        RejectedFile {
            file_id: file.id.to_string(),
            path: ctx.rejected_tmp_dir.join(format!("{}.jsonl", file.name())),
            writer: None,
            kept: 0,
            total: 0,
            keep: ctx.reports.config().rejected_rows_kept_per_file,
        }
    }

    fn add(&mut self, records: Vec<RejectedRecord>) {
        self.total += records.len() as u64;
        for record in records {
            if self.kept >= self.keep {
                return;
            }
            if self.writer.is_none() {
                match File::create(&self.path) {
                    Ok(f) => self.writer = Some(BufWriter::new(f)),
                    Err(e) => {
                        log::error!("cannot keep rejected rows in {}: {e}", self.path.display());
                        self.keep = 0;
                        return;
                    }
                }
            }
            let row = RejectedRow {
                file_id: self.file_id.clone(),
                line: record.position,
                reason: record.reason,
                raw: record.raw,
            };
            if let Some(writer) = &mut self.writer
                && serde_json::to_writer(&mut *writer, &row).is_ok()
                && writer.write_all(b"\n").is_ok()
            {
                self.kept += 1;
            }
        }
    }

    /// Flushes; returns the temporary file (if rows were kept) and how many rows it holds.
    fn close(self) -> (Option<PathBuf>, u64) {
        match self.writer {
            Some(mut writer) => match writer.flush() {
                Ok(()) => (Some(self.path), self.kept),
                Err(_) => (None, 0),
            },
            None => (None, 0),
        }
    }
}
