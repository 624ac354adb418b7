//! Run a plugin inside a plain `cargo test` of its own crate, with the host's checks, and look
//! at what it produced: no platform, no `.so`.
//!
//! The plugin runs through the same entry points the host calls (the [`export_plugin!`]
//! wrappers: panics caught, rows handed over in batches), and every batch is checked as the
//! host checks it: the declared tables ([`TableSpec::validate`], one name once), each row's
//! width, value types and nulls. A row the host would not store is in
//! [`Outcome::rejected`] with the host's reason, as it would be in the tenant's rejected log.
//!
//! ```
//! use plugin_api::testing;
//! # use plugin_api::{row, BatchIngestApp, FileInfo, Input, Output, PluginError, Row, TableSpec};
//! # use std::io::Read;
//! # row! { pub struct Word in "words" { partition { word: String } } }
//! # struct Words;
//! # impl BatchIngestApp for Words {
//! #     const TENANT: &'static str = "acme";
//! #     const FILE_TYPES: &'static [&'static str] = &["txt"];
//! #     fn tables() -> Vec<TableSpec> { vec![Word::spec()] }
//! #     fn ingest(_: &FileInfo, input: &mut Input, out: &mut Output) -> Result<(), PluginError> {
//! #         let words = out.table_of::<Word>()?;
//! #         let mut text = String::new();
//! #         input.read_to_string(&mut text)?;
//! #         for (i, w) in text.split_whitespace().enumerate() {
//! #             if w.chars().all(char::is_alphabetic) {
//! #                 out.push(words, Word { word: w.into() })?;
//! #             } else {
//! #                 out.reject(i as u64 + 1, "not a word", w)?;
//! #             }
//! #         }
//! #         Ok(())
//! #     }
//! # }
//! let outcome = testing::run_batch::<Words>("sample.txt", b"hello 42 world");
//! outcome.result.as_ref().unwrap();
//! assert_eq!(outcome.rows_of("words").len(), 2);
//! assert_eq!(outcome.rejected[0].reason, "not a word");
//! ```

use std::ffi::c_void;

use abi_stable::std_types::{RErr, ROk, RResult, RSlice, RSliceMut, RString};

use crate::export;
use crate::ffi::{ByteSource, ColumnType, FileInfo, Message, RowBatch, RowSink, StreamInfo, TableSpec, Value};
use crate::{BatchIngestApp, PluginError, StreamIngestApp};

/// The rows per batch the platform uses by default.
pub const BATCH_ROWS: u32 = 2000;

/// A row the plugin produced, in its table.
#[derive(Debug, Clone, PartialEq)]
pub struct TestRow {
    /// The table's name.
    pub table: String,
    /// One value per column, in declaration order.
    pub values: Vec<Value>,
}

/// A record the plugin rejected, or a row the host would not store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// The line (file) or offset (message) the plugin gave; 0 for an unfit row.
    pub position: u64,
    /// Why.
    pub reason: String,
    /// The raw input, or an unfit row's values.
    pub raw: String,
}

/// What a run produced.
#[derive(Debug)]
pub struct Outcome {
    /// The tables the plugin declares.
    pub tables: Vec<TableSpec>,
    /// The rows the host would store, in the order they came.
    pub rows: Vec<TestRow>,
    /// Rejected records and unfit rows, in the order they came.
    pub rejected: Vec<Rejected>,
    /// The plugin's result: an error (or a caught panic, kind `Panic`) fails the whole file or
    /// batch on the platform; what was handed over before it is still here.
    pub result: Result<(), PluginError>,
}

impl Outcome {
    /// The rows of one table.
    pub fn rows_of(&self, table: &str) -> Vec<&[Value]> {
        self.rows
            .iter()
            .filter(|r| r.table == table)
            .map(|r| r.values.as_slice())
            .collect()
    }

    /// One line a person reads: rows per table, rejected records, the result.
    pub fn summary(&self) -> String {
        let mut parts: Vec<String> = self
            .tables
            .iter()
            .map(|t| format!("{}: {} rows", t.name, self.rows_of(&t.name).len()))
            .collect();
        parts.push(format!("{} rejected", self.rejected.len()));
        parts.push(match &self.result {
            Ok(()) => "ok".into(),
            Err(e) => format!("failed: {e}"),
        });
        parts.join(", ")
    }
}

/// Checks the declared tables as the host does when it loads the plugin.
pub fn check_tables(tables: &[TableSpec]) -> Result<(), String> {
    for (i, table) in tables.iter().enumerate() {
        table.validate().map_err(|e| format!("table {}: {e}", table.name))?;
        if tables[..i].iter().any(|t| t.name == table.name) {
            return Err(format!("table {} is declared twice", table.name));
        }
    }
    Ok(())
}

/// Checks a row against its table as the host does before it stores it.
pub fn check_row(table: &TableSpec, row: &[Value]) -> Result<(), String> {
    if row.len() != table.columns.len() {
        return Err(format!("{} values for {} columns", row.len(), table.columns.len()));
    }
    for (column, value) in table.columns.iter().zip(row) {
        match value_type(value) {
            None if column.nullable => {}
            None => {
                return Err(format!(
                    "column {}: null in a column that requires a value",
                    column.name
                ));
            }
            Some(t) if t == column.column_type => {}
            Some(t) => {
                return Err(format!(
                    "column {}: expected {}, got {}",
                    column.name,
                    column.column_type.name(),
                    t.name()
                ));
            }
        }
    }
    Ok(())
}

