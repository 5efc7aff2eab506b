//! `actorgate policy test`: "may actor X reach Y?" — the question an operator asks before rolling a
//! policy out (DESIGN §7.2). Loads the policy source of a config's `egress` section (the files,
//! or `GetActorEgressPolicy` over `directory.ateapi`) or policy files given directly, decides one
//! destination exactly as the PEP would, and prints the verdict, the deciding rule, the reason
//! and where the PEP would dial. Nothing is dialled.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, anyhow, bail};
use clap::{Args, Subcommand};
use egress_pep::actor_hosts::ActorHosts;
use egress_pep::config::PolicySourceSettings;
use egress_pep::decision::{Decision, Dial, Query, Traffic};
use egress_pep::policy::PolicySource;
use egress_pep::policy::ateapi::AteapiPolicySource;
use egress_pep::policy::files::FilesSource;
use egress_pep::subject::{IdentityKind, Subject};
use identity::ActorIdentity;
use routing_core::ActorDirectory;
use routing_core::actor_ref::ActorRef;
use routing_core::directory::TemplateRef;
use routing_core::directory::ateapi::AteApiDirectory;
use routing_core::directory::static_dir::StaticDirectory;

use actorgate::config::{self, DirectorySettings};

/// `actorgate policy …`
#[derive(Subcommand)]
pub enum PolicyCommand {
    /// Decide one destination for one actor and print verdict, rule and reason (exit 0 when it
    /// passes, 1 when denied, 2 for a bad config or argument).
    Test(TestArgs),
}

/// What `policy test` decides.
#[derive(Args)]
pub struct TestArgs {
    /// An actorgate config with an `egress` section: its policy source is used.
    #[arg(
        long,
        short = 'c',
        required_unless_present = "policy",
        conflicts_with = "policy"
    )]
    config: Option<PathBuf>,
    /// Policy files (actorgate's format) instead of a config; repeatable.
    #[arg(long)]
    policy: Vec<PathBuf>,
    /// The actor, <atespace>/<name>.
    #[arg(long)]
    actor: String,
    /// The actor's template, <namespace>/<name> (template selectors). Default: the directory's
    /// record of the actor, when the config has a directory.
    #[arg(long)]
    template: Option<String>,
    /// The original destination the actor dialed, ip:port.
    #[arg(long)]
    dst: SocketAddr,
    /// The traffic is a TLS ClientHello with this SNI; with `--host`, a request inside the
    /// intercepted connection for this SNI (decided against `https` rules).
    #[arg(long, conflicts_with = "tls")]
    sni: Option<String>,
    /// The traffic is a TLS ClientHello without SNI.
    #[arg(long)]
    tls: bool,
    /// The traffic is a cleartext HTTP request with this authority (Host).
    #[arg(long, conflicts_with = "tls")]
    host: Option<String>,
    /// The cleartext request's method.
    #[arg(long, default_value = "GET", requires = "host")]
    method: String,
    /// The cleartext request's path (no query).
    #[arg(long, default_value = "/", requires = "host")]
    path: String,
    /// Decide as a PEP with interception configured (with `--config`: whether the config has
    /// `egress.interception`).
    #[arg(long, conflicts_with = "config")]
    interception: bool,
    /// Decide as a PEP with actor forwarding configured (actor hosts under the default host
    /// suffix are decided by `actors` rules; with `--config`: whether the config has
    /// `egress.actor_forwarding`, and its routing host suffix).
    #[arg(long, conflicts_with = "config")]
    actor_forwarding: bool,
}

/// Runs `actorgate policy test`: `Ok(true)` when the traffic passes; an error (bad config or
/// argument, policy source unavailable) means no decision was made.
pub fn run(cmd: PolicyCommand) -> Result<bool> {
    let PolicyCommand::Test(args) = cmd;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(test(args))
}

/// The config's directory, and its ate-api-server client when it is one.
type Directory = (Arc<dyn ActorDirectory>, Option<Arc<AteApiDirectory>>);

fn unusable(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("{e}")
}

