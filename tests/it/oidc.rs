//! Google sign-in against a standards-compliant OpenID provider on loopback.

use std::time::Duration;

use gateway_tests::SnapshotKeys;
use gateway_tests::nats::NatsServer;
use gateway_tests::oidc::{Faults, Person, TestProvider};
use gateway_tests::process::PlaneProcess;
use serde_json::{Value, json};

const REDIRECT: &str = "https://app.example/v1/auth/oidc/google/callback";
const PASSWORD: &str = "plum tractor velvet lagoon";

struct Env {
    _nats: NatsServer,
    _keys: SnapshotKeys,
    _control: PlaneProcess,
    base: String,
    provider: TestProvider,
    client: reqwest::Client,
    /// The link cookie this "browser" holds (set by a link start).
    link_cookie: std::sync::Mutex<Option<String>>,
}

async fn env(extra: &[&str]) -> Env {
    let nats = NatsServer::start();
    let keys = SnapshotKeys::generate();
    let provider = TestProvider::start("gateway-test-client", "provider-client-secret").await;
    let secret_file = keys.dir.path().join("google-secret");
    std::fs::write(&secret_file, &provider.client_secret).unwrap();
    let secret_path = secret_file.to_string_lossy().into_owned();
    let mut flags = vec![
        "--google-client-id",
        &provider.client_id,
        "--google-client-secret-file",
        &secret_path,
        "--google-issuer-url",
        &provider.issuer,
        "--google-redirect-url",
        REDIRECT,
    ];
    flags.extend_from_slice(extra);
    let (control, base) = gateway_tests::spawn_control_plane(
        &nats.url(),
        &gateway_tests::unique_prefix(),
        &keys,
        &flags,
    );
    Env {
        _nats: nats,
        _keys: keys,
        _control: control,
        base,
        provider,
        client: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap(),
        link_cookie: std::sync::Mutex::new(None),
    }
}

