//! Upstream Substrate's `EgressPolicy` (DESIGN §9, v0.4 field numbers) ↔ the policy model.
//!
//! * [`from_proto`] reads a policy the control plane sent (`GetActorEgressPolicy`) and checks
//!   upstream's limits: at most [`MAX_RULES`] rules, exactly one kind per rule, hostname
//!   patterns in upstream's grammar, ports (`http` default 80, `https` default 443,
//!   `tls_passthrough` required; exactly one of `all` / `numbers`; numbers 1..65535, no
//!   repeats, at most [`MAX_PORTS`]), effects (at most [`MAX_EFFECTS`] headers, unique by name,
//!   exactly one credential source, actor JWT lifetime 300..3600 s), then
//!   [`Policy::validate`]. A policy that fails is refused whole: the `ateapi` source then
//!   denies everything for that actor (reason `policy_invalid`) and logs why — deny, never a
//!   partially understood allow.
//! * [`to_proto`] turns a model policy (from the files) into what upstream can express, for the
//!   `ateapi.Control` simulator: `http` rules without method or path restrictions, `https` and
//!   `tls_passthrough` rules. Everything else (actorgate's extensions) is left out, so an
//!   upstream client sees a policy that is never wider than actorgate's.
//! * [`FilesEgressPolicies`] is the simulator's [`EgressPolicyProvider`] over a
//!   [`FilesSource`].

use std::sync::Arc;

use routing_core::directory::ActorRecord;
use routing_core::directory::control_service::EgressPolicyProvider;
use routing_core::proto;

use super::files::FilesSource;
use super::hostname::HostPattern;
use super::model::{
    CredentialHeader, CredentialSource, FieldProblem, HostRule, Mode, Policy, Ports, Rule, RuleSpec,
};

/// Most rules an upstream policy may hold.
pub const MAX_RULES: usize = 256;
/// Most port numbers one rule may list.
pub const MAX_PORTS: usize = 16;
/// Most credential headers one rule's effects may replace.
pub const MAX_EFFECTS: usize = 16;
/// Shortest actor JWT lifetime a `CredentialHeader.actor_jwt` may ask for, in seconds.
pub const MIN_JWT_SECONDS: i64 = 300;
/// Longest actor JWT lifetime a `CredentialHeader.actor_jwt` may ask for, in seconds.
pub const MAX_JWT_SECONDS: i64 = 3600;
/// The name of every upstream policy (`metadata.name`).
pub const UPSTREAM_POLICY_NAME: &str = "default";
/// The scheme of a credential provider URI.
const CREDENTIAL_SCHEME: &str = "ate-secret://";
/// `http` rules without `ports` apply to this port.
const DEFAULT_HTTP_PORT: u16 = 80;
/// `https` rules without `ports` apply to this port.
const DEFAULT_HTTPS_PORT: u16 = 443;

/// An upstream policy actorgate refuses, with every problem found (field path relative to the
/// policy, e.g. `rules[3].tls_passthrough.ports`, and what is wrong).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid upstream egress policy: {}", describe(.problems))]
pub struct UpstreamPolicyError {
    /// Every problem, in field order.
    pub problems: Vec<FieldProblem>,
}

