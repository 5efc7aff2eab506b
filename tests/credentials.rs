//! Credential injection (issue 14, DESIGN §7.3, §9) in `actorgate serve`, end to end over real
//! TLS on loopback: an actor tunnels through the PEP, which intercepts its TLS to an origin (the
//! echo worker over TLS, reporting the headers it received) and replaces the headers a rule's
//! `replace_headers` effects name with secrets from a credential provider (a real tonic server
//! over mTLS, as upstream's `credprovider.CredentialProvider`), from files, and with actor
//! tokens from the local signer.
//!
//! Covered: the origin receives the secret with the prefix and never the actor's placeholder; a
//! request without the header passes unchanged and fetches nothing; the provider is asked with
//! the actor's SPIFFE ID and its answer is cached; NOT_FOUND → 403, UNAVAILABLE → 503, a secret
//! with a control byte → 503; a cleartext upstream is refused unless the rule allows it; the
//! actor token verifies with the signer's JWKS and carries upstream's claims; no secret or token
//! appears in the log (at debug level), the audit file, the metrics or `/statusz`.
//!
//! And upstream's way: an `EgressPolicy` built from upstream's field numbers, served by a fake
//! ate-api-server whose `MintActorJWT` signs the tokens, decided and injected as upstream
//! documents.

mod common;
#[path = "../egress-pep/tests/common/upstream_wire.rs"]
mod upstream_wire;

use std::net::SocketAddr;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::egress::*;
use common::*;
use egress_pep::credentials::proto::credential_provider_server::{
    CredentialProvider, CredentialProviderServer,
};
use egress_pep::credentials::proto::{FetchSecretRequest, FetchSecretResponse};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use identity::tls::{ClientAuth, ReloadableServerConfig, ServerTlsFiles};
use runtime::drain::Drain;
use runtime::listener::BoundListener;
use serde_json::Value;

const API: &str = "api.cred.test";
const PLAIN: &str = "plain.cred.test";
const OPEN: &str = "open.cred.test";
const SECRET: &str = "sk-live-SECRET123";
const FILE_SECRET: &str = "file-SECRET-456";
const PLACEHOLDER: &str = "PLACEHOLDER-from-actor";
const ISSUER: &str = "https://tokens.cred.test";

/// Upstream's credential provider as a test double: answers by URI, records every call.
#[derive(Clone, Default)]
struct FakeProvider {
    calls: Arc<Mutex<Vec<(String, String)>>>,
}

#[tonic::async_trait]
impl CredentialProvider for FakeProvider {
    async fn fetch_secret(
        &self,
        request: tonic::Request<FetchSecretRequest>,
    ) -> Result<tonic::Response<FetchSecretResponse>, tonic::Status> {
        let r = request.into_inner();
        self.calls
            .lock()
            .unwrap()
            .push((r.uri.clone(), r.actor_spiffe_id.clone()));
        let bytes: &[u8] = match r.uri.rsplit('/').next().unwrap_or("") {
            "openai" => b"sk-live-SECRET123\r\n",
            "control" => b"CTRL-MARKER\x01def",
            "notfound" => return Err(tonic::Status::not_found("no such secret")),
            "unavailable" => return Err(tonic::Status::unavailable("vault sealed")),
            _ => return Err(tonic::Status::permission_denied("not yours")),
        };
        Ok(tonic::Response::new(FetchSecretResponse {
            opaque_bytes: bytes.to_vec(),
        }))
    }
}

impl FakeProvider {
    fn calls(&self) -> Vec<(String, String)> {
        self.calls.lock().unwrap().clone()
    }
}

