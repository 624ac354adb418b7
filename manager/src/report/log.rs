//! An append-only JSON Lines log in segments: `<name>` is the segment being written,
//! `<name>.<n>` the older ones. A segment is closed once it reaches its size limit and the oldest
//! are deleted beyond a count, so a log never grows without bound. An append returns the
//! position of what it wrote, which stays valid while its segment is kept.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::durable::GroupSync;

/// Where an append landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    /// Segment number.
    pub segment: u64,
    /// Byte offset in the segment.
    pub offset: u64,
    /// Bytes written.
    pub length: u64,
}

/// Where a page of a log starts: a segment and a byte offset in it. As text (in a page token)
/// `<segment>.<offset>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    /// Segment number.
    pub segment: u64,
    /// Byte offset of a line's start.
    pub offset: u64,
}

impl std::fmt::Display for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.segment, self.offset)
    }
}

impl std::str::FromStr for Cursor {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not a page this API returned");
        let (segment, offset) = s.split_once('.').ok_or_else(bad)?;
        Ok(Cursor {
            segment: segment.parse().map_err(|_| bad())?,
            offset: offset.parse().map_err(|_| bad())?,
        })
    }
}

/// A segmented log.
#[derive(Debug)]
pub struct SegmentedLog {
    dir: PathBuf,
    name: String,
    max_segment_bytes: u64,
    keep_segments: u64,
    segment: u64,
    file: File,
    size: u64,
    sync: Arc<GroupSync>,
}

/// An append written but not yet known durable: [`Unsynced::wait`] makes it so, sharing the
/// fsync with the other appends made meanwhile (it needs no access to the log, so the log's
/// owner can release its lock first).
#[must_use = "an append is durable only once waited for"]
pub struct Unsynced {
    sync: Arc<GroupSync>,
    ticket: u64,
}

impl Unsynced {
    /// Returns once the append is on disk.
    pub fn wait(self) -> io::Result<()> {
        self.sync.wait(self.ticket)
    }
}

