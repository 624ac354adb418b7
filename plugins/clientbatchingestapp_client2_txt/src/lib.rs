//! client2's batch plugin for `txt` files of Azure Functions invocation traces: comma-separated
//! `app,func,end_timestamp,duration` with that header line. The wrangling is in
//! `client2_invocations`.

use client2_invocations::{Invocation, KEYS, TENANT, invocations_table, row_from_text};
use plugin_api::{
    BatchIngestApp, CappedLines, DEFAULT_MAX_LINE_BYTES, FileInfo, Input, Output, PluginError, TableSpec, export_plugin,
};

/// The plugin.
pub struct Client2Txt;

impl BatchIngestApp for Client2Txt {
    const TENANT: &'static str = TENANT;
    const FILE_TYPES: &'static [&'static str] = &["txt"];

    fn tables() -> Vec<TableSpec> {
        vec![invocations_table()]
    }

    fn ingest(_file: &FileInfo, input: &mut Input, out: &mut Output) -> Result<(), PluginError> {
        let table = out.table_of::<Invocation>()?;
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .buffer_capacity(256 * 1024)
            // A record longer than the cap is rejected, not held in memory.
            .from_reader(CappedLines::new(input, DEFAULT_MAX_LINE_BYTES));
        let mut record = csv::ByteRecord::new();
        if !reader.read_byte_record(&mut record).map_err(csv_error)? {
            return Err(PluginError::invalid_input(
                "the file is empty: expected the header line",
            ));
        }
        let header: Vec<String> = record
            .iter()
            .map(|f| String::from_utf8_lossy(f).trim().to_string())
            .collect();
        if header != KEYS {
            return Err(PluginError::invalid_input(format!(
                "the header is {:?}; expected {:?}",
                header.join(","),
                KEYS.join(",")
            )));
        }
        while reader.read_byte_record(&mut record).map_err(csv_error)? {
            reader.get_mut().reject_long_lines(out)?;
            let line = record.position().map_or(0, |p| p.line());
            let fields: Result<Vec<&str>, _> = record.iter().map(std::str::from_utf8).collect();
            let outcome = match &fields {
                Ok(fields) => row_from_text(fields),
                Err(_) => Err("the line is not valid UTF-8".to_string()),
            };
            match outcome {
                Ok(row) => out.push(table, row)?,
                Err(reason) => {
                    let raw: Vec<String> = record.iter().map(|f| String::from_utf8_lossy(f).into_owned()).collect();
                    out.reject(line, reason, &raw.join(","))?;
                }
            }
        }
        reader.get_mut().reject_long_lines(out)
    }
}

fn csv_error(error: csv::Error) -> PluginError {
    match error.into_kind() {
        csv::ErrorKind::Io(io) => PluginError::from(io),
        other => PluginError::invalid_input(format!("unreadable text: {other:?}")),
    }
}

export_plugin!(batch: Client2Txt);
