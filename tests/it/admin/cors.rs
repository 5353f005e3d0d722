//! CORS on the control plane's auth and admin APIs: the configured exact origins only,
//! with credentials; other origins get no CORS field at all.

use serde_json::json;

use super::{Env, env_with};

const ADMIN_UI: &str = "https://admin.example.com";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_configured_origins_may_call_the_apis_from_a_page() {
    let env: Env = env_with(&[
        "--cors-allowed-origins",
        "https://admin.example.com,http://localhost:3000",
    ])
    .await;
    let admin = env.admin().await;
    let preflight = |origin: &'static str| {
        env.client
            .request(
                reqwest::Method::OPTIONS,
                format!("{}/admin/users", env.base),
            )
            .header("origin", origin)
            .header("access-control-request-method", "GET")
            .header("access-control-request-headers", "authorization")
            .send()
    };
    // the Admin UI's preflight is answered, with credentials and a cache time
    let answer = preflight(ADMIN_UI).await.unwrap();
    assert!(answer.status().is_success(), "{}", answer.status());
    let field = |name: &str| {
        answer
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_ascii_lowercase())
    };
    assert_eq!(
        field("access-control-allow-origin").as_deref(),
        Some(ADMIN_UI)
    );
    assert_eq!(
        field("access-control-allow-credentials").as_deref(),
        Some("true")
    );
    assert!(
        field("access-control-allow-methods")
            .unwrap()
            .contains("get")
    );
    assert!(
        field("access-control-allow-headers")
            .unwrap()
            .contains("authorization")
    );
    assert_eq!(field("access-control-max-age").as_deref(), Some("600"));
    // another origin gets no allow-origin field, without which a browser accepts nothing
    let answer = preflight("https://evil.example").await.unwrap();
    assert!(
        answer
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
    // nor does a look-alike of an allowed one
    let answer = preflight("https://admin.example.com.evil.example")
        .await
        .unwrap();
    assert!(
        answer
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );

    // the Admin UI signs in and lists users; the answer names its origin and exposes the
    // correlation id
    let signin = env
        .client
        .post(format!("{}/v1/auth/signin", env.base))
        .header("origin", ADMIN_UI)
        .json(&json!({
            "email": gateway_tests::SnapshotKeys::ADMIN_EMAIL,
            "password": gateway_tests::SnapshotKeys::ADMIN_PASSWORD,
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(signin.status(), 200);
    assert_eq!(signin.headers()["access-control-allow-origin"], ADMIN_UI);
    let users = env
        .client
        .get(format!("{}/admin/users", env.base))
        .header("origin", ADMIN_UI)
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(users.status(), 200);
    assert_eq!(users.headers()["access-control-allow-origin"], ADMIN_UI);
    assert!(
        users.headers()["access-control-expose-headers"]
            .to_str()
            .unwrap()
            .to_ascii_lowercase()
            .contains("x-correlation-id")
    );
    // a page of another origin still gets its answer from the server, without the fields
    // that would let the browser hand it to the page
    let users = env
        .client
        .get(format!("{}/admin/users", env.base))
        .header("origin", "https://evil.example")
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert!(users.headers().get("access-control-allow-origin").is_none());
}
