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

/// A published public key, ready to verify: its raw encoding for `ring` (an
/// uncompressed SEC1 point for P-256, the 32 bytes for Ed25519).
struct VerifyKey {
    kid: String,
    alg: jsonwebtoken::Algorithm,
    key: ring::signature::UnparsedPublicKey<Vec<u8>>,
    not_after: Option<i64>,
}

/// Largest base64url segment of a token we decode (the whole token is capped at 8 KiB).
const MAX_TOKEN_LEN: usize = 8192;

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
                    ("OKP", "Ed25519") => {
                        let x = decode_b64(&jwk.x)?;
                        (x.len() == 32).then_some(())?;
                        (
                            jsonwebtoken::Algorithm::EdDSA,
                            ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, x),
                        )
                    }
                    ("EC", "P-256") => {
                        let x = decode_b64(&jwk.x)?;
                        let y = decode_b64(jwk.y.as_deref()?)?;
                        (x.len() == 32 && y.len() == 32).then_some(())?;
                        let mut point = Vec::with_capacity(65);
                        point.push(0x04);
                        point.extend_from_slice(&x);
                        point.extend_from_slice(&y);
                        (
                            jsonwebtoken::Algorithm::ES256,
                            ring::signature::UnparsedPublicKey::new(
                                &ring::signature::ECDSA_P256_SHA256_FIXED,
                                point,
                            ),
                        )
                    }
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
        if token.len() > MAX_TOKEN_LEN {
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
        // The signature is checked with ring (its P-256 verification is about three times
        // faster than the pure-Rust backend's; docs/benchmarks.md), over the exact bytes
        // the issuer signed, before any claim is read.
        let (signed, signature) = token.rsplit_once('.').ok_or(Reason::MalformedToken)?;
        let payload = signed
            .split_once('.')
            .map(|(_, payload)| payload)
            .filter(|payload| !payload.contains('.'))
            .ok_or(Reason::MalformedToken)?;
        let signature = decode_b64(signature).ok_or(Reason::MalformedToken)?;
        key.key
            .verify(signed.as_bytes(), &signature)
            .map_err(|_| Reason::BadSignature)?;
        let payload = decode_b64(payload).ok_or(Reason::MalformedToken)?;
        let claims: AccessClaims =
            serde_json::from_slice(&payload).map_err(|_| Reason::MalformedToken)?;
        if claims.iss != issuer {
            return Err(Reason::WrongIssuer);
        }
        if claims.aud != audience {
            return Err(Reason::WrongAudience);
        }
        if claims.typ != ACCESS_TOKEN_TYPE {
            return Err(Reason::WrongTokenType);
        }
        let expires = claims.exp.saturating_add(LEEWAY_SECS);
        if now > expires {
            return Err(Reason::TokenExpired);
        }
        if claims.nbf > now.saturating_add(LEEWAY_SECS) {
            return Err(Reason::TokenNotYetValid);
        }
        let until = key.not_after.map_or(expires, |t| t.min(expires));
        Ok((claims, until))
    }
}

/// Unpadded base64url, as JWS uses it (RFC 7515 2); `None` for anything else.
fn decode_b64(text: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .ok()
}

