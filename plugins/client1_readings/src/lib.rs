//! client1's wrangling of RuuviTag sensor readings (the Korkeasaari zoo tortoise data), shared by
//! its three plugins: `clientbatchingestapp_client1_csv`, `clientbatchingestapp_client1_json`
//! and `clientstreamingestapp_client1`.
//!
//! A reading arrives with the keys
//! `time,readable_time,acceleration,acceleration_x,acceleration_y,acceleration_z,battery,humidity,pressure,temperature,dev-id`
//! (`time` in epoch milliseconds, `readable_time` ISO 8601, accelerations in milli-g, battery in
//! millivolts, humidity in %, pressure in hPa, temperature in °C). It is stored as one row of
//! `readings`, partitioned by device and day and keyed by time, so the same reading ingested
//! twice is one row:
//! - units: accelerations in g, battery in volts;
//! - derived: `day`, the acceleration magnitude recomputed from its components, `moving`
//!   (magnitude more than 0.05 g away from 1 g), `battery_low` (under 2.8 V);
//! - checks: `readable_time` must be the same instant as `time`; numbers must be finite and
//!   humidity within 0..=100; `dev-id` must not be empty. A reading that fails is rejected
//!   with the reason, and the rest of the input goes on.

use std::borrow::Cow;

use plugin_api::time::{date_of_millis, parse_iso8601_millis};
use plugin_api::{Output, PluginError, Row, Table, TableSpec, Timestamp, row};

/// The tenant.
pub const TENANT: &str = "client1";

/// The input keys, in the order of the CSV header.
pub const KEYS: [&str; 11] = [
    "time",
    "readable_time",
    "acceleration",
    "acceleration_x",
    "acceleration_y",
    "acceleration_z",
    "battery",
    "humidity",
    "pressure",
    "temperature",
    "dev-id",
];

row! {
    /// A row of `readings`, the table every client1 plugin writes.
    pub struct ReadingRow in "readings" {
        partition {
            /// The tag's id, lower case.
            dev_id: String,
            /// `YYYY-MM-DD` (UTC) of `time`.
            day: String,
        }
        clustering {
            /// When the tag measured.
            time: Timestamp,
        }
        columns {
            /// Magnitude recomputed from the components, g.
            acceleration_g: f64,
            /// g.
            acceleration_x_g: f64,
            /// g.
            acceleration_y_g: f64,
            /// g.
            acceleration_z_g: f64,
            /// The magnitude is more than 0.05 g away from 1 g.
            moving: bool,
            /// Volts.
            battery_v: f64,
            /// Under 2.8 V.
            battery_low: bool,
            /// Percent, if measured.
            humidity_pct: Option<f64>,
            /// hPa, if measured.
            pressure_hpa: Option<f64>,
            /// °C, if measured.
            temperature_c: Option<f64>,
        }
    }
}

/// The table every client1 plugin writes.
pub fn readings_table() -> TableSpec {
    ReadingRow::spec()
}

/// One reading as it arrives, before checks and wrangling.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading<'a> {
    /// Epoch milliseconds.
    pub time_ms: i64,
    /// ISO 8601 text of the same instant.
    pub readable_time: &'a str,
    /// Milli-g.
    pub acceleration_mg: [f64; 3],
    /// Millivolts.
    pub battery_mv: f64,
    /// Percent, if measured.
    pub humidity_pct: Option<f64>,
    /// hPa, if measured.
    pub pressure_hpa: Option<f64>,
    /// °C, if measured.
    pub temperature_c: Option<f64>,
    /// The tag's id.
    pub dev_id: &'a str,
}

impl Reading<'_> {
    /// Checks the reading and turns it into a `readings` row.
    pub fn into_row(self) -> Result<ReadingRow, String> {
        if self.dev_id.trim().is_empty() {
            return Err("dev-id is empty".into());
        }
        let readable = parse_iso8601_millis(self.readable_time)?;
        if readable != self.time_ms {
            return Err(format!(
                "readable_time {} is not the same instant as time {}",
                self.readable_time, self.time_ms
            ));
        }
        let numbers = self.acceleration_mg.iter().chain([&self.battery_mv]);
        let optional = [self.humidity_pct, self.pressure_hpa, self.temperature_c];
        if numbers.chain(optional.iter().flatten()).any(|n| !n.is_finite()) {
            return Err("a number is not finite".into());
        }
        if self.humidity_pct.is_some_and(|h| !(0.0..=100.0).contains(&h)) {
            return Err(format!(
                "humidity {} is outside 0..=100 %",
                self.humidity_pct.unwrap_or_default()
            ));
        }
        let [x, y, z] = self.acceleration_mg.map(|mg| mg / 1000.0);
        let magnitude = (x * x + y * y + z * z).sqrt();
        let battery_v = self.battery_mv / 1000.0;
        Ok(ReadingRow {
            dev_id: self.dev_id.trim().to_ascii_lowercase(),
            day: date_of_millis(self.time_ms),
            time: Timestamp(self.time_ms),
            acceleration_g: magnitude,
            acceleration_x_g: x,
            acceleration_y_g: y,
            acceleration_z_g: z,
            moving: (magnitude - 1.0).abs() > 0.05,
            battery_v,
            battery_low: battery_v < 2.8,
            humidity_pct: self.humidity_pct,
            pressure_hpa: self.pressure_hpa,
            temperature_c: self.temperature_c,
        })
    }
}

