//! The embedded default directory: actors declared in YAML (DESIGN §3), reloaded when their
//! file changes, with an optional simulated resume delay that moves a SUSPENDED or PAUSED actor
//! to RUNNING. A reload that fails keeps the previous directory and reports the error.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::{
    ActorDirectory, ActorPage, ActorRecord, DirFuture, DirectoryError, ResumeOutcome, TemplateRef,
    Worker,
};
use crate::actor_ref::ActorRef;
use crate::field_error::FieldErrors;
use crate::proto::ActorState;

/// Most actors one static directory may declare.
pub const MAX_STATIC_ACTORS: usize = 100_000;
/// Longest simulated resume delay.
pub const MAX_RESUME_DELAY: Duration = Duration::from_secs(600);

/// Declared state of a static actor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeclaredState {
    #[default]
    Running,
    Suspended,
    Paused,
    Crashed,
}

impl DeclaredState {
    fn state(self) -> ActorState {
        match self {
            Self::Running => ActorState::Running,
            Self::Suspended => ActorState::Suspended,
            Self::Paused => ActorState::Paused,
            Self::Crashed => ActorState::Crashed,
        }
    }
}

/// One declared actor, as written in YAML.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticActorSpec {
    pub atespace: String,
    pub name: String,
    /// Defaults to `static-<atespace>-<name>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// `<namespace>/<name>` of the actor template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    #[serde(default)]
    pub state: DeclaredState,
    /// `ip:port` the gateway dials for this actor.
    pub endpoint: String,
}

/// A static directory document: the actors and the simulated resume delay.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticDirectorySpec {
    /// How long a simulated resume takes (e.g. `2s`); zero resumes at once.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub resume_delay: Option<Duration>,
    /// Simulated latency of every call (e.g. `1ms`), so the simulator behaves like a remote
    /// control plane in benchmarks.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub latency: Option<Duration>,
    #[serde(default)]
    pub actors: Vec<StaticActorSpec>,
}

/// A declared actor after validation.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ValidActor {
    actor: ActorRef,
    uid: String,
    template: Option<TemplateRef>,
    state: ActorState,
    endpoint: SocketAddr,
}

/// A validated static directory document, ready to install.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidStaticSpec {
    resume_delay: Duration,
    latency: Duration,
    actors: Vec<ValidActor>,
}

impl ValidStaticSpec {
    /// Number of declared actors.
    pub fn len(&self) -> usize {
        self.actors.len()
    }
    /// Whether no actor is declared.
    pub fn is_empty(&self) -> bool {
        self.actors.is_empty()
    }
}

impl StaticDirectorySpec {
    /// Validates every field, naming each problem by its path below `prefix`
    /// (e.g. `directory.static.actors[2].endpoint: invalid socket address "10.0.0.1"`).
    pub fn validate(&self, prefix: &str) -> Result<ValidStaticSpec, FieldErrors> {
        let mut errs = FieldErrors::default();
        let p = |f: &str| {
            if prefix.is_empty() {
                f.to_owned()
            } else {
                format!("{prefix}.{f}")
            }
        };
        let resume_delay = self.resume_delay.unwrap_or_default();
        if resume_delay > MAX_RESUME_DELAY {
            errs.push(p("resume_delay"), "must be at most 10m");
        }
        let latency = self.latency.unwrap_or_default();
        if latency > Duration::from_secs(10) {
            errs.push(p("latency"), "must be at most 10s");
        }
        if self.actors.len() > MAX_STATIC_ACTORS {
            errs.push(p("actors"), format!("more than {MAX_STATIC_ACTORS} actors"));
        }
        let mut seen: HashMap<ActorRef, usize> = HashMap::new();
        let mut actors = Vec::with_capacity(self.actors.len());
        for (i, a) in self.actors.iter().enumerate() {
            let at = |f: &str| p(&format!("actors[{i}].{f}"));
            let mut ok = true;
            if let Err(e) = crate::actor_ref::check_label(&a.atespace, "atespace") {
                errs.push(at("atespace"), format!("{e}: {:?}", a.atespace));
                ok = false;
            }
            if let Err(e) = crate::actor_ref::check_label(&a.name, "name") {
                errs.push(at("name"), format!("{e}: {:?}", a.name));
                ok = false;
            }
            let endpoint = match a.endpoint.parse::<SocketAddr>() {
                Ok(ep) if ep.port() != 0 => Some(ep),
                Ok(_) => {
                    errs.push(
                        at("endpoint"),
                        format!("port must not be 0 in {:?}", a.endpoint),
                    );
                    None
                }
                Err(_) => {
                    errs.push(
                        at("endpoint"),
                        format!("invalid socket address {:?}", a.endpoint),
                    );
                    None
                }
            };
            let template = match &a.template {
                None => None,
                Some(t) => match ActorRef::parse(t) {
                    Ok(r) => Some(TemplateRef {
                        namespace: r.atespace().to_owned(),
                        name: r.name().to_owned(),
                    }),
                    Err(e) => {
                        errs.push(at("template"), format!("{e}: {t:?}"));
                        ok = false;
                        None
                    }
                },
            };
            let (true, Some(endpoint)) = (ok, endpoint) else {
                continue;
            };
            let Ok(actor) = ActorRef::new(&a.atespace, &a.name) else {
                continue;
            };
            if let Some(first) = seen.insert(actor.clone(), i) {
                errs.push(
                    at("name"),
                    format!("{actor} is already declared at actors[{first}]"),
                );
                continue;
            }
            actors.push(ValidActor {
                uid: a
                    .uid
                    .clone()
                    .unwrap_or_else(|| format!("static-{}-{}", a.atespace, a.name)),
                actor,
                template,
                state: a.state.state(),
                endpoint,
            });
        }
        errs.into_result(ValidStaticSpec {
            resume_delay,
            latency,
            actors,
        })
    }
}

