//! Sign-up: verifiable tokens and stored hashes, refused sign-ups, email verification.

use gateway_store::Bucket;
use gateway_tests::smtp::SmtpSink;
use serde_json::{Value, json};

use super::{
    Env, PASSWORD, START, all_values, client, me, post, post_status, signin, signup,
    verify_with_jwks,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signup_and_signin_issue_verifiable_tokens_and_store_only_hashes() {
    let env = Env::new();
    let (_control, base) = env.control(&[]);
    let client = client();
    let user_id = signup(&client, &base, "Ada@Example.com").await;
    assert!(user_id.starts_with("usr_"));
    let tokens = signin(&client, &base, "ada@example.com").await;
    assert_eq!(tokens["token_type"], "Bearer");
    assert_eq!(tokens["expires_in"], 600);
    let access = tokens["access_token"].as_str().unwrap();
    let refresh = tokens["refresh_token"].as_str().unwrap();
    let (claims, _) = verify_with_jwks(&client, &base, access).await;
    assert_eq!(claims["sub"], user_id.as_str());
    assert_eq!(claims["typ"], "access");
    assert!(claims["sid"].is_string());
    assert!(claims.get("roles").is_none(), "no roles in the token");
    let (status, session) = me(&client, &base, access).await;
    assert_eq!(status, 200);
    assert_eq!(session["email"], "ada@example.com");
    assert_eq!(session["email_verified"], false);

    // T2.1: only hashes in the store
    let store = env.store().await;
    let mut stored = Vec::new();
    for bucket in [
        Bucket::Users,
        Bucket::Credentials,
        Bucket::Sessions,
        Bucket::Keys,
        Bucket::Tokens,
    ] {
        stored.extend(all_values(&store, bucket).await);
    }
    assert!(
        stored
            .iter()
            .any(|(k, v)| k.starts_with("password.") && v.contains("$argon2id$"))
    );
    assert!(stored.iter().any(|(k, _)| k.starts_with("session.")));
    let secret_part = refresh.rsplit('.').next().unwrap();
    for (key, value) in &stored {
        assert!(!value.contains(PASSWORD), "password in {key}");
        assert!(!value.contains(secret_part), "refresh token in {key}");
        assert!(!value.contains(access), "access token in {key}");
        assert!(!key.contains('@'), "raw email in key {key}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_signups_are_refused_in_the_envelope_and_write_nothing() {
    let env = Env::new();
    let (_control, base) = env.control(&[]);
    let client = client();
    signup(&client, &base, "taken@example.com").await;
    let url = format!("{base}/v1/auth/signup");
    let cases = [
        (
            json!({"email": "taken@example.com", "password": "another long passphrase"}),
            409,
            "email_taken",
        ),
        (
            json!({"email": "TAKEN@example.com ", "password": "another long passphrase"}),
            409,
            "email_taken",
        ),
        (
            json!({"email": "new@example.com", "password": "short"}),
            400,
            "password_too_short",
        ),
        (
            json!({"email": "new@example.com", "password": "passwordpassword"}),
            400,
            "password_too_common",
        ),
        (
            json!({"email": "new@example.com", "password": "x".repeat(257)}),
            400,
            "password_too_long",
        ),
        (
            json!({"email": "not-an-email", "password": PASSWORD}),
            400,
            "invalid_email",
        ),
        (json!({"email": "new@example.com"}), 400, "invalid_body"),
        (
            json!({"email": 42, "password": PASSWORD}),
            400,
            "invalid_body",
        ),
    ];
    for (body, status, code) in cases {
        let (got, answer) = post(&client, url.clone(), body.clone()).await;
        assert_eq!(
            (got, answer["error"]["code"].as_str()),
            (status, Some(code)),
            "{body} -> {answer}"
        );
        assert!(answer["error"]["correlation_id"].is_string());
        assert!(!answer.to_string().contains(PASSWORD));
    }
    let (status, missing) = post(&client, url.clone(), json!({"email": "new@example.com"})).await;
    assert_eq!(status, 400);
    assert!(
        missing["error"]["message"]
            .as_str()
            .unwrap()
            .contains("password")
    );
    // malformed json, wrong content type, oversized body
    let response = client
        .post(&url)
        .header("content-type", "application/json")
        .body("{\"email\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(
        response.json::<Value>().await.unwrap()["error"]["code"],
        "malformed_json"
    );
    let response = client.post(&url).body("email=a@b.co").send().await.unwrap();
    assert_eq!(response.status(), 415);
    let huge = json!({"email": "big@example.com", "password": "y".repeat(100_000)});
    let response = client.post(&url).json(&huge).send().await.unwrap();
    assert_eq!(response.status(), 413);
    assert_eq!(
        response.json::<Value>().await.unwrap()["error"]["code"],
        "payload_too_large"
    );

    let store = env.store().await;
    let users = all_values(&store, Bucket::Users).await;
    // the bootstrap admin and the one good signup, nothing else
    let count = |prefix: &str| users.iter().filter(|(k, _)| k.starts_with(prefix)).count();
    assert_eq!(count("user."), 2, "{users:?}");
    assert_eq!(count("email."), 2);
    assert_eq!(all_values(&store, Bucket::Credentials).await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn email_verification_tokens_confirm_the_address_once() {
    let env = Env::new();
    let smtp = SmtpSink::start().await;
    let smtp_url = smtp.url();
    let (_control, base) = env.control(&["--smtp-url", &smtp_url, "--require-verified-email"]);
    let client = client();
    signup(&client, &base, "verify@example.com").await;
    let mail = smtp.wait_for("verify@example.com", 1, START).await;
    assert!(mail.data.contains("Confirm your email address"));
    let token = mail
        .token()
        .unwrap_or_else(|| panic!("no token in {}", mail.data));

    // sign-in waits for verification when configured to
    let (status, code) = post_status(
        &client,
        format!("{base}/v1/auth/signin"),
        json!({"email": "verify@example.com", "password": PASSWORD}),
    )
    .await;
    assert_eq!((status, code.as_deref()), (403, Some("email_not_verified")));

    let url = format!("{base}/v1/auth/verify-email");
    assert_eq!(
        post_status(&client, url.clone(), json!({"token": "x".repeat(43)})).await,
        (400, Some("invalid_token".into()))
    );
    assert_eq!(
        post_status(&client, url.clone(), json!({"token": "short"})).await,
        (400, Some("invalid_token".into()))
    );
    let response = client
        .post(&url)
        .json(&json!({"token": token}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    assert_eq!(
        post_status(&client, url.clone(), json!({"token": token})).await,
        (400, Some("invalid_token".into())),
        "one use"
    );
    let tokens = signin(&client, &base, "verify@example.com").await;
    let (_, session) = me(&client, &base, tokens["access_token"].as_str().unwrap()).await;
    assert_eq!(session["email_verified"], true);
}