impl Env {
    /// Runs the browser's part: the provider's authorization endpoint answers with a
    /// redirect to our callback, whose code and state are returned.
    async fn authorize(&self, authorization_url: &str) -> (String, String) {
        let response = self.client.get(authorization_url).send().await.unwrap();
        assert_eq!(response.status(), 303, "{:?}", response.text().await);
        let location = response.headers()["location"].to_str().unwrap().to_string();
        assert!(location.starts_with(REDIRECT), "{location}");
        let url = reqwest::Url::parse(&location).unwrap();
        let param = |name: &str| {
            url.query_pairs()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.into_owned())
                .unwrap()
        };
        (param("code"), param("state"))
    }

    async fn callback(&self, code: &str, state: &str) -> (u16, Value) {
        let cookie = self.link_cookie.lock().unwrap().clone();
        self.callback_with(code, state, cookie.as_deref()).await
    }

    /// The callback as a browser holding `cookie` (the link cookie's value) makes it.
    async fn callback_with(&self, code: &str, state: &str, cookie: Option<&str>) -> (u16, Value) {
        let mut request = self
            .client
            .get(format!("{}/v1/auth/oidc/google/callback", self.base))
            .query(&[("code", code), ("state", state)]);
        if let Some(cookie) = cookie {
            request = request.header("cookie", format!("__Host-gw_oidc={cookie}"));
        }
        let response = request.send().await.unwrap();
        (
            response.status().as_u16(),
            response.json().await.unwrap_or(Value::Null),
        )
    }

    async fn start(&self, access_token: Option<&str>) -> String {
        let path = if access_token.is_some() {
            "link"
        } else {
            "start"
        };
        let mut request = self
            .client
            .post(format!("{}/v1/auth/oidc/google/{path}", self.base));
        if let Some(token) = access_token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        let cookie = response
            .headers()
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(|v| v.strip_prefix("__Host-gw_oidc="))
            .map(|v| v.split(';').next().unwrap_or_default().to_string());
        // every start binds its flow to this browser
        let cookie = cookie.expect("a start sets the flow cookie");
        *self.link_cookie.lock().unwrap() = Some(cookie);
        let body: Value = response.json().await.unwrap();
        body["authorization_url"].as_str().unwrap().to_string()
    }

    /// The whole Google sign-in.
    async fn google_login(&self) -> (u16, Value) {
        let url = self.start(None).await;
        let (code, state) = self.authorize(&url).await;
        self.callback(&code, &state).await
    }

    async fn session(&self, access_token: &str) -> Value {
        self.client
            .get(format!("{}/v1/auth/session", self.base))
            .bearer_auth(access_token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let response = self
            .client
            .post(format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await
            .unwrap();
        (
            response.status().as_u16(),
            response.json().await.unwrap_or(Value::Null),
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_google_sign_in_creates_the_account_once_and_signs_in_again() {
    let env = env(&[]).await;
    let url = env.start(None).await;
    let parsed = reqwest::Url::parse(&url).unwrap();
    let query: std::collections::HashMap<_, _> = parsed.query_pairs().into_owned().collect();
    assert_eq!(query["code_challenge_method"], "S256");
    assert!(query.contains_key("nonce") && query.contains_key("state"));
    assert!(query["scope"].contains("openid"));
    let (code, state) = env.authorize(&url).await;
    let (status, tokens) = env.callback(&code, &state).await;
    assert_eq!(status, 200, "{tokens}");
    let first = env.session(tokens["access_token"].as_str().unwrap()).await;
    assert_eq!(first["email"], "person@gmail.example");
    assert_eq!(first["email_verified"], true);

    // the state is one-time: replaying the callback is refused
    let (status, body) = env.callback(&code, &state).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("invalid_state"))
    );
    let (status, body) = env.callback("anything", "forged-state").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("invalid_state"))
    );
    // a used code under a fresh state: the provider refuses it (invalid_grant), which is
    // the client's doing, not the provider being down (400, not 502)
    let fresh = env.start(None).await;
    let (_, fresh_state) = env.authorize(&fresh).await;
    let (status, body) = env.callback(&code, &fresh_state).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("invalid_grant")),
        "{body}"
    );
    let response = env
        .client
        .get(format!(
            "{}/v1/auth/oidc/google/callback?error=access_denied&state=x",
            env.base
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);

    let (status, again) = env.google_login().await;
    assert_eq!(status, 200);
    let second = env.session(again["access_token"].as_str().unwrap()).await;
    assert_eq!(
        second["user_id"], first["user_id"],
        "same identity, same account"
    );
    // no password was set: password sign-in is impossible
    let (status, _) = env
        .post(
            "/v1/auth/signin",
            json!({"email": "person@gmail.example", "password": PASSWORD}),
        )
        .await;
    assert_eq!(status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nonce_and_audience_mismatches_are_refused() {
    let env = env(&[]).await;
    env.provider.set_faults(Faults {
        wrong_nonce: true,
        ..Faults::default()
    });
    let (status, body) = env.google_login().await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("invalid_id_token"))
    );
    env.provider.set_faults(Faults {
        wrong_audience: true,
        ..Faults::default()
    });
    let (status, body) = env.google_login().await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("invalid_id_token"))
    );
    env.provider.set_faults(Faults::default());
    let (status, _) = env.google_login().await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn google_never_takes_over_a_password_account_but_links_explicitly() {
    let env = env(&[]).await;
    let (status, signup) = env
        .post(
            "/v1/auth/signup",
            json!({"email": "owner@example.com", "password": PASSWORD}),
        )
        .await;
    assert_eq!(status, 201);
    let owner_id = signup["user_id"].as_str().unwrap().to_string();
    env.provider.set_person(Person {
        subject: "2000002".into(),
        email: "owner@example.com".into(),
        email_verified: true,
    });
    let (status, body) = env.google_login().await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("account_exists"))
    );

    // the owner signs in with the password and links Google
    let (_, tokens) = env
        .post(
            "/v1/auth/signin",
            json!({"email": "owner@example.com", "password": PASSWORD}),
        )
        .await;
    let access = tokens["access_token"].as_str().unwrap().to_string();
    let url = env.start(Some(&access)).await;
    let (code, state) = env.authorize(&url).await;
    let (status, linked) = env.callback(&code, &state).await;
    assert_eq!(
        (status, linked["linked"].as_bool()),
        (200, Some(true)),
        "{linked}"
    );
    let (status, via_google) = env.google_login().await;
    assert_eq!(status, 200);
    let session = env
        .session(via_google["access_token"].as_str().unwrap())
        .await;
    assert_eq!(session["user_id"], owner_id.as_str());

    // another user cannot link the same Google identity
    env.post(
        "/v1/auth/signup",
        json!({"email": "other@example.com", "password": PASSWORD}),
    )
    .await;
    let (_, other) = env
        .post(
            "/v1/auth/signin",
            json!({"email": "other@example.com", "password": PASSWORD}),
        )
        .await;
    let url = env.start(other["access_token"].as_str()).await;
    let (code, state) = env.authorize(&url).await;
    let (status, body) = env.callback(&code, &state).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("identity_in_use"))
    );
    // linking needs a signed-in user
    let response = env
        .client
        .post(format!("{}/v1/auth/oidc/google/link", env.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_linking_needs_the_address_proven_on_both_sides() {
    let smtp = gateway_tests::smtp::SmtpSink::start().await;
    let smtp_url = smtp.url();
    let env = env(&["--google-auto-link-verified-email", "--smtp-url", &smtp_url]).await;
    // the pre-hijack: a squatter registers the victim's address with a password and never
    // verifies it; the victim's verified Google sign-in must not land in that account
    let (_, squatted) = env
        .post(
            "/v1/auth/signup",
            json!({"email": "frank@example.com", "password": PASSWORD}),
        )
        .await;
    env.provider.set_person(Person {
        subject: "3000004".into(),
        email: "frank@example.com".into(),
        email_verified: true,
    });
    let (status, body) = env.google_login().await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("account_exists")),
        "the squatter's unverified account is never joined: {body}"
    );
    // nor with an unverified provider email
    env.provider.set_person(Person {
        subject: "3000003".into(),
        email: "frank@example.com".into(),
        email_verified: false,
    });
    let (status, _) = env.google_login().await;
    assert_eq!(status, 409);

    // an account created from an unverified provider email is not joined later either
    env.provider.set_person(Person {
        subject: "3000005".into(),
        email: "gina@example.com".into(),
        email_verified: false,
    });
    let (status, first) = env.google_login().await;
    assert_eq!(status, 200, "{first}");
    env.provider.set_person(Person {
        subject: "3000006".into(),
        email: "gina@example.com".into(),
        email_verified: true,
    });
    let (status, body) = env.google_login().await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("account_exists"))
    );

    // the owner proves the address (the verification mail): now a verified Google sign-in
    // joins the account
    let mail = smtp
        .wait_for("frank@example.com", 1, Duration::from_secs(30))
        .await;
    let token = mail.token().unwrap();
    let (status, _) = env
        .post("/v1/auth/verify-email", json!({"token": token}))
        .await;
    assert_eq!(status, 204);
    env.provider.set_person(Person {
        subject: "3000004".into(),
        email: "frank@example.com".into(),
        email_verified: true,
    });
    let (status, tokens) = env.google_login().await;
    assert_eq!(status, 200, "{tokens}");
    let session = env.session(tokens["access_token"].as_str().unwrap()).await;
    assert_eq!(session["user_id"], squatted["user_id"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linking_a_verified_google_identity_verifies_the_address() {
    let env = env(&[]).await;
    let (status, _) = env
        .post(
            "/v1/auth/signup",
            json!({"email": "hal@example.com", "password": PASSWORD}),
        )
        .await;
    assert_eq!(status, 201);
    let (_, tokens) = env
        .post(
            "/v1/auth/signin",
            json!({"email": "hal@example.com", "password": PASSWORD}),
        )
        .await;
    let access = tokens["access_token"].as_str().unwrap().to_string();
    assert_eq!(env.session(&access).await["email_verified"], false);
    env.provider.set_person(Person {
        subject: "4000001".into(),
        email: "hal@example.com".into(),
        email_verified: true,
    });
    let url = env.start(Some(&access)).await;
    let (code, state) = env.authorize(&url).await;
    let (status, body) = env.callback(&code, &state).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(env.session(&access).await["email_verified"], true);
}

/// T10.2 for Google sign-in: with the control plane at trace level, neither the OAuth
/// client secret nor the authorization code, the state or the tokens issued reach the logs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_of_a_google_sign_in_reaches_the_logs() {
    let env = env(&["--log", "trace", "--log-format", "json"]).await;
    let url = env.start(None).await;
    let (code, state) = env.authorize(&url).await;
    let (status, tokens) = env.callback(&code, &state).await;
    assert_eq!(status, 200, "{tokens}");
    let mut secrets = vec![env.provider.client_secret.clone(), code, state];
    for name in ["access_token", "refresh_token"] {
        secrets.push(tokens[name].as_str().unwrap().to_string());
    }
    let logs = [env._control.logs(), env._control.stderr()]
        .concat()
        .join("\n");
    assert!(logs.contains("request finished"), "trace logging is on");
    for secret in &secrets {
        assert!(secret.len() >= 8, "too short to search for: {secret:?}");
        assert!(
            !logs.contains(secret.as_str()),
            "a secret was logged: {secret}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn google_starts_and_callbacks_are_limited_per_client() {
    let env = env(&["--limit-oidc-per-ip", "3/m"]).await;
    for _ in 0..3 {
        env.start(None).await;
    }
    let response = env
        .client
        .post(format!("{}/v1/auth/oidc/google/start", env.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
    assert!(response.headers().get("retry-after").is_some());
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited", "{body}");
    // the callback counts too: a flood of forged callbacks is refused before any work
    let (status, _) = env.callback("code", "state").await;
    assert_eq!(status, 429);
}

/// Link CSRF: an attacker starts a link to their own account and gets the victim to open
/// the provider URL; the victim's browser, without the attacker's link cookie, completes
/// nothing, and the victim's Google identity never lands in the attacker's account.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_completes_only_in_the_browser_that_started_it() {
    let env = env(&[]).await;
    env.post(
        "/v1/auth/signup",
        json!({"email": "mallory@example.com", "password": PASSWORD}),
    )
    .await;
    let (_, tokens) = env
        .post(
            "/v1/auth/signin",
            json!({"email": "mallory@example.com", "password": PASSWORD}),
        )
        .await;
    let mallory = tokens["access_token"].as_str().unwrap().to_string();
    let url = env.start(Some(&mallory)).await;
    let mallorys_cookie = env.link_cookie.lock().unwrap().clone();
    assert!(mallorys_cookie.is_some());
    // the victim, signed in at Google, opens the URL in their own browser
    env.provider.set_person(Person {
        subject: "5000001".into(),
        email: "victim@gmail.example".into(),
        email_verified: true,
    });
    let (code, state) = env.authorize(&url).await;
    let (status, body) = env.callback_with(&code, &state, None).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("link_not_bound")),
        "{body}"
    );
    // a forged cookie does no better
    let url = env.start(Some(&mallory)).await;
    let (code, state) = env.authorize(&url).await;
    let (status, _) = env.callback_with(&code, &state, Some("forged")).await;
    assert_eq!(status, 403);
    // the victim's Google sign-in gets an account of their own, not mallory's
    let (status, victim) = env.google_login().await;
    assert_eq!(status, 200, "{victim}");
    let session = env.session(victim["access_token"].as_str().unwrap()).await;
    assert_eq!(session["email"], "victim@gmail.example");
    // in the browser that started it, a link completes
    let url = env.start(Some(&mallory)).await;
    env.provider.set_person(Person {
        subject: "5000002".into(),
        email: "mallory@example.com".into(),
        email_verified: true,
    });
    let (code, state) = env.authorize(&url).await;
    let (status, linked) = env.callback(&code, &state).await;
    assert_eq!(
        (status, linked["linked"].as_bool()),
        (200, Some(true)),
        "{linked}"
    );
}

/// Login CSRF: an attacker starts a Google sign-in, authorizes it with their own Google
/// account, and has the victim's browser open the callback URL; without the attacker's
/// flow cookie the victim is not signed into the attacker's account.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sign_in_completes_only_in_the_browser_that_started_it() {
    let env = env(&[]).await;
    env.provider.set_person(Person {
        subject: "6000001".into(),
        email: "attacker@gmail.example".into(),
        email_verified: true,
    });
    let url = env.start(None).await;
    let (code, state) = env.authorize(&url).await;
    let (status, body) = env.callback_with(&code, &state, None).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("signin_not_bound")),
        "{body}"
    );
    assert!(body.get("access_token").is_none());
    // the refusal burns nothing: a leaked callback URL cannot spoil the sign-in of the
    // browser that started it, which still completes (here, into the attacker's own account)
    let (status, body) = env.callback(&code, &state).await;
    assert_eq!(status, 200, "{body}");
    // a forged cookie does no better
    let url = env.start(None).await;
    let (code, state) = env.authorize(&url).await;
    let (status, body) = env.callback_with(&code, &state, Some("forged")).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("signin_not_bound"))
    );
    // in the browser that started it, the sign-in completes and the cookie is cleared
    let url = env.start(None).await;
    let (code, state) = env.authorize(&url).await;
    let cookie = env.link_cookie.lock().unwrap().clone().unwrap();
    let response = env
        .client
        .get(format!("{}/v1/auth/oidc/google/callback", env.base))
        .query(&[("code", code.as_str()), ("state", state.as_str())])
        .header("cookie", format!("__Host-gw_oidc={cookie}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let cleared = response
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.starts_with("__Host-gw_oidc=;") && v.contains("Max-Age=0"));
    assert!(cleared, "the flow cookie is cleared");
    let body: Value = response.json().await.unwrap();
    let session = env.session(body["access_token"].as_str().unwrap()).await;
    assert_eq!(session["email"], "attacker@gmail.example");
}
