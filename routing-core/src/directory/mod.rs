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
    /// The gRPC status code (what the resolver retries and maps to HTTP on).
    pub code: tonic::Code,
    /// The server's description (sanitised before it reaches a client).
    pub message: String,
}

impl DirectoryError {
    /// An error with `code` and `message`.
    pub fn new(code: tonic::Code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

impl From<tonic::Status> for DirectoryError {
    fn from(s: tonic::Status) -> Self {
        // tonic reports its own client-side deadline (`grpc-timeout`) as CANCELLED.
        let client_deadline =
            s.code() == tonic::Code::Cancelled && s.message() == "Timeout expired";
        if client_deadline {
            return Self::new(tonic::Code::DeadlineExceeded, s.message());
        }
        match transport_failure(&s) {
            // Transport failures (connect refused, reset, TLS, DNS) mean "the control plane is
            // unreachable"; the message says why, from the error's source chain (operators
            // only: UNAVAILABLE never passes a message on to clients).
            Some(reason) => Self::new(tonic::Code::Unavailable, reason),
            None => Self::new(s.code(), s.message()),
        }
    }
}

/// When `s` was made by the client's transport rather than sent by the server (connect
/// failures, TLS and DNS errors, resets, a connection closing under the request), the reason,
/// read from its source chain (see [`describe_transport_error`]); `None` for statuses the server
/// sent, which never carry a source.
pub fn transport_failure(s: &tonic::Status) -> Option<String> {
    let source = std::error::Error::source(s)?;
    let transport = matches!(
        s.code(),
        tonic::Code::Unknown
            | tonic::Code::Internal
            | tonic::Code::Cancelled
            | tonic::Code::Unavailable
    ) && !(s.code() == tonic::Code::Cancelled && s.message() == "Timeout expired");
    transport.then(|| describe_transport_error(source))
}

/// One line on why a connection failed: a short cause a person can act on (`connection
/// refused`, `DNS lookup failed`, `server certificate not trusted: unknown CA`, `server refused
/// our client certificate`, …) followed by the distinct messages of the error's source chain
/// (outermost first; a message already contained in the previous one is skipped). tonic's own
/// errors say only `transport error`; the real cause is several sources deep.
pub fn describe_transport_error(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut io_kind = None;
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            io_kind.get_or_insert(io.kind());
        }
        let text = e.to_string().replace(['\n', '\r'], " ");
        let text = text.trim();
        if !text.is_empty() && !parts.last().is_some_and(|p| p.contains(text)) {
            parts.push(text.to_owned());
        }
        cur = e.source();
    }
    let chain = parts.join(": ");
    let lower = chain.to_ascii_lowercase();
    let has = |needles: &[&str]| {
        needles
            .iter()
            .any(|n| lower.contains(&n.to_ascii_lowercase()))
    };
    let peer_cert = has(&["invalid peer certificate"]);
    let cause = if peer_cert && has(&["UnknownIssuer"]) {
        "server certificate not trusted: unknown CA (check ca_file)"
    } else if peer_cert && has(&["BadSignature"]) {
        "server certificate not trusted: not signed by the CA in ca_file (bad signature)"
    } else if peer_cert && has(&["NotValidForName"]) {
        "server certificate does not name the server (check server_name)"
    } else if peer_cert && has(&["Expired", "NotValidYet"]) {
        "server certificate expired or not yet valid"
    } else if peer_cert {
        "server certificate refused"
    } else if has(&["CertificateRequired"]) {
        "server refused the connection: it requires a client certificate (tls: mtls)"
    } else if has(&[
        "UnknownCA",
        "BadCertificate",
        "CertificateUnknown",
        "DecryptError",
    ]) {
        "server refused our client certificate"
    } else if has(&["CertificateExpired"]) {
        "server refused our client certificate: expired"
    } else if has(&["received fatal alert"]) {
        "TLS handshake refused by the server"
    } else if has(&[
        "InvalidContentType",
        "corrupt message",
        "wrong version number",
    ]) {
        "TLS handshake failed (is the server speaking TLS? check tls)"
    } else if has(&[
        "dns error",
        "failed to lookup address",
        "name or service not known",
    ]) {
        "DNS lookup failed"
    } else if io_kind == Some(std::io::ErrorKind::ConnectionRefused) || has(&["connection refused"])
    {
        "connection refused"
    } else if io_kind == Some(std::io::ErrorKind::TimedOut) || has(&["timed out", "elapsed"]) {
        "connect timed out"
    } else if has(&["connection reset", "broken pipe", "connection closed"]) {
        "connection closed by the server"
    } else {
        "transport error"
    };
    if chain.is_empty() {
        cause.to_owned()
    } else {
        format!("{cause} ({chain})")
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
    /// The template's namespace.
    pub namespace: String,
    /// The template's name.
    pub name: String,
}

/// Which address of a dual-stack worker to dial. Upstream v0.4 sends up to two worker
/// addresses (`WorkerAssignment.worker_pod_ips`, one IPv4 and one IPv6, in no fixed order;
/// DESIGN §9); the client takes the first of this family and falls back to the other family
/// when the worker has none of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AddressFamily {
    /// Prefer IPv4 (the default: the gateway's pod network is IPv4 in most clusters).
    #[default]
    Ipv4,
    /// Prefer IPv6.
    Ipv6,
}

