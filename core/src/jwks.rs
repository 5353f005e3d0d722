//! Public verification keys of access tokens: the JWK shape (RFC 7517/8037) and the payload
//! of the signed `jwks` document the control plane publishes for the data planes.

use serde::{Deserialize, Serialize};

/// One public key as a JWK: `OKP`/`Ed25519` (EdDSA) or `EC`/`P-256` (ES256).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PublicJwk {
    pub kty: String,
    pub crv: String,
    pub x: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub y: Option<String>,
    pub kid: String,
    pub alg: String,
    #[serde(rename = "use")]
    pub key_use: String,
}

/// Where a key is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyStatus {
    /// Published ahead of use, so verifiers know it before the first token it signs.
    Next,
    /// Signs new tokens.
    Current,
    /// No longer signs; verifies tokens until `not_after`.
    Retiring,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedKey {
    pub jwk: PublicJwk,
    pub status: KeyStatus,
    /// For retiring keys: after this Unix time no token signed by it is valid any more.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<i64>,
}

/// Payload of the signed `jwks` document.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JwksDocument {
    pub keys: Vec<PublishedKey>,
}

/// Body of `GET /.well-known/jwks.json`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JwkSet {
    pub keys: Vec<PublicJwk>,
}
