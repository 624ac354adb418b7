//! `mysimbdp plugin new <tenant> <type|stream>`: writes a plugin crate that builds, passes its
//! own test and `mysimbdp plugin check --sample` out of the box: a typed row, a `csv`-crate
//! reader (batch) or a JSON message reader (stream), a reject path, a sample input and a test
//! that runs the plugin through `plugin_api::testing`. The crate builds against a copy of this
//! platform's `plugin-api` (written into `plugin-api/` beside its sources), so it needs nothing
//! but cargo and the registry.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use mysimbdp::plugin_host::PluginId;
use mysimbdp::tenants::TenantId;

/// This platform's `plugin-api` crate, file by file (a test checks that none is missing).
pub const PLUGIN_API_FILES: &[(&str, &str)] = &[
    ("Cargo.toml", include_str!("../../../plugin-api/Cargo.toml")),
    ("src/lib.rs", include_str!("../../../plugin-api/src/lib.rs")),
    ("src/export.rs", include_str!("../../../plugin-api/src/export.rs")),
    ("src/ffi.rs", include_str!("../../../plugin-api/src/ffi.rs")),
    ("src/io.rs", include_str!("../../../plugin-api/src/io.rs")),
    ("src/lines.rs", include_str!("../../../plugin-api/src/lines.rs")),
    ("src/schema.rs", include_str!("../../../plugin-api/src/schema.rs")),
    ("src/testing.rs", include_str!("../../../plugin-api/src/testing.rs")),
    ("src/time.rs", include_str!("../../../plugin-api/src/time.rs")),
    ("src/typed.rs", include_str!("../../../plugin-api/src/typed.rs")),
];

/// Writes the crate; prints what to do next.
pub fn run(tenant: &str, kind: &str, dir: Option<&Path>) -> anyhow::Result<()> {
    let written = write_crate(tenant, kind, dir)?;
    println!("wrote {}", written.display());
    println!("next:");
    println!("  cd {} && cargo test", written.display());
    println!("  cargo build --release");
    let sample = if kind == "stream" {
        "sample.ndjson"
    } else {
        &format!("sample.{kind}")
    };
    println!(
        "  mysimbdp plugin check target/release/lib{}.so --sample {sample}",
        crate_name(tenant, kind)
    );
    Ok(())
}

fn crate_name(tenant: &str, kind: &str) -> String {
    if kind == "stream" {
        format!("clientstreamingestapp_{tenant}")
    } else {
        format!("clientbatchingestapp_{tenant}_{kind}")
    }
}

