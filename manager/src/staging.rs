//! staging: accepted files waiting for ingestion, in `client-staging-input-directory/`.
//!
//! A file is staged as `<file_id>_<tenant>.<type>`, where the id is the server's receive time in
//! nanoseconds (unique in this process); a client's name is never used for a path. An upload
//! is written to `.incoming/` first; once complete it is fsynced, its metadata (the client's
//! name, size, times) is appended to the metadata log in `.meta/` ([`metadata`]) and synced,
//! and it is renamed into the folder and the folder fsynced. So a file visible in staging is
//! complete and durable, and has its metadata. The log's and the folder's syncs are group
//! commits: uploads that finish together share them.
//! Files the batch manager could not ingest move to `.failed/` for the operator.
//!
//! An ingested file is not deleted: it is emptied into `.spare/` and the next upload writes
//! into it. On a file system without a journal (ext4 so formatted, as on our CI machines)
//! every new inode is found by skipping the inodes deleted in the last minutes one by one, so
//! at hundreds of small files a second creating and deleting files cost a fifth of the
//! platform's CPU; renaming an existing file costs no allocation.

mod metadata;

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::durable::GroupSync;
use crate::source::FileId;
use crate::tenants::{FileType, TenantId};
use metadata::Metadata;

/// The folder's name in the platform's root.
pub const STAGING_DIR: &str = "client-staging-input-directory";

/// The sub-folder where files that failed are kept for the operator.
pub const FAILED_DIR: &str = ".failed";

/// The sub-folder of emptied files kept for reuse.
const SPARE_DIR: &str = ".spare";

/// Emptied files kept for reuse, at most (more are deleted).
const SPARES_KEPT: usize = 256;

/// A file in staging.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StagedFile {
    /// Its id.
    pub id: FileId,
    /// Its tenant.
    pub tenant: TenantId,
    /// Its type.
    pub file_type: FileType,
    /// Its path.
    pub path: PathBuf,
    /// Its size in bytes when it was found (a staged file is complete).
    pub size: u64,
}

impl StagedFile {
    /// `<id>_<tenant>.<type>`.
    pub fn name(&self) -> String {
        staged_name(self.id, &self.tenant, &self.file_type)
    }
}

/// What the platform knows about an accepted upload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UploadMeta {
    /// The name the client gave (informational only).
    pub client_file_name: String,
    /// Bytes received.
    pub file_received_size: u64,
    /// When the request started (seconds since the epoch).
    pub request_started_at: f64,
    /// When the file was durable in staging (seconds since the epoch).
    pub staged_at: f64,
    /// Ingestion attempts begun (kept here, so attempts before a crash count).
    #[serde(default)]
    pub attempts: u32,
}

/// Bytes of an upload held in memory before they are written out (by the blocking pool).
const WRITE_BUFFER_BYTES: usize = 64 << 10;

/// An upload being written.
pub struct IncomingFile {
    /// The id it will have.
    pub id: FileId,
    /// Its tenant.
    pub tenant: TenantId,
    /// Its type.
    pub file_type: FileType,
    path: PathBuf,
    /// `None` only while a write is under way on the blocking pool.
    file: Option<File>,
    buffer: Vec<u8>,
    written: u64,
    finished: bool,
}

impl IncomingFile {
    /// Appends a chunk of the body; the writes themselves run on the blocking pool, a buffer at
    /// a time, never on the async workers.
    pub async fn write(&mut self, chunk: &[u8]) -> io::Result<()> {
        self.buffer.extend_from_slice(chunk);
        self.written += chunk.len() as u64;
        if self.buffer.len() >= WRITE_BUFFER_BYTES {
            let mut file = self
                .file
                .take()
                .ok_or_else(|| io::Error::other("an earlier write failed"))?;
            let buffer = std::mem::take(&mut self.buffer);
            let (file, mut buffer) = tokio::task::spawn_blocking(move || {
                file.write_all(&buffer)?;
                Ok::<_, io::Error>((file, buffer))
            })
            .await
            .map_err(io::Error::other)??;
            buffer.clear();
            self.file = Some(file);
            self.buffer = buffer;
        }
        Ok(())
    }

    /// Bytes received so far.
    pub fn written(&self) -> u64 {
        self.written
    }
}

