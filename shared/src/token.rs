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
