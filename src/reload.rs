//! Reloading the config when its file changes.
//!
//! The file's directory is watched (not the file), so editors that write a new file and rename
//! it over the old one, and Kubernetes ConfigMap volumes (which swap a `..data` symlink), are
//! seen too. The embedded store's database often sits in the same directory and is written
//! many times a second: on Linux the watch asks only for entries created, renamed, deleted or
//! closed after a write (never a write in progress), and only events naming the file (or the
//! ConfigMap's `..data` entries) count. Events are debounced; then the file is read and, only if its bytes differ from
//! the last ones seen, [`App::reload`] runs. A broken file is logged and counted there, and
//! the configuration in force stays until the file is fixed.
//!
//! Limits, prices, routes' upstreams, tenant headers, metrics and alert settings apply to the
//! next request. Listen addresses and the store's identity apply after a restart; a reload that
//! changes them says so in the log.

use std::ffi::{OsStr, OsString};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify};

use crate::app::App;

/// Quiet time after the last event before the file is read.
const DEBOUNCE: Duration = Duration::from_millis(100);

/// Whether an event in the directory may concern the file named `name`, from the names of the
/// entries it concerns (`None`: the event names none): it names the file (written, created,
/// renamed over), or a Kubernetes ConfigMap entry (`..data`, `..2026_11_29...`: the volume
/// swaps a symlink the file goes through), or no entry at all.
fn concerns<'a>(entries: impl IntoIterator<Item = Option<&'a OsStr>>, name: &OsStr) -> bool {
    let mut any = false;
    for entry in entries {
        any = true;
        match entry {
            Some(n) if n == name || n.as_encoded_bytes().starts_with(b"..") => return true,
            Some(_) => {}
            None => return true,
        }
    }
    !any
}

/// The directory watch; dropping it stops it.
struct DirWatch {
    #[cfg(target_os = "linux")]
    _task: tokio_util::task::AbortOnDropHandle<()>,
    #[cfg(not(target_os = "linux"))]
    _watcher: notify::RecommendedWatcher,
}

/// Watches `dir` for entries created, renamed in or out, deleted, or closed after a write:
/// never for a write in progress or an open, so a database in the same directory (written
/// many times a second) wakes nothing.
#[cfg(target_os = "linux")]
fn watch_dir(dir: &Path, name: OsString, changed: Arc<Notify>) -> Result<DirWatch, String> {
    use futures_util::StreamExt;
    use inotify::{Inotify, WatchMask};
    let inotify = Inotify::init().map_err(|e| format!("inotify: {e}"))?;
    inotify
        .watches()
        .add(
            dir,
            WatchMask::CREATE | WatchMask::CLOSE_WRITE | WatchMask::MOVED_TO | WatchMask::MOVED_FROM | WatchMask::DELETE,
        )
        .map_err(|e| format!("cannot watch {}: {e}", dir.display()))?;
    let mut events = inotify.into_event_stream([0u8; 4096]).map_err(|e| format!("inotify: {e}"))?;
    let task = tokio::spawn(async move {
        while let Some(event) = events.next().await {
            match event {
                Ok(e) if concerns([e.name.as_deref()], &name) => changed.notify_one(),
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "config file watcher error; reload with SIGHUP or POST /v1/reload");
                    return;
                }
            }
        }
    });
    Ok(DirWatch {
        _task: tokio_util::task::AbortOnDropHandle::new(task),
    })
}

#[cfg(not(target_os = "linux"))]
fn watch_dir(dir: &Path, name: OsString, changed: Arc<Notify>) -> Result<DirWatch, String> {
    use notify::event::{AccessKind, AccessMode};
    use notify::{EventKind, RecursiveMode, Watcher};
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| match event {
        Ok(e) => {
            // Reads (including ours) are not changes.
            let relevant = match e.kind {
                EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
                EventKind::Access(_) => false,
                _ => true,
            };
            if relevant && concerns(e.paths.iter().map(|p| p.file_name()), &name) {
                changed.notify_one();
            }
        }
        Err(e) => tracing::warn!(error = %e, "config file watcher error"),
    })
    .map_err(|e| e.to_string())?;
    watcher.watch(dir, RecursiveMode::NonRecursive).map_err(|e| e.to_string())?;
    Ok(DirWatch { _watcher: watcher })
}

/// Starts watching `path`'s directory. Returns the task that reloads on changes until
/// shutdown, or the reason watching is impossible (the proxy then still reloads on SIGHUP and
/// `POST /v1/reload`).
pub fn watch(app: Arc<App>, path: PathBuf, shutdown: watch::Receiver<bool>) -> Result<impl Future<Output = ()> + Send + 'static, String> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path.file_name().map(OsStr::to_os_string).unwrap_or_default();
    let changed = Arc::new(Notify::new());
    let watcher = watch_dir(&dir, name, changed.clone())?;
    // What the file holds now, read at once (before any later change is seen): the proxy was
    // configured from it moments ago.
    let current = std::fs::read(&path).ok();
    tracing::info!(path = %path.display(), "watching the config file for changes");
    Ok(run(app, path, current, watcher, changed, shutdown))
}

async fn read(path: &Path) -> Option<Vec<u8>> {
    match tokio::fs::read(path).await {
        Ok(b) => Some(b),
        Err(e) => {
            // Mid-replacement, or deleted: the configuration in force stays.
            tracing::debug!(error = %e, path = %path.display(), "config file not readable now");
            None
        }
    }
}

async fn run(app: Arc<App>, path: PathBuf, mut last: Option<Vec<u8>>, watcher: DirWatch, changed: Arc<Notify>, mut shutdown: watch::Receiver<bool>) {
    // The watcher stops when dropped; it lives as long as this task.
    let _watcher = watcher;
    loop {
        tokio::select! {
            _ = crate::process::stopped(&mut shutdown) => return,
            _ = changed.notified() => {}
        }
        // Wait until the directory has been quiet for a moment (editors write in steps).
        loop {
            tokio::select! {
                _ = crate::process::stopped(&mut shutdown) => return,
                _ = changed.notified() => continue,
                _ = tokio::time::sleep(DEBOUNCE) => break,
            }
        }
        let Some(now) = read(&path).await else { continue };
        if last.as_ref() == Some(&now) {
            continue;
        }
        last = Some(now);
        tracing::info!(path = %path.display(), "config file changed; reloading");
        let app = app.clone();
        // Errors are logged and counted by reload itself.
        let _ = tokio::task::spawn_blocking(move || app.reload()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_events_naming_the_file_or_a_configmap_swap_count() {
        let name = OsStr::new("spendgate.yaml");
        let at = |p: &'static str| [Some(OsStr::new(p))];
        assert!(concerns(at("spendgate.yaml"), name));
        assert!(concerns(at("..data"), name));
        assert!(concerns(at("..2026_11_29_10_00_00.123"), name));
        assert!(concerns([None], name));
        assert!(concerns(std::iter::empty(), name));
        // A rename of an editor's temporary file over the config names both.
        assert!(concerns([Some(OsStr::new(".spendgate.yaml.swp")), Some(OsStr::new("spendgate.yaml"))], name));
        assert!(!concerns(at("spendgate.db-wal"), name));
        assert!(!concerns(at("spendgate.db"), name));
        assert!(!concerns(at(".spendgate.yaml.swp"), name));
    }
}