fn value_type(value: &Value) -> Option<ColumnType> {
    Some(match value {
        Value::Null => return None,
        Value::Text(_) => ColumnType::Text,
        Value::BigInt(_) => ColumnType::BigInt,
        Value::Int(_) => ColumnType::Int,
        Value::Double(_) => ColumnType::Double,
        Value::Boolean(_) => ColumnType::Boolean,
        Value::Timestamp(_) => ColumnType::Timestamp,
        Value::Blob(_) => ColumnType::Blob,
    })
}

/// Runs batch plugin `A` on `bytes` as the file `file_name` (its type is the text after the
/// last `.`).
pub fn run_batch<A: BatchIngestApp>(file_name: &str, bytes: &[u8]) -> Outcome {
    let tables = A::tables();
    let mut collector = Collector::new(tables.clone());
    if let Err(e) = check_tables(&tables) {
        collector.result = Err(PluginError::invalid_input(format!("the host refuses this plugin: {e}")));
        return collector.into_outcome();
    }
    let file = FileInfo {
        file_id: "test".into(),
        file_name: file_name.into(),
        file_type: file_name.rsplit_once('.').map_or("", |(_, t)| t).into(),
        file_size: bytes.len() as u64,
        batch_rows: BATCH_ROWS,
    };
    let mut reader: &[u8] = bytes;
    let source = ByteSource {
        context: &mut reader as *mut &[u8] as *mut c_void,
        read: read_bytes,
    };
    let result = export::ingest_file::<A>(&file, source, collector.sink());
    collector.result = result.into_result();
    collector.into_outcome()
}

/// Runs stream plugin `A`: opens one instance and gives it `messages` as one batch of
/// partition 0 (offsets from 0, timestamps 0), then closes it.
pub fn run_stream<A: StreamIngestApp>(messages: &[&[u8]]) -> Outcome {
    let tables = A::tables();
    let mut collector = Collector::new(tables.clone());
    if let Err(e) = check_tables(&tables) {
        collector.result = Err(PluginError::invalid_input(format!("the host refuses this plugin: {e}")));
        return collector.into_outcome();
    }
    let info = StreamInfo {
        instance_id: "test-instance".into(),
        batch_rows: BATCH_ROWS,
    };
    let handle = match export::stream_open::<A>(&info).into_result() {
        Ok(handle) => handle,
        Err(e) => {
            collector.result = Err(e);
            return collector.into_outcome();
        }
    };
    let batch: Vec<Message<'_>> = messages
        .iter()
        .enumerate()
        .map(|(i, payload)| Message {
            offset: i as u64,
            partition: 0,
            timestamp_ms: 0,
            payload: RSlice::from_slice(payload),
        })
        .collect();
    let result = export::stream_process::<A>(handle, RSlice::from_slice(&batch), collector.sink());
    export::stream_close::<A>(handle);
    collector.result = result.into_result();
    collector.into_outcome()
}

struct Collector {
    tables: Vec<TableSpec>,
    rows: Vec<TestRow>,
    rejected: Vec<Rejected>,
    result: Result<(), PluginError>,
}

impl Collector {
    fn new(tables: Vec<TableSpec>) -> Self {
        Collector {
            tables,
            rows: Vec::new(),
            rejected: Vec::new(),
            result: Ok(()),
        }
    }

    fn sink(&mut self) -> RowSink {
        RowSink {
            context: self as *mut Collector as *mut c_void,
            emit: collect,
        }
    }

    fn into_outcome(self) -> Outcome {
        Outcome {
            tables: self.tables,
            rows: self.rows,
            rejected: self.rejected,
            result: self.result,
        }
    }

    fn take(&mut self, batch: &RowBatch) -> Result<(), String> {
        self.rejected.extend(batch.rejected.iter().map(|r| Rejected {
            position: r.position,
            reason: r.reason.to_string(),
            raw: r.raw.to_string(),
        }));
        let Some(table) = self.tables.get(batch.table as usize) else {
            return Err(format!(
                "the plugin sent rows for table #{}, but declared {} tables",
                batch.table,
                self.tables.len()
            ));
        };
        let width = table.columns.len();
        if batch.width as usize != width || (width > 0 && !batch.values.len().is_multiple_of(width)) {
            return Err(format!(
                "the plugin sent {} values in rows of {} for table {} of {width} columns",
                batch.values.len(),
                batch.width,
                table.name
            ));
        }
        for values in batch.values.chunks(width.max(1)) {
            match check_row(table, values) {
                Ok(()) => self.rows.push(TestRow {
                    table: table.name.to_string(),
                    values: values.to_vec(),
                }),
                Err(reason) => self.rejected.push(Rejected {
                    position: 0,
                    reason: format!(
                        "the plugin produced a row that does not fit table {}: {reason}",
                        table.name
                    ),
                    raw: values.iter().map(|v| format!("{v:?}")).collect::<Vec<_>>().join(","),
                }),
            }
        }
        Ok(())
    }
}

extern "C" fn collect(context: *mut c_void, batch: &RowBatch) -> RResult<(), RString> {
    // SAFETY: `Collector::sink` passes the collector, which outlives the plugin call.
    let collector = unsafe { &mut *(context as *mut Collector) };
    match collector.take(batch) {
        Ok(()) => ROk(()),
        Err(e) => RErr(e.into()),
    }
}

extern "C" fn read_bytes(context: *mut c_void, mut buffer: RSliceMut<'_, u8>) -> RResult<usize, RString> {
    // SAFETY: `run_batch` passes a `&mut &[u8]` that outlives the plugin call.
    let reader = unsafe { &mut *(context as *mut &[u8]) };
    let n = reader.len().min(buffer.len());
    buffer[..n].copy_from_slice(&reader[..n]);
    *reader = &reader[n..];
    ROk(n)
}
