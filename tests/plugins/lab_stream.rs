// The lab stream test plugin: tenant `lab`, built twice (lab_stream_v1 and lab_stream_v2) so
// tests can replace one version with another under running instances. Each message is a line of
// text, or a JSON string holding one (as the message API takes JSON):
// - `key,number` → a row (key, number, the plugin version, the instance id, the instance's
//   message count so far);
// - `PANIC` → panics (the whole batch fails); `ERROR` → the batch fails with an error;
// - `SLEEP ms` → sleeps (a slow plugin), `SLEEP ms key,n` sleeps, then is that row; `REJECT` → rejected with a reason;
// - anything else → rejected with a reason.
// Every batch touches a thread-local with a destructor, which pins a library that is called
// from a thread that outlives its unload.

use std::cell::RefCell;

use plugin_api::{
    ColumnType, Message, Output, PluginError, StreamInfo, StreamIngestApp, TableId, TableSpec, Value, export_plugin,
};

thread_local! {
    static BATCHES_ON_THIS_THREAD: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
}

pub struct LabStream {
    instance: String,
    seen: i64,
    table: TableId,
}

impl StreamIngestApp for LabStream {
    const TENANT: &'static str = "lab";

    fn tables() -> Vec<TableSpec> {
        vec![TableSpec::new("events")
            .column("key", ColumnType::Text)
            .column("number", ColumnType::BigInt)
            .column("version", ColumnType::Text)
            .column("instance", ColumnType::Text)
            .column("seen", ColumnType::BigInt)
            .partition_key(&["key"])]
    }

    fn open(info: &StreamInfo) -> Result<Self, PluginError> {
        Ok(LabStream {
            instance: info.instance_id.to_string(),
            seen: 0,
            table: TableId(0),
        })
    }

    fn process(&mut self, messages: &[Message<'_>], out: &mut Output) -> Result<(), PluginError> {
        BATCHES_ON_THIS_THREAD.with(|b| b.borrow_mut().push(1));
        for message in messages {
            let text = String::from_utf8_lossy(message.payload()).trim().to_string();
            let text = match text.strip_prefix('"').and_then(|t| t.strip_suffix('"')) {
                Some(inner) => inner.to_string(),
                None => text,
            };
            self.seen += 1;
            // `SLEEP ms key,n`: a slow message that is also a row.
            let text = match text.strip_prefix("SLEEP ").and_then(|rest| rest.split_once(' ')) {
                Some((ms, row)) => {
                    std::thread::sleep(std::time::Duration::from_millis(ms.parse().unwrap_or(0)));
                    row.to_string()
                }
                None => text,
            };
            match text.as_str() {
                "PANIC" => panic!("the lab stream plugin {LAB_VERSION} was asked to panic"),
                "ERROR" => return Err(PluginError::internal(format!("the lab stream plugin {LAB_VERSION} was asked to fail"))),
                sleep if sleep.starts_with("SLEEP ") => {
                    let ms: u64 = sleep[6..].parse().unwrap_or(0);
                    std::thread::sleep(std::time::Duration::from_millis(ms));
                }
                other => match other.split_once(',').map(|(k, n)| (k, n.parse::<i64>())) {
                    Some((key, Ok(n))) => out.push_row(
                        self.table,
                        [
                            Value::text(key),
                            Value::BigInt(n),
                            Value::text(LAB_VERSION),
                            Value::text(&self.instance),
                            Value::BigInt(self.seen),
                        ],
                    )?,
                    _ => out.reject(message.offset, "expected key,number", other)?,
                },
            }
        }
        Ok(())
    }
}

export_plugin!(stream: LabStream);
