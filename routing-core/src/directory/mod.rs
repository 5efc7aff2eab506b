//! Where actors live: the `ActorDirectory` trait and its back-ends (the `ateapi.Control` gRPC
//! client and the embedded static directory), plus serving any directory as `ateapi.Control`.

pub mod ateapi;
pub mod control_service;
pub mod convert;
pub mod static_dir;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::actor_ref::ActorRef;
use crate::proto::ActorState;

/// A boxed, `'static` directory call: resolver flights own it, so no caller can cancel it.
pub type DirFuture<T> = Pin<Box<dyn Future<Output = Result<T, DirectoryError>> + Send + 'static>>;

/// A control-plane answer that is not a success, in gRPC terms (`code` decides retry and the
/// HTTP mapping; `message` is the server's description).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct DirectoryError {
    pub code: tonic::Code,
    pub message: String,
}

impl DirectoryError {
    pub fn new(code: tonic::Code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

impl From<tonic::Status> for DirectoryError {
    fn from(s: tonic::Status) -> Self {
        // Transport failures (connect refused, reset, TLS) reach us as Unknown or Internal
        // statuses with a source error; they mean "the control plane is unreachable".
        // A status with a source error was made by the client's transport, not sent by the server:
        // connect failures, resets, a connection closing under the request (CANCELLED).
        let transport = std::error::Error::source(&s).is_some()
            && matches!(
                s.code(),
                tonic::Code::Unknown | tonic::Code::Internal | tonic::Code::Cancelled
            );
        // tonic reports its own client-side deadline (`grpc-timeout`) as CANCELLED.
        let client_deadline =
            s.code() == tonic::Code::Cancelled && s.message() == "Timeout expired";
        let code = if client_deadline {
            tonic::Code::DeadlineExceeded
        } else if transport {
            tonic::Code::Unavailable
        } else {
            s.code()
        };
        Self::new(code, s.message())
    }
}

impl From<DirectoryError> for tonic::Status {
    fn from(e: DirectoryError) -> Self {
        tonic::Status::new(e.code, e.message)
    }
}

/// The actor template an actor was created from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateRef {
    pub namespace: String,
    pub name: String,
}

/// Where an actor runs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Worker {
    /// `worker_pod_ip` as sent by the control plane; validated by the resolver.
    pub pod_ip: String,
    pub pod: String,
    pub namespace: String,
    pub pool: String,
    /// Static directory only: the port to dial, overriding the requested actor port.
    pub port: Option<u16>,
}

/// What the directory knows about one actor.
#[derive(Debug, Clone, PartialEq)]
pub struct ActorRecord {
    pub actor: ActorRef,
    pub uid: String,
    pub template: Option<TemplateRef>,
    pub state: ActorState,
    pub worker: Option<Worker>,
}

/// The result of `ResumeActor`.
#[derive(Debug, Clone, PartialEq)]
pub struct ResumeOutcome {
    pub record: ActorRecord,
    /// `false` when the actor was already RUNNING.
    pub resumed: bool,
}

/// One page of `ListActors`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ActorPage {
    pub actors: Vec<ActorRecord>,
    pub next_page_token: String,
}

/// The control-plane operations routing needs. Implementations must be cheap to call
/// concurrently; the resolver adds single-flight, retry and caching on top.
pub trait ActorDirectory: Send + Sync + 'static {
    /// A short name for logs, metrics and `/statusz` (`"ateapi"`, `"static"`).
    fn kind(&self) -> &'static str;
    /// `GetActor`.
    fn get(&self, actor: &ActorRef) -> DirFuture<ActorRecord>;
    /// `ResumeActor` (idempotent; fast when already RUNNING).
    fn resume(&self, actor: &ActorRef, boot: bool) -> DirFuture<ResumeOutcome>;
    /// `ListActors`; an empty `atespace` lists all.
    fn list(&self, atespace: &str, page_size: i32, page_token: &str) -> DirFuture<ActorPage>;
    /// Whether the directory answers; used for readiness. Defaults to a one-item `list`.
    fn health(&self) -> DirFuture<()> {
        let page = self.list("", 1, "");
        Box::pin(async move { page.await.map(|_| ()) })
    }
    /// A channel that ticks whenever the directory's content changed wholesale (the static
    /// directory on reload); resolvers then drop their cached routes. `None`: never changes.
    fn changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }
}

impl<D: ActorDirectory + ?Sized> ActorDirectory for Arc<D> {
    fn kind(&self) -> &'static str {
        (**self).kind()
    }
    fn get(&self, actor: &ActorRef) -> DirFuture<ActorRecord> {
        (**self).get(actor)
    }
    fn resume(&self, actor: &ActorRef, boot: bool) -> DirFuture<ResumeOutcome> {
        (**self).resume(actor, boot)
    }
    fn list(&self, atespace: &str, page_size: i32, page_token: &str) -> DirFuture<ActorPage> {
        (**self).list(atespace, page_size, page_token)
    }
    fn health(&self) -> DirFuture<()> {
        (**self).health()
    }
    fn changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        (**self).changes()
    }
}
