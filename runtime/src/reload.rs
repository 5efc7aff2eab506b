//! One debounced file-watch/reload helper, for everything read from files that may change while
//! the process runs (TLS material, the static directory, JWKS files, policy files).
//!
//! A [`Reloader`] pairs a `load` function (reads and validates the files; blocking) with an
//! `apply` function (installs the new value). [`Reloader::reload`] runs them once: on success the
//! value is applied, on failure the previous value stays and the error is kept in
//! [`ReloadStatus`] (and logged once per distinct error). [`Reloader::watch`] reloads whenever
//! one of the files changes, debounced with notify-debouncer-full. It watches the files' parent
//! directories, so editors' rename-on-save and Kubernetes Secret/ConfigMap `..data` symlink swaps
//! are seen; dropping the [`WatchHandle`] stops the watch.

use std::collections::HashSet;
use std::ffi::OsString;
use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use notify_debouncer_full::notify::{self, RecursiveMode};
use notify_debouncer_full::{DebounceEventResult, new_debouncer};
use parking_lot::Mutex;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use serde::Serialize;
use tokio::sync::watch;

/// How long the files must be quiet before a reload runs: certificate and key are usually
/// replaced one after the other, and an editor's save is several events.
pub const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(200);

/// The name Kubernetes gives the symlink it swaps when a mounted Secret or ConfigMap changes.
const KUBERNETES_DATA_LINK: &str = "..data";

/// Problems starting a watch.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The watch needs a tokio runtime (it reloads on the blocking pool).
    #[error("watching {name}: no tokio runtime")]
    NoRuntime {
        /// The reloader's name.
        name: String,
    },
    /// The file watcher could not be created or could not watch a directory.
    #[error("watching {name}: {path}: {source}")]
    Watch {
        /// The reloader's name.
        name: String,
        /// The directory that could not be watched.
        path: String,
        /// What notify reported.
        #[source]
        source: notify::Error,
    },
}

/// What `/statusz` shows about a reloader.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReloadStatus {
    /// When the last successful reload applied a new value.
    pub last_success: Option<SystemTime>,
    /// The last reload error; `None` once a later reload succeeds.
    pub last_error: Option<String>,
    /// When `last_error` happened.
    pub last_error_at: Option<SystemTime>,
    /// Successful reloads.
    pub reloads: u64,
    /// Failed reloads (each kept the previous value).
    pub failures: u64,
}

/// Labels of the reload counters.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    /// The reloader's name, e.g. `ingress_tls` or `static_directory`.
    pub source: String,
    /// `success` or `failure`.
    pub outcome: &'static str,
}

/// Reload counters shared by every reloader of the process.
#[derive(Debug, Clone, Default)]
pub struct ReloadMetrics {
    reloads: Family<ReloadLabels, Counter>,
}

impl ReloadMetrics {
    /// Registers `file_reloads` (exported as `file_reloads_total{source,outcome}`).
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "file_reloads",
            "Reloads of watched files by source and outcome (a failure keeps the previous value)",
            m.reloads.clone(),
        );
        m
    }

    /// The counter for `source` and `outcome` (`success` / `failure`).
    pub fn get(&self, source: &str, outcome: &'static str) -> u64 {
        self.reloads
            .get_or_create(&ReloadLabels {
                source: source.to_owned(),
                outcome,
            })
            .get()
    }
}

type LoadApply = Box<dyn Fn() -> Result<(), String> + Send + Sync>;

struct Inner {
    name: String,
    files: Vec<PathBuf>,
    load_apply: LoadApply,
    status: Mutex<ReloadStatus>,
    /// Serialises reloads (a manual reload and a watched one).
    serial: Mutex<()>,
    /// Counts reload attempts, so callers (and tests) can wait for the next one.
    attempts: watch::Sender<u64>,
    metrics: Mutex<Option<ReloadMetrics>>,
}

/// A value rebuilt from files. Cheap to clone (clones share the status).
#[derive(Clone)]
pub struct Reloader {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloader")
            .field("name", &self.inner.name)
            .field("files", &self.inner.files)
            .finish_non_exhaustive()
    }
}

impl Reloader {
    /// A reloader named `name` (logs, metrics) over `files`. `load` reads and validates the
    /// files (blocking; its error is shown to operators as text); `apply` installs a loaded
    /// value. Neither runs until [`Reloader::reload`] or a watched change: load the first value
    /// yourself, so a broken file at startup is an error, not a warning.
    pub fn new<T, E, L, A>(
        name: impl Into<String>,
        files: impl IntoIterator<Item = PathBuf>,
        load: L,
        apply: A,
    ) -> Self
    where
        E: Display,
        L: Fn() -> Result<T, E> + Send + Sync + 'static,
        A: Fn(T) + Send + Sync + 'static,
    {
        Self {
            inner: Arc::new(Inner {
                name: name.into(),
                files: files.into_iter().collect(),
                load_apply: Box::new(move || {
                    let v = load().map_err(|e| e.to_string().replace('\n', "; "))?;
                    apply(v);
                    Ok(())
                }),
                status: Mutex::new(ReloadStatus::default()),
                serial: Mutex::new(()),
                attempts: watch::Sender::new(0),
                metrics: Mutex::new(None),
            }),
        }
    }

