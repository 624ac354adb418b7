//! The reports of every tenant: written after each file, read by the API, folded into
//! statistics. File I/O here is blocking: async callers use `spawn_blocking`.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::{Cursor, FileReport, IngestStats, RejectedRows, SegmentedLog, StatsSnapshot};
use crate::durable::write_durably;
use crate::source::{FileId, Source};
use crate::tenants::TenantId;

/// Settings of the reports.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReportsConfig {
    /// Reports kept in `<tenant>_report.json` (older ones stay in the JSON Lines log).
    pub files_in_report: usize,
    /// Size at which a log segment is closed, bytes.
    pub log_segment_bytes: u64,
    /// Closed segments kept per log.
    pub log_segments_kept: u64,
    /// Rejected rows kept per file (all are counted).
    pub rejected_rows_kept_per_file: u64,
}

impl Default for ReportsConfig {
    fn default() -> Self {
        ReportsConfig {
            files_in_report: 1000,
            log_segment_bytes: 64 << 20,
            log_segments_kept: 8,
            rejected_rows_kept_per_file: 10_000,
        }
    }
}

/// How often `<tenant>_report.json` is rewritten at most while files keep finishing.
pub const DOCUMENT_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// One rejected record as the tenant reads it back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RejectedRow {
    /// The file it came from (a file's rows).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_id: Option<String>,
    /// Its line in the file (0 when unknown).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<u64>,
    /// The partition it came from (a message).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<u32>,
    /// Its offset in the partition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// Why.
    pub reason: String,
    /// The raw input.
    pub raw: String,
}

impl RejectedRow {
    /// A record of `source` at `position` (a line, or an offset).
    pub fn of(source: Source, position: u64, reason: String, raw: String) -> Self {
        match source {
            Source::File(id) => RejectedRow {
                file_id: Some(id.to_string()),
                line: Some(position),
                partition: None,
                offset: None,
                reason,
                raw,
            },
            Source::Stream { partition, .. } => RejectedRow {
                file_id: None,
                line: None,
                partition: Some(partition),
                offset: Some(position),
                reason,
                raw,
            },
        }
    }
}

/// A page of a file's rejected rows.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RejectedPage {
    /// The rows.
    pub rows: Vec<RejectedRow>,
    /// The next page's number, if there is one.
    pub next_page: Option<String>,
}

struct TenantReports {
    document: BTreeMap<FileId, FileReport>,
    /// The document has reports `<tenant>_report.json` does not have yet.
    document_behind: bool,
    /// When `<tenant>_report.json` was last written.
    document_written_at: Option<std::time::Instant>,
    log: SegmentedLog,
    rejected: SegmentedLog,
    stream_rejected: SegmentedLog,
    stream_reports: SegmentedLog,
    decisions: SegmentedLog,
    stats: IngestStats,
}

/// A tenant's stream logs of JSON records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamLog {
    /// `<tenant>_stream.jsonl`: the instances' periodic reports.
    Reports,
    /// `<tenant>_decisions.jsonl`: the stream manager's decisions.
    Decisions,
}

/// A page of JSON records.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RecordPage {
    /// The records, oldest first.
    pub records: Vec<serde_json::Value>,
    /// The token of the next page, if there is one.
    pub next_page: Option<String>,
}

/// All tenants' reports.
pub struct ReportStore {
    dir: PathBuf,
    config: ReportsConfig,
    tenants: Mutex<HashMap<TenantId, Arc<Mutex<TenantReports>>>>,
}

