//! Files in flight per tenant (uploading, queued, ingesting), shared by daas and the batch
//! manager: the count behind `max_files_number`, and the status of a file before its report
//! exists.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use serde::Serialize;

use crate::source::FileId;
use crate::tenants::TenantId;

/// Where a file is before its report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FileState {
    /// Waiting for a turn (or for its plugin, or for storage: see the note).
    Queued,
    /// Being ingested.
    Ingesting,
}

#[derive(Debug, Clone)]
struct Tracked {
    state: FileState,
    note: Option<String>,
}

#[derive(Debug, Default)]
struct TenantFiles {
    /// Places held by uploads not yet staged.
    uploading: u64,
    /// The ids of those uploads once known, and whether the batch manager has seen the file
    /// already (the folder watcher can see a staged file before its upload says so): such a
    /// file holds one place, not two, and is not tracked again once finished.
    bound: BTreeMap<FileId, bool>,
    files: BTreeMap<FileId, Tracked>,
}

impl TenantFiles {
    fn in_flight(&self) -> u64 {
        let counted_twice = self.bound.keys().filter(|id| self.files.contains_key(id)).count();
        self.uploading + self.files.len() as u64 - counted_twice as u64
    }
}

/// The tracker.
#[derive(Debug, Default)]
pub struct FileTracker {
    tenants: Mutex<HashMap<TenantId, TenantFiles>>,
}

/// A place held for an upload in progress; dropping it frees the place.
#[derive(Debug)]
pub struct UploadReservation {
    tracker: Arc<FileTracker>,
    tenant: TenantId,
    file: Option<FileId>,
    released: bool,
}

impl UploadReservation {
    /// The upload's file id is known (its staging file is open).
    pub fn bind(&mut self, file: FileId) {
        self.file = Some(file);
        self.tracker.with(&self.tenant, |t| {
            t.bound.insert(file, false);
        });
    }
}

impl Drop for UploadReservation {
    fn drop(&mut self) {
        if !self.released {
            self.tracker.with(&self.tenant, |t| {
                t.uploading = t.uploading.saturating_sub(1);
                if let Some(file) = self.file {
                    t.bound.remove(&file);
                }
            });
        }
    }
}

impl FileTracker {
    fn with<R>(&self, tenant: &TenantId, f: impl FnOnce(&mut TenantFiles) -> R) -> R {
        let mut tenants = self.tenants.lock().unwrap_or_else(|e| e.into_inner());
        f(tenants.entry(tenant.clone()).or_default())
    }

    /// Holds a place for an upload if the tenant has fewer than `max_files` in flight.
    pub fn try_reserve(self: &Arc<Self>, tenant: &TenantId, max_files: u64) -> Option<UploadReservation> {
        let reserved = self.with(tenant, |t| {
            if t.in_flight() >= max_files {
                return false;
            }
            t.uploading += 1;
            true
        });
        reserved.then(|| UploadReservation {
            tracker: Arc::clone(self),
            tenant: tenant.clone(),
            file: None,
            released: false,
        })
    }

    /// The upload became a staged file.
    pub fn staged(&self, mut reservation: UploadReservation, file: FileId) {
        reservation.released = true;
        self.with(&reservation.tenant, |t| {
            t.uploading = t.uploading.saturating_sub(1);
            // The folder watcher may have seen the file first, and it may even be finished.
            let seen = t.bound.remove(&file).unwrap_or(false);
            if !seen {
                t.files.entry(file).or_insert(Tracked {
                    state: FileState::Queued,
                    note: None,
                });
            }
        });
    }

    /// A staged file found by a scan or the watcher; false if it is already known.
    pub fn discovered(&self, tenant: &TenantId, file: FileId) -> bool {
        self.with(tenant, |t| {
            if let Some(seen) = t.bound.get_mut(&file) {
                *seen = true;
            }
            if t.files.contains_key(&file) {
                return false;
            }
            t.files.insert(
                file,
                Tracked {
                    state: FileState::Queued,
                    note: None,
                },
            );
            true
        })
    }

    /// Moves a file to `state`, with an optional note (why it waits).
    pub fn set_state(&self, tenant: &TenantId, file: FileId, state: FileState, note: Option<String>) {
        self.with(tenant, |t| {
            if let Some(tracked) = t.files.get_mut(&file) {
                tracked.state = state;
                tracked.note = note;
            }
        });
    }

    /// A file's report was written: it is no longer in flight.
    pub fn finished(&self, tenant: &TenantId, file: FileId) {
        self.with(tenant, |t| {
            t.files.remove(&file);
        });
    }

    /// A file's state and note, while it is in flight.
    pub fn status(&self, tenant: &TenantId, file: FileId) -> Option<(FileState, Option<String>)> {
        self.with(tenant, |t| {
            t.files.get(&file).map(|f| (f.state.clone(), f.note.clone()))
        })
    }

    /// Files uploading, queued or ingesting.
    pub fn in_flight(&self, tenant: &TenantId) -> u64 {
        self.with(tenant, |t| t.in_flight())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uploads_and_staged_files_count_against_the_limit_until_finished() {
        let tracker = Arc::new(FileTracker::default());
        let tenant: TenantId = "a".parse().unwrap();
        let first = tracker.try_reserve(&tenant, 2).unwrap();
        let second = tracker.try_reserve(&tenant, 2).unwrap();
        assert!(tracker.try_reserve(&tenant, 2).is_none());
        drop(second);
        tracker.staged(first, FileId(1));
        assert_eq!(tracker.in_flight(&tenant), 1);
        assert_eq!(tracker.status(&tenant, FileId(1)), Some((FileState::Queued, None)));
        assert!(tracker.try_reserve(&tenant, 2).is_some());
        tracker.finished(&tenant, FileId(1));
        assert_eq!(tracker.in_flight(&tenant), 0);
    }

    #[test]
    fn a_file_the_watcher_sees_before_its_upload_ends_holds_one_place_and_is_not_tracked_again() {
        let tracker = Arc::new(FileTracker::default());
        let tenant: TenantId = "a".parse().unwrap();
        let mut first = tracker.try_reserve(&tenant, 2).unwrap();
        first.bind(FileId(1));
        // The watcher sees the staged file before the upload reports it staged.
        assert!(tracker.discovered(&tenant, FileId(1)));
        assert_eq!(tracker.in_flight(&tenant), 1);
        let second = tracker.try_reserve(&tenant, 2).expect("one file holds one place");
        drop(second);
        // It is ingested and finished before the upload's `staged` runs.
        tracker.finished(&tenant, FileId(1));
        tracker.staged(first, FileId(1));
        assert_eq!(tracker.in_flight(&tenant), 0);
        assert_eq!(tracker.status(&tenant, FileId(1)), None);
    }
}
