//! Policies as written (DESIGN §7.2): the common form both sources produce — `files` from YAML,
//! `upstream` from `EgressPolicy` protos — before [`super::compile`] turns one into a matcher.
//! Plain data; [`Policy::validate`] checks what the grammar alone cannot (duplicates, empty
//! lists, misplaced options) and reports every problem with its field path.

use std::collections::HashMap;
use std::sync::Arc;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::hostname::HostPattern;
use crate::decision::RuleKind;

/// Whether a policy's (or a rule's) decisions are enforced or only recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Denials refuse the traffic.
    #[default]
    Enforce,
    /// Would-be denials are recorded with verdict `audit` and the traffic passes (extension).
    Audit,
}

impl Mode {
    /// `enforce` or `audit`.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Audit => "audit",
        }
    }
}

/// One policy: a name, a mode and its rules in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// The policy's name (`default` for upstream policies; the file policy's `name`).
    pub name: Arc<str>,
    /// The policy's mode; a rule's own `mode` overrides it for that rule.
    pub mode: Mode,
    /// The rules, in the order written (order is the last precedence criterion).
    pub rules: Vec<Rule>,
}

/// One rule: what it allows and, optionally, its own mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// What the rule matches.
    pub spec: RuleSpec,
    /// The rule's own mode (`None`: the policy's).
    pub mode: Option<Mode>,
}

/// What a rule matches, by kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuleSpec {
    /// Cleartext HTTP by request authority (upstream `HTTPRule`; ports default 80).
    Http(HostRule),
    /// Intercepted HTTPS by SNI (upstream `HTTPSRule`; ports default 443).
    Https(HostRule),
    /// TLS passed through by SNI (upstream `TLSPassthroughRule`; ports required).
    TlsPassthrough(HostRule),
    /// Original destination by CIDR and port (extension).
    Tcp(TcpRule),
    /// Actor-to-actor targets (extension, DESIGN §7.4).
    Actors(ActorsRule),
}

impl RuleSpec {
    /// The rule's kind.
    pub fn kind(&self) -> RuleKind {
        match self {
            RuleSpec::Http(_) => RuleKind::Http,
            RuleSpec::Https(_) => RuleKind::Https,
            RuleSpec::TlsPassthrough(_) => RuleKind::TlsPassthrough,
            RuleSpec::Tcp(_) => RuleKind::Tcp,
            RuleSpec::Actors(_) => RuleKind::Actors,
        }
    }

    /// The ports the rule applies to.
    pub fn ports(&self) -> &Ports {
        match self {
            RuleSpec::Http(h) | RuleSpec::Https(h) | RuleSpec::TlsPassthrough(h) => &h.ports,
            RuleSpec::Tcp(t) => &t.ports,
            RuleSpec::Actors(a) => &a.ports,
        }
    }
}

/// A hostname rule (`http`, `https`, `tls_passthrough`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HostRule {
    /// Hostname patterns (at least one).
    pub hostnames: Vec<HostPattern>,
    /// The dialed ports the rule applies to.
    pub ports: Ports,
    /// Allowed methods on `http` rules (empty = any method; extension).
    pub methods: Vec<http::Method>,
    /// Allowed path prefixes on `http` rules, matched on segment boundaries after
    /// normalisation (empty = any path; extension). Written normalised, starting with `/`.
    pub path_prefixes: Vec<String>,
    /// Whether the rule's names may resolve into the configured private ranges (extension;
    /// the guarded ranges stay unreachable regardless).
    pub allow_private: bool,
    /// Credential header replacements (upstream `HttpRuleEffects`, DESIGN §7.3), applied to
    /// the requests this rule allows (`crate::credentials`).
    pub effects: Vec<CredentialHeader>,
}

/// The ports a rule applies to.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Ports {
    /// Every port.
    #[default]
    All,
    /// These ports (1..=65535, no repeats).
    Numbers(Vec<u16>),
}

impl Ports {
    /// Whether `port` is covered.
    pub fn contains(&self, port: u16) -> bool {
        match self {
            Ports::All => true,
            Ports::Numbers(n) => n.contains(&port),
        }
    }
}

