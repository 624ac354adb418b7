//! report: what happened to every ingested file, for the tenant and the operator.
//!
//! Per tenant, in `client-reports/`:
//! - `<tenant>_report.json`: the latest files' reports keyed by file id (the seed's fields plus
//!   status, error and plugin version), rewritten atomically after each file, compacted to
//!   the most recent ones;
//! - `<tenant>_report.jsonl`: every report, one per line, in rotated segments; it feeds the
//!   statistics after a restart;
//! - `<tenant>_rejected.jsonl`: the rows plugins rejected (file id, line, reason, raw input),
//!   in rotated segments; each report points at its file's rows;
//! - `<tenant>_stream_rejected.jsonl`: the messages stream plugins rejected (partition, offset,
//!   reason, raw payload), in rotated segments, paged by the API;
//! - `<tenant>_stream.jsonl`: the stream instances' periodic reports, and
//!   `<tenant>_decisions.jsonl`: the stream manager's decisions with their evidence, both in
//!   rotated segments, paged by the API.

mod log;
pub mod stats;
pub mod store;

use serde::{Deserialize, Serialize};

pub use log::{Cursor, Position, SegmentedLog};
pub use stats::{IngestStats, StatsSnapshot};
pub use store::{RecordPage, RejectedPage, RejectedRow, ReportStore, ReportsConfig, StreamLog};

/// The folder's name in the platform's root.
pub const REPORTS_DIR: &str = "client-reports";

/// How a file ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileOutcome {
    /// Ingested (possibly with rejected rows).
    Done,
    /// Not ingested, or only partly: see `error`.
    Failed,
}

/// Where a file's rejected rows are in the tenant's rejected-rows log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RejectedRows {
    /// Their place in the log.
    pub position: Position,
    /// How many were kept (at most the configured number per file).
    pub rows_kept: u64,
}

/// The report of one file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileReport {
    /// Bytes received from the client.
    pub file_received_size: u64,
    /// The staging name (`<file_id>_<tenant>.<type>`).
    pub file_name: String,
    /// The staging path.
    pub file_path: String,
    /// When the plugin started (seconds since the epoch).
    pub ingest_start_time: f64,
    /// When the last row was stored.
    pub ingest_end_time: f64,
    /// `ingest_end_time - ingest_start_time`, seconds.
    pub ingest_time: f64,
    /// Rows read: `rows_ingested + rows_failed`.
    pub rows_total: u64,
    /// Rows stored.
    pub rows_ingested: u64,
    /// Rows rejected by the plugin or not fitting their table.
    pub rows_failed: u64,
    /// Bytes of the staged file.
    pub file_size: u64,
    /// `file_size / ingest_time`.
    pub ingest_rate_bs: f64,
    /// `rows_ingested / ingest_time`.
    pub ingest_rate_rs: f64,
    /// From the file being staged to the plugin starting, seconds (queueing and setup).
    pub manager_process_time: f64,
    /// From the upload request to the last row stored, seconds.
    pub total_process_time: f64,
    /// `done` or `failed`.
    pub status: FileOutcome,
    /// Why it failed (or what went wrong on a partial success).
    pub error: Option<String>,
    /// The file id.
    pub file_id: String,
    /// The tenant.
    pub tenant: String,
    /// The file type.
    pub file_type: String,
    /// The name the client gave.
    pub client_file_name: String,
    /// `clientbatchingestapp_<tenant>_<type>`.
    pub plugin: String,
    /// The plugin's version (its crate version), if one ran.
    pub plugin_version: Option<String>,
    /// The load generation of that version in the platform's process.
    pub plugin_generation: Option<u64>,
    /// CPU seconds the plugin used on this file.
    pub plugin_cpu_seconds: f64,
    /// Accounting bytes written by this file ([`crate::coredms::Value::logical_bytes`]); a
    /// re-ingest writes them again. What the tenant's data occupies is its usage
    /// (`storage_used_bytes` in its statistics).
    #[serde(alias = "bytes_stored")]
    pub bytes_written: u64,
    /// The storage backend.
    pub backend: String,
    /// Ingestion attempts (more than 1 after a restart or a storage outage).
    pub attempts: u32,
    /// The file's rejected rows, if any were kept.
    pub rejected: Option<RejectedRows>,
    /// Where the ingestion time went (absent in reports written before it was measured).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stages: Option<StageTimes>,
}

/// The stages of a file's ingestion, seconds each: they add up to `ingest_time`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct StageTimes {
    /// The version's tables made ready in the store, and the wait for a turn among the
    /// plugin calls of its group.
    pub prepare: f64,
    /// The plugin reading the file, its rows written (not yet durable).
    pub plugin_and_writes: f64,
    /// The wait for the other files of its group, and the barrier that made their rows durable.
    pub barrier: f64,
    /// Files ingested together with this one (itself included), sharing the barrier.
    #[serde(default)]
    pub group_files: u32,
}