/// Where each input key sits in a CSV header.
#[derive(Debug, Clone)]
pub struct CsvColumns {
    index: [usize; 11],
}

impl CsvColumns {
    /// Maps the header's columns (in any order; extra columns are ignored).
    pub fn from_header<'h>(header: impl IntoIterator<Item = &'h str>) -> Result<Self, PluginError> {
        let names: Vec<&str> = header
            .into_iter()
            .map(|h| h.trim().trim_start_matches('\u{feff}'))
            .collect();
        let mut index = [0; 11];
        for (slot, key) in index.iter_mut().zip(KEYS) {
            *slot = names.iter().position(|n| *n == key).ok_or_else(|| {
                PluginError::invalid_input(format!(
                    "the header has no {key:?} column (expected {}); found {}",
                    KEYS.join(","),
                    names.join(",")
                ))
            })?;
        }
        Ok(CsvColumns { index })
    }

    /// Reads a reading from a CSV record's fields.
    pub fn reading<'a>(&self, field: impl Fn(usize) -> Option<&'a str>) -> Result<Reading<'a>, String> {
        let get = |key: usize| -> Result<&'a str, String> {
            field(self.index[key])
                .map(str::trim)
                .ok_or_else(|| format!("the {:?} field is missing", KEYS[key]))
        };
        let number = |key: usize| -> Result<f64, String> {
            let text = get(key)?;
            text.parse()
                .map_err(|_| format!("{}: {text:?} is not a number", KEYS[key]))
        };
        let optional = |key: usize| -> Result<Option<f64>, String> {
            if get(key)?.is_empty() {
                Ok(None)
            } else {
                number(key).map(Some)
            }
        };
        let time = get(0)?;
        Ok(Reading {
            time_ms: time
                .parse()
                .map_err(|_| format!("time: {time:?} is not epoch milliseconds"))?,
            readable_time: get(1)?,
            acceleration_mg: [number(3)?, number(4)?, number(5)?],
            battery_mv: number(6)?,
            humidity_pct: optional(7)?,
            pressure_hpa: optional(8)?,
            temperature_c: optional(9)?,
            dev_id: get(10)?,
        })
    }
}

/// Reads a reading from a JSON object with the input keys.
pub fn reading_from_json(value: &serde_json::Value) -> Result<Reading<'_>, String> {
    let object = value
        .as_object()
        .ok_or_else(|| format!("expected a JSON object, found {}", json_kind(value)))?;
    let get = |key: &str| object.get(key).ok_or_else(|| format!("the {key:?} key is missing"));
    let number = |key: &str| -> Result<f64, String> {
        let v = get(key)?;
        v.as_f64()
            .ok_or_else(|| format!("{key}: expected a number, found {}", json_kind(v)))
    };
    let optional = |key: &str| -> Result<Option<f64>, String> {
        match object.get(key) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(_) => number(key).map(Some),
        }
    };
    let text = |key: &str| -> Result<&str, String> {
        let v = get(key)?;
        v.as_str()
            .ok_or_else(|| format!("{key}: expected a string, found {}", json_kind(v)))
    };
    let time = get("time")?;
    Ok(Reading {
        time_ms: time
            .as_i64()
            .ok_or_else(|| format!("time: expected epoch milliseconds, found {time}"))?,
        readable_time: text("readable_time")?,
        acceleration_mg: [
            number("acceleration_x")?,
            number("acceleration_y")?,
            number("acceleration_z")?,
        ],
        battery_mv: number("battery")?,
        humidity_pct: optional("humidity")?,
        pressure_hpa: optional("pressure")?,
        temperature_c: optional("temperature")?,
        dev_id: text("dev-id")?,
    })
}

/// Pushes a reading from a JSON object, or rejects it at `position` with the reason.
pub fn push_json(
    out: &mut Output,
    table: Table<ReadingRow>,
    position: u64,
    value: &serde_json::Value,
    raw: &str,
) -> Result<(), PluginError> {
    match reading_from_json(value).and_then(Reading::into_row) {
        Ok(row) => out.push(table, row),
        Err(reason) => out.reject(position, reason, raw),
    }
}

