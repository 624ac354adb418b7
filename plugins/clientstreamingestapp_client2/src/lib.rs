//! client2's stream plugin: each message is one invocation record as a JSON object
//! `{"app", "func", "end_timestamp", "duration"}` (seconds as numbers or decimal strings). The
//! wrangling is in `client2_invocations`.

use client2_invocations::{Invocation, TENANT, invocations_table, push_json};
use plugin_api::{Message, Output, PluginError, StreamInfo, StreamIngestApp, Table, TableSpec, export_plugin};

/// One instance.
pub struct Client2Stream {
    table: Table<Invocation>,
}

impl StreamIngestApp for Client2Stream {
    const TENANT: &'static str = TENANT;

    fn tables() -> Vec<TableSpec> {
        vec![invocations_table()]
    }

    fn open(_info: &StreamInfo) -> Result<Self, PluginError> {
        Ok(Client2Stream {
            table: Table::find(&Self::tables())?,
        })
    }

    fn process(&mut self, messages: &[Message<'_>], out: &mut Output) -> Result<(), PluginError> {
        for message in messages {
            push_json(
                out,
                self.table,
                message.offset,
                &String::from_utf8_lossy(message.payload()),
            )?;
        }
        Ok(())
    }
}

export_plugin!(stream: Client2Stream);
