//! Service accounts: client-credentials tokens and overlapping rotated secrets.

use std::time::Duration;

use gateway_store::Bucket;
use serde_json::{Value, json};

use super::{Env, all_values, client, me, post_status, verify_with_jwks};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_accounts_get_tokens_with_client_credentials_and_rotated_secrets_overlap() {
    use control_plane::auth::service_accounts;
    let env = Env::new();
    let (_control, base) = env.control(&[]);
    let client = client();
    let store = env.store().await;
    let now = gateway_core::unix_now();
    let (account, secret) = service_accounts::create(&store, "billing exporter", now)
        .await
        .unwrap();
    let url = format!("{base}/v1/auth/token");

    // form body (RFC 6749)
    let response = client
        .post(&url)
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", &account.id),
            ("client_secret", &secret),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["cache-control"], "no-store");
    let tokens: Value = response.json().await.unwrap();
    assert!(tokens.get("refresh_token").is_none());
    let access = tokens["access_token"].as_str().unwrap();
    let (claims, _) = verify_with_jwks(&client, &base, access).await;
    assert_eq!(claims["sub"], account.id.as_str());
    assert!(claims.get("sid").is_none());
    let (status, who) = me(&client, &base, access).await;
    assert_eq!(
        (status, who["kind"].as_str()),
        (200, Some("service_account"))
    );

    // JSON body with HTTP Basic client authentication
    let response = client
        .post(&url)
        .basic_auth(&account.id, Some(&secret))
        .json(&json!({"grant_type": "client_credentials"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    // refusals
    let cases = [
        (
            json!({"grant_type": "client_credentials", "client_id": account.id, "client_secret": "cs_wrong"}),
            401,
            "invalid_client",
        ),
        (
            json!({"grant_type": "client_credentials", "client_id": "svc_nobody", "client_secret": secret}),
            401,
            "invalid_client",
        ),
        (
            json!({"grant_type": "password", "client_id": account.id, "client_secret": secret}),
            400,
            "unsupported_grant_type",
        ),
        (
            json!({"grant_type": "client_credentials", "client_id": account.id}),
            400,
            "invalid_request",
        ),
        (
            json!({"client_id": account.id, "client_secret": secret}),
            400,
            "invalid_request",
        ),
    ];
    for (body, status, code) in cases {
        assert_eq!(
            post_status(&client, url.clone(), body.clone()).await,
            (status, Some(code.into())),
            "{body}"
        );
    }
    let response = client
        .post(&url)
        .body("grant_type=client_credentials")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 415);

    // rotation: the old secret keeps working during the overlap, the new one at once
    let grant = |secret: String| {
        let client = client.clone();
        let url = url.clone();
        let id = account.id.clone();
        async move {
            client
                .post(&url)
                .json(&json!({"grant_type": "client_credentials", "client_id": id, "client_secret": secret}))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    let second =
        service_accounts::rotate_secret(&store, &account.id, Duration::from_secs(3600), now)
            .await
            .unwrap();
    assert_eq!(grant(secret.clone()).await, 200);
    assert_eq!(grant(second.clone()).await, 200);
    // a rotation without overlap retires every older secret at once
    let third = service_accounts::rotate_secret(
        &store,
        &account.id,
        Duration::ZERO,
        gateway_core::unix_now(),
    )
    .await
    .unwrap();
    assert_eq!(grant(secret.clone()).await, 401);
    assert_eq!(grant(second).await, 401);
    assert_eq!(grant(third).await, 200);
    // only hashes are stored
    for (key, value) in all_values(&store, Bucket::Iam).await {
        assert!(!value.contains(&secret), "{key}");
    }
}
