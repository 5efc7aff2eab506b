//! The compiled matcher (DESIGN §7.2): a validated [`model::Policy`] turned into hash maps and
//! prefix tries so that a decision never scans the rules — a few hash lookups for hostname
//! rules (exact name, one-label wildcard suffix, `*`), a longest-prefix walk for `tcp` rules.
//!
//! Precedence, exactly one rule decides:
//! * hostname rules (`http` for cleartext requests; `https` and `tls_passthrough` share SNI
//!   matching): exact name beats one-label wildcard beats `*`; then an explicit port beats all
//!   ports; then policy order;
//! * `tcp` rules (original destination): longer prefix, then explicit port, then order;
//! * a hostname rule matching the classified name beats any `tcp` rule; without a name (opaque
//!   bytes, a ClientHello without SNI, an unusable name) only `tcp` rules apply.
//!
//! The deciding rule's mode (or, for default deny, the policy's) turns a denial into
//! [`Verdict::Audit`] with a [`Dial`], so audited traffic still goes through the guard.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use prefix_trie::PrefixMap;

use super::hostname::{self, AuthorityRef, HostPattern};
use super::model::{self, FieldProblem, Mode, Ports, RuleSpec};
use crate::decision::{Decision, Dial, Query, Reason, RuleKind, RuleRef, Traffic, Verdict};

/// A policy that failed validation; every problem with its field path (`rules[1].http.…`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct CompileError {
    /// The policy's name.
    pub policy: Arc<str>,
    /// `(field path, problem)` pairs.
    pub problems: Vec<FieldProblem>,
}

impl fmt::Display for CompileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "policy {:?} is invalid: ", self.policy)?;
        for (i, (path, problem)) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{path}: {problem}")?;
        }
        Ok(())
    }
}

/// Rule index within the policy (the order written).
type Idx = u32;

/// Which rule decides for one pattern (or CIDR), by dialed port.
#[derive(Debug, Default, Clone)]
struct PortSet {
    /// `(port, rule)` sorted by port; the first rule in policy order per port.
    explicit: Vec<(u16, Idx)>,
    /// The first rule in policy order that covers all ports.
    all: Option<Idx>,
}

impl PortSet {
    fn add(&mut self, ports: &Ports, idx: Idx) {
        match ports {
            Ports::All => {
                self.all.get_or_insert(idx);
            }
            Ports::Numbers(numbers) => {
                for &p in numbers {
                    match self.explicit.binary_search_by_key(&p, |e| e.0) {
                        Ok(_) => {} // an earlier rule keeps the port (order)
                        Err(at) => self.explicit.insert(at, (p, idx)),
                    }
                }
            }
        }
    }

    /// The deciding rule for `port`: explicit beats all ports.
    #[inline]
    fn get(&self, port: u16) -> Option<Idx> {
        match self.explicit.binary_search_by_key(&port, |e| e.0) {
            Ok(i) => Some(self.explicit[i].1),
            Err(_) => self.all,
        }
    }
}

/// Hostname patterns of one family (cleartext `http`, or SNI: `https` + `tls_passthrough`).
#[derive(Debug, Default)]
struct HostMatcher {
    /// Exact names; the key is handed out as the dialed name (no allocation).
    exact: HashMap<Arc<str>, PortSet>,
    /// One-label wildcards by suffix (`*.example.com` → `example.com`).
    wildcard: HashMap<Box<str>, PortSet>,
    /// `*`.
    any: PortSet,
}

/// A hostname rule's match: the rule and, for exact patterns, the shared name.
struct HostMatch<'m> {
    idx: Idx,
    exact_name: Option<&'m Arc<str>>,
}

impl HostMatcher {
    fn add(&mut self, pattern: &HostPattern, ports: &Ports, idx: Idx) {
        match pattern {
            HostPattern::Exact(n) => self
                .exact
                .entry(Arc::from(n.as_str()))
                .or_default()
                .add(ports, idx),
            HostPattern::Wildcard(s) => self
                .wildcard
                .entry(Box::from(s.as_str()))
                .or_default()
                .add(ports, idx),
            HostPattern::Any => self.any.add(ports, idx),
        }
    }

