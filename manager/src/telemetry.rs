//! Telemetry as typed events: each event is a struct whose `emit` writes the log line and
//! updates the Prometheus metrics, so a report field, its log line and its metric come from
//! one place. `/metrics` renders [`Metrics::encode`].

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::report::{FileOutcome, FileReport};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TenantLabel {
    tenant: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FileLabels {
    tenant: String,
    status: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RowLabels {
    tenant: String,
    outcome: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusalLabels {
    tenant: String,
    reason: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InstanceLabels {
    tenant: String,
    instance: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    tenant: String,
    action: String,
}

type SecondsHistogram = Family<TenantLabel, Histogram, fn() -> Histogram>;
type InstanceHistogram = Family<InstanceLabels, Histogram, fn() -> Histogram>;

/// The platform's metrics.
pub struct Metrics {
    registry: Registry,
    files: Family<FileLabels, Counter>,
    rows: Family<RowLabels, Counter>,
    bytes_received: Family<TenantLabel, Counter>,
    bytes_written: Family<TenantLabel, Counter>,
    uploads_refused: Family<RefusalLabels, Counter>,
    ingest_seconds: SecondsHistogram,
    plugin_cpu_seconds: Family<TenantLabel, Counter<f64, std::sync::atomic::AtomicU64>>,
    files_in_flight: Family<TenantLabel, Gauge>,
    files_queued: Family<TenantLabel, Gauge>,
    stream_messages: Family<InstanceLabels, Counter>,
    stream_rows: Family<InstanceLabels, Counter>,
    stream_rejected: Family<InstanceLabels, Counter>,
    stream_failures: Family<InstanceLabels, Counter>,
    stream_latency: InstanceHistogram,
    stream_lag: Family<TenantLabel, Gauge>,
    stream_instances: Family<TenantLabel, Gauge>,
    stream_decisions: Family<DecisionLabels, Counter>,
}

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 18))
}

fn ingest_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.01, 2.0, 18))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("mysimbdp");
        let metrics = Metrics {
            files: Family::default(),
            rows: Family::default(),
            bytes_received: Family::default(),
            bytes_written: Family::default(),
            uploads_refused: Family::default(),
            ingest_seconds: Family::new_with_constructor(ingest_histogram as fn() -> Histogram),
            plugin_cpu_seconds: Family::default(),
            files_in_flight: Family::default(),
            files_queued: Family::default(),
            stream_messages: Family::default(),
            stream_rows: Family::default(),
            stream_rejected: Family::default(),
            stream_failures: Family::default(),
            stream_latency: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            stream_lag: Family::default(),
            stream_instances: Family::default(),
            stream_decisions: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "files",
            "Files ingested, by tenant and status (done, failed)",
            metrics.files.clone(),
        );
        registry.register(
            "rows",
            "Rows by tenant and outcome (ingested, failed)",
            metrics.rows.clone(),
        );
        registry.register(
            "received_bytes",
            "Bytes accepted in uploads, by tenant",
            metrics.bytes_received.clone(),
        );
        registry.register(
            "written_bytes",
            "Accounting bytes written to storage, by tenant (a re-ingest writes them again)",
            metrics.bytes_written.clone(),
        );
        registry.register(
            "uploads_refused",
            "Uploads refused, by tenant and reason",
            metrics.uploads_refused.clone(),
        );
        registry.register(
            "file_ingest_seconds",
            "Time to ingest a file, by tenant",
            metrics.ingest_seconds.clone(),
        );
        registry.register(
            "plugin_cpu_seconds",
            "CPU time used by tenants' plugins",
            metrics.plugin_cpu_seconds.clone(),
        );
        registry.register(
            "files_in_flight",
            "Files staged or ingesting, by tenant",
            metrics.files_in_flight.clone(),
        );
        registry.register(
            "files_queued",
            "Staged files waiting for a batch worker, by tenant",
            metrics.files_queued.clone(),
        );
        registry.register(
            "stream_messages",
            "Stream messages processed and committed, by tenant and instance",
            metrics.stream_messages.clone(),
        );
        registry.register(
            "stream_rows",
            "Rows stored from stream messages, by tenant and instance",
            metrics.stream_rows.clone(),
        );
        registry.register(
            "stream_rejected",
            "Stream messages rejected, by tenant and instance",
            metrics.stream_rejected.clone(),
        );
        registry.register(
            "stream_plugin_failures",
            "Stream plugin calls that failed, by tenant and instance",
            metrics.stream_failures.clone(),
        );
        registry.register(
            "stream_ingest_seconds",
            "Time from a message's acceptance to its rows being durable, by tenant and instance",
            metrics.stream_latency.clone(),
        );
        registry.register(
            "stream_lag",
            "Messages of a tenant's topic its group has not committed, last read",
            metrics.stream_lag.clone(),
        );
        registry.register(
            "stream_instances",
            "Stream instances that should run, by tenant",
            metrics.stream_instances.clone(),
        );
        registry.register(
            "stream_decisions",
            "Stream manager decisions, by tenant and action",
            metrics.stream_decisions.clone(),
        );
        Metrics { registry, ..metrics }
    }
}

