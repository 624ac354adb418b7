//! Deterministic generators of the example tenants' data, any size.
//!
//! - `client1`: RuuviTag sensor readings shaped like the Korkeasaari zoo tortoise data set,
//!   as CSV (the seed's header), a JSON array, or JSON Lines (also the stream messages).
//! - `client2`: Azure Functions invocation trace lines (`app,func,end_timestamp,duration`),
//!   as the seed's `.txt` (CSV with a header) or JSON Lines messages.
//!
//! The same [`Spec`] always yields the same bytes. Every well-formed row has a unique key
//! (`(dev-id, time)` for client1, `(app, func, end_timestamp)` for client2), so the rows a
//! platform stores can be counted exactly. With [`Spec::malformed_every`] set to `k`, every
//! `k`-th row is malformed in a way the example plugins reject (the JSON array stays valid
//! JSON as a whole).
//!
//! [`Generator`] is a [`std::io::Read`], so a test can stream gigabytes into an HTTP body
//! without a file on disk.

use std::fmt::Write as _;
use std::io::{self, Read, Write};

use plugin_api::time::format_iso8601_millis;

/// The data shapes of the example tenants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// client1 readings as CSV with the seed's header.
    Client1Csv,
    /// client1 readings as one JSON array of objects.
    Client1JsonArray,
    /// client1 readings as JSON Lines (one object per line); also client1's stream messages.
    Client1JsonLines,
    /// client2 invocation trace as CSV text with the header `app,func,end_timestamp,duration`.
    Client2Txt,
    /// client2 invocation records as JSON Lines; client2's stream messages.
    Client2JsonLines,
}

impl Shape {
    /// All shapes, for command lines.
    pub const ALL: [(&'static str, Shape); 5] = [
        ("client1-csv", Shape::Client1Csv),
        ("client1-json-array", Shape::Client1JsonArray),
        ("client1-jsonl", Shape::Client1JsonLines),
        ("client2-txt", Shape::Client2Txt),
        ("client2-jsonl", Shape::Client2JsonLines),
    ];
}

/// The header of client1's CSV files (the seed's).
pub const CLIENT1_CSV_HEADER: &str = "time,readable_time,acceleration,acceleration_x,acceleration_y,acceleration_z,battery,humidity,pressure,temperature,dev-id";

/// The header of client2's trace files (the seed's).
pub const CLIENT2_TXT_HEADER: &str = "app,func,end_timestamp,duration";

/// What to generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spec {
    /// The shape.
    pub shape: Shape,
    /// Seed of the pseudo-random sequence.
    pub seed: u64,
    /// Stop after this many rows (well-formed and malformed)...
    pub rows: Option<u64>,
    /// ...or once at least this many bytes were produced (the last row is completed).
    pub bytes: Option<u64>,
    /// Every `k`-th row (the `k`-th, `2k`-th, ...) is malformed.
    pub malformed_every: Option<u64>,
}

impl Spec {
    /// `rows` rows of `shape`, seed 1, none malformed.
    pub fn rows(shape: Shape, rows: u64) -> Self {
        Spec {
            shape,
            seed: 1,
            rows: Some(rows),
            bytes: None,
            malformed_every: None,
        }
    }

    /// At least `bytes` bytes of `shape`, seed 1, none malformed.
    pub fn bytes(shape: Shape, bytes: u64) -> Self {
        Spec {
            shape,
            seed: 1,
            rows: None,
            bytes: Some(bytes),
            malformed_every: None,
        }
    }

    /// The same spec with every `k`-th row malformed.
    pub fn with_malformed_every(mut self, k: u64) -> Self {
        self.malformed_every = Some(k.max(1));
        self
    }

    /// The same spec with another seed.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Whether the row at 0-based `index` is malformed.
    pub fn is_malformed(&self, index: u64) -> bool {
        self.malformed_every.is_some_and(|k| (index + 1).is_multiple_of(k))
    }

    /// Malformed rows among the first `rows` rows.
    pub fn malformed_among(&self, rows: u64) -> u64 {
        self.malformed_every.map_or(0, |k| rows / k)
    }

    /// Generates the whole data set into `out`.
    pub fn write_to(&self, out: &mut impl Write) -> io::Result<Stats> {
        let mut generator = Generator::new(*self);
        io::copy(&mut generator, out)?;
        Ok(generator.stats())
    }

    /// Generates the whole data set in memory (for small sizes).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_to(&mut out).expect("writing to a Vec cannot fail");
        out
    }
}

