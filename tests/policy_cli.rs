//! `actorgate policy test` (issue 11): given policy files or a config, an actor and a
//! destination, it prints the verdict, the deciding rule and the reason (and where the PEP would
//! dial), and exits 0 when the traffic passes, 1 when it is denied, 2 when it cannot decide.

use std::path::Path;
use std::process::Command;

/// A policy file exercising each kind the CLI shows: a `tcp` rule on loopback, an `http` rule
/// with method and path, a `tls_passthrough` rule, an audit-mode policy, and a template policy.
const POLICY: &str = "\
policies:
- name: hello
  selector: {actor: demo/hello}
  rules:
  - tcp: {cidrs: [127.0.0.1/32], ports: [18081]}
  - http: {hostnames: [api.example.com], methods: [GET], path_prefixes: [/v1/]}
  - tls_passthrough: {hostnames: ['*.example.com'], ports: [443]}
- name: auditor
  selector: {actor: demo/auditor}
  mode: audit
  rules:
  - tcp: {cidrs: [192.0.2.0/24], ports: [22]}
- name: echo-template
  selector: {template: demo/echo}
  rules:
  - tls_passthrough: {hostnames: [example.org], ports: [443]}
";

/// Runs `actorgate policy test ARGS` → (exit code, stdout, stderr).
fn policy_test(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_actorgate"))
        .args(["policy", "test"])
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("run actorgate policy test");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The `key: value` line for `key`.
fn field<'a>(stdout: &'a str, key: &str) -> &'a str {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(": ")))
        .unwrap_or_else(|| panic!("no {key:?} line in:\n{stdout}"))
}

fn write_policy(dir: &Path) -> String {
    let p = dir.join("policy.yaml");
    std::fs::write(&p, POLICY).unwrap();
    p.to_str().unwrap().to_owned()
}

#[test]
fn allowed_destinations_print_verdict_rule_reason_and_dial() {
    let dir = tempfile::tempdir().unwrap();
    let policy = write_policy(dir.path());
    let base = ["--policy", &policy, "--actor", "demo/hello"];

    // Cleartext HTTP within the path prefix: the http rule decides, dialled by name.
    let (code, out, err) = policy_test(
        &[
            &base[..],
            &[
                "--dst",
                "203.0.113.7:80",
                "--host",
                "API.example.com:80",
                "--path",
                "/v1/items",
            ],
        ]
        .concat(),
    );
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(field(&out, "verdict"), "allow", "{out}");
    assert_eq!(field(&out, "rule"), "hello rules[1] (http)", "{out}");
    assert!(field(&out, "reason").starts_with("allowed"), "{out}");
    assert!(
        field(&out, "dial").starts_with("name api.example.com:80"),
        "{out}"
    );

    // TLS by SNI: one-label wildcard.
    let (code, out, err) = policy_test(
        &[
            &base[..],
            &["--dst", "203.0.113.7:443", "--sni", "www.example.com"],
        ]
        .concat(),
    );
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(
        field(&out, "rule"),
        "hello rules[2] (tls_passthrough)",
        "{out}"
    );

    // Opaque bytes to the loopback echo worker: the tcp rule names the address, so the guard
    // lets it through.
    let (code, out, err) = policy_test(&[&base[..], &["--dst", "127.0.0.1:18081"]].concat());
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(field(&out, "rule"), "hello rules[0] (tcp)", "{out}");
    assert_eq!(
        field(&out, "dial"),
        "address 127.0.0.1:18081 (tcp rule 127.0.0.1/32)",
        "{out}"
    );
    assert!(field(&out, "guard").ends_with("ok"), "{out}");

    // An audit-mode policy: what it would deny passes with verdict audit (exit 0).
    let (code, out, err) = policy_test(&[
        "--policy",
        &policy,
        "--actor",
        "demo/auditor",
        "--dst",
        "198.51.100.1:5432",
    ]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(field(&out, "verdict"), "audit", "{out}");
    assert!(
        field(&out, "reason").starts_with("no_matching_rule"),
        "{out}"
    );
}

#[test]
fn denied_destinations_print_the_reason_and_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let policy = write_policy(dir.path());
    let base = ["--policy", &policy, "--actor", "demo/hello"];
    for (args, reason) in [
        // No rule names this address.
        (vec!["--dst", "127.0.0.1:9090"], "no_matching_rule"),
        // The http rule matches the name but not the path (an escape of the prefix).
        (
            vec![
                "--dst",
                "203.0.113.7:80",
                "--host",
                "api.example.com",
                "--path",
                "/v1/../admin",
            ],
            "path_not_allowed",
        ),
        (
            vec![
                "--dst",
                "203.0.113.7:80",
                "--host",
                "api.example.com",
                "--method",
                "POST",
                "--path",
                "/v1/items",
            ],
            "method_not_allowed",
        ),
        // The wildcard does not match the apex.
        (
            vec!["--dst", "203.0.113.7:443", "--sni", "example.com"],
            "no_matching_rule",
        ),
        // Passthrough needs SNI.
        (vec!["--dst", "203.0.113.7:443", "--tls"], "no_sni"),
    ] {
        let (code, out, err) = policy_test(&[&base[..], &args[..]].concat());
        assert_eq!(code, Some(1), "{args:?}\n{out}{err}");
        assert_eq!(field(&out, "verdict"), "deny", "{args:?}\n{out}");
        assert!(
            field(&out, "reason").starts_with(reason),
            "{args:?}: want {reason}\n{out}"
        );
    }
    let (code, out, _) = policy_test(&[&base[..], &["--dst", "127.0.0.1:9090"]].concat());
    assert_eq!(code, Some(1));
    assert_eq!(field(&out, "rule"), "none", "{out}");
    assert_eq!(field(&out, "dial"), "none", "{out}");

    // An actor no selector names: no policy.
    let (code, out, _) = policy_test(&[
        "--policy",
        &policy,
        "--actor",
        "other/someone",
        "--dst",
        "127.0.0.1:18081",
    ]);
    assert_eq!(code, Some(1), "{out}");
    assert!(field(&out, "reason").starts_with("no_policy"), "{out}");
}

