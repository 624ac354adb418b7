//! Watches `customer_information.json` and swaps each valid edit in atomically.
//!
//! The folder is watched (editors replace files by renaming), events are coalesced, and the
//! file is parsed again: a valid, different configuration replaces the current one and the
//! subscribers are told; an invalid one is logged with its line and reason and changes
//! nothing.

use std::path::Path;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::watch;

use super::{Tenants, TenantsError};

type Subscriber = Box<dyn Fn(&Tenants) + Send + Sync>;

/// Read access to the current tenants, from any thread.
#[derive(Clone)]
pub struct TenantsHandle {
    current: watch::Receiver<Arc<Tenants>>,
    subscribers: Arc<Mutex<Vec<Subscriber>>>,
}

impl TenantsHandle {
    /// A handle on a fixed configuration (no file behind it).
    pub fn fixed(tenants: Tenants) -> Self {
        // A receiver keeps the last value after its sender is gone.
        let (_, current) = watch::channel(Arc::new(tenants));
        TenantsHandle {
            current,
            subscribers: Arc::default(),
        }
    }

    /// The configuration in force now.
    pub fn current(&self) -> Arc<Tenants> {
        self.current.borrow().clone()
    }

    /// Calls `f` after every change (on the watcher's thread; keep it short).
    pub fn subscribe(&self, f: impl Fn(&Tenants) + Send + Sync + 'static) {
        self.subscribers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Box::new(f));
    }
}

/// The running watcher. Dropping it stops watching.
pub struct TenantsWatcher {
    handle: TenantsHandle,
    _watcher: notify::RecommendedWatcher,
    stop: Option<mpsc::SyncSender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl TenantsWatcher {
    /// Loads `path` (which must be valid now) and starts watching it.
    pub fn start(path: &Path) -> Result<Self, anyhow::Error> {
        let tenants = Tenants::load(path)?;
        log::info!("tenants loaded from {}: {}", path.display(), names(&tenants));
        let (sender, current) = watch::channel(Arc::new(tenants));
        let handle = TenantsHandle {
            current,
            subscribers: Arc::default(),
        };

        let (events_tx, events_rx) = mpsc::sync_channel::<()>(1);
        let file_name = path.file_name().map(|n| n.to_os_string());
        let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            let relevant = match &event {
                Ok(event) => event
                    .paths
                    .iter()
                    .any(|p| p.file_name().map(|n| n.to_os_string()) == file_name),
                Err(_) => true,
            };
            if relevant {
                let _ = events_tx.try_send(());
            }
        })?;
        let folder = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        watcher.watch(folder, RecursiveMode::NonRecursive)?;

        let (stop_tx, stop_rx) = mpsc::sync_channel::<()>(1);
        let path = path.to_path_buf();
        let thread_handle = handle.clone();
        let thread = std::thread::Builder::new()
            .name("tenants-watch".into())
            .spawn(move || watch_loop(&path, &sender, &thread_handle, &events_rx, &stop_rx))?;
        Ok(TenantsWatcher {
            handle,
            _watcher: watcher,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// A handle on the configuration this watcher maintains.
    pub fn handle(&self) -> TenantsHandle {
        self.handle.clone()
    }
}

impl Drop for TenantsWatcher {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn watch_loop(
    path: &Path,
    sender: &watch::Sender<Arc<Tenants>>,
    handle: &TenantsHandle,
    events: &mpsc::Receiver<()>,
    stop: &mpsc::Receiver<()>,
) {
    loop {
        match events.recv_timeout(Duration::from_millis(200)) {
            Ok(()) => {}
            Err(RecvTimeoutError::Timeout) => {
                if !matches!(stop.try_recv(), Err(mpsc::TryRecvError::Empty)) {
                    return;
                }
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => return,
        }
        // Coalesce a burst of events (an editor's write + rename + chmod).
        std::thread::sleep(Duration::from_millis(100));
        while events.try_recv().is_ok() {}
        reload(path, sender, handle);
    }
}

fn reload(path: &Path, sender: &watch::Sender<Arc<Tenants>>, handle: &TenantsHandle) {
    let new = match Tenants::load(path) {
        Ok(new) => new,
        Err(TenantsError::Read { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            log::error!("{} was removed; keeping the last good configuration", path.display());
            return;
        }
        Err(error) => {
            log::error!("customer configuration rejected, keeping the last good one: {error}");
            return;
        }
    };
    let old = sender.borrow().clone();
    if *old == new {
        return;
    }
    let added: Vec<_> = new
        .iter()
        .filter(|(id, _)| old.get(id).is_none())
        .map(|(id, _)| id.to_string())
        .collect();
    let removed: Vec<_> = old
        .iter()
        .filter(|(id, _)| new.get(id).is_none())
        .map(|(id, _)| id.to_string())
        .collect();
    let changed: Vec<_> = new
        .iter()
        .filter(|(id, t)| old.get(id).is_some_and(|o| o != *t))
        .map(|(id, _)| id.to_string())
        .collect();
    log::info!(
        "tenants reloaded from {}: added=[{}] removed=[{}] changed=[{}]",
        path.display(),
        added.join(","),
        removed.join(","),
        changed.join(",")
    );
    sender.send_replace(Arc::new(new));
    let current = handle.current();
    for subscriber in handle.subscribers.lock().unwrap_or_else(|e| e.into_inner()).iter() {
        subscriber(&current);
    }
}

fn names(tenants: &Tenants) -> String {
    tenants.iter().map(|(id, _)| id.as_str()).collect::<Vec<_>>().join(",")
}
