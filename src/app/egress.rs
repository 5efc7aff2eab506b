//! The egress PEP (`egress`, DESIGN §7): the tunnel listener (mTLS, HTTP/1.1 and h2 CONNECT)
//! over [`egress_pep::tunnel::Pep`], with its policy source (`files`, watched; or `ateapi` over
//! the directory's ate-api-server connection), resolver, guard, dialer, audit sink and metrics.
//! Tunnels hold the drain. Registers the `egress` `/statusz` section and the PEP's metrics.
//!
//! The `files` source is loaded before the directory ([`load_files`]) so the `ateapi.Control`
//! simulator can answer `GetActorEgressPolicy` from it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use egress_pep::config::{EgressSettings, PolicySourceSettings};
use egress_pep::policy::PolicySource;
use egress_pep::policy::ateapi::AteapiPolicySource;
use egress_pep::policy::files::FilesSource;
use egress_pep::policy::upstream::FilesEgressPolicies;
use routing_core::directory::control_service::EgressPolicyProvider;

use super::Wiring;
use super::directory::Directory;
use crate::config::Loaded;

/// How often the DNS cache gauge is refreshed.
const DNS_GAUGE_EVERY: Duration = Duration::from_secs(10);

/// The egress policy files, loaded before the other components start.
pub struct EgressFiles {
    files: Arc<FilesSource>,
}

impl EgressFiles {
    /// The simulator's `GetActorEgressPolicy` answers from these files.
    pub fn provider(&self) -> Arc<dyn EgressPolicyProvider> {
        Arc::new(FilesEgressPolicies::new(self.files.clone()))
    }
}

/// Loads `egress.policy.files` when the PEP is on with the `files` source; a file problem is an
/// error naming the file and field (one line each).
pub fn load_files(loaded: &Loaded) -> Result<Option<EgressFiles>> {
    let Some(PolicySourceSettings::Files(paths)) = loaded.egress.as_ref().map(|e| &e.policy) else {
        return Ok(None);
    };
    let files = FilesSource::load(paths.clone())
        .map_err(|e| anyhow!("egress.policy.files: {}", e.to_string().replace('\n', "; ")))?;
    Ok(Some(EgressFiles { files }))
}

