//! `mysimbdp plugin check FILE.so --sample INPUT`: runs a built plugin on a sample without a
//! platform. A batch plugin ingests the sample as a file; a stream plugin gets its lines as
//! messages (NDJSON: one JSON value per non-empty line), in batches as an instance would.
//! Every batch goes through the host's own checks (`rows::convert_batch`), so what is shown is
//! what the platform would store and reject.

use std::fmt;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use plugin_api::ffi::{FileInfo, StreamInfo};

use super::PluginKind;
use super::loader::{LoadedLibrary, MessageRef};
use super::rows::{RejectedRecord, convert_batch};
use super::version::PluginManifest;
use crate::schema::{TableSchema, Value};

/// Rows shown per table.
const ROWS_SHOWN: usize = 10;
/// Rejected records shown.
const REJECTS_SHOWN: usize = 20;
/// A cell's width at most.
const CELL_WIDTH: usize = 28;
/// Messages per `process` call, as an instance's default batch.
const MESSAGES_PER_BATCH: usize = 5000;

/// What a sample run produced.
#[derive(Debug)]
pub struct SampleReport {
    /// The sample.
    pub sample: PathBuf,
    /// Each table, its first rows and how many there were.
    pub tables: Vec<(Arc<TableSchema>, Vec<Vec<Value>>, u64)>,
    /// The first rejected records.
    pub rejected: Vec<RejectedRecord>,
    /// How many were rejected.
    pub rejected_count: u64,
    /// Messages given to a stream plugin.
    pub messages: Option<u64>,
    /// The call's result: `Err` when the plugin failed on the sample as a whole.
    pub result: Result<(), String>,
}

/// Runs the plugin at `path` (already checked; `manifest` is what it declared) on `sample`.
pub fn run_sample(path: &Path, manifest: &PluginManifest, sample: &Path) -> SampleReport {
    let tables: Vec<Arc<TableSchema>> = manifest.tables.iter().cloned().map(Arc::new).collect();
    let mut report = SampleReport {
        sample: sample.to_path_buf(),
        tables: tables.iter().map(|t| (Arc::clone(t), Vec::new(), 0)).collect(),
        rejected: Vec::new(),
        rejected_count: 0,
        messages: None,
        result: Ok(()),
    };
    let (path, sample_path, kind) = (path.to_path_buf(), sample.to_path_buf(), manifest.kind);
    // On a thread of its own, as the platform calls plugins: a thread-local the plugin leaves
    // behind is destroyed before the library closes.
    let outcome = std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let library = LoadedLibrary::load(&path).map_err(|e| e.to_string())?;
                let mut sink = |batch: &plugin_api::ffi::RowBatch| -> Result<(), String> {
                    let host = convert_batch(batch, &tables)?;
                    report.take(host);
                    Ok(())
                };
                let result = match kind {
                    PluginKind::Batch => run_file(&library, &sample_path, &mut sink),
                    PluginKind::Stream => run_messages(&library, &sample_path, &mut sink).map(|n| {
                        report.messages = Some(n);
                    }),
                };
                drop(library);
                result
            })
            .join()
            .unwrap_or_else(|_| Err("the sample run failed".into()))
    });
    report.result = outcome;
    report
}

fn run_file(
    library: &LoadedLibrary,
    sample: &Path,
    sink: &mut dyn FnMut(&plugin_api::ffi::RowBatch) -> Result<(), String>,
) -> Result<(), String> {
    let mut file = std::fs::File::open(sample).map_err(|e| format!("cannot open {}: {e}", sample.display()))?;
    let name = sample
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    let info = FileInfo {
        file_id: "sample".into(),
        file_type: name.rsplit_once('.').map_or("", |(_, t)| t).into(),
        file_name: name.as_str().into(),
        file_size: file.metadata().map_or(0, |m| m.len()),
        batch_rows: 2000,
    };
    library
        .ingest_file(&info, &mut file, sink)
        .map_err(|e| format!("the plugin failed on the file: {}", e.message))
}

