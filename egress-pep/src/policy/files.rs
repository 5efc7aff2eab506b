//! The `files` policy source (DESIGN §7.2): actorgate's extended YAML format with selectors,
//! compiled once per load, hot-reloaded through [`runtime::reload::Reloader`] (a bad edit keeps
//! the previous set; the error shows in [`ReloadStatus`], the log and the reload metric).
//!
//! ```yaml
//! policies:
//!   - name: web-default
//!     selector: {atespace: team-a}          # or {actor: team-a/web} or {template: team-a/web}
//!     mode: enforce                          # or audit (default enforce)
//!     rules:
//!       - http: {hostnames: [api.example.com], ports: [80], methods: [GET], path_prefixes: [/v1]}
//!       - tls_passthrough: {hostnames: ["*.example.com"], ports: [443]}
//!       - https: {hostnames: [api.example.com]}  # ports default 443
//!       - tcp: {cidrs: [10.0.0.0/8, "2001:db8::/32"], ports: all}
//!         mode: audit                        # per-rule mode
//!       - actors: {targets: ["team-b/*"]}
//! ```
//!
//! `http` ports default to `[80]`, `https` to `[443]`; `tls_passthrough` and `tcp` need ports (a
//! list, or `all`); `actors` default to all ports. Selection: an `actor` selector beats a
//! `template` selector beats an `atespace` selector; two policies with the same selector, or
//! two with the same name, are an error. Every problem is reported with its file and field
//! path (`policies.yaml: policies[2].rules[0].http.hostnames[1]: …`).

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use futures_util::future::BoxFuture;
use ipnet::IpNet;
use parking_lot::Mutex;
use routing_core::directory::TemplateRef;
use runtime::config::{FieldErrors, parse_yaml, read_file};
use runtime::reload::{DEFAULT_DEBOUNCE, ReloadError, ReloadStatus, Reloader, WatchHandle};
use serde::Deserialize;
use serde::de::{self, Deserializer, SeqAccess, Visitor};

use super::compile::CompiledPolicy;
use super::hostname::HostPattern;
use super::model::{
    ActorsRule, CredentialHeader, CredentialSource, HostRule, Mode, Policy, Ports, Rule, RuleSpec,
    TcpRule,
};
use super::{PolicySource, PolicyUnavailable};
use crate::subject::Subject;

/// The reloader's name (logs, `file_reloads_total{source}`).
pub const RELOADER_NAME: &str = "egress_policy_files";

/// One problem in a policy file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileProblem {
    /// The file, as given.
    pub file: PathBuf,
    /// The field path (`policies[2].rules[0].http.hostnames[1]`; empty: the file as a whole).
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for FileProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}: {}", self.file.display(), self.message)
        } else {
            write!(
                f,
                "{}: {}: {}",
                self.file.display(),
                self.path,
                self.message
            )
        }
    }
}

/// Why a set of policy files could not be loaded: every problem found, one per line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct FilesError(pub Vec<FileProblem>);

impl fmt::Display for FilesError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

/// Which actors a file policy applies to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Selector {
    /// One actor (`<atespace>/<name>`): the most specific.
    Actor {
        /// The actor's atespace.
        atespace: String,
        /// The actor's name.
        name: String,
    },
    /// Actors created from one template (`<namespace>/<name>`).
    Template {
        /// The template's namespace.
        namespace: String,
        /// The template's name.
        name: String,
    },
    /// Every actor of an atespace: the least specific.
    Atespace(String),
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Selector::Actor { atespace, name } => write!(f, "actor {atespace}/{name}"),
            Selector::Template { namespace, name } => write!(f, "template {namespace}/{name}"),
            Selector::Atespace(a) => write!(f, "atespace {a}"),
        }
    }
}

/// One loaded file policy.
#[derive(Debug, Clone)]
pub struct LoadedPolicy {
    /// The file it came from.
    pub file: PathBuf,
    /// Its selector.
    pub selector: Selector,
    /// The compiled policy (the model is [`CompiledPolicy::model`]).
    pub compiled: Arc<CompiledPolicy>,
}

