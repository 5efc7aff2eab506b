//! Development identity tooling: `actorgate dev-ca …` (a CA and the certificates the demo and
//! tests need) and `actorgate token …` (JWT signing keys, JWKS, actor tokens, egress assertions).
//! Keys are written with mode 0600; everything is PEM or JSON that curl, openssl and Envoy accept.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use identity::ActorIdentity;
use identity::devca::{DevCa, write_file};
use identity::keys::{encoding_key, generate_private_key_pem, parse_algorithm, public_jwk};
use identity::spiffe::DEFAULT_TRUST_DOMAIN;
use jsonwebtoken::jwk::JwkSet;

const DAY: u64 = 24 * 3600;

/// `actorgate dev-ca …`
#[derive(Subcommand)]
pub enum DevCaCommand {
    /// Create a CA (ca.crt, ca.key) in a directory.
    Init {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value = "actorgate development CA")]
        name: String,
        #[arg(long, default_value_t = 3650)]
        days: u64,
        /// Replace an existing CA in the directory.
        #[arg(long)]
        force: bool,
    },
    /// Create the egress interception CA (intercept-ca.crt, intercept-ca.key): the PEP signs the
    /// leaves of intercepted names with it, so actors must trust it (docs/egress.md). Separate
    /// from the development CA: trusting it lets the PEP speak for any name.
    InterceptCa {
        #[arg(long)]
        dir: PathBuf,
        /// Subject CN; default "actorgate egress interception CA <UTC creation time>", so CAs
        /// of a rotation overlap differ by name.
        #[arg(long)]
        name: Option<String>,
        #[arg(long, default_value_t = 365)]
        days: u64,
        /// Replace an existing interception CA in the directory.
        #[arg(long)]
        force: bool,
    },
    /// Write every certificate the egress demo (deploy/local/egress.yaml) expects, in one go:
    /// the CA (ca.crt, ca.key; an existing one in the directory is reused), the PEP's server
    /// certificate (pep.crt, pep.key: DNS localhost, IP 127.0.0.1 and ::1) and an actor
    /// certificate in upstream atunnel's form (<atespace>.<name>.crt/.key: URI SAN
    /// spiffe://<td>/ateom-for-actor/<atespace>/<name>, client-auth).
    EgressDemo {
        /// Where to write them (the demo config expects dev/egress).
        #[arg(long, default_value = "dev/egress")]
        dir: PathBuf,
        /// The actor, <atespace>/<name> (the demo's policy and directory name demo/hello).
        #[arg(long, default_value = "demo/hello")]
        actor: String,
        #[arg(long, default_value = DEFAULT_TRUST_DOMAIN)]
        trust_domain: String,
        /// Lifetime of the issued certificates (a new CA gets ten years).
        #[arg(long, default_value_t = 365)]
        days: u64,
    },
    /// Issue a server certificate (server-auth) for DNS names and IPs.
    Server {
        #[command(flatten)]
        common: IssueArgs,
        /// File stem of the output (<name>.crt, <name>.key).
        #[arg(long, default_value = "server")]
        name: String,
        #[arg(long = "dns")]
        dns: Vec<String>,
        #[arg(long = "ip")]
        ips: Vec<IpAddr>,
    },
    /// Issue an actor client certificate (spiffe://<td>/ateom-for-actor/<atespace>/<name>, as
    /// upstream's atunnel presents; client-auth).
    Actor {
        #[command(flatten)]
        common: IssueArgs,
        /// The actor, <atespace>/<name>.
        #[arg(long)]
        actor: String,
        #[arg(long)]
        uid: Option<String>,
        #[arg(long, default_value = DEFAULT_TRUST_DOMAIN)]
        trust_domain: String,
        /// Leave out the upstream ActorIdentity extension.
        #[arg(long)]
        no_extension: bool,
    },
    /// Issue a component certificate (spiffe://<td>/ns/<ns>/sa/<sa>, client- and server-auth).
    Component {
        #[command(flatten)]
        common: IssueArgs,
        #[arg(long)]
        namespace: String,
        #[arg(long)]
        service_account: String,
        #[arg(long, default_value = DEFAULT_TRUST_DOMAIN)]
        trust_domain: String,
        #[arg(long = "dns")]
        dns: Vec<String>,
        #[arg(long = "ip")]
        ips: Vec<IpAddr>,
    },
}

/// Arguments every issuing command takes.
#[derive(Args)]
pub struct IssueArgs {
    /// Directory holding ca.crt and ca.key.
    #[arg(long)]
    ca_dir: PathBuf,
    /// Where to write the certificate and key (default: the CA directory).
    #[arg(long)]
    out: Option<PathBuf>,
    #[arg(long, default_value_t = 365)]
    days: u64,
}