    fn is_empty(&self) -> bool {
        self.exact.is_empty()
            && self.wildcard.is_empty()
            && self.any.explicit.is_empty()
            && self.any.all.is_none()
    }

    /// Exact name beats one-label wildcard beats `*`; each by explicit port, then all ports.
    #[inline]
    fn lookup(&self, authority: &AuthorityRef<'_>, port: u16) -> Option<HostMatch<'_>> {
        if let AuthorityRef::Name(name) = authority {
            let name: &str = name;
            if let Some((key, set)) = self.exact.get_key_value(name)
                && let Some(idx) = set.get(port)
            {
                return Some(HostMatch {
                    idx,
                    exact_name: Some(key),
                });
            }
            if let Some(suffix) = hostname::wildcard_suffix(name)
                && let Some(idx) = self.wildcard.get(suffix).and_then(|s| s.get(port))
            {
                return Some(HostMatch {
                    idx,
                    exact_name: None,
                });
            }
        }
        self.any.get(port).map(|idx| HostMatch {
            idx,
            exact_name: None,
        })
    }
}

/// `tcp` rules by CIDR.
#[derive(Debug, Default)]
struct TcpMatcher {
    v4: PrefixMap<Ipv4Net, PortSet>,
    v6: PrefixMap<Ipv6Net, PortSet>,
}

impl TcpMatcher {
    fn add(&mut self, cidr: IpNet, ports: &Ports, idx: Idx) {
        match cidr {
            IpNet::V4(n) => self.v4.entry(n).or_default().add(ports, idx),
            IpNet::V6(n) => self.v6.entry(n).or_default().add(ports, idx),
        }
    }