    /// Counts this reloader's reloads in `metrics` from now on.
    pub fn with_metrics(self, metrics: &ReloadMetrics) -> Self {
        *self.inner.metrics.lock() = Some(metrics.clone());
        self
    }

    /// The reloader's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The files it reads.
    pub fn files(&self) -> &[PathBuf] {
        &self.inner.files
    }

    /// Loads and applies now (blocking: call from `spawn_blocking` in async code). On failure
    /// the previous value stays; the error is returned, kept in the status, and logged unless
    /// it is the same as the last one.
    pub fn reload(&self) -> Result<(), String> {
        let inner = &self.inner;
        let _serial = inner.serial.lock();
        let result = (inner.load_apply)();
        let outcome = {
            let mut status = inner.status.lock();
            match &result {
                Ok(()) => {
                    status.reloads += 1;
                    status.last_success = Some(SystemTime::now());
                    if status.last_error.take().is_some() {
                        tracing::info!(source = %inner.name, "files are valid again");
                    }
                    tracing::info!(source = %inner.name, "reloaded");
                    "success"
                }
                Err(e) => {
                    status.failures += 1;
                    if status.last_error.as_deref() != Some(e.as_str()) {
                        tracing::error!(source = %inner.name, error = %e, "reload failed; keeping the previous value");
                    }
                    status.last_error = Some(e.clone());
                    status.last_error_at = Some(SystemTime::now());
                    "failure"
                }
            }
        };
        if let Some(m) = inner.metrics.lock().as_ref() {
            m.reloads
                .get_or_create(&ReloadLabels {
                    source: inner.name.clone(),
                    outcome,
                })
                .inc();
        }
        inner.attempts.send_modify(|n| *n += 1);
        result
    }

    /// The current status.
    pub fn status(&self) -> ReloadStatus {
        self.inner.status.lock().clone()
    }

    /// A receiver whose value counts reload attempts (successful or not): `changed()` resolves
    /// after the next one. For waiting on a reload instead of sleeping.
    pub fn attempts(&self) -> watch::Receiver<u64> {
        self.inner.attempts.subscribe()
    }

    /// Reloads (on the blocking pool) whenever one of the files changes, once the files have
    /// been quiet for `debounce`. Needs a tokio runtime. Stops when the handle is dropped.
    pub fn watch(&self, debounce: Duration) -> Result<WatchHandle, ReloadError> {
        let name = self.inner.name.clone();
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| ReloadError::NoRuntime { name: name.clone() })?;
        let names: HashSet<OsString> = self
            .inner
            .files
            .iter()
            .filter_map(|p| p.file_name().map(|n| n.to_os_string()))
            .chain(std::iter::once(OsString::from(KUBERNETES_DATA_LINK)))
            .collect();
        let dirs: HashSet<PathBuf> = self.inner.files.iter().map(|p| parent(p)).collect();
        // Capacity 1: a change while a reload is pending needs no second signal; a change while
        // one runs queues exactly one more.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
        let log_name = name.clone();
        let mut debouncer =
            new_debouncer(debounce, None, move |res: DebounceEventResult| match res {
                Ok(events) => {
                    let relevant = events.iter().any(|e| {
                        !e.kind.is_access()
                            && e.paths
                                .iter()
                                .any(|p| p.file_name().is_some_and(|n| names.contains(n)))
                    });
                    if relevant {
                        let _ = tx.try_send(());
                    }
                }
                Err(errors) => {
                    for e in errors {
                        tracing::warn!(source = %log_name, error = %e, "file watch error");
                    }
                }
            })
            .map_err(|source| ReloadError::Watch {
                name: name.clone(),
                path: String::new(),
                source,
            })?;
        for d in &dirs {
            debouncer
                .watch(d, RecursiveMode::NonRecursive)
                .map_err(|source| ReloadError::Watch {
                    name: name.clone(),
                    path: d.display().to_string(),
                    source,
                })?;
        }
        let this = self.clone();
        let task = runtime.spawn(async move {
            while rx.recv().await.is_some() {
                let r = this.clone();
                // The result is in the status; a panic in `load` is logged by the runtime.
                let _ = tokio::task::spawn_blocking(move || r.reload()).await;
            }
        });
        Ok(WatchHandle {
            _debouncer: Box::new(debouncer),
            task,
        })
    }
}

/// The directory to watch for `file` (`.` for a bare file name).
fn parent(file: &Path) -> PathBuf {
    match file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Keeps a watch alive; dropping it stops the watch.
pub struct WatchHandle {
    _debouncer: Box<dyn Send + Sync>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for WatchHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatchHandle").finish_non_exhaustive()
    }
}

impl Drop for WatchHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}
