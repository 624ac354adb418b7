//! client1's stream plugin: each message is one RuuviTag reading as a JSON object with the CSV
//! header's keys. The wrangling is in `client1_readings`; a malformed message is rejected at
//! its offset and the rest of the batch goes on.

use client1_readings::{TENANT, push_json, readings_table};
use plugin_api::{Message, Output, PluginError, StreamInfo, StreamIngestApp, TableId, TableSpec, export_plugin};

/// One instance.
pub struct Client1Stream {
    table: TableId,
}

impl StreamIngestApp for Client1Stream {
    const TENANT: &'static str = TENANT;

    fn tables() -> Vec<TableSpec> {
        vec![readings_table()]
    }

    fn open(_info: &StreamInfo) -> Result<Self, PluginError> {
        Ok(Client1Stream { table: TableId(0) })
    }

    fn process(&mut self, messages: &[Message<'_>], out: &mut Output) -> Result<(), PluginError> {
        for message in messages {
            let text = String::from_utf8_lossy(message.payload());
            match serde_json::from_str::<serde_json::Value>(&text) {
                Ok(value) => push_json(out, self.table, message.offset, &value, &text)?,
                Err(e) => out.reject(message.offset, format!("not valid JSON: {e}"), &text)?,
            }
        }
        Ok(())
    }
}

export_plugin!(stream: Client1Stream);