    /// The longest prefix containing `ip` that has a rule for `port` (explicit beats all ports
    /// on that prefix); the prefix is returned for the guard.
    #[inline]
    fn lookup(&self, ip: IpAddr, port: u16) -> Option<(Idx, IpNet)> {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        let mut best = None;
        // `cover` yields covering prefixes shortest first: the last hit is the longest.
        match ip {
            IpAddr::V4(a) => {
                for (net, set) in self.v4.cover(&Ipv4Net::from(a)) {
                    if let Some(idx) = set.get(port) {
                        best = Some((idx, IpNet::V4(net)));
                    }
                }
            }
            IpAddr::V6(a) => {
                for (net, set) in self.v6.cover(&Ipv6Net::from(a)) {
                    if let Some(idx) = set.get(port) {
                        best = Some((idx, IpNet::V6(net)));
                    }
                }
            }
        }
        best
    }
}

/// What the hot path needs about one rule.
#[derive(Debug)]
struct RuleInfo {
    kind: RuleKind,
    audit: bool,
    allow_private: bool,
    /// Allowed methods (`http` only; empty = any).
    methods: Box<[http::Method]>,
    /// Allowed path prefixes without a trailing `/` (`/` stays `/`); empty = any.
    prefixes: Box<[Box<[u8]>]>,
    /// Credential headers of the requests it allows (`None`: none).
    effects: Option<Arc<[model::CredentialHeader]>>,
}

/// A compiled policy: the matcher plus the model it came from. Immutable; share it in an
/// [`Arc`].
#[derive(Debug)]
pub struct CompiledPolicy {
    model: model::Policy,
    rules: Vec<RuleInfo>,
    http: HostMatcher,
    sni: HostMatcher,
    /// `https` rules alone: the authorities of intercepted requests.
    https: HostMatcher,
    tcp: TcpMatcher,
    policy_audit: bool,
    /// Set for [`CompiledPolicy::deny_all`]: every decision is this denial.
    deny_all: Option<Reason>,
}

impl CompiledPolicy {
    /// Validates ([`model::Policy::validate`]) and compiles `policy`.
    ///
    /// # Errors
    /// [`CompileError`] with every validation problem, or when the policy has more than
    /// `u32::MAX` rules.
    pub fn compile(policy: &model::Policy) -> Result<CompiledPolicy, CompileError> {
        let fail = |problems| CompileError {
            policy: policy.name.clone(),
            problems,
        };
        policy.validate().map_err(fail)?;
        if Idx::try_from(policy.rules.len()).is_err() {
            return Err(fail(vec![("rules".into(), "too many rules".into())]));
        }
        let mut compiled = CompiledPolicy {
            model: policy.clone(),
            rules: Vec::with_capacity(policy.rules.len()),
            http: HostMatcher::default(),
            sni: HostMatcher::default(),
            https: HostMatcher::default(),
            tcp: TcpMatcher::default(),
            policy_audit: policy.mode == Mode::Audit,
            deny_all: None,
        };
        for (i, rule) in policy.rules.iter().enumerate() {
            let idx = i as Idx;
            let mut info = RuleInfo {
                kind: rule.spec.kind(),
                audit: rule.mode.unwrap_or(policy.mode) == Mode::Audit,
                allow_private: false,
                methods: Box::default(),
                prefixes: Box::default(),
                effects: None,
            };
            match &rule.spec {
                RuleSpec::Http(h) | RuleSpec::Https(h) | RuleSpec::TlsPassthrough(h) => {
                    info.allow_private = h.allow_private;
                    info.effects = (!h.effects.is_empty()).then(|| Arc::from(h.effects.clone()));
                    info.methods = h.methods.clone().into_boxed_slice();
                    info.prefixes = h
                        .path_prefixes
                        .iter()
                        .map(|p| {
                            let p = if p.len() > 1 {
                                p.strip_suffix('/').unwrap_or(p)
                            } else {
                                p
                            };
                            Box::from(p.as_bytes())
                        })
                        .collect();
                    let matcher = if matches!(rule.spec, RuleSpec::Http(_)) {
                        &mut compiled.http
                    } else {
                        &mut compiled.sni
                    };
                    for pattern in &h.hostnames {
                        matcher.add(pattern, &h.ports, idx);
                    }
                    if matches!(rule.spec, RuleSpec::Https(_)) {
                        for pattern in &h.hostnames {
                            compiled.https.add(pattern, &h.ports, idx);
                        }
                    }
                }
                RuleSpec::Tcp(t) => {
                    for cidr in &t.cidrs {
                        compiled.tcp.add(*cidr, &t.ports, idx);
                    }
                }
                // Matched in policy order by `decide_actor` (DESIGN §7.4).
                RuleSpec::Actors(_) => {}
            }
            compiled.rules.push(info);
        }
        Ok(compiled)
    }

    /// A policy named `name` that denies everything with `reason` (e.g. an invalid policy from
    /// the control plane: fail closed, and say why in the audit record).
    pub fn deny_all(name: Arc<str>, reason: Reason) -> CompiledPolicy {
        CompiledPolicy {
            model: model::Policy {
                name,
                mode: Mode::Enforce,
                rules: Vec::new(),
            },
            rules: Vec::new(),
            http: HostMatcher::default(),
            sni: HostMatcher::default(),
            https: HostMatcher::default(),
            tcp: TcpMatcher::default(),
            policy_audit: false,
            deny_all: Some(reason),
        }
    }

    /// The policy's name.
    pub fn name(&self) -> &Arc<str> {
        &self.model.name
    }

    /// The rules as written (index = [`RuleRef::index`]).
    pub fn rules(&self) -> &[model::Rule] {
        &self.model.rules
    }

    /// The policy as written.
    pub fn model(&self) -> &model::Policy {
        &self.model
    }

    /// The policy's mode.
    pub fn mode(&self) -> Mode {
        self.model.mode
    }

    /// Whether the policy has `http` rules (cleartext requests can pass at all).
    pub fn has_http_rules(&self) -> bool {
        !self.http.is_empty()
    }