/// What a generator produced so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Rows produced (well-formed and malformed; headers excluded).
    pub rows: u64,
    /// Of which malformed.
    pub malformed: u64,
    /// Bytes produced.
    pub bytes: u64,
}

impl Stats {
    /// Rows a plugin should store.
    pub fn good_rows(&self) -> u64 {
        self.rows - self.malformed
    }
}

/// splitmix64: small, fast and good enough for test data.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `low..=high`.
    fn range(&mut self, low: i64, high: i64) -> i64 {
        low + (self.next() % ((high - low + 1) as u64)) as i64
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Header,
    Rows,
    Footer,
    Done,
}

/// Streams a [`Spec`]'s bytes.
pub struct Generator {
    spec: Spec,
    rng: Rng,
    phase: Phase,
    buffer: String,
    position: usize,
    stats: Stats,
    time_ms: i64,
    end_us: i64,
    devices: Vec<String>,
    apps: Vec<(String, Vec<String>)>,
}

/// 2018-10-31T22:00:00Z, when client1's readings start.
const CLIENT1_START_MS: i64 = 1_541_023_200_000;

impl Generator {
    /// A generator at the start of `spec`.
    pub fn new(spec: Spec) -> Self {
        let mut rng = Rng(spec.seed ^ 0x6d79_7369_6d62_6470);
        let devices = (0..8)
            .map(|_| {
                let b = rng.next().to_le_bytes();
                format!(
                    "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
                    b[0], b[1], b[2], b[3], b[4], b[5]
                )
            })
            .collect();
        let apps = (0..40)
            .map(|_| {
                let app = hex_id(&mut rng);
                let funcs = (0..rng.range(1, 8)).map(|_| hex_id(&mut rng)).collect();
                (app, funcs)
            })
            .collect();
        Generator {
            spec,
            rng,
            phase: Phase::Header,
            buffer: String::with_capacity(64 * 1024),
            position: 0,
            stats: Stats::default(),
            time_ms: CLIENT1_START_MS,
            end_us: 0,
            devices,
            apps,
        }
    }

    /// What was produced so far (everything, once `read` returned 0).
    pub fn stats(&self) -> Stats {
        self.stats
    }

    fn finished_rows(&self) -> bool {
        self.spec.rows.is_some_and(|r| self.stats.rows >= r)
            || self
                .spec
                .bytes
                .is_some_and(|b| self.stats.bytes + self.buffer.len() as u64 >= b)
            || (self.spec.rows.is_none() && self.spec.bytes.is_none())
    }

    /// Refills `buffer` with the next chunk; false when there is nothing more.
    fn refill(&mut self) -> bool {
        self.buffer.clear();
        self.position = 0;
        loop {
            match self.phase {
                Phase::Header => {
                    match self.spec.shape {
                        Shape::Client1Csv => self.buffer.push_str(CLIENT1_CSV_HEADER),
                        Shape::Client2Txt => self.buffer.push_str(CLIENT2_TXT_HEADER),
                        Shape::Client1JsonArray => self.buffer.push('['),
                        Shape::Client1JsonLines | Shape::Client2JsonLines => {}
                    }
                    if !self.buffer.is_empty() {
                        self.buffer.push('\n');
                    }
                    self.phase = Phase::Rows;
                }
                Phase::Rows => {
                    while self.buffer.len() < 60 * 1024 && !self.finished_rows() {
                        self.push_row();
                    }
                    if self.finished_rows() {
                        self.phase = Phase::Footer;
                    }
                    if !self.buffer.is_empty() {
                        return true;
                    }
                }
                Phase::Footer => {
                    if self.spec.shape == Shape::Client1JsonArray {
                        self.buffer.push_str("]\n");
                    }
                    self.phase = Phase::Done;
                    return !self.buffer.is_empty();
                }
                Phase::Done => return false,
            }
        }
    }

    fn push_row(&mut self) {
        let index = self.stats.rows;
        let malformed = self.spec.is_malformed(index);
        let variant = self.spec.malformed_every.map_or(0, |k| (index / k) % 3);
        match self.spec.shape {
            Shape::Client1Csv => self.client1_csv(malformed, variant),
            Shape::Client1JsonArray => {
                if index > 0 {
                    self.buffer.push_str(",\n");
                }
                self.client1_json(malformed, variant.min(1));
            }
            Shape::Client1JsonLines => {
                self.client1_json(malformed, variant);
                self.buffer.push('\n');
            }
            Shape::Client2Txt => self.client2_txt(malformed, variant),
            Shape::Client2JsonLines => self.client2_json(malformed, variant),
        }
        self.stats.rows += 1;
        self.stats.malformed += u64::from(malformed);
    }

