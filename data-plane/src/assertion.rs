//! Signed identity for upstreams (what Pomerium calls the JWT assertion header): with
//! `--assertion-signing-key-file`, every call the data plane forwards carries
//! `x-gateway-assertion`, a short-lived ES256 JWT that says who the gateway let through
//! and for what: principal, tenant, a digest of the rights held there, the method and path
//! sent upstream, the correlation id, the shard it is meant for, and a unique id. The
//! public key is published as a JWK set at [`JWKS_PATH`] on the data plane's public
//! listener, so an upstream can check every call without trusting the network or the
//! identity headers, and refuse a replayed one (`jti` within `exp`).
//!
//! Claims: `iss` (the gateway's token issuer), `aud` (`<kind>:<shard>`), `sub`, `tid`,
//! `rgt` (base64url SHA-256 of the sorted `scope role right` lines that apply in the
//! tenant), `rev` (the principal document's revision), `htm`, `htu` (path and query as
//! sent), `cid`, `iat`, `exp`, `jti`. Header: `alg` ES256, `typ`
//! `gateway-assertion+jwt` (never accepted as an access token), `kid` (RFC 7638
//! thumbprint).

use std::path::Path;

use axum::http::{HeaderName, HeaderValue};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use gateway_core::authz::{EffectiveRights, Scope, TenantId};
use gateway_core::signed::Verified;
use gateway_edge::ApiError;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use sha2::{Digest, Sha256};

/// The request field that carries the assertion.
pub static HEADER: HeaderName = HeaderName::from_static("x-gateway-assertion");
/// Where the data plane publishes the assertion keys.
pub const JWKS_PATH: &str = "/.well-known/gateway-assertion-jwks.json";
/// `typ` of the assertion's header.
pub const TYPE: &str = "gateway-assertion+jwt";

/// Signs assertions with one P-256 key.
pub struct AssertionSigner {
    key: EcdsaKeyPair,
    rng: ring::rand::SystemRandom,
    /// The encoded JWS header (constant).
    header: String,
    issuer: String,
    ttl_secs: i64,
    /// The body of [`JWKS_PATH`].
    jwks: bytes::Bytes,
    /// The signing key's public JWK.
    jwk: serde_json::Value,
}

/// DER prefix of a P-256 `SubjectPublicKeyInfo` (id-ecPublicKey, prime256v1) before the
/// uncompressed point.
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

/// The DER inside the `label` block of a PEM file.
fn pem_body(path: &Path, label: &str) -> Result<Vec<u8>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|err| format!("cannot read {}: {err}", path.display()))?;
    let begin = format!("-----BEGIN {label}-----");
    let body: String = text
        .lines()
        .skip_while(|line| line.trim() != begin)
        .skip(1)
        .take_while(|line| !line.starts_with("-----END"))
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(body.trim())
        .ok()
        .filter(|der| !der.is_empty())
        .ok_or_else(|| format!("{}: no PEM {label}", path.display()))
}

/// The public JWK of an uncompressed P-256 point, `kid` its RFC 7638 thumbprint.
fn jwk_of(point: &[u8]) -> serde_json::Value {
    let (x, y) = (
        URL_SAFE_NO_PAD.encode(&point[1..33]),
        URL_SAFE_NO_PAD.encode(&point[33..65]),
    );
    // RFC 7638: the required members in lexicographic order, no spaces
    let canonical = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
    let kid = URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()));
    serde_json::json!({"kty": "EC", "crv": "P-256", "x": x, "y": y, "kid": kid, "alg": "ES256", "use": "sig"})
}

impl std::fmt::Debug for AssertionSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // never the key
        f.debug_struct("AssertionSigner")
            .field("issuer", &self.issuer)
            .field("ttl_secs", &self.ttl_secs)
            .finish_non_exhaustive()
    }
}

/// One forwarded call, as the assertion describes it.
pub struct Call<'a> {
    /// `<kind>:<shard>`.
    pub audience: &'a str,
    pub principal: &'a str,
    pub tenant: &'a TenantId,
    pub rights: &'a Verified<EffectiveRights>,
    pub method: &'a str,
    pub path: &'a str,
    pub correlation: &'a str,
    pub now: i64,
}

impl AssertionSigner {
    /// Reads a PKCS#8 PEM P-256 private key (`openssl genpkey -algorithm EC -pkeyopt
    /// ec_paramgen_curve:P-256`), and the public keys (PEM SPKI, `openssl pkey -pubout`)
    /// published beside its own during a rotation.
    pub fn from_pem_files(
        path: &Path,
        also_published: &[std::path::PathBuf],
        issuer: &str,
        ttl_secs: i64,
    ) -> Result<Self, String> {
        let der = pem_body(path, "PRIVATE KEY")?;
        let mut signer = Self::from_pkcs8(&der, issuer, ttl_secs)
            .map_err(|err| format!("{}: {err}", path.display()))?;
        let mut keys = vec![signer.jwk.clone()];
        for extra in also_published {
            let spki = pem_body(extra, "PUBLIC KEY")?;
            let point = spki
                .strip_prefix(&P256_SPKI_PREFIX[..])
                .filter(|point| point.len() == 65 && point[0] == 4)
                .ok_or_else(|| format!("{}: not a P-256 public key (SPKI)", extra.display()))?;
            keys.push(jwk_of(point));
        }
        signer.jwks = bytes::Bytes::from(serde_json::json!({ "keys": keys }).to_string());
        Ok(signer)
    }