/// Serves `provider` over mTLS (client certificates from `pki`'s CA required, ALPN h2).
async fn serve_provider(pki: &TestPki, provider: FakeProvider, drain: &Drain) -> SocketAddr {
    let tls = ReloadableServerConfig::server(ServerTlsFiles {
        cert_file: pki.path("server.crt"),
        key_file: pki.path("server.key"),
        client_ca_file: Some(pki.ca_file()),
        client_auth: ClientAuth::Required,
        client_trust_domain: None,
        alpn: vec![b"h2".to_vec()],
    })
    .unwrap();
    let listener = BoundListener::bind("provider", "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
        .with_tls(tls);
    let addr = listener.local_addr();
    let svc = CredentialProviderServer::new(provider);
    tokio::spawn(listener.serve(drain.signal(), move |conn| {
        let svc = svc.clone();
        async move {
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .serve_connection(TokioIo::new(conn), TowerToHyperService::new(svc))
                .await;
        }
    }));
    addr
}

/// What both PEP configurations share: the origin, the provider, the signer's keys, the
/// interception CA.
struct Parts {
    _drain: Drain,
    /// The echo worker over TLS for [`API`], its certificate from `origin_pki`.
    origin: SocketAddr,
    origin_pki: TestPki,
    provider: FakeProvider,
    provider_addr: SocketAddr,
    /// The provider's certificate and the PEP's client identity (`actorgate-pep`).
    provider_pki: TestPki,
    /// `pep-1.key` and `jwks.json` from `actorgate token keygen`.
    keys: tempfile::TempDir,
    intercept_pki: TestPki,
}

impl Parts {
    async fn start() -> Self {
        let drain = Drain::new();
        let origin_pki = TestPki::new();
        let issued = origin_pki
            .ca
            .issue_server(&[API.into()], &[], YEAR)
            .unwrap();
        let (cert_file, key_file) = origin_pki.write("origin", &issued);
        let tls = ReloadableServerConfig::server(ServerTlsFiles {
            cert_file,
            key_file,
            client_ca_file: None,
            client_auth: ClientAuth::None,
            client_trust_domain: None,
            alpn: vec![b"http/1.1".to_vec()],
        })
        .unwrap();
        let listener = BoundListener::bind("origin", "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap()
            .with_tls(tls);
        let origin = listener.local_addr();
        tokio::spawn(ingress::echo::serve_listener(
            listener,
            "origin".into(),
            drain.signal(),
        ));
        let provider_pki = test_pki(&["actorgate-pep"]);
        let provider = FakeProvider::default();
        let provider_addr = serve_provider(&provider_pki, provider.clone(), &drain).await;
        let keys = tempfile::tempdir().unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_actorgate"))
            .args(["token", "keygen", "--kid", "pep-1", "--out"])
            .arg(keys.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Parts {
            _drain: drain,
            origin,
            origin_pki,
            provider,
            provider_addr,
            provider_pki,
            keys,
            intercept_pki: TestPki::new(),
        }
    }

    /// The `interception` and `credentials` lines of the `egress` section: the vault class is
    /// the fake provider, the local class the config directory's `secrets/`.
    fn egress_yaml(&self) -> String {
        format!(
            "  interception:
    ca_cert_file: {ca}
    ca_key_file: {key}
    upstream: {{system_roots: false, extra_ca_files: [{origin_ca}]}}
  credentials:
    providers:
    - class: vault
      grpc:
        address: '{provider}'
        server_name: localhost
        ca_file: {pca}
        cert_file: {pcert}
        key_file: {pkey}
    - class: local
      files: {{dir: secrets}}
",
            ca = self.intercept_pki.ca_file().display(),
            key = self.intercept_pki.path("ca.key").display(),
            origin_ca = self.origin_pki.ca_file().display(),
            provider = self.provider_addr,
            pca = self.provider_pki.ca_file().display(),
            pcert = self.provider_pki.path("actorgate-pep.crt").display(),
            pkey = self.provider_pki.path("actorgate-pep.key").display(),
        )
    }

    /// A TLS connection inside `tunnel` to [`API`], trusting the interception CA, with an
    /// HTTP/1.1 client on it.
    async fn api_over<IO>(
        &self,
        tunnel: IO,
    ) -> hyper::client::conn::http1::SendRequest<Empty<Bytes>>
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
    {
        let config = tls_client_config(&self.intercept_pki.ca_file(), &[b"http/1.1"], None);
        let name = rustls_pki_types::ServerName::try_from(API).unwrap();
        let tls = within(
            BOUND,
            "intercepted TLS",
            tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tunnel),
        )
        .await
        .unwrap();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .unwrap();
        tokio::spawn(async move {
            let _ = conn.await;
        });
        sender
    }
}

/// The PEP with policy files and a static directory, over [`Parts`].
struct Lab {
    pep: Pep,
    parts: Parts,
    plain: Upstream,
    /// The echo worker in cleartext, for the rule that allows it.
    open: SocketAddr,
    _open: EchoStop,
}

impl Lab {
    async fn start() -> Self {
        let parts = Parts::start().await;
        let plain = http_upstream("127.0.0.1:0", "plain").await;
        let (open, open_stop) = echo_worker("127.0.0.1:0", "open").await;
        let policy = format!(
            "policies:
- name: hello
  selector: {{actor: demo/hello}}
  rules:
  - https:
      hostnames: [{API}]
      ports: [{port}]
      effects:
        replace_headers:
        - {{header: authorization, prefix: 'Bearer ', credential_uri: 'ate-secret://vault/team/openai'}}
        - {{header: x-api-key, credential_uri: 'ate-secret://local/team/key'}}
        - {{header: x-actor-token, prefix: 'Bearer ', actor_jwt: {{audiences: ['{API}', other.cred.test], expiration_seconds: 600}}}}
        - {{header: x-notfound, credential_uri: 'ate-secret://vault/team/notfound'}}
        - {{header: x-unavailable, credential_uri: 'ate-secret://vault/team/unavailable'}}
        - {{header: x-control, credential_uri: 'ate-secret://vault/team/control'}}
  - http:
      hostnames: [{PLAIN}]
      ports: all
      effects: {{replace_headers: [{{header: authorization, credential_uri: 'ate-secret://vault/team/openai'}}]}}
  - http:
      hostnames: [{OPEN}]
      ports: all
      effects: {{replace_headers: [{{header: x-api-key, credential_uri: 'ate-secret://local/team/key', allow_cleartext: true}}]}}
",
            port = parts.origin.port()
        );
        let statics = format!("{API}: [127.0.0.1], {PLAIN}: [127.0.0.1], {OPEN}: [127.0.0.1]");
        let egress = parts.egress_yaml();
        let keys = parts.keys.path().to_path_buf();
        let pep = Pep::start_with(&policy, &statics, "exempt: [127.0.0.0/8]", |dir| {
            std::fs::create_dir_all(dir.join("secrets/team")).unwrap();
            std::fs::write(dir.join("secrets/team/key"), format!("{FILE_SECRET}\n")).unwrap();
            format!(
                "{egress}signer: {{key_file: {keys}/pep-1.key, kid: pep-1, issuer: '{ISSUER}'}}
logging: {{level: debug}}
grpc: {{listen: GRPC_ADDR}}
",
                keys = keys.display(),
            )
        })
        .await;
        Lab {
            pep,
            parts,
            plain,
            open,
            _open: open_stop,
        }
    }

    /// An HTTP/1.1 client inside intercepted TLS to [`API`] as demo/hello.
    async fn api(&self) -> hyper::client::conn::http1::SendRequest<Empty<Bytes>> {
        let cert = self.pep.actor("hello");
        let (status, body, tunnel) = self.pep.tunnel(&cert, &self.parts.origin.to_string()).await;
        assert_eq!(status, 200, "CONNECT: {body}");
        self.parts.api_over(tunnel).await
    }
}

/// Sends GET `path` with `headers` → (status, body).
async fn send(
    sender: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String) {
    within(BOUND, format!("GET {path}"), async {
        sender.ready().await.unwrap();
        let mut req = http::Request::get(path).header(http::header::HOST, host);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = sender
            .send_request(req.body(Empty::new()).unwrap())
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    })
    .await
}

/// The values of `name` in the echo worker's report of the request it received.
fn echoed(body: &str, name: &str) -> Vec<String> {
    let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    v["headers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h[0] == name)
        .map(|h| h[1].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn the_origin_receives_secrets_the_actor_never_holds() {
    let lab = Lab::start().await;
    let mut api = lab.api().await;

    // Placeholders replaced: the provider's secret (CR/LF stripped) with its prefix, the file's
    // secret, a fresh actor token.
    let (status, body) = send(
        &mut api,
        API,
        "/inject",
        &[
            ("authorization", PLACEHOLDER),
            ("x-api-key", PLACEHOLDER),
            ("x-actor-token", PLACEHOLDER),
        ],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(echoed(&body, "authorization"), [format!("Bearer {SECRET}")]);
    assert_eq!(echoed(&body, "x-api-key"), [FILE_SECRET]);
    assert!(!body.contains(PLACEHOLDER), "{body}");
    let token = echoed(&body, "x-actor-token")[0]
        .strip_prefix("Bearer ")
        .unwrap()
        .to_owned();
    let verified = verify_token(
        &lab.parts.keys.path().join("jwks.json"),
        ISSUER,
        "other.cred.test",
        &token,
    )
    .await;
    assert_eq!(
        (
            verified.actor.atespace.as_str(),
            verified.actor.name.as_str()
        ),
        ("demo", "hello")
    );
    let claims = &verified.claims;
    assert_eq!(claims.sub, "actor/demo/hello");
    assert_eq!(claims.exp - claims.iat, 600);
    assert_eq!(claims.iat - claims.nbf, 300);
    assert!(claims.aud.contains(API) && claims.aud.contains("other.cred.test"));
    assert_eq!(claims.iss, ISSUER);
    assert_eq!(
        lab.parts.provider.calls(),
        [(
            "ate-secret://vault/team/openai".to_owned(),
            "spiffe://substrate-actor.local/actor/demo/hello".to_owned()
        )]
    );

    // Again: the secret and the token come from the caches.
    let (status, body) = send(
        &mut api,
        API,
        "/again",
        &[
            ("authorization", PLACEHOLDER),
            ("x-actor-token", PLACEHOLDER),
        ],
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(lab.parts.provider.calls().len(), 1);
    assert_eq!(echoed(&body, "x-actor-token"), [format!("Bearer {token}")]);

    // No placeholder, nothing injected and nothing fetched.
    let (status, body) = send(&mut api, API, "/bare", &[("x-other", "kept")]).await;
    assert_eq!(status, 200);
    assert!(echoed(&body, "authorization").is_empty(), "{body}");
    assert!(echoed(&body, "x-api-key").is_empty(), "{body}");
    assert_eq!(echoed(&body, "x-other"), ["kept"]);
    assert_eq!(lab.parts.provider.calls().len(), 1);
    // A placeholder the actor names in `Connection` is hop-by-hop: dropped, nothing fetched
    // (fetching x-notfound's secret would have refused the request).
    let mut api2 = lab.api().await;
    let (status, body) = send(
        &mut api2,
        API,
        "/hop",
        &[("x-notfound", PLACEHOLDER), ("connection", "x-notfound")],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(echoed(&body, "x-notfound").is_empty(), "{body}");
    assert_eq!(lab.parts.provider.calls().len(), 1);

    // Provider errors as upstream maps them; an unusable secret.
    for (header, status, text) in [
        ("x-notfound", 403, "egress denied"),
        ("x-unavailable", 503, "egress unavailable"),
        ("x-control", 503, "egress unavailable"),
    ] {
        let mut api = lab.api().await;
        let got = send(&mut api, API, "/refused", &[(header, PLACEHOLDER)]).await;
        assert_eq!(got, (status, text.to_owned()), "{header}");
    }
    for reason in ["credential_denied", "credential_unavailable"] {
        lab.pep
            .audit_record(reason, |r| r["kind"] == "request" && r["reason"] == reason)
            .await;
    }
    // Failures are never cached: the provider is asked again. Successes are shared by the
    // actor's tunnels: a new tunnel's request fetches nothing.
    let unavailable = |calls: Vec<(String, String)>| {
        calls
            .iter()
            .filter(|(u, _)| u.ends_with("/unavailable"))
            .count()
    };
    assert_eq!(unavailable(lab.parts.provider.calls()), 1);
    let mut api = lab.api().await;
    let got = send(&mut api, API, "/again", &[("x-unavailable", PLACEHOLDER)]).await;
    assert_eq!(got.0, 503);
    assert_eq!(unavailable(lab.parts.provider.calls()), 2);
    let openai =
        |calls: Vec<(String, String)>| calls.iter().filter(|(u, _)| u.ends_with("/openai")).count();
    let (status, body) = send(&mut api, API, "/shared", &[("authorization", PLACEHOLDER)]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(echoed(&body, "authorization"), [format!("Bearer {SECRET}")]);
    assert_eq!(
        openai(lab.parts.provider.calls()),
        1,
        "a new tunnel fetched again"
    );

    // Cleartext upstream: refused unless the rule allows it; nothing reaches the origin.
    let cert = lab.pep.actor("hello");
    let (status, _, tunnel) = lab.pep.tunnel(&cert, &lab.plain.addr.to_string()).await;
    assert_eq!(status, 200);
    let mut client = TunnelClient::new(tunnel).await;
    let req = http::Request::get("/")
        .header(http::header::HOST, PLAIN)
        .header("authorization", PLACEHOLDER)
        .body(Empty::new())
        .unwrap();
    let resp = client.sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 403);
    assert_eq!(lab.plain.accepted(), 0);
    lab.pep
        .audit_record("credential_needs_tls", |r| {
            r["kind"] == "request" && r["reason"] == "credential_needs_tls"
        })
        .await;
    let (status, _, tunnel) = lab.pep.tunnel(&cert, &lab.open.to_string()).await;
    assert_eq!(status, 200);
    let mut client = TunnelClient::new(tunnel).await;
    let req = http::Request::get("/")
        .header(http::header::HOST, OPEN)
        .header("x-api-key", PLACEHOLDER)
        .body(Empty::new())
        .unwrap();
    let resp = client.sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let body = String::from_utf8_lossy(&body);
    assert_eq!(echoed(&body, "x-api-key"), [FILE_SECRET]);

    // The secrets and the token appear nowhere the operator looks.
    let statusz = lab.pep.statusz().await.to_string();
    assert!(statusz.contains("\"class\":\"vault\""), "{statusz}");
    let metrics = lab.pep.gw.metrics().await;
    assert!(
        metrics
            .contains("actorgate_egress_credential_fetches_total{source=\"grpc\",result=\"ok\"} 1"),
        "{metrics}"
    );
    let log = lab.pep.gw.log_text();
    assert!(
        log.contains("credential"),
        "the debug log says nothing of credentials"
    );
    let audit = std::fs::read_to_string(&lab.pep.audit).unwrap();
    for (what, text) in [
        ("log", &log),
        ("audit file", &audit),
        ("metrics", &metrics),
        ("/statusz", &statusz),
    ] {
        for secret in [SECRET, FILE_SECRET, token.as_str(), "CTRL-MARKER"] {
            assert!(!text.contains(secret), "a secret in the {what}");
        }
    }
}

/// An upstream `EgressPolicy` (bytes built from upstream's field numbers) served by a fake
/// ate-api-server, whose `MintActorJWT` signs the actor tokens, and the fake credential
/// provider: the PEP (`policy.source: ateapi`, `directory.ateapi`) injects the provider's secret
/// (asked for the actor's SPIFFE ID) and a token minted through the directory, once per cache
/// lifetime, as upstream documents.
#[tokio::test]
async fn an_upstream_policy_injects_provider_secrets_and_directory_tokens() {
    use routing_core::proto::ActorState;
    use routing_core::testing::{FakeControlPlane, Method};
    use upstream_wire::*;

    let parts = Parts::start().await;
    let fake = FakeControlPlane::start().await;
    fake.add_actor(
        "demo/hello",
        ActorState::Running,
        "127.0.0.1",
        Duration::ZERO,
    );
    let pem = std::fs::read(parts.keys.path().join("pep-1.key")).unwrap();
    let signer = identity::Signer::from_pem(
        identity::keys::parse_algorithm("ES256").unwrap(),
        "pep-1",
        &pem,
        ISSUER,
    )
    .unwrap();
    fake.set_signer(Arc::new(signer));
    let rule = rule_with(
        f::RULE_HTTPS,
        &[API],
        P::Packed(vec![i32::from(parts.origin.port())]),
        &effects(&[
            credential_uri("authorization", "Bearer ", "ate-secret://vault/team/openai"),
            credential_jwt("x-actor-token", "Bearer ", &[API], 900),
        ]),
    );
    fake.set_egress_policy_bytes("demo/hello", policy_in("demo", &[rule]));

    let pki = test_pki(&[]);
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    std::fs::create_dir_all(dir.path().join("secrets")).unwrap();
    let config = format!(
        "admin: {{listen: ADMIN_ADDR}}
grpc: {{listen: GRPC_ADDR}}
ingress: {{enabled: false}}
logging: {{level: debug}}
shutdown: {{drain_delay: 0s, drain_timeout: 5s}}
directory: {{ateapi: {{address: '{fake}', tls: plaintext}}}}
egress:
  listen: 127.0.0.1:0
  tls: {{cert_file: {cert}, key_file: {key}, client_ca_file: {ca}}}
  policy: {{source: ateapi}}
  resolver: {{system: false, static: {{{API}: [127.0.0.1]}}}}
  guard: {{exempt: [127.0.0.0/8]}}
  audit: {{file: {audit}}}
{egress}",
        fake = fake.addr,
        cert = pki.path("server.crt").display(),
        key = pki.path("server.key").display(),
        ca = pki.ca_file().display(),
        audit = audit.display(),
        egress = parts.egress_yaml(),
    );
    let gw = Gateway::start(&write_config(dir.path(), &config)).await;
    let cert = actor_cert(&pki, "hello");
    let (status, body, tunnel) = atunnel(
        gw.addr("egress"),
        &pki.ca_file(),
        &cert,
        &parts.origin.to_string(),
    )
    .await;
    assert_eq!(status, 200, "CONNECT: {body}");
    let mut api = parts.api_over(tunnel).await;
    let headers = [
        ("authorization", PLACEHOLDER),
        ("x-actor-token", PLACEHOLDER),
    ];
    let (status, body) = send(&mut api, API, "/upstream", &headers).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(echoed(&body, "authorization"), [format!("Bearer {SECRET}")]);
    assert!(!body.contains(PLACEHOLDER), "{body}");
    let token = echoed(&body, "x-actor-token")[0]
        .strip_prefix("Bearer ")
        .unwrap()
        .to_owned();
    let verified = verify_token(&parts.keys.path().join("jwks.json"), ISSUER, API, &token).await;
    assert_eq!(verified.claims.sub, "actor/demo/hello");
    assert_eq!(verified.actor.uid.as_deref(), Some("uid-hello"));
    assert_eq!(verified.claims.exp - verified.claims.iat, 900);
    assert_eq!(
        parts.provider.calls(),
        [(
            "ate-secret://vault/team/openai".to_owned(),
            "spiffe://substrate-actor.local/actor/demo/hello".to_owned()
        )]
    );

    // A second request: both come from the caches.
    let (status, body) = send(&mut api, API, "/again", &headers).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(echoed(&body, "x-actor-token"), [format!("Bearer {token}")]);
    assert_eq!(parts.provider.calls().len(), 1);
    assert_eq!(fake.calls(Method::MintActorJwt, "demo/hello"), 1);
    // The policy is cached per actor (egress.policy.ttl): one GetActorEgressPolicy for the
    // tunnel and both requests.
    assert_eq!(fake.calls(Method::GetActorEgressPolicy, "demo/hello"), 1);
    let log = gw.log_text();
    for secret in [SECRET, token.as_str()] {
        assert!(!log.contains(secret), "a secret in the log");
        assert!(
            !std::fs::read_to_string(&audit).unwrap().contains(secret),
            "a secret in the audit file"
        );
    }
}
