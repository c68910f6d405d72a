//! Reloading the config when its file changes.
//!
//! The file's directory is watched (not the file), so editors that write a new file and rename
//! it over the old one, and Kubernetes ConfigMap volumes (which swap a `..data` symlink), are
//! seen too. Only events naming the file (or the ConfigMap's `..data` entries) count: the
//! embedded store's database often sits in the same directory and is written many times a
//! second. Events are debounced; then the file is read and, only if its bytes differ from
//! the last ones seen, [`App::reload`] runs. A broken file is logged and counted there, and
//! the configuration in force stays until the file is fixed.
//!
//! Limits, prices, routes' upstreams, tenant headers, metrics and alert settings apply to the
//! next request. Listen addresses and the store's identity apply after a restart; a reload that
//! changes them says so in the log.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::{watch, Notify};

use crate::app::App;

/// Quiet time after the last event before the file is read.
const DEBOUNCE: Duration = Duration::from_millis(100);

/// Events that may change the file's content (reads, including ours, are not).
fn relevant(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

/// Whether an event in the directory may concern the file named `name`: it names the file
/// (written, created, renamed over), or a Kubernetes ConfigMap entry (`..data`,
/// `..2026_11_29...`: the volume swaps a symlink the file goes through), or no path at all.
fn concerns(paths: &[PathBuf], name: &std::ffi::OsStr) -> bool {
    paths.is_empty()
        || paths.iter().any(|p| match p.file_name() {
            Some(n) => n == name || n.as_encoded_bytes().starts_with(b".."),
            None => true,
        })
}

/// Starts watching `path`'s directory. Returns the task that reloads on changes until
/// shutdown, or the reason watching is impossible (the proxy then still reloads on SIGHUP and
/// `POST /v1/reload`).
pub fn watch(app: Arc<App>, path: PathBuf, shutdown: watch::Receiver<bool>) -> Result<impl Future<Output = ()> + Send + 'static, notify::Error> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path.file_name().map(std::ffi::OsStr::to_os_string).unwrap_or_default();
    let changed = Arc::new(Notify::new());
    let signal = changed.clone();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| match event {
        Ok(e) if relevant(&e.kind) && concerns(&e.paths, &name) => signal.notify_one(),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "config file watcher error"),
    })?;
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
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

async fn run(app: Arc<App>, path: PathBuf, mut last: Option<Vec<u8>>, watcher: RecommendedWatcher, changed: Arc<Notify>, mut shutdown: watch::Receiver<bool>) {
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
    fn reads_are_not_changes() {
        assert!(!relevant(&EventKind::Access(AccessKind::Open(notify::event::AccessMode::Any))));
        assert!(!relevant(&EventKind::Access(AccessKind::Close(AccessMode::Read))));
        assert!(relevant(&EventKind::Access(AccessKind::Close(AccessMode::Write))));
        assert!(relevant(&EventKind::Modify(notify::event::ModifyKind::Any)));
    }

    #[test]
    fn only_events_naming_the_file_or_a_configmap_swap_count() {
        let name = std::ffi::OsStr::new("spendgate.yaml");
        let at = |p: &str| vec![PathBuf::from(p)];
        assert!(concerns(&at("/etc/sg/spendgate.yaml"), name));
        assert!(concerns(&at("/etc/sg/..data"), name));
        assert!(concerns(&at("/etc/sg/..2026_11_29_10_00_00.123"), name));
        assert!(concerns(&[], name));
        // A rename of an editor's temporary file over the config names both.
        assert!(concerns(
            &[PathBuf::from("/etc/sg/.spendgate.yaml.swp"), PathBuf::from("/etc/sg/spendgate.yaml")],
            name
        ));
        assert!(!concerns(&at("/etc/sg/spendgate.db-wal"), name));
        assert!(!concerns(&at("/etc/sg/spendgate.db"), name));
        assert!(!concerns(&at("/etc/sg/.spendgate.yaml.swp"), name));
    }
}