fn describe(problems: &[FieldProblem]) -> String {
    problems
        .iter()
        .map(|(path, problem)| format!("{path}: {problem}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Reads an upstream `EgressPolicy` into the model (enforce mode; the name is
/// `metadata.name`, `default` when empty).
///
/// # Errors
/// [`UpstreamPolicyError`] listing every violation of upstream's limits (module docs) and of
/// [`Policy::validate`] (e.g. the same pattern twice on one port). Nothing is dropped
/// silently: a policy is taken whole or refused.
pub fn from_proto(p: &proto::EgressPolicy) -> Result<Policy, UpstreamPolicyError> {
    let mut problems: Vec<FieldProblem> = Vec::new();
    if p.rules.len() > MAX_RULES {
        problems.push((
            "rules".into(),
            format!("{} rules, at most {MAX_RULES} allowed", p.rules.len()),
        ));
    }
    let name = p
        .metadata
        .as_ref()
        .map(|m| m.name.as_str())
        .filter(|n| !n.is_empty())
        .unwrap_or(UPSTREAM_POLICY_NAME);
    let mut rules = Vec::with_capacity(p.rules.len());
    for (i, r) in p.rules.iter().enumerate() {
        let set = [
            r.http.is_some(),
            r.https.is_some(),
            r.tls_passthrough.is_some(),
        ];
        if set.iter().filter(|s| **s).count() != 1 {
            problems.push((
                format!("rules[{i}]"),
                "exactly one of http, https, tls_passthrough must be set".into(),
            ));
            continue;
        }
        let spec = if let Some(h) = &r.http {
            let base = format!("rules[{i}].http");
            RuleSpec::Http(host_rule(
                &base,
                &h.hostnames,
                h.ports.as_ref(),
                Some(DEFAULT_HTTP_PORT),
                h.effects.as_ref(),
                &mut problems,
            ))
        } else if let Some(h) = &r.https {
            let base = format!("rules[{i}].https");
            RuleSpec::Https(host_rule(
                &base,
                &h.hostnames,
                h.ports.as_ref(),
                Some(DEFAULT_HTTPS_PORT),
                h.effects.as_ref(),
                &mut problems,
            ))
        } else if let Some(t) = &r.tls_passthrough {
            let base = format!("rules[{i}].tls_passthrough");
            RuleSpec::TlsPassthrough(host_rule(
                &base,
                &t.hostnames,
                t.ports.as_ref(),
                None,
                None,
                &mut problems,
            ))
        } else {
            continue;
        };
        rules.push(Rule { spec, mode: None });
    }
    if !problems.is_empty() {
        return Err(UpstreamPolicyError { problems });
    }
    let policy = Policy {
        name: Arc::from(name),
        mode: Mode::Enforce,
        rules,
    };
    policy
        .validate()
        .map_err(|problems| UpstreamPolicyError { problems })?;
    Ok(policy)
}

/// One `http` / `https` / `tls_passthrough` rule's common fields; problems go to `problems`.
fn host_rule(
    base: &str,
    hostnames: &[String],
    ports: Option<&proto::Ports>,
    default_port: Option<u16>,
    effects: Option<&proto::HttpRuleEffects>,
    problems: &mut Vec<FieldProblem>,
) -> HostRule {
    let mut patterns = Vec::with_capacity(hostnames.len());
    for (j, h) in hostnames.iter().enumerate() {
        match HostPattern::parse(h) {
            Ok(p) => patterns.push(p),
            Err(e) => problems.push((format!("{base}.hostnames[{j}]"), e.to_string())),
        }
    }
    if hostnames.is_empty() {
        problems.push((
            format!("{base}.hostnames"),
            "must list at least one hostname".into(),
        ));
    }
    let ports = match (ports, default_port) {
        (None, Some(d)) => Ports::Numbers(vec![d]),
        (None, None) => {
            problems.push((
                format!("{base}.ports"),
                "required on tls_passthrough rules".into(),
            ));
            Ports::Numbers(Vec::new())
        }
        (Some(p), _) => ports_from_proto(&format!("{base}.ports"), p, problems),
    };
    let effects = effects
        .map(|e| effects_from_proto(&format!("{base}.effects"), e, problems))
        .unwrap_or_default();
    HostRule {
        hostnames: patterns,
        ports,
        effects,
        ..HostRule::default()
    }
}

fn ports_from_proto(base: &str, p: &proto::Ports, problems: &mut Vec<FieldProblem>) -> Ports {
    match (p.all.is_some(), p.numbers.is_empty()) {
        (true, true) => return Ports::All,
        (true, false) => {
            problems.push((
                base.to_owned(),
                "exactly one of all and numbers must be set, not both".into(),
            ));
            return Ports::All;
        }
        (false, true) => {
            problems.push((
                base.to_owned(),
                "exactly one of all and numbers must be set".into(),
            ));
            return Ports::Numbers(Vec::new());
        }
        (false, false) => {}
    }
    if p.numbers.len() > MAX_PORTS {
        problems.push((
            format!("{base}.numbers"),
            format!("{} ports, at most {MAX_PORTS} allowed", p.numbers.len()),
        ));
    }
    let mut out: Vec<u16> = Vec::with_capacity(p.numbers.len());
    for (k, &n) in p.numbers.iter().enumerate() {
        match u16::try_from(n) {
            Ok(port) if port != 0 => {
                if out.contains(&port) {
                    problems.push((format!("{base}.numbers[{k}]"), format!("{n} repeated")));
                } else {
                    out.push(port);
                }
            }
            _ => problems.push((
                format!("{base}.numbers[{k}]"),
                format!("{n} is not a port number (1..65535)"),
            )),
        }
    }
    Ports::Numbers(out)
}

fn effects_from_proto(
    base: &str,
    e: &proto::HttpRuleEffects,
    problems: &mut Vec<FieldProblem>,
) -> Vec<CredentialHeader> {
    if e.replace_headers.len() > MAX_EFFECTS {
        problems.push((
            format!("{base}.replace_headers"),
            format!(
                "{} headers, at most {MAX_EFFECTS} allowed",
                e.replace_headers.len()
            ),
        ));
    }
    let mut out: Vec<CredentialHeader> = Vec::with_capacity(e.replace_headers.len());
    for (k, h) in e.replace_headers.iter().enumerate() {
        let path = format!("{base}.replace_headers[{k}]");
        if http::HeaderName::from_bytes(h.header.as_bytes()).is_err() {
            problems.push((
                format!("{path}.header"),
                format!("{:?} is not a header name", h.header),
            ));
        } else if out.iter().any(|o| o.header.eq_ignore_ascii_case(&h.header)) {
            problems.push((format!("{path}.header"), format!("{} repeated", h.header)));
        }
        let source = match (&h.credential_uri, &h.actor_jwt) {
            (uri, None) if !uri.is_empty() => {
                let ok = uri
                    .strip_prefix(CREDENTIAL_SCHEME)
                    .is_some_and(|rest| rest.splitn(3, '/').filter(|s| !s.is_empty()).count() == 3);
                if !ok {
                    problems.push((
                        format!("{path}.credential_uri"),
                        "must be ate-secret://<provider-class>/<provider-name>/<tail>".into(),
                    ));
                }
                CredentialSource::Uri(uri.clone())
            }
            (uri, Some(jwt)) if uri.is_empty() => {
                if !(MIN_JWT_SECONDS..=MAX_JWT_SECONDS).contains(&jwt.expiration_seconds) {
                    problems.push((
                        format!("{path}.actor_jwt.expiration_seconds"),
                        format!(
                            "{} is outside {MIN_JWT_SECONDS}..{MAX_JWT_SECONDS}",
                            jwt.expiration_seconds
                        ),
                    ));
                }
                CredentialSource::ActorJwt {
                    audiences: jwt.audiences.clone(),
                    expiration_seconds: jwt.expiration_seconds,
                }
            }
            _ => {
                problems.push((
                    path.clone(),
                    "exactly one of credential_uri and actor_jwt must be set".into(),
                ));
                continue;
            }
        };
        out.push(CredentialHeader {
            header: h.header.clone(),
            prefix: h.prefix.clone(),
            source,
            allow_cleartext: false,
        });
    }
    out
}

/// The upstream form of `policy` for the simulator: `http` rules without methods or path
/// prefixes, and every `https` and `tls_passthrough` rule, in order; `tcp` and `actors` rules
/// and restricted `http` rules are left out (upstream cannot express them, and leaving a rule
/// out only narrows). Modes are not expressible either: the rules appear as enforced.
/// `metadata` carries the name `default` and no atespace (the caller fills it in).
///
/// `None` when no rule is representable (upstream clients then see NOT_FOUND, which denies all
/// as an empty policy would).
pub fn to_proto(policy: &Policy) -> Option<proto::EgressPolicy> {
    let rules: Vec<proto::EgressRule> = policy
        .rules
        .iter()
        .filter_map(|r| match &r.spec {
            RuleSpec::Http(h) if h.methods.is_empty() && h.path_prefixes.is_empty() => {
                Some(proto::EgressRule {
                    http: Some(proto::HttpRule {
                        hostnames: hostnames_to_proto(h),
                        ports: Some(ports_to_proto(&h.ports)),
                        effects: effects_to_proto(&h.effects),
                    }),
                    ..Default::default()
                })
            }
            RuleSpec::Https(h) => Some(proto::EgressRule {
                https: Some(proto::HttpsRule {
                    hostnames: hostnames_to_proto(h),
                    ports: Some(ports_to_proto(&h.ports)),
                    effects: effects_to_proto(&h.effects),
                }),
                ..Default::default()
            }),
            RuleSpec::TlsPassthrough(h) => Some(proto::EgressRule {
                tls_passthrough: Some(proto::TlsPassthroughRule {
                    hostnames: hostnames_to_proto(h),
                    ports: Some(ports_to_proto(&h.ports)),
                }),
                ..Default::default()
            }),
            _ => None,
        })
        .take(MAX_RULES)
        .collect();
    if rules.is_empty() {
        return None;
    }
    Some(proto::EgressPolicy {
        metadata: Some(proto::ResourceMetadata {
            name: UPSTREAM_POLICY_NAME.to_owned(),
            ..Default::default()
        }),
        rules,
    })
}

fn hostnames_to_proto(h: &HostRule) -> Vec<String> {
    h.hostnames.iter().map(ToString::to_string).collect()
}

fn ports_to_proto(p: &Ports) -> proto::Ports {
    match p {
        Ports::All => proto::Ports {
            all: Some(proto::AllPorts {}),
            numbers: Vec::new(),
        },
        Ports::Numbers(n) => proto::Ports {
            all: None,
            numbers: n.iter().map(|&p| i32::from(p)).collect(),
        },
    }
}

fn effects_to_proto(effects: &[CredentialHeader]) -> Option<proto::HttpRuleEffects> {
    if effects.is_empty() {
        return None;
    }
    Some(proto::HttpRuleEffects {
        replace_headers: effects
            .iter()
            .map(|e| {
                let (credential_uri, actor_jwt) = match &e.source {
                    CredentialSource::Uri(u) => (u.clone(), None),
                    CredentialSource::ActorJwt {
                        audiences,
                        expiration_seconds,
                    } => (
                        String::new(),
                        Some(proto::ActorJwtSource {
                            audiences: audiences.clone(),
                            expiration_seconds: *expiration_seconds,
                        }),
                    ),
                };
                proto::CredentialHeader {
                    header: e.header.clone(),
                    prefix: e.prefix.clone(),
                    credential_uri,
                    actor_jwt,
                }
            })
            .collect(),
    })
}

/// The `ateapi.Control` simulator's egress policies: the `files` source's policy for an actor
/// (selected by actor, template, atespace as for the PEP), reduced with [`to_proto`] and
/// labelled with the actor's atespace. Reloads of the files apply to the next call.
pub struct FilesEgressPolicies {
    files: Arc<FilesSource>,
}

impl FilesEgressPolicies {
    /// Serves `files`' policies.
    pub fn new(files: Arc<FilesSource>) -> Self {
        Self { files }
    }

    fn answer(&self, atespace: &str, policy: Option<Policy>) -> Option<proto::EgressPolicy> {
        let mut p = to_proto(&policy?)?;
        if let Some(m) = p.metadata.as_mut() {
            m.atespace = atespace.to_owned();
        }
        Some(p)
    }
}

impl EgressPolicyProvider for FilesEgressPolicies {
    fn egress_policy(&self, atespace: &str, name: &str) -> Option<proto::EgressPolicy> {
        self.answer(atespace, self.files.policy_model_for(atespace, name, None))
    }

    fn egress_policy_for(&self, record: &ActorRecord) -> Option<proto::EgressPolicy> {
        let atespace = record.actor.atespace();
        let template = record.template.as_ref();
        self.answer(
            atespace,
            self.files
                .policy_model_for(atespace, record.actor.name(), template),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(patterns: &[&str], ports: Option<proto::Ports>) -> proto::HttpRule {
        proto::HttpRule {
            hostnames: patterns.iter().map(|s| (*s).to_owned()).collect(),
            ports,
            effects: None,
        }
    }

    fn numbers(n: &[i32]) -> Option<proto::Ports> {
        Some(proto::Ports {
            all: None,
            numbers: n.to_vec(),
        })
    }

    fn http(rule: proto::HttpRule) -> proto::EgressRule {
        proto::EgressRule {
            http: Some(rule),
            ..Default::default()
        }
    }

    fn paths(e: UpstreamPolicyError) -> Vec<String> {
        e.problems.into_iter().map(|(p, _)| p).collect()
    }

    #[test]
    fn defaults_and_kinds() {
        let p = proto::EgressPolicy {
            metadata: None,
            rules: vec![
                http(host(&["api.example.com"], None)),
                proto::EgressRule {
                    https: Some(proto::HttpsRule {
                        hostnames: vec!["*.example.com".into()],
                        ports: None,
                        effects: None,
                    }),
                    ..Default::default()
                },
                proto::EgressRule {
                    tls_passthrough: Some(proto::TlsPassthroughRule {
                        hostnames: vec!["*".into()],
                        ports: Some(proto::Ports {
                            all: Some(proto::AllPorts {}),
                            numbers: vec![],
                        }),
                    }),
                    ..Default::default()
                },
            ],
        };
        let m = from_proto(&p).unwrap();
        assert_eq!(&*m.name, "default");
        assert_eq!(m.mode, Mode::Enforce);
        assert_eq!(m.rules[0].spec.ports(), &Ports::Numbers(vec![80]));
        assert_eq!(m.rules[1].spec.ports(), &Ports::Numbers(vec![443]));
        assert_eq!(m.rules[2].spec.ports(), &Ports::All);
        // Round trip through the simulator's form keeps every rule.
        let back = to_proto(&m).unwrap();
        assert_eq!(from_proto(&back).unwrap().rules, m.rules);
    }

    #[test]
    fn upstream_limits_are_enforced_with_paths() {
        let mut too_many_ports: Vec<i32> = (1..=17).collect();
        too_many_ports[16] = 1;
        let p = proto::EgressPolicy {
            metadata: None,
            rules: vec![
                proto::EgressRule::default(),
                http(host(&["API.example.com", "*.*.example.com"], None)),
                http(host(&["ok.example.com"], numbers(&[0, 70000, 80, 80]))),
                proto::EgressRule {
                    tls_passthrough: Some(proto::TlsPassthroughRule {
                        hostnames: vec!["tls.example.com".into()],
                        ports: None,
                    }),
                    ..Default::default()
                },
                http(host(&["p.example.com"], numbers(&too_many_ports))),
                http(host(
                    &["both.example.com"],
                    Some(proto::Ports {
                        all: Some(proto::AllPorts {}),
                        numbers: vec![80],
                    }),
                )),
                proto::EgressRule {
                    http: Some(host(&["two.example.com"], None)),
                    https: Some(proto::HttpsRule::default()),
                    ..Default::default()
                },
            ],
        };
        assert_eq!(
            paths(from_proto(&p).unwrap_err()),
            [
                "rules[0]",
                "rules[1].http.hostnames[0]",
                "rules[1].http.hostnames[1]",
                "rules[2].http.ports.numbers[0]",
                "rules[2].http.ports.numbers[1]",
                "rules[2].http.ports.numbers[3]",
                "rules[3].tls_passthrough.ports",
                "rules[4].http.ports.numbers",
                "rules[4].http.ports.numbers[16]",
                "rules[5].http.ports",
                "rules[6]",
            ]
        );
        let many = proto::EgressPolicy {
            metadata: None,
            rules: (0..257)
                .map(|i| http(host(&[&format!("h{i}.example.com")], None)))
                .collect(),
        };
        assert_eq!(paths(from_proto(&many).unwrap_err()), ["rules"]);
    }

    #[test]
    fn effects_are_checked() {
        let header = |h: &str, uri: &str, jwt: Option<i64>| proto::CredentialHeader {
            header: h.into(),
            prefix: "Bearer ".into(),
            credential_uri: uri.into(),
            actor_jwt: jwt.map(|s| proto::ActorJwtSource {
                audiences: vec!["aud".into()],
                expiration_seconds: s,
            }),
        };
        let mut rule = host(&["api.example.com"], None);
        rule.effects = Some(proto::HttpRuleEffects {
            replace_headers: vec![
                header("authorization", "ate-secret://k8s/default/token", None),
                header("Authorization", "ate-secret://k8s/default/other", None),
                header("x-token", "", Some(60)),
                header("x-both", "ate-secret://k8s/a/b", Some(600)),
                header("x-bad-uri", "https://example.com/secret", None),
                header("x-jwt", "", Some(600)),
            ],
        });
        let p = proto::EgressPolicy {
            metadata: None,
            rules: vec![http(rule.clone())],
        };
        assert_eq!(
            paths(from_proto(&p).unwrap_err()),
            [
                "rules[0].http.effects.replace_headers[1].header",
                "rules[0].http.effects.replace_headers[2].actor_jwt.expiration_seconds",
                "rules[0].http.effects.replace_headers[3]",
                "rules[0].http.effects.replace_headers[4].credential_uri",
            ]
        );
        rule.effects = Some(proto::HttpRuleEffects {
            replace_headers: vec![
                header("authorization", "ate-secret://k8s/default/token", None),
                header("x-jwt", "", Some(600)),
            ],
        });
        let ok = from_proto(&proto::EgressPolicy {
            metadata: None,
            rules: vec![http(rule)],
        })
        .unwrap();
        let RuleSpec::Http(h) = &ok.rules[0].spec else {
            panic!("http rule expected");
        };
        assert_eq!(h.effects.len(), 2);
        assert_eq!(
            h.effects[1].source,
            CredentialSource::ActorJwt {
                audiences: vec!["aud".into()],
                expiration_seconds: 600
            }
        );
    }

    #[test]
    fn to_proto_keeps_only_what_upstream_can_express() {
        let pattern = |s: &str| HostPattern::parse(s).unwrap();
        let policy = Policy {
            name: "files-policy".into(),
            mode: Mode::Audit,
            rules: vec![
                Rule {
                    spec: RuleSpec::Tcp(super::super::model::TcpRule {
                        cidrs: vec!["10.0.0.0/8".parse().unwrap()],
                        ports: Ports::All,
                    }),
                    mode: None,
                },
                Rule {
                    spec: RuleSpec::Http(HostRule {
                        hostnames: vec![pattern("api.example.com")],
                        ports: Ports::Numbers(vec![80]),
                        methods: vec![http::Method::GET],
                        ..HostRule::default()
                    }),
                    mode: None,
                },
                Rule {
                    spec: RuleSpec::Http(HostRule {
                        hostnames: vec![pattern("*.example.com")],
                        ports: Ports::Numbers(vec![8080]),
                        allow_private: true,
                        ..HostRule::default()
                    }),
                    mode: Some(Mode::Enforce),
                },
                Rule {
                    spec: RuleSpec::TlsPassthrough(HostRule {
                        hostnames: vec![pattern("*")],
                        ports: Ports::All,
                        ..HostRule::default()
                    }),
                    mode: None,
                },
            ],
        };
        let p = to_proto(&policy).unwrap();
        assert_eq!(p.metadata.as_ref().unwrap().name, "default");
        assert_eq!(p.rules.len(), 2);
        assert_eq!(
            p.rules[0].http.as_ref().unwrap().hostnames,
            ["*.example.com"]
        );
        assert_eq!(
            p.rules[1].tls_passthrough.as_ref().unwrap().ports,
            Some(proto::Ports {
                all: Some(proto::AllPorts {}),
                numbers: vec![]
            })
        );
        let only_tcp = Policy {
            rules: policy.rules[..1].to_vec(),
            ..policy
        };
        assert_eq!(to_proto(&only_tcp), None);
    }

    #[test]
    fn the_simulator_serves_file_policies_by_actor_and_template() {
        use routing_core::ActorRef;
        use routing_core::directory::TemplateRef;
        use routing_core::proto::ActorState;

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policies.yaml");
        std::fs::write(
            &path,
            r#"
policies:
  - name: web-only
    selector: {actor: team-a/web}
    rules:
      - http: {hostnames: [api.example.com], methods: [GET]}
      - tls_passthrough: {hostnames: ["*.example.com"], ports: [443]}
      - tcp: {cidrs: [10.0.0.0/8], ports: all}
  - name: agents
    selector: {template: templates/agent}
    rules:
      - https: {hostnames: [llm.example.com]}
  - name: tcp-only
    selector: {actor: team-a/db}
    rules:
      - tcp: {cidrs: [10.0.0.0/8], ports: [5432]}
"#,
        )
        .unwrap();
        let files = FilesSource::load(vec![path]).unwrap();
        let sim = FilesEgressPolicies::new(files);
        let web = sim
            .egress_policy("team-a", "web")
            .expect("web has a policy");
        let meta = web.metadata.as_ref().unwrap();
        assert_eq!(
            (meta.atespace.as_str(), meta.name.as_str()),
            ("team-a", "default")
        );
        assert_eq!(web.rules.len(), 1, "restricted http and tcp rules left out");
        assert!(web.rules[0].tls_passthrough.is_some());
        assert_eq!(
            sim.egress_policy("team-a", "db"),
            None,
            "nothing representable"
        );
        assert_eq!(sim.egress_policy("team-b", "x"), None, "no policy");
        let record = ActorRecord {
            actor: ActorRef::new("team-b", "x").unwrap(),
            uid: "u".into(),
            template: Some(TemplateRef {
                namespace: "templates".into(),
                name: "agent".into(),
            }),
            state: ActorState::Running,
            worker: None,
        };
        let agent = sim
            .egress_policy_for(&record)
            .expect("selected by template");
        assert_eq!(agent.metadata.as_ref().unwrap().atespace, "team-b");
        assert_eq!(
            agent.rules[0].https.as_ref().unwrap().hostnames,
            ["llm.example.com"]
        );
    }
}