#[test]
fn a_config_uses_its_policy_files_guard_and_the_directory_template() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let out = Command::new(env!("CARGO_BIN_EXE_actorgate"))
        .args(["dev-ca", "egress-demo", "--dir"])
        .arg(d)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    write_policy(d);
    std::fs::write(
        d.join("actors.yaml"),
        "actors:\n- {atespace: demo, name: hello, endpoint: '127.0.0.1:1'}\n\
         - {atespace: demo, name: other, template: demo/echo, endpoint: '127.0.0.1:1'}\n",
    )
    .unwrap();
    let config = d.join("egress.yaml");
    std::fs::write(
        &config,
        "admin: {listen: '127.0.0.1:18082'}\ningress: {enabled: false}\n\
         grpc: {extproc: false, resolve_route: false}\n\
         directory: {static: {file: actors.yaml}}\n\
         egress:\n  listen: '127.0.0.1:15008'\n\
         \x20 tls: {cert_file: pep.crt, key_file: pep.key, client_ca_file: ca.crt}\n\
         \x20 policy: {files: [policy.yaml]}\n",
    )
    .unwrap();
    let config = config.to_str().unwrap();

    // demo/other has no actor policy: its template's (from the static directory) applies.
    let (code, out, err) = policy_test(&[
        "--config",
        config,
        "--actor",
        "demo/other",
        "--dst",
        "203.0.113.7:443",
        "--sni",
        "example.org",
    ]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(
        field(&out, "rule"),
        "echo-template rules[0] (tls_passthrough)",
        "{out}"
    );
    assert_eq!(field(&out, "policy"), "echo-template (files)", "{out}");

    // A config problem: one line with the file and field, exit 2.
    std::fs::write(d.join("bad.yaml"), "egress: {listen: nope}\n").unwrap();
    let (code, _, err) = policy_test(&[
        "--config",
        d.join("bad.yaml").to_str().unwrap(),
        "--actor",
        "demo/hello",
        "--dst",
        "127.0.0.1:1",
    ]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("bad.yaml: egress.listen: invalid socket address \"nope\""),
        "{err}"
    );
}

