//! plugin host: discovers, checks, loads, hot-reloads and unloads tenant plugins.
//!
//! One thread owns every change. It diffs the desired state (the tenants of
//! `customer_information.json` and the plugin files in `plugins/`, by content hash) against
//! the running state and applies the difference plugin by plugin; start-up is the same path.
//! A changed file is loaded from a private copy (dlopen caches by path) as a new
//! [`PluginVersion`]; new work goes to it while work in flight finishes on the old one, which
//! is then retired and unloaded ([`version`] says how). A file that fails to load is recorded
//! against its hash and not retried until its content changes; a working version stays in
//! place meanwhile.
//!
//! Only [`loader`] calls `dlopen` or crosses the FFI.

pub mod check;
pub mod elf;
pub mod loader;
pub mod naming;
pub mod preflight;
pub mod rows;
pub mod version;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use sha2::{Digest, Sha256};

pub use loader::{CallError, LoadedLibrary};
pub use naming::{PluginId, PluginKind};
pub use version::{CallRefused, PluginManifest, PluginVersion, VersionState};

use crate::coredms::{Column, ColumnType, TableSchema};
use crate::fswatch::{FolderWatch, watch_folder};
use crate::tenants::watch::TenantsHandle;
use crate::tenants::{FileType, TenantId, Tenants};

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

