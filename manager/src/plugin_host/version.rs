//! One loaded version of a plugin and the threads it owns.
//!
//! Every call into a version runs on a thread the version owns (a file's call, or a stream
//! instance for its whole life); the version keeps the handles. A thread whose call ended waits
//! [`THREAD_LINGER`] for the version's next call before it ends, so a burst of small files does
//! not start a thread per file. Retiring a version stops new calls, fires its cancellation token
//! (instances close at their next batch boundary), tells its idle threads to end, waits for the
//! calls in flight, joins every thread (so the plugin's thread-local destructors have run), and
//! only then closes the library: with no thread-local destructor left registered, `dlclose`
//! really unmaps it.
//!
//! A version that fails several calls in a row (panics or internal errors, not bad input) is
//! quarantined: it takes no more work and says why, until a new file replaces it.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use plugin_api::ErrorKind;
use serde::Serialize;

use tokio_util::sync::CancellationToken;

use super::loader::{CallError, LoadedLibrary};
use super::naming::PluginId;
use crate::os::thread_cpu_ns;
use crate::schema::TableSchema;

/// What a plugin declared, in host types.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PluginManifest {
    /// The tenant named in the manifest.
    pub tenant: String,
    /// Batch or stream.
    pub kind: super::naming::PluginKind,
    /// File types (batch).
    pub file_types: Vec<String>,
    /// plugin-api version.
    pub api_version: u32,
    /// The plugin's own version.
    pub plugin_version: String,
    /// Its tables.
    pub tables: Vec<TableSchema>,
}

/// Whether a version takes work.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum VersionState {
    /// Takes work.
    Active,
    /// Failed too often; takes no work until replaced.
    Quarantined {
        /// The last failure.
        reason: String,
    },
    /// Replaced or removed: finishing its calls, then unloaded.
    Retiring,
}

/// Why a call could not start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallRefused {
    /// The version is quarantined.
    #[error("plugin {plugin} (version {version}) is quarantined: {reason}")]
    Quarantined {
        /// The plugin.
        plugin: String,
        /// Its version.
        version: String,
        /// Why.
        reason: String,
    },
    /// The version is being unloaded.
    #[error("plugin {plugin} (version {version}) is being replaced or removed")]
    Retiring {
        /// The plugin.
        plugin: String,
        /// Its version.
        version: String,
    },
    /// The OS would not start a thread.
    #[error("cannot start a thread for plugin {plugin}: {reason}")]
    Spawn {
        /// The plugin.
        plugin: String,
        /// Why.
        reason: String,
    },
}

/// A loaded version of a plugin file.
pub struct PluginVersion {
    /// Which plugin.
    pub id: PluginId,
    /// Increases with every load in this process.
    pub generation: u64,
    /// SHA-256 of the file's content.
    pub sha256: String,
    /// What it declared.
    pub manifest: PluginManifest,
    /// Its tables, by the index a plugin's batches name them with.
    pub(super) tables: Vec<Arc<TableSchema>>,
    /// Fired by [`retire`](Self::retire): long-lived threads (stream instances) stop at their
    /// next boundary.
    pub(super) retired: CancellationToken,
    library: RwLock<Option<LoadedLibrary>>,
    private_copy: PathBuf,
    state: Mutex<VersionState>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    pool: Mutex<Pool>,
    calls_in_flight: AtomicU64,
    consecutive_failures: AtomicU32,
    quarantine_after: u32,
    usage: Usage,
}

/// What a version's calls have used.
#[derive(Debug, Default)]
pub struct Usage {
    /// Calls made.
    pub calls: AtomicU64,
    /// Calls that failed.
    pub failures: AtomicU64,
    /// CPU time of the version's threads, in nanoseconds.
    pub cpu_ns: AtomicU64,
}

impl PluginVersion {
    pub(super) fn new(
        id: PluginId,
        generation: u64,
        sha256: String,
        manifest: PluginManifest,
        library: LoadedLibrary,
        private_copy: PathBuf,
        quarantine_after: u32,
    ) -> Self {
        PluginVersion {
            id,
            generation,
            sha256,
            tables: manifest.tables.iter().cloned().map(Arc::new).collect(),
            manifest,
            retired: CancellationToken::new(),
            library: RwLock::new(Some(library)),
            private_copy,
            state: Mutex::new(VersionState::Active),
            threads: Mutex::new(Vec::new()),
            pool: Mutex::new(Pool::default()),
            calls_in_flight: AtomicU64::new(0),
            consecutive_failures: AtomicU32::new(0),
            quarantine_after: quarantine_after.max(1),
            usage: Usage::default(),
        }
    }

    /// `1.0.0` (from the manifest).
    pub fn plugin_version(&self) -> &str {
        &self.manifest.plugin_version
    }

