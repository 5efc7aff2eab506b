//! JWT signing keys: generation (ES256, EdDSA, RS256/384/512), loading from PEM, and the public JWKS that
//! verifiers use.

use jsonwebtoken::jwk::{Jwk, JwkSet, KeyOperations, PublicKeyUse};
use jsonwebtoken::{Algorithm, EncodingKey};

/// Algorithms actorgate signs and accepts. Never `none`, never HMAC.
pub const ALLOWED_ALGORITHMS: [Algorithm; 5] = [
    Algorithm::ES256,
    Algorithm::EdDSA,
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
];

/// Key problems.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The algorithm is not ES256, EdDSA or RS256/384/512.
    #[error("algorithm {0} is not supported (use ES256, EdDSA, RS256, RS384 or RS512)")]
    Unsupported(String),
    /// The key could not be generated.
    #[error("key generation failed: {0}")]
    Generate(String),
    /// The private key does not parse for its algorithm.
    #[error("invalid {} private key: {reason}", algorithm_name(*.alg))]
    BadKey {
        /// The algorithm the key was read for.
        alg: Algorithm,
        /// Why it was refused.
        reason: String,
    },
    /// The public JWK could not be built.
    #[error("cannot build a JWK: {0}")]
    Jwk(String),
}

/// The JOSE name of an algorithm (`ES256`, `EdDSA`, …), for messages.
pub fn algorithm_name(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::HS256 => "HS256",
        Algorithm::HS384 => "HS384",
        Algorithm::HS512 => "HS512",
        Algorithm::ES256 => "ES256",
        Algorithm::ES384 => "ES384",
        Algorithm::RS256 => "RS256",
        Algorithm::RS384 => "RS384",
        Algorithm::RS512 => "RS512",
        Algorithm::PS256 => "PS256",
        Algorithm::PS384 => "PS384",
        Algorithm::PS512 => "PS512",
        Algorithm::EdDSA => "EdDSA",
        _ => "another algorithm",
    }
}

/// Parses an algorithm name as written in configs and on the command line.
pub fn parse_algorithm(s: &str) -> Result<Algorithm, KeyError> {
    match s.to_ascii_uppercase().as_str() {
        "ES256" => Ok(Algorithm::ES256),
        "EDDSA" | "ED25519" => Ok(Algorithm::EdDSA),
        "RS256" => Ok(Algorithm::RS256),
        "RS384" => Ok(Algorithm::RS384),
        "RS512" => Ok(Algorithm::RS512),
        _ => Err(KeyError::Unsupported(s.to_owned())),
    }
}

/// Generates a private key for `alg` as PKCS#8 PEM.
pub fn generate_private_key_pem(alg: Algorithm) -> Result<String, KeyError> {
    let kp = match alg {
        Algorithm::ES256 => rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256),
        Algorithm::EdDSA => rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519),
        Algorithm::RS256 => {
            rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
        }
        Algorithm::RS384 => {
            rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA384, rcgen::RsaKeySize::_2048)
        }
        Algorithm::RS512 => {
            rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA512, rcgen::RsaKeySize::_2048)
        }
        other => return Err(KeyError::Unsupported(algorithm_name(other).into())),
    }
    .map_err(|e| KeyError::Generate(e.to_string()))?;
    if alg == Algorithm::EdDSA {
        return ed25519_v1_pem(kp.serialized_der())
            .map_err(|reason| KeyError::BadKey { alg, reason });
    }
    Ok(kp.serialize_pem())
}

/// Re-encodes an Ed25519 PKCS#8 key (v1 or v2) as PKCS#8 v1 PEM: jsonwebtoken only builds JWKs
/// from v1 documents, while rcgen and some tools write v2.
fn ed25519_v1_pem(pkcs8_der: &[u8]) -> Result<String, String> {
    use base64::Engine;
    let kp =
        aws_lc_rs::signature::Ed25519KeyPair::from_pkcs8(pkcs8_der).map_err(|e| e.to_string())?;
    let v1 = kp.to_pkcs8v1().map_err(|e| e.to_string())?;
    let b64 = base64::engine::general_purpose::STANDARD.encode(v1.as_ref());
    let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        pem.push('\n');
    }
    pem.push_str("-----END PRIVATE KEY-----\n");
    Ok(pem)
}

/// Loads a private key PEM for `alg`.
pub fn encoding_key(alg: Algorithm, pem: &[u8]) -> Result<EncodingKey, KeyError> {
    let r = match alg {
        Algorithm::ES256 => EncodingKey::from_ec_pem(pem),
        Algorithm::EdDSA => {
            use rustls_pki_types::pem::PemObject;
            let der = rustls_pki_types::PrivatePkcs8KeyDer::from_pem_slice(pem).map_err(|e| {
                KeyError::BadKey {
                    alg,
                    reason: e.to_string(),
                }
            })?;
            let v1 = ed25519_v1_pem(der.secret_pkcs8_der())
                .map_err(|reason| KeyError::BadKey { alg, reason })?;
            EncodingKey::from_ed_pem(v1.as_bytes())
        }
        Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512 => EncodingKey::from_rsa_pem(pem),
        other => return Err(KeyError::Unsupported(algorithm_name(other).into())),
    };
    r.map_err(|e| KeyError::BadKey {
        alg,
        reason: e.to_string(),
    })
}

/// The public JWK (with `kid`, `alg`, `use: sig`) of a private key.
pub fn public_jwk(alg: Algorithm, kid: &str, key: &EncodingKey) -> Result<Jwk, KeyError> {
    let mut jwk = Jwk::from_encoding_key(key, alg).map_err(|e| KeyError::Jwk(e.to_string()))?;
    jwk.common.key_id = Some(kid.to_owned());
    jwk.common.public_key_use = Some(PublicKeyUse::Signature);
    jwk.common.key_operations = Some(vec![KeyOperations::Verify]);
    Ok(jwk)
}

/// A JWKS document of the given keys.
pub fn jwks(keys: Vec<Jwk>) -> JwkSet {
    JwkSet { keys }
}
