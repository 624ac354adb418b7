//! Per-tenant and platform statistics, folded from the reports.

use std::collections::VecDeque;

use serde::Serialize;

use super::{FileOutcome, FileReport};

/// How many recent ingest times the percentiles are computed over.
const SAMPLES: usize = 10_000;

/// Running totals for a tenant (or, merged, the platform).
#[derive(Debug, Clone, Default)]
pub struct IngestStats {
    files_done: u64,
    files_failed: u64,
    rows_ingested: u64,
    rows_failed: u64,
    bytes_received: u64,
    bytes_ingested: u64,
    bytes_written: u64,
    ingest_seconds: f64,
    plugin_cpu_seconds: f64,
    recent_ingest_times: VecDeque<f64>,
}

/// Statistics as the API shows them.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct StatsSnapshot {
    /// Files ingested.
    pub files_ok: u64,
    /// Files that failed.
    pub files_failed: u64,
    /// Rows stored.
    pub rows_ingested: u64,
    /// Rows rejected.
    pub rows_failed: u64,
    /// Bytes received in files that were processed.
    pub bytes_received: u64,
    /// Bytes of files ingested.
    pub bytes_ingested: u64,
    /// Accounting bytes written (re-ingests count again; `storage_used_bytes` is what the
    /// data occupies).
    pub bytes_written: u64,
    /// Median ingest time of recent files, seconds.
    pub ingest_time_p50: f64,
    /// 95th percentile ingest time of recent files, seconds.
    pub ingest_time_p95: f64,
    /// Rows stored per second of ingest time.
    pub rows_per_second: f64,
    /// File bytes ingested per second of ingest time.
    pub bytes_per_second: f64,
    /// CPU seconds used by the tenant's plugins.
    pub plugin_cpu_seconds: f64,
}

impl IngestStats {
    /// Folds a report in.
    pub fn add(&mut self, report: &FileReport) {
        match report.status {
            FileOutcome::Done => self.files_done += 1,
            FileOutcome::Failed => self.files_failed += 1,
        }
        self.rows_ingested += report.rows_ingested;
        self.rows_failed += report.rows_failed;
        self.bytes_received += report.file_received_size;
        if report.status == FileOutcome::Done {
            self.bytes_ingested += report.file_size;
        }
        self.bytes_written += report.bytes_written;
        self.ingest_seconds += report.ingest_time;
        self.plugin_cpu_seconds += report.plugin_cpu_seconds;
        if self.recent_ingest_times.len() == SAMPLES {
            self.recent_ingest_times.pop_front();
        }
        self.recent_ingest_times.push_back(report.ingest_time);
    }

    /// Adds another tenant's totals (for the platform's).
    pub fn merge(&mut self, other: &IngestStats) {
        self.files_done += other.files_done;
        self.files_failed += other.files_failed;
        self.rows_ingested += other.rows_ingested;
        self.rows_failed += other.rows_failed;
        self.bytes_received += other.bytes_received;
        self.bytes_ingested += other.bytes_ingested;
        self.bytes_written += other.bytes_written;
        self.ingest_seconds += other.ingest_seconds;
        self.plugin_cpu_seconds += other.plugin_cpu_seconds;
        self.recent_ingest_times
            .extend(other.recent_ingest_times.iter().copied());
    }

    /// The numbers the API shows.
    pub fn snapshot(&self) -> StatsSnapshot {
        let mut times: Vec<f64> = self.recent_ingest_times.iter().copied().collect();
        times.sort_by(f64::total_cmp);
        let rate = |n: u64| {
            if self.ingest_seconds > 0.0 {
                n as f64 / self.ingest_seconds
            } else {
                0.0
            }
        };
        StatsSnapshot {
            files_ok: self.files_done,
            files_failed: self.files_failed,
            rows_ingested: self.rows_ingested,
            rows_failed: self.rows_failed,
            bytes_received: self.bytes_received,
            bytes_ingested: self.bytes_ingested,
            bytes_written: self.bytes_written,
            ingest_time_p50: percentile(&times, 0.50),
            ingest_time_p95: percentile(&times, 0.95),
            rows_per_second: rate(self.rows_ingested),
            bytes_per_second: rate(self.bytes_ingested),
            plugin_cpu_seconds: self.plugin_cpu_seconds,
        }
    }
}

/// Nearest-rank percentile of sorted values (0 for none).
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let values: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&values, 0.5), 50.0);
        assert_eq!(percentile(&values, 0.95), 95.0);
        assert_eq!(percentile(&[3.0], 0.95), 3.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
    }
}
