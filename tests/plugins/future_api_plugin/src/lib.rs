//! A plugin built as if against the next plugin-api version: the host must refuse it before any
//! abi_stable check runs.

use plugin_api::{BatchIngestApp, ColumnType, FileInfo, Input, Output, PluginError, TableSpec, export_plugin};

pub struct Future;

impl BatchIngestApp for Future {
    const TENANT: &'static str = "lab";
    const FILE_TYPES: &'static [&'static str] = &["csv"];

    fn tables() -> Vec<TableSpec> {
        vec![
            TableSpec::new("items")
                .column("key", ColumnType::Text)
                .partition_key(&["key"]),
        ]
    }

    fn ingest(_: &FileInfo, _: &mut Input, _: &mut Output) -> Result<(), PluginError> {
        Ok(())
    }
}

export_plugin!(@api_version_for_tests plugin_api::API_VERSION + 1, batch: Future);