fn run_messages(
    library: &LoadedLibrary,
    sample: &Path,
    sink: &mut dyn FnMut(&plugin_api::ffi::RowBatch) -> Result<(), String>,
) -> Result<u64, String> {
    let file = std::fs::File::open(sample).map_err(|e| format!("cannot open {}: {e}", sample.display()))?;
    let info = StreamInfo {
        instance_id: "sample".into(),
        batch_rows: 2000,
    };
    let handle = library
        .stream_open(&info)
        .map_err(|e| format!("the plugin's open failed: {}", e.message))?;
    let mut lines = Vec::new();
    let mut total = 0u64;
    let mut result = Ok(());
    let mut reader = BufReader::new(file);
    let mut flush = |lines: &mut Vec<Vec<u8>>, first: u64| -> Result<(), String> {
        let messages: Vec<MessageRef<'_>> = lines
            .iter()
            .enumerate()
            .map(|(i, payload)| MessageRef {
                offset: first + i as u64,
                partition: 0,
                timestamp_ms: 0,
                payload,
            })
            .collect();
        let outcome = library.stream_process(handle, &messages, sink).map_err(|e| {
            format!(
                "the plugin failed on messages {first}..{}: {}",
                first + messages.len() as u64,
                e.message
            )
        });
        lines.clear();
        outcome
    };
    loop {
        let mut line = Vec::new();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => {
                result = Err(format!("reading {} failed: {e}", sample.display()));
                break;
            }
        }
        let trimmed = line.trim_ascii();
        if trimmed.is_empty() {
            continue;
        }
        lines.push(trimmed.to_vec());
        total += 1;
        if lines.len() == MESSAGES_PER_BATCH
            && let Err(e) = flush(&mut lines, total - MESSAGES_PER_BATCH as u64)
        {
            result = Err(e);
            break;
        }
    }
    if result.is_ok() && !lines.is_empty() {
        let first = total - lines.len() as u64;
        result = flush(&mut lines, first);
    }
    library.stream_close(handle);
    result.map(|()| total)
}

impl SampleReport {
    fn take(&mut self, batch: super::rows::HostBatch) {
        let width = batch.rows.table.columns.len().max(1);
        if let Some((_, shown, count)) = self.tables.iter_mut().find(|(t, ..)| t.name == batch.rows.table.name) {
            for row in batch.rows.values.chunks(width) {
                *count += 1;
                if shown.len() < ROWS_SHOWN {
                    shown.push(row.to_vec());
                }
            }
        }
        for rejected in batch.rejected {
            self.rejected_count += 1;
            if self.rejected.len() < REJECTS_SHOWN {
                self.rejected.push(rejected);
            }
        }
    }

    /// The summary line.
    pub fn summary(&self) -> String {
        let rows: Vec<String> = self
            .tables
            .iter()
            .map(|(t, _, n)| format!("{n} rows for {}", t.name))
            .collect();
        let input = match self.messages {
            Some(n) => format!("{n} messages"),
            None => "the file".into(),
        };
        let result = match &self.result {
            Ok(()) => "ok".to_string(),
            Err(e) => format!("FAILED: {e}"),
        };
        format!(
            "sample:      {input} of {} gave {}, {} rejected; {result}",
            self.sample.display(),
            rows.join(", "),
            self.rejected_count
        )
    }
}

/// A value as the table shows it: timestamps in ISO 8601 UTC, as the API answers them.
fn shown(value: &Value) -> String {
    match value {
        Value::Timestamp(ms) => {
            let mut text = String::new();
            plugin_api::time::format_iso8601_millis(&mut text, *ms);
            text
        }
        other => other.to_string(),
    }
}

fn cell(value: &str) -> String {
    if value.chars().count() <= CELL_WIDTH {
        return value.to_string();
    }
    let cut: String = value.chars().take(CELL_WIDTH - 1).collect();
    format!("{cut}…")
}

impl fmt::Display for SampleReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (table, rows, count) in &self.tables {
            writeln!(f, "rows of {} (the first {} of {count}):", table.name, rows.len())?;
            let header: Vec<String> = table.columns.iter().map(|c| cell(&c.name)).collect();
            let body: Vec<Vec<String>> = rows
                .iter()
                .map(|row| row.iter().map(|v| cell(&shown(v))).collect())
                .collect();
            let widths: Vec<usize> = (0..header.len())
                .map(|i| {
                    body.iter()
                        .map(|r| r[i].chars().count())
                        .chain([header[i].chars().count()])
                        .max()
                        .unwrap_or(0)
                })
                .collect();
            let line = |cells: &[String]| -> String {
                let padded: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
                format!("  {}", padded.join(" | ")).trim_end().to_string()
            };
            writeln!(f, "{}", line(&header))?;
            let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
            writeln!(f, "  {}", rule.join("-+-"))?;
            for row in &body {
                writeln!(f, "{}", line(row))?;
            }
        }
        if self.rejected_count > 0 {
            let unit = if self.messages.is_some() { "offset" } else { "line" };
            writeln!(
                f,
                "rejected (the first {} of {}):",
                self.rejected.len(),
                self.rejected_count
            )?;
            for r in &self.rejected {
                let raw: String = r.raw.chars().take(60).collect();
                writeln!(f, "  {unit} {}: {} ({raw})", r.position, r.reason)?;
            }
        }
        writeln!(f, "{}", self.summary())
    }
}