/// The last failed load of a plugin file.
#[derive(Debug, Clone, Serialize)]
pub struct LoadFailure {
    /// The hash of the content that failed.
    pub sha256: String,
    /// Why.
    pub error: String,
    /// When (seconds since the epoch).
    pub at: f64,
    /// When the same content is tried again (a failure that may pass: storage was unreachable);
    /// `None`: only a new content is tried.
    #[serde(skip)]
    pub retry_at: Option<std::time::Instant>,
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

/// How long a version that could not be checked waits before it is tried again.
const ADMISSION_RETRY: Duration = Duration::from_secs(5);

#[derive(Default)]
struct Slot {
    current: Option<Arc<PluginVersion>>,
    failure: Option<LoadFailure>,
}

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
            .spawn(move || host_loop(&thread_shared, &receiver))?;
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

fn host_loop(shared: &Shared, commands: &mpsc::Receiver<Command>) {
    loop {
        let idle = if !shared.retiring.lock().unwrap_or_else(|e| e.into_inner()).is_empty() {
            Duration::from_millis(25)
        } else {
            next_retry(shared).map_or(Duration::from_secs(3600), |at| {
                at.saturating_duration_since(std::time::Instant::now())
            })
        };
        match commands.recv_timeout(idle) {
            Ok(Command::Reconcile(ack)) => {
                let mut acks: Vec<SyncSender<()>> = ack.into_iter().collect();
                if acks.is_empty() {
                    // A file event: let the burst settle (a copy in progress) before looking.
                    std::thread::sleep(shared.config.debounce);
                }
                let mut shutdown = None;
                while let Ok(command) = commands.try_recv() {
                    match command {
                        Command::Reconcile(ack) => acks.extend(ack),
                        Command::Shutdown(grace) => shutdown = Some(grace),
                    }
                }
                reconcile(shared);
                reap(shared);
                for ack in acks {
                    let _ = ack.send(());
                }
                if let Some(grace) = shutdown {
                    return shut_down(shared, grace);
                }
            }
            Ok(Command::Shutdown(grace)) => return shut_down(shared, grace),
            Err(RecvTimeoutError::Disconnected) => return shut_down(shared, Duration::from_secs(60)),
            Err(RecvTimeoutError::Timeout) => {
                let failed_scan_due = shared.scan_failed.load(Ordering::Relaxed)
                    && shared
                        .last_reconcile
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .elapsed()
                        >= SCAN_RETRY;
                let load_due = {
                    let slots = shared.slots.read().unwrap_or_else(|e| e.into_inner());
                    slots
                        .values()
                        .filter_map(|s| s.failure.as_ref()?.retry_at)
                        .any(|at| at <= std::time::Instant::now())
                };
                if failed_scan_due || load_due {
                    reconcile(shared);
                }
                reap(shared);
            }
        }
    }
}

/// The earliest time a failed load (or a failed look at `plugins/`) is due to be tried again.
fn next_retry(shared: &Shared) -> Option<std::time::Instant> {
    if shared.scan_failed.load(Ordering::Relaxed) {
        return Some(*shared.last_reconcile.lock().unwrap_or_else(|e| e.into_inner()) + SCAN_RETRY);
    }
    let slots = shared.slots.read().unwrap_or_else(|e| e.into_inner());
    slots.values().filter_map(|s| s.failure.as_ref()?.retry_at).min()
}

/// How soon `plugins/` is read again after it could not be.
const SCAN_RETRY: Duration = Duration::from_secs(1);

fn shut_down(shared: &Shared, grace: Duration) {
    let deadline = std::time::Instant::now() + grace;
    let mut slots = shared.slots.write().unwrap_or_else(|e| e.into_inner());
    let mut retiring = shared.retiring.lock().unwrap_or_else(|e| e.into_inner());
    for (_, slot) in std::mem::take(&mut *slots) {
        if let Some(version) = slot.current {
            version.retire();
            retiring.push(version);
        }
    }
    for version in retiring.drain(..) {
        if version.unload_within(deadline.saturating_duration_since(std::time::Instant::now())) {
            log::info!(
                "plugin unloaded: plugin={} generation={} reason=shutdown",
                version.id,
                version.generation
            );
        } else {
            log::error!(
                "plugin {} generation {} still busy at shutdown; left loaded",
                version.id,
                version.generation
            );
        }
    }
}

fn reap(shared: &Shared) {
    let mut retiring = shared.retiring.lock().unwrap_or_else(|e| e.into_inner());
    retiring.retain(|version| {
        if !version.try_unload() {
            return true;
        }
        shared.unloaded.fetch_add(1, Ordering::Relaxed);
        log::info!(
            "plugin unloaded: plugin={} version={} generation={} file={}",
            version.id,
            version.plugin_version(),
            version.generation,
            version.private_copy().display()
        );
        false
    });
}

/// What `plugins/` holds for the tenants in force: plugin → file. `Err` if the folder could
/// not be read whole: then what it holds is unknown, which is not the same as empty.
fn desired_state(shared: &Shared, tenants: &Tenants) -> std::io::Result<BTreeMap<PluginId, PathBuf>> {
    let mut desired = BTreeMap::new();
    for entry in std::fs::read_dir(&shared.config.plugins_dir)? {
        let path = entry?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()).map(str::to_string) else {
            continue;
        };
        if name.starts_with('.') || !name.ends_with(".so") || !path.is_file() {
            continue;
        }
        let id = match PluginId::from_file_name(&name) {
            Ok(id) => id,
            Err(reason) => {
                if shared
                    .warned_names
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(name)
                {
                    log::warn!("ignoring {}: {reason}", path.display());
                }
                continue;
            }
        };
        let Some(tenant) = tenants.get(&id.tenant) else {
            continue;
        };
        if let Some(file_type) = &id.file_type
            && !tenant.allows(file_type)
        {
            continue;
        }
        desired.insert(id, path);
    }
    Ok(desired)
}