    /// The state now.
    pub fn state(&self) -> VersionState {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Usage counters.
    pub fn usage(&self) -> &Usage {
        &self.usage
    }

    /// Where the private copy it was loaded from lives (it shows in `/proc/self/maps`).
    pub fn private_copy(&self) -> &Path {
        &self.private_copy
    }

    /// Runs `call` on a thread owned by this version and returns a receiver for its result;
    /// the call's CPU time is added to the version's usage. The closure gets the library; it
    /// must not keep anything the plugin allocated.
    pub fn spawn_call<R, F>(self: &Arc<Self>, call: F) -> Result<tokio::sync::oneshot::Receiver<R>, CallRefused>
    where
        R: Send + 'static,
        F: FnOnce(&LoadedLibrary) -> R + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.spawn_owned(move |version, library| {
            let started = thread_cpu_ns();
            let result = call(library);
            version.add_cpu(thread_cpu_ns().saturating_sub(started));
            version.usage.calls.fetch_add(1, Ordering::Relaxed);
            let _ = tx.send(result);
        })?;
        Ok(rx)
    }

    /// Runs `work` on a thread owned by this version, for as long as it takes (a stream
    /// instance runs for the instance's life): an idle one of its threads if there is one, else
    /// a new one. The version counts it as a call in flight, so it is not unloaded before the
    /// work ends; retiring it fires [`retired`](Self::retired).
    pub(super) fn spawn_owned<F>(self: &Arc<Self>, work: F) -> Result<(), CallRefused>
    where
        F: FnOnce(&Arc<PluginVersion>, &LoadedLibrary) + Send + 'static,
    {
        self.check_takes_work()?;
        let in_flight = InFlight::new(Arc::clone(self));
        let job: Job = Box::new(move || {
            let version = &in_flight.0;
            let library = version.library.read().unwrap_or_else(|e| e.into_inner());
            if let Some(library) = library.as_ref() {
                work(version, library);
            }
            // `in_flight` drops here, after the lock: the call is over, even if `work` panicked.
        });
        let job = match self.hand_to_idle_thread(job) {
            Ok(()) => return Ok(()),
            Err(job) => job,
        };
        let (sender, jobs) = std::sync::mpsc::sync_channel(1);
        let version = Arc::downgrade(self);
        let name = format!("plugin-{}-g{}", self.id.tenant, self.generation);
        // On failure the job is dropped unrun, and with it its count in flight.
        let spawned = std::thread::Builder::new()
            .name(name)
            .spawn(move || pooled_thread(version, sender, jobs, job));
        match spawned {
            Ok(handle) => {
                let mut threads = self.threads.lock().unwrap_or_else(|e| e.into_inner());
                reap_finished(&mut threads);
                threads.push(handle);
                Ok(())
            }
            Err(e) => Err(CallRefused::Spawn {
                plugin: self.id.to_string(),
                reason: e.to_string(),
            }),
        }
    }

    /// Gives `job` to an idle thread of this version; hands it back if there is none.
    fn hand_to_idle_thread(&self, mut job: Job) -> Result<(), Job> {
        let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(idle) = pool.idle.pop() {
            // An idle thread's channel is empty, so this never blocks; a thread that is gone
            // gives the job back.
            match idle.sender.try_send(Some(job)) {
                Ok(()) => return Ok(()),
                Err(TrySendError::Full(back) | TrySendError::Disconnected(back)) => {
                    job = back.expect("a job was sent");
                }
            }
        }
        Err(job)
    }

    /// How many of this version's threads wait for a call.
    pub fn idle_threads(&self) -> usize {
        self.pool.lock().unwrap_or_else(|e| e.into_inner()).idle.len()
    }

    /// Tells the idle threads to end and the busy ones to end after their call.
    fn close_pool(&self) {
        let idle = {
            let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
            pool.closed = true;
            std::mem::take(&mut pool.idle)
        };
        for thread in idle {
            let _ = thread.sender.try_send(None);
        }
    }

    /// `Err` unless the version is active.
    pub(super) fn check_takes_work(&self) -> Result<(), CallRefused> {
        match &*self.state.lock().unwrap_or_else(|e| e.into_inner()) {
            VersionState::Active => Ok(()),
            VersionState::Quarantined { reason } => Err(CallRefused::Quarantined {
                plugin: self.id.to_string(),
                version: self.plugin_version().to_string(),
                reason: reason.clone(),
            }),
            VersionState::Retiring => Err(CallRefused::Retiring {
                plugin: self.id.to_string(),
                version: self.plugin_version().to_string(),
            }),
        }
    }

