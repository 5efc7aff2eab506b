//! The `files` policy source and the compiled matcher (DESIGN §7.2): precedence, tcp longest
//! prefix, method/path rules with traversal attempts, audit mode, selectors, error reporting
//! with field paths, and reload keeping the old set on a bad edit.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use egress_pep::decision::{Decision, Dial, Query, Reason, RuleKind, Traffic, Verdict};
use egress_pep::policy::CompiledPolicy;
use egress_pep::policy::files::{FilesSource, parse_policies};
use routing_core::directory::TemplateRef;

/// The one policy of a YAML text (panics with the problems otherwise).
fn policy(yaml: &str) -> Arc<CompiledPolicy> {
    let mut parsed = parse_policies(Path::new("test.yaml"), yaml)
        .unwrap_or_else(|e| panic!("policy does not load:\n{e}"));
    assert_eq!(parsed.len(), 1);
    parsed.remove(0).1
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn tls(p: &CompiledPolicy, dst: &str, sni: Option<&str>) -> Decision {
    p.decide(&Query {
        dst: addr(dst),
        traffic: Traffic::Tls {
            sni,
            interception: false,
        },
    })
}

fn http(p: &CompiledPolicy, dst: &str, authority: &str, method: &str, path: &str) -> Decision {
    p.decide(&Query {
        dst: addr(dst),
        traffic: Traffic::Http {
            authority,
            method,
            path,
        },
    })
}

fn opaque(p: &CompiledPolicy, dst: &str) -> Decision {
    p.decide(&Query {
        dst: addr(dst),
        traffic: Traffic::Opaque,
    })
}

/// The deciding rule's index (panics when no rule decided).
fn rule(d: &Decision) -> usize {
    d.rule
        .as_ref()
        .unwrap_or_else(|| panic!("no deciding rule: {d:?}"))
        .index
}

fn name_dial(host: &str, port: u16, allow_private: bool) -> Option<Dial> {
    Some(Dial::Name {
        host: host.into(),
        port,
        allow_private,
    })
}

#[test]
fn hostname_precedence_exact_then_wildcard_then_any_then_port() {
    let p = policy(
        r#"
policies:
  - name: prec
    selector: {atespace: team-a}
    rules:
      - tls_passthrough: {hostnames: ["*"], ports: all}
      - tls_passthrough: {hostnames: ["*.example.com"], ports: [443]}
      - tls_passthrough: {hostnames: [api.example.com], ports: all, allow_private: true}
      - tls_passthrough: {hostnames: [api.example.com], ports: [8443]}
      - tls_passthrough: {hostnames: ["*.example.com"], ports: all}
"#,
    );
    let cases = [
        // Exact on all ports beats a wildcard with an explicit port.
        ("10.0.0.1:443", "api.example.com", 2),
        // Explicit port beats all ports for the same pattern.
        ("10.0.0.1:8443", "api.example.com", 3),
        ("10.0.0.1:443", "www.example.com", 1),
        ("10.0.0.1:8443", "www.example.com", 4),
        // The wildcard is exactly one leftmost label.
        ("10.0.0.1:443", "example.com", 0),
        ("10.0.0.1:443", "a.b.example.com", 0),
        // SNI is normalised (case, one trailing dot).
        ("10.0.0.1:443", "API.Example.COM.", 2),
    ];
    for (dst, sni, want) in cases {
        let d = tls(&p, dst, Some(sni));
        assert_eq!(d.verdict, Verdict::Allow, "{sni} on {dst}: {d:?}");
        assert_eq!(rule(&d), want, "{sni} on {dst}");
        assert_eq!(d.rule.as_ref().unwrap().kind, RuleKind::TlsPassthrough);
        assert_eq!(&*d.rule.as_ref().unwrap().policy, "prec");
    }
    // Hostname rules dial the normalised, authorised name on the dialed port.
    let d = tls(&p, "10.9.9.9:443", Some("API.example.com"));
    assert_eq!(d.dial, name_dial("api.example.com", 443, true));
    let d = tls(&p, "10.9.9.9:443", Some("www.example.com"));
    assert_eq!(d.dial, name_dial("www.example.com", 443, false));
    // `*` is the only pattern matching an IP literal; it dials the original destination.
    let d = tls(&p, "10.9.9.9:443", Some("10.9.9.9"));
    assert_eq!((d.verdict, rule(&d)), (Verdict::Allow, 0));
    assert_eq!(
        d.dial,
        Some(Dial::Address {
            addr: addr("10.9.9.9:443"),
            tcp_rule: None
        })
    );
}

#[test]
fn only_star_matches_ip_literals_and_no_match_denies() {
    let p = policy(
        r#"
policies:
  - name: p
    selector: {atespace: team-a}
    rules:
      - tls_passthrough: {hostnames: [api.example.com, "*.example.org"], ports: [443]}
"#,
    );
    for sni in [
        "10.0.0.1",
        "[::ffff:10.0.0.1]",
        "example.org",
        "api.example.com.evil",
    ] {
        let d = tls(&p, "10.0.0.1:443", Some(sni));
        assert_eq!(
            (d.verdict, d.reason, d.rule.clone(), d.dial.clone()),
            (Verdict::Deny, Reason::NoMatchingRule, None, None),
            "{sni}"
        );
    }
    let d = tls(&p, "10.0.0.1:443", None);
    assert_eq!((d.verdict, d.reason), (Verdict::Deny, Reason::NoSni));
    let d = tls(&p, "10.0.0.1:443", Some("bad_name..example"));
    assert_eq!(
        (d.verdict, d.reason),
        (Verdict::Deny, Reason::InvalidAuthority)
    );
    // Passthrough needs the port too.
    let d = tls(&p, "10.0.0.1:8443", Some("api.example.com"));
    assert_eq!(d.reason, Reason::NoMatchingRule);
}

#[test]
fn https_rules_deny_until_interception_is_configured() {
    let p = policy(
        r#"
policies:
  - name: p
    selector: {atespace: team-a}
    rules:
      - https: {hostnames: [api.example.com]}
      - https: {hostnames: [audit.example.com]}
        mode: audit
      - tls_passthrough: {hostnames: ["*.example.com"], ports: [443]}
"#,
    );
    let d = tls(&p, "10.0.0.1:443", Some("api.example.com"));
    assert_eq!(
        (d.verdict, d.reason, rule(&d), d.dial.clone()),
        (Verdict::Deny, Reason::InterceptionNotConfigured, 0, None)
    );
    assert_eq!(d.rule.as_ref().unwrap().kind, RuleKind::Https);
    // https and tls_passthrough share SNI matching: the exact https rule wins over the wildcard.
    let d = tls(&p, "10.0.0.1:443", Some("www.example.com"));
    assert_eq!((d.verdict, rule(&d)), (Verdict::Allow, 2));
    // An audited https rule passes (dialled by name, still through the guard) and records audit.
    let d = tls(&p, "10.0.0.1:443", Some("audit.example.com"));
    assert_eq!(
        (d.verdict, d.reason, rule(&d)),
        (Verdict::Audit, Reason::InterceptionNotConfigured, 1)
    );
    assert_eq!(d.dial, name_dial("audit.example.com", 443, false));
    // https ports default to 443.
    let d = tls(&p, "10.0.0.1:8443", Some("api.example.com"));
    assert_eq!(d.reason, Reason::NoMatchingRule);
}

#[test]
fn tcp_rules_longest_prefix_then_explicit_port_v4_and_v6() {
    let p = policy(
        r#"
policies:
  - name: tcp
    selector: {atespace: team-a}
    rules:
      - tcp: {cidrs: [10.0.0.0/8], ports: all}
      - tcp: {cidrs: [10.1.0.0/16], ports: [5432]}
      - tcp: {cidrs: [10.1.2.0/24], ports: [22]}
      - tcp: {cidrs: [192.168.0.0/16], ports: all}
      - tcp: {cidrs: [192.168.0.0/16], ports: [443]}
      - tcp: {cidrs: ["2001:db8::/32"], ports: all}
      - tcp: {cidrs: ["2001:db8:1::/48", 203.0.113.7], ports: [443]}
"#,
    );
    let cases = [
        ("10.1.2.3:22", Some(2), "10.1.2.0/24"),
        // The /24 has no rule for 5432: the next longest prefix with one decides.
        ("10.1.2.3:5432", Some(1), "10.1.0.0/16"),
        ("10.1.2.3:80", Some(0), "10.0.0.0/8"),
        ("10.200.0.1:22", Some(0), "10.0.0.0/8"),
        ("[::ffff:10.1.2.3]:22", Some(2), "10.1.2.0/24"),
        // Same prefix: explicit port beats all ports.
        ("192.168.1.1:443", Some(4), "192.168.0.0/16"),
        ("192.168.1.1:80", Some(3), "192.168.0.0/16"),
        ("[2001:db8:1::5]:443", Some(6), "2001:db8:1::/48"),
        ("[2001:db8:1::5]:80", Some(5), "2001:db8::/32"),
        ("[2001:db8:2::5]:443", Some(5), "2001:db8::/32"),
        ("203.0.113.7:443", Some(6), "203.0.113.7/32"),
        ("203.0.113.8:443", None, ""),
        ("11.0.0.1:22", None, ""),
        ("[2001:db9::1]:443", None, ""),
    ];
    for (dst, want, cidr) in cases {
        let d = opaque(&p, dst);
        match want {
            Some(idx) => {
                assert_eq!((d.verdict, rule(&d)), (Verdict::Allow, idx), "{dst}");
                assert_eq!(
                    d.dial,
                    Some(Dial::Address {
                        addr: addr(dst),
                        tcp_rule: Some(cidr.parse().unwrap())
                    }),
                    "{dst}"
                );
            }
            None => assert_eq!(
                (d.verdict, d.reason, d.rule.clone()),
                (Verdict::Deny, Reason::NoMatchingRule, None),
                "{dst}"
            ),
        }
    }
    // tcp rules are an L4 allow whatever the bytes are, when no hostname rule matches.
    assert_eq!(rule(&tls(&p, "10.1.2.3:22", None)), 2);
    assert_eq!(rule(&tls(&p, "10.1.2.3:22", Some("x.example.com"))), 2);
    assert_eq!(
        rule(&http(&p, "10.1.2.3:22", "x.example.com", "GET", "/")),
        2
    );
}

#[test]
fn hostname_rule_beats_tcp_rule() {
    let p = policy(
        r#"
policies:
  - name: p
    selector: {atespace: team-a}
    rules:
      - tcp: {cidrs: [0.0.0.0/0, "::/0"], ports: all}
      - tls_passthrough: {hostnames: [api.example.com], ports: [443]}
      - http: {hostnames: [www.example.com], methods: [GET]}
"#,
    );
    let d = tls(&p, "10.0.0.1:443", Some("api.example.com"));
    assert_eq!((d.verdict, rule(&d)), (Verdict::Allow, 1));
    assert_eq!(d.dial, name_dial("api.example.com", 443, false));
    // The name matches a hostname rule that refuses the method: the hostname rule decides.
    let d = http(&p, "10.0.0.1:80", "www.example.com", "POST", "/");
    assert_eq!(
        (d.verdict, d.reason, rule(&d)),
        (Verdict::Deny, Reason::MethodNotAllowed, 2)
    );
    let d = tls(&p, "10.0.0.1:443", Some("other.example.com"));
    assert_eq!((d.verdict, rule(&d)), (Verdict::Allow, 0));
    assert!(matches!(
        d.dial,
        Some(Dial::Address {
            tcp_rule: Some(_),
            ..
        })
    ));
}

#[test]
fn http_method_and_path_prefix_resist_traversal() {
    let p = policy(
        r#"
policies:
  - name: web
    selector: {atespace: team-a}
    rules:
      - http: {hostnames: [api.example.com], methods: [GET, HEAD], path_prefixes: [/public/, /v1/items]}
      - http: {hostnames: ["*"], ports: [8080]}
"#,
    );
    let allowed = [
        "/public",
        "/public/",
        "/public/a/b",
        "/v1/items",
        "/v1/items/42",
        "//public//x",
        "/public/./x",
        "/admin/../public/x",
        "/public/%61",
        "/public/a;x=1/b",
        "/public/.;/x",
    ];
    for path in allowed {
        let d = http(&p, "10.0.0.1:80", "api.example.com", "GET", path);
        assert_eq!((d.verdict, rule(&d)), (Verdict::Allow, 0), "{path}: {d:?}");
        assert_eq!(d.dial, name_dial("api.example.com", 80, false));
    }
    let refused = [
        "/publicity",
        "/v1/itemsx",
        "/v1",
        "/",
        "/admin",
        "/public/../admin",
        "/public/..",
        "/public/x/../../admin",
        "/public/..%2fadmin",
        "/public/..%2Fadmin",
        "/public%2f..%2fadmin",
        "/public/%2e%2e/admin",
        "/public/.%2e/admin",
        "/public/%2E%2E%2Fadmin",
        "/public/..\\admin",
        "/public\\..\\admin",
        "/public/..%5cadmin",
        "/v1/items/%2e%2e/%2e%2e/secret",
        "/public/..;/admin",
        "/public/..;x=1/admin",
        "/public/.;/..;/admin",
        "/public;x/a",
        "public/x",
        "*",
    ];
    for path in refused {
        let d = http(&p, "10.0.0.1:80", "api.example.com", "GET", path);
        assert_eq!(
            (d.verdict, d.reason, rule(&d), d.dial.clone()),
            (Verdict::Deny, Reason::PathNotAllowed, 0, None),
            "{path}"
        );
    }
    let d = http(&p, "10.0.0.1:80", "api.example.com", "POST", "/public/x");
    assert_eq!(
        (d.verdict, d.reason),
        (Verdict::Deny, Reason::MethodNotAllowed)
    );
    let d = http(&p, "10.0.0.1:80", "api.example.com", "get", "/public/x");
    assert_eq!(
        d.reason,
        Reason::MethodNotAllowed,
        "methods are case-sensitive"
    );
    // The Host port is ignored: the dialed port decides (http ports default to 80).
    let d = http(&p, "10.0.0.1:80", "API.EXAMPLE.COM:8080", "HEAD", "/public");
    assert_eq!((d.verdict, rule(&d)), (Verdict::Allow, 0));
    let d = http(
        &p,
        "10.0.0.1:8080",
        "api.example.com:80",
        "DELETE",
        "/admin",
    );
    assert_eq!((d.verdict, rule(&d)), (Verdict::Allow, 1));
    assert_eq!(d.dial, name_dial("api.example.com", 8080, false));
    let d = http(&p, "10.0.0.1:8080", "10.0.0.1:8080", "GET", "/");
    assert_eq!(
        d.dial,
        Some(Dial::Address {
            addr: addr("10.0.0.1:8080"),
            tcp_rule: None
        })
    );
    let d = http(&p, "10.0.0.1:81", "api.example.com", "GET", "/public");
    assert_eq!(d.reason, Reason::NoMatchingRule);
    // Cleartext requests never match SNI rules and vice versa.
    let d = tls(&p, "10.0.0.1:80", Some("api.example.com"));
    assert_eq!(d.reason, Reason::NoMatchingRule);
}

#[test]
fn audit_mode_passes_with_a_dial_and_records_audit() {
    let p = policy(
        r#"
policies:
  - name: watch
    selector: {atespace: team-a}
    mode: audit
    rules:
      - http: {hostnames: [api.example.com], path_prefixes: [/ok]}
        mode: enforce
      - tls_passthrough: {hostnames: [www.example.com], ports: [443]}
"#,
    );
    // Default deny in an audit policy: passes, verdict audit, dialled by name (through the guard).
    let d = tls(&p, "10.0.0.1:443", Some("other.example.com"));
    assert_eq!(
        (d.verdict, d.reason, d.rule.clone()),
        (Verdict::Audit, Reason::NoMatchingRule, None)
    );
    assert_eq!(d.dial, name_dial("other.example.com", 443, false));
    assert!(d.verdict.passes());
    let d = opaque(&p, "10.0.0.9:5432");
    assert_eq!(d.verdict, Verdict::Audit);
    assert_eq!(
        d.dial,
        Some(Dial::Address {
            addr: addr("10.0.0.9:5432"),
            tcp_rule: None
        })
    );
    // An allow stays an allow.
    assert_eq!(
        tls(&p, "10.0.0.1:443", Some("www.example.com")).verdict,
        Verdict::Allow
    );
    // A rule in enforce mode inside an audit policy enforces.
    let d = http(&p, "10.0.0.1:80", "api.example.com", "GET", "/nope");
    assert_eq!(
        (d.verdict, d.reason),
        (Verdict::Deny, Reason::PathNotAllowed)
    );

    let p = policy(
        r#"
policies:
  - name: strict
    selector: {atespace: team-a}
    rules:
      - http: {hostnames: [api.example.com], path_prefixes: [/ok]}
        mode: audit
"#,
    );
    let d = http(&p, "10.0.0.1:80", "api.example.com", "GET", "/nope");
    assert_eq!(
        (d.verdict, d.reason, rule(&d)),
        (Verdict::Audit, Reason::PathNotAllowed, 0)
    );
    assert_eq!(d.dial, name_dial("api.example.com", 80, false));
    let d = http(&p, "10.0.0.1:80", "other.example.com", "GET", "/");
    assert_eq!(
        d.verdict,
        Verdict::Deny,
        "default deny follows the policy's mode"
    );
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

const SELECTORS: &str = r#"
policies:
  - name: by-atespace
    selector: {atespace: team-a}
    rules:
      - tls_passthrough: {hostnames: [atespace.example.com], ports: [443]}
  - name: by-template
    selector: {template: tmpl/web}
    rules:
      - tls_passthrough: {hostnames: [template.example.com], ports: [443]}
  - name: by-actor
    selector: {actor: team-a/special}
    rules:
      - tls_passthrough: {hostnames: [actor.example.com], ports: [443]}
"#;

#[test]
fn selectors_actor_beats_template_beats_atespace() {
    let dir = tempfile::tempdir().unwrap();
    let a = write(dir.path(), "a.yaml", SELECTORS);
    let b = write(
        dir.path(),
        "b.yaml",
        "policies:\n  - name: other\n    selector: {atespace: team-b}\n    rules: []\n",
    );
    let src = FilesSource::load(vec![a, b]).unwrap_or_else(|e| panic!("{e}"));
    let web = TemplateRef {
        namespace: "tmpl".into(),
        name: "web".into(),
    };
    let name = |ns: &str, n: &str, t: Option<&TemplateRef>| {
        src.select_for(ns, n, t).map(|p| p.name().to_string())
    };
    assert_eq!(
        name("team-a", "special", Some(&web)).as_deref(),
        Some("by-actor")
    );
    assert_eq!(
        name("team-a", "plain", Some(&web)).as_deref(),
        Some("by-template")
    );
    assert_eq!(
        name("team-c", "plain", Some(&web)).as_deref(),
        Some("by-template")
    );
    assert_eq!(
        name("team-a", "plain", None).as_deref(),
        Some("by-atespace")
    );
    assert_eq!(name("team-b", "x", None).as_deref(), Some("other"));
    assert_eq!(name("team-c", "x", None), None);
    // The selected policy decides (an empty policy denies everything).
    let p = src.select_for("team-a", "special", None).unwrap();
    assert_eq!(
        tls(&p, "10.0.0.1:443", Some("actor.example.com")).verdict,
        Verdict::Allow
    );
    assert_eq!(
        tls(&p, "10.0.0.1:443", Some("atespace.example.com")).verdict,
        Verdict::Deny
    );
    let p = src.select_for("team-b", "x", None).unwrap();
    assert_eq!(
        tls(&p, "10.0.0.1:443", Some("a.b")).reason,
        Reason::NoMatchingRule
    );
    // The model is served for the simulator.
    let m = src.policy_model_for("team-a", "plain", Some(&web)).unwrap();
    assert_eq!(&*m.name, "by-template");
    assert_eq!(m.rules.len(), 1);
}

#[test]
fn equally_specific_policies_and_repeated_names_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let a = write(dir.path(), "a.yaml", SELECTORS);
    let b = write(
        dir.path(),
        "b.yaml",
        r#"
policies:
  - name: again
    selector: {template: tmpl/web}
  - name: by-actor
    selector: {actor: team-z/x}
"#,
    );
    let err = FilesSource::load(vec![a, b.clone()]).unwrap_err();
    let got: Vec<(PathBuf, &str)> = err
        .0
        .iter()
        .map(|p| (p.file.clone(), p.path.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            (b.clone(), "policies[0].selector"),
            (b.clone(), "policies[1].name")
        ],
        "{err}"
    );
    assert!(
        err.to_string().contains("two equally specific policies"),
        "{err}"
    );
}

#[test]
fn bad_files_are_reported_with_field_paths() {
    let dir = tempfile::tempdir().unwrap();
    let bad = write(
        dir.path(),
        "policies.yaml",
        r#"
policies:
  - name: ok
    selector: {atespace: fine}
    rules: []
  - name: broken
    selector: {atespace: team-a, actor: team-a/x}
    rules:
      - tls_passthrough: {hostnames: [api.example.com]}
      - http: {hostnames: [ok.example.com, "*.*.example.com", "10.0.0.1"], methods: [get]}
      - tcp: {cidrs: [10.0.0.1/8, nonsense], ports: [0, 70000]}
      - http: {hostnames: [a.example.com]}
        https: {hostnames: [a.example.com]}
      - https: {hostnames: [x.example.com], path_prefixes: [/v1]}
  - name: dups
    selector: {atespace: team-b}
    rules:
      - http: {hostnames: [a.example.com], path_prefixes: [/a/../b]}
      - http: {hostnames: [a.example.com], ports: [80, 81]}
      - tls_passthrough: {hostnames: [a.example.com], ports: [443]}
      - https: {hostnames: [a.example.com]}
"#,
    );
    let err = FilesSource::load(vec![bad.clone()]).unwrap_err();
    let paths: Vec<&str> = err.0.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "policies[1].selector",
            "policies[1].rules[0].tls_passthrough.ports",
            "policies[1].rules[1].http.hostnames[1]",
            "policies[1].rules[1].http.hostnames[2]",
            "policies[1].rules[1].http.methods[0]",
            "policies[1].rules[2].tcp.cidrs[1]",
            "policies[1].rules[2].tcp.ports[0]",
            "policies[1].rules[2].tcp.ports[1]",
            "policies[1].rules[3]",
            "policies[2].rules[0].http.path_prefixes[0]",
            "policies[2].rules[1].http.hostnames[0]",
            "policies[2].rules[3].https.hostnames[0]",
        ],
        "{err}"
    );
    // The host-bits CIDR of broken's surviving rules are
    // found once the structural errors are fixed; each line names the file.
    let text = err.to_string();
    assert!(
        text.lines()
            .all(|l| l.starts_with(&bad.display().to_string())),
        "{text}"
    );
    assert!(
        text.contains("policies[1].rules[1].http.hostnames[1]: `*` is allowed only"),
        "{text}"
    );

    let bad2 = write(
        dir.path(),
        "second.yaml",
        r#"
policies:
  - name: p
    selector: {atespace: team-a}
    rules:
      - tcp: {cidrs: [10.0.0.1/8], ports: all}
      - tls_passthrough: {hostnames: [x.example.com], ports: [443], methods: [GET]}
"#,
    );
    let err = FilesSource::load(vec![bad2]).unwrap_err();
    let paths: Vec<&str> = err.0.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "policies[0].rules[0].tcp.cidrs[0]",
            "policies[0].rules[1].tls_passthrough.methods"
        ],
        "{err}"
    );

    // Structural problems: unknown fields and wrong types, at their path.
    let bad3 = write(
        dir.path(),
        "third.yaml",
        "policies:\n  - name: p\n    selector: {atespace: a}\n    rules:\n      - http: {hostname: [x.example.com]}\n",
    );
    let err = FilesSource::load(vec![bad3]).unwrap_err();
    assert_eq!(err.0.len(), 1, "{err}");
    assert!(
        err.0[0].path.starts_with("policies[0].rules[0].http"),
        "{err}"
    );
    let err = FilesSource::load(vec![dir.path().join("missing.yaml")]).unwrap_err();
    assert!(err.to_string().contains("missing.yaml"), "{err}");
}

