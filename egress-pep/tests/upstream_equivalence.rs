//! Upstream equivalence (issue 11 acceptance): `EgressPolicy` messages **encoded by hand from
//! upstream Substrate v0.4's field numbers** (DESIGN §9; not through actorgate's prost types)
//! are served by a fake ate-api-server (a real tonic gRPC server on loopback that answers
//! `GetActorEgressPolicy` with those bytes and decodes the request by hand too), fetched by
//! `AteapiPolicySource` over `AteApiDirectory`, and a matrix of (SNI/authority, dialed port,
//! protocol) cases is decided by `CompiledPolicy::decide` and compared with what upstream's
//! gateway decides for the same policy.
//!
//! The expected outcomes follow upstream's matcher (agent-substrate/substrate
//! `internal/egresspolicy`): exact name beats one-label wildcard beats `*`, then explicit port
//! beats all ports, then policy order; `http` ports default to 80, `https` to 443,
//! `tls_passthrough` ports are required; `https` and `tls_passthrough` rules compete on SNI;
//! `*` is the only pattern matching an IP-literal authority; the `Host` port is ignored (the
//! dialed port counts); a malformed authority is denied; no policy and an empty policy deny.
//! Where upstream intercepts (`https`), actorgate without interception denies with
//! `interception not configured` naming the same rule, and with interception allows by that
//! rule (the PEP then terminates); every case runs both ways. Requests decrypted inside an
//! intercepted connection are decided against `https` rules alone, by their authority (issue
//! 12).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use egress_pep::decision::{Decision, Dial, Query, Reason, RuleKind, Traffic, Verdict};
use egress_pep::policy::ateapi::{AteapiPolicySource, DEFAULT_TTL};
use egress_pep::policy::{PolicySource, PolicyUnavailable};
use egress_pep::subject::{IdentityKind, Subject};
use identity::ActorIdentity;
use routing_core::ActorRef;
use routing_core::directory::ateapi::{AteApiDirectory, AteApiSettings, TlsMode};
use routing_core::testing::RawCodec;
use tonic::codegen::{BoxFuture, Service};
use tonic::server::{Grpc, NamedService, UnaryService};
use tonic::transport::server::TcpIncoming;

const WAIT: Duration = Duration::from_secs(10);
const ATESPACE: &str = "team-a";

#[path = "common/upstream_wire.rs"]
mod upstream_wire;
use upstream_wire::*;

/// `EgressPolicy` of [`ATESPACE`] with `rules`.
fn policy(rules: &[Vec<u8>]) -> Bytes {
    policy_in(ATESPACE, rules)
}

// ---------------------------------------------------------------------------------------------
// The fake ate-api-server: raw bytes in, raw bytes out (routing-core's `RawCodec`).

/// `ateapi.Control` serving only `GetActorEgressPolicy`, from hand-encoded bytes per actor
/// name, decoding the request by hand; unknown actors are NOT_FOUND.
#[derive(Clone)]
struct FakeAteApi {
    policies: Arc<HashMap<String, Bytes>>,
    calls: Arc<parking_lot::Mutex<HashMap<String, usize>>>,
    bad_requests: Arc<AtomicUsize>,
}

impl NamedService for FakeAteApi {
    const NAME: &'static str = "ateapi.Control";
}

impl UnaryService<Bytes> for FakeAteApi {
    type Response = Bytes;
    type Future = BoxFuture<tonic::Response<Bytes>, tonic::Status>;
    fn call(&mut self, request: tonic::Request<Bytes>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let Some((ns, name)) = decode_request(request.get_ref()) else {
                this.bad_requests.fetch_add(1, Ordering::SeqCst);
                return Err(tonic::Status::invalid_argument("undecodable request"));
            };
            if ns != ATESPACE {
                this.bad_requests.fetch_add(1, Ordering::SeqCst);
                return Err(tonic::Status::invalid_argument("wrong atespace"));
            }
            *this.calls.lock().entry(name.clone()).or_default() += 1;
            match this.policies.get(&name) {
                Some(b) => Ok(tonic::Response::new(b.clone())),
                None => Err(tonic::Status::not_found(format!(
                    "actor {ns}/{name} has no egress policy"
                ))),
            }
        })
    }
}

