//! The key ring on the embedded store: generation, sealing, rotation, publication, and two replicas sharing one ring.

use super::*;

async fn manager(dir: &std::path::Path, interval: Option<Duration>) -> (KeyManager, Store) {
    let store = Store::open(&gateway_store::StoreConfig::Embedded {
        path: dir.join("state.redb"),
    })
    .await
    .unwrap();
    let manager = KeyManager::new(
        store.clone(),
        Arc::new(Kek::generate()),
        KeySettings {
            alg: SigningAlg::EdDsa,
            token_ttl: Duration::from_secs(600),
            rotation_interval: interval,
        },
        Arc::new(DocSigningKey::generate()),
    );
    (manager, store)
}

#[tokio::test]
async fn the_schedule_rotates_once_per_interval_and_audits_it() {
    let dir = tempfile::tempdir().unwrap();
    let (manager, store) = manager(dir.path(), Some(Duration::from_secs(3600))).await;
    let t0 = 1_000_000;
    manager.start(t0).await.unwrap();
    let first = manager.current_kid().unwrap();
    manager.scheduled(t0 + 60).await.unwrap();
    assert_eq!(manager.current_kid().unwrap(), first, "not due yet");
    manager.scheduled(t0 + 3600).await.unwrap();
    let second = manager.current_kid().unwrap();
    assert_ne!(second, first);
    manager.scheduled(t0 + 3601).await.unwrap();
    assert_eq!(manager.current_kid().unwrap(), second, "once per interval");
    let audit = store
        .audit()
        .read(&gateway_store::AuditQuery {
            tenant: None,
            from_seq: 1,
            limit: 10,
        })
        .await
        .unwrap();
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0].action, "keys.rotate.scheduled");
    // the retiring key is published until its tokens expire, then pruned
    let published = |m: &KeyManager| {
        m.jwk_set()
            .keys
            .iter()
            .map(|k| k.kid.clone())
            .collect::<Vec<_>>()
    };
    assert!(published(&manager).contains(&first));
    manager.scheduled(t0 + 3600 + 600 + 61).await.unwrap();
    assert!(!published(&manager).contains(&first));
}

#[test]
fn sealed_keys_open_only_with_the_same_kek_and_kid() {
    let kek = Kek::generate();
    let sealed = kek.seal("k1", b"private").unwrap();
    assert_eq!(kek.open("k1", &sealed).unwrap(), b"private");
    assert!(kek.open("k2", &sealed).is_err(), "bound to its kid");
    assert!(Kek::generate().open("k1", &sealed).is_err(), "other kek");
    assert!(!sealed.contains("private"));
}

#[test]
fn kek_files_must_hold_32_bytes_of_base64() {
    assert!(Kek::from_base64(&STANDARD.encode([7u8; 32])).is_ok());
    assert!(Kek::from_base64(&format!("  {}\n", STANDARD.encode([7u8; 32]))).is_ok());
    assert!(Kek::from_base64(&URL_SAFE_NO_PAD.encode([7u8; 32])).is_ok());
    assert!(Kek::from_base64(&STANDARD.encode([7u8; 16])).is_err());
    assert!(Kek::from_base64("not base64 at all!").is_err());
}

#[test]
fn generated_keys_sign_tokens_that_verify_with_their_jwk() {
    let kek = Kek::generate();
    for alg in [SigningAlg::EdDsa, SigningAlg::Es256] {
        let record = generate(alg, &kek, 100).unwrap();
        let der = kek.open(&aad(&record.kid), &record.sealed_private).unwrap();
        let encoding = match alg {
            SigningAlg::EdDsa => jsonwebtoken::EncodingKey::from_ed_der(&der),
            SigningAlg::Es256 => jsonwebtoken::EncodingKey::from_ec_der(&der),
        };
        let mut header = jsonwebtoken::Header::new(alg.jwt_algorithm());
        header.kid = Some(record.kid.clone());
        let token = jsonwebtoken::encode(
            &header,
            &serde_json::json!({"sub": "x", "exp": 4_000_000_000u64}),
            &encoding,
        )
        .unwrap();
        let decoding = match alg {
            SigningAlg::EdDsa => {
                jsonwebtoken::DecodingKey::from_ed_components(&record.public.x).unwrap()
            }
            SigningAlg::Es256 => jsonwebtoken::DecodingKey::from_ec_components(
                &record.public.x,
                record.public.y.as_deref().unwrap(),
            )
            .unwrap(),
        };
        let mut validation = jsonwebtoken::Validation::new(alg.jwt_algorithm());
        validation.required_spec_claims.clear();
        let data =
            jsonwebtoken::decode::<serde_json::Value>(&token, &decoding, &validation).unwrap();
        assert_eq!(data.claims["sub"], "x");
    }
}
