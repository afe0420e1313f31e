//! Watches the config directory with file-system notifications (the only file that knows
//! `notify`) and sends one debounced signal per burst of changes. No polling.

use std::path::Path;
use std::time::Duration;

use notify::{RecursiveMode, Watcher as _};
use tokio::sync::mpsc;

use super::dir::is_job_file;

/// Keeps the watch alive; dropping it stops the notifications.
pub struct DirWatch {
    _watcher: notify::RecommendedWatcher,
}

/// Starts watching `dir`. After a change to a job file, and once `quiet` has passed with no
/// further change, one `()` is sent on `reload`.
pub fn watch(dir: &Path, quiet: Duration, reload: mpsc::Sender<()>) -> notify::Result<DirWatch> {
    // Capacity 1: while a burst is pending, more events add nothing.
    let (raw_tx, mut raw_rx) = mpsc::channel::<()>(1);
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let relevant = match &event {
            Ok(event) => event.paths.iter().any(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(is_job_file)
            }),
            // An error (queue overflow...) may hide a change: reload to be safe.
            Err(_) => true,
        };
        if relevant {
            let _ = raw_tx.try_send(());
        }
    })?;
    watcher.watch(dir, RecursiveMode::NonRecursive)?;
    tokio::spawn(async move {
        while raw_rx.recv().await.is_some() {
            // Wait until the directory has been quiet for `quiet`.
            loop {
                match tokio::time::timeout(quiet, raw_rx.recv()).await {
                    Ok(Some(())) => continue,
                    Ok(None) => return,
                    Err(_) => break,
                }
            }
            if reload.send(()).await.is_err() {
                return;
            }
        }
    });
    Ok(DirWatch { _watcher: watcher })
}
