//! Access-token verification on arbitrary input: never panics, and a token that verifies
//! is an access token inside its lifetime. Input: a token, or `<jwks json> 0x00 <token>`
//! to fuzz the key document too.
#![no_main]

use std::sync::OnceLock;

use gateway_core::jwks::{JwksDocument, KeyStatus, PublicJwk, PublishedKey};
use gateway_core::token::TokenVerifier;
use libfuzzer_sys::fuzz_target;

const NOW: i64 = 1_800_000_000;

/// Public keys of RFC 8037 §A.2 (Ed25519) and RFC 7515 §A.3 (P-256).
fn fixed() -> &'static TokenVerifier {
    static VERIFIER: OnceLock<TokenVerifier> = OnceLock::new();
    VERIFIER.get_or_init(|| {
        let key = |kty: &str, crv: &str, x: &str, y: Option<&str>, kid: &str, alg: &str| PublicJwk {
            kty: kty.into(),
            crv: crv.into(),
            x: x.into(),
            y: y.map(str::to_string),
            kid: kid.into(),
            alg: alg.into(),
            key_use: "sig".into(),
        };
        TokenVerifier::from_document(&JwksDocument {
            keys: vec![
                PublishedKey {
                    jwk: key("OKP", "Ed25519", "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo", None, "ed", "EdDSA"),
                    status: KeyStatus::Current,
                    not_after: None,
                },
                PublishedKey {
                    jwk: key(
                        "EC",
                        "P-256",
                        "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
                        Some("x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"),
                        "ec",
                        "ES256",
                    ),
                    status: KeyStatus::Retiring,
                    not_after: Some(NOW + 60),
                },
            ],
        })
    })
}

fuzz_target!(|data: &[u8]| {
    let (document, token) = match data.iter().position(|&b| b == 0) {
        Some(split) => (Some(&data[..split]), &data[split + 1..]),
        None => (None, data),
    };
    let Ok(token) = std::str::from_utf8(token) else {
        return;
    };
    let owned;
    let verifier = match document.and_then(|d| serde_json::from_slice::<JwksDocument>(d).ok()) {
        Some(document) => {
            owned = TokenVerifier::from_document(&document);
            &owned
        }
        None => fixed(),
    };
    if let Ok((claims, until)) = verifier.verify_until(token, "https://issuer.test", "gateway", NOW) {
        assert!(until >= NOW, "verified past its end");
        assert!(claims.nbf <= NOW + 60, "verified before its start");
    }
});