    /// Decides `query` (DESIGN §7.2 precedence; see the module docs).
    ///
    /// * TLS with SNI: `https`/`tls_passthrough` rules by SNI; a matching `https` rule allows
    ///   (the caller intercepts: the rule's kind is [`RuleKind::Https`]) when `interception`,
    ///   else denies with [`Reason::InterceptionNotConfigured`]; a `tls_passthrough` rule
    ///   allows with [`Dial::Name`] (or [`Dial::Address`] for `*` on an IP-literal SNI). No
    ///   SNI → [`Reason::NoSni`] unless a `tcp` rule allows the destination.
    /// * HTTPS (a request inside an intercepted connection): `https` rules alone by authority
    ///   (its port ignored), then the rule's methods and path prefixes as for HTTP; `tcp` rules
    ///   never decide a request.
    /// * HTTP: `http` rules by authority (its port ignored), then the rule's methods and path
    ///   prefixes (paths normalised: percent-decoding, `\` as `/`, `.`/`..`/`//` resolved;
    ///   a prefix matches on a segment boundary).
    /// * Opaque: `tcp` rules only.
    ///
    /// Allocates only when the dialed name is not an exact pattern (wildcard, `*`) or the
    /// authority needs rewriting (uppercase, percent-escapes in the path).
    pub fn decide(&self, query: &Query<'_>) -> Decision {
        if let Some(reason) = self.deny_all {
            return Decision::deny(reason);
        }
        let port = query.dst.port();
        match query.traffic {
            Traffic::Tls { sni: None, .. } => self.decide_tcp(query.dst, Reason::NoSni),
            Traffic::Tls {
                sni: Some(sni),
                interception,
            } => {
                let Ok(authority) = hostname::normalize_authority_ref(sni) else {
                    return self.decide_tcp(query.dst, Reason::InvalidAuthority);
                };
                let Some(m) = self.sni.lookup(&authority, port) else {
                    return self.decide_tcp_named(query.dst, &authority);
                };
                let info = &self.rules[m.idx as usize];
                let dial = self.dial_for(&m, info, &authority, query.dst);
                if info.kind == RuleKind::Https && !interception {
                    self.refuse(
                        Reason::InterceptionNotConfigured,
                        Some(m.idx),
                        info.audit,
                        dial,
                    )
                } else {
                    self.allow(m.idx, dial)
                }
            }
            Traffic::Http {
                authority,
                method,
                path,
            }
            | Traffic::Https {
                authority,
                method,
                path,
            } => {
                let https = matches!(query.traffic, Traffic::Https { .. });
                let Ok(authority) = hostname::normalize_authority_ref(authority) else {
                    if https {
                        return self.refuse_request(None, query.dst);
                    }
                    return self.decide_tcp(query.dst, Reason::InvalidAuthority);
                };
                let matcher = if https { &self.https } else { &self.http };
                let Some(m) = matcher.lookup(&authority, port) else {
                    if https {
                        return self.refuse_request(Some(&authority), query.dst);
                    }
                    return self.decide_tcp_named(query.dst, &authority);
                };
                let info = &self.rules[m.idx as usize];
                let dial = self.dial_for(&m, info, &authority, query.dst);
                if !info.methods.is_empty() && !info.methods.iter().any(|m| m.as_str() == method) {
                    return self.refuse(Reason::MethodNotAllowed, Some(m.idx), info.audit, dial);
                }
                if !info.prefixes.is_empty() && !path_allowed(path, &info.prefixes) {
                    return self.refuse(Reason::PathNotAllowed, Some(m.idx), info.audit, dial);
                }
                self.allow(m.idx, dial)
            }
            Traffic::Opaque => self.decide_tcp(query.dst, Reason::NoMatchingRule),
        }
    }

    /// Actor-to-actor traffic to `target` on `port` (DESIGN §7.4): the first `actors` rule (in
    /// policy order) naming it allows with `dial` ([`Dial::Actor`]); without one, default deny
    /// (in an audit-mode policy the would-be denial passes with `dial`). Hostname rules naming
    /// the actor host are the caller's second chance ([`crate::actor_hosts`]).
    pub fn decide_actor(&self, target: &routing_core::ActorRef, port: u16, dial: Dial) -> Decision {
        if let Some(reason) = self.deny_all {
            return Decision::deny(reason);
        }
        let found = self.model.rules.iter().position(|r| match &r.spec {
            RuleSpec::Actors(a) => a.matches(target.atespace(), target.name(), port),
            _ => false,
        });
        match found {
            Some(i) => self.allow(i as Idx, dial),
            None => self.refuse(Reason::NoMatchingRule, None, self.policy_audit, dial),
        }
    }