#[test]
fn a_bad_edit_keeps_the_previous_set_and_a_good_one_applies() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "p.yaml", SELECTORS);
    let src = FilesSource::load(vec![file.clone()]).unwrap();
    let allowed = |host: &str| {
        let p = src.select_for("team-a", "plain", None).unwrap();
        tls(&p, "10.0.0.1:443", Some(host)).verdict == Verdict::Allow
    };
    assert!(allowed("atespace.example.com"));

    std::fs::write(&file, SELECTORS.replace("[443]", "[0]")).unwrap();
    let err = src.reloader().reload().unwrap_err();
    assert!(
        err.contains("policies[0].rules[0].tls_passthrough.ports[0]"),
        "{err}"
    );
    assert!(allowed("atespace.example.com"), "the old set stays");
    let status = src.reload_status();
    assert_eq!(status.failures, 1);
    assert!(
        status
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("ports[0]"))
    );

    std::fs::write(
        &file,
        SELECTORS.replace("atespace.example.com", "new.example.com"),
    )
    .unwrap();
    src.reloader().reload().unwrap();
    assert!(allowed("new.example.com"));
    assert!(!allowed("atespace.example.com"));
    assert_eq!(src.reload_status().last_error, None);
}

#[tokio::test]
async fn watched_files_reload_on_edit() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "p.yaml", SELECTORS);
    let src = FilesSource::load(vec![file.clone()]).unwrap();
    src.watch().unwrap();
    let mut attempts = src.reloader().attempts();
    let wait = async |attempts: &mut tokio::sync::watch::Receiver<u64>, what: &str| {
        tokio::time::timeout(Duration::from_secs(10), attempts.changed())
            .await
            .unwrap_or_else(|_| panic!("no reload after {what} within 10 s"))
            .unwrap();
    };
    std::fs::write(&file, "policies: [oops").unwrap();
    wait(&mut attempts, "a bad edit").await;
    assert!(src.reload_status().last_error.is_some());
    assert!(
        src.select_for("team-a", "plain", None).is_some(),
        "old set kept"
    );
    let status = egress_pep::policy::PolicySource::status(&*src);
    assert!(status["reload"]["last_error"].is_string(), "{status}");

    std::fs::write(&file, SELECTORS.replace("team-a", "team-q")).unwrap();
    // The good edit may take more than one attempt to be seen (debounce of partial writes).
    tokio::time::timeout(Duration::from_secs(10), async {
        while src.select_for("team-q", "plain", None).is_none() {
            attempts.changed().await.unwrap();
        }
    })
    .await
    .expect("the valid edit applied within 10 s");
    assert!(src.select_for("team-a", "plain", None).is_none());
}