    /// From PKCS#8 DER.
    pub fn from_pkcs8(der: &[u8], issuer: &str, ttl_secs: i64) -> Result<Self, String> {
        let rng = ring::rand::SystemRandom::new();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der, &rng)
            .map_err(|_| "not a P-256 PKCS#8 private key (with its public key)".to_string())?;
        let jwk = jwk_of(key.public_key().as_ref());
        let header = URL_SAFE_NO_PAD.encode(
            serde_json::json!({"alg": "ES256", "typ": TYPE, "kid": jwk["kid"]}).to_string(),
        );
        let jwks = serde_json::json!({ "keys": [&jwk] });
        Ok(AssertionSigner {
            key,
            rng,
            header,
            issuer: issuer.to_string(),
            ttl_secs: ttl_secs.max(1),
            jwks: bytes::Bytes::from(jwks.to_string()),
            jwk,
        })
    }

    /// The JWK set to publish.
    pub fn jwks(&self) -> bytes::Bytes {
        self.jwks.clone()
    }

    /// The assertion of one call, as a header value.
    pub fn sign(&self, call: &Call<'_>) -> Result<HeaderValue, ApiError> {
        let claims = serde_json::json!({
            "iss": self.issuer,
            "aud": call.audience,
            "sub": call.principal,
            "tid": call.tenant.as_str(),
            "rgt": rights_digest(&call.rights.payload, call.tenant),
            "rev": call.rights.revision,
            "htm": call.method,
            "htu": call.path,
            "cid": call.correlation,
            "iat": call.now,
            "exp": call.now + self.ttl_secs,
            "jti": gateway_edge::http::fast_uuid().simple().to_string(),
        });
        let mut token = format!(
            "{}.{}",
            self.header,
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature = self
            .key
            .sign(&self.rng, token.as_bytes())
            .map_err(|_| ApiError::internal("assertion", &"signing failed"))?;
        token.push('.');
        token.push_str(&URL_SAFE_NO_PAD.encode(signature.as_ref()));
        HeaderValue::from_str(&token).map_err(|err| ApiError::internal("assertion", &err))
    }
}

/// base64url SHA-256 of the sorted `scope role right` lines of the grants that apply in
/// `tenant` (its own and the platform's): equal digests, equal rights.
pub fn rights_digest(rights: &EffectiveRights, tenant: &TenantId) -> String {
    let mut lines: Vec<String> = rights
        .grants
        .iter()
        .filter_map(|grant| match &grant.scope {
            Scope::Platform => Some(("platform", grant)),
            Scope::Tenant { tenant: t } if t == tenant => Some(("tenant", grant)),
            Scope::Tenant { .. } => None,
        })
        .flat_map(|(scope, grant)| {
            grant
                .rights
                .iter()
                .map(move |right| format!("{scope} {} {}", grant.role, right.as_str()))
        })
        .collect();
    lines.sort_unstable();
    URL_SAFE_NO_PAD.encode(Sha256::digest(lines.join("\n").as_bytes()))
}

