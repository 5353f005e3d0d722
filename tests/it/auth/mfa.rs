//! MFA: TOTP enrolment, the sign-in challenge, recovery codes and replay.

use gateway_store::Bucket;
use serde_json::{Value, json};

use super::{Authenticator, Env, PASSWORD, all_values, client, post, post_status, signin, signup};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn totp_enrolment_challenge_recovery_codes_and_replay() {
    let env = Env::new();
    // the abuse limits have their own test; here they must not interfere
    let (_control, base) = env.control(&[
        "--limit-mfa-per-ip",
        "100/m",
        "--lockout-free-failures",
        "50",
    ]);
    let client = client();
    signup(&client, &base, "mfa@example.com").await;
    let tokens = signin(&client, &base, "mfa@example.com").await;
    let access = tokens["access_token"].as_str().unwrap().to_string();
    let authed = |path: &str, body: Value| {
        client
            .post(format!("{base}{path}"))
            .bearer_auth(&access)
            .json(&body)
            .send()
    };

    let enrol: Value = authed("/v1/auth/mfa/totp/enroll", json!({}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let secret = enrol["secret"].as_str().unwrap().to_string();
    assert!(
        enrol["otpauth_uri"]
            .as_str()
            .unwrap()
            .starts_with("otpauth://totp/Cloudlysis:mfa%40example.com?")
    );
    use base64::Engine;
    let png = base64::engine::general_purpose::STANDARD
        .decode(enrol["qr_png_base64"].as_str().unwrap())
        .unwrap();
    assert_eq!(&png[..4], b"\x89PNG");
    let mut app = Authenticator::new(&secret);

    // T4.4: a wrong code is refused, a valid one confirms and yields ten recovery codes
    // (400, not 401: the caller is signed in, the code is a bad input)
    let response = authed("/v1/auth/mfa/totp/confirm", json!({"code": "000000"}))
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let confirm_code = app.next_code();
    let confirmed: Value = authed("/v1/auth/mfa/totp/confirm", json!({"code": confirm_code}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let recovery: Vec<String> =
        serde_json::from_value(confirmed["recovery_codes"].clone()).unwrap();
    assert_eq!(recovery.len(), 10);
    let response = authed("/v1/auth/mfa/totp/enroll", json!({})).await.unwrap();
    assert_eq!(response.status(), 409, "no second enrolment while on");

    // sign-in now asks for the second factor, and gives no tokens yet
    let (status, challenge) = post(
        &client,
        format!("{base}/v1/auth/signin"),
        json!({"email": "mfa@example.com", "password": PASSWORD}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(challenge["mfa_required"], true);
    assert!(challenge.get("access_token").is_none());
    let mfa_token = challenge["mfa_token"].as_str().unwrap().to_string();
    let verify = format!("{base}/v1/auth/mfa/verify");
    // replaying the code used for confirmation is refused
    assert_eq!(
        post_status(
            &client,
            verify.clone(),
            json!({"mfa_token": mfa_token, "code": confirm_code})
        )
        .await,
        (401, Some("invalid_mfa_code".into()))
    );
    let code = app.next_code();
    let (status, session) = post(
        &client,
        verify.clone(),
        json!({"mfa_token": mfa_token, "code": code}),
    )
    .await;
    assert_eq!(status, 200, "{session}");
    assert!(session["access_token"].is_string());
    // the challenge is spent
    assert_eq!(
        post_status(
            &client,
            verify.clone(),
            json!({"mfa_token": mfa_token, "code": "000000"})
        )
        .await,
        (401, Some("invalid_mfa_token".into()))
    );

    // a recovery code works once
    let challenge = |client: reqwest::Client, base: String| async move {
        let (_, body) = post(
            &client,
            format!("{base}/v1/auth/signin"),
            json!({"email": "mfa@example.com", "password": PASSWORD}),
        )
        .await;
        body["mfa_token"].as_str().unwrap().to_string()
    };
    let second = challenge(client.clone(), base.clone()).await;
    let (status, _) = post(
        &client,
        verify.clone(),
        json!({"mfa_token": second, "recovery_code": recovery[3].to_lowercase()}),
    )
    .await;
    assert_eq!(status, 200);
    let third = challenge(client.clone(), base.clone()).await;
    assert_eq!(
        post_status(
            &client,
            verify.clone(),
            json!({"mfa_token": third, "recovery_code": recovery[3]})
        )
        .await,
        (401, Some("invalid_mfa_code".into()))
    );
    // both or neither factor in one request is bad input
    assert_eq!(
        post_status(&client, verify.clone(), json!({"mfa_token": third})).await,
        (400, Some("invalid_body".into()))
    );

    // guessing: five wrong codes end the challenge
    let fourth = challenge(client.clone(), base.clone()).await;
    let mut last = None;
    for guess in ["111111", "222222", "333333", "444444", "555555"] {
        last = Some(
            post_status(
                &client,
                verify.clone(),
                json!({"mfa_token": fourth, "code": guess}),
            )
            .await,
        );
    }
    assert_eq!(last.unwrap(), (401, Some("mfa_attempts_exhausted".into())));
    assert_eq!(
        post_status(
            &client,
            verify.clone(),
            json!({"mfa_token": fourth, "recovery_code": recovery[0]})
        )
        .await,
        (401, Some("invalid_mfa_token".into()))
    );

    // secrets and recovery codes are never stored in the clear
    let store = env.store().await;
    for (key, value) in all_values(&store, Bucket::Credentials).await {
        assert!(!value.contains(&secret), "{key}");
        for code in &recovery {
            assert!(
                !value.contains(code.as_str()) && !value.contains(&code.replace('-', "")),
                "{key}"
            );
        }
    }

    // turning MFA off needs a fresh code
    let response = authed("/v1/auth/mfa/totp/disable", json!({"code": "123456"}))
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let response = authed(
        "/v1/auth/mfa/totp/disable",
        json!({"code": app.next_code()}),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), 204);
    signin(&client, &base, "mfa@example.com").await;
}