impl IssueArgs {
    fn ca(&self) -> Result<DevCa> {
        DevCa::load_dir(&self.ca_dir).with_context(|| format!("--ca-dir {}", self.ca_dir.display()))
    }
    fn out(&self) -> Result<PathBuf> {
        let out = self.out.clone().unwrap_or_else(|| self.ca_dir.clone());
        std::fs::create_dir_all(&out).with_context(|| format!("--out {}", out.display()))?;
        Ok(out)
    }
    fn lifetime(&self) -> Result<Duration> {
        if self.days == 0 || self.days > 36500 {
            bail!("--days must be between 1 and 36500");
        }
        Ok(Duration::from_secs(self.days * DAY))
    }
}

/// `actorgate token …`
#[derive(Subcommand)]
pub enum TokenCommand {
    /// Create a signing key (<kid>.key, 0600) and add its public key to jwks.json.
    Keygen {
        #[arg(long, default_value = "ES256")]
        alg: String,
        #[arg(long)]
        kid: String,
        #[arg(long)]
        out: PathBuf,
        /// Replace an existing key with the same kid.
        #[arg(long)]
        force: bool,
    },
    /// Mint an actor identity token (printed on stdout).
    Mint {
        #[command(flatten)]
        key: SigningArgs,
        #[arg(long)]
        audience: String,
        /// The actor, <atespace>/<name>.
        #[arg(long)]
        actor: String,
        #[arg(long)]
        uid: Option<String>,
        #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
        ttl: Duration,
    },
    /// Mint an egress assertion for an original destination (printed on stdout).
    MintAssertion {
        #[command(flatten)]
        key: SigningArgs,
        /// The PEP's audience.
        #[arg(long)]
        audience: String,
        #[arg(long)]
        actor: String,
        #[arg(long)]
        uid: Option<String>,
        /// The original destination, ip:port.
        #[arg(long)]
        dst: SocketAddr,
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        ttl: Duration,
    },
    /// Verify a token against a JWKS file and print its claims.
    Verify {
        #[arg(long)]
        jwks: PathBuf,
        #[arg(long)]
        issuer: String,
        #[arg(long)]
        audience: String,
        /// Check an egress assertion for this destination.
        #[arg(long)]
        dst: Option<SocketAddr>,
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        max_lifetime: Duration,
        /// The token; `-` reads it from stdin.
        token: String,
    },
}

/// The signing key of `mint` commands.
#[derive(Args)]
pub struct SigningArgs {
    /// Private key PEM written by `token keygen`.
    #[arg(long)]
    key: PathBuf,
    #[arg(long)]
    kid: String,
    #[arg(long, default_value = "ES256")]
    alg: String,
    #[arg(long)]
    issuer: String,
}

impl SigningArgs {
    fn signer(&self) -> Result<identity::Signer> {
        let alg = parse_algorithm(&self.alg).context("--alg")?;
        let pem =
            std::fs::read(&self.key).with_context(|| format!("--key {}", self.key.display()))?;
        identity::Signer::from_pem(alg, &self.kid, &pem, &self.issuer)
            .with_context(|| format!("--key {}", self.key.display()))
    }
}

fn actor(s: &str, uid: Option<String>) -> Result<ActorIdentity> {
    let a = ActorIdentity::parse_ref(s).with_context(|| format!("--actor {s:?}"))?;
    Ok(ActorIdentity { uid, ..a })
}

/// Creates a CA named `name` as `<stem>.crt`/`<stem>.key` in `dir`; an existing key is kept
/// unless `force` (`what` names it in the refusal).
fn create_ca(dir: &Path, stem: &str, what: &str, name: &str, days: u64, force: bool) -> Result<()> {
    let key = dir.join(format!("{stem}.key"));
    if key.exists() && !force {
        bail!(
            "{} already holds {what} ({stem}.key); pass --force to replace it",
            dir.display()
        );
    }
    if days == 0 || days > 36500 {
        bail!("--days must be between 1 and 36500");
    }
    let ca = DevCa::generate(name, Duration::from_secs(days * DAY))?;
    ca.write_named(dir, stem)
        .with_context(|| format!("--dir {}", dir.display()))?;
    wrote(&[dir.join(format!("{stem}.crt")), key]);
    Ok(())
}

fn wrote(paths: &[PathBuf]) {
    for p in paths {
        eprintln!("wrote {}", p.display());
    }
}

fn issued_paths(dir: &Path, stem: &str) -> Vec<PathBuf> {
    vec![
        dir.join(format!("{stem}.crt")),
        dir.join(format!("{stem}.key")),
    ]
}