impl Metrics {
    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }

    /// Observes the acceptance → durable times of a committed stream batch.
    pub fn stream_batch(&self, tenant: &str, instance: &str, latencies_seconds: impl IntoIterator<Item = f64>) {
        let histogram = self.stream_latency.get_or_create(&InstanceLabels {
            tenant: tenant.to_string(),
            instance: instance.to_string(),
        });
        for seconds in latencies_seconds {
            histogram.observe(seconds);
        }
    }

    /// Sets how many stream instances a tenant should run.
    pub fn set_stream_instances(&self, tenant: &str, instances: usize) {
        self.stream_instances
            .get_or_create(&TenantLabel {
                tenant: tenant.to_string(),
            })
            .set(instances as i64);
    }

    /// Counts a stream manager decision.
    pub fn stream_decision(&self, tenant: &str, action: &str) {
        self.stream_decisions
            .get_or_create(&DecisionLabels {
                tenant: tenant.to_string(),
                action: action.to_string(),
            })
            .inc();
    }

    /// Counts an instance's period report.
    pub fn stream_report(&self, report: &crate::monitor::InstanceReport) {
        let labels = InstanceLabels {
            tenant: report.tenant.to_string(),
            instance: report.instance.clone(),
        };
        self.stream_messages.get_or_create(&labels).inc_by(report.messages);
        self.stream_rows.get_or_create(&labels).inc_by(report.rows);
        self.stream_rejected.get_or_create(&labels).inc_by(report.rejected);
        self.stream_failures.get_or_create(&labels).inc_by(report.failures);
        if let Some(lag) = report.lag {
            self.stream_lag
                .get_or_create(&TenantLabel {
                    tenant: report.tenant.to_string(),
                })
                .set(lag as i64);
        }
    }

    /// Sets a tenant's files in flight.
    pub fn set_files_in_flight(&self, tenant: &str, files: u64) {
        self.files_in_flight
            .get_or_create(&TenantLabel {
                tenant: tenant.to_string(),
            })
            .set(files as i64);
    }

    /// Sets a tenant's staged files waiting for a worker.
    pub fn set_files_queued(&self, tenant: &str, files: usize) {
        self.files_queued
            .get_or_create(&TenantLabel {
                tenant: tenant.to_string(),
            })
            .set(files as i64);
    }
}

/// A file was accepted into staging.
pub struct FileAccepted<'a> {
    /// The tenant.
    pub tenant: &'a str,
    /// Its id.
    pub file_id: &'a str,
    /// The client's name.
    pub client_file_name: &'a str,
    /// Bytes.
    pub bytes: u64,
    /// Time to receive it, ms.
    pub ms: u128,
}

impl FileAccepted<'_> {
    /// Logs and counts it.
    pub fn emit(&self, metrics: &Metrics) {
        log::info!(
            "file accepted tenant={} file={} name={:?} bytes={} ms={}",
            self.tenant,
            self.file_id,
            self.client_file_name,
            self.bytes,
            self.ms
        );
        metrics
            .bytes_received
            .get_or_create(&TenantLabel {
                tenant: self.tenant.to_string(),
            })
            .inc_by(self.bytes);
    }
}

/// An upload was refused.
pub struct UploadRefused<'a> {
    /// The tenant named in the URL.
    pub tenant: &'a str,
    /// A short label (`bad_token`, `file_type`, `file_size`, `files_number`, `quota`, ...).
    pub reason: &'static str,
    /// The HTTP status.
    pub status: u16,
    /// The message sent.
    pub message: &'a str,
}

impl UploadRefused<'_> {
    /// Logs and counts it.
    pub fn emit(&self, metrics: &Metrics) {
        log::warn!(
            "upload refused tenant={} reason={} status={} message={:?}",
            self.tenant,
            self.reason,
            self.status,
            self.message
        );
        let labels = RefusalLabels {
            tenant: self.tenant.to_string(),
            reason: self.reason.to_string(),
        };
        metrics.uploads_refused.get_or_create(&labels).inc();
    }
}

/// A file finished (done or failed); the report has every number.
pub struct FileIngested<'a> {
    /// Its report.
    pub report: &'a FileReport,
}

impl FileIngested<'_> {
    /// Logs and counts it.
    pub fn emit(&self, metrics: &Metrics) {
        let r = self.report;
        let status = match r.status {
            FileOutcome::Done => "done",
            FileOutcome::Failed => "failed",
        };
        let line = format!(
            "file ingested tenant={} file={} status={status} rows_total={} rows_ingested={} rows_failed={} bytes={} ms={:.0} rows_per_s={:.0} plugin={} version={} attempts={}",
            r.tenant,
            r.file_id,
            r.rows_total,
            r.rows_ingested,
            r.rows_failed,
            r.file_size,
            r.ingest_time * 1000.0,
            r.ingest_rate_rs,
            r.plugin,
            r.plugin_version.as_deref().unwrap_or("-"),
            r.attempts
        );
        match &r.error {
            None => log::info!("{line}"),
            Some(error) => log::warn!("{line} error={error:?}"),
        }
        let tenant = TenantLabel {
            tenant: r.tenant.clone(),
        };
        metrics
            .files
            .get_or_create(&FileLabels {
                tenant: r.tenant.clone(),
                status: status.into(),
            })
            .inc();
        metrics
            .rows
            .get_or_create(&RowLabels {
                tenant: r.tenant.clone(),
                outcome: "ingested".into(),
            })
            .inc_by(r.rows_ingested);
        metrics
            .rows
            .get_or_create(&RowLabels {
                tenant: r.tenant.clone(),
                outcome: "failed".into(),
            })
            .inc_by(r.rows_failed);
        metrics.bytes_written.get_or_create(&tenant).inc_by(r.bytes_written);
        metrics.ingest_seconds.get_or_create(&tenant).observe(r.ingest_time);
        metrics
            .plugin_cpu_seconds
            .get_or_create(&tenant)
            .inc_by(r.plugin_cpu_seconds);
    }
}
