//! A scriptable fake ate-api-server for tests: a real tonic gRPC server on loopback implementing
//! `ateapi.Control`, with injectable delays, hangs and status codes, call counters and a count of
//! RPCs cancelled by the client. Enabled by the `test-util` feature.
//!
//! It accepts on runtime's listener ([`BoundListener`]: the same accept loop and TLS handshake as
//! the gateway's own listeners). Over TLS it records, per connection, the client certificate it
//! was shown (so a test can see a rotated certificate arrive), and it can send GOAWAY on every open connection
//! ([`FakeControlPlane::go_away`]) so clients reconnect without the server going down.
//!
//! It answers in upstream v0.4's shapes (DESIGN §9): the template only in `Actor.actor_template`
//! (field 4, never fields 2 and 3) and the worker's addresses in the repeated
//! `WorkerAssignment.worker_pod_ips` (one or, for dual-stack workers, two).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use runtime::drain::Drain;
use runtime::listener::{self, BoundListener};
use tokio::sync::watch;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::proto;
use crate::proto::control_server::{Control, ControlServer};

/// An RPC of `ateapi.Control`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    /// `GetActor`.
    GetActor,
    /// `ResumeActor`.
    ResumeActor,
    /// `ListActors`.
    ListActors,
    /// `GetActorEgressPolicy`.
    GetActorEgressPolicy,
    /// `MintActorJWT`.
    MintActorJwt,
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
    connections: Mutex<Vec<Accepted>>,
    /// `GetActorEgressPolicy` answers per actor, as message bytes sent verbatim.
    egress_policies: Mutex<HashMap<(String, String), bytes::Bytes>>,
    /// Signs `MintActorJWT` answers; `None`: UNIMPLEMENTED.
    signer: Mutex<Option<Arc<identity::Signer>>>,
}

/// A connection the fake accepted (after its TLS handshake, when it speaks TLS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// The client's address.
    pub peer: SocketAddr,
    /// The leaf certificate the client presented (DER); `None` in plaintext, with TLS, or with
    /// mTLS when the client sent none.
    pub client_certificate: Option<Vec<u8>>,
}

/// The running fake. Dropping it stops the server.
pub struct FakeControlPlane {
    /// Where the server listens.
    pub addr: SocketAddr,
    state: Arc<State>,
    /// Started by [`FakeControlPlane::stop`]: the listener stops accepting.
    drain: Drain,
    /// Bumped to make every open connection send GOAWAY.
    go_away: watch::Sender<u64>,
    /// Ends when the listener is closed and open connections were told to go away.
    server: Option<tokio::task::JoinHandle<()>>,
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

    /// A resolver that asks this fake over plaintext ([`plaintext_settings`]), with `settings`,
    /// the default extractor and metrics of its own: what a front under test routes with.
    ///
    /// [`plaintext_settings`]: FakeControlPlane::plaintext_settings
    pub fn resolver(&self, settings: crate::ResolverSettings) -> crate::Resolver {
        let dir = crate::directory::ateapi::AteApiDirectory::new(&self.plaintext_settings())
            .expect("fake control plane: ateapi client");
        crate::Resolver::new(
            Arc::new(dir),
            settings,
            crate::Extractor::default(),
            crate::ResolverMetrics::new(),
        )
    }

    /// Starts the fake on a given address (e.g. to restart on the same port).
    pub async fn start_on(addr: SocketAddr) -> Self {
        Self::start_inner(addr, None).await
    }