impl Drop for IncomingFile {
    fn drop(&mut self) {
        if !self.finished {
            // An upload that was refused or broke off leaves nothing behind.
            let path = std::mem::take(&mut self.path);
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => {
                    runtime.spawn_blocking(move || fs::remove_file(path));
                }
                Err(_) => {
                    let _ = fs::remove_file(path);
                }
            }
        }
    }
}

/// Empty files in `.spare/`, taken by new uploads and their metadata instead of new files.
#[derive(Debug)]
struct Spares {
    dir: PathBuf,
    free: Mutex<Vec<u64>>,
    next: AtomicU64,
}

impl Spares {
    /// Opens (creating) the folder and deletes what it holds: a spare left by an earlier run
    /// is not trusted to be empty, or to be a name of its own.
    fn open(dir: PathBuf) -> io::Result<Self> {
        fs::create_dir_all(&dir)?;
        for entry in fs::read_dir(&dir)?.flatten() {
            let _ = fs::remove_file(entry.path());
        }
        Ok(Spares {
            dir,
            free: Mutex::new(Vec::with_capacity(SPARES_KEPT)),
            next: AtomicU64::new(0),
        })
    }

    fn path(&self, number: u64) -> PathBuf {
        self.dir.join(format!("spare-{number}"))
    }

    /// An empty file at `path` (which must not exist), opened for writing: a spare moved there,
    /// or a new file when none is left.
    fn take(&self, path: &Path) -> io::Result<File> {
        let spare = self.free.lock().unwrap_or_else(|e| e.into_inner()).pop();
        if let Some(number) = spare
            && fs::rename(self.path(number), path).is_ok()
        {
            return fs::OpenOptions::new().write(true).truncate(true).open(path);
        }
        File::create(path)
    }

    /// Moves the file at `path` out of the way, emptied, for reuse; deletes it when enough are
    /// kept.
    fn give(&self, path: &Path) -> io::Result<()> {
        if self.free.lock().unwrap_or_else(|e| e.into_inner()).len() >= SPARES_KEPT {
            return fs::remove_file(path);
        }
        let number = self.next.fetch_add(1, Ordering::Relaxed);
        let spare = self.path(number);
        fs::rename(path, &spare)?;
        match fs::OpenOptions::new().write(true).truncate(true).open(&spare) {
            Ok(_) => self.free.lock().unwrap_or_else(|e| e.into_inner()).push(number),
            Err(_) => {
                let _ = fs::remove_file(&spare);
            }
        }
        Ok(())
    }
}

/// The staging folder.
#[derive(Debug)]
pub struct Staging {
    dir: PathBuf,
    last_id: AtomicU64,
    spares: Spares,
    /// Group commit of the folder's entries.
    entries: GroupSync,
    /// The staged files' metadata.
    metadata: Metadata,
}

