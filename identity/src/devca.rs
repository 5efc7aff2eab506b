//! A development CA: creates a CA and issues server, actor and component certificates that the
//! rest of actorgate and common tools (curl, openssl, Envoy) accept. Not for production PKI.

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::OffsetDateTime;

use crate::actor::ActorIdentity;
use crate::spiffe;

/// Errors creating, loading or writing development certificates.
#[derive(Debug, thiserror::Error)]
pub enum DevCaError {
    /// rcgen could not generate a key or certificate.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    /// A CA file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// What the system said.
        source: std::io::Error,
    },
    /// An output file could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: String,
        /// What the system said.
        source: std::io::Error,
    },
    /// A name is not usable in a certificate (DNS name, atespace or actor name).
    #[error("invalid name {0:?}")]
    BadName(String),
}

/// A certificate and its private key, PEM encoded.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// Its private key, PKCS#8 PEM.
    pub key_pem: String,
}

impl Issued {
    /// Writes `<stem>.key` (mode 0600) and `<stem>.crt` into `dir`, each atomically.
    pub fn write(&self, dir: &Path, stem: &str) -> Result<(), DevCaError> {
        write_file(&dir.join(format!("{stem}.key")), &self.key_pem, true)?;
        write_file(&dir.join(format!("{stem}.crt")), &self.cert_pem, false)
    }
}

/// The development CA: a self-signed P-256 CA certificate and its key.
pub struct DevCa {
    cert_pem: String,
    key_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

fn validity(params: &mut CertificateParams, lifetime: Duration) {
    let now = OffsetDateTime::now_utc();
    // Backdate a little so peers with a slow clock accept new certificates.
    params.not_before = now - time::Duration::minutes(5);
    params.not_after =
        now + time::Duration::seconds(lifetime.as_secs().min(i64::MAX as u64) as i64);
}

fn named(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "actorgate development");
    dn.push(DnType::CommonName, cn);
    dn
}

fn uri(s: String) -> Result<SanType, DevCaError> {
    Ok(SanType::URI(
        s.clone().try_into().map_err(|_| DevCaError::BadName(s))?,
    ))
}

/// Adds DNS and IP subject alternative names.
fn add_names(
    params: &mut CertificateParams,
    dns: &[String],
    ips: &[IpAddr],
) -> Result<(), DevCaError> {
    for d in dns {
        let name = d
            .clone()
            .try_into()
            .map_err(|_| DevCaError::BadName(d.clone()))?;
        params.subject_alt_names.push(SanType::DnsName(name));
    }
    params
        .subject_alt_names
        .extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
    Ok(())
}

impl DevCa {
    /// Creates a new CA valid for `lifetime`.
    pub fn generate(common_name: &str, lifetime: Duration) -> Result<Self, DevCaError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = named(common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        validity(&mut params, lifetime);
        let cert = params.self_signed(&key)?;
        let cert_pem = cert.pem();
        let key_pem = key.serialize_pem();
        Ok(Self {
            issuer: Issuer::new(params, key),
            cert_pem,
            key_pem,
        })
    }

    /// Loads a CA written by `write` (or any CA certificate and PKCS#8 key in PEM).
    pub fn load(cert_pem: &str, key_pem: &str) -> Result<Self, DevCaError> {
        let key = KeyPair::from_pem(key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)?;
        Ok(Self {
            cert_pem: cert_pem.to_owned(),
            key_pem: key_pem.to_owned(),
            issuer,
        })
    }

    /// Loads `ca.crt` and `ca.key` from a directory.
    pub fn load_dir(dir: &Path) -> Result<Self, DevCaError> {
        let read = |name: &str| {
            let p = dir.join(name);
            std::fs::read_to_string(&p).map_err(|source| DevCaError::Read {
                path: p.display().to_string(),
                source,
            })
        };
        Self::load(&read("ca.crt")?, &read("ca.key")?)
    }

    /// Writes `ca.crt` and `ca.key` (0600) into `dir`, creating it.
    pub fn write_dir(&self, dir: &Path) -> Result<(), DevCaError> {
        self.write_named(dir, "ca")
    }

