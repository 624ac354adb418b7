//! client1's stream plugin: each message is one RuuviTag reading as a JSON object with the CSV
//! header's keys. The wrangling is in `client1_readings`; a malformed message is rejected at
//! its offset and the rest of the batch goes on.

use client1_readings::{ReadingRow, TENANT, push_json, readings_table};
use plugin_api::{Message, Output, PluginError, StreamInfo, StreamIngestApp, Table, TableSpec, export_plugin};

/// One instance.
pub struct Client1Stream {
    table: Table<ReadingRow>,
}

impl StreamIngestApp for Client1Stream {
    const TENANT: &'static str = TENANT;

    fn tables() -> Vec<TableSpec> {
        vec![readings_table()]
    }

    fn open(_info: &StreamInfo) -> Result<Self, PluginError> {
        Ok(Client1Stream {
            table: Table::find(&Self::tables())?,
        })
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

#[cfg(test)]
mod tests {
    use super::*;
    use plugin_api::testing;

    #[test]
    fn each_message_is_a_row_or_a_rejected_offset() {
        let good = br#"{"time":1541023215496,"readable_time":"2018-10-31T22:00:15.496Z","acceleration":1.0,"acceleration_x":0,"acceleration_y":0,"acceleration_z":1000,"battery":2700,"humidity":null,"pressure":1000.5,"temperature":20.25,"dev-id":"a"}"#;
        let outcome = testing::run_stream::<Client1Stream>(&[good, b"{not json", br#"{"time":"x"}"#]);
        outcome.result.as_ref().unwrap();
        assert_eq!(outcome.rows_of("readings").len(), 1, "{}", outcome.summary());
        let offsets: Vec<u64> = outcome.rejected.iter().map(|r| r.position).collect();
        assert_eq!(offsets, [1, 2]);
    }
}
