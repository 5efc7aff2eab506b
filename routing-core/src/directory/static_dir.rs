//! The embedded default directory: actors declared in YAML (DESIGN §3), reloaded when their
//! file changes, with an optional simulated resume delay that moves a SUSPENDED or PAUSED actor
//! to RUNNING. A reload that fails keeps the previous directory and reports the error.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use parking_lot::Mutex;
pub use runtime::reload::WatchHandle;
use runtime::reload::{DEFAULT_DEBOUNCE, ReloadError, Reloader};
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
    /// Routable at once.
    #[default]
    Running,
    /// Resumed (after `resume_delay`) on the first request.
    Suspended,
    /// Paused: resumed like a suspended actor.
    Paused,
    /// Crashed: a resume fails (FAILED_PRECONDITION, `actor crashed`).
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
    /// The actor's atespace (a DNS-1123 label).
    pub atespace: String,
    /// The actor's name (a DNS-1123 label).
    pub name: String,
    /// Defaults to `static-<atespace>-<name>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// `<namespace>/<name>` of the actor template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    /// The state it starts in (default `running`).
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
    /// The declared actors.
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
    /// Declared actors.
    pub actors: usize,
    /// How long a simulated resume takes.
    #[serde(with = "humantime_serde")]
    pub resume_delay: Duration,
    /// When the declarations were last loaded successfully.
    pub last_reload: SystemTime,
    /// The last reload error; `None` once a later reload succeeds.
    pub last_error: Option<String>,
    /// When `last_error` happened.
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
        self.runtime.lock().state
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

/// What a reload installs into: the declarations and the generation they carry.
struct State {
    snapshot: ArcSwap<Snapshot>,
    /// Holds the generation; ticks on every change.
    changes: watch::Sender<u64>,
    /// When the first declarations were loaded.
    loaded_at: SystemTime,
}

impl State {
    /// Installs `spec` unless it equals the current declarations. Called by the reloader only,
    /// which serialises reloads.
    fn install(&self, spec: ValidStaticSpec) {
        let current = self.snapshot.load();
        if current.spec == spec {
            return;
        }
        let snap = Snapshot::build(spec, Some(&current));
        let actors = snap.entries.len();
        self.snapshot.store(Arc::new(snap));
        let mut generation = 0;
        self.changes.send_modify(|g| {
            *g += 1;
            generation = *g;
        });
        tracing::info!(actors, generation, "static directory reloaded");
    }
}

struct Inner {
    state: Arc<State>,
    loader: StaticLoader,
    /// Runs the loader and installs its result (on a watched change or [`StaticDirectory::reload`]);
    /// keeps the reload status. Replaced by [`StaticDirectory::watch`] when it names the file.
    reloader: Mutex<Reloader>,
}

/// The static back-end. Cheap to clone.
#[derive(Clone)]
pub struct StaticDirectory {
    inner: Arc<Inner>,
}

/// The reloader's name in logs and the `file_reloads_total` metric.
const RELOAD_SOURCE: &str = "static_directory";

fn make_reloader(state: &Arc<State>, loader: &StaticLoader, file: Option<&Path>) -> Reloader {
    let load = loader.clone();
    let state = state.clone();
    Reloader::new(
        RELOAD_SOURCE,
        file.map(Path::to_path_buf),
        move || load(),
        move |spec| state.install(spec),
    )
}

impl StaticDirectory {
    /// Loads the directory once through `loader`; the loader is reused by `reload`.
    ///
    /// # Errors
    /// The loader's problems, each with its field path.
    pub fn new(loader: StaticLoader) -> Result<Self, FieldErrors> {
        let spec = loader()?;
        let state = Arc::new(State {
            snapshot: ArcSwap::from_pointee(Snapshot::build(spec, None)),
            changes: watch::Sender::new(1),
            loaded_at: SystemTime::now(),
        });
        let reloader = make_reloader(&state, &loader, None);
        Ok(Self {
            inner: Arc::new(Inner {
                state,
                loader,
                reloader: Mutex::new(reloader),
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

    /// The reloader behind this directory: [`Reloader::attempts`] to wait for a reload,
    /// [`Reloader::with_metrics`] to count reloads. Take it after [`StaticDirectory::watch`],
    /// which may replace it.
    pub fn reloader(&self) -> Reloader {
        self.inner.reloader.lock().clone()
    }

    /// Re-runs the loader. On success the new declarations serve the next call; on failure the
    /// previous ones stay and the error is kept for `status()` and logged once.
    /// Returns whether the declarations changed (a watched reload at the same moment may be the
    /// one that changed them). Blocking: call from `spawn_blocking`.
    ///
    /// # Errors
    /// The loader's problems as one line.
    pub fn reload(&self) -> Result<bool, String> {
        let before = *self.inner.state.changes.borrow();
        self.reloader().reload()?;
        Ok(*self.inner.state.changes.borrow() != before)
    }

    /// Current reload status.
    pub fn status(&self) -> StaticStatus {
        let reload = self.reloader().status();
        let state = &self.inner.state;
        let snap = state.snapshot.load();
        StaticStatus {
            generation: *state.changes.borrow(),
            actors: snap.entries.len(),
            resume_delay: snap.resume_delay,
            last_reload: reload.last_success.unwrap_or(state.loaded_at),
            last_error: reload.last_error,
            last_error_at: reload.last_error_at,
        }
    }

    /// Reloads whenever `path` (the loader's source) changes, debounced by the runtime's reload
    /// helper; its directory is watched, to follow editors' rename-on-save and Kubernetes
    /// ConfigMap symlink swaps. The watch stops when the handle drops. Watching a file other than
    /// the last one watched starts a fresh reload status.
    ///
    /// # Errors
    /// [`ReloadError`] when there is no tokio runtime or the directory cannot be watched.
    pub fn watch(&self, path: &Path) -> Result<WatchHandle, ReloadError> {
        let reloader = {
            let mut current = self.inner.reloader.lock();
            if current.files() != [path] {
                *current = make_reloader(&self.inner.state, &self.inner.loader, Some(path));
            }
            current.clone()
        };
        reloader.watch(DEFAULT_DEBOUNCE)
    }

    fn entry(&self, actor: &ActorRef) -> Result<Arc<Entry>, DirectoryError> {
        self.inner
            .state
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

impl ActorDirectory for StaticDirectory {
    fn kind(&self) -> &'static str {
        "static"
    }

    fn get(&self, actor: &ActorRef) -> DirFuture<ActorRecord> {
        let latency = self.inner.state.snapshot.load().latency;
        let r = self.entry(actor).map(|e| e.record(e.state()));
        Box::pin(async move {
            simulate(latency).await;
            r
        })
    }

    fn resume(&self, actor: &ActorRef, _boot: bool) -> DirFuture<ResumeOutcome> {
        let entry = self.entry(actor);
        let (delay, latency) = {
            let snap = self.inner.state.snapshot.load();
            (snap.resume_delay, snap.latency)
        };
        Box::pin(async move {
            simulate(latency).await;
            let entry = entry?;
            let mut waited = false;
            loop {
                let mut rx = {
                    let mut rt = entry.runtime.lock();
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
                                {
                                    let mut rt = e.runtime.lock();
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
        let snap = self.inner.state.snapshot.load();
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
        Some(self.inner.state.changes.subscribe())
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