/// Binds `egress.listen` and serves tunnels, when the PEP is on. `directory` is the gateway's
/// directory (required by config validation); `files` what [`load_files`] returned. Call it
/// after the admin and gRPC listeners are bound: their addresses are guarded.
pub async fn start(
    w: &mut Wiring,
    loaded: &Loaded,
    directory: Option<&Directory>,
    files: Option<EgressFiles>,
) -> Result<()> {
    let Some(settings) = &loaded.egress else {
        return Ok(());
    };
    let directory =
        directory.ok_or_else(|| anyhow!("egress: the PEP needs a directory (config check)"))?;
    let metrics = egress_pep::metrics::EgressMetrics::new(&mut w.registry);

    let policy: Arc<dyn PolicySource> = match (&settings.policy, files) {
        (PolicySourceSettings::Files(_), Some(f)) => {
            // The watch lives as long as the source.
            if let Err(e) = f.files.watch() {
                tracing::warn!(error = %e, "cannot watch the egress policy files; edits need a restart")
            }
            let (m, files) = (metrics.clone(), f.files.clone());
            // The reload state as a metric: 0 after a broken edit, 1 once an edit applies.
            let mut attempts = files.reloader().attempts();
            w.background(async move {
                while attempts.changed().await.is_ok() {
                    m.set_policy_reload_ok(files.reloader().status().last_error.is_none());
                }
            });
            f.files
        }
        (PolicySourceSettings::Files(_), None) => {
            return Err(anyhow!("egress.policy.files: not loaded"));
        }
        (PolicySourceSettings::Ateapi { ttl, max_entries }, _) => {
            let client = directory.ateapi.clone().ok_or_else(|| {
                anyhow!("egress.policy.source: ateapi needs directory.ateapi (config check)")
            })?;
            Arc::new(AteapiPolicySource::new(client, *ttl, *max_entries))
        }
    };

    let listener = w.bind("egress", "egress.listen", settings.listen).await?;
    let tls = identity::tls::ReloadableServerConfig::server(settings.tls.clone())
        .context("egress.tls")?;
    match tls.watch() {
        Ok(handle) => w.keep(handle),
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch the egress TLS files; rotation needs a restart")
        }
    }

    // Every listener of this process is guarded (the tunnel listener, admin, gRPC, ingress, the
    // resolve endpoint, the echo worker): a broad `tcp` rule must not loop back into the gateway;
    // only a rule naming the address reaches one (DESIGN §7.2).
    let own: Vec<SocketAddr> = w.addresses.values().copied().collect();
    let guard = Arc::new(egress_pep::guard::Guard::new(
        &settings.guard_settings(),
        own,
    ));
    let resolver = Arc::new(
        egress_pep::resolve::PepResolver::new(&settings.resolver_settings())
            .context("egress.resolver")?,
    );
    let ingress_addresses = settings
        .actor_forwarding
        .as_ref()
        .map(|f| f.ingress_addresses.clone())
        .unwrap_or_default();
    let dialer = Arc::new(
        egress_pep::forward::Dialer::new(resolver.clone(), guard, settings.limits.connect_timeout)
            .with_ingress(ingress_addresses),
    );
    let audit = Arc::new(
        egress_pep::audit::AuditSink::new(settings.audit_file.clone())
            .context("egress.audit.file")?,
    );
    let identity = identity_settings(settings).await?;
    let interception = interception(w, settings)?;
    let routing = &loaded.config.routing;
    let mut actor_hosts = egress_pep::actor_hosts::ActorHosts::new(
        &routing.host_suffix,
        routing.default_atespace.as_deref(),
    );
    let ingress = match &settings.actor_forwarding {
        None => None,
        Some(f) => {
            actor_hosts = actor_hosts.with_forwarding(f.ingress_addresses.clone());
            Some(ingress_peer(
                w,
                f,
                settings.limits.connect_timeout,
                &settings.trust_domain,
            )?)
        }
    };

    let credentials = credentials(w, settings, directory, loaded)?;

    let pep = egress_pep::tunnel::Pep::new(egress_pep::tunnel::PepParts {
        tls: tls.clone(),
        directory: directory.directory.clone(),
        policy: policy.clone(),
        dialer,
        audit,
        metrics: metrics.clone(),
        identity,
        limits: settings.tunnel_limits(),
        classify: settings.classify_limits(),
        cleartext: settings.cleartext_limits(),
        actor_hosts,
        ingress,
        credentials,
        interception,
    });
    let p = pep.clone();
    w.health.register_section("egress", move || p.status())?;

    let m = metrics.clone();
    w.background(async move {
        let mut tick = tokio::time::interval(DNS_GAUGE_EVERY);
        loop {
            tick.tick().await;
            m.set_dns_cache_entries(resolver.cache_entries());
        }
    });
    tracing::info!(
        policy = policy.kind(),
        trust_domain = %settings.trust_domain,
        "egress PEP serving"
    );
    let listener = listener
        .with_tls(tls)
        .with_limits(settings.listener_limits());
    tokio::spawn(pep.serve(listener, w.drain.signal()));
    Ok(())
}

