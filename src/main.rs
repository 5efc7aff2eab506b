//! `actorgate`: the ingress and egress gateway for actor platforms.
//!
//! Subcommands: `serve --config FILE` runs the configured components; `check-config FILE`
//! validates a config and prints the effective result; `policy test` decides one destination
//! for one actor against a config's egress policy source; `dev-ca`, `token` and `echo-worker`
//! are development tools.

mod agent;
mod allocator;
mod devtools;
mod policy;

use actorgate::{app, config};

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "actorgate",
    version,
    about = "Ingress and egress gateway for actor platforms"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway with a config file.
    Serve {
        /// The YAML config file (see deploy/local/actorgate.yaml).
        #[arg(long, short = 'c', env = "ACTORGATE_CONFIG")]
        config: PathBuf,
    },
    /// Validate a config file and print the effective config (defaults filled in).
    CheckConfig {
        /// The YAML config file.
        config: PathBuf,
    },
    /// A development CA: create it, issue server, actor and component certificates.
    #[command(subcommand)]
    DevCa(devtools::DevCaCommand),
    /// JWT tooling: signing keys and JWKS, actor tokens, egress assertions, verification.
    #[command(subcommand)]
    Token(devtools::TokenCommand),
    /// Egress policy tooling: `policy test` decides one destination for one actor.
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
    /// Tunnel agent tooling: the capture rules of an actor's network namespace.
    #[command(subcommand)]
    Agent(agent::AgentCommand),
    /// Run an echo worker (HTTP, SSE, WebSocket and gRPC echo) for demos, tests and benchmarks.
    EchoWorker {
        #[arg(long, default_value = "127.0.0.1:18080")]
        listen: std::net::SocketAddr,
        /// Reported in `x-echo-worker` and in echo bodies.
        #[arg(long, default_value = "echo")]
        name: String,
        /// Serve HTTPS (ALPN h2, http/1.1) with this certificate chain (PEM); needs `--tls-key`.
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<std::path::PathBuf>,
        /// The certificate's private key (PEM).
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<std::path::PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { config } => check_config(&config),
        Command::DevCa(cmd) => report(devtools::dev_ca(cmd)),
        Command::Token(cmd) => report(devtools::token(cmd)),
        // 0: passes (allow or audit), 1: denied, 2: no decision (bad config, source down).
        Command::Agent(cmd) => report(agent::run(cmd)),
        Command::Policy(cmd) => match policy::run(cmd) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::FAILURE,
            Err(e) => {
                for line in format!("{e:#}").lines() {
                    eprintln!("actorgate: {line}");
                }
                ExitCode::from(2)
            }
        },
        Command::EchoWorker {
            listen,
            name,
            tls_cert,
            tls_key,
        } => report(echo_worker(listen, name, tls_cert.zip(tls_key))),
        Command::Serve { config } => {
            allocator::tune();
            let loaded = match config::load(&config) {
                Ok(l) => l,
                Err(e) => return config_failed(&config, &e),
            };
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("actorgate: cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(app::run(loaded)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("actorgate: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn echo_worker(
    listen: std::net::SocketAddr,
    name: String,
    tls: Option<(std::path::PathBuf, std::path::PathBuf)>,
) -> anyhow::Result<()> {
    use anyhow::Context;
    let tls = match tls {
        None => None,
        Some((cert_file, key_file)) => {
            let files = identity::tls::ServerTlsFiles {
                cert_file,
                key_file,
                client_ca_file: None,
                client_auth: identity::tls::ClientAuth::None,
                client_trust_domain: None,
                alpn: vec![b"h2".to_vec(), b"http/1.1".to_vec()],
            };
            let config = identity::tls::ReloadableServerConfig::server(files)
                .context("--tls-cert/--tls-key")?;
            Some(config as std::sync::Arc<dyn runtime::listener::ServerTlsSource>)
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("--listen: cannot listen on {listen}"))?;
        // The address it got (the port, with `--listen 127.0.0.1:0`), for scripts and tests.
        let bound = listener
            .local_addr()
            .context("--listen: no local address")?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        eprintln!("echo worker {name} listening on {bound} ({scheme})");
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        ingress::echo::serve_with_tls(listener, name, tls, async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        })
        .await;
        anyhow::Ok(())
    })
}

/// Prints an error as one line and maps it to the exit code.
fn report(r: anyhow::Result<()>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("actorgate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn config_failed(path: &std::path::Path, e: &config::ConfigError) -> ExitCode {
    for line in e.to_string().lines() {
        eprintln!("actorgate: {}: {line}", path.display());
    }
    ExitCode::from(2)
}

fn check_config(path: &std::path::Path) -> ExitCode {
    match config::load(path) {
        Ok(loaded) => match serde_saphyr::to_string(&loaded.config) {
            Ok(yaml) => {
                print!("{yaml}");
                eprintln!("actorgate: {}: ok", path.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("actorgate: cannot print the effective config: {e}");
                ExitCode::FAILURE
            }
        },
        Err(e) => config_failed(path, &e),
    }
}