fn reconcile(shared: &Shared) {
    *shared.last_reconcile.lock().unwrap_or_else(|e| e.into_inner()) = std::time::Instant::now();
    let tenants = shared.tenants.current();
    let desired = match desired_state(shared, &tenants) {
        Ok(desired) => {
            if shared.scan_failed.swap(false, Ordering::Relaxed) {
                log::info!("{} can be read again", shared.config.plugins_dir.display());
            }
            desired
        }
        Err(e) => {
            // Unknown, not empty: keep every plugin running as it is, and look again soon.
            if !shared.scan_failed.swap(true, Ordering::Relaxed) {
                log::error!(
                    "cannot read {}: {e}; the plugins loaded stay in service until it can be read",
                    shared.config.plugins_dir.display()
                );
            }
            return;
        }
    };
    let running: Vec<PluginId> = shared
        .slots
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .keys()
        .cloned()
        .collect();

    for id in running.iter().filter(|id| !desired.contains_key(*id)) {
        let reason = if tenants.get(&id.tenant).is_none() {
            "tenant removed from customer_information.json"
        } else if id
            .file_type
            .as_ref()
            .is_some_and(|t| tenants.get(&id.tenant).is_some_and(|tn| !tn.allows(t)))
        {
            "file type no longer allowed for the tenant"
        } else {
            "file removed from plugins/"
        };
        let slot = shared.slots.write().unwrap_or_else(|e| e.into_inner()).remove(id);
        if let Some(version) = slot.and_then(|s| s.current) {
            log::info!(
                "plugin retiring: plugin={id} generation={} reason={reason:?}",
                version.generation
            );
            version.retire();
            shared.retiring.lock().unwrap_or_else(|e| e.into_inner()).push(version);
        }
    }

    for (id, path) in &desired {
        let sha256 = match content_hash(shared, path) {
            Ok(hash) => hash,
            Err(e) => {
                log::warn!("cannot read {}: {e}", path.display());
                continue;
            }
        };
        {
            let slots = shared.slots.read().unwrap_or_else(|e| e.into_inner());
            if let Some(slot) = slots.get(id) {
                let due = |f: &LoadFailure| f.retry_at.is_some_and(|at| at <= std::time::Instant::now());
                let unchanged = slot.current.as_ref().is_some_and(|v| v.sha256 == sha256)
                    || slot.failure.as_ref().is_some_and(|f| f.sha256 == sha256 && !due(f));
                if unchanged {
                    continue;
                }
            }
        }
        let loaded = load_version(shared, id, path, &sha256).and_then(|version| admit(shared, id, version));
        match loaded {
            Ok(version) => {
                let mut slots = shared.slots.write().unwrap_or_else(|e| e.into_inner());
                let slot = slots.entry(id.clone()).or_default();
                slot.failure = None;
                let previous = slot.current.replace(Arc::clone(&version));
                drop(slots);
                let tables: Vec<&str> = version.manifest.tables.iter().map(|t| t.name.as_str()).collect();
                match previous {
                    Some(old) => {
                        log::info!(
                            "plugin reloaded: plugin={id} version={} generation={} previous_generation={} sha256={} tables={}",
                            version.plugin_version(),
                            version.generation,
                            old.generation,
                            &sha256[..12],
                            tables.join(",")
                        );
                        old.retire();
                        shared.retiring.lock().unwrap_or_else(|e| e.into_inner()).push(old);
                    }
                    None => log::info!(
                        "plugin loaded: plugin={id} version={} generation={} sha256={} tables={}",
                        version.plugin_version(),
                        version.generation,
                        &sha256[..12],
                        tables.join(",")
                    ),
                }
            }
            Err((error, retry)) => {
                let retry_at = retry.then(|| std::time::Instant::now() + ADMISSION_RETRY);
                log::error!(
                    "plugin load failed: plugin={id} file={} error={error:?}{}",
                    path.display(),
                    if retry { "; tried again soon" } else { "" }
                );
                let mut slots = shared.slots.write().unwrap_or_else(|e| e.into_inner());
                let slot = slots.entry(id.clone()).or_default();
                slot.failure = Some(LoadFailure {
                    sha256,
                    error,
                    at: unix_seconds(SystemTime::now()),
                    retry_at,
                });
            }
        }
    }
}