impl Staging {
    /// Opens (creating) the folder and its `.incoming`, `.meta` and `.failed` sub-folders, and
    /// removes uploads that were cut off by a crash (their files and their metadata).
    pub fn open(dir: &Path) -> io::Result<Self> {
        for sub in [".incoming", FAILED_DIR] {
            fs::create_dir_all(dir.join(sub))?;
        }
        for entry in fs::read_dir(dir.join(".incoming"))?.flatten() {
            let _ = fs::remove_file(entry.path());
        }
        let metadata = Metadata::open(&dir.join(".meta"), |file| dir.join(file).is_file())?;
        Ok(Staging {
            dir: dir.to_path_buf(),
            last_id: AtomicU64::new(0),
            spares: Spares::open(dir.join(SPARE_DIR))?,
            entries: GroupSync::folder(dir)?,
            metadata,
        })
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A new, unique id: the time in nanoseconds, bumped if two requests share one.
    pub fn new_id(&self) -> FileId {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let mut last = self.last_id.load(Ordering::Relaxed);
        loop {
            let id = now.max(last + 1);
            match self
                .last_id
                .compare_exchange_weak(last, id, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return FileId(id),
                Err(current) => last = current,
            }
        }
    }

    /// Starts writing an upload in `.incoming/`.
    pub fn begin(&self, tenant: &TenantId, file_type: &FileType) -> io::Result<IncomingFile> {
        let id = self.new_id();
        let path = self
            .dir
            .join(".incoming")
            .join(format!("{}.part", staged_name(id, tenant, file_type)));
        let file = self.spares.take(&path)?;
        Ok(IncomingFile {
            id,
            tenant: tenant.clone(),
            file_type: file_type.clone(),
            path,
            file: Some(file),
            buffer: Vec::with_capacity(WRITE_BUFFER_BYTES),
            written: 0,
            finished: false,
        })
    }

    /// Makes a complete upload durable and visible to the batch manager.
    pub fn commit(&self, mut incoming: IncomingFile, meta: &UploadMeta) -> io::Result<StagedFile> {
        let file = incoming
            .file
            .as_mut()
            .ok_or_else(|| io::Error::other("an earlier write failed"))?;
        file.write_all(&incoming.buffer)?;
        file.sync_data()?;
        let staged = StagedFile {
            id: incoming.id,
            tenant: incoming.tenant.clone(),
            file_type: incoming.file_type.clone(),
            path: self
                .dir
                .join(staged_name(incoming.id, &incoming.tenant, &incoming.file_type)),
            size: incoming.written,
        };
        // Nothing reads the metadata before the file is in the folder; a file cut off before it
        // got there leaves only this behind, dropped at the next start.
        self.metadata.set(staged.id, &staged.name(), meta, true)?;
        fs::rename(&incoming.path, &staged.path)?;
        incoming.finished = true;
        self.entries.wait(self.entries.changed())?;
        Ok(staged)
    }

    /// Every staged file, oldest first.
    pub fn scan(&self) -> io::Result<Vec<StagedFile>> {
        let mut files: Vec<StagedFile> = fs::read_dir(&self.dir)?
            .flatten()
            .filter_map(|entry| self.parse(&entry.path()))
            .collect();
        files.sort_by_key(|f| f.id);
        Ok(files)
    }

    /// The staged file at `path`, if the name is a staging name.
    pub fn parse(&self, path: &Path) -> Option<StagedFile> {
        if path.parent() != Some(self.dir.as_path()) {
            return None;
        }
        let name = path.file_name()?.to_str()?;
        let (id, rest) = name.split_once('_')?;
        let (tenant, file_type) = rest.rsplit_once('.')?;
        let (id, tenant, file_type) = (id.parse().ok()?, tenant.parse().ok()?, file_type.parse().ok()?);
        let metadata = fs::metadata(path).ok().filter(fs::Metadata::is_file)?;
        Some(StagedFile {
            id,
            tenant,
            file_type,
            path: path.to_path_buf(),
            size: metadata.len(),
        })
    }

    /// The metadata of a staged file (a file dropped in by hand gets metadata from its size).
    pub fn meta(&self, file: &StagedFile) -> UploadMeta {
        self.metadata.get(file.id).unwrap_or_else(|| {
            let at = file.id.0 as f64 / 1e9;
            UploadMeta {
                client_file_name: file.name(),
                file_received_size: file.size,
                request_started_at: at,
                staged_at: at,
                attempts: 0,
            }
        })
    }

    /// Removes an ingested file and its metadata (emptied for reuse).
    pub fn remove(&self, file: &StagedFile) -> io::Result<()> {
        self.spares.give(&file.path)?;
        self.forget(file);
        Ok(())
    }

    fn forget(&self, file: &StagedFile) {
        self.metadata.forget(file.id);
    }

    /// Moves a file that could not be ingested to `.failed/`, for the operator.
    pub fn set_aside(&self, file: &StagedFile) -> io::Result<PathBuf> {
        let target = self.dir.join(FAILED_DIR).join(file.name());
        fs::rename(&file.path, &target)?;
        self.forget(file);
        Ok(target)
    }

    /// Counts an ingestion attempt of `file` and returns its metadata with the count of this
    /// attempt. The count is appended to the metadata log, not synced: a process that is
    /// killed keeps it (the kernel has it), a machine that loses power may count one less.
    pub fn begin_attempt(&self, file: &StagedFile) -> UploadMeta {
        let mut meta = self.meta(file);
        meta.attempts += 1;
        if let Err(e) = self.metadata.set(file.id, &file.name(), &meta, false) {
            log::warn!("staging: cannot count an attempt of {}: {e}", file.name());
        }
        meta
    }
}

/// `<id>_<tenant>.<type>`.
pub fn staged_name(id: FileId, tenant: &TenantId, file_type: &FileType) -> String {
    format!("{id}_{tenant}.{file_type}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokio_test_block_on<T>(future: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(future)
    }

    #[test]
    fn a_committed_upload_is_found_by_a_scan_with_its_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let staging = Staging::open(dir.path()).unwrap();
        let (tenant, csv): (TenantId, FileType) = ("client1".parse().unwrap(), "csv".parse().unwrap());
        let mut incoming = staging.begin(&tenant, &csv).unwrap();
        tokio_test_block_on(incoming.write(b"a,b\n1,2\n")).unwrap();
        let meta = UploadMeta {
            client_file_name: "../../etc/x.csv".into(),
            file_received_size: 8,
            request_started_at: 1.0,
            staged_at: 2.0,
            attempts: 0,
        };
        let staged = staging.commit(incoming, &meta).unwrap();
        assert_eq!(staging.scan().unwrap(), vec![staged.clone()]);
        assert_eq!(staging.meta(&staged), meta);
        assert!(staged.path.starts_with(dir.path()));
        staging.remove(&staged).unwrap();
        assert!(staging.scan().unwrap().is_empty());
    }

