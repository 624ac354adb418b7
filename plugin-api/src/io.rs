//! The plugin's side of the data path: [`Input`] reads the staged file, [`Output`] batches rows
//! and rejected records and hands them to the host.

use std::io;

use abi_stable::std_types::{RErr, ROk, RSliceMut, RString, RVec};

use crate::PluginError;
use crate::ffi::{ByteSource, RejectedRow, RowBatch, RowSink, TableSpec, Value};

/// The longest `raw` text kept for a rejected record; longer input is cut at a char boundary.
pub const MAX_REJECTED_RAW_BYTES: usize = 4096;

/// The file a batch plugin ingests, as a [`std::io::Read`].
///
/// The host streams the file: memory does not grow with its size. Wrap it in a
/// [`std::io::BufReader`] to read lines, or hand it to a CSV or JSON reader directly.
pub struct Input {
    source: ByteSource,
}

impl Input {
    pub(crate) fn new(source: ByteSource) -> Self {
        Input { source }
    }
}

impl io::Read for Input {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match (self.source.read)(self.source.context, RSliceMut::from_mut_slice(buf)) {
            ROk(n) => Ok(n),
            RErr(message) => Err(io::Error::other(message.into_string())),
        }
    }
}

/// Identifies one of the plugin's tables in [`Output::push_row`]: the table's position in the
/// list its `tables()` returns. [`Output::table`] looks one up by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableId(pub u32);

impl TableId {
    /// The id of the table named `name` among `tables` (what the plugin's `tables()` returns):
    /// how a stream plugin resolves its tables once, in `open`. For a typed row, use
    /// [`Table::find`](crate::Table::find).
    pub fn find(tables: &[TableSpec], name: &str) -> Result<TableId, PluginError> {
        tables
            .iter()
            .position(|t| t.name.as_str() == name)
            .map(|i| TableId(i as u32))
            .ok_or_else(|| PluginError::internal(format!("no table named {name:?} is declared")))
    }
}

struct PendingTable {
    name: RString,
    width: u32,
    values: RVec<Value>,
}

/// Where a plugin puts its rows and its rejected records.
///
/// Rows are buffered per table and handed to the host in batches (never one call per row);
/// the host may block in that call while storage catches up, which is how backpressure
/// reaches the plugin. When a push returns an error, stop and return it.
pub struct Output {
    sink: RowSink,
    batch_rows: usize,
    tables: Vec<PendingTable>,
    rejected: RVec<RejectedRow>,
    rows_pushed: u64,
    specs: Vec<TableSpec>,
    scratch: Vec<Value>,
}

impl Output {
    pub(crate) fn new(sink: RowSink, tables: &[TableSpec], batch_rows: u32) -> Self {
        let batch_rows = batch_rows.clamp(1, 1 << 20) as usize;
        Output {
            sink,
            batch_rows,
            tables: tables
                .iter()
                .map(|t| PendingTable {
                    name: t.name.clone(),
                    width: t.columns.len() as u32,
                    values: RVec::new(),
                })
                .collect(),
            rejected: RVec::new(),
            rows_pushed: 0,
            specs: tables.to_vec(),
            scratch: Vec::new(),
        }
    }

    /// The declared tables.
    pub(crate) fn specs(&self) -> &[TableSpec] {
        &self.specs
    }

    pub(crate) fn take_scratch(&mut self) -> Vec<Value> {
        std::mem::take(&mut self.scratch)
    }

    pub(crate) fn return_scratch(&mut self, scratch: Vec<Value>) {
        self.scratch = scratch;
    }

    /// The id of the table named `name`.
    pub fn table(&self, name: &str) -> Result<TableId, PluginError> {
        TableId::find(&self.specs, name)
    }

    /// Adds one row to `table`: one value per column, in declaration order.
    pub fn push_row<const N: usize>(&mut self, table: TableId, row: [Value; N]) -> Result<(), PluginError> {
        self.push_row_iter(table, row)
    }

    /// Like [`push_row`](Self::push_row), for rows built at run time.
    pub fn push_row_iter(&mut self, table: TableId, row: impl IntoIterator<Item = Value>) -> Result<(), PluginError> {
        let batch_rows = self.batch_rows;
        let Some(pending) = self.tables.get_mut(table.0 as usize) else {
            return Err(PluginError::internal(format!("table id {} is not declared", table.0)));
        };
        let before = pending.values.len();
        pending.values.extend(row);
        let pushed = pending.values.len() - before;
        if pushed != pending.width as usize {
            pending.values.truncate(before);
            return Err(PluginError::internal(format!(
                "a row for table {:?} has {pushed} values; the table has {} columns",
                pending.name.as_str(),
                pending.width
            )));
        }
        self.rows_pushed += 1;
        if pending.values.len() >= batch_rows * pending.width as usize {
            self.flush_table(table.0 as usize)?;
        }
        Ok(())
    }