    /// Writes the CA as `<stem>.crt` and `<stem>.key` (mode 0600) into `dir` (created if
    /// missing), each atomically: for a second CA beside the first (the egress interception
    /// CA).
    pub fn write_named(&self, dir: &Path, stem: &str) -> Result<(), DevCaError> {
        std::fs::create_dir_all(dir).map_err(|source| DevCaError::Write {
            path: dir.display().to_string(),
            source,
        })?;
        write_file(&dir.join(format!("{stem}.crt")), &self.cert_pem, false)?;
        write_file(&dir.join(format!("{stem}.key")), &self.key_pem, true)
    }

    /// The CA certificate (PEM), the trust anchor to give peers.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// A server certificate for DNS names and IP addresses (server-auth EKU).
    pub fn issue_server(
        &self,
        dns: &[String],
        ips: &[IpAddr],
        lifetime: Duration,
    ) -> Result<Issued, DevCaError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = named(
            dns.first()
                .map(String::as_str)
                .unwrap_or("actorgate server"),
        );
        add_names(&mut params, dns, ips)?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(params, lifetime)
    }

    /// An actor client certificate: SPIFFE URI SAN, client-auth EKU, and (with `extension`) the
    /// upstream ActorIdentity extension.
    pub fn issue_actor(
        &self,
        trust_domain: &str,
        actor: &ActorIdentity,
        extension: bool,
        lifetime: Duration,
    ) -> Result<Issued, DevCaError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = named(&actor.actor_ref());
        params.subject_alt_names = vec![uri(spiffe::actor_id(trust_domain, actor))?];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        if extension {
            let json = serde_json::json!({
                "Atespace": actor.atespace,
                "ActorName": actor.name,
                "ActorUid": actor.uid.clone().unwrap_or_default(),
                "Purpose": "atunnel",
            });
            params
                .custom_extensions
                .push(CustomExtension::from_oid_content(
                    &[1, 3, 6, 1, 4, 1, 11129, 2, 12, 2],
                    json.to_string().into_bytes(),
                ));
        }
        self.sign(params, lifetime)
    }

    /// A platform component certificate (`spiffe://<td>/ns/<ns>/sa/<sa>`), usable as client and
    /// server (the PEP, ingress, a tunnel agent). Extra DNS/IP SANs help non-SPIFFE clients.
    pub fn issue_component(
        &self,
        trust_domain: &str,
        namespace: &str,
        service_account: &str,
        dns: &[String],
        ips: &[IpAddr],
        lifetime: Duration,
    ) -> Result<Issued, DevCaError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = named(&format!("{namespace}/{service_account}"));
        params.subject_alt_names = vec![uri(spiffe::component_uri(
            trust_domain,
            namespace,
            service_account,
        ))?];
        add_names(&mut params, dns, ips)?;
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ClientAuth,
            ExtendedKeyUsagePurpose::ServerAuth,
        ];
        self.sign(params, lifetime)
    }

    /// Signs arbitrary parameters (tests use it for deliberately wrong certificates). The key
    /// usage is set to digital signature when the parameters name none.
    pub fn sign(
        &self,
        mut params: CertificateParams,
        lifetime: Duration,
    ) -> Result<Issued, DevCaError> {
        let key = KeyPair::generate()?;
        if params.key_usages.is_empty() && !matches!(params.is_ca, IsCa::Ca(_)) {
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        }
        params.use_authority_key_identifier_extension = true;
        validity(&mut params, lifetime);
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// Writes a file atomically (temp file in the same directory, then rename), so a process watching
/// the directory never reads a half-written file. Keys get mode 0600 from creation on (never
/// world-readable, not even briefly).
pub fn write_file(path: &Path, contents: &str, secret: bool) -> Result<(), DevCaError> {
    use std::io::Write;
    let err = |source| DevCaError::Write {
        path: path.display().to_string(),
        source,
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp{}", std::process::id()));
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(if secret { 0o600 } else { 0o644 });
    }
    let mut f = opts.open(&tmp).map_err(err)?;
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(err)?;
    }
    f.write_all(contents.as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}
