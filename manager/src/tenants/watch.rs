//! Watches `customer_information.json` and swaps each valid edit in atomically.
//!
//! The folder is watched (editors replace files by renaming), a burst of events is coalesced,
//! and the file is read again; only a change of its bytes is parsed: a valid, different
//! configuration replaces the current one and the subscribers are told; an invalid one is
//! logged with its line and reason and changes nothing. Reading the file is not a change
//! ([`crate::fswatch`]), so the watcher never reacts to its own reads, and a stop is seen
//! within one wait however busy the folder is.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::fswatch::{FolderWatch, watch_folder};

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

/// What the watcher thread is told.
enum Signal {
    /// Something in the folder may have changed.
    Changed,
    /// Stop.
    Stop,
}

/// How long the folder must be quiet before the file is read (an editor's write + rename +
/// chmod is one change), and the longest a stream of events can put the read off.
const QUIET: Duration = Duration::from_millis(100);
const MAX_COALESCE: Duration = Duration::from_secs(1);

/// The running watcher. Dropping it stops watching.
pub struct TenantsWatcher {
    handle: TenantsHandle,
    watch: Option<FolderWatch>,
    signals: mpsc::SyncSender<Signal>,
    thread: Option<JoinHandle<()>>,
}

impl TenantsWatcher {
    /// Loads `path` (which must be valid now) and starts watching it.
    pub fn start(path: &Path) -> Result<Self, TenantsError> {
        let content = read(path)?;
        let tenants = Tenants::parse(&String::from_utf8_lossy(&content), &path.display().to_string())?;
        log::info!("tenants loaded from {}: {}", path.display(), names(&tenants));
        let (sender, current) = watch::channel(Arc::new(tenants));
        let handle = TenantsHandle {
            current,
            subscribers: Arc::default(),
        };

        let (signals, received) = mpsc::sync_channel::<Signal>(16);
        let file_name = path.file_name().map(|n| n.to_os_string());
        let events = signals.clone();
        let folder = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let watch = watch_folder(folder, move |paths| {
            // A watcher error may hide a change: look again.
            let relevant = paths.is_none_or(|paths| {
                paths
                    .iter()
                    .any(|p| p.file_name().map(|n| n.to_os_string()) == file_name)
            });
            if relevant {
                // One pending signal is as good as many.
                let _ = events.try_send(Signal::Changed);
            }
        })
        .map_err(|e| TenantsError::Read {
            path: folder.display().to_string(),
            source: std::io::Error::other(format!("cannot watch the folder: {e}")),
        })?;

        let mut state = WatchState {
            path: path.to_path_buf(),
            sender,
            handle: handle.clone(),
            content,
        };
        let thread = std::thread::Builder::new()
            .name("tenants-watch".into())
            .spawn(move || state.run(&received))
            .map_err(|source| TenantsError::Read {
                path: path.display().to_string(),
                source,
            })?;
        Ok(TenantsWatcher {
            handle,
            watch: Some(watch),
            signals,
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
        // No more events, then the stop signal: the thread sees it within its next wait.
        drop(self.watch.take());
        let _ = self.signals.send(Signal::Stop);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

struct WatchState {
    path: PathBuf,
    sender: watch::Sender<Arc<Tenants>>,
    handle: TenantsHandle,
    /// The bytes of the configuration in force, or of the last edit refused: the file is
    /// parsed again only when they change.
    content: Vec<u8>,
}

impl WatchState {
    fn run(&mut self, signals: &mpsc::Receiver<Signal>) {
        loop {
            match signals.recv() {
                Ok(Signal::Changed) => {}
                Ok(Signal::Stop) | Err(_) => return,
            }
            let started = Instant::now();
            loop {
                match signals.recv_timeout(QUIET) {
                    Ok(Signal::Changed) if started.elapsed() < MAX_COALESCE => {}
                    Ok(Signal::Changed) | Err(RecvTimeoutError::Timeout) => break,
                    Ok(Signal::Stop) | Err(RecvTimeoutError::Disconnected) => return,
                }
            }
            // A bug in handling one edit must not end the watching: later edits (a tenant
            // removed, that is, its access revoked) must still apply.
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.reload())).is_err() {
                log::error!(
                    "the platform failed while reloading {}; keeping the configuration in force",
                    self.path.display()
                );
            }
        }
    }

    fn reload(&mut self) {
        let path = &self.path;
        let content = match read(path) {
            Ok(content) => content,
            Err(TenantsError::Read { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                log::error!("{} was removed; keeping the last good configuration", path.display());
                return;
            }
            Err(error) => {
                log::error!("cannot read the customer configuration, keeping the last good one: {error}");
                return;
            }
        };
        if content == self.content {
            return;
        }
        self.content = content;
        match Tenants::parse(&String::from_utf8_lossy(&self.content), &path.display().to_string()) {
            Ok(new) => self.apply(new),
            Err(error) => log::error!("customer configuration rejected, keeping the last good one: {error}"),
        }
    }

    fn apply(&self, new: Tenants) {
        let old = self.sender.borrow().clone();
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
            self.path.display(),
            added.join(","),
            removed.join(","),
            changed.join(",")
        );
        self.sender.send_replace(Arc::new(new));
        let current = self.handle.current();
        for subscriber in self.handle.subscribers.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            subscriber(&current);
        }
    }
}

/// The file's bytes.
fn read(path: &Path) -> Result<Vec<u8>, TenantsError> {
    std::fs::read(path).map_err(|source| TenantsError::Read {
        path: path.display().to_string(),
        source,
    })
}

fn names(tenants: &Tenants) -> String {
    tenants.iter().map(|(id, _)| id.as_str()).collect::<Vec<_>>().join(",")
}
