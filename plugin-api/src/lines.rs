//! Bounded memory whatever the input: a reader that caps the length of a line.

use std::io::{self, Read};

/// The longest line [`CappedLines::new`] passes on by default: 1 MiB.
pub const DEFAULT_MAX_LINE_BYTES: usize = 1 << 20;

/// How much of an over-long line is kept to show the tenant.
const START_KEPT: usize = 256;

/// A line that was longer than the cap: it was not passed on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LongLine {
    /// Its 1-based line number.
    pub line: u64,
    /// Its length in bytes (without the newline).
    pub bytes: u64,
    /// Its first bytes, as text (invalid UTF-8 replaced).
    pub start: String,
    /// The cap it exceeded.
    pub max: usize,
}

impl LongLine {
    /// The reason to reject it with: `record longer than N bytes`.
    pub fn reason(&self) -> String {
        format!("record longer than {} bytes ({} bytes)", self.max, self.bytes)
    }
}

/// Wraps a reader (the plugin's [`Input`](crate::Input)) and passes its bytes on unchanged,
/// except that a line longer than `max` bytes is replaced by an empty line and remembered as a
/// [`LongLine`]. A reader built on it (the `csv` crate's, a `BufReader`'s `split`) so never
/// holds more than `max` bytes of one line, and line numbers stay right.
///
/// Take the long lines with [`take_long_lines`](Self::take_long_lines) as you go (every few
/// records, and at the end) and reject each with [`Output::reject`](crate::Output::reject) and
/// [`LongLine::reason`]:
///
/// ```
/// use std::io::{BufRead, BufReader};
/// use plugin_api::CappedLines;
///
/// let input = format!("short\n{}\nshort again\n", "x".repeat(100));
/// let mut lines = BufReader::new(CappedLines::new(input.as_bytes(), 20));
/// let mut kept = Vec::new();
/// for line in (&mut lines).split(b'\n') {
///     kept.push(String::from_utf8(line.unwrap()).unwrap());
/// }
/// assert_eq!(kept, ["short", "", "short again"]);
/// let long = lines.get_mut().take_long_lines();
/// assert_eq!((long[0].line, long[0].bytes), (2, 100));
/// assert_eq!(long[0].reason(), "record longer than 20 bytes (100 bytes)");
/// ```
pub struct CappedLines<R> {
    inner: R,
    max: usize,
    /// The line being read (at most `max` bytes of it).
    pending: Vec<u8>,
    /// Bytes ready to hand out: whole lines.
    ready: Vec<u8>,
    ready_from: usize,
    /// The over-long line being skipped.
    skipping: Option<LongLine>,
    /// Its number.
    line: u64,
    long_lines: Vec<LongLine>,
    chunk: Box<[u8]>,
    done: bool,
}

impl<R: Read> CappedLines<R> {
    /// Caps lines of `inner` at `max` bytes.
    pub fn new(inner: R, max: usize) -> Self {
        CappedLines {
            inner,
            max: max.max(1),
            pending: Vec::new(),
            ready: Vec::new(),
            ready_from: 0,
            skipping: None,
            line: 1,
            long_lines: Vec::new(),
            chunk: vec![0; 64 << 10].into_boxed_slice(),
            done: false,
        }
    }

    /// The over-long lines met so far and not yet taken, oldest first.
    pub fn take_long_lines(&mut self) -> Vec<LongLine> {
        std::mem::take(&mut self.long_lines)
    }

    /// Rejects the over-long lines met so far ([`take_long_lines`](Self::take_long_lines)),
    /// each with its line number, [`LongLine::reason`] and its first bytes.
    pub fn reject_long_lines(&mut self, out: &mut crate::Output) -> Result<(), crate::PluginError> {
        for long in self.take_long_lines() {
            out.reject(long.line, long.reason(), &long.start)?;
        }
        Ok(())
    }

    /// Reads more of `inner` into `ready`; false at the end.
    fn fill(&mut self) -> io::Result<bool> {
        let n = loop {
            match self.inner.read(&mut self.chunk) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => break other?,
            }
        };
        if n == 0 {
            self.done = true;
            if let Some(long) = self.skipping.take() {
                self.long_lines.push(long);
            }
            self.ready.append(&mut self.pending);
            return Ok(!self.ready.is_empty());
        }
        let mut rest = &self.chunk[..n];
        while !rest.is_empty() {
            let newline = rest.iter().position(|&b| b == b'\n');
            let (part, ends_line) = match newline {
                Some(i) => (&rest[..i], true),
                None => (rest, false),
            };
            match &mut self.skipping {
                Some(long) => long.bytes += part.len() as u64,
                None if self.pending.len() + part.len() > self.max => {
                    let bytes = (self.pending.len() + part.len()) as u64;
                    let mut start = std::mem::take(&mut self.pending);
                    start.truncate(START_KEPT);
                    let more = START_KEPT - start.len();
                    start.extend_from_slice(&part[..part.len().min(more)]);
                    self.skipping = Some(LongLine {
                        line: self.line,
                        bytes,
                        start: String::from_utf8_lossy(&start).into_owned(),
                        max: self.max,
                    });
                }
                None => self.pending.extend_from_slice(part),
            }
            if ends_line {
                if let Some(long) = self.skipping.take() {
                    self.long_lines.push(long);
                }
                self.ready.append(&mut self.pending);
                self.ready.push(b'\n');
                self.line += 1;
                rest = &rest[part.len() + 1..];
            } else {
                rest = &[];
            }
        }
        Ok(true)
    }
}

impl<R: Read> Read for CappedLines<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.ready_from == self.ready.len() {
            self.ready.clear();
            self.ready_from = 0;
            if self.done || !self.fill()? {
                return Ok(0);
            }
        }
        let n = buf.len().min(self.ready.len() - self.ready_from);
        buf[..n].copy_from_slice(&self.ready[self.ready_from..self.ready_from + n]);
        self.ready_from += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn through(input: &[u8], max: usize, read_size: usize) -> (Vec<u8>, Vec<LongLine>) {
        let mut capped = CappedLines::new(input, max);
        let mut out = Vec::new();
        let mut buf = vec![0; read_size];
        loop {
            let n = capped.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        (out, capped.take_long_lines())
    }

    #[test]
    fn short_lines_pass_unchanged_and_long_ones_become_empty_lines() {
        let long = "y".repeat(200_000);
        let input = format!("a,1\n{long}\nb,2\nlast-without-newline");
        for read_size in [1, 7, 4096, 1 << 20] {
            let (out, long_lines) = through(input.as_bytes(), 1000, read_size);
            assert_eq!(out, b"a,1\n\nb,2\nlast-without-newline", "read size {read_size}");
            assert_eq!(long_lines.len(), 1);
            assert_eq!(long_lines[0].line, 2);
            assert_eq!(long_lines[0].bytes, 200_000);
            assert_eq!(long_lines[0].start, "y".repeat(256));
        }
    }

    #[test]
    fn a_long_last_line_and_a_line_of_exactly_the_cap() {
        let input = format!("{}\n{}", "a".repeat(10), "b".repeat(11));
        let (out, long_lines) = through(input.as_bytes(), 10, 3);
        assert_eq!(out, format!("{}\n", "a".repeat(10)).into_bytes());
        assert_eq!((long_lines[0].line, long_lines[0].bytes), (2, 11));
    }
}
