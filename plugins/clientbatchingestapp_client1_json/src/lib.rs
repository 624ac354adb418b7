//! client1's batch plugin for `json` files of RuuviTag readings: either one JSON array of
//! objects, or JSON Lines (one object per line). The array is streamed element by element, so
//! memory does not grow with the file. A rejected reading's position is its line (JSON Lines)
//! or its 1-based element number (array). The wrangling is in `client1_readings`.

use std::io::{BufRead, BufReader, Read};

use client1_readings::{TENANT, push_json, readings_table};
use plugin_api::{BatchIngestApp, FileInfo, Input, Output, PluginError, TableId, TableSpec, export_plugin};
use serde::de::{DeserializeSeed, Deserializer, SeqAccess, Visitor};

/// The plugin.
pub struct Client1Json;

impl BatchIngestApp for Client1Json {
    const TENANT: &'static str = TENANT;
    const FILE_TYPES: &'static [&'static str] = &["json"];

    fn tables() -> Vec<TableSpec> {
        vec![readings_table()]
    }

    fn ingest(_file: &FileInfo, input: &mut Input, out: &mut Output) -> Result<(), PluginError> {
        let table = out.table("readings")?;
        let mut reader = BufReader::with_capacity(256 * 1024, input);
        let first = loop {
            let buffer = reader.fill_buf()?;
            match buffer.iter().position(|b| !b.is_ascii_whitespace()) {
                Some(i) => break Some(buffer[i]),
                None if buffer.is_empty() => break None,
                None => {
                    let n = buffer.len();
                    reader.consume(n);
                }
            }
        };
        match first {
            None => Err(PluginError::invalid_input(
                "the file is empty: expected a JSON array or JSON Lines",
            )),
            Some(b'[') => ingest_array(reader, table, out),
            Some(_) => ingest_lines(reader, table, out),
        }
    }
}

fn ingest_lines(reader: impl BufRead, table: TableId, out: &mut Output) -> Result<(), PluginError> {
    for (index, line) in reader.split(b'\n').enumerate() {
        let line = line?;
        let number = index as u64 + 1;
        let text = String::from_utf8_lossy(&line);
        let text = text.trim();
        if text.is_empty() {
            continue;
        }
        match serde_json::from_str::<serde_json::Value>(text) {
            Ok(value) => push_json(out, table, number, &value, text)?,
            Err(e) => out.reject(number, format!("not valid JSON: {e}"), text)?,
        }
    }
    Ok(())
}

fn ingest_array(reader: impl Read, table: TableId, out: &mut Output) -> Result<(), PluginError> {
    let mut deserializer = serde_json::Deserializer::from_reader(reader);
    let mut failure = None;
    let result = deserializer.deserialize_seq(ArrayVisitor {
        table,
        out,
        failure: &mut failure,
    });
    if let Some(error) = failure {
        return Err(error);
    }
    result.map_err(|e| PluginError::invalid_input(format!("the JSON array is malformed: {e}")))?;
    deserializer
        .end()
        .map_err(|e| PluginError::invalid_input(format!("trailing data after the JSON array: {e}")))
}

struct ArrayVisitor<'o> {
    table: TableId,
    out: &'o mut Output,
    failure: &'o mut Option<PluginError>,
}

impl<'de> Visitor<'de> for ArrayVisitor<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON array of readings")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut index = 0u64;
        while let Some(value) = seq.next_element_seed(ElementSeed)? {
            index += 1;
            let raw = value.to_string();
            if let Err(error) = push_json(self.out, self.table, index, &value, &raw) {
                *self.failure = Some(error);
                return Err(serde::de::Error::custom("stopped by the host"));
            }
        }
        Ok(())
    }
}

/// Deserializes one element as a generic JSON value, so a wrongly typed field rejects only its
/// element.
struct ElementSeed;

impl<'de> DeserializeSeed<'de> for ElementSeed {
    type Value = serde_json::Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        serde::Deserialize::deserialize(deserializer)
    }
}

export_plugin!(batch: Client1Json);