/// Runs a loaded version through the admission; a version refused (or not checkable now) is
/// unloaded again, and `Err` carries why and whether to try again.
fn admit(shared: &Shared, id: &PluginId, version: Arc<PluginVersion>) -> Result<Arc<PluginVersion>, (String, bool)> {
    let Some(admission) = &shared.config.admission else {
        return Ok(version);
    };
    let dropped = {
        let slots = shared.slots.read().unwrap_or_else(|e| e.into_inner());
        match slots.get(id).and_then(|s| s.current.as_ref()) {
            Some(current) => dropped_columns(&current.manifest.tables, &version.manifest.tables),
            None => Vec::new(),
        }
    };
    let refusal = match admission.admit(&id.tenant, &version.manifest.tables, &dropped) {
        Ok(()) => return Ok(version),
        Err(Refusal::Refused(reason)) => (format!("its tables cannot be applied: {reason}"), false),
        Err(Refusal::Unavailable(reason)) => (format!("its tables could not be checked: {reason}"), true),
    };
    version.retire();
    shared.retiring.lock().unwrap_or_else(|e| e.into_inner()).push(version);
    Err(refusal)
}

/// The `(table, column)` pairs of `old` tables that `new` no longer declares.
pub fn dropped_columns(old: &[TableSchema], new: &[TableSchema]) -> Vec<(String, String)> {
    let mut dropped = Vec::new();
    for table in old {
        let Some(next) = new.iter().find(|t| t.name == table.name) else {
            continue;
        };
        for column in &table.columns {
            if !next.columns.iter().any(|c| c.name == column.name) {
                dropped.push((table.name.clone(), column.name.clone()));
            }
        }
    }
    dropped
}

/// SHA-256 of a file, cached by size and modification time.
fn content_hash(shared: &Shared, path: &Path) -> std::io::Result<String> {
    let meta = std::fs::metadata(path)?;
    let key = (meta.len(), meta.modified()?);
    if let Some((len, modified, hash)) = shared.hashes.lock().unwrap_or_else(|e| e.into_inner()).get(path)
        && (*len, *modified) == key
    {
        return Ok(hash.clone());
    }
    let hash = hash_file(path)?;
    shared
        .hashes
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(path.to_path_buf(), (key.0, key.1, hash.clone()));
    Ok(hash)
}