/// Loads and validates the directory's source; called at start and on every change. Errors
/// name their field (or file) each.
pub type StaticLoader = Arc<dyn Fn() -> Result<ValidStaticSpec, FieldErrors> + Send + Sync>;

/// What `/statusz` shows about the static directory.
#[derive(Debug, Clone, Serialize)]
pub struct StaticStatus {
    /// Increments on every successful reload that changed the declarations.
    pub generation: u64,
    pub actors: usize,
    #[serde(with = "humantime_serde")]
    pub resume_delay: Duration,
    pub last_reload: SystemTime,
    /// The last reload error; `None` once a later reload succeeds.
    pub last_error: Option<String>,
    pub last_error_at: Option<SystemTime>,
}

/// Run-time state of one declared actor.
struct Runtime {
    state: ActorState,
    /// Set while a simulated resume runs; resolves to `true` when the actor is RUNNING.
    resuming: Option<watch::Receiver<bool>>,
}

struct Entry {
    decl: ValidActor,
    runtime: Mutex<Runtime>,
}

impl Entry {
    fn new(decl: ValidActor) -> Self {
        Self {
            runtime: Mutex::new(Runtime {
                state: decl.state,
                resuming: None,
            }),
            decl,
        }
    }

    fn record(&self, state: ActorState) -> ActorRecord {
        let d = &self.decl;
        ActorRecord {
            actor: d.actor.clone(),
            uid: d.uid.clone(),
            template: d.template.clone(),
            state,
            worker: (state == ActorState::Running).then(|| Worker {
                pod_ip: d.endpoint.ip().to_string(),
                pod: format!("static-{}", d.actor.name()),
                namespace: "static".to_owned(),
                pool: "static".to_owned(),
                port: Some(d.endpoint.port()),
            }),
        }
    }

    fn state(&self) -> ActorState {
        self.runtime
            .lock()
            .map(|r| r.state)
            .unwrap_or(ActorState::Unspecified)
    }
}

struct Snapshot {
    resume_delay: Duration,
    latency: Duration,
    spec: ValidStaticSpec,
    /// Sorted keys, for stable `ListActors` paging.
    order: Vec<ActorRef>,
    entries: HashMap<ActorRef, Arc<Entry>>,
}

impl Snapshot {
    fn build(spec: ValidStaticSpec, previous: Option<&Snapshot>) -> Self {
        let mut entries = HashMap::with_capacity(spec.actors.len());
        for decl in &spec.actors {
            // An unchanged declaration keeps its run-time state (a resumed actor stays RUNNING).
            let kept = previous
                .and_then(|p| p.entries.get(&decl.actor))
                .filter(|e| e.decl == *decl)
                .cloned();
            let entry = kept.unwrap_or_else(|| Arc::new(Entry::new(decl.clone())));
            entries.insert(decl.actor.clone(), entry);
        }
        let mut order: Vec<ActorRef> = entries.keys().cloned().collect();
        order.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        Self {
            resume_delay: spec.resume_delay,
            latency: spec.latency,
            spec,
            order,
            entries,
        }
    }
}