    /// Adds CPU time a thread of this version used.
    pub(super) fn add_cpu(&self, ns: u64) {
        self.usage.cpu_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// Counts a call's outcome; quarantines after too many failures in a row. Returns true
    /// when this failure quarantined the version.
    pub fn record_outcome(&self, outcome: Result<(), &CallError>) -> bool {
        match outcome {
            Ok(()) => {
                self.consecutive_failures.store(0, Ordering::Relaxed);
                false
            }
            // Bad input is the sender's fault; a cancelled call is the platform's decision.
            Err(e) if matches!(e.kind, ErrorKind::InvalidInput | ErrorKind::Cancelled) => false,
            Err(e) => {
                self.usage.failures.fetch_add(1, Ordering::Relaxed);
                let failures = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
                if failures < self.quarantine_after {
                    return false;
                }
                let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
                if *state != VersionState::Active {
                    return false;
                }
                let reason = format!("{failures} failures in a row; the last: {}", e.message);
                log::error!(
                    "plugin quarantined: plugin={} version={} generation={} reason={reason:?}; a new file lifts it",
                    self.id,
                    self.plugin_version(),
                    self.generation
                );
                *state = VersionState::Quarantined { reason };
                true
            }
        }
    }

    /// Stops new calls and tells long-lived threads to stop at their next boundary.
    /// [`try_unload`](Self::try_unload) finishes the job once they have.
    pub(super) fn retire(&self) {
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = VersionState::Retiring;
        self.retired.cancel();
        self.close_pool();
    }

    /// If no call is in flight: joins the version's threads, closes the library and deletes the
    /// private copy. Returns whether the version is now unloaded.
    pub(super) fn try_unload(&self) -> bool {
        if self.calls_in_flight.load(Ordering::SeqCst) > 0 {
            return false;
        }
        self.close_pool();
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|e| e.into_inner()));
        for thread in threads {
            // With the pool closed and no call in flight, each thread is ending; joining waits
            // for its TLS destructors.
            let _ = thread.join();
        }
        let library = self.library.write().unwrap_or_else(|e| e.into_inner()).take();
        let was_loaded = library.is_some();
        drop(library);
        if was_loaded {
            let _ = std::fs::remove_file(&self.private_copy);
        }
        true
    }

    /// Waits up to `timeout` for the calls in flight, then unloads. For shutdown.
    pub(super) fn unload_within(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while !self.try_unload() {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }
}

impl std::fmt::Debug for PluginVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginVersion")
            .field("id", &self.id.to_string())
            .field("generation", &self.generation)
            .field("plugin_version", &self.plugin_version())
            .field("state", &self.state())
            .finish_non_exhaustive()
    }
}

impl Drop for PluginVersion {
    fn drop(&mut self) {
        let library = self.library.get_mut().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(library) = library {
            // Not unloaded through `try_unload`: its threads may still run or hold TLS, so
            // closing here could unmap code in use. Keep it mapped and say so.
            log::error!(
                "plugin {} generation {} dropped while loaded; leaving it mapped",
                self.id,
                self.generation
            );
            std::mem::forget(library);
        }
    }
}

/// How long a thread whose call ended waits for the version's next call.
pub const THREAD_LINGER: Duration = Duration::from_secs(10);

/// A call for one of the version's threads.
type Job = Box<dyn FnOnce() + Send>;

/// The version's threads that wait for a call.
#[derive(Default)]
struct Pool {
    idle: Vec<IdleThread>,
    /// Set when the version retires or unloads: threads end after their call.
    closed: bool,
    next_thread: u64,
}

struct IdleThread {
    id: u64,
    /// Capacity 1; `None` tells the thread to end.
    sender: SyncSender<Option<Job>>,
}

/// A call in flight, counted until this drops (also when the call panics).
struct InFlight(Arc<PluginVersion>);

impl InFlight {
    fn new(version: Arc<PluginVersion>) -> Self {
        version.calls_in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(version)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.calls_in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A thread of a version: runs `job`, then waits up to [`THREAD_LINGER`] for the next one.
/// Between calls it holds no strong reference to the version, so an idle thread never keeps
/// one alive.
fn pooled_thread(version: Weak<PluginVersion>, sender: SyncSender<Option<Job>>, jobs: Receiver<Option<Job>>, job: Job) {
    let mut job = job;
    loop {
        job();
        let id = {
            let Some(version) = version.upgrade() else { return };
            let mut pool = version.pool.lock().unwrap_or_else(|e| e.into_inner());
            if pool.closed {
                return;
            }
            let id = pool.next_thread;
            pool.next_thread += 1;
            pool.idle.push(IdleThread {
                id,
                sender: sender.clone(),
            });
            id
        };
        job = match jobs.recv_timeout(THREAD_LINGER) {
            Ok(Some(next)) => next,
            Ok(None) | Err(RecvTimeoutError::Disconnected) => return,
            Err(RecvTimeoutError::Timeout) => {
                let Some(version) = version.upgrade() else { return };
                let mut pool = version.pool.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(at) = pool.idle.iter().position(|idle| idle.id == id) {
                    pool.idle.swap_remove(at);
                    return;
                }
                // Taken off the idle list just now: a job or the word to end is on its way.
                drop(pool);
                drop(version);
                match jobs.recv() {
                    Ok(Some(next)) => next,
                    Ok(None) | Err(_) => return,
                }
            }
        };
    }
}

fn reap_finished(threads: &mut Vec<JoinHandle<()>>) {
    let mut i = 0;
    while i < threads.len() {
        if threads[i].is_finished() {
            let _ = threads.swap_remove(i).join();
        } else {
            i += 1;
        }
    }
}