/// SHA-256 of a file's content, in hex.
pub fn hash_file(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0; 1 << 20];
    loop {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Loads `path` as a new version of `id`: private copy, load and manifest on a thread that is
/// joined before anything else happens, then the manifest is checked against the file name.
fn load_version(
    shared: &Shared,
    id: &PluginId,
    path: &Path,
    sha256: &str,
) -> Result<Arc<PluginVersion>, (String, bool)> {
    let generation = shared.next_generation.fetch_add(1, Ordering::Relaxed);
    let copy = shared
        .config
        .cache_dir
        .join(format!("{}.g{generation}.{}.so", id, &sha256[..12]));
    std::fs::copy(path, &copy).map_err(|e| {
        (
            format!("cannot copy {} to {}: {e}", path.display(), copy.display()),
            true,
        )
    })?;
    // Messages name the operator's file, not the private copy.
    let probed = match &shared.config.preflight {
        Some(binary) => preflight::probe_in_child(binary, &copy),
        None => Ok(()),
    };
    let outcome = probed
        .and_then(|()| load_and_check(id, &copy, sha256))
        .map_err(|e| e.replace(&copy.display().to_string(), &path.display().to_string()));
    match outcome {
        Ok((library, manifest)) => Ok(Arc::new(PluginVersion::new(
            id.clone(),
            generation,
            sha256.to_string(),
            manifest,
            library,
            copy,
            shared.config.quarantine_after,
        ))),
        Err(error) => {
            let _ = std::fs::remove_file(&copy);
            Err((error, false))
        }
    }
}

/// Loads a library file and checks it as the plugin `id`. The library is closed again on
/// failure (after the loading thread was joined).
pub fn load_and_check(id: &PluginId, file: &Path, sha256: &str) -> Result<(LoadedLibrary, PluginManifest), String> {
    let copied_hash = hash_file(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    if copied_hash != sha256 {
        return Err("the file changed while it was being loaded; it will be loaded once it is complete".into());
    }
    let path = file.to_path_buf();
    let loading = std::thread::Builder::new()
        .name(format!("plugin-load-{}", id.tenant))
        .spawn(move || {
            let library = LoadedLibrary::load(&path).map_err(|e| e.to_string())?;
            let manifest = library.manifest();
            Ok::<_, String>((library, manifest))
        })
        .map_err(|e| format!("cannot start a loading thread: {e}"))?;
    let (library, manifest) = loading
        .join()
        .map_err(|_| "the platform failed while loading the library".to_string())??;
    let manifest = manifest.map_err(|e| format!("its manifest() failed: {}", e.message))?;
    let manifest = check_manifest(id, &manifest)?;
    Ok((library, manifest))
}

/// Checks a manifest against the plugin's file name and turns it into host types.
pub fn check_manifest(id: &PluginId, m: &plugin_api::ffi::Manifest) -> Result<PluginManifest, String> {
    let manifest = convert_manifest(m)?;
    check_identity(id, &manifest)?;
    Ok(manifest)
}

/// Checks that a manifest is the one the file name promises.
pub fn check_identity(id: &PluginId, m: &PluginManifest) -> Result<(), String> {
    if m.tenant != id.tenant.as_str() {
        return Err(format!(
            "its manifest names tenant {:?}, but its file name names tenant {:?}",
            m.tenant,
            id.tenant.as_str()
        ));
    }
    if m.kind != id.kind {
        let name = |k: PluginKind| if k == PluginKind::Batch { "batch" } else { "stream" };
        return Err(format!(
            "it is a {} plugin, but its file name is that of a {} plugin",
            name(m.kind),
            name(id.kind)
        ));
    }
    if let Some(file_type) = &id.file_type
        && !m.file_types.iter().any(|t| t == file_type.as_str())
    {
        return Err(format!(
            "its file name says file type {:?}, but it ingests {:?}",
            file_type.as_str(),
            m.file_types
        ));
    }
    Ok(())
}

/// Validates a manifest's content and turns it into host types.
pub fn convert_manifest(m: &plugin_api::ffi::Manifest) -> Result<PluginManifest, String> {
    if m.api_version != plugin_api::API_VERSION {
        return Err(format!(
            "its manifest says plugin-api version {}, the platform's is {}",
            m.api_version,
            plugin_api::API_VERSION
        ));
    }
    if m.tables.is_empty() {
        return Err("it declares no tables".into());
    }
    let mut tables = Vec::new();
    for table in m.tables.iter() {
        table
            .validate()
            .map_err(|e| format!("invalid table declaration: {e}"))?;
        if tables.iter().any(|t: &TableSchema| t.name == table.name.as_str()) {
            return Err(format!("table {:?} is declared twice", table.name.as_str()));
        }
        tables.push(TableSchema {
            name: table.name.to_string(),
            columns: table
                .columns
                .iter()
                .map(|c| Column {
                    name: c.name.to_string(),
                    column_type: column_type(c.column_type),
                    nullable: c.nullable,
                })
                .collect(),
            partition_key: table.partition_key.iter().map(|k| k.to_string()).collect(),
            clustering_key: table.clustering_key.iter().map(|k| k.to_string()).collect(),
        });
    }
    Ok(PluginManifest {
        tenant: m.tenant.to_string(),
        kind: PluginKind::from(m.kind),
        file_types: m.file_types.iter().map(|t| t.to_string()).collect(),
        api_version: m.api_version,
        plugin_version: m.plugin_version.to_string(),
        tables,
    })
}

fn column_type(t: plugin_api::ColumnType) -> ColumnType {
    match t {
        plugin_api::ColumnType::Text => ColumnType::Text,
        plugin_api::ColumnType::BigInt => ColumnType::BigInt,
        plugin_api::ColumnType::Int => ColumnType::Int,
        plugin_api::ColumnType::Double => ColumnType::Double,
        plugin_api::ColumnType::Boolean => ColumnType::Boolean,
        plugin_api::ColumnType::Timestamp => ColumnType::Timestamp,
        plugin_api::ColumnType::Blob => ColumnType::Blob,
    }
}

fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}
