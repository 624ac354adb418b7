//! plugin host: discovers, checks, loads, hot-reloads and unloads tenant plugins.
//!
//! One thread owns every change ([`reconcile`]): it diffs the desired state (the tenants of
//! `customer_information.json` and the plugin files in `plugins/`, by content hash) against
//! the running state and applies the difference plugin by plugin; start-up is the same path.
//! A changed file is loaded from a private copy (dlopen caches by path) as a new
//! [`PluginVersion`]; new work goes to it while work in flight finishes on the old one, which
//! is then retired and unloaded ([`version`] says how). A file that fails to load is recorded
//! against its hash with the kind of failure ([`status`]) and not retried until its content
//! changes (unless the failure may pass by itself); a working version stays in place meanwhile.
//!
//! Callers get work done through [`calls`] (a file's rows, a stream instance's batches): checked
//! host batches through a bounded channel. Only [`loader`] calls `dlopen` or crosses the FFI.

pub mod calls;
pub mod check;
pub mod elf;
pub mod loader;
pub mod manifest;
pub mod naming;
pub mod preflight;
mod reconcile;
pub mod rows;
pub mod sample;
pub mod status;
pub mod version;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, SyncSender};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

pub use calls::{BatchStream, CallOutcome, FileCall, Instance, StreamMessage};
pub use loader::CallError;
pub use manifest::{check_identity, convert_manifest, dropped_columns, hash_file};
pub use naming::{PluginId, PluginKind};
/// The class of a failed plugin call (an error, a caught panic, a cancellation).
pub use plugin_api::ErrorKind as CallErrorKind;
pub use status::{LoadFailure, LoadFailureKind, LoadedStatus, PluginStatus};
pub use version::{CallRefused, PluginManifest, PluginVersion, VersionState};

use crate::fswatch::{FolderWatch, watch_folder};
use crate::schema::TableSchema;
use crate::tenants::watch::TenantsHandle;
use crate::tenants::{FileType, TenantId};

/// Settings of the plugin host.
#[derive(Clone)]
pub struct PluginHostConfig {
    /// Where operators drop `.so` files.
    pub plugins_dir: PathBuf,
    /// Where private copies are loaded from (emptied at start).
    pub cache_dir: PathBuf,
    /// Failures in a row that quarantine a version.
    pub quarantine_after: u32,
    /// How long a burst of file events is coalesced.
    pub debounce: Duration,
    /// Whether to watch `plugins/` (tests drive [`PluginHost::reconcile_now`] instead).
    pub watch: bool,
    /// What a new version must pass before it takes work (none: every loadable version is
    /// admitted).
    pub admission: Option<Arc<dyn Admission>>,
    /// The `mysimbdp` binary that loads each new file in a child process first
    /// ([`preflight`]); none: files are loaded in this process only (tests of the host).
    pub preflight: Option<PathBuf>,
}

/// Why no plugin can take a piece of work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PluginUnavailable {
    /// No file for it in `plugins/`.
    #[error("no plugin {file} is loaded for tenant {tenant}")]
    Missing {
        /// The tenant.
        tenant: TenantId,
        /// The file name expected in `plugins/`.
        file: String,
    },
    /// Its file did not load.
    #[error("plugin {file} did not load: {error}")]
    LoadFailed {
        /// The file name.
        file: String,
        /// Why.
        error: String,
    },
    /// The loaded version is quarantined.
    #[error(transparent)]
    Refused(#[from] CallRefused),
}

/// Decides whether a newly loaded version may take work: the platform checks its tables
/// against its tenant's storage and applies what can be applied (new tables, added nullable
/// columns) before the version replaces the one in service. The plugin host itself knows
/// nothing of storage.
pub trait Admission: Send + Sync {
    /// `dropped` lists the `(table, column)` pairs that the version in service declared and the
    /// new one does not.
    fn admit(&self, tenant: &TenantId, tables: &[TableSchema], dropped: &[(String, String)]) -> Result<(), Refusal>;
}

/// Why a version was not admitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// It cannot take work (its tables cannot be applied): the version in service stays.
    Refused(String),
    /// It could not be checked now (storage unreachable): tried again later.
    Unavailable(String),
}

#[derive(Default)]
struct Slot {
    current: Option<Arc<PluginVersion>>,
    failure: Option<LoadFailure>,
}

enum Command {
    Reconcile(Option<SyncSender<()>>),
    /// Unload everything, waiting this long for calls in flight.
    Shutdown(Duration),
}

struct Shared {
    config: PluginHostConfig,
    tenants: TenantsHandle,
    slots: RwLock<BTreeMap<PluginId, Slot>>,
    retiring: Mutex<Vec<Arc<PluginVersion>>>,
    next_generation: AtomicU64,
    hashes: Mutex<HashMap<PathBuf, (u64, SystemTime, String)>>,
    warned_names: Mutex<BTreeSet<String>>,
    unloaded: AtomicU64,
    /// The last look at `plugins/` failed.
    scan_failed: std::sync::atomic::AtomicBool,
    /// When the last reconcile began.
    last_reconcile: Mutex<std::time::Instant>,
}

/// The running plugin host.
pub struct PluginHost {
    shared: Arc<Shared>,
    commands: SyncSender<Command>,
    thread: Mutex<Option<JoinHandle<()>>>,
    _watcher: Option<FolderWatch>,
}