impl<B> Service<http::Request<B>> for FakeAteApi
where
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<tonic::codegen::StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            if req.uri().path() == "/ateapi.Control/GetActorEgressPolicy" {
                Ok(Grpc::new(RawCodec).unary(this, req).await)
            } else {
                Ok(tonic::Status::unimplemented(req.uri().path().to_owned()).into_http())
            }
        })
    }
}

struct Server {
    addr: SocketAddr,
    fake: FakeAteApi,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn start(policies: HashMap<String, Bytes>) -> Server {
    let incoming = TcpIncoming::bind("127.0.0.1:0".parse().unwrap()).expect("bind");
    let addr = incoming.local_addr().expect("local addr");
    let fake = FakeAteApi {
        policies: Arc::new(policies),
        calls: Arc::default(),
        bad_requests: Arc::default(),
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let svc = fake.clone();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stopped.await;
            })
            .await
            .expect("fake ate-api-server");
    });
    Server {
        addr,
        fake,
        _stop: stop,
    }
}

fn client(addr: SocketAddr) -> AteApiDirectory {
    AteApiDirectory::new(&AteApiSettings {
        address: addr.to_string(),
        tls: TlsMode::Plaintext,
        ca_file: None,
        cert_file: None,
        key_file: None,
        server_name: None,
        token_file: None,
        connect_timeout: Duration::from_secs(2),
        rpc_timeout: Duration::from_secs(5),
    })
    .expect("client")
}

fn subject(name: &str) -> Subject {
    Subject {
        actor: ActorIdentity {
            atespace: ATESPACE.into(),
            name: name.into(),
            uid: Some(format!("uid-{name}")),
        },
        template: None,
        kind: IdentityKind::Certificate,
    }
}

// ---------------------------------------------------------------------------------------------
// The matrix.

/// What upstream's gateway does with the traffic.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Up {
    /// Allowed by rule `n` (`http` or `tls_passthrough`).
    Allow(usize),
    /// Intercepted by `https` rule `n` (actorgate without interception: denied, same rule;
    /// with interception: allowed by that rule).
    Intercept(usize),
    /// Denied (no rule), optionally with the reason actorgate must give.
    Deny(Option<Reason>),
}

