//! Config sections composed by the binary (issue 10): `directory` is required only by the
//! components that route requests to actors (the ingress proxy, `ingress.resolve`, ExtProc,
//! ResolveRoute, the control-plane simulator). A config with only `admin` loads and its gateway
//! becomes ready without any directory check; `admin` + `ingress` with an `ateapi` directory
//! loads; a component that needs a directory without one is one line naming `directory` and
//! the component.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use routing_core::testing::{FakeControlPlane, Method};

/// `actorgate check-config` of `yaml` written to `dir` → (exit code, stdout, stderr).
fn check_config(dir: &Path, yaml: &str) -> (Option<i32>, String, String) {
    let path = dir.join("check.yaml");
    std::fs::write(&path, yaml).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_actorgate"))
        .arg("check-config")
        .arg(&path)
        .env_remove("RUST_LOG")
        .output()
        .expect("run actorgate check-config");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Every `wants` fragment is in a line of `stderr`, and every line is one problem
/// (`actorgate: <file>: <field>: <what>`).
fn assert_problems(stderr: &str, wants: &[&str]) {
    for want in wants {
        assert!(
            stderr.lines().any(|l| l.contains(want)),
            "missing {want:?} in:\n{stderr}"
        );
    }
    assert!(
        stderr.lines().all(|l| l.starts_with("actorgate: ")),
        "one line per problem:\n{stderr}"
    );
}

/// The effective config `check-config` printed, as a tree.
fn effective(stdout: &str) -> serde_json::Value {
    serde_saphyr::from_str(stdout).unwrap_or_else(|e| panic!("unparsable ({e}):\n{stdout}"))
}

#[tokio::test]
async fn only_admin_loads_and_is_ready_without_a_directory_check() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = "admin: {listen: '127.0.0.1:0'}\n";
    let (code, stdout, stderr) = check_config(dir.path(), yaml);
    assert_eq!(code, Some(0), "{stderr}");
    // The effective config says what runs: nothing that routes to actors.
    let v = effective(&stdout);
    assert_eq!(v["ingress"]["enabled"], false, "{stdout}");
    assert_eq!(v["grpc"]["extproc"], false, "{stdout}");
    assert_eq!(v["grpc"]["resolve_route"], false, "{stdout}");
    assert!(v.get("directory").is_none(), "{stdout}");

    let config = dir.path().join("actorgate.yaml");
    std::fs::write(&config, yaml).unwrap();
    let gw = Gateway::start(&config).await;
    let (status, body) = within(BOUND, "/readyz", get(gw.admin, "/readyz"))
        .await
        .unwrap_or_else(|e| panic!("/readyz: {e}\n{}", gw.log_text()));
    // Ready at once: there is no directory probe to wait for.
    assert_eq!(status, 200, "{body}\n{}", gw.log_text());
    let (_, status_json) = within(BOUND, "/statusz", get(gw.admin, "/statusz?format=json"))
        .await
        .unwrap();
    let s: serde_json::Value = serde_json::from_str(&status_json).unwrap();
    // No directory, so no directory section with a probe result (or a stand-in that was never
    // probed).
    let d = &s["directory"];
    assert!(
        d.is_null() || (d["kind"] == "none" && d["health"]["checked_at"].is_null()),
        "{status_json}"
    );
    // Only the admin listener was bound.
    let bound: Vec<String> = listening_addresses(&gw.log_text()).into_keys().collect();
    assert_eq!(bound, ["admin"], "{}", gw.log_text());
}