impl PluginHost {
    /// Starts the host and loads what `plugins/` holds for the current tenants before
    /// returning. Later changes of the folder (if watched) or of the tenants are applied
    /// within the debounce time.
    pub fn start(config: PluginHostConfig, tenants: TenantsHandle) -> std::io::Result<Arc<Self>> {
        std::fs::create_dir_all(&config.plugins_dir)?;
        let _ = std::fs::remove_dir_all(&config.cache_dir);
        std::fs::create_dir_all(&config.cache_dir)?;
        let (commands, receiver) = mpsc::sync_channel::<Command>(16);
        let watcher = if config.watch {
            let trigger = commands.clone();
            let watch = watch_folder(&config.plugins_dir, move |_| {
                let _ = trigger.try_send(Command::Reconcile(None));
            })
            .map_err(std::io::Error::other)?;
            Some(watch)
        } else {
            None
        };
        let shared = Arc::new(Shared {
            config,
            tenants: tenants.clone(),
            slots: RwLock::default(),
            retiring: Mutex::default(),
            next_generation: AtomicU64::new(1),
            hashes: Mutex::default(),
            warned_names: Mutex::default(),
            unloaded: AtomicU64::new(0),
            scan_failed: std::sync::atomic::AtomicBool::new(false),
            last_reconcile: Mutex::new(std::time::Instant::now()),
        });
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("plugin-host".into())
            .spawn(move || reconcile::host_loop(&thread_shared, &receiver))?;
        let host = Arc::new(PluginHost {
            shared,
            commands,
            thread: Mutex::new(Some(thread)),
            _watcher: watcher,
        });
        let trigger = host.commands.clone();
        tenants.subscribe(move |_| {
            let _ = trigger.try_send(Command::Reconcile(None));
        });
        host.reconcile_now();
        Ok(host)
    }

    /// Applies the desired state now and waits until it is applied.
    pub fn reconcile_now(&self) {
        let (ack, done) = mpsc::sync_channel(1);
        if self.commands.send(Command::Reconcile(Some(ack))).is_ok() {
            let _ = done.recv();
        }
    }

    /// The version that ingests `file_type` files of `tenant` now.
    pub fn batch_plugin(
        &self,
        tenant: &TenantId,
        file_type: &FileType,
    ) -> Result<Arc<PluginVersion>, PluginUnavailable> {
        self.plugin(&PluginId::batch(tenant.clone(), file_type.clone()))
    }

    /// The version of `tenant`'s stream plugin now.
    pub fn stream_plugin(&self, tenant: &TenantId) -> Result<Arc<PluginVersion>, PluginUnavailable> {
        self.plugin(&PluginId::stream(tenant.clone()))
    }

    fn plugin(&self, id: &PluginId) -> Result<Arc<PluginVersion>, PluginUnavailable> {
        let slots = self.shared.slots.read().unwrap_or_else(|e| e.into_inner());
        let slot = slots.get(id);
        match slot.and_then(|s| s.current.as_ref()) {
            Some(version) => match version.state() {
                VersionState::Quarantined { reason } => Err(CallRefused::Quarantined {
                    plugin: id.to_string(),
                    version: version.plugin_version().to_string(),
                    reason,
                }
                .into()),
                _ => Ok(Arc::clone(version)),
            },
            None => match slot.and_then(|s| s.failure.as_ref()) {
                Some(failure) => Err(PluginUnavailable::LoadFailed {
                    file: id.file_name(),
                    error: failure.error.clone(),
                }),
                None => Err(PluginUnavailable::Missing {
                    tenant: id.tenant.clone(),
                    file: id.file_name(),
                }),
            },
        }
    }

    /// Every known plugin, for the status API.
    pub fn statuses(&self) -> Vec<PluginStatus> {
        let slots = self.shared.slots.read().unwrap_or_else(|e| e.into_inner());
        slots
            .iter()
            .map(|(id, slot)| PluginStatus {
                plugin: id.to_string(),
                tenant: id.tenant.clone(),
                kind: id.kind,
                file_type: id.file_type.clone(),
                version: slot.current.as_ref().map(|v| LoadedStatus {
                    plugin_version: v.plugin_version().to_string(),
                    generation: v.generation,
                    sha256: v.sha256.clone(),
                    state: v.state(),
                    calls: v.usage().calls.load(Ordering::Relaxed),
                    failures: v.usage().failures.load(Ordering::Relaxed),
                    cpu_seconds: v.usage().cpu_ns.load(Ordering::Relaxed) as f64 / 1e9,
                    tables: v.manifest.tables.clone(),
                }),
                load_failure: slot.failure.clone(),
            })
            .collect()
    }

    /// Versions replaced or removed but not yet unloaded.
    pub fn retiring(&self) -> usize {
        self.shared.retiring.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Versions unloaded since start.
    pub fn unloaded(&self) -> u64 {
        self.shared.unloaded.load(Ordering::Relaxed)
    }

    /// Retires every version, waits up to `grace` for their calls and unloads them (a version
    /// still busy after that stays mapped: the process is exiting).
    pub fn shutdown(&self, grace: Duration) {
        let _ = self.commands.send(Command::Shutdown(grace));
        if let Some(thread) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = thread.join();
        }
    }
}

impl Drop for PluginHost {
    fn drop(&mut self) {
        self.shutdown(Duration::from_secs(60));
    }
}
