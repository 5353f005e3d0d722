//! Token attacks and oversized bodies refused at the data plane.

use std::time::Duration;

use gateway_tests::upstream;
use serde_json::{Value, json};

use super::{START, Stack, send};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_attacks_and_oversized_bodies_are_refused_at_the_data_plane() {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let stack = Stack::start(&[], |_| vec!["--max-body-bytes".into(), "1024".into()]).await;
    let node = upstream::start(
        "shard-t",
        "127.0.0.1:0".parse().unwrap(),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    stack
        .route("projection", "p1", &node.http_url(), "acme")
        .await;
    let (token, user_id) = stack
        .member("target@example.com", &[("acme", "tenant_member")])
        .await;
    let (client, base, data, admin, keys) = (
        &stack.client,
        &stack.base,
        &stack.data,
        &stack.admin,
        &stack.keys,
    );
    let query = format!("{}/v1/query/v", data.http);
    let acme = [("x-tenant-id", "acme")];
    let deadline = std::time::Instant::now() + START;
    while send(
        client,
        "POST",
        query.clone(),
        Some(&token),
        Some(json!({})),
        &acme,
    )
    .await
    .0 != 200
    {
        assert!(std::time::Instant::now() < deadline, "never allowed");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }

    // forged tokens of every shape
    let parts: Vec<&str> = token.split('.').collect();
    let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    let kid = header["kid"].as_str().unwrap().to_string();
    let b64 = |v: &Value| URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap());
    let alg_none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "at+jwt", "kid": kid})),
        parts[1]
    );
    let jwks: Value = client
        .get(format!("{base}/.well-known/jwks.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let x = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == kid.as_str())
        .unwrap()["x"]
        .as_str()
        .unwrap()
        .to_string();
    let mut hs_header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    hs_header.kid = Some(kid.clone());
    hs_header.typ = Some("at+jwt".into());
    let hs256 = jsonwebtoken::encode(
        &hs_header,
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(&URL_SAFE_NO_PAD.decode(&x).unwrap()),
    )
    .unwrap();
    let unknown_kid = format!(
        "{}.{}.{}",
        b64(&json!({"alg": "EdDSA", "typ": "at+jwt", "kid": "someone-elses"})),
        parts[1],
        parts[2]
    );
    let mut other_sub = claims.clone();
    other_sub["sub"] = json!("usr_00000000000000000000000000000000");
    let tampered = format!("{}.{}.{}", parts[0], b64(&other_sub), parts[2]);
    // validly signed tokens with wrong claims, signed here with the real key (sealed under the KEK)
    let store = stack.store().await;
    let kek =
        control_plane::keys::Kek::from_base64(&std::fs::read_to_string(keys.kek_path()).unwrap())
            .unwrap();
    let manager = control_plane::KeyManager::new(
        store,
        std::sync::Arc::new(kek),
        control_plane::keys::KeySettings {
            alg: control_plane::keys::SigningAlg::EdDsa,
            token_ttl: Duration::from_secs(600),
            rotation_interval: None,
        },
        std::sync::Arc::new(keys.signer_clone()),
    );
    manager.refresh().await.unwrap();
    let signed = |change: &dyn Fn(&mut Value)| {
        let mut c = claims.clone();
        change(&mut c);
        manager.sign(&c).unwrap()
    };
    let now = gateway_core::unix_now();
    let cases = [
        (alg_none, "malformed_token"),
        (hs256, "algorithm_mismatch"),
        (unknown_kid, "unknown_key"),
        (tampered, "bad_signature"),
        (
            signed(&|c| {
                c["exp"] = json!(now - 3600);
                c["iat"] = json!(now - 4000);
                c["nbf"] = json!(now - 4000);
            }),
            "token_expired",
        ),
        (
            signed(&|c| c["aud"] = json!("someone-else")),
            "wrong_audience",
        ),
        (
            signed(&|c| c["iss"] = json!("https://evil.example")),
            "wrong_issuer",
        ),
        (signed(&|c| c["typ"] = json!("refresh")), "wrong_token_type"),
        (
            signed(&|c| c["nbf"] = json!(now + 3600)),
            "token_not_yet_valid",
        ),
        ("a.b".to_string(), "malformed_token"),
        ("x".repeat(9000), "malformed_token"),
    ];
    for (forged, reason) in cases {
        let (status, answer) = send(
            client,
            "POST",
            query.clone(),
            Some(&forged),
            Some(json!({})),
            &acme,
        )
        .await;
        assert_eq!(
            (status, answer["error"]["code"].as_str()),
            (401, Some(reason)),
            "{}",
            &forged[..forged.len().min(60)]
        );
    }

    // an oversized body: 413 in the envelope
    let big = json!({"blob": "z".repeat(4096)});
    let (status, answer) = send(
        client,
        "POST",
        query.clone(),
        Some(&token),
        Some(big),
        &acme,
    )
    .await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (413, Some("payload_too_large"))
    );

    // a disabled principal is refused within the propagation delay
    send(
        client,
        "POST",
        format!("{base}/admin/users/{user_id}/disable"),
        Some(admin),
        None,
        &[],
    )
    .await;
    let deadline = std::time::Instant::now() + START;
    loop {
        let (status, answer) = send(
            client,
            "POST",
            query.clone(),
            Some(&token),
            Some(json!({})),
            &acme,
        )
        .await;
        if status == 401 {
            assert_eq!(answer["error"]["code"], "principal_disabled");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "disable not enforced");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