impl SegmentedLog {
    /// Opens (creating) the log `dir/name`.
    pub fn open(dir: &Path, name: &str, max_segment_bytes: u64, keep_segments: u64) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        let segment = closed_segments(dir, name)?.last().map_or(0, |n| n + 1);
        let file = OpenOptions::new().create(true).append(true).open(dir.join(name))?;
        let size = file.metadata()?.len();
        let sync = Arc::new(GroupSync::file(file.try_clone()?));
        Ok(SegmentedLog {
            dir: dir.to_path_buf(),
            name: name.to_string(),
            max_segment_bytes: max_segment_bytes.max(1),
            keep_segments: keep_segments.max(1),
            segment,
            file,
            size,
            sync,
        })
    }

    /// Appends `bytes` (whole lines) and flushes them to disk.
    pub fn append(&mut self, bytes: &[u8]) -> io::Result<Position> {
        let (position, unsynced) = self.append_unsynced(bytes)?;
        unsynced.wait()?;
        Ok(position)
    }

    /// Appends `bytes` (whole lines); durable once the returned [`Unsynced`] is waited for.
    pub fn append_unsynced(&mut self, bytes: &[u8]) -> io::Result<(Position, Unsynced)> {
        if self.size > 0 && self.size + bytes.len() as u64 > self.max_segment_bytes {
            self.rotate()?;
        }
        let position = Position {
            segment: self.segment,
            offset: self.size,
            length: bytes.len() as u64,
        };
        self.file.write_all(bytes)?;
        self.size += bytes.len() as u64;
        Ok((position, self.unsynced()))
    }

    fn unsynced(&self) -> Unsynced {
        Unsynced {
            sync: Arc::clone(&self.sync),
            ticket: self.sync.changed(),
        }
    }

    /// Appends the whole content of `source`.
    pub fn append_file(&mut self, source: &Path) -> io::Result<Position> {
        let (position, unsynced) = self.append_file_unsynced(source)?;
        unsynced.wait()?;
        Ok(position)
    }

    /// Appends the whole content of `source`; durable once the [`Unsynced`] is waited for.
    pub fn append_file_unsynced(&mut self, source: &Path) -> io::Result<(Position, Unsynced)> {
        let length = fs::metadata(source)?.len();
        if self.size > 0 && self.size + length > self.max_segment_bytes {
            self.rotate()?;
        }
        let position = Position {
            segment: self.segment,
            offset: self.size,
            length,
        };
        io::copy(&mut File::open(source)?, &mut self.file)?;
        self.size += length;
        Ok((position, self.unsynced()))
    }

    /// Reads back what an append wrote, if its segment is still kept.
    pub fn read(&self, position: Position) -> io::Result<Vec<u8>> {
        let mut file = File::open(self.segment_path(position.segment))?;
        file.seek(SeekFrom::Start(position.offset))?;
        let mut bytes = Vec::with_capacity(position.length as usize);
        file.take(position.length).read_to_end(&mut bytes)?;
        Ok(bytes)
    }

    /// Every line still kept, oldest first.
    pub fn lines(&self) -> io::Result<impl Iterator<Item = String>> {
        let mut paths: Vec<PathBuf> = closed_segments(&self.dir, &self.name)?
            .into_iter()
            .map(|n| self.segment_path(n))
            .collect();
        paths.push(self.dir.join(&self.name));
        let mut lines = Vec::new();
        for path in paths {
            if let Ok(file) = File::open(&path) {
                lines.extend(BufReader::new(file).lines().map_while(Result::ok));
            }
        }
        Ok(lines.into_iter())
    }

    /// Up to `limit` lines from `from` (a [`Cursor`] an earlier page returned; `None`: the
    /// oldest line kept), and the cursor of the next page if there is more. A cursor into a
    /// segment that has been rotated away continues at the oldest line kept.
    pub fn page(&self, from: Option<Cursor>, limit: usize) -> io::Result<(Vec<String>, Option<Cursor>)> {
        let mut segments = closed_segments(&self.dir, &self.name)?;
        segments.push(self.segment);
        let mut cursor = from.unwrap_or(Cursor {
            segment: segments[0],
            offset: 0,
        });
        if !segments.contains(&cursor.segment) {
            cursor = Cursor {
                segment: segments
                    .iter()
                    .copied()
                    .find(|s| *s > cursor.segment)
                    .unwrap_or(self.segment),
                offset: 0,
            };
        }
        let mut lines = Vec::new();
        for &segment in segments.iter().filter(|s| **s >= cursor.segment) {
            let offset = if segment == cursor.segment { cursor.offset } else { 0 };
            let mut file = match File::open(self.segment_path(segment)) {
                Ok(file) => file,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            file.seek(SeekFrom::Start(offset))?;
            let mut reader = BufReader::new(file);
            let mut position = offset;
            let mut line = String::new();
            loop {
                line.clear();
                let n = reader.read_line(&mut line)?;
                if n == 0 || !line.ends_with('\n') {
                    break;
                }
                position += n as u64;
                if lines.len() == limit {
                    return Ok((
                        lines,
                        Some(Cursor {
                            segment,
                            offset: position - n as u64,
                        }),
                    ));
                }
                lines.push(line.trim_end().to_string());
            }
        }
        Ok((lines, None))
    }

    fn segment_path(&self, segment: u64) -> PathBuf {
        if segment == self.segment {
            self.dir.join(&self.name)
        } else {
            self.dir.join(format!("{}.{segment}", self.name))
        }
    }

    fn rotate(&mut self) -> io::Result<()> {
        // What the closing segment holds is durable before syncs move to the new one.
        self.sync.sync()?;
        let active = self.dir.join(&self.name);
        fs::rename(&active, self.dir.join(format!("{}.{}", self.name, self.segment)))?;
        self.segment += 1;
        self.file = OpenOptions::new().create(true).append(true).open(&active)?;
        self.sync.replace(self.file.try_clone()?);
        self.size = 0;
        for old in closed_segments(&self.dir, &self.name)? {
            if old + self.keep_segments < self.segment {
                let _ = fs::remove_file(self.dir.join(format!("{}.{old}", self.name)));
            }
        }
        Ok(())
    }
}

fn closed_segments(dir: &Path, name: &str) -> io::Result<Vec<u64>> {
    let prefix = format!("{name}.");
    let mut numbers: Vec<u64> = fs::read_dir(dir)?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.strip_prefix(&prefix)?.parse().ok())
        .collect();
    numbers.sort_unstable();
    Ok(numbers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_read_back_across_rotation_and_old_segments_go() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = SegmentedLog::open(dir.path(), "t.jsonl", 100, 2).unwrap();
        let mut positions = Vec::new();
        for i in 0..20 {
            positions.push(log.append(format!("{{\"n\":{i:030}}}\n").as_bytes()).unwrap());
        }
        let last = *positions.last().unwrap();
        assert_eq!(log.read(last).unwrap(), format!("{{\"n\":{:030}}}\n", 19).into_bytes());
        assert!(log.read(positions[0]).is_err(), "the oldest segments are deleted");
        let kept: Vec<String> = log.lines().unwrap().collect();
        assert!(kept.len() < 20 && kept.last().unwrap().contains(&format!("{:030}", 19)));

        let (first, next) = log.page(None, 2).unwrap();
        assert_eq!(first.len(), 2);
        let (second, _) = log.page(next, 100).unwrap();
        assert_eq!(second.len() + 2, kept.len(), "pages cover what is kept, once");
        assert_eq!(second.last(), kept.last());
        let reopened = SegmentedLog::open(dir.path(), "t.jsonl", 100, 2).unwrap();
        assert_eq!(
            reopened.read(last).unwrap().len() as u64,
            last.length,
            "positions survive a restart"
        );
    }
}
