//! Account recovery: password reset.

use std::time::Duration;

use gateway_store::Bucket;
use gateway_tests::smtp::SmtpSink;
use serde_json::json;

use super::{Env, PASSWORD, START, all_values, client, me, post, post_status, signin, signup};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_reset_is_one_time_expiring_and_ends_every_session() {
    let env = Env::new();
    let smtp = SmtpSink::start().await;
    let smtp_url = smtp.url();
    let (_control, base) = env.control(&["--smtp-url", &smtp_url]);
    let client = client();
    let user_id = signup(&client, &base, "reset@example.com").await;
    smtp.wait_for("reset@example.com", 1, START).await;
    let session = signin(&client, &base, "reset@example.com").await;

    // forgot answers alike for unknown and known addresses; only the known one gets mail
    let forgot = format!("{base}/v1/auth/forgot");
    let unknown = post(
        &client,
        forgot.clone(),
        json!({"email": "nobody@example.com"}),
    )
    .await;
    let malformed = post(&client, forgot.clone(), json!({"email": "not an address"})).await;
    let known = post(
        &client,
        forgot.clone(),
        json!({"email": "Reset@Example.com"}),
    )
    .await;
    assert_eq!(unknown.0, 202);
    assert_eq!(unknown, known);
    assert_eq!(unknown, malformed);
    let mail = smtp.wait_for("reset@example.com", 2, START).await;
    assert!(mail.data.contains("Reset your password"));
    assert!(
        smtp.mails()
            .iter()
            .all(|m| !m.to.contains(&"nobody@example.com".to_string()))
    );
    let token = mail
        .token()
        .unwrap_or_else(|| panic!("no token in {}", mail.data));

    let reset = format!("{base}/v1/auth/reset");
    // a refused new password leaves the token usable
    assert_eq!(
        post_status(
            &client,
            reset.clone(),
            json!({"token": token, "new_password": "short"})
        )
        .await,
        (400, Some("password_too_short".into()))
    );
    let new_password = "saffron harbour quietly ticking";
    let response = client
        .post(&reset)
        .json(&json!({"token": token, "new_password": new_password}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    // T4.3: one use
    assert_eq!(
        post_status(
            &client,
            reset.clone(),
            json!({"token": token, "new_password": "another fine passphrase"})
        )
        .await,
        (400, Some("invalid_token".into()))
    );
    // every session and token of the account ended
    assert_eq!(
        me(&client, &base, session["access_token"].as_str().unwrap())
            .await
            .0,
        401
    );
    let (status, _) = post(
        &client,
        format!("{base}/v1/auth/refresh"),
        json!({"refresh_token": session["refresh_token"]}),
    )
    .await;
    assert_eq!(status, 401);
    assert_eq!(
        post_status(
            &client,
            format!("{base}/v1/auth/signin"),
            json!({"email": "reset@example.com", "password": PASSWORD})
        )
        .await,
        (401, Some("invalid_credentials".into()))
    );
    let (status, _) = post(
        &client,
        format!("{base}/v1/auth/signin"),
        json!({"email": "reset@example.com", "password": new_password}),
    )
    .await;
    assert_eq!(status, 200);

    // T4.3: an expired token is refused (issued here already expired)
    let store = env.store().await;
    let expired = control_plane::auth::onetime::issue(
        &store,
        control_plane::auth::onetime::Purpose::Reset,
        &user_id,
        "reset@example.com",
        Duration::ZERO,
        gateway_core::unix_now(),
    )
    .await
    .unwrap();
    assert_eq!(
        post_status(
            &client,
            reset.clone(),
            json!({"token": expired, "new_password": "yet another passphrase here"})
        )
        .await,
        (400, Some("invalid_token".into()))
    );
    // only hashes of one-time tokens are stored
    for (key, value) in all_values(&store, Bucket::Tokens).await {
        assert!(!key.contains(&token) && !value.contains(&token), "{key}");
        assert!(
            !key.contains(&expired) && !value.contains(&expired),
            "{key}"
        );
    }
}