struct Inner {
    snapshot: ArcSwap<Snapshot>,
    status: Mutex<StaticStatus>,
    loader: StaticLoader,
    /// Serialises reloads.
    reload_lock: Mutex<()>,
    /// Ticks with the generation on every change.
    changes: watch::Sender<u64>,
}

/// The static back-end. Cheap to clone.
#[derive(Clone)]
pub struct StaticDirectory {
    inner: Arc<Inner>,
}

impl StaticDirectory {
    /// Loads the directory once through `loader`; the loader is reused by `reload`.
    pub fn new(loader: StaticLoader) -> Result<Self, FieldErrors> {
        let spec = loader()?;
        let snap = Snapshot::build(spec, None);
        let status = StaticStatus {
            generation: 1,
            actors: snap.entries.len(),
            resume_delay: snap.resume_delay,
            last_reload: SystemTime::now(),
            last_error: None,
            last_error_at: None,
        };
        Ok(Self {
            inner: Arc::new(Inner {
                snapshot: ArcSwap::from_pointee(snap),
                status: Mutex::new(status),
                loader,
                reload_lock: Mutex::new(()),
                changes: watch::Sender::new(1),
            }),
        })
    }

    /// A directory over fixed declarations (tests, benchmarks).
    pub fn from_spec(spec: ValidStaticSpec) -> Self {
        let fixed = spec.clone();
        match Self::new(Arc::new(move || Ok(fixed.clone()))) {
            Ok(d) => d,
            Err(_) => unreachable!("a fixed loader cannot fail"),
        }
    }

    /// Re-runs the loader. On success the new declarations serve the next call; on failure the
    /// previous ones stay and the error is kept for `status()` and logged once.
    /// Returns whether the declarations changed. Blocking: call from `spawn_blocking`.
    pub fn reload(&self) -> Result<bool, String> {
        let _serial = self.inner.reload_lock.lock();
        let result = (self.inner.loader)().map_err(|e| e.to_string().replace('\n', "; "));
        let mut status = match self.inner.status.lock() {
            Ok(s) => s,
            Err(p) => p.into_inner(),
        };
        match result {
            Ok(spec) => {
                let current = self.inner.snapshot.load();
                let changed = current.spec != spec;
                if changed {
                    let snap = Snapshot::build(spec, Some(&current));
                    status.generation += 1;
                    status.actors = snap.entries.len();
                    status.resume_delay = snap.resume_delay;
                    self.inner.snapshot.store(Arc::new(snap));
                    self.inner.changes.send_replace(status.generation);
                    tracing::info!(
                        actors = status.actors,
                        generation = status.generation,
                        "static directory reloaded"
                    );
                }
                if status.last_error.take().is_some() {
                    tracing::info!("static directory source is valid again");
                }
                status.last_reload = SystemTime::now();
                Ok(changed)
            }
            Err(e) => {
                if status.last_error.as_deref() != Some(e.as_str()) {
                    tracing::error!(error = %e, "static directory reload failed; keeping the previous actors");
                }
                status.last_error = Some(e.clone());
                status.last_error_at = Some(SystemTime::now());
                Err(e)
            }
        }
    }