/// A `tcp` rule (extension): the original destination's address and port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpRule {
    /// Destination networks (canonical: no host bits set).
    pub cidrs: Vec<IpNet>,
    /// The destination ports.
    pub ports: Ports,
}

/// An `actors` rule (extension, DESIGN §7.4): actor-to-actor targets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActorsRule {
    /// Targets `<atespace>/<name>`; each segment may be or contain `*` globs.
    pub targets: Vec<String>,
    /// The ports.
    pub ports: Ports,
}

impl ActorsRule {
    /// Whether the rule names the actor `atespace/name` on `port`.
    pub fn matches(&self, atespace: &str, name: &str, port: u16) -> bool {
        self.ports.contains(port)
            && self.targets.iter().any(|t| match t.split_once('/') {
                Some((ns, n)) => glob(ns, atespace) && glob(n, name),
                None => false,
            })
    }
}

/// A `*` glob over one segment (`*` matches any run of characters, possibly empty).
fn glob(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

/// One credential header replacement (upstream `CredentialHeader`, DESIGN §7.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialHeader {
    /// The header replaced (only when the request carries it).
    pub header: String,
    /// Prepended verbatim to the secret (`Bearer `).
    pub prefix: String,
    /// Where the secret comes from.
    pub source: CredentialSource,
    /// Inject also into a request the PEP sends upstream in cleartext (extension; files only:
    /// upstream policies cannot opt in). Off: such a request is refused
    /// (`credential_needs_tls`).
    pub allow_cleartext: bool,
}

/// Headers a credential can never replace (DESIGN §7.3): `Host`, hop-by-hop and framing
/// headers (pseudo-headers are not header names at all), and the identity and routing headers
/// the PEP sets itself when it forwards to ingress (`Via`, `x-forwarded-client-cert`; every
/// `ate-*` header is refused too), so no secret can become a caller's identity.
pub const FORBIDDEN_CREDENTIAL_HEADERS: [&str; 13] = [
    "via",
    "x-forwarded-client-cert",
    "host",
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
];

/// Why `header` cannot be a credential target, or `None` when it can.
pub fn credential_target_problem(header: &str) -> Option<&'static str> {
    if header.starts_with(':') {
        return Some("a pseudo-header cannot be replaced");
    }
    if http::HeaderName::from_bytes(header.as_bytes()).is_err() {
        return Some("is not a header name");
    }
    if header
        .get(..4)
        .is_some_and(|p| p.eq_ignore_ascii_case("ate-"))
    {
        return Some("ate-* headers name actors and are set by the PEP and ingress alone");
    }
    FORBIDDEN_CREDENTIAL_HEADERS
        .iter()
        .any(|f| f.eq_ignore_ascii_case(header))
        .then_some("Host, hop-by-hop and framing headers cannot be replaced")
}

/// Where a credential comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialSource {
    /// A credential provider URI (`ate-secret://<class>/<name>/<tail>`).
    Uri(String),
    /// A freshly minted actor JWT.
    ActorJwt {
        /// The token's audiences.
        audiences: Vec<String>,
        /// Lifetime in seconds (300..=3600).
        expiration_seconds: i64,
    },
}

/// One validation problem: the field path (`rules[2].http.hostnames[1]`) and what is wrong.
pub type FieldProblem = (String, String);

