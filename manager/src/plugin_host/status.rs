//! What the status API shows of each plugin: the version in service and its usage, and the last
//! failed load of its file with the kind of failure.

use serde::Serialize;
use std::time::SystemTime;

use super::{PluginKind, VersionState};
use crate::schema::TableSchema;
use crate::tenants::{FileType, TenantId};

/// A plugin as the status API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct PluginStatus {
    /// `clientbatchingestapp_client1_csv`.
    pub plugin: String,
    /// The tenant.
    pub tenant: TenantId,
    /// Batch or stream.
    pub kind: PluginKind,
    /// File type (batch).
    pub file_type: Option<FileType>,
    /// The loaded version (none if its file never loaded).
    pub version: Option<LoadedStatus>,
    /// The last failed load, if the file's current content failed.
    pub load_failure: Option<LoadFailure>,
}

/// A loaded version as the status API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct LoadedStatus {
    /// The plugin's version.
    pub plugin_version: String,
    /// Load generation.
    pub generation: u64,
    /// File hash.
    pub sha256: String,
    /// Active, quarantined or retiring.
    #[serde(flatten)]
    pub state: VersionState,
    /// Calls made.
    pub calls: u64,
    /// Calls failed.
    pub failures: u64,
    /// CPU seconds used by the version's threads.
    pub cpu_seconds: f64,
    /// Its tables.
    pub tables: Vec<TableSchema>,
}

/// What kept a plugin file from loading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LoadFailureKind {
    /// The file could not be read or copied now (it is tried again).
    Unreadable,
    /// Not a whole shared object, not a mysimbdp plugin, or built against another plugin-api.
    NotLoadable,
    /// Loading it crashed or hung a checking process.
    Crashed,
    /// Its manifest is invalid, or it is not the plugin its file name says.
    Manifest,
    /// Its tables cannot be applied to its tenant's storage.
    Schema,
    /// Its tables could not be checked now: storage was unreachable (it is tried again).
    StorageUnavailable,
}

impl LoadFailureKind {
    /// Whether the same content may load later, so it is tried again.
    pub fn may_pass(self) -> bool {
        matches!(self, LoadFailureKind::Unreadable | LoadFailureKind::StorageUnavailable)
    }
}

/// Why a file did not load, on the load path: a kind and a message for a person.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct LoadProblem {
    /// The kind.
    pub kind: LoadFailureKind,
    /// What is wrong, for the status and the log.
    pub message: String,
}

impl LoadProblem {
    /// A problem of `kind`.
    pub fn new(kind: LoadFailureKind, message: impl Into<String>) -> Self {
        LoadProblem {
            kind,
            message: message.into(),
        }
    }
}

/// The last failed load of a plugin file.
#[derive(Debug, Clone, Serialize)]
pub struct LoadFailure {
    /// The hash of the content that failed.
    pub sha256: String,
    /// What kind of failure.
    pub kind: LoadFailureKind,
    /// Why.
    pub error: String,
    /// When (seconds since the epoch).
    pub at: f64,
    /// When the same content is tried again (a failure that may pass); `None`: only a new
    /// content is tried.
    #[serde(skip)]
    pub retry_at: Option<std::time::Instant>,
}

/// Seconds since the epoch.
pub(super) fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}