/// Runs `actorgate dev-ca …`.
pub fn dev_ca(cmd: DevCaCommand) -> Result<()> {
    match cmd {
        DevCaCommand::Init {
            dir,
            name,
            days,
            force,
        } => create_ca(&dir, "ca", "a CA", &name, days, force)?,
        DevCaCommand::InterceptCa {
            dir,
            name,
            days,
            force,
        } => {
            let name = name.unwrap_or_else(|| {
                let now = time::OffsetDateTime::now_utc();
                format!(
                    "actorgate egress interception CA {:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
                    now.year(),
                    u8::from(now.month()),
                    now.day(),
                    now.hour(),
                    now.minute(),
                    now.second()
                )
            });
            create_ca(
                &dir,
                "intercept-ca",
                "an interception CA",
                &name,
                days,
                force,
            )?
        }
        DevCaCommand::EgressDemo {
            dir,
            actor: a,
            trust_domain,
            days,
        } => egress_demo(&dir, &a, &trust_domain, days)?,
        DevCaCommand::Server {
            common,
            name,
            dns,
            ips,
        } => {
            if dns.is_empty() && ips.is_empty() {
                bail!("give at least one --dns or --ip");
            }
            let out = common.out()?;
            common
                .ca()?
                .issue_server(&dns, &ips, common.lifetime()?)?
                .write(&out, &name)?;
            wrote(&issued_paths(&out, &name));
        }
        DevCaCommand::Actor {
            common,
            actor: a,
            uid,
            trust_domain,
            no_extension,
        } => {
            if !identity::spiffe::is_trust_domain(&trust_domain) {
                bail!("--trust-domain {trust_domain:?} is not a valid SPIFFE trust domain");
            }
            let id = actor(&a, uid)?;
            let out = common.out()?;
            // A dot never occurs in a DNS label, so "<atespace>.<name>" cannot collide.
            let stem = format!("{}.{}", id.atespace, id.name);
            common
                .ca()?
                .issue_actor(&trust_domain, &id, !no_extension, common.lifetime()?)?
                .write(&out, &stem)?;
            wrote(&issued_paths(&out, &stem));
        }
        DevCaCommand::Component {
            common,
            namespace,
            service_account,
            trust_domain,
            dns,
            ips,
        } => {
            if !identity::spiffe::is_trust_domain(&trust_domain) {
                bail!("--trust-domain {trust_domain:?} is not a valid SPIFFE trust domain");
            }
            if !identity::actor::is_dns_label(&namespace)
                || !identity::actor::is_dns_label(&service_account)
            {
                bail!("--namespace and --service-account must be DNS-1123 labels");
            }
            let out = common.out()?;
            let stem = format!("{namespace}.{service_account}");
            common
                .ca()?
                .issue_component(
                    &trust_domain,
                    &namespace,
                    &service_account,
                    &dns,
                    &ips,
                    common.lifetime()?,
                )?
                .write(&out, &stem)?;
            wrote(&issued_paths(&out, &stem));
        }
    }
    Ok(())
}

/// `actorgate dev-ca egress-demo`: the CA (reused when `dir` already holds one), the PEP's
/// server certificate, one actor certificate, the interception CA (kept when present), the
/// demo HTTPS origin's certificate (`echo.demo.internal`) and the demo credential
/// (`secrets/demo/api-key`, kept when present), as the egress demo config names them.
fn egress_demo(dir: &Path, a: &str, trust_domain: &str, days: u64) -> Result<()> {
    if !identity::spiffe::is_trust_domain(trust_domain) {
        bail!("--trust-domain {trust_domain:?} is not a valid SPIFFE trust domain");
    }
    if days == 0 || days > 36500 {
        bail!("--days must be between 1 and 36500");
    }
    let id = actor(a, None)?;
    let lifetime = Duration::from_secs(days * DAY);
    std::fs::create_dir_all(dir).with_context(|| format!("--dir {}", dir.display()))?;
    let ca = if dir.join("ca.key").exists() {
        let ca = DevCa::load_dir(dir).with_context(|| format!("--dir {}", dir.display()))?;
        eprintln!("using the CA in {}", dir.display());
        ca
    } else {
        let ca = DevCa::generate("actorgate development CA", Duration::from_secs(3650 * DAY))?;
        ca.write_dir(dir)
            .with_context(|| format!("--dir {}", dir.display()))?;
        wrote(&[dir.join("ca.crt"), dir.join("ca.key")]);
        ca
    };
    let loopback: [IpAddr; 2] = [
        IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
        IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
    ];
    ca.issue_server(&["localhost".to_owned()], &loopback, lifetime)?
        .write(dir, "pep")?;
    wrote(&issued_paths(dir, "pep"));
    let stem = format!("{}.{}", id.atespace, id.name);
    ca.issue_actor(trust_domain, &id, false, lifetime)?
        .write(dir, &stem)?;
    wrote(&issued_paths(dir, &stem));
    eprintln!(
        "actor certificate: {}",
        identity::spiffe::actor_id(trust_domain, &id)
    );
    // The HTTPS origin of the interception demo (`actorgate echo-worker --tls-cert …`).
    ca.issue_server(&[DEMO_ORIGIN.to_owned()], &[], lifetime)?
        .write(dir, "echo")?;
    wrote(&issued_paths(dir, "echo"));
    // The credential the demo's https rule injects (`ate-secret://local/demo/api-key`, files
    // provider `secrets/`): the actor sends a placeholder, the origin receives this.
    let secret = dir.join("secrets/demo/api-key");
    if !secret.exists() {
        std::fs::create_dir_all(dir.join("secrets/demo"))
            .with_context(|| format!("--dir {}", dir.display()))?;
        std::fs::write(&secret, "demo-api-key-not-a-real-secret\n")
            .with_context(|| format!("{}", secret.display()))?;
        wrote(std::slice::from_ref(&secret));
    }
    if dir.join("intercept-ca.key").exists() {
        eprintln!("using the interception CA in {}", dir.display());
    } else {
        create_ca(
            dir,
            "intercept-ca",
            "an interception CA",
            "actorgate demo interception CA",
            3650,
            false,
        )?;
    }
    Ok(())
}

