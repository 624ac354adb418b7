//! The staged files' metadata: one log, `.meta/uploads.jsonl`, a JSON line per change (an
//! upload's metadata, then each attempt's count), the latest line of a file winning, and the
//! live entries in memory. An upload's line is group-committed with those of the uploads that
//! finish beside it, one `fdatasync` for all, where a file per upload cost a new inode, its
//! own `fdatasync` and a sync of its folder. The log is rewritten with only the live entries at
//! start and whenever it holds four times as many lines as entries (and at least
//! [`COMPACT_AFTER_LINES`]): through a temporary name, synced, renamed, its folder synced.
//!
//! Files staged before the log existed have `.meta/<name>.json` (and maybe `<name>.attempts`):
//! they are read into the log at start and deleted once the log holds them durably.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use super::UploadMeta;
use crate::durable::GroupSync;
use crate::source::FileId;

/// The log's name in `.meta/`.
const LOG: &str = "uploads.jsonl";

/// The log is not rewritten before it has this many lines.
pub(super) const COMPACT_AFTER_LINES: u64 = 4096;

/// A line of the log.
#[derive(Serialize, Deserialize)]
struct Line {
    /// The staged file's name (`<id>_<tenant>.<type>`): an entry whose file is not in staging at
    /// start belonged to an upload cut off before its rename, or to a file that left.
    file: String,
    id: FileId,
    meta: UploadMeta,
}

#[derive(Debug)]
struct Entry {
    file: String,
    meta: UploadMeta,
}

#[derive(Debug)]
struct State {
    log: File,
    lines: u64,
    entries: HashMap<FileId, Entry>,
}

/// The metadata of the files in staging.
#[derive(Debug)]
pub(super) struct Metadata {
    dir: PathBuf,
    state: Mutex<State>,
    /// Group commit of the log's appends.
    sync: GroupSync,
    /// Group commit of `.meta/`'s entries (the log's rewrites).
    entries: GroupSync,
}

impl Metadata {
    /// Reads the log (and metadata files of an older version) in `dir`, keeps the entries of
    /// files `in_staging` accepts, and rewrites the log with them.
    pub(super) fn open(dir: &Path, in_staging: impl Fn(&str) -> bool) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        let mut entries = read_log(&dir.join(LOG))?;
        let legacy = read_legacy(dir, &mut entries);
        entries.retain(|_, entry| in_staging(&entry.file));
        let folder = GroupSync::folder(dir)?;
        let log = rewrite(dir, &entries, &folder)?;
        for path in legacy {
            let _ = fs::remove_file(path);
        }
        Ok(Metadata {
            dir: dir.to_path_buf(),
            sync: GroupSync::file(log.try_clone()?),
            state: Mutex::new(State {
                log,
                lines: entries.len() as u64,
                entries,
            }),
            entries: folder,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The metadata of file `id`, if it has any.
    pub(super) fn get(&self, id: FileId) -> Option<UploadMeta> {
        self.lock().entries.get(&id).map(|entry| entry.meta.clone())
    }

    /// Sets the metadata of `file` (its staged name) and, if `durable`, returns once the log
    /// holds it on disk.
    pub(super) fn set(&self, id: FileId, file: &str, meta: &UploadMeta, durable: bool) -> io::Result<()> {
        let line = Line {
            file: file.to_string(),
            id,
            meta: meta.clone(),
        };
        let mut bytes = serde_json::to_vec(&line).map_err(io::Error::other)?;
        bytes.push(b'\n');
        let ticket = {
            let mut state = self.lock();
            state.log.write_all(&bytes)?;
            state.lines += 1;
            state.entries.insert(
                id,
                Entry {
                    file: line.file,
                    meta: line.meta,
                },
            );
            self.sync.changed()
        };
        if durable {
            self.sync.wait(ticket)?;
        }
        Ok(())
    }

    /// Forgets file `id` (it left staging); the log is rewritten when it is mostly forgotten
    /// lines.
    pub(super) fn forget(&self, id: FileId) {
        let mut state = self.lock();
        if state.entries.remove(&id).is_none() {
            return;
        }
        let live = state.entries.len() as u64;
        if state.lines >= COMPACT_AFTER_LINES && state.lines > 4 * live {
            // Lines appended to the old log are in the new one, which is synced before it
            // takes the old one's name: waiters on the old log's sync are covered by it.
            match rewrite(&self.dir, &state.entries, &self.entries).and_then(|log| Ok((log.try_clone()?, log))) {
                Ok((for_sync, log)) => {
                    self.sync.replace(for_sync);
                    state.log = log;
                    state.lines = live;
                }
                Err(e) => log::warn!("staging: cannot rewrite {}: {e}", self.dir.join(LOG).display()),
            }
        }
    }
}

/// The latest entry of each file in the log at `path`; a line cut off by a crash is ignored.
fn read_log(path: &Path) -> io::Result<HashMap<FileId, Entry>> {
    let mut entries = HashMap::new();
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(entries),
        Err(e) => return Err(e),
    };
    for line in io::BufReader::new(file).split(b'\n') {
        if let Ok(line) = serde_json::from_slice::<Line>(&line?) {
            entries.insert(
                line.id,
                Entry {
                    file: line.file,
                    meta: line.meta,
                },
            );
        }
    }
    Ok(entries)
}

/// Metadata files of an older version (`<name>.json`, `<name>.attempts`) added to `entries`
/// (where the log has none for the file); returns every such file, to be deleted.
fn read_legacy(dir: &Path, entries: &mut HashMap<FileId, Entry>) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().to_string();
        let Some(file) = name.strip_suffix(".json").or_else(|| name.strip_suffix(".attempts")) else {
            continue;
        };
        let Some(id) = file.split_once('_').and_then(|(id, _)| id.parse::<FileId>().ok()) else {
            continue;
        };
        found.push(path.clone());
        if entries.contains_key(&id) || !name.ends_with(".json") {
            continue;
        }
        let Some(mut meta) = fs::read(&path)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<UploadMeta>(&bytes).ok())
        else {
            continue;
        };
        if let Some(before) = fs::read_to_string(dir.join(format!("{file}.attempts")))
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
        {
            meta.attempts = meta.attempts.max(before);
        }
        entries.insert(
            id,
            Entry {
                file: file.to_string(),
                meta,
            },
        );
    }
    found
}

/// Writes a log of `entries` durably in place of the old one; returns it, open for appending.
fn rewrite(dir: &Path, entries: &HashMap<FileId, Entry>, folder: &GroupSync) -> io::Result<File> {
    let tmp = dir.join(format!("{LOG}.tmp"));
    let mut out = io::BufWriter::new(File::create(&tmp)?);
    for (&id, entry) in entries {
        let line = Line {
            file: entry.file.clone(),
            id,
            meta: entry.meta.clone(),
        };
        serde_json::to_writer(&mut out, &line).map_err(io::Error::other)?;
        out.write_all(b"\n")?;
    }
    let file = out.into_inner().map_err(|e| e.into_error())?;
    file.sync_data()?;
    drop(file);
    fs::rename(&tmp, dir.join(LOG))?;
    folder.wait(folder.changed())?;
    fs::OpenOptions::new().append(true).open(dir.join(LOG))
}