async fn test(args: TestArgs) -> Result<bool> {
    let actor = ActorRef::parse(&args.actor)
        .map_err(|e| unusable(format!("--actor {:?}: {e}", args.actor)))?;
    let mut template = match &args.template {
        None => None,
        Some(t) => Some(parse_template(t).map_err(unusable)?),
    };
    let mut uid = None;
    // The guard and static resolver entries of the config (defaults without one).
    let mut guard_settings = egress_pep::guard::GuardSettings::default();
    let mut own_listeners: Vec<SocketAddr> = Vec::new();
    let mut static_entries = std::collections::BTreeMap::new();
    // Names under the routing host suffix are actor hosts, decided as the PEP does
    // (egress_pep::actor_hosts): the default suffix without a config.
    let mut actor_hosts = ActorHosts::new(
        routing_core::extract::DEFAULT_HOST_SUFFIX,
        Some(routing_core::extract::DEFAULT_ATESPACE),
    );
    if args.actor_forwarding {
        actor_hosts = actor_hosts.with_forwarding(Vec::new());
    }
    let mut interception = args.interception;

    let (source, label): (Arc<dyn PolicySource>, String) = match &args.config {
        None => {
            let files = FilesSource::load(args.policy.clone())
                .map_err(|e| unusable(e.to_string().lines().collect::<Vec<_>>().join("\n")))?;
            (files, "files".to_owned())
        }
        Some(path) => {
            let loaded = config::load(path).map_err(|e| {
                unusable(
                    e.to_string()
                        .lines()
                        .map(|l| format!("{}: {l}", path.display()))
                        .collect::<Vec<_>>()
                        .join("\n"),
                )
            })?;
            let egress = loaded.egress.as_ref().ok_or_else(|| {
                unusable(format!(
                    "{}: has no egress section (or egress.enabled is false)",
                    path.display()
                ))
            })?;
            let directory: Option<Directory> = match loaded.directory {
                Some(DirectorySettings::Static { loader, .. }) => {
                    let d = StaticDirectory::new(loader)
                        .map_err(|e| unusable(e.to_string().replace('\n', "; ")))?;
                    Some((Arc::new(d), None))
                }
                Some(DirectorySettings::AteApi { settings, .. }) => {
                    let d = Arc::new(
                        AteApiDirectory::new(&settings)
                            .map_err(|e| unusable(format!("directory.ateapi: {e}")))?,
                    );
                    Some((d.clone(), Some(d)))
                }
                None => None,
            };
            guard_settings = egress.guard_settings();
            static_entries = egress.static_entries.clone();
            let routing = &loaded.config.routing;
            actor_hosts =
                ActorHosts::new(&routing.host_suffix, routing.default_atespace.as_deref());
            if let Some(f) = &egress.actor_forwarding {
                actor_hosts = actor_hosts.with_forwarding(f.ingress_addresses.clone());
            }
            interception = egress.interception.is_some();
            // Every listener of the gateway is guarded, as `serve` does.
            own_listeners.push(egress.listen);
            own_listeners.push(loaded.admin_listen);
            own_listeners.extend(loaded.grpc_listen);
            own_listeners.extend(loaded.resolve_listen);
            own_listeners.extend(loaded.echo_worker.as_ref().map(|(a, _)| *a));
            if let Some(i) = &loaded.ingress {
                own_listeners.push(i.http_listen);
                own_listeners.extend(i.https.as_ref().map(|(a, _)| *a));
            }
            // The directory's record: the template (template selectors) and the UID.
            if let Some((d, _)) = &directory {
                match tokio::time::timeout(Duration::from_secs(10), d.get(&actor)).await {
                    Ok(Ok(record)) => {
                        uid = Some(record.uid.clone()).filter(|u| !u.is_empty());
                        if template.is_none() {
                            template = record.template.clone();
                        }
                    }
                    Ok(Err(e)) => eprintln!(
                        "actorgate: note: the directory has no record of {actor} ({e}); deciding without its template"
                    ),
                    Err(_) => eprintln!(
                        "actorgate: note: the directory did not answer for {actor}; deciding without its template"
                    ),
                }
            }
            match &egress.policy {
                PolicySourceSettings::Files(files) => {
                    let f = FilesSource::load(files.clone()).map_err(unusable)?;
                    (f, "files".to_owned())
                }
                PolicySourceSettings::Ateapi { ttl, max_entries } => {
                    let Some((_, Some(client))) = directory else {
                        bail!("egress.policy.source ateapi needs directory.ateapi");
                    };
                    let s = AteapiPolicySource::new(client, *ttl, *max_entries);
                    (Arc::new(s), "ateapi".to_owned())
                }
            }
        }
    };

    let subject = Subject {
        actor: ActorIdentity {
            atespace: actor.atespace().to_owned(),
            name: actor.name().to_owned(),
            uid,
        },
        template,
        kind: IdentityKind::Certificate,
    };
    let traffic = match (&args.sni, args.tls, &args.host) {
        (Some(_), _, Some(host)) => Traffic::Https {
            authority: host,
            method: &args.method,
            path: &args.path,
        },
        (Some(sni), _, None) => Traffic::Tls {
            sni: Some(sni),
            interception,
        },
        (None, true, _) => Traffic::Tls {
            sni: None,
            interception,
        },
        (None, false, Some(host)) => Traffic::Http {
            authority: host,
            method: &args.method,
            path: &args.path,
        },
        (None, false, None) => Traffic::Opaque,
    };
    let policy = tokio::time::timeout(Duration::from_secs(30), source.policy_for(&subject))
        .await
        .map_err(|_| anyhow!("the {label} policy source did not answer within 30s"))?
        .map_err(|e| anyhow!("{e} (the PEP answers 503 egress unavailable)"))?;
    let decision = actor_hosts.decide(
        policy.as_deref(),
        &Query {
            dst: args.dst,
            traffic,
        },
        None,
    );
    let policy_name = policy.as_ref().map(|p| p.name().clone());
    let guard = egress_pep::guard::Guard::new(&guard_settings, own_listeners);
    let mut decision = decision;
    let mut out = render(&decision, policy_name.as_deref(), &label, policy.as_deref());
    if let Some(dial) = &decision.dial {
        let (line, refusal) = screen(&guard, dial, &static_entries);
        out.push_str(&format!("guard: {line}\n"));
        if let Some(reason) = refusal {
            // The PEP refuses the dial: the tunnel is denied with the guard's reason.
            decision.verdict = egress_pep::decision::Verdict::Deny;
            out.push_str(&format!(
                "outcome: deny ({}: {})\n",
                reason.as_str(),
                reason.describe()
            ));
        }
    }
    print!("{out}");
    Ok(decision.verdict.passes())
}