/// The input keys of a reading as JSON, read straight into their types (no `serde_json::Value`
/// map per message); strings borrow from the input unless they hold escapes.
#[derive(serde::Deserialize)]
struct JsonReading<'a> {
    time: i64,
    #[serde(borrow)]
    readable_time: Cow<'a, str>,
    acceleration_x: f64,
    acceleration_y: f64,
    acceleration_z: f64,
    battery: f64,
    humidity: Option<f64>,
    pressure: Option<f64>,
    temperature: Option<f64>,
    #[serde(rename = "dev-id", borrow)]
    dev_id: Cow<'a, str>,
}

/// Pushes a reading from the bytes of a JSON object, or rejects it at `position` with the
/// reason (the raw text kept is `bytes`, lossily decoded). The common case is read straight into
/// its types; an input that does not fit them (malformed, a key missing, a wrong type) is read
/// again as a `serde_json::Value` only to say precisely why.
pub fn push_json_bytes(
    out: &mut Output,
    table: Table<ReadingRow>,
    position: u64,
    bytes: &[u8],
) -> Result<(), PluginError> {
    let raw = || String::from_utf8_lossy(bytes);
    match serde_json::from_slice::<JsonReading>(bytes) {
        Ok(json) => {
            let reading = Reading {
                time_ms: json.time,
                readable_time: &json.readable_time,
                acceleration_mg: [json.acceleration_x, json.acceleration_y, json.acceleration_z],
                battery_mv: json.battery,
                humidity_pct: json.humidity,
                pressure_hpa: json.pressure,
                temperature_c: json.temperature,
                dev_id: &json.dev_id,
            };
            match reading.into_row() {
                Ok(row) => out.push(table, row),
                Err(reason) => out.reject(position, reason, &raw()),
            }
        }
        Err(_) => {
            let text = raw();
            match serde_json::from_str::<serde_json::Value>(&text) {
                Ok(value) => push_json(out, table, position, &value, &text),
                Err(e) => out.reject(position, format!("not valid JSON: {e}"), &text),
            }
        }
    }
}

fn json_kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINE: [&str; 11] = [
        "1541023215496",
        "2018-10-31T22:00:15.496000Z",
        "1031.07",
        "-12",
        "4",
        "1032",
        "2881",
        "29.5",
        "1002.44",
        "22.62",
        "EA:1F:45:6A:F8:0D",
    ];

    fn columns() -> CsvColumns {
        CsvColumns::from_header(KEYS).unwrap()
    }

    #[test]
    fn a_reading_is_wrangled_into_a_row() {
        let row = columns().reading(|i| LINE.get(i).copied()).unwrap().into_row().unwrap();
        assert_eq!(row.dev_id, "ea:1f:45:6a:f8:0d");
        assert_eq!(row.day, "2018-10-31");
        assert_eq!(row.time, Timestamp(1_541_023_215_496));
        assert_eq!(row.battery_v, 2.881);
        assert_eq!(row.temperature_c, Some(22.62));
        assert!(readings_table().validate().is_ok());
    }

    #[test]
    fn bad_readings_are_refused_with_a_reason() {
        let mut line = LINE;
        line[9] = "n/a";
        let err = columns().reading(|i| line.get(i).copied()).unwrap_err();
        assert!(err.contains("temperature"), "{err}");
        let mut line = LINE;
        line[1] = "2018-10-31T22:00:16.496000Z";
        let err = columns()
            .reading(|i| line.get(i).copied())
            .unwrap()
            .into_row()
            .unwrap_err();
        assert!(err.contains("not the same instant"), "{err}");
        let err = columns().reading(|i| LINE[..10].get(i).copied()).unwrap_err();
        assert!(err.contains("dev-id"), "{err}");
    }

    #[test]
    fn a_header_without_a_key_is_invalid_input() {
        let err = CsvColumns::from_header(["time", "dev-id"]).unwrap_err();
        assert!(err.message.contains("readable_time"));
    }

    #[test]
    fn json_objects_become_readings_and_nulls_stay_null() {
        let v: serde_json::Value = serde_json::from_str(
            r#"{"time":1541023215496,"readable_time":"2018-10-31T22:00:15.496Z","acceleration":1.0,
            "acceleration_x":0,"acceleration_y":0,"acceleration_z":1000,"battery":2700,"humidity":null,
            "pressure":1000.5,"temperature":20.25,"dev-id":"a"}"#,
        )
        .unwrap();
        let row = reading_from_json(&v).unwrap().into_row().unwrap();
        assert_eq!(row.humidity_pct, None);
        assert!(!row.moving);
        assert!(row.battery_low);
        let err = reading_from_json(&serde_json::json!({"time": "x"})).unwrap_err();
        assert!(err.contains("time"));
    }
}