impl Policy {
    /// Checks the policy beyond the grammar: a non-empty name; each hostname rule with at least
    /// one hostname, no pattern twice; explicit port lists non-empty and without repeats or 0;
    /// methods and path prefixes only on `http` rules; path prefixes normalised and starting
    /// with `/`; effects only on `http`/`https` rules; `tcp` rules with canonical CIDRs; `actors`
    /// targets of the form `<atespace>/<name>`; and the same pattern on the same port in two
    /// rules that are matched together (`http`; `https` and `tls_passthrough` share SNI; `tcp`).
    ///
    /// # Errors
    /// Every problem found, each with its field path relative to the policy (`rules[0].…`).
    pub fn validate(&self) -> Result<(), Vec<FieldProblem>> {
        let mut problems = Vec::new();
        let mut p = |path: String, problem: &str| problems.push((path, problem.to_owned()));
        if self.name.trim().is_empty() {
            p("name".into(), "must not be empty");
        }
        // (family, pattern, port or None for all) → first rule index.
        let mut seen_host: HashMap<(u8, &HostPattern, Option<u16>), usize> = HashMap::new();
        let mut seen_tcp: HashMap<(IpNet, Option<u16>), usize> = HashMap::new();
        for (i, rule) in self.rules.iter().enumerate() {
            let kind = rule.spec.kind().as_str();
            let base = format!("rules[{i}].{kind}");
            let ports = rule.spec.ports();
            let port_keys: Vec<Option<u16>> = match ports {
                Ports::All => vec![None],
                Ports::Numbers(n) => n.iter().map(|&n| Some(n)).collect(),
            };
            if let Ports::Numbers(numbers) = ports {
                if numbers.is_empty() {
                    p(format!("{base}.ports"), "must list at least one port");
                }
                for (j, &n) in numbers.iter().enumerate() {
                    if n == 0 {
                        p(format!("{base}.ports[{j}]"), "port must be 1..65535");
                    } else if numbers[..j].contains(&n) {
                        p(format!("{base}.ports[{j}]"), &format!("port {n} repeated"));
                    }
                }
            }
            match &rule.spec {
                RuleSpec::Http(h) | RuleSpec::Https(h) | RuleSpec::TlsPassthrough(h) => {
                    let is_http = matches!(rule.spec, RuleSpec::Http(_));
                    let family = u8::from(!is_http);
                    if h.hostnames.is_empty() {
                        p(
                            format!("{base}.hostnames"),
                            "must list at least one hostname",
                        );
                    }
                    for (j, pattern) in h.hostnames.iter().enumerate() {
                        if h.hostnames[..j].contains(pattern) {
                            p(
                                format!("{base}.hostnames[{j}]"),
                                &format!("{pattern} repeated in this rule"),
                            );
                            continue;
                        }
                        for port in port_keys.iter().copied() {
                            if let Some(first) = seen_host.insert((family, pattern, port), i)
                                && first != i
                            {
                                let on =
                                    port.map_or("all ports".to_owned(), |n| format!("port {n}"));
                                p(
                                    format!("{base}.hostnames[{j}]"),
                                    &format!("{pattern} on {on} already in rules[{first}]"),
                                );
                            }
                        }
                    }
                    // Requests are readable on http rules and inside intercepted TLS (https).
                    let passthrough = matches!(rule.spec, RuleSpec::TlsPassthrough(_));
                    if passthrough && !h.methods.is_empty() {
                        p(
                            format!("{base}.methods"),
                            "allowed only on http and https rules",
                        );
                    }
                    if passthrough && !h.path_prefixes.is_empty() {
                        p(
                            format!("{base}.path_prefixes"),
                            "allowed only on http and https rules",
                        );
                    }
                    for (j, m) in h.methods.iter().enumerate() {
                        if h.methods[..j].contains(m) {
                            p(format!("{base}.methods[{j}]"), &format!("{m} repeated"));
                        }
                    }
                    for (j, prefix) in h.path_prefixes.iter().enumerate() {
                        if let Err(e) = check_path_prefix(prefix) {
                            p(format!("{base}.path_prefixes[{j}]"), e);
                        }
                    }
                    if matches!(rule.spec, RuleSpec::TlsPassthrough(_)) && !h.effects.is_empty() {
                        p(
                            format!("{base}.effects"),
                            "not allowed on tls_passthrough rules",
                        );
                    }
                    for (j, e) in h.effects.iter().enumerate() {
                        if e.header.trim().is_empty() {
                            p(format!("{base}.effects[{j}].header"), "must not be empty");
                        } else if let Some(problem) = credential_target_problem(&e.header) {
                            p(format!("{base}.effects[{j}].header"), problem);
                        } else if http::HeaderValue::from_str(&e.prefix).is_err() {
                            p(
                                format!("{base}.effects[{j}].prefix"),
                                "must be printable (a header value)",
                            );
                        } else if h.effects[..j]
                            .iter()
                            .any(|o| o.header.eq_ignore_ascii_case(&e.header))
                        {
                            p(format!("{base}.effects[{j}].header"), "header repeated");
                        }
                    }
                }
                RuleSpec::Tcp(t) => {
                    if t.cidrs.is_empty() {
                        p(format!("{base}.cidrs"), "must list at least one CIDR");
                    }
                    for (j, cidr) in t.cidrs.iter().enumerate() {
                        if cidr.trunc() != *cidr {
                            p(
                                format!("{base}.cidrs[{j}]"),
                                &format!(
                                    "{cidr} has host bits set (did you mean {})",
                                    cidr.trunc()
                                ),
                            );
                            continue;
                        }
                        if t.cidrs[..j].contains(cidr) {
                            p(
                                format!("{base}.cidrs[{j}]"),
                                &format!("{cidr} repeated in this rule"),
                            );
                            continue;
                        }
                        for port in port_keys.iter().copied() {
                            if let Some(first) = seen_tcp.insert((*cidr, port), i)
                                && first != i
                            {
                                let on =
                                    port.map_or("all ports".to_owned(), |n| format!("port {n}"));
                                p(
                                    format!("{base}.cidrs[{j}]"),
                                    &format!("{cidr} on {on} already in rules[{first}]"),
                                );
                            }
                        }
                    }
                }
                RuleSpec::Actors(a) => {
                    if a.targets.is_empty() {
                        p(format!("{base}.targets"), "must list at least one target");
                    }
                    for (j, t) in a.targets.iter().enumerate() {
                        let ok = t.split_once('/').is_some_and(|(ns, n)| {
                            valid_target_segment(ns) && valid_target_segment(n)
                        });
                        if !ok {
                            p(
                                format!("{base}.targets[{j}]"),
                                "must be <atespace>/<name> (segments of a-z, 0-9, '-', '.', '*')",
                            );
                        }
                    }
                }
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }
}

/// A segment of an `actors` target: non-empty, `[a-z0-9-.*]`.
fn valid_target_segment(s: &str) -> bool {
    !s.is_empty()
        && s.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'.' | b'*')
        })
}

