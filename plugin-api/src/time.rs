//! Small, dependency-free helpers for [`ColumnType::Timestamp`](crate::ColumnType::Timestamp)
//! values: milliseconds since the Unix epoch, UTC.

use std::fmt::Write;

const MS_PER_DAY: i64 = 86_400_000;

/// The proleptic Gregorian date `(year, month, day)` of a day number (days since 1970-01-01).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    // Howard Hinnant's algorithm (http://howardhinnant.github.io/date_algorithms.html).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// The day number (days since 1970-01-01) of a proleptic Gregorian date.
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let yoe = year.rem_euclid(400);
    let month = i64::from(month);
    let doy = (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The number of days of a month of the proleptic Gregorian calendar.
pub fn days_in_month(year: i64, month: u32) -> i64 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        _ => 0,
    }
}

/// `YYYY-MM-DD` of a timestamp (years outside 0..=9999 as `format!` writes them).
pub fn date_of_millis(ms: i64) -> String {
    let (y, m, d) = civil_from_days(ms.div_euclid(MS_PER_DAY));
    if !(0..=9999).contains(&y) {
        return format!("{y:04}-{m:02}-{d:02}");
    }
    // Called once per row by typical plugins: digits by hand, one allocation, no formatter.
    let digit = |n: u32| char::from(b'0' + (n % 10) as u8);
    let y = y as u32;
    let mut out = String::with_capacity(10);
    out.extend([digit(y / 1000), digit(y / 100), digit(y / 10), digit(y), '-']);
    out.extend([digit(m / 10), digit(m), '-', digit(d / 10), digit(d)]);
    out
}

/// Appends `YYYY-MM-DDTHH:MM:SS.ffffffZ` (microsecond precision, as the sensor data set
/// writes it) of a millisecond timestamp.
pub fn format_iso8601_millis(out: &mut String, ms: i64) {
    let (y, mo, d) = civil_from_days(ms.div_euclid(MS_PER_DAY));
    let in_day = ms.rem_euclid(MS_PER_DAY);
    let (h, mi, s, milli) = (
        in_day / 3_600_000,
        in_day / 60_000 % 60,
        in_day / 1000 % 60,
        in_day % 1000,
    );
    let _ = write!(out, "{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{milli:03}000Z");
}

/// Parses an ISO 8601 / RFC 3339 UTC time (`2018-10-31T22:00:15.496Z`, with 0 to 9 fraction
/// digits, `Z` or `+00:00`, `T` or a space) into milliseconds since the epoch.
pub fn parse_iso8601_millis(s: &str) -> Result<i64, String> {
    let bad = || format!("{s:?} is not an ISO 8601 UTC time");
    let b = s.as_bytes();
    if b.len() < 19 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b' ') || b[13] != b':' || b[16] != b':' {
        return Err(bad());
    }
    // `get`, not indexing: a multi-byte character must be an error, not a panic.
    let num = |range: std::ops::Range<usize>| -> Result<i64, String> {
        let part = s.get(range).ok_or_else(bad)?;
        if part.bytes().all(|c| c.is_ascii_digit()) {
            part.parse().map_err(|_| bad())
        } else {
            Err(bad())
        }
    };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month)
        || !(1..=days_in_month(year, month as u32)).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return Err(bad());
    }
    let mut rest = s.get(19..).ok_or_else(bad)?;
    let mut millis = 0;
    if let Some(fraction) = rest.strip_prefix('.') {
        let digits = fraction.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 || digits > 9 {
            return Err(bad());
        }
        let padded = format!("{:0<3}", &fraction[..digits.min(3)]);
        millis = padded.parse::<i64>().map_err(|_| bad())?;
        rest = &fraction[digits..];
    }
    if !matches!(rest, "Z" | "z" | "+00:00" | "+0000") {
        return Err(bad());
    }
    let days = days_from_civil(year, month as u32, day as u32);
    Ok(days * MS_PER_DAY + ((hour * 60 + minute) * 60 + second) * 1000 + millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_round_trip_across_eras() {
        for days in [-719_468, -1, 0, 1, 17_835, 18_628, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(date_of_millis(1_541_023_215_496), "2018-10-31");
        assert_eq!(date_of_millis(0), "1970-01-01");
        assert_eq!(date_of_millis(-1), "1969-12-31");
        assert_eq!(date_of_millis(-62_135_596_800_001), "0000-12-31");
        assert_eq!(date_of_millis(-62_167_219_200_001), "-001-12-31");
        assert_eq!(date_of_millis(253_402_300_800_000), "10000-01-01");
    }

    #[test]
    fn iso_times_format_and_parse_back() {
        let mut s = String::new();
        format_iso8601_millis(&mut s, 1_541_023_215_496);
        assert_eq!(s, "2018-10-31T22:00:15.496000Z");
        assert_eq!(parse_iso8601_millis(&s), Ok(1_541_023_215_496));
        assert_eq!(parse_iso8601_millis("2018-10-31 22:00:15+00:00"), Ok(1_541_023_215_000));
        assert_eq!(parse_iso8601_millis("2018-10-31T22:00:15.4Z"), Ok(1_541_023_215_400));
        assert!(parse_iso8601_millis("2020-02-29T00:00:00Z").is_ok(), "a leap day");
        assert!(
            parse_iso8601_millis("2000-02-29T00:00:00Z").is_ok(),
            "a leap day of a 400th year"
        );
    }

    #[test]
    fn malformed_times_are_refused() {
        for s in [
            "",
            "2018-10-31",
            "2018-13-01T00:00:00Z",
            "2018-10-31T22:00:15",
            "2018-10-31T22:00:15+02:00",
            "20x8-10-31T22:00:15Z",
            "2018-02-31T00:00:00Z",
            "2018-02-29T00:00:00Z",
            "1900-02-29T00:00:00Z",
            "2018-04-31T00:00:00Z",
            "2018-10-31T22:00:1é",
            "2018-10-31T22:00:15é",
            "é018-10-31T22:00:15Z",
        ] {
            assert!(parse_iso8601_millis(s).is_err(), "{s}");
        }
    }
}
