//! client2's wrangling of Azure Functions invocation records (the seed's
//! `AzureFunctionsInvocationTraceForTwoWeeksJan2021` shape), shared by its plugins
//! `clientbatchingestapp_client2_txt` and `clientstreamingestapp_client2`.
//!
//! A record is `app,func,end_timestamp,duration`: hashed application and function ids (hex),
//! the end of the invocation in seconds since the start of the trace, and its duration in
//! seconds, both decimals with up to six places. It is stored as one row of `invocations`,
//! partitioned by application and hour of the trace, keyed by function and end time:
//! - units: exact microseconds (parsed from the decimal text, never through a float);
//!   absolute `start_time`/`end_time` from the trace's start, [`TRACE_START_MS`];
//! - derived: `hour`, `duration_ms`, `slow` (over one second);
//! - checks: ids are non-empty hex; times are non-negative. An invocation may have started
//!   before the trace did (a trace cut out of a longer log always has such calls): its
//!   `start_time` is then before [`TRACE_START_MS`], and it is stored like any other.

use plugin_api::{Output, PluginError, Row, Table, TableSpec, Timestamp, row};

/// The tenant.
pub const TENANT: &str = "client2";

/// When the trace starts: 2021-01-31T00:00:00Z.
pub const TRACE_START_MS: i64 = 1_612_051_200_000;

/// The input keys, in the order of the header.
pub const KEYS: [&str; 4] = ["app", "func", "end_timestamp", "duration"];

row! {
    /// A row of `invocations`, the table every client2 plugin writes.
    pub struct Invocation in "invocations" {
        partition {
            /// The hashed application id, lower case.
            app: String,
            /// Hours since the trace's start (at most 596,523 fit an `Int`).
            hour: i32,
        }
        clustering {
            /// The hashed function id, lower case.
            func: String,
            /// The end, microseconds since the trace's start.
            end_us: i64,
        }
        columns {
            /// When the invocation began (milliseconds; before the trace for some).
            start_time: Timestamp,
            /// When it ended.
            end_time: Timestamp,
            /// How long it ran.
            duration_ms: f64,
            /// Over one second.
            slow: bool,
        }
    }
}

/// The table every client2 plugin writes.
pub fn invocations_table() -> TableSpec {
    Invocation::spec()
}

/// Parses `12.345678` seconds into microseconds, exactly.
pub fn parse_seconds_as_micros(text: &str) -> Result<i64, String> {
    let bad = || format!("{text:?} is not a number of seconds");
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    if whole.is_empty() || fraction.len() > 6 || !whole.bytes().chain(fraction.bytes()).all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let whole: i64 = whole.parse().map_err(|_| bad())?;
    let fraction: i64 = if fraction.is_empty() {
        0
    } else {
        format!("{fraction:0<6}").parse().map_err(|_| bad())?
    };
    whole
        .checked_mul(1_000_000)
        .and_then(|w| w.checked_add(fraction))
        .ok_or_else(bad)
}

/// Checks a record and turns it into an `invocations` row.
pub fn row(app: &str, func: &str, end_us: i64, duration_us: i64) -> Result<Invocation, String> {
    for (name, id) in [("app", app), ("func", func)] {
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("{name}: {id:?} is not a hashed (hex) id"));
        }
    }
    if end_us < 0 || duration_us < 0 {
        return Err("end_timestamp and duration must not be negative".into());
    }
    let end_ms = TRACE_START_MS + end_us / 1000;
    // Whole milliseconds, rounded down also before the trace's start (negative offsets).
    let start_ms = TRACE_START_MS + (end_us - duration_us).div_euclid(1000);
    let hour =
        i32::try_from(end_us / 3_600_000_000).map_err(|_| "end_timestamp is too far into the trace".to_string())?;
    Ok(Invocation {
        app: app.to_ascii_lowercase(),
        hour,
        func: func.to_ascii_lowercase(),
        end_us,
        start_time: Timestamp(start_ms),
        end_time: Timestamp(end_ms),
        duration_ms: duration_us as f64 / 1000.0,
        slow: duration_us > 1_000_000,
    })
}