/// The name of the egress demo's HTTPS origin (deploy/local/egress.yaml resolves it).
const DEMO_ORIGIN: &str = "echo.demo.internal";

/// Runs `actorgate token …`.
pub fn token(cmd: TokenCommand) -> Result<()> {
    match cmd {
        TokenCommand::Keygen {
            alg,
            kid,
            out,
            force,
        } => {
            let alg = parse_algorithm(&alg).context("--alg")?;
            if kid.is_empty()
                || !kid
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            {
                bail!("--kid must be non-empty and use only letters, digits, '-', '_' and '.'");
            }
            std::fs::create_dir_all(&out).with_context(|| format!("--out {}", out.display()))?;
            let pem = generate_private_key_pem(alg)?;
            let jwk = public_jwk(alg, &kid, &encoding_key(alg, pem.as_bytes())?)?;
            let jwks_path = out.join("jwks.json");
            let key_path = out.join(format!("{kid}.key"));
            if key_path.exists() && !force {
                bail!(
                    "{} exists; pass --force to replace the key",
                    key_path.display()
                );
            }
            let mut set = match std::fs::read(&jwks_path) {
                Ok(bytes) => serde_json::from_slice::<JwkSet>(&bytes)
                    .with_context(|| format!("{}", jwks_path.display()))?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => JwkSet { keys: vec![] },
                Err(e) => return Err(e).with_context(|| format!("{}", jwks_path.display())),
            };
            set.keys
                .retain(|k| k.common.key_id.as_deref() != Some(kid.as_str()));
            set.keys.push(jwk);
            write_file(&key_path, &pem, true)?;
            write_file(&jwks_path, &serde_json::to_string_pretty(&set)?, false)?;
            wrote(&[key_path, jwks_path]);
        }
        TokenCommand::Mint {
            key,
            audience,
            actor: a,
            uid,
            ttl,
        } => {
            println!(
                "{}",
                key.signer()?
                    .actor_token(&actor(&a, uid)?, &audience, ttl)?
            );
        }
        TokenCommand::MintAssertion {
            key,
            audience,
            actor: a,
            uid,
            dst,
            ttl,
        } => {
            let minter = identity::assertion::AssertionMinter::new(key.signer()?, &audience, ttl);
            println!("{}", minter.mint(&actor(&a, uid)?, dst)?);
        }
        TokenCommand::Verify {
            jwks,
            issuer,
            audience,
            dst,
            max_lifetime,
            token,
        } => {
            let token = if token == "-" {
                let mut s = String::new();
                std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)?;
                s.trim().to_owned()
            } else {
                token
            };
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let claims = rt.block_on(async {
                let keys = identity::jwks::KeySet::load(
                    identity::jwks::JwksSource::File(jwks.clone()),
                    Duration::ZERO,
                )
                .await
                .with_context(|| format!("--jwks {}", jwks.display()))?;
                let verifier = identity::Verifier::new(
                    keys,
                    identity::VerifierSettings {
                        issuers: vec![issuer],
                        audience,
                        leeway: Duration::from_secs(30),
                        max_lifetime,
                    },
                );
                let verified = match dst {
                    None => verifier.verify(&token).await.context("token refused")?,
                    Some(dst) => identity::assertion::AssertionVerifier::new(verifier, 16)
                        .verify(&token, dst)
                        .await
                        .context("assertion refused")?,
                };
                anyhow::Ok(verified.claims)
            })?;
            println!("{}", serde_json::to_string_pretty(&claims)?);
        }
    }
    Ok(())
}
