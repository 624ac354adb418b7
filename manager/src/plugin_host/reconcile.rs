//! The plugin host's thread: it owns every change. Each reconcile diffs the desired state (the
//! tenants in force and the plugin files in `plugins/`, by content hash) against the running
//! state and applies the difference plugin by plugin: load a changed file from a private copy,
//! admit it, swap it in, retire what it replaced, unload what is retired once idle. Start-up,
//! a tenant's change and a file's change all take this one path.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender};
use std::time::{Duration, SystemTime};

use super::manifest::{dropped_columns, hash_file, load_and_check};
use super::status::{LoadFailure, LoadFailureKind, LoadProblem, unix_seconds};
use super::{Command, PluginId, PluginVersion, Refusal, Shared};
use crate::tenants::Tenants;

/// How long a file whose load may pass later (unreadable now, storage unreachable) waits before
/// it is tried again.
const LOAD_RETRY: Duration = Duration::from_secs(5);

pub(super) fn host_loop(shared: &Shared, commands: &mpsc::Receiver<Command>) {
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
pub(super) fn next_retry(shared: &Shared) -> Option<std::time::Instant> {
    if shared.scan_failed.load(Ordering::Relaxed) {
        return Some(*shared.last_reconcile.lock().unwrap_or_else(|e| e.into_inner()) + SCAN_RETRY);
    }
    let slots = shared.slots.read().unwrap_or_else(|e| e.into_inner());
    slots.values().filter_map(|s| s.failure.as_ref()?.retry_at).min()
}

/// How soon `plugins/` is read again after it could not be.
const SCAN_RETRY: Duration = Duration::from_secs(1);

pub(super) fn shut_down(shared: &Shared, grace: Duration) {
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

pub(super) fn reconcile(shared: &Shared) {
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
            Err(problem) => {
                let retry = problem.kind.may_pass();
                let retry_at = retry.then(|| std::time::Instant::now() + LOAD_RETRY);
                log::error!(
                    "plugin load failed: plugin={id} file={} kind={:?} error={:?}{}",
                    path.display(),
                    problem.kind,
                    problem.message,
                    if retry { "; tried again soon" } else { "" }
                );
                let mut slots = shared.slots.write().unwrap_or_else(|e| e.into_inner());
                let slot = slots.entry(id.clone()).or_default();
                slot.failure = Some(LoadFailure {
                    sha256,
                    kind: problem.kind,
                    error: problem.message,
                    at: unix_seconds(SystemTime::now()),
                    retry_at,
                });
            }
        }
    }
}

/// Runs a loaded version through the admission; a version refused (or not checkable now) is
/// unloaded again.
fn admit(shared: &Shared, id: &PluginId, version: Arc<PluginVersion>) -> Result<Arc<PluginVersion>, LoadProblem> {
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
    let problem = match admission.admit(&id.tenant, &version.manifest.tables, &dropped) {
        Ok(()) => return Ok(version),
        Err(Refusal::Refused(reason)) => LoadProblem::new(
            LoadFailureKind::Schema,
            format!("its tables cannot be applied: {reason}"),
        ),
        Err(Refusal::Unavailable(reason)) => LoadProblem::new(
            LoadFailureKind::StorageUnavailable,
            format!("its tables could not be checked: {reason}"),
        ),
    };
    version.retire();
    shared.retiring.lock().unwrap_or_else(|e| e.into_inner()).push(version);
    Err(problem)
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

/// Loads `path` as a new version of `id`: private copy, a load in a child process first (if
/// configured), then the load and manifest on a thread that is joined before anything else
/// happens, and the manifest checked against the file name.
fn load_version(shared: &Shared, id: &PluginId, path: &Path, sha256: &str) -> Result<Arc<PluginVersion>, LoadProblem> {
    let generation = shared.next_generation.fetch_add(1, Ordering::Relaxed);
    let copy = shared
        .config
        .cache_dir
        .join(format!("{}.g{generation}.{}.so", id, &sha256[..12]));
    std::fs::copy(path, &copy).map_err(|e| {
        LoadProblem::new(
            LoadFailureKind::Unreadable,
            format!("cannot copy {} to {}: {e}", path.display(), copy.display()),
        )
    })?;
    let probed = match &shared.config.preflight {
        Some(binary) => super::preflight::probe_in_child(binary, &copy),
        None => Ok(()),
    };
    // Messages name the operator's file, not the private copy.
    let outcome = probed
        .and_then(|()| load_and_check(id, &copy, sha256))
        .map_err(|mut problem| {
            problem.message = problem
                .message
                .replace(&copy.display().to_string(), &path.display().to_string());
            problem
        });
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
        Err(problem) => {
            let _ = std::fs::remove_file(&copy);
            Err(problem)
        }
    }
}
