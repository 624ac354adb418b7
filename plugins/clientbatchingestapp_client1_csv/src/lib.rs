//! client1's batch plugin for `csv` files of RuuviTag readings (the seed's header, columns in
//! any order). The wrangling is in `client1_readings`.

use client1_readings::{CsvColumns, ReadingRow, TENANT, readings_table};
use plugin_api::{
    BatchIngestApp, CappedLines, DEFAULT_MAX_LINE_BYTES, FileInfo, Input, Output, PluginError, TableSpec, export_plugin,
};

/// The plugin.
pub struct Client1Csv;

impl BatchIngestApp for Client1Csv {
    const TENANT: &'static str = TENANT;
    const FILE_TYPES: &'static [&'static str] = &["csv"];

    fn tables() -> Vec<TableSpec> {
        vec![readings_table()]
    }

    fn ingest(_file: &FileInfo, input: &mut Input, out: &mut Output) -> Result<(), PluginError> {
        let table = out.table_of::<ReadingRow>()?;
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .buffer_capacity(256 * 1024)
            // A record longer than the cap is rejected, not held in memory.
            .from_reader(CappedLines::new(input, DEFAULT_MAX_LINE_BYTES));
        let mut record = csv::ByteRecord::new();
        if !reader.read_byte_record(&mut record).map_err(csv_error)? {
            return Err(PluginError::invalid_input("the file is empty: expected a header line"));
        }
        let header: Vec<String> = record.iter().map(|f| String::from_utf8_lossy(f).into_owned()).collect();
        let columns = CsvColumns::from_header(header.iter().map(String::as_str))?;
        while reader.read_byte_record(&mut record).map_err(csv_error)? {
            reader.get_mut().reject_long_lines(out)?;
            let line = record.position().map_or(0, |p| p.line());
            // One UTF-8 check for the whole record; a field is its range of that text (`get`
            // refuses a range that is not on character boundaries).
            let outcome = match std::str::from_utf8(record.as_slice()) {
                Ok(text) => columns
                    .reading(|i| record.range(i).and_then(|r| text.get(r)))
                    .and_then(|r| r.into_row()),
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
        other => PluginError::invalid_input(format!("unreadable CSV: {other:?}")),
    }
}

export_plugin!(batch: Client1Csv);

#[cfg(test)]
mod tests {
    use super::*;
    use plugin_api::{Value, testing};

    const HEADER: &str = "time,readable_time,acceleration,acceleration_x,acceleration_y,acceleration_z,battery,humidity,pressure,temperature,dev-id";

    #[test]
    fn a_file_becomes_rows_and_a_bad_line_is_rejected_with_its_number() {
        let file = format!(
            "{HEADER}\n\
             1541023215496,2018-10-31T22:00:15.496000Z,1031.07,-12,4,1032,2881,,1002.44,22.62,EA:1F:45:6A:F8:0D\n\
             1541023216496,2018-10-31T22:00:16.496000Z,1031.07,-12,4,1032,2881,29.5,1002.44,hot,EA:1F:45:6A:F8:0D\n"
        );
        let outcome = testing::run_batch::<Client1Csv>("sample.csv", file.as_bytes());
        outcome.result.as_ref().unwrap();
        let rows = outcome.rows_of("readings");
        assert_eq!(rows.len(), 1, "{}", outcome.summary());
        assert_eq!(rows[0][0], Value::text("ea:1f:45:6a:f8:0d"));
        assert_eq!(rows[0][10], Value::Null, "an empty humidity is a null");
        assert_eq!(outcome.rejected.len(), 1);
        assert_eq!(outcome.rejected[0].position, 3);
        assert!(
            outcome.rejected[0].reason.contains("temperature"),
            "{:?}",
            outcome.rejected
        );
    }

    #[test]
    fn a_file_without_the_header_fails_as_a_whole() {
        let outcome = testing::run_batch::<Client1Csv>("sample.csv", b"1,2,3\n");
        let error = outcome.result.unwrap_err();
        assert!(error.message.contains("the header has no"), "{error}");
    }
}
