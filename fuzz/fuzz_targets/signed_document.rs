//! Signed documents (routing, jwks, principal rights) on arbitrary bytes: never panic; a
//! signed payload verifies to itself, and any single changed byte of the envelope is
//! refused.
#![no_main]

use std::sync::OnceLock;

use gateway_core::authz::EffectiveRights;
use gateway_core::jwks::JwksDocument;
use gateway_core::routing::RoutingDocument;
use gateway_core::signed::{DocSigningKey, DocVerifyingKeys};
use libfuzzer_sys::fuzz_target;

/// The Ed25519 private key of RFC 8410 §10.3.
const PEM: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEINTuctv5E1hK1bbY8fdp+K06/nwoy/HU++CXqI9EdVhC
-----END PRIVATE KEY-----
";

fn keys() -> &'static (DocSigningKey, DocVerifyingKeys) {
    static KEYS: OnceLock<(DocSigningKey, DocVerifyingKeys)> = OnceLock::new();
    KEYS.get_or_init(|| {
        let signer = DocSigningKey::from_pkcs8_pem(PEM).expect("the RFC 8410 key");
        let verifier = DocVerifyingKeys::new([signer.verifying_key()]);
        (signer, verifier)
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let (signer, verifier) = keys();
    if mode % 2 == 0 {
        // arbitrary envelopes
        let _ = verifier.verify::<RoutingDocument>(rest, "routing");
        let _ = verifier.verify::<JwksDocument>(rest, "jwks");
        let _ = verifier.verify::<EffectiveRights>(rest, "gw_authz");
        return;
    }
    // arbitrary payloads: signed, they verify to themselves; tampered, they do not
    let Ok(payload) = serde_json::from_slice::<serde_json::Value>(rest) else {
        return;
    };
    let envelope = signer.sign("fuzz", 7, 1_800_000_000, &payload).expect("signable");
    let verified = verifier
        .verify::<serde_json::Value>(&envelope, "fuzz")
        .expect("a signed document verifies");
    assert_eq!(verified.payload, payload);
    assert_eq!((verified.revision, verified.issued_at), (7, 1_800_000_000));
    let mut tampered = envelope.to_vec();
    let at = usize::from(mode) * 31 % tampered.len();
    tampered[at] ^= 1 << (mode % 8);
    if let Ok(found) = verifier.verify::<serde_json::Value>(&tampered, "fuzz") {
        // a change outside what is signed (JSON syntax the parser reads the same) is the
        // only way through, and then nothing signed differs
        assert_eq!(found.payload, payload, "tampered payload accepted");
        assert_eq!((found.revision, found.issued_at), (7, 1_800_000_000));
    }
    assert!(verifier.verify::<serde_json::Value>(&envelope, "other").is_err());
});
