//! client1's batch plugin for `json` files of RuuviTag readings: either one JSON array of
//! objects, or JSON Lines (one object per line). The array is streamed element by element, so
//! memory does not grow with the file. A rejected reading's position is its line (JSON Lines)
//! or its 1-based element number (array). The wrangling is in `client1_readings`.

use std::cell::Cell;
use std::io::{BufRead, BufReader, Read};
use std::rc::Rc;

use client1_readings::{ReadingRow, TENANT, push_json, push_json_bytes, readings_table};
use plugin_api::{
    BatchIngestApp, CappedLines, DEFAULT_MAX_LINE_BYTES, FileInfo, Input, Output, PluginError, Table, TableSpec,
    export_plugin,
};
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
        let table = out.table_of::<ReadingRow>()?;
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

fn ingest_lines(reader: impl BufRead, table: Table<ReadingRow>, out: &mut Output) -> Result<(), PluginError> {
    // A line longer than the cap is rejected, not held in memory.
    let mut lines = BufReader::new(CappedLines::new(reader, DEFAULT_MAX_LINE_BYTES));
    let mut line = Vec::new();
    let mut number = 0u64;
    loop {
        line.clear();
        if lines.read_until(b'\n', &mut line)? == 0 {
            break;
        }
        number += 1;
        lines.get_mut().reject_long_lines(out)?;
        let text = line.trim_ascii();
        if text.is_empty() {
            continue;
        }
        push_json_bytes(out, table, number, text)?;
    }
    lines.get_mut().reject_long_lines(out)
}

fn ingest_array(reader: impl Read, table: Table<ReadingRow>, out: &mut Output) -> Result<(), PluginError> {
    let budget = Rc::new(Cell::new(0u64));
    let reader = ElementBudget {
        inner: reader,
        read: Rc::clone(&budget),
    };
    let mut deserializer = serde_json::Deserializer::from_reader(reader);
    let mut failure = None;
    let result = deserializer.deserialize_seq(ArrayVisitor {
        table,
        out,
        failure: &mut failure,
        budget: &budget,
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
    table: Table<ReadingRow>,
    out: &'o mut Output,
    failure: &'o mut Option<PluginError>,
    budget: &'o Cell<u64>,
}

/// Counts the bytes read since the current element began, and stops the file at an element
/// longer than [`DEFAULT_MAX_LINE_BYTES`]: in one JSON array nothing after such an element can
/// be found without reading it, and memory must not grow with it.
struct ElementBudget<R> {
    inner: R,
    read: Rc<Cell<u64>>,
}

impl<R: Read> Read for ElementBudget<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.read.get() > DEFAULT_MAX_LINE_BYTES as u64 {
            return Err(std::io::Error::other(format!(
                "an element of the array is longer than {DEFAULT_MAX_LINE_BYTES} bytes"
            )));
        }
        let n = self.inner.read(buf)?;
        self.read.set(self.read.get() + n as u64);
        Ok(n)
    }
}

impl<'de> Visitor<'de> for ArrayVisitor<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON array of readings")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut index = 0u64;
        self.budget.set(0);
        while let Some(value) = seq.next_element_seed(ElementSeed)? {
            self.budget.set(0);
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