#[tokio::test]
async fn admin_and_ingress_with_an_ateapi_directory_load_and_probe_it() {
    let fake = FakeControlPlane::start().await;
    let dir = tempfile::tempdir().unwrap();
    let directory = format!(
        "directory: {{ateapi: {{address: '{}', tls: plaintext}}}}\n",
        fake.addr
    );
    let only = format!(
        "admin: {{listen: '127.0.0.1:0'}}\ningress: {{http: {{listen: '127.0.0.1:0'}}}}\n{directory}"
    );
    let (code, stdout, stderr) = check_config(dir.path(), &only);
    assert_eq!(code, Some(0), "{stderr}");
    let v = effective(&stdout);
    assert_eq!(v["ingress"]["enabled"], true, "{stdout}");
    assert_eq!(v["grpc"]["extproc"], true, "with a directory: {stdout}");

    // Served (the gRPC listener, on by default with a directory, on port 0 too): readiness
    // now waits for the directory's probe, which the fake answers.
    let config = dir.path().join("actorgate.yaml");
    std::fs::write(&config, format!("{only}grpc: {{listen: '127.0.0.1:0'}}\n")).unwrap();
    let gw = Gateway::start(&config).await;
    gw.wait_ready().await;
    assert!(
        fake.calls(Method::ListActors, "") >= 1,
        "ready only after a directory probe"
    );
    let (_, status_json) = within(BOUND, "/statusz", get(gw.admin, "/statusz?format=json"))
        .await
        .unwrap();
    let s: serde_json::Value = serde_json::from_str(&status_json).unwrap();
    assert_eq!(s["directory"]["kind"], "ateapi", "{status_json}");
    assert_eq!(s["directory"]["health"]["healthy"], true, "{status_json}");
}

#[test]
fn a_component_that_routes_to_actors_without_a_directory_is_one_line_naming_both() {
    let dir = tempfile::tempdir().unwrap();
    for (yaml, component) in [
        (
            "admin: {listen: '127.0.0.1:0'}\ningress: {http: {listen: '127.0.0.1:0'}}\n",
            "ingress",
        ),
        (
            "admin: {listen: '127.0.0.1:0'}\ningress: {enabled: false, resolve: {listen: '127.0.0.1:0'}}\n",
            "ingress.resolve",
        ),
        (
            "admin: {listen: '127.0.0.1:0'}\ngrpc: {listen: '127.0.0.1:0', extproc: true}\n",
            "grpc.extproc",
        ),
    ] {
        let (code, _, stderr) = check_config(dir.path(), yaml);
        assert_eq!(code, Some(2), "{yaml}\n{stderr}");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "one line:\n{stderr}");
        let want = format!("check.yaml: directory: is required by {component} (it routes");
        assert!(lines[0].contains(&want), "want {want:?}:\n{stderr}");
    }
    // Several at once: still one line, naming each.
    let (code, _, stderr) = check_config(
        dir.path(),
        "ingress: {http: {listen: '127.0.0.1:0'}}\ngrpc: {resolve_route: true}\n",
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("directory: is required by ingress, grpc.resolve_route (they route"),
        "{stderr}"
    );
}