    /// Current reload status.
    pub fn status(&self) -> StaticStatus {
        match self.inner.status.lock() {
            Ok(s) => s.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Reloads whenever `path` (or its directory, to follow editors' rename-on-save and
    /// Kubernetes ConfigMap symlink swaps) changes. The watch stops when the handle drops.
    pub fn watch(&self, path: &Path) -> Result<WatchHandle, notify::Error> {
        use notify::Watcher;
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
        let file_name = path.file_name().map(|n| n.to_os_string());
        let relevant = move |p: &Path| {
            let n = p.file_name();
            n == file_name.as_deref() || n == Some(std::ffi::OsStr::new("..data"))
        };
        let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
            if let Ok(e) = ev
                && !e.kind.is_access()
                && e.paths.iter().any(|p| relevant(p))
            {
                let _ = tx.try_send(());
            }
        })?;
        watcher.watch(&dir, notify::RecursiveMode::NonRecursive)?;
        let this = self.clone();
        let task = tokio::spawn(async move {
            while rx.recv().await.is_some() {
                // Let a burst of events (truncate + write, rename) settle.
                tokio::time::sleep(Duration::from_millis(100)).await;
                while rx.try_recv().is_ok() {}
                let d = this.clone();
                let _ = tokio::task::spawn_blocking(move || d.reload()).await;
            }
        });
        Ok(WatchHandle {
            _watcher: Box::new(watcher),
            task,
        })
    }

    fn entry(&self, actor: &ActorRef) -> Result<Arc<Entry>, DirectoryError> {
        self.inner
            .snapshot
            .load()
            .entries
            .get(actor)
            .cloned()
            .ok_or_else(|| {
                DirectoryError::new(tonic::Code::NotFound, format!("actor {actor} not found"))
            })
    }
}

/// Waits the simulated control-plane latency, if any.
async fn simulate(latency: Duration) {
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
}

/// Keeps a file watch alive; dropping it stops the watch.
pub struct WatchHandle {
    _watcher: Box<dyn Send + Sync>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for WatchHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ActorDirectory for StaticDirectory {
    fn kind(&self) -> &'static str {
        "static"
    }

    fn get(&self, actor: &ActorRef) -> DirFuture<ActorRecord> {
        let latency = self.inner.snapshot.load().latency;
        let r = self.entry(actor).map(|e| e.record(e.state()));
        Box::pin(async move {
            simulate(latency).await;
            r
        })
    }

    fn resume(&self, actor: &ActorRef, _boot: bool) -> DirFuture<ResumeOutcome> {
        let entry = self.entry(actor);
        let (delay, latency) = {
            let snap = self.inner.snapshot.load();
            (snap.resume_delay, snap.latency)
        };
        Box::pin(async move {
            simulate(latency).await;
            let entry = entry?;
            let mut waited = false;
            loop {
                let mut rx = {
                    let mut rt = entry.runtime.lock().map_err(|_| {
                        DirectoryError::new(tonic::Code::Internal, "static actor state poisoned")
                    })?;
                    match rt.state {
                        ActorState::Running => {
                            return Ok(ResumeOutcome {
                                record: entry.record(ActorState::Running),
                                resumed: waited,
                            });
                        }
                        ActorState::Suspended | ActorState::Paused if delay.is_zero() => {
                            rt.state = ActorState::Running;
                            return Ok(ResumeOutcome {
                                record: entry.record(ActorState::Running),
                                resumed: true,
                            });
                        }
                        ActorState::Suspended | ActorState::Paused => {
                            rt.state = ActorState::Resuming;
                            let (tx, rx) = watch::channel(false);
                            rt.resuming = Some(rx.clone());
                            // The transition runs on its own so a dropped caller cannot strand it.
                            let e = entry.clone();
                            tokio::spawn(async move {
                                tokio::time::sleep(delay).await;
                                if let Ok(mut rt) = e.runtime.lock() {
                                    rt.state = ActorState::Running;
                                    rt.resuming = None;
                                }
                                let _ = tx.send(true);
                            });
                            rx
                        }
                        ActorState::Resuming => match &rt.resuming {
                            Some(rx) => rx.clone(),
                            None => {
                                return Err(DirectoryError::new(
                                    tonic::Code::Aborted,
                                    "another operation holds this actor",
                                ));
                            }
                        },
                        ActorState::Crashed => {
                            return Err(DirectoryError::new(
                                tonic::Code::FailedPrecondition,
                                "actor crashed",
                            ));
                        }
                        _ => {
                            return Err(DirectoryError::new(
                                tonic::Code::Aborted,
                                "another operation holds this actor",
                            ));
                        }
                    }
                };
                waited = true;
                let _ = rx.wait_for(|running| *running).await;
            }
        })
    }

