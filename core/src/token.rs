//! Access-token claims shared by the issuer (control plane) and the verifier (data plane).

use serde::{Deserialize, Serialize};

/// Claims of a gateway access token (a JWT signed with EdDSA or ES256, `kid` in the
/// header). No roles: authorization is decided from the live RBAC mirror.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessClaims {
    pub iss: String,
    pub aud: String,
    /// Principal id (user or service account).
    pub sub: String,
    /// Session id (absent for service-account tokens).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
    pub iat: i64,
    pub nbf: i64,
    pub exp: i64,
    pub jti: String,
    /// Token use: always `access`, so other JWTs of ours are never accepted as access tokens.
    pub typ: String,
}

/// Value of [`AccessClaims::typ`].
pub const ACCESS_TOKEN_TYPE: &str = "access";

/// Principal kinds, as the prefix of principal ids (`usr_...`, `svc_...`).
pub const USER_PREFIX: &str = "usr_";
pub const SERVICE_PREFIX: &str = "svc_";

use crate::error::Reason;
use crate::jwks::{JwksDocument, KeyStatus};

/// Clock skew tolerated on `exp` and `nbf`.
pub const LEEWAY_SECS: i64 = 30;

/// A published public key, ready to verify.
struct VerifyKey {
    kid: String,
    alg: jsonwebtoken::Algorithm,
    key: jsonwebtoken::DecodingKey,
    not_after: Option<i64>,
}

/// Verifies access tokens against a set of published keys (both planes use it). The
/// algorithm comes from our key, never from the token; time is a parameter.
#[derive(Default)]
pub struct TokenVerifier {
    keys: Vec<VerifyKey>,
}

impl TokenVerifier {
    /// Keys of a `jwks` document (next, current and retiring keys all verify; retiring
    /// ones until their `not_after`).
    pub fn from_document(document: &JwksDocument) -> TokenVerifier {
        let keys = document
            .keys
            .iter()
            .filter_map(|published| {
                let jwk = &published.jwk;
                let (alg, key) = match (jwk.kty.as_str(), jwk.crv.as_str()) {
                    ("OKP", "Ed25519") => (
                        jsonwebtoken::Algorithm::EdDSA,
                        jsonwebtoken::DecodingKey::from_ed_components(&jwk.x).ok()?,
                    ),
                    ("EC", "P-256") => (
                        jsonwebtoken::Algorithm::ES256,
                        jsonwebtoken::DecodingKey::from_ec_components(&jwk.x, jwk.y.as_deref()?)
                            .ok()?,
                    ),
                    _ => return None,
                };
                Some(VerifyKey {
                    kid: jwk.kid.clone(),
                    alg,
                    key,
                    not_after: (published.status == KeyStatus::Retiring)
                        .then_some(published.not_after)
                        .flatten(),
                })
            })
            .collect();
        TokenVerifier { keys }
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Checks an access token at time `now`; errors are [`Reason`]s
    /// (`malformed_token`, `unknown_key`, `bad_signature`, `token_expired`, …).
    pub fn verify(
        &self,
        token: &str,
        issuer: &str,
        audience: &str,
        now: i64,
    ) -> Result<AccessClaims, Reason> {
        self.verify_until(token, issuer, audience, now)
            .map(|(claims, _)| claims)
    }

    /// [`TokenVerifier::verify`], and the last second the answer holds: the token's
    /// expiry (with leeway), or the retirement of its key when that comes first.
    pub fn verify_until(
        &self,
        token: &str,
        issuer: &str,
        audience: &str,
        now: i64,
    ) -> Result<(AccessClaims, i64), Reason> {
        if token.len() > 8192 {
            return Err(Reason::MalformedToken);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| Reason::MalformedToken)?;
        if header.typ.as_deref() != Some("at+jwt") {
            return Err(Reason::WrongTokenType);
        }
        let kid = header.kid.ok_or(Reason::UnknownKey)?;
        let key = self
            .keys
            .iter()
            .find(|k| k.kid == kid && k.not_after.is_none_or(|t| now <= t))
            .ok_or(Reason::UnknownKey)?;
        if header.alg != key.alg {
            return Err(Reason::AlgorithmMismatch);
        }
        let mut validation = jsonwebtoken::Validation::new(key.alg);
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[audience]);
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
        let data =
            jsonwebtoken::decode::<AccessClaims>(token, &key.key, &validation).map_err(|err| {
                match err.kind() {
                    jsonwebtoken::errors::ErrorKind::InvalidSignature => Reason::BadSignature,
                    jsonwebtoken::errors::ErrorKind::InvalidIssuer => Reason::WrongIssuer,
                    jsonwebtoken::errors::ErrorKind::InvalidAudience => Reason::WrongAudience,
                    _ => Reason::MalformedToken,
                }
            })?;
        let claims = data.claims;
        if claims.typ != ACCESS_TOKEN_TYPE {
            return Err(Reason::WrongTokenType);
        }
        if now > claims.exp + LEEWAY_SECS {
            return Err(Reason::TokenExpired);
        }
        if claims.nbf > now + LEEWAY_SECS {
            return Err(Reason::TokenNotYetValid);
        }
        let until = key.not_after.map_or(claims.exp + LEEWAY_SECS, |t| {
            t.min(claims.exp + LEEWAY_SECS)
        });
        Ok((claims, until))
    }
}