    fn client1_reading(&mut self) -> Reading {
        self.time_ms += self.rng.range(150, 2500);
        let x = self.rng.range(-60, 60);
        let y = self.rng.range(-60, 60);
        let z = self.rng.range(975, 1045);
        Reading {
            time_ms: self.time_ms,
            acceleration: ((x * x + y * y + z * z) as f64).sqrt(),
            x,
            y,
            z,
            battery_mv: self.rng.range(2750, 3100),
            humidity_centi: (self.rng.range(0, 499) != 0).then(|| self.rng.range(2000, 8000)),
            pressure_centi: self.rng.range(99_000, 103_000),
            temperature_centi: self.rng.range(1500, 3200),
            device: self.rng.range(0, self.devices.len() as i64 - 1) as usize,
        }
    }

    fn client1_csv(&mut self, malformed: bool, variant: u64) {
        let r = self.client1_reading();
        let b = &mut self.buffer;
        if malformed && variant == 2 {
            b.push_str("#### sensor gateway restarted ####\n");
            return;
        }
        let _ = write!(b, "{},", r.time_ms);
        format_iso8601_millis(b, r.time_ms);
        let _ = write!(b, ",{},{},{},{},{},", r.acceleration, r.x, r.y, r.z, r.battery_mv);
        if let Some(h) = r.humidity_centi {
            push_centi(b, h);
        }
        b.push(',');
        push_centi(b, r.pressure_centi);
        b.push(',');
        if malformed && variant == 0 {
            b.push_str("n/a");
        } else {
            push_centi(b, r.temperature_centi);
        }
        if !(malformed && variant == 1) {
            b.push(',');
            b.push_str(&self.devices[r.device]);
        }
        b.push('\n');
    }

    fn client1_json(&mut self, malformed: bool, variant: u64) {
        let r = self.client1_reading();
        let b = &mut self.buffer;
        if malformed && variant == 2 {
            let _ = write!(b, "{{\"time\": {}, \"readable_time\": \"", r.time_ms);
            return;
        }
        let _ = write!(b, "{{\"time\":{},\"readable_time\":\"", r.time_ms);
        format_iso8601_millis(b, r.time_ms);
        let _ = write!(
            b,
            "\",\"acceleration\":{},\"acceleration_x\":{},\"acceleration_y\":{},\"acceleration_z\":{},\"battery\":{},\"humidity\":",
            r.acceleration, r.x, r.y, r.z, r.battery_mv
        );
        match r.humidity_centi {
            Some(h) => push_centi(b, h),
            None => b.push_str("null"),
        }
        b.push_str(",\"pressure\":");
        push_centi(b, r.pressure_centi);
        b.push_str(",\"temperature\":");
        if malformed && variant == 0 {
            b.push_str("\"n/a\"");
        } else {
            push_centi(b, r.temperature_centi);
        }
        if !(malformed && variant == 1) {
            let _ = write!(b, ",\"dev-id\":\"{}\"", self.devices[r.device]);
        }
        b.push('}');
    }

    fn client2_invocation(&mut self) -> Invocation {
        self.end_us += self.rng.range(1, 40_000);
        let app = self.rng.range(0, self.apps.len() as i64 - 1) as usize;
        let func = self.rng.range(0, self.apps[app].1.len() as i64 - 1) as usize;
        // Mostly short calls, some long ones: a rough heavy tail.
        let duration_us = match self.rng.range(0, 99) {
            0..=69 => self.rng.range(100, 200_000),
            70..=96 => self.rng.range(200_000, 5_000_000),
            _ => self.rng.range(5_000_000, 600_000_000),
        };
        Invocation {
            app,
            func,
            end_us: self.end_us,
            // Not capped at `end_us`: a trace cut out of a longer log has calls that began
            // before it (real data, which the example plugin must store).
            duration_us,
        }
    }

    fn client2_txt(&mut self, malformed: bool, variant: u64) {
        let inv = self.client2_invocation();
        let (app, funcs) = &self.apps[inv.app];
        let b = &mut self.buffer;
        match (malformed, variant) {
            (true, 0) => {
                let _ = write!(b, "{app},{},", funcs[inv.func]);
                push_micros(b, inv.end_us);
                b.push_str(",-\n");
            }
            (true, 1) => {
                let _ = writeln!(b, "{app},{}", funcs[inv.func]);
            }
            (true, _) => b.push_str("\u{feff}\u{0}garbage\n"),
            (false, _) => {
                let _ = write!(b, "{app},{},", funcs[inv.func]);
                push_micros(b, inv.end_us);
                b.push(',');
                push_micros(b, inv.duration_us);
                b.push('\n');
            }
        }
    }

