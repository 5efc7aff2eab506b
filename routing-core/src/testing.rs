//! A scriptable fake ate-api-server for tests: a real tonic gRPC server on loopback implementing
//! `ateapi.Control`, with injectable delays, hangs and status codes, call counters and a count of
//! RPCs cancelled by the client. Enabled by the `test-util` feature.
//!
//! It answers in upstream v0.4's shapes (DESIGN §9): the template only in `Actor.actor_template`
//! (field 4, never fields 2 and 3) and the worker's addresses in the repeated
//! `WorkerAssignment.worker_pod_ips` (one or, for dual-stack workers, two).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;

use crate::proto;
use crate::proto::control_server::{Control, ControlServer};

/// An RPC of `ateapi.Control`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    GetActor,
    ResumeActor,
    ListActors,
}

/// One scripted answer; consumed in order, after which calls behave normally.
#[derive(Debug, Clone)]
pub enum Step {
    /// Answer with this status.
    Fail(tonic::Code, String),
    /// Wait, then behave normally.
    Delay(Duration),
    /// Never answer (until the client gives up).
    Hang,
    /// Wait, then answer with this status.
    FailAfter(Duration, tonic::Code, String),
}

#[derive(Debug, Clone)]
struct FakeActor {
    uid: String,
    state: proto::ActorState,
    pod_ips: Vec<String>,
    resume_delay: Duration,
}

#[derive(Default)]
struct State {
    actors: Mutex<HashMap<(String, String), FakeActor>>,
    scripts: Mutex<HashMap<(Method, String), VecDeque<Step>>>,
    calls: Mutex<HashMap<(Method, String), usize>>,
    cancelled: AtomicUsize,
    completed: AtomicUsize,
    last_authorization: Mutex<Option<String>>,
    last_resume_boot: Mutex<Option<bool>>,
}

/// The running fake. Dropping it stops the server.
pub struct FakeControlPlane {
    /// Where the server listens.
    pub addr: SocketAddr,
    state: Arc<State>,
    stop: Option<oneshot::Sender<()>>,
}

/// Counts a handler dropped before it answered (the client cancelled the RPC).
struct CancelWatch<'a> {
    state: &'a State,
    done: bool,
}

impl Drop for CancelWatch<'_> {
    fn drop(&mut self) {
        if self.done {
            self.state.completed.fetch_add(1, Ordering::SeqCst);
        } else {
            self.state.cancelled.fetch_add(1, Ordering::SeqCst);
        }
    }
}

fn key(r: &Option<proto::ObjectRef>) -> String {
    r.as_ref()
        .map(|r| format!("{}/{}", r.atespace, r.name))
        .unwrap_or_default()
}

impl FakeControlPlane {
    /// Starts the fake on `127.0.0.1:<free port>`.
    pub async fn start() -> Self {
        Self::start_on("127.0.0.1:0".parse().expect("literal address")).await
    }

    /// Client settings for this fake over plaintext: 500 ms connect timeout, 30 s RPC timeout.
    pub fn plaintext_settings(&self) -> crate::directory::ateapi::AteApiSettings {
        crate::directory::ateapi::AteApiSettings {
            address: self.addr.to_string(),
            tls: crate::directory::ateapi::TlsMode::Plaintext,
            ca_file: None,
            cert_file: None,
            key_file: None,
            server_name: None,
            token_file: None,
            connect_timeout: Duration::from_millis(500),
            rpc_timeout: Duration::from_secs(30),
        }
    }

    /// Starts the fake on a given address (e.g. to restart on the same port).
    pub async fn start_on(addr: SocketAddr) -> Self {
        Self::start_inner(addr, None).await
    }

    /// Starts the fake with TLS (server certificate and key, PEM); with `client_ca_pem` it
    /// requires client certificates signed by that CA (mTLS, as the real ate-api-server does).
    pub async fn start_tls(cert_pem: &str, key_pem: &str, client_ca_pem: Option<&str>) -> Self {
        let mut tls = tonic::transport::ServerTlsConfig::new()
            .identity(tonic::transport::Identity::from_pem(cert_pem, key_pem));
        if let Some(ca) = client_ca_pem {
            tls = tls.client_ca_root(tonic::transport::Certificate::from_pem(ca));
        }
        Self::start_inner("127.0.0.1:0".parse().expect("literal address"), Some(tls)).await
    }

