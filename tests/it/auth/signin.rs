//! Sign-in: alike answers for unknown accounts and wrong passwords, limits and backoff on abuse.

use std::time::Duration;

use gateway_store::AuditQuery;
use serde_json::{Value, json};

use super::{Env, PASSWORD, START, client, post, signup};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signin_answers_alike_for_unknown_accounts_and_wrong_passwords() {
    let env = Env::new();
    let (_control, base) = env.control(&[]);
    let client = client();
    signup(&client, &base, "known@example.com").await;
    let url = format!("{base}/v1/auth/signin");
    let mut answers = Vec::new();
    for body in [
        json!({"email": "known@example.com", "password": "wrong but long enough"}),
        json!({"email": "unknown@example.com", "password": "wrong but long enough"}),
        json!({"email": "not an email", "password": "x"}),
        json!({"email": "known@example.com", "password": "z".repeat(5000)}),
    ] {
        let (status, mut answer) = post(&client, url.clone(), body).await;
        answer["error"]["correlation_id"] = Value::Null;
        answers.push((status, answer));
    }
    assert!(answers.iter().all(|a| a == &answers[0]), "{answers:?}");
    assert_eq!(answers[0].0, 401);
    assert_eq!(answers[0].1["error"]["code"], "invalid_credentials");

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
    let failed = audit
        .iter()
        .filter(|r| r.action == "auth.signin")
        .filter(|r| serde_json::from_slice::<Value>(&r.data).unwrap()["outcome"] == "failed")
        .count();
    assert!(failed >= 2, "failed sign-ins are audited");
}

/// A client whose requests come from `ip` (any address of 127.0.0.0/8 works on loopback).
fn client_from(ip: [u8; 4]) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(std::net::IpAddr::from(ip))
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abusive_patterns_hit_429_while_a_normal_user_elsewhere_is_unaffected() {
    let env = Env::new();
    let (_control, base) = env.control(&[
        "--limit-signin-per-ip",
        "6/m",
        "--limit-mfa-per-ip",
        "3/m",
        "--lockout-free-failures",
        "3",
        // long enough that the checks made while locked are never late, whatever the
        // machine's load; short enough to wait for the lock to lift
        "--lockout-first",
        "5s",
        "--forgot-per-account-per-hour",
        "2",
    ]);
    let setup = client_from([127, 0, 0, 50]);
    signup(&setup, &base, "victim@example.com").await;
    signup(&setup, &base, "bystander@example.com").await;
    let signin_url = format!("{base}/v1/auth/signin");

    // credential stuffing from one IP: many accounts, one address
    let stuffer = client_from([127, 0, 0, 2]);
    let mut statuses = Vec::new();
    for i in 0..8 {
        let response = stuffer
            .post(&signin_url)
            .json(
                &json!({"email": format!("user{i}@example.com"), "password": "guess guess guess"}),
            )
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        if status == 429 {
            let retry: u64 = response.headers()["retry-after"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            assert!(retry >= 1);
            assert_eq!(
                response.json::<Value>().await.unwrap()["error"]["code"],
                "rate_limited"
            );
        }
        statuses.push(status);
    }
    assert_eq!(&statuses[..6], &[401; 6]);
    assert_eq!(&statuses[6..], &[429, 429]);
    // a normal user from another IP signs in
    let normal = client_from([127, 0, 0, 3]);
    let (status, _) = post(
        &normal,
        signin_url.clone(),
        json!({"email": "bystander@example.com", "password": PASSWORD}),
    )
    .await;
    assert_eq!(status, 200);

    // one account from many IPs: the account slows down, whatever the address
    for i in 0..4u8 {
        let attacker = client_from([127, 0, 1, 10 + i]);
        let (status, _) = post(
            &attacker,
            signin_url.clone(),
            json!({"email": "victim@example.com", "password": "wrong wrong wrong"}),
        )
        .await;
        assert_eq!(status, 401, "failure {i}");
    }
    let elsewhere = client_from([127, 0, 1, 99]);
    let response = elsewhere
        .post(&signin_url)
        .json(&json!({"email": "victim@example.com", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        429,
        "locked even with the right password"
    );
    assert!(response.headers().contains_key("retry-after"));
    assert_eq!(
        response.json::<Value>().await.unwrap()["error"]["code"],
        "account_locked"
    );
    // an unknown login name behaves the same (no enumeration through the lock)
    for i in 0..4u8 {
        let attacker = client_from([127, 0, 2, 10 + i]);
        post(
            &attacker,
            signin_url.clone(),
            json!({"email": "ghost@example.com", "password": "wrong wrong wrong"}),
        )
        .await;
    }
    let (status, body) = post(
        &elsewhere,
        signin_url.clone(),
        json!({"email": "ghost@example.com", "password": "wrong wrong wrong"}),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (429, Some("account_locked"))
    );
    // the bystander is unaffected
    let (status, _) = post(
        &client_from([127, 0, 0, 4]),
        signin_url.clone(),
        json!({"email": "bystander@example.com", "password": PASSWORD}),
    )
    .await;
    assert_eq!(status, 200);
    // the lock lifts by itself (--lockout-first after the locking failure)
    let deadline = std::time::Instant::now() + START;
    loop {
        let (status, _) = post(
            &client_from([127, 0, 1, 98]),
            signin_url.clone(),
            json!({"email": "victim@example.com", "password": PASSWORD}),
        )
        .await;
        if status == 200 {
            break;
        }
        assert_eq!(status, 429);
        assert!(std::time::Instant::now() < deadline, "lock never lifted");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // MFA code guessing from one IP
    let guesser = client_from([127, 0, 0, 5]);
    let verify = format!("{base}/v1/auth/mfa/verify");
    let mut codes = Vec::new();
    for _ in 0..4 {
        let (status, body) = post(
            &guesser,
            verify.clone(),
            json!({"mfa_token": "x".repeat(43), "code": "123456"}),
        )
        .await;
        codes.push((status, body["error"]["code"].as_str().map(str::to_string)));
    }
    assert_eq!(codes[3], (429, Some("rate_limited".into())), "{codes:?}");

    // reset flooding: the mailbox gets two mails per hour, the answers do not change
    let forgot = format!("{base}/v1/auth/forgot");
    for i in 0..4u8 {
        let (status, _) = post(
            &client_from([127, 0, 3, 10 + i]),
            forgot.clone(),
            json!({"email": "victim@example.com"}),
        )
        .await;
        assert_eq!(status, 202);
    }
    let store = env.store().await;
    let audit = store
        .audit()
        .read(&AuditQuery {
            tenant: None,
            from_seq: 1,
            limit: 500,
        })
        .await
        .unwrap();
    let outcomes: Vec<String> = audit
        .iter()
        .filter(|r| r.action == "auth.forgot")
        .map(|r| {
            serde_json::from_slice::<Value>(&r.data).unwrap()["outcome"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(outcomes, ["accepted", "accepted", "throttled", "throttled"]);
}