/// Writes the crate into `dir` (default: `./<crate name>`), refusing to overwrite a folder that
/// is not empty. Returns the folder.
pub fn write_crate(tenant: &str, kind: &str, dir: Option<&Path>) -> anyhow::Result<PathBuf> {
    tenant
        .parse::<TenantId>()
        .map_err(|e| anyhow::anyhow!("{tenant:?} is not a tenant id: {e}"))?;
    if kind != "stream" && (kind.is_empty() || !kind.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())) {
        bail!("{kind:?} is not a file type: lower-case letters and digits (or `stream` for a stream plugin)");
    }
    let name = crate_name(tenant, kind);
    // The same rules as the platform's for a plugin's file name.
    PluginId::from_file_name(&format!("lib{name}.so")).map_err(|e| anyhow::anyhow!("{e}"))?;
    let dir = dir.map_or_else(|| PathBuf::from(&name), Path::to_path_buf);
    if dir.exists() && std::fs::read_dir(&dir).map(|mut d| d.next().is_some()).unwrap_or(true) {
        bail!("{} exists and is not empty", dir.display());
    }
    let stream = kind == "stream";
    let mut files: Vec<(String, String)> = PLUGIN_API_FILES
        .iter()
        .map(|(path, text)| (format!("plugin-api/{path}"), (*text).to_string()))
        .collect();
    let fill = |template: &str| {
        template
            .replace("{{crate}}", &name)
            .replace("{{tenant}}", tenant)
            .replace("{{type}}", kind)
            .replace("{{delimiter}}", if kind == "tsv" { "\\t" } else { "," })
            .replace("{{reader}}", if stream { "serde_json" } else { "csv" })
    };
    files.push(("Cargo.toml".into(), fill(CARGO)));
    files.push(("src/lib.rs".into(), fill(if stream { STREAM_LIB } else { BATCH_LIB })));
    if stream {
        files.push(("sample.ndjson".into(), STREAM_SAMPLE.into()));
    } else {
        let sample = if kind == "tsv" {
            BATCH_SAMPLE.replace(',', "\t")
        } else {
            BATCH_SAMPLE.to_string()
        };
        files.push((format!("sample.{kind}"), sample));
    }
    files.push((".gitignore".into(), "/target\nCargo.lock\n".into()));
    for (path, text) in files {
        let path = dir.join(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(dir)
}

const CARGO: &str = r#"[package]
name = "{{crate}}"
version = "0.1.0"                     # shown in reports as the plugin version
edition = "2024"

[lib]
crate-type = ["cdylib", "rlib"]       # cdylib: the plugin; rlib: its tests

[dependencies]
# A copy of the platform's plugin-api: replace it with the copy of the release you deploy to.
plugin-api = { path = "plugin-api" }
{{reader}} = "1"

# A crate of its own, even inside another cargo workspace.
[workspace]
"#;

const BATCH_SAMPLE: &str = "sensor,time,value,note
s1,2026-01-01T00:00:00Z,21.5,
s1,2026-01-01T00:01:00Z,21.7,door open
s2,2026-01-01T00:00:00Z,warm,
";

const STREAM_SAMPLE: &str = r#"{"sensor": "s1", "time": "2026-01-01T00:00:00Z", "value": 21.5}
{"sensor": "s1", "time": "2026-01-01T00:01:00Z", "value": 21.7, "note": "door open"}
{"sensor": "s2", "time": "2026-01-01T00:00:00Z", "value": "warm"}
"#;

const BATCH_LIB: &str = r#"//! {{crate}}: tenant {{tenant}}'s batch plugin for `{{type}}` files of sensor measurements,
//! `sensor,time,value,note` with a header line (see `sample.{{type}}`).
//!
//! Build it with `cargo build --release`, check it with
//! `mysimbdp plugin check target/release/lib{{crate}}.so --sample sample.{{type}}`, and copy
//! the `.so` into the platform's `plugins/` folder.

use plugin_api::{
    BatchIngestApp, CappedLines, DEFAULT_MAX_LINE_BYTES, FileInfo, Input, Output, PluginError, Row, TableSpec,
    Timestamp, export_plugin, row,
};

row! {
    /// One measurement of a sensor: a row of the table `measurements`. The key (sensor and
    /// time) comes from the data, so a file ingested twice stores each row once.
    pub struct Measurement in "measurements" {
        partition { sensor: String }
        clustering { time: Timestamp }
        columns { value: f64, note: Option<String> }
    }
}

/// The plugin.
pub struct App;

impl BatchIngestApp for App {
    const TENANT: &'static str = "{{tenant}}";
    const FILE_TYPES: &'static [&'static str] = &["{{type}}"];

    fn tables() -> Vec<TableSpec> {
        vec![Measurement::spec()]
    }

    fn ingest(_file: &FileInfo, input: &mut Input, out: &mut Output) -> Result<(), PluginError> {
        let table = out.table_of::<Measurement>()?;
        let mut reader = csv::ReaderBuilder::new()
            .delimiter(b'{{delimiter}}')
            .flexible(true)
            // A line longer than the cap is rejected, never held in memory.
            .from_reader(CappedLines::new(input, DEFAULT_MAX_LINE_BYTES));
        let mut record = csv::StringRecord::new();
        loop {
            match reader.read_record(&mut record) {
                Ok(true) => {}
                Ok(false) => break,
                Err(error) => {
                    let line = error.position().map_or(0, |p| p.line());
                    match error.kind() {
                        csv::ErrorKind::Utf8 { .. } => {
                            out.reject(line, "the line is not valid UTF-8", "")?;
                            continue;
                        }
                        csv::ErrorKind::Io(_) => return Err(PluginError::internal(error.to_string())),
                        _ => return Err(PluginError::invalid_input(format!("unreadable {{type}}: {error}"))),
                    }
                }
            }
            reader.get_mut().reject_long_lines(out)?;
            let line = record.position().map_or(0, |p| p.line());
            match measurement(&record) {
                Ok(row) => out.push(table, row)?,
                Err(reason) => {
                    let raw: Vec<&str> = record.iter().collect();
                    out.reject(line, reason, &raw.join(","))?;
                }
            }
        }
        reader.get_mut().reject_long_lines(out)
    }
}

/// One record as a row, or why not.
fn measurement(record: &csv::StringRecord) -> Result<Measurement, String> {
    let field = |i: usize| record.get(i).unwrap_or("").trim();
    let (sensor, time, value, note) = (field(0), field(1), field(2), field(3));
    if sensor.is_empty() {
        return Err("sensor is empty".into());
    }
    Ok(Measurement {
        sensor: sensor.to_string(),
        time: Timestamp::parse_iso8601(time).map_err(|e| format!("time: {e}"))?,
        value: value.parse().map_err(|_| format!("value: {value:?} is not a number"))?,
        note: (!note.is_empty()).then(|| note.to_string()),
    })
}

export_plugin!(batch: App);

#[cfg(test)]
mod tests {
    use super::*;
    use plugin_api::{Value, testing};

