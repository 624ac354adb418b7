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
    uploading: u64,
    files: BTreeMap<FileId, Tracked>,
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
    released: bool,
}

impl Drop for UploadReservation {
    fn drop(&mut self) {
        if !self.released {
            self.tracker
                .with(&self.tenant, |t| t.uploading = t.uploading.saturating_sub(1));
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
            if t.uploading + t.files.len() as u64 >= max_files {
                return false;
            }
            t.uploading += 1;
            true
        });
        reserved.then(|| UploadReservation {
            tracker: Arc::clone(self),
            tenant: tenant.clone(),
            released: false,
        })
    }

    /// The upload became a staged file.
    pub fn staged(&self, mut reservation: UploadReservation, file: FileId) {
        reservation.released = true;
        self.with(&reservation.tenant, |t| {
            t.uploading = t.uploading.saturating_sub(1);
            // The folder watcher may have seen the file first.
            t.files.entry(file).or_insert(Tracked {
                state: FileState::Queued,
                note: None,
            });
        });
    }

    /// A staged file found by a scan or the watcher; false if it is already known.
    pub fn discovered(&self, tenant: &TenantId, file: FileId) -> bool {
        self.with(tenant, |t| {
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
        self.with(tenant, |t| t.uploading + t.files.len() as u64)
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
}
