//! Documented defaults come from the code (issue 9, fault 16): every default stated in
//! docs/configuration.md and in deploy/local/actorgate.yaml is compared with the effective
//! config `actorgate check-config` prints (the code's `Default`s, serialised).
//!
//! The docs' convention (stated in docs/configuration.md): a default follows its field, as
//! `` `field` (default `value`) `` or a bare number, duration or boolean (`` `field` (5s) ``,
//! `` `field` 5s ``); `` `group` (`field` …) `` looks `field` up inside `group`. A table row's
//! first cell names its section; a heading with a backticked path (`` ## Readiness
//! (`admin.readiness`) ``, `` ### `ateapi` `` under `` ## Directories (`directory`) ``) names the
//! section of the prose below it. In the annotated YAML every value is the default unless a
//! comment on or just above its line says `Default <value>`, which is then checked instead.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn actorgate(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_actorgate"))
        .args(args)
        .output()
        .expect("run actorgate")
}

/// `check-config` of `yaml` → (exit ok, stdout parsed as YAML, stderr).
fn check_config(dir: &Path, name: &str, yaml: &str) -> (bool, Value, String) {
    let path = dir.join(name);
    std::fs::write(&path, yaml).unwrap();
    let out = actorgate(&["check-config", path.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        return (false, Value::Null, stderr);
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v = serde_saphyr::from_str::<Value>(&stdout)
        .unwrap_or_else(|e| panic!("check-config printed unparsable YAML ({e}):\n{stdout}"));
    (true, v, stderr)
}

fn remove(tree: &mut Value, path: &str) {
    let mut parts: Vec<&str> = path.split('.').collect();
    let last = parts.pop().unwrap();
    let mut node = tree;
    for p in parts {
        match node.get_mut(p) {
            Some(n) => node = n,
            None => return,
        }
    }
    if let Some(m) = node.as_object_mut() {
        m.remove(last);
    }
}

fn merge(into: &mut Value, from: Value) {
    match (into, from) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                match a.get_mut(&k) {
                    Some(existing) => merge(existing, v),
                    None => {
                        a.insert(k, v);
                    }
                }
            }
        }
        (slot, v) => *slot = v,
    }
}