/// The interception CA (its files watched: a rotated CA signs the next leaves without a
/// restart) and the trust of re-originated TLS, when `egress.interception` is set.
fn interception(
    w: &mut Wiring,
    s: &EgressSettings,
) -> Result<Option<egress_pep::intercepted::Interception>> {
    let Some(i) = &s.interception else {
        return Ok(None);
    };
    let minter = egress_pep::intercept_ca::LeafMinter::new(
        i.ca_cert_file.clone(),
        i.ca_key_file.clone(),
        i.minter,
    )
    .map_err(|e| anyhow!("egress.interception.ca_cert_file: {e}"))?;
    match minter.reloader().watch(Duration::from_millis(200)) {
        Ok(handle) => w.keep(handle),
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch the interception CA files; rotation needs a restart")
        }
    }
    let upstream =
        egress_pep::intercept_upstream::UpstreamTls::new(i.system_roots, &i.extra_ca_files)
            .map_err(|e| anyhow!("egress.interception.upstream: {e}"))?;
    tracing::info!(
        roots = upstream.roots(),
        leaf_lifetime = %humantime::format_duration(i.minter.lifetime),
        "egress interception configured"
    );
    Ok(Some(egress_pep::intercepted::Interception::new(
        Arc::new(minter),
        Arc::new(upstream),
        i.handshake_timeout,
        i.readable_denials,
    )))
}

/// How tunnels prove their actor: certificate options and, with `agents.allow`, the assertion
/// verifier over the agents' JWKS file (watched for rotation).
async fn identity_settings(s: &EgressSettings) -> Result<egress_pep::tunnel::IdentitySettings> {
    let assertion = match &s.assertion {
        None => None,
        Some(a) => {
            let keys = identity::jwks::KeySet::load(
                identity::jwks::JwksSource::File(a.jwks_file.clone()),
                Duration::from_secs(30),
            )
            .await
            .with_context(|| {
                format!(
                    "egress.agents.assertion.jwks_file {}",
                    a.jwks_file.display()
                )
            })?;
            let verifier = identity::Verifier::new(
                keys,
                identity::VerifierSettings {
                    issuers: a.issuers.clone(),
                    audience: a.audience.clone(),
                    leeway: a.leeway,
                    max_lifetime: identity::assertion::MAX_ASSERTION_LIFETIME,
                },
            );
            Some(Arc::new(identity::assertion::AssertionVerifier::new(
                verifier,
                a.replay_capacity,
            )))
        }
    };
    Ok(egress_pep::tunnel::IdentitySettings {
        trust_domain: s.trust_domain.clone(),
        spiffe: identity::spiffe::SpiffeOptions {
            accept_legacy_actor: s.accept_legacy_actor_ids,
        },
        accept_actor_identity_extension: s.accept_actor_identity_extension,
        agents: s.agents.clone(),
        assertion,
    })
}

/// A client TLS config for `peer` with the PEP's identity, offering `alpn`, watched for
/// rotation (`what` names it in errors and warnings).
fn peer_client_tls(
    w: &mut Wiring,
    peer: &egress_pep::config::PeerTls,
    alpn: Vec<Vec<u8>>,
    what: &str,
) -> Result<Arc<identity::tls::ReloadableClientConfig>> {
    use identity::tls::{ClientTlsFiles, ReloadableClientConfig, ServerIdentity};
    let tls = ReloadableClientConfig::client(ClientTlsFiles {
        ca_file: peer.ca_file.clone(),
        cert_file: Some(peer.cert_file.clone()),
        key_file: Some(peer.key_file.clone()),
        server_identity: ServerIdentity::Hostname,
        alpn,
    })
    .with_context(|| what.to_owned())?;
    match tls.watch() {
        Ok(handle) => w.keep(handle),
        Err(e) => {
            tracing::warn!(error = %e, what, "cannot watch TLS files; rotation needs a restart")
        }
    }
    Ok(tls)
}