impl AddressFamily {
    /// Whether `ip` belongs to this family.
    pub fn matches(self, ip: std::net::IpAddr) -> bool {
        match self {
            Self::Ipv4 => ip.is_ipv4(),
            Self::Ipv6 => ip.is_ipv6(),
        }
    }

    /// The address to dial among a worker's addresses, without surrounding whitespace: the first
    /// one of this family, else the first one that parses as an IP, else the first one as sent
    /// (the resolver then reports `routing failed`). `None` when the list is empty.
    pub fn choose(self, addrs: &[String]) -> Option<&str> {
        let parsed = || {
            addrs.iter().filter_map(|a| {
                let a = a.trim();
                a.parse::<std::net::IpAddr>().ok().map(|ip| (a, ip))
            })
        };
        parsed()
            .find(|(_, ip)| self.matches(*ip))
            .or_else(|| parsed().next())
            .map(|(a, _)| a)
            .or_else(|| addrs.first().map(|a| a.trim()))
    }
}

/// The control-plane connection as the client saw it, for logs and `/statusz`.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub struct ConnectionStatus {
    /// Where the client connects (`host:port`).
    pub address: String,
    /// Whether the control plane has answered at least once (any status it sent counts).
    pub ever_connected: bool,
    /// When it last answered.
    pub last_answer_at: Option<std::time::SystemTime>,
    /// Why the latest failed connection attempt failed (see [`describe_transport_error`]).
    pub last_connect_error: Option<String>,
    /// When that attempt failed (wall clock); `None` while no attempt has failed. Together with
    /// `last_answer_at` it tells an operator whether the error is current or already healed.
    pub last_connect_error_at: Option<std::time::SystemTime>,
}

/// Where an actor runs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Worker {
    /// The worker address to dial, as sent by the control plane (for ateapi, the address of
    /// `worker_pod_ips` chosen by [`AddressFamily::choose`]); validated by the resolver.
    pub pod_ip: String,
    /// The worker pod's name.
    pub pod: String,
    /// The worker pod's namespace.
    pub namespace: String,
    /// The worker pool the pod belongs to.
    pub pool: String,
    /// Static directory only: the port to dial, overriding the requested actor port.
    pub port: Option<u16>,
}

/// What the directory knows about one actor.
#[derive(Debug, Clone, PartialEq)]
pub struct ActorRecord {
    /// The actor.
    pub actor: ActorRef,
    /// The actor's UID (changes when the actor is recreated).
    pub uid: String,
    /// The template the actor was created from, if known.
    pub template: Option<TemplateRef>,
    /// The actor's lifecycle state; only RUNNING actors are routable.
    pub state: ActorState,
    /// Where it runs; `None` unless it is placed on a worker.
    pub worker: Option<Worker>,
}

/// The result of `ResumeActor`.
#[derive(Debug, Clone, PartialEq)]
pub struct ResumeOutcome {
    /// The actor after the call.
    pub record: ActorRecord,
    /// `false` when the actor was already RUNNING.
    pub resumed: bool,
}

/// One page of `ListActors`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ActorPage {
    /// The actors of this page.
    pub actors: Vec<ActorRecord>,
    /// Token for the next page; empty on the last one.
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
    /// The state of the connection to a remote control plane (`None` for local directories),
    /// shown on `/statusz`.
    fn connection(&self) -> Option<ConnectionStatus> {
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
    fn connection(&self) -> Option<ConnectionStatus> {
        (**self).connection()
    }
}

#[cfg(test)]
mod tests {
    use super::AddressFamily;

    #[test]
    fn chosen_addresses_are_trimmed() {
        let addrs = [" 10.0.0.1 ".to_owned(), "\tfd00::1\n".to_owned()];
        assert_eq!(AddressFamily::Ipv4.choose(&addrs), Some("10.0.0.1"));
        assert_eq!(AddressFamily::Ipv6.choose(&addrs), Some("fd00::1"));
        // Nothing parses: the first one as sent, trimmed.
        assert_eq!(
            AddressFamily::Ipv4.choose(&[" worker-0 ".to_owned()]),
            Some("worker-0")
        );
        assert_eq!(AddressFamily::Ipv4.choose(&[]), None);
    }
}