    /// No hostname rule for a usable name: `tcp` rules, else default deny (audit dials the
    /// name, so the guard and private-range checks still apply).
    fn decide_tcp_named(&self, dst: SocketAddr, authority: &AuthorityRef<'_>) -> Decision {
        if let Some((idx, cidr)) = self.tcp.lookup(dst.ip(), dst.port()) {
            return self.allow(idx, tcp_dial(dst, cidr));
        }
        let dial = match authority {
            AuthorityRef::Name(n) => Dial::Name {
                host: Arc::from(n.as_ref()),
                port: dst.port(),
                allow_private: false,
            },
            AuthorityRef::Ip(_) => Dial::Address {
                addr: dst,
                tcp_rule: None,
            },
        };
        self.refuse(Reason::NoMatchingRule, None, self.policy_audit, dial)
    }

    /// An intercepted request no `https` rule allows (`None`: its authority is invalid): default
    /// deny, or in an audit-mode policy the would-be denial with a dial by name as for
    /// cleartext; `tcp` rules never decide a request.
    fn refuse_request(&self, authority: Option<&AuthorityRef<'_>>, dst: SocketAddr) -> Decision {
        let dial = match authority {
            Some(AuthorityRef::Name(n)) => Dial::Name {
                host: Arc::from(n.as_ref()),
                port: dst.port(),
                allow_private: false,
            },
            Some(AuthorityRef::Ip(_)) => Dial::Address {
                addr: dst,
                tcp_rule: None,
            },
            // Nothing usable to dial or verify a certificate against: denied in audit mode too.
            None => return Decision::deny(Reason::InvalidAuthority),
        };
        self.refuse(Reason::NoMatchingRule, None, self.policy_audit, dial)
    }

    /// Only `tcp` rules can decide; `reason` when none matches.
    fn decide_tcp(&self, dst: SocketAddr, reason: Reason) -> Decision {
        if let Some((idx, cidr)) = self.tcp.lookup(dst.ip(), dst.port()) {
            return self.allow(idx, tcp_dial(dst, cidr));
        }
        let dial = Dial::Address {
            addr: dst,
            tcp_rule: None,
        };
        self.refuse(reason, None, self.policy_audit, dial)
    }

    /// Where a hostname rule's traffic goes: the authorised name, or the original destination
    /// for `*` on an IP literal.
    fn dial_for(
        &self,
        m: &HostMatch<'_>,
        info: &RuleInfo,
        authority: &AuthorityRef<'_>,
        dst: SocketAddr,
    ) -> Dial {
        let host = match (m.exact_name, authority) {
            (Some(shared), _) => shared.clone(),
            (None, AuthorityRef::Name(n)) => Arc::from(n.as_ref()),
            (None, AuthorityRef::Ip(_)) => {
                return Dial::Address {
                    addr: dst,
                    tcp_rule: None,
                };
            }
        };
        Dial::Name {
            host,
            port: dst.port(),
            allow_private: info.allow_private,
        }
    }

    fn rule_ref(&self, idx: Idx) -> RuleRef {
        RuleRef {
            policy: self.model.name.clone(),
            index: idx as usize,
            kind: self.rules[idx as usize].kind,
        }
    }

    fn allow(&self, idx: Idx, dial: Dial) -> Decision {
        Decision {
            verdict: Verdict::Allow,
            reason: Reason::Allowed,
            rule: Some(self.rule_ref(idx)),
            dial: Some(dial),
            effects: self.rules[idx as usize].effects.clone(),
        }
    }

