//! Principal administration: users disabled, deleted and scoped, and service accounts.

use gateway_store::Bucket;
use serde_json::json;

use super::{PASSWORD, env, published};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_administration_disables_deletes_and_scopes_tenant_admins() {
    let env = env().await;
    let admin = env.admin().await;
    let store = env.store().await;
    let (_, ada) = env.user("ada@example.com").await;
    let (_, bob) = env.user("bob@example.com").await;
    let (_, boss) = env.user("boss@example.com").await;
    for (who, role) in [(&ada, "tenant_member"), (&boss, "tenant_admin")] {
        let (status, _) = env
            .call(
                "POST",
                "/admin/assignments",
                Some(&admin),
                Some(json!({"principal_id": who, "tenant_id": "acme", "role": role})),
            )
            .await;
        assert_eq!(status, 201);
    }
    let (boss_token, _) = env.signin("boss@example.com", PASSWORD).await;

    // listing: filters and pagination for the platform admin, one tenant for the tenant admin
    let (_, page) = env
        .call("GET", "/admin/users?limit=2", Some(&admin), None)
        .await;
    assert_eq!(page["users"].as_array().unwrap().len(), 2);
    let after = page["next_after"].as_str().unwrap();
    let (_, rest) = env
        .call(
            "GET",
            &format!("/admin/users?limit=10&after={after}"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(
        rest["users"].as_array().unwrap().len(),
        2,
        "4 users in all: admin, ada, bob, boss"
    );
    let (_, by_email) = env
        .call(
            "GET",
            "/admin/users?email=BOB@example.com",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(by_email["users"][0]["id"], bob.as_str());
    let (status, members) = env
        .call(
            "GET",
            "/admin/users?tenant_id=acme",
            Some(&boss_token),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let ids: std::collections::BTreeSet<String> = members["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, [ada.clone(), boss.clone()].into_iter().collect());
    let (status, _) = env
        .call("GET", "/admin/users", Some(&boss_token), None)
        .await;
    assert_eq!(status, 400, "a tenant admin names the tenant");
    let (status, _) = env
        .call(
            "GET",
            &format!("/admin/users/{bob}"),
            Some(&boss_token),
            None,
        )
        .await;
    assert_eq!(status, 403, "bob is not in acme");
    let (status, _) = env
        .call(
            "DELETE",
            &format!("/admin/users/{ada}/sessions"),
            Some(&boss_token),
            None,
        )
        .await;
    assert_eq!(status, 200, "a tenant admin signs members out");
    let (status, _) = env
        .call(
            "POST",
            &format!("/admin/users/{ada}/disable"),
            Some(&boss_token),
            None,
        )
        .await;
    assert_eq!(status, 403, "disabling needs iam.users.write");

    // disable: sign-in refused, the document says so; enable restores
    let (status, _) = env
        .call(
            "POST",
            &format!("/admin/users/{ada}/disable"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let doc = published(&env, &store, &ada).await.unwrap();
    assert!(doc.payload.disabled);
    let (status, answer) = env
        .call(
            "POST",
            "/v1/auth/signin",
            None,
            Some(json!({"email": "ada@example.com", "password": PASSWORD})),
        )
        .await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (403, Some("account_disabled"))
    );
    env.call(
        "POST",
        &format!("/admin/users/{ada}/enable"),
        Some(&admin),
        None,
    )
    .await;
    assert!(
        !published(&env, &store, &ada)
            .await
            .unwrap()
            .payload
            .disabled
    );
    env.signin("ada@example.com", PASSWORD).await;

    // delete: everything about the user goes, the document is disabled
    let (status, _) = env
        .call("DELETE", &format!("/admin/users/{ada}"), Some(&admin), None)
        .await;
    assert_eq!(status, 204);
    let (status, _) = env
        .call("GET", &format!("/admin/users/{ada}"), Some(&admin), None)
        .await;
    assert_eq!(status, 404);
    for bucket in [
        Bucket::Users,
        Bucket::Credentials,
        Bucket::Sessions,
        Bucket::Identities,
    ] {
        let kv = store.kv(bucket);
        for key in kv.keys("", None, 1000).await.unwrap().keys {
            if key.contains(&ada) {
                let entry = kv.get(&key).await.unwrap().unwrap();
                let text = String::from_utf8_lossy(&entry.value);
                assert!(
                    text.contains("\"revoked_at\":") && !text.contains("\"revoked_at\":null"),
                    "{key} left behind: {text}"
                );
            }
        }
    }
    let doc = published(&env, &store, &ada).await.unwrap();
    assert!(doc.payload.disabled && doc.payload.grants.is_empty());
    let (status, _) = env
        .call(
            "POST",
            "/v1/auth/signin",
            None,
            Some(json!({"email": "ada@example.com", "password": PASSWORD})),
        )
        .await;
    assert_eq!(status, 401);
    // the address is free again
    env.user("ada@example.com").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_accounts_are_managed_through_the_admin_api() {
    let env = env().await;
    let admin = env.admin().await;
    let (status, created) = env
        .call(
            "POST",
            "/admin/service-accounts",
            Some(&admin),
            Some(json!({"name": "ingest", "tenant_id": "acme"})),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    let secret = created["client_secret"].as_str().unwrap().to_string();
    let token_for = |secret: String| {
        let env = &env;
        let id = id.clone();
        async move {
            env.call("POST", "/v1/auth/token", None, Some(json!({"grant_type": "client_credentials", "client_id": id, "client_secret": secret}))).await.0
        }
    };
    assert_eq!(token_for(secret.clone()).await, 200);
    let (status, listed) = env
        .call(
            "GET",
            &format!("/admin/service-accounts/{id}"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert!(
        listed.get("client_secret").is_none(),
        "the secret is shown once"
    );
    let (status, rotated) = env
        .call(
            "POST",
            &format!("/admin/service-accounts/{id}/rotate"),
            Some(&admin),
            Some(json!({"overlap_seconds": 0})),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(token_for(secret).await, 401);
    assert_eq!(
        token_for(rotated["client_secret"].as_str().unwrap().to_string()).await,
        200
    );
    // roles are assigned like any principal's
    let (status, _) = env
        .call(
            "POST",
            "/admin/assignments",
            Some(&admin),
            Some(json!({"principal_id": id, "tenant_id": "acme", "role": "tenant_member"})),
        )
        .await;
    assert_eq!(status, 201);
    let (status, _) = env
        .call(
            "DELETE",
            &format!("/admin/service-accounts/{id}"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(status, 204);
    assert_eq!(
        token_for(rotated["client_secret"].as_str().unwrap().to_string()).await,
        401
    );
    let store = env.store().await;
    let doc = published(&env, &store, &id).await.unwrap();
    assert!(doc.payload.disabled && doc.payload.grants.is_empty());
}