/// Ingress as the PEP forwards actor traffic to it: `http/1.1` alone or `h2` first.
fn ingress_peer(
    w: &mut Wiring,
    f: &egress_pep::config::ActorForwardingSettings,
    connect_timeout: Duration,
    trust_domain: &str,
) -> Result<egress_pep::actor_forward::IngressPeer> {
    let what = "egress.actor_forwarding";
    // Ingress trusts a peer by its certificate's SPIFFE ID (client-auth EKU, one URI SAN, a
    // component): a certificate it could never trust would fail every forwarded call, so say so
    // now, naming the file.
    let leaf = identity::pem::load_certs(&f.ingress.cert_file)
        .with_context(|| format!("{what}.cert_file"))?
        .into_iter()
        .next()
        .ok_or_else(|| {
            anyhow!(
                "{what}.cert_file: {} holds no certificate",
                f.ingress.cert_file.display()
            )
        })?;
    match identity::cert::identity_from_der(&leaf, trust_domain) {
        Ok(identity::cert::PeerIdentity::Component { .. }) => {}
        Ok(_) => {
            return Err(anyhow!(
                "{what}.cert_file: {} names an actor; the PEP needs a component certificate (spiffe://<td>/ns/<ns>/sa/<sa>) that ingress lists in trusted_peers",
                f.ingress.cert_file.display()
            ));
        }
        Err(e) => {
            return Err(anyhow!(
                "{what}.cert_file: {}: {e}; ingress trusts peers by a component certificate with the client-auth EKU (actorgate dev-ca component)",
                f.ingress.cert_file.display()
            ));
        }
    }
    let h1 = peer_client_tls(w, &f.ingress, vec![b"http/1.1".to_vec()], what)?;
    let h2 = peer_client_tls(
        w,
        &f.ingress,
        vec![b"h2".to_vec(), b"http/1.1".to_vec()],
        what,
    )?;
    tracing::info!(ingress = %f.ingress.address, "actor forwarding to ingress");
    egress_pep::actor_forward::IngressPeer::new(
        f.ingress.address.clone(),
        &f.ingress.server_name,
        h1,
        h2,
        connect_timeout,
    )
    .context("egress.actor_forwarding.server_name")
}

/// The credential sources of `replace_headers` effects: the configured providers by class, and
/// actor tokens from `MintActorJWT` over the ateapi directory, else from the `signer` section.
fn credentials(
    w: &mut Wiring,
    settings: &EgressSettings,
    directory: &Directory,
    loaded: &Loaded,
) -> Result<Arc<egress_pep::credentials::Credentials>> {
    use egress_pep::config::ProviderSettings;
    use egress_pep::credentials::proto::credential_provider_client::CredentialProviderClient;
    use egress_pep::credentials::{
        ActorTokens, CredentialMetrics, Credentials, DirectoryTokens, Provider, SignerTokens,
    };
    let c = &settings.credentials;
    let mut providers = std::collections::HashMap::new();
    for (i, (class, p)) in c.providers.iter().enumerate() {
        let field = format!("egress.credentials.providers[{i}].grpc");
        let provider = match p {
            ProviderSettings::Files(dir) => Provider::Files(dir.clone()),
            ProviderSettings::Env(allow) => Provider::Env(allow.clone()),
            ProviderSettings::Grpc(peer) => {
                let tls = peer_client_tls(w, peer, vec![b"h2".to_vec()], &field)?;
                let ep =
                    tonic::transport::Endpoint::from_shared(format!("http://{}", peer.address))
                        .with_context(|| format!("{field}.address"))?
                        .connect_timeout(c.limits.fetch_timeout);
                let channel = routing_core::directory::ateapi::tls_channel(
                    ep,
                    &peer.address,
                    Some(&peer.server_name),
                    tls,
                )
                .with_context(|| format!("{field}.address"))?;
                Provider::Grpc(CredentialProviderClient::new(channel))
            }
        };
        providers.insert(class.clone(), provider);
    }
    let tokens: Option<Arc<dyn ActorTokens>> = match (&directory.ateapi, &loaded.signer) {
        (Some(ateapi), _) => Some(Arc::new(DirectoryTokens(ateapi.clone()))),
        (None, Some(signer)) => Some(Arc::new(SignerTokens(signer.clone()))),
        (None, None) => None,
    };
    let metrics = CredentialMetrics::new(&mut w.registry);
    Ok(Arc::new(Credentials::new(
        settings.trust_domain.clone(),
        providers,
        tokens,
        c.limits,
        metrics,
    )))
}