/// `https` rules take methods and path prefixes (actorgate's format): the ClientHello is
/// intercepted whatever they say, and each decrypted request is held to them; requests inside an
/// intercepted connection are decided by `https` rules alone.
#[test]
fn https_rules_hold_intercepted_requests_to_their_methods_and_paths() {
    let p = policy(
        r#"
policies:
  - name: p
    selector: {atespace: a}
    rules:
      - https: {hostnames: [api.example.com], methods: [GET], path_prefixes: [/v1/]}
      - http: {hostnames: [plain.example.com]}
"#,
    );
    let hello = p.decide(&Query {
        dst: addr("10.0.0.1:443"),
        traffic: Traffic::Tls {
            sni: Some("api.example.com"),
            interception: true,
        },
    });
    assert_eq!((hello.verdict, rule(&hello)), (Verdict::Allow, 0));
    let req = |authority: &str, method: &str, path: &str| {
        p.decide(&Query {
            dst: addr("10.0.0.1:443"),
            traffic: Traffic::Https {
                authority,
                method,
                path,
            },
        })
    };
    let d = req("api.example.com", "GET", "/v1/items");
    assert_eq!((d.verdict, d.reason), (Verdict::Allow, Reason::Allowed));
    assert_eq!(d.rule.map(|r| r.kind), Some(RuleKind::Https));
    assert_eq!(
        req("api.example.com", "POST", "/v1/items").reason,
        Reason::MethodNotAllowed
    );
    assert_eq!(
        req("API.example.com.:443", "GET", "/v1/../admin").reason,
        Reason::PathNotAllowed
    );
    assert_eq!(
        req("plain.example.com", "GET", "/").reason,
        Reason::NoMatchingRule,
        "http rules never decide intercepted requests"
    );
}

/// In an audit-mode policy an intercepted request no `https` rule allows passes as `audit`,
/// dialled by its own name (as a cleartext request would be); an invalid authority is denied
/// even there (nothing to dial or verify a certificate against).
#[test]
fn audit_mode_lets_unmatched_intercepted_requests_pass_by_name() {
    let p = policy(
        r#"
policies:
  - name: p
    selector: {atespace: a}
    mode: audit
    rules:
      - https: {hostnames: [api.example.com]}
"#,
    );
    let req = |authority: &str| {
        p.decide(&Query {
            dst: addr("10.0.0.1:443"),
            traffic: Traffic::Https {
                authority,
                method: "GET",
                path: "/",
            },
        })
    };
    let d = req("other.example.com");
    assert_eq!(
        (d.verdict, d.reason),
        (Verdict::Audit, Reason::NoMatchingRule)
    );
    assert_eq!(
        d.dial,
        Some(Dial::Name {
            host: "other.example.com".into(),
            port: 443,
            allow_private: false
        })
    );
    let d = req("bad name!");
    assert_eq!(
        (d.verdict, d.reason),
        (Verdict::Deny, Reason::InvalidAuthority)
    );
}
