// The lab test plugin: tenant `lab`, batch, file type `csv`, built several times
// (lab_plugin_v1, _v2, _v3, _retyped) so that tests can replace one version with another. Its
// `items` table depends on LAB_VARIANT: "plain"; "note" adds a nullable `note` column (schema
// evolution); "text_number" is "note" with `number` declared as text (a change that cannot be
// applied). Each line of its input:
// - `key,number` → a row (key, number, the plugin version, the calling thread's call count);
// - `PANIC` → panics; `ERROR` → fails the file; `SLEEP ms` → sleeps;
// - `WAIT path` → waits (at most 60 s) until the file `path` exists (work in flight);
// - `SIGNAL path` → creates the file `path` (the call has started);
// - anything else → rejected with a reason.
// Every call touches a thread-local with a destructor, which pins a library that is called
// from a thread that outlives its unload.

use std::cell::RefCell;
use std::io::{BufRead, BufReader};

use plugin_api::{BatchIngestApp, ColumnType, FileInfo, Input, Output, PluginError, TableSpec, Value, export_plugin};

thread_local! {
    static CALLS_ON_THIS_THREAD: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
}

pub struct Lab;

impl BatchIngestApp for Lab {
    const TENANT: &'static str = "lab";
    const FILE_TYPES: &'static [&'static str] = &["csv"];

    fn tables() -> Vec<TableSpec> {
        let number = if LAB_VARIANT == "text_number" { ColumnType::Text } else { ColumnType::BigInt };
        let items = TableSpec::new("items")
            .column("key", ColumnType::Text)
            .column("number", number)
            .column("version", ColumnType::Text)
            .column("thread_calls", ColumnType::BigInt);
        let items = if LAB_VARIANT == "plain" { items } else { items.nullable_column("note", ColumnType::Text) };
        vec![items.partition_key(&["key"])]
    }

    fn ingest(_file: &FileInfo, input: &mut Input, out: &mut Output) -> Result<(), PluginError> {
        let calls = CALLS_ON_THIS_THREAD.with(|c| {
            let mut c = c.borrow_mut();
            c.push(1);
            c.len() as i64
        });
        let table = out.table("items")?;
        for (index, line) in BufReader::new(input).lines().enumerate() {
            let line = line?;
            let number = index as u64 + 1;
            match line.trim() {
                "PANIC" => panic!("the lab plugin {LAB_VERSION} was asked to panic"),
                "ERROR" => return Err(PluginError::internal(format!("the lab plugin {LAB_VERSION} was asked to fail"))),
                sleep if sleep.starts_with("SLEEP ") => {
                    let ms: u64 = sleep[6..].parse().unwrap_or(0);
                    std::thread::sleep(std::time::Duration::from_millis(ms));
                }
                signal if signal.starts_with("SIGNAL ") => {
                    let _ = std::fs::write(&signal[7..], "");
                }
                wait if wait.starts_with("WAIT ") => {
                    let path = std::path::Path::new(&wait[5..]);
                    for _ in 0..6000 {
                        if path.exists() {
                            break;
                        }
                        std::thread::sleep(std::time::Duration::from_millis(10));
                    }
                }
                "" => {}
                other => match other.split_once(',').map(|(k, n)| (k, n.parse::<i64>())) {
                    Some((key, Ok(n))) => {
                        let number = if LAB_VARIANT == "text_number" { Value::from(n.to_string()) } else { Value::BigInt(n) };
                        let mut row = vec![Value::text(key), number, Value::text(LAB_VERSION), Value::BigInt(calls)];
                        if LAB_VARIANT != "plain" {
                            row.push(Value::from(format!("note of {key}")));
                        }
                        out.push_row_iter(table, row)?
                    }
                    _ => out.reject(number, "expected key,number", other)?,
                },
            }
        }
        Ok(())
    }
}

export_plugin!(batch: Lab);
