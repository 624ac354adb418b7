//! A well-formed plugin whose library initialiser aborts the process that loads it: dlopen runs
//! initialisers before any check, so only loading it in a child process first keeps a platform
//! alive. Never load it in a test's own process.

use plugin_api::{BatchIngestApp, ColumnType, FileInfo, Input, Output, PluginError, TableSpec, export_plugin};

extern "C" fn abort_on_load() {
    std::process::abort();
}

#[used]
#[unsafe(link_section = ".init_array")]
static ABORT_ON_LOAD: extern "C" fn() = abort_on_load;

pub struct Crashing;

impl BatchIngestApp for Crashing {
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

export_plugin!(batch: Crashing);