impl ReportStore {
    /// Opens `client-reports/`, loading every tenant's report and statistics.
    pub fn open(dir: &Path, config: ReportsConfig) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let store = ReportStore {
            dir: dir.to_path_buf(),
            config,
            tenants: Mutex::default(),
        };
        for entry in std::fs::read_dir(dir)?.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            if let Some(tenant) = name
                .strip_suffix("_report.jsonl")
                .and_then(|t| t.parse::<TenantId>().ok())
            {
                store.tenant(&tenant)?;
            }
        }
        Ok(store)
    }

    /// The settings.
    pub fn config(&self) -> &ReportsConfig {
        &self.config
    }

    fn tenant(&self, tenant: &TenantId) -> io::Result<Arc<Mutex<TenantReports>>> {
        let mut tenants = self.tenants.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(reports) = tenants.get(tenant) {
            return Ok(Arc::clone(reports));
        }
        let log = SegmentedLog::open(
            &self.dir,
            &format!("{tenant}_report.jsonl"),
            self.config.log_segment_bytes,
            self.config.log_segments_kept,
        )?;
        let rejected = SegmentedLog::open(
            &self.dir,
            &format!("{tenant}_rejected.jsonl"),
            self.config.log_segment_bytes,
            self.config.log_segments_kept,
        )?;
        let stream_rejected = SegmentedLog::open(
            &self.dir,
            &format!("{tenant}_stream_rejected.jsonl"),
            self.config.log_segment_bytes,
            self.config.log_segments_kept,
        )?;
        let open = |name: &str| {
            SegmentedLog::open(
                &self.dir,
                &format!("{tenant}_{name}.jsonl"),
                self.config.log_segment_bytes,
                self.config.log_segments_kept,
            )
        };
        let stream_reports = open("stream")?;
        let decisions = open("decisions")?;
        let mut stats = IngestStats::default();
        let mut from_log = BTreeMap::new();
        for line in log.lines()? {
            if let Ok(report) = serde_json::from_str::<FileReport>(&line) {
                stats.add(&report);
                if let Ok(id) = report.file_id.parse::<FileId>() {
                    from_log.insert(id, report);
                }
            }
        }
        let document_path = self.dir.join(format!("{tenant}_report.json"));
        let mut document: BTreeMap<FileId, FileReport> = std::fs::read(&document_path)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<BTreeMap<String, FileReport>>(&bytes).ok())
            .map(|d| d.into_iter().filter_map(|(k, v)| Some((k.parse().ok()?, v))).collect())
            .unwrap_or_default();
        // The log is written first: a report that reached it but not the document (a crash in
        // between) is restored.
        document.extend(from_log.into_iter().rev().take(self.config.files_in_report));
        compact(&mut document, self.config.files_in_report);
        let reports = Arc::new(Mutex::new(TenantReports {
            document,
            document_behind: false,
            document_written_at: None,
            log,
            rejected,
            stream_rejected,
            stream_reports,
            decisions,
            stats,
        }));
        tenants.insert(tenant.clone(), Arc::clone(&reports));
        Ok(reports)
    }

    /// Records a finished file: its rejected rows (from the temporary file the batch manager
    /// wrote, if any), then the report in the log; once that is durable, the report joins the
    /// document and the statistics, so a report the API shows is on disk. The log is the
    /// record: `<tenant>_report.json`, rebuilt from it at start, is rewritten at most every
    /// [`DOCUMENT_EVERY`] (and by [`ReportStore::write_documents`]), so that many small files
    /// do not each rewrite a document of a thousand reports. Concurrent records share their
    /// fsyncs.
    pub fn record(
        &self,
        tenant: &TenantId,
        mut report: FileReport,
        rejected_file: Option<(&Path, u64)>,
    ) -> io::Result<FileReport> {
        let reports = self.tenant(tenant)?;
        let lock = || reports.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((path, rows_kept)) = rejected_file
            && rows_kept > 0
        {
            let (position, unsynced) = lock().rejected.append_file_unsynced(path)?;
            // The rows are durable before the report that points at them.
            unsynced.wait()?;
            report.rejected = Some(RejectedRows { position, rows_kept });
        }
        let mut line = serde_json::to_vec(&report).map_err(io::Error::other)?;
        line.push(b'\n');
        let id: FileId = report.file_id.parse().map_err(io::Error::other)?;
        let (_, unsynced) = lock().log.append_unsynced(&line)?;
        unsynced.wait()?;
        let mut reports = lock();
        reports.document.insert(id, report.clone());
        compact(&mut reports.document, self.config.files_in_report);
        reports.stats.add(&report);
        reports.document_behind = true;
        if reports
            .document_written_at
            .is_none_or(|at| at.elapsed() >= DOCUMENT_EVERY)
        {
            self.write_document(tenant, &mut reports);
        }
        Ok(report)
    }

    /// Writes every `<tenant>_report.json` that is behind its log (the platform calls it each
    /// [`DOCUMENT_EVERY`] and as it stops).
    pub fn write_documents(&self) {
        for (tenant, reports) in self.all_tenants() {
            let mut reports = reports.lock().unwrap_or_else(|e| e.into_inner());
            if reports.document_behind {
                self.write_document(&tenant, &mut reports);
            }
        }
    }

    /// Every tenant's reports, taken out of the map so that each is locked on its own.
    fn all_tenants(&self) -> Vec<(TenantId, Arc<Mutex<TenantReports>>)> {
        self.tenants
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(id, reports)| (id.clone(), Arc::clone(reports)))
            .collect()
    }

    /// Writes the document atomically. A failure is logged and the document stays behind (its
    /// reports are in the log, which is what a restart rebuilds it from).
    fn write_document(&self, tenant: &TenantId, reports: &mut TenantReports) {
        let document = document_json(&reports.document);
        let path = self.dir.join(format!("{tenant}_report.json"));
        match write_durably(&path, document.to_string().as_bytes()) {
            Ok(()) => {
                reports.document_behind = false;
                reports.document_written_at = Some(std::time::Instant::now());
            }
            Err(e) => log::error!("tenant={tenant}: cannot write {}: {e}", path.display()),
        }
    }

    /// The report of a file, if it is still in the tenant's document.
    pub fn report(&self, tenant: &TenantId, file: FileId) -> Option<FileReport> {
        let reports = self
            .tenants
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(tenant)
            .cloned()?;
        let reports = reports.lock().unwrap_or_else(|e| e.into_inner());
        reports.document.get(&file).cloned()
    }

    /// The tenant's report document (`<tenant>_report.json`).
    pub fn document(&self, tenant: &TenantId) -> serde_json::Value {
        match self
            .tenants
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(tenant)
            .cloned()
        {
            Some(reports) => document_json(&reports.lock().unwrap_or_else(|e| e.into_inner()).document),
            None => serde_json::json!({}),
        }
    }

    /// A page of a file's rejected rows; `None` if the file has no report.
    pub fn rejected_rows(
        &self,
        tenant: &TenantId,
        file: FileId,
        page: usize,
        limit: usize,
    ) -> io::Result<Option<RejectedPage>> {
        let Some(reports) = self
            .tenants
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(tenant)
            .cloned()
        else {
            return Ok(None);
        };
        let reports = reports.lock().unwrap_or_else(|e| e.into_inner());
        let Some(report) = reports.document.get(&file) else {
            return Ok(None);
        };
        let Some(rejected) = report.rejected else {
            return Ok(Some(RejectedPage {
                rows: Vec::new(),
                next_page: None,
            }));
        };
        let bytes = match reports.rejected.read(rejected.position) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    "these rejected rows were rotated out of the log",
                ));
            }
            Err(e) => return Err(e),
        };
        let lines: Vec<&[u8]> = bytes.split(|&b| b == b'\n').filter(|l| !l.is_empty()).collect();
        let start = page.saturating_mul(limit);
        let rows = lines
            .iter()
            .skip(start)
            .take(limit)
            .filter_map(|l| serde_json::from_slice(l).ok())
            .collect();
        let next_page = (start.saturating_add(limit) < lines.len()).then(|| (page + 1).to_string());
        Ok(Some(RejectedPage { rows, next_page }))
    }

    /// Appends a stream batch's rejected messages (a JSON Lines file `Rejects` wrote).
    pub fn record_stream_rejects(&self, tenant: &TenantId, rejected_file: &Path) -> io::Result<()> {
        let reports = self.tenant(tenant)?;
        let mut reports = reports.lock().unwrap_or_else(|e| e.into_inner());
        reports.stream_rejected.append_file(rejected_file).map(|_| ())
    }

    /// A page of the tenant's rejected messages, oldest first, from `page` (a token an earlier
    /// page returned).
    pub fn stream_rejected(&self, tenant: &TenantId, page: Option<&str>, limit: usize) -> io::Result<RejectedPage> {
        let cursor = page
            .map(str::parse::<Cursor>)
            .transpose()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let reports = self.tenant(tenant)?;
        let reports = reports.lock().unwrap_or_else(|e| e.into_inner());
        let (lines, next) = reports.stream_rejected.page(cursor, limit)?;
        Ok(RejectedPage {
            rows: lines.iter().filter_map(|l| serde_json::from_str(l).ok()).collect(),
            next_page: next.map(|c| c.to_string()),
        })
    }

    /// Appends a record to one of the tenant's stream logs.
    pub fn append_record(&self, tenant: &TenantId, log: StreamLog, record: &impl Serialize) -> io::Result<()> {
        let mut line = serde_json::to_vec(record).map_err(io::Error::other)?;
        line.push(b'\n');
        let reports = self.tenant(tenant)?;
        let mut reports = reports.lock().unwrap_or_else(|e| e.into_inner());
        let target = match log {
            StreamLog::Reports => &mut reports.stream_reports,
            StreamLog::Decisions => &mut reports.decisions,
        };
        target.append(&line).map(|_| ())
    }

    /// A page of one of the tenant's stream logs, oldest first, from `page` (a token an earlier
    /// page returned).
    pub fn records(
        &self,
        tenant: &TenantId,
        log: StreamLog,
        page: Option<&str>,
        limit: usize,
    ) -> io::Result<RecordPage> {
        let cursor = page
            .map(str::parse::<Cursor>)
            .transpose()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let reports = self.tenant(tenant)?;
        let reports = reports.lock().unwrap_or_else(|e| e.into_inner());
        let source = match log {
            StreamLog::Reports => &reports.stream_reports,
            StreamLog::Decisions => &reports.decisions,
        };
        let (lines, next) = source.page(cursor, limit)?;
        Ok(RecordPage {
            records: lines.iter().filter_map(|l| serde_json::from_str(l).ok()).collect(),
            next_page: next.map(|c| c.to_string()),
        })
    }

    /// A tenant's statistics.
    pub fn stats(&self, tenant: &TenantId) -> StatsSnapshot {
        match self
            .tenants
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(tenant)
            .cloned()
        {
            Some(reports) => reports.lock().unwrap_or_else(|e| e.into_inner()).stats.snapshot(),
            None => StatsSnapshot::default(),
        }
    }

    /// Every tenant's statistics and the platform's.
    pub fn all_stats(&self) -> (StatsSnapshot, BTreeMap<TenantId, StatsSnapshot>) {
        let tenants = self.all_tenants();
        let mut platform = IngestStats::default();
        let mut per_tenant = BTreeMap::new();
        for (tenant, reports) in tenants {
            let reports = reports.lock().unwrap_or_else(|e| e.into_inner());
            platform.merge(&reports.stats);
            per_tenant.insert(tenant, reports.stats.snapshot());
        }
        (platform.snapshot(), per_tenant)
    }
}

fn compact(document: &mut BTreeMap<FileId, FileReport>, keep: usize) {
    while document.len() > keep.max(1) {
        document.pop_first();
    }
}

fn document_json(document: &BTreeMap<FileId, FileReport>) -> serde_json::Value {
    let map: serde_json::Map<String, serde_json::Value> = document
        .iter()
        .map(|(id, r)| (id.to_string(), serde_json::to_value(r).unwrap_or_default()))
        .collect();
    serde_json::Value::Object(map)
}
