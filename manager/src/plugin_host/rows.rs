//! Rows crossing back from a plugin: each batch is copied into host values and every row is
//! checked against its table before it goes near storage. A row that does not fit is counted
//! as failed, never stored.

use std::sync::Arc;

use plugin_api::ffi::RowBatch;

use crate::schema::{Rows, TableSchema, Value};

/// A rejected input record or an unfit row, in host memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectedRecord {
    /// Line (file) or offset (message); 0 when the plugin gave none.
    pub position: u64,
    /// Why.
    pub reason: String,
    /// The raw input, or the row's values for an unfit row.
    pub raw: String,
}

/// A batch in host memory.
#[derive(Debug)]
pub struct HostBatch {
    /// Rows that fit their table.
    pub rows: Rows,
    /// Records the plugin rejected and rows that did not fit.
    pub rejected: Vec<RejectedRecord>,
}

/// Copies `batch` (owned by the plugin) into host values, checking each row against `tables`
/// (the version's declared tables, by index). `Err` means the batch itself is malformed.
pub fn convert_batch(batch: &RowBatch, tables: &[Arc<TableSchema>]) -> Result<HostBatch, String> {
    let table = tables.get(batch.table as usize).ok_or_else(|| {
        format!(
            "the plugin sent rows for table #{}, but declared {} tables",
            batch.table,
            tables.len()
        )
    })?;
    let width = table.columns.len();
    if batch.width as usize != width || (width > 0 && !batch.values.len().is_multiple_of(width)) {
        return Err(format!(
            "the plugin sent {} values in rows of {} for table {} of {width} columns",
            batch.values.len(),
            batch.width,
            table.name
        ));
    }
    let mut rows = Rows::new(Arc::clone(table));
    rows.values.reserve(batch.values.len());
    let mut rejected: Vec<RejectedRecord> = batch
        .rejected
        .iter()
        .map(|r| RejectedRecord {
            position: r.position,
            reason: r.reason.to_string(),
            raw: r.raw.to_string(),
        })
        .collect();
    let mut row = Vec::with_capacity(width);
    for values in batch.values.chunks(width.max(1)) {
        row.clear();
        row.extend(values.iter().map(host_value));
        match table.check_row(&row) {
            Ok(()) => rows.values.append(&mut row),
            Err(reason) => rejected.push(RejectedRecord {
                position: 0,
                reason: format!(
                    "the plugin produced a row that does not fit table {}: {reason}",
                    table.name
                ),
                raw: row.iter().map(ToString::to_string).collect::<Vec<_>>().join(","),
            }),
        }
    }
    Ok(HostBatch { rows, rejected })
}

/// A plugin value copied into a host value.
pub fn host_value(v: &plugin_api::Value) -> Value {
    match v {
        plugin_api::Value::Null => Value::Null,
        plugin_api::Value::Text(s) => Value::Text(s.as_str().to_owned()),
        plugin_api::Value::BigInt(n) => Value::BigInt(*n),
        plugin_api::Value::Int(n) => Value::Int(*n),
        plugin_api::Value::Double(n) => Value::Double(*n),
        plugin_api::Value::Boolean(b) => Value::Boolean(*b),
        plugin_api::Value::Timestamp(ms) => Value::Timestamp(*ms),
        plugin_api::Value::Blob(b) => Value::Blob(b.as_slice().to_vec()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{Column, ColumnType};
    use abi_stable::std_types::RVec;

    fn table() -> Arc<TableSchema> {
        Arc::new(TableSchema {
            name: "t".into(),
            columns: vec![
                Column {
                    name: "k".into(),
                    column_type: ColumnType::BigInt,
                    nullable: false,
                },
                Column {
                    name: "v".into(),
                    column_type: ColumnType::Text,
                    nullable: true,
                },
            ],
            partition_key: vec!["k".into()],
            clustering_key: vec![],
        })
    }

    #[test]
    fn unfit_rows_are_rejected_and_fit_rows_kept() {
        let batch = RowBatch {
            table: 0,
            width: 2,
            values: RVec::from(vec![
                plugin_api::Value::BigInt(1),
                plugin_api::Value::text("a"),
                plugin_api::Value::Null,
                plugin_api::Value::text("b"),
            ]),
            rejected: RVec::new(),
        };
        let host = convert_batch(&batch, &[table()]).unwrap();
        assert_eq!(host.rows.len(), 1);
        assert_eq!(host.rejected.len(), 1);
        assert!(
            host.rejected[0].reason.contains("column k"),
            "{}",
            host.rejected[0].reason
        );
    }

    #[test]
    fn rows_are_checked_as_the_sdks_test_harness_checks_them() {
        use plugin_api::{ColumnType as T, Value as V};
        let spec = plugin_api::TableSpec::new("t")
            .column("k", T::BigInt)
            .nullable_column("v", T::Text)
            .column("at", T::Timestamp)
            .partition_key(&["k"]);
        let manifest = plugin_api::ffi::Manifest {
            tenant: "lab".into(),
            kind: plugin_api::PluginKind::Batch,
            file_types: RVec::from(vec!["csv".into()]),
            api_version: plugin_api::API_VERSION,
            plugin_version: "1.0.0".into(),
            tables: RVec::from(vec![spec.clone()]),
        };
        let host_table = Arc::new(
            crate::plugin_host::manifest::convert_manifest(&manifest)
                .unwrap()
                .tables
                .remove(0),
        );
        let rows = [
            vec![V::BigInt(1), V::Null, V::Timestamp(5)],
            vec![V::BigInt(1), V::text("x"), V::BigInt(5)],
            vec![V::Null, V::text("x"), V::Timestamp(5)],
            vec![V::Int(1), V::text("x"), V::Timestamp(5)],
            vec![V::BigInt(1), V::Boolean(true), V::Timestamp(5)],
            vec![V::BigInt(1), V::text("x"), V::Null],
        ];
        for row in rows {
            let batch = RowBatch {
                table: 0,
                width: 3,
                values: RVec::from(row.clone()),
                rejected: RVec::new(),
            };
            let host = convert_batch(&batch, std::slice::from_ref(&host_table)).unwrap();
            let host_verdict = match host.rejected.first() {
                None => Ok(()),
                Some(r) => Err(r.reason.clone()),
            };
            let sdk_verdict = plugin_api::testing::check_row(&spec, &row)
                .map_err(|reason| format!("the plugin produced a row that does not fit table t: {reason}"));
            assert_eq!(host_verdict, sdk_verdict, "{row:?}");
        }
    }

    #[test]
    fn a_batch_for_an_undeclared_table_is_an_error() {
        let batch = RowBatch {
            table: 3,
            width: 2,
            values: RVec::new(),
            rejected: RVec::new(),
        };
        assert!(convert_batch(&batch, &[table()]).unwrap_err().contains("table #3"));
    }
}