/// What the guard says about the addresses `dial` would reach: a line, and the refusal when
/// every address is refused. Names without a static entry are resolved only when the PEP dials.
fn screen(
    guard: &egress_pep::guard::Guard,
    dial: &Dial,
    static_entries: &std::collections::BTreeMap<String, Vec<std::net::IpAddr>>,
) -> (String, Option<egress_pep::decision::Reason>) {
    use egress_pep::guard::Via;
    let (addrs, via) = match dial {
        Dial::Actor { .. } => {
            return (
                "forwarded to ingress (egress.actor_forwarding); the guard does not apply".into(),
                None,
            );
        }
        Dial::Address { addr, tcp_rule } => (
            vec![*addr],
            Via::Address {
                tcp_rule: *tcp_rule,
            },
        ),
        Dial::Name {
            host,
            port,
            allow_private,
        } => match static_entries.get(&**host) {
            Some(ips) => (
                ips.iter().map(|ip| SocketAddr::new(*ip, *port)).collect(),
                Via::Name {
                    allow_private: *allow_private,
                },
            ),
            None => {
                return (
                    format!("{host} is resolved when the PEP dials; every answer is screened"),
                    None,
                );
            }
        },
    };
    let mut lines = Vec::new();
    let mut refused = None;
    let mut passed = false;
    for a in addrs {
        match guard.screen(a, via) {
            Ok(()) => {
                passed = true;
                lines.push(format!("{a} ok"));
            }
            Err(r) => {
                refused = Some(r.reason);
                lines.push(format!("{a} refused: {r}"));
            }
        }
    }
    (lines.join("; "), refused.filter(|_| !passed))
}

fn parse_template(t: &str) -> Result<TemplateRef, String> {
    match t.split_once('/') {
        Some((ns, name))
            if identity::actor::is_dns_label(ns) && !name.is_empty() && !name.contains('/') =>
        {
            Ok(TemplateRef {
                namespace: ns.to_owned(),
                name: name.to_owned(),
            })
        }
        _ => Err(format!("--template {t:?}: want <namespace>/<name>")),
    }
}

/// The answer, one `key: value` line each: verdict, reason, rule, policy, dial.
fn render(
    d: &Decision,
    policy: Option<&str>,
    source: &str,
    compiled: Option<&egress_pep::policy::CompiledPolicy>,
) -> String {
    let rule = match &d.rule {
        None => "none".to_owned(),
        Some(r) => {
            let mode = compiled
                .and_then(|p| p.rules().get(r.index))
                .and_then(|rule| rule.mode)
                .map(|m| format!(", mode {}", m.as_str()))
                .unwrap_or_default();
            format!(
                "{} rules[{}] ({}{mode})",
                r.policy,
                r.index,
                r.kind.as_str()
            )
        }
    };
    let dial = match &d.dial {
        None => "none".to_owned(),
        Some(Dial::Name {
            host,
            port,
            allow_private,
        }) => format!(
            "name {host}:{port} (resolved by the PEP{})",
            if *allow_private {
                "; private ranges allowed"
            } else {
                ""
            }
        ),
        Some(Dial::Address { addr, tcp_rule }) => match tcp_rule {
            Some(cidr) => format!("address {addr} (tcp rule {cidr})"),
            None => format!("address {addr}"),
        },
        Some(Dial::Actor { target, host, port }) => {
            format!("actor {} through ingress ({host}:{port})", target.as_str())
        }
    };
    format!(
        "verdict: {}\nreason: {} ({})\nrule: {rule}\npolicy: {} ({source})\ndial: {dial}\n",
        d.verdict.as_str(),
        d.reason.as_str(),
        d.reason.describe(),
        policy.unwrap_or("none"),
    )
}
