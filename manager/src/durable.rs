//! Files the platform writes for itself: atomically and durably, so a crash leaves the old
//! content or the new, never half of either.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

/// Writes a file through a temporary name, fsyncs it and renames it into place.
pub fn write_durably(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    fs::rename(&tmp, path)?;
    if let Some(parent) = path.parent() {
        File::open(parent)?.sync_all()?;
    }
    Ok(())
}

/// Seconds since the epoch, now.
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Group commit of one file's (or folder's) changes: callers that made a change take a ticket
/// and wait until an fsync that began after their change has finished. Concurrent callers share
/// one fsync: while one runs, the changes made meanwhile wait for the next, which covers them
/// all. So N uploads or reports arriving together cost about two fsyncs, not N.
#[derive(Debug)]
pub struct GroupSync {
    state: Mutex<SyncState>,
    done: Condvar,
}

#[derive(Debug)]
struct SyncState {
    /// What an fsync syncs (a folder is opened read-only, a log for appending).
    file: Arc<File>,
    /// Changes made (tickets handed out).
    changed: u64,
    /// Changes known durable.
    synced: u64,
    /// An fsync is under way.
    syncing: bool,
    /// The changes the last failed fsync covered (above `.0`, up to `.1`): not durable.
    failed: (u64, u64),
    /// Fsyncs run.
    syncs: u64,
}

impl GroupSync {
    /// Group commit of the folder `dir`'s entries (creations, renames, removals).
    pub fn folder(dir: &Path) -> io::Result<Self> {
        Ok(Self::file(File::open(dir)?))
    }

    /// Group commit of `file`'s data.
    pub fn file(file: File) -> Self {
        GroupSync {
            state: Mutex::new(SyncState {
                file: Arc::new(file),
                changed: 0,
                synced: 0,
                syncing: false,
                failed: (0, 0),
                syncs: 0,
            }),
            done: Condvar::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SyncState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A ticket for a change that is complete (written, renamed) but not yet synced.
    pub fn changed(&self) -> u64 {
        let mut state = self.lock();
        state.changed += 1;
        state.changed
    }

    /// From now on syncs go to `file` (a log that rotated). Changes made to the previous file
    /// must have been synced by the caller.
    pub fn replace(&self, file: File) {
        let mut state = self.lock();
        state.file = Arc::new(file);
        state.synced = state.changed;
    }

    /// Returns once the change of `ticket` is durable: an fsync that started after it ended
    /// without error. When an fsync fails, every caller whose change it covered gets the error
    /// (a later fsync that succeeds says nothing about pages the kernel may have dropped).
    pub fn wait(&self, ticket: u64) -> io::Result<()> {
        let mut state = self.lock();
        loop {
            let (failed_after, failed_up_to) = state.failed;
            if ticket > failed_after && ticket <= failed_up_to {
                return Err(io::Error::other("an fsync covering this change failed"));
            }
            if state.synced >= ticket {
                return Ok(());
            }
            if state.syncing {
                state = self.done.wait(state).unwrap_or_else(|e| e.into_inner());
                continue;
            }
            state.syncing = true;
            let covers = state.changed;
            let (file, before) = (Arc::clone(&state.file), state.synced);
            drop(state);
            let result = file.sync_data();
            state = self.lock();
            state.syncing = false;
            state.syncs += 1;
            match &result {
                Ok(()) => state.synced = state.synced.max(covers),
                Err(_) => state.failed = (before, covers),
            }
            self.done.notify_all();
            result?;
        }
    }

    /// Fsyncs run so far.
    pub fn syncs(&self) -> u64 {
        self.lock().syncs
    }

    /// Makes every change so far durable.
    pub fn sync(&self) -> io::Result<()> {
        let ticket = self.lock().changed;
        self.wait(ticket)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_made_before_an_fsync_share_it() {
        let dir = tempfile::tempdir().unwrap();
        let sync = GroupSync::folder(dir.path()).unwrap();
        let tickets: Vec<u64> = (0..5).map(|_| sync.changed()).collect();
        sync.wait(tickets[4]).unwrap();
        assert_eq!(sync.syncs(), 1);
        for ticket in &tickets[..4] {
            sync.wait(*ticket).unwrap();
        }
        assert_eq!(sync.syncs(), 1, "the earlier changes were covered by the same fsync");
        let later = sync.changed();
        sync.wait(later).unwrap();
        assert_eq!(sync.syncs(), 2, "a change after an fsync needs another");
    }

    #[test]
    fn concurrent_writers_each_return_once_their_change_is_covered() {
        let dir = tempfile::tempdir().unwrap();
        let file = File::create(dir.path().join("log")).unwrap();
        let sync = GroupSync::file(file.try_clone().unwrap());
        std::thread::scope(|scope| {
            for _ in 0..8 {
                scope.spawn(|| {
                    for _ in 0..50 {
                        (&file).write_all(b"line\n").unwrap();
                        sync.wait(sync.changed()).unwrap();
                    }
                });
            }
        });
        assert!(sync.syncs() <= 400, "{} fsyncs for 400 changes", sync.syncs());
        assert_eq!(std::fs::read(dir.path().join("log")).unwrap().len(), 400 * 5);
    }
}