/// `GET /.well-known/gateway-assertion-jwks.json`: the public key of the assertions (404
/// when none are signed). Cached for five minutes; upstreams fetch it again on an unknown
/// `kid`.
pub async fn publish_keys(
    axum::extract::State(state): axum::extract::State<crate::proxy::ProxyState>,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    let signer = state
        .assertion
        .as_ref()
        .ok_or_else(|| ApiError::not_found("no assertions are signed here"))?;
    Ok((
        [
            (axum::http::header::CONTENT_TYPE, "application/json"),
            (axum::http::header::CACHE_CONTROL, "public, max-age=300"),
        ],
        signer.jwks(),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use gateway_core::authz::{Grant, Right};

    fn pem(label: &str, der: &[u8]) -> String {
        let body = base64::engine::general_purpose::STANDARD.encode(der);
        let lines: Vec<&str> = body
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        format!(
            "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
            lines.join("\n")
        )
    }

    fn rights(grants: &[(&str, &str, &[&str])]) -> Verified<EffectiveRights> {
        Verified {
            kind: "principal".into(),
            revision: 7,
            issued_at: 0,
            key_id: "k".into(),
            payload: EffectiveRights {
                principal_id: "usr_1".into(),
                disabled: false,
                tokens_valid_after: 0,
                revoked_sessions: Vec::new(),
                grants: grants
                    .iter()
                    .map(|(tenant, role, rights)| Grant {
                        scope: if *tenant == "*" {
                            Scope::Platform
                        } else {
                            Scope::Tenant {
                                tenant: TenantId::parse(tenant).unwrap(),
                            }
                        },
                        role: role.to_string(),
                        rights: rights.iter().map(|r| Right::parse(r).unwrap()).collect(),
                    })
                    .collect(),
            },
        }
    }

    #[test]
    fn assertions_verify_with_the_published_key_and_carry_the_call() {
        let dir = tempfile::tempdir().unwrap();
        let rng = ring::rand::SystemRandom::new();
        let der = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let next = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let next = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, next.as_ref(), &rng)
            .unwrap();
        let key_path = dir.path().join("key.pem");
        std::fs::write(&key_path, pem("PRIVATE KEY", der.as_ref())).unwrap();
        let next_path = dir.path().join("next.pem");
        let spki = [&P256_SPKI_PREFIX[..], next.public_key().as_ref()].concat();
        std::fs::write(&next_path, pem("PUBLIC KEY", &spki)).unwrap();
        let signer = AssertionSigner::from_pem_files(&key_path, &[next_path], "gw", 30).unwrap();
        // two keys published, no private member
        let jwks: serde_json::Value = serde_json::from_slice(&signer.jwks()).unwrap();
        let keys = jwks["keys"].as_array().unwrap();
        assert_eq!(keys.len(), 2);
        assert_ne!(keys[0]["kid"], keys[1]["kid"]);
        assert!(keys.iter().all(|k| k.get("d").is_none()));

        let acme = TenantId::parse("acme").unwrap();
        let held = rights(&[("acme", "tenant_member", &["query.read:*"])]);
        let value = signer
            .sign(&Call {
                audience: "projection:p1",
                principal: "usr_1",
                tenant: &acme,
                rights: &held,
                method: "POST",
                path: "/v1/query/v",
                correlation: "c-1",
                now: 1000,
            })
            .unwrap();
        let token = value.to_str().unwrap();
        let (signed, signature) = token.rsplit_once('.').unwrap();
        let (header, claims) = signed.split_once('.').unwrap();
        let header: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).unwrap()).unwrap();
        assert_eq!(header["kid"], keys[0]["kid"]);
        assert_eq!(header["typ"], TYPE);
        // the signature verifies with the published point
        let x = URL_SAFE_NO_PAD
            .decode(keys[0]["x"].as_str().unwrap())
            .unwrap();
        let y = URL_SAFE_NO_PAD
            .decode(keys[0]["y"].as_str().unwrap())
            .unwrap();
        let point = [&[4u8][..], &x, &y].concat();
        ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_FIXED, point)
            .verify(
                signed.as_bytes(),
                &URL_SAFE_NO_PAD.decode(signature).unwrap(),
            )
            .unwrap();
        let claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(claims).unwrap()).unwrap();
        assert_eq!(claims["aud"], "projection:p1");
        assert_eq!(claims["tid"], "acme");
        assert_eq!(claims["htu"], "/v1/query/v");
        assert_eq!(claims["cid"], "c-1");
        assert_eq!(claims["rev"], 7);
        assert_eq!(
            (claims["iat"].as_i64(), claims["exp"].as_i64()),
            (Some(1000), Some(1030))
        );
        assert_eq!(claims["rgt"], rights_digest(&held.payload, &acme));
    }

    #[test]
    fn the_rights_digest_covers_the_tenant_and_the_platform_only_in_any_order() {
        let acme = TenantId::parse("acme").unwrap();
        let a = rights(&[
            (
                "acme",
                "tenant_member",
                &["query.read:*", "command.submit:*"],
            ),
            ("globex", "tenant_admin", &["runner.admin"]),
        ]);
        let b = rights(&[(
            "acme",
            "tenant_member",
            &["command.submit:*", "query.read:*"],
        )]);
        assert_eq!(
            rights_digest(&a.payload, &acme),
            rights_digest(&b.payload, &acme)
        );
        let platform = rights(&[
            (
                "acme",
                "tenant_member",
                &["query.read:*", "command.submit:*"],
            ),
            ("*", "platform_admin", &["*"]),
        ]);
        assert_ne!(
            rights_digest(&a.payload, &acme),
            rights_digest(&platform.payload, &acme)
        );
        let globex = TenantId::parse("globex").unwrap();
        assert_ne!(
            rights_digest(&a.payload, &acme),
            rights_digest(&a.payload, &globex)
        );
    }

    #[test]
    fn key_files_that_are_not_p256_keys_are_refused_with_their_path() {
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("bad.pem");
        std::fs::write(
            &bad,
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        let err = AssertionSigner::from_pem_files(&bad, &[], "gw", 30).unwrap_err();
        assert!(err.contains("bad.pem"), "{err}");
        let missing = dir.path().join("missing.pem");
        let err = AssertionSigner::from_pem_files(&missing, &[], "gw", 30).unwrap_err();
        assert!(err.contains("missing.pem"), "{err}");
        // an Ed25519 key is not a P-256 key
        let ed = ring::signature::Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new())
            .unwrap();
        std::fs::write(&bad, pem("PRIVATE KEY", ed.as_ref())).unwrap();
        let err = AssertionSigner::from_pem_files(&bad, &[], "gw", 30).unwrap_err();
        assert!(err.contains("P-256"), "{err}");
    }
}