    async fn start_inner(addr: SocketAddr, tls: Option<tonic::transport::ServerTlsConfig>) -> Self {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .expect("bind fake control plane");
        let addr = listener.local_addr().expect("local addr");
        let state = Arc::new(State::default());
        let svc = Service(state.clone());
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let incoming = tonic::transport::server::TcpIncoming::from(listener);
            let mut builder = tonic::transport::Server::builder();
            if let Some(tls) = tls {
                builder = builder
                    .tls_config(tls)
                    .expect("fake control plane TLS config");
            }
            let _ = builder
                .add_service(ControlServer::new(svc))
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stopped.await;
                })
                .await;
        });
        Self {
            addr,
            state,
            stop: Some(stop),
        }
    }

    /// Declares an actor. `resume_delay` is how long `ResumeActor` of a non-running actor takes.
    pub fn add_actor(
        &self,
        actor: &str,
        state: proto::ActorState,
        pod_ip: &str,
        resume_delay: Duration,
    ) {
        let (ns, name) = actor.split_once('/').expect("atespace/name");
        self.state.actors.lock().expect("lock").insert(
            (ns.to_owned(), name.to_owned()),
            FakeActor {
                uid: format!("uid-{name}"),
                state,
                pod_ips: vec![pod_ip.to_owned()],
                resume_delay,
            },
        );
    }

    /// Changes an actor's state (e.g. the platform suspended it).
    pub fn set_state(&self, actor: &str, state: proto::ActorState) {
        let (ns, name) = actor.split_once('/').expect("atespace/name");
        if let Some(a) = self
            .state
            .actors
            .lock()
            .expect("lock")
            .get_mut(&(ns.to_owned(), name.to_owned()))
        {
            a.state = state;
        }
    }

    /// Changes where an actor runs.
    pub fn set_pod_ip(&self, actor: &str, pod_ip: &str) {
        self.set_pod_ips(actor, &[pod_ip]);
    }

    /// Changes where an actor runs, sending all of `pod_ips` in `worker_pod_ips`, in this order
    /// (v0.4 dual stack: one IPv4 and one IPv6 address, in either order).
    pub fn set_pod_ips(&self, actor: &str, pod_ips: &[&str]) {
        let (ns, name) = actor.split_once('/').expect("atespace/name");
        if let Some(a) = self
            .state
            .actors
            .lock()
            .expect("lock")
            .get_mut(&(ns.to_owned(), name.to_owned()))
        {
            a.pod_ips = pod_ips.iter().map(|s| (*s).to_owned()).collect();
        }
    }

    /// Queues scripted answers for `method` on `actor` (`"atespace/name"`, or `""` for
    /// ListActors).
    pub fn script(&self, method: Method, actor: &str, steps: impl IntoIterator<Item = Step>) {
        self.state
            .scripts
            .lock()
            .expect("lock")
            .entry((method, actor.to_owned()))
            .or_default()
            .extend(steps);
    }

    /// How many times `method` was called for `actor`.
    pub fn calls(&self, method: Method, actor: &str) -> usize {
        self.state
            .calls
            .lock()
            .expect("lock")
            .get(&(method, actor.to_owned()))
            .copied()
            .unwrap_or(0)
    }

    /// RPCs whose handler was dropped before answering (cancelled by the client).
    pub fn cancelled(&self) -> usize {
        self.state.cancelled.load(Ordering::SeqCst)
    }

    /// RPCs answered.
    pub fn completed(&self) -> usize {
        self.state.completed.load(Ordering::SeqCst)
    }

    /// The `boot` flag of the latest `ResumeActor` request (`None` before the first one).
    pub fn last_resume_boot(&self) -> Option<bool> {
        *self.state.last_resume_boot.lock().expect("lock")
    }

    /// The `authorization` metadata of the latest RPC, if it carried one.
    pub fn last_authorization(&self) -> Option<String> {
        self.state.last_authorization.lock().expect("lock").clone()
    }

    /// Stops the server (the control plane goes down).
    pub fn stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

impl Drop for FakeControlPlane {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Service(Arc<State>);

impl Service {
    fn note_auth(&self, md: &tonic::metadata::MetadataMap) {
        let v = md
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        *self.0.last_authorization.lock().expect("lock") = v;
    }

    /// Counts the call and plays its script; `Err` answers with a status.
    async fn prelude(&self, method: Method, key: &str) -> Result<(), tonic::Status> {
        *self
            .0
            .calls
            .lock()
            .expect("lock")
            .entry((method, key.to_owned()))
            .or_default() += 1;
        let step = self
            .0
            .scripts
            .lock()
            .expect("lock")
            .get_mut(&(method, key.to_owned()))
            .and_then(|q| q.pop_front());
        match step {
            None => Ok(()),
            Some(Step::Fail(code, msg)) => Err(tonic::Status::new(code, msg)),
            Some(Step::Delay(d)) => {
                tokio::time::sleep(d).await;
                Ok(())
            }
            Some(Step::FailAfter(d, code, msg)) => {
                tokio::time::sleep(d).await;
                Err(tonic::Status::new(code, msg))
            }
            Some(Step::Hang) => {
                futures_util::future::pending::<()>().await;
                Ok(())
            }
        }
    }