    fn list(&self, atespace: &str, page_size: i32, page_token: &str) -> DirFuture<ActorPage> {
        let snap = self.inner.snapshot.load();
        let size = if page_size <= 0 {
            100
        } else {
            page_size.min(1000) as usize
        };
        let result = page_token
            .is_empty()
            .then_some(0)
            .or_else(|| page_token.parse::<usize>().ok())
            .ok_or_else(|| DirectoryError::new(tonic::Code::InvalidArgument, "invalid page token"))
            .map(|start| {
                let matching = snap
                    .order
                    .iter()
                    .filter(|a| atespace.is_empty() || a.atespace() == atespace);
                let actors: Vec<ActorRecord> = matching
                    .clone()
                    .skip(start)
                    .take(size)
                    .filter_map(|a| snap.entries.get(a))
                    .map(|e| e.record(e.state()))
                    .collect();
                let more = matching.count() > start + actors.len();
                ActorPage {
                    next_page_token: if more {
                        (start + actors.len()).to_string()
                    } else {
                        String::new()
                    },
                    actors,
                }
            });
        let latency = snap.latency;
        Box::pin(async move {
            simulate(latency).await;
            result
        })
    }

    fn health(&self) -> DirFuture<()> {
        Box::pin(async { Ok(()) })
    }

    fn changes(&self) -> Option<watch::Receiver<u64>> {
        Some(self.inner.changes.subscribe())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> Result<ValidStaticSpec, FieldErrors> {
        serde_saphyr::from_str::<StaticDirectorySpec>(yaml)
            .unwrap()
            .validate("directory.static")
    }

    #[test]
    fn validation_names_fields() {
        let err = spec(
            "actors:\n\
             - {atespace: a, name: ok, endpoint: '127.0.0.1:1'}\n\
             - {atespace: a, name: ok, endpoint: '127.0.0.1:2'}\n\
             - {atespace: a, name: x, endpoint: '10.0.0.1'}\n\
             - {atespace: A_, name: y, endpoint: '10.0.0.1:80', template: 'bad'}\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("directory.static.actors[1].name: a/ok is already declared at actors[0]"),
            "{err}"
        );
        assert!(
            err.contains(
                r#"directory.static.actors[2].endpoint: invalid socket address "10.0.0.1""#
            ),
            "{err}"
        );
        assert!(
            err.contains("directory.static.actors[3].atespace:"),
            "{err}"
        );
        assert!(
            err.contains("directory.static.actors[3].template:"),
            "{err}"
        );
    }

    #[test]
    fn latency_is_bounded() {
        let err = spec("latency: 11s\nactors: []\n").unwrap_err().to_string();
        assert_eq!(err, "directory.static.latency: must be at most 10s");
        assert!(spec("latency: 1ms\nactors: []\n").is_ok());
    }

    #[tokio::test]
    async fn resume_with_delay_joins_and_becomes_running() {
        let d = StaticDirectory::from_spec(
            spec("resume_delay: 50ms\nactors:\n- {atespace: a, name: s, state: suspended, endpoint: '127.0.0.1:9'}\n")
                .unwrap(),
        );
        let a = ActorRef::parse("a/s").unwrap();
        assert_eq!(d.get(&a).await.unwrap().state, ActorState::Suspended);
        let (r1, r2) = tokio::join!(d.resume(&a, false), d.resume(&a, false));
        for r in [r1.unwrap(), r2.unwrap()] {
            assert!(r.resumed);
            assert_eq!(r.record.state, ActorState::Running);
            assert_eq!(r.record.worker.unwrap().port, Some(9));
        }
        let again = d.resume(&a, false).await.unwrap();
        assert!(!again.resumed);
        let missing = d
            .get(&ActorRef::parse("a/none").unwrap())
            .await
            .unwrap_err();
        assert_eq!(missing.code, tonic::Code::NotFound);
    }

    #[tokio::test]
    async fn list_pages() {
        let yaml: String = (0..5)
            .map(|i| {
                format!(
                    "- {{atespace: n{}, name: a{i}, endpoint: '127.0.0.1:{}'}}\n",
                    i % 2,
                    100 + i
                )
            })
            .collect();
        let d = StaticDirectory::from_spec(spec(&format!("actors:\n{yaml}")).unwrap());
        let p1 = d.list("", 2, "").await.unwrap();
        assert_eq!(p1.actors.len(), 2);
        let p2 = d.list("", 2, &p1.next_page_token).await.unwrap();
        let p3 = d.list("", 2, &p2.next_page_token).await.unwrap();
        assert_eq!(p3.actors.len(), 1);
        assert!(p3.next_page_token.is_empty());
        assert_eq!(d.list("n1", 10, "").await.unwrap().actors.len(), 2);
        assert!(d.list("", 2, "zz").await.is_err());
    }
}
