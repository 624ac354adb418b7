//! The rows a file becomes: the example tenants' own wrangling (the crates their plugins use),
//! run in this process, so a baseline inserts exactly what the platform stores.

use std::path::Path;

use anyhow::Context;
use mysimbdp::coredms::{TableSchema, Value};
use plugin_api::ffi::{Manifest, PluginKind};

/// A data set: its file, its table and its rows (flattened, row-major).
pub struct DataSet {
    /// The generated file.
    pub file_bytes: u64,
    /// The table the rows belong to.
    pub table: TableSchema,
    /// Row-major values.
    pub values: Vec<Value>,
}

impl DataSet {
    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.values.len() / self.table.columns.len()
    }
}

fn schema(spec: plugin_api::TableSpec) -> anyhow::Result<TableSchema> {
    let manifest = Manifest {
        tenant: "bench".into(),
        kind: PluginKind::Batch,
        file_types: vec!["csv".into()].into(),
        api_version: plugin_api::API_VERSION,
        plugin_version: "bench".into(),
        tables: vec![spec].into(),
    };
    let manifest = mysimbdp::plugin_host::convert_manifest(&manifest).map_err(anyhow::Error::msg)?;
    Ok(manifest.tables.into_iter().next().expect("one table"))
}

/// A typed row's values in host memory.
fn host_values(row: impl plugin_api::Row) -> impl Iterator<Item = Value> {
    let mut values = Vec::new();
    row.push_values(&mut values);
    values.into_iter().map(|v| mysimbdp::plugin_host::rows::host_value(&v))
}

/// client1 CSV → `readings` rows.
pub fn client1_csv(path: &Path) -> anyhow::Result<DataSet> {
    let table = schema(client1_readings::readings_table())?;
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .from_path(path)
        .context("opening the CSV")?;
    let header: Vec<String> = reader.headers()?.iter().map(str::to_string).collect();
    let columns = client1_readings::CsvColumns::from_header(header.iter().map(String::as_str))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut values = Vec::new();
    for record in reader.records() {
        let record = record?;
        if let Ok(row) = columns.reading(|i| record.get(i)).and_then(|r| r.into_row()) {
            values.extend(host_values(row));
        }
    }
    Ok(DataSet {
        file_bytes: std::fs::metadata(path)?.len(),
        table,
        values,
    })
}

/// client2 txt → `invocations` rows.
pub fn client2_txt(path: &Path) -> anyhow::Result<DataSet> {
    let table = schema(client2_invocations::invocations_table())?;
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .from_path(path)
        .context("opening the trace")?;
    let mut values = Vec::new();
    for record in reader.records() {
        let record = record?;
        let fields: Vec<&str> = record.iter().collect();
        if let Ok(row) = client2_invocations::row_from_text(&fields) {
            values.extend(host_values(row));
        }
    }
    Ok(DataSet {
        file_bytes: std::fs::metadata(path)?.len(),
        table,
        values,
    })
}

/// client1 JSON messages → `readings` rows (what client1's stream plugin stores).
pub fn client1_messages(messages: &[Vec<u8>]) -> anyhow::Result<DataSet> {
    let table = schema(client1_readings::readings_table())?;
    let mut values = Vec::new();
    let mut bytes = 0;
    for message in messages {
        bytes += message.len() as u64;
        let value: serde_json::Value = serde_json::from_slice(message)?;
        let row = client1_readings::reading_from_json(&value)
            .and_then(|r| r.into_row())
            .map_err(anyhow::Error::msg)?;
        values.extend(host_values(row));
    }
    Ok(DataSet {
        file_bytes: bytes,
        table,
        values,
    })
}