    /// Starts the fake with TLS (server certificate and key, PEM); with `client_ca_pem` it
    /// requires client certificates signed by that CA (mTLS, as the real ate-api-server does).
    /// ALPN `h2`. Panics on unusable PEM (test helper).
    pub async fn start_tls(cert_pem: &str, key_pem: &str, client_ca_pem: Option<&str>) -> Self {
        let provider = identity::tls::provider();
        let certs = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .expect("fake control plane: server certificate PEM");
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .expect("fake control plane: server key PEM");
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("protocol versions");
        let builder = match client_ca_pem {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for c in CertificateDer::pem_slice_iter(ca.as_bytes()) {
                    roots
                        .add(c.expect("fake control plane: client CA PEM"))
                        .expect("fake control plane: client CA certificate");
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .build()
                .expect("client verifier");
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut cfg = builder
            .with_single_cert(certs, key)
            .expect("fake control plane: certificate and key");
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        Self::start_inner(
            "127.0.0.1:0".parse().expect("literal address"),
            Some(Arc::new(cfg)),
        )
        .await
    }

    async fn start_inner(addr: SocketAddr, tls: Option<Arc<rustls::ServerConfig>>) -> Self {
        // runtime's listener: its accept loop, TLS handshake (with timeout) and peer certificate.
        let mut listener = BoundListener::bind("fake_control_plane", addr)
            .await
            .expect("bind fake control plane");
        if let Some(cfg) = tls {
            listener = listener.with_tls(Arc::new(cfg));
        }
        let addr = listener.local_addr();
        let state = Arc::new(State::default());
        let svc = Router {
            typed: ControlServer::new(Service(state.clone())),
            raw: RawPolicies(state.clone()),
        };
        let drain = Drain::new();
        let (go_away, _) = watch::channel(0u64);
        let server = {
            let (state, go_away) = (state.clone(), go_away.clone());
            let connections = go_away.clone();
            let serving = listener.serve(drain.signal(), move |conn| {
                let session = Session {
                    state: state.clone(),
                    svc: svc.clone(),
                    go_away: connections.subscribe(),
                };
                session.serve(conn)
            });
            tokio::spawn(async move {
                // Returns once draining started and the listening socket is closed; open
                // connections then finish their RPCs after GOAWAY.
                serving.await;
                go_away.send_modify(|g| *g += 1);
            })
        };
        Self {
            addr,
            state,
            drain,
            go_away,
            server: Some(server),
        }
    }

    /// Every connection accepted so far, in order (TLS ones once their handshake succeeded).
    pub fn connections(&self) -> Vec<Accepted> {
        self.state.connections.lock().expect("lock").clone()
    }

    /// Sends GOAWAY on every open connection: RPCs in flight finish, new RPCs need a new
    /// connection, which the listener (still open) accepts. Lets a test make a client reconnect
    /// without taking the server down.
    pub fn go_away(&self) {
        self.go_away.send_modify(|g| *g += 1);
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

    /// Serves `bytes` verbatim as the `EgressPolicy` message of `actor` (`"atespace/name"`) —
    /// bytes a test builds from upstream's field numbers, never through actorgate's types.
    /// Actors without one are NOT_FOUND (no policy).
    pub fn set_egress_policy_bytes(&self, actor: &str, bytes: bytes::Bytes) {
        let (ns, name) = actor.split_once('/').expect("atespace/name");
        self.state
            .egress_policies
            .lock()
            .expect("lock")
            .insert((ns.to_owned(), name.to_owned()), bytes);
    }

    /// Answers `MintActorJWT` for declared actors with tokens `signer` signs (as upstream:
    /// every audience, the actor's UID; a wrong `actor_uid` is FAILED_PRECONDITION).
    pub fn set_signer(&self, signer: Arc<identity::Signer>) {
        *self.state.signer.lock().expect("lock") = Some(signer);
    }

    /// Changes an actor's state (e.g. the platform suspended it).
    pub fn set_state(&self, actor: &str, state: proto::ActorState) {
        self.update(actor, |a| a.state = state);
    }

    /// Changes where an actor runs.
    pub fn set_pod_ip(&self, actor: &str, pod_ip: &str) {
        self.set_pod_ips(actor, &[pod_ip]);
    }

    /// Changes where an actor runs, sending all of `pod_ips` in `worker_pod_ips`, in this order
    /// (v0.4 dual stack: one IPv4 and one IPv6 address, in either order).
    pub fn set_pod_ips(&self, actor: &str, pod_ips: &[&str]) {
        self.update(actor, |a| {
            a.pod_ips = pod_ips.iter().map(|s| (*s).to_owned()).collect();
        });
    }

    /// Applies `change` to a declared actor (`"atespace/name"`); an unknown actor is left alone.
    fn update(&self, actor: &str, change: impl FnOnce(&mut FakeActor)) {
        let (ns, name) = actor.split_once('/').expect("atespace/name");
        if let Some(a) = self
            .state
            .actors
            .lock()
            .expect("lock")
            .get_mut(&(ns.to_owned(), name.to_owned()))
        {
            change(a);
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

    /// Stops the server (the control plane goes down): the listener closes and open
    /// connections get GOAWAY (RPCs in flight finish). Takes effect shortly after the call; use
    /// [`stopped`](Self::stopped) to wait for it.
    pub fn stop(&mut self) {
        self.drain.start();
    }

    /// Stops the server like [`stop`](Self::stop) and returns once the listener is closed (new
    /// connections are refused from then on) and open connections have been told to go away.
    pub async fn stopped(&mut self) {
        self.stop();
        if let Some(server) = self.server.take() {
            let _ = server.await;
        }
    }
}

/// One accepted connection, served over HTTP/2 until it closes or is told to go away.
struct Session {
    state: Arc<State>,
    svc: Router,
    go_away: watch::Receiver<u64>,
}

/// `GetActorEgressPolicy` from raw bytes, everything else by the typed service.
#[derive(Clone)]
struct Router {
    typed: ControlServer<Service>,
    raw: RawPolicies,
}

impl<B> tower::Service<http::Request<B>> for Router
where
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<tonic::codegen::StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = tonic::codegen::BoxFuture<Self::Response, Self::Error>;
    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.uri().path() == "/ateapi.Control/GetActorEgressPolicy" {
            let raw = self.raw.clone();
            Box::pin(async move { Ok(tonic::server::Grpc::new(RawCodec).unary(raw, req).await) })
        } else {
            let mut typed = self.typed.clone();
            Box::pin(async move { typed.call(req).await })
        }
    }
}

/// Serves [`State::egress_policies`]: decodes the request's `ObjectRef` with actorgate's types
/// (the request is actorgate's own), answers with the stored bytes untouched.
#[derive(Clone)]
struct RawPolicies(Arc<State>);

impl tonic::server::UnaryService<bytes::Bytes> for RawPolicies {
    type Response = bytes::Bytes;
    type Future = tonic::codegen::BoxFuture<tonic::Response<bytes::Bytes>, tonic::Status>;
    fn call(&mut self, request: tonic::Request<bytes::Bytes>) -> Self::Future {
        let state = self.0.clone();
        Box::pin(async move {
            let req = <proto::GetActorEgressPolicyRequest as prost::Message>::decode(
                request.into_inner(),
            )
            .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?;
            let k = key(&req.actor);
            *state
                .calls
                .lock()
                .expect("lock")
                .entry((Method::GetActorEgressPolicy, k.clone()))
                .or_default() += 1;
            let (ns, name) = k.split_once('/').unwrap_or_default();
            let found = state
                .egress_policies
                .lock()
                .expect("lock")
                .get(&(ns.to_owned(), name.to_owned()))
                .cloned();
            found
                .map(tonic::Response::new)
                .ok_or_else(|| tonic::Status::not_found(format!("actor {k} has no egress policy")))
        })
    }
}

/// A gRPC codec that moves message bytes untouched: a fake server answers with bytes built from
/// upstream's field numbers, so nothing of actorgate's own types stands between them and the
/// client under test.
#[derive(Clone, Copy, Debug, Default)]
pub struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = bytes::Bytes;
    type Decode = bytes::Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }
    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = bytes::Bytes;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: bytes::Bytes,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = bytes::Bytes;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<bytes::Bytes>, tonic::Status> {
        let n = bytes::Buf::remaining(src);
        Ok(Some(bytes::Buf::copy_to_bytes(src, n)))
    }
}

impl Session {
    async fn serve(mut self, conn: listener::Conn) {
        let info = conn.info();
        self.state.connections.lock().expect("lock").push(Accepted {
            peer: info.peer,
            client_certificate: info
                .peer_identity
                .as_ref()
                .map(|p| p.certificate.as_ref().to_vec()),
        });
        let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .serve_connection(TokioIo::new(conn), TowerToHyperService::new(self.svc));
        tokio::pin!(conn);
        tokio::select! {
            _ = conn.as_mut() => return,
            _ = self.go_away.changed() => conn.as_mut().graceful_shutdown(),
        }
        let _ = conn.await;
    }
}

impl Drop for FakeControlPlane {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Service(Arc<State>);

impl Service {
    /// Starts handling an RPC: notes its `authorization` metadata and watches for the client
    /// cancelling it (set `done` on the watch once answered).
    fn begin<T>(&self, request: tonic::Request<T>) -> (CancelWatch<'_>, T) {
        let auth = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        *self.0.last_authorization.lock().expect("lock") = auth;
        let watch = CancelWatch {
            state: &self.0,
            done: false,
        };
        (watch, request.into_inner())
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
        let (mut watch, req) = self.begin(request);
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
        let (mut watch, req) = self.begin(request);
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
        let (mut watch, req) = self.begin(request);
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

    async fn mint_actor_jwt(
        &self,
        request: tonic::Request<proto::MintActorJwtRequest>,
    ) -> Result<tonic::Response<proto::MintActorJwtResponse>, tonic::Status> {
        let (mut watch, req) = self.begin(request);
        let k = key(&req.actor);
        let r = self.prelude(Method::MintActorJwt, &k).await;
        watch.done = true;
        r?;
        let Some(signer) = self.0.signer.lock().expect("lock").clone() else {
            return Err(tonic::Status::unimplemented("no signer"));
        };
        let (ns, name, a) = self.lookup(&req.actor)?;
        if !req.actor_uid.is_empty() && req.actor_uid != a.uid {
            return Err(tonic::Status::failed_precondition("another uid"));
        }
        let actor = identity::ActorIdentity {
            atespace: ns,
            name,
            uid: Some(a.uid.clone()),
        };
        let secs = if req.expiration_seconds == 0 {
            3600
        } else {
            req.expiration_seconds
        };
        let (jwt, exp) = signer
            .mint_actor_token(
                &actor,
                req.audience,
                Duration::from_secs(secs.unsigned_abs()),
            )
            .map_err(|e| tonic::Status::internal(e.to_string()))?;
        Ok(tonic::Response::new(proto::MintActorJwtResponse {
            actor_jwt: jwt,
            expires_at: Some(prost_types::Timestamp {
                seconds: i64::try_from(exp).unwrap_or(i64::MAX),
                nanos: 0,
            }),
        }))
    }
}

// ---- Waiting on events instead of sleeping (issue 10 item 9) ---------------------------------
//
// Tests wait for what they need to have happened (a call reached the fake, an RPC finished; the
// server stopped: [`FakeControlPlane::stopped`]), each bounded by a deadline that fails the test
// with a message.

/// How long the waiting helpers here wait when a test gives no other bound.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(10);

/// How often the waiting helpers re-check their condition.
const POLL: Duration = Duration::from_millis(5);

/// Awaits `fut` for at most [`TEST_TIMEOUT`]; panics naming `what` when it takes longer, so a
/// test that would hang fails with a message instead.
pub async fn within<F: std::future::Future>(what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(TEST_TIMEOUT, fut).await {
        Ok(out) => out,
        Err(_) => panic!("{what}: no result within {TEST_TIMEOUT:?}"),
    }
}

/// Waits until `cond` holds, checking every few milliseconds, for at most `deadline`; panics
/// naming `what` when it never does.
pub async fn wait_until(what: &str, deadline: Duration, cond: impl FnMut() -> bool) {
    if !poll_until(deadline, cond).await {
        panic!("{what}: not reached within {deadline:?}");
    }
}

/// Whether `cond` came to hold within `deadline`.
async fn poll_until(deadline: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let until = tokio::time::Instant::now() + deadline;
    loop {
        if cond() {
            return true;
        }
        if tokio::time::Instant::now() >= until {
            return false;
        }
        tokio::time::sleep(POLL).await;
    }
}

impl FakeControlPlane {
    /// Waits until `method` has been called at least `n` times for `actor` (`""` for
    /// ListActors), for at most `deadline`; panics when it has not.
    pub async fn wait_for_calls(&self, method: Method, actor: &str, n: usize, deadline: Duration) {
        if !poll_until(deadline, || self.calls(method, actor) >= n).await {
            panic!(
                "{method:?} for {actor:?}: {} call(s) within {deadline:?}, expected at least {n}",
                self.calls(method, actor)
            );
        }
    }

    /// Waits until `n` RPCs have finished on the server, answered ([`completed`]) or cancelled by
    /// the client ([`cancelled`]), for at most `deadline`; panics when they have not. Use it
    /// before asserting that nothing was cancelled: a cancellation is counted when the server
    /// drops the handler, which may be after the client has moved on.
    ///
    /// [`completed`]: FakeControlPlane::completed
    /// [`cancelled`]: FakeControlPlane::cancelled
    pub async fn wait_for_finished(&self, n: usize, deadline: Duration) {
        if !poll_until(deadline, || self.completed() + self.cancelled() >= n).await {
            panic!(
                "{} RPC(s) answered and {} cancelled within {deadline:?}, expected {n} finished",
                self.completed(),
                self.cancelled()
            );
        }
    }
}