/// Checks a record given as text fields.
pub fn row_from_text(fields: &[&str]) -> Result<Invocation, String> {
    let [app, func, end, duration] = fields else {
        return Err(format!(
            "expected 4 fields ({}), found {}",
            KEYS.join(","),
            fields.len()
        ));
    };
    let end_us = parse_seconds_as_micros(end.trim()).map_err(|e| format!("end_timestamp: {e}"))?;
    let duration_us = parse_seconds_as_micros(duration.trim()).map_err(|e| format!("duration: {e}"))?;
    row(app.trim(), func.trim(), end_us, duration_us)
}

/// Pushes a record given as a JSON object, or rejects it at `position` with the reason.
pub fn push_json(out: &mut Output, table: Table<Invocation>, position: u64, raw: &str) -> Result<(), PluginError> {
    let outcome = serde_json::from_str::<serde_json::Value>(raw)
        .map_err(|e| format!("not valid JSON: {e}"))
        .and_then(|value| row_from_json(&value));
    match outcome {
        Ok(row) => out.push(table, row),
        Err(reason) => out.reject(position, reason, raw),
    }
}

fn row_from_json(value: &serde_json::Value) -> Result<Invocation, String> {
    let object = value.as_object().ok_or("expected a JSON object")?;
    let text = |key: &str| {
        object
            .get(key)
            .and_then(|v| v.as_str())
            .ok_or_else(|| format!("{key}: expected a string"))
    };
    let micros = |key: &str| -> Result<i64, String> {
        match object.get(key) {
            Some(serde_json::Value::Number(n)) => {
                parse_seconds_as_micros(&n.to_string()).map_err(|e| format!("{key}: {e}"))
            }
            Some(serde_json::Value::String(s)) => parse_seconds_as_micros(s).map_err(|e| format!("{key}: {e}")),
            Some(_) => Err(format!("{key}: expected a number of seconds")),
            None => Err(format!("the {key:?} key is missing")),
        }
    };
    row(
        text("app")?,
        text("func")?,
        micros("end_timestamp")?,
        micros("duration")?,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const APP: &str = "7b2f9c1d0e4a";

    #[test]
    fn seconds_are_parsed_exactly() {
        assert_eq!(parse_seconds_as_micros("0.080334"), Ok(80_334));
        assert_eq!(parse_seconds_as_micros("12"), Ok(12_000_000));
        assert_eq!(parse_seconds_as_micros("1.5"), Ok(1_500_000));
        for bad in ["", "-1", "1.2345678", "1e3", "abc", ".5"] {
            assert!(parse_seconds_as_micros(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_record_is_wrangled_into_a_row() {
        let row = row_from_text(&[APP, "AB12", "3600.5", "2.25"]).unwrap();
        assert_eq!(row.hour, 1);
        assert_eq!(row.func, "ab12");
        assert_eq!(row.end_us, 3_600_500_000);
        assert_eq!(row.start_time, Timestamp(TRACE_START_MS + 3_598_250));
        assert_eq!(row.duration_ms, 2250.0);
        assert!(row.slow);
        assert!(invocations_table().validate().is_ok());
    }

    #[test]
    fn an_invocation_that_began_before_the_trace_is_stored_with_its_real_start() {
        // Ended 1 s into the trace after running for 2.0005 s: began 1.0005 s before it.
        let row = row_from_text(&[APP, "ab", "1", "2.0005"]).unwrap();
        assert_eq!(row.start_time, Timestamp(TRACE_START_MS - 1001));
        assert_eq!(row.end_time, Timestamp(TRACE_START_MS + 1000));
        assert_eq!(row.duration_ms, 2000.5);
    }

    #[test]
    fn bad_records_are_refused_with_a_reason() {
        assert!(row_from_text(&[APP, "ab"]).unwrap_err().contains("expected 4 fields"));
        assert!(row_from_text(&[APP, "zz", "1", "0.5"]).unwrap_err().contains("hex"));
        assert!(row_from_text(&[APP, "ab", "1", "-"]).unwrap_err().contains("duration"));
        let json =
            row_from_json(&serde_json::json!({"app": APP, "func": "ab", "end_timestamp": 5.5, "duration": "slow"}));
        assert!(json.unwrap_err().contains("duration"));
    }
}