    /// Records an input record that cannot become a row: it counts in `rows_failed` and is kept
    /// for the tenant with `position` (1-based line number, or message offset), `reason` and
    /// the raw input.
    pub fn reject(&mut self, position: u64, reason: impl Into<String>, raw: &str) -> Result<(), PluginError> {
        self.rejected.push(RejectedRow {
            position,
            reason: reason.into().into(),
            raw: truncate_at_char_boundary(raw, MAX_REJECTED_RAW_BYTES).into(),
        });
        if self.rejected.len() >= self.batch_rows {
            self.flush_table(0)?;
        }
        Ok(())
    }

    /// Rows pushed so far (all tables).
    pub fn rows_pushed(&self) -> u64 {
        self.rows_pushed
    }

    /// Hands every buffered row and rejected record to the host. Called for you when the
    /// plugin function returns `Ok`.
    pub fn flush(&mut self) -> Result<(), PluginError> {
        for index in 0..self.tables.len() {
            if !self.tables[index].values.is_empty() {
                self.flush_table(index)?;
            }
        }
        if !self.rejected.is_empty() {
            self.flush_table(0)?;
        }
        Ok(())
    }

    fn flush_table(&mut self, index: usize) -> Result<(), PluginError> {
        let Some(pending) = self.tables.get_mut(index) else {
            return Err(PluginError::internal(
                "rejected records need at least one declared table",
            ));
        };
        let batch = RowBatch {
            table: index as u32,
            width: pending.width,
            values: std::mem::take(&mut pending.values),
            rejected: std::mem::take(&mut self.rejected),
        };
        let result = (self.sink.emit)(self.sink.context, &batch);
        // The host copied what it needed: keep the allocations for the next batch.
        let RowBatch {
            mut values,
            mut rejected,
            ..
        } = batch;
        values.clear();
        rejected.clear();
        pending.values = values;
        self.rejected = rejected;
        match result {
            ROk(()) => Ok(()),
            RErr(message) => Err(PluginError::cancelled(message.into_string())),
        }
    }
}

fn truncate_at_char_boundary(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ffi::ColumnType;
    use std::ffi::c_void;

    #[derive(Default)]
    struct Collected {
        rows: Vec<Vec<Value>>,
        rejected: Vec<RejectedRow>,
        calls: usize,
    }

    extern "C" fn collect(context: *mut c_void, batch: &RowBatch) -> abi_stable::std_types::RResult<(), RString> {
        // SAFETY: the tests below pass a `&mut Collected` as the context.
        let collected = unsafe { &mut *(context as *mut Collected) };
        collected.calls += 1;
        for row in batch.values.chunks(batch.width as usize) {
            collected.rows.push(row.to_vec());
        }
        collected.rejected.extend(batch.rejected.iter().cloned());
        ROk(())
    }

    fn table() -> TableSpec {
        TableSpec::new("t")
            .column("a", ColumnType::BigInt)
            .nullable_column("b", ColumnType::Text)
            .partition_key(&["a"])
    }

    #[test]
    fn rows_leave_in_batches_and_the_rest_on_flush() {
        let mut collected = Collected::default();
        let sink = RowSink {
            context: &mut collected as *mut Collected as *mut c_void,
            emit: collect,
        };
        let mut out = Output::new(sink, &[table()], 2);
        let t = out.table("t").unwrap();
        for i in 0..5 {
            out.push_row(t, [Value::BigInt(i), Value::Null]).unwrap();
        }
        out.reject(7, "bad", "x,y").unwrap();
        out.flush().unwrap();
        assert_eq!(collected.rows.len(), 5);
        assert_eq!(collected.calls, 3);
        assert_eq!(collected.rejected[0].position, 7);
    }

    #[test]
    fn a_row_of_the_wrong_width_is_an_error_and_is_not_kept() {
        let mut collected = Collected::default();
        let sink = RowSink {
            context: &mut collected as *mut Collected as *mut c_void,
            emit: collect,
        };
        let mut out = Output::new(sink, &[table()], 10);
        let err = out.push_row(TableId(0), [Value::BigInt(1)]).unwrap_err();
        assert!(err.message.contains("has 1 values"));
        out.flush().unwrap();
        assert!(collected.rows.is_empty());
        assert!(out.table("nope").is_err());
    }

    #[test]
    fn raw_text_is_cut_at_a_char_boundary() {
        let s = "é".repeat(MAX_REJECTED_RAW_BYTES);
        let cut = truncate_at_char_boundary(&s, MAX_REJECTED_RAW_BYTES + 1);
        assert_eq!(cut.len(), MAX_REJECTED_RAW_BYTES);
    }
}