/// The code's defaults: the effective config of a minimal static config, merged with one that
/// switches on every optional section (with real dev-CA files), minus the values set here.
fn code_defaults() -> Value {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    for args in [
        vec!["dev-ca", "init", "--dir", d],
        vec![
            "dev-ca",
            "component",
            "--ca-dir",
            d,
            "--namespace",
            "ate-system",
            "--service-account",
            "actorgate",
            "--dns",
            "localhost",
        ],
    ] {
        let out = actorgate(&args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let (ok, mut tree, err) = check_config(dir.path(), "minimal.yaml", "directory: {static: {}}\n");
    assert!(ok, "minimal config refused:\n{err}");

    let (crt, key, ca) = (
        format!("{d}/ate-system.actorgate.crt"),
        format!("{d}/ate-system.actorgate.key"),
        format!("{d}/ca.crt"),
    );
    let mut set = vec![
        "echo_worker.listen",
        "grpc.tls.cert_file",
        "grpc.tls.key_file",
        "ingress.https.tls.cert_file",
        "ingress.https.tls.key_file",
        "directory.ateapi.address",
        "directory.ateapi.ca_file",
        "directory.ateapi.cert_file",
        "directory.ateapi.key_file",
        "egress.enabled",
        "egress.tls",
        "egress.policy.files",
        "egress.interception.ca_cert_file",
        "egress.interception.ca_key_file",
        "agent.pep",
        "signer.key_file",
        "signer.kid",
        "signer.issuer",
    ];
    // The egress PEP with interception (its CA: the dev CA), so their defaults print too.
    std::fs::write(dir.path().join("policy.yaml"), "policies: []\n").unwrap();
    let full = |tls: &str| {
        format!(
            "echo_worker: {{listen: '127.0.0.1:18080'}}\n\
             grpc: {{tls: {{cert_file: '{crt}', key_file: '{key}'}}}}\n\
             ingress: {{https: {{tls: {{cert_file: '{crt}', key_file: '{key}'}}}}}}\n\
             directory: {{ateapi: {{address: 'localhost:8443', ca_file: '{ca}', \
             cert_file: '{crt}', key_file: '{key}'{tls}}}}}\n\
             egress: {{tls: {{cert_file: '{crt}', key_file: '{key}', client_ca_file: '{ca}'}}, \
             policy: {{files: ['{d}/policy.yaml']}}, \
             interception: {{ca_cert_file: '{ca}', ca_key_file: '{d}/ca.key'}}}}\n\
             agent: {{pep: {{address: '127.0.0.1:15008', server_name: localhost, \
             ca_file: '{ca}', cert_file: '{crt}', key_file: '{key}'}}}}\n\
             signer: {{key_file: '{d}/ca.key', kid: k1, issuer: 'https://issuer.test'}}\n"
        )
    };
    // `directory.ateapi.tls` has a default unless the code makes it required.
    let (mut ok, mut optional, mut err) = check_config(dir.path(), "full.yaml", &full(""));
    if !ok && err.contains("directory.ateapi.tls") {
        (ok, optional, err) = check_config(dir.path(), "full.yaml", &full(", tls: mtls"));
        set.push("directory.ateapi.tls");
    }
    assert!(ok, "config with every optional section refused:\n{err}");
    for p in set {
        remove(&mut optional, p);
    }
    merge(&mut tree, optional);
    tree
}

fn lookup<'a>(tree: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(tree, |node, p| node.get(p.as_str()))
}

/// Leaves (scalars and sequences) under `node`, with their paths.
fn leaves(node: &Value, prefix: Vec<String>, out: &mut Vec<(Vec<String>, Value)>) {
    match node {
        Value::Object(m) => {
            for (k, v) in m {
                let mut p = prefix.clone();
                p.push(k.clone());
                leaves(v, p, out);
            }
        }
        v => out.push((prefix, v.clone())),
    }
}

/// The field a documented `key` names: `context.key` if that is a leaf, else the one leaf under
/// the section (`context[0]`) whose path ends with `key`.
fn resolve(tree: &Value, context: &[String], key: &str) -> Result<(String, Value), String> {
    let key_parts: Vec<String> = key.split('.').map(str::to_owned).collect();
    let mut exact = context.to_vec();
    exact.extend(key_parts.iter().cloned());
    if let Some(v) = lookup(tree, &exact).filter(|v| !v.is_object()) {
        return Ok((exact.join("."), v.clone()));
    }
    let section = &context[..context.len().min(1)];
    let mut all = Vec::new();
    if let Some(root) = lookup(tree, section) {
        leaves(root, section.to_vec(), &mut all);
    }
    let found: Vec<_> = all
        .into_iter()
        .filter(|(p, _)| p.ends_with(&key_parts))
        .collect();
    match found.as_slice() {
        [(p, v)] => Ok((p.join("."), v.clone())),
        [] => Err(format!(
            "no field {key:?} with a default under {:?} (context {})",
            section.join("."),
            context.join(".")
        )),
        many => Err(format!(
            "{key:?} is ambiguous under {:?}: {} — write it inside its group",
            section.join("."),
            many.iter()
                .map(|(p, _)| p.join("."))
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// Whether a documented value equals the code's: durations by value, numbers numerically,
/// sequences as YAML.
fn same(doc: &str, code: &Value) -> bool {
    match code {
        Value::Bool(b) => doc == b.to_string(),
        Value::Number(n) => doc.parse::<f64>().ok() == n.as_f64(),
        Value::String(s) => {
            s == doc
                || matches!(
                    (humantime::parse_duration(s), humantime::parse_duration(doc)),
                    (Ok(a), Ok(b)) if a == b
                )
        }
        Value::Array(_) => serde_saphyr::from_str::<Value>(doc).ok().as_ref() == Some(code),
        Value::Null => doc == "null" || doc == "~",
        Value::Object(_) => false,
    }
}

fn is_field(t: &str) -> bool {
    t.starts_with(|c: char| c.is_ascii_lowercase())
        && t.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '.')
}

/// The default stated right after a field, and where its backticked value starts in `rest`.
fn default_after(rest: &str) -> Option<(String, Option<usize>)> {
    let mut s = rest.trim_start_matches(' ');
    let mut off = rest.len() - s.len();
    if let Some(r) = s.strip_prefix('(') {
        s = r;
        off += 1;
    }
    let explicit = match s.strip_prefix("default ") {
        Some(r) => {
            s = r;
            off += "default ".len();
            true
        }
        None => false,
    };
    if let Some(r) = s.strip_prefix('`') {
        let end = r.find('`')?;
        return explicit.then(|| (r[..end].to_owned(), Some(off)));
    }
    let token: String = s
        .chars()
        .take_while(|c| !matches!(c, ' ' | ',' | ';' | ')' | '|'))
        .collect();
    let token = token.trim_end_matches('.').to_owned();
    let plain =
        token.starts_with(|c: char| c.is_ascii_digit()) || token == "true" || token == "false";
    (!token.is_empty() && (explicit || plain)).then_some((token, None))
}

/// (groups, field, value) for every default stated in `text`.
fn scan(text: &str) -> Vec<(Vec<String>, String, String)> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let (mut i, mut depth) = (0, 0usize);
    let mut groups: Vec<(String, usize)> = Vec::new();
    let mut skip_at = None;
    while i < b.len() {
        match b[i] {
            b'(' => depth += 1,
            b')' => {
                depth = depth.saturating_sub(1);
                groups.retain(|(_, d)| *d <= depth);
            }
            b'`' => {
                let Some(len) = text[i + 1..].find('`') else {
                    break;
                };
                let end = i + 1 + len;
                let token = &text[i + 1..end];
                let rest = &text[end + 1..];
                if skip_at == Some(i) {
                    skip_at = None;
                } else if is_field(token) {
                    let opens_group = rest
                        .strip_prefix(" (`")
                        .and_then(|r| r.split_once('`'))
                        .is_some_and(|(next, _)| is_field(next));
                    if opens_group {
                        groups.push((token.to_owned(), depth + 1));
                    } else if let Some((value, at)) = default_after(rest) {
                        skip_at = at.map(|a| end + 1 + a);
                        out.push((
                            groups.iter().map(|(g, _)| g.clone()).collect(),
                            token.to_owned(),
                            value,
                        ));
                    }
                }
                i = end;
            }
            _ => {}
        }
        i += 1;
    }
    out
}

/// A documented default: where it was written, its section path, and the statement.
struct Stated {
    line: usize,
    context: Vec<String>,
    field: String,
    value: String,
}

/// Every default docs/configuration.md states: in table rows (section = first cell) and in
/// prose under a heading that names a config path. Code blocks and HTML comments are skipped.
fn stated_in_markdown(md: &str) -> Vec<Stated> {
    let mut out = Vec::new();
    let mut h2: Option<String> = None;
    let mut context: Option<String> = None;
    let (mut in_code, mut in_comment) = (false, false);
    let mut para: Vec<(usize, &str)> = Vec::new();
    let flush = |para: &mut Vec<(usize, &str)>, context: &Option<String>, out: &mut Vec<Stated>| {
        if let (Some(ctx), Some((line, _))) = (context, para.first()) {
            let text = para.iter().map(|(_, l)| *l).collect::<Vec<_>>().join(" ");
            for (groups, field, value) in scan(&text) {
                let mut c: Vec<String> = ctx.split('.').map(str::to_owned).collect();
                c.extend(groups);
                out.push(Stated {
                    line: *line,
                    context: c,
                    field,
                    value,
                });
            }
        }
        para.clear();
    };
    for (n, line) in md.lines().enumerate() {
        let n = n + 1;
        let t = line.trim();
        if t.starts_with("```") {
            flush(&mut para, &context, &mut out);
            in_code = !in_code;
            continue;
        }
        if in_code {
            continue;
        }
        if in_comment || t.starts_with("<!--") {
            flush(&mut para, &context, &mut out);
            in_comment = !t.contains("-->");
            continue;
        }
        if let Some(h) = t.strip_prefix('#') {
            flush(&mut para, &context, &mut out);
            let level = 1 + h.chars().take_while(|&c| c == '#').count();
            let named = h
                .split('`')
                .nth(1)
                .filter(|p| is_field(p))
                .map(str::to_owned);
            if level <= 2 {
                h2 = named;
                context = h2.clone();
            } else {
                context = match (&h2, named) {
                    (Some(parent), Some(p)) if !p.contains('.') => Some(format!("{parent}.{p}")),
                    (_, Some(p)) => Some(p),
                    (parent, None) => parent.clone(),
                };
            }
            continue;
        }
        if let Some(row) = t.strip_prefix('|') {
            flush(&mut para, &context, &mut out);
            let Some((first, rest)) = row.split_once(" | ") else {
                continue;
            };
            let Some(section) = first
                .trim()
                .strip_prefix('`')
                .and_then(|s| s.strip_suffix('`'))
                .filter(|s| is_field(s))
            else {
                continue;
            };
            para.push((n, rest));
            flush(&mut para, &Some(section.to_owned()), &mut out);
            continue;
        }
        if t.is_empty() {
            flush(&mut para, &context, &mut out);
        } else {
            para.push((n, t));
        }
    }
    flush(&mut para, &context, &mut out);
    out
}

#[test]
fn configuration_md_defaults_match_the_code() {
    let tree = code_defaults();
    let md = std::fs::read_to_string(repo().join("docs/configuration.md")).unwrap();
    let stated = stated_in_markdown(&md);
    let mut problems = Vec::new();
    let mut checked = std::collections::BTreeSet::new();
    for s in &stated {
        match resolve(&tree, &s.context, &s.field) {
            Ok((path, code)) => {
                if !same(&s.value, &code) {
                    problems.push(format!(
                        "docs/configuration.md:{}: {path}: documented default {:?}, code {}",
                        s.line, s.value, code
                    ));
                }
                checked.insert(path);
            }
            Err(e) => problems.push(format!("docs/configuration.md:{}: {e}", s.line)),
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // The parser must keep seeing the docs: today they state 45 defaults.
    assert!(
        checked.len() >= 40,
        "only {} documented defaults found: {checked:?}",
        checked.len()
    );
    for must in [
        "ingress.limits.max_concurrent_streams",
        "admin.readiness.failure_threshold",
        "admin.readiness.success_threshold",
        "directory.ateapi.connect_timeout",
        "ingress.https.listen",
        "resolver.backoff.max",
    ] {
        assert!(checked.contains(must), "{must} not documented: {checked:?}");
    }
}

/// The annotated example: every value is the default unless a comment on or just above its line
/// says `Default <value>` (which must then be the default). Fields without a default (paths,
/// the echo worker's address) are skipped.
#[test]
fn annotated_example_states_the_code_defaults() {
    let tree = code_defaults();
    let path = repo().join("deploy/local/actorgate.yaml");
    let out = actorgate(&["check-config", path.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "the example is valid: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&path).unwrap();
    let mut stack: Vec<(usize, String)> = Vec::new();
    let mut above: Vec<&str> = Vec::new();
    let (mut problems, mut checked) = (Vec::new(), 0);
    for (n, line) in text.lines().enumerate() {
        let t = line.trim();
        if t.is_empty() {
            above.clear();
            continue;
        }
        if let Some(c) = t.strip_prefix('#') {
            above.push(c);
            continue;
        }
        let indent = line.len() - line.trim_start().len();
        let (body, comment) = match t.find(" #") {
            Some(i) => (&t[..i], &t[i + 2..]),
            None => (t, ""),
        };
        let Some((key, value)) = body.split_once(':') else {
            above.clear();
            continue;
        };
        let value = value.trim();
        stack.retain(|(i, _)| *i < indent);
        let mut field: Vec<String> = stack.iter().map(|(_, k)| k.clone()).collect();
        field.push(key.trim().to_owned());
        let comments = above.join(" ") + " " + comment;
        above.clear();
        if value.is_empty() {
            stack.push((indent, key.trim().to_owned()));
            continue;
        }
        let Some(code) = lookup(&tree, &field) else {
            continue;
        };
        checked += 1;
        let at = format!("deploy/local/actorgate.yaml:{}: {}", n + 1, field.join("."));
        match stated_default(&comments) {
            Some(doc) if !same(&doc, code) => {
                problems.push(format!("{at}: comment says default {doc:?}, code {code}"))
            }
            Some(_) => {}
            None => {
                let literal = value.trim_matches(|c| c == '\'' || c == '"');
                if !same(literal, code) {
                    problems.push(format!(
                        "{at}: {literal:?} is not the default ({code}) and no comment says `Default <value>`"
                    ));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(checked >= 35, "only {checked} values compared");
}

/// `Default <value>` / `default: <value>` in a comment (not `defaults`).
fn stated_default(comment: &str) -> Option<String> {
    let lower = comment.to_ascii_lowercase();
    let mut from = 0;
    while let Some(i) = lower[from..].find("default") {
        let at = from + i;
        let before = lower[..at].chars().next_back();
        let rest = &comment[at + "default".len()..];
        from = at + "default".len();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let Some(rest) = rest.strip_prefix(": ").or_else(|| rest.strip_prefix(' ')) else {
            continue;
        };
        let token: String = rest
            .chars()
            .take_while(|c| !c.is_whitespace() && !matches!(c, ';' | ',' | ')'))
            .collect();
        let token = token.trim_end_matches('.').trim_matches('`').to_owned();
        if !token.is_empty() {
            return Some(token);
        }
    }
    None
}

#[test]
fn the_scanner_reads_the_documented_forms() {
    let got = scan(
        "`listen` (default `0.0.0.0:9090`): x, `limits` (`a_b` 30s, `c` (default `d`, or `e`)), \
         `f` (true), `g` (a filter), `h` (e.g. `1ms`), `i` (0s; ~5s), `j` (`k`, `l`), `m` 1.1",
    );
    let got: Vec<String> = got
        .into_iter()
        .map(|(g, f, v)| {
            format!(
                "{}{f}={v}",
                g.iter().map(|g| format!("{g}.")).collect::<String>()
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            "listen=0.0.0.0:9090",
            "limits.a_b=30s",
            "limits.c=d",
            "f=true",
            "i=0s",
            "m=1.1"
        ]
    );
    assert_eq!(
        stated_default(" x. Default 0.0.0.0:50051.").as_deref(),
        Some("0.0.0.0:50051")
    );
    assert_eq!(stated_default(" the values are the defaults unless"), None);
}
