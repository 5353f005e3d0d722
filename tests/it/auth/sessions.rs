//! Refresh and sessions: rotation, reuse detection, sign-out, and signing-key rotation.

use std::collections::HashSet;
use std::time::Duration;

use futures::future::join_all;
use gateway_store::{AuditQuery, Bucket};
use gateway_tests::process::wait_for_status;
use serde_json::{Value, json};

use super::{Env, START, all_values, client, me, post, signin, signup, verify_with_jwks};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_rotates_and_concurrent_refreshes_have_one_winner_across_replicas() {
    let env = Env::new();
    let (_a, base_a) = env.control(&[]);
    let (_b, base_b) = env.control(&[]);
    let client = client();
    signup(&client, &base_a, "race@example.com").await;
    let first = signin(&client, &base_b, "race@example.com").await;
    let refresh = first["refresh_token"].as_str().unwrap().to_string();

    // T4.2: a rotated token is no longer valid; within the grace window the session lives on
    let (status, second) = post(
        &client,
        format!("{base_a}/v1/auth/refresh"),
        json!({"refresh_token": refresh}),
    )
    .await;
    assert_eq!(status, 200, "{second}");
    assert_ne!(second["refresh_token"], first["refresh_token"]);
    let (status, again) = post(
        &client,
        format!("{base_b}/v1/auth/refresh"),
        json!({"refresh_token": refresh}),
    )
    .await;
    assert_eq!(
        (status, again["error"]["code"].as_str()),
        (409, Some("refresh_token_already_rotated"))
    );
    let current = second["refresh_token"].as_str().unwrap().to_string();

    // 12 concurrent refreshes with one token, split over both replicas: exactly one wins
    let attempts = (0..12).map(|i| {
        let base = if i % 2 == 0 { &base_a } else { &base_b };
        post(
            &client,
            format!("{base}/v1/auth/refresh"),
            json!({"refresh_token": current}),
        )
    });
    let results = join_all(attempts).await;
    let winners: Vec<_> = results.iter().filter(|(s, _)| *s == 200).collect();
    assert_eq!(winners.len(), 1, "{results:?}");
    assert!(
        results.iter().all(|(s, b)| *s == 200
            || (*s == 409 && b["error"]["code"] == "refresh_token_already_rotated")),
        "{results:?}"
    );
    // the winner's token works, on either replica
    let next = winners[0].1["refresh_token"].as_str().unwrap();
    let (status, _) = post(
        &client,
        format!("{base_b}/v1/auth/refresh"),
        json!({"refresh_token": next}),
    )
    .await;
    assert_eq!(status, 200);
    // garbage never revokes anything
    let (status, body) = post(
        &client,
        format!("{base_a}/v1/auth/refresh"),
        json!({"refresh_token": "usr_x.y.z"}),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("invalid_refresh_token"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reusing_a_rotated_refresh_token_revokes_the_session_and_is_audited() {
    let env = Env::new();
    let (_control, base) = env.control(&["--refresh-reuse-grace", "0s"]);
    let client = client();
    let user_id = signup(&client, &base, "reuse@example.com").await;
    let first = signin(&client, &base, "reuse@example.com").await;
    let stolen = first["refresh_token"].as_str().unwrap().to_string();
    let (_, second) = post(
        &client,
        format!("{base}/v1/auth/refresh"),
        json!({"refresh_token": stolen}),
    )
    .await;
    let legit = second["refresh_token"].as_str().unwrap().to_string();
    let access = second["access_token"].as_str().unwrap().to_string();
    // wait past the (zero) grace window: the clock must move one second on
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, body) = post(
        &client,
        format!("{base}/v1/auth/refresh"),
        json!({"refresh_token": stolen}),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("refresh_token_reused"))
    );
    // the whole family is gone: the legitimate token and the session's access token too
    let (status, body) = post(
        &client,
        format!("{base}/v1/auth/refresh"),
        json!({"refresh_token": legit}),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("session_revoked"))
    );
    let (status, _) = me(&client, &base, &access).await;
    assert_eq!(status, 401);
    let store = env.store().await;
    let audit = store
        .audit()
        .read(&AuditQuery {
            tenant: None,
            from_seq: 1,
            limit: 100,
        })
        .await
        .unwrap();
    let reuse = audit
        .iter()
        .find(|r| r.action == "auth.refresh.reuse")
        .expect("reuse audited");
    let record: Value = serde_json::from_slice(&reuse.data).unwrap();
    assert_eq!(record["target"], user_id.as_str());
    assert!(!String::from_utf8_lossy(&reuse.data).contains(&stolen[stolen.len() - 20..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signout_ends_one_session_and_signout_all_ends_every_token() {
    let env = Env::new();
    let (_control, base) = env.control(&[]);
    let client = client();
    signup(&client, &base, "out@example.com").await;
    let one = signin(&client, &base, "out@example.com").await;
    let two = signin(&client, &base, "out@example.com").await;
    let three = signin(&client, &base, "out@example.com").await;
    let token = |t: &Value, f: &str| t[f].as_str().unwrap().to_string();

    let response = client
        .post(format!("{base}/v1/auth/signout"))
        .bearer_auth(token(&one, "access_token"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    assert_eq!(
        me(&client, &base, &token(&one, "access_token")).await.0,
        401
    );
    let (status, _) = post(
        &client,
        format!("{base}/v1/auth/refresh"),
        json!({"refresh_token": token(&one, "refresh_token")}),
    )
    .await;
    assert_eq!(status, 401);
    assert_eq!(
        me(&client, &base, &token(&two, "access_token")).await.0,
        200,
        "other sessions live on"
    );

    let response = client
        .post(format!("{base}/v1/auth/signout"))
        .bearer_auth(token(&two, "access_token"))
        .json(&json!({"all": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    for t in [&two, &three] {
        assert_eq!(me(&client, &base, &token(t, "access_token")).await.0, 401);
        let (status, _) = post(
            &client,
            format!("{base}/v1/auth/refresh"),
            json!({"refresh_token": token(t, "refresh_token")}),
        )
        .await;
        assert_eq!(status, 401);
    }
    // signing in again works
    let fresh = signin(&client, &base, "out@example.com").await;
    assert_eq!(
        me(&client, &base, &token(&fresh, "access_token")).await.0,
        200
    );
    // no token, a malformed one, or a bad body
    let response = client
        .post(format!("{base}/v1/auth/signout"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    for bad in ["Bearer", "Basic abc", "Bearer not.a.jwt"] {
        let response = client
            .get(format!("{base}/v1/auth/session"))
            .header("authorization", bad)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401, "{bad}");
    }
    let response = client
        .post(format!("{base}/v1/auth/signout"))
        .bearer_auth(token(&fresh, "access_token"))
        .header("content-type", "application/json")
        .body("{\"all\": \"yes please\"}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(
        me(&client, &base, &token(&fresh, "access_token")).await.0,
        200,
        "a refused signout changes nothing"
    );
    // sign-out everywhere, sign in, sign-out everywhere again, in quick succession (usually
    // within one second, where a token issued after the first sign-out carries the next
    // second as iat): each sign-out refuses every token issued before it
    let mut last = fresh;
    for round in 0..3 {
        let response = client
            .post(format!("{base}/v1/auth/signout"))
            .bearer_auth(token(&last, "access_token"))
            .json(&json!({"all": true}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 204, "round {round}");
        assert_eq!(
            me(&client, &base, &token(&last, "access_token")).await.0,
            401,
            "round {round}: a token from before the sign-out still works"
        );
        last = signin(&client, &base, "out@example.com").await;
        assert_eq!(
            me(&client, &base, &token(&last, "access_token")).await.0,
            200,
            "round {round}: a token after the sign-out is refused"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_rotation_keeps_old_tokens_valid_and_new_tokens_carry_the_new_kid() {
    let env = Env::new();
    let (_control, base) = env.control(&[]);
    let client = client();
    signup(&client, &base, "keys@example.com").await;
    let before = signin(&client, &base, "keys@example.com").await;
    let old_access = before["access_token"].as_str().unwrap().to_string();
    let (_, old_kid) = verify_with_jwks(&client, &base, &old_access).await;

    // rotate from another "replica": this process, sharing the store and the KEK
    let store = env.store().await;
    let kek = control_plane::keys::Kek::from_base64(
        &std::fs::read_to_string(env.keys.kek_path()).unwrap(),
    )
    .unwrap();
    let manager = control_plane::KeyManager::new(
        store.clone(),
        std::sync::Arc::new(kek),
        control_plane::keys::KeySettings {
            alg: control_plane::keys::SigningAlg::EdDsa,
            token_ttl: Duration::from_secs(600),
            rotation_interval: None,
        },
        std::sync::Arc::new(env.keys.signer_clone()),
    );
    manager.refresh().await.unwrap();
    let new_kid = manager.rotate(gateway_core::unix_now()).await.unwrap();
    assert_ne!(new_kid, old_kid);

    // the running control plane follows the ring: new tokens carry the new kid
    let deadline = std::time::Instant::now() + START;
    loop {
        let after = signin(&client, &base, "keys@example.com").await;
        let (_, kid) =
            verify_with_jwks(&client, &base, after["access_token"].as_str().unwrap()).await;
        if kid == new_kid {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "new key not used");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // the old token still verifies (retiring key stays published) and is accepted
    verify_with_jwks(&client, &base, &old_access).await;
    assert_eq!(me(&client, &base, &old_access).await.0, 200);

    // the signed jwks document lists next, current and retiring keys
    let doc = store
        .kv(Bucket::Snapshots)
        .get("jwks")
        .await
        .unwrap()
        .unwrap();
    let verified: gateway_core::signed::Verified<gateway_core::jwks::JwksDocument> =
        gateway_core::signed::DocVerifyingKeys::new([env.keys.signer.verifying_key()])
            .verify(&doc.value, "jwks")
            .unwrap();
    let statuses: HashSet<String> = verified
        .payload
        .keys
        .iter()
        .map(|k| format!("{:?}", k.status))
        .collect();
    assert_eq!(
        statuses,
        ["Next", "Current", "Retiring"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    );
    assert!(verified.revision >= 2);
    // no private key material anywhere in the published or stored documents
    for (key, value) in all_values(&store, Bucket::Keys).await {
        assert!(!value.contains("PRIVATE KEY"), "{key}");
    }
    wait_for_status(&client, &format!("{base}/ready"), 200, START).await;
}
