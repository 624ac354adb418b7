//! Watching a folder for changes, the one way every watched input of the platform does it
//! (`customer_information.json`, `plugins/`, staging).
//!
//! Only events that can change what a file holds count: creation, modification, removal and
//! renames. Opening, reading and closing a file (inotify's access events) do not: the platform
//! reads the files it watches, and reacting to its own reads would make it re-read them forever.

use std::path::Path;

use notify::event::EventKind;
use notify::{RecursiveMode, Watcher};

/// A running watch; dropping it stops watching.
pub type FolderWatch = notify::RecommendedWatcher;

/// Whether an event may have changed a file's content or presence.
pub fn is_change(kind: &EventKind) -> bool {
    !matches!(kind, EventKind::Access(_))
}

/// Watches `folder` (not recursively) and calls `on_change` with the paths of each change
/// event, or with `None` when the watcher itself reports an error (the caller should look at
/// the folder again: something may have been missed).
pub fn watch_folder(
    folder: &Path,
    mut on_change: impl FnMut(Option<&[std::path::PathBuf]>) + Send + 'static,
) -> notify::Result<FolderWatch> {
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| match event {
        Ok(event) if is_change(&event.kind) => on_change(Some(&event.paths)),
        Ok(_) => {}
        Err(_) => on_change(None),
    })?;
    watcher.watch(folder, RecursiveMode::NonRecursive)?;
    Ok(watcher)
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::Duration;

    use super::*;

    #[test]
    fn reading_a_watched_file_is_not_a_change_but_writing_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f.json");
        std::fs::write(&file, "1").unwrap();
        let (events, received) = mpsc::sync_channel(64);
        let _watch = watch_folder(dir.path(), move |_| {
            let _ = events.try_send(());
        })
        .unwrap();
        for _ in 0..20 {
            let _ = std::fs::read(&file).unwrap();
        }
        assert!(
            received.recv_timeout(Duration::from_millis(300)).is_err(),
            "reads alone produced change events"
        );
        std::fs::write(&file, "2").unwrap();
        assert!(received.recv_timeout(Duration::from_secs(5)).is_ok());
    }
}