/// Two-level map `(a, b) → policy`, looked up without allocating.
type PairIndex = HashMap<String, HashMap<String, usize>>;

/// A validated, compiled set of file policies with its selector indexes.
#[derive(Debug, Default)]
pub struct PolicySet {
    policies: Vec<LoadedPolicy>,
    by_actor: PairIndex,
    by_template: PairIndex,
    by_atespace: HashMap<String, usize>,
}

impl PolicySet {
    /// Reads, validates and compiles `paths` as one set.
    ///
    /// # Errors
    /// [`FilesError`] with every problem of every file (unreadable file, YAML or type error,
    /// invalid rule, repeated name or selector).
    pub fn load(paths: &[PathBuf]) -> Result<PolicySet, FilesError> {
        let mut problems = Vec::new();
        let mut set = PolicySet::default();
        let mut names: HashMap<Arc<str>, (PathBuf, usize)> = HashMap::new();
        for path in paths {
            let text = match read_file(path) {
                Ok(t) => t,
                Err(e) => {
                    problems.push(FileProblem {
                        file: path.clone(),
                        path: String::new(),
                        message: e.to_string(),
                    });
                    continue;
                }
            };
            let (parsed, errs) = parse_file(&text);
            problems.extend(errs.into_iter().map(|e| FileProblem {
                file: path.clone(),
                path: e.path,
                message: e.message,
            }));
            for (i, selector, policy) in parsed {
                let mut problem = |field: &str, message: String| {
                    problems.push(FileProblem {
                        file: path.clone(),
                        path: format!("policies[{i}].{field}"),
                        message,
                    })
                };
                if let Some((f, j)) = names.get(&policy.name) {
                    problem(
                        "name",
                        format!(
                            "{:?} already names {}: policies[{j}]",
                            &*policy.name,
                            f.display()
                        ),
                    );
                    continue;
                }
                if let Some(other) = set.by_selector(&selector) {
                    let other = &set.policies[other];
                    problem(
                        "selector",
                        format!(
                            "{selector} already selected by policy {:?} ({}): two equally specific policies",
                            &**other.compiled.name(),
                            other.file.display()
                        ),
                    );
                    continue;
                }
                let compiled = match CompiledPolicy::compile(&policy) {
                    Ok(c) => c,
                    Err(e) => {
                        for (field, message) in e.problems {
                            problem(&field, message);
                        }
                        continue;
                    }
                };
                names.insert(policy.name.clone(), (path.clone(), i));
                let at = set.policies.len();
                match &selector {
                    Selector::Actor { atespace, name } => {
                        set.by_actor
                            .entry(atespace.clone())
                            .or_default()
                            .insert(name.clone(), at);
                    }
                    Selector::Template { namespace, name } => {
                        set.by_template
                            .entry(namespace.clone())
                            .or_default()
                            .insert(name.clone(), at);
                    }
                    Selector::Atespace(a) => {
                        set.by_atespace.insert(a.clone(), at);
                    }
                }
                set.policies.push(LoadedPolicy {
                    file: path.clone(),
                    selector,
                    compiled: Arc::new(compiled),
                });
            }
        }
        if problems.is_empty() {
            Ok(set)
        } else {
            Err(FilesError(problems))
        }
    }

    fn by_selector(&self, selector: &Selector) -> Option<usize> {
        match selector {
            Selector::Actor { atespace, name } => pair(&self.by_actor, atespace, name),
            Selector::Template { namespace, name } => pair(&self.by_template, namespace, name),
            Selector::Atespace(a) => self.by_atespace.get(a).copied(),
        }
    }

    /// The policy for an actor: its `actor` selector, else its template's, else its
    /// atespace's; `None` when nothing selects it (deny).
    pub fn select(
        &self,
        atespace: &str,
        name: &str,
        template: Option<&TemplateRef>,
    ) -> Option<&LoadedPolicy> {
        pair(&self.by_actor, atespace, name)
            .or_else(|| template.and_then(|t| pair(&self.by_template, &t.namespace, &t.name)))
            .or_else(|| self.by_atespace.get(atespace).copied())
            .map(|i| &self.policies[i])
    }

    /// Every policy, in file order.
    pub fn policies(&self) -> &[LoadedPolicy] {
        &self.policies
    }

