//! The HTTP resolve endpoint with the real nginx from Debian: the deploy/ `auth_request` example
//! routes to the worker actorgate names and answers routing failures with actorgate's status and
//! body.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

struct Nginx(std::process::Child);

/// Attempts at a port for nginx before giving up.
const PORT_ATTEMPTS: usize = 5;

impl Nginx {
    /// Starts nginx with the config `conf(listen)` on a free port and waits until it listens.
    /// nginx cannot report a port it bound itself (no port 0), so the port is picked free
    /// beforehand; if something took it in between (nginx fails with "Address already in use"),
    /// another is tried, at most [`PORT_ATTEMPTS`] times. Fails with nginx's log otherwise.
    async fn start(dir: &Path, conf: impl Fn(SocketAddr) -> String) -> (Self, SocketAddr, PathBuf) {
        let log = dir.join("nginx-error.log");
        for _ in 0..PORT_ATTEMPTS {
            let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
            let conf_path = dir.join("nginx.conf");
            std::fs::write(&conf_path, conf(listen)).unwrap();
            let _ = std::fs::remove_file(&log);
            let child = Command::new("nginx")
                .arg("-c")
                .arg(&conf_path)
                .arg("-e")
                .arg(&log)
                .args([
                    "-g",
                    &format!("daemon off; pid {}/nginx.pid;", dir.display()),
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn nginx");
            let mut nginx = Nginx(child);
            let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
            let listening = eventually(BOUND, "nginx listens or exits", async || {
                if let Some(status) = nginx.0.try_wait().unwrap() {
                    return Some(Err(status));
                }
                tokio::net::TcpStream::connect(listen)
                    .await
                    .is_ok()
                    .then_some(Ok(()))
            })
            .await;
            match listening {
                Ok(()) => return (nginx, listen, log),
                Err(_) if log_text().contains("Address already in use") => continue,
                Err(status) => panic!("nginx exited ({status}):\n{}", log_text()),
            }
        }
        panic!("nginx found no free port in {PORT_ATTEMPTS} attempts")
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM lets the master stop its workers; SIGKILL would orphan them.
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        for _ in 0..100 {
            if matches!(self.0.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn get(addr: SocketAddr, headers: &[(&str, &str)]) -> (u16, http::HeaderMap, String) {
    request(addr, "/echo", headers).await
}

#[tokio::test]
async fn nginx_auth_request_routes_by_the_resolve_endpoint() {
    assert!(
        Command::new("nginx").arg("-v").output().is_ok(),
        "nginx is required (apt-get install nginx-light; .ci/run installs it)"
    );
    let (worker, _w) = echo_worker("127.0.0.1:0", "via-nginx").await;
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::ready(
        dir.path(),
        &format!(
            "admin: {{listen: ADMIN_ADDR}}\n\
             ingress: {{enabled: false, resolve: {{listen: '127.0.0.1:0'}}}}\n\
             resolver: {{budget: 300ms}}\n\
             directory: {{static: {{actors: [{{atespace: demo, name: hello, template: demo/echo, endpoint: '{worker}'}},\n\
             {{atespace: demo, name: broken, state: crashed, endpoint: '{worker}'}}]}}}}\n"
        ),
    )
    .await;
    let admin = gw.admin;
    let resolve = gw.addr("ingress_resolve");
    // The resolve endpoint resumes actors: it is not on the admin port.
    for path in ["/resolve", "/resolve/error"] {
        let (s, _, _) = request(admin, path, &[("ate-target-actor", "demo/hello")]).await;
        assert_eq!(s, 404, "{path} on the admin port");
    }

    let example = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/nginx/auth-request.conf"
    ))
    .unwrap();
    for fixed in ["server 127.0.0.1:9091;", "listen 127.0.0.1:8081;"] {
        assert!(example.contains(fixed), "the example has {fixed:?}");
    }
    std::fs::create_dir_all(dir.path().join("tmp")).unwrap();
    let conf = |listen: SocketAddr| {
        example
            .replace("server 127.0.0.1:9091;", &format!("server {resolve};"))
            .replace("listen 127.0.0.1:8081;", &format!("listen {listen};"))
            .replace("worker_processes auto;", "worker_processes 1;")
            .replace(
                "http {",
                &format!(
                    "http {{\n  client_body_temp_path {d}/tmp; proxy_temp_path {d}/tmp; fastcgi_temp_path {d}/tmp; uwsgi_temp_path {d}/tmp; scgi_temp_path {d}/tmp;",
                    d = dir.path().display()
                ),
            )
    };
    let (_nginx, listen, log) = Nginx::start(dir.path(), conf).await;

    // The resolve endpoint itself: the route in response headers, template included.
    let (s, h, _) = request(resolve, "/resolve", &[("ate-target-actor", "demo/hello")]).await;
    assert_eq!(s, 200);
    assert_eq!(
        h["x-gateway-destination-endpoint"],
        worker.to_string().as_str()
    );
    assert_eq!(h["ate-target-actor"], "demo/hello");
    assert_eq!(h["x-actor-template"], "demo/echo");
    assert!(
        h.get("x-ate-target-port").is_none(),
        "plain worker transport"
    );

    let (s, h, body) = get(
        listen,
        &[
            ("ate-target-actor", "demo/hello"),
            ("ate-source-actor", "evil/x"),
            ("x-ate-target-port", "22"),
        ],
    )
    .await;
    assert_eq!(
        s,
        200,
        "{body}\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert_eq!(h["x-echo-worker"], "via-nginx");
    assert!(
        body.contains(&format!("\"x-gateway-destination-endpoint\",\"{worker}\"")),
        "{body}"
    );
    assert!(
        body.contains("\"ate-target-actor\",\"demo/hello\""),
        "{body}"
    );
    assert!(!body.contains("evil/x"), "{body}");
    assert!(
        !body.contains("x-ate-target-port"),
        "client's actor port dropped: {body}"
    );

    let (s, _, body) = get(
        listen,
        &[("host", "hello.demo.actors.resources.substrate.ate.dev")],
    )
    .await;
    assert_eq!(s, 200, "{body}");

    let (s, h, body) = get(listen, &[("ate-target-actor", "demo/nobody")]).await;
    assert_eq!((s, body.as_str()), (404, "actor demo/nobody not found"));
    assert!(
        h["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let (s, _, body) = get(listen, &[("host", "example.com")]).await;
    assert_eq!((s, body.as_str()), (404, "invalid actor reference"));
    // A crashed actor cannot be resumed within the budget: 503 with the control plane's reason.
    let (s, _, body) = get(listen, &[("ate-target-actor", "demo/broken")]).await;
    assert_eq!(s, 503, "{body}");
    assert!(body.starts_with("actor demo/broken unavailable"), "{body}");

    // The resolve endpoint itself, as Traefik ForwardAuth would call it.
    let (s, body) = common::get_with(
        resolve,
        "/resolve",
        &[(
            "x-forwarded-host",
            "hello.demo.actors.resources.substrate.ate.dev",
        )],
    )
    .await
    .unwrap();
    assert_eq!((s, body.as_str()), (200, ""));
    // /resolve/error replays only the table's statuses and never passes internals through.
    let (s, body) = common::get_with(
        resolve,
        "/resolve/error",
        &[
            ("x-actorgate-status", "200"),
            ("x-actorgate-message", "rpc error: code = Internal"),
        ],
    )
    .await
    .unwrap();
    assert_eq!((s, body.as_str()), (500, "routing failed"));
    let (s, body) = common::get_with(
        resolve,
        "/resolve/error",
        &[
            ("x-actorgate-status", "503"),
            ("x-actorgate-message", "actor a/b unavailable"),
        ],
    )
    .await
    .unwrap();
    assert_eq!((s, body.as_str()), (503, "actor a/b unavailable"));
}
