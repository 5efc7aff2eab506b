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