    #[test]
    fn the_sample_gives_two_rows_and_rejects_the_bad_line() {
        let outcome = testing::run_batch::<App>("sample.{{type}}", include_bytes!("../sample.{{type}}"));
        outcome.result.as_ref().unwrap();
        let rows = outcome.rows_of("measurements");
        assert_eq!(rows.len(), 2, "{}", outcome.summary());
        assert_eq!(rows[1][0], Value::text("s1"));
        assert_eq!(rows[1][3], Value::text("door open"));
        assert_eq!(rows[0][3], Value::Null, "an empty note is a null");
        assert_eq!(outcome.rejected.len(), 1);
        assert_eq!(outcome.rejected[0].position, 4);
        assert!(outcome.rejected[0].reason.contains("not a number"));
    }
}
"#;

const STREAM_LIB: &str = r#"//! {{crate}}: tenant {{tenant}}'s stream plugin. Each message is one sensor measurement as a
//! JSON object `{"sensor", "time", "value", "note"}` (see `sample.ndjson`).
//!
//! Build it with `cargo build --release`, check it with
//! `mysimbdp plugin check target/release/lib{{crate}}.so --sample sample.ndjson`, and copy
//! the `.so` into the platform's `plugins/` folder.

use plugin_api::{
    Message, Output, PluginError, Row, StreamInfo, StreamIngestApp, Table, TableSpec, Timestamp, export_plugin, row,
};

row! {
    /// One measurement of a sensor: a row of the table `measurements`. The key (sensor and
    /// time) comes from the message, so a message delivered again rewrites the same row.
    pub struct Measurement in "measurements" {
        partition { sensor: String }
        clustering { time: Timestamp }
        columns { value: f64, note: Option<String> }
    }
}

/// One instance.
pub struct App {
    table: Table<Measurement>,
}

impl StreamIngestApp for App {
    const TENANT: &'static str = "{{tenant}}";

    fn tables() -> Vec<TableSpec> {
        vec![Measurement::spec()]
    }

    fn open(_info: &StreamInfo) -> Result<Self, PluginError> {
        Ok(App {
            table: Table::find(&Self::tables())?,
        })
    }

    fn process(&mut self, messages: &[Message<'_>], out: &mut Output) -> Result<(), PluginError> {
        for message in messages {
            let text = String::from_utf8_lossy(message.payload());
            match measurement(&text) {
                Ok(row) => out.push(self.table, row)?,
                Err(reason) => out.reject(message.offset, reason, &text)?,
            }
        }
        Ok(())
    }
}

/// One message as a row, or why not.
fn measurement(text: &str) -> Result<Measurement, String> {
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))?;
    let text_field = |key: &str| value.get(key).and_then(|v| v.as_str());
    let sensor = text_field("sensor").filter(|s| !s.is_empty()).ok_or("sensor: expected a text")?;
    let time = text_field("time").ok_or("time: expected an ISO 8601 text")?;
    Ok(Measurement {
        sensor: sensor.to_string(),
        time: Timestamp::parse_iso8601(time).map_err(|e| format!("time: {e}"))?,
        value: value.get("value").and_then(|v| v.as_f64()).ok_or("value: expected a number")?,
        note: text_field("note").map(str::to_string),
    })
}

export_plugin!(stream: App);

#[cfg(test)]
mod tests {
    use super::*;
    use plugin_api::testing;

    #[test]
    fn the_sample_gives_two_rows_and_rejects_the_bad_message() {
        let sample = include_str!("../sample.ndjson");
        let messages: Vec<&[u8]> = sample.lines().map(str::as_bytes).collect();
        let outcome = testing::run_stream::<App>(&messages);
        outcome.result.as_ref().unwrap();
        assert_eq!(outcome.rows_of("measurements").len(), 2, "{}", outcome.summary());
        assert_eq!(outcome.rejected.len(), 1);
        assert_eq!(outcome.rejected[0].position, 2);
        assert!(outcome.rejected[0].reason.contains("value"));
    }
}
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_of_plugin_api_is_in_the_copy() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugin-api/src");
        for entry in std::fs::read_dir(&src).unwrap() {
            let name = format!("src/{}", entry.unwrap().file_name().to_string_lossy());
            assert!(
                PLUGIN_API_FILES.iter().any(|(path, _)| *path == name),
                "{name} is missing from PLUGIN_API_FILES"
            );
        }
    }

    #[test]
    fn bad_names_are_refused_before_anything_is_written() {
        let dir = std::env::temp_dir().join(format!("mysimbdp-new-{}", std::process::id()));
        assert!(write_crate("Acme", "csv", Some(&dir)).is_err());
        assert!(write_crate("acme", "c_sv", Some(&dir)).is_err());
        assert!(!dir.exists());
    }
}