    #[test]
    fn an_abandoned_upload_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let staging = Staging::open(dir.path()).unwrap();
        let mut incoming = staging.begin(&"t".parse().unwrap(), &"csv".parse().unwrap()).unwrap();
        tokio_test_block_on(incoming.write(b"partial")).unwrap();
        drop(incoming);
        assert_eq!(fs::read_dir(dir.path().join(".incoming")).unwrap().count(), 0);
        assert!(staging.scan().unwrap().is_empty());
    }

    #[test]
    fn metadata_of_an_upload_cut_off_before_its_rename_is_cleared_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let staging = Staging::open(dir.path()).unwrap();
        let (tenant, csv): (TenantId, FileType) = ("client1".parse().unwrap(), "csv".parse().unwrap());
        let incoming = staging.begin(&tenant, &csv).unwrap();
        let kept = staging.commit(incoming, &meta_of(3)).unwrap();
        // An upload whose metadata was logged, cut off before its rename.
        let cut_off = staging.begin(&tenant, &csv).unwrap();
        let (id, name) = (cut_off.id, staged_name(cut_off.id, &tenant, &csv));
        staging.metadata.set(id, &name, &meta_of(5), true).unwrap();
        drop(cut_off);
        let orphan = dir.path().join(".meta").join("12_client1.csv.json");
        fs::write(&orphan, b"{").unwrap();
        drop(staging);
        let staging = Staging::open(dir.path()).unwrap();
        assert!(!orphan.exists());
        assert_eq!(
            staging.metadata.get(id),
            None,
            "the cut-off upload's metadata is dropped"
        );
        assert_eq!(staging.meta(&kept), meta_of(3), "the metadata of a staged file stays");
    }

    #[test]
    fn metadata_files_of_an_older_version_move_into_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let name = "1700000000000000000_client1.csv";
        fs::create_dir_all(dir.path().join(".meta")).unwrap();
        fs::write(dir.path().join(name), b"a,b\n").unwrap();
        let json = dir.path().join(".meta").join(format!("{name}.json"));
        fs::write(&json, serde_json::to_vec(&meta_of(4)).unwrap()).unwrap();
        let attempts = dir.path().join(".meta").join(format!("{name}.attempts"));
        fs::write(&attempts, b"3").unwrap();
        let staging = Staging::open(dir.path()).unwrap();
        let staged = staging.parse(&dir.path().join(name)).unwrap();
        let expected = UploadMeta {
            attempts: 3,
            ..meta_of(4)
        };
        assert_eq!(staging.meta(&staged), expected);
        assert!(!json.exists() && !attempts.exists(), "the old files are deleted");
        drop(staging);
        assert_eq!(
            Staging::open(dir.path()).unwrap().meta(&staged),
            expected,
            "the log has it"
        );
    }

    #[test]
    fn the_log_survives_a_line_cut_off_and_is_rewritten_when_mostly_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let staging = Staging::open(dir.path()).unwrap();
        let (tenant, csv): (TenantId, FileType) = ("client1".parse().unwrap(), "csv".parse().unwrap());
        let kept = staging
            .commit(staging.begin(&tenant, &csv).unwrap(), &meta_of(1))
            .unwrap();
        let log = dir.path().join(".meta").join("uploads.jsonl");
        let mut cut = fs::OpenOptions::new().append(true).open(&log).unwrap();
        cut.write_all(br#"{"file":"17_client1.csv","id":17,"me"#).unwrap();
        drop((cut, staging));

        let staging = Staging::open(dir.path()).unwrap();
        assert_eq!(staging.meta(&kept), meta_of(1));
        let gone = staging
            .commit(staging.begin(&tenant, &csv).unwrap(), &meta_of(2))
            .unwrap();
        for _ in 0..metadata::COMPACT_AFTER_LINES {
            staging.begin_attempt(&gone);
        }
        let before = fs::metadata(&log).unwrap().len();
        staging.remove(&gone).unwrap();
        let after = fs::metadata(&log).unwrap().len();
        assert!(after < before / 100, "rewritten: {before} -> {after} bytes");
        assert_eq!(fs::read_to_string(&log).unwrap().lines().count(), 1);
        staging.begin_attempt(&kept);
        drop(staging);
        let staging = Staging::open(dir.path()).unwrap();
        assert_eq!(staging.meta(&kept).attempts, 1, "appends after the rewrite count");
        assert_eq!(
            staging.meta(&gone).client_file_name,
            gone.name(),
            "a file that left has none"
        );
    }

    #[test]
    fn attempts_are_counted_in_the_metadata_across_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let staging = Staging::open(dir.path()).unwrap();
        let (tenant, csv): (TenantId, FileType) = ("client1".parse().unwrap(), "csv".parse().unwrap());
        let staged = staging
            .commit(staging.begin(&tenant, &csv).unwrap(), &meta_of(9))
            .unwrap();
        assert_eq!(staging.begin_attempt(&staged).attempts, 1);
        let staging = Staging::open(dir.path()).unwrap();
        let second = staging.begin_attempt(&staged);
        assert_eq!(
            second,
            UploadMeta {
                attempts: 2,
                ..meta_of(9)
            }
        );
        assert_eq!(staging.meta(&staged), second);
        assert_eq!(
            fs::read_dir(dir.path().join(".meta")).unwrap().count(),
            1,
            "no file but the metadata log"
        );
    }

    #[test]
    fn an_ingested_file_is_emptied_for_the_next_upload_and_spares_do_not_outlive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let staging = Staging::open(dir.path()).unwrap();
        let (tenant, csv): (TenantId, FileType) = ("client1".parse().unwrap(), "csv".parse().unwrap());
        let mut first = staging.begin(&tenant, &csv).unwrap();
        tokio_test_block_on(first.write(b"tenant data that must not leak\n")).unwrap();
        let first = staging.commit(first, &meta_of(31)).unwrap();
        staging.remove(&first).unwrap();
        let spares = dir.path().join(SPARE_DIR);
        let emptied: Vec<u64> = fs::read_dir(&spares)
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .collect();
        assert_eq!(emptied, vec![0], "the file, emptied");
        assert!(staging.scan().unwrap().is_empty());

        let mut second = staging.begin(&tenant, &csv).unwrap();
        tokio_test_block_on(second.write(b"1,2\n")).unwrap();
        let second = staging.commit(second, &meta_of(4)).unwrap();
        assert_eq!(fs::read(&second.path).unwrap(), b"1,2\n", "only the new upload's bytes");
        assert_eq!(staging.meta(&second), meta_of(4));
        assert_eq!(fs::read_dir(&spares).unwrap().count(), 0, "the spare was taken");

        staging.remove(&second).unwrap();
        drop(staging);
        let staging = Staging::open(dir.path()).unwrap();
        assert_eq!(
            fs::read_dir(&spares).unwrap().count(),
            0,
            "spares of an earlier run are deleted"
        );
        let third = staging
            .commit(staging.begin(&tenant, &csv).unwrap(), &meta_of(0))
            .unwrap();
        assert_eq!(fs::read(&third.path).unwrap(), b"");
    }

    fn meta_of(size: u64) -> UploadMeta {
        UploadMeta {
            client_file_name: "a.csv".into(),
            file_received_size: size,
            request_started_at: 1.0,
            staged_at: 2.0,
            attempts: 0,
        }
    }

    #[test]
    fn ids_are_unique_and_increasing() {
        let dir = tempfile::tempdir().unwrap();
        let staging = Staging::open(dir.path()).unwrap();
        let ids: Vec<FileId> = (0..1000).map(|_| staging.new_id()).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
    }
}