#[test]
fn dev_ca_egress_demo_writes_every_certificate_the_demo_expects() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let out = Command::new(env!("CARGO_BIN_EXE_actorgate"))
        .args(["dev-ca", "egress-demo", "--dir"])
        .arg(d)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for f in [
        "ca.crt",
        "ca.key",
        "pep.crt",
        "pep.key",
        "demo.hello.crt",
        "demo.hello.key",
    ] {
        assert!(d.join(f).is_file(), "{f} missing");
    }
    let ca_before = std::fs::read(d.join("ca.crt")).unwrap();
    // The actor certificate: upstream atunnel's URI SAN, client-auth, not a CA.
    let pem = std::fs::read(d.join("demo.hello.crt")).unwrap();
    let der = rustls_pki_types::pem::PemObject::from_pem_slice(&pem)
        .map(|c: rustls_pki_types::CertificateDer<'static>| c)
        .unwrap();
    let (peer, form) = identity::cert::identity_from_der_with(
        &der,
        "substrate-actor.local",
        identity::spiffe::SpiffeOptions::default(),
    )
    .unwrap();
    assert_eq!(
        form,
        Some(identity::spiffe::ActorIdForm::AteomForActor),
        "{peer:?}"
    );
    // Run again: the CA is reused, so certificates already handed out stay valid.
    let out = Command::new(env!("CARGO_BIN_EXE_actorgate"))
        .args(["dev-ca", "egress-demo", "--dir"])
        .arg(d)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(std::fs::read(d.join("ca.crt")).unwrap(), ca_before);
}

/// `https` rules: without interception the ClientHello is denied (`interception_not_configured`);
/// `--interception` decides as a PEP that intercepts; `--sni` with `--host` decides a request
/// inside the intercepted connection (methods and paths of the rule apply).
#[test]
fn https_rules_as_a_pep_with_and_without_interception() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("https.yaml");
    std::fs::write(
        &p,
        "policies:\n- name: hello\n  selector: {actor: demo/hello}\n  rules:\n  \
         - https: {hostnames: [api.example.com], methods: [GET]}\n",
    )
    .unwrap();
    let base = [
        "--policy",
        p.to_str().unwrap(),
        "--actor",
        "demo/hello",
        "--dst",
        "203.0.113.7:443",
        "--sni",
        "api.example.com",
    ];
    let (code, out, err) = policy_test(&base);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(
        field(&out, "reason").starts_with("interception_not_configured"),
        "{out}"
    );
    let (code, out, err) = policy_test(&[&base[..], &["--interception"]].concat());
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(field(&out, "rule"), "hello rules[0] (https)", "{out}");
    let request = [
        &base[..],
        &["--host", "api.example.com", "--method", "POST"],
    ]
    .concat();
    let (code, out, err) = policy_test(&request);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(
        field(&out, "reason").starts_with("method_not_allowed"),
        "{out}"
    );
}

#[test]
fn actor_hosts_as_a_pep_with_and_without_actor_forwarding() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("actors.yaml");
    std::fs::write(
        &p,
        "policies:\n- name: hello\n  selector: {actor: demo/hello}\n  rules:\n  \
         - actors: {targets: ['demo/b*']}\n",
    )
    .unwrap();
    let base = [
        "--policy",
        p.to_str().unwrap(),
        "--actor",
        "demo/hello",
        "--dst",
        "203.0.113.7:8080",
        "--host",
        "bob.demo.actors.resources.substrate.ate.dev",
    ];
    let (code, out, err) = policy_test(&base);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(
        field(&out, "reason").starts_with("actor_forwarding_not_configured"),
        "{out}"
    );
    let (code, out, err) = policy_test(&[&base[..], &["--actor-forwarding"]].concat());
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(field(&out, "rule"), "hello rules[0] (actors)", "{out}");
    assert_eq!(
        field(&out, "dial"),
        "actor demo/bob through ingress (bob.demo.actors.resources.substrate.ate.dev:8080)",
        "{out}"
    );
    let other = [
        &base[..4],
        &[
            "--dst",
            "203.0.113.7:8080",
            "--host",
            "carol.demo.actors.resources.substrate.ate.dev",
            "--actor-forwarding",
        ],
    ]
    .concat();
    let (code, out, _) = policy_test(&other);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        field(&out, "reason").starts_with("no_matching_rule"),
        "{out}"
    );
}
