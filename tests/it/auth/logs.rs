//! No secret of any auth flow reaches the logs.

use gateway_tests::smtp::SmtpSink;
use serde_json::{Value, json};

use super::{Authenticator, Env, PASSWORD, START, client, post, signin, signup};

/// T10.2: every auth flow, logs at the most verbose level, and not one secret in them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_the_logs_of_any_auth_flow() {
    let env = Env::new();
    let smtp = SmtpSink::start().await;
    let smtp_url = smtp.url();
    let (control, base) = env.control(&[
        "--smtp-url",
        &smtp_url,
        "--log",
        "trace",
        "--log-format",
        "json",
        "--limit-mfa-per-ip",
        "100/m",
    ]);
    let client = client();
    let mut secrets: Vec<String> = vec![PASSWORD.to_string()];
    let url = |path: &str| format!("{base}{path}");

    signup(&client, &base, "logs@example.com").await;
    let verify_token = smtp
        .wait_for("logs@example.com", 1, START)
        .await
        .token()
        .unwrap();
    secrets.push(verify_token.clone());
    let (status, _) = post(
        &client,
        url("/v1/auth/verify-email"),
        json!({"token": verify_token}),
    )
    .await;
    assert_eq!(status, 204);
    // a wrong password, then a good sign-in and a refresh
    post(
        &client,
        url("/v1/auth/signin"),
        json!({"email": "logs@example.com", "password": "not the right passphrase"}),
    )
    .await;
    secrets.push("not the right passphrase".into());
    let tokens = signin(&client, &base, "logs@example.com").await;
    let refreshed = post(
        &client,
        url("/v1/auth/refresh"),
        json!({"refresh_token": tokens["refresh_token"]}),
    )
    .await
    .1;
    for t in [&tokens, &refreshed] {
        secrets.push(t["access_token"].as_str().unwrap().to_string());
        secrets.push(t["refresh_token"].as_str().unwrap().to_string());
    }
    let access = refreshed["access_token"].as_str().unwrap().to_string();

    // MFA: enrolment, confirmation, a challenge answered with a code and one with a recovery code
    let enrol: Value = client
        .post(url("/v1/auth/mfa/totp/enroll"))
        .bearer_auth(&access)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let totp_secret = enrol["secret"].as_str().unwrap().to_string();
    secrets.push(totp_secret.clone());
    secrets.push(enrol["otpauth_uri"].as_str().unwrap().to_string());
    let mut app = Authenticator::new(&totp_secret);
    let confirmed: Value = client
        .post(url("/v1/auth/mfa/totp/confirm"))
        .bearer_auth(&access)
        .json(&json!({"code": app.next_code()}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let recovery: Vec<String> =
        serde_json::from_value(confirmed["recovery_codes"].clone()).unwrap();
    secrets.extend(recovery.iter().cloned());
    for answer in [
        json!({"code": app.next_code()}),
        json!({"recovery_code": recovery[0]}),
    ] {
        let (_, challenge) = post(
            &client,
            url("/v1/auth/signin"),
            json!({"email": "logs@example.com", "password": PASSWORD}),
        )
        .await;
        let mfa_token = challenge["mfa_token"].as_str().unwrap().to_string();
        secrets.push(mfa_token.clone());
        let mut body = answer.clone();
        body["mfa_token"] = json!(mfa_token);
        let (status, session) = post(&client, url("/v1/auth/mfa/verify"), body).await;
        assert_eq!(status, 200, "{session}");
        secrets.push(session["access_token"].as_str().unwrap().to_string());
        secrets.push(session["refresh_token"].as_str().unwrap().to_string());
    }

    // forgot and reset
    post(
        &client,
        url("/v1/auth/forgot"),
        json!({"email": "logs@example.com"}),
    )
    .await;
    let reset_token = smtp
        .wait_for("logs@example.com", 2, START)
        .await
        .token()
        .unwrap();
    secrets.push(reset_token.clone());
    let new_password = "brass lantern over quiet water";
    secrets.push(new_password.into());
    let (status, _) = post(
        &client,
        url("/v1/auth/reset"),
        json!({"token": reset_token, "new_password": new_password}),
    )
    .await;
    assert_eq!(status, 204);

    // service account
    let store = env.store().await;
    let (account, client_secret) =
        control_plane::auth::service_accounts::create(&store, "logger", gateway_core::unix_now())
            .await
            .unwrap();
    secrets.push(client_secret.clone());
    let service: Value = client
        .post(url("/v1/auth/token"))
        .basic_auth(&account.id, Some(&client_secret))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    secrets.push(service["access_token"].as_str().unwrap().to_string());

    // key material on disk
    let kek = std::fs::read_to_string(env.keys.kek_path()).unwrap();
    secrets.push(kek.trim().to_string());
    for line in std::fs::read_to_string(env.keys.signing_path())
        .unwrap()
        .lines()
    {
        if !line.starts_with("-----") {
            secrets.push(line.to_string());
        }
    }

    let logs = [control.logs(), control.stderr()].concat().join("\n");
    assert!(logs.lines().count() > 100, "trace logging is on");
    assert!(logs.contains("request finished"));
    for secret in &secrets {
        assert!(
            secret.len() >= 8,
            "secret too short to search for: {secret:?}"
        );
        // JWTs are also checked by their signature part alone
        let needles: Vec<&str> = if secret.matches('.').count() == 2 && secret.starts_with("ey") {
            vec![secret.as_str(), secret.rsplit('.').next().unwrap()]
        } else {
            vec![secret.as_str()]
        };
        for needle in needles {
            assert!(
                !logs.contains(needle),
                "a secret reached the logs: {needle}"
            );
        }
    }
}
