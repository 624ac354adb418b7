//! client1's stream plugin: each message is one RuuviTag reading as a JSON object with the CSV
//! header's keys. The wrangling is in `client1_readings`; a malformed message is rejected at
//! its offset and the rest of the batch goes on.

use client1_readings::{ReadingRow, TENANT, push_json_bytes, readings_table};
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
            push_json_bytes(out, self.table, message.offset, message.payload())?;
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

    /// The plugin as it was before the typed fast path: every message through a
    /// `serde_json::Value`.
    struct ThroughValues {
        table: Table<ReadingRow>,
    }

    impl StreamIngestApp for ThroughValues {
        const TENANT: &'static str = TENANT;

        fn tables() -> Vec<TableSpec> {
            vec![readings_table()]
        }

        fn open(_info: &StreamInfo) -> Result<Self, PluginError> {
            Ok(ThroughValues {
                table: Table::find(&Self::tables())?,
            })
        }

        fn process(&mut self, messages: &[Message<'_>], out: &mut Output) -> Result<(), PluginError> {
            for message in messages {
                let text = String::from_utf8_lossy(message.payload());
                match serde_json::from_str::<serde_json::Value>(&text) {
                    Ok(value) => client1_readings::push_json(out, self.table, message.offset, &value, &text)?,
                    Err(e) => out.reject(message.offset, format!("not valid JSON: {e}"), &text)?,
                }
            }
            Ok(())
        }
    }

    #[test]
    fn the_typed_path_stores_and_rejects_exactly_what_the_value_path_did() {
        let good = r#"{"time":1541023215496,"readable_time":"2018-10-31T22:00:15.496Z","acceleration":1.0,"acceleration_x":-12,"acceleration_y":4.5,"acceleration_z":1000,"battery":2700,"humidity":29.5,"pressure":1000.5,"temperature":20.25,"dev-id":"EA:1F"}"#;
        let variants = [
            good.to_string(),
            good.replace(r#""humidity":29.5"#, r#""humidity":null"#),
            good.replace(r#""pressure":1000.5,"#, ""),
            good.replace(r#""dev-id":"EA:1F""#, r#""dev-id":"E\u0041:1F""#),
            good.replace(r#""dev-id":"EA:1F""#, r#""dev-id":"  ""#),
            good.replace(r#""dev-id":"EA:1F""#, r#""dev-id":"EA:1F","dev-id":"B""#),
            good.replacen('{', r#"{"extra":[1,{"a":2}],"#, 1),
            good.replace("1541023215496", "1541023215496.5"),
            good.replace("1541023215496", r#""1541023215496""#),
            good.replace(r#""battery":2700,"#, ""),
            good.replace(r#""battery":2700"#, r#""battery":"low""#),
            good.replace(r#""humidity":29.5"#, r#""humidity":120"#),
            good.replace(".496Z", ".497Z"),
            good.replace("EA:1F", "EA\u{e9}:1F"),
            "[1,2]".to_string(),
            "null".to_string(),
            "{not json".to_string(),
            String::new(),
        ];
        let mut messages: Vec<Vec<u8>> = variants.iter().map(|v| v.clone().into_bytes()).collect();
        let mut invalid_utf8 = good.as_bytes().to_vec();
        let at = good.find("EA:1F").unwrap();
        invalid_utf8[at] = 0xff;
        messages.push(invalid_utf8);
        let messages: Vec<&[u8]> = messages.iter().map(Vec::as_slice).collect();
        let typed = testing::run_stream::<Client1Stream>(&messages);
        let values = testing::run_stream::<ThroughValues>(&messages);
        typed.result.as_ref().unwrap();
        assert_eq!(typed.rows_of("readings"), values.rows_of("readings"));
        assert_eq!(typed.rejected, values.rejected);
        assert_eq!(typed.rows_of("readings").len(), 8, "{}", typed.summary());
    }
}