    /// How many policies the set holds.
    pub fn len(&self) -> usize {
        self.policies.len()
    }

    /// Whether the set holds no policy.
    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }
}

fn pair(index: &PairIndex, a: &str, b: &str) -> Option<usize> {
    index.get(a).and_then(|m| m.get(b)).copied()
}

/// The `files` policy source: the current [`PolicySet`], swapped atomically on reload.
pub struct FilesSource {
    current: Arc<ArcSwap<PolicySet>>,
    reloader: Reloader,
    watch: Mutex<Option<WatchHandle>>,
}

impl fmt::Debug for FilesSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FilesSource")
            .field("files", &self.reloader.files())
            .field("policies", &self.current.load().len())
            .finish_non_exhaustive()
    }
}

impl FilesSource {
    /// Loads `paths` (blocking file reads). A broken file at startup is an error, not a
    /// warning; later edits go through [`FilesSource::reloader`] / [`FilesSource::watch`].
    ///
    /// # Errors
    /// [`FilesError`] with every problem found.
    pub fn load(paths: Vec<PathBuf>) -> Result<Arc<FilesSource>, FilesError> {
        let initial = PolicySet::load(&paths)?;
        let current = Arc::new(ArcSwap::from_pointee(initial));
        let load_paths = paths.clone();
        let target = current.clone();
        let reloader = Reloader::new(
            RELOADER_NAME,
            paths,
            move || PolicySet::load(&load_paths),
            move |set| target.store(Arc::new(set)),
        );
        Ok(Arc::new(FilesSource {
            current,
            reloader,
            watch: Mutex::new(None),
        }))
    }

    /// Starts watching the files (debounced; needs a tokio runtime); a valid edit replaces the
    /// set for new decisions, a bad one keeps the old set and shows in
    /// [`FilesSource::reload_status`]. The watch lives as long as the source.
    ///
    /// # Errors
    /// [`ReloadError`] when there is no runtime or a directory cannot be watched.
    pub fn watch(self: &Arc<Self>) -> Result<(), ReloadError> {
        let handle = self.reloader.watch(DEFAULT_DEBOUNCE)?;
        *self.watch.lock() = Some(handle);
        Ok(())
    }

    /// The reloader (manual reloads, attempts, metrics).
    pub fn reloader(&self) -> &Reloader {
        &self.reloader
    }

    /// The reload state (last error, counts) for `/statusz`.
    pub fn reload_status(&self) -> ReloadStatus {
        self.reloader.status()
    }

    /// The current set.
    pub fn current(&self) -> Arc<PolicySet> {
        self.current.load_full()
    }

    /// The compiled policy for `subject` (actor > template > atespace), `None` when nothing
    /// selects it.
    pub fn select(&self, subject: &Subject) -> Option<Arc<CompiledPolicy>> {
        self.select_for(
            &subject.actor.atespace,
            &subject.actor.name,
            subject.template.as_ref(),
        )
    }

    /// [`FilesSource::select`] by atespace, name and template.
    pub fn select_for(
        &self,
        atespace: &str,
        name: &str,
        template: Option<&TemplateRef>,
    ) -> Option<Arc<CompiledPolicy>> {
        self.current
            .load()
            .select(atespace, name, template)
            .map(|p| p.compiled.clone())
    }

    /// The policy model that applies to an actor (the `ateapi.Control` simulator converts it
    /// to an upstream `EgressPolicy`).
    pub fn policy_model_for(
        &self,
        atespace: &str,
        name: &str,
        template: Option<&TemplateRef>,
    ) -> Option<Policy> {
        self.current
            .load()
            .select(atespace, name, template)
            .map(|p| p.compiled.model().clone())
    }
}