#[cfg(test)]
mod tests {
    //! Tokens signed by `jsonwebtoken` (its RustCrypto signer, as the control plane signs)
    //! are verified by ring here: the two backends must agree byte for byte.
    use super::*;
    use crate::jwks::{PublicJwk, PublishedKey};
    use base64::Engine as _;
    use ring::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair};

    const NOW: i64 = 1_800_000_000;
    const ISS: &str = "https://issuer.test";
    const AUD: &str = "gateway";

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    struct Signer {
        kid: &'static str,
        alg: jsonwebtoken::Algorithm,
        key: jsonwebtoken::EncodingKey,
        jwk: PublicJwk,
    }

    fn es256(kid: &'static str) -> Signer {
        let rng = ring::rand::SystemRandom::new();
        let alg = &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING;
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).unwrap();
        let point = pair.public_key().as_ref();
        Signer {
            kid,
            alg: jsonwebtoken::Algorithm::ES256,
            key: jsonwebtoken::EncodingKey::from_ec_der(pkcs8.as_ref()),
            jwk: PublicJwk {
                kty: "EC".into(),
                crv: "P-256".into(),
                x: b64(&point[1..33]),
                y: Some(b64(&point[33..65])),
                kid: kid.into(),
                alg: "ES256".into(),
                key_use: "sig".into(),
            },
        }
    }

    fn ed25519(kid: &'static str) -> Signer {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).unwrap();
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        Signer {
            kid,
            alg: jsonwebtoken::Algorithm::EdDSA,
            key: jsonwebtoken::EncodingKey::from_ed_der(pkcs8.as_ref()),
            jwk: PublicJwk {
                kty: "OKP".into(),
                crv: "Ed25519".into(),
                x: b64(pair.public_key().as_ref()),
                y: None,
                kid: kid.into(),
                alg: "EdDSA".into(),
                key_use: "sig".into(),
            },
        }
    }

    fn claims() -> AccessClaims {
        AccessClaims {
            iss: ISS.into(),
            aud: AUD.into(),
            sub: "usr_1".into(),
            sid: Some("ses_1".into()),
            iat: NOW,
            nbf: NOW,
            exp: NOW + 300,
            jti: "jti_1".into(),
            typ: ACCESS_TOKEN_TYPE.into(),
        }
    }

    fn sign(signer: &Signer, claims: &AccessClaims) -> String {
        let mut header = jsonwebtoken::Header::new(signer.alg);
        header.kid = Some(signer.kid.into());
        header.typ = Some("at+jwt".into());
        jsonwebtoken::encode(&header, claims, &signer.key).unwrap()
    }

    fn verifier(signers: &[&Signer]) -> TokenVerifier {
        TokenVerifier::from_document(&JwksDocument {
            keys: signers
                .iter()
                .map(|s| PublishedKey {
                    jwk: s.jwk.clone(),
                    status: KeyStatus::Current,
                    not_after: None,
                })
                .collect(),
        })
    }

    #[test]
    fn tokens_of_both_algorithms_verify_and_return_their_claims() {
        let (ec, ed) = (es256("k-ec"), ed25519("k-ed"));
        let verifier = verifier(&[&ec, &ed]);
        for signer in [&ec, &ed] {
            let (got, until) = verifier
                .verify_until(&sign(signer, &claims()), ISS, AUD, NOW)
                .unwrap();
            assert_eq!(got, claims());
            assert_eq!(until, NOW + 300 + LEEWAY_SECS);
        }
    }

    #[test]
    fn any_changed_byte_of_a_signed_token_is_refused() {
        let (ec, ed) = (es256("k-ec"), ed25519("k-ed"));
        let verifier = verifier(&[&ec, &ed]);
        for signer in [&ec, &ed] {
            let token = sign(signer, &claims());
            let (head, rest) = token.split_once('.').unwrap();
            let (payload, signature) = rest.split_once('.').unwrap();
            // Another subject under the same signature.
            let mut forged = claims();
            forged.sub = "usr_admin".into();
            let forged_payload = b64(&serde_json::to_vec(&forged).unwrap());
            let swapped = format!("{head}.{forged_payload}.{signature}");
            assert_eq!(
                verifier.verify(&swapped, ISS, AUD, NOW),
                Err(Reason::BadSignature)
            );
            // One bit of the signature flipped.
            let mut sig = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(signature)
                .unwrap();
            sig[7] ^= 1;
            let flipped = format!("{head}.{payload}.{}", b64(&sig));
            assert_eq!(
                verifier.verify(&flipped, ISS, AUD, NOW),
                Err(Reason::BadSignature)
            );
            // Extra segments, padding, or an empty signature are not JWS compact form.
            for broken in [
                format!("{head}.{payload}.{signature}.{signature}"),
                format!("{head}.{payload}.{signature}="),
                format!("{head}.{payload}."),
                format!("{head}.{payload}"),
            ] {
                assert!(
                    matches!(
                        verifier.verify(&broken, ISS, AUD, NOW),
                        Err(Reason::MalformedToken | Reason::BadSignature)
                    ),
                    "{broken}"
                );
            }
        }
    }

    #[test]
    fn a_key_of_one_algorithm_never_verifies_the_other() {
        let ec = es256("same");
        let mut ed = ed25519("same");
        ed.jwk.kid = "other".into();
        let verifier = verifier(&[&ec, &ed]);
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
        header.kid = Some("same".into());
        header.typ = Some("at+jwt".into());
        let token = jsonwebtoken::encode(&header, &claims(), &ed.key).unwrap();
        assert_eq!(
            verifier.verify(&token, ISS, AUD, NOW),
            Err(Reason::AlgorithmMismatch)
        );
    }

    #[test]
    fn claims_are_checked_after_the_signature() {
        let ec = es256("k");
        let verifier = verifier(&[&ec]);
        let mut wrong_iss = claims();
        wrong_iss.iss = "https://elsewhere.test".into();
        let mut wrong_aud = claims();
        wrong_aud.aud = "other".into();
        let mut refresh = claims();
        refresh.typ = "refresh".into();
        let cases = [
            (wrong_iss, Reason::WrongIssuer, NOW),
            (wrong_aud, Reason::WrongAudience, NOW),
            (refresh, Reason::WrongTokenType, NOW),
            (claims(), Reason::TokenExpired, NOW + 300 + LEEWAY_SECS + 1),
            (claims(), Reason::TokenNotYetValid, NOW - LEEWAY_SECS - 1),
        ];
        for (claims, reason, at) in cases {
            assert_eq!(
                verifier.verify(&sign(&ec, &claims), ISS, AUD, at),
                Err(reason)
            );
        }
        // A claim set missing `exp` is malformed even when correctly signed.
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some("k".into());
        header.typ = Some("at+jwt".into());
        let partial = serde_json::json!({"iss": ISS, "aud": AUD, "sub": "usr_1", "nbf": NOW});
        let token = jsonwebtoken::encode(&header, &partial, &ec.key).unwrap();
        assert_eq!(
            verifier.verify(&token, ISS, AUD, NOW),
            Err(Reason::MalformedToken)
        );
    }

    #[test]
    fn keys_with_points_of_the_wrong_size_are_not_loaded() {
        let mut ec = es256("k");
        ec.jwk.y = Some(b64(&[1; 31]));
        let mut ed = ed25519("e");
        ed.jwk.x = b64(&[1; 33]);
        assert!(verifier(&[&ec, &ed]).is_empty());
    }
}