    /// A denial, or in audit mode the would-be denial recorded as [`Verdict::Audit`] with `dial`.
    fn refuse(&self, reason: Reason, idx: Option<Idx>, audit: bool, dial: Dial) -> Decision {
        Decision {
            verdict: if audit { Verdict::Audit } else { Verdict::Deny },
            reason,
            rule: idx.map(|i| self.rule_ref(i)),
            dial: audit.then_some(dial),
            // A would-be denial carries no credentials: they go only where a rule allows.
            effects: None,
        }
    }
}

fn tcp_dial(dst: SocketAddr, cidr: IpNet) -> Dial {
    Dial::Address {
        addr: dst,
        tcp_rule: Some(cidr),
    }
}

/// Whether `path` (as sent, without query) lies under one of `prefixes` once normalised. A path
/// that does not start with `/` matches nothing.
fn path_allowed(path: &str, prefixes: &[Box<[u8]>]) -> bool {
    let Some(normal) = normalize_path(path) else {
        return false;
    };
    prefixes.iter().any(|p| under_prefix(&normal, p))
}

/// `path` is `prefix` or continues it after a `/` (segment boundary).
fn under_prefix(path: &[u8], prefix: &[u8]) -> bool {
    if prefix == b"/" {
        return true;
    }
    path.starts_with(prefix) && matches!(path.get(prefix.len()), None | Some(b'/'))
}

/// The path as a server that decodes percent-escapes and resolves dot-segments would see it:
/// percent-escapes decoded once, `\` read as `/`, empty and `.` segments dropped, `..` removing
/// the previous segment (never above the root). Borrows when nothing needs rewriting; `None`
/// when the path does not start with `/`.
pub fn normalize_path(path: &str) -> Option<Cow<'_, [u8]>> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return None;
    }
    if !needs_rewrite(bytes) {
        return Some(Cow::Borrowed(bytes));
    }
    let decoded: Vec<u8> = percent_decode(bytes);
    let mut out: Vec<u8> = Vec::with_capacity(decoded.len());
    for seg in decoded.split(|&b| b == b'/') {
        // A segment's path parameters (`..;x`, RFC 3986 §3.3 sub-delims, honoured by servlet
        // containers) do not hide a dot-segment: `/v1/..;/admin` is `/admin`. Other segments
        // keep their parameters, so `/v1;x` is not under `/v1` (ambiguous → no match).
        let base = seg.split(|&b| b == b';').next().unwrap_or(seg);
        let seg = if base == b"." || base == b".." {
            base
        } else {
            seg
        };
        match seg {
            b"" | b"." => {}
            b".." => {
                let cut = out.iter().rposition(|&b| b == b'/').unwrap_or(0);
                out.truncate(cut);
            }
            s => {
                out.push(b'/');
                out.extend_from_slice(s);
            }
        }
    }
    let trailing = matches!(decoded.last(), Some(b'/'))
        || decoded.ends_with(b"/.")
        || decoded.ends_with(b"/..");
    if out.is_empty() || trailing {
        out.push(b'/');
    }
    Some(Cow::Owned(out))
}

/// Whether the path has percent-escapes, backslashes, path parameters (`;`), `//`, or `.`/`..`
/// segments.
fn needs_rewrite(bytes: &[u8]) -> bool {
    if bytes.iter().any(|&b| b == b'%' || b == b'\\' || b == b';') {
        return true;
    }
    has_bad_segment(&bytes[1..])
}

/// A `.`/`..` segment or an empty segment that is not the trailing one.
fn has_bad_segment(rest: &[u8]) -> bool {
    let segs: usize = rest.iter().filter(|&&b| b == b'/').count() + 1;
    rest.split(|&b| b == b'/')
        .enumerate()
        .any(|(i, seg)| seg == b"." || seg == b".." || (seg.is_empty() && i + 1 < segs))
}

/// Decodes `%XX` escapes once and reads `\` as `/`; malformed escapes stay as written.
fn percent_decode(bytes: &[u8]) -> Vec<u8> {
    let hex = |b: u8| match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    };
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%'
            && let (Some(h), Some(l)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            )
        {
            let d = (h << 4) | l;
            out.push(if d == b'\\' { b'/' } else { d });
            i += 3;
            continue;
        }
        out.push(if b == b'\\' { b'/' } else { b });
        i += 1;
    }
    out
}