    fn client2_json(&mut self, malformed: bool, variant: u64) {
        let inv = self.client2_invocation();
        let (app, funcs) = &self.apps[inv.app];
        let b = &mut self.buffer;
        if malformed && variant == 2 {
            b.push_str("{\"app\": \"unterminated\n");
            return;
        }
        let _ = write!(
            b,
            "{{\"app\":\"{app}\",\"func\":\"{}\",\"end_timestamp\":",
            funcs[inv.func]
        );
        push_micros(b, inv.end_us);
        if !(malformed && variant == 1) {
            b.push_str(",\"duration\":");
            if malformed {
                b.push_str("\"slow\"");
            } else {
                push_micros(b, inv.duration_us);
            }
        }
        b.push_str("}\n");
    }
}

impl Read for Generator {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.position >= self.buffer.len() && !self.refill() {
            return Ok(0);
        }
        let available = &self.buffer.as_bytes()[self.position..];
        let n = available.len().min(out.len());
        out[..n].copy_from_slice(&available[..n]);
        self.position += n;
        self.stats.bytes += n as u64;
        Ok(n)
    }
}

struct Reading {
    time_ms: i64,
    acceleration: f64,
    x: i64,
    y: i64,
    z: i64,
    battery_mv: i64,
    humidity_centi: Option<i64>,
    pressure_centi: i64,
    temperature_centi: i64,
    device: usize,
}

struct Invocation {
    app: usize,
    func: usize,
    end_us: i64,
    duration_us: i64,
}

fn hex_id(rng: &mut Rng) -> String {
    let mut s = String::with_capacity(64);
    for _ in 0..4 {
        let _ = write!(s, "{:016x}", rng.next());
    }
    s
}

/// Writes hundredths as a decimal with two places (`2262` → `22.62`).
fn push_centi(b: &mut String, centi: i64) {
    let sign = if centi < 0 { "-" } else { "" };
    let _ = write!(b, "{sign}{}.{:02}", centi.abs() / 100, centi.abs() % 100);
}

/// Writes microseconds as seconds with six places (`80334` → `0.080334`).
fn push_micros(b: &mut String, micros: i64) {
    let _ = write!(b, "{}.{:06}", micros / 1_000_000, micros % 1_000_000);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_spec_gives_the_same_bytes() {
        let spec = Spec::rows(Shape::Client1Csv, 500).with_malformed_every(7);
        assert_eq!(spec.to_vec(), spec.to_vec());
        assert_ne!(spec.to_vec(), spec.with_seed(2).to_vec());
    }

    #[test]
    fn row_counts_and_malformed_counts_are_exact() {
        for (_, shape) in Shape::ALL {
            let spec = Spec::rows(shape, 1000).with_malformed_every(10);
            let stats = spec.write_to(&mut io::sink()).unwrap();
            assert_eq!(stats.rows, 1000, "{shape:?}");
            assert_eq!(stats.malformed, 100, "{shape:?}");
            assert_eq!(spec.malformed_among(1000), 100);
        }
    }

    #[test]
    fn csv_rows_have_the_seed_header_and_eleven_fields() {
        let text = String::from_utf8(Spec::rows(Shape::Client1Csv, 50).to_vec()).unwrap();
        let mut lines = text.lines();
        assert_eq!(lines.next(), Some(CLIENT1_CSV_HEADER));
        for line in lines {
            assert_eq!(line.split(',').count(), 11, "{line}");
        }
    }

    #[test]
    fn a_byte_target_is_reached_with_whole_rows() {
        let spec = Spec::bytes(Shape::Client2Txt, 1_000_000);
        let text = String::from_utf8(spec.to_vec()).unwrap();
        assert!(text.len() >= 1_000_000 && text.len() < 1_001_000);
        assert!(text.ends_with('\n'));
        assert_eq!(text.lines().nth(1).unwrap().split(',').count(), 4);
    }

    #[test]
    fn the_json_array_is_one_array_even_with_malformed_rows() {
        let text = String::from_utf8(Spec::rows(Shape::Client1JsonArray, 30).with_malformed_every(4).to_vec()).unwrap();
        assert!(text.starts_with("[\n{") && text.ends_with("}]\n"));
        assert_eq!(text.matches("\"time\":").count(), 30);
    }
}