impl PolicySource for FilesSource {
    fn kind(&self) -> &'static str {
        "files"
    }

    fn policy_for(
        &self,
        subject: &Subject,
    ) -> BoxFuture<'static, Result<Option<Arc<CompiledPolicy>>, PolicyUnavailable>> {
        let found = self.select(subject);
        Box::pin(std::future::ready(Ok(found)))
    }

    fn status(&self) -> serde_json::Value {
        let set = self.current.load();
        let policies: Vec<serde_json::Value> = set
            .policies()
            .iter()
            .map(|p| {
                serde_json::json!({
                    "name": &**p.compiled.name(),
                    "selector": p.selector.to_string(),
                    "mode": p.compiled.mode().as_str(),
                    "rules": p.compiled.rules().len(),
                    "file": p.file.display().to_string(),
                })
            })
            .collect();
        serde_json::json!({
            "kind": "files",
            "files": self.reloader.files().iter().map(|f| f.display().to_string()).collect::<Vec<_>>(),
            "policies": policies,
            "reload": self.reloader.status(),
        })
    }
}

// ---- the file format ----

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    policies: Vec<RawPolicy>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    name: String,
    selector: RawSelector,
    #[serde(default)]
    mode: Mode,
    #[serde(default)]
    rules: Vec<RawRule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSelector {
    actor: Option<String>,
    template: Option<String>,
    atespace: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    http: Option<RawHostRule>,
    https: Option<RawHostRule>,
    tls_passthrough: Option<RawHostRule>,
    tcp: Option<RawTcpRule>,
    actors: Option<RawActorsRule>,
    mode: Option<Mode>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHostRule {
    #[serde(default)]
    hostnames: Vec<String>,
    ports: Option<RawPorts>,
    #[serde(default)]
    methods: Vec<String>,
    #[serde(default)]
    path_prefixes: Vec<String>,
    #[serde(default)]
    allow_private: bool,
    effects: Option<RawEffects>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEffects {
    #[serde(default)]
    replace_headers: Vec<RawCredentialHeader>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCredentialHeader {
    header: String,
    #[serde(default)]
    prefix: String,
    credential_uri: Option<String>,
    actor_jwt: Option<RawActorJwt>,
    #[serde(default)]
    allow_cleartext: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawActorJwt {
    #[serde(default)]
    audiences: Vec<String>,
    expiration_seconds: i64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTcpRule {
    #[serde(default)]
    cidrs: Vec<String>,
    ports: Option<RawPorts>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawActorsRule {
    #[serde(default)]
    targets: Vec<String>,
    ports: Option<RawPorts>,
}

/// `all`, or a list of port numbers (range-checked later, with the item's path).
#[derive(Debug)]
enum RawPorts {
    All,
    Numbers(Vec<i64>),
}

impl<'de> Deserialize<'de> for RawPorts {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawPorts;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("`all` or a list of port numbers")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawPorts, E> {
                if v == "all" {
                    Ok(RawPorts::All)
                } else {
                    Err(E::invalid_value(de::Unexpected::Str(v), &self))
                }
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RawPorts, A::Error> {
                let mut out = Vec::new();
                while let Some(n) = seq.next_element::<i64>()? {
                    out.push(n);
                }
                Ok(RawPorts::Numbers(out))
            }
        }
        d.deserialize_any(V)
    }
}

/// Parses one file's text into `(index, selector, policy)` for every policy that converts, and
/// the problems (with field paths) of those that do not.
fn parse_file(text: &str) -> (Vec<(usize, Selector, Policy)>, FieldErrors) {
    let raw: RawFile = match parse_yaml(text) {
        Ok(r) => r,
        Err(e) => return (Vec::new(), e),
    };
    let mut errs = FieldErrors::default();
    let mut out = Vec::with_capacity(raw.policies.len());
    for (i, p) in raw.policies.into_iter().enumerate() {
        let base = format!("policies[{i}]");
        let mut local = FieldErrors::default();
        let selector = convert_selector(&p.selector, &mut local);
        if p.name.trim().is_empty() {
            local.push("name", "must not be empty");
        }
        let mut rules = Vec::with_capacity(p.rules.len());
        for (j, r) in p.rules.into_iter().enumerate() {
            if let Some(rule) = convert_rule(r, &format!("rules[{j}]"), &mut local) {
                rules.push(rule);
            }
        }
        if local.is_empty()
            && let Some(selector) = selector
        {
            out.push((
                i,
                selector,
                Policy {
                    name: Arc::from(p.name.as_str()),
                    mode: p.mode,
                    rules,
                },
            ));
        } else {
            errs.extend_prefixed(&base, local);
        }
    }
    (out, errs)
}

fn convert_selector(s: &RawSelector, errs: &mut FieldErrors) -> Option<Selector> {
    let label = identity::actor::is_dns_label;
    let split = |v: &str| {
        v.split_once('/')
            .filter(|(a, b)| label(a) && label(b))
            .map(|(a, b)| (a.to_owned(), b.to_owned()))
    };
    match (&s.actor, &s.template, &s.atespace) {
        (Some(a), None, None) => match split(a) {
            Some((atespace, name)) => Some(Selector::Actor { atespace, name }),
            None => {
                errs.push(
                    "selector.actor",
                    format!("{a:?} is not <atespace>/<name> (DNS-1123 labels)"),
                );
                None
            }
        },
        (None, Some(t), None) => match split(t) {
            Some((namespace, name)) => Some(Selector::Template { namespace, name }),
            None => {
                errs.push(
                    "selector.template",
                    format!("{t:?} is not <namespace>/<name> (DNS-1123 labels)"),
                );
                None
            }
        },
        (None, None, Some(a)) => {
            if label(a) {
                Some(Selector::Atespace(a.clone()))
            } else {
                errs.push(
                    "selector.atespace",
                    format!("{a:?} is not a DNS-1123 label"),
                );
                None
            }
        }
        _ => {
            errs.push(
                "selector",
                "exactly one of actor, template, atespace must be set",
            );
            None
        }
    }
}

fn convert_rule(r: RawRule, base: &str, errs: &mut FieldErrors) -> Option<Rule> {
    let set = [
        r.http.is_some(),
        r.https.is_some(),
        r.tls_passthrough.is_some(),
        r.tcp.is_some(),
        r.actors.is_some(),
    ]
    .iter()
    .filter(|&&b| b)
    .count();
    if set != 1 {
        errs.push(
            base,
            "exactly one of http, https, tls_passthrough, tcp, actors must be set",
        );
        return None;
    }
    let spec = if let Some(h) = r.http {
        RuleSpec::Http(convert_host(h, &format!("{base}.http"), Some(80), errs)?)
    } else if let Some(h) = r.https {
        RuleSpec::Https(convert_host(h, &format!("{base}.https"), Some(443), errs)?)
    } else if let Some(h) = r.tls_passthrough {
        RuleSpec::TlsPassthrough(convert_host(
            h,
            &format!("{base}.tls_passthrough"),
            None,
            errs,
        )?)
    } else if let Some(t) = r.tcp {
        let path = format!("{base}.tcp");
        let before = errs.len();
        let mut cidrs = Vec::with_capacity(t.cidrs.len());
        for (k, c) in t.cidrs.iter().enumerate() {
            match parse_cidr(c) {
                Ok(n) => cidrs.push(n),
                Err(m) => errs.push(format!("{path}.cidrs[{k}]"), m),
            }
        }
        let ports = convert_ports(t.ports, &path, None, errs);
        if errs.len() != before {
            return None;
        }
        RuleSpec::Tcp(TcpRule {
            cidrs,
            ports: ports?,
        })
    } else {
        let a = r.actors?;
        let path = format!("{base}.actors");
        let ports = convert_ports(a.ports, &path, Some(0), errs)?;
        RuleSpec::Actors(ActorsRule {
            targets: a.targets,
            ports,
        })
    };
    Some(Rule { spec, mode: r.mode })
}

/// `10.0.0.0/8`, `2001:db8::/32`, or a bare address (a /32 or /128).
fn parse_cidr(s: &str) -> Result<IpNet, String> {
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{s:?} is not a CIDR (10.0.0.0/8, 2001:db8::/32)"))
}

/// Ports with a default: `Some(0)` means all ports, `Some(p)` that port, `None` required.
fn convert_ports(
    raw: Option<RawPorts>,
    base: &str,
    default: Option<u16>,
    errs: &mut FieldErrors,
) -> Option<Ports> {
    match raw {
        Some(RawPorts::All) => Some(Ports::All),
        Some(RawPorts::Numbers(ns)) => {
            let mut ok = true;
            let mut out = Vec::with_capacity(ns.len());
            for (k, n) in ns.into_iter().enumerate() {
                match u16::try_from(n) {
                    Ok(p) if p != 0 => out.push(p),
                    _ => {
                        errs.push(format!("{base}.ports[{k}]"), format!("{n} is not 1..65535"));
                        ok = false;
                    }
                }
            }
            ok.then_some(Ports::Numbers(out))
        }
        None => match default {
            Some(0) => Some(Ports::All),
            Some(p) => Some(Ports::Numbers(vec![p])),
            None => {
                errs.push(
                    format!("{base}.ports"),
                    "required (a list of ports, or `all`)",
                );
                None
            }
        },
    }
}

fn convert_host(
    h: RawHostRule,
    base: &str,
    default_port: Option<u16>,
    errs: &mut FieldErrors,
) -> Option<HostRule> {
    let before = errs.len();
    let mut hostnames = Vec::with_capacity(h.hostnames.len());
    for (k, n) in h.hostnames.iter().enumerate() {
        match HostPattern::parse(n) {
            Ok(p) => hostnames.push(p),
            Err(e) => errs.push(format!("{base}.hostnames[{k}]"), e.problem),
        }
    }
    let mut methods = Vec::with_capacity(h.methods.len());
    for (k, m) in h.methods.iter().enumerate() {
        match http::Method::from_bytes(m.as_bytes()) {
            Ok(method) if !m.bytes().any(|b| b.is_ascii_lowercase()) => methods.push(method),
            _ => errs.push(
                format!("{base}.methods[{k}]"),
                format!("{m:?} is not an uppercase HTTP method"),
            ),
        }
    }
    let mut effects = Vec::new();
    for (k, c) in h
        .effects
        .map(|e| e.replace_headers)
        .unwrap_or_default()
        .into_iter()
        .enumerate()
    {
        let path = format!("{base}.effects.replace_headers[{k}]");
        let source = match (c.credential_uri, c.actor_jwt) {
            (Some(uri), None) => CredentialSource::Uri(uri),
            (None, Some(j)) => {
                if !(300..=3600).contains(&j.expiration_seconds) {
                    errs.push(
                        format!("{path}.actor_jwt.expiration_seconds"),
                        "must be 300..3600",
                    );
                }
                CredentialSource::ActorJwt {
                    audiences: j.audiences,
                    expiration_seconds: j.expiration_seconds,
                }
            }
            _ => {
                errs.push(path, "exactly one of credential_uri, actor_jwt must be set");
                continue;
            }
        };
        effects.push(CredentialHeader {
            header: c.header,
            prefix: c.prefix,
            source,
            allow_cleartext: c.allow_cleartext,
        });
    }
    let ports = convert_ports(h.ports, base, default_port, errs);
    if errs.len() != before {
        return None;
    }
    Some(HostRule {
        hostnames,
        ports: ports?,
        methods,
        path_prefixes: h.path_prefixes,
        allow_private: h.allow_private,
        effects,
    })
}

/// Parses policy text as [`FilesSource`] would (for `actorgate policy test` and tests): each
/// policy validated and compiled, problems with field paths under `file`.
///
/// # Errors
/// [`FilesError`] with every problem.
pub fn parse_policies(
    file: &Path,
    text: &str,
) -> Result<Vec<(Selector, Arc<CompiledPolicy>)>, FilesError> {
    let to_problem = |path: String, message: String| FileProblem {
        file: file.to_path_buf(),
        path,
        message,
    };
    let (parsed, errs) = parse_file(text);
    let mut out = Vec::new();
    let mut problems: Vec<FileProblem> = errs
        .into_iter()
        .map(|e| to_problem(e.path, e.message))
        .collect();
    for (i, selector, policy) in parsed {
        match CompiledPolicy::compile(&policy) {
            Ok(c) => out.push((selector, Arc::new(c))),
            Err(e) => problems.extend(
                e.problems
                    .into_iter()
                    .map(|(p, m)| to_problem(format!("policies[{i}].{p}"), m)),
            ),
        }
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(FilesError(problems))
    }
}