#[test]
fn the_resolve_listener_is_optional_and_named_in_problems() {
    let dir = tempfile::tempdir().unwrap();
    let directory = "directory: {static: {}}\n";
    let (code, stdout, stderr) = check_config(
        dir.path(),
        &format!(
            "admin: {{listen: '127.0.0.1:9090'}}\n\
             ingress: {{http: {{listen: '127.0.0.1:0'}}, resolve: {{listen: '127.0.0.1:8081'}}}}\n\
             grpc: {{listen: '127.0.0.1:0'}}\n{directory}"
        ),
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(
        effective(&stdout)["ingress"]["resolve"]["listen"],
        "127.0.0.1:8081"
    );
    // Off by default: not in the effective config.
    let (_, stdout, _) = check_config(dir.path(), directory);
    assert!(
        effective(&stdout)["ingress"].get("resolve").is_none(),
        "{stdout}"
    );
    let (code, _, stderr) = check_config(
        dir.path(),
        &format!(
            "admin: {{listen: '127.0.0.1:9090'}}\n\
             ingress: {{http: {{listen: '127.0.0.1:0'}}, resolve: {{listen: '127.0.0.1:9090'}}}}\n\
             grpc: {{listen: '127.0.0.1:0'}}\n{directory}"
        ),
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr
            .trim_end()
            .ends_with("ingress.resolve.listen: 127.0.0.1:9090 is also admin.listen"),
        "{stderr}"
    );
}

/// Writes the egress demo's certificates (`actorgate dev-ca egress-demo`) into `dir`.
fn egress_demo_certs(dir: &Path) {
    let out = Command::new(env!("CARGO_BIN_EXE_actorgate"))
        .args(["dev-ca", "egress-demo", "--dir"])
        .arg(dir)
        .output()
        .expect("run actorgate dev-ca egress-demo");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A valid `egress` section with the demo certificates in `dir` and a policy file `p.yaml`.
fn egress_section(dir: &Path, extra: &str) -> String {
    std::fs::write(
        dir.join("p.yaml"),
        "policies:\n- name: p\n  selector: {atespace: demo}\n  rules:\n  - tcp: {cidrs: [10.0.0.0/8], ports: all}\n",
    )
    .unwrap();
    let d = dir.display();
    format!(
        "egress:\n  listen: '127.0.0.1:0'\n  tls: {{cert_file: '{d}/pep.crt', key_file: '{d}/pep.key', \
         client_ca_file: '{d}/ca.crt', client_auth: required}}\n  policy: {{files: [p.yaml]}}\n{extra}"
    )
}

#[test]
fn egress_is_off_without_its_section_and_on_with_it() {
    let dir = tempfile::tempdir().unwrap();
    egress_demo_certs(dir.path());
    let (code, stdout, stderr) = check_config(dir.path(), "directory: {static: {}}\n");
    assert_eq!(code, Some(0), "{stderr}");
    let v = effective(&stdout);
    assert_eq!(v["egress"]["enabled"], false, "{stdout}");
    assert_eq!(v["egress"]["listen"], "0.0.0.0:15008", "{stdout}");

    let yaml = format!(
        "admin: {{listen: '127.0.0.1:0'}}\ndirectory: {{static: {{}}}}\n{}",
        egress_section(dir.path(), "")
    );
    let (code, stdout, stderr) = check_config(dir.path(), &yaml);
    assert_eq!(code, Some(0), "{stderr}");
    let v = effective(&stdout);
    assert_eq!(v["egress"]["enabled"], true, "{stdout}");
    assert_eq!(v["egress"]["policy"]["source"], "files", "{stdout}");
    assert_eq!(v["egress"]["liveness"]["ttl"], "2s", "{stdout}");

    // The policy files are checked too: each problem names the file and its field.
    std::fs::write(
        dir.path().join("p.yaml"),
        "policies:\n- name: p\n  selector: {atespace: demo}\n  rules:\n  - http: {hostnames: ['Bad_Name']}\n",
    )
    .unwrap();
    let (code, _, stderr) = check_config(dir.path(), &yaml);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("egress.policy.files[0]: ")
            && stderr.contains("p.yaml: policies[0].rules[0].http.hostnames[0]: "),
        "{stderr}"
    );
}

#[test]
fn egress_problems_are_one_line_each_with_their_path() {
    let dir = tempfile::tempdir().unwrap();
    // No tls, no policy files, no directory, bad lists: every problem at once.
    let (code, _, stderr) = check_config(
        dir.path(),
        "admin: {listen: '127.0.0.1:0'}\n\
         egress:\n  trust_domain: 'Not A Domain'\n  guard: {private: ['10.0.0.1/8']}\n\
         \x20 resolver: {static: {'svc.local': ['nope']}}\n  limits: {peek_timeout: 1m, stream_buffer_bytes: 1000}\n",
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert_problems(
        &stderr,
        &[
            "check.yaml: egress.tls: is required",
            "check.yaml: egress.trust_domain: \"Not A Domain\" is not a valid SPIFFE trust domain",
            "check.yaml: egress.policy.files: name at least one policy file",
            "check.yaml: egress.guard.private[0]: \"10.0.0.1/8\" has host bits set",
            "check.yaml: egress.resolver.static.svc.local[0]: invalid IP address \"nope\"",
            "check.yaml: egress.limits.peek_timeout: 1m is above classify_timeout (5s)",
            "check.yaml: egress.limits.stream_buffer_bytes: 1000 is out of range (65536 to 67108864)",
            "check.yaml: directory: is required by egress",
        ],
    );

    // client_auth other than required; a listener collision; the ateapi source without an
    // ateapi directory.
    egress_demo_certs(dir.path());
    let section = egress_section(dir.path(), "")
        .replace("client_auth: required", "client_auth: optional")
        .replace("listen: '127.0.0.1:0'", "listen: '127.0.0.1:9090'")
        .replace("policy: {files: [p.yaml]}", "policy: {source: ateapi}");
    let (code, _, stderr) = check_config(
        dir.path(),
        &format!("admin: {{listen: '127.0.0.1:9090'}}\ndirectory: {{static: {{}}}}\n{section}"),
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert_problems(
        &stderr,
        &[
            "egress.tls.client_auth: must be required",
            "egress.listen: 127.0.0.1:9090 is also admin.listen",
            "egress.policy.source: ateapi asks GetActorEgressPolicy over directory.ateapi",
        ],
    );
}

/// `egress.interception`: the demo's interception CA (written by `dev-ca egress-demo`) is
/// accepted with its defaults; every problem is one line naming its field.
#[test]
fn egress_interception_is_checked_field_by_field() {
    let dir = tempfile::tempdir().unwrap();
    egress_demo_certs(dir.path());
    for f in [
        "intercept-ca.crt",
        "intercept-ca.key",
        "echo.crt",
        "echo.key",
    ] {
        assert!(
            dir.path().join(f).exists(),
            "dev-ca egress-demo wrote no {f}"
        );
    }
    let d = dir.path().display();
    let good = format!(
        "  interception: {{ca_cert_file: '{d}/intercept-ca.crt', ca_key_file: '{d}/intercept-ca.key'}}\n"
    );
    let yaml = format!(
        "admin: {{listen: '127.0.0.1:0'}}\ndirectory: {{static: {{}}}}\n{}",
        egress_section(dir.path(), &good)
    );
    let (code, stdout, stderr) = check_config(dir.path(), &yaml);
    assert_eq!(code, Some(0), "{stderr}");
    let v = effective(&stdout);
    let i = &v["egress"]["interception"];
    assert_eq!(i["leaf_lifetime"], "15m", "{stdout}");
    assert_eq!(i["readable_denials"], true, "{stdout}");
    assert_eq!(i["upstream"]["system_roots"], true, "{stdout}");

    let bad = format!(
        "  interception:\n    ca_cert_file: '{d}/missing.crt'\n    ca_key_file: '{d}/intercept-ca.key'\n\
         \x20   leaf_lifetime: 10m\n    renew_before: 10m\n    max_concurrent_mints: 0\n\
         \x20   handshake_timeout: 0s\n    upstream: {{system_roots: false}}\n"
    );
    let yaml = format!(
        "admin: {{listen: '127.0.0.1:0'}}\ndirectory: {{static: {{}}}}\n{}",
        egress_section(dir.path(), &bad)
    );
    let (code, _, stderr) = check_config(dir.path(), &yaml);
    assert_eq!(code, Some(2), "{stderr}");
    assert_problems(
        &stderr,
        &[
            "egress.interception.ca_cert_file: ",
            "egress.interception.renew_before: 10m is not below leaf_lifetime (10m)",
            "egress.interception.max_concurrent_mints: 0 is out of range (1 to 256)",
            "egress.interception.handshake_timeout: ",
            "egress.interception.upstream: trusts nothing",
        ],
    );
}

/// `egress.actor_forwarding`: the PEP's own TLS files are its defaults; every problem is one
/// line naming its field.
#[test]
fn egress_actor_forwarding_is_checked_field_by_field() {
    let dir = tempfile::tempdir().unwrap();
    egress_demo_certs(dir.path());
    let good = "  actor_forwarding:\n    ingress: '127.0.0.1:8443'\n    ingress_addresses: [10.96.0.20, '10.96.0.21:80', '::1']\n";
    let yaml = format!(
        "admin: {{listen: '127.0.0.1:0'}}\ndirectory: {{static: {{}}}}\n{}",
        egress_section(dir.path(), good)
    );
    let (code, stdout, stderr) = check_config(dir.path(), &yaml);
    assert_eq!(code, Some(0), "{stderr}");
    let v = effective(&stdout);
    assert_eq!(
        v["egress"]["actor_forwarding"]["ingress"], "127.0.0.1:8443",
        "{stdout}"
    );

    let d = dir.path().display();
    let bad = format!(
        "  actor_forwarding:\n    ingress: 'ingress-without-port'\n    server_name: 'not a name'\n\
         \x20   cert_file: '{d}/missing.crt'\n    ingress_addresses: [10.96.0.0/16]\n"
    );
    let yaml = format!(
        "admin: {{listen: '127.0.0.1:0'}}\ndirectory: {{static: {{}}}}\n{}",
        egress_section(dir.path(), &bad)
    );
    let (code, _, stderr) = check_config(dir.path(), &yaml);
    assert_eq!(code, Some(2), "{stderr}");
    assert_problems(
        &stderr,
        &[
            "egress.actor_forwarding.ingress: \"ingress-without-port\" is not host:port",
            "egress.actor_forwarding.server_name: \"not a name\" is not a DNS name or IP address",
            "egress.actor_forwarding.cert_file: ",
            "egress.actor_forwarding.key_file: set cert_file and key_file together",
            "egress.actor_forwarding.ingress_addresses[0]: \"10.96.0.0/16\" is not an IP address or ip:port",
        ],
    );
}

/// `egress.credentials`: providers by class, each one kind; every problem names its field.
#[test]
fn egress_credentials_are_checked_field_by_field() {
    let dir = tempfile::tempdir().unwrap();
    egress_demo_certs(dir.path());
    std::fs::create_dir_all(dir.path().join("secrets")).unwrap();
    let good = "  credentials:\n    providers:\n    - {class: vault, grpc: {address: '127.0.0.1:8443', server_name: localhost}}\n    \
                - {class: local, files: {dir: secrets}}\n    - {class: env, env: {allow: [OPENAI_API_KEY]}}\n";
    let yaml = format!(
        "admin: {{listen: '127.0.0.1:0'}}\ndirectory: {{static: {{}}}}\n{}",
        egress_section(dir.path(), good)
    );
    let (code, stdout, stderr) = check_config(dir.path(), &yaml);
    assert_eq!(code, Some(0), "{stderr}");
    let v = effective(&stdout);
    assert_eq!(v["egress"]["credentials"]["secret_ttl"], "30s", "{stdout}");
    assert_eq!(
        v["egress"]["credentials"]["providers"][1]["class"], "local",
        "{stdout}"
    );

    let bad = "  credentials:\n    secret_ttl: 0s\n    providers:\n    - {class: Vault!, grpc: {address: 'nope'}}\n    \
               - {class: local, files: {dir: missing}, env: {allow: [X]}}\n    - {class: env, env: {allow: ['A=B']}}\n    \
               - {class: env, files: {dir: secrets}}\n";
    let yaml = format!(
        "admin: {{listen: '127.0.0.1:0'}}\ndirectory: {{static: {{}}}}\n{}",
        egress_section(dir.path(), bad)
    );
    let (code, _, stderr) = check_config(dir.path(), &yaml);
    assert_eq!(code, Some(2), "{stderr}");
    assert_problems(
        &stderr,
        &[
            "egress.credentials.secret_ttl: ",
            "egress.credentials.providers[0].class: \"Vault!\" is not a provider class",
            "egress.credentials.providers[0].grpc.address: \"nope\" is not host:port",
            "egress.credentials.providers[1]: set exactly one of grpc, files, env",
            "egress.credentials.providers[2].env.allow[0]: \"A=B\" is not an environment variable name",
            "egress.credentials.providers[3].class: \"env\" repeated",
        ],
    );
}

/// `agent`: every problem is one line naming its field.
#[test]
fn agent_problems_are_one_line_each_with_their_path() {
    let dir = tempfile::tempdir().unwrap();
    egress_demo_certs(dir.path());
    let d = dir.path().display();
    let (code, _, stderr) = check_config(
        dir.path(),
        &format!(
            "admin: {{listen: '127.0.0.1:15001'}}\ningress: {{enabled: false}}\n\
             agent:\n  listen: ['127.0.0.1:15001', 'nope']\n  mode: bogus\n  connect_timeout: 0s\n\
             \x20 proxy_name_servers: ['10.0.0.53:53', 'dns.test']\n\
             \x20 pep: {{address: 'pep:15008', server_name: 'bad name', ca_file: '{d}/ca.crt', \
             cert_file: '{d}/missing.crt', key_file: '{d}/demo.hello.key'}}\n"
        ),
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert_problems(
        &stderr,
        &[
            "agent.listen[1]: invalid socket address \"nope\"",
            "agent.pep.address: invalid socket address \"pep:15008\"",
            "agent.pep.server_name: \"bad name\" is not a DNS name or IP address",
            "agent.pep.cert_file: ",
            "agent.mode: \"bogus\" is not a tunnel mode (per-connection or pooled)",
            "agent.connect_timeout: ",
            "agent.proxy_name_servers[1]: invalid socket address \"dns.test\"",
        ],
    );
}

/// `agent.assertion` (a shared agent's egress assertions): each problem names its field.
#[test]
fn agent_assertion_problems_are_named() {
    let dir = tempfile::tempdir().unwrap();
    egress_demo_certs(dir.path());
    let d = dir.path().display();
    let (code, _, stderr) = check_config(
        dir.path(),
        &format!(
            "admin: {{listen: '127.0.0.1:0'}}\ningress: {{enabled: false}}\n\
             agent:\n  pep: {{address: '127.0.0.1:15008', server_name: localhost, ca_file: '{d}/ca.crt', \
             cert_file: '{d}/pep.crt', key_file: '{d}/pep.key'}}\n\
             \x20 assertion: {{actor: 'not an actor', signing_key_file: '{d}/missing.pem', kid: '', \
             alg: HS256, issuer: atunnel, audience: actorgate-pep, lifetime: 5m}}\n"
        ),
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert_problems(
        &stderr,
        &[
            "agent.assertion.actor: ",
            "agent.assertion.signing_key_file: ",
            "agent.assertion.kid: must not be empty",
            "agent.assertion.alg: ",
            "agent.assertion.lifetime: ",
        ],
    );
}

/// `ingress.https.trusted_peers`: a bad entry is named by its index, and the list needs client
/// certificates to mean anything.
#[test]
fn trusted_peer_problems_are_named() {
    let dir = tempfile::tempdir().unwrap();
    egress_demo_certs(dir.path());
    let d = dir.path().display();
    let (code, _, stderr) = check_config(
        dir.path(),
        &format!(
            "admin: {{listen: '127.0.0.1:0'}}\n\
             ingress:\n  https:\n    tls: {{cert_file: '{d}/pep.crt', key_file: '{d}/pep.key'}}\n    \
             trusted_peers: ['spiffe://substrate-actor.local/ns/ate-system/sa/actorgate-pep', 'pep.example', \
             'spiffe://substrate-actor.local/ns*']\n"
        ),
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert_problems(
        &stderr,
        &[
            "ingress.https.trusted_peers: needs tls.client_auth optional or required",
            "ingress.https.trusted_peers[1]: \"pep.example\" is not a SPIFFE ID",
            "ingress.https.trusted_peers[2]: \"spiffe://substrate-actor.local/ns*\" is not a SPIFFE ID prefix",
        ],
    );
}

/// `signer`: each problem is named by its field.
#[test]
fn signer_problems_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let (code, _, stderr) = check_config(
        dir.path(),
        "admin: {listen: '127.0.0.1:0'}\nsigner: {key_file: missing.key, kid: '', alg: HS256, issuer: ''}\n",
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert_problems(
        &stderr,
        &[
            "signer.key_file: ",
            "signer.kid: must not be empty",
            "signer.alg: ",
            "signer.issuer: must not be empty",
        ],
    );
    // A file that is not a key of the algorithm.
    std::fs::write(dir.path().join("not.key"), "not a key\n").unwrap();
    let (code, _, stderr) = check_config(
        dir.path(),
        "admin: {listen: '127.0.0.1:0'}\nsigner: {key_file: not.key, kid: k1, issuer: https://i.test}\n",
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("signer.key_file: "), "{stderr}");
}

/// `grpc.trusted_peers`: needs client certificates; bad entries are named by index.
#[test]
fn grpc_trusted_peer_problems_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let (code, _, stderr) = check_config(
        dir.path(),
        "admin: {listen: '127.0.0.1:0'}\ngrpc: {trusted_peers: ['spiffe://substrate-actor.local/ns/ate-system/sa/pep', 'nope']}\n",
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert_problems(
        &stderr,
        &[
            "grpc.trusted_peers: needs tls.client_auth optional or required",
            "grpc.trusted_peers[1]: \"nope\" is not a SPIFFE ID",
        ],
    );
}

/// `grpc.extproc_source_actor`: the identity source is one of two, the list is not empty and
/// holds SPIFFE IDs.
#[test]
fn extproc_source_actor_problems_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let (code, _, stderr) = check_config(
        dir.path(),
        "admin: {listen: '127.0.0.1:0'}\ngrpc: {extproc_source_actor: {peer_identity: xfcc, trusted_peers: ['nope']}}\n",
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("grpc.extproc_source_actor.trusted_peers[0]: \"nope\" is not a SPIFFE ID"),
        "{stderr}"
    );
    let (code, _, stderr) = check_config(
        dir.path(),
        "admin: {listen: '127.0.0.1:0'}\ngrpc: {extproc_source_actor: {peer_identity: header, trusted_peers: []}}\n",
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("grpc.extproc_source_actor.peer_identity"),
        "{stderr}"
    );
    let (code, _, stderr) = check_config(
        dir.path(),
        "admin: {listen: '127.0.0.1:0'}\ngrpc: {extproc_source_actor: {peer_identity: uri_san, trusted_peers: []}}\n",
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("grpc.extproc_source_actor.trusted_peers: name at least one peer"),
        "{stderr}"
    );
}

/// The simulator mints actor tokens for whoever calls it: with a signer it must be on loopback
/// or behind client certificates.
#[test]
fn a_signer_needs_a_closed_simulator() {
    let dir = tempfile::tempdir().unwrap();
    let (code, _, stderr) = check_config(
        dir.path(),
        "admin: {listen: '127.0.0.1:0'}\ngrpc: {listen: '0.0.0.0:50051', control_plane_simulator: true}\n\
         directory: {static: {actors: []}}\nsigner: {key_file: k.pem, kid: k1, issuer: https://i.test}\n",
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.lines().any(|l| l.contains(
            "signer: the control-plane simulator would mint actor tokens for anyone who reaches grpc.listen"
        )),
        "{stderr}"
    );
    let (_, _, stderr) = check_config(
        dir.path(),
        "admin: {listen: '127.0.0.1:0'}\ngrpc: {listen: '127.0.0.1:50051', control_plane_simulator: true}\n\
         directory: {static: {actors: []}}\nsigner: {key_file: k.pem, kid: k1, issuer: https://i.test}\n",
    );
    assert!(
        !stderr.contains("would mint actor tokens"),
        "loopback is closed enough: {stderr}"
    );
}