#[derive(Debug, Clone, Copy)]
enum T {
    Http(&'static str),
    Tls(Option<&'static str>),
    /// A request inside an intercepted connection, by its authority.
    Https(&'static str),
    Opaque,
}

struct Case {
    actor: &'static str,
    traffic: T,
    port: u16,
    up: Up,
    why: &'static str,
}

fn c(actor: &'static str, traffic: T, port: u16, up: Up, why: &'static str) -> Case {
    Case {
        actor,
        traffic,
        port,
        up,
        why,
    }
}

fn policies() -> HashMap<String, Bytes> {
    let mut m = HashMap::new();
    // An unknown field (99, varint) inside a rule, as a newer server might send: skipped.
    let mut unknown = Vec::new();
    key(99, 0, &mut unknown);
    varint(7, &mut unknown);
    // HttpRuleEffects with one credential header: parsed, kept, not applied.
    let mut cred = Vec::new();
    len_field(f::CRED_HEADER, b"authorization", &mut cred);
    len_field(f::CRED_PREFIX, b"Bearer ", &mut cred);
    len_field(f::CRED_URI, b"ate-secret://k8s/default/token", &mut cred);
    let mut effects_msg = Vec::new();
    len_field(f::EFFECTS_REPLACE_HEADERS, &cred, &mut effects_msg);
    let mut effects = Vec::new();
    len_field(f::HOST_EFFECTS, &effects_msg, &mut effects);
    effects.extend_from_slice(&unknown);

    m.insert(
        "basic".into(),
        policy(&[
            rule_with(f::RULE_HTTP, &["api.example.com"], P::Default, &effects),
            http(&["*.example.com"], P::Packed(vec![8080])),
            passthrough(
                &["secure.example.com", "*.tls.example.org"],
                P::Packed(vec![443]),
            ),
            https(&["intercept.example.com"], P::Default),
            passthrough(&["any-port.example.net"], P::All),
        ]),
    );
    m.insert(
        "star".into(),
        policy(&[
            http(&["*"], P::Default),
            http(&["*.example.com"], P::Default),
            http(&["api.example.com"], P::All),
            passthrough(&["*"], P::Packed(vec![443])),
        ]),
    );
    m.insert(
        "ports".into(),
        policy(&[
            http(&["svc.example.com"], P::All),
            http(&["svc.example.com"], P::Unpacked(vec![80, 8080])),
            passthrough(&["svc.example.com"], P::Unpacked(vec![443, 8443])),
        ]),
    );
    // Upstream's own SNI ranking case: https and tls_passthrough compete on SNI.
    m.insert(
        "sni".into(),
        policy(&[
            https(&["*"], P::Default),
            passthrough(&["a.example.com"], P::All),
            https(&["*.example.com"], P::Default),
            https(&["b.example.com"], P::Default),
            passthrough(&["*.example.org"], P::Packed(vec![443])),
            https(&["*.example.net"], P::All),
        ]),
    );
    // A rule ranks by its best matching pattern.
    m.insert(
        "google".into(),
        policy(&[
            http(&["*", "api.google.com"], P::Default),
            http(&["*.google.com"], P::Default),
        ]),
    );
    m.insert("empty".into(), policy(&[]));
    m
}

fn matrix() -> Vec<Case> {
    use T::*;
    use Up::*;
    vec![
        // basic: exact / wildcard / ports / kinds
        c(
            "basic",
            Http("api.example.com"),
            80,
            Allow(0),
            "exact name, default port 80",
        ),
        c(
            "basic",
            Http("api.example.com:8080"),
            80,
            Allow(0),
            "Host port ignored: dialed port counts",
        ),
        c(
            "basic",
            Http("api.example.com"),
            8080,
            Allow(1),
            "wildcard on 8080 when the exact rule is on 80 only",
        ),
        c(
            "basic",
            Http("api.example.com:80"),
            81,
            Deny(None),
            "no rule on the dialed port",
        ),
        c(
            "basic",
            Http("example.com"),
            8080,
            Deny(None),
            "wildcard does not match the apex",
        ),
        c(
            "basic",
            Http("a.b.example.com"),
            8080,
            Deny(None),
            "wildcard is exactly one label",
        ),
        c(
            "basic",
            Http("x.example.com"),
            80,
            Deny(None),
            "wildcard rule only on 8080",
        ),
        c(
            "basic",
            Http("API.Example.COM."),
            80,
            Allow(0),
            "authority normalised: case, trailing dot",
        ),
        c(
            "basic",
            Http("192.0.2.10"),
            80,
            Deny(None),
            "a name never matches an IP literal",
        ),
        c(
            "basic",
            Http("api.example.com:0"),
            80,
            Deny(None),
            "malformed authority (port 0)",
        ),
        c(
            "basic",
            Http("_dmarc.example.com"),
            8080,
            Deny(None),
            "not a DNS-1123 name: denied even under a wildcard",
        ),
        c(
            "basic",
            Tls(Some("secure.example.com")),
            443,
            Allow(2),
            "passthrough by SNI",
        ),
        c(
            "basic",
            Tls(Some("secure.example.com")),
            8443,
            Deny(None),
            "passthrough port list",
        ),
        c(
            "basic",
            Tls(Some("a.tls.example.org")),
            443,
            Allow(2),
            "passthrough wildcard",
        ),
        c(
            "basic",
            Tls(Some("tls.example.org")),
            443,
            Deny(None),
            "passthrough wildcard not the apex",
        ),
        c(
            "basic",
            Tls(None),
            443,
            Deny(Some(Reason::NoSni)),
            "passthrough needs SNI",
        ),
        c(
            "basic",
            Tls(Some("intercept.example.com")),
            443,
            Intercept(3),
            "https default port 443",
        ),
        c(
            "basic",
            Tls(Some("intercept.example.com")),
            8443,
            Deny(None),
            "https default covers 443 only",
        ),
        c(
            "basic",
            Tls(Some("any-port.example.net")),
            2222,
            Allow(4),
            "passthrough on all ports",
        ),
        c(
            "basic",
            Tls(Some("api.example.com")),
            80,
            Deny(None),
            "http rules never match SNI",
        ),
        c(
            "basic",
            Http("secure.example.com"),
            443,
            Deny(None),
            "passthrough rules never decide requests",
        ),
        c(
            "basic",
            Http("intercept.example.com"),
            443,
            Deny(None),
            "https rules never decide cleartext",
        ),
        c(
            "basic",
            Opaque,
            443,
            Deny(None),
            "opaque bytes: no address rules upstream",
        ),
        // star: precedence exact > wildcard > *, name before port; * and IP literals
        c(
            "star",
            Http("api.example.com"),
            80,
            Allow(2),
            "exact (all ports) beats wildcard and * on port 80",
        ),
        c(
            "star",
            Http("www.example.com"),
            80,
            Allow(1),
            "wildcard beats *",
        ),
        c(
            "star",
            Http("other.test"),
            80,
            Allow(0),
            "* matches any name",
        ),
        c(
            "star",
            Http("192.0.2.1"),
            80,
            Allow(0),
            "* matches an IPv4 literal",
        ),
        c(
            "star",
            Http("[2001:db8::1]:80"),
            80,
            Allow(0),
            "* matches an IPv6 literal",
        ),
        c(
            "star",
            Http("[::ffff:192.0.2.1]"),
            80,
            Allow(0),
            "IPv4-mapped literal, * only",
        ),
        c(
            "star",
            Http("api.example.com"),
            9090,
            Allow(2),
            "all-ports exact rule",
        ),
        c(
            "star",
            Http("www.example.com"),
            9090,
            Deny(None),
            "wildcard and * only on 80",
        ),
        c(
            "star",
            Tls(Some("anything.test")),
            443,
            Allow(3),
            "* passthrough",
        ),
        c(
            "star",
            Tls(None),
            443,
            Deny(Some(Reason::NoSni)),
            "* does not match a missing SNI",
        ),
        c(
            "star",
            Tls(Some("anything.test")),
            444,
            Deny(None),
            "* passthrough only on 443",
        ),
        // ports: explicit port beats all ports (packed and unpacked numbers)
        c(
            "ports",
            Http("svc.example.com"),
            8080,
            Allow(1),
            "explicit port beats all ports",
        ),
        c(
            "ports",
            Http("svc.example.com"),
            80,
            Allow(1),
            "explicit port beats all ports (80)",
        ),
        c(
            "ports",
            Http("svc.example.com"),
            3000,
            Allow(0),
            "all ports",
        ),
        c(
            "ports",
            Tls(Some("svc.example.com")),
            8443,
            Allow(2),
            "unpacked port numbers",
        ),
        c(
            "ports",
            Tls(Some("svc.example.com")),
            443,
            Allow(2),
            "unpacked port numbers (443)",
        ),
        c(
            "ports",
            Tls(Some("svc.example.com")),
            3000,
            Deny(None),
            "passthrough not on 3000",
        ),
        // sni: https and tls_passthrough ranked together
        c(
            "sni",
            Tls(Some("b.example.com")),
            443,
            Intercept(3),
            "exact https beats wildcard https",
        ),
        c(
            "sni",
            Tls(Some("a.example.com")),
            443,
            Allow(1),
            "exact passthrough (all ports) beats wildcard https",
        ),
        c(
            "sni",
            Tls(Some("c.example.com")),
            443,
            Intercept(2),
            "wildcard https beats *",
        ),
        c(
            "sni",
            Tls(Some("x.example.org")),
            443,
            Allow(4),
            "wildcard passthrough beats * https",
        ),
        c(
            "sni",
            Tls(Some("x.example.org")),
            8443,
            Deny(None),
            "nothing on 8443 for that name",
        ),
        c(
            "sni",
            Tls(Some("x.example.net")),
            8443,
            Intercept(5),
            "wildcard https on all ports",
        ),
        c("sni", Tls(Some("other.test")), 443, Intercept(0), "* https"),
        // Requests inside intercepted connections: `https` rules alone, by authority.
        c(
            "sni",
            Https("b.example.com"),
            443,
            Allow(3),
            "a request: exact https",
        ),
        c(
            "sni",
            Https("a.example.com"),
            443,
            Allow(2),
            "a request: the exact passthrough rule is not an https rule; the wildcard decides",
        ),
        c(
            "sni",
            Https("other.test:8443"),
            443,
            Allow(0),
            "a request: * https, the Host port ignored",
        ),
        c(
            "sni",
            Https("10.1.2.3"),
            443,
            Allow(0),
            "a request: * matches an IP literal",
        ),
        c(
            "sni",
            Https("x.example.org"),
            443,
            Allow(0),
            "a request: passthrough wildcards do not decide requests, * https does",
        ),
        c(
            "basic",
            Https("intercept.example.com"),
            443,
            Allow(3),
            "a request: exact https on its default port",
        ),
        c(
            "basic",
            Https("secure.example.com"),
            443,
            Deny(Some(Reason::NoMatchingRule)),
            "a request: passthrough rules never decide requests",
        ),
        c(
            "basic",
            Https("api.example.com"),
            443,
            Deny(Some(Reason::NoMatchingRule)),
            "a request: http rules never decide intercepted requests",
        ),
        c(
            "basic",
            Https("intercept.example.com"),
            8443,
            Deny(Some(Reason::NoMatchingRule)),
            "a request: the dialed port counts",
        ),
        c(
            "sni",
            Tls(Some("a.example.com")),
            9999,
            Allow(1),
            "exact passthrough on all ports",
        ),
        // google: a rule ranks by its best matching pattern
        c(
            "google",
            Http("api.google.com"),
            80,
            Allow(0),
            "exact pattern inside a rule with *",
        ),
        c(
            "google",
            Http("admin.google.com"),
            80,
            Allow(1),
            "wildcard rule beats the other rule's *",
        ),
        c(
            "google",
            Http("example.org"),
            80,
            Allow(0),
            "* of the first rule",
        ),
        // empty policy and no policy
        c(
            "empty",
            Http("api.example.com"),
            80,
            Deny(None),
            "empty policy denies",
        ),
        c(
            "empty",
            Tls(Some("api.example.com")),
            443,
            Deny(None),
            "empty policy denies TLS",
        ),
        c(
            "nobody",
            Http("api.example.com"),
            80,
            Deny(Some(Reason::NoPolicy)),
            "no policy denies",
        ),
        c(
            "nobody",
            Tls(Some("api.example.com")),
            443,
            Deny(Some(Reason::NoPolicy)),
            "no policy denies TLS",
        ),
    ]
}

fn check(case: &Case, d: &Decision, interception: bool) -> Result<(), String> {
    let rule = d.rule.as_ref().map(|r| (r.index, r.kind));
    match case.up {
        Up::Intercept(n) if interception => {
            if d.verdict != Verdict::Allow || rule != Some((n, RuleKind::Https)) {
                return Err(format!("want allow (intercept) by https rule {n}"));
            }
            match (case.traffic, &d.dial) {
                (T::Tls(Some(a)), Some(Dial::Name { host, port, .. }))
                    if **host == *a && *port == case.port => {}
                _ => return Err("an intercepted name is dialled by name".into()),
            }
        }
        Up::Allow(n) => {
            if d.verdict != Verdict::Allow || rule.map(|r| r.0) != Some(n) {
                return Err(format!("want allow by rule {n}"));
            }
            let Some(dial) = &d.dial else {
                return Err("allowed without a dial".into());
            };
            match (case.traffic, dial) {
                (T::Http(a) | T::Https(a) | T::Tls(Some(a)), Dial::Name { host, port, .. }) => {
                    let want = a
                        .rsplit_once(':')
                        .filter(|(h, _)| !h.contains(':') && !h.starts_with('['))
                        .map_or(a, |(h, _)| h)
                        .trim_end_matches('.')
                        .to_ascii_lowercase();
                    if **host != *want || *port != case.port {
                        return Err(format!("want dial by name {want}:{}", case.port));
                    }
                }
                (T::Http(_) | T::Https(_), Dial::Address { addr, .. }) => {
                    if addr.port() != case.port {
                        return Err("IP-literal authority must dial the dialed port".into());
                    }
                }
                _ => return Err("unexpected dial".into()),
            }
        }
        Up::Intercept(n) => {
            if d.verdict != Verdict::Deny
                || d.reason != Reason::InterceptionNotConfigured
                || rule != Some((n, RuleKind::Https))
            {
                return Err(format!(
                    "want deny (interception not configured) by https rule {n}"
                ));
            }
        }
        Up::Deny(reason) => {
            if d.verdict != Verdict::Deny || d.dial.is_some() {
                return Err("want deny".into());
            }
            if let Some(r) = reason
                && d.reason != r
            {
                return Err(format!("want reason {}", r.as_str()));
            }
            if d.reason == Reason::Allowed {
                return Err("a denial must not carry reason allowed".into());
            }
        }
    }
    Ok(())
}

#[tokio::test]
async fn hand_encoded_upstream_policies_decide_as_upstream() {
    let server = start(policies()).await;
    let source = AteapiPolicySource::new(Arc::new(client(server.addr)), DEFAULT_TTL, 1000);
    let cases = matrix();
    assert!(cases.len() >= 40, "the matrix has {} cases", cases.len());
    let dst_ip = "198.51.100.7";
    let mut failures = Vec::new();
    for (interception, case) in [false, true]
        .into_iter()
        .flat_map(|i| cases.iter().map(move |c| (i, c)))
    {
        let compiled = tokio::time::timeout(WAIT, source.policy_for(&subject(case.actor)))
            .await
            .unwrap_or_else(|_| panic!("policy lookup for {} timed out", case.actor))
            .unwrap_or_else(|e| panic!("policy lookup for {}: {e}", case.actor));
        let dst: SocketAddr = format!("{dst_ip}:{}", case.port).parse().unwrap();
        let traffic = match case.traffic {
            T::Http(authority) => Traffic::Http {
                authority,
                method: "GET",
                path: "/",
            },
            T::Tls(sni) => Traffic::Tls { sni, interception },
            T::Https(authority) => Traffic::Https {
                authority,
                method: "GET",
                path: "/",
            },
            T::Opaque => Traffic::Opaque,
        };
        let d = match &compiled {
            Some(p) => p.decide(&Query { dst, traffic }),
            None => Decision::deny(Reason::NoPolicy),
        };
        if let Err(want) = check(case, &d, interception) {
            failures.push(format!(
                "interception {interception}: {} {:?} port {} ({}): {want}; got {:?} {} rule {:?}",
                case.actor,
                case.traffic,
                case.port,
                case.why,
                d.verdict,
                d.reason.as_str(),
                d.rule.as_ref().map(|r| (r.index, r.kind))
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ from upstream:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    // One RPC per actor: the rest were answered from the cache ("no policy" included).
    let calls = server.fake.calls.lock().clone();
    for actor in ["basic", "star", "ports", "sni", "google", "empty", "nobody"] {
        assert_eq!(calls.get(actor), Some(&1), "RPCs for {actor}: {calls:?}");
    }
    assert_eq!(server.fake.bad_requests.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn client_reads_hand_encoded_policy_and_not_found() {
    let server = start(policies()).await;
    let dir = client(server.addr);
    let basic = ActorRef::new(ATESPACE, "basic").unwrap();
    let p = tokio::time::timeout(WAIT, dir.egress_policy(&basic))
        .await
        .expect("in time")
        .expect("answer")
        .expect("a policy");
    let meta = p.metadata.as_ref().expect("metadata");
    assert_eq!(
        (meta.atespace.as_str(), meta.name.as_str()),
        (ATESPACE, "default")
    );
    assert_eq!(p.rules.len(), 5);
    let http = p.rules[0].http.as_ref().expect("rule 0 is http");
    assert_eq!(http.hostnames, ["api.example.com"]);
    assert_eq!(http.ports, None, "absent ports stay absent (default 80)");
    let effects = http.effects.as_ref().expect("effects");
    assert_eq!(
        effects.replace_headers[0].credential_uri,
        "ate-secret://k8s/default/token"
    );
    assert_eq!(
        p.rules[2]
            .tls_passthrough
            .as_ref()
            .expect("rule 2")
            .hostnames,
        ["secure.example.com", "*.tls.example.org"]
    );
    assert!(
        p.rules[4]
            .tls_passthrough
            .as_ref()
            .unwrap()
            .ports
            .as_ref()
            .unwrap()
            .all
            .is_some()
    );
    let nobody = ActorRef::new(ATESPACE, "nobody").unwrap();
    let none = tokio::time::timeout(WAIT, dir.egress_policy(&nobody))
        .await
        .expect("in time")
        .expect("NOT_FOUND is not an error");
    assert_eq!(none, None);
}

#[tokio::test]
async fn control_plane_down_is_unavailable_and_not_cached() {
    // A port nothing listens on: bind, note the address, close.
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let source = AteapiPolicySource::new(Arc::new(client(addr)), DEFAULT_TTL, 1000);
    for _ in 0..2 {
        let r = tokio::time::timeout(WAIT, source.policy_for(&subject("basic")))
            .await
            .expect("in time");
        assert!(matches!(r, Err(PolicyUnavailable(_))), "{r:?}");
    }
    assert_eq!(source.fetches(), 2, "errors are not cached");
    assert_eq!(
        Reason::ControlPlaneUnavailable.status(),
        http::StatusCode::SERVICE_UNAVAILABLE
    );
}
