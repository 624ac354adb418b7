//! The records a source's plugin rejected (and rows that did not fit their table), kept for the
//! tenant: at most a configured number per source, all counted, written as JSON Lines to a
//! temporary file off the async workers, and handed to the report store at the end.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;

use crate::plugin_host::rows::RejectedRecord;
use crate::report::RejectedRow;
use crate::source::Source;

/// Where a call's rejected records go: a source's [`Rejects`], or a `Vec` that holds them until
/// the call is known to have succeeded (a stream batch that may be tried again).
pub trait RejectSink: Send {
    /// Takes a batch's rejected records.
    fn add(&mut self, records: Vec<RejectedRecord>) -> impl std::future::Future<Output = ()> + Send;
}

impl RejectSink for Vec<RejectedRecord> {
    async fn add(&mut self, records: Vec<RejectedRecord>) {
        self.extend(records);
    }
}

impl RejectSink for Rejects {
    async fn add(&mut self, records: Vec<RejectedRecord>) {
        Rejects::add(self, records).await;
    }
}

/// Bytes buffered before they are written to the temporary file.
const BUFFER_BYTES: usize = 64 << 10;

/// A source's rejected records.
pub struct Rejects {
    source: Source,
    path: PathBuf,
    buffer: Vec<u8>,
    file: Option<BufWriter<File>>,
    failed: bool,
    kept: u64,
    total: u64,
    keep: u64,
}

impl Rejects {
    /// Collects up to `keep` records of `source` in the temporary file `path`.
    pub fn new(source: Source, path: PathBuf, keep: u64) -> Self {
        Rejects {
            source,
            path,
            buffer: Vec::new(),
            file: None,
            failed: false,
            kept: 0,
            total: 0,
            keep,
        }
    }

    /// Records rejected so far (kept or not).
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Takes a batch's rejected records.
    pub async fn add(&mut self, records: Vec<RejectedRecord>) {
        self.total += records.len() as u64;
        for record in records {
            if self.kept >= self.keep {
                break;
            }
            let row = RejectedRow::of(self.source, record.position, record.reason, record.raw);
            if serde_json::to_writer(&mut self.buffer, &row).is_ok() {
                self.buffer.push(b'\n');
                self.kept += 1;
            }
        }
        if self.buffer.len() >= BUFFER_BYTES {
            self.write_out().await;
        }
    }

    /// Adds one record the host rejected itself (a poison message).
    pub async fn reject(&mut self, position: u64, reason: String, raw: String) {
        self.add(vec![RejectedRecord { position, reason, raw }]).await;
    }

    async fn write_out(&mut self) {
        if self.buffer.is_empty() || self.failed {
            self.buffer.clear();
            return;
        }
        let buffer = std::mem::take(&mut self.buffer);
        let mut file = self.file.take();
        let path = self.path.clone();
        let written = tokio::task::spawn_blocking(move || {
            let writer = match file.as_mut() {
                Some(writer) => writer,
                None => file.insert(BufWriter::new(File::create(&path)?)),
            };
            writer.write_all(&buffer)?;
            Ok::<_, std::io::Error>(file)
        })
        .await;
        match written {
            Ok(Ok(file)) => self.file = file,
            Ok(Err(e)) => {
                log::error!("cannot keep rejected rows in {}: {e}", self.path.display());
                self.failed = true;
            }
            Err(e) => {
                log::error!("cannot keep rejected rows in {}: {e}", self.path.display());
                self.failed = true;
            }
        }
    }

    /// Writes what is buffered; returns the temporary file (if rows were kept) and how many rows
    /// it holds, and how many were rejected in all.
    pub async fn close(mut self) -> (Option<PathBuf>, u64, u64) {
        self.write_out().await;
        let (kept, total) = (self.kept, self.total);
        let Some(file) = self.file.take() else {
            return (None, 0, total);
        };
        let path = self.path.clone();
        let flushed = tokio::task::spawn_blocking(move || file.into_inner().map(|_| ()).map_err(|e| e.into_error()))
            .await
            .map_err(std::io::Error::other)
            .and_then(|r| r);
        match flushed {
            Ok(()) if !self.failed => (Some(path), kept, total),
            _ => {
                let _ = std::fs::remove_file(&path);
                (None, 0, total)
            }
        }
    }
}
