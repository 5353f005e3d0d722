//! Authentication flows against the real control-plane binary and a real NATS.

use std::collections::HashSet;
use std::time::Duration;

use futures::future::join_all;
use gateway_store::nats::NatsConfig;
use gateway_store::{AuditQuery, Bucket, Store, StoreConfig};
use gateway_tests::SnapshotKeys;
use gateway_tests::nats::NatsServer;
use gateway_tests::process::{PlaneProcess, wait_for_status};
use gateway_tests::smtp::SmtpSink;
use serde_json::{Value, json};

const START: Duration = Duration::from_secs(30);
const PASSWORD: &str = "plum tractor velvet lagoon";

struct Env {
    nats: NatsServer,
    keys: SnapshotKeys,
    prefix: String,
}

impl Env {
    fn new() -> Env {
        Env {
            nats: NatsServer::start(),
            keys: SnapshotKeys::generate(),
            prefix: gateway_tests::unique_prefix(),
        }
    }

    fn control(&self, extra: &[&str]) -> (PlaneProcess, String) {
        let mut flags = extra.to_vec();
        if !extra.contains(&"--log") {
            flags.extend_from_slice(&["--log", "debug"]);
        }
        gateway_tests::spawn_control_plane(&self.nats.url(), &self.prefix, &self.keys, &flags)
    }

    async fn store(&self) -> Store {
        Store::open(&StoreConfig::Nats(NatsConfig {
            url: self.nats.url(),
            prefix: self.prefix.clone(),
            ..NatsConfig::default()
        }))
        .await
        .unwrap()
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

async fn post(client: &reqwest::Client, url: String, body: Value) -> (u16, Value) {
    let response = client.post(url).json(&body).send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

async fn signup(client: &reqwest::Client, base: &str, email: &str) -> String {
    let (status, body) = post(
        client,
        format!("{base}/v1/auth/signup"),
        json!({"email": email, "password": PASSWORD}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    body["user_id"].as_str().unwrap().to_string()
}

async fn signin(client: &reqwest::Client, base: &str, email: &str) -> Value {
    let (status, body) = post(
        client,
        format!("{base}/v1/auth/signin"),
        json!({"email": email, "password": PASSWORD}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body
}

async fn me(client: &reqwest::Client, base: &str, access_token: &str) -> (u16, Value) {
    let response = client
        .get(format!("{base}/v1/auth/session"))
        .bearer_auth(access_token)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn all_values(store: &Store, bucket: Bucket) -> Vec<(String, String)> {
    let kv = store.kv(bucket);
    let page = kv.keys("", None, 1000).await.unwrap();
    let mut out = Vec::new();
    for key in page.keys {
        if let Some(entry) = kv.get(&key).await.unwrap() {
            out.push((key, String::from_utf8_lossy(&entry.value).into_owned()));
        }
    }
    out
}

/// Decodes an access token with the keys served at /.well-known/jwks.json.
async fn verify_with_jwks(client: &reqwest::Client, base: &str, token: &str) -> (Value, String) {
    let jwks: Value = client
        .get(format!("{base}/.well-known/jwks.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let header = jsonwebtoken::decode_header(token).unwrap();
    let kid = header.kid.clone().unwrap();
    assert_eq!(header.typ.as_deref(), Some("at+jwt"));
    let jwk = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == kid.as_str())
        .unwrap_or_else(|| panic!("kid {kid} not in {jwks}"));
    let key = jsonwebtoken::DecodingKey::from_ed_components(jwk["x"].as_str().unwrap()).unwrap();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
    validation.set_audience(&["cloudlysis"]);
    validation.set_issuer(&["cloudlysis-gateway"]);
    let data = jsonwebtoken::decode::<Value>(token, &key, &validation).unwrap();
    (data.claims, kid)
}

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

async fn post_status(client: &reqwest::Client, url: String, body: Value) -> (u16, Option<String>) {
    let (status, answer) = post(client, url, body).await;
    (status, answer["error"]["code"].as_str().map(str::to_string))
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

/// Codes for successive, never-reused TOTP steps within the ±1 window of now.
pub(crate) struct Authenticator {
    totp: totp_rs::Totp,
    last_step: u64,
}

impl Authenticator {
    pub(crate) fn new(base32: &str) -> Authenticator {
        let secret = totp_rs::Secret::try_from_base32(base32).unwrap();
        Authenticator {
            totp: totp_rs::Builder::new()
                .with_secret(secret.as_bytes().to_vec())
                .build()
                .unwrap(),
            last_step: 0,
        }
    }

    pub(crate) fn next_code(&mut self) -> String {
        let now = gateway_core::unix_now() as u64;
        let current = now / 30;
        let step = (self.last_step + 1).max(current - 1);
        assert!(step <= current + 1, "ran out of unused steps in the window");
        self.last_step = step;
        self.totp.generate(step * 30).to_string()
    }
}

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
    let response = authed("/v1/auth/mfa/totp/confirm", json!({"code": "000000"}))
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
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
    assert_eq!(response.status(), 401);
    let response = authed(
        "/v1/auth/mfa/totp/disable",
        json!({"code": app.next_code()}),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), 204);
    signin(&client, &base, "mfa@example.com").await;
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
    // the lock lifts by itself (1 s after the first locking failure)
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