/// A path prefix must start with `/`, carry no query, fragment or percent-escapes, and have no
/// empty, `.` or `..` segments (it is compared with normalised request paths).
pub fn check_path_prefix(prefix: &str) -> Result<(), &'static str> {
    if !prefix.starts_with('/') {
        return Err("must start with '/'");
    }
    if prefix.contains(['?', '#']) {
        return Err("must not contain a query or fragment");
    }
    if prefix.contains('%') {
        return Err("must not contain percent-escapes (write the decoded path)");
    }
    let body = prefix.strip_suffix('/').unwrap_or(prefix);
    if body.is_empty() {
        return Ok(());
    }
    for seg in body[1..].split('/') {
        if seg.is_empty() || seg == "." || seg == ".." {
            return Err("must be normalised (no '//', '.' or '..' segments)");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(patterns: &[&str], ports: Ports) -> HostRule {
        HostRule {
            hostnames: patterns
                .iter()
                .map(|p| HostPattern::parse(p).unwrap())
                .collect(),
            ports,
            ..HostRule::default()
        }
    }

    #[test]
    fn duplicates_on_a_port_are_reported_with_paths() {
        let policy = Policy {
            name: "p".into(),
            mode: Mode::Enforce,
            rules: vec![
                Rule {
                    spec: RuleSpec::TlsPassthrough(host(
                        &["a.example.com"],
                        Ports::Numbers(vec![443]),
                    )),
                    mode: None,
                },
                Rule {
                    spec: RuleSpec::Https(host(
                        &["b.example.com", "a.example.com"],
                        Ports::Numbers(vec![443]),
                    )),
                    mode: None,
                },
                // Same name on all ports: not a conflict with the explicit port.
                Rule {
                    spec: RuleSpec::TlsPassthrough(host(&["a.example.com"], Ports::All)),
                    mode: None,
                },
                // http is matched separately from SNI rules.
                Rule {
                    spec: RuleSpec::Http(host(&["a.example.com"], Ports::Numbers(vec![443, 443]))),
                    mode: None,
                },
            ],
        };
        let problems = policy.validate().unwrap_err();
        let paths: Vec<&str> = problems.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            ["rules[1].https.hostnames[1]", "rules[3].http.ports[1]"],
            "{problems:?}"
        );
    }

    #[test]
    fn credential_targets_exclude_host_hop_by_hop_and_framing_headers() {
        for ok in ["authorization", "X-Api-Key", "cookie"] {
            assert_eq!(credential_target_problem(ok), None, "{ok}");
        }
        for bad in [
            ":authority",
            "Host",
            "connection",
            "TE",
            "transfer-encoding",
            "content-length",
            "proxy-authorization",
            "bad header",
            "ate-source-actor",
            "ATE-Target-Actor",
            "ate-egress-assertion",
            "Via",
            "x-forwarded-client-cert",
        ] {
            assert!(credential_target_problem(bad).is_some(), "{bad}");
        }
        let mut rule = host(&["api.example.com"], Ports::All);
        rule.effects = vec![CredentialHeader {
            header: "Host".into(),
            prefix: "Bearer\n".into(),
            source: CredentialSource::Uri("ate-secret://a/b/c".into()),
            allow_cleartext: false,
        }];
        let p = Policy {
            name: "p".into(),
            mode: Mode::Enforce,
            rules: vec![Rule {
                spec: RuleSpec::Https(rule.clone()),
                mode: None,
            }],
        };
        let problems = p.validate().unwrap_err();
        assert_eq!(
            problems[0].0, "rules[0].https.effects[0].header",
            "{problems:?}"
        );
        rule.effects[0].header = "authorization".into();
        let p = Policy {
            rules: vec![Rule {
                spec: RuleSpec::Https(rule),
                mode: None,
            }],
            ..p
        };
        let problems = p.validate().unwrap_err();
        assert_eq!(
            problems[0].0, "rules[0].https.effects[0].prefix",
            "{problems:?}"
        );
    }

    #[test]
    fn tcp_and_actor_rules_are_checked() {
        let policy = Policy {
            name: "p".into(),
            mode: Mode::Audit,
            rules: vec![
                Rule {
                    spec: RuleSpec::Tcp(TcpRule {
                        cidrs: vec!["10.0.0.1/8".parse().unwrap(), "10.0.0.0/8".parse().unwrap()],
                        ports: Ports::All,
                    }),
                    mode: None,
                },
                Rule {
                    spec: RuleSpec::Tcp(TcpRule {
                        cidrs: vec!["10.0.0.0/8".parse().unwrap()],
                        ports: Ports::All,
                    }),
                    mode: None,
                },
                Rule {
                    spec: RuleSpec::Actors(ActorsRule {
                        targets: vec!["team-a/*".into(), "nope".into()],
                        ports: Ports::All,
                    }),
                    mode: None,
                },
            ],
        };
        let problems = policy.validate().unwrap_err();
        let paths: Vec<&str> = problems.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            [
                "rules[0].tcp.cidrs[0]",
                "rules[1].tcp.cidrs[0]",
                "rules[2].actors.targets[1]"
            ],
            "{problems:?}"
        );
    }

    #[test]
    fn actor_globs() {
        let r = ActorsRule {
            targets: vec!["team-*/web-*-v1".into()],
            ports: Ports::Numbers(vec![80]),
        };
        assert!(r.matches("team-a", "web-x-v1", 80));
        assert!(!r.matches("team-a", "web-x-v2", 80));
        assert!(!r.matches("other", "web-x-v1", 80));
        assert!(!r.matches("team-a", "web-x-v1", 81));
        assert!(glob("*", ""));
        assert!(!glob("a*a", "a"));
    }

    #[test]
    fn path_prefixes_must_be_normalised() {
        assert!(check_path_prefix("/").is_ok());
        assert!(check_path_prefix("/v1/items/").is_ok());
        for bad in ["v1", "/v1/../x", "/v1//x", "/./v1", "/v1%2f", "/v1?x"] {
            assert!(check_path_prefix(bad).is_err(), "{bad}");
        }
    }
}