    fn actor_msg(ns: &str, name: &str, a: &FakeActor) -> proto::Actor {
        let running = a.state == proto::ActorState::Running;
        proto::Actor {
            metadata: Some(proto::ResourceMetadata {
                atespace: ns.to_owned(),
                name: name.to_owned(),
                uid: a.uid.clone(),
                version: 1,
                create_time: None,
                update_time: None,
            }),
            // v0.4 no longer sends fields 2 and 3.
            actor_template_namespace: String::new(),
            actor_template_name: String::new(),
            actor_template: Some(proto::ObjectRef {
                atespace: ns.to_owned(),
                name: "tmpl".to_owned(),
            }),
            status: Some(proto::ActorStatus {
                state: a.state as i32,
                worker_assignment: running.then(|| proto::WorkerAssignment {
                    worker_namespace: "workers".to_owned(),
                    worker_pool: "pool".to_owned(),
                    worker_pod: format!("worker-{name}"),
                    worker_pod_uid: String::new(),
                    worker_pod_ips: a.pod_ips.clone(),
                    worker: None,
                }),
            }),
        }
    }

    fn lookup(
        &self,
        r: &Option<proto::ObjectRef>,
    ) -> Result<(String, String, FakeActor), tonic::Status> {
        let r = r
            .as_ref()
            .ok_or_else(|| tonic::Status::invalid_argument("actor is required"))?;
        let actors = self.0.actors.lock().expect("lock");
        actors
            .get(&(r.atespace.clone(), r.name.clone()))
            .map(|a| (r.atespace.clone(), r.name.clone(), a.clone()))
            .ok_or_else(|| {
                tonic::Status::not_found(format!("actor {}/{} not found", r.atespace, r.name))
            })
    }
}

#[tonic::async_trait]
impl Control for Service {
    async fn get_actor(
        &self,
        request: tonic::Request<proto::GetActorRequest>,
    ) -> Result<tonic::Response<proto::Actor>, tonic::Status> {
        let mut watch = CancelWatch {
            state: &self.0,
            done: false,
        };
        self.note_auth(request.metadata());
        let req = request.into_inner();
        let k = key(&req.actor);
        let r = self.prelude(Method::GetActor, &k).await;
        watch.done = true;
        r?;
        let (ns, name, a) = self.lookup(&req.actor)?;
        Ok(tonic::Response::new(Self::actor_msg(&ns, &name, &a)))
    }

    async fn resume_actor(
        &self,
        request: tonic::Request<proto::ResumeActorRequest>,
    ) -> Result<tonic::Response<proto::ResumeActorResponse>, tonic::Status> {
        let mut watch = CancelWatch {
            state: &self.0,
            done: false,
        };
        self.note_auth(request.metadata());
        let req = request.into_inner();
        *self.0.last_resume_boot.lock().expect("lock") = Some(req.boot);
        let k = key(&req.actor);
        let result = async {
            self.prelude(Method::ResumeActor, &k).await?;
            let (ns, name, a) = self.lookup(&req.actor)?;
            let resumed = a.state != proto::ActorState::Running;
            if resumed {
                tokio::time::sleep(a.resume_delay).await;
                self.0
                    .actors
                    .lock()
                    .expect("lock")
                    .entry((ns.clone(), name.clone()))
                    .and_modify(|a| a.state = proto::ActorState::Running);
            }
            let (ns, name, a) = self.lookup(&req.actor)?;
            Ok(proto::ResumeActorResponse {
                actor: Some(Self::actor_msg(&ns, &name, &a)),
                resumed,
            })
        }
        .await;
        watch.done = true;
        result.map(tonic::Response::new)
    }

    async fn list_actors(
        &self,
        request: tonic::Request<proto::ListActorsRequest>,
    ) -> Result<tonic::Response<proto::ListActorsResponse>, tonic::Status> {
        let mut watch = CancelWatch {
            state: &self.0,
            done: false,
        };
        self.note_auth(request.metadata());
        let req = request.into_inner();
        let r = self.prelude(Method::ListActors, "").await;
        watch.done = true;
        r?;
        let actors = self.0.actors.lock().expect("lock");
        let mut out: Vec<proto::Actor> = actors
            .iter()
            .filter(|((ns, _), _)| req.atespace.is_empty() || *ns == req.atespace)
            .map(|((ns, name), a)| Self::actor_msg(ns, name, a))
            .collect();
        if req.page_size > 0 {
            out.truncate(req.page_size as usize);
        }
        Ok(tonic::Response::new(proto::ListActorsResponse {
            actors: out,
            next_page_token: String::new(),
        }))
    }
}
